//! The writer against a real SQLite file: folding, write-before-answer for
//! changes, the flush interval, and the last flush on close.

use std::sync::Arc;
use std::time::Duration;

use thermos_core::clock::ManualClock;
use thermos_store::audit::{AuditFilter, AuditRecord};
use thermos_store::{SqliteStore, Store};
use time::macros::datetime;

use super::*;

async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("thermos.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    (Arc::new(store), dir)
}

fn read_of(connection: &str, status: u16) -> Occurrence {
    Occurrence {
        actor: "0123456789ab".into(),
        actor_project: Some("acme".into()),
        action: "token.read".into(),
        target: Some(connection.into()),
        client: Some("127.0.0.1".into()),
        request_id: Some("req".into()),
        status,
    }
}

async fn listed(store: &Arc<dyn Store>) -> Vec<AuditRecord> {
    store
        .list_audit(AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn equal_reads_within_a_flush_fold_into_one_entry_with_their_count_and_times() {
    let (store, _dir) = store().await;
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 12:00:00 UTC)));
    let audit = AuditLog::start_with(Arc::clone(&store), clock.clone(), Duration::from_secs(3600));
    for _ in 0..5 {
        audit.read(read_of("conn_a", 200));
        clock.advance(Duration::from_secs(1));
    }
    audit.read(read_of("conn_a", 404));
    audit.read(read_of("conn_b", 200));
    assert!(audit.flush().await);

    let entries = listed(&store).await;
    let summary: Vec<_> = entries
        .iter()
        .rev()
        .map(|r| (r.entry.target.as_deref().unwrap(), r.entry.status, r.entry.count))
        .collect();
    assert_eq!(summary, [("conn_a", 200, 5), ("conn_a", 404, 1), ("conn_b", 200, 1)]);
    let folded = &entries[2].entry;
    assert_eq!(folded.first_at, datetime!(2026-01-01 12:00:00 UTC));
    assert_eq!(folded.at, datetime!(2026-01-01 12:00:04 UTC));

    // A later flush starts new entries.
    audit.read(read_of("conn_a", 200));
    assert!(audit.flush().await);
    assert_eq!(listed(&store).await.len(), 4);
}

#[tokio::test]
async fn a_change_is_written_before_change_returns() {
    let (store, _dir) = store().await;
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 12:00:00 UTC)));
    let audit = AuditLog::start_with(Arc::clone(&store), clock, Duration::from_secs(3600));
    let deleted = Occurrence {
        action: "connection.delete".into(),
        ..read_of("conn_a", 204)
    };
    assert!(audit.change(deleted).await);
    let entries = listed(&store).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].entry.action, "connection.delete");
}

#[tokio::test]
async fn queued_reads_are_written_within_the_flush_interval_and_on_close() {
    let (store, _dir) = store().await;
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 12:00:00 UTC)));
    let audit = AuditLog::start_with(Arc::clone(&store), clock.clone(), Duration::from_millis(20));
    audit.read(read_of("conn_a", 200));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listed(&store).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the read was never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let slow = AuditLog::start_with(Arc::clone(&store), clock, Duration::from_secs(3600));
    slow.read(read_of("conn_b", 200));
    slow.close().await;
    assert_eq!(listed(&store).await.len(), 2, "close writes what is queued");
}

#[test]
fn long_fields_are_cut_at_a_character_boundary() {
    let long = "é".repeat(MAX_FIELD_LEN);
    let cut_text = cut(long);
    assert!(cut_text.len() <= MAX_FIELD_LEN);
    assert!(cut_text.chars().all(|c| c == 'é'));
    assert_eq!(cut("short".into()), "short");
}

#[tokio::test]
async fn reads_that_find_the_queue_full_are_not_waited_for_but_counted_in_the_log() {
    let (store, _dir) = store().await;
    let clock = Arc::new(ManualClock::new(datetime!(2026-01-01 12:00:00 UTC)));
    // On this single-threaded runtime the writer does not run before the
    // first await: two reads fill the queue, three find it full.
    let audit = AuditLog::start_bounded(Arc::clone(&store), clock, Duration::from_secs(3600), 2);
    for _ in 0..5 {
        audit.read(read_of("conn_a", 200));
    }
    assert!(audit.flush().await);

    let summary: Vec<_> = listed(&store)
        .await
        .iter()
        .rev()
        .map(|r| (r.entry.actor.clone(), r.entry.action.clone(), r.entry.count))
        .collect();
    assert_eq!(
        summary,
        [
            ("0123456789ab".to_owned(), "token.read".to_owned(), 2),
            (SELF_ACTOR.to_owned(), "audit.reads_dropped".to_owned(), 3),
        ]
    );
}

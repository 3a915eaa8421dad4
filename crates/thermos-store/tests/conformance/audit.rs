//! The audit-log part of the Store contract: entries read back as appended,
//! newest first, filtered and paged; and the database itself refuses to
//! change or delete one (append-only), on both backends.

use std::sync::Arc;

use thermos_store::Store;
use thermos_store::audit::{AuditFilter, NewAuditEntry};
use time::macros::datetime;

use crate::support::{self, at};

conformance!(
    audit_entries_read_back_as_appended_newest_first,
    audit_filters_combine_and_pages_continue_below_the_last_id,
    an_audit_batch_larger_than_one_statement_is_appended_whole_and_in_order,
);

fn entry(actor: &str, action: &str, target: Option<&str>, second: i64) -> NewAuditEntry {
    NewAuditEntry {
        at: at(second),
        first_at: at(second),
        actor: actor.to_owned(),
        actor_project: Some("acme".to_owned()),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        client: Some("127.0.0.1".to_owned()),
        request_id: Some(format!("req-{second}")),
        status: 200,
        count: 1,
    }
}

fn all(limit: u32) -> AuditFilter {
    AuditFilter {
        limit,
        ..AuditFilter::default()
    }
}

pub async fn audit_entries_read_back_as_appended_newest_first(store: Arc<dyn Store>) {
    let folded = NewAuditEntry {
        first_at: datetime!(2025-06-01 12:00:00.250_999 UTC),
        at: datetime!(2025-06-01 12:00:09.125_999 UTC),
        actor_project: None,
        client: None,
        request_id: None,
        status: 404,
        count: 17,
        ..entry("admin", "token.read", Some("conn_1"), 0)
    };
    let created = entry("0123456789ab", "connection.create", None, 10);
    store.append_audit(vec![folded.clone(), created.clone()]).await.unwrap();
    store.append_audit(Vec::new()).await.unwrap();

    let listed = store.list_audit(all(10)).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].id > listed[1].id, "newest first: {listed:?}");
    assert_eq!(listed[0].entry, created);
    assert_eq!(
        listed[1].entry,
        NewAuditEntry {
            first_at: datetime!(2025-06-01 12:00:00.250 UTC),
            at: datetime!(2025-06-01 12:00:09.125 UTC),
            ..folded
        },
        "timestamps keep milliseconds"
    );
}

pub async fn audit_filters_combine_and_pages_continue_below_the_last_id(store: Arc<dyn Store>) {
    let entries = vec![
        entry("key-a", "token.read", Some("conn_1"), 0),
        entry("key-b", "token.read", Some("conn_1"), 1),
        entry("key-a", "connection.delete", Some("conn_2"), 2),
        entry("key-a", "token.read", Some("conn_2"), 3),
        entry("key-a", "token.read", Some("conn_1"), 4),
    ];
    store.append_audit(entries).await.unwrap();
    let seconds = |filter: AuditFilter| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_audit(filter)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.entry.at - at(0)).whole_seconds())
                .collect::<Vec<_>>()
        }
    };
    let by_actor = AuditFilter {
        actor: Some("key-a".into()),
        ..all(10)
    };
    assert_eq!(seconds(by_actor.clone()).await, [4, 3, 2, 0]);
    let reads_of_conn_1 = AuditFilter {
        action: Some("token.read".into()),
        target: Some("conn_1".into()),
        ..all(10)
    };
    assert_eq!(seconds(reads_of_conn_1).await, [4, 1, 0]);
    assert_eq!(
        seconds(AuditFilter {
            since: Some(at(3)),
            ..all(10)
        })
        .await,
        [4, 3]
    );

    let first_page = store
        .list_audit(AuditFilter {
            limit: 2,
            ..by_actor.clone()
        })
        .await
        .unwrap();
    assert_eq!(first_page.len(), 2);
    let next = AuditFilter {
        before_id: Some(first_page[1].id),
        ..by_actor
    };
    assert_eq!(seconds(next).await, [2, 0]);
    assert!(
        seconds(AuditFilter {
            actor: Some("nobody".into()),
            ..all(10)
        })
        .await
        .is_empty()
    );
}

pub async fn an_audit_batch_larger_than_one_statement_is_appended_whole_and_in_order(store: Arc<dyn Store>) {
    let entries: Vec<_> = (0..2500)
        .map(|n| entry("key-a", "token.read", Some(&format!("conn_{n}")), n))
        .collect();
    store.append_audit(entries).await.unwrap();
    let listed = store.list_audit(all(5000)).await.unwrap();
    assert_eq!(listed.len(), 2500);
    let targets: Vec<_> = listed.iter().rev().map(|r| r.entry.target.clone().unwrap()).collect();
    let expected: Vec<_> = (0..2500).map(|n| format!("conn_{n}")).collect();
    assert_eq!(targets, expected, "ids follow the order of the batch");
}

/// The database refuses to change or delete audit entries, whoever asks.
mod append_only {
    use sqlx::{Connection, Executor};
    use thermos_store::Store;

    use super::{entry, support};

    const CHANGES: [&str; 2] = ["UPDATE audit_log SET actor = 'someone-else'", "DELETE FROM audit_log"];

    #[tokio::test]
    async fn sqlite_refuses_to_update_or_delete_an_audit_entry() {
        let (store, dir) = support::sqlite_store().await;
        store
            .append_audit(vec![entry("key-a", "token.read", None, 0)])
            .await
            .unwrap();
        let url = format!("sqlite://{}", dir.path().join("thermos.db").display());
        let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for change in CHANGES {
            let err = raw.execute(change).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{change}: {err}");
        }
        let kept = store.list_audit(super::all(10)).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].entry.actor, "key-a");
    }

    #[tokio::test]
    async fn postgres_refuses_to_update_delete_or_truncate_an_audit_entry() {
        let Some((store, schema)) = support::postgres_store().await else {
            return;
        };
        store
            .append_audit(vec![entry("key-a", "token.read", None, 0)])
            .await
            .unwrap();
        let mut raw = schema.raw_connection().await;
        for change in CHANGES.into_iter().chain(["TRUNCATE audit_log"]) {
            let err = raw.execute(change).await.unwrap_err();
            assert!(err.to_string().contains("append-only"), "{change}: {err}");
        }
        let kept = store.list_audit(super::all(10)).await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].entry.actor, "key-a");
    }
}

//! The runs part of the Store contract: insert, progress, finish with its
//! event, listing, cancellation and stale marking.
//!
//! Cases are listed in the `conformance!` macro in `conformance.rs`.

use std::sync::Arc;

use thermos_store::Store;
use thermos_store::outbox::{EventFilter, NewEvent};
use thermos_store::run::{FailuresByCode, NewRun, RunCounts, RunStatus};

use crate::support::{T0, at};

fn new_run(id: &str, started: i64) -> NewRun {
    NewRun {
        id: id.to_owned(),
        trigger: "api".to_owned(),
        filter: serde_json::json!({"provider": "acme"}),
        failure_threshold: 0.1,
        owner: "w1".to_owned(),
        started_at: at(started),
    }
}

fn counts(total: u64, succeeded: u64, failed: u64, skipped: u64) -> RunCounts {
    RunCounts {
        total,
        succeeded,
        failed,
        skipped,
    }
}

pub async fn a_new_run_is_running_with_zero_counts_and_reads_back_as_inserted(store: Arc<dyn Store>) {
    let inserted = store.insert_run(new_run("run_1", 0)).await.unwrap();
    assert_eq!(inserted.status, RunStatus::Running);
    assert_eq!(inserted.counts, RunCounts::default());
    assert_eq!(inserted.heartbeat_at, T0);
    assert!(!inserted.stale && !inserted.cancel_requested);
    assert_eq!(inserted.filter, serde_json::json!({"provider": "acme"}));
    assert_eq!(store.get_run("run_1").await.unwrap(), Some(inserted));
    assert_eq!(store.get_run("run_x").await.unwrap(), None);
}

pub async fn run_progress_and_finish_record_counts_failures_and_the_event(store: Arc<dyn Store>) {
    store.insert_run(new_run("run_1", 0)).await.unwrap();
    let failures = FailuresByCode::from([("invalid_grant".to_owned(), 3)]);
    let progress = store
        .update_run_progress("run_1", counts(10, 4, 3, 1), failures.clone(), at(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(progress.counts, counts(10, 4, 3, 1));
    assert_eq!(progress.heartbeat_at, at(5));
    let event = NewEvent {
        id: "evt_run_1".into(),
        kind: "run.failed".into(),
        project: None,
        connection_id: None,
        provider: Some("acme".into()),
        data: serde_json::json!({"run_id": "run_1"}),
        at: at(9),
    };
    let done = store
        .finish_run(
            "run_1",
            RunStatus::Failed,
            counts(10, 6, 3, 1),
            failures.clone(),
            at(9),
            vec![event],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.failures_by_code, failures);
    assert_eq!(done.finished_at, Some(at(9)));
    assert!(store.get_event("evt_run_1").await.unwrap().is_some());
    // A finished run takes no more progress, and no second finish.
    assert!(
        store
            .update_run_progress("run_1", counts(1, 1, 0, 0), FailuresByCode::new(), at(10))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .finish_run(
                "run_1",
                RunStatus::Succeeded,
                counts(1, 1, 0, 0),
                FailuresByCode::new(),
                at(10),
                Vec::new()
            )
            .await
            .unwrap()
            .is_none()
    );
    let events = store.list_events(&EventFilter::default(), None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
}

pub async fn runs_are_listed_newest_first_up_to_the_limit(store: Arc<dyn Store>) {
    for (id, started) in [("run_a", 0), ("run_b", 10), ("run_c", 20)] {
        store.insert_run(new_run(id, started)).await.unwrap();
    }
    let listed: Vec<String> = store.list_runs(2).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, ["run_c", "run_b"]);
}

pub async fn only_running_runs_with_an_old_heartbeat_are_marked_stale(store: Arc<dyn Store>) {
    store.insert_run(new_run("run_old", 0)).await.unwrap();
    store.insert_run(new_run("run_fresh", 100)).await.unwrap();
    store.insert_run(new_run("run_done", 0)).await.unwrap();
    store
        .finish_run(
            "run_done",
            RunStatus::Succeeded,
            RunCounts::default(),
            FailuresByCode::new(),
            at(1),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(store.mark_stale_runs(at(50), at(120)).await.unwrap(), 1);
    let old = store.get_run("run_old").await.unwrap().unwrap();
    assert_eq!(
        (old.status, old.stale, old.finished_at),
        (RunStatus::Failed, true, Some(at(120)))
    );
    let fresh = store.get_run("run_fresh").await.unwrap().unwrap();
    assert_eq!((fresh.status, fresh.stale), (RunStatus::Running, false));
    let done = store.get_run("run_done").await.unwrap().unwrap();
    assert_eq!((done.status, done.stale), (RunStatus::Succeeded, false));
}

pub async fn cancelling_asks_only_a_running_run_to_stop(store: Arc<dyn Store>) {
    store.insert_run(new_run("run_1", 0)).await.unwrap();
    assert!(store.cancel_run("run_1").await.unwrap());
    assert!(store.get_run("run_1").await.unwrap().unwrap().cancel_requested);
    assert!(!store.cancel_run("run_missing").await.unwrap());
    store
        .finish_run(
            "run_1",
            RunStatus::Cancelled,
            RunCounts::default(),
            FailuresByCode::new(),
            at(1),
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(!store.cancel_run("run_1").await.unwrap());
}

//! Refresh successes committed concurrently: however a backend groups them
//! into transactions (SQLite commits them in batches), each one's outcome is
//! exactly that of committing it alone.

use std::sync::Arc;

use thermos_core::id::ConnectionId;
use thermos_store::{FinishOutcome, Store, StoreError, TokenUpdate};

use crate::support::{attempt, connection, event, sealed, tokens};

conformance!(
    concurrent_finishes_of_many_connections_each_commit_as_if_alone,
    concurrent_finishes_of_one_connection_at_one_version_commit_exactly_once,
    a_finish_that_fails_fails_alone_while_concurrent_ones_commit,
);

/// More than one SQLite batch (256).
const CONNECTIONS: usize = 300;

async fn insert_many(store: &dyn Store, count: usize) -> Vec<ConnectionId> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let record = store
            .insert_connection(connection(&format!("user-{n}")), crate::support::T0, Vec::new())
            .await
            .expect("insert connection");
        ids.push(record.id);
    }
    ids
}

fn update(n: usize) -> TokenUpdate {
    TokenUpdate {
        refresh_token: Some(sealed(&format!("refresh-{n}"))),
        ..tokens(&format!("access-{n}"), 10)
    }
}

async fn concurrent_finishes_of_many_connections_each_commit_as_if_alone(store: Arc<dyn Store>) {
    let ids = insert_many(&*store, CONNECTIONS).await;
    // Every seventh result comes from a worker that read an older version.
    let stale = |n: usize| n % 7 == 3;
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let store = store.clone();
        let expected_version = if stale(n) { 0 } else { 1 };
        let events = vec![event("connection.recovered", Some("acme"), Some(id), 10)];
        tasks.push(tokio::spawn(async move {
            store
                .finish_refresh(id, expected_version, update(n), attempt("refreshed", 9), events)
                .await
        }));
    }
    for (n, (task, id)) in tasks.into_iter().zip(&ids).enumerate() {
        let outcome = task.await.expect("task").expect("finish_refresh");
        let stored = store.get_connection(*id).await.unwrap().expect("connection exists");
        if stale(n) {
            assert!(matches!(outcome, FinishOutcome::VersionChanged), "{n}: {outcome:?}");
            assert_eq!(stored.version, 1, "{n}");
            assert_eq!(stored.access_token, sealed("access-1"), "{n}");
        } else {
            let FinishOutcome::Committed(committed) = outcome else {
                panic!("{n}: expected a commit, got {outcome:?}")
            };
            assert_eq!(committed, stored, "{n}: the returned record is the stored one");
            assert_eq!(stored.version, 2, "{n}");
            assert_eq!(stored.access_token, sealed(&format!("access-{n}")), "{n}");
            assert_eq!(stored.refresh_token, Some(sealed(&format!("refresh-{n}"))), "{n}");
            assert_eq!(stored.refresh_count, 1, "{n}");
        }
        let attempts = store.list_attempts(*id, 10).await.unwrap();
        assert_eq!(attempts.len(), 1, "{n}: every result records its attempt");
        assert_eq!(attempts[0].attempt, attempt("refreshed", 9), "{n}");
        let filter = thermos_store::outbox::EventFilter {
            connection_id: Some(*id),
            ..Default::default()
        };
        let events = store.list_events(&filter, None, 10).await.unwrap();
        let expected_events = if stale(n) { 0 } else { 1 };
        assert_eq!(events.len(), expected_events, "{n}: events only for applied results");
    }
}

async fn concurrent_finishes_of_one_connection_at_one_version_commit_exactly_once(store: Arc<dyn Store>) {
    let id = insert_many(&*store, 1).await[0];
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let outcome = store
                    .finish_refresh(id, 1, update(n), attempt("refreshed", 9), Vec::new())
                    .await
                    .expect("finish_refresh");
                (n, outcome)
            })
        })
        .collect();
    let mut committed = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (n, FinishOutcome::Committed(record)) => committed.push((n, record)),
            (_, FinishOutcome::VersionChanged) => {}
        }
    }
    assert_eq!(committed.len(), 1, "exactly one of 20 results at version 1 applies");
    let (winner, record) = &committed[0];
    let stored = store.get_connection(id).await.unwrap().expect("connection exists");
    assert_eq!(&stored, record);
    assert_eq!(stored.version, 2);
    assert_eq!(stored.refresh_count, 1);
    assert_eq!(stored.access_token, sealed(&format!("access-{winner}")));
    assert_eq!(stored.refresh_token, Some(sealed(&format!("refresh-{winner}"))));
    assert_eq!(store.list_attempts(id, 50).await.unwrap().len(), 20);
}

async fn a_finish_that_fails_fails_alone_while_concurrent_ones_commit(store: Arc<dyn Store>) {
    let ids = insert_many(&*store, 40).await;
    // An event id already taken makes one result's transaction fail.
    let taken = event("connection.recovered", Some("acme"), Some(ids[0]), 1);
    store.insert_events(vec![taken.clone()]).await.unwrap();
    let bad = 17;
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let store = store.clone();
        let events = if n == bad {
            vec![taken.clone()]
        } else {
            vec![event("connection.recovered", Some("acme"), Some(id), 10)]
        };
        tasks.push(tokio::spawn(async move {
            store
                .finish_refresh(id, 1, update(n), attempt("refreshed", 9), events)
                .await
        }));
    }
    for (n, (task, id)) in tasks.into_iter().zip(&ids).enumerate() {
        let result = task.await.expect("task");
        let stored = store.get_connection(*id).await.unwrap().expect("connection exists");
        if n == bad {
            assert!(matches!(result, Err(StoreError::Conflict)), "{result:?}");
            assert_eq!(stored.version, 1, "nothing of the failed result is written");
            assert_eq!(stored.access_token, sealed("access-1"));
            assert!(store.list_attempts(*id, 10).await.unwrap().is_empty());
        } else {
            assert!(matches!(result, Ok(FinishOutcome::Committed(_))), "{n}: {result:?}");
            assert_eq!(stored.version, 2, "{n}");
            assert_eq!(store.list_attempts(*id, 10).await.unwrap().len(), 1, "{n}");
        }
    }
}

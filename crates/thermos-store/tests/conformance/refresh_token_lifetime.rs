//! Refresh-token lifetime (docs/refresh-token-lifetime.md): the expiry is
//! written by every path that creates a connection or rewrites its tokens;
//! a refresh that states none keeps it when the refresh token did not change
//! and clears it when a new one came; the scan finds not yet warned expiries
//! of one provider in order, and the warning mark (with its event) is
//! written once per expiry and cleared when the expiry changes.

use std::sync::Arc;

use thermos_core::id::ConnectionId;
use thermos_store::connect::{Connect, ConnectOutcome};
use thermos_store::outbox::EventFilter;
use thermos_store::{FinishOutcome, NewConnection, RefreshTokenWarning, Store, TokenUpdate};
use time::OffsetDateTime;

use crate::support::{T0, at, attempt, connection, event, sealed, tokens};

conformance!(
    the_refresh_token_expiry_reads_back_from_insert_batch_insert_and_connect,
    a_refresh_stores_keeps_or_clears_the_refresh_token_expiry,
    concurrent_refreshes_apply_the_refresh_token_rule_each_as_alone,
    new_tokens_from_the_user_replace_the_expiry_and_a_new_expiry_clears_the_warning,
    expiring_refresh_tokens_are_found_in_order_and_warned_once_per_expiry,
);

const DAY: i64 = 24 * 3600;

fn expiring_at(external_id: &str, expiry: Option<OffsetDateTime>) -> NewConnection {
    NewConnection {
        refresh_token_expires_at: expiry,
        ..connection(external_id)
    }
}

/// New tokens issued at `at(issued)` with a new refresh token or not, and a
/// stated refresh-token expiry or not.
fn refreshed(issued: i64, new_refresh_token: bool, expiry: Option<OffsetDateTime>) -> TokenUpdate {
    TokenUpdate {
        refresh_token: new_refresh_token.then(|| sealed(&format!("refresh-{issued}"))),
        refresh_token_expires_at: expiry,
        ..tokens(&format!("access-{issued}"), issued)
    }
}

async fn finish(
    store: &dyn Store,
    id: ConnectionId,
    version: i64,
    update: TokenUpdate,
) -> thermos_store::ConnectionRecord {
    let issued = update.issued_at;
    match store
        .finish_refresh(
            id,
            version,
            update,
            attempt("refreshed", (issued - T0).whole_seconds()),
            Vec::new(),
        )
        .await
        .expect("finish_refresh")
    {
        FinishOutcome::Committed(record) => record,
        FinishOutcome::VersionChanged => panic!("version changed"),
    }
}

fn warning(id: ConnectionId, expiry: OffsetDateTime) -> RefreshTokenWarning {
    RefreshTokenWarning {
        id,
        refresh_token_expires_at: expiry,
        events: vec![event("connection.refresh_token_expiring", Some("acme"), Some(id), 1)],
    }
}

async fn warnings_written(store: &dyn Store, id: ConnectionId) -> usize {
    let filter = EventFilter {
        kind: Some("connection.refresh_token_expiring".into()),
        connection_id: Some(id),
        ..EventFilter::default()
    };
    store.list_events(&filter, None, 100).await.expect("list events").len()
}

pub async fn the_refresh_token_expiry_reads_back_from_insert_batch_insert_and_connect(store: Arc<dyn Store>) {
    let one = store
        .insert_connection(expiring_at("one", Some(at(90 * DAY))), T0, Vec::new())
        .await
        .unwrap();
    assert_eq!(one.refresh_token_expires_at, Some(at(90 * DAY)));
    assert_eq!(one.refresh_token_warned_at, None);
    assert_eq!(store.get_connection(one.id).await.unwrap().unwrap(), one);

    let batch = vec![expiring_at("two", Some(at(5 * DAY))), expiring_at("three", None)];
    let ids: Vec<_> = batch.iter().map(|c| c.id).collect();
    store.insert_connections(batch, T0, Vec::new()).await.unwrap();
    let two = store.get_connection(ids[0]).await.unwrap().unwrap();
    let three = store.get_connection(ids[1]).await.unwrap().unwrap();
    assert_eq!(two.refresh_token_expires_at, Some(at(5 * DAY)));
    assert_eq!(three.refresh_token_expires_at, None);

    let created = store
        .connect_connection(
            None,
            Connect::Create(expiring_at("four", Some(at(DAY)))),
            T0,
            Vec::new(),
        )
        .await
        .unwrap();
    let ConnectOutcome::Created(four) = created else {
        panic!("expected a create, got {created:?}")
    };
    assert_eq!(four.refresh_token_expires_at, Some(at(DAY)));
}

pub async fn a_refresh_stores_keeps_or_clears_the_refresh_token_expiry(store: Arc<dyn Store>) {
    let id = store
        .insert_connection(expiring_at("u", Some(at(10 * DAY))), T0, Vec::new())
        .await
        .unwrap()
        .id;
    let kept = finish(&*store, id, 1, refreshed(100, false, None)).await;
    assert_eq!(
        kept.refresh_token_expires_at,
        Some(at(10 * DAY)),
        "no new refresh token: kept"
    );
    let stated = finish(&*store, id, 2, refreshed(200, false, Some(at(20 * DAY)))).await;
    assert_eq!(
        stated.refresh_token_expires_at,
        Some(at(20 * DAY)),
        "a stated lifetime is stored"
    );
    let rotated = finish(&*store, id, 3, refreshed(300, true, Some(at(30 * DAY)))).await;
    assert_eq!(rotated.refresh_token_expires_at, Some(at(30 * DAY)));
    let cleared = finish(&*store, id, 4, refreshed(400, true, None)).await;
    assert_eq!(
        cleared.refresh_token_expires_at, None,
        "a new refresh token without a lifetime"
    );
}

pub async fn concurrent_refreshes_apply_the_refresh_token_rule_each_as_alone(store: Arc<dyn Store>) {
    const COUNT: usize = 60;
    let mut ids = Vec::with_capacity(COUNT);
    for n in 0..COUNT {
        let record = store
            .insert_connection(expiring_at(&format!("u{n}"), Some(at(10 * DAY))), T0, Vec::new())
            .await
            .unwrap();
        ids.push(record.id);
    }
    // Warned before, so that the mark's fate is visible too.
    let marked = store
        .warn_refresh_tokens(ids.iter().map(|id| warning(*id, at(10 * DAY))).collect(), at(50))
        .await
        .unwrap();
    assert_eq!(marked, COUNT as u64);
    let case = |n: usize| match n % 4 {
        0 => refreshed(100, false, None),
        1 => refreshed(100, true, None),
        2 => refreshed(100, true, Some(at(40 * DAY))),
        _ => refreshed(100, false, Some(at(10 * DAY))),
    };
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let store = Arc::clone(&store);
        let update = case(n);
        tasks.push(tokio::spawn(async move {
            store
                .finish_refresh(id, 1, update, attempt("refreshed", 100), Vec::new())
                .await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let FinishOutcome::Committed(record) = task.await.unwrap().unwrap() else {
            panic!("entry {n} did not commit")
        };
        let (expiry, warned) = match n % 4 {
            0 => (Some(at(10 * DAY)), Some(at(50))),
            1 => (None, None),
            2 => (Some(at(40 * DAY)), None),
            _ => (Some(at(10 * DAY)), Some(at(50))),
        };
        assert_eq!(record.refresh_token_expires_at, expiry, "entry {n}");
        assert_eq!(record.refresh_token_warned_at, warned, "entry {n}");
        assert_eq!(store.get_connection(record.id).await.unwrap().unwrap(), record);
    }
}

pub async fn new_tokens_from_the_user_replace_the_expiry_and_a_new_expiry_clears_the_warning(store: Arc<dyn Store>) {
    let id = store
        .insert_connection(expiring_at("u", Some(at(DAY))), T0, Vec::new())
        .await
        .unwrap()
        .id;
    store
        .warn_refresh_tokens(vec![warning(id, at(DAY))], at(10))
        .await
        .unwrap();
    let same = store
        .replace_tokens(id, refreshed(20, true, Some(at(DAY))), at(20), Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        same.refresh_token_warned_at,
        Some(at(10)),
        "the same expiry keeps its mark"
    );
    let replaced = store
        .replace_tokens(id, refreshed(30, true, Some(at(9 * DAY))), at(30), Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(replaced.refresh_token_expires_at, Some(at(9 * DAY)));
    assert_eq!(replaced.refresh_token_warned_at, None);

    let cleared = store
        .replace_tokens(id, refreshed(40, true, None), at(40), Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.refresh_token_expires_at, None, "none given: cleared");

    let reconnected = store
        .connect_connection(
            None,
            Connect::Reconnect {
                id,
                expected_version: cleared.version,
                tokens: refreshed(50, true, Some(at(60 * DAY))),
            },
            at(50),
            Vec::new(),
        )
        .await
        .unwrap();
    let ConnectOutcome::Reconnected(reconnected) = reconnected else {
        panic!("expected a reconnect, got {reconnected:?}")
    };
    assert_eq!(reconnected.refresh_token_expires_at, Some(at(60 * DAY)));
}

pub async fn expiring_refresh_tokens_are_found_in_order_and_warned_once_per_expiry(store: Arc<dyn Store>) {
    let late = store
        .insert_connection(expiring_at("late", Some(at(10 * DAY))), T0, Vec::new())
        .await
        .unwrap();
    let soon = store
        .insert_connection(expiring_at("soon", Some(at(3 * DAY))), T0, Vec::new())
        .await
        .unwrap();
    store
        .insert_connection(expiring_at("unknown", None), T0, Vec::new())
        .await
        .unwrap();
    let elsewhere = NewConnection {
        provider: "slack".into(),
        ..expiring_at("elsewhere", Some(at(DAY)))
    };
    store.insert_connection(elsewhere, T0, Vec::new()).await.unwrap();

    let ids = |records: Vec<thermos_store::ConnectionRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let within_5d = store.expiring_refresh_tokens("google", at(5 * DAY), 100).await.unwrap();
    assert_eq!(ids(within_5d), [soon.id]);
    let all = store
        .expiring_refresh_tokens("google", at(20 * DAY), 100)
        .await
        .unwrap();
    assert_eq!(ids(all), [soon.id, late.id], "earliest expiry first");
    let first = store.expiring_refresh_tokens("google", at(20 * DAY), 1).await.unwrap();
    assert_eq!(ids(first), [soon.id]);
    let on_the_dot = store.expiring_refresh_tokens("google", at(3 * DAY), 100).await.unwrap();
    assert_eq!(ids(on_the_dot), [soon.id], "an expiry at `before` is included");

    // A stale expiry marks nothing.
    let stale = store
        .warn_refresh_tokens(vec![warning(soon.id, at(4 * DAY))], at(60))
        .await
        .unwrap();
    assert_eq!(stale, 0);
    assert_eq!(warnings_written(&*store, soon.id).await, 0);

    let marked = store
        .warn_refresh_tokens(vec![warning(soon.id, at(3 * DAY))], at(60))
        .await
        .unwrap();
    assert_eq!(marked, 1);
    assert_eq!(warnings_written(&*store, soon.id).await, 1);
    let again = store
        .warn_refresh_tokens(vec![warning(soon.id, at(3 * DAY))], at(70))
        .await
        .unwrap();
    assert_eq!(again, 0, "warned once per expiry");
    assert_eq!(warnings_written(&*store, soon.id).await, 1);
    let record = store.get_connection(soon.id).await.unwrap().unwrap();
    assert_eq!(record.refresh_token_warned_at, Some(at(60)));
    assert_eq!(record.version, soon.version, "a warning is not a token change");
    assert_eq!(record.updated_at, soon.updated_at);
    let rest = store
        .expiring_refresh_tokens("google", at(20 * DAY), 100)
        .await
        .unwrap();
    assert_eq!(ids(rest), [late.id], "a warned connection is not found again");

    // A refresh without a new refresh token keeps the mark; a new expiry clears it.
    let kept = finish(&*store, soon.id, 1, refreshed(100, false, None)).await;
    assert_eq!(kept.refresh_token_warned_at, Some(at(60)));
    let renewed = finish(&*store, soon.id, 2, refreshed(200, true, Some(at(4 * DAY)))).await;
    assert_eq!(renewed.refresh_token_warned_at, None);
    let found = store.expiring_refresh_tokens("google", at(5 * DAY), 100).await.unwrap();
    assert_eq!(ids(found), [soon.id]);
}

//! The connect-session part of the Store contract: sessions are inserted
//! pending, begun (a new state hash replaces the old one), consumed exactly
//! once by their state hash (concurrent consumers: one wins), refused once
//! expired, failed with an error; a connection is created or reconnected
//! (keeping its id, clearing `needs_reauth`) with its event and the
//! session's completion in one transaction.

use std::sync::Arc;

use thermos_core::status::ConnectionStatus;
use thermos_store::connect::{Begin, Connect, ConnectOutcome, Consume, NewConnectSession, SessionStatus};
use thermos_store::outbox::EventFilter;
use thermos_store::{ConnectionRecord, Store};

use crate::support::{T0, at, connection, event, failed_attempt, failure, sealed, tokens};

conformance!(
    a_new_session_is_pending_not_begun_and_reads_back_as_inserted,
    beginning_a_session_stores_the_state_hash_and_verifier_and_a_new_begin_replaces_them,
    a_state_is_consumed_once_and_then_refused,
    an_unknown_state_is_refused,
    an_expired_session_is_refused_and_marked_expired,
    concurrent_consumers_of_one_state_exactly_one_wins,
    a_consumed_session_fails_with_its_error_once,
    connecting_creates_a_connection_completes_the_session_and_writes_the_event,
    a_reconnect_keeps_the_id_clears_needs_reauth_and_writes_the_event,
    a_reconnect_at_a_stale_version_or_a_taken_create_writes_nothing,
);

fn session(id: &str, expires_in: i64) -> NewConnectSession {
    NewConnectSession {
        id: id.to_owned(),
        project: "acme".into(),
        provider: "google".into(),
        external_id: "u1".into(),
        scopes: vec!["read".into(), "offline_access".into()],
        redirect_after: Some("https://app.example.com/done".into()),
        created_at: T0,
        expires_at: at(expires_in),
    }
}

fn hash(n: u8) -> Vec<u8> {
    vec![n; 32]
}

/// Inserts and begins session `id` with state hash `hash(n)`, expiring at `at(600)`.
async fn begun(store: &dyn Store, id: &str, n: u8) {
    store.insert_connect_session(session(id, 600)).await.unwrap();
    let begin = store
        .begin_connect_session(id, hash(n), sealed("verifier"), at(1))
        .await
        .unwrap();
    assert!(matches!(begin, Begin::Begun(_)), "{begin:?}");
}

async fn consumed(store: &dyn Store, n: u8, now: i64) -> Consume {
    store.consume_connect_session(&hash(n), at(now)).await.unwrap()
}

pub async fn a_new_session_is_pending_not_begun_and_reads_back_as_inserted(store: Arc<dyn Store>) {
    let inserted = store.insert_connect_session(session("cs_1", 600)).await.unwrap();
    assert_eq!(inserted.status, SessionStatus::Pending);
    assert_eq!(inserted.scopes, vec!["read".to_owned(), "offline_access".to_owned()]);
    assert_eq!(inserted.redirect_after.as_deref(), Some("https://app.example.com/done"));
    assert_eq!((inserted.created_at, inserted.expires_at), (T0, at(600)));
    assert!(inserted.state_hash.is_none() && inserted.code_verifier.is_none() && inserted.begun_at.is_none());
    assert_eq!(store.get_connect_session("cs_1").await.unwrap(), Some(inserted));
    assert_eq!(store.get_connect_session("cs_x").await.unwrap(), None);
    assert!(store.insert_connect_session(session("cs_1", 600)).await.is_err());
}

pub async fn beginning_a_session_stores_the_state_hash_and_verifier_and_a_new_begin_replaces_them(
    store: Arc<dyn Store>,
) {
    begun(&*store, "cs_1", 1).await;
    let stored = store.get_connect_session("cs_1").await.unwrap().unwrap();
    assert_eq!(stored.state_hash, Some(hash(1)));
    assert_eq!(stored.code_verifier, Some(sealed("verifier")));
    assert_eq!(stored.begun_at, Some(at(1)));
    let again = store
        .begin_connect_session("cs_1", hash(2), sealed("verifier-2"), at(2))
        .await
        .unwrap();
    let Begin::Begun(again) = again else {
        panic!("{again:?}")
    };
    assert_eq!(again.state_hash, Some(hash(2)));
    assert_eq!(again.code_verifier, Some(sealed("verifier-2")));
    // The first state no longer names anything.
    assert!(matches!(consumed(&*store, 1, 3).await, Consume::Unknown));
    assert!(matches!(
        store
            .begin_connect_session("cs_x", hash(3), sealed("v"), at(2))
            .await
            .unwrap(),
        Begin::NotFound
    ));
}

pub async fn a_state_is_consumed_once_and_then_refused(store: Arc<dyn Store>) {
    begun(&*store, "cs_1", 1).await;
    let Consume::Consumed(first) = consumed(&*store, 1, 5).await else {
        panic!("not consumed")
    };
    assert_eq!(first.status, SessionStatus::Exchanging);
    assert_eq!(first.consumed_at, Some(at(5)));
    let Consume::AlreadyUsed(second) = consumed(&*store, 1, 6).await else {
        panic!("consumed twice")
    };
    assert_eq!(second.consumed_at, Some(at(5)));
    // Nor can it be begun again.
    let begin = store
        .begin_connect_session("cs_1", hash(2), sealed("v"), at(7))
        .await
        .unwrap();
    assert!(matches!(begin, Begin::NotPending(_)), "{begin:?}");
    assert!(matches!(consumed(&*store, 2, 8).await, Consume::Unknown));
}

pub async fn an_unknown_state_is_refused(store: Arc<dyn Store>) {
    begun(&*store, "cs_1", 1).await;
    assert!(matches!(consumed(&*store, 9, 5).await, Consume::Unknown));
    // A session not begun has no state: nothing matches it.
    store.insert_connect_session(session("cs_2", 600)).await.unwrap();
    assert!(matches!(consumed(&*store, 0, 5).await, Consume::Unknown));
    let untouched = store.get_connect_session("cs_1").await.unwrap().unwrap();
    assert_eq!(untouched.status, SessionStatus::Pending);
}

pub async fn an_expired_session_is_refused_and_marked_expired(store: Arc<dyn Store>) {
    begun(&*store, "cs_1", 1).await;
    let Consume::Expired(expired) = consumed(&*store, 1, 600).await else {
        panic!("not expired")
    };
    assert_eq!(expired.status, SessionStatus::Expired);
    assert_eq!(expired.finished_at, Some(at(600)));
    assert_eq!(expired.error_code.as_deref(), Some("expired"));
    assert!(matches!(consumed(&*store, 1, 601).await, Consume::AlreadyUsed(_)));
    // Beginning after the expiry expires it too.
    store.insert_connect_session(session("cs_2", 60)).await.unwrap();
    let begin = store
        .begin_connect_session("cs_2", hash(2), sealed("v"), at(61))
        .await
        .unwrap();
    let Begin::Expired(late) = begin else {
        panic!("{begin:?}")
    };
    assert_eq!(late.status, SessionStatus::Expired);
    assert!(late.state_hash.is_none());
}

pub async fn concurrent_consumers_of_one_state_exactly_one_wins(store: Arc<dyn Store>) {
    for round in 0..5u8 {
        let id = format!("cs_{round}");
        begun(&*store, &id, round + 1).await;
        let consumers = (0..8).map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.consume_connect_session(&hash(round + 1), at(5)).await })
        });
        let mut won = 0;
        for consumer in consumers.collect::<Vec<_>>() {
            match consumer.await.unwrap().unwrap() {
                Consume::Consumed(record) => {
                    assert_eq!(record.id, id);
                    won += 1;
                }
                Consume::AlreadyUsed(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
}

pub async fn a_consumed_session_fails_with_its_error_once(store: Arc<dyn Store>) {
    begun(&*store, "cs_1", 1).await;
    // Not yet consumed: it cannot fail.
    assert!(
        store
            .fail_connect_session("cs_1", "x", "y", at(2))
            .await
            .unwrap()
            .is_none()
    );
    consumed(&*store, 1, 3).await;
    let failed = store
        .fail_connect_session("cs_1", "access_denied", "the user refused", at(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, SessionStatus::Failed);
    assert_eq!(failed.error_code.as_deref(), Some("access_denied"));
    assert_eq!(failed.error_message.as_deref(), Some("the user refused"));
    assert_eq!(failed.finished_at, Some(at(4)));
    assert!(
        store
            .fail_connect_session("cs_1", "other", "m", at(5))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .fail_connect_session("cs_x", "other", "m", at(5))
            .await
            .unwrap()
            .is_none()
    );
}

async fn created_events(store: &dyn Store, kind: &str) -> usize {
    let filter = EventFilter {
        kind: Some(kind.to_owned()),
        ..EventFilter::default()
    };
    store.list_events(&filter, None, 100).await.unwrap().len()
}

pub async fn connecting_creates_a_connection_completes_the_session_and_writes_the_event(store: Arc<dyn Store>) {
    begun(&*store, "cs_1", 1).await;
    consumed(&*store, 1, 3).await;
    let new = connection("u1");
    let created_event = event("connection.created", Some("acme"), Some(new.id), 4);
    let outcome = store
        .connect_connection(Some("cs_1"), Connect::Create(new.clone()), at(4), vec![created_event])
        .await
        .unwrap();
    let ConnectOutcome::Created(record) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (record.id, record.version, record.status),
        (new.id, 1, ConnectionStatus::Active)
    );
    assert_eq!(record.created_at, at(4));
    let session = store.get_connect_session("cs_1").await.unwrap().unwrap();
    assert_eq!(session.status, SessionStatus::Completed);
    assert_eq!(session.connection_id, Some(new.id));
    assert_eq!(session.finished_at, Some(at(4)));
    assert_eq!(created_events(&*store, "connection.created").await, 1);
    let found = store.find_connection("acme", "google", "u1").await.unwrap();
    assert_eq!(found.map(|r| r.id), Some(new.id));
    assert!(store.find_connection("acme", "google", "u2").await.unwrap().is_none());
    assert!(store.find_connection("other", "google", "u1").await.unwrap().is_none());
}

/// A connection of `u1` that a dead grant moved to `needs_reauth`.
async fn needing_reauth(store: &dyn Store) -> ConnectionRecord {
    let inserted = store.insert_connection(connection("u1"), T0, Vec::new()).await.unwrap();
    store
        .record_failure(
            inserted.id,
            1,
            failure(ConnectionStatus::NeedsReauth, 1, 10, None),
            failed_attempt("invalid_grant", 400, 10),
            Vec::new(),
        )
        .await
        .unwrap()
        .unwrap()
}

pub async fn a_reconnect_keeps_the_id_clears_needs_reauth_and_writes_the_event(store: Arc<dyn Store>) {
    let dead = needing_reauth(&*store).await;
    assert_eq!(dead.status, ConnectionStatus::NeedsReauth);
    begun(&*store, "cs_1", 1).await;
    consumed(&*store, 1, 20).await;
    let mut new_tokens = tokens("access-2", 20);
    new_tokens.refresh_token = Some(sealed("refresh-2"));
    let reconnect = Connect::Reconnect {
        id: dead.id,
        expected_version: dead.version,
        tokens: new_tokens,
    };
    let reconnected_event = event("connection.reconnected", Some("acme"), Some(dead.id), 21);
    let outcome = store
        .connect_connection(Some("cs_1"), reconnect, at(21), vec![reconnected_event])
        .await
        .unwrap();
    let ConnectOutcome::Reconnected(record) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(record.id, dead.id);
    assert_eq!(record.status, ConnectionStatus::Active);
    assert_eq!(record.consecutive_failures, 0);
    assert!(record.last_error.is_none());
    assert_eq!(record.version, dead.version + 1);
    assert_eq!(record.access_token, sealed("access-2"));
    assert_eq!(record.refresh_token, Some(sealed("refresh-2")));
    assert_eq!(record.next_refresh_at, Some(at(20 + 3300)));
    assert_eq!(record.created_at, dead.created_at);
    let session = store.get_connect_session("cs_1").await.unwrap().unwrap();
    assert_eq!(
        (session.status, session.connection_id),
        (SessionStatus::Completed, Some(dead.id))
    );
    assert_eq!(created_events(&*store, "connection.reconnected").await, 1);
}

pub async fn a_reconnect_at_a_stale_version_or_a_taken_create_writes_nothing(store: Arc<dyn Store>) {
    let dead = needing_reauth(&*store).await;
    begun(&*store, "cs_1", 1).await;
    consumed(&*store, 1, 20).await;
    let stale = Connect::Reconnect {
        id: dead.id,
        expected_version: dead.version + 1,
        tokens: tokens("access-2", 20),
    };
    let reconnected_event = event("connection.reconnected", Some("acme"), Some(dead.id), 21);
    let outcome = store
        .connect_connection(Some("cs_1"), stale, at(21), vec![reconnected_event])
        .await
        .unwrap();
    assert!(matches!(outcome, ConnectOutcome::Stale), "{outcome:?}");
    // Same (project, provider, external_id), another id: taken.
    let taken = connection("u1");
    let created_event = event("connection.created", Some("acme"), Some(taken.id), 21);
    let outcome = store
        .connect_connection(Some("cs_1"), Connect::Create(taken), at(21), vec![created_event])
        .await
        .unwrap();
    assert!(matches!(outcome, ConnectOutcome::Stale), "{outcome:?}");
    assert_eq!(store.get_connection(dead.id).await.unwrap(), Some(dead));
    let session = store.get_connect_session("cs_1").await.unwrap().unwrap();
    assert_eq!(session.status, SessionStatus::Exchanging);
    assert_eq!(created_events(&*store, "connection.reconnected").await, 0);
    assert_eq!(created_events(&*store, "connection.created").await, 0);
}

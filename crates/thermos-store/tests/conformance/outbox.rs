//! The outbox part of the Store contract: events written with transitions,
//! their fan-out to webhooks and the operators' channel, ordered claims,
//! attempts, redelivery, the alert aggregator's cursor and retention.
//!
//! Cases are listed in the `conformance!` macro in `conformance.rs`.

use std::collections::HashSet;
use std::sync::Arc;

use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::{
    ALERT_KIND, DeliveryNext, DeliveryRecord, DeliveryStatus, EventFilter, EventWithDeliveries, NewEvent,
};
use thermos_store::{FinishOutcome, Store, StoreError};

use crate::support::{T0, at, attempt, connection, delivery_attempt, event, failed_attempt, failure, tokens, webhook};

/// Inserts a connection of `acme` with no event; returns its id.
async fn connection_id(store: &dyn Store, external_id: &str) -> ConnectionId {
    store
        .insert_connection(connection(external_id), T0, Vec::new())
        .await
        .expect("insert connection")
        .id
}

async fn get_event(store: &dyn Store, event: &NewEvent) -> EventWithDeliveries {
    store
        .get_event(&event.id)
        .await
        .expect("get event")
        .expect("event exists")
}

async fn claim(store: &dyn Store, owner: &str, now: i64, until: i64) -> Vec<DeliveryRecord> {
    store
        .claim_deliveries(owner, at(now), at(until), 100)
        .await
        .expect("claim deliveries")
}

fn event_ids(deliveries: &[DeliveryRecord]) -> Vec<&str> {
    deliveries.iter().map(|d| d.event.event.id.as_str()).collect()
}

async fn all_events(store: &dyn Store) -> Vec<EventWithDeliveries> {
    store
        .list_events(&EventFilter::default(), None, 100)
        .await
        .expect("list events")
}

/// Two webhooks per project: acme wants all and `connection.created`,
/// acme's third wants only `connection.failing`; globex wants all.
async fn acme_and_globex_webhooks(store: &dyn Store) {
    for hook in [
        webhook("wh_all", "acme", None, 0),
        webhook(
            "wh_created",
            "acme",
            Some(&["connection.created", "connection.recovered"]),
            1,
        ),
        webhook("wh_failing", "acme", Some(&["connection.failing"]), 2),
        webhook("wh_globex", "globex", None, 3),
    ] {
        store.insert_webhook(hook).await.unwrap();
    }
}

pub async fn an_event_written_with_a_new_connection_has_one_delivery_per_matching_webhook(store: Arc<dyn Store>) {
    acme_and_globex_webhooks(&*store).await;
    let new = connection("u1");
    let created = event("connection.created", Some("acme"), Some(new.id), 5);
    store
        .insert_connection(new.clone(), T0, vec![created.clone()])
        .await
        .unwrap();
    let found = get_event(&*store, &created).await;
    assert_eq!(found.event.event, created);
    let hooks: Vec<_> = found.deliveries.iter().map(|d| d.webhook_id.as_deref()).collect();
    assert_eq!(hooks, [Some("wh_all"), Some("wh_created")]);
    for delivery in &found.deliveries {
        assert_eq!(delivery.status, DeliveryStatus::Pending);
        assert_eq!(delivery.attempts, 0);
        assert_eq!(delivery.next_attempt_at, at(5));
        assert_eq!(delivery.created_at, at(5));
        assert_eq!(
            (delivery.last_http_status, delivery.last_error.as_deref()),
            (None, None)
        );
        assert_eq!(delivery.delivered_at, None);
        assert_eq!(delivery.event, found.event);
    }
    assert_eq!(all_events(&*store).await, [found]);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 2);
}

pub async fn every_applied_transition_writes_its_events_in_its_transaction(store: Arc<dyn Store>) {
    acme_and_globex_webhooks(&*store).await;
    let id = connection_id(&*store, "u1").await;
    let failing = event("connection.failing", Some("acme"), Some(id), 10);
    let recorded = store
        .record_failure(
            id,
            1,
            failure(ConnectionStatus::Failing, 3, 10, Some(70)),
            failed_attempt("server_error", 503, 9),
            vec![failing.clone()],
        )
        .await
        .unwrap();
    assert!(recorded.is_some());
    let recovered = event("connection.recovered", Some("acme"), Some(id), 80);
    let finished = store
        .finish_refresh(
            id,
            1,
            tokens("access-2", 80),
            attempt("refreshed", 79),
            vec![recovered.clone()],
        )
        .await
        .unwrap();
    assert!(matches!(finished, FinishOutcome::Committed(_)));
    let reconnected = event("connection.reconnected", Some("acme"), Some(id), 90);
    let replaced = store
        .replace_tokens(id, tokens("access-3", 90), at(90), vec![reconnected.clone()])
        .await
        .unwrap();
    assert!(replaced.is_some());
    let listed: Vec<_> = all_events(&*store)
        .await
        .into_iter()
        .map(|e| {
            let hooks: Vec<_> = e.deliveries.iter().filter_map(|d| d.webhook_id.clone()).collect();
            (e.event.event.kind, hooks)
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("connection.reconnected".to_owned(), vec!["wh_all".to_owned()]),
            (
                "connection.recovered".to_owned(),
                vec!["wh_all".to_owned(), "wh_created".to_owned()]
            ),
            (
                "connection.failing".to_owned(),
                vec!["wh_all".to_owned(), "wh_failing".to_owned()]
            ),
        ]
    );
}

pub async fn a_transition_whose_check_fails_writes_no_event(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let new = connection("u1");
    store.insert_connection(new.clone(), T0, Vec::new()).await.unwrap();
    let id = new.id;
    let finished = store
        .finish_refresh(
            id,
            7,
            tokens("x", 1),
            attempt("refreshed", 1),
            vec![event("connection.recovered", Some("acme"), Some(id), 1)],
        )
        .await
        .unwrap();
    assert!(matches!(finished, FinishOutcome::VersionChanged));
    let failed = store
        .record_failure(
            id,
            7,
            failure(ConnectionStatus::Failing, 1, 2, Some(60)),
            attempt("failed", 2),
            vec![event("connection.refresh_failed", Some("acme"), Some(id), 2)],
        )
        .await
        .unwrap();
    assert!(failed.is_none());
    let missing = ConnectionId::generate();
    let replaced = store
        .replace_tokens(
            missing,
            tokens("x", 3),
            at(3),
            vec![event("connection.reconnected", Some("acme"), Some(missing), 3)],
        )
        .await
        .unwrap();
    assert!(replaced.is_none());
    let duplicate = store
        .insert_connection(
            connection("u1"),
            T0,
            vec![event("connection.created", Some("acme"), None, 4)],
        )
        .await;
    assert!(matches!(duplicate, Err(StoreError::Conflict)), "{duplicate:?}");
    assert_eq!(all_events(&*store).await, []);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 0);
}

pub async fn an_alert_goes_to_the_operators_channel_and_a_projectless_event_to_nobody(store: Arc<dyn Store>) {
    acme_and_globex_webhooks(&*store).await;
    let alert = event(ALERT_KIND, None, None, 1);
    let project_alert = event(ALERT_KIND, Some("acme"), None, 2);
    let opened = event("provider.circuit_opened", None, None, 3);
    store
        .insert_events(vec![alert.clone(), project_alert.clone(), opened.clone()])
        .await
        .unwrap();
    for sent in [&alert, &project_alert] {
        let found = get_event(&*store, sent).await;
        assert_eq!(found.deliveries.len(), 1, "{found:?}");
        assert_eq!(found.deliveries[0].webhook_id, None);
        assert_eq!(found.deliveries[0].status, DeliveryStatus::Pending);
    }
    assert_eq!(get_event(&*store, &opened).await.deliveries, []);
    let seqs: Vec<_> = all_events(&*store).await.iter().map(|e| e.event.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    // A duplicate id fails the whole batch.
    let again = store
        .insert_events(vec![event(ALERT_KIND, None, None, 4), alert.clone()])
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    assert_eq!(all_events(&*store).await.len(), 3);
    assert!(store.get_event("evt_unknown").await.unwrap().is_none());
}

pub async fn webhooks_read_back_as_registered_in_creation_order(store: Arc<dyn Store>) {
    acme_and_globex_webhooks(&*store).await;
    let expected = webhook(
        "wh_created",
        "acme",
        Some(&["connection.created", "connection.recovered"]),
        1,
    );
    assert_eq!(store.get_webhook("wh_created").await.unwrap(), Some(expected));
    assert_eq!(store.get_webhook("wh_missing").await.unwrap(), None);
    let ids = |hooks: Vec<thermos_store::outbox::WebhookRecord>| hooks.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_webhooks(None).await.unwrap()),
        ["wh_all", "wh_created", "wh_failing", "wh_globex"]
    );
    assert_eq!(ids(store.list_webhooks(Some("globex")).await.unwrap()), ["wh_globex"]);
    assert_eq!(
        ids(store.list_webhooks(Some("initech")).await.unwrap()),
        Vec::<String>::new()
    );
    let again = store.insert_webhook(webhook("wh_all", "globex", None, 9)).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
}

pub async fn deleting_a_webhook_fails_its_pending_deliveries_and_stops_new_ones(store: Arc<dyn Store>) {
    acme_and_globex_webhooks(&*store).await;
    let id = connection_id(&*store, "u1").await;
    let first = event("connection.created", Some("acme"), Some(id), 1);
    let second = event("connection.failing", Some("acme"), Some(id), 2);
    store.insert_events(vec![first.clone(), second.clone()]).await.unwrap();
    // wh_all delivers the first event; its second stays pending.
    let claimed = claim(&*store, "w1", 3, 60).await;
    let delivered = claimed
        .iter()
        .find(|d| d.webhook_id.as_deref() == Some("wh_all"))
        .unwrap();
    store
        .finish_delivery(
            delivered.id,
            "w1",
            delivery_attempt(Some(200), 4),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    assert!(store.delete_webhook("wh_all", at(5)).await.unwrap());
    assert!(!store.delete_webhook("wh_all", at(6)).await.unwrap());
    assert!(!store.delete_webhook("wh_missing", at(6)).await.unwrap());
    assert_eq!(store.get_webhook("wh_all").await.unwrap(), None);
    assert!(
        store
            .list_webhooks(Some("acme"))
            .await
            .unwrap()
            .iter()
            .all(|h| h.id != "wh_all")
    );
    let of = |found: &EventWithDeliveries| {
        found
            .deliveries
            .iter()
            .find(|d| d.webhook_id.as_deref() == Some("wh_all"))
            .cloned()
            .unwrap()
    };
    assert_eq!(of(&get_event(&*store, &first).await).status, DeliveryStatus::Delivered);
    let failed = of(&get_event(&*store, &second).await);
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("webhook deleted"));
    // No new deliveries; redelivery skips the deleted webhook.
    let third = event("connection.recovered", Some("acme"), Some(id), 7);
    store.insert_events(vec![third.clone()]).await.unwrap();
    let hooks: Vec<_> = get_event(&*store, &third)
        .await
        .deliveries
        .into_iter()
        .filter_map(|d| d.webhook_id)
        .collect();
    assert_eq!(hooks, ["wh_created"]);
    assert_eq!(store.redeliver_event(&second.id, at(8)).await.unwrap(), 1);
    assert_eq!(of(&get_event(&*store, &second).await).status, DeliveryStatus::Failed);
}

pub async fn claim_deliveries_leases_due_deliveries_earliest_first(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let (a, b, c) = (
        connection_id(&*store, "a").await,
        connection_id(&*store, "b").await,
        connection_id(&*store, "c").await,
    );
    let early = event("connection.failing", Some("acme"), Some(a), 10);
    let late = event("connection.failing", Some("acme"), Some(b), 5);
    let future = event("connection.failing", Some("acme"), Some(c), 100);
    store
        .insert_events(vec![early.clone(), late.clone(), future.clone()])
        .await
        .unwrap();
    assert_eq!(claim(&*store, "w1", 4, 60).await, []);
    let first = store.claim_deliveries("w1", at(20), at(60), 1).await.unwrap();
    assert_eq!(event_ids(&first), [early.id.as_str()]);
    assert_eq!(
        first[0].next_attempt_at,
        at(10),
        "the planned time, not the lease's end"
    );
    let rest = claim(&*store, "w2", 20, 60).await;
    assert_eq!(event_ids(&rest), [late.id.as_str()]);
    // Leased: not claimed again until the lease expires; then anyone may.
    assert_eq!(claim(&*store, "w1", 59, 120).await, []);
    assert_eq!(store.next_delivery_due_at().await.unwrap(), Some(at(60)));
    let again = claim(&*store, "w3", 60, 120).await;
    assert_eq!(event_ids(&again), [early.id.as_str(), late.id.as_str()]);
    assert_eq!(event_ids(&claim(&*store, "w3", 100, 160).await), [future.id.as_str()]);
}

pub async fn only_the_first_pending_delivery_of_a_webhook_and_connection_is_claimable(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let (a, b) = (connection_id(&*store, "a").await, connection_id(&*store, "b").await);
    let a1 = event("connection.refresh_failed", Some("acme"), Some(a), 1);
    let a2 = event("connection.failing", Some("acme"), Some(a), 2);
    let b1 = event("connection.failing", Some("acme"), Some(b), 3);
    store
        .insert_events(vec![a1.clone(), a2.clone(), b1.clone()])
        .await
        .unwrap();
    let claimed = claim(&*store, "w1", 10, 40).await;
    assert_eq!(event_ids(&claimed), [a1.id.as_str(), b1.id.as_str()]);
    // a1 fails and is retried at 100: a2 waits behind it, even after a1's
    // lease is gone and a2 is long due.
    store
        .finish_delivery(
            claimed[0].id,
            "w1",
            delivery_attempt(Some(503), 11),
            DeliveryNext::Retry { at: at(100) },
        )
        .await
        .unwrap();
    store
        .finish_delivery(
            claimed[1].id,
            "w1",
            delivery_attempt(Some(204), 11),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    assert_eq!(claim(&*store, "w1", 50, 80).await, []);
    assert_eq!(store.next_delivery_due_at().await.unwrap(), Some(at(100)));
    let retried = claim(&*store, "w1", 100, 130).await;
    assert_eq!(event_ids(&retried), [a1.id.as_str()]);
    store
        .finish_delivery(
            retried[0].id,
            "w1",
            delivery_attempt(Some(200), 101),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    assert_eq!(event_ids(&claim(&*store, "w1", 101, 130).await), [a2.id.as_str()]);
}

pub async fn a_failed_delivery_lets_the_next_of_its_channel_go(store: Arc<dyn Store>) {
    // The operators' channel: alerts without a connection are one channel.
    let alerts = [event(ALERT_KIND, None, None, 1), event(ALERT_KIND, None, None, 2)];
    store.insert_events(alerts.to_vec()).await.unwrap();
    let first = claim(&*store, "w1", 10, 40).await;
    assert_eq!(event_ids(&first), [alerts[0].id.as_str()]);
    store
        .finish_delivery(first[0].id, "w1", delivery_attempt(None, 11), DeliveryNext::Failed)
        .await
        .unwrap();
    assert_eq!(event_ids(&claim(&*store, "w1", 11, 40).await), [alerts[1].id.as_str()]);
}

pub async fn finish_delivery_records_the_attempt_and_applies_the_outcome(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let sent = event("connection.failing", Some("acme"), None, 1);
    store.insert_events(vec![sent.clone()]).await.unwrap();
    let id = claim(&*store, "w1", 1, 30).await[0].id;
    store
        .finish_delivery(id, "w1", delivery_attempt(None, 2), DeliveryNext::Retry { at: at(60) })
        .await
        .unwrap();
    let retrying = get_event(&*store, &sent).await.deliveries[0].clone();
    assert_eq!(retrying.status, DeliveryStatus::Pending);
    assert_eq!(retrying.attempts, 1);
    assert_eq!(retrying.next_attempt_at, at(60));
    assert_eq!(retrying.last_http_status, None);
    assert_eq!(retrying.last_error.as_deref(), Some("connection refused"));
    assert_eq!(claim(&*store, "w1", 59, 90).await, []);
    assert_eq!(claim(&*store, "w1", 60, 90).await.len(), 1);
    store
        .finish_delivery(id, "w1", delivery_attempt(Some(200), 61), DeliveryNext::Delivered)
        .await
        .unwrap();
    let delivered = get_event(&*store, &sent).await.deliveries[0].clone();
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    assert_eq!(delivered.attempts, 2);
    assert_eq!(delivered.delivered_at, Some(at(61)));
    assert_eq!((delivered.last_http_status, delivered.last_error), (Some(200), None));
    assert_eq!(
        store.list_delivery_attempts(id).await.unwrap(),
        [delivery_attempt(None, 2), delivery_attempt(Some(200), 61)]
    );
    assert_eq!(store.next_delivery_due_at().await.unwrap(), None);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 0);
    // An unknown delivery: nothing happens.
    store
        .finish_delivery(
            id + 1000,
            "w1",
            delivery_attempt(Some(200), 62),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    assert_eq!(store.list_delivery_attempts(id + 1000).await.unwrap(), []);
}

pub async fn finish_delivery_by_a_worker_that_lost_the_lease_only_records_the_attempt(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let sent = event("connection.failing", Some("acme"), None, 1);
    store.insert_events(vec![sent.clone()]).await.unwrap();
    let id = claim(&*store, "w1", 1, 30).await[0].id;
    // w1's lease expires and w2 takes the delivery.
    assert_eq!(claim(&*store, "w2", 30, 60).await.len(), 1);
    store
        .finish_delivery(id, "w1", delivery_attempt(Some(200), 31), DeliveryNext::Delivered)
        .await
        .unwrap();
    let still = get_event(&*store, &sent).await.deliveries[0].clone();
    assert_eq!(
        (still.status, still.attempts, still.delivered_at),
        (DeliveryStatus::Pending, 1, None)
    );
    assert_eq!(claim(&*store, "w3", 59, 90).await, [], "w2 still holds the lease");
    store
        .finish_delivery(id, "w2", delivery_attempt(Some(503), 32), DeliveryNext::Failed)
        .await
        .unwrap();
    let failed = get_event(&*store, &sent).await.deliveries[0].clone();
    assert_eq!((failed.status, failed.attempts), (DeliveryStatus::Failed, 2));
    assert_eq!(store.list_delivery_attempts(id).await.unwrap().len(), 2);
}

pub async fn next_delivery_due_at_is_the_earliest_due_time_of_claimable_deliveries(store: Arc<dyn Store>) {
    assert_eq!(store.next_delivery_due_at().await.unwrap(), None);
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let a = connection_id(&*store, "a").await;
    store
        .insert_events(vec![
            event("connection.failing", Some("acme"), Some(a), 50),
            event("connection.failing", Some("acme"), Some(a), 20),
            event("connection.failing", Some("acme"), None, 30),
        ])
        .await
        .unwrap();
    // a's second event is earlier but waits behind its first.
    assert_eq!(store.next_delivery_due_at().await.unwrap(), Some(at(30)));
}

pub async fn redelivering_an_event_puts_its_deliveries_back_to_pending_due_now(store: Arc<dyn Store>) {
    acme_and_globex_webhooks(&*store).await;
    let id = connection_id(&*store, "u1").await;
    let created = event("connection.created", Some("acme"), Some(id), 1);
    store.insert_events(vec![created.clone()]).await.unwrap();
    let claimed = claim(&*store, "w1", 1, 30).await;
    assert_eq!(claimed.len(), 2);
    store
        .finish_delivery(
            claimed[0].id,
            "w1",
            delivery_attempt(Some(200), 2),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    store
        .finish_delivery(
            claimed[1].id,
            "w1",
            delivery_attempt(Some(410), 2),
            DeliveryNext::Failed,
        )
        .await
        .unwrap();
    // A later event of the same connection is pending for wh_all.
    let later = event("connection.failing", Some("acme"), Some(id), 3);
    store.insert_events(vec![later.clone()]).await.unwrap();
    assert_eq!(store.redeliver_event(&created.id, at(40)).await.unwrap(), 2);
    for delivery in get_event(&*store, &created).await.deliveries {
        assert_eq!(delivery.status, DeliveryStatus::Pending);
        assert_eq!(delivery.next_attempt_at, at(40));
        assert_eq!(delivery.attempts, 1);
        assert_eq!(delivery.delivered_at, None);
    }
    // The redelivered event goes out before the later one of its channel
    // (wh_all); the later event's other channel (wh_failing) is not held up.
    let other = claim(&*store, "w1", 39, 60).await;
    assert_eq!(event_ids(&other), [later.id.as_str()]);
    assert_eq!(other[0].webhook_id.as_deref(), Some("wh_failing"));
    let again = claim(&*store, "w1", 40, 60).await;
    assert_eq!(event_ids(&again), [created.id.as_str(), created.id.as_str()]);
    assert_eq!(store.redeliver_event("evt_unknown", at(41)).await.unwrap(), 0);
    let silent = event("provider.circuit_opened", None, None, 4);
    store.insert_events(vec![silent.clone()]).await.unwrap();
    assert_eq!(store.redeliver_event(&silent.id, at(41)).await.unwrap(), 0);
}

pub async fn list_events_filters_and_pages_newest_first(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let (a, b) = (connection_id(&*store, "a").await, connection_id(&*store, "b").await);
    let events = vec![
        event("connection.created", Some("acme"), Some(a), 1),
        event("connection.created", Some("acme"), Some(b), 2),
        event("connection.failing", Some("acme"), Some(a), 3),
        event("connection.created", Some("globex"), None, 4),
        event(ALERT_KIND, None, None, 5),
    ];
    store.insert_events(events.clone()).await.unwrap();
    let delivered = claim(&*store, "w1", 10, 40).await;
    store
        .finish_delivery(
            delivered[0].id,
            "w1",
            delivery_attempt(Some(200), 11),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    let list = |filter: EventFilter, before: Option<i64>, limit: u32| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_events(&filter, before, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.event.event.id)
                .collect::<Vec<_>>()
        }
    };
    let id = |i: usize| events[i].id.clone();
    assert_eq!(
        list(EventFilter::default(), None, 10).await,
        [id(4), id(3), id(2), id(1), id(0)]
    );
    let acme = EventFilter {
        project: Some("acme".into()),
        ..EventFilter::default()
    };
    assert_eq!(list(acme.clone(), None, 10).await, [id(2), id(1), id(0)]);
    let page = store.list_events(&acme, None, 2).await.unwrap();
    let before = page.last().unwrap().event.seq;
    assert_eq!(list(acme.clone(), Some(before), 2).await, [id(0)]);
    let created = EventFilter {
        kind: Some("connection.created".into()),
        ..EventFilter::default()
    };
    assert_eq!(list(created, None, 10).await, [id(3), id(1), id(0)]);
    let of_a = EventFilter {
        connection_id: Some(a),
        ..EventFilter::default()
    };
    assert_eq!(list(of_a, None, 10).await, [id(2), id(0)]);
    let delivered_only = EventFilter {
        delivery_status: Some(DeliveryStatus::Delivered),
        ..EventFilter::default()
    };
    assert_eq!(list(delivered_only, None, 10).await, [id(0)]);
    let pending = EventFilter {
        delivery_status: Some(DeliveryStatus::Pending),
        ..EventFilter::default()
    };
    assert_eq!(list(pending, None, 10).await, [id(4), id(2), id(1)]);
}

pub async fn events_after_feeds_the_aggregator_in_insertion_order(store: Arc<dyn Store>) {
    assert_eq!(store.get_cursor("alerts").await.unwrap(), 0);
    assert_eq!(store.events_after(0, 10).await.unwrap(), []);
    let events: Vec<_> = (0..5)
        .map(|i| event("connection.failing", Some("acme"), None, 10 - i))
        .collect();
    store.insert_events(events.clone()).await.unwrap();
    let all = store.events_after(0, 10).await.unwrap();
    assert_eq!(all.iter().map(|e| e.event.clone()).collect::<Vec<_>>(), events);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let after = store.events_after(all[1].seq, 2).await.unwrap();
    assert_eq!(after, all[2..4]);
    assert_eq!(store.events_after(all[4].seq, 10).await.unwrap(), []);
}

pub async fn commit_alerts_records_the_alerts_and_moves_the_cursor_in_one_transaction(store: Arc<dyn Store>) {
    let seen = event("connection.failing", Some("acme"), None, 1);
    store.insert_events(vec![seen.clone()]).await.unwrap();
    let seq = store.events_after(0, 10).await.unwrap()[0].seq;
    let alert = event(ALERT_KIND, None, None, 2);
    store.commit_alerts(vec![alert.clone()], "alerts", seq).await.unwrap();
    assert_eq!(store.get_cursor("alerts").await.unwrap(), seq);
    assert_eq!(store.get_cursor("other").await.unwrap(), 0);
    let found = get_event(&*store, &alert).await;
    assert_eq!(found.deliveries.len(), 1);
    assert_eq!(found.deliveries[0].webhook_id, None);
    // A failing commit changes neither: no alert, no cursor move.
    let fresh = event(ALERT_KIND, None, None, 3);
    let failed = store
        .commit_alerts(vec![fresh.clone(), alert.clone()], "alerts", seq + 10)
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict)), "{failed:?}");
    assert_eq!(store.get_cursor("alerts").await.unwrap(), seq);
    assert!(store.get_event(&fresh.id).await.unwrap().is_none());
    // A commit without alerts still moves the cursor.
    store.commit_alerts(Vec::new(), "alerts", seq + 1).await.unwrap();
    assert_eq!(store.get_cursor("alerts").await.unwrap(), seq + 1);
}

pub async fn prune_outbox_deletes_finished_deliveries_and_old_events_but_keeps_pending_ones(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    store
        .insert_webhook(webhook("wh_gone", "globex", None, 0))
        .await
        .unwrap();
    let (a, b, c) = (
        connection_id(&*store, "a").await,
        connection_id(&*store, "b").await,
        connection_id(&*store, "c").await,
    );
    let old_delivered = event("connection.created", Some("acme"), Some(a), 1);
    let old_failed = event("connection.created", Some("acme"), Some(b), 2);
    let old_pending = event("connection.created", Some("acme"), Some(c), 3);
    let old_silent = event("provider.circuit_opened", None, None, 4);
    let old_gone = event("connection.created", Some("globex"), None, 5);
    let new_delivered = event("connection.failing", Some("acme"), Some(a), 200);
    store
        .insert_events(vec![
            old_delivered.clone(),
            old_failed.clone(),
            old_pending.clone(),
            old_silent.clone(),
            old_gone.clone(),
            new_delivered.clone(),
        ])
        .await
        .unwrap();
    assert!(store.delete_webhook("wh_gone", at(6)).await.unwrap());
    let claimed = claim(&*store, "w1", 10, 40).await;
    assert_eq!(
        event_ids(&claimed),
        [
            old_delivered.id.as_str(),
            old_failed.id.as_str(),
            old_pending.id.as_str()
        ]
    );
    store
        .finish_delivery(
            claimed[0].id,
            "w1",
            delivery_attempt(Some(200), 11),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    store
        .finish_delivery(
            claimed[1].id,
            "w1",
            delivery_attempt(Some(500), 11),
            DeliveryNext::Failed,
        )
        .await
        .unwrap();
    store
        .finish_delivery(
            claimed[2].id,
            "w1",
            delivery_attempt(Some(500), 11),
            DeliveryNext::Retry { at: at(300) },
        )
        .await
        .unwrap();
    let next = claim(&*store, "w1", 200, 240).await;
    assert_eq!(event_ids(&next), [new_delivered.id.as_str()]);
    store
        .finish_delivery(
            next[0].id,
            "w1",
            delivery_attempt(Some(200), 201),
            DeliveryNext::Delivered,
        )
        .await
        .unwrap();
    // Deleted: 2 finished old deliveries with 2 attempts, the tombstoned
    // webhook's failed delivery, 4 events (delivered, failed, silent, gone)
    // and the webhook tombstone.
    assert_eq!(store.prune_outbox(at(100)).await.unwrap(), 2 + 2 + 1 + 4 + 1);
    let left: HashSet<_> = all_events(&*store)
        .await
        .into_iter()
        .map(|e| e.event.event.id)
        .collect();
    assert_eq!(left, HashSet::from([old_pending.id.clone(), new_delivered.id.clone()]));
    assert_eq!(store.list_delivery_attempts(claimed[0].id).await.unwrap(), []);
    assert_eq!(store.list_delivery_attempts(claimed[2].id).await.unwrap().len(), 1);
    assert_eq!(store.count_pending_deliveries().await.unwrap(), 1);
    assert_eq!(store.prune_outbox(at(100)).await.unwrap(), 0);
    // The tombstone's id is free of deliveries and gone.
    let reused = store.insert_webhook(webhook("wh_gone", "globex", None, 7)).await;
    assert!(reused.is_ok(), "{reused:?}");
}

pub async fn deleting_a_connection_keeps_its_events(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let new = connection("u1");
    let created = event("connection.created", Some("acme"), Some(new.id), 1);
    store
        .insert_connection(new.clone(), T0, vec![created.clone()])
        .await
        .unwrap();
    let deleted = event("connection.deleted", Some("acme"), Some(new.id), 2);
    assert!(store.delete_connection(new.id, vec![deleted.clone()]).await.unwrap());
    let found = get_event(&*store, &created).await;
    assert_eq!(found.event.event.connection_id, Some(new.id));
    assert_eq!(found.deliveries.len(), 1);
    // The delete's own event commits with it, delivered after the earlier one.
    assert_eq!(get_event(&*store, &deleted).await.deliveries.len(), 1);
    assert_eq!(event_ids(&claim(&*store, "w1", 3, 30).await), [created.id.as_str()]);
    // Deleting what is gone writes no event.
    let again = event("connection.deleted", Some("acme"), Some(new.id), 3);
    assert!(!store.delete_connection(new.id, vec![again.clone()]).await.unwrap());
    assert!(store.get_event(&again.id).await.unwrap().is_none());
}

pub async fn concurrent_delivery_claimers_never_claim_a_delivery_twice(store: Arc<dyn Store>) {
    store.insert_webhook(webhook("wh_all", "acme", None, 0)).await.unwrap();
    let events: Vec<_> = (0..40)
        .map(|i| event("connection.failing", Some("acme"), Some(ConnectionId::generate()), i))
        .collect();
    store.insert_events(events).await.unwrap();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_deliveries(&format!("w{worker}"), at(100), at(200), 3)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|d| d.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(seen.insert(id), "delivery {id} claimed twice");
        }
    }
    assert_eq!(seen.len(), 40);
}

//! Operator alerts: the aggregator over a real SQLite store, fed the events
//! the engine writes, with a manual clock. An outage is one alert and one
//! all-clear; a crash never sends an alert twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use thermos::config::AlertFormat;
use thermos::outbox::alerts::{Aggregator, AlertBook, AlertSettings, CURSOR_NAME, Health, render};
use thermos_core::clock::{Clock, ManualClock};
use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::{ALERT_KIND, EventRecord, NewEvent};
use thermos_store::{
    Claim, FailureUpdate, LastError, NewAttempt, NewConnection, SqliteStore, Store, truncate_to_millis,
};
use time::OffsetDateTime;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2026-11-24 10:02 UTC);
const WINDOW: Duration = Duration::from_secs(60);

struct Fixture {
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_path(&dir.path().join("alerts.db")).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            store: Arc::new(store),
            clock: Arc::new(ManualClock::new(T0)),
            _dir: dir,
        }
    }

    fn aggregator(&self) -> Aggregator {
        self.aggregator_with(AlertSettings::default())
    }

    fn aggregator_with(&self, settings: AlertSettings) -> Aggregator {
        let store: Arc<dyn Store> = self.store.clone();
        let clock: Arc<dyn Clock> = self.clock.clone();
        Aggregator::new(store, clock, settings)
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    async fn insert(&self, events: Vec<NewEvent>) {
        for chunk in events.chunks(500) {
            self.store.insert_events(chunk.to_vec()).await.unwrap();
        }
    }

    /// Ticks every half window for `span`, moving the clock; the number of
    /// alerts emitted.
    async fn run_for(&self, aggregator: &Aggregator, span: Duration) -> usize {
        let mut emitted = 0;
        let end = self.now() + span;
        while self.now() < end {
            self.clock.advance(WINDOW / 2);
            emitted += aggregator.tick(self.now()).await.unwrap();
        }
        emitted
    }

    async fn alerts(&self) -> Vec<NewEvent> {
        let mut all = Vec::new();
        let mut seq = 0;
        loop {
            let page = self.store.events_after(seq, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            seq = last.seq;
            all.extend(page.into_iter().filter(|r| r.event.kind == ALERT_KIND).map(|r| r.event));
        }
        all
    }

    /// A connection of `provider` in the store, `failing` after one failure.
    async fn failing_connection(&self, provider: &str) -> ConnectionId {
        let id = ConnectionId::generate();
        let now = self.now();
        let new = NewConnection {
            id,
            project: "p".into(),
            provider: provider.into(),
            external_id: id.to_string(),
            access_token: Sealed::from_bytes(vec![1]),
            refresh_token: Some(Sealed::from_bytes(vec![2])),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now,
            expires_at: now + Duration::from_secs(3600),
            metadata: json!({}),
            next_refresh_at: now,
            grant: Default::default(),
            refresh_token_expires_at: None,
        };
        self.store.insert_connection(new, now, vec![]).await.unwrap();
        let Claim::Claimed(record) = self
            .store
            .claim_connection(id, "test", now, now + Duration::from_secs(60))
            .await
            .unwrap()
        else {
            panic!("not claimed")
        };
        let failure = FailureUpdate {
            status: ConnectionStatus::Failing,
            consecutive_failures: 1,
            last_error: LastError {
                code: "server_error".into(),
                message: "503".into(),
                http_status: Some(503),
                at: now,
            },
            next_refresh_at: Some(now + Duration::from_secs(30)),
        };
        let attempt = NewAttempt {
            started_at: now,
            trigger: "scheduled".into(),
            outcome: "failed".into(),
            error_code: Some("server_error".into()),
            http_status: Some(503),
            duration_ms: 5,
        };
        let events = vec![failed(provider, id, now)];
        self.store
            .record_failure(id, record.version, failure, attempt, events)
            .await
            .unwrap()
            .unwrap();
        id
    }

    /// `n` connections of `provider` failing, in the store and in events.
    async fn failing_connections(&self, provider: &str, n: usize) -> Vec<ConnectionId> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(self.failing_connection(provider).await);
        }
        ids
    }

    /// The connections refresh again: active in the store, `recovered` events.
    async fn recover(&self, provider: &str, ids: &[ConnectionId]) {
        for id in ids {
            self.store.reset_connection(*id, self.now()).await.unwrap().unwrap();
        }
        self.insert(recoveries(provider, ids, self.now())).await;
    }
}

fn evt_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// A connection event as the engine writes it.
fn connection_event(kind: &str, provider: &str, id: ConnectionId, data: Value, at: OffsetDateTime) -> NewEvent {
    let mut data = data;
    data["connection_id"] = json!(id.to_string());
    data["provider"] = json!(provider);
    NewEvent {
        id: evt_id(),
        kind: kind.into(),
        project: Some("p".into()),
        connection_id: Some(id),
        provider: Some(provider.into()),
        data,
        at: truncate_to_millis(at),
    }
}

fn failed(provider: &str, id: ConnectionId, at: OffsetDateTime) -> NewEvent {
    let error = json!({"code": "server_error", "message": "provider answered 503", "http_status": 503});
    connection_event(
        "connection.refresh_failed",
        provider,
        id,
        json!({"error": error, "consecutive_failures": 1}),
        at,
    )
}

fn recovered(provider: &str, id: ConnectionId, at: OffsetDateTime) -> NewEvent {
    connection_event("connection.recovered", provider, id, json!({"after_failures": 1}), at)
}

fn needs_reauth(provider: &str, id: ConnectionId, at: OffsetDateTime) -> NewEvent {
    let error = json!({"code": "invalid_grant", "message": "grant revoked", "http_status": 400});
    connection_event(
        "connection.needs_reauth",
        provider,
        id,
        json!({"error": error, "lost_response": false}),
        at,
    )
}

/// A provider event as the engine writes it.
fn provider_event(kind: &str, provider: &str, data: Value, at: OffsetDateTime) -> NewEvent {
    let mut data = data;
    data["provider"] = json!(provider);
    data["client_id"] = json!("client-1");
    NewEvent {
        id: evt_id(),
        kind: kind.into(),
        project: None,
        connection_id: None,
        provider: Some(provider.into()),
        data,
        at: truncate_to_millis(at),
    }
}

fn circuit_opened(provider: &str, at: OffsetDateTime) -> NewEvent {
    let data = json!({"reason": "failures", "error_code": "server_error"});
    provider_event("provider.circuit_opened", provider, data, at)
}

fn circuit_closed(provider: &str, at: OffsetDateTime) -> NewEvent {
    provider_event("provider.circuit_closed", provider, json!({}), at)
}

/// `n` connections failing within a few seconds of `at`.
fn outage(provider: &str, n: usize, at: OffsetDateTime) -> (Vec<ConnectionId>, Vec<NewEvent>) {
    let ids: Vec<ConnectionId> = (0..n).map(|_| ConnectionId::generate()).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(i, id)| failed(provider, *id, at + Duration::from_millis(3 * i as u64)))
        .collect();
    (ids, events)
}

fn recoveries(provider: &str, ids: &[ConnectionId], at: OffsetDateTime) -> Vec<NewEvent> {
    ids.iter().map(|id| recovered(provider, *id, at)).collect()
}

#[tokio::test]
async fn an_outage_of_1000_connections_is_one_alert_then_one_all_clear() {
    let f = Fixture::new().await;
    let aggregator = f.aggregator();
    let (mut ids, mut events) = outage("slack", 1000, f.now());
    events.push(circuit_opened("slack", f.now() + Duration::from_secs(2)));
    f.insert(events).await;

    assert_eq!(
        aggregator.tick(f.now() + Duration::from_secs(5)).await.unwrap(),
        0,
        "still gathering"
    );
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 1);
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 1);
    let trouble = &alerts[0].data;
    assert_eq!(alerts[0].provider.as_deref(), Some("slack"));
    assert_eq!(alerts[0].project, None);
    assert_eq!(trouble["alert"], "trouble");
    assert_eq!(trouble["severity"], "critical");
    assert_eq!(trouble["connections_affected"], 1000);
    assert_eq!(trouble["by_kind"]["refresh_failed"], 1000);
    assert_eq!(
        trouble["cause"],
        json!({"error_code": "server_error", "http_status": 503})
    );
    assert_eq!(trouble["circuit"], "open");
    assert_eq!(trouble["since"], "2026-11-24T10:02:00Z");
    let summary = trouble["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("1000 connections of `slack` failing since 10:02 UTC, cause server_error (HTTP 503)"),
        "{summary}"
    );
    assert!(summary.contains("circuit open"), "{summary}");

    // More connections fail later in the same outage: nothing new to say.
    let (more, events) = outage("slack", 500, f.now());
    ids.extend(more);
    f.insert(events).await;
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 0);

    // The provider answers again: the circuit closes, every connection recovers.
    let mut events = vec![circuit_closed("slack", f.now())];
    events.extend(recoveries("slack", &ids, f.now() + Duration::from_secs(1)));
    f.insert(events).await;
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 1);
    let alerts = f.alerts().await;
    assert_eq!(alerts.len(), 2);
    let clear = &alerts[1].data;
    assert_eq!(clear["alert"], "all_clear");
    assert_eq!(clear["severity"], "resolved");
    assert_eq!(clear["circuit"], "closed");
    assert_eq!(clear["by_kind"]["recovered"], 1500);
    let summary = clear["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("`slack` is healthy again after failures since 10:02 UTC"),
        "{summary}"
    );

    // Quiet again: nothing more, and the cursor has caught up with the stream.
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 0);
    let last = f.store.events_after(0, 10_000).await.unwrap().last().unwrap().seq;
    assert_eq!(f.store.get_cursor(CURSOR_NAME).await.unwrap(), last);
}

#[tokio::test]
async fn a_second_provider_alerts_separately() {
    let f = Fixture::new().await;
    let aggregator = f.aggregator();
    let (_, mut events) = outage("slack", 300, f.now());
    events.push(circuit_opened("slack", f.now()));
    f.insert(events).await;
    f.failing_connections("hubspot", 7).await;

    assert_eq!(f.run_for(&aggregator, 4 * WINDOW).await, 2);
    let alerts = f.alerts().await;
    let by_provider = |p: &str| {
        alerts
            .iter()
            .find(|a| a.provider.as_deref() == Some(p))
            .unwrap()
            .data
            .clone()
    };
    assert_eq!(by_provider("slack")["connections_affected"], 300);
    assert_eq!(by_provider("hubspot")["connections_affected"], 7);
    assert_eq!(by_provider("hubspot")["severity"], "warning");
}

#[tokio::test]
async fn a_crash_never_sends_an_alert_twice_and_the_successor_sends_the_all_clear() {
    let f = Fixture::new().await;
    let (ids, mut events) = outage("slack", 1000, f.now());
    events.push(circuit_opened("slack", f.now()));
    f.insert(events).await;
    // Another provider's whole episode after slack's start: replayed too.
    f.clock.advance(Duration::from_secs(1));
    let hub = f.failing_connections("hubspot", 3).await;

    let first = f.aggregator();
    assert_eq!(f.run_for(&first, 2 * WINDOW).await, 2);
    f.recover("hubspot", &hub).await;
    assert_eq!(f.run_for(&first, 2 * WINDOW).await, 1, "hubspot's all-clear");
    drop(first);

    // A new process on the same store: it rebuilds and stays silent.
    let second = f.aggregator();
    assert_eq!(f.run_for(&second, 5 * WINDOW).await, 0);
    assert_eq!(f.alerts().await.len(), 3);

    // It knows slack is alerting: the recovery gets exactly one all-clear.
    let mut events = vec![circuit_closed("slack", f.now())];
    events.extend(recoveries("slack", &ids, f.now()));
    f.insert(events).await;
    let third = f.aggregator();
    assert_eq!(f.run_for(&third, 3 * WINDOW).await, 1);
    let alerts = f.alerts().await;
    let mut kinds: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a.provider.as_deref().unwrap(), a.data["alert"].as_str().unwrap()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("hubspot", "all_clear"),
            ("hubspot", "trouble"),
            ("slack", "all_clear"),
            ("slack", "trouble")
        ]
    );
    assert_eq!(f.run_for(&f.aggregator(), 3 * WINDOW).await, 0);
}

#[tokio::test]
async fn a_crash_while_gathering_sends_the_alert_once_after_restart() {
    let f = Fixture::new().await;
    f.insert(outage("slack", 50, f.now()).1).await;
    let first = f.aggregator();
    assert_eq!(first.tick(f.now() + Duration::from_secs(10)).await.unwrap(), 0);
    drop(first);

    let second = f.aggregator();
    assert_eq!(f.run_for(&second, 4 * WINDOW).await, 1);
    assert_eq!(f.alerts().await[0].data["connections_affected"], 50);
}

#[tokio::test]
async fn the_all_clear_waits_until_no_connection_the_outage_hit_is_failing() {
    let f = Fixture::new().await;
    let aggregator = f.aggregator();
    let stuck = f.failing_connection("slack").await;
    f.insert(vec![circuit_opened("slack", f.now())]).await;
    assert_eq!(f.run_for(&aggregator, 2 * WINDOW).await, 1);

    f.insert(vec![circuit_closed("slack", f.now())]).await;
    assert_eq!(
        f.run_for(&aggregator, 4 * WINDOW).await,
        0,
        "still failing in the store"
    );

    f.store.reset_connection(stuck, f.now()).await.unwrap().unwrap();
    assert_eq!(f.run_for(&aggregator, 2 * WINDOW).await, 1);
    assert_eq!(f.alerts().await[1].data["alert"], "all_clear");
}

#[tokio::test]
async fn a_failure_that_recovers_within_the_window_is_one_transient_alert() {
    let f = Fixture::new().await;
    let aggregator = f.aggregator();
    let (ids, events) = outage("slack", 4, f.now());
    f.insert(events).await;
    f.insert(recoveries("slack", &ids, f.now() + Duration::from_secs(20)))
        .await;

    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 1);
    let alert = &f.alerts().await[0].data;
    assert_eq!(alert["alert"], "transient");
    assert_eq!(alert["severity"], "resolved");
    assert!(alert["summary"].as_str().unwrap().contains("and recovered"), "{alert}");
}

#[tokio::test]
async fn dead_grants_alone_are_one_notice_and_need_no_all_clear() {
    let f = Fixture::new().await;
    let aggregator = f.aggregator();
    let events = (0..12)
        .map(|_| needs_reauth("google", ConnectionId::generate(), f.now()))
        .collect();
    f.insert(events).await;

    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 1);
    let alert = &f.alerts().await[0].data;
    assert_eq!(alert["alert"], "notice");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["title"], "google: 12 connections need reauthorization");
    assert_eq!(alert["cause"]["error_code"], "invalid_grant");
}

#[tokio::test]
async fn a_rejected_client_after_a_failure_alert_is_one_escalation() {
    let f = Fixture::new().await;
    let aggregator = f.aggregator();
    f.failing_connections("slack", 20).await;
    assert_eq!(f.run_for(&aggregator, 2 * WINDOW).await, 1);

    let data = json!({"reason": "client_invalid", "error_code": "invalid_client"});
    f.insert(vec![
        provider_event("provider.circuit_opened", "slack", data, f.now()),
        provider_event(
            "provider.client_invalid",
            "slack",
            json!({"error_code": "invalid_client"}),
            f.now(),
        ),
    ])
    .await;
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 1);
    let alert = &f.alerts().await[1].data;
    assert_eq!(alert["alert"], "escalation");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["clients"]["invalid"], json!(["client-1"]));
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("client `client-1` rejected (invalid_client)")
    );
}

#[tokio::test]
async fn without_on_first_failure_a_first_failure_alone_sends_nothing() {
    let f = Fixture::new().await;
    let settings = AlertSettings {
        on_first_failure: false,
        ..AlertSettings::default()
    };
    let aggregator = f.aggregator_with(settings);
    f.insert(outage("slack", 20, f.now()).1).await;
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 0);
}

#[tokio::test]
async fn without_on_recovery_the_episode_ends_silently() {
    let f = Fixture::new().await;
    let settings = AlertSettings {
        on_recovery: false,
        ..AlertSettings::default()
    };
    let aggregator = f.aggregator_with(settings);
    let (ids, mut events) = outage("slack", 20, f.now());
    events.push(circuit_opened("slack", f.now()));
    f.insert(events).await;
    assert_eq!(f.run_for(&aggregator, 2 * WINDOW).await, 1);
    let mut events = vec![circuit_closed("slack", f.now())];
    events.extend(recoveries("slack", &ids, f.now()));
    f.insert(events).await;
    assert_eq!(f.run_for(&aggregator, 5 * WINDOW).await, 0);
    assert!(f.store.get_cursor(CURSOR_NAME).await.unwrap() > 0);
}

#[test]
fn the_book_is_a_pure_state_machine_over_events_and_counts() {
    let mut book = AlertBook::new(AlertSettings::default(), 0);
    let id = ConnectionId::generate();
    let record = |seq, event| EventRecord { seq, event };
    book.observe(&record(1, failed("slack", id, T0)));
    assert_eq!(book.cursor(), 0, "the cursor stays before the open episode");
    assert!(book.decide(T0 + Duration::from_secs(30), &Health::default()).is_empty());

    let unhealthy = Health::default().with_failing("slack", 1);
    let alerts = book.decide(T0 + WINDOW, &unhealthy);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].data["alert"], "trouble");
    assert_eq!(alerts[0].data["through_seq"], 1);
    assert!(book.decide(T0 + 10 * WINDOW, &unhealthy).is_empty());

    book.observe(&record(2, recovered("slack", id, T0 + 3 * WINDOW)));
    let alerts = book.decide(T0 + 10 * WINDOW, &Health::default());
    assert_eq!(alerts[0].data["alert"], "all_clear");
    assert!(book.is_quiet());
    assert_eq!(book.cursor(), 2);
}

#[test]
fn render_gives_a_slack_message_and_a_generic_json_body() {
    let mut book = AlertBook::new(AlertSettings::default(), 0);
    let (_, events) = outage("slack", 412, T0);
    for (i, event) in events.into_iter().enumerate() {
        book.observe(&EventRecord {
            seq: i as i64 + 1,
            event,
        });
    }
    book.observe(&EventRecord {
        seq: 413,
        event: circuit_opened("slack", T0),
    });
    let alert = book
        .decide(T0 + WINDOW, &Health::default().with_failing("slack", 412))
        .remove(0);

    let slack = render(&alert, AlertFormat::Slack);
    let text = slack["text"].as_str().unwrap();
    assert!(text.starts_with(":rotating_light: slack: 412 connections failing, circuit open — 412 connections"));
    let blocks = slack["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(blocks[1]["text"]["text"], alert.data["summary"]);
    assert_eq!(blocks[2]["type"], "context");

    let body = render(&alert, AlertFormat::Json);
    assert_eq!(body["type"], "thermos.alert");
    assert_eq!(body["id"], json!(alert.id));
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["provider"], "slack");
    assert_eq!(body["title"], alert.data["title"]);
    assert_eq!(body["data"]["connections_affected"], 412);
    assert_eq!(body["at"], "2026-11-24T10:03:00Z");
    assert!(
        !body.to_string().contains("provider answered 503"),
        "no provider message in alerts"
    );

    println!(
        "{}\n{}",
        serde_json::to_string_pretty(&slack).unwrap(),
        serde_json::to_string_pretty(&body).unwrap()
    );
}

#[tokio::test]
async fn drive_ticks_until_cancelled() {
    let f = Fixture::new().await;
    let mut events = outage("slack", 10, f.now() - 3 * WINDOW).1;
    events.push(circuit_opened("slack", f.now() - 3 * WINDOW));
    f.insert(events).await;
    let aggregator = Arc::new(f.aggregator());
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (aggregator, cancel) = (aggregator.clone(), cancel.clone());
        async move { aggregator.drive(cancel).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.alerts().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no alert from drive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.alerts().await.len(), 1);
}

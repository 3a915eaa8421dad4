//! Project webhooks and the outbox dispatcher, end to end: the real API on
//! port 0, a receiver on loopback, a [`Dispatcher`] ticked by the test with a
//! manual clock, and signatures checked independently with the `hmac` crate.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{ADMIN_KEY, eventually};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;
use thermos::app::Application;
use thermos::config::{AlertFormat, Config};
use thermos::engine::{Engine, NextWake};
use thermos::outbox::dispatch::{AlertChannel, DispatchSettings, Dispatcher, NO_ALERT_CHANNEL};
use thermos_core::clock::{Clock, ManualClock};
use thermos_core::id::ConnectionId;
use thermos_core::seal::MasterKey;
use thermos_store::outbox::{ALERT_KIND, NewEvent};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECOND: Duration = Duration::from_secs(1);

/// What the receiver saw.
#[derive(Default)]
struct Inbox {
    /// Requests it answered 200, in arrival order.
    accepted: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Every request, answered or refused.
    hits: AtomicUsize,
    /// Answer 503 while set.
    down: AtomicBool,
}

impl Inbox {
    fn accepted(&self) -> Vec<(HeaderMap, Bytes)> {
        self.accepted.lock().unwrap().clone()
    }
    fn ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned())
            .collect()
    }
}

async fn hook(State(inbox): State<Arc<Inbox>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox.hits.fetch_add(1, Ordering::SeqCst);
    if inbox.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inbox.accepted.lock().unwrap().push((headers, body));
    StatusCode::OK
}

/// A webhook receiver on loopback; returns its base URL.
async fn start_receiver() -> (String, Arc<Inbox>) {
    let inbox = Arc::new(Inbox::default());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .route("/alerts", axum::routing::post(hook))
        .with_state(Arc::clone(&inbox));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (base, inbox)
}

/// The real server (engine loop off, manual clock) and a dispatcher the
/// test ticks, over the same store and master key.
struct Harness {
    base: String,
    http: reqwest::Client,
    engine: Engine,
    clock: Arc<ManualClock>,
    key: Arc<MasterKey>,
    _dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

async fn spawn(allow_private_targets: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    // No provider is called in these tests; the token URL only has to be valid.
    let mut toml = common::config_toml(dir.path(), "http://127.0.0.1:9/token", false, "");
    if allow_private_targets {
        toml = toml.replacen("[security]\n", "[security]\nallow_private_targets = true\n", 1);
    }
    let config = Config::from_toml_str(&toml).expect("test config is valid");
    let (key, text) = MasterKey::generate();
    let same_key = Arc::new(MasterKey::parse_base64(text.expose_secret()).unwrap());
    let start = thermos::engine::truncate_ms(OffsetDateTime::now_utc());
    let clock = Arc::new(ManualClock::new(start));
    let app = Application::build(&config, key, Some(ADMIN_KEY.to_owned().into()), clock.clone())
        .await
        .expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let engine = app.engine().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    Harness {
        base,
        http: reqwest::Client::new(),
        engine,
        clock,
        key: same_key,
        _dir: dir,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl Harness {
    fn settings(&self) -> DispatchSettings {
        DispatchSettings {
            request_timeout: 2 * SECOND,
            backoff_max: 60 * SECOND,
            allow_private_targets: true,
            ..DispatchSettings::new("test-dispatcher")
        }
    }

    fn dispatcher(&self, settings: DispatchSettings) -> Dispatcher {
        Dispatcher::new(
            Arc::clone(self.engine.store()),
            Arc::clone(&self.key),
            self.clock.clone(),
            settings,
        )
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    async fn send(&self, request: reqwest::RequestBuilder, key: &str) -> (u16, Value) {
        let response = request.bearer_auth(key).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)), ADMIN_KEY)
            .await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body), ADMIN_KEY)
            .await
    }

    /// Registers a webhook through the API; returns (id, secret).
    async fn register(&self, project: &str, url: &str, events: Option<&[&str]>) -> (String, String) {
        let mut body = json!({"project": project, "url": url});
        if let Some(events) = events {
            body["events"] = json!(events);
        }
        let (status, created) = self.post("/v1/webhooks", body).await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Records events as the engine would, at the clock's time.
    async fn record(&self, events: &[NewEvent]) {
        self.engine.store().insert_events(events.to_vec()).await.unwrap();
    }

    fn event(&self, kind: &str, project: Option<&str>, connection: Option<ConnectionId>) -> NewEvent {
        NewEvent {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            kind: kind.to_owned(),
            project: project.map(str::to_owned),
            connection_id: connection,
            provider: Some("acme-oauth".into()),
            data: json!({"connection_id": connection.map(|c| c.to_string()), "note": "no secret here"}),
            at: self.now(),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Ticks at the clock's time until nothing more is due now.
async fn drain(dispatcher: &Dispatcher, clock: &ManualClock) {
    for _ in 0..1000 {
        if dispatcher.tick(clock.now()).await.expect("tick") != NextWake::Now {
            return;
        }
    }
    panic!("the dispatcher never ran out of due deliveries");
}

/// Checks a delivery's signature the way a receiver would, with nothing
/// from Thermos but the secret.
fn assert_signed(secret: &str, headers: &HeaderMap, body: &[u8]) {
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let signature = headers["webhook-signature"].to_str().unwrap();
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    assert_eq!(key.len(), 32);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let tag = STANDARD.decode(signature.strip_prefix("v1,").unwrap()).unwrap();
    mac.verify_slice(&tag).expect("the signature verifies");
}

#[tokio::test]
async fn a_receiver_gets_each_event_once_with_a_signature_an_independent_check_accepts() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    let url = format!("{receiver}/hook");
    let (status, created) = app.post("/v1/webhooks", json!({"project": "p1", "url": url})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["project"], "p1");
    assert_eq!(created["url"], url.as_str());
    assert_eq!(created["events"], Value::Null);
    assert!(created["id"].as_str().unwrap().starts_with("wh_"));
    assert!(created["created_at"].is_string());
    let secret = created["secret"].as_str().unwrap().to_owned();

    let connection = ConnectionId::generate();
    let events = [
        app.event("connection.created", Some("p1"), Some(connection)),
        app.event("connection.failing", Some("p1"), Some(connection)),
        app.event("connection.recovered", Some("p1"), Some(connection)),
        app.event("connection.created", Some("p2"), Some(ConnectionId::generate())),
    ];
    app.record(&events).await;
    let dispatcher = app.dispatcher(app.settings());
    drain(&dispatcher, &app.clock).await;
    drain(&dispatcher, &app.clock).await;

    let accepted = inbox.accepted();
    let expected: Vec<&str> = events[..3].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        inbox.ids(),
        expected,
        "each of p1's events once, in order; none of p2's"
    );
    for ((headers, body), event) in accepted.iter().zip(&events) {
        assert_signed(&secret, headers, body);
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers["user-agent"].to_str().unwrap().starts_with("thermos/"));
        assert_eq!(
            headers["webhook-timestamp"].to_str().unwrap(),
            app.now().unix_timestamp().to_string()
        );
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            payload,
            json!({
                "id": event.id,
                "type": event.kind,
                "at": event.at.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "project": "p1",
                "data": event.data,
            })
        );
    }
    assert_eq!(inbox.hits.load(Ordering::SeqCst), 3);

    let (status, listed) = app.get("/v1/webhooks").await;
    assert_eq!(status, 200);
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0].get("secret").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&secret));
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_that_names_event_types_receives_only_those() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    let (_, created) = app
        .post(
            "/v1/webhooks",
            json!({"project": "p1", "url": format!("{receiver}/hook"), "events": ["connection.failing"]}),
        )
        .await;
    assert_eq!(created["events"], json!(["connection.failing"]));
    let wanted = app.event("connection.failing", Some("p1"), None);
    app.record(&[app.event("connection.created", Some("p1"), None), wanted.clone()])
        .await;
    drain(&app.dispatcher(app.settings()), &app.clock).await;
    assert_eq!(inbox.ids(), [wanted.id]);
    app.stop().await;
}

#[tokio::test]
async fn while_the_receiver_is_down_nothing_is_lost_and_each_connection_s_events_arrive_in_order() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    let (_, secret) = app.register("p1", &format!("{receiver}/hook"), None).await;
    inbox.down.store(true, Ordering::SeqCst);
    let (a, b) = (ConnectionId::generate(), ConnectionId::generate());
    let kinds = [
        "connection.refresh_failed",
        "connection.failing",
        "connection.recovering",
    ];
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(app.event(kinds[i % 3], Some("p1"), Some(a)));
        if i < 3 {
            events.push(app.event(kinds[i], Some("p1"), Some(b)));
        }
    }
    app.record(&events).await;
    let dispatcher = app.dispatcher(app.settings());

    // Down for a while: only the first event of each connection is tried, again and again.
    for _ in 0..6 {
        drain(&dispatcher, &app.clock).await;
        app.clock.advance(61 * SECOND);
    }
    assert!(inbox.accepted().is_empty());
    assert_eq!(inbox.hits.load(Ordering::SeqCst), 12, "two channel heads, six rounds");

    inbox.down.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        drain(&dispatcher, &app.clock).await;
        if inbox.accepted().len() == events.len() {
            break;
        }
        app.clock.advance(61 * SECOND);
    }
    let ids = inbox.ids();
    assert_eq!(ids.len(), events.len(), "every event arrives once: {ids:?}");
    for connection in [a, b] {
        let sent: Vec<&str> = events
            .iter()
            .filter(|e| e.connection_id == Some(connection))
            .map(|e| e.id.as_str())
            .collect();
        let arrived: Vec<&str> = ids.iter().map(String::as_str).filter(|id| sent.contains(id)).collect();
        assert_eq!(arrived, sent, "connection {connection} in order");
    }
    for (headers, body) in inbox.accepted() {
        assert_signed(&secret, &headers, &body);
    }

    // The first event's delivery shows the 503s, then the 200.
    let (status, shown) = app.get(&format!("/v1/events/{}", events[0].id)).await;
    assert_eq!(status, 200, "{shown}");
    let delivery = &shown["deliveries"][0];
    assert_eq!(delivery["status"], "delivered");
    assert_eq!(delivery["attempts"], 7);
    assert_eq!(delivery["last_http_status"], 200);
    let log: Vec<Value> = delivery["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["http_status"].clone())
        .collect();
    assert_eq!(
        log,
        std::iter::repeat_n(json!(503), 6)
            .chain([json!(200)])
            .collect::<Vec<_>>()
    );
    assert!(delivery["attempt_log"][0]["latency_ms"].is_u64());
    assert_eq!(delivery["attempt_log"][0]["error"], "HTTP 503 Service Unavailable");
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_is_retried_for_24_hours_then_marked_failed() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    app.register("p1", &format!("{receiver}/hook"), None).await;
    inbox.down.store(true, Ordering::SeqCst);
    let event = app.event("connection.needs_reauth", Some("p1"), Some(ConnectionId::generate()));
    app.record(std::slice::from_ref(&event)).await;
    let dispatcher = app.dispatcher(DispatchSettings {
        backoff_max: thermos::outbox::dispatch::DEFAULT_BACKOFF_MAX,
        ..app.settings()
    });
    let started = app.now();
    drain(&dispatcher, &app.clock).await;

    app.clock.set(started + Duration::from_secs(23 * 3600));
    drain(&dispatcher, &app.clock).await;
    let (_, pending) = app.get("/v1/events?delivery_status=pending").await;
    assert_eq!(pending["data"][0]["id"], event.id.as_str(), "still retried after 23 h");

    app.clock.set(started + Duration::from_secs(24 * 3600 + 1));
    drain(&dispatcher, &app.clock).await;
    let (_, failed) = app.get("/v1/events?delivery_status=failed").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1, "{failed}");
    let delivery = &failed["data"][0]["deliveries"][0];
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["last_http_status"], 503);
    let (_, pending) = app.get("/v1/events?delivery_status=pending").await;
    assert_eq!(pending["data"], json!([]));

    // Failed is final: nothing more is sent.
    app.clock.advance(Duration::from_secs(3600));
    drain(&dispatcher, &app.clock).await;
    assert_eq!(inbox.hits.load(Ordering::SeqCst), 3);
    app.stop().await;
}

#[tokio::test]
async fn redelivering_an_event_sends_it_again_with_the_same_webhook_id() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    let (_, secret) = app.register("p1", &format!("{receiver}/hook"), None).await;
    let event = app.event("connection.reconnected", Some("p1"), Some(ConnectionId::generate()));
    app.record(std::slice::from_ref(&event)).await;
    let dispatcher = app.dispatcher(app.settings());
    drain(&dispatcher, &app.clock).await;
    assert_eq!(inbox.ids(), std::slice::from_ref(&event.id));

    let (status, body) = app.post(&format!("/v1/events/{}/redeliver", event.id), json!({})).await;
    assert_eq!((status, body), (202, json!({"redelivered": 1})));
    drain(&dispatcher, &app.clock).await;
    assert_eq!(inbox.ids(), [event.id.clone(), event.id.clone()]);
    let (headers, body) = &inbox.accepted()[1];
    assert_signed(&secret, headers, body);

    let (status, body) = app.post("/v1/events/evt_nope/redeliver", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], 1603);
    app.stop().await;
}

#[tokio::test]
async fn events_can_be_listed_by_type_connection_and_delivery_state() {
    let (receiver, _inbox) = start_receiver().await;
    let app = spawn(true).await;
    app.register("p1", &format!("{receiver}/hook"), None).await;
    // Nothing listens here: its deliveries stay pending.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    app.register("p1", &format!("http://{closed}/hook"), Some(&["connection.failing"]))
        .await;
    let (a, b) = (ConnectionId::generate(), ConnectionId::generate());
    let events = [
        app.event("connection.created", Some("p1"), Some(a)),
        app.event("connection.failing", Some("p1"), Some(a)),
        app.event("connection.created", Some("p1"), Some(b)),
    ];
    app.record(&events).await;
    drain(&app.dispatcher(app.settings()), &app.clock).await;

    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = app.get("/v1/events").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        ids(&all),
        [events[2].id.clone(), events[1].id.clone(), events[0].id.clone()],
        "newest first"
    );
    let first = &all["data"][2];
    assert_eq!(first["type"], "connection.created");
    assert_eq!(first["connection_id"], a.to_string());
    assert_eq!(first["project"], "p1");
    assert_eq!(first["provider"], "acme-oauth");
    assert_eq!(first["deliveries"][0]["status"], "delivered");
    assert_eq!(first["deliveries"][0]["last_http_status"], 200);

    let (_, by_type) = app.get("/v1/events?type=connection.created").await;
    assert_eq!(ids(&by_type), [events[2].id.clone(), events[0].id.clone()]);
    let (_, by_connection) = app.get(&format!("/v1/events?connection_id={b}")).await;
    assert_eq!(ids(&by_connection), [events[2].id.clone()]);
    let (_, pending) = app.get("/v1/events?delivery_status=pending").await;
    assert_eq!(ids(&pending), [events[1].id.clone()]);
    let pending_delivery = pending["data"][0]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["status"] == "pending")
        .unwrap()
        .clone();
    assert_eq!(pending_delivery["last_http_status"], Value::Null);
    assert!(!pending_delivery["last_error"].as_str().unwrap().is_empty());
    let (_, delivered) = app.get("/v1/events?delivery_status=delivered").await;
    assert_eq!(delivered["data"].as_array().unwrap().len(), 3);

    let (_, page1) = app.get("/v1/events?limit=2").await;
    assert_eq!(ids(&page1), [events[2].id.clone(), events[1].id.clone()]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/v1/events?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page2), [events[0].id.clone()]);
    assert_eq!(page2["next_cursor"], Value::Null);

    for bad in ["delivery_status=lost", "connection_id=nope", "limit=0", "cursor=x"] {
        let (status, body) = app.get(&format!("/v1/events?{bad}")).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(1600)),
            "{bad}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_webhook_url_to_a_non_loopback_http_address_is_refused_with_code_1600() {
    for allow_private_targets in [false, true] {
        let app = spawn(allow_private_targets).await;
        let (status, body) = app
            .post(
                "/v1/webhooks",
                json!({"project": "p1", "url": "http://example.com/hook"}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], 1600);
        assert!(body["error"]["message"].as_str().unwrap().starts_with("url:"), "{body}");

        let (status, body) = app
            .post(
                "/v1/webhooks",
                json!({"project": "p1", "url": "http://127.0.0.1:9/hook"}),
            )
            .await;
        if allow_private_targets {
            assert_eq!(status, 201, "{body}");
        } else {
            assert_eq!((status, body["error"]["code"].clone()), (400, json!(1600)), "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("allow_private_targets")
            );
        }

        let (status, body) = app
            .post(
                "/v1/webhooks",
                json!({"url": "https://hooks.example.com/t", "events": ["connection.failing", "connection.exploded"]}),
            )
            .await;
        assert_eq!((status, body["error"]["code"].clone()), (400, json!(1600)), "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("connection.exploded")
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn deleting_a_webhook_fails_its_pending_deliveries_and_stops_sending() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    let (id, _) = app.register("p1", &format!("{receiver}/hook"), None).await;
    let event = app.event("connection.failing", Some("p1"), None);
    app.record(std::slice::from_ref(&event)).await;

    let delete = |id: String| app.send(app.http.delete(format!("{}/v1/webhooks/{id}", app.base)), ADMIN_KEY);
    assert_eq!(delete(id.clone()).await.0, 204);
    assert_eq!(delete(id.clone()).await.0, 404);
    let (_, listed) = app.get("/v1/webhooks").await;
    assert_eq!(listed["data"], json!([]));

    drain(&app.dispatcher(app.settings()), &app.clock).await;
    assert_eq!(inbox.hits.load(Ordering::SeqCst), 0);
    let (_, shown) = app.get(&format!("/v1/events/{}", event.id)).await;
    assert_eq!(shown["deliveries"][0]["status"], "failed");
    assert_eq!(shown["deliveries"][0]["last_error"], "webhook deleted");
    app.stop().await;
}

#[tokio::test]
async fn a_project_key_sees_and_changes_only_its_project_s_webhooks_and_events() {
    let app = spawn(true).await;
    let created = thermos::api_key::create("p2", OffsetDateTime::now_utc());
    app.engine.store().insert_api_key(created.record.clone()).await.unwrap();
    let key = created.key.expose_secret().to_owned();
    let (p1_hook, _) = app.register("p1", "https://hooks.example.com/p1", None).await;
    let (status, mine) = app
        .send(
            app.http
                .post(format!("{}/v1/webhooks", app.base))
                .json(&json!({"url": "https://hooks.example.com/p2"})),
            &key,
        )
        .await;
    assert_eq!(status, 201, "{mine}");
    assert_eq!(mine["project"], "p2");
    let (status, _) = app
        .send(
            app.http
                .post(format!("{}/v1/webhooks", app.base))
                .json(&json!({"project": "p1", "url": "https://hooks.example.com/x"})),
            &key,
        )
        .await;
    assert_eq!(status, 403);

    let (_, listed) = app.send(app.http.get(format!("{}/v1/webhooks", app.base)), &key).await;
    let projects: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| &w["project"])
        .collect();
    assert_eq!(projects, [&json!("p2")]);
    let (status, _) = app
        .send(app.http.delete(format!("{}/v1/webhooks/{p1_hook}", app.base)), &key)
        .await;
    assert_eq!(status, 404);

    let p1_event = app.event("connection.created", Some("p1"), None);
    let p2_event = app.event("connection.created", Some("p2"), None);
    let alert = app.event(ALERT_KIND, None, None);
    app.record(&[p1_event.clone(), p2_event.clone(), alert]).await;
    let (_, events) = app.send(app.http.get(format!("{}/v1/events", app.base)), &key).await;
    let ids: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [p2_event.id.as_str()]);
    for path in [format!("/v1/events/{}", p1_event.id)] {
        let (status, _) = app.send(app.http.get(format!("{}{path}", app.base)), &key).await;
        assert_eq!(status, 404);
    }
    let (status, _) = app
        .send(
            app.http
                .post(format!("{}/v1/events/{}/redeliver", app.base, p1_event.id)),
            &key,
        )
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn an_alert_goes_to_the_alert_channel_and_fails_at_once_when_there_is_none() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    let unsent = app.event(ALERT_KIND, None, None);
    app.record(std::slice::from_ref(&unsent)).await;
    drain(&app.dispatcher(app.settings()), &app.clock).await;
    let (_, shown) = app.get(&format!("/v1/events/{}", unsent.id)).await;
    assert_eq!(shown["deliveries"][0]["webhook_id"], Value::Null);
    assert_eq!(shown["deliveries"][0]["status"], "failed");
    assert_eq!(shown["deliveries"][0]["last_error"], NO_ALERT_CHANNEL);

    let alert = app.event(ALERT_KIND, None, None);
    app.record(std::slice::from_ref(&alert)).await;
    let dispatcher = app.dispatcher(DispatchSettings {
        alerts: Some(AlertChannel {
            url: format!("{receiver}/alerts").parse().unwrap(),
            format: AlertFormat::Json,
        }),
        ..app.settings()
    });
    drain(&dispatcher, &app.clock).await;
    assert_eq!(inbox.ids(), std::slice::from_ref(&alert.id));
    let (headers, body) = &inbox.accepted()[0];
    assert_eq!(headers["content-type"], "application/json");
    let posted: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(posted["type"], "thermos.alert", "{posted}");
    assert_eq!(posted["id"], alert.id.as_str());
    let (_, shown) = app.get(&format!("/v1/events/{}", alert.id)).await;
    assert_eq!(shown["deliveries"][0]["status"], "delivered");
    app.stop().await;
}

#[tokio::test]
async fn the_dispatcher_loop_delivers_at_once_when_notified_and_stops_on_cancel() {
    let (receiver, inbox) = start_receiver().await;
    let app = spawn(true).await;
    app.register("p1", &format!("{receiver}/hook"), None).await;
    let dispatcher = app.dispatcher(app.settings());
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let dispatcher = dispatcher.clone();
        let cancel = cancel.clone();
        async move { dispatcher.drive(cancel).await }
    });
    // Let the loop go to sleep with nothing to do.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let event = app.event("connection.created", Some("p1"), None);
    app.record(std::slice::from_ref(&event)).await;
    dispatcher.notify();
    // Well within the loop's 5 s idle sleep: the notify woke it.
    assert!(eventually(Duration::from_secs(2), || async { inbox.ids().len() == 1 }).await);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("drive stops on cancel")
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn finished_deliveries_and_their_events_are_pruned_after_the_retention_period() {
    let (receiver, _inbox) = start_receiver().await;
    let app = spawn(true).await;
    app.register("p1", &format!("{receiver}/hook"), None).await;
    let event = app.event("connection.created", Some("p1"), None);
    app.record(std::slice::from_ref(&event)).await;
    let dispatcher = app.dispatcher(app.settings());
    drain(&dispatcher, &app.clock).await;

    assert_eq!(dispatcher.prune(app.now()).await.unwrap(), 0, "too young to prune");
    let later = app.now() + thermos::outbox::dispatch::DEFAULT_RETENTION + SECOND;
    assert!(dispatcher.prune(later).await.unwrap() >= 2);
    let (status, _) = app.get(&format!("/v1/events/{}", event.id)).await;
    assert_eq!(status, 404);
    app.stop().await;
}

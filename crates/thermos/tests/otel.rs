//! OpenTelemetry traces (the `otel` feature): the real `thermos serve`
//! process exports its spans over OTLP/HTTP to a collector on loopback.
//! The HTTP request and the refresh attempt it caused arrive as spans of
//! one trace, named by route template and provider, and no token, client
//! secret or API key is anywhere in what was exported.
#![cfg(feature = "otel")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::{ADMIN_KEY, PROVIDER, config_toml, eventually};
use serde_json::{Value, json};
use thermos_testprovider::{ProviderOptions, TestProvider};

/// An OTLP/HTTP collector on loopback that keeps every body posted to
/// `/v1/traces`.
#[derive(Clone, Default)]
struct Collector {
    bodies: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let collector = Self::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, addr)
    }

    /// Everything received, as one text.
    fn payload(&self) -> String {
        self.bodies.lock().unwrap().join("\n")
    }

    /// Every span received, flattened.
    fn spans(&self) -> Vec<Span> {
        let bodies = self.bodies.lock().unwrap().clone();
        let mut spans = Vec::new();
        for body in bodies {
            let export: Value = serde_json::from_str(&body).expect("an OTLP JSON body");
            for resource_spans in export["resourceSpans"].as_array().into_iter().flatten() {
                let service = attribute(&resource_spans["resource"]["attributes"], "service.name");
                for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push(Span {
                            name: span["name"].as_str().unwrap_or_default().to_owned(),
                            trace_id: span["traceId"].as_str().unwrap_or_default().to_owned(),
                            kind: span["kind"].as_i64(),
                            service: service.clone(),
                            attributes: span["attributes"].clone(),
                        });
                    }
                }
            }
        }
        spans
    }
}

async fn receive(State(collector): State<Collector>, body: String) -> StatusCode {
    collector.bodies.lock().unwrap().push(body);
    StatusCode::OK
}

#[derive(Debug)]
struct Span {
    name: String,
    trace_id: String,
    kind: Option<i64>,
    service: Option<String>,
    attributes: Value,
}

impl Span {
    fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.attributes, key)
    }
}

/// An OTLP attribute's value as text (`stringValue`, `intValue`, …).
fn attribute(attributes: &Value, key: &str) -> Option<String> {
    let entry = attributes.as_array()?.iter().find(|a| a["key"] == key)?;
    let value = entry["value"].as_object()?.values().next()?;
    Some(match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// `thermos serve` as a child process, its output in a log file.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(config: &Path, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_thermos"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("THERMOS_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start thermos");
        let mut listen = None;
        let started = eventually(Duration::from_secs(30), || {
            listen = std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["msg"] == "thermos is serving")
                .and_then(|l| l["listen"].as_str().map(str::to_owned));
            std::future::ready(listen.is_some())
        })
        .await;
        assert!(
            started,
            "server did not start:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        Self {
            child,
            base: format!("http://{}", listen.unwrap()),
        }
    }

    /// SIGTERM, then waits (bounded) for the graceful exit.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let mut exit = None;
        let exited = eventually(Duration::from_secs(30), || {
            exit = self.child.try_wait().unwrap();
            std::future::ready(exit.is_some())
        })
        .await;
        if !exited {
            let _ = self.child.kill();
            panic!("thermos did not stop within 30 s of SIGTERM");
        }
        exit.unwrap()
    }
}

async fn call(http: &reqwest::Client, request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = http
        .execute(request.bearer_auth(ADMIN_KEY).build().unwrap())
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_refresh_attempts_are_exported_as_spans_without_any_secret() {
    let (collector, collector_addr) = Collector::start().await;
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("thermos.toml");
    let telemetry =
        format!("[telemetry]\notlp_endpoint = \"http://{collector_addr}\"\nservice_name = \"thermos-otel-test\"\n");
    let refresh = "request_timeout = \"5s\"\n";
    let text = config_toml(dir.path(), &provider.token_url(), true, refresh) + &telemetry;
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("thermos.log");
    let server = Server::start(&config, &log).await;
    let http = reqwest::Client::new();

    // Import a connection whose token is far from expiry, then force a refresh.
    let grant = provider.issue_grant();
    let (status, created) = call(
        &http,
        http.post(format!("{}/v1/connections", server.base)).json(&json!({
            "project": "p1", "provider": PROVIDER, "external_id": "user-1",
            "access_token": grant.access_token, "refresh_token": grant.refresh_token, "expires_in": 3600
        })),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, fresh) = call(
        &http,
        http.post(format!("{}/v1/connections/{id}/refresh", server.base))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    let new_access = fresh["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_access, grant.access_token);
    let new_refresh = provider.current_refresh_token(&grant.grant).unwrap();
    assert_ne!(new_refresh, grant.refresh_token, "the test provider rotates");

    // A graceful stop sends the spans still buffered before the process exits.
    let exit = server.terminate().await;
    assert!(exit.success(), "thermos exited with {exit}");
    let refresh_route = "/v1/connections/{id}/refresh";
    let arrived = eventually(Duration::from_secs(10), || {
        let names: Vec<String> = collector.spans().into_iter().map(|s| s.name).collect();
        std::future::ready(
            names.iter().any(|n| n == &format!("POST {refresh_route}"))
                && names.iter().any(|n| n == &format!("refresh {PROVIDER}")),
        )
    })
    .await;
    let spans = collector.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(arrived, "spans received: {names:?}");

    // The HTTP request: method and route template, server kind, status.
    let request = spans
        .iter()
        .find(|s| s.name == format!("POST {refresh_route}"))
        .unwrap();
    assert_eq!(request.service.as_deref(), Some("thermos-otel-test"));
    assert_eq!(request.kind, Some(2), "SPAN_KIND_SERVER: {request:?}");
    assert_eq!(request.attr("http.method").as_deref(), Some("POST"));
    assert_eq!(request.attr("http.route").as_deref(), Some(refresh_route));
    assert_eq!(request.attr("http.status").as_deref(), Some("200"));
    let import = spans.iter().find(|s| s.name == "POST /v1/connections").unwrap();
    assert_eq!(import.attr("http.status").as_deref(), Some("201"));

    // The refresh attempt: provider, trigger, outcome; in the request's trace.
    let attempt = spans.iter().find(|s| s.name == format!("refresh {PROVIDER}")).unwrap();
    assert_eq!(attempt.attr("provider").as_deref(), Some(PROVIDER));
    assert_eq!(attempt.attr("trigger").as_deref(), Some("forced"));
    assert_eq!(attempt.attr("outcome").as_deref(), Some("refreshed"));
    assert_eq!(attempt.attr("http_status").as_deref(), Some("200"));
    assert_eq!(attempt.attr("connection_id").as_deref(), Some(id.as_str()));
    assert_eq!(
        attempt.trace_id, request.trace_id,
        "the attempt belongs to the request's trace"
    );

    // Ids are attributes, never span names; no secret left the process.
    assert!(names.iter().all(|n| !n.contains(&id)), "{names:?}");
    let payload = collector.payload();
    for (what, secret) in [
        ("imported access token", grant.access_token.as_str()),
        ("imported refresh token", grant.refresh_token.as_str()),
        ("new access token", new_access.as_str()),
        ("new refresh token", new_refresh.as_str()),
        ("client secret", provider.client_secret()),
        ("admin key", ADMIN_KEY),
    ] {
        assert!(!payload.contains(secret), "the {what} was exported");
    }
    // The `otel.*` span fields steer the export and stay out of log lines.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("exporting traces over OTLP/HTTP"), "{log_text}");
    assert!(!log_text.contains("otel."), "{log_text}");
}

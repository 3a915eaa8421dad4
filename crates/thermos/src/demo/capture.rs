//! The demo's stand-in for an application's webhook endpoint and the
//! operators' alert channel: a loopback server that counts what it receives
//! and keeps the first request of each kind to show in the report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// A request as received.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The `webhook-*` headers, in order.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

#[derive(Debug, Default)]
struct Seen {
    /// Webhook deliveries by event type.
    by_type: BTreeMap<String, u64>,
    first_delivery: Option<Captured>,
    alerts: Vec<Captured>,
}

/// The running capture server.
#[derive(Debug, Clone)]
pub struct Capture {
    seen: Arc<Mutex<Seen>>,
    base: String,
}

impl Capture {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = Router::new()
            .route("/hook", post(hook))
            .route("/alerts", post(alert))
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { seen, base })
    }

    /// The project webhook URL.
    pub fn hook_url(&self) -> String {
        format!("{}/hook", self.base)
    }

    /// The operators' alert URL.
    pub fn alerts_url(&self) -> String {
        format!("{}/alerts", self.base)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliveries received, by event type.
    pub fn deliveries_by_type(&self) -> BTreeMap<String, u64> {
        self.lock().by_type.clone()
    }

    /// The first webhook delivery.
    pub fn first_delivery(&self) -> Option<Captured> {
        self.lock().first_delivery.clone()
    }

    /// Every alert received.
    pub fn alerts(&self) -> Vec<Captured> {
        self.lock().alerts.clone()
    }
}

fn captured(headers: &HeaderMap, raw: &Bytes) -> Captured {
    let headers = ["webhook-id", "webhook-timestamp", "webhook-signature", "content-type"]
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), headers.get(*name)?.to_str().ok()?.to_owned())))
        .collect();
    Captured {
        headers,
        body: serde_json::from_slice(raw).unwrap_or(Value::Null),
    }
}

async fn hook(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let request = captured(&headers, &raw);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let kind = request.body["type"].as_str().unwrap_or("?").to_owned();
    *seen.by_type.entry(kind).or_default() += 1;
    seen.first_delivery.get_or_insert(request);
    StatusCode::NO_CONTENT
}

async fn alert(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let request = captured(&headers, &raw);
    seen.lock().unwrap_or_else(|e| e.into_inner()).alerts.push(request);
    StatusCode::OK
}

//! A webhook receiver on loopback that records what it gets and can be told
//! to fail (503) for a while.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub raw: Bytes,
}

#[derive(Debug, Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    failing: AtomicBool,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Receiver {
    /// Listens on a free loopback port (on `port` when not 0).
    pub async fn start(port: u16) -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer 503 (true) or 204 (false) from now on.
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// Everything accepted (answered 2xx) so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    if inner.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    inner.received.lock().unwrap().push(Received { headers, body, raw });
    StatusCode::NO_CONTENT
}

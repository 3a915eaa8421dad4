//! The HTTP API (v1) of DESIGN.md, on axum.
//!
//! Handlers parse requests into domain types at the edge ([`dto`]), ask the
//! engine or the store, and answer with DTOs or an [`error::ApiError`]. No
//! handler changes tokens by itself: refreshes go through the engine. No
//! response, log line or error carries a token except the token endpoints'
//! bodies.
//!
//! Read next: `connections.rs` (the handlers), `auth.rs` (who is calling).

pub mod apps;
pub mod auth;
pub mod connect;
mod connections;
pub mod dto;
pub mod error;
pub mod events;
mod extract;
pub mod keys;
pub mod openapi;
mod providers;
pub mod runs;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use secrecy::SecretString;
use serde_json::json;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tracing::Instrument;

use crate::engine::Engine;
use error::{ApiError, REQUEST_ID};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Engine,
    pub admin_key: Option<Arc<SecretString>>,
    /// False once the engine's loop has stopped unexpectedly.
    pub engine_alive: Arc<AtomicBool>,
    /// `[security] allow_private_targets`: webhooks may point at loopback
    /// and private addresses.
    pub allow_private_targets: bool,
    /// The SSRF guard for URLs a project supplies (same setting, and the
    /// resolver used to check host names at registration).
    pub egress: crate::egress::EgressPolicy,
    /// `[limits]`: body and header size, request timeout, connections per project.
    pub limits: crate::config::LimitsConfig,
    /// Held across counting and inserting while a per-project connection
    /// limit is set, so concurrent imports on this instance cannot pass it.
    pub import_lock: Arc<tokio::sync::Mutex<()>>,
    /// Failed authentications per client address
    /// (`security.auth_failures_per_minute`).
    pub auth_failures: Arc<auth::AuthFailureLimiter>,
    /// The audit log's writer (token fetches and changes, by key).
    pub audit: crate::audit::AuditLog,
    /// Connect sessions: `server.public_url` and the code exchange client.
    pub connect: connect::ConnectSettings,
}

/// The full router: `/v1/…`, `/health`, `/ready`, `/metrics`.
///
/// `/metrics` is unauthenticated, like `/health`: it carries no ids or
/// secrets, but do not expose it publicly; let Prometheus scrape it from
/// inside the deployment.
pub fn router(state: AppState) -> Router {
    crate::metrics::install();
    let limits = state.limits.clone();
    let v1 = Router::new()
        .route("/connections", post(connections::create).get(connections::list))
        .route("/connections/{id}", get(connections::show).delete(connections::delete))
        .route("/connections/{id}/tokens", put(connections::replace_tokens))
        .route("/connections/{id}/token", get(connections::token))
        .route("/connections/{id}/refresh", post(connections::refresh))
        .route("/connections/{id}/reset", post(connections::reset))
        .route("/connections/{id}/attempts", get(connections::attempts))
        .route("/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/webhooks/{id}", axum::routing::delete(webhooks::delete))
        .route("/events", get(events::list))
        .route("/events/{id}", get(events::show))
        .route("/events/{id}/redeliver", post(events::redeliver))
        .route("/providers", get(providers::list))
        .route("/runs", post(runs::start).get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/apps", post(apps::create).get(apps::list))
        .route("/apps/{provider}", axum::routing::delete(apps::delete))
        .route("/keys", post(keys::create).get(keys::list))
        .route("/keys/{key_id}", axum::routing::delete(keys::revoke))
        .route("/connect/sessions", post(connect::create))
        .route("/connect/sessions/{id}", get(connect::show))
        // Who is calling, and may they.
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        // Outside authentication, which hands it the key (`Identity`) in the
        // answer: token fetches and changes by the key that made them,
        // refusals for a missing scope included.
        .route_layer(middleware::from_fn_with_state(
            state.audit.clone(),
            crate::audit::middleware::record,
        ));
    Router::new()
        .nest("/v1", v1)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::serve))
        // The end user's browser, with no API key (see `connect.rs`).
        .route("/connect/{id}", get(connect::start))
        .route("/oauth/callback", get(connect::callback))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes as usize))
        .layer(middleware::from_fn_with_state(limits, enforce_limits))
        .layer(middleware::from_fn(request_context))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            axum::http::header::AUTHORIZATION,
        ]))
}

/// Puts the request id where error bodies and log lines find it, and logs
/// one line per request.
async fn request_context(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| crate::metrics::outcome::UNMATCHED_ROUTE.to_owned());
    // `otel.*` name the exported trace span (the route template, never the
    // raw path with its ids); log lines leave them out.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.method = %method,
        http.route = %route,
        http.status = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = REQUEST_ID
        .scope(request_id.clone(), next.run(request).instrument(span.clone()))
        .await;
    let status = response.status().as_u16();
    span.record("http.status", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    record_request(&route, &method, status, started.elapsed());
    span.in_scope(|| {
        tracing::info!(
            http.method = %method,
            http.route = %route,
            http.status = status,
            duration_ms = started.elapsed().as_millis() as u64,
            "request"
        )
    });
    response
}

/// `[limits]` on every request: the size of the request target and headers
/// (431, code 1613) and the time to answer, body upload included (503,
/// code 1602). The body size is enforced where the body is read
/// (`extract.rs`: 413, code 1612); this tells it the limit for its message.
/// A request cut off by the timeout is dropped: a refresh it started goes
/// on (flights run on their own tasks).
async fn enforce_limits(
    State(limits): State<crate::config::LimitsConfig>,
    mut request: Request,
    next: Next,
) -> Response {
    let target = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let max_header_bytes = limits.max_header_bytes as usize;
    if target + header_bytes > max_header_bytes {
        return ApiError::new(
            error::ErrorKind::HeadersTooLarge,
            format!(
                "request target and headers are {} bytes, over the limit of {max_header_bytes} (limits.max_header_bytes)",
                target + header_bytes
            ),
        )
        .into_response();
    }
    request
        .extensions_mut()
        .insert(extract::BodyLimit(limits.max_body_bytes as usize));
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            error::ErrorKind::Unavailable,
            format!(
                "request not completed within {} (limits.request_timeout)",
                humantime::format_duration(limits.request_timeout)
            ),
        )
        .into_response(),
    }
}

/// HTTP metrics: the route label is the matched template, never the raw path.
fn record_request(route: &str, method: &axum::http::Method, status: u16, elapsed: std::time::Duration) {
    use crate::metrics as m;
    metrics::counter!(
        m::HTTP_REQUESTS_TOTAL,
        m::LABEL_ROUTE => route.to_owned(),
        m::LABEL_METHOD => method.as_str().to_owned(),
        m::LABEL_STATUS => status.to_string(),
    )
    .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, m::LABEL_ROUTE => route.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Prometheus text exposition; connection gauges are refreshed first.
async fn metrics_text(State(state): State<AppState>) -> Response {
    crate::metrics::update_connection_gauges(state.engine.store().as_ref()).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if let Err(e) = state.engine.store().ping().await {
        reasons.push(if e.is_pool_exhausted() {
            "database: connection pool exhausted (every pooled connection stayed busy for database.acquire_timeout)"
                .to_owned()
        } else {
            format!("database: {e}")
        });
    }
    if !state.engine_alive.load(Ordering::Relaxed) {
        reasons.push("engine: the refresh loop is not running".to_owned());
    }
    let instances: Vec<dto::InstanceView> = state.engine.live_instances().iter().map(Into::into).collect();
    let instance = &state.engine.settings().owner;
    if reasons.is_empty() {
        Json(json!({"status": "ready", "instance": instance, "instances": instances})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reasons": reasons, "instance": instance, "instances": instances})),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::bad_request("method not allowed on this route")
}

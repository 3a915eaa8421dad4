//! The HTTP side: an axum router with `POST /token` (RFC 6749 §6, refresh
//! only), `GET /resource` (a protected API that accepts live access tokens)
//! and `GET /health`.
//!
//! It authenticates clients as strictly as the strictest real providers
//! (RFC 6749 §2.3.1: Basic credentials are form-URL-decoded; one
//! authentication method per request; form bodies only), applies injected
//! faults, and delegates every token decision to [`crate::book::Book`].
//! It never holds a lock across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use tokio::time::{Instant, sleep};

use crate::book::{Book, GrantId, Rules};
use crate::fault::{Fault, FaultPlan, HANG_FOR};
use crate::{ClientAuth, ExpiresIn, ProviderOptions};

/// State shared by the handlers and the [`crate::TestProvider`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub options: ProviderOptions,
    pub rules: Rules,
    pub book: Mutex<Book>,
    pub faults: Mutex<FaultPlan>,
    pub token_calls: AtomicU64,
    /// The first [`CALL_TIMES_KEPT`] token requests: when they arrived,
    /// when and how they were answered.
    pub calls: Mutex<Vec<crate::TokenCall>>,
    pub in_flight: AtomicU32,
    pub max_in_flight: AtomicU32,
    /// Authorization codes (`GET /authorize`, see `authorize.rs`).
    pub authorizations: crate::authorize::Authorizations,
    /// Machine grants: JWT keys, seen `jti`s, counters (see `grants.rs`).
    pub machine: crate::grants::MachineGrants,
}

impl Shared {
    pub(crate) fn new(options: ProviderOptions) -> Self {
        let rules = Rules {
            access_token_ttl: options.access_token_ttl,
            rotate: options.rotation,
            reuse_grace: options.reuse_grace,
        };
        Self {
            options,
            rules,
            book: Mutex::default(),
            faults: Mutex::default(),
            token_calls: AtomicU64::new(0),
            calls: Mutex::default(),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
            authorizations: crate::authorize::Authorizations::default(),
            machine: crate::grants::MachineGrants::default(),
        }
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultPlan> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/authorize", get(crate::authorize::authorize))
        .route("/resource", get(resource))
        .route("/health", get(|| async { "ok" }))
        .with_state(shared)
}

/// Most grants one `POST /admin/grants` issues.
pub(crate) const MAX_GRANTS_PER_CALL: usize = 100_000;

/// The admin endpoints of a provider in its own process: `POST
/// /admin/grants?count=N` (at most [`MAX_GRANTS_PER_CALL`]) answers N new
/// grants as JSON lines (`grant`, `access_token`, `refresh_token`,
/// `expires_in` seconds); `GET /admin/stats` answers the counters.
pub(crate) fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/admin/grants", post(issue_grants))
        .route("/admin/stats", get(stats))
        .with_state(shared)
}

async fn issue_grants(State(shared): State<Arc<Shared>>, query: axum::extract::RawQuery) -> Response {
    let count = query
        .0
        .as_deref()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "count"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let Some(count) = count.filter(|n| (1..=MAX_GRANTS_PER_CALL).contains(n)) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("count: expected 1 to {MAX_GRANTS_PER_CALL}"),
        )
            .into_response();
    };
    let mut lines = String::with_capacity(count * 160);
    for _ in 0..count {
        // One grant per lock: token calls in flight are not held up for long.
        let grant = shared.book().issue_grant(&shared.rules, Instant::now());
        let line = json!({
            "grant": grant.grant.as_str(),
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "expires_in": grant.expires_in.as_secs(),
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    (StatusCode::OK, [(CONTENT_TYPE, "application/x-ndjson")], lines).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let (refreshes, reuse_detected, grants_issued) = {
        let book = shared.book();
        (book.refreshes(), book.reuse_detected(), book.grants_issued())
    };
    json_response(
        StatusCode::OK,
        json!({
            "token_calls": shared.token_calls.load(Ordering::SeqCst),
            "refreshes": refreshes,
            "reuse_detected": reuse_detected,
            "grants_issued": grants_issued,
            "max_in_flight": shared.max_in_flight.load(Ordering::SeqCst),
        }),
    )
}

/// Counts a request in flight (overall, and for its grant when known) until dropped,
/// so a request abandoned by its client (timeout, `Hang`) is counted out too.
struct InFlight {
    shared: Arc<Shared>,
    grant: Option<GrantId>,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, refresh_token: Option<&str>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let grant = refresh_token.and_then(|rt| {
            let mut book = shared.book();
            let grant = book.grant_of(rt)?;
            book.enter(rt);
            Some(grant)
        });
        Self {
            shared: Arc::clone(shared),
            grant,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(grant) = &self.grant {
            self.shared.book().leave(grant);
        }
    }
}

/// How many token requests are logged (memory stays bounded in benchmarks).
pub(crate) const CALL_TIMES_KEPT: usize = 10_000;

/// Logs the request's arrival, and its answer once it is sent.
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let slot = {
        let mut calls = shared.calls.lock().unwrap_or_else(PoisonError::into_inner);
        (calls.len() < CALL_TIMES_KEPT).then(|| {
            calls.push(crate::TokenCall {
                arrived: Instant::now(),
                answered: None,
                status: None,
            });
            calls.len() - 1
        })
    };
    let response = answer(Arc::clone(&shared), headers, body).await;
    if let Some(index) = slot {
        let mut calls = shared.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls[index].answered = Some(Instant::now());
        calls[index].status = Some(response.status().as_u16());
    }
    response
}

async fn answer(shared: Arc<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    shared.token_calls.fetch_add(1, Ordering::SeqCst);
    let form = parse_form(&body);
    let presented = form.as_ref().ok().and_then(|f| f.get("refresh_token").cloned());
    let _in_flight = InFlight::enter(&shared, presented.as_deref());

    let fault = shared.faults().next(rand::random::<f64>());
    let mut lose_response = false;
    match fault {
        None => {}
        Some(Fault::Delay(delay)) => sleep(delay).await,
        Some(Fault::Hang) => {
            sleep(HANG_FOR).await;
            return (StatusCode::GATEWAY_TIMEOUT, "gateway timeout").into_response();
        }
        Some(Fault::LoseResponse) => lose_response = true,
        Some(Fault::EchoRequest { status, json }) => return echo_response(status, json, &headers, &body),
        Some(other) => return fault_response(&other),
    }
    if !shared.options.latency.is_zero() {
        sleep(shared.options.latency).await;
    }
    let response = match form {
        Ok(form) => refresh(&shared, &headers, &form),
        Err(problem) => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", problem),
    };
    if lose_response {
        sleep(HANG_FOR).await;
    }
    response
}

/// The token request proper: content type, client authentication, grant type, the grant.
fn refresh(shared: &Shared, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    if let Err(failure) = authenticate(&shared.options, headers, form) {
        return failure.into_response();
    }
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {}
        Some("authorization_code") => return crate::authorize::exchange(shared, form),
        Some("client_credentials") => return crate::grants::client_credentials(shared, form),
        Some(crate::grants::JWT_BEARER) => return crate::grants::jwt_bearer(shared, headers, form),
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "supported: refresh_token, authorization_code, client_credentials, jwt-bearer",
            );
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is missing"),
    }
    let Some(presented) = form.get("refresh_token").filter(|t| !t.is_empty()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is missing");
    };
    let result = shared.book().refresh(presented, &shared.rules, Instant::now());
    match result {
        Ok(refreshed) => {
            let mut body = Map::new();
            body.insert("access_token".into(), refreshed.access_token.into());
            body.insert("token_type".into(), "Bearer".into());
            let secs = shared.options.access_token_ttl.as_secs_f64().ceil() as u64;
            match shared.options.expires_in {
                ExpiresIn::Number => _ = body.insert("expires_in".into(), secs.into()),
                ExpiresIn::String => _ = body.insert("expires_in".into(), secs.to_string().into()),
                ExpiresIn::Omitted => {}
            }
            if let Some(refresh_token) = refreshed.refresh_token {
                body.insert("refresh_token".into(), refresh_token.into());
            }
            if let Some(ttl) = shared.options.refresh_token_ttl {
                body.insert(
                    "refresh_token_expires_in".into(),
                    (ttl.as_secs_f64().ceil() as u64).into(),
                );
            }
            if let Some(scope) = form.get("scope").or(shared.options.scope.as_ref()) {
                body.insert("scope".into(), scope.clone().into());
            }
            json_response(StatusCode::OK, Value::Object(body))
        }
        Err(refused) => {
            tracing::debug!(reason = refused.description(), "test provider refused a refresh token");
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", refused.description())
        }
    }
}

/// Why client authentication failed.
pub(crate) enum AuthFailure {
    InvalidRequest(&'static str),
    InvalidClient { basic_attempted: bool },
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        match self {
            Self::InvalidRequest(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_request", why),
            Self::InvalidClient { basic_attempted } => {
                let mut response = oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication failed",
                );
                if basic_attempted {
                    // RFC 6749 §5.2: required when the client used the Authorization header.
                    response.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"thermos-testprovider\""),
                    );
                }
                response
            }
        }
    }
}

/// Client authentication per RFC 6749 §2.3: exactly one method, and only
/// one the options accept.
pub(crate) fn authenticate(
    options: &ProviderOptions,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(), AuthFailure> {
    let accepts = |method| options.accepted_auth.contains(&method);
    let body_id = form.get("client_id");
    let body_secret = form.get("client_secret");
    let invalid = |basic_attempted| Err(AuthFailure::InvalidClient { basic_attempted });
    if let Some(header) = headers.get(AUTHORIZATION) {
        if body_secret.is_some() {
            return Err(AuthFailure::InvalidRequest(
                "more than one client authentication method",
            ));
        }
        let Some((id, secret)) = basic_credentials(header) else {
            return invalid(true);
        };
        let id_matches = body_id.is_none_or(|b| *b == id);
        if !accepts(ClientAuth::Basic) || !id_matches || id != options.client_id || secret != options.client_secret {
            return invalid(true);
        }
        return Ok(());
    }
    match (body_id, body_secret) {
        (Some(id), Some(secret)) if accepts(ClientAuth::Post) => {
            if *id == options.client_id && *secret == options.client_secret {
                Ok(())
            } else {
                invalid(false)
            }
        }
        (Some(id), None) if accepts(ClientAuth::None) && *id == options.client_id => Ok(()),
        _ => invalid(false),
    }
}

/// Decodes `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn basic_credentials(header: &HeaderValue) -> Option<(String, String)> {
    let text = header.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one application/x-www-form-urlencoded component; `None` when it
/// contains characters an encoder would have escaped (`=`, `&`, `:`).
fn form_decode(component: &str) -> Option<String> {
    if component.contains(['=', '&', ':']) {
        return None;
    }
    if component.is_empty() {
        return Some(String::new());
    }
    form_urlencoded::parse(component.as_bytes())
        .next()
        .map(|(decoded, _)| decoded.into_owned())
}

/// Parses the form body; a parameter sent twice is an error (RFC 6749 §3.2).
pub(crate) fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, &'static str> {
    let mut form = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        if form.insert(key.into_owned(), value.into_owned()).is_some() {
            return Err("a parameter is repeated");
        }
    }
    Ok(form)
}

fn fault_response(fault: &Fault) -> Response {
    let html = |status: StatusCode, page: &'static str| {
        (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
    };
    match fault {
        Fault::Unavailable | Fault::FailRate(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response()
        }
        Fault::UnavailableRetryAfter { retry_after_secs } => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(RETRY_AFTER, retry_after_secs.to_string())],
            "service unavailable",
        )
            .into_response(),
        Fault::RateLimited { retry_after_secs } => {
            let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, json!({"error": "too_many_requests"}));
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            response
        }
        Fault::Malformed => (
            StatusCode::OK,
            [(CONTENT_TYPE, "application/json")],
            r#"{"access_token":"at_truncat"#,
        )
            .into_response(),
        Fault::HtmlOk => html(
            StatusCode::OK,
            "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>Sign in to continue</form></body></html>",
        ),
        Fault::Oversized { bytes } => {
            let head = r#"{"access_token":"at_oversized","token_type":"Bearer","expires_in":3600,"padding":""#;
            let padding = "x".repeat(bytes.saturating_sub(head.len() + 2));
            (
                StatusCode::OK,
                [(CONTENT_TYPE, "application/json")],
                format!("{head}{padding}\"}}"),
            )
                .into_response()
        }
        Fault::InvalidClient => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ),
        Fault::ServerErrorHtml => html(
            StatusCode::BAD_GATEWAY,
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
        ),
        // Handled in `token` before a response is built; answer sanely if reached.
        Fault::Delay(_) | Fault::Hang | Fault::LoseResponse | Fault::EchoRequest { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "unexpected fault").into_response()
        }
    }
}

/// [`Fault::EchoRequest`]: the request's form body and `Authorization`
/// header echoed back in an OAuth error or an HTML page.
fn echo_response(status: u16, json: bool, headers: &HeaderMap, body: &[u8]) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let authorization = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)");
    let echo = format!(
        "rejected request {} with authorization {authorization}",
        String::from_utf8_lossy(body)
    );
    if json {
        let error = if status == StatusCode::BAD_REQUEST {
            "invalid_grant"
        } else {
            "server_error"
        };
        return oauth_error(status, error, &echo);
    }
    let page = format!("<html><body><h1>Request rejected</h1><pre>{echo}</pre></body></html>");
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// `GET /resource`: 200 with the grant id for a live Bearer access token, else 401.
async fn resource(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let grant = token.and_then(|t| shared.book().access_token_grant(&t, Instant::now()));
    match grant {
        Some(grant) => json_response(StatusCode::OK, json!({"grant": grant.as_str()})),
        None => (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            "invalid token",
        )
            .into_response(),
    }
}

pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(status, json!({"error": error, "error_description": description}))
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-store"),
            (PRAGMA, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

//! Who is calling, and may they: the authentication middleware on `/v1`.
//!
//! [`authenticate`] runs on every matched `/v1` route (a `route_layer`, so
//! 404 and 405 answers need no key). It resolves the bearer key — the admin
//! key (every project, every scope) or a project key (its project only;
//! another project's connection is a 404 to it) — checks the scope the
//! route needs ([`required_scope`], decided here for every route, never in
//! a handler), and puts both a [`Caller`] (what handlers match on) and an
//! [`Identity`] (who, for the audit log) into the request's extensions.
//!
//! Failed authentications are counted per client address
//! ([`AuthFailureLimiter`]); an address over `security.auth_failures_per_minute`
//! gets 429 on every request that presents a key, even a correct one (the
//! admin key too), until its minute is over.
//!
//! Never logs, returns or counts by a presented key: an unknown, malformed,
//! wrong, expired or revoked key all get the same 401 message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use thermos_store::ConnectionRecord;
use time::OffsetDateTime;

use super::AppState;
use super::error::{ApiError, ErrorKind};
use crate::api_key;
pub use crate::api_key::{Scope, Scopes};

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Project(String),
}

/// Who authenticated a request, for whoever needs more than [`Caller`]
/// (the audit log). Put into the request's extensions by [`authenticate`]
/// on every `/v1` request it lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The public key id (`thk_<key_id>`'s id part), or `"admin"` for the
    /// admin key.
    pub key_id: String,
    /// The key's project; `None` for the admin key (every project).
    pub project: Option<String>,
    /// The scopes the key holds (all of them for the admin key).
    pub scopes: Scopes,
}

/// [`Identity::key_id`] of the admin key.
pub const ADMIN_KEY_ID: &str = "admin";

/// The project used when an admin names none.
pub const DEFAULT_PROJECT: &str = "default";

/// The default of `security.auth_failures_per_minute`.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 20;

/// How many client addresses the failure counter remembers at most; past
/// that, the address whose window started first is forgotten.
pub const AUTH_FAILURE_ADDRESSES: usize = 10_000;

/// The one answer to a key that does not authenticate, whatever the reason.
const UNAUTHORIZED: &str = "missing or invalid API key (Authorization: Bearer <key>)";

impl Caller {
    /// Whether this caller may see `record`.
    pub fn may_see(&self, record: &ConnectionRecord) -> bool {
        match self {
            Self::Admin => true,
            Self::Project(project) => *project == record.project,
        }
    }

    /// The project a new resource goes to: the caller's own, or for an
    /// admin the one named (default `default`). A project key naming another
    /// project is forbidden.
    pub fn project_for(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (self, requested) {
            (Self::Admin, Some(p)) => Ok(p.to_owned()),
            (Self::Admin, None) => Ok(DEFAULT_PROJECT.to_owned()),
            (Self::Project(own), None) => Ok(own.clone()),
            (Self::Project(own), Some(p)) if p == own => Ok(own.clone()),
            (Self::Project(_), Some(_)) => Err(ApiError::new(
                ErrorKind::Forbidden,
                "this key may only act on its own project",
            )),
        }
    }

    /// The project filter a listing must apply.
    pub fn project_filter(&self, requested: Option<String>) -> Result<Option<String>, ApiError> {
        match self {
            Self::Admin => Ok(requested),
            Self::Project(_) => self.project_for(requested.as_deref()).map(Some),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    /// The caller [`authenticate`] resolved; 401 if it did not run.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorKind::Unauthorized, UNAUTHORIZED))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = ApiError;

    /// The identity [`authenticate`] resolved; 401 if it did not run.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorKind::Unauthorized, UNAUTHORIZED))
    }
}

/// The scope a request needs, from its method and matched route template
/// (with or without the `/v1` prefix). Token hand-outs need `token`; other
/// reads `read`; everything else, and any route not listed, `admin`.
pub fn required_scope(method: &Method, route: &str) -> Scope {
    let route = route.strip_prefix("/v1").unwrap_or(route);
    match (method.as_str(), route) {
        ("GET", "/connections/{id}/token") | ("POST", "/connections/{id}/refresh") => Scope::Token,
        // Keys are managed, and listed, with `admin` only.
        (_, "/keys" | "/keys/{key_id}") => Scope::Admin,
        (
            "GET",
            "/connections"
            | "/connections/{id}"
            | "/connections/{id}/attempts"
            | "/webhooks"
            | "/events"
            | "/events/{id}"
            | "/providers"
            | "/runs"
            | "/runs/{id}"
            | "/apps"
            | "/connect/sessions/{id}",
        ) => Scope::Read,
        _ => Scope::Admin,
    }
}

/// The middleware on `/v1`: authenticate, check the scope, rate-limit
/// failures per client address, and put [`Caller`] and [`Identity`] into
/// the request's extensions — and the [`Identity`] into the answer's too,
/// refusals for a missing scope included, for the audit log outside.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let client = client_address(&request);
    let Some(presented) = bearer(request.headers()) else {
        return ApiError::new(ErrorKind::Unauthorized, UNAUTHORIZED).into_response();
    };
    let limiter = &state.auth_failures;
    if let Some(wait) = limiter.blocked_for(client, state.engine.now()) {
        return ApiError::new(
            ErrorKind::RateLimited,
            "too many failed authentications from this address; try again later",
        )
        .with_retry_after(wait)
        .into_response();
    }
    let identity = match resolve(&state, presented).await {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            limiter.record_failure(client, state.engine.now());
            return ApiError::new(ErrorKind::Unauthorized, UNAUTHORIZED).into_response();
        }
        Err(error) => return error.into_response(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let needed = required_scope(request.method(), &route);
    if !identity.scopes.contains(needed) {
        let mut refused = ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "this key lacks the `{needed}` scope needed for {} {route}",
                request.method()
            ),
        )
        .into_response();
        // The audit log (outside this layer) records the refusal by its key.
        refused.extensions_mut().insert(identity);
        return refused;
    }
    let caller = match &identity.project {
        None => Caller::Admin,
        Some(project) => Caller::Project(project.clone()),
    };
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(identity.clone());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(identity);
    response
}

/// The key after `Bearer `, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The identity of a presented key, `None` if it does not authenticate
/// (unknown, malformed, wrong, expired or revoked: not told apart).
async fn resolve(state: &AppState, presented: &str) -> Result<Option<Identity>, ApiError> {
    if let Some(admin) = &state.admin_key
        && api_key::secrets_equal(admin.expose_secret(), presented)
    {
        return Ok(Some(Identity {
            key_id: ADMIN_KEY_ID.to_owned(),
            project: None,
            scopes: Scopes::ALL,
        }));
    }
    let Some(key_id) = api_key::key_id(presented) else {
        return Ok(None);
    };
    let Some(record) = state.engine.store().find_api_key(key_id).await? else {
        return Ok(None);
    };
    if !api_key::accepts(&record, presented, state.engine.now()) {
        return Ok(None);
    }
    Ok(Some(Identity {
        scopes: Scopes::from_stored(&record.scopes),
        key_id: record.key_id,
        project: Some(record.project),
    }))
}

/// Where failures are counted for a request: its peer address, IPv6 by
/// its /64 (one host usually holds a whole /64), IPv4-mapped IPv6 as IPv4.
/// A request without a peer address (a router served without connect
/// info, as in some tests) counts under `None`, one shared bucket: without
/// an address the limit still holds, for all such callers together.
fn client_address(request: &Request) -> Option<IpAddr> {
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    })
}

/// Failed authentications per client address: after `limit` failures
/// within a minute (counted from the first), the address is blocked for a
/// minute from the failure that reached the limit. Remembers at most
/// [`AUTH_FAILURE_ADDRESSES`] addresses. Time is passed in (the engine's
/// clock, so tests move a manual one).
#[derive(Debug)]
pub struct AuthFailureLimiter {
    limit: u32,
    window: time::Duration,
    capacity: usize,
    entries: Mutex<HashMap<Option<IpAddr>, FailureWindow>>,
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: OffsetDateTime,
    failures: u32,
    blocked_until: Option<OffsetDateTime>,
}

impl AuthFailureLimiter {
    /// The window failures are counted in, and an address is blocked for.
    pub const WINDOW: Duration = Duration::from_secs(60);

    /// A limiter allowing `per_minute` failures per address; 0 turns it off.
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, AUTH_FAILURE_ADDRESSES)
    }

    /// As [`Self::new`], remembering at most `capacity` addresses.
    pub fn with_capacity(per_minute: u32, capacity: usize) -> Self {
        Self {
            limit: per_minute,
            window: time::Duration::seconds(Self::WINDOW.as_secs() as i64),
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `client` is still blocked at `now`, if it is.
    pub fn blocked_for(&self, client: Option<IpAddr>, now: OffsetDateTime) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let mut entries = self.lock();
        let entry = entries.get(&client)?;
        match entry.blocked_until {
            Some(until) if until > now => Some((until - now).unsigned_abs()),
            Some(_) => {
                entries.remove(&client);
                None
            }
            None => None,
        }
    }

    /// Counts one failed authentication of `client` at `now`.
    pub fn record_failure(&self, client: Option<IpAddr>, now: OffsetDateTime) {
        if self.limit == 0 {
            return;
        }
        let mut entries = self.lock();
        if !entries.contains_key(&client) && entries.len() >= self.capacity {
            let window = self.window;
            entries.retain(|_, e| e.blocked_until.is_some_and(|until| until > now) || now - e.started < window);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.started).map(|(k, _)| *k)
            {
                entries.remove(&oldest);
            }
        }
        let entry = entries.entry(client).or_insert(FailureWindow {
            started: now,
            failures: 0,
            blocked_until: None,
        });
        if now - entry.started >= self.window {
            *entry = FailureWindow {
                started: now,
                failures: 0,
                blocked_until: None,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures >= self.limit && entry.blocked_until.is_none() {
            entry.blocked_until = Some(now + self.window);
        }
    }

    /// How many addresses are remembered.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Option<IpAddr>, FailureWindow>> {
        // A panic while holding the lock leaves only counters behind.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    /// A manual clock: a fixed instant plus `seconds`.
    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000) + time::Duration::seconds(seconds)
    }

    #[test]
    fn an_address_is_blocked_after_the_limit_of_failures_until_its_minute_passes() {
        let limiter = AuthFailureLimiter::new(3);
        for _ in 0..2 {
            limiter.record_failure(ip(1), at(0));
        }
        assert_eq!(limiter.blocked_for(ip(1), at(0)), None);
        limiter.record_failure(ip(1), at(10));
        assert_eq!(limiter.blocked_for(ip(1), at(10)), Some(Duration::from_secs(60)));
        assert_eq!(limiter.blocked_for(ip(2), at(10)), None, "other addresses go on");
        assert_eq!(limiter.blocked_for(ip(1), at(69)), Some(Duration::from_secs(1)));
        assert_eq!(limiter.blocked_for(ip(1), at(70)), None);
        limiter.record_failure(ip(1), at(70));
        assert_eq!(
            limiter.blocked_for(ip(1), at(70)),
            None,
            "a new window starts from zero"
        );
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block() {
        let limiter = AuthFailureLimiter::new(3);
        for i in 0..6 {
            limiter.record_failure(ip(1), at(31 * i));
            assert_eq!(limiter.blocked_for(ip(1), at(31 * i)), None);
        }
    }

    #[test]
    fn the_counter_forgets_the_oldest_address_when_full() {
        let limiter = AuthFailureLimiter::with_capacity(2, 3);
        for last in 1..=3 {
            limiter.record_failure(ip(last), at(i64::from(last)));
        }
        limiter.record_failure(ip(4), at(4));
        assert_eq!(limiter.tracked(), 3);
        limiter.record_failure(ip(1), at(5));
        assert_eq!(limiter.blocked_for(ip(1), at(5)), None, "address 1 was forgotten");
        limiter.record_failure(ip(4), at(6));
        assert!(limiter.blocked_for(ip(4), at(6)).is_some());
    }

    #[test]
    fn a_limit_of_zero_never_blocks() {
        let limiter = AuthFailureLimiter::new(0);
        for _ in 0..100 {
            limiter.record_failure(ip(1), at(0));
        }
        assert_eq!(limiter.blocked_for(ip(1), at(0)), None);
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn token_routes_need_token_reads_need_read_and_the_rest_admin() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_scope(&get, "/v1/connections/{id}/token"), Scope::Token);
        assert_eq!(required_scope(&post, "/v1/connections/{id}/refresh"), Scope::Token);
        assert_eq!(required_scope(&get, "/v1/connections"), Scope::Read);
        assert_eq!(required_scope(&get, "/v1/apps"), Scope::Read);
        assert_eq!(required_scope(&post, "/v1/connections"), Scope::Admin);
        assert_eq!(
            required_scope(&Method::PUT, "/v1/connections/{id}/tokens"),
            Scope::Admin
        );
        assert_eq!(required_scope(&get, "/v1/keys"), Scope::Admin);
        assert_eq!(required_scope(&get, "/v1/something/new"), Scope::Admin);
        assert_eq!(required_scope(&get, ""), Scope::Admin);
    }
}

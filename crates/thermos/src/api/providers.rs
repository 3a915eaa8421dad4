//! `GET /v1/providers`: every provider app in force and its health — breaker
//! state, attempts and failures in the recent window, limits, what is in
//! flight and waiting, and why it is paused. Never a client secret.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::dto::DataList;
use super::error::ApiError;
use crate::engine::guard::{COUNTER_WINDOW, DEFAULT_APP_CONCURRENCY, GuardSnapshot};

/// One provider app's health.
#[derive(Debug, Serialize)]
pub struct ProviderView {
    pub provider: String,
    pub client_id: String,
    pub token_url: String,
    /// `healthy`, or `paused` (see `paused`).
    pub state: &'static str,
    /// `closed` or `open`.
    pub breaker: &'static str,
    pub paused: Option<PausedView>,
    pub window_seconds: u64,
    pub window_attempts: u64,
    pub window_failures: u64,
    pub total_attempts: u64,
    pub total_failures: u64,
    pub rate_limited: u64,
    pub lost_responses: u64,
    pub deferred: u64,
    pub in_flight: u32,
    pub waiting_on_demand: usize,
    pub waiting_scheduled: usize,
    pub max_concurrency: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
    /// Live instances sharing these limits; this one uses its share.
    pub shared_by_instances: u32,
}

/// Why and until when an app is paused.
#[derive(Debug, Serialize)]
pub struct PausedView {
    /// `rate_limited`, `circuit_open` or `client_invalid`.
    pub reason: &'static str,
    /// When the next attempt (a probe, or the end of a `Retry-After`) may go.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Admins see every app; a project key sees the configured ones (other
/// projects' own clients are not its business).
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<DataList<ProviderView>>, ApiError> {
    let now = state.engine.now();
    let snapshots = state.engine.guards().snapshots(now);
    let mut data = Vec::new();
    let apps = match caller {
        Caller::Admin => state.engine.apps().all(),
        Caller::Project(_) => state.engine.apps().configured(),
    };
    for app in apps {
        let key = app.key();
        let snapshot = snapshots.iter().find(|s| s.key == key);
        data.push(view(&app, snapshot, state.engine.guards().share()));
    }
    data.dedup_by(|a, b| a.provider == b.provider && a.client_id == b.client_id);
    Ok(Json(DataList { data }))
}

fn view(app: &crate::provider::ProviderApp, snapshot: Option<&GuardSnapshot>, share: u32) -> ProviderView {
    let paused = snapshot.and_then(|s| s.paused).map(|(reason, until)| PausedView {
        reason: reason.as_str(),
        until,
    });
    let totals = snapshot.map(|s| s.totals).unwrap_or_default();
    ProviderView {
        provider: app.slug.clone(),
        client_id: app.client_id.clone(),
        token_url: app.token_url.to_string(),
        state: if paused.is_some() { "paused" } else { "healthy" },
        breaker: if snapshot.is_some_and(|s| s.breaker.open.is_some()) {
            "open"
        } else {
            "closed"
        },
        paused,
        window_seconds: COUNTER_WINDOW.as_secs(),
        window_attempts: snapshot.map_or(0, |s| s.window_attempts),
        window_failures: snapshot.map_or(0, |s| s.window_failures),
        total_attempts: totals.attempts,
        total_failures: totals.failures,
        rate_limited: totals.rate_limited,
        lost_responses: totals.lost_responses,
        deferred: totals.deferred,
        in_flight: snapshot.map_or(0, |s| s.in_flight),
        waiting_on_demand: snapshot.map_or(0, |s| s.waiting.0),
        waiting_scheduled: snapshot.map_or(0, |s| s.waiting.1),
        max_concurrency: Some(app.max_concurrency.unwrap_or(DEFAULT_APP_CONCURRENCY)),
        rate_limit_per_second: app.rate_limit_per_second,
        shared_by_instances: snapshot.map_or(share, |s| s.shared_by),
    }
}

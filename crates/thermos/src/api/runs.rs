//! `/v1/runs`: bulk refresh runs — start, list, show, cancel.
//!
//! Owns the wire format of a run and the parsing of a run request into a
//! [`RunFilter`]. A project key acts on its own project only: its runs are
//! forced to its project, and another project's run is a 404 to it. The run
//! itself executes on a spawned task ([`crate::engine::run`]); starting one
//! answers 202 at once.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::run::RunRecord;
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::dto::DataList;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use crate::engine::run::RunFilter;

/// Largest `limit` of `GET /v1/runs`; more is refused (400).
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Runs listed when no limit is given.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// `POST /v1/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    pub provider: Option<String>,
    pub project: Option<String>,
    pub status: Option<String>,
    pub expiring_within_seconds: Option<u64>,
    pub overdue_by_seconds: Option<u64>,
    pub connection_ids: Option<Vec<String>>,
    pub failure_threshold: Option<f64>,
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRunsQuery {
    pub limit: Option<u32>,
}

/// A run on the wire.
#[derive(Debug, Serialize)]
pub struct RunView {
    pub id: String,
    pub trigger: String,
    pub filter: serde_json::Value,
    pub status: &'static str,
    pub stale: bool,
    pub cancel_requested: bool,
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub failures_by_code: BTreeMap<String, u64>,
    pub failure_threshold: f64,
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

impl From<&RunRecord> for RunView {
    fn from(r: &RunRecord) -> Self {
        Self {
            id: r.id.clone(),
            trigger: r.trigger.clone(),
            filter: r.filter.clone(),
            status: r.status.as_str(),
            stale: r.stale,
            cancel_requested: r.cancel_requested,
            total: r.counts.total,
            succeeded: r.counts.succeeded,
            failed: r.counts.failed,
            skipped: r.counts.skipped,
            failures_by_code: r.failures_by_code.clone(),
            failure_threshold: r.failure_threshold,
            owner: r.owner.clone(),
            heartbeat_at: r.heartbeat_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

impl StartRun {
    /// The filter and threshold, for a caller limited to `project` (if
    /// any); every problem reported at once, each naming its field.
    pub fn parse(self, project: Option<String>, default_threshold: f64) -> Result<(RunFilter, f64), Vec<String>> {
        let mut problems = Vec::new();
        let status = self.status.as_deref().and_then(|raw| {
            let parsed = ConnectionStatus::parse(raw);
            if parsed.is_none() {
                problems.push(format!("status: unknown connection status {raw:?}"));
            }
            parsed
        });
        let mut connection_ids = Vec::new();
        for raw in self.connection_ids.unwrap_or_default() {
            match ConnectionId::parse(&raw) {
                Ok(id) => connection_ids.push(id),
                Err(_) => problems.push(format!("connection_ids: {raw:?} is not a connection id")),
            }
        }
        let threshold = self.failure_threshold.unwrap_or(default_threshold);
        if !(threshold > 0.0 && threshold <= 1.0) {
            problems.push("failure_threshold: expected a share in (0, 1]".to_owned());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let filter = RunFilter {
            provider: self.provider,
            project,
            status,
            expiring_within: self.expiring_within_seconds.map(Duration::from_secs),
            overdue_by: self.overdue_by_seconds.map(Duration::from_secs),
            connection_ids,
        };
        Ok((filter, threshold))
    }
}

/// The project a run was limited to, as recorded in its filter.
fn run_project(run: &RunRecord) -> Option<&str> {
    run.filter.get("project").and_then(|p| p.as_str())
}

fn visible(caller: &Caller, run: &RunRecord) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Project(own) => run_project(run) == Some(own.as_str()),
    }
}

/// `POST /v1/runs`: 202 with the run as it started.
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<StartRun>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let project = match &caller {
        Caller::Admin => body.project.clone(),
        Caller::Project(_) => Some(caller.project_for(body.project.as_deref())?),
    };
    let (filter, threshold) = body
        .parse(project, state.engine.settings().failure_threshold)
        .map_err(|problems| ApiError::bad_request(problems.join("; ")))?;
    let run = state.engine.start_run(filter, "api", threshold).await?;
    tracing::info!(run_id = %run.id, "run started");
    Ok((StatusCode::ACCEPTED, Json(RunView::from(&run))))
}

/// `GET /v1/runs`: newest first; a project key sees its project's runs.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListRunsQuery>,
) -> Result<Json<DataList<RunView>>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!("limit: must be 1-{MAX_LIST_LIMIT}")));
    }
    let runs = state.engine.store().list_runs(limit).await?;
    Ok(Json(DataList {
        data: runs.iter().filter(|r| visible(&caller, r)).map(RunView::from).collect(),
    }))
}

/// `GET /v1/runs/{id}`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunView>, ApiError> {
    match state.engine.store().get_run(&id).await? {
        Some(run) if visible(&caller, &run) => Ok(Json(RunView::from(&run))),
        _ => Err(ApiError::not_found("run")),
    }
}

/// `POST /v1/runs/{id}/cancel`: 202 with the run; it stops after its
/// current batch. 404 when unknown, another project's or no longer running.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    let store = state.engine.store();
    let visible = matches!(store.get_run(&id).await?, Some(run) if visible(&caller, &run));
    if !visible || !store.cancel_run(&id).await? {
        return Err(ApiError::not_found("running run"));
    }
    let run = store.get_run(&id).await?.ok_or_else(|| ApiError::not_found("run"))?;
    Ok((StatusCode::ACCEPTED, Json(RunView::from(&run))))
}

/// The OpenAPI schema of a `POST /v1/runs` body.
pub fn start_run_schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object", "additionalProperties": false,
        "properties": {
            "provider": {"type": ["string", "null"]},
            "project": {"type": ["string", "null"]},
            "status": {"type": ["string", "null"], "enum": ["active", "failing", "needs_reauth", "disabled", null]},
            "expiring_within_seconds": {"type": ["integer", "null"]},
            "overdue_by_seconds": {"type": ["integer", "null"], "description": "only connections whose planned refresh is at least this late"},
            "connection_ids": {"type": ["array", "null"], "items": {"type": "string"}},
            "failure_threshold": {"type": ["number", "null"], "description": "share of failed attempts above which the run fails (default: refresh.failure_threshold, 0.1)"},
        },
    })
}

/// The OpenAPI schema of a [`RunView`].
pub fn run_schema() -> serde_json::Value {
    let date_time = || serde_json::json!({"type": "string", "format": "date-time"});
    serde_json::json!({
        "type": "object",
        "required": ["id", "trigger", "filter", "status", "stale", "total", "succeeded", "failed", "skipped",
            "failures_by_code", "failure_threshold", "started_at", "finished_at"],
        "properties": {
            "id": {"type": "string"},
            "trigger": {"type": "string"},
            "filter": {"type": "object"},
            "status": {"type": "string", "enum": ["running", "succeeded", "failed", "cancelled"]},
            "stale": {"type": "boolean", "description": "its process died while it ran"},
            "cancel_requested": {"type": "boolean"},
            "total": {"type": "integer"},
            "succeeded": {"type": "integer"},
            "failed": {"type": "integer"},
            "skipped": {"type": "integer"},
            "failures_by_code": {"type": "object", "additionalProperties": {"type": "integer"}},
            "failure_threshold": {"type": "number"},
            "owner": {"type": "string"},
            "heartbeat_at": date_time(),
            "started_at": date_time(),
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    })
}

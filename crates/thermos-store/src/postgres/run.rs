//! Runs on PostgreSQL: insert, progress, finish (with its event), stale
//! marking.
//!
//! Never decides a run's outcome (the engine does) and never reads the
//! clock: every time comes in as a parameter.

use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use time::OffsetDateTime;

use super::outbox::write_events;
use super::row::{self, ms};
use super::{PgStore, conflict_or, limit};
use crate::outbox::NewEvent;
use crate::run::{FailuresByCode, NewRun, RunCounts, RunRecord, RunStatus};
use crate::{StoreError, StoreResult};

const COLUMNS: &str = "id, \"trigger\", filter, status, total, succeeded, failed, skipped, failures_by_code, \
     failure_threshold, owner, stale, cancel_requested, heartbeat_at, started_at, finished_at";

pub(super) async fn insert(store: &PgStore, new: NewRun) -> StoreResult<RunRecord> {
    let sql = format!(
        r#"INSERT INTO runs (id, "trigger", filter, status, failure_threshold, owner, heartbeat_at, started_at)
           VALUES ($1, $2, $3, 'running', $4, $5, $6, $6) RETURNING {COLUMNS}"#
    );
    let stored = sqlx::query(&sql)
        .bind(&new.id)
        .bind(&new.trigger)
        .bind(&new.filter)
        .bind(new.failure_threshold)
        .bind(&new.owner)
        .bind(ms(new.started_at))
        .fetch_one(&store.pool)
        .await
        .map_err(conflict_or)?;
    run(&stored)
}

pub(super) async fn update_progress(
    store: &PgStore,
    id: &str,
    counts: RunCounts,
    failures: &FailuresByCode,
    heartbeat_at: OffsetDateTime,
) -> StoreResult<Option<RunRecord>> {
    let sql = format!(
        "UPDATE runs SET total = $2, succeeded = $3, failed = $4, skipped = $5, failures_by_code = $6, \
         heartbeat_at = $7 WHERE id = $1 AND status = 'running' RETURNING {COLUMNS}"
    );
    let updated = bind_counts(sqlx::query(&sql).bind(id), counts)
        .bind(failures_json(failures))
        .bind(ms(heartbeat_at))
        .fetch_optional(&store.pool)
        .await?;
    updated.as_ref().map(run).transpose()
}

pub(super) async fn finish(
    store: &PgStore,
    id: &str,
    status: RunStatus,
    counts: RunCounts,
    failures: &FailuresByCode,
    finished_at: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<Option<RunRecord>> {
    let mut tx = store.begin().await?;
    let sql = format!(
        "UPDATE runs SET total = $2, succeeded = $3, failed = $4, skipped = $5, failures_by_code = $6, \
         status = $7, finished_at = $8, heartbeat_at = $8 WHERE id = $1 AND status = 'running' \
         RETURNING {COLUMNS}"
    );
    let updated = bind_counts(sqlx::query(&sql).bind(id), counts)
        .bind(failures_json(failures))
        .bind(status.as_str())
        .bind(ms(finished_at))
        .fetch_optional(&mut *tx)
        .await?;
    let Some(updated) = updated else {
        return Ok(None);
    };
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    run(&updated).map(Some)
}

pub(super) async fn get(store: &PgStore, id: &str) -> StoreResult<Option<RunRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM runs WHERE id = $1");
    let found = sqlx::query(&sql).bind(id).fetch_optional(&store.pool).await?;
    found.as_ref().map(run).transpose()
}

pub(super) async fn list(store: &PgStore, page: u32) -> StoreResult<Vec<RunRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT $1");
    sqlx::query(&sql)
        .bind(limit(page))
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(run)
        .collect()
}

pub(super) async fn mark_stale(
    store: &PgStore,
    heartbeat_before: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE runs SET status = 'failed', stale = TRUE, finished_at = $2 \
         WHERE status = 'running' AND heartbeat_at < $1",
    )
    .bind(ms(heartbeat_before))
    .bind(ms(now))
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn cancel(store: &PgStore, id: &str) -> StoreResult<bool> {
    let done = sqlx::query("UPDATE runs SET cancel_requested = TRUE WHERE id = $1 AND status = 'running'")
        .bind(id)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

fn bind_counts<'q>(
    query: Query<'q, sqlx::Postgres, PgArguments>,
    counts: RunCounts,
) -> Query<'q, sqlx::Postgres, PgArguments> {
    query
        .bind(row::big(counts.total))
        .bind(row::big(counts.succeeded))
        .bind(row::big(counts.failed))
        .bind(row::big(counts.skipped))
}

/// The failures by code as a JSON object (a map of strings to numbers
/// always serialises).
fn failures_json(failures: &FailuresByCode) -> serde_json::Value {
    serde_json::Value::Object(
        failures
            .iter()
            .map(|(code, n)| (code.clone(), serde_json::Value::from(*n)))
            .collect(),
    )
}

/// Reads a `runs` row selected with [`COLUMNS`].
fn run(found: &PgRow) -> StoreResult<RunRecord> {
    let status: String = found.try_get("status")?;
    let failures: serde_json::Value = found.try_get("failures_by_code")?;
    Ok(RunRecord {
        id: found.try_get("id")?,
        trigger: found.try_get("trigger")?,
        filter: found.try_get("filter")?,
        status: RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("runs.status: {status}")))?,
        counts: RunCounts {
            total: row::unsigned(found, "total")?,
            succeeded: row::unsigned(found, "succeeded")?,
            failed: row::unsigned(found, "failed")?,
            skipped: row::unsigned(found, "skipped")?,
        },
        failures_by_code: serde_json::from_value(failures)
            .map_err(|e| StoreError::Corrupt(format!("runs.failures_by_code: {e}")))?,
        failure_threshold: found.try_get("failure_threshold")?,
        owner: found.try_get("owner")?,
        stale: found.try_get("stale")?,
        cancel_requested: found.try_get("cancel_requested")?,
        heartbeat_at: found.try_get("heartbeat_at")?,
        started_at: found.try_get("started_at")?,
        finished_at: found.try_get("finished_at")?,
    })
}

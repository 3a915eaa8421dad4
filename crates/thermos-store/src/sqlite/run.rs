//! Runs on SQLite: insert, progress, finish (with its event), stale marking.
//!
//! Never decides a run's outcome (the engine does) and never reads the
//! clock: every time comes in as a parameter.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::outbox::write_events;
use super::{SqliteStore, conflict_or, limit, row};
use crate::outbox::NewEvent;
use crate::run::{FailuresByCode, NewRun, RunCounts, RunRecord, RunStatus};
use crate::{StoreError, StoreResult};
use time::OffsetDateTime;

const COLUMNS: &str = "id, trigger, filter, status, total, succeeded, failed, skipped, failures_by_code, \
     failure_threshold, owner, stale, cancel_requested, heartbeat_at, started_at, finished_at";

pub(super) async fn insert(store: &SqliteStore, new: NewRun) -> StoreResult<RunRecord> {
    let sql = format!(
        "INSERT INTO runs (id, trigger, filter, status, failure_threshold, owner, heartbeat_at, started_at) \
         VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?6) RETURNING {COLUMNS}"
    );
    let stored = sqlx::query(&sql)
        .bind(&new.id)
        .bind(&new.trigger)
        .bind(json(&new.filter)?)
        .bind(new.failure_threshold)
        .bind(&new.owner)
        .bind(row::millis(new.started_at))
        .fetch_one(&store.writer)
        .await
        .map_err(conflict_or)?;
    run(&stored)
}

pub(super) async fn update_progress(
    store: &SqliteStore,
    id: &str,
    counts: RunCounts,
    failures: &FailuresByCode,
    heartbeat_at: OffsetDateTime,
) -> StoreResult<Option<RunRecord>> {
    let sql = format!(
        "UPDATE runs SET total = ?2, succeeded = ?3, failed = ?4, skipped = ?5, failures_by_code = ?6, \
         heartbeat_at = ?7 WHERE id = ?1 AND status = 'running' RETURNING {COLUMNS}"
    );
    let updated = bind_counts(sqlx::query(&sql).bind(id), counts)
        .bind(json(&serde_json::to_value(failures).unwrap_or_default())?)
        .bind(row::millis(heartbeat_at))
        .fetch_optional(&store.writer)
        .await?;
    updated.as_ref().map(run).transpose()
}

pub(super) async fn finish(
    store: &SqliteStore,
    id: &str,
    status: RunStatus,
    counts: RunCounts,
    failures: &FailuresByCode,
    finished_at: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<Option<RunRecord>> {
    let mut tx = store.begin_write().await?;
    let sql = format!(
        "UPDATE runs SET total = ?2, succeeded = ?3, failed = ?4, skipped = ?5, failures_by_code = ?6, \
         status = ?7, finished_at = ?8, heartbeat_at = ?8 WHERE id = ?1 AND status = 'running' \
         RETURNING {COLUMNS}"
    );
    let updated = bind_counts(sqlx::query(&sql).bind(id), counts)
        .bind(json(&serde_json::to_value(failures).unwrap_or_default())?)
        .bind(status.as_str())
        .bind(row::millis(finished_at))
        .fetch_optional(&mut *tx)
        .await?;
    let Some(updated) = updated else {
        return Ok(None);
    };
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    run(&updated).map(Some)
}

pub(super) async fn get(store: &SqliteStore, id: &str) -> StoreResult<Option<RunRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM runs WHERE id = ?1");
    let found = sqlx::query(&sql).bind(id).fetch_optional(&store.reader).await?;
    found.as_ref().map(run).transpose()
}

pub(super) async fn list(store: &SqliteStore, page: u32) -> StoreResult<Vec<RunRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT ?1");
    sqlx::query(&sql)
        .bind(limit(page))
        .fetch_all(&store.reader)
        .await?
        .iter()
        .map(run)
        .collect()
}

pub(super) async fn mark_stale(
    store: &SqliteStore,
    heartbeat_before: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE runs SET status = 'failed', stale = 1, finished_at = ?2 \
         WHERE status = 'running' AND heartbeat_at < ?1",
    )
    .bind(row::millis(heartbeat_before))
    .bind(row::millis(now))
    .execute(&store.writer)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn cancel(store: &SqliteStore, id: &str) -> StoreResult<bool> {
    let done = sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = ?1 AND status = 'running'")
        .bind(id)
        .execute(&store.writer)
        .await?;
    Ok(done.rows_affected() > 0)
}

fn bind_counts<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    counts: RunCounts,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(count(counts.total))
        .bind(count(counts.succeeded))
        .bind(count(counts.failed))
        .bind(count(counts.skipped))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn json(value: &serde_json::Value) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("run JSON cannot be serialised: {e}")))
}

fn read_count(row: &SqliteRow, column: &str) -> StoreResult<u64> {
    let n: i64 = row.try_get(column)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("runs.{column}: negative count {n}")))
}

/// Reads a `runs` row selected with [`COLUMNS`].
fn run(row: &SqliteRow) -> StoreResult<RunRecord> {
    let status: String = row.try_get("status")?;
    let filter: String = row.try_get("filter")?;
    let failures: String = row.try_get("failures_by_code")?;
    Ok(RunRecord {
        id: row.try_get("id")?,
        trigger: row.try_get("trigger")?,
        filter: serde_json::from_str(&filter).map_err(|e| StoreError::Corrupt(format!("runs.filter: {e}")))?,
        status: RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("runs.status: {status}")))?,
        counts: RunCounts {
            total: read_count(row, "total")?,
            succeeded: read_count(row, "succeeded")?,
            failed: read_count(row, "failed")?,
            skipped: read_count(row, "skipped")?,
        },
        failures_by_code: serde_json::from_str(&failures)
            .map_err(|e| StoreError::Corrupt(format!("runs.failures_by_code: {e}")))?,
        failure_threshold: row.try_get("failure_threshold")?,
        owner: row.try_get("owner")?,
        stale: row.try_get::<i64, _>("stale")? != 0,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        heartbeat_at: row::time_at(row, "heartbeat_at")?,
        started_at: row::time_at(row, "started_at")?,
        finished_at: row::opt_time_at(row, "finished_at")?,
    })
}

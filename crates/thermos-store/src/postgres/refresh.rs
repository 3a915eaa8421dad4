//! Refresh results on PostgreSQL: `finish_refresh`, `record_failure` and
//! the attempt log.
//!
//! Each result is one transaction that first locks the connection row (so
//! that a concurrent delete waits, and a deleted connection keeps no
//! attempt), records the attempt, and applies the change with the events
//! that report it only if the version is still the one the worker started
//! from (compare-and-swap). The lease owner is deliberately not checked: a
//! worker whose lease expired must still save a rotated refresh token if
//! nobody changed the tokens meanwhile. Keeps at most
//! [`ATTEMPTS_KEPT_PER_CONNECTION`] attempts per connection, pruned in the
//! transaction that adds one.

use sqlx::{PgConnection, PgPool};
use thermos_core::id::ConnectionId;

use super::outbox::write_events;
use super::row::{self, ATTEMPT_COLUMNS, CONNECTION_COLUMNS, ms};
use super::{PgStore, limit};
use crate::outbox::NewEvent;
use crate::{
    ATTEMPTS_KEPT_PER_CONNECTION, AttemptRecord, ConnectionRecord, FailureUpdate, FinishOutcome, NewAttempt,
    StoreResult, TokenUpdate,
};

/// How a transaction holds a connection row while it logs an attempt.
#[derive(Clone, Copy)]
enum RowLock {
    /// The row is about to be updated (blocks deletes and other updates).
    Update,
    /// The row only must not disappear (blocks deletes only).
    Keep,
}

/// Commits a successful refresh, with its events, if the version is still
/// `expected_version`, in a transaction of its own. The store commits
/// successes in groups (`finish_batch.rs`), which falls back to this.
pub(super) async fn finish(
    pool: &PgPool,
    id: ConnectionId,
    expected_version: i64,
    tokens: TokenUpdate,
    attempt: NewAttempt,
    events: Vec<NewEvent>,
) -> StoreResult<FinishOutcome> {
    let id_text = id.to_string();
    let sql = format!(
        "UPDATE connections SET access_token = $3, refresh_token = COALESCE($4, refresh_token), token_type = $5, \
           scope = COALESCE($6, scope), issued_at = $7, expires_at = $8, next_refresh_at = $9, status = 'active', \
           consecutive_failures = 0, last_error_code = NULL, last_error_message = NULL, \
           last_error_http_status = NULL, last_error_at = NULL, refresh_count = refresh_count + 1, \
           last_refreshed_at = $7, version = version + 1, lease_owner = NULL, lease_until = NULL, updated_at = $7, \
           refresh_token_expires_at = CASE WHEN $10::timestamptz IS NULL AND $4::bytea IS NULL \
             THEN refresh_token_expires_at ELSE $10 END, \
           refresh_token_warned_at = CASE WHEN $10::timestamptz IS NULL AND $4::bytea IS NULL THEN refresh_token_warned_at \
             WHEN $10::timestamptz IS NOT DISTINCT FROM refresh_token_expires_at THEN refresh_token_warned_at END \
         WHERE id = $1 AND version = $2 RETURNING {CONNECTION_COLUMNS}"
    );
    let mut tx = pool.begin().await?;
    if !log_attempt(&mut tx, &id_text, &attempt, RowLock::Update).await? {
        tx.commit().await?;
        return Ok(FinishOutcome::VersionChanged);
    }
    let updated = sqlx::query(&sql)
        .bind(&id_text)
        .bind(expected_version)
        .bind(tokens.access_token.as_bytes())
        .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
        .bind(&tokens.token_type)
        .bind(&tokens.scope)
        .bind(ms(tokens.issued_at))
        .bind(ms(tokens.expires_at))
        .bind(ms(tokens.next_refresh_at))
        .bind(row::opt_ms(tokens.refresh_token_expires_at))
        .fetch_optional(&mut *tx)
        .await?;
    let outcome = match updated {
        Some(updated) => {
            let record = row::connection(&updated)?;
            write_events(&mut tx, &events).await?;
            FinishOutcome::Committed(record)
        }
        None => FinishOutcome::VersionChanged,
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Records a failed refresh, with its events, if the version is still
/// `expected_version`.
pub(super) async fn record_failure(
    store: &PgStore,
    id: ConnectionId,
    expected_version: i64,
    failure: FailureUpdate,
    attempt: NewAttempt,
    events: Vec<NewEvent>,
) -> StoreResult<Option<ConnectionRecord>> {
    let id_text = id.to_string();
    let error = &failure.last_error;
    let sql = format!(
        "UPDATE connections SET status = $3, consecutive_failures = $4, last_error_code = $5, \
           last_error_message = $6, last_error_http_status = $7, last_error_at = $8, next_refresh_at = $9, \
           lease_owner = NULL, lease_until = NULL, updated_at = $8 \
         WHERE id = $1 AND version = $2 RETURNING {CONNECTION_COLUMNS}"
    );
    let mut tx = store.begin().await?;
    if !log_attempt(&mut tx, &id_text, &attempt, RowLock::Update).await? {
        tx.commit().await?;
        return Ok(None);
    }
    let updated = sqlx::query(&sql)
        .bind(&id_text)
        .bind(expected_version)
        .bind(failure.status.as_str())
        .bind(i64::from(failure.consecutive_failures))
        .bind(&error.code)
        .bind(&error.message)
        .bind(row::http_status(error.http_status))
        .bind(ms(error.at))
        .bind(row::opt_ms(failure.next_refresh_at))
        .fetch_optional(&mut *tx)
        .await?;
    let record = updated.as_ref().map(row::connection).transpose()?;
    if record.is_some() {
        write_events(&mut tx, &events).await?;
    }
    tx.commit().await?;
    Ok(record)
}

/// The connection's newest attempts first.
pub(super) async fn list_attempts(store: &PgStore, id: ConnectionId, page: u32) -> StoreResult<Vec<AttemptRecord>> {
    sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM refresh_attempts WHERE connection_id = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(id.to_string())
    .bind(limit(page))
    .fetch_all(&store.pool)
    .await?
    .iter()
    .map(row::attempt)
    .collect()
}

/// Records an attempt alone, in one transaction, without touching the row.
pub(super) async fn record_attempt(store: &PgStore, id: ConnectionId, attempt: NewAttempt) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    log_attempt(&mut tx, &id.to_string(), &attempt, RowLock::Keep).await?;
    tx.commit().await?;
    Ok(())
}

/// Locks the connection row and, if it exists, appends an attempt and
/// prunes the connection's log to the newest [`ATTEMPTS_KEPT_PER_CONNECTION`].
/// False (and nothing written) if the connection does not exist: a deleted
/// connection keeps no log. Transitions hold the row for update, so their
/// attempts are appended one transaction at a time.
async fn log_attempt(conn: &mut PgConnection, id: &str, attempt: &NewAttempt, lock: RowLock) -> StoreResult<bool> {
    let sql = match lock {
        RowLock::Update => "SELECT 1 FROM connections WHERE id = $1 FOR NO KEY UPDATE",
        RowLock::Keep => "SELECT 1 FROM connections WHERE id = $1 FOR KEY SHARE",
    };
    let exists: Option<i32> = sqlx::query_scalar(sql).bind(id).fetch_optional(&mut *conn).await?;
    if exists.is_none() {
        return Ok(false);
    }
    sqlx::query(
        r#"INSERT INTO refresh_attempts (connection_id, started_at, "trigger", outcome, error_code, http_status, duration_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
    )
    .bind(id)
    .bind(ms(attempt.started_at))
    .bind(&attempt.trigger)
    .bind(&attempt.outcome)
    .bind(&attempt.error_code)
    .bind(row::http_status(attempt.http_status))
    .bind(row::big(attempt.duration_ms))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM refresh_attempts WHERE connection_id = $1 AND id < \
           (SELECT id FROM refresh_attempts WHERE connection_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
    )
    .bind(id)
    .bind(i64::from(ATTEMPTS_KEPT_PER_CONNECTION) - 1)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

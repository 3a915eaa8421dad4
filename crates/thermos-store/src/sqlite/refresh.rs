//! Refresh results on SQLite: `finish_refresh`, `record_failure` and the
//! attempt log.
//!
//! Each result is one `BEGIN IMMEDIATE` transaction (successes are grouped
//! into shared ones by `finish_batch.rs`, with the same outcome) that records the attempt
//! and applies the change, with the events that report it, only if the
//! version is still the one the worker started from. The lease owner is deliberately not checked: a worker whose
//! lease expired must still save a rotated refresh token if nobody changed
//! the tokens meanwhile. Keeps at most [`crate::ATTEMPTS_KEPT_PER_CONNECTION`]
//! attempts per connection, pruned in the transaction that adds one.

use sqlx::{SqliteConnection, SqlitePool};
use thermos_core::id::ConnectionId;

use super::outbox::write_events;
use super::row::{self, ATTEMPT_COLUMNS, CONNECTION_COLUMNS};
use super::{SqliteStore, limit};
use crate::outbox::NewEvent;
use crate::{AttemptRecord, ConnectionRecord, FailureUpdate, FinishOutcome, NewAttempt, StoreResult, TokenUpdate};

/// Commits a successful refresh, with its events, if the version is still
/// `expected_version`, in a transaction of its own on `writer` (the store's
/// writer pool). The store commits successes in groups
/// (`finish_batch.rs`), which falls back to this.
pub(super) async fn finish(
    writer: &SqlitePool,
    id: ConnectionId,
    expected_version: i64,
    tokens: TokenUpdate,
    attempt: NewAttempt,
    events: Vec<NewEvent>,
) -> StoreResult<FinishOutcome> {
    let id_text = id.to_string();
    let sql = format!(
        "UPDATE connections SET access_token = ?3, refresh_token = COALESCE(?4, refresh_token), token_type = ?5, \
           scope = COALESCE(?6, scope), issued_at = ?7, expires_at = ?8, next_refresh_at = ?9, status = 'active', \
           consecutive_failures = 0, last_error_code = NULL, last_error_message = NULL, \
           last_error_http_status = NULL, last_error_at = NULL, refresh_count = refresh_count + 1, \
           last_refreshed_at = ?7, version = version + 1, lease_owner = NULL, lease_until = NULL, updated_at = ?7, \
           {REFRESH_TOKEN_LIFETIME} \
         WHERE id = ?1 AND version = ?2 RETURNING {CONNECTION_COLUMNS}"
    );
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    insert_attempt(&mut tx, &id_text, &attempt).await?;
    let updated = sqlx::query(&sql)
        .bind(&id_text)
        .bind(expected_version)
        .bind(tokens.access_token.as_bytes())
        .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
        .bind(&tokens.token_type)
        .bind(&tokens.scope)
        .bind(row::millis(tokens.issued_at))
        .bind(row::millis(tokens.expires_at))
        .bind(row::millis(tokens.next_refresh_at))
        .bind(row::opt_millis(tokens.refresh_token_expires_at))
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

/// The refresh token's lifetime after a refresh (`?4` the new refresh
/// token, `?10` its expiry): a given expiry is stored; none keeps the stored
/// one when the refresh token did not change and clears it when a new one
/// came without a lifetime. The warning mark goes when the expiry changes.
/// The group commit (`finish_batch.rs`) applies the same rule.
pub(super) const REFRESH_TOKEN_LIFETIME: &str = "\
    refresh_token_expires_at = CASE WHEN ?10 IS NULL AND ?4 IS NULL \
      THEN connections.refresh_token_expires_at ELSE ?10 END, \
    refresh_token_warned_at = CASE WHEN ?10 IS NULL AND ?4 IS NULL THEN connections.refresh_token_warned_at \
      WHEN ?10 IS connections.refresh_token_expires_at THEN connections.refresh_token_warned_at END";

/// Records a failed refresh, with its events, if the version is still
/// `expected_version`.
pub(super) async fn record_failure(
    store: &SqliteStore,
    id: ConnectionId,
    expected_version: i64,
    failure: FailureUpdate,
    attempt: NewAttempt,
    events: Vec<NewEvent>,
) -> StoreResult<Option<ConnectionRecord>> {
    let id_text = id.to_string();
    let error = &failure.last_error;
    let sql = format!(
        "UPDATE connections SET status = ?3, consecutive_failures = ?4, last_error_code = ?5, \
           last_error_message = ?6, last_error_http_status = ?7, last_error_at = ?8, next_refresh_at = ?9, \
           lease_owner = NULL, lease_until = NULL, updated_at = ?8 \
         WHERE id = ?1 AND version = ?2 RETURNING {CONNECTION_COLUMNS}"
    );
    let mut tx = store.begin_write().await?;
    insert_attempt(&mut tx, &id_text, &attempt).await?;
    let updated = sqlx::query(&sql)
        .bind(&id_text)
        .bind(expected_version)
        .bind(failure.status.as_str())
        .bind(i64::from(failure.consecutive_failures))
        .bind(&error.code)
        .bind(&error.message)
        .bind(error.http_status.map(i64::from))
        .bind(row::millis(error.at))
        .bind(row::opt_millis(failure.next_refresh_at))
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
pub(super) async fn list_attempts(store: &SqliteStore, id: ConnectionId, page: u32) -> StoreResult<Vec<AttemptRecord>> {
    sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM refresh_attempts WHERE connection_id = ?1 ORDER BY id DESC LIMIT ?2"
    ))
    .bind(id.to_string())
    .bind(limit(page))
    .fetch_all(&store.reader)
    .await?
    .iter()
    .map(row::attempt)
    .collect()
}

/// Records an attempt alone, in one transaction.
pub(super) async fn record_attempt(store: &SqliteStore, id: ConnectionId, attempt: NewAttempt) -> StoreResult<()> {
    let mut tx = store.begin_write().await?;
    insert_attempt(&mut tx, &id.to_string(), &attempt).await?;
    tx.commit().await?;
    Ok(())
}

/// Appends an attempt (if the connection still exists: a deleted connection
/// keeps no log); the trigger `refresh_attempts_keep_newest` (migration
/// 0006) prunes the connection's log to the newest
/// [`crate::ATTEMPTS_KEPT_PER_CONNECTION`] in the same statement.
async fn insert_attempt(conn: &mut SqliteConnection, id: &str, attempt: &NewAttempt) -> StoreResult<()> {
    sqlx::query(
        r#"INSERT INTO refresh_attempts (connection_id, started_at, "trigger", outcome, error_code, http_status, duration_ms)
           SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM connections WHERE id = ?1)"#,
    )
    .bind(id)
    .bind(row::millis(attempt.started_at))
    .bind(&attempt.trigger)
    .bind(&attempt.outcome)
    .bind(&attempt.error_code)
    .bind(attempt.http_status.map(i64::from))
    // A duration beyond i64 milliseconds (292 million years) saturates.
    .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

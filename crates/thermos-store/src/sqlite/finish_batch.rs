//! SQLite's [`Committer`]: many refresh successes in one transaction of
//! four statements (see `group_commit.rs` for why and for the contract).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::outbox::write_events;
use super::refresh::finish;
use super::row::{self, CONNECTION_COLUMNS};
use crate::group_commit::{Committer, Finish};
use crate::outbox::NewEvent;
use crate::{FinishOutcome, StoreResult};

/// Commits through the store's one-connection writer pool.
#[derive(Debug)]
pub(super) struct SqliteCommitter {
    pub writer: SqlitePool,
}

#[async_trait]
impl Committer for SqliteCommitter {
    async fn commit_together(&self, finishes: &[Finish]) -> StoreResult<Vec<FinishOutcome>> {
        commit_together(&self.writer, finishes).await
    }

    async fn commit_alone(&self, one: Finish) -> StoreResult<FinishOutcome> {
        finish(
            &self.writer,
            one.id,
            one.expected_version,
            one.tokens,
            one.attempt,
            one.events,
        )
        .await
    }
}

/// The batch's transaction: attempts, updates, events, in four statements
/// however many results. Outcomes in the order of `finishes`.
async fn commit_together(writer: &SqlitePool, finishes: &[Finish]) -> StoreResult<Vec<FinishOutcome>> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;

    let insert_sql = insert_attempts_sql(finishes.len());
    let mut insert = sqlx::query(&insert_sql);
    for finish in finishes {
        let attempt = &finish.attempt;
        insert = insert
            .bind(finish.id.to_string())
            .bind(row::millis(attempt.started_at))
            .bind(&attempt.trigger)
            .bind(&attempt.outcome)
            .bind(&attempt.error_code)
            .bind(attempt.http_status.map(i64::from))
            // A duration beyond i64 milliseconds (292 million years) saturates.
            .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX));
    }
    insert.execute(&mut *tx).await?;

    let update_sql = update_sql(finishes.len());
    let mut update = sqlx::query(&update_sql);
    for finish in finishes {
        let tokens = &finish.tokens;
        update = update
            .bind(finish.id.to_string())
            .bind(finish.expected_version)
            .bind(tokens.access_token.as_bytes())
            .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
            .bind(&tokens.token_type)
            .bind(&tokens.scope)
            .bind(row::millis(tokens.issued_at))
            .bind(row::millis(tokens.expires_at))
            .bind(row::millis(tokens.next_refresh_at))
            .bind(row::opt_millis(tokens.refresh_token_expires_at));
    }
    let mut updated = HashMap::with_capacity(finishes.len());
    for returned in update.fetch_all(&mut *tx).await? {
        let record = row::connection(&returned)?;
        updated.insert(record.id, record);
    }

    let events: Vec<NewEvent> = finishes
        .iter()
        .filter(|finish| updated.contains_key(&finish.id))
        .flat_map(|finish| finish.events.iter().cloned())
        .collect();
    write_events(&mut tx, &events).await?;
    tx.commit().await?;

    Ok(finishes
        .iter()
        .map(|finish| match updated.remove(&finish.id) {
            Some(record) => FinishOutcome::Committed(record),
            None => FinishOutcome::VersionChanged,
        })
        .collect())
}

/// `(?, …)` `rows` times, each of `columns` placeholders.
fn values(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Records the attempts of connections that still exist; the trigger
/// `refresh_attempts_keep_newest` prunes each one's log.
fn insert_attempts_sql(rows: usize) -> String {
    format!(
        r#"INSERT INTO refresh_attempts (connection_id, started_at, "trigger", outcome, error_code, http_status, duration_ms)
           SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7
           FROM (VALUES {}) AS v
           WHERE EXISTS (SELECT 1 FROM connections c WHERE c.id = v.column1)"#,
        values(rows, 7)
    )
}

/// Applies each result whose connection is still at its expected version,
/// returning the updated rows. The same changes as a single
/// [`finish`](super::refresh::finish).
fn update_sql(rows: usize) -> String {
    format!(
        "UPDATE connections SET access_token = v.column3, refresh_token = COALESCE(v.column4, connections.refresh_token), \
           token_type = v.column5, scope = COALESCE(v.column6, connections.scope), issued_at = v.column7, \
           expires_at = v.column8, next_refresh_at = v.column9, status = 'active', consecutive_failures = 0, \
           last_error_code = NULL, last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           refresh_count = connections.refresh_count + 1, last_refreshed_at = v.column7, \
           version = connections.version + 1, lease_owner = NULL, lease_until = NULL, updated_at = v.column7, \
           refresh_token_expires_at = CASE WHEN v.column10 IS NULL AND v.column4 IS NULL \
             THEN connections.refresh_token_expires_at ELSE v.column10 END, \
           refresh_token_warned_at = CASE WHEN v.column10 IS NULL AND v.column4 IS NULL \
             THEN connections.refresh_token_warned_at \
             WHEN v.column10 IS connections.refresh_token_expires_at THEN connections.refresh_token_warned_at END \
         FROM (VALUES {}) AS v \
         WHERE connections.id = v.column1 AND connections.version = v.column2 \
         RETURNING {CONNECTION_COLUMNS}",
        values(rows, 10)
    )
}

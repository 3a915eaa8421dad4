//! PostgreSQL's [`Committer`]: many refresh successes in one transaction of
//! five statements (see `group_commit.rs` for why and for the contract).
//!
//! The rows are locked in id order first, so that two instances committing
//! batches at once cannot deadlock; values travel as one array per column
//! (`UNNEST`), so each statement is the same prepared statement whatever the
//! batch size.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::outbox::write_events;
use super::refresh::finish;
use super::row::{self, CONNECTION_COLUMNS, ms};
use crate::group_commit::{Committer, Finish};
use crate::outbox::NewEvent;
use crate::{ATTEMPTS_KEPT_PER_CONNECTION, FinishOutcome, StoreResult};

/// Commits through the store's pool.
#[derive(Debug)]
pub(super) struct PgCommitter {
    pub pool: PgPool,
}

#[async_trait]
impl Committer for PgCommitter {
    async fn commit_together(&self, finishes: &[Finish]) -> StoreResult<Vec<FinishOutcome>> {
        commit_together(&self.pool, finishes).await
    }

    async fn commit_alone(&self, one: Finish) -> StoreResult<FinishOutcome> {
        finish(
            &self.pool,
            one.id,
            one.expected_version,
            one.tokens,
            one.attempt,
            one.events,
        )
        .await
    }
}

/// Locks the connections that still exist, records their attempts, prunes
/// their logs, applies every result still at its expected version, and
/// writes the events of those that applied. Outcomes in the order of
/// `finishes`.
async fn commit_together(pool: &PgPool, finishes: &[Finish]) -> StoreResult<Vec<FinishOutcome>> {
    let mut tx = pool.begin().await?;
    let ids: Vec<String> = finishes.iter().map(|finish| finish.id.to_string()).collect();
    let existing: HashSet<String> =
        sqlx::query_scalar("SELECT id FROM connections WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();

    // A deleted connection keeps no log.
    let logged: Vec<(&String, &Finish)> = ids
        .iter()
        .zip(finishes)
        .filter(|(id, _)| existing.contains(*id))
        .collect();
    let attempt_column = |pick: fn(&Finish) -> Option<String>| logged.iter().map(|(_, f)| pick(f)).collect::<Vec<_>>();
    sqlx::query(
        r#"INSERT INTO refresh_attempts (connection_id, started_at, "trigger", outcome, error_code, http_status, duration_ms)
           SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int8[])"#,
    )
    .bind(logged.iter().map(|(id, _)| (*id).clone()).collect::<Vec<_>>())
    .bind(logged.iter().map(|(_, f)| ms(f.attempt.started_at)).collect::<Vec<_>>())
    .bind(attempt_column(|f| Some(f.attempt.trigger.clone())))
    .bind(attempt_column(|f| Some(f.attempt.outcome.clone())))
    .bind(attempt_column(|f| f.attempt.error_code.clone()))
    .bind(logged.iter().map(|(_, f)| row::http_status(f.attempt.http_status)).collect::<Vec<_>>())
    .bind(logged.iter().map(|(_, f)| row::big(f.attempt.duration_ms)).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // Per connection, the id of its newest kept attempt is one descending
    // walk of the (connection_id, id) index; older ones go. (A window
    // function over the batch's attempts took a plan that scanned the table
    // once it had grown.)
    sqlx::query(
        "DELETE FROM refresh_attempts r USING ( \
           SELECT c.id AS connection_id, \
             (SELECT a.id FROM refresh_attempts a WHERE a.connection_id = c.id \
              ORDER BY a.id DESC LIMIT 1 OFFSET $2) AS oldest_kept \
           FROM UNNEST($1::text[]) AS c(id)) kept \
         WHERE r.connection_id = kept.connection_id AND r.id < kept.oldest_kept",
    )
    .bind(&ids)
    .bind(i64::from(ATTEMPTS_KEPT_PER_CONNECTION) - 1)
    .execute(&mut *tx)
    .await?;

    let times = |pick: fn(&Finish) -> OffsetDateTime| finishes.iter().map(|f| ms(pick(f))).collect::<Vec<_>>();
    let mut updated = HashMap::with_capacity(finishes.len());
    let returned = sqlx::query(&format!(
        "UPDATE connections SET access_token = v.new_access, \
           refresh_token = COALESCE(v.new_refresh, connections.refresh_token), token_type = v.new_type, \
           scope = COALESCE(v.new_scope, connections.scope), issued_at = v.new_issued, expires_at = v.new_expires, \
           next_refresh_at = v.new_next, status = 'active', consecutive_failures = 0, last_error_code = NULL, \
           last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           refresh_count = connections.refresh_count + 1, last_refreshed_at = v.new_issued, \
           version = connections.version + 1, lease_owner = NULL, lease_until = NULL, updated_at = v.new_issued, \
           refresh_token_expires_at = CASE WHEN v.new_rt_expires IS NULL AND v.new_refresh IS NULL \
             THEN connections.refresh_token_expires_at ELSE v.new_rt_expires END, \
           refresh_token_warned_at = CASE WHEN v.new_rt_expires IS NULL AND v.new_refresh IS NULL \
             THEN connections.refresh_token_warned_at \
             WHEN v.new_rt_expires IS NOT DISTINCT FROM connections.refresh_token_expires_at \
             THEN connections.refresh_token_warned_at END \
         FROM UNNEST($1::text[], $2::int8[], $3::bytea[], $4::bytea[], $5::text[], $6::text[], \
                     $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[]) \
           AS v(new_id, expected_version, new_access, new_refresh, new_type, new_scope, new_issued, new_expires, \
                new_next, new_rt_expires) \
         WHERE connections.id = v.new_id AND connections.version = v.expected_version \
         RETURNING {}",
        qualified(CONNECTION_COLUMNS)
    ))
    .bind(&ids)
    .bind(finishes.iter().map(|f| f.expected_version).collect::<Vec<_>>())
    .bind(
        finishes
            .iter()
            .map(|f| f.tokens.access_token.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(
        finishes
            .iter()
            .map(|f| f.tokens.refresh_token.as_ref().map(|t| t.as_bytes().to_vec()))
            .collect::<Vec<_>>(),
    )
    .bind(finishes.iter().map(|f| f.tokens.token_type.clone()).collect::<Vec<_>>())
    .bind(finishes.iter().map(|f| f.tokens.scope.clone()).collect::<Vec<_>>())
    .bind(times(|f| f.tokens.issued_at))
    .bind(times(|f| f.tokens.expires_at))
    .bind(times(|f| f.tokens.next_refresh_at))
    .bind(
        finishes
            .iter()
            .map(|f| row::opt_ms(f.tokens.refresh_token_expires_at))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    for returned in &returned {
        let record = row::connection(returned)?;
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

/// `connections.`-qualified column list.
fn qualified(columns: &str) -> String {
    columns
        .split(',')
        .map(|column| format!("connections.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

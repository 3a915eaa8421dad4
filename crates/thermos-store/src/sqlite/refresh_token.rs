//! Refresh-token lifetime on SQLite: the upkeep's scan for refresh tokens
//! close to expiry and the warning mark written with its event.
//!
//! Never changes tokens, the version or the schedule. The scan reads the
//! partial index `connections_refresh_token_expiring` (migration 0012):
//! warned rows are not in it.

use sqlx::SqlitePool;
use time::OffsetDateTime;

use super::outbox::write_events;
use super::row::{self, CONNECTION_COLUMNS};
use super::{SqliteStore, limit};
use crate::{ConnectionRecord, RefreshTokenWarning, StoreResult};

/// `provider`'s not yet warned connections whose refresh token expires at
/// or before `before`, earliest first.
pub(super) async fn expiring(
    reader: &SqlitePool,
    provider: &str,
    before: OffsetDateTime,
    page: u32,
) -> StoreResult<Vec<ConnectionRecord>> {
    sqlx::query(&format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections INDEXED BY connections_refresh_token_expiring \
         WHERE provider = ?1 AND refresh_token_warned_at IS NULL AND refresh_token_expires_at IS NOT NULL \
           AND refresh_token_expires_at <= ?2 \
         ORDER BY refresh_token_expires_at LIMIT ?3"
    ))
    .bind(provider)
    .bind(row::millis(before))
    .bind(limit(page))
    .fetch_all(reader)
    .await?
    .iter()
    .map(row::connection)
    .collect()
}

/// Marks each warning's connection (if its expiry is still the one warned
/// about) and writes its events, in one transaction.
pub(super) async fn warn(
    store: &SqliteStore,
    warnings: Vec<RefreshTokenWarning>,
    now: OffsetDateTime,
) -> StoreResult<u64> {
    let mut tx = store.begin_write().await?;
    let mut marked = 0;
    for warning in warnings {
        let done = sqlx::query(
            "UPDATE connections SET refresh_token_warned_at = ?3 \
             WHERE id = ?1 AND refresh_token_expires_at = ?2 AND refresh_token_warned_at IS NULL",
        )
        .bind(warning.id.to_string())
        .bind(row::millis(warning.refresh_token_expires_at))
        .bind(row::millis(now))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() > 0 {
            marked += 1;
            write_events(&mut tx, &warning.events).await?;
        }
    }
    tx.commit().await?;
    Ok(marked)
}

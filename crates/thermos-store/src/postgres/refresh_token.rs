//! Refresh-token lifetime on PostgreSQL: the upkeep's scan for refresh
//! tokens close to expiry and the warning mark written with its event.
//!
//! Never changes tokens, the version or the schedule. The scan reads the
//! partial index `connections_refresh_token_expiring` (migration 0008):
//! warned rows are not in it.

use time::OffsetDateTime;

use super::outbox::write_events;
use super::row::{self, CONNECTION_COLUMNS, ms};
use super::{PgStore, limit};
use crate::{ConnectionRecord, RefreshTokenWarning, StoreResult};

/// `provider`'s not yet warned connections whose refresh token expires at
/// or before `before`, earliest first.
pub(super) async fn expiring(
    store: &PgStore,
    provider: &str,
    before: OffsetDateTime,
    page: u32,
) -> StoreResult<Vec<ConnectionRecord>> {
    sqlx::query(&format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections \
         WHERE provider = $1 AND refresh_token_warned_at IS NULL AND refresh_token_expires_at IS NOT NULL \
           AND refresh_token_expires_at <= $2 \
         ORDER BY refresh_token_expires_at LIMIT $3"
    ))
    .bind(provider)
    .bind(ms(before))
    .bind(limit(page))
    .fetch_all(&store.pool)
    .await?
    .iter()
    .map(row::connection)
    .collect()
}

/// Marks each warning's connection (if its expiry is still the one warned
/// about) and writes its events, in one transaction.
pub(super) async fn warn(store: &PgStore, warnings: Vec<RefreshTokenWarning>, now: OffsetDateTime) -> StoreResult<u64> {
    let mut tx = store.begin().await?;
    let mut marked = 0;
    for warning in warnings {
        let done = sqlx::query(
            "UPDATE connections SET refresh_token_warned_at = $3 \
             WHERE id = $1 AND refresh_token_expires_at = $2 AND refresh_token_warned_at IS NULL",
        )
        .bind(warning.id.to_string())
        .bind(ms(warning.refresh_token_expires_at))
        .bind(ms(now))
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

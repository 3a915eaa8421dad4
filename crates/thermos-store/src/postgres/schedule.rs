//! The schedule on PostgreSQL: what is due next, and leases.
//!
//! A batch claim is one statement: the due rows are picked in due order with
//! `FOR UPDATE SKIP LOCKED` and leased by the `UPDATE` that locked them, so
//! two instances claiming at once get disjoint rows and never wait for each
//! other; a row whose lease another instance committed meanwhile is
//! re-checked by PostgreSQL and dropped. The due-work queries keep spelling
//! the partial index's predicate (`status IN ('active', 'failing')`, as
//! literals). A claim never bumps the version and never touches tokens.

use thermos_core::id::ConnectionId;
use time::OffsetDateTime;

use super::row::{self, CONNECTION_COLUMNS, ms};
use super::{PgStore, limit};
use crate::{Claim, ConnectionRecord, StoreResult};

/// The earliest due time among scheduled connections.
pub(super) const SELECT_NEXT_DUE: &str = "SELECT next_refresh_at FROM connections \
     WHERE status IN ('active', 'failing') AND next_refresh_at IS NOT NULL \
     ORDER BY next_refresh_at LIMIT 1";

/// Leases due, unleased, scheduled connections, earliest first. `$1` now,
/// `$2` limit, `$3` owner, `$4` lease end.
pub(super) const CLAIM_DUE: &str = "WITH due AS ( \
       SELECT id, next_refresh_at FROM connections \
       WHERE status IN ('active', 'failing') AND next_refresh_at <= $1 \
         AND (lease_until IS NULL OR lease_until <= $1) \
       ORDER BY next_refresh_at LIMIT $2 \
       FOR UPDATE SKIP LOCKED) \
     UPDATE connections c SET lease_owner = $3, lease_until = $4, next_refresh_at = $4, updated_at = $1 \
     FROM due WHERE c.id = due.id \
     RETURNING c.*, due.next_refresh_at AS planned_refresh_at";

/// The earliest `next_refresh_at` among scheduled connections.
pub(super) async fn next_due_at(store: &PgStore) -> StoreResult<Option<OffsetDateTime>> {
    Ok(sqlx::query_scalar(SELECT_NEXT_DUE).fetch_optional(&store.pool).await?)
}

/// Leases up to `page` due connections to `owner`, earliest first, moving
/// their `next_refresh_at` to `lease_until`; the records carry the due time
/// planned before the claim.
pub(super) async fn claim_due(
    store: &PgStore,
    owner: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
    page: u32,
) -> StoreResult<Vec<ConnectionRecord>> {
    let rows = sqlx::query(CLAIM_DUE)
        .bind(ms(now))
        .bind(limit(page))
        .bind(owner)
        .bind(ms(lease_until))
        .fetch_all(&store.pool)
        .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for found in &rows {
        let mut record = row::connection(found)?;
        record.next_refresh_at = sqlx::Row::try_get(found, "planned_refresh_at")?;
        claimed.push(record);
    }
    // RETURNING has no order: put the records back in due order.
    claimed.sort_by_key(|c| (c.next_refresh_at, c.id));
    Ok(claimed)
}

/// Leases one connection if no unexpired lease is held on it. The row is
/// locked first, so a concurrent claim waits and then sees this lease.
pub(super) async fn claim_connection(
    store: &PgStore,
    id: ConnectionId,
    owner: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
) -> StoreResult<Claim> {
    let id_text = id.to_string();
    let now = ms(now);
    let mut tx = store.begin().await?;
    let held: Option<(Option<OffsetDateTime>,)> =
        sqlx::query_as("SELECT lease_until FROM connections WHERE id = $1 FOR NO KEY UPDATE")
            .bind(&id_text)
            .fetch_optional(&mut *tx)
            .await?;
    let claim = match held {
        None => Claim::NotFound,
        Some((Some(until),)) if until > now => Claim::Busy { lease_until: until },
        Some(_) => {
            let sql = format!(
                "UPDATE connections SET lease_owner = $2, lease_until = $3, updated_at = $4, \
                   next_refresh_at = CASE WHEN status IN ('active', 'failing') THEN $3 ELSE next_refresh_at END \
                 WHERE id = $1 RETURNING {CONNECTION_COLUMNS}"
            );
            let claimed = sqlx::query(&sql)
                .bind(&id_text)
                .bind(owner)
                .bind(ms(lease_until))
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            Claim::Claimed(row::connection(&claimed)?)
        }
    };
    tx.commit().await?;
    Ok(claim)
}

/// Drops `owner`'s lease and sets the next due time (scheduled rows only).
/// Another owner's lease, or no lease, is left alone.
pub(super) async fn release_lease(
    store: &PgStore,
    id: ConnectionId,
    owner: &str,
    next_refresh_at: OffsetDateTime,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE connections SET lease_owner = NULL, lease_until = NULL, \
           next_refresh_at = CASE WHEN status IN ('active', 'failing') THEN $3 ELSE next_refresh_at END \
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id.to_string())
    .bind(owner)
    .bind(ms(next_refresh_at))
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Drops every lease; leased scheduled rows become due at `now`. Only for
/// an instance that knows it is the database's sole user.
pub(super) async fn release_all_leases(store: &PgStore, now: OffsetDateTime) -> StoreResult<u64> {
    let result = sqlx::query(
        "UPDATE connections SET lease_owner = NULL, lease_until = NULL, \
           next_refresh_at = CASE WHEN status IN ('active', 'failing') THEN $1 ELSE next_refresh_at END \
         WHERE lease_owner IS NOT NULL",
    )
    .bind(ms(now))
    .execute(&store.pool)
    .await?;
    Ok(result.rows_affected())
}

//! The schedule on SQLite: what is due next, and leases.
//!
//! Owns the due-work queries, which must keep spelling the partial index's
//! predicate (`status IN ('active', 'failing')`, as literals) so that they
//! stay index range scans; a conformance test checks the plan. A claim never
//! bumps the version and never touches tokens.

use std::collections::HashMap;

use thermos_core::id::ConnectionId;
use time::OffsetDateTime;

use super::row::{self, CONNECTION_COLUMNS};
use super::{SqliteStore, limit};
use crate::{Claim, ConnectionRecord, StoreResult};

/// Due, unleased, scheduled connections, earliest first. `?1` now, `?2` limit.
pub(super) const SELECT_DUE: &str = "SELECT id, next_refresh_at FROM connections \
     WHERE status IN ('active', 'failing') AND next_refresh_at <= ?1 \
       AND (lease_until IS NULL OR lease_until <= ?1) \
     ORDER BY next_refresh_at LIMIT ?2";

/// The earliest due time among scheduled connections.
pub(super) const SELECT_NEXT_DUE: &str = "SELECT next_refresh_at FROM connections \
     WHERE status IN ('active', 'failing') AND next_refresh_at IS NOT NULL \
     ORDER BY next_refresh_at LIMIT 1";

/// The earliest `next_refresh_at` among scheduled connections.
pub(super) async fn next_due_at(store: &SqliteStore) -> StoreResult<Option<OffsetDateTime>> {
    let due: Option<i64> = sqlx::query_scalar(SELECT_NEXT_DUE)
        .fetch_optional(&store.reader)
        .await?;
    due.map(|ms| row::from_millis(ms, "next_refresh_at")).transpose()
}

/// Leases up to `page` due connections to `owner`, earliest first, moving
/// their `next_refresh_at` to `lease_until`.
pub(super) async fn claim_due(
    store: &SqliteStore,
    owner: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
    page: u32,
) -> StoreResult<Vec<ConnectionRecord>> {
    let now = row::millis(now);
    let mut tx = store.begin_write().await?;
    let due: Vec<(String, i64)> = sqlx::query_as(SELECT_DUE)
        .bind(now)
        .bind(limit(page))
        .fetch_all(&mut *tx)
        .await?;
    if due.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let ids: Vec<String> = due.iter().map(|(id, _)| id.clone()).collect();
    let planned: HashMap<&str, i64> = due.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    // RETURNING has no order, and the old due times are overwritten: put the
    // records back in the order the index gave.
    let order: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let sql = format!(
        "UPDATE connections SET lease_owner = ?1, lease_until = ?2, next_refresh_at = ?2, updated_at = ?3 \
         WHERE id IN (SELECT value FROM json_each(?4)) RETURNING {CONNECTION_COLUMNS}"
    );
    let ids_json = serde_json::Value::from(ids.clone()).to_string();
    let rows = sqlx::query(&sql)
        .bind(owner)
        .bind(row::millis(lease_until))
        .bind(now)
        .bind(ids_json)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut claimed = rows.iter().map(row::connection).collect::<StoreResult<Vec<_>>>()?;
    for record in &mut claimed {
        if let Some(at) = planned.get(record.id.to_string().as_str()) {
            record.next_refresh_at = Some(row::from_millis(*at, "next_refresh_at")?);
        }
    }
    claimed.sort_by_cached_key(|c| order.get(c.id.to_string().as_str()).copied());
    Ok(claimed)
}

/// Leases one connection if no unexpired lease is held on it.
pub(super) async fn claim_connection(
    store: &SqliteStore,
    id: ConnectionId,
    owner: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
) -> StoreResult<Claim> {
    let id_text = id.to_string();
    let now = row::millis(now);
    let mut tx = store.begin_write().await?;
    let held: Option<(Option<i64>,)> = sqlx::query_as("SELECT lease_until FROM connections WHERE id = ?1")
        .bind(&id_text)
        .fetch_optional(&mut *tx)
        .await?;
    let claim = match held {
        None => Claim::NotFound,
        Some((Some(until),)) if until > now => Claim::Busy {
            lease_until: row::from_millis(until, "lease_until")?,
        },
        Some(_) => {
            let sql = format!(
                "UPDATE connections SET lease_owner = ?2, lease_until = ?3, updated_at = ?4, \
                   next_refresh_at = CASE WHEN status IN ('active', 'failing') THEN ?3 ELSE next_refresh_at END \
                 WHERE id = ?1 RETURNING {CONNECTION_COLUMNS}"
            );
            let claimed = sqlx::query(&sql)
                .bind(&id_text)
                .bind(owner)
                .bind(row::millis(lease_until))
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
    store: &SqliteStore,
    id: ConnectionId,
    owner: &str,
    next_refresh_at: OffsetDateTime,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE connections SET lease_owner = NULL, lease_until = NULL, \
           next_refresh_at = CASE WHEN status IN ('active', 'failing') THEN ?3 ELSE next_refresh_at END \
         WHERE id = ?1 AND lease_owner = ?2",
    )
    .bind(id.to_string())
    .bind(owner)
    .bind(row::millis(next_refresh_at))
    .execute(&store.writer)
    .await?;
    Ok(())
}

/// Drops every lease; leased scheduled rows become due at `now`.
pub(super) async fn release_all_leases(store: &SqliteStore, now: OffsetDateTime) -> StoreResult<u64> {
    let result = sqlx::query(
        "UPDATE connections SET lease_owner = NULL, lease_until = NULL, \
           next_refresh_at = CASE WHEN status IN ('active', 'failing') THEN ?1 ELSE next_refresh_at END \
         WHERE lease_owner IS NOT NULL",
    )
    .bind(row::millis(now))
    .execute(&store.writer)
    .await?;
    Ok(result.rows_affected())
}

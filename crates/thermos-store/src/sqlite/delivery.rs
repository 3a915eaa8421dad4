//! Deliveries on SQLite: claiming, finishing, redelivering, the backlog.
//!
//! A delivery's channel is its (`webhook_id`, `connection_id`), NULLs
//! compared with `IS` (one operators' channel, one group of events without a
//! connection). Deliveries of a channel go out strictly in id order: the
//! `head` column marks the first pending delivery of each channel, and only
//! a head is claimed. Every change that makes a delivery leave or re-enter
//! `pending` ends with [`settle_head`] for its channel, in the same
//! transaction. The claim query also checks the order directly (no earlier
//! pending delivery in the channel), so a wrong `head` could delay a
//! delivery but never reorder one.
//!
//! Never sends anything, never reads the clock: `now` and attempt times are
//! parameters.

use sqlx::{Row, SqliteConnection};
use time::OffsetDateTime;

use super::outbox::{self, DELIVERY_COLUMNS};
use super::{SqliteStore, limit, row};
use crate::StoreResult;
use crate::outbox::{DeliveryAttempt, DeliveryNext, DeliveryRecord, DeliveryStatus};

/// Claimable deliveries, earliest id first: pending channel heads that are
/// due and unleased (or whose lease expired), with no earlier pending
/// delivery in their channel. `?1` now, `?2` limit. Must keep spelling the
/// partial indexes' predicates (`status = 'pending'`, `head = 1`). `INDEXED
/// BY`: ordered by id, the planner would otherwise walk the whole table in
/// rowid order rather than the due heads (it has no statistics).
pub(super) fn select_claimable() -> String {
    format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d INDEXED BY deliveries_due JOIN events e ON e.seq = d.event_seq \
         WHERE d.status = 'pending' AND d.head = 1 AND d.next_attempt_at <= ?1 \
           AND (d.lease_until IS NULL OR d.lease_until <= ?1) \
           AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending' \
             AND p.webhook_id IS d.webhook_id AND p.connection_id IS d.connection_id AND p.id < d.id) \
         ORDER BY d.id LIMIT ?2"
    )
}

/// When the dispatcher next has work.
pub(super) const SELECT_NEXT_DUE: &str = "SELECT next_attempt_at FROM deliveries \
     WHERE status = 'pending' AND head = 1 ORDER BY next_attempt_at LIMIT 1";

/// Leases up to `page` claimable deliveries to `owner`, moving their
/// `next_attempt_at` to `lease_until`; returns them as they were before.
pub(super) async fn claim(
    store: &SqliteStore,
    owner: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
    page: u32,
) -> StoreResult<Vec<DeliveryRecord>> {
    let mut tx = store.begin_write().await?;
    let claimed = sqlx::query(&select_claimable())
        .bind(row::millis(now))
        .bind(limit(page))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(outbox::delivery)
        .collect::<StoreResult<Vec<_>>>()?;
    if !claimed.is_empty() {
        let ids = serde_json::Value::from(claimed.iter().map(|d| d.id).collect::<Vec<_>>()).to_string();
        sqlx::query(
            "UPDATE deliveries SET lease_owner = ?1, lease_until = ?2, next_attempt_at = ?2 \
             WHERE id IN (SELECT value FROM json_each(?3))",
        )
        .bind(owner)
        .bind(row::millis(lease_until))
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Records an attempt; applies `next` only if `owner` holds the lease.
pub(super) async fn finish(
    store: &SqliteStore,
    id: i64,
    owner: &str,
    attempt: DeliveryAttempt,
    next: DeliveryNext,
) -> StoreResult<()> {
    let mut tx = store.begin_write().await?;
    let recorded = sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, at, http_status, latency_ms, error) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM deliveries WHERE id = ?1)",
    )
    .bind(id)
    .bind(row::millis(attempt.at))
    .bind(attempt.http_status.map(i64::from))
    // A latency beyond i64 milliseconds saturates.
    .bind(i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX))
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await?;
    if recorded.rows_affected() == 0 {
        tx.commit().await?;
        return Ok(());
    }
    sqlx::query("UPDATE deliveries SET attempts = attempts + 1, last_http_status = ?2, last_error = ?3 WHERE id = ?1")
        .bind(id)
        .bind(attempt.http_status.map(i64::from))
        .bind(&attempt.error)
        .execute(&mut *tx)
        .await?;
    let (status, next_attempt_at, delivered_at) = match next {
        DeliveryNext::Delivered => (DeliveryStatus::Delivered, None, Some(attempt.at)),
        DeliveryNext::Retry { at } => (DeliveryStatus::Pending, Some(at), None),
        DeliveryNext::Failed => (DeliveryStatus::Failed, None, None),
    };
    let applied = sqlx::query(
        "UPDATE deliveries SET status = ?3, head = CASE WHEN ?3 = 'pending' THEN head ELSE 0 END, \
           next_attempt_at = COALESCE(?4, next_attempt_at), delivered_at = ?5, lease_owner = NULL, \
           lease_until = NULL \
         WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending' RETURNING webhook_id, connection_id",
    )
    .bind(id)
    .bind(owner)
    .bind(status.as_str())
    .bind(row::opt_millis(next_attempt_at))
    .bind(row::opt_millis(delivered_at))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(channel) = applied
        && status != DeliveryStatus::Pending
    {
        settle_head(&mut tx, channel.try_get(0)?, channel.try_get(1)?).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Puts every delivery of an event (but those of deleted webhooks) back to
/// pending, due at `now`.
pub(super) async fn redeliver(store: &SqliteStore, event_id: &str, now: OffsetDateTime) -> StoreResult<u64> {
    let mut tx = store.begin_write().await?;
    let channels: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "UPDATE deliveries SET status = 'pending', head = 0, next_attempt_at = ?2, created_at = ?2, \
           delivered_at = NULL, lease_owner = NULL, lease_until = NULL \
         WHERE event_seq = (SELECT seq FROM events WHERE id = ?1) \
           AND (webhook_id IS NULL OR webhook_id IN (SELECT id FROM webhooks WHERE deleted_at IS NULL)) \
         RETURNING webhook_id, connection_id",
    )
    .bind(event_id)
    .bind(row::millis(now))
    .fetch_all(&mut *tx)
    .await?;
    // One event has at most one delivery per channel.
    for (webhook_id, connection_id) in &channels {
        settle_head(&mut tx, webhook_id.clone(), connection_id.clone()).await?;
    }
    tx.commit().await?;
    Ok(channels.len() as u64)
}

/// Makes the lowest-id pending delivery of the channel its only head.
async fn settle_head(
    conn: &mut SqliteConnection,
    webhook_id: Option<String>,
    connection_id: Option<String>,
) -> StoreResult<()> {
    const FIRST: &str = "(SELECT MIN(p.id) FROM deliveries p WHERE p.status = 'pending' \
         AND p.webhook_id IS ?1 AND p.connection_id IS ?2)";
    sqlx::query(&format!(
        "UPDATE deliveries SET head = 0 WHERE status = 'pending' AND webhook_id IS ?1 AND connection_id IS ?2 \
           AND head = 1 AND id > {FIRST}"
    ))
    .bind(&webhook_id)
    .bind(&connection_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "UPDATE deliveries SET head = 1 WHERE id = {FIRST} AND head = 0"
    ))
    .bind(&webhook_id)
    .bind(&connection_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The earliest `next_attempt_at` among pending channel heads.
pub(super) async fn next_due_at(store: &SqliteStore) -> StoreResult<Option<OffsetDateTime>> {
    let due: Option<i64> = sqlx::query_scalar(SELECT_NEXT_DUE)
        .fetch_optional(&store.reader)
        .await?;
    due.map(|ms| row::from_millis(ms, "deliveries.next_attempt_at"))
        .transpose()
}

/// How many deliveries are pending.
pub(super) async fn count_pending(store: &SqliteStore) -> StoreResult<u64> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        .fetch_one(&store.reader)
        .await?;
    Ok(count.max(0) as u64)
}

/// A delivery's attempts, oldest first.
pub(super) async fn list_attempts(store: &SqliteStore, delivery_id: i64) -> StoreResult<Vec<DeliveryAttempt>> {
    let rows = sqlx::query(
        "SELECT at, http_status, latency_ms, error FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY id",
    )
    .bind(delivery_id)
    .fetch_all(&store.reader)
    .await?;
    rows.iter()
        .map(|found| {
            let latency: i64 = found.try_get("latency_ms")?;
            Ok(DeliveryAttempt {
                at: row::time_at(found, "at")?,
                http_status: row::opt_http_status(found, "http_status")?,
                latency_ms: latency.max(0) as u64,
                error: found.try_get("error")?,
            })
        })
        .collect()
}

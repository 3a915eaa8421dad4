//! Deliveries on PostgreSQL: claiming, finishing, redelivering, the backlog.
//!
//! A delivery's channel is its (`webhook_id`, `connection_id`), NULLs
//! counting as one value. Deliveries of a channel go out strictly in id
//! order: the `head` column marks the first pending delivery of each
//! channel, and only a head is claimed. Every change that makes a delivery
//! leave or re-enter `pending` holds the channel's lock and ends with
//! [`settle_head`] for the channel, in the same transaction (see
//! `outbox.rs` for the locks). The claim also checks the order directly (no
//! earlier pending delivery in the channel), so a wrong `head` could delay a
//! delivery but never reorder one.
//!
//! Never sends anything, never reads the clock: `now` and attempt times are
//! parameters.

use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::outbox::{self, DELIVERY_COLUMNS, lock_channel, lock_outbox, same_channel};
use super::row::{self, ms};
use super::{PgStore, limit};
use crate::StoreResult;
use crate::outbox::{DeliveryAttempt, DeliveryNext, DeliveryRecord, DeliveryStatus};

/// When the dispatcher next has work.
pub(super) const SELECT_NEXT_DUE: &str = "SELECT next_attempt_at FROM deliveries \
     WHERE status = 'pending' AND head ORDER BY next_attempt_at LIMIT 1";

/// The claim statement. `$1` now, `$2` limit, `$3` owner, `$4` lease end.
pub(super) fn claim_sql() -> String {
    format!(
        "WITH picked AS ( \
           SELECT d.id, d.next_attempt_at FROM deliveries d \
           WHERE d.status = 'pending' AND d.head AND d.next_attempt_at <= $1 \
             AND (d.lease_until IS NULL OR d.lease_until <= $1) \
             AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending' AND {} AND p.id < d.id) \
           ORDER BY d.id LIMIT $2 \
           FOR UPDATE OF d SKIP LOCKED), \
         claimed AS ( \
           UPDATE deliveries d SET lease_owner = $3, lease_until = $4, next_attempt_at = $4 \
           FROM picked WHERE d.id = picked.id \
           RETURNING d.id, d.event_seq, d.webhook_id, d.status, d.attempts, \
             picked.next_attempt_at AS next_attempt_at, d.last_http_status, d.last_error, d.created_at, \
             d.delivered_at) \
         SELECT {DELIVERY_COLUMNS} FROM claimed d JOIN events e ON e.seq = d.event_seq ORDER BY d.id",
        same_channel("p", "d.webhook_id", "d.connection_id")
    )
}

/// Leases up to `page` claimable deliveries to `owner` — pending channel
/// heads, due, unleased or with an expired lease, with no earlier pending
/// delivery in their channel, earliest id first — moving their
/// `next_attempt_at` to `lease_until`; returns them as they were before. One
/// statement; rows another claimer holds are skipped (`SKIP LOCKED`).
pub(super) async fn claim(
    store: &PgStore,
    owner: &str,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
    page: u32,
) -> StoreResult<Vec<DeliveryRecord>> {
    let sql = claim_sql();
    sqlx::query(&sql)
        .bind(ms(now))
        .bind(limit(page))
        .bind(owner)
        .bind(ms(lease_until))
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(outbox::delivery)
        .collect()
}

/// Records an attempt; applies `next` only if `owner` holds the lease.
pub(super) async fn finish(
    store: &PgStore,
    id: i64,
    owner: &str,
    attempt: DeliveryAttempt,
    next: DeliveryNext,
) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    // A delivery's channel never changes: read it, lock it, then the row.
    let channel: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT webhook_id, connection_id FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((webhook_id, connection_id)) = channel else {
        tx.commit().await?;
        return Ok(());
    };
    lock_channel(&mut tx, webhook_id.as_deref(), connection_id.as_deref()).await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM deliveries WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        tx.commit().await?;
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, at, http_status, latency_ms, error) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(ms(attempt.at))
    .bind(row::http_status(attempt.http_status))
    .bind(row::big(attempt.latency_ms))
    .bind(&attempt.error)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE deliveries SET attempts = attempts + 1, last_http_status = $2, last_error = $3 WHERE id = $1")
        .bind(id)
        .bind(row::http_status(attempt.http_status))
        .bind(&attempt.error)
        .execute(&mut *tx)
        .await?;
    let (status, next_attempt_at, delivered_at) = match next {
        DeliveryNext::Delivered => (DeliveryStatus::Delivered, None, Some(attempt.at)),
        DeliveryNext::Retry { at } => (DeliveryStatus::Pending, Some(at), None),
        DeliveryNext::Failed => (DeliveryStatus::Failed, None, None),
    };
    let applied = sqlx::query(
        "UPDATE deliveries SET status = $3, head = CASE WHEN $3 = 'pending' THEN head ELSE FALSE END, \
           next_attempt_at = COALESCE($4, next_attempt_at), delivered_at = $5, lease_owner = NULL, \
           lease_until = NULL \
         WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(owner)
    .bind(status.as_str())
    .bind(row::opt_ms(next_attempt_at))
    .bind(row::opt_ms(delivered_at))
    .execute(&mut *tx)
    .await?;
    if applied.rows_affected() > 0 && status != DeliveryStatus::Pending {
        settle_head(&mut tx, webhook_id.as_deref(), connection_id.as_deref()).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Puts every delivery of an event (but those of deleted webhooks) back to
/// pending, due at `now`.
pub(super) async fn redeliver(store: &PgStore, event_id: &str, now: OffsetDateTime) -> StoreResult<u64> {
    const WHICH: &str = "event_seq = (SELECT seq FROM events WHERE id = $1) \
         AND (webhook_id IS NULL OR webhook_id IN (SELECT id FROM webhooks WHERE deleted_at IS NULL))";
    let mut tx = store.begin().await?;
    lock_outbox(&mut tx).await?;
    let mut channels: Vec<(Option<String>, Option<String>)> = sqlx::query_as(&format!(
        "SELECT webhook_id, connection_id FROM deliveries WHERE {WHICH}"
    ))
    .bind(event_id)
    .fetch_all(&mut *tx)
    .await?;
    channels.sort();
    for (webhook_id, connection_id) in &channels {
        lock_channel(&mut tx, webhook_id.as_deref(), connection_id.as_deref()).await?;
    }
    let reset = sqlx::query(&format!(
        "UPDATE deliveries SET status = 'pending', head = FALSE, next_attempt_at = $2, created_at = $2, \
           delivered_at = NULL, lease_owner = NULL, lease_until = NULL \
         WHERE {WHICH}"
    ))
    .bind(event_id)
    .bind(ms(now))
    .execute(&mut *tx)
    .await?;
    // One event has at most one delivery per channel.
    for (webhook_id, connection_id) in &channels {
        settle_head(&mut tx, webhook_id.as_deref(), connection_id.as_deref()).await?;
    }
    tx.commit().await?;
    Ok(reset.rows_affected())
}

/// Makes the lowest-id pending delivery of the channel its only head. The
/// caller holds the channel's lock.
pub(super) async fn settle_head(
    conn: &mut PgConnection,
    webhook_id: Option<&str>,
    connection_id: Option<&str>,
) -> StoreResult<()> {
    let first = format!(
        "(SELECT MIN(p.id) FROM deliveries p WHERE p.status = 'pending' AND {})",
        same_channel("p", "$1", "$2")
    );
    sqlx::query(&format!(
        "UPDATE deliveries d SET head = FALSE WHERE d.status = 'pending' AND {} AND d.head AND d.id > {first}",
        same_channel("d", "$1", "$2")
    ))
    .bind(webhook_id)
    .bind(connection_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "UPDATE deliveries SET head = TRUE WHERE id = {first} AND NOT head"
    ))
    .bind(webhook_id)
    .bind(connection_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The earliest `next_attempt_at` among pending channel heads.
pub(super) async fn next_due_at(store: &PgStore) -> StoreResult<Option<OffsetDateTime>> {
    Ok(sqlx::query_scalar(SELECT_NEXT_DUE).fetch_optional(&store.pool).await?)
}

/// How many deliveries are pending.
pub(super) async fn count_pending(store: &PgStore) -> StoreResult<u64> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        .fetch_one(&store.pool)
        .await?;
    Ok(count.max(0) as u64)
}

/// A delivery's attempts, oldest first.
pub(super) async fn list_attempts(store: &PgStore, delivery_id: i64) -> StoreResult<Vec<DeliveryAttempt>> {
    let rows = sqlx::query(
        "SELECT at, http_status, latency_ms, error FROM delivery_attempts WHERE delivery_id = $1 ORDER BY id",
    )
    .bind(delivery_id)
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|found| {
            let latency: i64 = found.try_get("latency_ms")?;
            Ok(DeliveryAttempt {
                at: found.try_get("at")?,
                http_status: row::opt_http_status(found, "http_status")?,
                latency_ms: latency.max(0) as u64,
                error: found.try_get("error")?,
            })
        })
        .collect()
}

//! Project webhooks on PostgreSQL: register, read, list, delete.
//!
//! A deleted webhook stays as a tombstone (`deleted_at` set) so that its
//! deliveries keep a valid `webhook_id`; it is invisible here, gets no new
//! deliveries, and retention removes it once no delivery names it. Holds the
//! secret only as sealed bytes; never validates the URL (the API does).

use sqlx::Row;
use sqlx::postgres::PgRow;
use thermos_core::seal::Sealed;
use time::OffsetDateTime;

use super::outbox::{lock_channel, lock_outbox};
use super::row::ms;
use super::{PgStore, conflict_or};
use crate::StoreResult;
use crate::outbox::WebhookRecord;

const COLUMNS: &str = "id, project, url, events, secret, created_at";

/// Registers a webhook.
pub(super) async fn insert(store: &PgStore, record: WebhookRecord) -> StoreResult<()> {
    sqlx::query(&format!(
        "INSERT INTO webhooks ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&record.id)
    .bind(&record.project)
    .bind(&record.url)
    .bind(&record.events)
    .bind(record.secret.as_bytes())
    .bind(ms(record.created_at))
    .execute(&store.pool)
    .await
    .map_err(conflict_or)?;
    Ok(())
}

/// One live webhook.
pub(super) async fn get(store: &PgStore, id: &str) -> StoreResult<Option<WebhookRecord>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?
    .as_ref()
    .map(webhook)
    .transpose()
}

/// Live webhooks of `project` (or all), in creation order.
pub(super) async fn list(store: &PgStore, project: Option<&str>) -> StoreResult<Vec<WebhookRecord>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE deleted_at IS NULL AND ($1::text IS NULL OR project = $1) \
         ORDER BY created_at, id"
    ))
    .bind(project)
    .fetch_all(&store.pool)
    .await?
    .iter()
    .map(webhook)
    .collect()
}

/// Tombstones the webhook and fails its pending deliveries. Holds the
/// outbox lock (no event write can fan out to it meanwhile) and the lock of
/// every channel it empties.
pub(super) async fn delete(store: &PgStore, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
    let mut tx = store.begin().await?;
    lock_outbox(&mut tx).await?;
    let done = sqlx::query("UPDATE webhooks SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() > 0 {
        let connections: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT DISTINCT connection_id FROM deliveries WHERE status = 'pending' AND webhook_id = $1 \
             ORDER BY connection_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        for connection_id in &connections {
            lock_channel(&mut tx, Some(id), connection_id.as_deref()).await?;
        }
        // Every pending delivery of every channel of this webhook goes, so no
        // channel is left without its head.
        sqlx::query(
            "UPDATE deliveries SET status = 'failed', head = FALSE, last_error = 'webhook deleted', \
               lease_owner = NULL, lease_until = NULL \
             WHERE status = 'pending' AND webhook_id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// Reads a `webhooks` row selected with [`COLUMNS`].
fn webhook(found: &PgRow) -> StoreResult<WebhookRecord> {
    Ok(WebhookRecord {
        id: found.try_get("id")?,
        project: found.try_get("project")?,
        url: found.try_get("url")?,
        events: found.try_get("events")?,
        secret: Sealed::from_bytes(found.try_get("secret")?),
        created_at: found.try_get("created_at")?,
    })
}

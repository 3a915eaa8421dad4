//! Project webhooks on SQLite: register, read, list, delete.
//!
//! A deleted webhook stays as a tombstone (`deleted_at` set) so that its
//! deliveries keep a valid `webhook_id`; it is invisible here, gets no new
//! deliveries, and retention removes it once no delivery names it. Holds the
//! secret only as sealed bytes; never validates the URL (the API does).

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use thermos_core::seal::Sealed;
use time::OffsetDateTime;

use super::{SqliteStore, conflict_or, row};
use crate::outbox::WebhookRecord;
use crate::{StoreError, StoreResult};

const COLUMNS: &str = "id, project, url, events, secret, created_at";

/// Registers a webhook.
pub(super) async fn insert(store: &SqliteStore, record: WebhookRecord) -> StoreResult<()> {
    let events = record
        .events
        .as_ref()
        .map(|kinds| serde_json::Value::from(kinds.clone()).to_string());
    sqlx::query(&format!(
        "INSERT INTO webhooks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))
    .bind(&record.id)
    .bind(&record.project)
    .bind(&record.url)
    .bind(events)
    .bind(record.secret.as_bytes())
    .bind(row::millis(record.created_at))
    .execute(&store.writer)
    .await
    .map_err(conflict_or)?;
    Ok(())
}

/// One live webhook.
pub(super) async fn get(store: &SqliteStore, id: &str) -> StoreResult<Option<WebhookRecord>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE id = ?1 AND deleted_at IS NULL"
    ))
    .bind(id)
    .fetch_optional(&store.reader)
    .await?
    .as_ref()
    .map(webhook)
    .transpose()
}

/// Live webhooks of `project` (or all), in creation order.
pub(super) async fn list(store: &SqliteStore, project: Option<&str>) -> StoreResult<Vec<WebhookRecord>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE deleted_at IS NULL AND (?1 IS NULL OR project = ?1) \
         ORDER BY created_at, id"
    ))
    .bind(project)
    .fetch_all(&store.reader)
    .await?
    .iter()
    .map(webhook)
    .collect()
}

/// Tombstones the webhook and fails its pending deliveries.
pub(super) async fn delete(store: &SqliteStore, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
    let mut tx = store.begin_write().await?;
    let done = sqlx::query("UPDATE webhooks SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL")
        .bind(id)
        .bind(row::millis(now))
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() > 0 {
        // Every pending delivery of every channel of this webhook goes, so no
        // channel is left without its head.
        sqlx::query(
            "UPDATE deliveries SET status = 'failed', head = 0, last_error = 'webhook deleted', \
               lease_owner = NULL, lease_until = NULL \
             WHERE status = 'pending' AND webhook_id = ?1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// Reads a `webhooks` row selected with [`COLUMNS`].
fn webhook(found: &SqliteRow) -> StoreResult<WebhookRecord> {
    let id: String = found.try_get("id")?;
    let events = found
        .try_get::<Option<String>, _>("events")?
        .map(|raw| {
            serde_json::from_str::<Vec<String>>(&raw)
                .map_err(|e| StoreError::Corrupt(format!("webhook {id}: events is not a JSON list: {e}")))
        })
        .transpose()?;
    Ok(WebhookRecord {
        project: found.try_get("project")?,
        url: found.try_get("url")?,
        events,
        secret: Sealed::from_bytes(found.try_get("secret")?),
        created_at: row::time_at(found, "created_at")?,
        id,
    })
}

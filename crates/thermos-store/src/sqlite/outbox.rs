//! Outbox events on SQLite: writing them with their fan-out, reading them
//! back, the consumers' cursors and retention.
//!
//! [`write_events`] is the one place an event is inserted: the connection
//! transitions, `insert_events` and `commit_alerts` all call it inside their
//! own write transaction, so an event and its deliveries commit with the
//! change they report or not at all. Never decides what an event says (the
//! engine does) and never sends anything (the dispatcher does).
//!
//! Read next: `delivery.rs` (claiming and finishing deliveries, the channel
//! order), `webhook.rs`, and `migrations/sqlite/0003_outbox.sql`.

use std::collections::HashMap;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::row;
use super::{SqliteStore, conflict_or, limit};
use crate::outbox::{
    ALERT_KIND, DeliveryRecord, DeliveryStatus, EventFilter, EventRecord, EventWithDeliveries, NewEvent,
};
use crate::{StoreError, StoreResult};

/// The columns of `events e` that make an [`EventRecord`], aliased so they
/// can sit beside a delivery's.
pub(super) const EVENT_COLUMNS: &str = "e.seq AS event_seq, e.id AS event_id, e.kind AS event_kind, \
     e.project AS event_project, e.connection_id AS event_connection_id, e.provider AS event_provider, \
     e.data AS event_data, e.at AS event_at";

/// The columns of `deliveries d JOIN events e` that make a [`DeliveryRecord`].
pub(super) const DELIVERY_COLUMNS: &str = "d.id, d.webhook_id, d.status, d.attempts, d.next_attempt_at, \
     d.last_http_status, d.last_error, d.created_at, d.delivered_at, e.seq AS event_seq, e.id AS event_id, \
     e.kind AS event_kind, e.project AS event_project, e.connection_id AS event_connection_id, \
     e.provider AS event_provider, e.data AS event_data, e.at AS event_at";

/// A new delivery is the head of its channel when no other delivery of the
/// channel is pending. `?1` event seq, `?2` connection id, `?3` event time;
/// `w.id` names the webhook (NULL for the operators' channel).
const NEW_DELIVERY: &str = "INSERT INTO deliveries (event_seq, webhook_id, connection_id, status, head, attempts, \
       next_attempt_at, created_at) \
     SELECT ?1, w.id, ?2, 'pending', NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending' \
       AND p.webhook_id IS w.id AND p.connection_id IS ?2), 0, ?3, ?3";

/// Inserts `events` in order, each with its deliveries, on `conn` (inside
/// the caller's write transaction).
pub(super) async fn write_events(conn: &mut SqliteConnection, events: &[NewEvent]) -> StoreResult<()> {
    for event in events {
        let data = serde_json::to_string(&event.data)
            .map_err(|e| StoreError::Corrupt(format!("event {}: data cannot be serialised: {e}", event.id)))?;
        let connection_id = event.connection_id.map(|id| id.to_string());
        let at = row::millis(event.at);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (id, kind, project, connection_id, provider, data, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq",
        )
        .bind(&event.id)
        .bind(&event.kind)
        .bind(&event.project)
        .bind(&connection_id)
        .bind(&event.provider)
        .bind(data)
        .bind(at)
        .fetch_one(&mut *conn)
        .await
        .map_err(conflict_or)?;
        if event.kind == ALERT_KIND {
            sqlx::query(&format!("{NEW_DELIVERY} FROM (SELECT NULL AS id) w"))
                .bind(seq)
                .bind(&connection_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        } else if let Some(project) = &event.project {
            sqlx::query(&format!(
                "{NEW_DELIVERY} FROM webhooks w WHERE w.project = ?4 AND w.deleted_at IS NULL \
                   AND (w.events IS NULL OR EXISTS (SELECT 1 FROM json_each(w.events) WHERE value = ?5)) \
                 ORDER BY w.created_at, w.id"
            ))
            .bind(seq)
            .bind(&connection_id)
            .bind(at)
            .bind(project)
            .bind(&event.kind)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Standalone events, in one transaction.
pub(super) async fn insert_events(store: &SqliteStore, events: Vec<NewEvent>) -> StoreResult<()> {
    let mut tx = store.begin_write().await?;
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(())
}

/// Alerts and the aggregator's cursor, in one transaction.
pub(super) async fn commit_alerts(
    store: &SqliteStore,
    alerts: Vec<NewEvent>,
    cursor_name: &str,
    cursor: i64,
) -> StoreResult<()> {
    let mut tx = store.begin_write().await?;
    write_events(&mut tx, &alerts).await?;
    sqlx::query(
        "INSERT INTO outbox_cursors (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(cursor_name)
    .bind(cursor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The named cursor; 0 when unset.
pub(super) async fn get_cursor(store: &SqliteStore, name: &str) -> StoreResult<i64> {
    let value: Option<i64> = sqlx::query_scalar("SELECT value FROM outbox_cursors WHERE name = ?1")
        .bind(name)
        .fetch_optional(&store.reader)
        .await?;
    Ok(value.unwrap_or(0))
}

/// Events after `seq`, ascending.
pub(super) async fn events_after(store: &SqliteStore, seq: i64, page: u32) -> StoreResult<Vec<EventRecord>> {
    sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2"
    ))
    .bind(seq)
    .bind(limit(page))
    .fetch_all(&store.reader)
    .await?
    .iter()
    .map(event)
    .collect()
}

/// A page of events, newest first, with their deliveries. Both reads see
/// one snapshot (a read transaction).
pub(super) async fn list_events(
    store: &SqliteStore,
    filter: &EventFilter,
    before_seq: Option<i64>,
    page: u32,
) -> StoreResult<Vec<EventWithDeliveries>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e \
         WHERE e.seq < ?1 AND (?2 IS NULL OR e.project = ?2) AND (?3 IS NULL OR e.kind = ?3) \
           AND (?4 IS NULL OR e.connection_id = ?4) \
           AND (?5 IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.status = ?5)) \
         ORDER BY e.seq DESC LIMIT ?6"
    );
    let mut tx = store.reader.begin().await?;
    let events = sqlx::query(&sql)
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(filter.project.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.connection_id.map(|id| id.to_string()))
        .bind(filter.delivery_status.map(DeliveryStatus::as_str))
        .bind(limit(page))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(event)
        .collect::<StoreResult<Vec<_>>>()?;
    let with = with_deliveries(&mut tx, events).await?;
    tx.commit().await?;
    Ok(with)
}

/// One event by id, with its deliveries.
pub(super) async fn get_event(store: &SqliteStore, id: &str) -> StoreResult<Option<EventWithDeliveries>> {
    let mut tx = store.reader.begin().await?;
    let found = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = ?1"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(event)
        .transpose()?;
    let with = with_deliveries(&mut tx, found.into_iter().collect()).await?;
    tx.commit().await?;
    Ok(with.into_iter().next())
}

/// Attaches each event's deliveries (by id), keeping the events' order.
async fn with_deliveries(
    conn: &mut SqliteConnection,
    events: Vec<EventRecord>,
) -> StoreResult<Vec<EventWithDeliveries>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let seqs = serde_json::Value::from(events.iter().map(|e| e.seq).collect::<Vec<_>>()).to_string();
    let mut by_event: HashMap<i64, Vec<DeliveryRecord>> = HashMap::new();
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.event_seq IN (SELECT value FROM json_each(?1)) ORDER BY d.id"
    ))
    .bind(seqs)
    .fetch_all(&mut *conn)
    .await?;
    for found in &rows {
        let delivery = delivery(found)?;
        by_event.entry(delivery.event.seq).or_default().push(delivery);
    }
    Ok(events
        .into_iter()
        .map(|event| EventWithDeliveries {
            deliveries: by_event.remove(&event.seq).unwrap_or_default(),
            event,
        })
        .collect())
}

/// Rows deleted per retention transaction, so that a large prune never
/// holds the write lock for long.
const PRUNE_BATCH: i64 = 2000;

/// Retention, in batches: finished deliveries (and attempts), then events
/// with no delivery left, then webhook tombstones no delivery names.
pub(super) async fn prune(store: &SqliteStore, older_than: time::OffsetDateTime) -> StoreResult<u64> {
    const FINISHED: &str = "SELECT id FROM deliveries WHERE status IN ('delivered', 'failed') AND created_at < ?1 \
         ORDER BY created_at LIMIT ?2";
    let steps = [
        vec![
            format!("DELETE FROM delivery_attempts WHERE delivery_id IN ({FINISHED})"),
            format!("DELETE FROM deliveries WHERE id IN ({FINISHED})"),
        ],
        vec![
            "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e WHERE e.at < ?1 \
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq) LIMIT ?2)"
                .to_owned(),
        ],
        vec![
            "DELETE FROM webhooks WHERE id IN (SELECT w.id FROM webhooks w WHERE w.deleted_at IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.webhook_id = w.id) LIMIT ?2)"
                .to_owned(),
        ],
    ];
    let cut = row::millis(older_than);
    let mut deleted = 0_u64;
    for statements in &steps {
        loop {
            let mut tx = store.begin_write().await?;
            let mut last = 0;
            for sql in statements {
                last = sqlx::query(sql)
                    .bind(cut)
                    .bind(PRUNE_BATCH)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                deleted += last;
            }
            tx.commit().await?;
            // The last statement of a step deletes the batch's main rows.
            if last < PRUNE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Reads an event selected with [`EVENT_COLUMNS`].
pub(super) fn event(row: &SqliteRow) -> StoreResult<EventRecord> {
    let id: String = row.try_get("event_id")?;
    let data_raw: String = row.try_get("event_data")?;
    let data = serde_json::from_str(&data_raw)
        .map_err(|e| StoreError::Corrupt(format!("event {id}: data is not JSON: {e}")))?;
    let connection_id = match row.try_get::<Option<String>, _>("event_connection_id")? {
        None => None,
        Some(_) => Some(row::connection_id(row, "event_connection_id")?),
    };
    Ok(EventRecord {
        seq: row.try_get("event_seq")?,
        event: NewEvent {
            kind: row.try_get("event_kind")?,
            project: row.try_get("event_project")?,
            connection_id,
            provider: row.try_get("event_provider")?,
            data,
            at: row::time_at(row, "event_at")?,
            id,
        },
    })
}

/// Reads a delivery selected with [`DELIVERY_COLUMNS`].
pub(super) fn delivery(row: &SqliteRow) -> StoreResult<DeliveryRecord> {
    let id: i64 = row.try_get("id")?;
    let status_raw: String = row.try_get("status")?;
    let status = DeliveryStatus::parse(&status_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("delivery {id}: unknown status {status_raw:?}")))?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(DeliveryRecord {
        event: event(row)?,
        webhook_id: row.try_get("webhook_id")?,
        status,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt(format!("delivery {id}: attempts {attempts} out of range")))?,
        next_attempt_at: row::time_at(row, "next_attempt_at")?,
        last_http_status: row::opt_http_status(row, "last_http_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row::time_at(row, "created_at")?,
        delivered_at: row::opt_time_at(row, "delivered_at")?,
        id,
    })
}

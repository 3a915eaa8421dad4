//! Outbox events on PostgreSQL: writing them with their fan-out, reading
//! them back, the consumers' cursors and retention.
//!
//! [`write_events`] is the one place an event is inserted: the connection
//! transitions, `insert_events`, `commit_alerts` and `finish_run` all call it
//! inside their own transaction, so an event and its deliveries commit with
//! the change they report or not at all.
//!
//! Two transaction-scoped advisory locks (keyed by the schema, so stores in
//! different schemas of one database do not contend) give the outbox the
//! order SQLite gets from its single writer:
//! - the *outbox lock*, taken by every transaction that writes events (held
//!   to its commit) and by the rare multi-channel changes (redeliver, delete
//!   a webhook). Event `seq`s and delivery ids are therefore handed out in
//!   commit order: the aggregator's cursor over `seq` never skips an event
//!   that committed late, and a channel's deliveries are ordered by id as
//!   they were written.
//! - a *channel lock* per (webhook, connection), taken before a delivery of
//!   the channel is inserted or leaves or re-enters `pending`, so that the
//!   channel's `head` is always computed from what committed before.
//!   Lock order: outbox lock, then channel locks, then rows; a transaction
//!   holding several channel locks always holds the outbox lock.
//!
//! Never decides what an event says (the engine does) and never sends
//! anything (the dispatcher does).

use std::collections::HashMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use super::row::{self, ms};
use super::{PgStore, conflict_or, limit};
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

/// "Same channel as `$w`, `$c`", spelt as the expression index
/// `deliveries_channel` is built on (NULL as '', never a real id).
pub(super) fn same_channel(alias: &str, webhook: &str, connection: &str) -> String {
    format!(
        "COALESCE({alias}.webhook_id, '') = COALESCE({webhook}, '') \
         AND COALESCE({alias}.connection_id, '') = COALESCE({connection}, '')"
    )
}

/// Takes the outbox lock until the end of the transaction.
pub(super) async fn lock_outbox(conn: &mut PgConnection) -> StoreResult<()> {
    // 0x5448_4f42: "THOB".
    sqlx::query("SELECT pg_advisory_xact_lock(1414025026, hashtext(current_schema()))")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes the lock of the channel (`webhook_id`, `connection_id`) until the
/// end of the transaction.
pub(super) async fn lock_channel(
    conn: &mut PgConnection,
    webhook_id: Option<&str>,
    connection_id: Option<&str>,
) -> StoreResult<()> {
    // 0x5448_4348: "THCH". Two channels with one hash only wait for each other.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(1414021960, \
           hashtext(current_schema() || '/' || COALESCE($1, '') || '/' || COALESCE($2, '')))",
    )
    .bind(webhook_id)
    .bind(connection_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Inserts `events` in order, each with its deliveries, on `conn` (inside
/// the caller's transaction, which then holds the outbox lock to its end).
pub(super) async fn write_events(conn: &mut PgConnection, events: &[NewEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    lock_outbox(conn).await?;
    let new_delivery = format!(
        "INSERT INTO deliveries (event_seq, webhook_id, connection_id, status, head, attempts, next_attempt_at, \
           created_at) \
         VALUES ($1, $2, $3, 'pending', \
           NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.status = 'pending' AND {}), 0, $4, $4)",
        same_channel("p", "$2", "$3")
    );
    for event in events {
        let connection_id = event.connection_id.map(|id| id.to_string());
        let at = ms(event.at);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (id, kind, project, connection_id, provider, data, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
        )
        .bind(&event.id)
        .bind(&event.kind)
        .bind(&event.project)
        .bind(&connection_id)
        .bind(&event.provider)
        .bind(&event.data)
        .bind(at)
        .fetch_one(&mut *conn)
        .await
        .map_err(conflict_or)?;
        let hooks: Vec<Option<String>> = if event.kind == ALERT_KIND {
            vec![None]
        } else if let Some(project) = &event.project {
            sqlx::query_scalar(
                "SELECT id FROM webhooks WHERE project = $1 AND deleted_at IS NULL \
                   AND (events IS NULL OR $2 = ANY (events)) \
                 ORDER BY created_at, id",
            )
            .bind(project)
            .bind(&event.kind)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(Some)
            .collect()
        } else {
            Vec::new()
        };
        for hook in &hooks {
            lock_channel(conn, hook.as_deref(), connection_id.as_deref()).await?;
            sqlx::query(&new_delivery)
                .bind(seq)
                .bind(hook)
                .bind(&connection_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Standalone events, in one transaction.
pub(super) async fn insert_events(store: &PgStore, events: Vec<NewEvent>) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(())
}

/// Alerts and the aggregator's cursor, in one transaction.
pub(super) async fn commit_alerts(
    store: &PgStore,
    alerts: Vec<NewEvent>,
    cursor_name: &str,
    cursor: i64,
) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    write_events(&mut tx, &alerts).await?;
    sqlx::query(
        "INSERT INTO outbox_cursors (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(cursor_name)
    .bind(cursor)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The named cursor; 0 when unset.
pub(super) async fn get_cursor(store: &PgStore, name: &str) -> StoreResult<i64> {
    let value: Option<i64> = sqlx::query_scalar("SELECT value FROM outbox_cursors WHERE name = $1")
        .bind(name)
        .fetch_optional(&store.pool)
        .await?;
    Ok(value.unwrap_or(0))
}

/// Events after `seq`, ascending.
pub(super) async fn events_after(store: &PgStore, seq: i64, page: u32) -> StoreResult<Vec<EventRecord>> {
    sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.seq > $1 ORDER BY e.seq LIMIT $2"
    ))
    .bind(seq)
    .bind(limit(page))
    .fetch_all(&store.pool)
    .await?
    .iter()
    .map(event)
    .collect()
}

/// Starts a read-only transaction whose statements all see one snapshot.
async fn begin_snapshot(store: &PgStore) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
    Ok(store
        .pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?)
}

/// A page of events, newest first, with their deliveries. Both reads see
/// one snapshot.
pub(super) async fn list_events(
    store: &PgStore,
    filter: &EventFilter,
    before_seq: Option<i64>,
    page: u32,
) -> StoreResult<Vec<EventWithDeliveries>> {
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.seq < "));
    query.push_bind(before_seq.unwrap_or(i64::MAX));
    if let Some(project) = &filter.project {
        query.push(" AND e.project = ").push_bind(project);
    }
    if let Some(kind) = &filter.kind {
        query.push(" AND e.kind = ").push_bind(kind);
    }
    if let Some(id) = filter.connection_id {
        query.push(" AND e.connection_id = ").push_bind(id.to_string());
    }
    if let Some(status) = filter.delivery_status {
        query
            .push(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.status = ")
            .push_bind(status.as_str())
            .push(")");
    }
    query.push(" ORDER BY e.seq DESC LIMIT ").push_bind(limit(page));
    let mut tx = begin_snapshot(store).await?;
    let events = query
        .build()
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
pub(super) async fn get_event(store: &PgStore, id: &str) -> StoreResult<Option<EventWithDeliveries>> {
    let mut tx = begin_snapshot(store).await?;
    let found = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1"))
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
async fn with_deliveries(conn: &mut PgConnection, events: Vec<EventRecord>) -> StoreResult<Vec<EventWithDeliveries>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let mut by_event: HashMap<i64, Vec<DeliveryRecord>> = HashMap::new();
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.event_seq = ANY ($1) ORDER BY d.id"
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

/// Rows deleted per retention statement, so that a large prune never holds
/// many locks for long.
const PRUNE_BATCH: i64 = 2000;

/// Retention, in batches: finished deliveries (and attempts), then events
/// with no delivery left, then webhook tombstones no delivery names. Each
/// batch is one statement; rows another transaction holds are left for the
/// next prune.
pub(super) async fn prune(store: &PgStore, older_than: time::OffsetDateTime) -> StoreResult<u64> {
    const DELIVERIES: &str = "WITH batch AS ( \
           SELECT id FROM deliveries WHERE status IN ('delivered', 'failed') AND created_at < $1 \
           ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
         gone_attempts AS (DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM batch) RETURNING 1), \
         gone AS (DELETE FROM deliveries WHERE id IN (SELECT id FROM batch) RETURNING 1) \
         SELECT (SELECT COUNT(*) FROM gone_attempts), (SELECT COUNT(*) FROM gone)";
    const EVENTS: &str = "WITH gone AS (DELETE FROM events WHERE seq IN ( \
           SELECT e.seq FROM events e WHERE e.at < $1 \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq) \
           LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING 1) \
         SELECT 0::BIGINT, COUNT(*) FROM gone";
    const WEBHOOKS: &str = "WITH gone AS (DELETE FROM webhooks WHERE id IN ( \
           SELECT w.id FROM webhooks w WHERE w.deleted_at IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.webhook_id = w.id) \
           LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING 1) \
         SELECT 0::BIGINT, COUNT(*) FROM gone";
    let cut = ms(older_than);
    let mut deleted = 0_u64;
    for sql in [DELIVERIES, EVENTS, WEBHOOKS] {
        loop {
            let (extra, main): (i64, i64) = sqlx::query_as(sql)
                .bind(cut)
                .bind(PRUNE_BATCH)
                .fetch_one(&store.pool)
                .await?;
            deleted += (extra.max(0) + main.max(0)) as u64;
            // Each statement counts the batch's main rows last.
            if main < PRUNE_BATCH {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Reads an event selected with [`EVENT_COLUMNS`].
pub(super) fn event(row: &PgRow) -> StoreResult<EventRecord> {
    let connection_id = match row.try_get::<Option<String>, _>("event_connection_id")? {
        None => None,
        Some(_) => Some(row::connection_id(row, "event_connection_id")?),
    };
    Ok(EventRecord {
        seq: row.try_get("event_seq")?,
        event: NewEvent {
            id: row.try_get("event_id")?,
            kind: row.try_get("event_kind")?,
            project: row.try_get("event_project")?,
            connection_id,
            provider: row.try_get("event_provider")?,
            data: row.try_get("event_data")?,
            at: row.try_get("event_at")?,
        },
    })
}

/// Reads a delivery selected with [`DELIVERY_COLUMNS`].
pub(super) fn delivery(row: &PgRow) -> StoreResult<DeliveryRecord> {
    let id: i64 = row.try_get("id")?;
    let status_raw: String = row.try_get("status")?;
    let status = DeliveryStatus::parse(&status_raw)
        .ok_or_else(|| StoreError::Corrupt(format!("delivery {id}: unknown status {status_raw:?}")))?;
    Ok(DeliveryRecord {
        event: event(row)?,
        webhook_id: row.try_get("webhook_id")?,
        status,
        attempts: row::small(row, "attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_http_status: row::opt_http_status(row, "last_http_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        id,
    })
}

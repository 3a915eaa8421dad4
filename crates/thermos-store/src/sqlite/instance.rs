//! Live instances on SQLite: heartbeats, the live set, removal.
//!
//! One writer serialises the beats, so an upsert and the pruning of dead
//! rows are simply one `BEGIN IMMEDIATE` transaction. Never decides which
//! instances count as live (the caller gives the cutoff) and never reads
//! the clock.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::{SqliteStore, row};
use crate::StoreResult;
use crate::instance::{INSTANCE_RETENTION, InstanceBeat, InstanceRecord};

const COLUMNS: &str = "name, started_at, heartbeat_at, engine_enabled, version";

/// Inserts or updates `beat.name`'s row (heartbeat at `now`, `started_at`
/// kept; a beat older than the stored heartbeat changes nothing), then
/// deletes rows whose heartbeat is older than [`INSTANCE_RETENTION`], in
/// one transaction.
pub(super) async fn beat(store: &SqliteStore, beat: InstanceBeat, now: OffsetDateTime) -> StoreResult<()> {
    let mut tx = store.begin_write().await?;
    sqlx::query(
        "INSERT INTO instances (name, started_at, heartbeat_at, engine_enabled, version) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, \
         engine_enabled = excluded.engine_enabled, version = excluded.version \
         WHERE instances.heartbeat_at <= excluded.heartbeat_at",
    )
    .bind(&beat.name)
    .bind(row::millis(beat.started_at))
    .bind(row::millis(now))
    .bind(beat.engine_enabled)
    .bind(&beat.version)
    .execute(&mut *tx)
    .await?;
    // Near the earliest representable time nothing can be that old.
    if let Some(cutoff) = now.checked_sub(INSTANCE_RETENTION) {
        sqlx::query("DELETE FROM instances WHERE heartbeat_at < ?1")
            .bind(row::millis(cutoff))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The instances whose heartbeat is later than `beat_after`, by name.
pub(super) async fn live(store: &SqliteStore, beat_after: OffsetDateTime) -> StoreResult<Vec<InstanceRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM instances WHERE heartbeat_at > ?1 ORDER BY name");
    sqlx::query(&sql)
        .bind(row::millis(beat_after))
        .fetch_all(&store.reader)
        .await?
        .iter()
        .map(instance)
        .collect()
}

/// Deletes `name`'s row; false if there was none.
pub(super) async fn remove(store: &SqliteStore, name: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM instances WHERE name = ?1")
        .bind(name)
        .execute(&store.writer)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Reads an `instances` row selected with [`COLUMNS`].
fn instance(found: &SqliteRow) -> StoreResult<InstanceRecord> {
    Ok(InstanceRecord {
        name: found.try_get("name")?,
        started_at: row::from_millis(found.try_get("started_at")?, "instances.started_at")?,
        heartbeat_at: row::from_millis(found.try_get("heartbeat_at")?, "instances.heartbeat_at")?,
        engine_enabled: found.try_get::<i64, _>("engine_enabled")? != 0,
        version: found.try_get("version")?,
    })
}

//! Live instances on PostgreSQL: heartbeats, the live set, removal.
//!
//! Many instances beat at once, so a beat is written to never wait on a
//! transaction that could wait on it: the upsert (`INSERT … ON CONFLICT DO
//! UPDATE`, atomic against concurrent inserts and deletes of the same name)
//! comes first, then the pruning deletes dead rows with `FOR UPDATE SKIP
//! LOCKED` — a row another transaction holds is being beaten back to life or
//! deleted by someone else, and is left alone. Never decides which instances
//! count as live (the caller gives the cutoff) and never reads the clock.

use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::PgStore;
use super::row::ms;
use crate::StoreResult;
use crate::instance::{INSTANCE_RETENTION, InstanceBeat, InstanceRecord};

const COLUMNS: &str = "name, started_at, heartbeat_at, engine_enabled, version";

/// Inserts or updates `beat.name`'s row (heartbeat at `now`, `started_at`
/// kept; a beat older than the stored heartbeat changes nothing), then
/// deletes rows whose heartbeat is older than [`INSTANCE_RETENTION`], in
/// one transaction.
pub(super) async fn beat(store: &PgStore, beat: InstanceBeat, now: OffsetDateTime) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    sqlx::query(
        "INSERT INTO instances (name, started_at, heartbeat_at, engine_enabled, version) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, \
         engine_enabled = EXCLUDED.engine_enabled, version = EXCLUDED.version \
         WHERE instances.heartbeat_at <= EXCLUDED.heartbeat_at",
    )
    .bind(&beat.name)
    .bind(ms(beat.started_at))
    .bind(ms(now))
    .bind(beat.engine_enabled)
    .bind(&beat.version)
    .execute(&mut *tx)
    .await?;
    // Near the earliest representable time nothing can be that old.
    if let Some(cutoff) = now.checked_sub(INSTANCE_RETENTION) {
        sqlx::query(
            "DELETE FROM instances WHERE name IN \
             (SELECT name FROM instances WHERE heartbeat_at < $1 FOR UPDATE SKIP LOCKED)",
        )
        .bind(ms(cutoff))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The instances whose heartbeat is later than `beat_after`, by name.
pub(super) async fn live(store: &PgStore, beat_after: OffsetDateTime) -> StoreResult<Vec<InstanceRecord>> {
    let sql = format!("SELECT {COLUMNS} FROM instances WHERE heartbeat_at > $1 ORDER BY name");
    sqlx::query(&sql)
        .bind(ms(beat_after))
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(instance)
        .collect()
}

/// Deletes `name`'s row; false if there was none.
pub(super) async fn remove(store: &PgStore, name: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM instances WHERE name = $1")
        .bind(name)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Reads an `instances` row selected with [`COLUMNS`].
fn instance(found: &PgRow) -> StoreResult<InstanceRecord> {
    Ok(InstanceRecord {
        name: found.try_get("name")?,
        started_at: found.try_get("started_at")?,
        heartbeat_at: found.try_get("heartbeat_at")?,
        engine_enabled: found.try_get("engine_enabled")?,
        version: found.try_get("version")?,
    })
}

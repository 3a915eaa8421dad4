//! Project API keys on SQLite: insert, look up by public id, list, revoke.
//!
//! Stores only the hash of a key, never the key itself, and never compares
//! secrets (the caller does, in constant time). Scopes are one
//! space-separated text column; the store does not interpret them.

use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::{SqliteStore, conflict_or, row};
use crate::{ApiKeyRecord, StoreResult};

const COLUMNS: &str = "key_id, project, secret_hash, created_at, scopes, expires_at, revoked_at";

/// Inserts a key; a duplicate `key_id` is a conflict.
pub(super) async fn insert(store: &SqliteStore, key: ApiKeyRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_keys (key_id, project, secret_hash, created_at, scopes, expires_at, revoked_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(&key.key_id)
    .bind(&key.project)
    .bind(&key.secret_hash)
    .bind(row::millis(key.created_at))
    .bind(key.scopes.join(" "))
    .bind(row::opt_millis(key.expires_at))
    .bind(row::opt_millis(key.revoked_at))
    .execute(&store.writer)
    .await
    .map_err(conflict_or)?;
    Ok(())
}

/// The key with this public id, if any.
pub(super) async fn find(store: &SqliteStore, key_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = ?1"))
        .bind(key_id)
        .fetch_optional(&store.reader)
        .await?
        .as_ref()
        .map(record)
        .transpose()
}

/// Every key of `project` (or of all), oldest first.
pub(super) async fn list(store: &SqliteStore, project: Option<&str>) -> StoreResult<Vec<ApiKeyRecord>> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE ?1 IS NULL OR project = ?1 ORDER BY created_at, key_id"
    ))
    .bind(project)
    .fetch_all(&store.reader)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// Sets `revoked_at` unless already set; the key as it now stands.
pub(super) async fn revoke(
    store: &SqliteStore,
    key_id: &str,
    now: OffsetDateTime,
) -> StoreResult<Option<ApiKeyRecord>> {
    sqlx::query(&format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE key_id = ?1 RETURNING {COLUMNS}"
    ))
    .bind(key_id)
    .bind(row::millis(now))
    .fetch_optional(&store.writer)
    .await?
    .as_ref()
    .map(record)
    .transpose()
}

/// Reads an `api_keys` row.
fn record(r: &SqliteRow) -> StoreResult<ApiKeyRecord> {
    let scopes: String = r.try_get("scopes")?;
    Ok(ApiKeyRecord {
        key_id: r.try_get("key_id")?,
        project: r.try_get("project")?,
        secret_hash: r.try_get("secret_hash")?,
        created_at: row::time_at(r, "created_at")?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        expires_at: row::opt_time_at(r, "expires_at")?,
        revoked_at: row::opt_time_at(r, "revoked_at")?,
    })
}

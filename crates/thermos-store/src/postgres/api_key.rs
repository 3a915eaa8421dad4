//! Project API keys on PostgreSQL: insert and look up by public id.
//!
//! Stores only the hash of a key, never the key itself, and never compares
//! secrets (the caller does, in constant time).

use super::{PgStore, conflict_or, row};
use crate::{ApiKeyRecord, StoreResult};

/// Inserts a key; a duplicate `key_id` is a conflict.
pub(super) async fn insert(store: &PgStore, key: ApiKeyRecord) -> StoreResult<()> {
    sqlx::query("INSERT INTO api_keys (key_id, project, secret_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&key.key_id)
        .bind(&key.project)
        .bind(&key.secret_hash)
        .bind(row::ms(key.created_at))
        .execute(&store.pool)
        .await
        .map_err(conflict_or)?;
    Ok(())
}

/// The key with this public id, if any.
pub(super) async fn find(store: &PgStore, key_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
    sqlx::query("SELECT key_id, project, secret_hash, created_at FROM api_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_optional(&store.pool)
        .await?
        .as_ref()
        .map(row::api_key)
        .transpose()
}

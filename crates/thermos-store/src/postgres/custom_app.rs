//! Custom apps on PostgreSQL: a project's own OAuth client per provider.
//!
//! Holds the client secret only as sealed bytes; never opens it, never
//! checks that the provider is configured (the caller does), and never reads
//! the clock (`created_at`/`updated_at` come with the record).

use sqlx::Row;
use sqlx::postgres::PgRow;
use thermos_core::seal::Sealed;

use super::{PgStore, row};
use crate::{CustomAppRecord, StoreResult};

const COLUMNS: &str = "project, provider, client_id, client_secret, auth_method, created_at, updated_at";

/// Inserts the app, or replaces the credentials of the one registered for
/// (project, provider), keeping its `created_at`. One statement: two
/// instances registering at once both succeed, the later one wins.
pub(super) async fn upsert(store: &PgStore, record: CustomAppRecord) -> StoreResult<CustomAppRecord> {
    let sql = format!(
        "INSERT INTO custom_apps ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (project, provider) DO UPDATE SET client_id = EXCLUDED.client_id, \
         client_secret = EXCLUDED.client_secret, auth_method = EXCLUDED.auth_method, \
         updated_at = EXCLUDED.updated_at \
         RETURNING {COLUMNS}"
    );
    let stored = sqlx::query(&sql)
        .bind(&record.project)
        .bind(&record.provider)
        .bind(&record.client_id)
        .bind(record.client_secret.as_ref().map(Sealed::as_bytes))
        .bind(&record.auth_method)
        .bind(row::ms(record.created_at))
        .bind(row::ms(record.updated_at))
        .fetch_one(&store.pool)
        .await?;
    custom_app(&stored)
}

/// The apps of `project`, or of every project, by project then provider.
pub(super) async fn list(store: &PgStore, project: Option<&str>) -> StoreResult<Vec<CustomAppRecord>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM custom_apps WHERE ($1::text IS NULL OR project = $1) ORDER BY project, provider"
    );
    sqlx::query(&sql)
        .bind(project)
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(custom_app)
        .collect()
}

/// Deletes `project`'s app for `provider`; false if there was none.
pub(super) async fn delete(store: &PgStore, project: &str, provider: &str) -> StoreResult<bool> {
    let done = sqlx::query("DELETE FROM custom_apps WHERE project = $1 AND provider = $2")
        .bind(project)
        .bind(provider)
        .execute(&store.pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Reads a `custom_apps` row selected with [`COLUMNS`].
fn custom_app(row: &PgRow) -> StoreResult<CustomAppRecord> {
    Ok(CustomAppRecord {
        project: row.try_get("project")?,
        provider: row.try_get("provider")?,
        client_id: row.try_get("client_id")?,
        client_secret: row
            .try_get::<Option<Vec<u8>>, _>("client_secret")?
            .map(Sealed::from_bytes),
        auth_method: row.try_get("auth_method")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

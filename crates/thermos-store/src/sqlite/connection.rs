//! Connection rows on SQLite: insert, read, list, count, and the operator's
//! and user's transitions (`replace_tokens`, `reset`, `delete`).
//!
//! Never touches the schedule's leases except to drop them when the user
//! brings new tokens; refresh results are written by `refresh.rs`.

use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use time::OffsetDateTime;

use super::outbox::write_events;
use super::row::{self, CONNECTION_COLUMNS};
use super::{SqliteStore, conflict_or, limit};
use crate::outbox::NewEvent;
use crate::{
    ConnectionFilter, ConnectionRecord, NewConnection, StatusCount, StoreError, StoreResult, TokenUpdate, batch,
};

/// Rows per statement of a batch insert: 17 bound values each stay well
/// under SQLite's limit of 32,766 bound parameters.
const ROWS_PER_INSERT: usize = 1000;

/// Inserts an `active` connection at version 1, with its events.
pub(super) async fn insert(
    store: &SqliteStore,
    new: NewConnection,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<ConnectionRecord> {
    let sql = insert_one_sql("");
    let mut tx = store.begin_write().await?;
    let inserted = bind_new(sqlx::query(&sql), &new, row::millis(now))?
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_or)?;
    let record = row::connection(&inserted)?;
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(record)
}

/// Inserts every connection of `new` (`active`, version 1) and `events` in
/// one transaction, [`ROWS_PER_INSERT`] rows a statement; all or nothing.
pub(super) async fn insert_many(
    store: &SqliteStore,
    new: Vec<NewConnection>,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<()> {
    if let Some(repeat) = batch::first_repeat(&new) {
        return Err(repeat);
    }
    let now = row::millis(now);
    let mut tx = store.begin_write().await?;
    for (number, chunk) in new.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = insert_many_sql(chunk.len());
        let mut query = sqlx::query_scalar::<_, String>(&sql);
        for new in chunk {
            let metadata = serde_json::to_string(&new.metadata)
                .map_err(|e| StoreError::Corrupt(format!("metadata cannot be serialised: {e}")))?;
            query = query
                .bind(new.id.to_string())
                .bind(new.project.as_str())
                .bind(new.provider.as_str())
                .bind(new.external_id.as_str())
                .bind(new.access_token.as_bytes())
                .bind(new.refresh_token.as_ref().map(|t| t.as_bytes()))
                .bind(new.token_type.as_str())
                .bind(new.scope.as_deref())
                .bind(row::millis(new.issued_at))
                .bind(row::millis(new.expires_at))
                .bind(metadata)
                .bind(row::millis(new.next_refresh_at))
                .bind(now)
                .bind(now)
                .bind(new.grant.grant_type.as_str())
                .bind(grant_params(new)?)
                .bind(row::opt_millis(new.refresh_token_expires_at));
        }
        let inserted = query.fetch_all(&mut *tx).await?;
        // Dropping the transaction rolls it back.
        if let Some(conflict) = batch::first_skipped(chunk, number * ROWS_PER_INSERT, &inserted) {
            return Err(conflict);
        }
    }
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(())
}

/// A multi-row insert of `rows` connections that skips (and so does not
/// return the id of) a row hitting a unique constraint: 17 values a row.
/// The parameters are anonymous (`?`): binding a numbered one (`?N`) makes
/// SQLite look its name up in a list of every numbered parameter, which made
/// a statement's binding quadratic in its size.
fn insert_many_sql(rows: usize) -> String {
    const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, 0, 0, 1, ?, ?, ?, ?, ?)";
    let mut sql = String::from(
        "INSERT INTO connections (id, project, provider, external_id, access_token, refresh_token, token_type, \
         scope, issued_at, expires_at, metadata, status, next_refresh_at, refresh_count, consecutive_failures, \
         version, created_at, updated_at, grant_type, grant_params, refresh_token_expires_at) VALUES ",
    );
    sql.push_str(&vec![ROW; rows].join(", "));
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING id");
    sql
}

/// The `grant_params` column: JSON text, NULL when there are none.
/// The one-row insert of a new connection (`active`, version 1) that
/// returns its record; `on_conflict` goes before `RETURNING` (e.g.
/// `ON CONFLICT DO NOTHING`). Bind it with [`bind_new`].
pub(super) fn insert_one_sql(on_conflict: &str) -> String {
    format!(
        "INSERT INTO connections (id, project, provider, external_id, access_token, refresh_token, token_type, \
         scope, issued_at, expires_at, metadata, status, next_refresh_at, refresh_count, consecutive_failures, \
         version, created_at, updated_at, grant_type, grant_params, refresh_token_expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'active', ?12, 0, 0, 1, ?13, ?13, ?14, ?15, ?16) \
         {on_conflict} RETURNING {CONNECTION_COLUMNS}"
    )
}

/// Binds `new`, created at `at` (unix ms), to [`insert_one_sql`].
pub(super) fn bind_new<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    new: &'q NewConnection,
    at: i64,
) -> StoreResult<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
    let metadata = serde_json::to_string(&new.metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata cannot be serialised: {e}")))?;
    Ok(query
        .bind(new.id.to_string())
        .bind(&new.project)
        .bind(&new.provider)
        .bind(&new.external_id)
        .bind(new.access_token.as_bytes())
        .bind(new.refresh_token.as_ref().map(|t| t.as_bytes()))
        .bind(&new.token_type)
        .bind(&new.scope)
        .bind(row::millis(new.issued_at))
        .bind(row::millis(new.expires_at))
        .bind(metadata)
        .bind(row::millis(new.next_refresh_at))
        .bind(at)
        .bind(new.grant.grant_type.as_str())
        .bind(grant_params(new)?)
        .bind(row::opt_millis(new.refresh_token_expires_at)))
}

fn grant_params(new: &NewConnection) -> StoreResult<Option<String>> {
    new.grant
        .params
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("grant_params cannot be serialised: {e}")))
}

/// One connection.
pub(super) async fn get(store: &SqliteStore, id: ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
    sqlx::query(&format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = ?1"))
        .bind(id.to_string())
        .fetch_optional(&store.reader)
        .await?
        .as_ref()
        .map(row::connection)
        .transpose()
}

/// A page of connections in id order.
pub(super) async fn list(
    store: &SqliteStore,
    filter: &ConnectionFilter,
    after: Option<ConnectionId>,
    page: u32,
) -> StoreResult<Vec<ConnectionRecord>> {
    let sql = format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections \
         WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR provider = ?2) AND (?3 IS NULL OR status = ?3) \
           AND id > ?4 \
         ORDER BY id LIMIT ?5"
    );
    // Every id sorts after the empty string; a plain `id > ?` keeps the
    // cursor a range seek on the primary key rather than a scan from the start.
    sqlx::query(&sql)
        .bind(filter.project.as_deref())
        .bind(filter.provider.as_deref())
        .bind(filter.status.map(ConnectionStatus::as_str))
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(limit(page))
        .fetch_all(&store.reader)
        .await?
        .iter()
        .map(row::connection)
        .collect()
}

/// New tokens from the user: everything replaced (absent refresh token and
/// scope become NULL), status `active`, failures cleared, version bumped,
/// lease dropped; `events` written with the change, if there was one.
pub(super) async fn replace_tokens(
    store: &SqliteStore,
    id: ConnectionId,
    tokens: TokenUpdate,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<Option<ConnectionRecord>> {
    let sql = format!(
        "UPDATE connections SET access_token = ?2, refresh_token = ?3, token_type = ?4, scope = ?5, \
           issued_at = ?6, expires_at = ?7, next_refresh_at = ?8, status = 'active', consecutive_failures = 0, \
           last_error_code = NULL, last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           version = version + 1, lease_owner = NULL, lease_until = NULL, updated_at = ?9, \
           refresh_token_expires_at = ?10, \
           refresh_token_warned_at = CASE WHEN ?10 IS refresh_token_expires_at THEN refresh_token_warned_at END \
         WHERE id = ?1 RETURNING {CONNECTION_COLUMNS}"
    );
    let mut tx = store.begin_write().await?;
    let updated = sqlx::query(&sql)
        .bind(id.to_string())
        .bind(tokens.access_token.as_bytes())
        .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
        .bind(&tokens.token_type)
        .bind(&tokens.scope)
        .bind(row::millis(tokens.issued_at))
        .bind(row::millis(tokens.expires_at))
        .bind(row::millis(tokens.next_refresh_at))
        .bind(row::millis(now))
        .bind(row::opt_millis(tokens.refresh_token_expires_at))
        .fetch_optional(&mut *tx)
        .await?;
    let record = updated.as_ref().map(row::connection).transpose()?;
    if record.is_some() {
        write_events(&mut tx, &events).await?;
    }
    tx.commit().await?;
    Ok(record)
}

/// Clears failures, status `active`, due at `now`; version and lease kept.
pub(super) async fn reset(
    store: &SqliteStore,
    id: ConnectionId,
    now: OffsetDateTime,
) -> StoreResult<Option<ConnectionRecord>> {
    let sql = format!(
        "UPDATE connections SET status = 'active', consecutive_failures = 0, last_error_code = NULL, \
           last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           next_refresh_at = ?2, updated_at = ?2 \
         WHERE id = ?1 RETURNING {CONNECTION_COLUMNS}"
    );
    sqlx::query(&sql)
        .bind(id.to_string())
        .bind(row::millis(now))
        .fetch_optional(&store.writer)
        .await?
        .as_ref()
        .map(row::connection)
        .transpose()
}

/// Deletes a connection; its attempts go with it (`ON DELETE CASCADE`), its
/// events stay (they have no foreign key to it). `events` are written in
/// the same transaction, only if there was a row to delete.
pub(super) async fn delete(store: &SqliteStore, id: ConnectionId, events: Vec<NewEvent>) -> StoreResult<bool> {
    let mut tx = store.begin_write().await?;
    let done = sqlx::query("DELETE FROM connections WHERE id = ?1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    let deleted = done.rows_affected() > 0;
    if deleted {
        write_events(&mut tx, &events).await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Counts by provider and status, ordered by provider then status name.
pub(super) async fn count_by_status(store: &SqliteStore) -> StoreResult<Vec<StatusCount>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT provider, status, COUNT(*) FROM connections GROUP BY provider, status ORDER BY provider, status",
    )
    .fetch_all(&store.reader)
    .await?;
    rows.into_iter()
        .map(|(provider, status, count)| {
            let status = ConnectionStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("connections.status: unknown status {status:?}")))?;
            let count = u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("negative count {count}")))?;
            Ok(StatusCount {
                provider,
                status,
                count,
            })
        })
        .collect()
}

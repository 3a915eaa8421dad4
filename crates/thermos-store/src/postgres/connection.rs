//! Connection rows on PostgreSQL: insert, read, list, count, and the
//! operator's and user's transitions (`replace_tokens`, `reset`, `delete`).
//!
//! Never touches the schedule's leases except to drop them when the user
//! brings new tokens; refresh results are written by `refresh.rs`.

use sqlx::{Postgres, QueryBuilder};
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use time::OffsetDateTime;

use super::outbox::write_events;
use super::row::{self, CONNECTION_COLUMNS, ms};
use super::{PgStore, conflict_or, limit};
use crate::outbox::NewEvent;
use crate::{
    ConnectionFilter, ConnectionRecord, NewConnection, StatusCount, StoreError, StoreResult, TokenUpdate, batch,
};

/// Rows per statement of a batch insert: 15 bound values each, plus `now`,
/// stays under PostgreSQL's limit of 65,535 bound parameters.
const ROWS_PER_INSERT: usize = 2000;

/// Inserts an `active` connection at version 1, with its events.
pub(super) async fn insert(
    store: &PgStore,
    new: NewConnection,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<ConnectionRecord> {
    let sql = insert_one_sql("");
    let mut tx = store.begin().await?;
    let inserted = bind_new(sqlx::query(&sql), &new, ms(now))
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict_or)?;
    let record = row::connection(&inserted)?;
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(record)
}

/// The one-row insert of a new connection (`active`, version 1) that
/// returns its record; `on_conflict` goes before `RETURNING` (e.g.
/// `ON CONFLICT DO NOTHING`). Bind it with [`bind_new`].
pub(super) fn insert_one_sql(on_conflict: &str) -> String {
    format!(
        "INSERT INTO connections (id, project, provider, external_id, access_token, refresh_token, token_type, \
         scope, issued_at, expires_at, metadata, status, next_refresh_at, refresh_count, consecutive_failures, \
         version, created_at, updated_at, grant_type, grant_params, refresh_token_expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'active', $12, 0, 0, 1, $13, $13, $14, $15, $16) \
         {on_conflict} RETURNING {CONNECTION_COLUMNS}"
    )
}

/// Binds `new`, created at `at`, to [`insert_one_sql`].
pub(super) fn bind_new<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    new: &'q NewConnection,
    at: OffsetDateTime,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(new.id.to_string())
        .bind(&new.project)
        .bind(&new.provider)
        .bind(&new.external_id)
        .bind(new.access_token.as_bytes())
        .bind(new.refresh_token.as_ref().map(|t| t.as_bytes()))
        .bind(&new.token_type)
        .bind(&new.scope)
        .bind(ms(new.issued_at))
        .bind(ms(new.expires_at))
        .bind(&new.metadata)
        .bind(ms(new.next_refresh_at))
        .bind(at)
        .bind(new.grant.grant_type.as_str())
        .bind(&new.grant.params)
        .bind(row::opt_ms(new.refresh_token_expires_at))
}

/// Inserts every connection of `new` (`active`, version 1) and `events` in
/// one transaction, [`ROWS_PER_INSERT`] rows a statement; all or nothing.
/// A row whose key another transaction is inserting at the same moment
/// waits for it, and is skipped (a conflict) if that one commits.
pub(super) async fn insert_many(
    store: &PgStore,
    new: Vec<NewConnection>,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<()> {
    if let Some(repeat) = batch::first_repeat(&new) {
        return Err(repeat);
    }
    let mut tx = store.begin().await?;
    for (number, chunk) in new.chunks(ROWS_PER_INSERT).enumerate() {
        let sql = insert_many_sql(chunk.len());
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(ms(now));
        for new in chunk {
            query = query
                .bind(new.id.to_string())
                .bind(new.project.as_str())
                .bind(new.provider.as_str())
                .bind(new.external_id.as_str())
                .bind(new.access_token.as_bytes())
                .bind(new.refresh_token.as_ref().map(|t| t.as_bytes()))
                .bind(new.token_type.as_str())
                .bind(new.scope.as_deref())
                .bind(ms(new.issued_at))
                .bind(ms(new.expires_at))
                .bind(&new.metadata)
                .bind(ms(new.next_refresh_at))
                .bind(new.grant.grant_type.as_str())
                .bind(&new.grant.params)
                .bind(row::opt_ms(new.refresh_token_expires_at));
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
/// return the id of) a row hitting a unique constraint: `$1` is `now`, then
/// 15 values a row.
fn insert_many_sql(rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::from(
        "INSERT INTO connections (id, project, provider, external_id, access_token, refresh_token, token_type, \
         scope, issued_at, expires_at, metadata, status, next_refresh_at, refresh_count, consecutive_failures, \
         version, created_at, updated_at, grant_type, grant_params, refresh_token_expires_at) VALUES ",
    );
    for row in 0..rows {
        let p = 2 + row * 15;
        if row > 0 {
            sql.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(
            sql,
            "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, 'active', ${}, 0, 0, 1, $1, $1, ${}, ${}, ${})",
            p,
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 5,
            p + 6,
            p + 7,
            p + 8,
            p + 9,
            p + 10,
            p + 11,
            p + 12,
            p + 13,
            p + 14
        );
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING id");
    sql
}

/// One connection.
pub(super) async fn get(store: &PgStore, id: ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
    sqlx::query(&format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(&store.pool)
        .await?
        .as_ref()
        .map(row::connection)
        .transpose()
}

/// A page of connections in id order. Only the filters given are spelt in
/// SQL, so that each shape of the query gets a plan of its own.
pub(super) async fn list(
    store: &PgStore,
    filter: &ConnectionFilter,
    after: Option<ConnectionId>,
    page: u32,
) -> StoreResult<Vec<ConnectionRecord>> {
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id > "));
    // Every id sorts after the empty string: the cursor is always a range
    // seek on the primary key.
    query.push_bind(after.map(|id| id.to_string()).unwrap_or_default());
    if let Some(project) = &filter.project {
        query.push(" AND project = ").push_bind(project);
    }
    if let Some(provider) = &filter.provider {
        query.push(" AND provider = ").push_bind(provider);
    }
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status.as_str());
    }
    query.push(" ORDER BY id LIMIT ").push_bind(limit(page));
    query
        .build()
        .fetch_all(&store.pool)
        .await?
        .iter()
        .map(row::connection)
        .collect()
}

/// New tokens from the user: everything replaced (absent refresh token and
/// scope become NULL), status `active`, failures cleared, version bumped,
/// lease dropped; `events` written with the change, if there was one.
pub(super) async fn replace_tokens(
    store: &PgStore,
    id: ConnectionId,
    tokens: TokenUpdate,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<Option<ConnectionRecord>> {
    let sql = format!(
        "UPDATE connections SET access_token = $2, refresh_token = $3, token_type = $4, scope = $5, \
           issued_at = $6, expires_at = $7, next_refresh_at = $8, status = 'active', consecutive_failures = 0, \
           last_error_code = NULL, last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           version = version + 1, lease_owner = NULL, lease_until = NULL, updated_at = $9, \
           refresh_token_expires_at = $10, refresh_token_warned_at = CASE \
             WHEN $10::timestamptz IS NOT DISTINCT FROM refresh_token_expires_at THEN refresh_token_warned_at END \
         WHERE id = $1 RETURNING {CONNECTION_COLUMNS}"
    );
    let mut tx = store.begin().await?;
    let updated = sqlx::query(&sql)
        .bind(id.to_string())
        .bind(tokens.access_token.as_bytes())
        .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
        .bind(&tokens.token_type)
        .bind(&tokens.scope)
        .bind(ms(tokens.issued_at))
        .bind(ms(tokens.expires_at))
        .bind(ms(tokens.next_refresh_at))
        .bind(ms(now))
        .bind(row::opt_ms(tokens.refresh_token_expires_at))
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
    store: &PgStore,
    id: ConnectionId,
    now: OffsetDateTime,
) -> StoreResult<Option<ConnectionRecord>> {
    let sql = format!(
        "UPDATE connections SET status = 'active', consecutive_failures = 0, last_error_code = NULL, \
           last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           next_refresh_at = $2, updated_at = $2 \
         WHERE id = $1 RETURNING {CONNECTION_COLUMNS}"
    );
    sqlx::query(&sql)
        .bind(id.to_string())
        .bind(ms(now))
        .fetch_optional(&store.pool)
        .await?
        .as_ref()
        .map(row::connection)
        .transpose()
}

/// Deletes a connection; its attempts go with it (`ON DELETE CASCADE`), its
/// events stay (they have no foreign key to it). `events` are written in
/// the same transaction, only if there was a row to delete.
pub(super) async fn delete(store: &PgStore, id: ConnectionId, events: Vec<NewEvent>) -> StoreResult<bool> {
    let mut tx = store.begin().await?;
    let done = sqlx::query("DELETE FROM connections WHERE id = $1")
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
pub(super) async fn count_by_status(store: &PgStore) -> StoreResult<Vec<StatusCount>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT provider, status, COUNT(*) FROM connections GROUP BY provider, status ORDER BY provider, status",
    )
    .fetch_all(&store.pool)
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

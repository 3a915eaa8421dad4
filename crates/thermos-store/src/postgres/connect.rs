//! Connect sessions on PostgreSQL: insert, begin, consume (once), fail, and
//! the create-or-reconnect of a connection that completes a session.
//!
//! Single use rests on row locks: a transition is an `UPDATE … WHERE status
//! = 'pending'`; of two concurrent consumers of one state the second waits
//! for the first's row lock, then finds the status changed and matches
//! nothing. Never sees a plaintext state or verifier; `now` is always bound.

use sqlx::Row;
use sqlx::postgres::PgRow;
use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use time::OffsetDateTime;

use super::outbox::write_events;
use super::row::{self, CONNECTION_COLUMNS, ms};
use super::{PgStore, conflict_or};
use crate::connect::{Begin, Connect, ConnectOutcome, ConnectSessionRecord, Consume, NewConnectSession, SessionStatus};
use crate::outbox::NewEvent;
use crate::{ConnectionRecord, StoreError, StoreResult};

const SESSION_COLUMNS: &str = "id, project, provider, external_id, scopes, redirect_after, state_hash, \
     code_verifier, status, connection_id, error_code, error_message, created_at, expires_at, begun_at, \
     consumed_at, finished_at";

/// Inserts a `pending` session.
pub(super) async fn insert(store: &PgStore, new: NewConnectSession) -> StoreResult<ConnectSessionRecord> {
    let sql = format!(
        "INSERT INTO connect_sessions (id, project, provider, external_id, scopes, redirect_after, status, \
           created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8) \
         RETURNING {SESSION_COLUMNS}"
    );
    let inserted = sqlx::query(&sql)
        .bind(&new.id)
        .bind(&new.project)
        .bind(&new.provider)
        .bind(&new.external_id)
        .bind(new.scopes.join(" "))
        .bind(&new.redirect_after)
        .bind(ms(new.created_at))
        .bind(ms(new.expires_at))
        .fetch_one(&store.pool)
        .await
        .map_err(conflict_or)?;
    session(&inserted)
}

/// One session.
pub(super) async fn get(store: &PgStore, id: &str) -> StoreResult<Option<ConnectSessionRecord>> {
    sqlx::query(&format!("SELECT {SESSION_COLUMNS} FROM connect_sessions WHERE id = $1"))
        .bind(id)
        .fetch_optional(&store.pool)
        .await?
        .as_ref()
        .map(session)
        .transpose()
}

/// Begins a pending, unexpired session; expires a pending, expired one.
pub(super) async fn begin(
    store: &PgStore,
    id: &str,
    state_hash: Vec<u8>,
    code_verifier: Sealed,
    now: OffsetDateTime,
) -> StoreResult<Begin> {
    let now = ms(now);
    let mut tx = store.begin().await?;
    let begun = sqlx::query(&format!(
        "UPDATE connect_sessions SET state_hash = $2, code_verifier = $3, begun_at = $4 \
         WHERE id = $1 AND status = 'pending' AND expires_at > $4 RETURNING {SESSION_COLUMNS}"
    ))
    .bind(id)
    .bind(&state_hash)
    .bind(code_verifier.as_bytes())
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(conflict_or)?;
    let outcome = match begun {
        Some(begun) => Begin::Begun(session(&begun)?),
        None => match expire(&mut tx, Key::Id(id), now).await? {
            Some(expired) => Begin::Expired(expired),
            None => match select(&mut tx, Key::Id(id)).await? {
                Some(other) => Begin::NotPending(other),
                None => Begin::NotFound,
            },
        },
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Consumes the session holding `state_hash`, once.
pub(super) async fn consume(store: &PgStore, state_hash: &[u8], now: OffsetDateTime) -> StoreResult<Consume> {
    let now = ms(now);
    let mut tx = store.begin().await?;
    let consumed = sqlx::query(&format!(
        "UPDATE connect_sessions SET status = 'exchanging', consumed_at = $2 \
         WHERE state_hash = $1 AND status = 'pending' AND expires_at > $2 RETURNING {SESSION_COLUMNS}"
    ))
    .bind(state_hash)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match consumed {
        Some(consumed) => Consume::Consumed(session(&consumed)?),
        None => match expire(&mut tx, Key::StateHash(state_hash), now).await? {
            Some(expired) => Consume::Expired(expired),
            None => match select(&mut tx, Key::StateHash(state_hash)).await? {
                Some(used) => Consume::AlreadyUsed(used),
                None => Consume::Unknown,
            },
        },
    };
    tx.commit().await?;
    Ok(outcome)
}

/// `exchanging` → `failed`.
pub(super) async fn fail(
    store: &PgStore,
    id: &str,
    error_code: &str,
    message: &str,
    now: OffsetDateTime,
) -> StoreResult<Option<ConnectSessionRecord>> {
    sqlx::query(&format!(
        "UPDATE connect_sessions SET status = 'failed', error_code = $2, error_message = $3, finished_at = $4 \
         WHERE id = $1 AND status = 'exchanging' RETURNING {SESSION_COLUMNS}"
    ))
    .bind(id)
    .bind(error_code)
    .bind(message)
    .bind(ms(now))
    .fetch_optional(&store.pool)
    .await?
    .as_ref()
    .map(session)
    .transpose()
}

/// The connection for (project, provider, external_id): one unique-index lookup.
pub(super) async fn find_connection(
    store: &PgStore,
    project: &str,
    provider: &str,
    external_id: &str,
) -> StoreResult<Option<ConnectionRecord>> {
    sqlx::query(&format!(
        "SELECT {CONNECTION_COLUMNS} FROM connections WHERE project = $1 AND provider = $2 AND external_id = $3"
    ))
    .bind(project)
    .bind(provider)
    .bind(external_id)
    .fetch_optional(&store.pool)
    .await?
    .as_ref()
    .map(row::connection)
    .transpose()
}

/// Creates or reconnects, writes the events and completes the session, in
/// one transaction.
pub(super) async fn connect_connection(
    store: &PgStore,
    session_id: Option<&str>,
    connect: Connect,
    now: OffsetDateTime,
    events: Vec<NewEvent>,
) -> StoreResult<ConnectOutcome> {
    let at = ms(now);
    let mut tx = store.begin().await?;
    let outcome = match connect {
        Connect::Create(new) => {
            let sql = super::connection::insert_one_sql("ON CONFLICT DO NOTHING");
            let inserted = super::connection::bind_new(sqlx::query(&sql), &new, at)
                .fetch_optional(&mut *tx)
                .await?;
            match inserted {
                Some(inserted) => ConnectOutcome::Created(row::connection(&inserted)?),
                None => return Ok(ConnectOutcome::Stale),
            }
        }
        Connect::Reconnect {
            id,
            expected_version,
            tokens,
        } => {
            let updated = sqlx::query(&format!(
                "UPDATE connections SET access_token = $3, refresh_token = $4, token_type = $5, scope = $6, \
                   issued_at = $7, expires_at = $8, next_refresh_at = $9, status = 'active', \
                   consecutive_failures = 0, last_error_code = NULL, last_error_message = NULL, \
                   last_error_http_status = NULL, last_error_at = NULL, version = version + 1, \
                   lease_owner = NULL, lease_until = NULL, updated_at = $10, refresh_token_expires_at = $11, \
                   refresh_token_warned_at = CASE WHEN $11::timestamptz IS NOT DISTINCT FROM \
                     refresh_token_expires_at THEN refresh_token_warned_at END \
                 WHERE id = $1 AND version = $2 RETURNING {CONNECTION_COLUMNS}"
            ))
            .bind(id.to_string())
            .bind(expected_version)
            .bind(tokens.access_token.as_bytes())
            .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
            .bind(&tokens.token_type)
            .bind(&tokens.scope)
            .bind(ms(tokens.issued_at))
            .bind(ms(tokens.expires_at))
            .bind(ms(tokens.next_refresh_at))
            .bind(at)
            .bind(row::opt_ms(tokens.refresh_token_expires_at))
            .fetch_optional(&mut *tx)
            .await?;
            match updated {
                Some(updated) => ConnectOutcome::Reconnected(row::connection(&updated)?),
                None => return Ok(ConnectOutcome::Stale),
            }
        }
    };
    let (ConnectOutcome::Created(record) | ConnectOutcome::Reconnected(record)) = &outcome else {
        return Ok(ConnectOutcome::Stale);
    };
    if let Some(session_id) = session_id {
        sqlx::query(
            "UPDATE connect_sessions SET status = 'completed', connection_id = $2, finished_at = $3 \
             WHERE id = $1 AND status = 'exchanging'",
        )
        .bind(session_id)
        .bind(record.id.to_string())
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    write_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Which session a lookup inside a transaction means.
#[derive(Clone, Copy)]
enum Key<'a> {
    Id(&'a str),
    StateHash(&'a [u8]),
}

impl Key<'_> {
    fn filter(self) -> &'static str {
        match self {
            Self::Id(_) => "id = $1",
            Self::StateHash(_) => "state_hash = $1",
        }
    }

    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Self::Id(id) => query.bind(id.to_owned()),
            Self::StateHash(hash) => query.bind(hash.to_vec()),
        }
    }
}

/// Marks the pending, expired session `key` names `expired`, returning it.
async fn expire(
    tx: &mut sqlx::PgConnection,
    key: Key<'_>,
    now: OffsetDateTime,
) -> StoreResult<Option<ConnectSessionRecord>> {
    let sql = format!(
        "UPDATE connect_sessions SET status = 'expired', error_code = 'expired', \
           error_message = 'the session expired before it completed', finished_at = $2 \
         WHERE {} AND status = 'pending' AND expires_at <= $2 RETURNING {SESSION_COLUMNS}",
        key.filter()
    );
    key.bind(sqlx::query(&sql))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(session)
        .transpose()
}

/// The session `key` names, inside the transaction.
async fn select(tx: &mut sqlx::PgConnection, key: Key<'_>) -> StoreResult<Option<ConnectSessionRecord>> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM connect_sessions WHERE {}", key.filter());
    key.bind(sqlx::query(&sql))
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(session)
        .transpose()
}

/// Reads a `connect_sessions` row selected with [`SESSION_COLUMNS`].
fn session(row: &PgRow) -> StoreResult<ConnectSessionRecord> {
    let status: String = row.try_get("status")?;
    let status = SessionStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("connect_sessions.status: unknown status {status:?}")))?;
    let scopes: String = row.try_get("scopes")?;
    let connection_id = row
        .try_get::<Option<String>, _>("connection_id")?
        .map(|raw| {
            ConnectionId::parse(&raw)
                .map_err(|_| StoreError::Corrupt(format!("connect_sessions.connection_id: {raw:?}")))
        })
        .transpose()?;
    Ok(ConnectSessionRecord {
        id: row.try_get("id")?,
        project: row.try_get("project")?,
        provider: row.try_get("provider")?,
        external_id: row.try_get("external_id")?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        redirect_after: row.try_get("redirect_after")?,
        state_hash: row.try_get("state_hash")?,
        code_verifier: row
            .try_get::<Option<Vec<u8>>, _>("code_verifier")?
            .map(Sealed::from_bytes),
        status,
        connection_id,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        created_at: pg_time(row, "created_at")?,
        expires_at: pg_time(row, "expires_at")?,
        begun_at: pg_opt_time(row, "begun_at")?,
        consumed_at: pg_opt_time(row, "consumed_at")?,
        finished_at: pg_opt_time(row, "finished_at")?,
    })
}

fn pg_time(row: &PgRow, column: &str) -> StoreResult<OffsetDateTime> {
    Ok(row.try_get(column)?)
}

fn pg_opt_time(row: &PgRow, column: &str) -> StoreResult<Option<OffsetDateTime>> {
    Ok(row.try_get(column)?)
}

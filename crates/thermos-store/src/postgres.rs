//! The shared backend: [`PgStore`], one PostgreSQL database (or one schema
//! of it) that any number of Thermos instances use at once.
//!
//! Owns the connection pool and the PostgreSQL spelling of every [`Store`]
//! transition. Where SQLite has one writer, PostgreSQL has many concurrent
//! transactions, so the semantics SQLite gets from serialisation are spelt
//! out here:
//!
//! - due work (connections, deliveries) is claimed with `FOR UPDATE SKIP
//!   LOCKED` in the statement that writes the lease, so two instances never
//!   claim the same row and never wait for each other;
//! - transitions lock the connection row before they record an attempt, and
//!   commit tokens with a compare-and-swap on `version`;
//! - event writers take one transaction-scoped advisory lock, so an event's
//!   `seq` order is its commit order (a consumer's cursor never skips an
//!   event committed late), and every change to a delivery channel's head
//!   holds that channel's advisory lock (see `postgres/outbox.rs`).
//!
//! Timestamps are `TIMESTAMPTZ`, truncated to the millisecond before they are
//! bound (see [`crate::truncate_to_millis`]), so they round-trip exactly.
//!
//! It never sees a plaintext token, never reads the clock (`now` is always a
//! bound parameter; no `now()` in SQL) and never decides a state transition.
//!
//! Read next: `postgres/schedule.rs` (leases), `postgres/refresh.rs`,
//! `postgres/outbox.rs` and `postgres/delivery.rs`, `postgres/row.rs` and
//! `migrations/postgres/` (the schema).

mod api_key;
mod audit;
mod connect;
mod connection;
mod custom_app;
mod delivery;
mod finish_batch;
mod instance;
mod outbox;
mod refresh;
mod refresh_token;
mod reseal;
mod row;
mod run;
mod schedule;
mod webhook;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, Postgres, Transaction};
use thermos_core::id::ConnectionId;
use time::OffsetDateTime;

use crate::group_commit::{Finish, GroupCommit};
use crate::outbox::{
    DeliveryAttempt, DeliveryNext, DeliveryRecord, EventFilter, EventRecord, EventWithDeliveries, NewEvent,
    WebhookRecord,
};
use crate::{
    ApiKeyRecord, AttemptRecord, Claim, ConnectionFilter, ConnectionRecord, CustomAppRecord, FailureUpdate,
    FinishOutcome, NewAttempt, NewConnection, StatusCount, Store, StoreError, StoreResult, TokenUpdate,
};

/// The embedded migrations of the PostgreSQL schema.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How a [`PgStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a query waits for a free connection before it fails.
    pub acquire_timeout: Duration,
    /// The schema every pooled connection works in (its `search_path`);
    /// `None` keeps the server's default (`public`). [`Store::migrate`]
    /// creates it if missing.
    pub schema: Option<String>,
}

impl PgOptions {
    /// The default pool size.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
    /// The default wait for a pooled connection.
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
            schema: None,
        }
    }
}

/// The PostgreSQL store. Cheap to clone (the pool is a shared handle).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The schema set as `search_path` on every connection, if any.
    schema: Option<String>,
    /// Commits refresh successes in groups.
    group_commit: GroupCommit,
}

impl PgStore {
    /// Connects a pool to the database at `url` (`postgres://user@host/db`,
    /// `postgresql://…`). Does not migrate; call [`Store::migrate`]. Starts
    /// the store's committer task on the current Tokio runtime: connect on
    /// the runtime that uses the store.
    pub async fn connect(url: &str, options: PgOptions) -> StoreResult<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(config_error("not a postgres:// URL".into()));
        }
        let connect = PgConnectOptions::from_str(url)?;
        let mut pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout);
        if let Some(schema) = &options.schema {
            if schema.is_empty() || schema.contains('\0') {
                return Err(config_error("the schema name must be non-empty text".into()));
            }
            let set_path: Arc<str> = format!("SET search_path TO {}", quote_ident(schema)).into();
            pool = pool.after_connect(move |conn, _meta| {
                let set_path = Arc::clone(&set_path);
                Box::pin(async move {
                    conn.execute(&*set_path).await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(connect).await?;
        let group_commit = GroupCommit::start(finish_batch::PgCommitter { pool: pool.clone() });
        Ok(Self {
            pool,
            schema: options.schema,
            group_commit,
        })
    }

    /// The schema this store works in, if one was chosen.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Starts a transaction (READ COMMITTED: every statement sees what
    /// committed before it began, which the row and advisory locks rely on).
    async fn begin(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// The query plans of the due-work statements (the claims and next due
    /// times of connections and deliveries), one line per plan node prefixed
    /// with the method's name. Sequential scans are disabled for the
    /// explanation, so the plan shows which index a query can use (on a small
    /// table the planner would rightly scan instead). For tests that check
    /// the partial indexes `connections_due` and `deliveries_due` fit.
    #[doc(hidden)]
    pub async fn explain_due_queries(&self) -> StoreResult<String> {
        let statements = [
            ("claim_due", schedule::CLAIM_DUE.to_owned(), true),
            ("next_due_at", schedule::SELECT_NEXT_DUE.to_owned(), false),
            ("claim_deliveries", delivery::claim_sql(), true),
            ("next_delivery_due_at", delivery::SELECT_NEXT_DUE.to_owned(), false),
        ];
        let mut tx = self.begin().await?;
        sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await?;
        let mut plan = Vec::new();
        for (name, sql, claims) in statements {
            let explain = format!("EXPLAIN {sql}");
            let mut query = sqlx::query_scalar::<_, String>(&explain);
            if claims {
                let at = OffsetDateTime::UNIX_EPOCH;
                query = query.bind(at).bind(1_i64).bind("explain").bind(at);
            }
            let lines = query.fetch_all(&mut *tx).await?;
            plan.extend(lines.into_iter().map(|line| format!("{name}: {line}")));
        }
        tx.rollback().await?;
        Ok(plan.join("\n"))
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn config_error(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Configuration(message.into()))
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn conflict_or(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(error),
    }
}

/// A `u32` limit as PostgreSQL's `BIGINT`.
fn limit(limit: u32) -> i64 {
    i64::from(limit)
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> StoreResult<()> {
        if let Some(schema) = &self.schema {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)))
                .execute(&self.pool)
                .await?;
        }
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_connection(
        &self,
        new: NewConnection,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<ConnectionRecord> {
        connection::insert(self, new, now, events).await
    }

    async fn insert_connections(
        &self,
        new: Vec<NewConnection>,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<()> {
        connection::insert_many(self, new, now, events).await
    }

    async fn get_connection(&self, id: ConnectionId) -> StoreResult<Option<ConnectionRecord>> {
        connection::get(self, id).await
    }

    async fn list_connections(
        &self,
        filter: &ConnectionFilter,
        after: Option<ConnectionId>,
        limit: u32,
    ) -> StoreResult<Vec<ConnectionRecord>> {
        connection::list(self, filter, after, limit).await
    }

    async fn replace_tokens(
        &self,
        id: ConnectionId,
        tokens: TokenUpdate,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<Option<ConnectionRecord>> {
        connection::replace_tokens(self, id, tokens, now, events).await
    }

    async fn expiring_refresh_tokens(
        &self,
        provider: &str,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<ConnectionRecord>> {
        refresh_token::expiring(self, provider, before, limit).await
    }

    async fn warn_refresh_tokens(
        &self,
        warnings: Vec<crate::RefreshTokenWarning>,
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        refresh_token::warn(self, warnings, now).await
    }

    async fn reset_connection(&self, id: ConnectionId, now: OffsetDateTime) -> StoreResult<Option<ConnectionRecord>> {
        connection::reset(self, id, now).await
    }

    async fn delete_connection(&self, id: ConnectionId, events: Vec<NewEvent>) -> StoreResult<bool> {
        connection::delete(self, id, events).await
    }

    async fn next_due_at(&self) -> StoreResult<Option<OffsetDateTime>> {
        schedule::next_due_at(self).await
    }

    async fn claim_due(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<ConnectionRecord>> {
        schedule::claim_due(self, owner, now, lease_until, limit).await
    }

    async fn claim_connection(
        &self,
        id: ConnectionId,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> StoreResult<Claim> {
        schedule::claim_connection(self, id, owner, now, lease_until).await
    }

    async fn release_lease(&self, id: ConnectionId, owner: &str, next_refresh_at: OffsetDateTime) -> StoreResult<()> {
        schedule::release_lease(self, id, owner, next_refresh_at).await
    }

    async fn finish_refresh(
        &self,
        id: ConnectionId,
        expected_version: i64,
        tokens: TokenUpdate,
        attempt: NewAttempt,
        events: Vec<NewEvent>,
    ) -> StoreResult<FinishOutcome> {
        let finish = Finish {
            id,
            expected_version,
            tokens,
            attempt,
            events,
        };
        self.group_commit.finish(finish).await
    }

    async fn record_failure(
        &self,
        id: ConnectionId,
        expected_version: i64,
        failure: FailureUpdate,
        attempt: NewAttempt,
        events: Vec<NewEvent>,
    ) -> StoreResult<Option<ConnectionRecord>> {
        refresh::record_failure(self, id, expected_version, failure, attempt, events).await
    }

    async fn record_attempt(&self, id: ConnectionId, attempt: NewAttempt) -> StoreResult<()> {
        refresh::record_attempt(self, id, attempt).await
    }

    async fn release_all_leases(&self, now: OffsetDateTime) -> StoreResult<u64> {
        schedule::release_all_leases(self, now).await
    }

    async fn list_attempts(&self, id: ConnectionId, limit: u32) -> StoreResult<Vec<AttemptRecord>> {
        refresh::list_attempts(self, id, limit).await
    }

    async fn count_project_connections(&self, project: &str) -> StoreResult<u64> {
        // A range of the (project, provider, external_id) unique index.
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM connections WHERE project = $1")
            .bind(project)
            .fetch_one(&self.pool)
            .await?;
        u64::try_from(count).map_err(|_| StoreError::Corrupt(format!("negative count {count}")))
    }

    async fn count_by_status(&self) -> StoreResult<Vec<StatusCount>> {
        connection::count_by_status(self).await
    }

    async fn insert_api_key(&self, key: ApiKeyRecord) -> StoreResult<()> {
        api_key::insert(self, key).await
    }

    async fn find_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        api_key::find(self, key_id).await
    }

    async fn list_api_keys(&self, project: Option<&str>) -> StoreResult<Vec<ApiKeyRecord>> {
        api_key::list(self, project).await
    }

    async fn revoke_api_key(&self, key_id: &str, now: OffsetDateTime) -> StoreResult<Option<ApiKeyRecord>> {
        api_key::revoke(self, key_id, now).await
    }

    async fn upsert_custom_app(&self, record: CustomAppRecord) -> StoreResult<CustomAppRecord> {
        custom_app::upsert(self, record).await
    }

    async fn list_custom_apps(&self, project: Option<&str>) -> StoreResult<Vec<CustomAppRecord>> {
        custom_app::list(self, project).await
    }

    async fn delete_custom_app(&self, project: &str, provider: &str) -> StoreResult<bool> {
        custom_app::delete(self, project, provider).await
    }

    async fn insert_events(&self, events: Vec<NewEvent>) -> StoreResult<()> {
        outbox::insert_events(self, events).await
    }

    async fn insert_webhook(&self, record: WebhookRecord) -> StoreResult<()> {
        webhook::insert(self, record).await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookRecord>> {
        webhook::get(self, id).await
    }

    async fn list_webhooks(&self, project: Option<&str>) -> StoreResult<Vec<WebhookRecord>> {
        webhook::list(self, project).await
    }

    async fn delete_webhook(&self, id: &str, now: OffsetDateTime) -> StoreResult<bool> {
        webhook::delete(self, id, now).await
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryRecord>> {
        delivery::claim(self, owner, now, lease_until, limit).await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        owner: &str,
        attempt: DeliveryAttempt,
        next: DeliveryNext,
    ) -> StoreResult<()> {
        delivery::finish(self, id, owner, attempt, next).await
    }

    async fn next_delivery_due_at(&self) -> StoreResult<Option<OffsetDateTime>> {
        delivery::next_due_at(self).await
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<EventWithDeliveries>> {
        outbox::list_events(self, filter, before_seq, limit).await
    }

    async fn get_event(&self, id: &str) -> StoreResult<Option<EventWithDeliveries>> {
        outbox::get_event(self, id).await
    }

    async fn list_delivery_attempts(&self, delivery_id: i64) -> StoreResult<Vec<DeliveryAttempt>> {
        delivery::list_attempts(self, delivery_id).await
    }

    async fn redeliver_event(&self, event_id: &str, now: OffsetDateTime) -> StoreResult<u64> {
        delivery::redeliver(self, event_id, now).await
    }

    async fn events_after(&self, seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        outbox::events_after(self, seq, limit).await
    }

    async fn get_cursor(&self, name: &str) -> StoreResult<i64> {
        outbox::get_cursor(self, name).await
    }

    async fn commit_alerts(&self, alerts: Vec<NewEvent>, cursor_name: &str, cursor: i64) -> StoreResult<()> {
        outbox::commit_alerts(self, alerts, cursor_name, cursor).await
    }

    async fn prune_outbox(&self, older_than: OffsetDateTime) -> StoreResult<u64> {
        outbox::prune(self, older_than).await
    }

    async fn count_pending_deliveries(&self) -> StoreResult<u64> {
        delivery::count_pending(self).await
    }

    async fn insert_run(&self, new: crate::run::NewRun) -> StoreResult<crate::run::RunRecord> {
        run::insert(self, new).await
    }

    async fn update_run_progress(
        &self,
        id: &str,
        counts: crate::run::RunCounts,
        failures_by_code: crate::run::FailuresByCode,
        heartbeat_at: OffsetDateTime,
    ) -> StoreResult<Option<crate::run::RunRecord>> {
        run::update_progress(self, id, counts, &failures_by_code, heartbeat_at).await
    }

    async fn finish_run(
        &self,
        id: &str,
        status: crate::run::RunStatus,
        counts: crate::run::RunCounts,
        failures_by_code: crate::run::FailuresByCode,
        finished_at: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<Option<crate::run::RunRecord>> {
        run::finish(self, id, status, counts, &failures_by_code, finished_at, events).await
    }

    async fn get_run(&self, id: &str) -> StoreResult<Option<crate::run::RunRecord>> {
        run::get(self, id).await
    }

    async fn list_runs(&self, limit: u32) -> StoreResult<Vec<crate::run::RunRecord>> {
        run::list(self, limit).await
    }

    async fn mark_stale_runs(&self, heartbeat_before: OffsetDateTime, now: OffsetDateTime) -> StoreResult<u64> {
        run::mark_stale(self, heartbeat_before, now).await
    }

    async fn cancel_run(&self, id: &str) -> StoreResult<bool> {
        run::cancel(self, id).await
    }

    async fn append_audit(&self, entries: Vec<crate::audit::NewAuditEntry>) -> StoreResult<()> {
        audit::append(self, entries).await
    }

    async fn list_audit(&self, filter: crate::audit::AuditFilter) -> StoreResult<Vec<crate::audit::AuditRecord>> {
        audit::list(self, filter).await
    }

    async fn beat_instance(&self, beat: crate::instance::InstanceBeat, now: OffsetDateTime) -> StoreResult<()> {
        instance::beat(self, beat, now).await
    }

    async fn live_instances(&self, beat_after: OffsetDateTime) -> StoreResult<Vec<crate::instance::InstanceRecord>> {
        instance::live(self, beat_after).await
    }

    async fn remove_instance(&self, name: &str) -> StoreResult<bool> {
        instance::remove(self, name).await
    }

    async fn sealed_values_page(
        &self,
        after: Option<&crate::reseal::SealedOwner>,
        limit: u32,
        not_under: Option<thermos_core::seal::KeyId>,
    ) -> StoreResult<Vec<crate::reseal::SealedValue>> {
        reseal::page(self, after, limit, not_under).await
    }

    async fn replace_sealed(&self, batch: Vec<crate::reseal::Reseal>) -> StoreResult<u64> {
        reseal::replace(self, batch).await
    }

    async fn count_sealed_by_key_id(&self) -> StoreResult<Vec<crate::reseal::KeyIdCount>> {
        reseal::count(self).await
    }

    async fn insert_connect_session(
        &self,
        new: crate::connect::NewConnectSession,
    ) -> StoreResult<crate::connect::ConnectSessionRecord> {
        connect::insert(self, new).await
    }

    async fn get_connect_session(&self, id: &str) -> StoreResult<Option<crate::connect::ConnectSessionRecord>> {
        connect::get(self, id).await
    }

    async fn begin_connect_session(
        &self,
        id: &str,
        state_hash: Vec<u8>,
        code_verifier: thermos_core::seal::Sealed,
        now: OffsetDateTime,
    ) -> StoreResult<crate::connect::Begin> {
        connect::begin(self, id, state_hash, code_verifier, now).await
    }

    async fn consume_connect_session(
        &self,
        state_hash: &[u8],
        now: OffsetDateTime,
    ) -> StoreResult<crate::connect::Consume> {
        connect::consume(self, state_hash, now).await
    }

    async fn fail_connect_session(
        &self,
        id: &str,
        error_code: &str,
        message: &str,
        now: OffsetDateTime,
    ) -> StoreResult<Option<crate::connect::ConnectSessionRecord>> {
        connect::fail(self, id, error_code, message, now).await
    }

    async fn find_connection(
        &self,
        project: &str,
        provider: &str,
        external_id: &str,
    ) -> StoreResult<Option<ConnectionRecord>> {
        connect::find_connection(self, project, provider, external_id).await
    }

    async fn connect_connection(
        &self,
        session_id: Option<&str>,
        connect: crate::connect::Connect,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<crate::connect::ConnectOutcome> {
        connect::connect_connection(self, session_id, connect, now, events).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("t_1"), "\"t_1\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

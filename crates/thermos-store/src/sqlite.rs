//! The embedded backend: [`SqliteStore`], one SQLite file in WAL mode.
//!
//! Owns the connection pools, the pragmas and the SQLite spelling of every
//! [`Store`] transition. Two pools: a writer pool of exactly one connection,
//! which serialises this process's writers fairly (the pool queue) and starts
//! every multi-statement write with `BEGIN IMMEDIATE`, so that a write never
//! fails with "database is locked" after a read inside the same transaction;
//! and a reader pool of several connections for plain reads, which WAL lets
//! run beside the writer. Other processes on the same file wait on the busy
//! timeout.
//!
//! Timestamps are stored as unix milliseconds: records read back have
//! millisecond precision (see [`crate::truncate_to_millis`]).
//!
//! It never sees a plaintext token, never reads the clock (`now` is always a
//! bound parameter) and never decides a state transition — the engine does;
//! it only applies them atomically.
//!
//! Read next: `sqlite/schedule.rs` (leases), `sqlite/refresh.rs` (committing
//! refresh results), `sqlite/outbox.rs` and `sqlite/delivery.rs` (events and
//! their deliveries), `sqlite/row.rs` (row mapping) and
//! `migrations/sqlite/` (the schema).

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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};
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

/// How long a connection waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in the reader pool.
pub const READER_CONNECTIONS: u32 = 8;

/// The embedded migrations of the SQLite schema.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store. Cheap to clone (the pools are shared handles).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write goes through it.
    writer: SqlitePool,
    /// Plain reads.
    reader: SqlitePool,
    /// The database file.
    path: PathBuf,
    /// Commits refresh successes in groups, through `writer`.
    group_commit: GroupCommit,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`: `sqlite://thermos.db`
    /// and `sqlite:relative/path.db` are relative to the working directory,
    /// `sqlite:///abs/path.db` is absolute. In-memory databases are refused:
    /// the two pools would not share one. Does not migrate; call
    /// [`Store::migrate`]. Starts the store's committer task on the
    /// current Tokio runtime: open the store on the runtime that uses it.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_with(connect_options(url)?).await
    }

    /// Opens (creating if missing) the database file at `path`.
    pub async fn open_path(path: &Path) -> StoreResult<Self> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_with(options: SqliteConnectOptions) -> StoreResult<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // The writer connects first: it creates the file and switches it to
        // WAL before any reader opens it. A connection to a local file does
        // not go stale, so no pool pings it before lending it out (the ping
        // was a tenth of a token request's cost).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let path = options.get_filename().to_path_buf();
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        let group_commit = GroupCommit::start(finish_batch::SqliteCommitter { writer: writer.clone() });
        Ok(Self {
            writer,
            reader,
            path,
            group_commit,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the serving instance's exclusive lock: an OS lock on
    /// `<database>.lock`, released when the returned file is dropped or the
    /// process dies (even by SIGKILL). Only the holder may treat leases left
    /// in the file as abandoned ([`Store::release_all_leases`]); a second
    /// `thermos serve` on the same file fails here instead.
    pub fn lock_instance(&self) -> Result<std::fs::File, InstanceLockError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| InstanceLockError::Io {
                path: lock_path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(InstanceLockError::Held { path: lock_path }),
            Err(std::fs::TryLockError::Error(source)) => Err(InstanceLockError::Io {
                path: lock_path,
                source,
            }),
        }
    }

    /// Starts a write transaction holding the database's write lock from its
    /// first statement on.
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The query plans of the due-work queries (`claim_due`'s selection, then
    /// `next_due_at`), one `EXPLAIN QUERY PLAN` detail per line. For tests
    /// that check the partial index `connections_due` is used.
    #[doc(hidden)]
    pub async fn explain_due_query(&self) -> StoreResult<String> {
        let mut plan = Vec::new();
        for (name, sql) in [
            ("claim_due", schedule::SELECT_DUE),
            ("next_due_at", schedule::SELECT_NEXT_DUE),
        ] {
            let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind(0_i64)
                .bind(1_i64)
                .fetch_all(&self.reader)
                .await?;
            plan.extend(rows.into_iter().map(|(.., detail)| format!("{name}: {detail}")));
        }
        Ok(plan.join("\n"))
    }

    /// The query plans of the outbox's due-work queries (`claim_deliveries`'
    /// selection, then `next_delivery_due_at`), one `EXPLAIN QUERY PLAN`
    /// detail per line. For tests that check the partial indexes
    /// `deliveries_due` and `deliveries_channel` are used.
    #[doc(hidden)]
    pub async fn explain_delivery_queries(&self) -> StoreResult<String> {
        let mut plan = Vec::new();
        for (name, sql) in [
            ("claim_deliveries", delivery::select_claimable()),
            ("next_delivery_due_at", delivery::SELECT_NEXT_DUE.to_owned()),
        ] {
            let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind(0_i64)
                .bind(1_i64)
                .fetch_all(&self.reader)
                .await?;
            plan.extend(rows.into_iter().map(|(.., detail)| format!("{name}: {detail}")));
        }
        Ok(plan.join("\n"))
    }

    /// Closes both pools, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Why the instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceLockError {
    /// Another process serves this database file.
    #[error("another thermos instance is serving this database (lock {} is held)", path.display())]
    Held {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Parses a `sqlite:` URL into connect options (pragmas are added by the
/// caller).
fn connect_options(url: &str) -> StoreResult<SqliteConnectOptions> {
    if !url.starts_with("sqlite:") {
        return Err(config_error(format!("not a sqlite: URL: {url}")));
    }
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Err(config_error(
            "in-memory SQLite databases are not supported; give a file path".into(),
        ));
    }
    Ok(SqliteConnectOptions::from_str(url)?)
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

/// A `u32` limit as SQLite's integer.
fn limit(limit: u32) -> i64 {
    i64::from(limit)
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        Ok(MIGRATOR.run(&self.writer).await?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
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
        refresh_token::expiring(&self.reader, provider, before, limit).await
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
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM connections WHERE project = ?")
            .bind(project)
            .fetch_one(&self.reader)
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
    fn sqlite_urls_name_relative_and_absolute_files() {
        for (url, file) in [
            ("sqlite://thermos.db", "thermos.db"),
            ("sqlite:relative/path.db", "relative/path.db"),
            ("sqlite:///abs/path.db", "/abs/path.db"),
            ("sqlite://data/thermos.db?mode=rwc", "data/thermos.db"),
        ] {
            assert_eq!(connect_options(url).unwrap().get_filename(), Path::new(file), "{url}");
        }
    }

    #[test]
    fn in_memory_and_foreign_urls_are_refused() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
            "postgres://x/y",
            "thermos.db",
        ] {
            assert!(connect_options(url).is_err(), "{url}");
        }
    }
}

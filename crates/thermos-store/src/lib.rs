//! The storage boundary: the [`Store`] trait and its implementations.
//!
//! The store speaks in transitions (`claim_due`, `finish_refresh`,
//! `record_failure`, …): each method is one transaction that checks the
//! lease or the version it relies on. It never sees a plaintext token — only
//! [`Sealed`] bytes — and never reads the clock: every method that needs
//! "now" takes it as a parameter and binds it into SQL.
//!
//! Read next: `sqlite.rs` (the embedded backend), `postgres.rs` (the shared
//! one) and `tests/conformance.rs` (the contract every backend passes).

pub mod audit;
mod batch;
pub mod connect;
mod group_commit;
pub mod instance;
pub mod outbox;
mod postgres;
pub mod reseal;
pub mod run;
mod sqlite;

use async_trait::async_trait;
use outbox::{
    DeliveryAttempt, DeliveryNext, DeliveryRecord, EventFilter, EventRecord, EventWithDeliveries, NewEvent,
    WebhookRecord,
};
use thermos_core::grant::GrantType;
use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use thermos_core::status::ConnectionStatus;
use time::OffsetDateTime;

pub use postgres::{PgOptions, PgStore};
pub use sqlite::{InstanceLockError, SqliteStore};

/// How many attempts are kept per connection; older ones are pruned.
pub const ATTEMPTS_KEPT_PER_CONNECTION: u32 = 50;

/// `at` at the store's precision: records keep timestamps to the
/// millisecond (the sub-millisecond part is dropped, rounding down), so a
/// caller comparing a timestamp it wrote with the one read back truncates
/// its own first.
pub fn truncate_to_millis(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_millisecond(at.millisecond())
        .expect("millisecond() is always below 1000")
}

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was hit (e.g. same project, provider, external_id).
    #[error("a connection with this project, provider and external_id already exists")]
    Conflict,
    /// Entry `index` (from 0) of a batch insert
    /// ([`Store::insert_connections`]) has the id or the (project, provider,
    /// external_id) of a stored connection, or of entry `earlier` of the same
    /// batch; nothing of the batch was written.
    #[error(
        "batch entry {index} has the id or the project, provider and external_id of {}",
        batch::conflicting_with(*.earlier)
    )]
    BatchConflict { index: usize, earlier: Option<usize> },
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds a value this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the pool had no free connection within its acquire timeout
    /// (every connection busy: too small a pool or slow queries).
    pub fn is_pool_exhausted(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::PoolTimedOut))
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The last failure recorded on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// Stable error code (`invalid_grant`, `server_error`, …).
    pub code: String,
    /// Short message, never a secret.
    pub message: String,
    /// HTTP status of the provider's answer, if any.
    pub http_status: Option<u16>,
    /// When it happened.
    pub at: OffsetDateTime,
}

/// A stored connection, tokens still sealed. Timestamps have millisecond
/// precision (see [`truncate_to_millis`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    pub id: ConnectionId,
    pub project: String,
    pub provider: String,
    pub external_id: String,
    pub access_token: Sealed,
    /// `None` when the connection was imported without a refresh token.
    pub refresh_token: Option<Sealed>,
    pub token_type: String,
    pub scope: Option<String>,
    /// When the current access token was obtained (import or refresh).
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub metadata: serde_json::Value,
    pub status: ConnectionStatus,
    /// When the engine should next refresh; `None` when not scheduled.
    pub next_refresh_at: Option<OffsetDateTime>,
    pub last_refreshed_at: Option<OffsetDateTime>,
    pub refresh_count: i64,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    /// Bumped on every change of the token columns.
    pub version: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// How the tokens are re-issued; fixed when the connection is created.
    pub grant: ConnectionGrant,
    /// When the refresh token dies, as the provider said
    /// (`refresh_token_expires_in`) or the importer gave; `None`: unknown.
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    /// When `connection.refresh_token_expiring` was emitted for the current
    /// `refresh_token_expires_at`; cleared whenever that value changes.
    pub refresh_token_warned_at: Option<OffsetDateTime>,
}

/// How a connection's tokens are re-issued (docs/grants.md): the grant type
/// and what it needs besides the provider app's credentials. Never a
/// secret: a `jwt_bearer` connection's private key is sealed
/// ([`Field::PrivateKey`](thermos_core::seal::Field::PrivateKey)) in the
/// `refresh_token` column, which the engine keeps across refreshes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionGrant {
    /// `refresh_token` (the default), `client_credentials` or `jwt_bearer`.
    pub grant_type: GrantType,
    /// The grant's parameters as JSON (`None` for `refresh_token`): the
    /// scope to request, the assertion's claims. The store does not
    /// interpret them.
    pub params: Option<serde_json::Value>,
}

/// A connection to insert. The id is chosen by the caller because the
/// sealed tokens are bound to it.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub id: ConnectionId,
    pub project: String,
    pub provider: String,
    pub external_id: String,
    pub access_token: Sealed,
    pub refresh_token: Option<Sealed>,
    pub token_type: String,
    pub scope: Option<String>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub metadata: serde_json::Value,
    pub next_refresh_at: OffsetDateTime,
    /// How the tokens are re-issued ([`ConnectionGrant::default`]: the
    /// user's refresh token).
    pub grant: ConnectionGrant,
    /// When the refresh token dies, if known.
    pub refresh_token_expires_at: Option<OffsetDateTime>,
}

/// New token columns, from a refresh or a user's reconnect.
#[derive(Debug, Clone)]
pub struct TokenUpdate {
    pub access_token: Sealed,
    /// In [`Store::finish_refresh`], `None` keeps the stored refresh token
    /// (providers that do not rotate); in [`Store::replace_tokens`], `None`
    /// means the user brought none and the stored one is cleared.
    pub refresh_token: Option<Sealed>,
    pub token_type: String,
    /// In [`Store::finish_refresh`], `None` keeps the stored scope (RFC 6749
    /// §5.1: omitted when unchanged); in [`Store::replace_tokens`], `None`
    /// clears it.
    pub scope: Option<String>,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub next_refresh_at: OffsetDateTime,
    /// When the refresh token dies. In [`Store::finish_refresh`], `None`
    /// keeps the stored value when `refresh_token` is `None` too (the
    /// refresh token did not change) and clears it when a new refresh token
    /// came without a lifetime; in [`Store::replace_tokens`], `None` clears
    /// it. Whenever the stored value changes, `refresh_token_warned_at` is
    /// cleared.
    pub refresh_token_expires_at: Option<OffsetDateTime>,
}

/// One `connection.refresh_token_expiring` warning to record
/// ([`Store::warn_refresh_tokens`]).
#[derive(Debug, Clone)]
pub struct RefreshTokenWarning {
    pub id: ConnectionId,
    /// The `refresh_token_expires_at` warned about: the mark applies only
    /// while it is still the stored one.
    pub refresh_token_expires_at: OffsetDateTime,
    /// The events to write with the mark (none for a connection that need
    /// not hear of it, e.g. one that already needs reauth).
    pub events: Vec<NewEvent>,
}

/// The state written after a failed refresh.
#[derive(Debug, Clone)]
pub struct FailureUpdate {
    pub status: ConnectionStatus,
    pub consecutive_failures: u32,
    pub last_error: LastError,
    /// `None` when the connection is no longer scheduled (`needs_reauth`).
    pub next_refresh_at: Option<OffsetDateTime>,
}

/// One refresh attempt, as recorded (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    pub started_at: OffsetDateTime,
    /// `scheduled`, `on_demand`, `forced`, `reset`, …
    pub trigger: String,
    /// `refreshed`, `failed`, `superseded` (another refresh won).
    pub outcome: String,
    pub error_code: Option<String>,
    pub http_status: Option<u16>,
    pub duration_ms: u64,
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub id: i64,
    pub connection_id: ConnectionId,
    pub attempt: NewAttempt,
}

/// Filters for listing connections (all optional).
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    pub project: Option<String>,
    pub provider: Option<String>,
    pub status: Option<ConnectionStatus>,
}

/// The result of trying to lease one connection.
// Returned once per call and matched at once, never stored in bulk: boxing
// the record would cost an allocation and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Claim {
    /// The lease is ours until the given time; the record is as claimed.
    Claimed(ConnectionRecord),
    /// Someone (maybe this process) holds an unexpired lease.
    Busy { lease_until: OffsetDateTime },
    /// No such connection.
    NotFound,
}

/// The result of committing a refresh.
// Returned once per call and matched at once, never stored in bulk: boxing
// the record would cost an allocation and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FinishOutcome {
    /// Committed; the record as it now stands.
    Committed(ConnectionRecord),
    /// The version changed since the claim (e.g. the user reconnected):
    /// nothing was written but the attempt.
    VersionChanged,
}

/// A project API key as stored: only a hash of the secret part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The public id part of the key (`thk_<key_id>_…`).
    pub key_id: String,
    pub project: String,
    /// SHA-256 of the whole key.
    pub secret_hash: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// The scope names granted (`read`, `token`, `admin`), as the service
    /// wrote them; the store does not interpret them. Keys stored before
    /// scopes existed read back with all three.
    pub scopes: Vec<String>,
    /// After this instant the key no longer authenticates; `None`: never.
    pub expires_at: Option<OffsetDateTime>,
    /// When the key was revoked; a revoked key is kept so listings show it.
    pub revoked_at: Option<OffsetDateTime>,
}

/// Connections counted by provider and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub provider: String,
    pub status: ConnectionStatus,
    pub count: u64,
}

/// A project's own OAuth client for a configured provider (a "custom
/// app"). One per (project, provider). Timestamps have millisecond
/// precision (see [`truncate_to_millis`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomAppRecord {
    pub project: String,
    /// The provider's slug.
    pub provider: String,
    pub client_id: String,
    /// Sealed for owner `app/{project}/{provider}`; `None` for a public
    /// client (`auth_method` `none`).
    pub client_secret: Option<Sealed>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub auth_method: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Everything Thermos persists. One implementation per database; every
/// implementation passes the conformance suite in `tests/conformance.rs`.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;

    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Inserts a new `active` connection at version 1, and `events` (with
    /// their deliveries, see [`Store::insert_events`]) in the same
    /// transaction. [`StoreError::Conflict`] if (project, provider,
    /// external_id) exists; then no event is written.
    async fn insert_connection(
        &self,
        new: NewConnection,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<ConnectionRecord>;

    /// Inserts every connection of `new` as [`Store::insert_connection`]
    /// would (`active`, version 1, `created_at` = `updated_at` = `now`), and
    /// `events` (with their deliveries), all in one transaction: a bulk
    /// import. All or nothing: if an entry has the id or the (project,
    /// provider, external_id) of a stored connection or of an earlier entry,
    /// [`StoreError::BatchConflict`] names the first such entry and nothing
    /// is written. An empty batch writes only `events`. Rows go in
    /// multi-row statements within the database's bind-parameter limits,
    /// so any number may be given; a large batch holds the write
    /// transaction (on SQLite, every writer) for its whole length.
    async fn insert_connections(
        &self,
        new: Vec<NewConnection>,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<()>;

    /// One connection.
    async fn get_connection(&self, id: ConnectionId) -> StoreResult<Option<ConnectionRecord>>;

    /// Connections matching `filter` with ids greater than `after`, in id
    /// (creation) order, at most `limit`.
    async fn list_connections(
        &self,
        filter: &ConnectionFilter,
        after: Option<ConnectionId>,
        limit: u32,
    ) -> StoreResult<Vec<ConnectionRecord>>;

    /// How many connections `project` holds (for the per-project limit).
    async fn count_project_connections(&self, project: &str) -> StoreResult<u64>;

    /// Replaces the tokens after the user reconnected: status `active`,
    /// failures cleared, version bumped, any lease dropped, `updated_at` =
    /// `now`. Unlike [`Store::finish_refresh`], every token column is
    /// replaced: a `None` refresh token or scope is stored as absent.
    /// `events` are written in the same transaction. `None` (and no event)
    /// if the connection does not exist.
    async fn replace_tokens(
        &self,
        id: ConnectionId,
        tokens: TokenUpdate,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<Option<ConnectionRecord>>;

    /// Connections of `provider` whose refresh token expires at or before
    /// `before` and that were not warned for that expiry
    /// (`refresh_token_warned_at` is NULL), any status, earliest expiry
    /// first, at most `limit`. One range scan of a partial index.
    async fn expiring_refresh_tokens(
        &self,
        provider: &str,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<ConnectionRecord>>;

    /// Marks each warning's connection warned at `now` if its
    /// `refresh_token_expires_at` is still the one warned about and it was
    /// not warned yet, and writes that warning's events only then; all in
    /// one transaction. Neither the version nor `updated_at` change.
    /// Returns how many were marked.
    async fn warn_refresh_tokens(&self, warnings: Vec<RefreshTokenWarning>, now: OffsetDateTime) -> StoreResult<u64>;

    /// Clears failures, sets status `active` and makes it due at `now`.
    /// The version and any lease are left as they are. `None` if missing.
    async fn reset_connection(&self, id: ConnectionId, now: OffsetDateTime) -> StoreResult<Option<ConnectionRecord>>;

    /// Deletes a connection and its attempts; false (and no event) if it did
    /// not exist. `events` are written in the same transaction; its earlier
    /// events and their deliveries are kept.
    async fn delete_connection(&self, id: ConnectionId, events: Vec<NewEvent>) -> StoreResult<bool>;

    /// The earliest `next_refresh_at` among scheduled (`active`, `failing`)
    /// connections — one index lookup, never a table scan.
    async fn next_due_at(&self) -> StoreResult<Option<OffsetDateTime>>;

    /// Leases up to `limit` scheduled connections due at `now` (earliest
    /// first) to `owner` until `lease_until`. A claim also moves
    /// `next_refresh_at` to `lease_until`, so a connection whose worker died
    /// comes due again exactly when the lease expires. A claim sets
    /// `updated_at` = `now` and never bumps the version. The records
    /// returned carry the lease, but `next_refresh_at` as it was planned
    /// before the claim (so the caller can measure lateness).
    async fn claim_due(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<ConnectionRecord>>;

    /// Leases one connection, whatever its due time, if no unexpired lease
    /// is held on it (by anyone, this owner included). A scheduled
    /// (`active`, `failing`) connection's `next_refresh_at` moves to
    /// `lease_until`, as in [`Store::claim_due`]; an unscheduled one's is
    /// left alone.
    async fn claim_connection(
        &self,
        id: ConnectionId,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> StoreResult<Claim>;

    /// Drops `owner`'s lease without a refresh and sets the next due time
    /// (of a scheduled connection only). Does nothing if `owner` does not
    /// hold the lease (expired or not) or the connection is gone.
    async fn release_lease(&self, id: ConnectionId, owner: &str, next_refresh_at: OffsetDateTime) -> StoreResult<()>;

    /// Commits a successful refresh if the version is still
    /// `expected_version`: new token columns, version + 1, status `active`,
    /// failures cleared, `refresh_count` + 1, lease dropped,
    /// `last_refreshed_at` = `updated_at` = `tokens.issued_at` —
    /// and records `attempt`, in one transaction. The lease owner is not
    /// checked, only the version: a worker whose lease expired still saves
    /// a rotated refresh token if nobody changed the tokens meanwhile. A
    /// connection deleted meanwhile is [`FinishOutcome::VersionChanged`]
    /// (and keeps no attempt). `events` are written in the same transaction
    /// when the refresh is committed, never on `VersionChanged`.
    async fn finish_refresh(
        &self,
        id: ConnectionId,
        expected_version: i64,
        tokens: TokenUpdate,
        attempt: NewAttempt,
        events: Vec<NewEvent>,
    ) -> StoreResult<FinishOutcome>;

    /// Records a failed refresh if the version is still `expected_version`
    /// (else only the attempt is recorded and `None` returned), dropping the
    /// lease, in one transaction. The version is not bumped (tokens are
    /// unchanged); `updated_at` = `failure.last_error.at`. A connection
    /// deleted meanwhile is `None` too. `events` are written in the same
    /// transaction when the failure is recorded, never when it returns `None`.
    async fn record_failure(
        &self,
        id: ConnectionId,
        expected_version: i64,
        failure: FailureUpdate,
        attempt: NewAttempt,
        events: Vec<NewEvent>,
    ) -> StoreResult<Option<ConnectionRecord>>;

    /// Records an attempt that changed nothing on the connection (one that
    /// found another refresh had already won, or whose response was lost and
    /// is about to be retried). Touches neither the row nor its lease.
    async fn record_attempt(&self, id: ConnectionId, attempt: NewAttempt) -> StoreResult<()>;

    /// Drops every lease, making leased scheduled connections due at `now`.
    /// Only for a starting instance that knows it is the database's sole
    /// user (the embedded SQLite case, guarded by a lock file): the leases
    /// of a crashed predecessor need not be waited out. Returns how many.
    async fn release_all_leases(&self, now: OffsetDateTime) -> StoreResult<u64>;

    /// The connection's most recent attempts, newest first.
    async fn list_attempts(&self, id: ConnectionId, limit: u32) -> StoreResult<Vec<AttemptRecord>>;

    /// Connection counts by provider and status.
    async fn count_by_status(&self) -> StoreResult<Vec<StatusCount>>;

    /// Stores a project API key (hash only).
    async fn insert_api_key(&self, key: ApiKeyRecord) -> StoreResult<()>;

    /// Looks a project API key up by its public id.
    async fn find_api_key(&self, key_id: &str) -> StoreResult<Option<ApiKeyRecord>>;

    /// Every API key, revoked ones included, of `project` (or of every
    /// project), oldest first (by `created_at`, then `key_id`).
    async fn list_api_keys(&self, project: Option<&str>) -> StoreResult<Vec<ApiKeyRecord>>;

    /// Revokes the key at `now` (a key already revoked keeps its first
    /// `revoked_at`). Returns the key as it now stands, `None` if unknown.
    async fn revoke_api_key(&self, key_id: &str, now: OffsetDateTime) -> StoreResult<Option<ApiKeyRecord>>;

    /// Registers `record` as its project's app for its provider, or replaces
    /// the credentials (client id, secret, auth method) of the one already
    /// registered; a replacement keeps the stored `created_at` and takes
    /// `record.updated_at`. Returns the record as stored: its `created_at`
    /// is earlier than `record.created_at` exactly when an app was replaced.
    async fn upsert_custom_app(&self, record: CustomAppRecord) -> StoreResult<CustomAppRecord>;

    /// The custom apps of `project` (of every project when `None`), ordered
    /// by project then provider.
    async fn list_custom_apps(&self, project: Option<&str>) -> StoreResult<Vec<CustomAppRecord>>;

    /// Deletes `project`'s app for `provider`; false if there was none.
    async fn delete_custom_app(&self, project: &str, provider: &str) -> StoreResult<bool>;

    // --- The outbox (see [`outbox`]) -------------------------------------

    /// Records events that go with no connection change (provider-wide
    /// events, alerts), in one transaction. Every event write, here or with
    /// a transition, fans out in the same transaction: an event of kind
    /// [`outbox::ALERT_KIND`] gets exactly one delivery to the operators'
    /// channel (`webhook_id` `None`); any other event with a project gets
    /// one delivery per live webhook of that project whose `events` filter
    /// is `None` or names its kind; other events get none. A delivery starts
    /// `pending`, due at `event.at`, with no attempt; its `created_at` is
    /// `event.at`. [`StoreError::Conflict`] if an event id exists (then
    /// nothing is written).
    async fn insert_events(&self, events: Vec<NewEvent>) -> StoreResult<()>;

    /// Registers a project webhook. [`StoreError::Conflict`] if the id exists.
    async fn insert_webhook(&self, record: WebhookRecord) -> StoreResult<()>;

    /// One webhook; `None` if it does not exist or was deleted.
    async fn get_webhook(&self, id: &str) -> StoreResult<Option<WebhookRecord>>;

    /// The live webhooks of `project` (of every project when `None`), in
    /// creation order.
    async fn list_webhooks(&self, project: Option<&str>) -> StoreResult<Vec<WebhookRecord>>;

    /// Deletes a webhook: its pending deliveries become `failed` with last
    /// error "webhook deleted" (lease dropped), and it no longer receives
    /// events. The row stays as a tombstone (invisible to `get_webhook` and
    /// `list_webhooks`) while deliveries name it, so they keep a valid
    /// `webhook_id`; [`Store::prune_outbox`] removes it after them. False if
    /// there was no live webhook with this id.
    async fn delete_webhook(&self, id: &str, now: OffsetDateTime) -> StoreResult<bool>;

    /// Leases up to `limit` deliveries to `owner` until `lease_until`: those
    /// `pending`, due (`next_attempt_at <= now`), unleased or with an
    /// expired lease, and with no earlier (lower id) pending delivery in the
    /// same channel — the same (`webhook_id`, `connection_id`), a `None` of
    /// either counting as one value — so one connection's events reach a
    /// receiver in order even across retries. Earliest id first. A claim
    /// moves `next_attempt_at` to `lease_until` (a dead worker's delivery
    /// comes due when its lease expires); the records returned carry
    /// `next_attempt_at` as it was before the claim. One index range scan.
    async fn claim_deliveries(
        &self,
        owner: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<Vec<DeliveryRecord>>;

    /// Records an attempt on a delivery, in one transaction: the attempt
    /// row, `attempts` + 1, `last_http_status` and `last_error` from it; and,
    /// if `owner` still holds the delivery's lease (expired or not), the
    /// outcome: [`DeliveryNext::Delivered`] → `delivered`, `delivered_at` =
    /// `attempt.at`; [`DeliveryNext::Retry`] → still `pending`, due at `at`;
    /// [`DeliveryNext::Failed`] → `failed`; lease dropped. A delivery
    /// leaving `pending` lets the next one of its channel be claimed. If
    /// `owner` lost the lease (the delivery was redelivered, its webhook
    /// deleted, or another worker claimed it) only the attempt is recorded.
    /// Nothing happens for an unknown id.
    async fn finish_delivery(
        &self,
        id: i64,
        owner: &str,
        attempt: DeliveryAttempt,
        next: DeliveryNext,
    ) -> StoreResult<()>;

    /// When the dispatcher next has work: the earliest `next_attempt_at`
    /// among claimable-in-order (first of their channel) pending deliveries,
    /// leased ones counting at their lease's end. One index lookup.
    async fn next_delivery_due_at(&self) -> StoreResult<Option<OffsetDateTime>>;

    /// Events matching `filter` with `seq < before_seq` (all when `None`),
    /// newest first (by `seq`), at most `limit`, each with its deliveries
    /// (by id).
    async fn list_events(
        &self,
        filter: &EventFilter,
        before_seq: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<EventWithDeliveries>>;

    /// One event with its deliveries (by id); `None` if unknown (or pruned).
    async fn get_event(&self, id: &str) -> StoreResult<Option<EventWithDeliveries>>;

    /// The attempts of one delivery, oldest first.
    async fn list_delivery_attempts(&self, delivery_id: i64) -> StoreResult<Vec<DeliveryAttempt>>;

    /// Sends an event again: each of its deliveries (except those of a
    /// deleted webhook) goes back to `pending`, due at `now`, lease dropped,
    /// attempt count kept, and its retry period restarts at `now`. It then goes out after any earlier pending
    /// delivery of its channel, and before later ones. Returns how many
    /// deliveries were reset (0 for an unknown event or one with none).
    async fn redeliver_event(&self, event_id: &str, now: OffsetDateTime) -> StoreResult<u64>;

    /// Events with `seq` greater than `seq`, ascending, at most `limit` (the
    /// alert aggregator's feed).
    async fn events_after(&self, seq: i64, limit: u32) -> StoreResult<Vec<EventRecord>>;

    /// The named consumer cursor (an event `seq`); 0 when never set.
    async fn get_cursor(&self, name: &str) -> StoreResult<i64>;

    /// Records `alerts` (with their deliveries, as [`Store::insert_events`])
    /// and sets the cursor `cursor_name` to `cursor`, in one transaction:
    /// after a crash either both happened or neither did, so an alert is
    /// never lost nor sent twice.
    async fn commit_alerts(&self, alerts: Vec<NewEvent>, cursor_name: &str, cursor: i64) -> StoreResult<()>;

    /// Retention: deletes `delivered` and `failed` deliveries created before
    /// `older_than` with their attempts, then events before `older_than`
    /// with no delivery left, then deleted webhooks no delivery names. A
    /// pending delivery and its event are never deleted. Returns the number
    /// of rows deleted (attempts, deliveries, events and webhooks together).
    async fn prune_outbox(&self, older_than: OffsetDateTime) -> StoreResult<u64>;

    /// How many deliveries are `pending` (the outbox backlog).
    async fn count_pending_deliveries(&self) -> StoreResult<u64>;
    // --- Runs (see [`run`]) ------------------------------------------------

    /// Inserts a `running` run with zero counts, heartbeat at `started_at`.
    /// [`StoreError::Conflict`] if the id exists.
    async fn insert_run(&self, new: run::NewRun) -> StoreResult<run::RunRecord>;

    /// Records a running run's progress and heartbeat; `None` if the run is
    /// unknown or no longer `running` (then nothing is written).
    async fn update_run_progress(
        &self,
        id: &str,
        counts: run::RunCounts,
        failures_by_code: run::FailuresByCode,
        heartbeat_at: OffsetDateTime,
    ) -> StoreResult<Option<run::RunRecord>>;

    /// Ends a running run with `status` and its final counts, and writes
    /// `events` (`run.succeeded`, `run.failed`, …) in the same transaction.
    /// `None` (and no event) if the run is unknown or no longer `running`.
    async fn finish_run(
        &self,
        id: &str,
        status: run::RunStatus,
        counts: run::RunCounts,
        failures_by_code: run::FailuresByCode,
        finished_at: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<Option<run::RunRecord>>;

    /// One run.
    async fn get_run(&self, id: &str) -> StoreResult<Option<run::RunRecord>>;

    /// The most recent runs (by start), newest first, at most `limit`.
    async fn list_runs(&self, limit: u32) -> StoreResult<Vec<run::RunRecord>>;

    /// Marks every `running` run whose heartbeat is older than
    /// `heartbeat_before` as `failed` and stale, finished at `now` (their
    /// process died). Returns how many.
    async fn mark_stale_runs(&self, heartbeat_before: OffsetDateTime, now: OffsetDateTime) -> StoreResult<u64>;

    /// Asks a running run to stop (its owner stops between batches and
    /// finishes it `cancelled`); false if it is unknown or not running.
    async fn cancel_run(&self, id: &str) -> StoreResult<bool>;

    // --- Audit log (see [`audit`]) ------------------------------------------

    /// Appends `entries`, in order, in one transaction. Entries are never
    /// updated or deleted afterwards.
    async fn append_audit(&self, entries: Vec<audit::NewAuditEntry>) -> StoreResult<()>;

    /// The entries matching `filter`, newest (highest id) first.
    async fn list_audit(&self, filter: audit::AuditFilter) -> StoreResult<Vec<audit::AuditRecord>>;

    // --- Live instances (see [`instance`]) ---------------------------------

    /// Registers `beat.name` or beats its heartbeat, and prunes dead
    /// instances, in one transaction. An unknown name is inserted with
    /// `beat.started_at` and `heartbeat_at` = `now`; a known one gets
    /// `heartbeat_at` = `now` and the beat's `engine_enabled` and `version`,
    /// keeping its stored `started_at` — unless its heartbeat is already
    /// later than `now` (a late beat never moves it back; then the row is
    /// left as it is). Then every row whose heartbeat is older than
    /// [`instance::INSTANCE_RETENTION`] (24 h) before `now` is deleted.
    /// Instances beating at once, on one name or on several, never fail or
    /// wait for each other's pruning: each ends with its row.
    async fn beat_instance(&self, beat: instance::InstanceBeat, now: OffsetDateTime) -> StoreResult<()>;

    /// The instances whose heartbeat is strictly later than `beat_after`
    /// (the caller's cutoff for "live", e.g. `now` − 15 s), ordered by name
    /// (bytewise).
    async fn live_instances(&self, beat_after: OffsetDateTime) -> StoreResult<Vec<instance::InstanceRecord>>;

    /// Deletes the instance's row (on a graceful stop, after its last
    /// beat); false if there was none. A later beat registers it again.
    async fn remove_instance(&self, name: &str) -> StoreResult<bool>;

    // --- Master key rotation (see [`reseal`]) -------------------------------

    /// A page of stored sealed values, in keyset order: the rows after
    /// `after` (a value's owner from the previous page; `None`: from the
    /// start) of the first table that still has some — connections by id,
    /// then custom apps by (project, provider), then webhooks by id, deleted
    /// ones included — at most `limit` rows, each row's sealed values
    /// (NULLs skipped). With `not_under`, only values whose key id is not
    /// that one (and only rows with such a value). Empty when no table has
    /// rows after `after`.
    async fn sealed_values_page(
        &self,
        after: Option<&reseal::SealedOwner>,
        limit: u32,
        not_under: Option<thermos_core::seal::KeyId>,
    ) -> StoreResult<Vec<reseal::SealedValue>>;

    /// Writes each replacement's `new` bytes where its `old` bytes are still
    /// stored (compare-and-swap per value), in one transaction, touching
    /// nothing else: no `version`, no `updated_at`. Returns how many were
    /// replaced; a value that changed since it was read is left alone.
    async fn replace_sealed(&self, batch: Vec<reseal::Reseal>) -> StoreResult<u64>;

    /// How many stored sealed values each key id holds, by key id (the
    /// values too short to name one last, as `None`).
    async fn count_sealed_by_key_id(&self) -> StoreResult<Vec<reseal::KeyIdCount>>;

    // --- Connect sessions (see [`connect`]) --------------------------------

    /// Inserts a `pending` session, not yet begun. [`StoreError::Conflict`]
    /// if the id exists.
    async fn insert_connect_session(
        &self,
        new: connect::NewConnectSession,
    ) -> StoreResult<connect::ConnectSessionRecord>;

    /// One session.
    async fn get_connect_session(&self, id: &str) -> StoreResult<Option<connect::ConnectSessionRecord>>;

    /// Begins a `pending` session whose expiry is after `now`: stores the
    /// state's hash and the sealed verifier (replacing those of an earlier
    /// begin, whose state then no longer consumes anything) and `begun_at`.
    /// A pending session past its expiry becomes `expired` (finished at
    /// `now`); any other is left as it is.
    async fn begin_connect_session(
        &self,
        id: &str,
        state_hash: Vec<u8>,
        code_verifier: Sealed,
        now: OffsetDateTime,
    ) -> StoreResult<connect::Begin>;

    /// Consumes the session holding `state_hash`, atomically and once: of
    /// any number of concurrent callers exactly one gets
    /// [`connect::Consume::Consumed`] (the session is then `exchanging`,
    /// `consumed_at` = `now`); later ones get `AlreadyUsed`. A pending
    /// session past its expiry becomes `expired` and is refused.
    async fn consume_connect_session(&self, state_hash: &[u8], now: OffsetDateTime) -> StoreResult<connect::Consume>;

    /// Ends an `exchanging` session `failed` with `error_code` and
    /// `message`, finished at `now`. `None` if it is unknown or not
    /// `exchanging` (then nothing is written).
    async fn fail_connect_session(
        &self,
        id: &str,
        error_code: &str,
        message: &str,
        now: OffsetDateTime,
    ) -> StoreResult<Option<connect::ConnectSessionRecord>>;

    /// The connection of `project` for (`provider`, `external_id`), if any.
    async fn find_connection(
        &self,
        project: &str,
        provider: &str,
        external_id: &str,
    ) -> StoreResult<Option<ConnectionRecord>>;

    /// Creates or reconnects a connection (see [`connect::Connect`]) and, in
    /// the same transaction, writes `events` (with their deliveries) and
    /// ends the `exchanging` session `session_id` (if given) `completed`
    /// with the connection's id, finished at `now`. A create is an `active`
    /// connection at version 1 as [`Store::insert_connection`] makes; a
    /// reconnect applies only at the expected version. On
    /// [`connect::ConnectOutcome::Stale`] nothing is written.
    async fn connect_connection(
        &self,
        session_id: Option<&str>,
        connect: connect::Connect,
        now: OffsetDateTime,
        events: Vec<NewEvent>,
    ) -> StoreResult<connect::ConnectOutcome>;
}

//! Backends and fixtures for the conformance suite.
//!
//! A backend is a fresh, migrated, empty store per test; fixtures are plain
//! records with good defaults, changed with struct-update syntax. Nothing
//! here sleeps or reads the clock: every time is an offset from [`T0`].

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

use tempfile::TempDir;
use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::{DeliveryAttempt, NewEvent, WebhookRecord};
use thermos_store::{
    FailureUpdate, LastError, NewAttempt, NewConnection, PgOptions, PgStore, SqliteStore, Store, TokenUpdate,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The fixed "now" of every test.
pub const T0: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

/// `T0` moved by `seconds`.
pub fn at(seconds: i64) -> OffsetDateTime {
    T0 + Duration::seconds(seconds)
}

/// A fresh store, and whatever keeps it alive (its temporary directory) or
/// cleans up after it (its PostgreSQL schema).
pub struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
    _schema: Option<Schema>,
}

impl Backend {
    /// The store under test.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }
}

/// A migrated SQLite store on a new file in a new temporary directory.
pub async fn sqlite() -> Backend {
    let (store, dir) = sqlite_store().await;
    Backend {
        store: Arc::new(store),
        _dir: Some(dir),
        _schema: None,
    }
}

/// The concrete SQLite store, for backend-specific tests.
pub async fn sqlite_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("thermos.db").display());
    let store = SqliteStore::open(&url).await.expect("open the SQLite store");
    store.migrate().await.expect("migrate the SQLite store");
    (store, dir)
}

/// Where the PostgreSQL cases run unless `THERMOS_TEST_DATABASE_URL` says
/// otherwise: the local server of the development machines and CI.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Test schemas are named `thermos_t_<unix seconds>_<pid>_<n>`; those older
/// than this are dropped by the next test run (a run killed before its
/// schemas' drops ran leaves them behind).
const STALE_SCHEMA_SECS: u64 = 3600;

/// A migrated PostgreSQL store in a new, empty schema of its own, or `None`
/// (having said so once) when no database answers and `CI` is not set.
pub async fn postgres() -> Option<Backend> {
    let (store, schema) = postgres_store().await?;
    Some(Backend {
        store: Arc::new(store),
        _dir: None,
        _schema: Some(schema),
    })
}

/// The concrete PostgreSQL store and its schema (dropped with the
/// [`Schema`]), for backend-specific tests.
pub async fn postgres_store() -> Option<(PgStore, Schema)> {
    static UNREACHABLE: AtomicBool = AtomicBool::new(false);
    static SWEPT: AtomicBool = AtomicBool::new(false);
    static NEXT: AtomicU64 = AtomicU64::new(1);
    if UNREACHABLE.load(Ordering::Relaxed) {
        return None;
    }
    let url = std::env::var("THERMOS_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    let connected = tokio::time::timeout(std::time::Duration::from_secs(5), PgConnection::connect(&url)).await;
    let mut admin = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return unreachable(&UNREACHABLE, &url, &error.to_string()),
        Err(_) => return unreachable(&UNREACHABLE, &url, "no answer within 5 s"),
    };
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if !SWEPT.swap(true, Ordering::Relaxed) {
        drop_stale_schemas(&mut admin, secs).await;
    }
    let name = format!(
        "thermos_t_{secs}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .execute(format!("CREATE SCHEMA \"{name}\"").as_str())
        .await
        .expect("create the test schema");
    admin.close().await.ok();
    let schema = Schema { url, name };
    let store = schema.connect().await;
    store.migrate().await.expect("migrate the PostgreSQL store");
    Some((store, schema))
}

/// No database: a failure on CI, a skip (said once) elsewhere.
fn unreachable<T>(flag: &AtomicBool, url: &str, error: &str) -> Option<T> {
    let url = &redacted(url);
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL at {url} is unreachable ({error}); CI must run the PostgreSQL conformance cases");
    }
    if !flag.swap(true, Ordering::Relaxed) {
        // Straight to the process's stderr: the test harness captures
        // `eprintln!` of passing tests, and this note must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "PostgreSQL tests skipped: no database at {url} ({error}); set THERMOS_TEST_DATABASE_URL \
             to a database the tests may create schemas in (e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
    }
    None
}

/// `url` with any password replaced by `***`, fit for a message.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Drops the test schemas a killed run left behind.
async fn drop_stale_schemas(admin: &mut PgConnection, now_secs: u64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'thermos\\_t\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names {
        let created = name
            .strip_prefix("thermos_t_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|created| created + STALE_SCHEMA_SECS < now_secs) {
            let _ = admin
                .execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
                .await;
        }
    }
}

/// A test's own schema; dropped (with everything in it) when this is.
pub struct Schema {
    url: String,
    name: String,
}

impl Schema {
    /// Another store (another pool) on the same schema, not migrated again.
    pub async fn connect(&self) -> PgStore {
        let options = PgOptions {
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(30),
            schema: Some(self.name.clone()),
        };
        PgStore::connect(&self.url, options)
            .await
            .expect("connect the PostgreSQL store")
    }

    /// A plain connection (no store) working in this schema, for statements
    /// the store never makes.
    pub async fn raw_connection(&self) -> PgConnection {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect to PostgreSQL");
        conn.execute(format!("SET search_path TO \"{}\"", self.name).as_str())
            .await
            .expect("set the search path");
        conn
    }
}

impl Drop for Schema {
    /// Drops the schema from a thread of its own with its own runtime: this
    /// runs inside the test's runtime, which cannot be blocked on.
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test schema");
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&url).await?;
                conn.execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test schema {}: {error}", self.name);
        }
    }
}

/// Sealed bytes standing in for a token (the store never opens them).
pub fn sealed(text: &str) -> Sealed {
    Sealed::from_bytes(text.as_bytes().to_vec())
}

/// A connection for `external_id`: project `acme`, provider `google`, a
/// one-hour token issued at `T0`, due five minutes before it expires.
pub fn connection(external_id: &str) -> NewConnection {
    NewConnection {
        id: ConnectionId::generate(),
        project: "acme".into(),
        provider: "google".into(),
        external_id: external_id.into(),
        access_token: sealed("access-1"),
        refresh_token: Some(sealed("refresh-1")),
        token_type: "Bearer".into(),
        scope: Some("read".into()),
        issued_at: T0,
        expires_at: at(3600),
        metadata: serde_json::json!({ "team": "blue", "seats": 3 }),
        next_refresh_at: at(3300),
        grant: Default::default(),
        refresh_token_expires_at: None,
    }
}

/// A connection for `external_id` that is due at `at(due_in)`.
pub fn due_connection(external_id: &str, due_in: i64) -> NewConnection {
    NewConnection {
        next_refresh_at: at(due_in),
        ..connection(external_id)
    }
}

/// New tokens issued at `at(issued)`: no refresh token, no scope.
pub fn tokens(access: &str, issued: i64) -> TokenUpdate {
    TokenUpdate {
        access_token: sealed(access),
        refresh_token: None,
        token_type: "Bearer".into(),
        scope: None,
        issued_at: at(issued),
        expires_at: at(issued + 3600),
        next_refresh_at: at(issued + 3300),
        refresh_token_expires_at: None,
    }
}

/// An attempt that started at `at(started)`.
pub fn attempt(outcome: &str, started: i64) -> NewAttempt {
    NewAttempt {
        started_at: at(started),
        trigger: "scheduled".into(),
        outcome: outcome.into(),
        error_code: None,
        http_status: None,
        duration_ms: 120,
    }
}

/// A failed attempt with `code` and `http_status`.
pub fn failed_attempt(code: &str, http_status: u16, started: i64) -> NewAttempt {
    NewAttempt {
        error_code: Some(code.into()),
        http_status: Some(http_status),
        ..attempt("failed", started)
    }
}

/// The state after a failed refresh at `at(happened)`.
pub fn failure(status: ConnectionStatus, failures: u32, happened: i64, next: Option<i64>) -> FailureUpdate {
    FailureUpdate {
        status,
        consecutive_failures: failures,
        last_error: LastError {
            code: "server_error".into(),
            message: "the provider answered 503".into(),
            http_status: Some(503),
            at: at(happened),
        },
        next_refresh_at: next.map(at),
    }
}

/// An event of `kind` at `at(happened)` with a fresh id, about `connection`
/// (`None`: provider-wide) of `project` (`None`: for operators only).
pub fn event(kind: &str, project: Option<&str>, connection: Option<ConnectionId>, happened: i64) -> NewEvent {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NewEvent {
        id: format!("evt_{:032x}", NEXT.fetch_add(1, Ordering::Relaxed)),
        kind: kind.into(),
        project: project.map(Into::into),
        connection_id: connection,
        provider: Some("google".into()),
        data: serde_json::json!({ "consecutive_failures": 3, "cause": "503" }),
        at: at(happened),
    }
}

/// A webhook `id` of `project` wanting `kinds` (`None`: all), created at
/// `at(created)`.
pub fn webhook(id: &str, project: &str, kinds: Option<&[&str]>, created: i64) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        project: project.into(),
        url: format!("https://hooks.example.com/{id}"),
        events: kinds.map(|k| k.iter().map(|s| (*s).to_owned()).collect()),
        secret: sealed(&format!("whsec_{id}")),
        created_at: at(created),
    }
}

/// A delivery attempt at `at(happened)` answered with `status` (`None`:
/// no answer, with an error).
pub fn delivery_attempt(status: Option<u16>, happened: i64) -> DeliveryAttempt {
    DeliveryAttempt {
        at: at(happened),
        http_status: status,
        latency_ms: 42,
        error: match status {
            Some(200..=299) => None,
            Some(other) => Some(format!("receiver answered {other}")),
            None => Some("connection refused".into()),
        },
    }
}

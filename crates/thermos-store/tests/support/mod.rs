//! Backends and fixtures for the conformance suite.
//!
//! A backend is a fresh, migrated, empty store per test; fixtures are plain
//! records with good defaults, changed with struct-update syntax. Nothing
//! here sleeps or reads the clock: every time is an offset from [`T0`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tempfile::TempDir;
use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::{DeliveryAttempt, NewEvent, WebhookRecord};
use thermos_store::{FailureUpdate, LastError, NewAttempt, NewConnection, SqliteStore, Store, TokenUpdate};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The fixed "now" of every test.
pub const T0: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);

/// `T0` moved by `seconds`.
pub fn at(seconds: i64) -> OffsetDateTime {
    T0 + Duration::seconds(seconds)
}

/// A fresh store, and whatever keeps it alive (its temporary directory).
pub struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<TempDir>,
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

// PostgreSQL goes here: `pub async fn postgres() -> Option<Backend>` that
// returns `None` (and says "skipped") unless THERMOS_TEST_DATABASE_URL is
// set, and otherwise gives each test its own empty schema or database —
// the cases assume they start from an empty store.

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

//! Connect sessions: the records of the authorization code flow (with PKCE)
//! that lets an end user connect an account through their browser.
//!
//! A session is created `pending` with no state; opening its start URL
//! *begins* it (a fresh `state`, stored only as a hash, and a fresh PKCE
//! code verifier, stored only sealed); the provider's redirect back
//! *consumes* it by the state's hash — once: the first consumer moves it to
//! `exchanging`, every later one is refused — and the code exchange ends it
//! `completed` (with the connection, in the same transaction as the
//! connection's creation or reconnect) or `failed` (with an error code).
//!
//! The store never sees a plaintext state or verifier, and never reads the
//! clock: expiry is checked against the `now` each method is given.
//!
//! Read next: `sqlite/connect.rs`, `postgres/connect.rs`, and the service's
//! `api/connect.rs` (what is done with these transitions).

use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use time::OffsetDateTime;

use crate::{ConnectionRecord, NewConnection, TokenUpdate};

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    /// Created (and perhaps begun): waiting for the provider's redirect.
    Pending,
    /// Its state was consumed; the code is being exchanged.
    Exchanging,
    /// A connection was created or reconnected.
    Completed,
    /// The provider or the exchange said no; the error is recorded.
    Failed,
    /// Used after its expiry; it can never complete.
    Expired,
}

impl SessionStatus {
    /// The stored (and API) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Exchanging => "exchanging",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "pending" => Self::Pending,
            "exchanging" => Self::Exchanging,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// A session to insert (`pending`, not begun).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnectSession {
    /// `cs_` and 32 hex digits, chosen by the caller.
    pub id: String,
    pub project: String,
    pub provider: String,
    pub external_id: String,
    /// The scopes to ask for (each without spaces, RFC 6749 §3.3).
    pub scopes: Vec<String>,
    /// Where the browser goes once the session ends.
    pub redirect_after: Option<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A stored session. Timestamps have millisecond precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSessionRecord {
    pub id: String,
    pub project: String,
    pub provider: String,
    pub external_id: String,
    pub scopes: Vec<String>,
    pub redirect_after: Option<String>,
    /// SHA-256 of the current state; `None` until begun.
    pub state_hash: Option<Vec<u8>>,
    /// The PKCE code verifier, sealed; `None` until begun.
    pub code_verifier: Option<Sealed>,
    pub status: SessionStatus,
    /// The connection created or reconnected (`completed`).
    pub connection_id: Option<ConnectionId>,
    /// Why it failed (`failed`, `expired`): an OAuth error code or Thermos's own.
    pub error_code: Option<String>,
    /// A short message, never a secret.
    pub error_message: Option<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// When it was last begun (its start URL opened).
    pub begun_at: Option<OffsetDateTime>,
    /// When its state was consumed.
    pub consumed_at: Option<OffsetDateTime>,
    /// When it became `completed`, `failed` or `expired`.
    pub finished_at: Option<OffsetDateTime>,
}

/// The result of [`crate::Store::begin_connect_session`].
#[derive(Debug, Clone)]
pub enum Begin {
    /// Begun: the new state hash and verifier replace any earlier ones.
    Begun(ConnectSessionRecord),
    /// It was still pending but past its expiry: now `expired`.
    Expired(ConnectSessionRecord),
    /// It is no longer pending (consumed, ended); nothing changed.
    NotPending(ConnectSessionRecord),
    /// No such session.
    NotFound,
}

/// The result of [`crate::Store::consume_connect_session`].
#[derive(Debug, Clone)]
pub enum Consume {
    /// This caller won: the session is now `exchanging`.
    Consumed(ConnectSessionRecord),
    /// It was pending but past its expiry: now `expired`.
    Expired(ConnectSessionRecord),
    /// The state was already consumed (or the session ended): refused.
    AlreadyUsed(ConnectSessionRecord),
    /// No session holds this state hash (forged, or replaced by a later begin).
    Unknown,
}

/// What a completed session connects.
// Built once per callback and consumed at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Connect {
    /// A new connection (its tokens sealed for `new.id`).
    Create(NewConnection),
    /// New tokens for the existing connection `id` (sealed for it), applied
    /// only if its version is still `expected_version`, with
    /// [`crate::Store::replace_tokens`]' semantics: status `active`,
    /// failures cleared, version bumped, lease dropped.
    Reconnect {
        id: ConnectionId,
        expected_version: i64,
        tokens: TokenUpdate,
    },
}

/// The result of [`crate::Store::connect_connection`].
// Returned once per call and matched at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ConnectOutcome {
    /// Created; the record as stored.
    Created(ConnectionRecord),
    /// Reconnected; the record as it now stands.
    Reconnected(ConnectionRecord),
    /// Nothing written: the (project, provider, external_id) was taken
    /// meanwhile (create), or the connection changed or went away
    /// (reconnect). Read it again and retry.
    Stale,
}

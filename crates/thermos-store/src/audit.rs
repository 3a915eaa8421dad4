//! The audit log: who did what to which resource, from where, when.
//!
//! Append-only: the store inserts and reads entries, never updates or
//! deletes one, and the database refuses both (triggers). An entry carries
//! the acting key's public id, never a secret. Repeated token reads by one
//! key of one connection from one address with one answer may be folded
//! into one entry with a `count` and the first and last time (the caller
//! decides; see the service's audit writer). Types only; the methods are on
//! [`crate::Store`].

use time::OffsetDateTime;

/// Longest text kept in a free-text field (action, actor, target, client,
/// request id); longer values are cut by the caller before storing.
pub const MAX_FIELD_LEN: usize = 200;

/// One entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// When it happened (the last time, for a folded entry).
    pub at: OffsetDateTime,
    /// For a folded entry, the first time; else equal to `at`.
    pub first_at: OffsetDateTime,
    /// The acting API key's public id (`admin` for the admin key, `cli` for
    /// a command run on the host).
    pub actor: String,
    /// The acting key's project (`None` for the admin key or the CLI).
    pub actor_project: Option<String>,
    /// What was done, e.g. `token.read`, `connection.delete`.
    pub action: String,
    /// The resource acted on (a connection, webhook, run or key id, or a
    /// provider slug), when there is one.
    pub target: Option<String>,
    /// The client's address as the server saw it.
    pub client: Option<String>,
    /// The request id (`x-request-id`), to find the request's log lines.
    pub request_id: Option<String>,
    /// The HTTP status of the answer (0 when not an HTTP request).
    pub status: u16,
    /// How many occurrences this entry stands for (1 unless folded).
    pub count: u32,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Increasing in insertion order on one database.
    pub id: i64,
    /// The entry as appended (timestamps with millisecond precision).
    pub entry: NewAuditEntry,
}

/// Which entries to list: every given filter must match. Newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Only entries whose `at` is at or after this.
    pub since: Option<OffsetDateTime>,
    /// Only entries whose id is below this (the next page of a listing).
    pub before_id: Option<i64>,
    /// At most this many (the caller caps it).
    pub limit: u32,
}

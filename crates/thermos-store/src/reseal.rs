//! Re-encryption after a master key rotation: the sealed values of every
//! table, read in keyset-paginated pages, replaced by compare-and-swap on
//! their bytes, and counted by the key that sealed them.
//!
//! A replacement never bumps a row's `version` and never overwrites a value
//! that changed since it was read: the engine may be refreshing the same
//! connection, and a changed version would make it discard a result whose
//! new refresh token must be kept. A value that changed in between is simply
//! left for the next pass. The store never opens a value: which key sealed
//! it is the key id in its header (bytes 2 to 9, after the format byte), and
//! the caller decides what to write.
//!
//! Read next: `sqlite/reseal.rs`, `postgres/reseal.rs`, and the caller,
//! `thermos keys rotate-master` (`crates/thermos/src/cli/master_key.rs`).

use thermos_core::id::ConnectionId;
use thermos_core::seal::{KeyId, Sealed};

/// The row a sealed value lives in. Pages walk connections (by id), then
/// custom apps (by project, provider), then webhooks (by id, deleted ones
/// included: their secrets are still sealed values).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SealedOwner {
    /// A connection's tokens.
    Connection(ConnectionId),
    /// A project's custom app's client secret.
    CustomApp {
        /// The project.
        project: String,
        /// The provider slug.
        provider: String,
    },
    /// A webhook's signing secret.
    Webhook(String),
}

/// Which column of its row a sealed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedColumn {
    /// `connections.access_token`.
    AccessToken,
    /// `connections.refresh_token`.
    RefreshToken,
    /// `custom_apps.client_secret`.
    ClientSecret,
    /// `webhooks.secret`.
    WebhookSecret,
}

/// One stored sealed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// Its row.
    pub owner: SealedOwner,
    /// Its column.
    pub column: SealedColumn,
    /// The bytes as stored.
    pub sealed: Sealed,
}

/// A replacement: `new` is written where `old` is still stored.
#[derive(Debug, Clone)]
pub struct Reseal {
    /// The row.
    pub owner: SealedOwner,
    /// The column (must belong to the owner's table).
    pub column: SealedColumn,
    /// The bytes read (the compare).
    pub old: Sealed,
    /// The bytes to write (the swap).
    pub new: Sealed,
}

/// How many stored sealed values name one key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIdCount {
    /// The key id, `None` for values too short to hold one (malformed).
    pub key_id: Option<KeyId>,
    /// How many values.
    pub count: u64,
}

/// Whether `sealed` should be in a page filtered to values not under `primary`.
pub(crate) fn wanted(sealed: &Sealed, not_under: Option<KeyId>) -> bool {
    not_under.is_none_or(|primary| sealed.key_id() != Some(primary))
}

/// Sorts counts by key id (malformed last) and merges duplicates.
pub(crate) fn merge_counts(rows: impl IntoIterator<Item = (Option<KeyId>, u64)>) -> Vec<KeyIdCount> {
    let mut merged: std::collections::BTreeMap<(bool, Option<KeyId>), u64> = Default::default();
    for (key_id, count) in rows {
        *merged.entry((key_id.is_none(), key_id)).or_default() += count;
    }
    merged
        .into_iter()
        .map(|((_, key_id), count)| KeyIdCount { key_id, count })
        .collect()
}

/// The position of an owner's table in the walk (connections, custom apps,
/// webhooks).
pub(crate) fn table_of(owner: &SealedOwner) -> u8 {
    match owner {
        SealedOwner::Connection(_) => 0,
        SealedOwner::CustomApp { .. } => 1,
        SealedOwner::Webhook(_) => 2,
    }
}

/// Table, then key: the order a batch's rows are locked in, the same as the
/// group commit's (connections by id), so that they cannot deadlock.
pub(crate) fn order_key(owner: &SealedOwner) -> (u8, String, String) {
    match owner {
        SealedOwner::Connection(id) => (0, id.to_string(), String::new()),
        SealedOwner::CustomApp { project, provider } => (1, project.clone(), provider.clone()),
        SealedOwner::Webhook(id) => (2, id.clone(), String::new()),
    }
}

/// `WHERE` and the present conditions joined with `AND`, or nothing.
pub(crate) fn conditions(parts: &[Option<&str>]) -> String {
    let parts: Vec<&str> = parts.iter().flatten().copied().collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", parts.join(" AND "))
    }
}

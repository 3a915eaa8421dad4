//! Live instances: the registry of Thermos processes sharing one database.
//!
//! Every serving instance beats its row every few seconds
//! ([`crate::Store::beat_instance`]) and removes it on a graceful stop
//! ([`crate::Store::remove_instance`]); readers ask for the rows that beat
//! recently ([`crate::Store::live_instances`]) — `thermos doctor`, `/ready`,
//! and the engine, which divides every provider app's limits among them. A
//! dead instance's row stops beating, drops out of the live set, and is
//! deleted by a later beat of any instance once it is
//! [`INSTANCE_RETENTION`] old.
//!
//! The store never decides what "live" means (the caller passes the cutoff)
//! and never reads the clock. Types only; the methods are on
//! [`crate::Store`].

use time::{Duration, OffsetDateTime};

/// How long an instance's row is kept after its last heartbeat: every beat
/// deletes rows whose heartbeat is older than this, so instances that died
/// without removing themselves do not pile up.
pub const INSTANCE_RETENTION: Duration = Duration::hours(24);

/// One heartbeat of an instance, as the instance reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceBeat {
    /// The instance's name (its lease-owner name, `thermos-{pid}-{random}`,
    /// new at every start).
    pub name: String,
    /// When the instance started. Stored by its first beat; later beats do
    /// not change it.
    pub started_at: OffsetDateTime,
    /// Whether the instance runs the engine (false for an API-only one).
    pub engine_enabled: bool,
    /// The binary's version string, as given by the caller.
    pub version: String,
}

/// A registered instance. Timestamps have millisecond precision (see
/// [`crate::truncate_to_millis`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// The instance's name (unique).
    pub name: String,
    /// When the instance started, as its first beat reported it.
    pub started_at: OffsetDateTime,
    /// The latest `now` the instance beat at.
    pub heartbeat_at: OffsetDateTime,
    /// Whether the instance runs the engine (false for an API-only one).
    pub engine_enabled: bool,
    /// The binary's version string the instance reported.
    pub version: String,
}

//! Runs: bulk refresh operations over many connections.
//!
//! A run is `running` while its owner refreshes the matching connections in
//! batches and beats its heartbeat; it ends `succeeded`, `failed` or
//! `cancelled`. A running run whose heartbeat stopped is marked stale
//! ([`crate::Store::mark_stale_runs`]). The engine decides the outcome; the
//! store only records it.
//!
//! Types only; the methods are on [`crate::Store`].

use std::collections::BTreeMap;

use time::OffsetDateTime;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// A run's counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Connections the run selected.
    pub total: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Selected but not attempted (not refreshable, provider paused, busy).
    pub skipped: u64,
}

/// Failed attempts counted by error code.
pub type FailuresByCode = BTreeMap<String, u64>;

/// A run to insert (status `running`, counts zero).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// `run_` + UUIDv7 simple hex.
    pub id: String,
    /// `manual` (CLI), `api`, `sweep`.
    pub trigger: String,
    /// The selection, as given (never a secret).
    pub filter: serde_json::Value,
    /// The run fails when more than this share of attempts fail.
    pub failure_threshold: f64,
    /// The instance running it.
    pub owner: String,
    pub started_at: OffsetDateTime,
}

/// A stored run. Timestamps have millisecond precision.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub trigger: String,
    pub filter: serde_json::Value,
    pub status: RunStatus,
    pub counts: RunCounts,
    pub failures_by_code: FailuresByCode,
    pub failure_threshold: f64,
    pub owner: String,
    /// The run's process died: its heartbeat stopped while it was running.
    pub stale: bool,
    /// Someone asked the run to stop; its owner stops between batches.
    pub cancel_requested: bool,
    pub heartbeat_at: OffsetDateTime,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

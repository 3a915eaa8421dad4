//! In-process counters of the engine (the demo's summary line reads them;
//! Prometheus metrics come on top later).

use std::sync::atomic::{AtomicU64, Ordering};

/// Atomic counters, updated by refresh tasks.
#[derive(Debug, Default)]
pub struct EngineStats {
    refreshed: AtomicU64,
    failed: AtomicU64,
    needs_reauth: AtomicU64,
    superseded: AtomicU64,
    scheduled_started: AtomicU64,
    deferred: AtomicU64,
    lost_responses: AtomicU64,
    max_lateness_ms: AtomicU64,
    total_lateness_ms: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Successful refreshes.
    pub refreshed: u64,
    /// Failed attempts (any reason).
    pub failed: u64,
    /// Connections moved to `needs_reauth`.
    pub needs_reauth: u64,
    /// Attempts that found another refresh had already won.
    pub superseded: u64,
    /// Scheduled refreshes started.
    pub scheduled_started: u64,
    /// Refreshes deferred because their provider app was paused.
    pub deferred: u64,
    /// Responses lost in transit (then retried once).
    pub lost_responses: u64,
    /// Worst delay between a planned refresh time and its start, in ms.
    pub max_lateness_ms: u64,
    /// Sum of those delays, in ms (for a mean).
    pub total_lateness_ms: u64,
}

impl EngineStats {
    pub(super) fn refreshed(&self) {
        self.refreshed.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn needs_reauth(&self) {
        self.needs_reauth.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn superseded(&self) {
        self.superseded.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn lost_response(&self) {
        self.lost_responses.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn scheduled_start(&self, lateness_ms: u64) {
        self.scheduled_started.fetch_add(1, Ordering::Relaxed);
        self.max_lateness_ms.fetch_max(lateness_ms, Ordering::Relaxed);
        self.total_lateness_ms.fetch_add(lateness_ms, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            refreshed: self.refreshed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            needs_reauth: self.needs_reauth.load(Ordering::Relaxed),
            superseded: self.superseded.load(Ordering::Relaxed),
            scheduled_started: self.scheduled_started.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            lost_responses: self.lost_responses.load(Ordering::Relaxed),
            max_lateness_ms: self.max_lateness_ms.load(Ordering::Relaxed),
            total_lateness_ms: self.total_lateness_ms.load(Ordering::Relaxed),
        }
    }
}

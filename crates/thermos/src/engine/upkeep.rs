//! Upkeep of runs in a serving instance: runs whose process died are marked
//! stale every half `runs.stale_after` (not only at start-up), and, when
//! `runs.sweep_every` is set, a sweep run refreshes what the scheduler left
//! overdue.
//!
//! Read next: `run.rs` (the heartbeat, the sweep's filter).

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use super::Engine;

/// When and what the sweep refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Time between two sweeps (the first one this long after start).
    pub every: Duration,
    /// A sweep takes the connections whose planned refresh is at least this late.
    pub overdue_by: Duration,
}

impl Engine {
    /// Marks stale runs and sweeps (when `sweep` is set) until `cancel`.
    pub async fn drive_upkeep(&self, sweep: Option<Sweep>, cancel: CancellationToken) {
        let stale_every = self.settings().run_stale_after / 2;
        let mut stale_ticks = interval_at(Instant::now() + stale_every, stale_every);
        stale_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sweep_ticks = sweep.map(|sweep| {
            let mut ticks = interval_at(Instant::now() + sweep.every, sweep.every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (ticks, sweep.overdue_by)
        });
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = stale_ticks.tick() => {
                    if let Err(e) = self.mark_stale_runs().await {
                        tracing::warn!(error.message = %e, "marking stale runs failed");
                    }
                }
                overdue_by = next_sweep(&mut sweep_ticks) => {
                    // A sweep stops with the instance: it is not waited for.
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        swept = self.sweep(overdue_by) => {
                            if let Err(e) = swept {
                                tracing::warn!(error.message = %e, "sweep failed");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Completes at the next sweep time with the sweep's `overdue_by`; never
/// without a sweep.
async fn next_sweep(ticks: &mut Option<(Interval, Duration)>) -> Duration {
    match ticks {
        Some((ticks, overdue_by)) => {
            ticks.tick().await;
            *overdue_by
        }
        None => std::future::pending().await,
    }
}

//! Upkeep in a serving instance: runs whose process died are marked stale
//! every half `runs.stale_after` (not only at start-up); when
//! `runs.sweep_every` is set, a sweep run refreshes what the scheduler left
//! overdue; and every [`REFRESH_TOKEN_SCAN_EVERY`] refresh tokens close to
//! their expiry are reported once (`connection.refresh_token_expiring`).
//!
//! Read next: `run.rs` (the heartbeat, the sweep's filter),
//! docs/refresh-token-lifetime.md.

use std::time::Duration;

use thermos_core::status::ConnectionStatus;
use thermos_store::{RefreshTokenWarning, StoreResult};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use super::{Engine, events};

/// How often the upkeep looks for refresh tokens close to expiry.
pub const REFRESH_TOKEN_SCAN_EVERY: Duration = Duration::from_secs(5 * 60);
/// Connections read (and marked) per page of that scan.
const REFRESH_TOKEN_PAGE: u32 = 200;
/// Pages per provider per scan; the rest waits for the next scan.
const REFRESH_TOKEN_PAGES: usize = 25;

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
        let mut refresh_token_ticks = interval_at(Instant::now(), REFRESH_TOKEN_SCAN_EVERY);
        refresh_token_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = refresh_token_ticks.tick() => {
                    if let Err(e) = self.warn_expiring_refresh_tokens().await {
                        tracing::warn!(error.message = %e, "looking for expiring refresh tokens failed");
                    }
                }
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

impl Engine {
    /// Emits `connection.refresh_token_expiring` once per refresh-token
    /// expiry for every connection whose refresh token dies within its
    /// provider's `refresh_token_warn_before` (or has died), marking it
    /// warned in the same transaction; a connection that already needs
    /// reauth is marked without an event. Bounded pages per provider.
    /// Returns how many were marked.
    pub async fn warn_expiring_refresh_tokens(&self) -> StoreResult<u64> {
        let now = self.now();
        let mut marked = 0;
        for app in self.inner.apps.configured() {
            let before = now + app.refresh_token_rules.warn_before;
            for _ in 0..REFRESH_TOKEN_PAGES {
                let page = self
                    .inner
                    .store
                    .expiring_refresh_tokens(&app.slug, before, REFRESH_TOKEN_PAGE)
                    .await?;
                let full = page.len() == REFRESH_TOKEN_PAGE as usize;
                let warnings: Vec<RefreshTokenWarning> = page
                    .iter()
                    .filter_map(|record| {
                        let events = match record.status {
                            ConnectionStatus::NeedsReauth => Vec::new(),
                            _ => events::refresh_token_expiring(record, now).into_iter().collect(),
                        };
                        Some(RefreshTokenWarning {
                            id: record.id,
                            refresh_token_expires_at: record.refresh_token_expires_at?,
                            events,
                        })
                    })
                    .collect();
                if warnings.is_empty() {
                    break;
                }
                let done = self.inner.store.warn_refresh_tokens(warnings, now).await?;
                if done > 0 {
                    self.events_committed();
                }
                marked += done;
                if !full {
                    break;
                }
            }
        }
        Ok(marked)
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

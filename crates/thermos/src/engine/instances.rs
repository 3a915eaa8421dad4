//! Live instances: every serving instance beats its row in the store every
//! [`INSTANCE_BEAT`]; the instances whose beat is younger than
//! [`INSTANCE_ALIVE`] are the live ones. Each beat reads them back and
//! divides every provider app's limits by their number, so that instances
//! sharing a database stay within a provider's `max_concurrency` and
//! `rate_limit_per_second` together. `/ready`, `/metrics` and `thermos
//! doctor` show them. A graceful stop removes the row; a crashed instance's
//! row stops beating and drops out of the live set within [`INSTANCE_ALIVE`].
//!
//! Read next: `gate.rs` (`set_share`), `upkeep.rs`.

use std::time::Duration;

use thermos_store::StoreResult;
use thermos_store::instance::{InstanceBeat, InstanceRecord};
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use super::Engine;

/// How often an instance beats.
pub const INSTANCE_BEAT: Duration = Duration::from_secs(5);
/// An instance whose last beat is older than this is not live (three beats).
pub const INSTANCE_ALIVE: Duration = Duration::from_secs(15);

impl Engine {
    /// Beats this instance's row, reads the live instances back and shares
    /// the provider limits among them; returns them.
    pub async fn beat_instance(
        &self,
        started_at: time::OffsetDateTime,
        engine_enabled: bool,
    ) -> StoreResult<Vec<InstanceRecord>> {
        let now = super::truncate_ms(self.now());
        let beat = InstanceBeat {
            name: self.settings().owner.clone(),
            started_at,
            engine_enabled,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        self.store().beat_instance(beat, now).await?;
        let live = self.store().live_instances(now - INSTANCE_ALIVE).await?;
        let count = u32::try_from(live.len()).unwrap_or(u32::MAX).max(1);
        if count != self.guards().share() {
            tracing::info!(
                instances = count,
                "live instances changed; provider limits are shared among them"
            );
        }
        self.guards().set_share(count);
        metrics::gauge!(crate::metrics::INSTANCES_LIVE).set(f64::from(count));
        *self.live_lock() = live.clone();
        Ok(live)
    }

    /// The live instances as of the last beat (empty before the first).
    pub fn live_instances(&self) -> Vec<InstanceRecord> {
        self.live_lock().clone()
    }

    fn live_lock(&self) -> std::sync::MutexGuard<'_, Vec<InstanceRecord>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Beats every [`INSTANCE_BEAT`] until `cancel`, then removes this
    /// instance's row. A failed beat is logged and retried at the next.
    pub async fn drive_instance_beat(&self, engine_enabled: bool, cancel: CancellationToken) {
        let started_at = super::truncate_ms(self.now());
        let mut ticks = interval_at(Instant::now(), INSTANCE_BEAT);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticks.tick() => {
                    if let Err(e) = self.beat_instance(started_at, engine_enabled).await {
                        tracing::warn!(error.message = %e, "instance heartbeat failed");
                    }
                }
            }
        }
        if let Err(e) = self.store().remove_instance(&self.settings().owner).await {
            tracing::warn!(error.message = %e, "could not remove this instance from the live instances");
        }
    }
}

//! The due-time scheduler: one dumb loop. [`Engine::tick`] claims one batch
//! of due connections and starts their refreshes; [`Engine::drive`] sleeps
//! until the next due time, wakes early on a notify, stops on cancel.
//!
//! It never scans the whole table: "what is due" and "when is the next one
//! due" are index range lookups in the store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{CLAIM_BATCH, Engine, MAX_IDLE, Trigger, flight};
use crate::metrics as m;

/// When the scheduler should look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextWake {
    /// More work is due already.
    Now,
    /// The earliest due time of the remaining work.
    At(OffsetDateTime),
    /// Every refresh permit is taken; wait for one.
    Saturated,
    /// Nothing scheduled.
    Idle,
}

impl Engine {
    /// One scheduler step at `now`: claims up to one batch of due
    /// connections (no more than there are free permits) and starts a
    /// refresh for each.
    pub async fn tick(&self, now: OffsetDateTime) -> Result<NextWake, thermos_store::StoreError> {
        let inner = &self.inner;
        let free = inner.permits.available_permits() as u32;
        if free == 0 {
            return Ok(NextWake::Saturated);
        }
        let limit = free.min(CLAIM_BATCH);
        let lease_until = now + inner.settings.lease_ttl();
        let claimed = inner
            .store
            .claim_due(&inner.settings.owner, now, lease_until, limit)
            .await?;
        let batch_full = claimed.len() as u32 == limit;
        // Scheduler lag: how overdue the earliest due connection was when picked up.
        let mut lag = claimed
            .first()
            .and_then(|r| r.next_refresh_at)
            .map_or(Duration::ZERO, |at| Duration::try_from(now - at).unwrap_or_default());
        for record in claimed {
            let planned = record.next_refresh_at.unwrap_or(now);
            let lateness = Duration::try_from(now - planned).unwrap_or_default();
            let lateness_ms = lateness.as_millis() as u64;
            match Arc::clone(&inner.permits).try_acquire_owned() {
                Ok(permit) => {
                    inner.stats.scheduled_start(lateness_ms);
                    metrics::histogram!(m::REFRESH_LATENESS_SECONDS).record(lateness.as_secs_f64());
                    let id = record.id;
                    if !flight::start_claimed(inner, record, permit, Trigger::Scheduled) {
                        // An on-demand flight registered itself before it
                        // claimed the row: hand the lease to it rather than
                        // leave both waiting until the lease expires.
                        release(inner, id, planned).await;
                    }
                }
                Err(_) => {
                    // An on-demand refresh took the permit meanwhile: hand the connection back.
                    release(inner, record.id, planned).await;
                }
            }
        }
        if batch_full {
            metrics::gauge!(m::SCHEDULER_LAG_SECONDS).set(lag.as_secs_f64());
            return Ok(NextWake::Now);
        }
        let next_due = inner.store.next_due_at().await?;
        if let Some(at) = next_due.filter(|at| *at <= now) {
            lag = lag.max(Duration::try_from(now - at).unwrap_or_default());
        }
        metrics::gauge!(m::SCHEDULER_LAG_SECONDS).set(lag.as_secs_f64());
        Ok(match next_due {
            Some(at) if at <= now => NextWake::Now,
            Some(at) => NextWake::At(at),
            None => NextWake::Idle,
        })
    }

    /// Runs the scheduler until `cancel` fires.
    pub async fn drive(&self, cancel: CancellationToken) {
        let mut store_errors = 0u32;
        let mut gauges_updated: Option<std::time::Instant> = None;
        loop {
            if gauges_updated.is_none_or(|at| at.elapsed() >= m::CONNECTION_GAUGES_EVERY) {
                m::update_connection_gauges(self.inner.store.as_ref()).await;
                gauges_updated = Some(std::time::Instant::now());
            }
            let wake = match self.tick(self.now()).await {
                Ok(wake) => {
                    store_errors = 0;
                    wake
                }
                Err(e) => {
                    store_errors += 1;
                    error!(error.message = %e, error.chain = %super::refresh::error_chain(&e), "scheduler tick failed");
                    NextWake::At(self.now() + Duration::from_millis(100 * u64::from(store_errors.min(50))))
                }
            };
            let pause = match wake {
                NextWake::Now => continue_after_yield(),
                NextWake::At(at) => Duration::try_from(at - self.now()).unwrap_or_default().min(MAX_IDLE),
                NextWake::Idle | NextWake::Saturated => MAX_IDLE,
            };
            let until = self.now() + pause;
            let until_ms = (until.unix_timestamp_nanos() / 1_000_000) as i64;
            self.inner.sleeping_until_ms.store(until_ms, Ordering::Relaxed);
            let permits = Arc::clone(&self.inner.permits);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = permits.acquire(), if wake == NextWake::Saturated => {}
            }
            // While a tick runs, any new due time wakes the next sleep at once (no lost wake-up).
            self.inner.sleeping_until_ms.store(i64::MAX, Ordering::Relaxed);
        }
    }
}

/// Drops this instance's lease on `id` without a refresh, due again at
/// `planned`; a failure only means the lease expires by itself.
async fn release(inner: &super::Inner, id: thermos_core::id::ConnectionId, planned: OffsetDateTime) {
    if let Err(e) = inner.store.release_lease(id, &inner.settings.owner, planned).await {
        warn!(connection_id = %id, error.message = %e, "releasing a lease failed; it will expire");
    }
}

/// No pause: loop at once (the select still lets cancellation through).
fn continue_after_yield() -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use secrecy::SecretString;
    use thermos_core::clock::ManualClock;
    use thermos_core::id::ConnectionId;
    use thermos_core::seal::{Field, MasterKey};
    use thermos_store::{NewConnection, SqliteStore, Store};
    use time::macros::datetime;

    use crate::engine::{Engine, EngineSettings};
    use crate::provider::RefreshClient;

    #[tokio::test]
    async fn a_row_claimed_while_an_on_demand_flight_is_registered_is_handed_back_not_left_leased() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let now = datetime!(2026-01-01 12:00:00 UTC);
        let key = MasterKey::generate().0;
        let id = ConnectionId::generate();
        let due = NewConnection {
            id,
            project: "p".into(),
            provider: "acme".into(),
            external_id: "u1".into(),
            access_token: key.seal(&id, Field::AccessToken, &SecretString::from("at")),
            refresh_token: Some(key.seal(&id, Field::RefreshToken, &SecretString::from("rt"))),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now - time::Duration::hours(1),
            expires_at: now + time::Duration::minutes(1),
            metadata: serde_json::json!({}),
            next_refresh_at: now - time::Duration::seconds(1),
            grant: Default::default(),
            refresh_token_expires_at: None,
        };
        store.insert_connection(due, now, Vec::new()).await.unwrap();
        let settings = EngineSettings {
            policy: Default::default(),
            max_concurrency: 4,
            request_timeout: Duration::from_secs(5),
            owner: "thermos-test".into(),
            escalate_after: 3,
            failure_threshold: 0.1,
            run_stale_after: Duration::from_secs(60),
        };
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::new(key),
            Vec::new(),
            RefreshClient::new(Duration::from_secs(5)),
            Arc::new(ManualClock::new(now)),
            settings,
        );
        // An on-demand flight of the connection is registered but has not
        // claimed the row yet when the scheduler claims it.
        engine.inner.flights.register_pending(id);
        engine.tick(now).await.unwrap();

        let row = store.get_connection(id).await.unwrap().unwrap();
        assert_eq!(row.lease_owner, None, "the scheduler's lease was handed back");
        assert_eq!(
            row.next_refresh_at,
            Some(now - time::Duration::seconds(1)),
            "due as planned"
        );
    }
}

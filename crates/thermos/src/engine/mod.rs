//! The refresh engine: the scheduler that keeps every token fresh, and the
//! single-flight refresh that on-demand callers share.
//!
//! Only the engine changes tokens. It never sends one refresh token twice at
//! once: in this process a refresh of a connection is one shared future
//! ([`flight`]); across processes the store's lease decides who may refresh.
//! The new refresh token is committed before the new access token is handed
//! to anyone ([`refresh`]). Time comes from the injected [`Clock`].
//!
//! Read next: `refresh.rs` (one refresh, start to finish), `scheduler.rs`
//! (the due-time loop), `token.rs` (on-demand tokens).

mod apps;
mod call;
pub mod events;
mod flight;
mod forced;
pub mod gate;
pub mod grant;
pub mod guard;
pub mod instances;
mod refresh;
pub mod run;
mod scheduler;
mod stats;
mod token;
pub mod upkeep;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use thermos_core::breaker::BreakerPolicy;
use thermos_core::clock::Clock;
use thermos_core::id::ConnectionId;
use thermos_core::plan::RefreshPolicy;
use thermos_core::seal::MasterKey;
use thermos_store::Store;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;

use crate::provider::{ProviderApp, RefreshClient};

pub use apps::{AppKey, AppRegistry};
pub use flight::FlightResult;
pub use scheduler::NextWake;
pub use stats::{EngineStats, StatsSnapshot};
pub use token::{FreshToken, TokenError};

/// Most connections claimed by one scheduler tick.
pub const CLAIM_BATCH: u32 = 64;
/// Longest the scheduler sleeps without looking at the store again.
pub const MAX_IDLE: Duration = Duration::from_secs(30);

/// Why a refresh was started; recorded with every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The connection came due.
    Scheduled,
    /// A caller asked for a token that was too close to expiry.
    OnDemand,
    /// `POST …/refresh` (with or without a rejected token).
    Forced,
    /// `POST …/reset`.
    Reset,
    /// A bulk refresh run (`POST /v1/runs`, `thermos refresh`): background
    /// priority, like the scheduler.
    Run,
}

impl Trigger {
    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::OnDemand => "on_demand",
            Self::Forced => "forced",
            Self::Reset => "reset",
            Self::Run => "run",
        }
    }
}

/// What the engine needs, fixed at start.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub policy: RefreshPolicy,
    /// Refreshes in flight at once, across all providers.
    pub max_concurrency: u32,
    /// Per-request timeout at the token endpoint.
    pub request_timeout: Duration,
    /// This instance's lease-owner name.
    pub owner: String,
    /// Consecutive failures after which `connection.failing` is emitted.
    pub escalate_after: u32,
    /// Share of failed attempts above which a bulk run fails (default for runs).
    pub failure_threshold: f64,
    /// A running run whose heartbeat is older than this is stale; runs beat
    /// at a quarter of it.
    pub run_stale_after: Duration,
}

impl EngineSettings {
    /// How long a lease lasts: longer than any refresh can take, so that
    /// only a dead worker's lease ever expires.
    pub fn lease_ttl(&self) -> Duration {
        self.request_timeout + Duration::from_secs(60)
    }
}

/// The refresh engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    key: Arc<MasterKey>,
    apps: AppRegistry,
    guards: guard::Guards,
    forced: forced::ForcedLimiter,
    client: RefreshClient,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    permits: Arc<Semaphore>,
    flights: flight::Flights,
    wake: Notify,
    /// When the scheduler plans to look next (Unix ms; `i64::MAX` while a
    /// tick runs). A refresh that plans an earlier due time wakes it.
    sleeping_until_ms: AtomicI64,
    tasks: TaskTracker,
    stats: EngineStats,
    /// Woken after events commit, so the outbox dispatcher sends them at once.
    outbox_wake: Arc<Notify>,
    /// The live instances as of this instance's last heartbeat.
    live: std::sync::Mutex<Vec<thermos_store::instance::InstanceRecord>>,
}

impl Engine {
    /// Builds an engine; nothing runs until [`Engine::drive`] or a token call.
    pub fn new(
        store: Arc<dyn Store>,
        key: Arc<MasterKey>,
        providers: Vec<ProviderApp>,
        client: RefreshClient,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(settings.max_concurrency.max(1) as usize));
        Self {
            inner: Arc::new(Inner {
                store,
                key,
                apps: AppRegistry::new(providers),
                forced: forced::ForcedLimiter::default(),
                guards: guard::Guards::new(BreakerPolicy::for_backoff_max(settings.policy.backoff_max)),
                client,
                clock,
                settings,
                permits,
                flights: flight::Flights::default(),
                wake: Notify::new(),
                sleeping_until_ms: AtomicI64::new(i64::MAX),
                tasks: TaskTracker::new(),
                stats: EngineStats::default(),
                outbox_wake: Arc::new(Notify::new()),
                live: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Wakes the scheduler early (after an import, a reset, new tokens).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Wakes the scheduler if it sleeps past `due`.
    fn wake_if_before(inner: &Inner, due: OffsetDateTime) {
        let due_ms = (due.unix_timestamp_nanos() / 1_000_000) as i64;
        if due_ms < inner.sleeping_until_ms.load(Ordering::Relaxed) {
            inner.wake.notify_one();
        }
    }

    /// Notified whenever events were committed (the outbox dispatcher waits on it).
    pub fn outbox_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.outbox_wake)
    }

    /// Tells the outbox dispatcher that events are waiting.
    pub fn events_committed(&self) {
        self.inner.outbox_wake.notify_one();
    }

    /// The clock the engine reads.
    pub fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    /// Counters since start.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The configured provider app with this slug.
    pub fn provider(&self, slug: &str) -> Option<Arc<ProviderApp>> {
        self.inner.apps.provider(slug)
    }

    /// The provider apps in force.
    pub fn apps(&self) -> &AppRegistry {
        &self.inner.apps
    }

    /// The provider apps' guards (limits, breakers, throttles).
    pub fn guards(&self) -> &guard::Guards {
        &self.inner.guards
    }

    /// Replaces the configured provider apps (SIGHUP). Every app's guard is
    /// rebuilt: new limits apply, and apps paused for an invalid client or an
    /// open breaker resume; a probe tells if they still fail.
    pub async fn reload_providers(&self, providers: Vec<ProviderApp>) {
        let now = self.now();
        let resumed: Vec<_> = self
            .inner
            .guards
            .snapshots(now)
            .into_iter()
            .filter(|s| s.breaker.open.is_some())
            .map(|s| {
                let data = serde_json::json!({"reason": "config_reloaded"});
                events::provider_event("provider.circuit_closed", &s.key.provider, &s.key.client_id, data, now)
            })
            .collect();
        self.inner.apps.replace_defaults(providers);
        self.inner.guards.reset();
        if !resumed.is_empty() {
            match self.inner.store.insert_events(resumed).await {
                Ok(()) => self.events_committed(),
                Err(e) => tracing::warn!(error.message = %e, "recording resumed provider apps failed"),
            }
        }
        self.wake();
    }

    /// The master key.
    pub fn key(&self) -> &MasterKey {
        &self.inner.key
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The refresh rules in force.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Takes one forced refresh of `id` from its rate limit, unless a
    /// refresh of it is already in flight (joining one is free).
    pub fn check_forced(&self, id: ConnectionId) -> Result<(), TokenError> {
        if self.inner.flights.contains(id) {
            return Ok(());
        }
        self.inner
            .forced
            .check(id, std::time::Instant::now())
            .map_err(|retry_after| TokenError::RateLimited { retry_after })
    }

    /// Refreshes in flight (scheduled and on demand) right now.
    pub fn in_flight(&self) -> usize {
        self.inner.flights.len()
    }

    /// Waits until every spawned refresh has finished (after cancellation).
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(grace, self.inner.tasks.wait()).await.is_ok()
    }

    /// Runs `id`'s refresh now unless one is in flight, in which case it
    /// joins it; used by reset and forced refreshes.
    pub async fn refresh_now(&self, id: ConnectionId, trigger: Trigger) -> FlightResult {
        flight::refresh_shared(&self.inner, id, trigger).await
    }
}

pub use refresh::error_chain;
pub use thermos_store::truncate_to_millis as truncate_ms;

impl Engine {
    /// Waits (bounded by `within`) until no refresh is in flight; true if
    /// that happened. For tests and the demo's shutdown.
    pub async fn settle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.inner.flights.len() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

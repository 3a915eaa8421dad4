//! Provider protection: one guard per provider app (provider + client).
//!
//! A guard combines the app's [`Gate`] (concurrency and rate limits, urgent
//! callers first), its [`CircuitBreaker`] and a Retry-After throttle. The
//! engine asks [`AppGuard::admit`] before every refresh: while the app is
//! throttled, its breaker is open or its client is invalid, scheduled
//! refreshes are deferred (without counting against their connections) and
//! on-demand callers are told to come back. Outcomes are reported back with
//! [`AppGuard::record`].
//!
//! Never does IO and never touches a connection: the engine does both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thermos_core::breaker::{
    Admission, BreakerPolicy, BreakerSnapshot, CircuitBreaker, OpenReason, Transition, Verdict,
};
use thermos_core::oauth::{RefreshOutcome, TransientKind};
use time::OffsetDateTime;

use super::apps::AppKey;
use super::gate::{Gate, GatePermit, Priority};
use crate::provider::ProviderApp;

/// Requests in flight to one provider app when its config sets no
/// `max_concurrency`: providers are protected by default.
pub const DEFAULT_APP_CONCURRENCY: u32 = 32;
/// How long a 429 without `Retry-After` holds the app.
pub const DEFAULT_RATE_LIMIT_HOLD: Duration = Duration::from_secs(1);
/// Length of the "recent" window of the counters shown at `/v1/providers`.
pub const COUNTER_WINDOW: Duration = Duration::from_secs(300);

/// Why an app is not taking requests now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// The provider answered 429; waiting out its `Retry-After`.
    RateLimited,
    /// Most recent attempts failed for transient reasons.
    CircuitOpen,
    /// The provider rejected the client (`invalid_client` / `unauthorized_client`).
    ClientInvalid,
}

impl PauseReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::CircuitOpen => "circuit_open",
            Self::ClientInvalid => "client_invalid",
        }
    }
}

impl From<OpenReason> for PauseReason {
    fn from(reason: OpenReason) -> Self {
        match reason {
            OpenReason::Failures => Self::CircuitOpen,
            OpenReason::ClientInvalid => Self::ClientInvalid,
        }
    }
}

/// The guard's answer to "may this refresh go now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go; `probe` when this attempt tests an open breaker.
    Go { probe: bool },
    /// Not before `until`.
    Wait { until: OffsetDateTime, reason: PauseReason },
}

/// What the engine should do after an attempt, beyond the connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recorded {
    /// The breaker changed state with this attempt.
    pub transition: Option<TransitionKind>,
}

/// A breaker state change, for logs (and events later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    Opened(PauseReason),
    Closed,
}

/// Counters of one app since start and in the recent window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppCounters {
    pub attempts: u64,
    pub failures: u64,
    pub rate_limited: u64,
    pub lost_responses: u64,
    pub deferred: u64,
}

#[derive(Debug)]
struct GuardState {
    breaker: CircuitBreaker,
    throttled_until: Option<OffsetDateTime>,
    totals: AppCounters,
    /// (time, failed) of recent attempts, oldest first.
    recent: std::collections::VecDeque<(OffsetDateTime, bool)>,
}

/// One provider app's protection.
#[derive(Debug)]
pub struct AppGuard {
    key: AppKey,
    gate: Gate,
    state: Mutex<GuardState>,
}

/// A snapshot for `/v1/providers`.
#[derive(Debug, Clone)]
pub struct GuardSnapshot {
    pub key: AppKey,
    pub breaker: BreakerSnapshot,
    pub paused: Option<(PauseReason, OffsetDateTime)>,
    pub throttled_until: Option<OffsetDateTime>,
    pub totals: AppCounters,
    pub window_attempts: u64,
    pub window_failures: u64,
    pub in_flight: u32,
    pub waiting: (usize, usize),
    pub max_concurrency: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
    /// Instances sharing those limits (this one takes 1/share of them).
    pub shared_by: u32,
}

impl AppGuard {
    fn new(app: &ProviderApp, policy: BreakerPolicy) -> Self {
        Self {
            key: app.key(),
            gate: Gate::new(
                Some(app.max_concurrency.unwrap_or(DEFAULT_APP_CONCURRENCY)),
                app.rate_limit_per_second,
            ),
            state: Mutex::new(GuardState {
                breaker: CircuitBreaker::new(policy),
                throttled_until: None,
                totals: AppCounters::default(),
                recent: std::collections::VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The app this guard protects.
    pub fn key(&self) -> &AppKey {
        &self.key
    }

    /// Whether a refresh may go now.
    pub fn admit(&self, now: OffsetDateTime) -> Admit {
        let mut state = self.lock();
        if let Some(until) = state.throttled_until.filter(|until| *until > now) {
            return Admit::Wait {
                until,
                reason: PauseReason::RateLimited,
            };
        }
        match state.breaker.admit(now) {
            Admission::Allow => Admit::Go { probe: false },
            Admission::Probe => Admit::Go { probe: true },
            Admission::Wait { until, reason } => Admit::Wait {
                until,
                reason: reason.into(),
            },
        }
    }

    /// Counts a deferral (a scheduled refresh that waited for the app).
    pub fn deferred(&self) {
        self.lock().totals.deferred += 1;
    }

    /// Waits for the app's gate (concurrency and rate).
    pub async fn enter(&self, priority: Priority) -> GatePermit {
        self.gate.acquire(priority).await
    }

    /// Records an attempt's outcome: feeds the breaker, throttles on 429.
    pub fn record(&self, now: OffsetDateTime, outcome: &RefreshOutcome, probe: bool) -> Recorded {
        let verdict = Verdict::of_outcome(outcome);
        let mut state = self.lock();
        state.totals.attempts += 1;
        let failed = !matches!(outcome, RefreshOutcome::Refreshed(_) | RefreshOutcome::InvalidGrant(_));
        if failed {
            state.totals.failures += 1;
        }
        if let RefreshOutcome::Transient(t) = outcome
            && t.kind == TransientKind::ResponseLost
        {
            state.totals.lost_responses += 1;
        }
        state.recent.push_back((now, failed));
        while state.recent.front().is_some_and(|(at, _)| *at + COUNTER_WINDOW < now) {
            state.recent.pop_front();
        }
        if let RefreshOutcome::RateLimited { retry_after, .. } = outcome {
            state.totals.rate_limited += 1;
            let hold = retry_after.unwrap_or(DEFAULT_RATE_LIMIT_HOLD);
            let until = now + hold;
            state.throttled_until = Some(state.throttled_until.map_or(until, |t| t.max(until)));
            self.gate.hold_until(tokio::time::Instant::now() + hold);
        }
        let transition = state.breaker.record(now, verdict, probe).map(|t| match t {
            Transition::Opened(reason) => TransitionKind::Opened(reason.into()),
            Transition::Closed => TransitionKind::Closed,
        });
        Recorded { transition }
    }

    /// Until when and why the app is paused, if it is (no side effects,
    /// unlike [`AppGuard::admit`]).
    /// Called for every attempt: it reads only the throttle and the
    /// breaker, never the attempt window a snapshot collects.
    pub fn paused(&self, now: OffsetDateTime) -> Option<(OffsetDateTime, PauseReason)> {
        pause_of(&self.lock(), now).map(|(reason, until)| (until, reason))
    }

    /// Whether the breaker is open now.
    pub fn is_open(&self) -> bool {
        self.lock().breaker.is_open()
    }

    /// A snapshot for operators.
    pub fn snapshot(&self, now: OffsetDateTime) -> GuardSnapshot {
        let state = self.lock();
        let breaker = state.breaker.snapshot();
        let throttled_until = state.throttled_until.filter(|t| *t > now);
        let paused = pause_of(&state, now);
        let recent: Vec<_> = state
            .recent
            .iter()
            .filter(|(at, _)| *at + COUNTER_WINDOW >= now)
            .collect();
        let (max_concurrency, rate_limit_per_second) = self.gate.limits();
        GuardSnapshot {
            key: self.key.clone(),
            paused,
            throttled_until,
            totals: state.totals,
            window_attempts: recent.len() as u64,
            window_failures: recent.iter().filter(|(_, failed)| *failed).count() as u64,
            in_flight: self.gate.in_flight(),
            waiting: self.gate.waiting(),
            max_concurrency,
            rate_limit_per_second,
            shared_by: self.gate.share(),
            breaker,
        }
    }
}

/// Why and until when the app is paused: a provider's `Retry-After` first,
/// then an open breaker (until its next probe).
fn pause_of(state: &GuardState, now: OffsetDateTime) -> Option<(PauseReason, OffsetDateTime)> {
    if let Some(until) = state.throttled_until.filter(|t| *t > now) {
        return Some((PauseReason::RateLimited, until));
    }
    let breaker = state.breaker.snapshot();
    breaker
        .open
        .map(|reason| (reason.into(), breaker.next_probe_at.unwrap_or(now)))
}

/// Every app's guard, created on first use.
#[derive(Debug)]
pub struct Guards {
    policy: BreakerPolicy,
    map: Mutex<HashMap<AppKey, Arc<AppGuard>>>,
    /// Live instances sharing every app's limits.
    share: std::sync::atomic::AtomicU32,
}

impl Guards {
    /// Guards whose breakers follow `policy`.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            map: Mutex::new(HashMap::new()),
            share: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// The number of instances sharing the limits.
    pub fn share(&self) -> u32 {
        self.share.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every app's limits, present and future, are shared by `instances`
    /// live instances (see [`Gate::set_share`]).
    pub fn set_share(&self, instances: u32) {
        self.share.store(instances.max(1), std::sync::atomic::Ordering::Relaxed);
        for guard in self.map.lock().unwrap_or_else(|e| e.into_inner()).values() {
            guard.gate.set_share(instances);
        }
    }

    /// The guard of `app`.
    pub fn for_app(&self, app: &ProviderApp) -> Arc<AppGuard> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(app.key()).or_insert_with(|| {
            let guard = AppGuard::new(app, self.policy.clone());
            guard
                .gate
                .set_share(self.share.load(std::sync::atomic::Ordering::Relaxed));
            Arc::new(guard)
        }))
    }

    /// Forgets every guard (config reload): limits are rebuilt from the new
    /// config, and paused apps resume (a probe finds out if they still fail).
    pub fn reset(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Snapshots of every guard in use.
    pub fn snapshots(&self, now: OffsetDateTime) -> Vec<GuardSnapshot> {
        let guards: Vec<_> = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut snapshots: Vec<_> = guards.iter().map(|g| g.snapshot(now)).collect();
        snapshots.sort_by(|a, b| a.key.cmp(&b.key));
        snapshots
    }
}

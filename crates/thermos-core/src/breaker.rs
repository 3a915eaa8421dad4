//! The circuit breaker of one provider app (provider + client): it watches
//! what recent refresh attempts say about the app, opens when most of them
//! fail for transient reasons or at once when the provider rejects the client
//! itself, lets one probe through per interval while open, and closes as soon
//! as the provider answers again.
//!
//! This module owns only the decision. It does no IO and never reads the
//! clock: every method that depends on time takes `now`. It never decides
//! anything about a connection (the engine does, and must not count waits
//! behind an open breaker against a connection's retries).
//!
//! Read next: the engine, which maps each attempt's outcome to a [`Verdict`]
//! and asks [`CircuitBreaker::admit`] before calling a token endpoint.

use std::collections::VecDeque;
use std::time::Duration;

use time::OffsetDateTime;

use crate::oauth::RefreshOutcome;

/// How many recent attempts the breaker considers.
pub const DEFAULT_WINDOW: usize = 20;
/// The breaker never opens for failures on fewer attempts than this.
pub const DEFAULT_MIN_SAMPLES: usize = 5;
/// The breaker opens when at least this share of the window failed transiently.
pub const DEFAULT_FAILURE_RATIO: f64 = 0.5;
/// An open breaker probes at least this often (and at least every `backoff_max`).
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// When a breaker opens and how often it probes while open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    /// The number of most recent attempts considered.
    pub window: usize,
    /// Fewest attempts in the window before failures may open the breaker.
    pub min_samples: usize,
    /// Share of transient failures in the window that opens the breaker.
    pub failure_ratio: f64,
    /// Time between two probes while open.
    pub probe_interval: Duration,
}

impl BreakerPolicy {
    /// The default policy, probing every `backoff_max` but at least every
    /// [`MAX_PROBE_INTERVAL`], so recovery after an outage takes seconds.
    pub fn for_backoff_max(backoff_max: Duration) -> Self {
        Self {
            probe_interval: backoff_max.min(MAX_PROBE_INTERVAL),
            ..Self::default()
        }
    }
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            min_samples: DEFAULT_MIN_SAMPLES,
            failure_ratio: DEFAULT_FAILURE_RATIO,
            probe_interval: MAX_PROBE_INTERVAL,
        }
    }
}

/// What one attempt says about the provider app (not about the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An answer that proves the app works, including `invalid_grant` (the
    /// grant is dead, but the provider accepted the client and answered).
    Healthy,
    /// 5xx, timeout, network error, malformed body: the app may be down.
    Transient,
    /// `invalid_client` / `unauthorized_client`: the app is misconfigured.
    ClientInvalid,
    /// Says nothing about the app: a 429 (throttling handles it) or a local error.
    Neutral,
}

impl Verdict {
    /// The verdict of a classified token-endpoint answer.
    pub fn of_outcome(outcome: &RefreshOutcome) -> Self {
        match outcome {
            RefreshOutcome::Refreshed(_) | RefreshOutcome::InvalidGrant(_) => Self::Healthy,
            RefreshOutcome::ClientInvalid(_) => Self::ClientInvalid,
            RefreshOutcome::RateLimited { .. } => Self::Neutral,
            // An OAuth error about the request (invalid_scope, …) proves the app answers.
            RefreshOutcome::Transient(t) if t.kind == crate::oauth::TransientKind::ProviderError => Self::Healthy,
            RefreshOutcome::Transient(_) => Self::Transient,
        }
    }
}

/// Why a breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenReason {
    /// Too many recent attempts failed transiently.
    Failures,
    /// The provider rejected the client credentials.
    ClientInvalid,
}

impl OpenReason {
    /// The stable name used in events, metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failures => "failures",
            Self::ClientInvalid => "client_invalid",
        }
    }
}

impl std::fmt::Display for OpenReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an attempt may call the provider now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed: go ahead.
    Allow,
    /// The breaker is open and this attempt is its probe: go ahead, and
    /// record the result with `was_probe = true`.
    Probe,
    /// The breaker is open: do not call the provider before `until`.
    Wait {
        /// When asking again may be answered with a probe.
        until: OffsetDateTime,
        /// Why the breaker is open.
        reason: OpenReason,
    },
}

/// A change of the breaker's state, to be reported (event, metric, log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened, or stayed open for a different reason.
    Opened(OpenReason),
    /// The breaker closed.
    Closed,
}

/// The breaker's state, for health reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// Why it is open; `None` when closed.
    pub open: Option<OpenReason>,
    /// When it opened.
    pub opened_at: Option<OffsetDateTime>,
    /// When the next probe may go.
    pub next_probe_at: Option<OffsetDateTime>,
    /// Attempts in the window.
    pub window_attempts: usize,
    /// Transient failures in the window.
    pub window_failures: usize,
    /// Whether a probe was admitted and its result has not been recorded.
    pub probe_in_flight: bool,
}

#[derive(Debug, Clone)]
struct Open {
    reason: OpenReason,
    opened_at: OffsetDateTime,
    next_probe_at: OffsetDateTime,
    probe_started_at: Option<OffsetDateTime>,
}

/// The circuit breaker of one provider app. See the module docs.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    policy: BreakerPolicy,
    /// Recent recorded attempts, oldest first; `true` is a transient failure.
    window: VecDeque<bool>,
    open: Option<Open>,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            window: VecDeque::with_capacity(policy.window.max(1)),
            policy,
            open: None,
        }
    }

    /// The policy this breaker follows.
    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    /// Whether an attempt may call the provider at `now`.
    ///
    /// Closed: [`Admission::Allow`]. Open: [`Admission::Probe`] when the next
    /// probe is due and no probe is in flight (a probe older than twice the
    /// probe interval is assumed lost); the probe is then marked in flight
    /// and the next one scheduled an interval later. Otherwise
    /// [`Admission::Wait`], whose `until` is always after `now`: the next
    /// probe time, or while a probe is in flight its start plus one interval
    /// (plus two once that has passed, when the probe counts as lost).
    pub fn admit(&mut self, now: OffsetDateTime) -> Admission {
        let interval = self.policy.probe_interval;
        let Some(open) = self.open.as_mut() else {
            return Admission::Allow;
        };
        let live_probe = open.probe_started_at.filter(|started| now < *started + interval * 2);
        match live_probe {
            None if now >= open.next_probe_at => {
                open.probe_started_at = Some(now);
                open.next_probe_at = now + interval;
                Admission::Probe
            }
            None => Admission::Wait {
                until: open.next_probe_at,
                reason: open.reason,
            },
            Some(started) => {
                let until = if now < started + interval {
                    started + interval
                } else {
                    started + interval * 2
                };
                Admission::Wait {
                    until,
                    reason: open.reason,
                }
            }
        }
    }

    /// Records the verdict of an admitted attempt (`was_probe`: it was
    /// admitted as [`Admission::Probe`]).
    ///
    /// Closed: a healthy attempt enters the window as a success, a transient
    /// one as a failure, a neutral one not at all; the breaker opens when the
    /// window holds at least `min_samples` attempts of which at least
    /// `failure_ratio` failed, and at once on [`Verdict::ClientInvalid`].
    ///
    /// Open: a healthy answer closes it (probe or straggler: the provider
    /// answered). A failing probe keeps it open with its reason updated and
    /// schedules the next probe an interval later; a neutral probe lets the
    /// next probe go at once. Other results of stragglers admitted before it
    /// opened are ignored.
    ///
    /// Returns the transition, if any: opening, closing, or staying open for
    /// a different reason (reported as [`Transition::Opened`] with the new one).
    pub fn record(&mut self, now: OffsetDateTime, verdict: Verdict, was_probe: bool) -> Option<Transition> {
        if self.open.is_some() {
            return self.record_open(now, verdict, was_probe);
        }
        match verdict {
            Verdict::Neutral => None,
            Verdict::ClientInvalid => Some(self.trip(now, OpenReason::ClientInvalid)),
            Verdict::Healthy | Verdict::Transient => {
                self.push(verdict == Verdict::Transient);
                self.failing_too_often().then(|| self.trip(now, OpenReason::Failures))
            }
        }
    }

    fn record_open(&mut self, now: OffsetDateTime, verdict: Verdict, was_probe: bool) -> Option<Transition> {
        if verdict == Verdict::Healthy {
            return self.reset();
        }
        let interval = self.policy.probe_interval;
        let open = self.open.as_mut()?;
        if !was_probe {
            return None;
        }
        open.probe_started_at = None;
        let reason = match verdict {
            Verdict::Neutral => {
                open.next_probe_at = now;
                return None;
            }
            Verdict::ClientInvalid => OpenReason::ClientInvalid,
            Verdict::Transient | Verdict::Healthy => OpenReason::Failures,
        };
        open.next_probe_at = now + interval;
        let changed = open.reason != reason;
        open.reason = reason;
        changed.then_some(Transition::Opened(reason))
    }

    /// Back to closed with an empty window (the app's config was reloaded,
    /// say). Returns [`Transition::Closed`] if it was open.
    pub fn reset(&mut self) -> Option<Transition> {
        self.window.clear();
        self.open.take().map(|_| Transition::Closed)
    }

    /// The breaker's state, for health reports.
    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            open: self.open.as_ref().map(|o| o.reason),
            opened_at: self.open.as_ref().map(|o| o.opened_at),
            next_probe_at: self.open.as_ref().map(|o| o.next_probe_at),
            window_attempts: self.window.len(),
            window_failures: self.window.iter().filter(|failed| **failed).count(),
            probe_in_flight: self.open.as_ref().is_some_and(|o| o.probe_started_at.is_some()),
        }
    }

    /// Whether the breaker is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn push(&mut self, failed: bool) {
        while self.window.len() >= self.policy.window.max(1) {
            self.window.pop_front();
        }
        self.window.push_back(failed);
    }

    fn failing_too_often(&self) -> bool {
        let attempts = self.window.len();
        if attempts == 0 || attempts < self.policy.min_samples {
            return false;
        }
        let failures = self.window.iter().filter(|failed| **failed).count();
        failures as f64 / attempts as f64 >= self.policy.failure_ratio
    }

    fn trip(&mut self, now: OffsetDateTime, reason: OpenReason) -> Transition {
        self.open = Some(Open {
            reason,
            opened_at: now,
            next_probe_at: now + self.policy.probe_interval,
            probe_started_at: None,
        });
        Transition::Opened(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-24 10:00 UTC);
    const INTERVAL: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerPolicy::default())
    }

    /// Records `n` attempts with `verdict` at `now`, returning the last transition seen.
    fn record_n(b: &mut CircuitBreaker, n: usize, verdict: Verdict) -> Option<Transition> {
        (0..n).filter_map(|_| b.record(T0, verdict, false)).last()
    }

    fn opened_at_t0() -> CircuitBreaker {
        let mut b = breaker();
        assert_eq!(
            record_n(&mut b, 5, Verdict::Transient),
            Some(Transition::Opened(OpenReason::Failures))
        );
        b
    }

    #[test]
    fn it_stays_closed_with_fewer_attempts_than_min_samples() {
        let mut b = breaker();
        assert_eq!(record_n(&mut b, DEFAULT_MIN_SAMPLES - 1, Verdict::Transient), None);
        assert!(!b.is_open());
        assert_eq!(b.admit(T0), Admission::Allow);
        assert_eq!(b.snapshot().window_failures, DEFAULT_MIN_SAMPLES - 1);
    }

    #[test]
    fn it_opens_when_the_failure_ratio_is_reached() {
        let mut b = breaker();
        record_n(&mut b, 10, Verdict::Healthy);
        assert_eq!(record_n(&mut b, 9, Verdict::Transient), None, "9 of 19 is under half");
        assert_eq!(
            b.record(T0, Verdict::Transient, false),
            Some(Transition::Opened(OpenReason::Failures)),
            "10 of 20 is half"
        );
        let snap = b.snapshot();
        assert_eq!(snap.open, Some(OpenReason::Failures));
        assert_eq!(snap.opened_at, Some(T0));
        assert_eq!(snap.next_probe_at, Some(T0 + INTERVAL));
        assert_eq!((snap.window_attempts, snap.window_failures), (20, 10));
    }

    #[test]
    fn the_window_forgets_attempts_older_than_its_size() {
        let mut b = breaker();
        record_n(&mut b, 11, Verdict::Healthy);
        assert_eq!(record_n(&mut b, 9, Verdict::Transient), None, "9 of 20 is under half");
        // The window is full; twenty new successes push every failure out.
        record_n(&mut b, 20, Verdict::Healthy);
        assert_eq!(b.snapshot().window_failures, 0);
        assert_eq!(b.snapshot().window_attempts, DEFAULT_WINDOW);
        assert_eq!(record_n(&mut b, 9, Verdict::Transient), None);
        assert_eq!(
            b.record(T0, Verdict::Transient, false),
            Some(Transition::Opened(OpenReason::Failures)),
            "10 of the last 20"
        );
    }

    #[test]
    fn neutral_verdicts_do_not_count() {
        let mut b = breaker();
        record_n(&mut b, 4, Verdict::Transient);
        assert_eq!(record_n(&mut b, 50, Verdict::Neutral), None);
        assert!(!b.is_open());
        assert_eq!(b.snapshot().window_attempts, 4);
    }

    #[test]
    fn client_invalid_opens_at_once() {
        let mut b = breaker();
        record_n(&mut b, 10, Verdict::Healthy);
        assert_eq!(
            b.record(T0, Verdict::ClientInvalid, false),
            Some(Transition::Opened(OpenReason::ClientInvalid))
        );
        assert_eq!(
            b.admit(T0),
            Admission::Wait {
                until: T0 + INTERVAL,
                reason: OpenReason::ClientInvalid
            }
        );
    }

    #[test]
    fn while_open_only_one_probe_goes_per_interval() {
        let mut b = opened_at_t0();
        assert!(matches!(b.admit(T0 + secs(9)), Admission::Wait { until, .. } if until == T0 + INTERVAL));
        assert_eq!(b.admit(T0 + INTERVAL), Admission::Probe);
        assert!(b.snapshot().probe_in_flight);
        for later in [INTERVAL, secs(15), secs(19)] {
            assert!(matches!(b.admit(T0 + later), Admission::Wait { .. }), "at +{later:?}");
        }
        assert!(matches!(b.admit(T0 + secs(12)), Admission::Wait { until, .. } if until == T0 + secs(20)));
    }

    #[test]
    fn a_wait_always_ends_in_the_future() {
        let mut b = opened_at_t0();
        assert_eq!(b.admit(T0 + INTERVAL), Admission::Probe);
        for later in [secs(10), secs(19), secs(20), secs(29)] {
            match b.admit(T0 + later) {
                Admission::Wait { until, .. } => assert!(until > T0 + later, "at +{later:?}"),
                other => panic!("at +{later:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_lost_probe_is_replaced_after_twice_the_interval() {
        let mut b = opened_at_t0();
        let started = T0 + INTERVAL;
        assert_eq!(b.admit(started), Admission::Probe);
        assert!(matches!(b.admit(started + secs(19)), Admission::Wait { .. }));
        assert_eq!(b.admit(started + secs(20)), Admission::Probe);
        assert!(matches!(b.admit(started + secs(21)), Admission::Wait { .. }));
    }

    #[test]
    fn a_healthy_probe_closes_the_breaker_and_clears_the_window() {
        let mut b = opened_at_t0();
        assert_eq!(b.admit(T0 + INTERVAL), Admission::Probe);
        assert_eq!(
            b.record(T0 + secs(11), Verdict::Healthy, true),
            Some(Transition::Closed)
        );
        assert!(!b.is_open());
        assert_eq!(b.admit(T0 + secs(11)), Admission::Allow);
        let snap = b.snapshot();
        assert_eq!((snap.window_attempts, snap.window_failures), (0, 0));
        assert_eq!((snap.open, snap.opened_at, snap.probe_in_flight), (None, None, false));
        assert_eq!(
            record_n(&mut b, 4, Verdict::Transient),
            None,
            "a fresh window needs min_samples again"
        );
    }

    #[test]
    fn a_failing_probe_keeps_it_open_and_schedules_the_next_probe() {
        let mut b = opened_at_t0();
        assert_eq!(b.admit(T0 + INTERVAL), Admission::Probe);
        assert_eq!(b.record(T0 + secs(13), Verdict::Transient, true), None);
        let snap = b.snapshot();
        assert_eq!(snap.open, Some(OpenReason::Failures));
        assert!(!snap.probe_in_flight);
        assert_eq!(snap.next_probe_at, Some(T0 + secs(23)));
        assert!(matches!(b.admit(T0 + secs(22)), Admission::Wait { until, .. } if until == T0 + secs(23)));
        assert_eq!(b.admit(T0 + secs(23)), Admission::Probe);
    }

    #[test]
    fn a_probe_rejecting_the_client_changes_the_reason() {
        let mut b = opened_at_t0();
        assert_eq!(b.admit(T0 + INTERVAL), Admission::Probe);
        assert_eq!(
            b.record(T0 + INTERVAL, Verdict::ClientInvalid, true),
            Some(Transition::Opened(OpenReason::ClientInvalid))
        );
        assert_eq!(b.snapshot().open, Some(OpenReason::ClientInvalid));
        assert_eq!(b.admit(T0 + secs(20)), Admission::Probe);
        assert_eq!(
            b.record(T0 + secs(20), Verdict::ClientInvalid, true),
            None,
            "same reason: no news"
        );
    }

    #[test]
    fn a_neutral_probe_lets_the_next_probe_go_at_once() {
        let mut b = opened_at_t0();
        assert_eq!(b.admit(T0 + INTERVAL), Admission::Probe);
        assert_eq!(b.record(T0 + secs(11), Verdict::Neutral, true), None);
        assert!(b.is_open());
        assert_eq!(b.admit(T0 + secs(11)), Admission::Probe);
    }

    #[test]
    fn straggler_failures_are_ignored_while_open_but_a_healthy_straggler_closes_it() {
        let mut b = opened_at_t0();
        for verdict in [Verdict::Transient, Verdict::ClientInvalid, Verdict::Neutral] {
            assert_eq!(b.record(T0 + secs(1), verdict, false), None);
        }
        let snap = b.snapshot();
        assert_eq!(snap.open, Some(OpenReason::Failures));
        assert_eq!(
            snap.next_probe_at,
            Some(T0 + INTERVAL),
            "stragglers do not move the probe"
        );
        assert_eq!(
            b.record(T0 + secs(2), Verdict::Healthy, false),
            Some(Transition::Closed)
        );
        assert_eq!(b.admit(T0 + secs(2)), Admission::Allow);
    }

    #[test]
    fn reset_closes_an_open_breaker_with_an_empty_window() {
        let mut b = opened_at_t0();
        assert_eq!(b.reset(), Some(Transition::Closed));
        assert_eq!(b.admit(T0), Admission::Allow);
        assert_eq!(b.snapshot().window_attempts, 0);
        record_n(&mut b, 3, Verdict::Transient);
        assert_eq!(b.reset(), None, "a closed breaker has nothing to report");
        assert_eq!(b.snapshot().window_attempts, 0);
    }

    #[test]
    fn for_backoff_max_caps_the_probe_interval_at_ten_seconds() {
        assert_eq!(
            BreakerPolicy::for_backoff_max(secs(300)).probe_interval,
            MAX_PROBE_INTERVAL
        );
        let short = BreakerPolicy::for_backoff_max(secs(3));
        assert_eq!(short.probe_interval, secs(3));
        assert_eq!(
            short,
            BreakerPolicy {
                probe_interval: secs(3),
                ..BreakerPolicy::default()
            }
        );
    }

    #[test]
    fn verdicts_of_outcomes_treat_invalid_grant_as_healthy_and_429_as_neutral() {
        use crate::oauth::{ProviderError, TransientFailure, TransientKind};
        let error = |code: &str, status| ProviderError {
            error: code.into(),
            description: None,
            http_status: status,
        };
        let cases = [
            (
                RefreshOutcome::InvalidGrant(error("invalid_grant", 400)),
                Verdict::Healthy,
            ),
            (
                RefreshOutcome::ClientInvalid(error("invalid_client", 401)),
                Verdict::ClientInvalid,
            ),
            (
                RefreshOutcome::RateLimited {
                    retry_after: None,
                    http_status: 429,
                },
                Verdict::Neutral,
            ),
            (
                RefreshOutcome::Transient(TransientFailure::new(TransientKind::ServerError, Some(503), "down")),
                Verdict::Transient,
            ),
        ];
        for (outcome, verdict) in cases {
            assert_eq!(Verdict::of_outcome(&outcome), verdict, "{outcome:?}");
        }
    }

    #[test]
    fn open_reasons_have_stable_names() {
        assert_eq!(OpenReason::Failures.as_str(), "failures");
        assert_eq!(OpenReason::ClientInvalid.to_string(), "client_invalid");
    }
}

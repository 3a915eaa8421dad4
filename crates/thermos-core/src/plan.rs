//! When to refresh next: the planning rule after a success and the backoff
//! ladder after a failure. Pure functions of their inputs; the caller brings
//! "now" and the random jitter, so tests can pin both.

use std::time::Duration;

use time::OffsetDateTime;

use crate::status::ConnectionStatus;

/// Default lead before expiry at which a token is refreshed.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Default number of backoff retries before active recovery.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default first backoff delay.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(5);
/// Default ceiling of the backoff delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Default interval between active-recovery attempts.
pub const DEFAULT_RECOVERY_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Share of the lead used as the upper bound of the planning jitter.
pub const JITTER_SHARE: f64 = 0.10;
/// Allowance subtracted from a provider's `expires_in` for clock skew and
/// transit time.
pub const EXPIRY_SKEW: Duration = Duration::from_secs(5);

/// Default lead before a refresh token's expiry at which
/// `connection.refresh_token_expiring` is emitted.
pub const DEFAULT_REFRESH_TOKEN_WARN_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Share of the keep-alive interval used as the upper bound of its jitter
/// (30 days: up to 14.4 hours earlier), so connections imported together do
/// not all come due in the same second.
pub const KEEP_ALIVE_JITTER_SHARE: f64 = 0.02;

/// What a provider app does about the lifetime of its refresh tokens
/// (`keep_alive`, `refresh_token_warn_before` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshTokenRules {
    /// Refresh a connection at least this often, however long its access
    /// token lives (for providers that revoke refresh tokens left unused);
    /// `None`: no keep-alive.
    pub keep_alive: Option<Duration>,
    /// Emit `connection.refresh_token_expiring` this long before a known
    /// refresh-token expiry.
    pub warn_before: Duration,
}

impl Default for RefreshTokenRules {
    fn default() -> Self {
        Self {
            keep_alive: None,
            warn_before: DEFAULT_REFRESH_TOKEN_WARN_BEFORE,
        }
    }
}

/// The refresh rules of one Thermos instance (from `[refresh]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// Lead before expiry at which to refresh (capped at half the lifetime).
    pub margin: Duration,
    /// Backoff retries before switching to active recovery.
    pub max_retries: u32,
    /// First backoff delay.
    pub backoff_initial: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Interval between attempts once in active recovery.
    pub recovery_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            margin: DEFAULT_MARGIN,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            recovery_interval: DEFAULT_RECOVERY_INTERVAL,
        }
    }
}

/// A number drawn uniformly from `[0, 1)`, used to spread work out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter(f64);

impl Jitter {
    /// Clamps `value` into `[0, 1)`.
    pub fn new(value: f64) -> Self {
        Self(if value.is_finite() {
            value.clamp(0.0, 0.999_999)
        } else {
            0.0
        })
    }

    /// A random draw.
    pub fn random() -> Self {
        Self::new(rand::random::<f64>())
    }

    /// No jitter: the earliest (for planning) or longest (for backoff) choice.
    pub const NONE: Self = Self(0.0);
}

/// When to refresh a token that was obtained at `issued_at` and expires at
/// `expires_at`: `expires_at − lead − jitter`, where lead is the margin but
/// never more than half the lifetime, and jitter is up to 10 % of the lead.
/// The result is never before `issued_at`.
pub fn next_refresh_at(
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    margin: Duration,
    jitter: Jitter,
) -> OffsetDateTime {
    let lifetime = positive(expires_at - issued_at);
    let lead = margin.min(lifetime / 2);
    let spread = lead.mul_f64(JITTER_SHARE * jitter.0);
    (expires_at - lead - spread).max(issued_at)
}

/// When to refresh a connection, all rules together: the earliest of
/// - the access token's rule ([`next_refresh_at`]);
/// - the keep-alive: `issued_at` (the last refresh, or the import) +
///   `keep_alive`, less up to [`KEEP_ALIVE_JITTER_SHARE`] of it;
/// - the refresh token's expiry less the margin (and its jitter), so a
///   provider that hands out a new refresh token on each refresh renews it
///   in time, and one that does not answers `invalid_grant` then (the
///   connection needs reauth at once, not when the access token runs out).
///   Applied only while that moment is after `issued_at`: a refresh token
///   already that close to (or past) its expiry at planning time adds no
///   refresh (which would otherwise repeat until it expired).
///
/// Never before `issued_at`.
pub fn plan_refresh(
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    margin: Duration,
    jitter: Jitter,
    keep_alive: Option<Duration>,
    refresh_token_expires_at: Option<OffsetDateTime>,
) -> OffsetDateTime {
    let mut at = next_refresh_at(issued_at, expires_at, margin, jitter);
    if let Some(keep_alive) = keep_alive.filter(|k| !k.is_zero()) {
        let spread = keep_alive.mul_f64(KEEP_ALIVE_JITTER_SHARE * jitter.0);
        at = at.min(issued_at + keep_alive - spread);
    }
    if let Some(rt_expires_at) = refresh_token_expires_at {
        let before = rt_expires_at - margin - margin.mul_f64(JITTER_SHARE * jitter.0);
        if before > issued_at {
            at = at.min(before);
        }
    }
    at.max(issued_at)
}

/// What to do after a failed refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPlan {
    /// The connection's status after this failure.
    pub status: ConnectionStatus,
    /// When to try again.
    pub next_attempt_at: OffsetDateTime,
    /// True when this failure moved the connection into active recovery.
    pub entered_recovery: bool,
}

/// Plans the next attempt after the `consecutive_failures`-th transient
/// failure in a row (counting this one, so ≥ 1). Up to `max_retries` the delay
/// doubles from `backoff_initial` to at most `backoff_max`, reduced by up to
/// 20 % of jitter (so delays still grow); after that, one attempt every
/// `recovery_interval`, forever. A `retry_after` from the provider is a floor.
pub fn after_transient_failure(
    policy: &RefreshPolicy,
    consecutive_failures: u32,
    now: OffsetDateTime,
    retry_after: Option<Duration>,
    jitter: Jitter,
) -> RetryPlan {
    let failures = consecutive_failures.max(1);
    let in_recovery = failures > policy.max_retries;
    let delay = if in_recovery {
        policy.recovery_interval
    } else {
        let exponent = (failures - 1).min(30);
        let doubled = policy.backoff_initial.saturating_mul(1u32 << exponent);
        doubled.min(policy.backoff_max).mul_f64(1.0 - 0.2 * jitter.0)
    };
    let delay = delay.max(retry_after.unwrap_or_default());
    RetryPlan {
        status: ConnectionStatus::Failing,
        next_attempt_at: now + delay,
        entered_recovery: in_recovery && failures == policy.max_retries + 1,
    }
}

/// The effective minimum remaining lifetime for a token request: the caller's
/// `min_ttl`, capped at half the token's lifetime so short-lived tokens are
/// not refreshed on every call.
pub fn effective_min_ttl(requested: Duration, issued_at: OffsetDateTime, expires_at: OffsetDateTime) -> Duration {
    requested.min(positive(expires_at - issued_at) / 2)
}

fn positive(d: time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-24 10:00 UTC);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_one_hour_token_is_refreshed_five_minutes_before_expiry() {
        let at = next_refresh_at(T0, T0 + secs(3600), DEFAULT_MARGIN, Jitter::NONE);
        assert_eq!(at, T0 + secs(3300));
    }

    #[test]
    fn a_short_token_is_refreshed_at_half_its_lifetime_at_the_latest() {
        let at = next_refresh_at(T0, T0 + secs(30), DEFAULT_MARGIN, Jitter::NONE);
        assert_eq!(at, T0 + secs(15));
    }

    #[test]
    fn jitter_moves_the_refresh_earlier_by_at_most_ten_percent_of_the_lead() {
        let earliest = next_refresh_at(T0, T0 + secs(3600), DEFAULT_MARGIN, Jitter::new(1.0));
        assert!(earliest >= T0 + secs(3600) - secs(330), "{earliest}");
        assert!(earliest < T0 + secs(3300));
        for j in [0.0, 0.25, 0.5, 0.75, 0.99] {
            let at = next_refresh_at(T0, T0 + secs(3600), DEFAULT_MARGIN, Jitter::new(j));
            let lead = (T0 + secs(3600)) - at;
            assert!(
                lead >= time::Duration::seconds(300) && lead <= time::Duration::seconds(330),
                "{lead}"
            );
        }
    }

    #[test]
    fn an_already_expired_token_is_due_at_once() {
        let at = next_refresh_at(T0, T0 - secs(10), DEFAULT_MARGIN, Jitter::NONE);
        assert_eq!(at, T0);
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling_and_grows_despite_jitter() {
        let policy = RefreshPolicy::default();
        let delays: Vec<_> = (1..=5)
            .map(|n| after_transient_failure(&policy, n, T0, None, Jitter::NONE).next_attempt_at - T0)
            .collect();
        let expected = [5, 10, 20, 40, 80].map(time::Duration::seconds);
        assert_eq!(delays, expected);
        let mut previous = time::Duration::ZERO;
        for n in 1..=5 {
            let worst = after_transient_failure(&policy, n, T0, None, Jitter::new(0.99)).next_attempt_at - T0;
            assert!(worst > previous, "failure {n}: {worst} after {previous}");
            previous = after_transient_failure(&policy, n, T0, None, Jitter::NONE).next_attempt_at - T0;
        }
        let capped = RefreshPolicy {
            backoff_max: secs(15),
            ..policy
        };
        assert_eq!(
            after_transient_failure(&capped, 4, T0, None, Jitter::NONE).next_attempt_at,
            T0 + secs(15)
        );
    }

    #[test]
    fn after_max_retries_the_connection_enters_active_recovery_once() {
        let policy = RefreshPolicy::default();
        let fifth = after_transient_failure(&policy, 5, T0, None, Jitter::NONE);
        assert!(!fifth.entered_recovery);
        let sixth = after_transient_failure(&policy, 6, T0, None, Jitter::NONE);
        assert!(sixth.entered_recovery);
        assert_eq!(sixth.status, ConnectionStatus::Failing);
        assert_eq!(sixth.next_attempt_at, T0 + DEFAULT_RECOVERY_INTERVAL);
        let seventh = after_transient_failure(&policy, 7, T0, None, Jitter::NONE);
        assert!(!seventh.entered_recovery);
        assert_eq!(seventh.next_attempt_at, T0 + DEFAULT_RECOVERY_INTERVAL);
    }

    #[test]
    fn retry_after_is_a_floor_for_the_next_attempt() {
        let policy = RefreshPolicy::default();
        let plan = after_transient_failure(&policy, 1, T0, Some(secs(120)), Jitter::NONE);
        assert_eq!(plan.next_attempt_at, T0 + secs(120));
    }

    const DAY: u64 = 24 * 3600;

    #[test]
    fn without_keep_alive_or_refresh_token_expiry_the_access_token_rule_decides() {
        let at = plan_refresh(T0, T0 + secs(30 * DAY), DEFAULT_MARGIN, Jitter::NONE, None, None);
        assert_eq!(at, T0 + secs(30 * DAY) - DEFAULT_MARGIN);
        assert_eq!(
            plan_refresh(T0, T0 + secs(3600), DEFAULT_MARGIN, Jitter::new(0.5), None, None),
            next_refresh_at(T0, T0 + secs(3600), DEFAULT_MARGIN, Jitter::new(0.5))
        );
    }

    #[test]
    fn keep_alive_refreshes_a_long_lived_access_token_at_the_keep_alive_interval() {
        let at = plan_refresh(
            T0,
            T0 + secs(90 * DAY),
            DEFAULT_MARGIN,
            Jitter::NONE,
            Some(secs(30 * DAY)),
            None,
        );
        assert_eq!(at, T0 + secs(30 * DAY));
        let jittered = plan_refresh(
            T0,
            T0 + secs(90 * DAY),
            DEFAULT_MARGIN,
            Jitter::new(0.99),
            Some(secs(30 * DAY)),
            None,
        );
        assert!(jittered < T0 + secs(30 * DAY), "{jittered}");
        assert!(jittered >= T0 + secs(30 * DAY) - secs(30 * DAY).mul_f64(KEEP_ALIVE_JITTER_SHARE));
    }

    #[test]
    fn keep_alive_longer_than_the_access_token_changes_nothing() {
        let at = plan_refresh(
            T0,
            T0 + secs(3600),
            DEFAULT_MARGIN,
            Jitter::NONE,
            Some(secs(30 * DAY)),
            None,
        );
        assert_eq!(at, T0 + secs(3300));
    }

    #[test]
    fn a_refresh_token_expiring_before_the_access_token_is_refreshed_a_margin_before() {
        let rt = T0 + secs(10 * DAY);
        let at = plan_refresh(T0, T0 + secs(90 * DAY), DEFAULT_MARGIN, Jitter::NONE, None, Some(rt));
        assert_eq!(at, rt - DEFAULT_MARGIN);
        let later = plan_refresh(T0, T0 + secs(3600), DEFAULT_MARGIN, Jitter::NONE, None, Some(rt));
        assert_eq!(later, T0 + secs(3300), "a later refresh-token expiry changes nothing");
    }

    #[test]
    fn a_refresh_token_already_within_the_margin_adds_no_refresh() {
        for rt in [T0 + secs(60), T0 - secs(60)] {
            let at = plan_refresh(T0, T0 + secs(90 * DAY), DEFAULT_MARGIN, Jitter::NONE, None, Some(rt));
            assert_eq!(at, T0 + secs(90 * DAY) - DEFAULT_MARGIN, "{rt}");
        }
    }

    #[test]
    fn min_ttl_is_capped_at_half_the_lifetime() {
        assert_eq!(effective_min_ttl(secs(60), T0, T0 + secs(30)), secs(15));
        assert_eq!(effective_min_ttl(secs(60), T0, T0 + secs(3600)), secs(60));
    }
}

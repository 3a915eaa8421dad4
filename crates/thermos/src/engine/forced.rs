//! The forced-refresh guard: `POST …/refresh` and `reset` may each start a
//! refresh that no schedule asked for, so they are rate-limited per
//! connection (a token bucket). Joining a refresh already in flight, or a
//! 401 report about a token that is no longer current, costs nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thermos_core::id::ConnectionId;

/// Forced refreshes allowed back to back for one connection.
pub const FORCED_BURST: u32 = 3;
/// One more forced refresh is allowed per this interval.
pub const FORCED_REFILL: Duration = Duration::from_secs(10);
/// Buckets kept before idle ones are pruned.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-connection token buckets.
#[derive(Debug, Default)]
pub struct ForcedLimiter {
    buckets: Mutex<HashMap<ConnectionId, Bucket>>,
}

impl ForcedLimiter {
    /// Takes one forced refresh for `id` at `now`, or says how long to wait.
    pub fn check(&self, id: ConnectionId, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED {
            buckets.retain(|_, b| refilled(*b, now) < f64::from(FORCED_BURST));
        }
        let bucket = buckets.entry(id).or_insert(Bucket {
            tokens: f64::from(FORCED_BURST),
            at: now,
        });
        let tokens = refilled(*bucket, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(FORCED_REFILL.mul_f64(1.0 - tokens))
        }
    }
}

fn refilled(bucket: Bucket, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed / FORCED_REFILL.as_secs_f64()).min(f64::from(FORCED_BURST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_one_per_refill_interval() {
        let limiter = ForcedLimiter::default();
        let id = ConnectionId::generate();
        let t0 = Instant::now();
        for _ in 0..FORCED_BURST {
            assert_eq!(limiter.check(id, t0), Ok(()));
        }
        let wait = limiter.check(id, t0).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= FORCED_REFILL, "{wait:?}");
        assert!(limiter.check(id, t0 + Duration::from_secs(5)).is_err());
        assert_eq!(limiter.check(id, t0 + FORCED_REFILL + Duration::from_millis(1)), Ok(()));
    }

    #[test]
    fn connections_have_separate_buckets() {
        let limiter = ForcedLimiter::default();
        let (a, b) = (ConnectionId::generate(), ConnectionId::generate());
        let t0 = Instant::now();
        for _ in 0..FORCED_BURST {
            limiter.check(a, t0).unwrap();
        }
        assert!(limiter.check(a, t0).is_err());
        assert_eq!(limiter.check(b, t0), Ok(()));
    }
}

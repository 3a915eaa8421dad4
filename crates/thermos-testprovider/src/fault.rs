//! Fault injection: what the token endpoint does instead of (or before)
//! answering normally, switchable at runtime from the handle.
//!
//! A `FaultPlan` holds a queue of one-shot faults (consumed one per token
//! request, oldest first) and an optional standing fault that applies to
//! every request once the queue is empty. It only decides; `server.rs` acts.

use std::collections::VecDeque;
use std::time::Duration;

/// How long [`Fault::Hang`] and [`Fault::LoseResponse`] keep a request open:
/// far longer than any client timeout, yet bounded.
pub const HANG_FOR: Duration = Duration::from_secs(60 * 60);

/// Something the token endpoint does wrong, on purpose.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// HTTP 503 with a plain-text body, no `Retry-After`.
    Unavailable,
    /// HTTP 503 with `Retry-After: <secs>`.
    UnavailableRetryAfter {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// HTTP 429 with `Retry-After: <secs>` and `{"error":"too_many_requests"}`.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// HTTP 200 with truncated JSON.
    Malformed,
    /// HTTP 200 with an HTML login page.
    HtmlOk,
    /// HTTP 401 `{"error":"invalid_client"}` whatever the credentials.
    InvalidClient,
    /// HTTP 502 with a gateway's HTML page.
    ServerErrorHtml,
    /// Never answer (for [`HANG_FOR`]); the client's timeout fires first.
    Hang,
    /// Perform the refresh (rotating the refresh token), then never answer:
    /// the response is lost, as when a connection drops mid-flight.
    LoseResponse,
    /// HTTP 200 with a valid-looking JSON token response padded to this many
    /// bytes (a provider or proxy sending far more than a token response).
    Oversized {
        /// The body's size in bytes.
        bytes: usize,
    },
    /// Answer 503 with this probability (0.0–1.0), else normally; meant as a
    /// standing fault for the demo.
    FailRate(f64),
    /// Answer `status` with a body that echoes the request back — its form
    /// body as sent (URL-encoded) and its `Authorization` header — as careless
    /// providers and proxies do. With `json`, an OAuth error
    /// (`invalid_grant` on 400, else `server_error`) whose
    /// `error_description` carries the echo; otherwise an HTML page. For
    /// tests that no echoed secret reaches a log, an error or an event.
    EchoRequest {
        /// The HTTP status to answer.
        status: u16,
        /// An OAuth JSON error rather than an HTML page.
        json: bool,
    },
}

/// The faults waiting to be applied.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    queue: VecDeque<Fault>,
    standing: Option<Fault>,
}

impl FaultPlan {
    /// Sets the fault applied to every request once the queue is empty.
    pub(crate) fn set(&mut self, fault: Fault) {
        self.standing = Some(fault);
    }

    /// Removes the standing fault and empties the queue.
    pub(crate) fn clear(&mut self) {
        self.standing = None;
        self.queue.clear();
    }

    /// Appends one-shot faults.
    pub(crate) fn push(&mut self, faults: impl IntoIterator<Item = Fault>) {
        self.queue.extend(faults);
    }

    /// The fault for the next request, if any. `FailRate` is resolved here
    /// with `draw` (uniform in `[0, 1)`) into `Unavailable` or nothing.
    pub(crate) fn next(&mut self, draw: f64) -> Option<Fault> {
        let fault = self.queue.pop_front().or_else(|| self.standing.clone())?;
        match fault {
            Fault::FailRate(p) if draw < p => Some(Fault::Unavailable),
            Fault::FailRate(_) => None,
            other => Some(other),
        }
    }

    /// One-shot faults not yet consumed.
    pub(crate) fn pending(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_faults_are_consumed_in_order_before_the_standing_one() {
        let mut plan = FaultPlan::default();
        plan.set(Fault::Malformed);
        plan.push([Fault::Unavailable, Fault::InvalidClient]);
        assert_eq!(plan.next(0.5), Some(Fault::Unavailable));
        assert_eq!(plan.next(0.5), Some(Fault::InvalidClient));
        assert_eq!(plan.next(0.5), Some(Fault::Malformed));
        assert_eq!(plan.next(0.5), Some(Fault::Malformed));
        plan.clear();
        assert_eq!(plan.next(0.5), None);
    }

    #[test]
    fn a_fail_rate_fails_only_draws_below_the_rate() {
        let mut plan = FaultPlan::default();
        plan.set(Fault::FailRate(0.3));
        assert_eq!(plan.next(0.29), Some(Fault::Unavailable));
        assert_eq!(plan.next(0.3), None);
        assert_eq!(plan.next(0.9), None);
    }
}

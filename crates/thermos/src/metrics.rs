//! Prometheus metrics: every metric name and label key Thermos exports, and
//! the process-wide recorder that renders them at `GET /metrics`.
//!
//! Names follow Prometheus conventions (`thermos_…_total` for counters,
//! `_seconds` for durations). Labels are bounded: provider names and client
//! ids come from configuration, outcomes and error classes from fixed sets,
//! routes are matched route templates (`/v1/connections/{id}`), never raw
//! paths. No label carries a connection id, an event id or a secret.
//!
//! Every histogram has explicit buckets so that it renders as a Prometheus
//! histogram (`_bucket` lines), not as a summary (see DEPENDENCIES.md).
//!
//! [`install`] is idempotent: the recorder is global to the process, so
//! several apps in one test process share it. Tests compare deltas or use a
//! provider label of their own.
//!
//! `/metrics` is unauthenticated, like `/health`: do not expose it publicly;
//! scrape it from inside the deployment.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// ---- refresh engine -------------------------------------------------------

/// Counter `{provider, outcome, error_class}`: refresh attempts.
pub const REFRESH_ATTEMPTS_TOTAL: &str = "thermos_refresh_attempts_total";
/// Histogram `{provider}`: duration of one refresh attempt (provider call
/// included), in seconds.
pub const REFRESH_DURATION_SECONDS: &str = "thermos_refresh_duration_seconds";
/// Histogram: actual minus planned start of scheduled refreshes, in seconds.
pub const REFRESH_LATENESS_SECONDS: &str = "thermos_refresh_lateness_seconds";
/// Histogram: for tokens refreshed after they had expired, how long after the
/// expiry the refresh succeeded, in seconds.
pub const REFRESH_EXPIRED_BEFORE_REFRESH_SECONDS: &str = "thermos_refresh_expired_before_refresh_seconds";
/// Histogram: time from a connection's first failure to its recovery, in
/// seconds (approximated by the time of the last recorded error; see
/// `engine/refresh.rs`).
pub const RECOVERY_SECONDS: &str = "thermos_recovery_seconds";
/// Gauge `{provider, status}`: connections by provider and status.
pub const CONNECTIONS: &str = "thermos_connections";
/// Counter `{provider}`: access tokens handed out.
pub const TOKENS_SERVED_TOTAL: &str = "thermos_tokens_served_total";
/// Counter: expired tokens that `hand_out` refused (must stay 0).
pub const TOKENS_SERVED_EXPIRED_TOTAL: &str = "thermos_tokens_served_expired_total";
/// Counter `{provider, outcome}`: 401 reports (`refreshed`, `current_returned`).
pub const UNAUTHORIZED_REPORTS_TOTAL: &str = "thermos_unauthorized_reports_total";
/// Counter `{provider}`: connections that entered active recovery.
pub const RECOVERY_ACTIVATIONS_TOTAL: &str = "thermos_recovery_activations_total";
/// Gauge `{provider, client}`: 1 while the app's circuit breaker is open.
pub const CIRCUIT_OPEN: &str = "thermos_circuit_open";
/// Counter `{provider}`: 429 answers from token endpoints.
pub const RATE_LIMITED_TOTAL: &str = "thermos_rate_limited_total";
/// Counter `{provider}`: provider calls whose response was lost.
pub const LOST_RESPONSES_TOTAL: &str = "thermos_lost_responses_total";

// ---- scheduler ------------------------------------------------------------

/// Gauge: now minus the earliest due time when overdue, else 0, in seconds.
pub const SCHEDULER_LAG_SECONDS: &str = "thermos_scheduler_lag_seconds";

/// Gauge: live instances sharing the database (and the provider limits).
pub const INSTANCES_LIVE: &str = "thermos_instances_live";

// ---- outbox ---------------------------------------------------------------

/// Gauge: webhook deliveries waiting to be delivered.
pub const OUTBOX_PENDING: &str = "thermos_outbox_pending";
/// Counter `{outcome}`: webhook delivery attempts (`delivered`, `retry`, `failed`).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "thermos_webhook_deliveries_total";

// ---- audit ----------------------------------------------------------------

/// Counter: token reads the audit log could not queue (its writer was that
/// far behind); each batch of them is also recorded in the log itself.
pub const AUDIT_READS_DROPPED_TOTAL: &str = "thermos_audit_reads_dropped_total";

// ---- HTTP -----------------------------------------------------------------

/// Counter `{route, method, status}`: HTTP requests served.
pub const HTTP_REQUESTS_TOTAL: &str = "thermos_http_requests_total";
/// Histogram `{route}`: HTTP request latency, in seconds.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "thermos_http_request_duration_seconds";

// ---- label keys -----------------------------------------------------------

/// Provider name from configuration.
pub const LABEL_PROVIDER: &str = "provider";
/// A bounded outcome word (see [`outcome`]).
pub const LABEL_OUTCOME: &str = "outcome";
/// The error code of a failed attempt (OAuth / Thermos code), `none` on success.
pub const LABEL_ERROR_CLASS: &str = "error_class";
/// Connection status (`active`, `failing`, `needs_reauth`, …).
pub const LABEL_STATUS: &str = "status";
/// A provider app's client id (bounded by configuration).
pub const LABEL_CLIENT: &str = "client";
/// Matched route template, `unmatched` when no route matched.
pub const LABEL_ROUTE: &str = "route";
/// HTTP method.
pub const LABEL_METHOD: &str = "method";

/// Bounded label values.
pub mod outcome {
    /// Refresh attempt: new tokens committed.
    pub const SUCCESS: &str = "success";
    /// Refresh attempt: the provider refused or failed.
    pub const FAILED: &str = "failed";
    /// Refresh attempt: nothing to do (e.g. not claimable).
    pub const SKIPPED: &str = "skipped";
    /// Refresh attempt: another refresh won the race.
    pub const SUPERSEDED: &str = "superseded";
    /// Refresh attempt: handed back because the app is paused.
    pub const DEFERRED: &str = "deferred";
    /// 401 report: a refresh produced a new token.
    pub const REFRESHED: &str = "refreshed";
    /// 401 report: the rejected token was stale; the current one was returned.
    pub const CURRENT_RETURNED: &str = "current_returned";
    /// Webhook delivery succeeded.
    pub const DELIVERED: &str = "delivered";
    /// Webhook delivery failed and will be retried.
    pub const RETRY: &str = "retry";
    /// Webhook delivery failed for good.
    pub const DELIVERY_FAILED: &str = "failed";
    /// Error class of an attempt without an error.
    pub const NO_ERROR: &str = "none";
    /// Route label of a request that matched no route.
    pub const UNMATCHED_ROUTE: &str = "unmatched";
}

/// Buckets of the refresh and HTTP latency histograms (seconds).
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Buckets of the scheduled refreshes' lateness (seconds): fine below a
/// second, where a healthy scheduler stays and where its p99 target lies
/// (`histogram_quantile` can say no more than the buckets do), then the
/// delay buckets for an instance that fell behind.
const LATENESS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];
/// Buckets of the other delay-like histograms (seconds).
const DELAY_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Every histogram with its buckets; [`install`] configures each one.
/// Every metric the binary exports (dashboards and alert rules may use only these).
pub const ALL: &[&str] = &[
    REFRESH_ATTEMPTS_TOTAL,
    REFRESH_DURATION_SECONDS,
    REFRESH_LATENESS_SECONDS,
    REFRESH_EXPIRED_BEFORE_REFRESH_SECONDS,
    RECOVERY_SECONDS,
    CONNECTIONS,
    TOKENS_SERVED_TOTAL,
    TOKENS_SERVED_EXPIRED_TOTAL,
    UNAUTHORIZED_REPORTS_TOTAL,
    RECOVERY_ACTIVATIONS_TOTAL,
    CIRCUIT_OPEN,
    RATE_LIMITED_TOTAL,
    LOST_RESPONSES_TOTAL,
    SCHEDULER_LAG_SECONDS,
    OUTBOX_PENDING,
    WEBHOOK_DELIVERIES_TOTAL,
    AUDIT_READS_DROPPED_TOTAL,
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
];

pub const HISTOGRAMS: &[&str] = &[
    REFRESH_DURATION_SECONDS,
    REFRESH_LATENESS_SECONDS,
    REFRESH_EXPIRED_BEFORE_REFRESH_SECONDS,
    RECOVERY_SECONDS,
    HTTP_REQUEST_DURATION_SECONDS,
];

fn buckets_for(name: &str) -> &'static [f64] {
    match name {
        REFRESH_DURATION_SECONDS | HTTP_REQUEST_DURATION_SECONDS => LATENCY_BUCKETS,
        REFRESH_LATENESS_SECONDS => LATENESS_BUCKETS,
        _ => DELAY_BUCKETS,
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
///
/// Idempotent: later calls return the first handle. If another recorder was
/// installed globally already, the handle still renders (empty) text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for name in HISTOGRAMS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets_for(name))
                    .expect("buckets are not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another global recorder (e.g. in an embedding program) wins;
            // ours then just renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            // Rendered from the start: this one must be seen to stay 0.
            metrics::counter!(TOKENS_SERVED_EXPIRED_TOTAL).increment(0);
            metrics::counter!(AUDIT_READS_DROPPED_TOTAL).increment(0);
            handle
        })
        .clone()
}

/// Renders the Prometheus text exposition of every metric.
pub fn render() -> String {
    install().render()
}

/// How often the scheduler loop refreshes [`CONNECTIONS`] (also at scrape).
pub const CONNECTION_GAUGES_EVERY: Duration = Duration::from_secs(15);

/// (provider, status) pairs set before: a pair that disappeared is set to 0.
static CONNECTION_KEYS: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Sets [`CONNECTIONS`] from `Store::count_by_status`. A store error leaves
/// the gauges as they were (logged at debug; `/ready` reports the store).
pub async fn update_connection_gauges(store: &dyn thermos_store::Store) {
    let counts = match store.count_by_status().await {
        Ok(counts) => counts,
        Err(e) => {
            tracing::debug!(error.message = %e, "counting connections for metrics failed");
            return;
        }
    };
    let mut keys = CONNECTION_KEYS.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = BTreeSet::new();
    for c in counts {
        let key = (c.provider, c.status.as_str().to_owned());
        metrics::gauge!(CONNECTIONS, LABEL_PROVIDER => key.0.clone(), LABEL_STATUS => key.1.clone())
            .set(c.count as f64);
        seen.insert(key);
    }
    for (provider, status) in keys.difference(&seen) {
        metrics::gauge!(CONNECTIONS, LABEL_PROVIDER => provider.clone(), LABEL_STATUS => status.clone()).set(0.0);
    }
    keys.extend(seen);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_buckets_resolve_milliseconds_and_still_reach_a_day() {
        let buckets = buckets_for(REFRESH_LATENESS_SECONDS);
        assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]), "ascending");
        assert_eq!(buckets.first(), Some(&0.005));
        assert_eq!(
            buckets.iter().filter(|b| **b < 1.0).count(),
            7,
            "seven buckets below a second"
        );
        assert!(buckets.contains(&1.0), "the p99 target is a bucket bound");
        assert_eq!(buckets.last(), Some(&86400.0));
        for name in HISTOGRAMS {
            let buckets = buckets_for(name);
            assert!(buckets.windows(2).all(|pair| pair[0] < pair[1]), "{name}: ascending");
        }
    }
}

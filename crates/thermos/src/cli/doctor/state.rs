//! Checks of what the stored state says: the live instances, the scheduler
//! keeping up, expired tokens, failure rates per provider, the outbox and
//! runs.

use std::collections::BTreeMap;

use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::{DeliveryStatus, EventFilter};
use thermos_store::{ConnectionFilter, Store};
use time::OffsetDateTime;

use super::{Check, error_chain, short_duration};
use crate::config::Config;
use crate::engine::instances::INSTANCE_ALIVE;

/// A connection due longer ago than this is overdue.
const OVERDUE_AFTER_SECS: i64 = 60;
/// Overdue by more than this is a failure, not a warning.
const OVERDUE_FAIL_SECS: i64 = 300;
/// At most this many scheduled connections are read.
const MAX_SCANNED: usize = 100_000;
const PAGE: u32 = 1_000;
/// A backlog above this is a warning.
const BACKLOG_WARN: u64 = 1_000;
/// Failed deliveries younger than this are reported.
const RECENT_FAILURES: time::Duration = time::Duration::hours(24);
/// How many ids a finding names.
const SAMPLE_IDS: usize = 3;

/// What a scan of the scheduled connections found.
#[derive(Debug, Default)]
struct Scan {
    scanned: usize,
    truncated: bool,
    overdue: Vec<ConnectionId>,
    /// Seconds the most overdue connection is late.
    worst_lateness: i64,
    expired: Vec<ConnectionId>,
}

/// Overdue connections (scheduler lag) and scheduled connections whose access
/// token already expired.
pub(super) async fn scheduler(config: &Config, store: &dyn Store) -> Vec<Check> {
    let now = OffsetDateTime::now_utc();
    let scan = match scan(store, now).await {
        Ok(scan) => scan,
        Err(e) => {
            return vec![Check::fail(
                "scheduler",
                format!("cannot read connections: {}", error_chain(&e)),
                "see the database check",
            )];
        }
    };
    let limited = if scan.truncated {
        format!(" (first {} checked)", scan.scanned)
    } else {
        String::new()
    };
    let engine_hint = if config.engine.enabled {
        "make sure `thermos serve` is running ([engine] enabled = true)"
    } else {
        "[engine] enabled = false in this config: enable it on at least one `thermos serve` instance"
    };
    let lag = if scan.overdue.is_empty() {
        Check::ok(
            "scheduler",
            format!("{} scheduled connection(s), none overdue{limited}", scan.scanned),
        )
    } else {
        let detail = format!(
            "{} of {} scheduled connection(s) overdue, most by {} (e.g. {}){limited}",
            scan.overdue.len(),
            scan.scanned,
            short_duration(scan.worst_lateness),
            sample(&scan.overdue),
        );
        let action = format!("{engine_hint}; inspect with `thermos connections show ID`");
        if scan.worst_lateness > OVERDUE_FAIL_SECS {
            Check::fail("scheduler", detail, action)
        } else {
            Check::warn("scheduler", detail, action)
        }
    };
    let expired = if scan.expired.is_empty() {
        Check::ok(
            "expired tokens",
            format!("no active or failing connection holds an expired token{limited}"),
        )
    } else {
        Check::fail(
            "expired tokens",
            format!(
                "{} active/failing connection(s) hold an expired access token (e.g. {})",
                scan.expired.len(),
                sample(&scan.expired)
            ),
            format!(
                "{engine_hint}; see why with `thermos connections list --status failing` and `thermos connections show ID`"
            ),
        )
    };
    vec![lag, expired]
}

async fn scan(store: &dyn Store, now: OffsetDateTime) -> thermos_store::StoreResult<Scan> {
    let mut scan = Scan::default();
    'statuses: for status in [ConnectionStatus::Active, ConnectionStatus::Failing] {
        let filter = ConnectionFilter {
            status: Some(status),
            ..ConnectionFilter::default()
        };
        let mut after = None;
        loop {
            let page = store.list_connections(&filter, after, PAGE).await?;
            for record in &page {
                if scan.scanned == MAX_SCANNED {
                    scan.truncated = true;
                    break 'statuses;
                }
                scan.scanned += 1;
                let leased = record.lease_until.is_some_and(|until| until > now);
                if let Some(due) = record.next_refresh_at {
                    let late = (now - due).whole_seconds();
                    if late > OVERDUE_AFTER_SECS && !leased {
                        scan.overdue.push(record.id);
                        scan.worst_lateness = scan.worst_lateness.max(late);
                    }
                }
                if record.expires_at <= now {
                    scan.expired.push(record.id);
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = Some(last.id),
                _ => break,
            }
        }
    }
    Ok(scan)
}

fn sample(ids: &[ConnectionId]) -> String {
    let mut text = ids
        .iter()
        .take(SAMPLE_IDS)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SAMPLE_IDS {
        text.push_str(", …");
    }
    text
}

/// Per provider: the share of `failing` among scheduled connections against
/// `refresh.failure_threshold`, and connections waiting for their user.
pub(super) async fn failure_rates(config: &Config, store: &dyn Store) -> Vec<Check> {
    let counts = match store.count_by_status().await {
        Ok(counts) => counts,
        Err(e) => {
            return vec![Check::fail(
                "failure rates",
                format!("cannot count connections: {}", error_chain(&e)),
                "see the database check",
            )];
        }
    };
    let mut by_provider: BTreeMap<String, BTreeMap<&'static str, u64>> = config
        .providers
        .iter()
        .map(|p| (p.slug.clone(), BTreeMap::new()))
        .collect();
    for count in &counts {
        *by_provider
            .entry(count.provider.clone())
            .or_default()
            .entry(count.status.as_str())
            .or_default() += count.count;
    }
    let threshold = config.refresh.failure_threshold;
    by_provider
        .into_iter()
        .map(|(provider, counts)| {
            let get = |status: ConnectionStatus| counts.get(status.as_str()).copied().unwrap_or(0);
            let failing = get(ConnectionStatus::Failing);
            let scheduled = get(ConnectionStatus::Active) + failing;
            let reauth = get(ConnectionStatus::NeedsReauth);
            let name = format!("failures {provider}");
            let rate = if scheduled == 0 { 0.0 } else { failing as f64 / scheduled as f64 };
            let detail = format!(
                "{failing} of {scheduled} scheduled failing ({:.1} %, threshold {:.1} %), {reauth} needs_reauth",
                rate * 100.0,
                threshold * 100.0
            );
            if config.provider(&provider).is_none() {
                Check::warn(
                    name,
                    format!("{detail}; provider not configured, these connections are never refreshed"),
                    format!("add a [[provider]] with slug = \"{provider}\", or delete its connections"),
                )
            } else if rate > threshold {
                Check::fail(
                    name,
                    detail,
                    format!(
                        "see the errors with `thermos connections list --provider {provider} --status failing`; \
                         check the provider's status and its client_id/client_secret"
                    ),
                )
            } else if reauth > 0 {
                Check::warn(
                    name,
                    detail,
                    format!(
                        "their users must reconnect: `thermos connections list --provider {provider} --status needs_reauth`"
                    ),
                )
            } else {
                Check::ok(name, detail)
            }
        })
        .collect()
}

/// The outbox backlog and deliveries that failed in the last day.
pub(super) async fn outbox(store: &dyn Store) -> Vec<Check> {
    let backlog = match store.count_pending_deliveries().await {
        Ok(n) if n > BACKLOG_WARN => Check::warn(
            "outbox backlog",
            format!("{n} deliveries pending (more than {BACKLOG_WARN})"),
            "make sure `thermos serve` is running; find slow receivers with `thermos events list --status pending`",
        ),
        Ok(n) => Check::ok("outbox backlog", format!("{n} deliveries pending")),
        Err(e) => Check::fail(
            "outbox backlog",
            format!("cannot count deliveries: {}", error_chain(&e)),
            "see the database check",
        ),
    };
    let filter = EventFilter {
        delivery_status: Some(DeliveryStatus::Failed),
        ..EventFilter::default()
    };
    let since = OffsetDateTime::now_utc() - RECENT_FAILURES;
    let failures = match store.list_events(&filter, None, 100).await {
        Ok(events) => {
            let mut by_webhook: BTreeMap<String, usize> = BTreeMap::new();
            for delivery in events.iter().flat_map(|e| &e.deliveries) {
                if delivery.status == DeliveryStatus::Failed && delivery.created_at >= since {
                    let target = delivery.webhook_id.clone().unwrap_or_else(|| "alerts channel".into());
                    *by_webhook.entry(target).or_default() += 1;
                }
            }
            if by_webhook.is_empty() {
                Check::ok("webhook deliveries", "no delivery failed in the last 24 h")
            } else {
                let total: usize = by_webhook.values().sum();
                let targets = by_webhook
                    .iter()
                    .map(|(target, n)| format!("{target} ({n})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                Check::warn(
                    "webhook deliveries",
                    format!("{total} deliveries failed in the last 24 h: {targets}"),
                    "fix the receiver (`thermos webhooks list`; alerts: [alerts] webhook_url), find the events with \
                     `thermos events list --status failed`, then `thermos events redeliver EVENT_ID`",
                )
            }
        }
        Err(e) => Check::fail(
            "webhook deliveries",
            format!("cannot read events: {}", error_chain(&e)),
            "see the database check",
        ),
    };
    vec![backlog, failures]
}

/// Runs still marked `running` whose heartbeat is older than
/// `runs.stale_after`: their process died and no serving instance has
/// marked them stale yet (one does within half that time), or it hangs.
pub(super) async fn runs(config: &Config, store: &dyn Store) -> Vec<Check> {
    let now = OffsetDateTime::now_utc();
    let stale_after = config.runs.stale_after;
    match store.list_runs(200).await {
        Err(e) => vec![Check::fail(
            "runs",
            format!("cannot read runs: {}", error_chain(&e)),
            "check the database",
        )],
        Ok(runs) => {
            let stuck: Vec<_> = runs
                .iter()
                .filter(|r| r.status == thermos_store::run::RunStatus::Running && now - r.heartbeat_at > stale_after)
                .collect();
            match stuck.first() {
                None => vec![Check::ok("runs", format!("{} recent run(s), none stuck", runs.len()))],
                Some(oldest) => vec![Check::warn(
                    "runs",
                    format!(
                        "{} run(s) marked running without a heartbeat for over {} (e.g. {}, last heartbeat {} ago)",
                        stuck.len(),
                        humantime::format_duration(stale_after),
                        oldest.id,
                        short_duration((now - oldest.heartbeat_at).whole_seconds())
                    ),
                    "start `thermos serve` (it marks them stale) or `thermos runs cancel ID`",
                )],
            }
        }
    }
}

/// The live `thermos serve` instances (their heartbeat is younger than
/// [`INSTANCE_ALIVE`]), and whether any of them runs the engine.
pub(super) async fn instances(store: &dyn Store) -> Vec<Check> {
    let now = OffsetDateTime::now_utc();
    let live = match store.live_instances(now - INSTANCE_ALIVE).await {
        Ok(live) => live,
        Err(e) => {
            return vec![Check::fail(
                "instances",
                format!("cannot read instances: {}", error_chain(&e)),
                "see the database check",
            )];
        }
    };
    let names = live.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
    let check = if live.is_empty() {
        Check::warn(
            "instances",
            format!(
                "no `thermos serve` instance has beaten in the last {}: nothing refreshes on schedule",
                humantime::format_duration(INSTANCE_ALIVE)
            ),
            "start `thermos serve` (with [engine] enabled = true on at least one instance)",
        )
    } else if !live.iter().any(|i| i.engine_enabled) {
        Check::warn(
            "instances",
            format!(
                "{} live, all API-only ({names}): nothing refreshes on schedule",
                live.len()
            ),
            "run at least one instance with [engine] enabled = true",
        )
    } else {
        Check::ok("instances", format!("{} live: {names}", live.len()))
    };
    vec![check]
}

//! `thermos demo`: Thermos at work with no OAuth account.
//!
//! Starts the project's test OAuth provider on loopback (rotating refresh
//! tokens; a reused one revokes the grant), a temporary SQLite database and
//! the real server; imports connections; lets the engine keep them fresh
//! while a few clients ask for tokens through the HTTP API and check each one
//! against the provider; prints a summary line every second and a final
//! report. Everything stays on loopback and every loop ends at the deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};
use thermos_core::status::ConnectionStatus;
use thermos_testprovider::{Fault, GrantId, ProviderOptions, TestProvider};
use tokio::sync::Mutex;

mod capture;

use crate::app::{self, Application};
use crate::cli::parse_duration;
use crate::config::Config;
use capture::Capture;

const DEMO_PROVIDER: &str = "demo";
const DEMO_REFRESH: &str = "backoff_initial = \"1s\"\nbackoff_max = \"10s\"\nrequest_timeout = \"10s\"";
const CLIENTS: usize = 4;
const CLIENT_PAUSE: Duration = Duration::from_millis(25);

/// Arguments of `thermos demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Connections to import.
    #[arg(long, default_value_t = 100)]
    connections: u32,
    /// Lifetime of the provider's access tokens.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ttl: Duration,
    /// How long to run.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    duration: Duration,
    /// Share of token requests the provider answers with 503 (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Take the provider down (503 to everything) this long into the run.
    #[arg(long, value_parser = parse_duration)]
    outage_at: Option<Duration>,
    /// How long the outage lasts.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    outage_for: Duration,
}

#[derive(Debug, Default)]
struct ClientTally {
    served: AtomicU64,
    invalid: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

/// Runs the demo and prints its report.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.connections > 100_000 {
        bail!("--connections: must be 1-100000");
    }
    if args.ttl < Duration::from_secs(2) {
        bail!("--ttl: must be at least 2s");
    }
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!("--fail-rate: must be between 0 and 1");
    }
    let provider = TestProvider::try_start(ProviderOptions {
        access_token_ttl: args.ttl,
        ..ProviderOptions::default()
    })
    .await
    .context("start the test provider")?;
    if args.fail_rate > 0.0 {
        provider.set_fault(Fault::FailRate(args.fail_rate));
    }
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let capture = Capture::start().await.context("start the webhook receiver")?;
    let mut toml = loopback_config_toml(dir.path(), DEMO_PROVIDER, &provider.token_url(), DEMO_REFRESH, true);
    toml = toml.replacen("[security]\n", "[security]\nallow_private_targets = true\n", 1);
    toml.push_str(&format!(
        "\n[alerts]\nwebhook_url = \"{}\"\nformat = \"slack\"\nwindow = \"15s\"\n",
        capture.alerts_url()
    ));
    let config = Config::from_toml_str(&toml)?;
    // A key file in the temporary directory, so `thermos doctor` finds it too.
    let (key, _) = config.load_or_create_master_key()?;
    let admin_key = format!("demo-{}", uuid::Uuid::now_v7().simple());
    let application = Application::build(&config, key, Some(admin_key.clone().into()), app::system_clock()).await?;
    let base = format!("http://{}", application.local_addr());
    let engine = application.engine().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async move {
        let _ = stop_rx.await;
    }));

    println!(
        "thermos demo: {} connections, {}s tokens (rotating), {} run, provider fail rate {:.0}%; database {}",
        args.connections,
        args.ttl.as_secs(),
        humantime::format_duration(args.duration),
        args.fail_rate * 100.0,
        dir.path().join("thermos.db").display()
    );
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let hook = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(&admin_key)
        .json(&json!({"project": "demo", "url": capture.hook_url()}))
        .send()
        .await?;
    if hook.status() != reqwest::StatusCode::CREATED {
        bail!("registering the demo webhook answered {}", hook.status());
    }
    let started = Instant::now();
    let (ids, grants) = import(&http, &base, &admin_key, &provider, args.connections, args.ttl).await?;
    println!(
        "imported {} connections in {} ms",
        ids.len(),
        started.elapsed().as_millis()
    );

    let deadline = tokio::time::Instant::now() + args.duration;
    let tally = Arc::new(ClientTally::default());
    let ids = Arc::new(ids);
    let provider = Arc::new(provider);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, base, key, ids, tally, provider) = (
                http.clone(),
                base.clone(),
                admin_key.clone(),
                ids.clone(),
                tally.clone(),
                provider.clone(),
            );
            tokio::spawn(async move { client_loop(http, base, key, ids, tally, provider, deadline).await })
        })
        .collect();

    let run_started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let outage = args.outage_at.map(|at| (at, at + args.outage_for));
    while tokio::time::Instant::now() < deadline {
        ticker.tick().await;
        if let Some((from, to)) = outage {
            let elapsed = run_started.elapsed();
            if elapsed >= from && elapsed < to && provider.pending_faults() == 0 {
                provider.set_fault(Fault::Unavailable);
            } else if elapsed >= to {
                if args.fail_rate > 0.0 {
                    provider.set_fault(Fault::FailRate(args.fail_rate));
                } else {
                    provider.clear_fault();
                }
            }
        }
        let stats = engine.stats();
        let due_next = match engine.store().next_due_at().await {
            Ok(Some(at)) => format!("{:.1}s", (at - engine.now()).as_seconds_f64().max(0.0)),
            _ => "-".into(),
        };
        println!(
            "[{:>4}s] refreshed {:>7}  failed {:>5}  in flight {:>4}  due next {:>6}  max lateness {:>5} ms  tokens served {:>7} ({} invalid)",
            run_started.elapsed().as_secs(),
            stats.refreshed,
            stats.failed,
            engine.in_flight(),
            due_next,
            stats.max_lateness_ms,
            tally.served.load(Ordering::Relaxed),
            tally.invalid.load(Ordering::Relaxed),
        );
    }
    for client in clients {
        let _ = client.await;
    }
    let _ = engine.settle(Duration::from_secs(15)).await;
    let mut final_check = check_all(&http, &base, &admin_key, &ids, &provider).await;
    final_check.revoked = grants.iter().filter(|g| provider.is_revoked(g)).count();
    let counts = engine.store().count_by_status().await?;
    let metrics = http.get(format!("{base}/metrics")).send().await?.text().await?;
    println!("\n--- /metrics excerpt ---");
    for line in metrics.lines().filter(|l| is_headline_metric(l)) {
        println!("{line}");
    }
    println!("\n--- thermos doctor ---");
    if let Err(e) = crate::cli::doctor::run(&config, crate::cli::doctor::DoctorArgs::default()).await {
        println!("(doctor: {e:#})");
    }
    let _ = stop_tx.send(());
    let _ = server.await;

    let stats = engine.stats();
    let mut latencies = std::mem::take(&mut *tally.latencies_us.lock().await);
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mean_lateness = stats
        .total_lateness_ms
        .checked_div(stats.scheduled_started)
        .unwrap_or(0);
    let states: Vec<String> = ConnectionStatus::ALL
        .iter()
        .map(|s| {
            format!(
                "{s} {}",
                counts.iter().filter(|c| c.status == *s).map(|c| c.count).sum::<u64>()
            )
        })
        .collect();
    println!("\n=== thermos demo: final report ===");
    println!(
        "connections            {} ({}s tokens, {} run)",
        args.connections,
        args.ttl.as_secs(),
        humantime::format_duration(args.duration)
    );
    println!(
        "refreshes              {} succeeded, {} failed attempts, {} superseded",
        stats.refreshed, stats.failed, stats.superseded
    );
    println!(
        "provider               {} token calls, {} refresh-token reuses, {} grants revoked",
        provider.token_calls(),
        provider.reuse_detected(),
        final_check.revoked
    );
    println!(
        "scheduled lateness     max {} ms, mean {} ms over {} scheduled refreshes",
        stats.max_lateness_ms, mean_lateness, stats.scheduled_started
    );
    println!(
        "tokens served          {} (expired or invalid at the provider: {}; errors: {})",
        tally.served.load(Ordering::Relaxed),
        tally.invalid.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed)
    );
    println!(
        "token API latency      p50 {:.2} ms, p99 {:.2} ms",
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0
    );
    println!("final states           {}", states.join(", "));
    println!("final tokens valid     {}/{}", final_check.valid, ids.len());
    report_outbox(&capture);
    Ok(())
}

/// A configuration for a throw-away instance in `dir` (database and key
/// file there, API on a free loopback port) with one provider, `slug`, at a
/// test provider's `token_url`. `refresh_toml` goes into `[refresh]`. Used by
/// the demo and by the end-to-end tests.
pub fn loopback_config_toml(
    dir: &std::path::Path,
    slug: &str,
    token_url: &str,
    refresh_toml: &str,
    engine_enabled: bool,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
[security]
master_key_file = "{key}"
[refresh]
{refresh_toml}
[engine]
enabled = {engine_enabled}
[[provider]]
slug = "{slug}"
token_url = "{token_url}"
client_id = "{id}"
client_secret = "{secret}"
auth_method = "client_secret_basic"
default_ttl = "1h"
"#,
        db = dir.join("thermos.db").display(),
        key = dir.join("thermos.key").display(),
        id = thermos_testprovider::DEFAULT_CLIENT_ID,
        secret = thermos_testprovider::DEFAULT_CLIENT_SECRET,
    )
}

async fn import(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    provider: &TestProvider,
    count: u32,
    ttl: Duration,
) -> anyhow::Result<(Vec<String>, Vec<GrantId>)> {
    let mut grants = Vec::new();
    let bodies: Vec<Value> = (0..count)
        .map(|i| {
            let grant = provider.issue_grant();
            grants.push(grant.grant.clone());
            json!({"project": "demo", "provider": DEMO_PROVIDER, "external_id": format!("user-{i}"),
                "access_token": grant.access_token, "refresh_token": grant.refresh_token, "expires_in": ttl.as_secs()})
        })
        .collect();
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(bodies)
        .map(|body| async move {
            let response = http
                .post(format!("{base}/v1/connections"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            let value: Value = response.json().await?;
            if status != reqwest::StatusCode::CREATED {
                bail!("import answered {status}: {value}");
            }
            Ok(value["id"].as_str().unwrap_or_default().to_owned())
        })
        .buffered(16)
        .collect()
        .await;
    Ok((results.into_iter().collect::<anyhow::Result<_>>()?, grants))
}

async fn client_loop(
    http: reqwest::Client,
    base: String,
    key: String,
    ids: Arc<Vec<String>>,
    tally: Arc<ClientTally>,
    provider: Arc<TestProvider>,
    deadline: tokio::time::Instant,
) {
    let mut latencies = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let id = &ids[rand::rng().random_range(0..ids.len())];
        let started = Instant::now();
        let answer = http
            .get(format!("{base}/v1/connections/{id}/token"))
            .bearer_auth(&key)
            .send()
            .await;
        let body: Option<Value> = match answer {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        latencies.push(started.elapsed().as_micros() as u64);
        match body.as_ref().and_then(|b| b["access_token"].as_str()) {
            Some(token) => {
                tally.served.fetch_add(1, Ordering::Relaxed);
                if !provider.access_token_is_valid(token) {
                    tally.invalid.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(CLIENT_PAUSE).await;
    }
    tally.latencies_us.lock().await.extend(latencies);
}

struct FinalCheck {
    valid: usize,
    revoked: usize,
}

/// Asks for every connection's token once more and checks it at the provider.
async fn check_all(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    ids: &[String],
    provider: &TestProvider,
) -> FinalCheck {
    let answers: Vec<Option<String>> = futures::stream::iter(ids)
        .map(|id| async move {
            let response = http
                .get(format!("{base}/v1/connections/{id}/token"))
                .bearer_auth(key)
                .send()
                .await
                .ok()?;
            let body: Value = response.json().await.ok()?;
            body["access_token"].as_str().map(str::to_owned)
        })
        .buffered(16)
        .collect()
        .await;
    let valid = answers
        .iter()
        .flatten()
        .filter(|t| provider.access_token_is_valid(t))
        .count();
    FinalCheck { valid, revoked: 0 }
}

/// Prints what the stand-in application and operators received.
fn report_outbox(capture: &Capture) {
    let by_type = capture.deliveries_by_type();
    let total: u64 = by_type.values().sum();
    let types: Vec<String> = by_type.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    println!("webhook deliveries     {total} ({})", types.join(", "));
    if let Some(first) = capture.first_delivery() {
        println!("\n--- a webhook delivery as received (POST /hook) ---");
        for (name, value) in &first.headers {
            println!("{name}: {value}");
        }
        println!("\n{}", serde_json::to_string_pretty(&first.body).unwrap_or_default());
    }
    let alerts = capture.alerts();
    println!("\n--- operator alerts received: {} ---", alerts.len());
    for alert in &alerts {
        println!("{}", alert.body["text"].as_str().unwrap_or_default());
    }
    if let Some(first) = alerts.first() {
        println!("\n--- the first alert as received (Slack format) ---");
        println!("{}", serde_json::to_string_pretty(&first.body).unwrap_or_default());
    }
}

/// The `/metrics` lines worth showing at the end of the demo.
fn is_headline_metric(line: &str) -> bool {
    const SHOWN: [&str; 8] = [
        "thermos_refresh_attempts_total",
        "thermos_connections{",
        "thermos_tokens_served_total",
        "thermos_tokens_served_expired_total",
        "thermos_refresh_lateness_seconds_count",
        "thermos_refresh_lateness_seconds_sum",
        "thermos_webhook_deliveries_total",
        "thermos_circuit_open",
    ];
    !line.starts_with('#') && SHOWN.iter().any(|name| line.starts_with(name))
}

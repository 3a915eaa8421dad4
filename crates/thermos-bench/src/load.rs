//! `thermos-bench load`: the load generator, run as a process of its own so
//! that its CPU is not the server's. `GET {url}/v1/connections/{id}/token`
//! over ids drawn at random from a file, from `concurrency` keep-alive
//! connections, closed-loop or (with `--rate`) paced, for a bounded time;
//! prints one JSON line: requests/s and latency percentiles (hdrhistogram).
//! Paced latencies are measured from the planned send time, so a stalled
//! server is not hidden by a stalled client (coordinated omission). With
//! `--check-expiry` it also reads each token's `expires_at` and counts those
//! already expired when the answer arrived (`steady-state` uses it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use hdrhistogram::Histogram;
use rand::Rng as _;
use serde_json::json;
use tokio::time::Instant;

use crate::proc;

/// The environment variable the API key comes in (not on the command line,
/// where `ps` would show it).
pub const KEY_ENV: &str = "THERMOS_BENCH_API_KEY";

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The server's base URL (http://127.0.0.1:PORT).
    #[arg(long)]
    url: String,
    /// A file with one connection id per line.
    #[arg(long)]
    ids_file: PathBuf,
    /// Requests in flight (one keep-alive connection each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second in total (paced); default: as fast as answered.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of load before measuring (not recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Count the tokens whose `expires_at` had passed when they arrived.
    #[arg(long)]
    check_expiry: bool,
}

#[derive(Default)]
struct Tally {
    histogram: Option<Histogram<u64>>,
    ok: u64,
    errors: u64,
    /// Tokens already expired when they arrived (with `--check-expiry`).
    expired: u64,
    /// The least time a token had left when it arrived, in ms.
    min_ttl_ms: Option<i64>,
}

/// The milliseconds a token answer had left at `received` (negative:
/// expired), from its `expires_at`; `None` if the body has none.
fn ttl_ms(body: &[u8], received: time::OffsetDateTime) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let expires_at = time::OffsetDateTime::parse(
        value["expires_at"].as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some((expires_at - received).whole_milliseconds() as i64)
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let key = std::env::var(KEY_ENV).with_context(|| format!("{KEY_ENV} is not set"))?;
    let text = std::fs::read_to_string(&args.ids_file).context("read the ids file")?;
    let ids: Arc<Vec<String>> = Arc::new(text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect());
    if ids.is_empty() || args.concurrency == 0 || !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("need ids, --concurrency ≥ 1 and 0 < --duration ≤ 3600");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .context("build the HTTP client")?;
    let auth = format!("Bearer {key}");
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = measure_from + Duration::from_secs_f64(args.duration);
    // Per task: the interval between its sends when paced.
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency {
        let (http, ids, auth, base) = (http.clone(), ids.clone(), auth.clone(), args.url.clone());
        let check_expiry = args.check_expiry;
        tasks.spawn(async move {
            let mut tally = Tally {
                histogram: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
                ..Tally::default()
            };
            // Spread the paced tasks' first sends over one interval.
            let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(task as f64 / args.concurrency as f64));
            let mut planned = start + offset;
            loop {
                let sent = match interval {
                    Some(i) => {
                        tokio::time::sleep_until(planned).await;
                        let at = planned;
                        planned += i;
                        at
                    }
                    None => Instant::now(),
                };
                if sent >= end {
                    break;
                }
                let id = &ids[rand::rng().random_range(0..ids.len())];
                let answer = http
                    .get(format!("{base}/v1/connections/{id}/token"))
                    .header(reqwest::header::AUTHORIZATION, &auth)
                    .send()
                    .await;
                let (ok, ttl) = match answer {
                    Ok(r) => {
                        let success = r.status().is_success();
                        match r.bytes().await {
                            Ok(body) if success && check_expiry => {
                                (true, ttl_ms(&body, time::OffsetDateTime::now_utc()))
                            }
                            Ok(_) => (success, None),
                            Err(_) => (false, None),
                        }
                    }
                    Err(_) => (false, None),
                };
                if sent < measure_from {
                    continue;
                }
                if let Some(ttl) = ttl {
                    tally.expired += u64::from(ttl <= 0);
                    tally.min_ttl_ms = Some(tally.min_ttl_ms.map_or(ttl, |least| least.min(ttl)));
                }
                if ok {
                    tally.ok += 1;
                    let micros = sent.elapsed().as_micros().max(1) as u64;
                    if let Some(h) = tally.histogram.as_mut() {
                        h.saturating_record(micros);
                    }
                } else {
                    tally.errors += 1;
                }
            }
            tally
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let (mut ok, mut errors, mut expired, mut min_ttl_ms) = (0, 0, 0, None::<i64>);
    while let Some(tally) = tasks.join_next().await {
        let tally = tally.context("a load task panicked")?;
        ok += tally.ok;
        errors += tally.errors;
        expired += tally.expired;
        min_ttl_ms = match (min_ttl_ms, tally.min_ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(h) = tally.histogram {
            all.add(h).context("merge histograms")?;
        }
    }
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "requests": ok,
            "errors": errors,
            "seconds": args.duration,
            "per_second": ok as f64 / args.duration,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": all.max() as f64 / 1000.0,
            "load_generator_cpu_seconds": proc::cpu_time("self")?.as_secs_f64(),
            "expiry_checked": args.check_expiry,
            "tokens_expired_on_arrival": expired,
            "least_ttl_on_arrival_ms": min_ttl_ms,
        })
    );
    Ok(())
}

//! `thermos-bench steady-state`: the real `thermos serve` keeping N
//! connections fresh for minutes, against the test provider in a process of
//! its own, while the load generator (`thermos-bench load --check-expiry`,
//! a third process) asks for tokens of random connections and checks each
//! one's expiry on arrival.
//!
//! The connections' first refreshes are spread evenly over one period
//! (N / rate seconds, 100 s by default) from the start of the run; the
//! provider's tokens live one period plus the engine's lead (`refresh.margin`
//! and its jitter of up to 10 %), so each refresh plans the next one a period
//! later and the engine keeps refreshing about `rate` connections a second.
//!
//! Lateness (actual − planned start of a scheduled refresh) is read where an
//! operator reads it: the server's `thermos_refresh_lateness_seconds`
//! histogram on `/metrics`, between the start and the end of the run. A
//! histogram knows its buckets, not its samples: each quantile is given
//! with the bucket it lies in, the maximum as that bucket. Tokens served
//! expired are counted twice: by the load generator (an `expires_at` already
//! past on arrival) and by the server (`thermos_tokens_served_expired_total`,
//! the expired tokens it refused to hand out). CPU and RSS are the server
//! process's, from /proc.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use rand::Rng as _;
use serde_json::{Value, json};
use thermos_core::ExposeSecret as _;
use thermos_core::seal::MasterKey;
use time::OffsetDateTime;

use crate::fixture::{self, Backend, Database, Row, Tokens};
use crate::load::KEY_ENV;
use crate::proc::{self, ChildGuard};
use crate::prom::{Estimate, Histogram, Scrape};
use crate::provider::Provider;
use crate::server::{Server, free_port};

/// The p99 lateness to stay under, in seconds.
const TARGET_P99_LATENESS: f64 = 1.0;
/// Share of the lead the planning jitter takes at most (see `thermos_core::plan`).
const JITTER_SHARE: f64 = 0.10;

#[derive(Debug, Args)]
pub struct SteadyArgs {
    /// Connections kept fresh.
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Refreshes per second the schedule asks for.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 180)]
    duration: u64,
    /// `refresh.margin` in seconds: how long before expiry a token is
    /// refreshed. Above the token API's default `min_ttl` (60 s), so that
    /// token requests find every token fresh enough and refresh none on
    /// demand (as with the default margin of 5 minutes).
    #[arg(long, default_value_t = 90)]
    margin: u64,
    /// Token requests per second (paced) of the load generator.
    #[arg(long, default_value_t = 500.0)]
    api_rate: f64,
    /// Token requests in flight at most.
    #[arg(long, default_value_t = 8)]
    api_concurrency: usize,
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// PostgreSQL server (with --backend postgres); a schema of its own is
    /// created and dropped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// The `thermos` binary (default: beside this one).
    #[arg(long)]
    thermos_bin: Option<PathBuf>,
    /// The `thermos-testprovider` binary (default: beside this one).
    #[arg(long)]
    provider_bin: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The schedule the fixture sets up.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// N / rate: how often each connection is refreshed.
    period: Duration,
    /// `refresh.margin`.
    lead: Duration,
    /// The provider's access-token lifetime: one period plus the mean lead.
    ttl: Duration,
}

impl Schedule {
    fn new(args: &SteadyArgs) -> anyhow::Result<Self> {
        if args.connections == 0 || args.rate.is_nan() || args.rate <= 0.0 || args.duration == 0 || args.margin == 0 {
            bail!("--connections, --rate, --duration and --margin must be positive");
        }
        let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
        let lead = Duration::from_secs(args.margin);
        let ttl = period + lead.mul_f64(1.0 + JITTER_SHARE / 2.0);
        // The engine's lead is the margin only while it is at most half the lifetime.
        if lead > ttl / 2 {
            bail!("--connections / --rate ({period:?}) must be at least 0.95 × --margin ({lead:?})");
        }
        Ok(Self { period, lead, ttl })
    }
}

/// What the run measured.
#[derive(Debug)]
struct Measured {
    import_per_second: f64,
    startup: Duration,
    late_start: Duration,
    rss_ready: u64,
    rss_max_sampled: u64,
    rss_end: u64,
    rss_peak: u64,
    cpu: Duration,
    refreshed: f64,
    failed: f64,
    lateness: Histogram,
    served: f64,
    refused_expired: f64,
    load: Value,
}

pub async fn run(args: SteadyArgs) -> anyhow::Result<()> {
    let schedule = Schedule::new(&args)?;
    let load_before = proc::load_average();
    let ttl_arg = format!("{}ms", schedule.ttl.as_millis());
    let provider = Provider::spawn(args.provider_bin.as_deref(), &["--access-token-ttl", &ttl_arg])?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let db = Database::new(args.backend, dir.path(), &args.pg_url);
    let measured = measure(&args, schedule, &provider, &db, dir.path()).await;
    if let Err(e) = db.drop_schema().await {
        eprintln!("warning: {e:#}");
    }
    let m = measured?;
    let provider_stats = provider.stats(&reqwest::Client::new()).await?;
    report(&args, schedule, load_before, &m, &provider_stats);
    Ok(())
}

async fn measure(
    args: &SteadyArgs,
    schedule: Schedule,
    provider: &Provider,
    db: &Database,
    dir: &Path,
) -> anyhow::Result<Measured> {
    let n = args.connections;
    let http = reqwest::Client::new();
    let grants = provider.grants(&http, n).await?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let refresh_toml = format!("margin = \"{}s\"\nrequest_timeout = \"30s\"\n", args.margin);
    let toml = fixture::config_toml(
        dir,
        db,
        &format!("127.0.0.1:{port}"),
        &provider.token_url,
        (&provider.client_id, &provider.client_secret),
        &refresh_toml,
    );
    let config_path = dir.join("thermos.toml");
    std::fs::write(&config_path, &toml).context("write the config")?;
    let config = fixture::parse_config(&toml)?;
    let (key, key_text) = MasterKey::generate();

    // The first refreshes spread evenly over one period from `start_at`,
    // which leaves time for the import (at 20,000/s or better) and start-up.
    let now = thermos::engine::truncate_ms(OffsetDateTime::now_utc());
    let lead_in = Duration::from_secs(5) + Duration::from_secs_f64(n as f64 / 20_000.0);
    let start_at = now + lead_in;
    let rows = grants.into_iter().enumerate().map(|(i, g)| {
        let due = start_at + schedule.period.mul_f64(i as f64 / n as f64);
        Row {
            tokens: Tokens {
                access_token: g.access_token,
                refresh_token: g.refresh_token,
            },
            expires_at: due + schedule.lead,
            next_refresh_at: due,
        }
    });
    let store = thermos::app::open_store(&config).await?;
    let imported = fixture::import(&store, &key, rows, now, 2).await?;
    drop(store);
    let ids_path = dir.join("ids.txt");
    let mut ids_file = std::io::BufWriter::new(std::fs::File::create(&ids_path).context("ids file")?);
    for id in &imported.ids {
        writeln!(ids_file, "{id}")?;
    }
    ids_file.flush()?;
    drop(ids_file);

    let admin_key = format!("bench-{:032x}", rand::rng().random::<u128>());
    let server = Server::start(
        args.thermos_bin.as_deref(),
        &config_path,
        &base,
        &[
            ("THERMOS_ADMIN_KEY", &admin_key),
            ("THERMOS_MASTER_KEY", key_text.expose_secret()),
        ],
        &dir.join("thermos.log"),
        Duration::from_secs(120),
    )
    .await?;
    let (pid, startup) = (server.pid(), server.startup);
    let (rss_ready, _) = proc::memory(&pid)?;
    let until_start = Duration::try_from(start_at - OffsetDateTime::now_utc()).unwrap_or_default();
    tokio::time::sleep(until_start).await;
    let late_start = Duration::try_from(OffsetDateTime::now_utc() - start_at).unwrap_or_default();

    let before = Scrape::fetch(&http, &base).await?;
    let cpu0 = proc::cpu_time(&pid)?;
    let started = Instant::now();
    let mut loader = spawn_load(args, &base, &ids_path, &admin_key)?;
    let stdout = loader.take_stdout().context("the load generator's stdout")?;
    let wait = Duration::from_secs(args.duration + 60);
    let line = tokio::task::spawn_blocking(move || proc::first_line(stdout, wait));

    let run_for = Duration::from_secs(args.duration);
    let mut rss_max_sampled = rss_ready;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0_u64;
    while started.elapsed() < run_for {
        ticker.tick().await;
        ticks += 1;
        rss_max_sampled = rss_max_sampled.max(proc::memory(&pid)?.0);
        let elapsed = started.elapsed().as_secs();
        if !args.json && ticks.is_multiple_of(30) {
            let now = Scrape::fetch(&http, &base).await?;
            let refreshed = success(&now) - success(&before);
            let cpu = proc::cpu_time(&pid)?.saturating_sub(cpu0).as_secs_f64();
            eprintln!(
                "[{elapsed:>4}s] refreshed {refreshed:>8.0}  CPU {:>4.0} %  RSS {:>6.1} MB",
                100.0 * cpu / started.elapsed().as_secs_f64(),
                proc::memory(&pid)?.0 as f64 / 1_048_576.0
            );
        }
    }
    let cpu = proc::cpu_time(&pid)?.saturating_sub(cpu0);
    let after = Scrape::fetch(&http, &base).await?;
    let (rss_end, rss_peak) = proc::memory(&pid)?;
    let line = line.await??;
    loader.wait_for_exit(Duration::from_secs(10))?;
    server.stop(Duration::from_secs(30))?;
    let load: Value = serde_json::from_str(&line).context("parse the load generator's result")?;

    use thermos::metrics as m;
    let delta = |name: &str, with: &[(&str, &str)]| after.sum(name, with) - before.sum(name, with);
    Ok(Measured {
        import_per_second: imported.per_second(),
        startup,
        late_start,
        rss_ready,
        rss_max_sampled,
        rss_end,
        rss_peak,
        cpu,
        refreshed: success(&after) - success(&before),
        failed: delta(m::REFRESH_ATTEMPTS_TOTAL, &[(m::LABEL_OUTCOME, m::outcome::FAILED)]),
        lateness: after
            .histogram(m::REFRESH_LATENESS_SECONDS)
            .since(&before.histogram(m::REFRESH_LATENESS_SECONDS)),
        served: delta(m::TOKENS_SERVED_TOTAL, &[]),
        refused_expired: delta(m::TOKENS_SERVED_EXPIRED_TOTAL, &[]),
        load,
    })
}

/// Scheduled and on-demand refreshes that committed new tokens, so far.
fn success(scrape: &Scrape) -> f64 {
    use thermos::metrics as m;
    scrape.sum(m::REFRESH_ATTEMPTS_TOTAL, &[(m::LABEL_OUTCOME, m::outcome::SUCCESS)])
}

/// The load generator, paced, checking every token's expiry, for the run.
fn spawn_load(args: &SteadyArgs, base: &str, ids_path: &Path, admin_key: &str) -> anyhow::Result<ChildGuard> {
    let me = std::env::current_exe().context("locate this binary")?;
    let mut load = Command::new(me);
    load.arg("load")
        .arg("--url")
        .arg(base)
        .arg("--ids-file")
        .arg(ids_path)
        .arg("--concurrency")
        .arg(args.api_concurrency.to_string())
        .arg("--rate")
        .arg(args.api_rate.to_string())
        .arg("--duration")
        .arg(args.duration.to_string())
        .arg("--warmup")
        .arg("0")
        .arg("--check-expiry")
        .env(KEY_ENV, admin_key)
        .stdout(Stdio::piped());
    ChildGuard::spawn("thermos-bench load", load)
}

/// `estimate` in milliseconds with its bucket: `≈ 2.1 ms (0–5 ms)`.
fn ms(estimate: Option<Estimate>) -> String {
    match estimate {
        Some(e) if e.upper.is_infinite() => format!("> {:.0} ms", e.lower * 1e3),
        Some(e) => format!(
            "≈ {:.1} ms ({:.0}–{:.0} ms)",
            e.value * 1e3,
            e.lower * 1e3,
            e.upper * 1e3
        ),
        None => "-".into(),
    }
}

fn estimate_json(estimate: Option<Estimate>) -> Value {
    estimate.map_or(Value::Null, |e| {
        json!({
            "estimate_seconds": e.value,
            "bucket_lower_seconds": e.lower,
            "bucket_upper_seconds": if e.upper.is_infinite() { Value::Null } else { json!(e.upper) },
        })
    })
}

fn report(args: &SteadyArgs, schedule: Schedule, load_before: f64, m: &Measured, provider: &Value) {
    let seconds = args.duration as f64;
    let (p50, p99, max) = (m.lateness.quantile(0.5), m.lateness.quantile(0.99), m.lateness.max());
    let p99_met = p99.map(|e| e.upper <= TARGET_P99_LATENESS);
    let expired_on_arrival = m.load["tokens_expired_on_arrival"].as_u64().unwrap_or(0);
    let mb = |b: u64| b as f64 / 1_048_576.0;
    let report = json!({
        "scenario": "steady-state",
        "backend": args.backend.as_str(),
        "connections": args.connections,
        "cpus": proc::cpus(),
        "load_average_1m_before": load_before,
        "seconds": seconds,
        "planned_refreshes_per_second": args.rate,
        "token_ttl_seconds": schedule.ttl.as_secs_f64(),
        "refresh_margin_seconds": schedule.lead.as_secs_f64(),
        "import_per_second": m.import_per_second,
        "startup_seconds": m.startup.as_secs_f64(),
        "late_start_seconds": m.late_start.as_secs_f64(),
        "refreshed": m.refreshed,
        "scheduled_refreshes_started": m.lateness.count,
        "refreshes_per_second": m.refreshed / seconds,
        "failed_attempts": m.failed,
        "lateness": {
            "scheduled_refreshes": m.lateness.count,
            "mean_seconds": m.lateness.mean(),
            "p50": estimate_json(p50),
            "p99": estimate_json(p99),
            "max": estimate_json(max),
            "target_p99_seconds": TARGET_P99_LATENESS,
            "p99_target_met": p99_met,
        },
        "tokens_served": m.served,
        "tokens_expired_on_arrival": expired_on_arrival,
        "tokens_refused_as_expired": m.refused_expired,
        "server_cpu_percent": 100.0 * m.cpu.as_secs_f64() / seconds,
        "rss_bytes_ready": m.rss_ready,
        "rss_bytes_max_sampled": m.rss_max_sampled,
        "rss_bytes_peak": m.rss_peak,
        "rss_bytes_end": m.rss_end,
        "load": m.load,
        "provider": provider,
    });
    if args.json {
        println!("{report}");
        return;
    }
    println!(
        "steady-state: {} connections on {}, tokens of {:.1} s refreshed {} s before expiry (≈{:.0}/s planned), {} s ({} CPUs, load {load_before:.2} before)",
        args.connections,
        args.backend.as_str(),
        schedule.ttl.as_secs_f64(),
        args.margin,
        args.rate,
        args.duration,
        proc::cpus()
    );
    println!(
        "  import           {:>9.0} connections/s; start-up {:.3} s{}",
        m.import_per_second,
        m.startup.as_secs_f64(),
        if m.late_start > Duration::from_millis(100) {
            format!(
                " (the run started {:.1} s after its first due time)",
                m.late_start.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    println!(
        "  refreshes        {:>9.0} in {seconds} s = {:.0}/s ({} scheduled ones started, {} failed attempts)",
        m.refreshed,
        m.refreshed / seconds,
        m.lateness.count,
        m.failed
    );
    println!(
        "  lateness         p50 {}, p99 {}, max {}; mean {:.1} ms over {} scheduled refreshes (target p99 < 1 s: {})",
        ms(p50),
        ms(p99),
        ms(max),
        m.lateness.mean().unwrap_or(0.0) * 1e3,
        m.lateness.count,
        match p99_met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "no refresh",
        }
    );
    println!(
        "  token API        {:.0} tokens served ({:.0}/s asked, {} errors); expired on arrival {expired_on_arrival}, refused as expired {:.0} (must be 0); least time left on arrival {} ms; latency p50 {:.2} ms, p99 {:.2} ms",
        m.served,
        args.api_rate,
        m.load["errors"],
        m.refused_expired,
        m.load["least_ttl_on_arrival_ms"],
        m.load["p50_ms"].as_f64().unwrap_or(f64::NAN),
        m.load["p99_ms"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "  Thermos CPU      {:>9.0} % of one core",
        100.0 * m.cpu.as_secs_f64() / seconds
    );
    println!(
        "  Thermos RSS      {:.1} MB ready, {:.1} MB at the end, {:.1} MB peak",
        mb(m.rss_ready),
        mb(m.rss_end),
        mb(m.rss_peak.max(m.rss_max_sampled))
    );
    println!("  provider         {provider}");
}

//! `thermos-bench scale`: what the number of stored connections costs. For
//! each size (10,000, 100,000 and 1,000,000 by default), on a fresh
//! database: the import rate (the store's batch insert), the database's
//! size per connection, the start-up time of the real `thermos serve`
//! (spawn to `/ready` 200) and its RSS when ready; then, with the server
//! stopped, a fixed number of the stored connections (spread over the
//! table) made due and refreshed by the engine in this process against the
//! test provider, as `refresh-throughput` does: refreshes/s and CPU per
//! refresh. The per-refresh cost at the largest size over that at the
//! smallest must stay within 1.5.
//!
//! The other connections hold made-up tokens, valid for 30 days and due in
//! 29: nothing but the chosen ones comes due.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};
use thermos_core::ExposeSecret as _;
use thermos_core::id::ConnectionId;
use thermos_core::seal::MasterKey;
use thermos_store::Store;
use time::OffsetDateTime;

use crate::engine::{self, Phase};
use crate::fixture::{self, Backend, Database, Row, Tokens};
use crate::proc;
use crate::provider::Provider;
use crate::server::{Server, free_port};

/// The per-refresh cost ratio (largest size over smallest) to stay within.
const TARGET_COST_RATIO: f64 = 1.5;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Numbers of stored connections, one fresh database each.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000, 1_000_000])]
    sizes: Vec<usize>,
    /// Connections made due and refreshed at each size.
    #[arg(long, default_value_t = 5_000)]
    refreshes: usize,
    /// Refreshes in flight at once (`refresh.max_concurrency`).
    #[arg(long, default_value_t = 256)]
    concurrency: u32,
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// PostgreSQL server (with --backend postgres); a schema of its own is
    /// created and dropped at each size.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Batches of connections (5,000 each) in flight while importing.
    #[arg(long, default_value_t = 2)]
    import_in_flight: usize,
    /// Give up on a phase after this long (seconds).
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
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

/// The figures of one size.
#[derive(Debug)]
struct Size {
    connections: usize,
    load_before: f64,
    import_per_second: f64,
    import_seconds: f64,
    database_bytes: u64,
    startup: Duration,
    rss_ready: u64,
    made_due_seconds: f64,
    /// One update of the connection gauges (`count_by_status`, which the
    /// engine's `drive` runs at its start and every 15 s): wall time and
    /// CPU of this process.
    gauge_scan: (Duration, Duration),
    refresh: Phase,
}

impl Size {
    fn bytes_per_connection(&self) -> f64 {
        self.database_bytes as f64 / self.connections as f64
    }

    /// CPU per refresh without the one gauge scan the phase includes.
    fn cpu_us_per_refresh_without_scan(&self) -> f64 {
        self.refresh.cpu.saturating_sub(self.gauge_scan.1).as_secs_f64() * 1e6 / self.refresh.done.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "load_average_1m_before": self.load_before,
            "import_per_second": self.import_per_second,
            "import_seconds": self.import_seconds,
            "database_bytes": self.database_bytes,
            "database_bytes_per_connection": self.bytes_per_connection(),
            "startup_seconds": self.startup.as_secs_f64(),
            "rss_bytes_ready": self.rss_ready,
            "made_due_seconds": self.made_due_seconds,
            "connection_gauges_scan_seconds": self.gauge_scan.0.as_secs_f64(),
            "connection_gauges_scan_cpu_seconds": self.gauge_scan.1.as_secs_f64(),
            "refresh": self.refresh.json(),
            "cpu_us_per_refresh_without_the_gauge_scan": self.cpu_us_per_refresh_without_scan(),
        })
    }
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.sizes.is_empty() || args.sizes.contains(&0) || args.refreshes == 0 || args.concurrency == 0 {
        bail!("--sizes must be at least 1 each, --refreshes and --concurrency at least 1");
    }
    let load_before = proc::load_average();
    let provider = Provider::spawn(args.provider_bin.as_deref(), &[])?;
    let http = reqwest::Client::new();
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        if !args.json {
            eprintln!("scale: {n} connections…");
        }
        let dir = tempfile::tempdir().context("temp dir")?;
        let db = Database::new(args.backend, dir.path(), &args.pg_url);
        let measured = measure(&args, &provider, &http, &db, dir.path(), n).await;
        if let Err(e) = db.drop_schema().await {
            eprintln!("warning: {e:#}");
        }
        sizes.push(measured.with_context(|| format!("at {n} connections"))?);
    }
    let provider_stats = provider.stats(&http).await?;

    let smallest = sizes.iter().min_by_key(|s| s.connections);
    let largest = sizes.iter().max_by_key(|s| s.connections);
    let ratio = match (smallest, largest) {
        (Some(small), Some(large)) if large.connections > small.connections => Some((
            small.connections,
            large.connections,
            large.refresh.cpu_us_per() / small.refresh.cpu_us_per().max(1e-9),
            small.refresh.rate() / large.refresh.rate().max(1e-9),
            large.cpu_us_per_refresh_without_scan() / small.cpu_us_per_refresh_without_scan().max(1e-9),
        )),
        _ => None,
    };
    let report = json!({
        "scenario": "scale",
        "backend": args.backend.as_str(),
        "refreshes_per_size": args.refreshes,
        "concurrency": args.concurrency,
        "cpus": proc::cpus(),
        "load_average_1m_before": load_before,
        "sizes": sizes.iter().map(Size::json).collect::<Vec<_>>(),
        "cost_ratio": ratio.map(|(from, to, cpu, time, without_scan)| json!({
            "from_connections": from,
            "to_connections": to,
            "cpu_us_per_refresh_ratio": cpu,
            "seconds_per_refresh_ratio": time,
            "cpu_us_per_refresh_without_the_gauge_scan_ratio": without_scan,
            "target": TARGET_COST_RATIO,
        })),
        "provider": provider_stats,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let mb = |b: u64| b as f64 / 1_048_576.0;
    println!(
        "scale: {}, {} of the stored connections refreshed at each size, concurrency {} ({} CPUs, load {load_before:.2} before)",
        args.backend.as_str(),
        args.refreshes,
        args.concurrency,
        proc::cpus()
    );
    println!(
        "  {:>11} {:>6} {:>10} {:>10} {:>10} {:>9} {:>12} {:>14} {:>13} {:>11}",
        "connections",
        "load",
        "import/s",
        "bytes/conn",
        "start-up",
        "RSS ready",
        "refreshes/s",
        "CPU µs/refresh",
        "bytes alloc/r",
        "gauge scan"
    );
    for size in &sizes {
        println!(
            "  {:>11} {:>6.2} {:>10.0} {:>10.0} {:>8.3} s {:>6.1} MB {:>12.0} {:>8.0} ({:>3.0}) {:>13.0} {:>8.0} ms",
            size.connections,
            size.load_before,
            size.import_per_second,
            size.bytes_per_connection(),
            size.startup.as_secs_f64(),
            mb(size.rss_ready),
            size.refresh.rate(),
            size.refresh.cpu_us_per(),
            size.cpu_us_per_refresh_without_scan(),
            size.refresh.allocated_per().1,
            size.gauge_scan.1.as_secs_f64() * 1e3,
        );
        if size.refresh.failed > 0 {
            println!("              ({} refreshes failed)", size.refresh.failed);
        }
    }
    if let Some((from, to, cpu, time, without_scan)) = ratio {
        println!(
            "  cost at {to} over {from}: CPU per refresh {cpu:.2}, time per refresh {time:.2} (target ≤ {TARGET_COST_RATIO}: {}); without the gauge scan, CPU {without_scan:.2}",
            if cpu <= TARGET_COST_RATIO && time <= TARGET_COST_RATIO {
                "met"
            } else {
                "not met"
            }
        );
    }
    println!(
        "  (CPU µs/refresh: the refresh phase's CPU, which includes one connection-gauge scan (count_by_status, run by the engine at start and every 15 s), over the refreshes; in brackets without it; gauge scan: that scan's CPU)"
    );
    println!(
        "  (import: batch insert, {} a transaction; start-up: spawn to /ready 200; CPU: this process, which runs the engine{})",
        fixture::IMPORT_BATCH,
        if args.backend == Backend::Postgres {
            ", not the PostgreSQL server's"
        } else {
            ""
        }
    );
    println!("  provider         {provider_stats}");
    Ok(())
}

/// One size on a fresh database `db`.
async fn measure(
    args: &ScaleArgs,
    provider: &Provider,
    http: &reqwest::Client,
    db: &Database,
    dir: &Path,
    n: usize,
) -> anyhow::Result<Size> {
    let load_before = proc::load_average();
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let refresh_toml = format!("max_concurrency = {}\nrequest_timeout = \"30s\"\n", args.concurrency);
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
    // In the environment rather than a file: `serve` generates no key for PostgreSQL.
    let (key, key_text) = MasterKey::generate();

    // Import: every `stride`-th connection holds a real grant and will be
    // refreshed; the others hold made-up tokens.
    let refreshed = args.refreshes.min(n);
    let stride = n / refreshed;
    let grants = provider.grants(http, refreshed).await?;
    let now = thermos::engine::truncate_ms(OffsetDateTime::now_utc());
    let day = Duration::from_secs(86_400);
    let mut grants = grants.into_iter();
    let rows = (0..n).map(|i| {
        let grant = (i % stride == 0).then(|| grants.next()).flatten();
        let tokens = match grant {
            Some(g) => Tokens {
                access_token: g.access_token,
                refresh_token: g.refresh_token,
            },
            None => Tokens {
                access_token: format!("at_bench_{i}_{:016x}", rand::rng().random::<u64>()),
                refresh_token: format!("rt_bench_{i}_{:016x}", rand::rng().random::<u64>()),
            },
        };
        Row {
            tokens,
            expires_at: now + 30 * day,
            next_refresh_at: now + 29 * day,
        }
    });
    let store = thermos::app::open_store(&config).await?;
    let imported = fixture::import(&store, &key, rows, now, args.import_in_flight).await?;
    drop(store);
    let due: Vec<ConnectionId> = imported.ids.iter().step_by(stride).take(refreshed).copied().collect();

    // The real server: start-up and memory when ready.
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
    let startup = server.startup;
    let (rss_ready, _) = proc::memory(&server.pid())?;
    server.stop(Duration::from_secs(30))?;
    let database_bytes = db.size_bytes().await.context("database size")?;

    // The refreshes, by the engine in this process.
    let store = thermos::app::open_store(&config).await?;
    let made_due = Instant::now();
    make_due(&store, &due).await?;
    let made_due_seconds = made_due.elapsed().as_secs_f64();
    let gauge_scan = {
        let (cpu0, started) = (proc::cpu_time("self")?, Instant::now());
        store.count_by_status().await.context("count connections")?;
        (started.elapsed(), proc::cpu_time("self")?.saturating_sub(cpu0))
    };
    // Truncated timestamps: make sure every row is due by the time the engine looks.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let engine = engine::build(&store, key, &config);
    let timeout = Duration::from_secs(args.timeout_secs);
    let refresh = engine::refresh_until(&engine, due.len() as u64, &provider.pid(), timeout).await?;
    drop(engine);
    drop(store);
    Ok(Size {
        connections: n,
        load_before,
        import_per_second: imported.per_second(),
        import_seconds: imported.elapsed.as_secs_f64(),
        database_bytes,
        startup,
        rss_ready,
        made_due_seconds,
        gauge_scan,
        refresh,
    })
}

/// Makes `ids` due now, as an operator's reset does.
async fn make_due(store: &std::sync::Arc<dyn Store>, ids: &[ConnectionId]) -> anyhow::Result<()> {
    let now = thermos::engine::truncate_ms(OffsetDateTime::now_utc());
    let mut resets = futures::stream::iter(ids)
        .map(|id| store.reset_connection(*id, now))
        .buffer_unordered(8);
    while let Some(reset) = resets.next().await {
        if reset.context("make a connection due")?.is_none() {
            bail!("a connection to refresh is missing");
        }
    }
    Ok(())
}

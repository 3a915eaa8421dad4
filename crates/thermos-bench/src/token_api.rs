//! `thermos-bench token-api`: the real `thermos serve` on a SQLite file
//! pre-filled with N connections whose tokens stay valid for 30 days, and
//! the load generator (`thermos-bench load`) in a third process asking for
//! tokens of random connections. Reports the import rate, the server's
//! start-up time (spawn to `/ready` 200), its memory and CPU, the database
//! size per connection, requests/s and latency percentiles.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use rand::Rng as _;
use serde_json::{Value, json};

use thermos_core::ExposeSecret as _;
use thermos_core::seal::MasterKey;

use crate::fixture::{self, Backend, Database, Tokens};
use crate::load::KEY_ENV;
use crate::proc::{self, ChildGuard};
use crate::provider::Provider;
use crate::server::{Server, free_port};

#[derive(Debug, Args)]
pub struct TokenApiArgs {
    /// Connections stored.
    #[arg(long, default_value_t = 1_000_000)]
    connections: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Requests in flight (closed loop unless --rate).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Paced total request rate (per second).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// PostgreSQL server (with --backend postgres); a schema of its own is
    /// created and dropped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Batches of connections in flight while filling the store.
    #[arg(long, default_value_t = 8)]
    import_in_flight: usize,
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

pub async fn run(args: TokenApiArgs) -> anyhow::Result<()> {
    let n = args.connections;
    if n == 0 {
        bail!("--connections must be at least 1");
    }
    // The configured provider; no token comes due during the run, so it only answers /ready's config.
    let provider = Provider::spawn(args.provider_bin.as_deref(), &[])?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let db = Database::new(args.backend, dir.path(), &args.pg_url);
    let outcome = measure(&args, &provider, &db, dir.path()).await;
    if let Err(e) = db.drop_schema().await {
        eprintln!("warning: {e:#}");
    }
    outcome
}

/// Fills `db`, starts the server on it and puts it under load.
async fn measure(args: &TokenApiArgs, provider: &Provider, db: &Database, dir: &Path) -> anyhow::Result<()> {
    let n = args.connections;
    let load_before = proc::load_average();
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let toml = fixture::config_toml(
        dir,
        db,
        &format!("127.0.0.1:{port}"),
        &provider.token_url,
        (&provider.client_id, &provider.client_secret),
        "",
    );
    let config_path = dir.join("thermos.toml");
    std::fs::write(&config_path, &toml).context("write the config")?;
    let config = fixture::parse_config(&toml)?;

    // Fill the store, as `serve` will find it.
    // In the environment rather than a file: `serve` generates no key for PostgreSQL.
    let (key, key_text) = MasterKey::generate();
    let store = thermos::app::open_store(&config).await?;
    let tokens = (0..n).map(|i| Tokens {
        access_token: format!("at_bench_{i}_{:016x}", rand::rng().random::<u64>()),
        refresh_token: format!("rt_bench_{i}_{:016x}", rand::rng().random::<u64>()),
    });
    let day = Duration::from_secs(86_400);
    let imported = fixture::insert(&store, &key, tokens, 30 * day, 29 * day, args.import_in_flight).await?;
    drop(store);
    let ids_path = dir.join("ids.txt");
    let mut ids_file = std::io::BufWriter::new(std::fs::File::create(&ids_path).context("ids file")?);
    for id in &imported.ids {
        writeln!(ids_file, "{id}")?;
    }
    ids_file.flush()?;
    drop(ids_file);
    let db_bytes = db.size_bytes().await?;

    // The server.
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
    let server_pid = server.pid();
    let (rss_ready, _) = proc::memory(&server_pid)?;

    // The load, from another process.
    let me = std::env::current_exe().context("locate this binary")?;
    let mut load = Command::new(me);
    load.arg("load")
        .arg("--url")
        .arg(&base)
        .arg("--ids-file")
        .arg(&ids_path)
        .arg("--concurrency")
        .arg(args.concurrency.to_string())
        .arg("--duration")
        .arg(args.duration.to_string())
        .env(KEY_ENV, &admin_key)
        .stdout(Stdio::piped());
    if let Some(rate) = args.rate {
        load.arg("--rate").arg(rate.to_string());
    }
    let cpu0 = proc::cpu_time(&server_pid)?;
    let mut loader = ChildGuard::spawn("thermos-bench load", load)?;
    let stdout = loader.take_stdout().context("the load generator's stdout")?;
    let wait = Duration::from_secs_f64(args.duration + 60.0);
    let line = tokio::task::spawn_blocking(move || proc::first_line(stdout, wait)).await??;
    let cpu1 = proc::cpu_time(&server_pid)?;
    loader.wait_for_exit(Duration::from_secs(10))?;
    let result: Value = serde_json::from_str(&line).context("parse the load generator's result")?;
    let (rss_after, rss_peak) = proc::memory(&server_pid)?;
    drop(server);

    let warmup = 2.0;
    let server_cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    let requests = result["requests"].as_f64().unwrap_or(0.0);
    let p99 = result["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let report = json!({
        "scenario": "token-api",
        "backend": args.backend.as_str(),
        "connections": n,
        "cpus": proc::cpus(),
        "load_average_1m_before": load_before,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "import_per_second": imported.per_second(),
        "import_seconds": imported.elapsed.as_secs_f64(),
        "database_bytes_per_connection": db_bytes as f64 / n as f64,
        "startup_seconds": startup.as_secs_f64(),
        "rss_bytes_ready": rss_ready,
        "rss_bytes_after": rss_after,
        "rss_bytes_peak": rss_peak,
        "server_cpu_percent": 100.0 * server_cpu / (args.duration + warmup),
        "server_cpu_us_per_request": server_cpu * 1e6 / (requests * (args.duration + warmup) / args.duration).max(1.0),
        "load": result,
    });
    if args.json {
        println!("{report}");
    } else {
        let mb = |b: u64| b as f64 / 1_048_576.0;
        println!(
            "token-api: {n} connections on {}, {} in flight{} ({} CPUs, load {load_before:.2} before)",
            args.backend.as_str(),
            args.concurrency,
            args.rate.map_or(String::new(), |r| format!(", paced at {r}/s")),
            proc::cpus()
        );
        println!(
            "  import           {:>9.0} connections/s ({:.1} s; batch insert, {} a transaction)",
            imported.per_second(),
            imported.elapsed.as_secs_f64(),
            fixture::IMPORT_BATCH
        );
        println!(
            "  database         {:>9.0} bytes per connection",
            db_bytes as f64 / n as f64
        );
        println!(
            "  start-up         {:>9.3} s (spawn to /ready 200; target < 2 s)",
            startup.as_secs_f64()
        );
        println!(
            "  RSS              {:>9.1} MB ready, {:.1} MB after the load, {:.1} MB peak (target < 200 MB)",
            mb(rss_ready),
            mb(rss_after),
            mb(rss_peak)
        );
        println!(
            "  requests         {:>9.0} /s ({} ok, {} errors in {} s)",
            result["per_second"].as_f64().unwrap_or(0.0),
            result["requests"],
            result["errors"],
            args.duration
        );
        println!(
            "  latency          p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (target p99 < 2 ms at 10k/s: {})",
            result["p50_ms"].as_f64().unwrap_or(f64::NAN),
            p99,
            result["p999_ms"].as_f64().unwrap_or(f64::NAN),
            result["max_ms"].as_f64().unwrap_or(f64::NAN),
            if p99 < 2.0 && result["per_second"].as_f64().unwrap_or(0.0) >= 10_000.0 {
                "met"
            } else {
                "not met"
            }
        );
        println!(
            "  server CPU       {:>9.0} % of one core, {:.0} µs per request",
            report["server_cpu_percent"].as_f64().unwrap_or(0.0),
            report["server_cpu_us_per_request"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  load generator   {:.1} s CPU",
            result["load_generator_cpu_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

//! `thermos-bench refresh-throughput`: N connections all due now, refreshed
//! by the real engine (`Engine::drive`, as `thermos serve` runs it) against
//! the test provider in another process; then a bare HTTP loop that only
//! POSTs the same refresh requests (fresh grants, one valid refresh each) at
//! the same concurrency: the physical limit of this machine for that
//! endpoint. Reports both rates and their ratio, CPU per refresh (this
//! process and the provider's), allocations and the rows written per refresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};
use thermos_core::seal::MasterKey;

use crate::engine::{self, Phase};
use crate::fixture::{self, Backend, Database, Tokens};
use crate::proc;
use crate::provider::{Grant, Provider};

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Connections, all due now.
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Refreshes in flight at once: Thermos's `refresh.max_concurrency`, and
    /// the bare loop's tasks.
    #[arg(long, default_value_t = 256)]
    concurrency: u32,
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// PostgreSQL server (with --backend postgres); a schema of its own is
    /// created and dropped.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// Give up on a phase after this long (seconds).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The `thermos-testprovider` binary (default: beside this one).
    #[arg(long)]
    provider_bin: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RefreshArgs) -> anyhow::Result<()> {
    let n = args.connections;
    if n == 0 || args.concurrency == 0 {
        bail!("--connections and --concurrency must be at least 1");
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let load_before = proc::load_average();
    let provider = Provider::spawn(args.provider_bin.as_deref(), &[])?;
    let http = reqwest::Client::new();
    let thermos_grants = provider.grants(&http, n).await?;
    let bare_grants = provider.grants(&http, n).await?;

    let dir = tempfile::tempdir().context("temp dir")?;
    let db = Database::new(args.backend, dir.path(), &args.pg_url);
    let outcome = measure(&args, &provider, &db, dir.path(), thermos_grants, bare_grants, timeout).await;
    if let Err(e) = db.drop_schema().await {
        eprintln!("warning: {e:#}");
    }
    let (import, thermos, bare, rows, provider_stats) = outcome?;
    let ratio = thermos.rate() / bare.rate().max(1e-9);
    let report = json!({
        "scenario": "refresh-throughput",
        "backend": args.backend.as_str(),
        "connections": n,
        "concurrency": args.concurrency,
        "cpus": proc::cpus(),
        "load_average_1m_before": load_before,
        "import_per_second": import,
        "thermos": thermos.json(),
        "bare_loop": bare.json(),
        "ratio": ratio,
        "target_ratio": 0.6,
        "rows_written_per_refresh": rows,
        "database_transactions_per_refresh": "not measured",
        "provider": provider_stats,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "refresh-throughput: {n} connections due now, concurrency {}, {} ({} CPUs, load {load_before:.2} before)",
            args.concurrency,
            args.backend.as_str(),
            proc::cpus()
        );
        println!(
            "  import           {import:>9.0} connections/s (batch insert, {} a transaction)",
            fixture::IMPORT_BATCH
        );
        println!(
            "  thermos          {:>9.0} refreshes/s  ({} ok, {} failed in {:.2} s)",
            thermos.rate(),
            thermos.done,
            thermos.failed,
            thermos.elapsed.as_secs_f64()
        );
        println!(
            "                   CPU {:.0} µs per refresh in Thermos, {:.0} µs in the provider",
            thermos.cpu_us_per(),
            thermos.provider_cpu_us_per()
        );
        let (allocs, bytes) = thermos.allocated_per();
        println!("                   {allocs:.0} allocations, {bytes:.0} bytes allocated per refresh");
        println!(
            "  bare loop        {:>9.0} requests/s   ({} ok, {} failed in {:.2} s)",
            bare.rate(),
            bare.done,
            bare.failed,
            bare.elapsed.as_secs_f64()
        );
        println!(
            "                   CPU {:.0} µs per request in the client, {:.0} µs in the provider",
            bare.cpu_us_per(),
            bare.provider_cpu_us_per()
        );
        let (allocs, bytes) = bare.allocated_per();
        println!("                   {allocs:.0} allocations, {bytes:.0} bytes allocated per request");
        println!(
            "  ratio            {:.2} (target ≥ 0.60: {})",
            ratio,
            if ratio >= 0.6 { "met" } else { "not met" }
        );
        println!(
            "  rows written     {rows} per refresh (rows in refresh_attempts and events; on PostgreSQL also rows inserted/updated/deleted; transactions not measured)"
        );
        println!("  provider         {provider_stats}");
    }
    Ok(())
}

type Measured = (f64, Phase, Phase, Value, Value);

async fn measure(
    args: &RefreshArgs,
    provider: &Provider,
    db: &Database,
    dir: &std::path::Path,
    thermos_grants: Vec<Grant>,
    bare_grants: Vec<Grant>,
    timeout: Duration,
) -> anyhow::Result<Measured> {
    let n = thermos_grants.len();
    let refresh_toml = format!("max_concurrency = {}\nrequest_timeout = \"30s\"\n", args.concurrency);
    let toml = fixture::config_toml(
        dir,
        db,
        "127.0.0.1:0",
        &provider.token_url,
        (&provider.client_id, &provider.client_secret),
        &refresh_toml,
    );
    let config = fixture::parse_config(&toml)?;
    let import_store = thermos::app::open_store(&config).await?;
    let (key, _) = MasterKey::generate();
    let tokens = thermos_grants.into_iter().map(|g| Tokens {
        access_token: g.access_token,
        refresh_token: g.refresh_token,
    });
    let imported = fixture::insert(
        &import_store,
        &key,
        tokens,
        Duration::from_secs(3600),
        Duration::ZERO,
        8,
    )
    .await?;
    // A pool of its own for the engine: the import's connections go (and
    // report their statistics) before the refreshes are counted.
    drop(import_store);
    let store = thermos::app::open_store(&config).await?;
    // Truncated timestamps: make sure every row is due by the time the engine looks.
    tokio::time::sleep(Duration::from_millis(5)).await;

    let engine = engine::build(&store, key, &config);
    let pid = provider.pid();
    let stat_lag = Duration::from_millis(1500);
    if db.schema.is_some() {
        tokio::time::sleep(stat_lag).await;
    }
    let writes0 = db.row_writes().await.context("read row statistics")?;
    let thermos = engine::refresh_until(&engine, n as u64, &pid, timeout).await?;
    drop(engine);
    drop(store);
    let mut rows = serde_json::Map::new();
    if let Some((ins0, upd0, del0)) = writes0 {
        tokio::time::sleep(stat_lag).await;
        if let Some((ins1, upd1, del1)) = db.row_writes().await.context("read row statistics")? {
            let per = |a: u64, b: u64| json!(a.saturating_sub(b) as f64 / n as f64);
            rows.insert("inserted".into(), per(ins1, ins0));
            rows.insert("updated".into(), per(upd1, upd0));
            rows.insert("deleted".into(), per(del1, del0));
        }
    }
    for table in ["refresh_attempts", "events"] {
        let count = db.count_rows(table).await.with_context(|| format!("count {table}"))?;
        rows.insert(table.into(), json!(count as f64 / n as f64));
    }

    let bare = bare_loop(provider, bare_grants, args.concurrency as usize, timeout).await?;
    let stats = provider.stats(&reqwest::Client::new()).await?;
    Ok((imported.per_second(), thermos, bare, Value::Object(rows), stats))
}

/// `concurrency` tasks POSTing one valid refresh per grant, reading the
/// rotated refresh token from each answer, with a client built like
/// Thermos's (`RefreshClient`: reqwest, keep-alive pool, a timeout).
async fn bare_loop(
    provider: &Provider,
    grants: Vec<Grant>,
    concurrency: usize,
    timeout: Duration,
) -> anyhow::Result<Phase> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("build the HTTP client")?;
    let grants = Arc::new(grants);
    let next = Arc::new(AtomicUsize::new(0));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (token_url, auth) = (provider.token_url.clone(), provider.basic_auth());
    let pid = provider.pid();
    let (cpu0, pcpu0, alloc0, started) = (
        proc::cpu_time("self")?,
        proc::cpu_time(&pid)?,
        crate::allocated(),
        Instant::now(),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, grants, next, ok, failed) = (http.clone(), grants.clone(), next.clone(), ok.clone(), failed.clone());
        let (token_url, auth) = (token_url.clone(), auth.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(grant) = grants.get(i) else { break };
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let body = form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", &grant.refresh_token)
                    .finish();
                let answer = http
                    .post(&token_url)
                    .header(reqwest::header::AUTHORIZATION, &auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(reqwest::header::ACCEPT, "application/json")
                    .body(body)
                    .send()
                    .await;
                let rotated = match answer {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .and_then(|v| v["refresh_token"].as_str().map(str::to_owned)),
                    _ => None,
                };
                match rotated {
                    Some(_next_refresh_token) => ok.fetch_add(1, Ordering::Relaxed),
                    None => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let (cpu1, pcpu1, alloc1) = (proc::cpu_time("self")?, proc::cpu_time(&pid)?, crate::allocated());
    Ok(Phase {
        done: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed,
        cpu: cpu1.saturating_sub(cpu0),
        provider_cpu: pcpu1.saturating_sub(pcpu0),
        allocated: (alloc1.0 - alloc0.0, alloc1.1 - alloc0.1),
    })
}

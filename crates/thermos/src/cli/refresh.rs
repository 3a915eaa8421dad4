//! `thermos refresh`: a bulk refresh run, in this process, against the
//! store — no server needed. A running server is no obstacle: the leases
//! decide who refreshes a connection, and single flight applies here too.
//! Shows a progress bar on a terminal (a progress line at most once a
//! second otherwise), then the counts and the failures by code; exits
//! non-zero when the run failed.
//!
//! Read next: `engine/run.rs` (what a run does).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::io::IsTerminal as _;

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::run::{RunCounts, RunRecord, RunStatus};

use crate::app;
use crate::config::Config;
use crate::engine::Engine;
use crate::engine::run::RunFilter;
use crate::provider::RefreshClient;

/// `thermos refresh` arguments.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Only this provider's connections.
    #[arg(long)]
    provider: Option<String>,
    /// Only this project's connections.
    #[arg(long)]
    project: Option<String>,
    /// Only connections in this state: active, failing, needs_reauth, disabled.
    #[arg(long, value_parser = parse_status)]
    status: Option<ConnectionStatus>,
    /// Only connections whose access token expires within this (e.g. 1h).
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    expiring_within: Option<Duration>,
    /// Only connections whose planned refresh is at least this late (e.g. 1m).
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    overdue_by: Option<Duration>,
    /// Only these connections (repeat the flag).
    #[arg(long = "connection", value_name = "ID", value_parser = parse_connection_id)]
    connections: Vec<ConnectionId>,
    /// Every connection (required when no provider or connection is named).
    #[arg(long)]
    all: bool,
    /// Fail the run when more than this share of attempts fail (default:
    /// refresh.failure_threshold).
    #[arg(long, value_name = "SHARE")]
    failure_threshold: Option<f64>,
}

fn parse_status(raw: &str) -> Result<ConnectionStatus, String> {
    ConnectionStatus::parse(raw).ok_or_else(|| format!("unknown status {raw:?}"))
}

fn parse_connection_id(raw: &str) -> Result<ConnectionId, String> {
    ConnectionId::parse(raw).map_err(|_| format!("{raw:?} is not a connection id"))
}

pub async fn run(config: &Config, args: RefreshArgs) -> anyhow::Result<()> {
    if args.provider.is_none() && args.connections.is_empty() && !args.all {
        bail!("name a --provider or --connection, or pass --all to refresh every connection");
    }
    let threshold = args.failure_threshold.unwrap_or(config.refresh.failure_threshold);
    if !(threshold > 0.0 && threshold <= 1.0) {
        bail!("--failure-threshold: expected a share in (0, 1]");
    }
    let filter = RunFilter {
        provider: args.provider,
        project: args.project,
        status: args.status,
        expiring_within: args.expiring_within,
        overdue_by: args.overdue_by,
        connection_ids: args.connections,
    };
    let engine = build_engine(config).await?;
    let run = engine.create_run(&filter, "manual", threshold).await?;
    eprintln!("run {} started", run.id);
    let progress = Progress::new();
    let finished = engine.execute_run(run, filter, |counts| progress.update(counts)).await;
    progress.finish();
    let finished = finished?;
    print_summary(&finished);
    if finished.status != RunStatus::Succeeded {
        bail!("run {} {}", finished.id, finished.status.as_str());
    }
    Ok(())
}

/// An engine on the configured store, as `serve` builds it but without the
/// scheduler, the instance lock or the listener.
async fn build_engine(config: &Config) -> anyhow::Result<Engine> {
    let key = super::cli_master_key(config, false)?;
    let store = app::open_store(config).await?;
    let settings = app::engine_settings(config, app::instance_name());
    let engine = Engine::new(
        store,
        Arc::new(key),
        config.providers.clone(),
        RefreshClient::new(config.refresh.request_timeout),
        app::system_clock(),
        settings,
    );
    crate::api::apps::load_into_registry(&engine)
        .await
        .context("load custom apps")?;
    Ok(engine)
}

/// A run's progress on stderr: a bar on a terminal, else a line at most
/// once a second (logs and pipes stay readable).
enum Progress {
    Bar(ProgressBar),
    Lines(Mutex<Instant>),
}

impl Progress {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines(Mutex::new(Instant::now()));
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self::Bar(bar)
    }

    fn update(&self, counts: &RunCounts) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(counts.total);
                bar.set_position(done(counts));
                bar.set_message(format!(
                    "{} succeeded, {} failed, {} skipped",
                    counts.succeeded, counts.failed, counts.skipped
                ));
            }
            Self::Lines(last) => {
                let mut last = last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if last.elapsed() >= Duration::from_secs(1) {
                    *last = Instant::now();
                    eprintln!("{}", progress_line(counts));
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn done(counts: &RunCounts) -> u64 {
    counts.succeeded + counts.failed + counts.skipped
}

fn progress_line(counts: &RunCounts) -> String {
    format!(
        "{}/{} done: {} succeeded, {} failed, {} skipped",
        done(counts),
        counts.total,
        counts.succeeded,
        counts.failed,
        counts.skipped
    )
}

/// The counts and failures by code of a run.
pub fn print_summary(run: &RunRecord) {
    let stale = if run.stale { " (stale: its process died)" } else { "" };
    println!("run {}: {}{stale}", run.id, run.status.as_str());
    println!(
        "  total {}  succeeded {}  failed {}  skipped {}  (threshold {:.0} %)",
        run.counts.total,
        run.counts.succeeded,
        run.counts.failed,
        run.counts.skipped,
        run.failure_threshold * 100.0
    );
    for (code, count) in &run.failures_by_code {
        println!("  {code}: {count}");
    }
}

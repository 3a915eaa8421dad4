//! `thermos runs list|show|cancel`: bulk refresh runs as operators see
//! them. Reads and writes the store directly; a cancelled run stops after
//! its current batch, in whichever process runs it.

use anyhow::bail;
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;

use crate::app;
use crate::config::Config;

/// Runs listed unless `--limit` says otherwise.
const DEFAULT_LIMIT: u32 = 20;

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        /// How many runs.
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: u32,
    },
    /// One run: its filter, counts and failures by code.
    Show {
        /// The run id (`run_…`).
        id: String,
    },
    /// Ask a running run to stop after its current batch.
    Cancel {
        /// The run id (`run_…`).
        id: String,
    },
}

pub async fn run(config: &Config, command: RunsCommand) -> anyhow::Result<()> {
    let store = app::open_store(config).await?;
    match command {
        RunsCommand::List { limit } => {
            for run in store.list_runs(limit).await? {
                let started = run.started_at.format(&Rfc3339).unwrap_or_default();
                let stale = if run.stale { " stale" } else { "" };
                println!(
                    "{}  {:<9}{stale}  {started}  total {} ok {} failed {} skipped {}",
                    run.id,
                    run.status.as_str(),
                    run.counts.total,
                    run.counts.succeeded,
                    run.counts.failed,
                    run.counts.skipped
                );
            }
            Ok(())
        }
        RunsCommand::Show { id } => {
            let Some(run) = store.get_run(&id).await? else {
                bail!("no run {id}");
            };
            super::refresh::print_summary(&run);
            println!("  filter {}", run.filter);
            println!("  owner {}", run.owner);
            Ok(())
        }
        RunsCommand::Cancel { id } => {
            if !store.cancel_run(&id).await? {
                bail!("no running run {id}");
            }
            println!("run {id}: cancellation requested; it stops after its current batch");
            Ok(())
        }
    }
}

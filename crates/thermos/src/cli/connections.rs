//! `thermos connections list|show`: readable tables straight from the store.

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::{ConnectionFilter, ConnectionRecord};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::app;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// List connections (newest last).
    List {
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        /// active, failing, needs_reauth or disabled.
        #[arg(long, value_parser = parse_status)]
        status: Option<ConnectionStatus>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one connection and its recent refresh attempts.
    Show {
        /// The connection id (con_…).
        #[arg(value_parser = parse_id)]
        id: ConnectionId,
    },
    /// Bulk repair: clear the failures of every matching connection, set it
    /// `active` and make it due now (the running server refreshes them).
    Reset {
        #[arg(long)]
        provider: String,
        #[arg(long)]
        project: Option<String>,
        /// Which connections: failing or needs_reauth.
        #[arg(long, value_parser = parse_status)]
        status: ConnectionStatus,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(config: &Config, command: ConnectionsCommand) -> anyhow::Result<()> {
    let store = app::open_store(config).await?;
    let now = OffsetDateTime::now_utc();
    match command {
        ConnectionsCommand::Reset {
            provider,
            project,
            status,
            yes,
        } => {
            reset_many(
                store.as_ref(),
                ConnectionFilter {
                    project,
                    provider: Some(provider),
                    status: Some(status),
                },
                yes,
            )
            .await?;
        }
        ConnectionsCommand::List {
            project,
            provider,
            status,
            limit,
        } => {
            let filter = ConnectionFilter {
                project,
                provider,
                status,
            };
            let records = store.list_connections(&filter, None, limit.clamp(1, 10_000)).await?;
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY).set_header([
                "id",
                "project",
                "provider",
                "external_id",
                "status",
                "expires",
                "next refresh",
                "refreshes",
                "failures",
                "last error",
            ]);
            for r in &records {
                table.add_row([
                    r.id.to_string(),
                    r.project.clone(),
                    r.provider.clone(),
                    r.external_id.clone(),
                    r.status.to_string(),
                    relative(r.expires_at, now),
                    r.next_refresh_at
                        .map(|t| relative(t, now))
                        .unwrap_or_else(|| "-".into()),
                    r.refresh_count.to_string(),
                    r.consecutive_failures.to_string(),
                    r.last_error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
                ]);
            }
            println!("{table}");
            println!("{} connection(s)", records.len());
        }
        ConnectionsCommand::Show { id } => {
            let record = store
                .get_connection(id)
                .await?
                .ok_or_else(|| anyhow!("connection {id} not found"))?;
            print_connection(&record, now);
            let attempts = store.list_attempts(id, 20).await.context("read attempts")?;
            let mut table = Table::new();
            table
                .load_preset(UTF8_BORDERS_ONLY)
                .set_header(["at", "trigger", "outcome", "error", "http", "ms"]);
            for a in &attempts {
                let a = &a.attempt;
                table.add_row([
                    rfc3339(a.started_at),
                    a.trigger.clone(),
                    a.outcome.clone(),
                    a.error_code.clone().unwrap_or_default(),
                    a.http_status.map(|s| s.to_string()).unwrap_or_default(),
                    a.duration_ms.to_string(),
                ]);
            }
            println!("\nrecent attempts (newest first):\n{table}");
        }
    }
    Ok(())
}

fn print_connection(r: &ConnectionRecord, now: OffsetDateTime) {
    let rows = [
        ("id", r.id.to_string()),
        ("project", r.project.clone()),
        ("provider", r.provider.clone()),
        ("external_id", r.external_id.clone()),
        ("status", r.status.to_string()),
        ("scope", r.scope.clone().unwrap_or_default()),
        (
            "expires_at",
            format!("{} ({})", rfc3339(r.expires_at), relative(r.expires_at, now)),
        ),
        (
            "next_refresh_at",
            r.next_refresh_at
                .map(|t| format!("{} ({})", rfc3339(t), relative(t, now)))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "last_refreshed_at",
            r.last_refreshed_at.map(rfc3339).unwrap_or_else(|| "-".into()),
        ),
        ("refresh_count", r.refresh_count.to_string()),
        ("consecutive_failures", r.consecutive_failures.to_string()),
        (
            "last_error",
            r.last_error
                .as_ref()
                .map(|e| {
                    let status = e.http_status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
                    format!("{}{status}: {} at {}", e.code, e.message, rfc3339(e.at))
                })
                .unwrap_or_else(|| "-".into()),
        ),
        ("has_refresh_token", r.refresh_token.is_some().to_string()),
        ("metadata", r.metadata.to_string()),
    ];
    for (name, value) in rows {
        println!("{name:>22}  {value}");
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    let (sign, secs) = if secs < 0 { ("-", -secs) } else { ("in ", secs) };
    let text = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if sign == "-" {
        format!("{text} ago")
    } else {
        format!("{sign}{text}")
    }
}

fn parse_status(raw: &str) -> Result<ConnectionStatus, String> {
    ConnectionStatus::parse(raw)
        .ok_or_else(|| format!("unknown status {raw:?} (active, failing, needs_reauth, disabled)"))
}

fn parse_id(raw: &str) -> Result<ConnectionId, String> {
    ConnectionId::parse(raw).map_err(|e| e.to_string())
}

/// Most connections one bulk reset touches.
const RESET_LIMIT: usize = 100_000;

/// Shows how many connections match, asks for confirmation (unless `yes`),
/// resets them and reports what it did.
async fn reset_many(store: &dyn thermos_store::Store, filter: ConnectionFilter, yes: bool) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    let mut after = None;
    while ids.len() < RESET_LIMIT {
        let page = store.list_connections(&filter, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        ids.extend(page.iter().map(|r| r.id));
    }
    let what = format!(
        "{} {} connection(s) of provider {}{}",
        ids.len(),
        filter.status.map(|s| s.as_str()).unwrap_or(""),
        filter.provider.as_deref().unwrap_or(""),
        filter
            .project
            .as_deref()
            .map(|p| format!(" in project {p}"))
            .unwrap_or_default()
    );
    if ids.is_empty() {
        println!("nothing to reset: 0 matching connections");
        return Ok(());
    }
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("would reset {what}; confirm with --yes (standard input is not a terminal)");
        }
        print!("Reset {what} to active and refresh them now? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(());
        }
    }
    let now = crate::engine::truncate_ms(OffsetDateTime::now_utc());
    let mut done = 0usize;
    for id in &ids {
        if store.reset_connection(*id, now).await?.is_some() {
            done += 1;
        }
    }
    println!("reset {done} of {what}; a running `thermos serve` refreshes them within seconds");
    Ok(())
}

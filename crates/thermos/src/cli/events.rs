//! `thermos events list|show|redeliver`: the outbox as operators see it —
//! recent events, where each delivery stands, each attempt, and sending an
//! event again. Reads and writes the store directly; a running server's
//! dispatcher picks a redelivery up within seconds.

use anyhow::bail;
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use thermos_store::outbox::{DeliveryRecord, DeliveryStatus};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::events::parse_filter;
use crate::app;
use crate::config::Config;

/// Events listed unless `--limit` says otherwise.
const DEFAULT_LIMIT: u32 = 50;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Recent events, newest first, with a summary of their deliveries.
    List {
        /// Only events of this type (e.g. connection.failing).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Only this connection's events.
        #[arg(long, value_name = "ID")]
        connection: Option<String>,
        /// Only events with a delivery in this state: pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
        /// Only this project's events.
        #[arg(long)]
        project: Option<String>,
        /// How many events (newest first).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: u32,
    },
    /// One event: its payload and every delivery attempt.
    Show {
        /// The event id (`evt_…`).
        id: String,
    },
    /// Send an event again to every subscriber it had.
    Redeliver {
        /// The event id (`evt_…`).
        id: String,
    },
}

pub async fn run(config: &Config, command: EventsCommand) -> anyhow::Result<()> {
    match command {
        EventsCommand::List {
            kind,
            connection,
            status,
            project,
            limit,
        } => {
            let filter = parse_filter(project, kind, connection.as_deref(), status.as_deref())
                .map_err(|problem| anyhow::anyhow!("--{}", flag(&problem)))?;
            if limit == 0 {
                bail!("--limit: must be at least 1");
            }
            let store = app::open_store(config).await?;
            let events = store.list_events(&filter, None, limit).await?;
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY).set_header([
                "time",
                "id",
                "type",
                "project",
                "connection",
                "deliveries",
            ]);
            for e in &events {
                let event = &e.event.event;
                table.add_row([
                    rfc3339(event.at),
                    event.id.clone(),
                    event.kind.clone(),
                    event.project.clone().unwrap_or_else(|| "-".into()),
                    event.connection_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                    summary(&e.deliveries),
                ]);
            }
            println!("{table}");
            println!("{} event(s)", events.len());
        }
        EventsCommand::Show { id } => {
            let store = app::open_store(config).await?;
            let Some(e) = store.get_event(&id).await? else {
                bail!("no event {id}");
            };
            let event = &e.event.event;
            println!("{} {} at {}", event.id, event.kind, rfc3339(event.at));
            println!(
                "project {}, connection {}, provider {}",
                event.project.as_deref().unwrap_or("-"),
                event.connection_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
                event.provider.as_deref().unwrap_or("-")
            );
            println!("data: {}", event.data);
            for d in &e.deliveries {
                println!(
                    "delivery {} to {}: {} after {} attempt(s)",
                    d.id,
                    d.webhook_id.as_deref().unwrap_or("operators' alert channel"),
                    d.status.as_str(),
                    d.attempts
                );
                let mut table = Table::new();
                table
                    .load_preset(UTF8_BORDERS_ONLY)
                    .set_header(["at", "http status", "latency ms", "error"]);
                for a in store.list_delivery_attempts(d.id).await? {
                    table.add_row([
                        rfc3339(a.at),
                        a.http_status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
                        a.latency_ms.to_string(),
                        a.error.unwrap_or_default(),
                    ]);
                }
                println!("{table}");
            }
        }
        EventsCommand::Redeliver { id } => {
            let store = app::open_store(config).await?;
            if store.get_event(&id).await?.is_none() {
                bail!("no event {id}");
            }
            let count = store.redeliver_event(&id, OffsetDateTime::now_utc()).await?;
            println!("Queued {count} delivery(ies) of {id} again; a running server sends them within seconds.");
        }
    }
    Ok(())
}

/// `2 delivered, 1 pending` (or `none`).
fn summary(deliveries: &[DeliveryRecord]) -> String {
    let parts: Vec<String> = [
        DeliveryStatus::Delivered,
        DeliveryStatus::Pending,
        DeliveryStatus::Failed,
    ]
    .into_iter()
    .filter_map(|status| {
        let count = deliveries.iter().filter(|d| d.status == status).count();
        (count > 0).then(|| format!("{count} {}", status.as_str()))
    })
    .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A filter problem with the CLI's flag names.
fn flag(problem: &str) -> String {
    problem
        .replacen("connection_id:", "connection:", 1)
        .replacen("delivery_status:", "status:", 1)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

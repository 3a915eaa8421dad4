//! `thermos audit list`: the audit log as operators read it — who (key id)
//! fetched which token or changed what, from where, when and with what
//! answer, newest first. Reads the store directly.

use anyhow::{Context as _, bail};
use clap::Args;
use thermos_store::audit::{AuditFilter, AuditRecord};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::app;
use crate::config::Config;

/// Entries listed unless `--limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;
/// Most entries one listing prints.
const MAX_LIMIT: u32 = 100_000;

/// `thermos audit …`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Entries newest first; every filter given must match.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only entries by this key id (`admin` for the admin key; `thk_…` or the bare id).
    #[arg(long, value_name = "KEY_ID")]
    actor: Option<String>,
    /// Only this action, e.g. token.read, connection.delete, key.create.
    #[arg(long)]
    action: Option<String>,
    /// Only entries about this resource (a connection, webhook, run or key id, or a provider slug).
    #[arg(long, value_name = "ID")]
    target: Option<String>,
    /// Only entries since then: an RFC 3339 time, or an age such as 15m, 24h, 7d.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Entries older than this id (the next page: the last id printed).
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
    /// How many entries.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    limit: u32,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List(args) = command;
    if !(1..=MAX_LIMIT).contains(&args.limit) {
        bail!("--limit: must be 1-{MAX_LIMIT}");
    }
    let since = args
        .since
        .as_deref()
        .map(|raw| parse_since(raw, OffsetDateTime::now_utc()))
        .transpose()?;
    let filter = AuditFilter {
        actor: args
            .actor
            .map(|a| a.strip_prefix("thk_").map(str::to_owned).unwrap_or(a)),
        action: args.action,
        target: args.target,
        since,
        before_id: args.before,
        limit: args.limit,
    };
    let store = app::open_store(config).await?;
    let entries = store.list_audit(filter).await.context("read the audit log")?;
    for record in &entries {
        if args.json {
            println!("{}", to_json(record));
        } else {
            println!("{}", line(record));
        }
    }
    if !args.json
        && entries.len() == args.limit as usize
        && let Some(last) = entries.last()
    {
        eprintln!("(more may follow: --before {})", last.id);
    }
    Ok(())
}

/// `--since`: an RFC 3339 time, or an age before `now` (humantime: 15m, 24h, 7d).
fn parse_since(raw: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(at);
    }
    let age = humantime::parse_duration(raw)
        .map_err(|_| anyhow::anyhow!("--since {raw:?}: expected an RFC 3339 time or an age such as 15m, 24h, 7d"))?;
    time::Duration::try_from(age)
        .ok()
        .and_then(|age| now.checked_sub(age))
        .with_context(|| format!("--since {raw:?}: too far back"))
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn line(record: &AuditRecord) -> String {
    let e = &record.entry;
    let times = if e.count > 1 {
        format!("{} ×{} since {}", rfc3339(e.at), e.count, rfc3339(e.first_at))
    } else {
        rfc3339(e.at)
    };
    format!(
        "{:>8}  {times}  {}{}  {}  {}  {}  from {}",
        record.id,
        e.actor,
        e.actor_project
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default(),
        e.action,
        e.target.as_deref().unwrap_or("-"),
        e.status,
        e.client.as_deref().unwrap_or("-"),
    )
}

fn to_json(record: &AuditRecord) -> serde_json::Value {
    let e = &record.entry;
    serde_json::json!({
        "id": record.id,
        "at": rfc3339(e.at),
        "first_at": rfc3339(e.first_at),
        "count": e.count,
        "actor": e.actor,
        "actor_project": e.actor_project,
        "action": e.action,
        "target": e.target,
        "client": e.client,
        "request_id": e.request_id,
        "status": e.status,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age() {
        let now = datetime!(2026-11-24 12:00:00 UTC);
        assert_eq!(
            parse_since("2026-11-01T00:00:00Z", now).unwrap(),
            datetime!(2026-11-01 00:00:00 UTC)
        );
        assert_eq!(parse_since("90m", now).unwrap(), datetime!(2026-11-24 10:30:00 UTC));
        assert_eq!(parse_since("7d", now).unwrap(), datetime!(2026-11-17 12:00:00 UTC));
        let err = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}

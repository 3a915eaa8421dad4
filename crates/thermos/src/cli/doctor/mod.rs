//! `thermos doctor`: the checklist an operator would run by hand, as one
//! command. Each check reports `ok`, `warn` or `fail`, a one-line finding
//! and, when something is wrong, what to do (a Thermos command or a config
//! key). Any `fail` makes the command exit non-zero; warnings do not.
//!
//! Doctor only reads: it never creates a master key, never refreshes, never
//! changes a row. (Opening the store applies pending migrations, exactly as
//! every other command does.)
//!
//! Stale bulk runs are not checked yet: runs do not exist in the store. When
//! they do, a `runs` check belongs in [`state`].

mod setup;
mod state;

use std::fmt;

use anyhow::bail;
use clap::Args;
use serde_json::json;

use crate::app;
use crate::config::Config;

#[derive(Debug, Default, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON: `{"checks": [{"name", "status", "detail", "action"}], "status"}`.
    #[arg(long)]
    pub json: bool,
}

/// How a check came out, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do; set for `warn` and `fail`.
    pub action: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            action: None,
        }
    }

    pub fn warn(name: impl Into<String>, detail: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            action: Some(action.into()),
            ..Self::ok(name, detail)
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            action: Some(action.into()),
            ..Self::ok(name, detail)
        }
    }
}

pub async fn run(config: &Config, args: DoctorArgs) -> anyhow::Result<()> {
    let checks = collect(config).await;
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    if args.json {
        println!("{}", to_json(&checks, worst));
    } else {
        print_text(&checks);
    }
    if worst == Status::Fail {
        let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
        bail!("doctor: {failed} check(s) failed");
    }
    Ok(())
}

/// Runs every check. A database that cannot be opened ends the checks that
/// need it; the others still run.
async fn collect(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let store = match app::open_store(config).await {
        Ok(store) => Some(store),
        Err(e) => {
            checks.push(Check::fail(
                "database",
                format!("cannot open {}: {e:#}", config.database_url_redacted()),
                "check [database] url (THERMOS_DATABASE_URL) and the file's permissions, then `thermos migrate`",
            ));
            None
        }
    };
    if let Some(store) = &store {
        checks.push(setup::database(config, store.as_ref()).await);
    }
    checks.extend(setup::database_directory(config));
    checks.push(setup::master_key(config, store.as_deref()).await);
    checks.extend(setup::sealed_keys(config, store.as_deref()).await);
    checks.push(setup::admin_key(config));
    checks.extend(setup::providers(config).await);
    if let Some(store) = &store {
        checks.extend(state::instances(store.as_ref()).await);
        checks.extend(state::scheduler(config, store.as_ref()).await);
        checks.extend(state::failure_rates(config, store.as_ref()).await);
        checks.extend(state::outbox(store.as_ref()).await);
        checks.extend(state::runs(config, store.as_ref()).await);
    }
    checks
}

fn print_text(checks: &[Check]) {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for check in checks {
        println!("{:<4}  {:<width$}  {}", check.status.as_str(), check.name, check.detail);
        if let Some(action) = &check.action {
            println!("{:<4}  {:<width$}  → {action}", "", "");
        }
    }
    let count = |status| checks.iter().filter(|c| c.status == status).count();
    println!(
        "\n{} ok, {} warn, {} fail",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
}

fn to_json(checks: &[Check], worst: Status) -> serde_json::Value {
    let checks: Vec<_> = checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": c.status.as_str(),
                "detail": c.detail,
                "action": c.action,
            })
        })
        .collect();
    json!({ "checks": checks, "status": worst.as_str() })
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A duration in seconds, short and human (`45s`, `12m`, `3h`, `2d`).
pub(crate) fn short_duration(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

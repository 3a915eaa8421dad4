//! `thermos keys …`: project API keys — create (printed once), list,
//! revoke. Opens the store directly; no server needed.
//!
//! `create` without `--scope` grants every scope (`read token admin`), what
//! every key could do before scopes existed; pass `--scope` to narrow it.
//! Listings show the public prefix `thk_<key id>`, never a key or its hash.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use secrecy::ExposeSecret;
use thermos_core::id::is_valid_slug;
use thermos_store::truncate_to_millis;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::auth::{Scope, Scopes};
use crate::api::keys::KeyView;
use crate::config::Config;
use crate::{api_key, app};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a project; it is printed once and stored hashed.
    Create {
        /// The project the key may act on.
        #[arg(long)]
        project: String,
        /// A scope to grant: read (metadata), token (fetch tokens), admin
        /// (change state); repeat for several. token and admin imply read.
        /// Default: all three.
        #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// The key stops working after this long (e.g. 90d, 12h); default:
        /// never (until revoked).
        #[arg(long, value_name = "DURATION", value_parser = api_key::parse_lifetime)]
        expires_in: Option<std::time::Duration>,
    },
    /// List API keys (prefix, project, scopes, status, dates; never a key).
    List {
        /// Only this project's keys.
        #[arg(long)]
        project: Option<String>,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key at once; it stays listed as revoked.
    Revoke {
        /// The key's prefix `thk_<key id>` or its bare key id, as listed.
        key_id: String,
    },
    /// Master key rotation: rotate-master, reencrypt, master-status,
    /// promote-master, retire-master (see `cli/master_key.rs`).
    #[command(flatten)]
    MasterKey(super::master_key::MasterKeyCommand),
}

fn parse_scope(name: &str) -> Result<Scope, String> {
    Scope::parse(name).ok_or_else(|| format!("unknown scope {name:?} (expected read, token or admin)"))
}

pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            project,
            scopes,
            expires_in,
        } => create(config, &project, &scopes, expires_in).await,
        KeysCommand::List { project, json } => list(config, project.as_deref(), json).await,
        KeysCommand::Revoke { key_id } => revoke(config, &key_id).await,
        KeysCommand::MasterKey(command) => super::master_key::run(config, command).await,
    }
}

async fn create(
    config: &Config,
    project: &str,
    scopes: &[Scope],
    expires_in: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    if !is_valid_slug(project) {
        bail!("--project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)");
    }
    let scopes = if scopes.is_empty() {
        Scopes::ALL
    } else {
        Scopes::of(scopes.iter().copied())
    };
    let now = truncate_to_millis(OffsetDateTime::now_utc());
    let expires_at = expires_in.map(|lifetime| truncate_to_millis(now + lifetime));
    let store = app::open_store(config).await?;
    let created = api_key::create_with(project, scopes, expires_at, now);
    store
        .insert_api_key(created.record.clone())
        .await
        .context("store the key")?;
    let until = expires_at.map_or("never expires".to_owned(), |at| {
        format!("expires {}", at.format(&Rfc3339).unwrap_or_default())
    });
    eprintln!(
        "Created API key {} for project {project} (scopes: {scopes}; {until}). It is shown only now; store it safely:",
        api_key::display_prefix(&created.record.key_id)
    );
    println!("{}", created.key.expose_secret());
    Ok(())
}

async fn list(config: &Config, project: Option<&str>, json: bool) -> anyhow::Result<()> {
    let store = app::open_store(config).await?;
    let keys = store.list_api_keys(project).await.context("list keys")?;
    let now = OffsetDateTime::now_utc();
    let views: Vec<KeyView> = keys.iter().map(|k| KeyView::new(k, now)).collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "data": views }))?
        );
        return Ok(());
    }
    let time = |at: Option<OffsetDateTime>| at.and_then(|at| at.format(&Rfc3339).ok()).unwrap_or_default();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["key", "project", "scopes", "status", "created", "expires", "revoked"]);
    for view in &views {
        table.add_row([
            view.prefix.clone(),
            view.project.clone(),
            view.scopes.join(" "),
            view.status.to_owned(),
            time(Some(view.created_at)),
            time(view.expires_at),
            time(view.revoked_at),
        ]);
    }
    println!("{table}");
    println!("{} key(s)", views.len());
    Ok(())
}

async fn revoke(config: &Config, key_ref: &str) -> anyhow::Result<()> {
    let Some(key_id) = api_key::parse_key_ref(key_ref) else {
        // Never echo the argument: it may be a whole key pasted by mistake.
        bail!("expected a key prefix thk_<12 hex digits> or a bare key id, as `thermos keys list` shows");
    };
    let store = app::open_store(config).await?;
    let revoked = store
        .revoke_api_key(key_id, truncate_to_millis(OffsetDateTime::now_utc()))
        .await
        .context("revoke the key")?;
    match revoked {
        None => bail!("no API key {}", api_key::display_prefix(key_id)),
        Some(record) => {
            println!(
                "Revoked API key {} of project {}; it no longer authenticates.",
                api_key::display_prefix(key_id),
                record.project
            );
            Ok(())
        }
    }
}

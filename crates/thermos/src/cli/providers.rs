//! `thermos providers list|show`: the built-in provider catalogue
//! (`crate::catalogue`), as text or `--json`. Needs no configuration, store
//! or network; `show` prints the `[[provider]]` table that configures an
//! entry.

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::catalogue::{self, Entry, auth_method_name, format_duration};

/// `thermos providers …`.
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// One line per catalogue entry: slug, name, rotation, access-token lifetime.
    List {
        /// Print JSON (an array of entries with every field).
        #[arg(long)]
        json: bool,
    },
    /// Every field of one catalogue entry and the TOML that configures it.
    Show {
        /// The entry's slug (`thermos providers list`).
        slug: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `providers` command.
pub fn run(command: ProvidersCommand) -> anyhow::Result<()> {
    match command {
        ProvidersCommand::List { json: true } => {
            let all: Vec<Value> = catalogue::entries().iter().map(entry_json).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        ProvidersCommand::List { json: false } => {
            println!("{:<12} {:<55} {:<9} ACCESS TOKEN", "SLUG", "NAME", "ROTATION");
            for e in catalogue::entries() {
                println!(
                    "{:<12} {:<55} {:<9} {}",
                    e.slug,
                    e.name,
                    e.rotation.as_str(),
                    format_duration(e.access_token_ttl)
                );
            }
        }
        ProvidersCommand::Show { slug, json } => {
            let Some(entry) = catalogue::entry(&slug) else {
                bail!(
                    "no catalogue entry {slug:?} (expected one of: {})",
                    catalogue::slugs().join(", ")
                );
            };
            if json {
                let mut value = entry_json(entry);
                value["config_toml"] = Value::String(catalogue::config_toml(entry));
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", show_text(entry));
            }
        }
    }
    Ok(())
}

/// An optional duration as seconds, or null.
fn seconds(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs()))
}

/// The wire form of an entry (durations in seconds).
fn entry_json(e: &Entry) -> Value {
    let params: serde_json::Map<String, Value> = e
        .params
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                json!({ "default": p.default, "description": p.description }),
            )
        })
        .collect();
    json!({
        "slug": e.slug,
        "name": e.name,
        "docs": e.docs,
        "authorization_url": e.authorization_url,
        "token_url": e.token_url,
        "revocation_url": e.revocation_url,
        "discovery": e.discovery,
        "auth_method": auth_method_name(e.auth_method),
        "scopes": e.scopes,
        "scope_separator": e.scope_separator,
        "authorization_params": e.authorization_params,
        "token_params": e.token_params,
        "rotation": e.rotation.as_str(),
        "reuse_grace_seconds": seconds(e.reuse_grace),
        "access_token_ttl_seconds": e.access_token_ttl.as_secs(),
        "refresh_token_ttl_seconds": seconds(e.refresh_token_ttl),
        "refresh_token_idle_seconds": seconds(e.refresh_token_idle),
        "response_fields": e.response_fields,
        "quirks": e.quirks,
        "params": params,
    })
}

/// `providers show` as text: every field, then the TOML.
fn show_text(e: &Entry) -> String {
    let none = || "-".to_owned();
    let duration = |d: Option<std::time::Duration>| d.map_or_else(none, format_duration);
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        if map.is_empty() {
            none()
        } else {
            map.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut rows: Vec<(&str, String)> = vec![("name", e.name.clone()), ("docs", e.docs.clone().unwrap_or_else(none))];
    if e.discovery {
        rows.push(("endpoints", "discovered from {issuer}'s metadata at startup".to_owned()));
    } else {
        rows.push(("authorization_url", e.authorization_url.clone().unwrap_or_else(none)));
        rows.push(("token_url", e.token_url.clone().unwrap_or_else(none)));
    }
    rows.extend([
        ("revocation_url", e.revocation_url.clone().unwrap_or_else(none)),
        ("auth_method", auth_method_name(e.auth_method).to_owned()),
        (
            "scopes",
            if e.scopes.is_empty() {
                none()
            } else {
                e.scopes.join(" ")
            },
        ),
        ("scope_separator", format!("{:?}", e.scope_separator)),
        ("authorization_params", pairs(&e.authorization_params)),
        ("token_params", pairs(&e.token_params)),
        ("rotation", e.rotation.as_str().to_owned()),
        ("reuse_grace", duration(e.reuse_grace)),
        ("access_token_ttl", format_duration(e.access_token_ttl)),
        ("refresh_token_ttl", duration(e.refresh_token_ttl)),
        ("refresh_token_idle", duration(e.refresh_token_idle)),
        (
            "response_fields",
            if e.response_fields.is_empty() {
                none()
            } else {
                e.response_fields.join(", ")
            },
        ),
    ]);
    for (name, p) in &e.params {
        let default = p
            .default
            .as_deref()
            .map_or_else(|| "required".to_owned(), |d| format!("default {d:?}"));
        rows.push(("param", format!("{{{name}}} ({default}): {}", p.description)));
    }
    rows.push(("quirks", e.quirks.clone()));

    let mut text = format!("{}\n", e.slug);
    for (key, value) in rows {
        text.push_str(&format!("  {key:<21} {value}\n"));
    }
    text.push_str("\nConfigure it (thermos.toml):\n\n");
    text.push_str(&catalogue::config_toml(e));
    text
}

/// Loads the configuration and discovers the endpoints of its `oidc`
/// providers (`catalogue::resolve_discovery`): what every command that
/// loads the configuration, and a SIGHUP reload, work with.
pub(super) async fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<crate::config::Config> {
    let mut config = crate::config::Config::load(path)?;
    catalogue::resolve_discovery(&mut config).await?;
    Ok(config)
}

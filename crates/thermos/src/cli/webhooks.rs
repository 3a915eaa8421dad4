//! `thermos webhooks create|list|delete`: a project's webhook endpoints,
//! written straight to the store (a running server sends to a new webhook
//! from its next event on; no restart needed, the dispatcher reads the
//! webhook at each delivery). Validation is the API's
//! ([`crate::api::webhooks::WebhookRegistration`]).
//!
//! `create` prints the `whsec_` secret once; it is sealed in the store and
//! never shown again.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use secrecy::ExposeSecret as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::webhooks::WebhookRegistration;
use crate::app;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register a webhook for a project's events; prints its signing
    /// secret (shown only once).
    Create {
        /// The project whose events it receives.
        #[arg(long)]
        project: String,
        /// Where events are posted: https (http only to loopback, and only
        /// with [security] allow_private_targets = true).
        #[arg(long)]
        url: String,
        /// Event types, comma separated (default: every type).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
    },
    /// List webhooks (never their secrets).
    List {
        /// Only this project's webhooks.
        #[arg(long)]
        project: Option<String>,
    },
    /// Delete a webhook; its pending deliveries fail.
    Delete {
        /// The webhook id (`wh_…`).
        id: String,
    },
}

pub async fn run(config: &Config, command: WebhooksCommand) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::Create { project, url, events } => {
            let registration = WebhookRegistration::parse(project, &url, events, config.security.allow_private_targets)
                .map_err(|problems| anyhow::anyhow!("invalid webhook:\n  --{}", problems.join("\n  --")))?;
            let egress = crate::egress::EgressPolicy::system(config.security.allow_private_targets);
            registration
                .check_resolved(&egress)
                .await
                .map_err(|problem| anyhow::anyhow!("invalid webhook:\n  --{problem}"))?;
            let key = super::cli_master_key(config, true)?;
            let store = app::open_store(config).await?;
            let (record, secret) = registration.record(&key, OffsetDateTime::now_utc());
            store
                .insert_webhook(record.clone())
                .await
                .context("store the webhook")?;
            println!(
                "Registered webhook {} of project {} → {}",
                record.id, record.project, record.url
            );
            println!(
                "Events: {}",
                record.events.as_ref().map_or("all".to_owned(), |e| e.join(", "))
            );
            println!("Signing secret (shown only now; verify webhook-signature with it):");
            println!("{}", secret.expose_secret());
        }
        WebhooksCommand::List { project } => {
            let store = app::open_store(config).await?;
            let webhooks = store.list_webhooks(project.as_deref()).await?;
            let mut table = Table::new();
            table
                .load_preset(UTF8_BORDERS_ONLY)
                .set_header(["id", "project", "url", "events", "created"]);
            for w in &webhooks {
                table.add_row([
                    w.id.clone(),
                    w.project.clone(),
                    w.url.clone(),
                    w.events.as_ref().map_or("all".to_owned(), |e| e.join(", ")),
                    w.created_at.format(&Rfc3339).unwrap_or_default(),
                ]);
            }
            println!("{table}");
            println!("{} webhook(s)", webhooks.len());
        }
        WebhooksCommand::Delete { id } => {
            let store = app::open_store(config).await?;
            if !store.delete_webhook(&id, OffsetDateTime::now_utc()).await? {
                bail!("no webhook {id}");
            }
            println!("Deleted webhook {id}; its pending deliveries are marked failed.");
        }
    }
    Ok(())
}

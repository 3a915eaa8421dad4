//! `thermos apps create|list|delete`: a project's own OAuth client for a
//! configured provider (a custom app), written straight to the store.
//!
//! The client secret is never a plain argument (it would land in the shell
//! history and in `ps`): it is read from the environment variable named by
//! `--client-secret-env` or from standard input with
//! `--client-secret-stdin`, and sealed before it reaches the store. A running
//! `thermos serve` does not see changes made here until its next start;
//! `POST /v1/apps` applies at once. Validation is the API's
//! ([`crate::api::apps::Registration`]).

use std::io::Read as _;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use secrecy::SecretString;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::apps::Registration;
use crate::app;
use crate::config::Config;

/// Said after every change: the store is written, not the running server.
const PICKED_UP_AT_START: &str =
    "A running `thermos serve` picks this change up at its next start (POST /v1/apps applies at once).";

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// Register a project's own OAuth client for a configured provider, or
    /// replace the one registered; the project's connections then refresh
    /// with it. A running server picks it up at its next start.
    #[command(group(ArgGroup::new("secret").args(["client_secret_env", "client_secret_stdin"])))]
    Create {
        /// The project whose connections use this client.
        #[arg(long)]
        project: String,
        /// The configured provider (its slug).
        #[arg(long)]
        provider: String,
        /// The OAuth client id.
        #[arg(long)]
        client_id: String,
        /// client_secret_basic, client_secret_post or none (default: the
        /// configured provider's).
        #[arg(long)]
        auth_method: Option<String>,
        /// Read the client secret from this environment variable.
        #[arg(long, value_name = "VAR")]
        client_secret_env: Option<String>,
        /// Read the client secret from standard input (a trailing newline is
        /// dropped).
        #[arg(long)]
        client_secret_stdin: bool,
    },
    /// List custom apps (never their secrets).
    List {
        /// Only this project's apps.
        #[arg(long)]
        project: Option<String>,
    },
    /// Delete a project's custom app; its connections go back to the
    /// configured app. A running server picks it up at its next start.
    Delete {
        #[arg(long)]
        project: String,
        #[arg(long)]
        provider: String,
    },
}

pub async fn run(config: &Config, command: AppsCommand) -> anyhow::Result<()> {
    match command {
        AppsCommand::Create {
            project,
            provider,
            client_id,
            auth_method,
            client_secret_env,
            client_secret_stdin,
        } => {
            let secret = read_secret(client_secret_env.as_deref(), client_secret_stdin)?;
            let registration = Registration::parse(
                project,
                &provider,
                config.provider(&provider),
                client_id,
                secret,
                auth_method.as_deref(),
            )
            .map_err(|problems| anyhow::anyhow!("invalid custom app:\n  {}", name_flags(&problems).join("\n  ")))?;
            let key = super::cli_master_key(config, true)?;
            let store = app::open_store(config).await?;
            let record = registration.record(&key, OffsetDateTime::now_utc());
            let registered_at = record.created_at;
            let stored = store.upsert_custom_app(record).await.context("store the custom app")?;
            let verb = if stored.created_at < registered_at {
                "Replaced"
            } else {
                "Registered"
            };
            println!(
                "{verb} the custom app of project {} for {}: client id {}, auth method {}.",
                stored.project, stored.provider, stored.client_id, stored.auth_method
            );
            println!("{PICKED_UP_AT_START}");
        }
        AppsCommand::List { project } => {
            let store = app::open_store(config).await?;
            let apps = store.list_custom_apps(project.as_deref()).await?;
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY).set_header([
                "project",
                "provider",
                "client_id",
                "auth_method",
                "secret",
                "created",
                "updated",
            ]);
            for a in &apps {
                let configured = if config.provider(&a.provider).is_some() {
                    a.provider.clone()
                } else {
                    format!("{} (not configured)", a.provider)
                };
                table.add_row([
                    a.project.clone(),
                    configured,
                    a.client_id.clone(),
                    a.auth_method.clone(),
                    if a.client_secret.is_some() { "sealed" } else { "-" }.to_owned(),
                    rfc3339(a.created_at),
                    rfc3339(a.updated_at),
                ]);
            }
            println!("{table}");
            println!("{} custom app(s)", apps.len());
        }
        AppsCommand::Delete { project, provider } => {
            let store = app::open_store(config).await?;
            if !store.delete_custom_app(&project, &provider).await? {
                bail!("project {project} has no custom app for {provider}");
            }
            println!(
                "Deleted the custom app of project {project} for {provider}; its connections use the configured app."
            );
            println!("{PICKED_UP_AT_START}");
        }
    }
    Ok(())
}

/// The client secret, from the environment or standard input; `None` when
/// neither was asked for (a public client).
fn read_secret(env: Option<&str>, stdin: bool) -> anyhow::Result<Option<SecretString>> {
    if let Some(var) = env {
        let value = std::env::var(var).with_context(|| format!("--client-secret-env: read ${var}"))?;
        return Ok(Some(SecretString::from(value)));
    }
    if stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("--client-secret-stdin: read standard input")?;
        // Trimmed in place: the secret is never copied to a second buffer.
        text.truncate(text.trim_end_matches(['\n', '\r']).len());
        return Ok(Some(SecretString::from(text)));
    }
    Ok(None)
}

/// Problems as the API words them (`client_id: …`), with the CLI's flags.
fn name_flags(problems: &[String]) -> Vec<String> {
    const FLAGS: [(&str, &str); 5] = [
        ("project:", "--project:"),
        ("provider:", "--provider:"),
        ("client_id:", "--client-id:"),
        ("auth_method:", "--auth-method:"),
        ("client_secret:", "--client-secret-env or --client-secret-stdin:"),
    ];
    problems
        .iter()
        .map(|p| {
            FLAGS
                .iter()
                .find_map(|(field, flag)| p.strip_prefix(field).map(|rest| format!("{flag}{rest}")))
                .unwrap_or_else(|| p.clone())
        })
        .collect()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_cli_flags() {
        let named = name_flags(&[
            "client_id: must be 1-255 characters".to_owned(),
            "client_secret: required unless auth_method is none".to_owned(),
            "something else".to_owned(),
        ]);
        assert_eq!(
            named,
            [
                "--client-id: must be 1-255 characters",
                "--client-secret-env or --client-secret-stdin: required unless auth_method is none",
                "something else",
            ]
        );
    }

    #[test]
    fn a_secret_can_come_only_from_the_environment_or_stdin_never_an_argument() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            command: AppsCommand,
        }
        let base = [
            "thermos",
            "create",
            "--project",
            "p1",
            "--provider",
            "acme",
            "--client-id",
            "id",
        ];
        let plain = Cli::try_parse_from(base.iter().copied().chain(["--client-secret", "s3cret"]));
        assert!(plain.is_err());
        let both =
            Cli::try_parse_from(
                base.iter()
                    .copied()
                    .chain(["--client-secret-env", "V", "--client-secret-stdin"]),
            );
        assert!(both.is_err(), "env and stdin are exclusive");
        assert!(Cli::try_parse_from(base.iter().copied().chain(["--client-secret-env", "V"])).is_ok());
    }
}

//! The command line: `serve`, `migrate`, `keys`, `connections`, `demo`,
//! `config`. Arguments are parsed into validated values here, once; each
//! command then works on the store directly (no running server needed).

mod apps;
mod audit;
mod connections;
pub(crate) mod doctor;
mod events;
mod keys;
mod master_key;
mod providers;
mod refresh;
mod runs;
mod webhooks;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::{self, Application};
use crate::config::{Config, KeySource};

/// Thermos keeps OAuth tokens warm.
#[derive(Debug, Parser)]
#[command(name = "thermos", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Default: $THERMOS_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and the refresh engine.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage project API keys and the master key ring (rotate-master, reencrypt, …).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Inspect connections.
    #[command(subcommand)]
    Connections(connections::ConnectionsCommand),
    /// Manage custom apps: a project's own OAuth client for a configured provider.
    #[command(subcommand)]
    Apps(apps::AppsCommand),
    /// Manage project webhooks (signed deliveries of a project's events).
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
    /// Inspect events and their deliveries; redeliver.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Read the audit log: token fetches and changes, by API key.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Refresh the matching connections now, in batches (a run); exits
    /// non-zero when more than the failure threshold of attempts fail.
    Refresh(refresh::RefreshArgs),
    /// Inspect and cancel bulk refresh runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Check the database, master key, providers, scheduler and outbox;
    /// exits non-zero when a check fails.
    Doctor(doctor::DoctorArgs),
    /// Run Thermos against a built-in test provider on loopback and report.
    Demo(crate::demo::DemoArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The built-in provider catalogue: list entries, show one and how to configure it.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print an annotated configuration file with every default.
    Example,
    /// Load and validate the configuration, then print it (secrets redacted).
    Check,
}

/// Parses the process arguments and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::Demo(args) = cli.command {
        return crate::demo::run(args).await;
    }
    if let Command::Config(ConfigCommand::Example) = cli.command {
        print!("{}", crate::config::example_toml());
        return Ok(());
    }
    if let Command::Providers(command) = cli.command {
        return providers::run(command);
    }
    let config = providers::load_config(cli.config.as_deref()).await?;
    match cli.command {
        Command::Serve => serve(config, cli.config).await,
        Command::Migrate => {
            app::open_store(&config).await?;
            println!("database {} is up to date", config.database_url_redacted());
            Ok(())
        }
        Command::Keys(command) => keys::run(&config, command).await,
        Command::Connections(command) => connections::run(&config, command).await,
        Command::Apps(command) => apps::run(&config, command).await,
        Command::Webhooks(command) => webhooks::run(&config, command).await,
        Command::Events(command) => events::run(&config, command).await,
        Command::Audit(command) => audit::run(&config, command).await,
        Command::Refresh(args) => refresh::run(&config, args).await,
        Command::Runs(command) => runs::run(&config, command).await,
        Command::Doctor(args) => doctor::run(&config, args).await,
        Command::Config(ConfigCommand::Check) => {
            println!("{config:#?}");
            Ok(())
        }
        Command::Config(ConfigCommand::Example) | Command::Demo(_) | Command::Providers(_) => {
            unreachable!("handled above")
        }
    }
}

async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::install(std::io::stdout, &config.telemetry)?;
    let (key, source) = config.load_or_create_master_key()?;
    if let KeySource::Generated(path) = &source {
        tracing::warn!(
            path = %path.display(),
            "GENERATED A NEW MASTER KEY at {}: back it up now; without it the stored tokens cannot be decrypted. \
             In production set THERMOS_MASTER_KEY or security.master_key_file.",
            path.display()
        );
    }
    let admin_key = config.admin_key();
    if admin_key.is_none() {
        tracing::warn!(
            variable = %config.security.admin_key_env,
            "no admin key set: only project keys (thermos keys create) can use the API"
        );
    }
    let mut application = Application::build(&config, key, admin_key, app::system_clock()).await?;
    application.watch_master_key_file(&source);
    reload_on_sighup(application.engine().clone(), config_path);
    let result = application.run_until(app::shutdown_signal()).await;
    // After the graceful shutdown: the last spans are sent before exiting.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    result
}

/// The master key for a CLI command. Only commands that seal new secrets
/// (`allow_create`) may create one, for a new installation, with a warning;
/// others refuse rather than create a key that opens nothing stored.
pub(crate) fn cli_master_key(config: &Config, allow_create: bool) -> anyhow::Result<thermos_core::seal::MasterKey> {
    let file = &config.security.master_key_file;
    if !allow_create && std::env::var_os(crate::config::MASTER_KEY_ENV).is_none() && !file.exists() {
        anyhow::bail!(
            "no master key: {} is unset and {} does not exist (restore it from backup)",
            crate::config::MASTER_KEY_ENV,
            file.display()
        );
    }
    let (key, source) = config.load_or_create_master_key()?;
    if let KeySource::Generated(path) = &source {
        eprintln!(
            "warning: generated a new master key at {}: back it up; without it stored secrets cannot be decrypted",
            path.display()
        );
    }
    Ok(key)
}

/// Parses a human duration (`30s`, `2m`, `1h 30m`).
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("invalid duration {raw:?}: {e}"))
}

/// On SIGHUP, reloads the configuration and replaces the provider apps (and
/// their limits); apps paused for an invalid client resume. A configuration
/// that does not load is reported and the running one kept.
fn reload_on_sighup(engine: crate::engine::Engine, config_path: Option<PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; configuration reload needs a restart");
            return;
        };
        while hangups.recv().await.is_some() {
            match providers::load_config(config_path.as_deref()).await {
                Ok(config) => {
                    let providers = config.providers.len();
                    engine.reload_providers(config.providers).await;
                    // Projects' own apps are copies of the configured ones: rebuild them too.
                    if let Err(e) = crate::api::apps::load_into_registry(&engine).await {
                        tracing::error!(error.message = %e, "reloading custom apps failed");
                    }
                    tracing::info!(
                        providers,
                        "configuration reloaded: provider apps and limits replaced, paused apps resume"
                    );
                }
                Err(e) => {
                    tracing::error!(error.message = %e, "configuration reload failed; keeping the running configuration")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (engine, config_path);
}

//! `thermos keys create --project P`: a project API key, shown once.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use secrecy::ExposeSecret;
use thermos_core::id::is_valid_slug;

use crate::config::Config;
use crate::{api_key, app};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a project; it is printed once and stored hashed.
    Create {
        /// The project the key may act on.
        #[arg(long)]
        project: String,
    },
}

pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { project } => {
            if !is_valid_slug(&project) {
                bail!("--project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)");
            }
            let store = app::open_store(config).await?;
            let created = api_key::create(&project, time::OffsetDateTime::now_utc());
            store
                .insert_api_key(created.record.clone())
                .await
                .context("store the key")?;
            eprintln!("Created an API key for project {project}. It is shown only now; store it safely:");
            println!("{}", created.key.expose_secret());
            Ok(())
        }
    }
}

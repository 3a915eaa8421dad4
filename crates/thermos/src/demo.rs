//! `thermos demo` (to be written).

/// Demo arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    Ok(())
}

//! `thermos-bench`: Thermos's benchmarks, each bounded in time, on loopback
//! only. Not a test: run it by hand on a quiet machine, in release.
//!
//! - `refresh-throughput` — the engine refreshing N due connections, against
//!   a bare HTTP loop at the same endpoint and concurrency (`refresh.rs`);
//! - `token-api` — `GET …/token` on the real server under load (`token_api.rs`);
//! - `scale` — import, size, start-up, memory and per-refresh cost at 10k,
//!   100k and 1M stored connections (`scale.rs`);
//! - `steady-state` — the real server keeping 100k connections fresh at
//!   1,000 refreshes/s for minutes: lateness, expired tokens, CPU, RSS
//!   (`steady.rs`);
//! - `load` — the load generator `token-api` starts in a process of its own (`load.rs`).
//!
//! The test provider and the server run as child processes (`proc.rs`,
//! `server.rs`), killed when the benchmark ends, panics included;
//! `engine.rs` drives the engine in this process, `fixture.rs` fills stores
//! and `prom.rs` reads the server's `/metrics`.

mod engine;
mod fixture;
mod load;
mod proc;
mod prom;
mod provider;
mod refresh;
mod scale;
mod server;
mod steady;
mod token_api;

use clap::{Parser, Subcommand};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts every allocation of this process (a few atomic additions each),
/// for the bytes allocated per refresh.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// (allocations, bytes allocated) by this process so far.
pub fn allocated() -> (u64, u64) {
    let stats = GLOBAL.stats();
    (stats.allocations as u64, stats.bytes_allocated as u64)
}

#[derive(Debug, Parser)]
#[command(
    name = "thermos-bench",
    about = "Thermos benchmarks (build with: cargo build --release --workspace --bins)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N connections due now, refreshed by the engine; then a bare HTTP loop at the same endpoint.
    RefreshThroughput(refresh::RefreshArgs),
    /// GET …/token over random connections of a pre-filled SQLite store, on the real server.
    TokenApi(token_api::TokenApiArgs),
    /// Import rate, database size, start-up, RSS and per-refresh cost at 10k, 100k and 1M connections.
    Scale(scale::ScaleArgs),
    /// The real server refreshing ~1,000 connections/s for minutes: lateness, expired tokens, CPU, RSS.
    SteadyState(steady::SteadyArgs),
    /// The load generator (started by token-api and steady-state).
    Load(load::LoadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::RefreshThroughput(args) => refresh::run(args).await,
        Scenario::TokenApi(args) => token_api::run(args).await,
        Scenario::Scale(args) => scale::run(args).await,
        Scenario::SteadyState(args) => steady::run(args).await,
        Scenario::Load(args) => load::run(args).await,
    }
}

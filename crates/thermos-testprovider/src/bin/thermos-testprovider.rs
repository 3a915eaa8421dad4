//! `thermos-testprovider`: the test OAuth provider in a process of its own,
//! for benchmarks (the load it serves is not counted against the process
//! measured).
//!
//! ```text
//! thermos-testprovider [--bind 127.0.0.1:0] [--access-token-ttl 3600s]
//!                      [--no-rotation] [--reuse-grace 0s] [--latency 0ms]
//!                      [--exit-with-stdin]
//! ```
//!
//! When ready it prints one JSON line on stdout (`base_url`, `token_url`,
//! `client_id`, `client_secret`, `grants_url`, `stats_url`), then serves until
//! killed, or, with `--exit-with-stdin`, until its standard input closes (so
//! it never outlives a parent that held the pipe). It serves the admin
//! endpoints (`POST /admin/grants?count=N`, `GET /admin/stats`): bind to
//! loopback only.

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use thermos_testprovider::{ProviderOptions, TestProvider};

const USAGE: &str = "usage: thermos-testprovider [--bind ADDR] [--access-token-ttl DURATION] \
[--no-rotation] [--reuse-grace DURATION] [--latency DURATION] [--exit-with-stdin]
durations: a number with a unit: 250ms, 30s, 5m, 1h";

struct Args {
    options: ProviderOptions,
    exit_with_stdin: bool,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: expected a number with a unit"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{raw:?}: the unit must be ms, s, m or h")),
    }
}

fn parse_args(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        options: ProviderOptions::default(),
        exit_with_stdin: false,
    };
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().ok_or_else(|| format!("{flag}: a value is missing"));
        match flag.as_str() {
            "--bind" => {
                let v = value()?;
                args.options.bind = v.parse::<SocketAddr>().map_err(|e| format!("--bind {v:?}: {e}"))?;
            }
            "--access-token-ttl" => args.options.access_token_ttl = parse_duration(&value()?)?,
            "--reuse-grace" => args.options.reuse_grace = parse_duration(&value()?)?,
            "--latency" => args.options.latency = parse_duration(&value()?)?,
            "--no-rotation" => args.options.rotation = false,
            "--exit-with-stdin" => args.exit_with_stdin = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("thermos-testprovider: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let provider = match TestProvider::try_start_with_admin(args.options).await {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("thermos-testprovider: bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = serde_json::json!({
        "base_url": provider.base_url(),
        "token_url": provider.token_url(),
        "client_id": provider.client_id(),
        "client_secret": provider.client_secret(),
        "grants_url": format!("{}/admin/grants", provider.base_url()),
        "stats_url": format!("{}/admin/stats", provider.base_url()),
    });
    println!("{ready}");
    if args.exit_with_stdin {
        // Blocks a thread of its own until EOF (or an error), then stops.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 256];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        })
        .await;
    } else {
        std::future::pending::<()>().await;
    }
    provider.shutdown();
    ExitCode::SUCCESS
}

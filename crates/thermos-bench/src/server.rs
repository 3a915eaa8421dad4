//! The real `thermos serve` in a process of its own: started on a free
//! loopback port with a configuration file and an admin key, waited for
//! until `/ready` answers 200, stopped with SIGTERM (a graceful stop) or
//! killed with its guard. Shared by `token-api`, `scale` and `steady-state`.
//!
//! It never signals a process it did not start.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::proc::{self, ChildGuard};

/// A loopback port free a moment ago (the server binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A started `thermos serve`.
#[derive(Debug)]
pub struct Server {
    pub child: ChildGuard,
    /// Spawn to `/ready` 200.
    pub startup: Duration,
}

impl Server {
    /// Starts `thermos --config CONFIG serve` listening at `base`, with
    /// `env` (the admin key, …) and its output in `log`; waits for `/ready`
    /// 200, at most `within`.
    pub async fn start(
        thermos_bin: Option<&Path>,
        config_path: &Path,
        base: &str,
        env: &[(&str, &str)],
        log: &Path,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let thermos_bin = proc::sibling_binary("thermos", thermos_bin)?;
        let log = std::fs::File::create(log).context("server log")?;
        let mut command = Command::new(thermos_bin);
        command
            .arg("--config")
            .arg(config_path)
            .arg("serve")
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        let spawned = Instant::now();
        let mut child = ChildGuard::spawn("thermos serve", command)?;
        let http = reqwest::Client::new();
        let startup = wait_ready(&http, base, &mut child, spawned, within).await?;
        Ok(Self { child, startup })
    }

    pub fn pid(&self) -> String {
        self.child.pid().to_string()
    }

    /// Stops the server gracefully (SIGTERM) and waits for it, at most `within`.
    pub fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid())
            .status()
            .context("run kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed ({status})", self.pid());
        }
        self.child.wait_for_exit(within)?;
        Ok(())
    }
}

/// Polls `/ready` every 5 ms until 200; the time since `spawned`.
pub async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    server: &mut ChildGuard,
    spawned: Instant,
    within: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(spawned.elapsed());
        }
        if let Some(status) = server.exited() {
            bail!("thermos serve exited during start-up ({status}); see its log");
        }
        if spawned.elapsed() > within {
            bail!("thermos serve not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

//! The real engine in this process, as `thermos serve` builds it, driven by
//! its own `drive` loop until a given number of connections are refreshed;
//! and the figures of such a phase (rate, CPU of this process and of the
//! provider, allocations). Shared by `refresh-throughput` and `scale`.
//!
//! It never installs a metrics recorder or a log subscriber (which `serve`
//! adds), so the figures are the engine's and the store's alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use thermos::config::Config;
use thermos::engine::Engine;
use thermos::provider::RefreshClient;
use thermos_core::seal::MasterKey;
use thermos_store::Store;
use tokio_util::sync::CancellationToken;

use crate::proc;

/// One phase's figures.
#[derive(Debug)]
pub struct Phase {
    pub done: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub cpu: Duration,
    pub provider_cpu: Duration,
    /// Allocations and bytes allocated by this process during the phase.
    pub allocated: (u64, u64),
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn cpu_us_per(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (self.done.max(1) as f64)
    }
    pub fn provider_cpu_us_per(&self) -> f64 {
        self.provider_cpu.as_secs_f64() * 1e6 / (self.done.max(1) as f64)
    }
    pub fn allocated_per(&self) -> (f64, f64) {
        let n = self.done.max(1) as f64;
        (self.allocated.0 as f64 / n, self.allocated.1 as f64 / n)
    }
    pub fn json(&self) -> Value {
        json!({
            "allocations_per_request": self.allocated_per().0,
            "bytes_allocated_per_request": self.allocated_per().1,
            "succeeded": self.done,
            "failed": self.failed,
            "seconds": self.elapsed.as_secs_f64(),
            "per_second": self.rate(),
            "cpu_us_per_request": self.cpu_us_per(),
            "provider_cpu_us_per_request": self.provider_cpu_us_per(),
            "cpu_percent_of_one_core": 100.0 * self.cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9),
        })
    }
}

/// The engine `thermos serve` would build from `config`, on `store`.
pub fn build(store: &Arc<dyn Store>, key: MasterKey, config: &Config) -> Engine {
    Engine::new(
        Arc::clone(store),
        Arc::new(key),
        config.providers.clone(),
        RefreshClient::new(config.refresh.request_timeout),
        thermos::app::system_clock(),
        thermos::app::engine_settings(config, thermos::app::instance_name()),
    )
}

/// Runs `engine.drive` until `target` connections are refreshed (or need
/// reauthorisation) and nothing is in flight, at most `timeout`; measures
/// this process and the provider (`provider_pid`) meanwhile.
pub async fn refresh_until(
    engine: &Engine,
    target: u64,
    provider_pid: &str,
    timeout: Duration,
) -> anyhow::Result<Phase> {
    let (cpu0, pcpu0, alloc0, started) = (
        proc::cpu_time("self")?,
        proc::cpu_time(provider_pid)?,
        crate::allocated(),
        Instant::now(),
    );
    let cancel = CancellationToken::new();
    let driver = tokio::spawn({
        let (engine, cancel) = (engine.clone(), cancel.clone());
        async move { engine.drive(cancel).await }
    });
    loop {
        let stats = engine.stats();
        if stats.refreshed + stats.needs_reauth >= target && engine.in_flight() == 0 {
            break;
        }
        if started.elapsed() > timeout {
            cancel.cancel();
            bail!(
                "Thermos refreshed only {} of {target} within {timeout:?}",
                stats.refreshed
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let (cpu1, pcpu1, alloc1) = (
        proc::cpu_time("self")?,
        proc::cpu_time(provider_pid)?,
        crate::allocated(),
    );
    cancel.cancel();
    let _ = driver.await;
    engine.wait_idle(Duration::from_secs(10)).await;
    let stats = engine.stats();
    Ok(Phase {
        done: stats.refreshed,
        failed: stats.failed,
        elapsed,
        cpu: cpu1.saturating_sub(cpu0),
        provider_cpu: pcpu1.saturating_sub(pcpu0),
        allocated: (alloc1.0 - alloc0.0, alloc1.1 - alloc0.1),
    })
}

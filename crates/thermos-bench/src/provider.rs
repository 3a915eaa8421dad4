//! The test provider in a process of its own (`thermos-testprovider`), and
//! the grants it issues over its admin endpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::proc::{self, ChildGuard};

/// Most grants asked for in one admin call (the provider's own cap).
const GRANTS_PER_CALL: usize = 50_000;

/// One grant as the provider issued it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: String,
    pub refresh_token: String,
}

/// A running provider child.
#[derive(Debug)]
pub struct Provider {
    pub child: ChildGuard,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    grants_url: String,
    stats_url: String,
}

impl Provider {
    /// Starts `thermos-testprovider` with `args` and waits for its ready line.
    pub fn spawn(binary: Option<&Path>, args: &[&str]) -> anyhow::Result<Self> {
        let path = proc::sibling_binary("thermos-testprovider", binary)?;
        let mut command = Command::new(path);
        command
            .args(["--bind", "127.0.0.1:0", "--exit-with-stdin"])
            .args(args)
            .stdout(Stdio::piped());
        let mut child = ChildGuard::spawn("thermos-testprovider", command)?;
        let stdout = child.take_stdout().context("the provider's stdout")?;
        let line = proc::first_line(stdout, Duration::from_secs(10))?;
        let ready: Value = serde_json::from_str(&line).context("parse the provider's ready line")?;
        let field = |name: &str| {
            ready[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("the provider's ready line has no {name}"))
        };
        Ok(Self {
            token_url: field("token_url")?,
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            grants_url: field("grants_url")?,
            stats_url: field("stats_url")?,
            child,
        })
    }

    pub fn pid(&self) -> String {
        self.child.pid().to_string()
    }

    /// `count` new grants.
    pub async fn grants(&self, http: &reqwest::Client, count: usize) -> anyhow::Result<Vec<Grant>> {
        let mut grants = Vec::with_capacity(count);
        while grants.len() < count {
            let n = (count - grants.len()).min(GRANTS_PER_CALL);
            let response = http
                .post(format!("{}?count={n}", self.grants_url))
                .send()
                .await
                .context("ask the provider for grants")?;
            if !response.status().is_success() {
                bail!("the provider refused to issue grants: {}", response.status());
            }
            let text = response.text().await.context("read the grants")?;
            for line in text.lines() {
                let grant: Value = serde_json::from_str(line).context("parse a grant")?;
                let field = |name: &str| grant[name].as_str().map(str::to_owned).context("a grant field");
                grants.push(Grant {
                    access_token: field("access_token")?,
                    refresh_token: field("refresh_token")?,
                });
            }
        }
        Ok(grants)
    }

    /// The provider's counters (`token_calls`, `refreshes`, `reuse_detected`, …).
    pub async fn stats(&self, http: &reqwest::Client) -> anyhow::Result<Value> {
        let response = http
            .get(&self.stats_url)
            .send()
            .await
            .context("read the provider's stats")?;
        response.json().await.context("parse the provider's stats")
    }

    /// `Authorization: Basic …` done right (RFC 6749 §2.3.1: form-URL-encode, then base64).
    pub fn basic_auth(&self) -> String {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", encode(&self.client_id), encode(&self.client_secret));
        format!("Basic {}", STANDARD.encode(pair))
    }
}

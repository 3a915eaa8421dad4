//! Shared fixtures for end-to-end tests: the real server on port 0 against
//! the test OAuth provider on loopback, with a real SQLite file.
#![allow(dead_code)]

pub mod receiver;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use thermos::app::Application;
use thermos::config::Config;
use thermos::engine::Engine;
use thermos_core::clock::{Clock, ManualClock, SystemClock};
use thermos_core::seal::MasterKey;
use thermos_testprovider::{IssuedGrant, ProviderOptions, TestProvider};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
pub const PROVIDER: &str = "acme-oauth";

/// How a test app is set up.
pub struct AppOptions {
    pub provider: ProviderOptions,
    /// A manual clock (and no background scheduler: tests call `tick`).
    pub manual_clock: bool,
    /// Extra lines for the `[refresh]` section.
    pub refresh_toml: String,
    /// Extra lines for the `[[provider]]` section (e.g. `max_concurrency = 4`);
    /// `{provider_url}` stands for the test provider's base URL.
    pub provider_toml: String,
    /// Extra sections after the provider (e.g. `[alerts]`, `[security]` keys
    /// cannot repeat: use `allow_private_targets` below).
    pub extra_toml: String,
    /// `security.allow_private_targets` (webhooks to loopback receivers).
    pub allow_private_targets: bool,
    /// The resolver of the SSRF guard (default: the system's).
    pub lookup: Option<Arc<dyn thermos::egress::NameLookup>>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            provider: ProviderOptions::default(),
            manual_clock: false,
            refresh_toml: "backoff_initial = \"5s\"\nbackoff_max = \"5m\"\nrequest_timeout = \"5s\"\n".into(),
            provider_toml: String::new(),
            extra_toml: String::new(),
            allow_private_targets: false,
            lookup: None,
        }
    }
}

/// A running Thermos and its provider.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub provider: TestProvider,
    pub engine: Engine,
    pub clock: Option<Arc<ManualClock>>,
    pub dir: TempDir,
    pub dispatcher: Arc<thermos::outbox::dispatch::Dispatcher>,
    pub aggregator: Option<Arc<thermos::outbox::alerts::Aggregator>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a test app with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// The config text for a database in `dir` and a provider at `token_url`.
pub fn config_toml(dir: &std::path::Path, token_url: &str, engine_enabled: bool, refresh_toml: &str) -> String {
    thermos::demo::loopback_config_toml(dir, PROVIDER, token_url, refresh_toml, engine_enabled)
}

/// Starts a test app.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let provider = TestProvider::start(options.provider).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut toml = config_toml(
        dir.path(),
        &provider.token_url(),
        !options.manual_clock,
        &options.refresh_toml,
    );
    toml.push_str(&options.provider_toml.replace("{provider_url}", &provider.base_url()));
    toml.push_str(&options.extra_toml);
    if options.allow_private_targets {
        toml = toml.replacen("[security]\n", "[security]\nallow_private_targets = true\n", 1);
    }
    let config = Config::from_toml_str(&toml).expect("test config is valid");
    let (key, _) = MasterKey::generate();
    let manual = options
        .manual_clock
        .then(|| Arc::new(ManualClock::new(truncate(OffsetDateTime::now_utc()))));
    let clock: Arc<dyn Clock> = match &manual {
        Some(m) => m.clone(),
        None => Arc::new(SystemClock),
    };
    let lookup = options
        .lookup
        .unwrap_or_else(|| Arc::new(thermos::egress::SystemLookup));
    let app = Application::build_with_lookup(&config, key, Some(ADMIN_KEY.to_owned().into()), clock, lookup)
        .await
        .expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let engine = app.engine().clone();
    let dispatcher = Arc::clone(app.dispatcher());
    let aggregator = app.aggregator().cloned();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        base,
        http: reqwest::Client::new(),
        provider,
        engine,
        clock: manual,
        dir,
        dispatcher,
        aggregator,
        shutdown: Some(tx),
        task: Some(task),
    }
}

fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    thermos::engine::truncate_ms(t)
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The manual clock (panics if the app runs on the system clock).
    pub fn clock(&self) -> &ManualClock {
        self.clock.as_deref().expect("app has a manual clock")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path)), ADMIN_KEY).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(&body), ADMIN_KEY).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder, key: &str) -> (u16, Value) {
        let response = request.bearer_auth(key).send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// Imports a provider grant as a connection; returns its id.
    pub async fn import(&self, grant: &IssuedGrant, external_id: &str, expires_in: u64) -> String {
        let (status, body) = self
            .post(
                "/v1/connections",
                json!({
                    "project": "p1",
                    "provider": PROVIDER,
                    "external_id": external_id,
                    "access_token": grant.access_token,
                    "refresh_token": grant.refresh_token,
                    "expires_in": expires_in,
                }),
            )
            .await;
        assert_eq!(status, 201, "import failed: {body}");
        body["id"].as_str().expect("id").to_owned()
    }

    pub async fn connection(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/connections/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Runs one scheduler tick at the manual clock's time and waits for the
    /// refreshes it started.
    pub async fn tick(&self) {
        self.engine.tick(self.engine.now()).await.expect("tick");
        assert!(
            self.engine.settle(Duration::from_secs(10)).await,
            "refreshes did not finish"
        );
    }

    /// Ticks until no more work is due now (bounded), waiting for each batch.
    pub async fn drain(&self) {
        for _ in 0..10_000 {
            let wake = self.engine.tick(self.engine.now()).await.expect("tick");
            assert!(
                self.engine.settle(Duration::from_secs(30)).await,
                "refreshes did not finish"
            );
            if wake != thermos::engine::NextWake::Now {
                return;
            }
        }
        panic!("the scheduler never ran out of due work");
    }

    /// Imports `count` fresh grants concurrently; returns (connection id, grant) pairs.
    pub async fn import_many(&self, count: usize, expires_in: u64) -> Vec<(String, IssuedGrant)> {
        use futures::StreamExt as _;
        let grants: Vec<_> = (0..count).map(|_| self.provider.issue_grant()).collect();
        futures::stream::iter(grants.into_iter().enumerate())
            .map(|(i, grant)| async move {
                let id = self.import(&grant, &format!("user-{i}"), expires_in).await;
                (id, grant)
            })
            .buffered(16)
            .collect()
            .await
    }

    /// Connection counts by status, over every connection.
    pub async fn statuses(&self) -> std::collections::BTreeMap<String, usize> {
        let (status, page) = self.get("/v1/connections?limit=1000").await;
        assert_eq!(status, 200);
        let mut counts = std::collections::BTreeMap::new();
        for c in page["data"].as_array().unwrap() {
            *counts.entry(c["status"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        counts
    }

    /// Moves the manual clock to just after `at` (an RFC 3339 text).
    pub fn advance_to(&self, at: &str) {
        let at = OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).expect("timestamp");
        if at > self.clock().now() {
            self.clock().set(at + Duration::from_millis(1));
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn ts(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        value.as_str().expect("timestamp string"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339")
}

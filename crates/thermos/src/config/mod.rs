//! Configuration: the TOML file, `THERMOS_SECTION__KEY` environment
//! overrides, and their validation into runtime types.
//!
//! Raw input is parsed once, at the edge, into types that cannot be wrong
//! ([`Config`] and its sections); every problem is reported at once, each
//! naming its key. This module owns the defaults (DESIGN.md, section
//! Configuration) and the secrets that come from the environment: the admin
//! key and the master key ([`Config::load_or_create_master_key`]).
//!
//! It never logs a secret, and [`Config`]'s Debug output shows none: client
//! secrets are [`SecretString`]s, and the database and webhook URLs are
//! shown without their credentials.
//!
//! Read next: `raw.rs` (the file's shape and the environment layer),
//! `build.rs` (the rules), `key.rs` (secrets), `thermos.example.toml`.

mod build;
mod key;
mod raw;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use secrecy::SecretString;
use thermos_core::plan::RefreshPolicy;
use url::Url;

use crate::provider::ProviderApp;

pub use key::{
    KEY_RELOAD_INTERVAL, KeyEntry, KeyFileWatch, KeySource, MASTER_KEY_ENV, MasterKeyError, read_key_entries,
    write_key_file,
};

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "THERMOS_CONFIG";
/// Prefix of the `THERMOS_SECTION__KEY` override variables.
pub const ENV_PREFIX: &str = "THERMOS_";
/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
/// Default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://thermos.db";
/// Default pool size per instance (`database.max_connections`).
pub const DEFAULT_POOL_MAX_CONNECTIONS: u32 = 16;
/// Default wait for a pooled connection (`database.acquire_timeout`).
pub const DEFAULT_POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// File name of the master key when `security.master_key_file` is not set;
/// it lives beside the SQLite database file.
pub const DEFAULT_MASTER_KEY_FILE_NAME: &str = "thermos.key";
/// Default name of the environment variable holding the admin API key.
pub const DEFAULT_ADMIN_KEY_ENV: &str = "THERMOS_ADMIN_KEY";
/// Default timeout of one request to a token endpoint.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of refreshes in flight across all providers.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 256;
/// Default share of failed refreshes above which a run fails.
pub const DEFAULT_FAILURE_THRESHOLD: f64 = 0.10;
/// Default number of consecutive failures before an alert escalates.
pub const DEFAULT_ESCALATE_AFTER: u32 = 3;
/// Default aggregation window of operator alerts (`alerts.window`).
pub const DEFAULT_ALERT_WINDOW: Duration = crate::outbox::alerts::DEFAULT_WINDOW;
/// Default time delivered and failed webhook deliveries are kept (`outbox.retention`).
pub const DEFAULT_OUTBOX_RETENTION: Duration = crate::outbox::dispatch::DEFAULT_RETENTION;

/// Default lateness from which the sweep takes a connection (`runs.sweep_overdue_by`).
pub const DEFAULT_SWEEP_OVERDUE_BY: Duration = Duration::from_secs(60);
/// Default heartbeat age after which a running run is stale (`runs.stale_after`).
pub const DEFAULT_RUN_STALE_AFTER: Duration = Duration::from_secs(60);

/// Default `service.name` of exported traces (`telemetry.service_name`).
pub const DEFAULT_SERVICE_NAME: &str = "thermos";
/// Default share of traces exported (`telemetry.sample_ratio`).
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;

/// The validated configuration of one Thermos instance.
#[derive(Clone)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[database] url`: a `sqlite:` or `postgres:` URL.
    pub database_url: String,
    /// `[database]` pool settings (PostgreSQL).
    pub database_pool: PoolConfig,
    /// `[security]`.
    pub security: SecurityConfig,
    /// `[refresh]`.
    pub refresh: RefreshConfig,
    /// `[[provider]]`, in file order; slugs are unique.
    pub providers: Vec<ProviderApp>,
    /// `[[provider]]`s whose endpoints come from discovery (`catalogue = "oidc"`),
    /// waiting for [`crate::catalogue::resolve_discovery`]; empty once resolved.
    pub pending_discovery: Vec<crate::catalogue::PendingDiscovery>,
    /// `[alerts]`, when the section is present.
    pub alerts: Option<AlertsConfig>,
    /// `[outbox]`.
    pub outbox: OutboxConfig,
    /// `[engine]`.
    pub engine: EngineConfig,
    /// `[runs]`.
    pub runs: RunsConfig,
    /// `[telemetry]`.
    pub telemetry: TelemetryConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
}

/// `[server]`: where Thermos listens and how browsers reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The address the HTTP server binds.
    pub listen: SocketAddr,
    /// The public base URL (default `http://{listen}/`). Its path always ends
    /// with `/`, so `public_url.join("oauth/callback")` keeps any prefix.
    pub public_url: Url,
}

/// `[database]` pool settings; they apply to PostgreSQL (SQLite has one
/// writer and a few readers on one file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections in this instance's pool (at least 2).
    pub max_connections: u32,
    /// How long a query waits for a free pooled connection before it fails
    /// (and `/ready` reports the pool exhausted).
    pub acquire_timeout: Duration,
    /// The PostgreSQL schema Thermos's tables live in (created if missing);
    /// `None`: the server's default search path (`public`).
    pub schema: Option<String>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_POOL_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_POOL_ACQUIRE_TIMEOUT,
            schema: None,
        }
    }
}

/// `[security]`: where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// The master key file (used when `THERMOS_MASTER_KEY` is not set). By
    /// default `thermos.key` beside the SQLite database file.
    pub master_key_file: PathBuf,
    /// Name of the environment variable holding the admin API key.
    pub admin_key_env: String,
    /// Whether webhooks may reach loopback and private addresses.
    pub allow_private_targets: bool,
    /// Failed authentications one client address may make per minute
    /// before its requests get 429 for a minute; 0: no limit.
    pub auth_failures_per_minute: u32,
}

/// `[refresh]`: the refresh rules and the engine's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// Margin, retries, backoff and recovery.
    pub policy: RefreshPolicy,
    /// Timeout of one request to a token endpoint.
    pub request_timeout: Duration,
    /// Refreshes in flight across all providers (at least 1).
    pub max_concurrency: u32,
    /// A run fails when more than this share of its attempts fail, in (0, 1].
    pub failure_threshold: f64,
}

/// `[alerts]`: the operators' webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Where alerts are posted (http or https). Its path often is a secret
    /// (Slack), so Debug shows only the origin.
    pub webhook_url: Url,
    /// The payload shape.
    pub format: AlertFormat,
    /// Consecutive failures of a connection before an escalation (at least 1).
    pub escalate_after: u32,
    /// Alert on the first failure of a connection.
    pub on_first_failure: bool,
    /// Send the all-clear when a connection recovers.
    pub on_recovery: bool,
    /// The aggregation window: gathering time before a provider's first
    /// alert and the least time between two of its alerts (at least 1 s).
    pub window: Duration,
}

/// The payload shape of alert webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertFormat {
    /// A Slack incoming-webhook message (`{"text": …}`).
    #[default]
    Slack,
    /// The event as JSON.
    Json,
}

impl AlertFormat {
    /// Parses the configuration name (`slack` or `json`).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "slack" => Some(Self::Slack),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// `[outbox]`: the webhook deliveries and events kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// How long delivered and failed deliveries, and their events, are kept
    /// before pruning (at least 1 h).
    pub retention: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_OUTBOX_RETENTION,
        }
    }
}

/// Default `limits.max_body_bytes`: 256 KiB.
pub const DEFAULT_MAX_BODY_BYTES: u32 = 256 * 1024;
/// Default `limits.max_header_bytes`: 32 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 32 * 1024;
/// Default `limits.request_timeout`: longer than the default
/// `refresh.request_timeout`, so an on-demand refresh can finish.
pub const DEFAULT_API_REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// `[limits]`: what one API request, and one project, may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Largest request body; a larger one is answered 413 (code 1612).
    pub max_body_bytes: u32,
    /// Largest request target plus headers; more is answered 431 (code 1613).
    pub max_header_bytes: u32,
    /// A request not answered within this (body upload included) is
    /// answered 503 (code 1602).
    pub request_timeout: Duration,
    /// Most connections one project may hold; `None` (the default): no limit.
    pub max_connections_per_project: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            request_timeout: DEFAULT_API_REQUEST_TIMEOUT,
            max_connections_per_project: None,
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// False for an API-only instance: it serves tokens and refreshes only on demand.
    pub enabled: bool,
}

/// `[runs]`: the scheduled sweep and the detection of runs whose process died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunsConfig {
    /// How often a sweep run refreshes the connections the scheduler left
    /// overdue (a safety net); `None` (the default) runs no sweep.
    pub sweep_every: Option<Duration>,
    /// A sweep takes the connections whose planned refresh is at least this
    /// late.
    pub sweep_overdue_by: Duration,
    /// A running run whose heartbeat is older than this is marked stale
    /// (its process died); it beats at a quarter of this.
    pub stale_after: Duration,
}

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            sweep_every: None,
            sweep_overdue_by: DEFAULT_SWEEP_OVERDUE_BY,
            stale_after: DEFAULT_RUN_STALE_AFTER,
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces (needs a build with the `otel` feature).
#[derive(Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`); spans
    /// are posted to `{otlp_endpoint}/v1/traces`. `None` (the default):
    /// nothing is exported. Debug shows it without a password.
    pub otlp_endpoint: Option<Url>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of traces recorded, in [0, 1]; a trace whose parent was
    /// sampled is always recorded.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: DEFAULT_SAMPLE_RATIO,
        }
    }
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_ref().map(|u| redact_url(u.as_str())),
            )
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .finish()
    }
}

/// One configuration problem, named by its key (`refresh.margin`,
/// `provider[1].token_url`) or, for a file that cannot be read, by the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as written in the file.
    pub key: String,
    /// What is wrong, lowercase.
    pub message: String,
}

impl Problem {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` or `THERMOS_CONFIG` does not exist.
    #[error("config file {} not found", path.display())]
    NotFound {
        /// The file that was asked for.
        path: PathBuf,
    },
    /// The file or the environment is wrong; every problem found is listed,
    /// one per line.
    #[error("invalid configuration:{}", ProblemLines(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems found (empty for [`ConfigError::NotFound`]).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::NotFound { .. } => &[],
            Self::Invalid(problems) => problems,
        }
    }
}

struct ProblemLines<'a>(&'a [Problem]);

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            let text = problem.to_string();
            write!(f, "\n  {}", text.trim_end().replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

impl Config {
    /// Loads the configuration: the file at `path`, else the one named by
    /// `THERMOS_CONFIG`, else none (all defaults); then the
    /// `THERMOS_SECTION__KEY` overrides from the process environment.
    /// `client_secret_env` variables are read from the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env =
            std::env::vars_os().filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
        Self::load_from(path, env)
    }

    /// [`Config::load`] with the environment given as a list of variables
    /// instead of the process environment (for tests): it provides
    /// `THERMOS_CONFIG`, the overrides and the `client_secret_env` variables.
    ///
    /// Only variables named `THERMOS_<SECTION>__<KEY>` override the file
    /// (`THERMOS_REFRESH__MARGIN=10m`); their values are taken as text, never
    /// guessed at (`0123` stays `0123`); an empty value counts as unset. An
    /// override of an unknown section or key is an error naming the variable.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = env.into_iter().collect();
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env.get(CONFIG_ENV).filter(|p| !p.is_empty()).map(PathBuf::from));
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::NotFound { path });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let lookup = |name: &str| env.get(name).cloned();
        load_layers(figment, raw::EnvOverrides::collect(&env), &lookup)
    }

    /// Parses TOML text alone, with no environment overrides (tests, the
    /// demo). `client_secret_env` variables are read from the process
    /// environment.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        load_layers(Figment::from(Toml::string(toml)), raw::EnvOverrides::default(), &lookup)
    }

    /// TOML text with the environment given as a list of variables — the
    /// overrides and the `client_secret_env` variables — reading no file and
    /// nothing from the process. For the fuzz targets in `fuzz/`.
    #[doc(hidden)]
    pub fn from_toml_str_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = env.into_iter().collect();
        let lookup = |name: &str| env.get(name).cloned();
        load_layers(
            Figment::from(Toml::string(toml)),
            raw::EnvOverrides::collect(&env),
            &lookup,
        )
    }

    /// The provider app with this slug.
    pub fn provider(&self, slug: &str) -> Option<&ProviderApp> {
        self.providers.iter().find(|p| p.slug == slug)
    }

    /// The admin API key, from the environment variable named by
    /// `security.admin_key_env`; `None` when unset or empty.
    pub fn admin_key(&self) -> Option<SecretString> {
        key::non_empty_secret(std::env::var(&self.security.admin_key_env).ok())
    }
}

/// Merges the overrides over `figment`, extracts the raw shape and validates it.
fn load_layers(
    figment: Figment,
    env: raw::EnvOverrides,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut problems = env.problems().to_vec();
    let raw = match figment.merge(&env).extract::<raw::RawConfig>() {
        Ok(raw) => raw,
        Err(error) => {
            problems.extend(raw::figment_problems(error, &env));
            return Err(ConfigError::Invalid(problems));
        }
    };
    match build::build(raw, lookup) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(ConfigError::Invalid(problems)),
        Err(found) => {
            problems.extend(found.into_iter().map(|p| env.annotate(p)));
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl Default for Config {
    /// The configuration with no file and no environment.
    fn default() -> Self {
        Self {
            server: ServerConfig {
                listen: DEFAULT_LISTEN,
                public_url: build::default_public_url(DEFAULT_LISTEN),
            },
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            database_pool: PoolConfig::default(),
            security: SecurityConfig {
                master_key_file: build::key_file_beside(DEFAULT_DATABASE_URL),
                admin_key_env: DEFAULT_ADMIN_KEY_ENV.to_owned(),
                allow_private_targets: false,
                auth_failures_per_minute: crate::api::auth::DEFAULT_AUTH_FAILURES_PER_MINUTE,
            },
            refresh: RefreshConfig {
                policy: RefreshPolicy::default(),
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                max_concurrency: DEFAULT_MAX_CONCURRENCY,
                failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            },
            providers: Vec::new(),
            pending_discovery: Vec::new(),
            alerts: None,
            outbox: OutboxConfig::default(),
            engine: EngineConfig { enabled: true },
            runs: RunsConfig::default(),
            telemetry: TelemetryConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Config {
    /// The database URL as it may be shown: without its password.
    pub fn database_url_redacted(&self) -> String {
        redact_url(&self.database_url)
    }

    /// Whether the database is PostgreSQL (shared by any number of instances)
    /// rather than a SQLite file (one serving instance).
    pub fn is_postgres(&self) -> bool {
        is_postgres_url(&self.database_url)
    }
}

/// Whether `url` names a PostgreSQL database.
pub(crate) fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_pool", &self.database_pool)
            .field("security", &self.security)
            .field("refresh", &self.refresh)
            .field("providers", &self.providers)
            .field("pending_discovery", &self.pending_discovery)
            .field("alerts", &self.alerts)
            .field("outbox", &self.outbox)
            .field("engine", &self.engine)
            .field("runs", &self.runs)
            .field("telemetry", &self.telemetry)
            .field("limits", &self.limits)
            .finish()
    }
}

impl fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertsConfig")
            .field(
                "webhook_url",
                &format!("{}/[redacted]", self.webhook_url.origin().ascii_serialization()),
            )
            .field("format", &self.format)
            .field("escalate_after", &self.escalate_after)
            .field("on_first_failure", &self.on_first_failure)
            .field("on_recovery", &self.on_recovery)
            .field("window", &self.window)
            .finish()
    }
}

/// A database URL with its password, if any, replaced.
pub(crate) fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            // Setting a password fails only for URLs that cannot have one,
            // and this one has one.
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// The annotated example configuration (`thermos.example.toml`): every key
/// with its default, and a commented example provider.
pub fn example_toml() -> &'static str {
    include_str!("../../../../thermos.example.toml")
}

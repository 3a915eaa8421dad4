//! The rules: raw configuration in, [`Config`] or every problem out.
//!
//! Each check records a [`Problem`] naming its key and carries on with the
//! default, so one pass finds everything. Reads no file; the only
//! environment it sees is the `lookup` for `client_secret_env` variables.
//! The `[[provider]]` rules are in `provider.rs`.

mod provider;
mod telemetry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thermos_core::plan::{
    DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_MARGIN, DEFAULT_MAX_RETRIES, DEFAULT_RECOVERY_INTERVAL,
    RefreshPolicy,
};
use url::Url;

use super::raw::{RawAlerts, RawConfig, RawDatabase, RawLimits, RawOutbox, RawRefresh, RawRuns, Scalar};
use super::{
    AlertFormat, AlertsConfig, Config, DEFAULT_ADMIN_KEY_ENV, DEFAULT_ALERT_WINDOW, DEFAULT_DATABASE_URL,
    DEFAULT_ESCALATE_AFTER, DEFAULT_FAILURE_THRESHOLD, DEFAULT_LISTEN, DEFAULT_MASTER_KEY_FILE_NAME,
    DEFAULT_MAX_CONCURRENCY, DEFAULT_OUTBOX_RETENTION, DEFAULT_POOL_ACQUIRE_TIMEOUT, DEFAULT_POOL_MAX_CONNECTIONS,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_RUN_STALE_AFTER, DEFAULT_SWEEP_OVERDUE_BY, EngineConfig, LimitsConfig,
    OutboxConfig, PoolConfig, Problem, RefreshConfig, RunsConfig, SecurityConfig, ServerConfig,
};

/// The smallest `limits.max_body_bytes`: a connection import with long tokens fits.
const MIN_BODY_BYTES: u32 = 16 * 1024;
/// The smallest `limits.max_header_bytes`: an API key and ordinary headers fit.
const MIN_HEADER_BYTES: u32 = 4 * 1024;

/// The shortest `alerts.window`.
const MIN_ALERT_WINDOW: Duration = Duration::from_secs(1);
/// The shortest `outbox.retention`.
const MIN_OUTBOX_RETENTION: Duration = Duration::from_secs(3600);

/// The smallest `database.max_connections`: a claim and a commit at once.
const MIN_POOL_CONNECTIONS: u32 = 2;
/// The shortest `runs.sweep_every`.
const MIN_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The shortest `runs.stale_after`: four heartbeats must fit in it.
const MIN_RUN_STALE_AFTER: Duration = Duration::from_secs(1);

/// Validates the raw configuration.
pub(super) fn build(raw: RawConfig, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();

    let listen = match raw.server.listen.as_deref() {
        None => DEFAULT_LISTEN,
        Some(text) => text.trim().parse::<SocketAddr>().unwrap_or_else(|_| {
            c.problem(
                "server.listen",
                format!("expected an IP address and port, like 127.0.0.1:8080 (got {text:?})"),
            );
            DEFAULT_LISTEN
        }),
    };
    let public_url = match raw.server.public_url.as_deref() {
        None => default_public_url(listen),
        Some(text) => c.public_url(text).unwrap_or_else(|| default_public_url(listen)),
    };

    let database_pool = c.pool(&raw.database);
    let database_url = match raw.database.url {
        None => DEFAULT_DATABASE_URL.to_owned(),
        Some(url) => {
            c.database_url(&url);
            url
        }
    };

    let security = SecurityConfig {
        master_key_file: match raw.security.master_key_file {
            Some(path) if path.trim().is_empty() => {
                c.problem("security.master_key_file", "is empty");
                PathBuf::new()
            }
            Some(path) => PathBuf::from(path),
            None => key_file_beside(&database_url),
        },
        admin_key_env: match raw.security.admin_key_env {
            None => DEFAULT_ADMIN_KEY_ENV.to_owned(),
            Some(name) => {
                if !is_env_name(&name) {
                    c.problem(
                        "security.admin_key_env",
                        format!("not an environment variable name (got {name:?})"),
                    );
                }
                name
            }
        },
        allow_private_targets: c.boolean(
            "security.allow_private_targets",
            raw.security.allow_private_targets.as_ref(),
            false,
        ),
        auth_failures_per_minute: c
            .whole(
                "security.auth_failures_per_minute",
                raw.security.auth_failures_per_minute.as_ref(),
                crate::api::auth::DEFAULT_AUTH_FAILURES_PER_MINUTE,
                0,
            )
            .unwrap_or(crate::api::auth::DEFAULT_AUTH_FAILURES_PER_MINUTE),
    };

    let refresh = c.refresh(&raw.refresh);
    let (providers, pending_discovery) = c.providers(raw.provider, lookup);
    let alerts = raw.alerts.and_then(|a| c.alerts(a));
    let outbox = c.outbox(&raw.outbox);
    let engine = EngineConfig {
        enabled: c.boolean("engine.enabled", raw.engine.enabled.as_ref(), true),
    };
    let runs = c.runs(&raw.runs);
    let telemetry = c.telemetry(&raw.telemetry);
    let limits = c.limits(&raw.limits);

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Config {
        server: ServerConfig { listen, public_url },
        database_url,
        database_pool,
        security,
        refresh,
        providers,
        pending_discovery,
        alerts,
        outbox,
        engine,
        runs,
        telemetry,
        limits,
    })
}

/// `http://{listen}/`.
pub(super) fn default_public_url(listen: SocketAddr) -> Url {
    // A socket address always forms a valid host and port, so this parses.
    Url::parse(&format!("http://{listen}/")).expect("a socket address is a valid URL authority")
}

/// `thermos.key` in the directory of the SQLite database file (the working
/// directory for an in-memory or unrecognised database).
pub(super) fn key_file_beside(database_url: &str) -> PathBuf {
    let db_path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default())
        .filter(|path| !path.is_empty() && *path != ":memory:");
    match db_path.and_then(|path| Path::new(path).parent()) {
        Some(dir) => dir.join(DEFAULT_MASTER_KEY_FILE_NAME),
        None => PathBuf::from(DEFAULT_MASTER_KEY_FILE_NAME),
    }
}

/// A URL as a config problem may show it: any password replaced (and a
/// URL without a host, such as `user:secret@…` read as scheme `user`, shown
/// only if it has no `@`).
fn shown_url(url: &Url) -> String {
    if url.host().is_none() {
        return shown_text(url.as_str());
    }
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot have credentials, which have none.
        let _ = shown.set_password(Some("redacted"));
    }
    shown.to_string()
}

/// Text that did not parse as a URL, as a config problem may show it:
/// nothing of it when it may hold credentials (`user:password@`).
fn shown_text(text: &str) -> String {
    if text.contains('@') {
        "a value not shown: it may hold credentials".to_owned()
    } else {
        format!("{text:?}")
    }
}

fn is_env_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    fn public_url(&mut self, text: &str) -> Option<Url> {
        let key = "server.public_url";
        let Ok(mut url) = Url::parse(text.trim()) else {
            self.problem(key, format!("not a URL (got {})", shown_text(text)));
            return None;
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            self.problem(
                key,
                format!("expected an http:// or https:// URL (got {})", shown_url(&url)),
            );
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            self.problem(
                key,
                format!("must not have a query or fragment (got {})", shown_url(&url)),
            );
            return None;
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Some(url)
    }

    fn database_url(&mut self, url: &str) {
        let key = "database.url";
        if url.starts_with("sqlite:") || super::is_postgres_url(url) {
            return;
        }
        const EXPECTED: &str =
            "expected a sqlite: or postgres: URL such as sqlite://thermos.db or postgres://user@host/db";
        match url.split_once(':').map(|(scheme, _)| scheme) {
            // Only the scheme is echoed: the rest may hold a password.
            Some(scheme) => self.problem(key, format!("{EXPECTED} (got scheme {scheme:?})")),
            None => self.problem(key, format!("{EXPECTED} (got {url:?})")),
        }
    }

    fn pool(&mut self, raw: &RawDatabase) -> PoolConfig {
        let max_connections = self.whole(
            "database.max_connections",
            raw.max_connections.as_ref(),
            DEFAULT_POOL_MAX_CONNECTIONS,
            MIN_POOL_CONNECTIONS,
        );
        let acquire_timeout = self.duration(
            "database.acquire_timeout",
            raw.acquire_timeout.as_ref(),
            DEFAULT_POOL_ACQUIRE_TIMEOUT,
        );
        let schema = raw.schema.as_ref().and_then(|schema| {
            let valid = !schema.is_empty()
                && schema.len() <= 63
                && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && schema
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                self.problem(
                    "database.schema",
                    format!("expected a lowercase SQL name of letters, digits and _ (got {schema:?})"),
                );
            }
            valid.then(|| schema.clone())
        });
        PoolConfig {
            max_connections: max_connections.unwrap_or(DEFAULT_POOL_MAX_CONNECTIONS),
            acquire_timeout: acquire_timeout.unwrap_or(DEFAULT_POOL_ACQUIRE_TIMEOUT),
            schema,
        }
    }

    /// A duration such as `"5m"` or `"1h 30m"`; `None` if invalid. Zero is refused.
    fn duration(&mut self, key: &str, raw: Option<&Scalar>, default: Duration) -> Option<Duration> {
        let parsed = match raw {
            None => return Some(default),
            Some(Scalar::Str(text)) => {
                humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?} ({e})"))
            }
            Some(other) => Err(format!(
                "expected a duration with a unit, like \"30s\" or \"5m\" (got {other})"
            )),
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    /// A duration of at least `min`; `None` if invalid.
    fn duration_at_least(
        &mut self,
        key: &str,
        raw: Option<&Scalar>,
        default: Duration,
        min: Duration,
    ) -> Option<Duration> {
        let value = self.duration(key, raw, default)?;
        if value < min {
            self.problem(
                key,
                format!(
                    "must be at least {} (got {})",
                    humantime::format_duration(min),
                    humantime::format_duration(value)
                ),
            );
            return None;
        }
        Some(value)
    }

    /// A whole number of at least `min`; `None` if invalid.
    fn whole(&mut self, key: &str, raw: Option<&Scalar>, default: u32, min: u32) -> Option<u32> {
        let value = match raw {
            None => return Some(default),
            Some(Scalar::Int(i)) => Some(*i),
            Some(Scalar::Str(text)) => text.trim().parse::<i64>().ok(),
            Some(Scalar::Float(_) | Scalar::Bool(_)) => None,
        };
        let Some(value) = value else {
            let got = raw.map(ToString::to_string).unwrap_or_default();
            self.problem(key, format!("expected a whole number (got {got})"));
            return None;
        };
        match u32::try_from(value) {
            Ok(v) if v >= min => Some(v),
            _ if value < i64::from(min) => {
                self.problem(key, format!("must be at least {min} (got {value})"));
                None
            }
            _ => {
                self.problem(key, format!("is too large (got {value})"));
                None
            }
        }
    }

    /// An optional whole number: `Some(None)` when absent, `None` if invalid.
    fn optional_whole(&mut self, key: &str, raw: Option<&Scalar>, min: u32) -> Option<Option<u32>> {
        match raw {
            None => Some(None),
            Some(raw) => self.whole(key, Some(raw), min, min).map(Some),
        }
    }

    fn limits(&mut self, raw: &RawLimits) -> LimitsConfig {
        let defaults = LimitsConfig::default();
        let max_body_bytes = self.whole(
            "limits.max_body_bytes",
            raw.max_body_bytes.as_ref(),
            defaults.max_body_bytes,
            MIN_BODY_BYTES,
        );
        let max_header_bytes = self.whole(
            "limits.max_header_bytes",
            raw.max_header_bytes.as_ref(),
            defaults.max_header_bytes,
            MIN_HEADER_BYTES,
        );
        let request_timeout = self.duration(
            "limits.request_timeout",
            raw.request_timeout.as_ref(),
            defaults.request_timeout,
        );
        let max_connections_per_project = self.optional_whole(
            "limits.max_connections_per_project",
            raw.max_connections_per_project.as_ref(),
            1,
        );
        LimitsConfig {
            max_body_bytes: max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_header_bytes: max_header_bytes.unwrap_or(defaults.max_header_bytes),
            request_timeout: request_timeout.unwrap_or(defaults.request_timeout),
            max_connections_per_project: max_connections_per_project.flatten(),
        }
    }

    fn boolean(&mut self, key: &str, raw: Option<&Scalar>, default: bool) -> bool {
        match raw {
            None => default,
            Some(Scalar::Bool(b)) => *b,
            Some(Scalar::Str(text)) if text.trim().eq_ignore_ascii_case("true") => true,
            Some(Scalar::Str(text)) if text.trim().eq_ignore_ascii_case("false") => false,
            Some(other) => {
                self.problem(key, format!("expected true or false (got {other})"));
                default
            }
        }
    }

    fn refresh(&mut self, raw: &RawRefresh) -> RefreshConfig {
        let margin = self.duration("refresh.margin", raw.margin.as_ref(), DEFAULT_MARGIN);
        let max_retries = self.whole("refresh.max_retries", raw.max_retries.as_ref(), DEFAULT_MAX_RETRIES, 0);
        let backoff_initial = self.duration(
            "refresh.backoff_initial",
            raw.backoff_initial.as_ref(),
            DEFAULT_BACKOFF_INITIAL,
        );
        let backoff_max = self.duration("refresh.backoff_max", raw.backoff_max.as_ref(), DEFAULT_BACKOFF_MAX);
        if let (Some(initial), Some(max)) = (backoff_initial, backoff_max)
            && initial > max
        {
            self.problem(
                "refresh.backoff_initial",
                format!(
                    "must not exceed refresh.backoff_max ({} > {})",
                    humantime::format_duration(initial),
                    humantime::format_duration(max)
                ),
            );
        }
        let recovery_interval = self.duration(
            "refresh.recovery_interval",
            raw.recovery_interval.as_ref(),
            DEFAULT_RECOVERY_INTERVAL,
        );
        let request_timeout = self.duration(
            "refresh.request_timeout",
            raw.request_timeout.as_ref(),
            DEFAULT_REQUEST_TIMEOUT,
        );
        let max_concurrency = self.whole(
            "refresh.max_concurrency",
            raw.max_concurrency.as_ref(),
            DEFAULT_MAX_CONCURRENCY,
            1,
        );
        let failure_threshold = self.fraction("refresh.failure_threshold", raw.failure_threshold.as_ref());
        RefreshConfig {
            policy: RefreshPolicy {
                margin: margin.unwrap_or(DEFAULT_MARGIN),
                max_retries: max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
                backoff_initial: backoff_initial.unwrap_or(DEFAULT_BACKOFF_INITIAL),
                backoff_max: backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
                recovery_interval: recovery_interval.unwrap_or(DEFAULT_RECOVERY_INTERVAL),
            },
            request_timeout: request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            max_concurrency: max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
            failure_threshold,
        }
    }

    /// A share in (0, 1].
    fn fraction(&mut self, key: &str, raw: Option<&Scalar>) -> f64 {
        let value = match raw {
            None => return DEFAULT_FAILURE_THRESHOLD,
            Some(Scalar::Int(i)) => Some(*i as f64),
            Some(Scalar::Float(x)) => Some(*x),
            Some(Scalar::Str(text)) => text.trim().parse::<f64>().ok(),
            Some(Scalar::Bool(_)) => None,
        };
        match value {
            Some(x) if x > 0.0 && x <= 1.0 => x,
            _ => {
                let got = raw.map(ToString::to_string).unwrap_or_default();
                self.problem(
                    key,
                    format!("expected a share in (0, 1], e.g. 0.10 for 10 % (got {got})"),
                );
                DEFAULT_FAILURE_THRESHOLD
            }
        }
    }

    fn alerts(&mut self, raw: RawAlerts) -> Option<AlertsConfig> {
        let webhook_url = match raw.webhook_url.as_deref().map(str::trim) {
            None => {
                self.problem("alerts.webhook_url", "required when [alerts] is present");
                None
            }
            Some(text) => match Url::parse(text) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
                // The URL is not echoed: a webhook URL usually holds a secret.
                _ => {
                    self.problem("alerts.webhook_url", "expected an http:// or https:// URL");
                    None
                }
            },
        };
        let format = match raw.format.as_deref() {
            None => AlertFormat::default(),
            Some(name) => AlertFormat::parse(name).unwrap_or_else(|| {
                self.problem(
                    "alerts.format",
                    format!("expected \"slack\" or \"json\" (got {name:?})"),
                );
                AlertFormat::default()
            }),
        };
        let escalate_after = self.whole(
            "alerts.escalate_after",
            raw.escalate_after.as_ref(),
            DEFAULT_ESCALATE_AFTER,
            1,
        );
        let on_first_failure = self.boolean("alerts.on_first_failure", raw.on_first_failure.as_ref(), true);
        let on_recovery = self.boolean("alerts.on_recovery", raw.on_recovery.as_ref(), true);
        let window = self.duration_at_least(
            "alerts.window",
            raw.window.as_ref(),
            DEFAULT_ALERT_WINDOW,
            MIN_ALERT_WINDOW,
        );
        Some(AlertsConfig {
            webhook_url: webhook_url?,
            format,
            escalate_after: escalate_after?,
            on_first_failure,
            on_recovery,
            window: window?,
        })
    }

    fn outbox(&mut self, raw: &RawOutbox) -> OutboxConfig {
        let retention = self.duration_at_least(
            "outbox.retention",
            raw.retention.as_ref(),
            DEFAULT_OUTBOX_RETENTION,
            MIN_OUTBOX_RETENTION,
        );
        OutboxConfig {
            retention: retention.unwrap_or(DEFAULT_OUTBOX_RETENTION),
        }
    }

    fn runs(&mut self, raw: &RawRuns) -> RunsConfig {
        let sweep_every = raw.sweep_every.as_ref().and_then(|every| {
            self.duration_at_least("runs.sweep_every", Some(every), MIN_SWEEP_EVERY, MIN_SWEEP_EVERY)
        });
        let sweep_overdue_by = self.duration(
            "runs.sweep_overdue_by",
            raw.sweep_overdue_by.as_ref(),
            DEFAULT_SWEEP_OVERDUE_BY,
        );
        let stale_after = self.duration_at_least(
            "runs.stale_after",
            raw.stale_after.as_ref(),
            DEFAULT_RUN_STALE_AFTER,
            MIN_RUN_STALE_AFTER,
        );
        RunsConfig {
            sweep_every,
            sweep_overdue_by: sweep_overdue_by.unwrap_or(DEFAULT_SWEEP_OVERDUE_BY),
            stale_after: stale_after.unwrap_or(DEFAULT_RUN_STALE_AFTER),
        }
    }
}

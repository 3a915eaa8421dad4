//! The configuration as written: serde structs mirroring the TOML file key
//! for key, and the `THERMOS_SECTION__KEY` environment layer.
//!
//! Nothing here is validated beyond its shape: every field is optional and
//! numbers, booleans and durations are kept as [`Scalar`]s, so that `build.rs`
//! can report every problem at once with its key. Unknown keys are refused
//! here (`deny_unknown_fields`). These types never leave the module and have
//! no Debug (a raw client secret is a plain `String`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{ENV_PREFIX, Problem};

/// The whole file.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub refresh: RawRefresh,
    #[serde(default)]
    pub provider: Vec<RawProvider>,
    pub alerts: Option<RawAlerts>,
    #[serde(default)]
    pub outbox: RawOutbox,
    #[serde(default)]
    pub engine: RawEngine,
    #[serde(default)]
    pub runs: RawRuns,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub limits: RawLimits,
}

/// The sections an environment override may name (`[[provider]]` is a list
/// and is configured in the file only).
pub(super) const ENV_SECTIONS: &[&str] = &[
    "server",
    "database",
    "security",
    "refresh",
    "alerts",
    "outbox",
    "engine",
    "runs",
    "telemetry",
    "limits",
];

/// `[server]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub public_url: Option<String>,
}

/// `[database]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub url: Option<String>,
    pub max_connections: Option<Scalar>,
    pub acquire_timeout: Option<Scalar>,
    pub schema: Option<String>,
}

/// `[limits]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_body_bytes: Option<Scalar>,
    pub max_header_bytes: Option<Scalar>,
    pub request_timeout: Option<Scalar>,
    pub max_connections_per_project: Option<Scalar>,
}

/// `[security]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub master_key_file: Option<String>,
    pub admin_key_env: Option<String>,
    pub allow_private_targets: Option<Scalar>,
    pub auth_failures_per_minute: Option<Scalar>,
}

/// `[refresh]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRefresh {
    pub margin: Option<Scalar>,
    pub max_retries: Option<Scalar>,
    pub backoff_initial: Option<Scalar>,
    pub backoff_max: Option<Scalar>,
    pub recovery_interval: Option<Scalar>,
    pub request_timeout: Option<Scalar>,
    pub max_concurrency: Option<Scalar>,
    pub failure_threshold: Option<Scalar>,
}

/// One `[[provider]]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub slug: Option<String>,
    pub catalogue: Option<String>,
    pub catalogue_params: Option<BTreeMap<String, Scalar>>,
    pub issuer: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<Scalar>,
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub auth_method: Option<String>,
    pub authorization_url: Option<String>,
    pub revocation_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub extra_params: Option<BTreeMap<String, Scalar>>,
    pub default_ttl: Option<Scalar>,
    pub max_concurrency: Option<Scalar>,
    pub rate_limit_per_second: Option<Scalar>,
    pub keep_alive: Option<Scalar>,
    pub refresh_token_warn_before: Option<Scalar>,
}

/// `[alerts]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    pub webhook_url: Option<String>,
    pub format: Option<String>,
    pub escalate_after: Option<Scalar>,
    pub on_first_failure: Option<Scalar>,
    pub on_recovery: Option<Scalar>,
    pub window: Option<Scalar>,
}

/// `[outbox]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub retention: Option<Scalar>,
}

/// `[engine]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEngine {
    pub enabled: Option<Scalar>,
}

/// `[runs]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuns {
    pub sweep_every: Option<Scalar>,
    pub sweep_overdue_by: Option<Scalar>,
    pub stale_after: Option<Scalar>,
}

/// `[telemetry]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<Scalar>,
}

/// A number, boolean, duration or name as written: in the file it has a TOML
/// type, from the environment it is text. `build.rs` decides what it means.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    /// The value as text (a number or boolean in its usual form).
    pub fn to_text(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Scalar {
    /// As written in TOML: strings quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or_else(|_| Scalar::Str(v.to_string()), Scalar::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One `THERMOS_SECTION__KEY` override.
struct EnvOverride {
    var: String,
    section: String,
    key: String,
    value: String,
}

/// The environment layer: `THERMOS_<SECTION>__<KEY>` variables, values as
/// text. Other variables (`THERMOS_CONFIG`, `THERMOS_MASTER_KEY`,
/// `THERMOS_ADMIN_KEY`, anything without `__`) are not configuration keys.
#[derive(Default)]
pub(super) struct EnvOverrides {
    overrides: Vec<EnvOverride>,
    problems: Vec<Problem>,
}

impl EnvOverrides {
    /// Picks the override variables out of the environment.
    pub fn collect(env: &HashMap<String, String>) -> Self {
        let mut layer = Self::default();
        let mut names: Vec<&String> = env.keys().collect();
        names.sort();
        for var in names {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") || env[var].is_empty() {
                continue;
            }
            let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let [section, key] = parts.as_slice() else {
                layer.problems.push(Problem::new(
                    var.as_str(),
                    "expected THERMOS_<SECTION>__<KEY> (one double underscore)",
                ));
                continue;
            };
            if section == "provider" {
                layer.problems.push(Problem::new(
                    var.as_str(),
                    "providers are configured in the file ([[provider]]); \
                     use client_secret_env for their secrets",
                ));
            } else if !ENV_SECTIONS.contains(&section.as_str()) {
                layer.problems.push(Problem::new(
                    var.as_str(),
                    format!(
                        "unknown section {section:?} (expected one of: {})",
                        ENV_SECTIONS.join(", ")
                    ),
                ));
            } else if key.is_empty() {
                layer.problems.push(Problem::new(var.as_str(), "the key is empty"));
            } else {
                layer.overrides.push(EnvOverride {
                    var: var.clone(),
                    section: section.clone(),
                    key: key.clone(),
                    value: env[var].clone(),
                });
            }
        }
        layer
    }

    /// Problems with the variables' names.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Adds "(from THERMOS_…)" to a problem whose key was set by a variable.
    pub fn annotate(&self, mut problem: Problem) -> Problem {
        let found = self
            .overrides
            .iter()
            .find(|o| problem.key == format!("{}.{}", o.section, o.key));
        if let Some(o) = found {
            problem.message = format!("{} (from {})", problem.message, o.var);
        }
        problem
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("THERMOS_SECTION__KEY environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for o in &self.overrides {
            let section = root
                .entry(o.section.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, table) = section {
                table.insert(o.key.clone(), Value::from(o.value.clone()));
            }
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Turns a figment error (bad TOML, unknown key, wrong type) into problems
/// named by key (`provider[0].slug`).
pub(super) fn figment_problems(error: figment::Error, env: &EnvOverrides) -> Vec<Problem> {
    error
        .into_iter()
        .map(|e| {
            let mut key = key_of(&e.path);
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if e.path.last() != Some(field) {
                        key = if key.is_empty() {
                            field.clone()
                        } else {
                            format!("{key}.{field}")
                        };
                    }
                    format!("unknown key (expected one of: {})", expected.join(", "))
                }
                other => other.to_string(),
            };
            if key.is_empty() {
                key = e
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref())
                    .map_or_else(|| "config".to_owned(), ToString::to_string);
            }
            env.annotate(Problem::new(key, message))
        })
        .collect()
}

/// `["provider", "0", "slug"]` → `provider[0].slug`.
fn key_of(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.bytes().all(|b| b.is_ascii_digit()) && !part.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

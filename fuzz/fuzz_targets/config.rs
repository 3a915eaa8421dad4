//! The configuration loader: `thermos::config::Config::from_toml_str_with_env`
//! (TOML text, then `THERMOS_SECTION__KEY` overrides, then validation into
//! runtime types or every problem with its key).
//!
//! Input layout: the bytes as (lossy) UTF-8, split at NUL characters; the
//! first part is the TOML file, each further part one environment variable
//! `NAME=VALUE` (overrides, and `client_secret_env` variables).
//!
//! Properties checked besides "never panics":
//! - a refused configuration names at least one problem, each with a key;
//! - a client secret never shows in the Debug output of a loaded config;
//! - a loaded configuration re-validates: its values, written back as the
//!   environment overrides an operator would write (durations in
//!   humantime's form), load again to the same values.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;
use thermos::config::{Config, ConfigError};

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The validated values as `THERMOS_SECTION__KEY` overrides.
fn as_overrides(c: &Config) -> Vec<(String, String)> {
    let p = &c.refresh.policy;
    let mut vars = vec![
        ("THERMOS_SERVER__LISTEN", c.server.listen.to_string()),
        ("THERMOS_SERVER__PUBLIC_URL", c.server.public_url.to_string()),
        (
            "THERMOS_DATABASE__MAX_CONNECTIONS",
            c.database_pool.max_connections.to_string(),
        ),
        (
            "THERMOS_DATABASE__ACQUIRE_TIMEOUT",
            duration(c.database_pool.acquire_timeout),
        ),
        (
            "THERMOS_SECURITY__ALLOW_PRIVATE_TARGETS",
            c.security.allow_private_targets.to_string(),
        ),
        ("THERMOS_REFRESH__MARGIN", duration(p.margin)),
        ("THERMOS_REFRESH__MAX_RETRIES", p.max_retries.to_string()),
        ("THERMOS_REFRESH__BACKOFF_INITIAL", duration(p.backoff_initial)),
        ("THERMOS_REFRESH__BACKOFF_MAX", duration(p.backoff_max)),
        ("THERMOS_REFRESH__RECOVERY_INTERVAL", duration(p.recovery_interval)),
        ("THERMOS_REFRESH__REQUEST_TIMEOUT", duration(c.refresh.request_timeout)),
        (
            "THERMOS_REFRESH__MAX_CONCURRENCY",
            c.refresh.max_concurrency.to_string(),
        ),
        (
            "THERMOS_REFRESH__FAILURE_THRESHOLD",
            c.refresh.failure_threshold.to_string(),
        ),
        ("THERMOS_OUTBOX__RETENTION", duration(c.outbox.retention)),
        ("THERMOS_ENGINE__ENABLED", c.engine.enabled.to_string()),
        ("THERMOS_RUNS__SWEEP_OVERDUE_BY", duration(c.runs.sweep_overdue_by)),
        ("THERMOS_RUNS__STALE_AFTER", duration(c.runs.stale_after)),
        ("THERMOS_LIMITS__MAX_BODY_BYTES", c.limits.max_body_bytes.to_string()),
        (
            "THERMOS_LIMITS__MAX_HEADER_BYTES",
            c.limits.max_header_bytes.to_string(),
        ),
        ("THERMOS_LIMITS__REQUEST_TIMEOUT", duration(c.limits.request_timeout)),
    ];
    if let Some(every) = c.runs.sweep_every {
        vars.push(("THERMOS_RUNS__SWEEP_EVERY", duration(every)));
    }
    if let Some(max) = c.limits.max_connections_per_project {
        vars.push(("THERMOS_LIMITS__MAX_CONNECTIONS_PER_PROJECT", max.to_string()));
    }
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn check_refused(error: &ConfigError) {
    let problems = error.problems();
    assert!(!problems.is_empty(), "refused without a problem: {error}");
    for problem in problems {
        assert!(!problem.key.is_empty(), "a problem without a key: {problem}");
        assert!(!problem.message.is_empty(), "a problem without a message: {problem}");
    }
    let _ = error.to_string();
}

fn check_no_secret_in_debug(config: &Config, input: &str) {
    let debug = format!("{config:?}");
    for app in &config.providers {
        let Some(secret) = &app.client_secret else {
            continue;
        };
        let secret = secret.expose_secret();
        // Only a secret written once, that nothing else can echo by accident.
        let plain = secret.len() >= 8 && secret.bytes().all(|b| b.is_ascii_alphanumeric());
        if plain && input.matches(secret).count() == 1 {
            assert!(!debug.contains(secret), "client secret of {} in Debug", app.slug);
        }
    }
}

fn check_revalidates(config: &Config, toml: &str, env: &HashMap<String, String>) {
    let mut again = env.clone();
    again.extend(as_overrides(config));
    let reloaded = match Config::from_toml_str_with_env(toml, again) {
        Ok(c) => c,
        Err(e) => panic!("a loaded config does not load again with its own values: {e}"),
    };
    assert_eq!(reloaded.server, config.server);
    assert_eq!(reloaded.database_pool, config.database_pool);
    assert_eq!(reloaded.security, config.security);
    assert_eq!(reloaded.refresh, config.refresh);
    assert_eq!(reloaded.outbox, config.outbox);
    assert_eq!(reloaded.engine, config.engine);
    assert_eq!(reloaded.runs, config.runs);
    assert_eq!(reloaded.limits, config.limits);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let toml = parts.next().unwrap_or_default();
    let env: HashMap<String, String> = parts
        .filter_map(|var| var.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match Config::from_toml_str_with_env(toml, env.clone()) {
        Err(error) => check_refused(&error),
        Ok(config) => {
            check_no_secret_in_debug(&config, &text);
            check_revalidates(&config, toml, &env);
        }
    }
});

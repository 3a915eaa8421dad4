//! Tests of loading, overriding and validating the configuration. The
//! environment is always injected, never the process's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use thermos_core::oauth::AuthMethod;

use super::*;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn write_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("thermos.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn problems<T: std::fmt::Debug>(result: Result<T, ConfigError>) -> Vec<String> {
    match result {
        Ok(value) => panic!("expected problems, got {value:?}"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn has(problems: &[String], text: &str) -> bool {
    problems.iter().any(|p| p.contains(text))
}

const PROVIDER: &str = r#"
[[provider]]
slug = "acme"
token_url = "https://auth.acme.test/token"
client_id = "id"
client_secret = "shh"
"#;

#[test]
fn with_no_file_every_default_applies() {
    let config = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.server.public_url.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(config.database_url, "sqlite://thermos.db");
    assert_eq!(config.security.master_key_file, PathBuf::from("thermos.key"));
    assert_eq!(config.security.admin_key_env, "THERMOS_ADMIN_KEY");
    assert!(!config.security.allow_private_targets);
    let policy = &config.refresh.policy;
    assert_eq!(policy.margin, Duration::from_secs(300));
    assert_eq!(policy.max_retries, 5);
    assert_eq!(policy.backoff_initial, Duration::from_secs(5));
    assert_eq!(policy.backoff_max, Duration::from_secs(300));
    assert_eq!(policy.recovery_interval, Duration::from_secs(1800));
    assert_eq!(config.refresh.request_timeout, Duration::from_secs(60));
    assert_eq!(config.refresh.max_concurrency, 256);
    assert!((config.refresh.failure_threshold - 0.10).abs() < f64::EPSILON);
    assert!(config.providers.is_empty());
    assert!(config.alerts.is_none());
    assert_eq!(config.outbox.retention, Duration::from_secs(7 * 24 * 3600));
    assert!(config.engine.enabled);
    assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
}

#[test]
fn a_full_file_is_read_into_runtime_types() {
    let toml = r#"
        [server]
        listen = "0.0.0.0:9000"
        public_url = "https://thermos.example.com/base"
        [database]
        url = "sqlite://data/x.db?mode=rwc"
        [security]
        admin_key_env = "MY_ADMIN_KEY"
        allow_private_targets = true
        [refresh]
        margin = "10m"
        max_retries = 0
        backoff_initial = "1s"
        backoff_max = "1h 30m"
        recovery_interval = "15m"
        request_timeout = "20s"
        max_concurrency = 8
        failure_threshold = 0.5
        [[provider]]
        slug = "google"
        token_url = "https://oauth2.googleapis.com/token"
        client_id = "g-id"
        client_secret_env = "GOOGLE_SECRET"
        auth_method = "client_secret_post"
        authorization_url = "https://accounts.google.com/o/oauth2/v2/auth"
        scopes = ["openid", "email"]
        extra_params = { access_type = "offline" }
        default_ttl = "30m"
        max_concurrency = 4
        rate_limit_per_second = 10
        [[provider]]
        slug = "local"
        token_url = "http://127.0.0.1:9999/token"
        client_id = 12345
        auth_method = "none"
        [alerts]
        webhook_url = "https://hooks.example.com/T0/B0/secret-path"
        format = "json"
        escalate_after = 5
        on_first_failure = false
        on_recovery = false
        window = "2m"
        [outbox]
        retention = "3d"
        [engine]
        enabled = false
    "#;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), toml);
    let config = Config::load_from(Some(&path), env(&[("GOOGLE_SECRET", "g-secret")])).unwrap();

    assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(config.server.public_url.as_str(), "https://thermos.example.com/base/");
    assert_eq!(config.database_url, "sqlite://data/x.db?mode=rwc");
    assert_eq!(config.security.master_key_file, Path::new("data").join("thermos.key"));
    assert_eq!(config.security.admin_key_env, "MY_ADMIN_KEY");
    assert!(config.security.allow_private_targets);
    assert_eq!(config.refresh.policy.margin, Duration::from_secs(600));
    assert_eq!(config.refresh.policy.max_retries, 0);
    assert_eq!(config.refresh.policy.backoff_max, Duration::from_secs(5400));
    assert_eq!(config.refresh.policy.recovery_interval, Duration::from_secs(900));
    assert_eq!(config.refresh.request_timeout, Duration::from_secs(20));
    assert_eq!(config.refresh.max_concurrency, 8);
    assert!((config.refresh.failure_threshold - 0.5).abs() < f64::EPSILON);

    let google = config.provider("google").unwrap();
    assert_eq!(google.client_secret.as_ref().unwrap().expose_secret(), "g-secret");
    assert_eq!(google.auth_method, AuthMethod::ClientSecretPost);
    assert_eq!(google.scopes, ["openid", "email"]);
    assert_eq!(google.extra_params["access_type"], "offline");
    assert_eq!(google.default_ttl, Duration::from_secs(1800));
    assert_eq!(google.max_concurrency, Some(4));
    assert_eq!(google.rate_limit_per_second, Some(10));
    assert!(google.authorization_url.is_some());

    let local = config.provider("local").unwrap();
    assert_eq!(local.client_id, "12345");
    assert_eq!(local.auth_method, AuthMethod::None);
    assert!(local.client_secret.is_none());
    assert_eq!(local.default_ttl, crate::provider::DEFAULT_TTL);
    assert_eq!(local.max_concurrency, None);
    assert!(config.provider("missing").is_none());

    let alerts = config.alerts.as_ref().unwrap();
    assert_eq!(alerts.format, AlertFormat::Json);
    assert_eq!(alerts.escalate_after, 5);
    assert!(!alerts.on_first_failure && !alerts.on_recovery);
    assert_eq!(alerts.window, Duration::from_secs(120));
    assert_eq!(config.outbox.retention, Duration::from_secs(3 * 24 * 3600));
    assert!(!config.engine.enabled);
}

#[test]
fn an_alerts_section_without_a_window_aggregates_over_a_minute() {
    let config = Config::from_toml_str("[alerts]\nwebhook_url = \"https://hooks.example.com/x\"\n").unwrap();
    assert_eq!(config.alerts.unwrap().window, Duration::from_secs(60));
}

#[test]
fn the_alert_window_and_the_outbox_retention_can_be_overridden_by_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "[alerts]\nwebhook_url = \"https://hooks.example.com/x\"\nwindow = \"5m\"\n[outbox]\nretention = \"1d\"\n",
    );
    let vars = env(&[("THERMOS_ALERTS__WINDOW", "30s"), ("THERMOS_OUTBOX__RETENTION", "2d")]);
    let config = Config::load_from(Some(&path), vars).unwrap();
    assert_eq!(config.alerts.unwrap().window, Duration::from_secs(30));
    assert_eq!(config.outbox.retention, Duration::from_secs(2 * 24 * 3600));
}

#[test]
fn a_too_short_or_invalid_window_or_retention_is_reported_with_its_key() {
    let toml = r#"
        [alerts]
        webhook_url = "https://hooks.example.com/x"
        window = "500ms"
        [outbox]
        retention = "30m"
    "#;
    let found = problems(Config::from_toml_str(toml));
    assert_eq!(
        found,
        [
            "alerts.window: must be at least 1s (got 500ms)",
            "outbox.retention: must be at least 1h (got 30m)",
        ]
    );
    let found = problems(Config::load_from(
        None,
        env(&[("THERMOS_OUTBOX__RETENTION", "forever"), ("THERMOS_OUTBOX__KEEP", "1d")]),
    ));
    assert!(has(&found, "outbox.keep: unknown key"), "{found:?}");
    let found = problems(Config::load_from(
        None,
        env(&[("THERMOS_OUTBOX__RETENTION", "forever")]),
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("outbox.retention: invalid duration \"forever\""),
        "{found:?}"
    );
    assert!(found[0].ends_with("(from THERMOS_OUTBOX__RETENTION)"), "{found:?}");
    let window = |value: &str| {
        Config::from_toml_str(&format!(
            "[alerts]\nwebhook_url = \"https://hooks.example.com/x\"\nwindow = {value}\n"
        ))
    };
    assert!(has(
        &problems(window("60")),
        "alerts.window: expected a duration with a unit"
    ));
    assert!(has(
        &problems(window("\"0s\"")),
        "alerts.window: must be greater than zero"
    ));
}

#[test]
fn the_file_can_be_named_by_thermos_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "[refresh]\nmargin = \"7m\"\n");
    let config = Config::load_from(None, env(&[("THERMOS_CONFIG", path.to_str().unwrap())])).unwrap();
    assert_eq!(config.refresh.policy.margin, Duration::from_secs(420));
}

#[test]
fn load_reads_the_named_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), PROVIDER);
    let config = Config::load(Some(&path)).unwrap();
    assert!(config.provider("acme").is_some());
}

#[test]
fn a_missing_named_file_is_an_error() {
    let missing = Path::new("/nonexistent/thermos.toml");
    let err = Config::load_from(Some(missing), env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::NotFound { .. }));
    assert!(err.to_string().contains("/nonexistent/thermos.toml"));
    let err = Config::load_from(None, env(&[("THERMOS_CONFIG", "/nonexistent/x.toml")]));
    assert!(matches!(err, Err(ConfigError::NotFound { .. })));
}

#[test]
fn an_environment_override_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "[refresh]\nmargin = \"5m\"\nmax_retries = 2\n[server]\nlisten = \"127.0.0.1:1\"\n",
    );
    let vars = env(&[
        ("THERMOS_REFRESH__MARGIN", "10m"),
        ("THERMOS_REFRESH__MAX_RETRIES", "0123"),
        ("THERMOS_SERVER__LISTEN", "0.0.0.0:9000"),
        ("THERMOS_DATABASE__URL", "sqlite:///var/lib/thermos/t.db"),
        ("THERMOS_SECURITY__ADMIN_KEY_ENV", "ADMIN_0123"),
        ("THERMOS_ENGINE__ENABLED", "false"),
        ("THERMOS_REFRESH__FAILURE_THRESHOLD", "0.25"),
        ("THERMOS_REFRESH__BACKOFF_MAX", ""),
    ]);
    let config = Config::load_from(Some(&path), vars).unwrap();
    assert_eq!(config.refresh.policy.margin, Duration::from_secs(600));
    assert_eq!(config.refresh.policy.max_retries, 123);
    assert_eq!(config.refresh.policy.backoff_max, Duration::from_secs(300));
    assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(config.database_url, "sqlite:///var/lib/thermos/t.db");
    assert_eq!(
        config.security.master_key_file,
        PathBuf::from("/var/lib/thermos/thermos.key")
    );
    assert_eq!(config.security.admin_key_env, "ADMIN_0123");
    assert!(!config.engine.enabled);
    assert!((config.refresh.failure_threshold - 0.25).abs() < f64::EPSILON);
}

#[test]
fn environment_variables_not_of_the_form_section_key_are_ignored() {
    let vars = env(&[
        ("THERMOS_ADMIN_KEY", "admin"),
        ("THERMOS_MASTER_KEY", "not a key"),
        ("THERMOS_TEST_DATABASE_URL", "postgres://u:p@h/db"),
        ("THERMOS_LOG", "debug"),
        ("REFRESH__MARGIN", "1s"),
        ("PATH", "/usr/bin"),
    ]);
    let config = Config::load_from(None, vars).unwrap();
    assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
}

#[test]
fn an_override_of_an_unknown_key_names_the_variable() {
    let found = problems(Config::load_from(
        None,
        env(&[
            ("THERMOS_REFRESH__MARGN", "1m"),
            ("THERMOS_NOPE__X", "1"),
            ("THERMOS_PROVIDER__SLUG", "x"),
        ]),
    ));
    assert!(has(&found, "THERMOS_NOPE__X: unknown section \"nope\""), "{found:?}");
    assert!(
        has(&found, "THERMOS_PROVIDER__SLUG: providers are configured in the file"),
        "{found:?}"
    );
    assert!(has(&found, "refresh.margn: unknown key"), "{found:?}");
    assert!(has(&found, "(from THERMOS_REFRESH__MARGN)"), "{found:?}");
}

#[test]
fn an_invalid_override_is_reported_with_its_variable() {
    let found = problems(Config::load_from(None, env(&[("THERMOS_REFRESH__MARGIN", "soon")])));
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("refresh.margin: invalid duration \"soon\""),
        "{found:?}"
    );
    assert!(found[0].ends_with("(from THERMOS_REFRESH__MARGIN)"), "{found:?}");
}

#[test]
fn all_problems_are_reported_at_once_each_naming_its_key() {
    let toml = r#"
        [server]
        listen = "localhost"
        [database]
        url = "mysql://user:hunter2@db/thermos"
        [refresh]
        margin = "5 minuts"
        max_retries = -1
        backoff_initial = "10m"
        backoff_max = "1m"
        max_concurrency = 0
        failure_threshold = 10
        [[provider]]
        slug = "ok"
        token_url = "https://a.test/token"
        client_id = "x"
        client_secret = "y"
        [[provider]]
        slug = "Bad Slug"
        token_url = "http://auth.example.com/token"
        client_id = "x"
        auth_method = "magic"
        [[provider]]
        slug = "ok"
        token_url = "https://a.test/token"
        client_id = "x"
        client_secret = "y"
        client_secret_env = "Y"
        default_ttl = "0s"
        rate_limit_per_second = 0
        [alerts]
        webhook_url = "https://hooks.test/x"
        format = "xml"
    "#;
    let err = Config::from_toml_str(toml).unwrap_err();
    let found: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    for expected in [
        "server.listen: expected an IP address and port",
        "database.url: expected a sqlite: or postgres: URL",
        "refresh.margin: invalid duration \"5 minuts\"",
        "refresh.max_retries: must be at least 0 (got -1)",
        "refresh.backoff_initial: must not exceed refresh.backoff_max (10m > 1m)",
        "refresh.max_concurrency: must be at least 1 (got 0)",
        "refresh.failure_threshold: expected a share in (0, 1]",
        "provider[1].slug: invalid slug \"Bad Slug\"",
        "provider[1].token_url: http:// is allowed only for loopback hosts (got http://auth.example.com/token)",
        "provider[1].auth_method: unknown auth method \"magic\"",
        "provider[1].client_secret: required",
        "provider[2].slug: duplicate slug \"ok\" (also provider[0])",
        "provider[2].client_secret: set either client_secret or client_secret_env, not both",
        "provider[2].default_ttl: must be greater than zero",
        "provider[2].rate_limit_per_second: must be at least 1 (got 0)",
        "alerts.format: expected \"slack\" or \"json\" (got \"xml\")",
    ] {
        assert!(has(&found, expected), "missing {expected:?} in {found:#?}");
    }
    assert_eq!(found.len(), 16, "{found:#?}");
    let text = err.to_string();
    assert!(text.starts_with("invalid configuration:\n  "), "{text}");
    assert_eq!(text.lines().count(), 17, "one problem per line: {text}");
    assert!(!text.contains("hunter2"), "a database password is never echoed: {text}");
}

#[test]
fn an_http_token_url_is_allowed_only_on_loopback_hosts() {
    for (url, allowed) in [
        ("http://127.0.0.1:8081/token", true),
        ("http://127.0.0.2/token", true),
        ("http://localhost:8081/token", true),
        ("http://[::1]:8081/token", true),
        ("https://auth.example.com/token", true),
        ("http://auth.example.com/token", false),
        ("http://10.0.0.1/token", false),
        ("http://localhost.example.com/token", false),
        ("ftp://127.0.0.1/token", false),
        ("not a url", false),
    ] {
        let toml =
            format!("[[provider]]\nslug = \"p\"\ntoken_url = \"{url}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n");
        let result = Config::from_toml_str(&toml);
        assert_eq!(result.is_ok(), allowed, "{url}: {result:?}");
        if !allowed {
            assert!(has(&problems(result), "provider[0].token_url: "), "{url}");
        }
    }
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let found = problems(Config::from_toml_str("[refresh]\nmargn = \"5m\"\n"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("refresh.margn: unknown key (expected one of: margin,"),
        "{found:?}"
    );

    let found = problems(Config::from_toml_str(&format!("{PROVIDER}secret = \"x\"\n")));
    assert!(found[0].starts_with("provider[0].secret: unknown key"), "{found:?}");

    let found = problems(Config::from_toml_str("[serve]\nlisten = \"x\"\n"));
    assert!(found[0].starts_with("serve: unknown key"), "{found:?}");
}

#[test]
fn a_toml_syntax_error_or_a_wrong_shape_is_reported() {
    let found = problems(Config::from_toml_str("[server\nlisten = 1"));
    assert_eq!(found.len(), 1, "{found:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "[server]\nlisten = \"x\"\n[[provider]]\nscopes = \"read\"\n",
    );
    let found = problems(Config::load_from(Some(&path), env(&[])));
    assert_eq!(
        found,
        ["provider[0].scopes: invalid type: found string \"read\", expected a sequence"]
    );
    let err = Config::load_from(Some(&write_file(dir.path(), "[server\n")), env(&[])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("\n  {}: TOML parse error at line 1", path.display())),
        "{text}"
    );
    assert!(
        text.lines().skip(2).all(|l| l.starts_with("    ")),
        "continuation lines are indented: {text}"
    );
}

#[test]
fn a_client_secret_env_naming_an_unset_variable_is_an_error() {
    let toml = r#"
        [[provider]]
        slug = "example"
        token_url = "https://auth.example.com/oauth/token"
        client_id = "abc"
        client_secret_env = "EXAMPLE_CLIENT_SECRET"
    "#;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), toml);
    let found = problems(Config::load_from(Some(&path), env(&[])));
    assert_eq!(
        found,
        ["provider[0].client_secret_env: environment variable EXAMPLE_CLIENT_SECRET is not set"]
    );
    let found = problems(Config::load_from(Some(&path), env(&[("EXAMPLE_CLIENT_SECRET", "")])));
    assert!(has(&found, "EXAMPLE_CLIENT_SECRET is empty"), "{found:?}");
    let config = Config::load_from(Some(&path), env(&[("EXAMPLE_CLIENT_SECRET", "s")])).unwrap();
    assert_eq!(config.providers[0].client_secret.as_ref().unwrap().expose_secret(), "s");
}

#[test]
fn a_secret_is_required_unless_the_auth_method_is_none() {
    let base = "[[provider]]\nslug = \"p\"\ntoken_url = \"https://a.test/t\"\nclient_id = \"c\"\n";
    let found = problems(Config::from_toml_str(base));
    assert!(has(&found, "provider[0].client_secret: required"), "{found:?}");
    let found = problems(Config::from_toml_str(&format!(
        "{base}auth_method = \"none\"\nclient_secret = \"s\"\n"
    )));
    assert!(has(
        &found,
        "provider[0].client_secret: auth_method = \"none\" takes no client secret"
    ));
    let found = problems(Config::from_toml_str(&format!(
        "{base}client_secret = \"s\"\nextra_params = {{ grant_type = \"x\" }}\n"
    )));
    assert!(
        has(&found, "provider[0].extra_params.grant_type: reserved"),
        "{found:?}"
    );
}

#[test]
fn durations_are_written_with_a_unit() {
    let margin =
        |value: &str| Config::from_toml_str(&format!("[refresh]\nmargin = {value}\n")).map(|c| c.refresh.policy.margin);
    assert_eq!(margin("\"30s\"").unwrap(), Duration::from_secs(30));
    assert_eq!(margin("\"5m\"").unwrap(), Duration::from_secs(300));
    assert_eq!(margin("\"1h 30m\"").unwrap(), Duration::from_secs(5400));
    assert_eq!(margin("\"2 minutes\"").unwrap(), Duration::from_secs(120));
    assert!(has(
        &problems(margin("\"300\"")),
        "refresh.margin: invalid duration \"300\""
    ));
    assert!(has(
        &problems(margin("300")),
        "refresh.margin: expected a duration with a unit"
    ));
    assert!(has(&problems(margin("\"-5m\"")), "refresh.margin: invalid duration"));
    assert!(has(
        &problems(margin("\"0s\"")),
        "refresh.margin: must be greater than zero"
    ));
}

#[test]
fn the_master_key_file_defaults_to_beside_the_database() {
    let key_file = |url: &str| {
        Config::from_toml_str(&format!("[database]\nurl = \"{url}\"\n"))
            .unwrap()
            .security
            .master_key_file
    };
    assert_eq!(key_file("sqlite://data/x.db"), Path::new("data").join("thermos.key"));
    assert_eq!(key_file("sqlite:x.db"), PathBuf::from("thermos.key"));
    assert_eq!(key_file("sqlite::memory:"), PathBuf::from("thermos.key"));
    let explicit =
        Config::from_toml_str("[database]\nurl = \"sqlite://data/x.db\"\n[security]\nmaster_key_file = \"k/my.key\"\n")
            .unwrap();
    assert_eq!(explicit.security.master_key_file, PathBuf::from("k/my.key"));
}

#[test]
fn the_debug_output_of_a_config_shows_no_secret() {
    let toml = format!(
        "[database]\nurl = \"sqlite://t.db\"\n[alerts]\nwebhook_url = \"https://hooks.slack.test/services/T0/B0/hook-secret\"\n{}",
        PROVIDER.replace("shh", "very-secret-value")
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let debug = format!("{config:?}");
    assert!(debug.contains("acme"), "{debug}");
    assert!(!debug.contains("very-secret-value"), "{debug}");
    assert!(!debug.contains("hook-secret"), "{debug}");
    assert!(debug.contains("https://hooks.slack.test"), "{debug}");
    assert_eq!(redact_url("postgres://u:hunter2@db/x"), "postgres://u:REDACTED@db/x");
}

#[test]
fn the_example_file_loads_with_no_environment_and_gives_the_defaults() {
    let config = Config::from_toml_str(example_toml()).unwrap();
    assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
}

#[test]
fn the_settings_commented_out_in_the_example_are_valid_too() {
    // `#key = …` and `#[section]` are settings; `# text` and `## text` are prose.
    let uncommented: String = example_toml()
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    // Without the `otel` feature an OTLP endpoint is refused (tested below).
    let uncommented = if cfg!(feature = "otel") {
        uncommented
    } else {
        uncommented.replace("otlp_endpoint =", "#otlp_endpoint =")
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), &uncommented);
    let config = Config::load_from(Some(&path), env(&[("EXAMPLE_CLIENT_SECRET", "s")])).unwrap();
    let example = config.provider("example").unwrap();
    assert_eq!(example.max_concurrency, Some(32));
    assert_eq!(example.extra_params.len(), 1);
    let alerts = config.alerts.unwrap();
    assert_eq!(alerts.escalate_after, 3);
    assert_eq!(alerts.window, Duration::from_secs(60));
    assert_eq!(config.server.public_url.as_str(), "https://thermos.example.com/");
    assert_eq!(config.runs.sweep_every, Some(Duration::from_secs(15 * 60)));
    if cfg!(feature = "otel") {
        let endpoint = config.telemetry.otlp_endpoint.map(String::from);
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:4318/"));
    }
}

#[test]
fn runs_default_to_no_sweep_and_a_minute_of_silence_before_stale() {
    let config = Config::from_toml_str("").unwrap();
    assert_eq!(config.runs.sweep_every, None);
    assert_eq!(config.runs.sweep_overdue_by, Duration::from_secs(60));
    assert_eq!(config.runs.stale_after, Duration::from_secs(60));
    let config = Config::load_from(
        None,
        env(&[
            ("THERMOS_RUNS__SWEEP_EVERY", "10m"),
            ("THERMOS_RUNS__STALE_AFTER", "2s"),
        ]),
    )
    .unwrap();
    assert_eq!(config.runs.sweep_every, Some(Duration::from_secs(600)));
    assert_eq!(config.runs.stale_after, Duration::from_secs(2));
}

#[test]
fn a_too_frequent_sweep_or_a_bad_stale_after_is_reported_with_its_key() {
    let toml = "[runs]\nsweep_every = \"10s\"\nsweep_overdue_by = 5\nstale_after = \"100ms\"\n";
    let found = problems(Config::from_toml_str(toml));
    assert_eq!(
        found,
        [
            "runs.sweep_every: must be at least 1m (got 10s)",
            "runs.sweep_overdue_by: expected a duration with a unit, like \"30s\" or \"5m\" (got 5)",
            "runs.stale_after: must be at least 1s (got 100ms)",
        ]
    );
}

#[test]
fn telemetry_defaults_to_no_export_as_thermos_with_every_trace() {
    let config = Config::from_toml_str("").unwrap();
    assert_eq!(config.telemetry.otlp_endpoint, None);
    assert_eq!(config.telemetry.service_name, "thermos");
    assert!((config.telemetry.sample_ratio - 1.0).abs() < f64::EPSILON);
    let config = Config::load_from(
        None,
        env(&[
            ("THERMOS_TELEMETRY__SERVICE_NAME", "thermos-eu"),
            ("THERMOS_TELEMETRY__SAMPLE_RATIO", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(config.telemetry.service_name, "thermos-eu");
    assert!(config.telemetry.sample_ratio.abs() < f64::EPSILON);
}

#[test]
fn bad_telemetry_settings_are_reported_with_their_keys() {
    let toml =
        "[telemetry]\notlp_endpoint = \"grpc://u:pw@collector:4317\"\nservice_name = \" \"\nsample_ratio = 1.5\n";
    let found = problems(Config::from_toml_str(toml));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        has(
            &found,
            "telemetry.otlp_endpoint: expected the http:// or https:// base URL"
        ),
        "{found:?}"
    );
    assert!(has(&found, "telemetry.service_name: is empty"), "{found:?}");
    assert!(
        has(&found, "telemetry.sample_ratio: expected a share in [0, 1]"),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|p| p.contains("pw")),
        "the endpoint is not echoed: {found:?}"
    );
    let found = problems(Config::load_from(
        None,
        env(&[("THERMOS_TELEMETRY__SAMPLE_RATIO", "half")]),
    ));
    assert!(has(&found, "(from THERMOS_TELEMETRY__SAMPLE_RATIO)"), "{found:?}");
}

#[test]
fn an_otlp_endpoint_needs_a_build_with_the_otel_feature() {
    let loaded = Config::load_from(
        None,
        env(&[("THERMOS_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4318")]),
    );
    if cfg!(feature = "otel") {
        let endpoint = loaded.unwrap().telemetry.otlp_endpoint.map(String::from);
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:4318/"));
    } else {
        let found = problems(loaded);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("telemetry.otlp_endpoint: "), "{found:?}");
        assert!(found[0].contains("--features otel"), "{found:?}");
    }
}

#[test]
fn the_debug_output_shows_no_password_of_the_otlp_endpoint() {
    let toml = "[telemetry]\notlp_endpoint = \"https://user:collector-secret@otel.example.com\"\n";
    match Config::from_toml_str(toml) {
        Ok(config) => {
            let debug = format!("{config:?}");
            assert!(debug.contains("otel.example.com"), "{debug}");
            assert!(!debug.contains("collector-secret"), "{debug}");
        }
        Err(e) => assert!(!e.to_string().contains("collector-secret"), "{e}"),
    }
}

#[test]
fn a_postgres_url_with_pool_settings_is_accepted_and_shown_without_its_password() {
    let toml = "[database]\nurl = \"postgres://thermos:hunter2@db:5432/thermos\"\nmax_connections = 32\nacquire_timeout = \"3s\"\nschema = \"thermos_prod\"\n";
    let config = Config::from_toml_str(toml).unwrap();
    assert!(config.is_postgres());
    assert_eq!(config.database_pool.max_connections, 32);
    assert_eq!(config.database_pool.acquire_timeout, Duration::from_secs(3));
    assert_eq!(config.database_pool.schema.as_deref(), Some("thermos_prod"));
    assert!(!config.database_url_redacted().contains("hunter2"));
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn bad_database_settings_are_reported_with_their_keys() {
    let toml = "[database]\nurl = \"mysql://u:secret@h/db\"\nmax_connections = 1\nschema = \"Robert'); DROP\"\n";
    let found = problems(Config::from_toml_str(toml));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        has(&found, "database.url: expected a sqlite: or postgres: URL"),
        "{found:?}"
    );
    assert!(
        has(&found, "database.max_connections: must be at least 2 (got 1)"),
        "{found:?}"
    );
    assert!(
        has(&found, "database.schema: expected a lowercase SQL name"),
        "{found:?}"
    );
    assert!(found.iter().all(|p| !p.contains("secret")), "{found:?}");
}

#[test]
fn with_postgres_and_no_key_none_is_generated() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("thermos.key");
    let toml = format!(
        "[database]\nurl = \"postgres://u@h/db\"\n[security]\nmaster_key_file = \"{}\"\n",
        key_file.display()
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let error = config.load_or_create_master_key_with(None).unwrap_err();
    assert!(
        error.to_string().contains("every instance must use the same key"),
        "{error}"
    );
    assert!(!key_file.exists());
}

#[test]
fn limits_default_to_256_kib_bodies_32_kib_headers_90_s_and_no_connection_cap() {
    let limits = Config::from_toml_str("").unwrap().limits;
    assert_eq!(limits.max_body_bytes, 256 * 1024);
    assert_eq!(limits.max_header_bytes, 32 * 1024);
    assert_eq!(limits.request_timeout, Duration::from_secs(90));
    assert_eq!(limits.max_connections_per_project, None);
}

#[test]
fn limits_come_from_the_file_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "[limits]\nmax_body_bytes = 65536\nrequest_timeout = \"30s\"\nmax_connections_per_project = 10\n",
    );
    let vars = env(&[
        ("THERMOS_LIMITS__MAX_CONNECTIONS_PER_PROJECT", "500"),
        ("THERMOS_LIMITS__MAX_HEADER_BYTES", "8192"),
    ]);
    let limits = Config::load_from(Some(&path), vars).unwrap().limits;
    assert_eq!(limits.max_body_bytes, 65536);
    assert_eq!(limits.max_header_bytes, 8192);
    assert_eq!(limits.request_timeout, Duration::from_secs(30));
    assert_eq!(limits.max_connections_per_project, Some(500));
}

#[test]
fn every_bad_limit_is_reported_with_its_key() {
    let found = problems(Config::from_toml_str(
        "[limits]\nmax_body_bytes = 100\nmax_header_bytes = \"lots\"\nrequest_timeout = 5\nmax_connections_per_project = 0\nmax_bodies = 1\n",
    ));
    // An unknown key stops parsing before the values are checked.
    assert!(has(&found, "max_bodies"), "{found:?}");
    let found = problems(Config::from_toml_str(
        "[limits]\nmax_body_bytes = 100\nmax_header_bytes = \"lots\"\nrequest_timeout = 5\nmax_connections_per_project = 0\n",
    ));
    for key in [
        "limits.max_body_bytes: must be at least 16384",
        "limits.max_header_bytes: expected a whole number",
        "limits.request_timeout: expected a duration",
        "limits.max_connections_per_project: must be at least 1",
    ] {
        assert!(has(&found, key), "{key} missing from {found:?}");
    }
}

#[test]
fn a_url_problem_never_shows_the_password_the_url_carries() {
    let toml = r#"
        [server]
        public_url = "ftp://admin:pub-pass-1@thermos.test/"
        [[provider]]
        slug = "one"
        token_url = "http://user:token-pass-2@auth.example.com/token"
        client_id = "x"
        client_secret = "y"
        [[provider]]
        slug = "two"
        token_url = "user:token-pass-3@not a url"
        client_id = "x"
        client_secret = "y"
        [[provider]]
        slug = "three"
        token_url = ":user:token-pass-4@auth.example.com"
        client_id = "x"
        client_secret = "y"
    "#;
    let found = problems(Config::from_toml_str(toml));
    assert!(
        has(
            &found,
            "server.public_url: expected an http:// or https:// URL (got ftp://admin:redacted@thermos.test/)"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "provider[0].token_url: http:// is allowed only for loopback hosts (got http://user:redacted@auth.example.com/token)"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "provider[1].token_url: expected an https:// URL (got a value not shown: it may hold credentials)"
        ),
        "{found:?}"
    );
    assert!(
        has(
            &found,
            "provider[2].token_url: not a URL (got a value not shown: it may hold credentials)"
        ),
        "{found:?}"
    );
    for secret in ["pub-pass-1", "token-pass-2", "token-pass-3", "token-pass-4"] {
        assert!(!found.iter().any(|p| p.contains(secret)), "{secret} shown in {found:?}");
    }
}

#[test]
fn auth_failures_per_minute_defaults_to_twenty_accepts_zero_and_refuses_non_numbers() {
    assert_eq!(Config::default().security.auth_failures_per_minute, 20);
    assert_eq!(Config::from_toml_str("").unwrap().security.auth_failures_per_minute, 20);
    let limit = |value: &str| Config::from_toml_str(&format!("[security]\nauth_failures_per_minute = {value}\n"));
    assert_eq!(limit("0").unwrap().security.auth_failures_per_minute, 0);
    assert_eq!(limit("5").unwrap().security.auth_failures_per_minute, 5);
    assert!(has(
        &problems(limit("-1")),
        "security.auth_failures_per_minute: must be at least 0"
    ));
    assert!(has(
        &problems(limit("\"many\"")),
        "security.auth_failures_per_minute: expected a whole number"
    ));
    let found = problems(Config::load_from(
        None,
        env(&[("THERMOS_SECURITY__AUTH_FAILURES_PER_MINUTE", "1.5")]),
    ));
    assert!(has(&found, "security.auth_failures_per_minute"), "{found:?}");
}

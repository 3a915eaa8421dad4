//! `thermos doctor` as an operator runs it: the real binary against a config
//! and SQLite file in a temporary directory, connections written straight
//! into the store with tokens sealed by the config's master key.

mod common;

use std::path::Path;
use std::process::Command;

use common::{ADMIN_KEY, PROVIDER, config_toml};
use secrecy::SecretString;
use serde_json::Value;
use tempfile::TempDir;
use thermos::config::Config;
use thermos_core::id::ConnectionId;
use thermos_core::seal::{Field, MasterKey};
use thermos_store::{NewConnection, SqliteStore, Store};
use thermos_testprovider::{ProviderOptions, TestProvider};
use time::{Duration, OffsetDateTime};

const REFRESH_TOML: &str = "request_timeout = \"5s\"\n";

/// A config in a fresh directory, its master key created, its database migrated.
struct Setup {
    dir: TempDir,
    config: std::path::PathBuf,
    key: MasterKey,
    store: SqliteStore,
}

impl Setup {
    async fn new(token_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let toml = config_toml(dir.path(), token_url, false, REFRESH_TOML);
        let config = dir.path().join("thermos.toml");
        std::fs::write(&config, &toml).unwrap();
        let (key, _) = Config::from_toml_str(&toml)
            .unwrap()
            .load_or_create_master_key_with(None)
            .unwrap();
        let store = SqliteStore::open_path(&dir.path().join("thermos.db")).await.unwrap();
        store.migrate().await.unwrap();
        Self {
            dir,
            config,
            key,
            store,
        }
    }

    /// Inserts an active connection whose token expires at `expires_at` and
    /// which is due at `next_refresh_at`.
    async fn connection(
        &self,
        external_id: &str,
        expires_at: OffsetDateTime,
        next_refresh_at: OffsetDateTime,
    ) -> String {
        let id = ConnectionId::generate();
        let now = OffsetDateTime::now_utc();
        let new = NewConnection {
            id,
            project: "proj".into(),
            provider: PROVIDER.into(),
            external_id: external_id.into(),
            access_token: self
                .key
                .seal(&id, Field::AccessToken, &SecretString::from("access-token")),
            refresh_token: Some(
                self.key
                    .seal(&id, Field::RefreshToken, &SecretString::from("refresh-token")),
            ),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now - Duration::hours(2),
            expires_at,
            metadata: serde_json::json!({}),
            next_refresh_at,
            grant: Default::default(),
            refresh_token_expires_at: None,
        };
        self.store.insert_connection(new, now, Vec::new()).await.unwrap();
        id.to_string()
    }

    /// Records a live serving instance, as `thermos serve` does every 5 s.
    async fn serving_instance(&self, engine_enabled: bool) {
        let now = thermos::engine::truncate_ms(OffsetDateTime::now_utc());
        let beat = thermos_store::instance::InstanceBeat {
            name: "thermos-1-test".into(),
            started_at: now,
            engine_enabled,
            version: "0.0.0".into(),
        };
        self.store.beat_instance(beat, now).await.unwrap();
    }

    fn doctor(&self, json: bool) -> (i32, String) {
        doctor(&self.config, json)
    }
}

fn doctor(config: &Path, json: bool) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_thermos"));
    command
        .args(["--config", config.to_str().unwrap(), "doctor"])
        .env("THERMOS_ADMIN_KEY", ADMIN_KEY)
        .env_remove("THERMOS_MASTER_KEY");
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("run thermos doctor");
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.code().unwrap_or(-1), stdout)
}

/// The report line of the check `name` (`status  name  detail`).
fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split("  ").map(str::trim).any(|part| part == name))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{report}"))
}

/// A loopback URL where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/token")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_setup_is_all_ok_and_exits_zero() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let setup = Setup::new(&provider.token_url()).await;
    let now = OffsetDateTime::now_utc();
    setup
        .connection("fresh", now + Duration::hours(1), now + Duration::minutes(50))
        .await;
    setup.serving_instance(true).await;

    let (code, report) = setup.doctor(false);

    assert_eq!(code, 0, "{report}");
    assert!(
        line(&report, "instances").contains("1 live: thermos-1-test"),
        "{report}"
    );
    for line in report.lines().take_while(|l| !l.is_empty()) {
        assert!(line.starts_with("ok "), "not ok: {line}\n{report}");
    }
    assert!(
        line(&report, "master key").contains("opens 1 sampled token"),
        "{report}"
    );
    assert!(
        line(&report, &format!("provider {PROVIDER}")).contains("answers"),
        "{report}"
    );
    assert!(report.contains("0 warn, 0 fail"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_provider_fails_and_exits_non_zero() {
    let setup = Setup::new(&closed_port_url()).await;

    let (code, report) = setup.doctor(false);

    assert_ne!(code, 0, "{report}");
    let provider = line(&report, &format!("provider {PROVIDER}"));
    assert!(provider.starts_with("fail"), "{report}");
    assert!(provider.contains("unreachable"), "{report}");
    assert!(line(&report, "database").starts_with("ok"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overdue_connection_with_an_expired_token_fails() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let setup = Setup::new(&provider.token_url()).await;
    let now = OffsetDateTime::now_utc();
    let id = setup
        .connection("stuck", now - Duration::hours(1), now - Duration::hours(2))
        .await;

    let (code, report) = setup.doctor(false);

    assert_ne!(code, 0, "{report}");
    let scheduler = line(&report, "scheduler");
    assert!(scheduler.starts_with("fail"), "{report}");
    assert!(scheduler.contains("1 of 1 scheduled connection(s) overdue"), "{report}");
    assert!(scheduler.contains(&id), "{report}");
    let expired = line(&report, "expired tokens");
    assert!(expired.starts_with("fail") && expired.contains(&id), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_master_key_fails_without_creating_one() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let setup = Setup::new(&provider.token_url()).await;
    let key_file = setup.dir.path().join("thermos.key");
    std::fs::remove_file(&key_file).unwrap();

    let (code, report) = setup.doctor(false);

    assert_ne!(code, 0, "{report}");
    assert!(line(&report, "master key").contains("no master key"), "{report}");
    assert!(!key_file.exists(), "doctor must not generate a master key");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_output_parses_and_carries_every_check() {
    let setup = Setup::new(&closed_port_url()).await;

    let (code, stdout) = setup.doctor(true);

    assert_ne!(code, 0);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["status"], "fail");
    let checks = report["checks"].as_array().unwrap();
    let provider = checks
        .iter()
        .find(|c| c["name"] == format!("provider {PROVIDER}"))
        .unwrap();
    assert_eq!(provider["status"], "fail");
    assert!(provider["action"].is_string());
    for check in checks {
        assert!(
            ["ok", "warn", "fail"].contains(&check["status"].as_str().unwrap()),
            "{check}"
        );
        assert!(check["detail"].is_string(), "{check}");
    }
    let database = checks.iter().find(|c| c["name"] == "database").unwrap();
    assert_eq!(database["status"], "ok");
    assert!(database["action"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_key_that_does_not_open_the_stored_tokens_fails() {
    use secrecy::ExposeSecret as _;
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let setup = Setup::new(&provider.token_url()).await;
    let now = OffsetDateTime::now_utc();
    setup
        .connection("sealed", now + Duration::hours(1), now + Duration::minutes(50))
        .await;
    let (_, other) = MasterKey::generate();
    std::fs::write(setup.dir.path().join("thermos.key"), other.expose_secret()).unwrap();

    let (code, report) = setup.doctor(false);

    assert_ne!(code, 0, "{report}");
    let key = line(&report, "master key");
    assert!(
        key.starts_with("fail") && key.contains("cannot open 1 of 1"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_live_instance_or_only_api_only_ones_is_a_warning() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let setup = Setup::new(&provider.token_url()).await;

    let (code, report) = setup.doctor(false);
    assert_eq!(code, 0, "a warning does not fail: {report}");
    assert!(line(&report, "instances").starts_with("warn"), "{report}");
    assert!(report.contains("start `thermos serve`"), "{report}");

    setup.serving_instance(false).await;
    let (_, report) = setup.doctor(false);
    assert!(line(&report, "instances").contains("all API-only"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_under_an_older_key_warn_and_under_an_unconfigured_key_fail() {
    use secrecy::ExposeSecret as _;
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let setup = Setup::new(&provider.token_url()).await;
    let now = OffsetDateTime::now_utc();
    setup
        .connection("sealed", now + Duration::hours(1), now + Duration::minutes(50))
        .await;
    let key_file = setup.dir.path().join("thermos.key");
    let (code, report) = setup.doctor(false);
    assert!(line(&report, "sealed secrets").starts_with("ok"), "{code} {report}");
    assert!(
        line(&report, "sealed secrets").contains("all 2 under the primary key"),
        "{report}"
    );

    // A new primary key, the old one second: a rotation not yet finished.
    let old = std::fs::read_to_string(&key_file).unwrap();
    let (new_key, new_text) = MasterKey::generate();
    std::fs::write(&key_file, format!("{}\n{old}", new_text.expose_secret())).unwrap();
    let (_, report) = setup.doctor(false);
    let sealed = line(&report, "sealed secrets");
    assert!(sealed.starts_with("warn"), "{report}");
    assert!(
        sealed.contains(&format!("0 under the primary key {}", new_key.id_hex())),
        "{report}"
    );
    assert!(sealed.contains(&format!("2 under {}", setup.key.id_hex())), "{report}");

    // The old key dropped before re-encryption: those secrets cannot be opened.
    std::fs::write(&key_file, new_text.expose_secret()).unwrap();
    let (code, report) = setup.doctor(false);
    assert_ne!(code, 0, "{report}");
    let sealed = line(&report, "sealed secrets");
    assert!(sealed.starts_with("fail"), "{report}");
    assert!(sealed.contains(&format!("2 under {}", setup.key.id_hex())), "{report}");
    assert!(!report.contains(new_text.expose_secret()), "the report shows a key");
}

//! Master key rotation end to end: a real server on a key file keeps
//! serving and refreshing tokens while `thermos keys rotate-master` (the CLI
//! binary) makes a new key primary and re-encrypts every stored secret;
//! the server picks the new key up without a restart, an interrupted
//! re-encryption resumes, and the old key can be retired only once nothing
//! uses it. No key material ever appears in the commands' output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{ADMIN_KEY, PROVIDER, eventually};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use thermos::app::Application;
use thermos::config::{Config, KeyEntry, write_key_file};
use thermos_core::clock::SystemClock;
use thermos_core::seal::{Field, KeyId};
use thermos_store::Store;
use thermos_testprovider::{ProviderOptions, TestProvider};

/// A server on a key file, and what the CLI needs to reach the same database.
struct Rotating {
    base: String,
    http: reqwest::Client,
    provider: TestProvider,
    engine: thermos::engine::Engine,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    key_path: PathBuf,
    old: KeyEntry,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Starts a server whose key ring follows its key file every `poll`.
async fn start(poll: Duration) -> Rotating {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut toml = common::config_toml(dir.path(), &provider.token_url(), true, "request_timeout = \"5s\"\n");
    toml = toml.replacen("[security]\n", "[security]\nallow_private_targets = true\n", 1);
    let config_path = dir.path().join("thermos.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let config = Config::from_toml_str(&toml).unwrap();
    let key_path = config.security.master_key_file.clone();
    let old = KeyEntry::generate();
    write_key_file(&key_path, std::slice::from_ref(&old)).unwrap();

    let (key, source) = config.load_or_create_master_key_with(None).unwrap();
    let mut app = Application::build(&config, key, Some(ADMIN_KEY.to_owned().into()), Arc::new(SystemClock))
        .await
        .unwrap();
    app.watch_master_key_file_every(&source, poll);
    let base = format!("http://{}", app.local_addr());
    let engine = app.engine().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    Rotating {
        base,
        http: reqwest::Client::new(),
        provider,
        engine,
        dir,
        config_path,
        key_path,
        old,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl Rotating {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(ADMIN_KEY).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// Imports `n` connections of project p1; returns their ids.
    async fn import(&self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let grant = self.provider.issue_grant();
            let (status, body) = self
                .post(
                    "/v1/connections",
                    json!({
                        "project": "p1",
                        "provider": PROVIDER,
                        "external_id": format!("user-{i}"),
                        "access_token": grant.access_token,
                        "refresh_token": grant.refresh_token,
                        "expires_in": 3600,
                    }),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        ids
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.engine.store()
    }

    /// Runs the CLI against this server's configuration: (success, stdout, stderr).
    fn thermos(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_thermos"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("THERMOS_MASTER_KEY")
            .env_remove("THERMOS_CONFIG")
            .env_remove("THERMOS_ADMIN_KEY")
            .output()
            .expect("run thermos");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        // Whatever a command prints, it never prints a key.
        for line in std::fs::read_to_string(&self.key_path)
            .unwrap()
            .lines()
            .chain([self.old.text.expose_secret()])
        {
            assert!(
                !stdout.contains(line) && !stderr.contains(line),
                "key material in the output of {args:?}"
            );
        }
        (output.status.success(), stdout, stderr)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

fn key_ids_in(path: &Path) -> Vec<KeyId> {
    thermos::config::read_key_entries(path)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect()
}

async fn count_under(store: &dyn Store, id: KeyId) -> u64 {
    store
        .count_sealed_by_key_id()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.key_id == Some(id))
        .map(|c| c.count)
        .sum()
}

/// Fetches tokens and forces refreshes of `ids` until stopped; counts
/// tokens served and fails on anything but a token or a (rate-limited)
/// refusal.
fn keep_busy(app: &Rotating, ids: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    let (http, base) = (app.http.clone(), app.base.clone());
    tokio::spawn(async move {
        let (mut served, mut refreshed) = (0u64, 0u64);
        let mut round = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let id = &ids[round % ids.len()];
            let response = http
                .get(format!("{base}/v1/connections/{id}/token"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert_eq!(status, 200, "a token is always served during the rotation: {body}");
            served += 1;
            if round.is_multiple_of(3) {
                let response = http
                    .post(format!("{base}/v1/connections/{id}/refresh"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap();
                assert!(
                    status == 200 || status == 429,
                    "refresh during the rotation: {status} {body}"
                );
                refreshed += u64::from(status == 200);
            }
            round += 1;
        }
        (served, refreshed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_the_master_key_reencrypts_everything_while_tokens_are_served_and_refreshed() {
    let app = start(Duration::from_millis(100)).await;
    let ids = app.import(24).await;
    let (status, body) = app
        .post(
            "/v1/apps",
            json!({"project": "p2", "provider": PROVIDER, "client_id": "p2-client", "client_secret": "p2-secret"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, hook) = app
        .post(
            "/v1/webhooks",
            json!({"project": "p1", "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    // A JWT-bearer connection: its private key is sealed where a refresh token would be.
    app.provider
        .register_jwt_key("key-1", include_str!("fixtures/jwt/ec_public.pem"));
    let (status, jwt) = app
        .post(
            "/v1/connections",
            json!({"project": "p1", "provider": PROVIDER, "external_id": "svc", "grant_type": "jwt_bearer",
                "private_key": include_str!("fixtures/jwt/ec_private.pem"),
                "assertion_claims": {"iss": "svc", "sub": "user", "kid": "key-1", "alg": "ES256"}}),
        )
        .await;
    assert_eq!(status, 201, "{jwt}");
    let jwt_id = jwt["id"].as_str().unwrap().to_owned();
    let old = app.old.id;
    assert_eq!(app.engine.key().primary_id(), old);
    // 25 connections (two sealed values each: tokens, or a token and a
    // private key), one app secret, one webhook secret.
    assert_eq!(count_under(app.store().as_ref(), old).await, 25 * 2 + 2);

    let stop = Arc::new(AtomicBool::new(false));
    // ids[0] is left alone: it is refreshed once after the rotation.
    let busy = keep_busy(&app, ids[1..].to_vec(), Arc::clone(&stop));

    // Rotate, interrupted after two batches of five rows.
    let (ok, stdout, stderr) = app.thermos(&[
        "keys",
        "rotate-master",
        "--batch",
        "5",
        "--max-batches",
        "2",
        "--settle",
        "300ms",
    ]);
    assert!(ok, "{stderr}");
    let new = KeyId::parse_hex(stdout.trim()).expect("stdout is the new key id");
    assert_ne!(new, old);
    assert_eq!(key_ids_in(&app.key_path), [new, old], "new key first, the old one kept");
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("re-encrypted ")).collect();
    assert_eq!(progress.len(), 2, "one progress line per batch: {stderr}");
    assert!(
        progress.iter().all(|l| l.contains(" of ") && l.ends_with("%)")),
        "{stderr}"
    );
    assert!(stderr.contains("stopped after 2 batches"), "{stderr}");
    assert!(stderr.contains(&new.to_string()), "{stderr}");

    // The server picks the new key up without a restart.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.engine.key().primary_id() == new
        })
        .await,
        "the server did not reload the key file"
    );
    let left = count_under(app.store().as_ref(), old).await;
    assert!(left > 0, "the interrupted run left work");

    // The old key cannot be retired while values use it.
    let (ok, _, stderr) = app.thermos(&["keys", "retire-master", &old.to_string()]);
    assert!(!ok);
    assert!(stderr.contains("still seals"), "{stderr}");
    assert!(stderr.contains("thermos keys reencrypt"), "{stderr}");

    // Resume: everything ends under the new key while the server keeps going.
    let (ok, _, stderr) = app.thermos(&["keys", "reencrypt", "--batch", "7", "--settle", "300ms"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("re-encryption finished"), "{stderr}");
    stop.store(true, Ordering::Relaxed);
    let (served, refreshed) = busy.await.unwrap();
    assert!(served > 0 && refreshed > 0, "served {served}, refreshed {refreshed}");

    let counts = app.store().count_sealed_by_key_id().await.unwrap();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].key_id, Some(new));
    assert_eq!(counts[0].count, 25 * 2 + 2);
    // The re-encrypted private key still signs: a forced re-issue is accepted.
    let (status, body) = app.post(&format!("/v1/connections/{jwt_id}/refresh"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.provider.accepted_assertions().len(), 2);

    // Every token still opens and is served; the app and webhook secrets open.
    for id in &ids {
        let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(status, 200, "{body}");
    }
    let apps = app.store().list_custom_apps(Some("p2")).await.unwrap();
    let secret = apps[0].client_secret.as_ref().unwrap();
    assert_eq!(secret.key_id(), Some(new));
    let opened = app
        .engine
        .key()
        .open_for("app/p2/acme-oauth", Field::ClientSecret, secret)
        .unwrap();
    assert_eq!(opened.expose_secret(), "p2-secret");
    let webhook = app.store().get_webhook(&hook_id).await.unwrap().unwrap();
    assert_eq!(webhook.secret.key_id(), Some(new));
    app.engine
        .key()
        .open_for(&format!("webhook/{hook_id}"), Field::ClientSecret, &webhook.secret)
        .unwrap();

    // A token refreshed now is sealed under the new key.
    let (status, body) = app
        .post(&format!("/v1/connections/{}/refresh", ids[0]), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let record = app
        .store()
        .get_connection(thermos_core::id::ConnectionId::parse(&ids[0]).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.access_token.key_id(), Some(new));

    // Status shows both keys; then the old key retires and the server follows.
    let (ok, stdout, stderr) = app.thermos(&["keys", "master-status"]);
    assert!(ok, "{stderr}");
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    let (new_text, old_text) = (new.to_string(), old.to_string());
    assert!(rows.contains(&vec![new_text.as_str(), "primary", "52"]), "{stdout}");
    assert!(rows.contains(&vec![old_text.as_str(), "readable", "0"]), "{stdout}");
    let (ok, _, stderr) = app.thermos(&["keys", "retire-master", &new.to_string()]);
    assert!(!ok && stderr.contains("is the primary"), "{stderr}");
    let (ok, _, stderr) = app.thermos(&["keys", "retire-master", &old.to_string()]);
    assert!(ok, "{stderr}");
    assert_eq!(key_ids_in(&app.key_path), [new]);
    assert!(
        eventually(Duration::from_secs(5), || async { app.engine.key().key_ids() == [new] }).await,
        "the server did not drop the retired key"
    );
    for id in &ids {
        let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(status, 200, "{body}");
    }
    let _ = &app.dir;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_has_not_looked_at_the_key_file_yet_rereads_it_on_an_unknown_key_id() {
    // The server would look at the file only in an hour.
    let app = start(Duration::from_secs(3600)).await;
    let ids = app.import(3).await;
    let (ok, stdout, stderr) = app.thermos(&["keys", "rotate-master", "--settle", "0s"]);
    assert!(ok, "{stderr}");
    let new = KeyId::parse_hex(stdout.trim()).unwrap();
    assert_eq!(app.engine.key().primary_id(), app.old.id, "not reloaded yet");
    for id in &ids {
        let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(status, 200, "a token sealed under the new key opens: {body}");
    }
    assert_eq!(
        app.engine.key().primary_id(),
        new,
        "the unknown key id made it reread the file"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_key_opens_but_does_not_seal_until_promoted_and_keys_from_the_environment_are_not_rotated() {
    let app = start(Duration::from_millis(100)).await;
    app.import(2).await;
    let old = app.old.id;
    let (ok, stdout, stderr) = app.thermos(&["keys", "rotate-master", "--stage"]);
    assert!(ok, "{stderr}");
    let staged = KeyId::parse_hex(stdout.trim()).unwrap();
    assert_eq!(key_ids_in(&app.key_path), [old, staged]);
    assert!(stderr.contains(&format!("promote-master {staged}")), "{stderr}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.engine.key().key_ids() == [old, staged]
        })
        .await,
        "the server did not load the staged key"
    );
    assert_eq!(count_under(app.store().as_ref(), staged).await, 0);

    let (ok, _, stderr) = app.thermos(&["keys", "promote-master", &staged.to_string()]);
    assert!(ok, "{stderr}");
    assert_eq!(key_ids_in(&app.key_path), [staged, old]);
    let (ok, _, stderr) = app.thermos(&["keys", "reencrypt", "--settle", "300ms"]);
    assert!(ok, "{stderr}");
    assert_eq!(count_under(app.store().as_ref(), old).await, 0);
    assert_eq!(count_under(app.store().as_ref(), staged).await, 4);

    // Keys from the environment: rotate-master refuses and says what to do.
    let output = Command::new(env!("CARGO_BIN_EXE_thermos"))
        .arg("--config")
        .arg(&app.config_path)
        .args(["keys", "rotate-master"])
        .env("THERMOS_MASTER_KEY", app.old.text.expose_secret())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("THERMOS_MASTER_KEY=OLD,NEW"), "{stderr}");
    assert!(!stderr.contains(app.old.text.expose_secret()));
    assert_eq!(key_ids_in(&app.key_path), [staged, old], "the key file is untouched");
    app.stop().await;
}

//! The real `thermos` binary as a process: killed mid-work and restarted on
//! the same SQLite file, and its log output and database file searched for
//! secrets.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ADMIN_KEY, PROVIDER, config_toml, eventually};
use serde_json::{Value, json};
use thermos_testprovider::{Fault, IssuedGrant, ProviderOptions, TestProvider};

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    /// Starts `thermos serve` and waits until it says where it listens.
    async fn start(config: &Path, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_thermos"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("THERMOS_ADMIN_KEY", ADMIN_KEY)
            .env(
                "RUST_LOG",
                "debug,hyper=info,h2=info,sqlx=info,reqwest=info,rustls=info,tower=info",
            )
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start thermos");
        let mut listen = None;
        let found = eventually(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            listen = text
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["msg"] == "thermos is serving")
                .and_then(|l| l["listen"].as_str().map(str::to_owned));
            std::future::ready(listen.is_some())
        })
        .await;
        assert!(
            found,
            "server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            child,
            base: format!("http://{}", listen.unwrap()),
            log,
        }
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    /// A failed test must not leave a server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn import_all(http: &reqwest::Client, base: &str, grants: &[IssuedGrant], expires_in: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, grant) in grants.iter().enumerate() {
        let body = json!({"project": "p1", "provider": PROVIDER, "external_id": format!("user-{i}"),
            "access_token": grant.access_token, "refresh_token": grant.refresh_token, "expires_in": expires_in});
        let (status, created) = call(
            http,
            reqwest::Method::POST,
            format!("{base}/v1/connections"),
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    ids
}

fn write_config(dir: &Path, provider: &TestProvider) -> PathBuf {
    let path = dir.join("thermos.toml");
    let refresh = "request_timeout = \"5s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"\n";
    std::fs::write(&path, config_toml(dir, &provider.token_url(), true, refresh)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_work_and_restarting_it_loses_and_duplicates_nothing() {
    // A strict rotating provider with a reuse grace window (as Atlassian,
    // Xero, Okta have): a response lost in the crash can be retried once.
    let provider = TestProvider::start(ProviderOptions {
        access_token_ttl: Duration::from_secs(3),
        reuse_grace: Duration::from_secs(60),
        latency: Duration::from_millis(150),
        ..ProviderOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("run1.log")).await;
    let grants: Vec<_> = (0..60).map(|_| provider.issue_grant()).collect();
    let ids = import_all(&http, &server.base, &grants, 2).await;

    // Kill it while refreshes are in flight.
    let busy = eventually(Duration::from_secs(20), || {
        std::future::ready(provider.refreshes() >= 40 && provider.in_flight() > 0)
    })
    .await;
    assert!(busy, "no refresh in flight to interrupt");
    server.kill();
    let refreshes_at_kill = provider.refreshes();

    let mut server = Server::start(&config, dir.path().join("run2.log")).await;
    let base = server.base.clone();
    let restart_log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        restart_log.contains("released leases left by a previous run"),
        "the kill interrupted no refresh:\n{restart_log}"
    );
    let all_refreshed_again = eventually(Duration::from_secs(30), || {
        let (http, base, ids) = (&http, &base, &ids);
        async move {
            let (_, page) = call(
                http,
                reqwest::Method::GET,
                format!("{base}/v1/connections?limit=1000"),
                None,
            )
            .await;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            data.len() == ids.len()
                && data
                    .iter()
                    .all(|c| c["status"] == "active" && c["refresh_count"].as_i64().unwrap_or(0) >= 2)
        }
    })
    .await;
    assert!(all_refreshed_again, "not every connection recovered after the restart");
    assert!(provider.refreshes() > refreshes_at_kill);

    // Nothing lost: every connection hands out a token the provider accepts.
    for id in &ids {
        let (status, token) = call(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/connections/{id}/token"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{token}");
        assert!(
            provider.access_token_is_valid(token["access_token"].as_str().unwrap()),
            "{id} holds a dead token"
        );
    }
    // Nothing duplicated: one row per account, never two refreshes of one grant at once, no grant revoked.
    let (_, page) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/connections?limit=1000"),
        None,
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), ids.len());
    for grant in &grants {
        assert!(!provider.is_revoked(&grant.grant));
        assert_eq!(provider.max_in_flight_for(&grant.grant), 1);
    }
    assert_eq!(
        provider.reuse_detected(),
        0,
        "a refresh token was reused outside the grace window"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_appears_in_the_logs_or_the_database_file() {
    let provider = TestProvider::start(ProviderOptions {
        access_token_ttl: Duration::from_secs(2),
        ..ProviderOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("serve.log")).await;
    let base = server.base.clone();
    let grants: Vec<_> = (0..5).map(|_| provider.issue_grant()).collect();
    let ids = import_all(&http, &base, &grants, 2).await;
    let mut secrets: Vec<String> = vec![ADMIN_KEY.into(), thermos_testprovider::DEFAULT_CLIENT_SECRET.into()];
    for g in &grants {
        secrets.push(g.access_token.clone());
        secrets.push(g.refresh_token.clone());
    }

    // Exercise success, failures, a dead grant, forced refreshes and bad requests.
    provider.push_faults([
        Fault::Unavailable,
        Fault::Malformed,
        Fault::RateLimited { retry_after_secs: 1 },
    ]);
    provider.revoke(&grants[4].grant);
    let refreshed = eventually(Duration::from_secs(20), || {
        std::future::ready(provider.refreshes() >= 10)
    })
    .await;
    assert!(refreshed);
    for id in &ids[..4] {
        let (status, token) = call(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/connections/{id}/token"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{token}");
        let access = token["access_token"].as_str().unwrap().to_owned();
        let (_, forced) = call(
            &http,
            reqwest::Method::POST,
            format!("{base}/v1/connections/{id}/refresh"),
            Some(json!({"rejected_token": access})),
        )
        .await;
        secrets.push(access);
        secrets.push(forced["access_token"].as_str().unwrap_or_default().to_owned());
    }
    for g in &grants {
        secrets.extend(provider.current_refresh_token(&g.grant));
    }
    let (status, _) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/connections"),
        Some(json!({"provider": "nope", "external_id": "x", "access_token": grants[0].access_token})),
    )
    .await;
    assert_eq!(status, 400);
    server.terminate();

    let log = std::fs::read(&server.log).unwrap();
    assert!(log.len() > 1000, "the log is suspiciously short");
    let log_text = String::from_utf8_lossy(&log).into_owned();
    assert!(
        log_text.contains("refreshed") && log_text.contains("refresh failed"),
        "log lacks refresh lines"
    );
    let mut files = vec![("log", log)];
    for name in ["thermos.db", "thermos.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            files.push((name, bytes));
        }
    }
    let secrets: Vec<_> = secrets.into_iter().filter(|s| s.len() >= 8).collect();
    assert!(secrets.len() >= 20);
    for (name, bytes) in &files {
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret appears in clear in {name}"
            );
        }
    }
    // Every log line is JSON with the agreed fields.
    for line in log_text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            value["ts"].is_string() && value["level"].is_string() && value["msg"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_refreshes_in_flight_finish_and_persist_so_no_grant_is_lost() {
    // No reuse grace at all: a rotated token that was not stored would kill the grant.
    let provider = TestProvider::start(ProviderOptions {
        access_token_ttl: Duration::from_secs(3),
        latency: Duration::from_millis(400),
        ..ProviderOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("run1.log")).await;
    let grants: Vec<_> = (0..30).map(|_| provider.issue_grant()).collect();
    let ids = import_all(&http, &server.base, &grants, 2).await;

    let busy = eventually(Duration::from_secs(20), || {
        std::future::ready(provider.in_flight() >= 5)
    })
    .await;
    assert!(busy, "no refreshes in flight to interrupt");
    server.terminate();
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("shutdown requested") && log.contains("thermos stopped"),
        "{log}"
    );
    assert_eq!(provider.in_flight(), 0, "shutdown did not wait for refreshes in flight");

    let server = Server::start(&config, dir.path().join("run2.log")).await;
    for id in &ids {
        let (status, token) = call(
            &http,
            reqwest::Method::GET,
            format!("{}/v1/connections/{id}/token", server.base),
            None,
        )
        .await;
        assert_eq!(status, 200, "{token}");
        assert!(provider.access_token_is_valid(token["access_token"].as_str().unwrap()));
    }
    for grant in &grants {
        assert!(!provider.is_revoked(&grant.grant), "a grant died across the shutdown");
    }
    assert_eq!(provider.reuse_detected(), 0);
    let mut server = server;
    server.terminate();
}

fn thermos(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_thermos"))
        .args(args)
        .env_remove("THERMOS_ADMIN_KEY")
        .output()
        .expect("run thermos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_project_keys_and_shows_connections_with_their_attempts() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let config_arg = config.to_str().unwrap();
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("serve.log")).await;

    // A key made by the CLI works against the running server, for its project only.
    let (ok, out) = thermos(&["--config", config_arg, "keys", "create", "--project", "p1"]);
    assert!(ok, "{out}");
    let key = out
        .lines()
        .find(|l| l.starts_with("thk_"))
        .expect("key printed")
        .to_owned();
    let grant = provider.issue_grant();
    let body = json!({"provider": PROVIDER, "external_id": "user-1", "access_token": grant.access_token,
        "refresh_token": grant.refresh_token, "expires_in": 3600});
    let response = http
        .post(format!("{}/v1/connections", server.base))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refreshed = http
        .post(format!("{}/v1/connections/{id}/refresh", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);

    let (ok, list) = thermos(&["--config", config_arg, "connections", "list", "--project", "p1"]);
    assert!(ok, "{list}");
    assert!(
        list.contains(&id) && list.contains("active") && list.contains("1 connection(s)"),
        "{list}"
    );
    let (ok, show) = thermos(&["--config", config_arg, "connections", "show", &id]);
    assert!(ok, "{show}");
    assert!(
        show.contains("user-1") && show.contains("forced") && show.contains("refreshed"),
        "{show}"
    );
    assert!(!show.contains(&grant.access_token) && !show.contains(&grant.refresh_token));
    server.terminate();

    // Bad input is refused with a message naming the problem.
    let (ok, out) = thermos(&["--config", config_arg, "connections", "show", "nope"]);
    assert!(!ok && out.contains("connection id"), "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[refresh]\nmargin = \"5 minutes please\"\n[[provider]]\nslug = \"x\"\ntoken_url = \"http://auth.example.com/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n").unwrap();
    let (ok, out) = thermos(&["--config", bad.to_str().unwrap(), "serve"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("refresh.margin") && out.contains("provider[0].token_url"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_pauses_the_app_until_the_fixed_config_is_reloaded_with_sighup() {
    let provider = TestProvider::start(ProviderOptions {
        client_secret: "rotated-s3cret".into(),
        ..ProviderOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("serve.log")).await;
    let base = server.base.clone();
    let grants: Vec<_> = (0..20).map(|_| provider.issue_grant()).collect();
    let ids = import_all(&http, &base, &grants, 2).await;

    let paused = eventually(Duration::from_secs(15), || {
        let (http, base) = (&http, &base);
        async move {
            let (_, providers) = call(http, reqwest::Method::GET, format!("{base}/v1/providers"), None).await;
            providers["data"][0]["paused"]["reason"] == "client_invalid"
        }
    })
    .await;
    assert!(paused, "the app was not paused");
    let (_, page) = call(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/connections?limit=100"),
        None,
    )
    .await;
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] != "needs_reauth")
    );

    // The operator puts the new secret in the file and sends SIGHUP.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(thermos_testprovider::DEFAULT_CLIENT_SECRET, "rotated-s3cret"),
    )
    .unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status();
    let resumed = eventually(Duration::from_secs(20), || {
        let (http, base, ids) = (&http, &base, &ids);
        async move {
            let (_, page) = call(
                http,
                reqwest::Method::GET,
                format!("{base}/v1/connections?limit=100"),
                None,
            )
            .await;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            data.len() == ids.len()
                && data
                    .iter()
                    .all(|c| c["status"] == "active" && c["refresh_count"].as_i64() >= Some(1))
        }
    })
    .await;
    assert!(resumed, "connections did not refresh after the reload");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(!log.contains("rotated-s3cret"), "the secret reached the log");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_before_a_kill_is_delivered_after_the_restart() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let receiver = common::receiver::Receiver::start(0).await;
    receiver.set_failing(true);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[security]\n", "[security]\nallow_private_targets = true\n", 1),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("run1.log")).await;
    let (status, hook) = call(
        &http,
        reqwest::Method::POST,
        format!("{}/v1/webhooks", server.base),
        Some(json!({"project": "p1", "url": receiver.url()})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let grants = [provider.issue_grant()];
    let ids = import_all(&http, &server.base, &grants, 3600).await;
    // The receiver is down: the event is committed but not delivered when the process dies.
    let tried = eventually(Duration::from_secs(15), || {
        let (http, base) = (&http, &server.base);
        async move {
            let (_, events) = call(
                http,
                reqwest::Method::GET,
                format!("{base}/v1/events?type=connection.created"),
                None,
            )
            .await;
            events["data"][0]["deliveries"][0]["attempts"].as_u64() >= Some(1)
        }
    })
    .await;
    assert!(tried, "no delivery attempt was made");
    server.kill();
    assert!(receiver.received().is_empty());

    receiver.set_failing(false);
    let mut server = Server::start(&config, dir.path().join("run2.log")).await;
    let (_, events) = call(
        &http,
        reqwest::Method::GET,
        format!("{}/v1/events/{}", server.base, "x"),
        None,
    )
    .await;
    assert_eq!(events["error"]["code"], 1603);
    let event_id = {
        let (_, events) = call(
            &http,
            reqwest::Method::GET,
            format!("{}/v1/events?type=connection.created", server.base),
            None,
        )
        .await;
        events["data"][0]["id"].as_str().unwrap().to_owned()
    };
    // Nothing to do but wait: the delivery is retried with backoff (first retry after about 5 s).
    let delivered = eventually(Duration::from_secs(15), || {
        std::future::ready(!receiver.received().is_empty())
    })
    .await;
    assert!(delivered, "the event was not delivered after the restart");
    let got = &receiver.received()[0];
    assert_eq!(got.body["type"], "connection.created");
    assert_eq!(got.body["id"], event_id.as_str());
    assert_eq!(got.body["data"]["connection_id"], ids[0].as_str());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_repairs_only_the_matching_connections_and_only_when_confirmed() {
    let app = common::spawn_app_with(common::AppOptions {
        manual_clock: true,
        ..Default::default()
    })
    .await;
    let connections = app.import_many(5, 600).await;
    for (_, grant) in &connections[..2] {
        app.provider.revoke(&grant.grant);
    }
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    assert_eq!(app.statuses().await.get("needs_reauth"), Some(&2));
    let config = app.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        config_toml(app.dir.path(), &app.provider.token_url(), false, ""),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let args = [
        "--config",
        config,
        "connections",
        "reset",
        "--provider",
        PROVIDER,
        "--status",
        "needs_reauth",
    ];

    // No terminal to ask: it says what it would do and changes nothing.
    let (ok, out) = thermos(&args);
    assert!(!ok && out.contains("would reset 2 needs_reauth connection(s)"), "{out}");
    assert_eq!(app.statuses().await.get("needs_reauth"), Some(&2));

    let (ok, out) = thermos(&[&args[..], &["--yes"]].concat());
    assert!(ok && out.contains("reset 2 of 2"), "{out}");
    assert_eq!(app.statuses().await.get("active"), Some(&5));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_run_whose_process_is_killed_is_marked_stale_after_a_restart() {
    // Slow answers: the run's first batch hangs for seconds, so the kill
    // lands mid-batch (the heartbeat must beat during a batch, too).
    let provider = TestProvider::start(ProviderOptions {
        latency: Duration::from_secs(3),
        ..ProviderOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &provider);
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[runs]\nstale_after = \"2s\"\n");
    std::fs::write(&config, toml).unwrap();
    let http = reqwest::Client::new();
    let mut server = Server::start(&config, dir.path().join("run1.log")).await;
    let grants: Vec<_> = (0..40).map(|_| provider.issue_grant()).collect();
    import_all(&http, &server.base, &grants, 3600).await;
    server.terminate();

    let mut cli = Command::new(env!("CARGO_BIN_EXE_thermos"))
        .args(["--config", config.to_str().unwrap(), "refresh", "--provider", PROVIDER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start thermos refresh");
    let loaded = thermos::config::Config::load_from(Some(&config), std::env::vars()).unwrap();
    let store = thermos::app::open_store(&loaded).await.unwrap();
    let beating = eventually(Duration::from_secs(20), || async {
        let runs = store.list_runs(10).await.unwrap();
        runs.first().is_some_and(|run| {
            run.status == thermos_store::run::RunStatus::Running && run.heartbeat_at > run.started_at
        })
    })
    .await;
    assert!(beating, "no running run with a heartbeat");
    let before_kill = store.list_runs(1).await.unwrap().remove(0);
    assert!(before_kill.counts.succeeded < 40, "the run ended before the kill");
    let run_id = before_kill.id.clone();
    cli.kill().expect("SIGKILL");
    let _ = cli.wait();

    let mut server = Server::start(&config, dir.path().join("run2.log")).await;
    let path = format!("{}/v1/runs/{run_id}", server.base);
    let marked = eventually(Duration::from_secs(20), || async {
        call(&http, reqwest::Method::GET, path.clone(), None).await.1["status"] == "failed"
    })
    .await;
    let (_, run) = call(&http, reqwest::Method::GET, path.clone(), None).await;
    assert!(marked, "the dead run stayed running: {run}");
    assert_eq!(
        (&run["stale"], &run["trigger"]),
        (&json!(true), &json!("manual")),
        "{run}"
    );
    server.terminate();
}

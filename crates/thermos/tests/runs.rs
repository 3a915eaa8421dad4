//! Bulk refresh runs end to end: `POST /v1/runs` over many connections,
//! outcomes counted and judged against the failure threshold, stale runs
//! marked by a serving instance, the sweep.

mod common;

use std::time::Duration;

use common::{AppOptions, PROVIDER, TestApp, eventually, spawn_app_with};
use serde_json::{Value, json};
use thermos::engine::upkeep::Sweep;
use thermos_store::run::{NewRun, RunStatus};

async fn manual_app() -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        ..AppOptions::default()
    })
    .await
}

/// Starts a run over every connection of the provider and waits for its end.
async fn run_to_end(app: &TestApp) -> Value {
    let (status, run) = app.post("/v1/runs", json!({"provider": PROVIDER})).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["status"], "running");
    let id = run["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/runs/{id}");
    assert!(
        eventually(Duration::from_secs(60), || async {
            app.get(&path).await.1["status"] != "running"
        })
        .await,
        "the run never finished"
    );
    app.get(&path).await.1
}

/// 200 connections, the grants of the first `revoked` of them revoked.
async fn app_with_revoked(revoked: usize) -> TestApp {
    let app = manual_app().await;
    let connections = app.import_many(200, 3600).await;
    for (_, grant) in connections.iter().take(revoked) {
        assert!(app.provider.revoke(&grant.grant));
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_over_200_connections_with_15_percent_failing_ends_failed_with_the_right_counts() {
    let app = app_with_revoked(30).await;
    let run = run_to_end(&app).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        (&run["total"], &run["succeeded"], &run["failed"], &run["skipped"]),
        (&json!(200), &json!(170), &json!(30), &json!(0)),
        "{run}"
    );
    assert_eq!(run["failures_by_code"], json!({"invalid_grant": 30}));
    assert!(!run["finished_at"].is_null());
    let (_, listed) = app.get("/v1/runs").await;
    assert_eq!(listed["data"][0]["id"], run["id"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_over_200_connections_with_5_percent_failing_ends_succeeded() {
    let app = app_with_revoked(10).await;
    let run = run_to_end(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!((&run["succeeded"], &run["failed"]), (&json!(190), &json!(10)), "{run}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serving_instance_marks_a_run_whose_heartbeat_stopped_stale_on_its_own() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        extra_toml: "[runs]\nstale_after = \"1s\"\n".into(),
        ..AppOptions::default()
    })
    .await;
    let now = app.engine.now();
    let store = app.engine.store();
    let run = |id: &str, started_ago: u64| NewRun {
        id: id.into(),
        trigger: "manual".into(),
        filter: json!({}),
        failure_threshold: 0.1,
        owner: "a-dead-process".into(),
        started_at: now - Duration::from_secs(started_ago),
    };
    store.insert_run(run("run_dead", 600)).await.unwrap();
    store.insert_run(run("run_alive", 0)).await.unwrap();
    // No call here: the instance's upkeep marks it, every half `stale_after`.
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get("/v1/runs/run_dead").await.1["status"] == "failed"
        })
        .await,
        "the dead run was never marked"
    );
    let (_, shown) = app.get("/v1/runs/run_dead").await;
    assert_eq!((&shown["status"], &shown["stale"]), (&json!("failed"), &json!(true)));
    let alive = store.get_run("run_alive").await.unwrap().unwrap();
    assert_eq!(
        (alive.status, alive.stale),
        (RunStatus::Running, false),
        "a fresh heartbeat is not stale"
    );
    app.stop().await;
}

/// An app (scheduler off) with three connections: two whose planned
/// refresh the clock has left 100 s or more behind, one due in an hour.
async fn app_with_two_overdue() -> (TestApp, Vec<String>) {
    let app = manual_app().await;
    let mut ids = Vec::new();
    for (i, expires_in) in [600, 600, 7200].into_iter().enumerate() {
        let grant = app.provider.issue_grant();
        ids.push(app.import(&grant, &format!("user-{i}"), expires_in).await);
    }
    app.clock().advance(Duration::from_secs(400));
    (app, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_refreshes_only_the_overdue_connections_and_records_nothing_when_none_are() {
    let (app, ids) = app_with_two_overdue().await;
    let run = app
        .engine
        .sweep(Duration::from_secs(60))
        .await
        .unwrap()
        .expect("two are overdue");
    assert_eq!((run.trigger.as_str(), run.status), ("sweep", RunStatus::Succeeded));
    assert_eq!((run.counts.total, run.counts.succeeded), (2, 2), "{run:?}");
    assert_eq!(run.filter["overdue_by_seconds"], json!(60));
    assert_eq!(app.provider.token_call_log().len(), 2);
    for (id, refreshed) in ids.iter().zip([1, 1, 0]) {
        assert_eq!(app.connection(id).await["refresh_count"], json!(refreshed), "{id}");
    }

    assert!(app.engine.sweep(Duration::from_secs(60)).await.unwrap().is_none());
    assert_eq!(app.get("/v1/runs").await.1["data"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_upkeep_sweeps_on_its_schedule() {
    let (app, ids) = app_with_two_overdue().await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let sweep = Sweep {
        every: Duration::from_millis(100),
        overdue_by: Duration::from_secs(60),
    };
    let upkeep = tokio::spawn({
        let (engine, cancel) = (app.engine.clone(), cancel.clone());
        async move { engine.drive_upkeep(Some(sweep), cancel).await }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get("/v1/runs").await.1["data"][0]["status"] == "succeeded"
        })
        .await,
        "no sweep ran"
    );
    cancel.cancel();
    upkeep.await.unwrap();
    let (_, runs) = app.get("/v1/runs").await;
    assert_eq!(
        runs["data"].as_array().unwrap().len(),
        1,
        "later sweeps found nothing: {runs}"
    );
    assert_eq!(runs["data"][0]["trigger"], "sweep");
    assert_eq!(app.connection(&ids[0]).await["refresh_count"], json!(1));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_request_with_bad_fields_is_rejected_naming_each() {
    let app = manual_app().await;
    let (status, body) = app
        .post(
            "/v1/runs",
            json!({"status": "sleepy", "connection_ids": ["nope"], "failure_threshold": 2.0}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for field in ["status:", "connection_ids:", "failure_threshold:"] {
        assert!(message.contains(field), "{field} missing from {message}");
    }
    assert_eq!(app.get("/v1/runs/run_missing").await.0, 404);
    app.stop().await;
}

/// Writes a config for `provider` in `dir`, and `count` of its grants as
/// connections straight into the store (sealed with the config's key).
async fn store_with_connections(
    dir: &std::path::Path,
    provider: &thermos_testprovider::TestProvider,
    count: usize,
) -> (std::path::PathBuf, Vec<thermos_testprovider::IssuedGrant>) {
    use thermos_core::id::ConnectionId;
    use thermos_core::seal::Field;
    let path = dir.join("thermos.toml");
    let refresh = "request_timeout = \"5s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"2s\"\n";
    let toml = common::config_toml(dir, &provider.token_url(), false, refresh);
    std::fs::write(&path, &toml).unwrap();
    let config = thermos::config::Config::from_toml_str(&toml).unwrap();
    let (key, _) = config.load_or_create_master_key().unwrap();
    let store = thermos::app::open_store(&config).await.unwrap();
    let now = thermos::engine::truncate_ms(time::OffsetDateTime::now_utc());
    let mut grants = Vec::new();
    for i in 0..count {
        let grant = provider.issue_grant();
        let id = ConnectionId::generate();
        let new = thermos_store::NewConnection {
            id,
            project: "p1".into(),
            provider: PROVIDER.into(),
            external_id: format!("user-{i}"),
            access_token: key.seal(&id, Field::AccessToken, &grant.access_token.clone().into()),
            refresh_token: Some(key.seal(&id, Field::RefreshToken, &grant.refresh_token.clone().into())),
            token_type: "Bearer".into(),
            scope: None,
            issued_at: now,
            expires_at: now + Duration::from_secs(3600),
            metadata: json!({}),
            next_refresh_at: now + Duration::from_secs(3000),
            grant: Default::default(),
            refresh_token_expires_at: None,
        };
        store.insert_connection(new, now, Vec::new()).await.unwrap();
        grants.push(grant);
    }
    (path, grants)
}

/// Runs `thermos --config <config> <args…>` off the async threads (the
/// test provider serves on them); returns (success, stdout).
async fn thermos(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_thermos"));
    command.arg("--config").arg(config).args(args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    (output.status.success(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_refresh_command_exits_zero_for_a_succeeded_run_and_non_zero_for_a_failed_one() {
    let provider = thermos_testprovider::TestProvider::start(Default::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, grants) = store_with_connections(dir.path(), &provider, 20).await;

    assert!(provider.revoke(&grants[0].grant));
    let (ok, out) = thermos(&config, &["refresh", "--provider", PROVIDER]).await;
    assert!(ok, "1 of 20 failing (5 %) is under the 10 % threshold: {out}");
    assert!(out.contains("succeeded") && out.contains("invalid_grant: 1"), "{out}");

    // The first is needs_reauth now (skipped); 4 of 19 attempts fail.
    for grant in &grants[1..5] {
        assert!(provider.revoke(&grant.grant));
    }
    let (ok, out) = thermos(&config, &["refresh", "--provider", PROVIDER]).await;
    assert!(!ok, "4 of 19 failing is over the threshold: {out}");
    assert!(out.contains(": failed") && out.contains("invalid_grant: 4"), "{out}");
    assert!(out.contains("skipped 1"), "{out}");

    let (ok, out) = thermos(&config, &["runs", "list"]).await;
    assert!(ok && out.lines().count() == 2, "{out}");
    let (ok, _) = thermos(&config, &["refresh"]).await;
    assert!(!ok, "refreshing everything needs --all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_run_stops_after_its_current_batch() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        provider: thermos_testprovider::ProviderOptions {
            latency: Duration::from_millis(150),
            ..Default::default()
        },
        ..AppOptions::default()
    })
    .await;
    app.import_many(64, 3600).await;
    let (status, run) = app.post("/v1/runs", json!({"provider": PROVIDER})).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let (status, cancelled) = app.post(&format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202, "{cancelled}");
    let path = format!("/v1/runs/{id}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.get(&path).await.1["status"] != "running"
        })
        .await
    );
    let run = app.get(&path).await.1;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(run["succeeded"].as_u64().unwrap() < 64, "{run}");
    assert_eq!(app.post(&format!("/v1/runs/{id}/cancel"), json!({})).await.0, 404);
    app.stop().await;
}

//! Bulk refresh runs end to end: `POST /v1/runs` over many connections,
//! outcomes counted and judged against the failure threshold, stale runs
//! marked after a restart.

mod common;

use std::time::Duration;

use common::{AppOptions, PROVIDER, TestApp, eventually, spawn_app_with};
use serde_json::{Value, json};
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
async fn a_running_run_whose_heartbeat_stopped_is_marked_stale() {
    let app = manual_app().await;
    let now = app.engine.now();
    let store = app.engine.store();
    let dead = NewRun {
        id: "run_dead".into(),
        trigger: "manual".into(),
        filter: json!({}),
        failure_threshold: 0.1,
        owner: "a-dead-process".into(),
        started_at: now - Duration::from_secs(600),
    };
    store.insert_run(dead).await.unwrap();
    assert_eq!(app.engine.mark_stale_runs().await.unwrap(), 1);
    let run = store.get_run("run_dead").await.unwrap().unwrap();
    assert_eq!((run.status, run.stale), (RunStatus::Failed, true));
    let (_, shown) = app.get("/v1/runs/run_dead").await;
    assert_eq!((&shown["status"], &shown["stale"]), (&json!("failed"), &json!(true)));
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

//! Live instances: a serving instance registers itself, `/ready` lists the
//! live ones, and the provider limits are shared among them.

mod common;

use std::time::Duration;

use common::{AppOptions, PROVIDER, eventually, spawn_app_with};
use serde_json::json;
use thermos_store::instance::InstanceBeat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_lists_the_live_instances_and_the_limits_are_shared_among_them() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        provider_toml: String::new(),
        ..AppOptions::default()
    })
    .await;
    let own = app.engine.settings().owner.clone();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get("/ready").await.1["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 1)
        })
        .await,
        "the instance never registered"
    );
    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["instance"], json!(own));
    assert_eq!(ready["instances"][0]["name"], json!(own));

    // A second instance beats; at this instance's next beat each takes half.
    let now = app.engine.now();
    let other = InstanceBeat {
        name: "thermos-2-other".into(),
        started_at: now,
        engine_enabled: true,
        version: "0.0.0".into(),
    };
    app.engine.store().beat_instance(other, now).await.unwrap();
    let live = app.engine.beat_instance(now, false).await.unwrap();
    assert_eq!(live.len(), 2);
    let (_, providers) = app.get("/v1/providers").await;
    let provider = providers["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == PROVIDER)
        .unwrap()
        .clone();
    assert_eq!(provider["shared_by_instances"], json!(2), "{provider}");
    assert_eq!(app.get("/ready").await.1["instances"].as_array().unwrap().len(), 2);

    // The other one stops beating: 15 s later it is no longer live.
    app.clock().advance(Duration::from_secs(16));
    let live = app.engine.beat_instance(now, false).await.unwrap();
    let names: Vec<&str> = live.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, [own.as_str()]);
    assert_eq!(app.engine.guards().share(), 1);

    // A graceful stop removes this instance's row.
    let store = std::sync::Arc::clone(app.engine.store());
    app.stop().await;
    let far_past = time::OffsetDateTime::UNIX_EPOCH;
    let names: Vec<_> = store
        .live_instances(far_past)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert!(!names.contains(&own), "{names:?}");
}

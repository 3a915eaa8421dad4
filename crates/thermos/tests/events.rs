//! Events end to end: real state changes made by the engine and the API
//! reach a project's webhook once each, signed; an outage over 1,000
//! connections reaches operators as one alert and one all-clear.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::receiver::{Received, Receiver};
use common::{AppOptions, TestApp, spawn_app_with};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use thermos_testprovider::Fault;

async fn app_with(extra_toml: String) -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        allow_private_targets: true,
        refresh_toml: "backoff_initial = \"1s\"\nbackoff_max = \"2s\"\nrequest_timeout = \"2s\"\n".into(),
        extra_toml,
        ..AppOptions::default()
    })
    .await
}

/// Runs the dispatcher until nothing is due.
async fn deliver(app: &TestApp) {
    for _ in 0..100 {
        let wake = app.dispatcher.tick(app.engine.now()).await.unwrap();
        if wake != thermos::engine::NextWake::Now {
            return;
        }
    }
}

/// Checks a Standard Webhooks signature independently of Thermos's signer.
fn signature_is_valid(received: &Received, secret: &str) -> bool {
    let header = |name: &str| received.headers[name].to_str().unwrap().to_owned();
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.raw);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    signature.split(' ').any(|s| s == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_reaches_the_projects_webhook_once_with_a_valid_signature() {
    let receiver = Receiver::start(0).await;
    let app = app_with(String::new()).await;
    let (status, hook) = app
        .post("/v1/webhooks", json!({"project": "p1", "url": receiver.url()}))
        .await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();

    // created → refresh_failed → recovered → (grant revoked) → needs_reauth
    let (id, grant) = app.import_many(1, 600).await.remove(0);
    app.provider.push_faults([Fault::Unavailable]);
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    app.clock().advance(Duration::from_secs(2));
    app.drain().await;
    assert_eq!(app.connection(&id).await["status"], "active");
    app.provider.revoke(&grant.grant);
    let (status, _) = app.post(&format!("/v1/connections/{id}/refresh"), json!({})).await;
    assert_eq!(status, 409);
    deliver(&app).await;
    deliver(&app).await;

    let received = receiver.received();
    let kinds: Vec<_> = received
        .iter()
        .map(|r| r.body["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "connection.created",
            "connection.refresh_failed",
            "connection.recovered",
            "connection.needs_reauth"
        ]
    );
    let mut ids: Vec<_> = received
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each event once");
    for r in &received {
        assert!(signature_is_valid(r, &secret), "bad signature on {}", r.body);
        assert_eq!(r.body["project"], "p1");
        assert_eq!(r.body["data"]["connection_id"], id.as_str());
        assert_eq!(r.body["id"], r.headers["webhook-id"].to_str().unwrap());
        let text = String::from_utf8_lossy(&r.raw);
        assert!(
            !text.contains(&grant.refresh_token) && !text.contains(&grant.access_token),
            "a token in an event"
        );
    }
    assert_eq!(received[1].body["data"]["error"]["code"], "server_error");
    assert_eq!(received[3].body["data"]["lost_response"], false);
    let (_, events) = app
        .get(&format!("/v1/events?connection_id={id}&delivery_status=delivered"))
        .await;
    assert_eq!(events["data"].as_array().unwrap().len(), 4, "{events}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_failing_at_once_make_one_alert_and_one_all_clear() {
    let operators = Receiver::start(0).await;
    let app = app_with(format!(
        "\n[alerts]\nwebhook_url = \"{}\"\nformat = \"json\"\n",
        operators.url()
    ))
    .await;
    let aggregator = app.aggregator.clone().expect("alerts configured");
    app.import_many(1000, 600).await;
    app.provider.set_fault(Fault::Unavailable);
    app.clock().advance(Duration::from_secs(331));

    // Three minutes of outage, then the provider comes back.
    let mut alerts_during_outage = 0;
    for step in 0..200 {
        if step == 90 {
            app.provider.clear_fault();
            alerts_during_outage = operators.received().len();
        }
        app.drain().await;
        aggregator.tick(app.engine.now()).await.unwrap();
        deliver(&app).await;
        app.clock().advance(Duration::from_secs(2));
    }
    let alerts = operators.received();
    let summaries: Vec<_> = alerts
        .iter()
        .map(|a| format!("{}: {}", a.body["severity"], a.body["summary"]))
        .collect();
    println!("alerts received:\n{}", summaries.join("\n"));
    assert_eq!(alerts_during_outage, 1, "one alert for the outage: {summaries:?}");
    assert_eq!(alerts.len(), 2, "then one all-clear: {summaries:?}");
    assert_eq!(alerts[0].body["type"], "thermos.alert");
    assert_ne!(alerts[0].body["severity"], "resolved");
    assert_eq!(alerts[1].body["severity"], "resolved");
    assert_eq!(app.statuses().await.get("active"), Some(&1000));
    app.stop().await;
}

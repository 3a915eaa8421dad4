//! The SSRF guard end to end: webhook registration through the real API
//! refuses loopback, private, link-local and metadata targets unless
//! `security.allow_private_targets` is set, and a webhook whose name later
//! resolves to loopback (DNS rebinding) is not delivered to. Names resolve
//! through an injected [`StaticLookup`]: this machine has no internet.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::receiver::Receiver;
use common::{AppOptions, TestApp, spawn_app_with};
use serde_json::json;
use thermos::egress::{EgressPolicy, StaticLookup};
use thermos_store::outbox::NewEvent;

const PUBLIC: &str = "93.184.216.34";

async fn spawn(allow_private_targets: bool, lookup: Arc<StaticLookup>) -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        allow_private_targets,
        lookup: Some(lookup),
        ..AppOptions::default()
    })
    .await
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn webhooks_to_loopback_private_and_metadata_addresses_need_allow_private_targets() {
    let lookup = Arc::new(StaticLookup::default());
    lookup.set("internal.corp.test", &[ip(PUBLIC), ip("10.0.0.5")]);
    let targets = [
        ("http://127.0.0.1:9/hook", "127.0.0.1 is a loopback address"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        (
            "http://169.254.169.254/latest/meta-data",
            "169.254.169.254 is a cloud metadata address",
        ),
        ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("http://localhost:9/hook", "localhost is a loopback address"),
        ("https://[::ffff:10.1.2.3]/hook", "is a private address"),
        (
            "https://metadata.google.internal/",
            "metadata.google.internal is a cloud metadata address",
        ),
        (
            "https://internal.corp.test/hook",
            "internal.corp.test resolves to a private address 10.0.0.5",
        ),
    ];
    let refusing = spawn(false, Arc::clone(&lookup)).await;
    for (url, reason) in targets {
        let (status, body) = refusing
            .post("/v1/webhooks", json!({"project": "p1", "url": url}))
            .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(1600)),
            "{url}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("url: "), "{url}: {message}");
        assert!(message.contains(reason), "{url}: {message}");
        assert!(
            message.contains("set security.allow_private_targets = true to allow"),
            "{url}: {message}"
        );
    }
    let (_, listed) = refusing.get("/v1/webhooks").await;
    assert_eq!(listed["data"], json!([]), "nothing was registered");
    refusing.stop().await;

    let allowing = spawn(true, lookup).await;
    for (url, _) in targets {
        let (status, body) = allowing
            .post("/v1/webhooks", json!({"project": "p1", "url": url}))
            .await;
        assert_eq!(status, 201, "{url}: {body}");
    }
    allowing.stop().await;
}

#[tokio::test]
async fn a_webhook_whose_name_rebinds_to_loopback_after_registration_is_not_delivered_to() {
    let receiver = Receiver::start(0).await;
    let lookup = Arc::new(StaticLookup::default());
    lookup.set("hooks.rebind.test", &[ip(PUBLIC)]);
    let app = spawn(false, Arc::clone(&lookup)).await;
    let url = format!("https://hooks.rebind.test:{}/hook", receiver.addr.port());
    let (status, body) = app.post("/v1/webhooks", json!({"project": "p1", "url": url})).await;
    assert_eq!(status, 201, "registered while the name is public: {body}");

    // The attacker's DNS now answers loopback, where the receiver listens.
    lookup.set("hooks.rebind.test", &[ip("127.0.0.1"), ip("::1")]);
    let event = NewEvent {
        id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
        kind: "connection.failing".into(),
        project: Some("p1".into()),
        connection_id: None,
        provider: None,
        data: json!({}),
        at: app.engine.now(),
    };
    app.engine.store().insert_events(vec![event.clone()]).await.unwrap();
    app.dispatcher.tick(app.engine.now()).await.expect("tick");

    assert!(receiver.received().is_empty(), "nothing reached loopback");
    let (status, shown) = app.get(&format!("/v1/events/{}", event.id)).await;
    assert_eq!(status, 200, "{shown}");
    let delivery = &shown["deliveries"][0];
    assert_eq!(
        delivery["status"], "pending",
        "a failed attempt, retried later: {shown}"
    );
    let error = delivery["attempt_log"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("hooks.rebind.test resolves to a loopback address 127.0.0.1"),
        "{shown}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_guarded_client_connects_only_to_the_addresses_it_checked() {
    let receiver = Receiver::start(0).await;
    let lookup = Arc::new(StaticLookup::default());
    lookup.set("hooks.rebind.test", &[ip("127.0.0.1")]);
    let url = format!("http://hooks.rebind.test:{}/hook", receiver.addr.port());

    let allowing = EgressPolicy::new(true, lookup.clone())
        .client_builder()
        .build()
        .unwrap();
    let response = allowing.post(&url).body("{}").send().await.expect("allowed: sent");
    assert_eq!(response.status(), 204);
    assert_eq!(receiver.received().len(), 1, "the injected answer was used");

    let refusing = EgressPolicy::new(false, lookup).client_builder().build().unwrap();
    let error = refusing.post(&url).body("{}").send().await.unwrap_err();
    let chain = thermos::engine::error_chain(&error);
    assert!(chain.contains("resolves to a loopback address 127.0.0.1"), "{chain}");
    assert_eq!(receiver.received().len(), 1, "the refused request never arrived");
}

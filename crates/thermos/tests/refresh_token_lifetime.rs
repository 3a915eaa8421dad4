//! Refresh-token lifetime end to end (docs/refresh-token-lifetime.md): the
//! lifetime a provider or an importer states is stored and shown, the
//! upkeep warns once per expiry (`connection.refresh_token_expiring`), and a
//! provider's `keep_alive` refreshes idle connections in time.

mod common;

use std::time::Duration;

use common::{AppOptions, TestApp, spawn_app_with, ts};
use serde_json::{Value, json};
use thermos_testprovider::ProviderOptions;

const DAY: u64 = 24 * 3600;
const EXPIRING: &str = "connection.refresh_token_expiring";

async fn manual_app(provider: ProviderOptions, provider_toml: &str) -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        provider,
        provider_toml: provider_toml.into(),
        ..AppOptions::default()
    })
    .await
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}

/// Imports a fresh grant of the test provider with `extra` fields.
async fn import_with(app: &TestApp, external_id: &str, extra: Value) -> (u16, Value) {
    let grant = app.provider.issue_grant();
    let mut body = json!({
        "project": "p1",
        "provider": common::PROVIDER,
        "external_id": external_id,
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
    });
    if let (Value::Object(map), Value::Object(extra)) = (&mut body, extra) {
        map.extend(extra);
    }
    app.post("/v1/connections", body).await
}

async fn warnings(app: &TestApp, connection_id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/v1/events?type={EXPIRING}&connection_id={connection_id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

fn advance(app: &TestApp, by: Duration) {
    app.clock().advance(by);
}

#[tokio::test]
async fn the_lifetime_a_refresh_response_states_is_stored_and_shown() {
    let app = manual_app(
        ProviderOptions {
            refresh_token_ttl: Some(days(60)),
            ..ProviderOptions::default()
        },
        "",
    )
    .await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;
    assert_eq!(app.connection(&id).await["refresh_token_expires_at"], Value::Null);

    let due = app.connection(&id).await["next_refresh_at"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance_to(&due);
    app.tick().await;

    let after = app.connection(&id).await;
    assert_eq!(after["refresh_count"], 1, "{after}");
    let refreshed_at = ts(&after["last_refreshed_at"]);
    assert_eq!(
        ts(&after["refresh_token_expires_at"]),
        refreshed_at + days(60),
        "{after}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_new_refresh_token_without_a_lifetime_clears_the_stored_one() {
    let app = manual_app(ProviderOptions::default(), "").await;
    let (status, created) = import_with(
        &app,
        "user-1",
        json!({"expires_in": 3600, "refresh_token_expires_in": 20 * DAY}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    assert!(created["refresh_token_expires_at"].is_string(), "{created}");

    app.advance_to(created["next_refresh_at"].as_str().unwrap());
    app.tick().await;
    let after = app.connection(id).await;
    assert_eq!(after["refresh_count"], 1, "{after}");
    assert_eq!(after["refresh_token_expires_at"], Value::Null, "{after}");
    app.stop().await;
}

#[tokio::test]
async fn an_import_and_new_tokens_store_the_refresh_token_lifetime_they_state() {
    let app = manual_app(ProviderOptions::default(), "").await;
    let now = app.engine.now();
    let (status, created) = import_with(
        &app,
        "user-1",
        json!({"expires_in": 3600, "refresh_token_expires_in": 10 * DAY}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(ts(&created["refresh_token_expires_at"]), now + days(10), "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.connection(&id).await["refresh_token_expires_at"],
        created["refresh_token_expires_at"]
    );

    let (status, absolute) = import_with(
        &app,
        "user-2",
        json!({"expires_in": 3600, "refresh_token_expires_at": "2030-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 201, "{absolute}");
    assert_eq!(absolute["refresh_token_expires_at"], "2030-01-01T00:00:00Z");

    let (status, both) = import_with(
        &app,
        "user-3",
        json!({"refresh_token_expires_in": 60, "refresh_token_expires_at": "2030-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 400, "{both}");
    let (status, negative) = import_with(&app, "user-4", json!({"refresh_token_expires_in": -1})).await;
    assert_eq!(status, 400, "{negative}");

    let grant = app.provider.issue_grant();
    let replaced = app
        .send(
            app.http
                .put(app.url(&format!("/v1/connections/{id}/tokens")))
                .json(&json!({
                    "access_token": grant.access_token,
                    "refresh_token": grant.refresh_token,
                    "expires_in": 3600,
                    "refresh_token_expires_in": 3 * DAY,
                })),
            common::ADMIN_KEY,
        )
        .await;
    assert_eq!(replaced.0, 200, "{}", replaced.1);
    assert_eq!(ts(&replaced.1["refresh_token_expires_at"]), now + days(3));
    app.stop().await;
}

#[tokio::test]
async fn the_expiry_warning_is_emitted_once_within_warn_before_and_again_for_a_new_lifetime() {
    // Access tokens outlive refresh tokens: the refresh a margin before the
    // refresh token's expiry is what renews it.
    let app = manual_app(
        ProviderOptions {
            access_token_ttl: days(30),
            refresh_token_ttl: Some(days(10)),
            ..ProviderOptions::default()
        },
        "refresh_token_warn_before = \"7d\"\n",
    )
    .await;
    let (status, created) = import_with(
        &app,
        "user-1",
        json!({"expires_in": 30 * DAY, "refresh_token_expires_in": 10 * DAY}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let first_expiry = created["refresh_token_expires_at"].clone();

    advance(&app, days(2));
    app.engine.warn_expiring_refresh_tokens().await.unwrap();
    assert!(warnings(&app, &id).await.is_empty(), "8 days left: no warning yet");

    advance(&app, days(1) + Duration::from_secs(1));
    app.engine.warn_expiring_refresh_tokens().await.unwrap();
    let warned = warnings(&app, &id).await;
    assert_eq!(warned.len(), 1, "{warned:?}");
    let data = &warned[0]["data"];
    assert_eq!(data["refresh_token_expires_at"], first_expiry);
    assert_eq!(data["expires_in_seconds"], 7 * DAY - 1);
    assert_eq!(data["expired"], false);
    assert_eq!(data["provider"], common::PROVIDER);
    assert_eq!(data["connection_id"], id.as_str());
    assert_eq!(warned[0]["project"], "p1");

    advance(&app, days(1));
    app.engine.warn_expiring_refresh_tokens().await.unwrap();
    assert_eq!(warnings(&app, &id).await.len(), 1, "warned once per expiry");

    // Refreshed before the refresh token dies; the new one lives 10 days.
    let before = app.connection(&id).await;
    assert!(ts(&before["next_refresh_at"]) < ts(&first_expiry), "{before}");
    app.advance_to(before["next_refresh_at"].as_str().unwrap());
    app.tick().await;
    let after = app.connection(&id).await;
    assert_eq!(after["refresh_count"], 1, "{after}");
    assert_ne!(after["refresh_token_expires_at"], first_expiry);
    app.engine.warn_expiring_refresh_tokens().await.unwrap();
    assert_eq!(warnings(&app, &id).await.len(), 1, "the new refresh token has 10 days");

    advance(&app, days(3) + Duration::from_secs(1));
    app.engine.warn_expiring_refresh_tokens().await.unwrap();
    let warned = warnings(&app, &id).await;
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert_eq!(
        warned[0]["data"]["refresh_token_expires_at"],
        after["refresh_token_expires_at"]
    );
    app.stop().await;
}

#[tokio::test]
async fn keep_alive_refreshes_an_idle_connection_at_its_interval() {
    let app = manual_app(
        ProviderOptions {
            access_token_ttl: days(90),
            ..ProviderOptions::default()
        },
        "keep_alive = \"30d\"\n",
    )
    .await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 90 * DAY).await;
    let imported = app.connection(&id).await;
    let issued = ts(&imported["created_at"]);
    let due = ts(&imported["next_refresh_at"]);
    assert!(due <= issued + days(30) && due >= issued + days(29), "{imported}");

    advance(&app, days(29));
    app.tick().await;
    assert_eq!(app.connection(&id).await["refresh_count"], 0);

    advance(&app, days(1));
    app.tick().await;
    let after = app.connection(&id).await;
    assert_eq!(after["refresh_count"], 1, "{after}");
    let next = ts(&after["next_refresh_at"]);
    assert!(next <= app.engine.now() + days(30), "{after}");
    app.stop().await;
}

#[tokio::test]
async fn without_keep_alive_an_idle_connection_waits_for_its_access_token() {
    let app = manual_app(
        ProviderOptions {
            access_token_ttl: days(90),
            ..ProviderOptions::default()
        },
        "",
    )
    .await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 90 * DAY).await;
    let imported = app.connection(&id).await;
    assert!(
        ts(&imported["next_refresh_at"]) > ts(&imported["created_at"]) + days(89),
        "{imported}"
    );

    advance(&app, days(30));
    app.tick().await;
    assert_eq!(app.connection(&id).await["refresh_count"], 0);
    app.stop().await;
}

/// Opens `url` without following redirects; Thermos's own URLs (its
/// `public_url` names the configured port, 0) go to the test server.
/// Returns the redirect's target.
async fn follow(app: &TestApp, url: &str) -> String {
    let parsed = reqwest::Url::parse(url).unwrap();
    let thermos = !url.starts_with(&app.provider.base_url()) && parsed.host_str() == Some("127.0.0.1");
    let target = if thermos {
        let query = parsed.query().map(|q| format!("?{q}")).unwrap_or_default();
        app.url(&format!("{}{query}", parsed.path()))
    } else {
        url.to_owned()
    };
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = browser.get(target).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 302, "{url}");
    response.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_connect_session_stores_the_lifetime_of_the_code_exchange() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let app = manual_app(
        ProviderOptions {
            bind,
            refresh_token_ttl: Some(days(180)),
            ..ProviderOptions::default()
        },
        &format!("authorization_url = \"http://{bind}/authorize\"\nscopes = [\"read\"]\n"),
    )
    .await;
    let (status, session) = app
        .post(
            "/v1/connect/sessions",
            json!({"project": "p1", "provider": common::PROVIDER, "external_id": "user-1",
                   "redirect_after": "http://127.0.0.1:9/done"}),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let to_provider = follow(&app, session["url"].as_str().unwrap()).await;
    let to_callback = follow(&app, &to_provider).await;
    follow(&app, &to_callback).await;

    let (_, done) = app
        .get(&format!("/v1/connect/sessions/{}", session["id"].as_str().unwrap()))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let connection = app.connection(done["connection_id"].as_str().unwrap()).await;
    assert_eq!(
        ts(&connection["refresh_token_expires_at"]),
        ts(&connection["created_at"]) + days(180),
        "{connection}"
    );
    app.stop().await;
}

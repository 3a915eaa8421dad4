//! Connect sessions end to end: the real server and the test provider's
//! authorization endpoint on loopback, a browser that follows redirects by
//! hand (session → start URL → provider → callback → `redirect_after`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{AppOptions, PROVIDER, TestApp, spawn_app_with};
use serde_json::{Value, json};
use thermos_testprovider::ProviderOptions;
use thermos_testprovider::authorize::s256;

const REDIRECT_AFTER: &str = "http://127.0.0.1:9/done?from=test";

/// A Thermos whose provider has an authorization endpoint. The provider's
/// port is chosen first so that the config can name it.
async fn spawn(manual_clock: bool) -> TestApp {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    spawn_app_with(AppOptions {
        provider: ProviderOptions {
            bind,
            ..ProviderOptions::default()
        },
        manual_clock,
        provider_toml: format!(
            "authorization_url = \"http://{bind}/authorize\"\nscopes = [\"read\", \"offline_access\"]\n"
        ),
        ..AppOptions::default()
    })
    .await
}

/// A browser: no API key, no redirects followed.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One browser step's answer.
struct Step {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Step {
    fn location(&self) -> &str {
        self.location
            .as_deref()
            .unwrap_or_else(|| panic!("no redirect: {} {}", self.status, self.body))
    }

    fn query(&self) -> HashMap<String, String> {
        reqwest::Url::parse(self.location())
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }
}

/// Opens `url` in the browser; Thermos's own URLs (its `public_url` names
/// the configured listen port, 0) go to the test server.
async fn open(app: &TestApp, url: &str) -> Step {
    let parsed = reqwest::Url::parse(url).unwrap();
    let thermos = !url.starts_with(&app.provider.base_url()) && parsed.host_str() == Some("127.0.0.1");
    let target = if thermos {
        let query = parsed.query().map(|q| format!("?{q}")).unwrap_or_default();
        app.url(&format!("{}{query}", parsed.path()))
    } else {
        url.to_owned()
    };
    let response = browser().get(target).send().await.unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let location = header("location");
    if thermos {
        // Every browser answer of Thermos is uncached and sends no referrer.
        assert_eq!(header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
    }
    Step {
        status,
        location,
        body: response.text().await.unwrap(),
    }
}

async fn create_session(app: &TestApp, body: Value) -> Value {
    let (status, session) = app.post("/v1/connect/sessions", body).await;
    assert_eq!(status, 201, "{session}");
    session
}

fn session_body(external_id: &str) -> Value {
    json!({"project": "p1", "provider": PROVIDER, "external_id": external_id, "redirect_after": REDIRECT_AFTER})
}

/// Start URL → provider; returns the provider's redirect to the callback.
async fn to_provider_and_back(app: &TestApp, session: &Value) -> Step {
    let start = open(app, session["url"].as_str().unwrap()).await;
    assert_eq!(start.status, 302, "{}", start.body);
    assert!(
        start.location().starts_with(&app.provider.authorize_url()),
        "{}",
        start.location()
    );
    let back = open(app, start.location()).await;
    assert_eq!(back.status, 302, "{}", back.body);
    assert!(back.location().contains("/oauth/callback?"), "{}", back.location());
    back
}

/// The whole flow; returns the final redirect's query.
async fn connect(app: &TestApp, external_id: &str) -> HashMap<String, String> {
    let session = create_session(app, session_body(external_id)).await;
    let back = to_provider_and_back(app, &session).await;
    let done = open(app, back.location()).await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert!(
        done.location().starts_with("http://127.0.0.1:9/done?from=test&"),
        "{}",
        done.location()
    );
    done.query()
}

async fn session_of(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/connect/sessions/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn events_of(app: &TestApp, kind: &str, connection_id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/v1/events?type={kind}&connection_id={connection_id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_full_flow_creates_an_active_connection_whose_tokens_are_served_and_refreshed() {
    let app = spawn(false).await;
    let session = create_session(&app, session_body("user-1")).await;
    let id = session["id"].as_str().unwrap();
    assert!(id.starts_with("cs_"));
    assert!(session["url"].as_str().unwrap().ends_with(&format!("/connect/{id}")));
    assert_eq!(session["status"], "pending");
    assert_eq!(session["scopes"], json!(["read", "offline_access"]));
    assert!(session["expires_at"].is_string());

    // The start URL sends the browser to the provider with PKCE.
    let start = open(&app, session["url"].as_str().unwrap()).await;
    assert_eq!(start.status, 302);
    let authorize = start.query();
    assert_eq!(authorize["response_type"], "code");
    assert_eq!(authorize["client_id"], app.provider.client_id());
    assert_eq!(authorize["code_challenge_method"], "S256");
    assert_eq!(authorize["code_challenge"].len(), 43);
    assert_eq!(authorize["scope"], "read offline_access");
    assert!(authorize["redirect_uri"].ends_with("/oauth/callback"));
    assert!(authorize["state"].len() >= 43);

    let back = open(&app, start.location()).await;
    let done = open(&app, back.location()).await;
    assert_eq!(done.status, 302, "{}", done.body);
    let outcome = done.query();
    assert_eq!(outcome["status"], "connected");
    assert_eq!(outcome["from"], "test");
    assert_eq!(outcome["session_id"], id);
    let connection_id = outcome["connection_id"].clone();

    let connection = app.connection(&connection_id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["project"], "p1");
    assert_eq!(connection["external_id"], "user-1");
    let shown = session_of(&app, id).await;
    assert_eq!(shown["status"], "completed");
    assert_eq!(shown["connection_id"], connection_id.as_str());

    // The tokens are the provider's and refresh like any grant's.
    let (status, token) = app.get(&format!("/v1/connections/{connection_id}/token")).await;
    assert_eq!(status, 200, "{token}");
    let first = token["access_token"].as_str().unwrap().to_owned();
    assert!(app.provider.access_token_is_valid(&first));
    let (status, refreshed) = app
        .post(
            &format!("/v1/connections/{connection_id}/refresh"),
            json!({"rejected_token": first}),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_ne!(refreshed["access_token"], first.as_str());
    assert!(
        app.provider
            .access_token_is_valid(refreshed["access_token"].as_str().unwrap())
    );
    let grants = app.provider.authorized_grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(app.provider.refreshes(), 1);
    assert_eq!(app.provider.reuse_detected(), 0);
    assert!(!app.provider.is_revoked(&grants[0]));

    let created = events_of(&app, "connection.created", &connection_id).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["session_id"], id);

    // The audit log holds the session's creation by the key, and the
    // connection's creation through the session.
    let audit = app
        .engine
        .store()
        .list_audit(thermos_store::audit::AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<_> = audit
        .iter()
        .rev()
        .filter(|r| r.entry.action != "token.read" && r.entry.action != "token.refresh")
        .map(|r| {
            (
                r.entry.actor.as_str(),
                r.entry.action.as_str(),
                r.entry.target.as_deref(),
            )
        })
        .collect();
    let through_session = format!("connect:{id}");
    assert_eq!(
        actions,
        [
            ("admin", "connect_session.create", Some(id)),
            (
                through_session.as_str(),
                "connection.create",
                Some(connection_id.as_str())
            ),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_state_is_refused_and_changes_nothing() {
    let app = spawn(false).await;
    let session = create_session(&app, session_body("user-1")).await;
    let back = to_provider_and_back(&app, &session).await;
    let done = open(&app, back.location()).await;
    assert_eq!(done.status, 302);
    let calls = app.provider.token_calls();
    let replay = open(&app, back.location()).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert!(replay.location.is_none());
    assert!(replay.body.contains("already used"), "{}", replay.body);
    assert_eq!(
        app.provider.token_calls(),
        calls,
        "a replay must not reach the token endpoint"
    );
    assert_eq!(
        session_of(&app, session["id"].as_str().unwrap()).await["status"],
        "completed"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_forged_or_missing_state_is_refused() {
    let app = spawn(false).await;
    let session = create_session(&app, session_body("user-1")).await;
    let back = to_provider_and_back(&app, &session).await;
    let code = back.query()["code"].clone();
    let forged = open(
        &app,
        &app.url(&format!("/oauth/callback?code={code}&state=forged-state-value")),
    )
    .await;
    assert_eq!(forged.status, 400, "{}", forged.body);
    assert!(forged.body.contains("unknown"), "{}", forged.body);
    assert!(!forged.body.contains(&code), "the page must not echo the code");
    let missing = open(&app, &app.url(&format!("/oauth/callback?code={code}"))).await;
    assert_eq!(missing.status, 400);
    assert_eq!(app.provider.authorized_grants().len(), 0);
    // The real state still works: the forgeries consumed nothing.
    let done = open(&app, back.location()).await;
    assert_eq!(done.status, 302, "{}", done.body);
    assert_eq!(done.query()["status"], "connected");
    app.stop().await;
}

#[tokio::test]
async fn opening_the_start_url_again_replaces_the_state() {
    let app = spawn(false).await;
    let session = create_session(&app, session_body("user-1")).await;
    let first = to_provider_and_back(&app, &session).await;
    let second = to_provider_and_back(&app, &session).await;
    let stale = open(&app, first.location()).await;
    assert_eq!(stale.status, 400, "{}", stale.body);
    let done = open(&app, second.location()).await;
    assert_eq!(done.query()["status"], "connected");
    app.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let app = spawn(true).await;
    // Expired before the provider answers.
    let session = create_session(
        &app,
        json!({"project": "p1", "provider": PROVIDER, "external_id": "user-1"}),
    )
    .await;
    let back = to_provider_and_back(&app, &session).await;
    app.clock().advance(Duration::from_secs(10 * 60 + 1));
    let late = open(&app, back.location()).await;
    assert_eq!(late.status, 410, "{}", late.body);
    assert!(late.body.contains("expired"), "{}", late.body);
    let shown = session_of(&app, session["id"].as_str().unwrap()).await;
    assert_eq!(shown["status"], "expired");
    assert_eq!(shown["error"]["code"], "expired");
    assert!(app.provider.authorized_grants().is_empty(), "no code exchanged");
    // Expired before it was opened: the start URL refuses it.
    let session = create_session(&app, session_body("user-2")).await;
    app.clock().advance(Duration::from_secs(10 * 60 + 1));
    let start = open(&app, session["url"].as_str().unwrap()).await;
    assert_eq!(start.status, 410, "{}", start.body);
    let (status, list) = app.get("/v1/connections?project=p1").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_code_issued_for_another_challenge_fails_pkce_verification() {
    let app = spawn(false).await;
    let session = create_session(&app, session_body("user-1")).await;
    let start = open(&app, session["url"].as_str().unwrap()).await;
    // An attacker's authorization request: same state, their own challenge.
    let mut tampered = reqwest::Url::parse(start.location()).unwrap();
    let pairs: Vec<(String, String)> = tampered
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            let v = if k == "code_challenge" {
                s256("an-attackers-own-verifier-of-forty-three-chars-x")
            } else {
                v
            };
            (k, v)
        })
        .collect();
    tampered.query_pairs_mut().clear().extend_pairs(pairs);
    let back = open(&app, tampered.as_str()).await;
    let done = open(&app, back.location()).await;
    assert_eq!(done.status, 302, "{}", done.body);
    let outcome = done.query();
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error"], "invalid_grant");
    assert!(!outcome.contains_key("connection_id"));
    let shown = session_of(&app, session["id"].as_str().unwrap()).await;
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["error"]["code"], "invalid_grant");
    assert!(app.provider.authorized_grants().is_empty());
    let (_, list) = app.get("/v1/connections?project=p1").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_reconnect_keeps_the_connection_id_and_clears_needs_reauth() {
    let app = spawn(false).await;
    let old_grant = app.provider.issue_grant();
    let id = app.import(&old_grant, "user-1", 3600).await;
    app.provider.revoke(&old_grant.grant);
    let (status, body) = app
        .post(
            &format!("/v1/connections/{id}/refresh"),
            json!({"rejected_token": old_grant.access_token}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(app.connection(&id).await["status"], "needs_reauth");

    let outcome = connect(&app, "user-1").await;
    assert_eq!(outcome["status"], "connected");
    assert_eq!(outcome["connection_id"], id, "a reconnect keeps the id");
    let connection = app.connection(&id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["consecutive_failures"], 0);
    assert!(connection["last_error"].is_null());
    let (status, token) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 200, "{token}");
    assert!(
        app.provider
            .access_token_is_valid(token["access_token"].as_str().unwrap())
    );
    let reconnected = events_of(&app, "connection.reconnected", &id).await;
    assert_eq!(reconnected.len(), 1);
    assert_eq!(reconnected[0]["data"]["previous_status"], "needs_reauth");
    assert!(
        events_of(&app, "connection.created", &id).await.len() == 1,
        "only the import created it"
    );
    let (_, list) = app.get("/v1/connections?project=p1").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn access_denied_ends_the_session_failed_and_visible() {
    let app = spawn(false).await;
    app.provider.set_authorize_error(Some("access_denied"));
    let session = create_session(&app, session_body("user-1")).await;
    let back = to_provider_and_back(&app, &session).await;
    assert_eq!(back.query()["error"], "access_denied");
    let done = open(&app, back.location()).await;
    let outcome = done.query();
    assert_eq!(outcome["status"], "failed");
    assert_eq!(outcome["error"], "access_denied");
    let shown = session_of(&app, session["id"].as_str().unwrap()).await;
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["error"]["code"], "access_denied");
    assert!(shown["connection_id"].is_null());
    // Without redirect_after, the browser sees the failure on a page.
    let bare = create_session(
        &app,
        json!({"project": "p1", "provider": PROVIDER, "external_id": "user-2"}),
    )
    .await;
    let back = to_provider_and_back(&app, &bare).await;
    let page = open(&app, back.location()).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("access_denied"), "{}", page.body);
    app.stop().await;
}

#[tokio::test]
async fn a_session_is_refused_without_an_authorization_url_or_with_an_unsafe_redirect_after() {
    let app = common::spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/connect/sessions",
            json!({"provider": PROVIDER, "external_id": "u"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("authorization_url"),
        "{body}"
    );
    app.stop().await;

    let app = spawn(false).await;
    for (body, needle) in [
        (
            json!({"provider": PROVIDER, "external_id": "u", "redirect_after": "http://app.example.com/"}),
            "redirect_after",
        ),
        (
            json!({"provider": PROVIDER, "external_id": "u", "redirect_after": "javascript:alert(1)"}),
            "redirect_after",
        ),
        (json!({"provider": "nope", "external_id": "u"}), "provider"),
        (json!({"provider": PROVIDER, "external_id": ""}), "external_id"),
        (
            json!({"provider": PROVIDER, "external_id": "u", "scopes": ["a b"]}),
            "scopes",
        ),
    ] {
        let (status, answer) = app.post("/v1/connect/sessions", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    // The browser routes need no key; the API ones do.
    let (status, _) = app
        .send(
            app.http.post(app.url("/v1/connect/sessions")).json(&session_body("u")),
            "wrong-key",
        )
        .await;
    assert_eq!(status, 401);
    let unknown = open(&app, &app.url("/connect/cs_00000000000000000000000000000000")).await;
    assert_eq!(unknown.status, 404);
    let (status, _) = app
        .get("/v1/connect/sessions/cs_00000000000000000000000000000000")
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn no_token_code_state_or_verifier_reaches_a_page_a_session_or_an_event() {
    let app = spawn(false).await;
    let session = create_session(&app, session_body("user-1")).await;
    let start = open(&app, session["url"].as_str().unwrap()).await;
    let state = start.query()["state"].clone();
    let back = open(&app, start.location()).await;
    let code = back.query()["code"].clone();
    let done = open(&app, back.location()).await;
    let connection_id = done.query()["connection_id"].clone();
    let shown = session_of(&app, session["id"].as_str().unwrap()).await.to_string();
    let (_, events) = app.get("/v1/events").await;
    let replay = open(&app, back.location()).await;
    let mut secrets = app.provider.issued_tokens();
    secrets.extend([state, code]);
    for secret in &secrets {
        for (what, text) in [
            ("session", &shown),
            ("events", &events.to_string()),
            ("replay page", &replay.body),
            ("redirect", &done.location().to_owned()),
        ] {
            assert!(!text.contains(secret.as_str()), "{what} leaks a secret");
        }
    }
    assert!(!connection_id.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_connection_with_a_machine_grant_is_not_reconnected_by_a_user() {
    use thermos_core::grant::GrantType;
    use thermos_core::id::ConnectionId;
    use thermos_core::seal::Field;
    use thermos_store::{ConnectionGrant, NewConnection};

    let app = spawn(false).await;
    let id = ConnectionId::generate();
    let now = thermos::engine::truncate_ms(app.engine.now());
    let sealed = app
        .engine
        .key()
        .seal(&id, Field::AccessToken, &"at_machine".to_owned().into());
    let machine = NewConnection {
        id,
        project: "p1".into(),
        provider: PROVIDER.into(),
        external_id: "service-1".into(),
        access_token: sealed,
        refresh_token: None,
        token_type: "Bearer".into(),
        scope: None,
        issued_at: now,
        expires_at: now + Duration::from_secs(3600),
        metadata: json!({}),
        next_refresh_at: now + Duration::from_secs(3300),
        grant: ConnectionGrant {
            grant_type: GrantType::ClientCredentials,
            params: None,
        },
        refresh_token_expires_at: None,
    };
    app.engine
        .store()
        .insert_connection(machine, now, Vec::new())
        .await
        .unwrap();
    let outcome = connect_expecting_failure(&app, "service-1").await;
    assert_eq!(outcome["error"], "grant_type_mismatch");
    let kept = app.connection(&id.to_string()).await;
    assert_eq!(kept["status"], "active");
    assert!(
        events_of(&app, "connection.reconnected", &id.to_string())
            .await
            .is_empty()
    );
    app.stop().await;
}

/// The whole flow for a session expected to fail; the final redirect's query.
async fn connect_expecting_failure(app: &TestApp, external_id: &str) -> HashMap<String, String> {
    let session = create_session(app, session_body(external_id)).await;
    let back = to_provider_and_back(app, &session).await;
    let done = open(app, back.location()).await;
    let outcome = done.query();
    assert_eq!(outcome["status"], "failed", "{outcome:?}");
    let shown = session_of(app, session["id"].as_str().unwrap()).await;
    assert_eq!(shown["status"], "failed");
    outcome
}

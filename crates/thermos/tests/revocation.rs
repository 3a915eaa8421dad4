//! Revocation on delete (RFC 7009), end to end: the real server on port 0
//! and the test provider's `POST /revoke` on loopback.
//!
//! A delete revokes the grant at the provider when the provider has a
//! `revocation_url` (the refresh token, which revokes the whole grant;
//! the access token of a machine connection), deletes the connection
//! whatever the provider answers, and says what happened in the
//! `connection.deleted` event and the `thermos-revocation` header. A refresh
//! in flight is waited for, so the token revoked is the one it rotated to.
//! No token appears in an answer, an event or a log line.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{ADMIN_KEY, AppOptions, PROVIDER, TestApp, spawn_app_with};
use serde_json::{Value, json};
use thermos_testprovider::{IssuedGrant, ProviderOptions, RevocationMode};

const REVOCATION: &str = "revocation_url = \"{provider_url}/revoke\"\n";
const RSA_PRIVATE: &str = include_str!("fixtures/jwt/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/jwt/rsa_public.pem");

/// Every log line of this test binary (the server runs in-process).
fn captured_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        thermos::telemetry::init(LogWriter(Arc::clone(&log)));
        log
    })
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

async fn spawn(provider_toml: &str, provider: ProviderOptions) -> TestApp {
    captured_log();
    spawn_app_with(AppOptions {
        provider,
        provider_toml: provider_toml.to_owned(),
        ..AppOptions::default()
    })
    .await
}

async fn with_revocation() -> TestApp {
    spawn(REVOCATION, ProviderOptions::default()).await
}

/// `DELETE /v1/connections/{path}` with `key`: status, revocation header, body.
async fn delete_with(app: &TestApp, path: &str, key: &str) -> (u16, Option<String>, String) {
    let response = app
        .http
        .delete(app.url(&format!("/v1/connections/{path}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("delete sent");
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("thermos-revocation")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.text().await.unwrap();
    (status, header, body)
}

/// Deletes and checks the answer: 204 with `revocation` in the header.
async fn delete(app: &TestApp, path: &str, revocation: &str) -> String {
    let (status, header, body) = delete_with(app, path, ADMIN_KEY).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(header.as_deref(), Some(revocation), "{body}");
    body
}

/// The one `connection.deleted` event of connection `id`.
async fn deleted_event(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .get(&format!("/v1/events?type=connection.deleted&connection_id={id}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let events = body["data"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    events[0].clone()
}

async fn assert_gone(app: &TestApp, id: &str) {
    let (status, body) = app.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, 404, "{body}");
}

/// A `refresh_token` grant request straight to the provider (not through
/// Thermos): the provider's own word on whether the grant still works.
async fn provider_refresh(app: &TestApp, refresh_token: &str) -> (u16, Value) {
    let response = app
        .http
        .post(app.provider.token_url())
        .basic_auth(
            app.provider.client_id(),
            Some(form_encoded(app.provider.client_secret())),
        )
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// RFC 6749 §2.3.1: Basic credentials are form-encoded first.
fn form_encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// No token the provider issued is in `text`.
fn assert_no_token(app: &TestApp, label: &str, text: &str) {
    for token in app.provider.issued_tokens() {
        assert!(!text.contains(&token), "a token in {label}");
        assert!(!text.contains(&form_encoded(&token)), "a form-encoded token in {label}");
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured_log().lock().unwrap()).into_owned()
}

#[tokio::test]
async fn a_delete_revokes_the_grant_at_the_provider_and_says_so() {
    let app = with_revocation().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    let body = delete(&app, &id, "revoked").await;
    assert_gone(&app, &id).await;

    // The provider revoked the grant: its refresh token is refused, its
    // access token no longer works.
    assert_eq!(app.provider.revocation_requests(), 1);
    assert_eq!(app.provider.grants_revoked_by_request(), 1);
    assert_eq!(app.provider.revocations_refused(), 0);
    assert!(app.provider.is_revoked(&grant.grant));
    assert!(!app.provider.access_token_is_valid(&grant.access_token));
    let (status, answer) = provider_refresh(&app, &grant.refresh_token).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_grant");

    let event = deleted_event(&app, &id).await;
    let data = &event["data"];
    assert_eq!(data["revocation"], "revoked", "{event}");
    assert_eq!(data["revoked_token_type"], "refresh_token", "{event}");
    assert_eq!(data["connection_id"], id.as_str());
    assert_eq!(data["external_id"], "user-1");
    assert_eq!(data["provider"], PROVIDER);
    assert_eq!(event["project"], "p1");

    // Deleting again: 404, no second revocation, no second event.
    let (status, _, _) = delete_with(&app, &id, ADMIN_KEY).await;
    assert_eq!(status, 404);
    assert_eq!(app.provider.revocation_requests(), 1);
    deleted_event(&app, &id).await;

    assert_no_token(&app, "the answer", &body);
    assert_no_token(&app, "the event", &event.to_string());
    assert_no_token(&app, "the log", &log_text());
    app.stop().await;
}

#[tokio::test]
async fn a_provider_that_is_down_does_not_stop_the_delete_and_the_event_says_failed() {
    let app = with_revocation().await;
    app.provider.set_revocation_mode(RevocationMode::Unavailable {
        retry_after_secs: Some(30),
    });
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    delete(&app, &id, "failed").await;
    assert_gone(&app, &id).await;
    assert_eq!(app.provider.revocation_requests(), 1);
    assert!(!app.provider.is_revoked(&grant.grant));

    let event = deleted_event(&app, &id).await;
    let data = &event["data"];
    assert_eq!(data["revocation"], "failed", "{event}");
    assert_eq!(data["revocation_error"]["code"], "server_error", "{event}");
    assert_eq!(data["revocation_error"]["http_status"], 503, "{event}");
    assert_no_token(&app, "the event", &event.to_string());
    assert_no_token(&app, "the log", &log_text());
    app.stop().await;
}

#[tokio::test]
async fn a_provider_without_a_revocation_url_is_skipped() {
    let app = spawn("", ProviderOptions::default()).await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    delete(&app, &id, "skipped").await;
    assert_gone(&app, &id).await;
    assert_eq!(app.provider.revocation_requests(), 0);
    let event = deleted_event(&app, &id).await;
    assert_eq!(event["data"]["revocation"], "skipped", "{event}");
    assert_eq!(event["data"]["revocation_skipped"], "no_revocation_url", "{event}");
    app.stop().await;
}

#[tokio::test]
async fn revoke_false_deletes_without_revoking_and_the_grant_still_works() {
    let app = with_revocation().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    delete(&app, &format!("{id}?revoke=false"), "skipped").await;
    assert_gone(&app, &id).await;
    assert_eq!(app.provider.revocation_requests(), 0);
    let event = deleted_event(&app, &id).await;
    assert_eq!(event["data"]["revocation"], "skipped", "{event}");
    assert_eq!(event["data"]["revocation_skipped"], "not_requested", "{event}");
    let (status, answer) = provider_refresh(&app, &grant.refresh_token).await;
    assert_eq!(status, 200, "{answer}");

    // Anything but a boolean is refused, and nothing is deleted.
    let other = app.provider.issue_grant();
    let id = app.import(&other, "user-2", 3600).await;
    let (status, _, body) = delete_with(&app, &format!("{id}?revoke=maybe"), ADMIN_KEY).await;
    assert_eq!(status, 400, "{body}");
    app.connection(&id).await;
    app.stop().await;
}

#[tokio::test]
async fn a_provider_that_revokes_only_access_tokens_gets_the_access_token() {
    let app = with_revocation().await;
    app.provider
        .set_revocation_mode(RevocationMode::RefreshTokensUnsupported);
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    delete(&app, &id, "revoked").await;
    assert_eq!(app.provider.revocation_requests(), 2);
    assert_eq!(app.provider.access_tokens_revoked(), 1);
    assert!(!app.provider.access_token_is_valid(&grant.access_token));
    let event = deleted_event(&app, &id).await;
    assert_eq!(event["data"]["revoked_token_type"], "access_token", "{event}");

    app.provider.set_revocation_mode(RevocationMode::Unsupported);
    let other = app.provider.issue_grant();
    let id = app.import(&other, "user-2", 3600).await;
    delete(&app, &id, "not_supported").await;
    assert_gone(&app, &id).await;
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_in_flight_is_waited_for_and_the_token_it_rotated_to_is_revoked() {
    let app = spawn(
        REVOCATION,
        ProviderOptions {
            latency: Duration::from_millis(800),
            ..ProviderOptions::default()
        },
    )
    .await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    let refreshing = {
        let http = app.http.clone();
        let url = app.url(&format!("/v1/connections/{id}/refresh"));
        tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(ADMIN_KEY)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    };
    assert!(
        common::eventually(Duration::from_secs(5), || async { app.provider.in_flight() == 1 }).await,
        "the refresh reached the provider"
    );
    delete(&app, &id, "revoked").await;

    // The refresh finished first (its rotated tokens were committed), then
    // the grant was revoked with the refresh token it rotated to.
    let (status, refreshed) = refreshing.await.unwrap();
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(app.provider.refreshes(), 1);
    assert!(app.provider.is_revoked(&grant.grant));
    let fresh = refreshed["access_token"].as_str().unwrap();
    assert!(!app.provider.access_token_is_valid(fresh));
    assert_gone(&app, &id).await;
    app.stop().await;
}

#[tokio::test]
async fn a_project_with_its_own_app_revokes_with_its_own_credentials() {
    // The provider's only client is the project's; the configured one is not.
    let app = spawn(
        REVOCATION,
        ProviderOptions {
            client_id: "project-own-client".into(),
            client_secret: "own/secr+t".into(),
            ..ProviderOptions::default()
        },
    )
    .await;
    let (status, body) = app
        .post(
            "/v1/apps",
            json!({"project": "p1", "provider": PROVIDER,
                "client_id": "project-own-client", "client_secret": "own/secr+t"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let import = |project: &'static str, grant: &IssuedGrant| {
        app.post(
            "/v1/connections",
            json!({"project": project, "provider": PROVIDER, "external_id": "u",
                "access_token": grant.access_token, "refresh_token": grant.refresh_token,
                "expires_in": 3600}),
        )
    };
    let own = app.provider.issue_grant();
    let (status, created) = import("p1", &own).await;
    assert_eq!(status, 201, "{created}");
    let own_id = created["id"].as_str().unwrap().to_owned();
    let configured = app.provider.issue_grant();
    let (status, created) = import("p2", &configured).await;
    assert_eq!(status, 201, "{created}");
    let configured_id = created["id"].as_str().unwrap().to_owned();

    delete(&app, &own_id, "revoked").await;
    assert!(app.provider.is_revoked(&own.grant));
    assert_eq!(app.provider.revocations_refused(), 0);

    // The configured app's credentials are refused: still deleted, failed.
    delete(&app, &configured_id, "failed").await;
    assert_gone(&app, &configured_id).await;
    assert_eq!(app.provider.revocations_refused(), 1);
    assert!(!app.provider.is_revoked(&configured.grant));
    let event = deleted_event(&app, &configured_id).await;
    assert_eq!(event["data"]["revocation_error"]["code"], "invalid_client", "{event}");
    assert_eq!(event["data"]["revocation_error"]["http_status"], 401, "{event}");
    assert_no_token(&app, "the log", &log_text());
    assert!(!log_text().contains("own/secr+t"), "the client secret in the log");
    app.stop().await;
}

#[tokio::test]
async fn machine_connections_revoke_their_access_token_and_never_send_the_private_key() {
    // A manual clock: no background scheduler racing the first issue of
    // the machine tokens at creation (which can hold their lease).
    let app = spawn_app_with(AppOptions {
        provider_toml: REVOCATION.to_owned(),
        manual_clock: true,
        ..AppOptions::default()
    })
    .await;
    captured_log();
    app.provider.register_jwt_key("key-1", RSA_PUBLIC);
    let (status, machine) = app
        .post(
            "/v1/connections",
            json!({"project": "p1", "provider": PROVIDER, "external_id": "bot",
                "grant_type": "client_credentials"}),
        )
        .await;
    assert_eq!(status, 201, "{machine}");
    let (status, jwt) = app
        .post(
            "/v1/connections",
            json!({"project": "p1", "provider": PROVIDER, "external_id": "svc",
                "grant_type": "jwt_bearer", "private_key": RSA_PRIVATE,
                "assertion_claims": {"iss": "svc@example.com", "sub": "user@example.com",
                    "kid": "key-1", "alg": "RS256"}}),
        )
        .await;
    assert_eq!(status, 201, "{jwt}");
    let mut tokens = Vec::new();
    for created in [&machine, &jwt] {
        let id = created["id"].as_str().unwrap();
        let (status, token) = app.get(&format!("/v1/connections/{id}/token")).await;
        assert_eq!(status, 200, "{token}");
        tokens.push(token["access_token"].as_str().unwrap().to_owned());
    }

    for (created, token) in [&machine, &jwt].into_iter().zip(&tokens) {
        let id = created["id"].as_str().unwrap();
        assert!(app.provider.access_token_is_valid(token));
        delete(&app, id, "revoked").await;
        assert!(!app.provider.access_token_is_valid(token));
        let event = deleted_event(&app, id).await;
        assert_eq!(event["data"]["revoked_token_type"], "access_token", "{event}");
        assert_eq!(event["data"]["grant_type"], created["grant_type"], "{event}");
    }
    // One access token each; no refresh token (nor anything else) was sent.
    assert_eq!(app.provider.revocation_requests(), 2);
    assert_eq!(app.provider.access_tokens_revoked(), 2);
    assert_eq!(app.provider.grants_revoked_by_request(), 0);
    app.stop().await;
}

#[tokio::test]
async fn another_projects_key_cannot_delete_or_revoke() {
    let app = with_revocation().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;
    let created = thermos::api_key::create("p2", time::OffsetDateTime::now_utc());
    app.engine.store().insert_api_key(created.record.clone()).await.unwrap();
    let key = secrecy::ExposeSecret::expose_secret(&created.key).to_owned();

    let (status, header, _) = delete_with(&app, &id, &key).await;
    assert_eq!(status, 404);
    assert_eq!(header, None);
    assert_eq!(app.provider.revocation_requests(), 0);
    app.connection(&id).await;
    app.stop().await;
}

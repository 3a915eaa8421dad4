//! Grant types beyond refresh_token (docs/grants.md), end to end: the real
//! server on loopback, the test provider's token endpoint, a manual clock.
//!
//! A `client_credentials` connection and a `jwt_bearer` connection are
//! issued their first token at creation, re-issued before expiry by the
//! scheduler, and at once on a reported 401 — ten concurrent reports of one
//! token cost one call (single flight). The provider verifies every
//! assertion (signature with the registered public key, audience, expiry,
//! a fresh `jti`). A private key that does not parse is refused at import,
//! and the key never appears in an answer.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{AppOptions, PROVIDER, TestApp, spawn_app_with, ts};
use serde_json::{Value, json};
use thermos_testprovider::ProviderOptions;

const RSA_PRIVATE: &str = include_str!("fixtures/jwt/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("fixtures/jwt/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("fixtures/jwt/ec_private.pem");
const EC_PUBLIC: &str = include_str!("fixtures/jwt/ec_public.pem");

async fn manual_app() -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        provider: ProviderOptions {
            access_token_ttl: Duration::from_secs(3600),
            ..ProviderOptions::default()
        },
        ..AppOptions::default()
    })
    .await
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, created) = app.post("/v1/connections", body).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn token(app: &TestApp, id: &str) -> String {
    let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("access_token").to_owned()
}

/// Moves the clock past the connection's planned re-issue (which must be
/// before its token expires) and runs the scheduler.
async fn reach_next_refresh(app: &TestApp, id: &str) {
    let connection = app.connection(id).await;
    let next = ts(&connection["next_refresh_at"]);
    let expires = ts(&connection["expires_at"]);
    assert!(next < expires, "{connection}");
    app.advance_to(connection["next_refresh_at"].as_str().unwrap());
    app.tick().await;
}

/// Ten applications report the same rejected token at once: all get one
/// new token, and the provider sees one call.
async fn ten_concurrent_401_reports(app: &TestApp, id: &str, rejected: &str) -> String {
    let path = format!("/v1/connections/{id}/refresh");
    let reports = (0..10).map(|_| app.post(&path, json!({"rejected_token": rejected})));
    let answers = futures::future::join_all(reports).await;
    let tokens: HashSet<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "every report gets the same new token");
    let fresh = tokens.into_iter().next().unwrap();
    assert_ne!(fresh, rejected);
    fresh
}

#[tokio::test]
async fn a_client_credentials_connection_is_re_issued_before_expiry_and_on_a_reported_401() {
    let app = manual_app().await;
    let created = create(
        &app,
        json!({"project": "p1", "provider": PROVIDER, "external_id": "reports-bot",
            "grant_type": "client_credentials", "scope": "reports.read"}),
    )
    .await;
    // Issued at creation: the answer shows the first token's state.
    assert_eq!(created["grant_type"], "client_credentials");
    assert_eq!(created["status"], "active", "{created}");
    assert_eq!(created["scope"], "reports.read");
    assert_eq!(app.provider.client_credentials_calls(), 1);
    let id = created["id"].as_str().unwrap().to_owned();
    let first = token(&app, &id).await;
    assert!(app.provider.access_token_is_valid(&first));
    assert_eq!(
        app.provider.client_credentials_calls(),
        1,
        "a valid token is served as is"
    );

    // Re-issued `refresh.margin` before expiry, by the scheduler.
    reach_next_refresh(&app, &id).await;
    assert_eq!(app.provider.client_credentials_calls(), 2);
    let second = token(&app, &id).await;
    assert_ne!(second, first);
    assert!(app.provider.access_token_is_valid(&second));

    // A reported 401: re-issued at once, one call for ten reports.
    let third = ten_concurrent_401_reports(&app, &id, &second).await;
    assert_eq!(app.provider.client_credentials_calls(), 3);
    assert!(app.provider.access_token_is_valid(&third));
    assert_eq!(token(&app, &id).await, third);

    let connection = app.connection(&id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["refresh_count"], 3, "{connection}");
    assert_eq!(app.provider.jwt_bearer_calls(), 0);
    assert_eq!(app.provider.refreshes(), 0, "no refresh_token grant was ever sent");
    app.stop().await;
}

#[tokio::test]
async fn a_jwt_bearer_connection_is_re_issued_before_expiry_and_on_a_reported_401_with_verified_assertions() {
    for (alg, private, public) in [("RS256", RSA_PRIVATE, RSA_PUBLIC), ("ES256", EC_PRIVATE, EC_PUBLIC)] {
        let app = manual_app().await;
        app.provider.register_jwt_key("key-1", public);
        let created = create(
            &app,
            json!({"project": "p1", "provider": PROVIDER, "external_id": format!("svc-{alg}"),
                "grant_type": "jwt_bearer", "private_key": private,
                "assertion_claims": {"iss": "svc@example.com", "sub": "user@example.com",
                    "kid": "key-1", "alg": alg, "scope": "calendar"}}),
        )
        .await;
        assert_eq!(created["grant_type"], "jwt_bearer");
        assert_eq!(created["status"], "active", "{alg}: {created}");
        assert_eq!(app.provider.jwt_bearer_calls(), 1);
        let id = created["id"].as_str().unwrap().to_owned();
        let first = token(&app, &id).await;
        assert!(app.provider.access_token_is_valid(&first));

        reach_next_refresh(&app, &id).await;
        assert_eq!(app.provider.jwt_bearer_calls(), 2, "{alg}");
        let second = token(&app, &id).await;
        assert_ne!(second, first);

        let third = ten_concurrent_401_reports(&app, &id, &second).await;
        assert_eq!(app.provider.jwt_bearer_calls(), 3, "{alg}");
        assert!(app.provider.access_token_is_valid(&third));

        // Every assertion was verified and accepted, each with its own jti,
        // addressed to the token endpoint, signed at the engine's clock.
        assert_eq!(app.provider.assertions_refused(), 0);
        let accepted = app.provider.accepted_assertions();
        assert_eq!(accepted.len(), 3);
        let jtis: HashSet<&str> = accepted.iter().map(|c| c["jti"].as_str().unwrap()).collect();
        assert_eq!(jtis.len(), 3, "a fresh jti each time");
        for claims in &accepted {
            assert_eq!(claims["aud"], app.provider.token_url());
            assert_eq!(claims["iss"], "svc@example.com");
            assert_eq!(claims["sub"], "user@example.com");
            assert_eq!(claims["scope"], "calendar");
            let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
            assert!((1..=600).contains(&lifetime), "{claims}");
        }
        assert_eq!(app.provider.refreshes(), 0);
        app.stop().await;
    }
}

#[tokio::test]
async fn an_assertion_the_provider_refuses_makes_a_jwt_bearer_connection_need_reauth() {
    let app = manual_app().await;
    // The provider knows another key under this kid: the signature fails.
    app.provider.register_jwt_key("key-1", RSA_PUBLIC);
    let created = create(
        &app,
        json!({"project": "p1", "provider": PROVIDER, "external_id": "svc",
            "grant_type": "jwt_bearer", "private_key": EC_PRIVATE,
            "assertion_claims": {"iss": "svc", "sub": "user", "kid": "key-1", "alg": "ES256"}}),
    )
    .await;
    assert_eq!(created["status"], "needs_reauth", "{created}");
    assert_eq!(created["last_error"]["code"], "invalid_grant");
    assert_eq!(app.provider.assertions_refused(), 1);
    let id = created["id"].as_str().unwrap();
    let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], 1610);
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_client_pauses_the_app_and_leaves_a_client_credentials_connection_waiting_for_it() {
    let app = manual_app().await;
    app.provider
        .set_fault(thermos_testprovider::fault::Fault::InvalidClient);
    let created = create(
        &app,
        json!({"project": "p1", "provider": PROVIDER, "external_id": "bot", "grant_type": "client_credentials"}),
    )
    .await;
    // The app's trouble, not the connection's: not failing, not needs_reauth.
    assert_eq!(created["status"], "active", "{created}");
    assert_eq!(created["consecutive_failures"], 0);
    let id = created["id"].as_str().unwrap();
    let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 503, "no token was ever issued: {body}");
    app.stop().await;
}

#[tokio::test]
async fn a_private_key_that_does_not_parse_or_a_grant_without_what_it_needs_is_refused_at_import() {
    let app = manual_app().await;
    let claims = json!({"iss": "svc", "sub": "user", "alg": "ES256"});
    let broken = EC_PRIVATE.replace('A', "B").replacen("MI", "XX", 1);
    let cases = [
        (
            json!({"grant_type": "jwt_bearer", "private_key": "not a key", "assertion_claims": claims}),
            "private_key",
        ),
        (
            json!({"grant_type": "jwt_bearer", "private_key": broken, "assertion_claims": claims}),
            "private_key",
        ),
        (
            json!({"grant_type": "jwt_bearer", "private_key": RSA_PRIVATE, "assertion_claims": claims}),
            "private_key",
        ),
        (
            json!({"grant_type": "jwt_bearer", "assertion_claims": claims}),
            "private_key: required",
        ),
        (
            json!({"grant_type": "jwt_bearer", "private_key": EC_PRIVATE}),
            "assertion_claims: required",
        ),
        (
            json!({"grant_type": "jwt_bearer", "private_key": EC_PRIVATE,
                "assertion_claims": {"iss": "svc", "sub": "user", "alg": "HS256"}}),
            "assertion_claims.alg",
        ),
        (
            json!({"grant_type": "jwt_bearer", "private_key": EC_PRIVATE,
                "assertion_claims": {"iss": "svc", "alg": "ES256"}}),
            "assertion_claims",
        ),
        (json!({"grant_type": "password"}), "grant_type"),
        (
            json!({"grant_type": "client_credentials", "refresh_token": "rt"}),
            "refresh_token",
        ),
        (
            json!({"private_key": EC_PRIVATE, "access_token": "at"}),
            "private_key: only",
        ),
        (json!({}), "access_token: required"),
    ];
    for (i, (extra, expected)) in cases.into_iter().enumerate() {
        let mut body = json!({"project": "p1", "provider": PROVIDER, "external_id": format!("case-{i}")});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, answer) = app.post("/v1/connections", body).await;
        assert_eq!(status, 400, "case {i}: {answer}");
        assert_eq!(answer["error"]["code"], 1600);
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "case {i}: {message}");
        for line in EC_PRIVATE
            .lines()
            .chain(RSA_PRIVATE.lines())
            .filter(|l| !l.starts_with("-----"))
        {
            assert!(!answer.to_string().contains(line), "case {i} quotes the key");
        }
    }
    let (_, page) = app.get("/v1/connections").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0, "nothing was created");
    assert_eq!(app.provider.token_calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn the_private_key_never_appears_in_an_answer_and_machine_tokens_are_not_replaced() {
    let app = manual_app().await;
    app.provider.register_jwt_key("key-1", EC_PUBLIC);
    let created = create(
        &app,
        json!({"project": "p1", "provider": PROVIDER, "external_id": "svc", "grant_type": "jwt_bearer",
            "private_key": EC_PRIVATE, "assertion_claims": {"iss": "svc", "sub": "user", "kid": "key-1", "alg": "ES256"}}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut answers = vec![created.to_string()];
    for path in [
        format!("/v1/connections/{id}"),
        "/v1/connections".to_owned(),
        format!("/v1/connections/{id}/attempts"),
        format!("/v1/connections/{id}/token"),
        "/v1/events".to_owned(),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        answers.push(body.to_string());
    }
    let (status, body) = app
        .send(
            app.http
                .put(app.url(&format!("/v1/connections/{id}/tokens")))
                .json(&json!({"access_token": "at", "refresh_token": "rt"})),
            common::ADMIN_KEY,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    answers.push(body.to_string());
    let (status, body) = app.post(&format!("/v1/connections/{id}/refresh"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    answers.push(body.to_string());
    for answer in &answers {
        assert!(!answer.contains("PRIVATE KEY"), "{answer}");
        for line in EC_PRIVATE.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!answer.contains(line), "the key leaked: {answer}");
        }
    }
    // The key still signs after the refused replacement.
    assert_eq!(app.provider.assertions_refused(), 0);
    assert_eq!(app.provider.accepted_assertions().len(), 2);
    app.stop().await;
}

//! The refresh client against the real test provider on loopback: every
//! client authentication method, rotation, and every way a token endpoint
//! fails — with no token or secret ever in an outcome's Debug or detail.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use thermos::provider::{DEFAULT_TTL, ProviderApp, RefreshClient};
use thermos_core::clock::ManualClock;
use thermos_core::oauth::{AuthMethod, RefreshOutcome, TransientFailure, TransientKind};
use thermos_testprovider::{ClientAuth, Fault, ProviderOptions, TestProvider};
use time::macros::datetime;
use url::Url;

const TIMEOUT: Duration = Duration::from_secs(10);

fn app_for(provider: &TestProvider, auth_method: AuthMethod) -> ProviderApp {
    ProviderApp {
        slug: "test".to_owned(),
        token_url: Url::parse(&provider.token_url()).expect("a url"),
        authorization_url: None,
        revocation_url: None,
        client_id: provider.client_id().to_owned(),
        client_secret: Some(SecretString::from(provider.client_secret().to_owned())),
        auth_method,
        scopes: vec!["read".to_owned()],
        scope_separator: ' ',
        extra_params: BTreeMap::new(),
        default_ttl: DEFAULT_TTL,
        max_concurrency: None,
        rate_limit_per_second: None,
        refresh_token_rules: Default::default(),
    }
}

fn clock() -> ManualClock {
    ManualClock::new(datetime!(2026-11-24 10:00 UTC))
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// No token or secret in the outcome's Debug output or message.
fn assert_clean(outcome: &RefreshOutcome, secrets: &[&str]) {
    let shown = format!("{outcome:?} {outcome:#?} {}", outcome.message());
    for s in secrets {
        assert!(!shown.contains(s), "{s:?} leaked into {shown}");
    }
}

fn transient(outcome: RefreshOutcome) -> TransientFailure {
    match outcome {
        RefreshOutcome::Transient(t) => t,
        other => panic!("expected a transient failure, got {other:?}"),
    }
}

async fn provider() -> TestProvider {
    TestProvider::start(ProviderOptions::default()).await
}

#[tokio::test]
async fn a_rotating_refresh_returns_new_tokens_and_the_old_refresh_token_dies() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    let client = RefreshClient::new(TIMEOUT);
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);

    let outcome = client.refresh(&app, &secret(&grant.refresh_token), &clock()).await;
    assert_clean(&outcome, &[&grant.refresh_token, provider.client_secret()]);
    let RefreshOutcome::Refreshed(tokens) = outcome else {
        panic!("not refreshed: {outcome:?}")
    };
    let new_access = tokens.access_token.expose_secret();
    assert!(provider.access_token_is_valid(new_access));
    assert!(!format!("{tokens:?}").contains(new_access));
    let rotated = tokens.refresh_token.expect("a rotated refresh token");
    assert_eq!(
        provider.current_refresh_token(&grant.grant).as_deref(),
        Some(rotated.expose_secret())
    );
    assert_eq!(tokens.expires_in, Duration::from_secs(3595));
    assert_eq!(tokens.token_type, "Bearer");
    let second = client.refresh(&app, &rotated, &clock()).await;
    assert!(matches!(second, RefreshOutcome::Refreshed(_)), "{second:?}");
    assert_clean(&second, &[rotated.expose_secret(), provider.client_secret()]);

    let reused = client.refresh(&app, &secret(&grant.refresh_token), &clock()).await;
    assert!(
        matches!(&reused, RefreshOutcome::InvalidGrant(e) if e.http_status == 400),
        "{reused:?}"
    );
    assert!(provider.is_revoked(&grant.grant));
}

#[tokio::test]
async fn basic_auth_form_encodes_a_secret_with_plus_slash_equals_colon_and_percent() {
    let provider = provider().await;
    assert_eq!(provider.client_secret(), "s3cr+t/=:%");
    let grant = provider.issue_grant();
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    assert!(matches!(outcome, RefreshOutcome::Refreshed(_)), "{outcome:?}");
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_body() {
    let provider = TestProvider::start(ProviderOptions {
        accepted_auth: vec![ClientAuth::Post],
        ..ProviderOptions::default()
    })
    .await;
    let grant = provider.issue_grant();
    let app = app_for(&provider, AuthMethod::ClientSecretPost);
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    assert!(matches!(outcome, RefreshOutcome::Refreshed(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_public_client_sends_only_its_id() {
    let provider = TestProvider::start(ProviderOptions {
        accepted_auth: vec![ClientAuth::None],
        ..ProviderOptions::default()
    })
    .await;
    let grant = provider.issue_grant();
    let mut app = app_for(&provider, AuthMethod::None);
    app.client_secret = None;
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    assert!(matches!(outcome, RefreshOutcome::Refreshed(_)), "{outcome:?}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_client_invalid_not_a_dead_grant() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    let mut app = app_for(&provider, AuthMethod::ClientSecretBasic);
    app.client_secret = Some(secret("rotated-by-someone"));
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    assert!(
        matches!(&outcome, RefreshOutcome::ClientInvalid(e) if e.http_status == 401),
        "{outcome:?}"
    );
    assert_eq!(outcome.error_code(), Some("invalid_client"));
    assert_clean(&outcome, &[&grant.refresh_token, "rotated-by-someone"]);
    assert!(!provider.is_revoked(&grant.grant));
}

#[tokio::test]
async fn extra_params_are_sent_but_cannot_replace_the_grant() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    let mut app = app_for(&provider, AuthMethod::ClientSecretBasic);
    app.extra_params
        .insert("audience".to_owned(), "api://thermos".to_owned());
    app.extra_params
        .insert("grant_type".to_owned(), "client_credentials".to_owned());
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    assert!(matches!(outcome, RefreshOutcome::Refreshed(_)), "{outcome:?}");
    assert_eq!(
        provider.client_credentials_calls(),
        0,
        "the refresh_token grant was sent"
    );
}

#[tokio::test]
async fn a_503_is_a_transient_server_error_and_keeps_its_retry_after() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::Unavailable, Fault::UnavailableRetryAfter { retry_after_secs: 9 }]);
    let client = RefreshClient::new(TIMEOUT);
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let plain = transient(client.refresh(&app, &secret(&grant.refresh_token), &clock()).await);
    assert_eq!(
        (plain.kind, plain.http_status, plain.retry_after),
        (TransientKind::ServerError, Some(503), None)
    );
    let outcome = client.refresh(&app, &secret(&grant.refresh_token), &clock()).await;
    assert_eq!(outcome.retry_after(), Some(Duration::from_secs(9)));
    assert!(!provider.is_revoked(&grant.grant));
}

#[tokio::test]
async fn a_429_is_rate_limited_with_the_providers_retry_after() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::RateLimited { retry_after_secs: 42 }]);
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    assert!(
        matches!(outcome, RefreshOutcome::RateLimited { retry_after: Some(d), http_status: 429 } if d == Duration::from_secs(42)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn malformed_200_bodies_and_gateway_pages_are_transient() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::Malformed, Fault::HtmlOk, Fault::ServerErrorHtml]);
    let client = RefreshClient::new(TIMEOUT);
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let outcome = client.refresh(&app, &secret(&grant.refresh_token), &clock()).await;
        assert_clean(
            &outcome,
            &[&grant.refresh_token, provider.client_secret(), "at_truncat"],
        );
        let t = transient(outcome);
        kinds.push((t.kind, t.http_status));
    }
    assert_eq!(
        kinds,
        [
            (TransientKind::MalformedResponse, Some(200)),
            (TransientKind::MalformedResponse, Some(200)),
            (TransientKind::ServerError, Some(502)),
        ]
    );
    assert_eq!(provider.current_refresh_token(&grant.grant), Some(grant.refresh_token));
}

#[tokio::test]
async fn a_provider_that_never_answers_leaves_the_outcome_unknown() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::Hang]);
    let client = RefreshClient::new(Duration::from_millis(300));
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let outcome = client.refresh(&app, &secret(&grant.refresh_token), &clock()).await;
    assert_clean(&outcome, &[&grant.refresh_token, provider.client_secret()]);
    let t = transient(outcome);
    assert_eq!(
        (t.kind, t.http_status),
        (TransientKind::ResponseLost, None),
        "{}",
        t.detail
    );
    assert!(
        t.detail
            .starts_with(&format!("call token endpoint {}", provider.token_url())),
        "{}",
        t.detail
    );
}

#[tokio::test]
async fn a_closed_port_is_a_network_error_that_names_the_endpoint_but_no_query() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("an address")
    };
    let provider = provider().await;
    let mut app = app_for(&provider, AuthMethod::ClientSecretBasic);
    app.token_url = Url::parse(&format!("http://{closed}/token?api_key=hidden")).expect("a url");
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret("rt_not_sent"), &clock())
        .await;
    assert_clean(&outcome, &["rt_not_sent", provider.client_secret(), "hidden"]);
    let t = transient(outcome);
    assert_eq!((t.kind, t.http_status), (TransientKind::Network, None));
    assert!(
        t.detail
            .starts_with(&format!("call token endpoint http://{closed}/token: ")),
        "{}",
        t.detail
    );
    assert!(t.detail.to_lowercase().contains("connect"), "{}", t.detail);
}

#[tokio::test]
async fn a_body_over_the_cap_is_a_malformed_response() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::Oversized { bytes: 100 * 1024 }]);
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret(&grant.refresh_token), &clock())
        .await;
    let t = transient(outcome);
    assert_eq!((t.kind, t.http_status), (TransientKind::MalformedResponse, Some(200)));
    assert_eq!(
        t.detail,
        "token endpoint answered 200 with a body larger than 65536 bytes"
    );
}

#[tokio::test]
async fn a_lower_cap_applies_to_streamed_bodies_too() {
    let provider = provider().await;
    let grant = provider.issue_grant();
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let client = RefreshClient::new(TIMEOUT).with_max_body_bytes(16);
    let t = transient(client.refresh(&app, &secret(&grant.refresh_token), &clock()).await);
    assert_eq!(t.kind, TransientKind::MalformedResponse);
}

#[tokio::test]
async fn an_unknown_refresh_token_is_invalid_grant_without_echoing_it() {
    let provider = provider().await;
    let app = app_for(&provider, AuthMethod::ClientSecretBasic);
    let outcome = RefreshClient::new(TIMEOUT)
        .refresh(&app, &secret("rt_unknown+/="), &clock())
        .await;
    assert_eq!(outcome.error_code(), Some("invalid_grant"));
    assert_clean(&outcome, &["rt_unknown", provider.client_secret()]);
}

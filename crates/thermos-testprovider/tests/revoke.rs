//! `POST /revoke` (RFC 7009) over real HTTP: client authentication as at the
//! token endpoint, a refresh token revokes its grant family, an access
//! token only itself, an unknown token is 200, and the switchable modes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use thermos_testprovider::{ProviderOptions, RevocationMode, TestProvider};

fn encode(component: &str) -> String {
    form_urlencoded::byte_serialize(component.as_bytes()).collect()
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
    )
}

async fn post(url: String, authorization: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.extend_pairs(pairs);
    let response = reqwest::Client::new()
        .post(url)
        .header("authorization", authorization)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serializer.finish())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn revoke(provider: &TestProvider, token: &str, hint: &str) -> (u16, Value) {
    let authorization = basic(provider.client_id(), provider.client_secret());
    let pairs = [("token", token), ("token_type_hint", hint)];
    post(provider.revoke_url(), &authorization, &pairs).await
}

async fn refresh(provider: &TestProvider, refresh_token: &str) -> (u16, Value) {
    let authorization = basic(provider.client_id(), provider.client_secret());
    let pairs = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
    post(provider.token_url(), &authorization, &pairs).await
}

#[tokio::test]
async fn a_refresh_token_even_a_rotated_one_revokes_the_whole_grant() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    let (status, rotated) = refresh(&provider, &grant.refresh_token).await;
    assert_eq!(status, 200, "{rotated}");
    let access = rotated["access_token"].as_str().unwrap().to_owned();

    let (status, _) = revoke(&provider, &grant.refresh_token, "refresh_token").await;
    assert_eq!(status, 200);
    assert!(provider.is_revoked(&grant.grant));
    assert!(!provider.access_token_is_valid(&access));
    let (status, answer) = refresh(&provider, rotated["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(provider.grants_revoked_by_request(), 1);
    assert_eq!(provider.reuse_detected(), 0, "revocation is not reuse");
}

#[tokio::test]
async fn an_access_token_revokes_only_itself_and_an_unknown_token_is_200() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    let (status, _) = revoke(&provider, &grant.access_token, "access_token").await;
    assert_eq!(status, 200);
    assert!(!provider.access_token_is_valid(&grant.access_token));
    assert!(!provider.is_revoked(&grant.grant));
    assert_eq!(refresh(&provider, &grant.refresh_token).await.0, 200);
    assert!(provider.issued_tokens().contains(&grant.access_token), "still listed");

    let (status, _) = revoke(&provider, "at_never_issued", "access_token").await;
    assert_eq!(status, 200);
    assert_eq!(provider.access_tokens_revoked(), 1);
    assert_eq!(provider.revocation_requests(), 2);
}

#[tokio::test]
async fn wrong_client_credentials_are_refused_and_revoke_nothing() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    let authorization = basic(provider.client_id(), "wrong");
    let pairs = [("token", grant.refresh_token.as_str())];
    let (status, answer) = post(provider.revoke_url(), &authorization, &pairs).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("invalid_client")));
    assert!(!provider.is_revoked(&grant.grant));
    assert_eq!(provider.revocations_refused(), 1);
}

#[tokio::test]
async fn the_modes_answer_503_or_unsupported_token_type() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    provider.set_revocation_mode(RevocationMode::Unavailable {
        retry_after_secs: Some(9),
    });
    assert_eq!(revoke(&provider, &grant.refresh_token, "refresh_token").await.0, 503);
    provider.set_revocation_mode(RevocationMode::RefreshTokensUnsupported);
    let (status, answer) = revoke(&provider, &grant.refresh_token, "refresh_token").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("unsupported_token_type"))
    );
    assert_eq!(revoke(&provider, &grant.access_token, "access_token").await.0, 200);
    provider.set_revocation_mode(RevocationMode::Unsupported);
    assert_eq!(revoke(&provider, &grant.access_token, "access_token").await.0, 400);
    assert!(!provider.is_revoked(&grant.grant));
}

//! The test provider's authorization code flow with PKCE, over real HTTP:
//! `GET /authorize` redirects back with a code bound to the client, the
//! redirect URI and the challenge; the code is exchanged once, with the
//! matching verifier, for a grant that refreshes like any other.

use std::collections::HashMap;

use serde_json::Value;
use thermos_testprovider::authorize::s256;
use thermos_testprovider::{ProviderOptions, TestProvider};

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";
const VERIFIER: &str = "a-verifier-of-at-least-forty-three-characters-0123456789";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Asks `/authorize` with `challenge`; the redirect's query parameters.
async fn authorize(provider: &TestProvider, challenge: &str) -> HashMap<String, String> {
    let url = reqwest::Url::parse_with_params(
        &provider.authorize_url(),
        [
            ("response_type", "code"),
            ("client_id", provider.client_id()),
            ("redirect_uri", REDIRECT),
            ("scope", "read"),
            ("state", "st-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .unwrap();
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT), "{location}");
    reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn exchange(provider: &TestProvider, code: &str, verifier: &str) -> (u16, Value) {
    let response = client()
        .post(provider.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", provider.client_id()),
            ("client_secret", provider.client_secret()),
        ])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_code_exchanged_with_its_verifier_starts_a_grant_and_cannot_be_used_twice() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let back = authorize(&provider, &s256(VERIFIER)).await;
    assert_eq!(back["state"], "st-1");
    let (status, body) = exchange(&provider, &back["code"], VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].as_str().is_some());
    assert_eq!(body["scope"], "read");
    let access = body["access_token"].as_str().unwrap();
    assert!(provider.access_token_is_valid(access));
    let grants = provider.authorized_grants();
    assert_eq!(grants.len(), 1);
    let (status, body) = exchange(&provider, &back["code"], VERIFIER).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    // The replay revoked what the first exchange obtained.
    assert!(provider.is_revoked(&grants[0]));
}

#[tokio::test]
async fn a_verifier_that_does_not_match_the_challenge_is_invalid_grant() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let back = authorize(&provider, &s256(VERIFIER)).await;
    let (status, body) = exchange(&provider, &back["code"], &format!("{VERIFIER}x")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert!(provider.authorized_grants().is_empty());
}

#[tokio::test]
async fn the_error_switch_redirects_back_with_access_denied() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    provider.set_authorize_error(Some("access_denied"));
    let back = authorize(&provider, &s256(VERIFIER)).await;
    assert_eq!(back["error"], "access_denied");
    assert_eq!(back["state"], "st-1");
    assert!(!back.contains_key("code"));
    provider.set_authorize_error(None);
    assert!(authorize(&provider, &s256(VERIFIER)).await.contains_key("code"));
}

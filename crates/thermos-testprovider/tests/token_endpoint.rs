//! The test provider, exercised over real HTTP with reqwest: rotation, reuse
//! detection, strict client authentication and every fault.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use thermos_testprovider::{ClientAuth, ExpiresIn, Fault, ProviderOptions, TestProvider};

fn encode(component: &str) -> String {
    form_urlencoded::byte_serialize(component.as_bytes()).collect()
}

/// Basic credentials done right (RFC 6749 §2.3.1).
fn basic(provider: &TestProvider) -> String {
    let pair = format!("{}:{}", encode(provider.client_id()), encode(provider.client_secret()));
    format!("Basic {}", STANDARD.encode(pair))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.extend_pairs(pairs);
    serializer.finish()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn field(&self, name: &str) -> Option<String> {
        self.json().get(name).and_then(Value::as_str).map(str::to_owned)
    }
}

async fn post(provider: &TestProvider, authorization: Option<&str>, body: String) -> Answer {
    let client = reqwest::Client::new();
    let mut request = client
        .post(provider.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("the provider answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (retry_after, www_authenticate) = (header("retry-after"), header("www-authenticate"));
    Answer {
        status: response.status().as_u16(),
        retry_after,
        www_authenticate,
        text: response.text().await.expect("a body"),
    }
}

async fn refresh(provider: &TestProvider, refresh_token: &str) -> Answer {
    let body = form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]);
    post(provider, Some(&basic(provider)), body).await
}

#[tokio::test]
async fn rotation_issues_a_new_refresh_token_and_uses_up_the_old_one() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    assert!(provider.access_token_is_valid(&grant.access_token));

    let answer = refresh(&provider, &grant.refresh_token).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let json = answer.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(json["scope"], "read write");
    let new_access = answer.field("access_token").expect("an access token");
    let new_refresh = answer.field("refresh_token").expect("a rotated refresh token");
    assert_ne!(new_refresh, grant.refresh_token);
    assert!(provider.access_token_is_valid(&new_access));
    assert_eq!(provider.current_refresh_token(&grant.grant), Some(new_refresh.clone()));
    assert_eq!(provider.refreshes(), 1);

    let again = refresh(&provider, &new_refresh).await;
    assert_eq!(again.status, 200);
    assert_eq!(provider.calls_for(&grant.grant), 2);
    assert_eq!(provider.calls_with(&grant.refresh_token), 1);
    assert_eq!(provider.max_in_flight_for(&grant.grant), 1);
}

#[tokio::test]
async fn reusing_a_used_refresh_token_revokes_the_whole_family() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    let first = refresh(&provider, &grant.refresh_token).await;
    let winner_access = first.field("access_token").expect("an access token");

    let reuse = refresh(&provider, &grant.refresh_token).await;
    assert_eq!(reuse.status, 400);
    assert_eq!(reuse.field("error").as_deref(), Some("invalid_grant"));
    assert_eq!(provider.reuse_detected(), 1);
    assert!(provider.is_revoked(&grant.grant));
    assert!(!provider.access_token_is_valid(&winner_access));
    assert!(!provider.access_token_is_valid(&grant.access_token));
    assert_eq!(provider.current_refresh_token(&grant.grant), None);

    let winner_refresh = first.field("refresh_token").expect("a refresh token");
    let after = refresh(&provider, &winner_refresh).await;
    assert_eq!(after.status, 400, "even the winner's new refresh token is dead");
    assert_eq!(after.field("error").as_deref(), Some("invalid_grant"));
}

#[tokio::test]
async fn a_reuse_inside_the_grace_window_answers_again_with_the_current_refresh_token() {
    let options = ProviderOptions {
        reuse_grace: Duration::from_secs(600),
        ..ProviderOptions::default()
    };
    let provider = TestProvider::start(options).await;
    let grant = provider.issue_grant();
    let first = refresh(&provider, &grant.refresh_token).await;
    let lost = refresh(&provider, &grant.refresh_token).await;
    assert_eq!(lost.status, 200, "{}", lost.text);
    assert_eq!(lost.field("refresh_token"), first.field("refresh_token"));
    assert_eq!(provider.reuse_detected(), 0);
    assert!(!provider.is_revoked(&grant.grant));
}

#[tokio::test]
async fn without_rotation_the_same_refresh_token_keeps_working() {
    let options = ProviderOptions {
        rotation: false,
        ..ProviderOptions::default()
    };
    let provider = TestProvider::start(options).await;
    let grant = provider.issue_grant();
    for _ in 0..3 {
        let answer = refresh(&provider, &grant.refresh_token).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.field("refresh_token"),
            None,
            "like Google: no refresh_token in the answer"
        );
    }
    assert_eq!(provider.current_refresh_token(&grant.grant), Some(grant.refresh_token));
}

#[tokio::test]
async fn an_unknown_refresh_token_is_invalid_grant() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let answer = refresh(&provider, "rt_never_issued").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.field("error").as_deref(), Some("invalid_grant"));
}

#[tokio::test]
async fn a_refresh_token_sent_without_form_encoding_is_not_recognised() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    assert!(grant.refresh_token.contains(['+', '/', '=']));
    let raw = format!("grant_type=refresh_token&refresh_token={}", grant.refresh_token);
    let answer = post(&provider, Some(&basic(&provider)), raw).await;
    assert_eq!(answer.field("error").as_deref(), Some("invalid_grant"));
}

#[tokio::test]
async fn basic_credentials_with_special_characters_must_be_form_encoded() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    assert_eq!(provider.client_secret(), "s3cr+t/=:%");
    let grant = provider.issue_grant();
    assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 200);

    // What reqwest's basic_auth (and many clients) do: no form-encoding first.
    let naive = format!("{}:{}", provider.client_id(), provider.client_secret());
    let body = form(&[("grant_type", "refresh_token"), ("refresh_token", "anything")]);
    let answer = post(&provider, Some(&format!("Basic {}", STANDARD.encode(naive))), body).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.field("error").as_deref(), Some("invalid_client"));
    assert!(answer.www_authenticate.is_some_and(|v| v.starts_with("Basic")));
}

#[tokio::test]
async fn client_secret_post_is_accepted_by_default_and_a_wrong_secret_is_not() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    let (id, secret) = (provider.client_id().to_owned(), provider.client_secret().to_owned());
    let body = |secret: &str, rt: &str| {
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", &id),
            ("client_secret", secret),
        ])
    };
    let ok = post(&provider, None, body(&secret, &grant.refresh_token)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let wrong = post(&provider, None, body("nope", "anything")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.field("error").as_deref(), Some("invalid_client"));
}

#[tokio::test]
async fn a_public_client_is_accepted_only_when_the_provider_allows_it() {
    let strict = TestProvider::start(ProviderOptions::default()).await;
    let grant = strict.issue_grant();
    let public = |id: &str, rt: &str| {
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", id),
        ])
    };
    let refused = post(&strict, None, public(strict.client_id(), &grant.refresh_token)).await;
    assert_eq!(refused.status, 401);

    let options = ProviderOptions {
        accepted_auth: vec![ClientAuth::None],
        ..ProviderOptions::default()
    };
    let open = TestProvider::start(options).await;
    let grant = open.issue_grant();
    let ok = post(&open, None, public(open.client_id(), &grant.refresh_token)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let basic_refused = refresh(&open, &grant.refresh_token).await;
    assert_eq!(basic_refused.status, 401);
}

#[tokio::test]
async fn two_authentication_methods_in_one_request_are_an_invalid_request() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", "x"),
        ("client_id", provider.client_id()),
        ("client_secret", provider.client_secret()),
    ]);
    let answer = post(&provider, Some(&basic(&provider)), body).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.field("error").as_deref(), Some("invalid_request"));
}

#[tokio::test]
async fn a_json_body_or_another_grant_type_is_refused() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let response = reqwest::Client::new()
        .post(provider.token_url())
        .header("authorization", basic(&provider))
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"refresh_token"}"#)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 400);
    let body = form(&[("grant_type", "password")]);
    let answer = post(&provider, Some(&basic(&provider)), body).await;
    assert_eq!(answer.field("error").as_deref(), Some("unsupported_grant_type"));
}

#[tokio::test]
async fn expires_in_can_be_a_string_or_absent() {
    let as_string = TestProvider::start(ProviderOptions {
        expires_in: ExpiresIn::String,
        access_token_ttl: Duration::from_millis(1500),
        ..ProviderOptions::default()
    })
    .await;
    let grant = as_string.issue_grant();
    assert_eq!(
        refresh(&as_string, &grant.refresh_token).await.json()["expires_in"],
        "2"
    );

    let omitted = TestProvider::start(ProviderOptions {
        expires_in: ExpiresIn::Omitted,
        ..ProviderOptions::default()
    })
    .await;
    let grant = omitted.issue_grant();
    assert!(
        refresh(&omitted, &grant.refresh_token)
            .await
            .json()
            .get("expires_in")
            .is_none()
    );
}

#[tokio::test]
async fn an_access_token_with_no_lifetime_is_never_valid() {
    let provider = TestProvider::start(ProviderOptions {
        access_token_ttl: Duration::ZERO,
        ..ProviderOptions::default()
    })
    .await;
    let grant = provider.issue_grant();
    assert!(!provider.access_token_is_valid(&grant.access_token));
    assert!(!provider.access_token_is_valid("at_made_up"));
}

#[tokio::test]
async fn the_protected_resource_accepts_only_live_access_tokens() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    let client = reqwest::Client::new();
    let call = |token: String| client.get(provider.resource_url()).bearer_auth(token).send();
    let ok = call(grant.access_token.clone()).await.expect("an answer");
    assert_eq!(ok.status().as_u16(), 200);
    provider.revoke(&grant.grant);
    let revoked = call(grant.access_token.clone()).await.expect("an answer");
    assert_eq!(revoked.status().as_u16(), 401);
    assert_eq!(
        refresh(&provider, &grant.refresh_token).await.field("error").as_deref(),
        Some("invalid_grant")
    );
}

#[tokio::test]
async fn queued_faults_are_served_one_per_request_then_the_provider_recovers() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    provider.push_faults(vec![
        Fault::Unavailable,
        Fault::UnavailableRetryAfter { retry_after_secs: 7 },
        Fault::RateLimited { retry_after_secs: 30 },
        Fault::Malformed,
        Fault::HtmlOk,
        Fault::ServerErrorHtml,
        Fault::InvalidClient,
    ]);
    let mut seen = Vec::new();
    for _ in 0..7 {
        let answer = refresh(&provider, &grant.refresh_token).await;
        seen.push((answer.status, answer.retry_after.clone()));
        if answer.status == 200 {
            assert!(answer.json().is_null(), "a malformed 200 is not JSON: {}", answer.text);
        }
    }
    let expected = [
        (503, None),
        (503, Some("7".to_owned())),
        (429, Some("30".to_owned())),
        (200, None),
        (200, None),
        (502, None),
        (401, None),
    ];
    assert_eq!(seen, expected);
    assert_eq!(provider.pending_faults(), 0);
    assert!(!provider.is_revoked(&grant.grant), "faults never touch the grant");
    assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 200);
    assert_eq!(provider.token_calls(), 8);
}

#[tokio::test]
async fn a_standing_fault_applies_until_cleared() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    provider.set_fault(Fault::ServerErrorHtml);
    for _ in 0..3 {
        assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 502);
    }
    provider.clear_fault();
    assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 200);
}

#[tokio::test]
async fn a_certain_fail_rate_always_fails_and_a_zero_rate_never_does() {
    let provider = TestProvider::start(ProviderOptions {
        rotation: false,
        ..ProviderOptions::default()
    })
    .await;
    let grant = provider.issue_grant();
    provider.set_fault(Fault::FailRate(1.0));
    assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 503);
    provider.set_fault(Fault::FailRate(0.0));
    assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 200);
}

#[tokio::test]
async fn a_delay_fault_answers_normally_afterwards() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::Delay(Duration::from_millis(50))]);
    let answer = refresh(&provider, &grant.refresh_token).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn an_oversized_answer_is_valid_json_of_the_requested_size() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    provider.push_faults([Fault::Oversized { bytes: 100_000 }]);
    let answer = refresh(&provider, "anything").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text.len(), 100_000);
    assert_eq!(answer.field("access_token").as_deref(), Some("at_oversized"));
}

async fn send_with_timeout(provider: &TestProvider, refresh_token: &str) -> reqwest::Error {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("a client");
    client
        .post(provider.token_url())
        .header("authorization", basic(provider))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ]))
        .send()
        .await
        .expect_err("the provider never answers")
}

#[tokio::test]
async fn a_hang_outlasts_the_client_timeout_and_changes_nothing() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::Hang]);
    assert!(send_with_timeout(&provider, &grant.refresh_token).await.is_timeout());
    assert_eq!(
        provider.current_refresh_token(&grant.grant),
        Some(grant.refresh_token.clone())
    );
    assert_eq!(refresh(&provider, &grant.refresh_token).await.status, 200);
}

#[tokio::test]
async fn a_lost_response_rotates_the_refresh_token_all_the_same() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let grant = provider.issue_grant();
    provider.push_faults([Fault::LoseResponse]);
    assert!(send_with_timeout(&provider, &grant.refresh_token).await.is_timeout());
    assert_ne!(
        provider.current_refresh_token(&grant.grant),
        Some(grant.refresh_token.clone())
    );
    let retry = refresh(&provider, &grant.refresh_token).await;
    assert_eq!(
        retry.field("error").as_deref(),
        Some("invalid_grant"),
        "no grace window: the retry kills the grant"
    );
    assert!(provider.is_revoked(&grant.grant));
}

#[tokio::test]
async fn two_overlapping_refreshes_of_one_grant_are_seen_and_the_loser_revokes_the_grant() {
    let provider = TestProvider::start(ProviderOptions {
        latency: Duration::from_millis(200),
        ..ProviderOptions::default()
    })
    .await;
    let grant = provider.issue_grant();
    let other = provider.issue_grant();
    let (a, b, c) = tokio::join!(
        refresh(&provider, &grant.refresh_token),
        refresh(&provider, &grant.refresh_token),
        refresh(&provider, &other.refresh_token),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400]);
    assert_eq!(c.status, 200);
    assert_eq!(provider.max_in_flight_for(&grant.grant), 2);
    assert_eq!(provider.max_in_flight_for(&other.grant), 1);
    assert_eq!(provider.max_in_flight(), 3);
    assert!(provider.is_revoked(&grant.grant));
    assert_eq!(provider.in_flight(), 0);
}

#[tokio::test]
async fn health_answers_and_shutdown_refuses_new_connections() {
    let provider = TestProvider::start(ProviderOptions::default()).await;
    let url = format!("{}/health", provider.base_url());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");
    assert_eq!(client.get(&url).send().await.expect("an answer").status().as_u16(), 200);
    let addr = provider.addr();
    provider.shutdown();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still accepting after shutdown");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_admin_endpoints_issue_working_grants_and_count_only_when_asked_for() {
    let provider = TestProvider::try_start_with_admin(ProviderOptions::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let issued = http
        .post(format!("{}/admin/grants?count=3", provider.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 200);
    let text = issued.text().await.unwrap();
    let grants: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(grants.len(), 3);
    let answer = refresh(&provider, grants[1]["refresh_token"].as_str().unwrap()).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let stats: Value = http
        .get(format!("{}/admin/stats", provider.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((&stats["grants_issued"], &stats["refreshes"]), (&3.into(), &1.into()));
    let too_many = http
        .post(format!("{}/admin/grants?count=0", provider.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);

    let plain = TestProvider::start(ProviderOptions::default()).await;
    let refused = http
        .post(format!("{}/admin/grants?count=1", plain.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404, "no admin endpoints unless asked for");
}

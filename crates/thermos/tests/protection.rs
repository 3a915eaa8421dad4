//! Provider protection, replayed against the test provider with faults:
//! outages, rate limits, a rotated client secret, a slow provider, a dead
//! grant among healthy ones, lost responses, forced-refresh abuse. Time is
//! compressed with a manual clock where the scenario is about time.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{AppOptions, TestApp, eventually, spawn_app_with};
use serde_json::json;
use thermos::engine::guard::DEFAULT_APP_CONCURRENCY;
use thermos_core::breaker::DEFAULT_MIN_SAMPLES;
use thermos_testprovider::{Fault, ProviderOptions};

/// backoff_max 2 s: the breaker probes every 2 s (time compressed).
const FAST_REFRESH: &str = "backoff_initial = \"1s\"\nbackoff_max = \"2s\"\nrequest_timeout = \"2s\"\n";
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

async fn manual_app(provider: ProviderOptions, provider_toml: &str) -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        provider,
        refresh_toml: FAST_REFRESH.into(),
        provider_toml: provider_toml.into(),
        ..AppOptions::default()
    })
    .await
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_costs_a_bounded_number_of_requests_and_everyone_recovers_within_seconds() {
    let app = manual_app(ProviderOptions::default(), "").await;
    let connections = app.import_many(1000, 600).await;
    app.provider.set_fault(Fault::Unavailable);

    // Every connection comes due during a 60-second outage (simulated).
    app.clock().advance(Duration::from_secs(331));
    let before = app.provider.token_calls();
    let outage = Duration::from_secs(60);
    let mut elapsed = Duration::ZERO;
    while elapsed < outage {
        app.drain().await;
        app.clock().advance(Duration::from_secs(1));
        elapsed += Duration::from_secs(1);
    }
    let during_outage = app.provider.token_calls() - before;
    let probes = outage.as_secs() / PROBE_INTERVAL.as_secs() + 1;
    // Before the breaker opens: one app's worth of concurrent requests, plus
    // the few that take a freed slot before the min_samples-th failure is in;
    // then one probe per interval.
    let bound = u64::from(DEFAULT_APP_CONCURRENCY) + DEFAULT_MIN_SAMPLES as u64 + probes;
    println!(
        "requests during a {}s outage with 1000 connections due: {during_outage} (bound {bound})",
        outage.as_secs()
    );
    assert!(
        during_outage <= bound,
        "{during_outage} requests during the outage, bound {bound}"
    );
    let statuses = app.statuses().await;
    assert_eq!(statuses.get("needs_reauth"), None, "{statuses:?}");
    let (_, providers) = app.get("/v1/providers").await;
    assert_eq!(providers["data"][0]["breaker"], "open", "{providers}");
    assert_eq!(providers["data"][0]["paused"]["reason"], "circuit_open");

    // The provider is back: every connection is active again within seconds.
    app.provider.clear_fault();
    let back = app.engine.now();
    let mut recovered_after = None;
    for second in 1..=(30 * 60) {
        app.drain().await;
        if app.statuses().await == counts(&[("active", 1000)]) {
            let all_refreshed = app.get("/v1/connections?limit=1000").await.1["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["refresh_count"].as_i64() >= Some(1));
            if all_refreshed {
                recovered_after = Some(app.engine.now() - back);
                break;
            }
        }
        app.clock().advance(Duration::from_secs(1));
        assert!(second < 30 * 60, "not recovered within one recovery interval");
    }
    let recovered_after = recovered_after.unwrap();
    println!("all 1000 connections refreshed and active {recovered_after} after the provider came back");
    assert!(recovered_after <= time::Duration::seconds(30), "{recovered_after}");
    for (_, grant) in &connections {
        assert!(!app.provider.is_revoked(&grant.grant));
    }
    let (_, providers) = app.get("/v1/providers").await;
    assert_eq!(providers["data"][0]["breaker"], "closed", "{providers}");
    app.stop().await;
}

#[tokio::test]
async fn after_a_429_with_retry_after_5_no_request_reaches_the_provider_for_5_seconds() {
    // Real clock and the real scheduler. One request in flight at a time, so
    // that none is already on its way while the 429 travels back (those could
    // not be recalled; with one slot, the next request waits for the 429).
    let app = spawn_app_with(AppOptions {
        provider: ProviderOptions {
            access_token_ttl: Duration::from_secs(2),
            ..ProviderOptions::default()
        },
        refresh_toml: FAST_REFRESH.into(),
        provider_toml: "max_concurrency = 1\n".into(),
        ..AppOptions::default()
    })
    .await;
    app.provider.push_faults([Fault::RateLimited { retry_after_secs: 5 }]);
    app.import_many(10, 2).await;
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            app.provider.token_calls() >= 1
        ))
        .await
    );
    // Wait until requests reach the provider again, then read its log: requests
    // already in flight when the 429 was answered could not be recalled, but
    // none may arrive between that answer and 5 s later.
    let first_after = |log: &[thermos_testprovider::TokenCall]| {
        let answered = log.iter().find(|c| c.status == Some(429))?.answered?;
        let next = log.iter().filter(|c| c.arrived > answered).map(|c| c.arrived).min()?;
        Some(next - answered)
    };
    let resumed = eventually(Duration::from_secs(15), || {
        std::future::ready(first_after(&app.provider.token_call_log()).is_some())
    });
    assert!(resumed.await, "no request after the 429");
    let quiet_for = first_after(&app.provider.token_call_log()).unwrap();
    println!("first request after the 429 arrived {quiet_for:?} after it was answered");
    assert!(
        quiet_for >= Duration::from_secs(5),
        "a request came after only {quiet_for:?}"
    );
    let (_, providers) = app.get("/v1/providers").await;
    assert_eq!(providers["data"][0]["rate_limited"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_pauses_the_app_without_killing_connections_and_a_fix_resumes_it() {
    let app = manual_app(
        ProviderOptions {
            client_secret: "rotated-s3cret".into(),
            ..ProviderOptions::default()
        },
        "",
    )
    .await;
    let connections = app.import_many(50, 600).await;
    app.clock().advance(Duration::from_secs(331));
    for _ in 0..10 {
        app.drain().await;
        app.clock().advance(Duration::from_secs(1));
    }
    let statuses = app.statuses().await;
    assert_eq!(statuses, counts(&[("active", 50)]), "connections keep their status");
    let calls_while_broken = app.provider.token_calls();
    // The first batch may be in flight before the first answer; then one probe per interval.
    let bound = u64::from(DEFAULT_APP_CONCURRENCY) + DEFAULT_MIN_SAMPLES as u64 + 10 / PROBE_INTERVAL.as_secs() + 1;
    println!("calls with a bad client secret over 10 s: {calls_while_broken} (bound {bound})");
    assert!(
        calls_while_broken <= bound,
        "{calls_while_broken} calls with a bad secret"
    );
    let (_, providers) = app.get("/v1/providers").await;
    assert_eq!(
        providers["data"][0]["paused"]["reason"], "client_invalid",
        "{providers}"
    );
    let (_, attempts) = app.get(&format!("/v1/connections/{}/attempts", connections[0].0)).await;
    assert!(
        attempts["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["error_code"] != "invalid_grant")
    );

    // The operator fixes the secret and reloads (SIGHUP does exactly this).
    let mut fixed = (*app.engine.provider(common::PROVIDER).unwrap()).clone();
    fixed.client_secret = Some("rotated-s3cret".to_owned().into());
    app.engine.reload_providers(vec![fixed]).await;
    for _ in 0..5 {
        app.clock().advance(Duration::from_secs(1));
        app.drain().await;
    }
    let (_, page) = app.get("/v1/connections?limit=1000").await;
    let refreshed = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["refresh_count"] == 1)
        .count();
    assert_eq!(refreshed, 50);
    assert_eq!(app.statuses().await, counts(&[("active", 50)]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_with_concurrency_4_never_sees_more_than_4_requests_at_once() {
    let app = manual_app(
        ProviderOptions {
            latency: Duration::from_millis(300),
            ..ProviderOptions::default()
        },
        "max_concurrency = 4\n",
    )
    .await;
    app.import_many(16, 600).await;
    app.clock().advance(Duration::from_secs(331));
    let started = Instant::now();
    app.drain().await;
    assert_eq!(app.provider.refreshes(), 16);
    assert_eq!(
        app.provider.max_in_flight(),
        4,
        "the limit was not reached or was exceeded"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(4 * 300),
        "16 requests at 4 at a time take 4 rounds"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_for_one_connection_among_100_healthy_ones_marks_exactly_that_one() {
    let app = manual_app(ProviderOptions::default(), "").await;
    let connections = app.import_many(100, 600).await;
    let (dead_id, dead_grant) = &connections[37];
    app.provider.revoke(&dead_grant.grant);
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    assert_eq!(app.statuses().await, counts(&[("active", 99), ("needs_reauth", 1)]));
    assert_eq!(app.connection(dead_id).await["status"], "needs_reauth");
    let (_, providers) = app.get("/v1/providers").await;
    assert_eq!(providers["data"][0]["breaker"], "closed");
    app.stop().await;
}

#[tokio::test]
async fn while_the_breaker_is_open_callers_get_a_valid_token_or_503_with_retry_after() {
    let app = manual_app(ProviderOptions::default(), "").await;
    let connections = app.import_many(10, 600).await;
    app.provider.set_fault(Fault::Unavailable);
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    let calls = app.provider.token_calls();
    let (id, grant) = &connections[0];

    // Still valid (about 270 s left): the current token, no provider call.
    let (status, body) = app.get(&format!("/v1/connections/{id}/token?min_ttl=3600")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], grant.access_token.as_str());
    // Expired: 503 with code 1602 and a Retry-After.
    app.clock().advance(Duration::from_secs(300));
    let response = app
        .http
        .get(app.url(&format!("/v1/connections/{id}/token")))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 1602);
    assert!(
        app.provider.token_calls() <= calls + 1,
        "callers went around the breaker"
    );
    app.stop().await;
}

fn lost_response_options(reuse_grace: Duration) -> AppOptions {
    AppOptions {
        manual_clock: true,
        provider: ProviderOptions {
            reuse_grace,
            ..ProviderOptions::default()
        },
        refresh_toml: "request_timeout = \"500ms\"\n".into(),
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn a_lost_response_is_recorded_and_retried_once_which_a_grace_window_saves() {
    let app = spawn_app_with(lost_response_options(Duration::from_secs(60))).await;
    let (id, grant) = app.import_many(1, 600).await.remove(0);
    app.provider.push_faults([Fault::LoseResponse]);
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    let c = app.connection(&id).await;
    assert_eq!(c["status"], "active", "{c}");
    assert_eq!(c["refresh_count"], 1);
    let (_, attempts) = app.get(&format!("/v1/connections/{id}/attempts")).await;
    let outcomes: Vec<_> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["refreshed", "lost"]);
    assert_eq!(attempts["data"][1]["error_code"], "response_lost");
    assert!(!app.provider.is_revoked(&grant.grant));
    let (_, providers) = app.get("/v1/providers").await;
    assert_eq!(providers["data"][0]["lost_responses"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_lost_response_without_a_grace_window_ends_in_needs_reauth_saying_so_not_a_retry_loop() {
    let app = spawn_app_with(lost_response_options(Duration::ZERO)).await;
    let (id, _) = app.import_many(1, 600).await.remove(0);
    app.provider.push_faults([Fault::LoseResponse]);
    app.clock().advance(Duration::from_secs(331));
    app.drain().await;
    let c = app.connection(&id).await;
    assert_eq!(c["status"], "needs_reauth", "{c}");
    assert_eq!(c["last_error"]["code"], "invalid_grant_after_lost_response");
    assert!(c["last_error"]["message"].as_str().unwrap().contains("lost"));
    assert_eq!(app.provider.token_calls(), 2, "one attempt and one retry");
    app.clock().advance(Duration::from_secs(3600));
    app.drain().await;
    assert_eq!(app.provider.token_calls(), 2, "no retry loop");
    app.stop().await;
}

#[tokio::test]
async fn forced_refreshes_of_one_connection_are_rate_limited_with_1607() {
    let app = manual_app(ProviderOptions::default(), "").await;
    let (id, _) = app.import_many(1, 3600).await.remove(0);
    let path = format!("/v1/connections/{id}/refresh");
    for _ in 0..3 {
        let (status, body) = app.post(&path, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let response = app
        .http
        .post(app.url(&path))
        .bearer_auth(common::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 1607);
    let (status, _) = app.post(&format!("/v1/connections/{id}/reset"), json!({})).await;
    assert_eq!(status, 429, "reset shares the forced-refresh limit");
    assert_eq!(app.provider.token_calls(), 3);
    app.stop().await;
}

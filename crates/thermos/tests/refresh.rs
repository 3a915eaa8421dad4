//! The refresh engine end to end: the real server and store, the test
//! provider on loopback, and a manual clock driving the scheduler.

mod common;

use std::time::Duration;

use common::{AppOptions, TestApp, eventually, spawn_app_with, ts};
use serde_json::json;
use thermos_testprovider::{ExpiresIn, Fault, ProviderOptions};

async fn manual_app() -> TestApp {
    manual_app_with_latency(Duration::ZERO).await
}

/// A manual-clock app whose provider holds every token request for `latency`.
async fn manual_app_with_latency(latency: Duration) -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        provider: ProviderOptions {
            latency,
            ..ProviderOptions::default()
        },
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn an_imported_connection_is_refreshed_before_expiry_again_and_again_with_the_rotated_token() {
    let app = manual_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    let mut sent_refresh_tokens = vec![grant.refresh_token.clone()];

    for round in 1..=4 {
        let before = app.connection(&id).await;
        let planned = ts(&before["next_refresh_at"]);
        let expires = ts(&before["expires_at"]);
        assert!(planned < expires, "round {round}: refresh planned after expiry");
        let lead = expires - planned;
        assert!(
            lead >= time::Duration::seconds(300) && lead <= time::Duration::seconds(330),
            "lead {lead}"
        );

        app.tick().await; // not due yet
        assert_eq!(app.provider.token_calls(), round - 1, "refreshed before it was due");

        app.advance_to(before["next_refresh_at"].as_str().unwrap());
        app.tick().await;
        let after = app.connection(&id).await;
        assert_eq!(after["status"], "active");
        assert_eq!(after["refresh_count"], round);
        assert!(ts(&after["expires_at"]) > ts(&before["expires_at"]));

        // The provider rotated: the token it now expects is the one Thermos keeps.
        let current = app.provider.current_refresh_token(&grant.grant).expect("grant alive");
        assert!(
            !sent_refresh_tokens.contains(&current),
            "round {round}: refresh token not rotated"
        );
        sent_refresh_tokens.push(current);
    }
    // Every refresh token was sent exactly once; none reused, grant alive.
    for used in &sent_refresh_tokens[..sent_refresh_tokens.len() - 1] {
        assert_eq!(app.provider.calls_with(used), 1);
    }
    assert_eq!(app.provider.reuse_detected(), 0);
    assert!(!app.provider.is_revoked(&grant.grant));
    let (status, token) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 200);
    assert!(
        app.provider
            .access_token_is_valid(token["access_token"].as_str().unwrap())
    );
    let (_, attempts) = app.get(&format!("/v1/connections/{id}/attempts")).await;
    let attempts = attempts["data"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts
            .iter()
            .all(|a| a["outcome"] == "refreshed" && a["trigger"] == "scheduled" && a["http_status"] == 200)
    );
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_token_requests_on_an_expiring_connection_share_one_refresh() {
    let app = manual_app_with_latency(Duration::from_millis(300)).await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 100).await;
    // 70 s later 30 s remain: less than min_ttl 60 (capped at half the lifetime, 50 s).
    app.clock().advance(Duration::from_secs(70));

    let path = format!("/v1/connections/{id}/token?min_ttl=60");
    let requests = (0..50).map(|_| app.get(&path));
    let answers = futures::future::join_all(requests).await;

    assert_eq!(app.provider.token_calls(), 1, "exactly one call to the token endpoint");
    assert_eq!(app.provider.max_in_flight_for(&grant.grant), 1);
    let first = answers[0].1["access_token"].as_str().unwrap().to_owned();
    assert_ne!(first, grant.access_token);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            body["access_token"],
            first.as_str(),
            "every caller got the same new token"
        );
    }
    assert!(app.provider.access_token_is_valid(&first));
    app.stop().await;
}

#[tokio::test]
async fn a_rejected_token_that_is_no_longer_current_causes_no_refresh() {
    let app = manual_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;

    let (status, fresh) = app
        .post(
            &format!("/v1/connections/{id}/refresh"),
            json!({"rejected_token": grant.access_token}),
        )
        .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(app.provider.token_calls(), 1);
    let new_token = fresh["access_token"].as_str().unwrap();
    assert_ne!(new_token, grant.access_token);

    // 100 clients report the same stale token: no further refresh.
    let path = format!("/v1/connections/{id}/refresh");
    let reports = (0..100).map(|_| app.post(&path, json!({"rejected_token": grant.access_token})));
    for (status, body) in futures::future::join_all(reports).await {
        assert_eq!(status, 200);
        assert_eq!(body["access_token"], new_token);
    }
    assert_eq!(app.provider.token_calls(), 1);
    app.stop().await;
}

#[tokio::test]
async fn invalid_grant_moves_the_connection_to_needs_reauth_and_the_token_endpoint_answers_1610() {
    let app = manual_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    assert!(app.provider.revoke(&grant.grant));

    let before = app.connection(&id).await;
    app.advance_to(before["next_refresh_at"].as_str().unwrap());
    app.tick().await;

    let after = app.connection(&id).await;
    assert_eq!(after["status"], "needs_reauth");
    assert_eq!(after["last_error"]["code"], "invalid_grant");
    assert_eq!(after["next_refresh_at"], serde_json::Value::Null);
    let (status, body) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], 1610);
    assert_eq!(body["error"]["type"], "needs_reauth");
    assert!(body["error"]["request_id"].as_str().is_some_and(|r| !r.is_empty()));

    // No further attempts: the connection is no longer scheduled.
    app.clock().advance(Duration::from_secs(7200));
    app.tick().await;
    assert_eq!(app.provider.token_calls(), 1);

    // The user reconnects: new tokens bring it back.
    let fresh = app.provider.issue_grant();
    let (status, body) = app
        .send(
            app.http
                .put(app.url(&format!("/v1/connections/{id}/tokens")))
                .json(&json!({
                    "access_token": fresh.access_token, "refresh_token": fresh.refresh_token, "expires_in": 600
                })),
            common::ADMIN_KEY,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(body["last_error"], serde_json::Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn provider_outage_makes_the_connection_failing_with_growing_delays_then_success_makes_it_active() {
    let app = manual_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    app.provider.push_faults([
        Fault::Unavailable,
        Fault::ServerErrorHtml,
        Fault::Unavailable,
        Fault::Malformed,
    ]);

    let mut delays = Vec::new();
    let mut due = app.connection(&id).await["next_refresh_at"]
        .as_str()
        .unwrap()
        .to_owned();
    for failure in 1..=4u64 {
        app.advance_to(&due);
        let attempted_at = app.engine.now();
        app.tick().await;
        let c = app.connection(&id).await;
        assert_eq!(c["status"], "failing", "after failure {failure}: {c}");
        assert_eq!(c["consecutive_failures"], failure);
        let next = ts(&c["next_refresh_at"]);
        delays.push(next - attempted_at);
        due = c["next_refresh_at"].as_str().unwrap().to_owned();
    }
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "delays must grow: {delays:?}");
    assert!(
        delays[0] >= time::Duration::seconds(4) && delays[0] <= time::Duration::seconds(5),
        "{delays:?}"
    );

    app.advance_to(&due);
    app.tick().await;
    let c = app.connection(&id).await;
    assert_eq!(c["status"], "active");
    assert_eq!(c["consecutive_failures"], 0);
    assert_eq!(c["last_error"], serde_json::Value::Null);
    let (_, attempts) = app.get(&format!("/v1/connections/{id}/attempts")).await;
    let codes: Vec<_> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["error_code"].clone())
        .collect();
    assert_eq!(
        codes,
        [
            json!(null),
            json!("malformed_response"),
            json!("server_error"),
            json!("server_error"),
            json!("server_error")
        ]
    );
    assert!(!app.provider.is_revoked(&grant.grant));
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limited_refresh_waits_at_least_the_retry_after() {
    let app = manual_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    app.provider.push_faults([Fault::RateLimited { retry_after_secs: 90 }]);
    let due = app.connection(&id).await["next_refresh_at"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance_to(&due);
    let at = app.engine.now();
    app.tick().await;
    let c = app.connection(&id).await;
    assert_eq!(c["last_error"]["code"], "rate_limited");
    assert_eq!(c["last_error"]["http_status"], 429);
    assert!(ts(&c["next_refresh_at"]) - at >= time::Duration::seconds(90));
    app.stop().await;
}

#[tokio::test]
async fn the_background_scheduler_keeps_short_lived_tokens_fresh_on_its_own() {
    // Real clock and the real drive loop: 2-second tokens, refreshed at half-life.
    let app = spawn_app_with(AppOptions {
        provider: ProviderOptions {
            access_token_ttl: Duration::from_secs(2),
            ..ProviderOptions::default()
        },
        ..AppOptions::default()
    })
    .await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 2).await;
    let refreshed_thrice = eventually(Duration::from_secs(20), || async {
        app.connection(&id).await["refresh_count"].as_i64().unwrap_or(0) >= 3
    })
    .await;
    assert!(refreshed_thrice, "{}", app.connection(&id).await);
    let (status, token) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 200);
    assert!(
        app.provider
            .access_token_is_valid(token["access_token"].as_str().unwrap())
    );
    assert_eq!(app.provider.reuse_detected(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_token_re_encrypted_during_a_refresh_of_a_dead_grant_is_still_a_dead_grant() {
    use thermos_core::id::ConnectionId;
    use thermos_core::seal::Field;
    use thermos_store::reseal::{Reseal, SealedColumn, SealedOwner};

    let app = manual_app_with_latency(Duration::from_millis(400)).await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    assert!(app.provider.revoke(&grant.grant));

    // A forced refresh is on its way with the dead grant...
    let forced = tokio::spawn(
        app.http
            .post(app.url(&format!("/v1/connections/{id}/refresh")))
            .bearer_auth(common::ADMIN_KEY)
            .send(),
    );
    assert!(
        eventually(Duration::from_secs(5), || std::future::ready(
            app.provider.in_flight() > 0
        ))
        .await
    );
    // ...while a master key rotation re-seals the same refresh token (new bytes, same text).
    let store = app.engine.store();
    let connection_id = ConnectionId::parse(&id).unwrap();
    let record = store.get_connection(connection_id).await.unwrap().unwrap();
    let old = record.refresh_token.clone().unwrap();
    let text = app
        .engine
        .key()
        .open(&connection_id, Field::RefreshToken, &old)
        .unwrap();
    let new = app.engine.key().seal(&connection_id, Field::RefreshToken, &text);
    assert_ne!(old, new);
    let replaced = store
        .replace_sealed(vec![Reseal {
            owner: SealedOwner::Connection(connection_id),
            column: SealedColumn::RefreshToken,
            old,
            new,
        }])
        .await
        .unwrap();
    assert_eq!(replaced, 1);

    // The grant is dead, not superseded by some other refresh.
    let answer = forced.await.unwrap().unwrap();
    assert_eq!(answer.status(), 409);
    let c = app.connection(&id).await;
    assert_eq!(c["status"], "needs_reauth");
    let (_, attempts) = app.get(&format!("/v1/connections/{id}/attempts")).await;
    let attempts = attempts["data"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "one attempt, not a superseded one and a retry: {attempts:?}"
    );
    assert_eq!(attempts[0]["error_code"], "invalid_grant");
    assert_eq!(attempts[0]["outcome"], "failed");
    app.stop().await;
}

#[tokio::test]
async fn a_user_reconnecting_during_a_refresh_is_not_mistaken_for_a_dead_grant() {
    let app = manual_app_with_latency(Duration::from_millis(400)).await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;

    // A forced refresh is on its way to the provider with the old grant...
    let forced = tokio::spawn(
        app.http
            .post(app.url(&format!("/v1/connections/{id}/refresh")))
            .bearer_auth(common::ADMIN_KEY)
            .send(),
    );
    assert!(
        eventually(Duration::from_secs(5), || std::future::ready(
            app.provider.in_flight() > 0
        ))
        .await
    );
    // ...when the user reconnects: the provider drops the old grant, Thermos gets new tokens.
    app.provider.revoke(&grant.grant);
    let fresh = app.provider.issue_grant();
    let (status, _) = app
        .send(
            app.http
                .put(app.url(&format!("/v1/connections/{id}/tokens")))
                .json(&json!({
                    "access_token": fresh.access_token, "refresh_token": fresh.refresh_token, "expires_in": 600
                })),
            common::ADMIN_KEY,
        )
        .await;
    assert_eq!(status, 200);

    // The old grant's invalid_grant lost the race: the caller gets the new token, nothing is dead.
    let answer = forced.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["access_token"], fresh.access_token.as_str());
    let c = app.connection(&id).await;
    assert_eq!(c["status"], "active");
    assert_eq!(c["last_error"], serde_json::Value::Null);
    let (_, attempts) = app.get(&format!("/v1/connections/{id}/attempts")).await;
    assert_eq!(attempts["data"][0]["outcome"], "superseded");
    assert_eq!(attempts["data"][0]["error_code"], "invalid_grant");
    app.stop().await;
}

#[tokio::test]
async fn while_a_failing_connection_backs_off_callers_get_its_still_valid_token_without_a_provider_call() {
    let app = manual_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    app.provider.push_faults([Fault::Unavailable]);
    let due = app.connection(&id).await["next_refresh_at"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance_to(&due);
    app.tick().await;
    assert_eq!(app.connection(&id).await["status"], "failing");
    assert_eq!(app.provider.token_calls(), 1);

    for _ in 0..20 {
        let (status, token) = app.get(&format!("/v1/connections/{id}/token?min_ttl=3600")).await;
        assert_eq!(status, 200, "{token}");
        assert_eq!(token["access_token"], grant.access_token.as_str());
        assert!(token["expires_in"].as_i64().unwrap() > 0);
    }
    assert_eq!(app.provider.token_calls(), 1, "backoff was bypassed");
    app.stop().await;
}

#[tokio::test]
async fn callers_arriving_during_a_scheduled_refresh_join_it_instead_of_starting_another() {
    let app = manual_app_with_latency(Duration::from_millis(300)).await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    // Late enough that the current token (60 s left) no longer satisfies callers.
    app.clock().advance(Duration::from_secs(540));

    // The scheduler starts the refresh; callers who need a fresh token arrive meanwhile.
    app.engine.tick(app.engine.now()).await.unwrap();
    let path = format!("/v1/connections/{id}/token?min_ttl=3600");
    let answers = futures::future::join_all((0..10).map(|_| app.get(&path))).await;
    assert!(app.engine.settle(Duration::from_secs(10)).await);

    assert_eq!(app.provider.token_calls(), 1);
    assert_eq!(app.provider.max_in_flight_for(&grant.grant), 1);
    let first = answers[0].1["access_token"].clone();
    assert_ne!(first, grant.access_token.as_str());
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 200 && body["access_token"] == first)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_response_without_expires_in_gets_the_providers_default_ttl() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        provider: ProviderOptions {
            expires_in: ExpiresIn::Omitted,
            ..ProviderOptions::default()
        },
        ..AppOptions::default()
    })
    .await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 600).await;
    let due = app.connection(&id).await["next_refresh_at"]
        .as_str()
        .unwrap()
        .to_owned();
    app.advance_to(&due);
    let refreshed_at = app.engine.now();
    app.tick().await;
    let c = app.connection(&id).await;
    assert_eq!(c["refresh_count"], 1);
    // default_ttl is 1h in the test configuration: never "no expiry".
    let lifetime = ts(&c["expires_at"]) - refreshed_at;
    assert!(
        (lifetime - time::Duration::hours(1)).abs() <= time::Duration::seconds(1),
        "{lifetime}"
    );
    app.stop().await;
}

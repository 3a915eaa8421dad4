//! The HTTP API's contract: authentication, project isolation, input
//! validation and error bodies, listing.

mod common;

use common::{ADMIN_KEY, PROVIDER, spawn_app};
use serde_json::{Value, json};

async fn project_key(app: &common::TestApp, project: &str) -> String {
    use secrecy::ExposeSecret;
    let created = thermos::api_key::create(project, time::OffsetDateTime::now_utc());
    app.engine.store().insert_api_key(created.record.clone()).await.unwrap();
    created.key.expose_secret().to_owned()
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: u64) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn a_project_key_cannot_see_another_projects_connection() {
    let app = spawn_app().await;
    let key_a = project_key(&app, "alpha").await;
    let key_b = project_key(&app, "beta").await;
    let grant = app.provider.issue_grant();
    let body = json!({"provider": PROVIDER, "external_id": "u1", "access_token": grant.access_token,
                      "refresh_token": grant.refresh_token, "expires_in": 3600});
    let (status, created) = app
        .send(app.http.post(app.url("/v1/connections")).json(&body), &key_a)
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["project"], "alpha");
    let id = created["id"].as_str().unwrap();

    for path in [
        format!("/v1/connections/{id}"),
        format!("/v1/connections/{id}/token"),
        format!("/v1/connections/{id}/attempts"),
    ] {
        let (status, body) = app.send(app.http.get(app.url(&path)), &key_b).await;
        assert_error(status, &body, 404, 1603);
        let (status, _) = app.send(app.http.get(app.url(&path)), &key_a).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, body) = app
        .send(app.http.delete(app.url(&format!("/v1/connections/{id}"))), &key_b)
        .await;
    assert_error(status, &body, 404, 1603);
    let (_, listed) = app.send(app.http.get(app.url("/v1/connections")), &key_b).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
    let (status, body) = app
        .send(app.http.get(app.url("/v1/connections?project=alpha")), &key_b)
        .await;
    assert_error(status, &body, 403, 1606);
    let (status, body) = app
        .send(
            app.http
                .post(app.url("/v1/connections"))
                .json(&json!({"project": "alpha", "provider": PROVIDER,
            "external_id": "u2", "access_token": "x"})),
            &key_b,
        )
        .await;
    assert_error(status, &body, 403, 1606);
    app.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/v1/connections")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    for key in ["wrong", "thk_0123456789ab_nope", &format!("{ADMIN_KEY}x")] {
        let (status, body) = app.send(app.http.get(app.url("/v1/connections")), key).await;
        assert_error(status, &body, 401, 1605);
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_400_with_code_1600_naming_the_problem() {
    let app = spawn_app().await;
    let cases = [
        ("{not json", "application/json", ""),
        (
            r#"{"provider": "acme-oauth", "external_id": "u1"}"#,
            "application/json",
            "access_token",
        ),
        (
            r#"{"provider": "nope", "external_id": "u1", "access_token": "a"}"#,
            "application/json",
            "provider",
        ),
        (
            r#"{"provider": "acme-oauth", "external_id": "", "access_token": "a"}"#,
            "application/json",
            "external_id",
        ),
        (
            r#"{"provider": "acme-oauth", "external_id": "u", "access_token": "a", "expires_in": -5}"#,
            "application/json",
            "expires_in",
        ),
        (
            r#"{"provider": "acme-oauth", "external_id": "u", "access_token": "a", "expires_in": 5, "expires_at": "2030-01-01T00:00:00Z"}"#,
            "application/json",
            "expires_at",
        ),
        (
            r#"{"provider": "acme-oauth", "external_id": "u", "access_token": "a", "surprise": 1}"#,
            "application/json",
            "surprise",
        ),
        (
            r#"{"provider": "acme-oauth", "external_id": "u", "access_token": "a", "metadata": [1]}"#,
            "application/json",
            "metadata",
        ),
    ];
    for (body, content_type, mentions) in cases {
        let request = app
            .http
            .post(app.url("/v1/connections"))
            .header("content-type", content_type)
            .body(body);
        let (status, answer) = app.send(request, ADMIN_KEY).await;
        assert_error(status, &answer, 400, 1600);
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(mentions),
            "{body} → {answer}"
        );
    }
    for query in ["status=sleepy", "limit=0", "cursor=garbage", "limit=abc"] {
        let (status, answer) = app.get(&format!("/v1/connections?{query}")).await;
        assert_error(status, &answer, 400, 1600);
    }
    let (status, answer) = app.get("/v1/connections/not-an-id").await;
    assert_error(status, &answer, 404, 1603);
    let (_, listed) = app.get("/v1/connections").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "nothing half-written");
    app.stop().await;
}

#[tokio::test]
async fn importing_the_same_account_twice_is_a_409_and_nothing_changes() {
    let app = spawn_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;
    let (status, body) = app
        .post(
            "/v1/connections",
            json!({"project": "p1", "provider": PROVIDER, "external_id": "user-1", "access_token": "other"}),
        )
        .await;
    assert_error(status, &body, 409, 1604);
    let (_, token) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(token["access_token"], grant.access_token);
    app.stop().await;
}

#[tokio::test]
async fn connections_are_listed_page_by_page_with_a_cursor_and_filters() {
    let app = spawn_app().await;
    for i in 0..5 {
        let grant = app.provider.issue_grant();
        app.import(&grant, &format!("user-{i}"), 3600).await;
    }
    let (_, page1) = app.get("/v1/connections?limit=2").await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/v1/connections?limit=2&cursor={cursor}")).await;
    let (_, page3) = app
        .get(&format!(
            "/v1/connections?limit=2&cursor={}",
            page2["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page3["data"].as_array().unwrap().len(), 1);
    assert_eq!(page3["next_cursor"], Value::Null);
    let mut ids: Vec<_> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| {
            p["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["external_id"].as_str().unwrap().to_owned())
        })
        .collect();
    ids.dedup();
    assert_eq!(ids, ["user-0", "user-1", "user-2", "user-3", "user-4"]);
    let (_, active) = app.get("/v1/connections?status=active&project=p1").await;
    assert_eq!(active["data"].as_array().unwrap().len(), 5);
    let (_, none) = app.get("/v1/connections?status=needs_reauth").await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);
    // A connection body never carries a token (`refresh_token` is only the
    // value of `grant_type`).
    let text = serde_json::to_string(&page1).unwrap();
    assert!(!text.contains("access_token") && !text.contains("\"refresh_token\":"));
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_connection_is_gone() {
    let app = spawn_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "user-1", 3600).await;
    let (status, _) = app
        .send(app.http.delete(app.url(&format!("/v1/connections/{id}"))), ADMIN_KEY)
        .await;
    assert_eq!(status, 204);
    let (status, body) = app.get(&format!("/v1/connections/{id}")).await;
    assert_error(status, &body, 404, 1603);
    app.stop().await;
}

#[tokio::test]
async fn health_and_ready_answer() {
    let app = spawn_app().await;
    let health = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.headers().contains_key("x-request-id"));
    app.stop().await;
}

//! API keys through the real server: scopes (each allows exactly its routes,
//! 403/1606 elsewhere), expiry, revocation taking effect at once, listing by
//! prefix only, managing keys over `/v1/keys` (a project key only its own
//! project's, never granting what it does not hold), and the rate limit on
//! failed authentication per client address (429/1607 with `Retry-After`,
//! ended by moving the manual clock past the minute).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{ADMIN_KEY, AppOptions, PROVIDER, TestApp, spawn_app, spawn_app_with};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use thermos::api::auth::{Scope, Scopes};
use time::OffsetDateTime;

/// The message of every 401, whatever made the key fail.
const UNAUTHORIZED: &str = "missing or invalid API key (Authorization: Bearer <key>)";

/// Stores a key for `project` with `scopes` (and what they imply), valid
/// until `expires_at`; returns the key text.
async fn key_with(app: &TestApp, project: &str, scopes: &[Scope], expires_at: Option<OffsetDateTime>) -> String {
    let created = thermos::api_key::create_with(
        project,
        Scopes::of(scopes.iter().copied()),
        expires_at,
        app.engine.now(),
    );
    app.engine.store().insert_api_key(created.record.clone()).await.unwrap();
    created.key.expose_secret().to_owned()
}

async fn call(app: &TestApp, method: Method, path: &str, key: &str) -> (u16, Value) {
    let mut request = app.http.request(method.clone(), app.url(path));
    if method == Method::POST || method == Method::PUT {
        request = request.json(&json!({}));
    }
    app.send(request, key).await
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: u64) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
}

/// Every `/v1` route template and the scope it needs: the specification
/// `required_scope` must meet. The last deletes the connection.
fn route_table() -> Vec<(Method, &'static str, Scope)> {
    use Scope::{Admin, Read, Token};
    vec![
        (Method::GET, "/v1/connections", Read),
        (Method::GET, "/v1/connections/{id}", Read),
        (Method::GET, "/v1/connections/{id}/attempts", Read),
        (Method::GET, "/v1/webhooks", Read),
        (Method::GET, "/v1/events", Read),
        (Method::GET, "/v1/events/{id}", Read),
        (Method::GET, "/v1/runs", Read),
        (Method::GET, "/v1/runs/{id}", Read),
        (Method::GET, "/v1/providers", Read),
        (Method::GET, "/v1/apps", Read),
        (Method::GET, "/v1/connections/{id}/token", Token),
        (Method::POST, "/v1/connections/{id}/refresh", Token),
        (Method::POST, "/v1/connections", Admin),
        (Method::PUT, "/v1/connections/{id}/tokens", Admin),
        (Method::POST, "/v1/connections/{id}/reset", Admin),
        (Method::POST, "/v1/webhooks", Admin),
        (Method::DELETE, "/v1/webhooks/{id}", Admin),
        (Method::POST, "/v1/events/{id}/redeliver", Admin),
        (Method::POST, "/v1/runs", Admin),
        (Method::POST, "/v1/runs/{id}/cancel", Admin),
        (Method::POST, "/v1/apps", Admin),
        (Method::DELETE, "/v1/apps/{provider}", Admin),
        (Method::GET, "/v1/keys", Admin),
        (Method::POST, "/v1/keys", Admin),
        (Method::DELETE, "/v1/keys/{key_id}", Admin),
        (Method::POST, "/v1/connect/sessions", Admin),
        (Method::GET, "/v1/connect/sessions/{id}", Read),
        (Method::DELETE, "/v1/connections/{id}", Admin),
    ]
}

/// A request path for `template`: the connection `id`, dummy ids elsewhere.
fn concrete(template: &str, id: &str) -> String {
    let path = if template.starts_with("/v1/connections/") {
        template.replace("{id}", id)
    } else {
        template.replace("{id}", "missing")
    };
    path.replace("{provider}", PROVIDER)
        .replace("{key_id}", "thk_000000000000")
}

#[tokio::test]
async fn each_scope_allows_exactly_its_routes_and_is_refused_with_1606_elsewhere() {
    let app = spawn_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "u1", 3600).await;
    let read = key_with(&app, "p1", &[Scope::Read], None).await;
    let token = key_with(&app, "p1", &[Scope::Token], None).await;
    let admin = key_with(&app, "p1", &[Scope::Admin], None).await;
    let holders = [
        ("read", &read, Scopes::of([Scope::Read])),
        ("token", &token, Scopes::of([Scope::Token])),
        ("admin", &admin, Scopes::of([Scope::Admin])),
    ];
    // The table covers every documented `/v1` route (and so the router's).
    let table: std::collections::BTreeSet<(String, String)> = route_table()
        .iter()
        .map(|(m, t, _)| (m.to_string(), (*t).to_owned()))
        .collect();
    let documented: std::collections::BTreeSet<(String, String)> = thermos::api::openapi::documented_routes()
        .into_iter()
        .filter(|(_, path)| path.starts_with("/v1/"))
        .collect();
    assert_eq!(table, documented);
    let mut allowed = 0;
    for (method, template, needed) in route_table() {
        let path = concrete(template, &id);
        for (name, key, scopes) in &holders {
            let (status, body) = call(&app, method.clone(), &path, key).await;
            if scopes.contains(needed) {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !(status == 403 && message.contains("scope")) && status != 401,
                    "{name} key refused on {method} {path}: {body}"
                );
                allowed += 1;
            } else {
                assert_error(status, &body, 403, 1606);
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("`{needed}` scope")),
                    "{name} key on {method} {path}: {message}"
                );
            }
        }
    }
    assert_eq!(
        allowed,
        11 * 3 + 2 + 15,
        "read routes to all, token routes to one, admin routes to one"
    );
    // The admin key holds every scope.
    let id = app.import(&app.provider.issue_grant(), "u2", 3600).await;
    for (method, template, _) in route_table() {
        let path = concrete(template, &id);
        let (status, body) = call(&app, method.clone(), &path, ADMIN_KEY).await;
        assert!(status != 401 && status != 403, "admin key on {method} {path}: {body}");
    }
}

#[tokio::test]
async fn a_token_key_gets_tokens_and_metadata_but_changes_nothing() {
    let app = spawn_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "u1", 3600).await;
    let token = key_with(&app, "p1", &[Scope::Token], None).await;
    let (status, body) = app
        .send(app.http.get(app.url(&format!("/v1/connections/{id}/token"))), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], grant.access_token);
    let (status, body) = app
        .send(app.http.get(app.url(&format!("/v1/connections/{id}"))), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .send(app.http.delete(app.url(&format!("/v1/connections/{id}"))), &token)
        .await;
    assert_error(status, &body, 403, 1606);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`admin` scope"),
        "{body}"
    );
    // An admin-scoped key manages but does not read tokens.
    let admin = key_with(&app, "p1", &[Scope::Admin], None).await;
    let (status, body) = app
        .send(app.http.get(app.url(&format!("/v1/connections/{id}/token"))), &admin)
        .await;
    assert_error(status, &body, 403, 1606);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`token` scope"),
        "{body}"
    );
}

#[tokio::test]
async fn an_expired_key_is_refused_like_an_unknown_one() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        ..AppOptions::default()
    })
    .await;
    let now = app.engine.now();
    let expiring = key_with(&app, "p1", &[Scope::Read], Some(now + time::Duration::minutes(5))).await;
    let (status, body) = app.send(app.http.get(app.url("/v1/connections")), &expiring).await;
    assert_eq!(status, 200, "{body}");
    app.clock().advance(Duration::from_secs(5 * 60));
    let (status, expired) = app.send(app.http.get(app.url("/v1/connections")), &expiring).await;
    assert_error(status, &expired, 401, 1605);
    let (_, unknown) = app
        .send(app.http.get(app.url("/v1/connections")), "thk_0123456789ab_not-a-key")
        .await;
    assert_eq!(expired["error"]["message"], UNAUTHORIZED);
    assert_eq!(unknown["error"]["message"], UNAUTHORIZED);
    let (status, listed) = app.get("/v1/keys").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["data"][0]["status"], "expired", "{listed}");
}

#[tokio::test]
async fn a_key_created_over_the_api_works_until_revoked_and_is_refused_at_once_after() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/v1/keys",
            json!({"project": "p1", "scopes": ["read"], "expires_in": "90d"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("{prefix}_")), "{created}");
    assert_eq!(created["scopes"], json!(["read"]));
    assert_eq!(created["status"], "active");
    let expires_at = common::ts(&created["expires_at"]);
    let created_at = common::ts(&created["created_at"]);
    assert_eq!(expires_at - created_at, time::Duration::days(90));

    let (status, _) = app.send(app.http.get(app.url("/v1/connections")), &key).await;
    assert_eq!(status, 200);
    let (status, body) = app
        .send(app.http.delete(app.url(&format!("/v1/keys/{prefix}"))), ADMIN_KEY)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = app.send(app.http.get(app.url("/v1/connections")), &key).await;
    assert_error(status, &body, 401, 1605);
    assert_eq!(body["error"]["message"], UNAUTHORIZED);
    // Still listed, as revoked; revoking again (by bare id) changes nothing.
    let (_, listed) = app.get("/v1/keys?project=p1").await;
    let row = &listed["data"][0];
    assert_eq!(row["status"], "revoked", "{listed}");
    let revoked_at = row["revoked_at"].clone();
    assert!(revoked_at.is_string(), "{listed}");
    let bare = prefix.strip_prefix("thk_").unwrap();
    let (status, _) = app
        .send(app.http.delete(app.url(&format!("/v1/keys/{bare}"))), ADMIN_KEY)
        .await;
    assert_eq!(status, 204);
    let (_, listed) = app.get("/v1/keys?project=p1").await;
    assert_eq!(listed["data"][0]["revoked_at"], revoked_at);
    // A whole key in the path names no key.
    let (status, body) = app
        .send(app.http.delete(app.url(&format!("/v1/keys/{key}"))), ADMIN_KEY)
        .await;
    assert_error(status, &body, 404, 1603);
}

#[tokio::test]
async fn listings_show_the_prefix_never_the_key_or_its_hash() {
    let app = spawn_app().await;
    let (status, created) = app
        .post("/v1/keys", json!({"project": "p1", "scopes": ["token"]}))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap();
    let secret = key.splitn(3, '_').nth(2).unwrap();
    let record = app
        .engine
        .store()
        .find_api_key(created["key_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let hash_hex: String = record.secret_hash.iter().map(|b| format!("{b:02x}")).collect();
    let (status, listed) = app.get("/v1/keys").await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(text.contains(created["prefix"].as_str().unwrap()), "{text}");
    for needle in [key, secret, &hash_hex[..16]] {
        assert!(!text.contains(needle), "listing shows {needle}: {text}");
    }
    let row = &listed["data"][0];
    let mut fields: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "created_at",
            "expires_at",
            "key_id",
            "prefix",
            "project",
            "revoked_at",
            "scopes",
            "status"
        ]
    );
    assert_eq!(row["scopes"], json!(["read", "token"]), "token implies read");
    assert_eq!(row["expires_at"], Value::Null);
}

#[tokio::test]
async fn a_project_admin_key_manages_only_its_projects_keys_and_grants_only_what_it_holds() {
    let app = spawn_app().await;
    let manager = key_with(&app, "p1", &[Scope::Admin], None).await;
    let other = key_with(&app, "p2", &[Scope::Read], None).await;
    let _ = other;
    let create = |body: Value| app.send(app.http.post(app.url("/v1/keys")).json(&body), &manager);

    let (status, body) = create(json!({"project": "p2", "scopes": ["read"]})).await;
    assert_error(status, &body, 403, 1606);
    let (status, body) = create(json!({"scopes": ["token"]})).await;
    assert_error(status, &body, 403, 1606);
    assert!(body["error"]["message"].as_str().unwrap().contains("token"), "{body}");
    let (status, body) = create(json!({"scopes": ["read", "admin"]})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["project"], "p1");
    let (status, body) = create(json!({"scopes": []})).await;
    assert_error(status, &body, 400, 1600);
    let (status, body) = create(json!({"scopes": ["write"]})).await;
    assert_error(status, &body, 400, 1600);
    let (status, body) = create(json!({"scopes": ["read"], "expires_in": "soon"})).await;
    assert_error(status, &body, 400, 1600);

    let (status, listed) = app.send(app.http.get(app.url("/v1/keys")), &manager).await;
    assert_eq!(status, 200, "{listed}");
    let projects: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["project"].as_str().unwrap())
        .collect();
    assert_eq!(projects, ["p1", "p1"], "{listed}");
    let (status, body) = app.send(app.http.get(app.url("/v1/keys?project=p2")), &manager).await;
    assert_error(status, &body, 403, 1606);

    let (_, all) = app.get("/v1/keys?project=p2").await;
    let p2_key = all["data"][0]["prefix"].as_str().unwrap().to_owned();
    let (status, body) = app
        .send(app.http.delete(app.url(&format!("/v1/keys/{p2_key}"))), &manager)
        .await;
    assert_error(status, &body, 404, 1603);
    // The admin key must name a project.
    let (status, body) = app.post("/v1/keys", json!({"scopes": ["read"]})).await;
    assert_error(status, &body, 400, 1600);
}

/// A client whose requests come from `source` (a loopback address).
fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(source))
        .build()
        .unwrap()
}

#[tokio::test]
async fn failed_authentications_block_the_address_with_429_until_the_minute_passes() {
    let app = spawn_app_with(AppOptions {
        manual_clock: true,
        ..AppOptions::default()
    })
    .await;
    let attacker = client_from([127, 0, 0, 1]);
    let neighbour = client_from([127, 0, 0, 2]);
    let get = |client: &reqwest::Client, key: &str| client.get(app.url("/v1/connections")).bearer_auth(key).send();
    let limit = thermos::api::auth::DEFAULT_AUTH_FAILURES_PER_MINUTE;
    for i in 0..limit {
        let response = get(&attacker, &format!("thk_0123456789ab_guess{i}")).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "failure {i}");
    }
    // Blocked now, even with the admin key; other addresses go on.
    let response = get(&attacker, ADMIN_KEY).await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 1607, "{body}");
    assert_eq!(get(&neighbour, ADMIN_KEY).await.unwrap().status().as_u16(), 200);
    // Unauthenticated routes and requests without a key are not held up.
    assert_eq!(
        attacker.get(app.url("/health")).send().await.unwrap().status().as_u16(),
        200
    );
    let no_key = attacker.get(app.url("/v1/connections")).send().await.unwrap();
    assert_eq!(no_key.status().as_u16(), 401);

    app.clock().advance(Duration::from_secs(59));
    assert_eq!(get(&attacker, ADMIN_KEY).await.unwrap().status().as_u16(), 429);
    app.clock().advance(Duration::from_secs(1));
    assert_eq!(get(&attacker, ADMIN_KEY).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn a_missing_key_on_an_unknown_route_or_method_is_404_or_400_not_401() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/v1/nowhere")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response = app.http.patch(app.url("/v1/providers")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

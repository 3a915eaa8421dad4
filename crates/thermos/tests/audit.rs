//! The audit log through the real server: token fetches and changes are
//! recorded with the key that made them, the resource, the client address
//! and the answer; refused attempts too; reads of metadata and requests
//! without a valid key are not; nothing secret is stored; `thermos audit
//! list` shows it.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, PROVIDER, TestApp, spawn_app};
use serde_json::{Value, json};
use thermos_store::audit::{AuditFilter, AuditRecord};

/// Creates a project key with `scopes` (through the API, as the admin);
/// returns (key text, key id).
async fn project_key(app: &TestApp, project: &str, scopes: &[&str]) -> (String, String) {
    let (status, body) = app
        .post("/v1/keys", json!({"project": project, "scopes": scopes}))
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["key"].as_str().unwrap().to_owned(),
        body["key_id"].as_str().unwrap().to_owned(),
    )
}

async fn entries(app: &TestApp) -> Vec<AuditRecord> {
    app.engine
        .store()
        .list_audit(AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

/// The entries, oldest first, as (actor, action, target, status, count).
async fn summary(app: &TestApp) -> Vec<(String, String, Option<String>, u16, u32)> {
    let mut rows: Vec<_> = entries(app)
        .await
        .into_iter()
        .map(|r| {
            (
                r.entry.actor,
                r.entry.action,
                r.entry.target,
                r.entry.status,
                r.entry.count,
            )
        })
        .collect();
    rows.reverse();
    rows
}

/// [`summary`] once it has `count` entries (token reads are written within
/// a second), at most 10 s.
async fn settled(app: &TestApp, count: usize) -> Vec<(String, String, Option<String>, u16, u32)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = summary(app).await;
        if rows.len() >= count || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn row(
    actor: &str,
    action: &str,
    target: Option<&str>,
    status: u16,
    count: u32,
) -> (String, String, Option<String>, u16, u32) {
    (actor.into(), action.into(), target.map(str::to_owned), status, count)
}

#[tokio::test]
async fn token_fetches_and_changes_are_recorded_with_the_key_the_resource_and_the_answer() {
    let app = spawn_app().await;
    let (key, key_id) = project_key(&app, "p1", &["token", "admin"]).await;
    assert_eq!(
        summary(&app).await,
        [row("admin", "key.create", Some(&key_id), 201, 1)],
        "a change is recorded before it is answered"
    );

    // An import by the project key: the new connection's id is the target.
    let grant = app.provider.issue_grant();
    let request = app.http.post(app.url("/v1/connections")).json(&json!({
        "provider": PROVIDER, "external_id": "u1",
        "access_token": grant.access_token, "refresh_token": grant.refresh_token, "expires_in": 3600,
    }));
    let (status, body) = app.send(request, &key).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    // The change is written before its answer: no flush needed.
    assert_eq!(
        summary(&app).await.len(),
        2,
        "the import is recorded before it is answered"
    );

    // Three token fetches fold into one entry; a metadata read is not recorded.
    for _ in 0..3 {
        let (status, body) = app
            .send(app.http.get(app.url(&format!("/v1/connections/{id}/token"))), &key)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = app
        .send(app.http.get(app.url(&format!("/v1/connections/{id}"))), &key)
        .await;
    assert_eq!(status, 200);
    // A refused fetch (unknown connection) is recorded with its answer.
    let (status, _) = app
        .send(
            app.http
                .get(app.url("/v1/connections/con_00000000000000000000000000000000/token")),
            &key,
        )
        .await;
    assert_eq!(status, 404);
    // No valid key: not recorded (no actor), and never the presented text.
    let (status, _) = app
        .send(
            app.http.get(app.url(&format!("/v1/connections/{id}/token"))),
            "thk_0123456789ab_wrong",
        )
        .await;
    assert_eq!(status, 401);
    // A key without the `token` scope is refused, and the refusal recorded.
    let (reader, reader_id) = project_key(&app, "p1", &["read"]).await;
    let (status, _) = app
        .send(app.http.get(app.url(&format!("/v1/connections/{id}/token"))), &reader)
        .await;
    assert_eq!(status, 403);
    // Whatever a client puts in a path is not copied unless it is an id.
    let (status, _) = app
        .send(
            app.http
                .get(app.url(&format!("/v1/connections/{}/token", grant.access_token))),
            &key,
        )
        .await;
    assert_eq!(status, 404);
    // The delete, by the admin.
    let (status, _) = app
        .send(app.http.delete(app.url(&format!("/v1/connections/{id}"))), ADMIN_KEY)
        .await;
    assert_eq!(status, 204);

    assert_eq!(
        settled(&app, 8).await,
        [
            row("admin", "key.create", Some(&key_id), 201, 1),
            row(&key_id, "connection.create", Some(&id), 201, 1),
            row(&key_id, "token.read", Some(&id), 200, 3),
            row(
                &key_id,
                "token.read",
                Some("con_00000000000000000000000000000000"),
                404,
                1
            ),
            row("admin", "key.create", Some(&reader_id), 201, 1),
            row(&reader_id, "token.read", Some(&id), 403, 1),
            row(&key_id, "token.read", Some("(not an id)"), 404, 1),
            row("admin", "connection.delete", Some(&id), 204, 1),
        ]
    );
    let all = entries(&app).await;
    let import = all.iter().find(|r| r.entry.action == "connection.create").unwrap();
    assert_eq!(import.entry.actor_project.as_deref(), Some("p1"));
    assert_eq!(import.entry.client.as_deref(), Some("127.0.0.1"));
    assert!(import.entry.request_id.as_deref().is_some_and(|r| !r.is_empty()));

    // Nothing secret: no token, no key text.
    let stored = format!("{all:?}");
    for secret in [
        key.as_str(),
        ADMIN_KEY,
        grant.access_token.as_str(),
        grant.refresh_token.as_str(),
        "thk_0123456789ab_wrong",
    ] {
        assert!(!stored.contains(secret), "the audit log holds a secret");
    }
    app.stop().await;
}

#[tokio::test]
async fn audit_list_shows_the_entries_newest_first_and_filters_them() {
    let app = spawn_app().await;
    let grant = app.provider.issue_grant();
    let id = app.import(&grant, "u1", 3600).await;
    let (status, _) = app.get(&format!("/v1/connections/{id}/token")).await;
    assert_eq!(status, 200);
    settled(&app, 2).await;
    let config = app.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        common::config_toml(app.dir.path(), &app.provider.token_url(), false, ""),
    )
    .unwrap();
    let thermos = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_thermos"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .current_dir(app.dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };

    let lines: Vec<Value> = thermos(&["audit", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["action"], "token.read");
    assert_eq!(lines[0]["actor"], "admin");
    assert_eq!(lines[0]["target"], id.as_str());
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[1]["action"], "connection.create");

    let text = thermos(&["audit", "list", "--action", "connection.create"]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("connection.create") && text.contains(&id), "{text}");
    assert!(thermos(&["audit", "list", "--actor", "nobody"]).is_empty());
    app.stop().await;
}

//! Custom apps end to end: a project registers its own OAuth client for a
//! configured provider, and its connections refresh with it.
//!
//! The test provider's only client is `project-own-client` (secret
//! `own/secr+t`, which needs form-encoding in HTTP Basic), while the
//! configured provider keeps the default test credentials: refreshes with
//! the configured app fail with `invalid_client`, refreshes with the
//! project's app succeed.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{ADMIN_KEY, AppOptions, PROVIDER, TestApp, spawn_app_with};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use thermos::app::Application;
use thermos::config::Config;
use thermos_core::oauth::AuthMethod;
use thermos_store::{CustomAppRecord, Store};
use thermos_testprovider::{IssuedGrant, ProviderOptions};

const OWN_CLIENT: &str = "project-own-client";
const OWN_SECRET: &str = "own/secr+t";

/// A running Thermos whose configured client is not the provider's client.
async fn app_with_foreign_client() -> TestApp {
    spawn_app_with(AppOptions {
        provider: ProviderOptions {
            client_id: OWN_CLIENT.into(),
            client_secret: OWN_SECRET.into(),
            ..ProviderOptions::default()
        },
        ..AppOptions::default()
    })
    .await
}

async fn project_key(app: &TestApp, project: &str) -> String {
    let created = thermos::api_key::create(project, time::OffsetDateTime::now_utc());
    app.engine.store().insert_api_key(created.record.clone()).await.unwrap();
    created.key.expose_secret().to_owned()
}

/// Imports `grant` into `project`; returns the connection id.
async fn import_into(app: &TestApp, project: &str, grant: &IssuedGrant, external_id: &str) -> String {
    let (status, body) = app
        .post(
            "/v1/connections",
            json!({
                "project": project,
                "provider": PROVIDER,
                "external_id": external_id,
                "access_token": grant.access_token,
                "refresh_token": grant.refresh_token,
                "expires_in": 3600,
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn force_refresh(app: &TestApp, id: &str) -> (u16, Value) {
    app.post(&format!("/v1/connections/{id}/refresh"), json!({})).await
}

/// Reports that `grant`'s access token got a 401: a forced refresh.
async fn report_401(app: &TestApp, id: &str, grant: &IssuedGrant) -> (u16, Value) {
    app.post(
        &format!("/v1/connections/{id}/refresh"),
        json!({"rejected_token": grant.access_token}),
    )
    .await
}

/// The refresh failed: an error, or at most the still-valid current token
/// back (the engine's fallback), never a new one.
fn assert_no_new_token(status: u16, body: &Value, grant: &IssuedGrant) {
    if status == 200 {
        assert_eq!(body["access_token"], grant.access_token, "a new token: {body}");
    }
}

fn own_app(project: &str) -> Value {
    json!({
        "project": project,
        "provider": PROVIDER,
        "client_id": OWN_CLIENT,
        "client_secret": OWN_SECRET,
    })
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: u64, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(mentions), "{mentions:?} not in {body}");
}

fn resolved_client(app: &TestApp, project: &str) -> String {
    app.engine.apps().resolve(project, PROVIDER).unwrap().client_id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_that_registers_its_own_client_refreshes_with_it_and_other_projects_keep_the_configured_app() {
    let app = app_with_foreign_client().await;
    let mut responses = Vec::new();
    let grant = app.provider.issue_grant();
    let mine = import_into(&app, "p1", &grant, "user-1").await;
    let their_grant = app.provider.issue_grant();
    let theirs = import_into(&app, "p2", &their_grant, "user-2").await;

    // With the configured client the provider says invalid_client: no new
    // token, and the connection is not blamed for it.
    let (status, body) = report_401(&app, &mine, &grant).await;
    assert_no_new_token(status, &body, &grant);
    responses.push(body);
    let (_, attempts) = app.get(&format!("/v1/connections/{mine}/attempts")).await;
    assert_eq!(attempts["data"][0]["error_code"], "invalid_client", "{attempts}");
    assert_ne!(app.connection(&mine).await["status"], "needs_reauth");
    assert_eq!(app.provider.refreshes(), 0);

    let (status, registered) = app.post("/v1/apps", own_app("p1")).await;
    assert_eq!(status, 201, "{registered}");
    assert_eq!(registered["project"], "p1");
    assert_eq!(registered["provider"], PROVIDER);
    assert_eq!(registered["client_id"], OWN_CLIENT);
    assert_eq!(
        registered["auth_method"], "client_secret_basic",
        "the configured provider's method"
    );
    assert!(registered.get("client_secret").is_none(), "{registered}");
    assert_eq!(registered["created_at"], registered["updated_at"]);
    responses.push(registered);

    let (status, fresh) = report_401(&app, &mine, &grant).await;
    assert_eq!(status, 200, "{fresh}");
    let access_token = fresh["access_token"].as_str().unwrap();
    assert_ne!(access_token, grant.access_token);
    assert!(app.provider.access_token_is_valid(access_token));
    assert_eq!(app.provider.refreshes(), 1);
    assert_eq!(app.connection(&mine).await["status"], "active");

    // Another project's connections still go through the configured app.
    assert_eq!(resolved_client(&app, "p1"), OWN_CLIENT);
    assert_eq!(resolved_client(&app, "p2"), thermos_testprovider::DEFAULT_CLIENT_ID);
    let refreshes = app.provider.refreshes();
    let (status, body) = report_401(&app, &theirs, &their_grant).await;
    assert_no_new_token(status, &body, &their_grant);
    assert_eq!(
        app.provider.refreshes(),
        refreshes,
        "no refresh granted to the configured client"
    );
    assert_ne!(app.connection(&theirs).await["status"], "needs_reauth");
    responses.push(body);

    let (status, listed) = app.get("/v1/apps").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    responses.push(listed);

    for body in &responses {
        assert!(!body.to_string().contains(OWN_SECRET), "the secret leaked in {body}");
    }
    // Read while the app runs (stop() deletes the directory): the newest
    // pages are still in the WAL then.
    let mut files = Vec::new();
    for file in ["thermos.db", "thermos.db-wal"] {
        files.extend(std::fs::read(app.dir.path().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}")));
    }
    let contains = |needle: &str| files.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(OWN_CLIENT), "the registered app is not in the files read");
    assert!(!contains(OWN_SECRET), "the client secret is stored in clear");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_again_replaces_the_app_and_deleting_it_restores_the_configured_one() {
    let app = app_with_foreign_client().await;
    let (status, first) = app.post("/v1/apps", own_app("p1")).await;
    assert_eq!(status, 201, "{first}");

    let (status, again) = app
        .post(
            "/v1/apps",
            json!({
                "project": "p1",
                "provider": PROVIDER,
                "client_id": OWN_CLIENT,
                "client_secret": OWN_SECRET,
                "auth_method": "client_secret_post",
            }),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["auth_method"], "client_secret_post");
    assert_eq!(again["created_at"], first["created_at"]);
    let resolved = app.engine.apps().resolve("p1", PROVIDER).unwrap();
    assert_eq!(resolved.auth_method, AuthMethod::ClientSecretPost);
    let mine = import_into(&app, "p1", &app.provider.issue_grant(), "user-1").await;
    let (status, fresh) = force_refresh(&app, &mine).await;
    assert_eq!(status, 200, "client_secret_post works too: {fresh}");

    let path = format!("/v1/apps/{PROVIDER}?project=p1");
    let (status, body) = app.send(app.http.delete(app.url(&path)), ADMIN_KEY).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(resolved_client(&app, "p1"), thermos_testprovider::DEFAULT_CLIENT_ID);
    let (status, body) = app.send(app.http.delete(app.url(&path)), ADMIN_KEY).await;
    assert_error(status, &body, 404, 1603, "custom app");
    let (_, listed) = app.get("/v1/apps").await;
    assert_eq!(listed["data"], json!([]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_registration_is_a_400_naming_the_field() {
    let app = app_with_foreign_client().await;
    let cases = [
        (
            json!({"provider": "nope", "client_id": "c", "client_secret": "s"}),
            "provider",
        ),
        (
            json!({"provider": PROVIDER, "client_id": "  ", "client_secret": "s"}),
            "client_id",
        ),
        (
            json!({"provider": PROVIDER, "client_id": "c", "client_secret": "s", "auth_method": "magic"}),
            "auth_method",
        ),
        (json!({"provider": PROVIDER, "client_id": "c"}), "client_secret"),
        (
            json!({"provider": PROVIDER, "client_id": "c", "client_secret": "s", "auth_method": "none"}),
            "client_secret",
        ),
        (
            json!({"provider": PROVIDER, "client_id": "c", "client_secret": ""}),
            "client_secret",
        ),
        (
            json!({"project": "Not A Slug", "provider": PROVIDER, "client_id": "c", "client_secret": "s"}),
            "project",
        ),
        (json!({"provider": PROVIDER, "client_id": "c", "secret": "s"}), "secret"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/v1/apps", body.clone()).await;
        assert_error(status, &answer, 400, 1600, field);
        assert!(!answer.to_string().contains("\"s\""), "{answer}");
    }
    let (status, public) = app
        .post(
            "/v1/apps",
            json!({"provider": PROVIDER, "client_id": "public-client", "auth_method": "none"}),
        )
        .await;
    assert_eq!(status, 201, "a public client needs no secret: {public}");
    assert_eq!(public["project"], "default");
    let (_, listed) = app.get("/v1/apps").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_key_registers_sees_and_deletes_only_its_own_projects_apps() {
    let app = app_with_foreign_client().await;
    let p1 = project_key(&app, "p1").await;
    let (status, body) = app.post("/v1/apps", own_app("p2")).await;
    assert_eq!(status, 201, "{body}");

    let register = |project: Option<&str>| {
        let mut body = own_app("p1");
        body["project"] = json!(project);
        app.http.post(app.url("/v1/apps")).json(&body)
    };
    let (status, body) = app.send(register(Some("p2")), &p1).await;
    assert_error(status, &body, 403, 1606, "own project");
    let (status, body) = app.send(register(None), &p1).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["project"], "p1");

    let (status, listed) = app.send(app.http.get(app.url("/v1/apps")), &p1).await;
    assert_eq!(status, 200, "{listed}");
    let projects: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["project"].clone())
        .collect();
    assert_eq!(projects, [json!("p1")]);
    let (status, body) = app.send(app.http.get(app.url("/v1/apps?project=p2")), &p1).await;
    assert_error(status, &body, 403, 1606, "own project");
    let (_, all) = app.get("/v1/apps").await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        2,
        "the admin sees every project: {all}"
    );

    let delete = |project: &str| {
        app.http
            .delete(app.url(&format!("/v1/apps/{PROVIDER}?project={project}")))
    };
    let (status, body) = app.send(delete("p2"), &p1).await;
    assert_error(status, &body, 403, 1606, "own project");
    assert_eq!(resolved_client(&app, "p2"), OWN_CLIENT);
    let (status, _) = app.send(delete("p1"), &p1).await;
    assert_eq!(status, 204);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_apps_load_into_the_registry_and_apps_of_unconfigured_providers_are_skipped() {
    let app = app_with_foreign_client().await;
    let (status, body) = app.post("/v1/apps", own_app("p1")).await;
    assert_eq!(status, 201, "{body}");
    let now = thermos_store::truncate_to_millis(time::OffsetDateTime::now_utc());
    app.engine
        .store()
        .upsert_custom_app(CustomAppRecord {
            project: "p1".into(),
            provider: "retired-provider".into(),
            client_id: "old".into(),
            client_secret: None,
            auth_method: "none".into(),
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    // As after a restart: the registry starts with the configured apps only.
    assert!(app.engine.apps().remove_custom("p1", PROVIDER));
    assert_eq!(resolved_client(&app, "p1"), thermos_testprovider::DEFAULT_CLIENT_ID);

    let loaded = thermos::api::apps::load_into_registry(&app.engine).await.unwrap();
    assert_eq!(loaded, 1);
    assert_eq!(resolved_client(&app, "p1"), OWN_CLIENT);
    assert!(app.engine.apps().resolve("p1", "retired-provider").is_none());
    let mine = import_into(&app, "p1", &app.provider.issue_grant(), "user-1").await;
    let (status, fresh) = force_refresh(&app, &mine).await;
    assert_eq!(status, 200, "the reloaded secret opens and works: {fresh}");
    app.stop().await;
}

fn thermos(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_thermos"))
        .args(args)
        .env_remove("THERMOS_ADMIN_KEY")
        .env_remove("THERMOS_MASTER_KEY")
        .envs(envs.iter().copied())
        .output()
        .expect("run thermos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_registers_lists_and_deletes_apps_that_a_server_then_loads() {
    let provider = thermos_testprovider::TestProvider::start(ProviderOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = common::config_toml(dir.path(), &provider.token_url(), false, "");
    let config_path = dir.path().join("thermos.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let config_arg = config_path.to_str().unwrap();
    let create = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--config",
            config_arg,
            "apps",
            "create",
            "--project",
            "p1",
            "--provider",
            PROVIDER,
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect()
    };
    let run = |args: &[String], envs: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        thermos(&args, envs)
    };

    let (ok, out) = run(
        &create(&["--client-id", OWN_CLIENT, "--client-secret", OWN_SECRET]),
        &[],
    );
    assert!(!ok, "a secret as a plain argument is refused: {out}");
    let (ok, out) = run(&create(&["--client-id", OWN_CLIENT]), &[]);
    assert!(!ok && out.contains("--client-secret-env"), "{out}");
    let (ok, out) = run(
        &create(&["--client-id", OWN_CLIENT, "--client-secret-env", "OWN_SECRET"]),
        &[("OWN_SECRET", OWN_SECRET)],
    );
    assert!(ok, "{out}");
    assert!(out.contains("next start") && !out.contains(OWN_SECRET), "{out}");

    let (ok, out) = thermos(&["--config", config_arg, "apps", "list"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(OWN_CLIENT) && out.contains("1 custom app(s)") && !out.contains(OWN_SECRET),
        "{out}"
    );

    // A server on the same database and key loads it.
    let config = Config::from_toml_str(&toml).unwrap();
    let (key, _) = config.load_or_create_master_key_with(None).unwrap();
    let server = Application::build(&config, key, None, thermos::app::system_clock())
        .await
        .unwrap();
    assert_eq!(
        thermos::api::apps::load_into_registry(server.engine()).await.unwrap(),
        1
    );
    let loaded = server.engine().apps().resolve("p1", PROVIDER).unwrap();
    assert_eq!(loaded.client_id, OWN_CLIENT);
    assert_eq!(loaded.client_secret.as_ref().unwrap().expose_secret(), OWN_SECRET);
    drop(server);

    let (ok, out) = thermos(
        &[
            "--config",
            config_arg,
            "apps",
            "delete",
            "--project",
            "p1",
            "--provider",
            PROVIDER,
        ],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = thermos(
        &[
            "--config",
            config_arg,
            "apps",
            "delete",
            "--project",
            "p1",
            "--provider",
            PROVIDER,
        ],
        &[],
    );
    assert!(!ok && out.contains("no custom app"), "{out}");
    let store: Arc<dyn Store> = thermos::app::open_store(&config).await.unwrap();
    assert!(store.list_custom_apps(None).await.unwrap().is_empty());
}

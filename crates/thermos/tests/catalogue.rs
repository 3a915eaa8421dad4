//! The provider catalogue: every entry is sound, a `[[provider]]` naming an
//! entry gets its settings (explicit keys win), placeholders, the generic
//! `oidc` entry discovering its endpoints from a metadata document served
//! on loopback, and `thermos providers list|show` as a process.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use thermos::catalogue::{self, Rotation, auth_method_name, resolve_discovery};
use thermos::config::Config;
use thermos_core::oauth::AuthMethod;

/// The example value given to a placeholder that has no default.
const SAMPLE_PARAM: &str = "example.test";

fn config(toml: &str) -> Config {
    Config::from_toml_str_with_env(toml, [("SECRET".to_owned(), "s3cret".to_owned())]).unwrap()
}

fn problems(toml: &str) -> Vec<String> {
    match Config::from_toml_str_with_env(toml, [("SECRET".to_owned(), "s3cret".to_owned())]) {
        Ok(_) => panic!("expected a config error"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_catalogue_entry_parses_and_has_https_endpoints_once_its_placeholders_are_filled() {
    let entries = catalogue::parse(catalogue::CATALOGUE_TOML).unwrap();
    assert_eq!(entries, catalogue::entries());
    let mut slugs = HashSet::new();
    for entry in &entries {
        assert!(slugs.insert(entry.slug.clone()), "duplicate slug {}", entry.slug);
        assert!(!entry.name.trim().is_empty(), "{}: empty name", entry.slug);
        assert!(
            ["client_secret_basic", "client_secret_post", "none"].contains(&auth_method_name(entry.auth_method)),
            "{}",
            entry.slug
        );
        assert!(!entry.access_token_ttl.is_zero(), "{}", entry.slug);
        assert!(!entry.quirks.is_empty(), "{}: no quirks text", entry.slug);
        assert!([" ", ","].contains(&entry.scope_separator.as_str()), "{}", entry.slug);
        if entry.discovery {
            assert!(entry.authorization_url.is_none() && entry.token_url.is_none());
            continue;
        }
        let given: BTreeMap<String, String> = entry
            .params
            .iter()
            .filter(|(_, p)| p.default.is_none())
            .map(|(name, _)| (name.clone(), SAMPLE_PARAM.to_owned()))
            .collect();
        let endpoints = entry
            .endpoints(&given)
            .unwrap_or_else(|e| panic!("{}: {e}", entry.slug));
        let urls = [
            Some(&endpoints.authorization_url),
            Some(&endpoints.token_url),
            endpoints.revocation_url.as_ref(),
        ];
        for url in urls.into_iter().flatten() {
            assert_eq!(url.scheme(), "https", "{}: {url}", entry.slug);
            assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{}: {url}", entry.slug);
            assert!(
                !url.as_str().contains(['{', '}']),
                "{}: unfilled placeholder in {url}",
                entry.slug
            );
        }
    }
}

#[test]
fn the_catalogue_has_the_common_providers_and_a_generic_oidc_entry() {
    for slug in [
        "google",
        "microsoft",
        "slack",
        "github",
        "salesforce",
        "hubspot",
        "atlassian",
        "notion",
        "zoom",
        "dropbox",
        "box",
        "xero",
        "quickbooks",
        "linear",
        "asana",
        "oidc",
    ] {
        assert!(catalogue::entry(slug).is_some(), "no catalogue entry {slug}");
    }
    assert!(catalogue::entry("oidc").unwrap().discovery);
    assert_eq!(catalogue::entry("google").unwrap().rotation, Rotation::No);
    assert_eq!(catalogue::entry("slack").unwrap().scope_separator, ",");
}

#[test]
fn the_toml_each_entry_shows_configures_it() {
    for entry in catalogue::entries().iter().filter(|e| !e.discovery) {
        let toml = catalogue::config_toml(entry).replace("CHANGE_ME", SAMPLE_PARAM);
        let env = [(catalogue::secret_env_name(&entry.slug), "s3cret".to_owned())];
        let config =
            Config::from_toml_str_with_env(&toml, env).unwrap_or_else(|e| panic!("{}: {e}\n{toml}", entry.slug));
        let app = config.provider(&entry.slug).unwrap();
        assert_eq!(app.scopes, entry.scopes, "{}", entry.slug);
        assert_eq!(app.default_ttl, entry.access_token_ttl, "{}", entry.slug);
    }
}

#[test]
fn a_slack_provider_with_only_credentials_gets_the_catalogue_settings() {
    let config = config(
        r#"
        [[provider]]
        slug = "my-slack"
        catalogue = "slack"
        client_id = "123.456"
        client_secret_env = "SECRET"
        "#,
    );
    let app = config.provider("my-slack").unwrap();
    assert_eq!(app.token_url.as_str(), "https://slack.com/api/oauth.v2.access");
    assert_eq!(
        app.authorization_url.as_ref().map(url::Url::as_str),
        Some("https://slack.com/oauth/v2/authorize")
    );
    assert_eq!(app.auth_method, AuthMethod::ClientSecretPost);
    assert_eq!(app.scopes, ["users:read"]);
    assert_eq!(app.default_ttl, Duration::from_secs(12 * 3600));
    assert!(app.extra_params.is_empty());
    assert!(app.revocation_url.is_none(), "auth.revoke is not RFC 7009");
    assert_eq!(app.client_id, "123.456");
    assert!(app.client_secret.is_some());
    assert_eq!(app.scope_separator, ',', "Slack joins scopes with commas");
    assert_eq!(
        app.join_scopes(&["chat:write".into(), "users:read".into()]),
        "chat:write,users:read"
    );
    assert_eq!(
        app.refresh_token_rules.keep_alive, None,
        "Slack does not expire idle tokens"
    );
    assert!(config.pending_discovery.is_empty());
    // The secret never shows in the configuration's Debug output.
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn authorization_parameters_go_into_the_authorization_url() {
    let config = config(
        r#"
        [[provider]]
        slug = "google"
        catalogue = "google"
        client_id = "id"
        client_secret_env = "SECRET"
        "#,
    );
    let google = config.provider("google").unwrap();
    assert_eq!(
        google.revocation_url.as_ref().map(url::Url::as_str),
        Some("https://oauth2.googleapis.com/revoke")
    );
    let url = google.authorization_url.clone().unwrap();
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query.get("access_type").map(String::as_str), Some("offline"));
    assert_eq!(query.get("prompt").map(String::as_str), Some("consent"));
    assert_eq!(google.scope_separator, ' ');
    // Google revokes refresh tokens unused for 6 months: refreshed at least every 90 days.
    assert_eq!(
        google.refresh_token_rules.keep_alive,
        Some(Duration::from_secs(90 * 24 * 3600))
    );
}

#[test]
fn keys_given_explicitly_win_over_the_catalogue() {
    let config = config(
        r#"
        [[provider]]
        slug = "slack-custom"
        catalogue = "slack"
        client_id = "id"
        client_secret_env = "SECRET"
        token_url = "https://slack.example.com/token"
        authorization_url = "https://slack.example.com/authorize"
        auth_method = "client_secret_basic"
        scopes = ["channels:read", "chat:write"]
        default_ttl = "30m"
        extra_params = { team = "T1" }
        "#,
    );
    let app = config.provider("slack-custom").unwrap();
    assert_eq!(app.token_url.as_str(), "https://slack.example.com/token");
    assert_eq!(
        app.authorization_url.as_ref().map(url::Url::as_str),
        Some("https://slack.example.com/authorize")
    );
    assert_eq!(app.auth_method, AuthMethod::ClientSecretBasic);
    assert_eq!(app.scopes, ["channels:read", "chat:write"]);
    assert_eq!(app.default_ttl, Duration::from_secs(1800));
    assert_eq!(app.extra_params.get("team").map(String::as_str), Some("T1"));
}

#[test]
fn an_unknown_catalogue_name_is_an_error_listing_the_valid_names() {
    let found = problems(
        r#"
        [[provider]]
        slug = "x"
        catalogue = "gogle"
        client_id = "id"
        client_secret_env = "SECRET"
        "#,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("provider[0].catalogue: unknown catalogue entry \"gogle\""),
        "{found:?}"
    );
    for name in ["google", "microsoft", "oidc"] {
        assert!(found[0].contains(name), "{found:?}");
    }
}

#[test]
fn a_provider_without_a_catalogue_still_needs_its_token_url() {
    let found = problems("[[provider]]\nslug = \"x\"\nclient_id = \"id\"\nclient_secret_env = \"SECRET\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("provider[0].token_url: required"), "{found:?}");
}

#[test]
fn placeholders_take_their_defaults_or_the_configured_catalogue_params() {
    let config = config(
        r#"
        [[provider]]
        slug = "ms-common"
        catalogue = "microsoft"
        client_id = "id"
        client_secret_env = "SECRET"

        [[provider]]
        slug = "ms-contoso"
        catalogue = "microsoft"
        client_id = "id"
        client_secret_env = "SECRET"
        catalogue_params = { tenant = "contoso.onmicrosoft.com" }

        [[provider]]
        slug = "sf-sandbox"
        catalogue = "salesforce"
        client_id = "id"
        client_secret_env = "SECRET"
        catalogue_params = { domain = "test.salesforce.com" }

        [[provider]]
        slug = "okta"
        catalogue = "okta"
        client_id = "id"
        client_secret_env = "SECRET"
        catalogue_params = { domain = "acme.okta.com" }
        "#,
    );
    let token = |slug: &str| config.provider(slug).unwrap().token_url.to_string();
    assert_eq!(
        token("ms-common"),
        "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    );
    assert_eq!(
        token("ms-contoso"),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(token("sf-sandbox"), "https://test.salesforce.com/services/oauth2/token");
    assert_eq!(token("okta"), "https://acme.okta.com/oauth2/default/v1/token");
}

#[test]
fn a_missing_or_bad_catalogue_param_is_an_error_naming_its_key() {
    let found = problems(
        r#"
        [[provider]]
        slug = "okta"
        catalogue = "okta"
        client_id = "id"
        client_secret_env = "SECRET"

        [[provider]]
        slug = "sf"
        catalogue = "salesforce"
        client_id = "id"
        client_secret_env = "SECRET"
        catalogue_params = { domain = "evil.example/x", region = "eu" }

        [[provider]]
        slug = "plain"
        token_url = "https://auth.example.com/token"
        client_id = "id"
        client_secret_env = "SECRET"
        catalogue_params = { tenant = "x" }
        "#,
    );
    let has = |prefix: &str| found.iter().any(|p| p.starts_with(prefix));
    assert!(
        has("provider[0].catalogue_params.domain: required by catalogue entry \"okta\""),
        "{found:?}"
    );
    assert!(
        has("provider[1].catalogue_params.domain: expected letters, digits"),
        "{found:?}"
    );
    assert!(
        has("provider[1].catalogue_params.region: unknown parameter"),
        "{found:?}"
    );
    assert!(has("provider[2].catalogue_params: only with catalogue"), "{found:?}");
}

// ----- discovery -----------------------------------------------------------------

/// A metadata document built from the server's own base URL.
type Document = fn(&str) -> serde_json::Value;

/// Serves `documents` (path → JSON built from the server's own base URL) on
/// loopback; answers 404 elsewhere. Returns the base URL (`http://127.0.0.1:port`).
async fn metadata_server(documents: Vec<(&'static str, Document)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut router = Router::new();
    for (path, document) in documents {
        let body = document(&base).to_string();
        router = router.route(
            path,
            get(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
    }
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

fn oidc_metadata(base: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "revocation_endpoint": format!("{base}/revoke"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    })
}

fn oidc_config(issuer: &str) -> Config {
    config(&format!(
        r#"
        [[provider]]
        slug = "first"
        token_url = "https://auth.example.com/token"
        client_id = "id"
        client_secret_env = "SECRET"

        [[provider]]
        slug = "idp"
        catalogue = "oidc"
        issuer = "{issuer}"
        client_id = "id"
        client_secret_env = "SECRET"

        [[provider]]
        slug = "last"
        catalogue = "hubspot"
        client_id = "id"
        client_secret_env = "SECRET"
        "#
    ))
}

#[tokio::test]
async fn the_oidc_entry_discovers_its_endpoints_from_the_issuers_metadata() {
    let base = metadata_server(vec![("/.well-known/openid-configuration", oidc_metadata)]).await;
    let mut config = oidc_config(&base);
    assert!(config.provider("idp").is_none(), "waits for discovery");
    assert_eq!(config.pending_discovery.len(), 1);

    resolve_discovery(&mut config).await.unwrap();

    assert!(config.pending_discovery.is_empty());
    let slugs: Vec<&str> = config.providers.iter().map(|p| p.slug.as_str()).collect();
    assert_eq!(slugs, ["first", "idp", "last"], "file order is kept");
    let app = config.provider("idp").unwrap();
    assert_eq!(app.token_url.as_str(), format!("{base}/token"));
    assert_eq!(
        app.authorization_url.as_ref().map(url::Url::as_str),
        Some(format!("{base}/authorize").as_str())
    );
    assert_eq!(
        app.revocation_url.as_ref().map(url::Url::as_str),
        Some(format!("{base}/revoke").as_str())
    );
    assert_eq!(app.auth_method, AuthMethod::ClientSecretBasic);
    assert_eq!(app.scopes, ["openid", "offline_access"]);
}

#[tokio::test]
async fn discovery_falls_back_to_the_rfc_8414_document() {
    fn post_only(base: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/oauth/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
        })
    }
    let base = metadata_server(vec![("/.well-known/oauth-authorization-server", post_only)]).await;
    let mut config = oidc_config(&base);
    resolve_discovery(&mut config).await.unwrap();
    let app = config.provider("idp").unwrap();
    assert_eq!(app.token_url.as_str(), format!("{base}/oauth/token"));
    assert_eq!(
        app.auth_method,
        AuthMethod::ClientSecretPost,
        "the server supports only post"
    );
}

#[tokio::test]
async fn metadata_of_another_issuer_is_refused() {
    fn other_issuer(_base: &str) -> serde_json::Value {
        serde_json::json!({
            "issuer": "https://attacker.example.com",
            "token_endpoint": "https://attacker.example.com/token",
        })
    }
    let base = metadata_server(vec![("/.well-known/openid-configuration", other_issuer)]).await;
    let mut config = oidc_config(&base);
    let error = resolve_discovery(&mut config).await.unwrap_err().to_string();
    assert!(error.starts_with("provider \"idp\": discovery for issuer"), "{error}");
    assert!(error.contains("\"https://attacker.example.com\""), "{error}");
    assert!(error.contains("RFC 8414 §3.3"), "{error}");
    assert!(config.provider("idp").is_none());
    assert_eq!(config.pending_discovery.len(), 1);
}

#[tokio::test]
async fn an_issuer_without_metadata_is_an_error_naming_both_documents() {
    let base = metadata_server(vec![]).await;
    let mut config = oidc_config(&base);
    let error = resolve_discovery(&mut config).await.unwrap_err().to_string();
    assert!(error.contains("no metadata document"), "{error}");
    assert!(
        error.contains(&format!("{base}/.well-known/openid-configuration: HTTP 404")),
        "{error}"
    );
    assert!(
        error.contains(&format!("{base}/.well-known/oauth-authorization-server: HTTP 404")),
        "{error}"
    );
}

#[tokio::test]
async fn discovered_endpoints_must_be_https_off_loopback() {
    fn plain_http(base: &str) -> serde_json::Value {
        serde_json::json!({ "issuer": base, "token_endpoint": "http://idp.example.com/token" })
    }
    let base = metadata_server(vec![("/.well-known/openid-configuration", plain_http)]).await;
    let mut config = oidc_config(&base);
    let error = resolve_discovery(&mut config).await.unwrap_err().to_string();
    assert!(error.contains("token_endpoint must be https"), "{error}");
}

#[test]
fn the_oidc_entry_needs_an_issuer_and_only_it_takes_one() {
    let found = problems(
        r#"
        [[provider]]
        slug = "idp"
        catalogue = "oidc"
        client_id = "id"
        client_secret_env = "SECRET"

        [[provider]]
        slug = "g"
        catalogue = "google"
        issuer = "https://accounts.google.com"
        client_id = "id"
        client_secret_env = "SECRET"

        [[provider]]
        slug = "plain-http"
        catalogue = "oidc"
        issuer = "http://idp.example.com"
        client_id = "id"
        client_secret_env = "SECRET"
        "#,
    );
    let has = |prefix: &str| found.iter().any(|p| p.starts_with(prefix));
    assert!(
        has("provider[0].issuer: required with catalogue = \"oidc\""),
        "{found:?}"
    );
    assert!(has("provider[1].issuer: only with catalogue = \"oidc\""), "{found:?}");
    assert!(
        has("provider[2].issuer: http:// is allowed only for loopback hosts"),
        "{found:?}"
    );
}

// ----- the CLI -----------------------------------------------------------------

fn thermos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_thermos"))
        .args(args)
        // The catalogue needs no configuration: a missing file is not read.
        .env("THERMOS_CONFIG", "/nonexistent/thermos.toml")
        .output()
        .unwrap()
}

#[test]
fn providers_list_prints_one_line_per_entry() {
    let output = thermos(&["providers", "list"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), catalogue::entries().len(), "{stdout}");
    let slack = lines.iter().find(|l| l.starts_with("slack ")).unwrap();
    assert!(
        slack.contains("Slack") && slack.contains("optional") && slack.contains("12h"),
        "{slack}"
    );

    let output = thermos(&["providers", "list", "--json"]);
    assert!(output.status.success());
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(entries.len(), catalogue::entries().len());
    let google = entries.iter().find(|e| e["slug"] == "google").unwrap();
    assert_eq!(google["rotation"], "no");
    assert_eq!(google["access_token_ttl_seconds"], 3600);
    assert_eq!(google["token_url"], "https://oauth2.googleapis.com/token");
}

#[test]
fn providers_show_prints_every_field_and_the_toml_to_configure_it() {
    let output = thermos(&["providers", "show", "microsoft"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "token_url             https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
        "rotation              yes",
        "refresh_token_ttl     90d",
        "{tenant} (default \"common\")",
        "catalogue = \"microsoft\"",
        "client_secret_env = \"MICROSOFT_CLIENT_SECRET\"",
    ] {
        assert!(stdout.contains(needle), "{needle}\n{stdout}");
    }

    let output = thermos(&["providers", "show", "xero", "--json"]);
    assert!(output.status.success());
    let xero: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(xero["reuse_grace_seconds"], 1800);
    assert_eq!(xero["revocation_url"], "https://identity.xero.com/connect/revocation");
    assert!(xero["config_toml"].as_str().unwrap().contains("catalogue = \"xero\""));

    let output = thermos(&["providers", "show", "nope"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no catalogue entry \"nope\"") && stderr.contains("google"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_check_discovers_the_oidc_endpoints_and_fails_clearly_without_them() {
    let base = metadata_server(vec![("/.well-known/openid-configuration", oidc_metadata)]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thermos.toml");
    let write = |issuer: &str| {
        std::fs::write(
            &path,
            format!(
                "[[provider]]\nslug = \"idp\"\ncatalogue = \"oidc\"\nissuer = \"{issuer}\"\n\
                 client_id = \"id\"\nclient_secret_env = \"IDP_SECRET\"\n"
            ),
        )
        .unwrap();
    };
    let check = || {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_thermos"))
                    .args(["config", "check", "--config"])
                    .arg(&path)
                    .env("IDP_SECRET", "very-secret-value")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };

    write(&base);
    let output = check().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let port = base.rsplit(':').next().unwrap();
    assert!(stdout.contains("slug: \"idp\""), "{stdout}");
    // `config check` prints the Debug form: the discovered endpoint's port and path.
    assert!(stdout.contains(&format!("{port},")), "{stdout}");
    assert!(stdout.contains("path: \"/token\""), "{stdout}");
    assert!(!stdout.contains("very-secret-value"), "{stdout}");

    // An issuer nobody answers for: a startup error naming the provider.
    let dead = metadata_server(vec![]).await;
    write(&dead);
    let output = check().await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("provider \"idp\": discovery for issuer"), "{stderr}");
    assert!(!stderr.contains("very-secret-value"), "{stderr}");
}

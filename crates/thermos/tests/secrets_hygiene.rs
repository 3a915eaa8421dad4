//! Secrets hygiene: the real `thermos` binary, run with known secret values
//! (access and refresh tokens, rotated ones included, client secrets of a
//! configured and a custom app, the admin key, a project key, the master key,
//! a webhook signing secret), driven through every endpoint and failure path
//! this test can reach. Everything it says is captured — its JSON log
//! (stdout and stderr), every HTTP answer's status line, headers and body,
//! `/metrics`, every event and webhook delivery — and searched for those
//! secrets, raw and encoded. Only the token endpoint's answers to an
//! authorised caller (and the one-time answers that create a key or a
//! webhook) may contain one.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use common::eventually;
use common::receiver::Receiver;
use reqwest::Method;
use serde_json::{Value, json};
use thermos_testprovider::{Fault, IssuedGrant, ProviderOptions, TestProvider};

const ADMIN_KEY: &str = "adm-SECRET-hygiene-4f1c9a7e2b";
const CONFIG_CLIENT_ID: &str = "hygiene-client";
const CONFIG_SECRET: &str = "cfg-SECRET+/=:%-7d3e1b";
const CUSTOM_CLIENT_ID: &str = "hygiene-custom";
const CUSTOM_SECRET: &str = "own-SECRET/+=&-9a8b7c";
/// The secret the second provider is configured with: wrong, so its
/// connections refresh only through the project's custom app.
const STALE_SECRET: &str = "stale-SECRET-0e5f2a";
/// Tokens no provider issued: refreshing them is `invalid_grant`.
const UNKNOWN_ACCESS: &str = "at_SECRET-unknown-access-51b2";
const UNKNOWN_REFRESH: &str = "rt_SECRET-unknown+refresh/=93";
/// A bearer key that looks like a secret but is none of Thermos's.
const FORGED_KEY: &str = "thm_SECRET-forged-key-0c4d8e";
/// Shortest window of a secret looked for (catches a cut-off echo).
const WINDOW: usize = 20;

/// Everything Thermos said, labelled by where it came from.
#[derive(Default)]
struct Capture {
    texts: Vec<(String, String)>,
    /// Answers allowed to carry a secret (token endpoint, created key or webhook).
    allowed: usize,
}

impl Capture {
    fn push(&mut self, label: impl Into<String>, text: impl Into<String>) {
        self.texts.push((label.into(), text.into()));
    }
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(config: &Path, master_key: &str, log: PathBuf) -> Option<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_thermos"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("THERMOS_ADMIN_KEY", ADMIN_KEY)
            .env("THERMOS_MASTER_KEY", master_key)
            .env(
                "RUST_LOG",
                "trace,hyper=debug,h2=info,sqlx=debug,rustls=info,tower=debug",
            )
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start thermos");
        let mut listen = None;
        let mut exited = false;
        eventually(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            listen = text
                .lines()
                .rev()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["msg"] == "thermos is serving")
                .and_then(|l| l["listen"].as_str().map(str::to_owned));
            exited = child.try_wait().ok().flatten().is_some();
            std::future::ready(listen.is_some() || exited)
        })
        .await;
        if exited {
            return None;
        }
        let listen = listen.expect("thermos did not start");
        Some(Self {
            child,
            base: format!("http://{listen}"),
        })
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends requests and records every answer in full.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn call(
        &self,
        capture: &mut Capture,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value) {
        let (status, text) = self.raw(capture, method, path, key, body, false).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Like `call`, for an answer that may hand out a secret (a token to an
    /// authorised caller): its headers are captured, its body is not.
    async fn call_allowed(
        &self,
        capture: &mut Capture,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        let (status, text) = self.raw(capture, method, path, Some(ADMIN_KEY), body, true).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn raw(
        &self,
        capture: &mut Capture,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<String>,
        allowed: bool,
    ) -> (u16, String) {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let head = format!("{:?} {:?}", response.status(), response.headers());
        let text = response.text().await.expect("body read");
        let label = format!("{method} {path} → {status}");
        capture.push(format!("{label} (headers)"), head);
        if allowed && (200..300).contains(&status) {
            capture.allowed += 1;
        } else {
            capture.push(label, text.clone());
        }
        (status, text)
    }
}

fn write_config(dir: &Path, primary: &TestProvider, second: &TestProvider) -> PathBuf {
    let path = dir.join("thermos.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
[security]
allow_private_targets = true
[refresh]
request_timeout = "2s"
backoff_initial = "1s"
backoff_max = "2s"
max_retries = 2
[[provider]]
slug = "primary"
token_url = "{primary}"
revocation_url = "{primary_revoke}"
client_id = "{CONFIG_CLIENT_ID}"
client_secret = "{CONFIG_SECRET}"
auth_method = "client_secret_basic"
default_ttl = "1h"
[[provider]]
slug = "second"
token_url = "{second}"
revocation_url = "{second_revoke}"
client_id = "{CONFIG_CLIENT_ID}"
client_secret = "{STALE_SECRET}"
auth_method = "client_secret_post"
default_ttl = "1h"
"#,
        db = dir.join("thermos.db").display(),
        primary = primary.token_url(),
        second = second.token_url(),
        primary_revoke = primary.revoke_url(),
        second_revoke = second.revoke_url(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn import_body(
    project: &str,
    provider: &str,
    external_id: &str,
    access: &str,
    refresh: &str,
    expires_in: u64,
) -> String {
    json!({"project": project, "provider": provider, "external_id": external_id,
        "access_token": access, "refresh_token": refresh, "expires_in": expires_in})
    .to_string()
}

async fn import(
    client: &Client,
    capture: &mut Capture,
    provider: &str,
    external_id: &str,
    grant: &IssuedGrant,
    expires_in: u64,
) -> String {
    let body = import_body(
        "p1",
        provider,
        external_id,
        &grant.access_token,
        &grant.refresh_token,
        expires_in,
    );
    let (status, created) = client
        .call(capture, Method::POST, "/v1/connections", Some(ADMIN_KEY), Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// The forms a secret may take on the wire or in a text: as is, form- and
/// percent-encoded, base64 (both alphabets) and JSON-escaped.
fn encodings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].to_owned();
    vec![
        secret.to_owned(),
        form.clone(),
        form.replace('+', "%20"),
        STANDARD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        json.replace('/', "\\/"),
        json,
    ]
}

/// `Basic …` credentials as a client would send them for `id:secret`.
fn basic(id: &str, secret: &str) -> String {
    let encode = |raw: &str| url::form_urlencoded::byte_serialize(raw.as_bytes()).collect::<String>();
    STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
}

/// Every place in `capture` where a secret (any of its encodings, or any
/// `WINDOW`-long piece of it) appears.
fn leaks(capture: &Capture, secrets: &[(String, String)]) -> Vec<String> {
    let mut needles: Vec<(String, String)> = Vec::new();
    let mut windows: HashSet<&[u8]> = HashSet::new();
    let mut window_owner = std::collections::HashMap::new();
    for (name, secret) in secrets {
        for form in encodings(secret) {
            needles.push((name.clone(), form));
        }
    }
    for (name, form) in &needles {
        if form.len() > WINDOW {
            for w in form.as_bytes().windows(WINDOW) {
                windows.insert(w);
                window_owner.insert(w, name.clone());
            }
        }
    }
    let mut found = Vec::new();
    for (label, text) in &capture.texts {
        for (name, form) in &needles {
            if form.len() >= 8 && text.contains(form.as_str()) {
                found.push(format!("{name} ({form}) in {label}: {}", excerpt(text, form)));
            }
        }
        for w in text.as_bytes().windows(WINDOW) {
            if windows.contains(w) {
                let piece = String::from_utf8_lossy(w).into_owned();
                found.push(format!(
                    "part of {} ({piece}) in {label}: {}",
                    window_owner[w],
                    excerpt(text, &piece)
                ));
                break;
            }
        }
    }
    found
}

fn excerpt(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let mut start = at.saturating_sub(200);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + needle.len() + 200).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[start..end].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_answers_metrics_events_or_webhook_deliveries() {
    let started = Instant::now();
    let primary = TestProvider::start(ProviderOptions {
        client_id: CONFIG_CLIENT_ID.into(),
        client_secret: CONFIG_SECRET.into(),
        access_token_ttl: Duration::from_secs(3600),
        ..ProviderOptions::default()
    })
    .await;
    let second = TestProvider::start(ProviderOptions {
        client_id: CUSTOM_CLIENT_ID.into(),
        client_secret: CUSTOM_SECRET.into(),
        ..ProviderOptions::default()
    })
    .await;
    let receiver = Receiver::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &primary, &second);
    let master_key = STANDARD.encode(*b"master-SECRET-key-32-bytes-long!");
    let log = dir.path().join("serve.log");
    let mut server = Server::start(&config, &master_key, log.clone())
        .await
        .expect("thermos starts");
    let client = Client {
        http: reqwest::Client::new(),
        base: server.base.clone(),
    };
    let c = &mut Capture::default();
    let mut extra_secrets: Vec<(String, String)> = Vec::new();

    // A project key, created by the CLI (its stdout is the one place it is shown).
    let keys = Command::new(env!("CARGO_BIN_EXE_thermos"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "keys",
            "create",
            "--project",
            "p1",
        ])
        .env("THERMOS_MASTER_KEY", &master_key)
        .output()
        .expect("thermos keys create");
    assert!(keys.status.success(), "{}", String::from_utf8_lossy(&keys.stderr));
    let project_key = String::from_utf8(keys.stdout).unwrap().trim().to_owned();
    assert!(project_key.len() >= 20, "{project_key}");
    c.push("keys create (stderr)", String::from_utf8_lossy(&keys.stderr));
    extra_secrets.push(("project key".into(), project_key.clone()));

    // A webhook to a loopback receiver; its secret is shown once, here.
    let hook = json!({"project": "p1", "url": receiver.url()}).to_string();
    let (status, created) = client
        .raw(c, Method::POST, "/v1/webhooks", Some(&project_key), Some(hook), true)
        .await;
    assert_eq!(status, 201, "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    let whsec = created["secret"].as_str().unwrap().to_owned();
    extra_secrets.push(("webhook secret".into(), whsec.clone()));
    if let Some(raw) = whsec.strip_prefix("whsec_") {
        extra_secrets.push(("webhook secret key".into(), raw.to_owned()));
    }

    // A project key created over the API: shown in the 201 answer only; then
    // used, listed (prefix only), revoked and refused.
    let create_key = json!({"project": "p1", "scopes": ["read", "token"], "expires_in": "90d"}).to_string();
    let (status, created_key) = client
        .raw(c, Method::POST, "/v1/keys", Some(ADMIN_KEY), Some(create_key), true)
        .await;
    assert_eq!(status, 201, "{created_key}");
    let created_key: Value = serde_json::from_str(&created_key).unwrap();
    let api_key = created_key["key"].as_str().unwrap().to_owned();
    extra_secrets.push(("key from POST /v1/keys".into(), api_key.clone()));
    if let Some(secret) = api_key.splitn(3, '_').nth(2) {
        extra_secrets.push(("secret part of the key from POST /v1/keys".into(), secret.to_owned()));
    }
    let (status, _) = client
        .call(c, Method::GET, "/v1/connections", Some(&api_key), None)
        .await;
    assert_eq!(status, 200);
    client.call(c, Method::GET, "/v1/keys", Some(ADMIN_KEY), None).await;
    let (status, _) = client
        .call(
            c,
            Method::DELETE,
            &format!("/v1/keys/{}", created_key["prefix"].as_str().unwrap()),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = client
        .call(c, Method::GET, "/v1/connections", Some(&api_key), None)
        .await;
    assert_eq!(status, 401, "a revoked key is refused");
    // The CLI's listing and revocation (stdout and stderr are searched too).
    let list = Command::new(env!("CARGO_BIN_EXE_thermos"))
        .args(["--config", config.to_str().unwrap(), "keys", "list", "--json"])
        .env("THERMOS_MASTER_KEY", &master_key)
        .output()
        .expect("thermos keys list");
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    c.push("keys list (stdout)", String::from_utf8_lossy(&list.stdout));
    c.push("keys list (stderr)", String::from_utf8_lossy(&list.stderr));

    // The custom app: the second provider accepts only the project's own client.
    let app = json!({"project": "p1", "provider": "second", "client_id": CUSTOM_CLIENT_ID,
        "client_secret": CUSTOM_SECRET, "auth_method": "client_secret_basic"})
    .to_string();
    let (status, body) = client
        .call(c, Method::POST, "/v1/apps", Some(ADMIN_KEY), Some(app))
        .await;
    assert_eq!(status, 201, "{body}");
    client.call(c, Method::GET, "/v1/apps", Some(ADMIN_KEY), None).await;
    client
        .call(c, Method::GET, "/v1/apps?project=p1", Some(&project_key), None)
        .await;

    // Connections: healthy ones on each provider, one that will fail in every way.
    let grants: Vec<IssuedGrant> = (0..6).map(|_| primary.issue_grant()).collect();
    let mut ids = Vec::new();
    for (i, grant) in grants.iter().enumerate() {
        ids.push(import(&client, c, "primary", &format!("user-{i}"), grant, 3600).await);
    }
    let custom_grant = second.issue_grant();
    let custom_id = import(&client, c, "second", "custom-user", &custom_grant, 3600).await;
    let unknown = import_body("p1", "primary", "unknown-user", UNKNOWN_ACCESS, UNKNOWN_REFRESH, 3600);
    let (status, body) = client
        .call(c, Method::POST, "/v1/connections", Some(&project_key), Some(unknown))
        .await;
    assert_eq!(status, 201, "{body}");
    let unknown_id = body["id"].as_str().unwrap().to_owned();

    // A JWT-bearer connection: its private key (every line of it) is a
    // secret, as is a broken key refused at import.
    const JWT_KEY: &str = include_str!("fixtures/jwt/ec_private.pem");
    primary.register_jwt_key("key-1", include_str!("fixtures/jwt/ec_public.pem"));
    let broken_key = JWT_KEY.replace('A', "B").replacen("MI", "XX", 1);
    for (label, key) in [("private key", JWT_KEY), ("broken private key", broken_key.as_str())] {
        extra_secrets.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(|l| (label.to_owned(), l.to_owned())),
        );
    }
    let jwt = |external_id: &str, key: &str| {
        json!({"project": "p1", "provider": "primary", "external_id": external_id, "grant_type": "jwt_bearer",
            "private_key": key, "assertion_claims": {"iss": "svc", "sub": "user", "kid": "key-1", "alg": "ES256"}})
        .to_string()
    };
    let (status, body) = client
        .call(
            c,
            Method::POST,
            "/v1/connections",
            Some(ADMIN_KEY),
            Some(jwt("jwt-bad", &broken_key)),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = client
        .call(
            c,
            Method::POST,
            "/v1/connections",
            Some(ADMIN_KEY),
            Some(jwt("jwt-user", JWT_KEY)),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "active", "{body}");
    let jwt_id = body["id"].as_str().unwrap().to_owned();
    client
        .call(
            c,
            Method::GET,
            &format!("/v1/connections/{jwt_id}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    let (status, _) = client
        .call_allowed(c, Method::POST, &format!("/v1/connections/{jwt_id}/refresh"), None)
        .await;
    assert_eq!(status, 200);

    // The same import again (409), into an unknown provider (400), with
    // tokens in JSON that is broken or of the wrong shape (400).
    let again = import_body(
        "p1",
        "primary",
        "user-0",
        &grants[0].access_token,
        &grants[0].refresh_token,
        60,
    );
    let (status, _) = client
        .call(c, Method::POST, "/v1/connections", Some(ADMIN_KEY), Some(again))
        .await;
    assert_eq!(status, 409);
    let t = &grants[1];
    let bad_bodies = [
        import_body("p1", "nope", "x", &t.access_token, &t.refresh_token, 60),
        format!(
            r#"{{"provider":"primary","external_id":"bad-1","access_token":"{}","refresh_token":"{}""#,
            t.access_token, t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-2","access_token":"{}","expires_in":"{}"}}"#,
            t.access_token, t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-3","access_token":"{}","scope":["{}"]}}"#,
            t.access_token, t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-4","access_token":"{}","{}":1}}"#,
            t.access_token, t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-5","access_token":{{"{}":"{}"}}}}"#,
            t.access_token, t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-6","access_token":"{}\u0000{}"}}"#,
            t.access_token, t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-7","refresh_token":"{}"}}"#,
            t.refresh_token
        ),
        format!(
            r#"{{"provider":"primary","external_id":"bad-8","access_token":"{}","expires_in":-5}}"#,
            t.access_token
        ),
        format!("{}\u{fffd}{}", t.access_token, t.refresh_token),
    ];
    let mut bad_requests = 0;
    for body in bad_bodies {
        let (status, answer) = client
            .call(c, Method::POST, "/v1/connections", Some(ADMIN_KEY), Some(body))
            .await;
        assert!(status == 400 || status == 201, "{status} {answer}");
        if status == 400 {
            bad_requests += 1;
        }
    }
    // (A value in a field that is not a secret — an `auth_method`, a
    // connection id — is named back to its caller when it is not valid;
    // those fields are not sent secrets here.)
    let id0 = &ids[0];
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/v1/connections/{id0}/tokens"),
            format!(
                r#"{{"access_token":"{}","expires_in":"{}"}}"#,
                t.access_token, t.refresh_token
            ),
        ),
        (
            Method::POST,
            format!("/v1/connections/{id0}/refresh"),
            format!(r#"{{"rejected_token":"{}","x":"{}"}}"#, t.access_token, t.refresh_token),
        ),
        (
            Method::POST,
            "/v1/apps".to_owned(),
            format!(r#"{{"provider":"second","client_id":"x","client_secret":"{CUSTOM_SECRET}","auth_method":7}}"#),
        ),
        (
            Method::POST,
            "/v1/apps".to_owned(),
            format!(r#"{{"provider":"second","client_id":"x","client_secret":["{CUSTOM_SECRET}"]}}"#),
        ),
        (
            Method::POST,
            "/v1/webhooks".to_owned(),
            format!(r#"{{"url":"http://u:{CUSTOM_SECRET}@127.0.0.1/h"}}"#),
        ),
        (
            Method::POST,
            "/v1/runs".to_owned(),
            format!(r#"{{"connection_ids":"{}"}}"#, t.refresh_token),
        ),
    ] {
        let (status, answer) = client.call(c, method, &path, Some(ADMIN_KEY), Some(body)).await;
        assert!((400..500).contains(&status), "{path}: {status} {answer}");
        bad_requests += 1;
    }

    // Bad authentication: no key, a forged key, secrets used as keys.
    let mut unauthorized = 0;
    for key in [
        None,
        Some(FORGED_KEY),
        Some(t.access_token.as_str()),
        Some(t.refresh_token.as_str()),
        Some(CONFIG_SECRET),
        Some(master_key.as_str()),
    ] {
        for path in ["/v1/connections", &format!("/v1/connections/{id0}/token")] {
            let (status, _) = client.call(c, Method::GET, path, key, None).await;
            assert_eq!(status, 401, "{path} with {key:?}");
            unauthorized += 1;
        }
    }
    // Secrets in paths and queries.
    for path in [
        format!("/v1/connections/{}/token", t.access_token),
        format!("/v1/connections?cursor={}", t.refresh_token),
        format!("/v1/connections/{id0}/token?min_ttl={}", t.access_token),
        format!("/v1/connections?project={}", t.refresh_token),
    ] {
        let (status, _) = client.call(c, Method::GET, &path, Some(ADMIN_KEY), None).await;
        assert!(status < 500, "{path}: {status}");
    }

    // Reading: list, show, tokens (allowed to carry a token), a 401 report.
    client
        .call(c, Method::GET, "/v1/connections", Some(ADMIN_KEY), None)
        .await;
    client
        .call(
            c,
            Method::GET,
            "/v1/connections?project=p1&limit=2",
            Some(&project_key),
            None,
        )
        .await;
    for id in ids.iter().chain([&custom_id]) {
        let (status, _) = client
            .call(c, Method::GET, &format!("/v1/connections/{id}"), Some(ADMIN_KEY), None)
            .await;
        assert_eq!(status, 200);
        let (status, token) = client
            .call_allowed(c, Method::GET, &format!("/v1/connections/{id}/token?min_ttl=60"), None)
            .await;
        assert_eq!(status, 200, "{token}");
    }
    let (status, forced) = client
        .call_allowed(
            c,
            Method::POST,
            &format!("/v1/connections/{}/refresh", ids[1]),
            Some(json!({"rejected_token": grants[1].access_token}).to_string()),
        )
        .await;
    assert_eq!(status, 200, "{forced}");
    let (status, forced) = client
        .call_allowed(
            c,
            Method::POST,
            &format!("/v1/connections/{custom_id}/refresh"),
            Some("{}".into()),
        )
        .await;
    assert_eq!(status, 200, "{forced}: the custom app refreshes");
    // A stale 401 report (the old token) and a forced refresh of the unknown
    // grant (invalid_grant: needs_reauth, 409).
    client
        .call_allowed(
            c,
            Method::POST,
            &format!("/v1/connections/{}/refresh", ids[1]),
            Some(json!({"rejected_token": grants[1].access_token}).to_string()),
        )
        .await;
    let (status, answer) = client
        .call(
            c,
            Method::POST,
            &format!("/v1/connections/{unknown_id}/refresh"),
            Some(&project_key),
            Some("{}".into()),
        )
        .await;
    assert!(status >= 400, "{answer}");

    // The provider misbehaving, one forced refresh per fault: an error
    // echoing the request (JSON and HTML), invalid_grant, 500, 429, a slow
    // answer beyond the timeout, HTML, malformed JSON, invalid_client.
    let faults = [
        Fault::EchoRequest {
            status: 400,
            json: true,
        },
        Fault::EchoRequest {
            status: 500,
            json: true,
        },
        Fault::EchoRequest {
            status: 401,
            json: true,
        },
        Fault::EchoRequest {
            status: 500,
            json: false,
        },
        Fault::EchoRequest {
            status: 200,
            json: false,
        },
        Fault::ServerErrorHtml,
        Fault::RateLimited { retry_after_secs: 1 },
        Fault::Delay(Duration::from_secs(4)),
        Fault::Malformed,
        Fault::HtmlOk,
        Fault::Unavailable,
    ];
    let mut faulted = 0;
    for (i, fault) in faults.iter().enumerate() {
        // Each fault on a connection of its own, so the forced-refresh
        // limit and backoff do not hide it.
        let grant = primary.issue_grant();
        let id = import(&client, c, "primary", &format!("faulty-{i}"), &grant, 3600).await;
        let before = primary.token_calls();
        primary.push_faults([fault.clone()]);
        let path = format!("/v1/connections/{id}/refresh");
        client.call_allowed(c, Method::POST, &path, Some("{}".into())).await;
        assert!(primary.token_calls() > before, "{fault:?} reached the provider");
        client
            .call(c, Method::GET, &format!("/v1/connections/{id}"), Some(ADMIN_KEY), None)
            .await;
        client
            .call(
                c,
                Method::GET,
                &format!("/v1/connections/{id}/attempts"),
                Some(ADMIN_KEY),
                None,
            )
            .await;
        faulted += 1;
        // Two successes per failure keep the provider's circuit breaker closed.
        for j in 0..2 {
            let grant = primary.issue_grant();
            let id = import(&client, c, "primary", &format!("healthy-{i}-{j}"), &grant, 3600).await;
            let path = format!("/v1/connections/{id}/refresh");
            let (status, answer) = client.call_allowed(c, Method::POST, &path, Some("{}".into())).await;
            assert_eq!(status, 200, "after {fault:?}: {answer}");
        }
        // A 429 holds the whole app until its Retry-After.
        if matches!(fault, Fault::RateLimited { .. }) {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    primary.clear_fault();
    // A revoked grant: the user removed access at the provider.
    primary.revoke(&grants[5].grant);
    client
        .call_allowed(
            c,
            Method::POST,
            &format!("/v1/connections/{}/refresh", ids[5]),
            Some("{}".into()),
        )
        .await;
    // The custom app's provider echoing too (its secret goes in Basic credentials).
    second.push_faults([Fault::EchoRequest {
        status: 400,
        json: true,
    }]);
    client
        .call_allowed(
            c,
            Method::POST,
            &format!("/v1/connections/{custom_id}/refresh"),
            Some("{}".into()),
        )
        .await;
    // invalid_client (it pauses the custom app until the operator acts).
    let grant = second.issue_grant();
    let id = import(&client, c, "second", "custom-invalid-client", &grant, 3600).await;
    second.push_faults([Fault::InvalidClient]);
    let before = second.token_calls();
    let path = format!("/v1/connections/{id}/refresh");
    client.call_allowed(c, Method::POST, &path, Some("{}".into())).await;
    assert!(second.token_calls() > before, "invalid_client reached the provider");
    client
        .call(c, Method::GET, &format!("/v1/connections/{id}"), Some(ADMIN_KEY), None)
        .await;
    let path = format!("/v1/connections/{id}/attempts");
    client.call(c, Method::GET, &path, Some(ADMIN_KEY), None).await;

    // Reset, replace tokens, runs, providers, events, webhook deliveries.
    let (status, _) = client
        .call(
            c,
            Method::POST,
            &format!("/v1/connections/{}/reset", ids[5]),
            Some(ADMIN_KEY),
            Some("{}".into()),
        )
        .await;
    assert!(status < 500);
    let fresh = primary.issue_grant();
    let replace = json!({"access_token": fresh.access_token, "refresh_token": fresh.refresh_token, "expires_in": 3600});
    let (status, body) = client
        .call(
            c,
            Method::PUT,
            &format!("/v1/connections/{}/tokens", ids[5]),
            Some(ADMIN_KEY),
            Some(replace.to_string()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, run) = client
        .call(
            c,
            Method::POST,
            "/v1/runs",
            Some(ADMIN_KEY),
            Some(json!({"provider": "primary"}).to_string()),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let finished = eventually(Duration::from_secs(30), || {
        let http = client.http.clone();
        let url = format!("{}/v1/runs/{run_id}", client.base);
        async move {
            let run: Value = http
                .get(url)
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            run["status"] != "running" && run["status"] != "pending"
        }
    })
    .await;
    assert!(finished, "the run did not finish");
    client
        .call(c, Method::GET, &format!("/v1/runs/{run_id}"), Some(ADMIN_KEY), None)
        .await;
    client.call(c, Method::GET, "/v1/runs", Some(ADMIN_KEY), None).await;
    client
        .call(c, Method::GET, "/v1/providers", Some(ADMIN_KEY), None)
        .await;
    client
        .call(c, Method::GET, "/v1/webhooks", Some(&project_key), None)
        .await;

    let delivered = eventually(Duration::from_secs(30), || {
        std::future::ready(receiver.received().len() >= 5)
    })
    .await;
    assert!(delivered, "only {} webhook deliveries", receiver.received().len());
    let (status, events) = client
        .call(c, Method::GET, "/v1/events?limit=500", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 200);
    let events = events["data"].as_array().cloned().unwrap_or_default();
    assert!(events.len() >= 5, "{} events", events.len());
    for event in &events {
        let id = event["id"].as_str().unwrap();
        client
            .call(c, Method::GET, &format!("/v1/events/{id}"), Some(ADMIN_KEY), None)
            .await;
    }
    let first = events[0]["id"].as_str().unwrap();
    client
        .call(
            c,
            Method::POST,
            &format!("/v1/events/{first}/redeliver"),
            Some(ADMIN_KEY),
            None,
        )
        .await;

    // Deleting: an app, a webhook, a connection.
    let (status, _) = client
        .call(c, Method::DELETE, "/v1/apps/second?project=p1", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = client
        .call(
            c,
            Method::DELETE,
            &format!("/v1/connections/{}", ids[4]),
            Some(&project_key),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(primary.grants_revoked_by_request(), 1, "the delete revoked the grant");
    // Its custom app gone, the custom connection's revocation presents the
    // configured (stale) secret in the body and is refused; deleted anyway.
    let (status, _) = client
        .call(
            c,
            Method::DELETE,
            &format!("/v1/connections/{custom_id}"),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(second.revocations_refused(), 1);

    // The unauthenticated endpoints.
    for path in ["/health", "/ready", "/openapi.json", "/metrics"] {
        let (status, _) = client.call(c, Method::GET, path, None, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let deliveries = receiver.received();
    for (i, delivery) in deliveries.iter().enumerate() {
        c.push(
            format!("webhook delivery {i} (headers)"),
            format!("{:?}", delivery.headers),
        );
        c.push(format!("webhook delivery {i}"), String::from_utf8_lossy(&delivery.raw));
    }
    let (status, _) = client
        .call(
            c,
            Method::DELETE,
            &format!("/v1/webhooks/{}", created["id"].as_str().unwrap()),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 204);
    server.terminate();

    // The same database under a wrong master key: the tokens do not open.
    let wrong_key = STANDARD.encode(*b"wrong-SECRET-master-key-32bytes!");
    let wrong_log = dir.path().join("wrong-key.log");
    let wrong_started = Server::start(&config, &wrong_key, wrong_log.clone()).await;
    let wrong_text = std::fs::read_to_string(&wrong_log).unwrap_or_default();
    let mut wrong = wrong_started.unwrap_or_else(|| panic!("thermos refused the wrong key:\n{wrong_text}"));
    let other = Client {
        http: reqwest::Client::new(),
        base: wrong.base.clone(),
    };
    let (status, answer) = other
        .call(
            c,
            Method::GET,
            &format!("/v1/connections/{}/token", ids[2]),
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 500, "a token under the wrong key: {answer}");
    let (status, answer) = other
        .call(
            c,
            Method::POST,
            &format!("/v1/connections/{}/refresh", ids[3]),
            Some(ADMIN_KEY),
            Some("{}".into()),
        )
        .await;
    assert_eq!(status, 500, "a refresh under the wrong key: {answer}");
    wrong.terminate();
    c.push("wrong-key log", std::fs::read_to_string(&wrong_log).unwrap_or_default());
    extra_secrets.push(("wrong master key".into(), wrong_key));

    // The database at rest holds tokens and secrets sealed or hashed only.
    for name in ["thermos.db", "thermos.db-wal"] {
        if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
            c.push(format!("database file {name}"), String::from_utf8_lossy(&bytes));
        }
    }
    // Everything the server logged.
    let log_text = std::fs::read_to_string(&log).unwrap();
    let log_lines = log_text.lines().count();
    c.push("log", log_text.clone());

    // The test did what it says: each path was exercised.
    assert!(log_lines > 200, "only {log_lines} log lines");
    assert!(log_text.contains("refresh failed"), "the log shows no failed refresh");
    assert!(primary.token_calls() >= 20, "{} token calls", primary.token_calls());
    assert!(
        second.token_calls() >= 2,
        "{} token calls to the custom app's provider",
        second.token_calls()
    );
    assert_eq!(faulted, faults.len());
    assert!(bad_requests >= 14 && unauthorized == 12, "{bad_requests} bad requests");
    assert!(c.allowed >= 15, "{} answers handed out a token", c.allowed);
    assert!(c.texts.len() >= 150, "{} captured texts", c.texts.len());
    let events_text: String = c
        .texts
        .iter()
        .filter(|(l, _)| l.starts_with("GET /v1/events/"))
        .map(|(_, t)| t.clone())
        .collect();
    assert!(
        events_text.contains("needs_reauth") || events_text.contains("reauth"),
        "no dead-grant event"
    );

    // Every kind of provider failure was recorded (attempts, last errors),
    // the echoes among them scrubbed rather than dropped.
    let answers: String = c
        .texts
        .iter()
        .filter(|(label, _)| label.starts_with("GET /v1/connections/"))
        .map(|(_, text)| text.as_str())
        .collect();
    for code in [
        "invalid_grant",
        "server_error",
        "rate_limited",
        "malformed_response",
        "invalid_client",
        "[redacted]",
    ] {
        assert!(answers.contains(code) || log_text.contains(code), "no {code} recorded");
    }
    // The slow answer outlasted the request timeout (2 s).
    let slow = primary.token_call_log().iter().any(|call| {
        call.answered
            .is_none_or(|at| at - call.arrived >= Duration::from_secs(2))
    });
    assert!(slow, "no token request outlasted the timeout");
    let metrics = c
        .texts
        .iter()
        .find(|(label, _)| label == "GET /metrics → 200")
        .map(|(_, text)| text.clone())
        .unwrap_or_default();
    assert!(
        metrics.lines().filter(|l| l.starts_with("thermos_")).count() >= 20,
        "/metrics is nearly empty:\n{metrics}"
    );

    let mut secrets: Vec<(String, String)> = vec![
        ("admin key".into(), ADMIN_KEY.into()),
        ("configured client secret".into(), CONFIG_SECRET.into()),
        (
            "configured Basic credentials".into(),
            basic(CONFIG_CLIENT_ID, CONFIG_SECRET),
        ),
        ("custom app secret".into(), CUSTOM_SECRET.into()),
        (
            "custom Basic credentials".into(),
            basic(CUSTOM_CLIENT_ID, CUSTOM_SECRET),
        ),
        ("stale client secret".into(), STALE_SECRET.into()),
        ("master key".into(), master_key.clone()),
        ("unknown access token".into(), UNKNOWN_ACCESS.into()),
        ("unknown refresh token".into(), UNKNOWN_REFRESH.into()),
        ("forged key".into(), FORGED_KEY.into()),
    ];
    secrets.extend(extra_secrets);
    let issued = primary.issued_tokens().into_iter().chain(second.issued_tokens());
    let before = secrets.len();
    secrets.extend(issued.map(|token| ("a provider-issued token".to_owned(), token)));
    assert!(
        secrets.len() - before >= 40,
        "{} provider tokens",
        secrets.len() - before
    );

    let found = leaks(c, &secrets);
    assert!(found.is_empty(), "{} leaks:\n{}", found.len(), found.join("\n\n"));
    eprintln!(
        "secrets hygiene: {} texts, {} log lines, {} token calls, {} deliveries, {} events, {:?}",
        c.texts.len(),
        log_lines,
        primary.token_calls() + second.token_calls(),
        deliveries.len(),
        events.len(),
        started.elapsed()
    );
}

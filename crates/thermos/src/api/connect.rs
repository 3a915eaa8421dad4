//! Connect sessions: the authorization code flow with PKCE (RFC 6749 §4.1,
//! RFC 7636) that connects an end user's account through their browser.
//!
//! - `POST /v1/connect/sessions` (admin scope) records a `pending` session
//!   and answers its start URL, `{public_url}/connect/{id}`;
//! - `GET /connect/{id}` (the browser, no API key) begins it — a fresh
//!   `state` (only its SHA-256 is stored) and PKCE verifier (stored sealed)
//!   — and redirects to the provider's authorization endpoint;
//! - `GET /oauth/callback` (the browser, no API key) consumes the state
//!   once, exchanges the code with the verifier through the provider
//!   client's authentication, creates the connection or reconnects the one
//!   of the same (project, provider, external_id) — keeping its id — with
//!   its event and the session's completion in one transaction, then
//!   redirects to `redirect_after` or shows a short page;
//! - `GET /v1/connect/sessions/{id}` shows how a session ended.
//!
//! Never puts a token, a code, a verifier or a state into a log line, a
//! page, an error, an event or the store (the state only hashed, the
//! verifier only sealed). Expiry uses the engine's clock. See docs/connect.md.
//!
//! Read next: `connect/callback.rs` (the provider's answer), `connect/page.rs`
//! (what the browser sees).

mod callback;
mod page;

pub use callback::callback;
use page::{page, redirect};

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thermos_core::id::is_valid_slug;
use thermos_core::seal::Field;
use thermos_store::connect::{Begin, ConnectSessionRecord, NewConnectSession, SessionStatus};
use time::OffsetDateTime;
use url::Url;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::engine::{Engine, truncate_ms};
use crate::provider::RefreshClient;

/// How long a session may be completed after it was created.
pub const SESSION_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest the code exchange may take (less when `refresh.request_timeout` is shorter).
pub const MAX_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most scopes a session may ask for.
pub const MAX_SCOPES: usize = 50;
/// Longest scope token.
pub const MAX_SCOPE_LEN: usize = 128;
/// Longest `redirect_after`, in bytes.
pub const MAX_REDIRECT_AFTER: usize = 2048;
const SESSION_PREFIX: &str = "cs_";
/// How many times a create-or-reconnect that lost a race is tried again.
const CONNECT_TRIES: usize = 3;

/// What the connect flow needs beyond the engine: where browsers reach
/// Thermos, and a token endpoint client bounded for an interactive request.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    /// `server.public_url` (ends with `/`).
    pub public_url: Url,
    /// The client for code exchanges.
    pub client: RefreshClient,
}

impl ConnectSettings {
    /// Settings for `public_url`; code exchanges time out after
    /// `request_timeout`, at most [`MAX_EXCHANGE_TIMEOUT`].
    pub fn new(public_url: Url, request_timeout: Duration) -> Self {
        Self {
            public_url,
            client: RefreshClient::new(request_timeout.min(MAX_EXCHANGE_TIMEOUT)),
        }
    }

    /// The OAuth redirect URI, `{public_url}/oauth/callback`.
    pub fn redirect_uri(&self) -> String {
        self.join("oauth/callback")
    }

    /// A session's start URL, `{public_url}/connect/{id}`.
    pub fn start_url(&self, id: &str) -> String {
        self.join(&format!("connect/{id}"))
    }

    fn join(&self, path: &str) -> String {
        let base = self.public_url.as_str();
        if base.ends_with('/') {
            format!("{base}{path}")
        } else {
            format!("{base}/{path}")
        }
    }
}

// ----- wire formats ----------------------------------------------------------

/// `POST /v1/connect/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub project: Option<String>,
    pub provider: String,
    pub external_id: String,
    /// Defaults to the provider's configured scopes.
    pub scopes: Option<Vec<String>>,
    pub redirect_after: Option<String>,
}

/// A session as the API shows it (never its state or verifier).
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: String,
    /// Where to send the end user's browser.
    pub url: String,
    pub project: String,
    pub provider: String,
    pub external_id: String,
    pub scopes: Vec<String>,
    pub redirect_after: Option<String>,
    /// `pending`, `exchanging`, `completed`, `failed` or `expired` (a
    /// pending session past its expiry shows as `expired`).
    pub status: &'static str,
    pub connection_id: Option<String>,
    pub error: Option<SessionError>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// Why a session failed.
#[derive(Debug, Serialize)]
pub struct SessionError {
    /// The provider's OAuth error code (`access_denied`, `invalid_grant`, …)
    /// or Thermos's own (`expired`, `provider_error`, …).
    pub code: String,
    pub message: String,
}

impl SessionView {
    fn new(record: &ConnectSessionRecord, settings: &ConnectSettings, now: OffsetDateTime) -> Self {
        let status = match record.status {
            SessionStatus::Pending if record.expires_at <= now => SessionStatus::Expired,
            other => other,
        };
        Self {
            id: record.id.clone(),
            url: settings.start_url(&record.id),
            project: record.project.clone(),
            provider: record.provider.clone(),
            external_id: record.external_id.clone(),
            scopes: record.scopes.clone(),
            redirect_after: record.redirect_after.clone(),
            status: status.as_str(),
            connection_id: record.connection_id.map(|id| id.to_string()),
            error: record.error_code.clone().map(|code| SessionError {
                code,
                message: record.error_message.clone().unwrap_or_default(),
            }),
            created_at: record.created_at,
            expires_at: record.expires_at,
            finished_at: record.finished_at,
        }
    }
}

// ----- /v1/connect/sessions --------------------------------------------------

/// `POST /v1/connect/sessions`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let project = caller.project_for(body.project.as_deref())?;
    let mut problems = Vec::new();
    if !is_valid_slug(&project) {
        problems.push(format!(
            "project: {project:?} is not a valid name (1-64 of a-z 0-9 - _ .)"
        ));
    }
    let app = state.engine.apps().resolve(&project, &body.provider);
    match &app {
        None => problems.push(format!("provider: {:?} is not a configured provider", body.provider)),
        Some(_) if authorization_url(&state.engine, &project, &body.provider).is_none() => problems.push(format!(
            "provider: {:?} has no authorization_url; connect sessions need one",
            body.provider
        )),
        Some(_) => {}
    }
    let external_id = body.external_id;
    if external_id.trim().is_empty() || external_id.chars().count() > super::connections::MAX_EXTERNAL_ID {
        problems.push(format!(
            "external_id: must be 1-{} characters",
            super::connections::MAX_EXTERNAL_ID
        ));
    }
    let scopes = body
        .scopes
        .or_else(|| app.as_ref().map(|a| a.scopes.clone()))
        .unwrap_or_default();
    check_scopes(&scopes, &mut problems);
    let redirect_after = body
        .redirect_after
        .map(|raw| check_redirect_after(&raw, state.allow_private_targets).map_err(|why| problems.push(why)))
        .transpose()
        .ok()
        .flatten();
    if !problems.is_empty() {
        return Err(ApiError::bad_request(problems.join("; ")));
    }
    let now = truncate_ms(state.engine.now());
    let new = NewConnectSession {
        id: format!("{SESSION_PREFIX}{}", uuid::Uuid::now_v7().simple()),
        project,
        provider: body.provider,
        external_id,
        scopes,
        redirect_after: redirect_after.map(String::from),
        created_at: now,
        expires_at: now + SESSION_TTL,
    };
    let record = state.engine.store().insert_connect_session(new).await?;
    tracing::info!(session_id = %record.id, provider = %record.provider, "connect session created");
    Ok((
        StatusCode::CREATED,
        Json(SessionView::new(&record, &state.connect, now)),
    ))
}

/// `GET /v1/connect/sessions/{id}`.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let not_found = || ApiError::not_found("connect session");
    if !is_session_id(&id) {
        return Err(not_found());
    }
    let record = state
        .engine
        .store()
        .get_connect_session(&id)
        .await?
        .ok_or_else(not_found)?;
    let visible = match &caller {
        Caller::Admin => true,
        Caller::Project(project) => *project == record.project,
    };
    if !visible {
        return Err(not_found());
    }
    let now = state.engine.now();
    Ok(Json(SessionView::new(&record, &state.connect, now)))
}

// ----- the browser's side ----------------------------------------------------

/// `GET /connect/{id}`: begin the session and send the browser to the
/// provider. Opening it again while pending begins it again: a new state
/// and verifier, the earlier state refused from then on.
pub async fn start(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if !is_session_id(&id) {
        return page(
            StatusCode::NOT_FOUND,
            "Unknown sign-in link",
            "This sign-in link is not valid.",
        );
    }
    let secret = random_secret();
    let verifier = random_secret();
    let sealed = state
        .engine
        .key()
        .seal_for(&verifier_owner(&id), Field::ClientSecret, &verifier);
    let now = truncate_ms(state.engine.now());
    let begun = state
        .engine
        .store()
        .begin_connect_session(&id, state_hash(&secret), sealed, now)
        .await;
    let session = match begun {
        Ok(Begin::Begun(session)) => session,
        Ok(Begin::NotFound) => {
            return page(
                StatusCode::NOT_FOUND,
                "Unknown sign-in link",
                "This sign-in link is not valid.",
            );
        }
        Ok(Begin::Expired(_)) => {
            return page(
                StatusCode::GONE,
                "Sign-in link expired",
                "This sign-in link has expired. Ask for a new one.",
            );
        }
        Ok(Begin::NotPending(_)) => {
            return page(
                StatusCode::GONE,
                "Sign-in link used",
                "This sign-in link was already used. Ask for a new one.",
            );
        }
        Err(error) => {
            tracing::error!(session_id = %id, error.message = %error, "begin connect session");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Please try again later.",
            );
        }
    };
    let Some(mut target) = authorization_url(&state.engine, &session.project, &session.provider) else {
        return page(
            StatusCode::GONE,
            "Provider unavailable",
            "This provider can no longer be connected. Ask for a new link.",
        );
    };
    let Some(app) = state.engine.apps().resolve(&session.project, &session.provider) else {
        return page(
            StatusCode::GONE,
            "Provider unavailable",
            "This provider can no longer be connected.",
        );
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()));
    {
        let mut query = target.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &app.client_id)
            .append_pair("redirect_uri", &state.connect.redirect_uri());
        if !session.scopes.is_empty() {
            query.append_pair("scope", &app.join_scopes(&session.scopes));
        }
        query
            .append_pair("state", secret.expose_secret())
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
    }
    tracing::info!(session_id = %session.id, provider = %session.provider, "connect session begun");
    redirect(target.as_str())
}

// ----- helpers -----------------------------------------------------------------

/// The authorization endpoint for `project`'s `provider`: its own app's,
/// else the configured provider's.
fn authorization_url(engine: &Engine, project: &str, provider: &str) -> Option<Url> {
    engine
        .apps()
        .resolve(project, provider)
        .and_then(|app| app.authorization_url.clone())
        .or_else(|| engine.provider(provider).and_then(|app| app.authorization_url.clone()))
}

fn is_session_id(raw: &str) -> bool {
    raw.strip_prefix(SESSION_PREFIX)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The sealing owner of a session's code verifier.
fn verifier_owner(session_id: &str) -> String {
    format!("connect/{session_id}/code_verifier")
}

/// 32 random bytes, base64url: a state or a PKCE verifier (43 characters,
/// RFC 7636's minimum length and 256 bits of entropy).
fn random_secret() -> SecretString {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    SecretString::from(URL_SAFE_NO_PAD.encode(raw))
}

/// What is stored of a state.
fn state_hash(state: &SecretString) -> Vec<u8> {
    Sha256::digest(state.expose_secret().as_bytes()).to_vec()
}

/// RFC 6749 §3.3 scope tokens: printable ASCII without space, `"` or `\`.
fn check_scopes(scopes: &[String], problems: &mut Vec<String>) {
    if scopes.len() > MAX_SCOPES {
        problems.push(format!("scopes: at most {MAX_SCOPES}"));
    }
    let bad = scopes.iter().any(|s| {
        s.is_empty() || s.len() > MAX_SCOPE_LEN || !s.bytes().all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
    });
    if bad {
        problems.push(format!(
            "scopes: each must be 1-{MAX_SCOPE_LEN} printable ASCII characters without spaces, quotes or backslashes"
        ));
    }
}

/// `redirect_after`: an absolute `https` URL (or `http` to a loopback host,
/// or to any host with `security.allow_private_targets`), without user
/// info or fragment, at most [`MAX_REDIRECT_AFTER`] bytes.
pub fn check_redirect_after(raw: &str, allow_http: bool) -> Result<Url, String> {
    let refuse = |why: &str| Err(format!("redirect_after: {why}"));
    if raw.len() > MAX_REDIRECT_AFTER {
        return refuse(&format!("longer than {MAX_REDIRECT_AFTER} bytes"));
    }
    let Ok(url) = Url::parse(raw) else {
        return refuse("not an absolute URL");
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return refuse("must name a host"),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback || allow_http => {}
        "http" => return refuse("must be https (http only to a loopback host)"),
        _ => return refuse("must be an http(s) URL"),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("must not carry user info");
    }
    if url.fragment().is_some() {
        return refuse("must not carry a fragment");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_after_must_be_https_or_loopback_http_without_user_info_or_fragment() {
        assert!(check_redirect_after("https://app.example.com/done?x=1", false).is_ok());
        assert!(check_redirect_after("http://127.0.0.1:3000/done", false).is_ok());
        assert!(check_redirect_after("http://localhost/done", false).is_ok());
        assert!(check_redirect_after("http://app.example.com/done", true).is_ok());
        for bad in [
            "http://app.example.com/done",
            "/relative",
            "javascript:alert(1)",
            "ftp://app.example.com/",
            "https://user:pw@app.example.com/",
            "https://app.example.com/#frag",
        ] {
            assert!(check_redirect_after(bad, false).is_err(), "{bad}");
        }
    }
}

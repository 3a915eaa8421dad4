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

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, REFERRER_POLICY};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thermos_core::grant::GrantType;
use thermos_core::id::{ConnectionId, is_valid_slug};
use thermos_core::oauth::{RefreshOutcome, TokenGrant};
use thermos_core::plan::{self, Jitter};
use thermos_core::seal::Field;
use thermos_store::connect::{
    Begin, Connect, ConnectOutcome, ConnectSessionRecord, Consume, NewConnectSession, SessionStatus,
};
use thermos_store::{ConnectionRecord, NewConnection, TokenUpdate};
use time::OffsetDateTime;
use url::Url;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::engine::{Engine, events, truncate_ms};
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
            query.append_pair("scope", &session.scopes.join(" "));
        }
        query
            .append_pair("state", secret.expose_secret())
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
    }
    tracing::info!(session_id = %session.id, provider = %session.provider, "connect session begun");
    redirect(target.as_str())
}

/// The query of `GET /oauth/callback`.
#[derive(Debug, Default)]
struct Callback {
    state: Option<SecretString>,
    code: Option<SecretString>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Callback {
    fn parse(query: Option<&str>) -> Self {
        let mut callback = Self::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if value.is_empty() {
                continue;
            }
            match key.as_ref() {
                "state" => callback.state = Some(SecretString::from(value.into_owned())),
                "code" => callback.code = Some(SecretString::from(value.into_owned())),
                "error" => callback.error = Some(value.into_owned()),
                "error_description" => callback.error_description = Some(value.into_owned()),
                _ => {}
            }
        }
        callback
    }
}

/// `GET /oauth/callback`: consume the state, exchange the code, connect.
pub async fn callback(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let callback = Callback::parse(query.as_deref());
    let Some(secret) = &callback.state else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The answer from the provider carries no state. Start again from your application.",
        );
    };
    let now = truncate_ms(state.engine.now());
    let consumed = state
        .engine
        .store()
        .consume_connect_session(&state_hash(secret), now)
        .await;
    let session = match consumed {
        Ok(Consume::Consumed(session)) => session,
        Ok(Consume::Unknown) => {
            tracing::warn!("oauth callback with an unknown state refused");
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                "This sign-in is unknown or was replaced by a newer one. Start again from your application.",
            );
        }
        Ok(Consume::AlreadyUsed(session)) => {
            tracing::warn!(session_id = %session.id, "oauth callback with a used state refused");
            return page(
                StatusCode::BAD_REQUEST,
                "Sign-in already used",
                "This sign-in was already used. Start again from your application.",
            );
        }
        Ok(Consume::Expired(session)) => {
            tracing::info!(session_id = %session.id, "oauth callback for an expired connect session refused");
            return finish_page(
                &session,
                Err(("expired", "the session expired before it completed")),
                StatusCode::GONE,
            );
        }
        Err(error) => {
            tracing::error!(error.message = %error, "consume connect session");
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Please try again later.",
            );
        }
    };
    // From here the session is ours alone. Exchange and commit on a task of
    // its own, so that a browser that goes away (or the request timeout)
    // cannot abandon a code already exchanged: tokens obtained are stored.
    let task = tokio::spawn(complete(state, session.clone(), callback));
    match task.await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(session_id = %session.id, error.message = %error, "connect session task failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Please try again later.",
            )
        }
    }
}

/// Everything after a won consume: the provider's error, or the exchange
/// and the connection. Ends the session either way.
async fn complete(state: AppState, session: ConnectSessionRecord, callback: Callback) -> Response {
    let result = connect(&state, &session, callback).await;
    let now = truncate_ms(state.engine.now());
    match result {
        Ok((record, reconnected)) => {
            state.engine.wake();
            state.engine.events_committed();
            tracing::info!(
                session_id = %session.id,
                connection_id = %record.id,
                provider = %record.provider,
                reconnected,
                "connect session completed"
            );
            finish_page(&session, Ok(record.id), StatusCode::OK)
        }
        Err(failure) => {
            tracing::info!(
                session_id = %session.id,
                provider = %session.provider,
                error.code = %failure.code,
                error.message = %failure.message,
                "connect session failed"
            );
            if let Err(error) = state
                .engine
                .store()
                .fail_connect_session(&session.id, &failure.code, &failure.message, now)
                .await
            {
                tracing::error!(session_id = %session.id, error.message = %error, "record failed connect session");
            }
            finish_page(&session, Err((&failure.code, &failure.message)), failure.status)
        }
    }
}

/// Why a consumed session failed: recorded on it and shown.
struct Failure {
    code: String,
    message: String,
    /// The page's status when there is no `redirect_after`.
    status: StatusCode,
}

impl Failure {
    fn new(code: &str, message: impl Into<String>, status: StatusCode) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            status,
        }
    }
}

/// The provider's error, or the code exchanged and the connection created
/// or reconnected (`true`).
async fn connect(
    state: &AppState,
    session: &ConnectSessionRecord,
    callback: Callback,
) -> Result<(ConnectionRecord, bool), Failure> {
    if let Some(error) = callback.error {
        let code = oauth_code(&error);
        let description = callback
            .error_description
            .map(|d| clip(&d, 200))
            .unwrap_or_else(|| format!("the provider answered {code}"));
        return Err(Failure::new(&code, description, StatusCode::BAD_REQUEST));
    }
    let Some(code) = callback.code else {
        return Err(Failure::new(
            "invalid_request",
            "the provider's answer carries neither a code nor an error",
            StatusCode::BAD_REQUEST,
        ));
    };
    let internal = |what: &str| Failure::new("internal", what, StatusCode::INTERNAL_SERVER_ERROR);
    let sealed = session
        .code_verifier
        .as_ref()
        .ok_or_else(|| internal("the session holds no code verifier"))?;
    let verifier = state
        .engine
        .key()
        .open_for(&verifier_owner(&session.id), Field::ClientSecret, sealed)
        .map_err(|e| {
            tracing::error!(session_id = %session.id, error.message = %e, "open code verifier");
            internal("the code verifier cannot be opened")
        })?;
    let app = state
        .engine
        .apps()
        .resolve(&session.project, &session.provider)
        .ok_or_else(|| {
            Failure::new(
                "provider_not_configured",
                format!("provider {:?} is no longer configured", session.provider),
                StatusCode::BAD_GATEWAY,
            )
        })?;
    let clock = EngineClock(state.engine.clone());
    let outcome = state
        .connect
        .client
        .exchange_code(&app, &code, &state.connect.redirect_uri(), &verifier, &clock)
        .await;
    let grant = match outcome {
        RefreshOutcome::Refreshed(grant) => grant,
        failed => {
            let code = failed.error_code().unwrap_or("provider_error");
            return Err(Failure::new(
                code,
                clip(&failed.message(), 300),
                StatusCode::BAD_GATEWAY,
            ));
        }
    };
    store_connection(state, session, &grant).await
}

/// Creates the connection or reconnects the existing one, with its event,
/// completing the session; tries again when a concurrent change won.
async fn store_connection(
    state: &AppState,
    session: &ConnectSessionRecord,
    grant: &TokenGrant,
) -> Result<(ConnectionRecord, bool), Failure> {
    let engine = &state.engine;
    let store = engine.store();
    let database = |e: thermos_store::StoreError| {
        tracing::error!(session_id = %session.id, error.message = %e, "store connection of connect session");
        Failure::new(
            "internal",
            "the connection could not be stored",
            StatusCode::INTERNAL_SERVER_ERROR,
        )
    };
    for _ in 0..CONNECT_TRIES {
        let now = truncate_ms(engine.now());
        let existing = store
            .find_connection(&session.project, &session.provider, &session.external_id)
            .await
            .map_err(database)?;
        let (connect, event) = match &existing {
            Some(record) if record.grant.grant_type != GrantType::RefreshToken => {
                // Its tokens come from the app's own credentials (or a
                // private key kept in the refresh token column): a user's
                // tokens must not replace them.
                return Err(Failure::new(
                    "grant_type_mismatch",
                    format!(
                        "the connection for this external_id uses the {} grant; a user cannot reconnect it",
                        record.grant.grant_type.as_str()
                    ),
                    StatusCode::CONFLICT,
                ));
            }
            Some(record) => {
                let tokens = seal_grant(engine, record.id, grant, now);
                let data = serde_json::json!({
                    "previous_status": record.status.as_str(),
                    "session_id": session.id,
                });
                let event = events::connection_event("connection.reconnected", record, data, now);
                let connect = Connect::Reconnect {
                    id: record.id,
                    expected_version: record.version,
                    tokens,
                };
                (connect, event)
            }
            None => {
                if let Some(max) = state.limits.max_connections_per_project {
                    let held = store
                        .count_project_connections(&session.project)
                        .await
                        .map_err(database)?;
                    if held >= u64::from(max) {
                        return Err(Failure::new(
                            "limit_reached",
                            format!("the project holds {held} connections, the maximum"),
                            StatusCode::FORBIDDEN,
                        ));
                    }
                }
                let id = ConnectionId::generate();
                let tokens = seal_grant(engine, id, grant, now);
                let new = NewConnection {
                    id,
                    project: session.project.clone(),
                    provider: session.provider.clone(),
                    external_id: session.external_id.clone(),
                    access_token: tokens.access_token,
                    refresh_token: tokens.refresh_token,
                    token_type: tokens.token_type,
                    scope: tokens.scope,
                    issued_at: tokens.issued_at,
                    expires_at: tokens.expires_at,
                    metadata: serde_json::json!({}),
                    next_refresh_at: tokens.next_refresh_at,
                    // The user's refresh token, the default grant.
                    grant: Default::default(),
                };
                let subject = events::Subject {
                    id,
                    project: &new.project,
                    provider: &new.provider,
                    external_id: &new.external_id,
                };
                let data = serde_json::json!({"session_id": session.id});
                let event = events::subject_event("connection.created", &subject, data, now);
                (Connect::Create(new), event)
            }
        };
        match store
            .connect_connection(Some(&session.id), connect, now, vec![event])
            .await
            .map_err(database)?
        {
            ConnectOutcome::Created(record) => return Ok((record, false)),
            ConnectOutcome::Reconnected(record) => return Ok((record, true)),
            ConnectOutcome::Stale => continue,
        }
    }
    Err(Failure::new(
        "conflict",
        "the connection kept changing while it was being stored; start again",
        StatusCode::CONFLICT,
    ))
}

/// Seals the tokens of a code exchange for connection `id` and plans their refresh.
fn seal_grant(engine: &Engine, id: ConnectionId, grant: &TokenGrant, now: OffsetDateTime) -> TokenUpdate {
    let key = engine.key();
    let expires_at = truncate_ms(now + grant.expires_in);
    TokenUpdate {
        access_token: key.seal(&id, Field::AccessToken, &grant.access_token),
        refresh_token: grant
            .refresh_token
            .as_ref()
            .map(|t| key.seal(&id, Field::RefreshToken, t)),
        token_type: grant.token_type.clone(),
        scope: grant.scope.clone(),
        issued_at: now,
        expires_at,
        next_refresh_at: truncate_ms(plan::next_refresh_at(
            now,
            expires_at,
            engine.settings().policy.margin,
            Jitter::random(),
        )),
    }
}

/// The engine's clock, for the client's `Clock` parameter.
#[derive(Debug)]
struct EngineClock(Engine);

impl thermos_core::clock::Clock for EngineClock {
    fn now(&self) -> OffsetDateTime {
        self.0.now()
    }
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

/// An OAuth error code as the provider sent it, if it looks like one
/// (RFC 6749 §4.1.2.1: `%x20-21 / %x23-5B / %x5D-7E`, kept to a token).
fn oauth_code(raw: &str) -> String {
    let clean = raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if clean {
        raw.to_owned()
    } else {
        "provider_error".to_owned()
    }
}

/// At most `max` characters of `text`, control characters dropped.
fn clip(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Where the browser goes when a session ends: `redirect_after` with the
/// outcome in its query, or a short page (`status` when it failed).
fn finish_page(
    session: &ConnectSessionRecord,
    outcome: Result<ConnectionId, (&str, &str)>,
    status: StatusCode,
) -> Response {
    if let Some(target) = session.redirect_after.as_deref().and_then(|raw| Url::parse(raw).ok()) {
        let mut target = target;
        {
            let mut query = target.query_pairs_mut();
            match outcome {
                Ok(id) => {
                    query
                        .append_pair("connection_id", &id.to_string())
                        .append_pair("status", "connected");
                }
                Err((code, _)) => {
                    query.append_pair("status", "failed").append_pair("error", code);
                }
            }
            query.append_pair("session_id", &session.id);
        }
        return redirect(target.as_str());
    }
    match outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Account connected",
            &format!(
                "Your {} account is connected. You can close this window.",
                session.provider
            ),
        ),
        Err((code, message)) => page(
            status,
            "Connection failed",
            &format!("The account could not be connected ({code}): {message}"),
        ),
    }
}

/// Headers on every browser answer: nothing cached, no `Referer` carrying
/// the callback's query onwards.
fn browser_headers() -> [(HeaderName, &'static str); 2] {
    [(CACHE_CONTROL, "no-store"), (REFERRER_POLICY, "no-referrer")]
}

fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, browser_headers(), [(LOCATION, location.to_owned())]).into_response()
}

/// A minimal HTML page; everything shown is escaped.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let (title, message) = (escape(title), escape(message));
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>\n"
    );
    (
        status,
        browser_headers(),
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (HeaderName::from_static("content-security-policy"), "default-src 'none'"),
        ],
        body,
    )
        .into_response()
}

/// HTML-escapes `&<>"'`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn only_token_like_error_codes_are_kept() {
        assert_eq!(oauth_code("access_denied"), "access_denied");
        assert_eq!(oauth_code("<script>"), "provider_error");
    }
}

//! `GET /oauth/callback`: the provider's answer, consumed once by its
//! state; the code exchanged with the sealed verifier; the connection
//! created or reconnected with its event and the session's completion in
//! one transaction; the session failed with the provider's (or Thermos's)
//! error otherwise.
//!
//! Never puts the code, the state, the verifier or a token into a log line,
//! a page, an error or an event.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use secrecy::SecretString;
use thermos_core::grant::GrantType;
use thermos_core::id::ConnectionId;
use thermos_core::oauth::{RefreshOutcome, TokenGrant};
use thermos_core::plan::{self, Jitter};
use thermos_core::seal::Field;
use thermos_store::connect::{Connect, ConnectOutcome, ConnectSessionRecord, Consume};
use thermos_store::{ConnectionRecord, NewConnection, TokenUpdate};
use time::OffsetDateTime;

use super::page::{clip, finish_page, oauth_code, page};
use super::{CONNECT_TRIES, state_hash, verifier_owner};
use crate::api::AppState;
use crate::engine::{Engine, events, truncate_ms};

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
    let (action, target, status) = match &result {
        Ok((record, false)) => ("connection.create", record.id.to_string(), StatusCode::OK),
        Ok((record, true)) => ("connection.reconnect", record.id.to_string(), StatusCode::OK),
        Err(failure) => ("connect_session.fail", session.id.clone(), failure.status),
    };
    // No API key acts here: the end user's browser does, through the session
    // (whose creation the audit log holds with the key that made it).
    let recorded = state
        .audit
        .change(crate::audit::Occurrence {
            actor: format!("connect:{}", session.id),
            actor_project: Some(session.project.clone()),
            action: action.to_owned(),
            target: Some(target),
            client: None,
            request_id: None,
            status: status.as_u16(),
        })
        .await;
    if !recorded {
        tracing::error!(session_id = %session.id, "the connect session's audit entry could not be written");
    }
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
                let tokens = seal_grant(engine, &session.provider, record.id, grant, now);
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
                let tokens = seal_grant(engine, &session.provider, id, grant, now);
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
                    refresh_token_expires_at: tokens.refresh_token_expires_at,
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

/// Seals the tokens of a code exchange for connection `id` and plans their
/// refresh (with `provider`'s keep-alive and the refresh token's lifetime,
/// if the provider stated one).
fn seal_grant(
    engine: &Engine,
    provider: &str,
    id: ConnectionId,
    grant: &TokenGrant,
    now: OffsetDateTime,
) -> TokenUpdate {
    let key = engine.key();
    let expires_at = truncate_ms(now + grant.expires_in);
    let refresh_token_expires_at = grant
        .refresh_token_expires_in
        .filter(|_| grant.refresh_token.is_some())
        .map(|lifetime| truncate_ms(now + lifetime));
    let keep_alive = engine
        .provider(provider)
        .and_then(|app| app.refresh_token_rules.keep_alive);
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
        next_refresh_at: truncate_ms(plan::plan_refresh(
            now,
            expires_at,
            engine.settings().policy.margin,
            Jitter::random(),
            keep_alive,
            refresh_token_expires_at,
        )),
        refresh_token_expires_at,
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

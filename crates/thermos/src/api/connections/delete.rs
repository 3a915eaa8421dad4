//! `DELETE /v1/connections/{id}`: revoke the grant at the provider (RFC
//! 7009) where it has a revocation endpoint, then delete the connection in
//! any case, with a `connection.deleted` event saying what the revocation
//! did (docs/revocation.md).
//!
//! Order and guarantees:
//! - the connection's lease is taken first (the same lease a refresh
//!   holds, on every instance), so no refresh can rotate the tokens while
//!   they are revoked; a refresh already in flight is waited for, at most
//!   `min(refresh.request_timeout, 10 s)`, then the revocation is given up
//!   (`failed`, `refresh_in_progress`) and the connection deleted anyway;
//! - the revocation request is bounded by the same timeout, and its
//!   outcome never stops the delete: a provider that is down leaves a
//!   deleted connection and an event that says `failed`;
//! - what is revoked: the refresh token of a `refresh_token` connection
//!   (its access token when it has none, or when the provider does not
//!   revoke refresh tokens), the access token of a machine connection —
//!   never a `jwt_bearer` connection's private key, which is no token.
//!
//! It never logs, answers or records a token.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use thermos_core::grant::GrantType;
use thermos_core::id::ConnectionId;
use thermos_core::seal::Field;
use thermos_store::{Claim, ConnectionRecord};

use super::super::AppState;
use super::super::auth::Caller;
use super::super::error::ApiError;
use super::super::extract::{ApiQuery, PathId};
use super::visible;
use crate::engine::events;
use crate::provider::client::MAX_REVOKE_TIMEOUT;
use crate::provider::{Revocation, TokenTypeHint};

/// The answer's header that says what the revocation did:
/// `revoked` | `not_supported` | `failed` | `skipped`.
pub const REVOCATION_HEADER: &str = "thermos-revocation";
/// How often a delete looks again at a lease held by a refresh in flight.
const LEASE_POLL: Duration = Duration::from_millis(50);

/// `DELETE /v1/connections/{id}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// `false`: delete without revoking at the provider. Default `true`.
    pub revoke: Option<bool>,
}

/// What the revocation did, as recorded in `connection.deleted`.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The provider answered 200 for this token.
    Revoked(TokenTypeHint),
    /// The provider does not revoke this token's type.
    NotSupported(TokenTypeHint),
    /// Not revoked: the provider failed or refused, or no lease could be had.
    Failed {
        hint: Option<TokenTypeHint>,
        code: String,
        message: String,
        http_status: Option<u16>,
    },
    /// Not attempted, and why.
    Skipped(&'static str),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Self::Revoked(_) => "revoked",
            Self::NotSupported(_) => "not_supported",
            Self::Failed { .. } => "failed",
            Self::Skipped(_) => "skipped",
        }
    }

    /// The event's revocation fields.
    fn data(&self) -> Value {
        match self {
            Self::Revoked(hint) | Self::NotSupported(hint) => {
                json!({"revocation": self.name(), "revoked_token_type": hint.as_str()})
            }
            Self::Failed {
                hint,
                code,
                message,
                http_status,
            } => json!({
                "revocation": self.name(),
                "revoked_token_type": hint.map(TokenTypeHint::as_str),
                "revocation_error": {"code": code, "message": message, "http_status": http_status},
            }),
            Self::Skipped(reason) => json!({"revocation": self.name(), "revocation_skipped": reason}),
        }
    }

    fn failed(hint: Option<TokenTypeHint>, code: &str, message: impl Into<String>, http_status: Option<u16>) -> Self {
        Self::Failed {
            hint,
            code: code.to_owned(),
            message: message.into(),
            http_status,
        }
    }
}

/// Revokes (unless `?revoke=false`), then deletes; 204 with the
/// [`REVOCATION_HEADER`], 404 when there is no such connection.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Response, ApiError> {
    let record = visible(&state, &caller, id).await?;
    let owner = format!("{}/delete", state.engine.settings().owner);
    let (record, outcome, leased) = if query.revoke == Some(false) {
        (record, Outcome::Skipped("not_requested"), false)
    } else if state
        .engine
        .apps()
        .resolve(&record.project, &record.provider)
        .is_none_or(|app| app.revocation_url.is_none())
    {
        (record, Outcome::Skipped("no_revocation_url"), false)
    } else {
        match lease(&state, id, &owner).await? {
            Leased::Gone => return Err(ApiError::not_found("connection")),
            Leased::Busy => {
                let message = "a refresh of the connection was in flight; its tokens were not revoked";
                (
                    record,
                    Outcome::failed(None, "refresh_in_progress", message, None),
                    false,
                )
            }
            Leased::Held(current) => {
                let outcome = revoke(&state, &current).await;
                (*current, outcome, true)
            }
        }
    };
    let event = events::connection_deleted(&record, outcome.data(), state.engine.now());
    let deleted = match state.engine.store().delete_connection(id, vec![event]).await {
        Ok(deleted) => deleted,
        Err(error) => {
            if leased {
                // Give the connection back to the scheduler, due at once.
                let now = state.engine.now();
                let _ = state.engine.store().release_lease(id, &owner, now).await;
            }
            return Err(error.into());
        }
    };
    if !deleted {
        return Err(ApiError::not_found("connection"));
    }
    state.engine.events_committed();
    log(&record, &outcome);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        HeaderName::from_static(REVOCATION_HEADER),
        HeaderValue::from_static(outcome.name()),
    );
    Ok(response)
}

/// What taking the connection's lease gave.
enum Leased {
    /// Held until the delete; the row as claimed (its current tokens).
    Held(Box<ConnectionRecord>),
    /// Still held by a refresh when the wait ended.
    Busy,
    /// Deleted meanwhile.
    Gone,
}

/// Takes the connection's lease, waiting (bounded) for a refresh in flight
/// on any instance to commit and drop its own.
async fn lease(state: &AppState, id: ConnectionId, owner: &str) -> Result<Leased, ApiError> {
    let engine = &state.engine;
    let wait = engine.settings().request_timeout.min(MAX_REVOKE_TIMEOUT);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = engine.now();
        let until = now + engine.settings().lease_ttl();
        match engine.store().claim_connection(id, owner, now, until).await? {
            Claim::Claimed(record) => return Ok(Leased::Held(Box::new(record))),
            Claim::NotFound => return Ok(Leased::Gone),
            Claim::Busy { .. } if tokio::time::Instant::now() + LEASE_POLL > deadline => return Ok(Leased::Busy),
            Claim::Busy { .. } => tokio::time::sleep(LEASE_POLL).await,
        }
    }
}

/// Revokes what `record`'s grant allows with the app that serves it (a
/// project's own client when it registered one).
async fn revoke(state: &AppState, record: &ConnectionRecord) -> Outcome {
    let Some(app) = state.engine.apps().resolve(&record.project, &record.provider) else {
        return Outcome::Skipped("no_revocation_url");
    };
    if app.revocation_url.is_none() {
        return Outcome::Skipped("no_revocation_url");
    }
    let client = &state.connect.client;
    let key = state.engine.key();
    let access = || key.open(&record.id, Field::AccessToken, &record.access_token);
    let refresh = match (record.grant.grant_type, &record.refresh_token) {
        (GrantType::RefreshToken, Some(sealed)) => Some(key.open(&record.id, Field::RefreshToken, sealed)),
        // A machine connection has no refresh token; a jwt_bearer one keeps
        // its private key in that column, which is never sent anywhere.
        _ => None,
    };
    if let Some(opened) = refresh {
        let token: SecretString = match opened {
            Ok(token) => token,
            Err(_) => return unopened(TokenTypeHint::RefreshToken),
        };
        let outcome = from_revocation(
            TokenTypeHint::RefreshToken,
            client.revoke(&app, &token, TokenTypeHint::RefreshToken).await,
        );
        // A provider that revokes only access tokens gets the access token.
        if !matches!(outcome, Outcome::NotSupported(_)) {
            return outcome;
        }
    }
    match access() {
        Ok(token) => from_revocation(
            TokenTypeHint::AccessToken,
            client.revoke(&app, &token, TokenTypeHint::AccessToken).await,
        ),
        Err(_) => unopened(TokenTypeHint::AccessToken),
    }
}

fn unopened(hint: TokenTypeHint) -> Outcome {
    Outcome::failed(
        Some(hint),
        "unreadable_token",
        "the stored token could not be opened",
        None,
    )
}

fn from_revocation(hint: TokenTypeHint, revocation: Revocation) -> Outcome {
    match revocation {
        Revocation::Revoked => Outcome::Revoked(hint),
        Revocation::Unsupported => Outcome::NotSupported(hint),
        Revocation::Failed {
            detail, http_status, ..
        } => {
            let code = match http_status {
                Some(status) if status >= 500 => "server_error",
                Some(429) => "rate_limited",
                Some(_) => "invalid_response",
                None => "network_error",
            };
            Outcome::failed(Some(hint), code, detail, http_status)
        }
        Revocation::Refused { code, http_status } => {
            let message = format!("the provider refused the revocation request ({code})");
            Outcome::failed(Some(hint), &code, message, Some(http_status))
        }
    }
}

/// One line per delete: what was deleted and what the revocation did.
fn log(record: &ConnectionRecord, outcome: &Outcome) {
    match outcome {
        Outcome::Failed {
            code,
            message,
            http_status,
            ..
        } => tracing::warn!(
            connection_id = %record.id,
            provider = %record.provider,
            revocation = outcome.name(),
            error.code = %code,
            error.message = %message,
            http_status = ?http_status,
            "connection deleted; its grant was not revoked at the provider"
        ),
        _ => tracing::info!(
            connection_id = %record.id,
            provider = %record.provider,
            revocation = outcome.name(),
            "connection deleted"
        ),
    }
}

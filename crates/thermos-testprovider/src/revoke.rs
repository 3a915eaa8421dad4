//! `POST /revoke`: token revocation (RFC 7009).
//!
//! The client authenticates as at the token endpoint (same rules, same
//! code: `server::authenticate`). `token` is looked up whatever the
//! `token_type_hint` says (RFC 7009 §2.1 lets a server search beyond the
//! hint): a refresh token — current or rotated-out — revokes its whole
//! grant family (every refresh and access token of it, as reuse detection
//! does); an access token revokes that token only; an unknown token is
//! 200 as well (§2.2). A [`RevocationMode`] switched from the handle makes
//! the endpoint answer 503 or `unsupported_token_type` instead, and
//! counters tell tests what happened. It never logs a token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::time::Instant;

use crate::server::{Shared, authenticate, oauth_error, parse_form};

/// How `POST /revoke` answers, switched at run time from the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RevocationMode {
    /// Revoke as RFC 7009 says.
    #[default]
    Normal,
    /// 503, with `Retry-After: <secs>` when given (RFC 7009 §2.2.1), before
    /// client authentication; nothing is revoked.
    Unavailable {
        /// The `Retry-After` value in seconds.
        retry_after_secs: Option<u64>,
    },
    /// 400 `unsupported_token_type` for refresh tokens; access tokens are
    /// still revoked (a provider that revokes only access tokens).
    RefreshTokensUnsupported,
    /// 400 `unsupported_token_type` for every token.
    Unsupported,
}

/// Revocation state and counters.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    mode: Mutex<RevocationMode>,
    /// Every `POST /revoke`, faults included.
    requests: AtomicU64,
    /// Requests that failed client authentication.
    refused_clients: AtomicU64,
    /// Grant families revoked by a refresh token.
    grants_revoked: AtomicU64,
    /// Access tokens revoked one by one.
    access_tokens_revoked: AtomicU64,
}

impl Revocations {
    pub(crate) fn set_mode(&self, mode: RevocationMode) {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    fn mode(&self) -> RevocationMode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn refused_clients(&self) -> u64 {
        self.refused_clients.load(Ordering::SeqCst)
    }

    pub(crate) fn grants_revoked(&self) -> u64 {
        self.grants_revoked.load(Ordering::SeqCst)
    }

    pub(crate) fn access_tokens_revoked(&self) -> u64 {
        self.access_tokens_revoked.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct RevokeState {
    shared: Arc<Shared>,
    revocations: Arc<Revocations>,
}

/// The `POST /revoke` route.
pub(crate) fn router(shared: Arc<Shared>, revocations: Arc<Revocations>) -> Router {
    Router::new()
        .route("/revoke", post(revoke))
        .with_state(RevokeState { shared, revocations })
}

async fn revoke(State(state): State<RevokeState>, headers: HeaderMap, body: Bytes) -> Response {
    let revocations = &state.revocations;
    revocations.requests.fetch_add(1, Ordering::SeqCst);
    let mode = revocations.mode();
    if let RevocationMode::Unavailable { retry_after_secs } = mode {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response();
        if let Some(secs) = retry_after_secs
            && let Ok(value) = secs.to_string().parse()
        {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        return response;
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        );
    }
    let form: HashMap<String, String> = match parse_form(&body) {
        Ok(form) => form,
        Err(problem) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", problem),
    };
    if let Err(failure) = authenticate(&state.shared.options, &headers, &form) {
        revocations.refused_clients.fetch_add(1, Ordering::SeqCst);
        return failure.into_response();
    }
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is missing");
    };
    if mode == RevocationMode::Unsupported {
        return unsupported();
    }
    let mut book = state.shared.book();
    if let Some(grant) = book.grant_of(token) {
        if mode == RevocationMode::RefreshTokensUnsupported {
            return unsupported();
        }
        if book.revoke(&grant) {
            revocations.grants_revoked.fetch_add(1, Ordering::SeqCst);
        }
    } else if book.revoke_access_token(token, Instant::now()) {
        revocations.access_tokens_revoked.fetch_add(1, Ordering::SeqCst);
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    StatusCode::OK.into_response()
}

fn unsupported() -> Response {
    oauth_error(
        StatusCode::BAD_REQUEST,
        "unsupported_token_type",
        "this server does not revoke tokens of this type",
    )
}

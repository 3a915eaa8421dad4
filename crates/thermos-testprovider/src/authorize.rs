//! The authorization code grant (RFC 6749 §4.1) with PKCE (RFC 7636), for
//! tests of connect sessions: `GET /authorize` and the `authorization_code`
//! grant at `POST /token`.
//!
//! `GET /authorize` has no user interface: it approves at once and
//! redirects (302) to `redirect_uri` with a `code` and the `state` — or,
//! while [`crate::TestProvider::set_authorize_error`] holds an error code
//! (`access_denied`, …), with that `error` instead, as a user refusing
//! would. It insists on `response_type=code`, the registered `client_id`, an
//! absolute `redirect_uri` and an S256 `code_challenge` (a request without
//! PKCE is refused, as OAuth 2.1 wants).
//!
//! Codes are single use (a second exchange of one code also revokes the
//! grant the first one started, RFC 6749 §4.1.2), live [`CODE_TTL`], and are
//! bound to the client, the `redirect_uri` and the challenge: the exchange
//! must present the same `redirect_uri` and a `code_verifier` whose SHA-256
//! (base64url, unpadded) is the challenge, else `invalid_grant`. A code that
//! passes starts a grant family in the book, so refreshes then rotate and
//! detect reuse as for any grant.
//!
//! Never holds a lock across an `.await` (nothing here awaits).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::time::Instant;

use crate::ExpiresIn;
use crate::book::GrantId;
use crate::server::{Shared, json_response, oauth_error};

/// How long an authorization code may be exchanged.
pub const CODE_TTL: Duration = Duration::from_secs(60);

/// Codes issued and not yet pruned, the error switch and what was granted.
#[derive(Debug, Default)]
pub(crate) struct Authorizations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    codes: HashMap<String, Code>,
    /// While set, `/authorize` answers with this `error`.
    deny_with: Option<String>,
    /// Grants started by code exchanges, in order.
    grants: Vec<GrantId>,
    /// `GET /authorize` requests answered with a code.
    codes_issued: u64,
}

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scope: Option<String>,
    issued_at: Instant,
    /// Set by the first exchange that presented the code.
    used: Option<Option<GrantId>>,
}

impl Authorizations {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `/authorize` answer with `error` (None: approve again).
    pub(crate) fn set_error(&self, error: Option<String>) {
        self.lock().deny_with = error;
    }

    /// Grants started by code exchanges, oldest first.
    pub(crate) fn grants(&self) -> Vec<GrantId> {
        self.lock().grants.clone()
    }

    /// Codes issued by `/authorize`.
    pub(crate) fn codes_issued(&self) -> u64 {
        self.lock().codes_issued
    }
}

/// `GET /authorize`: approve at once (or refuse, when told to) and redirect.
pub(crate) async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params: HashMap<String, String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let get = |name: &str| params.get(name).map(String::as_str).filter(|v| !v.is_empty());
    // Errors about the client or the redirect URI are shown, never
    // redirected (RFC 6749 §4.1.2.1): the redirect URI is not trusted yet.
    if get("client_id") != Some(shared.options.client_id.as_str()) {
        return page(StatusCode::BAD_REQUEST, "unknown client_id");
    }
    let Some(redirect_uri) = get("redirect_uri").filter(|uri| is_absolute_http(uri)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "redirect_uri is missing or not an absolute http(s) URL",
        );
    };
    let state = get("state");
    let back = |pairs: &[(&str, &str)]| redirect(redirect_uri, pairs, state);
    if let Some(error) = shared.authorizations.lock().deny_with.clone() {
        return back(&[
            ("error", error.as_str()),
            ("error_description", "the user did not authorize the application"),
        ]);
    }
    if get("response_type") != Some("code") {
        return back(&[("error", "unsupported_response_type")]);
    }
    let challenge = get("code_challenge").filter(|c| (43..=128).contains(&c.len()));
    let Some(challenge) = challenge.filter(|_| get("code_challenge_method") == Some("S256")) else {
        return back(&[
            ("error", "invalid_request"),
            ("error_description", "PKCE with code_challenge_method=S256 is required"),
        ]);
    };
    let code = format!("ac_{}", random_text(24));
    {
        let mut inner = shared.authorizations.lock();
        let now = Instant::now();
        inner
            .codes
            .retain(|_, c| now.saturating_duration_since(c.issued_at) <= CODE_TTL * 10);
        inner.codes.insert(
            code.clone(),
            Code {
                client_id: shared.options.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                challenge: challenge.to_owned(),
                scope: get("scope").map(str::to_owned),
                issued_at: now,
                used: None,
            },
        );
        inner.codes_issued += 1;
    }
    back(&[("code", code.as_str())])
}

/// The `authorization_code` grant at `POST /token`, after client
/// authentication passed.
pub(crate) fn exchange(shared: &Shared, form: &HashMap<String, String>) -> Response {
    let get = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(code), Some(redirect_uri), Some(verifier)) = (get("code"), get("redirect_uri"), get("code_verifier"))
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code, redirect_uri and code_verifier are required",
        );
    };
    let now = Instant::now();
    let verdict = {
        let mut inner = shared.authorizations.lock();
        let Some(entry) = inner.codes.get_mut(code) else {
            return invalid_grant("unknown authorization code");
        };
        if let Some(first) = entry.used.clone() {
            // Replayed: whatever the first exchange obtained is revoked.
            if let Some(grant) = first {
                shared.book().revoke(&grant);
            }
            return invalid_grant("authorization code already used");
        }
        entry.used = Some(None);
        if now.saturating_duration_since(entry.issued_at) > CODE_TTL {
            Err("authorization code expired")
        } else if entry.client_id != shared.options.client_id {
            Err("authorization code issued to another client")
        } else if entry.redirect_uri != redirect_uri {
            Err("redirect_uri does not match the authorization request")
        } else if s256(verifier) != entry.challenge {
            Err("PKCE verification failed: code_verifier does not match code_challenge")
        } else {
            Ok(entry.scope.clone())
        }
    };
    let scope = match verdict {
        Ok(scope) => scope,
        Err(why) => return invalid_grant(why),
    };
    let grant = shared.book().issue_grant(&shared.rules, now);
    {
        let mut inner = shared.authorizations.lock();
        if let Some(entry) = inner.codes.get_mut(code) {
            entry.used = Some(Some(grant.grant.clone()));
        }
        inner.grants.push(grant.grant.clone());
    }
    let mut body = Map::new();
    body.insert("access_token".into(), grant.access_token.into());
    body.insert("token_type".into(), "Bearer".into());
    let secs = shared.options.access_token_ttl.as_secs_f64().ceil() as u64;
    match shared.options.expires_in {
        ExpiresIn::Number => _ = body.insert("expires_in".into(), secs.into()),
        ExpiresIn::String => _ = body.insert("expires_in".into(), secs.to_string().into()),
        ExpiresIn::Omitted => {}
    }
    body.insert("refresh_token".into(), grant.refresh_token.into());
    if let Some(ttl) = shared.options.refresh_token_ttl {
        body.insert(
            "refresh_token_expires_in".into(),
            (ttl.as_secs_f64().ceil() as u64).into(),
        );
    }
    if let Some(scope) = scope.or_else(|| shared.options.scope.clone()) {
        body.insert("scope".into(), scope.into());
    }
    json_response(StatusCode::OK, Value::Object(body))
}

/// `BASE64URL(SHA256(verifier))`, unpadded (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn invalid_grant(why: &str) -> Response {
    tracing::debug!(reason = why, "test provider refused an authorization code");
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
}

fn is_absolute_http(uri: &str) -> bool {
    (uri.starts_with("http://") || uri.starts_with("https://")) && !uri.contains('#')
}

/// 302 to `uri` with `pairs` and `state` added to its query.
fn redirect(uri: &str, pairs: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(pairs.iter().copied());
    if let Some(state) = state {
        query.append_pair("state", state);
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    let location = format!("{uri}{separator}{}", query.finish());
    (
        StatusCode::FOUND,
        [(LOCATION, location), (CACHE_CONTROL, "no-store".to_owned())],
    )
        .into_response()
}

fn page(status: StatusCode, message: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
}

fn random_text(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_the_rfc_7636_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}

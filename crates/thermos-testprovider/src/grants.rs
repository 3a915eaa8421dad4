//! The machine grants of the token endpoint: `client_credentials` (RFC 6749
//! §4.4) and the JWT bearer grant (RFC 7523 §2.1).
//!
//! Both come after client authentication (`server.rs` checks it for every
//! grant) and answer an access token with the configured lifetime and no
//! refresh token. A JWT-bearer assertion is verified as a strict provider
//! would: its signature with a public key registered for the test
//! ([`crate::TestProvider::register_jwt_key`], picked by the header's
//! `kid`), `aud` equal to this token endpoint's URL, `iss` and `sub`
//! present, `exp` in the future and at most ten minutes after `iat`, and a
//! `jti` never seen before; anything else is `invalid_grant`. Counters per
//! grant type and the claims of accepted assertions are kept for tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::header::HOST;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::ExpiresIn;
use crate::server::{Shared, json_response, oauth_error};

/// The `grant_type` of the JWT bearer grant.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Longest accepted assertion lifetime (`exp - iat`), in seconds.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 600;

/// Registered public keys, seen `jti`s and counters.
#[derive(Default)]
pub(crate) struct MachineGrants {
    inner: Mutex<State>,
}

impl std::fmt::Debug for MachineGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineGrants").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<String, DecodingKey>,
    seen_jti: HashSet<String>,
    accepted: Vec<Value>,
    client_credentials_calls: u64,
    jwt_bearer_calls: u64,
    assertions_refused: u64,
}

impl MachineGrants {
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `public_pem` (RSA, EC or Ed25519, SPKI PEM) under `kid`.
    pub(crate) fn register_key(&self, kid: &str, public_pem: &str) -> Result<(), String> {
        let pem = public_pem.as_bytes();
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|e| format!("not a public key PEM: {e}"))?;
        self.state().keys.insert(kid.to_owned(), key);
        Ok(())
    }

    pub(crate) fn client_credentials_calls(&self) -> u64 {
        self.state().client_credentials_calls
    }

    pub(crate) fn jwt_bearer_calls(&self) -> u64 {
        self.state().jwt_bearer_calls
    }

    pub(crate) fn assertions_refused(&self) -> u64 {
        self.state().assertions_refused
    }

    pub(crate) fn accepted_assertions(&self) -> Vec<Value> {
        self.state().accepted.clone()
    }

    /// Verifies one assertion sent to `audience`; its claims if accepted.
    fn verify(&self, assertion: &str, audience: &str) -> Result<Value, &'static str> {
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| "the assertion is not a JWT")?;
        let mut state = self.state();
        let key = match &header.kid {
            Some(kid) => state.keys.get(kid).ok_or("the assertion's kid is not registered")?,
            None if state.keys.len() == 1 => state.keys.values().next().ok_or("no key is registered")?,
            None => return Err("the assertion names no kid"),
        };
        if matches!(header.alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err("symmetric algorithms are not accepted");
        }
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(assertion, key, &validation)
            .map_err(|_| "the assertion's signature, audience or expiry is not valid")?;
        let claims = data.claims;
        let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
            return Err("the assertion has no iat");
        };
        if exp - iat > MAX_ASSERTION_LIFETIME_SECS || exp <= iat {
            return Err("the assertion lives too long");
        }
        let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) else {
            return Err("the assertion has no jti");
        };
        if !state.seen_jti.insert(jti.to_owned()) {
            return Err("the assertion's jti was used before");
        }
        state.accepted.push(claims.clone());
        Ok(claims)
    }
}

/// `grant_type=client_credentials`: the client is authenticated already.
pub(crate) fn client_credentials(shared: &Shared, form: &HashMap<String, String>) -> Response {
    shared.machine.state().client_credentials_calls += 1;
    issue(shared, form.get("scope").cloned())
}

/// The JWT bearer grant: verifies the `assertion`, then issues a token.
pub(crate) fn jwt_bearer(shared: &Shared, headers: &HeaderMap, form: &HashMap<String, String>) -> Response {
    shared.machine.state().jwt_bearer_calls += 1;
    let Some(assertion) = form.get("assertion").filter(|a| !a.is_empty()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "assertion is missing");
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let audience = format!("http://{host}/token");
    match shared.machine.verify(assertion, &audience) {
        Ok(claims) => {
            let scope = form
                .get("scope")
                .cloned()
                .or_else(|| claims["scope"].as_str().map(str::to_owned));
            issue(shared, scope)
        }
        Err(why) => {
            shared.machine.state().assertions_refused += 1;
            tracing::debug!(reason = why, "test provider refused an assertion");
            oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why)
        }
    }
}

/// A new access token (a grant family of its own whose refresh token is
/// never handed out), with the configured lifetime and no refresh token.
fn issue(shared: &Shared, scope: Option<String>) -> Response {
    let issued = shared.book().issue_grant(&shared.rules, Instant::now());
    let mut body = Map::new();
    body.insert("access_token".into(), issued.access_token.into());
    body.insert("token_type".into(), "Bearer".into());
    let secs = shared.options.access_token_ttl.as_secs_f64().ceil() as u64;
    match shared.options.expires_in {
        ExpiresIn::Number => _ = body.insert("expires_in".into(), secs.into()),
        ExpiresIn::String => _ = body.insert("expires_in".into(), secs.to_string().into()),
        ExpiresIn::Omitted => {}
    }
    if let Some(scope) = scope.or_else(|| shared.options.scope.clone()) {
        body.insert("scope".into(), scope.into());
    }
    json_response(StatusCode::OK, Value::Object(body))
}

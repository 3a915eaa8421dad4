//! The grant part of `POST /v1/connections` (docs/grants.md): which grant
//! type, and what it needs — nothing more for `refresh_token` and
//! `client_credentials` (the app holds the client credentials), a private
//! key and assertion claims for `jwt_bearer`. Every problem is reported at
//! once (code 1600); a private key that does not parse or cannot sign with
//! its algorithm is refused here, never at the first re-issue. The key is
//! sealed at once and never appears in a problem, a log line or an answer.

use secrecy::{ExposeSecret, SecretString};
use thermos_core::grant::GrantType;
use thermos_core::id::ConnectionId;
use thermos_core::seal::{Field, Sealed};
use thermos_store::{ConnectionGrant, TokenUpdate};
use time::OffsetDateTime;

use crate::api::dto::{AssertionClaimsInput, CreateConnection};
use crate::engine::Engine;
use crate::engine::grant::{AssertionClaims, ClientCredentialsParams, DEFAULT_ALGORITHM, SigningKey};
use crate::provider::ProviderApp;

/// Longest accepted claim or scope, in characters.
pub(crate) const MAX_CLAIM_CHARS: usize = 1024;

/// A grant ready to store.
pub(super) struct ParsedGrant {
    /// The grant type and its parameters.
    pub stored: ConnectionGrant,
    /// A `jwt_bearer` connection's sealed private key (stored where a
    /// refresh token would be).
    pub private_key: Option<Sealed>,
}

/// Reads the grant of a new connection `id`, taking the private key out of
/// `body`; `None` (with `problems` noted) when it is not acceptable.
pub(super) fn parse(
    engine: &Engine,
    id: ConnectionId,
    body: &mut CreateConnection,
    app: Option<&ProviderApp>,
    problems: &mut Vec<String>,
) -> Option<ParsedGrant> {
    // Keys are often pasted with surrounding whitespace; the PEM is the same.
    let private_key = body
        .private_key
        .take()
        .map(|pem| SecretString::from(pem.expose_secret().trim().to_owned()));
    let claims = body.assertion_claims.take();
    let grant_type = match body.grant_type.as_deref() {
        None => GrantType::RefreshToken,
        Some(raw) => match GrantType::parse(raw) {
            Some(grant_type) => grant_type,
            None => {
                let known: Vec<&str> = GrantType::ALL.iter().map(|g| g.as_str()).collect();
                problems.push(format!("grant_type: {raw:?} is not one of {}", known.join(", ")));
                return None;
            }
        },
    };
    if grant_type != GrantType::JwtBearer {
        if private_key.is_some() {
            problems.push("private_key: only for grant_type jwt_bearer".to_owned());
        }
        if claims.is_some() {
            problems.push("assertion_claims: only for grant_type jwt_bearer".to_owned());
        }
    }
    if grant_type.is_machine() {
        if body.refresh_token.is_some() {
            problems.push(format!(
                "refresh_token: a {grant_type} connection keeps no refresh token"
            ));
        }
        if body.access_token.is_none() && (body.expires_in.is_some() || body.expires_at.is_some()) {
            problems.push("expires_in, expires_at: only with an access_token".to_owned());
        }
    } else if body.access_token.is_none() {
        problems.push(
            "access_token: required (Thermos issues the first token itself only for grant_type client_credentials or jwt_bearer)"
                .to_owned(),
        );
    }
    if grant_type.is_machine()
        && let Some(scope) = &body.scope
        && (scope.trim().is_empty() || scope.chars().count() > MAX_CLAIM_CHARS)
    {
        problems.push(format!("scope: must be 1-{MAX_CLAIM_CHARS} characters when given"));
    }
    let params = match grant_type {
        GrantType::RefreshToken => None,
        GrantType::ClientCredentials => Some(to_json(&ClientCredentialsParams {
            scope: body.scope.clone(),
        })),
        GrantType::JwtBearer => {
            let claims = jwt_claims(claims, body.scope.clone(), app, problems);
            let key = match (&private_key, &claims) {
                (None, _) => {
                    problems.push("private_key: required for grant_type jwt_bearer (a PEM private key)".to_owned());
                    None
                }
                (Some(pem), Some(claims)) => match SigningKey::parse(pem, &claims.alg) {
                    Ok(_) => Some(seal_key(engine, id, pem)),
                    Err(e) => {
                        problems.push(format!("private_key: {e}"));
                        None
                    }
                },
                (Some(_), None) => None,
            };
            return match (claims, key) {
                (Some(claims), Some(key)) => Some(ParsedGrant {
                    stored: ConnectionGrant {
                        grant_type,
                        params: Some(to_json(&claims)),
                    },
                    private_key: Some(key),
                }),
                _ => None,
            };
        }
    };
    Some(ParsedGrant {
        stored: ConnectionGrant { grant_type, params },
        private_key: None,
    })
}

/// The claims of a `jwt_bearer` connection, checked; `aud` defaults to the
/// provider's token URL, `alg` to RS256.
fn jwt_claims(
    raw: Option<serde_json::Value>,
    form_scope: Option<String>,
    app: Option<&ProviderApp>,
    problems: &mut Vec<String>,
) -> Option<AssertionClaims> {
    let Some(raw) = raw else {
        problems.push(
            "assertion_claims: required for grant_type jwt_bearer ({iss, sub, aud?, scope?, kid?, alg?})".to_owned(),
        );
        return None;
    };
    let input: AssertionClaimsInput = match serde_json::from_value(raw) {
        Ok(input) => input,
        Err(e) => {
            problems.push(format!("assertion_claims: {e}"));
            return None;
        }
    };
    let before = problems.len();
    for (name, value) in [("iss", Some(&input.iss)), ("sub", Some(&input.sub))]
        .into_iter()
        .chain([
            ("aud", input.aud.as_ref()),
            ("scope", input.scope.as_ref()),
            ("kid", input.kid.as_ref()),
        ])
    {
        if let Some(value) = value
            && (value.trim().is_empty() || value.chars().count() > MAX_CLAIM_CHARS)
        {
            problems.push(format!(
                "assertion_claims.{name}: must be 1-{MAX_CLAIM_CHARS} characters"
            ));
        }
    }
    let alg = input.alg.unwrap_or_else(|| DEFAULT_ALGORITHM.to_owned());
    if let Err(e) = crate::engine::grant::parse_algorithm(&alg) {
        problems.push(format!("assertion_claims.{e}"));
    }
    let aud = match (input.aud, app) {
        (Some(aud), _) => aud,
        (None, Some(app)) => app.token_url.to_string(),
        (None, None) => String::new(),
    };
    (problems.len() == before).then_some(AssertionClaims {
        iss: input.iss,
        sub: input.sub,
        aud,
        scope: input.scope,
        kid: input.kid,
        alg,
        form_scope,
    })
}

fn seal_key(engine: &Engine, id: ConnectionId, pem: &SecretString) -> Sealed {
    engine.key().seal(&id, Field::PrivateKey, pem)
}

fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    // Serialising these plain structs of strings cannot fail.
    serde_json::to_value(value).unwrap_or_default()
}

/// The columns of a machine-grant connection created without a token: an
/// empty access token that expired when it was issued, due now, so that it
/// is never handed out and the first call issues a real one.
pub(super) fn placeholder(
    engine: &Engine,
    id: ConnectionId,
    scope: Option<String>,
    now: OffsetDateTime,
) -> TokenUpdate {
    TokenUpdate {
        access_token: engine
            .key()
            .seal(&id, Field::AccessToken, &SecretString::from(String::new())),
        refresh_token: None,
        token_type: "Bearer".to_owned(),
        scope,
        issued_at: now,
        expires_at: now,
        next_refresh_at: now,
        refresh_token_expires_at: None,
    }
}

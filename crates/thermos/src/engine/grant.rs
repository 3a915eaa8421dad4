//! What a re-issue sends, by grant type (docs/grants.md): the stored
//! refresh token (`refresh_token`), nothing but the app's credentials and a
//! scope (`client_credentials`, RFC 6749 §4.4), or an assertion signed now
//! with the connection's private key (`jwt_bearer`, RFC 7523 §2.1).
//!
//! Owns the assertion's claims (the JSON kept in a connection's
//! `grant_params`), the parsing of private keys (at import and before each
//! call) and the signing of assertions: `iat` = now, `exp` a few minutes
//! ahead, a fresh random `jti` every time, so that a retry after a lost
//! response is a new assertion, never a replay. The private key and the
//! assertion are secrets: never logged, never in an outcome (the client
//! scrubs the assertion from anything a provider echoes).
//!
//! Read next: `refresh.rs` (which opens the sealed values and calls
//! [`Credential::send`]) and `crate::provider::client` (the request forms).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thermos_core::clock::Clock;
use thermos_core::oauth::RefreshOutcome;
use time::OffsetDateTime;

use crate::provider::{ProviderApp, RefreshClient};

/// How long an assertion is valid after it is signed (its `exp`).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// The signing algorithms accepted for assertions.
pub const ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// The algorithm used when the claims name none.
pub const DEFAULT_ALGORITHM: &str = "RS256";
/// Longest accepted private key PEM, in bytes (an RSA 8192 key is ~6.5 KB).
pub const MAX_PRIVATE_KEY_BYTES: usize = 16 * 1024;

/// The parameters of a `client_credentials` connection (its `grant_params`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentialsParams {
    /// The `scope` form parameter; `None`: the provider app's configured
    /// scopes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The claims a `jwt_bearer` connection signs into each assertion, and the
/// form's `scope` (its `grant_params`). None of it is secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AssertionClaims {
    /// `iss`: who signs (often the client id or a service account).
    pub iss: String,
    /// `sub`: on whose behalf the token is asked.
    pub sub: String,
    /// `aud`: the authorization server; at import, the token URL by default.
    pub aud: String,
    /// A `scope` claim in the assertion (as Google's service accounts want).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The header's `kid`, naming the key at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The signing algorithm ([`ALGORITHMS`]).
    pub alg: String,
    /// The form's `scope` parameter, sent beside the assertion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_scope: Option<String>,
}

/// The claims of one assertion as signed.
#[derive(Serialize)]
struct Signed<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// A private key ready to sign, with its algorithm. Its Debug output
/// shows only the algorithm.
pub struct SigningKey {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a PEM private key for `alg` and proves that it signs (a
    /// trial signature), so that a key refused at the first re-issue is
    /// refused at import instead. The error never quotes the key.
    pub fn parse(pem: &SecretString, alg: &str) -> Result<Self, String> {
        let algorithm = parse_algorithm(alg)?;
        let bytes = pem.expose_secret().as_bytes();
        if bytes.len() > MAX_PRIVATE_KEY_BYTES {
            return Err(format!("larger than {MAX_PRIVATE_KEY_BYTES} bytes"));
        }
        let parsed = match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(bytes),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(bytes),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(bytes),
            // parse_algorithm admits nothing else.
            _ => return Err(format!("unsupported algorithm {alg}")),
        };
        let key = parsed.map_err(|e| format!("not a PEM private key for {alg} ({})", describe(&e)))?;
        let signing = Self { key, algorithm };
        jsonwebtoken::encode(
            &Header::new(algorithm),
            &serde_json::json!({"trial": true}),
            &signing.key,
        )
        .map_err(|e| format!("the key cannot sign with {alg} ({})", describe(&e)))?;
        Ok(signing)
    }

    /// Signs one assertion for `claims` at `now`: `iat` now, `exp`
    /// [`ASSERTION_LIFETIME`] later, a fresh random `jti`.
    pub fn assertion(&self, claims: &AssertionClaims, now: OffsetDateTime) -> Result<SecretString, String> {
        let mut header = Header::new(self.algorithm);
        header.kid = claims.kid.clone();
        let iat = now.unix_timestamp();
        let body = Signed {
            iss: &claims.iss,
            sub: &claims.sub,
            aud: &claims.aud,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs() as i64,
            jti: random_jti(),
            scope: claims.scope.as_deref(),
        };
        jsonwebtoken::encode(&header, &body, &self.key)
            .map(SecretString::from)
            .map_err(|e| format!("sign the assertion: {}", describe(&e)))
    }
}

/// The algorithm named `alg`, if accepted.
pub fn parse_algorithm(alg: &str) -> Result<Algorithm, String> {
    if !ALGORITHMS.contains(&alg) {
        return Err(format!("alg: {alg:?} is not one of {}", ALGORITHMS.join(", ")));
    }
    alg.parse::<Algorithm>()
        .map_err(|_| format!("alg: {alg:?} is not supported"))
}

/// A jsonwebtoken error's kind, never its input.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidKeyFormat => "invalid key format".to_owned(),
        ErrorKind::InvalidRsaKey(_) => "invalid RSA key".to_owned(),
        ErrorKind::InvalidEcdsaKey => "invalid ECDSA key".to_owned(),
        ErrorKind::InvalidAlgorithmName | ErrorKind::InvalidAlgorithm => "wrong key type for the algorithm".to_owned(),
        ErrorKind::Crypto(_) => "the key does not fit the algorithm".to_owned(),
        _ => "cannot be used".to_owned(),
    }
}

/// 128 random bits in hex: unique per assertion.
fn random_jti() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one re-issue sends, opened and parsed for this attempt.
#[derive(Debug)]
pub(super) enum Credential {
    /// The stored refresh token.
    RefreshToken(SecretString),
    /// The app's credentials and this scope.
    ClientCredentials { scope: Option<String> },
    /// A key that signs a new assertion for every request.
    JwtBearer { key: SigningKey, claims: AssertionClaims },
}

impl Credential {
    /// Sends one request for this grant (a fresh assertion for every call,
    /// so a retry never replays a `jti`).
    pub(super) async fn send(&self, client: &RefreshClient, app: &ProviderApp, clock: &dyn Clock) -> RefreshOutcome {
        match self {
            Self::RefreshToken(token) => client.refresh(app, token, clock).await,
            Self::ClientCredentials { scope } => {
                let scope = scope.clone().or_else(|| app_scope(app));
                client.client_credentials(app, scope.as_deref(), clock).await
            }
            Self::JwtBearer { key, claims } => match key.assertion(claims, clock.now()) {
                Ok(assertion) => {
                    client
                        .jwt_bearer(app, &assertion, claims.form_scope.as_deref(), clock)
                        .await
                }
                Err(detail) => RefreshOutcome::Transient(thermos_core::oauth::TransientFailure::new(
                    thermos_core::oauth::TransientKind::MalformedResponse,
                    None,
                    detail,
                )),
            },
        }
    }
}

/// The app's configured scopes, joined as the provider wants, if it has any.
fn app_scope(app: &ProviderApp) -> Option<String> {
    (!app.scopes.is_empty()).then(|| app.join_scopes(&app.scopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC: &str = include_str!("../../tests/fixtures/jwt/ec_private.pem");
    const RSA: &str = include_str!("../../tests/fixtures/jwt/rsa_private.pem");
    const RSA_PKCS1: &str = include_str!("../../tests/fixtures/jwt/rsa_private_pkcs1.pem");

    fn claims(alg: &str) -> AssertionClaims {
        AssertionClaims {
            iss: "svc".into(),
            sub: "user".into(),
            aud: "https://auth.example.com/token".into(),
            scope: None,
            kid: Some("k1".into()),
            alg: alg.into(),
            form_scope: None,
        }
    }

    #[test]
    fn rsa_and_ec_keys_sign_assertions_with_a_fresh_jti_each_time() {
        for (pem, alg) in [(RSA, "RS256"), (RSA_PKCS1, "RS256"), (EC, "ES256"), (RSA, "PS256")] {
            let key = SigningKey::parse(&pem.to_owned().into(), alg).expect(alg);
            let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
            let a = key.assertion(&claims(alg), now).unwrap();
            let b = key.assertion(&claims(alg), now).unwrap();
            assert_ne!(a.expose_secret(), b.expose_secret());
            let header = jsonwebtoken::decode_header(a.expose_secret()).unwrap();
            assert_eq!(header.kid.as_deref(), Some("k1"));
            assert_eq!(format!("{:?}", header.alg), alg);
        }
    }

    #[test]
    fn a_key_that_does_not_parse_or_fit_the_algorithm_is_refused_without_quoting_it() {
        for (pem, alg) in [
            (
                "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n",
                "RS256",
            ),
            ("hello", "ES256"),
            (RSA, "ES256"),
            (EC, "RS256"),
        ] {
            let error = SigningKey::parse(&pem.to_owned().into(), alg).unwrap_err();
            assert!(!error.contains("not-a-key") && !error.contains("MII"), "{error}");
        }
        assert!(SigningKey::parse(&RSA.to_owned().into(), "HS256").is_err());
    }
}

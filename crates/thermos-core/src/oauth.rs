//! OAuth 2.0 refresh responses (RFC 6749 §5.1, §5.2) turned into values the
//! engine matches on. Parsing is pure: the HTTP client in the `thermos`
//! binary does the IO and hands the status, `Retry-After` header and body here.

use std::time::Duration;

use secrecy::SecretString;
use time::OffsetDateTime;

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// HTTP Basic with form-URL-encoded id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// Public client: `client_id` in the body, no secret.
    None,
}

impl AuthMethod {
    /// Parses the configuration name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// A successful refresh, parsed and normalised.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The new access token.
    pub access_token: SecretString,
    /// A new refresh token if the provider rotated it; `None` keeps the old one.
    pub refresh_token: Option<SecretString>,
    /// `token_type` as sent (`Bearer` when absent).
    pub token_type: String,
    /// The token's remaining lifetime, already reduced by the skew allowance,
    /// clamped to sane bounds, or the provider's `default_ttl` when absent.
    pub expires_in: Duration,
    /// The granted scope, when the provider says.
    pub scope: Option<String>,
    /// The refresh token's own lifetime, when the provider says.
    pub refresh_token_expires_in: Option<Duration>,
    /// Oddities found while parsing (e.g. `expires_in` clamped), for logs.
    pub warnings: Vec<&'static str>,
}

/// An OAuth error response (RFC 6749 §5.2), without any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// The `error` field, e.g. `invalid_grant`.
    pub error: String,
    /// The `error_description` field, truncated.
    pub description: Option<String>,
    /// The HTTP status of the response.
    pub http_status: u16,
}

/// Why a refresh failed for a reason worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// HTTP 5xx.
    ServerError,
    /// No answer within the request timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Network,
    /// A 200 (or other) body that is not a usable token response.
    MalformedResponse,
    /// An OAuth error that is neither fatal nor about the client.
    ProviderError,
}

/// A transient failure, without any secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientFailure {
    /// What went wrong.
    pub kind: TransientKind,
    /// The HTTP status, if a response arrived.
    pub http_status: Option<u16>,
    /// A short human-readable detail (never a token).
    pub detail: String,
}

/// What the token endpoint's answer means for the engine.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// New tokens.
    Refreshed(TokenGrant),
    /// `invalid_grant`: the grant is dead (after the lost-race check).
    InvalidGrant(ProviderError),
    /// `invalid_client` / `unauthorized_client`: the app is misconfigured.
    ClientInvalid(ProviderError),
    /// HTTP 429; `retry_after` when the provider said how long to wait.
    RateLimited {
        /// The parsed `Retry-After`, relative to the response time.
        retry_after: Option<Duration>,
        /// The HTTP status (429).
        http_status: u16,
    },
    /// Worth retrying later.
    Transient(TransientFailure),
}

impl RefreshOutcome {
    /// The stable error code recorded for a failed attempt (`None` on success).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Self::Refreshed(_) => None,
            Self::InvalidGrant(_) => Some("invalid_grant"),
            Self::ClientInvalid(e) if e.error == "unauthorized_client" => Some("unauthorized_client"),
            Self::ClientInvalid(_) => Some("invalid_client"),
            Self::RateLimited { .. } => Some("rate_limited"),
            Self::Transient(t) => Some(match t.kind {
                TransientKind::ServerError => "server_error",
                TransientKind::Timeout => "timeout",
                TransientKind::Network => "network_error",
                TransientKind::MalformedResponse => "malformed_response",
                TransientKind::ProviderError => "provider_error",
            }),
        }
    }

    /// The HTTP status of the provider's answer, if there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Refreshed(_) => Some(200),
            Self::InvalidGrant(e) | Self::ClientInvalid(e) => Some(e.http_status),
            Self::RateLimited { http_status, .. } => Some(*http_status),
            Self::Transient(t) => t.http_status,
        }
    }

    /// A short message for `last_error` (never a token).
    pub fn message(&self) -> String {
        match self {
            Self::Refreshed(_) => String::new(),
            Self::InvalidGrant(e) | Self::ClientInvalid(e) => match &e.description {
                Some(d) => format!("{}: {d}", e.error),
                None => e.error.clone(),
            },
            Self::RateLimited { retry_after: Some(d), .. } => format!("rate limited, retry after {}s", d.as_secs()),
            Self::RateLimited { retry_after: None, .. } => "rate limited".to_owned(),
            Self::Transient(t) => t.detail.clone(),
        }
    }
}

/// Classifies one token-endpoint response. `received_at` is when the
/// response arrived; `default_ttl` applies when `expires_in` is absent.
pub fn classify_response(
    http_status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    received_at: OffsetDateTime,
    default_ttl: Duration,
) -> RefreshOutcome {
    let _ = (http_status, retry_after, body, received_at, default_ttl);
    todo!("implemented with its table of response shapes")
}

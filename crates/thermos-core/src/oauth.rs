//! OAuth 2.0 refresh responses (RFC 6749 §5.1, §5.2) turned into values the
//! engine matches on. Parsing is pure: the HTTP client in the `thermos`
//! binary does the IO and hands the status, `Retry-After` header and body here.
//!
//! This module owns the rules that decide what a token endpoint's answer
//! *means* ([`classify_response`]) and how `Retry-After` is read
//! ([`parse_retry_after`]). It never does IO, never reads the clock (the
//! caller passes when the response arrived) and never copies token text into
//! a detail, description or warning: malformed bodies are described by their
//! shape and size, never echoed.
//!
//! The classification, in order:
//!
//! 1. a JSON object with an `error` field is an OAuth error whatever the HTTP
//!    status (some providers answer errors with 200): `invalid_grant` →
//!    [`RefreshOutcome::InvalidGrant`]; `invalid_client` /
//!    `unauthorized_client` → [`RefreshOutcome::ClientInvalid`]; anything else
//!    (including provider-specific codes such as `bad_refresh_token`, which
//!    are deliberately *not* treated as a dead grant: a wrong guess there
//!    would force users to reconnect) is transient — `RateLimited` on 429,
//!    `ServerError` on 5xx, `ProviderError` otherwise;
//! 2. 429 → [`RefreshOutcome::RateLimited`] with the parsed `Retry-After`;
//! 3. 2xx → a token response ([`TokenGrant`]) or `MalformedResponse`;
//! 4. 5xx → `ServerError` (keeping any `Retry-After`);
//! 5. any other status → `ProviderError`.
//!
//! Read next: `thermos::provider::client` (the IO half) and
//! [`crate::plan`] (what the engine does with a lifetime or a retry delay).

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Map, Value};
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
    /// `token_type` as sent, except that any spelling of `bearer` becomes
    /// `Bearer` (RFC 6749 §7.1: case-insensitive); `Bearer` when absent.
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
    /// The request was sent, but no complete answer came back (a timeout
    /// after sending, a reset connection, a truncated read): the provider may
    /// have processed it, and rotated the refresh token.
    ResponseLost,
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
    /// How long the provider asked us to wait (`Retry-After` on a 503, say).
    pub retry_after: Option<Duration>,
}

impl TransientFailure {
    /// A transient failure without a `Retry-After`.
    pub fn new(kind: TransientKind, http_status: Option<u16>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            http_status,
            detail: detail.into(),
            retry_after: None,
        }
    }
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
                TransientKind::ResponseLost => "response_lost",
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

    /// How long the provider asked us to wait before the next attempt: the
    /// `Retry-After` of a 429, or of a transient answer such as a 503.
    /// The engine should use this rather than matching `RateLimited` only.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            Self::Transient(t) => t.retry_after,
            _ => None,
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
            Self::RateLimited {
                retry_after: Some(d), ..
            } => format!("rate limited, retry after {}s", d.as_secs()),
            Self::RateLimited { retry_after: None, .. } => "rate limited".to_owned(),
            Self::Transient(t) => t.detail.clone(),
        }
    }
}

/// The longest access-token lifetime believed; longer ones are clamped to it
/// (with a warning) — never "no expiry".
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// The longest `Retry-After` honoured; a provider asking for more is capped.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// `error_description` is cut to this many characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;
/// An `error` code is cut to this many characters.
const MAX_ERROR_CODE_CHARS: usize = 64;

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds or an
/// HTTP-date (IMF-fixdate, RFC 850 or asctime), relative to `now` (the time
/// the response arrived). A date in the past is `Some(0)`; garbage is `None`.
/// The result is capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: an overflow means "very long", which the cap handles.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if let Ok(secs) = value.parse::<f64>() {
        // Lenient: a fractional delay such as "1.5" (not in the RFC, seen in the wild).
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)).min(MAX_RETRY_AFTER));
    }
    let at = OffsetDateTime::from(httpdate::parse_http_date(value).ok()?);
    let wait = Duration::try_from(at - now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Classifies one token-endpoint response. `received_at` is when the
/// response arrived (it anchors `Retry-After` dates and absolute expiry
/// fields); `default_ttl` applies when `expires_in` is absent or unusable.
///
/// See the module documentation for the rules. The result never contains
/// token text outside the [`SecretString`]s of a [`TokenGrant`].
pub fn classify_response(
    http_status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    received_at: OffsetDateTime,
    default_ttl: Duration,
) -> RefreshOutcome {
    let retry_after = retry_after.and_then(|v| parse_retry_after(v, received_at));
    let parsed = serde_json::from_slice::<Value>(body);
    let object = match &parsed {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    if let Some(code) = object.and_then(oauth_error_code) {
        let description = object.and_then(error_description);
        return classify_error(http_status, code, description, retry_after);
    }
    if http_status == 429 {
        return RefreshOutcome::RateLimited {
            retry_after,
            http_status,
        };
    }
    let shape = || BodyShape::of(body, &parsed);
    if (200..300).contains(&http_status) {
        let problem = match object {
            Some(map) => match token_grant(map, received_at, default_ttl) {
                Ok(grant) => return RefreshOutcome::Refreshed(grant),
                Err(problem) => problem,
            },
            None => shape().describe(),
        };
        let detail = format!(
            "token endpoint answered {http_status} with a body that is not a token response ({problem}, {} bytes)",
            body.len()
        );
        return transient(TransientKind::MalformedResponse, http_status, detail, retry_after);
    }
    let (kind, what) = match http_status {
        500..=599 => (TransientKind::ServerError, "a server error"),
        300..=399 => (TransientKind::ProviderError, "a redirect (not followed)"),
        _ => (TransientKind::ProviderError, "no OAuth error"),
    };
    let detail = format!(
        "token endpoint answered {http_status} with {what} ({}, {} bytes)",
        shape().describe(),
        body.len()
    );
    transient(kind, http_status, detail, retry_after)
}

fn transient(kind: TransientKind, http_status: u16, detail: String, retry_after: Option<Duration>) -> RefreshOutcome {
    RefreshOutcome::Transient(TransientFailure {
        kind,
        http_status: Some(http_status),
        detail,
        retry_after,
    })
}

/// Maps an OAuth `error` code to an outcome; the code decides over the status
/// for the fatal codes, the status decides for the rest.
fn classify_error(
    http_status: u16,
    code: String,
    description: Option<String>,
    retry_after: Option<Duration>,
) -> RefreshOutcome {
    let is = |name: &str| code.eq_ignore_ascii_case(name);
    let error = |canonical: Option<&str>| ProviderError {
        error: canonical.map_or_else(|| code.clone(), str::to_owned),
        description: description.clone(),
        http_status,
    };
    if is("invalid_grant") {
        return RefreshOutcome::InvalidGrant(error(Some("invalid_grant")));
    }
    if is("invalid_client") {
        return RefreshOutcome::ClientInvalid(error(Some("invalid_client")));
    }
    if is("unauthorized_client") {
        return RefreshOutcome::ClientInvalid(error(Some("unauthorized_client")));
    }
    if http_status == 429 {
        return RefreshOutcome::RateLimited {
            retry_after,
            http_status,
        };
    }
    let kind = if (500..600).contains(&http_status) || is("server_error") || is("temporarily_unavailable") {
        TransientKind::ServerError
    } else {
        TransientKind::ProviderError
    };
    let detail = match &description {
        Some(d) => format!("token endpoint answered {http_status} with OAuth error {code}: {d}"),
        None => format!("token endpoint answered {http_status} with OAuth error {code}"),
    };
    transient(kind, http_status, detail, retry_after)
}

/// The `error` code of an error body, if the object is one: a non-empty
/// string, or an object with a `code` (some gateways nest it).
fn oauth_error_code(map: &Map<String, Value>) -> Option<String> {
    let code = match map.get("error")? {
        Value::String(s) if !s.trim().is_empty() => s.as_str(),
        Value::Object(inner) => inner
            .get("code")
            .or_else(|| inner.get("error"))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .unwrap_or("unrecognized_error"),
        Value::Bool(true) | Value::Number(_) => "unrecognized_error",
        _ => return None,
    };
    Some(clean_text(code, MAX_ERROR_CODE_CHARS))
}

fn error_description(map: &Map<String, Value>) -> Option<String> {
    let nested = map.get("error").and_then(|e| e.get("message"));
    let raw = map.get("error_description").or(nested)?.as_str()?;
    let cleaned = clean_text(raw, MAX_DESCRIPTION_CHARS);
    (!cleaned.is_empty()).then_some(cleaned)
}

/// Control characters become spaces (no log injection), then the text is
/// trimmed and cut to `max` characters with an ellipsis.
fn clean_text(raw: &str, max: usize) -> String {
    let cleaned: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = cleaned.trim();
    if trimmed.chars().count() <= max {
        return trimmed.to_owned();
    }
    let mut cut: String = trimmed.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// What a body that is not a token response looks like, without its content.
enum BodyShape {
    Empty,
    Html,
    TruncatedJson,
    InvalidJson,
    NotJson,
    JsonArray,
    JsonScalar,
    JsonObject,
}

impl BodyShape {
    fn of(body: &[u8], parsed: &Result<Value, serde_json::Error>) -> Self {
        let text = String::from_utf8_lossy(body);
        let start = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        match parsed {
            Ok(Value::Object(_)) => Self::JsonObject,
            Ok(Value::Array(_)) => Self::JsonArray,
            Ok(_) => Self::JsonScalar,
            Err(_) if start.is_empty() => Self::Empty,
            Err(_) if start.starts_with('<') => Self::Html,
            Err(e) if e.is_eof() => Self::TruncatedJson,
            Err(_) if start.starts_with(['{', '[']) => Self::InvalidJson,
            Err(_) => Self::NotJson,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Html => "html",
            Self::TruncatedJson => "truncated json",
            Self::InvalidJson => "invalid json",
            Self::NotJson => "not json",
            Self::JsonArray => "a json array",
            Self::JsonScalar => "a json scalar",
            Self::JsonObject => "a json object",
        }
    }
}

/// Parses a successful response; `Err` says (without content) why it is not one.
fn token_grant(
    map: &Map<String, Value>,
    received_at: OffsetDateTime,
    default_ttl: Duration,
) -> Result<TokenGrant, &'static str> {
    let access_token = match map.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => SecretString::from(s.clone()),
        Some(Value::String(_)) => return Err("a json object with an empty access_token"),
        Some(Value::Null) | None => return Err("a json object without access_token"),
        Some(_) => return Err("a json object whose access_token is not a string"),
    };
    let mut warnings = Vec::new();
    let expires_in = lifetime(map, received_at, default_ttl, &mut warnings);
    let refresh_token = match map.get("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(SecretString::from(s.clone())),
        Some(Value::String(_) | Value::Null) | None => None,
        Some(_) => {
            warnings.push("refresh_token is not a string; the previous refresh token is kept");
            None
        }
    };
    let token_type = match map.get("token_type") {
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(Value::String(s)) if !s.trim().is_empty() => clean_text(s, MAX_ERROR_CODE_CHARS),
        Some(Value::String(_) | Value::Null) | None => "Bearer".to_owned(),
        Some(_) => {
            warnings.push("token_type is not a string; assumed Bearer");
            "Bearer".to_owned()
        }
    };
    let scope = match map.get("scope") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Array(items)) => {
            let parts: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        }
        _ => None,
    };
    // GitHub, Microsoft: `refresh_token_expires_in`; QuickBooks (Intuit):
    // `x_refresh_token_expires_in`; Keycloak: `refresh_expires_in`, where 0
    // means an offline token that does not expire (so 0 is "not stated").
    let refresh_token_expires_in = REFRESH_TOKEN_LIFETIME_FIELDS
        .iter()
        .find_map(|key| map.get(*key).filter(|v| !v.is_null()))
        .and_then(|raw| match seconds(raw) {
            Some(secs) if secs > 0 => Some(Duration::from_secs(secs.unsigned_abs())),
            Some(0) => None,
            _ => {
                warnings.push("refresh_token_expires_in is not a positive number; ignored");
                None
            }
        });
    Ok(TokenGrant {
        access_token,
        refresh_token,
        token_type,
        expires_in,
        scope,
        refresh_token_expires_in,
        warnings,
    })
}

/// The access token's usable lifetime: `expires_in`, else an absolute
/// `expires_at` / `expires_on` relative to `received_at`, else `default_ttl`;
/// clamped, then reduced by the skew allowance.
fn lifetime(
    map: &Map<String, Value>,
    received_at: OffsetDateTime,
    default_ttl: Duration,
    warnings: &mut Vec<&'static str>,
) -> Duration {
    let secs = if let Some(raw) = map.get("expires_in").filter(|v| !v.is_null()) {
        match seconds(raw) {
            Some(secs) => secs,
            None => {
                warnings.push("expires_in is not a number; assumed the provider's default_ttl");
                return default_ttl;
            }
        }
    } else if let Some(raw) = ["expires_at", "expires_on"]
        .iter()
        .find_map(|key| map.get(*key).filter(|v| !v.is_null()))
    {
        match absolute(raw) {
            Some(at) => (at - received_at).whole_seconds(),
            None => {
                warnings.push("expires_at is not a time; assumed the provider's default_ttl");
                return default_ttl;
            }
        }
    } else {
        return default_ttl;
    };
    if secs <= 0 {
        warnings.push("expires_in is zero or negative; assumed the provider's default_ttl");
        return default_ttl;
    }
    let mut lifetime = Duration::from_secs(secs.unsigned_abs());
    if lifetime > MAX_EXPIRES_IN {
        warnings.push("expires_in is longer than a year; clamped to one year");
        lifetime = MAX_EXPIRES_IN;
    }
    without_skew(lifetime)
}

/// Removes [`EXPIRY_SKEW`](crate::plan::EXPIRY_SKEW), but keeps at least half
/// of a tiny lifetime (a 6 s token lives 3 s, not 1 s).
fn without_skew(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(crate::plan::EXPIRY_SKEW).max(lifetime / 2)
}

/// Whole seconds from a JSON number or a numeric string (`"3599"`, `" 3599.0 "`).
fn seconds(raw: &Value) -> Option<i64> {
    let float = |f: f64| f.is_finite().then_some(f as i64); // `as` saturates
    match raw {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(float)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| s.parse::<f64>().ok().and_then(float))
        }
        _ => None,
    }
}

/// The fields a token response states its refresh token's lifetime in
/// (seconds), the first one present wins.
pub const REFRESH_TOKEN_LIFETIME_FIELDS: [&str; 3] = [
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
    "refresh_expires_in",
];

/// An absolute expiry: Unix seconds (number or string; milliseconds when
/// implausibly large) or an RFC 3339 string.
fn absolute(raw: &Value) -> Option<OffsetDateTime> {
    if let Some(text) = raw.as_str()
        && let Ok(at) = OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
    {
        return Some(at);
    }
    let secs = seconds(raw)?;
    let secs = if secs > 100_000_000_000 { secs / 1000 } else { secs };
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-24 10:00 UTC);
    const DEFAULT_TTL: Duration = Duration::from_secs(3600);
    const ACCESS: &str = "ya29.a0AfH6SMBx-ACCESS-TOKEN-VALUE";
    const REFRESH: &str = "1//0g-REFRESH-TOKEN-VALUE";

    fn classify(status: u16, retry_after: Option<&str>, body: &str) -> RefreshOutcome {
        classify_response(status, retry_after, body.as_bytes(), NOW, DEFAULT_TTL)
    }

    fn refreshed(status: u16, body: &str) -> TokenGrant {
        match classify(status, None, body) {
            RefreshOutcome::Refreshed(grant) => grant,
            other => panic!("expected Refreshed, got {other:?}"),
        }
    }

    fn transient(outcome: RefreshOutcome) -> TransientFailure {
        match outcome {
            RefreshOutcome::Transient(t) => t,
            other => panic!("expected Transient, got {other:?}"),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn assert_no_secret(text: &str) {
        for secret in [ACCESS, REFRESH, "ACCESS-TOKEN", "REFRESH-TOKEN"] {
            assert!(!text.contains(secret), "secret leaked into {text:?}");
        }
    }

    #[test]
    fn google_keeps_the_old_refresh_token_when_none_is_returned() {
        let body = format!(
            r#"{{"access_token":"{ACCESS}","expires_in":3599,"scope":"https://www.googleapis.com/auth/drive.readonly","token_type":"Bearer","id_token":"eyJhbGciOi.x.y"}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.access_token.expose_secret(), ACCESS);
        assert!(grant.refresh_token.is_none());
        assert_eq!(grant.expires_in, secs(3594));
        assert_eq!(grant.token_type, "Bearer");
        assert_eq!(
            grant.scope.as_deref(),
            Some("https://www.googleapis.com/auth/drive.readonly")
        );
        assert!(grant.warnings.is_empty());
    }

    #[test]
    fn microsoft_sends_expires_in_as_a_string_and_extra_lifetimes() {
        let body = format!(
            r#"{{"token_type":"Bearer","scope":"User.Read Mail.Read","expires_in":"3599","ext_expires_in":"3599","expires_on":"1795000000","access_token":"{ACCESS}","refresh_token":"{REFRESH}"}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.expires_in, secs(3594));
        assert_eq!(
            grant
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned())
                .as_deref(),
            Some(REFRESH)
        );
        assert!(grant.warnings.is_empty());
    }

    #[test]
    fn salesforce_without_expires_in_gets_the_default_ttl() {
        let body = format!(
            r#"{{"access_token":"{ACCESS}","signature":"CMJ4l+CCaPQiKjoOEwEig9H4wqhpuLSk4J2urAe+fVg=","scope":"refresh_token api","instance_url":"https://yourInstance.salesforce.com","id":"https://login.salesforce.com/id/00Dx/005x","token_type":"Bearer","issued_at":"1278448384422"}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.expires_in, DEFAULT_TTL);
        assert!(grant.refresh_token.is_none());
        assert!(grant.warnings.is_empty());
    }

    #[test]
    fn slack_rotation_with_ok_true_and_extra_fields_is_a_refresh() {
        let body = format!(
            r#"{{"ok":true,"app_id":"A0KRD7HC3","authed_user":{{"id":"U1234"}},"scope":"commands,incoming-webhook","token_type":"bot","access_token":"xoxe.xoxb-{ACCESS}","bot_user_id":"U0KRQLJ9H","refresh_token":"xoxe-1-{REFRESH}","expires_in":43200,"team":{{"name":"Slack Softball Team","id":"T9TK3CUKW"}},"enterprise":null,"is_enterprise_install":false}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.expires_in, secs(43195));
        assert_eq!(grant.token_type, "bot");
        assert!(grant.refresh_token.is_some());
    }

    #[test]
    fn github_reports_the_refresh_token_lifetime() {
        let body = format!(
            r#"{{"access_token":"ghu_{ACCESS}","expires_in":28800,"refresh_token":"ghr_{REFRESH}","refresh_token_expires_in":15811200,"scope":"","token_type":"bearer"}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.expires_in, secs(28795));
        assert_eq!(grant.refresh_token_expires_in, Some(secs(15_811_200)));
        assert_eq!(grant.token_type, "Bearer");
        assert_eq!(grant.scope, None);
    }

    #[test]
    fn x_refresh_token_expires_in_as_a_string_is_read_too() {
        let body = format!(
            r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_in":3600,"x_refresh_token_expires_in":"8726400","token_type":"bearer"}}"#
        );
        assert_eq!(refreshed(200, &body).refresh_token_expires_in, Some(secs(8_726_400)));
    }

    #[test]
    fn keycloak_refresh_expires_in_is_read_and_its_zero_means_not_stated() {
        let body = format!(
            r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_in":300,"refresh_expires_in":1800,"token_type":"Bearer","not-before-policy":0}}"#
        );
        assert_eq!(refreshed(200, &body).refresh_token_expires_in, Some(secs(1800)));
        let offline = format!(
            r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_in":300,"refresh_expires_in":0,"token_type":"Bearer"}}"#
        );
        let grant = refreshed(200, &offline);
        assert_eq!(grant.refresh_token_expires_in, None);
        assert!(grant.warnings.is_empty(), "{:?}", grant.warnings);
    }

    #[test]
    fn a_negative_refresh_token_lifetime_is_ignored_with_a_warning() {
        let body = format!(
            r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_in":3600,"refresh_token_expires_in":-5}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.refresh_token_expires_in, None);
        assert_eq!(grant.warnings.len(), 1);
    }

    #[test]
    fn xero_rotation_is_a_refresh_with_a_new_refresh_token() {
        let body = format!(
            r#"{{"id_token":"eyJ.x.y","access_token":"{ACCESS}","expires_in":1800,"token_type":"Bearer","refresh_token":"{REFRESH}","scope":"openid profile email accounting.transactions offline_access"}}"#
        );
        let grant = refreshed(200, &body);
        assert_eq!(grant.expires_in, secs(1795));
        assert!(grant.refresh_token.is_some());
    }

    #[test]
    fn token_type_in_any_case_becomes_bearer_and_defaults_to_bearer() {
        for (token_type, expected) in [
            (r#""bearer""#, "Bearer"),
            (r#""BEARER""#, "Bearer"),
            (r#""Bearer""#, "Bearer"),
            ("null", "Bearer"),
            (r#""mac""#, "mac"),
        ] {
            let body = format!(r#"{{"access_token":"{ACCESS}","token_type":{token_type}}}"#);
            assert_eq!(refreshed(200, &body).token_type, expected, "{token_type}");
        }
        let absent = format!(r#"{{"access_token":"{ACCESS}"}}"#);
        assert_eq!(refreshed(200, &absent).token_type, "Bearer");
    }

    #[test]
    fn an_empty_refresh_token_keeps_the_old_one() {
        let body = format!(r#"{{"access_token":"{ACCESS}","refresh_token":"","expires_in":60}}"#);
        assert!(refreshed(200, &body).refresh_token.is_none());
    }

    #[test]
    fn zero_negative_and_unreadable_expires_in_fall_back_to_the_default_ttl_with_a_warning() {
        for expires_in in ["0", "-30", r#""-1""#, r#""soon""#, "true"] {
            let body = format!(r#"{{"access_token":"{ACCESS}","expires_in":{expires_in}}}"#);
            let grant = refreshed(200, &body);
            assert_eq!(grant.expires_in, DEFAULT_TTL, "{expires_in}");
            assert_eq!(grant.warnings.len(), 1, "{expires_in}");
        }
    }

    #[test]
    fn an_absurdly_long_expires_in_is_clamped_to_a_year_with_a_warning() {
        for expires_in in ["315360000", "1e300", r#""99999999999999999999""#] {
            let body = format!(r#"{{"access_token":"{ACCESS}","expires_in":{expires_in}}}"#);
            let grant = refreshed(200, &body);
            assert_eq!(grant.expires_in, MAX_EXPIRES_IN - plan::EXPIRY_SKEW, "{expires_in}");
            assert_eq!(
                grant.warnings,
                vec!["expires_in is longer than a year; clamped to one year"]
            );
        }
    }

    #[test]
    fn the_skew_allowance_never_eats_more_than_half_of_a_tiny_lifetime() {
        let cases = [
            (3600, secs(3595)),
            (10, secs(5)),
            (6, secs(3)),
            (1, Duration::from_millis(500)),
        ];
        for (expires_in, expected) in cases {
            let body = format!(r#"{{"access_token":"{ACCESS}","expires_in":{expires_in}}}"#);
            assert_eq!(refreshed(200, &body).expires_in, expected, "{expires_in}");
        }
    }

    #[test]
    fn a_fractional_expires_in_is_read_as_whole_seconds() {
        let body = format!(r#"{{"access_token":"{ACCESS}","expires_in":3599.7}}"#);
        assert_eq!(refreshed(200, &body).expires_in, secs(3594));
    }

    #[test]
    fn an_absolute_expires_at_counts_from_when_the_response_arrived() {
        let unix = (NOW + secs(600)).unix_timestamp();
        let body = format!(r#"{{"access_token":"{ACCESS}","expires_at":{unix}}}"#);
        assert_eq!(refreshed(200, &body).expires_in, secs(595));
        let rfc3339 = format!(r#"{{"access_token":"{ACCESS}","expires_at":"2026-11-24T10:10:00Z"}}"#);
        assert_eq!(refreshed(200, &rfc3339).expires_in, secs(595));
    }

    #[test]
    fn a_token_of_any_length_is_taken_whole() {
        let long = "t".repeat(20_000);
        let grant = refreshed(200, &format!(r#"{{"access_token":"{long}"}}"#));
        assert_eq!(grant.access_token.expose_secret().len(), 20_000);
    }

    #[test]
    fn an_error_body_with_http_200_is_an_error_not_a_token() {
        let outcome = classify(
            200,
            None,
            r#"{"error":"bad_refresh_token","error_description":"The refresh token is invalid"}"#,
        );
        let t = transient(outcome);
        assert_eq!(t.kind, TransientKind::ProviderError);
        assert_eq!(t.http_status, Some(200));
        assert!(t.detail.contains("bad_refresh_token"), "{}", t.detail);
    }

    #[test]
    fn invalid_grant_is_fatal_with_400_401_403_and_even_a_5xx_or_200() {
        for status in [400, 401, 403, 500, 200] {
            match classify(
                status,
                None,
                r#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#,
            ) {
                RefreshOutcome::InvalidGrant(e) => {
                    assert_eq!(e.http_status, status);
                    assert_eq!(e.error, "invalid_grant");
                    assert_eq!(e.description.as_deref(), Some("Unknown or invalid refresh token."));
                }
                other => panic!("{status}: {other:?}"),
            }
        }
    }

    #[test]
    fn atlassian_answers_a_reused_refresh_token_with_403_invalid_grant() {
        let outcome = classify(
            403,
            None,
            r#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#,
        );
        assert!(matches!(outcome, RefreshOutcome::InvalidGrant(_)));
        assert_eq!(outcome.error_code(), Some("invalid_grant"));
        assert_eq!(outcome.http_status(), Some(403));
    }

    #[test]
    fn invalid_client_and_unauthorized_client_mean_the_app_is_misconfigured() {
        let invalid = classify(401, None, r#"{"error":"invalid_client"}"#);
        assert!(matches!(&invalid, RefreshOutcome::ClientInvalid(e) if e.error == "invalid_client"));
        assert_eq!(invalid.error_code(), Some("invalid_client"));
        let unauthorized = classify(400, None, r#"{"error":"Unauthorized_Client"}"#);
        assert_eq!(unauthorized.error_code(), Some("unauthorized_client"));
    }

    #[test]
    fn other_oauth_errors_are_transient_provider_errors() {
        for code in [
            "invalid_request",
            "invalid_scope",
            "unsupported_grant_type",
            "bad_refresh_token",
        ] {
            let t = transient(classify(400, None, &format!(r#"{{"error":"{code}"}}"#)));
            assert_eq!(t.kind, TransientKind::ProviderError, "{code}");
        }
        let unavailable = transient(classify(400, None, r#"{"error":"temporarily_unavailable"}"#));
        assert_eq!(unavailable.kind, TransientKind::ServerError);
    }

    #[test]
    fn a_nested_error_object_is_still_an_error() {
        let t = transient(classify(
            400,
            None,
            r#"{"error":{"code":"InvalidRequest","message":"bad"}}"#,
        ));
        assert!(t.detail.contains("InvalidRequest: bad"), "{}", t.detail);
    }

    #[test]
    fn a_null_error_field_beside_a_token_is_not_an_error() {
        let body = format!(r#"{{"access_token":"{ACCESS}","error":null}}"#);
        refreshed(200, &body);
    }

    #[test]
    fn error_descriptions_are_truncated_and_stripped_of_control_characters() {
        let long = "x".repeat(1000);
        let body = format!(r#"{{"error":"invalid_grant","error_description":"line\nbreak {long}"}}"#);
        let RefreshOutcome::InvalidGrant(e) = classify(400, None, &body) else {
            panic!("not invalid_grant")
        };
        let description = e.description.expect("a description");
        assert_eq!(description.chars().count(), MAX_DESCRIPTION_CHARS);
        assert!(description.starts_with("line break xxx"));
        assert!(description.ends_with('…'));
    }

    #[test]
    fn a_429_with_seconds_is_rate_limited_for_that_long() {
        let outcome = classify(429, Some("120"), "");
        assert!(
            matches!(outcome, RefreshOutcome::RateLimited { retry_after: Some(d), http_status: 429 } if d == secs(120))
        );
        assert_eq!(outcome.retry_after(), Some(secs(120)));
        assert_eq!(outcome.message(), "rate limited, retry after 120s");
    }

    #[test]
    fn a_429_with_an_http_date_waits_until_that_date() {
        let outcome = classify(
            429,
            Some("Tue, 24 Nov 2026 10:01:30 GMT"),
            r#"{"error":"rate_limit_exceeded"}"#,
        );
        assert_eq!(outcome.retry_after(), Some(secs(90)));
        assert!(matches!(outcome, RefreshOutcome::RateLimited { .. }));
    }

    #[test]
    fn a_429_without_retry_after_is_rate_limited_without_a_delay() {
        let outcome = classify(429, None, "<html>slow down</html>");
        assert!(matches!(outcome, RefreshOutcome::RateLimited { retry_after: None, .. }));
    }

    #[test]
    fn a_503_with_retry_after_is_a_transient_server_error_that_keeps_the_delay() {
        let t = transient(classify(503, Some("30"), "Service Unavailable"));
        assert_eq!(t.kind, TransientKind::ServerError);
        assert_eq!(t.http_status, Some(503));
        assert_eq!(t.retry_after, Some(secs(30)));
    }

    #[test]
    fn a_gateways_html_502_is_a_transient_server_error_described_not_echoed() {
        let body = format!("<html><body><h1>502 Bad Gateway</h1>{ACCESS}</body></html>");
        let t = transient(classify(502, None, &body));
        assert_eq!(t.kind, TransientKind::ServerError);
        assert_eq!(
            t.detail,
            format!(
                "token endpoint answered 502 with a server error (html, {} bytes)",
                body.len()
            )
        );
    }

    #[test]
    fn malformed_200_bodies_are_transient_and_never_echoed() {
        let cases = [
            ("", "empty"),
            ("   \n", "empty"),
            ("<!DOCTYPE html><html>login</html>", "html"),
            (r#"{"access_token":"ya29.a0AfH6SMBx-ACCESS-TOKEN-VAL"#, "truncated json"),
            (
                r#"{"access_token":"ya29.a0AfH6SMBx-ACCESS-TOKEN-VALUE",}"#,
                "invalid json",
            ),
            (r#"["ya29.a0AfH6SMBx-ACCESS-TOKEN-VALUE"]"#, "a json array"),
            (r#""ya29.a0AfH6SMBx-ACCESS-TOKEN-VALUE""#, "a json scalar"),
            (
                r#"{"token":"ya29.a0AfH6SMBx-ACCESS-TOKEN-VALUE"}"#,
                "a json object without access_token",
            ),
            (r#"{"access_token":""}"#, "a json object with an empty access_token"),
            (
                r#"{"access_token":12345}"#,
                "a json object whose access_token is not a string",
            ),
            (
                "access_token=ya29.a0AfH6SMBx-ACCESS-TOKEN-VALUE&expires_in=3600",
                "not json",
            ),
        ];
        for (body, shape) in cases {
            let t = transient(classify(200, None, body));
            assert_eq!(t.kind, TransientKind::MalformedResponse, "{body}");
            assert_eq!(t.http_status, Some(200));
            assert_eq!(
                t.detail,
                format!(
                    "token endpoint answered 200 with a body that is not a token response ({shape}, {} bytes)",
                    body.len()
                )
            );
            assert_no_secret(&t.detail);
        }
    }

    #[test]
    fn other_4xx_without_an_oauth_error_are_transient_provider_errors() {
        let t = transient(classify(404, None, "<html>Not Found</html>"));
        assert_eq!(t.kind, TransientKind::ProviderError);
        assert_eq!(t.http_status, Some(404));
        assert_eq!(classify(404, None, "").error_code(), Some("provider_error"));
    }

    #[test]
    fn debug_output_of_a_parsed_outcome_never_shows_the_tokens() {
        let body = format!(r#"{{"access_token":"{ACCESS}","refresh_token":"{REFRESH}","expires_in":3600}}"#);
        let outcome = classify(200, None, &body);
        assert!(matches!(outcome, RefreshOutcome::Refreshed(_)));
        assert_no_secret(&format!("{outcome:?}"));
        assert_no_secret(&format!("{outcome:#?}"));
        assert_no_secret(&outcome.message());
    }

    #[test]
    fn retry_after_accepts_every_http_date_format_and_delta_seconds() {
        let cases = [
            ("0", Some(secs(0))),
            (" 45 ", Some(secs(45))),
            ("1.5", Some(Duration::from_millis(1500))),
            ("Tue, 24 Nov 2026 10:00:10 GMT", Some(secs(10))),
            ("Tuesday, 24-Nov-26 10:00:10 GMT", Some(secs(10))),
            ("Tue Nov 24 10:00:10 2026", Some(secs(10))),
            ("Mon, 23 Nov 2026 10:00:00 GMT", Some(secs(0))),
            ("99999999999999999999999", Some(MAX_RETRY_AFTER)),
            ("-5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, NOW), expected, "{value:?}");
        }
    }
}

//! Wire formats of the API: request bodies parsed at the edge, response
//! bodies built from store records. Domain types never derive Serialize;
//! only these do. Token fields are `SecretString`, so a stray Debug of a
//! request never prints a token.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use thermos_store::{AttemptRecord, ConnectionRecord, LastError};
use time::OffsetDateTime;

/// `POST /v1/connections`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConnection {
    pub project: Option<String>,
    pub provider: String,
    pub external_id: String,
    /// Required for the `refresh_token` grant; optional for the machine
    /// grants, which Thermos issues itself when none is given.
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<i64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// How long the refresh token lives, in seconds (or
    /// `refresh_token_expires_at`); unknown when neither is given.
    pub refresh_token_expires_in: Option<i64>,
    /// When the refresh token dies (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    pub scope: Option<String>,
    pub token_type: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// `refresh_token` (default), `client_credentials` or `jwt_bearer`.
    pub grant_type: Option<String>,
    /// A `jwt_bearer` connection's PEM private key; write-only.
    pub private_key: Option<SecretString>,
    /// A `jwt_bearer` connection's assertion claims.
    pub assertion_claims: Option<serde_json::Value>,
}

impl CreateConnection {
    /// Splits off the token part; `None` when no access token was given.
    pub fn tokens(&mut self) -> Option<TokenInput> {
        let access_token = self.access_token.take()?;
        Some(TokenInput {
            access_token,
            refresh_token: self.refresh_token.take(),
            expires_in: self.expires_in,
            expires_at: self.expires_at,
            refresh_token_expires_in: self.refresh_token_expires_in,
            refresh_token_expires_at: self.refresh_token_expires_at,
            scope: self.scope.clone(),
            token_type: self.token_type.clone(),
        })
    }
}

/// The `assertion_claims` of a `jwt_bearer` connection, as handed in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionClaimsInput {
    pub iss: String,
    pub sub: String,
    /// Default: the provider's token URL.
    pub aud: Option<String>,
    /// A `scope` claim in the assertion.
    pub scope: Option<String>,
    pub kid: Option<String>,
    /// Default `RS256`.
    pub alg: Option<String>,
}

/// `PUT /v1/connections/{id}/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<i64>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// How long the new refresh token lives, in seconds (or
    /// `refresh_token_expires_at`); unknown when neither is given.
    pub refresh_token_expires_in: Option<i64>,
    /// When the new refresh token dies (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    pub scope: Option<String>,
    pub token_type: Option<String>,
}

impl From<ReplaceTokens> for TokenInput {
    fn from(r: ReplaceTokens) -> Self {
        Self {
            access_token: r.access_token,
            refresh_token: r.refresh_token,
            expires_in: r.expires_in,
            expires_at: r.expires_at,
            refresh_token_expires_in: r.refresh_token_expires_in,
            refresh_token_expires_at: r.refresh_token_expires_at,
            scope: r.scope,
            token_type: r.token_type,
        }
    }
}

/// Tokens as a caller hands them in.
#[derive(Debug)]
pub struct TokenInput {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<i64>,
    pub expires_at: Option<OffsetDateTime>,
    /// The refresh token's lifetime in seconds, if stated.
    pub refresh_token_expires_in: Option<i64>,
    /// The refresh token's expiry, if stated.
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    pub scope: Option<String>,
    pub token_type: Option<String>,
}

/// `GET /v1/connections` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub project: Option<String>,
    pub provider: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// `GET /v1/connections/{id}/token` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    pub min_ttl: Option<u64>,
}

/// `GET /v1/connections/{id}/attempts` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
    pub limit: Option<u32>,
}

/// `POST /v1/connections/{id}/refresh` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub rejected_token: Option<SecretString>,
}

/// A connection, never with a token.
#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub id: String,
    pub project: String,
    pub provider: String,
    pub external_id: String,
    pub status: &'static str,
    /// How the tokens are re-issued (never the private key).
    pub grant_type: &'static str,
    pub scope: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the refresh token dies, if the provider or the importer said.
    #[serde(with = "time::serde::rfc3339::option")]
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_refresh_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refreshed_at: Option<OffsetDateTime>,
    pub refresh_count: i64,
    pub consecutive_failures: u32,
    pub last_error: Option<LastErrorView>,
    pub metadata: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The last failure of a connection.
#[derive(Debug, Serialize)]
pub struct LastErrorView {
    pub code: String,
    pub message: String,
    pub http_status: Option<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl From<&LastError> for LastErrorView {
    fn from(e: &LastError) -> Self {
        Self {
            code: e.code.clone(),
            message: e.message.clone(),
            http_status: e.http_status,
            at: e.at,
        }
    }
}

impl From<&ConnectionRecord> for ConnectionView {
    fn from(r: &ConnectionRecord) -> Self {
        Self {
            id: r.id.to_string(),
            project: r.project.clone(),
            provider: r.provider.clone(),
            external_id: r.external_id.clone(),
            status: r.status.as_str(),
            grant_type: r.grant.grant_type.as_str(),
            scope: r.scope.clone(),
            expires_at: r.expires_at,
            refresh_token_expires_at: r.refresh_token_expires_at,
            // While leased, the stored due time is the lease's end; show it anyway:
            // it is when the engine will look at the connection next.
            next_refresh_at: r.next_refresh_at,
            last_refreshed_at: r.last_refreshed_at,
            refresh_count: r.refresh_count,
            consecutive_failures: r.consecutive_failures,
            last_error: r.last_error.as_ref().map(Into::into),
            metadata: r.metadata.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A page of connections.
#[derive(Debug, Serialize)]
pub struct ConnectionPage {
    pub data: Vec<ConnectionView>,
    pub next_cursor: Option<String>,
}

/// A token handed to a caller (the one place a token leaves Thermos).
#[derive(Serialize)]
pub struct TokenView {
    pub access_token: String,
    pub token_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub expires_in: i64,
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenView")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// One recorded refresh attempt.
#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub trigger: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub http_status: Option<u16>,
    pub duration_ms: u64,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> Self {
        Self {
            id: a.id,
            at: a.attempt.started_at,
            trigger: a.attempt.trigger.clone(),
            outcome: a.attempt.outcome.clone(),
            error_code: a.attempt.error_code.clone(),
            http_status: a.attempt.http_status,
            duration_ms: a.attempt.duration_ms,
        }
    }
}

/// `{data: [...]}`.
#[derive(Debug, Serialize)]
pub struct DataList<T> {
    pub data: Vec<T>,
}

/// A live instance, as `/ready` lists it.
#[derive(Debug, Serialize)]
pub struct InstanceView {
    pub name: String,
    pub engine_enabled: bool,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
}

impl From<&thermos_store::instance::InstanceRecord> for InstanceView {
    fn from(i: &thermos_store::instance::InstanceRecord) -> Self {
        Self {
            name: i.name.clone(),
            engine_enabled: i.engine_enabled,
            version: i.version.clone(),
            started_at: i.started_at,
            heartbeat_at: i.heartbeat_at,
        }
    }
}

//! Provider apps (OAuth clients at a token endpoint) and the HTTP client that
//! refreshes tokens against them.
//!
//! The client never logs or returns a token or secret in clear: outcomes are
//! [`thermos_core::oauth::RefreshOutcome`] values whose Debug output redacts.

pub mod client;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use thermos_core::oauth::AuthMethod;
use url::Url;

pub use client::{RefreshClient, Revocation, TokenTypeHint};

/// Default lifetime assumed for an access token whose response has no `expires_in`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// One OAuth application at a token endpoint, validated from `[[provider]]`.
#[derive(Debug, Clone)]
pub struct ProviderApp {
    /// The provider's slug (`google`, `slack`, …), unique in the config.
    pub slug: String,
    /// The token endpoint: https, or http on a loopback host.
    pub token_url: Url,
    /// Where users are sent to authorise (connect sessions, later).
    pub authorization_url: Option<Url>,
    /// The RFC 7009 revocation endpoint (https, or http on a loopback host);
    /// `None`: tokens are not revoked when a connection is deleted.
    pub revocation_url: Option<Url>,
    pub client_id: String,
    /// Absent for `auth_method = "none"`.
    pub client_secret: Option<SecretString>,
    pub auth_method: AuthMethod,
    pub scopes: Vec<String>,
    /// How scopes are joined in a request: `' '` (RFC 6749 §3.3), or `','`
    /// for the providers that want commas (Slack, Linear, Zoho).
    pub scope_separator: char,
    /// Extra form parameters sent with every refresh request.
    pub extra_params: BTreeMap<String, String>,
    /// Lifetime assumed when a response has no `expires_in`.
    pub default_ttl: Duration,
    /// At most this many refreshes in flight to this app (None: no limit of its own).
    pub max_concurrency: Option<u32>,
    /// At most this many refresh requests per second (None: unlimited).
    pub rate_limit_per_second: Option<u32>,
    /// Keep-alive and the refresh-token expiry warning
    /// (docs/refresh-token-lifetime.md).
    pub refresh_token_rules: thermos_core::plan::RefreshTokenRules,
}

impl ProviderApp {
    /// `scopes` joined as this provider wants them in a request.
    pub fn join_scopes(&self, scopes: &[String]) -> String {
        scopes.join(self.scope_separator.encode_utf8(&mut [0; 4]))
    }
}

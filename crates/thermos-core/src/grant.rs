//! How a connection obtains its access tokens: the OAuth grant the engine
//! sends to the token endpoint each time the token must be re-issued.
//!
//! `refresh_token` is the user's grant (RFC 6749 §6); `client_credentials`
//! (RFC 6749 §4.4) and `jwt_bearer` (RFC 7523 §2.1) are machine grants: no
//! refresh token exists, each re-issue stands alone. See docs/grants.md.

use std::fmt;

/// The grant a connection's tokens are re-issued with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GrantType {
    /// `grant_type=refresh_token` with the stored refresh token.
    #[default]
    RefreshToken,
    /// `grant_type=client_credentials` with the provider app's credentials.
    ClientCredentials,
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` with an
    /// assertion signed by the connection's private key.
    JwtBearer,
}

/// The `grant_type` form value of the JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_URN: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

impl GrantType {
    /// Every grant type, in display order.
    pub const ALL: [Self; 3] = [Self::RefreshToken, Self::ClientCredentials, Self::JwtBearer];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
            Self::JwtBearer => "jwt_bearer",
        }
    }

    /// Parses a wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == raw)
    }

    /// Whether re-issuing needs a stored refresh token (only the user's grant).
    pub fn needs_refresh_token(self) -> bool {
        self == Self::RefreshToken
    }

    /// Whether each re-issue stands alone (a machine grant): nothing rotates,
    /// so no refresh can race another into a dead grant.
    pub fn is_machine(self) -> bool {
        self != Self::RefreshToken
    }
}

impl fmt::Display for GrantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grant_type_parses_from_its_own_name() {
        for g in GrantType::ALL {
            assert_eq!(GrantType::parse(g.as_str()), Some(g));
        }
        assert_eq!(GrantType::parse("password"), None);
        assert_eq!(GrantType::default(), GrantType::RefreshToken);
    }
}

//! Identifiers, parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

const CONNECTION_PREFIX: &str = "con_";

/// A connection's id: `con_` followed by a UUIDv7 in simple hex, so ids sort
/// by creation time and are recognisable in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(Uuid);

impl ConnectionId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses `con_<32 hex>`.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let hex = raw.strip_prefix(CONNECTION_PREFIX).ok_or(InvalidId)?;
        if hex.len() != 32 {
            return Err(InvalidId);
        }
        Uuid::try_parse(hex).map(Self).map_err(|_| InvalidId)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CONNECTION_PREFIX}{}", self.0.simple())
    }
}

impl FromStr for ConnectionId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A string that is not a valid id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid connection id (expected con_ followed by 32 hex digits)")]
pub struct InvalidId;

/// Checks a slug-like name (project, provider): 1–64 of `a-z 0-9 - _ .`.
pub fn is_valid_slug(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_id_round_trips_through_its_text_form() {
        let id = ConnectionId::generate();
        assert_eq!(ConnectionId::parse(&id.to_string()), Ok(id));
    }

    #[test]
    fn malformed_connection_ids_are_rejected() {
        for raw in [
            "",
            "con_",
            "con_xyz",
            "abc",
            "con_0193a1b2c3d4e5f60718293a4b5c6d7",
            "CON_0193a1b2c3d4e5f60718293a4b5c6d7e",
        ] {
            assert_eq!(ConnectionId::parse(raw), Err(InvalidId), "{raw}");
        }
    }

    #[test]
    fn slugs_are_lowercase_and_short() {
        assert!(is_valid_slug("google-workspace_2.0"));
        assert!(!is_valid_slug(""));
        assert!(!is_valid_slug("Google"));
        assert!(!is_valid_slug("a b"));
        assert!(!is_valid_slug(&"a".repeat(65)));
    }
}

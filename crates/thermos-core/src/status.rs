//! The connection state machine's states (see docs/state-machine.md).

use std::fmt;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionStatus {
    /// Token usable; the next refresh is planned.
    Active,
    /// The last refresh failed for a transient reason; retrying.
    Failing,
    /// The provider said the grant is dead; only the user can fix it.
    NeedsReauth,
    /// An operator switched it off.
    Disabled,
}

impl ConnectionStatus {
    /// Every status, in display order.
    pub const ALL: [Self; 4] = [Self::Active, Self::Failing, Self::NeedsReauth, Self::Disabled];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Failing => "failing",
            Self::NeedsReauth => "needs_reauth",
            Self::Disabled => "disabled",
        }
    }

    /// Parses a wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether the engine schedules refreshes for a connection in this state.
    pub fn is_scheduled(self) -> bool {
        matches!(self, Self::Active | Self::Failing)
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_parses_from_its_own_name() {
        for s in ConnectionStatus::ALL {
            assert_eq!(ConnectionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ConnectionStatus::parse("Active"), None);
    }
}

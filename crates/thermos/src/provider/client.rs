//! The refresh client (to be written).

/// Placeholder.
#[derive(Debug, Clone)]
pub struct RefreshClient;

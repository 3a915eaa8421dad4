//! SQLite backend (to be written).
/// Placeholder.
#[derive(Debug)]
pub struct SqliteStore;

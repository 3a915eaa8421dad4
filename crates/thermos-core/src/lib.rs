//! The Thermos domain, with no IO: connection ids and states, refresh
//! planning and backoff, OAuth token-response classification, secrets and
//! the sealing of tokens at rest.
//!
//! This crate never opens a socket, a file or a database, and never reads the
//! clock by itself: time comes in through [`clock::Clock`] or as a parameter.
//! Read next: `thermos-store` (persistence) and the `thermos` binary's engine.

pub mod breaker;
pub mod clock;
pub mod grant;
pub mod id;
pub mod oauth;
pub mod plan;
pub mod seal;
pub mod status;

pub use secrecy::{ExposeSecret, SecretString};

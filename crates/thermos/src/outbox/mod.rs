//! The outbox's sending side: project webhooks and operator alerts.
//!
//! Events are written by the store in the same transaction as the state
//! change they report, with one pending delivery per subscriber
//! (`thermos_store::outbox`). This module sends them: [`dispatch`] claims due
//! deliveries, signs them ([`sign`], Standard Webhooks) and records every
//! attempt; [`target`] decides which webhook URLs are acceptable;
//! [`alerts`] turns state changes into aggregated operator alerts.
//!
//! It never changes a connection, never sends a secret (a webhook's secret
//! only keys its signature) and never logs a request body.
//!
//! Read next: `dispatch.rs`, then `thermos-store/src/outbox.rs`.

pub mod alerts;
pub mod dispatch;
pub mod sign;
pub mod target;

/// Every event type a project webhook may subscribe to (DESIGN.md, "Events
/// and alerts").
pub const EVENT_TYPES: &[&str] = &[
    "connection.created",
    "connection.reconnected",
    "connection.refresh_failed",
    "connection.failing",
    "connection.recovering",
    "connection.recovered",
    "connection.needs_reauth",
    "connection.refresh_token_expiring",
    "connection.deleted",
    "provider.circuit_opened",
    "provider.circuit_closed",
    "provider.client_invalid",
    "run.failed",
    "run.succeeded",
];

/// Whether `kind` is one of [`EVENT_TYPES`].
pub fn is_event_type(kind: &str) -> bool {
    EVENT_TYPES.contains(&kind)
}

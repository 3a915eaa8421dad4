//! The transactional outbox: events, project webhooks, deliveries.
//!
//! An event is written in the same transaction as the state change it
//! reports (the connection transitions take `events`), and in that same
//! transaction one delivery is queued per matching project webhook. A
//! dispatcher claims due deliveries (oldest first within each (webhook,
//! connection) pair, so a receiver sees one connection's events in order),
//! sends them and records each attempt. Operator alerts travel the same way:
//! an alert is an event of kind `alert` with a delivery to the operators'
//! channel (`webhook_id = None`).
//!
//! Types only; the methods are on [`crate::Store`].

use thermos_core::id::ConnectionId;
use thermos_core::seal::Sealed;
use time::OffsetDateTime;

/// The event kind of an operator alert.
pub const ALERT_KIND: &str = "alert";

/// An event to record with a state change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// `evt_` + UUIDv7 simple hex; the `webhook-id` receivers de-duplicate on.
    pub id: String,
    /// `connection.created`, `connection.failing`, `provider.circuit_opened`, `alert`, …
    pub kind: String,
    /// The project it concerns; `None` for provider-wide events and alerts
    /// (those reach operators, not project webhooks).
    pub project: Option<String>,
    pub connection_id: Option<ConnectionId>,
    pub provider: Option<String>,
    /// The `data` object of the payload (never a secret).
    pub data: serde_json::Value,
    pub at: OffsetDateTime,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Insertion order (for cursors and the alert aggregator).
    pub seq: i64,
    pub event: NewEvent,
}

/// A project webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    /// `wh_` + UUIDv7 simple hex.
    pub id: String,
    pub project: String,
    pub url: String,
    /// Event kinds wanted; `None` = all.
    pub events: Option<Vec<String>>,
    /// The `whsec_…` secret, sealed (owner `webhook/{id}`, field ClientSecret).
    pub secret: Sealed,
    pub created_at: OffsetDateTime,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Retried for the whole retry period (or the webhook was deleted).
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// A delivery, with its event, as claimed by the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub event: EventRecord,
    /// `None` for the operators' alert channel.
    pub webhook_id: Option<String>,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: OffsetDateTime,
    pub last_http_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub delivered_at: Option<OffsetDateTime>,
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub at: OffsetDateTime,
    /// The receiver's status, if it answered.
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    /// Why it failed (no secret, no body).
    pub error: Option<String>,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    /// Done.
    Delivered,
    /// Try again at this time.
    Retry { at: OffsetDateTime },
    /// Give up.
    Failed,
}

/// Filters for listing events (all optional).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this project's events (project keys always set it).
    pub project: Option<String>,
    pub kind: Option<String>,
    pub connection_id: Option<ConnectionId>,
    /// Events with at least one delivery in this state.
    pub delivery_status: Option<DeliveryStatus>,
}

/// An event with its deliveries, for `GET /v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventWithDeliveries {
    pub event: EventRecord,
    pub deliveries: Vec<DeliveryRecord>,
}

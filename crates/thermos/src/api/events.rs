//! `/v1/events`: recent events and the state of their deliveries, one
//! event with every delivery attempt, and redelivery.
//!
//! A project key sees only its project's events (provider-wide events and
//! operator alerts have no project: only the admin key sees them); another
//! project's event is a 404 to it. Payloads never hold a secret, and an
//! attempt shows its HTTP status, latency and a short error, never a body.
//!
//! Read next: `outbox/dispatch.rs` (who makes the attempts).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use thermos_core::id::ConnectionId;
use thermos_store::outbox::{DeliveryAttempt, DeliveryRecord, DeliveryStatus, EventFilter, EventWithDeliveries};
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::extract::ApiQuery;

/// Events per page unless `limit` says otherwise.
pub const DEFAULT_EVENTS_PAGE: u32 = 50;
/// Largest `limit`.
pub const MAX_EVENTS_PAGE: u32 = 500;

/// `GET /v1/events` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEventsQuery {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub connection_id: Option<String>,
    /// `pending`, `delivered` or `failed`: events with a delivery in that state.
    pub delivery_status: Option<String>,
    pub project: Option<String>,
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One delivery of an event.
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: i64,
    /// `null` for the operators' alert channel.
    pub webhook_id: Option<String>,
    pub status: &'static str,
    pub attempts: u32,
    pub last_http_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// Every attempt, oldest first (only on `GET /v1/events/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptView>>,
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(d: &DeliveryRecord) -> Self {
        Self {
            id: d.id,
            webhook_id: d.webhook_id.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            last_http_status: d.last_http_status,
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
            attempt_log: None,
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Serialize)]
pub struct AttemptView {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

impl From<&DeliveryAttempt> for AttemptView {
    fn from(a: &DeliveryAttempt) -> Self {
        Self {
            at: a.at,
            http_status: a.http_status,
            latency_ms: a.latency_ms,
            error: a.error.clone(),
        }
    }
}

/// An event with its deliveries.
#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub project: Option<String>,
    pub connection_id: Option<String>,
    pub provider: Option<String>,
    pub data: serde_json::Value,
    pub deliveries: Vec<DeliveryView>,
}

impl From<&EventWithDeliveries> for EventView {
    fn from(e: &EventWithDeliveries) -> Self {
        let event = &e.event.event;
        Self {
            id: event.id.clone(),
            kind: event.kind.clone(),
            at: event.at,
            project: event.project.clone(),
            connection_id: event.connection_id.map(|id| id.to_string()),
            provider: event.provider.clone(),
            data: event.data.clone(),
            deliveries: e.deliveries.iter().map(DeliveryView::from).collect(),
        }
    }
}

/// A page of events, newest first.
#[derive(Debug, Serialize)]
pub struct EventPage {
    pub data: Vec<EventView>,
    pub next_cursor: Option<String>,
}

/// `POST /v1/events/{id}/redeliver` answer.
#[derive(Debug, Serialize)]
pub struct Redelivered {
    /// How many deliveries were queued again.
    pub redelivered: u64,
}

/// Parses the filters of a listing, naming the field of any problem.
/// `project` is the project the caller may see (already decided).
pub fn parse_filter(
    project: Option<String>,
    kind: Option<String>,
    connection_id: Option<&str>,
    delivery_status: Option<&str>,
) -> Result<EventFilter, String> {
    let connection_id = connection_id
        .map(|raw| ConnectionId::parse(raw).map_err(|_| format!("connection_id: {raw:?} is not a connection id")))
        .transpose()?;
    let delivery_status = delivery_status
        .map(|raw| {
            DeliveryStatus::parse(raw)
                .ok_or_else(|| format!("delivery_status: {raw:?} is not one of pending, delivered, failed"))
        })
        .transpose()?;
    Ok(EventFilter {
        project,
        kind,
        connection_id,
        delivery_status,
    })
}

/// `GET /v1/events`: newest first; `next_cursor` continues with older ones.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListEventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let filter = parse_filter(
        caller.project_filter(query.project)?,
        query.kind,
        query.connection_id.as_deref(),
        query.delivery_status.as_deref(),
    )
    .map_err(ApiError::bad_request)?;
    let before = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .map_err(|_| ApiError::bad_request("cursor: not a valid cursor"))?,
        ),
    };
    let limit = query.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::bad_request(format!("limit: must be 1-{MAX_EVENTS_PAGE}")));
    }
    let events = state.engine.store().list_events(&filter, before, limit).await?;
    let next_cursor = (events.len() as u32 == limit)
        .then(|| events.last().map(|e| e.event.seq.to_string()))
        .flatten();
    Ok(Json(EventPage {
        data: events.iter().map(EventView::from).collect(),
        next_cursor,
    }))
}

/// `GET /v1/events/{id}`: the event, each delivery with its attempts.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let event = visible(&state, &caller, &id).await?;
    let mut view = EventView::from(&event);
    for delivery in &mut view.deliveries {
        let attempts = state.engine.store().list_delivery_attempts(delivery.id).await?;
        delivery.attempt_log = Some(attempts.iter().map(AttemptView::from).collect());
    }
    Ok(Json(view))
}

/// `POST /v1/events/{id}/redeliver`: 202; its deliveries go out again (the
/// dispatcher picks them up within seconds).
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Redelivered>), ApiError> {
    visible(&state, &caller, &id).await?;
    let redelivered = state.engine.store().redeliver_event(&id, state.engine.now()).await?;
    tracing::info!(event_id = %id, redelivered, "event redelivery requested");
    state.engine.events_committed();
    Ok((StatusCode::ACCEPTED, Json(Redelivered { redelivered })))
}

/// The event, if the caller may see it; else 404.
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<EventWithDeliveries, ApiError> {
    let event = state
        .engine
        .store()
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    let allowed = match caller {
        Caller::Admin => true,
        Caller::Project(own) => event.event.event.project.as_deref() == Some(own.as_str()),
    };
    if allowed {
        Ok(event)
    } else {
        Err(ApiError::not_found("event"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_parsed_and_each_bad_one_is_named() {
        let filter = parse_filter(Some("p1".into()), Some("run.failed".into()), None, Some("failed")).unwrap();
        assert_eq!(filter.delivery_status, Some(DeliveryStatus::Failed));
        assert_eq!(filter.project.as_deref(), Some("p1"));
        let bad_status = parse_filter(None, None, None, Some("lost")).unwrap_err();
        assert!(bad_status.starts_with("delivery_status:"), "{bad_status}");
        let bad_connection = parse_filter(None, None, Some("nope"), None).unwrap_err();
        assert!(bad_connection.starts_with("connection_id:"), "{bad_connection}");
    }
}

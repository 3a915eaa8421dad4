//! Single flight: at most one refresh of a connection runs in this process;
//! everyone who needs it awaits the same shared future.
//!
//! Each flight is spawned on the engine's task tracker, so a caller that goes
//! away (a client disconnecting) never cancels a refresh half-way — the
//! provider may already have rotated the refresh token, and the answer must
//! be stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use thermos_core::id::ConnectionId;
use thermos_store::ConnectionRecord;
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::token::FreshToken;
use super::{Inner, Trigger, refresh};

/// What one flight ended with.
pub type FlightResult = Result<Flight, RefreshFailure>;

/// A flight that ran to its end.
#[derive(Debug, Clone)]
pub enum Flight {
    /// This flight refreshed and committed; the new token.
    Refreshed(FreshToken),
    /// Another refresh (or a user's reconnect) changed the tokens first:
    /// read the store again.
    Superseded,
    /// Another worker holds the lease until the given time.
    Busy { lease_until: OffsetDateTime },
}

/// Why a flight did not produce a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshFailure {
    /// No such connection.
    NotFound,
    /// The connection is not in a state that may be refreshed.
    NotRefreshable {
        status: thermos_core::status::ConnectionStatus,
    },
    /// The grant is dead: the user must reconnect.
    NeedsReauth { code: String, message: String },
    /// The attempt failed; the connection is `failing` and will retry.
    Failed {
        code: String,
        message: String,
        http_status: Option<u16>,
        retry_after: Option<std::time::Duration>,
    },
    /// The provider app is paused (throttled, circuit open, invalid
    /// client); nothing was sent.
    Unavailable {
        until: OffsetDateTime,
        reason: super::guard::PauseReason,
    },
    /// The store failed (details were logged where it happened).
    Internal(String),
}

type SharedFlight = Shared<BoxFuture<'static, FlightResult>>;

/// The flights in progress, by connection.
#[derive(Debug, Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<ConnectionId, SharedFlightDebug>>,
}

/// A shared flight with a Debug impl (the future itself has none).
struct SharedFlightDebug(SharedFlight);

impl std::fmt::Debug for SharedFlightDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flight")
    }
}

impl Flights {
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Registers a flight that never ends for `id`, as an on-demand flight
    /// is registered before it claims its row (tests of that window).
    #[cfg(test)]
    pub(super) fn register_pending(&self, id: ConnectionId) {
        let never: SharedFlight = futures::future::pending().boxed().shared();
        self.lock().insert(id, SharedFlightDebug(never));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, SharedFlightDebug>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn contains(&self, id: ConnectionId) -> bool {
        self.lock().contains_key(&id)
    }

    fn remove(&self, id: ConnectionId) {
        self.lock().remove(&id);
    }
}

/// Joins the flight of `id` if there is one, else starts one that claims
/// the connection's lease and refreshes it.
pub(super) async fn refresh_shared(inner: &Arc<Inner>, id: ConnectionId, trigger: Trigger) -> FlightResult {
    refresh_shared_since(inner, id, trigger, None).await
}

/// [`refresh_shared`] for a caller that read version `seen` of the
/// connection: a flight it starts does not refresh when the row it claims is
/// already newer (another worker committed new tokens between that read and
/// the claim), but hands the lease back and ends [`Flight::Superseded`].
pub(super) async fn refresh_shared_since(
    inner: &Arc<Inner>,
    id: ConnectionId,
    trigger: Trigger,
    seen: Option<i64>,
) -> FlightResult {
    let flight = {
        let mut map = inner.flights.lock();
        match map.get(&id) {
            Some(existing) => existing.0.clone(),
            None => {
                let owned = Arc::clone(inner);
                // A child of the caller's span: its log lines carry the request_id.
                let span = tracing::info_span!("flight", connection_id = %id, trigger = trigger.as_str());
                let flight = async move {
                    let result = refresh::claim_and_refresh(&owned, id, trigger, seen).await;
                    owned.flights.remove(id);
                    result
                }
                .instrument(span)
                .boxed()
                .shared();
                map.insert(id, SharedFlightDebug(flight.clone()));
                inner.tasks.spawn(flight.clone());
                flight
            }
        }
    };
    flight.await
}

/// Starts the flight of a connection the scheduler has already leased.
/// Returns false (and leaves the lease to expire) if a flight of it is
/// already running, which the lease makes impossible in practice.
pub(super) fn start_claimed(
    inner: &Arc<Inner>,
    record: ConnectionRecord,
    permit: OwnedSemaphorePermit,
    trigger: Trigger,
) -> bool {
    let id = record.id;
    let mut map = inner.flights.lock();
    if map.contains_key(&id) {
        return false;
    }
    let owned = Arc::clone(inner);
    let flight = async move {
        let result = refresh::refresh_claimed(&owned, record, trigger, permit).await;
        owned.flights.remove(id);
        result
    }
    .boxed()
    .shared();
    map.insert(id, SharedFlightDebug(flight.clone()));
    inner.tasks.spawn(flight);
    true
}

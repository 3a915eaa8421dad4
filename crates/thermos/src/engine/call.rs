//! One call to a provider app's token endpoint, through the app's guard:
//! admission (throttle, circuit breaker), the gate (concurrency and rate,
//! on-demand first), and one retry when the response was lost.
//!
//! A lost response (the request was sent but no answer came back) is
//! recorded as an attempt before anything else happens, then the same
//! refresh token is sent once more: if the provider never processed the
//! first request, or grants a reuse grace window, this succeeds; if it did
//! and rotates, the answer is `invalid_grant` and the caller marks the
//! connection `needs_reauth` saying the response was lost — never a loop.
//! (Machine grants retry the same way; a JWT-bearer retry signs a new
//! assertion, see `grant.rs`.)

use std::sync::Arc;
use std::time::Instant;

use thermos_core::oauth::{RefreshOutcome, TransientKind};
use thermos_store::ConnectionRecord;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::gate::Priority;
use super::grant::Credential;
use super::guard::{Admit, AppGuard, PauseReason, TransitionKind};
use super::{Inner, Trigger};
use crate::metrics as m;
use crate::provider::ProviderApp;

/// What came of asking to call the provider.
#[derive(Debug)]
pub(super) enum Called {
    /// The provider answered (or failed to).
    Answered {
        outcome: RefreshOutcome,
        /// This attempt probed an open circuit breaker.
        probe: bool,
        /// A first attempt's response was lost and this is the retry.
        after_lost: bool,
    },
    /// The app is paused; nothing was sent.
    Paused { until: OffsetDateTime, reason: PauseReason },
}

/// Calls the token endpoint for `record` with `credential` (its grant).
pub(super) async fn call(
    inner: &Arc<Inner>,
    app: &ProviderApp,
    guard: &Arc<AppGuard>,
    record: &ConnectionRecord,
    credential: &Credential,
    trigger: Trigger,
) -> Called {
    let probe = match guard.admit(inner.clock.now()) {
        Admit::Go { probe } => probe,
        Admit::Wait { until, reason } => return Called::Paused { until, reason },
    };
    let priority = match trigger {
        Trigger::Scheduled => Priority::Background,
        Trigger::Run => Priority::Background,
        Trigger::OnDemand | Trigger::Forced | Trigger::Reset => Priority::Urgent,
    };
    let outcome = match attempt(inner, app, guard, credential, priority, probe).await {
        Ok(outcome) => outcome,
        Err((until, reason)) => return Called::Paused { until, reason },
    };
    if !is_lost(&outcome) {
        return Called::Answered {
            outcome,
            probe,
            after_lost: false,
        };
    }
    inner.stats.lost_response();
    metrics::counter!(m::LOST_RESPONSES_TOTAL, m::LABEL_PROVIDER => record.provider.clone()).increment(1);
    let lost = super::refresh::attempt_record(
        trigger,
        inner.clock.now(),
        Instant::now(),
        "lost",
        outcome.error_code(),
        outcome.http_status(),
    );
    if let Err(e) = inner.store.record_attempt(record.id, lost).await {
        warn!(connection_id = %record.id, error.message = %e, "recording a lost response failed");
    }
    warn!(
        connection_id = %record.id,
        provider = %record.provider,
        error.message = %outcome.message(),
        "token endpoint response lost; retrying once with the same refresh token"
    );
    // The retry goes even if the app was paused meanwhile (it is sent as a
    // probe): a pending rotation must be settled while the previous refresh
    // token may still work.
    let retry = match attempt(inner, app, guard, credential, priority, true).await {
        Ok(outcome) => outcome,
        Err(_) => unreachable!("a probe is never paused"),
    };
    Called::Answered {
        outcome: retry,
        probe,
        after_lost: true,
    }
}

async fn attempt(
    inner: &Arc<Inner>,
    app: &ProviderApp,
    guard: &Arc<AppGuard>,
    credential: &Credential,
    priority: Priority,
    probe: bool,
) -> Result<RefreshOutcome, (OffsetDateTime, PauseReason)> {
    let _slot = guard.enter(priority).await;
    // The app may have been paused while this attempt waited for its slot.
    if !probe && let Some(paused) = guard.paused(inner.clock.now()) {
        return Err(paused);
    }
    let outcome = credential.send(&inner.client, app, inner.clock.as_ref()).await;
    let recorded = guard.record(inner.clock.now(), &outcome, probe);
    if matches!(outcome, RefreshOutcome::RateLimited { .. }) {
        metrics::counter!(m::RATE_LIMITED_TOTAL, m::LABEL_PROVIDER => app.slug.clone()).increment(1);
    }
    if let Some(transition) = recorded.transition {
        let open = matches!(transition, TransitionKind::Opened(_));
        metrics::gauge!(m::CIRCUIT_OPEN, m::LABEL_PROVIDER => app.slug.clone(), m::LABEL_CLIENT => app.client_id.clone())
            .set(if open { 1.0 } else { 0.0 });
        report_transition(inner, app, transition, &outcome).await;
    }
    Ok(outcome)
}

fn is_lost(outcome: &RefreshOutcome) -> bool {
    matches!(outcome, RefreshOutcome::Transient(t) if t.kind == TransientKind::ResponseLost)
}

/// Logs a breaker transition once and records it as provider events
/// (`provider.circuit_opened` / `provider.client_invalid` / `provider.circuit_closed`).
async fn report_transition(
    inner: &Arc<Inner>,
    app: &ProviderApp,
    transition: TransitionKind,
    outcome: &RefreshOutcome,
) {
    let now = inner.clock.now();
    let code = outcome.error_code().unwrap_or_default();
    let mut kinds = Vec::new();
    match transition {
        TransitionKind::Opened(reason) => {
            warn!(
                provider = %app.slug,
                client_id = %app.client_id,
                reason = reason.as_str(),
                error.code = code,
                "provider app paused: scheduled refreshes wait and a probe is sent periodically"
            );
            kinds.push("provider.circuit_opened");
            if reason == PauseReason::ClientInvalid {
                kinds.push("provider.client_invalid");
            }
        }
        TransitionKind::Closed => {
            info!(provider = %app.slug, client_id = %app.client_id, "provider app answers again; resuming");
            kinds.push("provider.circuit_closed");
        }
    }
    let reason = match transition {
        TransitionKind::Opened(reason) => Some(reason.as_str()),
        TransitionKind::Closed => None,
    };
    let data = serde_json::json!({"reason": reason, "error_code": code, "http_status": outcome.http_status()});
    let events = kinds
        .into_iter()
        .map(|kind| super::events::provider_event(kind, &app.slug, &app.client_id, data.clone(), now))
        .collect();
    match inner.store.insert_events(events).await {
        Ok(()) => inner.outbox_wake.notify_one(),
        Err(e) => warn!(provider = %app.slug, error.message = %e, "recording a provider event failed"),
    }
}

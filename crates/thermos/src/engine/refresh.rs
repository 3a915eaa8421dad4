//! One refresh, start to finish: claim, call the token endpoint, classify,
//! and commit the outcome in one store transition.
//!
//! Invariants kept here:
//! - the rotated refresh token is committed (compare-and-swap on the
//!   version) before the new access token is returned to anyone;
//! - `invalid_grant` only marks the grant dead after checking that no other
//!   refresh changed the tokens since this attempt began (a lost race is not
//!   a dead grant);
//! - nothing logged or recorded here contains a token.

use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;
use thermos_core::grant::GrantType;
use thermos_core::oauth::{RefreshOutcome, TokenGrant};
use thermos_core::plan::{self, Jitter};
use thermos_core::seal::Field;
use thermos_core::status::ConnectionStatus;
use thermos_store::truncate_to_millis as truncate_ms;
use thermos_store::{Claim, ConnectionRecord, FailureUpdate, FinishOutcome, LastError, NewAttempt, TokenUpdate};
use time::OffsetDateTime;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument as _, info, warn};

use super::call::{self, Called};
use super::events;
use super::flight::{Flight, FlightResult, RefreshFailure};
use super::grant::{AssertionClaims, ClientCredentialsParams, Credential, SigningKey};
use super::guard::{AppGuard, PauseReason};
use super::token::FreshToken;
use super::{Engine, Inner, Trigger};
use crate::metrics as m;
use crate::provider::ProviderApp;

/// Claims `id`'s lease (waiting for a global permit first), then refreshes,
/// unless the caller read version `seen` and an active row has moved past it.
pub(super) async fn claim_and_refresh(
    inner: &Arc<Inner>,
    id: thermos_core::id::ConnectionId,
    trigger: Trigger,
    seen: Option<i64>,
) -> FlightResult {
    let permit = Arc::clone(&inner.permits)
        .acquire_owned()
        .await
        .map_err(|_| RefreshFailure::Internal("engine is shutting down".into()))?;
    let now = inner.clock.now();
    let lease_until = now + inner.settings.lease_ttl();
    let claim = inner
        .store
        .claim_connection(id, &inner.settings.owner, now, lease_until)
        .await
        .map_err(|e| store_failure("claim connection", &e))?;
    match claim {
        Claim::NotFound => Err(RefreshFailure::NotFound),
        Claim::Busy { lease_until } => Ok(Flight::Busy { lease_until }),
        Claim::Claimed(record) if !record.status.is_scheduled() => {
            observe(&record, m::outcome::SKIPPED, record.status.as_str(), None);
            release(inner, &record, record.next_refresh_at.unwrap_or(now)).await;
            Err(not_refreshable(&record))
        }
        Claim::Claimed(record)
            if record.status == ConnectionStatus::Active && seen.is_some_and(|v| v != record.version) =>
        {
            // Another worker committed new tokens after the caller read the
            // row and before this claim (it held the lease until its commit):
            // its result is as fresh as ours would be, and a second refresh
            // would only spend a rotation. Hand the lease back, due when
            // those tokens are (the claim overwrote the plan; same rule).
            let keep_alive = inner
                .apps
                .resolve(&record.project, &record.provider)
                .and_then(|app| keep_alive(&app, &record));
            let due = plan::plan_refresh(
                record.issued_at,
                record.expires_at,
                inner.settings.policy.margin,
                Jitter::random(),
                keep_alive,
                record.refresh_token_expires_at,
            );
            release(inner, &record, truncate_ms(due)).await;
            Ok(Flight::Superseded)
        }
        Claim::Claimed(record) => refresh_claimed(inner, record, trigger, permit).await,
    }
}

/// Refreshes a connection whose lease this instance holds, in a `refresh`
/// span (a trace span named `refresh {provider}` with the `otel` feature)
/// that ends with the outcome and error code.
pub(super) async fn refresh_claimed(
    inner: &Arc<Inner>,
    record: ConnectionRecord,
    trigger: Trigger,
    permit: OwnedSemaphorePermit,
) -> FlightResult {
    let span = tracing::info_span!(
        "refresh",
        otel.name = %format_args!("refresh {}", record.provider),
        connection_id = %record.id,
        provider = %record.provider,
        trigger = trigger.as_str(),
        outcome = tracing::field::Empty,
        error.code = tracing::field::Empty,
        http_status = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let result = attempt(inner, record, trigger, permit).instrument(span.clone()).await;
    record_outcome(&span, &result);
    result
}

/// The end of a refresh span: outcome, error code (or pause reason) and
/// the token endpoint's HTTP status; an error status when the connection
/// failed.
fn record_outcome(span: &tracing::Span, result: &FlightResult) {
    let (outcome, code, http_status) = match result {
        Ok(Flight::Refreshed(_)) => ("refreshed", None, Some(200)),
        Ok(Flight::Superseded) => ("superseded", None, None),
        Ok(Flight::Busy { .. }) => ("busy", None, None),
        Err(RefreshFailure::Failed { code, http_status, .. }) => ("failed", Some(code.as_str()), *http_status),
        Err(RefreshFailure::NeedsReauth { code, .. }) => ("needs_reauth", Some(code.as_str()), None),
        Err(RefreshFailure::Unavailable { reason, .. }) => ("deferred", Some(reason.as_str()), None),
        Err(RefreshFailure::NotRefreshable { status }) => ("skipped", Some(status.as_str()), None),
        Err(RefreshFailure::NotFound) => ("not_found", None, None),
        Err(RefreshFailure::Internal(_)) => ("internal_error", None, None),
    };
    span.record("outcome", outcome);
    if let Some(code) = code {
        span.record("error.code", code);
    }
    if let Some(status) = http_status {
        span.record("http_status", status);
    }
    if matches!(outcome, "failed" | "needs_reauth" | "internal_error") {
        span.record("otel.status_code", "error");
    }
}

/// One refresh attempt of a leased connection.
async fn attempt(
    inner: &Arc<Inner>,
    record: ConnectionRecord,
    trigger: Trigger,
    _permit: OwnedSemaphorePermit,
) -> FlightResult {
    let started_at = inner.clock.now();
    let started = Instant::now();
    let Some(app) = inner.apps.resolve(&record.project, &record.provider) else {
        let failure = Failure::local(
            "provider_not_configured",
            format!("provider {} is not configured", record.provider),
        );
        return fail(inner, &record, trigger, started_at, started, failure).await;
    };
    let credential = match credential(inner, &record, &app) {
        Ok(credential) => credential,
        Err(failure) => return fail(inner, &record, trigger, started_at, started, failure).await,
    };

    let guard = inner.guards.for_app(&app);
    let (outcome, probe, after_lost) = match call::call(inner, &app, &guard, &record, &credential, trigger).await {
        Called::Answered {
            outcome,
            probe,
            after_lost,
        } => (outcome, probe, after_lost),
        Called::Paused { until, reason } => {
            observe(&record, m::outcome::DEFERRED, reason.as_str(), None);
            return defer(inner, &record, &guard, until, reason).await;
        }
    };
    match outcome {
        RefreshOutcome::Refreshed(grant) => {
            let keep_alive = keep_alive(&app, &record);
            commit(inner, &record, trigger, (started_at, started), grant, keep_alive).await
        }
        // A machine grant rotates nothing, so no other refresh can have
        // raced this one into it. For a JWT-bearer connection the provider
        // refuses the assertion (its key, issuer or subject): nothing
        // changes until an operator does, so it waits for them as a dead
        // user grant does. For client_credentials the "grant" is the app's
        // own credentials and scope, shared by every connection of the app:
        // a transient failure, retried with backoff and then recovery, so
        // the connection comes back by itself once the app is fixed.
        RefreshOutcome::InvalidGrant(_) if record.grant.grant_type.is_machine() => {
            let permanent = record.grant.grant_type == GrantType::JwtBearer;
            let failure = Failure::from_outcome(&outcome, permanent);
            fail(inner, &record, trigger, started_at, started, failure).await
        }
        RefreshOutcome::InvalidGrant(_) if lost_race(inner, &record).await => {
            inner.stats.superseded();
            observe(&record, m::outcome::SUPERSEDED, "invalid_grant", Some(started));
            let attempt = attempt_record(
                trigger,
                started_at,
                started,
                "superseded",
                Some("invalid_grant"),
                outcome.http_status(),
            );
            if let Err(e) = inner.store.record_attempt(record.id, attempt).await {
                store_failure("record superseded attempt", &e);
            }
            release(inner, &record, record.next_refresh_at.unwrap_or(started_at)).await;
            info!(connection_id = %record.id, "invalid_grant after another refresh won; not a dead grant");
            Ok(Flight::Superseded)
        }
        RefreshOutcome::InvalidGrant(_) if after_lost => {
            let failure = Failure::permanent(
                LOST_THEN_INVALID_GRANT,
                "the provider's answer to a refresh was lost in transit and it has since rotated the refresh \
                 token, so the grant cannot be recovered; the user must reconnect",
            );
            fail(
                inner,
                &record,
                trigger,
                started_at,
                started,
                Failure {
                    http_status: outcome.http_status(),
                    ..failure
                },
            )
            .await
        }
        RefreshOutcome::InvalidGrant(_) => {
            let failure = Failure::from_outcome(&outcome, true);
            fail(inner, &record, trigger, started_at, started, failure).await
        }
        // The app, not the connection, is at fault: the connection keeps its status.
        RefreshOutcome::ClientInvalid(_) => {
            not_counted(inner, &record, &guard, trigger, started_at, started, &outcome).await
        }
        RefreshOutcome::Transient(_) | RefreshOutcome::RateLimited { .. } if probe => {
            not_counted(inner, &record, &guard, trigger, started_at, started, &outcome).await
        }
        _ => {
            let failure = Failure::from_outcome(&outcome, false);
            fail(inner, &record, trigger, started_at, started, failure).await
        }
    }
}

/// Opens and parses what this connection's grant sends: its refresh token,
/// the scope of a `client_credentials` connection, or a JWT-bearer
/// connection's private key and claims. A value that is missing is
/// permanent (only a reconnect or a new import brings one); one that does
/// not open is local (the master key may come back).
fn credential(inner: &Inner, record: &ConnectionRecord, app: &ProviderApp) -> Result<Credential, Failure> {
    match record.grant.grant_type {
        GrantType::RefreshToken => {
            let Some(sealed) = &record.refresh_token else {
                return Err(Failure::permanent(
                    "no_refresh_token",
                    "the connection has no refresh token; the user must reconnect",
                ));
            };
            inner
                .key
                .open(&record.id, Field::RefreshToken, sealed)
                .map(Credential::RefreshToken)
                .map_err(|e| {
                    Failure::local(
                        "unreadable_token",
                        format!("stored refresh token cannot be opened: {e}"),
                    )
                })
        }
        GrantType::ClientCredentials => {
            let params: ClientCredentialsParams = grant_params(record)?;
            Ok(Credential::ClientCredentials { scope: params.scope })
        }
        GrantType::JwtBearer => {
            let mut claims: AssertionClaims = grant_params(record)?;
            if claims.aud.is_empty() {
                claims.aud = app.token_url.to_string();
            }
            let Some(sealed) = &record.refresh_token else {
                return Err(Failure::permanent(
                    "no_private_key",
                    "the JWT-bearer connection has no private key; import it again",
                ));
            };
            let pem = inner.key.open(&record.id, Field::PrivateKey, sealed).map_err(|e| {
                Failure::local(
                    "unreadable_private_key",
                    format!("stored private key cannot be opened: {e}"),
                )
            })?;
            let key = SigningKey::parse(&pem, &claims.alg)
                .map_err(|e| Failure::permanent("invalid_private_key", &format!("stored private key: {e}")))?;
            Ok(Credential::JwtBearer { key, claims })
        }
    }
}

/// A connection's `grant_params` as `T` (absent: `T`'s parse of `{}`).
fn grant_params<T: serde::de::DeserializeOwned>(record: &ConnectionRecord) -> Result<T, Failure> {
    let raw = record.grant.params.clone().unwrap_or_else(|| serde_json::json!({}));
    serde_json::from_value(raw).map_err(|e| {
        Failure::permanent(
            "invalid_grant_params",
            &format!("stored {} parameters cannot be read: {e}", record.grant.grant_type),
        )
    })
}

/// The error code of a grant found dead after a lost response.
pub const LOST_THEN_INVALID_GRANT: &str = "invalid_grant_after_lost_response";

/// Hands a connection back untouched because its provider app is paused:
/// it comes due again when the app may be tried, without counting a failure.
async fn defer(
    inner: &Arc<Inner>,
    record: &ConnectionRecord,
    guard: &AppGuard,
    until: OffsetDateTime,
    reason: PauseReason,
) -> FlightResult {
    guard.deferred();
    inner.stats.deferred();
    let spread = std::time::Duration::from_millis(rand::random_range(0..250));
    let next = truncate_ms(until + spread);
    release(inner, record, next).await;
    Engine::wake_if_before(inner, next);
    Err(RefreshFailure::Unavailable { until, reason })
}

/// Records an attempt that says something about the app, not the
/// connection (a probe that failed, an invalid client), and defers the
/// connection until the app may be tried again.
async fn not_counted(
    inner: &Arc<Inner>,
    record: &ConnectionRecord,
    guard: &AppGuard,
    trigger: Trigger,
    started_at: OffsetDateTime,
    started: Instant,
    outcome: &RefreshOutcome,
) -> FlightResult {
    let attempt = attempt_record(
        trigger,
        started_at,
        started,
        "failed",
        outcome.error_code(),
        outcome.http_status(),
    );
    if let Err(e) = inner.store.record_attempt(record.id, attempt).await {
        store_failure("record attempt", &e);
    }
    inner.stats.failed();
    observe(
        record,
        m::outcome::FAILED,
        outcome.error_code().unwrap_or("unknown"),
        Some(started),
    );
    let now = inner.clock.now();
    let (until, reason) = guard
        .paused(now)
        .unwrap_or((now + std::time::Duration::from_secs(1), PauseReason::CircuitOpen));
    defer(inner, record, guard, until, reason).await
}

/// The app's keep-alive, for a connection with a refresh token to keep
/// alive (machine grants have none).
fn keep_alive(app: &ProviderApp, record: &ConnectionRecord) -> Option<std::time::Duration> {
    app.refresh_token_rules
        .keep_alive
        .filter(|_| !record.grant.grant_type.is_machine())
}

/// Seals and commits a successful refresh, then builds the token to hand out.
async fn commit(
    inner: &Arc<Inner>,
    record: &ConnectionRecord,
    trigger: Trigger,
    (started_at, started): (OffsetDateTime, Instant),
    grant: TokenGrant,
    keep_alive: Option<std::time::Duration>,
) -> FlightResult {
    let issued_at = truncate_ms(inner.clock.now());
    let expires_at = truncate_ms(issued_at + grant.expires_in);
    let machine = record.grant.grant_type.is_machine();
    // A stated lifetime is stored; without one, a new refresh token clears
    // the stored expiry (it was the old token's) and an unchanged one keeps
    // it (the store applies the same rule to `None`).
    let refresh_token_expires_at = grant
        .refresh_token_expires_in
        .filter(|_| !machine)
        .map(|lifetime| truncate_ms(issued_at + lifetime));
    let rotated = grant.refresh_token.is_some() && !machine;
    let planned_rt_expiry = match (refresh_token_expires_at, rotated) {
        (Some(at), _) => Some(at),
        (None, true) => None,
        (None, false) => record.refresh_token_expires_at,
    };
    let next_refresh_at = truncate_ms(plan::plan_refresh(
        issued_at,
        expires_at,
        inner.settings.policy.margin,
        Jitter::random(),
        keep_alive,
        planned_rt_expiry,
    ));
    for warning in &grant.warnings {
        warn!(connection_id = %record.id, provider = %record.provider, "token response: {warning}");
    }
    let update = TokenUpdate {
        access_token: inner.key.seal(&record.id, Field::AccessToken, &grant.access_token),
        // A machine grant keeps no refresh token (its column holds a
        // JWT-bearer connection's private key, which must stay).
        refresh_token: grant
            .refresh_token
            .as_ref()
            .filter(|_| !record.grant.grant_type.is_machine())
            .map(|rt| inner.key.seal(&record.id, Field::RefreshToken, rt)),
        token_type: grant.token_type.clone(),
        scope: grant.scope.clone(),
        issued_at,
        expires_at,
        next_refresh_at,
        refresh_token_expires_at,
    };
    let attempt = attempt_record(trigger, started_at, started, "refreshed", None, Some(200));
    match inner
        .store
        .finish_refresh(
            record.id,
            record.version,
            update,
            attempt,
            events::after_success(record, issued_at),
        )
        .await
    {
        Ok(FinishOutcome::Committed(saved)) => {
            inner.stats.refreshed();
            observe_success(record, issued_at, started);
            if record.consecutive_failures > 0 {
                inner.outbox_wake.notify_one();
            }
            Engine::wake_if_before(inner, next_refresh_at);
            info!(
                connection_id = %record.id,
                provider = %record.provider,
                trigger = trigger.as_str(),
                duration_ms = started.elapsed().as_millis() as u64,
                rotated = grant.refresh_token.is_some(),
                "refreshed"
            );
            Ok(Flight::Refreshed(FreshToken {
                access_token: grant.access_token,
                token_type: saved.token_type,
                scope: saved.scope,
                issued_at: saved.issued_at,
                expires_at: saved.expires_at,
            }))
        }
        Ok(FinishOutcome::VersionChanged) => {
            inner.stats.superseded();
            observe(record, m::outcome::SUPERSEDED, "version_changed", Some(started));
            info!(connection_id = %record.id, "tokens changed during the refresh (reconnect?); keeping the newer ones");
            Ok(Flight::Superseded)
        }
        Err(e) => Err(store_failure("commit refresh", &e)),
    }
}

/// Re-reads the connection after an `invalid_grant`: if its tokens changed
/// since the attempt began, another refresh won the race. A refresh token
/// re-encrypted under a new master key meanwhile has other bytes but is the
/// same token: that is no race.
async fn lost_race(inner: &Arc<Inner>, record: &ConnectionRecord) -> bool {
    match inner.store.get_connection(record.id).await {
        Ok(Some(now)) => now.version != record.version || !same_refresh_token(inner, record, &now),
        Ok(None) => true,
        Err(e) => {
            warn!(connection_id = %record.id, error.message = %e, "re-read after invalid_grant failed; treating the grant as dead");
            false
        }
    }
}

/// Whether two readings of one connection hold the same refresh token
/// (equal bytes, or the same text sealed twice). One that cannot be opened
/// counts as different.
fn same_refresh_token(inner: &Inner, before: &ConnectionRecord, after: &ConnectionRecord) -> bool {
    use secrecy::ExposeSecret as _;
    match (&before.refresh_token, &after.refresh_token) {
        (None, None) => true,
        (Some(a), Some(b)) if a == b => true,
        (Some(a), Some(b)) => {
            let open = |sealed| inner.key.open(&before.id, Field::RefreshToken, sealed);
            matches!((open(a), open(b)), (Ok(a), Ok(b)) if a.expose_secret() == b.expose_secret())
        }
        _ => false,
    }
}

/// A failed attempt, ready to be recorded.
struct Failure {
    code: String,
    message: String,
    http_status: Option<u16>,
    retry_after: Option<std::time::Duration>,
    permanent: bool,
}

impl Failure {
    fn local(code: &str, message: String) -> Self {
        Self {
            code: code.into(),
            message,
            http_status: None,
            retry_after: None,
            permanent: false,
        }
    }

    fn permanent(code: &str, message: &str) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            http_status: None,
            retry_after: None,
            permanent: true,
        }
    }

    fn from_outcome(outcome: &RefreshOutcome, permanent: bool) -> Self {
        let retry_after = outcome.retry_after();
        Self {
            code: outcome.error_code().unwrap_or("unknown").to_owned(),
            message: outcome.message(),
            http_status: outcome.http_status(),
            retry_after,
            permanent,
        }
    }
}

/// Records a failure: `needs_reauth` when permanent, else the backoff ladder.
async fn fail(
    inner: &Arc<Inner>,
    record: &ConnectionRecord,
    trigger: Trigger,
    started_at: OffsetDateTime,
    started: Instant,
    failure: Failure,
) -> FlightResult {
    let now = truncate_ms(inner.clock.now());
    let failures = record.consecutive_failures.saturating_add(1);
    let (status, next_refresh_at, entered_recovery) = if failure.permanent {
        (ConnectionStatus::NeedsReauth, None, false)
    } else {
        let plan = plan::after_transient_failure(
            &inner.settings.policy,
            failures,
            now,
            failure.retry_after,
            Jitter::random(),
        );
        (
            plan.status,
            Some(truncate_ms(plan.next_attempt_at)),
            plan.entered_recovery,
        )
    };
    let failure_events = events::after_failure(
        record,
        &events::FailureFacts {
            code: &failure.code,
            message: &failure.message,
            http_status: failure.http_status,
            failures,
            needs_reauth: failure.permanent,
            entered_recovery,
            lost_response: failure.code == LOST_THEN_INVALID_GRANT,
            next_attempt_at: next_refresh_at,
        },
        inner.settings.escalate_after,
        now,
    );
    let update = FailureUpdate {
        status,
        consecutive_failures: failures,
        last_error: LastError {
            code: failure.code.clone(),
            message: failure.message.clone(),
            http_status: failure.http_status,
            at: now,
        },
        next_refresh_at,
    };
    let attempt = attempt_record(
        trigger,
        started_at,
        started,
        "failed",
        Some(&failure.code),
        failure.http_status,
    );
    inner.stats.failed();
    if failure.permanent {
        inner.stats.needs_reauth();
    }
    observe(record, m::outcome::FAILED, &failure.code, Some(started));
    if entered_recovery {
        metrics::counter!(m::RECOVERY_ACTIVATIONS_TOTAL, m::LABEL_PROVIDER => record.provider.clone()).increment(1);
    }
    warn!(
        connection_id = %record.id,
        provider = %record.provider,
        trigger = trigger.as_str(),
        error.code = %failure.code,
        error.message = %failure.message,
        http_status = failure.http_status,
        consecutive_failures = failures,
        status = status.as_str(),
        entered_recovery,
        duration_ms = started.elapsed().as_millis() as u64,
        "refresh failed"
    );
    inner
        .store
        .record_failure(record.id, record.version, update, attempt, failure_events)
        .await
        .map_err(|e| store_failure("record failure", &e))?;
    inner.outbox_wake.notify_one();
    if let Some(next) = next_refresh_at {
        Engine::wake_if_before(inner, next);
    }
    Err(if failure.permanent {
        RefreshFailure::NeedsReauth {
            code: failure.code,
            message: failure.message,
        }
    } else {
        RefreshFailure::Failed {
            code: failure.code,
            message: failure.message,
            http_status: failure.http_status,
            retry_after: failure.retry_after,
        }
    })
}

/// Counts one attempt by provider, outcome and error class (an error code
/// from a fixed set, or a status / pause reason) and records its duration.
fn observe(record: &ConnectionRecord, outcome: &'static str, error_class: &str, started: Option<Instant>) {
    metrics::counter!(
        m::REFRESH_ATTEMPTS_TOTAL,
        m::LABEL_PROVIDER => record.provider.clone(),
        m::LABEL_OUTCOME => outcome,
        m::LABEL_ERROR_CLASS => error_class.to_owned(),
    )
    .increment(1);
    if let Some(started) = started {
        metrics::histogram!(m::REFRESH_DURATION_SECONDS, m::LABEL_PROVIDER => record.provider.clone())
            .record(started.elapsed().as_secs_f64());
    }
}

/// A committed refresh: the attempt, how long after expiry it came (if the
/// token had expired), and the recovery time of a connection that had
/// failed. The store keeps only the last error, so recovery time is
/// measured from `last_error.at` (the most recent failure): an
/// underestimate of "first failure → recovery" when there were several.
fn observe_success(record: &ConnectionRecord, issued_at: OffsetDateTime, started: Instant) {
    observe(record, m::outcome::SUCCESS, m::outcome::NO_ERROR, Some(started));
    if record.expires_at < issued_at {
        metrics::histogram!(m::REFRESH_EXPIRED_BEFORE_REFRESH_SECONDS)
            .record((issued_at - record.expires_at).as_seconds_f64());
    }
    if record.consecutive_failures > 0
        && let Some(error) = &record.last_error
    {
        metrics::histogram!(m::RECOVERY_SECONDS).record((issued_at - error.at).as_seconds_f64().max(0.0));
    }
}

async fn release(inner: &Arc<Inner>, record: &ConnectionRecord, next_refresh_at: OffsetDateTime) {
    if let Err(e) = inner
        .store
        .release_lease(record.id, &inner.settings.owner, next_refresh_at)
        .await
    {
        warn!(connection_id = %record.id, error.message = %e, "releasing a lease failed; it will expire");
    }
}

fn not_refreshable(record: &ConnectionRecord) -> RefreshFailure {
    match (record.status, &record.last_error) {
        (ConnectionStatus::NeedsReauth, Some(e)) => RefreshFailure::NeedsReauth {
            code: e.code.clone(),
            message: e.message.clone(),
        },
        (ConnectionStatus::NeedsReauth, None) => RefreshFailure::NeedsReauth {
            code: "needs_reauth".into(),
            message: "the user must reconnect".into(),
        },
        (status, _) => RefreshFailure::NotRefreshable { status },
    }
}

pub(super) fn attempt_record(
    trigger: Trigger,
    started_at: OffsetDateTime,
    started: Instant,
    outcome: &str,
    error_code: Option<&str>,
    http_status: Option<u16>,
) -> NewAttempt {
    NewAttempt {
        started_at: truncate_ms(started_at),
        trigger: trigger.as_str().into(),
        outcome: outcome.into(),
        error_code: error_code.map(Into::into),
        http_status,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

fn store_failure(context: &str, error: &thermos_store::StoreError) -> RefreshFailure {
    tracing::error!(error.message = %error, error.chain = %error_chain(error), "{context}");
    RefreshFailure::Internal(format!("{context}: {error}"))
}

/// The `: `-joined chain of an error's sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
}

/// Opens the stored access token of a record.
pub(super) fn open_access(
    inner: &Inner,
    record: &ConnectionRecord,
) -> Result<SecretString, thermos_core::seal::SealError> {
    inner.key.open(&record.id, Field::AccessToken, &record.access_token)
}

//! The dispatcher: sends the outbox's pending deliveries, at least once.
//!
//! One dumb loop, like the engine's scheduler: [`Dispatcher::tick`] claims a
//! batch of due deliveries (leased, so another instance or a restart never
//! sends one twice at the same time; the store hands out one delivery per
//! (webhook, connection) at a time, so a receiver sees a connection's events
//! in order), sends them concurrently and records each attempt with
//! [`Store::finish_delivery`]; [`Dispatcher::drive`] sleeps until the next
//! due delivery (at most [`MAX_IDLE`]), wakes early on
//! [`Dispatcher::notify`], prunes old rows every [`PRUNE_EVERY`] and stops
//! on cancel.
//!
//! A project webhook delivery is the JSON payload `{id, type, at, project,
//! data}` signed per Standard Webhooks ([`super::sign`]); an alert delivery
//! (no webhook) goes to the operators' [`AlertChannel`], rendered by
//! [`super::alerts::render`]. A 2xx answer delivers; anything else is
//! retried with exponential backoff and jitter (`backoff_initial` doubling
//! up to `backoff_max`) until `retry_for` after the delivery was created,
//! then the delivery is failed.
//!
//! It never logs or records a body, a secret or the alert URL (its path is
//! often a credential): an attempt keeps the HTTP status, the latency and a
//! short error. Read next: `thermos-store/src/outbox.rs` (the types) and
//! `sign.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect::Policy;
use serde::Serialize;
use thermos_core::clock::Clock;
use thermos_core::seal::{Field, MasterKey};
use thermos_store::outbox::{DeliveryAttempt, DeliveryNext, DeliveryRecord, NewEvent};
use thermos_store::{Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::sign;
use super::target::validate_target;
use crate::config::{AlertFormat, AlertsConfig};
use crate::egress::{EgressPolicy, NameLookup, SystemLookup};
use crate::engine::NextWake;
use crate::metrics as m;

/// Default timeout of one delivery request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a delivery is retried before it is failed.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
/// Default first retry delay.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(5);
/// Default longest retry delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Default age after which finished deliveries and their events are pruned.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default number of deliveries claimed per tick.
pub const DEFAULT_CLAIM_BATCH: u32 = 32;
/// Default number of requests in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Longest sleep of [`Dispatcher::drive`] between looks at the outbox.
pub const MAX_IDLE: Duration = Duration::from_secs(5);
/// How often [`Dispatcher::drive`] prunes the outbox.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The error recorded on a delivery whose webhook no longer exists.
pub const WEBHOOK_DELETED: &str = "webhook deleted";
/// The error recorded on an alert delivery when no `[alerts]` channel is
/// configured: it fails at once (nobody can be told; a retry would not
/// change that until a restart with a channel, after which
/// `thermos events redeliver` sends it).
pub const NO_ALERT_CHANNEL: &str = "no alert channel configured";
/// The `User-Agent` of deliveries.
pub const USER_AGENT: &str = concat!("thermos/", env!("CARGO_PKG_VERSION"));
/// A lease lasts the request timeout plus this, so only a dead worker's expires.
const LEASE_EXTRA: Duration = Duration::from_secs(60);
/// Longest error text recorded on an attempt.
const MAX_ERROR_LEN: usize = 200;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// The operators' alert channel (`[alerts]`).
#[derive(Clone, PartialEq, Eq)]
pub struct AlertChannel {
    /// Where alerts are posted. Its path is often a secret (Slack), so
    /// Debug shows only the origin and logs never name it.
    pub url: Url,
    /// The payload shape.
    pub format: AlertFormat,
}

impl AlertChannel {
    /// The channel of an `[alerts]` section.
    pub fn from_config(alerts: &AlertsConfig) -> Self {
        Self {
            url: alerts.webhook_url.clone(),
            format: alerts.format,
        }
    }
}

impl std::fmt::Debug for AlertChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertChannel")
            .field("origin", &self.url.origin().ascii_serialization())
            .field("format", &self.format)
            .finish()
    }
}

/// How the dispatcher works; [`DispatchSettings::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The lease owner name of this instance.
    pub owner: String,
    /// Timeout of one delivery request (connect, send, headers).
    pub request_timeout: Duration,
    /// How long after its creation a delivery is retried before it fails.
    pub retry_for: Duration,
    /// First retry delay; it doubles per attempt.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Age after which finished deliveries and their events are pruned.
    pub retention: Duration,
    /// Deliveries claimed per tick (at least 1).
    pub batch: u32,
    /// Requests in flight at once (at least 1).
    pub max_in_flight: usize,
    /// `[security] allow_private_targets`: a webhook URL is checked again
    /// before each send, so one registered while private targets were
    /// allowed is not sent to once they are not.
    pub allow_private_targets: bool,
    /// Resolves webhook hosts at connect time; only addresses the SSRF guard
    /// allows are connected to ([`crate::egress`]).
    pub lookup: Arc<dyn NameLookup>,
    /// The operators' channel, if `[alerts]` is configured.
    pub alerts: Option<AlertChannel>,
}

impl DispatchSettings {
    /// The defaults, for lease owner `owner`; private targets refused, no
    /// alert channel.
    pub fn new(owner: impl Into<String>) -> Self {
        Self {
            owner: owner.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_for: DEFAULT_RETRY_FOR,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            retention: DEFAULT_RETENTION,
            batch: DEFAULT_CLAIM_BATCH,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            allow_private_targets: false,
            lookup: Arc::new(SystemLookup),
            alerts: None,
        }
    }
}

/// Wakes a [`Dispatcher`] early; cheap to clone, for code that should not
/// hold the whole dispatcher (the engine after committing events, the API
/// after a redelivery).
#[derive(Debug, Clone, Default)]
pub struct DispatchWaker(Arc<Notify>);

impl DispatchWaker {
    /// Makes the dispatcher look at the outbox now (a wake-up given while it
    /// is busy is kept for its next sleep).
    pub fn notify(&self) {
        self.0.notify_one();
    }
}

/// Sends pending deliveries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    key: Arc<MasterKey>,
    clock: Arc<dyn Clock>,
    settings: DispatchSettings,
    /// For project webhooks: through the SSRF guard.
    http: reqwest::Client,
    /// For the operators' alert channel (configured, so trusted).
    alert_http: reqwest::Client,
    waker: DispatchWaker,
    last_prune_at: Mutex<Option<OffsetDateTime>>,
}

/// What one send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// 2xx.
    Delivered { status: u16 },
    /// Worth trying again: a non-2xx answer, a timeout, a refused connection.
    Retryable { status: Option<u16>, error: String },
    /// Never going to work: the webhook is gone, its secret does not open, no channel.
    Permanent { error: String },
}

impl Dispatcher {
    /// A dispatcher; nothing runs until [`Dispatcher::tick`] or
    /// [`Dispatcher::drive`].
    pub fn new(store: Arc<dyn Store>, key: Arc<MasterKey>, clock: Arc<dyn Clock>, settings: DispatchSettings) -> Self {
        let egress = EgressPolicy::new(settings.allow_private_targets, Arc::clone(&settings.lookup));
        // Building fails only when the TLS backend cannot initialise; rustls
        // with bundled roots has no system dependency, so this is a broken
        // build, not a runtime condition.
        let http = egress
            .client_builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .user_agent(USER_AGENT)
            .build()
            .unwrap_or_else(|e| panic!("build the webhook HTTP client: {e}"));
        let alert_http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .redirect(Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .unwrap_or_else(|e| panic!("build the alert HTTP client: {e}"));
        Self {
            inner: Arc::new(Inner {
                store,
                key,
                clock,
                settings,
                http,
                alert_http,
                waker: DispatchWaker::default(),
                last_prune_at: Mutex::new(None),
            }),
        }
    }

    /// The dispatcher's settings.
    pub fn settings(&self) -> &DispatchSettings {
        &self.inner.settings
    }

    /// Wakes [`Dispatcher::drive`] early: call after committing events or
    /// redelivering one.
    pub fn notify(&self) {
        self.inner.waker.notify();
    }

    /// A handle that wakes this dispatcher.
    pub fn waker(&self) -> DispatchWaker {
        self.inner.waker.clone()
    }

    fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    /// One step at `now`: claims up to one batch of due deliveries, sends
    /// them (at most `max_in_flight` at once) and records each attempt.
    /// Never returns [`NextWake::Saturated`].
    pub async fn tick(&self, now: OffsetDateTime) -> Result<NextWake, StoreError> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let batch = settings.batch.max(1);
        let lease_until = now + settings.request_timeout + LEASE_EXTRA;
        let claimed = inner
            .store
            .claim_deliveries(&settings.owner, now, lease_until, batch)
            .await?;
        let batch_full = claimed.len() as u32 == batch;
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(claimed)
            .map(|delivery| self.run_one(delivery))
            .buffer_unordered(settings.max_in_flight.max(1))
            .collect()
            .await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            return Err(error);
        }
        if let Ok(pending) = inner.store.count_pending_deliveries().await {
            metrics::gauge!(m::OUTBOX_PENDING).set(pending as f64);
        }
        if batch_full {
            return Ok(NextWake::Now);
        }
        Ok(match inner.store.next_delivery_due_at().await? {
            Some(at) if at <= now => NextWake::Now,
            Some(at) => NextWake::At(at),
            None => NextWake::Idle,
        })
    }

    /// Runs until `cancel` fires: tick, prune when due, sleep until the next
    /// due delivery or a wake-up (at most [`MAX_IDLE`]). A tick under way
    /// when `cancel` fires finishes first (its requests are bounded by the
    /// request timeout), so every attempt made is recorded.
    pub async fn drive(&self, cancel: CancellationToken) {
        let mut store_errors = 0u32;
        loop {
            let now = self.now();
            self.prune_if_due(now).await;
            let wake = match self.tick(now).await {
                Ok(wake) => {
                    store_errors = 0;
                    wake
                }
                Err(e) => {
                    store_errors += 1;
                    tracing::error!(
                        error.message = %e,
                        error.chain = %crate::engine::error_chain(&e),
                        "outbox dispatch tick failed"
                    );
                    NextWake::At(self.now() + Duration::from_millis(100 * u64::from(store_errors.min(50))))
                }
            };
            let pause = match wake {
                NextWake::Now => Duration::ZERO,
                NextWake::At(at) => Duration::try_from(at - self.now()).unwrap_or_default().min(MAX_IDLE),
                NextWake::Idle | NextWake::Saturated => MAX_IDLE,
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = self.inner.waker.0.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Retention: deletes finished deliveries, their attempts and events
    /// older than `retention` before `now`. Returns the rows deleted.
    pub async fn prune(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.inner.store.prune_outbox(now - self.inner.settings.retention).await
    }

    async fn prune_if_due(&self, now: OffsetDateTime) {
        {
            let mut last = self.inner.last_prune_at.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| now - at < PRUNE_EVERY) {
                return;
            }
            *last = Some(now);
        }
        match self.prune(now).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned old outbox rows"),
            Err(e) => tracing::error!(
                error.message = %e,
                error.chain = %crate::engine::error_chain(&e),
                "pruning the outbox failed"
            ),
        }
    }

    /// Sends one claimed delivery and records the attempt.
    async fn run_one(&self, delivery: DeliveryRecord) -> Result<(), StoreError> {
        let at = self.now();
        let started = Instant::now();
        let sent = match &delivery.webhook_id {
            Some(webhook_id) => self.send_webhook(webhook_id, &delivery.event.event).await?,
            None => self.send_alert(&delivery.event.event).await,
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let finished_at = self.now();
        let (http_status, error, next) = match sent {
            Sent::Delivered { status } => (Some(status), None, DeliveryNext::Delivered),
            Sent::Retryable { status, error } => {
                let next = self.retry_or_fail(&delivery, finished_at);
                (status, Some(error), next)
            }
            Sent::Permanent { error } => (None, Some(error), DeliveryNext::Failed),
        };
        if let Some(error) = &error {
            log_failure(&delivery, http_status, error, next);
        }
        let outcome = match next {
            DeliveryNext::Delivered => m::outcome::DELIVERED,
            DeliveryNext::Retry { .. } => m::outcome::RETRY,
            DeliveryNext::Failed => m::outcome::DELIVERY_FAILED,
        };
        metrics::counter!(m::WEBHOOK_DELIVERIES_TOTAL, m::LABEL_OUTCOME => outcome).increment(1);
        let attempt = DeliveryAttempt {
            at,
            http_status,
            latency_ms,
            error,
        };
        self.inner
            .store
            .finish_delivery(delivery.id, &self.inner.settings.owner, attempt, next)
            .await
    }

    /// After a retryable failure at `now`: retry after the backoff, but not
    /// past the end of the retry period (so one last attempt is made then);
    /// once that has passed, fail.
    fn retry_or_fail(&self, delivery: &DeliveryRecord, now: OffsetDateTime) -> DeliveryNext {
        let settings = &self.inner.settings;
        let deadline = delivery.created_at + settings.retry_for;
        if now >= deadline {
            return DeliveryNext::Failed;
        }
        let delay = backoff_delay(
            delivery.attempts + 1,
            settings.backoff_initial,
            settings.backoff_max,
            rand::random::<f64>(),
        );
        DeliveryNext::Retry {
            at: (now + delay).min(deadline),
        }
    }

    async fn send_webhook(&self, webhook_id: &str, event: &NewEvent) -> Result<Sent, StoreError> {
        let inner = &self.inner;
        let Some(webhook) = inner.store.get_webhook(webhook_id).await? else {
            return Ok(Sent::Permanent {
                error: WEBHOOK_DELETED.to_owned(),
            });
        };
        let url = match validate_target(&webhook.url, inner.settings.allow_private_targets) {
            Ok(url) => url,
            Err(reason) => {
                return Ok(Sent::Permanent {
                    error: short(&format!("target refused: {reason}")),
                });
            }
        };
        let Ok(secret) = inner
            .key
            .open_for(&secret_owner(webhook_id), Field::ClientSecret, &webhook.secret)
        else {
            return Ok(Sent::Permanent {
                error: "the webhook secret does not open with this master key".to_owned(),
            });
        };
        let body = match serde_json::to_vec(&webhook_payload(event)) {
            Ok(body) => body,
            Err(e) => {
                return Ok(Sent::Permanent {
                    error: short(&format!("encode payload: {e}")),
                });
            }
        };
        let timestamp = self.now().unix_timestamp();
        let signature = match sign::sign(&secret, &event.id, timestamp, &body) {
            Ok(signature) => signature,
            Err(e) => return Ok(Sent::Permanent { error: e.to_string() }),
        };
        let mut headers = standard_headers(&event.id, timestamp);
        if let Ok(value) = HeaderValue::from_str(&signature) {
            headers.insert(WEBHOOK_SIGNATURE, value);
        }
        Ok(self.post(&inner.http, url, headers, body).await)
    }

    async fn send_alert(&self, event: &NewEvent) -> Sent {
        let Some(channel) = &self.inner.settings.alerts else {
            return Sent::Permanent {
                error: NO_ALERT_CHANNEL.to_owned(),
            };
        };
        let body = match serde_json::to_vec(&super::alerts::render(event, channel.format)) {
            Ok(body) => body,
            Err(e) => {
                return Sent::Permanent {
                    error: short(&format!("encode alert: {e}")),
                };
            }
        };
        let headers = standard_headers(&event.id, self.now().unix_timestamp());
        self.post(&self.inner.alert_http, channel.url.clone(), headers, body)
            .await
    }

    async fn post(&self, http: &reqwest::Client, url: Url, headers: HeaderMap, body: Vec<u8>) -> Sent {
        let timeout = self.inner.settings.request_timeout;
        match http.post(url).headers(headers).body(body).send().await {
            Ok(response) if response.status().is_success() => Sent::Delivered {
                status: response.status().as_u16(),
            },
            Ok(response) => Sent::Retryable {
                status: Some(response.status().as_u16()),
                error: format!("HTTP {}", response.status()),
            },
            Err(e) if e.is_timeout() => Sent::Retryable {
                status: None,
                error: format!("timed out after {}", humantime::format_duration(timeout)),
            },
            Err(e) => Sent::Retryable {
                status: None,
                // Without the URL: an alert URL's path is often a credential.
                error: short(&crate::engine::error_chain(&e.without_url())),
            },
        }
    }
}

/// The owner a webhook's secret is sealed for: `webhook/{id}`.
pub fn secret_owner(webhook_id: &str) -> String {
    format!("webhook/{webhook_id}")
}

/// The body of a project webhook delivery: `{id, type, at, project, data}`.
#[derive(Debug, Serialize)]
pub struct WebhookPayload<'a> {
    /// The event id (also the `webhook-id` header).
    pub id: &'a str,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// When the state change happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The project it concerns.
    pub project: Option<&'a str>,
    /// The event's data (never a secret).
    pub data: &'a serde_json::Value,
}

/// The payload of `event`.
pub fn webhook_payload(event: &NewEvent) -> WebhookPayload<'_> {
    WebhookPayload {
        id: &event.id,
        kind: &event.kind,
        at: event.at,
        project: event.project.as_deref(),
        data: &event.data,
    }
}

/// The delay before retry number `attempts` (1 = after the first failure):
/// `initial` doubled per earlier attempt, at most `max`, less up to 20 %
/// jitter (`jitter` in [0, 1)) so a burst of failures spreads out.
pub fn backoff_delay(attempts: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    let delay = initial.checked_mul(1u32 << doublings).unwrap_or(max).min(max);
    delay.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// `content-type`, `webhook-id` and `webhook-timestamp`.
fn standard_headers(event_id: &str, timestamp: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(event_id) {
        headers.insert(WEBHOOK_ID, value);
    }
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    headers
}

/// At most [`MAX_ERROR_LEN`] characters.
fn short(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// One line per failed attempt, where it is handled.
fn log_failure(delivery: &DeliveryRecord, http_status: Option<u16>, error: &str, next: DeliveryNext) {
    let webhook_id = delivery.webhook_id.as_deref().unwrap_or("alerts");
    let event_id = delivery.event.event.id.as_str();
    let attempts = delivery.attempts + 1;
    match next {
        DeliveryNext::Failed => tracing::error!(
            webhook_id,
            event_id,
            http.status = http_status,
            attempts,
            error.message = error,
            "webhook delivery failed for good"
        ),
        DeliveryNext::Retry { at } => tracing::warn!(
            webhook_id,
            event_id,
            http.status = http_status,
            attempts,
            error.message = error,
            retry_at = %at,
            "webhook delivery failed; will retry"
        ),
        DeliveryNext::Delivered => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_maximum() {
        let delays: Vec<_> = (1..=12)
            .map(|n| backoff_delay(n, 5 * S, 3600 * S, 0.0).as_secs())
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]);
        assert_eq!(backoff_delay(u32::MAX, 5 * S, 3600 * S, 0.0), 3600 * S);
    }

    #[test]
    fn backoff_jitter_takes_off_at_most_a_fifth() {
        for jitter in [0.0, 0.3, 0.999, 7.0, -1.0] {
            let delay = backoff_delay(3, 10 * S, 3600 * S, jitter);
            assert!(delay <= 40 * S && delay >= 32 * S, "{jitter}: {delay:?}");
        }
    }

    #[test]
    fn the_payload_has_the_designed_fields_and_no_others() {
        let event = NewEvent {
            id: "evt_1".into(),
            kind: "connection.failing".into(),
            project: Some("p1".into()),
            connection_id: None,
            provider: Some("acme".into()),
            data: json!({"failures": 3}),
            at: time::macros::datetime!(2026-01-02 03:04:05.678 UTC),
        };
        let value = serde_json::to_value(webhook_payload(&event)).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "evt_1",
                "type": "connection.failing",
                "at": "2026-01-02T03:04:05.678Z",
                "project": "p1",
                "data": {"failures": 3},
            })
        );
    }

    #[test]
    fn an_alert_channel_debug_shows_only_the_origin() {
        let channel = AlertChannel {
            url: "https://hooks.slack.test/services/T0/B0/hook-secret".parse().unwrap(),
            format: AlertFormat::Slack,
        };
        let shown = format!("{channel:?}");
        assert!(!shown.contains("hook-secret"), "{shown}");
        assert!(shown.contains("hooks.slack.test"), "{shown}");
    }

    #[test]
    fn a_long_error_is_cut() {
        let long = "x".repeat(500);
        assert_eq!(short(&long).chars().count(), MAX_ERROR_LEN + 1);
        assert_eq!(short("short"), "short");
    }
}

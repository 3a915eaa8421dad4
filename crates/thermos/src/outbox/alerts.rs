//! Operator alerts: an outage is one alert and one all-clear, not a
//! thousand messages.
//!
//! The [`Aggregator`] reads the event stream after its cursor
//! (`Store::events_after`), folds it into an [`AlertBook`] — the pure state
//! machine: no IO, no clock, testable without a store — and at each tick
//! writes the alerts the book says are due together with the new cursor, in
//! one transaction (`Store::commit_alerts`). An alert is an event of kind
//! [`ALERT_KIND`] with one delivery to the operators' channel; the
//! dispatcher posts it in the shape [`render`] gives it.
//!
//! Per provider (its slug: the configured app and every project's custom app
//! of that provider form one group; the alert names the clients involved):
//!
//! - **quiet** → a trouble event (first failure if `on_first_failure`,
//!   escalation, active recovery, `needs_reauth`, circuit opened, client
//!   invalid, failed run) opens an episode;
//! - **gathering** for one `window` from its first event, then ONE alert
//!   summarising the window (`trouble`) → **alerting**. If by then nothing
//!   is failing any more it is one `transient` alert and back to quiet; if
//!   it was only `needs_reauth` or failed runs (users' or operators' one-off
//!   business), one `notice` and back to quiet;
//! - **alerting**: more of the same sends nothing; something new (circuit
//!   opened, client invalid, escalation, active recovery, `needs_reauth`)
//!   sends one `escalation`, at most one per window;
//! - **healthy** again (no open circuit, no invalid client, no connection of
//!   the provider `failing` in the store — `needs_reauth` ones do not count)
//!   → ONE `all_clear` (silently when `on_recovery` is off) → quiet.
//!
//! Crash safety: every alert records the stream position it was decided at
//! (`through_seq`) and the signals it reported. The committed cursor is the
//! position before the oldest open episode, so after a crash the book is
//! rebuilt by replaying the events after it with its own alerts applied at
//! their positions: an alert already committed is never sent again, and
//! one decided but not committed is decided again.
//!
//! It never sends anything itself, never changes a connection and never
//! puts a token, secret or provider message into an alert: codes, counts,
//! client ids and times only.
//!
//! Read next: `dispatch.rs` (sending), `engine/events.rs` (what the engine
//! writes).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use thermos_core::clock::Clock;
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::{ALERT_KIND, EventRecord, NewEvent};
use thermos_store::{StatusCount, Store, StoreError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{AlertFormat, AlertsConfig, DEFAULT_ESCALATE_AFTER};

/// Default aggregation window: one alert per provider per window at most.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The name of the aggregator's cursor in the store.
pub const CURSOR_NAME: &str = "alerts";
/// Events read per `events_after` call.
pub const PAGE_SIZE: u32 = 1_000;
/// Pages read per tick at most (a tick stays bounded while catching up).
pub const MAX_PAGES_PER_TICK: u32 = 50;
/// An episode still gathering whose last event is older than this is old
/// news (the aggregator was not running): dropped without an alert.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Client ids named in one alert at most.
const LISTED_MAX: usize = 5;

/// How alerts are aggregated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// Gathering time before the first alert, and the least time between
    /// two alerts of one provider.
    pub window: Duration,
    /// A connection's first failure opens an episode (else only escalations do).
    pub on_first_failure: bool,
    /// Send the all-clear.
    pub on_recovery: bool,
    /// Consecutive failures from which a failure counts as an escalation.
    pub escalate_after: u32,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            on_first_failure: true,
            on_recovery: true,
            escalate_after: DEFAULT_ESCALATE_AFTER,
        }
    }
}

impl AlertSettings {
    /// The settings of an `[alerts]` section, with the default window.
    pub fn from_config(config: &AlertsConfig) -> Self {
        Self {
            window: DEFAULT_WINDOW,
            on_first_failure: config.on_first_failure,
            on_recovery: config.on_recovery,
            escalate_after: config.escalate_after.max(1),
        }
    }

    /// How often [`Aggregator::drive`] ticks: half a window, at least 1 s.
    pub fn tick_every(&self) -> Duration {
        (self.window / 2).max(Duration::from_secs(1))
    }
}

/// What a provider's trouble consists of. Each alert records the signals it
/// reported (`data.signals`); a later one is sent only for a new signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// Connections failed (below `escalate_after`).
    Failures,
    /// Connections reached `escalate_after` consecutive failures.
    Escalated,
    /// Connections entered active recovery.
    Recovering,
    /// Grants died: users must reconnect.
    NeedsReauth,
    /// A circuit of the provider is open.
    CircuitOpen,
    /// The provider rejects a client (`invalid_client`).
    ClientInvalid,
    /// A refresh run failed.
    RunFailed,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Self; 7] = [
        Self::Failures,
        Self::Escalated,
        Self::Recovering,
        Self::NeedsReauth,
        Self::CircuitOpen,
        Self::ClientInvalid,
        Self::RunFailed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failures => "failures",
            Self::Escalated => "escalated",
            Self::Recovering => "recovering",
            Self::NeedsReauth => "needs_reauth",
            Self::CircuitOpen => "circuit_open",
            Self::ClientInvalid => "client_invalid",
            Self::RunFailed => "run_failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Whether it keeps the provider out of health (operators' business),
    /// unlike a dead grant or a failed run.
    fn is_operational(self) -> bool {
        !matches!(self, Self::NeedsReauth | Self::RunFailed)
    }

    fn is_critical(self) -> bool {
        matches!(
            self,
            Self::Escalated | Self::Recovering | Self::CircuitOpen | Self::ClientInvalid
        )
    }
}

/// Which alert it is (`data.alert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The first alert of an episode.
    Trouble,
    /// Something new while alerting.
    Escalation,
    /// Healthy again; the episode is over.
    AllClear,
    /// Trouble that was over by the end of its first window.
    Transient,
    /// Only dead grants or failed runs: reported once, nothing to clear.
    Notice,
}

impl Transition {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trouble => "trouble",
            Self::Escalation => "escalation",
            Self::AllClear => "all_clear",
            Self::Transient => "transient",
            Self::Notice => "notice",
        }
    }

    /// Parses a wire name.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Trouble,
            Self::Escalation,
            Self::AllClear,
            Self::Transient,
            Self::Notice,
        ]
        .into_iter()
        .find(|t| t.as_str() == raw)
    }

    fn ends_episode(self) -> bool {
        matches!(self, Self::AllClear | Self::Transient | Self::Notice)
    }
}

/// What the store says now: connections `failing`, per provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    failing: HashMap<String, u64>,
}

impl Health {
    /// From `Store::count_by_status`.
    pub fn from_counts(counts: &[StatusCount]) -> Self {
        let mut failing = HashMap::new();
        for c in counts.iter().filter(|c| c.status == ConnectionStatus::Failing) {
            *failing.entry(c.provider.clone()).or_insert(0) += c.count;
        }
        Self { failing }
    }

    /// `self` with `provider` having `count` failing connections.
    pub fn with_failing(mut self, provider: &str, count: u64) -> Self {
        self.failing.insert(provider.to_owned(), count);
        self
    }

    /// Connections of `provider` in `failing`.
    pub fn failing(&self, provider: &str) -> u64 {
        self.failing.get(provider).copied().unwrap_or(0)
    }
}

/// An error code and HTTP status, as events carry them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Cause {
    code: String,
    http_status: Option<u64>,
}

/// The kinds of connection events counted per episode (`data.by_kind`).
const FAILED: &str = "refresh_failed";
const ESCALATED: &str = "failing";
const RECOVERING: &str = "recovering";
const REAUTH: &str = "needs_reauth";
const RECOVERED: &str = "recovered";
/// Kinds that make a connection "affected".
const AFFECTED_KINDS: [&str; 4] = [FAILED, ESCALATED, RECOVERING, REAUTH];

/// One provider's open episode.
#[derive(Debug, Clone)]
struct Episode {
    /// Stream position of its first event (the cursor stays before it).
    start_seq: i64,
    since: OffsetDateTime,
    last_event_at: OffsetDateTime,
    /// Distinct connections by kind.
    by_kind: BTreeMap<&'static str, HashSet<ConnectionId>>,
    /// Connections whose last event in the episode was a failure.
    still_failing: HashSet<ConnectionId>,
    /// Signals seen from connection events and runs (sticky for the episode).
    seen: BTreeSet<Signal>,
    causes: HashMap<Cause, u64>,
    reauth_causes: HashMap<Cause, u64>,
    /// Open circuits: client id → reason.
    circuits: BTreeMap<String, String>,
    /// Rejected clients: client id → error code.
    invalid_clients: BTreeMap<String, String>,
    runs_failed: u64,
    last_alert_at: Option<OffsetDateTime>,
    reported: BTreeSet<Signal>,
}

impl Episode {
    fn new(start_seq: i64, since: OffsetDateTime) -> Self {
        Self {
            start_seq,
            since,
            last_event_at: since,
            by_kind: BTreeMap::new(),
            still_failing: HashSet::new(),
            seen: BTreeSet::new(),
            causes: HashMap::new(),
            reauth_causes: HashMap::new(),
            circuits: BTreeMap::new(),
            invalid_clients: BTreeMap::new(),
            runs_failed: 0,
            last_alert_at: None,
            reported: BTreeSet::new(),
        }
    }

    /// Signals now: the sticky ones plus the circuits as they stand.
    fn signals(&self) -> BTreeSet<Signal> {
        let mut signals = self.seen.clone();
        if !self.circuits.is_empty() {
            signals.insert(Signal::CircuitOpen);
        }
        if !self.invalid_clients.is_empty() {
            signals.insert(Signal::ClientInvalid);
        }
        signals
    }

    fn count(&self, kind: &str) -> usize {
        self.by_kind.get(kind).map_or(0, HashSet::len)
    }

    /// Distinct connections over `kinds`.
    fn distinct(&self, kinds: &[&str]) -> usize {
        let mut all: HashSet<&ConnectionId> = HashSet::new();
        for kind in kinds {
            all.extend(self.by_kind.get(kind).into_iter().flatten());
        }
        all.len()
    }

    fn touch(&mut self, kind: &'static str, connection: Option<ConnectionId>) {
        let set = self.by_kind.entry(kind).or_default();
        set.extend(connection);
        if let Some(id) = connection {
            if matches!(kind, RECOVERED | REAUTH) {
                self.still_failing.remove(&id);
            } else {
                self.still_failing.insert(id);
            }
        }
    }

    /// Whether the episode's operational trouble is over: no open circuit,
    /// no rejected client, and either no connection of the provider is
    /// `failing` in the store or every one the episode saw fail has since
    /// recovered or lost its grant (a chronic failure from before the
    /// episode does not hold the all-clear back).
    fn healthy(&self, failing_now: u64) -> bool {
        self.circuits.is_empty()
            && self.invalid_clients.is_empty()
            && (failing_now == 0 || self.still_failing.is_empty())
    }

    /// Signals not yet reported that are worth an escalation. Plain failures
    /// add nothing once anything operational was reported; a failed run
    /// adds nothing to an outage.
    fn news(&self) -> BTreeSet<Signal> {
        let operational_reported = self.reported.iter().any(|s| s.is_operational());
        self.signals()
            .into_iter()
            .filter(|s| !self.reported.contains(s))
            .filter(|s| !(operational_reported && matches!(s, Signal::Failures | Signal::RunFailed)))
            .collect()
    }
}

/// The connection and provider events the book understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RefreshFailed,
    Failing,
    Recovering,
    Recovered,
    NeedsReauth,
    CircuitOpened,
    CircuitClosed,
    ClientInvalid,
    RunFailed,
}

impl Kind {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "connection.refresh_failed" => Self::RefreshFailed,
            "connection.failing" => Self::Failing,
            "connection.recovering" => Self::Recovering,
            "connection.recovered" => Self::Recovered,
            "connection.needs_reauth" => Self::NeedsReauth,
            "provider.circuit_opened" => Self::CircuitOpened,
            "provider.circuit_closed" => Self::CircuitClosed,
            "provider.client_invalid" => Self::ClientInvalid,
            "run.failed" => Self::RunFailed,
            _ => return None,
        })
    }
}

/// The aggregation state machine over the event stream: pure (no IO, no
/// clock). [`AlertBook::observe`] folds events, [`AlertBook::decide`] says
/// which alerts are due at a time and applies them, [`AlertBook::cursor`]
/// is the position to commit with them.
#[derive(Debug, Clone)]
pub struct AlertBook {
    settings: AlertSettings,
    /// Open episodes by provider (`None`: runs over every provider).
    episodes: BTreeMap<Option<String>, Episode>,
    read_seq: i64,
}

impl AlertBook {
    /// An empty book that has read the stream up to `cursor`.
    pub fn new(settings: AlertSettings, cursor: i64) -> Self {
        Self {
            settings,
            episodes: BTreeMap::new(),
            read_seq: cursor,
        }
    }

    /// The last stream position folded.
    pub fn read_seq(&self) -> i64 {
        self.read_seq
    }

    /// The position to commit: just before the oldest open episode, or
    /// everything read when all providers are quiet. Replaying from it
    /// rebuilds this book.
    pub fn cursor(&self) -> i64 {
        self.episodes
            .values()
            .map(|e| e.start_seq - 1)
            .min()
            .map_or(self.read_seq, |c| c.min(self.read_seq))
    }

    /// Whether every provider is quiet.
    pub fn is_quiet(&self) -> bool {
        self.episodes.is_empty()
    }

    /// Folds one event. Alerts are skipped: the book applies its own when it
    /// decides them, and a replay applies them at their positions.
    pub fn observe(&mut self, record: &EventRecord) {
        self.read_seq = self.read_seq.max(record.seq);
        let event = &record.event;
        if event.kind == ALERT_KIND {
            return;
        }
        let Some(kind) = Kind::parse(&event.kind) else { return };
        let data = &event.data;
        let failures = data["consecutive_failures"].as_u64().unwrap_or(1);
        let escalated = failures >= u64::from(self.settings.escalate_after);
        let opens = match kind {
            Kind::RefreshFailed => self.settings.on_first_failure || escalated,
            Kind::Recovered | Kind::CircuitClosed => false,
            _ => true,
        };
        let key = group_key(event);
        if !self.episodes.contains_key(&key) {
            if !opens {
                return;
            }
            self.episodes.insert(key.clone(), Episode::new(record.seq, event.at));
        }
        let Some(ep) = self.episodes.get_mut(&key) else { return };
        ep.last_event_at = ep.last_event_at.max(event.at);
        let connection = event
            .connection_id
            .or_else(|| data["connection_id"].as_str().and_then(|s| ConnectionId::parse(s).ok()));
        let client = data["client_id"].as_str().unwrap_or_default().to_owned();
        match kind {
            Kind::RefreshFailed | Kind::Failing | Kind::Recovering => {
                let (bucket, signal) = match kind {
                    Kind::Recovering => (RECOVERING, Signal::Recovering),
                    _ if escalated || kind == Kind::Failing => (ESCALATED, Signal::Escalated),
                    _ => (FAILED, Signal::Failures),
                };
                ep.touch(bucket, connection);
                ep.seen.insert(signal);
                if let Some(cause) = cause_of(data) {
                    *ep.causes.entry(cause).or_insert(0) += 1;
                }
            }
            Kind::NeedsReauth => {
                ep.touch(REAUTH, connection);
                ep.seen.insert(Signal::NeedsReauth);
                if let Some(cause) = cause_of(data) {
                    *ep.reauth_causes.entry(cause).or_insert(0) += 1;
                }
            }
            Kind::Recovered => ep.touch(RECOVERED, connection),
            Kind::CircuitOpened => {
                let reason = data["reason"].as_str().unwrap_or("failures").to_owned();
                if reason == "client_invalid" {
                    let code = cause_of(data).map_or_else(|| "invalid_client".to_owned(), |c| c.code);
                    ep.invalid_clients.insert(client.clone(), code);
                } else if let Some(cause) = cause_of(data) {
                    *ep.causes.entry(cause).or_insert(0) += 1;
                }
                ep.circuits.insert(client, reason);
            }
            Kind::ClientInvalid => {
                let code = cause_of(data).map_or_else(|| "invalid_client".to_owned(), |c| c.code);
                ep.invalid_clients.insert(client, code);
            }
            Kind::CircuitClosed if client.is_empty() => {
                ep.circuits.clear();
                ep.invalid_clients.clear();
            }
            Kind::CircuitClosed => {
                ep.circuits.remove(&client);
                ep.invalid_clients.remove(&client);
            }
            Kind::RunFailed => {
                ep.runs_failed += 1;
                ep.seen.insert(Signal::RunFailed);
            }
        }
    }

    /// The alerts due at `now` given the store's `health`, already applied
    /// to the book. Commit them with [`AlertBook::cursor`]; if that fails,
    /// throw the book away and rebuild it.
    pub fn decide(&mut self, now: OffsetDateTime, health: &Health) -> Vec<NewEvent> {
        let window = self.settings.window;
        let mut alerts = Vec::new();
        let mut silent_ends = Vec::new();
        for (key, ep) in &self.episodes {
            let failing_now = key.as_deref().map_or(0, |p| health.failing(p));
            let healthy = ep.healthy(failing_now);
            let transition = match ep.last_alert_at {
                None if now < ep.since + window => None,
                None if now - ep.last_event_at > STALE_AFTER => {
                    silent_ends.push(key.clone());
                    None
                }
                None if !ep.signals().iter().any(|s| s.is_operational()) => Some(Transition::Notice),
                None if healthy => Some(Transition::Transient),
                None => Some(Transition::Trouble),
                Some(last) if now < last + window => None,
                Some(_) if healthy && self.settings.on_recovery => Some(Transition::AllClear),
                Some(_) if healthy => {
                    silent_ends.push(key.clone());
                    None
                }
                Some(_) if !ep.news().is_empty() => Some(Transition::Escalation),
                Some(_) => None,
            };
            if let Some(t) = transition {
                alerts.push(build_alert(key, ep, t, now, failing_now, self.read_seq, &self.settings));
            }
        }
        for key in silent_ends {
            self.episodes.remove(&key);
        }
        for alert in &alerts {
            self.apply_alert(alert);
        }
        alerts
    }

    /// Applies an alert this book (or a crashed predecessor) decided: the
    /// state it records replaces the provider's.
    pub fn apply_alert(&mut self, alert: &NewEvent) {
        let Some(transition) = alert.data["alert"].as_str().and_then(Transition::parse) else {
            return;
        };
        let key = alert.provider.clone();
        if transition.ends_episode() {
            self.episodes.remove(&key);
            return;
        }
        let through = through_seq(alert).unwrap_or(self.read_seq);
        let since = alert.data["since"]
            .as_str()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .unwrap_or(alert.at);
        let ep = self
            .episodes
            .entry(key)
            .or_insert_with(|| Episode::new(through + 1, since));
        ep.last_alert_at = Some(alert.at);
        let signals = alert.data["signals"].as_array().into_iter().flatten();
        ep.reported
            .extend(signals.filter_map(|s| s.as_str().and_then(Signal::parse)));
    }

    /// Folds a page of a replay: before each event, the alerts of `alerts`
    /// (sorted by `through_seq`) decided before it are applied.
    pub fn replay_page(&mut self, page: &[EventRecord], alerts: &mut VecDeque<EventRecord>) {
        for record in page {
            while let Some(a) = alerts.pop_front() {
                if through_seq(&a.event).unwrap_or(a.seq - 1) < record.seq {
                    self.apply_alert(&a.event);
                } else {
                    alerts.push_front(a);
                    break;
                }
            }
            self.observe(record);
        }
    }
}

/// The provider an event concerns (runs: the one in their filter, if any).
fn group_key(event: &NewEvent) -> Option<String> {
    event
        .provider
        .clone()
        .or_else(|| event.data["provider"].as_str().map(str::to_owned))
        .or_else(|| event.data["filter"]["provider"].as_str().map(str::to_owned))
}

/// `data.error.{code,http_status}` (engine events) or
/// `data.{error_code,http_status}`.
fn cause_of(data: &Value) -> Option<Cause> {
    let code = data["error"]["code"].as_str().or_else(|| data["error_code"].as_str())?;
    let http_status = data["error"]["http_status"]
        .as_u64()
        .or_else(|| data["http_status"].as_u64());
    Some(Cause {
        code: code.to_owned(),
        http_status,
    })
}

fn through_seq(alert: &NewEvent) -> Option<i64> {
    alert.data["through_seq"].as_i64()
}

/// The most frequent cause (ties: the smallest, for determinism).
fn dominant(causes: &HashMap<Cause, u64>) -> Option<&Cause> {
    causes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(cause, _)| cause)
}

fn build_alert(
    key: &Option<String>,
    ep: &Episode,
    transition: Transition,
    now: OffsetDateTime,
    failing_now: u64,
    through_seq: i64,
    settings: &AlertSettings,
) -> NewEvent {
    let signals = ep.signals();
    let severity = match transition {
        Transition::AllClear | Transition::Transient => "resolved",
        _ if signals.iter().any(|s| s.is_critical()) => "critical",
        _ => "warning",
    };
    let cause = dominant(&ep.causes).or_else(|| dominant(&ep.reauth_causes));
    let text = Text {
        key,
        ep,
        now,
        cause,
        settings,
    };
    let (title, summary) = match transition {
        Transition::Trouble | Transition::Notice => (text.headline(), text.trouble()),
        Transition::Escalation => (format!("{} (escalated)", text.headline()), text.trouble()),
        Transition::AllClear => (format!("{}: all clear", text.name()), text.all_clear()),
        Transition::Transient => (
            format!("{}: transient failures, recovered", text.name()),
            text.transient(),
        ),
    };
    let mut by_kind = serde_json::Map::new();
    for kind in [FAILED, ESCALATED, RECOVERING, REAUTH, RECOVERED] {
        by_kind.insert(kind.into(), json!(ep.count(kind)));
    }
    let ended = transition.ends_episode().then(|| rfc3339(now));
    let data = json!({
        "severity": severity,
        "title": title,
        "summary": summary,
        "alert": transition.as_str(),
        "provider": key,
        "connections_affected": ep.distinct(&AFFECTED_KINDS),
        "by_kind": by_kind,
        "cause": cause.map(|c| json!({"error_code": c.code, "http_status": c.http_status})),
        "since": rfc3339(ep.since),
        "until": ended,
        "circuit": if ep.circuits.is_empty() { "closed" } else { "open" },
        "clients": {
            "circuit_open": ep.circuits.keys().take(LISTED_MAX).collect::<Vec<_>>(),
            "invalid": ep.invalid_clients.keys().take(LISTED_MAX).collect::<Vec<_>>(),
        },
        "failing_now": failing_now,
        "runs_failed": ep.runs_failed,
        "signals": signals.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "through_seq": through_seq,
        "window_seconds": settings.window.as_secs(),
    });
    NewEvent {
        id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
        kind: ALERT_KIND.to_owned(),
        project: None,
        connection_id: None,
        provider: key.clone(),
        data,
        at: now,
    }
}

/// The words of one alert.
struct Text<'a> {
    key: &'a Option<String>,
    ep: &'a Episode,
    now: OffsetDateTime,
    cause: Option<&'a Cause>,
    settings: &'a AlertSettings,
}

impl Text<'_> {
    fn name(&self) -> &str {
        self.key.as_deref().unwrap_or("thermos")
    }

    fn failing(&self) -> usize {
        self.ep.distinct(&[FAILED, ESCALATED, RECOVERING])
    }

    fn headline(&self) -> String {
        let ep = self.ep;
        let what = if !ep.invalid_clients.is_empty() {
            "app misconfigured, the provider rejects its client".to_owned()
        } else if self.failing() > 0 {
            let open = if ep.circuits.is_empty() { "" } else { ", circuit open" };
            format!("{} failing{open}", connections(self.failing()))
        } else if !ep.circuits.is_empty() {
            "provider failing, circuit open".to_owned()
        } else if ep.count(REAUTH) > 0 {
            format!("{} need reauthorization", connections(ep.count(REAUTH)))
        } else {
            plural(ep.runs_failed, "refresh run failed", "refresh runs failed")
        };
        format!("{}: {what}", self.name())
    }

    fn cause_text(&self) -> String {
        self.cause.map_or_else(String::new, |c| match c.http_status {
            Some(status) => format!(", cause {} (HTTP {status})", c.code),
            None => format!(", cause {}", c.code),
        })
    }

    fn trouble(&self) -> String {
        let ep = self.ep;
        let (name, since, cause) = (self.name(), clock_time(ep.since, self.now), self.cause_text());
        let reauth = ep.count(REAUTH);
        let mut parts = vec![if self.failing() > 0 {
            format!(
                "{} of `{name}` failing since {since}{cause}",
                connections(self.failing())
            )
        } else if !ep.circuits.is_empty() || !ep.invalid_clients.is_empty() {
            format!("`{name}` failing since {since}{cause}")
        } else if reauth > 0 {
            format!(
                "{} of `{name}` need reauthorization since {since}{cause}",
                connections(reauth)
            )
        } else {
            format!(
                "{} since {since}",
                plural(ep.runs_failed, "refresh run failed", "refresh runs failed")
            )
        }];
        if ep.count(ESCALATED) > 0 {
            let n = ep.count(ESCALATED);
            let after = self.settings.escalate_after;
            parts.push(format!("{n} reached {after} consecutive failures"));
        }
        if ep.count(RECOVERING) > 0 {
            parts.push(format!("{} in active recovery", ep.count(RECOVERING)));
        }
        if !ep.circuits.is_empty() {
            parts.push("circuit open".to_owned());
        }
        for (client, code) in ep.invalid_clients.iter().take(LISTED_MAX) {
            parts.push(format!(
                "client `{client}` rejected ({code}): fix the app's credentials, then reload (SIGHUP)"
            ));
        }
        if reauth > 0 && (self.failing() > 0 || !ep.circuits.is_empty()) {
            parts.push(format!("{reauth} need reauthorization (users must reconnect)"));
        }
        if ep.runs_failed > 0 && (self.failing() > 0 || reauth > 0 || !ep.circuits.is_empty()) {
            parts.push(plural(ep.runs_failed, "refresh run failed", "refresh runs failed"));
        }
        parts.join("; ")
    }

    fn all_clear(&self) -> String {
        let ep = self.ep;
        let mut text = format!(
            "`{}` is healthy again after failures since {} ({})",
            self.name(),
            clock_time(ep.since, self.now),
            span(self.now - ep.since)
        );
        if ep.count(RECOVERED) > 0 {
            text.push_str(&format!(": {} refreshed again", connections(ep.count(RECOVERED))));
        }
        text.push_str("; circuit closed");
        if ep.count(REAUTH) > 0 {
            let n = connections(ep.count(REAUTH));
            text.push_str(&format!(
                "; {n} lost their grant and need reauthorization (users must reconnect)"
            ));
        }
        text
    }

    fn transient(&self) -> String {
        let ep = self.ep;
        let mut text = format!(
            "{} of `{}` failed between {} and {}{}, and recovered",
            connections(self.failing()),
            self.name(),
            clock_time(ep.since, self.now),
            clock_time(self.now, self.now),
            self.cause_text()
        );
        if ep.count(REAUTH) > 0 {
            text.push_str(&format!(
                "; {} need reauthorization (users must reconnect)",
                ep.count(REAUTH)
            ));
        }
        text
    }
}

fn connections(n: usize) -> String {
    plural(n as u64, "connection", "connections")
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    // An OffsetDateTime in years 0..=9999 always formats; UTC event times are.
    at.format(&Rfc3339).unwrap_or_default()
}

/// `10:02 UTC`, with the date when it is not `now`'s day.
fn clock_time(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    if at.date() == now.to_offset(time::UtcOffset::UTC).date() {
        format!("{:02}:{:02} UTC", at.hour(), at.minute())
    } else {
        format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute())
    }
}

/// `45 s`, `38 min`, `2 h 5 min`.
fn span(d: time::Duration) -> String {
    let secs = d.whole_seconds().max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// The body posted to the operators' webhook for an alert event: a Slack
/// incoming-webhook message (`text` + Block Kit `blocks`) or the generic
/// JSON shape `{type: "thermos.alert", id, at, severity, title, summary,
/// provider, data}`.
pub fn render(event: &NewEvent, format: AlertFormat) -> Value {
    let data = &event.data;
    let severity = data["severity"].as_str().unwrap_or("warning");
    let title = data["title"].as_str().unwrap_or(&event.kind);
    let summary = data["summary"].as_str().unwrap_or_default();
    match format {
        AlertFormat::Json => json!({
            "type": "thermos.alert",
            "id": event.id,
            "at": rfc3339(event.at),
            "severity": severity,
            "title": title,
            "summary": summary,
            "provider": event.provider,
            "data": data,
        }),
        AlertFormat::Slack => {
            let emoji = match severity {
                "critical" => ":rotating_light:",
                "resolved" => ":white_check_mark:",
                _ => ":warning:",
            };
            let mut context = format!("severity *{severity}*");
            if let Some(provider) = &event.provider {
                context.push_str(&format!(" · provider `{}`", slack_escape(provider)));
            }
            context.push_str(&format!(" · {} · `{}`", rfc3339(event.at), event.id));
            json!({
                "text": format!("{emoji} {} — {}", slack_escape(title), slack_escape(summary)),
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{emoji} {title}"), 150), "emoji": true}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": cut(&slack_escape(summary), 3000)}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
                ],
            })
        }
    }
}

/// Slack's mrkdwn control characters.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// At most `max` characters (Slack's block limits).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Reads the event stream and commits aggregated alerts with its cursor.
#[derive(Debug)]
pub struct Aggregator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: AlertSettings,
    /// `None` until built from the store, and after a failed commit.
    live: Mutex<Option<Live>>,
}

#[derive(Debug)]
struct Live {
    book: AlertBook,
    committed: i64,
}

impl Aggregator {
    /// An aggregator; it rebuilds its state from the store on its first tick.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, settings: AlertSettings) -> Self {
        Self {
            store,
            clock,
            settings,
            live: Mutex::new(None),
        }
    }

    /// One step at `now`: reads new events (bounded), commits the alerts due
    /// with the new cursor in one transaction. Returns how many alerts.
    pub async fn tick(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let mut guard = self.live.lock().await;
        let live = match guard.take() {
            Some(live) => guard.insert(live),
            None => guard.insert(self.rebuild().await?),
        };
        for _ in 0..MAX_PAGES_PER_TICK {
            let page = self.store.events_after(live.book.read_seq(), PAGE_SIZE).await?;
            for record in &page {
                live.book.observe(record);
            }
            if page.len() < PAGE_SIZE as usize {
                break;
            }
        }
        let health = if live.book.is_quiet() {
            Health::default()
        } else {
            Health::from_counts(&self.store.count_by_status().await?)
        };
        let alerts = live.book.decide(now, &health);
        let cursor = live.book.cursor();
        if alerts.is_empty() && cursor == live.committed {
            return Ok(0);
        }
        let count = alerts.len();
        let titles: Vec<(Option<String>, String)> = alerts
            .iter()
            .map(|a| {
                (
                    a.provider.clone(),
                    a.data["title"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if let Err(e) = self.store.commit_alerts(alerts, CURSOR_NAME, cursor).await {
            // The book already counts these alerts as sent: rebuild it.
            *guard = None;
            return Err(e);
        }
        live.committed = cursor;
        for (provider, title) in titles {
            info!(provider = provider.as_deref().unwrap_or(""), title = %title, "operator alert");
        }
        Ok(count)
    }

    /// Ticks every half window until `cancel` fires.
    pub async fn drive(&self, cancel: CancellationToken) {
        let every = self.settings.tick_every();
        let mut errors = 0u32;
        loop {
            let pause = match self.tick(self.clock.now()).await {
                Ok(_) => {
                    errors = 0;
                    every
                }
                Err(e) => {
                    errors = errors.saturating_add(1);
                    error!(error.message = %e, error.chain = %error_chain(&e), "alert tick failed");
                    (every * errors.min(10)).min(Duration::from_secs(300))
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The book as the committed cursor and the alerts after it say.
    async fn rebuild(&self) -> Result<Live, StoreError> {
        let cursor = self.store.get_cursor(CURSOR_NAME).await?;
        let mut alerts = Vec::new();
        let mut seq = cursor;
        loop {
            let page = self.store.events_after(seq, PAGE_SIZE).await?;
            let Some(last) = page.last() else { break };
            seq = last.seq;
            let full = page.len() == PAGE_SIZE as usize;
            alerts.extend(page.into_iter().filter(|r| r.event.kind == ALERT_KIND));
            if !full {
                break;
            }
        }
        alerts.sort_by_key(|a| (through_seq(&a.event).unwrap_or(a.seq - 1), a.seq));
        let mut alerts = VecDeque::from(alerts);
        let mut book = AlertBook::new(self.settings.clone(), cursor);
        loop {
            let page = self.store.events_after(book.read_seq(), PAGE_SIZE).await?;
            book.replay_page(&page, &mut alerts);
            if page.len() < PAGE_SIZE as usize {
                break;
            }
        }
        for alert in alerts {
            book.apply_alert(&alert.event);
        }
        Ok(Live {
            book,
            committed: cursor,
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    chain
}

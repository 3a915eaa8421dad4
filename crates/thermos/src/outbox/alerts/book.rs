//! The aggregation state machine: [`AlertBook`] folds the event stream into
//! one episode per provider and decides which alerts are due at a time.
//!
//! Pure: no IO, no clock (`now` and the store's [`Health`] are inputs), so
//! it is tested without a store and rebuilt after a crash by replaying.
//! It never words an alert itself: `wording.rs` does.
//!
//! Read next: `wording.rs` (what an alert says), `mod.rs` (the aggregator).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde_json::Value;
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::StatusCount;
use thermos_store::outbox::{ALERT_KIND, EventRecord, NewEvent};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AlertSettings;
use super::wording::build_alert;

/// An episode still gathering whose last event is older than this is old
/// news (the aggregator was not running): dropped without an alert.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

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

    pub(super) fn is_critical(self) -> bool {
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

    pub(super) fn ends_episode(self) -> bool {
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
pub(super) struct Cause {
    pub(super) code: String,
    pub(super) http_status: Option<u64>,
}

/// The kinds of connection events counted per episode (`data.by_kind`).
pub(super) const FAILED: &str = "refresh_failed";
pub(super) const ESCALATED: &str = "failing";
pub(super) const RECOVERING: &str = "recovering";
pub(super) const REAUTH: &str = "needs_reauth";
pub(super) const RECOVERED: &str = "recovered";
/// Kinds that make a connection "affected".
pub(super) const AFFECTED_KINDS: [&str; 4] = [FAILED, ESCALATED, RECOVERING, REAUTH];

/// One provider's open episode.
#[derive(Debug, Clone)]
pub(super) struct Episode {
    /// Stream position of its first event (the cursor stays before it).
    start_seq: i64,
    pub(super) since: OffsetDateTime,
    last_event_at: OffsetDateTime,
    /// Distinct connections by kind.
    by_kind: BTreeMap<&'static str, HashSet<ConnectionId>>,
    /// Connections whose last event in the episode was a failure.
    still_failing: HashSet<ConnectionId>,
    /// Signals seen from connection events and runs (sticky for the episode).
    seen: BTreeSet<Signal>,
    pub(super) causes: HashMap<Cause, u64>,
    pub(super) reauth_causes: HashMap<Cause, u64>,
    /// Open circuits: client id → reason.
    pub(super) circuits: BTreeMap<String, String>,
    /// Rejected clients: client id → error code.
    pub(super) invalid_clients: BTreeMap<String, String>,
    pub(super) runs_failed: u64,
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
    pub(super) fn signals(&self) -> BTreeSet<Signal> {
        let mut signals = self.seen.clone();
        if !self.circuits.is_empty() {
            signals.insert(Signal::CircuitOpen);
        }
        if !self.invalid_clients.is_empty() {
            signals.insert(Signal::ClientInvalid);
        }
        signals
    }

    pub(super) fn count(&self, kind: &str) -> usize {
        self.by_kind.get(kind).map_or(0, HashSet::len)
    }

    /// Distinct connections over `kinds`.
    pub(super) fn distinct(&self, kinds: &[&str]) -> usize {
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

pub(super) fn through_seq(alert: &NewEvent) -> Option<i64> {
    alert.data["through_seq"].as_i64()
}

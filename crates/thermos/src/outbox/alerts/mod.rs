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
//! Files: `book.rs` (the pure state machine), `wording.rs` (an alert's
//! title, summary and data, and [`render`]); this file drives them.
//!
//! Read next: `book.rs`, then `dispatch.rs` (sending), `engine/events.rs`
//! (what the engine writes).

mod book;
mod wording;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use thermos_core::clock::Clock;
use thermos_store::outbox::ALERT_KIND;
use thermos_store::{Store, StoreError};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use self::book::through_seq;
pub use self::book::{AlertBook, Health, STALE_AFTER, Signal, Transition};
pub use self::wording::render;
use crate::config::{AlertsConfig, DEFAULT_ESCALATE_AFTER};

/// Default aggregation window: one alert per provider per window at most.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The name of the aggregator's cursor in the store.
pub const CURSOR_NAME: &str = "alerts";
/// Events read per `events_after` call.
pub const PAGE_SIZE: u32 = 1_000;
/// Pages read per tick at most (a tick stays bounded while catching up).
pub const MAX_PAGES_PER_TICK: u32 = 50;

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
    /// The settings of an `[alerts]` section.
    pub fn from_config(config: &AlertsConfig) -> Self {
        Self {
            window: config.window,
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

//! The audit log's writer: who fetched which token and who changed what,
//! appended to the store's append-only `audit_log` in batches.
//!
//! A token read must not cost a database write of its own (the token API
//! serves thousands a second), so reads are queued and folded: equal reads
//! (same key, connection, client address and answer) within one flush
//! become one entry with a count and the first and last time. The queue is
//! written every [`FLUSH_EVERY`], or sooner when it grows: small, frequent
//! batches keep the one SQLite writer's work even (a batch a second of
//! 10,000 distinct reads showed in the token API's tail latency). A change (an
//! import, a delete, a new key…) is written before its answer goes out: the
//! caller waits for the batch that holds it. A graceful stop writes what is
//! queued; a crash can lose at most the reads of the last flush interval.
//!
//! Entries carry key ids, resource ids, addresses and statuses, never a
//! secret (see `docs/security.md`).

pub mod middleware;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thermos_core::clock::Clock;
use thermos_store::Store;
use thermos_store::audit::{MAX_FIELD_LEN, NewAuditEntry};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How often queued reads are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Queued (folded) reads that make the writer flush at once.
const FLUSH_AT: usize = 1024;

/// Entries kept while the database refuses them; beyond, the oldest are
/// dropped (and counted in a log line) rather than growing without bound.
const MAX_UNWRITTEN: usize = 100_000;

/// Messages queued for the writer. When it is full a token read is not
/// waited for (the token API must not stall behind the audit log): it is
/// counted, and the count is written to the log as an `audit.reads_dropped`
/// entry with the next batch. Changes wait for room.
const CHANNEL_CAPACITY: usize = 65_536;

/// The actor of entries Thermos writes about the audit log itself.
pub const SELF_ACTOR: &str = "thermos";

/// What one request did, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    /// The acting key's public id (`admin` for the admin key).
    pub actor: String,
    pub actor_project: Option<String>,
    /// e.g. `token.read`, `connection.delete`.
    pub action: String,
    pub target: Option<String>,
    pub client: Option<String>,
    pub request_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
}

enum Message {
    Read(NewAuditEntry),
    Change(NewAuditEntry, oneshot::Sender<bool>),
    Flush(oneshot::Sender<bool>),
}

/// The handle requests record through; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Message>,
    clock: Arc<dyn Clock>,
    /// Token reads not queued because the queue was full, not yet recorded.
    dropped: Arc<AtomicU64>,
    writer: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Read(_) => "Read",
            Self::Change(..) => "Change",
            Self::Flush(_) => "Flush",
        })
    }
}

impl AuditLog {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::start_with(store, clock, FLUSH_EVERY)
    }

    /// [`AuditLog::start`] with another flush interval (tests).
    pub fn start_with(store: Arc<dyn Store>, clock: Arc<dyn Clock>, flush_every: Duration) -> Self {
        Self::start_bounded(store, clock, flush_every, CHANNEL_CAPACITY)
    }

    /// [`AuditLog::start_with`] with another queue size (tests of a full queue).
    pub fn start_bounded(store: Arc<dyn Store>, clock: Arc<dyn Clock>, flush_every: Duration, capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer =
            tokio::spawn(Writer::new(store, Arc::clone(&clock), Arc::clone(&dropped)).run(receiver, flush_every));
        Self {
            sender,
            clock,
            dropped,
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
        }
    }

    /// Queues a token read (folded with equal ones, written within the
    /// flush interval). Never waits: with the queue full the read is only
    /// counted (see [`CHANNEL_CAPACITY`]).
    pub fn read(&self, occurrence: Occurrence) {
        let entry = self.entry(occurrence);
        match self.sender.try_send(Message::Read(entry)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::AUDIT_READS_DROPPED_TOTAL).increment(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit log writer stopped: a token read was not recorded");
            }
        }
    }

    /// Records a change and waits until it is written; false (and an error
    /// logged) if it could not be.
    pub async fn change(&self, occurrence: Occurrence) -> bool {
        let entry = self.entry(occurrence);
        let (ack, written) = oneshot::channel();
        if self.sender.send(Message::Change(entry, ack)).await.is_err() {
            tracing::error!("audit log writer stopped: a change was not recorded");
            return false;
        }
        written.await.unwrap_or(false)
    }

    /// Writes everything queued; true if it all was.
    pub async fn flush(&self) -> bool {
        let (ack, written) = oneshot::channel();
        if self.sender.send(Message::Flush(ack)).await.is_err() {
            return false;
        }
        written.await.unwrap_or(false)
    }

    /// Writes what is queued and stops the writer (a graceful stop). Records
    /// made after this are lost (and logged as such).
    pub async fn close(&self) {
        self.flush().await;
        let writer = self.writer.lock().expect("audit writer slot").take();
        if let Some(writer) = writer {
            writer.abort();
            let _ = writer.await;
        }
    }

    fn entry(&self, o: Occurrence) -> NewAuditEntry {
        let now = self.clock.now();
        NewAuditEntry {
            at: now,
            first_at: now,
            actor: cut(o.actor),
            actor_project: o.actor_project.map(cut),
            action: cut(o.action),
            target: o.target.map(cut),
            client: o.client.map(cut),
            request_id: o.request_id.map(cut),
            status: o.status,
            count: 1,
        }
    }
}

/// At most [`MAX_FIELD_LEN`] bytes, cut at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_FIELD_LEN {
        let mut end = MAX_FIELD_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Equal reads fold into one entry: same key, action, connection, client
/// address and status.
type FoldKey = (String, String, Option<String>, Option<String>, u16);

struct Writer {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Shared with the handles: reads they could not queue.
    dropped: Arc<AtomicU64>,
    /// Folded reads, in the order their first occurrence arrived.
    reads: Vec<NewAuditEntry>,
    read_index: HashMap<FoldKey, usize>,
    /// Changes and entries a failed write left, in arrival order.
    unwritten: Vec<NewAuditEntry>,
    waiting: Vec<oneshot::Sender<bool>>,
}

impl Writer {
    fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, dropped: Arc<AtomicU64>) -> Self {
        Self {
            store,
            clock,
            dropped,
            reads: Vec::new(),
            read_index: HashMap::new(),
            unwritten: Vec::new(),
            waiting: Vec::new(),
        }
    }

    async fn run(mut self, mut receiver: mpsc::Receiver<Message>, flush_every: Duration) {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = receiver.recv() => {
                    let Some(message) = message else {
                        self.write().await;
                        return;
                    };
                    let mut now = self.take(message);
                    // Whatever else is queued joins this batch.
                    while let Ok(message) = receiver.try_recv() {
                        now |= self.take(message);
                    }
                    if now || self.reads.len() >= FLUSH_AT {
                        self.write().await;
                    }
                }
                _ = tick.tick() => {
                    if !self.reads.is_empty() || !self.unwritten.is_empty() || self.dropped.load(Ordering::Relaxed) > 0 {
                        self.write().await;
                    }
                }
            }
        }
    }

    /// Takes one message; true if it asks for a write now.
    fn take(&mut self, message: Message) -> bool {
        match message {
            Message::Read(entry) => {
                self.fold(entry);
                false
            }
            Message::Change(entry, ack) => {
                self.unwritten.push(entry);
                self.waiting.push(ack);
                true
            }
            Message::Flush(ack) => {
                self.waiting.push(ack);
                true
            }
        }
    }

    fn fold(&mut self, entry: NewAuditEntry) {
        let key = (
            entry.actor.clone(),
            entry.action.clone(),
            entry.target.clone(),
            entry.client.clone(),
            entry.status,
        );
        match self.read_index.get(&key) {
            Some(&at) => {
                let folded = &mut self.reads[at];
                folded.at = entry.at;
                folded.request_id = entry.request_id;
                folded.count = folded.count.saturating_add(1);
            }
            None => {
                self.read_index.insert(key, self.reads.len());
                self.reads.push(entry);
            }
        }
    }

    /// Writes everything held, in time order, and answers the waiters.
    async fn write(&mut self) {
        self.read_index.clear();
        let mut batch = std::mem::take(&mut self.unwritten);
        batch.append(&mut self.reads);
        batch.sort_by_key(|e| e.first_at);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::error!(dropped, "the audit log fell behind: token reads were not recorded");
            let now = self.clock.now();
            batch.push(NewAuditEntry {
                at: now,
                first_at: now,
                actor: SELF_ACTOR.to_owned(),
                actor_project: None,
                action: "audit.reads_dropped".to_owned(),
                target: None,
                client: None,
                request_id: None,
                status: 0,
                count: u32::try_from(dropped).unwrap_or(u32::MAX),
            });
        }
        let written = batch.is_empty() || self.store.append_audit(batch.clone()).await.is_ok();
        if !written {
            let dropped = batch.len().saturating_sub(MAX_UNWRITTEN);
            if dropped > 0 {
                batch.drain(..dropped);
            }
            tracing::error!(
                entries = batch.len(),
                dropped,
                "could not write the audit log; keeping the entries to retry"
            );
            self.unwritten = batch;
        }
        for ack in self.waiting.drain(..) {
            let _ = ack.send(written);
        }
    }
}

#[cfg(test)]
mod tests;

//! Group commit of refresh successes, for both backends.
//!
//! Committed one by one, a refresh success costs several statements, each a
//! round trip to the database (on SQLite, a hand-off to the one writer
//! connection's thread, which every write waits for; on PostgreSQL, a
//! network round trip), and the database, not the provider, limits how many
//! refreshes per second the engine completes.
//!
//! Here [`Store::finish_refresh`](crate::Store::finish_refresh) hands its
//! result to one committer task per store, which takes everything queued
//! meanwhile (up to [`MAX_BATCH`]) and has the backend's [`Committer`]
//! commit it in one transaction of a fixed number of statements whatever the
//! batch size (`sqlite/finish_batch.rs`, `postgres/finish_batch.rs`). Nobody
//! waits for a batch to fill: a lone result is committed at once, and results
//! arriving while a batch commits form the next one.
//!
//! Per result, the outcome is exactly that of committing it alone: its
//! attempt is recorded (if the connection still exists), its update applies
//! only at its expected version, its events are written only if it applied,
//! and a batch never holds two results for one connection (a second one waits
//! for the next batch, so it sees the first one's version). If the batch
//! transaction fails, nothing of it was written, and every result is retried
//! alone so that one bad result fails only its own caller.

use std::collections::{HashSet, VecDeque};

use async_trait::async_trait;
use thermos_core::id::ConnectionId;
use tokio::sync::{mpsc, oneshot};

use crate::outbox::NewEvent;
use crate::{FinishOutcome, NewAttempt, StoreError, StoreResult, TokenUpdate};

/// The most results committed in one transaction (SQLite binds nine values
/// each: far below its limit of 32,766 per statement).
pub(crate) const MAX_BATCH: usize = 256;

/// A backend's two ways of committing refresh successes.
#[async_trait]
pub(crate) trait Committer: Send + Sync + 'static {
    /// Commits all of `finishes` (at most one per connection) in one
    /// transaction; their outcomes in the same order. On error nothing of
    /// them is written.
    async fn commit_together(&self, finishes: &[Finish]) -> StoreResult<Vec<FinishOutcome>>;

    /// Commits `finish` in a transaction of its own.
    async fn commit_alone(&self, finish: Finish) -> StoreResult<FinishOutcome>;
}

/// A refresh success waiting to be committed.
#[derive(Debug)]
pub(crate) struct Finish {
    pub id: ConnectionId,
    pub expected_version: i64,
    pub tokens: TokenUpdate,
    pub attempt: NewAttempt,
    pub events: Vec<NewEvent>,
}

#[derive(Debug)]
struct Job {
    finish: Finish,
    reply: oneshot::Sender<StoreResult<FinishOutcome>>,
}

/// The committer's queue. Cheap to clone; the committer task ends when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the committer task on the current Tokio runtime. `committer`
    /// must not hold the store itself (the task would keep itself alive).
    pub(crate) fn start(committer: impl Committer) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(committer, queue));
        Self { jobs }
    }

    /// Commits `finish` in the next batch and returns its outcome.
    pub(crate) async fn finish(&self, finish: Finish) -> StoreResult<FinishOutcome> {
        let (reply, outcome) = oneshot::channel();
        // Either side gone means the committer stopped: its runtime is
        // shutting down, as good as a closed pool.
        self.jobs
            .send(Job { finish, reply })
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        outcome
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
    }
}

/// The committer: takes what is queued, commits it, answers, repeats.
async fn run(committer: impl Committer, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut waiting = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        while waiting.len() < MAX_BATCH * 2 {
            match queue.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        let batch = take_batch(&mut waiting);
        commit(&committer, batch).await;
    }
}

/// Up to [`MAX_BATCH`] jobs from the front of `waiting`, at most one per
/// connection; the others keep their order for the next batch.
fn take_batch(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let mut batch = Vec::with_capacity(waiting.len().min(MAX_BATCH));
    let mut ids = HashSet::new();
    let mut later = VecDeque::new();
    while batch.len() < MAX_BATCH
        && let Some(job) = waiting.pop_front()
    {
        if ids.insert(job.finish.id) {
            batch.push(job);
        } else {
            later.push_back(job);
        }
    }
    later.append(waiting);
    *waiting = later;
    batch
}

/// Commits `batch` in one transaction and answers every job; on failure,
/// commits each job alone.
async fn commit(committer: &impl Committer, batch: Vec<Job>) {
    let (finishes, replies): (Vec<Finish>, Vec<_>) = batch.into_iter().map(|job| (job.finish, job.reply)).unzip();
    match committer.commit_together(&finishes).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up no longer needs its answer.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::debug!(%error, results = finishes.len(), "group commit failed; committing each result alone");
            for (reply, finish) in replies.into_iter().zip(finishes) {
                let _ = reply.send(committer.commit_alone(finish).await);
            }
        }
    }
}

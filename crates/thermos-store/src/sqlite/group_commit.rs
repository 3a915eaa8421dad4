//! Group commit of refresh successes on SQLite.
//!
//! Every write on SQLite goes through the one writer connection, and every
//! statement is a round trip from the async runtime to that connection's
//! worker thread and back. Committed one by one, a refresh success costs four
//! of them (`BEGIN IMMEDIATE`, the attempt, the update, `COMMIT`) and holds
//! the writer meanwhile, so the writer, not the provider, limits how many
//! refreshes per second the engine completes.
//!
//! Here [`Store::finish_refresh`](crate::Store::finish_refresh) hands its
//! result to one committer task, which takes everything queued meanwhile (up
//! to [`MAX_BATCH`]) and commits it in one transaction of four statements
//! whatever the batch size: one multi-row insert of the attempts, one
//! `UPDATE … FROM (VALUES …)` that applies every result whose version still
//! matches, the events of those that did, and `COMMIT`. Nobody waits for a
//! batch to fill: a lone result is committed at once, and results arriving
//! while a batch commits form the next one.
//!
//! Per result, the outcome is exactly that of committing it alone: its
//! attempt is recorded (if the connection still exists), its update applies
//! only at its expected version, its events are written only if it applied,
//! and a batch never holds two results for one connection (a second one waits
//! for the next batch, so it sees the first one's version). If the batch
//! transaction fails, nothing of it was written, and every result is retried
//! alone so that one bad result fails only its own caller.

use std::collections::{HashMap, HashSet, VecDeque};

use sqlx::SqlitePool;
use thermos_core::id::ConnectionId;
use tokio::sync::{mpsc, oneshot};

use super::outbox::write_events;
use super::refresh::finish;
use super::row::{self, CONNECTION_COLUMNS};
use crate::outbox::NewEvent;
use crate::{FinishOutcome, NewAttempt, StoreError, StoreResult, TokenUpdate};

/// The most results committed in one transaction (nine bound values each:
/// far below SQLite's limit of 32,766 per statement).
pub(super) const MAX_BATCH: usize = 256;

/// A refresh success waiting to be committed.
#[derive(Debug)]
pub(super) struct Finish {
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
pub(super) struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the committer task on the current Tokio runtime, committing
    /// through `writer` (the store's one-connection writer pool).
    pub(super) fn start(writer: SqlitePool) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(writer, queue));
        Self { jobs }
    }

    /// Commits `finish` in the next batch and returns its outcome.
    pub(super) async fn finish(&self, finish: Finish) -> StoreResult<FinishOutcome> {
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
async fn run(writer: SqlitePool, mut queue: mpsc::UnboundedReceiver<Job>) {
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
        commit(&writer, batch).await;
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
async fn commit(writer: &SqlitePool, batch: Vec<Job>) {
    let (finishes, replies): (Vec<Finish>, Vec<_>) = batch.into_iter().map(|job| (job.finish, job.reply)).unzip();
    match commit_together(writer, &finishes).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that gave up no longer needs its answer.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(error) => {
            tracing::debug!(%error, results = finishes.len(), "group commit failed; committing each result alone");
            for (reply, finish_one) in replies.into_iter().zip(finishes) {
                let Finish {
                    id,
                    expected_version,
                    tokens,
                    attempt,
                    events,
                } = finish_one;
                let _ = reply.send(finish(writer, id, expected_version, tokens, attempt, events).await);
            }
        }
    }
}

/// The batch's transaction: attempts, updates, events, in four statements
/// however many results. Outcomes in the order of `finishes`.
async fn commit_together(writer: &SqlitePool, finishes: &[Finish]) -> StoreResult<Vec<FinishOutcome>> {
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;

    let insert_sql = insert_attempts_sql(finishes.len());
    let mut insert = sqlx::query(&insert_sql);
    for finish in finishes {
        let attempt = &finish.attempt;
        insert = insert
            .bind(finish.id.to_string())
            .bind(row::millis(attempt.started_at))
            .bind(&attempt.trigger)
            .bind(&attempt.outcome)
            .bind(&attempt.error_code)
            .bind(attempt.http_status.map(i64::from))
            // A duration beyond i64 milliseconds (292 million years) saturates.
            .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX));
    }
    insert.execute(&mut *tx).await?;

    let update_sql = update_sql(finishes.len());
    let mut update = sqlx::query(&update_sql);
    for finish in finishes {
        let tokens = &finish.tokens;
        update = update
            .bind(finish.id.to_string())
            .bind(finish.expected_version)
            .bind(tokens.access_token.as_bytes())
            .bind(tokens.refresh_token.as_ref().map(|t| t.as_bytes()))
            .bind(&tokens.token_type)
            .bind(&tokens.scope)
            .bind(row::millis(tokens.issued_at))
            .bind(row::millis(tokens.expires_at))
            .bind(row::millis(tokens.next_refresh_at));
    }
    let mut updated = HashMap::with_capacity(finishes.len());
    for returned in update.fetch_all(&mut *tx).await? {
        let record = row::connection(&returned)?;
        updated.insert(record.id, record);
    }

    let events: Vec<NewEvent> = finishes
        .iter()
        .filter(|finish| updated.contains_key(&finish.id))
        .flat_map(|finish| finish.events.iter().cloned())
        .collect();
    write_events(&mut tx, &events).await?;
    tx.commit().await?;

    Ok(finishes
        .iter()
        .map(|finish| match updated.remove(&finish.id) {
            Some(record) => FinishOutcome::Committed(record),
            None => FinishOutcome::VersionChanged,
        })
        .collect())
}

/// `(?, …)` `rows` times, each of `columns` placeholders.
fn values(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Records the attempts of connections that still exist; the trigger
/// `refresh_attempts_keep_newest` prunes each one's log.
fn insert_attempts_sql(rows: usize) -> String {
    format!(
        r#"INSERT INTO refresh_attempts (connection_id, started_at, "trigger", outcome, error_code, http_status, duration_ms)
           SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7
           FROM (VALUES {}) AS v
           WHERE EXISTS (SELECT 1 FROM connections c WHERE c.id = v.column1)"#,
        values(rows, 7)
    )
}

/// Applies each result whose connection is still at its expected version,
/// returning the updated rows. The same changes as a single
/// [`finish`](super::refresh::finish).
fn update_sql(rows: usize) -> String {
    format!(
        "UPDATE connections SET access_token = v.column3, refresh_token = COALESCE(v.column4, connections.refresh_token), \
           token_type = v.column5, scope = COALESCE(v.column6, connections.scope), issued_at = v.column7, \
           expires_at = v.column8, next_refresh_at = v.column9, status = 'active', consecutive_failures = 0, \
           last_error_code = NULL, last_error_message = NULL, last_error_http_status = NULL, last_error_at = NULL, \
           refresh_count = connections.refresh_count + 1, last_refreshed_at = v.column7, \
           version = connections.version + 1, lease_owner = NULL, lease_until = NULL, updated_at = v.column7 \
         FROM (VALUES {}) AS v \
         WHERE connections.id = v.column1 AND connections.version = v.column2 \
         RETURNING {CONNECTION_COLUMNS}",
        values(rows, 9)
    )
}

//! Runs: bulk refreshes of the connections matching a filter.
//!
//! A run selects its connections (bounded pages of `list_connections`, or
//! the ids it names), refreshes them in batches through the single-flight
//! path at background priority (so a run never sends a refresh token twice at once, and provider
//! limits apply inside), counts the outcomes, records them after each batch
//! (where it also notices a cancellation), beats its heartbeat at a quarter
//! of `stale_after` even while a batch hangs, and ends `succeeded` or
//! `failed` (more than `failure_threshold` of the attempts failed), its
//! `run.*` event committed with the end. It never decides a connection's
//! state: each refresh does, as any forced refresh would.
//!
//! The scheduled sweep ([`Engine::sweep`]) is a run over the connections
//! whose planned refresh is overdue: a safety net that records a run only
//! when it finds something.
//!
//! Read next: `flight.rs` (single flight), `api/runs.rs`, `cli/refresh.rs`.

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::outbox::NewEvent;
use thermos_store::run::{FailuresByCode, NewRun, RunCounts, RunRecord, RunStatus};
use thermos_store::{ConnectionFilter, ConnectionRecord, StoreResult};

use super::flight::{Flight, RefreshFailure};
use super::{Engine, Trigger, events};

/// Connections refreshed at once by a run (provider limits apply inside).
pub const RUN_BATCH: usize = 16;
/// Most connections one run selects.
pub const MAX_RUN_CONNECTIONS: usize = 100_000;
/// Connections read per page while selecting.
const SELECT_PAGE: u32 = 500;

/// Which connections a run refreshes (all conditions together).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub provider: Option<String>,
    pub project: Option<String>,
    pub status: Option<ConnectionStatus>,
    /// Only connections whose access token expires within this.
    pub expiring_within: Option<Duration>,
    /// Only connections whose planned refresh is at least this late.
    pub overdue_by: Option<Duration>,
    /// Only these connections (all matching ones when empty).
    pub connection_ids: Vec<ConnectionId>,
}

impl RunFilter {
    /// The filter as recorded with the run.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "provider": self.provider,
            "project": self.project,
            "status": self.status.map(|s| s.as_str()),
            "expiring_within_seconds": self.expiring_within.map(|d| d.as_secs()),
            "overdue_by_seconds": self.overdue_by.map(|d| d.as_secs()),
            "connection_ids": self.connection_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    fn matches(&self, record: &ConnectionRecord, now: time::OffsetDateTime) -> bool {
        self.provider.as_ref().is_none_or(|p| *p == record.provider)
            && self.project.as_ref().is_none_or(|p| *p == record.project)
            && self.status.is_none_or(|s| s == record.status)
            && self
                .expiring_within
                .is_none_or(|within| record.expires_at <= now + within)
            && self.overdue_by.is_none_or(|late| {
                record.status.is_scheduled() && record.next_refresh_at.is_some_and(|due| due <= now - late)
            })
    }

    /// Whether a run attempts `record`: a connection that needs reauth or
    /// is disabled is counted as skipped (its grant would fail again)
    /// unless the filter asks for that status by name.
    fn attempts(&self, record: &ConnectionRecord) -> bool {
        record.status.is_scheduled() || self.status == Some(record.status)
    }
}

/// How a run's batches ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Done,
    Cancelled,
    /// The run is no longer `running` (marked stale, say): leave it as it is.
    Elsewhere,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one refresh of a run ended with.
enum Tally {
    Succeeded,
    Failed(String),
    Skipped,
}

impl Engine {
    /// Records a new `running` run (nothing is refreshed yet; see
    /// [`Engine::execute_run`]).
    pub async fn create_run(
        &self,
        filter: &RunFilter,
        trigger: &str,
        failure_threshold: f64,
    ) -> StoreResult<RunRecord> {
        let new = NewRun {
            id: format!("run_{}", uuid::Uuid::now_v7().simple()),
            trigger: trigger.to_owned(),
            filter: filter.to_json(),
            failure_threshold,
            owner: self.settings().owner.clone(),
            started_at: super::truncate_ms(self.now()),
        };
        self.store().insert_run(new).await
    }

    /// Records a run and executes it on a spawned task; returns the run as
    /// it started.
    pub async fn start_run(&self, filter: RunFilter, trigger: &str, failure_threshold: f64) -> StoreResult<RunRecord> {
        let run = self.create_run(&filter, trigger, failure_threshold).await?;
        let engine = self.clone();
        let started = run.clone();
        tokio::spawn(async move {
            let id = started.id.clone();
            if let Err(e) = engine.execute_run(started, filter, |_| {}).await {
                tracing::error!(run_id = %id, error.message = %e, "run failed to complete");
            }
        });
        Ok(run)
    }

    /// Marks running runs whose heartbeat is older than `stale_after` as
    /// failed and stale; returns how many.
    pub async fn mark_stale_runs(&self) -> StoreResult<u64> {
        let now = self.now();
        let marked = self
            .store()
            .mark_stale_runs(now - self.settings().run_stale_after, now)
            .await?;
        if marked > 0 {
            tracing::warn!(runs = marked, "runs whose process died were marked stale");
        }
        Ok(marked)
    }

    /// One sweep: a `sweep` run over the scheduled connections whose planned
    /// refresh is at least `overdue_by` late. Records nothing and returns
    /// `None` when there are none (the scheduler is keeping up).
    pub async fn sweep(&self, overdue_by: Duration) -> StoreResult<Option<RunRecord>> {
        let filter = RunFilter {
            overdue_by: Some(overdue_by),
            ..RunFilter::default()
        };
        let ids = self.select(&filter).await?;
        if ids.is_empty() {
            tracing::debug!("sweep found no overdue connection");
            return Ok(None);
        }
        tracing::warn!(
            connections = ids.len(),
            "sweep found overdue connections; refreshing them"
        );
        let run = self
            .create_run(&filter, "sweep", self.settings().failure_threshold)
            .await?;
        self.work_run(run, filter, ids, |_| {}).await.map(Some)
    }

    /// Works through `run` to its end, calling `progress` after each batch;
    /// returns the finished run (or the run as it stands if it was ended
    /// elsewhere, e.g. marked stale).
    pub async fn execute_run(
        &self,
        run: RunRecord,
        filter: RunFilter,
        progress: impl Fn(&RunCounts),
    ) -> StoreResult<RunRecord> {
        let ids = self.select(&filter).await?;
        self.work_run(run, filter, ids, progress).await
    }

    /// The batches of a run, with its heartbeat beating beside them.
    async fn work_run(
        &self,
        run: RunRecord,
        filter: RunFilter,
        ids: Vec<(ConnectionId, bool)>,
        progress: impl Fn(&RunCounts),
    ) -> StoreResult<RunRecord> {
        let tally = Mutex::new((
            RunCounts {
                total: ids.len() as u64,
                ..RunCounts::default()
            },
            FailuresByCode::new(),
        ));
        let batches = async {
            for batch in ids.chunks(RUN_BATCH) {
                let outcomes =
                    join_all(batch.iter().map(|&(id, attempt)| async move {
                        if attempt { self.tally(id).await } else { Tally::Skipped }
                    }))
                    .await;
                let (counts, failures) = {
                    let mut tally = lock(&tally);
                    for outcome in outcomes {
                        match outcome {
                            Tally::Succeeded => tally.0.succeeded += 1,
                            Tally::Skipped => tally.0.skipped += 1,
                            Tally::Failed(code) => {
                                tally.0.failed += 1;
                                *tally.1.entry(code).or_default() += 1;
                            }
                        }
                    }
                    tally.clone()
                };
                progress(&counts);
                match self
                    .store()
                    .update_run_progress(&run.id, counts, failures, self.now())
                    .await?
                {
                    None => return Ok(Ended::Elsewhere),
                    Some(current) if current.cancel_requested => return Ok(Ended::Cancelled),
                    Some(_) => {}
                }
            }
            StoreResult::Ok(Ended::Done)
        };
        let ended = tokio::select! {
            ended = batches => ended?,
            never = self.beat(&run.id, &tally) => match never {},
        };
        if ended == Ended::Elsewhere {
            return Ok(self.store().get_run(&run.id).await?.unwrap_or(run));
        }
        let (counts, failures) = lock(&tally).clone();
        let attempted = counts.succeeded + counts.failed;
        let status = if ended == Ended::Cancelled {
            RunStatus::Cancelled
        } else if attempted > 0 && counts.failed as f64 / attempted as f64 > run.failure_threshold {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        let now = super::truncate_ms(self.now());
        let events = run_event(&run, &filter, status, counts, &failures, now);
        let finished = self
            .store()
            .finish_run(&run.id, status, counts, failures, now, events)
            .await?;
        self.events_committed();
        tracing::info!(run_id = %run.id, status = status.as_str(), total = counts.total,
            succeeded = counts.succeeded, failed = counts.failed, skipped = counts.skipped, "run finished");
        match finished {
            Some(record) => Ok(record),
            None => Ok(self.store().get_run(&run.id).await?.unwrap_or(run)),
        }
    }

    /// Beats the run's heartbeat (with its counts so far) at a quarter of
    /// `stale_after`, forever; a failed beat is logged and retried at the
    /// next one.
    async fn beat(&self, run_id: &str, tally: &Mutex<(RunCounts, FailuresByCode)>) -> Infallible {
        let every = self.settings().run_stale_after / 4;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (counts, failures) = lock(tally).clone();
            if let Err(e) = self
                .store()
                .update_run_progress(run_id, counts, failures, self.now())
                .await
            {
                tracing::warn!(run_id, error.message = %e, "run heartbeat failed");
            }
        }
    }

    /// The ids a run selects, in id order, at most [`MAX_RUN_CONNECTIONS`],
    /// each with whether it is attempted (see [`RunFilter::attempts`]).
    async fn select(&self, filter: &RunFilter) -> StoreResult<Vec<(ConnectionId, bool)>> {
        let now = self.now();
        let mut ids = Vec::new();
        if !filter.connection_ids.is_empty() {
            for id in filter.connection_ids.iter().take(MAX_RUN_CONNECTIONS) {
                if let Some(record) = self.store().get_connection(*id).await?
                    && filter.matches(&record, now)
                {
                    ids.push((record.id, filter.attempts(&record)));
                }
            }
            return Ok(ids);
        }
        let store_filter = ConnectionFilter {
            project: filter.project.clone(),
            provider: filter.provider.clone(),
            status: filter.status,
        };
        let mut after = None;
        while ids.len() < MAX_RUN_CONNECTIONS {
            let page = self.store().list_connections(&store_filter, after, SELECT_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let full = page.len() == SELECT_PAGE as usize;
            ids.extend(
                page.iter()
                    .filter(|r| filter.matches(r, now))
                    .map(|r| (r.id, filter.attempts(r))),
            );
            if !full {
                break;
            }
        }
        ids.truncate(MAX_RUN_CONNECTIONS);
        Ok(ids)
    }

    async fn tally(&self, id: ConnectionId) -> Tally {
        match self.refresh_now(id, Trigger::Run).await {
            Ok(Flight::Refreshed(_) | Flight::Superseded) => Tally::Succeeded,
            Ok(Flight::Busy { .. }) => Tally::Skipped,
            Err(RefreshFailure::NotFound | RefreshFailure::NotRefreshable { .. })
            | Err(RefreshFailure::Unavailable { .. }) => Tally::Skipped,
            Err(RefreshFailure::NeedsReauth { code, .. } | RefreshFailure::Failed { code, .. }) => Tally::Failed(code),
            Err(RefreshFailure::Internal(_)) => Tally::Failed("internal".to_owned()),
        }
    }
}

/// `run.succeeded` / `run.failed` (none for a cancelled run): counts, never
/// a secret.
fn run_event(
    run: &RunRecord,
    filter: &RunFilter,
    status: RunStatus,
    counts: RunCounts,
    failures: &FailuresByCode,
    at: time::OffsetDateTime,
) -> Vec<NewEvent> {
    if status == RunStatus::Cancelled {
        return Vec::new();
    }
    vec![NewEvent {
        id: events::new_event_id(),
        kind: format!("run.{}", status.as_str()),
        project: filter.project.clone(),
        connection_id: None,
        provider: filter.provider.clone(),
        data: json!({
            "run_id": run.id,
            "status": status.as_str(),
            "total": counts.total,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "failures_by_code": failures,
        }),
        at,
    }]
}

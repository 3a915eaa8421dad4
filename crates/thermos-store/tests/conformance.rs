//! The Store contract: every case runs against every backend.
//!
//! Each case is an `async fn(Arc<dyn Store>)` that starts from an empty,
//! migrated store; the `conformance!` macro instantiates it once per backend
//! (`sqlite::<case>`, `postgres::<case>`; the PostgreSQL cases run against
//! `THERMOS_TEST_DATABASE_URL`, default the local server, each in a schema of
//! its own, and are skipped with a note when no server answers and `CI` is
//! not set).
//! Time is always passed in (offsets from `T0`), never read or slept on.
//! The outbox cases live in `conformance/outbox.rs`, the runs cases in
//! `conformance/run.rs`, the live-instances cases in
//! `conformance/instance.rs`. Backend-specific checks (query plans, several
//! stores on one file, corrupt rows) live in `mod sqlite_only` and
//! `mod postgres_only` at the end.

mod support;

#[path = "conformance/instance.rs"]
mod instance;
#[path = "conformance/outbox.rs"]
mod outbox;
#[path = "conformance/run.rs"]
mod run;

use std::collections::HashSet;
use std::sync::Arc;

use thermos_core::id::ConnectionId;
use thermos_core::status::ConnectionStatus;
use thermos_store::{
    ATTEMPTS_KEPT_PER_CONNECTION, Claim, ConnectionFilter, ConnectionRecord, CustomAppRecord, FinishOutcome,
    NewConnection, StatusCount, Store, StoreError, TokenUpdate, truncate_to_millis,
};
use time::macros::datetime;

use instance::*;
use outbox::*;
use run::*;
use support::{T0, at, attempt, connection, due_connection, failed_attempt, failure, sealed, tokens};

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let backend = crate::support::sqlite().await;
                    super::$case(backend.store()).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(backend) = crate::support::postgres().await else { return };
                    super::$case(backend.store()).await;
                }
            )*
        }
    };
}

// Declared after the macro, which they use.
#[path = "conformance/api_keys.rs"]
mod api_keys;
#[path = "conformance/audit.rs"]
mod audit;
#[path = "conformance/batch_insert.rs"]
mod batch_insert;
#[path = "conformance/concurrent_finish.rs"]
mod concurrent_finish;
#[path = "conformance/connect.rs"]
mod connect;
#[path = "conformance/grant_types.rs"]
mod grant_types;
#[path = "conformance/refresh_token_lifetime.rs"]
mod refresh_token_lifetime;
#[path = "conformance/reseal.rs"]
mod reseal;

conformance!(
    a_database_that_answers_pings_and_migrates_twice_keeps_its_data,
    a_new_connection_is_active_at_version_one_and_reads_back_as_inserted,
    a_second_connection_with_the_same_project_provider_and_external_id_is_a_conflict,
    a_missing_connection_reads_as_none,
    timestamps_round_trip_at_millisecond_precision,
    claim_due_returns_only_due_unleased_scheduled_connections_earliest_first,
    claim_due_takes_at_most_its_limit_earliest_first,
    a_claimed_connection_is_not_claimed_again_until_its_lease_expires,
    a_claim_moves_next_refresh_at_to_the_end_of_the_lease_without_bumping_the_version,
    record_attempt_logs_without_changing_the_connection_or_its_lease,
    release_all_leases_makes_leased_connections_due_at_once,
    next_due_at_is_the_earliest_due_time_of_scheduled_connections,
    claim_connection_leases_a_free_connection_whatever_its_due_time,
    claim_connection_is_busy_while_any_unexpired_lease_is_held_even_by_the_same_owner,
    claim_connection_of_a_missing_connection_is_not_found,
    claim_connection_does_not_schedule_a_connection_that_needs_reauth,
    release_lease_drops_only_the_owners_lease_and_sets_the_next_due_time,
    finish_refresh_commits_new_tokens_bumps_the_version_and_clears_failures,
    finish_refresh_with_a_stale_version_changes_nothing_but_records_the_attempt,
    finish_refresh_without_a_refresh_token_or_scope_keeps_the_stored_ones,
    finish_refresh_succeeds_after_the_lease_expired_if_the_version_is_unchanged,
    record_failure_stores_the_error_and_drops_the_lease_without_bumping_the_version,
    record_failure_with_a_stale_version_only_records_the_attempt,
    a_connection_that_needs_reauth_is_never_claimed_until_new_tokens_arrive,
    replace_tokens_reactivates_the_connection_replaces_every_token_column_and_drops_the_lease,
    replace_tokens_of_a_missing_connection_is_none,
    reset_connection_clears_failures_and_makes_the_connection_due_now,
    attempts_are_listed_newest_first_and_pruned_to_the_newest_fifty,
    deleting_a_connection_deletes_its_attempts,
    refresh_results_for_a_deleted_connection_change_nothing,
    list_connections_pages_through_every_connection_in_id_order,
    list_connections_applies_project_provider_and_status_filters,
    count_by_status_groups_connections_by_provider_and_status,
    count_project_connections_counts_only_that_project,
    concurrent_claimers_never_claim_a_connection_twice_and_together_claim_all,
    a_custom_app_reads_back_as_registered_with_its_sealed_secret,
    registering_a_custom_app_again_replaces_its_credentials_and_keeps_created_at,
    custom_apps_are_listed_by_project_then_provider_and_filtered_by_project,
    deleting_a_custom_app_removes_only_that_projects_app_for_that_provider,
    an_event_written_with_a_new_connection_has_one_delivery_per_matching_webhook,
    every_applied_transition_writes_its_events_in_its_transaction,
    a_transition_whose_check_fails_writes_no_event,
    an_alert_goes_to_the_operators_channel_and_a_projectless_event_to_nobody,
    webhooks_read_back_as_registered_in_creation_order,
    deleting_a_webhook_fails_its_pending_deliveries_and_stops_new_ones,
    claim_deliveries_leases_due_deliveries_earliest_first,
    only_the_first_pending_delivery_of_a_webhook_and_connection_is_claimable,
    a_failed_delivery_lets_the_next_of_its_channel_go,
    finish_delivery_records_the_attempt_and_applies_the_outcome,
    finish_delivery_by_a_worker_that_lost_the_lease_only_records_the_attempt,
    next_delivery_due_at_is_the_earliest_due_time_of_claimable_deliveries,
    redelivering_an_event_puts_its_deliveries_back_to_pending_due_now,
    list_events_filters_and_pages_newest_first,
    events_after_feeds_the_aggregator_in_insertion_order,
    commit_alerts_records_the_alerts_and_moves_the_cursor_in_one_transaction,
    prune_outbox_deletes_finished_deliveries_and_old_events_but_keeps_pending_ones,
    deleting_a_connection_keeps_its_events,
    concurrent_delivery_claimers_never_claim_a_delivery_twice,
    a_new_run_is_running_with_zero_counts_and_reads_back_as_inserted,
    run_progress_and_finish_record_counts_failures_and_the_event,
    runs_are_listed_newest_first_up_to_the_limit,
    only_running_runs_with_an_old_heartbeat_are_marked_stale,
    cancelling_asks_only_a_running_run_to_stop,
    a_first_beat_registers_the_instance_as_reported,
    a_later_beat_moves_the_heartbeat_and_keeps_started_at,
    live_instances_are_those_that_beat_after_the_cutoff_ordered_by_name,
    remove_instance_deletes_only_that_row_and_is_false_for_an_unknown_name,
    a_beat_deletes_instances_silent_for_more_than_a_day,
    two_instances_beating_at_once_both_end_registered,
    many_beats_of_one_instance_at_once_leave_one_row_at_the_latest_heartbeat,
    beats_reviving_silent_instances_while_others_prune_them_end_with_every_beating_row,
);

/// Inserts `new` at `T0`.
async fn insert(store: &dyn Store, new: NewConnection) -> ConnectionRecord {
    store
        .insert_connection(new, T0, Vec::new())
        .await
        .expect("insert connection")
}

async fn get(store: &dyn Store, id: ConnectionId) -> ConnectionRecord {
    store
        .get_connection(id)
        .await
        .expect("get connection")
        .expect("connection exists")
}

async fn claim(store: &dyn Store, id: ConnectionId, owner: &str, now: i64, until: i64) -> ConnectionRecord {
    match store
        .claim_connection(id, owner, at(now), at(until))
        .await
        .expect("claim connection")
    {
        Claim::Claimed(record) => record,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn ids(records: &[ConnectionRecord]) -> Vec<ConnectionId> {
    records.iter().map(|r| r.id).collect()
}

async fn a_database_that_answers_pings_and_migrates_twice_keeps_its_data(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let inserted = insert(&*store, connection("u1")).await;
    store.migrate().await.unwrap();
    assert_eq!(get(&*store, inserted.id).await, inserted);
}

async fn a_new_connection_is_active_at_version_one_and_reads_back_as_inserted(store: Arc<dyn Store>) {
    let new = connection("u1");
    let inserted = store.insert_connection(new.clone(), at(5), Vec::new()).await.unwrap();
    let expected = ConnectionRecord {
        id: new.id,
        project: new.project,
        provider: new.provider,
        external_id: new.external_id,
        access_token: new.access_token,
        refresh_token: new.refresh_token,
        token_type: new.token_type,
        scope: new.scope,
        issued_at: new.issued_at,
        expires_at: new.expires_at,
        metadata: new.metadata,
        status: ConnectionStatus::Active,
        next_refresh_at: Some(new.next_refresh_at),
        last_refreshed_at: None,
        refresh_count: 0,
        consecutive_failures: 0,
        last_error: None,
        version: 1,
        lease_owner: None,
        lease_until: None,
        created_at: at(5),
        updated_at: at(5),
        grant: Default::default(),
        refresh_token_expires_at: None,
        refresh_token_warned_at: None,
    };
    assert_eq!(inserted, expected);
    assert_eq!(get(&*store, new.id).await, expected);
}

async fn a_second_connection_with_the_same_project_provider_and_external_id_is_a_conflict(store: Arc<dyn Store>) {
    insert(&*store, connection("u1")).await;
    let again = store.insert_connection(connection("u1"), T0, Vec::new()).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    let same_id = NewConnection {
        external_id: "u2".into(),
        ..connection("u1")
    };
    insert(&*store, same_id.clone()).await;
    let dup_id = store
        .insert_connection(
            NewConnection {
                external_id: "u3".into(),
                ..same_id
            },
            T0,
            Vec::new(),
        )
        .await;
    assert!(matches!(dup_id, Err(StoreError::Conflict)), "{dup_id:?}");
    // The same account in another project or at another provider is another connection.
    insert(
        &*store,
        NewConnection {
            project: "globex".into(),
            ..connection("u1")
        },
    )
    .await;
    insert(
        &*store,
        NewConnection {
            provider: "slack".into(),
            ..connection("u1")
        },
    )
    .await;
    assert_eq!(
        store
            .list_connections(&ConnectionFilter::default(), None, 10)
            .await
            .unwrap()
            .len(),
        4
    );
}

async fn a_missing_connection_reads_as_none(store: Arc<dyn Store>) {
    assert_eq!(store.get_connection(ConnectionId::generate()).await.unwrap(), None);
}

async fn timestamps_round_trip_at_millisecond_precision(store: Arc<dyn Store>) {
    let issued = datetime!(2025-06-01 14:00:00.123_456_789 +02:00);
    let new = NewConnection {
        issued_at: issued,
        expires_at: datetime!(9999-12-31 23:59:59.999_999 UTC),
        next_refresh_at: datetime!(1969-12-31 23:59:59.999_5 UTC),
        ..connection("u1")
    };
    let inserted = store
        .insert_connection(new.clone(), datetime!(2025-06-01 12:00:00.000_999 UTC), Vec::new())
        .await
        .unwrap();
    let read = get(&*store, new.id).await;
    assert_eq!(read, inserted);
    assert_eq!(read.issued_at, datetime!(2025-06-01 12:00:00.123 UTC));
    assert_eq!(read.issued_at, truncate_to_millis(issued));
    assert_eq!(read.expires_at, datetime!(9999-12-31 23:59:59.999 UTC));
    assert_eq!(read.next_refresh_at, Some(datetime!(1969-12-31 23:59:59.999 UTC)));
    assert_eq!(read.created_at, T0);
}

async fn claim_due_returns_only_due_unleased_scheduled_connections_earliest_first(store: Arc<dyn Store>) {
    let due_later = insert(&*store, due_connection("due-later", -30)).await;
    let due_first = insert(&*store, due_connection("due-first", -60)).await;
    insert(&*store, due_connection("not-yet-due", 60)).await;
    let due_now = insert(&*store, due_connection("due-exactly-now", 0)).await;
    // Not scheduled, although its due time has passed.
    let dead = insert(&*store, due_connection("needs-reauth", -90)).await;
    let dead_failure = failure(ConnectionStatus::NeedsReauth, 1, -100, Some(-90));
    store
        .record_failure(dead.id, 1, dead_failure, attempt("failed", -100), Vec::new())
        .await
        .unwrap()
        .unwrap();
    // Failing connections are scheduled.
    let failing = insert(&*store, due_connection("failing", -20)).await;
    let failing_update = failure(ConnectionStatus::Failing, 1, -25, Some(-20));
    store
        .record_failure(failing.id, 1, failing_update, attempt("failed", -25), Vec::new())
        .await
        .unwrap()
        .unwrap();
    // Due (reset) but leased by someone else.
    let leased = insert(&*store, due_connection("leased", 600)).await;
    claim(&*store, leased.id, "other", -10, 100).await;
    store.reset_connection(leased.id, at(-5)).await.unwrap().unwrap();

    let claimed = store.claim_due("me", T0, at(60), 10).await.unwrap();
    assert_eq!(ids(&claimed), vec![due_first.id, due_later.id, failing.id, due_now.id]);
    assert_eq!(claimed[2].status, ConnectionStatus::Failing);
    assert!(claimed.iter().all(|c| c.lease_owner.as_deref() == Some("me")));
}

async fn claim_due_takes_at_most_its_limit_earliest_first(store: Arc<dyn Store>) {
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(insert(&*store, due_connection(&format!("u{i}"), -100 + i)).await.id);
    }
    assert_eq!(ids(&store.claim_due("me", T0, at(60), 2).await.unwrap()), expected[..2]);
    assert_eq!(
        ids(&store.claim_due("me", T0, at(60), 2).await.unwrap()),
        expected[2..4]
    );
    assert_eq!(ids(&store.claim_due("me", T0, at(60), 2).await.unwrap()), expected[4..]);
    assert!(store.claim_due("me", T0, at(60), 2).await.unwrap().is_empty());
    assert!(store.claim_due("me", T0, at(60), 0).await.unwrap().is_empty());
}

async fn a_claimed_connection_is_not_claimed_again_until_its_lease_expires(store: Arc<dyn Store>) {
    let due = insert(&*store, due_connection("u1", -1)).await;
    assert_eq!(ids(&store.claim_due("a", T0, at(60), 10).await.unwrap()), vec![due.id]);
    assert!(store.claim_due("b", at(1), at(61), 10).await.unwrap().is_empty());
    assert!(store.claim_due("a", at(59), at(119), 10).await.unwrap().is_empty());
    let reclaimed = store.claim_due("b", at(60), at(120), 10).await.unwrap();
    assert_eq!(ids(&reclaimed), vec![due.id]);
    assert_eq!(reclaimed[0].lease_owner.as_deref(), Some("b"));
    assert_eq!(reclaimed[0].lease_until, Some(at(120)));
}

async fn a_claim_moves_next_refresh_at_to_the_end_of_the_lease_without_bumping_the_version(store: Arc<dyn Store>) {
    let due = insert(&*store, due_connection("u1", -1)).await;
    let planned = due.next_refresh_at;
    let claimed = store.claim_due("worker-1", at(2), at(62), 10).await.unwrap().remove(0);
    let expected = ConnectionRecord {
        lease_owner: Some("worker-1".into()),
        lease_until: Some(at(62)),
        next_refresh_at: Some(at(62)),
        updated_at: at(2),
        ..due
    };
    // The claimed record reports the planned due time; the row holds the lease's end.
    assert_eq!(
        claimed,
        ConnectionRecord {
            next_refresh_at: planned,
            ..expected.clone()
        }
    );
    assert_eq!(get(&*store, expected.id).await, expected);
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(62)));
}

async fn record_attempt_logs_without_changing_the_connection_or_its_lease(store: Arc<dyn Store>) {
    let due = insert(&*store, due_connection("u1", -1)).await;
    let claimed = store.claim_due("worker-1", at(2), at(62), 10).await.unwrap().remove(0);
    store.record_attempt(due.id, attempt("superseded", 3)).await.unwrap();
    store.record_attempt(due.id, attempt("lost", 4)).await.unwrap();
    let after = get(&*store, due.id).await;
    assert_eq!(
        (after.lease_owner.as_deref(), after.lease_until, after.version),
        (Some("worker-1"), Some(at(62)), claimed.version)
    );
    assert_eq!(after.next_refresh_at, Some(at(62)));
    let outcomes: Vec<_> = store
        .list_attempts(due.id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.attempt.outcome)
        .collect();
    assert_eq!(outcomes, ["lost", "superseded"]);
}

async fn release_all_leases_makes_leased_connections_due_at_once(store: Arc<dyn Store>) {
    let leased = insert(&*store, due_connection("leased", -1)).await;
    let free = insert(&*store, due_connection("free", 500)).await;
    store.claim_due("dead-worker", at(2), at(3600), 10).await.unwrap();
    assert!(
        store
            .claim_due("new-worker", at(5), at(65), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.release_all_leases(at(5)).await.unwrap(), 1);
    let claimed = store.claim_due("new-worker", at(5), at(65), 10).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [leased.id]);
    assert_eq!(get(&*store, free.id).await.next_refresh_at, free.next_refresh_at);
}

async fn next_due_at_is_the_earliest_due_time_of_scheduled_connections(store: Arc<dyn Store>) {
    assert_eq!(store.next_due_at().await.unwrap(), None);
    insert(&*store, due_connection("later", 100)).await;
    insert(&*store, due_connection("sooner", 50)).await;
    let dead = insert(&*store, due_connection("dead", 10)).await;
    store
        .record_failure(
            dead.id,
            1,
            failure(ConnectionStatus::NeedsReauth, 1, 5, Some(10)),
            attempt("failed", 5),
            Vec::new(),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(50)));
}

async fn claim_connection_leases_a_free_connection_whatever_its_due_time(store: Arc<dyn Store>) {
    let far = insert(&*store, due_connection("u1", 3000)).await;
    let claimed = claim(&*store, far.id, "api", 0, 30).await;
    let expected = ConnectionRecord {
        lease_owner: Some("api".into()),
        lease_until: Some(at(30)),
        next_refresh_at: Some(at(30)),
        updated_at: T0,
        ..far
    };
    assert_eq!(claimed, expected);
    assert_eq!(get(&*store, far.id).await, expected);
}

async fn claim_connection_is_busy_while_any_unexpired_lease_is_held_even_by_the_same_owner(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    claim(&*store, conn.id, "api", 0, 30).await;
    for (owner, now) in [("api", 10), ("other", 29)] {
        let busy = store
            .claim_connection(conn.id, owner, at(now), at(now + 30))
            .await
            .unwrap();
        assert!(
            matches!(busy, Claim::Busy { lease_until } if lease_until == at(30)),
            "{owner}: {busy:?}"
        );
    }
    let reclaimed = claim(&*store, conn.id, "other", 30, 60).await;
    assert_eq!(reclaimed.lease_owner.as_deref(), Some("other"));
}

async fn claim_connection_of_a_missing_connection_is_not_found(store: Arc<dyn Store>) {
    let missing = store
        .claim_connection(ConnectionId::generate(), "api", T0, at(30))
        .await
        .unwrap();
    assert!(matches!(missing, Claim::NotFound), "{missing:?}");
}

async fn claim_connection_does_not_schedule_a_connection_that_needs_reauth(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let dead = store
        .record_failure(
            conn.id,
            1,
            failure(ConnectionStatus::NeedsReauth, 1, 5, None),
            attempt("failed", 5),
            Vec::new(),
        )
        .await
        .unwrap()
        .unwrap();
    let claimed = claim(&*store, conn.id, "api", 10, 40).await;
    assert_eq!(claimed.next_refresh_at, None);
    assert_eq!(claimed.status, ConnectionStatus::NeedsReauth);
    assert_eq!(claimed.lease_until, Some(at(40)));
    store.release_lease(conn.id, "api", at(100)).await.unwrap();
    let released = get(&*store, conn.id).await;
    assert_eq!(
        (released.next_refresh_at, released.lease_owner, released.lease_until),
        (None, None, None)
    );
    assert_eq!(released.status, dead.status);
}

async fn release_lease_drops_only_the_owners_lease_and_sets_the_next_due_time(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let claimed = claim(&*store, conn.id, "a", 0, 30).await;
    store.release_lease(conn.id, "b", at(500)).await.unwrap();
    assert_eq!(get(&*store, conn.id).await, claimed);
    store.release_lease(conn.id, "a", at(500)).await.unwrap();
    let released = get(&*store, conn.id).await;
    assert_eq!(
        released,
        ConnectionRecord {
            next_refresh_at: Some(at(500)),
            lease_owner: None,
            lease_until: None,
            ..claimed
        }
    );
    // Releasing again, or a connection that is gone, does nothing.
    store.release_lease(conn.id, "a", at(900)).await.unwrap();
    assert_eq!(get(&*store, conn.id).await, released);
    store
        .release_lease(ConnectionId::generate(), "a", at(900))
        .await
        .unwrap();
}

async fn finish_refresh_commits_new_tokens_bumps_the_version_and_clears_failures(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let failing = failure(ConnectionStatus::Failing, 2, 10, Some(20));
    store
        .record_failure(conn.id, 1, failing, failed_attempt("server_error", 503, 9), Vec::new())
        .await
        .unwrap()
        .unwrap();
    claim(&*store, conn.id, "w", 20, 80).await;
    let update = TokenUpdate {
        refresh_token: Some(sealed("refresh-2")),
        scope: Some("read write".into()),
        ..tokens("access-2", 25)
    };
    let outcome = store
        .finish_refresh(conn.id, 1, update.clone(), attempt("refreshed", 21), Vec::new())
        .await
        .unwrap();
    let FinishOutcome::Committed(committed) = outcome else {
        panic!("expected a commit, got {outcome:?}")
    };
    let expected = ConnectionRecord {
        access_token: update.access_token,
        refresh_token: update.refresh_token,
        scope: update.scope,
        issued_at: at(25),
        expires_at: at(3625),
        next_refresh_at: Some(at(3325)),
        status: ConnectionStatus::Active,
        last_refreshed_at: Some(at(25)),
        refresh_count: 1,
        consecutive_failures: 0,
        last_error: None,
        version: 2,
        lease_owner: None,
        lease_until: None,
        updated_at: at(25),
        ..conn
    };
    assert_eq!(committed, expected);
    assert_eq!(get(&*store, conn.id).await, expected);
    let attempts = store.list_attempts(conn.id, 10).await.unwrap();
    let outcomes: Vec<_> = attempts.iter().map(|a| a.attempt.outcome.as_str()).collect();
    assert_eq!(outcomes, ["refreshed", "failed"]);
    assert_eq!(attempts[0].attempt, attempt("refreshed", 21));
    assert_eq!(attempts[0].connection_id, conn.id);
}

async fn finish_refresh_with_a_stale_version_changes_nothing_but_records_the_attempt(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let claimed = claim(&*store, conn.id, "w", 0, 60).await;
    let outcome = store
        .finish_refresh(conn.id, 7, tokens("access-2", 5), attempt("refreshed", 1), Vec::new())
        .await
        .unwrap();
    assert!(matches!(outcome, FinishOutcome::VersionChanged), "{outcome:?}");
    assert_eq!(get(&*store, conn.id).await, claimed);
    let attempts = store.list_attempts(conn.id, 10).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].attempt, attempt("refreshed", 1));
}

async fn finish_refresh_without_a_refresh_token_or_scope_keeps_the_stored_ones(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let outcome = store
        .finish_refresh(conn.id, 1, tokens("access-2", 5), attempt("refreshed", 1), Vec::new())
        .await
        .unwrap();
    let FinishOutcome::Committed(committed) = outcome else {
        panic!("expected a commit, got {outcome:?}")
    };
    assert_eq!(committed.access_token, sealed("access-2"));
    assert_eq!(committed.refresh_token, Some(sealed("refresh-1")));
    assert_eq!(committed.scope.as_deref(), Some("read"));
    assert_eq!(committed.version, 2);
}

async fn finish_refresh_succeeds_after_the_lease_expired_if_the_version_is_unchanged(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    claim(&*store, conn.id, "slow", 0, 30).await;
    claim(&*store, conn.id, "other", 40, 100).await;
    let update = TokenUpdate {
        refresh_token: Some(sealed("refresh-2")),
        ..tokens("access-2", 45)
    };
    let outcome = store
        .finish_refresh(conn.id, 1, update, attempt("refreshed", 1), Vec::new())
        .await
        .unwrap();
    let FinishOutcome::Committed(committed) = outcome else {
        panic!("expected a commit, got {outcome:?}")
    };
    assert_eq!(committed.refresh_token, Some(sealed("refresh-2")));
    assert_eq!((committed.lease_owner, committed.lease_until), (None, None));
}

async fn record_failure_stores_the_error_and_drops_the_lease_without_bumping_the_version(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    claim(&*store, conn.id, "w", 0, 60).await;
    let update = failure(ConnectionStatus::Failing, 1, 10, Some(40));
    let recorded = store
        .record_failure(
            conn.id,
            1,
            update.clone(),
            failed_attempt("server_error", 503, 8),
            Vec::new(),
        )
        .await
        .unwrap()
        .expect("version matches");
    let expected = ConnectionRecord {
        status: ConnectionStatus::Failing,
        consecutive_failures: 1,
        last_error: Some(update.last_error),
        next_refresh_at: Some(at(40)),
        lease_owner: None,
        lease_until: None,
        updated_at: at(10),
        ..conn
    };
    assert_eq!(recorded, expected);
    assert_eq!(get(&*store, conn.id).await, expected);
    let attempts = store.list_attempts(conn.id, 10).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].attempt, failed_attempt("server_error", 503, 8));
}

async fn record_failure_with_a_stale_version_only_records_the_attempt(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let claimed = claim(&*store, conn.id, "w", 0, 60).await;
    let update = failure(ConnectionStatus::NeedsReauth, 1, 10, None);
    let recorded = store
        .record_failure(conn.id, 2, update, failed_attempt("invalid_grant", 400, 8), Vec::new())
        .await
        .unwrap();
    assert_eq!(recorded, None);
    assert_eq!(get(&*store, conn.id).await, claimed);
    assert_eq!(store.list_attempts(conn.id, 10).await.unwrap().len(), 1);
}

async fn a_connection_that_needs_reauth_is_never_claimed_until_new_tokens_arrive(store: Arc<dyn Store>) {
    let conn = insert(&*store, due_connection("u1", -10)).await;
    let dead = failure(ConnectionStatus::NeedsReauth, 1, 0, None);
    store
        .record_failure(conn.id, 1, dead, failed_attempt("invalid_grant", 400, 0), Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .claim_due("w", at(1_000_000), at(1_000_060), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due_at().await.unwrap(), None);
    let update = TokenUpdate {
        next_refresh_at: at(100),
        ..tokens("access-2", 50)
    };
    store
        .replace_tokens(conn.id, update, at(50), Vec::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(100)));
    assert_eq!(
        ids(&store.claim_due("w", at(100), at(160), 10).await.unwrap()),
        vec![conn.id]
    );
}

async fn replace_tokens_reactivates_the_connection_replaces_every_token_column_and_drops_the_lease(
    store: Arc<dyn Store>,
) {
    let conn = insert(&*store, connection("u1")).await;
    let failing = failure(ConnectionStatus::Failing, 3, 10, Some(20));
    store
        .record_failure(conn.id, 1, failing, failed_attempt("server_error", 503, 9), Vec::new())
        .await
        .unwrap()
        .unwrap();
    claim(&*store, conn.id, "w", 20, 80).await;
    let update = TokenUpdate {
        token_type: "bearer".into(),
        ..tokens("access-2", 30)
    };
    let replaced = store
        .replace_tokens(conn.id, update, at(31), Vec::new())
        .await
        .unwrap()
        .expect("connection exists");
    let expected = ConnectionRecord {
        access_token: sealed("access-2"),
        refresh_token: None,
        token_type: "bearer".into(),
        scope: None,
        issued_at: at(30),
        expires_at: at(3630),
        next_refresh_at: Some(at(3330)),
        status: ConnectionStatus::Active,
        consecutive_failures: 0,
        last_error: None,
        version: 2,
        lease_owner: None,
        lease_until: None,
        updated_at: at(31),
        ..conn
    };
    assert_eq!(replaced, expected);
    assert_eq!(get(&*store, conn.id).await, expected);
}

async fn replace_tokens_of_a_missing_connection_is_none(store: Arc<dyn Store>) {
    let replaced = store
        .replace_tokens(ConnectionId::generate(), tokens("a", 0), T0, Vec::new())
        .await
        .unwrap();
    assert_eq!(replaced, None);
}

async fn reset_connection_clears_failures_and_makes_the_connection_due_now(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let dead = failure(ConnectionStatus::NeedsReauth, 4, 10, None);
    store
        .record_failure(conn.id, 1, dead, failed_attempt("invalid_grant", 400, 9), Vec::new())
        .await
        .unwrap()
        .unwrap();
    let claimed = claim(&*store, conn.id, "w", 20, 80).await;
    let reset = store
        .reset_connection(conn.id, at(30))
        .await
        .unwrap()
        .expect("connection exists");
    let expected = ConnectionRecord {
        status: ConnectionStatus::Active,
        consecutive_failures: 0,
        last_error: None,
        next_refresh_at: Some(at(30)),
        updated_at: at(30),
        ..claimed
    };
    assert_eq!(reset, expected);
    assert_eq!(get(&*store, conn.id).await, expected);
    assert_eq!(
        store.reset_connection(ConnectionId::generate(), T0).await.unwrap(),
        None
    );
}

async fn attempts_are_listed_newest_first_and_pruned_to_the_newest_fifty(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let neighbour = insert(&*store, connection("u2")).await;
    for i in 0..3 {
        store
            .finish_refresh(neighbour.id, 99, tokens("x", i), attempt("refreshed", i), Vec::new())
            .await
            .unwrap();
    }
    for i in 0..60 {
        // A stale version records only the attempt: a cheap way to log many.
        store
            .record_failure(
                conn.id,
                99,
                failure(ConnectionStatus::Failing, 1, i, None),
                attempt("failed", i),
                Vec::new(),
            )
            .await
            .unwrap();
    }
    let kept = store.list_attempts(conn.id, 100).await.unwrap();
    assert_eq!(kept.len(), ATTEMPTS_KEPT_PER_CONNECTION as usize);
    let started: Vec<_> = kept.iter().map(|a| a.attempt.started_at).collect();
    let newest_fifty: Vec<_> = (10..60).rev().map(at).collect();
    assert_eq!(started, newest_fifty);
    assert!(kept.windows(2).all(|w| w[0].id > w[1].id));
    let three: Vec<_> = store
        .list_attempts(conn.id, 3)
        .await
        .unwrap()
        .iter()
        .map(|a| a.attempt.started_at)
        .collect();
    assert_eq!(three, [at(59), at(58), at(57)]);
    assert_eq!(store.list_attempts(neighbour.id, 100).await.unwrap().len(), 3);
}

async fn deleting_a_connection_deletes_its_attempts(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    let kept = insert(&*store, connection("u2")).await;
    for c in [&conn, &kept] {
        store
            .finish_refresh(c.id, 1, tokens("x", 1), attempt("refreshed", 1), Vec::new())
            .await
            .unwrap();
    }
    assert!(store.delete_connection(conn.id, Vec::new()).await.unwrap());
    assert_eq!(store.get_connection(conn.id).await.unwrap(), None);
    assert!(store.list_attempts(conn.id, 10).await.unwrap().is_empty());
    assert!(!store.delete_connection(conn.id, Vec::new()).await.unwrap());
    assert_eq!(store.list_attempts(kept.id, 10).await.unwrap().len(), 1);
    // The same account can connect again.
    insert(
        &*store,
        NewConnection {
            id: ConnectionId::generate(),
            ..connection("u1")
        },
    )
    .await;
}

async fn refresh_results_for_a_deleted_connection_change_nothing(store: Arc<dyn Store>) {
    let conn = insert(&*store, connection("u1")).await;
    claim(&*store, conn.id, "w", 0, 60).await;
    store.delete_connection(conn.id, Vec::new()).await.unwrap();
    let outcome = store
        .finish_refresh(conn.id, 1, tokens("x", 1), attempt("refreshed", 1), Vec::new())
        .await
        .unwrap();
    assert!(matches!(outcome, FinishOutcome::VersionChanged), "{outcome:?}");
    let failed = failure(ConnectionStatus::Failing, 1, 1, Some(5));
    assert_eq!(
        store
            .record_failure(conn.id, 1, failed, attempt("failed", 1), Vec::new())
            .await
            .unwrap(),
        None
    );
    assert!(store.list_attempts(conn.id, 10).await.unwrap().is_empty());
    assert_eq!(store.get_connection(conn.id).await.unwrap(), None);
}

async fn list_connections_pages_through_every_connection_in_id_order(store: Arc<dyn Store>) {
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(insert(&*store, connection(&format!("u{i}"))).await.id);
    }
    all.sort();
    let everything = ConnectionFilter::default();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_connections(&everything, after, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|c| c.id);
        pages.push(ids(&page));
    }
    assert_eq!(pages, vec![all[..2].to_vec(), all[2..4].to_vec(), all[4..].to_vec()]);
    let whole = store.list_connections(&everything, None, 100).await.unwrap();
    assert_eq!(ids(&whole), all);
    assert_eq!(whole[0], get(&*store, all[0]).await);
}

async fn list_connections_applies_project_provider_and_status_filters(store: Arc<dyn Store>) {
    let acme_google = insert(&*store, connection("a")).await.id;
    let acme_slack = insert(
        &*store,
        NewConnection {
            provider: "slack".into(),
            ..connection("b")
        },
    )
    .await
    .id;
    let globex_google = insert(
        &*store,
        NewConnection {
            project: "globex".into(),
            ..connection("c")
        },
    )
    .await
    .id;
    let acme_google_dead = insert(&*store, connection("d")).await.id;
    let dead = failure(ConnectionStatus::NeedsReauth, 1, 1, None);
    store
        .record_failure(acme_google_dead, 1, dead, attempt("failed", 1), Vec::new())
        .await
        .unwrap()
        .unwrap();

    let sorted = |mut v: Vec<ConnectionId>| {
        v.sort();
        v
    };
    let list = |filter: ConnectionFilter, after: Option<ConnectionId>| {
        let store = Arc::clone(&store);
        async move { ids(&store.list_connections(&filter, after, 100).await.unwrap()) }
    };
    let project = |p: &str| ConnectionFilter {
        project: Some(p.into()),
        ..ConnectionFilter::default()
    };
    assert_eq!(
        list(project("acme"), None).await,
        sorted(vec![acme_google, acme_slack, acme_google_dead])
    );
    assert_eq!(list(project("nobody"), None).await, vec![]);
    let slack = ConnectionFilter {
        provider: Some("slack".into()),
        ..ConnectionFilter::default()
    };
    assert_eq!(list(slack, None).await, vec![acme_slack]);
    let needs_reauth = ConnectionFilter {
        status: Some(ConnectionStatus::NeedsReauth),
        ..ConnectionFilter::default()
    };
    assert_eq!(list(needs_reauth, None).await, vec![acme_google_dead]);
    let acme_google_active = ConnectionFilter {
        project: Some("acme".into()),
        provider: Some("google".into()),
        status: Some(ConnectionStatus::Active),
    };
    assert_eq!(list(acme_google_active, None).await, vec![acme_google]);
    let google = ConnectionFilter {
        provider: Some("google".into()),
        ..ConnectionFilter::default()
    };
    let all_google = sorted(vec![acme_google, globex_google, acme_google_dead]);
    assert_eq!(list(google.clone(), Some(all_google[0])).await, all_google[1..]);
}

async fn count_project_connections_counts_only_that_project(store: Arc<dyn Store>) {
    assert_eq!(store.count_project_connections("acme").await.unwrap(), 0);
    for i in 0..3 {
        insert(&*store, connection(&format!("c{i}"))).await;
    }
    insert(
        &*store,
        NewConnection {
            project: "other".into(),
            ..connection("o")
        },
    )
    .await;
    let project = connection("x").project;
    assert_eq!(store.count_project_connections(&project).await.unwrap(), 3);
    assert_eq!(store.count_project_connections("other").await.unwrap(), 1);
    assert_eq!(store.count_project_connections("nobody").await.unwrap(), 0);
}

async fn count_by_status_groups_connections_by_provider_and_status(store: Arc<dyn Store>) {
    assert!(store.count_by_status().await.unwrap().is_empty());
    for i in 0..3 {
        insert(&*store, connection(&format!("g{i}"))).await;
    }
    let failing = insert(&*store, connection("g-failing")).await;
    let update = failure(ConnectionStatus::Failing, 1, 1, Some(10));
    store
        .record_failure(failing.id, 1, update, attempt("failed", 1), Vec::new())
        .await
        .unwrap()
        .unwrap();
    let slack = insert(
        &*store,
        NewConnection {
            provider: "slack".into(),
            ..connection("s")
        },
    )
    .await;
    let dead = failure(ConnectionStatus::NeedsReauth, 1, 1, None);
    store
        .record_failure(slack.id, 1, dead, attempt("failed", 1), Vec::new())
        .await
        .unwrap()
        .unwrap();

    let mut counts = store.count_by_status().await.unwrap();
    counts.sort_by(|a, b| (&a.provider, a.status.as_str()).cmp(&(&b.provider, b.status.as_str())));
    let count = |provider: &str, status, count| StatusCount {
        provider: provider.into(),
        status,
        count,
    };
    assert_eq!(
        counts,
        vec![
            count("google", ConnectionStatus::Active, 3),
            count("google", ConnectionStatus::Failing, 1),
            count("slack", ConnectionStatus::NeedsReauth, 1),
        ]
    );
}

async fn concurrent_claimers_never_claim_a_connection_twice_and_together_claim_all(store: Arc<dyn Store>) {
    const CONNECTIONS: usize = 200;
    const CLAIMERS: usize = 8;
    let mut all = HashSet::new();
    for i in 0..CONNECTIONS {
        all.insert(insert(&*store, due_connection(&format!("u{i}"), -(i as i64))).await.id);
    }
    let mut claimers = tokio::task::JoinSet::new();
    for worker in 0..CLAIMERS {
        let store = Arc::clone(&store);
        claimers.spawn(async move {
            let owner = format!("worker-{worker}");
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due(&owner, T0, at(300), 5)
                    .await
                    .expect("claim without a locking error");
                if batch.is_empty() {
                    return mine;
                }
                assert!(batch.iter().all(|c| c.lease_owner.as_deref() == Some(owner.as_str())));
                mine.extend(ids(&batch));
            }
        });
    }
    let mut claimed = Vec::new();
    while let Some(mine) = claimers.join_next().await {
        claimed.extend(mine.expect("claimer task"));
    }
    let distinct: HashSet<_> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), distinct.len(), "a connection was claimed twice");
    assert_eq!(distinct, all);
}

/// `project`'s app for `provider`, registered at `at(registered)`.
fn custom_app(project: &str, provider: &str, registered: i64) -> CustomAppRecord {
    CustomAppRecord {
        project: project.into(),
        provider: provider.into(),
        client_id: format!("{project}-client"),
        client_secret: Some(sealed("sealed-client-secret")),
        auth_method: "client_secret_basic".into(),
        created_at: at(registered),
        updated_at: at(registered),
    }
}

async fn a_custom_app_reads_back_as_registered_with_its_sealed_secret(store: Arc<dyn Store>) {
    let app = CustomAppRecord {
        created_at: datetime!(2025-06-01 12:00:00.250 UTC),
        updated_at: datetime!(2025-06-01 12:00:00.250 UTC),
        ..custom_app("acme", "google", 0)
    };
    assert_eq!(store.upsert_custom_app(app.clone()).await.unwrap(), app);
    let public = CustomAppRecord {
        client_secret: None,
        auth_method: "none".into(),
        ..custom_app("acme", "slack", 1)
    };
    assert_eq!(store.upsert_custom_app(public.clone()).await.unwrap(), public);
    assert_eq!(store.list_custom_apps(Some("acme")).await.unwrap(), vec![app, public]);
}

async fn registering_a_custom_app_again_replaces_its_credentials_and_keeps_created_at(store: Arc<dyn Store>) {
    let first = store.upsert_custom_app(custom_app("acme", "google", 0)).await.unwrap();
    let again = CustomAppRecord {
        client_id: "rotated-client".into(),
        client_secret: None,
        auth_method: "none".into(),
        ..custom_app("acme", "google", 60)
    };
    let stored = store.upsert_custom_app(again.clone()).await.unwrap();
    let expected = CustomAppRecord {
        created_at: first.created_at,
        ..again
    };
    assert_eq!(stored, expected);
    assert!(stored.created_at < stored.updated_at, "a replacement is recognisable");
    assert_eq!(store.list_custom_apps(None).await.unwrap(), vec![expected]);
}

async fn custom_apps_are_listed_by_project_then_provider_and_filtered_by_project(store: Arc<dyn Store>) {
    for (project, provider) in [
        ("globex", "slack"),
        ("acme", "slack"),
        ("globex", "google"),
        ("acme", "google"),
    ] {
        store.upsert_custom_app(custom_app(project, provider, 0)).await.unwrap();
    }
    let keys = |apps: Vec<CustomAppRecord>| -> Vec<(String, String)> {
        apps.into_iter().map(|a| (a.project, a.provider)).collect()
    };
    let pair = |project: &str, provider: &str| (project.to_owned(), provider.to_owned());
    assert_eq!(
        keys(store.list_custom_apps(None).await.unwrap()),
        vec![
            pair("acme", "google"),
            pair("acme", "slack"),
            pair("globex", "google"),
            pair("globex", "slack"),
        ]
    );
    assert_eq!(
        keys(store.list_custom_apps(Some("globex")).await.unwrap()),
        vec![pair("globex", "google"), pair("globex", "slack")]
    );
    assert!(store.list_custom_apps(Some("initech")).await.unwrap().is_empty());
}

async fn deleting_a_custom_app_removes_only_that_projects_app_for_that_provider(store: Arc<dyn Store>) {
    for (project, provider) in [("acme", "google"), ("acme", "slack"), ("globex", "google")] {
        store.upsert_custom_app(custom_app(project, provider, 0)).await.unwrap();
    }
    assert!(store.delete_custom_app("acme", "google").await.unwrap());
    assert!(!store.delete_custom_app("acme", "google").await.unwrap());
    assert!(!store.delete_custom_app("initech", "slack").await.unwrap());
    let left: Vec<_> = store
        .list_custom_apps(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| format!("{}/{}", a.project, a.provider))
        .collect();
    assert_eq!(left, ["acme/slack", "globex/google"]);
}

/// Checks that only make sense for SQLite.
mod sqlite_only {
    use std::collections::HashSet;
    use std::sync::Arc;

    use sqlx::sqlite::SqlitePoolOptions;
    use thermos_store::{SqliteStore, Store, StoreError};

    use crate::support::{self, T0, at, attempt, connection, due_connection, tokens};

    #[tokio::test]
    async fn the_delivery_queries_are_range_scans_of_the_partial_outbox_indexes() {
        let (store, _dir) = support::sqlite_store().await;
        let plan = store.explain_delivery_queries().await.unwrap();
        let of = |query: &str| plan.lines().filter(|l| l.starts_with(query)).collect::<Vec<_>>();
        let claim = of("claim_deliveries:");
        assert!(
            claim
                .iter()
                .any(|l| l.contains("SEARCH d USING INDEX deliveries_due (next_attempt_at<?)")),
            "the claim does not range-scan deliveries_due:\n{plan}"
        );
        assert!(
            claim.iter().any(|l| l.contains(
                "SEARCH p USING COVERING INDEX deliveries_channel (webhook_id=? AND connection_id=? AND id<?)"
            )),
            "the claim's order check does not seek deliveries_channel:\n{plan}"
        );
        let next = of("next_delivery_due_at:");
        assert!(
            next.iter().any(|l| l.contains("USING COVERING INDEX deliveries_due")),
            "next_delivery_due_at does not read deliveries_due:\n{plan}"
        );
        assert!(
            !plan
                .lines()
                .any(|l| l.ends_with("SCAN d") || l.ends_with("SCAN deliveries")),
            "a delivery query scans the table:\n{plan}"
        );
        assert!(
            !next.iter().any(|l| l.contains("TEMP B-TREE")),
            "next_delivery_due_at sorts:\n{plan}"
        );
    }

    #[tokio::test]
    async fn the_due_queries_are_range_scans_of_the_partial_due_index() {
        let (store, _dir) = support::sqlite_store().await;
        let plan = store.explain_due_query().await.unwrap();
        for query in ["claim_due", "next_due_at"] {
            let lines: Vec<_> = plan.lines().filter(|l| l.starts_with(query)).collect();
            assert!(!lines.is_empty(), "no plan for {query}:\n{plan}");
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("SEARCH connections USING INDEX connections_due (next_refresh_at")),
                "{query} does not range-scan connections_due:\n{plan}"
            );
            assert!(
                !lines.iter().any(|l| l.contains("SCAN connections")),
                "{query} scans:\n{plan}"
            );
            assert!(
                !lines.iter().any(|l| l.contains("TEMP B-TREE")),
                "{query} sorts:\n{plan}"
            );
        }
    }

    #[tokio::test]
    async fn an_in_memory_database_is_refused_and_a_missing_file_is_created_in_wal_mode() {
        assert!(SqliteStore::open("sqlite::memory:").await.is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.db");
        let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        assert!(path.exists());
        let raw = SqlitePoolOptions::new()
            .connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&raw).await.unwrap();
        assert_eq!(mode, "wal");
        let by_path = SqliteStore::open_path(&dir.path().join("other.db")).await.unwrap();
        by_path.migrate().await.unwrap();
        by_path.ping().await.unwrap();
    }

    #[tokio::test]
    async fn deleting_a_connection_removes_its_attempt_rows() {
        let (store, dir) = support::sqlite_store().await;
        let conn = store.insert_connection(connection("u1"), T0, Vec::new()).await.unwrap();
        store
            .finish_refresh(conn.id, 1, tokens("x", 1), attempt("refreshed", 1), Vec::new())
            .await
            .unwrap();
        store.delete_connection(conn.id, Vec::new()).await.unwrap();
        let raw = SqlitePoolOptions::new()
            .connect(&format!("sqlite://{}", dir.path().join("thermos.db").display()))
            .await
            .unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM refresh_attempts")
            .fetch_one(&raw)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn a_row_with_an_unknown_status_or_a_malformed_id_reads_as_corrupt() {
        let (store, dir) = support::sqlite_store().await;
        let conn = store.insert_connection(connection("u1"), T0, Vec::new()).await.unwrap();
        let raw = SqlitePoolOptions::new()
            .connect(&format!("sqlite://{}", dir.path().join("thermos.db").display()))
            .await
            .unwrap();
        sqlx::query("UPDATE connections SET status = 'zombie'")
            .execute(&raw)
            .await
            .unwrap();
        assert!(matches!(
            store.get_connection(conn.id).await,
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(store.count_by_status().await, Err(StoreError::Corrupt(_))));
        sqlx::query("UPDATE connections SET status = 'active', id = 'con_nope'")
            .execute(&raw)
            .await
            .unwrap();
        let listed = store.list_connections(&Default::default(), None, 10).await;
        assert!(matches!(listed, Err(StoreError::Corrupt(_))), "{listed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file_share_the_due_work_without_locking_errors() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("thermos.db").display());
        let first = Arc::new(SqliteStore::open(&url).await.unwrap());
        first.migrate().await.unwrap();
        let second = Arc::new(SqliteStore::open(&url).await.unwrap());
        let mut all = HashSet::new();
        for i in 0..120 {
            all.insert(
                first
                    .insert_connection(due_connection(&format!("u{i}"), -i), T0, Vec::new())
                    .await
                    .unwrap()
                    .id,
            );
        }
        let mut claimers = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let store = if worker % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            claimers.spawn(async move {
                let owner = format!("instance-{}-{worker}", worker % 2);
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim_due(&owner, T0, at(300), 3)
                        .await
                        .expect("claim without a locking error");
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|c| c.id));
                }
            });
        }
        let mut claimed = Vec::new();
        while let Some(mine) = claimers.join_next().await {
            claimed.extend(mine.unwrap());
        }
        let distinct: HashSet<_> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), distinct.len(), "a connection was claimed twice");
        assert_eq!(distinct, all);
    }
}

/// Checks that only make sense for PostgreSQL: several instances (several
/// pools) sharing one database.
mod postgres_only {
    use std::collections::HashSet;
    use std::sync::Arc;

    use thermos_store::instance::InstanceBeat;
    use thermos_store::{Claim, PgOptions, PgStore, Store, StoreError};

    use crate::support::{self, T0, at, connection, due_connection};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_claiming_due_work_at_once_get_disjoint_sets_and_together_all_of_it() {
        let Some((first, schema)) = support::postgres_store().await else {
            return;
        };
        let first = Arc::new(first);
        let second = Arc::new(schema.connect().await);
        let mut all = HashSet::new();
        for i in 0..150 {
            let new = due_connection(&format!("u{i}"), -i);
            all.insert(first.insert_connection(new, T0, Vec::new()).await.unwrap().id);
        }
        let mut claimers = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let store = if worker % 2 == 0 {
                Arc::clone(&first)
            } else {
                Arc::clone(&second)
            };
            claimers.spawn(async move {
                let owner = format!("instance-{}-{worker}", worker % 2);
                let mut mine = Vec::new();
                loop {
                    let batch = store
                        .claim_due(&owner, T0, at(300), 4)
                        .await
                        .expect("claim without an error");
                    if batch.is_empty() {
                        return mine;
                    }
                    assert!(batch.iter().all(|c| c.lease_owner.as_deref() == Some(owner.as_str())));
                    mine.extend(batch.into_iter().map(|c| c.id));
                }
            });
        }
        let mut claimed = Vec::new();
        while let Some(mine) = claimers.join_next().await {
            claimed.extend(mine.unwrap());
        }
        let distinct: HashSet<_> = claimed.iter().copied().collect();
        assert_eq!(claimed.len(), distinct.len(), "a connection was claimed twice");
        assert_eq!(distinct, all);
        // Every lease is in the database, as its claimer was told.
        for id in all {
            let row = second.get_connection(id).await.unwrap().unwrap();
            assert!(row.lease_owner.is_some_and(|owner| owner.starts_with("instance-")));
            assert_eq!(row.lease_until, Some(at(300)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn instances_beating_through_two_stores_while_pruning_never_fail_and_all_end_live() {
        let Some((first, schema)) = support::postgres_store().await else {
            return;
        };
        let first = Arc::new(first);
        let second = Arc::new(schema.connect().await);
        let beat = |name: String| InstanceBeat {
            name,
            started_at: T0,
            engine_enabled: true,
            version: "1.4.0".into(),
        };
        let day = 24 * 3600;
        for round in 0..10_i64 {
            // Silent rows, some of which come back to life this round.
            for i in 0..6 {
                let silent = beat(format!("thermos-{round}-{i}"));
                first.beat_instance(silent, at(round * 3 * day)).await.unwrap();
            }
            let now = round * 3 * day + 2 * day;
            let mut beats = tokio::task::JoinSet::new();
            for i in 0..12 {
                let store = if i % 2 == 0 {
                    Arc::clone(&first)
                } else {
                    Arc::clone(&second)
                };
                let name = if i < 3 {
                    format!("thermos-{round}-{i}")
                } else {
                    format!("thermos-live-{}", i % 4)
                };
                let beat = beat(name);
                beats.spawn(async move { store.beat_instance(beat, at(now + i)).await });
            }
            while let Some(done) = beats.join_next().await {
                done.unwrap().expect("beat without a deadlock or conflict");
            }
            let names: Vec<_> = second
                .live_instances(at(now - 1))
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            let revived = (0..3).map(|i| format!("thermos-{round}-{i}"));
            let mut expected: Vec<_> = revived.chain((0..4).map(|i| format!("thermos-live-{i}"))).collect();
            expected.sort();
            assert_eq!(names, expected, "round {round}");
            let every = second.live_instances(at(-1)).await.unwrap();
            assert_eq!(every.len(), expected.len(), "round {round}: the silent rows are pruned");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_lease_held_through_one_store_blocks_claim_connection_through_another() {
        let Some((first, schema)) = support::postgres_store().await else {
            return;
        };
        let second = schema.connect().await;
        let conn = first.insert_connection(connection("u1"), T0, Vec::new()).await.unwrap();
        let Claim::Claimed(_) = first.claim_connection(conn.id, "instance-a", T0, at(60)).await.unwrap() else {
            panic!("the first claim must succeed")
        };
        let busy = second
            .claim_connection(conn.id, "instance-b", at(30), at(90))
            .await
            .unwrap();
        assert!(
            matches!(busy, Claim::Busy { lease_until } if lease_until == at(60)),
            "{busy:?}"
        );
        assert!(
            second
                .claim_due("instance-b", at(59), at(120), 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Once the lease has expired, the other instance takes over.
        let Claim::Claimed(taken) = second
            .claim_connection(conn.id, "instance-b", at(60), at(120))
            .await
            .unwrap()
        else {
            panic!("an expired lease must not block")
        };
        assert_eq!(taken.lease_owner.as_deref(), Some("instance-b"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claim_connection_calls_through_two_stores_lease_a_connection_once() {
        let Some((first, schema)) = support::postgres_store().await else {
            return;
        };
        let stores = [Arc::new(first), Arc::new(schema.connect().await)];
        let conn = stores[0]
            .insert_connection(connection("u1"), T0, Vec::new())
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..8 {
            let store = Arc::clone(&stores[worker % 2]);
            tasks.spawn(async move {
                store
                    .claim_connection(conn.id, &format!("w{worker}"), T0, at(60))
                    .await
                    .unwrap()
            });
        }
        let mut claimed = 0;
        while let Some(claim) = tasks.join_next().await {
            match claim.unwrap() {
                Claim::Claimed(_) => claimed += 1,
                Claim::Busy { lease_until } => assert_eq!(lease_until, at(60)),
                Claim::NotFound => panic!("the connection exists"),
            }
        }
        assert_eq!(claimed, 1);
    }

    #[tokio::test]
    async fn each_pooled_connection_works_in_the_chosen_schema() {
        let Some((store, schema)) = support::postgres_store().await else {
            return;
        };
        store.insert_connection(connection("u1"), T0, Vec::new()).await.unwrap();
        // A second store on the same schema sees the row; the schema is not
        // migrated twice.
        let again = schema.connect().await;
        again.migrate().await.unwrap();
        assert_eq!(
            again
                .list_connections(&Default::default(), None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(again.schema().is_some_and(|s| s.starts_with("thermos_t_")));
    }

    #[tokio::test]
    async fn the_due_work_queries_can_range_scan_the_partial_indexes() {
        let Some((store, _schema)) = support::postgres_store().await else {
            return;
        };
        let plan = store.explain_due_queries().await.unwrap();
        for (query, index) in [
            ("claim_due", "connections_due"),
            ("next_due_at", "connections_due"),
            ("claim_deliveries", "deliveries_due"),
            ("next_delivery_due_at", "deliveries_due"),
        ] {
            let lines: Vec<_> = plan.lines().filter(|l| l.starts_with(&format!("{query}:"))).collect();
            assert!(
                lines.iter().any(|l| l.contains(&format!("using {index}"))),
                "{query} does not use {index}:\n{plan}"
            );
        }
        let claim: Vec<_> = plan.lines().filter(|l| l.starts_with("claim_deliveries:")).collect();
        assert!(
            claim.iter().any(|l| l.contains("deliveries_channel")),
            "the claim's order check does not use deliveries_channel:\n{plan}"
        );
    }

    #[tokio::test]
    async fn a_url_that_is_not_postgres_is_refused() {
        let refused = PgStore::connect("sqlite://thermos.db", PgOptions::default()).await;
        assert!(matches!(refused, Err(StoreError::Database(_))), "{refused:?}");
    }
}

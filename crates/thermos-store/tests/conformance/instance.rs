//! The live-instances part of the Store contract: beats register and
//! refresh a row, the live set is filtered by heartbeat and ordered by name,
//! removal, the pruning of dead rows, and instances beating at once.
//!
//! Cases are listed in the `conformance!` macro in `conformance.rs`.

use std::sync::Arc;

use thermos_store::Store;
use thermos_store::instance::{InstanceBeat, InstanceRecord};
use time::macros::datetime;

use crate::support::{T0, at};

/// One day, in the seconds [`at`] takes.
const DAY: i64 = 24 * 3600;

/// A beat of the engine-running instance `name`, started at `T0`.
fn beat(name: &str) -> InstanceBeat {
    InstanceBeat {
        name: name.to_owned(),
        started_at: T0,
        engine_enabled: true,
        version: "1.4.0".to_owned(),
    }
}

/// The names of the instances that beat after `at(after)`.
async fn live_names(store: &dyn Store, after: i64) -> Vec<String> {
    store
        .live_instances(at(after))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect()
}

pub async fn a_first_beat_registers_the_instance_as_reported(store: Arc<dyn Store>) {
    let started = InstanceBeat {
        started_at: datetime!(2025-06-01 11:59:58.250 UTC),
        engine_enabled: false,
        ..beat("thermos-1-a")
    };
    store
        .beat_instance(started, datetime!(2025-06-01 12:00:00.125_999 UTC))
        .await
        .unwrap();
    let live = store.live_instances(at(-60)).await.unwrap();
    assert_eq!(
        live,
        [InstanceRecord {
            name: "thermos-1-a".into(),
            started_at: datetime!(2025-06-01 11:59:58.250 UTC),
            heartbeat_at: datetime!(2025-06-01 12:00:00.125 UTC),
            engine_enabled: false,
            version: "1.4.0".into(),
        }]
    );
}

pub async fn a_later_beat_moves_the_heartbeat_and_keeps_started_at(store: Arc<dyn Store>) {
    store.beat_instance(beat("thermos-1-a"), at(0)).await.unwrap();
    let later = InstanceBeat {
        started_at: at(5),
        engine_enabled: false,
        version: "1.4.1".into(),
        ..beat("thermos-1-a")
    };
    store.beat_instance(later, at(5)).await.unwrap();
    let live = store.live_instances(at(-60)).await.unwrap();
    assert_eq!(live.len(), 1, "one row per name");
    assert_eq!(live[0].started_at, T0);
    assert_eq!(live[0].heartbeat_at, at(5));
    assert!(!live[0].engine_enabled);
    assert_eq!(live[0].version, "1.4.1");
    // A late beat (an earlier `now`) changes nothing.
    store.beat_instance(beat("thermos-1-a"), at(3)).await.unwrap();
    assert_eq!(store.live_instances(at(-60)).await.unwrap(), live);
}

pub async fn live_instances_are_those_that_beat_after_the_cutoff_ordered_by_name(store: Arc<dyn Store>) {
    for (name, now) in [
        ("thermos-c", 0),
        ("thermos-a", 10),
        ("thermos-B", 20),
        ("thermos-b", 30),
    ] {
        store.beat_instance(beat(name), at(now)).await.unwrap();
    }
    assert_eq!(
        live_names(&*store, -1).await,
        ["thermos-B", "thermos-a", "thermos-b", "thermos-c"],
        "bytewise order"
    );
    assert_eq!(
        live_names(&*store, 10).await,
        ["thermos-B", "thermos-b"],
        "a heartbeat at the cutoff is not live"
    );
    assert_eq!(live_names(&*store, 9).await, ["thermos-B", "thermos-a", "thermos-b"]);
    assert!(live_names(&*store, 30).await.is_empty());
}

pub async fn remove_instance_deletes_only_that_row_and_is_false_for_an_unknown_name(store: Arc<dyn Store>) {
    store.beat_instance(beat("thermos-1-a"), at(0)).await.unwrap();
    store.beat_instance(beat("thermos-2-b"), at(0)).await.unwrap();
    assert!(store.remove_instance("thermos-1-a").await.unwrap());
    assert!(!store.remove_instance("thermos-1-a").await.unwrap());
    assert!(!store.remove_instance("thermos-9-z").await.unwrap());
    assert_eq!(live_names(&*store, -1).await, ["thermos-2-b"]);
    // A beat after the removal registers the instance again.
    store.beat_instance(beat("thermos-1-a"), at(5)).await.unwrap();
    assert_eq!(live_names(&*store, -1).await, ["thermos-1-a", "thermos-2-b"]);
}

pub async fn a_beat_deletes_instances_silent_for_more_than_a_day(store: Arc<dyn Store>) {
    store.beat_instance(beat("thermos-dead"), at(0)).await.unwrap();
    store.beat_instance(beat("thermos-edge"), at(1)).await.unwrap();
    store.beat_instance(beat("thermos-alive"), at(0)).await.unwrap();
    // A beat a day and a second after T0: "thermos-dead" is more than 24 h
    // old, "thermos-edge" exactly 24 h (kept).
    store.beat_instance(beat("thermos-alive"), at(DAY + 1)).await.unwrap();
    assert_eq!(live_names(&*store, -1).await, ["thermos-alive", "thermos-edge"]);
    // A beat of another instance prunes too.
    store.beat_instance(beat("thermos-new"), at(DAY + 2)).await.unwrap();
    assert_eq!(live_names(&*store, -1).await, ["thermos-alive", "thermos-new"]);
    let alive = &store.live_instances(at(-1)).await.unwrap()[0];
    assert_eq!(alive.started_at, T0, "a long-lived instance keeps its start");
}

pub async fn two_instances_beating_at_once_both_end_registered(store: Arc<dyn Store>) {
    // A dead row for both beats to prune at once.
    store.beat_instance(beat("thermos-dead"), at(-2 * DAY)).await.unwrap();
    for round in 0..20 {
        let first = store.beat_instance(beat("thermos-1-a"), at(round));
        let second = store.beat_instance(beat("thermos-2-b"), at(round));
        let (first, second) = tokio::join!(first, second);
        first.expect("first beat");
        second.expect("second beat");
    }
    let live = store.live_instances(at(-1)).await.unwrap();
    let rows: Vec<_> = live.iter().map(|i| (i.name.as_str(), i.heartbeat_at)).collect();
    assert_eq!(rows, [("thermos-1-a", at(19)), ("thermos-2-b", at(19))]);
}

pub async fn many_beats_of_one_instance_at_once_leave_one_row_at_the_latest_heartbeat(store: Arc<dyn Store>) {
    const BEATS: i64 = 32;
    let mut beats = tokio::task::JoinSet::new();
    for i in 0..BEATS {
        let store = Arc::clone(&store);
        beats.spawn(async move { store.beat_instance(beat("thermos-1-a"), at(i)).await });
    }
    // Meanwhile another instance beats, and one dead row waits to be pruned.
    store.beat_instance(beat("thermos-dead"), at(-2 * DAY)).await.unwrap();
    for i in 0..BEATS {
        let store = Arc::clone(&store);
        beats.spawn(async move { store.beat_instance(beat("thermos-2-b"), at(i)).await });
    }
    while let Some(done) = beats.join_next().await {
        done.expect("beat task").expect("beat without a locking error");
    }
    let live = store.live_instances(at(-3 * DAY)).await.unwrap();
    let rows: Vec<_> = live
        .iter()
        .map(|i| (i.name.as_str(), i.started_at, i.heartbeat_at))
        .collect();
    assert_eq!(
        rows,
        [("thermos-1-a", T0, at(BEATS - 1)), ("thermos-2-b", T0, at(BEATS - 1))],
        "one row each, at the latest beat; the dead row pruned"
    );
}

pub async fn beats_reviving_silent_instances_while_others_prune_them_end_with_every_beating_row(store: Arc<dyn Store>) {
    const SILENT: i64 = 12;
    for i in 0..SILENT {
        store
            .beat_instance(beat(&format!("thermos-old-{i:02}")), at(-2 * DAY))
            .await
            .unwrap();
    }
    // Each silent instance beats again while another instance's beats prune
    // the silent rows: whichever comes first, the beating ones end live.
    let mut beats = tokio::task::JoinSet::new();
    for i in 0..SILENT {
        let reviver = Arc::clone(&store);
        let name = format!("thermos-old-{i:02}");
        beats.spawn(async move { reviver.beat_instance(beat(&name), at(i)).await });
        let pruner = Arc::clone(&store);
        beats.spawn(async move { pruner.beat_instance(beat("thermos-pruner"), at(i)).await });
    }
    while let Some(done) = beats.join_next().await {
        done.expect("beat task").expect("beat without a locking error");
    }
    let live = store.live_instances(at(-3 * DAY)).await.unwrap();
    let mut expected: Vec<_> = (0..SILENT).map(|i| (format!("thermos-old-{i:02}"), at(i))).collect();
    expected.push(("thermos-pruner".to_owned(), at(SILENT - 1)));
    let rows: Vec<_> = live.into_iter().map(|i| (i.name, i.heartbeat_at)).collect();
    assert_eq!(rows, expected);
}

//! Batch inserts (`insert_connections`, a bulk import): every entry reads
//! back exactly as if inserted alone, and a conflict anywhere in the batch
//! writes nothing and names the entry.

use std::sync::Arc;

use thermos_core::id::ConnectionId;
use thermos_store::outbox::EventFilter;
use thermos_store::{ConnectionFilter, ConnectionRecord, NewConnection, Store, StoreError};

use crate::support::{T0, at, connection, event, sealed};

conformance!(
    a_batch_reads_back_exactly_as_the_same_connections_inserted_one_at_a_time,
    a_batch_entry_that_conflicts_with_a_stored_connection_writes_nothing_and_is_named,
    a_batch_entry_that_repeats_an_earlier_one_writes_nothing_and_is_named,
    an_empty_batch_writes_only_its_events,
    a_batch_larger_than_one_statement_is_inserted_whole_or_not_at_all,
);

/// More rows than one statement of either backend takes (SQLite 1,000,
/// PostgreSQL 2,000).
const LARGE: usize = 4500;

/// Entries that differ in every column a connection can vary in.
fn varied(count: usize) -> Vec<NewConnection> {
    (0..count)
        .map(|n| {
            let base = connection(&format!("user-{n}"));
            NewConnection {
                project: if n % 2 == 0 { "acme" } else { "globex" }.into(),
                access_token: sealed(&format!("access-{n}")),
                refresh_token: (n % 3 != 0).then(|| sealed(&format!("refresh-{n}"))),
                scope: (n % 4 != 0).then(|| format!("scope-{n}")),
                issued_at: at(n as i64),
                expires_at: at(3600 + n as i64),
                next_refresh_at: at(3300 + n as i64),
                metadata: serde_json::json!({ "n": n }),
                ..base
            }
        })
        .collect()
}

async fn all(store: &dyn Store) -> Vec<ConnectionRecord> {
    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_connections(&ConnectionFilter::default(), after, 1000)
            .await
            .expect("list connections");
        let Some(last) = page.last() else {
            return records;
        };
        after = Some(last.id);
        records.extend(page);
    }
}

async fn a_batch_reads_back_exactly_as_the_same_connections_inserted_one_at_a_time(store: Arc<dyn Store>) {
    let entries = varied(20);
    let created = event("connection.created", Some("acme"), Some(entries[0].id), 5);
    store
        .insert_connections(entries.clone(), at(5), vec![created.clone()])
        .await
        .unwrap();
    assert_eq!(all(&*store).await.len(), entries.len());
    for new in &entries {
        // Its twin, inserted alone at the same time: the same but for the
        // id and the external id.
        let twin = NewConnection {
            id: ConnectionId::generate(),
            external_id: format!("{}-alone", new.external_id),
            ..new.clone()
        };
        let alone = store.insert_connection(twin, at(5), Vec::new()).await.unwrap();
        let batched = store.get_connection(new.id).await.unwrap().expect("inserted");
        let expected = ConnectionRecord {
            id: new.id,
            external_id: new.external_id.clone(),
            ..alone
        };
        assert_eq!(batched, expected);
        assert_eq!((batched.version, batched.created_at), (1, at(5)));
    }
    let events = store.list_events(&EventFilter::default(), None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.event, created);
}

async fn a_batch_entry_that_conflicts_with_a_stored_connection_writes_nothing_and_is_named(store: Arc<dyn Store>) {
    let stored = store
        .insert_connection(connection("user-6"), T0, Vec::new())
        .await
        .unwrap();
    let batch = varied(10);
    let created = event("connection.created", Some("acme"), Some(batch[0].id), 5);
    let same_key = store.insert_connections(batch.clone(), at(5), vec![created]).await;
    assert!(
        matches!(
            same_key,
            Err(StoreError::BatchConflict {
                index: 6,
                earlier: None
            })
        ),
        "{same_key:?}"
    );
    assert_eq!(
        same_key.unwrap_err().to_string(),
        "batch entry 6 has the id or the project, provider and external_id of a stored connection"
    );
    let mut same_id = varied(10);
    same_id[4].id = stored.id;
    let again = store.insert_connections(same_id, at(5), Vec::new()).await;
    assert!(
        matches!(
            again,
            Err(StoreError::BatchConflict {
                index: 4,
                earlier: None
            })
        ),
        "{again:?}"
    );
    assert_eq!(all(&*store).await, [stored]);
    assert!(
        store
            .list_events(&EventFilter::default(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_batch_entry_that_repeats_an_earlier_one_writes_nothing_and_is_named(store: Arc<dyn Store>) {
    let mut batch = varied(6);
    batch[5].external_id = batch[2].external_id.clone();
    batch[5].project = batch[2].project.clone();
    let repeated_key = store.insert_connections(batch, T0, Vec::new()).await;
    assert!(
        matches!(
            repeated_key,
            Err(StoreError::BatchConflict {
                index: 5,
                earlier: Some(2)
            })
        ),
        "{repeated_key:?}"
    );
    let mut batch = varied(6);
    batch[3].id = batch[1].id;
    let repeated_id = store.insert_connections(batch, T0, Vec::new()).await;
    assert!(
        matches!(
            repeated_id,
            Err(StoreError::BatchConflict {
                index: 3,
                earlier: Some(1)
            })
        ),
        "{repeated_id:?}"
    );
    assert!(all(&*store).await.is_empty());
}

async fn an_empty_batch_writes_only_its_events(store: Arc<dyn Store>) {
    store.insert_connections(Vec::new(), T0, Vec::new()).await.unwrap();
    let imported = event("connections.imported", Some("acme"), None, 0);
    store
        .insert_connections(Vec::new(), T0, vec![imported.clone()])
        .await
        .unwrap();
    assert!(all(&*store).await.is_empty());
    let events = store.list_events(&EventFilter::default(), None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.event, imported);
}

async fn a_batch_larger_than_one_statement_is_inserted_whole_or_not_at_all(store: Arc<dyn Store>) {
    let entries = varied(LARGE);
    store.insert_connections(entries.clone(), T0, Vec::new()).await.unwrap();
    let stored = all(&*store).await;
    assert_eq!(stored.len(), LARGE);
    let mut expected: Vec<ConnectionId> = entries.iter().map(|e| e.id).collect();
    expected.sort();
    assert_eq!(stored.iter().map(|r| r.id).collect::<Vec<_>>(), expected);
    let last = entries.last().expect("a large batch");
    assert_eq!(
        store.get_connection(last.id).await.unwrap().map(|r| r.external_id),
        Some(last.external_id.clone())
    );

    // A conflict in the last statement undoes the statements before it.
    let mut more: Vec<NewConnection> = (0..LARGE).map(|n| connection(&format!("more-{n}"))).collect();
    more[LARGE - 1].external_id = entries[0].external_id.clone();
    more[LARGE - 1].project = entries[0].project.clone();
    let conflict = store.insert_connections(more, T0, Vec::new()).await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::BatchConflict {
                index,
                earlier: None
            }) if index == LARGE - 1
        ),
        "{conflict:?}"
    );
    assert_eq!(all(&*store).await.len(), LARGE);
}

//! The master key rotation part of the Store contract: sealed values are
//! walked in keyset-paginated pages across connections, custom apps and
//! webhooks (filtered by key id or not), replaced only where the bytes read
//! are still stored (never bumping a version), and counted by key id.
//!
//! The "sealed" bytes here are not real ciphertexts (the store never opens
//! one): a format byte, an 8-byte key id, then a marker, which is all the
//! store looks at.

use std::collections::HashSet;
use std::sync::Arc;

use thermos_core::id::ConnectionId;
use thermos_core::seal::{KeyId, Sealed};
use thermos_store::reseal::{KeyIdCount, Reseal, SealedColumn, SealedOwner, SealedValue};
use thermos_store::{CustomAppRecord, NewConnection, Store};

use crate::support::{T0, at, connection, tokens, webhook};

conformance!(
    pages_walk_every_sealed_value_of_every_table_once,
    a_page_filtered_by_key_id_holds_only_values_under_other_keys,
    a_replacement_swaps_only_bytes_still_stored_and_leaves_the_version_alone,
    a_replacement_refuses_a_value_that_changed_since_it_was_read,
    sealed_values_are_counted_by_key_id,
    an_empty_store_has_no_sealed_values,
);

const OLD: KeyId = key(1);
const NEW: KeyId = key(2);

const fn key(n: u8) -> KeyId {
    KeyId::from_bytes([n, 0xee, 0, 0, 0, 0, 0, n])
}

/// Bytes that look sealed under `key`, told apart by `marker`.
fn under(key: KeyId, marker: &str) -> Sealed {
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(key.as_bytes());
    bytes.extend_from_slice(&[0u8; 24]);
    bytes.extend_from_slice(marker.as_bytes());
    Sealed::from_bytes(bytes)
}

fn app(project: &str, provider: &str, secret: Option<Sealed>) -> CustomAppRecord {
    CustomAppRecord {
        project: project.into(),
        provider: provider.into(),
        client_id: format!("{project}-{provider}-client"),
        auth_method: if secret.is_some() {
            "client_secret_basic"
        } else {
            "none"
        }
        .into(),
        client_secret: secret,
        created_at: T0,
        updated_at: T0,
    }
}

/// A connection whose tokens are sealed under `key`.
fn sealed_connection(external_id: &str, key: KeyId, with_refresh: bool) -> NewConnection {
    NewConnection {
        access_token: under(key, &format!("{external_id}-access")),
        refresh_token: with_refresh.then(|| under(key, &format!("{external_id}-refresh"))),
        ..connection(external_id)
    }
}

/// Stores three connections (one without a refresh token), three custom
/// apps (one public, without a secret) and two webhooks (one deleted), all
/// sealed under `OLD`; returns the connections' ids.
async fn fill(store: &dyn Store) -> Vec<ConnectionId> {
    let mut ids = Vec::new();
    for (name, refresh) in [("u1", true), ("u2", false), ("u3", true)] {
        let record = store
            .insert_connection(sealed_connection(name, OLD, refresh), T0, vec![])
            .await
            .unwrap();
        ids.push(record.id);
    }
    for (project, provider, secret) in [
        ("acme", "google", Some(under(OLD, "acme-google"))),
        ("acme", "slack", None),
        ("beta", "google", Some(under(OLD, "beta-google"))),
    ] {
        store.upsert_custom_app(app(project, provider, secret)).await.unwrap();
    }
    for id in ["wh_a", "wh_b"] {
        store
            .insert_webhook(thermos_store::outbox::WebhookRecord {
                secret: under(OLD, id),
                ..webhook(id, "acme", None, 0)
            })
            .await
            .unwrap();
    }
    assert!(store.delete_webhook("wh_b", at(1)).await.unwrap());
    ids
}

/// Every value, walking pages of `rows` rows.
async fn walk(store: &dyn Store, rows: u32, not_under: Option<KeyId>) -> (Vec<SealedValue>, usize) {
    let mut values: Vec<SealedValue> = Vec::new();
    let mut pages = 0;
    loop {
        let after = values.last().map(|v| v.owner.clone());
        let page = store.sealed_values_page(after.as_ref(), rows, not_under).await.unwrap();
        if page.is_empty() {
            return (values, pages);
        }
        pages += 1;
        assert!(pages < 100, "the walk does not end");
        values.extend(page);
    }
}

fn shown(values: &[SealedValue]) -> HashSet<(String, SealedColumn, Vec<u8>)> {
    values
        .iter()
        .map(|v| (format!("{:?}", v.owner), v.column, v.sealed.as_bytes().to_vec()))
        .collect()
}

pub async fn pages_walk_every_sealed_value_of_every_table_once(store: Arc<dyn Store>) {
    let ids = fill(store.as_ref()).await;
    let (values, pages) = walk(store.as_ref(), 2, None).await;
    // 3 connections (5 tokens) in 2 pages, 2 secret-holding apps in 1, 2 webhooks in 1.
    assert_eq!(values.len(), 5 + 2 + 2, "{values:#?}");
    assert_eq!(pages, 4);
    assert_eq!(shown(&values).len(), values.len(), "no value twice");
    let mut expected = Vec::new();
    for (id, name, refresh) in [(ids[0], "u1", true), (ids[1], "u2", false), (ids[2], "u3", true)] {
        expected.push((
            SealedOwner::Connection(id),
            SealedColumn::AccessToken,
            under(OLD, &format!("{name}-access")),
        ));
        if refresh {
            expected.push((
                SealedOwner::Connection(id),
                SealedColumn::RefreshToken,
                under(OLD, &format!("{name}-refresh")),
            ));
        }
    }
    for (project, provider) in [("acme", "google"), ("beta", "google")] {
        expected.push((
            SealedOwner::CustomApp {
                project: project.into(),
                provider: provider.into(),
            },
            SealedColumn::ClientSecret,
            under(OLD, &format!("{project}-{provider}")),
        ));
    }
    for id in ["wh_a", "wh_b"] {
        expected.push((
            SealedOwner::Webhook(id.into()),
            SealedColumn::WebhookSecret,
            under(OLD, id),
        ));
    }
    let expected: Vec<SealedValue> = expected
        .into_iter()
        .map(|(owner, column, sealed)| SealedValue { owner, column, sealed })
        .collect();
    assert_eq!(shown(&values), shown(&expected));

    // One big page per table gives the same values.
    let (again, pages) = walk(store.as_ref(), 1000, None).await;
    assert_eq!(shown(&again), shown(&expected));
    assert_eq!(pages, 3);
}

pub async fn a_page_filtered_by_key_id_holds_only_values_under_other_keys(store: Arc<dyn Store>) {
    let ids = fill(store.as_ref()).await;
    // u1's access token and acme/google's secret move to NEW.
    let u1 = store.get_connection(ids[0]).await.unwrap().unwrap();
    let replaced = store
        .replace_sealed(vec![
            Reseal {
                owner: SealedOwner::Connection(ids[0]),
                column: SealedColumn::AccessToken,
                old: u1.access_token.clone(),
                new: under(NEW, "u1-access"),
            },
            Reseal {
                owner: SealedOwner::CustomApp {
                    project: "acme".into(),
                    provider: "google".into(),
                },
                column: SealedColumn::ClientSecret,
                old: under(OLD, "acme-google"),
                new: under(NEW, "acme-google"),
            },
        ])
        .await
        .unwrap();
    assert_eq!(replaced, 2);

    let (left, _) = walk(store.as_ref(), 1, Some(NEW)).await;
    assert_eq!(left.len(), 9 - 2, "{left:#?}");
    assert!(left.iter().all(|v| v.sealed.key_id() == Some(OLD)), "{left:#?}");
    assert!(
        left.iter()
            .any(|v| v.owner == SealedOwner::Connection(ids[0]) && v.column == SealedColumn::RefreshToken)
    );
    assert!(
        !left
            .iter()
            .any(|v| v.owner == SealedOwner::Connection(ids[0]) && v.column == SealedColumn::AccessToken)
    );

    let (under_old, _) = walk(store.as_ref(), 3, Some(OLD)).await;
    assert_eq!(under_old.len(), 2);
    assert!(under_old.iter().all(|v| v.sealed.key_id() == Some(NEW)));
}

pub async fn a_replacement_swaps_only_bytes_still_stored_and_leaves_the_version_alone(store: Arc<dyn Store>) {
    let ids = fill(store.as_ref()).await;
    let before = store.get_connection(ids[0]).await.unwrap().unwrap();
    let (values, _) = walk(store.as_ref(), 100, None).await;
    let batch: Vec<Reseal> = values
        .iter()
        .map(|v| Reseal {
            owner: v.owner.clone(),
            column: v.column,
            old: v.sealed.clone(),
            new: under(NEW, &format!("{:?}/{:?}", v.owner, v.column)),
        })
        .collect();
    assert_eq!(store.replace_sealed(batch.clone()).await.unwrap(), 9);
    // The same batch again finds no old bytes.
    assert_eq!(store.replace_sealed(batch).await.unwrap(), 0);
    assert_eq!(store.replace_sealed(Vec::new()).await.unwrap(), 0);

    let after = store.get_connection(ids[0]).await.unwrap().unwrap();
    assert_eq!(after.version, before.version, "re-encryption never bumps the version");
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(after.access_token.key_id(), Some(NEW));
    assert_eq!(after.refresh_token.as_ref().and_then(Sealed::key_id), Some(NEW));
    let after = ConnectionRecordView::from(&after);
    let before = ConnectionRecordView::from(&before);
    assert_eq!(after, before, "nothing but the sealed bytes changed");

    let apps = store.list_custom_apps(None).await.unwrap();
    assert_eq!(apps.len(), 3);
    for app in apps {
        assert_eq!(app.client_secret.is_some(), app.provider == "google");
        if let Some(secret) = app.client_secret {
            assert_eq!(secret.key_id(), Some(NEW));
        }
    }
    assert_eq!(
        store.get_webhook("wh_a").await.unwrap().unwrap().secret.key_id(),
        Some(NEW)
    );
    let (left, _) = walk(store.as_ref(), 100, Some(NEW)).await;
    assert!(left.is_empty(), "{left:#?}");
}

/// The fields of a connection other than its sealed tokens.
#[derive(Debug, PartialEq)]
struct ConnectionRecordView(String);

impl From<&thermos_store::ConnectionRecord> for ConnectionRecordView {
    fn from(record: &thermos_store::ConnectionRecord) -> Self {
        let mut record = record.clone();
        record.access_token = Sealed::from_bytes(Vec::new());
        record.refresh_token = None;
        Self(format!("{record:?}"))
    }
}

pub async fn a_replacement_refuses_a_value_that_changed_since_it_was_read(store: Arc<dyn Store>) {
    let ids = fill(store.as_ref()).await;
    let (read, _) = walk(store.as_ref(), 100, Some(NEW)).await;
    // Meanwhile the engine commits new tokens for u1 (sealed under OLD by an
    // instance that has not reloaded yet) and the version moves on.
    let mut refreshed = tokens("ignored", 60);
    refreshed.access_token = under(OLD, "u1-access-2");
    refreshed.refresh_token = Some(under(OLD, "u1-refresh-2"));
    let committed = store
        .replace_tokens(ids[0], refreshed, at(60), vec![])
        .await
        .unwrap()
        .unwrap();

    let batch: Vec<Reseal> = read
        .iter()
        .map(|v| Reseal {
            owner: v.owner.clone(),
            column: v.column,
            old: v.sealed.clone(),
            new: under(NEW, &format!("{:?}/{:?}", v.owner, v.column)),
        })
        .collect();
    assert_eq!(
        store.replace_sealed(batch).await.unwrap(),
        9 - 2,
        "u1's two tokens changed: left alone"
    );
    let now = store.get_connection(ids[0]).await.unwrap().unwrap();
    assert_eq!(now.access_token, under(OLD, "u1-access-2"));
    assert_eq!(now.refresh_token, Some(under(OLD, "u1-refresh-2")));
    assert_eq!(now.version, committed.version);

    // The next pass finds exactly them.
    let (left, _) = walk(store.as_ref(), 100, Some(NEW)).await;
    let owners: HashSet<_> = left.iter().map(|v| (format!("{:?}", v.owner), v.column)).collect();
    assert_eq!(
        owners,
        HashSet::from([
            (
                format!("{:?}", SealedOwner::Connection(ids[0])),
                SealedColumn::AccessToken
            ),
            (
                format!("{:?}", SealedOwner::Connection(ids[0])),
                SealedColumn::RefreshToken
            ),
        ])
    );
}

pub async fn sealed_values_are_counted_by_key_id(store: Arc<dyn Store>) {
    let ids = fill(store.as_ref()).await;
    let u3 = store.get_connection(ids[2]).await.unwrap().unwrap();
    store
        .replace_sealed(vec![Reseal {
            owner: SealedOwner::Connection(ids[2]),
            column: SealedColumn::RefreshToken,
            old: u3.refresh_token.unwrap(),
            new: under(NEW, "u3-refresh"),
        }])
        .await
        .unwrap();
    store
        .insert_connection(
            NewConnection {
                access_token: Sealed::from_bytes(b"short".to_vec()),
                refresh_token: None,
                ..connection("malformed")
            },
            T0,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        store.count_sealed_by_key_id().await.unwrap(),
        [
            KeyIdCount {
                key_id: Some(OLD),
                count: 8
            },
            KeyIdCount {
                key_id: Some(NEW),
                count: 1
            },
            KeyIdCount { key_id: None, count: 1 },
        ]
    );
}

pub async fn an_empty_store_has_no_sealed_values(store: Arc<dyn Store>) {
    assert!(store.sealed_values_page(None, 10, None).await.unwrap().is_empty());
    assert!(store.count_sealed_by_key_id().await.unwrap().is_empty());
    let after = SealedOwner::Webhook("wh_z".into());
    assert!(
        store
            .sealed_values_page(Some(&after), 10, Some(NEW))
            .await
            .unwrap()
            .is_empty()
    );
}

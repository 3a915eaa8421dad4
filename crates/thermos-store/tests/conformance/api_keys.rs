//! The API-key part of the Store contract: keys read back as inserted with
//! their scopes, expiry and revocation; a duplicate key id is a conflict;
//! listing by project, oldest first, revoked keys included; revoking keeps
//! the first revocation time.

use std::sync::Arc;

use thermos_store::{ApiKeyRecord, Store, StoreError};
use time::macros::datetime;

use crate::support::at;

conformance!(
    api_keys_round_trip_and_a_duplicate_key_id_is_a_conflict,
    api_keys_are_listed_oldest_first_filtered_by_project_with_revoked_ones,
    revoking_a_key_keeps_its_row_and_its_first_revocation_time,
    revoking_an_unknown_key_is_none,
);

fn key(key_id: &str, project: &str, created: i64) -> ApiKeyRecord {
    ApiKeyRecord {
        key_id: key_id.to_owned(),
        project: project.to_owned(),
        secret_hash: (0..32).collect(),
        created_at: at(created),
        scopes: vec!["read".to_owned(), "token".to_owned()],
        expires_at: None,
        revoked_at: None,
    }
}

async fn api_keys_round_trip_and_a_duplicate_key_id_is_a_conflict(store: Arc<dyn Store>) {
    let with_expiry = ApiKeyRecord {
        created_at: datetime!(2025-06-01 12:00:00.250 UTC),
        scopes: vec!["read".to_owned(), "token".to_owned(), "admin".to_owned()],
        expires_at: Some(datetime!(2025-09-01 00:00:00.125 UTC)),
        ..key("k1a2b3", "acme", 0)
    };
    store.insert_api_key(with_expiry.clone()).await.unwrap();
    assert_eq!(store.find_api_key("k1a2b3").await.unwrap(), Some(with_expiry.clone()));
    let plain = key("k4d5e6", "acme", 1);
    store.insert_api_key(plain.clone()).await.unwrap();
    assert_eq!(store.find_api_key("k4d5e6").await.unwrap(), Some(plain));
    assert_eq!(store.find_api_key("nope").await.unwrap(), None);
    let again = store
        .insert_api_key(ApiKeyRecord {
            project: "globex".into(),
            ..with_expiry
        })
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
}

async fn api_keys_are_listed_oldest_first_filtered_by_project_with_revoked_ones(store: Arc<dyn Store>) {
    store.insert_api_key(key("k3", "acme", 30)).await.unwrap();
    store.insert_api_key(key("k1", "acme", 10)).await.unwrap();
    store.insert_api_key(key("k2", "globex", 20)).await.unwrap();
    store.insert_api_key(key("k0", "acme", 10)).await.unwrap();
    store.revoke_api_key("k1", at(40)).await.unwrap();
    let ids = |keys: Vec<ApiKeyRecord>| keys.into_iter().map(|k| k.key_id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_api_keys(None).await.unwrap()), ["k0", "k1", "k2", "k3"]);
    let acme = store.list_api_keys(Some("acme")).await.unwrap();
    assert_eq!(ids(acme.clone()), ["k0", "k1", "k3"]);
    assert_eq!(acme[1].revoked_at, Some(at(40)));
    assert_eq!(ids(store.list_api_keys(Some("globex")).await.unwrap()), ["k2"]);
    assert!(store.list_api_keys(Some("initech")).await.unwrap().is_empty());
}

async fn revoking_a_key_keeps_its_row_and_its_first_revocation_time(store: Arc<dyn Store>) {
    let stored = key("k1", "acme", 0);
    store.insert_api_key(stored.clone()).await.unwrap();
    let revoked = store.revoke_api_key("k1", at(5)).await.unwrap().expect("known key");
    assert_eq!(
        revoked,
        ApiKeyRecord {
            revoked_at: Some(at(5)),
            ..stored.clone()
        }
    );
    let again = store.revoke_api_key("k1", at(9)).await.unwrap().expect("known key");
    assert_eq!(again.revoked_at, Some(at(5)));
    assert_eq!(store.find_api_key("k1").await.unwrap(), Some(revoked));
}

async fn revoking_an_unknown_key_is_none(store: Arc<dyn Store>) {
    assert_eq!(store.revoke_api_key("nope", at(0)).await.unwrap(), None);
}

/// A key stored before scopes existed (migrations up to 0007) reads back,
/// after the remaining migrations, with every scope and no expiry: keys that
/// worked keep working.
#[tokio::test]
async fn sqlite_keys_stored_before_scopes_get_every_scope_from_the_migration() {
    use sqlx::sqlite::SqliteConnectOptions;
    use thermos_store::SqliteStore;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thermos.db");
    let mut before_scopes = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/sqlite"
    )))
    .await
    .unwrap();
    before_scopes.migrations = before_scopes
        .migrations
        .iter()
        .filter(|m| m.version < 8)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let pool = sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path).create_if_missing(true))
        .await
        .unwrap();
    before_scopes.run(&pool).await.unwrap();
    sqlx::query("INSERT INTO api_keys (key_id, project, secret_hash, created_at) VALUES ('k1', 'acme', x'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open_path(&path).await.unwrap();
    store.migrate().await.unwrap();
    let key = store.find_api_key("k1").await.unwrap().expect("the old key");
    assert_eq!(key.scopes, ["read", "token", "admin"]);
    assert_eq!((key.expires_at, key.revoked_at), (None, None));
}

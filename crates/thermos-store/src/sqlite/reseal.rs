//! Re-encryption on SQLite: pages of sealed values, compare-and-swap
//! replacement, counts by key id (see [`crate::reseal`]).
//!
//! A key id is bytes 2 to 9 of a sealed value: `substr(col, 2, 8)`. Never
//! touches `version` or `updated_at`.

use sqlx::Row;
use thermos_core::seal::{KeyId, Sealed};

use super::{SqliteStore, limit, row};
use crate::StoreResult;
use crate::reseal::{
    KeyIdCount, Reseal, SealedColumn, SealedOwner, SealedValue, conditions, merge_counts, order_key, table_of, wanted,
};

/// See [`crate::Store::sealed_values_page`].
pub(super) async fn page(
    store: &SqliteStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<KeyId>,
) -> StoreResult<Vec<SealedValue>> {
    let filter = not_under.map(|id| id.as_bytes().to_vec());
    let mut table = after.map_or(0, table_of);
    // The cursor applies to its own table; the tables after it start at their beginning.
    let mut cursor = after;
    while table < 3 {
        let found = match table {
            0 => connections(store, cursor, rows, filter.as_deref()).await?,
            1 => custom_apps(store, cursor, rows, filter.as_deref()).await?,
            _ => webhooks(store, cursor, rows, filter.as_deref()).await?,
        };
        if !found.is_empty() {
            return Ok(found.into_iter().filter(|v| wanted(&v.sealed, not_under)).collect());
        }
        table += 1;
        cursor = None;
    }
    Ok(Vec::new())
}

async fn connections(
    store: &SqliteStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<&[u8]>,
) -> StoreResult<Vec<SealedValue>> {
    let after = match after {
        Some(SealedOwner::Connection(id)) => Some(id.to_string()),
        _ => None,
    };
    let sql = format!(
        "SELECT id, access_token, refresh_token FROM connections {} ORDER BY id LIMIT ?3",
        conditions(&[
            after.is_some().then_some("id > ?1"),
            not_under
                .is_some()
                .then_some("(substr(access_token, 2, 8) <> ?2 OR substr(refresh_token, 2, 8) <> ?2)"),
        ])
    );
    let found = sqlx::query(&sql)
        .bind(after)
        .bind(not_under)
        .bind(limit(rows))
        .fetch_all(&store.reader)
        .await?;
    let mut values = Vec::with_capacity(found.len() * 2);
    for r in &found {
        let id = row::connection_id(r, "id")?;
        values.push(SealedValue {
            owner: SealedOwner::Connection(id),
            column: SealedColumn::AccessToken,
            sealed: Sealed::from_bytes(r.try_get("access_token")?),
        });
        if let Some(bytes) = r.try_get::<Option<Vec<u8>>, _>("refresh_token")? {
            values.push(SealedValue {
                owner: SealedOwner::Connection(id),
                column: SealedColumn::RefreshToken,
                sealed: Sealed::from_bytes(bytes),
            });
        }
    }
    Ok(values)
}

async fn custom_apps(
    store: &SqliteStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<&[u8]>,
) -> StoreResult<Vec<SealedValue>> {
    let after = match after {
        Some(SealedOwner::CustomApp { project, provider }) => Some((project.as_str(), provider.as_str())),
        _ => None,
    };
    let sql = format!(
        "SELECT project, provider, client_secret FROM custom_apps {} ORDER BY project, provider LIMIT ?4",
        conditions(&[
            Some("client_secret IS NOT NULL"),
            after.is_some().then_some("(project, provider) > (?1, ?2)"),
            not_under.is_some().then_some("substr(client_secret, 2, 8) <> ?3"),
        ])
    );
    let found = sqlx::query(&sql)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(not_under)
        .bind(limit(rows))
        .fetch_all(&store.reader)
        .await?;
    found
        .iter()
        .map(|r| {
            Ok(SealedValue {
                owner: SealedOwner::CustomApp {
                    project: r.try_get("project")?,
                    provider: r.try_get("provider")?,
                },
                column: SealedColumn::ClientSecret,
                sealed: Sealed::from_bytes(r.try_get("client_secret")?),
            })
        })
        .collect()
}

async fn webhooks(
    store: &SqliteStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<&[u8]>,
) -> StoreResult<Vec<SealedValue>> {
    let after = match after {
        Some(SealedOwner::Webhook(id)) => Some(id.as_str()),
        _ => None,
    };
    let sql = format!(
        "SELECT id, secret FROM webhooks {} ORDER BY id LIMIT ?3",
        conditions(&[
            after.is_some().then_some("id > ?1"),
            not_under.is_some().then_some("substr(secret, 2, 8) <> ?2"),
        ])
    );
    let found = sqlx::query(&sql)
        .bind(after)
        .bind(not_under)
        .bind(limit(rows))
        .fetch_all(&store.reader)
        .await?;
    found
        .iter()
        .map(|r| {
            Ok(SealedValue {
                owner: SealedOwner::Webhook(r.try_get("id")?),
                column: SealedColumn::WebhookSecret,
                sealed: Sealed::from_bytes(r.try_get("secret")?),
            })
        })
        .collect()
}

/// See [`crate::Store::replace_sealed`]: one write transaction, one
/// compare-and-swap statement per value (cheap inside one SQLite
/// transaction), rows in key order.
pub(super) async fn replace(store: &SqliteStore, mut batch: Vec<Reseal>) -> StoreResult<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    batch.sort_by_cached_key(|r| order_key(&r.owner));
    let mut tx = store.begin_write().await?;
    let mut replaced = 0;
    for item in &batch {
        let (sql, keys): (&str, Vec<String>) = match (&item.owner, item.column) {
            (SealedOwner::Connection(id), SealedColumn::AccessToken) => (
                "UPDATE connections SET access_token = ?1 WHERE access_token = ?2 AND id = ?3",
                vec![id.to_string()],
            ),
            (SealedOwner::Connection(id), SealedColumn::RefreshToken) => (
                "UPDATE connections SET refresh_token = ?1 WHERE refresh_token = ?2 AND id = ?3",
                vec![id.to_string()],
            ),
            (SealedOwner::CustomApp { project, provider }, SealedColumn::ClientSecret) => (
                "UPDATE custom_apps SET client_secret = ?1 WHERE client_secret = ?2 AND project = ?3 AND provider = ?4",
                vec![project.clone(), provider.clone()],
            ),
            (SealedOwner::Webhook(id), SealedColumn::WebhookSecret) => (
                "UPDATE webhooks SET secret = ?1 WHERE secret = ?2 AND id = ?3",
                vec![id.clone()],
            ),
            (owner, column) => {
                return Err(crate::StoreError::Corrupt(format!(
                    "no sealed column {column:?} in the table of {owner:?}"
                )));
            }
        };
        let mut query = sqlx::query(sql).bind(item.new.as_bytes()).bind(item.old.as_bytes());
        for key in keys {
            query = query.bind(key);
        }
        replaced += query.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(replaced)
}

/// See [`crate::Store::count_sealed_by_key_id`].
pub(super) async fn count(store: &SqliteStore) -> StoreResult<Vec<KeyIdCount>> {
    let found: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT key_id, count(*) FROM ( \
             SELECT substr(access_token, 2, 8) AS key_id FROM connections \
             UNION ALL SELECT substr(refresh_token, 2, 8) FROM connections WHERE refresh_token IS NOT NULL \
             UNION ALL SELECT substr(client_secret, 2, 8) FROM custom_apps WHERE client_secret IS NOT NULL \
             UNION ALL SELECT substr(secret, 2, 8) FROM webhooks \
         ) GROUP BY key_id",
    )
    .fetch_all(&store.reader)
    .await?;
    Ok(merge_counts(found.into_iter().map(|(key_id, count)| {
        (KeyId::from_slice(&key_id), u64::try_from(count).unwrap_or(0))
    })))
}

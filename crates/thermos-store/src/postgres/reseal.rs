//! Re-encryption on PostgreSQL: pages of sealed values, compare-and-swap
//! replacement, counts by key id (see [`crate::reseal`]).
//!
//! A key id is bytes 2 to 9 of a sealed value: `substring(col from 2 for
//! 8)`. A batch is replaced in one transaction of at most five statements:
//! its connections are locked in id order first (the order the group commit
//! locks in, so the two cannot deadlock), then one `UPDATE … FROM unnest(…)`
//! per column compares and swaps every value of the batch. Never touches
//! `version` or `updated_at`.

use sqlx::Row;
use thermos_core::seal::{KeyId, Sealed};

use super::{PgStore, limit, row};
use crate::StoreResult;
use crate::reseal::{
    KeyIdCount, Reseal, SealedColumn, SealedOwner, SealedValue, conditions, merge_counts, order_key, table_of, wanted,
};

/// See [`crate::Store::sealed_values_page`].
pub(super) async fn page(
    store: &PgStore,
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
    store: &PgStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<&[u8]>,
) -> StoreResult<Vec<SealedValue>> {
    let after = match after {
        Some(SealedOwner::Connection(id)) => Some(id.to_string()),
        _ => None,
    };
    let sql = format!(
        "SELECT id, access_token, refresh_token FROM connections {} ORDER BY id LIMIT $3",
        conditions(&[
            after.is_some().then_some("id > $1"),
            not_under.is_some().then_some(
                "(substring(access_token from 2 for 8) <> $2 OR substring(refresh_token from 2 for 8) <> $2)"
            ),
        ])
    );
    let found = sqlx::query(&sql)
        .bind(after)
        .bind(not_under)
        .bind(limit(rows))
        .fetch_all(&store.pool)
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
    store: &PgStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<&[u8]>,
) -> StoreResult<Vec<SealedValue>> {
    let after = match after {
        Some(SealedOwner::CustomApp { project, provider }) => Some((project.as_str(), provider.as_str())),
        _ => None,
    };
    let sql = format!(
        "SELECT project, provider, client_secret FROM custom_apps {} ORDER BY project, provider LIMIT $4",
        conditions(&[
            Some("client_secret IS NOT NULL"),
            after.is_some().then_some("(project, provider) > ($1, $2)"),
            not_under
                .is_some()
                .then_some("substring(client_secret from 2 for 8) <> $3"),
        ])
    );
    let found = sqlx::query(&sql)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(not_under)
        .bind(limit(rows))
        .fetch_all(&store.pool)
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
    store: &PgStore,
    after: Option<&SealedOwner>,
    rows: u32,
    not_under: Option<&[u8]>,
) -> StoreResult<Vec<SealedValue>> {
    let after = match after {
        Some(SealedOwner::Webhook(id)) => Some(id.as_str()),
        _ => None,
    };
    let sql = format!(
        "SELECT id, secret FROM webhooks {} ORDER BY id LIMIT $3",
        conditions(&[
            after.is_some().then_some("id > $1"),
            not_under.is_some().then_some("substring(secret from 2 for 8) <> $2"),
        ])
    );
    let found = sqlx::query(&sql)
        .bind(after)
        .bind(not_under)
        .bind(limit(rows))
        .fetch_all(&store.pool)
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

/// See [`crate::Store::replace_sealed`].
pub(super) async fn replace(store: &PgStore, mut batch: Vec<Reseal>) -> StoreResult<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    batch.sort_by_cached_key(|r| order_key(&r.owner));
    let mut access = Columns::default();
    let mut refresh = Columns::default();
    let mut secrets = Columns::default();
    let mut hooks = Columns::default();
    let mut projects: Vec<String> = Vec::new();
    for item in batch {
        match (item.owner, item.column) {
            (SealedOwner::Connection(id), SealedColumn::AccessToken) => access.push(id.to_string(), item.old, item.new),
            (SealedOwner::Connection(id), SealedColumn::RefreshToken) => {
                refresh.push(id.to_string(), item.old, item.new);
            }
            (SealedOwner::CustomApp { project, provider }, SealedColumn::ClientSecret) => {
                projects.push(project);
                secrets.push(provider, item.old, item.new);
            }
            (SealedOwner::Webhook(id), SealedColumn::WebhookSecret) => hooks.push(id, item.old, item.new),
            (owner, column) => {
                return Err(crate::StoreError::Corrupt(format!(
                    "no sealed column {column:?} in the table of {owner:?}"
                )));
            }
        }
    }
    let mut ids: Vec<String> = access.keys.iter().chain(&refresh.keys).cloned().collect();
    ids.sort();
    ids.dedup();
    let mut tx = store.begin().await?;
    if !ids.is_empty() {
        sqlx::query("SELECT id FROM connections WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    }
    let mut replaced = 0;
    for (column, values) in [("access_token", &access), ("refresh_token", &refresh)] {
        if values.keys.is_empty() {
            continue;
        }
        replaced += sqlx::query(&format!(
            "UPDATE connections AS c SET {column} = v.new \
             FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS v (id, old, new) \
             WHERE c.id = v.id AND c.{column} = v.old"
        ))
        .bind(&values.keys)
        .bind(&values.old)
        .bind(&values.new)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    if !secrets.keys.is_empty() {
        replaced += sqlx::query(
            "UPDATE custom_apps AS a SET client_secret = v.new \
             FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) AS v (project, provider, old, new) \
             WHERE a.project = v.project AND a.provider = v.provider AND a.client_secret = v.old",
        )
        .bind(&projects)
        .bind(&secrets.keys)
        .bind(&secrets.old)
        .bind(&secrets.new)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    if !hooks.keys.is_empty() {
        replaced += sqlx::query(
            "UPDATE webhooks AS w SET secret = v.new \
             FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS v (id, old, new) \
             WHERE w.id = v.id AND w.secret = v.old",
        )
        .bind(&hooks.keys)
        .bind(&hooks.old)
        .bind(&hooks.new)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(replaced)
}

/// One column's replacements as parallel arrays (for `unnest`).
#[derive(Default)]
struct Columns {
    keys: Vec<String>,
    old: Vec<Vec<u8>>,
    new: Vec<Vec<u8>>,
}

impl Columns {
    fn push(&mut self, key: String, old: Sealed, new: Sealed) {
        self.keys.push(key);
        self.old.push(old.as_bytes().to_vec());
        self.new.push(new.as_bytes().to_vec());
    }
}

/// See [`crate::Store::count_sealed_by_key_id`].
pub(super) async fn count(store: &PgStore) -> StoreResult<Vec<KeyIdCount>> {
    let found: Vec<(Vec<u8>, i64)> = sqlx::query_as(
        "SELECT key_id, count(*) FROM ( \
             SELECT substring(access_token from 2 for 8) AS key_id FROM connections \
             UNION ALL SELECT substring(refresh_token from 2 for 8) FROM connections WHERE refresh_token IS NOT NULL \
             UNION ALL SELECT substring(client_secret from 2 for 8) FROM custom_apps WHERE client_secret IS NOT NULL \
             UNION ALL SELECT substring(secret from 2 for 8) FROM webhooks \
         ) AS sealed GROUP BY key_id",
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(merge_counts(found.into_iter().map(|(key_id, count)| {
        (KeyId::from_slice(&key_id), u64::try_from(count).unwrap_or(0))
    })))
}

//! The audit log on SQLite: append in batches, list newest first.
//!
//! Never updates or deletes (the table's triggers would refuse it anyway).

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{SqliteStore, row};
use crate::audit::{AuditFilter, AuditRecord, NewAuditEntry};
use crate::{StoreError, StoreResult};

/// Rows per INSERT statement: 10 parameters each stays far below SQLite's
/// limit of 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 500;

const COLUMNS: &str = "id, at, first_at, actor, actor_project, action, target, client, request_id, status, count";

/// Appends `entries` in one transaction, in order.
pub(super) async fn append(store: &SqliteStore, entries: Vec<NewAuditEntry>) -> StoreResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin_write().await?;
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit_log (at, first_at, actor, actor_project, action, target, client, request_id, \
             status, count) ",
        );
        insert.push_values(chunk, |mut b, e| {
            b.push_bind(row::millis(e.at))
                .push_bind(row::millis(e.first_at))
                .push_bind(&e.actor)
                .push_bind(&e.actor_project)
                .push_bind(&e.action)
                .push_bind(&e.target)
                .push_bind(&e.client)
                .push_bind(&e.request_id)
                .push_bind(i64::from(e.status))
                .push_bind(i64::from(e.count));
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The entries matching `filter`, newest first.
pub(super) async fn list(store: &SqliteStore, filter: AuditFilter) -> StoreResult<Vec<AuditRecord>> {
    let mut query = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM audit_log WHERE 1 = 1"));
    if let Some(actor) = &filter.actor {
        query.push(" AND actor = ").push_bind(actor);
    }
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action);
    }
    if let Some(target) = &filter.target {
        query.push(" AND target = ").push_bind(target);
    }
    if let Some(since) = filter.since {
        query.push(" AND at >= ").push_bind(row::millis(since));
    }
    if let Some(before) = filter.before_id {
        query.push(" AND id < ").push_bind(before);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(filter.limit));
    query
        .build()
        .fetch_all(&store.reader)
        .await?
        .iter()
        .map(entry)
        .collect()
}

fn entry(found: &SqliteRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: found.try_get("id")?,
        entry: NewAuditEntry {
            at: row::from_millis(found.try_get("at")?, "audit_log.at")?,
            first_at: row::from_millis(found.try_get("first_at")?, "audit_log.first_at")?,
            actor: found.try_get("actor")?,
            actor_project: found.try_get("actor_project")?,
            action: found.try_get("action")?,
            target: found.try_get("target")?,
            client: found.try_get("client")?,
            request_id: found.try_get("request_id")?,
            status: narrow(found.try_get("status")?, "audit_log.status")?,
            count: narrow(found.try_get("count")?, "audit_log.count")?,
        },
    })
}

/// A stored integer in the record's narrower type.
fn narrow<T: TryFrom<i64>>(n: i64, column: &str) -> StoreResult<T> {
    T::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n} out of range")))
}

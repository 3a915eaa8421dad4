//! The audit log on PostgreSQL: append in batches, list newest first.
//!
//! Never updates or deletes (the table's triggers would refuse it anyway).

use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use super::{PgStore, row};
use crate::audit::{AuditFilter, AuditRecord, NewAuditEntry};
use crate::{StoreError, StoreResult};

/// Rows per INSERT statement: 10 parameters each stays far below
/// PostgreSQL's limit of 65,535 bound parameters.
const ROWS_PER_STATEMENT: usize = 1000;

const COLUMNS: &str = "id, at, first_at, actor, actor_project, action, target, client, request_id, status, count";

/// Appends `entries` in one transaction, in order.
pub(super) async fn append(store: &PgStore, entries: Vec<NewAuditEntry>) -> StoreResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut tx = store.pool.begin().await?;
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO audit_log (at, first_at, actor, actor_project, action, target, client, request_id, \
             status, count) ",
        );
        insert.push_values(chunk, |mut b, e| {
            b.push_bind(row::ms(e.at))
                .push_bind(row::ms(e.first_at))
                .push_bind(&e.actor)
                .push_bind(&e.actor_project)
                .push_bind(&e.action)
                .push_bind(&e.target)
                .push_bind(&e.client)
                .push_bind(&e.request_id)
                .push_bind(i32::from(e.status))
                .push_bind(i32::try_from(e.count).unwrap_or(i32::MAX));
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The entries matching `filter`, newest first.
pub(super) async fn list(store: &PgStore, filter: AuditFilter) -> StoreResult<Vec<AuditRecord>> {
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM audit_log WHERE TRUE"));
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
        query.push(" AND at >= ").push_bind(row::ms(since));
    }
    if let Some(before) = filter.before_id {
        query.push(" AND id < ").push_bind(before);
    }
    query
        .push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(filter.limit));
    query.build().fetch_all(&store.pool).await?.iter().map(entry).collect()
}

fn entry(found: &PgRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: found.try_get("id")?,
        entry: NewAuditEntry {
            at: found.try_get("at")?,
            first_at: found.try_get("first_at")?,
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
fn narrow<T: TryFrom<i32>>(n: i32, column: &str) -> StoreResult<T> {
    T::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n} out of range")))
}

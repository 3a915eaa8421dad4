//! A Thermos configuration and a store pre-filled with connections,
//! written straight through `thermos_store` (sealed with the master key,
//! in batches through `Store::insert_connections`), as an import would
//! leave them but without the HTTP API in the way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use thermos::config::Config;
use thermos_core::id::ConnectionId;
use thermos_core::seal::{Field, MasterKey};
use thermos_store::{NewConnection, Store};
use time::OffsetDateTime;

/// The provider slug and project every benchmark connection has.
pub const PROVIDER: &str = "bench";
pub const PROJECT: &str = "bench";

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Where the database is.
#[derive(Debug, Clone)]
pub struct Database {
    /// SQLite: the file. PostgreSQL: the server URL.
    pub url: String,
    /// PostgreSQL: this run's own schema (dropped at the end).
    pub schema: Option<String>,
}

impl Database {
    pub fn new(backend: Backend, dir: &Path, pg_url: &str) -> Self {
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.join("thermos.db").display()),
                schema: None,
            },
            Backend::Postgres => Self {
                url: pg_url.to_owned(),
                schema: Some(format!("thermos_bench_{}", std::process::id())),
            },
        }
    }

    /// Drops the PostgreSQL schema (SQLite files go with the temp dir).
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        if let Some(schema) = &self.schema {
            let pool = sqlx::PgPool::connect(&self.url)
                .await
                .context("connect to PostgreSQL")?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .execute(&pool)
                .await
                .context("drop the benchmark schema")?;
            pool.close().await;
        }
        Ok(())
    }

    /// PostgreSQL: rows inserted, updated and deleted so far in this run's
    /// schema (`pg_stat_user_tables`; the statistics lag up to a second
    /// behind, so wait before reading). `None` on SQLite.
    pub async fn row_writes(&self) -> anyhow::Result<Option<(u64, u64, u64)>> {
        let Some(schema) = &self.schema else { return Ok(None) };
        let pool = sqlx::PgPool::connect(&self.url).await?;
        let (ins, upd, del): (i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(n_tup_ins), 0)::int8, coalesce(sum(n_tup_upd), 0)::int8, coalesce(sum(n_tup_del), 0)::int8 \
             FROM pg_stat_user_tables WHERE schemaname = $1",
        )
        .bind(schema)
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        Ok(Some((ins as u64, upd as u64, del as u64)))
    }

    /// The database's size on disk: SQLite, the file and its write-ahead
    /// log after a checkpoint that truncates the log; PostgreSQL, `pg_total_relation_size` (indexes and TOAST
    /// included) of every table in this run's schema.
    pub async fn size_bytes(&self) -> anyhow::Result<u64> {
        match &self.schema {
            Some(schema) => {
                let pool = sqlx::PgPool::connect(&self.url).await?;
                let bytes: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                )
                .bind(schema)
                .fetch_one(&pool)
                .await?;
                pool.close().await;
                Ok(bytes as u64)
            }
            None => {
                // At rest: the log copied into the file and truncated first,
                // or its size would be whatever the last checkpoint left.
                let pool = sqlx::SqlitePool::connect(&self.url).await?;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&pool).await?;
                pool.close().await;
                let file = self.url.strip_prefix("sqlite://").unwrap_or(&self.url);
                let size = |path: String| std::fs::metadata(path).map_or(0, |m| m.len());
                Ok(size(file.to_owned()) + size(format!("{file}-wal")))
            }
        }
    }

    /// Rows in a table (the store has no counter of its writes; rows show what was written).
    pub async fn count_rows(&self, table: &str) -> anyhow::Result<u64> {
        let n: i64 = match &self.schema {
            Some(schema) => {
                let pool = sqlx::PgPool::connect(&self.url).await?;
                let n = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".{table}"))
                    .fetch_one(&pool)
                    .await?;
                pool.close().await;
                n
            }
            None => {
                let pool = sqlx::SqlitePool::connect(&self.url).await?;
                let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(&pool)
                    .await?;
                pool.close().await;
                n
            }
        };
        Ok(n as u64)
    }
}

/// A configuration on `db` with one provider app, `bench`, at `token_url`.
pub fn config_toml(
    dir: &Path,
    db: &Database,
    listen: &str,
    token_url: &str,
    client: (&str, &str),
    refresh_toml: &str,
) -> String {
    let schema = db
        .schema
        .as_ref()
        .map_or(String::new(), |s| format!("schema = \"{s}\"\nmax_connections = 16\n"));
    format!(
        r#"[server]
listen = "{listen}"
[database]
url = "{url}"
{schema}[security]
master_key_file = "{key}"
[refresh]
{refresh_toml}
[[provider]]
slug = "{PROVIDER}"
token_url = "{token_url}"
client_id = "{id}"
client_secret = "{secret}"
auth_method = "client_secret_basic"
default_ttl = "1h"
"#,
        url = db.url,
        key = dir.join("thermos.key").display(),
        id = client.0,
        secret = client.1,
    )
}

pub fn parse_config(toml: &str) -> anyhow::Result<Config> {
    Config::from_toml_str(toml).map_err(|e| anyhow::anyhow!("benchmark config: {e}"))
}

/// The tokens one connection starts with.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
}

/// One connection to import: its tokens, when its access token expires
/// and when it is due.
#[derive(Debug, Clone)]
pub struct Row {
    pub tokens: Tokens,
    pub expires_at: OffsetDateTime,
    pub next_refresh_at: OffsetDateTime,
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    pub ids: Vec<ConnectionId>,
    pub elapsed: Duration,
}

impl Imported {
    pub fn per_second(&self) -> f64 {
        self.ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Connections per `insert_connections` call (one transaction each).
pub const IMPORT_BATCH: usize = 5_000;

/// Inserts one connection per element of `tokens`, each expiring
/// `expires_in` from now and due at `due_in` from now (see [`import`]).
pub async fn insert(
    store: &Arc<dyn Store>,
    key: &MasterKey,
    tokens: impl Iterator<Item = Tokens>,
    expires_in: Duration,
    due_in: Duration,
    in_flight: usize,
) -> anyhow::Result<Imported> {
    let now = thermos::engine::truncate_ms(OffsetDateTime::now_utc());
    let rows = tokens.map(|tokens| Row {
        tokens,
        expires_at: now + expires_in,
        next_refresh_at: now + due_in,
    });
    import(store, key, rows, now, in_flight).await
}

/// Imports one connection per row, `user-{i}` of project and provider
/// `bench`, issued at `now`: sealed here with the master key and written
/// with the store's batch insert, [`IMPORT_BATCH`] connections a
/// transaction, `in_flight` batches at once (the next batch is sealed while
/// the last one is written).
pub async fn import(
    store: &Arc<dyn Store>,
    key: &MasterKey,
    rows: impl Iterator<Item = Row>,
    now: OffsetDateTime,
    in_flight: usize,
) -> anyhow::Result<Imported> {
    let started = Instant::now();
    let mut rows = rows.enumerate().peekable();
    let batches = std::iter::from_fn(move || {
        rows.peek()?;
        Some(rows.by_ref().take(IMPORT_BATCH).collect::<Vec<_>>())
    });
    let mut writes = futures::stream::iter(batches)
        .map(|batch| {
            let new: Vec<NewConnection> = batch.into_iter().map(|(i, row)| sealed(key, i, row, now)).collect();
            let ids: Vec<ConnectionId> = new.iter().map(|c| c.id).collect();
            let store = Arc::clone(store);
            async move { store.insert_connections(new, now, Vec::new()).await.map(|()| ids) }
        })
        .buffered(in_flight.max(1));
    let mut ids = Vec::new();
    while let Some(batch) = writes.next().await {
        ids.extend(batch.context("insert a batch of connections")?);
    }
    Ok(Imported {
        ids,
        elapsed: started.elapsed(),
    })
}

/// Row `i` as a new connection, its tokens sealed for its id.
fn sealed(key: &MasterKey, i: usize, row: Row, now: OffsetDateTime) -> NewConnection {
    let id = ConnectionId::generate();
    NewConnection {
        id,
        project: PROJECT.into(),
        provider: PROVIDER.into(),
        external_id: format!("user-{i}"),
        access_token: key.seal(&id, Field::AccessToken, &row.tokens.access_token.into()),
        refresh_token: Some(key.seal(&id, Field::RefreshToken, &row.tokens.refresh_token.into())),
        token_type: "Bearer".into(),
        scope: None,
        issued_at: now,
        expires_at: row.expires_at,
        metadata: serde_json::json!({}),
        next_refresh_at: row.next_refresh_at,
        grant: Default::default(),
        refresh_token_expires_at: None,
    }
}

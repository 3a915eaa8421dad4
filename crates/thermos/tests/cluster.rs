//! Many `thermos serve` processes on one PostgreSQL schema: the claim
//! protocol of ARCHITECTURE.md ("Many instances on PostgreSQL") measured from
//! outside, against a strict rotating provider that revokes a grant when a
//! used refresh token comes back.
//!
//! Each test works in a schema of its own (`cluster_<uuid>`) in the database
//! named by `THERMOS_TEST_DATABASE_URL` (default the local server), dropped at
//! the end even when the test fails. Without a database the tests say so and
//! pass, unless `CI` is set.
//!
//! What a test reads: the provider's books (calls per grant and per refresh
//! token, reuse, call log), each connection's attempts through the API, the
//! due times the store planned (sampled from the `connections` table while no
//! lease is held) and each instance's log lines.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ADMIN_KEY, PROVIDER, config_toml, eventually, ts};
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _};
use thermos_testprovider::{IssuedGrant, ProviderOptions, TestProvider};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Schemas of runs killed before their guard ran are dropped after this long.
const STALE_SCHEMA: Duration = Duration::from_secs(3600);

/// How late a refresh may start after its planned time on a loaded 2-core
/// machine (six processes, PostgreSQL and the provider share it).
const LATENESS_TOLERANCE: Duration = Duration::from_secs(2);

// ----- the database ---------------------------------------------------------

/// A schema of one test; dropped (with everything in it) when this is.
struct TestSchema {
    url: String,
    name: String,
    pool: PgPool,
}

impl TestSchema {
    /// A new, empty schema, or `None` (having said why) when no database
    /// answers and `CI` is not set.
    async fn create() -> Option<Self> {
        let url = std::env::var("THERMOS_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        let connect = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url);
        let pool = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(pool)) => pool,
            Ok(Err(error)) => return skipped(&url, &error.to_string()),
            Err(_) => return skipped(&url, "no answer within 5 s"),
        };
        drop_stale_schemas(&pool).await;
        let name = format!("cluster_{}", uuid::Uuid::now_v7().simple());
        pool.execute(format!("CREATE SCHEMA \"{name}\"").as_str())
            .await
            .expect("create the test schema");
        Some(Self { url, name, pool })
    }

    /// `connections` of this schema, for SQL text.
    fn connections(&self) -> String {
        format!("\"{}\".connections", self.name)
    }
}

impl Drop for TestSchema {
    /// Runs on a thread with its own runtime: the test's runtime cannot be
    /// blocked on from inside.
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test schema");
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&url).await?;
                conn.execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
                    .await?;
                conn.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test schema {}: {error}", self.name);
        }
    }
}

/// No database: a failure on CI, a note elsewhere.
fn skipped<T>(url: &str, error: &str) -> Option<T> {
    let url = redacted(url);
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL at {url} is unreachable ({error}); CI must run the cluster tests");
    }
    // Straight to stderr: the harness captures the output of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "cluster test skipped: no PostgreSQL at {url} ({error}); set THERMOS_TEST_DATABASE_URL to a database \
         the tests may create schemas in (e.g. {DEFAULT_DATABASE_URL})"
    );
    None
}

fn redacted(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(s, rest)| Some((s, rest.split_once('@')?)))
    {
        Some((scheme, (userinfo, host))) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Drops `cluster_<uuid v7>` schemas older than [`STALE_SCHEMA`], left by a
/// run that was killed before its guards ran.
async fn drop_stale_schemas(pool: &PgPool) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'cluster\\_%'")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    for name in names {
        let created = uuid::Uuid::parse_str(name.trim_start_matches("cluster_"))
            .ok()
            .and_then(|id| id.get_timestamp())
            .map(|t| Duration::from_secs(t.to_unix().0));
        if created.is_some_and(|created| created + STALE_SCHEMA < now) {
            let _ = pool
                .execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
                .await;
        }
    }
}

/// The due times the store planned, sampled from unleased rows (a leased
/// row's `next_refresh_at` is its lease's end, not a plan).
struct PlanSampler {
    plans: Arc<Mutex<HashMap<String, BTreeSet<OffsetDateTime>>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PlanSampler {
    /// Samples every 200 ms; a plan stands for seconds, so none is missed.
    fn start(schema: &TestSchema) -> Self {
        let plans = Arc::new(Mutex::new(HashMap::<String, BTreeSet<OffsetDateTime>>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sql = format!(
            "SELECT id, next_refresh_at FROM {} WHERE lease_owner IS NULL AND next_refresh_at IS NOT NULL \
             AND status IN ('active', 'failing')",
            schema.connections()
        );
        let (pool, into, stopped) = (schema.pool.clone(), Arc::clone(&plans), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            while !stopped.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                if let Ok(rows) = sqlx::query_as::<_, (String, OffsetDateTime)>(&sql)
                    .fetch_all(&pool)
                    .await
                {
                    let mut plans = into.lock().unwrap();
                    for (id, at) in rows {
                        plans.entry(id).or_default().insert(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { plans, stop, task }
    }

    async fn finish(self) -> HashMap<String, BTreeSet<OffsetDateTime>> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.plans.lock().unwrap())
    }
}

// ----- the processes ---------------------------------------------------------

/// One `thermos serve` process.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    /// Its lease-owner name (`/ready`'s `instance`).
    name: String,
}

impl Server {
    /// Starts `thermos serve` and waits until it says where it listens.
    async fn start(config: &Path, log: PathBuf, master_key: &str, http: &reqwest::Client) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_thermos"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("THERMOS_ADMIN_KEY", ADMIN_KEY)
            .env("THERMOS_MASTER_KEY", master_key)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start thermos");
        let mut server = Self {
            child,
            base: String::new(),
            log,
            name: String::new(),
        };
        let mut listen = None;
        let found = eventually(Duration::from_secs(30), || {
            listen = log_lines(&server.log)
                .into_iter()
                .find(|l| l["msg"] == "thermos is serving")
                .and_then(|l| l["listen"].as_str().map(str::to_owned));
            std::future::ready(listen.is_some())
        })
        .await;
        assert!(found, "server did not start:\n{}", server.log_text());
        server.base = format!("http://{}", listen.unwrap());
        let (status, ready) = call(http, &format!("{}/ready", server.base)).await;
        assert_eq!(status, 200, "{ready}");
        server.name = ready["instance"].as_str().expect("instance name").to_owned();
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Successful refreshes this instance logged.
    fn refreshed(&self) -> usize {
        log_lines(&self.log).iter().filter(|l| l["msg"] == "refreshed").count()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the graceful stop.
    async fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let stopped = eventually(Duration::from_secs(30), || {
            std::future::ready(!matches!(self.child.try_wait(), Ok(None)))
        })
        .await;
        assert!(stopped, "no graceful stop within 30 s:\n{}", self.log_text());
    }
}

impl Drop for Server {
    /// A failed test must not leave a server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Instances on one schema: same config file, same master key.
struct Cluster {
    // Fields drop in order: the processes go before the schema they use.
    servers: Vec<Server>,
    http: reqwest::Client,
    master_key: String,
    reader_config: PathBuf,
    dir: tempfile::TempDir,
    db: TestSchema,
}

impl Cluster {
    /// Starts `instances` identical processes at once (their migrations race
    /// and must serialize) on a new schema; `None` when there is no database.
    async fn start(provider: &TestProvider, instances: usize, engine: bool, refresh_toml: &str) -> Option<Self> {
        let db = TestSchema::create().await?;
        let dir = tempfile::tempdir().unwrap();
        let config_for = |engine: bool| {
            let sqlite = config_toml(dir.path(), &provider.token_url(), engine, refresh_toml);
            let url = sqlite
                .lines()
                .find(|l| l.starts_with("url = \"sqlite://"))
                .expect("a database url line")
                .to_owned();
            let postgres = format!(
                "url = \"{}\"\nschema = \"{}\"\nmax_connections = 8\nacquire_timeout = \"10s\"",
                db.url, db.name
            );
            sqlite.replacen(&url, &postgres, 1)
        };
        let config = dir.path().join("thermos.toml");
        std::fs::write(&config, config_for(engine)).unwrap();
        let reader_config = dir.path().join("reader.toml");
        std::fs::write(&reader_config, config_for(false)).unwrap();
        let master_key = thermos_core::seal::MasterKey::generate().1.expose_secret().to_owned();
        let http = reqwest::Client::new();
        let servers = futures::future::join_all((0..instances).map(|i| {
            Server::start(
                &config,
                dir.path().join(format!("instance-{i}.log")),
                &master_key,
                &http,
            )
        }))
        .await;
        let names: BTreeSet<_> = servers.iter().map(|s| s.name.clone()).collect();
        assert_eq!(names.len(), instances, "lease-owner names must differ");
        Some(Self {
            servers,
            http,
            master_key,
            reader_config,
            dir,
            db,
        })
    }

    /// Imports one connection per grant, round-robin over the instances' APIs.
    async fn import_spread(&self, grants: &[IssuedGrant], expires_in: u64) -> Vec<String> {
        let n = self.servers.len();
        futures::stream::iter(grants.iter().enumerate())
            .map(|(i, grant)| import(&self.http, &self.servers[i % n].base, grant, i, expires_in))
            .buffered(24)
            .collect()
            .await
    }

    /// Stops every instance gracefully (refreshes in flight are stored), so
    /// that the provider's books and the store no longer move; then starts an
    /// API-only instance to read the results through the API.
    async fn freeze(&mut self) -> Server {
        for server in &mut self.servers {
            if server.is_running() {
                server.terminate().await;
            }
        }
        let log = self.dir.path().join("reader.log");
        Server::start(&self.reader_config, log, &self.master_key, &self.http).await
    }

    /// Rows of this schema that `owner` holds a lease on, with the lease's end.
    async fn leases_of(&self, owner: &str) -> Vec<(String, OffsetDateTime)> {
        let sql = format!(
            "SELECT id, lease_until FROM {} WHERE lease_owner = $1 AND lease_until IS NOT NULL",
            self.db.connections()
        );
        sqlx::query_as(&sql).bind(owner).fetch_all(&self.db.pool).await.unwrap()
    }

    /// The instance holding the most leases now, and how many.
    async fn busiest(&self) -> (usize, usize) {
        let mut busiest = (0, 0);
        for (i, server) in self.servers.iter().enumerate() {
            let held = self.leases_of(&server.name).await.len();
            if held > busiest.1 {
                busiest = (i, held);
            }
        }
        busiest
    }

    /// Connections refreshed after `at`, and in all.
    async fn refreshed_since(&self, at: OffsetDateTime) -> (i64, i64) {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE last_refreshed_at > $1), count(*) FROM {}",
            self.db.connections()
        );
        sqlx::query_as(&sql).bind(at).fetch_one(&self.db.pool).await.unwrap()
    }
}

async fn call(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = http.get(url).bearer_auth(ADMIN_KEY).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn import(http: &reqwest::Client, base: &str, grant: &IssuedGrant, i: usize, expires_in: u64) -> String {
    let body = json!({"project": "p1", "provider": PROVIDER, "external_id": format!("user-{i}"),
        "access_token": grant.access_token, "refresh_token": grant.refresh_token, "expires_in": expires_in});
    let response = http
        .post(format!("{base}/v1/connections"))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .expect("import");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

/// One recorded refresh attempt.
#[derive(Debug)]
struct Attempt {
    at: OffsetDateTime,
    trigger: String,
    outcome: String,
}

/// A connection as the API shows it, with its attempts oldest first.
struct Observed {
    view: Value,
    attempts: Vec<Attempt>,
}

impl Observed {
    async fn read(http: &reqwest::Client, base: &str, id: &str) -> Self {
        let (status, view) = call(http, &format!("{base}/v1/connections/{id}")).await;
        assert_eq!(status, 200, "{view}");
        let (status, list) = call(http, &format!("{base}/v1/connections/{id}/attempts?limit=1000")).await;
        assert_eq!(status, 200, "{list}");
        let mut attempts: Vec<_> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| Attempt {
                at: ts(&a["at"]),
                trigger: a["trigger"].as_str().unwrap_or_default().to_owned(),
                outcome: a["outcome"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        attempts.sort_by_key(|a| a.at);
        Self { view, attempts }
    }

    async fn read_all(http: &reqwest::Client, base: &str, ids: &[String]) -> Vec<Self> {
        futures::stream::iter(ids)
            .map(|id| Self::read(http, base, id))
            .buffered(16)
            .collect()
            .await
    }

    fn created_at(&self) -> OffsetDateTime {
        ts(&self.view["created_at"])
    }
}

/// How late each refresh started after the due time it served: the plan
/// sampled after the previous refresh (or the import) and not after this
/// one; `None` where the sampler saw no plan.
fn lateness(
    since: OffsetDateTime,
    attempts: &[Attempt],
    plans: Option<&BTreeSet<OffsetDateTime>>,
) -> Vec<Option<Duration>> {
    let mut previous = since;
    attempts
        .iter()
        .map(|a| {
            let plan = plans.and_then(|p| {
                p.range((Bound::Excluded(previous), Bound::Included(a.at)))
                    .next_back()
                    .copied()
            });
            previous = a.at;
            plan.map(|plan| Duration::try_from(a.at - plan).unwrap_or_default())
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn secs(d: time::Duration) -> f64 {
    d.as_seconds_f64()
}

/// The provider answered every call 200: no `invalid_grant` (nor any other
/// refusal) was ever sent. Only calls whose caller was killed may lack an
/// answer (the provider drops a request whose client went away).
fn assert_every_call_succeeded(provider: &TestProvider, killed_callers: usize) {
    let log = provider.token_call_log();
    let refused: Vec<_> = log.iter().filter(|c| c.status.is_some_and(|s| s != 200)).collect();
    assert!(
        refused.is_empty(),
        "{} of {} token calls were refused (400 = invalid_grant): {:?}",
        refused.len(),
        log.len(),
        &refused[..refused.len().min(10)]
    );
    let unanswered = log.iter().filter(|c| c.status.is_none()).count();
    assert!(
        unanswered <= killed_callers,
        "{unanswered} token calls unanswered, {killed_callers} callers killed"
    );
    assert_eq!(provider.reuse_detected(), 0, "a used refresh token came back");
}

// ----- the tests ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_refresh_500_rotating_connections_each_exactly_once_per_due_time() {
    const CONNECTIONS: usize = 500;
    const RUN_FOR: Duration = Duration::from_secs(120);
    // Strict rotation, no reuse grace: a second refresh with a used token revokes the grant.
    let provider = TestProvider::start(ProviderOptions {
        access_token_ttl: Duration::from_secs(20),
        ..ProviderOptions::default()
    })
    .await;
    let Some(mut cluster) = Cluster::start(&provider, 3, true, "request_timeout = \"5s\"\n").await else {
        return;
    };
    let sampler = PlanSampler::start(&cluster.db);
    let grants: Vec<_> = (0..CONNECTIONS).map(|_| provider.issue_grant()).collect();
    let ids = cluster.import_spread(&grants, 20).await;

    // Let them run; every instance must stay up.
    let started = tokio::time::Instant::now();
    while started.elapsed() < RUN_FOR {
        tokio::time::sleep(Duration::from_secs(10).min(RUN_FOR - started.elapsed())).await;
        for (i, server) in cluster.servers.iter_mut().enumerate() {
            assert!(server.is_running(), "instance {i} died:\n{}", server.log_text());
        }
        println!(
            "[{:>3}s] provider refreshes {}",
            started.elapsed().as_secs(),
            provider.refreshes()
        );
    }
    let end = OffsetDateTime::now_utc();
    let reader = cluster.freeze().await;
    let plans = sampler.finish().await;
    let observed = Observed::read_all(&cluster.http, &reader.base, &ids).await;

    assert_every_call_succeeded(&provider, 0);
    let mut lateness_all = Vec::new();
    let mut unmeasured = 0usize;
    let mut counts = BTreeMap::<usize, usize>::new();
    for ((id, grant), seen) in ids.iter().zip(&grants).zip(&observed) {
        assert_eq!(seen.view["status"], "active", "{id}: {}", seen.view);
        let created = seen.created_at();
        let n = seen.attempts.len();
        *counts.entry(n).or_default() += 1;
        for a in &seen.attempts {
            assert_eq!(
                (a.trigger.as_str(), a.outcome.as_str()),
                ("scheduled", "refreshed"),
                "{id}: {a:?}"
            );
        }
        // One chain per grant. The provider rotates on every refresh and
        // revokes the grant when a used refresh token comes back (none did,
        // and every call was answered 200), so every call presented the
        // refresh token the previous call issued. And there were as many
        // calls as stored refreshes: none was lost or made twice.
        assert_eq!(seen.view["refresh_count"].as_u64(), Some(n as u64), "{id}");
        assert_eq!(provider.calls_for(&grant.grant), n as u64, "{id}: calls vs refreshes");
        assert_eq!(
            provider.max_in_flight_for(&grant.grant),
            1,
            "{id}: overlapping refreshes"
        );
        assert_eq!(
            provider.calls_with(&grant.refresh_token),
            1,
            "{id}: first refresh token"
        );
        let current = provider.current_refresh_token(&grant.grant).expect("grant alive");
        assert_eq!(
            provider.calls_with(&current),
            0,
            "{id}: the stored refresh token is unused"
        );

        // Once per due time. Imported with 20 s to live, the first refresh is
        // due 9-10 s later (lead: half the lifetime, minus up to 10 % jitter).
        // The provider's 20 s tokens are stored as living 15 s (5 s skew
        // allowance), so each next refresh is due 6.75-7.5 s after the
        // previous one was stored. Hence consecutive refreshes are at least
        // 6.75 s apart (a double refresh would be milliseconds apart), each
        // starts before the previous token expired (< 15 s after it), and
        // over the window from import to `end` a connection gets
        //   at most  1 + ⌊(window − 9 s) / 6.75 s⌋           refreshes (all early),
        //   at least 1 + ⌊(window − 10 s − L) / (7.5 s + 0.5 s + L)⌋ (all late
        //   by the tolerance L, each call and commit taking up to 0.5 s).
        // For a 120 s window that is 11..=17.
        let mut previous = None::<OffsetDateTime>;
        for a in &seen.attempts {
            match previous {
                None => assert!(
                    a.at - created >= time::Duration::seconds(9) - time::Duration::milliseconds(5)
                        && a.at - created < time::Duration::seconds(20),
                    "{id}: first refresh {:.3} s after the import",
                    secs(a.at - created)
                ),
                Some(p) => assert!(
                    a.at - p >= time::Duration::milliseconds(6745) && a.at - p < time::Duration::seconds(15),
                    "{id}: refreshes {:.3} s apart",
                    secs(a.at - p)
                ),
            }
            previous = Some(a.at);
        }
        let window = secs(end - created);
        let tolerance = LATENESS_TOLERANCE.as_secs_f64();
        let most = 1 + ((window - 9.0) / 6.75).floor() as usize;
        let least = 1 + ((window - 10.0 - tolerance) / (8.0 + tolerance)).floor() as usize;
        assert!(
            (least..=most).contains(&n),
            "{id}: {n} refreshes in {window:.1} s, expected {least}..={most}"
        );
        // No due time left behind at the end.
        let next = ts(&seen.view["next_refresh_at"]);
        assert!(
            next > end - LATENESS_TOLERANCE,
            "{id}: due {:.1} s before the end, not refreshed",
            secs(end - next)
        );
        for late in lateness(created, &seen.attempts, plans.get(id)) {
            match late {
                Some(late) => lateness_all.push(late),
                None => unmeasured += 1,
            }
        }
    }

    lateness_all.sort();
    let total: usize = observed.iter().map(|o| o.attempts.len()).sum();
    let per_instance: Vec<usize> = cluster.servers.iter().map(Server::refreshed).collect();
    let max = lateness_all.last().copied().unwrap_or_default();
    println!(
        "refreshes {total} (provider {}), per instance {per_instance:?}; refreshes per connection {counts:?}",
        provider.refreshes()
    );
    println!(
        "lateness over {} refreshes ({unmeasured} without a sampled plan): p50 {:?}, p99 {:?}, max {max:?}",
        lateness_all.len(),
        percentile(&lateness_all, 0.50),
        percentile(&lateness_all, 0.99),
    );
    assert_eq!(provider.refreshes(), total as u64);
    assert_eq!(per_instance.iter().sum::<usize>(), total, "log lines vs attempts");
    assert!(
        per_instance.iter().all(|&n| n > total / 10),
        "an instance did (almost) no work: {per_instance:?}"
    );
    assert!(
        unmeasured * 100 <= total,
        "{unmeasured} of {total} refreshes had no sampled plan"
    );
    assert!(max <= LATENESS_TOLERANCE, "a refresh started {max:?} late");
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_connections_are_taken_over_within_the_lease_time() {
    const CONNECTIONS: usize = 300;
    // request_timeout 5 s: leases last 65 s.
    const LEASE: Duration = Duration::from_secs(65);
    const LIFETIME: Duration = Duration::from_secs(20);
    // Calls take 200 ms, so the kill finds some in flight. A refresh the
    // provider answered in the instant of the kill is lost with the process
    // (ARCHITECTURE.md, failure cases): the provider has a reuse grace longer
    // than the lease (like Xero's or Okta's), so the takeover's retry with
    // the previous token is answered, not taken for a replay. Outside the
    // grace, a used token still revokes the grant.
    let provider = TestProvider::start(ProviderOptions {
        access_token_ttl: LIFETIME,
        latency: Duration::from_millis(200),
        reuse_grace: Duration::from_secs(120),
        ..ProviderOptions::default()
    })
    .await;
    let Some(mut cluster) = Cluster::start(&provider, 3, true, "request_timeout = \"5s\"\n").await else {
        return;
    };
    let grants: Vec<_> = (0..CONNECTIONS).map(|_| provider.issue_grant()).collect();
    let ids = cluster.import_spread(&grants, 20).await;
    let epoch = OffsetDateTime::UNIX_EPOCH;
    let warm = eventually(Duration::from_secs(40), || async {
        cluster.refreshed_since(epoch).await.0 == CONNECTIONS as i64
    })
    .await;
    assert!(warm, "not every connection was refreshed once");

    // SIGKILL the instance holding the most leases, once it holds several with calls in flight.
    let busiest = std::sync::atomic::AtomicUsize::new(0);
    let busy = eventually(Duration::from_secs(30), || async {
        let (i, held) = cluster.busiest().await;
        busiest.store(i, Ordering::Relaxed);
        held >= 5 && provider.in_flight() > 0
    })
    .await;
    assert!(busy, "no instance ever held 5 leases with calls in flight");
    let victim = busiest.load(Ordering::Relaxed);
    let victim_name = cluster.servers[victim].name.clone();
    let killed_at = OffsetDateTime::now_utc();
    cluster.servers[victim].kill();
    let orphaned: HashMap<String, OffsetDateTime> = cluster.leases_of(&victim_name).await.into_iter().collect();
    assert!(!orphaned.is_empty(), "the kill interrupted no refresh");
    println!(
        "killed instance {victim} holding {} leases, {} token calls in flight",
        orphaned.len(),
        provider.in_flight()
    );

    // Run past the lease time plus a margin, until every connection was refreshed after the kill.
    let taken_over = eventually(LEASE + LIFETIME + Duration::from_secs(10), || async {
        let (after, all) = cluster.refreshed_since(killed_at).await;
        after == all && OffsetDateTime::now_utc() > killed_at + LEASE + Duration::from_secs(5)
    })
    .await;
    let (after, all) = cluster.refreshed_since(killed_at).await;
    assert!(taken_over, "{after} of {all} connections refreshed after the kill");
    for (i, server) in cluster.servers.iter_mut().enumerate() {
        assert!(i == victim || server.is_running(), "instance {i} died");
    }
    let reader = cluster.freeze().await;
    let observed = Observed::read_all(&cluster.http, &reader.base, &ids).await;

    assert_every_call_succeeded(&provider, orphaned.len());
    let mut takeover = Vec::new();
    let mut first_after_kill = Vec::new();
    let mut interrupted_calls = 0;
    for ((id, grant), seen) in ids.iter().zip(&grants).zip(&observed) {
        assert_eq!(seen.view["status"], "active", "{id}: {}", seen.view);
        assert!(
            seen.attempts.iter().all(|a| a.outcome == "refreshed"),
            "{id}: {:?}",
            seen.attempts
        );
        let first = seen
            .attempts
            .iter()
            .find(|a| a.at > killed_at)
            .unwrap_or_else(|| panic!("{id}: no refresh after the kill"));
        let after = first.at - killed_at;
        assert!(
            after <= LEASE + LIFETIME,
            "{id}: first refresh {:.1} s after the kill",
            secs(after)
        );
        first_after_kill.push(Duration::try_from(after).unwrap_or_default());
        let n = seen.attempts.len() as u64;
        assert_eq!(seen.view["refresh_count"].as_u64(), Some(n), "{id}");
        assert_eq!(
            provider.max_in_flight_for(&grant.grant),
            1,
            "{id}: overlapping refreshes"
        );
        let calls = provider.calls_for(&grant.grant);
        match orphaned.get(id) {
            Some(&lease_until) => {
                // Nobody touched it while the dead instance's lease held, and
                // a live instance took it soon after the lease ended.
                assert!(
                    first.at >= lease_until && first.at <= lease_until + LATENESS_TOLERANCE,
                    "{id}: taken over {:.3} s after its lease ended",
                    secs(first.at - lease_until)
                );
                takeover.push(Duration::try_from(after).unwrap_or_default());
                // The interrupted call may have reached the provider: one call more than stored refreshes.
                assert!(calls == n || calls == n + 1, "{id}: {calls} calls for {n} refreshes");
                interrupted_calls += calls - n;
            }
            None => assert_eq!(calls, n, "{id}: calls vs refreshes"),
        }
    }
    takeover.sort();
    first_after_kill.sort();
    // An interrupted call the provider dropped unanswered rotated nothing; one
    // it answered was lost with the process and retried inside the grace.
    let unanswered = provider.token_call_log().iter().filter(|c| c.status.is_none()).count();
    let per_instance: Vec<usize> = cluster.servers.iter().map(Server::refreshed).collect();
    println!(
        "refreshes {} (per instance {per_instance:?}); {} leases orphaned by the kill, taken over {:?}..{:?} after it; \
         {interrupted_calls} interrupted calls had reached the provider, {unanswered} of them dropped unanswered; \
         every connection refreshed again within {:?} of the kill",
        provider.refreshes(),
        orphaned.len(),
        takeover.first().copied().unwrap_or_default(),
        takeover.last().copied().unwrap_or_default(),
        first_after_kill.last().copied().unwrap_or_default(),
    );
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_token_requests_over_three_instances_make_one_token_call() {
    const ROUNDS: usize = 3;
    const REQUESTS: usize = 50;
    // Scheduler off on all three: only on-demand requests refresh, so all of
    // them race for the one refresh. Each token call takes 500 ms.
    let provider = TestProvider::start(ProviderOptions {
        latency: Duration::from_millis(500),
        ..ProviderOptions::default()
    })
    .await;
    let Some(cluster) = Cluster::start(&provider, 3, false, "request_timeout = \"5s\"\n").await else {
        return;
    };
    // One connection per round, each round on a fresh one.
    for round in 0..ROUNDS {
        let grant = provider.issue_grant();
        let id = import(&cluster.http, &cluster.servers[round % 3].base, &grant, round, 2).await;
        let (_, view) = call(
            &cluster.http,
            &format!("{}/v1/connections/{id}", cluster.servers[0].base),
        )
        .await;
        let expires_at = ts(&view["expires_at"]);
        // Wait until the stored token has expired: nobody may get it any more.
        let wait = Duration::try_from(expires_at - OffsetDateTime::now_utc()).unwrap_or_default();
        assert!(wait <= Duration::from_secs(3));
        tokio::time::sleep(wait + Duration::from_millis(20)).await;

        let calls_before = provider.token_calls();
        let started = tokio::time::Instant::now();
        let answers = futures::future::join_all((0..REQUESTS).map(|i| {
            let url = format!("{}/v1/connections/{id}/token?min_ttl=60", cluster.servers[i % 3].base);
            let http = &cluster.http;
            async move {
                let (status, body) = call(http, &url).await;
                (status, body, started.elapsed())
            }
        }))
        .await;
        let slowest = answers.iter().map(|a| a.2).max().unwrap_or_default();
        let calls = provider.token_calls() - calls_before;
        let tokens: BTreeSet<&str> = answers
            .iter()
            .filter_map(|(_, body, _)| body["access_token"].as_str())
            .collect();
        let statuses: BTreeMap<u16, usize> = answers.iter().fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a.0).or_default() += 1;
            m
        });
        println!(
            "round {round}: {REQUESTS} requests, {calls} token call(s), answers {statuses:?}, slowest {slowest:?}"
        );
        let (_, attempts) = call(
            &cluster.http,
            &format!("{}/v1/connections/{id}/attempts", cluster.servers[0].base),
        )
        .await;
        let refreshed_by: Vec<Vec<String>> = cluster
            .servers
            .iter()
            .map(|s| {
                log_lines(&s.log)
                    .into_iter()
                    .filter(|l| l["msg"] == "refreshed" && l["connection_id"] == id.as_str())
                    .map(|l| l.to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            calls, 1,
            "round {round}: token calls; attempts: {attempts}; refreshed lines per instance: {refreshed_by:#?}"
        );
        assert_eq!(statuses.get(&200), Some(&REQUESTS), "round {round}: {answers:?}");
        assert_eq!(tokens.len(), 1, "round {round}: different tokens handed out");
        let token = *tokens.first().unwrap();
        assert_ne!(
            token, grant.access_token,
            "round {round}: the expired token was handed out"
        );
        assert!(provider.access_token_is_valid(token));
        assert_eq!(attempts["data"].as_array().map(Vec::len), Some(1), "{attempts}");
        assert_eq!(attempts["data"][0]["trigger"], "on_demand", "{attempts}");
    }
    assert_every_call_succeeded(&provider, 0);
    assert_eq!(provider.max_in_flight(), 1);
}

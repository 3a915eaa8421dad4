//! Building and running a Thermos instance: open the store, load the key,
//! bind the listener (before anything runs, so the address is known), then
//! serve the API and drive the engine until shutdown.
//!
//! Shutdown: one cancellation token. The API stops accepting requests, the
//! scheduler stops claiming work, and refreshes already sent to a provider
//! finish and persist within a grace period; any lease left behind expires.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use thermos_core::clock::{Clock, SystemClock};
use thermos_core::seal::MasterKey;
use thermos_store::{PgOptions, PgStore, SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, KEY_RELOAD_INTERVAL, KeyFileWatch, KeySource};
use crate::egress::{EgressPolicy, NameLookup, SystemLookup};
use crate::engine::upkeep::Sweep;
use crate::engine::{Engine, EngineSettings};
use crate::outbox::alerts::{Aggregator, AlertSettings};
use crate::outbox::dispatch::{AlertChannel, DispatchSettings, Dispatcher};
use crate::provider::RefreshClient;

/// Extra time given to refreshes in flight at shutdown, beyond the request timeout.
const SHUTDOWN_GRACE_EXTRA: Duration = Duration::from_secs(5);

/// Opens the configured store (SQLite or PostgreSQL, by the URL) and
/// applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    if config.is_postgres() {
        Ok(Arc::new(open_postgres(config).await?))
    } else {
        Ok(Arc::new(open_sqlite(config).await?))
    }
}

async fn open_sqlite(config: &Config) -> anyhow::Result<SqliteStore> {
    let store = SqliteStore::open(&config.database_url)
        .await
        .with_context(|| format!("open database {}", config.database_url))?;
    store.migrate().await.context("apply database migrations")?;
    Ok(store)
}

async fn open_postgres(config: &Config) -> anyhow::Result<PgStore> {
    let options = PgOptions {
        max_connections: config.database_pool.max_connections,
        acquire_timeout: config.database_pool.acquire_timeout,
        schema: config.database_pool.schema.clone(),
    };
    let store = PgStore::connect(&config.database_url, options)
        .await
        .with_context(|| format!("open database {}", config.database_url_redacted()))?;
    store.migrate().await.context("apply database migrations")?;
    Ok(store)
}

/// Opens the store for serving. On SQLite: takes the instance lock (one
/// serving process per file) and, since no other instance can be
/// refreshing, frees the leases a crashed predecessor left behind so their
/// connections are refreshed at once instead of after the lease expires. On
/// PostgreSQL other instances may hold leases: a dead instance's leases
/// simply expire and its work is claimed by whoever is alive.
async fn open_serving_store(
    config: &Config,
    now: time::OffsetDateTime,
) -> anyhow::Result<(Arc<dyn Store>, Option<std::fs::File>)> {
    if config.is_postgres() {
        return Ok((Arc::new(open_postgres(config).await?), None));
    }
    let store = open_sqlite(config).await?;
    let lock = store.lock_instance()?;
    let released = store
        .release_all_leases(now)
        .await
        .context("release abandoned leases")?;
    if released > 0 {
        tracing::warn!(
            released,
            "released leases left by a previous run that did not stop cleanly; refreshing those connections now"
        );
    }
    Ok((Arc::new(store), Some(lock)))
}

/// The engine's settings from the configuration, for lease owner `owner`.
pub fn engine_settings(config: &Config, owner: String) -> EngineSettings {
    EngineSettings {
        policy: config.refresh.policy.clone(),
        max_concurrency: config.refresh.max_concurrency,
        request_timeout: config.refresh.request_timeout,
        owner,
        escalate_after: config
            .alerts
            .as_ref()
            .map_or(crate::engine::events::DEFAULT_ESCALATE_AFTER, |a| a.escalate_after),
        failure_threshold: config.refresh.failure_threshold,
        run_stale_after: config.runs.stale_after,
    }
}

/// A unique lease-owner name for this process.
pub fn instance_name() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("thermos-{}-{}", std::process::id(), &id[id.len() - 8..])
}

/// A built, bound, not yet running instance.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    engine: Engine,
    dispatcher: Arc<Dispatcher>,
    aggregator: Option<Arc<Aggregator>>,
    state: AppState,
    engine_enabled: bool,
    /// `[runs]`: the sweep and stale marking.
    runs: crate::config::RunsConfig,
    grace: Duration,
    /// Held while this instance serves the SQLite database file.
    _instance_lock: Option<std::fs::File>,
    /// The master key ring shared by the engine, the API and the outbox.
    key: Arc<MasterKey>,
    /// The key file the ring follows, and how often it is looked at.
    key_watch: Option<(Arc<KeyFileWatch>, Duration)>,
}

impl Application {
    /// Builds everything from `config` and binds the listener.
    pub async fn build(
        config: &Config,
        key: MasterKey,
        admin_key: Option<SecretString>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        Self::build_with_lookup(config, key, admin_key, clock, Arc::new(SystemLookup)).await
    }

    /// [`Application::build`] with the resolver the SSRF guard checks
    /// project-supplied host names with (tests change a name's answer).
    pub async fn build_with_lookup(
        config: &Config,
        key: MasterKey,
        admin_key: Option<SecretString>,
        clock: Arc<dyn Clock>,
        lookup: Arc<dyn NameLookup>,
    ) -> anyhow::Result<Self> {
        let (store, instance_lock) = open_serving_store(config, clock.now()).await?;
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("listen on {}", config.server.listen))?;
        let settings = engine_settings(config, instance_name());
        let client = RefreshClient::new(config.refresh.request_timeout);
        let key = Arc::new(key);
        let dispatcher = Arc::new(Dispatcher::new(
            Arc::clone(&store),
            Arc::clone(&key),
            Arc::clone(&clock),
            DispatchSettings {
                allow_private_targets: config.security.allow_private_targets,
                lookup: Arc::clone(&lookup),
                alerts: config.alerts.as_ref().map(AlertChannel::from_config),
                retention: config.outbox.retention,
                ..DispatchSettings::new(settings.owner.clone())
            },
        ));
        let aggregator = config.alerts.as_ref().map(|alerts| {
            Arc::new(Aggregator::new(
                Arc::clone(&store),
                Arc::clone(&clock),
                AlertSettings::from_config(alerts),
            ))
        });
        let engine_key = Arc::clone(&key);
        let audit = crate::audit::AuditLog::start(Arc::clone(&store), Arc::clone(&clock));
        let engine = Engine::new(store, key, config.providers.clone(), client, clock, settings);
        engine.mark_stale_runs().await.context("mark stale runs")?;
        let custom = crate::api::apps::load_into_registry(&engine)
            .await
            .context("load custom apps")?;
        if custom > 0 {
            tracing::info!(custom_apps = custom, "loaded projects' own provider apps");
        }
        let state = AppState {
            engine: engine.clone(),
            admin_key: admin_key.map(Arc::new),
            engine_alive: Arc::new(AtomicBool::new(true)),
            allow_private_targets: config.security.allow_private_targets,
            egress: EgressPolicy::new(config.security.allow_private_targets, lookup),
            limits: config.limits.clone(),
            import_lock: Arc::default(),
            audit,
            auth_failures: Arc::new(crate::api::auth::AuthFailureLimiter::new(
                config.security.auth_failures_per_minute,
            )),
            connect: crate::api::connect::ConnectSettings::new(
                config.server.public_url.clone(),
                config.refresh.request_timeout,
            ),
        };
        Ok(Self {
            listener,
            engine,
            dispatcher,
            aggregator,
            state,
            engine_enabled: config.engine.enabled,
            runs: config.runs.clone(),
            grace: config.refresh.request_timeout + SHUTDOWN_GRACE_EXTRA,
            _instance_lock: instance_lock,
            key: engine_key,
            key_watch: None,
        })
    }

    /// Keeps the master key ring in step with the key file it was loaded
    /// from (when `source` is a file): the file is looked at every
    /// [`KEY_RELOAD_INTERVAL`] and read again at once when a stored value
    /// names a key the ring does not hold, so that a rotation
    /// (`thermos keys rotate-master`) is picked up without a restart. Keys
    /// from the environment cannot change under a running process.
    pub fn watch_master_key_file(&mut self, source: &KeySource) {
        self.watch_master_key_file_every(source, KEY_RELOAD_INTERVAL);
    }

    /// [`Application::watch_master_key_file`] looking every `every` (tests).
    pub fn watch_master_key_file_every(&mut self, source: &KeySource, every: Duration) {
        let (KeySource::File(path) | KeySource::Generated(path)) = source else {
            return;
        };
        let watch = Arc::new(KeyFileWatch::new(path.clone()));
        self.key
            .set_reload(Arc::clone(&watch) as Arc<dyn thermos_core::seal::KeyReload>);
        self.key_watch = Some((watch, every));
    }

    /// Looks at the key file every interval until cancelled.
    fn spawn_key_watch(&self, cancel: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
        let (watch, every) = self.key_watch.clone()?;
        let (key, cancel) = (Arc::clone(&self.key), cancel.clone());
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(every) => {
                        // A stat, and a small read when the file changed.
                        let (watch, key) = (Arc::clone(&watch), Arc::clone(&key));
                        let _ = tokio::task::spawn_blocking(move || watch.poll(&key)).await;
                    }
                }
            }
        }))
    }

    /// The address the API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The alert aggregator, when `[alerts]` is configured.
    pub fn aggregator(&self) -> Option<&Arc<Aggregator>> {
        self.aggregator.as_ref()
    }

    /// The outbox dispatcher (webhooks and alerts).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Starts the outbox (with the engine): the dispatcher, the alert
    /// aggregator when alerts are configured, and the bridge that wakes the dispatcher whenever the
    /// engine or the API committed events.
    fn spawn_outbox(&self, cancel: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        // An API-only instance leaves delivery to the instance that runs the engine.
        if !self.engine_enabled {
            return tasks;
        }
        let dispatcher = Arc::clone(&self.dispatcher);
        let stop = cancel.clone();
        tasks.push(tokio::spawn(async move { dispatcher.drive(stop).await }));
        let (dispatcher, wake, stop) = (Arc::clone(&self.dispatcher), self.engine.outbox_wake(), cancel.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = wake.notified() => dispatcher.notify(),
                }
            }
        }));
        if let Some(aggregator) = &self.aggregator {
            let (aggregator, stop) = (Arc::clone(aggregator), cancel.clone());
            tasks.push(tokio::spawn(async move { aggregator.drive(stop).await }));
        }
        tasks
    }

    /// The engine (for tests and the demo).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until `shutdown` completes, then stops gracefully.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let engine_task = if self.engine_enabled {
            let engine = self.engine.clone();
            let alive = Arc::clone(&self.state.engine_alive);
            let cancel = cancel.clone();
            Some(tokio::spawn(async move {
                engine.drive(cancel).await;
                alive.store(false, Ordering::Relaxed);
            }))
        } else {
            None
        };
        let outbox_tasks = self.spawn_outbox(&cancel);
        let key_watch_task = self.spawn_key_watch(&cancel);
        let upkeep_task = {
            // Only an instance that runs the engine sweeps; any marks stale runs.
            let sweep = self
                .runs
                .sweep_every
                .filter(|_| self.engine_enabled)
                .map(|every| Sweep {
                    every,
                    overdue_by: self.runs.sweep_overdue_by,
                });
            let (engine, cancel) = (self.engine.clone(), cancel.clone());
            tokio::spawn(async move { engine.drive_upkeep(sweep, cancel).await })
        };
        let beat_task = {
            let (engine, cancel, enabled) = (self.engine.clone(), cancel.clone(), self.engine_enabled);
            tokio::spawn(async move { engine.drive_instance_beat(enabled, cancel).await })
        };
        let router = api::router(self.state.clone());
        let server_cancel = cancel.clone();
        tracing::info!(listen = %self.local_addr(), engine = self.engine_enabled, "thermos is serving");
        let router = router.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, router).with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                () = server_cancel.cancelled() => {}
            }
        });
        let result = serve.await.context("serve HTTP");
        self.state.audit.close().await;
        cancel.cancel();
        if let Some(task) = engine_task {
            let _ = task.await;
        }
        if !self.engine.wait_idle(self.grace).await {
            tracing::warn!("refreshes still in flight at shutdown; their leases will expire");
        }
        for task in outbox_tasks {
            let _ = task.await;
        }
        let _ = upkeep_task.await;
        let _ = beat_task.await;
        if let Some(task) = key_watch_task {
            let _ = task.await;
        }
        tracing::info!("thermos stopped");
        result
    }
}

/// The system clock, shared.
pub fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

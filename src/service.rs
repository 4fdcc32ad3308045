//! The service `mallquest run` is, as one thing that starts and stops: the store, the query
//! API, the ledger's compaction, the metrics' upkeep and the consumer thread. `run`,
//! `rebuild`, `demo --serve` and the tests start it the same way, stop it with a
//! [`Shutdown`], and [`run`] returns only once every task it started has finished.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http;
use crate::kafka::{self, Start};
use crate::status::Status;
use crate::store::{Store, StoreError};
use crate::telemetry;

/// How often the metrics' histograms are drained so that they cannot grow without bound.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How long the API may finish its requests in hand once the consumer has stopped.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Why the service could not start, or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The metrics recorder could not be installed.
    #[error("failed to install the metrics recorder: {0}")]
    Metrics(String),
    /// The store cannot be opened.
    #[error(
        "the store at {} cannot be used: restore it from a backup, or move it aside and run \
         `mallquest rebuild` to refold the receipts topic",
        path.display()
    )]
    Store {
        /// The configured path.
        path: PathBuf,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The API's address cannot be listened on.
    #[error("failed to listen on {addr}")]
    Listen {
        /// `[http] listen`.
        addr: String,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The brokers could not be asked.
    #[error("the Kafka client: {0}")]
    Brokers(#[source] kafka::Error),
    /// The output topics could not be checked or created.
    #[error("the output topics: {0}")]
    Topics(#[source] kafka::Error),
    /// The consumer stopped on an error.
    #[error("{0:#}")]
    Consumer(anyhow::Error),
    /// A task panicked.
    #[error("the {0} task panicked")]
    Panicked(&'static str),
}

/// Asks a service to stop, from any thread or task; cloned handles share one signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug, Default)]
struct ShutdownInner {
    flag: Arc<AtomicBool>,
    notify: Notify,
}

impl Shutdown {
    /// A signal not given yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the service to stop: the consumer finishes the batch in hand, commits it and
    /// returns; then the API and every other task stop.
    pub fn stop(&self) {
        self.inner.flag.store(true, Ordering::Relaxed);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`Self::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.inner.flag.load(Ordering::Relaxed)
    }

    /// The flag the blocking loops poll.
    fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.inner.flag)
    }

    /// Returns once [`Self::stop`] was called.
    pub async fn stopping(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_stopping() {
                return;
            }
            notified.await;
        }
    }

    /// Waits for SIGINT or SIGTERM, then stops.
    pub async fn on_signal(self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            () = term => {},
        }
        tracing::info!(message = "Shutdown requested; finishing the batch in hand.");
        self.stop();
    }
}

/// The tasks a stopped service joined, by name, in the order they finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    /// `consumer`, `api`, `compaction`, `upkeep`: those that were started.
    pub joined: Vec<&'static str>,
}

/// Runs the service until `shutdown` (or a fatal error): opens the store, serves the API,
/// waits for the brokers, then folds. Every task it started has finished when it returns.
pub async fn run(
    config: Config,
    start: Start,
    shutdown: Shutdown,
) -> Result<Stopped, ServiceError> {
    let metrics =
        telemetry::install_prometheus().map_err(|e| ServiceError::Metrics(e.to_string()))?;
    let store = open_store(&config)?;
    let status = Arc::new(Status::default());
    // Before the API serves anything: until the group assigns partitions, this instance
    // holds none, whatever its store has.
    status.set_grouped();
    let api_stop = Shutdown::new();
    let mut api = start_api(&config, &store, &status, Some(metrics.clone()), &api_stop).await?;
    let mut background = vec![("upkeep", tokio::spawn(upkeep(metrics, shutdown.clone())))];
    if config.store.compact_every_minutes > 0 {
        let every = Duration::from_secs(config.store.compact_every_minutes * 60);
        let task = compact_ledger(Arc::clone(&store), every, shutdown.clone());
        background.push(("compaction", tokio::spawn(task)));
    }
    let consumer = fold(config, store, status, &shutdown, start).await;
    let mut stopped = Stopped::default();
    stopped.joined.push("consumer");
    // The API answers until the consumer's last commit, then stops; so does the rest
    // (a consumer that failed leaves them running until here).
    api_stop.stop();
    shutdown.stop();
    let mut first_error = consumer.err();
    match tokio::time::timeout(HTTP_GRACE, &mut api).await {
        Ok(Ok(Err(e))) => tracing::warn!(message = "HTTP server error.", error = %e),
        Ok(Err(_)) => {
            first_error.get_or_insert(ServiceError::Panicked("api"));
        }
        Ok(Ok(Ok(()))) => {}
        Err(_) => {
            tracing::warn!(message = "HTTP requests still running at exit; cut.");
            api.abort();
            let _ = api.await;
        }
    }
    stopped.joined.push("api");
    for (name, task) in background {
        if task.await.is_err() {
            first_error.get_or_insert(ServiceError::Panicked(name));
        }
        stopped.joined.push(name);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(stopped),
    }
}

/// Serves the API alone on a store no consumer writes (`demo --serve`), every partition
/// as its own, until `shutdown`.
pub async fn serve_store(
    config: &Config,
    store: Arc<Store>,
    listening: impl FnOnce(&str),
    shutdown: Shutdown,
) -> Result<Stopped, ServiceError> {
    let status = Arc::new(Status::default());
    status.committed(&store.offsets().map_err(|source| ServiceError::Store {
        path: store.path().to_owned(),
        source,
    })?);
    let api = start_api(config, &store, &status, None, &shutdown).await?;
    listening(&config.http.listen);
    match api.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(message = "HTTP server error.", error = %e),
        Err(_) => return Err(ServiceError::Panicked("api")),
    }
    Ok(Stopped {
        joined: vec!["api"],
    })
}

fn open_store(config: &Config) -> Result<Arc<Store>, ServiceError> {
    // The boards are built once, keeping what the config says (not the default, then
    // again).
    let store = Store::open_keeping(
        &config.store.path,
        config.store.cache_mb << 20,
        config.store.write_buffer_mb << 20,
        config.processing.periods_kept,
    )
    .map_err(|source| ServiceError::Store {
        path: config.store.path.clone(),
        source,
    })?;
    Ok(Arc::new(store))
}

/// Binds the API's address and serves it on a task of its own until `stop`.
async fn start_api(
    config: &Config,
    store: &Arc<Store>,
    status: &Arc<Status>,
    metrics: Option<PrometheusHandle>,
    stop: &Shutdown,
) -> Result<JoinHandle<std::io::Result<()>>, ServiceError> {
    let addr = &config.http.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Listen {
            addr: addr.clone(),
            source,
        })?;
    let timeout = Duration::from_millis(config.http.request_timeout_ms);
    let app = http::router(
        http::AppState {
            store: Arc::clone(store),
            status: Arc::clone(status),
            metrics,
            token: config.http.token.as_deref().map(Arc::from),
            forward_timeout: Duration::from_millis(config.http.forward_timeout_ms),
            calendar: config.rules.calendar(),
            levels: config.rules.level_scale(),
            expiry: config.rules.game.expiry,
        },
        timeout,
    );
    tracing::info!(message = "Serving the query API.", listen = %addr);
    let limits = http::Limits {
        head_timeout: timeout,
        max_connections: config.http.max_connections,
    };
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        http::serve(listener, app, limits, async move { stop.stopping().await }).await
    }))
}

/// Waits for the brokers, makes sure of the output topics, then folds on a blocking
/// thread until `shutdown`.
async fn fold(
    config: Config,
    store: Arc<Store>,
    status: Arc<Status>,
    shutdown: &Shutdown,
    start: Start,
) -> Result<(), ServiceError> {
    let flag = shutdown.flag();
    store.stop_stalls_on(Arc::clone(&flag));
    let reached = {
        let (kafka, status, flag) = (config.kafka.clone(), Arc::clone(&status), Arc::clone(&flag));
        tokio::task::spawn_blocking(move || kafka::wait_for_brokers(&kafka, &status, &flag))
            .await
            .map_err(|_| ServiceError::Panicked("broker probe"))?
            .map_err(ServiceError::Brokers)?
    };
    if !reached {
        return Ok(());
    }
    kafka::ensure_output_topics(&config.kafka)
        .await
        .map_err(ServiceError::Topics)?;
    tokio::task::spawn_blocking(move || kafka::run(&config, store, status, &flag, start))
        .await
        .map_err(|_| ServiceError::Panicked("consumer"))?
        .map_err(ServiceError::Consumer)
}

/// Drains the histograms' buckets every [`UPKEEP_EVERY`] until `shutdown`.
async fn upkeep(metrics: PrometheusHandle, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => metrics.run_upkeep(),
            () = shutdown.stopping() => return,
        }
    }
}

/// Gathers the ledger's mostly-expired segments on disk every `every`, off the fold's
/// thread, until `shutdown`.
async fn compact_ledger(store: Arc<Store>, every: Duration, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate: skip it
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.stopping() => return,
        }
        let store = Arc::clone(&store);
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || store.compact_ledger()).await {
            Ok(Ok(())) => tracing::info!(
                message = "Compacted the ledger.",
                took_ms = started.elapsed().as_millis() as u64
            ),
            Ok(Err(e)) => tracing::warn!(message = "Ledger compaction failed.", error = %e),
            Err(e) => tracing::warn!(message = "Ledger compaction panicked.", error = %e),
        }
    }
}

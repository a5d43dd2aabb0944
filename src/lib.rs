//! progress-hub: a real-time task-progress server.
//!
//! [`Application::build`] binds the listener and loads the store; [`Application::run_until_stopped`]
//! serves until the given future resolves, then shuts down gracefully. `main.rs` only parses
//! the configuration and calls these; the tests do the same with port 0.

pub mod api;
pub mod cli;
pub mod config;
pub mod hub;
pub mod indexer;
mod janitor;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use api::AppState;
use config::{Config, StoreKind};
use hub::Hub;
use indexer::Indexer;
use store::{MemoryStore, RedisStore, SqliteStore, Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to listen on {0} without an API token: set --api-token (PROGRESS_HUB_API_TOKEN), \
         or pass --allow-unauthenticated (PROGRESS_HUB_ALLOW_UNAUTHENTICATED=true) to allow it deliberately"
    )]
    Unauthenticated(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Security(#[from] api::SecurityError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    IndexRoots(std::io::Error),
    #[error(
        "another progress-hub is already using the data directory {} (it holds {}): stop it, \
         or give this one another --data-dir",
        .dir.display(), .lock.display()
    )]
    DataDirInUse {
        dir: std::path::PathBuf,
        lock: std::path::PathBuf,
    },
    #[error("cannot lock the data directory {}: {source}", .dir.display())]
    DataDirLock {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The file in the data directory that one server at a time holds an exclusive lock on
/// (`flock`): released when the server exits, and by the kernel when it dies.
pub const LOCK_FILE: &str = "progress-hub.lock";

/// Takes the data directory for this process, or says who has it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartError> {
    let failed = |source| StartError::DataDirLock {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(failed(source)),
    }
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    /// The data directory's lock, held until the server has stopped (see [`LOCK_FILE`]).
    data_dir_lock: Option<std::fs::File>,
    /// The certificate when serving HTTPS (`--tls-cert`), reloaded on SIGHUP.
    tls: Option<Arc<tls::Tls>>,
    /// Set when tasks are shared with other nodes (`--redis-url`): its subscription and
    /// lease keeper start with the server.
    redis: Option<Arc<RedisStore>>,
}

/// Pending connections the kernel may queue while the accept loop catches up.
const LISTEN_BACKLOG: u32 = 4096;

impl Application {
    /// Takes the data directory, binds the listener and opens the store the
    /// configuration names.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        let lock = lock_data_dir(&config.data_dir)?;
        let redis = match &config.redis_url {
            Some(url) => Some(Arc::new(RedisStore::open(
                url,
                config.history as usize,
                std::time::Duration::from_secs(config.retention_secs),
            )?)),
            None => None,
        };
        let store = match &redis {
            Some(redis) => redis.clone() as Arc<dyn Store>,
            None => open_store(&config)?,
        };
        let mut app = Self::build_with_store(config, store).await?;
        app.data_dir_lock = Some(lock);
        if let Some(redis) = &redis {
            app.state.hub.attach_log(redis.clone());
            redis.attach_redis_metrics(app.state.metrics.redis());
            if let Some(key) = &app.state.security.read_key {
                redis.share_key(key.clone());
            }
        }
        app.redis = redis;
        Ok(app)
    }

    /// Like [`Application::build`] with a given store (tests restart on the same one).
    pub async fn build_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Application, StartError> {
        let security = api::Security::load(&config).await?;
        if !config.listen.ip().is_loopback()
            && security.tokens.is_empty()
            && !config.allow_unauthenticated
        {
            return Err(StartError::Unauthenticated(config.listen));
        }
        // Before binding: a certificate that does not load is a refusal to start. (Two
        // small files, read once before anything is served.)
        let tls = match config.tls_files()? {
            Some(files) => Some(Arc::new(tls::Tls::load(files)?)),
            None => None,
        };
        let listener = bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let metrics = telemetry::Metrics::new();
        store.attach_metrics(metrics.store());
        let hub = Hub::new(config.hub(), store.clone())?;
        // After a crash, restoring moved unfinished tasks' seqs on: that must be on disk
        // before anyone sees it, or the next crash would hand out the same numbers again.
        if store.unwritten() > 0 {
            store.flush().await?;
        }
        let indexer = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Indexer::new(&config))
                .await
                .map_err(|e| StartError::IndexRoots(std::io::Error::other(e)))?
                .map_err(StartError::IndexRoots)?
        };
        let state = AppState::new(api::Shared {
            hub,
            indexer,
            limits: Arc::new(api::Limits::new(&config, metrics.clone())),
            config: Arc::new(config),
            shutdown: shutdown::Shutdown::new(),
            draining: CancellationToken::new(),
            security: Arc::new(security),
            metrics,
        });
        Ok(Application {
            listener,
            local_addr,
            state,
            data_dir_lock: None,
            tls,
            redis: None,
        })
    }

    /// The address actually bound (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where clients reach it: `http://ADDR`, or `https://ADDR` with a certificate.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    pub fn hub(&self) -> &Hub {
        &self.state.hub
    }

    pub fn indexer(&self) -> &Indexer {
        &self.state.indexer
    }

    /// Serves until `stop` resolves, then: streams end, connections drain within the
    /// grace period, coalesced changes are published and the store is flushed.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()> + Send + 'static) {
        let state = self.state;
        let data_dir_lock = self.data_dir_lock;
        if let Some(tls) = &self.tls {
            tokio::spawn(tls::reload_on_hangup(
                tls.clone(),
                state.shutdown.token().clone(),
            ));
        }
        // Stopped last: jobs ending at shutdown still write through Redis.
        let redis_stop = CancellationToken::new();
        let redis_loops = self.redis.as_ref().map(|redis| {
            let indexer = state.indexer.clone();
            let on_end = Arc::new(move |id: &hub::TaskId| indexer.cancel(id));
            redis.start(&state.hub, on_end, redis_stop.clone())
        });
        let shutdown = state.shutdown.clone();
        let (trigger, draining) = (shutdown.clone(), state.draining.clone());
        let drain = std::time::Duration::from_secs(state.config.shutdown_drain_secs);
        tokio::spawn(async move {
            stop.await;
            draining.cancel();
            if !drain.is_zero() {
                tracing::info!(?drain, "not ready; draining before shutdown");
                tokio::time::sleep(drain).await;
            }
            tracing::info!("shutting down");
            trigger.trigger();
        });
        let janitor = tokio::spawn(janitor::run(
            state.hub.clone(),
            janitor::JanitorConfig {
                retention: std::time::Duration::from_secs(state.config.retention_secs),
                stall_after: (state.config.stall_secs > 0)
                    .then(|| std::time::Duration::from_secs(state.config.stall_secs)),
            },
            shutdown.token().clone(),
        ));
        // Kept until the end: handlers may have spawned work there (an indexing job) that
        // shutdown below still waits for.
        let connection_runtimes = server::ConnectionRuntimes::start(
            std::thread::available_parallelism().map_or(2, usize::from),
        );
        let router = api::router(state.clone());
        let options = server::ServeOptions {
            header_timeout: std::time::Duration::from_secs(state.config.header_timeout_secs),
            grace: state.config.shutdown_grace(),
            open_connections: state.metrics.http_connections.clone(),
            fan_out: state.hub.fan_out().cloned(),
            connection_runtimes: connection_runtimes.handles(),
            send_timeout: state.config.send_timeout(),
            // Without the fast paths hyper serves every request.
            quick: state.config.fast_paths().then(|| {
                Arc::new(api::QuickPolls::new(state.clone())) as Arc<dyn transport::quick::Quick>
            }),
            tls: self.tls,
        };
        server::serve(self.listener, router, shutdown.token().clone(), options).await;
        let _ = janitor.await;
        // Jobs were told to stop when shutdown began; their tasks end as interrupted.
        state
            .indexer
            .shutdown(&state.hub, state.config.shutdown_grace())
            .await;
        state.hub.flush_pending();
        if let Err(error) = state.hub.store().close().await {
            tracing::error!(%error, "final store flush failed");
        }
        redis_stop.cancel();
        for handle in redis_loops.into_iter().flatten() {
            let _ = handle.await;
        }
        drop(connection_runtimes);
        drop(data_dir_lock);
        tracing::info!("stopped");
    }
}

/// The store `config.store` names, opened (a SQLite file lives in the data directory).
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let history = config.history as usize;
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStore::new(history)),
        StoreKind::Sqlite => Arc::new(SqliteStore::open(&config.data_dir, history)?),
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

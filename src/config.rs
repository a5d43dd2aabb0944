//! Every setting in one place: each field is a flag, a `PROGRESS_HUB_*` environment
//! variable and a doc comment that becomes its `--help` line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::hub::HubConfig;

/// The longest duration any setting may name (ten years, in seconds): far beyond any
/// use, and far from where adding it to a clock would overflow.
pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "progress-hub",
    version,
    about = "Real-time task-progress server: producers publish, browsers follow over SSE, WebSocket or polling"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Serve the HTTP API (the default when no command is given).
    Serve,
    /// Index a folder into the search index under the data directory, with a progress bar,
    /// without starting the server.
    Index {
        /// The folder to index.
        folder: PathBuf,
    },
    /// Follow a task of a running server to its end with a progress bar; exit 0, 1 or 2
    /// when it completed, failed or was cancelled (3: no such task, 4: cannot follow).
    Watch(crate::cli::WatchArgs),
    /// List a running server's tasks, newest first.
    Tasks(crate::cli::TasksArgs),
}

/// Where task state is kept.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A SQLite file in the data directory: tasks survive restarts.
    Sqlite,
    /// Process memory only: every task is gone when the process stops.
    Memory,
}

/// An on/off setting.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

#[derive(Args, Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the chosen one is printed).
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Directory for the task database and the search index.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// Share tasks with other progress-hub processes through this Redis server
    /// (`redis://[:password@]host:port[/db]`): Redis is then the store, `--store` is not
    /// used, and any node serves any task. Never logged.
    #[arg(global = true, long, env = "PROGRESS_HUB_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Where task state is kept.
    #[arg(global = true, long, env = "PROGRESS_HUB_STORE", value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,

    /// Seconds a finished task is kept (in memory and in the store) before it is removed.
    #[arg(global = true, long, env = "PROGRESS_HUB_RETENTION_SECS", default_value_t = 24 * 3600, value_parser = clap::value_parser!(u64).range(0..=MAX_SECS))]
    pub retention_secs: u64,

    /// Seconds without a report after which a running task is marked `stalled`; 0 never.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_STALL_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SECS)
    )]
    pub stall_secs: u64,

    /// Folders the built-in indexer may read (repeatable; the environment variable is
    /// `:`-separated). Defaults to the current directory.
    #[arg(
        global = true,
        long = "index-root",
        env = "PROGRESS_HUB_INDEX_ROOTS",
        value_delimiter = ':'
    )]
    pub index_roots: Vec<PathBuf>,

    /// Files larger than this many bytes are skipped by the indexer without being read.
    #[arg(global = true, long, env = "PROGRESS_HUB_MAX_FILE_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_bytes: u64,

    /// Threads that read and extract files while indexing; 0 means one per CPU core
    /// (at most 8).
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_INDEX_THREADS",
        default_value_t = 0
    )]
    pub index_threads: usize,

    /// Seconds between the indexer's checkpoint commits: work up to the last one survives
    /// a cancel or a crash, and searches see it. 0 commits only when a job completes.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_INDEX_CHECKPOINT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SECS)
    )]
    pub index_checkpoint_secs: u64,

    /// Bearer token that producers must send to write. Never logged.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_API_TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,

    /// Allow serving on a non-loopback address without an API token.
    #[arg(global = true, long, env = "PROGRESS_HUB_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Updates of one task within this many milliseconds merge into one published change;
    /// 0 publishes every update.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_COALESCE_MS",
        default_value_t = 50,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SECS * 1000)
    )]
    pub coalesce_ms: u64,

    /// Seconds of silence after which a stream gets a keep-alive comment (SSE) or ping (WS).
    #[arg(global = true, long, env = "PROGRESS_HUB_HEARTBEAT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub heartbeat_secs: u64,

    /// Events kept per running task for `Last-Event-ID` replay.
    #[arg(global = true, long, env = "PROGRESS_HUB_HISTORY", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub history: u64,

    /// Events a subscriber may fall behind before it skips to the newest snapshot.
    #[arg(global = true, long, env = "PROGRESS_HUB_SUBSCRIBER_BUFFER", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub subscriber_buffer: u64,

    /// Largest accepted request body, in bytes.
    #[arg(global = true, long, env = "PROGRESS_HUB_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds a client may take to send its request headers.
    #[arg(global = true, long, env = "PROGRESS_HUB_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub header_timeout_secs: u64,

    /// Seconds that shutdown waits for open connections before closing them.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_SHUTDOWN_GRACE_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SECS)
    )]
    pub shutdown_grace_secs: u64,

    /// Seconds between a shutdown signal and closing the listener, while `/readyz` already
    /// answers 503 and everything else is still served: time for a load balancer to stop
    /// sending new clients. 0 closes at once.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_SHUTDOWN_DRAIN_SECS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SECS)
    )]
    pub shutdown_drain_secs: u64,

    // Limits, security and observability (issue 5). Each limit is answered clearly when
    // reached: 503 + Retry-After for subscribers, 429 + Retry-After for tasks.
    /// File of producer tokens, one per line: the token, then optionally whitespace and a
    /// label for logs and per-token limits. Blank lines and lines starting with `#` are
    /// skipped. Works beside --api-token; tokens are never logged.
    #[arg(global = true, long, env = "PROGRESS_HUB_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Require a per-task read token (returned when the task is created) to follow a task,
    /// and an API token for the listings (`GET /api/tasks`, `GET /api/events`).
    #[arg(global = true, long, env = "PROGRESS_HUB_PROTECT_READS")]
    pub protect_reads: bool,

    /// Browser origin allowed to call the API cross-origin and to open WebSockets, such as
    /// `https://app.example.com` (repeatable; the environment variable is `,`-separated).
    #[arg(
        global = true,
        long = "cors-origin",
        env = "PROGRESS_HUB_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// The origin browsers reach the server at through a reverse proxy that rewrites
    /// `Host`, such as `https://progress.example.com`: its pages count as the server's own
    /// (WebSocket upgrades, writes), and its host name is answered on a loopback-only
    /// server.
    #[arg(global = true, long, env = "PROGRESS_HUB_PUBLIC_ORIGIN")]
    pub public_origin: Option<String>,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1, chosen by ALPN) with this PEM certificate chain,
    /// the server's certificate first; needs --tls-key. Reloaded on SIGHUP. Over HTTPS
    /// every request is served by hyper and axum, as with --fast-paths off.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Reloaded on SIGHUP.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// The hand-written fast paths: plain polls answered before hyper (the quick lane),
    /// event streams handed off from hyper and written by the relay itself. `off` serves
    /// everything through hyper and axum, as a reference to compare against or to rule
    /// the fast paths out when diagnosing.
    #[arg(global = true, long, env = "PROGRESS_HUB_FAST_PATHS", value_enum, default_value_t = Switch::On)]
    pub fast_paths: Switch,

    /// Open streams and long polls one task may have; more get 503.
    #[arg(global = true, long, env = "PROGRESS_HUB_MAX_SUBSCRIBERS_PER_TASK", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_subscribers_per_task: u64,

    /// Open streams and long polls in total (SSE, WebSocket, the all-tasks stream, long
    /// polls); more get 503.
    #[arg(global = true, long, env = "PROGRESS_HUB_MAX_SUBSCRIBERS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_subscribers: u64,

    /// Tasks the server holds, finished ones included until retention removes them; a
    /// create beyond it gets 429.
    #[arg(global = true, long, env = "PROGRESS_HUB_MAX_TASKS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tasks: u64,

    /// Unfinished tasks one producer token may have at once; a create beyond it gets 429.
    /// Without tokens all producers share one allowance.
    #[arg(global = true, long, env = "PROGRESS_HUB_MAX_UNFINISHED_TASKS_PER_TOKEN", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unfinished_tasks_per_token: u64,

    /// Longest life of one SSE or WebSocket stream, in seconds; each ends at a random
    /// moment in the last tenth of it so that reconnects spread out, and the client
    /// resumes with Last-Event-ID. 0: no limit.
    #[arg(
        global = true,
        long,
        env = "PROGRESS_HUB_MAX_STREAM_SECS",
        default_value_t = 3_600,
        value_parser = clap::value_parser!(u64).range(0..=MAX_SECS)
    )]
    pub max_stream_secs: u64,

    /// Largest WebSocket message accepted from a client, in bytes (clients only send
    /// control frames).
    #[arg(global = true, long, env = "PROGRESS_HUB_WS_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024, value_parser = clap::value_parser!(u64).range(125..=1_048_576))]
    pub ws_max_message_bytes: u64,

    /// Seconds a request body may stall before the request is answered 408. Idle
    /// keep-alive connections are closed after --header-timeout-secs.
    #[arg(global = true, long, env = "PROGRESS_HUB_IDLE_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub idle_timeout_secs: u64,

    /// Seconds the server waits for a client to take any byte while it has something to
    /// send (an answer, an event stream's frames); then the connection is closed. Bounds
    /// what a client that stopped reading (or vanished) holds: its connection, its
    /// subscriber place, its buffers.
    #[arg(global = true, long, env = "PROGRESS_HUB_SEND_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub send_timeout_secs: u64,
}

impl Config {
    /// The defaults, as `progress-hub` with no flags and no environment would run, but
    /// listening on a free loopback port and keeping tasks in memory. For tests.
    pub fn for_tests() -> Config {
        let mut config = Config::defaults();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.store = StoreKind::Memory;
        config
    }

    /// The built-in defaults, ignoring the environment.
    pub fn defaults() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            store: StoreKind::Sqlite,
            redis_url: None,
            retention_secs: 24 * 3600,
            stall_secs: 60,
            index_roots: Vec::new(),
            max_file_bytes: 64 * 1024 * 1024,
            index_threads: 0,
            index_checkpoint_secs: 10,
            api_token: None,
            allow_unauthenticated: false,
            coalesce_ms: 50,
            heartbeat_secs: 15,
            history: 128,
            subscriber_buffer: 128,
            max_body_bytes: 64 * 1024,
            header_timeout_secs: 10,
            shutdown_grace_secs: 5,
            shutdown_drain_secs: 0,
            api_token_file: None,
            protect_reads: false,
            cors_origins: Vec::new(),
            public_origin: None,
            tls_cert: None,
            tls_key: None,
            fast_paths: Switch::On,
            max_subscribers_per_task: 1_000,
            max_subscribers: 10_000,
            max_tasks: 100_000,
            max_unfinished_tasks_per_token: 1_000,
            max_stream_secs: 3_600,
            ws_max_message_bytes: 4 * 1024,
            idle_timeout_secs: 30,
            send_timeout_secs: 60,
        }
    }

    /// Whether the fast paths (`--fast-paths`) are on.
    pub fn fast_paths(&self) -> bool {
        self.fast_paths == Switch::On
    }

    /// The certificate and key files when HTTPS is configured.
    pub fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, crate::tls::TlsError> {
        crate::tls::TlsFiles::from_options(self.tls_cert.as_deref(), self.tls_key.as_deref())
    }

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            coalesce: Duration::from_millis(self.coalesce_ms),
            history_len: self.history as usize,
            channel_capacity: self.subscriber_buffer as usize,
            // One fan-out thread per core.
            fan_out_threads: std::thread::available_parallelism().map_or(2, usize::from),
            ..HubConfig::default()
        }
    }

    /// Extraction threads for indexing jobs: as configured, or one per core (at most 8).
    pub fn index_threads(&self) -> usize {
        match self.index_threads {
            0 => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
            n => n,
        }
    }

    /// How often an indexing job commits while it runs (`None`: only at its end).
    pub fn index_checkpoint(&self) -> Option<Duration> {
        (self.index_checkpoint_secs > 0).then(|| Duration::from_secs(self.index_checkpoint_secs))
    }

    /// Where the search index lives.
    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// `None` when streams may live forever.
    pub fn max_stream_life(&self) -> Option<Duration> {
        (self.max_stream_secs > 0).then(|| Duration::from_secs(self.max_stream_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_parser() {
        let parsed = Cli::parse_from(["progress-hub"]).config;
        let built = Config::defaults();
        // The environment may override the parser; compare only where it is unset.
        if std::env::vars().all(|(k, _)| !k.starts_with("PROGRESS_HUB_")) {
            assert_eq!(format!("{parsed:?}"), format!("{built:?}"));
        }
    }
}

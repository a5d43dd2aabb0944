//! Redis as the store of several progress-hub nodes (`--redis-url`). Why it is built
//! this way: docs/design/redis-nodes.md.
//!
//! Redis holds each task's snapshot and its newest events ([`scripts`]); every change is
//! appended there by a script that also publishes it on one channel. Each node holds one
//! subscription to that channel ([`listener`]) and applies what arrives to its hub, in
//! `seq` order, filling any gap from the task's stream; after a reconnect it catches up
//! on every task. Built-in jobs hold a lease here that another node notices expiring
//! ([`leases`]).
//!
//! The epoch key tells a node whether Redis still has the data it had: a Redis that
//! restarted empty has none (or a new one), and the nodes then give it back the tasks
//! they hold, with seqs moved past anything shown before, as after a crash
//! (docs/design/seq-after-a-crash.md). Writes name the epoch they were computed under,
//! so none lands in a Redis that a node has not reconciled.

mod leases;
mod listener;
mod scripts;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio_util::sync::CancellationToken;

pub use leases::INTERRUPTED_NODE_LOST;

use super::{FlushFuture, Store, StoreError, StoreMetrics, StoredTask};
use crate::hub::{Append, Appended, Event, FetchFuture, Hub, LogFuture, SharedLog, TaskId};
use crate::telemetry::RedisMetrics;

/// How long one command to Redis may take, connecting included, before it counts as
/// failed: a producer waiting on an unreachable Redis gets `503` after this, not a hang.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The prefix of every key and of the channel, so that one Redis can serve other things.
const PREFIX: &str = "progress-hub:";

/// What locates a task in Redis.
struct Keys;

impl Keys {
    fn task(id: &str) -> String {
        format!("{PREFIX}task:{id}")
    }
    fn events(id: &str) -> String {
        format!("{PREFIX}events:{id}")
    }
    fn lease(id: &str) -> String {
        format!("{PREFIX}lease:{id}")
    }
    fn index() -> String {
        format!("{PREFIX}tasks")
    }
    fn epoch() -> String {
        format!("{PREFIX}epoch")
    }
    fn channel() -> String {
        format!("{PREFIX}changes")
    }
    fn read_token_key() -> String {
        format!("{PREFIX}read-token-key")
    }
}

/// A secret every node must hold the same (the read-token key of `--protect-reads`): the
/// first node to reach Redis puts its own there, the others adopt it.
pub trait SharedKey: Send + Sync {
    /// This node's key, as text.
    fn hex(&self) -> String;
    /// Takes the key the other nodes use.
    fn adopt(&self, hex: &str) -> Result<(), String>;
}

pub struct RedisStore {
    client: redis::Client,
    /// Commands (scripts, reads); reconnects by itself. The subscription has its own
    /// connection ([`listener`]).
    conn: ConnectionManager,
    scripts: scripts::Scripts,
    /// This process, as lease owner.
    node: String,
    history_len: usize,
    retention_ms: u64,
    /// The epoch this node has reconciled its tasks with; `None` before it first did.
    epoch: Mutex<Option<String>>,
    /// Subscribed and caught up: what `/readyz` and producers' writes wait for.
    ready: AtomicBool,
    /// Tasks whose built-in job runs on this node: their leases are renewed.
    held: Mutex<HashSet<TaskId>>,
    /// Set when a write found that Redis is not the one this node reconciled with
    /// (its data was lost or flushed): the subscription starts over and reconciles.
    resync: tokio::sync::Notify,
    /// When the subscription last became ready (the lease watcher gives owners time to
    /// renew after an outage).
    ready_since: Mutex<Option<tokio::time::Instant>>,
    /// Agreed on with the other nodes each time the subscription (re)starts.
    shared_key: std::sync::OnceLock<Arc<dyn SharedKey>>,
    /// Set when the server starts (`/metrics`).
    metrics: std::sync::OnceLock<RedisMetrics>,
    write_metrics: std::sync::OnceLock<StoreMetrics>,
}

impl RedisStore {
    /// Parses the URL and prepares the connections; connecting happens in the background,
    /// so a node starts (not ready) while Redis is down.
    pub fn open(url: &str, history_len: usize, retention: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        Ok(RedisStore {
            client,
            conn,
            scripts: scripts::Scripts::new(),
            node: uuid::Uuid::new_v4().to_string(),
            history_len: history_len.max(1),
            retention_ms: u64::try_from(retention.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            epoch: Mutex::new(None),
            ready: AtomicBool::new(false),
            held: Mutex::new(HashSet::new()),
            resync: tokio::sync::Notify::new(),
            ready_since: Mutex::new(None),
            shared_key: std::sync::OnceLock::new(),
            metrics: std::sync::OnceLock::new(),
            write_metrics: std::sync::OnceLock::new(),
        })
    }

    /// Starts the node's subscription and its lease keeper, which run until `stop`.
    /// `on_end` is called with each task that ends (to stop a job running here).
    pub fn start(
        self: &Arc<Self>,
        hub: &Hub,
        on_end: Arc<dyn Fn(&TaskId) + Send + Sync>,
        stop: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(listener::run(
                Arc::clone(self),
                hub.clone(),
                on_end,
                stop.clone(),
            )),
            tokio::spawn(leases::run(Arc::clone(self), hub.clone(), stop)),
        ]
    }

    /// Makes `key` one the nodes agree on: before this node calls itself ready it
    /// adopts the key Redis holds, or gives Redis its own if none is there (the first node,
    /// or a Redis that lost its data).
    pub fn share_key(&self, key: Arc<dyn SharedKey>) {
        let _ = self.shared_key.set(key);
    }

    /// Where the node reports its Redis figures.
    pub fn attach_redis_metrics(&self, metrics: RedisMetrics) {
        metrics.ready.set(if self.is_ready() { 1.0 } else { 0.0 });
        let _ = self.metrics.set(metrics);
    }

    fn count(&self, counter: impl FnOnce(&RedisMetrics) -> &metrics::Counter, n: u64) {
        if let Some(metrics) = self.metrics.get() {
            counter(metrics).increment(n);
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        if let Some(metrics) = self.metrics.get() {
            metrics.ready.set(if ready { 1.0 } else { 0.0 });
        }
        *lock(&self.ready_since) = ready.then(tokio::time::Instant::now);
    }

    fn epoch(&self) -> Option<String> {
        lock(&self.epoch).clone()
    }

    /// Runs one command with [`COMMAND_TIMEOUT`].
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        timed(cmd.query_async(&mut conn)).await
    }

    /// The JSON of the task's events from `from` to `to` (inclusive, `None`: the newest)
    /// that Redis still has, oldest first.
    async fn read_stream(
        &self,
        id: &TaskId,
        from: u64,
        to: Option<u64>,
    ) -> Result<Vec<bytes::Bytes>, StoreError> {
        let end = to.map_or_else(|| "+".to_string(), |to| format!("{to}-0"));
        let entries: Vec<(String, Vec<Vec<u8>>)> = self
            .query(
                redis::cmd("XRANGE")
                    .arg(Keys::events(id.as_str()))
                    .arg(format!("{from}-0"))
                    .arg(end),
            )
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(_, mut fields)| (fields.len() >= 2).then(|| fields.swap_remove(1)))
            .map(bytes::Bytes::from)
            .collect())
    }

    async fn append_inner(&self, append: Append<'_>) -> Result<Appended, StoreError> {
        let Some(epoch) = self.epoch() else {
            return Err(StoreError::Unavailable("Redis not reached yet".to_string()));
        };
        let event = append.event;
        let id = event.task_id().as_str();
        let lease_owner = if append.job_lease {
            self.node.as_str()
        } else {
            ""
        };
        let mut invocation = self.scripts.append.prepare_invoke();
        invocation
            .key(Keys::task(id))
            .key(Keys::events(id))
            .key(Keys::index())
            .key(Keys::epoch())
            .key(Keys::lease(id))
            .arg(&epoch)
            .arg(append.base_seq.map(|s| s.to_string()).unwrap_or_default())
            .arg(event.seq())
            .arg(event.json().as_ref())
            .arg(if event.is_terminal() { "1" } else { "0" })
            .arg(self.history_len)
            .arg(self.retention_ms)
            .arg(event.created_at_ms())
            .arg(id)
            .arg(Keys::channel())
            .arg(lease_owner)
            .arg(leases::LEASE_TTL.as_millis() as u64);
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let answer: Vec<Value> = timed(invocation.invoke_async(&mut conn)).await?;
        if let Some(metrics) = self.write_metrics.get() {
            metrics.record_write(started.elapsed());
        }
        let word = answer.first().and_then(as_bytes).unwrap_or_default();
        match word {
            b"ok" => {
                if append.job_lease {
                    lock(&self.held).insert(event.task_id().clone());
                }
                Ok(Appended::Done)
            }
            b"conflict" => {
                self.count(|m| &m.write_conflicts, 1);
                let json = answer.get(1).and_then(as_bytes).unwrap_or_default();
                Ok(Appended::Conflict(bytes::Bytes::copy_from_slice(json)))
            }
            b"exists" => Ok(Appended::Exists),
            b"missing" => Ok(Appended::Missing),
            _ => {
                // Redis lost its data since this node reconciled: the subscription
                // notices and gives the tasks back; until then, writes wait.
                self.set_ready(false);
                self.resync.notify_one();
                Err(StoreError::Unavailable(
                    "Redis lost its data; the nodes are restoring it".to_string(),
                ))
            }
        }
    }
}

fn as_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Bounds a Redis call by [`COMMAND_TIMEOUT`] (the client's own timeouts do not cover
/// waiting for a reconnect).
async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(StoreError::Unavailable(format!("Redis: {error}"))),
        Err(_) => Err(StoreError::Unavailable("Redis did not answer".to_string())),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SharedLog for RedisStore {
    fn append<'a>(&'a self, append: Append<'a>) -> LogFuture<'a> {
        Box::pin(self.append_inner(append))
    }

    fn fetch<'a>(&'a self, id: &'a TaskId) -> FetchFuture<'a> {
        Box::pin(async move {
            let entries = self.read_stream(id, 1, None).await?;
            Ok(entries)
        })
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// Nothing at start: the subscription loads every task once it is connected.
    fn load(&self) -> Result<Vec<StoredTask>, StoreError> {
        Ok(Vec::new())
    }

    /// Nothing to do: the event came from Redis, or went there before it was published.
    fn record(&self, _event: &Event) {}

    /// Each append's round trip to Redis is a write.
    fn attach_metrics(&self, metrics: StoreMetrics) {
        let _ = self.write_metrics.set(metrics);
    }

    fn remove(&self, task_ids: &[TaskId]) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut pipe = redis::pipe();
        for id in task_ids {
            pipe.zrem(Keys::index(), id.as_str()).ignore();
            pipe.del(Keys::task(id.as_str())).ignore();
            pipe.del(Keys::events(id.as_str())).ignore();
        }
        let mut conn = self.conn.clone();
        runtime.spawn(async move {
            // Every node sweeps the same tasks; the keys expire anyway.
            let _ = timed(pipe.query_async::<()>(&mut conn)).await;
        });
    }

    fn flush(&self) -> FlushFuture {
        Box::pin(async { Ok(()) })
    }

    fn is_healthy(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

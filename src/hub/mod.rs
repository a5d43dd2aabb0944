//! The hub: every task's snapshot, sequence numbers, history and fan-out. No HTTP in here.
//!
//! Producers call [`Hub::create`], [`Hub::progress`] and [`Hub::finish`]; readers call
//! [`Hub::get`], [`Hub::subscribe`], [`Hub::wait_for_change`] and [`Hub::subscribe_all`].
//! Each published change is encoded once into an [`Event`] that every transport sends as-is.
//!
//! Fast producers are coalesced: the first update after a quiet period is published at
//! once, later ones within the window merge into one change published when the window
//! closes. Status changes and terminal changes never wait.

mod all;
mod cluster;
mod event;
mod id;
mod rate;
mod sink;
mod snapshot;
mod subscription;
mod task;
pub mod time;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

pub use all::{AllEvent, AllSubscription};
pub use cluster::{Append, Appended, FetchFuture, LogFuture, SharedLog};
pub use event::{Event, EventKind, WIRE_FORMS};
pub use id::{InvalidTaskId, TaskId};
pub use sink::{Attached, Sink};
pub use snapshot::{Outcome, ProgressUpdate, Snapshot, Status, UpdateRejected};
pub use subscription::Subscription;

use crate::store::{Store, StoreError};
use task::{CatchUp, RelayBatch, StartPoint, TaskCell, TaskRef, TaskState};

/// The error a running built-in job's task ends with when the process that ran it stopped.
pub const INTERRUPTED_BY_RESTART: &str = "interrupted by restart";

/// How far the seq of every unfinished task jumps when the server starts after a crash.
/// Events reach subscribers before the store commits them (every few milliseconds), so a
/// crash can take published seqs with it; the restarted server must never hand those
/// numbers to different changes. The jump is larger than any number of events one task
/// can publish ahead of the disk: producers' writes are refused while more than
/// [`MAX_UNWRITTEN`] events wait (and while the store is failing), and what the server
/// publishes by itself in that time (one coalesced change per accepted report, a stall
/// mark, a job's few reports a second) stays far below it. After a clean stop every
/// event was stored and seqs simply continue.
pub const RESTART_SEQ_GAP: u64 = 1_000_000;

/// Events the store may hold unwritten before producers' writes are refused (`503`).
pub const MAX_UNWRITTEN: u64 = 10_000;

#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Updates of one task inside this window merge into one published change.
    pub coalesce: Duration,
    /// Events kept per running task for `Last-Event-ID` replay.
    pub history_len: usize,
    /// Events a subscriber may fall behind before it is resynced to the newest snapshot.
    pub channel_capacity: usize,
    /// Events kept for replay on the all-tasks stream.
    pub all_history_len: usize,
    /// Threads of the hub's own fan-out runtime, where the server runs streams (see
    /// [`Hub::fan_out`]). 0: no runtime of its own, everything runs on the runtime the
    /// hub is built on.
    pub fan_out_threads: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            coalesce: Duration::from_millis(50),
            history_len: 128,
            channel_capacity: 128,
            all_history_len: 1024,
            fan_out_threads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Task not found")]
    NotFound,
    #[error("Task already exists")]
    AlreadyExists,
    #[error("Task already {}", .0.as_str())]
    Finished(Status),
    #[error(transparent)]
    Rejected(#[from] UpdateRejected),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counters the metrics endpoint and the tests read.
#[derive(Debug, Default)]
pub struct Stats {
    pub events_published: AtomicU64,
    pub updates_coalesced: AtomicU64,
    pub lag_resyncs: AtomicU64,
    /// Events dropped from a task's outbox because its relay was too far behind.
    pub relay_skipped: AtomicU64,
    pub replays: AtomicU64,
}

/// What a new task starts with.
#[derive(Debug, Default, Clone)]
pub struct NewTask {
    /// `None` lets the hub generate a UUID v4.
    pub id: Option<TaskId>,
    pub name: Option<String>,
    pub total: u64,
    /// Set by built-in jobs (see [`Snapshot::job`]).
    pub job: Option<String>,
}

/// A cheap-to-clone handle; every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    config: HubConfig,
    tasks: RwLock<HashMap<TaskId, TaskRef>>,
    all: Arc<all::AllTasks>,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    /// Coalescing timers are spawned here, so producers on blocking threads can report.
    runtime: tokio::runtime::Handle,
    /// Relays run here.
    fan_out: FanOut,
    /// Set when tasks are shared with other nodes (see [`cluster`]): writes go there.
    log: std::sync::OnceLock<Arc<dyn SharedLog>>,
    /// Woken whenever [`Hub::apply`] brings a change, for writers waiting to see theirs.
    applied: tokio::sync::Notify,
    /// Tasks whose creation this node sent to the shared log without learning whether
    /// the log took it (see [`cluster`]): the producer's retry of that creation is
    /// answered as a creation, not `409`.
    unconfirmed_creates: std::sync::Mutex<std::collections::HashSet<TaskId>>,
}

/// The runtime streams run on: the hub's own, or the one it was built on.
struct FanOut {
    handle: tokio::runtime::Handle,
    /// Set when the runtime is the hub's own; it stops when the hub goes.
    own: Option<OwnRuntime>,
}

impl FanOut {
    fn new(threads: usize) -> FanOut {
        let current = tokio::runtime::Handle::current();
        if threads == 0 {
            return FanOut {
                handle: current,
                own: None,
            };
        }
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("fan-out")
            .enable_all()
            .build();
        match built {
            Ok(runtime) => FanOut {
                handle: runtime.handle().clone(),
                own: Some(OwnRuntime(Some(runtime))),
            },
            Err(error) => {
                tracing::warn!(%error, "no separate fan-out runtime; streams share the main one");
                FanOut {
                    handle: current,
                    own: None,
                }
            }
        }
    }
}

struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            // Dropping a runtime blocks, which async code must not: let it go in the
            // background.
            runtime.shutdown_background();
        }
    }
}

impl Hub {
    /// Builds a hub from what `store` holds. Must be called inside a tokio runtime.
    /// Tasks of built-in jobs that were still running are failed as interrupted: the
    /// process that ran them is gone.
    pub fn new(config: HubConfig, store: Arc<dyn Store>) -> Result<Hub, StoreError> {
        let shared = Arc::new(Shared {
            all: Arc::new(all::AllTasks::new(
                config.all_history_len,
                config.channel_capacity,
            )),
            tasks: RwLock::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            runtime: tokio::runtime::Handle::current(),
            fan_out: FanOut::new(config.fan_out_threads),
            log: std::sync::OnceLock::new(),
            applied: tokio::sync::Notify::new(),
            unconfirmed_creates: Default::default(),
            store,
            config,
        });
        let hub = Hub { shared };
        let mut stored = hub.shared.store.load()?;
        stored.sort_by_key(|t| t.events.last().map(Event::created_at_ms));
        let skip = if hub.shared.store.clean_start() {
            0
        } else {
            tracing::warn!(
                gap = RESTART_SEQ_GAP,
                "the last server did not stop cleanly: unfinished tasks continue past seqs it may have shown"
            );
            RESTART_SEQ_GAP
        };
        for task in stored {
            hub.restore(task.events, skip);
        }
        Ok(hub)
    }

    /// Brings back a stored task. `skip`: how far its seq jumps (after a crash). An
    /// unfinished task then publishes its stored snapshot again under the new seq, so a
    /// client that saw lost events resumes onto it; the caller makes that durable before
    /// serving.
    fn restore(&self, events: Vec<Event>, skip: u64) {
        let Some(last) = events.last().cloned() else {
            return;
        };
        let snapshot = match Snapshot::from_json(last.json()) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(task_id = %last.task_id(), %error, "skipping unreadable stored task");
                return;
            }
        };
        let interrupted = !snapshot.status.is_terminal() && snapshot.job.is_some();
        let cell = Arc::new(TaskCell::new(
            snapshot,
            last,
            events.into(),
            self.shared.config.channel_capacity,
        ));
        {
            let st = cell.lock();
            self.shared.all.publish(&st.published);
        }
        self.write_map()
            .insert(cell.lock().working.task_id.clone(), cell.clone());
        let mut st = cell.lock();
        if st.working.status.is_terminal() {
            return;
        }
        if interrupted {
            st.working.seq = st.published.seq() + skip + 1;
            st.working.finish(
                Outcome::Failed {
                    error: INTERRUPTED_BY_RESTART.to_string(),
                },
                time::now_ms(),
            );
            self.shared.publish(&cell, &mut st);
        } else if skip > 0 {
            st.working.seq = st.published.seq() + skip;
            self.shared.publish(&cell, &mut st);
        }
    }

    /// The hub's own fan-out runtime, if it has one, for the server's streams.
    pub fn fan_out(&self) -> Option<&tokio::runtime::Handle> {
        self.shared
            .fan_out
            .own
            .as_ref()
            .map(|_| &self.shared.fan_out.handle)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The same counters, as a handle that outlives a borrow of the hub.
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Refuses a producer's write while the store is failing or too far behind (see
    /// [`MAX_UNWRITTEN`]): what is refused is never shown, so nothing shown can be
    /// forgotten by a crash during an outage.
    pub fn admit_write(&self) -> Result<(), HubError> {
        let store = &self.shared.store;
        if !store.is_healthy() {
            return Err(StoreError::Unavailable("the store is failing".to_string()).into());
        }
        if store.unwritten() >= MAX_UNWRITTEN {
            return Err(StoreError::Unavailable("the store is behind".to_string()).into());
        }
        Ok(())
    }

    /// Waits until the store has the task's newest change: what a producer's create or
    /// end waits for before it is acknowledged. If the store fails, the change stays
    /// shown and the store keeps trying; the task is marked so that the producer's retry
    /// of the same create or end answers again once it is stored, not `409`.
    pub async fn confirm(&self, id: &TaskId) -> Result<(), HubError> {
        let result = self.shared.store.flush().await;
        if let Ok(cell) = self.cell(id) {
            cell.lock().unconfirmed = result.is_err();
        }
        Ok(result?)
    }

    /// Creates a task and publishes its first change (seq 1, `pending`). Refused while the
    /// store cannot keep up ([`Hub::admit_write`]). A task whose creation the store did not
    /// confirm is returned as if created again, for the producer's retry.
    pub fn create(&self, new: NewTask) -> Result<Event, HubError> {
        if self.is_clustered() {
            return Err(cluster_only("create_clustered"));
        }
        self.admit_write()?;
        let id = new.id.unwrap_or_else(TaskId::generate);
        let mut tasks = self.write_map();
        if let Some(cell) = tasks.get(&id) {
            let st = cell.lock();
            if st.unconfirmed && st.published.seq() == 1 {
                return Ok(st.published.clone());
            }
            return Err(HubError::AlreadyExists);
        }
        let mut snapshot = Snapshot::new(id.clone(), new.name, new.total, time::now_ms());
        snapshot.seq = 1;
        snapshot.job = new.job;
        let event = Event::encode(&snapshot);
        let cell = Arc::new(TaskCell::new(
            snapshot,
            event.clone(),
            VecDeque::new(),
            self.shared.config.channel_capacity,
        ));
        tasks.insert(id, cell.clone());
        drop(tasks);
        let _st = cell.lock();
        self.shared.after_publish(&event);
        Ok(event)
    }

    /// Applies a progress report and returns the task's state including it, as JSON. The
    /// change is published now or, if the task published moments ago, when the coalescing
    /// window closes.
    pub fn progress(&self, id: &TaskId, update: ProgressUpdate) -> Result<Bytes, HubError> {
        if self.is_clustered() {
            return Err(cluster_only("report"));
        }
        let cell = self.cell(id)?;
        self.admit_write()?;
        let mut st = cell.lock();
        if st.working.status.is_terminal() {
            return Err(HubError::Finished(st.working.status));
        }
        let before = st.working.status;
        let TaskState { working, rate, .. } = &mut *st;
        working.apply_progress(update, rate, time::now_ms())?;
        if st.dirty {
            self.shared
                .stats
                .updates_coalesced
                .fetch_add(1, Ordering::Relaxed);
        } else {
            st.working.seq = st.published.seq() + 1;
            st.dirty = true;
        }
        let window = self.shared.config.coalesce;
        let now = Instant::now();
        let due = st.last_publish + window;
        if st.working.status != before || window.is_zero() || now >= due {
            return Ok(self.shared.publish(&cell, &mut st).json().clone());
        }
        if !st.flush_scheduled {
            st.flush_scheduled = true;
            let (shared, cell) = (Arc::clone(&self.shared), Arc::clone(&cell));
            self.shared.runtime.spawn(async move {
                tokio::time::sleep_until(due).await;
                let mut st = cell.lock();
                st.flush_scheduled = false;
                if st.dirty {
                    shared.publish(&cell, &mut st);
                }
            });
        }
        Ok(Bytes::from(st.working.to_json(EventKind::Progress)))
    }

    /// Applies a progress report ([`Hub::progress`]), through the shared log when tasks
    /// are shared with other nodes.
    pub async fn report(&self, id: &TaskId, update: ProgressUpdate) -> Result<Bytes, HubError> {
        if self.is_clustered() {
            return self.progress_clustered(id, update).await;
        }
        self.progress(id, update)
    }

    /// [`Hub::report`] for a blocking thread (a built-in job's reporter).
    pub fn report_blocking(&self, id: &TaskId, update: ProgressUpdate) -> Result<Bytes, HubError> {
        if self.is_clustered() {
            return self
                .shared
                .runtime
                .block_on(self.progress_clustered(id, update));
        }
        self.progress(id, update)
    }

    /// Ends a task, publishes its terminal event at once and returns once the store has
    /// it, so an acknowledged ending survives a crash. Never refused for a store outage
    /// (a built-in job must be able to end); producers pass [`Hub::admit_write`] first.
    /// Ending again with the same status a task whose ending the store did not confirm
    /// waits for the store again instead of answering `Finished`.
    pub async fn finish(&self, id: &TaskId, outcome: Outcome) -> Result<Event, HubError> {
        if self.is_clustered() {
            return self.finish_clustered(id, outcome).await;
        }
        let event = {
            let cell = self.cell(id)?;
            let mut st = cell.lock();
            if st.working.status.is_terminal() {
                if !st.unconfirmed || st.working.status != outcome.status() {
                    return Err(HubError::Finished(st.working.status));
                }
                st.published.clone()
            } else {
                if !st.dirty {
                    st.working.seq = st.published.seq() + 1;
                }
                st.working.finish(outcome, time::now_ms());
                self.shared.publish(&cell, &mut st)
            }
        };
        self.confirm(id).await?;
        Ok(event)
    }

    /// The newest published change of a task.
    pub fn get<Id>(&self, id: &Id) -> Option<Event>
    where
        TaskId: std::borrow::Borrow<Id>,
        Id: std::hash::Hash + Eq + ?Sized,
    {
        Some(self.read_map().get(id)?.published())
    }

    /// Published snapshots, newest task first.
    pub fn list(&self, status: Option<Status>, limit: usize) -> Vec<Event> {
        let mut events: Vec<Event> = self
            .cells()
            .iter()
            .map(|c| c.published())
            .filter(|e| status.is_none_or(|s| s == e.status()))
            .collect();
        events.sort_unstable_by(|a, b| {
            (b.created_at_ms(), b.task_id()).cmp(&(a.created_at_ms(), a.task_id()))
        });
        events.truncate(limit);
        events
    }

    /// Follows one task from just after `last_event_id` (or from its current snapshot).
    /// `Ok(None)`: the client already has the terminal event.
    pub fn subscribe(
        &self,
        id: &TaskId,
        last_event_id: Option<u64>,
    ) -> Result<Option<Subscription>, HubError> {
        let cell = self.cell(id)?;
        let start = cell.lock().start_point(last_event_id);
        match start {
            StartPoint::AlreadyFinished => Ok(None),
            StartPoint::From {
                backlog,
                rx,
                last_seq,
            } => {
                if last_seq > 0 {
                    self.shared.stats.replays.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(Subscription::new(
                    cell,
                    backlog,
                    rx,
                    last_seq,
                    self.shared.stats.clone(),
                )))
            }
        }
    }

    /// Follows one task through `sink` (see [`sink`]) from just after `last_event_id` (or
    /// from its current snapshot). `Ok(None)`: the client already has the terminal event.
    /// The sink leaves the task when the returned [`Attached`] is dropped.
    pub fn subscribe_sink(
        &self,
        id: &TaskId,
        last_event_id: Option<u64>,
        sink: Arc<dyn Sink>,
    ) -> Result<Option<Attached>, HubError> {
        let cell = self.cell(id)?;
        let Some((slot, last_seq)) = cell.lock().attach(last_event_id, &sink) else {
            return Ok(None);
        };
        if last_seq > 0 {
            self.shared.stats.replays.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(Attached::new(&cell, sink, slot)))
    }

    /// The task's newest change as soon as its seq exceeds `since`, or its current state
    /// when `wait` runs out (long poll).
    pub async fn wait_for_change(
        &self,
        id: &TaskId,
        since: u64,
        wait: Duration,
    ) -> Result<Event, HubError> {
        let cell = self.cell(id)?;
        let mut rx = {
            let st = cell.lock();
            match &st.tx {
                Some(tx) if st.published.seq() <= since => tx.subscribe(),
                _ => return Ok(st.published.clone()),
            }
        };
        // Any outcome (a change, a lag, the end of the task, the timeout) means: answer
        // with what is current now.
        let _ = tokio::time::timeout(wait, rx.recv()).await;
        Ok(cell.published())
    }

    /// Follows every task (see [`all`]).
    pub fn subscribe_all(&self, last_event_id: Option<u64>) -> AllSubscription {
        self.shared
            .all
            .subscribe(last_event_id, self.shared.stats.clone())
    }

    /// Publishes the task's change that waits for its coalescing window now. A built-in job
    /// calls it when it enters a new stage, so that no subscriber sees the stage merged away.
    pub fn publish_now(&self, id: &TaskId) -> Result<(), HubError> {
        let cell = self.cell(id)?;
        if self.is_clustered() {
            // Nothing waits: every write is published as it is taken (see [`cluster`]).
            return Ok(());
        }
        let mut st = cell.lock();
        if st.dirty {
            self.shared.publish(&cell, &mut st);
        }
        Ok(())
    }

    /// Publishes every change still waiting for its coalescing window (on shutdown).
    pub fn flush_pending(&self) {
        for cell in self.cells() {
            let mut st = cell.lock();
            if st.dirty {
                self.shared.publish(&cell, &mut st);
            }
        }
    }

    /// Forgets tasks entirely (retention), in memory and in the store.
    pub fn remove(&self, ids: &[TaskId]) {
        let mut tasks = self.write_map();
        for id in ids {
            tasks.remove(id);
            self.shared.all.forget(id);
        }
        drop(tasks);
        self.shared.store.remove(ids);
    }

    /// Removes finished tasks whose last change is older than `retention`. Returns how many
    /// went. Run periodically, this keeps memory flat however many tasks the server sees.
    pub fn sweep_finished(&self, retention: Duration) -> usize {
        let cutoff = time::now_ms().saturating_sub(retention.as_millis() as u64);
        let expired: Vec<TaskId> = self
            .cells()
            .into_iter()
            .filter(|cell| {
                let st = cell.lock();
                st.working.status.is_terminal() && st.working.updated_at_ms <= cutoff
            })
            .map(|cell| cell.lock().working.task_id.clone())
            .collect();
        if !expired.is_empty() {
            self.remove(&expired);
        }
        expired.len()
    }

    /// Marks running tasks that have not reported for `after` as `stalled`, publishing the
    /// change like any other. The next progress report clears the mark.
    pub fn mark_stalled(&self, after: Duration) -> usize {
        if self.is_clustered() {
            // Through the shared log instead: [`Hub::mark_stalled_clustered`].
            return 0;
        }
        let cutoff = time::now_ms().saturating_sub(after.as_millis() as u64);
        let mut marked = 0;
        for cell in self.cells() {
            let mut st = cell.lock();
            let w = &st.working;
            if w.status == Status::Processing && !w.stalled && w.updated_at_ms <= cutoff {
                if !st.dirty {
                    st.working.seq = st.published.seq() + 1;
                }
                st.working.stalled = true;
                self.shared.publish(&cell, &mut st);
                marked += 1;
            }
        }
        marked
    }

    fn cells(&self) -> Vec<TaskRef> {
        self.read_map().values().cloned().collect()
    }

    /// How many live subscribers (streams, sinks and long polls) a task has right now.
    pub fn listeners(&self, id: &TaskId) -> usize {
        self.cell(id)
            .ok()
            .map(|cell| {
                let st = cell.lock();
                st.tx.as_ref().map_or(0, |tx| tx.receiver_count()) + st.sinks.len()
            })
            .unwrap_or(0)
    }

    pub fn task_count(&self) -> usize {
        self.read_map().len()
    }

    /// How many tasks are in each status, in [`Status::ALL`] order (for `/metrics`).
    pub fn count_by_status(&self) -> [usize; 5] {
        let cells: Vec<TaskRef> = self.read_map().values().cloned().collect();
        let mut counts = [0; 5];
        for cell in cells {
            let status = cell.published().status();
            if let Some(i) = Status::ALL.iter().position(|s| *s == status) {
                counts[i] += 1;
            }
        }
        counts
    }

    fn cell(&self, id: &TaskId) -> Result<TaskRef, HubError> {
        self.read_map().get(id).cloned().ok_or(HubError::NotFound)
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TaskId, TaskRef>> {
        self.shared.tasks.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TaskId, TaskRef>> {
        self.shared.tasks.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The error of a local-only write called on a node that shares its tasks: a bug, the
/// caller should have used `instead`.
fn cluster_only(instead: &str) -> HubError {
    tracing::error!(
        instead,
        "a local-only write was called on a node sharing its tasks"
    );
    HubError::Store(StoreError::Unavailable(format!(
        "use {instead} on a shared hub"
    )))
}

impl Shared {
    /// Publishes the task's working state. Called with the task's lock held (`st` is
    /// `cell`'s); live subscribers get the event from a relay, after the caller has moved on.
    fn publish(&self, cell: &TaskRef, st: &mut TaskState) -> Event {
        let (event, start_relay) = st.publish(
            self.config.history_len,
            self.config.channel_capacity,
            &self.stats,
        );
        self.after_publish(&event);
        if start_relay {
            self.start_relay(cell);
        }
        event
    }

    /// Starts the relay that sends `cell`'s outbox to its subscribers.
    fn start_relay(&self, cell: &TaskRef) {
        {
            let cell = Arc::clone(cell);
            // Runs on the main runtime, not the fan-out one, although the streams it
            // serves live there: a relay spawned there queued behind the thousands of
            // stream tasks it had just woken, and every event waited a whole fan-out
            // round (docs/design/relay-and-fan-out.md). Its writes to sinks do run
            // there, split over the fan-out threads.
            let relay = relay(cell, self.fan_out_spread());
            match tokio::runtime::Handle::try_current() {
                // Started only once the publishing task yields, i.e. after a producer's
                // request has been answered: woken at once, the relay (and the readers
                // it wakes) took the core from the answer and multiplied its p99
                // (docs/design/relay-and-fan-out.md).
                Ok(current) => {
                    let start = SpawnOnDrop(Some((self.runtime.clone(), relay)));
                    current.spawn(async move { drop(start) });
                }
                Err(_) => {
                    self.runtime.spawn(relay);
                }
            }
        }
    }

    /// Where and over how many jobs a relay spreads its sinks.
    fn fan_out_spread(&self) -> Option<(tokio::runtime::Handle, usize)> {
        self.fan_out.own.as_ref().map(|_| {
            let threads = self.config.fan_out_threads.max(1);
            (self.fan_out.handle.clone(), threads)
        })
    }

    fn after_publish(&self, event: &Event) {
        self.stats.events_published.fetch_add(1, Ordering::Relaxed);
        self.all.publish(event);
        self.store.record(event);
    }
}

/// Spawns its future on its runtime when dropped: when the task that holds it has run, or,
/// should that runtime stop first, when it drops the task. Either way the relay starts,
/// and the task's `relaying` flag never outlives it.
struct SpawnOnDrop<F: Future<Output = ()> + Send + 'static>(Option<(tokio::runtime::Handle, F)>);

impl<F: Future<Output = ()> + Send + 'static> Drop for SpawnOnDrop<F> {
    fn drop(&mut self) {
        if let Some((runtime, future)) = self.0.take() {
            runtime.spawn(future);
        }
    }
}

/// Sends a task's outbox into its channel and to its sinks until the outbox is empty,
/// outside the task's lock: the wake-ups of thousands of waiting subscribers, or the
/// writes to thousands of sockets, cost nobody else a wait. One batch is done before the
/// next is taken, so every sink gets events in order.
async fn relay(cell: TaskRef, fan_out: Option<(tokio::runtime::Handle, usize)>) {
    let mut work = None;
    loop {
        // A statement of its own, so the lock is released before anything is sent.
        let next = cell.lock().relay_batch(work);
        let Some(RelayBatch {
            events,
            tx,
            sinks,
            spare,
        }) = next
        else {
            return;
        };
        for event in events.iter() {
            // An error only means that nobody is listening on the channel.
            let _ = tx.send(event.clone());
        }
        drop(tx);
        let started = std::time::Instant::now();
        let jobs = deliver_to_sinks(&cell, &sinks, &events, fan_out.as_ref(), spare).await;
        work = Some(started.elapsed() * jobs);
    }
}

/// The fewest sinks a job is given: with fewer than twice this many a relay writes to
/// them itself rather than splitting the work. Also how often a job yields and looks for
/// newer events.
const SINKS_PER_JOB: usize = 512;

/// The same for a relay that was mostly idle ([`task::RelayPace`]).
const SPARE_SINKS_PER_JOB: usize = 256;

/// Every sink gets `events`. Many sinks are split into one job per fan-out thread, each
/// yielding now and then so that the streams of that runtime (slow subscribers'
/// writers, heartbeats) are not held up for a whole round. Returns the number of jobs.
async fn deliver_to_sinks(
    cell: &TaskRef,
    sinks: &Arc<[Arc<dyn Sink>]>,
    events: &Arc<[Event]>,
    fan_out: Option<&(tokio::runtime::Handle, usize)>,
    spare: bool,
) -> u32 {
    let least = if spare {
        SPARE_SINKS_PER_JOB
    } else {
        SINKS_PER_JOB
    };
    let jobs = match fan_out {
        Some((_, threads)) => (*threads).min(sinks.len() / least),
        None => 0,
    };
    let Some((runtime, _)) = fan_out.filter(|_| jobs > 1) else {
        deliver_range(cell, sinks, events, 0..sinks.len()).await;
        return 1;
    };
    let per_job = sinks.len().div_ceil(jobs);
    let handles: Vec<_> = (0..jobs)
        .map(|job| {
            let (cell, sinks, events) = (cell.clone(), sinks.clone(), events.clone());
            let range = job * per_job..((job + 1) * per_job).min(sinks.len());
            runtime.spawn(async move { deliver_range(&cell, &sinks, &events, range).await })
        })
        .collect();
    for handle in handles {
        // An error only means the runtime is shutting down.
        let _ = handle.await;
    }
    u32::try_from(jobs).unwrap_or(u32::MAX)
}

/// The most events a relay round hands each sink once it has added newer ones, and what
/// a lagging relay's outbox keeps (see [`TaskState::publish`]): one write's worth
/// ([`crate::transport::handoff::MAX_BATCH`]).
const CATCH_UP_MAX: usize = 16;

/// How often a round looks for events published since it began, for the sinks still to
/// come (a lock and a comparison; a write costs thousands of times more).
const CATCH_UP_EVERY: usize = 16;

// `deliver_range` yields on a catch-up look only: every `SINKS_PER_JOB` sinks must be one.
const _: () = assert!(SINKS_PER_JOB.is_multiple_of(CATCH_UP_EVERY));

/// Delivers to `sinks[range]`. A round over thousands of sinks takes milliseconds, and
/// what is published meanwhile would wait for the next round: every so often the
/// sinks still to come get those newer events too, in the same write (the next round
/// gives them to the others; sinks drop what they already have). Once the relay is
/// behind its producer, they get only the newest events instead (see [`CatchUp`]).
async fn deliver_range(
    cell: &TaskRef,
    sinks: &[Arc<dyn Sink>],
    events: &[Event],
    range: std::ops::Range<usize>,
) {
    let mut events = std::borrow::Cow::Borrowed(events);
    for (n, sink) in sinks[range].iter().enumerate() {
        sink.deliver(&events);
        if n % CATCH_UP_EVERY == CATCH_UP_EVERY - 1 {
            if n % SINKS_PER_JOB == SINKS_PER_JOB - 1 {
                tokio::task::yield_now().await;
            }
            let newest = events.last().map_or(0, Event::seq);
            // A statement of its own, so the lock is released before anything is sent.
            let catch_up = cell.lock().catch_up(newest, events.len());
            match catch_up {
                Some(CatchUp::Follow(newer)) => events.to_mut().extend(newer),
                Some(CatchUp::Skip(newest)) => events = std::borrow::Cow::Owned(newest),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;

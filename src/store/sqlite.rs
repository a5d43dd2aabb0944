//! The default store: one SQLite file in the data directory, in WAL mode.
//!
//! Events are written behind the hub by one writer thread, never on the publish path:
//! `record` only parks the event in a pending map, and the writer commits everything
//! pending in one transaction, at most every [`COMMIT_INTERVAL`]. A task's pending events
//! are bounded by its history length, so the queue cannot outgrow memory. `flush` waits
//! until the writer has committed everything that was recorded before it, and cuts the
//! interval short (the hub flushes created and terminal events before acknowledging them).
//!
//! A batch that fails (disk full, read-only, the database locked by another process) is
//! not dropped: it goes back into the pending map, under anything newer, and the writer
//! tries again with a growing pause (a flush tries at once). The store reports itself
//! unhealthy until a write succeeds.
//!
//! Tables: `events(task_id, seq, json)`, the newest `history_len` events per task (the
//! last row of a task is its snapshot: an event's JSON is the full snapshot), and
//! `meta(key, value)`, which records whether the last server stopped cleanly.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{FlushFuture, Store, StoreError, StoreMetrics, StoredTask};
use crate::hub::{Event, TaskId};

/// How often the writer commits what is pending while events keep coming, unless a flush
/// asks sooner. It used to be woken by every report and commit it at once: that ran on
/// the producer's core right as its request was being answered, and multiplied the
/// acknowledgement's p99 (docs/design/sqlite-writer.md). A crash loses at most this much
/// non-terminal progress, which the next report restores; its seqs are skipped past.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(10);

/// After this long with nothing to write the writer stops ticking and sleeps until the
/// next event wakes it.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The first pause before a failed batch is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long a write waits for another process's lock on the file before it counts as
/// failed. Short, since a failed batch is kept and tried again: the store is reported
/// unhealthy (and producers' writes are refused) a second into an outage, not later.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Attempts at the last batch when the store closes, before what is left is given up.
const CLOSE_ATTEMPTS: u32 = 3;

/// The file inside the data directory.
pub const FILE_NAME: &str = "progress-hub.sqlite3";

/// The `meta` row that says the last server stopped with everything stored.
const CLEAN_STOP: &str = "clean_stop";

pub struct SqliteStore {
    path: PathBuf,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Read when the store opened: see [`Store::clean_start`].
    clean_start: bool,
}

/// What the writer thread and the store handle share.
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    healthy: AtomicBool,
    /// Events recorded and not yet committed (see [`Store::unwritten`]).
    unwritten: AtomicU64,
    history_len: usize,
    /// Set by `attach_metrics` when a server starts: each batch's commit time.
    metrics: std::sync::OnceLock<StoreMetrics>,
}

#[derive(Default)]
struct Pending {
    /// Tasks to delete, applied before `events` (a removed task's earlier pending events
    /// are dropped when it is removed).
    removes: Vec<TaskId>,
    events: HashMap<TaskId, VecDeque<Event>>,
    /// The writer sleeps until woken (it ticks otherwise).
    asleep: bool,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    closing: bool,
    /// Events recorded into this batch, before any were merged away.
    recorded: u64,
    /// Record a clean stop with this batch (see [`Store::close`]).
    mark_clean: bool,
    /// The writer thread has ended (it only does when closing, or if it panicked).
    writer_gone: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.removes.is_empty()
            && self.events.is_empty()
            && self.waiters.is_empty()
            && !self.mark_clean
    }

    /// Puts a batch that failed back under what was recorded since, so the next attempt
    /// writes both in order. Its waiters have had their answer already.
    fn take_back(&mut self, mut failed: Pending, history_len: usize) {
        for (id, mut older) in failed.events.drain() {
            // Removed since: its older events must not come back after the delete.
            if self.removes.contains(&id) {
                continue;
            }
            match self.events.entry(id) {
                std::collections::hash_map::Entry::Occupied(mut newer) => {
                    // A terminal event ends a task's history, as in `record`.
                    if newer.get().front().is_some_and(Event::is_terminal) {
                        continue;
                    }
                    older.append(newer.get_mut());
                    while older.len() > history_len {
                        older.pop_front();
                    }
                    *newer.get_mut() = older;
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(older);
                }
            }
        }
        failed.removes.append(&mut self.removes);
        self.removes = failed.removes;
        self.recorded += failed.recorded;
        self.mark_clean |= failed.mark_clean;
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and starts its writer.
    pub fn open(data_dir: &Path, history_len: usize) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(FILE_NAME);
        let conn = connect(&path)?;
        let clean_start = start_session(&conn).map_err(|e| {
            StoreError::Unavailable(format!("cannot write to {}: {e}", path.display()))
        })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            healthy: AtomicBool::new(true),
            unwritten: AtomicU64::new(0),
            history_len: history_len.max(1),
            metrics: std::sync::OnceLock::new(),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sqlite-writer".to_string())
                .spawn(move || write_loop(conn, &shared))
                .map_err(|e| StoreError::Unavailable(format!("cannot start writer: {e}")))?
        };
        Ok(SqliteStore {
            path,
            shared,
            writer: Mutex::new(Some(writer)),
            clean_start,
        })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    // WAL: readers never block the writer. NORMAL: a commit survives the process dying
    // at any point; only a power loss can take the last commits with it.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(unavailable)?;
    Ok(conn)
}

/// Creates the tables, reads whether the last server stopped cleanly, and records that this
/// one has not (yet): a crash from now on leaves `clean_stop` at 0. A database with events
/// and no record at all comes from a crash too, as far as anyone can tell.
fn start_session(conn: &Connection) -> rusqlite::Result<bool> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
             task_id TEXT NOT NULL,
             seq INTEGER NOT NULL,
             json TEXT NOT NULL,
             PRIMARY KEY (task_id, seq)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS meta (
             key TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )?;
    let any_events: bool =
        conn.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |row| row.get(0))?;
    let clean_stop: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [CLEAN_STOP],
            |row| row.get(0),
        )
        .optional()?;
    set_clean_stop(conn, false)?;
    Ok(!any_events || clean_stop == Some(1))
}

fn set_clean_stop(conn: &Connection, clean: bool) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![CLEAN_STOP, i64::from(clean)],
    )
    .map(|_| ())
}

fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn load(&self) -> Result<Vec<StoredTask>, StoreError> {
        let conn = connect(&self.path)?;
        let mut statement = conn
            .prepare("SELECT task_id, json FROM events ORDER BY task_id, seq")
            .map_err(unavailable)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(unavailable)?;
        let mut tasks: Vec<StoredTask> = Vec::new();
        let mut current: Option<String> = None;
        for row in rows {
            let (task_id, json) = row.map_err(unavailable)?;
            let event = match Event::decode(json.as_bytes()) {
                Ok((event, _)) => event,
                Err(error) => {
                    tracing::warn!(%task_id, %error, "skipping an unreadable stored event");
                    continue;
                }
            };
            if current.as_deref() != Some(task_id.as_str()) {
                tasks.push(StoredTask { events: Vec::new() });
                current = Some(task_id);
            }
            if let Some(task) = tasks.last_mut() {
                task.events.push(event);
            }
        }
        Ok(tasks)
    }

    fn record(&self, event: &Event) {
        let mut pending = self.pending();
        // A writer that is ticking will find the event at its next tick: waking it here,
        // on the producer's request thread, is what the interval avoids.
        let wake = pending.asleep;
        pending.recorded += 1;
        self.shared.unwritten.fetch_add(1, Ordering::Relaxed);
        let events = pending.events.entry(event.task_id().clone()).or_default();
        if event.is_terminal() {
            events.clear();
        }
        events.push_back(event.clone());
        while events.len() > self.shared.history_len {
            events.pop_front();
        }
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    fn remove(&self, task_ids: &[TaskId]) {
        let mut pending = self.pending();
        for id in task_ids {
            pending.events.remove(id);
            pending.removes.push(id.clone());
        }
        drop(pending);
        self.shared.wake.notify_one();
    }

    fn flush(&self) -> FlushFuture {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending();
            // Nobody would ever answer: the writer thread is gone.
            if pending.writer_gone {
                return Box::pin(async {
                    Err(StoreError::Unavailable(
                        "the store's writer stopped".to_string(),
                    ))
                });
            }
            pending.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("writer stopped".to_string())))
        })
    }

    fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    fn unwritten(&self) -> u64 {
        self.shared.unwritten.load(Ordering::Relaxed)
    }

    fn clean_start(&self) -> bool {
        self.clean_start
    }

    fn close(&self) -> FlushFuture {
        self.pending().mark_clean = true;
        self.flush()
    }

    fn attach_metrics(&self, metrics: StoreMetrics) {
        let _ = self.shared.metrics.set(metrics);
    }
}

impl Drop for SqliteStore {
    /// Lets the writer commit what is pending, then joins it.
    fn drop(&mut self) {
        self.pending().closing = true;
        self.shared.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.join();
        }
    }
}

/// Marks the store failed for good when the writer thread ends, however it ends, and
/// answers every flush still waiting, so that none waits forever for a dead thread.
struct WriterGone<'a>(&'a Shared);

impl Drop for WriterGone<'_> {
    fn drop(&mut self) {
        let mut pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.writer_gone = true;
        if std::thread::panicking() {
            tracing::error!("the store's writer thread died; the store takes no more writes");
            self.0.healthy.store(false, Ordering::Relaxed);
        }
        for waiter in std::mem::take(&mut pending.waiters) {
            let _ = waiter.send(Err(StoreError::Unavailable(
                "the store's writer stopped".to_string(),
            )));
        }
    }
}

fn write_loop(mut conn: Connection, shared: &Shared) {
    let _gone = WriterGone(shared);
    // Set while a failed batch waits to be tried again: when, and the pause after the next
    // failure.
    let mut retry: Option<(Instant, Duration)> = None;
    let mut close_attempts = 0;
    // A clean stop was recorded: a later batch with events must take it back.
    let mut marked_clean = false;
    loop {
        let mut batch = {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            // Tick every COMMIT_INTERVAL while there is something to write or was lately;
            // a flush or closing cuts the wait short. A failed batch waits its pause.
            let mut quiet = Duration::ZERO;
            while pending.waiters.is_empty() && !pending.closing {
                if let Some((at, _)) = retry {
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    pending = shared
                        .wake
                        .wait_timeout(pending, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                if quiet >= IDLE_AFTER && pending.is_empty() {
                    pending.asleep = true;
                    pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
                    pending.asleep = false;
                    quiet = Duration::ZERO;
                    continue;
                }
                pending = shared
                    .wake
                    .wait_timeout(pending, COMMIT_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if !pending.is_empty() {
                    break;
                }
                quiet += COMMIT_INTERVAL;
            }
            let closing = pending.closing;
            let batch = std::mem::take(&mut *pending);
            if closing && batch.is_empty() {
                return;
            }
            pending.closing = closing;
            batch
        };
        let unmark = marked_clean && !batch.events.is_empty() && !batch.mark_clean;
        let started = Instant::now();
        // A panic inside a write is a failed write: the batch is kept, the thread lives.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_batch(&mut conn, &batch, shared.history_len, unmark)
        }))
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "a store write panicked".to_string(),
            ))
        });
        let took = started.elapsed();
        if let Some(metrics) = shared.metrics.get() {
            metrics.record_write(took);
        }
        let waiters = std::mem::take(&mut batch.waiters);
        let answer = match result {
            Ok(()) => {
                shared
                    .unwritten
                    .fetch_sub(batch.recorded, Ordering::Relaxed);
                shared.healthy.store(true, Ordering::Relaxed);
                marked_clean = (marked_clean && !unmark) || batch.mark_clean;
                retry = None;
                Ok(())
            }
            Err(error) => {
                shared.healthy.store(false, Ordering::Relaxed);
                let pause = retry.map_or(RETRY_FIRST, |(_, pause)| (pause * 2).min(RETRY_MAX));
                tracing::error!(%error, retry_in = ?pause, "store write failed; keeping the batch");
                let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.closing {
                    close_attempts += 1;
                    if close_attempts >= CLOSE_ATTEMPTS {
                        tracing::error!(
                            events = batch.recorded + pending.recorded,
                            "store closing: giving up on changes that could not be written"
                        );
                        for waiter in std::mem::take(&mut pending.waiters) {
                            let _ = waiter.send(Err(error.clone()));
                        }
                        drop(pending);
                        for waiter in waiters {
                            let _ = waiter.send(Err(error.clone()));
                        }
                        return;
                    }
                }
                let closing = pending.closing;
                pending.take_back(batch, shared.history_len);
                drop(pending);
                if closing {
                    // Closing does not wait for ticks: pause here between attempts.
                    std::thread::sleep(pause);
                }
                retry = Some((Instant::now() + pause, pause));
                Err(error)
            }
        };
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
    }
}

/// Commits one batch in one transaction.
/// `unmark`: take back an earlier clean stop, since events are being written after it.
fn write_batch(
    conn: &mut Connection,
    batch: &Pending,
    history_len: usize,
    unmark: bool,
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(unavailable)?;
    {
        let mut delete_task = tx
            .prepare_cached("DELETE FROM events WHERE task_id = ?1")
            .map_err(unavailable)?;
        for id in &batch.removes {
            delete_task
                .execute(params![id.as_str()])
                .map_err(unavailable)?;
        }
        let mut insert = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO events (task_id, seq, json) VALUES (?1, ?2, ?3)",
            )
            .map_err(unavailable)?;
        let mut trim = tx
            .prepare_cached("DELETE FROM events WHERE task_id = ?1 AND seq < ?2")
            .map_err(unavailable)?;
        // Keeps the newest rows by count, not by seq range: seqs skip after a crash.
        let mut trim_count = tx
            .prepare_cached(
                "DELETE FROM events WHERE task_id = ?1 AND seq < (SELECT seq FROM events \
                 WHERE task_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )
            .map_err(unavailable)?;
        for (id, events) in &batch.events {
            for event in events {
                let json = std::str::from_utf8(event.json())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                insert
                    .execute(params![id.as_str(), event.seq() as i64, json])
                    .map_err(unavailable)?;
            }
            match events.back() {
                // A finished task keeps only its end.
                Some(last) if last.is_terminal() => {
                    trim.execute(params![id.as_str(), last.seq() as i64])
                        .map_err(unavailable)?;
                }
                Some(_) => {
                    trim_count
                        .execute(params![id.as_str(), history_len as i64 - 1])
                        .map_err(unavailable)?;
                }
                None => {}
            }
        }
    }
    if batch.mark_clean || unmark {
        set_clean_stop(&tx, batch.mark_clean).map_err(unavailable)?;
    }
    tx.commit().map_err(unavailable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Snapshot, Status};

    fn event(task: &str, seq: u64, status: Status) -> Event {
        let mut snapshot = Snapshot::new(TaskId::parse(task).unwrap(), None, 10, 1_000);
        snapshot.seq = seq;
        snapshot.status = status;
        snapshot.processed = seq.min(10);
        Event::encode(&snapshot)
    }

    fn seqs(tasks: &[StoredTask]) -> Vec<Vec<u64>> {
        let mut all: Vec<Vec<u64>> = tasks
            .iter()
            .map(|t| t.events.iter().map(Event::seq).collect())
            .collect();
        all.sort();
        all
    }

    #[tokio::test]
    async fn recorded_events_survive_reopening_trimmed_to_the_history() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), 3).unwrap();
            for seq in 1..=5 {
                store.record(&event("a", seq, Status::Processing));
            }
            store.record(&event("b", 1, Status::Pending));
            store.record(&event("b", 2, Status::Processing));
            store.record(&event("b", 3, Status::Completed));
            store.flush().await.unwrap();
            assert_eq!(store.unwritten(), 0);
        }
        let store = SqliteStore::open(dir.path(), 3).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(seqs(&loaded), vec![vec![3], vec![3, 4, 5]]);
        let b = loaded
            .iter()
            .find(|t| t.events[0].task_id().as_str() == "b")
            .unwrap();
        assert_eq!(b.events[0].status(), Status::Completed);
    }

    #[tokio::test]
    async fn removed_tasks_are_gone_and_drop_commits_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), 8).unwrap();
            store.record(&event("gone", 1, Status::Pending));
            store.record(&event("kept", 1, Status::Pending));
            store.flush().await.unwrap();
            store.remove(&[TaskId::parse("gone").unwrap()]);
            store.record(&event("kept", 2, Status::Processing));
            // No flush: dropping the store must still commit.
        }
        let store = SqliteStore::open(dir.path(), 8).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].events.last().unwrap().seq(), 2);
        assert!(store.is_healthy());
    }

    /// Without any flush, a report reaches the disk on the writer's tick, and one that
    /// comes after the writer has fallen asleep wakes it.
    #[test]
    fn reports_are_committed_on_the_tick_and_wake_a_sleeping_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 8).unwrap();
        let committed = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while store.unwritten() > 0 {
                assert!(Instant::now() < deadline, "event {n} was never committed");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        store.record(&event("tick", 1, Status::Processing));
        committed(1);
        // The writer counts its quiet ticks, which a loaded machine stretches: wait for
        // the sleep itself, not for the idle time.
        let started = Instant::now();
        while !store.pending().asleep {
            assert!(
                started.elapsed() < IDLE_AFTER * 10,
                "never fell asleep while idle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // From the commit, which `committed` saw a moment after it happened.
        assert!(
            started.elapsed() >= IDLE_AFTER / 2,
            "asleep before it was idle"
        );
        store.record(&event("tick", 2, Status::Processing));
        committed(2);
    }

    #[test]
    fn a_failed_batch_goes_back_under_newer_changes() {
        let id = |s: &str| TaskId::parse(s).unwrap();
        let mut failed = Pending::default();
        failed.events.insert(
            id("a"),
            [1, 2].map(|n| event("a", n, Status::Processing)).into(),
        );
        failed
            .events
            .insert(id("b"), [event("b", 1, Status::Pending)].into());
        failed
            .events
            .insert(id("c"), [event("c", 4, Status::Processing)].into());
        failed.removes.push(id("old"));
        failed.recorded = 4;
        failed.mark_clean = true;

        let mut pending = Pending::default();
        pending
            .events
            .insert(id("a"), [event("a", 3, Status::Processing)].into());
        // Removed after the batch was taken: its older events must not come back.
        pending.removes.push(id("b"));
        // Ended since: the end is all a finished task keeps.
        pending
            .events
            .insert(id("c"), [event("c", 5, Status::Completed)].into());
        pending.recorded = 2;

        pending.take_back(failed, 3);
        let seqs = |task: &str| -> Vec<u64> {
            pending
                .events
                .get(&id(task))
                .map(|e| e.iter().map(Event::seq).collect())
                .unwrap_or_default()
        };
        assert_eq!(seqs("a"), [1, 2, 3]);
        assert_eq!(seqs("b"), Vec::<u64>::new());
        assert_eq!(seqs("c"), [5]);
        assert_eq!(pending.removes, [id("old"), id("b")]);
        assert_eq!(pending.recorded, 6);
        assert!(pending.mark_clean);
    }

    #[tokio::test]
    async fn only_a_closed_store_starts_clean_the_next_time() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), 8).unwrap();
            assert!(store.clean_start(), "a new file has nothing to skip past");
            store.record(&event("t", 1, Status::Processing));
            store.flush().await.unwrap();
            assert_eq!(store.unwritten(), 0);
            // Dropped without `close`, as a crash would leave it.
        }
        {
            let store = SqliteStore::open(dir.path(), 8).unwrap();
            assert!(!store.clean_start());
            store.close().await.unwrap();
        }
        {
            let store = SqliteStore::open(dir.path(), 8).unwrap();
            assert!(store.clean_start());
            // Events written after a clean stop take it back.
            store.close().await.unwrap();
            store.record(&event("t", 2, Status::Processing));
            store.flush().await.unwrap();
        }
        let store = SqliteStore::open(dir.path(), 8).unwrap();
        assert!(!store.clean_start());
    }

    #[tokio::test]
    async fn a_writer_thread_that_dies_answers_every_flush_and_fails_the_store() {
        let dir = tempfile::tempdir().unwrap();
        // A store whose writer is a thread that panics: what a bug in it would do.
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            healthy: AtomicBool::new(true),
            unwritten: AtomicU64::new(0),
            history_len: 8,
            metrics: std::sync::OnceLock::new(),
        });
        let store = SqliteStore {
            path: dir.path().join(FILE_NAME),
            shared: shared.clone(),
            writer: Mutex::new(None),
            clean_start: true,
        };
        let waiting = store.flush();
        let died = std::thread::spawn(move || {
            let _gone = WriterGone(&shared);
            panic!("a bug in the writer");
        })
        .join();
        assert!(died.is_err());
        assert!(waiting.await.is_err(), "the waiting flush is answered");
        assert!(!store.is_healthy());
        assert!(store.flush().await.is_err(), "and so is every later one");
    }
}

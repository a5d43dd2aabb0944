//! The hub as one node of several that share tasks through a log outside the process
//! (Redis: [`crate::store::redis`]). Why it is built this way: docs/design/redis-nodes.md.
//!
//! A node never publishes a change into its own tasks directly. A producer's write is
//! computed from the newest snapshot the node has, given the next `seq`, encoded, and
//! appended to the shared log only if the task's newest `seq` there is still the one it
//! was computed from (compare and set); on a conflict it is computed again from what the
//! log holds. The log hands every appended event to every node, the writer included, and
//! each node applies them to its tasks in `seq` order ([`Hub::apply`]), from where the
//! usual relay and fan-out take them. So a `seq` means the same change on every node, and
//! a write is acknowledged only once the log has it.
//!
//! There is no coalescing window in this mode: every accepted write is one event, since
//! holding an acknowledged update back in one node's memory would lose it with the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::snapshot::{Outcome, ProgressUpdate, Snapshot};
use super::task::TaskCell;
use super::{time, Event, Hub, HubError, NewTask, TaskId};
use crate::store::StoreError;

/// What a node asks the shared log to append.
pub struct Append<'a> {
    pub event: &'a Event,
    /// The `seq` the task must still have in the log; `None` creates the task (it must
    /// not exist yet).
    pub base_seq: Option<u64>,
    /// The task runs a built-in job on this node: the log takes a lease on it for this
    /// node (see [`crate::store::redis`]).
    pub job_lease: bool,
}

/// The log's answer to an [`Append`].
pub enum Appended {
    /// Appended and on its way to every node.
    Done,
    /// The task moved on since; its newest snapshot as JSON.
    Conflict(Bytes),
    /// The task already exists (for a create).
    Exists,
    /// The log does not have the task.
    Missing,
}

pub type LogFuture<'a> = Pin<Box<dyn Future<Output = Result<Appended, StoreError>> + Send + 'a>>;

pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Bytes>, StoreError>> + Send + 'a>>;

/// The log that nodes share. Implemented by the Redis store.
pub trait SharedLog: Send + Sync + 'static {
    fn append<'a>(&'a self, append: Append<'a>) -> LogFuture<'a>;

    /// The task's events that the log still has, oldest first, as JSON (empty: no
    /// such task).
    fn fetch<'a>(&'a self, id: &'a TaskId) -> FetchFuture<'a>;
}

/// How often a write is computed again after losing a race to another node's write to
/// the same task, before the producer is told to retry (`503`).
const MAX_CONFLICTS: usize = 16;

/// How long an acknowledged write waits for the node's own copy of the task to show it,
/// so that a producer reading back from the same node sees its write. The log has the
/// write already: running out of this wait only makes the read-back stale, never loses
/// anything.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// The most creations a node remembers as sent without a known outcome.
const MAX_UNCONFIRMED_CREATES: usize = 10_000;

/// How long after a creation the same creation sent to any node is taken for a retry of
/// it (answered `201`) rather than a second creation (`409`).
pub const CREATE_RETRY_WINDOW_MS: u64 = 60_000;

fn unavailable(why: &str) -> HubError {
    HubError::Store(StoreError::Unavailable(why.to_string()))
}

impl Hub {
    /// Makes this hub a node that shares its tasks through `log`: from now on every
    /// write goes there, and changes arrive through [`Hub::apply`].
    pub fn attach_log(&self, log: Arc<dyn SharedLog>) {
        let _ = self.shared.log.set(log);
    }

    /// Whether tasks are shared with other nodes (`--redis-url`).
    pub fn is_clustered(&self) -> bool {
        self.shared.log.get().is_some()
    }

    /// Applies an event that the shared log delivered: the next change of a task this
    /// node knows, or the first it learns of one. Anything at or below the task's
    /// current `seq`, or after its terminal event, is dropped (a duplicate). A `seq`
    /// further ahead means the events between are lost to this node: its history then
    /// restarts here, so that a replay never silently skips them. Returns whether the
    /// event was new.
    pub fn apply(&self, event: Event, snapshot: Snapshot) -> bool {
        let applied = self.apply_inner(event, snapshot);
        if applied {
            self.shared.applied.notify_waiters();
        }
        applied
    }

    fn apply_inner(&self, event: Event, snapshot: Snapshot) -> bool {
        let existing = self.read_map().get(event.task_id()).cloned();
        let cell = match existing {
            Some(cell) => cell,
            None => {
                let mut tasks = self.write_map();
                if let Some(cell) = tasks.get(event.task_id()) {
                    cell.clone()
                } else {
                    let cell = Arc::new(TaskCell::new(
                        snapshot,
                        event.clone(),
                        Default::default(),
                        self.shared.config.channel_capacity,
                    ));
                    tasks.insert(event.task_id().clone(), cell.clone());
                    drop(tasks);
                    let _st = cell.lock();
                    self.shared.after_publish(&event);
                    return true;
                }
            }
        };
        let mut st = cell.lock();
        let newest = st.published.seq();
        if event.seq() <= newest || st.published.is_terminal() {
            return false;
        }
        if event.seq() != newest + 1 {
            st.history.clear();
        }
        st.working = snapshot;
        st.dirty = false;
        let start_relay = st.publish_encoded(
            event.clone(),
            self.shared.config.history_len,
            self.shared.config.channel_capacity,
            &self.shared.stats,
        );
        self.shared.after_publish(&event);
        if start_relay {
            self.shared.start_relay(&cell);
        }
        true
    }

    /// Asks the shared log for a task this node does not know (yet): a follower may
    /// reach this node before the task's creation, written through another node, has.
    pub async fn fetch_missing(&self, id: &TaskId) -> Result<(), HubError> {
        let Some(log) = self.shared.log.get() else {
            return Ok(());
        };
        if self.read_map().contains_key(id) {
            return Ok(());
        }
        for json in log.fetch(id).await? {
            if let Ok((event, snapshot)) = Event::decode(&json) {
                self.apply(event, snapshot);
            }
        }
        Ok(())
    }

    /// The newest `seq` this node has of each task, for a node catching up after its
    /// subscription to the log was interrupted.
    pub fn newest_seqs(&self) -> Vec<(TaskId, u64, bool)> {
        self.cells()
            .iter()
            .map(|cell| {
                let st = cell.lock();
                (
                    st.working.task_id.clone(),
                    st.published.seq(),
                    st.published.is_terminal(),
                )
            })
            .collect()
    }

    /// The newest snapshot of every task this node has (to give back to a log that lost
    /// its data).
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.cells()
            .iter()
            .map(|cell| cell.lock().working.clone())
            .collect()
    }

    /// The unfinished tasks of built-in jobs (whichever node runs them).
    pub fn unfinished_jobs(&self) -> Vec<TaskId> {
        self.cells()
            .iter()
            .filter_map(|cell| {
                let st = cell.lock();
                (st.working.job.is_some() && !st.published.is_terminal())
                    .then(|| st.working.task_id.clone())
            })
            .collect()
    }

    /// Creates a task through the shared log; it is acknowledged once the log has it.
    pub async fn create_clustered(&self, new: NewTask) -> Result<Event, HubError> {
        let log = self.log()?;
        self.admit_write()?;
        let id = new.id.clone().unwrap_or_else(TaskId::generate);
        if self.read_map().contains_key(&id) {
            return self.retried_create(&id, &new);
        }
        let mut snapshot = Snapshot::new(id.clone(), new.name.clone(), new.total, time::now_ms());
        snapshot.seq = 1;
        snapshot.job = new.job.clone();
        let event = Event::encode(&snapshot);
        let append = Append {
            event: &event,
            base_seq: None,
            job_lease: snapshot.job.is_some(),
        };
        let appended = match log.append(append).await {
            Ok(appended) => appended,
            Err(error) => {
                // The log may have taken it all the same (an answer lost to a timeout or
                // a dropped connection): let the producer's retry find it.
                self.remember_unconfirmed_create(&id);
                return Err(error.into());
            }
        };
        match appended {
            Appended::Done => {
                self.await_applied(&id, 1).await;
                Ok(event)
            }
            Appended::Exists | Appended::Conflict(_) => {
                self.await_applied(&id, 1).await;
                self.retried_create(&id, &new)
            }
            Appended::Missing => Err(unavailable("the shared store is resyncing")),
        }
    }

    /// A creation of a task that exists: answered as created, not `409`, while nothing has
    /// changed the task since it was created (its `seq` is still 1) and either this node
    /// sent that creation without learning its outcome (as [`Hub::create`] does for a
    /// creation the store did not confirm), or the creation is the same one (same name and
    /// total) made within [`CREATE_RETRY_WINDOW_MS`]: a producer whose answer was lost
    /// retries through the load balancer, which may pick another node.
    fn retried_create(&self, id: &TaskId, new: &NewTask) -> Result<Event, HubError> {
        let mut unconfirmed = self
            .shared
            .unconfirmed_creates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(cell) = self.read_map().get(id).cloned() else {
            return Err(HubError::AlreadyExists);
        };
        let st = cell.lock();
        if st.published.seq() != 1 {
            return Err(HubError::AlreadyExists);
        }
        let same = new.job.is_none()
            && st.working.job.is_none()
            && st.working.name == new.name
            && st.working.total == new.total
            && time::now_ms().saturating_sub(st.working.created_at_ms) <= CREATE_RETRY_WINDOW_MS;
        if unconfirmed.remove(id) || same {
            Ok(st.published.clone())
        } else {
            Err(HubError::AlreadyExists)
        }
    }

    fn remember_unconfirmed_create(&self, id: &TaskId) {
        let mut unconfirmed = self
            .shared
            .unconfirmed_creates
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded: a producer retries within seconds, not after thousands of failures.
        if unconfirmed.len() >= MAX_UNCONFIRMED_CREATES {
            unconfirmed.clear();
        }
        unconfirmed.insert(id.clone());
    }

    /// A progress report through the shared log. Returns the task's new state as JSON.
    pub(super) async fn progress_clustered(
        &self,
        id: &TaskId,
        update: ProgressUpdate,
    ) -> Result<Bytes, HubError> {
        let event = self
            .write_clustered(id, |snapshot, rate| {
                snapshot.apply_progress(update.clone(), rate, time::now_ms())?;
                Ok(true)
            })
            .await?;
        Ok(event.map_or_else(Bytes::new, |e| e.json().clone()))
    }

    /// Ends a task through the shared log.
    pub(super) async fn finish_clustered(
        &self,
        id: &TaskId,
        outcome: Outcome,
    ) -> Result<Event, HubError> {
        let event = self
            .write_clustered(id, |snapshot, _| {
                snapshot.finish(outcome.clone(), time::now_ms());
                Ok(true)
            })
            .await?;
        event.ok_or_else(|| unavailable("the task did not change"))
    }

    /// [`Hub::mark_stalled`] for a node sharing its tasks: every node may find the same
    /// silent task, and the log lets one of them mark it (the others then find it
    /// marked, or moved on, and write nothing). Returns how many this node marked.
    pub async fn mark_stalled_clustered(&self, after: Duration) -> usize {
        let cutoff = time::now_ms().saturating_sub(after.as_millis() as u64);
        let silent = |s: &Snapshot| {
            s.status == super::Status::Processing && !s.stalled && s.updated_at_ms <= cutoff
        };
        let candidates: Vec<TaskId> = self
            .cells()
            .iter()
            .filter_map(|cell| {
                let st = cell.lock();
                silent(&st.working).then(|| st.working.task_id.clone())
            })
            .collect();
        let mut marked = 0;
        for id in candidates {
            let written = self
                .write_clustered(&id, |snapshot, _| {
                    let mark = silent(snapshot);
                    snapshot.stalled = true;
                    Ok(mark)
                })
                .await;
            match written {
                Ok(Some(_)) => marked += 1,
                Ok(None) | Err(HubError::Finished(_)) | Err(HubError::NotFound) => {}
                Err(error) => tracing::debug!(task_id = %id, %error, "cannot mark stalled"),
            }
        }
        marked
    }

    /// Marks a task whose built-in job lost its node (its lease in the shared log
    /// expired) as failed, unless it has ended meanwhile. Any node may do it; the log
    /// lets exactly one succeed.
    pub async fn fail_orphaned(&self, id: &TaskId, error: &str) -> Result<(), HubError> {
        let outcome = Outcome::Failed {
            error: error.to_string(),
        };
        match self.finish_clustered(id, outcome).await {
            Ok(_) | Err(HubError::Finished(_)) | Err(HubError::NotFound) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Computes a change from the newest snapshot this node has and appends it to the
    /// log, again from the log's newest snapshot whenever another node wrote first.
    /// `change` returns `false` when there is nothing to write (`Ok(None)`).
    async fn write_clustered(
        &self,
        id: &TaskId,
        mut change: impl FnMut(&mut Snapshot, &mut super::rate::RateEstimator) -> Result<bool, HubError>,
    ) -> Result<Option<Event>, HubError> {
        let log = self.log()?;
        let cell = self.cell(id)?;
        self.admit_write()?;
        let (mut base, mut rate) = {
            let st = cell.lock();
            (st.working.clone(), st.rate.clone())
        };
        for _ in 0..MAX_CONFLICTS {
            if base.status.is_terminal() {
                return Err(HubError::Finished(base.status));
            }
            let mut next = base.clone();
            if !change(&mut next, &mut rate)? {
                return Ok(None);
            }
            next.seq = base.seq + 1;
            let event = Event::encode(&next);
            let append = Append {
                event: &event,
                base_seq: Some(base.seq),
                job_lease: false,
            };
            match log.append(append).await? {
                Appended::Done => {
                    cell.lock().rate = rate;
                    self.await_applied(id, next.seq).await;
                    return Ok(Some(event));
                }
                Appended::Conflict(json) => {
                    base = Snapshot::from_json(&json)
                        .map_err(|e| HubError::Store(StoreError::Corrupt(e)))?;
                }
                Appended::Missing => return Err(unavailable("the shared store is resyncing")),
                Appended::Exists => return Err(unavailable("unexpected answer from the log")),
            }
        }
        Err(unavailable("too many concurrent writes to this task"))
    }

    /// Waits (at most [`APPLY_WAIT`]) until this node's copy of task `id` has `seq`.
    async fn await_applied(&self, id: &TaskId, seq: u64) {
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        loop {
            let notified = self.shared.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let have = self
                .read_map()
                .get(id)
                .map(|cell| cell.lock().published.seq());
            if have.is_some_and(|have| have >= seq) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!(task_id = %id, seq, "write not yet applied on this node");
                return;
            }
        }
    }

    fn log(&self) -> Result<&Arc<dyn SharedLog>, HubError> {
        self.shared
            .log
            .get()
            .ok_or_else(|| unavailable("no shared log"))
    }
}

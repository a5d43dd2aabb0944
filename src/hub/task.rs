//! One task inside the hub: its published event, the state that producers have written
//! since (at most one coalescing window ahead), its history ring and its live channel.
//!
//! Everything here runs under the task's own mutex. Publishing and subscribing both take
//! it, which is what makes "snapshot or history, then live events" gap-free: no event can
//! be sent between a subscriber reading the history and joining the channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use tokio::sync::broadcast;

use super::event::Event;
use super::rate::RateEstimator;
use super::snapshot::Snapshot;

/// A std mutex is right here: the critical sections are short, never await, and a task's
/// lock is contended only by its own producer and its subscribers' joins.
pub(crate) struct TaskCell {
    state: Mutex<TaskState>,
}

pub(crate) struct TaskState {
    /// The newest published change: what every read route shows.
    pub published: Event,
    /// The newest accepted state. Equal to `published` unless `dirty`, in which case it
    /// carries `published.seq + 1` and will be published when the window closes.
    pub working: Snapshot,
    pub dirty: bool,
    pub last_publish: Instant,
    pub flush_scheduled: bool,
    /// The newest published events, oldest first, for `Last-Event-ID` replay.
    pub history: VecDeque<Event>,
    /// `None` once the terminal event is out: dropping the sender ends every receiver.
    pub tx: Option<broadcast::Sender<Event>>,
    pub rate: RateEstimator,
}

/// Where a new subscriber starts.
pub(crate) enum StartPoint {
    /// The client already has the terminal event: nothing more will ever come.
    AlreadyFinished,
    /// Send these first (replayed history or the current snapshot), then live events.
    From {
        backlog: VecDeque<Event>,
        rx: Option<broadcast::Receiver<Event>>,
        last_seq: u64,
    },
}

impl TaskCell {
    /// A task whose newest published change is `published`, the encoding of `snapshot`.
    pub fn new(
        snapshot: Snapshot,
        published: Event,
        mut history: VecDeque<Event>,
        channel_capacity: usize,
    ) -> Self {
        if history.back().map(Event::seq) != Some(published.seq()) {
            history.push_back(published.clone());
        }
        let tx = if snapshot.status.is_terminal() {
            None
        } else {
            Some(broadcast::channel(channel_capacity).0)
        };
        TaskCell {
            state: Mutex::new(TaskState {
                published,
                working: snapshot,
                dirty: false,
                last_publish: Instant::now(),
                flush_scheduled: false,
                history,
                tx,
                rate: RateEstimator::default(),
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, TaskState> {
        // A panic while holding the lock cannot leave the state half-written in a way that
        // matters more than losing the task, so recover the guard rather than poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn published(&self) -> Event {
        self.lock().published.clone()
    }
}

impl TaskState {
    /// Encodes `working` as the next event, records it and sends it to live subscribers.
    /// The caller has already set `working.seq` to `published.seq + 1`.
    pub fn publish(&mut self, history_len: usize) -> Event {
        let event = Event::encode(&self.working);
        self.published = event.clone();
        self.dirty = false;
        self.last_publish = Instant::now();
        if event.is_terminal() {
            // The state is cumulative: once finished, the terminal event alone tells a
            // late client everything, so that is all the history a finished task keeps.
            self.history.clear();
        }
        self.history.push_back(event.clone());
        while self.history.len() > history_len.max(1) {
            self.history.pop_front();
        }
        if let Some(tx) = &self.tx {
            // An error only means nobody is listening right now.
            let _ = tx.send(event.clone());
        }
        if event.is_terminal() {
            self.tx = None;
        }
        event
    }

    /// Decides where a subscriber that last saw `last_event_id` starts, and joins the live
    /// channel in the same critical section.
    pub fn start_point(&self, last_event_id: Option<u64>) -> StartPoint {
        let newest = self.published.seq();
        let last = last_event_id.filter(|&n| n <= newest);
        let backlog = match last {
            Some(n) if n == newest && self.published.is_terminal() => {
                return StartPoint::AlreadyFinished
            }
            Some(n) if n == newest => VecDeque::new(),
            Some(n) if self.history.front().is_some_and(|e| e.seq() <= n + 1) => self
                .history
                .iter()
                .filter(|e| e.seq() > n)
                .cloned()
                .collect(),
            _ => VecDeque::from([self.published.clone()]),
        };
        StartPoint::From {
            backlog,
            rx: self.tx.as_ref().map(broadcast::Sender::subscribe),
            last_seq: last.unwrap_or(0),
        }
    }
}

/// Shared handle to a task, as the hub's map holds it.
pub(crate) type TaskRef = Arc<TaskCell>;

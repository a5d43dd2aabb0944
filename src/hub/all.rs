//! The stream of every task's changes (`GET /api/events`), for dashboards.
//!
//! Each published event gets the next value of a server-wide counter, its id on this
//! stream. A bounded ring of recent events serves `Last-Event-ID` replay; beyond it a
//! client gets the newest event of each task instead, which is enough because every
//! event is a full snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use super::event::Event;
use super::{Stats, TaskId};

/// One event on the all-tasks stream.
#[derive(Clone)]
pub struct AllEvent(Arc<AllEventInner>);

struct AllEventInner {
    id: u64,
    event: Event,
    /// The event under its id on this stream, built on first use: a server without
    /// dashboards never pays for it.
    on_stream: OnceLock<Event>,
}

impl AllEvent {
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The task's event, as its own stream numbers it.
    pub fn event(&self) -> &Event {
        &self.0.event
    }

    /// The event as this stream writes it: the same change with this stream's id as its
    /// SSE `id` and [`Event::seq`] ([`Event::renumbered`]), so that it is framed and
    /// written like any task's event.
    pub fn on_stream(&self) -> &Event {
        self.0
            .on_stream
            .get_or_init(|| self.0.event.renumbered(self.0.id))
    }
}

pub(crate) struct AllTasks {
    state: Mutex<AllState>,
    history_len: usize,
}

struct AllState {
    last_id: u64,
    history: VecDeque<AllEvent>,
    /// The newest event of every task the hub holds, for resyncs.
    latest: HashMap<TaskId, AllEvent>,
    tx: broadcast::Sender<AllEvent>,
}

impl AllTasks {
    pub fn new(history_len: usize, channel_capacity: usize) -> Self {
        AllTasks {
            state: Mutex::new(AllState {
                last_id: first_id(),
                history: VecDeque::new(),
                latest: HashMap::new(),
                tx: broadcast::channel(channel_capacity).0,
            }),
            history_len: history_len.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AllState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the task's lock held, so one task's events keep their order here.
    pub fn publish(&self, event: &Event) {
        let mut st = self.lock();
        st.last_id += 1;
        let all = AllEvent(Arc::new(AllEventInner {
            id: st.last_id,
            event: event.clone(),
            on_stream: OnceLock::new(),
        }));
        st.history.push_back(all.clone());
        while st.history.len() > self.history_len {
            st.history.pop_front();
        }
        st.latest.insert(event.task_id().clone(), all.clone());
        let _ = st.tx.send(all);
    }

    pub fn forget(&self, task_id: &TaskId) {
        self.lock().latest.remove(task_id);
    }

    pub fn subscribe(
        self: &Arc<Self>,
        last_event_id: Option<u64>,
        stats: Arc<Stats>,
    ) -> AllSubscription {
        let st = self.lock();
        let (backlog, last) = match last_event_id {
            Some(n)
                if n <= st.last_id
                    && (st.history.front().is_some_and(|e| e.id() <= n + 1) || n == st.last_id) =>
            {
                stats.replays.fetch_add(1, Ordering::Relaxed);
                let replay = st.history.iter().filter(|e| e.id() > n).cloned().collect();
                (replay, n)
            }
            Some(n) if n <= st.last_id => (resync(&st, n, true), n),
            // An id this server never gave: another node's (each counts its own), or one
            // from a clock that ran ahead. Nothing here can be placed after it, so the
            // client gets the newest event of every task, finished ones too: one it was
            // following may have ended meanwhile.
            Some(_) => (resync(&st, 0, true), 0),
            None => (resync(&st, 0, false), 0),
        };
        AllSubscription {
            all: Arc::clone(self),
            backlog,
            rx: st.tx.subscribe(),
            last_id: last,
            stats,
        }
    }
}

/// Ids on this stream must keep rising across restarts, or a dashboard resuming with an id
/// from before the restart would be replayed the wrong events. Starting each process at
/// its start time in milliseconds times 1000 does that without storing a counter, as long
/// as the server publishes fewer than a thousand events per millisecond on average over
/// its uptime; and it stays below 2^53 (exact in JavaScript) until the 23rd century.
fn first_id() -> u64 {
    super::time::now_ms().saturating_mul(1000)
}

/// The newest event of each task changed after `after`, in id order. Finished tasks are
/// included only for a client that was following before (it has not seen their end).
fn resync(st: &AllState, after: u64, include_finished: bool) -> VecDeque<AllEvent> {
    let mut events: Vec<AllEvent> = st
        .latest
        .values()
        .filter(|e| e.id() > after && (include_finished || !e.event().is_terminal()))
        .cloned()
        .collect();
    events.sort_unstable_by_key(AllEvent::id);
    events.into()
}

pub struct AllSubscription {
    all: Arc<AllTasks>,
    backlog: VecDeque<AllEvent>,
    rx: broadcast::Receiver<AllEvent>,
    last_id: u64,
    stats: Arc<Stats>,
}

impl AllSubscription {
    /// The next unseen event of any task. Cancel-safe. Never ends by itself: the
    /// all-tasks stream lives as long as the server.
    pub async fn next(&mut self) -> AllEvent {
        loop {
            if let Some(event) = self.try_next() {
                return event;
            }
            match self.rx.recv().await {
                Ok(event) => {
                    if let Some(event) = self.fresh(event) {
                        return event;
                    }
                }
                Err(RecvError::Lagged(_)) => self.resync(),
                // The sender lives as long as the hub; this only happens while dropping it.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// The next unseen event already at hand, without waiting.
    pub fn try_next(&mut self) -> Option<AllEvent> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                if let Some(event) = self.fresh(event) {
                    return Some(event);
                }
                continue;
            }
            match self.rx.try_recv() {
                Ok(event) => {
                    if let Some(event) = self.fresh(event) {
                        return Some(event);
                    }
                }
                Err(TryRecvError::Lagged(_)) => self.resync(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }

    /// `event` if this subscriber has not had it yet.
    fn fresh(&mut self, event: AllEvent) -> Option<AllEvent> {
        if event.id() <= self.last_id {
            return None;
        }
        self.last_id = event.id();
        Some(event)
    }

    /// Fell behind the channel: the newest event of each task changed since.
    fn resync(&mut self) {
        self.stats.lag_resyncs.fetch_add(1, Ordering::Relaxed);
        self.backlog = resync(&self.all.lock(), self.last_id, true);
    }
}

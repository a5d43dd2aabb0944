//! One task inside the hub: its published event, the state that producers have written
//! since (at most one coalescing window ahead), its history ring and its live channel.
//!
//! Everything here runs under the task's own mutex. Publishing and subscribing both take
//! it, which is what makes "snapshot or history, then live events" gap-free: a subscriber
//! joins the channel in the same critical section in which it reads the history, so every
//! event after that history reaches it through the channel.
//!
//! Sending into the channel is not done under the lock, nor by the publisher: waking 10,000
//! waiting subscribers takes milliseconds, and a producer's acknowledgement must not wait
//! for it. A published event goes into the task's outbox, and a relay (one at a time per
//! task, on the runtime the hub was built on, see [`super::Hub`]) sends the outbox in
//! order. An event
//! can therefore be both in the history a new subscriber reads and still on its way
//! through the channel; subscriptions drop anything at or below the `seq` they have
//! already handed out, so that overlap never shows as a duplicate.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use tokio::sync::broadcast;

use super::event::Event;
use super::rate::RateEstimator;
use super::sink::{Sink, Sinks};
use super::snapshot::Snapshot;
use super::{Stats, CATCH_UP_MAX};

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
    /// `None` once the terminal event has been relayed: dropping the sender ends every
    /// receiver.
    pub tx: Option<broadcast::Sender<Event>>,
    /// Published events not yet sent into `tx`, oldest first (see the module docs).
    pub outbox: VecDeque<Event>,
    /// The outbox overflowed since the relay took its last batch: until it takes the
    /// next one, the outbox holds only the newest few events (see [`TaskState::publish`]).
    pub outbox_overflowed: bool,
    /// A relay is draining `outbox`; a publish that finds none running starts one.
    pub relaying: bool,
    /// Subscribers the relay writes to itself (see [`super::sink`]); like `tx`, emptied
    /// once the terminal event has been relayed.
    pub sinks: Sinks,
    /// How busy the task's relay is (see [`RelayPace`]).
    pub relay_pace: RelayPace,
    pub rate: RateEstimator,
    /// The store failed to confirm this task's creation or ending, whose producer was told
    /// so (`503`). Its change stays shown and the store keeps trying; the same request
    /// retried answers as soon as the store has it (see [`super::Hub::confirm`]).
    pub unconfirmed: bool,
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
                outbox: VecDeque::new(),
                outbox_overflowed: false,
                relaying: false,
                sinks: Sinks::default(),
                relay_pace: RelayPace::default(),
                rate: RateEstimator::default(),
                unconfirmed: false,
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
    /// Encodes `working` as the next event, records it and queues it for live
    /// subscribers. Returns the event and whether a relay must be started for the queue.
    /// The caller has already set `working.seq` to `published.seq + 1`.
    pub fn publish(
        &mut self,
        history_len: usize,
        outbox_len: usize,
        stats: &Stats,
    ) -> (Event, bool) {
        let event = Event::encode(&self.working);
        let start_relay = self.publish_encoded(event.clone(), history_len, outbox_len, stats);
        (event, start_relay)
    }

    /// Publishes `event`, already encoded from `working` (a node sharing tasks through
    /// Redis applies events that some node encoded). Returns whether a relay must be
    /// started.
    pub fn publish_encoded(
        &mut self,
        event: Event,
        history_len: usize,
        outbox_len: usize,
        stats: &Stats,
    ) -> bool {
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
        match &self.tx {
            // Nobody listens: the terminal event can end the channel at once.
            Some(tx)
                if tx.receiver_count() == 0 && self.sinks.len() == 0 && self.outbox.is_empty() =>
            {
                if event.is_terminal() {
                    self.tx = None;
                }
                false
            }
            Some(_) => {
                if self.outbox.len() >= outbox_len.max(1) {
                    self.outbox_overflowed = true;
                }
                // The relay is behind the producer once its outbox overflows: a producer
                // publishes faster than one round of writes to every subscriber takes (or
                // the runtime is starved). Its subscribers miss events then whatever it
                // sends, and the newest snapshot alone tells them everything, so until
                // the relay takes its next batch only the newest events wait, as many as
                // a round hands each subscriber in one write: a lagging relay skips to
                // the newest snapshots, as a lagging subscriber does. Keeping a whole
                // outbox of skipped-over events only made every round longer
                // (docs/design/relay-and-fan-out.md). The terminal event is always the
                // newest, so it is never the one dropped.
                let keep = if self.outbox_overflowed {
                    CATCH_UP_MAX.min(outbox_len.max(1))
                } else {
                    usize::MAX
                };
                while self.outbox.len() >= keep {
                    self.outbox.pop_front();
                    stats.relay_skipped.fetch_add(1, Ordering::Relaxed);
                }
                self.outbox.push_back(event);
                !std::mem::replace(&mut self.relaying, true)
            }
            None => false,
        }
    }

    /// Takes what the relay is to send next, with the channel and the sinks to send it to.
    /// `None` when the outbox is empty: the relay is then over (a later publish starts a
    /// new one). `work`: what the relay's previous round cost, if it had one.
    pub fn relay_batch(&mut self, work: Option<std::time::Duration>) -> Option<RelayBatch> {
        if let Some(work) = work {
            self.relay_pace.work = work;
        }
        let tx = match (&self.tx, self.outbox.is_empty()) {
            (Some(tx), false) => tx.clone(),
            _ => {
                self.relaying = false;
                self.relay_pace.ended();
                return None;
            }
        };
        let spare = self.relay_pace.spare();
        let events: Vec<Event> = std::mem::take(&mut self.outbox).into();
        self.outbox_overflowed = false;
        let sinks = if events.last().is_some_and(Event::is_terminal) {
            // The relay's clone is then the last sender: once the batch is sent and the
            // clone dropped, every receiver sees the channel end after the terminal event.
            self.tx = None;
            self.sinks.take_all()
        } else {
            self.sinks.list()
        };
        Some(RelayBatch {
            events: events.into(),
            tx,
            sinks,
            spare,
        })
    }

    /// What the sinks still to come in a relay round get besides the round's `have`
    /// events, the newest of which is `seq`: see [`CatchUp`]. `None`: nothing newer is
    /// waiting, or newer events directly follow but would not fit in one write with the
    /// round's (the next round brings them).
    pub fn catch_up(&self, seq: u64, have: usize) -> Option<CatchUp> {
        let start = self.outbox.partition_point(|e| e.seq() <= seq);
        let newer = self.outbox.range(start..);
        let first = newer.clone().next()?.seq();
        if self.outbox_overflowed {
            // The relay is behind its producer (see `publish`): what the outbox holds is
            // the newest few events, which supersede the round's.
            let older = newer.len().saturating_sub(CATCH_UP_MAX);
            return Some(CatchUp::Skip(newer.skip(older).cloned().collect()));
        }
        (first == seq + 1 && have + newer.len() <= CATCH_UP_MAX)
            .then(|| CatchUp::Follow(newer.cloned().collect()))
    }

    /// What a subscriber that last saw `last_event_id` gets before live events: replayed
    /// history or the current snapshot, and the newest `seq` it has then seen. `None`: it
    /// already has the terminal event.
    fn resume_from(&self, last_event_id: Option<u64>) -> Option<(VecDeque<Event>, u64)> {
        let newest = self.published.seq();
        let last = last_event_id.filter(|&n| n <= newest);
        let backlog = match last {
            Some(n) if n == newest && self.published.is_terminal() => return None,
            Some(n) if n == newest => VecDeque::new(),
            Some(n) if self.history.front().is_some_and(|e| e.seq() <= n + 1) => self
                .history
                .iter()
                .filter(|e| e.seq() > n)
                .cloned()
                .collect(),
            _ => VecDeque::from([self.published.clone()]),
        };
        Some((backlog, last.unwrap_or(0)))
    }

    /// Decides where a subscriber that last saw `last_event_id` starts, and joins the live
    /// channel in the same critical section.
    pub fn start_point(&self, last_event_id: Option<u64>) -> StartPoint {
        match self.resume_from(last_event_id) {
            None => StartPoint::AlreadyFinished,
            Some((backlog, last_seq)) => StartPoint::From {
                backlog,
                rx: self.tx.as_ref().map(broadcast::Sender::subscribe),
                last_seq,
            },
        }
    }

    /// Starts `sink` where a subscriber that last saw `last_event_id` starts and, while
    /// the task runs, adds it to the sinks the relay writes to, in the same critical
    /// section. `None`: the client already has the terminal event. Otherwise the sink's
    /// slot (`None` if the task has ended: the backlog is all it gets) and the `seq` it
    /// resumes after.
    pub fn attach(
        &mut self,
        last_event_id: Option<u64>,
        sink: &Arc<dyn Sink>,
    ) -> Option<(Option<usize>, u64)> {
        let (backlog, last_seq) = self.resume_from(last_event_id)?;
        let live = self.tx.is_some();
        sink.begin(backlog, live);
        Some((live.then(|| self.sinks.insert(sink.clone())), last_seq))
    }
}

/// Newer events for the sinks still to come in a relay round (see
/// [`TaskState::catch_up`]).
#[derive(Debug)]
pub(crate) enum CatchUp {
    /// They directly follow the round's events and go out in the same write.
    Follow(Vec<Event>),
    /// The outbox overflowed during the round: the relay is behind its producer, and
    /// these, the newest events, replace the round's for the sinks still to come. Those
    /// skip to the newest snapshots, as every sink does once the round ends.
    Skip(Vec<Event>),
}

/// One turn of a relay: events to send, in order, to the channel and to every sink.
pub(crate) struct RelayBatch {
    pub events: Arc<[Event]>,
    pub tx: broadcast::Sender<Event>,
    pub sinks: Arc<[Arc<dyn Sink>]>,
    /// The relay was idle most of the time before this round: it may spread the round's
    /// writes over more threads than a busy relay would.
    pub spare: bool,
}

/// How busy a task's relay has been. A round of writes to a thousand sinks takes
/// milliseconds; spread over the fan-out threads it ends sooner, and its subscribers get
/// the event sooner, if those threads have cores to run on. A relay that has been idle
/// for at least [`RelayPace::SPARE`] times what its last round cost (a producer at 10
/// events a second) spreads from fewer sinks on; a busy one (100 a second, where the
/// round fills half the interval) keeps its writes on fewer threads, and the cores for
/// everything else (docs/design/relay-and-fan-out.md).
#[derive(Default)]
pub(crate) struct RelayPace {
    /// When the last relay ended; `None` while one runs (or none has).
    idle_since: Option<std::time::Instant>,
    /// The last round's time, summed over the threads that wrote it.
    work: std::time::Duration,
}

impl RelayPace {
    const SPARE: u32 = 3;

    /// The relay is over: the outbox is empty.
    fn ended(&mut self) {
        self.idle_since = Some(std::time::Instant::now());
    }

    /// A round starts: whether the relay was idle long enough since the last one.
    fn spare(&mut self) -> bool {
        self.idle_since
            .take()
            .is_some_and(|since| since.elapsed() >= self.work * Self::SPARE)
    }
}

/// Shared handle to a task, as the hub's map holds it.
pub(crate) type TaskRef = Arc<TaskCell>;

#[cfg(test)]
mod tests {
    use super::RelayPace;
    use std::time::Duration;

    #[test]
    fn a_relay_is_spare_only_after_idling_three_times_its_last_round() {
        let mut pace = RelayPace::default();
        assert!(!pace.spare(), "a task's first round");
        pace.work = Duration::from_millis(1);
        pace.ended();
        std::thread::sleep(Duration::from_millis(5));
        assert!(pace.spare(), "idle 5 ms after a round of 1 ms");
        assert!(!pace.spare(), "rounds back to back: never idle in between");
        pace.work = Duration::from_secs(1);
        pace.ended();
        std::thread::sleep(Duration::from_millis(5));
        assert!(!pace.spare(), "idle 5 ms after a round of 1 s");
    }
}

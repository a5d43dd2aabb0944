//! A task's stream (SSE or WebSocket), written by the relay itself once it has a socket of
//! its own.
//!
//! The stream joins its task as a [`Sink`] when it is opened: the backlog and live
//! events are queued for it. Once the server takes the socket over from hyper, and while
//! the socket keeps up, the relay writes each batch of events to it directly, in one
//! non-blocking `writev`, and the stream's own task stays asleep: it only keeps the
//! heartbeat and the stream's life, answers what the client sends, and notices the server
//! stopping or the client leaving. Per delivered event that saves the wake-up, the
//! scheduling and the polling of a task, a large share of the server's CPU per event with
//! many subscribers (docs/design/relay-direct-writers.md).
//!
//! When the socket cannot take an event at once, the event is queued and the task woken
//! to write it as the socket drains. While anything is queued (or the task is writing),
//! the relay only adds to the queue, so the order holds. A queue longer than the
//! subscriber buffer is replaced by the newest event alone: the state is cumulative, so
//! the client skips ahead as a lagging channel receiver does, and the terminal event, the
//! newest of all, is never the one dropped.
//!
//! What differs between SSE and WebSocket is only the framing ([`Wire`]) and what the
//! client may say ([`Peer`]). The all-tasks SSE stream (`GET /api/events`) joins no task,
//! so no relay writes it: its own task pulls its events from a [`Feed`] and hands them to
//! the same writer, which frames and writes them as it does a task's.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::handoff::{self, MAX_BATCH};
use crate::api::limits::SubscriberGuard;
use crate::api::AppState;
use crate::hub::{Attached, Event, Sink, Stats};
use crate::shutdown::ShutdownWait;
use crate::telemetry::{DeliverySampler, Transport};

/// Room for one frame's head: a chunk's size line, a WebSocket frame header.
pub type Head = [u8; 20];

/// What a frame carries, for wires that tell them apart (WebSocket opcodes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Data,
    Ping,
    Pong,
}

/// Why a stream ends before its task does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Shutdown,
    /// The stream's maximum life (`--max-stream-secs`): the client reconnects.
    EndOfLife,
}

/// Each wire's place among an event's ready-to-write forms ([`Event::wire_form`]).
pub mod form {
    pub const SSE: usize = 0;
    pub const WEBSOCKET: usize = 1;
    const _: () = assert!(SSE < crate::hub::WIRE_FORMS && WEBSOCKET < crate::hub::WIRE_FORMS);
}

/// How a stream frames what it sends.
pub trait Wire: Send + Sync + 'static {
    /// Which of an event's ready-to-write forms ([`Event::wire_form`]) is this wire's.
    const FORM: usize;
    /// What follows each frame's payload.
    const TAIL: &'static [u8];
    /// What ends the stream after its terminal event.
    const END: &'static [u8];
    /// The frame sent after a heartbeat of silence.
    const KEEP_ALIVE: (Kind, &'static [u8]);

    /// The bytes that carry `event`, encoded once when it was published (unframed:
    /// through hyper, hyper frames them).
    fn payload(event: &Event) -> &Bytes;

    /// Writes the head of a frame of `kind` carrying `len` bytes; returns its length.
    fn head(kind: Kind, len: usize, head: &mut Head) -> usize;

    /// What ends the stream early, for `why`.
    fn stop(why: Stop) -> Bytes;

    /// `event` framed for this wire, ready to write: built once per event, on first use,
    /// and then written as it is to every subscriber.
    fn framed(event: &Event) -> &Bytes {
        event.wire_form(Self::FORM, |event| {
            let payload = Self::payload(event);
            let mut head: Head = [0; 20];
            let len = Self::head(Kind::Data, payload.len(), &mut head);
            let mut frame = Vec::with_capacity(len + payload.len() + Self::TAIL.len());
            frame.extend_from_slice(&head[..len]);
            frame.extend_from_slice(payload);
            frame.extend_from_slice(Self::TAIL);
            Bytes::from(frame)
        })
    }
}

/// The queued frames, framed, then `end`, as the slices of one `writev`. At most
/// [`MAX_BATCH`] frames are taken.
fn frame_slices<'a, W: Wire>(
    frames: &'a [Queued],
    heads: &'a mut [Head; MAX_BATCH],
    end: &'a [u8],
) -> Vec<IoSlice<'a>> {
    let mut parts = Vec::with_capacity(MAX_BATCH * 3 + 1);
    for (queued, head) in frames.iter().zip(heads.iter_mut()) {
        match queued {
            Queued::Event(event) => parts.push(IoSlice::new(W::framed(event))),
            Queued::Other(kind, payload) => {
                let len = W::head(*kind, payload.len(), head);
                let head: &'a Head = head;
                parts.push(IoSlice::new(&head[..len]));
                parts.push(IoSlice::new(payload));
                if !W::TAIL.is_empty() {
                    parts.push(IoSlice::new(W::TAIL));
                }
            }
        }
    }
    if !end.is_empty() {
        parts.push(IoSlice::new(end));
    }
    parts
}

/// What every stream has besides its events: its heartbeat, its end, its place.
pub struct Life {
    /// Built once and cheap to poll again (see [`crate::shutdown`]): polling a fresh
    /// cancellation future per event of every stream showed up in the fan-out profile.
    pub shutdown: ShutdownWait,
    pub heartbeat: Duration,
    pub last_write: Instant,
    /// One timer per stream, re-armed only when it fires: events do not touch it.
    pub timer: Pin<Box<Sleep>>,
    /// The stream's maximum life (`--max-stream-secs`).
    pub end_of_life: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Held for its `Drop`: frees the subscriber's place.
    pub _place: SubscriberGuard,
}

impl Life {
    pub fn new(state: &AppState, place: SubscriberGuard) -> Life {
        let heartbeat = state.config.heartbeat();
        Life {
            shutdown: state.shutdown.wait(),
            heartbeat,
            last_write: Instant::now(),
            timer: Box::pin(tokio::time::sleep(heartbeat)),
            end_of_life: Box::pin(crate::api::sse::until(crate::api::sse::end_of_life(
                &state.config,
            ))),
            _place: place,
        }
    }
}

/// What a stream does with what its client sends.
pub trait Peer<W: Wire>: Send + 'static {
    /// The socket is readable: reads what is there.
    fn heard(&mut self, direct: &Direct<W>) -> Heard;

    /// The stream's own end is out; what follows is the client's answer to it.
    fn closing(&mut self) {}
}

pub enum Heard {
    Nothing,
    /// The client closed the connection, or it failed.
    Gone,
    /// End the stream with `frame`; `linger`: wait for the client's answer to it.
    Close {
        frame: Bytes,
        linger: bool,
    },
}

/// How a stream's loop ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The stream wrote its end (after the terminal event, or stopping early).
    Finished,
    /// The client left, or closed the stream itself.
    Gone,
}

/// Where a stream's events come from when no task's relay delivers them: the all-tasks
/// stream's own channel. The stream's task pulls them and writes them like the relay
/// does ([`Sink::deliver`]).
pub trait Feed: Send + 'static {
    /// Waits for the next events and returns them with the others already at hand (at
    /// most [`MAX_BATCH`]), oldest first. Cancel-safe.
    fn next(&mut self) -> impl Future<Output = Vec<Event>> + Send;
}

/// A task's stream: its task's relay delivers the events ([`Sink`]); nothing to pull.
pub struct Relayed;

impl Feed for Relayed {
    fn next(&mut self) -> impl Future<Output = Vec<Event>> + Send {
        std::future::pending()
    }
}

/// A stream once the server has taken its socket over from hyper. It owns all it needs
/// in one future, which every idle subscriber keeps: nothing is held twice.
pub struct Stream<W: Wire, P, F = Relayed> {
    pub direct: Arc<Direct<W>>,
    /// Held for its `Drop`: the stream's place among its task's sinks (`None` if the
    /// task had ended, or for the all-tasks stream), left when the stream ends.
    pub _attached: Option<Attached>,
    pub life: Life,
    /// Written before anything else.
    pub prelude: Option<Bytes>,
    pub peer: P,
    /// How long to wait for the client's answer once the stream's end is out (a
    /// WebSocket's closing handshake); `None`: not at all.
    pub linger: Option<Duration>,
    pub feed: F,
}

impl<W: Wire, P: Peer<W>, F: Feed> Stream<W, P, F> {
    /// Runs the stream on `socket` until it ends: terminal event, the stream's maximum
    /// life, server shutdown, or the client leaving or closing.
    pub async fn run(mut self, socket: TcpStream) {
        let direct = &*self.direct;
        if direct.socket.set(socket).is_err() {
            return;
        }
        let life = &mut self.life;
        direct.lock().last_write = life.last_write;
        // The prelude goes out whatever happens next, as through hyper; the relay only
        // queues until the backlog has been written below.
        if let Some(prelude) = self.prelude.take() {
            let frame = [Queued::Other(Kind::Data, prelude)];
            if direct.write_frames(&frame, b"").await.is_err() {
                return direct.fail();
            }
        }
        direct.wake.notify_one();
        let ended = loop {
            let why = tokio::select! {
                biased;
                _ = &mut life.shutdown => Stop::Shutdown,
                // Ends between frames: the client resumes after the last id it got.
                _ = life.end_of_life.as_mut() => Stop::EndOfLife,
                () = direct.wake.notified() => match direct.flush().await {
                    Flushed::Idle => continue,
                    Flushed::Ended => break Ended::Finished,
                    Flushed::Failed => break Ended::Gone,
                },
                // After the wake-up: a feed is pulled only once what it gave before is
                // written (`flush` above returns when the queue is empty), so a slow
                // client makes the feed wait, and fall behind its own channel, rather
                // than the queue grow.
                events = self.feed.next() => {
                    direct.deliver(&events);
                    continue;
                }
                _ = life.timer.as_mut() => {
                    let now = Instant::now();
                    let due = direct.lock().last_write + life.heartbeat;
                    if now < due {
                        life.timer.as_mut().reset(due);
                        continue;
                    }
                    life.timer.as_mut().reset(now + life.heartbeat);
                    if !direct.keep_alive() {
                        continue;
                    }
                    match direct.flush().await {
                        Flushed::Idle => continue,
                        Flushed::Ended => break Ended::Finished,
                        Flushed::Failed => break Ended::Gone,
                    }
                }
                readable = std::future::poll_fn(|cx| direct.socket().poll_read_ready(cx)) => {
                    let heard = match readable {
                        Ok(()) => self.peer.heard(direct),
                        Err(_) => Heard::Gone,
                    };
                    match heard {
                        Heard::Nothing => continue,
                        Heard::Gone => {
                            direct.fail();
                            break Ended::Gone;
                        }
                        Heard::Close { frame, linger } => {
                            direct.stop(&frame).await;
                            break if linger { Ended::Finished } else { Ended::Gone };
                        }
                    }
                }
            };
            direct.stop(&W::stop(why)).await;
            break Ended::Finished;
        };
        let Some(wait) = self.linger.filter(|_| ended == Ended::Finished) else {
            return;
        };
        self.peer.closing();
        let peer = &mut self.peer;
        let _ = tokio::time::timeout(wait, async {
            while std::future::poll_fn(|cx| direct.socket().poll_read_ready(cx))
                .await
                .is_ok()
            {
                if !matches!(peer.heard(direct), Heard::Nothing) {
                    return;
                }
            }
        })
        .await;
    }
}

/// One stream's socket and what waits to be written to it.
pub struct Direct<W> {
    /// Set when the server takes the stream over from hyper; until then everything is
    /// queued.
    socket: OnceLock<TcpStream>,
    stats: Arc<Stats>,
    /// Frames that may wait before the stream skips to the newest event.
    buffer: usize,
    /// How long a full socket may take nothing before the stream gives up on its client.
    send_timeout: Duration,
    /// Wakes the stream's task: something is queued, or the relay stopped writing.
    wake: Notify,
    /// The stream follows one task: its terminal event ends the stream, and a queue that
    /// overflows skips to the newest event (the task's state is cumulative). Neither
    /// holds for the all-tasks stream, whose [`Feed`] waits for the queue to empty and
    /// skips ahead on its own channel (`crate::hub::AllSubscription`).
    one_task: bool,
    state: Mutex<State>,
    wire: PhantomData<fn() -> W>,
}

struct State {
    /// The newest `seq` this stream has taken (written or queued).
    last_seq: u64,
    /// Frames for the stream's task to write, oldest first.
    queue: VecDeque<Queued>,
    /// The rest of a `writev` the socket took only part of: it goes before anything else.
    partial: Option<Bytes>,
    /// Nothing queued or partly written and the task not writing: the relay may write.
    idle: bool,
    /// The terminal event is queued (or the task had ended): the stream ends after the
    /// queue.
    ending: bool,
    /// The end has been written (or is part of `partial`).
    body_ended: bool,
    /// The relay must not write any more: the stream ended or stopped, or the socket
    /// failed.
    closed: bool,
    /// The socket failed or the client left.
    failed: bool,
    last_write: Instant,
    /// Counts what the writes on the socket deliver (through hyper, the frame stream
    /// counts).
    delivery: DeliverySampler,
}

/// A drained queue with room for more frames than this is freed.
const SHRINK_QUEUE_ABOVE: usize = 2 * MAX_BATCH;

/// A frame waiting to be written (40 bytes: every idle stream keeps room for a few).
enum Queued {
    Event(Event),
    /// Anything else: prelude, keep-alive, pong.
    Other(Kind, Bytes),
}

impl Queued {
    fn published_at(&self) -> Option<std::time::Instant> {
        match self {
            Queued::Event(event) => Some(event.published_at()),
            Queued::Other(..) => None,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Flushed {
    /// Everything is written; the relay may write again.
    Idle,
    /// The stream's end is written.
    Ended,
    /// The socket failed or the client left.
    Failed,
}

impl<W: Wire> Direct<W> {
    /// The writer of one task's stream.
    pub fn new(state: &AppState, transport: Transport) -> Direct<W> {
        Direct::with(state, transport, true)
    }

    /// The writer of the all-tasks stream (`GET /api/events`), fed by its [`Feed`].
    pub fn all_tasks(state: &AppState) -> Direct<W> {
        Direct::with(state, Transport::AllEvents, false)
    }

    fn with(state: &AppState, transport: Transport, one_task: bool) -> Direct<W> {
        Direct {
            socket: OnceLock::new(),
            stats: state.hub.stats_handle(),
            buffer: (state.config.subscriber_buffer as usize).max(1),
            send_timeout: state.config.send_timeout(),
            wake: Notify::new(),
            one_task,
            state: Mutex::new(State {
                last_seq: 0,
                queue: VecDeque::new(),
                partial: None,
                idle: false,
                ending: false,
                body_ended: false,
                closed: false,
                failed: false,
                last_write: Instant::now(),
                delivery: DeliverySampler::new(state.metrics.clone(), transport),
            }),
            wire: PhantomData,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket; only called once it is set.
    pub fn socket(&self) -> &TcpStream {
        self.socket.get().expect("set before the stream is written")
    }

    /// Through hyper: the next queued payload and when its event was published, until
    /// the stream ends.
    pub async fn next_queued(&self) -> Option<(Bytes, Option<std::time::Instant>)> {
        loop {
            {
                let mut st = self.lock();
                match st.queue.pop_front() {
                    Some(Queued::Event(event)) => {
                        return Some((W::payload(&event).clone(), Some(event.published_at())))
                    }
                    Some(Queued::Other(_, payload)) => return Some((payload, None)),
                    None => {}
                }
                if st.ending || st.closed {
                    return None;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Queues a frame of the stream's own (a WebSocket pong) after what is queued. At
    /// most one of each kind waits: a newer one replaces its payload (a pong need only
    /// answer the newest ping, RFC 6455 §5.5.3), so a client's burst of pings cannot grow
    /// the queue.
    pub fn control(&self, kind: Kind, payload: Bytes) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let waiting = st.queue.iter_mut().find_map(|queued| match queued {
            Queued::Other(k, waiting) if *k == kind => Some(waiting),
            _ => None,
        });
        match waiting {
            Some(waiting) => *waiting = payload,
            None => st.queue.push_back(Queued::Other(kind, payload)),
        }
        st.idle = false;
        self.wake.notify_one();
    }

    /// Marks the socket failed: nothing more is written to it.
    fn fail(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.failed = true;
        st.idle = false;
    }

    /// Whether `event` ends the stream: the terminal event of a task's stream.
    fn ends(&self, event: &Event) -> bool {
        self.one_task && event.is_terminal()
    }

    /// Queues `events` for the stream's task (with `st` locked).
    fn enqueue(&self, st: &mut State, events: &[Event]) {
        st.idle = false;
        if self.one_task && st.queue.len() + events.len() > self.buffer {
            st.queue.clear();
            self.stats.lag_resyncs.fetch_add(1, Ordering::Relaxed);
            st.queue.extend(events.last().cloned().map(Queued::Event));
        } else {
            st.queue.extend(events.iter().cloned().map(Queued::Event));
        }
        st.ending |= events.last().is_some_and(|event| self.ends(event));
        self.wake.notify_one();
    }

    /// Writes `frames`, then `end`, waiting for the socket as needed.
    async fn write_frames(&self, frames: &[Queued], end: &[u8]) -> io::Result<()> {
        // Heap, not stack: whatever lives across an `await` here is part of every idle
        // stream's task (docs/design/handoff.md#keeping-it-small).
        let mut heads: Box<[Head; MAX_BATCH]> = Box::new([[0; 20]; MAX_BATCH]);
        let mut parts = frame_slices::<W>(frames, &mut heads, end);
        handoff::write_all(self.socket(), &mut parts, self.send_timeout).await
    }

    /// Writes what is queued (and the end, once due) until nothing is left, then lets
    /// the relay write again.
    async fn flush(&self) -> Flushed {
        loop {
            let (partial, batch, end) = {
                let mut st = self.lock();
                let end_due = st.ending && !st.closed;
                if st.partial.is_none() && (st.closed || (st.queue.is_empty() && !end_due)) {
                    if st.failed {
                        return Flushed::Failed;
                    }
                    if st.closed {
                        return Flushed::Ended;
                    }
                    st.idle = true;
                    // A queue that grew for a burst (a lagging client) gives its memory
                    // back once drained.
                    if st.queue.capacity() > SHRINK_QUEUE_ABOVE {
                        st.queue = VecDeque::new();
                    }
                    return Flushed::Idle;
                }
                let partial = st.partial.take();
                let n = st.queue.len().min(MAX_BATCH);
                let batch: Vec<Queued> = st.queue.drain(..n).collect();
                let end = end_due && st.queue.is_empty();
                if end {
                    st.body_ended = true;
                    st.closed = true;
                }
                (partial, batch, end)
            };
            if let Some(partial) = partial {
                let mut parts = [IoSlice::new(&partial)];
                if handoff::write_all(self.socket(), &mut parts, self.send_timeout)
                    .await
                    .is_err()
                {
                    self.fail();
                    return Flushed::Failed;
                }
            }
            let end: &[u8] = if end { W::END } else { b"" };
            if self.write_frames(&batch, end).await.is_err() {
                self.fail();
                return Flushed::Failed;
            }
            let mut st = self.lock();
            st.last_write = Instant::now();
            for published_at in batch.iter().filter_map(Queued::published_at) {
                st.delivery.delivered(published_at);
            }
        }
    }

    /// Queues a keep-alive if the relay is not writing. Returns whether it did.
    fn keep_alive(&self) -> bool {
        let mut st = self.lock();
        if !st.idle {
            return false;
        }
        st.idle = false;
        let (kind, payload) = W::KEEP_ALIVE;
        st.queue
            .push_back(Queued::Other(kind, Bytes::from_static(payload)));
        true
    }

    /// Ends the stream early with `end` (shutdown, end of life, a close): stops the
    /// relay and finishes a frame the socket took only part of. What is queued is
    /// dropped; the client resumes after the last event it got. Nothing is added once
    /// the stream's end is out.
    async fn stop(&self, end: &[u8]) {
        let (partial, ended) = {
            let mut st = self.lock();
            st.closed = true;
            st.idle = false;
            (
                st.partial.take(),
                std::mem::replace(&mut st.body_ended, true),
            )
        };
        let partial = partial.unwrap_or_default();
        let end: &[u8] = if ended { b"" } else { end };
        let mut parts = [IoSlice::new(&partial), IoSlice::new(end)];
        if handoff::write_all(self.socket(), &mut parts, self.send_timeout)
            .await
            .is_err()
        {
            self.fail();
        }
    }
}

impl<W: Wire> Sink for Direct<W> {
    fn begin(&self, backlog: VecDeque<Event>, live: bool) {
        let mut st = self.lock();
        if let Some(newest) = backlog.back() {
            st.last_seq = newest.seq();
        }
        st.ending |= !live || backlog.back().is_some_and(|event| self.ends(event));
        st.queue.extend(backlog.into_iter().map(Queued::Event));
        st.idle = false;
        self.wake.notify_one();
    }

    fn deliver(&self, events: &[Event]) {
        let mut st = self.lock();
        if st.closed || st.ending {
            return;
        }
        // Events come in `seq` order; anything at or below `last_seq` was taken already.
        let fresh = &events[events.partition_point(|e| e.seq() <= st.last_seq)..];
        let Some(newest) = fresh.last() else {
            return;
        };
        st.last_seq = newest.seq();
        let socket = match self.socket.get() {
            Some(socket) if st.idle && fresh.len() <= MAX_BATCH => socket,
            _ => return self.enqueue(&mut st, fresh),
        };
        let ends = self.ends(newest);
        // One slice per event, framed once per event for every subscriber, and no
        // allocation: this runs per subscriber per event.
        let mut slots = [IoSlice::new(&[]); MAX_BATCH + 1];
        for (slot, event) in slots.iter_mut().zip(fresh) {
            *slot = IoSlice::new(W::framed(event));
        }
        let mut used = fresh.len();
        if ends {
            slots[used] = IoSlice::new(W::END);
            used += 1;
        }
        let parts = &slots[..used];
        match socket.try_write_vectored(parts) {
            Ok(written) => {
                st.last_write = Instant::now();
                for event in fresh {
                    st.delivery.delivered(event.published_at());
                }
                let total: usize = parts.iter().map(|p| p.len()).sum();
                if written < total {
                    st.partial = Some(handoff::unwritten(parts, written));
                    st.idle = false;
                }
                if ends {
                    st.body_ended = true;
                    st.closed = true;
                    st.idle = false;
                }
                if written < total || ends {
                    self.wake.notify_one();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.enqueue(&mut st, fresh),
            Err(_) => {
                st.closed = true;
                st.failed = true;
                st.idle = false;
                self.wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle stream keeps room for a few queued frames (a `VecDeque` grows by at
    /// least 4).
    #[test]
    fn a_queued_frame_takes_40_bytes() {
        assert_eq!(std::mem::size_of::<Queued>(), 40);
    }
}

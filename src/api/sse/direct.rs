//! A task's SSE stream, written by the relay itself once it has a socket of its own.
//!
//! The stream joins its task as a [`Sink`] when it is opened: the backlog and live
//! events are queued for it, and through hyper (HTTP/1.0, `HEAD`) it is a frame source
//! like any other. Once the server takes the socket over from hyper, and while the
//! socket keeps up, the relay writes each batch of events to it directly, in one
//! non-blocking `writev`, and the stream's own task stays asleep: it only keeps the
//! heartbeat and the stream's life, and notices the server stopping or the client
//! leaving. Per delivered event that saves the wake-up, the scheduling and the polling of
//! a task, about a third of the server's CPU per event with 10,000 subscribers
//! (BENCHMARKS.md, item 12).
//!
//! When the socket cannot take an event at once, the event is queued and the task woken
//! to write it as the socket drains. While anything is queued (or the task is writing),
//! the relay only adds to the queue, so the order holds. A queue longer than the
//! subscriber buffer is replaced by the newest event alone: the state is cumulative, so
//! the client skips ahead as a lagging channel receiver does, and the terminal event, the
//! newest of all, is never the one dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Frame, FrameSource, StreamState, KEEP_ALIVE};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::hub::{Attached, Event, Sink, Stats, TaskId};
use crate::server::handoff::{self, SizeLines, LAST_CHUNK, MAX_BATCH};
use crate::telemetry::DeliverySampler;

/// A task's stream as a frame source: its sink, and its place among the task's sinks.
pub struct DirectSource {
    direct: Arc<Direct>,
    _attached: Attached,
}

impl DirectSource {
    /// Joins task `id` from just after `last_event_id`. `Ok(None)`: the client already
    /// has the terminal event.
    pub fn subscribe(
        state: &AppState,
        id: &TaskId,
        last_event_id: Option<u64>,
    ) -> Result<Option<DirectSource>, ApiError> {
        let direct = Arc::new(Direct {
            socket: OnceLock::new(),
            stats: state.hub.stats_handle(),
            buffer: (state.config.subscriber_buffer as usize).max(1),
            wake: Notify::new(),
            state: Mutex::new(State {
                last_seq: 0,
                queue: VecDeque::new(),
                partial: None,
                idle: false,
                ending: false,
                body_ended: false,
                closed: false,
                last_write: Instant::now(),
                delivery: None,
            }),
        });
        let attached = state
            .hub
            .subscribe_sink(id, last_event_id, direct.clone())?;
        Ok(attached.map(|attached| DirectSource {
            direct,
            _attached: attached,
        }))
    }
}

impl FrameSource for DirectSource {
    /// Through hyper: the queue, in order, until the terminal event.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            {
                let mut st = self.direct.lock();
                if let Some(queued) = st.queue.pop_front() {
                    return Some(Frame {
                        bytes: queued.frame,
                        published_at: queued.published_at,
                    });
                }
                if st.ending || st.closed {
                    return None;
                }
            }
            self.direct.wake.notified().await;
        }
    }

    fn write(st: StreamState<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(st, socket))
    }
}

/// Runs a task's stream on `socket` until it ends: terminal event, the stream's maximum
/// life, server shutdown, or the client leaving.
async fn run(st: StreamState<DirectSource>, socket: TcpStream) {
    let StreamState {
        source,
        mut shutdown,
        heartbeat,
        last_write,
        mut timer,
        prelude,
        mut end_of_life,
        delivery,
        _place,
    } = st;
    let DirectSource { direct, _attached } = source;
    if direct.socket.set(socket).is_err() {
        return;
    }
    {
        let mut st = direct.lock();
        st.delivery = Some(delivery);
        st.last_write = last_write;
    }
    // The prelude (the reconnection delay) goes out whatever happens next, as through
    // hyper; the relay only queues until the backlog has been written below.
    if let Some(prelude) = prelude {
        if handoff::write_chunks(direct.socket(), &[prelude], false)
            .await
            .is_err()
        {
            direct.lock().closed = true;
            return;
        }
    }
    direct.wake.notify_one();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            // Ends between frames: the client resumes after the last id it got.
            _ = end_of_life.as_mut() => break,
            () = direct.wake.notified() => {
                if direct.flush().await == Flushed::Done {
                    return;
                }
            }
            _ = timer.as_mut() => {
                let now = Instant::now();
                let due = direct.lock().last_write + heartbeat;
                if now < due {
                    timer.as_mut().reset(due);
                    continue;
                }
                timer.as_mut().reset(now + heartbeat);
                if direct.keep_alive() && direct.flush().await == Flushed::Done {
                    return;
                }
            }
            // Readable means the client closed the connection (or sent junk, read and
            // ignored): a client of an event stream has nothing to say.
            readable = std::future::poll_fn(|cx| direct.socket().poll_read_ready(cx)) => {
                if readable.is_err() || handoff::client_closed(direct.socket()) {
                    direct.lock().closed = true;
                    return;
                }
            }
        }
    }
    direct.stop().await;
}

/// One stream's socket and what waits to be written to it.
struct Direct {
    /// Set when the server takes the stream over from hyper; until then everything is
    /// queued.
    socket: OnceLock<TcpStream>,
    stats: Arc<Stats>,
    /// Frames that may wait before the stream skips to the newest event.
    buffer: usize,
    /// Wakes the stream's task: something is queued, or the relay stopped writing.
    wake: Notify,
    state: Mutex<State>,
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
    /// The terminal event is queued: the body ends after the queue.
    ending: bool,
    /// The last chunk has been written (or is part of `partial`).
    body_ended: bool,
    /// The relay must not write any more: the body ended, the stream stopped, or the
    /// socket failed.
    closed: bool,
    last_write: Instant,
    /// Counts what the writes deliver once the stream has its socket (through hyper,
    /// the frame stream counts).
    delivery: Option<DeliverySampler>,
}

struct Queued {
    frame: Bytes,
    /// When its event was published; `None` for the prelude and keep-alives.
    published_at: Option<std::time::Instant>,
}

impl Queued {
    fn other(frame: Bytes) -> Queued {
        Queued {
            frame,
            published_at: None,
        }
    }

    fn event(event: &Event) -> Queued {
        Queued {
            frame: event.sse_frame().clone(),
            published_at: Some(event.published_at()),
        }
    }
}

#[derive(PartialEq)]
enum Flushed {
    /// Everything is written; the relay may write again.
    Idle,
    /// The stream is over (body ended or socket failed).
    Done,
}

impl Direct {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket; only called once it is set.
    fn socket(&self) -> &TcpStream {
        self.socket.get().expect("set before the stream is written")
    }

    /// Queues `events` for the stream's task (with `st` locked).
    fn enqueue(&self, st: &mut State, events: &[Event]) {
        st.idle = false;
        if st.queue.len() + events.len() > self.buffer {
            st.queue.clear();
            self.stats.lag_resyncs.fetch_add(1, Ordering::Relaxed);
            st.queue.extend(events.last().map(Queued::event));
        } else {
            st.queue.extend(events.iter().map(Queued::event));
        }
        st.ending |= events.last().is_some_and(Event::is_terminal);
        self.wake.notify_one();
    }

    /// Writes what is queued until nothing is left, then lets the relay write again.
    async fn flush(&self) -> Flushed {
        loop {
            let (partial, batch, end) = {
                let mut st = self.lock();
                if st.partial.is_none() && (st.closed || st.queue.is_empty()) {
                    if st.closed {
                        return Flushed::Done;
                    }
                    st.idle = true;
                    return Flushed::Idle;
                }
                let partial = st.partial.take();
                let n = st.queue.len().min(MAX_BATCH);
                let batch: Vec<Queued> = st.queue.drain(..n).collect();
                let end = st.ending && st.queue.is_empty();
                if end {
                    st.body_ended = true;
                    st.closed = true;
                }
                (partial, batch, end)
            };
            if let Some(partial) = partial {
                let mut parts = [io::IoSlice::new(&partial)];
                if handoff::write_all(self.socket(), &mut parts).await.is_err() {
                    self.lock().closed = true;
                    return Flushed::Done;
                }
            }
            let frames: Vec<Bytes> = batch.iter().map(|q| q.frame.clone()).collect();
            if handoff::write_chunks(self.socket(), &frames, end)
                .await
                .is_err()
            {
                self.lock().closed = true;
                return Flushed::Done;
            }
            let mut st = self.lock();
            st.last_write = Instant::now();
            if let Some(delivery) = st.delivery.as_mut() {
                for published_at in batch.iter().filter_map(|q| q.published_at) {
                    delivery.delivered(published_at);
                }
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
        st.queue
            .push_back(Queued::other(Bytes::from_static(KEEP_ALIVE)));
        true
    }

    /// Ends the stream early (shutdown, end of life): stops the relay, finishes a chunk
    /// the socket took only part of and ends the body. What is queued is dropped; the
    /// client resumes after the last event it got.
    async fn stop(&self) {
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
        let last: &[u8] = if ended { b"" } else { LAST_CHUNK };
        let mut parts = [io::IoSlice::new(&partial), io::IoSlice::new(last)];
        let _ = handoff::write_all(self.socket(), &mut parts).await;
    }
}

impl Sink for Direct {
    fn begin(&self, backlog: VecDeque<Event>, live: bool) {
        let mut st = self.lock();
        if let Some(newest) = backlog.back() {
            st.last_seq = newest.seq();
        }
        st.ending |= !live || backlog.back().is_some_and(Event::is_terminal);
        st.queue.extend(backlog.iter().map(Queued::event));
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
        let ends = newest.is_terminal();
        let mut lines: SizeLines = [[0; 20]; MAX_BATCH];
        let parts =
            handoff::chunk_slices(fresh.iter().map(|e| &e.sse_frame()[..]), &mut lines, ends);
        match socket.try_write_vectored(&parts) {
            Ok(written) => {
                st.last_write = Instant::now();
                if let Some(delivery) = st.delivery.as_mut() {
                    for event in fresh {
                        delivery.delivered(event.published_at());
                    }
                }
                let total: usize = parts.iter().map(|p| p.len()).sum();
                if written < total {
                    st.partial = Some(handoff::unwritten(&parts, written));
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
                st.idle = false;
                self.wake.notify_one();
            }
        }
    }
}

//! A subscriber's view of one task: the events it has not seen yet, in `seq` order, with
//! no gap and no duplicate, ending after the terminal event.
//!
//! A subscriber that reads too slowly overflows its bounded channel; instead of failing,
//! it skips to the newest snapshot (the state is cumulative, so nothing is lost) and
//! carries on. The terminal event always arrives: when the channel closes, the
//! subscription fetches the final snapshot if it has not sent it yet.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};

use super::event::Event;
use super::task::TaskRef;
use super::Stats;

pub struct Subscription {
    task: TaskRef,
    backlog: VecDeque<Event>,
    rx: Option<broadcast::Receiver<Event>>,
    /// The highest `seq` handed out; anything at or below it is a duplicate.
    last_seq: u64,
    done: bool,
    stats: Arc<Stats>,
}

impl Subscription {
    pub(crate) fn new(
        task: TaskRef,
        backlog: VecDeque<Event>,
        rx: Option<broadcast::Receiver<Event>>,
        last_seq: u64,
        stats: Arc<Stats>,
    ) -> Self {
        Subscription {
            task,
            backlog,
            rx,
            last_seq,
            done: false,
            stats,
        }
    }

    /// The next unseen event, or `None` after the terminal event. Cancel-safe: it can be
    /// raced in `select!` against heartbeats and shutdown without losing an event.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                if let Some(event) = self.accept(event) {
                    return Some(event);
                }
                continue;
            }
            let Some(rx) = self.rx.as_mut() else {
                // No live channel: the task had already finished when we joined, or it
                // finished since. Make sure the terminal event was sent.
                let last = self.task.published();
                self.done = true;
                return (last.seq() > self.last_seq).then(|| self.mark_sent(last));
            };
            match rx.recv().await {
                Ok(event) => {
                    if let Some(event) = self.accept(event) {
                        return Some(event);
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.stats.lag_resyncs.fetch_add(1, Ordering::Relaxed);
                    let newest = self.task.published();
                    if let Some(event) = self.accept(newest) {
                        return Some(event);
                    }
                }
                Err(RecvError::Closed) => self.rx = None,
            }
        }
    }

    fn accept(&mut self, event: Event) -> Option<Event> {
        (event.seq() > self.last_seq).then(|| self.mark_sent(event))
    }

    fn mark_sent(&mut self, event: Event) -> Event {
        self.last_seq = event.seq();
        if event.is_terminal() {
            self.done = true;
        }
        event
    }
}

//! Subscribers that the relay hands events to directly, instead of waking a task of theirs.
//!
//! Waking a waiting stream task per subscriber per event, and that task polling its way
//! back to the socket, was a large share of the server's CPU per delivered event with
//! many subscribers (docs/design/relay-direct-writers.md). A [`Sink`] is called by the relay itself,
//! with each batch of live events in order; an SSE stream's sink writes straight to its
//! socket when that takes the bytes at once, and only wakes its task when it does not.
//!
//! The order guarantees are the channel's: a sink joins under the task's lock, where it
//! gets the history (or the snapshot) it starts from, and sees every later event through
//! [`Sink::deliver`]. Events at or below the newest `seq` it was given may come again
//! (they can be in its history and in a batch still on its way), and it must drop them.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use super::event::Event;
use super::task::TaskCell;

/// A subscriber the relay calls directly. Both methods run under locks that producers or
/// the relay wait on: neither may block.
pub trait Sink: Send + Sync + 'static {
    /// Where the sink starts, called once, under the task's lock: `backlog` (replayed
    /// history or the current snapshot, possibly empty) comes first. `live` is false when
    /// the task has already ended: nothing follows the backlog.
    fn begin(&self, backlog: VecDeque<Event>, live: bool);

    /// The next live events, oldest first (see the module docs for duplicates).
    fn deliver(&self, events: &[Event]);
}

/// The sinks of one task. Kept in slots, so that leaving is O(1) whatever their number,
/// and copied once into an immutable list that relays share until the membership changes.
#[derive(Default)]
pub(crate) struct Sinks {
    slots: Vec<Option<Arc<dyn Sink>>>,
    free: Vec<usize>,
    count: usize,
    /// What relays iterate; `None` after a change, rebuilt by the next relay batch.
    shared: Option<Arc<[Arc<dyn Sink>]>>,
}

impl Sinks {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn insert(&mut self, sink: Arc<dyn Sink>) -> usize {
        self.count += 1;
        self.shared = None;
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(sink);
                slot
            }
            None => {
                self.slots.push(Some(sink));
                self.slots.len() - 1
            }
        }
    }

    /// Removes the sink in `slot` if it is still `sink`.
    pub fn remove(&mut self, slot: usize, sink: &Arc<dyn Sink>) {
        if let Some(entry) = self.slots.get_mut(slot) {
            if entry.as_ref().is_some_and(|s| Arc::ptr_eq(s, sink)) {
                *entry = None;
                self.free.push(slot);
                self.count -= 1;
                self.shared = None;
            }
        }
    }

    /// Every sink, as a list that stays valid while the set changes.
    pub fn list(&mut self) -> Arc<[Arc<dyn Sink>]> {
        self.shared
            .get_or_insert_with(|| self.slots.iter().flatten().cloned().collect())
            .clone()
    }

    /// Empties the set (the task has ended), returning the sinks it had.
    pub fn take_all(&mut self) -> Arc<[Arc<dyn Sink>]> {
        let list = self.list();
        *self = Sinks::default();
        list
    }
}

/// A sink's membership in its task; leaving is dropping it.
pub struct Attached {
    cell: Weak<TaskCell>,
    sink: Arc<dyn Sink>,
    /// `None` when the task had already ended: the sink was never added.
    slot: Option<usize>,
}

impl Attached {
    pub(crate) fn new(cell: &Arc<TaskCell>, sink: Arc<dyn Sink>, slot: Option<usize>) -> Self {
        Attached {
            cell: Arc::downgrade(cell),
            sink,
            slot,
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let (Some(slot), Some(cell)) = (self.slot, self.cell.upgrade()) {
            cell.lock().sinks.remove(slot, &self.sink);
        }
    }
}

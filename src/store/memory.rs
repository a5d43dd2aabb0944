//! The in-memory store: what `--store memory` runs with. It keeps each task's newest
//! events for as long as the store value lives, so a hub rebuilt on the same store (as the
//! tests do) resumes where the last one stopped; nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::{FlushFuture, Store, StoreError, StoredTask};
use crate::hub::{Event, TaskId};

pub struct MemoryStore {
    tasks: Mutex<HashMap<TaskId, VecDeque<Event>>>,
    history_len: usize,
}

impl MemoryStore {
    pub fn new(history_len: usize) -> Self {
        MemoryStore {
            tasks: Mutex::new(HashMap::new()),
            history_len: history_len.max(1),
        }
    }
}

impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load(&self) -> Result<Vec<StoredTask>, StoreError> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tasks
            .values()
            .map(|events| StoredTask {
                events: events.iter().cloned().collect(),
            })
            .collect())
    }

    fn record(&self, event: &Event) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let events = tasks.entry(event.task_id().clone()).or_default();
        if event.is_terminal() {
            events.clear();
        }
        events.push_back(event.clone());
        while events.len() > self.history_len {
            events.pop_front();
        }
    }

    fn remove(&self, task_ids: &[TaskId]) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for id in task_ids {
            tasks.remove(id);
        }
    }

    fn flush(&self) -> FlushFuture {
        Box::pin(async { Ok(()) })
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

//! Persistence behind one small trait. The hub keeps every live task in memory and tells
//! the store about each published event; the store makes them outlive the process (or,
//! for [`MemoryStore`], only the hub instance).
//!
//! The store sees events, not snapshots: an event's JSON is the full snapshot, so storing
//! it keeps the encode-once rule all the way to disk.

mod memory;
pub mod redis;
mod sqlite;

use std::future::Future;
use std::pin::Pin;

pub use memory::MemoryStore;
pub use redis::{RedisStore, SharedKey};
pub use sqlite::{SqliteStore, FILE_NAME as SQLITE_FILE_NAME};

use crate::hub::{Event, TaskId};
pub use crate::telemetry::StoreMetrics;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A task as the store returns it on start: its newest events, oldest first. The last one
/// is the task's current snapshot.
#[derive(Debug, Clone)]
pub struct StoredTask {
    pub events: Vec<Event>,
}

pub type FlushFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

pub trait Store: Send + Sync + 'static {
    /// A short name for logs and `/readyz`.
    fn name(&self) -> &'static str;

    /// Every task the store holds, to start the hub from.
    fn load(&self) -> Result<Vec<StoredTask>, StoreError>;

    /// Records a published event. Called on the publish path with the task's lock held,
    /// so it must not block: a durable store queues the write.
    fn record(&self, event: &Event);

    /// Forgets tasks (retention).
    fn remove(&self, task_ids: &[TaskId]);

    /// Resolves once everything recorded so far is durable.
    fn flush(&self) -> FlushFuture;

    /// Whether the store can take writes right now (for `/readyz`): false from a failed
    /// write until everything it left waiting has been written.
    fn is_healthy(&self) -> bool;

    /// Events recorded but not yet durable. The hub refuses producers' writes while this
    /// is too high, which bounds how far published seqs can run ahead of the disk (see
    /// [`crate::hub::RESTART_SEQ_GAP`]).
    fn unwritten(&self) -> u64 {
        0
    }

    /// Whether the process that used this store before stopped cleanly, with everything
    /// it published stored. When it did not (a crash), events that clients saw may be
    /// missing, and the hub skips seqs past them.
    fn clean_start(&self) -> bool {
        true
    }

    /// Flushes everything and records a clean stop, as the last thing a server does.
    fn close(&self) -> FlushFuture {
        self.flush()
    }

    /// Hands the store the handle it reports write latency into
    /// (`progress_hub_store_write_seconds` on `/metrics`). Called once when the server
    /// starts; a store that writes in the background keeps it (a `OnceLock` will do) and
    /// calls [`StoreMetrics::record_write`] per write or batch. The default ignores it.
    fn attach_metrics(&self, metrics: StoreMetrics) {
        let _ = metrics;
    }
}

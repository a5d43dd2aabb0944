//! Persistence behind one small trait. The hub keeps every live task in memory and tells
//! the store about each published event; the store makes them outlive the process (or,
//! for [`MemoryStore`], only the hub instance).
//!
//! The store sees events, not snapshots: an event's JSON is the full snapshot, so storing
//! it keeps the encode-once rule all the way to disk.

mod memory;
mod sqlite;

use std::future::Future;
use std::pin::Pin;

pub use memory::MemoryStore;
pub use sqlite::{SqliteStore, WriteStats};

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

    /// Whether the store can take writes right now (for `/readyz`).
    fn is_healthy(&self) -> bool;

    /// Hands the store the handle it reports write latency into
    /// (`progress_hub_store_write_seconds` on `/metrics`). Called once when the server
    /// starts; a store that writes in the background keeps it (a `OnceLock` will do) and
    /// calls [`StoreMetrics::record_write`] per write or batch. The default ignores it.
    fn attach_metrics(&self, metrics: StoreMetrics) {
        let _ = metrics;
    }
}

//! A job's write session on the index: replaces and deletes documents, commits at
//! checkpoints, rolls back on cancel, and knows how many documents are still queued.
//!
//! tantivy's writer queues up to thousands of documents for its indexing threads, so a
//! file handed to it is not yet indexed. Each document is therefore wrapped in a
//! [`TrackedDocument`] that counts itself when an indexing thread is done with it (and
//! drops it); the job reports files as processed only then, so progress follows the index
//! rather than running ahead of it and then sitting at 100 % while the queue drains.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tantivy::schema::Document;
use tantivy::{IndexWriter, TantivyDocument};

use super::index::{IndexError, NewDocument, SearchIndex};

pub struct WriteSession<'a> {
    index: &'a SearchIndex,
    writer: IndexWriter<TrackedDocument>,
    /// Documents the indexing threads are done with.
    taken_in: Arc<AtomicU64>,
    /// Documents handed to the writer.
    queued: u64,
}

impl<'a> WriteSession<'a> {
    /// Takes the index's writer lock (one session per index at a time).
    pub fn open(index: &'a SearchIndex, threads: usize) -> Result<WriteSession<'a>, IndexError> {
        Ok(WriteSession {
            index,
            writer: index.writer(threads)?,
            taken_in: Arc::new(AtomicU64::new(0)),
            queued: 0,
        })
    }

    /// Queues the replacement of `doc.path`'s document (visible at the next commit).
    pub fn put(&mut self, doc: &NewDocument<'_>) -> Result<(), IndexError> {
        self.delete(doc.path);
        self.writer.add_document(TrackedDocument {
            document: self.index.document(doc),
            taken_in: self.taken_in.clone(),
        })?;
        self.queued += 1;
        Ok(())
    }

    /// Queues the removal of the document of `path`.
    pub fn delete(&self, path: &str) {
        self.writer.delete_term(self.index.path_term(path));
    }

    /// Documents handed over that the indexing threads have not finished yet.
    pub fn pending(&self) -> u64 {
        self.queued
            .saturating_sub(self.taken_in.load(Ordering::Acquire))
    }

    /// Commits everything queued and makes it visible to searches.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.writer.commit()?;
        if let Err(error) = self.index.reload() {
            tracing::warn!(%error, "index reload failed");
        }
        Ok(())
    }

    /// Drops everything since the last commit.
    pub fn rollback(mut self) {
        if let Err(error) = self.writer.rollback() {
            tracing::warn!(%error, "index rollback failed");
        }
    }

    /// Ends the session after a commit. Merges started by the commit run to their end:
    /// dropping the writer would abandon them, and segments would pile up over many jobs.
    pub fn finish(self) {
        if let Err(error) = self.writer.wait_merging_threads() {
            tracing::warn!(%error, "index merge failed");
        }
    }
}

/// A document that counts itself when tantivy drops it, which its indexing thread does
/// right after indexing and storing it.
pub struct TrackedDocument {
    document: TantivyDocument,
    taken_in: Arc<AtomicU64>,
}

impl Document for TrackedDocument {
    type Value<'a> = <TantivyDocument as Document>::Value<'a>;
    type FieldsValuesIter<'a> = <TantivyDocument as Document>::FieldsValuesIter<'a>;

    fn iter_fields_and_values(&self) -> Self::FieldsValuesIter<'_> {
        self.document.iter_fields_and_values()
    }
}

impl Drop for TrackedDocument {
    fn drop(&mut self) {
        self.taken_in.fetch_add(1, Ordering::Release);
    }
}

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

use tantivy::indexer::UserOperation;
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
        let queued = self.writer.add_document(TrackedDocument {
            document: self.index.document(doc),
            taken_in: self.taken_in.clone(),
        });
        if queued.is_err() {
            return Err(self.cause_of_failure());
        }
        self.queued += 1;
        Ok(())
    }

    /// Whether tantivy's indexing threads still work; the error that stopped them if not.
    ///
    /// A thread that hits an I/O error (a full disk) exits, and the documents still queued
    /// for it are never taken in: [`WriteSession::pending`] then stays above zero for good.
    /// tantivy notices the dead thread only when something is sent to the writer, so this
    /// sends the cheapest thing there is, a delete that matches no document (no document
    /// has an empty path).
    pub fn check(&mut self) -> Result<(), IndexError> {
        let probe = UserOperation::Delete(self.index.path_term(""));
        match self.writer.run([probe]) {
            Ok(_) => Ok(()),
            Err(_) => Err(self.cause_of_failure()),
        }
    }

    /// The error of the indexing thread that died, rather than tantivy's generic "the
    /// index writer was killed": preparing a commit joins the indexing threads and returns
    /// the first one's error. The session must be rolled back afterwards.
    fn cause_of_failure(&mut self) -> IndexError {
        match self.writer.prepare_commit() {
            Err(error) => error.into(),
            Ok(prepared) => {
                // Not expected once the writer refused work; never commit half a job.
                if let Err(error) = prepared.abort() {
                    tracing::warn!(%error, "index rollback failed");
                }
                IndexError::Tantivy(tantivy::TantivyError::ErrorInThread(
                    "the index writer stopped".to_string(),
                ))
            }
        }
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

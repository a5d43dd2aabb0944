//! The tally of a job and the `results` object a completed task carries.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::extract::Format;
use super::report::Progress;

/// Files listed with their reason, per kind; the counts are always complete.
pub const MAX_LISTED: usize = 100;

#[derive(Debug, Default)]
pub struct Tally {
    pub indexed: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Documents of files that are gone (or no longer indexable) since the last run.
    pub removed: u64,
    /// Bytes read from disk: indexed and unchanged files (the latter to hash them).
    pub bytes: u64,
    indexed_by_format: [u64; Format::ALL.len()],
    /// Files indexed without some of their content (a PDF's unreadable page or font).
    pub partly_read: u64,
    skips: Vec<(String, String)>,
    failures: Vec<(String, String)>,
    problems: Vec<(String, String)>,
}

impl Tally {
    pub fn indexed(&mut self, format: Format, bytes: u64) {
        self.indexed += 1;
        self.bytes += bytes;
        let slot = Format::ALL.iter().position(|f| *f == format).unwrap_or(0);
        self.indexed_by_format[slot] += 1;
    }

    pub fn unchanged(&mut self, bytes: u64) {
        self.unchanged += 1;
        self.bytes += bytes;
    }

    pub fn skipped(&mut self, file: &str, reason: String) {
        self.skipped += 1;
        if self.skips.len() < MAX_LISTED {
            self.skips.push((file.to_string(), reason));
        }
    }

    pub fn failed(&mut self, file: &str, reason: String) {
        self.failed += 1;
        if self.failures.len() < MAX_LISTED {
            self.failures.push((file.to_string(), reason));
        }
    }

    pub fn partly_read(&mut self, file: &str, reason: String) {
        self.partly_read += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push((file.to_string(), reason));
        }
    }

    pub fn fill(&self, progress: &mut Progress) {
        progress.indexed = self.indexed;
        progress.unchanged = self.unchanged;
        progress.skipped = self.skipped;
        progress.failed = self.failed;
    }

    pub fn to_json(&self, folder: &Path, total: u64, documents: u64, took: Duration) -> Value {
        let listed = |items: &[(String, String)]| -> Vec<Value> {
            items
                .iter()
                .map(|(file, reason)| json!({"file": file, "reason": reason}))
                .collect()
        };
        let by_format: Map<String, Value> = Format::ALL
            .iter()
            .zip(self.indexed_by_format)
            .filter(|(_, n)| *n > 0)
            .map(|(f, n)| (f.as_str().to_string(), json!(n)))
            .collect();
        json!({
            "folder": folder.to_string_lossy(),
            "files_total": total,
            "files_indexed": self.indexed,
            "files_unchanged": self.unchanged,
            "files_skipped": self.skipped,
            "files_failed": self.failed,
            "files_removed": self.removed,
            "files_partly_read": self.partly_read,
            "indexed_by_format": by_format,
            "bytes": self.bytes,
            "failures": listed(&self.failures),
            "skipped": listed(&self.skips),
            "partly_read": listed(&self.problems),
            "documents_in_index": documents,
            "duration_ms": took.as_millis() as u64,
        })
    }
}

/// The message of a completed job, from its `results` object.
pub fn summary(results: &Value) -> String {
    let n = |key: &str| results[key].as_u64().unwrap_or(0);
    format!(
        "Done: {} files, {} indexed, {} unchanged, {} skipped, {} failed",
        n("files_total"),
        n("files_indexed"),
        n("files_unchanged"),
        n("files_skipped"),
        n("files_failed")
    )
}

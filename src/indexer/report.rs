//! The small handle a job reports through. The job does not know who listens: the hub
//! (server), a terminal progress bar (CLI) or nobody (benchmark).

use serde_json::json;

use crate::hub::{Hub, HubError, ProgressUpdate, TaskId};

/// Where a job is. Each stage is announced once, before its first progress report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Listing the files, so that `total` is known before any is read.
    Counting,
    /// Reading, extracting and indexing the files.
    Indexing,
    /// Removing documents of files that are gone, then committing the index.
    Committing,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Counting => "counting",
            Stage::Indexing => "indexing",
            Stage::Committing => "committing",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Stage::Counting => "Counting files",
            Stage::Indexing => "Indexing files",
            Stage::Committing => "Committing the index",
        }
    }
}

/// The job's state at one report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Files accounted for so far (in any way: indexed, unchanged, skipped, failed).
    pub processed: u64,
    /// Files listed (0 while counting).
    pub total: u64,
    /// Files listed so far while counting.
    pub found: u64,
    /// The last file accounted for, relative to the folder; or the file in work, when
    /// it has taken long enough to be worth showing (then `current_file_seconds` > 0).
    pub current_file: String,
    /// Whole seconds `current_file` has been in work, when it is slow; 0 otherwise.
    pub current_file_seconds: u64,
    /// Pages of `current_file` done and in all, when it is slow and has pages.
    pub current_file_pages: Option<(u32, u32)>,
    pub indexed: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub failed: u64,
}

/// Whoever follows the job is gone or has ended the task: the job must stop.
#[derive(Debug)]
pub struct Stopped;

pub trait Report: Send {
    /// A new stage begins; whoever listens should see it even if updates are merged.
    fn stage(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped>;
    /// More files were accounted for.
    fn progress(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped>;
}

/// Reports nothing (benchmarks, tests).
pub struct Silent;

impl Report for Silent {
    fn stage(&mut self, _: Stage, _: &Progress) -> Result<(), Stopped> {
        Ok(())
    }
    fn progress(&mut self, _: Stage, _: &Progress) -> Result<(), Stopped> {
        Ok(())
    }
}

/// Reports to a task of the hub. A task that was finished from outside (cancelled
/// through the API) answers `Finished`, which stops the job. A report equal to the last
/// one sent is not sent again: it would only republish the same snapshot under a new seq.
pub struct HubReporter {
    hub: Hub,
    task_id: TaskId,
    last_sent: Option<(Stage, Progress)>,
}

impl HubReporter {
    pub fn new(hub: Hub, task_id: TaskId) -> HubReporter {
        HubReporter {
            hub,
            task_id,
            last_sent: None,
        }
    }

    fn send(&mut self, stage: Stage, p: &Progress) -> Result<(), Stopped> {
        if self
            .last_sent
            .as_ref()
            .is_some_and(|(s, last)| *s == stage && last == p)
        {
            return Ok(());
        }
        let mut detail = json!({
            "stage": stage.as_str(),
            "found": p.found,
            "indexed": p.indexed,
            "unchanged": p.unchanged,
            "skipped": p.skipped,
            "failed": p.failed,
        });
        if p.current_file_seconds > 0 {
            detail["current_file_seconds"] = json!(p.current_file_seconds);
        }
        if let Some((done, total)) = p.current_file_pages {
            detail["current_file_pages"] = json!({"done": done, "total": total});
        }
        let update = ProgressUpdate {
            processed: Some(p.processed),
            total: Some(p.total),
            current_file: Some(p.current_file.clone()),
            progress: None,
            message: Some(stage.message().to_string()),
            detail: Some(detail),
        };
        match self.hub.report_blocking(&self.task_id, update) {
            Ok(_) => {
                self.last_sent = Some((stage, p.clone()));
                Ok(())
            }
            Err(HubError::Finished(_) | HubError::NotFound) => Err(Stopped),
            Err(error) => {
                // A store hiccup must not kill the job; the next report carries it all.
                tracing::warn!(task_id = %self.task_id, %error, "progress report failed");
                Ok(())
            }
        }
    }
}

impl Report for HubReporter {
    fn stage(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped> {
        self.send(stage, progress)?;
        self.hub.publish_now(&self.task_id).map_err(|_| Stopped)
    }

    fn progress(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped> {
        self.send(stage, progress)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::{HubConfig, NewTask};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn an_unchanged_report_is_not_published_again() {
        let config = HubConfig {
            coalesce: std::time::Duration::ZERO,
            ..HubConfig::default()
        };
        let hub = Hub::new(config, Arc::new(MemoryStore::new(16))).unwrap();
        let created = hub.create(NewTask::default()).unwrap();
        let task_id = created.task_id().clone();
        let mut reporter = HubReporter::new(hub.clone(), task_id.clone());
        let seq = || hub.get(&task_id).unwrap().seq();
        let mut progress = Progress {
            total: 10,
            processed: 1,
            ..Progress::default()
        };
        reporter.progress(Stage::Indexing, &progress).unwrap();
        let first = seq();
        for _ in 0..20 {
            reporter.progress(Stage::Indexing, &progress).unwrap();
        }
        assert_eq!(seq(), first, "the same report republished");
        progress.processed = 2;
        reporter.progress(Stage::Indexing, &progress).unwrap();
        assert_eq!(seq(), first + 1);
        // A new stage with the same figures is news.
        reporter.stage(Stage::Committing, &progress).unwrap();
        assert_eq!(seq(), first + 2);
    }
}

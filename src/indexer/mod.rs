//! The built-in job: index a folder of documents, with live progress, then search it.
//!
//! - [`roots`]: which folders may be read, and how a requested folder is resolved.
//! - [`walk`]: the counting walk (ignore files, hidden files, symlinks).
//! - [`extract`]: text extraction, one module per format.
//! - [`index`]: the tantivy index on disk, and search; [`tokenizer`] cuts text into words.
//! - [`job`]: one run over one folder, on blocking threads, reporting through [`report`].
//! - [`cli`]: the same job from the command line, with a progress bar.
//!
//! [`Indexer`] is what the HTTP layer holds: it starts jobs as hub tasks, lets one job
//! write at a time (the others wait, `pending`), stops them on cancel or shutdown, and
//! answers searches.

pub mod cli;
pub mod extract;
pub mod in_flight;
pub mod index;
pub mod job;
pub mod report;
pub mod results;
pub mod roots;
pub mod tokenizer;
pub mod walk;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::{Hub, HubError, NewTask, Outcome, ProgressUpdate, TaskId};
use index::{IndexError, SearchError, SearchIndex, SearchResults};
use job::{Job, JobEnd, JobSettings};
use report::HubReporter;
use roots::IndexRoots;

/// The `job` of the tasks this module runs (see [`crate::hub::Snapshot::job`]).
pub const JOB_NAME: &str = "index-folder";
/// The error of a job that was still running when the server stopped.
pub const INTERRUPTED_BY_SHUTDOWN: &str = "interrupted by server shutdown";

/// A cheap-to-clone handle on the indexer of this process.
#[derive(Clone)]
pub struct Indexer {
    inner: Arc<Inner>,
}

struct Inner {
    roots: IndexRoots,
    index_dir: PathBuf,
    data_dir: PathBuf,
    max_file_bytes: u64,
    threads: usize,
    checkpoint_every: Option<Duration>,
    /// Opened on first use, so that a server that never indexes creates nothing on disk.
    index: Mutex<Option<Arc<SearchIndex>>>,
    /// tantivy allows one writer per index: one job runs at a time, the next waits here.
    writer_slot: Arc<tokio::sync::Mutex<()>>,
    /// Running jobs by task, so that a cancel through the API reaches the job at once
    /// instead of at its next progress report.
    jobs: Mutex<HashMap<TaskId, CancellationToken>>,
    /// Every job's driver, so that shutdown can wait for them to end their tasks.
    tracker: TaskTracker,
}

/// Why a search could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum SearchFailure {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("search task failed")]
    Crashed,
}

impl Indexer {
    /// Resolves the index roots (blocking: it touches the filesystem).
    pub fn new(config: &Config) -> std::io::Result<Indexer> {
        Ok(Indexer {
            inner: Arc::new(Inner {
                roots: IndexRoots::new(&config.index_roots)?,
                index_dir: config.index_dir(),
                data_dir: config.data_dir.clone(),
                max_file_bytes: config.max_file_bytes,
                threads: config.index_threads(),
                checkpoint_every: config.index_checkpoint(),
                index: Mutex::new(None),
                writer_slot: Arc::new(tokio::sync::Mutex::new(())),
                jobs: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
            }),
        })
    }

    pub fn roots(&self) -> &IndexRoots {
        &self.inner.roots
    }

    /// The search index, opened (or created) on first use. Blocking.
    pub fn index(&self) -> Result<Arc<SearchIndex>, IndexError> {
        let mut slot = self.inner.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = &*slot {
            return Ok(index.clone());
        }
        let index = Arc::new(SearchIndex::open_or_create(&self.inner.index_dir)?);
        *slot = Some(index.clone());
        Ok(index)
    }

    /// How jobs run. Blocking (it resolves the data directory).
    pub fn job_settings(&self) -> JobSettings {
        JobSettings {
            max_file_bytes: self.inner.max_file_bytes,
            threads: self.inner.threads,
            exclude: std::fs::canonicalize(&self.inner.data_dir).ok(),
            checkpoint_every: self.inner.checkpoint_every,
        }
    }

    /// The task a job on `folder` runs as; create it (through whatever limits apply), then
    /// hand it to [`Indexer::spawn`].
    pub fn task_for(folder: &Path) -> NewTask {
        NewTask {
            id: None,
            name: Some(format!("Index {}", folder.display())),
            total: 0,
            job: Some(JOB_NAME.to_string()),
        }
    }

    /// Starts indexing `folder` (canonical, inside the roots) in the background as task
    /// `id`, which must exist. The job stops when `shutdown` is cancelled.
    pub fn spawn(&self, hub: &Hub, id: TaskId, folder: PathBuf, shutdown: &CancellationToken) {
        let cancel = shutdown.child_token();
        self.jobs().insert(id.clone(), cancel.clone());
        let this = self.clone();
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        self.inner.tracker.spawn(async move {
            let end = this.run_queued(&hub, &id, folder, &cancel).await;
            let outcome = match end {
                JobEnd::Completed(results) => {
                    // The last stage's message ("Committing the index") must not be what
                    // the completed task says.
                    let summary = ProgressUpdate {
                        message: Some(results::summary(&results)),
                        ..ProgressUpdate::default()
                    };
                    if let Err(error) = hub.report(&id, summary).await {
                        tracing::debug!(task_id = %id, %error, "final message not set");
                    }
                    Outcome::Completed {
                        results: Some(results),
                    }
                }
                JobEnd::Failed(error) => Outcome::Failed { error },
                JobEnd::Stopped if shutdown.is_cancelled() => Outcome::Failed {
                    error: INTERRUPTED_BY_SHUTDOWN.to_string(),
                },
                JobEnd::Stopped => Outcome::Cancelled,
            };
            let status = outcome.status().as_str();
            tracing::info!(task_id = %id, status, "indexing job ended");
            match hub.finish(&id, outcome).await {
                // Already ended from outside (cancelled through the API): nothing to add.
                Ok(_) | Err(HubError::Finished(_)) => {}
                Err(error) => tracing::error!(task_id = %id, %error, "cannot end indexing task"),
            }
            this.jobs().remove(&id);
        });
    }

    /// Waits for the writer, then runs the job on a blocking thread.
    async fn run_queued(
        &self,
        hub: &Hub,
        id: &TaskId,
        folder: PathBuf,
        cancel: &CancellationToken,
    ) -> JobEnd {
        let slot = tokio::select! {
            slot = self.inner.writer_slot.clone().lock_owned() => slot,
            _ = cancel.cancelled() => return JobEnd::Stopped,
        };
        let this = self.clone();
        let mut reporter = HubReporter::new(hub.clone(), id.clone());
        let cancel = cancel.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let index = match this.index() {
                Ok(index) => index,
                Err(error) => return JobEnd::Failed(error.to_string()),
            };
            let settings = this.job_settings();
            let job = Job {
                index: &index,
                roots: &this.inner.roots,
                folder: &folder,
                settings: &settings,
                cancel: &cancel,
            };
            job.run(&mut reporter)
        })
        .await;
        joined.unwrap_or_else(|error| {
            tracing::error!(task_id = %id, %error, "indexing job panicked");
            JobEnd::Failed("indexing job crashed".to_string())
        })
    }

    /// Stops the job of task `id`, if one runs. Its index changes are rolled back.
    pub fn cancel(&self, id: &TaskId) {
        if let Some(token) = self.jobs().get(id) {
            token.cancel();
        }
    }

    /// Searches the index (on a blocking thread).
    pub async fn search(
        &self,
        query: String,
        limit: usize,
    ) -> Result<SearchResults, SearchFailure> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || Ok(this.index()?.search(&query, limit)?))
            .await
            .unwrap_or(Err(SearchFailure::Crashed))
    }

    /// Waits up to `grace` for running jobs to stop (their tokens are children of the
    /// shutdown token, so they are stopping already); any still running then is ended
    /// as interrupted, so that its task does not stay `processing` forever.
    pub async fn shutdown(&self, hub: &Hub, grace: Duration) {
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
        {
            return;
        }
        let stragglers: Vec<TaskId> = self.jobs().keys().cloned().collect();
        for id in stragglers {
            tracing::warn!(task_id = %id, "indexing job still running at shutdown");
            let outcome = Outcome::Failed {
                error: INTERRUPTED_BY_SHUTDOWN.to_string(),
            };
            let _ = hub.finish(&id, outcome).await;
        }
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<TaskId, CancellationToken>> {
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

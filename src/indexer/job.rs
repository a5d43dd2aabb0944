//! One run of the indexing job over one folder. It runs on the calling thread, which must
//! be allowed to block (a `spawn_blocking` thread or the CLI), plus a small pool of
//! extraction threads that read, hash and extract files while the calling thread feeds
//! the index writer and reports progress.
//!
//! The index stays consistent whatever happens: the job commits at checkpoints and at its
//! end, and a cancelled or failed job rolls the writer back to its last checkpoint. Every
//! document then matches some version of its file; files not reached yet keep their
//! earlier documents, and documents of files that are gone are removed when a job
//! completes. Checkpoints make an interrupted job resumable: the next run finds the files
//! it had committed unchanged. Without checkpoints a job changes the index all at once.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::extract::{self, ExtractError, Format, Limits};
use super::in_flight::{FileProgress, InFlight};
use super::index::{FileStamp, NewDocument, SearchIndex};
use super::report::{Progress, Report, Stage, Stopped};
use super::results::Tally;
use super::roots::IndexRoots;
use super::walk::{self, EntryKind, FileEntry};
use super::writer::WriteSession;

/// Progress reports at most this often; the hub coalesces further for its subscribers.
const REPORT_EVERY: Duration = Duration::from_millis(10);
/// How often the job looks at its state when no file finishes (a slow file, the index
/// writer catching up).
const TICK: Duration = Duration::from_millis(100);
/// While the index writer's queue does not move, it is checked this often for a dead
/// indexing thread (each check queues a no-op for the writer).
const CHECK_WRITER_EVERY: Duration = Duration::from_millis(250);
/// A file in work for this long becomes the `current_file`, with its time and pages, so
/// that a job busy with one large file shows it and is not taken for stalled: its
/// seconds count up, so a report goes out at least once a second.
const SLOW_FILE: Duration = Duration::from_secs(1);

/// How a job runs.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Larger files are skipped without being read.
    pub max_file_bytes: u64,
    /// Extraction threads.
    pub threads: usize,
    /// Never entered by the walk (the data directory, which holds the index itself).
    pub exclude: Option<PathBuf>,
    /// Commit at least this often while indexing; `None` commits only at the end.
    pub checkpoint_every: Option<Duration>,
}

impl JobSettings {
    /// tantivy's own indexing threads. For text files building the postings is most of
    /// the work (the benchmark shows it), so they match the extraction threads, up to a
    /// point where more segments would cost more in merges than they save.
    fn writer_threads(&self) -> usize {
        self.threads.clamp(1, 4)
    }
}

/// How a job ended.
#[derive(Debug)]
pub enum JobEnd {
    /// The `results` object.
    Completed(Value),
    Failed(String),
    /// Cancelled, or its task was ended from outside; the index is as it was.
    Stopped,
}

/// What one job works on.
pub struct Job<'a> {
    pub index: &'a SearchIndex,
    pub roots: &'a IndexRoots,
    /// Canonical, inside the roots.
    pub folder: &'a Path,
    pub settings: &'a JobSettings,
    pub cancel: &'a CancellationToken,
}

/// What the extraction threads hand back for one file.
enum FileOutcome {
    Indexed {
        format: Format,
        text: String,
        /// What could not be read of it (the file is indexed with the rest).
        problems: Vec<String>,
        stamp: FileStamp,
    },
    Unchanged(FileStamp),
    Skipped(String),
    Failed(String),
    /// Cancelled inside the extraction: the file is not accounted for.
    Cancelled,
}

impl Job<'_> {
    pub fn run(&self, reporter: &mut dyn Report) -> JobEnd {
        let started = Instant::now();
        let mut progress = Progress::default();
        if reporter.stage(Stage::Counting, &progress).is_err() {
            return JobEnd::Stopped;
        }
        let Some(files) = self.count(reporter, &mut progress) else {
            return JobEnd::Stopped;
        };
        progress.total = files.len() as u64;
        progress.found = progress.total;
        if reporter.stage(Stage::Indexing, &progress).is_err() {
            return JobEnd::Stopped;
        }
        let stamps = match self.index.stamps_under(self.folder) {
            Ok(stamps) => stamps,
            Err(error) => return JobEnd::Failed(format!("cannot read the index: {error}")),
        };
        let mut session = match WriteSession::open(self.index, self.settings.writer_threads()) {
            Ok(session) => session,
            Err(error) => return JobEnd::Failed(format!("cannot write the index: {error}")),
        };
        let mut tally = Tally::default();
        let mut kept: HashSet<String> = HashSet::with_capacity(files.len());
        // Files with an outcome; those still in the writer's queue are not processed yet.
        let mut accounted = 0;
        // Stops the extraction threads when the writer fails, without marking the job
        // as cancelled.
        let stop = self.cancel.child_token();
        let mut fatal: Option<String> = None;
        let mut pace = Pace::default();
        let mut last_checkpoint = Instant::now();
        let in_flight = InFlight::new(self.settings.threads);
        // The files handed to the index writer, in order: the first of them it has not
        // taken in yet is the one it works on.
        let mut put_order: Vec<usize> = Vec::with_capacity(files.len());
        let mut last_done = None;
        self.for_each_processed(&files, &stamps, &stop, &in_flight, |done| {
            if let Some((i, outcome)) = done {
                let entry = &files[i];
                let key = entry.path.to_string_lossy();
                match outcome {
                    FileOutcome::Indexed {
                        format,
                        text,
                        problems,
                        stamp,
                    } => {
                        let name = entry.path.file_name().unwrap_or_default().to_string_lossy();
                        let doc = NewDocument {
                            path: &key,
                            name: &name,
                            body: &text,
                            stamp,
                        };
                        if let Err(error) = session.put(&doc) {
                            fatal = Some(format!("index writer failed: {error}"));
                            stop.cancel();
                            return;
                        }
                        put_order.push(i);
                        tally.indexed(format, stamp.size);
                        if !problems.is_empty() {
                            tally.partly_read(&entry.relative, problems.join("; "));
                        }
                        kept.insert(key.into_owned());
                    }
                    FileOutcome::Unchanged(stamp) => {
                        tally.unchanged(stamp.size);
                        kept.insert(key.into_owned());
                    }
                    FileOutcome::Skipped(reason) => tally.skipped(&entry.relative, reason),
                    FileOutcome::Failed(reason) => tally.failed(&entry.relative, reason),
                    FileOutcome::Cancelled => return,
                }
                accounted += 1;
                last_done = Some(i);
                let checkpoint_due = self
                    .settings
                    .checkpoint_every
                    .is_some_and(|every| last_checkpoint.elapsed() >= every);
                if checkpoint_due {
                    if let Err(error) = session.commit() {
                        fatal = Some(format!("cannot commit the index: {error}"));
                        stop.cancel();
                        return;
                    }
                    last_checkpoint = Instant::now();
                }
            }
            if pace.due() {
                progress.processed = accounted - session.pending();
                tally.fill(&mut progress);
                match in_flight.slowest().filter(|slow| slow.took >= SLOW_FILE) {
                    Some(slow) => {
                        progress.current_file.clone_from(&files[slow.file].relative);
                        progress.current_file_seconds = slow.took.as_secs();
                        progress.current_file_pages = slow.pages;
                    }
                    None => {
                        if let Some(i) = last_done {
                            progress.current_file.clone_from(&files[i].relative);
                        }
                        progress.current_file_seconds = 0;
                        progress.current_file_pages = None;
                    }
                }
                if pace.report(reporter, Stage::Indexing, &progress).is_err() {
                    self.cancel.cancel();
                }
            }
        });
        if let Some(error) = fatal {
            session.rollback();
            return JobEnd::Failed(error);
        }
        // The indexing threads catch up with their queue; the files count as processed as
        // they do. While the count stands still the file the writer works on is shown
        // with its time, and the writer is checked, since a dead indexing thread would
        // leave the count standing forever.
        tally.fill(&mut progress);
        progress.current_file_pages = None;
        let mut moved_at = Instant::now();
        let mut checked_at = Instant::now();
        while !self.cancel.is_cancelled() {
            let pending = session.pending();
            let processed = accounted - pending;
            if processed != progress.processed {
                moved_at = Instant::now();
                progress.processed = processed;
            } else if checked_at.elapsed() >= CHECK_WRITER_EVERY {
                checked_at = Instant::now();
                if let Err(error) = session.check() {
                    session.rollback();
                    return JobEnd::Failed(format!("index writer failed: {error}"));
                }
            }
            let still = moved_at.elapsed();
            progress.current_file_seconds = 0;
            if still >= SLOW_FILE && pending > 0 {
                let oldest = put_order[put_order.len() - pending as usize];
                progress.current_file.clone_from(&files[oldest].relative);
                progress.current_file_seconds = still.as_secs();
            }
            if pace.report(reporter, Stage::Indexing, &progress).is_err() {
                self.cancel.cancel();
            }
            if processed == accounted {
                break;
            }
            std::thread::sleep(REPORT_EVERY);
        }
        if self.cancel.is_cancelled() || reporter.stage(Stage::Committing, &progress).is_err() {
            session.rollback();
            return JobEnd::Stopped;
        }
        for path in stamps.keys().filter(|p| !kept.contains(*p)) {
            session.delete(path);
            tally.removed += 1;
        }
        if let Err(error) = session.commit() {
            session.rollback();
            return JobEnd::Failed(format!("cannot commit the index: {error}"));
        }
        session.finish();
        let documents = self.index.num_docs();
        JobEnd::Completed(tally.to_json(self.folder, progress.total, documents, started.elapsed()))
    }

    /// Lists the files, reporting the count as it grows. `None` when cancelled.
    fn count(&self, reporter: &mut dyn Report, progress: &mut Progress) -> Option<Vec<FileEntry>> {
        let mut last_report = Instant::now();
        let cancel = self.cancel;
        walk::list_files(
            self.folder,
            self.roots,
            self.settings.exclude.as_deref(),
            cancel,
            |found| {
                if last_report.elapsed() >= REPORT_EVERY {
                    last_report = Instant::now();
                    progress.found = found as u64;
                    if reporter.progress(Stage::Counting, progress).is_err() {
                        cancel.cancel();
                    }
                }
            },
        )
        .filter(|_| !cancel.is_cancelled())
    }

    /// Processes `files` on the extraction threads and hands each outcome, with the
    /// file's index, to `sink` on this thread, in completion order; `None` when no file
    /// finished for a [`TICK`]. Stops taking new files once `stop` is cancelled; outcomes
    /// already produced are still drained so no thread blocks.
    fn for_each_processed(
        &self,
        files: &[FileEntry],
        stamps: &HashMap<String, FileStamp>,
        stop: &CancellationToken,
        in_flight: &InFlight,
        mut sink: impl FnMut(Option<(usize, FileOutcome)>),
    ) {
        let threads = self.settings.threads.max(1);
        let next = AtomicUsize::new(0);
        let take = || {
            if stop.is_cancelled() {
                return None;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            files.get(i).map(|entry| (i, entry))
        };
        let process = |slot: usize, i: usize, entry: &FileEntry| {
            let pages = in_flight.begin(slot, i);
            let outcome = self.process(entry, stamps, stop, pages);
            in_flight.end(slot);
            outcome
        };
        extract::quiet_parser_panics();
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<(usize, FileOutcome)>(threads * 4);
            let mut spawned = 0;
            for n in 0..threads {
                let tx = tx.clone();
                let (take, process) = (&take, &process);
                let worker = move || {
                    while let Some((i, entry)) = take() {
                        if tx.send((i, process(n, i, entry))).is_err() {
                            break;
                        }
                    }
                };
                match std::thread::Builder::new()
                    .name(format!("{}-{n}", extract::EXTRACTION_THREAD_PREFIX))
                    .spawn_scoped(scope, worker)
                {
                    Ok(_) => spawned += 1,
                    Err(error) => tracing::warn!(%error, "cannot start an extraction thread"),
                }
            }
            drop(tx);
            if spawned == 0 {
                // No thread could start: do the work here rather than not at all.
                while let Some((i, entry)) = take() {
                    sink(Some((i, process(0, i, entry))));
                }
                return;
            }
            loop {
                match rx.recv_timeout(TICK) {
                    Ok(done) if !stop.is_cancelled() => sink(Some(done)),
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) if !stop.is_cancelled() => sink(None),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
    }

    /// Reads, hashes and extracts one file (on an extraction thread).
    fn process(
        &self,
        entry: &FileEntry,
        stamps: &HashMap<String, FileStamp>,
        cancel: &CancellationToken,
        pages: &FileProgress,
    ) -> FileOutcome {
        let target = match &entry.kind {
            EntryKind::Skip(reason) => return FileOutcome::Skipped(reason.to_string()),
            EntryKind::File { target } => target,
        };
        let max = self.settings.max_file_bytes;
        let too_large = || FileOutcome::Skipped(format!("larger than the {max}-byte limit"));
        let meta = match std::fs::metadata(target) {
            Ok(meta) => meta,
            Err(error) => return FileOutcome::Failed(format!("cannot read: {error}")),
        };
        if meta.len() > max {
            return too_large();
        }
        let bytes = match read_at_most(target, max) {
            Ok(Some(bytes)) => bytes,
            // It grew past the limit since it was measured.
            Ok(None) => return too_large(),
            Err(error) => return FileOutcome::Failed(format!("cannot read: {error}")),
        };
        let stamp = FileStamp {
            size: bytes.len() as u64,
            mtime_ns: mtime_ns(&meta),
            hash: xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, extract::EXTRACTION_VERSION),
        };
        if stamps.get(&*entry.path.to_string_lossy()) == Some(&stamp) {
            return FileOutcome::Unchanged(stamp);
        }
        let format = match Format::detect(target, &bytes) {
            Ok(format) => format,
            Err(skip) => return FileOutcome::Skipped(skip.to_string()),
        };
        let limits = Limits {
            max_expanded_bytes: max.saturating_mul(4).max(64 << 20),
        };
        match extract::extract(format, &bytes, limits, cancel, pages) {
            Ok(extracted) => FileOutcome::Indexed {
                format,
                text: extracted.text,
                problems: extracted.problems,
                stamp,
            },
            Err(ExtractError::Cancelled) => FileOutcome::Cancelled,
            Err(ExtractError::Invalid(reason)) => FileOutcome::Failed(reason),
        }
    }
}

/// Keeps reports to one per [`REPORT_EVERY`], and none that repeats the one before.
struct Pace {
    last_at: Instant,
    last_sent: Option<(Stage, Progress)>,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            last_at: Instant::now(),
            last_sent: None,
        }
    }
}

impl Pace {
    fn due(&self) -> bool {
        self.last_at.elapsed() >= REPORT_EVERY
    }

    fn report(
        &mut self,
        reporter: &mut dyn Report,
        stage: Stage,
        progress: &Progress,
    ) -> Result<(), Stopped> {
        if self
            .last_sent
            .as_ref()
            .is_some_and(|(s, p)| *s == stage && p == progress)
        {
            return Ok(());
        }
        self.last_at = Instant::now();
        self.last_sent = Some((stage, progress.clone()));
        reporter.progress(stage, progress)
    }
}

/// The whole file, or `None` if it holds more than `max` bytes.
fn read_at_most(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    match meta.modified().map(|t| t.duration_since(UNIX_EPOCH)) {
        Ok(Ok(after)) => after.as_nanos() as i64,
        Ok(Err(before)) => -(before.duration().as_nanos() as i64),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::indexer::report::{Silent, Stopped};

    /// Cancels the job as soon as it reports a file done.
    struct CancelAfterFirstFile(CancellationToken);

    impl Report for CancelAfterFirstFile {
        fn stage(&mut self, _: Stage, _: &Progress) -> Result<(), Stopped> {
            Ok(())
        }
        fn progress(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped> {
            if stage == Stage::Indexing && progress.processed > 0 {
                self.0.cancel();
            }
            Ok(())
        }
    }

    fn cancelled_then_rerun(checkpoint_every: Option<Duration>) -> (u64, Value) {
        let tmp = tempfile::tempdir().unwrap();
        let folder = std::fs::canonicalize(tmp.path()).unwrap().join("docs");
        std::fs::create_dir(&folder).unwrap();
        for i in 0..300 {
            std::fs::write(folder.join(format!("{i}.txt")), format!("file {i}")).unwrap();
        }
        let index = SearchIndex::open_or_create(&tmp.path().join("index")).unwrap();
        let roots = IndexRoots::new(std::slice::from_ref(&folder)).unwrap();
        let settings = JobSettings {
            max_file_bytes: 1 << 20,
            threads: 2,
            exclude: None,
            checkpoint_every,
        };
        let cancel = CancellationToken::new();
        let job = Job {
            index: &index,
            roots: &roots,
            folder: &folder,
            settings: &settings,
            cancel: &cancel,
        };
        assert!(matches!(
            job.run(&mut CancelAfterFirstFile(cancel.clone())),
            JobEnd::Stopped
        ));
        let kept = index.num_docs();
        let fresh = CancellationToken::new();
        let once = JobSettings {
            checkpoint_every: None,
            ..settings.clone()
        };
        let job = Job {
            cancel: &fresh,
            settings: &once,
            ..job
        };
        match job.run(&mut Silent) {
            JobEnd::Completed(results) => (kept, results),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn checkpoints_make_an_interrupted_job_resumable() {
        let (kept, results) = cancelled_then_rerun(Some(Duration::ZERO));
        assert!((1..300).contains(&kept), "{kept}");
        assert_eq!(results["files_unchanged"], kept);
        assert_eq!(results["files_indexed"], 300 - kept);
        assert_eq!(results["documents_in_index"], 300);
    }

    #[test]
    fn without_checkpoints_a_cancelled_job_leaves_the_index_as_it_was() {
        let (kept, results) = cancelled_then_rerun(None);
        assert_eq!(kept, 0);
        assert_eq!(results["files_indexed"], 300);
    }
}

//! `progress-hub index FOLDER`: the job that `POST /api/index-folder` runs, in this
//! process, with a progress bar on the terminal instead of a hub task. Ctrl-C stops it
//! and rolls the index back.
//!
//! The person at the terminal chose the folder, so the index roots do not apply; the
//! folder itself is the root, so symlinks leading out of it are skipped as the server
//! would skip links leading out of its roots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::index::SearchIndex;
use super::job::{Job, JobEnd, JobSettings};
use super::report::{Progress, Report, Stage, Stopped};
use super::roots::IndexRoots;
use crate::config::Config;

pub async fn run(config: Config, folder: PathBuf) -> ExitCode {
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let job_cancel = cancel.clone();
    let joined =
        tokio::task::spawn_blocking(move || index_folder(&config, folder, &job_cancel)).await;
    match joined {
        Ok(Ok(JobEnd::Completed(results))) => {
            print_summary(&results);
            ExitCode::SUCCESS
        }
        Ok(Ok(JobEnd::Failed(error))) => {
            eprintln!("progress-hub: indexing failed: {error}");
            ExitCode::FAILURE
        }
        Ok(Ok(JobEnd::Stopped)) => {
            eprintln!(
                "progress-hub: indexing cancelled; the index keeps what was committed at the last checkpoint"
            );
            ExitCode::from(130)
        }
        Ok(Err(error)) => {
            eprintln!("progress-hub: {error}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("progress-hub: indexing crashed");
            ExitCode::FAILURE
        }
    }
}

fn index_folder(
    config: &Config,
    folder: PathBuf,
    cancel: &CancellationToken,
) -> Result<JobEnd, String> {
    let cannot = |why: &dyn std::fmt::Display| format!("cannot index {}: {why}", folder.display());
    let canonical = std::fs::canonicalize(&folder).map_err(|e| cannot(&e))?;
    if !canonical.is_dir() {
        return Err(cannot(&"not a folder"));
    }
    let roots = IndexRoots::new(std::slice::from_ref(&canonical)).map_err(|e| cannot(&e))?;
    let folder = canonical;
    let index = SearchIndex::open_or_create(&config.index_dir()).map_err(|e| e.to_string())?;
    let settings = JobSettings {
        max_file_bytes: config.max_file_bytes,
        threads: config.index_threads(),
        exclude: std::fs::canonicalize(&config.data_dir).ok(),
        checkpoint_every: config.index_checkpoint(),
    };
    let job = Job {
        index: &index,
        roots: &roots,
        folder: &folder,
        settings: &settings,
        cancel,
    };
    let mut bar = BarReporter::new();
    let end = job.run(&mut bar);
    bar.bar.finish_and_clear();
    Ok(end)
}

/// Draws the job on the terminal (nothing when stderr is not one).
struct BarReporter {
    bar: ProgressBar,
}

impl BarReporter {
    fn new() -> BarReporter {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        BarReporter { bar }
    }
}

impl Report for BarReporter {
    fn stage(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped> {
        match stage {
            Stage::Counting => self.bar.set_message("counting files"),
            Stage::Indexing => {
                let style = ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} files  {elapsed} (eta {eta})  {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                self.bar.set_style(style);
                self.bar.set_length(progress.total);
                self.bar.set_position(0);
            }
            Stage::Committing => {
                self.bar.set_position(progress.processed);
                self.bar.set_message("committing the index");
            }
        }
        Ok(())
    }

    fn progress(&mut self, stage: Stage, progress: &Progress) -> Result<(), Stopped> {
        match stage {
            Stage::Counting => self
                .bar
                .set_message(format!("counting files: {}", progress.found)),
            _ => {
                self.bar.set_position(progress.processed);
                self.bar.set_message(progress.current_file.clone());
            }
        }
        Ok(())
    }
}

fn print_summary(results: &Value) {
    let n = |key: &str| results[key].as_u64().unwrap_or(0);
    println!(
        "{}: {} indexed, {} unchanged, {} skipped, {} failed, {} removed ({} files, {:.1} MB) in {:.1} s; {} documents in the index",
        results["folder"].as_str().unwrap_or(""),
        n("files_indexed"),
        n("files_unchanged"),
        n("files_skipped"),
        n("files_failed"),
        n("files_removed"),
        n("files_total"),
        n("bytes") as f64 / 1e6,
        n("duration_ms") as f64 / 1e3,
        n("documents_in_index"),
    );
    for (list, label) in [("failures", "failed"), ("partly_read", "partly read")] {
        for entry in results[list].as_array().into_iter().flatten() {
            println!(
                "{label}: {}: {}",
                entry["file"].as_str().unwrap_or(""),
                entry["reason"].as_str().unwrap_or("")
            );
        }
    }
}

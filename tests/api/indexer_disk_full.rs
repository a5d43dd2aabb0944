//! The indexer on a full disk, black-box: the data directory is a small tmpfs (mounted
//! here, which needs root), so tantivy's indexing threads die with "no space left". The
//! job must end `failed` with that error, the job queued behind it must run, and once
//! there is room again indexing works.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::helpers::{spawn_app_with, within, SseClient, TestApp};

/// A tmpfs mounted on a temporary folder, unmounted when dropped (also when the test
/// fails half-way: lazily, since the server may still hold files open on it).
pub(crate) struct Tmpfs {
    mountpoint: TempDir,
}

impl Tmpfs {
    /// `None` when mounting is not allowed (not root).
    pub(crate) fn mount(size: &str) -> Option<Tmpfs> {
        let mountpoint = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mountpoint.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { mountpoint })
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.mountpoint.path().to_path_buf()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.mountpoint.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mountpoint.path())
            .status();
    }
}

/// `count` files of `bytes` each, of words no compressor shrinks much: far more than
/// the tmpfs holds once indexed.
fn incompressible_files(folder: &Path, count: usize, bytes: usize) {
    std::fs::create_dir_all(folder).unwrap();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..count {
        let mut text = String::with_capacity(bytes + 16);
        while text.len() < bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for k in 0..(3 + state % 6) {
                text.push((b'a' + ((state >> (5 * k)) % 26) as u8) as char);
            }
            text.push(' ');
        }
        std::fs::write(folder.join(format!("f{i}.txt")), text).unwrap();
    }
}

async fn start(app: &TestApp, folder: &Path) -> String {
    let response = app
        .post(
            "/api/index-folder",
            json!({ "folder": folder.to_str().unwrap() }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["task_id"].as_str().unwrap().to_string()
}

/// Every event of task `id` on `/api/events`, up to its terminal one.
async fn events_until_finished(events: &mut SseClient, id: &str) -> Vec<Value> {
    within(async {
        let mut seen = Vec::new();
        loop {
            let frame = events.next_event().await.expect("the stream stays open");
            let data = frame.json();
            if data["task_id"] != id {
                continue;
            }
            seen.push(data);
            if frame.event.as_deref() != Some("progress") {
                return seen;
            }
        }
    })
    .await
}

/// A snapshot without the fields that change with every publication or with time.
fn content(snapshot: &Value) -> Value {
    let mut snapshot = snapshot.clone();
    for key in [
        "seq",
        "updated_at",
        "rate_per_second",
        "eta_seconds",
        "stalled",
    ] {
        snapshot.as_object_mut().unwrap().remove(key);
    }
    snapshot
}

#[tokio::test]
async fn a_job_whose_index_writer_dies_fails_and_the_next_job_runs() {
    let Some(disk) = Tmpfs::mount("256k") else {
        eprintln!(
            "SKIPPED a_job_whose_index_writer_dies_fails_and_the_next_job_runs: \
             mounting a tmpfs needs root"
        );
        return;
    };
    let corpus = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(corpus.path()).unwrap();
    incompressible_files(&base.join("big"), 8, 1 << 20);
    std::fs::create_dir_all(base.join("small")).unwrap();
    std::fs::write(base.join("small/one.txt"), "a lone axolotl").unwrap();
    let data_dir = disk.path();
    let roots = vec![base.clone()];
    let app = spawn_app_with(move |config| {
        config.data_dir = data_dir;
        config.index_roots = roots;
        config.max_file_bytes = 4 << 20;
        config.index_threads = 2;
        config.index_checkpoint_secs = 0;
        config.coalesce_ms = 50;
    })
    .await;
    let response = app.sse("/api/events", None).await;
    assert_eq!(response.status(), 200);
    let mut events = SseClient::new(response);

    let big = start(&app, &base.join("big")).await;
    // Queued behind the first job: it must not wait forever.
    let queued = start(&app, &base.join("small")).await;
    let seen = events_until_finished(&mut events, &big).await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "failed", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("No space left on device"), "{error}");
    // Each event says something the one before did not.
    for pair in seen.windows(2) {
        assert_ne!(content(&pair[0]), content(&pair[1]), "republished as is");
    }

    let queued_end = events_until_finished(&mut events, &queued).await;
    let status = queued_end.last().unwrap()["status"].clone();
    assert!(status == "failed" || status == "completed", "{status}");

    // Room again: indexing works, and finds what it indexed.
    disk.resize("64m");
    let again = start(&app, &base.join("small")).await;
    let end = events_until_finished(&mut events, &again).await;
    let last = end.last().unwrap();
    assert_eq!(last["status"], "completed", "{last}");
    let found = app.get_json("/api/search?q=axolotl").await;
    assert_eq!(found["total_hits"], 1, "{found}");
    app.stop().await;
    drop(disk);
}

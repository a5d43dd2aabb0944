//! Durability with the SQLite store: restarts keep every task, its snapshot and its seq;
//! interrupted built-in jobs come back failed; a killed server loses nothing it
//! acknowledged; retention removes old finished tasks from memory and disk.

use std::process::Stdio;

use progress_hub::config::StoreKind;
use progress_hub::hub::{NewTask, ProgressUpdate, INTERRUPTED_BY_RESTART};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::{spawn_app_with, task_id, wait_until, within, SseClient};

#[tokio::test]
async fn tasks_survive_a_restart_with_their_seq_and_history() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let app = spawn_app_with(|c| {
        c.store = StoreKind::Sqlite;
        c.data_dir = dir;
    })
    .await;
    app.create_task("kept", 10).await;
    for n in 1..=4 {
        app.progress("kept", json!({"processed": n, "detail": {"stage": "scan"}}))
            .await;
    }
    app.create_task("finished", 2).await;
    app.complete("finished", json!({"files": 2})).await;
    app.hub
        .create(NewTask {
            id: Some(task_id("job")),
            job: Some("index-folder".to_string()),
            ..Default::default()
        })
        .unwrap();
    app.hub
        .progress(
            &task_id("job"),
            ProgressUpdate {
                processed: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    let before: Value = app
        .get("/api/index-progress/kept")
        .await
        .json()
        .await
        .unwrap();
    let finished_before: Value = app.get("/api/tasks/finished").await.json().await.unwrap();

    let app = app.restart().await;
    let after: Value = app
        .get("/api/index-progress/kept")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after, before, "the same snapshot, byte for byte in meaning");
    let finished_after: Value = app.get("/api/tasks/finished").await.json().await.unwrap();
    assert_eq!(finished_after, finished_before);
    let job: Value = app
        .get("/api/index-progress/job")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (job["status"].clone(), job["error"].clone()),
        (json!("failed"), json!(INTERRUPTED_BY_RESTART))
    );

    // Replay from the stored history, then seq continues.
    let mut stream = SseClient::new(app.sse("/api/index-progress/kept/events", Some(3)).await);
    assert_eq!(stream.next_event().await.unwrap().id, Some(4));
    assert_eq!(stream.next_event().await.unwrap().id, Some(5));
    let next: Value = app
        .progress("kept", json!({"processed": 5}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["seq"], 6);
    assert_eq!(stream.next_event().await.unwrap().id, Some(6));
}

#[tokio::test]
async fn retention_removes_finished_tasks_from_memory_and_disk() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let app = spawn_app_with(|c| {
        c.store = StoreKind::Sqlite;
        c.data_dir = dir;
        c.retention_secs = 1;
    })
    .await;
    app.create_task("old", 1).await;
    app.complete("old", json!(null)).await;
    app.create_task("running", 1).await;
    wait_until(|| app.hub.get(&task_id("old")).is_none()).await;
    assert_eq!(app.get("/api/index-progress/old").await.status(), 404);
    let app = app.restart().await;
    assert_eq!(
        app.get("/api/index-progress/old").await.status(),
        404,
        "gone from disk"
    );
    assert_eq!(app.get("/api/index-progress/running").await.status(), 200);
}

#[tokio::test]
async fn quiet_tasks_are_pushed_as_stalled_and_cleared_on_the_next_report() {
    let app = spawn_app_with(|c| c.stall_secs = 1).await;
    app.create_task("quiet", 10).await;
    app.progress("quiet", json!({"processed": 1})).await;
    let mut stream = SseClient::new(app.sse("/api/index-progress/quiet/events", Some(2)).await);
    let stalled = stream.next_event().await.unwrap();
    assert_eq!(
        (stalled.id, stalled.json()["stalled"].clone()),
        (Some(3), json!(true))
    );
    app.progress("quiet", json!({"processed": 2})).await;
    let resumed = stream.next_event().await.unwrap();
    assert_eq!(
        (resumed.id, resumed.json()["stalled"].clone()),
        (Some(4), json!(false))
    );
}

/// The real binary, on a data directory, for kill-and-restart tests.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
}

pub(crate) async fn start_server(data: &std::path::Path) -> Server {
    let mut child = server_command(data).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = within(BufReader::new(stdout).lines().next_line())
        .await
        .unwrap()
        .expect("ready line");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .to_string();
    Server {
        child,
        base: format!("http://{addr}"),
    }
}

/// The binary on `data` with the flags every test here uses: a free port, no coalescing.
pub(crate) fn server_command(data: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_progress-hub"));
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--coalesce-ms",
            "0",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // CI runs the suite a second time with the fast paths off: child servers too.
    if let Ok(mode) = std::env::var("PROGRESS_HUB_FAST_PATHS") {
        command.env("PROGRESS_HUB_FAST_PATHS", mode);
    }
    command
}

impl Server {
    pub(crate) async fn signal(&mut self, signal: &str) -> Option<i32> {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        within(self.child.wait()).await.unwrap().code()
    }

    pub(crate) async fn post(&self, client: &reqwest::Client, path: &str, body: Value) -> Value {
        let response = client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

#[tokio::test]
async fn sigterm_mid_task_then_restart_resumes_the_stream_with_nothing_lost() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_server(data.path()).await;
    server
        .post(&client, "/api/tasks", json!({"id": "mid", "total": 10}))
        .await;
    server
        .post(&client, "/api/tasks/mid/progress", json!({"processed": 1}))
        .await;
    let response = client
        .get(format!("{}/api/index-progress/mid/events", server.base))
        .send()
        .await
        .unwrap();
    let mut stream = SseClient::new(response);
    let mut seen: Vec<u64> = vec![stream.next_event().await.unwrap().id.unwrap()];
    server
        .post(&client, "/api/tasks/mid/progress", json!({"processed": 2}))
        .await;
    seen.push(stream.next_event().await.unwrap().id.unwrap());

    // SIGTERM: the open stream ends cleanly and the process exits 0.
    assert_eq!(server.signal("-TERM").await, Some(0));
    assert!(
        stream.collect_events().await.is_empty(),
        "stream ended without more events"
    );

    // Restart on the same data dir (another port: the client "resumes elsewhere").
    let server = start_server(data.path()).await;
    let last = *seen.last().unwrap();
    let resumed = client
        .get(format!("{}/api/index-progress/mid/events", server.base))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    let mut stream = SseClient::new(resumed);
    server
        .post(&client, "/api/tasks/mid/progress", json!({"processed": 3}))
        .await;
    server
        .post(
            &client,
            "/api/tasks/mid/complete",
            json!({"results": {"files": 3}}),
        )
        .await;
    let rest = stream.collect_events().await;
    seen.extend(rest.iter().map(|e| e.id.unwrap()));
    assert_eq!(
        seen,
        [2, 3, 4, 5],
        "contiguous across the restart: nothing lost, nothing twice"
    );
    assert_eq!(rest.last().unwrap().json()["processed"], 3);
    assert_eq!(rest.last().unwrap().event.as_deref(), Some("completed"));
}

#[tokio::test]
async fn an_acknowledged_ending_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_server(data.path()).await;
    server
        .post(&client, "/api/tasks", json!({"id": "ended", "total": 3}))
        .await;
    server
        .post(
            &client,
            "/api/tasks/ended/progress",
            json!({"processed": 2}),
        )
        .await;
    let end = server
        .post(
            &client,
            "/api/tasks/ended/fail",
            json!({"error": "disk full"}),
        )
        .await;
    // Killed right after the acknowledgement: no chance to flush on the way out.
    server.signal("-KILL").await;
    let server = start_server(data.path()).await;
    let after: Value = client
        .get(format!("{}/api/index-progress/ended", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after, end);
}

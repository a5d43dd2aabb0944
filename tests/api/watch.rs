//! `progress-hub watch` and `progress-hub tasks`: the built binary against a real server,
//! with its output piped (plain lines, no escape codes) and in a pseudo-terminal (a
//! progress bar), its exit codes, and a resume across a server restart.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use progress_hub::config::{Config, StoreKind};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::helpers::{spawn_app, spawn_app_with, within, TestApp};
use crate::raw::metric;

fn binary() -> Command {
    program(env!("CARGO_BIN_EXE_progress-hub"))
}

fn program(path: &str) -> Command {
    let mut command = Command::new(path);
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// `progress-hub watch ID --server <app>` with piped output, its stderr read line by line
/// as it comes, so a test can wait until the watcher has seen something.
struct Watcher {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    fn start(app: &TestApp, id: &str, extra: &[&str]) -> Watcher {
        let mut child = binary()
            .args(["watch", id, "--server", &app.url("")])
            .args(extra)
            .spawn()
            .expect("watch starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line that contains `text`.
    async fn wait_for(&mut self, text: &str) {
        within(async {
            loop {
                let line = self.lines.recv().await.expect("watch ended early");
                let found = line.contains(text);
                self.seen.push(line);
                if found {
                    return;
                }
            }
        })
        .await
    }

    /// Waits for the exit; returns the exit code, stdout and every stderr line.
    async fn finish(mut self) -> (i32, String, Vec<String>) {
        let status = within(self.child.wait()).await.expect("watch exits");
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout)
                .await
                .expect("stdout");
        }
        while let Some(line) = within(self.lines.recv()).await {
            self.seen.push(line);
        }
        (status.code().expect("an exit code"), stdout, self.seen)
    }
}

/// The `seq N:` numbers of the plain progress lines, in order.
fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("seq ")?.split(':').next()?.parse().ok())
        .collect()
}

fn assert_plain(stdout: &str, lines: &[String]) {
    assert!(
        !stdout.contains('\x1b'),
        "escape codes on stdout: {stdout:?}"
    );
    for line in lines {
        assert!(!line.contains('\x1b'), "escape codes on stderr: {line:?}");
    }
}

#[tokio::test]
async fn piped_watch_prints_plain_lines_and_the_results_and_exits_zero() {
    let app = spawn_app().await;
    app.create_task("job", 4).await;
    let mut watcher = Watcher::start(&app, "job", &[]);
    watcher.wait_for("seq 1: pending 0% 0/4").await;
    for n in 1..=3 {
        let body = json!({"processed": n, "current_file": format!("f{n}.txt")});
        assert_eq!(app.progress("job", body).await.status(), 200);
        watcher.wait_for(&format!("seq {}:", n + 1)).await;
    }
    assert_eq!(app.complete("job", json!({"files": 3})).await.status(), 200);
    let (code, stdout, lines) = watcher.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(stdout, "{\"files\":3}\n");
    assert_plain(&stdout, &lines);
    assert!(lines.contains(&"seq 3: processing 50% 2/4 f2.txt".to_string()));
    assert_eq!(seqs(&lines), [1, 2, 3, 4, 5]);
    assert_eq!(lines.last().map(String::as_str), Some("task job completed"));
}

#[tokio::test]
async fn a_failed_task_exits_one_with_its_error_and_a_cancelled_one_two() {
    let app = spawn_app().await;
    app.create_task("doomed", 10).await;
    app.create_task("stopped", 10).await;
    let mut failing = Watcher::start(&app, "doomed", &[]);
    let mut cancelled = Watcher::start(&app, "stopped", &[]);
    failing.wait_for("seq 1:").await;
    cancelled.wait_for("seq 1:").await;
    let fail = app
        .post("/api/tasks/doomed/fail", json!({"error": "disk full"}))
        .await;
    assert_eq!(fail.status(), 200);
    let cancel = app.post("/api/tasks/stopped/cancel", json!({})).await;
    assert_eq!(cancel.status(), 200);

    let (code, stdout, lines) = failing.finish().await;
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(stdout, "");
    assert_plain(&stdout, &lines);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("task doomed failed: disk full")
    );

    let (code, stdout, lines) = cancelled.finish().await;
    assert_eq!(code, 2, "{lines:?}");
    assert_eq!(stdout, "");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("task stopped cancelled")
    );
}

#[tokio::test]
async fn an_already_finished_task_is_reported_at_once() {
    let app = spawn_app().await;
    app.create_task("done", 1).await;
    assert_eq!(app.complete("done", json!(null)).await.status(), 200);
    let (code, stdout, lines) = Watcher::start(&app, "done", &[]).finish().await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(stdout, "null\n", "no results");
}

#[tokio::test]
async fn unknown_tasks_exit_three_and_an_unreachable_server_four() {
    let app = spawn_app().await;
    let (code, _, lines) = Watcher::start(&app, "missing", &[]).finish().await;
    assert_eq!(code, 3, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("Task not found")),
        "{lines:?}"
    );
    let (code, _, _) = Watcher::start(&app, "not/an id", &[]).finish().await;
    assert_eq!(code, 3);

    // A port that nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output = run(binary().args(["watch", "any", "--server", &url, "--retry-secs", "0"])).await;
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // Usage errors must not read as "cancelled" (2).
    let output = run(binary().args(["watch"])).await;
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let output = run(binary().args(["watch", "x", "--server", "ftp://127.0.0.1:1"])).await;
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let missing = [
        "--server",
        "https://127.0.0.1:1",
        "--ca-cert",
        "/nonexistent.pem",
    ];
    let output = run(binary().args(["watch", "x"]).args(missing)).await;
    assert_eq!(output.status.code(), Some(64), "{output:?}");
}

/// A free loopback port under `ip_local_port_range`, so no outgoing connection takes it.
fn port_below_the_ephemeral_range() -> u16 {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(10_000).max(1);
    // Start somewhere different in each run, so parallel runs rarely try the same ports.
    let start = std::process::id() as u16 % span;
    (0..span)
        .map(|i| 10_000 + (start + i) % span)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port")
}

/// Waits until the port can be bound again. Run beside the other tests, binding at once
/// sometimes failed (for example, a process forked at that moment by another test holds
/// a copy of the listener until it execs).
async fn wait_until_free(addr: SocketAddr) {
    within(async {
        loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_reuseaddr(true).unwrap();
            if socket.bind(addr).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn run(command: &mut Command) -> Output {
    within(command.output()).await.expect("runs")
}

#[tokio::test]
async fn watch_resumes_across_a_server_restart_without_repeating_an_event() {
    // The restarted server must come back on the same port, where the watcher looks. A
    // port from the ephemeral range (what port 0 gives) could be taken in between as the
    // source port of some other test's connection, so take one below that range.
    let addr = SocketAddr::from(([127, 0, 0, 1], port_below_the_ephemeral_range()));
    // The tasks survive the restart in SQLite, as they would in production.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let configure = move |c: &mut Config| {
        c.listen = addr;
        c.store = StoreKind::Sqlite;
        c.data_dir = dir;
    };
    let app = spawn_app_with(configure.clone()).await;
    app.create_task("long", 10).await;
    assert_eq!(
        app.progress("long", json!({"processed": 1})).await.status(),
        200
    );
    let mut watcher = Watcher::start(&app, "long", &[]);
    watcher.wait_for("seq 2: processing 10% 1/10").await;

    app.stop().await;
    wait_until_free(addr).await;
    let app = spawn_app_with(configure).await;
    watcher.wait_for("reconnecting").await;
    assert_eq!(
        app.progress("long", json!({"processed": 5})).await.status(),
        200
    );
    watcher.wait_for("seq 3: processing 50% 5/10").await;
    assert_eq!(
        app.complete("long", json!({"ok": true})).await.status(),
        200
    );
    let (code, stdout, lines) = watcher.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(stdout, "{\"ok\":true}\n");
    // Each event once, in order, across both servers: the reconnect sent Last-Event-ID.
    assert_eq!(seqs(&lines), [2, 3, 4], "{lines:?}");
    assert!(metric(&app, "progress_hub_replays_total").await >= 1.0);
}

#[tokio::test]
async fn watch_follows_a_read_protected_task_with_its_read_token() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let app = spawn_app_with(move |c| {
        c.data_dir = dir;
        c.protect_reads = true;
        c.api_token = Some("admin-token-0123".to_string());
    })
    .await;
    let created: Value = app
        .post("/api/tasks", json!({"id": "secret", "total": 2}))
        .await
        .json()
        .await
        .unwrap();
    let read_token = created["read_token"].as_str().expect("read_token");

    let (code, _, lines) = Watcher::start(&app, "secret", &[]).finish().await;
    assert_eq!(code, 4, "without a token: {lines:?}");

    let mut watcher = Watcher::start(&app, "secret", &["--token", read_token]);
    watcher.wait_for("seq 1:").await;
    assert_eq!(app.complete("secret", json!(7)).await.status(), 200);
    let (code, stdout, lines) = watcher.finish().await;
    assert_eq!((code, stdout.as_str()), (0, "7\n"), "{lines:?}");
}

#[tokio::test]
async fn watch_draws_a_progress_bar_in_a_terminal() {
    let app = spawn_app().await;
    app.create_task("shown", 4).await;
    assert_eq!(
        app.progress("shown", json!({"processed": 2, "current_file": "half.txt"}))
            .await
            .status(),
        200
    );
    // `script` (util-linux) runs the command in a pseudo-terminal and copies what it
    // draws to our pipe; -e passes the command's exit code on.
    let command = format!(
        "{} watch shown --server {}",
        env!("CARGO_BIN_EXE_progress-hub"),
        app.url("")
    );
    let mut child = program("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .spawn()
        .expect("script from util-linux");
    let mut out = child.stdout.take().expect("stdout");
    // Wait until the bar shows the task half done, then end the task.
    let mut drawn = Vec::new();
    within(async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&drawn).contains("50%") {
            let n = tokio::io::AsyncReadExt::read(&mut out, &mut buf)
                .await
                .expect("read the terminal");
            assert!(
                n > 0,
                "script ended early: {:?}",
                String::from_utf8_lossy(&drawn)
            );
            drawn.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let fail = app
        .post("/api/tasks/shown/fail", json!({"error": "gave up"}))
        .await;
    assert_eq!(fail.status(), 200);
    tokio::io::AsyncReadExt::read_to_end(&mut out, &mut drawn)
        .await
        .expect("read the rest");
    let status = within(child.wait()).await.expect("script exits");
    assert_eq!(status.code(), Some(1));
    let drawn = String::from_utf8_lossy(&drawn);
    assert!(drawn.contains("\x1b["), "no escape codes: {drawn:?}");
    assert!(drawn.contains("[==============="), "no bar: {drawn:?}");
    assert!(drawn.contains("2/4 half.txt"), "{drawn:?}");
    assert!(drawn.contains("task shown failed: gave up"), "{drawn:?}");
}

#[tokio::test]
async fn tasks_lists_them_as_a_table_or_as_json() {
    let app = spawn_app().await;
    app.create_task("first", 4).await;
    app.create_task("second", 10).await;
    assert_eq!(
        app.progress("second", json!({"processed": 5}))
            .await
            .status(),
        200
    );
    assert_eq!(app.complete("first", json!(null)).await.status(), 200);

    let output = run(binary().args(["tasks", "--server", &app.url("")])).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "STATUS", "PROGRESS", "DONE", "UPDATED", "NAME"]
    );
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows
        .iter()
        .any(|r| r[..4] == ["second", "processing", "50%", "5/10"]));
    assert!(rows
        .iter()
        .any(|r| r[..4] == ["first", "completed", "100%", "0/4"]));

    let output = run(binary().args([
        "tasks",
        "--status",
        "processing",
        "--json",
        "--server",
        &app.url(""),
    ]))
    .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ids: Vec<&str> = body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["second"]);

    let output = run(binary().args(["tasks", "--status", "bogus", "--server", &app.url("")])).await;
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("status must be one of"), "{stderr}");
}

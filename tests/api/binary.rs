//! The installed binary: the ready line, a clean exit on SIGTERM, the refusal to serve a
//! non-loopback address without a token, and the request log at `RUST_LOG=debug`.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::within;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_progress-hub"));
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn prints_its_address_serves_and_exits_zero_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut child = binary()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = within(lines.next_line())
        .await
        .unwrap()
        .expect("a ready line");
    let addr = line
        .strip_prefix("listening on http://")
        .expect("ready line format");
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = within(child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn refuses_a_public_address_without_a_token() {
    let output = within(binary().args(["--listen", "0.0.0.0:0"]).output())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
    assert!(stderr.contains("--api-token"), "{stderr}");
}

#[tokio::test]
async fn help_lists_every_setting() {
    let output = within(binary().arg("--help").output()).await.unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--index-root",
        "--api-token",
        "--allow-unauthenticated",
        "--coalesce-ms",
        "--heartbeat-secs",
        "--api-token-file",
        "--protect-reads",
        "--cors-origin",
        "--max-subscribers-per-task",
        "--max-subscribers",
        "--max-tasks",
        "--max-unfinished-tasks-per-token",
        "--max-stream-secs",
        "--ws-max-message-bytes",
        "--idle-timeout-secs",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// The README's configuration table and `--help` list the same flags, so neither drifts.
#[tokio::test]
async fn the_readme_lists_every_flag_that_help_lists() {
    let help = binary().arg("--help").output().await.unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let flags = |text: &str, line_start: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.trim_start().strip_prefix(line_start))
            .filter_map(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                (!name.is_empty()).then_some(name)
            })
            .collect()
    };
    let mut in_help = flags(&help, "--");
    in_help.retain(|f| f != "help" && f != "version");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let in_readme = flags(&readme, "| `--");
    assert!(!in_help.is_empty());
    assert_eq!(
        in_readme, in_help,
        "README.md's configuration table and `progress-hub --help` disagree"
    );
}

#[tokio::test]
async fn durations_near_u64_max_are_refused_at_start_not_panicked_on() {
    let data = tempfile::tempdir().unwrap();
    let huge = u64::MAX.to_string();
    for flag in [
        "--send-timeout-secs",
        "--header-timeout-secs",
        "--idle-timeout-secs",
        "--heartbeat-secs",
        "--shutdown-grace-secs",
        "--shutdown-drain-secs",
        "--max-stream-secs",
        "--stall-secs",
        "--retention-secs",
        "--index-checkpoint-secs",
        "--coalesce-ms",
    ] {
        let output = within(
            binary()
                .args(["--listen", "127.0.0.1:0", flag, &huge, "--data-dir"])
                .arg(data.path())
                .output(),
        )
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flag}: {stderr}");
    }
}

/// Runs the binary with `RUST_LOG=progress_hub=debug` and `args`, lets `client` talk to
/// it, stops it with SIGTERM and returns what it logged.
async fn debug_log<F, Fut>(args: &[&str], client: F) -> String
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let data = tempfile::tempdir().unwrap();
    let mut child = binary()
        .env("RUST_LOG", "progress_hub=debug")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(args)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = within(BufReader::new(stdout).lines().next_line())
        .await
        .unwrap()
        .expect("a ready line");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .to_string();
    client(format!("http://{addr}")).await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(killed.unwrap().success());
    let output = within(child.wait_with_output()).await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The log line of a request's event: its span's fields and the event's message.
fn logged(log: &str, fields: &[&str], message: &str) -> bool {
    log.lines().any(|line| {
        line.contains("request{")
            && fields.iter().all(|field| line.contains(field))
            && line.trim_end().ends_with(message)
    })
}

#[tokio::test]
async fn every_request_is_traced_on_every_path_at_debug() {
    for fast_paths in ["on", "off"] {
        let log = debug_log(&["--fast-paths", fast_paths], |base| async move {
            let client = reqwest::Client::new();
            let created = client
                .post(format!("{base}/api/tasks"))
                .json(&serde_json::json!({"id": "traced"}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
            // A plain poll on a new connection: with the fast paths on, the quick lane
            // answers it (a connection hyper has served stays hyper's).
            let poll = reqwest::Client::new()
                .get(format!("{base}/api/index-progress/traced"))
                .send()
                .await
                .unwrap();
            assert_eq!(poll.status(), 200);
            // A stream, handed off from hyper with the fast paths on, until its end.
            let stream = client
                .get(format!("{base}/api/index-progress/traced/events"))
                .send()
                .await
                .unwrap();
            assert_eq!(stream.status(), 200);
            let completed = client
                .post(format!("{base}/api/tasks/traced/complete"))
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(completed.status(), 200);
            let body = within(stream.text()).await.unwrap();
            assert!(body.contains("event: completed"), "{body}");
        })
        .await;
        let poll = [
            "method=GET",
            "route=/api/index-progress/{task_id}",
            "task_id=traced",
            "status=200",
        ];
        let lane = if fast_paths == "on" {
            "answered by the quick lane"
        } else {
            "answered"
        };
        assert!(logged(&log, &poll, lane), "fast paths {fast_paths}:\n{log}");
        let create = ["method=POST", "route=/api/tasks ", "status=201"];
        assert!(logged(&log, &create, "answered"), "{log}");
        let events = [
            "route=/api/index-progress/{task_id}/events",
            "task_id=traced",
            "status=200",
        ];
        assert!(logged(&log, &events, "answered"), "{log}");
        if fast_paths == "on" {
            assert!(logged(&log, &events, "stream ended"), "{log}");
        }
    }
}

//! The installed binary: the ready line, a clean exit on SIGTERM, and the refusal to
//! serve a non-loopback address without a token.

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

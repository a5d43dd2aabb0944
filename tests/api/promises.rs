//! What a client was told stays true, with real processes: a seq a follower saw is never
//! issued again after `kill -9`; an acknowledged creation survives `kill -9`; a store that
//! cannot write (a real SQLite lock held by another process's connection) loses nothing
//! that was shown, refuses what it cannot keep, and says so on `/readyz`; one data
//! directory serves one server; a long poll on a finished task never spins.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use crate::durability::{server_command, start_server, Server};
use crate::helpers::{within, SseClient};

fn events_url(server: &Server, id: &str) -> String {
    format!("{}/api/index-progress/{id}/events", server.base)
}

async fn poll(client: &reqwest::Client, server: &Server, id: &str) -> Value {
    client
        .get(format!("{}/api/index-progress/{id}", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_seq_a_follower_saw_is_never_issued_again_after_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_server(data.path()).await;
    server
        .post(&client, "/api/tasks", json!({"id": "crash", "total": 40}))
        .await;
    let response = client
        .get(events_url(&server, "crash"))
        .send()
        .await
        .unwrap();
    let mut follower = SseClient::new(response);
    let first = follower.next_event().await.unwrap();
    let mut seen: Vec<(u64, Value)> = vec![(first.id.unwrap(), first.json())];
    for n in 1..=40 {
        server
            .post(
                &client,
                "/api/tasks/crash/progress",
                json!({"processed": n}),
            )
            .await;
    }
    // Killed at once: the last reports were shown to the follower (the stream sends each
    // at once), and are at most milliseconds old.
    server.child.start_kill().unwrap();
    seen.extend(
        follower
            .events_until_cut()
            .await
            .into_iter()
            .map(|e| (e.id.unwrap(), e.json())),
    );
    within(server.child.wait()).await.unwrap();
    let held = seen.last().unwrap().0;
    assert!(held > 1, "the follower saw progress before the crash");

    let server = start_server(data.path()).await;
    // Whatever the new process still has of what the follower saw is what it saw.
    let current = poll(&client, &server, "crash").await["seq"]
        .as_u64()
        .unwrap();
    let replay = client
        .get(events_url(&server, "crash"))
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    let mut replay = SseClient::new(replay);
    loop {
        let event = replay.next_event().await.unwrap();
        let seq = event.id.unwrap();
        if let Some((_, saw)) = seen.iter().find(|(s, _)| *s == seq) {
            assert_eq!(&event.json(), saw, "seq {seq} changed its meaning");
        } else {
            assert!(seq > held, "seq {seq} is new, yet not past {held}");
        }
        if seq == current {
            break;
        }
    }
    drop(replay);

    let done = server
        .post(
            &client,
            "/api/tasks/crash/complete",
            json!({"results": {"files": 40}}),
        )
        .await;
    let done_seq = done["seq"].as_u64().unwrap();
    assert!(
        done_seq > held,
        "the completion took seq {done_seq}, which the follower already holds"
    );

    // The follower resumes with the Last-Event-ID it really has and sees the end.
    let resumed = client
        .get(events_url(&server, "crash"))
        .header("Last-Event-ID", held.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);
    let events = SseClient::new(resumed).collect_events().await;
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.iter().all(|&id| id > held), "ids {ids:?} after {held}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_deref(), last.id),
        (Some("completed"), Some(done_seq))
    );
}

#[tokio::test]
async fn a_created_task_survives_sigkill_right_after_its_201() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_server(data.path()).await;
    for n in 1..=5 {
        let response = client
            .post(format!("{}/api/tasks", server.base))
            .json(&json!({"id": format!("born-{n}"), "total": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // Killed the moment the last 201 is in: sooner than the "5 ms later" that must hold.
    server.child.start_kill().unwrap();
    within(server.child.wait()).await.unwrap();
    let server = start_server(data.path()).await;
    for n in 1..=5 {
        let task = poll(&client, &server, &format!("born-{n}")).await;
        assert_eq!(
            (task["status"].clone(), task["total"].clone()),
            (json!("pending"), json!(n)),
            "born-{n}"
        );
    }
}

#[tokio::test]
async fn one_data_directory_serves_one_server_until_it_dies() {
    let data = tempfile::tempdir().unwrap();
    let mut first = start_server(data.path()).await;

    let mut second = server_command(data.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = within(second.wait()).await.unwrap();
    assert_eq!(status.code(), Some(2), "a second server must not start");
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    let dir = data.path().display().to_string();
    assert!(
        stderr.contains("already using the data directory") && stderr.contains(&dir),
        "the refusal names the directory: {stderr}"
    );

    // The first one still serves, alone.
    let client = reqwest::Client::new();
    first
        .post(&client, "/api/tasks", json!({"id": "mine"}))
        .await;
    // A crash releases the lock: the kernel drops it with the process.
    first.signal("-KILL").await;
    let third = start_server(data.path()).await;
    assert_eq!(poll(&client, &third, "mine").await["status"], "pending");
}

/// The store's file locked by another connection for longer than the writer waits: the
/// ending is shown but not stored, so its producer hears `503`; the store keeps it and
/// stores it once the lock goes; meanwhile `/readyz` says so and new writes are refused.
#[tokio::test]
async fn an_ending_the_locked_store_could_not_write_is_kept_and_stored_later() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = start_server(data.path()).await;
    server
        .post(&client, "/api/tasks", json!({"id": "locked", "total": 2}))
        .await;
    server
        .post(
            &client,
            "/api/tasks/locked/progress",
            json!({"processed": 1}),
        )
        .await;
    server
        .post(&client, "/api/tasks", json!({"id": "other", "total": 9}))
        .await;
    let url = |path: &str| format!("{}{path}", server.base);
    let ready = |status: StatusCode| {
        let client = client.clone();
        let url = url("/readyz");
        async move {
            within(async {
                while client.get(&url).send().await.unwrap().status() != status {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
        }
    };
    ready(StatusCode::OK).await;

    // Another process's connection takes SQLite's write lock and holds it.
    let file = data.path().join(progress_hub::store::SQLITE_FILE_NAME);
    let holder = rusqlite::Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let ended = client
        .post(url("/api/tasks/locked/complete"))
        .json(&json!({"results": {"files": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ended.headers().contains_key("retry-after"));
    // Shown (a follower may have seen it), so it must not be forgotten.
    let shown = poll(&client, &server, "locked").await;
    assert_eq!(shown["status"], "completed");
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let metrics = client.get(url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let unwritten: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("progress_hub_store_unwritten_events "))
        .expect("the unwritten gauge")
        .parse()
        .unwrap();
    assert!(unwritten >= 1.0, "{unwritten} changes wait");
    // While changes wait unwritten, nothing new is acknowledged.
    let report = client
        .post(url("/api/tasks/other/progress"))
        .json(&json!({"processed": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = client
        .post(url("/api/tasks"))
        .json(&json!({"id": "during"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    ready(StatusCode::OK).await;
    // The producer's retry of the same ending is answered, not refused as a conflict.
    let retried = client
        .post(url("/api/tasks/locked/complete"))
        .json(&json!({"results": {"files": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried, shown);

    // Not even a clean stop: the ending was on disk already.
    server.signal("-KILL").await;
    let server = start_server(data.path()).await;
    assert_eq!(poll(&client, &server, "locked").await, shown);
    assert_eq!(
        poll(&client, &server, "during").await,
        json!({"error": "Task not found", "code": "task_not_found"}),
        "a refused creation was never made"
    );
    assert_eq!(
        poll(&client, &server, "other").await["processed"],
        0,
        "a refused report was never applied"
    );
}

#[tokio::test]
async fn a_long_poll_on_a_finished_task_answers_its_end_instead_of_not_modified() {
    let data = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = start_server(data.path()).await;
    server
        .post(&client, "/api/tasks", json!({"id": "over"}))
        .await;
    let end = server
        .post(&client, "/api/tasks/over/cancel", json!({}))
        .await;
    let seq = end["seq"].as_u64().unwrap();
    for since in [seq, seq + 5] {
        let response = within(
            client
                .get(format!(
                    "{}/api/index-progress/over?since={since}&wait=25",
                    server.base
                ))
                .header("If-None-Match", format!("\"{seq}\""))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "since={since}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, end);
    }
    // A plain conditional poll keeps the original contract.
    let plain = client
        .get(format!("{}/api/index-progress/over", server.base))
        .header("If-None-Match", format!("\"{seq}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::NOT_MODIFIED);
}

/// The data directory on a small tmpfs, filled up: the ending's write fails for want of
/// space. Shown, so kept and written once there is room again, whatever happens next.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_ending_a_full_disk_could_not_write_is_kept_and_stored_later() {
    use std::io::Write;
    let Some(disk) = crate::indexer_disk_full::Tmpfs::mount("4m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.path().join("data");
    let client = reqwest::Client::new();
    let mut server = start_server(&data).await;
    server
        .post(&client, "/api/tasks", json!({"id": "full", "total": 1}))
        .await;
    let url = |path: &str| format!("{}{path}", server.base);

    let filler_path = disk.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0x5a_u8; 16 * 1024];
    while filler
        .write_all(&chunk)
        .and_then(|_| filler.sync_data())
        .is_ok()
    {}
    drop(filler);

    // Results big enough that the write needs new pages on the full disk.
    let results = json!({"report": "x".repeat(48 * 1024)});
    let ended = client
        .post(url("/api/tasks/full/complete"))
        .json(&json!({ "results": results }))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::SERVICE_UNAVAILABLE);
    let shown = poll(&client, &server, "full").await;
    assert_eq!(shown["status"], "completed");
    let ready = client.get(url("/readyz")).send().await.unwrap().status();
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);

    std::fs::remove_file(&filler_path).unwrap();
    within(async {
        while client.get(url("/readyz")).send().await.unwrap().status() != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let retried = client
        .post(url("/api/tasks/full/complete"))
        .json(&json!({ "results": results }))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::OK);

    server.signal("-KILL").await;
    let server = start_server(&data).await;
    let after = poll(&client, &server, "full").await;
    assert_eq!(after, shown);
    assert_eq!(after["results"], results);
}

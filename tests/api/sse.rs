//! Server-Sent Events: headers, snapshot first, order under load, resume, 204, slow
//! readers, the all-tasks stream.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app, spawn_app_with, task_id, wait_until, within, SseClient};

#[tokio::test]
async fn stream_headers_retry_snapshot_then_changes_then_end() {
    let app = spawn_app().await;
    app.create_task("s1", 4).await;
    app.progress("s1", json!({"processed": 1, "current_file": "a.pdf"}))
        .await;
    let response = app.sse("/api/index-progress/s1/events", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(response.headers().get("content-encoding").is_none());
    let mut stream = SseClient::new(response);
    let first = stream.next_frame().await.unwrap();
    assert!(first.retry.is_some(), "the stream starts with retry:");
    let snapshot = stream.next_event().await.unwrap();
    assert_eq!(
        (snapshot.id, snapshot.event.as_deref()),
        (Some(2), Some("progress"))
    );
    let data = snapshot.json();
    assert_eq!(data["task_id"], "s1");
    assert_eq!(data["seq"], 2);
    assert_eq!(data["current_file"], "a.pdf");
    // `data` is the polling body plus task_id and seq: the same object.
    let polled: Value = app
        .get("/api/index-progress/s1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(polled, data);

    app.progress("s1", json!({"processed": 2})).await;
    app.complete("s1", json!({"ok": true})).await;
    let events = stream.collect_events().await;
    let names: Vec<_> = events.iter().map(|e| e.event.clone().unwrap()).collect();
    assert_eq!(names, ["progress", "completed"]);
    assert_eq!(events[1].id, Some(4));
    assert_eq!(events[1].json()["results"], json!({"ok": true}));
}

#[tokio::test]
async fn unknown_task_is_a_json_404_not_a_stream() {
    let app = spawn_app().await;
    let response = app.sse("/api/index-progress/missing/events", None).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    // The contract's body, with its machine-readable code beside it.
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"Task not found","code":"task_not_found"}"#
    );
    let response = app.sse("/api/index-progress/bad.id/events", None).await;
    assert_eq!(response.status(), 400);
}

/// Several producers write concurrently while hundreds of subscribers follow: each
/// subscriber sees strictly increasing seq ids and ends with the terminal event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_subscribers_see_ordered_events_under_concurrent_producers() {
    let app = spawn_app().await;
    app.create_task("busy", 1_000_000).await;
    let mut readers = Vec::new();
    for _ in 0..300 {
        let response = app.sse("/api/index-progress/busy/events", None).await;
        let mut stream = SseClient::new(response);
        readers.push(tokio::spawn(async move { stream.collect_events().await }));
    }
    wait_until(|| app.hub.listeners(&task_id("busy")) == 300).await;
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let (client, url) = (app.client.clone(), app.url("/api/tasks/busy/progress"));
        producers.push(tokio::spawn(async move {
            for n in 0..100u64 {
                let body = json!({"processed": p * 1000 + n, "current_file": format!("p{p}-{n}")});
                let response = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for producer in producers {
        within(producer).await.unwrap();
    }
    let done = app.complete("busy", json!({"files": 400})).await;
    let final_seq = done.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    for reader in readers {
        let events = within(reader).await.unwrap();
        let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase");
        assert_eq!(*ids.last().unwrap(), final_seq);
        assert_eq!(events.last().unwrap().event.as_deref(), Some("completed"));
        for event in &events {
            assert_eq!(event.json()["seq"], event.id.unwrap(), "id is the seq");
        }
    }
}

#[tokio::test]
async fn last_event_id_replays_what_was_missed() {
    let app = spawn_app().await;
    app.create_task("r", 100).await;
    for n in 1..=5 {
        app.progress("r", json!({"processed": n})).await;
    }
    // Header: seq is 6; after 3 come 4, 5, 6.
    let mut stream = SseClient::new(app.sse("/api/index-progress/r/events", Some(3)).await);
    for expected in 4..=6 {
        assert_eq!(stream.next_event().await.unwrap().id, Some(expected));
    }
    // Query parameter, for clients that cannot set headers.
    let response = app
        .get("/api/index-progress/r/events?last_event_id=5")
        .await;
    let mut stream = SseClient::new(response);
    assert_eq!(stream.next_event().await.unwrap().id, Some(6));
    // Not a number, or beyond the newest: counts as absent (the snapshot).
    for bad in ["abc", "99", "-1", ""] {
        let response = app
            .get(&format!("/api/index-progress/r/events?last_event_id={bad}"))
            .await;
        let mut stream = SseClient::new(response);
        assert_eq!(stream.next_event().await.unwrap().id, Some(6), "{bad}");
    }
}

#[tokio::test]
async fn a_client_that_has_the_terminal_event_gets_204() {
    let app = spawn_app().await;
    app.create_task("done", 1).await;
    let end: Value = app
        .complete("done", json!(null))
        .await
        .json()
        .await
        .unwrap();
    let final_seq = end["seq"].as_u64().unwrap();
    let response = app
        .sse("/api/index-progress/done/events", Some(final_seq))
        .await;
    assert_eq!(response.status(), 204);
    // One behind: the terminal event, then the end of the stream.
    let mut stream = SseClient::new(
        app.sse("/api/index-progress/done/events", Some(final_seq - 1))
            .await,
    );
    let events = stream.collect_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.as_deref(), Some("completed"));
    // No Last-Event-ID: the terminal snapshot alone.
    let events = SseClient::new(app.sse("/api/index-progress/done/events", None).await)
        .collect_events()
        .await;
    assert_eq!(
        events.iter().map(|e| e.id).collect::<Vec<_>>(),
        [Some(final_seq)]
    );
}

#[tokio::test]
async fn heartbeat_comments_keep_an_idle_stream_alive() {
    let app = spawn_app_with(|c| c.heartbeat_secs = 1).await;
    app.create_task("quiet", 1).await;
    let mut stream = SseClient::new(app.sse("/api/index-progress/quiet/events", None).await);
    stream.next_event().await.unwrap();
    let frame = stream.next_frame().await.unwrap();
    assert_eq!(frame.comment.as_deref(), Some("keep-alive"));
}

/// A subscriber that stops reading while thousands of updates flow never holds up the
/// producer; when it reads again it skips to the newest snapshot and still gets the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_resynced_and_never_slows_the_producer() {
    let app = spawn_app_with(|c| c.subscriber_buffer = 16).await;
    app.create_task("flood", 1_000_000).await;
    // A raw socket with a tiny receive buffer that reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(app.addr).await.unwrap();
    stalled
        .write_all(b"GET /api/index-progress/flood/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    wait_until(|| app.hub.listeners(&task_id("flood")) == 1).await;
    // The producer publishes ~8 MB of events, far more than any socket buffer holds. If
    // publishing waited for this reader, this would never finish.
    let end = app.flood_then_complete("flood", 4000).await;
    // Now read everything the stalled client was sent.
    let mut raw = Vec::new();
    within(async {
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = stalled.read(&mut chunk).await.unwrap();
            raw.extend_from_slice(&chunk[..n]);
            if n == 0 || raw.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    // Whole chunks, each a whole SSE frame: a write that stopped part-way through a
    // chunk must be finished before anything else goes out.
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let body = crate::raw::dechunk_strict(&raw[head_end + 4..]).expect("well-formed chunks");
    let text = String::from_utf8_lossy(&body);
    for frame in text.split_terminator("\n\n") {
        let lines: Vec<&str> = frame.lines().collect();
        let whole = matches!(
            lines[..],
            [id, event, data] if id.starts_with("id: ") && event.starts_with("event: ") && data.starts_with("data: {")
        );
        assert!(
            whole || frame.starts_with("retry: ") || frame.starts_with(':'),
            "{frame:.200}"
        );
    }
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase");
    assert_eq!(
        ids.last().copied(),
        end["seq"].as_u64(),
        "the terminal event arrives"
    );
    assert!(
        ids.len() < 4000,
        "a stalled reader skips; got {} events",
        ids.len()
    );
    assert!(text.contains("event: completed"));
    assert!(app.hub.stats().lag_resyncs.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn the_all_tasks_stream_shows_every_task() {
    let app = spawn_app().await;
    app.create_task("one", 1).await;
    app.create_task("finished", 1).await;
    app.complete("finished", json!(null)).await;
    let mut stream = SseClient::new(app.sse("/api/events", None).await);
    let first = stream.next_event().await.unwrap();
    assert_eq!(
        first.json()["task_id"],
        "one",
        "only unfinished tasks on connect"
    );
    app.create_task("two", 1).await;
    let created = stream.next_event().await.unwrap();
    assert_eq!(created.json()["task_id"], "two");
    assert!(created.id > first.id);
    // Resume from `first`: everything since, in order, finished tasks included.
    let mut resumed = SseClient::new(app.sse("/api/events", first.id).await);
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let e = resumed.next_event().await.unwrap();
        replayed.push((e.json()["task_id"].clone(), e.event.unwrap()));
    }
    let expected = [
        ("finished", "progress"),
        ("finished", "completed"),
        ("two", "progress"),
    ]
    .map(|(t, e)| (json!(t), e.to_string()));
    assert_eq!(replayed, expected);
}

#[tokio::test]
async fn a_restarted_server_resumes_streams_where_they_stopped() {
    let app = spawn_app().await;
    app.create_task("survivor", 10).await;
    for n in 1..=3 {
        app.progress("survivor", json!({"processed": n})).await;
    }
    let mut stream = SseClient::new(app.sse("/api/index-progress/survivor/events", None).await);
    let seen = stream.next_event().await.unwrap().id.unwrap();
    let app = app.restart().await;
    app.progress("survivor", json!({"processed": 4})).await;
    // The stored history replays what the client missed; seq continued where it stopped.
    let mut resumed = SseClient::new(
        app.sse("/api/index-progress/survivor/events", Some(seen - 1))
            .await,
    );
    assert_eq!(resumed.next_event().await.unwrap().id, Some(seen));
    assert_eq!(resumed.next_event().await.unwrap().id, Some(seen + 1));
    app.complete("survivor", json!({"n": 4})).await;
    let rest: Vec<u64> = resumed
        .collect_events()
        .await
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(rest, [seen + 2]);
}

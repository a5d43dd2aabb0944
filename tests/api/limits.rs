//! Every limit is hit and answered clearly (503/429 with `Retry-After`, close codes), and
//! what a stream held is freed when the stream goes.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app_with, within, SseClient, TestApp};
use crate::raw::{closed_by_server, connect, read_one, wait_for_metric};

const SSE_OPEN: &str = "progress_hub_connections{transport=\"sse\"}";
const WS_OPEN: &str = "progress_hub_connections{transport=\"ws\"}";

/// The answer of a request turned away by a limit: status, JSON error, Retry-After.
async fn assert_turned_away(response: reqwest::Response, status: u16, mentions: &str) {
    assert_eq!(response.status(), status);
    let retry: u32 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    let body: Value = response.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(mentions), "{message:?}");
}

async fn ws_status(app: &TestApp, path: &str) -> u16 {
    match tokio_tungstenite::connect_async(format!("ws://{}{path}", app.addr)).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("WebSocket: {other}"),
    }
}

#[tokio::test]
async fn subscribers_per_task_get_503_until_a_place_is_freed() {
    let app = spawn_app_with(|c| {
        c.max_subscribers_per_task = 2;
        // Through hyper (`--fast-paths off`) a client that left is noticed when a write
        // fails: at the second heartbeat after it left.
        c.heartbeat_secs = 1;
    })
    .await;
    app.create_task("busy", 10).await;
    app.create_task("quiet", 10).await;
    let first = app.sse("/api/index-progress/busy/events", None).await;
    let second = app.sse("/api/index-progress/busy/events", None).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let third = app.sse("/api/index-progress/busy/events", None).await;
    assert_turned_away(third, 503, "Too many subscribers for this task").await;
    assert_eq!(ws_status(&app, "/api/index-progress/busy/ws").await, 503);
    let long_poll = app.get("/api/index-progress/busy?since=1&wait=10").await;
    assert_turned_away(long_poll, 503, "Too many subscribers").await;
    // Plain polls hold nothing and other tasks have their own places.
    assert_eq!(app.get("/api/index-progress/busy").await.status(), 200);
    let other = app.sse("/api/index-progress/quiet/events", None).await;
    assert_eq!(other.status(), 200);
    wait_for_metric(&app, SSE_OPEN, |n| n == 3.0).await;

    drop(first);
    wait_for_metric(&app, SSE_OPEN, |n| n == 2.0).await;
    let again = app.sse("/api/index-progress/busy/events", None).await;
    assert_eq!(again.status(), 200);
    let rejected = crate::raw::metric(
        &app,
        "progress_hub_limit_rejections_total{limit=\"subscribers_per_task\"}",
    )
    .await;
    assert_eq!(rejected, 3.0);
}

#[tokio::test]
async fn subscribers_in_total_count_every_transport() {
    let app = spawn_app_with(|c| c.max_subscribers = 3).await;
    for id in ["a", "b", "c"] {
        app.create_task(id, 10).await;
    }
    let _sse = app.sse("/api/index-progress/a/events", None).await;
    let _all = app.sse("/api/events", None).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/index-progress/b/ws", app.addr))
            .await
            .unwrap();
    wait_for_metric(&app, WS_OPEN, |n| n == 1.0).await;

    let refused = app.get("/api/index-progress/c?since=1&wait=1").await;
    assert_turned_away(refused, 503, "Too many subscribers").await;
    let refused = app.sse("/api/events", None).await;
    assert_turned_away(refused, 503, "Too many subscribers").await;

    socket.close(None).await.unwrap();
    wait_for_metric(&app, WS_OPEN, |n| n == 0.0).await;
    // The freed place takes a long poll, which gives it back when it answers.
    let answered = app.get("/api/index-progress/c?since=1&wait=0.05").await;
    assert_eq!(answered.status(), 200);
    let answered = app.get("/api/index-progress/c?since=1&wait=0.05").await;
    assert_eq!(answered.status(), 200);
}

fn token_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("tokens");
    std::fs::write(&path, text).unwrap();
    path
}

async fn create_as(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/tasks"))
        .bearer_auth(token)
        .json(&json!({ "id": id }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn unfinished_tasks_per_token_get_429_until_one_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(&dir, "alpha-secret alpha\nbeta-secret beta\n");
    let app = spawn_app_with(|c| {
        c.api_token_file = Some(file);
        c.max_unfinished_tasks_per_token = 2;
    })
    .await;
    for id in ["a1", "a2"] {
        assert_eq!(create_as(&app, "alpha-secret", id).await.status(), 201);
    }
    let refused = create_as(&app, "alpha-secret", "a3").await;
    assert_turned_away(refused, 429, "unfinished").await;
    // Another token has its own allowance.
    assert_eq!(create_as(&app, "beta-secret", "b1").await.status(), 201);
    // Finishing a task gives its place back.
    let done = app
        .client
        .post(app.url("/api/tasks/a1/complete"))
        .header("content-type", "application/json")
        .bearer_auth("alpha-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(create_as(&app, "alpha-secret", "a3").await.status(), 201);
    assert!(app
        .get("/api/index-progress/a3")
        .await
        .status()
        .is_success());
}

#[tokio::test]
async fn tasks_in_total_get_429() {
    let app = spawn_app_with(|c| c.max_tasks = 2).await;
    app.create_task("one", 1).await;
    app.create_task("two", 1).await;
    app.complete("one", json!(null)).await;
    // Finished tasks are held (and count) until retention removes them.
    let refused = app.post("/api/tasks", json!({"id": "three"})).await;
    assert_turned_away(refused, 429, "Too many tasks").await;
    assert_eq!(app.get("/api/index-progress/three").await.status(), 404);
}

#[tokio::test]
async fn streams_end_after_their_maximum_life_and_resume() {
    let app = spawn_app_with(|c| c.max_stream_secs = 1).await;
    app.create_task("long", 100).await;
    app.progress("long", json!({"processed": 1})).await;
    let opened = Instant::now();
    let mut stream = SseClient::new(app.sse("/api/index-progress/long/events", None).await);
    let events = stream.collect_events().await;
    let lived = opened.elapsed();
    // Ended by the server, cleanly, without a terminal event, in the last tenth of its life.
    assert!(lived.as_millis() >= 900, "ended after {lived:?}");
    let last = events.last().expect("the snapshot").id.unwrap();
    assert_eq!(last, 2);
    assert!(events
        .iter()
        .all(|e| e.event.as_deref() == Some("progress")));

    app.progress("long", json!({"processed": 2})).await;
    let mut resumed = SseClient::new(app.sse("/api/index-progress/long/events", Some(last)).await);
    let next = resumed.next_event().await.unwrap();
    assert_eq!(next.id, Some(3), "resumes right after the last id it had");

    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/index-progress/long/ws", app.addr))
            .await
            .unwrap();
    let close = within(async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert!(close.reason.contains("lifetime"), "{}", close.reason);
}

#[tokio::test]
async fn websocket_messages_over_the_limit_close_the_socket() {
    let app = spawn_app_with(|c| c.ws_max_message_bytes = 256).await;
    app.create_task("w", 1).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/index-progress/w/ws", app.addr))
            .await
            .unwrap();
    // Small messages are read and ignored.
    socket
        .send(Message::Text("x".repeat(200).into()))
        .await
        .unwrap();
    socket
        .send(Message::Text("y".repeat(4000).into()))
        .await
        .unwrap();
    let code = within(async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(CloseCode::Size));
    wait_for_metric(&app, WS_OPEN, |n| n == 0.0).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.header_timeout_secs = 1).await;
    let mut stream = connect(app.addr).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_one(&mut stream).await.status, 200);
    }
    // Kept alive for the second request, then cut once idle past the header timeout.
    let idle = Instant::now();
    assert!(
        closed_by_server(&mut stream).await,
        "idle connection kept open"
    );
    assert!(
        idle.elapsed().as_millis() >= 900,
        "closed after {:?}",
        idle.elapsed()
    );
}

/// Clients that stop reading for good, each with a tiny receive buffer: a task's SSE
/// stream, the all-tasks stream and a WebSocket. Once a socket has taken nothing for
/// `--send-timeout-secs` the server gives up on it: the connection is closed and its
/// subscriber place freed, while the task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_for_good_are_cut_off_after_the_send_timeout() {
    const ALL_OPEN: &str = "progress_hub_connections{transport=\"all_events\"}";
    let app = spawn_app_with(|c| {
        c.send_timeout_secs = 1;
        c.subscriber_buffer = 16;
    })
    .await;
    app.create_task("stuck", 1_000_000).await;
    let stalled = |request: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = within(socket.connect(app.addr)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    };
    let mut streams = vec![
        stalled("GET /api/index-progress/stuck/events HTTP/1.1\r\nHost: localhost\r\n\r\n").await,
        stalled("GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n").await,
        stalled(
            "GET /api/index-progress/stuck/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await,
    ];
    for series in [SSE_OPEN, ALL_OPEN, WS_OPEN] {
        wait_for_metric(&app, series, |n| n == 1.0).await;
    }
    // About 8 MB to each, far more than the socket buffers hold.
    app.progress("stuck", json!({"processed": 1})).await;
    let padding = "x".repeat(2000);
    within(async {
        for n in 2..=4000 {
            let body = json!({"processed": n, "detail": {"pad": padding}});
            assert_eq!(app.progress("stuck", body).await.status(), 200);
        }
    })
    .await;
    for series in [SSE_OPEN, ALL_OPEN, WS_OPEN] {
        wait_for_metric(&app, series, |n| n == 0.0).await;
    }
    assert_eq!(app.hub.listeners(&crate::helpers::task_id("stuck")), 0);
    for stream in &mut streams {
        // What the buffers held, then the end.
        assert!(closed_by_server(stream).await, "still open");
    }
    // The task goes on for everyone else.
    let answer = app.progress("stuck", json!({"processed": 4001})).await;
    assert_eq!(answer.status(), 200);
}

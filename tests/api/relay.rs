//! The relay's own socket writers under random pressure: a client with a small receive
//! buffer that reads in random pieces at random moments while a producer publishes events
//! of random sizes. Writes stop part-way through frames, queues overflow and skip ahead;
//! whatever happens, the stream must be valid chunked HTTP of whole SSE frames with
//! increasing ids, ending with the terminal event, then the last chunk, then the close.
//! The same runs with the fast paths off (hyper writes), the reference. The all-tasks
//! stream (`GET /api/events`) goes through the same writer and the same checks. (A queue
//! that overflows and skips ahead needs more than the kernel's send buffer, megabytes:
//! the stalled-reader tests in `sse.rs` and `ws.rs` cover that.)

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app_with, task_id, wait_until, within, TestApp};
use crate::raw::wait_for_metric;
use progress_hub::config::Switch;

#[derive(Debug, Clone)]
struct Pressure {
    /// Sizes of the published events' padding.
    sizes: Vec<usize>,
    /// Pieces the client reads at a time, in turn.
    reads: Vec<usize>,
    /// Times the client yields between reads, in turn.
    pauses: Vec<u8>,
    /// The client reads nothing until this share (in percent) of the events is out.
    stall: usize,
}

fn pressure() -> impl Strategy<Value = Pressure> {
    (
        proptest::collection::vec(0usize..2000, 20..300),
        // At least 64 bytes a read: that still cuts frames (up to 2 KB) anywhere, while
        // 1-byte reads of 600 KB with yields between them took longer than the test's
        // bound in a debug build on a busy machine, without the server being slow.
        proptest::collection::vec(64usize..9000, 1..6),
        proptest::collection::vec(0u8..50, 1..6),
        0usize..100,
    )
        .prop_map(|(sizes, reads, pauses, stall)| Pressure {
            sizes,
            reads,
            pauses,
            stall,
        })
}

/// A client with a small receive buffer, connected to `app`, that has sent `request`.
async fn small_reader(app: &TestApp, request: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // Small, but not below the loopback MSS (64 KiB): a window smaller than one segment
    // is announced as zero, and the transfer then waits on the kernel's zero-window probes.
    socket.set_recv_buffer_size(128 * 1024).unwrap();
    let mut client = socket.connect(app.addr).await.unwrap();
    client.write_all(request.as_bytes()).await.unwrap();
    client
}

/// Reads `client` as `case` says once `stall_until` events are out (`published`), until
/// the server closes or ends the body; tells `completed` once the terminal event came.
fn read_under_pressure(
    mut client: tokio::net::TcpStream,
    case: &Pressure,
    mut published: tokio::sync::watch::Receiver<usize>,
    completed: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let case = case.clone();
    let stall_until = case.sizes.len() * case.stall / 100;
    tokio::spawn(async move {
        let _ = published.wait_for(|n| *n >= stall_until).await;
        let mut completed = Some(completed);
        let mut raw = Vec::new();
        let mut buffer = vec![0u8; 9000];
        for turn in 0.. {
            for _ in 0..case.pauses[turn % case.pauses.len()] {
                tokio::task::yield_now().await;
            }
            let want = case.reads[turn % case.reads.len()];
            let n = client.read(&mut buffer[..want]).await.unwrap();
            raw.extend_from_slice(&buffer[..n]);
            // A frame is one chunk, so its lines arrive unbroken by size lines.
            if raw
                .windows(b"event: completed\n".len())
                .any(|w| w == b"event: completed\n")
            {
                if let Some(completed) = completed.take() {
                    let _ = completed.send(());
                }
            }
            // The last chunk (through hyper the connection stays open after it).
            if n == 0 || raw.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
        }
        raw
    })
}

/// Publishes `case`'s events on task `pressed`, then completes it; returns its end.
async fn publish(
    app: &TestApp,
    case: &Pressure,
    published: &tokio::sync::watch::Sender<usize>,
) -> serde_json::Value {
    for (n, size) in case.sizes.iter().enumerate() {
        let body = json!({"processed": n + 1, "detail": {"pad": "x".repeat(*size)}});
        assert_eq!(app.progress("pressed", body).await.status(), 200);
        published.send_replace(n + 1);
    }
    app.complete("pressed", json!({"n": case.sizes.len()}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()
}

/// The SSE frames of a whole chunked response: checks that the response is chunked, its
/// body strictly whole chunks of whole SSE frames; returns each event's id, name and data.
fn frames(raw: &[u8]) -> Vec<(u64, String, serde_json::Value)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let body = crate::raw::dechunk_strict(&raw[head_end + 4..]).expect("well-formed chunks");
    let text = String::from_utf8(body).expect("UTF-8");
    let mut events = Vec::new();
    for frame in text.split_terminator("\n\n") {
        let lines: Vec<&str> = frame.lines().collect();
        match lines[..] {
            [id, event, data]
                if id.starts_with("id: ")
                    && event.starts_with("event: ")
                    && data.starts_with("data: {") =>
            {
                let json: serde_json::Value = serde_json::from_str(&data[6..]).expect("JSON");
                events.push((
                    id[4..].parse::<u64>().unwrap(),
                    event[7..].to_string(),
                    json,
                ));
            }
            _ => assert!(
                frame.starts_with("retry: ") || frame.starts_with(':'),
                "{frame:.200}"
            ),
        }
    }
    let ids: Vec<u64> = events.iter().map(|(id, ..)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase");
    events
}

/// Runs one case; returns the ids the client saw.
async fn run(fast_paths: Switch, case: &Pressure) -> Vec<u64> {
    let app = spawn_app_with(|c| {
        c.fast_paths = fast_paths;
        c.subscriber_buffer = 8;
    })
    .await;
    app.create_task("pressed", 1_000_000).await;
    let client = small_reader(
        &app,
        "GET /api/index-progress/pressed/events HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    wait_until(|| app.hub.listeners(&task_id("pressed")) == 1).await;
    let (published, seen) = tokio::sync::watch::channel(0usize);
    let (completed, _) = tokio::sync::oneshot::channel();
    let reader = read_under_pressure(client, case, seen, completed);
    let end = publish(&app, case, &published).await;
    let events = frames(&within(reader).await.unwrap());
    for (id, _, json) in &events {
        assert_eq!(
            json["seq"].as_u64(),
            Some(*id),
            "a task's stream is numbered by seq"
        );
    }
    let (id, event, _) = events.last().expect("events");
    assert_eq!(Some(*id), end["seq"].as_u64(), "the terminal last");
    assert_eq!(event, "completed");
    events.iter().map(|(id, ..)| *id).collect()
}

/// Runs one case on the all-tasks stream, which does not end with a task: the server is
/// stopped once the terminal event is through, which ends the body. Returns the task's
/// seqs the client saw.
async fn run_all(fast_paths: Switch, case: &Pressure) -> Vec<u64> {
    let app = spawn_app_with(|c| {
        c.fast_paths = fast_paths;
        c.subscriber_buffer = 8;
    })
    .await;
    app.create_task("pressed", 1_000_000).await;
    let client = small_reader(&app, "GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    wait_for_metric(
        &app,
        "progress_hub_connections{transport=\"all_events\"}",
        |n| n == 1.0,
    )
    .await;
    let (published, seen) = tokio::sync::watch::channel(0usize);
    let (completed, terminal_read) = tokio::sync::oneshot::channel();
    let reader = read_under_pressure(client, case, seen, completed);
    let end = publish(&app, case, &published).await;
    within(terminal_read).await.expect("the terminal event");
    let (raw, ()) = tokio::join!(within(reader), app.stop());
    let events = frames(&raw.unwrap());
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, _, json)| {
            assert_eq!(json["task_id"], "pressed");
            json["seq"].as_u64().expect("a seq")
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs must increase");
    let (_, event, json) = events.last().expect("events");
    assert_eq!(json["seq"], end["seq"], "the terminal last");
    assert_eq!(event, "completed");
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_writers_keep_whole_frames_in_order_under_random_pressure() {
    let mut runner = TestRunner::new(ProptestConfig::default());
    let strategy = pressure();
    for _ in 0..6 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let fast = run(Switch::On, &case).await;
        let reference = run(Switch::Off, &case).await;
        // Both end on the same terminal event (what was skipped may differ).
        assert_eq!(fast.last(), reference.last(), "{case:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_tasks_stream_keeps_whole_frames_in_order_under_random_pressure() {
    let mut runner = TestRunner::new(ProptestConfig::default());
    let strategy = pressure();
    for _ in 0..4 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let fast = run_all(Switch::On, &case).await;
        let reference = run_all(Switch::Off, &case).await;
        assert_eq!(fast.last(), reference.last(), "{case:?}");
    }
}

//! Event streams that the server takes over from hyper once their headers are out
//! (`src/transport/handoff.rs`): the bytes on the wire must be a correct chunked HTTP/1.1
//! response that ends after the terminal event, on shutdown, and for HTTP/1.0 clients
//! that take the ordinary path. Reads raw sockets, since the point is the exact framing.

use progress_hub::hub::{Hub, NewTask, Outcome, ProgressUpdate, TaskId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use progress_hub::config::Switch;

use crate::helpers::{spawn_app, spawn_app_with, task_id, within};

fn task(hub: &Hub, id: &str) -> TaskId {
    let id = task_id(id);
    hub.create(NewTask {
        id: Some(id.clone()),
        total: 10,
        ..NewTask::default()
    })
    .expect("task created");
    id
}

/// Opens an event stream and reads its response head.
async fn open(
    addr: std::net::SocketAddr,
    path: &str,
    version: &str,
) -> (TcpStream, String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} {version}\r\nHost: localhost\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut buf = Vec::new();
    let end = within(async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    (socket, head, buf[end..].to_vec())
}

/// Reads until the server closes the connection.
async fn read_to_end(mut socket: TcpStream, mut body: Vec<u8>) -> Vec<u8> {
    within(socket.read_to_end(&mut body))
        .await
        .expect("read body");
    body
}

/// Decodes a complete chunked body; panics on bad framing or a missing last chunk.
fn dechunk(mut raw: &[u8]) -> String {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).expect("ascii"), 16)
            .expect("hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            assert_eq!(raw, b"\r\n", "nothing may follow the last chunk");
            return String::from_utf8(out).expect("utf-8 body");
        }
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "chunk ends with CRLF");
        raw = &raw[size + 2..];
    }
}

fn event_ids(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("id: ").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn handed_off_stream_is_valid_chunked_http_and_ends_after_the_terminal_event() {
    // The hand-off itself: with the fast paths on whatever the environment says.
    let server = spawn_app_with(|c| c.fast_paths = Switch::On).await;
    let id = task(&server.hub, "handoff-1");
    let path = format!("/api/index-progress/{id}/events");
    let (socket, head, rest) = open(server.addr, &path, "HTTP/1.1").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("connection: close"), "{head}");

    let update = ProgressUpdate {
        processed: Some(4),
        ..ProgressUpdate::default()
    };
    server.hub.progress(&id, update).expect("progress");
    server
        .hub
        .finish(&id, Outcome::Completed { results: None })
        .await
        .expect("complete");

    let body = dechunk(&read_to_end(socket, rest).await);
    assert!(body.starts_with("retry: "), "{body}");
    assert_eq!(event_ids(&body), ["1", "2", "3"], "{body}");
    assert!(body.contains("event: completed\n"), "{body}");
    assert!(body.ends_with("\n\n"), "{body}");

    server.stop().await;
}

#[tokio::test]
async fn handed_off_stream_ends_cleanly_on_shutdown() {
    let server = spawn_app().await;
    let id = task(&server.hub, "handoff-2");
    let path = format!("/api/index-progress/{id}/events");
    let (socket, head, rest) = open(server.addr, &path, "HTTP/1.1").await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    let (body, ()) = tokio::join!(read_to_end(socket, rest), server.stop());
    // Shutdown may come before or after the snapshot went out; either way the body is
    // complete (`dechunk` checks the last chunk) and the client can resume elsewhere.
    let body = dechunk(&body);
    assert!(body.starts_with("retry: "), "{body}");
    assert!(event_ids(&body).len() <= 1, "{body}");
}

#[tokio::test]
async fn http_1_0_streams_through_hyper_until_the_terminal_event() {
    let server = spawn_app().await;
    let id = task(&server.hub, "handoff-3");
    let path = format!("/api/index-progress/{id}/events");
    let (socket, head, rest) = open(server.addr, &path, "HTTP/1.0").await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");

    server
        .hub
        .finish(&id, Outcome::Cancelled)
        .await
        .expect("cancel");
    let body = String::from_utf8(read_to_end(socket, rest).await).expect("utf-8");
    assert_eq!(event_ids(&body), ["1", "2"], "{body}");
    assert!(body.contains("event: cancelled\n"), "{body}");

    server.stop().await;
}

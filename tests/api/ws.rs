//! WebSocket: the same events as SSE in text frames, resume, close codes.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use std::sync::atomic::Ordering;

use crate::helpers::{spawn_app, spawn_app_with, task_id, wait_until, within};
use crate::raw::{closed_by_server, connect as tcp_connect, wait_for_metric};

const WS_OPEN: &str = "progress_hub_connections{transport=\"ws\"}";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: std::net::SocketAddr, path: &str) -> Socket {
    let (socket, response) = within(tokio_tungstenite::connect_async(format!(
        "ws://{addr}{path}"
    )))
    .await
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

/// Reads text frames as JSON until the server closes; returns them and the close code.
async fn read_until_close(socket: &mut Socket) -> (Vec<Value>, Option<CloseCode>) {
    let mut events = Vec::new();
    loop {
        match within(socket.next()).await {
            Some(Ok(Message::Text(text))) => events.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return (events, frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("WebSocket error: {error}"),
            None => return (events, None),
        }
    }
}

#[tokio::test]
async fn websocket_sends_the_same_events_and_closes_with_1000() {
    let app = spawn_app().await;
    app.create_task("w", 3).await;
    let mut socket = connect(app.addr, "/api/index-progress/w/ws").await;
    wait_until(|| app.hub.listeners(&task_id("w")) == 1).await;
    app.progress("w", json!({"processed": 1, "current_file": "a.txt"}))
        .await;
    app.progress("w", json!({"processed": 2})).await;
    app.complete("w", json!({"files": 3})).await;
    let (events, code) = read_until_close(&mut socket).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["progress", "progress", "progress", "completed"]);
    assert_eq!(events[1]["current_file"], "a.txt");
    assert_eq!(events[3]["results"], json!({"files": 3}));
    assert_eq!(code, Some(CloseCode::Normal));
    // Each frame is the polled object plus `event`.
    let polled: Value = app.get("/api/index-progress/w").await.json().await.unwrap();
    assert_eq!(polled, events[3]);
}

#[tokio::test]
async fn websocket_resumes_after_last_event_id() {
    let app = spawn_app().await;
    app.create_task("wr", 10).await;
    for n in 1..=4 {
        app.progress("wr", json!({"processed": n})).await;
    }
    let mut socket = connect(app.addr, "/api/index-progress/wr/ws?last_event_id=3").await;
    app.post("/api/tasks/wr/cancel", json!({})).await;
    let (events, code) = read_until_close(&mut socket).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6]);
    assert_eq!(events[2]["event"], "cancelled");
    assert_eq!(code, Some(CloseCode::Normal));
    // Already holding the terminal event: closed at once, nothing sent.
    let mut socket = connect(app.addr, "/api/index-progress/wr/ws?last_event_id=6").await;
    let (events, code) = read_until_close(&mut socket).await;
    assert!(events.is_empty());
    assert_eq!(code, Some(CloseCode::Normal));
}

#[tokio::test]
async fn websocket_answers_client_pings_and_ignores_client_text() {
    let app = spawn_app().await;
    app.create_task("wp", 1).await;
    let mut socket = connect(app.addr, "/api/index-progress/wp/ws").await;
    socket
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    socket.send(Message::Text("hello".into())).await.unwrap();
    let mut got_pong = false;
    let mut got_snapshot = false;
    while !(got_pong && got_snapshot) {
        match within(socket.next()).await {
            Some(Ok(Message::Pong(payload))) => got_pong = &payload[..] == b"hi",
            Some(Ok(Message::Text(_))) => got_snapshot = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_unknown_task_is_404_before_the_upgrade() {
    let app = spawn_app().await;
    let error =
        tokio_tungstenite::connect_async(format!("ws://{}/api/index-progress/nope/ws", app.addr))
            .await
            .expect_err("no upgrade for an unknown task");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 404),
        other => panic!("unexpected {other}"),
    }
    // A plain GET on the WebSocket route is told to upgrade.
    app.create_task("plain", 1).await;
    let response = app.get("/api/index-progress/plain/ws").await;
    assert_eq!(response.status(), 426);
    // What to upgrade to, and the one version spoken (RFC 6455 §4.4).
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
}

/// Sends an opening handshake by hand; returns the socket, the `101`'s head and what
/// came after it.
async fn raw_upgrade(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
) -> (TcpStream, String, Vec<u8>) {
    let mut stream = tcp_connect(addr).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            return (stream, head, raw[end + 4..].to_vec());
        }
        let n = within(stream.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "closed before the head: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one unmasked server frame (payload under 64 KiB): opcode and payload.
async fn read_frame(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> (u8, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if buffered.len() >= 2 {
            let (len, start) = match buffered[1] {
                126 if buffered.len() >= 4 => {
                    (u16::from_be_bytes([buffered[2], buffered[3]]) as usize, 4)
                }
                126 => (usize::MAX, 0),
                len => (len as usize, 2),
            };
            assert_eq!(buffered[1] & 0x80, 0, "server frames are never masked");
            if len != usize::MAX && buffered.len() >= start + len {
                let opcode = buffered[0] & 0x0f;
                assert_eq!(buffered[0] & 0xf0, 0x80, "final, no reserved bits");
                let payload = buffered[start..start + len].to_vec();
                buffered.drain(..start + len);
                return (opcode, payload);
            }
        }
        let n = within(stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "closed in the middle of a frame");
        buffered.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn websocket_handshake_follows_rfc_6455_and_a_bad_frame_closes_1002() {
    let app = spawn_app().await;
    app.create_task("raw", 2).await;
    // The example key of RFC 6455 §1.3, and the accept value it gives there.
    let (mut stream, head, mut buffered) = raw_upgrade(
        app.addr,
        "/api/index-progress/raw/ws",
        "dGhlIHNhbXBsZSBub25jZQ==",
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("\r\nupgrade: websocket"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade"), "{head}");
    // The snapshot, as a text frame.
    let (opcode, payload) = read_frame(&mut stream, &mut buffered).await;
    assert_eq!(opcode, 1);
    let snapshot: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(snapshot["seq"], 1);
    assert_eq!(snapshot["event"], "progress");
    // A client frame without a mask is not WebSocket: close 1002, then the socket ends
    // (after waiting briefly for a close that this client never sends).
    stream.write_all(&[0x81, 0x01, b'x']).await.unwrap();
    let (opcode, payload) = read_frame(&mut stream, &mut buffered).await;
    assert_eq!(opcode, 8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    assert!(closed_by_server(&mut stream).await);
    wait_for_metric(&app, WS_OPEN, |n| n == 0.0).await;
    wait_until(|| app.hub.listeners(&task_id("raw")) == 0).await;

    // A key that is not 16 bytes in base64 is no handshake.
    let mut stream = tcp_connect(app.addr).await;
    stream
        .write_all(
            b"GET /api/index-progress/raw/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let response = crate::raw::read_to_close(&mut stream)
        .await
        .expect("a response");
    assert_eq!(response.status, 426);
}

#[tokio::test]
async fn a_client_that_closes_first_gets_its_code_back_and_frees_its_place() {
    let app = spawn_app().await;
    app.create_task("bye", 2).await;
    let mut socket = connect(app.addr, "/api/index-progress/bye/ws").await;
    assert!(matches!(
        within(socket.next()).await,
        Some(Ok(Message::Text(_)))
    ));
    wait_for_metric(&app, WS_OPEN, |n| n == 1.0).await;
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "done watching".into(),
        }))
        .await
        .unwrap();
    let answer = loop {
        match within(socket.next()).await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected the server's close, got {other:?}"),
        }
    };
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Library(4000)));
    // Then the server closes the connection.
    assert!(within(socket.next()).await.is_none());
    wait_for_metric(&app, WS_OPEN, |n| n == 0.0).await;
    wait_until(|| app.hub.listeners(&task_id("bye")) == 0).await;
    // The task goes on for everyone else.
    app.progress("bye", json!({"processed": 1})).await;
}

#[tokio::test]
async fn a_stalled_websocket_reader_is_resynced_with_whole_frames() {
    let app = spawn_app_with(|c| c.subscriber_buffer = 16).await;
    app.create_task("wflood", 1_000_000).await;
    // A client with a tiny receive buffer that reads nothing after the handshake: the
    // server's writes stop part-way through frames, and its queue overflows.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut stalled, _) = within(tokio_tungstenite::client_async(
        "ws://localhost/api/index-progress/wflood/ws",
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    ))
    .await
    .expect("WebSocket handshake");
    wait_until(|| app.hub.listeners(&task_id("wflood")) == 1).await;
    // About 8 MB of events, far more than the socket buffers hold; publishing must not
    // wait for this reader.
    let end = app.flood_then_complete("wflood", 4000).await;
    // Every frame read afterwards parses (a frame cut by the overflow would not), in
    // order, up to the terminal event and a close 1000.
    let (events, code) = read_until_close(&mut stalled).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs must increase");
    assert_eq!(seqs.last().copied(), end["seq"].as_u64());
    assert_eq!(events.last().unwrap()["event"], "completed");
    assert!(
        seqs.len() < 4000,
        "a stalled reader skips; got {}",
        seqs.len()
    );
    assert_eq!(code, Some(CloseCode::Normal));
    assert!(app.hub.stats().lag_resyncs.load(Ordering::Relaxed) >= 1);
}

/// A client frame, masked as clients send them; `len` overrides the length written in
/// the head (for heads that lie).
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0xa1, 0xb2, 0xc3, 0xd4];
    let mut frame = vec![b0];
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len if len <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An upgraded socket on a fresh task `id`, its snapshot frame already read.
async fn upgraded(app: &crate::helpers::TestApp, id: &str) -> (TcpStream, Vec<u8>) {
    app.create_task(id, 2).await;
    let path = format!("/api/index-progress/{id}/ws");
    let (mut stream, head, mut buffered) =
        raw_upgrade(app.addr, &path, "dGhlIHNhbXBsZSBub25jZQ==").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (opcode, _) = read_frame(&mut stream, &mut buffered).await;
    assert_eq!(opcode, 1, "the snapshot first");
    (stream, buffered)
}

/// Reads frames until a close (within the test timeout, heartbeats or not); returns its
/// code.
async fn close_code(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> u16 {
    within(async {
        loop {
            let (opcode, payload) = read_frame(stream, buffered).await;
            if opcode == 8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    })
    .await
}

#[tokio::test]
async fn text_that_is_not_utf8_and_a_close_reason_that_is_not_fail_with_1007() {
    let app = spawn_app().await;
    for (id, frame) in [
        ("text", masked(0x81, b"ok \xff")),
        ("fragments", {
            // A character cut between fragments is fine; one never finished is not.
            let mut f = masked(0x01, b"\xe2\x82");
            f.extend(masked(0x80, b"\xac \xe2"));
            f
        }),
        ("reason", masked(0x88, b"\x03\xe8bye \xc3")),
    ] {
        let (mut stream, mut buffered) = upgraded(&app, id).await;
        stream.write_all(&frame).await.unwrap();
        assert_eq!(close_code(&mut stream, &mut buffered).await, 1007, "{id}");
        // Our close frame answers theirs: the server ends the connection.
        let _ = stream.write_all(&masked(0x88, b"\x03\xef")).await;
        assert!(closed_by_server(&mut stream).await, "{id}");
    }
}

#[tokio::test]
async fn a_64_bit_length_with_its_top_bit_set_fails_with_1002() {
    let app = spawn_app().await;
    let (mut stream, mut buffered) = upgraded(&app, "huge").await;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(0x8000_0000_0000_0010u64).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&frame).await.unwrap();
    assert_eq!(close_code(&mut stream, &mut buffered).await, 1002);
    assert!(closed_by_server(&mut stream).await);
}

#[tokio::test]
async fn after_a_1009_the_rest_of_the_message_is_skipped_and_the_socket_ends_cleanly() {
    let app = spawn_app().await;
    let (mut stream, mut buffered) = upgraded(&app, "big").await;
    // A message far over the limit (4 KiB) whose payload, read as frames, would be
    // unmasked frames: a protocol error, and unread bytes when the socket closes.
    let message = masked(0x82, &[0xa1; 100 * 1024]);
    within(stream.write_all(&message)).await.unwrap();
    assert_eq!(close_code(&mut stream, &mut buffered).await, 1009);
    // The server reads on until the client's answer: closing with unread bytes would
    // reset the connection, and this write or the read below would fail.
    let answer = stream.write_all(&masked(0x88, b"\x03\xf1")).await;
    assert!(
        answer.is_ok(),
        "the server reset the connection: {answer:?}"
    );
    // Then a plain end of stream, not a reset.
    let mut rest = [0u8; 1024];
    match within(stream.read(&mut rest)).await {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes after the close frame"),
        Err(error) => panic!("the connection ended with {error}"),
    }
}

#[tokio::test]
async fn a_burst_of_pings_queues_one_pong_that_answers_the_newest() {
    let app = spawn_app().await;
    let (mut stream, mut buffered) = upgraded(&app, "pings").await;
    // 10,000 pings (100 KB) in one write, each carrying its number.
    const PINGS: u32 = 10_000;
    let burst: Vec<u8> = (0..PINGS)
        .flat_map(|n| masked(0x89, &n.to_be_bytes()))
        .collect();
    stream.write_all(&burst).await.unwrap();
    let mut pongs = 0u32;
    loop {
        let (opcode, payload) = read_frame(&mut stream, &mut buffered).await;
        if opcode != 0xA {
            continue;
        }
        pongs += 1;
        if payload == (PINGS - 1).to_be_bytes() {
            break;
        }
    }
    // One pong per read of the socket at most, not one per ping.
    assert!(pongs < PINGS / 10, "{pongs} pongs for {PINGS} pings");
    stream.write_all(&masked(0x88, b"\x03\xe8")).await.unwrap();
    assert_eq!(close_code(&mut stream, &mut buffered).await, 1000);
    assert!(closed_by_server(&mut stream).await);
}

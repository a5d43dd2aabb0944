//! WebSocket: the same events as SSE in text frames, resume, close codes.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app, task_id, wait_until, within};

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
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());
}

//! Shutdown with open streams: every SSE stream ends, every WebSocket gets 1001, and the
//! server is done well within its grace period.

use std::time::Instant;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app_with, task_id, wait_until, within, SseClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_promptly() {
    let app = spawn_app_with(|c| c.shutdown_grace_secs = 10).await;
    app.create_task("long", 100).await;
    let mut sse_readers = Vec::new();
    for _ in 0..500 {
        let mut stream = SseClient::new(app.sse("/api/index-progress/long/events", None).await);
        sse_readers.push(tokio::spawn(
            async move { stream.collect_events().await.len() },
        ));
    }
    let mut ws_readers = Vec::new();
    for _ in 0..50 {
        let url = format!("ws://{}/api/index-progress/long/ws", app.addr);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws_readers.push(tokio::spawn(async move {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                    Some(Ok(_)) => {}
                    _ => return None,
                }
            }
        }));
    }
    let all_events = SseClient::new(app.sse("/api/events", None).await);
    wait_until(|| app.hub.listeners(&task_id("long")) == 550).await;

    let started = Instant::now();
    within(app.stop()).await;
    let took = started.elapsed();
    for reader in sse_readers {
        assert_eq!(
            within(reader).await.unwrap(),
            1,
            "snapshot, then a clean end"
        );
    }
    for reader in ws_readers {
        assert_eq!(within(reader).await.unwrap(), Some(CloseCode::Away));
    }
    drop(all_events);
    // Not a benchmark: the grace period is 10 s, and a drain that waited it out would
    // mean some stream ignored the shutdown signal.
    assert!(took.as_secs() < 5, "shutdown took {took:?}");
}

//! WebSocket: `GET /api/index-progress/{task_id}/ws`. Push-only: one text frame per event
//! (the event's JSON, which carries its `event` name), pings on the heartbeat, close 1000
//! after the terminal event and 1001 when the server shuts down. The loop also reads, so
//! the client's pongs and close frames are handled.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::{ApiQuery, TaskIdPath};
use super::sse::{last_event_id, ResumeQuery};
use super::AppState;
use crate::hub::Subscription;
use crate::server::FanOut;

/// Largest message accepted from a client: it has nothing to say but control frames.
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// How long to wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn task_ws(
    State(state): State<AppState>,
    TaskIdPath(id): TaskIdPath,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
    fan_out: Option<Extension<FanOut>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers, query.last_event_id.as_deref());
    // Subscribe before upgrading: an unknown task is a plain 404, and no event published
    // during the handshake can be missed.
    let subscription = state.hub.subscribe(&id, last)?;
    let upgrade = upgrade.map_err(|_| ApiError::UpgradeRequired)?;
    let shutdown = state.shutdown.clone();
    let heartbeat = state.config.heartbeat();
    // The tracker token keeps shutdown waiting until this socket has said goodbye.
    let tracked = state.tracker.token();
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let session = async move {
                run(socket, subscription, heartbeat, shutdown).await;
                drop(tracked);
            };
            // Like SSE streams, sockets are fed from the fan-out runtime when the server
            // runs one, so producers' requests do not queue behind them.
            match fan_out {
                Some(Extension(FanOut(runtime))) => drop(runtime.spawn(session)),
                None => session.await,
            }
        }))
}

async fn run(
    mut socket: WebSocket,
    subscription: Option<Subscription>,
    heartbeat: Duration,
    shutdown: CancellationToken,
) {
    let Some(mut subscription) = subscription else {
        // The client already has the terminal event.
        return close(socket, 1000, "task finished").await;
    };
    let start = tokio::time::Instant::now() + heartbeat;
    let mut ping = tokio::time::interval_at(start, heartbeat);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return close(socket, 1001, "server shutting down").await,
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // Pings are answered by the protocol layer; anything else is ignored.
                Some(Ok(_)) => {}
            },
            event = subscription.next() => {
                let Some(event) = event else {
                    return close(socket, 1000, "task finished").await;
                };
                let Ok(text) = Utf8Bytes::try_from(event.json().clone()) else {
                    return;
                };
                if socket.send(Message::Text(text)).await.is_err() {
                    return;
                }
                if event.is_terminal() {
                    return close(socket, 1000, "task finished").await;
                }
                ping.reset();
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends a close frame and waits briefly for the client's, so the handshake completes.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

//! WebSocket: `GET /api/index-progress/{task_id}/ws`. Push-only: one text frame per event
//! (the event's JSON, which carries its `event` name), pings on the heartbeat, close 1000
//! after the terminal event and 1001 when the server shuts down or the socket has lived
//! its maximum life (the client reconnects with `?last_event_id=`). The loop also reads,
//! so the client's pongs and close frames are handled. Before the upgrade: the read token
//! (with `--protect-reads`), the `Origin` against the CORS allow-list, and a subscriber's
//! place in the limits, which the socket holds until it closes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;

use super::error::ApiError;
use super::extract::ApiQuery;
use super::limits::SubscriberGuard;
use super::read_token::ReadableTask;
use super::sse::{end_of_life, last_event_id, until, ResumeQuery};
use super::AppState;
use crate::hub::Subscription;
use crate::server::FanOut;
use crate::shutdown::ShutdownWait;
use crate::telemetry::{DeliverySampler, Metrics, Transport};

/// How long to wait for the client's answer to our close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn task_ws(
    State(state): State<AppState>,
    ReadableTask(id): ReadableTask,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
    fan_out: Option<Extension<FanOut>>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if !state.security.origins.allows_websocket(&headers) {
        return Err(ApiError::Forbidden("Origin not allowed".to_string()));
    }
    let last = last_event_id(&headers, query.last_event_id.as_deref());
    let place = state.limits.subscribe(Transport::WebSocket, Some(&id))?;
    // Subscribe before upgrading: an unknown task is a plain 404, and no event published
    // during the handshake can be missed.
    let subscription = state.hub.subscribe(&id, last)?;
    let upgrade = upgrade.map_err(|_| ApiError::UpgradeRequired)?;
    let socket_state = SocketState {
        shutdown: state.shutdown.wait(),
        heartbeat: state.config.heartbeat(),
        end_of_life: end_of_life(&state.config),
        metrics: state.metrics.clone(),
        _place: place,
    };
    // The tracker token keeps shutdown waiting until this socket has said goodbye.
    let tracked = state.tracker.token();
    // Clients only send control frames (at most 125 bytes) and closes; the limit bounds
    // what a misbehaving one can make us buffer.
    let max_message = usize::try_from(state.config.ws_max_message_bytes).unwrap_or(4096);
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            let session = async move {
                run(socket, subscription, socket_state).await;
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

/// What one socket's loop needs besides its subscription.
struct SocketState {
    /// Polled on every turn of the loop, so built once (see [`crate::shutdown`]).
    shutdown: ShutdownWait,
    heartbeat: Duration,
    end_of_life: Option<tokio::time::Instant>,
    metrics: Arc<Metrics>,
    /// Held for its `Drop`: frees the subscriber's place when the socket is done.
    _place: SubscriberGuard,
}

async fn run(mut socket: WebSocket, subscription: Option<Subscription>, mut st: SocketState) {
    let Some(mut subscription) = subscription else {
        // The client already has the terminal event.
        return close(socket, 1000, "task finished").await;
    };
    let heartbeat = st.heartbeat;
    let start = tokio::time::Instant::now() + heartbeat;
    let mut ping = tokio::time::interval_at(start, heartbeat);
    let mut delivery = DeliverySampler::new(st.metrics.clone(), Transport::WebSocket);
    let end_of_life = until(st.end_of_life);
    tokio::pin!(end_of_life);
    loop {
        tokio::select! {
            biased;
            _ = &mut st.shutdown => return close(socket, 1001, "server shutting down").await,
            _ = &mut end_of_life => {
                return close(socket, 1001, "stream lifetime reached; reconnect with last_event_id").await;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None => return,
                // Most likely a message over the size limit; the socket is unusable now.
                Some(Err(error)) => {
                    tracing::debug!(%error, "WebSocket read failed");
                    return close(socket, 1009, "message too big or malformed").await;
                }
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
                delivery.delivered(event.published_at());
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

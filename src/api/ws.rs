//! WebSocket: `GET /api/index-progress/{task_id}/ws`. Push-only: one text frame per event
//! (the event's JSON, which carries its `event` name), pings on the heartbeat, close 1000
//! after the terminal event and 1001 when the server shuts down or the socket has lived
//! its maximum life (the client reconnects with `?last_event_id=`). What the client sends
//! is read as it comes: pings are answered, a close is answered and ends the socket, data
//! messages are skipped, and one over `--ws-max-message-bytes` (or anything that is not
//! RFC 6455) ends it with 1009 (1002).
//!
//! The socket is a [`Direct`] stream, like a task's SSE stream: once the `101` is out,
//! the server takes the socket over from hyper and the relay writes each event's frame to
//! it itself (see [`crate::transport::direct`]). The frames are the event's JSON, encoded once
//! at publish time, behind a 2- or 4-byte head written per socket; server frames are
//! never masked, so nothing else is per socket. No extension (compression) is agreed.
//!
//! Before the upgrade: the read token (with `--protect-reads`), the `Origin` against the
//! CORS allow-list, the task (404), and a subscriber's place in the limits, which the
//! socket holds until it closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::Response;
use bytes::Bytes;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::error::ApiError;
use super::extract::{ApiQuery, FastPaths};
use super::read_token::ReadableTask;
use super::sse::{last_event_id, ResumeQuery};
use super::AppState;
use crate::hub::{Event, Sink};
use crate::telemetry::{DeliverySampler, Transport};
use crate::transport::direct::{
    self, Direct, Head, Heard, Kind, Life, Peer, Relayed, Stop, Stream, Wire,
};
use crate::transport::handoff::{FrameStream, Handoff, Takeover};
use crate::transport::ws::{frame, plain};

/// How long to wait for the client's answer to our close frame.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub async fn task_ws(
    State(state): State<AppState>,
    FastPaths(fast): FastPaths,
    ReadableTask(id): ReadableTask,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let (method, version) = (request.method().clone(), request.version());
    let headers = request.headers();
    if !state.security.origins.allows_websocket(headers) {
        return Err(ApiError::Forbidden("Origin not allowed".to_string()));
    }
    let last = last_event_id(headers, query.last_event_id.as_deref());
    let place = state.limits.subscribe(Transport::WebSocket, Some(&id))?;
    if !fast {
        let subscription = state.hub.subscribe(&id, last)?;
        let accept = handshake(&method, version, headers)?;
        let session = plain::Session {
            subscription,
            life: Life::new(&state, place),
            reader: frame::Reader::new(state.config.ws_max_message_bytes),
            send_timeout: state.config.send_timeout(),
            delivery: DeliverySampler::new(state.metrics.clone(), Transport::WebSocket),
        };
        let upgrade = hyper::upgrade::on(&mut request);
        // The session goes on in the request's span, as a handed-off stream does.
        let span = tracing::Span::current();
        let run = async move {
            if let Ok(upgraded) = upgrade.await {
                session
                    .run(hyper_util::rt::TokioIo::new(upgraded))
                    .instrument(span.clone())
                    .await;
                tracing::debug!(parent: &span, "stream ended");
            }
        };
        // Tracked by the server when it serves the connection (not in `oneshot` tests).
        match request.extensions().get::<crate::server::Sessions>() {
            Some(sessions) => sessions.spawn(run),
            None => {
                tokio::spawn(run);
            }
        }
        return Ok(switching(accept, Body::empty()));
    }
    let headers = request.headers();
    // Subscribe before upgrading: an unknown task is a plain 404, and no event published
    // during the handshake can be missed.
    let direct = Arc::new(Direct::new(&state, Transport::WebSocket));
    let attached = state.hub.subscribe_sink(&id, last, direct.clone())?;
    let accept = handshake(&method, version, headers)?;
    if attached.is_none() {
        // The client already has the terminal event: the socket only says goodbye.
        direct.begin(Default::default(), false);
    }
    let stream = Stream {
        direct,
        _attached: attached,
        life: Life::new(&state, place),
        prelude: None,
        peer: Client {
            reader: frame::Reader::new(state.config.ws_max_message_bytes),
            closing: false,
        },
        // After our close frame, wait briefly for the client's, so the closing handshake
        // completes before the server closes the connection (RFC 6455 §7.1.1).
        linger: Some(CLOSE_WAIT),
        feed: Relayed,
    };
    let (handoff, body) = Handoff::new(Box::new(stream));
    let mut response = switching(accept, body);
    response.extensions_mut().insert(handoff);
    Ok(response)
}

/// The `101` that completes a handshake.
fn switching(accept: HeaderValue, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks an opening handshake (RFC 6455 §4.2.1); returns the `Sec-WebSocket-Accept`
/// value. Anything else on this route is told to upgrade (426).
fn handshake(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| key.as_bytes())
        .filter(|key| frame::valid_key(key));
    let upgrade = method == Method::GET
        && version == Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    match key {
        Some(key) if upgrade => {
            HeaderValue::from_str(&frame::accept_key(key)).map_err(|_| ApiError::UpgradeRequired)
        }
        _ => Err(ApiError::UpgradeRequired),
    }
}

/// Events as text frames, keep-alives as pings, the end as a close frame.
pub struct Ws;

/// The close frame after the terminal event.
pub(crate) const FINISHED: &[u8] = b"\x88\x0f\x03\xe8task finished";

impl Wire for Ws {
    const FORM: usize = direct::form::WEBSOCKET;
    const TAIL: &'static [u8] = b"";
    const END: &'static [u8] = FINISHED;
    const KEEP_ALIVE: (Kind, &'static [u8]) = (Kind::Ping, b"");

    fn payload(event: &Event) -> &Bytes {
        event.json()
    }

    fn head(kind: Kind, len: usize, head: &mut Head) -> usize {
        let opcode = match kind {
            Kind::Data => frame::TEXT,
            Kind::Ping => frame::PING,
            Kind::Pong => frame::PONG,
        };
        frame::head(opcode, len, head)
    }

    fn stop(why: Stop) -> Bytes {
        match why {
            Stop::Shutdown => frame::close(frame::GOING_AWAY, "server shutting down"),
            Stop::EndOfLife => frame::close(
                frame::GOING_AWAY,
                "stream lifetime reached; reconnect with last_event_id",
            ),
        }
    }
}

/// What the client says: read as it arrives, answered through the stream's queue.
struct Client {
    reader: frame::Reader,
    /// Our close frame is out: pings go unanswered, and the client's close ends it.
    closing: bool,
}

/// Reads at most this much per turn, so a flooding client does not hold the thread.
const READ_PER_TURN: usize = 64 * 1024;

impl Peer<Ws> for Client {
    fn closing(&mut self) {
        self.closing = true;
    }

    fn heard(&mut self, direct: &Direct<Ws>) -> Heard {
        let mut buf = [0u8; 2048];
        let mut read = 0;
        while read < READ_PER_TURN {
            let n = match direct.socket().try_read(&mut buf) {
                Ok(0) => return Heard::Gone,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Heard::Nothing,
                Err(_) => return Heard::Gone,
            };
            read += n;
            let mut input = &buf[..n];
            // The whole piece is read even after a failure: the reader skips what
            // belongs to the failing frame and still sees the client's close.
            let mut failed: Option<Bytes> = None;
            while let Some(incoming) = self.reader.next(&mut input) {
                match incoming {
                    Ok(frame::Incoming::Ping(payload)) => {
                        if !self.closing && failed.is_none() {
                            direct.control(Kind::Pong, payload);
                        }
                    }
                    Ok(frame::Incoming::Close(code)) => {
                        if self.closing {
                            return Heard::Gone;
                        }
                        // The client closed first: our answer ends the socket.
                        let frame = failed.unwrap_or_else(|| frame::close(code, ""));
                        return Heard::Close {
                            frame,
                            linger: false,
                        };
                    }
                    Err(fail) => failed = Some(fail.close_frame()),
                }
            }
            if let Some(frame) = failed {
                return Heard::Close {
                    frame,
                    linger: true,
                };
            }
        }
        Heard::Nothing
    }
}

/// Taken over once the `101` is flushed. hyper's read buffer, dropped then, holds nothing
/// of the stream's: a client sends no frame before it has the `101` (RFC 6455 §4.1).
impl Takeover for Stream<Ws, Client> {
    /// A `101` has no body: without the socket there is no session.
    fn into_frames(self: Box<Self>) -> FrameStream {
        Box::pin(futures_util::stream::empty())
    }

    fn write(self: Box<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.run(socket))
    }
}

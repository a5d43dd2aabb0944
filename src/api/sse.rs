//! Server-Sent Events: `GET /api/index-progress/{task_id}/events` for one task and
//! `GET /api/events` for all of them.
//!
//! The body is a stream of frames that were encoded once at publish time; this module only
//! decides which frames a client gets, adds keep-alive comments when nothing was sent for
//! a while, and ends the stream after the terminal event, when the server shuts down, or
//! when the stream has lived its maximum life (the client resumes with `Last-Event-ID`).
//! Each stream holds its subscriber's place in the limits until it is dropped.
//!
//! With the fast paths on, once the headers are out the server takes both kinds of
//! stream over from hyper, and one writer writes them ([`crate::transport::sse`]): a
//! task's stream fed by its task's relay, the all-tasks stream by the hub's all-tasks
//! channel. With them off, hyper streams both from the hub's channels.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::auth::Lister;
use super::error::ApiError;
use super::extract::{ApiQuery, FastPaths};
use super::limits::SubscriberGuard;
use super::read_token::ReadableTask;
use super::AppState;
use crate::config::Config;
use crate::hub::{AllSubscription, Subscription};
use crate::telemetry::{DeliverySampler, Transport};
use crate::transport::direct::Life;
use crate::transport::handoff::{FrameStream, Handoff, Takeover};
use crate::transport::sse::{AllSource, DirectSource};

/// How long EventSource waits before reconnecting after the stream ends.
const RETRY_MS: u64 = 2000;
pub(crate) const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

#[derive(Deserialize)]
pub struct ResumeQuery {
    /// For clients that cannot set `Last-Event-ID`. Anything but a number counts as absent.
    pub last_event_id: Option<String>,
}

/// The event id a client resumes from: the `Last-Event-ID` header, else the query
/// parameter. A value that is not a number counts as absent.
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<u64> {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    header.or(query).and_then(|v| v.trim().parse().ok())
}

pub async fn task_events(
    State(state): State<AppState>,
    FastPaths(fast): FastPaths,
    ReadableTask(id): ReadableTask,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers, query.last_event_id.as_deref());
    let place = state.limits.subscribe(Transport::Sse, Some(&id))?;
    if !fast {
        // Through hyper only: the hub's channel, no sink for the relay.
        return match state.hub.subscribe(&id, last)? {
            None => Ok(StatusCode::NO_CONTENT.into_response()),
            Some(subscription) => Ok(streamed(subscription, place, Transport::Sse, &state)),
        };
    }
    match DirectSource::subscribe(&state, &id, last)? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(source) => Ok(handed(source, place, Transport::Sse, &state)),
    }
}

pub async fn all_events(
    _: Lister,
    State(state): State<AppState>,
    FastPaths(fast): FastPaths,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers, query.last_event_id.as_deref());
    let place = state.limits.subscribe(Transport::AllEvents, None)?;
    if !fast {
        // Through hyper only: the hub's channel, framed by hyper.
        let subscription = state.hub.subscribe_all(last);
        return Ok(streamed(subscription, place, Transport::AllEvents, &state));
    }
    let source = AllSource::subscribe(&state, last);
    Ok(handed(source, place, Transport::AllEvents, &state))
}

/// When a stream opened now must end: at a random moment in the last tenth of its
/// maximum life, so that clients which connected together do not all reconnect together.
pub fn end_of_life(config: &Config) -> Option<Instant> {
    let life = config.max_stream_life()?;
    let unit = getrandom::u64().map_or(1.0, |r| (r >> 11) as f64 / (1u64 << 53) as f64);
    Some(Instant::now() + life.mul_f64(0.9 + 0.1 * unit))
}

/// Resolves at `deadline`, or never without one.
pub async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A ready-to-send SSE frame and, for an event, when it was published.
pub struct Frame {
    pub bytes: Bytes,
    pub published_at: Option<std::time::Instant>,
}

/// Something that yields ready-to-send SSE frames until it has nothing more to say.
pub trait FrameSource: Send + Sized + 'static {
    fn next_frame(&mut self) -> impl Future<Output = Option<Frame>> + Send;
}

/// A frame source whose stream the server may take over from hyper (see [`Takeover`]):
/// on the bare socket, a [`crate::transport::direct`] writer writes it, as it writes
/// every SSE stream.
pub trait Handed: FrameSource {
    fn write(st: StreamState<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl FrameSource for Subscription {
    async fn next_frame(&mut self) -> Option<Frame> {
        let event = self.next().await?;
        Some(Frame {
            bytes: event.sse_frame().clone(),
            published_at: Some(event.published_at()),
        })
    }
}

impl FrameSource for AllSubscription {
    async fn next_frame(&mut self) -> Option<Frame> {
        let event = self.next().await;
        let event = event.on_stream();
        Some(Frame {
            bytes: event.sse_frame().clone(),
            published_at: Some(event.published_at()),
        })
    }
}

pub struct StreamState<S> {
    pub(crate) source: S,
    pub(crate) prelude: Option<Bytes>,
    /// Counts the frames written through [`frames`].
    pub(crate) delivery: DeliverySampler,
    pub(crate) life: Life,
}

impl<S: Handed> Takeover for StreamState<S> {
    fn into_frames(self: Box<Self>) -> FrameStream {
        frames(*self)
    }

    fn write(self: Box<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        S::write(*self, socket)
    }
}

/// The headers of every SSE answer.
fn sse_headers() -> [(header::HeaderName, HeaderValue); 3] {
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ]
}

pub(crate) fn stream_state<S>(
    source: S,
    place: SubscriberGuard,
    transport: Transport,
    state: &AppState,
) -> StreamState<S> {
    StreamState {
        source,
        prelude: Some(Bytes::from(format!("retry: {RETRY_MS}\n\n"))),
        delivery: DeliverySampler::new(state.metrics.clone(), transport),
        life: Life::new(state, place),
    }
}

/// An SSE answer whose body hyper streams (`--fast-paths off`).
fn streamed<S: FrameSource>(
    source: S,
    place: SubscriberGuard,
    transport: Transport,
    state: &AppState,
) -> Response {
    let st = stream_state(source, place, transport, state);
    let body = Body::from_stream(frames(st).map(Ok::<_, Infallible>));
    (sse_headers(), body).into_response()
}

/// An SSE answer that the server may take over from hyper once the headers are out.
fn handed<S: Handed>(
    source: S,
    place: SubscriberGuard,
    transport: Transport,
    state: &AppState,
) -> Response {
    let st = stream_state(source, place, transport, state);
    let (handoff, body) = Handoff::new(Box::new(st));
    let mut response = (sse_headers(), body).into_response();
    response.extensions_mut().insert(handoff);
    response
}

/// The stream's frames: the prelude, then events and keep-alives, until it ends.
fn frames<S: FrameSource>(st: StreamState<S>) -> FrameStream {
    Box::pin(stream::unfold(st, |mut st| async move {
        if let Some(prelude) = st.prelude.take() {
            return Some((prelude, st));
        }
        let life = &mut st.life;
        loop {
            tokio::select! {
                biased;
                _ = &mut life.shutdown => return None,
                // Ends between frames: the client resumes after the last id it got.
                _ = life.end_of_life.as_mut() => return None,
                frame = st.source.next_frame() => {
                    let frame = frame?;
                    life.last_write = Instant::now();
                    if let Some(published_at) = frame.published_at {
                        st.delivery.delivered(published_at);
                    }
                    return Some((frame.bytes, st));
                }
                _ = life.timer.as_mut() => {
                    let due = life.last_write + life.heartbeat;
                    let now = Instant::now();
                    if now >= due {
                        life.last_write = now;
                        life.timer.as_mut().reset(now + life.heartbeat);
                        return Some((Bytes::from_static(KEEP_ALIVE), st));
                    }
                    life.timer.as_mut().reset(due);
                }
            }
        }
    }))
}

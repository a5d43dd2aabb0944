//! Server-Sent Events: `GET /api/index-progress/{task_id}/events` for one task and
//! `GET /api/events` for all of them.
//!
//! The body is a stream of frames that were encoded once at publish time; this module only
//! decides which frames a client gets, adds keep-alive comments when nothing was sent for
//! a while, and ends the stream after the terminal event or when the server shuts down.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use serde::Deserialize;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::{ApiQuery, TaskIdPath};
use super::AppState;
use crate::hub::{AllSubscription, Subscription};

/// How long EventSource waits before reconnecting after the stream ends.
const RETRY_MS: u64 = 2000;
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

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
    TaskIdPath(id): TaskIdPath,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers, query.last_event_id.as_deref());
    match state.hub.subscribe(&id, last)? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some(subscription) => Ok(event_stream(subscription, &state)),
    }
}

pub async fn all_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> Response {
    let last = last_event_id(&headers, query.last_event_id.as_deref());
    event_stream(state.hub.subscribe_all(last), &state)
}

/// Something that yields ready-to-send SSE frames until it has nothing more to say.
pub trait FrameSource: Send + 'static {
    fn next_frame(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

impl FrameSource for Subscription {
    async fn next_frame(&mut self) -> Option<Bytes> {
        Some(self.next().await?.sse_frame().clone())
    }
}

impl FrameSource for AllSubscription {
    async fn next_frame(&mut self) -> Option<Bytes> {
        Some(self.next().await.sse_frame().clone())
    }
}

struct StreamState<S> {
    source: S,
    shutdown: CancellationToken,
    heartbeat: Duration,
    last_write: Instant,
    /// One timer per stream, re-armed only when it fires: events do not touch it.
    timer: Pin<Box<Sleep>>,
    prelude: Option<Bytes>,
}

fn event_stream<S: FrameSource>(source: S, state: &AppState) -> Response {
    let heartbeat = state.config.heartbeat();
    let st = StreamState {
        source,
        shutdown: state.shutdown.clone(),
        heartbeat,
        last_write: Instant::now(),
        timer: Box::pin(tokio::time::sleep(heartbeat)),
        prelude: Some(Bytes::from(format!("retry: {RETRY_MS}\n\n"))),
    };
    let frames = stream::unfold(st, |mut st| async move {
        if let Some(prelude) = st.prelude.take() {
            return Some((Ok::<_, std::convert::Infallible>(prelude), st));
        }
        loop {
            tokio::select! {
                biased;
                _ = st.shutdown.cancelled() => return None,
                frame = st.source.next_frame() => {
                    st.last_write = Instant::now();
                    return Some((Ok(frame?), st));
                }
                _ = st.timer.as_mut() => {
                    let due = st.last_write + st.heartbeat;
                    let now = Instant::now();
                    if now >= due {
                        st.last_write = now;
                        st.timer.as_mut().reset(now + st.heartbeat);
                        return Some((Ok(Bytes::from_static(KEEP_ALIVE)), st));
                    }
                    st.timer.as_mut().reset(due);
                }
            }
        }
    });
    (
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
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

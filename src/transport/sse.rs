//! A task's SSE stream as a [`Direct`] stream (see [`crate::transport::direct`]): HTTP/1.1
//! chunks of SSE frames, ended by the last chunk. Through hyper (HTTP/1.0, `HEAD`) the
//! same sink is a frame source like any other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::direct::{self, Direct, Head, Heard, Kind, Peer, Stop, Stream, Wire};
use super::handoff::{self, LAST_CHUNK};
use crate::api::error::ApiError;
use crate::api::sse::{Frame, FrameSource, StreamState, KEEP_ALIVE};
use crate::api::AppState;
use crate::hub::{Attached, Event, TaskId};
use crate::telemetry::Transport;

/// SSE frames as HTTP/1.1 chunks.
pub struct Sse;

impl Wire for Sse {
    const FORM: usize = direct::form::SSE;
    const TAIL: &'static [u8] = b"\r\n";
    const END: &'static [u8] = LAST_CHUNK;
    const KEEP_ALIVE: (Kind, &'static [u8]) = (Kind::Data, KEEP_ALIVE);

    fn payload(event: &Event) -> &Bytes {
        event.sse_frame()
    }

    fn head(_: Kind, len: usize, head: &mut Head) -> usize {
        handoff::size_line(len, head)
    }

    fn stop(_: Stop) -> Bytes {
        Bytes::from_static(LAST_CHUNK)
    }
}

/// A client of an event stream has nothing to say: readable means it closed the
/// connection (or sent junk, read and ignored).
struct Listener;

impl Peer<Sse> for Listener {
    fn heard(&mut self, direct: &Direct<Sse>) -> Heard {
        if handoff::client_closed(direct.socket()) {
            Heard::Gone
        } else {
            Heard::Nothing
        }
    }
}

/// A task's stream as a frame source: its sink, and its place among the task's sinks.
pub struct DirectSource {
    direct: Arc<Direct<Sse>>,
    _attached: Attached,
}

impl DirectSource {
    /// Joins task `id` from just after `last_event_id`. `Ok(None)`: the client already
    /// has the terminal event.
    pub fn subscribe(
        state: &AppState,
        id: &TaskId,
        last_event_id: Option<u64>,
    ) -> Result<Option<DirectSource>, ApiError> {
        let direct = Arc::new(Direct::new(state, Transport::Sse));
        let attached = state
            .hub
            .subscribe_sink(id, last_event_id, direct.clone())?;
        Ok(attached.map(|attached| DirectSource {
            direct,
            _attached: attached,
        }))
    }
}

impl FrameSource for DirectSource {
    /// Through hyper: the queue, in order, until the terminal event.
    async fn next_frame(&mut self) -> Option<Frame> {
        let (bytes, published_at) = self.direct.next_queued().await?;
        Some(Frame {
            bytes,
            published_at,
        })
    }

    fn write(st: StreamState<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let StreamState {
            source,
            prelude,
            life,
            // Counts only what goes through hyper.
            delivery: _,
            // The stream's `Direct` has its own.
            send_timeout: _,
        } = st;
        let stream = Stream {
            direct: source.direct,
            _attached: Some(source._attached),
            life,
            prelude,
            peer: Listener,
            linger: None,
        };
        Box::pin(stream.run(socket))
    }
}

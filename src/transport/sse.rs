//! SSE streams as [`Direct`] streams (see [`crate::transport::direct`]): HTTP/1.1 chunks
//! of SSE frames, ended by the last chunk. A task's stream is written by its task's relay;
//! the all-tasks stream (`GET /api/events`) by the same writer, fed from the hub's
//! all-tasks channel by the stream's own task. Through hyper (HTTP/1.0, `HEAD`) either is
//! a frame source like any other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::direct::{self, Direct, Feed, Head, Heard, Kind, Peer, Relayed, Stop, Stream, Wire};
use super::handoff::{self, LAST_CHUNK, MAX_BATCH};
use crate::api::error::ApiError;
use crate::api::sse::{Frame, FrameSource, Handed, StreamState, KEEP_ALIVE};
use crate::api::AppState;
use crate::hub::{AllSubscription, Attached, Event, TaskId};
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
}

impl Handed for DirectSource {
    fn write(st: StreamState<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let StreamState {
            source,
            prelude,
            life,
            // Counts only what goes through hyper.
            delivery: _,
        } = st;
        let stream = Stream {
            direct: source.direct,
            _attached: Some(source._attached),
            life,
            prelude,
            peer: Listener,
            linger: None,
            feed: Relayed,
        };
        Box::pin(stream.run(socket))
    }
}

/// The all-tasks stream as a frame source: its writer, and the hub's all-tasks channel
/// that feeds it.
pub struct AllSource {
    direct: Arc<Direct<Sse>>,
    subscription: AllSubscription,
}

impl AllSource {
    /// Follows every task from just after `last_event_id` (see [`crate::hub::Hub::subscribe_all`]).
    pub fn subscribe(state: &AppState, last_event_id: Option<u64>) -> AllSource {
        AllSource {
            direct: Arc::new(Direct::all_tasks(state)),
            subscription: state.hub.subscribe_all(last_event_id),
        }
    }
}

impl FrameSource for AllSource {
    /// Through hyper: the channel's events, as hyper streams a task's.
    async fn next_frame(&mut self) -> Option<Frame> {
        self.subscription.next_frame().await
    }
}

impl Handed for AllSource {
    fn write(st: StreamState<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let StreamState {
            source,
            prelude,
            life,
            // Counts only what goes through hyper.
            delivery: _,
        } = st;
        let stream = Stream {
            direct: source.direct,
            _attached: None,
            life,
            prelude,
            peer: Listener,
            linger: None,
            feed: source.subscription,
        };
        Box::pin(stream.run(socket))
    }
}

/// The all-tasks channel feeds the stream's writer its events, each under its id on
/// this stream ([`crate::hub::AllEvent::on_stream`]).
impl Feed for AllSubscription {
    async fn next(&mut self) -> Vec<Event> {
        let first = AllSubscription::next(self).await;
        let mut events = vec![first.on_stream().clone()];
        while events.len() < MAX_BATCH {
            match self.try_next() {
                Some(event) => events.push(event.on_stream().clone()),
                None => break,
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hub::NewTask;
    use crate::store::MemoryStore;
    use tokio::io::AsyncReadExt;

    /// The all-tasks stream on its own socket is written by a task stream's writer: every
    /// event goes out as [`Sse::framed`] made it (the same bytes a task's stream writes,
    /// but for the id), then the stream ends with the last chunk when the server stops.
    #[tokio::test]
    async fn the_all_tasks_stream_is_framed_by_the_sse_wire() {
        let store = Arc::new(MemoryStore::new(16));
        let mut config = Config::for_tests();
        config.coalesce_ms = 0;
        let app = crate::Application::build_with_store(config, store)
            .await
            .unwrap();
        let state = app.state.clone();
        let hub = &state.hub;
        let created = hub
            .create(NewTask {
                id: Some(TaskId::parse("framed").unwrap()),
                total: 2,
                ..NewTask::default()
            })
            .unwrap();
        let mut expected_events = hub.subscribe_all(None);
        let place = state.limits.subscribe(Transport::AllEvents, None).unwrap();
        let source = AllSource::subscribe(&state, None);
        let st = crate::api::sse::stream_state(source, place, Transport::AllEvents, &state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let writer = tokio::spawn(AllSource::write(st, socket));
        let update = crate::hub::ProgressUpdate {
            processed: Some(1),
            ..Default::default()
        };
        hub.progress(created.task_id(), update).unwrap();
        let prelude = "retry: 2000\n\n";
        let mut expected = format!("{:x}\r\n{prelude}\r\n", prelude.len()).into_bytes();
        for _ in 0..2 {
            let event = expected_events.next().await;
            let frame = Sse::framed(event.on_stream());
            // The task's stream frames the same change alike, under the task's seq.
            let own = Sse::framed(event.event());
            let (own, frame_text) = (String::from_utf8_lossy(own), String::from_utf8_lossy(frame));
            let renumbered = own.replace(
                &format!("id: {}\n", event.event().seq()),
                &format!("id: {}\n", event.id()),
            );
            assert_eq!(
                &frame_text[frame_text.find("\r\n").unwrap()..],
                &renumbered[renumbered.find("\r\n").unwrap()..]
            );
            expected.extend_from_slice(frame);
        }
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_exact(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
        state.shutdown.trigger();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, LAST_CHUNK);
        writer.await.unwrap();
    }
}

//! An [`Event`] is one published snapshot of a task, serialized once.
//!
//! Every transport sends the same bytes: polling answers with [`Event::json`], SSE writes
//! [`Event::sse_frame`], WebSocket sends [`Event::json`] as a text frame. Cloning an event
//! only bumps a reference count, so fanning it out to N subscribers costs N writes and
//! no serialization. What a transport wraps around those bytes on the wire (a chunk's
//! size line, a WebSocket frame head) is built once per event too, the first time a
//! subscriber needs it ([`Event::wire_form`]), not once per subscriber.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::snapshot::{Snapshot, Status};
use super::TaskId;

/// The SSE event name of a change; also the `event` field of its JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Progress,
    Completed,
    Failed,
    Cancelled,
}

impl EventKind {
    pub fn for_status(status: Status) -> Self {
        match status {
            Status::Completed => EventKind::Completed,
            Status::Failed => EventKind::Failed,
            Status::Cancelled => EventKind::Cancelled,
            Status::Pending | Status::Processing => EventKind::Progress,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Progress => "progress",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != EventKind::Progress
    }
}

/// A published change: cheap to clone, immutable, encoded once.
#[derive(Clone)]
pub struct Event(Arc<EventInner>);

struct EventInner {
    task_id: TaskId,
    seq: u64,
    status: Status,
    kind: EventKind,
    /// Milliseconds since the Unix epoch of the task's creation; lets listings sort
    /// without decoding the JSON.
    created_at_ms: u64,
    /// `id: <seq>\nevent: <kind>\ndata: <json>\n\n`, ready for the wire.
    sse: Bytes,
    /// The snapshot as one line of JSON (the poll body, the SSE `data`, the WS frame):
    /// a slice of `sse`, so both share one allocation.
    json: Bytes,
    /// When this event was encoded, for the publish-to-deliver latency on `/metrics`.
    published_at: Instant,
    /// Ready-to-write forms of the event, built by the transports on first use.
    wire: [OnceLock<Bytes>; WIRE_FORMS],
}

/// How many ready-to-write forms an event keeps ([`Event::wire_form`]).
pub const WIRE_FORMS: usize = 2;

impl Event {
    /// Serializes a snapshot into an event. Called once per published change.
    pub fn encode(snapshot: &Snapshot) -> Self {
        let kind = EventKind::for_status(snapshot.status);
        let json = snapshot.to_json(kind);
        let sse = sse_frame(snapshot.seq, kind, &json);
        Event::framed(
            snapshot.task_id.clone(),
            snapshot.seq,
            snapshot.status,
            snapshot.created_at_ms,
            (sse, json.len()),
            Instant::now(),
        )
    }

    /// The same change numbered `id` on a stream that numbers events its own way (the
    /// all-tasks stream, `GET /api/events`): its SSE frame says `id: <id>` and its
    /// [`Event::seq`] is `id`, so it is written like any event of a task's stream; its
    /// JSON (which carries the task's own `seq`) and publication time are this one's.
    pub fn renumbered(&self, id: u64) -> Event {
        let sse = sse_frame(id, self.kind(), self.json());
        Event::framed(
            self.task_id().clone(),
            id,
            self.status(),
            self.created_at_ms(),
            (sse, self.json().len()),
            self.published_at(),
        )
    }

    /// An event around its SSE frame, whose `data:` line is its JSON of `json_len` bytes.
    fn framed(
        task_id: TaskId,
        seq: u64,
        status: Status,
        created_at_ms: u64,
        (sse, json_len): (Bytes, usize),
        published_at: Instant,
    ) -> Event {
        let kind = EventKind::for_status(status);
        // The frame ends with `data: <json>\n\n`.
        let start = sse.len() - json_len - 2;
        let json = sse.slice(start..start + json_len);
        Event(Arc::new(EventInner {
            task_id,
            seq,
            status,
            kind,
            created_at_ms,
            sse,
            json,
            published_at,
            wire: Default::default(),
        }))
    }

    /// The event's ready-to-write form number `form` (< [`WIRE_FORMS`]), built by `build`
    /// the first time it is asked for: every subscriber of a transport then writes the
    /// same bytes, framing included.
    pub fn wire_form(&self, form: usize, build: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.0.wire[form].get_or_init(|| build(self))
    }

    /// Rebuilds an event from the JSON a store kept, with the snapshot it carries.
    pub fn decode(json: &[u8]) -> Result<(Event, Snapshot), String> {
        let snapshot = Snapshot::from_json(json)?;
        Ok((Event::encode(&snapshot), snapshot))
    }

    pub fn task_id(&self) -> &TaskId {
        &self.0.task_id
    }

    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    pub fn status(&self) -> Status {
        self.0.status
    }

    pub fn kind(&self) -> EventKind {
        self.0.kind
    }

    pub fn is_terminal(&self) -> bool {
        self.0.kind.is_terminal()
    }

    pub fn created_at_ms(&self) -> u64 {
        self.0.created_at_ms
    }

    pub fn json(&self) -> &Bytes {
        &self.0.json
    }

    pub fn sse_frame(&self) -> &Bytes {
        &self.0.sse
    }

    /// When the event was encoded (for a restored event: when it was loaded).
    pub fn published_at(&self) -> Instant {
        self.0.published_at
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("task_id", &self.0.task_id)
            .field("seq", &self.0.seq)
            .field("kind", &self.0.kind)
            .finish()
    }
}

/// Builds one SSE frame. `json` never contains a newline (serde_json escapes them), so a
/// single `data:` line carries it.
pub fn sse_frame(id: u64, kind: EventKind, json: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(json.len() + 48);
    buf.put_slice(b"id: ");
    buf.put_slice(id.to_string().as_bytes());
    buf.put_slice(b"\nevent: ");
    buf.put_slice(kind.as_str().as_bytes());
    buf.put_slice(b"\ndata: ");
    buf.put_slice(json);
    buf.put_slice(b"\n\n");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frame_has_id_event_and_one_data_line() {
        let frame = sse_frame(7, EventKind::Completed, br#"{"a":"x\ny"}"#);
        assert_eq!(
            &frame[..],
            b"id: 7\nevent: completed\ndata: {\"a\":\"x\\ny\"}\n\n"
        );
    }

    #[test]
    fn a_renumbered_event_says_its_new_id_and_keeps_the_snapshot() {
        let mut snapshot = Snapshot::new(TaskId::parse("t").unwrap(), None, 3, 0);
        snapshot.seq = 2;
        let event = Event::encode(&snapshot);
        let renumbered = event.renumbered(7_000_001);
        assert_eq!(renumbered.seq(), 7_000_001);
        assert_eq!(renumbered.json(), event.json());
        assert_eq!(renumbered.published_at(), event.published_at());
        let frame = std::str::from_utf8(renumbered.sse_frame()).unwrap();
        let json = std::str::from_utf8(event.json()).unwrap();
        assert_eq!(
            frame,
            format!("id: 7000001\nevent: progress\ndata: {json}\n\n")
        );
        assert!(json.contains(r#""seq":2"#), "{json}");
    }

    #[test]
    fn a_wire_form_is_built_once_and_shared_by_clones() {
        let id = TaskId::parse("t").unwrap();
        let event = Event::encode(&Snapshot::new(id, None, 3, 0));
        let clone = event.clone();
        let mut builds = 0;
        let mut build = |e: &Event| {
            builds += 1;
            Bytes::from([&b"<"[..], e.json(), b">"].concat())
        };
        let first = event.wire_form(1, &mut build).clone();
        let again = clone.wire_form(1, &mut build).clone();
        assert_eq!(builds, 1);
        assert_eq!(first, again);
        assert!(first.starts_with(b"<{") && first.ends_with(b"}>"));
        // Another form is built apart.
        let other = event.wire_form(0, |_| Bytes::from_static(b"sse"));
        assert_eq!(&other[..], b"sse");
    }
}

//! Handing a long-lived event stream from hyper to a small writer task of its own.
//!
//! hyper keeps its connection state and two 8 KiB buffers (one to read, one for response
//! heads) for as long as a connection lives. For an SSE stream that stays open for hours
//! that is most of its memory (docs/design/handoff.md), while the stream itself needs
//! only its socket and its frame source. So an SSE response to an
//! HTTP/1.1 `GET` is handed off: hyper writes the status line and headers as usual (every
//! middleware still applies to them), and once they are flushed the connection task drops
//! hyper's state and the stream's writer ([`crate::transport::direct`]) carries on with
//! the same chunked encoding on the bare socket. The response says `Connection: close`,
//! as the socket ends with the stream. A WebSocket's `101` is handed off the same way,
//! and its writer speaks WebSocket frames from there (`crate::api::ws`).
//!
//! Anything else takes the ordinary path, with the same bytes on the wire: tests that drive
//! the router without a socket, HTTP/1.0 or `HEAD` requests stream the body through hyper.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Response, StatusCode, Version};
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

/// Ready-to-send frames of one stream, ending when the stream should end.
pub type FrameStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// A streaming body that the server may take over from hyper.
pub trait Takeover: Send + 'static {
    /// The frames, for hyper to stream when the response stays with it.
    fn into_frames(self: Box<Self>) -> FrameStream;

    /// Writes the rest of the body on the bare socket (for an SSE stream: as HTTP/1.1
    /// chunks) until it ends; then ends the body and closes the socket.
    fn write(self: Box<Self>, socket: TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Rides in a streaming response's extensions; the response body holds the same frames
/// and streams them itself unless the server took them first.
#[derive(Clone)]
pub struct Handoff(Arc<Mutex<Option<Taken>>>);

/// A stream to take over: its body, and the span of the request that opened it (see
/// [`crate::telemetry`]), which its writer carries on.
pub struct Taken {
    body: Box<dyn Takeover>,
    span: Span,
}

impl Handoff {
    /// A response body for `body` and the hand-off that lets the server take it over.
    /// Called by the handler, inside the request's span.
    pub fn new(body: Box<dyn Takeover>) -> (Handoff, Body) {
        let stream = Taken {
            body,
            span: Span::current(),
        };
        let handoff = Handoff(Arc::new(Mutex::new(Some(stream))));
        let body = Body::from_stream(Fallback {
            handoff: handoff.clone(),
            frames: None,
        });
        (handoff, body)
    }

    fn take(&self) -> Option<Taken> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The body when nobody took the frames over: streams them through hyper.
struct Fallback {
    handoff: Handoff,
    frames: Option<FrameStream>,
}

impl Stream for Fallback {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.frames.is_none() {
            self.frames = self.handoff.take().map(|stream| stream.body.into_frames());
        }
        match self.frames.as_mut() {
            Some(frames) => frames.poll_next_unpin(cx).map(|frame| frame.map(Ok)),
            None => Poll::Ready(None),
        }
    }
}

/// One connection's side of the hand-off, shared by its socket wrapper, its service and
/// its task.
#[derive(Default)]
pub struct Connection {
    /// The stream taken from the response being written, waiting for its head to be
    /// flushed.
    armed: Mutex<Option<Taken>>,
    /// Signalled once the armed response's head is on the wire.
    flushed: Notify,
    /// Where the socket wrapper leaves the socket when hyper drops it after a hand-off.
    socket: Mutex<Option<TcpStream>>,
}

impl Connection {
    /// Called with each response before hyper writes it: takes a handed-off stream's
    /// frames for this connection and leaves hyper a head and an endless empty body.
    pub fn intercept(&self, version: Version, method: &Method, response: &mut Response<Body>) {
        let Some(handoff) = response.extensions_mut().remove::<Handoff>() else {
            return;
        };
        // Chunked encoding, which the writer continues, is what hyper uses for a body of
        // unknown length on HTTP/1.1; a HEAD answer has no body at all.
        if version != Version::HTTP_11 || method != Method::GET {
            return;
        }
        let Some(stream) = handoff.take() else {
            return;
        };
        *lock(&self.armed) = Some(stream);
        // A stream ends its socket; a `101` (WebSocket) keeps its `Connection: upgrade`.
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        *response.body_mut() =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, Infallible>>());
    }

    /// Resolves once a handed-off response's head has been flushed: hyper's part is done.
    pub async fn head_flushed(&self) {
        self.flushed.notified().await;
    }

    /// After hyper's connection was dropped: the socket and the stream to go on with.
    pub fn take(&self) -> Option<(TcpStream, Taken)> {
        let stream = lock(&self.armed).take()?;
        let socket = lock(&self.socket).take()?;
        Some((socket, stream))
    }

    fn is_armed(&self) -> bool {
        lock(&self.armed).is_some()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket as hyper sees it. Notices when an armed response's head has been flushed,
/// and on drop after that hands the socket back instead of closing it.
pub struct Socket {
    stream: Option<TcpStream>,
    /// Bytes read from the socket before hyper got it ([`super::quick`]), read first.
    read: Bytes,
    connection: Arc<Connection>,
    /// How long a write may wait for the client to take anything (hyper has no write
    /// timeout of its own).
    send_timeout: Duration,
    /// Armed while a write waits for the socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Socket {
    pub fn new(
        stream: TcpStream,
        read: Bytes,
        connection: Arc<Connection>,
        send_timeout: Duration,
    ) -> Socket {
        Socket {
            stream: Some(stream),
            read,
            connection,
            send_timeout,
            stalled: None,
        }
    }

    /// A write that waits longer than the send timeout for the socket fails.
    fn bound<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.connection.is_armed() {
            *lock(&self.connection.socket) = self.stream.take();
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            if self.read.is_empty() {
                // An empty slice still holds the buffer it was cut from.
                self.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        self.stream()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = self.stream()?.poll_write(cx, buf);
        self.bound(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = self.stream()?.poll_write_vectored(cx, bufs);
        self.bound(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the socket only after writing out everything it buffered, so an
        // armed response's head is on the wire once this completes.
        let flushed = self.stream()?.poll_flush(cx);
        if flushed.is_ready() && self.connection.is_armed() {
            self.connection.flushed.notify_one();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.connection.is_armed() {
            // The writer task owns the rest of this socket's life.
            return Poll::Ready(Ok(()));
        }
        self.stream()?.poll_shutdown(cx)
    }
}

/// Starts writing `stream` ([`Takeover::write`]) on `runtime` (the current one if
/// `None`), tracked by `tracker` so shutdown waits for it; `guard` is dropped when the
/// stream ends. The socket moves to that runtime's reactor with it.
pub fn spawn_writer(
    socket: TcpStream,
    stream: Taken,
    guard: impl Send + 'static,
    runtime: Option<&tokio::runtime::Handle>,
    tracker: &TaskTracker,
) {
    let Taken { body, span } = stream;
    if span.is_disabled() {
        // Not traced at this level: the writer, which every idle stream keeps, does not
        // carry the span.
        drop(span);
        spawn_on(runtime, tracker, socket, move |socket| async move {
            body.write(socket).await;
            drop(guard);
        });
        return;
    }
    spawn_on(runtime, tracker, socket, move |socket| async move {
        body.write(socket).instrument(span.clone()).await;
        tracing::debug!(parent: &span, "stream ended");
        drop(guard);
    });
}

/// Runs `serve` with `socket` on `runtime` ([`spawn_moved`]), or on the current runtime
/// if `None`, tracked by `tracker`.
fn spawn_on<F, Fut>(
    runtime: Option<&tokio::runtime::Handle>,
    tracker: &TaskTracker,
    socket: TcpStream,
    serve: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match runtime {
        Some(runtime) => spawn_moved(runtime, tracker, socket, serve),
        None => {
            tracker.spawn(serve(socket));
        }
    }
}

/// Runs `serve` with `socket` on `runtime`, tracked by `tracker`: the socket leaves the
/// current runtime's reactor for that runtime's. A socket that cannot move is closed.
pub fn spawn_moved<F, Fut>(
    runtime: &tokio::runtime::Handle,
    tracker: &TaskTracker,
    socket: TcpStream,
    serve: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(socket) = socket.into_std() else {
        return;
    };
    runtime.spawn(tracker.track_future(async move {
        if let Ok(socket) = TcpStream::from_std(socket) {
            serve(socket).await;
        }
    }));
}

/// Frames written with one `writev` at most: what a subscriber that fell behind has
/// queued goes out together, as hyper would have flushed it.
pub const MAX_BATCH: usize = 16;

/// Whether the client of a stream has closed its side (what it sent otherwise is read and
/// ignored: a client of an event stream has nothing to say).
pub fn client_closed(socket: &TcpStream) -> bool {
    let mut scratch = [0u8; 256];
    match socket.try_read(&mut scratch) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Writes the size line of a chunk of `len` bytes (`<hex length>\r\n`) into `line`;
/// returns its length.
pub fn size_line(len: usize, line: &mut [u8; 20]) -> usize {
    let mut cursor = &mut line[..];
    // 16 hex digits and CRLF always fit in 20 bytes.
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{len:x}\r\n"));
    20 - cursor.len()
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes every slice, waiting in the socket's writer slot whenever it is full.
pub async fn write_all(
    socket: &TcpStream,
    mut parts: &mut [IoSlice<'_>],
    send_timeout: Duration,
) -> io::Result<()> {
    while !parts.is_empty() {
        match socket.try_write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut parts, written),
            // The socket is full: the client is not reading. Give it `send_timeout` to
            // take anything at all (the timer starts only here, not per write).
            // Boxed: this future is part of every stream's task, and a timer inline
            // would cost every idle stream its size
            // (docs/design/handoff.md#keeping-it-small).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let ready = std::future::poll_fn(|cx| socket.poll_write_ready(cx));
                Box::pin(tokio::time::timeout(send_timeout, ready))
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What is left of `parts` after the first `written` bytes, copied: the rest of a
/// `writev` the socket took only part of.
pub fn unwritten(parts: &[IoSlice<'_>], mut written: usize) -> Bytes {
    let mut rest = Vec::new();
    for part in parts {
        let skip = written.min(part.len());
        written -= skip;
        rest.extend_from_slice(&part[skip..]);
    }
    Bytes::from(rest)
}

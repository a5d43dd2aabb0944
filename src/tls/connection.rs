//! One HTTPS connection: the TLS handshake, then hyper's HTTP/2 or HTTP/1.1 server (as the
//! client chose by ALPN: hyper-util's auto builder tells them apart by the first bytes,
//! which follow that choice) with the router behind it, under the same rules as a plaintext
//! connection: headers (and here the handshake) within the header timeout, a write that
//! waits longer than the send timeout ends the connection, and shutdown is graceful
//! (HTTP/2: `GOAWAY`, then the open streams end themselves on the same signal).
//!
//! Every request goes through hyper and axum, as with `--fast-paths off`: the request
//! carries [`HyperOnly`], and handlers answer without a hand-off. A WebSocket is an
//! HTTP/1.1 upgrade; over HTTP/2 its route answers `426` (RFC 8441's extended CONNECT is
//! not offered, so browsers open an HTTP/1.1 connection for it).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderValue, Request, Version};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::server::Sessions;
use crate::transport::{handoff, HyperOnly};

/// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS):
/// a page's event streams share one connection, and this bounds what one connection
/// holds. Every stream also takes a subscriber's place in the server's limits.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// What one HTTP/2 stream may queue for a client that does not take it (flow control):
/// an event stream's reader that falls this far behind skips to the newest snapshot, as
/// on HTTP/1.1 when its socket is full.
const MAX_SEND_BUFFER: usize = 64 * 1024;

/// hyper's server for HTTPS connections, built once: HTTP/1.1 with the same settings as
/// plaintext connections (`crate::server`), and HTTP/2. Tasks hyper spawns per HTTP/2
/// stream are tracked with the connections, so shutdown waits for them too.
///
/// On HTTP/2 a reader that stopped for good may never fill the socket (flow control
/// stops the server's writes first), so the send timeout alone would not find it: after
/// `send_timeout` without hearing from the client the server pings it, and closes the
/// connection when no answer comes within `send_timeout`.
pub fn builder(
    header_timeout: Duration,
    send_timeout: Duration,
    tracker: TaskTracker,
) -> auto::Builder<Tracked> {
    let mut builder = auto::Builder::new(Tracked(tracker));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .keep_alive_interval(send_timeout)
        .keep_alive_timeout(send_timeout);
    builder
}

/// hyper's executor for HTTP/2 streams: spawns on the current runtime (the connection's),
/// tracked.
#[derive(Clone)]
pub struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// What an HTTPS connection's task needs.
pub struct Https {
    pub acceptor: TlsAcceptor,
    pub builder: auto::Builder<Tracked>,
    pub router: Router,
    pub shutdown: CancellationToken,
    pub grace: Duration,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    pub tracker: TaskTracker,
}

impl Https {
    /// Serves one connection until the client leaves, it stays idle for the header
    /// timeout, or the server shuts down.
    pub async fn serve(self, stream: TcpStream) {
        let Https {
            acceptor,
            builder,
            router,
            shutdown,
            grace,
            header_timeout,
            send_timeout,
            tracker,
        } = self;
        // The plaintext connection's socket wrapper, for its send timeout (never armed for
        // a hand-off: nothing here hands off).
        let socket = handoff::Socket::new(
            stream,
            Bytes::new(),
            Arc::new(handoff::Connection::default()),
            send_timeout,
        );
        // A client that never finishes its handshake is treated like one that never sends
        // its headers.
        let tls = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = tokio::time::timeout(header_timeout, acceptor.accept(socket)) => {
                match accepted {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let in_flight = Arc::new(InFlight::default());
        let service = {
            let in_flight = in_flight.clone();
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let router = router.clone();
                let entered = InFlight::enter(&in_flight);
                request.extensions_mut().insert(HyperOnly);
                if request.headers().contains_key(header::UPGRADE) {
                    // An upgraded WebSocket outlives this connection's task: tracked like it.
                    request
                        .extensions_mut()
                        .insert(Sessions::new(tracker.clone()));
                }
                authority_as_host(&mut request);
                async move {
                    let response = router.oneshot(request).await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        Body::new(Counted {
                            body,
                            _entered: entered,
                        })
                    }))
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTPS connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled() => {}
            // hyper's HTTP/2 server has no header timeout: a connection without a request
            // for that long is closed, as an idle HTTP/1.1 keep-alive connection is.
            () = in_flight.idle_for(header_timeout) => {}
        }
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(grace, connection.as_mut()).await;
    }
}

/// HTTP/2 names the host in the request's `:authority`, not in a `Host` header (RFC 9113
/// §8.3.1). The Host and Origin checks read `Host`, so it is filled in from there.
fn authority_as_host(request: &mut Request<Incoming>) {
    if request.version() != Version::HTTP_2 || request.headers().contains_key(header::HOST) {
        return;
    }
    let host = request
        .uri()
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// Requests of one connection that are not finished yet (their response bodies included).
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    changed: Notify,
}

impl InFlight {
    fn enter(this: &Arc<InFlight>) -> Entered {
        this.count.fetch_add(1, Ordering::AcqRel);
        this.changed.notify_waiters();
        Entered(this.clone())
    }

    /// Resolves once no request has been in flight for `period`.
    async fn idle_for(&self, period: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(period) => return,
                () = changed => {}
            }
        }
    }
}

/// One request in flight, until its response body is dropped.
struct Entered(Arc<InFlight>);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// A response body that counts as in flight until it is dropped.
struct Counted {
    body: Body,
    _entered: Entered,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

//! The accept loop. axum's `serve` sets no header read timeout, so connections are driven
//! by hyper's HTTP/1 builder directly: headers must arrive within the configured time,
//! `TCP_NODELAY` is on (events are small and latency matters), and shutdown is graceful:
//! stop accepting, let every connection finish its response (streams end themselves on
//! the same signal), then give up on stragglers after the grace period.
//!
//! Event streams (SSE, and WebSockets once their `101` is out) leave hyper once their
//! headers are out (see [`handoff`]), so an idle subscriber costs its socket and its
//! subscription, not a whole HTTP connection. Their writers then run on the hub's fan-out
//! runtime ([`crate::hub::Hub::fan_out`]): a producer's request (or a poll) must not wait
//! behind 10,000 streams.
//!
//! With a certificate (`--tls-cert`) every connection is HTTPS instead, served by hyper
//! alone, HTTP/2 or HTTP/1.1 as ALPN chose ([`crate::tls::connection`]): no quick lane,
//! no hand-off.

use std::io;
use std::time::Duration;

use std::sync::Arc;

use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::tls::connection::Https;
use crate::tls::{self, Tls};
use crate::transport::{handoff, quick};

pub struct ServeOptions {
    pub header_timeout: Duration,
    /// How long shutdown waits for open connections and handed-off streams.
    pub grace: Duration,
    /// Counts open TCP connections (`progress_hub_http_connections`).
    pub open_connections: metrics::Gauge,
    /// Where handed-off streams (SSE, WebSocket) run ([`crate::hub::Hub::fan_out`]);
    /// `None`: beside everything else.
    pub fan_out: Option<tokio::runtime::Handle>,
    /// Where connections are served ([`ConnectionRuntimes`]); empty: on the runtime
    /// `serve` runs on.
    pub connection_runtimes: Vec<tokio::runtime::Handle>,
    /// How long a write may wait for a client to take anything before the connection is
    /// closed (`--send-timeout-secs`).
    pub send_timeout: Duration,
    /// Requests answered before hyper ([`quick`]); `None`: hyper serves every request.
    pub quick: Option<Arc<dyn quick::Quick>>,
    /// HTTPS instead of HTTP ([`crate::tls`]): every connection is served by hyper alone.
    pub tls: Option<Arc<Tls>>,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains: handed-off
/// streams (SSE, WebSocket) are waited for like connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true)
        // A client may send its request and then shut down its sending side (FIN) while
        // it waits for the answer; without this hyper drops such a request if it notices
        // the FIN before answering, which depends on timing.
        .half_close(true)
        // Head and body copied into one buffer and sent with one `write`, rather than
        // queued as separate buffers for `writev`: our answers are small (a poll is a few
        // hundred bytes), and the copy costs less than hyper's buffer queue (measured on
        // the poll route: docs/design/quick-lane.md). Event streams leave hyper after their head.
        .writev(false);
    let connections = TaskTracker::new();
    let https = options.tls.as_ref().map(|_| {
        tls::connection::builder(
            options.header_timeout,
            options.send_timeout,
            connections.clone(),
        )
    });
    let runtimes = &options.connection_runtimes;
    let mut turn = 0usize;
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    backoff_on_accept_error(error).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if let (Some(tls), Some(builder)) = (&options.tls, &https) {
            let https = Https {
                // The certificate loaded last: a reload reaches new connections.
                acceptor: tls.acceptor(),
                builder: builder.clone(),
                router: router.clone(),
                shutdown: shutdown.clone(),
                grace: options.grace,
                header_timeout: options.header_timeout,
                send_timeout: options.send_timeout,
                tracker: connections.clone(),
            };
            let open = OpenConnection::new(&options.open_connections);
            let serve = |stream| async move {
                https.serve(stream).await;
                drop(open);
            };
            spawn_connection(runtimes, &mut turn, &connections, stream, serve);
            continue;
        }
        let connection = Connection {
            http: http.clone(),
            router: router.clone(),
            shutdown: shutdown.clone(),
            grace: options.grace,
            header_timeout: options.header_timeout,
            send_timeout: options.send_timeout,
            quick: options.quick.clone(),
            writers: options.fan_out.clone(),
            tracker: connections.clone(),
            // A handed-off stream keeps counting as an open connection: the socket is open.
            open: OpenConnection::new(&options.open_connections),
        };
        spawn_connection(runtimes, &mut turn, &connections, stream, |stream| {
            connection.serve(stream)
        });
    }
    drop(listener);
    connections.close();
    let drained = tokio::time::timeout(options.grace, connections.wait()).await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "grace period over; closing remaining connections"
        );
    }
}

/// Serves a connection on the next of the connection runtimes (round robin; the socket
/// moves to the chosen runtime's reactor), or on this one when there are none.
fn spawn_connection<F, Fut>(
    runtimes: &[tokio::runtime::Handle],
    turn: &mut usize,
    connections: &TaskTracker,
    stream: TcpStream,
    serve: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if runtimes.is_empty() {
        connections.spawn(serve(stream));
        return;
    }
    let runtime = &runtimes[*turn % runtimes.len()];
    *turn = turn.wrapping_add(1);
    handoff::spawn_moved(runtime, connections, stream, serve);
}

/// Where a session on a connection upgraded through hyper runs, so that shutdown waits
/// for it as for the connections.
#[derive(Clone)]
pub struct Sessions(TaskTracker);

impl Sessions {
    pub(crate) fn new(tracker: TaskTracker) -> Sessions {
        Sessions(tracker)
    }

    pub fn spawn<F>(&self, session: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.0.spawn(session);
    }
}

/// What one connection's task needs.
struct Connection {
    http: http1::Builder,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
    header_timeout: Duration,
    send_timeout: Duration,
    quick: Option<Arc<dyn quick::Quick>>,
    writers: Option<tokio::runtime::Handle>,
    tracker: TaskTracker,
    open: OpenConnection,
}

impl Connection {
    /// Serves HTTP/1.1 on `stream` until the client leaves, the server shuts down, or an
    /// event stream's head is out (its writer then carries on without hyper).
    async fn serve(self, stream: TcpStream) {
        let Connection {
            http,
            router,
            shutdown,
            grace,
            header_timeout,
            send_timeout,
            quick,
            writers,
            tracker,
            open,
        } = self;
        let (stream, read) = match quick {
            Some(quick) => {
                let rules = quick::Rules {
                    header_timeout,
                    send_timeout,
                    grace,
                    shutdown: &shutdown,
                };
                match quick::serve(stream, &*quick, rules).await {
                    quick::Outcome::Done => return,
                    quick::Outcome::Pass(stream, read) => (stream, read),
                }
            }
            None => (stream, bytes::Bytes::new()),
        };
        let handoff = Arc::new(handoff::Connection::default());
        let socket = handoff::Socket::new(stream, read, handoff.clone(), send_timeout);
        // hyper's own `service_fn` is called by reference: unlike a tower service behind
        // `TowerToHyperService`, it is not cloned (with everything it holds) per request.
        let service = {
            let (handoff, tracker) = (handoff.clone(), tracker.clone());
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let (router, handoff) = (router.clone(), handoff.clone());
                if request.headers().contains_key(hyper::header::UPGRADE) {
                    // A connection upgraded through hyper (`--fast-paths off`) outlives
                    // this task: its session is tracked like a handed-off stream.
                    request
                        .extensions_mut()
                        .insert(Sessions::new(tracker.clone()));
                }
                async move {
                    let (version, method) = (request.version(), request.method().clone());
                    let mut response = router.oneshot(request).await?;
                    handoff.intercept(version, &method, &mut response);
                    Ok::<_, std::convert::Infallible>(response)
                }
            })
        };
        {
            let connection = http
                .serve_connection(TokioIo::new(socket), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            // The connection first: hyper must read what the quick lane passed on before a
            // shutdown reaches it, or it takes the connection for an idle one and closes it.
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                }
                _ = handoff.head_flushed() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, connection.as_mut()).await;
                }
            }
            // Leaving this block drops hyper's connection state and buffers.
        }
        if let Some((socket, stream)) = handoff.take() {
            handoff::spawn_writer(socket, stream, open, writers.as_ref(), &tracker);
        }
    }
}

/// Single-threaded runtimes, one per core, that HTTP connections are spread over. On the
/// work-stealing runtime a request's wake-ups crossed threads, and parking and unparking
/// the other worker was a visible share of the poll profile
/// (docs/design/connection-runtimes.md); here a connection's socket, timer and
/// tasks stay on one thread. Handlers' own spawns (an indexing job)
/// run there too, so the runtimes live as long as the application, not just the accept
/// loop: dropping this stops them.
pub struct ConnectionRuntimes {
    handles: Vec<tokio::runtime::Handle>,
    /// Dropping a sender ends its runtime's thread, which drops the runtime there.
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl ConnectionRuntimes {
    /// `count` runtimes on threads of their own; fewer (down to none: connections then
    /// run on the caller's runtime) if threads cannot be started.
    pub fn start(count: usize) -> ConnectionRuntimes {
        let mut runtimes = ConnectionRuntimes {
            handles: Vec::with_capacity(count),
            _stops: Vec::with_capacity(count),
        };
        for n in 0..count {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(%error, "cannot start a connection runtime");
                    break;
                }
            };
            let handle = runtime.handle().clone();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("http-{n}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                });
            if let Err(error) = thread {
                tracing::warn!(%error, "cannot start a connection runtime's thread");
                break;
            }
            runtimes.handles.push(handle);
            runtimes._stops.push(stop);
        }
        runtimes
    }

    pub fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.handles.clone()
    }
}

/// Raises the soft limit on open files to the hard limit: every stream is a socket, and
/// the usual soft default (1024) would cap a server at about a thousand subscribers.
/// Logs both limits, and warns when `subscribers` would not fit.
pub fn raise_open_files_limit(subscribers: u64) {
    #[cfg(unix)]
    {
        let (soft_before, hard) = match rlimit::Resource::NOFILE.get() {
            Ok(limits) => limits,
            Err(error) => {
                tracing::warn!(%error, "cannot read the open files limit");
                return;
            }
        };
        let soft = match rlimit::increase_nofile_limit(hard) {
            Ok(soft) => soft,
            Err(error) => {
                tracing::warn!(%error, soft = soft_before, hard, "cannot raise the open files limit");
                soft_before
            }
        };
        tracing::info!(soft_before, soft, hard, "open files limit");
        // A margin for the listener, the store and logs.
        if soft < subscribers.saturating_add(64) {
            tracing::warn!(
                soft,
                max_subscribers = subscribers,
                "the open files limit is below --max-subscribers; raise the hard limit (ulimit -Hn)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = subscribers;
}

/// One open connection in the gauge, for as long as this lives.
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn new(gauge: &metrics::Gauge) -> Self {
        gauge.increment(1.0);
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Errors of one connection (reset before accept) are the client's; running out of file
/// descriptors is ours, and retrying at once would spin, so wait a little.
async fn backoff_on_accept_error(error: io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {}
        _ => {
            tracing::warn!(%error, "accept failed; backing off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

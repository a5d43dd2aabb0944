//! A worker process: holds a share of the subscribers and measures what they receive.
//!
//! One process may open at most ~19,000 sockets here (the open-files limit is 20,000 and
//! cannot be raised), so the driver spawns several workers for larger runs. Each worker is
//! single-threaded (a current-thread runtime and a `LocalSet`): thousands of idle sockets
//! need no parallelism, and shared counters can then be plain `Cell`s.
//!
//! Talking to the driver is line-based: the worker prints `READY <connected> <failed>` once
//! every subscriber has connected or given up, reads `resume` (stalled subscribers start
//! reading again) or EOF (stop now) on stdin, and ends with `RESULT <json>`.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::LocalSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::measure::{self, now_ns};
use crate::stream::{classify, parse_head, Seen, SseBody};

/// Connection attempts in flight per worker: more only overflows the server's SYN queue.
const CONNECTS_IN_FLIGHT: usize = 256;
const CONNECT_ATTEMPTS: u32 = 3;
type Permit<'a> = Result<tokio::sync::SemaphorePermit<'a>, tokio::sync::AcquireError>;
/// One read buffer for every socket of the worker: reads are handled synchronously.
const SCRATCH_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct WorkerPlan {
    pub server: SocketAddr,
    pub path: String,
    pub ws: bool,
    pub subs: usize,
    /// Index of this worker's first source address among the `sources` loopback ones.
    pub first_source: usize,
    pub sources: usize,
    /// Subscribers stop reading after connecting, until the driver says `resume`.
    pub stall: bool,
    pub connect_timeout: Duration,
}

/// What every subscriber of this worker adds to.
struct Tally {
    latency: RefCell<Histogram<u64>>,
    delivered: Cell<u64>,
    finals: Cell<u64>,
    last_delivery_ns: Cell<u64>,
    connected: Cell<usize>,
    failed: Cell<usize>,
    ended: Cell<usize>,
    /// Woken whenever one of the counts above changes.
    changed: Notify,
    scratch: RefCell<Vec<u8>>,
}

impl Tally {
    /// Accounts for one event; true if it was the terminal one.
    fn seen(&self, seen: Seen, now: u64) -> bool {
        match seen {
            Seen::Timed(t) => {
                measure::record(&mut self.latency.borrow_mut(), now.saturating_sub(t) / 1000);
                self.delivered.set(self.delivered.get() + 1);
                self.last_delivery_ns.set(now);
                false
            }
            Seen::Final => {
                self.finals.set(self.finals.get() + 1);
                self.last_delivery_ns.set(now);
                true
            }
            Seen::Other => false,
        }
    }

    fn bump(&self, count: &Cell<usize>) {
        count.set(count.get() + 1);
        self.changed.notify_one();
    }

    async fn until(&self, done: impl Fn(&Tally) -> bool) {
        while !done(self) {
            self.changed.notified().await;
        }
    }
}

pub fn run(plan: WorkerPlan) -> ! {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    LocalSet::new().block_on(&runtime, work(plan));
    // Subscribers may still be blocked on sockets; the report is out, so just leave.
    std::process::exit(0)
}

async fn work(plan: WorkerPlan) {
    let tally = Rc::new(Tally {
        latency: RefCell::new(measure::histogram()),
        delivered: Cell::new(0),
        finals: Cell::new(0),
        last_delivery_ns: Cell::new(0),
        connected: Cell::new(0),
        failed: Cell::new(0),
        ended: Cell::new(0),
        changed: Notify::new(),
        scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
    });
    let (resume_tx, resume_rx) = watch::channel(false);
    let limiter = Rc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let started = Instant::now();
    for i in 0..plan.subs {
        // 127.0.0.2, 127.0.0.3, ...: each source address has its own ~28,000 ports.
        let source = 2 + (plan.first_source + i) % plan.sources;
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, source as u8));
        let (tally, limiter, plan, resume) = (
            tally.clone(),
            limiter.clone(),
            plan.clone(),
            resume_rx.clone(),
        );
        tokio::task::spawn_local(async move {
            subscriber(&tally, &limiter, &plan, source, resume).await;
            tally.bump(&tally.ended);
        });
    }
    let all_tried = |t: &Tally| t.connected.get() + t.failed.get() >= plan.subs;
    let _ = tokio::time::timeout(plan.connect_timeout, tally.until(all_tried)).await;
    let connected = tally.connected.get();
    println!(
        "READY {connected} {} {}",
        plan.subs - connected,
        started.elapsed().as_millis()
    );

    let stop = Rc::new(Notify::new());
    tokio::task::spawn_local(commands(resume_tx, stop.clone()));
    tokio::select! {
        _ = tally.until(|t| t.ended.get() >= plan.subs) => {}
        _ = stop.notified() => {}
    }
    let report = serde_json::json!({
        "connected": connected,
        "delivered": tally.delivered.get(),
        "finals": tally.finals.get(),
        "last_delivery_ns": tally.last_delivery_ns.get(),
        "cpu_secs": measure::own_cpu_secs(),
        "latency": measure::histogram_to_json(&tally.latency.borrow()),
    });
    println!("RESULT {report}");
}

/// Reads the driver's commands on stdin.
async fn commands(resume: watch::Sender<bool>, stop: Rc<Notify>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "resume" {
            let _ = resume.send(true);
        }
    }
    stop.notify_one();
}

async fn subscriber(
    tally: &Tally,
    limiter: &Semaphore,
    plan: &WorkerPlan,
    source: IpAddr,
    mut resume: watch::Receiver<bool>,
) {
    let permit = limiter.acquire().await;
    let mut attempt = 0;
    let stream = loop {
        attempt += 1;
        match connect(source, plan.server, plan.stall).await {
            Ok(stream) => break stream,
            Err(_) if attempt < CONNECT_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await
            }
            Err(_) => return tally.bump(&tally.failed),
        }
    };
    if plan.ws {
        websocket(tally, stream, plan, permit, &mut resume).await
    } else {
        sse(tally, stream, plan, permit, &mut resume).await
    }
}

async fn connect(
    source: IpAddr,
    server: SocketAddr,
    small_buffer: bool,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_buffer {
        // A stalled reader should fill up fast, so the server sees it as slow at once.
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .map_err(|_| std::io::Error::from(ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An HTTP/1.1 GET whose response body is read as SSE. Counts as connected once the
/// `200` head has arrived.
async fn sse(
    tally: &Tally,
    mut stream: TcpStream,
    plan: &WorkerPlan,
    permit: Permit<'_>,
    resume: &mut watch::Receiver<bool>,
) {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        plan.path, plan.server
    );
    let mut head = Vec::with_capacity(1024);
    let connected = async {
        stream.write_all(request.as_bytes()).await.map_err(drop)?;
        loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.map_err(drop)?;
            if n == 0 {
                return Err(());
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(parsed) = parse_head(&head) {
                return Ok(parsed);
            }
        }
    };
    let parsed = match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(parsed)) if parsed.status == 200 => parsed,
        _ => {
            return tally.bump(&tally.failed);
        }
    };
    tally.bump(&tally.connected);
    drop(permit);
    let mut body = SseBody::new(parsed.chunked);
    let mut done = false;
    let now = now_ns();
    body.feed(&head[parsed.len..], &mut |d| {
        done |= tally.seen(classify(d), now)
    });
    drop(head);
    if plan.stall {
        let _ = resume.wait_for(|go| *go).await;
    }
    while !done && !body.ended() {
        if stream.readable().await.is_err() {
            break;
        }
        let mut scratch = tally.scratch.borrow_mut();
        match stream.try_read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => {
                let now = now_ns();
                body.feed(&scratch[..n], &mut |d| done |= tally.seen(classify(d), now));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
}

async fn websocket(
    tally: &Tally,
    stream: TcpStream,
    plan: &WorkerPlan,
    permit: Permit<'_>,
    resume: &mut watch::Receiver<bool>,
) {
    let url = format!("ws://{}{}", plan.server, plan.path);
    // tungstenite's default read buffer is 128 KiB per socket: far too much for 19,000.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    let mut socket = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok((socket, _))) => socket,
        _ => {
            return tally.bump(&tally.failed);
        }
    };
    tally.bump(&tally.connected);
    drop(permit);
    if plan.stall {
        let _ = resume.wait_for(|go| *go).await;
    }
    while let Some(message) = socket.next().await {
        let data = match message {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if tally.seen(classify(data.as_bytes()), now_ns()) {
            break;
        }
    }
}

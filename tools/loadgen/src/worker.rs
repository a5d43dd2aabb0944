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

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::LocalSet;

use crate::measure::{self, now_ns};
use crate::stream::{classify, parse_head, pong, Frame, Seen, SseBody, WsFrames};

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
    /// Reads between two offers of the core to other threads (0: never).
    pub yield_every: u32,
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
    yields: YieldEvery,
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

/// Counts a worker's reads and says when to offer the core to other threads: every
/// `every`-th read, never if `every` is 0.
struct YieldEvery {
    every: u32,
    count: Cell<u32>,
}

impl YieldEvery {
    fn new(every: u32) -> YieldEvery {
        YieldEvery {
            every,
            count: Cell::new(0),
        }
    }

    /// Counts one read; true if the worker should yield now.
    fn due(&self) -> bool {
        if self.every == 0 {
            return false;
        }
        let count = self.count.get() + 1;
        let due = count >= self.every;
        self.count.set(if due { 0 } else { count });
        due
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
        yields: YieldEvery::new(plan.yield_every),
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
    events(tally, stream, plan, permit, &mut resume).await
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

/// An HTTP/1.1 GET for the event stream: a plain one read as SSE, or a WebSocket
/// upgrade read as frames. Counts as connected once the `200` (or `101`) head has
/// arrived. Both readers only scan bytes (see [`crate::stream`]), so the tool's cost per
/// event is the same whichever transport it measures.
async fn events(
    tally: &Tally,
    mut stream: TcpStream,
    plan: &WorkerPlan,
    permit: Permit<'_>,
    resume: &mut watch::Receiver<bool>,
) {
    let (request, expected) = if plan.ws {
        // The key is fixed: the server only hashes it into its answer, which this tool
        // does not check (the `101` is enough).
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            plan.path, plan.server
        );
        (request, 101)
    } else {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            plan.path, plan.server
        );
        (request, 200)
    };
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
        Ok(Ok(parsed)) if parsed.status == expected => parsed,
        _ => {
            return tally.bump(&tally.failed);
        }
    };
    tally.bump(&tally.connected);
    drop(permit);
    let mut body = if plan.ws {
        Body::Ws(WsFrames::default(), Vec::new())
    } else {
        Body::Sse(SseBody::new(parsed.chunked))
    };
    let mut done = body.feed(tally, &head[parsed.len..], now_ns());
    drop(head);
    if plan.stall {
        let _ = resume.wait_for(|go| *go).await;
    }
    while !done && !body.ended() {
        if body.answer(&mut stream).await.is_err() || stream.readable().await.is_err() {
            break;
        }
        let mut scratch = tally.scratch.borrow_mut();
        match stream.try_read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => done = body.feed(tally, &scratch[..n], now_ns()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if tally.yields.due() {
            std::thread::yield_now();
        }
    }
}

/// How a stream's bytes are read.
enum Body {
    Sse(SseBody),
    /// The frames, and pongs still to send.
    Ws(WsFrames, Vec<u8>),
}

impl Body {
    /// Reads `raw`, received at `now`; true once the terminal event (or a close) came.
    fn feed(&mut self, tally: &Tally, raw: &[u8], now: u64) -> bool {
        let mut done = false;
        match self {
            Body::Sse(body) => body.feed(raw, &mut |d| done |= tally.seen(classify(d), now)),
            Body::Ws(frames, pongs) => frames.feed(raw, &mut |frame| match frame {
                Frame::Data(d) => done |= tally.seen(classify(d), now),
                Frame::Ping(payload) => pong(payload, pongs),
                Frame::Close => done = true,
            }),
        }
        done
    }

    /// True once a chunked SSE body has ended.
    fn ended(&self) -> bool {
        matches!(self, Body::Sse(body) if body.ended())
    }

    /// Sends the pongs the pings read so far asked for.
    async fn answer(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        match self {
            Body::Ws(_, pongs) if !pongs.is_empty() => {
                stream.write_all(pongs).await?;
                pongs.clear();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::YieldEvery;

    #[test]
    fn yields_on_every_nth_read_and_never_at_zero() {
        let every_three = YieldEvery::new(3);
        let due: Vec<bool> = (0..7).map(|_| every_three.due()).collect();
        assert_eq!(due, [false, false, true, false, false, true, false]);
        let every_read = YieldEvery::new(1);
        assert!((0..4).all(|_| every_read.due()));
        let never = YieldEvery::new(0);
        assert!((0..1000).all(|_| !never.due()));
    }
}

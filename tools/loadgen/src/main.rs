//! loadgen: opens many SSE or WebSocket subscribers on one task (or Nchan channel),
//! publishes events at a given rate, and reports what arrived and how fast.
//!
//! The driver (this process) publishes and measures the server; the subscribers live in
//! worker processes (`worker.rs`) because one process may hold only ~19,000 sockets here.
//! Every event carries its publish time, so each worker records publish-to-deliver
//! latency in an HdrHistogram that the driver merges. The last line printed is a JSON
//! summary that scripts read.

mod measure;
mod publish;
mod stream;
mod worker;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use measure::{now_ns, percentiles_ms};
use publish::{Publisher, Target};

/// Subscribers one worker process holds at most (the fd limit is 20,000 per process).
const MAX_SUBS_PER_WORKER: usize = 18_000;

#[derive(Parser, Debug)]
#[command(about = "Load tool: N subscribers, one timed publisher, latency histograms")]
struct Args {
    /// Server address (loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Servers the subscribers connect to instead of `--server`, spread evenly
    /// (repeatable): the publisher stays on `--server`. For several nodes sharing tasks,
    /// and for Nchan instances sharing one Redis.
    #[arg(long = "subscribe-server")]
    subscribe_servers: Vec<SocketAddr>,
    /// Which publish API and subscribe path to use.
    #[arg(long, value_enum, default_value = "hub")]
    target: Target,
    /// Subscribe over WebSocket instead of SSE.
    #[arg(long)]
    ws: bool,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Worker processes holding the subscribers (default: one per 18,000).
    #[arg(long)]
    workers: Option<usize>,
    /// Loopback source addresses to spread connections over (127.0.0.2 upwards).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=250))]
    sources: u64,
    /// Events per second; 0 publishes as fast as acknowledgements come back.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of publishing (0: only the final event, for idle-connection runs).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Extra bytes of padding in every event.
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    /// Subscribers stop reading after connecting and resume after the final publish.
    #[arg(long)]
    stall: bool,
    /// Server process ids to read RSS and CPU from (repeatable; nginx has several).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Task id / channel name (default: a fresh one).
    #[arg(long)]
    channel: Option<String>,
    /// Seconds to wait for all subscribers to connect.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// Seconds to wait after the final publish for every subscriber to see it.
    #[arg(long, default_value_t = 15)]
    drain: u64,
    /// Milliseconds to let the server settle before reading its RSS with everyone connected.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Cooperative mode only: a nice value for the publishing thread once the subscribers
    /// are connected (negative needs root), so that the acknowledgement measured leaves out
    /// the publisher's own wait for a core. Real clients do nothing of the kind; the plain
    /// mode (the default) leaves it out (docs/design/load-tool.md).
    #[arg(long, allow_hyphen_values = true)]
    publisher_nice: Option<i32>,
    /// Cooperative mode only: reads after which a worker offers its core to whatever else
    /// waits for it (`sched_yield`). 0, the default, never: real clients do not cooperate
    /// with the server they read (docs/design/load-tool.md).
    #[arg(long, default_value_t = 0)]
    worker_yield: u32,
    /// A name for the run, copied into the summary.
    #[arg(long, default_value = "")]
    label: String,
    /// Internal: run as a worker holding `--subs` subscribers on `--path`.
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true, default_value = "")]
    path: String,
    #[arg(long, hide = true, default_value_t = 0)]
    first_source: usize,
}

fn main() {
    let args = Args::parse();
    if args.worker {
        worker::run(worker::WorkerPlan {
            server: args.server,
            path: args.path,
            ws: args.ws,
            subs: args.subs,
            first_source: args.first_source,
            sources: args.sources as usize,
            stall: args.stall,
            yield_every: args.worker_yield,
            connect_timeout: Duration::from_secs(args.connect_timeout),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    match runtime.block_on(drive(args)) {
        Ok(summary) => println!("{summary}"),
        Err(error) => {
            eprintln!("loadgen: {error}");
            println!("{}", json!({"error": error.to_string()}));
            std::process::exit(1);
        }
    }
}

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The next line starting with `tag`, within `wait`.
    async fn expect(&mut self, tag: &str, wait: Duration) -> std::io::Result<String> {
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(tag) {
                    return Ok(rest.trim().to_string());
                }
            }
            Err(std::io::Error::other(format!("worker ended before {tag}")))
        };
        tokio::time::timeout(wait, read)
            .await
            .map_err(|_| std::io::Error::other(format!("no {tag} from a worker in time")))?
    }

    async fn say(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
        }
    }
}

async fn drive(args: Args) -> std::io::Result<Value> {
    let channel = args
        .channel
        .clone()
        .unwrap_or_else(|| format!("bench-{}-{}", std::process::id(), now_ns() % 1_000_000_000));
    let host = args.server.to_string();
    let mut publisher =
        Publisher::connect(&host, args.target, &channel, args.payload_bytes).await?;
    publisher.setup().await?;
    let pids = &args.server_pids;
    let rss_base = measure::total_rss_kib(pids);
    let server_cpu_start = measure::total_cpu_secs(pids);

    // Connect every subscriber, spread over worker processes.
    let worker_count = args
        .workers
        .unwrap_or(args.subs.div_ceil(MAX_SUBS_PER_WORKER))
        .max(args.subscribe_servers.len())
        .max(1);
    let path = args.target.subscribe_path(&channel, args.ws);
    let connecting = Instant::now();
    let mut workers = Vec::with_capacity(worker_count);
    for w in 0..worker_count {
        let subs = args.subs / worker_count + usize::from(w < args.subs % worker_count);
        workers.push(spawn_worker(&args, &path, subs, w)?);
    }
    let (mut connected, mut failed) = (0u64, 0u64);
    let connect_wait = Duration::from_secs(args.connect_timeout + 10);
    for worker in &mut workers {
        let ready = worker.expect("READY", connect_wait).await?;
        let mut counts = ready.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        connected += counts.next().unwrap_or(0);
        failed += counts.next().unwrap_or(0);
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    eprintln!("connected {connected}, failed {failed}, in {connect_secs:.2} s");
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let rss_connected = measure::total_rss_kib(pids);

    // Publish. This thread is the publisher (a current-thread runtime), and on Linux the
    // nice value is per thread, so the workers, already started, keep theirs.
    if let Some(nice) = args.publisher_nice {
        if let Err(error) = rustix::process::setpriority_process(None, nice) {
            eprintln!("cannot set the publisher's nice value to {nice}: {error}");
        }
    }
    let mut acks = measure::histogram();
    let (mut published, mut publish_errors) = (0u64, 0u64);
    let publish_start_ns = now_ns();
    let started = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    let planned = (args.rate as f64 * args.duration).round() as u64;
    loop {
        if args.rate > 0 {
            if published >= planned {
                break;
            }
            let due = started + Duration::from_secs_f64(published as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        } else if started.elapsed() >= duration {
            break;
        }
        let t = now_ns();
        let status = publisher.event(published + 1, t).await?;
        measure::record(&mut acks, (now_ns() - t) / 1000);
        published += 1;
        if !(200..300).contains(&status) {
            publish_errors += 1;
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let t = now_ns();
    let final_status = publisher.finish(t).await?;
    let final_ack_ms = (now_ns() - t) as f64 / 1e6;
    if !(200..300).contains(&final_status) {
        publish_errors += 1;
    }
    if args.stall {
        for worker in &mut workers {
            worker.say("resume").await;
        }
    }

    // Collect: wait for every subscriber to see the final event, then stop stragglers.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(args.drain);
    let mut results = Vec::with_capacity(workers.len());
    for worker in &mut workers {
        let wait = drain_until.saturating_duration_since(tokio::time::Instant::now());
        let result = match worker.expect("RESULT", wait).await {
            Ok(result) => result,
            Err(_) => {
                drop(worker.child.stdin.take());
                worker.expect("RESULT", Duration::from_secs(10)).await?
            }
        };
        results.push(serde_json::from_str::<Value>(&result).map_err(std::io::Error::other)?);
        let _ = worker.child.wait().await;
    }
    let rss_end = measure::total_rss_kib(pids);
    let server_cpu = measure::total_cpu_secs(pids) - server_cpu_start;

    let mut latency = measure::histogram();
    let (mut delivered, mut finals, mut last_ns, mut tool_cpu) = (0u64, 0u64, 0u64, 0.0);
    for r in &results {
        measure::histogram_add_json(&mut latency, &r["latency"]);
        delivered += r["delivered"].as_u64().unwrap_or(0);
        finals += r["finals"].as_u64().unwrap_or(0);
        last_ns = last_ns.max(r["last_delivery_ns"].as_u64().unwrap_or(0));
        tool_cpu += r["cpu_secs"].as_f64().unwrap_or(0.0);
    }
    tool_cpu += measure::own_cpu_secs();
    let delivery_secs = last_ns.saturating_sub(publish_start_ns) as f64 / 1e9;
    let [p50, p99, p999, max] = percentiles_ms(&latency);
    let [ack50, ack99, _, ack_max] = percentiles_ms(&acks);
    let per_conn = |kib: u64| {
        (kib.saturating_sub(rss_base) * 1024)
            .checked_div(connected)
            .unwrap_or(0)
    };
    let round = |x: f64| (x * 1000.0).round() / 1000.0;

    eprintln!("published {published} in {publish_secs:.2} s ({:.0}/s), errors {publish_errors}; ack p50 {ack50} ms p99 {ack99} ms max {ack_max} ms; final ack {final_ack_ms:.3} ms", published as f64 / publish_secs.max(1e-9));
    eprintln!("delivered {delivered} of {} ({:.0}/s); latency p50 {p50} p99 {p99} p99.9 {p999} max {max} ms; missed final {}", published * connected, delivered as f64 / delivery_secs.max(1e-9), connected - finals.min(connected));
    eprintln!("server RSS {rss_base} -> {rss_connected} -> {rss_end} KiB ({} B per connection); server CPU {server_cpu:.2} s; tool CPU {tool_cpu:.2} s", per_conn(rss_connected));

    Ok(json!({
        "label": args.label,
        "publisher_nice": args.publisher_nice,
        "worker_yield": args.worker_yield,
        "target": format!("{:?}", args.target).to_lowercase(),
        "transport": if args.ws { "ws" } else { "sse" },
        "subs": args.subs,
        "workers": worker_count,
        "connected": connected,
        "failed": failed,
        "connect_secs": round(connect_secs),
        "published": published,
        "publish_errors": publish_errors,
        "publish_rate": round(published as f64 / publish_secs.max(1e-9)),
        "ack_p50_ms": ack50,
        "ack_p99_ms": ack99,
        "ack_max_ms": ack_max,
        "final_ack_ms": round(final_ack_ms),
        "delivered": delivered,
        "expected": published * connected,
        "delivered_per_sec": round(delivered as f64 / delivery_secs.max(1e-9)),
        "lat_p50_ms": p50,
        "lat_p99_ms": p99,
        "lat_p999_ms": p999,
        "lat_max_ms": max,
        "missed_final": connected - finals.min(connected),
        "rss_base_kib": rss_base,
        "rss_connected_kib": rss_connected,
        "rss_end_kib": rss_end,
        "rss_per_conn_bytes": per_conn(rss_connected),
        "server_cpu_secs": round(server_cpu),
        "tool_cpu_secs": round(tool_cpu),
    }))
}

fn spawn_worker(
    args: &Args,
    path: &str,
    subs: usize,
    first_source: usize,
) -> std::io::Result<Worker> {
    // Workers take the subscribe servers in turn.
    let server = match args.subscribe_servers.len() {
        0 => args.server,
        n => args.subscribe_servers[first_source % n],
    };
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("--worker")
        .args(["--server", &server.to_string()])
        .args(["--path", path])
        .args(["--subs", &subs.to_string()])
        .args(["--sources", &args.sources.to_string()])
        .args(["--first-source", &first_source.to_string()])
        .args(["--connect-timeout", &args.connect_timeout.to_string()])
        .args(["--worker-yield", &args.worker_yield.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if args.ws {
        command.arg("--ws");
    }
    if args.stall {
        command.arg("--stall");
    }
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("worker has no stdout"))?;
    Ok(Worker {
        child,
        lines: BufReader::new(stdout).lines(),
    })
}

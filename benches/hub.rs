//! Micro-benchmarks of the hot path, without HTTP: publishing a progress update through the
//! hub with 0, 1 and 1,000 subscribers waiting, the same with sinks, and encoding one
//! snapshot into an event.
//!
//! "Publish" here means `Hub::progress` plus every subscriber task having received the
//! event: with subscribers parked in `Subscription::next`, the send wakes each of them, and
//! that wakeup and delivery is the part that grows with the audience. This is the path of
//! WebSocket sessions, long polls and `/api/events`. "publish_to_sinks" is the path of a
//! task's SSE streams: `Hub::progress` plus the relay handing the event to every sink
//! (here a counter, where a stream's sink makes one `writev`).
//!
//! Run: `cargo bench --bench hub`.

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::collections::VecDeque;

use progress_hub::hub::{Event, Hub, HubConfig, NewTask, ProgressUpdate, Sink, Snapshot, TaskId};
use progress_hub::store::MemoryStore;
use serde_json::json;
use tokio::sync::Notify;

fn update(n: u64) -> ProgressUpdate {
    ProgressUpdate {
        processed: Some(n),
        current_file: Some("reports/2024/quarterly-summary.pdf".to_string()),
        detail: Some(json!({"t": 1_700_000_000_000_000_000u64 + n})),
        ..Default::default()
    }
}

/// One thread, as a loaded server's worker would run the subscriber tasks, and a hub
/// with one running task and no coalescing.
fn hub_with_task() -> (tokio::runtime::Runtime, Hub, TaskId) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let config = HubConfig {
        coalesce: Duration::ZERO,
        ..HubConfig::default()
    };
    let (hub, id) = runtime.block_on(async {
        let hub = Hub::new(config, Arc::new(MemoryStore::new(128))).expect("hub");
        let id = TaskId::parse("bench").expect("id");
        hub.create(NewTask {
            id: Some(id.clone()),
            total: u64::MAX,
            ..NewTask::default()
        })
        .expect("create");
        (hub, id)
    });
    (runtime, hub, id)
}

/// Publishes and, when there is an audience, waits until all of it has the event.
struct Run {
    hub: Hub,
    id: TaskId,
    received: Arc<AtomicUsize>,
    all_received: Arc<Notify>,
    wait: bool,
    n: u64,
}

impl Run {
    fn new(
        hub: Hub,
        id: TaskId,
        received: Arc<AtomicUsize>,
        all_received: Arc<Notify>,
        wait: bool,
    ) -> Run {
        Run {
            hub,
            id,
            received,
            all_received,
            wait,
            n: 0,
        }
    }

    async fn publish(&mut self, iterations: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iterations {
            self.n += 1;
            self.received.store(0, Ordering::Relaxed);
            let answer = self.hub.progress(&self.id, update(self.n));
            black_box(answer.expect("progress"));
            if self.wait {
                self.all_received.notified().await;
            }
        }
        start.elapsed()
    }
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    for subscribers in [0usize, 1, 1000] {
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &subscribers| {
                let (runtime, hub, id) = hub_with_task();
                let received = Arc::new(AtomicUsize::new(0));
                let all_received = Arc::new(Notify::new());
                runtime.block_on(async {
                    for _ in 0..subscribers {
                        let mut subscription =
                            hub.subscribe(&id, None).expect("task").expect("running");
                        // Skip the snapshot a new subscriber starts with.
                        subscription.next().await;
                        let (received, all_received) = (received.clone(), all_received.clone());
                        tokio::spawn(async move {
                            while let Some(event) = subscription.next().await {
                                black_box(event.sse_frame());
                                if received.fetch_add(1, Ordering::Relaxed) + 1 == subscribers {
                                    all_received.notify_one();
                                }
                            }
                        });
                    }
                    // Let every subscriber park on its channel.
                    tokio::task::yield_now().await;
                });
                let mut run = Run::new(hub, id, received, all_received, subscribers > 0);
                b.iter_custom(|iterations| runtime.block_on(run.publish(iterations)));
            },
        );
    }
    group.finish();
}

/// Counts what it is given and says when every sink of the run has it.
struct CountingSink {
    received: Arc<AtomicUsize>,
    all_received: Arc<Notify>,
    sinks: usize,
}

impl Sink for CountingSink {
    fn begin(&self, backlog: VecDeque<Event>, _live: bool) {
        black_box(backlog);
    }

    fn deliver(&self, events: &[Event]) {
        black_box(events.last().map(Event::sse_frame));
        if self.received.fetch_add(1, Ordering::Relaxed) + 1 == self.sinks {
            self.all_received.notify_one();
        }
    }
}

fn publish_to_sinks(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_to_sinks");
    for sinks in [1usize, 1000] {
        group.bench_with_input(BenchmarkId::from_parameter(sinks), &sinks, |b, &sinks| {
            let (runtime, hub, id) = hub_with_task();
            let received = Arc::new(AtomicUsize::new(0));
            let all_received = Arc::new(Notify::new());
            let _attached = runtime.block_on(async {
                (0..sinks)
                    .map(|_| {
                        let sink = Arc::new(CountingSink {
                            received: received.clone(),
                            all_received: all_received.clone(),
                            sinks,
                        });
                        hub.subscribe_sink(&id, None, sink)
                            .expect("task")
                            .expect("running")
                    })
                    .collect::<Vec<_>>()
            });
            let mut run = Run::new(hub, id, received, all_received, true);
            b.iter_custom(|iterations| runtime.block_on(run.publish(iterations)));
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut snapshot = Snapshot::new(TaskId::parse("bench").expect("id"), None, 20_000, 0);
    snapshot.seq = 42;
    snapshot.processed = 9_000;
    snapshot.progress = 45;
    snapshot.current_file = "reports/2024/quarterly-summary.pdf".to_string();
    snapshot.detail = Some(json!({"t": 1_700_000_000_000_000_000u64, "stage": "extract"}));
    snapshot.rate_per_second = Some(812.5);
    snapshot.eta_seconds = Some(14);
    c.bench_function("encode", |b| b.iter(|| Event::encode(black_box(&snapshot))));
}

criterion_group!(benches, publish, publish_to_sinks, encode);
criterion_main!(benches);

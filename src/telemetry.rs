//! Metrics, and the span every request is traced in.
//!
//! Every request, on every path (routed, answered by the quick lane, or an event stream
//! written after its hand-off from hyper), is traced in a `DEBUG` span named `request`
//! with its `method`, `route` (as the router writes it), `task_id` where the route has
//! one, and `status`, and ends with a `DEBUG` event (`answered`, or `stream ended` when a
//! handed-off stream ends). The log filter is `RUST_LOG`, `info` by default (`main.rs`):
//! then the span is disabled, which costs a level check, and its fields are not even
//! computed. `RUST_LOG=progress_hub=debug` shows one line per request.
//!
//! Metrics: one Prometheus recorder per [`Application`](crate::Application), never a
//! global one, so that many servers can run in one process (the tests do).
//!
//! Every handle is registered once, here; the hot paths only touch a handle, which is an
//! atomic add (counters, gauges) or a push onto a lock-free bucket (histograms). What the
//! hub already counts in its [`Stats`] atomics, and the number of tasks by status, is
//! copied into the recorder when `/metrics` is scraped rather than counted twice.
//!
//! The exporter keeps histogram samples until they are drained into buckets, so a task
//! drains them every few seconds whether or not anybody scrapes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::hub::{Hub, Status};

/// The span of one request (see the module docs). A macro, so that the fields are
/// computed only when the span is enabled. `task_id`: an `Option` of something `Display`.
macro_rules! request_span {
    ($method:expr, $route:expr, $task_id:expr) => {
        tracing::debug_span!(
            "request",
            method = %$method,
            route = %$route,
            task_id = $task_id.map(tracing::field::display),
            status = tracing::field::Empty,
        )
    };
}
pub(crate) use request_span;

/// Ends a request's span: its status, and the event that shows the request in the log.
/// `how`: the event's message.
pub fn answered(span: &tracing::Span, status: u16, how: &'static str) {
    if span.is_disabled() {
        return;
    }
    span.record("status", status);
    tracing::debug!(parent: span, "{how}");
}

/// The `task_id` segment of `path` when `route` (as the router writes it) has one.
pub fn task_id_in<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let at = route
        .split('/')
        .position(|segment| segment == "{task_id}")?;
    path.split('/').nth(at)
}

/// How a subscriber follows tasks; one connections gauge each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
    /// `GET /api/events`.
    AllEvents,
    LongPoll,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Sse,
        Transport::WebSocket,
        Transport::AllEvents,
        Transport::LongPoll,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::WebSocket => "ws",
            Transport::AllEvents => "all_events",
            Transport::LongPoll => "long_poll",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which limit turned a request away (a label of `progress_hub_limit_rejections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    SubscribersPerTask,
    SubscribersTotal,
    TasksTotal,
    UnfinishedTasksPerToken,
}

impl LimitKind {
    const ALL: [LimitKind; 4] = [
        LimitKind::SubscribersPerTask,
        LimitKind::SubscribersTotal,
        LimitKind::TasksTotal,
        LimitKind::UnfinishedTasksPerToken,
    ];

    fn as_str(self) -> &'static str {
        match self {
            LimitKind::SubscribersPerTask => "subscribers_per_task",
            LimitKind::SubscribersTotal => "subscribers_total",
            LimitKind::TasksTotal => "tasks_total",
            LimitKind::UnfinishedTasksPerToken => "unfinished_tasks_per_token",
        }
    }
}

pub const CONNECTIONS: &str = "progress_hub_connections";
pub const HTTP_CONNECTIONS: &str = "progress_hub_http_connections";
pub const EVENTS_PUBLISHED: &str = "progress_hub_events_published_total";
pub const FRAMES_DELIVERED: &str = "progress_hub_frames_delivered_total";
pub const UPDATES_COALESCED: &str = "progress_hub_updates_coalesced_total";
pub const LAG_RESYNCS: &str = "progress_hub_lag_resyncs_total";
pub const RELAY_SKIPPED: &str = "progress_hub_relay_skipped_total";
pub const REPLAYS: &str = "progress_hub_replays_total";
pub const TASKS: &str = "progress_hub_tasks";
pub const LIMIT_REJECTIONS: &str = "progress_hub_limit_rejections_total";
pub const STORE_WRITE_SECONDS: &str = "progress_hub_store_write_seconds";
const STORE_UNWRITTEN: &str = "progress_hub_store_unwritten_events";
pub const REDIS_READY: &str = "progress_hub_redis_ready";
pub const REDIS_SUBSCRIPTION_LOSSES: &str = "progress_hub_redis_subscription_losses_total";
pub const REDIS_STREAM_READS: &str = "progress_hub_redis_stream_events_read_total";
pub const REDIS_WRITE_CONFLICTS: &str = "progress_hub_redis_write_conflicts_total";
pub const REDIS_RESTORES: &str = "progress_hub_redis_restores_total";
pub const PUBLISH_TO_DELIVER_SECONDS: &str = "progress_hub_publish_to_deliver_seconds";
pub const HTTP_REQUESTS: &str = "progress_hub_http_requests_total";
/// The `route` of requests that matched none (and of heads that were not HTTP).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Buckets for the publish-to-deliver latency: from 50 µs (an idle server) to 5 s.
const DELIVERY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// Buckets for one store write (a batch, for a batching store).
const STORE_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// How often histogram samples are drained into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The registered handles of one server. Cheap to share behind an `Arc`.
pub struct Metrics {
    recorder: PrometheusRecorder,
    connections: [Gauge; 4],
    /// Open TCP connections, whatever they carry.
    pub http_connections: Gauge,
    frames: [Counter; 4],
    delivery: Histogram,
    rejections: [Counter; 4],
    events_published: Counter,
    updates_coalesced: Counter,
    lag_resyncs: Counter,
    relay_skipped: Counter,
    replays: Counter,
    tasks: [Gauge; 5],
    store: StoreMetrics,
    store_unwritten: Gauge,
}

impl Metrics {
    /// A fresh recorder with every metric described and registered. Call inside a tokio
    /// runtime: it starts the task that drains histogram samples, which ends when the
    /// returned value is dropped.
    pub fn new() -> Arc<Metrics> {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(PUBLISH_TO_DELIVER_SECONDS.to_string()),
                DELIVERY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(STORE_WRITE_SECONDS.to_string()),
                    STORE_BUCKETS,
                )
            });
        // Both bucket lists are non-empty constants, the only way these calls fail.
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let r = &recorder;
        describe(r, CONNECTIONS, "Open subscriber connections, by transport.");
        describe(r, HTTP_CONNECTIONS, "Open TCP connections.");
        describe(r, EVENTS_PUBLISHED, "Task changes published.");
        describe(
            r,
            FRAMES_DELIVERED,
            "Events written to subscribers, by transport.",
        );
        describe(
            r,
            UPDATES_COALESCED,
            "Progress reports merged into a change still waiting to be published.",
        );
        describe(
            r,
            LAG_RESYNCS,
            "Times a slow subscriber skipped ahead to the newest snapshot.",
        );
        describe(
            r,
            RELAY_SKIPPED,
            "Events the fan-out fell too far behind to relay; live subscribers got a newer snapshot.",
        );
        describe(
            r,
            REPLAYS,
            "Subscriptions that resumed from a Last-Event-ID.",
        );
        describe(r, TASKS, "Tasks held, by status.");
        describe(
            r,
            STORE_UNWRITTEN,
            "Published changes the store has not written yet (failed writes wait here to be retried).",
        );
        describe(
            r,
            HTTP_REQUESTS,
            "Requests answered, by route and status, quick lane included.",
        );
        describe(
            r,
            LIMIT_REJECTIONS,
            "Requests turned away by a limit, by limit.",
        );
        describe(
            r,
            STORE_WRITE_SECONDS,
            "Time one store write (or batch) took.",
        );
        describe(
            r,
            PUBLISH_TO_DELIVER_SECONDS,
            "Time from publishing a change to writing it to a live subscriber (one live frame in 16 per stream).",
        );
        let transport = |name: &'static str, t: Transport| key(name, &[("transport", t.as_str())]);
        let status = |s: Status| key(TASKS, &[("status", s.as_str())]);
        let metrics = Arc::new(Metrics {
            connections: Transport::ALL.map(|t| gauge(r, transport(CONNECTIONS, t))),
            http_connections: gauge(r, key(HTTP_CONNECTIONS, &[])),
            frames: Transport::ALL.map(|t| counter(r, transport(FRAMES_DELIVERED, t))),
            delivery: histogram(r, key(PUBLISH_TO_DELIVER_SECONDS, &[])),
            rejections: LimitKind::ALL
                .map(|l| counter(r, key(LIMIT_REJECTIONS, &[("limit", l.as_str())]))),
            events_published: counter(r, key(EVENTS_PUBLISHED, &[])),
            updates_coalesced: counter(r, key(UPDATES_COALESCED, &[])),
            lag_resyncs: counter(r, key(LAG_RESYNCS, &[])),
            relay_skipped: counter(r, key(RELAY_SKIPPED, &[])),
            replays: counter(r, key(REPLAYS, &[])),
            tasks: Status::ALL.map(|s| gauge(r, status(s))),
            store: StoreMetrics {
                write: histogram(r, key(STORE_WRITE_SECONDS, &[])),
            },
            store_unwritten: gauge(r, key(STORE_UNWRITTEN, &[])),
            recorder,
        });
        metrics.recorder.handle().run_upkeep();
        spawn_upkeep(Arc::downgrade(&metrics));
        metrics
    }

    /// One more open connection of this transport.
    pub fn connection_opened(&self, transport: Transport) -> &Gauge {
        let gauge = &self.connections[transport.index()];
        gauge.increment(1.0);
        gauge
    }

    pub fn frame_delivered(&self, transport: Transport) {
        self.frames[transport.index()].increment(1);
    }

    /// Time from publishing an event to writing it to a subscriber. Streams record
    /// through a [`DeliverySampler`], not every frame.
    pub fn delivered_after(&self, latency: Duration) {
        self.delivery.record(latency.as_secs_f64());
    }

    /// The counter of requests to `route` answered with `status`. Registering looks the
    /// series up: hot paths keep the handle.
    pub fn http_requests(&self, route: &str, status: u16) -> Counter {
        let labels = vec![
            Label::new("route", route.to_string()),
            Label::new("status", status.to_string()),
        ];
        counter(&self.recorder, Key::from_parts(HTTP_REQUESTS, labels))
    }

    pub fn rejected(&self, limit: LimitKind) {
        self.rejections[limit as usize].increment(1);
    }

    /// The handle a store records its write latency into.
    /// The metrics of a node on Redis (`--redis-url`), registered only then.
    pub fn redis(&self) -> RedisMetrics {
        let r = &self.recorder;
        describe(
            r,
            REDIS_READY,
            "1 while the node is subscribed to Redis and caught up (it takes writes), else 0.",
        );
        describe(
            r,
            REDIS_SUBSCRIPTION_LOSSES,
            "Times the node lost its subscription (Redis away or restarted) and started over.",
        );
        describe(
            r,
            REDIS_STREAM_READS,
            "Events read back from tasks' streams: catching up after (re)subscribing, or a gap the subscription left.",
        );
        describe(
            r,
            REDIS_WRITE_CONFLICTS,
            "Writes that found another node had changed the task first, and were computed again.",
        );
        describe(
            r,
            REDIS_RESTORES,
            "Times this node found Redis had lost its data and gave it back the tasks it holds.",
        );
        RedisMetrics {
            ready: gauge(r, key(REDIS_READY, &[])),
            subscription_losses: counter(r, key(REDIS_SUBSCRIPTION_LOSSES, &[])),
            stream_reads: counter(r, key(REDIS_STREAM_READS, &[])),
            write_conflicts: counter(r, key(REDIS_WRITE_CONFLICTS, &[])),
            restores: counter(r, key(REDIS_RESTORES, &[])),
        }
    }

    pub fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// The Prometheus text exposition, with the hub's counters and the task counts
    /// brought up to date first.
    pub fn render(&self, hub: &Hub) -> String {
        let stats = hub.stats();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        self.events_published
            .absolute(load(&stats.events_published));
        self.updates_coalesced
            .absolute(load(&stats.updates_coalesced));
        self.lag_resyncs.absolute(load(&stats.lag_resyncs));
        self.relay_skipped.absolute(load(&stats.relay_skipped));
        self.replays.absolute(load(&stats.replays));
        let counts = hub.count_by_status();
        for (gauge, count) in self.tasks.iter().zip(counts) {
            gauge.set(count as f64);
        }
        self.store_unwritten.set(hub.store().unwritten() as f64);
        self.recorder.handle().render()
    }
}

/// Recording a latency costs far more than counting a frame (`cargo run --release
/// --example metrics_cost` prints both), and the exporter holds every sample until it
/// drains them. So each stream times one live
/// frame in this many: the first, then every 16th.
pub const DELIVERY_SAMPLE_EVERY: u32 = 16;

/// One stream's view of the publish-to-deliver histogram: counts the frame, and times
/// a sample of the frames that were live for this stream.
pub struct DeliverySampler {
    metrics: Arc<Metrics>,
    transport: Transport,
    /// Events published before this were history or the snapshot when the stream
    /// opened; their age is no delivery latency.
    opened: Instant,
    live: u32,
}

impl DeliverySampler {
    pub fn new(metrics: Arc<Metrics>, transport: Transport) -> Self {
        DeliverySampler {
            metrics,
            transport,
            opened: Instant::now(),
            live: 0,
        }
    }

    /// A frame of an event published at `published_at` was just written.
    pub fn delivered(&mut self, published_at: Instant) {
        self.metrics.frame_delivered(self.transport);
        if published_at >= self.opened {
            if self.live.is_multiple_of(DELIVERY_SAMPLE_EVERY) {
                self.metrics.delivered_after(published_at.elapsed());
            }
            self.live = self.live.wrapping_add(1);
        }
    }
}

/// Where a store reports how long its writes take (`progress_hub_store_write_seconds`).
/// Cheap to clone; [`Store::attach_metrics`](crate::store::Store::attach_metrics) hands
/// one to the store when the server starts.
#[derive(Clone)]
pub struct StoreMetrics {
    write: Histogram,
}

impl StoreMetrics {
    /// One write (or one batch of writes) took this long.
    pub fn record_write(&self, took: Duration) {
        self.write.record(took.as_secs_f64());
    }
}

/// What a node on Redis reports ([`Metrics::redis`]). Cheap to clone.
#[derive(Clone)]
pub struct RedisMetrics {
    pub ready: Gauge,
    pub subscription_losses: Counter,
    pub stream_reads: Counter,
    pub write_conflicts: Counter,
    pub restores: Counter,
}

fn spawn_upkeep(metrics: Weak<Metrics>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(metrics) = metrics.upgrade() else {
                return;
            };
            metrics.recorder.handle().run_upkeep();
        }
    });
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
    Key::from_parts(name, labels)
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn describe(r: &PrometheusRecorder, name: &'static str, help: &'static str) {
    let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
    if name.ends_with("_total") {
        r.describe_counter(KeyName::from_const_str(name), unit, help.into());
    } else if unit.is_some() {
        r.describe_histogram(KeyName::from_const_str(name), unit, help.into());
    } else {
        r.describe_gauge(KeyName::from_const_str(name), unit, help.into());
    }
}

fn counter(r: &PrometheusRecorder, key: Key) -> Counter {
    r.register_counter(&key, &metadata())
}

fn gauge(r: &PrometheusRecorder, key: Key) -> Gauge {
    r.register_gauge(&key, &metadata())
}

fn histogram(r: &PrometheusRecorder, key: Key) -> Histogram {
    r.register_histogram(&key, &metadata())
}

#[cfg(test)]
mod tests {
    use super::task_id_in;

    #[test]
    fn the_task_id_is_the_segment_the_route_names() {
        let route = "/api/index-progress/{task_id}/events";
        assert_eq!(
            task_id_in(route, "/api/index-progress/t-1/events"),
            Some("t-1")
        );
        assert_eq!(
            task_id_in("/api/tasks/{task_id}", "/api/tasks/x"),
            Some("x")
        );
        assert_eq!(task_id_in("/api/tasks", "/api/tasks"), None);
        assert_eq!(task_id_in("unmatched", "/nowhere/at/all"), None);
    }
}

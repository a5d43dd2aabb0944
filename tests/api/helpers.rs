//! `spawn_app()` starts the server in-process on a free loopback port; `TestApp` wraps
//! the typed requests the tests make, and `SseClient` reads an event stream frame by frame.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use clap::ValueEnum;
use futures_util::StreamExt;
use progress_hub::config::{Config, StoreKind, Switch};
use progress_hub::hub::{Hub, TaskId};
use progress_hub::store::{MemoryStore, Store};
use progress_hub::Application;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub hub: Hub,
    pub config: Config,
    /// The in-memory store, kept so a restart finds the same tasks; `None` when the server
    /// opens its store from the data directory (SQLite), as a real restart does.
    store: Option<Arc<dyn Store>>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Whether the servers the tests start have the fast paths on (`PROGRESS_HUB_FAST_PATHS`,
/// on unless it says off).
pub fn fast_paths() -> bool {
    std::env::var("PROGRESS_HUB_FAST_PATHS").map_or(true, |mode| {
        Switch::from_str(&mode, true) != Ok(Switch::Off)
    })
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config::for_tests();
    config.coalesce_ms = 0;
    // CI runs the suite a second time with the fast paths off (`.ci/run`).
    if let Ok(mode) = std::env::var("PROGRESS_HUB_FAST_PATHS") {
        config.fast_paths =
            Switch::from_str(&mode, true).expect("PROGRESS_HUB_FAST_PATHS: on or off");
    }
    configure(&mut config);
    let store: Option<Arc<dyn Store>> = match config.store {
        StoreKind::Memory => Some(Arc::new(MemoryStore::new(config.history as usize))),
        StoreKind::Sqlite => None,
    };
    spawn_app_on(config, store).await
}

/// A server with this configuration on this store (`None`: the one the data directory
/// holds).
pub async fn spawn_app_on(config: Config, store: Option<Arc<dyn Store>>) -> TestApp {
    let app = match &store {
        Some(store) => Application::build_with_store(config.clone(), store.clone()).await,
        None => Application::build(config.clone()).await,
    }
    .expect("server builds");
    let addr = app.local_addr();
    let hub = app.hub().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        hub,
        config,
        store,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// POSTs JSON, as a producer: with the configured API token, if there is one.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(token) = &self.config.api_token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST")
    }

    /// GETs a JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// Two tasks for bad-input tests to aim at: `live` (processing, seq 2, processed 3)
    /// and `ended` (completed with results `{"n": 1}`).
    pub async fn seed_live_and_ended(&self) {
        self.create_task("live", 10).await;
        assert_eq!(
            self.progress("live", json!({"processed": 3}))
                .await
                .status(),
            200
        );
        self.create_task("ended", 10).await;
        assert_eq!(self.complete("ended", json!({"n": 1})).await.status(), 200);
    }

    /// Proof that nothing a bad input did changed or lost the seeded tasks.
    pub async fn assert_seeded_tasks_untouched(&self) {
        let live = self.get_json("/api/index-progress/live").await;
        assert_eq!(
            (live["processed"].clone(), live["seq"].clone()),
            (json!(3), json!(2))
        );
        let ended = self.get_json("/api/index-progress/ended").await;
        assert_eq!(ended["results"], json!({"n": 1}));
        let listed = self.get_json("/api/tasks").await;
        assert_eq!(listed["tasks"].as_array().map(Vec::len), Some(2));
    }

    /// Creates a task with this id and total; panics unless the server says 201.
    pub async fn create_task(&self, id: &str, total: u64) {
        let response = self
            .post("/api/tasks", json!({"id": id, "total": total}))
            .await;
        assert_eq!(response.status(), 201, "create {id}");
    }

    pub async fn progress(&self, id: &str, body: Value) -> reqwest::Response {
        self.post(&format!("/api/tasks/{id}/progress"), body).await
    }

    pub async fn complete(&self, id: &str, results: Value) -> reqwest::Response {
        self.post(
            &format!("/api/tasks/{id}/complete"),
            json!({ "results": results }),
        )
        .await
    }

    /// Publishes `count` progress reports of about 2 KB each (far more than socket
    /// buffers hold), each acknowledged, then completes the task; returns the terminal
    /// snapshot. Bounded by the test timeout.
    pub async fn flood_then_complete(&self, id: &str, count: u64) -> Value {
        let padding = "x".repeat(2000);
        within(async {
            for n in 1..=count {
                let body = json!({"processed": n, "detail": {"pad": padding}});
                assert_eq!(self.progress(id, body).await.status(), 200);
            }
        })
        .await;
        self.complete(id, json!({ "n": count }))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Opens the task's SSE stream, with an optional `Last-Event-ID`.
    pub async fn sse(&self, path: &str, last_event_id: Option<u64>) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send().await.expect("SSE GET")
    }

    /// Stops the server and starts a new one on the same store and configuration (a fresh
    /// port when the configuration asked for port 0).
    pub async fn restart(self) -> TestApp {
        let (config, store) = (self.config.clone(), self.store.clone());
        self.stop().await;
        spawn_app_on(config, store).await
    }

    /// The in-memory store the server runs on, for other servers to start on.
    pub fn store(&self) -> Option<Arc<dyn Store>> {
        self.store.clone()
    }

    /// Sends the shutdown signal without waiting for the server to finish.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server and waits until it has finished shutting down.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            within(server).await.expect("server task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn task_id(s: &str) -> TaskId {
    TaskId::parse(s).expect("valid task id")
}

/// Awaits `future`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, future)
        .await
        .expect("timed out waiting")
}

/// Waits until `condition` holds, checking every few milliseconds, for at most [`TIMEOUT`].
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    within(async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// One parsed SSE frame.
#[derive(Debug, Clone, Default)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseFrame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data line")).expect("data is JSON")
    }
}

/// Reads an SSE response frame by frame.
pub struct SseClient {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: BytesMut,
}

impl SseClient {
    pub fn new(response: reqwest::Response) -> Self {
        SseClient {
            body: response.bytes_stream().boxed(),
            buffer: BytesMut::new(),
        }
    }

    /// The next frame, or `None` once the server ended the stream.
    pub async fn next_frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let raw = self.buffer.split_to(end + 2);
                return Some(parse_frame(&raw[..end]));
            }
            match within(self.body.next()).await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(chunk.chunk()),
                Some(Err(error)) => panic!("stream error: {error}"),
                None => return None,
            }
        }
    }

    /// The next frame that carries an event (skipping `retry:` and comments).
    pub async fn next_event(&mut self) -> Option<SseFrame> {
        loop {
            let frame = self.next_frame().await?;
            if frame.data.is_some() {
                return Some(frame);
            }
        }
    }

    /// Every event that arrives before the stream ends or breaks (a killed server).
    pub async fn events_until_cut(&mut self) -> Vec<SseFrame> {
        let mut events = Vec::new();
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let raw = self.buffer.split_to(end + 2);
                let frame = parse_frame(&raw[..end]);
                if frame.data.is_some() {
                    events.push(frame);
                }
                continue;
            }
            match within(self.body.next()).await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(chunk.chunk()),
                Some(Err(_)) | None => return events,
            }
        }
    }

    /// Every remaining event until the server ends the stream.
    pub async fn collect_events(&mut self) -> Vec<SseFrame> {
        let mut events = Vec::new();
        while let Some(frame) = self.next_event().await {
            events.push(frame);
        }
        events
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_frame(raw: &[u8]) -> SseFrame {
    let text = std::str::from_utf8(raw).expect("SSE is UTF-8");
    let mut frame = SseFrame::default();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comment = Some(comment.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => frame.id = Some(value.parse().expect("numeric id")),
            "event" => frame.event = Some(value.to_string()),
            "data" => {
                assert!(frame.data.is_none(), "one data line per event");
                frame.data = Some(value.to_string());
            }
            "retry" => frame.retry = Some(value.parse().expect("numeric retry")),
            other => panic!("unexpected SSE field {other:?}"),
        }
    }
    frame
}

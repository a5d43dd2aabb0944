//! Several nodes sharing tasks through Redis (`--redis-url`), black-box: real
//! `redis-server` processes on free loopback ports (no persistence, so a restart loses
//! everything Redis had), real progress-hub processes. These tests fail, not skip, when
//! `redis-server` is missing: CI installs it (`.ci/run`).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use progress_hub::hub::RESTART_SEQ_GAP;
use progress_hub::telemetry::{
    REDIS_READY, REDIS_RESTORES, REDIS_STREAM_READS, REDIS_SUBSCRIPTION_LOSSES,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use crate::durability::server_command;
use crate::helpers::{within, SseClient};
use crate::pdf_fixture::many_pages_pdf;

/// A `redis-server` of the test's own on a free loopback port.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    async fn start() -> Redis {
        let port = free_port();
        Redis::start_on(port).await
    }

    async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "redis-server must be installed for these tests (apt-get install redis-server)",
            );
        within(async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis goes away at once, with everything it held.
    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        within(self.child.wait()).await.unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One progress-hub process on Redis.
struct Node {
    child: Child,
    base: String,
    data: tempfile::TempDir,
}

impl Node {
    async fn start(redis: &Redis, extra: &[&str]) -> Node {
        let data = tempfile::tempdir().unwrap();
        let node = Node::start_in(data, redis, extra).await;
        node.wait_ready().await;
        node
    }

    /// Started, not waiting for it to be ready.
    async fn start_in(data: tempfile::TempDir, redis: &Redis, extra: &[&str]) -> Node {
        let mut command = server_command(data.path());
        command.arg("--redis-url").arg(redis.url()).args(extra);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = within(BufReader::new(stdout).lines().next_line())
            .await
            .unwrap()
            .expect("ready line");
        let addr = line.strip_prefix("listening on http://").unwrap();
        Node {
            child,
            base: format!("http://{addr}"),
            data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn ready_status(&self) -> u16 {
        match client().get(self.url("/readyz")).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    async fn wait_ready(&self) {
        self.wait_for_readyz(200).await;
    }

    async fn wait_for_readyz(&self, status: u16) {
        within(async {
            while self.ready_status().await != status {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// A write, answered with its status and body.
    async fn send(&self, path: &str, body: Value) -> (u16, Value, Option<String>) {
        let response = client()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, retry_after)
    }

    /// A write that must succeed.
    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, body, _) = self.send(path, body).await;
        assert!((200..300).contains(&status), "{path}: {status} {body}");
        body
    }

    /// A write retried while the node answers 503 (Redis away), as a producer would.
    async fn post_retrying(&self, path: &str, body: Value) -> Value {
        within(async {
            loop {
                let (status, answer, retry_after) = self.send(path, body.clone()).await;
                if status == 503 {
                    assert!(retry_after.is_some(), "503 without Retry-After");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                assert!((200..300).contains(&status), "{path}: {status} {answer}");
                return answer;
            }
        })
        .await
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = client().get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    async fn sse(&self, path: &str, last_event_id: Option<u64>) -> SseClient {
        let mut request = client().get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = within(request.send()).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        SseClient::new(response)
    }

    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        within(self.child.wait()).await.unwrap();
    }

    /// The value of an unlabelled metric on `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Redis and three nodes on it.
async fn three_nodes(extra: &[&str]) -> (Redis, Vec<Node>) {
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&redis, extra).await);
    }
    (redis, nodes)
}

/// `(seq, data)` of each SSE event until the stream ends.
async fn sse_events(stream: &mut SseClient) -> Vec<(u64, Value)> {
    stream
        .collect_events()
        .await
        .into_iter()
        .map(|frame| (frame.id.unwrap(), frame.json()))
        .collect()
}

fn seqs(events: &[(u64, Value)]) -> Vec<u64> {
    events.iter().map(|(seq, _)| *seq).collect()
}

/// Every WebSocket text frame until the server closes.
async fn ws_events(url: String) -> Vec<Value> {
    let (mut socket, response) = within(tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    let mut events = Vec::new();
    while let Some(message) = within(socket.next()).await {
        match message.expect("WebSocket frame") {
            Message::Text(text) => events.push(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    events
}

/// Long polls the node at `base` until the task ends; every answer that moved on.
async fn long_poll_until_end(base: String, id: &str) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    let mut since = 0;
    within(async {
        loop {
            let url = format!("{base}/api/index-progress/{id}?since={since}&wait=5");
            let response = client().get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let state: Value = response.json().await.unwrap();
            let seq = state["seq"].as_u64().unwrap();
            if seq > since {
                since = seq;
                let end = state["status"] != "processing" && state["status"] != "pending";
                seen.push(state);
                if end {
                    return;
                }
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn redis_nodes_deliver_across_nodes_over_sse_websocket_and_long_poll() {
    let (_redis, nodes) = three_nodes(&[]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut all_on_c = c.sse("/api/events", None).await;
    a.post("/api/tasks", json!({"id": "x", "total": 20})).await;
    // Followers on the other nodes, each over another transport.
    let mut sse_b = b.sse("/api/index-progress/x/events", None).await;
    let ws_c = tokio::spawn(ws_events(format!(
        "ws://{}/api/index-progress/x/ws",
        c.base.trim_start_matches("http://")
    )));
    let poll_b = tokio::spawn(long_poll_until_end(b.base.clone(), "x"));
    // The first event on B is the snapshot; wait for it so that every later one is live.
    let first = within(sse_b.next_event()).await.unwrap();
    assert_eq!(first.id, Some(1));
    for n in 1..=20 {
        a.post("/api/tasks/x/progress", json!({"processed": n}))
            .await;
    }
    a.post("/api/tasks/x/complete", json!({"results": {"n": 20}}))
        .await;

    let mut on_b = vec![(1, first.json())];
    on_b.extend(sse_events(&mut sse_b).await);
    assert_eq!(
        seqs(&on_b),
        (1..=22).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(on_b[21].1["status"], "completed");
    assert_eq!(on_b[21].1["results"], json!({"n": 20}));

    let on_c = ws_c.await.unwrap();
    let ws_seqs: Vec<u64> = on_c.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(ws_seqs.last(), Some(&22));
    assert!(ws_seqs.windows(2).all(|w| w[0] < w[1]), "{ws_seqs:?}");
    // The same seq is the same change on every node.
    let by_seq: BTreeMap<u64, &Value> = on_b.iter().map(|(s, d)| (*s, d)).collect();
    for event in &on_c {
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(&event, by_seq.get(&seq).unwrap(), "seq {seq}");
    }

    let polled = poll_b.await.unwrap();
    let last = polled.last().unwrap();
    assert_eq!(
        (last["seq"].as_u64(), &last["status"]),
        (Some(22), &json!("completed"))
    );
    assert!(polled
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));

    // The all-tasks stream of a third node saw the task from its creation to its end.
    let mut seen_on_c = Vec::new();
    within(async {
        loop {
            let frame = all_on_c.next_event().await.unwrap();
            let data = frame.json();
            if data["task_id"] == "x" {
                seen_on_c.push(data["seq"].as_u64().unwrap());
                if data["status"] == "completed" {
                    return;
                }
            }
        }
    })
    .await;
    assert_eq!(seen_on_c, (1..=22).collect::<Vec<_>>());
    // And every node lists it.
    for node in &nodes {
        let listed = node.get_json("/api/tasks").await;
        assert_eq!(listed["tasks"][0]["task_id"], "x");
        assert_eq!(listed["tasks"][0]["seq"], 22);
    }
}

#[tokio::test]
async fn redis_follower_resumes_on_another_node_after_its_node_is_killed() {
    let (_redis, mut nodes) = three_nodes(&[]).await;
    nodes[0]
        .post("/api/tasks", json!({"id": "k", "total": 40}))
        .await;
    let mut follower = nodes[1].sse("/api/index-progress/k/events", None).await;
    let mut seen: Vec<(u64, Value)> = Vec::new();
    for n in 1..=10 {
        nodes[0]
            .post("/api/tasks/k/progress", json!({"processed": n}))
            .await;
    }
    // Read up to seq 11 (the snapshot, then ten changes), then the follower's node dies.
    while seen.last().map(|(s, _)| *s) != Some(11) {
        let frame = within(follower.next_event()).await.unwrap();
        seen.push((frame.id.unwrap(), frame.json()));
    }
    nodes[1].kill().await;
    seen.extend(
        follower
            .events_until_cut()
            .await
            .into_iter()
            .map(|f| (f.id.unwrap(), f.json())),
    );
    // Changes go on while the follower reconnects.
    for n in 11..=30 {
        nodes[0]
            .post("/api/tasks/k/progress", json!({"processed": n}))
            .await;
    }
    let last_seen = seen.last().unwrap().0;
    let mut resumed = nodes[2]
        .sse("/api/index-progress/k/events", Some(last_seen))
        .await;
    nodes[0].post("/api/tasks/k/complete", json!({})).await;
    seen.extend(sse_events(&mut resumed).await);
    assert_eq!(
        seqs(&seen),
        (1..=32).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(seen[30].1["processed"], 30);
    assert_eq!(seen[31].1["status"], "completed");
}

#[tokio::test]
async fn redis_restarted_mid_stream_breaks_no_seq_promise() {
    let (mut redis, nodes) = three_nodes(&[]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.post("/api/tasks", json!({"id": "r", "total": 100})).await;
    let mut follower = b.sse("/api/index-progress/r/events", None).await;
    for n in 1..=5 {
        a.post("/api/tasks/r/progress", json!({"processed": n}))
            .await;
    }
    let mut seen: Vec<(u64, Value)> = Vec::new();
    while seen.last().map(|(s, _)| *s) != Some(6) {
        let frame = within(follower.next_event()).await.unwrap();
        seen.push((frame.id.unwrap(), frame.json()));
    }

    // Redis goes away with everything it had.
    redis.kill().await;
    for node in &nodes {
        node.wait_for_readyz(503).await;
    }
    let (status, _, retry_after) = a
        .send("/api/tasks/r/progress", json!({"processed": 6}))
        .await;
    assert_eq!(
        status, 503,
        "nothing is acknowledged that Redis did not take"
    );
    assert!(retry_after.is_some());
    let (status, _, _) = c.send("/api/tasks", json!({"id": "during"})).await;
    assert_eq!(status, 503);
    // Reads still work from what the node holds.
    let held = c.get_json("/api/index-progress/r").await;
    assert_eq!(held["seq"], 6);

    let redis = Redis::start_on(redis.port).await;
    for node in &nodes {
        node.wait_ready().await;
    }
    let mut acked = Vec::new();
    for n in 6..=10 {
        let answer = a
            .post_retrying("/api/tasks/r/progress", json!({"processed": n}))
            .await;
        acked.push(answer["seq"].as_u64().unwrap());
    }
    c.post_retrying("/api/tasks/r/complete", json!({})).await;
    seen.extend(sse_events(&mut follower).await);

    let seen_seqs = seqs(&seen);
    assert!(
        seen_seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly rising, no duplicate: {seen_seqs:?}"
    );
    // What came after the restart is numbered past anything shown before it.
    assert!(seen_seqs[6] > RESTART_SEQ_GAP, "{seen_seqs:?}");
    for seq in &acked {
        assert!(
            seen_seqs.contains(seq),
            "acknowledged {seq} reached the follower"
        );
    }
    let (_, last) = seen.last().unwrap();
    assert_eq!(
        (&last["status"], &last["processed"]),
        (&json!("completed"), &json!(10))
    );
    // A late follower on a node that was not streaming sees the same end.
    let ended = a.get_json("/api/index-progress/r").await;
    assert_eq!(&ended, last);
    drop(redis);
}

#[tokio::test]
async fn redis_away_means_not_ready_and_writes_503_until_it_is_back() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    redis.kill().await;
    // A node started while Redis is down serves, but is not ready and takes no write.
    let node = Node::start_in(tempfile::tempdir().unwrap(), &redis, &[]).await;
    assert_eq!(node.ready_status().await, 503);
    assert_eq!(node.metric(REDIS_READY).await, 0.0);
    let (status, body, retry_after) = node.send("/api/tasks", json!({"id": "w"})).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    let health = client().get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive, just not ready");

    let mut redis = Redis::start_on(port).await;
    node.wait_ready().await;
    assert_eq!(node.metric(REDIS_READY).await, 1.0);
    node.post("/api/tasks", json!({"id": "w"})).await;
    node.post("/api/tasks/w/progress", json!({"processed": 1}))
        .await;

    redis.kill().await;
    node.wait_for_readyz(503).await;
    assert_eq!(node.metric(REDIS_READY).await, 0.0);
    assert_eq!(node.metric(REDIS_SUBSCRIPTION_LOSSES).await, 1.0);
    let (status, _, retry_after) = node
        .send("/api/tasks/w/progress", json!({"processed": 2}))
        .await;
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
    let (status, _, _) = node.send("/api/tasks/w/complete", json!({})).await;
    assert_eq!(status, 503);
    assert_eq!(node.get_json("/api/index-progress/w").await["seq"], 2);
}

#[tokio::test]
async fn redis_two_hundred_followers_over_three_nodes_see_the_same_sequence() {
    let (_redis, nodes) = three_nodes(&[]).await;
    nodes[0]
        .post("/api/tasks", json!({"id": "many", "total": 30}))
        .await;
    let mut followers = Vec::new();
    for i in 0..200 {
        let mut stream = nodes[i % 3]
            .sse("/api/index-progress/many/events", None)
            .await;
        let first = within(stream.next_event()).await.unwrap();
        assert_eq!(first.id, Some(1));
        followers.push(tokio::spawn(async move {
            let mut events = vec![(1, first.json())];
            events.extend(sse_events(&mut stream).await);
            events
        }));
    }
    for n in 1..=30 {
        nodes[n % 3]
            .post("/api/tasks/many/progress", json!({"processed": n}))
            .await;
    }
    nodes[1].post("/api/tasks/many/complete", json!({})).await;
    let mut sequences = Vec::new();
    for follower in followers {
        sequences.push(follower.await.unwrap());
    }
    let first = &sequences[0];
    assert_eq!(seqs(first), (1..=32).collect::<Vec<_>>());
    assert_eq!(first[31].1["status"], "completed");
    for (i, other) in sequences.iter().enumerate() {
        assert_eq!(other, first, "follower {i} saw another sequence");
    }
}

/// A folder with one PDF large enough that indexing it takes a long while.
fn slow_folder(root: &std::path::Path, name: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("huge.pdf"), many_pages_pdf(20_000)).unwrap();
}

#[tokio::test]
async fn redis_node_killed_mid_job_leaves_the_task_failed_and_cancel_reaches_any_node() {
    let roots = tempfile::tempdir().unwrap();
    let root = roots.path().canonicalize().unwrap();
    slow_folder(&root, "slow");
    slow_folder(&root, "slow2");
    std::fs::create_dir_all(root.join("small")).unwrap();
    std::fs::write(root.join("small/a.txt"), "a small file").unwrap();
    let root_arg = root.to_str().unwrap().to_string();
    let extra = [
        "--index-root",
        root_arg.as_str(),
        "--max-file-bytes",
        "100000000",
        "--index-threads",
        "1",
    ];
    let (redis, mut nodes) = three_nodes(&extra).await;

    // A cancel sent to another node stops the job where it runs: the next job there
    // (jobs on one node run one at a time) gets to run and complete.
    let started = nodes[0]
        .post("/api/index-folder", json!({"folder": "slow2"}))
        .await;
    let id = started["task_id"].as_str().unwrap().to_string();
    let cancelled = nodes[2]
        .post(&format!("/api/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    let small = nodes[0]
        .post("/api/index-folder", json!({"folder": "small"}))
        .await;
    let small_id = small["task_id"].as_str().unwrap().to_string();
    let mut events = nodes[1]
        .sse(&format!("/api/index-progress/{small_id}/events"), None)
        .await;
    let end = sse_events(&mut events).await;
    assert_eq!(end.last().unwrap().1["status"], "completed");

    // The node running a job dies: another node fails the task as interrupted.
    let started = nodes[0]
        .post("/api/index-folder", json!({"folder": "slow"}))
        .await;
    let id = started["task_id"].as_str().unwrap().to_string();
    let path = format!("/api/index-progress/{id}");
    within(async {
        while nodes[1].get_json(&path).await["status"] != "processing" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut follower = nodes[2].sse(&format!("{path}/events"), None).await;
    nodes[0].kill().await;
    let seen = sse_events(&mut follower).await;
    let (_, last) = seen.last().unwrap();
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(
        last["error"],
        progress_hub::store::redis::INTERRUPTED_NODE_LOST
    );
    assert!(seqs(&seen).windows(2).all(|w| w[0] < w[1]));

    // The node restarted on its data directory shows the same end, and runs jobs again.
    let dead = nodes.remove(0);
    let restarted = Node::start_in(dead.data, &redis, &extra).await;
    restarted.wait_ready().await;
    let nodes = [restarted, nodes.remove(0), nodes.remove(0)];
    let restarted = &nodes[0];
    assert_eq!(
        restarted.get_json(&path).await,
        nodes[1].get_json(&path).await
    );
    let again = restarted
        .post("/api/index-folder", json!({"folder": "small"}))
        .await;
    let again_path = format!(
        "/api/index-progress/{}/events",
        again["task_id"].as_str().unwrap()
    );
    let mut events = nodes[2].sse(&again_path, None).await;
    let end = sse_events(&mut events).await;
    assert_eq!(end.last().unwrap().1["status"], "completed");
}

#[tokio::test]
async fn redis_a_silent_task_is_marked_stalled_once_whichever_node_sees_it() {
    let (_redis, nodes) = three_nodes(&["--stall-secs", "1"]).await;
    nodes[0]
        .post("/api/tasks", json!({"id": "quiet", "total": 9}))
        .await;
    let mut follower = nodes[2].sse("/api/index-progress/quiet/events", None).await;
    nodes[1]
        .post("/api/tasks/quiet/progress", json!({"processed": 1}))
        .await;
    let mut seen = Vec::new();
    within(async {
        while seen
            .last()
            .is_none_or(|(_, d): &(u64, Value)| d["stalled"] != true)
        {
            let frame = follower.next_event().await.unwrap();
            seen.push((frame.id.unwrap(), frame.json()));
        }
    })
    .await;
    // Every node found it silent; one change marked it.
    nodes[0].post("/api/tasks/quiet/complete", json!({})).await;
    seen.extend(sse_events(&mut follower).await);
    assert_eq!(seqs(&seen), [1, 2, 3, 4], "{seen:?}");
    assert_eq!(seen[2].1["stalled"], true);
    assert_eq!(seen[3].1["status"], "completed");
}

/// The value of a string key.
async fn redis_get(redis: &Redis, key: &str) -> String {
    let stream = within(tokio::net::TcpStream::connect(("127.0.0.1", redis.port)))
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    tokio::io::AsyncWriteExt::write_all(stream.get_mut(), command.as_bytes())
        .await
        .unwrap();
    let (mut head, mut value) = (String::new(), String::new());
    within(stream.read_line(&mut head)).await.unwrap();
    assert!(
        head.starts_with('$') && head.trim() != "$-1",
        "GET {key}: {head}"
    );
    within(stream.read_line(&mut value)).await.unwrap();
    value.trim_end().to_string()
}

/// Sends one command to Redis in its wire format, and reads the first line of the answer.
async fn redis_command(redis: &Redis, args: &[&str]) -> String {
    use tokio::io::AsyncWriteExt;
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let stream = within(tokio::net::TcpStream::connect(("127.0.0.1", redis.port)))
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(command.as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    within(stream.read_line(&mut line)).await.unwrap();
    line
}

#[tokio::test]
async fn redis_flushed_under_running_nodes_gets_their_tasks_back() {
    let (redis, nodes) = three_nodes(&[]).await;
    nodes[0]
        .post("/api/tasks", json!({"id": "f", "total": 9}))
        .await;
    let mut follower = nodes[1].sse("/api/index-progress/f/events", None).await;
    nodes[0]
        .post("/api/tasks/f/progress", json!({"processed": 1}))
        .await;
    let mut seen = Vec::new();
    while seen.last().map(|(s, _)| *s) != Some(2) {
        let frame = within(follower.next_event()).await.unwrap();
        seen.push((frame.id.unwrap(), frame.json()));
    }
    // Redis loses everything while every connection stays up.
    assert_eq!(redis_command(&redis, &["FLUSHALL"]).await, "+OK\r\n");
    let answer = nodes[2]
        .post_retrying("/api/tasks/f/progress", json!({"processed": 2}))
        .await;
    assert!(
        answer["seq"].as_u64().unwrap() > RESTART_SEQ_GAP,
        "{answer}"
    );
    nodes[0]
        .post_retrying("/api/tasks/f/complete", json!({}))
        .await;
    // The node whose write found Redis empty started over and gave its tasks back.
    assert_eq!(nodes[2].metric(REDIS_RESTORES).await, 1.0);
    assert_eq!(nodes[2].metric(REDIS_SUBSCRIPTION_LOSSES).await, 1.0);
    seen.extend(sse_events(&mut follower).await);
    let seen_seqs = seqs(&seen);
    assert!(
        seen_seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly rising: {seen_seqs:?}"
    );
    let (_, last) = seen.last().unwrap();
    assert_eq!(
        (&last["status"], &last["processed"]),
        (&json!("completed"), &json!(2))
    );
}

#[tokio::test]
async fn redis_read_tokens_from_one_node_are_valid_on_every_node() {
    let redis = Redis::start().await;
    let first = Node::start(&redis, &["--protect-reads"]).await;
    // The second node comes with a key of its own, as a node set up apart would.
    let data = tempfile::tempdir().unwrap();
    let key_file = data.path().join("read-token.key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    let second = Node::start_in(data, &redis, &["--protect-reads"]).await;
    second.wait_ready().await;

    for (creator, follower, id) in [
        (&first, &second, "from-first"),
        (&second, &first, "from-second"),
    ] {
        let created = creator
            .post("/api/tasks", json!({"id": id, "total": 2}))
            .await;
        let token = created["read_token"].as_str().expect("read_token");
        let status = |path: String| async move {
            client()
                .get(follower.url(&path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        let path = format!("/api/index-progress/{id}");
        assert_eq!(status(format!("{path}?token={token}")).await, 200, "{id}");
        assert_eq!(status(path.clone()).await, 401, "{id} without a token");
        let wrong = "0".repeat(32);
        assert_eq!(status(format!("{path}?token={wrong}")).await, 401);
    }
    // The second node keeps the shared key for its next start.
    let kept = std::fs::read_to_string(&key_file).unwrap();
    let shared = redis_get(&redis, "progress-hub:read-token-key").await;
    assert_eq!(kept.trim(), shared);
    assert_ne!(kept.trim(), "ab".repeat(32));
}

#[tokio::test]
async fn redis_a_creation_retried_on_another_node_is_answered_as_created() {
    let (redis, nodes) = three_nodes(&[]).await;
    let task = json!({"id": "retried", "name": "nightly export", "total": 10});
    let (status, first, _) = nodes[0].send("/api/tasks", task.clone()).await;
    assert_eq!(status, 201, "{first}");
    // The producer did not get that answer and retries through the load balancer.
    for node in &nodes[1..] {
        let (status, again, _) = node.send("/api/tasks", task.clone()).await;
        assert_eq!(status, 201, "{again}");
        assert_eq!(again["task_id"], "retried");
    }
    // Not the same creation: a conflict.
    let other = json!({"id": "retried", "name": "nightly export", "total": 11});
    assert_eq!(nodes[1].send("/api/tasks", other).await.0, 409);
    // Once the task moved on, even the same creation is a conflict, on every node.
    nodes[2]
        .post("/api/tasks/retried/progress", json!({"processed": 1}))
        .await;
    for node in &nodes {
        within(async {
            while node.get_json("/api/index-progress/retried").await["seq"] != 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(node.send("/api/tasks", task.clone()).await.0, 409);
    }
    // A node that joins now reads the task's two events from its stream.
    let late = Node::start(&redis, &[]).await;
    assert_eq!(late.metric(REDIS_STREAM_READS).await, 2.0);
    assert_eq!(late.metric(REDIS_RESTORES).await, 0.0);
}

#[tokio::test]
async fn redis_a_dashboard_moving_to_an_older_node_learns_what_ended_meanwhile() {
    let (_redis, nodes) = three_nodes(&[]).await;
    for id in ["stays", "ends"] {
        nodes[0].post("/api/tasks", json!({"id": id})).await;
    }
    // A dashboard on the newest node reads both tasks, then its node goes away.
    let mut dashboard = nodes[2].sse("/api/events", None).await;
    let mut last_id = 0;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        let frame = within(dashboard.next_event()).await.unwrap();
        last_id = frame.id.unwrap();
        seen.insert(frame.json()["task_id"].as_str().unwrap().to_string());
    }
    drop(dashboard);
    nodes[0].post("/api/tasks/ends/complete", json!({})).await;
    // It reconnects to the oldest node with the id the newest one gave.
    let mut resumed = nodes[0].sse("/api/events", Some(last_id)).await;
    let ended = within(async {
        loop {
            let frame = resumed.next_event().await.unwrap();
            let data = frame.json();
            if data["task_id"] == "ends" {
                return data;
            }
        }
    })
    .await;
    assert_eq!(ended["status"], "completed");
}

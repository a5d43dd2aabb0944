//! HTTPS (`--tls-cert`, `--tls-key`): HTTP/2 and HTTP/1.1 by ALPN on one port, many event
//! streams on one HTTP/2 connection, WebSocket and long polls over TLS, the header timeout
//! and graceful shutdown, certificate reload on SIGHUP, and the refusal to start with a
//! certificate that does not load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{StatusCode, Version};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{spawn_app_with, within, SseClient, TestApp};
use crate::raw::{closed_by_server, connect as tcp_connect, parse_prometheus};

const HTTP_CONNECTIONS: &str = "progress_hub_http_connections";
const SSE_OPEN: &str = "progress_hub_connections{transport=\"sse\"}";

/// A self-signed certificate for `localhost` and `127.0.0.1`.
struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Cert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("a self-signed certificate");
    Cert {
        pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Writes the certificate and key as `cert.pem` and `key.pem` in `dir`.
fn write_files(dir: &Path, cert: &Cert) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert.pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    (cert_path, key_path)
}

/// An in-process server on HTTPS, and its certificate.
struct Https {
    app: TestApp,
    cert: Cert,
    _files: tempfile::TempDir,
}

async fn spawn_https() -> Https {
    spawn_https_with(|_| {}).await
}

async fn spawn_https_with(configure: impl FnOnce(&mut progress_hub::config::Config)) -> Https {
    let files = tempfile::tempdir().unwrap();
    let cert = self_signed();
    let (cert_path, key_path) = write_files(files.path(), &cert);
    let app = spawn_app_with(|config| {
        config.tls_cert = Some(cert_path);
        config.tls_key = Some(key_path);
        configure(config);
    })
    .await;
    Https {
        app,
        cert,
        _files: files,
    }
}

impl Https {
    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.app.addr, path)
    }

    /// A client that trusts the server's certificate: HTTP/2 by ALPN, or HTTP/1.1 only.
    fn client(&self, http1_only: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().add_root_certificate(
            reqwest::Certificate::from_pem(self.cert.pem.as_bytes()).unwrap(),
        );
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    async fn post(&self, client: &reqwest::Client, path: &str, body: Value) -> reqwest::Response {
        within(client.post(self.url(path)).json(&body).send())
            .await
            .expect("POST")
    }

    async fn metric(&self, client: &reqwest::Client, series: &str) -> f64 {
        let response = within(client.get(self.url("/metrics")).send())
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        parse_prometheus(&text).get(series).copied().unwrap_or(0.0)
    }

    /// A TLS connection offering only `alpn`, not yet speaking HTTP.
    async fn tls_connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        tls_connect(self.app.addr, &[&self.cert.der], alpn).await
    }
}

/// A TLS connection to `addr` trusting `roots`, offering only `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_over(tcp_connect(addr).await, roots, alpn).await
}

/// TLS on a connected socket, trusting `roots`, offering only `alpn`.
async fn tls_over(
    tcp: TcpStream,
    roots: &[&CertificateDer<'static>],
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    within(connector.connect(name, tcp))
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn serves_http2_and_http1_by_alpn_on_one_port() {
    let https = spawn_https().await;
    let (h2, h1) = (https.client(false), https.client(true));

    // A write over HTTP/2, from the server's own page: `:authority` stands for `Host`.
    let created = within(
        h2.post(https.url("/api/tasks"))
            .header("origin", format!("https://{}", https.app.addr))
            .json(&json!({"id": "alpn", "total": 4}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(created.version(), Version::HTTP_2);
    assert_eq!(created.status(), 201);
    // A foreign page is still refused over HTTP/2.
    let foreign = within(
        h2.post(https.url("/api/tasks/alpn/progress"))
            .header("origin", "https://evil.example")
            .json(&json!({"processed": 1}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(foreign.status(), 403);

    let progressed = https
        .post(&h1, "/api/tasks/alpn/progress", json!({"processed": 2}))
        .await;
    assert_eq!(progressed.version(), Version::HTTP_11);
    assert_eq!(progressed.status(), 200);

    let mut bodies = Vec::new();
    for (client, version) in [(&h2, Version::HTTP_2), (&h1, Version::HTTP_11)] {
        let poll = within(client.get(https.url("/api/index-progress/alpn")).send())
            .await
            .unwrap();
        assert_eq!(poll.version(), version);
        assert_eq!(poll.status(), 200);
        assert_eq!(poll.headers()["etag"], "\"2\"");
        bodies.push(poll.json::<Value>().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0]["processed"], 2);
    assert_eq!(bodies[0]["progress"], 50);

    // Plain HTTP on the HTTPS port gets no answer it could mistake for one.
    let mut plain = tcp_connect(https.app.addr).await;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

/// What a page with 20 EventSources does over HTTPS: one connection, 20 live streams.
#[tokio::test]
async fn twenty_event_streams_share_one_http2_connection() {
    let https = spawn_https().await;
    let client = https.client(false);
    let ids: Vec<String> = (0..20).map(|n| format!("stream-{n}")).collect();
    for id in &ids {
        let created = https
            .post(&client, "/api/tasks", json!({"id": id, "total": 10}))
            .await;
        assert_eq!(created.status(), 201);
    }
    let mut streams = Vec::new();
    for id in &ids {
        let response = within(
            client
                .get(https.url(&format!("/api/index-progress/{id}/events")))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut stream = SseClient::new(response);
        let snapshot = stream.next_event().await.expect("the snapshot");
        assert_eq!(snapshot.json()["task_id"], id.as_str());
        streams.push(stream);
    }
    // Every stream, the producer's requests and this scrape: one TCP connection.
    assert_eq!(https.metric(&client, HTTP_CONNECTIONS).await, 1.0);
    assert_eq!(
        https
            .metric(&client, "progress_hub_connections{transport=\"sse\"}")
            .await,
        20.0
    );

    for (n, id) in ids.iter().enumerate() {
        let body = json!({"processed": 5, "current_file": format!("f{n}")});
        let response = https
            .post(&client, &format!("/api/tasks/{id}/progress"), body)
            .await;
        assert_eq!(response.status(), 200);
    }
    for (n, stream) in streams.iter_mut().enumerate() {
        let event = stream.next_event().await.expect("a live event");
        assert_eq!(event.event.as_deref(), Some("progress"));
        assert_eq!(event.json()["current_file"], format!("f{n}"));
    }
    for id in &ids {
        let response = https
            .post(&client, &format!("/api/tasks/{id}/complete"), json!({}))
            .await;
        assert_eq!(response.status(), 200);
    }
    for stream in &mut streams {
        let rest = stream.collect_events().await;
        let last = rest.last().expect("the terminal event");
        assert_eq!(last.event.as_deref(), Some("completed"));
    }
}

/// One HTTP/2 connection carries at most `MAX_CONCURRENT_STREAMS` streams at once: the next
/// request waits for a place on it, and gets one when a stream ends.
#[tokio::test]
async fn http2_streams_per_connection_are_bounded() {
    let max = progress_hub::tls::connection::MAX_CONCURRENT_STREAMS as usize;
    let https = spawn_https().await;
    let client = https.client(false);
    let created = https
        .post(&client, "/api/tasks", json!({"id": "many", "total": 10}))
        .await;
    assert_eq!(created.status(), 201);
    let url = https.url("/api/index-progress/many/events");
    let mut open = Vec::new();
    for _ in 0..max {
        let response = within(client.get(&url).send()).await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let waiting = tokio::spawn(client.get(&url).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a stream beyond the limit was answered"
    );
    drop(open.pop());
    let answered = within(waiting).await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.version(), Version::HTTP_2);
    let metrics_client = https.client(false);
    assert_eq!(
        https
            .metric(
                &metrics_client,
                "progress_hub_connections{transport=\"sse\"}"
            )
            .await,
        max as f64
    );
}

#[tokio::test]
async fn subscriber_limits_hold_over_http2_and_a_reset_stream_frees_its_place() {
    let https = spawn_https_with(|config| config.max_subscribers_per_task = 2).await;
    let client = https.client(false);
    let created = https
        .post(&client, "/api/tasks", json!({"id": "busy", "total": 10}))
        .await;
    assert_eq!(created.status(), 201);
    let url = https.url("/api/index-progress/busy/events");
    let first = within(client.get(&url).send()).await.unwrap();
    let second = within(client.get(&url).send()).await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = within(client.get(&url).send()).await.unwrap();
    assert_eq!(third.version(), Version::HTTP_2);
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Too many subscribers")),
        "{body}"
    );

    // Dropping a response resets its HTTP/2 stream (the connection stays): its place is
    // freed at once, not at the next heartbeat.
    drop(first);
    within(async {
        while https.metric(&client, SSE_OPEN).await != 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let again = within(client.get(&url).send()).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(https.metric(&client, HTTP_CONNECTIONS).await, 1.0);
}

/// An HTTP/2 request for `path`, as frames: the connection preface, empty SETTINGS (so
/// the client's windows stay at 64 KiB and are never widened), and one HEADERS frame
/// (HPACK literals, no Huffman) that ends the request.
fn http2_get(path: &str, authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", path),
        (":authority", authority),
    ] {
        // Literal header field without indexing, new name (RFC 7541 §6.2.2).
        block.push(0);
        for text in [name, value] {
            assert!(text.len() < 127);
            block.push(text.len() as u8);
            block.extend_from_slice(text.as_bytes());
        }
    }
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = block.len() as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    frames.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
    frames.extend_from_slice(&block);
    frames
}

/// Readers that stop for good, over TLS: one on HTTP/1.1 behind a 4 KiB receive buffer
/// (its socket fills: the send timeout), one on HTTP/2 that never reads again (flow
/// control stops the server's writes before its socket fills: an unanswered ping).
/// Both connections are closed and their places freed, while the task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_for_good_are_cut_off_over_tls() {
    let https = spawn_https_with(|config| {
        config.send_timeout_secs = 1;
        config.subscriber_buffer = 16;
    })
    .await;
    let client = https.client(false);
    let created = https
        .post(
            &client,
            "/api/tasks",
            json!({"id": "stuck", "total": 1_000_000}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let path = "/api/index-progress/stuck/events";
    let roots = [&https.cert.der];

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within(socket.connect(https.app.addr)).await.unwrap();
    let mut h1 = tls_over(tcp, &roots, b"http/1.1").await;
    h1.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    h1.flush().await.unwrap();
    let mut h2 = https.tls_connect(b"h2").await;
    h2.write_all(&http2_get(path, &https.app.addr.to_string()))
        .await
        .unwrap();
    h2.flush().await.unwrap();
    within(async {
        while https.metric(&client, SSE_OPEN).await != 2.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // About 8 MB to each, far more than the socket buffers and the HTTP/2 window hold;
    // eight reports at a time, as the debug build on a loaded machine is slow over TLS.
    let padding = "x".repeat(4000);
    within(
        futures_util::stream::iter(1..=2000)
            .map(|n| {
                let body = json!({"processed": n, "detail": {"pad": padding}});
                https.post(&client, "/api/tasks/stuck/progress", body)
            })
            .buffer_unordered(8)
            .for_each(|response| async move {
                assert_eq!(response.status(), 200);
                // Read to its end: a response dropped unread resets its stream, and
                // thousands of those on one connection ended it (ENHANCE_YOUR_CALM, raised
                // by the client's own HTTP/2 library).
                response.bytes().await.unwrap();
            }),
    )
    .await;
    within(async {
        while https.metric(&client, SSE_OPEN).await != 0.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for (name, tls) in [("HTTP/1.1", &mut h1), ("HTTP/2", &mut h2)] {
        // What the buffers held, then the end.
        assert!(closed_by_server(tls).await, "{name}: still open");
    }
    let answer = https
        .post(
            &client,
            "/api/tasks/stuck/progress",
            json!({"processed": 4001}),
        )
        .await;
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn long_poll_over_http2() {
    let https = spawn_https().await;
    let client = https.client(false);
    let created = https
        .post(&client, "/api/tasks", json!({"id": "waiter", "total": 10}))
        .await;
    assert_eq!(created.status(), 201);
    let poll = tokio::spawn(
        client
            .get(https.url("/api/index-progress/waiter?since=1&wait=20"))
            .send(),
    );
    // The poll is waiting (the task is still at seq 1) when the report comes.
    let waiting = "progress_hub_connections{transport=\"long_poll\"}";
    within(async {
        while https.metric(&client, waiting).await < 1.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let reported = https
        .post(
            &client,
            "/api/tasks/waiter/progress",
            json!({"processed": 7}),
        )
        .await;
    assert_eq!(reported.status(), 200);
    let answer = within(poll).await.unwrap().unwrap();
    assert_eq!(answer.version(), Version::HTTP_2);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        (body["seq"].clone(), body["processed"].clone()),
        (json!(2), json!(7))
    );
}

#[tokio::test]
async fn websocket_over_tls_and_426_over_http2() {
    let https = spawn_https().await;
    let client = https.client(false);
    let created = https
        .post(&client, "/api/tasks", json!({"id": "wss", "total": 2}))
        .await;
    assert_eq!(created.status(), 201);

    let tls = https.tls_connect(b"http/1.1").await;
    let url = format!(
        "wss://127.0.0.1:{}/api/index-progress/wss/ws",
        https.app.addr.port()
    );
    let (mut socket, response) = within(tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    let first = match within(socket.next()).await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).unwrap(),
        other => panic!("expected the snapshot, got {other:?}"),
    };
    assert_eq!(
        (first["seq"].clone(), first["event"].clone()),
        (json!(1), json!("progress"))
    );
    let completed = https
        .post(
            &client,
            "/api/tasks/wss/complete",
            json!({"results": {"ok": true}}),
        )
        .await;
    assert_eq!(completed.status(), 200);
    let mut events = Vec::new();
    let code = loop {
        match within(socket.next()).await {
            Some(Ok(Message::Text(text))) => {
                events.push(serde_json::from_str::<Value>(&text).unwrap())
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => {}
            other => panic!("expected events and a close, got {other:?}"),
        }
    };
    assert_eq!(events.last().unwrap()["event"], "completed");
    assert_eq!(code, Some(CloseCode::Normal));

    // HTTP/2 has no `Upgrade` (RFC 8441 is not offered): the route says so.
    let over_h2 = within(client.get(https.url("/api/index-progress/wss/ws")).send())
        .await
        .unwrap();
    assert_eq!(over_h2.version(), Version::HTTP_2);
    assert_eq!(over_h2.status(), 426);
}

/// A client that does not finish its handshake, or sends no request after it (HTTP/2 or
/// HTTP/1.1), is closed after the header timeout, as on plaintext connections.
#[tokio::test]
async fn silent_clients_are_closed_after_the_header_timeout() {
    let https = spawn_https_with(|config| config.header_timeout_secs = 1).await;

    let mut no_handshake = tcp_connect(https.app.addr).await;
    let started = tokio::time::Instant::now();
    assert!(closed_by_server(&mut no_handshake).await);
    assert!(started.elapsed() >= Duration::from_millis(900));

    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut tls = https.tls_connect(alpn).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        // HTTP/2: the connection preface and SETTINGS, then no request. HTTP/1.1: half a
        // request head.
        let said: &[u8] = if alpn == b"h2" {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"
        } else {
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        };
        tls.write_all(said).await.unwrap();
        tls.flush().await.unwrap();
        // HTTP/2: the server's SETTINGS, then GOAWAY, then the end.
        assert!(closed_by_server(&mut tls).await, "{alpn:?}: still open");
    }
}

#[tokio::test]
async fn shutdown_ends_http2_streams_and_stops() {
    let mut https = spawn_https().await;
    let client = https.client(false);
    let mut streams = Vec::new();
    for n in 0..3 {
        let id = format!("down-{n}");
        let created = https
            .post(&client, "/api/tasks", json!({"id": id, "total": 10}))
            .await;
        assert_eq!(created.status(), 201);
        let response = within(
            client
                .get(https.url(&format!("/api/index-progress/{id}/events")))
                .send(),
        )
        .await
        .unwrap();
        let mut stream = SseClient::new(response);
        stream.next_event().await.expect("the snapshot");
        streams.push(stream);
    }
    https.app.signal_stop();
    for stream in &mut streams {
        // Ended by the server (the client resumes elsewhere), within the grace period.
        let rest = stream.events_until_cut().await;
        assert!(rest.is_empty(), "{} events after the snapshot", rest.len());
    }
    within(https.app.stop()).await;
}

#[tokio::test]
async fn watch_and_tasks_follow_a_task_over_https() {
    let https = spawn_https().await;
    let client = https.client(true);
    let created = https
        .post(&client, "/api/tasks", json!({"id": "tls-watch"}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let ended = https
        .post(
            &client,
            "/api/tasks/tls-watch/complete",
            json!({"results": {"files": 3}}),
        )
        .await;
    assert_eq!(ended.status(), StatusCode::OK);
    let server = format!("https://{}", https.app.addr);
    let ca = https._files.path().join("cert.pem");
    let ca = ca.to_str().unwrap();

    let watch = ["watch", "tls-watch", "--server", &server, "--ca-cert", ca];
    let output = within(binary().args(watch).output()).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let results: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results, json!({"files": 3}));

    let tasks = ["tasks", "--json", "--server", &server, "--ca-cert", ca];
    let output = within(binary().args(tasks).output()).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("tls-watch"),
        "{output:?}"
    );

    // Without the certificate the server's self-signed one is not trusted: no answer is
    // believed, and `watch` gives up as unreachable.
    let untrusted = [
        "watch",
        "tls-watch",
        "--server",
        &server,
        "--retry-secs",
        "0",
    ];
    let output = within(binary().args(untrusted).output()).await.unwrap();
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    within(https.app.stop()).await;
}

fn binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_progress-hub"));
    command
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The certificate a new connection is offered.
async fn served_certificate(addr: SocketAddr, trusted: &[&CertificateDer<'static>]) -> Vec<u8> {
    let tls = tls_connect(addr, trusted, b"http/1.1").await;
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_files_are_bad() {
    let data = tempfile::tempdir().unwrap();
    let (first, second) = (self_signed(), self_signed());
    let (cert_path, key_path) = write_files(data.path(), &first);
    let mut child = binary()
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within(stdout.next_line())
        .await
        .unwrap()
        .expect("a ready line");
    let addr: SocketAddr = line
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("ready line: {line}"))
        .parse()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for_log = async |needle: &str| {
        within(async {
            while let Some(line) = log.next_line().await.unwrap() {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("the server's log ended before {needle:?}");
        })
        .await
    };
    let hangup = async || {
        let pid = child.id().unwrap().to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
    };
    let both = [&first.der, &second.der];
    assert_eq!(served_certificate(addr, &both).await, first.der.to_vec());
    // A connection open before the reload keeps its certificate and keeps working.
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(first.pem.as_bytes()).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(second.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let health = format!("https://{addr}/healthz");
    assert_eq!(within(h1.get(&health).send()).await.unwrap().status(), 200);

    write_files(data.path(), &second);
    hangup().await;
    wait_for_log("reloaded the TLS certificate").await;
    assert_eq!(served_certificate(addr, &both).await, second.der.to_vec());
    assert_eq!(within(h1.get(&health).send()).await.unwrap().status(), 200);

    // A broken certificate file: logged, and the second certificate stays.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    hangup().await;
    let error = wait_for_log("cannot reload the TLS certificate").await;
    assert!(error.contains("cert.pem"), "{error}");
    assert_eq!(served_certificate(addr, &both).await, second.der.to_vec());

    let pid = child.id().unwrap().to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    assert_eq!(within(child.wait()).await.unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_certificate_that_does_not_load_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (good, other) = (self_signed(), self_signed());
    let (cert_path, key_path) = write_files(dir.path(), &good);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let missing = dir.path().join("missing.pem");

    let cases: [(&Path, &Path, &[&str]); 5] = [
        (
            &missing,
            &key_path,
            &["cannot use the TLS certificate file", "missing.pem"],
        ),
        (
            &garbage,
            &key_path,
            &["not a valid PEM certificate", "garbage.pem"],
        ),
        (
            &cert_path,
            &missing,
            &["cannot use the TLS private key file", "missing.pem"],
        ),
        (&cert_path, &cert_path, &["no PEM private key", "cert.pem"]),
        (
            &cert_path,
            &other_key,
            &["do not go together", "other-key.pem"],
        ),
    ];
    for (cert, key, expected) in cases {
        let output = within(
            binary()
                .args(["--listen", "127.0.0.1:0", "--tls-cert"])
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .output(),
        )
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(output.stdout.is_empty(), "it must not say it listens");
        for needle in expected {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    }

    // One file without the other.
    let output = within(
        binary()
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert_path)
            .output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

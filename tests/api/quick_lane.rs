//! Plain polls are answered before hyper (the quick lane); everything else on the same
//! connection goes on through hyper. Raw sockets, so that every byte and every
//! connection is the test's.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use progress_hub::config::Switch;

use crate::helpers::{spawn_app, spawn_app_with, within};
use crate::raw::{
    closed_by_server, connect, metric, parse_response, read_one, read_to_close, send,
    wait_for_metric, RawResponse,
};

/// The headers that must match between two answers: all but `date`.
fn comparable(response: &RawResponse) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    headers.sort();
    headers
}

async fn get(stream: &mut tokio::net::TcpStream, path: &str, extra: &str) -> RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_one(stream).await
}

#[tokio::test]
async fn quick_and_routed_polls_answer_alike_on_one_connection() {
    let app = spawn_app().await;
    app.create_task("alike", 10).await;
    app.progress("alike", json!({"processed": 3, "current_file": "a.txt"}))
        .await;
    let mut stream = connect(app.addr).await;
    // A plain poll is the quick lane's; `?since=0` without `wait` answers the same
    // through the router, and hyper then keeps the connection.
    let quick = get(&mut stream, "/api/index-progress/alike", "").await;
    let routed = get(&mut stream, "/api/index-progress/alike?since=0", "").await;
    assert_eq!(quick.status, 200);
    assert_eq!(routed.status, 200);
    assert_eq!(comparable(&quick), comparable(&routed));
    assert_eq!(quick.body, routed.body);
    assert_eq!(quick.json().unwrap()["processed"], 3);
    assert!(quick.header("date").is_some());

    let mut stream = connect(app.addr).await;
    let fresh = "If-None-Match: W/\"0\", \"2\"\r\n";
    let quick = get(&mut stream, "/api/index-progress/alike", fresh).await;
    let routed = get(&mut stream, "/api/index-progress/alike?since=0", fresh).await;
    assert_eq!(quick.status, 304);
    assert_eq!(routed.status, 304);
    assert_eq!(comparable(&quick), comparable(&routed));
    assert!(quick.body.is_empty());
    // After the router answered, a plain poll on the same connection is hyper's and
    // still the same answer.
    let after = get(&mut stream, "/api/index-progress/alike", "").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.json().unwrap()["seq"], 2);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over() {
    let app = spawn_app().await;
    app.create_task("first", 10).await;
    app.create_task("second", 10).await;
    let body = r#"{"processed":7}"#;
    let requests = format!(
        "GET /api/index-progress/first HTTP/1.1\r\nHost: localhost\r\n\r\n\
         GET /api/index-progress/second HTTP/1.1\r\nHost: localhost\r\n\r\n\
         POST /api/tasks/first/progress HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}\
         GET /api/index-progress/first HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = connect(app.addr).await;
    stream.write_all(requests.as_bytes()).await.unwrap();
    // The last request asked for the close.
    let mut raw = Vec::new();
    within(stream.read_to_end(&mut raw)).await.unwrap();
    let answers = split_responses(&raw);
    assert_eq!(answers.len(), 4, "{}", String::from_utf8_lossy(&raw));
    let json = |n: usize| answers[n].json().unwrap();
    assert_eq!(
        (json(0)["task_id"].clone(), json(0)["seq"].clone()),
        ("first".into(), 1.into())
    );
    assert_eq!(json(1)["task_id"], "second");
    assert_eq!(answers[2].status, 200);
    assert_eq!(json(2)["processed"], 7);
    assert_eq!(
        (json(3)["processed"].clone(), json(3)["seq"].clone()),
        (7.into(), 2.into())
    );
}

/// Responses one after another, each with a `content-length`.
fn split_responses(mut raw: &[u8]) -> Vec<RawResponse> {
    let mut responses = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = parse_response(&raw[..end + 4]).expect("a response head");
        let length: usize = head
            .header("content-length")
            .map_or(0, |l| l.parse().expect("a length"));
        let whole = (end + 4 + length).min(raw.len());
        responses.push(parse_response(&raw[..whole]).expect("a response"));
        raw = &raw[whole..];
    }
    responses
}

#[tokio::test]
async fn a_request_that_arrives_in_pieces_is_answered() {
    let app = spawn_app().await;
    app.create_task("pieces", 4).await;
    let mut stream = connect(app.addr).await;
    for piece in [
        &b"GE"[..],
        b"T /api/index-progress/pie",
        b"ces HTTP/1.1\r\nHost: localhost\r",
        b"\n\r",
        b"\n",
    ] {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = read_one(&mut stream).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json().unwrap()["task_id"], "pieces");
}

#[tokio::test]
async fn connection_close_and_half_close_are_honoured() {
    let app = spawn_app().await;
    app.create_task("bye", 4).await;
    let close =
        b"GET /api/index-progress/bye HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let answer = send(app.addr, close)
        .await
        .expect("an answer, then the close");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.json().unwrap()["task_id"], "bye");

    // The request, then FIN from the client: answered all the same, then closed.
    let mut stream = connect(app.addr).await;
    stream
        .write_all(b"GET /api/index-progress/bye HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_to_close(&mut stream).await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json().unwrap()["task_id"], "bye");
}

#[tokio::test]
async fn what_the_lane_does_not_answer_gets_the_routers_answer() {
    // The lane's own answers: with the fast paths on whatever the environment says.
    let app = spawn_app_with(|c| c.fast_paths = Switch::On).await;
    app.create_task("routed", 4).await;
    let mut stream = connect(app.addr).await;
    // Unknown task, invalid id, percent-encoded id: the router's JSON answers.
    let unknown = get(&mut stream, "/api/index-progress/nope", "").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json().unwrap()["error"], "Task not found");
    let mut stream = connect(app.addr).await;
    let invalid = get(&mut stream, "/api/index-progress/-bad", "").await;
    assert_eq!(invalid.status, 400);
    let mut stream = connect(app.addr).await;
    let encoded = get(&mut stream, "/api/index-progress/rout%65d", "").await;
    assert_eq!(encoded.json().unwrap()["task_id"], "routed");
    // A head larger than the lane buffers (a big cookie) is hyper's to read whole.
    let mut stream = connect(app.addr).await;
    let cookie = format!("Cookie: c={}\r\n", "x".repeat(20_000));
    let big = get(&mut stream, "/api/index-progress/routed", &cookie).await;
    assert_eq!(big.status, 200);
    assert_eq!(big.json().unwrap()["task_id"], "routed");
    // HTTP/1.0 is hyper's too, with its own keep-alive rules.
    let old = send(app.addr, b"GET /api/index-progress/routed HTTP/1.0\r\n\r\n").await;
    let old = old.expect("an answer");
    assert_eq!(old.status, 200);
    assert_eq!(old.json().unwrap()["task_id"], "routed");
    // A malformed head gets a JSON 400 and the end of the connection; hyper, once it has
    // a connection, answers one with a bare 400.
    let malformed = send(app.addr, b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n").await;
    let malformed = malformed.expect("an answer");
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json().unwrap()["error"], "Malformed HTTP request");
    let mut stream = connect(app.addr).await;
    assert_eq!(get(&mut stream, "/healthz", "").await.status, 200);
    stream
        .write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        .await
        .unwrap();
    let bare = read_to_close(&mut stream).await.expect("an answer");
    assert_eq!(bare.status, 400);
    assert!(bare.json().is_none());
}

#[tokio::test]
async fn cross_origin_and_protected_polls_go_through_the_router() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["http://page.test".to_string()]).await;
    app.create_task("cors", 4).await;
    let mut stream = connect(app.addr).await;
    let answer = get(
        &mut stream,
        "/api/index-progress/cors",
        "Origin: http://page.test\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("http://page.test")
    );

    let app = spawn_app_with(|c| c.protect_reads = true).await;
    app.create_task("secret", 4).await;
    let mut stream = connect(app.addr).await;
    let answer = get(&mut stream, "/api/index-progress/secret", "").await;
    assert_eq!(answer.status, 401);
    assert!(answer.json().unwrap()["error"].is_string());
}

#[tokio::test]
async fn idle_polling_connections_are_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.header_timeout_secs = 1).await;
    app.create_task("idle", 4).await;
    let mut stream = connect(app.addr).await;
    for _ in 0..2 {
        assert_eq!(
            get(&mut stream, "/api/index-progress/idle", "")
                .await
                .status,
            200
        );
    }
    let idle = Instant::now();
    assert!(
        closed_by_server(&mut stream).await,
        "idle connection kept open"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        idle.elapsed()
    );
}

#[tokio::test]
async fn a_stopping_server_closes_idle_polling_connections_at_once() {
    let app = spawn_app_with(|c| c.shutdown_grace_secs = 10).await;
    app.create_task("stop", 4).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = connect(app.addr).await;
        assert_eq!(
            get(&mut stream, "/api/index-progress/stop", "")
                .await
                .status,
            200
        );
        streams.push(stream);
    }
    let started = Instant::now();
    within(app.stop()).await;
    for stream in &mut streams {
        assert!(closed_by_server(stream).await);
    }
    // The grace period is 10 s; waiting it out would mean an idle connection was not
    // closed when the server stopped.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Clients that send requests without ever reading the answers, behind a 4 KiB receive
/// buffer: one whose polls the quick lane answers, one whose requests hyper answers.
/// Once a write has waited `--send-timeout-secs` the server gives up: the client, reading
/// at last, finds far fewer answers than it asked for, then the end of the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answers_are_cut_off_after_the_send_timeout() {
    const REQUESTS: usize = 20_000;
    let app = spawn_app_with(|c| c.send_timeout_secs = 1).await;
    app.create_task("unread", 4).await;
    const OPEN: &str = "progress_hub_http_connections";
    for path in ["/api/index-progress/unread", "/api/tasks/unread"] {
        let before = metric(&app, OPEN).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = within(socket.connect(app.addr)).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").repeat(REQUESTS);
        // Writing may block once the server stops reading (it waits on its own writes).
        let (mut reader, mut writer) = stream.into_split();
        let sending = tokio::spawn(async move {
            let _ = writer.write_all(request.as_bytes()).await;
            writer
        });
        // Read nothing until the server has given up on the connection, however long a
        // busy machine takes it to fill the buffers (a fixed wait let a slow server
        // answer everything before the client read at last).
        wait_for_metric(&app, OPEN, |n| n > before).await;
        wait_for_metric(&app, OPEN, |n| n <= before).await;
        let mut raw = Vec::new();
        // Bounded by the test timeout: the server must end the connection.
        let _ = within(reader.read_to_end(&mut raw)).await;
        let answers = raw.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
        assert!(answers > 0, "{path}: nothing answered");
        assert!(
            answers < REQUESTS,
            "{path}: all {answers} answered, never cut off"
        );
        sending.abort();
    }
    // The server goes on.
    assert_eq!(app.get("/api/index-progress/unread").await.status(), 200);
}

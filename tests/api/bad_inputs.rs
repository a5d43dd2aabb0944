//! Hostile and broken input at the byte level, complementing errors.rs (which covers the
//! producer API's field checks): path tricks, control characters, 10,000-character ids,
//! invalid UTF-8, malformed JSON, bad query values, bad `Last-Event-ID` values, malformed
//! HTTP, slow and half-finished requests. Each case has its expected status (or an expected
//! close), and afterwards the server still serves and has lost nothing.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::helpers::{fast_paths, spawn_app_with, SseClient, TestApp};
use crate::raw::{closed_by_server, connect, read_to_close, send};

const TOKEN: &str = "table-0123456789";

/// What a case expects back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status with a JSON `{"error": ...}` body from the API.
    Json(u16),
    /// A head that is not HTTP: with the fast paths, the quick lane answers it like
    /// [`Expect::Json`]; without, hyper answers a bare status or closes the connection.
    Malformed(u16),
    /// An SSE stream whose first event has this id (bad `Last-Event-ID` values count as
    /// absent and start with the snapshot).
    StreamFrom(u64),
}

struct Case {
    label: String,
    request: Vec<u8>,
    expect: Expect,
}

/// A request with `Connection: close`, the producer's token, and (a write or with a body)
/// JSON.
fn http(method: &str, target: &str, extra: &[&str], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n"
    );
    let has_type = extra
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-type"));
    // Writes say JSON, even without a body (the server refuses any other).
    if !has_type && (method == "POST" || !body.is_empty()) {
        head.push_str("Content-Type: application/json\r\n");
    }
    let chunked = extra.iter().any(|h| h.contains("chunked"));
    if !body.is_empty() && !chunked {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for header in extra {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn case(label: &str, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        label: label.to_string(),
        request,
        expect,
    }
}

fn get(label: &str, target: &str, status: u16) -> Case {
    case(label, http("GET", target, &[], b""), Expect::Json(status))
}

fn post(label: &str, target: &str, body: &[u8], status: u16) -> Case {
    case(label, http("POST", target, &[], body), Expect::Json(status))
}

fn last_event_id(label: &str, value: &[u8], first: u64) -> Case {
    let mut request = b"GET /api/index-progress/live/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nLast-Event-ID: ".to_vec();
    request.extend_from_slice(value);
    request.extend_from_slice(b"\r\n\r\n");
    case(label, request, Expect::StreamFrom(first))
}

fn cases() -> Vec<Case> {
    let long_id = "x".repeat(10_000);
    let progress = "/api/tasks/live/progress";
    let nested = format!(
        "{{\"detail\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let chunked_body = {
        let payload = format!("{{\"message\": \"{}\"}}", "z".repeat(70 * 1024));
        let mut body = format!("{:x}\r\n", payload.len()).into_bytes();
        body.extend_from_slice(payload.as_bytes());
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        body
    };
    let too_many_headers: Vec<String> = (0..150).map(|n| format!("X-Filler-{n}: {n}")).collect();
    let too_many_headers: Vec<&str> = too_many_headers.iter().map(String::as_str).collect();
    vec![
        // Path tricks: ids are checked before any lookup; odd paths match no route.
        get(
            "..%2F in the id",
            "/api/index-progress/..%2F..%2Fetc%2Fpasswd",
            400,
        ),
        get("encoded dots", "/api/index-progress/%2e%2e", 400),
        get("NUL in the id", "/api/index-progress/a%00b", 400),
        get("newline in the id", "/api/index-progress/a%0Ab", 400),
        get("space in the id", "/api/index-progress/a%20b", 400),
        get("invalid UTF-8 in the id", "/api/index-progress/%FF%FE", 400),
        get("encoded ? in the id", "/api/index-progress/live%3F", 400),
        get(
            "..%2F on the listing route",
            "/api/tasks/..%2F..%2Fhealthz",
            400,
        ),
        get("double slash in front", "//api/index-progress/live", 404),
        get("double slash inside", "/api//index-progress/live", 404),
        get("trailing slash", "/api/index-progress/live/", 404),
        get(
            "extra segment",
            "/api/index-progress/live/..%2F..%2Fhealthz",
            404,
        ),
        get(
            "10,000-character id (poll)",
            &format!("/api/index-progress/{long_id}"),
            400,
        ),
        get(
            "10,000-character id (SSE)",
            &format!("/api/index-progress/{long_id}/events"),
            400,
        ),
        get(
            "10,000-character id (WS)",
            &format!("/api/index-progress/{long_id}/ws"),
            400,
        ),
        post(
            "10,000-character id (progress)",
            &format!("/api/tasks/{long_id}/progress"),
            br#"{"processed": 1}"#,
            400,
        ),
        // Query values.
        get(
            "negative since",
            "/api/index-progress/live?since=-1&wait=1",
            400,
        ),
        get("NaN wait", "/api/index-progress/live?since=1&wait=NaN", 400),
        get(
            "negative wait",
            "/api/index-progress/live?since=1&wait=-5",
            400,
        ),
        get(
            "infinite wait",
            "/api/index-progress/live?since=1&wait=1e999",
            400,
        ),
        get(
            "since beyond u64",
            "/api/index-progress/live?since=18446744073709551616&wait=1",
            400,
        ),
        get(
            "wait not a number",
            "/api/index-progress/live?wait=abc",
            400,
        ),
        get("negative limit", "/api/tasks?limit=-1", 400),
        get(
            "huge limit",
            "/api/tasks?limit=99999999999999999999999",
            400,
        ),
        // JSON bodies: ids, types, numbers, control characters, encodings.
        post(
            "escaped control char in id",
            "/api/tasks",
            br#"{"id": "a\u0001b"}"#,
            400,
        ),
        post(
            "10,000-character id in JSON",
            "/api/tasks",
            format!("{{\"id\": \"{long_id}\"}}").as_bytes(),
            400,
        ),
        post("empty id", "/api/tasks", br#"{"id": ""}"#, 400),
        post(
            "non-ASCII id",
            "/api/tasks",
            "{\"id\": \"\u{e9}t\u{e9}\"}".as_bytes(),
            400,
        ),
        post(
            "total of 2^53",
            "/api/tasks",
            br#"{"total": 9007199254740992}"#,
            422,
        ),
        post("name as an array", "/api/tasks", br#"{"name": ["x"]}"#, 422),
        post(
            "name over 4 KiB",
            "/api/tasks",
            format!("{{\"name\": \"{}\"}}", "n".repeat(5000)).as_bytes(),
            422,
        ),
        post(
            "total as a boolean",
            "/api/tasks",
            br#"{"total": true}"#,
            422,
        ),
        post("negative progress", progress, br#"{"progress": -1}"#, 422),
        post(
            "fractional progress",
            progress,
            br#"{"progress": 50.5}"#,
            422,
        ),
        post(
            "processed as a float",
            progress,
            br#"{"processed": 1e2}"#,
            422,
        ),
        post(
            "raw control char in a string",
            progress,
            b"{\"message\": \"a\x01b\"}",
            400,
        ),
        post("10,000-deep nesting", progress, nested.as_bytes(), 400),
        post("trailing garbage", progress, br#"{"processed": 1} x"#, 400),
        post(
            "UTF-8 BOM",
            progress,
            b"\xEF\xBB\xBF{\"processed\": 1}",
            400,
        ),
        post(
            "lone surrogate escape",
            progress,
            br#"{"message": "\ud800"}"#,
            400,
        ),
        post("invalid UTF-8 in a key", progress, b"{\"\xff\": 1}", 400),
        post("JSON null body", progress, b"null", 422),
        case(
            "form-encoded body",
            http(
                "POST",
                progress,
                &["Content-Type: application/x-www-form-urlencoded"],
                b"processed=1",
            ),
            Expect::Json(415),
        ),
        case(
            "multipart body",
            http(
                "POST",
                progress,
                &["Content-Type: multipart/form-data; boundary=x"],
                b"--x\r\n\r\n1\r\n--x--",
            ),
            Expect::Json(415),
        ),
        case(
            "chunked body over 64 KiB",
            http(
                "POST",
                progress,
                &["Transfer-Encoding: chunked"],
                &chunked_body,
            ),
            Expect::Json(413),
        ),
        // Authorization headers that are not a valid bearer token.
        case(
            "bearer without a token",
            http("POST", "/api/tasks", &[], b"")
                .replace_header(&format!("Bearer {TOKEN}"), "Bearer"),
            Expect::Json(401),
        ),
        case(
            "basic auth",
            http("POST", "/api/tasks", &[], b"")
                .replace_header(&format!("Bearer {TOKEN}"), "Basic dGFibGU6eA=="),
            Expect::Json(401),
        ),
        case(
            "token with a suffix",
            http("POST", "/api/tasks", &[], b"").replace_header(TOKEN, &format!("{TOKEN}x")),
            Expect::Json(401),
        ),
        // Methods and upgrades.
        get("OPTIONS without CORS", "/api/tasks", 405).with_method("OPTIONS"),
        get("PUT on a POST route", progress, 405).with_method("PUT"),
        case(
            "WebSocket with a bad version",
            http(
                "GET",
                "/api/index-progress/live/ws",
                &[
                    "Upgrade: websocket",
                    "Sec-WebSocket-Version: 99",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                ],
                b"",
            )
            .replace_header("Connection: close", "Connection: upgrade"),
            Expect::Json(426),
        ),
        // Malformed HTTP: answered before any handler, in the same format.
        case(
            "garbage request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            Expect::Malformed(400),
        ),
        case(
            "non-numeric Content-Length",
            http("POST", progress, &["Content-Length: abc"], b""),
            Expect::Malformed(400),
        ),
        case(
            "conflicting Content-Lengths",
            http(
                "POST",
                progress,
                &["Content-Length: 2", "Content-Length: 3"],
                b"{}",
            ),
            Expect::Malformed(400),
        ),
        case(
            "150 headers",
            http("GET", "/healthz", &too_many_headers, b""),
            Expect::Malformed(431),
        ),
        // Last-Event-ID values that are not a seq the task has: start from the snapshot.
        last_event_id("Last-Event-ID not a number", b"abc", 2),
        last_event_id("Last-Event-ID negative", b"-1", 2),
        last_event_id("Last-Event-ID beyond u64", b"99999999999999999999999", 2),
        last_event_id("Last-Event-ID empty", b"", 2),
        last_event_id("Last-Event-ID exponent", b"1e3", 2),
        last_event_id("Last-Event-ID beyond the newest seq", b"5000", 2),
        last_event_id("Last-Event-ID invalid UTF-8", b"\xff\xfe", 2),
        last_event_id("Last-Event-ID padded", b"  1  ", 2),
    ]
}

trait RequestBytes {
    fn replace_header(self, from: &str, to: &str) -> Vec<u8>;
}

impl RequestBytes for Vec<u8> {
    fn replace_header(self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self)
            .expect("ASCII request")
            .replacen(from, to, 1)
            .into_bytes()
    }
}

impl Case {
    fn with_method(mut self, method: &str) -> Case {
        let text = String::from_utf8(self.request).expect("ASCII request");
        let (_, rest) = text.split_once(' ').expect("request line");
        self.request = format!("{method} {rest}").into_bytes();
        self
    }
}

async fn run(app: &TestApp, case: &Case) {
    let label = &case.label;
    if let Expect::StreamFrom(first) = case.expect {
        // Through reqwest, which reads the chunked stream frame by frame.
        let (head, _) = split_head(&case.request);
        let value = head
            .split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(b"Last-Event-ID: "))
            .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
            .expect("a Last-Event-ID line");
        let response = app
            .client
            .get(app.url("/api/index-progress/live/events"))
            .header(
                "last-event-id",
                reqwest::header::HeaderValue::from_bytes(value).expect("header value"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{label}");
        let mut stream = SseClient::new(response);
        let event = stream.next_event().await.expect("an event");
        assert_eq!(event.id, Some(first), "{label}");
        return;
    }
    if let (Expect::Malformed(status), false) = (&case.expect, fast_paths()) {
        if let Some(response) = send(app.addr, &case.request).await {
            assert_eq!(response.status, *status, "{label}");
        }
        return;
    }
    let response = send(app.addr, &case.request)
        .await
        .unwrap_or_else(|| panic!("{label}: no response"));
    match case.expect {
        Expect::Json(status) | Expect::Malformed(status) => {
            assert_eq!(response.status, status, "{label}");
            assert_eq!(
                response.header("content-type"),
                Some("application/json"),
                "{label}"
            );
            let body = response
                .json()
                .unwrap_or_else(|| panic!("{label}: not JSON"));
            assert!(body["error"].is_string(), "{label}: {body}");
        }
        Expect::StreamFrom(_) => unreachable!(),
    }
}

fn split_head(request: &[u8]) -> (&[u8], &[u8]) {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    (&request[..end], &request[end + 4..])
}

#[tokio::test]
async fn bad_inputs_are_answered_and_nothing_is_lost() {
    let app = spawn_app_with(|c| {
        c.api_token = Some(TOKEN.to_string());
        c.header_timeout_secs = 1;
        c.idle_timeout_secs = 1;
    })
    .await;
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(TOKEN);
    app.seed_live_and_ended().await;

    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for case in &cases {
        run(&app, case).await;
    }
    let socket_cases = socket_cases(&app).await;

    // Still serving, and nothing lost or changed.
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.assert_seeded_tasks_untouched().await;
    let response = auth(app.client.post(app.url("/api/tasks/live/progress")))
        .json(&json!({"processed": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    println!(
        "{} request cases and {socket_cases} socket cases answered",
        cases.len()
    );
}

/// Slow and half-finished clients: the header timeout (1 s here) and the body idle
/// timeout (1 s) cut them off. Returns how many cases ran.
async fn socket_cases(app: &TestApp) -> usize {
    // Slowloris: a header byte every 300 ms never completes within the header timeout.
    let mut slow = connect(app.addr).await;
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut sent = 0;
    for byte in request.iter() {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(sent < request.len(), "the slow client was never cut off");
    assert!(closed_by_server(&mut slow).await, "slowloris");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Connect and send nothing.
    let mut silent = connect(app.addr).await;
    assert!(closed_by_server(&mut silent).await, "silent connection");

    // Half the headers, then nothing.
    let mut half = connect(app.addr).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert!(closed_by_server(&mut half).await, "half the headers");

    // Headers complete, half the body, then nothing: the body idle timeout answers 408.
    let mut stalled = connect(app.addr).await;
    let head = format!(
        "POST /api/tasks/live/progress HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: 40\r\n\r\n{{\"processed\":"
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut stalled).await.expect("an answer");
    assert_eq!(answer.status, 408, "stalled body");
    assert!(answer.json().unwrap()["error"].is_string());

    // A full request followed by a half-close (FIN): still answered.
    let mut closing = connect(app.addr).await;
    closing
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    closing.shutdown().await.unwrap();
    let answer = read_to_close(&mut closing).await;
    assert_eq!(answer.map(|a| a.status), Some(200), "half-closed client");
    5
}

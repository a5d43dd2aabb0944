//! The quick lane: the plainest, most frequent requests (a poll of a task's state) answered
//! on the bare socket, before hyper and the router see the connection.
//!
//! A poll is a `GET` with a handful of headers whose answer is a snapshot already encoded
//! as JSON. Through hyper, the router and the extractors it cost far more CPU than nginx
//! serving the same bytes from memory, spread over routing, header maps, boxed futures
//! and a timer per request (the profile and what the lane bought:
//! docs/design/quick-lane.md). Here a connection starts in a small loop that parses request heads with `httparse` (what hyper itself uses), asks the
//! [`Quick`] routes for an answer, and writes it with one `send`.
//!
//! The lane answers only what it fully understands: an HTTP/1.1 `GET` without a body, a
//! query or an upgrade, for a route that says yes. Anything else (a `POST`, an event
//! stream, a request too large to buffer, a poll with `?since=`) ends the lane for that
//! connection: what it has read is handed to hyper with the socket, and hyper serves the
//! rest of the connection as it would have from the start. A head that is not HTTP at all
//! (unparseable, a bad `Content-Length`, more headers than hyper allows) is answered here,
//! in the API's error format where hyper would send a bare status, and the connection
//! closes.
//!
//! Connection rules follow hyper's as configured in [`crate::server::serve`]: keep-alive, the
//! head must arrive within the header timeout counted from the previous answer (or the
//! accept), `Connection: close` is honoured and echoed, a client that half-closes after
//! its request still gets its answer, and a stopping server closes idle connections at
//! once and waits up to the grace period for an answer being written.

use std::cell::RefCell;
use std::io::{self, Write};
use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::ApiError;

/// Room for the request heads the lane reads before it passes the connection on: real
/// polls are a few hundred bytes; anything larger is hyper's to judge (it answers 431).
const HEAD_ROOM: usize = 8 * 1024;
/// Headers one request may carry in the lane; more go to hyper.
const MAX_HEADERS: usize = 32;
/// How long, and how much, a closing connection reads and drops ([`linger`]).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// hyper's limit on headers per request (its default, which the server keeps).
const HYPER_MAX_HEADERS: usize = 100;
/// Answers to pipelined requests are gathered up to this much before they are written.
const OUT_BATCH: usize = 64 * 1024;

/// Routes the lane may answer.
pub trait Quick: Send + Sync + 'static {
    /// The answer to `GET <path>` (HTTP/1.1, no query, no body) with `headers`: the status
    /// line and the route's own headers, appended to `out`, then what follows them. The
    /// lane adds `content-length`, `connection` and `date`. [`Answer::Pass`] leaves the
    /// request (and the connection) to the router; `out` is then ignored.
    fn answer(&self, path: &str, headers: &[httparse::Header<'_>], out: &mut Vec<u8>) -> Answer;

    /// The lane refused a head that is not HTTP with `status` (for the request count).
    fn refused(&self, _status: u16) {}
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not for the lane.
    Pass,
    /// A head without a body (`304`).
    Empty,
    /// A head and this body.
    Body(Bytes),
}

/// How the lane left a connection.
pub enum Outcome {
    /// Closed, or the client went away: nothing more to do.
    Done,
    /// The rest is hyper's: the socket, and what was read but not answered.
    Pass(TcpStream, Bytes),
}

/// Connection rules for the lane, the same as hyper's.
pub struct Rules<'a> {
    pub header_timeout: Duration,
    /// How long an answer may wait for the client to take anything.
    pub send_timeout: Duration,
    pub grace: Duration,
    pub shutdown: &'a CancellationToken,
}

/// Serves requests on `stream` from `quick` until one is not the lane's, the client
/// leaves, or the server stops.
pub async fn serve(mut stream: TcpStream, quick: &dyn Quick, rules: Rules<'_>) -> Outcome {
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    // One timer for the connection, re-armed only when it fires early: moving a deadline
    // is a store, not a trip through the timer wheel per request.
    let mut deadline = Instant::now() + rules.header_timeout;
    let mut timer = pin!(tokio::time::sleep_until(deadline));
    let mut stopping = pin!(rules.shutdown.cancelled());
    loop {
        // Answer every complete request already read (a client may pipeline).
        let mut close = false;
        let mut pass = false;
        let mut answered = 0usize;
        while !close && out.len() < OUT_BATCH {
            match answer_one(&input, quick, &mut out) {
                Parsed::Answered { used, close: c } => {
                    let _ = input.split_to(used);
                    answered += 1;
                    close = c;
                }
                Parsed::Partial => break,
                Parsed::Pass => {
                    pass = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if write_all(&stream, &out, &rules).await.is_err() {
                return Outcome::Done;
            }
            out.clear();
        }
        if close {
            linger(&mut stream, &mut input).await;
            return Outcome::Done;
        }
        if pass || (input.len() >= HEAD_ROOM && answered == 0) {
            return Outcome::Pass(stream, input.freeze());
        }
        if answered > 0 {
            deadline = Instant::now() + rules.header_timeout;
            if out.capacity() > OUT_BATCH * 2 {
                out = Vec::new();
            }
            if !input.is_empty() {
                continue;
            }
        }
        // Wait for more of the next request.
        if input.capacity() - input.len() < 1024 {
            input.reserve(2048);
        }
        tokio::select! {
            biased;
            // As hyper does on a graceful shutdown: an idle connection is closed, a request
            // being read is still answered (hyper does that, then closes).
            _ = stopping.as_mut() => {
                if input.is_empty() {
                    return Outcome::Done;
                }
                return Outcome::Pass(stream, input.freeze());
            }
            read = stream.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return Outcome::Done,
                Ok(_) => {}
            },
            () = timer.as_mut() => {
                if Instant::now() >= deadline {
                    return Outcome::Done;
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// What the lane made of the start of its input.
pub enum Parsed {
    /// Answered (appended to `out`): `used` bytes were the request; `close` ends the
    /// connection after the answer.
    Answered { used: usize, close: bool },
    /// Not a whole head yet.
    Partial,
    /// Not the lane's: hyper takes the connection from here.
    Pass,
}

/// Parses one request head at the start of `input` and appends the lane's answer to
/// `out`. Public for the fuzz target (`fuzz/`).
pub fn answer_one(input: &[u8], quick: &dyn Quick, out: &mut Vec<u8>) -> Parsed {
    if input.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(input) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return too_many_headers(input, quick, out),
        Err(_) => return refuse(quick, out, malformed()),
    };
    if !content_length_valid(request.headers) {
        return refuse(
            quick,
            out,
            ApiError::BadRequest("Invalid Content-Length".to_string()),
        );
    }
    let (Some("GET"), Some(1), Some(path)) = (request.method, request.version, request.path) else {
        return Parsed::Pass;
    };
    if path.contains('?') {
        return Parsed::Pass;
    }
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Pass;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Pass;
        }
    }
    let start = out.len();
    let body = match quick.answer(path, request.headers, out) {
        Answer::Pass => {
            out.truncate(start);
            return Parsed::Pass;
        }
        Answer::Empty => None,
        Answer::Body(body) => Some(body),
    };
    finish(out, body.as_deref(), close);
    Parsed::Answered { used, close }
}

/// The end of an answer's head (`content-length` when there is a body, `connection`,
/// `date`), then its body.
fn finish(out: &mut Vec<u8>, body: Option<&[u8]>, close: bool) {
    if let Some(body) = body {
        // Writing to a `Vec` cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    DATE.with(|date| out.extend_from_slice(date.borrow_mut().now()));
    out.extend_from_slice(b"\r\n\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
}

/// A request that is not valid HTTP/1.1: answered in the API's error format, where hyper
/// would send a bare status, and the connection closed (nothing after it can be trusted
/// to start where a request starts).
fn refuse(quick: &dyn Quick, out: &mut Vec<u8>, error: ApiError) -> Parsed {
    let status = error.status();
    quick.refused(status.as_u16());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    finish(out, Some(&error.body()), true);
    Parsed::Answered {
        used: 0,
        close: true,
    }
}

fn malformed() -> ApiError {
    ApiError::BadRequest("Malformed HTTP request".to_string())
}

/// More headers than the lane parses: hyper's own limit (100) decides, in the API's
/// error format when it is exceeded.
fn too_many_headers(input: &[u8], quick: &dyn Quick, out: &mut Vec<u8>) -> Parsed {
    let mut headers = vec![httparse::EMPTY_HEADER; HYPER_MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(input) {
        Err(httparse::Error::TooManyHeaders) => refuse(quick, out, ApiError::TooManyHeaders),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        _ => Parsed::Pass,
    }
}

/// Whether every `Content-Length` is a number and they all agree (a comma-separated
/// list of equal numbers counts as that number), as hyper requires.
fn content_length_valid(headers: &[httparse::Header<'_>]) -> bool {
    let mut length = None;
    for header in headers {
        if !header.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for item in header.value.split(|b| *b == b',') {
            let item = item.trim_ascii();
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return false,
                (Some(n), Some(seen)) if n != seen => return false,
                (Some(n), _) => length = Some(n),
            }
        }
    }
    true
}

/// Ends the connection after its last answer: the write side first, then what the client
/// still sends is read and dropped for a moment. Closing a socket with unread bytes
/// sends a reset, which can make the client lose the answer (a refused request's
/// unread body, say).
async fn linger(stream: &mut TcpStream, scratch: &mut BytesMut) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            // The connection's own buffer: an array here would grow every connection's
            // task, which is sized for its largest state.
            scratch.clear();
            scratch.reserve(2048);
            match stream.read_buf(scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Writes `bytes` (at most one batch of answers) as event streams write
/// ([`super::handoff::write_all`]: a client that takes nothing for the send timeout is
/// given up on); once the server is stopping, within the grace period.
async fn write_all(stream: &TcpStream, bytes: &[u8], rules: &Rules<'_>) -> io::Result<()> {
    let mut parts = [io::IoSlice::new(bytes)];
    let mut write = pin!(super::handoff::write_all(
        stream,
        &mut parts,
        rules.send_timeout
    ));
    tokio::select! {
        biased;
        done = write.as_mut() => return done,
        _ = rules.shutdown.cancelled() => {}
    }
    tokio::time::timeout(rules.grace, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: u64::MAX, text: [0; 29] }) };
}

/// The `date` header's value, formatted once a second per thread (as hyper does).
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers `GET /yes` with a body and `GET /empty` without one.
    pub(super) struct Routes;

    impl Quick for Routes {
        fn answer(&self, path: &str, _: &[httparse::Header<'_>], out: &mut Vec<u8>) -> Answer {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            match path {
                "/yes" => Answer::Body(Bytes::from_static(b"body")),
                "/empty" => Answer::Empty,
                _ => Answer::Pass,
            }
        }
    }

    fn run(input: &[u8]) -> (Vec<u8>, Option<(usize, bool)>) {
        let mut out = b"earlier".to_vec();
        let parsed = match answer_one(input, &Routes, &mut out) {
            Parsed::Answered { used, close } => Some((used, close)),
            Parsed::Partial => Some((0, false)),
            Parsed::Pass => None,
        };
        (out, parsed)
    }

    fn date() -> String {
        DATE.with(|d| String::from_utf8(d.borrow_mut().now().to_vec()).unwrap())
    }

    #[test]
    fn answers_a_plain_get_with_length_and_date() {
        let request = b"GET /yes HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
        let (out, parsed) = run(request);
        assert_eq!(parsed, Some((request.len() - 9, false)));
        let text = String::from_utf8(out).unwrap();
        let (head, date) = (
            "earlierHTTP/1.1 200 OK\r\ncontent-length: 4\r\ndate: ",
            date(),
        );
        assert!(text.starts_with(head), "{text}");
        assert!(text.ends_with(" GMT\r\n\r\nbody"), "{text}");
        assert_eq!(text.len(), head.len() + date.len() + "\r\n\r\nbody".len());
        assert_eq!(date.len(), 29);
    }

    #[test]
    fn a_bodiless_answer_has_no_length_and_close_is_echoed() {
        let (out, parsed) = run(b"GET /empty HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n");
        assert_eq!(parsed.map(|(_, close)| close), Some(true));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\ndate: "), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for cut in 0..30 {
            let request = b"GET /yes HTTP/1.1\r\nHost: x\r\n\r\n";
            let (out, parsed) = run(&request[..cut]);
            assert_eq!(parsed, Some((0, false)), "cut at {cut}");
            assert_eq!(out, b"earlier");
        }
    }

    #[test]
    fn everything_else_is_passed_on_untouched() {
        for request in [
            &b"POST /yes HTTP/1.1\r\n\r\n"[..],
            b"HEAD /yes HTTP/1.1\r\n\r\n",
            b"GET /yes HTTP/1.0\r\n\r\n",
            b"GET /yes?since=1 HTTP/1.1\r\n\r\n",
            b"GET /no HTTP/1.1\r\n\r\n",
            b"GET /yes HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /yes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /yes HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /yes HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST /yes HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}",
        ] {
            let (out, parsed) = run(request);
            assert_eq!(parsed, None, "{}", String::from_utf8_lossy(request));
            assert_eq!(out, b"earlier", "{}", String::from_utf8_lossy(request));
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|n| format!("X-{n}: y\r\n"))
            .collect();
        let (_, parsed) = run(format!("GET /yes HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert_eq!(parsed, None, "too many headers for the lane, not for hyper");
    }

    #[test]
    fn what_is_not_http_is_refused_in_json_and_closes() {
        let too_many: String = (0..HYPER_MAX_HEADERS + 1)
            .map(|n| format!("X-{n}: y\r\n"))
            .collect();
        let too_many = format!("GET /yes HTTP/1.1\r\n{too_many}\r\n");
        let (bad, length, large) = (
            "400 Bad Request",
            "Invalid Content-Length",
            "431 Request Header Fields Too Large",
        );
        let malformed = "Malformed HTTP request";
        for (request, status, message) in [
            (&b"GARBAGE\r\n\r\n"[..], bad, malformed),
            (b"GET /yes HTTP/1.1\r\nBad Header\r\n\r\n", bad, malformed),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                bad,
                malformed,
            ),
            (
                b"POST /yes HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                bad,
                length,
            ),
            (
                b"POST /yes HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                bad,
                length,
            ),
            (
                b"POST /yes HTTP/1.1\r\nContent-Length: 2, 3\r\n\r\n{}",
                bad,
                length,
            ),
            (
                b"GET /yes HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                bad,
                length,
            ),
            (too_many.as_bytes(), large, "Too many request headers"),
        ] {
            let (out, parsed) = run(request);
            let label = String::from_utf8_lossy(request);
            assert_eq!(parsed, Some((0, true)), "{label}");
            let text = String::from_utf8(out).unwrap();
            let head = format!("earlierHTTP/1.1 {status}\r\ncontent-type: application/json\r\n");
            assert!(text.starts_with(&head), "{label}: {text}");
            assert!(
                text.contains("\r\nconnection: close\r\n"),
                "{label}: {text}"
            );
            let body = text.split("\r\n\r\n").nth(1).unwrap();
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["error"], message, "{label}");
            assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        }
        // A head with too many headers that is not complete yet: read on.
        let cut = &too_many.as_bytes()[..too_many.len() - 10];
        assert_eq!(run(cut).1, Some((0, false)));
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Every connection's task is sized for the lane's largest state, and memory freed
    /// after many connections at once stays with the process: a 4 KiB array held across an
    /// `await` here made every idle SSE subscriber heavier
    /// (docs/design/handoff.md#keeping-it-small).
    #[tokio::test]
    async fn the_lanes_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let rules = Rules {
            header_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            shutdown: &shutdown,
        };
        let lane = serve(stream, &tests::Routes, rules);
        let size = std::mem::size_of_val(&lane);
        assert!(size <= 1024, "the lane's future takes {size} B");
    }
}

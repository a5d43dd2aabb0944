//! A raw TCP client for what reqwest will not send: exact bytes, malformed requests,
//! slow or half-finished ones. Also the Prometheus text reader the metrics tests use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{within, TestApp};

/// One HTTP response as read off the socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    within(TcpStream::connect(addr)).await.expect("connect")
}

/// Sends `request` as-is and reads until the server closes the connection (send
/// `Connection: close` to get there after one response). `None` when nothing parseable
/// came back before the close.
pub async fn send(addr: SocketAddr, request: &[u8]) -> Option<RawResponse> {
    let mut stream = connect(addr).await;
    // The server may answer and close before reading everything (413, 431): a failed
    // write is not the test's concern, the answer is.
    let _ = stream.write_all(request).await;
    read_to_close(&mut stream).await
}

/// Reads until EOF (or a reset) and parses what came as one response.
pub async fn read_to_close(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match within(stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
    parse_response(&raw)
}

/// Reads one response off a kept-alive connection (needs a `Content-Length`).
pub async fn read_one(stream: &mut TcpStream) -> RawResponse {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return parse_response(&raw[..end + 4 + length]).expect("a response");
            }
        }
        let n = within(stream.read(&mut chunk)).await.expect("read");
        assert!(n > 0, "connection closed before a full response");
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Waits for the server to close the connection; true if it did (EOF or reset) before
/// the test's timeout.
pub async fn closed_by_server(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(crate::helpers::TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

pub fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = find(raw, b"\r\n") {
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[(end + 4 + size).min(raw.len())..];
    }
    out
}

/// A chunked body checked strictly: every chunk whole, then the last chunk and nothing
/// after it.
pub fn dechunk_strict(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = find(raw, b"\r\n").ok_or("a size line without its end")?;
        let line = String::from_utf8_lossy(&raw[..end]).to_string();
        let size =
            usize::from_str_radix(&line, 16).map_err(|_| format!("bad size line {line:?}"))?;
        raw = &raw[end + 2..];
        if size == 0 {
            return match raw {
                b"\r\n" => Ok(out),
                _ => Err(format!("{} bytes after the last chunk", raw.len())),
            };
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return Err(format!("a chunk of {size} bytes cut short"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every sample of a Prometheus text exposition, `name{labels}` → value. Panics on any
/// line that is not a comment, a blank or a well-formed sample.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            let kind = words.next().unwrap_or("");
            if kind == "TYPE" {
                let _name = words.next().expect("TYPE names a metric");
                let ty = words.next().expect("TYPE has a type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                    "bad type in {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

/// Scrapes `/metrics` and returns its samples.
pub async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    parse_prometheus(&response.text().await.expect("metrics text"))
}

/// One sample's value (0 when absent).
pub async fn metric(app: &TestApp, series: &str) -> f64 {
    scrape(app).await.get(series).copied().unwrap_or(0.0)
}

/// Waits until the sample satisfies `condition`, scraping every few milliseconds.
pub async fn wait_for_metric(app: &TestApp, series: &str, condition: impl Fn(f64) -> bool) {
    within(async {
        loop {
            if condition(metric(app, series).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

//! The fast paths against hyper: random request heads sent to a server with the fast
//! paths on (the quick lane answers what it can) and to one with them off (hyper and axum
//! answer everything), both on the same tasks. Status, headers (less `date`), body and
//! whether the connection stays open must match.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::helpers::{spawn_app, spawn_app_on, TestApp};
use crate::raw::{connect, read_one, read_to_close, RawResponse};
use progress_hub::config::Switch;

/// Request heads the lane might answer, and neighbours it must pass on.
fn request_head() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just("/api/index-progress/live"),
        Just("/api/index-progress/ended"),
        Just("/api/index-progress/nope"),
        Just("/api/index-progress/bad%20id"),
        Just("/api/index-progress/-dash"),
        Just("/api/index-progress/live?since=0"),
        Just("/api/index-progress/live/"),
        Just("/api/index-progress/"),
        Just("/healthz"),
        Just("/api/tasks/live"),
    ];
    let version = prop_oneof![4 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")];
    let header = prop_oneof![
        Just("Host: localhost"),
        Just("host: 127.0.0.1"),
        Just("Host: evil.example"),
        Just("If-None-Match: \"2\""),
        Just("if-none-match: W/\"2\", \"7\""),
        Just("If-None-Match: *"),
        Just("If-None-Match: \"02\""),
        Just("If-None-Match: \"3\""),
        Just("Connection: close"),
        Just("Connection: keep-alive"),
        Just("connection: Keep-Alive, close"),
        Just("Connection: TE"),
        Just("Origin: http://localhost"),
        Just("Accept: application/json"),
        Just("X-Anything: value"),
        Just("Cache-Control: no-cache"),
        Just("User-Agent: differential/1"),
    ];
    (path, version, proptest::collection::vec(header, 0..5)).prop_map(|(path, version, headers)| {
        let mut head = format!("GET {path} {version}\r\n");
        for header in headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head
    })
}

/// What must match: status, sorted headers less `date`, body, and whether the server
/// kept the connection for another request.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    kept_open: bool,
}

fn outcome(response: RawResponse, kept_open: bool) -> Outcome {
    let mut headers: Vec<(String, String)> = response
        .headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
        .collect();
    headers.sort();
    Outcome {
        status: response.status,
        headers,
        body: response.body,
        kept_open,
    }
}

async fn ask(app: &TestApp, head: &str) -> Outcome {
    let mut stream = connect(app.addr).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_one(&mut stream).await;
    // Another request on the same connection: answered only if it stayed open.
    let next = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let _ = stream.write_all(next).await;
    let kept_open = read_to_close(&mut stream)
        .await
        .is_some_and(|r| r.status == 200);
    outcome(response, kept_open)
}

#[tokio::test]
async fn the_quick_lane_answers_as_hyper_does() {
    // The tasks, written once, then served by pairs of servers from the same store.
    let seed = spawn_app().await;
    seed.seed_live_and_ended().await;
    let (config, store) = (seed.config.clone(), seed.store());
    seed.stop().await;
    let mut runner = TestRunner::new(ProptestConfig::default());
    let heads = request_head();
    for cors in [vec![], vec!["http://page.example".to_string()]] {
        let mut fast = config.clone();
        fast.fast_paths = Switch::On;
        fast.cors_origins = cors.clone();
        let mut plain = fast.clone();
        plain.fast_paths = Switch::Off;
        let fast = spawn_app_on(fast, store.clone()).await;
        let plain = spawn_app_on(plain, store.clone()).await;
        assert_eq!(
            fast.get_json("/api/index-progress/live").await["seq"],
            json!(2)
        );
        for _ in 0..150 {
            let head = heads.new_tree(&mut runner).expect("a head").current();
            let (quick, reference) = (ask(&fast, &head).await, ask(&plain, &head).await);
            assert_eq!(quick, reference, "CORS {cors:?}\n{head}");
        }
    }
}

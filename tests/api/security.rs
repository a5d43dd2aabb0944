//! API tokens (flag and file, several, wrong, none), read protection (query token, cookie,
//! bearer; missing or another task's token is 401), CORS preflights and the WebSocket
//! `Origin` check, cross-site writes and DNS rebinding.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app, spawn_app_with, within, TestApp};
use progress_hub::config::Config;
use progress_hub::{Application, StartError};

async fn create_with(app: &TestApp, auth: Option<&str>, id: &str) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({ "id": id }));
    if let Some(value) = auth {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn several_tokens_from_a_file_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(
        &file,
        "# producers of the nightly jobs\n\nalpha-0123456789 nightly indexer\n  beta-0123456789\n",
    )
    .unwrap();
    let app = spawn_app_with(|c| {
        c.api_token = Some("gamma-0123456789".to_string());
        c.api_token_file = Some(file);
    })
    .await;
    for (n, token) in ["alpha-0123456789", "beta-0123456789", "gamma-0123456789"]
        .iter()
        .enumerate()
    {
        let response = create_with(&app, Some(&format!("Bearer {token}")), &format!("t{n}")).await;
        assert_eq!(response.status(), 201, "{token}");
    }
    for auth in [
        None,
        Some("Bearer wrong-0123456789"),
        Some("Bearer alpha-0123456789x"),
        Some("Bearer nightly"),
        Some("Basic YWxwaGE6MDEyMw=="),
        Some("Bearer"),
        Some("alpha-0123456789"),
        Some("Bearer # producers of the nightly jobs"),
    ] {
        let response = create_with(&app, auth, "refused").await;
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "Missing or invalid API token");
    }
    assert_eq!(app.get("/api/index-progress/refused").await.status(), 404);
}

#[tokio::test]
async fn a_missing_or_empty_token_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests();
    config.api_token_file = Some(dir.path().join("absent"));
    let error = Application::build(config.clone()).await.err().unwrap();
    assert!(matches!(error, StartError::Security(_)), "{error}");
    assert!(error.to_string().contains("absent"), "{error}");

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nothing yet\n\n").unwrap();
    config.api_token_file = Some(empty);
    let error = Application::build(config).await.err().unwrap();
    assert!(error.to_string().contains("no token"), "{error}");
}

const ADMIN: &str = "admin-0123456789";

async fn protected_app(data: &tempfile::TempDir) -> TestApp {
    let dir = data.path().to_path_buf();
    spawn_app_with(move |c| {
        c.data_dir = dir;
        c.protect_reads = true;
        c.api_token = Some(ADMIN.to_string());
    })
    .await
}

async fn create_protected(app: &TestApp, id: &str) -> String {
    let response = create_with(app, Some(&format!("Bearer {ADMIN}")), id).await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let token = body["read_token"].as_str().expect("read_token").to_string();
    assert_eq!(token.len(), 32);
    token
}

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = app.client.get(app.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn read_protection_takes_a_query_token_a_cookie_or_an_api_token() {
    let data = tempfile::tempdir().unwrap();
    let app = protected_app(&data).await;
    let mine = create_protected(&app, "mine").await;
    let theirs = create_protected(&app, "theirs").await;
    assert_ne!(mine, theirs);
    let bearer = format!("Bearer {ADMIN}");
    let cookie = format!("other=1; progress_hub_read_mine={mine}");
    let wrong_cookie = format!("progress_hub_read_mine={theirs}");

    for route in [
        "/api/index-progress/mine",
        "/api/index-progress/mine/events",
        "/api/tasks/mine",
    ] {
        let with_query = format!("{route}?token={mine}");
        let with_other = format!("{route}?token={theirs}");
        assert_eq!(get(&app, route, &[]).await, 401, "{route} without a token");
        assert_eq!(get(&app, &with_query, &[]).await, 200, "{route} ?token=");
        assert_eq!(
            get(&app, route, &[("cookie", &cookie)]).await,
            200,
            "{route} cookie"
        );
        assert_eq!(
            get(&app, route, &[("authorization", &bearer)]).await,
            200,
            "{route} bearer"
        );
        assert_eq!(
            get(&app, &with_other, &[]).await,
            401,
            "{route} another task's token"
        );
        assert_eq!(
            get(&app, route, &[("cookie", &wrong_cookie)]).await,
            401,
            "{route} cookie"
        );
        let garbage = format!("{route}?token=zz");
        assert_eq!(get(&app, &garbage, &[]).await, 401, "{route} garbage");
        let bad_bearer = [("authorization", "Bearer nope")];
        assert_eq!(
            get(&app, route, &bad_bearer).await,
            401,
            "{route} bad bearer"
        );
    }
    // Without a token nobody learns whether a task exists.
    assert_eq!(get(&app, "/api/index-progress/ghost", &[]).await, 401);
    let response = app.get("/api/index-progress/mine/events").await;
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.json::<Value>().await.unwrap()["error"].is_string());

    // WebSocket: checked before the upgrade.
    let ws = |query: &str| format!("ws://{}/api/index-progress/mine/ws{query}", app.addr);
    assert!(
        tokio_tungstenite::connect_async(ws(&format!("?token={mine}")))
            .await
            .is_ok()
    );
    match tokio_tungstenite::connect_async(ws("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }

    // The listings need the API token.
    for route in ["/api/tasks", "/api/events"] {
        assert_eq!(get(&app, route, &[]).await, 401, "{route}");
        let with_read_token = format!("{route}?token={mine}");
        assert_eq!(get(&app, &with_read_token, &[]).await, 401, "{route}");
        assert_eq!(
            get(&app, route, &[("authorization", &bearer)]).await,
            200,
            "{route}"
        );
    }
    // Operations stay open.
    assert_eq!(get(&app, "/healthz", &[]).await, 200);

    // The key lives in the data directory, private, and tokens survive a restart.
    let key = data.path().join("read-token.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let app = app.restart().await;
    let route = format!("/api/index-progress/mine?token={mine}");
    assert_eq!(get(&app, &route, &[]).await, 200);
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let app = spawn_app_with(|c| {
        c.cors_origins = vec!["https://app.example".to_string()];
    })
    .await;
    app.create_task("c", 1).await;
    let preflight = |origin: &'static str, headers: &'static str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                app.url("/api/index-progress/c/events"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", headers)
            .send()
    };
    let allowed = preflight("https://app.example", "last-event-id")
        .await
        .unwrap();
    assert!(allowed.status().is_success());
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let allow_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for name in ["last-event-id", "content-type", "authorization"] {
        assert!(allow_headers.contains(name), "{allow_headers}");
    }
    let denied = preflight("https://evil.example", "last-event-id")
        .await
        .unwrap();
    assert!(denied
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let simple = app
        .client
        .get(app.url("/api/index-progress/c"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        simple.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = simple.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("etag"), "{exposed}");
    let foreign = app
        .client
        .get(app.url("/api/index-progress/c"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    // Without a list there are no CORS headers at all.
    let plain = spawn_app_with(|_| {}).await;
    let response = plain
        .client
        .get(plain.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

async fn ws_with_origin(app: &TestApp, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/api/index-progress/o/ws", app.addr);
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            if status == 403 {
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"], "Origin not allowed");
            }
            status
        }
        Err(other) => panic!("WebSocket: {other}"),
    }
}

#[tokio::test]
async fn websocket_upgrades_check_the_origin() {
    let app = spawn_app_with(|c| {
        c.cors_origins = vec!["https://app.example".to_string()];
    })
    .await;
    app.create_task("o", 1).await;
    let own = format!("http://{}", app.addr);
    assert_eq!(ws_with_origin(&app, Some("https://app.example")).await, 101);
    assert_eq!(ws_with_origin(&app, None).await, 101, "non-browser clients");
    assert_eq!(ws_with_origin(&app, Some(&own)).await, 101, "same origin");
    assert_eq!(
        ws_with_origin(&app, Some("https://evil.example")).await,
        403
    );
    assert_eq!(ws_with_origin(&app, Some("null")).await, 403);

    // No list configured: every origin may connect, as the contract says.
    let open = spawn_app_with(|_| {}).await;
    open.create_task("o", 1).await;
    assert_eq!(
        ws_with_origin(&open, Some("https://evil.example")).await,
        101
    );
}

/// A raw request's answer (so that `Host` and the content type are exactly the test's).
async fn raw(app: &TestApp, head: &str, body: &str) -> crate::raw::RawResponse {
    let request = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    crate::raw::send(app.addr, request.as_bytes())
        .await
        .expect("an answer")
}

#[tokio::test]
async fn writes_must_be_json_and_from_no_foreign_origin() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["https://app.example".to_string()]).await;
    app.seed_live_and_ended().await;
    let own = format!("http://{}", app.addr);
    let host = app.addr.to_string();
    for (what, headers, body) in [
        (
            "text/plain",
            "Content-Type: text/plain",
            r#"{"processed": 9}"#,
        ),
        (
            "form",
            "Content-Type: application/x-www-form-urlencoded",
            "a=b",
        ),
        ("no type, empty body", "", ""),
        ("no type, JSON body", "", r#"{"processed": 9}"#),
    ] {
        for path in [
            "/api/tasks/live/progress",
            "/api/tasks/live/cancel",
            "/api/tasks",
        ] {
            let head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}");
            let head = head.trim_end_matches("\r\n");
            let answer = raw(&app, head, body).await;
            assert_eq!(answer.status, 415, "{what} to {path}");
            let json = answer.json().expect("a JSON error");
            assert_eq!(json["error"], "Content-Type must be application/json");
        }
    }
    // JSON from a foreign page is refused; from a listed origin or the page's own, not.
    let foreign = format!(
        "POST /api/tasks/live/cancel HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\n\
         Content-Type: application/json"
    );
    let answer = raw(&app, &foreign, "").await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json().unwrap()["error"], "Origin not allowed");
    app.assert_seeded_tasks_untouched().await;
    for origin in ["https://app.example", own.as_str()] {
        let head = format!(
            "POST /api/tasks HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
             Content-Type: application/json; charset=utf-8"
        );
        let id = if origin == own { "own" } else { "listed" };
        let answer = raw(&app, &head, &format!(r#"{{"id": "{id}"}}"#)).await;
        assert_eq!(answer.status, 201, "{origin}");
    }
    // An empty JSON write is still a write: cancel with no body.
    let head = format!(
        "POST /api/tasks/own/cancel HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
    );
    assert_eq!(raw(&app, &head, "").await.status, 200);
}

#[tokio::test]
async fn a_loopback_server_answers_loopback_hosts_only_on_every_path() {
    let app = spawn_app().await;
    app.create_task("rebind", 4).await;
    let port = app.addr.port();
    for path in [
        // The quick lane's poll, the router's poll, a listing, a stream.
        "/api/index-progress/rebind",
        "/api/index-progress/rebind?since=0",
        "/api/tasks",
        "/api/index-progress/rebind/events",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: evil.example:{port}");
        let answer = raw(&app, &head, "").await;
        assert_eq!(answer.status, 403, "{path}");
        let error = answer.json().expect("a JSON error")["error"].to_string();
        assert!(error.contains("Host not allowed"), "{path}: {error}");
        for host in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            "[::1]".to_string(),
        ] {
            if path.ends_with("/events") {
                continue;
            }
            let head = format!("GET {path} HTTP/1.1\r\nHost: {host}");
            assert_eq!(raw(&app, &head, "").await.status, 200, "{path} {host}");
        }
    }
    let write = format!(
        "POST /api/tasks/rebind/cancel HTTP/1.1\r\nHost: evil.example:{port}\r\n\
         Content-Type: application/json"
    );
    assert_eq!(raw(&app, &write, "").await.status, 403);
    let snapshot = app.get_json("/api/index-progress/rebind").await;
    assert_eq!(snapshot["status"], "pending");

    // Behind a proxy that keeps its own name in `Host`: `--public-origin` names it.
    let app = spawn_app_with(|c| c.public_origin = Some("https://progress.example".into())).await;
    app.create_task("proxied", 4).await;
    let head = "GET /api/index-progress/proxied HTTP/1.1\r\nHost: progress.example";
    assert_eq!(raw(&app, head, "").await.status, 200);
    let head = "GET /api/index-progress/proxied HTTP/1.1\r\nHost: evil.example";
    assert_eq!(raw(&app, head, "").await.status, 403);
}

#[tokio::test]
async fn quick_lane_polls_carry_the_routers_cors_headers() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["https://app.example".to_string()]).await;
    app.create_task("corsy", 4).await;
    let host = app.addr.to_string();
    let quick = raw(
        &app,
        &format!("GET /api/index-progress/corsy HTTP/1.1\r\nHost: {host}"),
        "",
    )
    .await;
    let routed = raw(
        &app,
        &format!("GET /api/index-progress/corsy?since=0 HTTP/1.1\r\nHost: {host}"),
        "",
    )
    .await;
    let comparable = |r: &crate::raw::RawResponse| {
        let mut headers: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("date"))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        headers.sort();
        headers
    };
    assert_eq!(quick.status, 200);
    assert_eq!(comparable(&quick), comparable(&routed));
    assert!(quick.header("vary").is_some(), "{:?}", quick.headers);
}

#[tokio::test]
async fn a_websocket_through_a_proxy_that_rewrites_host_counts_as_same_origin() {
    let listed = vec!["https://app.example".to_string()];
    for (public, expected) in [(None, 403), (Some("https://progress.example"), 101)] {
        let app = spawn_app_with(|c| {
            c.cors_origins = listed.clone();
            c.public_origin = public.map(str::to_string);
        })
        .await;
        app.create_task("pws", 1).await;
        let head = format!(
            "GET /api/index-progress/pws/ws HTTP/1.1\r\nHost: {}\r\nOrigin: https://progress.example\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            app.addr
        );
        let mut stream = crate::raw::connect(app.addr).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let n = within(stream.read(&mut buffer)).await.unwrap();
        let text = String::from_utf8_lossy(&buffer[..n]);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {expected}")),
            "{public:?}: {text}"
        );
    }
}

//! API tokens (flag and file, several, wrong, none), read protection (query token, cookie,
//! bearer; missing or another task's token is 401), CORS preflights and the WebSocket
//! `Origin` check.

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp};
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

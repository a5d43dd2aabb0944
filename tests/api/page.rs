//! The bundled page: served from the binary, whatever the working directory, with the
//! right content types, a policy that forbids other origins, and ETag revalidation.

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

use crate::helpers::spawn_app;

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing header {name}"))
}

#[tokio::test]
async fn the_page_is_served_with_its_policy_and_revalidates() {
    let app = spawn_app().await;
    let url = app.url("");
    let client = &app.client;

    let page = client.get(format!("{url}/?task=abc")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        header(&page, CONTENT_TYPE.as_str()),
        "text/html; charset=utf-8"
    );
    assert_eq!(header(&page, CACHE_CONTROL.as_str()), "no-cache");
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let etag = header(&page, ETAG.as_str()).to_string();
    let body = page.text().await.unwrap();
    assert!(body.contains(r#"<script type="module" src="/static/main.js">"#));

    let again = client
        .get(format!("{url}/"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&again, ETAG.as_str()), etag);
    assert!(again.bytes().await.unwrap().is_empty());

    let stale = client
        .get(format!("{url}/"))
        .header(IF_NONE_MATCH, "\"0000000000000000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
}

#[tokio::test]
async fn assets_have_their_content_types() {
    let app = spawn_app().await;
    let url = app.url("");
    let client = &app.client;
    for (name, content_type) in [
        ("main.js", "text/javascript; charset=utf-8"),
        ("transport.js", "text/javascript; charset=utf-8"),
        ("render.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let response = client
            .get(format!("{url}/static/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(
            header(&response, CONTENT_TYPE.as_str()),
            content_type,
            "{name}"
        );
        assert_eq!(
            header(&response, "x-content-type-options"),
            "nosniff",
            "{name}"
        );
        assert_eq!(
            header(&response, CACHE_CONTROL.as_str()),
            "no-cache",
            "{name}"
        );
        assert!(!response.bytes().await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn only_embedded_files_exist() {
    let app = spawn_app().await;
    let url = app.url("");
    let client = &app.client;
    for path in [
        "/static/nope.js",
        "/static/..%2FCargo.toml",
        "/static/%2E%2E%2Fsrc%2Fmain.rs",
        "/static/",
    ] {
        let response = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(header(&response, CONTENT_TYPE.as_str()), "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "Not found", "{path}");
    }
}

//! The OpenAPI document: served as it is in docs/openapi.json, and every operation it
//! documents is routed on a live server (none falls through to the router's 404 or 405)
//! and answers one of the statuses documented for it. The reverse direction (every route
//! documented) is checked against the router's source in src/api/openapi.rs.

use serde_json::{json, Value};

use crate::helpers::spawn_app;

const DOCUMENT: &str = include_str!("../../docs/openapi.json");

#[tokio::test]
async fn the_served_document_is_docs_openapi_json() {
    let app = spawn_app().await;
    let response = app.get("/api/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(response.text().await.unwrap(), DOCUMENT);
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_answers_a_documented_status() {
    let app = spawn_app().await;
    app.create_task("t1", 10).await;
    let document: Value = serde_json::from_str(DOCUMENT).unwrap();
    let mut checked = 0;
    for (template, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let path = template
                .replace("{task_id}", "t1")
                .replace("{name}", "main.js");
            let url = app.url(&path);
            let request = match method.as_str() {
                "get" => app.client.get(&url),
                // Valid JSON that every write route refuses or accepts; never a 404 route.
                "post" => app.client.post(&url).json(&json!({})),
                other => panic!("{other} {template}: add it to this test"),
            };
            let response = request.send().await.expect("an answer");
            let status = response.status().as_u16();
            let body = if response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"))
            {
                response.json::<Value>().await.unwrap_or(Value::Null)
            } else {
                Value::Null // a stream, a page: not read
            };
            assert!(
                !(status == 404 && body["code"] == "not_found") && status != 405,
                "{method} {template} is documented but not routed ({status} {body})"
            );
            if status >= 400 && body != Value::Null {
                // The `Error` schema's required fields, strings.
                for field in document["components"]["schemas"]["Error"]["required"]
                    .as_array()
                    .unwrap()
                {
                    let field = field.as_str().unwrap();
                    assert!(
                        body[field].is_string(),
                        "{method} {template}: {status} {body} lacks {field}"
                    );
                }
            }
            let documented = &operation["responses"];
            assert!(
                documented.get(status.to_string()).is_some(),
                "{method} {template} answered {status}, which it does not document"
            );
            checked += 1;
        }
    }
    assert!(checked > 15, "only {checked} operations");
}

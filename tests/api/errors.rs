//! Every bad input of the API gets its status and a JSON error, and the server keeps
//! serving with nothing lost.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with};

struct Case {
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// A word the error message must contain (names the field, for 422s).
    mentions: &'static str,
}

fn case(
    method: Method,
    path: &'static str,
    body: &str,
    status: u16,
    mentions: &'static str,
) -> Case {
    Case {
        method,
        path,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        mentions,
    }
}

#[tokio::test]
async fn bad_inputs_get_clear_json_errors_and_lose_nothing() {
    let app = spawn_app().await;
    app.seed_live_and_ended().await;

    let progress = "/api/tasks/live/progress";
    let mut cases = vec![
        case(Method::POST, progress, "{not json", 400, "Malformed JSON"),
        case(Method::POST, progress, "[1,2]", 422, "object"),
        case(
            Method::POST,
            progress,
            r#"{"processed": "9"}"#,
            422,
            "processed",
        ),
        case(
            Method::POST,
            progress,
            r#"{"processed": -1}"#,
            422,
            "processed",
        ),
        case(
            Method::POST,
            progress,
            r#"{"processed": 1.5}"#,
            422,
            "processed",
        ),
        case(Method::POST, progress, r#"{"total": 1e300}"#, 422, "total"),
        case(
            Method::POST,
            progress,
            r#"{"processed": 18446744073709551616}"#,
            422,
            "processed",
        ),
        case(
            Method::POST,
            progress,
            r#"{"processed": 11}"#,
            422,
            "processed",
        ),
        case(Method::POST, progress, r#"{"total": 2}"#, 422, "total"),
        case(
            Method::POST,
            progress,
            r#"{"progress": 101}"#,
            422,
            "progress",
        ),
        case(
            Method::POST,
            progress,
            r#"{"current_file": 7}"#,
            422,
            "current_file",
        ),
        case(
            Method::POST,
            progress,
            r#"{"detail": "text"}"#,
            422,
            "detail",
        ),
        case(
            Method::POST,
            progress,
            r#"{"procesed": 1}"#,
            422,
            "procesed",
        ),
        case(Method::POST, "/api/tasks/live/fail", "{}", 422, "error"),
        case(
            Method::POST,
            "/api/tasks/live/fail",
            r#"{"error": 5}"#,
            422,
            "error",
        ),
        case(
            Method::POST,
            "/api/tasks/nope/progress",
            r#"{"processed": 1}"#,
            404,
            "Task not found",
        ),
        case(
            Method::POST,
            "/api/tasks/bad.id/progress",
            r#"{"processed": 1}"#,
            400,
            "Invalid task id",
        ),
        case(
            Method::POST,
            "/api/tasks/ended/progress",
            r#"{"processed": 1}"#,
            409,
            "Task already completed",
        ),
        case(
            Method::POST,
            "/api/tasks/ended/cancel",
            "",
            409,
            "Task already completed",
        ),
        case(
            Method::POST,
            "/api/tasks",
            r#"{"id": "live"}"#,
            409,
            "exists",
        ),
        case(
            Method::POST,
            "/api/tasks",
            r#"{"id": "../etc"}"#,
            400,
            "Invalid task id",
        ),
        case(Method::POST, "/api/tasks", r#"{"id": 12}"#, 422, "id"),
        case(Method::POST, "/api/tasks", r#"{"total": -5}"#, 422, "total"),
        case(Method::GET, "/api/tasks?status=weird", "", 400, "status"),
        case(Method::GET, "/api/tasks?limit=x", "", 400, "limit"),
        case(Method::DELETE, "/api/tasks/live", "", 405, "not allowed"),
        case(Method::GET, "/no/such/route", "", 404, "Not found"),
    ];
    let detail = format!(r#"{{"detail": {{"x": "{}"}}}}"#, "y".repeat(5000));
    cases.push(Case {
        body: detail.into_bytes(),
        ..case(Method::POST, progress, "", 422, "detail")
    });
    let huge = format!(r#"{{"message": "{}"}}"#, "z".repeat(70 * 1024));
    cases.push(Case {
        body: huge.into_bytes(),
        ..case(Method::POST, progress, "", 413, "larger")
    });
    for content_type in [Some("text/plain"), None] {
        cases.push(Case {
            content_type,
            ..case(
                Method::POST,
                progress,
                r#"{"processed": 1}"#,
                415,
                "application/json",
            )
        });
    }
    cases.push(Case {
        body: b"{\"current_file\": \"\xff\xfe\"}".to_vec(),
        ..case(Method::POST, progress, "", 400, "Malformed JSON")
    });

    for case in cases {
        let mut request = app.client.request(case.method.clone(), app.url(case.path));
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.body(case.body.clone()).send().await.unwrap();
        let label = format!(
            "{} {} {}",
            case.method,
            case.path,
            String::from_utf8_lossy(&case.body[..case.body.len().min(60)])
        );
        assert_eq!(response.status().as_u16(), case.status, "{label}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{label}"
        );
        let body: Value = response.json().await.unwrap();
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{label}: no error"));
        assert!(
            message
                .to_lowercase()
                .contains(&case.mentions.to_lowercase()),
            "{label}: {message:?} should mention {:?}",
            case.mentions
        );
    }

    // Nothing was lost or changed by any of it.
    app.assert_seeded_tasks_untouched().await;
}

#[tokio::test]
async fn producer_bodies_may_be_empty_when_every_field_is_optional() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["task_id"].as_str().unwrap();
    assert!(uuid_like(id), "server ids are UUID v4: {id}");
    assert_eq!(created["status_url"], format!("/api/index-progress/{id}"));
    assert_eq!(
        created["events_url"],
        format!("/api/index-progress/{id}/events")
    );
    assert_eq!(created["ws_url"], format!("/api/index-progress/{id}/ws"));
    let response = app
        .client
        .post(app.url(&format!("/api/tasks/{id}/complete")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "completed"
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.as_bytes()[14] == b'4' && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn listings_are_newest_first_and_filter_by_status() {
    let app = spawn_app().await;
    for id in ["first", "second", "third"] {
        app.create_task(id, 5).await;
    }
    app.complete("second", json!(null)).await;
    let all: Value = app.get("/api/tasks").await.json().await.unwrap();
    let ids: Vec<&str> = all["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    let done: Value = app
        .get("/api/tasks?status=completed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(done["tasks"][0]["task_id"], "second");
    let one: Value = app.get("/api/tasks?limit=1").await.json().await.unwrap();
    assert_eq!(one["tasks"].as_array().unwrap().len(), 1);
    let full: Value = app.get("/api/tasks/third").await.json().await.unwrap();
    for key in [
        "name",
        "created_at",
        "updated_at",
        "error",
        "eta_seconds",
        "rate_per_second",
    ] {
        assert!(full.get(key).is_some(), "full snapshots carry {key}");
    }
}

#[tokio::test]
async fn writes_need_the_token_when_one_is_configured() {
    let app = spawn_app_with(|c| c.api_token = Some("s3cret".to_string())).await;
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .json(&json!({"id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .bearer_auth("wrong")
        .json(&json!({"id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .client
        .post(app.url("/api/tasks"))
        .bearer_auth("s3cret")
        .json(&json!({"id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // Reads stay open.
    assert_eq!(app.get("/api/index-progress/t").await.status(), 200);
}

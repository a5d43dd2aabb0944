//! The original polling contract, key by key, plus ETag/304 and the long poll.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, task_id, wait_until, within};

#[tokio::test]
async fn polling_answers_exactly_as_the_original_endpoint() {
    let app = spawn_app().await;
    app.create_task("task-123", 20).await;
    let response = app
        .progress(
            "task-123",
            json!({"processed": 9, "current_file": "document.pdf"}),
        )
        .await;
    assert_eq!(response.status(), 200);

    let response = app.get("/api/index-progress/task-123").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "processing");
    assert_eq!(body["progress"], 45);
    assert_eq!(body["current_file"], "document.pdf");
    assert_eq!(body["processed"], 9);
    assert_eq!(body["total"], 20);
    assert!(body.get("results").is_none(), "no results while running");
    assert_eq!(body["task_id"], "task-123");
    assert_eq!(body["seq"], 2);
}

#[tokio::test]
async fn unknown_fields_default_like_the_original() {
    let app = spawn_app().await;
    app.create_task("fresh", 0).await;
    let body: Value = app
        .get("/api/index-progress/fresh")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(body["progress"], 0);
    assert_eq!(body["current_file"], "");
    assert_eq!(body["processed"], 0);
    assert_eq!(body["total"], 0);
}

#[tokio::test]
async fn results_only_for_a_completed_task_with_results() {
    let app = spawn_app().await;
    app.create_task("empty", 1).await;
    app.complete("empty", json!({})).await;
    let body: Value = app
        .get("/api/index-progress/empty")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "completed");
    assert!(body.get("results").is_none());

    app.create_task("full", 1).await;
    app.complete("full", json!({"indexed": 1})).await;
    let body: Value = app
        .get("/api/index-progress/full")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["results"], json!({"indexed": 1}));
    assert_eq!(body["progress"], 100);

    app.create_task("failed", 1).await;
    let response = app
        .post("/api/tasks/failed/fail", json!({"error": "disk full"}))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = app
        .get("/api/index-progress/failed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["status"].clone(), body["error"].clone()),
        (json!("failed"), json!("disk full"))
    );
    assert!(body.get("results").is_none());
}

#[tokio::test]
async fn unknown_and_invalid_ids() {
    let app = spawn_app().await;
    let response = app.get("/api/index-progress/no-such-task").await;
    assert_eq!(response.status(), 404);
    // The contract's body, with its machine-readable code beside it.
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"Task not found","code":"task_not_found"}"#
    );

    let long = "a".repeat(65);
    for bad in [
        "-leading-dash",
        "has.dot",
        "a%2Fb",
        "sp%20ace",
        long.as_str(),
        "%C3%A9",
        "a%00b",
    ] {
        let response = app.get(&format!("/api/index-progress/{bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"error":"Invalid task id","code":"invalid_task_id"}"#
        );
    }
}

#[tokio::test]
async fn etag_and_if_none_match() {
    let app = spawn_app().await;
    app.create_task("etag", 10).await;
    let response = app.get("/api/index-progress/etag").await;
    assert_eq!(response.headers()["etag"], "\"1\"");
    let if_none_match_1 = || {
        app.client
            .get(app.url("/api/index-progress/etag"))
            .header("If-None-Match", "\"1\"")
            .send()
    };
    let not_modified = if_none_match_1().await.unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"], "\"1\"");
    assert!(not_modified.text().await.unwrap().is_empty());

    app.progress("etag", json!({"processed": 1})).await;
    let changed = if_none_match_1().await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.headers()["etag"], "\"2\"");
}

#[tokio::test]
async fn long_poll_answers_on_the_next_change() {
    let app = spawn_app().await;
    app.create_task("lp", 10).await;
    let poll = {
        let (client, url) = (
            app.client.clone(),
            app.url("/api/index-progress/lp?since=1&wait=25"),
        );
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    // Publish only once the poll is waiting on the task.
    wait_until(|| app.hub.listeners(&task_id("lp")) == 1).await;
    assert!(!poll.is_finished());
    app.progress("lp", json!({"processed": 4})).await;
    let response = within(poll).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["seq"], 2);
    assert_eq!(body["processed"], 4);
}

#[tokio::test]
async fn long_poll_returns_the_current_state_when_the_wait_runs_out() {
    let app = spawn_app().await;
    app.create_task("idle", 10).await;
    let response = within(app.get("/api/index-progress/idle?since=1&wait=0.2")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["seq"], 1);
    // Already newer than `since`: no waiting at all.
    let response = within(app.get("/api/index-progress/idle?since=0&wait=30")).await;
    assert_eq!(response.json::<Value>().await.unwrap()["seq"], 1);
    // Bad parameters are a clear 400.
    for bad in ["since=x&wait=1", "since=1&wait=-1", "since=-2&wait=1"] {
        let response = app.get(&format!("/api/index-progress/idle?{bad}")).await;
        assert_eq!(response.status(), 400, "{bad}");
        assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    }
}

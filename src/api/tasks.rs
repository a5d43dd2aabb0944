//! The producer API (`POST /api/tasks`, `/progress`, `/complete`, `/fail`, `/cancel`) and
//! the task listings (`GET /api/tasks`, `GET /api/tasks/{id}`).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Lister, Producer};
use super::error::{json_response, ApiError};
use super::extract::{ApiQuery, JsonBody, TaskIdPath};
use super::read_token::ReadableTask;
use super::{poll, AppState};
use crate::hub::{NewTask, Outcome, ProgressUpdate, Status, TaskId};

/// Longest `current_file`, `message`, `name` or `error` a producer may send.
const MAX_TEXT_BYTES: usize = 4096;
/// Largest `detail` object, as JSON.
const MAX_DETAIL_BYTES: usize = 4096;
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;

/// The links every route that starts a task answers with.
pub fn task_links(id: &TaskId) -> Value {
    let status_url = format!("/api/index-progress/{id}");
    json!({
        "task_id": id.as_str(),
        "events_url": format!("{status_url}/events"),
        "ws_url": format!("{status_url}/ws"),
        "status_url": status_url,
    })
}

/// A `201`/`202` answer for a task that was just started, with its `Location`.
pub fn started(status: StatusCode, id: &TaskId) -> Response {
    answer_started(status, id, task_links(id))
}

fn answer_started(status: StatusCode, id: &TaskId, links: Value) -> Response {
    let mut response = json_response(status, Bytes::from(links.to_string()));
    if let Ok(location) = HeaderValue::from_str(&format!("/api/tasks/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub async fn create(
    producer: Producer,
    State(state): State<AppState>,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let id = match body.any("id") {
        None => None,
        Some(Value::String(s)) => Some(TaskId::parse(&s).map_err(|_| ApiError::InvalidTaskId)?),
        Some(_) => return Err(ApiError::Unprocessable("id must be a string".to_string())),
    };
    let name = body.string("name", MAX_TEXT_BYTES)?;
    let total = body.uint("total")?.unwrap_or(0);
    body.finish()?;
    let new = NewTask {
        id,
        name,
        total,
        job: None,
    };
    let event = create_task(&state, &producer.label, new).await?;
    let id = event.task_id();
    // Acknowledged only once stored: a created task survives a crash right after.
    state.hub.confirm(id).await?;
    tracing::debug!(task_id = %id, producer = %producer.label, "task created");
    Ok(started_for(&state, StatusCode::CREATED, id))
}

/// Creates a task through the limits: in this process, or through Redis when tasks are
/// shared with other nodes.
pub async fn create_task(
    state: &AppState,
    producer: &std::sync::Arc<str>,
    new: NewTask,
) -> Result<crate::hub::Event, ApiError> {
    if state.hub.is_clustered() {
        return state
            .limits
            .create_task_clustered(&state.hub, producer, state.hub.create_clustered(new))
            .await;
    }
    state
        .limits
        .create_task(&state.hub, producer, || state.hub.create(new))
}

/// [`started`], plus the `read_token` its clients need to follow the task when reads are
/// protected (`--protect-reads`).
pub fn started_for(state: &AppState, status: StatusCode, id: &TaskId) -> Response {
    let Some(key) = &state.security.read_key else {
        return started(status, id);
    };
    let mut links = task_links(id);
    links["read_token"] = Value::String(key.token_for(id));
    answer_started(status, id, links)
}

pub async fn progress(
    _: Producer,
    State(state): State<AppState>,
    TaskIdPath(id): TaskIdPath,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let update = ProgressUpdate {
        processed: body.uint("processed")?,
        total: body.uint("total")?,
        current_file: body.string("current_file", MAX_TEXT_BYTES)?,
        progress: body.percent("progress")?,
        message: body.string("message", MAX_TEXT_BYTES)?,
        detail: body.object("detail", MAX_DETAIL_BYTES)?,
    };
    body.finish()?;
    let snapshot = state.hub.report(&id, update).await?;
    Ok(json_response(StatusCode::OK, snapshot))
}

pub async fn complete(
    _: Producer,
    State(state): State<AppState>,
    TaskIdPath(id): TaskIdPath,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let results = body.any("results");
    body.finish()?;
    finish(&state, &id, Outcome::Completed { results }).await
}

pub async fn fail(
    _: Producer,
    State(state): State<AppState>,
    TaskIdPath(id): TaskIdPath,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let error = body
        .string("error", MAX_TEXT_BYTES)?
        .ok_or_else(|| ApiError::Unprocessable("error is required".to_string()))?;
    body.finish()?;
    finish(&state, &id, Outcome::Failed { error }).await
}

pub async fn cancel(
    _: Producer,
    State(state): State<AppState>,
    TaskIdPath(id): TaskIdPath,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    body.finish()?;
    finish(&state, &id, Outcome::Cancelled).await
}

async fn finish(state: &AppState, id: &TaskId, outcome: Outcome) -> Result<Response, ApiError> {
    state.hub.admit_write()?;
    let event = state.hub.finish(id, outcome).await?;
    // A built-in job running this task would notice at its next report; this stops it at
    // once, also in the middle of a long extraction.
    state.indexer.cancel(id);
    tracing::debug!(task_id = %id, status = event.status().as_str(), "task finished");
    Ok(json_response(StatusCode::OK, event.json().clone()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    _: Lister,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::BadRequest(
                "status must be one of pending, processing, completed, failed, cancelled"
                    .to_string(),
            )
        })?),
    };
    let limit = query
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .min(MAX_LIST_LIMIT);
    let events = state.hub.list(status, limit);
    // The snapshots are already JSON: splice them instead of decoding and re-encoding.
    let mut body =
        BytesMut::with_capacity(16 + events.iter().map(|e| e.json().len() + 1).sum::<usize>());
    body.put_slice(b"{\"tasks\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(event.json());
    }
    body.put_slice(b"]}");
    Ok(json_response(StatusCode::OK, body.freeze()))
}

pub async fn get(
    State(state): State<AppState>,
    ReadableTask(id): ReadableTask,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let event = state.hub.get(&id).ok_or(ApiError::TaskNotFound)?;
    Ok(poll::respond(&event, &headers).into_response())
}

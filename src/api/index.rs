//! The built-in job's routes: `POST /api/index-folder` starts indexing a folder inside
//! the index roots, `GET /api/search` queries what was indexed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;

use super::auth::{Lister, Producer};
use super::error::{json_response, ApiError};
use super::extract::{ApiQuery, JsonBody};
use super::tasks::started_for;
use super::AppState;
use crate::indexer::index::SearchError;
use crate::indexer::roots::FolderError;
use crate::indexer::{Indexer, SearchFailure};

/// Longest accepted `folder`, in bytes (Linux's PATH_MAX).
const MAX_FOLDER_BYTES: usize = 4096;
const DEFAULT_SEARCH_LIMIT: usize = 20;
const MAX_SEARCH_LIMIT: usize = 100;
/// Longest accepted query, in bytes: enough for any query a person types.
const MAX_QUERY_BYTES: usize = 1024;

pub async fn index_folder(
    producer: Producer,
    State(state): State<AppState>,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    let requested = body
        .string("folder", MAX_FOLDER_BYTES)?
        .ok_or_else(|| ApiError::Unprocessable("folder is required".to_string()))?;
    body.finish()?;
    let indexer = state.indexer.clone();
    // Resolving touches the filesystem: keep it off the async workers.
    let resolved = tokio::task::spawn_blocking(move || indexer.roots().resolve_folder(&requested))
        .await
        .map_err(|e| ApiError::Internal(format!("folder resolution panicked: {e}")))?;
    let folder = resolved.map_err(|error| match error {
        FolderError::Outside => ApiError::Forbidden(error.to_string()),
        FolderError::Missing => ApiError::NotFound(error.to_string()),
        FolderError::NotAFolder | FolderError::Empty => ApiError::Unprocessable(error.to_string()),
    })?;
    // The job's task counts against the same limits as any producer's.
    let new = Indexer::task_for(&folder);
    let event = super::tasks::create_task(&state, &producer.label, new).await?;
    let id = event.task_id().clone();
    state.hub.confirm(&id).await?;
    state
        .indexer
        .spawn(&state.hub, id.clone(), folder, state.shutdown.token());
    tracing::info!(task_id = %id, producer = %producer.label, "indexing job started");
    Ok(started_for(&state, StatusCode::ACCEPTED, &id))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    /// Signed, so that a negative limit is clamped like `0` rather than refused as "not
    /// a number".
    limit: Option<i64>,
}

/// With `--protect-reads` searching needs an API token, like the listings: hits show
/// what the files say.
pub async fn search(
    _: Lister,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Response, ApiError> {
    let q = query.q.unwrap_or_default();
    if q.trim().is_empty() {
        return Err(ApiError::BadRequest("q is required".to_string()));
    }
    if q.len() > MAX_QUERY_BYTES {
        return Err(ApiError::BadRequest(format!(
            "q must be at most {MAX_QUERY_BYTES} bytes"
        )));
    }
    // Like the task listing, an out-of-range limit is brought into range, not refused.
    let limit = query.limit.map_or(DEFAULT_SEARCH_LIMIT, |limit| {
        limit.clamp(1, MAX_SEARCH_LIMIT as i64) as usize
    });
    let results = state
        .indexer
        .search(q, limit)
        .await
        .map_err(|error| match error {
            SearchFailure::Search(SearchError::BadQuery(parse)) => {
                ApiError::BadRequest(format!("Invalid query: {parse}"))
            }
            SearchFailure::Search(SearchError::Unsupported(why)) => {
                ApiError::BadRequest(format!("Unsupported query: {why}"))
            }
            other => ApiError::Internal(other.to_string()),
        })?;
    let body = serde_json::to_vec(&results).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}

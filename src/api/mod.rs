//! The HTTP surface. Every route is listed in [`router`]; each surface lives in its own
//! file and only talks to the hub.

mod auth;
mod error;
mod extract;
mod health;
mod index;
mod page;
mod poll;
mod sse;
mod tasks;
mod ws;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ApiError;

use crate::config::Config;
use crate::hub::Hub;
use crate::indexer::Indexer;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub config: Arc<Config>,
    /// The built-in indexing job and search.
    pub indexer: Indexer,
    /// Cancelled when the server starts shutting down; every stream watches it.
    pub shutdown: CancellationToken,
    /// Upgraded WebSockets live outside their HTTP connection; shutdown waits for them here.
    pub tracker: TaskTracker,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        // Following a task: poll, long poll, SSE, WebSocket.
        .route("/api/index-progress/{task_id}", get(poll::poll))
        .route(
            "/api/index-progress/{task_id}/events",
            get(sse::task_events),
        )
        .route("/api/index-progress/{task_id}/ws", get(ws::task_ws))
        .route("/api/events", get(sse::all_events))
        // Producers and listings.
        .route("/api/tasks", get(tasks::list).post(tasks::create))
        .route("/api/tasks/{task_id}", get(tasks::get))
        .route("/api/tasks/{task_id}/progress", post(tasks::progress))
        .route("/api/tasks/{task_id}/complete", post(tasks::complete))
        .route("/api/tasks/{task_id}/fail", post(tasks::fail))
        .route("/api/tasks/{task_id}/cancel", post(tasks::cancel))
        // The built-in indexing job.
        .route("/api/index-folder", post(index::index_folder))
        .route("/api/search", get(index::search))
        // The bundled page and its assets.
        .route("/", get(page::index))
        .route("/static/{name}", get(page::asset))
        // Operations.
        .route("/healthz", get(health::healthz))
        .fallback(|| async { ApiError::NotFound("Not found".to_string()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

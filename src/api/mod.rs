//! The HTTP surface. Every route is listed in [`router`]; each surface lives in its own
//! file and only talks to the hub.

mod auth;
mod cors;
pub(crate) mod error;
mod extract;
mod guard;
mod health;
mod index;
pub(crate) mod limits;
mod openapi;
mod page;
mod poll;
#[cfg(test)]
mod proptests;
mod read_token;
pub(crate) mod sse;
mod tasks;
pub(crate) mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower::util::option_layer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::Instrument;

pub use auth::{Security, SecurityError};
pub use error::ApiError;
pub use limits::Limits;
pub use poll::QuickPolls;

use crate::config::Config;
use crate::hub::Hub;
use crate::indexer::Indexer;
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;

/// What every handler can reach: one shared [`Shared`] behind an `Arc`.
///
/// axum clones the state for every request (once to route it, once per `State`
/// extractor). Cloning the fields one by one was a visible share of the server's CPU under
/// a polling load (docs/design/quick-lane.md): two `CancellationToken` clones and drops each take
/// the token tree's mutex, and every other field is an atomic increment. One `Arc` is one
/// atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub hub: Hub,
    pub config: Arc<Config>,
    /// The built-in indexing job and search.
    pub indexer: Indexer,
    /// Triggered when the server starts shutting down; every stream watches it.
    pub shutdown: Shutdown,
    /// Cancelled as soon as a shutdown signal arrives, before `shutdown` (which waits for
    /// the drain period): `/readyz` turns 503 while streams are still served.
    pub draining: CancellationToken,
    /// API tokens, read-token key, CORS origins.
    pub security: Arc<Security>,
    /// Subscriber and task limits.
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
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
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/openapi.json", get(openapi::document))
        // A write must be one no foreign page could send (see guard.rs).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::writes,
        ))
        .fallback(|| async { ApiError::NotFound("Not found".to_string()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // A body that stalls is answered 408 (see extract.rs), not waited for forever.
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            state.config.idle_timeout_secs,
        )))
        // Only loopback names on a loopback server (DNS rebinding, see guard.rs).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::host,
        ))
        .layer(option_layer(state.security.origins.layer()))
        // Outermost: counts and traces every answer by route and status (the quick lane
        // does its own).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe_request,
        ))
        .with_state(state)
}

/// Counts a request in `progress_hub_http_requests_total` by its route (as written in
/// [`router`]) and the status of its answer, and traces it in its span (see
/// [`crate::telemetry`]), which a handed-off stream's writer carries on.
async fn observe_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or(crate::telemetry::UNMATCHED_ROUTE.to_string(), |path| {
            path.as_str().to_string()
        });
    let span = crate::telemetry::request_span!(
        request.method(),
        route,
        crate::telemetry::task_id_in(&route, request.uri().path())
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    state.metrics.http_requests(&route, status).increment(1);
    crate::telemetry::answered(&span, status, "answered");
    response
}

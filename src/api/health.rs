//! Operations: `GET /healthz` (the process answers), `GET /readyz` (it should get
//! traffic: the store takes writes and shutdown has not begun) and `GET /metrics`
//! (Prometheus text format, see [`crate::telemetry`]).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use super::error::{json_response, ApiError};
use super::AppState;

/// What a load balancer is told to wait before asking an unready server again.
const NOT_READY_RETRY_AFTER_SECS: u32 = 5;

pub async fn healthz() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let store = state.hub.store();
    let not_ready = |message: &str| ApiError::Unavailable {
        message: message.to_string(),
        retry_after_secs: NOT_READY_RETRY_AFTER_SECS,
    };
    if state.draining.is_cancelled() || state.shutdown.is_triggered() {
        return Err(not_ready("Shutting down"));
    }
    // The same test that producers' writes pass: not ready exactly when they are refused.
    if state.hub.admit_write().is_err() {
        return Err(not_ready("Task store unavailable"));
    }
    let body = json!({"status": "ready", "store": store.name()}).to_string();
    Ok(json_response(StatusCode::OK, Bytes::from(body)))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.hub);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

//! `GET /healthz`: the process is up and answering.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;

use super::error::json_response;

pub async fn healthz() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
}

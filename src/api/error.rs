//! The one error type of the HTTP layer. Every error a client sees is
//! `{"error": "...", "code": "..."}` with the status named in each variant's doc comment
//! and the code of [`ApiError::code`]; causes of 5xx answers are logged, not sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::hub::HubError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the id does not match `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`.
    #[error("Invalid task id")]
    InvalidTaskId,
    /// 400: a body that is not JSON, or a query parameter that does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// 401: a write without the configured bearer token.
    #[error("Missing or invalid API token")]
    Unauthorized,
    /// 403: a forbidden origin, or a path outside the allowed roots.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the original polling endpoint's message, word for word.
    #[error("Task not found")]
    TaskNotFound,
    /// 404: any other missing resource or route.
    #[error("{0}")]
    NotFound(String),
    /// 405
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 408: the request body stalled for longer than the idle timeout.
    #[error("Request body timed out")]
    RequestTimeout,
    /// 409: the task exists already, or has already finished.
    #[error("{0}")]
    Conflict(String),
    /// 413
    #[error("Request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// 422: well-formed JSON with wrong types or values; the message names the field.
    #[error("{0}")]
    Unprocessable(String),
    /// 426: a WebSocket route asked without an upgrade.
    #[error("This route needs a WebSocket upgrade")]
    UpgradeRequired,
    /// 431: more request headers than the server reads.
    #[error("Too many request headers")]
    TooManyHeaders,
    /// 429 with `Retry-After`: a task limit (in total or per producer token) is reached.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u32,
    },
    /// 503 with `Retry-After`: a limit is reached or the server is stopping.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u32,
    },
    /// 500: the cause is logged; the client sees a generic message.
    #[error("Internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidTaskId | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TaskNotFound | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `code` of the error body: stable, one per kind of error,
    /// whatever the message says.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidTaskId => "invalid_task_id",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TaskNotFound => "task_not_found",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unprocessable(_) => "unprocessable",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::TooManyHeaders => "too_many_headers",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The body every error is sent with, through the router or not:
    /// `{"error": "<message>", "code": "<code>"}`.
    pub fn body(&self) -> Bytes {
        // `error` first, as the contract's bodies read; codes need no escaping.
        let message = serde_json::Value::String(self.to_string());
        Bytes::from(format!(r#"{{"error":{message},"code":"{}"}}"#, self.code()))
    }
}

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        match error {
            HubError::NotFound => ApiError::TaskNotFound,
            HubError::AlreadyExists | HubError::Finished(_) => {
                ApiError::Conflict(error.to_string())
            }
            HubError::Rejected(rejected) => ApiError::Unprocessable(rejected.to_string()),
            HubError::Store(store) => {
                tracing::error!(error = %store, "store failed");
                ApiError::Unavailable {
                    message: "Task store unavailable".to_string(),
                    retry_after_secs: 5,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "internal error");
        }
        let mut response = json_response(self.status(), self.body());
        let headers = response.headers_mut();
        match &self {
            ApiError::Unavailable {
                retry_after_secs, ..
            }
            | ApiError::TooManyRequests {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // What to upgrade to (RFC 9110 §15.5.22), and the one WebSocket version spoken.
            ApiError::UpgradeRequired => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        response
    }
}

/// A JSON response from bytes that are already encoded.
pub fn json_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    /// One of each kind of error.
    fn every_kind() -> Vec<ApiError> {
        let text = || "x".to_string();
        vec![
            ApiError::InvalidTaskId,
            ApiError::BadRequest(text()),
            ApiError::Unauthorized,
            ApiError::Forbidden(text()),
            ApiError::TaskNotFound,
            ApiError::NotFound(text()),
            ApiError::MethodNotAllowed,
            ApiError::RequestTimeout,
            ApiError::Conflict(text()),
            ApiError::PayloadTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::Unprocessable(text()),
            ApiError::UpgradeRequired,
            ApiError::TooManyHeaders,
            ApiError::TooManyRequests {
                message: text(),
                retry_after_secs: 1,
            },
            ApiError::Unavailable {
                message: text(),
                retry_after_secs: 1,
            },
            ApiError::Internal("the cause".to_string()),
        ]
    }

    /// The codes are the contract's: distinct, and each one listed in docs/API.md and in
    /// the `Error` schema of docs/openapi.json.
    #[test]
    fn every_code_is_distinct_and_documented() {
        let api = include_str!("../../docs/API.md");
        let openapi: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
        let schema = &openapi["components"]["schemas"]["Error"]["properties"]["code"]["enum"];
        let mut documented: Vec<&str> = schema
            .as_array()
            .expect("an enum of codes")
            .iter()
            .map(|code| code.as_str().unwrap())
            .collect();
        let mut codes: Vec<&str> = every_kind().iter().map(ApiError::code).collect();
        for code in &codes {
            assert!(
                api.contains(&format!("`{code}`")),
                "docs/API.md lacks {code}"
            );
        }
        codes.sort_unstable();
        codes.dedup();
        documented.sort_unstable();
        assert_eq!(codes.len(), every_kind().len(), "codes must be distinct");
        assert_eq!(codes, documented, "docs/openapi.json's Error codes");
    }

    #[test]
    fn the_body_carries_the_message_and_the_code() {
        for error in every_kind() {
            let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
            let expected = serde_json::json!({"error": error.to_string(), "code": error.code()});
            assert_eq!(body, expected);
        }
        // A 5xx cause is logged, not sent.
        let internal = ApiError::Internal("the cause".to_string()).body();
        assert!(!String::from_utf8_lossy(&internal).contains("the cause"));
    }
}

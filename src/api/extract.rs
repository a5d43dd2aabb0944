//! Extractors whose rejections speak the API's error format: a task id from the path,
//! query strings, and JSON bodies read field by field so that every 422 names its field.

use axum::extract::{FromRequest, FromRequestParts, Query, RawPathParams, Request};
use axum::http::{header, request::Parts};
use http_body_util::LengthLimitError;
use serde::de::value::MapDeserializer;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tower_http::timeout::TimeoutError;

use super::error::ApiError;
use super::AppState;
use crate::hub::TaskId;
use crate::transport::HyperOnly;

/// `{task_id}` from the path, validated before any lookup.
pub struct TaskIdPath(pub TaskId);

impl<S: Send + Sync> FromRequestParts<S> for TaskIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // The raw (percent-decoded) parameter, without serde and without a `String` on the
        // way: this runs on every poll.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidTaskId)?;
        let mut params = params.iter();
        let (Some((_, raw)), None) = (params.next(), params.next()) else {
            return Err(ApiError::InvalidTaskId);
        };
        TaskId::parse(raw)
            .map(TaskIdPath)
            .map_err(|_| ApiError::InvalidTaskId)
    }
}

/// Whether this request may take the fast paths: they are on (`--fast-paths`) and its
/// connection is plaintext (an HTTPS connection is served by hyper alone, [`HyperOnly`]).
pub struct FastPaths(pub bool);

impl FromRequestParts<AppState> for FastPaths {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(FastPaths(
            state.config.fast_paths() && parts.extensions.get::<HyperOnly>().is_none(),
        ))
    }
}

/// A query string; a parameter that does not parse is a `400` naming it.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Most requests (every plain poll) carry no query: read an empty one directly. If
        // that fails (a required parameter), the full path below words the error.
        if parts.uri.query().is_none() {
            let empty = MapDeserializer::<_, serde::de::value::Error>::new(std::iter::empty::<(
                &str,
                &str,
            )>());
            if let Ok(query) = T::deserialize(empty) {
                return Ok(ApiQuery(query));
            }
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(format!("Invalid query string: {}", e.body_text())))
    }
}

/// A JSON object body. An empty body reads as `{}` (every producer body whose fields are
/// all optional may be absent); anything else must be `application/json`.
pub struct JsonBody(pub Fields);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.max_body_bytes;
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|e| {
                if caused_by::<LengthLimitError>(&e) {
                    ApiError::PayloadTooLarge(limit)
                } else if caused_by::<TimeoutError>(&e) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::BadRequest("Could not read the request body".to_string())
                }
            })?;
        if body.is_empty() {
            return Ok(JsonBody(Fields(Map::new())));
        }
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("Malformed JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(JsonBody(Fields(map))),
            _ => Err(ApiError::Unprocessable(
                "Request body must be a JSON object".to_string(),
            )),
        }
    }
}

pub fn is_json_content_type(value: &str) -> bool {
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || mime
            .get(mime.len().saturating_sub(5)..)
            .is_some_and(|tail| mime.len() > 5 && tail.eq_ignore_ascii_case("+json"))
}

fn caused_by<E: std::error::Error + 'static>(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The fields of a JSON object body, taken one by one with typed checks. Whatever is left
/// when [`Fields::finish`] runs is an unknown field, reported rather than ignored so that
/// a typo in a producer does not pass silently.
pub struct Fields(Map<String, Value>);

/// The largest integer a browser reads exactly.
pub(crate) const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl Fields {
    #[cfg(test)]
    pub(crate) fn from_map(map: Map<String, Value>) -> Fields {
        Fields(map)
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.0.remove(name).filter(|v| !v.is_null())
    }

    pub fn uint(&mut self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        match value.as_u64() {
            Some(n) if n <= MAX_SAFE_INTEGER => Ok(Some(n)),
            _ => Err(ApiError::Unprocessable(format!(
                "{name} must be a non-negative integer no larger than {MAX_SAFE_INTEGER}"
            ))),
        }
    }

    pub fn percent(&mut self, name: &str) -> Result<Option<u8>, ApiError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        match value.as_u64() {
            Some(n) if n <= 100 => Ok(Some(n as u8)),
            _ => Err(ApiError::Unprocessable(format!(
                "{name} must be an integer from 0 to 100"
            ))),
        }
    }

    pub fn string(&mut self, name: &str, max_bytes: usize) -> Result<Option<String>, ApiError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        match value {
            Value::String(s) if s.len() <= max_bytes => Ok(Some(s)),
            Value::String(_) => Err(ApiError::Unprocessable(format!(
                "{name} must be at most {max_bytes} bytes"
            ))),
            _ => Err(ApiError::Unprocessable(format!("{name} must be a string"))),
        }
    }

    pub fn object(&mut self, name: &str, max_bytes: usize) -> Result<Option<Value>, ApiError> {
        let Some(value) = self.take(name) else {
            return Ok(None);
        };
        if !value.is_object() {
            return Err(ApiError::Unprocessable(format!("{name} must be an object")));
        }
        if value.to_string().len() > max_bytes {
            return Err(ApiError::Unprocessable(format!(
                "{name} must be at most {max_bytes} bytes of JSON"
            )));
        }
        Ok(Some(value))
    }

    /// Any JSON value, `null` reading as absent.
    pub fn any(&mut self, name: &str) -> Option<Value> {
        self.take(name)
    }

    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::Unprocessable(format!("unknown field {name:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        match v {
            Value::Object(m) => Fields(m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn typed_fields_name_themselves_in_errors() {
        let mut f = fields(json!({"processed": -1, "progress": 101, "current_file": 3}));
        assert!(f
            .uint("processed")
            .unwrap_err()
            .to_string()
            .contains("processed"));
        assert!(f
            .percent("progress")
            .unwrap_err()
            .to_string()
            .contains("progress"));
        assert!(f
            .string("current_file", 10)
            .unwrap_err()
            .to_string()
            .contains("current_file"));
        assert!(f.finish().is_ok());
    }

    #[test]
    fn unknown_fields_are_reported() {
        let mut f = fields(json!({"total": 3, "totl": 4}));
        assert_eq!(f.uint("total").unwrap(), Some(3));
        assert!(f.finish().unwrap_err().to_string().contains("totl"));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("json"));
    }
}

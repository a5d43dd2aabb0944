//! `GET /api/index-progress/{task_id}`: the original polling contract, with `ETag`/`304`
//! and a long poll (`?since=&wait=`) for clients that cannot stream.

use std::io::Write;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{json_response, ApiError};
use super::extract::ApiQuery;
use super::read_token::ReadableTask;
use super::AppState;
use crate::hub::{Event, TaskId};
use crate::telemetry::Transport;
use crate::transport::quick::{Answer, Quick};

/// The longest a long poll waits, whatever the client asks.
pub const MAX_WAIT_SECS: f64 = 30.0;

#[derive(Deserialize)]
pub struct PollQuery {
    /// Answer once the task's seq is greater than this.
    since: Option<u64>,
    /// Seconds to wait for that; without `since` there is nothing to wait for.
    wait: Option<f64>,
}

pub async fn poll(
    State(state): State<AppState>,
    ReadableTask(id): ReadableTask,
    ApiQuery(query): ApiQuery<PollQuery>,
    // The request itself, not a `HeaderMap` (which would clone every header): only
    // `If-None-Match` is read.
    request: Request,
) -> Result<Response, ApiError> {
    let wait = match query.wait {
        Some(w) if w.is_finite() && w >= 0.0 => w.min(MAX_WAIT_SECS),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "wait must be a non-negative number of seconds".to_string(),
            ))
        }
        None => 0.0,
    };
    let long_poll = query.since.is_some() && wait > 0.0;
    let event = match query.since {
        Some(since) if wait > 0.0 => {
            let hub = &state.hub;
            // A waiting poll holds a subscriber's place like a stream does.
            let _place = state.limits.subscribe(Transport::LongPoll, Some(&id))?;
            tokio::select! {
                event = hub.wait_for_change(&id, since, Duration::from_secs_f64(wait)) => {
                    state.metrics.frame_delivered(Transport::LongPoll);
                    event?
                }
                // A stopping server answers at once with what it has.
                _ = state.shutdown.wait() => hub.get(&id).ok_or(ApiError::TaskNotFound)?,
            }
        }
        _ => state.hub.get(&id).ok_or(ApiError::TaskNotFound)?,
    };
    // A long poll on a finished task answers its terminal snapshot, never `304`: nothing
    // will ever change, and a client told "not modified" at once would only ask again
    // (in a tight loop, if it does not pause). Seeing the end, it stops.
    if long_poll && event.is_terminal() {
        return Ok(respond(&event, &HeaderMap::new()));
    }
    Ok(respond(&event, request.headers()))
}

/// `200` with the snapshot, or `304` when the client's `If-None-Match` is current.
pub fn respond(event: &Event, headers: &HeaderMap) -> Response {
    let fresh = is_fresh(
        event.seq(),
        headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        json_response(StatusCode::OK, event.json().clone())
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!("\"{}\"", event.seq())) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// Whether any `If-None-Match` value names the snapshot with this seq (`"seq"`, weak or
/// not, or `*`).
/// Runs on every poll, so without building the tag: `"seq"` exactly as the `ETag` writes
/// it (decimal, no sign, no leading zero).
fn is_fresh<'a>(seq: u64, values: impl Iterator<Item = &'a [u8]>) -> bool {
    let names_seq = |tag: &str| {
        let Some(digits) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
            return false;
        };
        let canonical = digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical && digits.parse() == Ok(seq)
    };
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || names_seq(tag))
}

/// Plain polls (`GET /api/index-progress/{id}`, no query) answered on the quick lane
/// ([`crate::transport::quick`]) with the same status, headers and body as [`poll`]. Anything
/// that needs more than a lookup goes to the router: protected reads, cross-origin
/// requests (CORS headers), ids that are not valid as written, unknown tasks (errors),
/// hosts the router refuses ([`super::guard`]).
pub struct QuickPolls(AppState, Option<Vec<u8>>, [metrics::Counter; 2]);

/// The route the lane answers, as the router names it.
const POLL_ROUTE: &str = "/api/index-progress/{task_id}";

impl QuickPolls {
    pub fn new(state: AppState) -> QuickPolls {
        // With `--cors-origin` the router's answers carry the CORS layer's headers.
        let cors = state.security.origins.headers_without_origin();
        let counts = [200, 304].map(|status| state.metrics.http_requests(POLL_ROUTE, status));
        QuickPolls(state, cors, counts)
    }
}

impl Quick for QuickPolls {
    fn answer(&self, path: &str, headers: &[httparse::Header<'_>], out: &mut Vec<u8>) -> Answer {
        let Some(raw) = path.strip_prefix("/api/index-progress/") else {
            return Answer::Pass;
        };
        let (state, Some(cors)) = (&self.0, &self.1) else {
            return Answer::Pass;
        };
        if state.security.read_key.is_some()
            || headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("origin")
                    || (h.name.eq_ignore_ascii_case("host")
                        && !state.security.host_allowed(h.value))
            })
            || !TaskId::is_valid(raw)
        {
            return Answer::Pass;
        }
        let Some(event) = state.hub.get(raw) else {
            return Answer::Pass;
        };
        let if_none_match = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("if-none-match"))
            .map(|h| h.value);
        let fresh = is_fresh(event.seq(), if_none_match);
        let (status, content_type) = if fresh {
            ("304 Not Modified", "")
        } else {
            ("200 OK", "content-type: application/json\r\n")
        };
        let span = crate::telemetry::request_span!("GET", POLL_ROUTE, Some(raw));
        let code = if fresh { 304 } else { 200 };
        crate::telemetry::answered(&span, code, "answered by the quick lane");
        // Writing to a `Vec` cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\n{content_type}cache-control: no-store\r\netag: \"{}\"\r\n",
            event.seq()
        );
        out.extend_from_slice(cors);
        self.2[usize::from(fresh)].increment(1);
        if fresh {
            Answer::Empty
        } else {
            Answer::Body(event.json().clone())
        }
    }

    fn refused(&self, status: u16) {
        let metrics = &self.0.metrics;
        let route = crate::telemetry::UNMATCHED_ROUTE;
        metrics.http_requests(route, status).increment(1);
        // Not HTTP: no method to tell.
        let span = crate::telemetry::request_span!("-", route, None::<&str>);
        crate::telemetry::answered(&span, status, "refused by the quick lane");
    }
}

#[cfg(test)]
mod tests {
    use super::is_fresh;

    fn fresh(seq: u64, values: &[&str]) -> bool {
        is_fresh(seq, values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn if_none_match_names_the_seq_exactly() {
        assert!(fresh(3, &["\"3\""]));
        assert!(fresh(3, &["W/\"3\""]));
        assert!(fresh(3, &["\"1\", \"3\""]));
        assert!(fresh(3, &["\"9\"", " W/\"3\" "]));
        assert!(fresh(3, &["*"]));
        assert!(fresh(0, &["\"0\""]));
        assert!(fresh(u64::MAX, &[&format!("\"{}\"", u64::MAX)]));
        for other in [
            "\"4\"", "\"03\"", "\"+3\"", "3", "\"3", "\"\"", "\"3 \"", "", "W/3",
        ] {
            assert!(!fresh(3, &[other]), "{other:?}");
        }
        assert!(!fresh(3, &[]));
    }
}

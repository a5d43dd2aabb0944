//! `progress-hub watch ID`: follows one task over SSE until it ends, resuming with
//! `Last-Event-ID` after a dropped connection or a server restart, and exits with a code
//! that says how the task ended (see [`super::exit`]), so a CI step can wait on a task.
//!
//! Progress goes to stderr (a bar on a terminal, plain lines otherwise); the outcome goes
//! to stdout: the results of a completed task as JSON (`null` when it has none).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderName, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::client::{self, Server};
use super::display::Display;
use super::sse::SseParser;
use super::{exit, WatchArgs};
use crate::hub::TaskId;

/// A stream that sends nothing for this long (no event, no keep-alive) is taken as dead
/// and reopened. The server's keep-alive comes every 15 s by default.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// The first wait before reconnecting; it doubles after each failed attempt, up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How following a task ended, short of the task ending.
enum Stop {
    /// Unknown task or invalid id: exit [`exit::NOT_FOUND`].
    NotFound(String),
    /// Refused, unreachable for too long, or an answer that makes no sense: exit
    /// [`exit::UNREACHABLE`].
    CannotFollow(String),
}

/// What one connection brought.
enum Attempt {
    /// The terminal snapshot.
    Ended(Value),
    /// The stream closed or broke before the end; `delivered` says whether it brought
    /// any event (a stream that never does is a failure, not progress).
    Dropped {
        delivered: bool,
        why: String,
    },
    /// Worth another try (connection refused, 503, ...).
    Retry(String),
    Stop(Stop),
}

pub async fn run(args: WatchArgs) -> ExitCode {
    let server = match args.remote.server() {
        Ok(server) => server,
        Err(code) => return code,
    };
    if TaskId::parse(&args.id).is_err() {
        eprintln!("progress-hub: invalid task id {:?}", args.id);
        return ExitCode::from(exit::NOT_FOUND);
    }
    let display = Display::for_stderr();
    let outcome = follow(
        &server,
        &args.id,
        &display,
        Duration::from_secs(args.retry_secs),
    )
    .await;
    display.finish();
    match outcome {
        Ok(snapshot) => report_end(&args.id, &snapshot),
        Err(Stop::NotFound(why)) => {
            eprintln!("progress-hub: task {}: {why}", args.id);
            ExitCode::from(exit::NOT_FOUND)
        }
        Err(Stop::CannotFollow(why)) => {
            eprintln!("progress-hub: cannot follow task {}: {why}", args.id);
            ExitCode::from(exit::UNREACHABLE)
        }
    }
}

/// Prints the outcome and picks the exit code.
fn report_end(id: &str, snapshot: &Value) -> ExitCode {
    let status = snapshot["status"].as_str().unwrap_or("");
    match status {
        "completed" => {
            let results = snapshot.get("results").unwrap_or(&Value::Null);
            let json = if std::io::stdout().is_terminal() {
                serde_json::to_string_pretty(results)
            } else {
                serde_json::to_string(results)
            };
            println!("{}", json.unwrap_or_default());
            eprintln!("task {id} completed");
            ExitCode::from(exit::COMPLETED)
        }
        "failed" => {
            let error: String = snapshot["error"]
                .as_str()
                .unwrap_or("no error given")
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            eprintln!("task {id} failed: {error}");
            ExitCode::from(exit::FAILED)
        }
        _ => {
            eprintln!("task {id} cancelled");
            ExitCode::from(exit::CANCELLED)
        }
    }
}

/// Follows the task until its terminal snapshot, reconnecting with a bounded backoff.
/// Gives up when no connection has delivered anything for `retry_for`.
async fn follow(
    server: &Server,
    id: &str,
    display: &Display,
    retry_for: Duration,
) -> Result<Value, Stop> {
    let mut last_event_id: Option<String> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut failing_since: Option<Instant> = None;
    loop {
        let why = match attempt(server, id, &mut last_event_id, display).await {
            Attempt::Ended(snapshot) => return Ok(snapshot),
            Attempt::Stop(stop) => return Err(stop),
            Attempt::Dropped {
                delivered: true,
                why,
            } => {
                // It worked for a while: start counting (and backing off) afresh.
                failing_since = None;
                backoff = FIRST_BACKOFF;
                why
            }
            Attempt::Dropped { why, .. } | Attempt::Retry(why) => why,
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= retry_for {
            return Err(Stop::CannotFollow(why));
        }
        display.note(&format!(
            "{why}; reconnecting in {} ms",
            backoff.as_millis()
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: open the stream (resuming after `last_event_id`), show each event,
/// stop at the terminal one.
async fn attempt(
    server: &Server,
    id: &str,
    last_event_id: &mut Option<String>,
    display: &Display,
) -> Attempt {
    let mut headers: Vec<(HeaderName, String)> =
        vec![(header::ACCEPT, "text/event-stream".to_string())];
    if let Some(last) = last_event_id.as_ref() {
        headers.push((HeaderName::from_static("last-event-id"), last.clone()));
    }
    headers.extend(read_token_cookie(server, id));
    let response = match server
        .get(&format!("/api/index-progress/{id}/events"), &headers)
        .await
    {
        Ok(response) => response,
        Err(error) => return Attempt::Retry(error.to_string()),
    };
    match response.status() {
        StatusCode::OK => read_stream(response.into_body(), last_event_id, display).await,
        // The server says we already hold the terminal event (only possible after a
        // resume): ask for the final state instead.
        StatusCode::NO_CONTENT => final_snapshot(server, id).await,
        status => {
            let body = client::read_body(response).await.unwrap_or_default();
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            answer_error(status, client::error_message(status, &json))
        }
    }
}

/// Maps an error answer to what `watch` does about it.
fn answer_error(status: StatusCode, message: String) -> Attempt {
    match status {
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Attempt::Stop(Stop::NotFound(message)),
        StatusCode::TOO_MANY_REQUESTS => Attempt::Retry(message),
        status if status.is_server_error() => Attempt::Retry(message),
        _ => Attempt::Stop(Stop::CannotFollow(message)),
    }
}

/// With `--protect-reads`, a per-task read token is accepted in the cookie
/// `progress_hub_read_<id>` (docs/API.md); an API token goes in `Authorization`, which
/// [`Server`] always sends. Either way the token never goes into a URL, where logs keep it.
fn read_token_cookie(server: &Server, id: &str) -> Option<(HeaderName, String)> {
    let token = server.token()?;
    Some((header::COOKIE, format!("progress_hub_read_{id}={token}")))
}

async fn read_stream(
    mut body: Incoming,
    last_event_id: &mut Option<String>,
    display: &Display,
) -> Attempt {
    let mut parser = SseParser::new();
    let mut delivered = false;
    loop {
        let frame = match tokio::time::timeout(IDLE_LIMIT, body.frame()).await {
            Err(_) => {
                return Attempt::Dropped {
                    delivered,
                    why: format!("nothing received for {} s", IDLE_LIMIT.as_secs()),
                }
            }
            Ok(None) => {
                return Attempt::Dropped {
                    delivered,
                    why: "the server ended the stream".to_string(),
                }
            }
            Ok(Some(Err(error))) => {
                return Attempt::Dropped {
                    delivered,
                    why: format!("the stream broke: {error}"),
                }
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        for event in parser.feed(data) {
            if event.id.is_some() {
                *last_event_id = event.id.clone();
            }
            let Ok(snapshot) = serde_json::from_str::<Value>(&event.data) else {
                display.note(&format!(
                    "skipping an event that is not JSON ({})",
                    event.name
                ));
                continue;
            };
            delivered = true;
            display.show(&snapshot);
            if matches!(event.name.as_str(), "completed" | "failed" | "cancelled") {
                return Attempt::Ended(snapshot);
            }
        }
    }
}

/// The task's current state by a plain poll, which must be terminal.
async fn final_snapshot(server: &Server, id: &str) -> Attempt {
    let headers: Vec<_> = read_token_cookie(server, id).into_iter().collect();
    let response = match server
        .get(&format!("/api/index-progress/{id}"), &headers)
        .await
    {
        Ok(response) => response,
        Err(error) => return Attempt::Retry(error.to_string()),
    };
    let status = response.status();
    let snapshot = match client::read_body(response).await {
        Ok(body) => serde_json::from_slice(&body).unwrap_or(Value::Null),
        Err(error) => return Attempt::Retry(error.to_string()),
    };
    if status != StatusCode::OK {
        return answer_error(status, client::error_message(status, &snapshot));
    }
    match snapshot["status"].as_str() {
        Some("completed" | "failed" | "cancelled") => Attempt::Ended(snapshot),
        _ => Attempt::Stop(Stop::CannotFollow(
            "the server ended the stream of a task that has not finished".to_string(),
        )),
    }
}

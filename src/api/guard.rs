//! What a web page must not make a browser do to a server without tokens (the default on
//! loopback), checked for every request before it is routed:
//!
//! - DNS rebinding: a page whose name is made to resolve to 127.0.0.1 reaches a loopback
//!   server as its own origin. Such requests carry the page's name in `Host`, so a server
//!   that listens on loopback only answers only loopback names and addresses (and the
//!   host of `--public-origin`, for a proxy in front of it).
//! - Cross-site writes: a page may send a `text/plain` (or empty) `POST` anywhere without
//!   asking first. Every write must say `Content-Type: application/json`, which a page can
//!   only send cross-origin after a CORS preflight, and a write from a foreign `Origin`
//!   (not listed with `--cors-origin`, not the server's own) is refused outright.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::cors::host_name;
use super::error::ApiError;
use super::extract::is_json_content_type;
use super::AppState;

/// Refuses a request whose `Host` a loopback-only server must not answer; runs for every
/// request, routed or not.
pub async fn host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(host) = request.headers().get(header::HOST) {
        if !state.security.host_allowed(host.as_bytes()) {
            return ApiError::Forbidden(
                "Host not allowed: this server listens on loopback only and answers loopback \
                 names (set --public-origin to serve it through a proxy)"
                    .to_string(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Refuses a write that a foreign page could have sent; runs for routed requests only,
/// so that a method a route does not take is still a `405`.
pub async fn writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(error) = check_write(&state, request.method(), request.headers()) {
        return error.into_response();
    }
    next.run(request).await
}

fn check_write(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if !is_write(method) {
        return Ok(());
    }
    if !state.security.origins.allows(headers) {
        return Err(ApiError::Forbidden("Origin not allowed".to_string()));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_content_type);
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(())
}

/// Methods that change something (anything but the safe ones, RFC 9110 §9.2.1).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `host` (a `Host` header's value: `name[:port]`) names the loopback interface:
/// `localhost` or a name under it (RFC 6761 §6.3), or a loopback address. Runs on every
/// poll the quick lane answers: no allocation.
pub fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = host_name(host.trim());
    let name = name.strip_suffix('.').unwrap_or(name);
    let under_localhost = name.len() >= ".localhost".len()
        && name.as_bytes()[name.len() - ".localhost".len()..].eq_ignore_ascii_case(b".localhost");
    if name.eq_ignore_ascii_case("localhost") || under_localhost {
        return true;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    literal.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        ip => ip.is_loopback(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_addresses() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "app.localhost:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(host.as_bytes()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "[::2]",
            "",
            "\u{ff}",
        ] {
            assert!(!is_loopback_host(host.as_bytes()), "{host}");
        }
    }
}

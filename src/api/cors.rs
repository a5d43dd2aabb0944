//! Cross-origin access: an explicit allow-list of browser origins (`--cors-origin`),
//! answered by tower-http's CORS layer, and the same list applied to WebSocket upgrades,
//! which browsers send cross-origin without asking first.
//!
//! Without a list no CORS headers are sent (browsers then allow same-origin pages only)
//! and WebSocket upgrades are not checked, as the contract says. A request without an
//! `Origin` header comes from a non-browser client and is always allowed; a page served
//! from the hub's own origin (its `Host`) is allowed too.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::auth::SecurityError;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The configured origins, normalized (lower case, no trailing slash).
#[derive(Clone, Debug, Default)]
pub struct Origins(Vec<String>);

impl Origins {
    pub fn parse(configured: &[String]) -> Result<Origins, SecurityError> {
        let mut origins = Vec::new();
        for raw in configured {
            let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
            if origin.is_empty() {
                continue;
            }
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = host
                .is_some_and(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@', ' ', '*']))
                && HeaderValue::from_str(&origin).is_ok();
            if !valid {
                return Err(SecurityError::BadOrigin(raw.clone()));
            }
            origins.push(origin);
        }
        Ok(Origins(origins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CORS layer for the configured list, or `None` without one.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.0.is_empty() {
            return None;
        }
        let values: Vec<HeaderValue> = self
            .0
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(values))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([
                    HeaderName::from_static("last-event-id"),
                    header::CONTENT_TYPE,
                    header::AUTHORIZATION,
                ])
                .expose_headers([header::ETAG, header::RETRY_AFTER, header::LOCATION])
                // Read tokens may travel in a cookie: listed origins may send it.
                .allow_credentials(true)
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }

    /// Whether a WebSocket upgrade with these headers may proceed.
    pub fn allows_websocket(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        if self.0.is_empty() {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim().to_ascii_lowercase();
        self.0.contains(&origin) || same_origin(&origin, headers)
    }
}

/// The page came from this server: the origin's host and port are the request's `Host`.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn parses_and_normalizes() {
        let origins = Origins::parse(&["https://App.example.com/".to_string()]).unwrap();
        assert_eq!(origins.0, ["https://app.example.com"]);
        for bad in [
            "example.com",
            "https://",
            "ftp://x",
            "https://x/path",
            "*",
            "https://*.x",
        ] {
            assert!(Origins::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_origins() {
        let list = Origins::parse(&["https://ok.example".to_string()]).unwrap();
        let none = Origins::default();
        let allowed = headers(&[(header::ORIGIN, "https://ok.example")]);
        let foreign = headers(&[(header::ORIGIN, "https://evil.example")]);
        let same = headers(&[
            (header::ORIGIN, "http://127.0.0.1:8080"),
            (header::HOST, "127.0.0.1:8080"),
        ]);
        assert!(list.allows_websocket(&allowed));
        assert!(list.allows_websocket(&same));
        assert!(list.allows_websocket(&HeaderMap::new()));
        assert!(!list.allows_websocket(&foreign));
        assert!(none.allows_websocket(&foreign));
    }
}

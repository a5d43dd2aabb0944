//! Cross-origin access: an explicit allow-list of browser origins (`--cors-origin`),
//! answered by tower-http's CORS layer, and the same list applied to WebSocket upgrades,
//! which browsers send cross-origin without asking first.
//!
//! Without a list no CORS headers are sent (browsers then allow same-origin pages only)
//! and WebSocket upgrades are not checked, as the contract says. A request without an
//! `Origin` header comes from a non-browser client and is always allowed; a page served
//! from the hub's own origin (its `Host`, or `--public-origin` behind a proxy that
//! rewrites `Host`) is allowed too. Writes are checked against the same list whether or
//! not one is configured (see [`super::guard`]).

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::auth::SecurityError;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The configured origins, normalized (lower case, no trailing slash), and the origin the
/// server is reached at through a proxy (`--public-origin`), if any.
#[derive(Clone, Debug, Default)]
pub struct Origins {
    list: Vec<String>,
    public: Option<String>,
}

impl Origins {
    pub fn parse(configured: &[String], public: Option<&str>) -> Result<Origins, SecurityError> {
        let mut list = Vec::new();
        for raw in configured {
            if let Some(origin) = normalize(raw)? {
                list.push(origin);
            }
        }
        let public = match public {
            Some(raw) => normalize(raw)?,
            None => None,
        };
        Ok(Origins { list, public })
    }

    /// The host name of `--public-origin` (no port), lower case.
    pub fn public_host(&self) -> Option<&str> {
        let authority = self.public.as_deref().and_then(authority)?;
        Some(host_name(authority))
    }

    /// The CORS layer for the configured list, or `None` without one.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.list.is_empty() {
            return None;
        }
        let values: Vec<HeaderValue> = self
            .list
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

    /// The headers the CORS layer adds to the answer to a request without `Origin`, as
    /// lines of an HTTP/1.1 head, for answers written without the router (the quick
    /// lane); empty without a list, `None` if they cannot be worked out. Taken from the
    /// layer itself, so that both answers stay alike.
    pub fn headers_without_origin(&self) -> Option<Vec<u8>> {
        use futures_util::FutureExt;
        use tower::{Layer, ServiceExt};
        let Some(layer) = self.layer() else {
            return Some(Vec::new());
        };
        let inner = tower::service_fn(|_: axum::http::Request<axum::body::Body>| async {
            Ok::<_, std::convert::Infallible>(axum::http::Response::new(axum::body::Body::empty()))
        });
        let request = axum::http::Request::get("/")
            .body(axum::body::Body::empty())
            .ok()?;
        let response = layer.layer(inner).oneshot(request).now_or_never()?.ok()?;
        let mut lines = Vec::new();
        for (name, value) in response.headers() {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        Some(lines)
    }

    /// Whether a WebSocket upgrade with these headers may proceed: without a list, any
    /// (as the contract says); with one, a listed origin or the server's own.
    pub fn allows_websocket(&self, headers: &HeaderMap) -> bool {
        self.list.is_empty() || self.allows(headers)
    }

    /// Whether a request with these headers comes from no browser (no `Origin`), from a
    /// listed origin, or from the server's own: the page's origin names the request's
    /// `Host`, or `--public-origin` (the server behind a proxy that rewrites `Host`).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        self.list.contains(&origin)
            || self.public.as_deref() == Some(origin.as_str())
            || same_origin(&origin, headers)
    }
}

/// A configured origin, normalized; `None` for an empty one.
fn normalize(raw: &str) -> Result<Option<String>, SecurityError> {
    let origin = raw.trim().trim_end_matches('/').to_ascii_lowercase();
    if origin.is_empty() {
        return Ok(None);
    }
    let valid = authority(&origin)
        .is_some_and(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@', ' ', '*']))
        && HeaderValue::from_str(&origin).is_ok();
    if !valid {
        return Err(SecurityError::BadOrigin(raw.to_string()));
    }
    Ok(Some(origin))
}

/// `host[:port]` of an origin.
fn authority(origin: &str) -> Option<&str> {
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
}

/// The host of `host[:port]` (an IPv6 literal keeps its brackets).
pub fn host_name(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The page came from this server: the origin's host and port are the request's `Host`.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority(origin), host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()))
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
        let origins = Origins::parse(&["https://App.example.com/".to_string()], None).unwrap();
        assert_eq!(origins.list, ["https://app.example.com"]);
        for bad in [
            "example.com",
            "https://",
            "ftp://x",
            "https://x/path",
            "*",
            "https://*.x",
        ] {
            assert!(Origins::parse(&[bad.to_string()], None).is_err(), "{bad}");
            assert!(Origins::parse(&[], Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_origins() {
        let list = Origins::parse(&["https://ok.example".to_string()], None).unwrap();
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
        // Behind a proxy that rewrites `Host`, the public origin is the server's own.
        let proxied = headers(&[
            (header::ORIGIN, "https://progress.example"),
            (header::HOST, "127.0.0.1:8080"),
        ]);
        assert!(!list.allows_websocket(&proxied));
        let public = Origins::parse(
            &["https://ok.example".to_string()],
            Some("https://Progress.example/"),
        )
        .unwrap();
        assert!(public.allows_websocket(&proxied));
        assert_eq!(public.public_host(), Some("progress.example"));
    }
}

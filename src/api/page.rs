//! The bundled live-progress page: `GET /` and its assets under `/static/`.
//!
//! The files in `static/` are compiled into the binary (`include_bytes!`), so the installed
//! program serves the same page from any working directory and never touches the disk for
//! it. Each file's `ETag` is a hash of its bytes computed at compile time; the page is
//! small, so every response says `no-cache` and browsers revalidate with `If-None-Match`
//! (a `304` with no body) instead of ever running stale JavaScript after an upgrade.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of `body`: changes whenever the file does, costs nothing at run time.
    hash: u64,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/static/", $name));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            hash: fnv1a(BODY),
        }
    }};
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Everything `/static/{name}` serves. Only these names exist; there is no path to walk.
const ASSETS: &[Asset] = &[
    asset!("main.js", "text/javascript; charset=utf-8"),
    asset!("transport.js", "text/javascript; charset=utf-8"),
    asset!("render.js", "text/javascript; charset=utf-8"),
    // Not used by the page: for embedding one task's progress in other pages.
    asset!("embed.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The page loads nothing from other origins and runs no inline script; saying so in a
/// policy turns an injected `<script>` or a stray remote URL into a blocked request.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `GET /` (also `/?task=ID`: the page reads the query itself).
pub async fn index(headers: HeaderMap) -> Response {
    let mut response = serve(&INDEX, &headers);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /static/{name}`.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .map(|asset| serve(asset, &headers))
        .ok_or_else(|| ApiError::NotFound("Not found".to_string()))
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim().trim_start_matches("W/") == etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `/static/NAME` the page names and every `./NAME` a module imports must be
    /// embedded, or the page breaks only in a browser.
    #[test]
    fn every_file_the_page_references_is_embedded() {
        let embedded = |name: &str| ASSETS.iter().any(|a| a.name == name);
        let mut references = Vec::new();
        for file in std::iter::once(&INDEX).chain(ASSETS) {
            let text = std::str::from_utf8(file.body).unwrap();
            for marker in ["/static/", "from './"] {
                for (at, _) in text.match_indices(marker) {
                    let rest = &text[at + marker.len()..];
                    let end = rest.find(['"', '\'', ')']).unwrap_or(rest.len());
                    references.push(rest[..end].to_string());
                }
            }
        }
        assert!(
            references.len() >= 5,
            "found too few references: {references:?}"
        );
        for name in references {
            assert!(embedded(&name), "{name} is referenced but not embedded");
        }
    }

    #[test]
    fn hashes_differ_between_files() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        let mut hashes: Vec<u64> = ASSETS.iter().map(|a| a.hash).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ASSETS.len());
    }
}

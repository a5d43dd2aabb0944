//! `GET /api/openapi.json`: the OpenAPI 3.1 document of this API, kept in
//! `docs/openapi.json` and embedded from there, so what is served and what is in the
//! repository are one file. The test below checks it against the router in `mod.rs`
//! (every route documented, every documented route registered); tests/api/openapi.rs
//! requests every documented operation from a live server.

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;

use super::error::json_response;

const DOCUMENT: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"));

pub async fn document() -> Response {
    json_response(StatusCode::OK, Bytes::from_static(DOCUMENT))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    /// `(method, path)` of every `.route(...)` in the router's source: the path literal,
    /// then each method router (`get(...)`, `.post(...)`) up to the next route.
    fn registered_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let mut routes = BTreeSet::new();
        for call in source.split(".route(").skip(1) {
            let call = call.split(".fallback(").next().unwrap_or(call);
            let path = call.split('"').nth(1).expect("a path literal");
            let after_path = &call[call.find(path).unwrap_or(0) + path.len()..];
            for method in METHODS {
                let called = after_path
                    .match_indices(&format!("{method}("))
                    .any(|(at, _)| {
                        // `get(` itself, not the end of a longer name such as `target(`.
                        let before = after_path[..at].chars().next_back();
                        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    });
                if called {
                    routes.insert((method.to_string(), path.to_string()));
                }
            }
        }
        routes
    }

    fn documented_operations() -> BTreeSet<(String, String)> {
        let document: Value = serde_json::from_slice(DOCUMENT).expect("docs/openapi.json is JSON");
        let paths = document["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                METHODS
                    .iter()
                    .filter(|method| item.get(**method).is_some())
                    .map(|method| (method.to_string(), path.clone()))
            })
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let registered = registered_routes();
        assert!(
            registered.len() > 15,
            "the router parse found too little: {registered:?}"
        );
        let documented = documented_operations();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let missing: Vec<_> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty() && missing.is_empty(),
            "routes not in docs/openapi.json: {undocumented:?}; documented but not routed: {missing:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let document: Value = serde_json::from_slice(DOCUMENT).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}

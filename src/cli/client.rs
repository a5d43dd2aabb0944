//! The smallest HTTP/1.1 client the client commands need: one connection per request,
//! made with hyper's own client connection, so the binary gains no HTTP client stack of
//! its own. Plain `http://` only.

use std::time::Duration;

use axum::http::{header, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long connecting (TCP and the response head) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JSON answer read (a listing of many tasks with results).
const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;

/// A progress-hub server: where it is and the token to show it.
#[derive(Clone, Debug)]
pub struct Server {
    host: String,
    port: u16,
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// A path prefix (a server behind a proxy under `/progress/`), without the final `/`.
    base_path: String,
    token: Option<String>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("HTTP error talking to {0}: {1}")]
    Http(String, hyper::Error),
    #[error("{0}")]
    Body(String),
}

impl Server {
    /// Parses `--server`: `http://host[:port][/prefix]`.
    pub fn new(url: &str, token: Option<String>) -> Result<Server, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--server {url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "--server {url:?}: https is not supported by the client commands; use http://"
                ))
            }
            _ => return Err(format!("--server {url:?} must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--server {url:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("--server {url:?} must not have a query"));
        }
        // The token travels in `Authorization` and in a cookie: keep it to characters
        // both can carry as they are.
        if let Some(token) = &token {
            if !token
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b";,\"\\".contains(&b))
            {
                return Err(
                    "the token may only hold visible ASCII characters other than ;,\"\\"
                        .to_string(),
                );
            }
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(Server {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// `http://host:port/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.base_path)
    }

    /// Sends `GET path` with the token and these extra headers; returns the response with
    /// its body still to be read.
    pub async fn get(
        &self,
        path_and_query: &str,
        headers: &[(header::HeaderName, String)],
    ) -> Result<Response<Incoming>, RequestError> {
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, self.send(path_and_query, headers));
        answer
            .await
            .map_err(|_| RequestError::Timeout(self.url(), CONNECT_TIMEOUT))?
    }

    async fn send(
        &self,
        path_and_query: &str,
        headers: &[(header::HeaderName, String)],
    ) -> Result<Response<Incoming>, RequestError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| RequestError::Connect(self.url(), e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RequestError::Http(self.url(), e))?;
        // The connection task ends when the response body is dropped or read to its end.
        tokio::spawn(connection);
        let mut request = Request::get(format!("{}{}", self.base_path, path_and_query))
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("progress-hub/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| RequestError::Body(format!("bad request: {e}")))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| RequestError::Http(self.url(), e))
    }

    /// `GET path` and its JSON body, with the status it came with.
    pub async fn get_json(
        &self,
        path_and_query: &str,
    ) -> Result<(StatusCode, Value), RequestError> {
        let response = self.get(path_and_query, &[]).await?;
        let status = response.status();
        let body = read_body(response).await?;
        let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
            // Not JSON (a proxy's error page): keep its text as the error.
            serde_json::json!({ "error": String::from_utf8_lossy(&body).trim() })
        });
        Ok((status, json))
    }

    /// The token, for a header that carries it differently (the read-token cookie).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// Reads a whole (bounded) body.
pub async fn read_body(response: Response<Incoming>) -> Result<Bytes, RequestError> {
    Limited::new(response.into_body(), MAX_JSON_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| RequestError::Body(format!("reading the answer: {e}")))
}

/// The `error` of a JSON error body, or the status line.
pub fn error_message(status: StatusCode, body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(error) if !error.is_empty() => format!("{error} ({status})"),
        _ => status.to_string(),
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn encode_query_value(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let server = Server::new("http://127.0.0.1:9000/", None).unwrap();
        assert_eq!((server.host.as_str(), server.port), ("127.0.0.1", 9000));
        assert_eq!(server.base_path, "");
        let server = Server::new("http://[::1]:81/hub/", Some(String::new())).unwrap();
        assert_eq!((server.host.as_str(), server.port), ("::1", 81));
        assert_eq!(
            (server.authority.as_str(), server.base_path.as_str()),
            ("[::1]:81", "/hub")
        );
        assert!(server.token.is_none());
        assert_eq!(Server::new("http://example.org", None).unwrap().port, 80);
    }

    #[test]
    fn refuses_what_it_cannot_speak() {
        for url in [
            "https://h:1",
            "ftp://h",
            "h:1",
            "http://h/?a=1",
            "not a url",
        ] {
            assert!(Server::new(url, None).is_err(), "{url}");
        }
        for token in ["a b", "a;b", "a\nb", "é"] {
            assert!(
                Server::new("http://h", Some(token.into())).is_err(),
                "{token:?}"
            );
        }
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode_query_value("processing"), "processing");
        assert_eq!(encode_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}

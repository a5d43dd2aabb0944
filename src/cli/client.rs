//! The smallest HTTP/1.1 client the client commands need: one connection per request,
//! made with hyper's own client connection, so the binary gains no HTTP client stack of
//! its own. `http://`, or `https://` through rustls (the server's own TLS stack), trusting
//! the system's certificates or the ones given with `--ca-cert`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Request, Response, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long connecting (TCP and the response head) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JSON answer read (a listing of many tasks with results).
const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;
/// Where Debian (and most Linux systems) keep the trusted certificates, one PEM file.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A progress-hub server: where it is and the token to show it.
#[derive(Clone)]
pub struct Server {
    host: String,
    port: u16,
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// A path prefix (a server behind a proxy under `/progress/`), without the final `/`.
    base_path: String,
    token: Option<String>,
    /// For `https://`: the connector and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url())
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
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
    /// Parses `--server`: `http[s]://host[:port][/prefix]`. For `https://`, `ca_cert` is
    /// a PEM file of the certificates to trust (else `SSL_CERT_FILE`, else the system's).
    pub fn new(url: &str, token: Option<String>, ca_cert: Option<&Path>) -> Result<Server, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--server {url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "--server {url:?} must start with http:// or https://"
                ))
            }
        };
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
        let tls = if https {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("--server {url:?}: {e}"))?;
            Some((connector(ca_cert)?, name))
        } else {
            None
        };
        Ok(Server {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
            tls,
        })
    }

    /// `http[s]://host:port/prefix`, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.base_path)
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
        let mut sender = match &self.tls {
            None => self.handshake(stream).await?,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| RequestError::Connect(self.url(), e))?;
                self.handshake(stream).await?
            }
        };
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

    /// An HTTP/1.1 connection over `stream`, its task spawned; it ends when the response
    /// body is dropped or read to its end.
    async fn handshake<S>(
        &self,
        stream: S,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, RequestError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RequestError::Http(self.url(), e))?;
        tokio::spawn(connection);
        Ok(sender)
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

/// A TLS connector trusting the certificates in `ca_cert`, else in `SSL_CERT_FILE`, else
/// the system's; HTTP/1.1 announced by ALPN.
fn connector(ca_cert: Option<&Path>) -> Result<TlsConnector, String> {
    let file = match ca_cert {
        Some(file) => file.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_FILE)),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&file).map_err(|e| {
        format!(
            "cannot read trusted certificates from {}: {e}",
            file.display()
        )
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
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
        let server = Server::new("http://127.0.0.1:9000/", None, None).unwrap();
        assert_eq!((server.host.as_str(), server.port), ("127.0.0.1", 9000));
        assert_eq!(server.base_path, "");
        let server = Server::new("http://[::1]:81/hub/", Some(String::new()), None).unwrap();
        assert_eq!((server.host.as_str(), server.port), ("::1", 81));
        assert_eq!(
            (server.authority.as_str(), server.base_path.as_str()),
            ("[::1]:81", "/hub")
        );
        assert!(server.token.is_none());
        assert_eq!(
            Server::new("http://example.org", None, None).unwrap().port,
            80
        );
    }

    #[test]
    fn https_needs_certificates_to_trust() {
        let missing = Path::new("/nonexistent/ca.pem");
        let error = Server::new("https://h", None, Some(missing)).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let error = Server::new("https://h:8443", None, Some(&empty)).unwrap_err();
        assert!(error.contains("empty.pem"), "{error}");
    }

    #[test]
    fn refuses_what_it_cannot_speak() {
        for url in ["ftp://h", "h:1", "http://h/?a=1", "not a url"] {
            assert!(Server::new(url, None, None).is_err(), "{url}");
        }
        for token in ["a b", "a;b", "a\nb", "é"] {
            assert!(
                Server::new("http://h", Some(token.into()), None).is_err(),
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

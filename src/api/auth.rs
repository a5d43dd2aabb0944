//! Who may do what. Producers prove themselves with `Authorization: Bearer <token>`
//! against the tokens of `--api-token` and `--api-token-file`; with `--protect-reads`,
//! following a task needs its read token (see [`super::read_token`]) and the listings need
//! an API token.
//!
//! Tokens are kept only as SHA-256 digests and a presented token is hashed before it is
//! compared, so every comparison is between equal-length values and takes the same time
//! whatever the token; every configured token is compared, with no early exit on a match.
//! Tokens are never logged: logs name a token by its label.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use sha2::{Digest, Sha256};

use super::cors::Origins;
use super::error::ApiError;
use super::read_token::ReadKey;
use super::AppState;
use crate::config::Config;

/// Why the security settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read the API token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {0} holds no token")]
    NoTokens(PathBuf),
    #[error("cannot use the read-token key {path}: {reason}")]
    ReadKey { path: PathBuf, reason: String },
    #[error("invalid --cors-origin {0:?}: expected scheme://host[:port], such as https://app.example.com")]
    BadOrigin(String),
}

/// Everything the handlers need to decide who may do what. Built once at start.
pub struct Security {
    pub tokens: ApiTokens,
    /// Present with `--protect-reads`.
    pub read_key: Option<Arc<ReadKey>>,
    pub origins: Origins,
    /// The server listens on a loopback address only: requests must name a loopback
    /// host (see [`super::guard`]).
    pub loopback_only: bool,
}

impl Security {
    /// Loads the token file and, with `--protect-reads`, the read-token key (created on
    /// first start). File work runs on a blocking thread.
    pub async fn load(config: &Config) -> Result<Security, SecurityError> {
        let origins = Origins::parse(&config.cors_origins, config.public_origin.as_deref())?;
        let (token, file) = (config.api_token.clone(), config.api_token_file.clone());
        let protect = config.protect_reads;
        let key_path = config.data_dir.join(super::read_token::KEY_FILE);
        let loaded = tokio::task::spawn_blocking(move || {
            let tokens = ApiTokens::load(token.as_deref(), file.as_deref())?;
            let key = if protect {
                Some(Arc::new(ReadKey::load_or_create(&key_path)?))
            } else {
                None
            };
            Ok::<_, SecurityError>((tokens, key))
        })
        .await;
        let (tokens, read_key) = match loaded {
            Ok(result) => result?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let labels: Vec<&str> = tokens.tokens.iter().map(|t| &*t.label).collect();
        tracing::info!(
            api_tokens = tokens.tokens.len(),
            labels = ?labels,
            protect_reads = read_key.is_some(),
            cors_origins = ?config.cors_origins,
            "security settings loaded"
        );
        Ok(Security {
            tokens,
            read_key,
            origins,
            loopback_only: config.listen.ip().is_loopback(),
        })
    }

    /// Whether a request's `Host` may be answered (see [`super::guard`]).
    pub fn host_allowed(&self, host: &[u8]) -> bool {
        if !self.loopback_only || super::guard::is_loopback_host(host) {
            return true;
        }
        let public = self.origins.public_host();
        let name = std::str::from_utf8(host).map(|h| super::cors::host_name(h.trim()));
        matches!((public, name), (Some(p), Ok(n)) if p.eq_ignore_ascii_case(n))
    }
}

struct ApiToken {
    digest: [u8; 32],
    label: Arc<str>,
}

/// The producer tokens, as digests with their labels.
pub struct ApiTokens {
    tokens: Vec<ApiToken>,
}

/// The allowance that producers share when no token is configured.
const ANONYMOUS: &str = "anonymous";

impl ApiTokens {
    pub fn load(token: Option<&str>, file: Option<&Path>) -> Result<ApiTokens, SecurityError> {
        let mut tokens = Vec::new();
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            tokens.push(ApiToken::new(token, "api-token"));
        }
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| SecurityError::TokenFile {
                    path: path.to_path_buf(),
                    source,
                })?;
            let before = tokens.len();
            tokens.extend(parse_token_file(&text));
            if tokens.len() == before {
                return Err(SecurityError::NoTokens(path.to_path_buf()));
            }
        }
        Ok(ApiTokens { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The label of the token in the request's `Authorization: Bearer`, if it is one of
    /// ours. Compares against every token, matched or not.
    pub fn check(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let presented = bearer(headers)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&digest, &token.digest) {
                found = Some(token.label.clone());
            }
        }
        found
    }
}

impl ApiToken {
    fn new(token: &str, label: &str) -> Self {
        ApiToken {
            digest: Sha256::digest(token.as_bytes()).into(),
            label: Arc::from(label),
        }
    }
}

/// `TOKEN [LABEL...]` per line; `#` comments and blank lines skipped. A token without a
/// label is named after its line.
fn parse_token_file(text: &str) -> Vec<ApiToken> {
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (token, label) = match line.split_once(char::is_whitespace) {
                Some((token, label)) => (token, label.trim().to_string()),
                None => (line, format!("line-{}", n + 1)),
            };
            Some(ApiToken::new(token, &label))
        })
        .collect()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Proof that the request may write, naming the token it used (or `anonymous` when no
/// token is configured). Take it as the first handler argument.
pub struct Producer {
    pub label: Arc<str>,
}

impl FromRequestParts<AppState> for Producer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tokens = &state.security.tokens;
        if tokens.is_empty() {
            return Ok(Producer {
                label: Arc::from(ANONYMOUS),
            });
        }
        match tokens.check(&parts.headers) {
            Some(label) => Ok(Producer { label }),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// Proof that the request may read the listings: always, unless `--protect-reads` is on,
/// in which case it needs an API token.
pub struct Lister;

impl FromRequestParts<AppState> for Lister {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.security.read_key.is_none()
            || state.security.tokens.check(&parts.headers).is_some()
        {
            Ok(Lister)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Equal-length inputs take the same time whatever their content; a length mismatch
/// returns early, which reveals only the length (callers compare fixed-length digests).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    fn auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn token_file_lines_labels_and_comments() {
        let tokens = parse_token_file("# producers\n\nalpha-token  indexer A\nbeta-token\n");
        let tokens = ApiTokens { tokens };
        assert_eq!(
            tokens.check(&auth("Bearer alpha-token")).as_deref(),
            Some("indexer A")
        );
        assert_eq!(
            tokens.check(&auth("bearer   beta-token ")).as_deref(),
            Some("line-4")
        );
        for bad in [
            "Bearer gamma",
            "Basic alpha-token",
            "Bearer",
            "alpha-token",
            "Bearer # producers",
        ] {
            assert!(tokens.check(&auth(bad)).is_none(), "{bad}");
        }
    }
}

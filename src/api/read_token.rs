//! Read protection (`--protect-reads`). EventSource cannot set headers, so a browser
//! proves it may follow a task with a per-task read token, given to the producer in the
//! `201` that created the task and passed on to the page, which sends it as `?token=` or
//! in the cookie `progress_hub_read_<task_id>`. A valid API token in
//! `Authorization: Bearer` is accepted too (servers following tasks).
//!
//! The token is stateless: the first 128 bits of HMAC-SHA256 over the task id under a
//! server secret, as hex. Nothing is stored per task, tokens survive restarts, and
//! deleting the key file (`<data-dir>/read-token.key`, created on first start, readable
//! only by its owner) revokes every token at once. Nodes sharing a Redis (`--redis-url`)
//! share the key through it, so a token from one node is valid on all
//! ([`ReadKey::adopt`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use axum::extract::{FromRequestParts, Query};
use axum::http::{header, request::Parts, HeaderMap};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::auth::{constant_time_eq, SecurityError};
use super::error::ApiError;
use super::extract::TaskIdPath;
use super::AppState;
use crate::hub::TaskId;

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "read-token.key";
/// The cookie a page may carry the token in: this prefix, then the task id.
pub const COOKIE_PREFIX: &str = "progress_hub_read_";
/// Separates read tokens from any other use of the key.
const DOMAIN: &[u8] = b"progress-hub read token v1\0";
const KEY_BYTES: usize = 32;
/// Hex digits of a token: 128 bits.
const TOKEN_HEX: usize = 32;

pub struct ReadKey {
    current: RwLock<Current>,
    /// The file it was loaded from, rewritten when the key is replaced.
    path: Option<PathBuf>,
}

struct Current {
    mac: Hmac<Sha256>,
    hex: String,
}

impl Current {
    fn new(key: &[u8]) -> Current {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Current {
            mac,
            hex: encode_hex(key),
        }
    }
}

impl ReadKey {
    pub fn from_bytes(key: &[u8]) -> ReadKey {
        ReadKey {
            current: RwLock::new(Current::new(key)),
            path: None,
        }
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key as hex, as its file holds it (to share it with other nodes).
    pub fn hex(&self) -> String {
        self.current().hex.clone()
    }

    /// Replaces the key by the one the other nodes use (hex, as [`ReadKey::hex`] gives),
    /// then rewrites the key file so that the node keeps it across restarts (an error
    /// there leaves the new key in use). Tokens made under the old key stop being valid.
    /// Blocking (a small file): call off the runtime.
    pub fn adopt(&self, hex: &str) -> Result<(), SecurityError> {
        let key = decode_hex(hex.trim())
            .filter(|k| k.len() == KEY_BYTES)
            .ok_or_else(|| SecurityError::ReadKey {
                path: self.path.clone().unwrap_or_default(),
                reason: format!("the shared key is not {} hex digits", KEY_BYTES * 2),
            })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Current::new(&key);
        match &self.path {
            Some(path) => write_private(path, &key).map_err(|e| SecurityError::ReadKey {
                path: path.clone(),
                reason: e.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Reads the key, or creates it (32 random bytes, hex, mode 0600) when it is missing.
    /// Blocking: call off the async runtime.
    pub fn load_or_create(path: &Path) -> Result<ReadKey, SecurityError> {
        let fail = |reason: String| SecurityError::ReadKey {
            path: path.to_path_buf(),
            reason,
        };
        loop {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    warn_if_readable_by_others(path);
                    let key = decode_hex(text.trim())
                        .filter(|k| k.len() == KEY_BYTES)
                        .ok_or_else(|| fail(format!("expected {} hex digits", KEY_BYTES * 2)))?;
                    return Ok(ReadKey::from_file(&key, path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e.to_string())),
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            let mut key = [0u8; KEY_BYTES];
            getrandom::fill(&mut key).map_err(|e| fail(e.to_string()))?;
            match create_private(path) {
                Ok(mut file) => {
                    file.write_all(format!("{}\n", encode_hex(&key)).as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|e| fail(e.to_string()))?;
                    tracing::info!(path = %path.display(), "created the read-token key");
                    return Ok(ReadKey::from_file(&key, path));
                }
                // Another process created it first: read theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    }

    fn from_file(key: &[u8], path: &Path) -> ReadKey {
        ReadKey {
            path: Some(path.to_path_buf()),
            ..ReadKey::from_bytes(key)
        }
    }

    /// The read token of a task.
    pub fn token_for(&self, id: &TaskId) -> String {
        let mut mac = self.current().mac.clone();
        mac.update(DOMAIN);
        mac.update(id.as_bytes());
        encode_hex(&mac.finalize().into_bytes()[..TOKEN_HEX / 2])
    }

    pub fn verify(&self, id: &TaskId, presented: &str) -> bool {
        constant_time_eq(self.token_for(id).as_bytes(), presented.trim().as_bytes())
    }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Replaces the key file: a private file beside it, then renamed over it.
impl crate::store::SharedKey for ReadKey {
    fn hex(&self) -> String {
        ReadKey::hex(self)
    }

    fn adopt(&self, hex: &str) -> Result<(), String> {
        ReadKey::adopt(self, hex).map_err(|e| e.to_string())
    }
}

fn write_private(path: &Path, key: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let fresh = path.with_file_name(name);
    let _ = std::fs::remove_file(&fresh);
    let mut file = create_private(&fresh)?;
    file.write_all(format!("{}\n", encode_hex(key)).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the read-token key is readable by others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `{task_id}` from the path, validated, and, with `--protect-reads`, proof that the
/// request may follow that task. The check comes before any lookup, so a client without
/// a token learns nothing, not even whether the task exists.
pub struct ReadableTask(pub TaskId);

impl FromRequestParts<AppState> for ReadableTask {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let TaskIdPath(id) = TaskIdPath::from_request_parts(parts, state).await?;
        let Some(key) = &state.security.read_key else {
            state.hub.fetch_missing(&id).await?;
            return Ok(ReadableTask(id));
        };
        let by_query = || {
            Query::<TokenQuery>::try_from_uri(&parts.uri)
                .ok()
                .and_then(|Query(q)| q.token)
                .is_some_and(|t| key.verify(&id, &t))
        };
        let by_cookie = || cookie(&parts.headers, &id).is_some_and(|t| key.verify(&id, t));
        let by_api_token = || state.security.tokens.check(&parts.headers).is_some();
        if by_query() || by_cookie() || by_api_token() {
            state.hub.fetch_missing(&id).await?;
            Ok(ReadableTask(id))
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// The value of the cookie `progress_hub_read_<id>`, from any `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, id: &TaskId) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| {
            name.strip_prefix(COOKIE_PREFIX)
                .is_some_and(|rest| rest == id.as_str())
        })
        .map(|(_, value)| value.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_are_per_task_and_per_key() {
        let key = ReadKey::from_bytes(&[7; 32]);
        let (a, b) = (TaskId::parse("a").unwrap(), TaskId::parse("b").unwrap());
        let token = key.token_for(&a);
        assert_eq!(token.len(), TOKEN_HEX);
        assert!(key.verify(&a, &token));
        assert!(!key.verify(&b, &token));
        assert!(!ReadKey::from_bytes(&[8; 32]).verify(&a, &token));
        assert!(!key.verify(&a, &token[..TOKEN_HEX - 1]));
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(KEY_FILE);
        let id = TaskId::parse("t").unwrap();
        let first = ReadKey::load_or_create(&path).unwrap().token_for(&id);
        let again = ReadKey::load_or_create(&path).unwrap().token_for(&id);
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not hex").unwrap();
        assert!(ReadKey::load_or_create(&path).is_err());
    }

    #[test]
    fn an_adopted_key_replaces_the_old_one_and_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let id = TaskId::parse("t").unwrap();
        let key = ReadKey::load_or_create(&path).unwrap();
        let old = key.token_for(&id);
        let shared = ReadKey::from_bytes(&[9; 32]);
        key.adopt(&shared.hex()).unwrap();
        assert!(!key.verify(&id, &old));
        assert!(key.verify(&id, &shared.token_for(&id)));
        // The node keeps it across a restart, still private.
        let reloaded = ReadKey::load_or_create(&path).unwrap();
        assert_eq!(reloaded.hex(), shared.hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(key.adopt("abc").is_err());
        assert_eq!(key.hex(), shared.hex());
    }

    #[test]
    fn cookies_are_found_by_task() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "x=1; progress_hub_read_other=no; progress_hub_read_t=\"yes\"",
            ),
        );
        let id = TaskId::parse("t").unwrap();
        assert_eq!(cookie(&headers, &id), Some("yes"));
        assert_eq!(cookie(&headers, &TaskId::parse("u").unwrap()), None);
    }
}

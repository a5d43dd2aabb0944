//! HTTPS: the certificate chain and private key (`--tls-cert`, `--tls-key`), loaded with
//! rustls (the `ring` provider, no OpenSSL), offered with ALPN `h2` and `http/1.1` so that
//! a browser multiplexes all of a page's event streams over one HTTP/2 connection, and
//! loaded again on SIGHUP: new connections get the new certificate, open ones keep theirs,
//! and files that do not load leave the current certificate in place.
//!
//! An HTTPS connection ([`connection`]) is served by hyper and axum alone: the fast paths
//! (the quick lane, the hand-off of event streams to the relay's writers) speak to a bare
//! TCP socket, so they stay on plaintext HTTP/1.1 connections.

pub mod connection;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The two files a certificate is read from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "--tls-cert and --tls-key go together (PROGRESS_HUB_TLS_CERT, PROGRESS_HUB_TLS_KEY): \
         give both to serve HTTPS, or neither to serve HTTP"
    )]
    Incomplete,
    #[error("cannot use the TLS certificate file {}: {reason}", .path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot use the TLS private key file {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error(
        "the TLS certificate {} and private key {} do not go together: {source}",
        .cert.display(), .key.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

impl TlsFiles {
    /// Both files, neither (`None`: plain HTTP), or the error that only one was given.
    pub fn from_options(
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })),
            (None, None) => Ok(None),
            _ => Err(TlsError::Incomplete),
        }
    }

    /// Reads both files and builds the server's TLS configuration. Blocking file reads.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_error = |reason: String| TlsError::Certificate {
            path: self.cert.clone(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| cert_error(pem_reason(e, "certificate")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(pem_reason(e, "certificate")))?;
        if chain.is_empty() {
            return Err(cert_error(pem_reason(
                pem::Error::NoItemsFound,
                "certificate",
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            reason: pem_reason(e, "private key"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| self.mismatch(source))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|source| self.mismatch(source))?;
        // HTTP/2 first: a browser then carries every stream of a page on one connection.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn mismatch(&self, source: rustls::Error) -> TlsError {
        TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        }
    }
}

/// What went wrong reading a PEM file, in words for an operator.
fn pem_reason(error: pem::Error, what: &str) -> String {
    match error {
        pem::Error::Io(error) => error.to_string(),
        pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        other => format!("not a valid PEM {what}: {other}"),
    }
}

/// The certificate new connections are offered, replaced on reload.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Loads the files (blocking reads).
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let config = files.load()?;
        Ok(Tls {
            files,
            current: RwLock::new(TlsAcceptor::from(config)),
        })
    }

    /// The handshake with the certificate loaded last.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the files again (blocking reads); on an error the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.load()?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = TlsAcceptor::from(config);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Reloads the certificate on every SIGHUP until `stop` is cancelled. Each outcome is
/// logged: the operator who sent the signal looks there.
pub async fn reload_on_hangup(tls: Arc<Tls>, stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; the TLS certificate will not be reloaded");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            let loading = tls.clone();
            match tokio::task::spawn_blocking(move || loading.reload()).await {
                Ok(Ok(())) => tracing::info!(
                    cert = %tls.files().cert.display(),
                    "SIGHUP: reloaded the TLS certificate; new connections get it"
                ),
                Ok(Err(error)) => tracing::error!(
                    %error,
                    "SIGHUP: cannot reload the TLS certificate; keeping the current one"
                ),
                Err(error) => tracing::error!(%error, "SIGHUP: the certificate reload failed"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (tls, stop);
}

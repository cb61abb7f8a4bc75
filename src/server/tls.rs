//! TLS on the gRPC and HTTP listeners with rustls, and certificates that
//! can be replaced while serving.
//!
//! tonic's own TLS takes its certificates once, at start. Arbiter accepts
//! TLS itself instead: every new connection is handshaken with the current
//! [`ServerConfig`], which a reload swaps whole. Connections already open
//! keep the certificate they were made with.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsConfig;
use crate::policy::reload::ReloadStatus;

/// A client that has not finished its handshake by then is dropped, so
/// half-open connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the listener's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The listener's current TLS configuration, and the files it came from.
pub struct ReloadingTls {
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

impl ReloadingTls {
    /// Reads the certificate, key and client CA files.
    ///
    /// # Errors
    /// A file is missing or unreadable, holds no certificate, or the key does
    /// not match the certificate.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let config = server_config(files)?;
        match &files.client_ca_file {
            Some(_) => tracing::info!("gRPC listener: TLS, client certificates required"),
            None => tracing::warn!(
                "gRPC listener: TLS without client certificates; anyone who reaches the port can ask for decisions"
            ),
        }
        Ok(Self {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The files to watch.
    pub fn paths(&self) -> Vec<PathBuf> {
        [
            Some(self.files.cert_file.clone()),
            Some(self.files.key_file.clone()),
            self.files.client_ca_file.clone(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Reads the files again and, if they make a valid configuration, uses
    /// it for every new connection. A bad set is logged and counted, and the
    /// current one stays.
    pub fn reload(&self, status: &ReloadStatus) {
        match server_config(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                status.reloads.fetch_add(1, Ordering::Relaxed);
                status.last_error.store(None);
                tracing::info!(
                    cert = %self.files.cert_file.display(),
                    "TLS certificates reloaded; new connections use them"
                );
            }
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                status.last_error.store(Some(Arc::new(e.to_string())));
                tracing::error!(error = %e, "TLS reload rejected; the previous certificates keep serving");
            }
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certificates(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| pem_error(&files.key_file, &e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&files.cert_file, &e))?;
    let builder = match &files.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(ca_file)? {
                roots.add(cert).map_err(|e| invalid(ca_file, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(ca_file, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&files.key_file, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn pem_error(path: &Path, error: &rustls::pki_types::pem::Error) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

fn invalid(path: &Path, error: &dyn std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        message: error.to_string(),
    }
}

/// Accepts TCP connections and hands tonic the ones that complete a TLS
/// handshake, each with the configuration current when it arrived.
/// Handshakes run in their own tasks, so a slow client holds up no one.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    shutdown: watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = io::Result<TlsStream<TcpStream>>> {
    use tokio_stream::StreamExt as _;
    ReceiverStream::new(handshakes(listener, tls, shutdown, "gRPC")).map(|(stream, _)| Ok(stream))
}

/// The connections of `listener` that completed a TLS handshake, with
/// their peer addresses, until `shutdown`.
fn handshakes(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (ready, handshaken) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(connection) => connection,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    handshaken
}

/// The HTTP front doors' listener over TLS, for axum: connections that
/// completed a handshake, as [`incoming`] gives them to tonic.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// # Errors
    /// The listener has no local address.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ReloadingTls>,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            handshaken: handshakes(listener, tls, shutdown, "HTTP"),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

//! TLS for every listener (receivers, API, metrics) with rustls and the ring provider: the
//! server configuration read from PEM files (and, for mutual TLS, the CA that client
//! certificates must chain to), and [`TlsListener`], which hands finished handshakes to
//! axum and tonic alike.
//!
//! Handshakes run in their own tasks with a deadline, so a client that opens a connection
//! and says nothing holds one of [`MAX_HANDSHAKES`] slots for at most [`HANDSHAKE_TIMEOUT`]
//! and never blocks the accept loop. Finished connections wait in a small bounded queue
//! for the server to take them; while it is full no further connection is accepted. The
//! failed handshakes are counted process-wide and served by [`HandshakeCollector`].

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use toctou_schema::metrics::Family;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes that failed (`error`: plain text to a TLS port, an untrusted or missing
/// client certificate...) and that ran out of time (`timeout`), on every TLS listener of the
/// process. Process-wide, like the listeners: one count however many ports.
static HANDSHAKE_FAILURES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

static HANDSHAKE_FAILURES_FAMILY: LazyLock<Family> = LazyLock::new(|| {
    Family::counter(
        "toctou_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by reason.",
        &["reason"],
    )
});

/// Reads `toctou_tls_handshake_failures_total{reason}` into a node's registry.
pub struct HandshakeCollector;

impl Collector for HandshakeCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![HANDSHAKE_FAILURES_FAMILY.desc()]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counts = ["error", "timeout"]
            .iter()
            .zip(&HANDSHAKE_FAILURES)
            .map(|(reason, n)| ([*reason], n.load(Ordering::Relaxed) as f64));
        vec![HANDSHAKE_FAILURES_FAMILY.values(counts)]
    }
}

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; beyond it accepting waits.
pub const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Why the TLS configuration could not be built: each names the file and flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-cert {path}: no CERTIFICATE block in it")]
    NoCertificate { path: PathBuf },
    #[error("--tls-key {path}: {source} (expected a PKCS#8, PKCS#1 or SEC1 private key in PEM)")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-client-ca {path}: {source}")]
    ClientCa {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-client-ca {path}: no usable CA certificate in it")]
    NoClientCa { path: PathBuf },
    #[error("--tls-client-ca {path}: {source}")]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("--tls-cert/--tls-key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server configuration for `cert` and `key`; with `client_ca`, clients must present a
/// certificate issued by it (mutual TLS). HTTP/2 and HTTP/1.1 are offered (gRPC needs h2).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(cert).map_err(|source| TlsError::Certificate {
        path: cert.to_path_buf(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = read_certs(ca).map_err(|source| TlsError::ClientCa {
                path: ca.to_path_buf(),
                source,
            })?;
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(TlsError::NoClientCa {
                    path: ca.to_path_buf(),
                });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.to_path_buf(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, private_key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// A listener whose connections have finished a TLS handshake; an axum [`Listener`] and,
/// through [`TlsListener::into_incoming`], a tonic incoming stream.
///
/// [`Listener`]: axum::serve::Listener
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local_addr,
            accepting,
        })
    }

    /// The connections as tonic's `serve_with_incoming*` takes them.
    pub fn into_incoming(
        self,
    ) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let (stream, _) = axum::serve::Listener::accept(&mut listener).await;
            Some((Ok(stream), listener))
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Stops accepting: the port stays bound only as long as someone serves it.
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        // The slot is taken before accepting: backpressure at the door.
        let Ok(slot) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            _ = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(slot);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(err)) => {
                    HANDSHAKE_FAILURES[0].fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %err, "tls handshake failed");
                }
                Err(_) => {
                    HANDSHAKE_FAILURES[1].fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "tls handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("toctou-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn good_pem_files_make_a_config() {
        let dir = scratch("good");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &ca.cert.pem());
        let key = write(&dir, "key.pem", &ca.key_pair.serialize_pem());
        let config = server_config(&cert, &key, None).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        let mtls = server_config(&cert, &key, Some(&cert)).unwrap();
        assert_eq!(mtls.alpn_protocols.len(), 2);
    }

    #[test]
    fn bad_pem_files_name_the_flag_and_file() {
        let dir = scratch("bad");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &ca.cert.pem());
        let key = write(&dir, "key.pem", &ca.key_pair.serialize_pem());
        let junk = write(&dir, "junk.pem", "not a pem file\n");
        let missing = dir.join("missing.pem");

        let err = server_config(&missing, &key, None).unwrap_err();
        assert!(matches!(err, TlsError::Certificate { .. }), "{err}");
        assert!(err.to_string().starts_with("--tls-cert "), "{err}");
        let err = server_config(&junk, &key, None).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let err = server_config(&cert, &junk, None).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"), "{err}");
        // The key of a certificate in place of the key: no key block at all.
        let err = server_config(&cert, &cert, None).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        let err = server_config(&cert, &key, Some(&junk)).unwrap_err();
        assert!(matches!(err, TlsError::NoClientCa { .. }), "{err}");
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        let other_key = write(&dir, "other.pem", &other.serialize_pem());
        let err = server_config(&cert, &other_key, None).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");
    }

    /// Clients that connect and never speak hold a handshake slot each, not the door: a
    /// real client behind them is accepted at once.
    #[tokio::test]
    async fn a_silent_connection_does_not_block_the_next_one() {
        use axum::serve::Listener as _;
        let dir = scratch("silent");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &ca.cert.pem());
        let key = write(&dir, "key.pem", &ca.key_pair.serialize_pem());
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener =
            TlsListener::new(tcp, server_config(&cert, &key, None).unwrap()).unwrap();

        let silent: Vec<TcpStream> =
            futures::future::join_all((0..8).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();

        let mut roots = RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await.unwrap()
        });
        let (_stream, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the real client was accepted behind the silent ones");
        let client = connecting.await.unwrap();
        assert_eq!(peer, client.get_ref().0.local_addr().unwrap());
        drop(silent);
    }
}

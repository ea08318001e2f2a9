//! TLS on the front doors: the certificate and key files, the Flight SQL
//! server's configuration, and an HTTPS listener for the HTTP API.
//!
//! The HTTPS listener does handshakes off the accept loop (a slow or
//! silent client holds only its own task, for at most
//! [`HANDSHAKE_TIMEOUT`]) and answers a plaintext HTTP request with a 400
//! that says to use `https://`, rather than a reset connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Certificate and key files are PEM text, far smaller than this.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server certificate (chain) and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files read and checked: the certificate chain and key as PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl TlsFiles {
    /// Reads both files; an error names the file and what is wrong.
    pub fn load(&self) -> Result<TlsIdentity, String> {
        let read = |flag: &str, path: &PathBuf| {
            use std::io::Read;
            let cannot = |e: std::io::Error| format!("cannot read {flag} {}: {e}", path.display());
            let mut bytes = vec![];
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
                .map_err(cannot)?;
            if bytes.len() as u64 > MAX_PEM_BYTES {
                return Err(format!(
                    "{flag} {} is larger than 1 MiB: not a PEM file",
                    path.display()
                ));
            }
            Ok(bytes)
        };
        let cert_pem = read("--tls-cert", &self.cert)?;
        let key_pem = read("--tls-key", &self.key)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--tls-cert {} holds no PEM certificate",
                self.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let encrypted = key_pem
                .windows(b"ENCRYPTED".len())
                .any(|w| w == b"ENCRYPTED");
            match encrypted {
                true => format!(
                    "--tls-key {} is encrypted; give the key unencrypted (e.g. `openssl pkey \
                     -in key.pem -out plain-key.pem`), readable by strata only",
                    self.key.display()
                ),
                false => format!(
                    "--tls-key {} holds no PEM private key ({e})",
                    self.key.display()
                ),
            }
        })?;
        let identity = TlsIdentity {
            cert_pem,
            key_pem,
            certs,
            key: Arc::new(key),
        };
        // Fails here, at start, when the key does not fit the certificate.
        identity.rustls_config(vec![])?;
        Ok(identity)
    }
}

impl TlsIdentity {
    fn rustls_config(&self, alpn: Vec<Vec<u8>>) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| format!("--tls-cert and --tls-key do not make a usable pair: {e}"))?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }

    /// For the Flight SQL server (tonic).
    pub fn tonic_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// An HTTPS listener on `listener`.
    pub fn https_listener(&self, listener: TcpListener) -> Result<HttpsListener, String> {
        let local = listener
            .local_addr()
            .map_err(|e| format!("HTTPS listener: {e}"))?;
        let config = self.rustls_config(vec![b"http/1.1".to_vec()])?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(HttpsListener {
            rx,
            local,
            _task: AbortOnDrop(task),
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections that finished their TLS handshake, for `axum::serve`.
pub struct HttpsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _task: AbortOnDrop,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended (the listener failed for good): serve
            // no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, go on.
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, acceptor)).await {
                Ok(Ok(Some(tls))) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// A TLS connection, or `None` when the client spoke plaintext HTTP (it
/// was told to use https).
async fn handshake(
    mut tcp: TcpStream,
    acceptor: TlsAcceptor,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    // 0x16: a TLS handshake record. Anything else printable is plaintext.
    if n == 1 && first[0] != 0x16 && first[0].is_ascii_alphabetic() {
        let body = "this port speaks HTTPS: use https:// (TLS is on, --tls-cert)\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(response.as_bytes()).await?;
        let _ = tcp.shutdown().await;
        return Ok(None);
    }
    acceptor.accept(tcp).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, cert: &[u8], key: &[u8]) -> TlsFiles {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let err = |f: TlsFiles| f.load().err().expect("refused");
        let e = err(files(dir.path(), b"", b""));
        assert!(
            e.contains("--tls-cert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = err(files(dir.path(), cert, encrypted));
        assert!(e.contains("is encrypted"), "{e}");
        let e = err(files(dir.path(), cert, b"not a key"));
        assert!(
            e.contains("--tls-key") && e.contains("no PEM private key"),
            "{e}"
        );
        let big = vec![b'a'; (MAX_PEM_BYTES + 10) as usize];
        let e = err(files(dir.path(), &big, b""));
        assert!(e.contains("larger than 1 MiB"), "{e}");
        let e = err(TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("key.pem"),
        });
        assert!(e.contains("cannot read --tls-cert"), "{e}");
    }
}

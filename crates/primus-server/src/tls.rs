//! TLS from the `[tls]` files: the gRPC listener's acceptor, the peers' client
//! config and the HTTP listener's acceptor, all from the same three files and all
//! with the ring provider.
//!
//! The files are read and checked at start (and by `--check-config`): a missing
//! or unparseable file, a key that does not match the certificate, an empty CA
//! bundle are configuration errors naming the key.
//!
//! The gRPC listener does its own handshakes ([`incoming`]) rather than tonic's,
//! so that what would otherwise be a dropped connection becomes a clear gRPC
//! error, decided by crate::auth from the [`ConnInfo`] of each connection:
//! a plaintext client on the TLS port gets `FAILED_PRECONDITION` ("serves TLS
//! only"), and with `require_client_cert` a client without a certificate gets
//! `UNAUTHENTICATED` (the handshake asks for a certificate and verifies any that is
//! presented against `ca_file`, but lets a client without one finish, so it can
//! be told). Handshakes run concurrently, each bounded by `handshake_timeout_ms`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A configuration problem: the dotted key and a one-line message.
pub type KeyedError = (String, String);

/// The contents of the `[tls]` files, parsed and checked.
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("certs", &self.certs.len())
            .field("roots", &self.roots.len())
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, KeyedError> {
    std::fs::read(path).map_err(|e| (key.to_string(), format!("cannot read {}: {e}", path.display())))
}

fn certs(key: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, KeyedError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (key.to_string(), format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err((key.to_string(), format!("no PEM certificate (BEGIN CERTIFICATE) in {}", path.display())));
    }
    Ok(certs)
}

/// Read and check the `[tls]` files.
pub fn load(t: &TlsSection) -> Result<TlsFiles, KeyedError> {
    let cert_pem = read("tls.cert_file", &t.cert_file)?;
    let key_pem = read("tls.key_file", &t.key_file)?;
    let ca_pem = read("tls.ca_file", &t.ca_file)?;
    let certs = certs("tls.cert_file", &t.cert_file, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ("tls.key_file".to_string(), format!("no usable PEM private key in {}: {e}", t.key_file.display()))
    })?;
    let mut roots = RootCertStore::empty();
    for c in self::certs("tls.ca_file", &t.ca_file, &ca_pem)? {
        roots.add(c).map_err(|e| {
            ("tls.ca_file".to_string(), format!("{} holds an unusable CA certificate: {e}", t.ca_file.display()))
        })?;
    }
    if let Some(name) = &t.server_name {
        ServerName::try_from(name.as_str())
            .map_err(|e| ("tls.server_name".to_string(), format!("{name:?} is not a DNS name or IP address: {e}")))?;
    }
    if t.handshake_timeout_ms == 0 {
        return Err(("tls.handshake_timeout_ms".into(), "must be greater than 0".into()));
    }
    let files = TlsFiles { cert_pem, key_pem, ca_pem, certs, key, roots: Arc::new(roots) };
    // Catches a key that does not belong to the certificate, or an unsupported key type.
    server_config(&files, ClientCerts::Required).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                format!("{} is not the key of the certificate in tls.cert_file", t.key_file.display())
            }
            e => format!("cannot use it with tls.cert_file: {e}"),
        };
        ("tls.key_file".to_string(), why)
    })?;
    Ok(files)
}

/// Validation only (see [`load`]).
pub fn check(t: &TlsSection) -> Result<(), KeyedError> {
    load(t).map(|_| ())
}

/// What the handshake asks of clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientCerts {
    /// Not asked for.
    None,
    /// Asked for and verified against `ca_file` when presented; a client without
    /// one completes the handshake (the gRPC layer refuses its requests).
    Optional,
    /// The handshake fails without a certificate from `ca_file`.
    Required,
}

/// A rustls server config from the files. No ALPN protocols are set.
fn server_config(files: &TlsFiles, client_certs: ClientCerts) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = if client_certs == ClientCerts::None {
        builder.with_no_client_auth()
    } else {
        let verifier = WebPkiClientVerifier::builder_with_provider(files.roots.clone(), provider());
        let verifier = if client_certs == ClientCerts::Optional { verifier.allow_unauthenticated() } else { verifier };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| rustls::Error::General(e.to_string()))?)
    };
    builder.with_single_cert(files.certs.clone(), files.key.clone_key())
}

/// The gRPC listener's acceptor: this node's identity, ALPN `h2`, and client
/// certificates asked for (and checked when presented) when `require_client_cert`.
pub fn grpc_acceptor(t: &TlsSection, files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let certs = if t.require_client_cert { ClientCerts::Optional } else { ClientCerts::None };
    let mut config = server_config(files, certs)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

pub use crate::auth::ConnInfo;

/// One accepted connection of the gRPC listener.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(s) => ConnInfo { remote: s.peer_addr().ok(), tls: false, client_cert: false },
            Conn::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    tls: true,
                    client_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accept connections on `listener`. Without TLS every connection is plaintext.
/// With TLS, a connection whose first byte starts a TLS handshake is handshaken
/// (in its own task, bounded by `handshake_timeout`); any other is passed on as
/// plaintext, for the gRPC layer to refuse with a clear error. The listener is
/// closed when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Some((acceptor, timeout)) = &tls else {
                if tx.send(Ok(Conn::Plain(stream))).await.is_err() {
                    return;
                }
                continue;
            };
            let (acceptor, timeout, tx) = (acceptor.clone(), *timeout, tx.clone());
            tokio::spawn(async move {
                let conn = tokio::time::timeout(timeout, async {
                    let mut first = [0u8; 1];
                    match stream.peek(&mut first).await {
                        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {
                            acceptor.accept(stream).await.map(|s| Some(Conn::Tls(Box::new(s))))
                        }
                        Ok(1) => Ok(Some(Conn::Plain(stream))),
                        Ok(_) => Ok(None), // closed before sending anything
                        Err(e) => Err(e),
                    }
                })
                .await;
                match conn {
                    Ok(Ok(Some(c))) => {
                        let _ = tx.send(Ok(c)).await;
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%remote, timeout_ms = timeout.as_millis(), "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What this node presents to and expects from its peers.
pub fn peer_tls(t: &TlsSection, files: &TlsFiles) -> primus_raft::PeerTls {
    primus_raft::PeerTls {
        ca_pem: files.ca_pem.clone(),
        cert_pem: files.cert_pem.clone(),
        key_pem: files.key_pem.clone(),
        server_name: t.server_name.clone(),
        handshake_timeout: t.handshake_timeout(),
    }
}

/// A TLS acceptor for the HTTP listener, from the same `[tls]` files as the gRPC
/// port (client certificates required when `require_client_cert`). ALPN offers
/// `http/1.1` only. The handshake timeout is the caller's (`handshake_timeout_ms`).
pub fn http_tls_acceptor(t: &TlsSection) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let files = load(t).map_err(|(k, m)| anyhow::anyhow!("key `{k}`: {m}"))?;
    let certs = if t.require_client_cert { ClientCerts::Required } else { ClientCerts::None };
    let mut config = server_config(&files, certs)
        .map_err(|e| anyhow::anyhow!("key `tls.key_file`: cannot use it with tls.cert_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `[tls]`: this node's certificate and the CA that signed every coordinator's.
/// Files are read at start (and by `--check-config`); see docs/security.md.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of this node: the server certificate, and the client
    /// certificate it presents to peers (so serverAuth + clientAuth EKU, or none).
    pub cert_file: std::path::PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: std::path::PathBuf,
    /// PEM CA bundle that verifies peers' server certificates and, when
    /// `require_client_cert`, every client certificate.
    pub ca_file: std::path::PathBuf,
    /// Mutual TLS: refuse every client and peer without a certificate from `ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Name to verify peers' certificates against, instead of the host of their address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Bound on one TLS handshake, accepted or made.
    #[serde(default = "d_handshake_timeout")]
    pub handshake_timeout_ms: u64,
}

fn d_handshake_timeout() -> u64 {
    5000
}

impl TlsSection {
    pub fn handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(dir: &Path) -> TlsSection {
        TlsSection {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ca_file: dir.join("ca.pem"),
            require_client_cert: false,
            server_name: None,
            handshake_timeout_ms: 1000,
        }
    }

    #[test]
    fn missing_and_garbage_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let t = section(dir.path());
        assert_eq!(load(&t).unwrap_err().0, "tls.cert_file");
        std::fs::write(&t.cert_file, "not a certificate").unwrap();
        std::fs::write(&t.key_file, "not a key").unwrap();
        std::fs::write(&t.ca_file, "not a CA").unwrap();
        let (key, msg) = load(&t).unwrap_err();
        assert_eq!(key, "tls.cert_file", "{msg}");
        assert!(msg.contains("no PEM certificate"), "{msg}");
    }

    fn self_signed() -> (String, String) {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&k).unwrap();
        (c.pem(), k.serialize_pem())
    }

    #[test]
    fn good_files_load_and_a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = section(dir.path());
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        std::fs::write(&t.cert_file, &cert).unwrap();
        std::fs::write(&t.key_file, &key).unwrap();
        std::fs::write(&t.ca_file, &cert).unwrap();
        load(&t).unwrap();
        t.require_client_cert = true;
        assert!(http_tls_acceptor(&t).is_ok());
        std::fs::write(&t.key_file, &other_key).unwrap();
        let (k, msg) = load(&t).unwrap_err();
        assert_eq!(k, "tls.key_file", "{msg}");
        t.server_name = Some("not a name!".into());
        std::fs::write(&t.key_file, &key).unwrap();
        assert_eq!(load(&t).unwrap_err().0, "tls.server_name");
        assert!(!format!("{:?}", load(&section(dir.path())).unwrap()).contains("PRIVATE"));
    }
}

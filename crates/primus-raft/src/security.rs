//! How a coordinator reaches other coordinators: plaintext or TLS, and the shared
//! bearer token it presents. Used for Raft traffic, observation reports and
//! forwarded client requests alike, so every outgoing channel is built one way.

use std::fmt;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The metadata key of the bearer token (the HTTP `authorization` header).
pub const AUTHORIZATION: &str = "authorization";

/// TLS material this node uses towards its peers (PEM bytes).
pub struct PeerTls {
    /// CA bundle that verifies peers' server certificates.
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain, presented as a client certificate.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// Verify peers' certificates against this name instead of their address's host.
    pub server_name: Option<String>,
    /// Bound on one handshake.
    pub handshake_timeout: Duration,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Outgoing security towards peers; cheap to clone. `Default` is plaintext, no token.
#[derive(Clone, Default)]
pub struct PeerSecurity {
    tls: Option<ClientTlsConfig>,
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<AsciiMetadataValue>,
}

impl fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSecurity")
            .field("tls", &self.tls.is_some())
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PeerSecurity {
    /// `tls`: connect with `https` and present this node's certificate.
    /// `authorization`: the `Bearer <token>` value to send with every request.
    pub fn new(tls: Option<PeerTls>, authorization: Option<AsciiMetadataValue>) -> Self {
        let tls = tls.map(|t| {
            let mut c = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&t.ca_pem))
                .identity(Identity::from_pem(&t.cert_pem, &t.key_pem))
                .timeout(t.handshake_timeout);
            if let Some(name) = t.server_name {
                c = c.domain_name(name);
            }
            c
        });
        let authorization = authorization.map(|mut v| {
            v.set_sensitive(true);
            v
        });
        PeerSecurity { tls, authorization }
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// An endpoint for the peer at `addr` (`HOST:PORT`), `https` when TLS is on.
    /// Callers add their own timeouts and connect (usually lazily).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        match &self.tls {
            Some(tls) => ep.tls_config(tls.clone()).map_err(|e| format!("TLS setup for {addr}: {e}")),
            None => Ok(ep),
        }
    }

    /// Attach this node's token (when one is configured) to an outgoing request.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(v) = &self.authorization {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
    }

    /// The `authorization` value as the caller of a forwarded request gave it.
    pub fn bearer(token: &str) -> Result<AsciiMetadataValue, String> {
        let mut v: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token must be printable ASCII".to_string())?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// A status's message followed by its error sources: tonic's own message for a
/// failed connection is only "transport error", the cause (refused, TLS
/// certificate not trusted, …) is in the source chain.
pub fn status_detail(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token_or_key() {
        let s = PeerSecurity::new(None, Some(PeerSecurity::bearer("s3cret-token").unwrap()));
        let d = format!("{s:?}");
        assert!(!d.contains("s3cret"), "{d}");
        let t = PeerTls {
            ca_pem: vec![],
            cert_pem: vec![],
            key_pem: b"PRIVATE-KEY-BYTES".to_vec(),
            server_name: None,
            handshake_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("PRIVATE"));
    }

    #[test]
    fn plaintext_endpoint_is_http_and_tls_endpoint_is_https() {
        let plain = PeerSecurity::default();
        assert_eq!(plain.endpoint("127.0.0.1:1").unwrap().uri().scheme_str(), Some("http"));
        let mut req = tonic::Request::new(());
        plain.authorize(&mut req);
        assert!(req.metadata().get(AUTHORIZATION).is_none());
        let with_token = PeerSecurity::new(None, Some(PeerSecurity::bearer("t").unwrap()));
        with_token.authorize(&mut req);
        assert_eq!(req.metadata().get(AUTHORIZATION).map(|v| v.to_str().unwrap()), Some("Bearer t"));
    }
}

//! Who may call the gRPC port: a tower layer in front of every service.
//!
//! 1. With `[tls]`, a request that came over a plaintext connection is refused
//!    with `FAILED_PRECONDITION` (the port serves TLS only; see crate::tls for why
//!    such connections get this far), and with `require_client_cert` one from a
//!    client that presented no certificate with `UNAUTHENTICATED`.
//! 2. With `[auth]`, the bearer token. The layer sees the gRPC method path
//!    (`/primus.v1.Coordinator/<Method>`) and decides from [`classify`]: writes
//!    always need the token, reads only with `require_token_for_reads`, and the
//!    peer service (`/primus.raft.Raft/…`) always (coordinators share the token
//!    file). Anything not listed as a read is treated as a write, so a new RPC is
//!    protected until someone classifies it (and a unit test fails until they
//!    do). A missing token is `UNAUTHENTICATED`, a wrong one `PERMISSION_DENIED`.
//!    The token is compared in constant time and never logged.

use futures::future::{Either, Ready};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;

/// What the gRPC layer knows of the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<std::net::SocketAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// The client presented a certificate, verified against `ca_file`.
    pub client_cert: bool,
}

/// The Coordinator service's gRPC path prefix.
pub const COORDINATOR_PREFIX: &str = "/primus.v1.Coordinator/";
/// The peer (Raft) service's gRPC path prefix.
pub const PEER_PREFIX: &str = "/primus.raft.v1.Raft/";

/// Coordinator RPCs that change something: they always need the token.
/// (Failover covers switchovers too.)
pub const WRITE_METHODS: &[&str] = &[
    "AddMember",
    "RemoveMember",
    "TransferLeader",
    "RegisterCluster",
    "UnregisterCluster",
    "Failover",
    "Ack",
    "SetPromotionRule",
    "Maintenance",
    "SetAutomaticFailover",
    "SetGlobalAutomaticFailover",
    "Rejoin",
    "SetInstanceDatacenter",
    "ForgetInstance",
    "Relocate",
    "SetClusterSettings",
    "SetSemiSync",
    // Agents: a lease lets a server take writes; only holders of the token may ask.
    "RegisterAgent",
    "RenewLease",
];

/// Coordinator RPCs that only read: open unless `require_token_for_reads`.
pub const READ_METHODS: &[&str] = &[
    "GetStatus",
    "ListClusters",
    "Audit",
    "GetTopology",
    "History",
    "Analysis",
    "GetPrimary",
    "WatchPrimary",
    "Divergence",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Coordinator-to-coordinator traffic.
    Peer,
}

/// What a request to `path` needs. Unknown methods and services count as writes.
pub fn classify(path: &str) -> Access {
    if let Some(method) = path.strip_prefix(COORDINATOR_PREFIX) {
        if READ_METHODS.contains(&method) {
            return Access::Read;
        }
        return Access::Write;
    }
    if path.starts_with(PEER_PREFIX) {
        return Access::Peer;
    }
    Access::Write
}

/// The shared bearer token. Prints as `<redacted>`; compared by SHA-256 digest in
/// constant time, so neither its content nor its length leaks through timing.
#[derive(Clone)]
pub struct Token {
    value: String,
    digest: [u8; 32],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Token {
    /// A token must be non-empty printable ASCII without whitespace (it travels in
    /// an HTTP header).
    pub fn new(value: &str) -> Result<Token, String> {
        if value.is_empty() {
            return Err("the token is empty".into());
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces or control characters".into());
        }
        Ok(Token { value: value.to_string(), digest: sha256(value.as_bytes()) })
    }

    /// The `authorization` metadata value a peer sends (marked sensitive).
    pub fn bearer(&self) -> Result<tonic::metadata::AsciiMetadataValue, String> {
        primus_raft::PeerSecurity::bearer(&self.value)
    }

    fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        sha256(presented).ct_eq(&self.digest).into()
    }
}

/// What a request must bring.
#[derive(Debug, Default)]
pub struct AuthPolicy {
    /// `[auth]`: the shared token.
    pub token: Option<Token>,
    pub require_token_for_reads: bool,
    /// `[tls]`: refuse requests that came in plaintext.
    pub tls_only: bool,
    /// `[tls] require_client_cert`: refuse requests from clients without a certificate.
    pub require_client_cert: bool,
}

impl AuthPolicy {
    fn requires_anything(&self) -> bool {
        self.token.is_some() || self.tls_only || self.require_client_cert
    }

    /// Ok when a request to `path` with these headers, on a connection described
    /// by `conn` (absent: unknown, treated as plaintext), may go through.
    pub fn check(&self, path: &str, headers: &http::HeaderMap, conn: Option<&ConnInfo>) -> Result<(), Status> {
        if self.tls_only && !conn.is_some_and(|c| c.tls) {
            return Err(Status::failed_precondition(
                "this coordinator serves TLS only: connect with TLS, trusting its CA (primusctl --ca FILE or PRIMUS_CA)",
            ));
        }
        if self.require_client_cert && !conn.is_some_and(|c| c.client_cert) {
            return Err(Status::unauthenticated(
                "this coordinator requires a TLS client certificate signed by its CA (require_client_cert): \
                 pass --cert and --key",
            ));
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let access = classify(path);
        if access == Access::Read && !self.require_token_for_reads {
            return Ok(());
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(match access {
                Access::Read => "this coordinator requires a token for reads too: pass --token-file",
                Access::Write => "this coordinator requires a token for writes: pass --token-file",
                Access::Peer => {
                    "this coordinator requires the shared token from its peers: set the same [auth] token_file \
                     on every coordinator"
                }
            }));
        };
        let bytes = value.as_bytes();
        // RFC 6750: the scheme name is case-insensitive.
        let presented = match bytes.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
            _ => return Err(Status::unauthenticated("the authorization header must be `Bearer <token>`")),
        };
        if token.matches(presented) {
            Ok(())
        } else {
            Err(Status::permission_denied(match access {
                Access::Peer => {
                    "the token is not the one this coordinator accepts: every coordinator needs the same \
                     [auth] token_file"
                }
                _ => "the token is not the one this coordinator accepts: check --token-file (PRIMUS_TOKEN_FILE)",
            }))
        }
    }
}

/// Tower layer applying an [`AuthPolicy`] (or nothing, when `[auth]` is absent).
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    policy: Option<Arc<AuthPolicy>>,
}

impl AuthLayer {
    /// A layer that lets everything through when the policy requires nothing.
    pub fn new(policy: AuthPolicy) -> Self {
        AuthLayer { policy: policy.requires_anything().then(|| Arc::new(policy)) }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, policy: self.policy.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    policy: Option<Arc<AuthPolicy>>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(policy) = &self.policy {
            let conn = req.extensions().get::<ConnInfo>();
            if let Err(status) = policy.check(req.uri().path(), req.headers(), conn) {
                tracing::info!(
                    method = req.uri().path(),
                    remote = ?conn.and_then(|c| c.remote),
                    code = ?status.code(),
                    "request refused: {}",
                    status.message()
                );
                return Either::Left(futures::future::ready(Ok(status.into_http())));
            }
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `rpc Name(` lines of a service block in a .proto file.
    fn rpcs(proto: &str, service: &str) -> BTreeSet<String> {
        let start = proto.find(&format!("service {service} {{")).expect("service block");
        let block = &proto[start..];
        let block = &block[..block.find("\n}").expect("end of service")];
        block
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap_or_default().trim().to_string())
            .collect()
    }

    #[test]
    fn every_coordinator_rpc_in_the_proto_is_classified_exactly_once() {
        let proto = include_str!("../../../proto/primus.proto");
        let all = rpcs(proto, "Coordinator");
        assert!(all.len() >= 19, "parsed too few rpcs: {all:?}");
        let writes: BTreeSet<String> = WRITE_METHODS.iter().map(|s| s.to_string()).collect();
        let reads: BTreeSet<String> = READ_METHODS.iter().map(|s| s.to_string()).collect();
        assert!(writes.is_disjoint(&reads), "listed as both read and write: {:?}", writes.intersection(&reads));
        let classified: BTreeSet<String> = writes.union(&reads).cloned().collect();
        let unclassified: Vec<_> = all.difference(&classified).collect();
        assert!(
            unclassified.is_empty(),
            "rpcs in proto/primus.proto missing from auth::WRITE_METHODS or READ_METHODS: {unclassified:?}"
        );
        let stale: Vec<_> = classified.difference(&all).collect();
        assert!(stale.is_empty(), "classified rpcs that the proto no longer has: {stale:?}");
        for m in &writes {
            assert_eq!(classify(&format!("{COORDINATOR_PREFIX}{m}")), Access::Write);
        }
        for m in &reads {
            assert_eq!(classify(&format!("{COORDINATOR_PREFIX}{m}")), Access::Read);
        }
    }

    #[test]
    fn the_prefixes_are_the_generated_services_paths() {
        assert_eq!(COORDINATOR_PREFIX, format!("/{}/", primus_proto::v1::coordinator_server::SERVICE_NAME));
        assert_eq!(PEER_PREFIX, format!("/{}/", primus_proto::raft::raft_server::SERVICE_NAME));
    }

    #[test]
    fn peer_rpcs_and_unknown_paths_need_the_token() {
        let proto = include_str!("../../../proto/raft.proto");
        for m in rpcs(proto, "Raft") {
            assert_eq!(classify(&format!("{PEER_PREFIX}{m}")), Access::Peer, "{m}");
        }
        assert_eq!(classify("/primus.v1.Coordinator/SomethingNew"), Access::Write);
        assert_eq!(classify("/grpc.reflection.v1.ServerReflection/Info"), Access::Write);
    }

    fn headers(auth: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    fn check(p: &AuthPolicy, path: &str, h: &http::HeaderMap) -> Result<(), Status> {
        let conn = ConnInfo { remote: None, tls: false, client_cert: false };
        p.check(path, h, Some(&conn))
    }

    #[test]
    fn missing_token_is_unauthenticated_and_wrong_token_permission_denied() {
        let p = AuthPolicy { token: Some(Token::new("right").unwrap()), ..Default::default() };
        let write = "/primus.v1.Coordinator/RegisterCluster";
        let read = "/primus.v1.Coordinator/GetStatus";
        let e = check(&p, write, &headers(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("--token-file"), "{}", e.message());
        assert_eq!(check(&p, write, &headers(Some("Bearer wrong"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(check(&p, write, &headers(Some("Bearer righ"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(check(&p, write, &headers(Some("Basic right"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(check(&p, write, &headers(Some("Bearer right"))).is_ok());
        assert!(check(&p, write, &headers(Some("bearer right"))).is_ok());
        assert!(check(&p, read, &headers(None)).is_ok());
        assert_eq!(
            check(&p, "/primus.raft.Raft/Vote", &headers(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let p = AuthPolicy { require_token_for_reads: true, ..p };
        assert_eq!(check(&p, read, &headers(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(check(&p, read, &headers(Some("Bearer right"))).is_ok());
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(Token::new("").is_err());
        assert!(Token::new("two words").is_err());
        assert!(Token::new("tab\there").is_err());
        let t = Token::new("s3cret").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        let p = AuthPolicy { token: Some(t), ..Default::default() };
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn plaintext_on_a_tls_port_and_missing_client_certs_are_refused_before_the_token() {
        use ConnInfo;
        let p = AuthPolicy { tls_only: true, require_client_cert: true, ..Default::default() };
        let read = "/primus.v1.Coordinator/GetStatus";
        let h = headers(None);
        let plain = ConnInfo { remote: None, tls: false, client_cert: false };
        let tls_no_cert = ConnInfo { tls: true, ..plain.clone() };
        let tls_cert = ConnInfo { client_cert: true, ..tls_no_cert.clone() };
        let e = p.check(read, &h, Some(&plain)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("TLS only") && e.message().contains("--ca"), "{}", e.message());
        assert_eq!(p.check(read, &h, None).unwrap_err().code(), tonic::Code::FailedPrecondition);
        let e = p.check(read, &h, Some(&tls_no_cert)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("client certificate") && e.message().contains("--cert"), "{}", e.message());
        assert!(p.check(read, &h, Some(&tls_cert)).is_ok());
        assert!(AuthLayer::new(AuthPolicy::default()).policy.is_none());
    }
}

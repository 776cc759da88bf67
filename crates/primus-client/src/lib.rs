//! Client for a primus coordinator group.
//!
//! Give it every coordinator's `host:port`; it finds one that answers, and moves on
//! to the next when one is down. Writes may be sent to any node: followers forward
//! them to the leader. A call is retried (with backoff and jitter) only when it
//! certainly did not take effect — the endpoint was unreachable, or the group had
//! no leader — and never past the overall timeout.
//!
//! Security (see docs/security.md): with [`ClientOptions::tls`] every endpoint is
//! `https` and verified against the given CA (optionally presenting a client
//! certificate); with [`ClientOptions::token`] every request carries
//! `authorization: Bearer <token>`. A refused token, or a TLS handshake that fails
//! on every endpoint, is reported at once and not retried.

pub mod json;

use primus_proto::v1::coordinator_client::CoordinatorClient;
pub use primus_proto::v1::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoints given (use --endpoints HOST:PORT,... or PRIMUS_ENDPOINTS)")]
    NoEndpoints,
    #[error("bad endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("no coordinator answered within {timeout_ms} ms ({details})")]
    Unreachable { timeout_ms: u128, details: String },
    #[error("the group has no leader right now ({0}); a majority of coordinators may be down")]
    NoLeader(String),
    #[error("{endpoint}: {message}")]
    Rpc { endpoint: String, code: Code, message: String },
    /// The coordinator refused the call's credentials: no token
    /// (`UNAUTHENTICATED`) or a wrong one (`PERMISSION_DENIED`).
    #[error("{endpoint}: {}: {message}", auth_failure(*code))]
    Auth { endpoint: String, code: Code, message: String },
    /// TLS failed with every endpoint: a refused or untrusted certificate, a
    /// missing client certificate, or TLS on one side only.
    #[error("{endpoint}: {message}")]
    Tls { endpoint: String, message: String },
    /// Unusable TLS files or token: a local problem, nothing was sent.
    #[error("{0}")]
    Config(String),
}

fn auth_failure(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => "not authenticated",
        _ => "permission denied",
    }
}

impl ClientError {
    /// The gRPC code behind the error, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } | ClientError::Auth { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// TLS settings of a client: the CA that signed the coordinators' certificates
/// and, for coordinators with `require_client_cert`, a client certificate. PEM bytes.
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    /// Verify the coordinators' certificates against this name instead of the
    /// host of each endpoint.
    pub domain: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("cert_pem", &self.cert_pem.as_ref().map(|c| format!("{} bytes", c.len())))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("domain", &self.domain)
            .finish()
    }
}

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Config(format!("cannot read {what} {}: {e}", path.display())))
}

fn check_certs(what: &str, path: &Path, pem: &[u8]) -> Result<(), ClientError> {
    let n = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("{what} {} is not valid PEM: {e}", path.display())))?
        .len();
    if n == 0 {
        return Err(ClientError::Config(format!(
            "{what} {} holds no PEM certificate (BEGIN CERTIFICATE)",
            path.display()
        )));
    }
    Ok(())
}

impl TlsOptions {
    /// Read a CA bundle and, optionally, a client certificate and its key (both
    /// or neither), checking that each holds what it should.
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<TlsOptions, ClientError> {
        if cert.is_some() != key.is_some() {
            return Err(ClientError::Config("a client certificate needs its key, and a key its certificate".into()));
        }
        let ca_pem = read_file("CA file", ca)?;
        check_certs("CA file", ca, &ca_pem)?;
        let (cert_pem, key_pem) = match (cert, key) {
            (None, None) => (None, None),
            (Some(c), Some(k)) => {
                let cert_pem = read_file("client certificate", c)?;
                check_certs("client certificate", c, &cert_pem)?;
                let key_pem = read_file("client key", k)?;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    ClientError::Config(format!("client key {} holds no usable PEM private key: {e}", k.display()))
                })?;
                (Some(cert_pem), Some(key_pem))
            }
            _ => (None, None),
        };
        Ok(TlsOptions { ca_pem, cert_pem, key_pem, domain: None })
    }

    fn tonic_config(&self, handshake_timeout: Duration) -> ClientTlsConfig {
        let mut c =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem)).timeout(handshake_timeout);
        if let (Some(cert), Some(key)) = (&self.cert_pem, &self.key_pem) {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// Read a bearer token from a file: surrounding whitespace is trimmed, and an
/// empty file is an error.
pub fn read_token_file(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ClientError::Config(format!("cannot read token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ClientError::Config(format!("token file {} is empty", path.display())));
    }
    Ok(token.to_string())
}

/// Adds `authorization: Bearer <token>` to every request (when there is a token).
#[derive(Clone)]
pub struct TokenInterceptor(Option<AsciiMetadataValue>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// One endpoint's channel, with the token added to every request.
pub type Transport = InterceptedService<Channel, TokenInterceptor>;

#[derive(Clone)]
pub struct ClientOptions {
    /// Overall deadline of one client call, retries included.
    pub timeout: Duration,
    /// TCP connect timeout per endpoint, and bound on a TLS handshake.
    pub connect_timeout: Duration,
    /// Recorded in the audit log as who asked.
    pub actor: String,
    /// Connect with TLS (`https`). Without it, plaintext.
    pub tls: Option<TlsOptions>,
    /// Bearer token sent with every request. Never printed.
    pub token: Option<String>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("actor", &self.actor)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(1000),
            actor: default_actor(),
            tls: None,
            token: None,
        }
    }
}

/// `primus-client user@host`, for the audit trail.
pub fn default_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{user}@{host}")
}

/// A fencing agent's lease timings, sent when it registers (0: unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentTimings {
    pub ttl_ms: u64,
    pub renew_interval_ms: u64,
    pub fence_timeout_ms: u64,
}

pub struct Client {
    endpoints: Vec<(String, Transport)>,
    /// Index of the endpoint that answered last; tried first next time.
    preferred: AtomicUsize,
    opts: ClientOptions,
    /// What a channel to a coordinator that is not among the endpoints needs (a
    /// leader named by a follower, for [`Client::status`]).
    tls: Option<ClientTlsConfig>,
    authorization: Option<AsciiMetadataValue>,
    /// Channels to such coordinators, kept for the next call.
    others: Mutex<HashMap<String, Transport>>,
}

/// Whether a call leaves the coordinators as they were (a read: any failure may be
/// retried) or may change them (a write: only a failure that certainly had no
/// effect may be retried).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
    /// A write sent with a request id the coordinators recognise when it is asked
    /// again (a failover): a repeat is answered with the first attempt's outcome, so
    /// it may be retried after any failure a read may be retried after.
    IdempotentWrite,
}

/// Pause before retry round `round` (1 for the first retry): 50 ms doubling up to
/// 250 ms, of which the upper half is spread by `jitter` (in [0, 1)) so that many
/// clients do not retry in step. Short enough that a call waiting out an election
/// (about half a second) answers at most a quarter of a second after the new leader
/// is there; a round costs each coordinator one cheap request.
fn backoff(round: u32, jitter: f64) -> Duration {
    const FIRST_MS: u64 = 50;
    const MAX_MS: u64 = 250;
    let base = (FIRST_MS << round.saturating_sub(1).min(16)).min(MAX_MS);
    let spread = (base / 2) as f64 * jitter.clamp(0.0, 1.0);
    Duration::from_millis(base / 2 + spread as u64)
}

/// How long one attempt may take in retry round `round` (0 for the first), with
/// `remaining` of the call's budget left. A write is never cut short (once sent it
/// may take effect, so it could not be retried anyway). A read is, so that one frozen
/// or cut-off endpoint cannot use up the whole budget: 1 s in the first round,
/// doubling each round so that a slow but working group still answers.
fn attempt_timeout(effect: Effect, round: u32, remaining: Duration) -> Duration {
    match effect {
        Effect::Write | Effect::IdempotentWrite => remaining,
        Effect::Read => remaining.min(Duration::from_secs(1) * (1u32 << round.min(16))),
    }
}

/// A fresh request id for a failover: 128 random bits in hex (32 characters), the
/// same for every attempt of one call (also primusd's HTTP switchover action).
pub fn new_request_id() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// Whether `s` was made up on this side from a transport failure (it carries the
/// error as its source) rather than answered by a coordinator.
fn local(s: &Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// Whether the request certainly never left this process: the connection (TCP or
/// TLS) could not be established, or it closed before the request was handed to it
/// (hyper's "canceled": a long-lived client's first call after its coordinator
/// died). A connection that broke later may have delivered it.
fn never_sent(s: &Status) -> bool {
    sources(s).iter().any(|e| {
        e.downcast_ref::<tonic::ConnectError>().is_some()
            || e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled)
    })
}

/// Whether a failed attempt may be repeated (on this endpoint or another).
///
/// Reads: whenever the failure is not an answer that retrying cannot change
/// (unreachable endpoint, broken connection, timeout, no leader).
///
/// Idempotent writes (a failover with its request id): as reads. A repeat that
/// reaches the leader after the first attempt started a failover is answered with that
/// failover (UNKNOWN "it started, the new leader resumes it", a connection broken
/// mid-request, a commit that timed out and may still land: all safe to ask again).
///
/// Writes: only when the call certainly had no effect. The coordinators answer
/// UNAVAILABLE only before proposing anything (no leader known, the leader
/// unreachable, leadership not confirmed); on this side, only a request that never
/// left (see [`never_sent`]) qualifies. Anything else — UNKNOWN from a connection
/// broken mid-request, a keep-alive timeout with the request sent — may have taken
/// effect, and is returned to the caller.
fn retryable(s: &Status, effect: Effect) -> bool {
    match (effect, s.code()) {
        (Effect::Write, Code::Unavailable) => !local(s) || never_sent(s),
        (Effect::Write, _) => local(s) && never_sent(s),
        (
            Effect::Read | Effect::IdempotentWrite,
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled,
        ) => true,
        (Effect::Read | Effect::IdempotentWrite, Code::Internal) => local(s),
        (Effect::Read | Effect::IdempotentWrite, _) => false,
    }
}

/// Whether a coordinator answered that it cannot reach a leader (it knows none, the
/// one it knows is unreachable or not confirmed): when the call runs out of time on
/// such answers, the group has no leader rather than no coordinator answering.
fn no_leader_answer(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && !local(s)
        && [
            "knows no leader",
            "answered but",
            "is not the leader",
            "unreachable from node",
            "lost its quorum",
            "confirm leadership",
        ]
        .iter()
        .any(|p| s.message().contains(p))
}

/// The error sources under a status, outermost first (tonic's own message for a
/// failed connection is only "transport error").
fn sources(s: &Status) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut cur = std::error::Error::source(s);
    while let Some(e) = cur {
        out.push(e);
        cur = e.source();
    }
    out
}

/// A status's message with its causes, on one line.
fn detail(s: &Status) -> String {
    let mut out = s.message().to_string();
    for e in sources(s) {
        let m = e.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
    }
    out
}

/// When a call failed in the TLS handshake (or met TLS where it expected plaintext
/// gRPC), what went wrong, in words that say which file or flag to look at.
/// `detail` is the status with its causes (see [`detail`]); the causes are matched
/// as text because tokio-rustls hands rustls errors on as strings inside `io::Error`.
fn tls_failure(detail: &str, using_tls: bool) -> Option<String> {
    let has = |p: &str| detail.contains(p);
    let hint = if has("invalid peer certificate") {
        if has("UnknownIssuer") || has("BadSignature") {
            "the coordinator's certificate is not signed by the CA given (--ca)"
        } else if has("NotValidForName") || has("not valid for name") {
            "the coordinator's certificate does not name the host of the endpoint (or the TLS domain given)"
        } else if has("xpired") || has("NotValidYet") || has("not valid yet") {
            "the coordinator's certificate is expired or not yet valid"
        } else {
            "the coordinator's certificate was refused"
        }
    } else if has("received fatal alert: CertificateRequired") {
        "the coordinator requires a client certificate (--cert and --key)"
    } else if ["BadCertificate", "UnknownCA", "CertificateUnknown", "DecryptError", "UnsupportedCertificate"]
        .iter()
        .any(|a| has(&format!("received fatal alert: {a}")))
    {
        "the coordinator refused the client certificate (is it signed by the coordinators' CA?)"
    } else if has("received fatal alert") {
        "the coordinator refused the TLS handshake"
    } else if has("received corrupt message") {
        "the endpoint does not speak TLS (is the coordinator configured without [tls]?)"
    } else if has("TLS handshake timed out") || has("HTTP/2 was not negotiated") {
        "the TLS handshake did not complete"
    } else if !using_tls && has("frame with invalid size") {
        // A TLS record read as an HTTP/2 frame header has an impossible length.
        return Some(
            "the endpoint does not speak plaintext gRPC: it probably serves TLS only; pass the coordinators' CA (--ca)"
                .into(),
        );
    } else {
        return None;
    };
    Some(format!("TLS handshake failed: {hint} ({detail})"))
}

/// A lazily connected channel to `endpoint` (`host:port`, or with its scheme).
fn transport(
    endpoint: &str,
    tls: Option<&ClientTlsConfig>,
    authorization: Option<&AsciiMetadataValue>,
    connect_timeout: Duration,
) -> Result<Transport, ClientError> {
    let bad = |reason: String| ClientError::BadEndpoint { endpoint: endpoint.to_string(), reason };
    let url = match (endpoint.split_once("://"), tls) {
        (None, Some(_)) => format!("https://{endpoint}"),
        (None, None) => format!("http://{endpoint}"),
        (Some(("http", _)), Some(_)) => return Err(bad("http:// endpoint, but TLS options were given".into())),
        (Some(("https", _)), None) => {
            return Err(bad("https:// endpoint needs the coordinators' CA (TLS options, --ca)".into()))
        }
        (Some(_), _) => endpoint.to_string(),
    };
    let mut ep = Endpoint::from_shared(url).map_err(|err| bad(err.to_string()))?;
    if let Some(tls) = tls {
        ep = ep.tls_config(tls.clone()).map_err(|err| bad(format!("TLS setup: {err}")))?;
    }
    let ch = ep
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Long-lived watch streams must notice a coordinator that vanished
        // without closing the connection (a partition, a frozen host).
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(InterceptedService::new(ch, TokenInterceptor(authorization.cloned())))
}

/// `host:port` of an endpoint given with or without its scheme.
fn host_port(endpoint: &str) -> &str {
    endpoint.split_once("://").map(|(_, hp)| hp).unwrap_or(endpoint).trim_end_matches('/')
}

fn role_name(role: i32) -> Role {
    Role::try_from(role).unwrap_or(Role::Unspecified)
}

impl Client {
    pub fn new(endpoints: &[String], opts: ClientOptions) -> Result<Client, ClientError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let tls = opts.tls.as_ref().map(|t| t.tonic_config(opts.connect_timeout));
        let authorization = match &opts.token {
            Some(t) => {
                let mut v = AsciiMetadataValue::try_from(format!("Bearer {}", t.trim())).map_err(|_| {
                    ClientError::Config("the token must be printable ASCII without control characters".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut out = Vec::new();
        for e in endpoints {
            let t = transport(&e, tls.as_ref(), authorization.as_ref(), opts.connect_timeout)?;
            out.push((e, t));
        }
        Ok(Client {
            endpoints: out,
            preferred: AtomicUsize::new(0),
            opts,
            tls,
            authorization,
            others: Mutex::new(HashMap::new()),
        })
    }

    pub fn actor(&self) -> &str {
        &self.opts.actor
    }

    /// A channel to the coordinator at `addr` (as the coordinators name their
    /// members): the endpoint's own when it is one, else one kept for it.
    fn channel_to(&self, addr: &str) -> Result<Transport, ClientError> {
        if let Some((_, t)) = self.endpoints.iter().find(|(e, _)| host_port(e) == addr) {
            return Ok(t.clone());
        }
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = others.get(addr) {
            return Ok(t.clone());
        }
        let t = transport(addr, self.tls.as_ref(), self.authorization.as_ref(), self.opts.connect_timeout)?;
        others.insert(addr.to_string(), t.clone());
        Ok(t)
    }

    /// A call that changes nothing: retried after any failure retrying may fix.
    async fn read<T, F, Fut>(&self, f: F) -> Result<(String, T), ClientError>
    where
        F: Fn(CoordinatorClient<Transport>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(Effect::Read, f).await
    }

    /// A call that may change the group: retried only after failures that certainly
    /// had no effect.
    async fn write<T, F, Fut>(&self, f: F) -> Result<(String, T), ClientError>
    where
        F: Fn(CoordinatorClient<Transport>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call(Effect::Write, f).await
    }

    /// Run `f` against endpoints until one answers, retrying while that is safe for
    /// `effect` (see [`retryable`]): each round tries every endpoint once, starting
    /// with the one that answered last, then backs off (with jitter) before the next,
    /// until `ClientOptions::timeout` runs out. `f` gets the attempt's time bound.
    async fn call<T, F, Fut>(&self, effect: Effect, f: F) -> Result<(String, T), ClientError>
    where
        F: Fn(CoordinatorClient<Transport>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.opts.timeout;
        let n = self.endpoints.len();
        let mut round = 0u32;
        let mut last_errors: Vec<String> = Vec::new();
        let mut saw_no_leader = None;
        loop {
            let start = self.preferred.load(Ordering::Relaxed);
            // TLS failures this round: when every endpoint fails its handshake,
            // retrying will not help.
            let mut tls_failures: Vec<(String, String)> = Vec::new();
            // Endpoints whose release does not know the request (UNIMPLEMENTED: nothing
            // happened there): during a rolling upgrade another endpoint may.
            let mut older: Vec<String> = Vec::new();
            for k in 0..n {
                let i = (start + k) % n;
                let (name, ch) = &self.endpoints[i];
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let bound = attempt_timeout(effect, round, remaining);
                let client = CoordinatorClient::new(ch.clone());
                match tokio::time::timeout(bound, f(client, bound)).await {
                    Ok(Ok(v)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok((name.clone(), v));
                    }
                    Ok(Err(s)) => {
                        let detail = detail(&s);
                        tracing::debug!(endpoint = %name, code = ?s.code(), message = %detail, "call failed");
                        // A failed handshake had no effect, whatever code it came with
                        // (UNKNOWN when the server's alert arrives after the client's
                        // side of a TLS 1.3 handshake): try the other endpoints.
                        if let Some(m) = tls_failure(&detail, self.opts.tls.is_some()) {
                            last_errors.push(format!("{name}: {}", short(&m)));
                            tls_failures.push((name.clone(), m));
                            continue;
                        }
                        if s.code() == Code::Unimplemented {
                            last_errors.push(format!("{name}: runs a primusd that does not know this request"));
                            older.push(name.clone());
                            continue;
                        }
                        if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) {
                            return Err(ClientError::Auth {
                                endpoint: name.clone(),
                                code: s.code(),
                                message: s.message().to_string(),
                            });
                        }
                        if !retryable(&s, effect) {
                            return Err(ClientError::Rpc { endpoint: name.clone(), code: s.code(), message: detail });
                        }
                        if no_leader_answer(&s) {
                            saw_no_leader = Some(s.message().to_string());
                        }
                        last_errors.push(format!("{name}: {}", short(&detail)));
                    }
                    Err(_) => last_errors.push(format!("{name}: no answer within {} ms", bound.as_millis())),
                }
            }
            if older.len() == n {
                return Err(ClientError::Rpc {
                    endpoint: older.join(", "),
                    code: Code::Unimplemented,
                    message: "every endpoint runs a primusd that does not know this request (an older release): \
                              upgrade the coordinators first (docs/operations.md, Upgrading)"
                        .into(),
                });
            }
            if tls_failures.len() == n {
                let (endpoint, message) = tls_failures.swap_remove(0);
                return Err(ClientError::Tls { endpoint, message: short(&message) });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                last_errors.dedup();
                let details = last_errors.iter().rev().take(n).cloned().collect::<Vec<_>>().join("; ");
                return Err(match saw_no_leader {
                    Some(m) => ClientError::NoLeader(short(&m)),
                    None => ClientError::Unreachable { timeout_ms: self.opts.timeout.as_millis(), details },
                });
            }
            round += 1;
            tokio::time::sleep(backoff(round, rand::random::<f64>()).min(remaining)).await;
        }
    }

    /// This node's view, from whichever endpoint answers first.
    pub async fn node_status(&self) -> Result<GetStatusResponse, ClientError> {
        self.read(
            |mut c, t| async move { c.get_status(req(GetStatusRequest::default(), t)).await.map(|r| r.into_inner()) },
        )
        .await
        .map(|(_, v)| v)
    }

    /// The group as its leader sees it (with every member's matched index).
    ///
    /// Every endpoint is asked in turn (with the usual retries and backoff); a
    /// follower's answer is followed to the leader it names, once, within the same
    /// attempt's bound. During an election this waits for the new leader, whichever
    /// endpoints are dead; when the timeout runs out with no leader answering, the
    /// error says what the last node that answered knew. The answer is confirmed with a
    /// quorum, except from a primusd before the feature gate, which cannot confirm and
    /// answers with its own view (see [`leader_answer`]).
    pub async fn status(&self) -> Result<GetStatusResponse, ClientError> {
        self.read(|mut c, t| async move {
            let started = Instant::now();
            let ask = GetStatusRequest { linearizable: true };
            let s = c.get_status(req(ask, t)).await?.into_inner();
            if leader_answer(&s) {
                return Ok(s);
            }
            let (node, role, term) = (s.node_id, role_name(s.role), s.term);
            let Some(leader) = s.leader_id.filter(|_| !s.leader_addr.is_empty()) else {
                return Err(Status::unavailable(format!(
                    "node {node} answered but knows no leader (role {role:?}, term {term})"
                )));
            };
            let addr = s.leader_addr;
            let unanswered = |why: String| {
                Status::unavailable(format!(
                    "node {node} answered but the leader it knows, node {leader} at {addr}, did not: {why} \
                     (node {node}: role {role:?}, term {term})"
                ))
            };
            let ch = self.channel_to(&addr).map_err(|e| unanswered(e.to_string()))?;
            // Leave the rest of the attempt's bound some slack: a hop that times out
            // still says which node answered and what it knew.
            let left = t.saturating_sub(started.elapsed()) * 3 / 4;
            let mut hop = CoordinatorClient::new(ch);
            match tokio::time::timeout(left, hop.get_status(req(ask, left))).await {
                Ok(Ok(ls)) if leader_answer(ls.get_ref()) => Ok(ls.into_inner()),
                Ok(Ok(ls)) => {
                    let ls = ls.into_inner();
                    Err(unanswered(format!("it is {:?} in term {}", role_name(ls.role), ls.term)))
                }
                Ok(Err(e)) => Err(unanswered(short(&detail(&e)))),
                Err(_) => Err(unanswered(format!("no answer within {} ms", left.as_millis()))),
            }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn add_member(&self, id: u64, addr: &str, datacenter: &str) -> Result<AddMemberResponse, ClientError> {
        let r = AddMemberRequest { id, addr: addr.to_string(), datacenter: datacenter.to_string() };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.add_member(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Hand leadership to voter `to`; returns who leads afterwards.
    pub async fn transfer_leader(&self, to: u64) -> Result<TransferLeaderResponse, ClientError> {
        self.write(|mut c, t| async move {
            c.transfer_leader(req(TransferLeaderRequest { to }, t)).await.map(|r| r.into_inner())
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn remove_member(&self, id: u64) -> Result<RemoveMemberResponse, ClientError> {
        self.write(|mut c, t| async move {
            c.remove_member(req(RemoveMemberRequest { id }, t)).await.map(|r| r.into_inner())
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn register_cluster(
        &self,
        name: &str,
        seeds: &[String],
        settings: ClusterSettings,
    ) -> Result<RegisterClusterResponse, ClientError> {
        let r = RegisterClusterRequest {
            name: name.to_string(),
            seeds: seeds.to_vec(),
            settings: Some(settings),
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.register_cluster(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn unregister_cluster(&self, name: &str) -> Result<UnregisterClusterResponse, ClientError> {
        let r = UnregisterClusterRequest { name: name.to_string(), actor: self.opts.actor.clone() };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.unregister_cluster(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn list_clusters(&self, consistency: ReadConsistency) -> Result<ListClustersResponse, ClientError> {
        let r = ListClustersRequest { consistency: consistency as i32 };
        self.read(|mut c, t| async move { c.list_clusters(req(r, t)).await.map(|r| r.into_inner()) })
            .await
            .map(|(_, v)| v)
    }

    pub async fn topology(
        &self,
        cluster: &str,
        consistency: ReadConsistency,
    ) -> Result<GetTopologyResponse, ClientError> {
        let r = GetTopologyRequest { cluster: cluster.to_string(), consistency: consistency as i32 };
        self.read(|mut c, t| {
            let r = r.clone();
            async move { c.get_topology(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Emergency failover (`switchover = false`) or planned switchover; `to` picks the replica.
    ///
    /// A refusal's code says what asking again can do (docs/failover.md):
    /// `FAILED_PRECONDITION` the cluster's state forbids it (or it failed after the
    /// promotion), `ABORTED` another operation on the cluster runs (or it aborted before
    /// anything irreversible), `INVALID_ARGUMENT`/`NOT_FOUND` a wrong `to` or cluster,
    /// `UNKNOWN` it started and the new leader resumes it.
    ///
    /// Every attempt carries one request id, chosen here; the leader records it with
    /// the failover's start. So unlike other writes the call is repeated after any
    /// failure that may have left the request undone or unanswered (a connection that
    /// broke mid-request, a leader that died after starting it, no leader yet): a repeat
    /// is answered with the failover the first attempt started, once it has finished,
    /// never with a second failover. Until the call's timeout runs out.
    pub async fn failover(
        &self,
        cluster: &str,
        to: Option<&str>,
        switchover: bool,
    ) -> Result<FailoverResponse, ClientError> {
        self.failover_with(cluster, to, switchover, false).await
    }

    /// [`Client::failover`]; `accept_loss`: in no-loss (semi-sync) mode, promote even
    /// when a semi-sync replica may have acknowledged transactions the candidate lacks.
    pub async fn failover_with(
        &self,
        cluster: &str,
        to: Option<&str>,
        switchover: bool,
        accept_loss: bool,
    ) -> Result<FailoverResponse, ClientError> {
        self.failover_with_id(cluster, to, switchover, accept_loss, None).await
    }

    /// [`Client::failover_with`] under the caller's request id (`None`: a fresh one).
    /// A request asked again with the same id — by this process or another, e.g. a
    /// script that runs `primusctl failover --request-id` again after the first run
    /// was killed — is answered with the failover the first attempt started.
    pub async fn failover_with_id(
        &self,
        cluster: &str,
        to: Option<&str>,
        switchover: bool,
        accept_loss: bool,
        request_id: Option<&str>,
    ) -> Result<FailoverResponse, ClientError> {
        let r = FailoverRequest {
            cluster: cluster.to_string(),
            to: to.unwrap_or_default().to_string(),
            actor: self.opts.actor.clone(),
            switchover,
            accept_loss,
            request_id: request_id.map(str::to_string).unwrap_or_else(new_request_id),
        };
        self.call(Effect::IdempotentWrite, |mut c, t| {
            let r = r.clone();
            async move { c.failover(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn history(&self, cluster: &str) -> Result<HistoryResponse, ClientError> {
        let r = HistoryRequest { cluster: cluster.to_string() };
        self.read(|mut c, t| {
            let r = r.clone();
            async move { c.history(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// The leader's analysis, confirmed with a quorum (a leader cut off in a minority
    /// answers nothing; the call waits for, or finds, one that leads).
    pub async fn analysis(&self, cluster: &str) -> Result<AnalysisResponse, ClientError> {
        self.analysis_with(cluster, ReadConsistency::Linearizable).await
    }

    /// [`Client::analysis`], or with `Stale` the contacted node's own analysis.
    pub async fn analysis_with(
        &self,
        cluster: &str,
        consistency: ReadConsistency,
    ) -> Result<AnalysisResponse, ClientError> {
        let r = AnalysisRequest { cluster: cluster.to_string(), consistency: consistency as i32 };
        self.read(|mut c, t| {
            let r = r.clone();
            async move { c.analysis(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn ack(&self, cluster: &str, id: Option<&str>) -> Result<LogIndexResponse, ClientError> {
        let r =
            AckRequest { cluster: cluster.into(), id: id.unwrap_or_default().into(), actor: self.opts.actor.clone() };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.ack(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn set_promotion_rule(
        &self,
        cluster: &str,
        instance: &str,
        rule: &str,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = SetPromotionRuleRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            rule: rule.into(),
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.set_promotion_rule(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Semi-sync no-loss mode of `cluster` (`None`: not managed by primus).
    pub async fn set_semi_sync(&self, cluster: &str, enabled: Option<bool>) -> Result<LogIndexResponse, ClientError> {
        let r = SetSemiSyncRequest { cluster: cluster.into(), enabled, actor: self.opts.actor.clone() };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.set_semi_sync(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// A fencing agent announces itself for `instance` (idempotent).
    pub async fn register_agent(
        &self,
        cluster: &str,
        instance: &str,
        agent_id: &str,
    ) -> Result<LogIndexResponse, ClientError> {
        self.register_agent_with(cluster, instance, agent_id, AgentTimings::default()).await
    }

    /// Register a fencing agent with its lease timings, which the leader checks against
    /// the group's (FAILED_PRECONDITION when they cannot work) and keeps in Raft.
    pub async fn register_agent_with(
        &self,
        cluster: &str,
        instance: &str,
        agent_id: &str,
        timings: AgentTimings,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = RegisterAgentRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            agent_id: agent_id.into(),
            actor: self.opts.actor.clone(),
            ttl_ms: timings.ttl_ms,
            renew_interval_ms: timings.renew_interval_ms,
            fence_timeout_ms: timings.fence_timeout_ms,
            release: String::new(),
            registration_index: 0,
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.register_agent(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// A fencing agent hands back the lease of `instance` (`reason`: which mysqld
    /// exited, how its port is guarded) held under its registration committed at
    /// `registration_index`: only once no restarted server can take a write before the
    /// agent has fenced it. Failovers then skip the wait for this lease; the
    /// agent gets none until it registers again. Releasing twice is releasing once, so
    /// the call is retried like a read.
    pub async fn release_lease(
        &self,
        cluster: &str,
        instance: &str,
        agent_id: &str,
        registration_index: u64,
        reason: &str,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = RegisterAgentRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            agent_id: agent_id.into(),
            actor: self.opts.actor.clone(),
            release: reason.into(),
            registration_index,
            ..Default::default()
        };
        self.call(Effect::IdempotentWrite, |mut c, t| {
            let r = r.clone();
            async move { c.register_agent(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Renew the lease of `instance`. The caller counts the lease from before it
    /// called this, for at most the `ttl_ms` granted.
    pub async fn renew_lease(
        &self,
        cluster: &str,
        instance: &str,
        agent_id: &str,
        ttl_ms: u64,
    ) -> Result<RenewLeaseResponse, ClientError> {
        let r =
            RenewLeaseRequest { cluster: cluster.into(), instance: instance.into(), agent_id: agent_id.into(), ttl_ms };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.renew_lease(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn set_instance_datacenter(
        &self,
        cluster: &str,
        instance: &str,
        datacenter: &str,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = SetInstanceDatacenterRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            datacenter: datacenter.into(),
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.set_instance_datacenter(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn maintenance(
        &self,
        cluster: &str,
        instance: Option<&str>,
        start: bool,
        reason: &str,
        duration: Duration,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = MaintenanceRequest {
            cluster: cluster.into(),
            instance: instance.unwrap_or_default().into(),
            start,
            reason: reason.into(),
            duration_ms: duration.as_millis() as u64,
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.maintenance(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn set_automatic_failover(
        &self,
        cluster: &str,
        enabled: Option<bool>,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = SetAutomaticFailoverRequest { cluster: cluster.into(), enabled, actor: self.opts.actor.clone() };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.set_automatic_failover(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Switch automatic failover off for every cluster (`enabled: false`, with a reason
    /// shown in status and the audit), or clear that switch (`true`): each cluster
    /// follows its own setting again.
    pub async fn set_automatic_failover_all(
        &self,
        enabled: bool,
        reason: &str,
    ) -> Result<LogIndexResponse, ClientError> {
        let r = SetGlobalAutomaticFailoverRequest { enabled, reason: reason.into(), actor: self.opts.actor.clone() };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.set_global_automatic_failover(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Set per-cluster failover settings in Raft (`KEY`, `Some(VALUE)`), or clear them
    /// (`None`: back to each coordinator's config file). All or none are applied.
    pub async fn set_cluster_settings(
        &self,
        cluster: &str,
        settings: &[(String, Option<String>)],
    ) -> Result<LogIndexResponse, ClientError> {
        let r = SetClusterSettingsRequest {
            cluster: cluster.into(),
            settings: settings.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect(),
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.set_cluster_settings(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Move replica `instance` under `below` (another member of its cluster) by GTID;
    /// `cluster` empty: the cluster that has it. Refused (FAILED_PRECONDITION, with the
    /// reason) for a loop, errant transactions, a source without binary log, the
    /// primary, and during a failover.
    pub async fn relocate(&self, cluster: &str, instance: &str, below: &str) -> Result<RelocateResponse, ClientError> {
        let r = RelocateRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            below: below.into(),
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.relocate(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Drop a decommissioned instance from its cluster (`cluster` empty: the cluster
    /// that has it). Refused (FAILED_PRECONDITION) for the primary, an instance others
    /// replicate from or that still replicates, and during a failover.
    pub async fn forget_instance(&self, cluster: &str, instance: &str) -> Result<LogIndexResponse, ClientError> {
        let r = ForgetInstanceRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            actor: self.opts.actor.clone(),
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.forget_instance(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Repoint a demoted former primary under the primary; refused (FAILED_PRECONDITION,
    /// with the GTIDs) when it has transactions the primary lacks or diverged after the
    /// failover that replaced it.
    pub async fn rejoin(&self, cluster: &str, instance: &str) -> Result<RejoinResponse, ClientError> {
        self.rejoin_with(cluster, instance, false).await
    }

    /// [`Client::rejoin`], with `discard_divergent`: a divergent MariaDB former primary
    /// rejoins anyway, replicating from the promotion point; its divergent transactions'
    /// changes stay in its tables (the choice is recorded in the audit trail).
    pub async fn rejoin_with(
        &self,
        cluster: &str,
        instance: &str,
        discard_divergent: bool,
    ) -> Result<RejoinResponse, ClientError> {
        let r = RejoinRequest {
            cluster: cluster.into(),
            instance: instance.into(),
            actor: self.opts.actor.clone(),
            discard_divergent,
        };
        self.write(|mut c, t| {
            let r = r.clone();
            async move { c.rejoin(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// What the former primary `instance` executed after the failover that replaced it
    /// (answered by the leader, from a fresh probe of the instance).
    pub async fn divergence(&self, cluster: &str, instance: &str) -> Result<DivergenceResponse, ClientError> {
        self.divergence_with(cluster, instance, ReadConsistency::Linearizable).await
    }

    pub async fn divergence_with(
        &self,
        cluster: &str,
        instance: &str,
        consistency: ReadConsistency,
    ) -> Result<DivergenceResponse, ClientError> {
        let r =
            DivergenceRequest { cluster: cluster.into(), instance: instance.into(), consistency: consistency as i32 };
        self.read(|mut c, t| {
            let r = r.clone();
            async move { c.divergence(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Where to write for `cluster`, confirmed with a quorum through the leader:
    /// never stale, even right after a failover. Fails (after retrying other
    /// endpoints) when no node can reach a leader.
    pub async fn primary(&self, cluster: &str) -> Result<GetPrimaryResponse, ClientError> {
        self.get_primary(cluster, ReadConsistency::Linearizable).await
    }

    /// Where to write for `cluster` as the answering node knows it, without a round
    /// trip to the leader: fast and available in a partition, possibly stale (check
    /// `applied_index` and `state.failover`).
    pub async fn primary_stale(&self, cluster: &str) -> Result<GetPrimaryResponse, ClientError> {
        self.get_primary(cluster, ReadConsistency::Stale).await
    }

    pub async fn get_primary(
        &self,
        cluster: &str,
        consistency: ReadConsistency,
    ) -> Result<GetPrimaryResponse, ClientError> {
        let r = GetPrimaryRequest { cluster: cluster.to_string(), consistency: consistency as i32 };
        self.read(|mut c, t| {
            let r = r.clone();
            async move { c.get_primary(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Follow the primary of `cluster` (`None`: every cluster).
    ///
    /// The stream yields the current state at once, then one event per change. When
    /// the serving coordinator dies, is cut off or drops a slow consumer, the stream
    /// reconnects to another endpoint on its own (backoff with jitter) and resumes
    /// from the last epoch it delivered: failovers that completed meanwhile are
    /// replayed from history, and states already delivered are not repeated. It ends
    /// with an `Err` only for errors retrying cannot fix (unknown cluster, refused
    /// credentials), and ends when dropped.
    pub fn watch(&self, cluster: Option<&str>) -> WatchStream {
        self.watch_from(cluster, HashMap::new())
    }

    /// Like [`Client::watch`], resuming after the given last-seen epoch per cluster.
    pub fn watch_from(&self, cluster: Option<&str>, from_epochs: HashMap<String, u64>) -> WatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let w = Watcher {
            endpoints: self.endpoints.iter().map(|(n, c)| (n.clone(), c.clone())).collect(),
            start: self.preferred.load(Ordering::Relaxed),
            cluster: cluster.unwrap_or_default().to_string(),
            timeout: self.opts.timeout,
            from: from_epochs,
            last: HashMap::new(),
            delivered: 0,
            floor: 0,
        };
        tokio::spawn(w.run(tx));
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    pub async fn audit(&self, limit: u32, consistency: ReadConsistency) -> Result<AuditResponse, ClientError> {
        let r = AuditRequest { limit, consistency: consistency as i32 };
        self.read(|mut c, t| async move { c.audit(req(r, t)).await.map(|r| r.into_inner()) }).await.map(|(_, v)| v)
    }
}

/// Events of [`Client::watch`]; `Err` is final.
pub type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<PrimaryEvent, ClientError>>;

/// The task behind a [`WatchStream`].
struct Watcher {
    endpoints: Vec<(String, Transport)>,
    start: usize,
    cluster: String,
    timeout: Duration,
    /// Last epoch delivered, per cluster: where a reconnect resumes.
    from: HashMap<String, u64>,
    /// Last state delivered, per cluster: replays of it are not repeated.
    last: HashMap<String, PrimaryState>,
    /// Highest log index delivered so far.
    delivered: u64,
    /// `delivered` when the current stream was opened: its events at or below it are old.
    floor: u64,
}

/// Errors a reconnect cannot fix.
fn permanent(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound | Code::InvalidArgument | Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented
    )
}

impl Watcher {
    /// Whether `ev` tells the consumer something it does not know yet.
    fn news(&self, ev: &PrimaryEvent) -> bool {
        let Some(s) = &ev.state else { return false };
        // Log indexes are the same on every coordinator: after a reconnect, whatever the
        // new node says as of an index already delivered is old news — and from a node
        // that lags, it would even take the consumer back in time.
        if self.floor > 0 && ev.applied_index <= self.floor {
            return false;
        }
        let kind = PrimaryEventKind::try_from(ev.kind).unwrap_or(PrimaryEventKind::Unspecified);
        let last = self.last.get(&s.cluster);
        match kind {
            PrimaryEventKind::Current => last != Some(s),
            PrimaryEventKind::Replayed => match last {
                None => true,
                Some(l) => s.epoch > l.epoch || (s.epoch == l.epoch && s.primary != l.primary && l.failover.is_some()),
            },
            _ => true,
        }
    }

    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Result<PrimaryEvent, ClientError>>) {
        let n = self.endpoints.len();
        let mut i = self.start;
        let mut failures = 0u32;
        loop {
            let (name, ch) = self.endpoints[i % n].clone();
            let request = WatchPrimaryRequest {
                cluster: self.cluster.clone(),
                from_epoch: self.from.get(&self.cluster).copied().unwrap_or(0),
                from_epochs: self.from.clone(),
            };
            let mut client = CoordinatorClient::new(ch);
            self.floor = self.delivered;
            let opened = tokio::select! {
                r = tokio::time::timeout(attempt_timeout(Effect::Read, failures, self.timeout), client.watch_primary(request)) => r,
                _ = tx.closed() => return,
            };
            match opened {
                Ok(Ok(resp)) => {
                    let mut stream = resp.into_inner();
                    loop {
                        let msg = tokio::select! {
                            m = stream.message() => m,
                            _ = tx.closed() => return,
                        };
                        match msg {
                            Ok(Some(ev)) => {
                                failures = 0;
                                if !self.news(&ev) {
                                    continue;
                                }
                                if let Some(s) = &ev.state {
                                    let e = self.from.entry(s.cluster.clone()).or_default();
                                    *e = (*e).max(s.epoch);
                                    self.last.insert(s.cluster.clone(), s.clone());
                                }
                                self.delivered = self.delivered.max(ev.applied_index);
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {
                                tracing::info!(endpoint = %name, "watch stream ended by the server; reconnecting");
                                break;
                            }
                            Err(s) if permanent(s.code()) => {
                                let e =
                                    ClientError::Rpc { endpoint: name, code: s.code(), message: s.message().into() };
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                            Err(s) => {
                                tracing::info!(endpoint = %name, code = ?s.code(), message = %short(s.message()),
                                    "watch interrupted; resuming elsewhere");
                                break;
                            }
                        }
                    }
                }
                Ok(Err(s)) if permanent(s.code()) => {
                    let e = ClientError::Rpc { endpoint: name, code: s.code(), message: s.message().into() };
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Ok(Err(s)) => {
                    tracing::debug!(endpoint = %name, code = ?s.code(), message = %short(s.message()), "watch not opened")
                }
                Err(_) => tracing::debug!(endpoint = %name, "watch not opened in time"),
            }
            i += 1;
            failures += 1;
            // The first retry goes to the next endpoint at once; then back off.
            if failures > 1 {
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures - 1, rand::random::<f64>())) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    }
}

fn req<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// First line of an error message, without tonic's nested transport noise.
fn short(m: &str) -> String {
    m.lines().next().unwrap_or(m).chars().take(300).collect()
}

/// A `GetStatus` answer that comes from the leader: confirmed with a quorum, or from a
/// release before the feature gate (`feature_level` 0), which does not know the
/// `linearizable` request and answers with its own view — during a rolling upgrade the
/// new primusctl must still work against an old leader.
pub fn leader_answer(s: &GetStatusResponse) -> bool {
    s.role == Role::Leader as i32 && (s.linearizable || s.feature_level == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_answer_is_confirmed_or_comes_from_a_release_before_the_gate() {
        let leader = |linearizable, feature_level| GetStatusResponse {
            role: Role::Leader as i32,
            linearizable,
            feature_level,
            ..Default::default()
        };
        assert!(leader_answer(&leader(true, 2)));
        // A leader of this release that could not confirm with a quorum: not an answer.
        assert!(!leader_answer(&leader(false, 2)));
        // primusd 3315362 knows neither field: its leader's own view is the best there is.
        assert!(leader_answer(&leader(false, 0)));
        let follower = GetStatusResponse { role: Role::Follower as i32, ..Default::default() };
        assert!(!leader_answer(&follower));
    }

    #[test]
    fn debug_of_options_hides_token_and_key() {
        let opts = ClientOptions {
            token: Some("s3cret-token".into()),
            tls: Some(TlsOptions {
                ca_pem: b"CA".to_vec(),
                cert_pem: Some(b"CERT".to_vec()),
                key_pem: Some(b"PRIVATE-KEY".to_vec()),
                domain: None,
            }),
            ..Default::default()
        };
        let d = format!("{opts:?}");
        assert!(!d.contains("s3cret") && !d.contains("PRIVATE"), "{d}");
    }

    #[test]
    fn bad_tls_files_and_token_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let e = TlsOptions::from_files(&ca, None, None).unwrap_err().to_string();
        assert!(e.contains("cannot read CA file") && e.contains("ca.pem"), "{e}");
        std::fs::write(&ca, "hello").unwrap();
        let e = TlsOptions::from_files(&ca, None, None).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = TlsOptions::from_files(&ca, Some(&ca), None).unwrap_err().to_string();
        assert!(e.contains("needs its key"), "{e}");
        let tok = dir.path().join("token");
        std::fs::write(&tok, "  \n").unwrap();
        assert!(read_token_file(&tok).unwrap_err().to_string().contains("is empty"));
        std::fs::write(&tok, "abc\n").unwrap();
        assert_eq!(read_token_file(&tok).unwrap(), "abc");
    }

    #[test]
    fn tls_failures_say_what_to_check() {
        let cases = [
            ("transport error: invalid peer certificate: UnknownIssuer", true, "not signed by the CA given (--ca)"),
            ("transport error: invalid peer certificate: NotValidForName", true, "does not name the host"),
            ("connection error: received fatal alert: CertificateRequired", true, "--cert and --key"),
            ("connection error: received fatal alert: BadCertificate", true, "refused the client certificate"),
            ("received corrupt message of type InvalidContentType", true, "does not speak TLS"),
            ("h2 protocol error: frame with invalid size", false, "serves TLS only; pass the coordinators' CA (--ca)"),
        ];
        for (detail, using_tls, want) in cases {
            let m = tls_failure(detail, using_tls).unwrap_or_default();
            assert!(m.contains(want) && m.contains("TLS"), "{detail:?} -> {m:?}");
        }
        assert!(tls_failure("h2 protocol error: frame with invalid size", true).is_none());
        assert!(tls_failure("tcp connect error: Connection refused", false).is_none());
    }

    #[test]
    fn endpoint_schemes_follow_the_tls_options() {
        let tls = Some(TlsOptions { ca_pem: b"x".to_vec(), ..Default::default() });
        let with_tls = ClientOptions { tls, ..Default::default() };
        assert!(Client::new(&["http://127.0.0.1:1".into()], with_tls.clone()).is_err());
        assert!(Client::new(&["https://127.0.0.1:1".into()], ClientOptions::default()).is_err());
        let bad_token = ClientOptions { token: Some("a\u{7}b".into()), ..Default::default() };
        assert!(matches!(Client::new(&["127.0.0.1:1".into()], bad_token), Err(ClientError::Config(_))));
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_50_ms_to_at_most_250_ms_with_the_upper_half_jittered() {
        let ms = |round, jitter| backoff(round, jitter).as_millis();
        assert_eq!((ms(1, 0.0), ms(1, 0.999)), (25, 49));
        assert_eq!((ms(2, 0.0), ms(2, 0.5)), (50, 75));
        assert_eq!((ms(3, 0.0), ms(3, 1.0)), (100, 200));
        for round in 4..100 {
            assert_eq!(ms(round, 0.0), 125, "round {round}");
            assert!(ms(round, 1.0) <= 250, "round {round}");
        }
        // Out-of-range jitter is clamped, never panics or overflows.
        assert_eq!(ms(u32::MAX, f64::NAN), 125);
        assert_eq!(ms(1, 7.0), 50);
        // Five rounds of pauses add up to at most 850 ms.
        let worst: u128 = (1..=5).map(|r| ms(r, 1.0)).sum();
        assert_eq!(worst, 850);
    }

    #[test]
    fn reads_are_bounded_per_attempt_and_writes_get_the_whole_remaining_budget() {
        let ten = Duration::from_secs(10);
        assert_eq!(attempt_timeout(Effect::Write, 0, ten), ten);
        assert_eq!(attempt_timeout(Effect::Write, 7, ten), ten);
        assert_eq!(attempt_timeout(Effect::Read, 0, ten), Duration::from_secs(1));
        assert_eq!(attempt_timeout(Effect::Read, 1, ten), Duration::from_secs(2));
        assert_eq!(attempt_timeout(Effect::Read, 3, ten), Duration::from_secs(8));
        assert_eq!(attempt_timeout(Effect::Read, 4, ten), ten, "never past what is left");
        assert_eq!(attempt_timeout(Effect::Read, u32::MAX, ten), ten);
        let little = Duration::from_millis(300);
        assert_eq!(attempt_timeout(Effect::Read, 0, little), little);
    }

    /// A status as this side makes it up from a transport error (with a source).
    fn local_status(e: impl std::error::Error + Send + Sync + 'static) -> Status {
        Status::from_error(Box::new(e))
    }

    #[test]
    fn writes_are_retried_only_when_they_certainly_had_no_effect() {
        // The coordinators' own UNAVAILABLE answers come before anything is proposed.
        let no_leader = Status::unavailable("node 2 knows no leader: the group is electing one");
        assert!(retryable(&no_leader, Effect::Write) && retryable(&no_leader, Effect::Read));
        // A connection that could not be established: the request never left.
        let refused =
            local_status(tonic::ConnectError(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(never_sent(&refused));
        assert!(retryable(&refused, Effect::Write) && retryable(&refused, Effect::Read));
        // A connection that broke with the request sent: a read may go again, a write not.
        let broken = local_status(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(!never_sent(&broken));
        assert!(!retryable(&broken, Effect::Write) && retryable(&broken, Effect::Read));
        // A failover sent with its request id may go again: a repeat is answered with
        // the failover the first attempt started.
        assert!(retryable(&broken, Effect::IdempotentWrite));
        // The server's UNKNOWN (its own forward broke mid-request) is the same.
        let forwarded = Status::unknown("the connection from node 1 to leader node 3 failed during the request");
        assert!(!retryable(&forwarded, Effect::Write) && retryable(&forwarded, Effect::Read));
        // Answers that retrying cannot change are never retried.
        for s in [
            Status::not_found("cluster nope is not registered"),
            Status::failed_precondition("no safe candidate"),
            Status::invalid_argument("bad name"),
            Status::aborted("failover c-e2 is already in progress"),
            Status::internal("a server bug"),
            Status::deadline_exceeded("not committed within 3000 ms; the write may still commit later"),
        ] {
            assert!(!retryable(&s, Effect::Write), "{s:?}");
        }
        // The leader's own answers that asking again cannot change are final for an
        // idempotent write too; a start interrupted by the leader's death is not.
        for s in [
            Status::not_found("cluster nope is not registered"),
            Status::failed_precondition("no safe candidate"),
            Status::aborted("failover c-e2 is already in progress"),
            Status::internal("a server bug"),
        ] {
            assert!(!retryable(&s, Effect::IdempotentWrite), "{s:?}");
        }
        let interrupted = Status::unknown("failover c-e2 started; node 1 stopped leading: the new leader resumes it");
        assert!(retryable(&interrupted, Effect::IdempotentWrite) && !retryable(&interrupted, Effect::Write));
        assert!(retryable(&Status::deadline_exceeded("could not confirm leadership"), Effect::Read));
        assert!(!retryable(&Status::not_found("x"), Effect::Read));
        assert!(!retryable(&Status::internal("a server bug"), Effect::Read));
    }

    #[test]
    fn no_leader_answers_are_told_apart_from_unreachable_endpoints() {
        for m in [
            "node 2 knows no leader: the group is electing one or has lost its quorum",
            "leader node 3 at 127.0.0.1:7103 is unreachable from node 1: tcp connect error",
            "node 1 answered but the leader it knows, node 3 at 127.0.0.1:7103, did not: connection refused",
            "this node is not the leader (or lost its quorum): no quorum answered",
            "cannot confirm leadership: ...",
        ] {
            assert!(no_leader_answer(&Status::unavailable(m)), "{m}");
        }
        let refused =
            local_status(tonic::ConnectError(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))));
        assert!(!no_leader_answer(&refused));
        assert!(!no_leader_answer(&Status::not_found("node 2 knows no leader")));
    }

    #[test]
    fn leader_addresses_match_endpoints_given_with_or_without_a_scheme() {
        assert_eq!(host_port("127.0.0.1:7101"), "127.0.0.1:7101");
        assert_eq!(host_port("https://db1.example:7101/"), "db1.example:7101");
        assert_eq!(host_port("http://[::1]:7101"), "[::1]:7101");
    }

    /// A call to a port nobody listens on fails, as a request that never left, fast.
    #[tokio::test]
    async fn a_refused_connection_is_a_request_that_never_left() -> Result<(), ClientError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let ch = transport(&format!("127.0.0.1:{port}"), None, None, Duration::from_secs(1))?;
        let s = match CoordinatorClient::new(ch).get_status(GetStatusRequest::default()).await {
            Ok(r) => panic!("answered from a closed port: {r:?}"),
            Err(s) => s,
        };
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(never_sent(&s) && retryable(&s, Effect::Write), "{}", detail(&s));
        Ok(())
    }

    /// Against endpoints that all refuse, a call retries with backoff until its
    /// timeout, then says nothing answered (not that there is no leader).
    #[tokio::test]
    async fn a_call_retries_until_its_timeout_then_says_nothing_answered() -> Result<(), ClientError> {
        let ports: Vec<String> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .into_iter()
            .map(|a| a.to_string())
            .collect();
        let c = Client::new(&ports, ClientOptions { timeout: Duration::from_millis(600), ..Default::default() })?;
        let t0 = Instant::now();
        let e = c.status().await.err().map(|e| e.to_string()).unwrap_or_default();
        let took = t0.elapsed();
        assert!(e.starts_with("no coordinator answered within 600 ms"), "{e}");
        assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(900), "{took:?}");
        Ok(())
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    fn watcher() -> Watcher {
        Watcher {
            endpoints: Vec::new(),
            start: 0,
            cluster: "c".into(),
            timeout: Duration::from_secs(1),
            from: HashMap::new(),
            last: HashMap::new(),
            delivered: 0,
            floor: 0,
        }
    }

    fn ev(kind: PrimaryEventKind, epoch: u64, index: u64) -> PrimaryEvent {
        PrimaryEvent {
            kind: kind as i32,
            state: Some(PrimaryState { cluster: "c".into(), primary: "p:1".into(), epoch, ..Default::default() }),
            applied_index: index,
            ..Default::default()
        }
    }

    #[test]
    fn after_a_reconnect_a_lagging_node_cannot_take_the_consumer_back_in_time() {
        let mut w = watcher();
        assert!(w.news(&ev(PrimaryEventKind::FailoverStarted, 2, 40)));
        w.delivered = 40;
        w.last.insert("c".into(), ev(PrimaryEventKind::FailoverStarted, 2, 40).state.unwrap_or_default());
        // Reconnected to a follower that has applied only up to index 35.
        w.floor = w.delivered;
        assert!(!w.news(&ev(PrimaryEventKind::Current, 1, 35)), "an older state is not news");
        assert!(!w.news(&ev(PrimaryEventKind::FailoverStarted, 2, 40)), "the same change again is not news");
        assert!(w.news(&ev(PrimaryEventKind::PrimaryChanged, 2, 41)), "what follows is");
    }
}

//! Client for a primus coordinator group.
//!
//! Give it every coordinator's `host:port`; it finds one that answers, and moves on
//! to the next when one is down. Writes may be sent to any node: followers forward
//! them to the leader. A call is retried (with backoff and jitter) only when it
//! certainly did not take effect — the endpoint was unreachable, or the group had
//! no leader — and never past the overall timeout.

use primus_proto::v1::coordinator_client::CoordinatorClient;
pub use primus_proto::v1::*;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
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
}

impl ClientError {
    /// The gRPC code behind the error, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Overall deadline of one client call, retries included.
    pub timeout: Duration,
    /// TCP connect timeout per endpoint.
    pub connect_timeout: Duration,
    /// Recorded in the audit log as who asked.
    pub actor: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(1000),
            actor: default_actor(),
        }
    }
}

/// `primus-client user@host`, for the audit trail.
pub fn default_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{user}@{host}")
}

pub struct Client {
    endpoints: Vec<(String, Channel)>,
    /// Index of the endpoint that answered last; tried first next time.
    preferred: AtomicUsize,
    opts: ClientOptions,
}

/// Whether a failed call certainly had no effect and another endpoint may be tried.
/// UNAVAILABLE means the endpoint could not be reached or knew no leader: the
/// request was not proposed. Anything else (including UNKNOWN from a connection
/// that broke mid-request) may have taken effect and is returned to the caller.
fn retryable(s: &Status) -> bool {
    s.code() == Code::Unavailable
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
        let mut out = Vec::new();
        for e in endpoints {
            let url = if e.contains("://") { e.clone() } else { format!("http://{e}") };
            let ch = Endpoint::from_shared(url)
                .map_err(|err| ClientError::BadEndpoint { endpoint: e.clone(), reason: err.to_string() })?
                .connect_timeout(opts.connect_timeout)
                .tcp_nodelay(true)
                // Long-lived watch streams must notice a coordinator that vanished
                // without closing the connection (a partition, a frozen host).
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true)
                .connect_lazy();
            out.push((e, ch));
        }
        Ok(Client { endpoints: out, preferred: AtomicUsize::new(0), opts })
    }

    pub fn actor(&self) -> &str {
        &self.opts.actor
    }

    /// Run `f` against endpoints until one answers, retrying while that is safe.
    async fn call<T, F, Fut>(&self, f: F) -> Result<(String, T), ClientError>
    where
        F: Fn(CoordinatorClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.opts.timeout;
        let n = self.endpoints.len();
        let mut attempt = 0u32;
        let mut last_errors: Vec<String> = Vec::new();
        let mut saw_no_leader = None;
        loop {
            let start = self.preferred.load(Ordering::Relaxed);
            for k in 0..n {
                let i = (start + k) % n;
                let (name, ch) = &self.endpoints[i];
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let client = CoordinatorClient::new(ch.clone());
                match tokio::time::timeout(remaining, f(client, remaining)).await {
                    Ok(Ok(v)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok((name.clone(), v));
                    }
                    Ok(Err(s)) if retryable(&s) => {
                        tracing::debug!(endpoint = %name, code = ?s.code(), message = s.message(), "endpoint failed; trying next");
                        if s.message().contains("knows no leader") || s.message().contains("is not the leader") {
                            saw_no_leader = Some(s.message().to_string());
                        }
                        last_errors.push(format!("{name}: {}", short(s.message())));
                    }
                    Ok(Err(s)) => {
                        return Err(ClientError::Rpc {
                            endpoint: name.clone(),
                            code: s.code(),
                            message: s.message().to_string(),
                        })
                    }
                    Err(_) => last_errors.push(format!("{name}: timed out")),
                }
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
            attempt += 1;
            let base = Duration::from_millis((50u64 << attempt.min(5)).min(1000));
            let jitter = Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 2 + 1));
            tokio::time::sleep((base + jitter).min(remaining)).await;
        }
    }

    /// This node's view, from whichever endpoint answers first.
    pub async fn node_status(&self) -> Result<GetStatusResponse, ClientError> {
        self.call(|mut c, t| async move { c.get_status(req(GetStatusRequest {}, t)).await.map(|r| r.into_inner()) })
            .await
            .map(|(_, v)| v)
    }

    /// The group as its leader sees it (with every member's matched index).
    pub async fn status(&self) -> Result<GetStatusResponse, ClientError> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let s = self.node_status().await?;
            if s.role == Role::Leader as i32 {
                return Ok(s);
            }
            if s.leader_id.is_some() && !s.leader_addr.is_empty() {
                let leader = Client::new(std::slice::from_ref(&s.leader_addr), self.opts.clone())?;
                match leader.node_status().await {
                    Ok(ls) if ls.role == Role::Leader as i32 => return Ok(ls),
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::NoLeader(format!(
                    "node {} answered but knows no leader (role {:?}, term {})",
                    s.node_id,
                    Role::try_from(s.role).unwrap_or(Role::Unspecified),
                    s.term
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn add_member(&self, id: u64, addr: &str, datacenter: &str) -> Result<AddMemberResponse, ClientError> {
        let r = AddMemberRequest { id, addr: addr.to_string(), datacenter: datacenter.to_string() };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.add_member(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn remove_member(&self, id: u64) -> Result<RemoveMemberResponse, ClientError> {
        self.call(|mut c, t| async move {
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
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.register_cluster(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn unregister_cluster(&self, name: &str) -> Result<UnregisterClusterResponse, ClientError> {
        let r = UnregisterClusterRequest { name: name.to_string(), actor: self.opts.actor.clone() };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.unregister_cluster(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn list_clusters(&self, consistency: ReadConsistency) -> Result<ListClustersResponse, ClientError> {
        let r = ListClustersRequest { consistency: consistency as i32 };
        self.call(|mut c, t| async move { c.list_clusters(req(r, t)).await.map(|r| r.into_inner()) })
            .await
            .map(|(_, v)| v)
    }

    pub async fn topology(
        &self,
        cluster: &str,
        consistency: ReadConsistency,
    ) -> Result<GetTopologyResponse, ClientError> {
        let r = GetTopologyRequest { cluster: cluster.to_string(), consistency: consistency as i32 };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.get_topology(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    /// Emergency failover (`switchover = false`) or planned switchover; `to` picks the replica.
    pub async fn failover(
        &self,
        cluster: &str,
        to: Option<&str>,
        switchover: bool,
    ) -> Result<FailoverResponse, ClientError> {
        let r = FailoverRequest {
            cluster: cluster.to_string(),
            to: to.unwrap_or_default().to_string(),
            actor: self.opts.actor.clone(),
            switchover,
        };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.failover(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn history(&self, cluster: &str) -> Result<HistoryResponse, ClientError> {
        let r = HistoryRequest { cluster: cluster.to_string() };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.history(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn analysis(&self, cluster: &str) -> Result<AnalysisResponse, ClientError> {
        let r = AnalysisRequest { cluster: cluster.to_string() };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.analysis(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn ack(&self, cluster: &str, id: Option<&str>) -> Result<LogIndexResponse, ClientError> {
        let r =
            AckRequest { cluster: cluster.into(), id: id.unwrap_or_default().into(), actor: self.opts.actor.clone() };
        self.call(|mut c, t| {
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
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.set_promotion_rule(req(r, t)).await.map(|r| r.into_inner()) }
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
        self.call(|mut c, t| {
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
        self.call(|mut c, t| {
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
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.set_automatic_failover(req(r, t)).await.map(|r| r.into_inner()) }
        })
        .await
        .map(|(_, v)| v)
    }

    pub async fn rejoin(&self, cluster: &str, instance: &str) -> Result<RejoinResponse, ClientError> {
        let r = RejoinRequest { cluster: cluster.into(), instance: instance.into(), actor: self.opts.actor.clone() };
        self.call(|mut c, t| {
            let r = r.clone();
            async move { c.rejoin(req(r, t)).await.map(|r| r.into_inner()) }
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
        self.call(|mut c, t| {
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
        };
        tokio::spawn(w.run(tx));
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    pub async fn audit(&self, limit: u32, consistency: ReadConsistency) -> Result<AuditResponse, ClientError> {
        let r = AuditRequest { limit, consistency: consistency as i32 };
        self.call(|mut c, t| async move { c.audit(req(r, t)).await.map(|r| r.into_inner()) }).await.map(|(_, v)| v)
    }
}

/// Events of [`Client::watch`]; `Err` is final.
pub type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<PrimaryEvent, ClientError>>;

/// The task behind a [`WatchStream`].
struct Watcher {
    endpoints: Vec<(String, Channel)>,
    start: usize,
    cluster: String,
    timeout: Duration,
    /// Last epoch delivered, per cluster: where a reconnect resumes.
    from: HashMap<String, u64>,
    /// Last state delivered, per cluster: replays of it are not repeated.
    last: HashMap<String, PrimaryState>,
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
            let opened = tokio::select! {
                r = tokio::time::timeout(self.timeout, client.watch_primary(request)) => r,
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
                let base = Duration::from_millis((50u64 << failures.min(5)).min(1000));
                let jitter = Duration::from_millis(rand::random::<u64>() % (base.as_millis() as u64 / 2 + 1));
                tokio::select! {
                    _ = tokio::time::sleep(base + jitter) => {}
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
    m.lines().next().unwrap_or(m).chars().take(200).collect()
}

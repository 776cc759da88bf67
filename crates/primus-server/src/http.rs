//! primusd's HTTP endpoint (`http_listen`): health checks for load balancers and
//! HAProxy, the agreed primary of each cluster, Prometheus metrics, the JSON
//! API under `/api/v1` (crate::api), and the operator's page (crate::web).
//!
//! Every answer is a **local, possibly stale read**: no Raft round trip, no
//! forwarding to the leader, so checks are cheap and every coordinator answers
//! them. The replicated state is the same on every node up to its applied index
//! (given in the answers); where staleness would be dangerous (the write check
//! `/primary/NAME/HOST:PORT`) a coordinator that is cut off from the group's
//! leader answers 503 (fail closed). docs/http.md lists every endpoint and metric.
//!
//! Connections are bounded: at most `[http] max_connections` at once; request
//! headers (and a TLS handshake) must arrive within `request_timeout_ms`; a
//! request is answered within `request_timeout_ms` (or gets a 503); a connection
//! that moves no byte for twice that long is closed.

use crate::context::NodeCtx;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use primus_types::state::{ClusterRecord, InFlight, PrimaryState};
use primus_types::{ClusterName, InstanceAddr, InstanceRole, NodeId};
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Largest request head accepted (HTTP/1 buffer, HTTP/2 header list); larger gets 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serve the HTTP endpoint on `listener` until `shutdown` resolves: plain HTTP
/// when `tls` is `None`, HTTPS (handshake bounded by `request_timeout_ms`) when
/// it is `Some`. A connection that fails (a bad handshake, garbage bytes, a
/// silent client) only ever ends itself. After `shutdown`, no new connection is
/// accepted and open ones get `request_timeout_ms` to finish.
pub async fn serve(
    ctx: Arc<NodeCtx>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    api_auth: crate::api::ApiAuth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = ctx.cfg.http.clone();
    serve_app(router(ctx, api_auth), &limits, listener, tls, shutdown).await
}

/// [`serve`] for any router: the accept loop, TLS and connection limits.
pub(crate) async fn serve_app(
    app: Router,
    limits: &crate::config::HttpSection,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let timeout = limits.request_timeout();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(64)
        .keep_alive_interval(None);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, tls = tls.is_some(), "HTTP endpoint serving");

    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "HTTP connection refused: too many open");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, builder, watcher, tls) = (app.clone(), builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, app, &builder, watcher, timeout).await,
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, app, &builder, watcher, timeout).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake not done within {} ms", timeout.as_millis()),
                },
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(timeout, graceful.shutdown()).await.is_err() {
        tracing::debug!("HTTP connections still open at shutdown were closed");
    }
    tracing::info!("HTTP endpoint stopped");
    Ok(())
}

/// Serve one connection (plain or TLS) until it ends, fails, or goes idle.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    builder: &Builder<TokioExecutor>,
    watcher: Watcher,
    timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Tracked::new(io);
    let activity = io.activity.clone();
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app)).into_owned();
    let conn = watcher.watch(conn);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = activity.idle_for(timeout * 2) => {
            tracing::debug!(%peer, "HTTP connection closed: no traffic for {} ms", (timeout * 2).as_millis());
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if quiet >= limit {
                return;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

/// An I/O object that records its activity.
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Tracked<I> {
    fn new(io: I) -> Self {
        Tracked { io, activity: Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }) }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The endpoint's routes (the `/api/v1` JSON API included), with the request
/// timeout and JSON 404/405 answers.
pub fn router(ctx: Arc<NodeCtx>, api_auth: crate::api::ApiAuth) -> Router {
    let timeout = ctx.cfg.http.request_timeout();
    Router::new()
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/leader", get(leader))
        .route("/primary/{cluster}", get(primary))
        .route("/primary/{cluster}/{instance}", get(primary_instance))
        .route("/replica/{cluster}/{instance}", get(replica))
        .route("/metrics", get(metrics))
        .with_state(ctx.clone())
        .merge(crate::api::routes(ctx.clone(), api_auth.clone()))
        .merge(crate::web::routes(ctx.clone(), api_auth.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(timeout, bounded))
        // Actions wait for what they started (a switchover's end): their own bound.
        .merge(
            crate::api::action_routes(ctx, api_auth)
                .layer(axum::middleware::from_fn_with_state(crate::api::ACTION_TIMEOUT, bounded)),
        )
}

/// Answer within `timeout` (503 otherwise), never cached, and log at debug.
async fn bounded(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request not answered within {} ms ([http] request_timeout_ms)", timeout.as_millis()),
        ),
    };
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), "HTTP request");
    resp
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: message.into() })).into_response()
}

/// A request that names something malformed (400) or unknown (404).
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn json<T: Serialize>(ok: bool, body: T) -> Response {
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn not_found(req: Request) -> Response {
    error(StatusCode::NOT_FOUND, format!("no such endpoint: {}; see docs/http.md", req.uri().path()))
}

async fn method_not_allowed(req: Request) -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, format!("method {} not allowed here; see docs/http.md", req.method()))
}

/// This node's Raft view, as `/health` and `/leader` report it.
#[derive(Serialize)]
struct NodeHealth {
    node_id: NodeId,
    role: &'static str,
    term: u64,
    leader_id: Option<NodeId>,
    applied_index: Option<u64>,
    last_log_index: Option<u64>,
    /// In a group with a leader (see [`in_led_group`]).
    has_leader: bool,
    /// This node leads, and a quorum acknowledged it within an election timeout.
    leads_with_quorum: bool,
}

fn node_health(ctx: &NodeCtx) -> NodeHealth {
    let m = ctx.raft.metrics().borrow().clone();
    let initialized =
        m.membership_config.log_id().is_some() || m.membership_config.membership().voter_ids().count() > 0;
    let role = if !initialized {
        "uninitialized"
    } else {
        match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        }
    };
    NodeHealth {
        node_id: ctx.id,
        role,
        term: m.current_term,
        leader_id: m.current_leader,
        applied_index: m.last_applied.map(|l| l.index),
        last_log_index: m.last_log_index,
        has_leader: in_led_group(ctx),
        leads_with_quorum: NodeCtx::leads_with_quorum(&ctx.raft, ctx.id, ctx.cfg.raft.election_timeout_min_ms),
    }
}

/// This node is in a group that has a leader right now: it follows (or learns
/// from) a leader, or it leads and a quorum acknowledged it recently. A leader cut
/// off into a minority still names itself leader, so it needs the quorum check.
fn in_led_group(ctx: &NodeCtx) -> bool {
    let leader = ctx.raft.metrics().borrow().current_leader;
    match leader {
        None => false,
        Some(l) if l == ctx.id => NodeCtx::leads_with_quorum(&ctx.raft, ctx.id, ctx.cfg.raft.election_timeout_min_ms),
        Some(_) => true,
    }
}

/// `GET /health`: 200 when this node is in a group that has a leader.
async fn health(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let h = node_health(&ctx);
    json(h.has_leader, h)
}

/// `GET /live`: 200 whenever the process answers (the same body as `/health`): for
/// liveness probes, which must not restart every coordinator when quorum is lost.
async fn live(State(ctx): State<Arc<NodeCtx>>) -> Response {
    json(true, node_health(&ctx))
}

/// `GET /leader`: 200 only on the leader a quorum acknowledged recently.
async fn leader(State(ctx): State<Arc<NodeCtx>>) -> Response {
    let h = node_health(&ctx);
    json(h.leads_with_quorum, h)
}

fn parse_cluster(name: &str) -> Result<ClusterName, Refused> {
    name.parse().map_err(|e: primus_types::NameError| Refused(StatusCode::BAD_REQUEST, e.to_string()))
}

fn parse_instance(addr: &str) -> Result<InstanceAddr, Refused> {
    addr.parse().map_err(|e: primus_types::NameError| Refused(StatusCode::BAD_REQUEST, e.to_string()))
}

fn bad_path(r: PathRejection) -> Refused {
    Refused(StatusCode::BAD_REQUEST, format!("malformed path: {}", r.body_text()))
}

/// The cluster's record as this node applied it, with the applied index.
fn cluster(ctx: &NodeCtx, name: &ClusterName) -> Result<(u64, std::sync::Arc<ClusterRecord>), Refused> {
    match ctx.read_state(|s| s.clusters.get(name).cloned()) {
        (applied, Some(c)) => Ok((applied, c)),
        (_, None) => Err(Refused(StatusCode::NOT_FOUND, format!("cluster {name} is not registered"))),
    }
}

/// The cluster and instance named by a path, the instance known to the topology.
fn cluster_and_instance(
    ctx: &NodeCtx,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(u64, std::sync::Arc<ClusterRecord>, InstanceAddr), Refused> {
    let Path((name, addr)) = path.map_err(bad_path)?;
    let name = parse_cluster(&name)?;
    let addr = parse_instance(&addr)?;
    let (applied, c) = cluster(ctx, &name)?;
    if !c.topology.instances.contains_key(&addr) && c.topology.primary.as_ref() != Some(&addr) {
        return Err(Refused(StatusCode::NOT_FOUND, format!("{addr} is not an instance of cluster {name}")));
    }
    Ok((applied, c, addr))
}

#[derive(Serialize)]
struct PrimaryBody {
    #[serde(flatten)]
    state: PrimaryState,
    applied_index: u64,
    served_by: NodeId,
    leader_id: Option<NodeId>,
}

/// `GET /primary/NAME`: the agreed primary and epoch (503 when there is none).
async fn primary(
    State(ctx): State<Arc<NodeCtx>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Refused> {
    let Path(name) = path.map_err(bad_path)?;
    let name = parse_cluster(&name)?;
    let (applied_index, c) = cluster(&ctx, &name)?;
    let state = c.primary_state();
    let ok = state.primary.is_some();
    let leader_id = ctx.raft.metrics().borrow().current_leader;
    Ok(json(ok, PrimaryBody { state, applied_index, served_by: ctx.id, leader_id }))
}

#[derive(Serialize)]
struct PrimaryCheck {
    cluster: ClusterName,
    instance: InstanceAddr,
    /// 200 when true.
    writable: bool,
    reasons: Vec<String>,
    primary: Option<InstanceAddr>,
    epoch: u64,
    failover: Option<InFlight>,
    applied_index: u64,
    served_by: NodeId,
    leader_id: Option<NodeId>,
}

/// `GET /primary/NAME/HOST:PORT`: 200 only when that instance is the agreed primary,
/// no failover is in flight, and this node is in a group with a leader.
async fn primary_instance(
    State(ctx): State<Arc<NodeCtx>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Refused> {
    let (applied_index, c, addr) = cluster_and_instance(&ctx, path)?;
    let state = c.primary_state();
    let mut reasons = Vec::new();
    match &state.primary {
        Some(p) if *p == addr => {}
        Some(p) => reasons.push(format!("not the primary of {} (the primary is {p})", c.name)),
        None => reasons.push(format!("{} has no agreed primary", c.name)),
    }
    if let Some(f) = &state.failover {
        reasons
            .push(format!("{} {} in progress: {} -> {} (epoch {})", f.kind, f.id, f.old_primary, f.candidate, f.epoch));
    }
    if !in_led_group(&ctx) {
        reasons
            .push(format!("coordinator {} is not in a group with a leader right now: its view may be stale", ctx.id));
    }
    let leader_id = ctx.raft.metrics().borrow().current_leader;
    Ok(json(
        reasons.is_empty(),
        PrimaryCheck {
            cluster: c.name.clone(),
            instance: addr,
            writable: reasons.is_empty(),
            reasons,
            primary: state.primary,
            epoch: state.epoch,
            failover: state.failover,
            applied_index,
            served_by: ctx.id,
            leader_id,
        },
    ))
}

#[derive(Serialize)]
struct ReplicaCheck {
    cluster: ClusterName,
    instance: InstanceAddr,
    /// 200 when true.
    healthy: bool,
    reasons: Vec<String>,
    role: String,
    reachable: bool,
    io_running: Option<String>,
    sql_running: Option<bool>,
    seconds_behind: Option<u64>,
    max_replica_lag_s: u64,
    observed_at_ms: Option<u64>,
    last_error: Option<String>,
    applied_index: u64,
    served_by: NodeId,
}

/// `GET /replica/NAME/HOST:PORT`: 200 when the instance can serve reads, from this
/// node's own latest probe (see docs/http.md for the rules).
async fn replica(
    State(ctx): State<Arc<NodeCtx>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Refused> {
    let (applied_index, c, addr) = cluster_and_instance(&ctx, path)?;
    let Some(mon) = &ctx.monitor else {
        return Err(Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("coordinator {} has no [mysql] section: it probes nothing", ctx.id),
        ));
    };
    let max_lag = ctx.cfg.http.max_replica_lag_s;
    let now = crate::clock::now_ms();
    let role = c.topology.instances.get(&addr).map(|i| i.role);
    let view = mon.view(&c, false).instances.into_iter().find(|i| i.addr == addr.to_string());
    let mut reasons = Vec::new();
    match role {
        Some(InstanceRole::Replica | InstanceRole::Intermediate) => {}
        Some(r) => reasons.push(format!("role is {r}, not replica")),
        None => reasons.push("not in the agreed topology".into()),
    }
    if c.demoted.contains(&addr) {
        reasons.push("a demoted former primary".into());
    }
    if c.in_maintenance(&addr, now) {
        reasons.push("in maintenance".into());
    }
    match &view {
        None => reasons.push(format!("not probed by coordinator {} yet", ctx.id)),
        Some(v) => {
            match v.observed_at_ms {
                None => reasons.push(format!("not probed by coordinator {} yet", ctx.id)),
                Some(at) => {
                    let age = now.saturating_sub(at);
                    if age > probe_max_age_ms(&ctx) {
                        reasons.push(format!("latest probe is {age} ms old"));
                    }
                }
            }
            if v.observed_at_ms.is_some() && !v.reachable {
                let why = v.last_error.as_deref().unwrap_or("probe failed");
                reasons.push(format!("unreachable from coordinator {}: {why}", ctx.id));
            }
            if v.reachable {
                match (&v.io_running, v.sql_running) {
                    (None, _) => reasons.push("not replicating (no replication configured)".into()),
                    (Some(io), sql) => {
                        if io != "yes" {
                            reasons.push(format!("IO thread is not running ({io})"));
                        }
                        if sql != Some(true) {
                            reasons.push("SQL thread is not running".into());
                        }
                        match v.seconds_behind {
                            Some(lag) if lag > max_lag => {
                                reasons.push(format!("lag {lag} s exceeds [http] max_replica_lag_s = {max_lag}"))
                            }
                            Some(_) => {}
                            None => reasons.push("lag unknown".into()),
                        }
                    }
                }
            }
        }
    }
    let v = view.as_ref();
    Ok(json(
        reasons.is_empty(),
        ReplicaCheck {
            cluster: c.name.clone(),
            instance: addr,
            healthy: reasons.is_empty(),
            reasons,
            role: role.map(|r| r.to_string()).unwrap_or_default(),
            reachable: v.is_some_and(|v| v.reachable),
            io_running: v.and_then(|v| v.io_running.clone()),
            sql_running: v.and_then(|v| v.sql_running),
            seconds_behind: v.and_then(|v| v.seconds_behind),
            max_replica_lag_s: max_lag,
            observed_at_ms: v.and_then(|v| v.observed_at_ms),
            last_error: v.and_then(|v| v.last_error.clone()),
            applied_index,
            served_by: ctx.id,
        },
    ))
}

/// A probe older than this does not vouch for a replica: `[failover]
/// view_max_age_ms`, or three probe intervals if that is longer.
fn probe_max_age_ms(ctx: &NodeCtx) -> u64 {
    let interval = ctx.cfg.mysql.as_ref().map(|m| m.probe_interval_ms).unwrap_or(0);
    ctx.cfg.failover.view_max_age_ms.max(interval.saturating_mul(3))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(ctx): State<Arc<NodeCtx>>) -> Response {
    // At 5,000 instances a scrape takes a good part of a second of CPU (every
    // instance's series, divergence and errant counts): off the runtime's workers, so
    // the probes and Raft do not wait behind it.
    match tokio::task::spawn_blocking(move || render_metrics(&ctx)).await {
        Ok(response) => response,
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering metrics failed: {e}\n")).into_response(),
    }
}

fn render_metrics(ctx: &Arc<NodeCtx>) -> Response {
    // One read of the state: clusters, feature level and the global switch as of one index.
    let (_, (clusters, group_feature_level, automatic_off)) = ctx.read_state(|s| {
        (s.clusters.values().cloned().collect::<Vec<_>>(), s.group_feature_level(), s.automatic_off.is_some())
    });
    let analysis = match &ctx.engine {
        Some(e) => clusters
            .iter()
            .filter_map(|c| e.last_analysis(&c.name).map(|(_, a)| (c.name.clone(), a.code.to_string())))
            .collect(),
        None => Default::default(),
    };
    let raft = ctx.raft.metrics().borrow().clone();
    let leads_with_quorum = NodeCtx::leads_with_quorum(&ctx.raft, ctx.id, ctx.cfg.raft.election_timeout_min_ms);
    let mut instances = Vec::new();
    let mut leases = Vec::new();
    if let Some(mon) = &ctx.monitor {
        for c in &clusters {
            instances.extend(instance_samples(mon, c));
        }
    }
    if leads_with_quorum {
        for c in &clusters {
            leases.extend(lease_samples(ctx, c));
        }
    }
    let mut members = Vec::new();
    if raft.state == openraft::ServerState::Leader && raft.current_leader == Some(ctx.id) {
        let membership = raft.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        for (id, _) in membership.nodes() {
            let last_answer = if *id == ctx.id { Duration::ZERO } else { ctx.peer_answers.since(*id) };
            members.push(crate::metrics::MemberSample { id: *id, voter: voters.contains(id), last_answer });
        }
    }
    let snapshot = crate::metrics::Snapshot {
        raft,
        leads_with_quorum,
        committed_index: ctx.committed_index(),
        watch_subscribers: ctx.feed.subscribers(),
        clusters,
        now_ms: crate::clock::now_ms(),
        analysis,
        instances,
        leases,
        members,
        group_feature_level,
        automatic_off,
    };
    match ctx.metrics.render(&snapshot) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::Metrics::content_type())], text).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode metrics");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}"))
        }
    }
}

/// This node's latest probe of each instance of `c` it has probed (not probed yet:
/// no sample, neither up nor down).
fn instance_samples(mon: &crate::monitor::Monitor, c: &ClusterRecord) -> Vec<crate::metrics::InstanceSample> {
    let primary_obs = c.topology.primary.as_ref().and_then(|p| mon.own_observation(p));
    let view = mon.view(c, false);
    let mut out = Vec::new();
    // The view lists the topology's instances in its order.
    for (inst, i) in c.topology.instances.values().zip(view.instances) {
        if i.observed_at_ms.is_none() || inst.addr.to_string() != i.addr {
            continue;
        }
        let obs = mon.own_observation(&inst.addr);
        let is_replica = matches!(inst.role, InstanceRole::Replica | InstanceRole::Intermediate);
        let divergent = obs.as_ref().and_then(|o| match crate::divergence::check(c, &inst.addr, o) {
            None => Some(0),
            Some(Ok(d)) => Some(d.divergence.count()),
            Some(Err(_)) => None,
        });
        let errant = match (&obs, &primary_obs) {
            (Some(o), Some(p)) if is_replica => primus_mysql::errant_transactions(o, p).map(|r| r.count()),
            // A replica compared with no primary observation: unknown.
            (Some(_), _) if !is_replica => Some(0),
            _ => None,
        };
        out.push(crate::metrics::InstanceSample {
            cluster: c.name.to_string(),
            up: i.reachable,
            read_only: i.read_only,
            replicating: (i.reachable && is_replica)
                .then(|| i.io_running.as_deref() == Some("yes") && i.sql_running == Some(true)),
            lag_seconds: i.seconds_behind,
            heartbeat_delay_ms: i.heartbeat_delay_ms,
            divergent,
            errant,
            instance: i.addr,
        });
    }
    out
}

/// The lease of each registered agent of `c`, as this leader counts it.
fn lease_samples(ctx: &NodeCtx, c: &ClusterRecord) -> Vec<crate::metrics::LeaseSample> {
    use crate::metrics::LeaseState;
    let now = tokio::time::Instant::now();
    c.agents
        .iter()
        .map(|(addr, agent)| {
            let granted = ctx.leases.granted(&c.name, addr);
            let fenced = ctx.monitor.as_ref().and_then(|m| m.own_observation(addr)).is_some_and(|o| o.read_only);
            let state = if agent.released.is_some() {
                LeaseState::Released
            } else if ctx.leases.holds(&c.name, addr) {
                LeaseState::Held
            } else if c.topology.primary.as_ref() == Some(addr)
                && ctx.leases.expired_for(&c.name, addr, Some(agent), fenced).is_some()
            {
                LeaseState::Expired
            } else {
                LeaseState::NotHeld
            };
            crate::metrics::LeaseSample {
                cluster: c.name.to_string(),
                instance: addr.to_string(),
                state,
                remaining: granted.map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The accept loop on real sockets: HTTPS with a self-signed certificate, and
    //! what bad handshakes, garbage and silent clients do (only ever to themselves).

    use super::*;
    use crate::config::HttpSection;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    const TIMEOUT_MS: u64 = 400;

    fn limits() -> HttpSection {
        HttpSection { request_timeout_ms: TIMEOUT_MS, ..Default::default() }
    }

    fn app() -> Router {
        Router::new().route("/ping", get(|| async { "pong" })).fallback(not_found)
    }

    /// Start `serve_app` on a free loopback port; returns its address and the trigger
    /// that stops it, with the server's task.
    async fn start(
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_app(app(), &limits(), l, tls, async move {
                let _ = rx.await;
            })
            .await
        });
        (addr, tx, task)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A self-signed certificate for `localhost`, the acceptor serving it, and a
    /// connector that trusts it.
    fn tls_pair() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        (tokio_rustls::TlsAcceptor::from(Arc::new(server)), tokio_rustls::TlsConnector::from(Arc::new(client)))
    }

    /// One `GET path` over `io`, `Connection: close`; the whole answer.
    async fn get_over<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        io.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn https_get(addr: SocketAddr, connector: &tokio_rustls::TlsConnector, path: &str) -> String {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        get_over(tls, path).await
    }

    /// Read until the server closes; how long that took (None: still open after `limit`).
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let t = std::time::Instant::now();
        let mut buf = [0u8; 1024];
        let r = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        r.ok().map(|_| t.elapsed())
    }

    #[tokio::test]
    async fn https_serves_the_router_and_bad_handshakes_only_drop_their_own_connection() {
        let (acceptor, connector) = tls_pair();
        let (addr, stop, task) = start(Some(acceptor)).await;

        let answer = https_get(addr, &connector, "/ping").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("pong"), "{answer}");

        // Plain HTTP on the TLS port: the handshake fails, that connection closes.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(closed_within(&mut plain, Duration::from_secs(3)).await.is_some(), "plain HTTP not dropped");

        // A client that does not trust the certificate aborts the handshake.
        let untrusting = {
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(client))
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        assert!(untrusting.connect(name, tcp).await.is_err(), "an untrusted certificate was accepted");

        // Random bytes, then a silent client: the handshake timeout closes the latter.
        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x13, 0x37]).await.unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(3)).await;
        assert!(took.is_some(), "a client that never finishes its handshake is kept open");
        drop(junk);

        // The server still serves.
        let answer = https_get(addr, &connector, "/ping").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), task).await.expect("serve stops").unwrap().unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    }

    #[tokio::test]
    async fn plain_http_closes_silent_clients_and_refuses_huge_heads() {
        let (addr, stop, task) = start(None).await;

        // A client that connects and says nothing is closed (header read timeout /
        // idle limit), not kept forever.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let took = closed_within(&mut silent, Duration::from_secs(5)).await;
        assert!(took.is_some(), "silent connection still open after 5 s");

        // Half a request, then silence: closed too.
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        assert!(closed_within(&mut half, Duration::from_secs(5)).await.is_some(), "half request kept open");

        // A 100 KB header: 431, not a crash.
        let big = format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(big.as_bytes()).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        // Garbage: 400 (or a closed connection), and the server still answers.
        let mut g = TcpStream::connect(addr).await.unwrap();
        g.write_all(b"\x00\x01\x02 garbage \xff\xfe\r\n\r\n").await.unwrap();
        let _ = closed_within(&mut g, Duration::from_secs(5)).await;
        let answer = get_over(TcpStream::connect(addr).await.unwrap(), "/ping").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), task).await.expect("serve stops").unwrap().unwrap();
    }
}

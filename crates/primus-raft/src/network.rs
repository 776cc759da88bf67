//! Outgoing half of the peer network: openraft's `RaftNetworkFactory` over tonic.

use crate::faults::Faults;
use crate::security::PeerSecurity;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use primus_proto::raft::raft_client::RaftClient;
use primus_proto::raft::RaftRequest;
use primus_types::{Member, NodeId, TypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Largest gRPC message a peer accepts (snapshot chunks and entry batches stay well below).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Upper bound for one AppendEntries or Vote RPC (openraft may ask for less).
    pub rpc_timeout: Duration,
    /// Upper bound for one snapshot chunk.
    pub snapshot_timeout: Duration,
    /// TCP connect timeout to a peer.
    pub connect_timeout: Duration,
    /// How long to wait before retrying an unreachable peer. openraft's default
    /// (500 ms) is longer than a LAN election timeout, so a restarted follower
    /// would hear nothing and call a needless election.
    pub unreachable_backoff: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            rpc_timeout: Duration::from_millis(1000),
            snapshot_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(500),
            unreachable_backoff: Duration::from_millis(100),
        }
    }
}

/// When each peer last answered an RPC of this node (any reply that came back, an
/// error from the peer's Raft included). openraft 0.9's metrics say how far each
/// follower's log matches, not when it last answered a heartbeat: that is what the
/// leader's `primus_raft_member_last_answer_seconds` needs. Shared by every clone.
#[derive(Clone, Debug)]
pub struct PeerAnswers {
    started: tokio::time::Instant,
    last: Arc<Mutex<HashMap<NodeId, tokio::time::Instant>>>,
}

impl Default for PeerAnswers {
    fn default() -> Self {
        PeerAnswers { started: tokio::time::Instant::now(), last: Arc::default() }
    }
}

impl PeerAnswers {
    fn record(&self, peer: NodeId) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, tokio::time::Instant::now());
    }

    /// How long ago `peer` last answered this node; for a peer that has not answered
    /// since this node started, how long ago it started (at least that long).
    pub fn since(&self, peer: NodeId) -> Duration {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).get(&peer).copied();
        last.unwrap_or(self.started).elapsed()
    }
}

/// Factory of peer connections; cheap to clone, channels shared across clones.
#[derive(Clone)]
pub struct PeerNetwork {
    me: NodeId,
    cfg: NetworkConfig,
    faults: Arc<Faults>,
    security: PeerSecurity,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
    answers: PeerAnswers,
}

impl PeerNetwork {
    pub fn new(me: NodeId, cfg: NetworkConfig, faults: Arc<Faults>, security: PeerSecurity) -> Self {
        PeerNetwork {
            me,
            cfg,
            faults,
            security,
            channels: Arc::new(Mutex::new(HashMap::new())),
            answers: PeerAnswers::default(),
        }
    }

    /// When each peer last answered this node's RPCs (for metrics).
    pub fn answers(&self) -> PeerAnswers {
        self.answers.clone()
    }

    /// The reused channel to `target` at `addr` (re-created if the address changed).
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = map.get(&target) {
            if a == addr {
                return Ok(ch.clone());
            }
        }
        let ch = self
            .security
            .endpoint(addr)?
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(target, (addr.to_string(), ch.clone()));
        Ok(ch)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        let client = self.channel(target, &node.addr).map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerConnection {
            me: self.me,
            target,
            addr: node.addr.clone(),
            client,
            cfg: self.cfg.clone(),
            faults: self.faults.clone(),
            security: self.security.clone(),
            answers: self.answers.clone(),
        }
    }
}

/// One openraft replication stream's view of a peer.
pub struct PeerConnection {
    me: NodeId,
    target: NodeId,
    addr: String,
    client: Result<RaftClient<Channel>, String>,
    cfg: NetworkConfig,
    faults: Arc<Faults>,
    security: PeerSecurity,
    answers: PeerAnswers,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

type RpcErr<E> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

impl PeerConnection {
    async fn call<Req, Resp, E>(&mut self, kind: RPCTypes, ttl: Duration, req: &Req) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout_err =
            || RPCError::Timeout(Timeout { action: kind, id: self.me, target: self.target, timeout: ttl });
        if self.faults.is_dropped(self.target) {
            // A silent partition: nothing comes back until the caller gives up.
            tokio::time::sleep(ttl).await;
            return Err(timeout_err());
        }
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        let payload = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest { from: self.me, to: self.target, payload });
        self.security.authorize(&mut request);
        let fut = async move {
            let mut client = client;
            match kind {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => return Err(timeout_err()),
            Ok(Err(status)) => return Err(self.map_status(status, timeout_err)),
            Ok(Ok(r)) => r.into_inner(),
        };
        self.answers.record(self.target);
        let decoded: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload).map_err(|e| {
            RPCError::Network(NetworkError::new(&Msg(format!("undecodable reply from node {}: {e}", self.target))))
        })?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                Member { addr: self.addr.clone(), datacenter: String::new() },
                e,
            ))
        })
    }

    fn map_status<E: std::error::Error>(
        &self,
        status: tonic::Status,
        timeout_err: impl FnOnce() -> RpcErr<E>,
    ) -> RpcErr<E> {
        let msg = Msg(format!(
            "node {} at {}: {}: {}",
            self.target,
            self.addr,
            status.code(),
            crate::security::status_detail(&status)
        ));
        match status.code() {
            // Connection refused, peer down, TLS handshake refused, or it refused us
            // (fault injection, a token it does not share): back off.
            tonic::Code::Unavailable | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                RPCError::Unreachable(Unreachable::new(&msg))
            }
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => timeout_err(),
            _ => RPCError::Network(NetworkError::new(&msg)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let ttl = option.hard_ttl().min(self.cfg.rpc_timeout);
        self.call(RPCTypes::AppendEntries, ttl, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        let ttl = self.cfg.snapshot_timeout;
        self.call(RPCTypes::InstallSnapshot, ttl, &rpc).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.cfg.unreachable_backoff))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let ttl = option.hard_ttl().min(self.cfg.rpc_timeout);
        self.call(RPCTypes::Vote, ttl, &rpc).await
    }
}

//! The coordinators' network in the simulator: Raft RPCs and observation reports
//! between simulated nodes, through links the fault schedule sets per direction
//! (up, refused, silent), with a seeded delay on each hop, and through each node's
//! [`Gate`] (a paused node sends and answers nothing until it resumes).

use super::{SimConfig, SimRaft};
use crate::mysql::Link;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use primus_types::{Member, NodeId};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// A process's run state as its peers feel it: while paused (SIGSTOP), whatever it
/// sends or answers waits until it resumes.
#[derive(Debug, Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }
}

impl Gate {
    pub fn pause(&self) {
        self.0.send_replace(true);
    }

    pub fn resume(&self) {
        self.0.send_replace(false);
    }

    pub fn paused(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns at once when running; otherwise when resumed.
    pub async fn pass(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|p| !*p).await;
    }
}

#[derive(Debug, Clone)]
struct NetMsg(String);

impl std::fmt::Display for NetMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NetMsg {}

struct Inner {
    /// Nodes whose Raft runs (a crashed node is absent).
    rafts: BTreeMap<NodeId, SimRaft>,
    /// Where running nodes take observation reports (their monitors).
    sinks: BTreeMap<NodeId, Arc<dyn primus_raft::ObservationSink>>,
    gates: BTreeMap<NodeId, Gate>,
    /// Directed links between coordinators that are not up.
    cut: BTreeMap<(NodeId, NodeId), Link>,
    /// Directed links that lose this percentage of messages (a lost request or answer:
    /// the caller times out).
    loss: BTreeMap<(NodeId, NodeId), u8>,
    /// One-way delay of a message: uniform in `delay.0..=delay.1` ms.
    delay: (u64, u64),
    /// Upper bound of an RPC (openraft's own bound can be longer).
    rpc_timeout: Duration,
    rng: StdRng,
}

/// The coordinators' network. Cheap to clone (a handle).
#[derive(Clone)]
pub struct SimNet(Arc<Mutex<Inner>>);

impl SimNet {
    pub fn new(rng: StdRng, delay: (u64, u64), rpc_timeout: Duration) -> SimNet {
        SimNet(Arc::new(Mutex::new(Inner {
            rafts: BTreeMap::new(),
            sinks: BTreeMap::new(),
            gates: BTreeMap::new(),
            cut: BTreeMap::new(),
            loss: BTreeMap::new(),
            delay,
            rpc_timeout,
            rng,
        })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Node `id` runs `raft` (after a start or restart).
    pub fn up(&self, id: NodeId, raft: SimRaft, sink: Arc<dyn primus_raft::ObservationSink>) {
        self.with(|n| {
            n.rafts.insert(id, raft);
            n.sinks.insert(id, sink);
        });
    }

    /// Node `id` crashed: connections to it are refused.
    pub fn down(&self, id: NodeId) {
        self.with(|n| {
            n.rafts.remove(&id);
            n.sinks.remove(&id);
        });
    }

    /// The gate of node `id` (one per node for the whole run).
    pub fn gate(&self, id: NodeId) -> Gate {
        self.with(|n| n.gates.entry(id).or_default().clone())
    }

    /// Set the link `from → to` (messages in that direction).
    pub fn set_link(&self, from: NodeId, to: NodeId, link: Link) {
        self.with(|n| {
            if link == Link::Up {
                n.cut.remove(&(from, to));
            } else {
                n.cut.insert((from, to), link);
            }
        });
    }

    /// The link `from → to` loses `percent` % of messages (0: none).
    pub fn set_loss(&self, from: NodeId, to: NodeId, percent: u8) {
        self.with(|n| {
            if percent == 0 {
                n.loss.remove(&(from, to));
            } else {
                n.loss.insert((from, to), percent.min(100));
            }
        });
    }

    /// Whether this message `from → to` is lost (drawn from the seed).
    fn lost(&self, from: NodeId, to: NodeId) -> bool {
        self.with(|n| match n.loss.get(&(from, to)).copied() {
            Some(p) => n.rng.gen_range(0..100u8) < p,
            None => false,
        })
    }

    /// Every link up again.
    pub fn heal(&self) {
        self.with(|n| n.cut.clear());
    }

    pub fn link(&self, from: NodeId, to: NodeId) -> Link {
        self.with(|n| n.cut.get(&(from, to)).copied().unwrap_or(Link::Up))
    }

    fn delay(&self) -> Duration {
        self.with(|n| {
            let (lo, hi) = n.delay;
            Duration::from_millis(if hi > lo { n.rng.gen_range(lo..=hi) } else { lo })
        })
    }

    pub fn rpc_timeout(&self) -> Duration {
        self.with(|n| n.rpc_timeout)
    }

    /// One hop `from → to`: waits for `from`'s gate, the link and the delay.
    /// `Err(true)` refused at once, `Err(false)` lost (the caller times out).
    async fn hop(&self, from: NodeId, to: NodeId) -> Result<(), bool> {
        self.gate(from).pass().await;
        match self.link(from, to) {
            Link::Up => {}
            Link::Refused => return Err(true),
            Link::Silent => return Err(false),
        }
        if self.lost(from, to) {
            return Err(false);
        }
        tokio::time::sleep(self.delay()).await;
        Ok(())
    }

    /// Deliver a request `from → to` and its answer back, bounded by `ttl`.
    /// `call` runs on the target (after its gate lets it); `None` when the target is
    /// not running (connection refused).
    pub async fn call<T, F, Fut>(&self, from: NodeId, to: NodeId, ttl: Duration, call: F) -> Result<T, CallError>
    where
        F: FnOnce(SimRaft) -> Fut,
        Fut: Future<Output = T>,
    {
        self.call_on(from, to, ttl, |n| n.rafts.get(&to).cloned(), call).await
    }

    /// Deliver an observation report `from → to` (to `to`'s monitor).
    pub async fn report(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        term: u64,
        sent_at_ms: u64,
        payload: Vec<u8>,
    ) -> Result<Result<bool, String>, CallError> {
        self.call_on(
            from,
            to,
            ttl,
            |n| n.sinks.get(&to).cloned(),
            |sink| async move { sink.accept(from, term, sent_at_ms, &payload) },
        )
        .await
    }

    async fn call_on<E, T, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        ttl: Duration,
        lookup: impl FnOnce(&Inner) -> Option<E>,
        call: F,
    ) -> Result<T, CallError>
    where
        F: FnOnce(E) -> Fut,
        Fut: Future<Output = T>,
    {
        let ttl = ttl.min(self.rpc_timeout());
        let go = async {
            match self.hop(from, to).await {
                Ok(()) => {}
                Err(true) => return Err(CallError::Unreachable("connection refused".into())),
                Err(false) => std::future::pending::<()>().await,
            }
            let Some(target) = self.with(|n| lookup(n)) else {
                return Err(CallError::Unreachable(format!("node {to} is down")));
            };
            self.gate(to).pass().await;
            let out = call(target).await;
            match self.hop(to, from).await {
                Ok(()) => {}
                Err(true) => return Err(CallError::Unreachable("connection reset".into())),
                Err(false) => std::future::pending::<()>().await,
            }
            self.gate(from).pass().await;
            Ok(out)
        };
        match tokio::time::timeout(ttl, go).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(ttl)),
        }
    }
}

/// Why a simulated call got no answer.
#[derive(Debug, Clone)]
pub enum CallError {
    Unreachable(String),
    Timeout(Duration),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "unreachable: {m}"),
            CallError::Timeout(t) => write!(f, "timed out after {} ms", t.as_millis()),
        }
    }
}

/// The factory of node `me`'s connections.
#[derive(Clone)]
pub struct NodeNet {
    pub net: SimNet,
    pub me: NodeId,
}

impl RaftNetworkFactory<SimConfig> for NodeNet {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> SimPeer {
        SimPeer { net: self.net.clone(), from: self.me, target }
    }
}

/// One node's connection to another.
pub struct SimPeer {
    net: SimNet,
    from: NodeId,
    target: NodeId,
}

type RpcErr<E> = RPCError<NodeId, Member, RaftError<NodeId, E>>;

impl SimPeer {
    fn failed<E: std::error::Error>(&self, kind: RPCTypes, e: CallError) -> RpcErr<E> {
        match e {
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&NetMsg(m))),
            CallError::Timeout(t) => {
                RPCError::Timeout(Timeout { action: kind, id: self.from, target: self.target, timeout: t })
            }
        }
    }
}

impl RaftNetwork<SimConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let r = self
            .net
            .call(self.from, self.target, option.hard_ttl(), |raft| async move { raft.append_entries(rpc).await })
            .await
            .map_err(|e| self.failed(RPCTypes::AppendEntries, e))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let r = self
            .net
            .call(self.from, self.target, option.hard_ttl(), |raft| async move { raft.install_snapshot(rpc).await })
            .await
            .map_err(|e| self.failed(RPCTypes::InstallSnapshot, e))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let r = self
            .net
            .call(self.from, self.target, option.hard_ttl(), |raft| async move { raft.vote(rpc).await })
            .await
            .map_err(|e| self.failed(RPCTypes::Vote, e))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

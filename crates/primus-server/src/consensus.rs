//! What the coordinators' decision code needs from Raft, behind a seam: propose a
//! command and learn its committed outcome, confirm leadership with a quorum, and see
//! who leads. [`RaftConsensus`] is openraft; a simulator runs the same openraft over a
//! simulated network and store (another type configuration), through the same trait.

use openraft::impls::OneshotResponder;
use openraft::RaftTypeConfig;
use primus_types::{Member, NodeId, Request, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// This node's view of the group, from Raft's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupView {
    pub me: NodeId,
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node is in the leader state (it may be cut off from its quorum: see
    /// [`GroupView::leads_with_quorum`]).
    pub is_leader: bool,
    /// On the leader: how long ago a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Shared between views of one membership: [`Consensus::view`] is called on every
    /// engine tick and lease renewal, and copying the sets each time was a measurable cost.
    pub voters: Arc<BTreeSet<NodeId>>,
    /// Every member's gRPC address.
    pub addrs: Arc<BTreeMap<NodeId, String>>,
}

impl GroupView {
    /// Leader *and* heard from a quorum within `window_ms`: a leader cut off into a
    /// minority still calls itself leader until it hears a higher term, so leader-only
    /// duties check this instead.
    pub fn leads_with_quorum(&self, window_ms: u64) -> bool {
        self.is_leader && self.leader == Some(self.me) && self.millis_since_quorum_ack.is_some_and(|ms| ms < window_ms)
    }

    /// The leader's id and address, when known.
    pub fn leader_target(&self) -> Option<(NodeId, String)> {
        let l = self.leader?;
        Some((l, self.addrs.get(&l)?.clone()))
    }
}

/// Why a write did not commit (or committed and was refused: that is a [`Response`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// This node does not lead; `leader` if it knows who does.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Raft failed otherwise (stopped, storage error, quorum lost mid-write).
    #[error("{0}")]
    Raft(String),
    /// Not proposed: the group's feature level is below the command's, so a member may
    /// run a release that cannot decode it (see [`primus_types::FEATURE_LEVEL`]).
    #[error("{0}")]
    FeatureNotEnabled(#[from] primus_types::FeatureNotEnabled),
}

/// The group's committed feature level, as this node applied it.
pub type FeatureGate = Arc<dyn Fn() -> u32 + Send + Sync>;

#[async_trait::async_trait]
pub trait Consensus: Send + Sync + 'static {
    /// Propose `req`; once committed and applied, its log index and the state machine's
    /// answer. Not bounded here: callers bound it.
    async fn write(&self, req: Request) -> Result<(u64, Response), WriteError>;

    /// Confirm with a quorum that this node leads (a read index round).
    async fn ensure_leader(&self) -> Result<(), WriteError>;

    /// This node's current view of the group.
    fn view(&self) -> GroupView;

    /// The view, and its changes.
    fn watch(&self) -> watch::Receiver<GroupView>;
}

/// openraft as the [`Consensus`] of a node, for any type configuration carrying
/// primus' requests and responses.
pub struct RaftConsensus<C>
where
    C: RaftTypeConfig<D = Request, R = Response, NodeId = NodeId, Node = Member, Responder = OneshotResponder<C>>,
{
    raft: openraft::Raft<C>,
    view: watch::Receiver<GroupView>,
    members: Arc<MembershipCache>,
    /// `None`: every command is proposed (a group of one build, as the simulator runs).
    gate: Option<FeatureGate>,
}

fn view_of<C>(m: &openraft::RaftMetrics<NodeId, Member>, cache: &MembershipCache) -> GroupView
where
    C: RaftTypeConfig<D = Request, R = Response, NodeId = NodeId, Node = Member, Responder = OneshotResponder<C>>,
{
    let (voters, addrs) = cache.members(&m.membership_config);
    GroupView {
        me: m.id,
        term: m.current_term,
        leader: m.current_leader,
        is_leader: m.state == openraft::ServerState::Leader,
        millis_since_quorum_ack: m.millis_since_quorum_ack,
        voters,
        addrs,
    }
}

/// The voters and addresses of one membership.
type Members = (Arc<BTreeSet<NodeId>>, Arc<BTreeMap<NodeId, String>>);

/// The voters and addresses of the latest membership seen, by the log id it was
/// committed at: rebuilt only when the membership changes.
#[derive(Default)]
struct MembershipCache(Mutex<Option<(Option<openraft::LogId<NodeId>>, Members)>>);

impl MembershipCache {
    fn members(&self, stored: &openraft::StoredMembership<NodeId, Member>) -> Members {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, members)) = c.as_ref() {
            if at == stored.log_id() {
                return members.clone();
            }
        }
        let membership = stored.membership();
        let voters: Arc<BTreeSet<NodeId>> = Arc::new(membership.voter_ids().collect());
        let addrs: Arc<BTreeMap<NodeId, String>> =
            Arc::new(membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect());
        *c = Some((*stored.log_id(), (voters.clone(), addrs.clone())));
        (voters, addrs)
    }
}

impl<C> RaftConsensus<C>
where
    C: RaftTypeConfig<D = Request, R = Response, NodeId = NodeId, Node = Member, Responder = OneshotResponder<C>>,
{
    /// Wraps `raft`; a task keeps the view current (it ends with Raft's metrics).
    pub fn new(raft: openraft::Raft<C>) -> RaftConsensus<C> {
        let mut metrics = raft.metrics();
        let members = Arc::new(MembershipCache::default());
        let (tx, rx) = watch::channel(view_of::<C>(&metrics.borrow(), &members));
        let cache = members.clone();
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let v = view_of::<C>(&metrics.borrow(), &cache);
                tx.send_if_modified(|old| {
                    let changed = *old != v;
                    if changed {
                        *old = v;
                    }
                    changed
                });
            }
        });
        RaftConsensus { raft, view: rx, members, gate: None }
    }

    /// Propose a command only when the group's feature level (read through `gate`) is
    /// at least the command's: a node of a mixed-release group must never be sent an
    /// entry it cannot decode.
    pub fn with_feature_gate(mut self, gate: FeatureGate) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn raft(&self) -> &openraft::Raft<C> {
        &self.raft
    }
}

#[async_trait::async_trait]
impl<C> Consensus for RaftConsensus<C>
where
    C: RaftTypeConfig<D = Request, R = Response, NodeId = NodeId, Node = Member, Responder = OneshotResponder<C>>,
{
    async fn write(&self, req: Request) -> Result<(u64, Response), WriteError> {
        if let Some(gate) = &self.gate {
            req.command.check_feature_level(gate())?;
        }
        match self.raft.client_write(req).await {
            Ok(r) => Ok((r.log_id.index, r.data)),
            Err(openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(WriteError::Raft(e.to_string())),
        }
    }

    async fn ensure_leader(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(WriteError::Raft(e.to_string())),
        }
    }

    fn view(&self) -> GroupView {
        // The metrics themselves, not the mapped copy: callers test leadership right
        // after a change (the mapping task may not have run yet).
        view_of::<C>(&self.raft.metrics().borrow(), &self.members)
    }

    fn watch(&self) -> watch::Receiver<GroupView> {
        self.view.clone()
    }
}

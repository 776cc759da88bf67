//! What the gRPC services, the HTTP endpoint and the node's background duties share:
//! one node's Raft handle, state, configuration and the handles of its parts. Only the
//! wiring (`node`) builds it; nothing it holds imports it back.

use crate::config::Config;
use primus_raft::PeerSecurity;
use primus_types::state::Registry;
use primus_types::{NodeId, Raft};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// Shared by the gRPC services of one node.
pub struct NodeCtx {
    pub id: NodeId,
    pub cfg: Config,
    pub raft: Raft,
    pub state: primus_store::StateHandle,
    /// Present when `[mysql]` is configured.
    pub monitor: Option<Arc<crate::monitor::Monitor>>,
    /// Present when `[mysql]` is configured.
    pub engine: Option<Arc<crate::failover::Engine>>,
    /// Every cluster's primary, and the stream of its changes.
    pub feed: Arc<crate::primary::PrimaryFeed>,
    /// Fencing agents' leases (granted while this node leads).
    pub leases: Arc<crate::lease::LeaseTable>,
    /// Prometheus metrics of this node (served on `GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When each peer last answered this node's Raft RPCs (for metrics, on the leader).
    pub peer_answers: primus_raft::PeerAnswers,
    /// How this node reaches other coordinators (TLS, its token).
    pub peer: PeerSecurity,
    pub(crate) channels: Mutex<HashMap<String, Channel>>,
}

impl NodeCtx {
    /// Read the local state machine (not linearizable by itself). Returns the
    /// applied index alongside the closure's result.
    pub fn read_state<R>(&self, f: impl FnOnce(&Registry) -> R) -> (u64, R) {
        self.state.read(|s| (s.last_applied.map(|l| l.index).unwrap_or(0), f(&s.registry)))
    }

    /// Highest log index known committed: on the leader, the index a majority of
    /// voters hold (from replication progress); elsewhere, what was applied.
    pub fn committed_index(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map(|l| l.index);
        let Some(repl) = m.replication.as_ref() else {
            return applied;
        };
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let mut matched: Vec<u64> = voters
            .iter()
            .map(|v| {
                if *v == m.id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    repl.get(v).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = matched.get(voters.len() / 2).copied();
        quorum.max(applied)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Leader *and* heard from a quorum within an election timeout: a leader cut off
    /// into a minority still calls itself leader until it hears a higher term, so
    /// leader-only duties (heartbeats, topology) check this instead.
    pub fn leads_with_quorum(raft: &Raft, me: NodeId, election_timeout_min_ms: u64) -> bool {
        let m = raft.metrics().borrow().clone();
        m.state == openraft::ServerState::Leader
            && m.current_leader == Some(me)
            && m.millis_since_quorum_ack.is_some_and(|ms| ms < election_timeout_min_ms)
    }

    /// The leader this node knows of, with its address.
    pub fn leader_target(&self) -> Option<(NodeId, String)> {
        // Borrow, don't clone: this is on the path of every GetPrimary.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let l = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&l)?.addr.clone();
        Some((l, addr))
    }

    /// A reused channel to another coordinator's gRPC endpoint (for forwarding).
    pub fn channel_to(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .peer
            .endpoint(addr)
            .map_err(|e| tonic::Status::internal(format!("cannot reach coordinator at {addr:?}: {e}")))?
            .connect_timeout(Duration::from_millis(self.cfg.raft.connect_timeout_ms))
            .tcp_nodelay(true)
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

//! Test-only fault injection in the peer network layer.
//!
//! When enabled (primusd with `PRIMUS_FAULT_INJECTION=1`), a test can tell a node to
//! drop all Raft traffic to and from a set of peers. Outgoing RPCs to a dropped peer
//! wait out their timeout and fail as a real silent partition would; incoming RPCs
//! from a dropped peer are refused. Setting the same list on both sides of a cut makes
//! a symmetric partition. Disabled, the switch refuses to be set.

use primus_types::NodeId;
use std::collections::BTreeSet;
use std::sync::RwLock;

#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    dropped: RwLock<BTreeSet<NodeId>>,
}

impl Faults {
    pub fn new(enabled: bool) -> Self {
        Faults { enabled, dropped: RwLock::new(BTreeSet::new()) }
    }

    /// Whether this process accepts fault-injection commands.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_dropped(&self, peer: NodeId) -> bool {
        self.enabled && self.dropped.read().map(|d| d.contains(&peer)).unwrap_or(false)
    }

    /// Replace the set of dropped peers. Returns `false` if injection is disabled.
    pub fn set_dropped(&self, peers: impl IntoIterator<Item = NodeId>) -> bool {
        if !self.enabled {
            return false;
        }
        let mut d = self.dropped.write().unwrap_or_else(|p| p.into_inner());
        *d = peers.into_iter().collect();
        tracing::warn!(dropped = ?*d, "fault injection: peer links dropped");
        true
    }

    pub fn dropped(&self) -> Vec<NodeId> {
        self.dropped.read().map(|d| d.iter().copied().collect()).unwrap_or_default()
    }
}

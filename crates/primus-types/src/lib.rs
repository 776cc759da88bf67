//! Plain domain types shared by every primus crate.
//!
//! * [`ClusterName`], [`InstanceAddr`]: validated names of the things primus watches.
//! * [`Command`], [`Request`], [`Response`]: what goes through the Raft log and what
//!   applying it answers.
//! * [`state::Registry`]: the replicated state, with a pure, deterministic `apply`.
//! * [`TypeConfig`]: openraft's type configuration for the whole project.

pub mod command;
pub mod failover;
pub mod names;
pub mod state;
pub mod topology;

pub use command::{ClusterSettings, Command, Origin, Rejection, Request, Response};
pub use failover::{
    AgentRecord, FailoverKind, FailoverOutcome, FailoverRecord, Maintenance, PromotionRule, RefusalRecord,
    SplitFenceRecord, StepRecord,
};
pub use names::{ClusterName, InstanceAddr, NameError};
pub use topology::{InstanceRole, Topology, TopologyInstance};

use std::io::Cursor;

/// A coordinator's node id in the Raft group.
pub type NodeId = u64;

/// A coordinator as recorded in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// gRPC `host:port` used by peers and clients.
    pub addr: String,
    /// Free-form datacenter/zone label.
    #[serde(default)]
    pub datacenter: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.addr, self.datacenter)
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration shared by store, network and server.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Raft = openraft::Raft<TypeConfig>;

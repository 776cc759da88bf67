//! Plain domain types shared by every primus crate.
//!
//! * [`ClusterName`], [`InstanceAddr`]: validated names of the things primus watches.
//! * [`Command`], [`Request`], [`Response`]: what goes through the Raft log and what
//!   applying it answers; the failover records it builds ([`FailoverRecord`] with its
//!   [`Step`]s and [`StepOutcome`]s, [`AnalysisCode`]).
//! * `state::Registry`: the replicated state, with a pure, deterministic `apply`.
//! * `TypeConfig`: openraft's type configuration for the whole project.
//!
//! The last two need the `raft` feature (on by default): without it this crate does
//! not depend on openraft, and so not on tokio (primus-failover stays free of both).

pub mod analysis;
pub mod command;
pub mod failover;
pub mod names;
#[cfg(feature = "raft")]
mod raft;
#[cfg(feature = "raft")]
pub mod state;
pub mod topology;

pub use analysis::{AnalysisCode, UnknownAnalysisCode};
pub use command::{
    ClusterSettings, Command, FailoverOverrides, FeatureNotEnabled, Origin, Rejection, Request, Response,
    BASE_FEATURE_LEVEL, FEATURE_LEVEL,
};
pub use failover::{
    AgentRecord, FailoverKind, FailoverOutcome, FailoverRecord, LeaseRelease, Maintenance, PromotionRule,
    RefusalRecord, SplitFenceRecord, Step, StepOutcome, StepRecord,
};
pub use names::{ClusterName, InstanceAddr, NameError};
#[cfg(feature = "raft")]
pub use raft::{Entry, LogId, Raft, SnapshotMeta, StoredMembership, TypeConfig, Vote};
pub use topology::{InstanceRole, Topology, TopologyInstance};

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

#[cfg(test)]
mod compat_tests;

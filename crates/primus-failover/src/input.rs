//! What the leader hands to the decisions: the committed topology joined with every
//! coordinator's latest probe of every instance, and the thresholds that turn those facts
//! into verdicts.
//!
//! Time is an input (`now_ms`, `at_ms`, `io_progress_at_ms`, all on the leader's clock), so
//! every decision can be replayed from a stored input and tested without a clock.

use primus_mysql::{Observation, ProbeError};
use primus_types::{InstanceAddr, InstanceRole};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use primus_types::{NodeId, PromotionRule};

/// One coordinator's latest probe of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatorView {
    /// When the probe was taken; compared with [`ClusterInput::now_ms`], so on the same clock.
    pub at_ms: u64,
    /// Shared with the monitor's record (built many times a second, never changed).
    pub result: Result<std::sync::Arc<Observation>, ProbeError>,
}

/// One instance of the cluster: its place in the committed topology and what everyone saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInput {
    pub addr: InstanceAddr,
    /// From the committed topology.
    pub role: InstanceRole,
    /// From the committed topology.
    pub source: Option<InstanceAddr>,
    pub datacenter: Option<String>,
    /// Every coordinator's latest view (the leader's own included).
    pub views: BTreeMap<NodeId, CoordinatorView>,
    /// Leader's clock: last time this replica's replication from its source was seen progressing
    /// (Slave_received_heartbeats increased, or read position / Gtid_IO_Pos advanced, between two probes).
    pub io_progress_at_ms: Option<u64>,
    pub maintenance: bool,
    pub promotion_rule: PromotionRule,
}

/// Everything the decisions need about one cluster, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInput {
    pub cluster: String,
    /// The current (committed) epoch; a failover establishes `epoch + 1`.
    pub epoch: u64,
    pub now_ms: u64,
    pub primary: Option<InstanceAddr>,
    /// The Raft voters: "a majority of coordinators" is a majority of these.
    pub voters: BTreeSet<NodeId>,
    pub instances: BTreeMap<InstanceAddr, InstanceInput>,
    /// Set (with the evidence line) when the primary has a fencing agent whose lease
    /// the leader counts as run out.
    #[serde(default)]
    pub primary_lease_expired: Option<String>,
    /// The primary's fencing agent as the leader counts its lease: `None` when the primary has
    /// no agent, `Some(true)` while the agent holds a lease this leader granted.
    #[serde(default)]
    pub primary_agent_holds_lease: Option<bool>,
    /// Set (with the evidence) when the leader tried to make a read-only primary writable and
    /// could not, several times in a row.
    #[serde(default)]
    pub primary_unwritable: Option<String>,
    /// No-loss mode: why the leader's last attempt refused to fail over (a semi-sync
    /// replica may have acknowledged what every candidate lacks).
    #[serde(default)]
    pub no_loss_refusal: Option<String>,
}

impl ClusterInput {
    /// Instances whose committed source is `source`, in address order.
    pub fn replicas_of<'a>(&'a self, source: &'a InstanceAddr) -> impl Iterator<Item = &'a InstanceInput> + 'a {
        self.instances.values().filter(move |i| i.source.as_ref() == Some(source))
    }

    /// Smallest number of voters that is a majority.
    pub fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// The knobs of the analysis and of the candidate choice. Every one is a config key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// A view older than this does not count.
    pub view_max_age_ms: u64,
    /// A replica whose replication from its source has not progressed for longer than this has
    /// lost its source.
    pub replica_progress_stale_ms: u64,
    /// A replica further behind than this is not promoted; `None`: no limit.
    pub max_lag_for_candidate_s: Option<u64>,
    /// Among equally advanced candidates, prefer the old primary's datacenter.
    pub prefer_same_datacenter: bool,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            view_max_age_ms: 3000,
            replica_progress_stale_ms: 1500,
            max_lag_for_candidate_s: None,
            prefer_same_datacenter: true,
        }
    }
}

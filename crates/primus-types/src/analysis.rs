//! Analysis codes: the name of a cluster's situation, as the failover decisions
//! (primus-failover) compute it and as failover and refusal records keep it.
//!
//! Stored as the code's name (`"DeadPrimary"`), the form every release wrote: a
//! record's code always names one of these, and a code is never renamed or removed.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The name of a cluster's situation, after orchestrator's analysis codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AnalysisCode {
    NoProblem,
    /// Primary unreachable from a majority of voters, every reachable direct replica lost it.
    DeadPrimary,
    /// As `DeadPrimary`, but some direct replicas cannot be read either.
    DeadPrimaryAndSomeReplicas,
    /// Neither the primary nor any direct replica can be read: nothing to promote (or the
    /// coordinators are the ones partitioned).
    DeadPrimaryAndReplicas,
    /// A majority cannot observe the primary, but it is alive (a replica still replicates from
    /// it, or it answers without letting us in).
    UnreachablePrimary,
    /// A minority of voters cannot reach the primary.
    UnreachablePrimaryFromSomeCoordinators,
    /// The primary is fine but no direct replica replicates.
    AllReplicasNotReplicating,
    /// Semi-sync is on with no semi-sync replica connected: commits wait for acks.
    LockedSemiSyncPrimary,
    /// An intermediate is unreachable from a majority and every readable replica of it lost it.
    DeadIntermediatePrimary,
    /// More than one reachable instance is writable.
    PrimarySplit,
    /// The topology has no primary.
    NoPrimary,
    /// Fewer than a majority of voters have a fresh view of the primary: no verdict possible.
    NotEnoughFreshViews,
    /// The primary's fencing agent stopped renewing its lease (agent dead, or its host cut
    /// off from the coordinators): the agent has fenced its server, so the cluster has no
    /// writable primary until another is promoted.
    PrimaryLeaseExpired,
    /// The primary is reachable but read-only (fenced by its agent during a coordinator stall,
    /// restarted with `read_only=ON`, a failover aborted after fencing it): nothing takes writes.
    /// Actionable — the leader makes it writable again, write-ahead — once its agent holds a
    /// lease again (or it has no agent), unless it is in maintenance.
    ReadOnlyPrimary,
    /// The primary is read-only and the leader's attempts to make it writable failed: fail over.
    UnwritablePrimary,
    /// The primary is dead, but in no-loss (semi-sync) mode no replica can be promoted
    /// without losing transactions a semi-sync replica may have acknowledged (one that
    /// cannot be read, or one that holds what the candidate lacks). The leader keeps
    /// re-checking with fresh probes and fails over once it can; an operator may accept
    /// the loss (`primusctl failover --accept-loss`).
    DeadPrimaryWouldLoseData,
    /// A replica replicates from a former primary that a failover demoted (it was down
    /// when the failover's plan was made): the leader moves it under the primary, as an
    /// intermediate repair, when everything it executed is on the primary. Recorded with
    /// that repair; the analysis of the cluster does not produce it.
    ReplicaOfDemotedPrimary,
}

impl AnalysisCode {
    pub const ALL: [AnalysisCode; 17] = [
        AnalysisCode::NoProblem,
        AnalysisCode::DeadPrimary,
        AnalysisCode::DeadPrimaryAndSomeReplicas,
        AnalysisCode::DeadPrimaryAndReplicas,
        AnalysisCode::UnreachablePrimary,
        AnalysisCode::UnreachablePrimaryFromSomeCoordinators,
        AnalysisCode::AllReplicasNotReplicating,
        AnalysisCode::LockedSemiSyncPrimary,
        AnalysisCode::DeadIntermediatePrimary,
        AnalysisCode::PrimarySplit,
        AnalysisCode::NoPrimary,
        AnalysisCode::NotEnoughFreshViews,
        AnalysisCode::PrimaryLeaseExpired,
        AnalysisCode::ReadOnlyPrimary,
        AnalysisCode::UnwritablePrimary,
        AnalysisCode::DeadPrimaryWouldLoseData,
        AnalysisCode::ReplicaOfDemotedPrimary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisCode::NoProblem => "NoProblem",
            AnalysisCode::DeadPrimary => "DeadPrimary",
            AnalysisCode::DeadPrimaryAndSomeReplicas => "DeadPrimaryAndSomeReplicas",
            AnalysisCode::DeadPrimaryAndReplicas => "DeadPrimaryAndReplicas",
            AnalysisCode::UnreachablePrimary => "UnreachablePrimary",
            AnalysisCode::UnreachablePrimaryFromSomeCoordinators => "UnreachablePrimaryFromSomeCoordinators",
            AnalysisCode::AllReplicasNotReplicating => "AllReplicasNotReplicating",
            AnalysisCode::LockedSemiSyncPrimary => "LockedSemiSyncPrimary",
            AnalysisCode::DeadIntermediatePrimary => "DeadIntermediatePrimary",
            AnalysisCode::PrimarySplit => "PrimarySplit",
            AnalysisCode::NoPrimary => "NoPrimary",
            AnalysisCode::NotEnoughFreshViews => "NotEnoughFreshViews",
            AnalysisCode::PrimaryLeaseExpired => "PrimaryLeaseExpired",
            AnalysisCode::ReadOnlyPrimary => "ReadOnlyPrimary",
            AnalysisCode::UnwritablePrimary => "UnwritablePrimary",
            AnalysisCode::DeadPrimaryWouldLoseData => "DeadPrimaryWouldLoseData",
            AnalysisCode::ReplicaOfDemotedPrimary => "ReplicaOfDemotedPrimary",
        }
    }

    /// Which finding wins when several hold: lower wins. Split brain first (the executor must
    /// fence whatever else is true), then the primary's death, then what only needs an alert.
    pub fn priority(self) -> u8 {
        match self {
            AnalysisCode::PrimarySplit => 0,
            AnalysisCode::NoPrimary => 1,
            AnalysisCode::DeadPrimary
            | AnalysisCode::DeadPrimaryAndSomeReplicas
            | AnalysisCode::DeadPrimaryAndReplicas
            | AnalysisCode::PrimaryLeaseExpired
            | AnalysisCode::UnwritablePrimary
            | AnalysisCode::DeadPrimaryWouldLoseData => 2,
            AnalysisCode::UnreachablePrimary | AnalysisCode::ReadOnlyPrimary => 3,
            AnalysisCode::LockedSemiSyncPrimary | AnalysisCode::ReplicaOfDemotedPrimary => 4,
            AnalysisCode::DeadIntermediatePrimary => 5,
            AnalysisCode::AllReplicasNotReplicating => 6,
            AnalysisCode::NotEnoughFreshViews => 7,
            AnalysisCode::UnreachablePrimaryFromSomeCoordinators => 8,
            AnalysisCode::NoProblem => 9,
        }
    }

    /// One of the three codes saying the primary is dead.
    pub fn is_dead_primary(self) -> bool {
        matches!(
            self,
            AnalysisCode::DeadPrimary
                | AnalysisCode::DeadPrimaryAndSomeReplicas
                | AnalysisCode::DeadPrimaryAndReplicas
                | AnalysisCode::DeadPrimaryWouldLoseData
        )
    }

    /// A majority of voters could not observe the primary (a fence of it can only be best effort).
    pub fn primary_unobservable(self) -> bool {
        self.is_dead_primary() || self == AnalysisCode::UnreachablePrimary
    }

    /// The codes an automatic failover acts on (when actionable).
    pub fn calls_for_failover(self) -> bool {
        matches!(
            self,
            AnalysisCode::DeadPrimary
                | AnalysisCode::DeadPrimaryAndSomeReplicas
                | AnalysisCode::PrimaryLeaseExpired
                | AnalysisCode::UnwritablePrimary
                | AnalysisCode::DeadPrimaryWouldLoseData
        )
    }

    /// Whether the failover may go on when it cannot fence the old primary itself:
    /// nobody can reach it, or its own agent has already fenced it (lease run out).
    pub fn fence_best_effort(self) -> bool {
        self.primary_unobservable() || self == AnalysisCode::PrimaryLeaseExpired
    }
}

impl fmt::Display for AnalysisCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown analysis code {0:?}")]
pub struct UnknownAnalysisCode(pub String);

impl FromStr for AnalysisCode {
    type Err = UnknownAnalysisCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AnalysisCode::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAnalysisCode(s.to_string()))
    }
}

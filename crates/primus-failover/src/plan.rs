//! A failover as data: the ordered steps the leader commits to Raft and executes.
//!
//! The leader commits the plan before touching any instance and each step as it completes, so a
//! new leader can read how far a failover got and resume it — or abort it, as long as no step
//! that cannot be undone has run ([`Step::is_irreversible`]). Every step names its instances, so
//! executing it again is idempotent.

use crate::analysis::Analysis;
use crate::candidate::Candidate;
use crate::input::ClusterInput;
use primus_types::InstanceAddr;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use primus_types::{FailoverKind, Step};

/// The steps of one failover, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPlan {
    pub steps: Vec<Step>,
}

impl FailoverPlan {
    /// Index of the first irreversible step.
    pub fn point_of_no_return(&self) -> Option<usize> {
        self.steps.iter().position(Step::is_irreversible)
    }

    /// Whether a failover whose first `started` steps have begun may still be aborted.
    pub fn can_abort(&self, started: usize) -> bool {
        !self.steps.iter().take(started).any(Step::is_irreversible)
    }

    /// The epoch the plan establishes (from its heartbeat step).
    pub fn epoch(&self) -> Option<u64> {
        self.steps.iter().find_map(|s| match s {
            Step::WriteHeartbeat { epoch, .. } => Some(*epoch),
            _ => None,
        })
    }
}

impl fmt::Display for FailoverPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}. {s}", i + 1)?;
        }
        Ok(())
    }
}

/// The steps to replace the primary with `candidate`. The old primary is the topology's primary
/// (else the analysis' subject); the new epoch is `input.epoch + 1`.
///
/// * Automatic/Manual: fence the old primary (best effort when the analysis says a majority
///   cannot observe it, required otherwise), let the candidate apply what it received, wait for
///   the old primary's lease to run out, promote it, repoint the followers, write the heartbeat.
/// * Switchover: fence the old primary first (required), wait until the candidate has applied
///   everything the fenced primary executed, promote, repoint the followers and then the old
///   primary, write the heartbeat.
pub fn plan(input: &ClusterInput, analysis: &Analysis, candidate: &Candidate, kind: FailoverKind) -> FailoverPlan {
    let new = &candidate.addr;
    let old = input.primary.as_ref().or(analysis.subject.as_ref()).filter(|o| *o != new);
    let mut steps = Vec::new();
    let switchover = kind == FailoverKind::Switchover;
    if let Some(old) = old {
        let best_effort = !switchover && analysis.code.fence_best_effort();
        steps.push(Step::FenceOldPrimary { addr: old.clone(), best_effort });
    }
    steps.push(Step::WaitCandidateCatchUp {
        candidate: new.clone(),
        target_gtid: candidate.target_gtid.to_string(),
        catch_up_with: old.filter(|_| switchover).cloned(),
    });
    // A switchover fences a live, reachable primary itself; a failover cannot count
    // on reaching it, so it waits for the old primary's agent to have fenced it.
    if let (false, Some(old)) = (switchover, old) {
        steps.push(Step::WaitLeaseExpiry { addr: old.clone() });
    }
    steps.push(Step::PromoteCandidate { candidate: new.clone() });
    for r in &candidate.followers {
        if r != new && Some(r) != old {
            steps.push(Step::RepointReplica { replica: r.clone(), to: new.clone() });
        }
    }
    if let (true, Some(old)) = (switchover, old) {
        steps.push(Step::RepointOldPrimary { addr: old.clone(), to: new.clone() });
    }
    steps.push(Step::WriteHeartbeat { primary: new.clone(), epoch: input.epoch.saturating_add(1) });
    steps.push(Step::Complete);
    FailoverPlan { steps }
}

/// The steps to repair a dead intermediate primary: repoint each of its replicas, by GTID, to
/// the intermediate's own source `to`. Nothing is promoted and no epoch is consumed; the dead
/// intermediate is left alone (it is unreachable) and rejoins as a leaf when it comes back.
pub fn plan_intermediate_repair(input: &ClusterInput, intermediate: &InstanceAddr, to: &InstanceAddr) -> FailoverPlan {
    let mut steps: Vec<Step> = input
        .instances
        .values()
        .filter(|i| i.source.as_ref() == Some(intermediate) && &i.addr != to)
        .map(|i| Step::RepointReplica { replica: i.addr.clone(), to: to.clone() })
        .collect();
    steps.push(Step::Complete);
    FailoverPlan { steps }
}

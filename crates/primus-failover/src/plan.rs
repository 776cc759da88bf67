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

pub use primus_types::FailoverKind;

/// One step of a failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Make the old primary refuse writes (`read_only`/`super_read_only`, kill client
    /// connections, fence hook). `best_effort`: a majority cannot reach it, so failing to fence it
    /// does not stop the failover; otherwise (a switchover, or a failover of a primary we can
    /// reach) the failover aborts if it cannot be fenced.
    FenceOldPrimary {
        addr: InstanceAddr,
        best_effort: bool,
    },
    /// Wait until the candidate has applied `target_gtid` (everything it had received when the
    /// plan was made). `catch_up_with`: also everything this instance — the fenced old primary of
    /// a switchover — has executed, read after fencing.
    WaitCandidateCatchUp {
        candidate: InstanceAddr,
        target_gtid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        catch_up_with: Option<InstanceAddr>,
    },
    /// Wait until the lease of the old primary's fencing agent has run out (the
    /// agent has fenced its server by then, reachable or not). Skipped, and the
    /// failover recorded as unfenced, when the old primary has no agent.
    WaitLeaseExpiry {
        addr: InstanceAddr,
    },
    /// Stop replication, forget the source, make it writable.
    PromoteCandidate {
        candidate: InstanceAddr,
    },
    /// Replicate from the new primary by GTID.
    RepointReplica {
        replica: InstanceAddr,
        to: InstanceAddr,
    },
    /// Switchover: the old primary becomes a replica of the new one.
    RepointOldPrimary {
        addr: InstanceAddr,
        to: InstanceAddr,
    },
    /// Write the heartbeat row on the new primary with the failover's epoch (the fencing token).
    WriteHeartbeat {
        primary: InstanceAddr,
        epoch: u64,
    },
    Complete,
}

impl Step {
    /// From promotion on, the old primary is no longer the only possible primary: a new leader
    /// must finish the failover, not abort it. (A step whose start is recorded but not its end
    /// counts as done for this question.)
    pub fn is_irreversible(&self) -> bool {
        !matches!(self, Step::FenceOldPrimary { .. } | Step::WaitCandidateCatchUp { .. } | Step::WaitLeaseExpiry { .. })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::FenceOldPrimary { addr, best_effort } => {
                write!(f, "fence old primary {addr}{}", if *best_effort { " (best effort)" } else { "" })
            }
            Step::WaitCandidateCatchUp { candidate, target_gtid, catch_up_with } => {
                write!(f, "wait for {candidate} to apply {target_gtid}")?;
                if let Some(o) = catch_up_with {
                    write!(f, " and everything {o} executed")?;
                }
                Ok(())
            }
            Step::WaitLeaseExpiry { addr } => write!(f, "wait for the lease of {addr}'s agent to run out"),
            Step::PromoteCandidate { candidate } => write!(f, "promote {candidate}"),
            Step::RepointReplica { replica, to } => write!(f, "repoint {replica} to {to}"),
            Step::RepointOldPrimary { addr, to } => write!(f, "repoint old primary {addr} to {to}"),
            Step::WriteHeartbeat { primary, epoch } => write!(f, "write heartbeat on {primary} with epoch {epoch}"),
            Step::Complete => f.write_str("complete"),
        }
    }
}

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

//! Failover records as the Raft log keeps them.
//!
//! A failover is written ahead: `StartFailover` (with the analysis, the candidate,
//! the new epoch and the whole plan) commits before any instance is touched; each
//! step commits as it completes; `FinishFailover` closes the record. A new leader
//! finds an unfinished record in the state machine and resumes it from the first
//! step not recorded as done, or aborts it if nothing irreversible happened.
//!
//! Everything in a record is typed ([`Step`], [`StepOutcome`],
//! [`AnalysisCode`](crate::AnalysisCode)) and serialized as the releases before
//! these types wrote it (plan steps as `{"step": "…", …}` objects, outcomes and codes
//! as strings): records written by any release load, and an older primusd in the
//! group (during a rolling upgrade) reads what this one writes.

use crate::names::InstanceAddr;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// Decided by the leader from a dead-primary analysis.
    Automatic,
    /// `primusctl failover`: an operator declared the primary dead.
    Manual,
    /// `primusctl switchover`: planned, the old primary alive and demoted gracefully.
    Switchover,
    /// The replicas of a dead intermediate primary were repointed to its source. The
    /// primary does not change and no epoch is consumed: `old_primary` is the dead
    /// intermediate, `candidate` the instance its replicas now replicate from.
    IntermediateRepair,
}

impl FailoverKind {
    /// Whether this kind replaces the cluster's primary (and consumes an epoch).
    pub fn changes_primary(self) -> bool {
        self != FailoverKind::IntermediateRepair
    }
}

impl std::fmt::Display for FailoverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailoverKind::Automatic => "automatic",
            FailoverKind::Manual => "manual",
            FailoverKind::Switchover => "switchover",
            FailoverKind::IntermediateRepair => "intermediate_repair",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "reason")]
pub enum FailoverOutcome {
    /// The candidate is the primary; the topology was updated.
    Succeeded,
    /// Stopped before anything irreversible; the old primary stays primary.
    Aborted(String),
    /// Stopped after an irreversible step could not be completed; needs an operator.
    Failed(String),
}

/// One step of a failover: planned by primus-failover, committed in `StartFailover`,
/// carried out by the leader's executor.
///
/// Stored in the Raft log as `{"step": "<snake_case name>", <fields>}`. As for
/// [`Command`](crate::Command): a new step is a new variant, a variant is never
/// renamed or removed, a new field carries `#[serde(default)]`; a step that does not
/// decode makes its whole entry undecodable (never silently dropped from the plan).
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

/// What a step of a failover did, as recorded when it completed. A step that fails
/// is not recorded: the failover is closed (aborted or failed) with the reason.
///
/// Serialized as the text every release wrote, and older ones still read: the
/// detail for [`StepOutcome::Done`] (`"read_only set, 2 client connections killed"`,
/// `"done"`), `"skipped: <reason>"` for [`StepOutcome::Skipped`], `"failed: <error>"`
/// for [`StepOutcome::Failed`]. That is also its `Display`, which `history` and the
/// audit trail show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step did what it says; what the instance showed. Never starts with
    /// `skipped: ` or `failed: ` (it would read back as such).
    Done(String),
    /// The failover went on without this step; why (`unreachable (…)`, `… has no
    /// fencing agent: UNFENCED unless the fence step reached it`).
    Skipped(String),
    /// A step after the promotion that failed (retries exhausted): past the promotion a
    /// failover only goes forward, so it is recorded and the next step runs.
    Failed(String),
}

impl StepOutcome {
    const SKIPPED: &'static str = "skipped: ";
    const FAILED: &'static str = "failed: ";

    pub fn is_failed(&self) -> bool {
        matches!(self, StepOutcome::Failed(_))
    }

    /// The outcome of the `complete` step.
    pub fn complete() -> StepOutcome {
        StepOutcome::Done("done".into())
    }

    pub fn is_skipped(&self) -> bool {
        matches!(self, StepOutcome::Skipped(_))
    }

    /// The detail of a step done, or the reason of one skipped.
    pub fn text(&self) -> &str {
        match self {
            StepOutcome::Done(t) | StepOutcome::Skipped(t) | StepOutcome::Failed(t) => t,
        }
    }

    /// Read back a recorded outcome. Every string is one: releases before this type
    /// wrote `done`, a detail, or `skipped: <reason>`, as it does.
    pub fn parse(recorded: &str) -> StepOutcome {
        if let Some(reason) = recorded.strip_prefix(Self::SKIPPED) {
            return StepOutcome::Skipped(reason.to_string());
        }
        if let Some(error) = recorded.strip_prefix(Self::FAILED) {
            return StepOutcome::Failed(error.to_string());
        }
        StepOutcome::Done(recorded.to_string())
    }
}

impl fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepOutcome::Done(detail) => f.write_str(detail),
            StepOutcome::Skipped(reason) => write!(f, "{}{reason}", Self::SKIPPED),
            StepOutcome::Failed(error) => write!(f, "{}{error}", Self::FAILED),
        }
    }
}

impl Serialize for StepOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StepOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let recorded = String::deserialize(d)?;
        Ok(StepOutcome::parse(&recorded))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: u32,
    /// Human description of the step (its [`Step`]'s `Display` when it ran).
    pub description: String,
    pub outcome: StepOutcome,
    pub at_ms: u64,
    /// Log index at which the step was recorded.
    pub log_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub id: String,
    pub kind: FailoverKind,
    pub analysis_code: crate::AnalysisCode,
    pub evidence: Vec<String>,
    pub old_primary: InstanceAddr,
    pub candidate: InstanceAddr,
    /// The epoch this failover establishes (the fencing token written into heartbeats).
    pub epoch: u64,
    /// The plan, in order (`steps[i]` records how `plan[i]` went).
    pub plan: Vec<Step>,
    pub steps: Vec<StepRecord>,
    pub started_at_ms: u64,
    pub started_index: u64,
    pub started_by: String,
    pub outcome: Option<FailoverOutcome>,
    pub finished_at_ms: Option<u64>,
    /// GTID position the new primary started from (the promotion point): its executed
    /// set read after its replication stopped, before it was made writable.
    #[serde(default)]
    pub promotion_gtid: Option<String>,
    /// MariaDB: the (domain, server) pairs the new primary held at the promotion point
    /// (`gtid_binlog_state` plus the last GTIDs of its positions), for telling a former
    /// primary's divergent writes apart from the new primary's by server id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_binlog_state: Option<String>,
    #[serde(default)]
    pub acked_by: Option<String>,
    /// The id the operator's client sent with its request: a repeat of the request
    /// (after a broken connection or a leader's death) is answered with this failover
    /// instead of starting another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl FailoverRecord {
    pub fn in_progress(&self) -> bool {
        self.outcome.is_none()
    }
    /// Index of the next step to run.
    pub fn next_step(&self) -> usize {
        self.steps.len()
    }
}

/// A failover the leader wanted but refused to carry out (no safe candidate): kept
/// so that `history` shows why a dead primary was left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalRecord {
    pub at_ms: u64,
    pub analysis_code: crate::AnalysisCode,
    pub evidence: Vec<String>,
    pub reason: String,
}

/// A writable instance other than the recorded primary (split brain), fenced by the
/// leader: committed before it is touched (`outcome` None), completed after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFenceRecord {
    pub id: String,
    pub at_ms: u64,
    pub instance: InstanceAddr,
    /// The cluster's epoch when it was decided; the recorded primary of that epoch stays.
    pub epoch: u64,
    pub evidence: Vec<String>,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
}

/// Per-instance promotion preference, as orchestrator has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionRule {
    Prefer,
    #[default]
    Neutral,
    PreferNot,
    MustNot,
}

impl std::str::FromStr for PromotionRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.replace('-', "_").as_str() {
            "prefer" => Ok(PromotionRule::Prefer),
            "neutral" => Ok(PromotionRule::Neutral),
            "prefer_not" => Ok(PromotionRule::PreferNot),
            "must_not" => Ok(PromotionRule::MustNot),
            _ => Err(format!("unknown promotion rule {s:?}: use prefer, neutral, prefer_not or must_not")),
        }
    }
}

impl std::fmt::Display for PromotionRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PromotionRule::Prefer => "prefer",
            PromotionRule::Neutral => "neutral",
            PromotionRule::PreferNot => "prefer_not",
            PromotionRule::MustNot => "must_not",
        })
    }
}

/// A `primus-agent` that announced itself for an instance: from then on a failover
/// of that instance waits for its lease to run out before promoting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: String,
    pub registered_at_ms: u64,
    /// The longest lease TTL any agent of this instance registered with (it never
    /// shrinks): a leader that inherits this instance's leases waits at least this
    /// long, whatever its own configuration says. `None`: registered by an older agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The agent's `fence.timeout_ms`: how long it may take to fence its server once its
    /// lease ran out (the leader's wait covers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_timeout_ms: Option<u64>,
    /// The largest `[fencing] lease_margin_ms` of any leader that granted this
    /// instance's agents a lease (it never shrinks): a leader registers the agent again
    /// under its own margin before granting, so a later leader configured with a
    /// smaller one still waits at least this long past a lease. `None`: registered by
    /// an older coordinator release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_ms: Option<u64>,
    /// The agent handed its lease back (its mysqld exited and cannot take a write
    /// again before the agent fences it): a failover need not wait for the lease, and
    /// none is granted until the agent registers again (which clears this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<LeaseRelease>,
    /// The log index this registration was committed at: a release must name it.
    /// `None`: registered by an older coordinator (no release is taken then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_index: Option<u64>,
}

/// An agent's hand-back of its lease (see [`AgentRecord::released`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRelease {
    /// When the leader proposed it (its wall clock).
    pub at_ms: u64,
    /// The agent's account: which mysqld process exited, how its port is guarded.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub reason: String,
    pub by: String,
    pub since_ms: u64,
    pub until_ms: u64,
}

//! Failover records as the Raft log keeps them.
//!
//! A failover is written ahead: `StartFailover` (with the analysis, the candidate,
//! the new epoch and the whole plan) commits before any instance is touched; each
//! step commits as it completes; `FinishFailover` closes the record. A new leader
//! finds an unfinished record in the state machine and resumes it from the first
//! step not recorded as done, or aborts it if nothing irreversible happened.
//! Plan steps are stored as JSON values so that this crate does not depend on the
//! decision crate that defines them.

use crate::names::InstanceAddr;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub index: u32,
    /// Human description of the step.
    pub description: String,
    /// `done`, or `skipped: reason`.
    pub outcome: String,
    pub at_ms: u64,
    /// Log index at which the step was recorded.
    pub log_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub id: String,
    pub kind: FailoverKind,
    pub analysis_code: String,
    pub evidence: Vec<String>,
    pub old_primary: InstanceAddr,
    pub candidate: InstanceAddr,
    /// The epoch this failover establishes (the fencing token written into heartbeats).
    pub epoch: u64,
    /// The plan, one JSON value per step (interpreted by the executor).
    pub plan: Vec<serde_json::Value>,
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
    pub analysis_code: String,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub reason: String,
    pub by: String,
    pub since_ms: u64,
    pub until_ms: u64,
}

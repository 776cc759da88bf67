//! Failover decisions, as pure functions of what the coordinators observed.
//!
//! Three questions, each answered from a [`ClusterInput`] (the committed topology joined with
//! every coordinator's latest probe of every instance, and the time) without any I/O:
//!
//! 1. [`analyze`]: what is wrong with the cluster? An [`Analysis`] — a named code after
//!    orchestrator's (`DeadPrimary`, `UnreachablePrimary`, …), the subject, and the evidence.
//! 2. [`choose_candidate`]: which replica replaces a dead primary, and who can follow it?
//! 3. [`plan()`](fn@plan): the [`Step`]s of the failover, which the leader commits to Raft one by one.
//!
//! Why a separate crate: the analysis is data. It can be printed (`primusctl analysis`), stored
//! with every decision (the failover record holds the code and its evidence), replayed from a
//! stored input, and tested as a table of scenarios — none of which works if the verdict is a
//! branch buried in the code that probes servers and sends Raft entries. And detection is kept
//! apart from recovery: deciding that a primary is dead must not depend on how we would fail
//! it over, and the executor (in `primus-server`) only carries out a plan it did not invent.
//!
//! No clocks either: `now_ms` and every timestamp are inputs, so a test states "the view is 5 s
//! old" instead of sleeping, and the leader's decision can be re-derived from its record.

pub mod analysis;
pub mod candidate;
pub mod input;
pub mod plan;
mod views;

#[cfg(test)]
mod analysis_tests;
#[cfg(test)]
mod candidate_tests;
#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod testkit;

pub use analysis::{analyze, replicates_from, Analysis, AnalysisCode, UnknownAnalysisCode};
pub use candidate::{
    choose_candidate, choose_candidate_explicit, choose_candidate_for_switchover, no_loss_gaps, received_from,
    relay_applied, union_of, Candidate, NoCandidate,
};
pub use input::{ClusterInput, CoordinatorView, InstanceInput, NodeId, PromotionRule, Thresholds};
pub use plan::{plan, plan_intermediate_repair, FailoverKind, FailoverPlan, Step};

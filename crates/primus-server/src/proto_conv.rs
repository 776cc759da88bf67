//! Conversions from the replicated state's types to their wire forms (the gRPC and
//! HTTP answers share them).

use primus_proto::v1::{FailoverStepView, FailoverView, InFlightFailover, PrimaryState};
use primus_types::{FailoverOutcome, FailoverRecord, Step};

/// The wire form of a [`primus_types::state::PrimaryState`].
pub fn primary_state_view(p: &primus_types::state::PrimaryState) -> PrimaryState {
    PrimaryState {
        cluster: p.cluster.to_string(),
        primary: p.primary.as_ref().map(ToString::to_string).unwrap_or_default(),
        epoch: p.epoch,
        datacenter: p.datacenter.clone().unwrap_or_default(),
        failover: p.failover.as_ref().map(|f| InFlightFailover {
            id: f.id.clone(),
            kind: f.kind.clone(),
            old_primary: f.old_primary.to_string(),
            candidate: f.candidate.to_string(),
            epoch: f.epoch,
        }),
        demoted: p.demoted.iter().map(ToString::to_string).collect(),
    }
}

pub fn fence_view(f: &primus_types::SplitFenceRecord) -> primus_proto::v1::SplitFenceView {
    primus_proto::v1::SplitFenceView {
        id: f.id.clone(),
        at_ms: f.at_ms,
        instance: f.instance.to_string(),
        epoch: f.epoch,
        evidence: f.evidence.clone(),
        outcome: f.outcome.clone().unwrap_or_default(),
        finished_at_ms: f.finished_at_ms,
    }
}

pub fn failover_view(f: &FailoverRecord) -> FailoverView {
    let (outcome, reason) = match &f.outcome {
        None => ("in_progress", String::new()),
        Some(FailoverOutcome::Succeeded) => ("succeeded", String::new()),
        Some(FailoverOutcome::Aborted(r)) => ("aborted", r.clone()),
        Some(FailoverOutcome::Failed(r)) => ("failed", r.clone()),
    };
    FailoverView {
        id: f.id.clone(),
        kind: f.kind.to_string(),
        analysis_code: f.analysis_code.to_string(),
        evidence: f.evidence.clone(),
        old_primary: f.old_primary.to_string(),
        candidate: f.candidate.to_string(),
        epoch: f.epoch,
        steps: f
            .steps
            .iter()
            .map(|s| FailoverStepView {
                index: s.index,
                description: s.description.clone(),
                outcome: s.outcome.to_string(),
                at_ms: s.at_ms,
            })
            .collect(),
        started_at_ms: f.started_at_ms,
        finished_at_ms: f.finished_at_ms,
        outcome: outcome.into(),
        outcome_reason: reason,
        started_by: f.started_by.clone(),
        acked_by: f.acked_by.clone().unwrap_or_default(),
        promotion_gtid: f.promotion_gtid.clone().unwrap_or_default(),
        plan: f.plan.iter().map(step_json).collect(),
        request_id: f.request_id.clone().unwrap_or_default(),
    }
}

/// A plan step as JSON, keys sorted: what `history` showed when plans were stored as
/// JSON values, and still shows.
fn step_json(s: &Step) -> String {
    match serde_json::to_value(s) {
        Ok(v) => v.to_string(),
        // Not reachable for a `Step` (strings and numbers only); said rather than hidden.
        Err(e) => format!("{{\"unencodable\":{:?}}}", format!("{s}: {e}")),
    }
}

//! The quorum of observations: what the coordinators, together, can say about one instance.
//!
//! "Unreachable" is a vote only a voter with a *fresh* view casts, and only when the probe got
//! no answer at all (refused, timed out, connection lost). A server that answered — even to
//! reject us with "too many connections" or bad credentials — is alive: that is never evidence of
//! death. Views older than the threshold are listed, so the evidence says why they did not count.

use crate::input::{ClusterInput, CoordinatorView, InstanceInput, NodeId, Thresholds};
use primus_mysql::{Observation, ProbeError};

/// The probe got no answer from the server (it may be dead, hung, or cut off from us).
pub(crate) fn is_unreachable(e: &ProbeError) -> bool {
    matches!(e, ProbeError::Unreachable { .. } | ProbeError::Timeout { .. } | ProbeError::ConnectionLost { .. })
}

/// A probe error in a few words, for evidence lines.
pub(crate) fn short_error(e: &ProbeError) -> String {
    match e {
        ProbeError::Unreachable { message } => format!("unreachable: {message}"),
        ProbeError::Timeout { stage, after_ms } => format!("timeout after {after_ms} ms during {stage}"),
        ProbeError::ConnectionLost { stage, message } => format!("connection lost during {stage}: {message}"),
        ProbeError::ConnectRejected { code, message } => format!("rejected (error {code}): {message}"),
        ProbeError::AccessDenied { code, .. } => format!("access denied (error {code})"),
        ProbeError::QueryFailed { code, message, .. } => match code {
            Some(c) => format!("query failed (error {c}): {message}"),
            None => format!("query failed: {message}"),
        },
        ProbeError::ReadOnly { message } => format!("read-only: {message}"),
        ProbeError::Unparseable { stage, message } => format!("unparseable answer during {stage}: {message}"),
    }
}

/// What the coordinators' fresh views say about one instance.
#[derive(Debug)]
pub(crate) struct Reach<'a> {
    pub voters: usize,
    pub majority: usize,
    /// Fresh voter views that got no answer.
    pub down: Vec<(NodeId, &'a ProbeError)>,
    /// Fresh voter views where the server answered but gave no observation (alive).
    pub refused: Vec<(NodeId, &'a ProbeError)>,
    /// Voters with a fresh observation.
    pub ok: Vec<NodeId>,
    /// Voters whose view does not count, and why ("2: view 5000 ms old").
    pub not_counted: Vec<String>,
    /// The freshest fresh observation, from any coordinator (voter or not).
    pub latest: Option<(NodeId, &'a Observation)>,
}

impl<'a> Reach<'a> {
    pub fn of(input: &ClusterInput, inst: &'a InstanceInput, th: &Thresholds) -> Reach<'a> {
        let fresh = |at_ms: u64| input.now_ms.saturating_sub(at_ms) <= th.view_max_age_ms;
        let mut r = Reach {
            voters: input.voters.len(),
            majority: input.majority(),
            down: Vec::new(),
            refused: Vec::new(),
            ok: Vec::new(),
            not_counted: Vec::new(),
            latest: None,
        };
        let mut latest_at = 0u64;
        for (node, view) in &inst.views {
            if !fresh(view.at_ms) {
                continue;
            }
            if let Ok(obs) = &view.result {
                // Strictly newer wins, so equal times keep the lowest node id: deterministic.
                if r.latest.is_none() || view.at_ms > latest_at {
                    r.latest = Some((*node, obs));
                    latest_at = view.at_ms;
                }
            }
        }
        for node in &input.voters {
            match inst.views.get(node) {
                None => r.not_counted.push(format!("{node}: no view")),
                Some(v) if !fresh(v.at_ms) => r.not_counted.push(format!(
                    "{node}: view {} ms old (max {})",
                    input.now_ms.saturating_sub(v.at_ms),
                    th.view_max_age_ms
                )),
                Some(CoordinatorView { result: Ok(_), .. }) => r.ok.push(*node),
                Some(CoordinatorView { result: Err(e), .. }) if is_unreachable(e) => r.down.push((*node, e)),
                Some(CoordinatorView { result: Err(e), .. }) => r.refused.push((*node, e)),
            }
        }
        r
    }

    pub fn fresh_voters(&self) -> usize {
        self.down.len() + self.refused.len() + self.ok.len()
    }

    /// A majority of voters got no answer from it.
    pub fn down_by_majority(&self) -> bool {
        self.down.len() >= self.majority
    }

    /// A majority of voters could not observe it (no answer, or an answer without data).
    pub fn unobserved_by_majority(&self) -> bool {
        self.down.len() + self.refused.len() >= self.majority
    }

    /// "1: timeout after 800 ms during connect, 3: unreachable: connection refused"
    pub fn down_list(&self) -> String {
        list(&self.down)
    }

    pub fn refused_list(&self) -> String {
        list(&self.refused)
    }

    /// Views that did not say "unreachable", for the evidence: who reached it, who answered
    /// without data, whose view did not count.
    pub fn others(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.ok.is_empty() {
            let ids: Vec<String> = self.ok.iter().map(ToString::to_string).collect();
            out.push(format!("reached by coordinator{} {}", if ids.len() > 1 { "s" } else { "" }, ids.join(", ")));
        }
        if !self.refused.is_empty() {
            out.push(format!("answered without data (alive): {}", self.refused_list()));
        }
        if !self.not_counted.is_empty() {
            out.push(format!("not counted: {}", self.not_counted.join(", ")));
        }
        out
    }
}

/// "1: timeout after 800 ms during connect, 2, 3: unreachable: connection refused": voters
/// grouped by what they saw, in order of first appearance.
fn list(v: &[(NodeId, &ProbeError)]) -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (n, e) in v {
        let what = short_error(e);
        match groups.iter_mut().find(|(w, _)| *w == what) {
            Some((_, nodes)) => nodes.push(n.to_string()),
            None => groups.push((what, vec![n.to_string()])),
        }
    }
    groups.iter().map(|(what, nodes)| format!("{}: {what}", nodes.join(", "))).collect::<Vec<_>>().join(", ")
}

//! Failure analysis: one named code per cluster, with the evidence that led to it.
//!
//! The diagnosis is holistic (seed 004): a primary is dead only when a majority of voters cannot
//! reach it *and* every direct replica we can read has lost it too — its IO thread is not
//! connected, or its replication from the primary stopped progressing (seed 002: heartbeats and
//! positions are the end-to-end proof, since an IO thread can say `Yes` on a socket that
//! will never deliver again). When the coordinators cannot reach the primary but a replica still
//! replicates from it, the coordinators are the ones cut off: alert, never fail over.
//!
//! Several findings can hold at once (a dead intermediate behind a locked primary); the one
//! with the highest [`AnalysisCode::priority`] is the analysis, the others are named in its
//! evidence. Only the `Dead*` codes and `DeadIntermediatePrimary` are ever actionable.

use crate::input::{ClusterInput, InstanceInput, Thresholds};
use crate::views::Reach;
use primus_mysql::status::IoThreadState;
use primus_mysql::{Observation, ReplicaStatus};
use primus_types::{InstanceAddr, InstanceRole};
use serde::{Deserialize, Serialize};
use std::fmt;

pub use primus_types::{AnalysisCode, UnknownAnalysisCode};

/// A verdict on one cluster: printable, storable with any decision, comparable in tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    pub code: AnalysisCode,
    /// The instance the code is about (the primary, or the dead intermediate).
    pub subject: Option<InstanceAddr>,
    /// Human lines, each a fact that led to the code.
    pub evidence: Vec<String>,
    /// Whether the leader may act on it without an operator.
    pub actionable: bool,
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(s) = &self.subject {
            write!(f, " on {s}")?;
        }
        f.write_str(if self.actionable { " (actionable)" } else { " (no action)" })?;
        if !self.evidence.is_empty() {
            write!(f, ": {}", self.evidence.join("; "))?;
        }
        Ok(())
    }
}

impl Analysis {
    fn new(code: AnalysisCode, subject: Option<&InstanceAddr>, evidence: Vec<String>, actionable: bool) -> Self {
        Analysis { code, subject: subject.cloned(), evidence, actionable }
    }
}

/// Computes the cluster's analysis from its input. Pure: same input, same analysis.
pub fn analyze(input: &ClusterInput, th: &Thresholds) -> Analysis {
    let mut found: Vec<Analysis> = Vec::new();
    found.extend(primary_split(input, th));
    let mut primary_notes = Vec::new();
    match &input.primary {
        None => {
            found.push(Analysis::new(AnalysisCode::NoPrimary, None, vec!["the topology has no primary".into()], false))
        }
        Some(p) => match input.instances.get(p) {
            None => found.push(Analysis::new(
                AnalysisCode::NoPrimary,
                Some(p),
                vec![format!("the topology names {p} as primary but has no entry for it")],
                false,
            )),
            Some(primary) => {
                let (problems, notes) = primary_checks(input, th, primary);
                found.extend(problems);
                primary_notes = notes;
            }
        },
    }
    found.extend(dead_intermediates(input, th));
    if let (Some(p), Some(why)) = (&input.primary, &input.primary_lease_expired) {
        // Only when nothing worse already says the primary is gone.
        if !found.iter().any(|a| a.code.is_dead_primary()) {
            let mut ev = vec![why.clone()];
            let maintenance = input.instances.get(p).is_some_and(|i| i.maintenance);
            if maintenance {
                ev.push(format!("primary {p} is in maintenance: no automatic action"));
            }
            found.push(Analysis::new(AnalysisCode::PrimaryLeaseExpired, Some(p), ev, !maintenance));
        }
    }

    // No-loss mode: the leader found that failing over now would lose what a semi-sync
    // replica may have acknowledged.
    if let Some(why) = &input.no_loss_refusal {
        for a in found
            .iter_mut()
            .filter(|a| matches!(a.code, AnalysisCode::DeadPrimary | AnalysisCode::DeadPrimaryAndSomeReplicas))
        {
            a.code = AnalysisCode::DeadPrimaryWouldLoseData;
            a.evidence.insert(0, format!("no-loss mode: {why}"));
        }
    }
    // Stable: equal priorities keep discovery order (intermediates in address order).
    found.sort_by_key(|a| a.code.priority());
    let mut it = found.into_iter();
    match it.next() {
        Some(mut best) => {
            for other in it {
                let on = other.subject.as_ref().map(|s| format!(" on {s}")).unwrap_or_default();
                best.evidence.push(format!("also {}{on}", other.code));
            }
            best
        }
        None => Analysis::new(AnalysisCode::NoProblem, input.primary.as_ref(), primary_notes, false),
    }
}

/// How a readable-or-not replica relates to its source.
enum Link<'a> {
    /// IO thread connected, progress fresh.
    Replicating { row: &'a ReplicaStatus },
    /// Readable, and it has lost its source (or has no channel from it).
    Lost { row: Option<&'a ReplicaStatus> },
    /// No fresh observation of it.
    Unreadable,
}

struct ReplicaLink<'a> {
    link: Link<'a>,
    /// One evidence line.
    line: String,
}

impl ReplicaLink<'_> {
    /// Readable, with a channel from the source that shows it lost the source.
    fn confirms_loss(&self) -> bool {
        matches!(self.link, Link::Lost { row: Some(_) })
    }

    /// Readable, with both replication threads running on its channel from the source.
    fn threads_running(&self) -> bool {
        match &self.link {
            Link::Replicating { row } | Link::Lost { row: Some(row) } => {
                row.io_running == IoThreadState::Yes && row.sql_running
            }
            Link::Lost { row: None } | Link::Unreadable => false,
        }
    }
}

/// The replication row of `obs` whose source is `source`.
/// `obs` has a replication channel from `source`.
pub fn replicates_from(obs: &Observation, source: &InstanceAddr) -> bool {
    row_for(obs, source).is_some()
}

pub(crate) fn row_for<'a>(obs: &'a Observation, source: &InstanceAddr) -> Option<&'a ReplicaStatus> {
    obs.replication.iter().find(|r| r.source_port == source.port() && r.source_host.eq_ignore_ascii_case(source.host()))
}

fn io_word(io: IoThreadState) -> &'static str {
    match io {
        IoThreadState::Yes => "running",
        IoThreadState::Connecting => "connecting",
        IoThreadState::No => "stopped",
    }
}

fn link_of<'a>(
    input: &ClusterInput,
    th: &Thresholds,
    inst: &'a InstanceInput,
    source: &InstanceAddr,
) -> ReplicaLink<'a> {
    let reach = Reach::of(input, inst, th);
    let addr = &inst.addr;
    let Some((_, obs)) = reach.latest else {
        let why = if reach.down_by_majority() {
            format!("unreachable from {}/{} coordinators ({})", reach.down.len(), reach.voters, reach.down_list())
        } else if !reach.refused.is_empty() {
            format!("answered without data ({})", reach.refused_list())
        } else if !reach.down.is_empty() {
            format!("no fresh observation (unreachable from {})", reach.down_list())
        } else {
            "no fresh observation".to_string()
        };
        return ReplicaLink { link: Link::Unreadable, line: format!("replica {addr}: {why}") };
    };
    let Some(row) = row_for(obs, source) else {
        return ReplicaLink {
            link: Link::Lost { row: None },
            line: format!("replica {addr}: no replication channel from {source}"),
        };
    };
    let age = inst.io_progress_at_ms.map(|t| input.now_ms.saturating_sub(t));
    let fresh_progress = age.is_some_and(|a| a <= th.replica_progress_stale_ms);
    let progress = match age {
        None => "no progress seen".to_string(),
        Some(a) if a <= th.replica_progress_stale_ms => format!("progress {a} ms ago"),
        Some(a) => format!("no progress for {a} ms"),
    };
    let sql = if row.sql_running { "" } else { ", SQL stopped" };
    let mut errors = String::new();
    if let Some(e) = &row.last_io_error {
        errors.push_str(&format!(" (IO error {}: {})", e.errno, e.message));
    }
    if let Some(e) = &row.last_sql_error {
        errors.push_str(&format!(" (SQL error {}: {})", e.errno, e.message));
    }
    let line = format!("replica {addr}: IO {}{sql}, {progress}{errors}", io_word(row.io_running));
    let link = if row.io_running == IoThreadState::Yes && fresh_progress {
        Link::Replicating { row }
    } else {
        Link::Lost { row: Some(row) }
    };
    ReplicaLink { link, line }
}

fn links<'a>(input: &'a ClusterInput, th: &Thresholds, source: &'a InstanceAddr) -> Vec<ReplicaLink<'a>> {
    input.replicas_of(source).map(|r| link_of(input, th, r, source)).collect()
}

/// Checks on the topology's primary: its death, its reachability, its replicas. Returns the
/// findings, and notes worth showing when nothing is wrong.
fn primary_checks(input: &ClusterInput, th: &Thresholds, primary: &InstanceInput) -> (Vec<Analysis>, Vec<String>) {
    let p = &primary.addr;
    let reach = Reach::of(input, primary, th);
    let replicas = links(input, th, p);
    let replica_lines = || replicas.iter().map(|r| r.line.clone());
    let mut found = Vec::new();
    let maintenance_line = format!("primary {p} is in maintenance: no automatic action");

    if reach.down_by_majority() {
        let mut ev = vec![format!(
            "primary {p} unreachable from {}/{} coordinators ({})",
            reach.down.len(),
            reach.voters,
            reach.down_list()
        )];
        ev.extend(reach.others().into_iter().map(|o| format!("primary {p}: {o}")));
        ev.extend(replica_lines());
        let replicating = replicas.iter().filter(|r| matches!(r.link, Link::Replicating { .. })).count();
        let lost = replicas.iter().filter(|r| matches!(r.link, Link::Lost { .. })).count();
        let unreadable = replicas.len() - replicating - lost;
        let (code, actionable) = if replicating > 0 {
            ev.push(format!(
                "{replicating} of {} direct replicas still replicate from it: the coordinators are cut off, not failing over",
                replicas.len()
            ));
            (AnalysisCode::UnreachablePrimary, false)
        } else if lost == 0 {
            ev.push(if replicas.is_empty() {
                "it has no direct replicas: nothing to promote".to_string()
            } else {
                "no direct replica can be read: nothing to promote, or the coordinators are partitioned".to_string()
            });
            (AnalysisCode::DeadPrimaryAndReplicas, false)
        } else if !replicas.iter().any(ReplicaLink::confirms_loss) {
            // Replicas that do not replicate from it say nothing about it: a stale topology
            // must not pass for a confirmation.
            ev.push("no readable direct replica has a replication channel from it: nothing confirms its death".into());
            (AnalysisCode::DeadPrimaryAndReplicas, false)
        } else if unreadable > 0 {
            ev.push(format!("{lost}/{} direct replicas lost it, {unreadable} cannot be read", replicas.len()));
            (AnalysisCode::DeadPrimaryAndSomeReplicas, true)
        } else {
            ev.push(format!("{lost}/{lost} direct replicas lost it"));
            (AnalysisCode::DeadPrimary, true)
        };
        let actionable = if actionable && primary.maintenance {
            ev.push(maintenance_line);
            false
        } else {
            actionable
        };
        found.push(Analysis::new(code, Some(p), ev, actionable));
        return (found, Vec::new());
    }

    if reach.unobserved_by_majority() {
        let mut ev = vec![format!(
            "primary {p} cannot be observed by {}/{} coordinators but is alive ({})",
            reach.down.len() + reach.refused.len(),
            reach.voters,
            reach.refused_list()
        )];
        if !reach.down.is_empty() {
            ev.push(format!("primary {p} unreachable from {} ({})", reach.down.len(), reach.down_list()));
        }
        ev.extend(replica_lines());
        found.push(Analysis::new(AnalysisCode::UnreachablePrimary, Some(p), ev, false));
        return (found, Vec::new());
    }

    if reach.fresh_voters() < reach.majority {
        let mut ev = vec![format!(
            "only {}/{} voters have a fresh view of primary {p} (need {}): no verdict",
            reach.fresh_voters(),
            reach.voters,
            reach.majority
        )];
        ev.extend(reach.others().into_iter().map(|o| format!("primary {p}: {o}")));
        if !reach.down.is_empty() {
            ev.push(format!("primary {p} unreachable from {} of them ({})", reach.down.len(), reach.down_list()));
        }
        found.push(Analysis::new(AnalysisCode::NotEnoughFreshViews, Some(p), ev, false));
    }
    if !reach.down.is_empty() {
        let ev = vec![format!(
            "primary {p} unreachable from {}/{} coordinators ({}), a minority: no action",
            reach.down.len(),
            reach.voters,
            reach.down_list()
        )];
        found.push(Analysis::new(AnalysisCode::UnreachablePrimaryFromSomeCoordinators, Some(p), ev, false));
    }

    let mut notes = vec![format!("primary {p} reachable from {}/{} coordinators", reach.ok.len(), reach.voters)];
    let Some((_, obs)) = reach.latest else {
        return (found, notes);
    };

    if obs.read_only {
        found.push(read_only_primary(input, primary, obs));
    }

    let ss = &obs.semi_sync;
    if ss.source_enabled == Some(true) && ss.source_active == Some(true) && ss.source_clients == Some(0) {
        let mut ev = vec![format!(
            "primary {p}: semi-sync enabled and active with 0 semi-sync replicas connected: commits wait for acks"
        )];
        ev.extend(replica_lines());
        found.push(Analysis::new(AnalysisCode::LockedSemiSyncPrimary, Some(p), ev, false));
    }

    // Seed 004, "all first tier slaves not replicating": stale topology, not a failover. With
    // the primary fine, a connecting IO thread is the replica's problem, so it counts here.
    let readable: Vec<&ReplicaLink<'_>> = replicas.iter().filter(|r| !matches!(r.link, Link::Unreadable)).collect();
    if !readable.is_empty() && readable.iter().all(|r| !r.threads_running()) {
        let mut ev = vec![format!(
            "primary {p} is reachable but none of its {} readable direct replicas replicates",
            readable.len()
        )];
        ev.extend(replica_lines());
        found.push(Analysis::new(AnalysisCode::AllReplicasNotReplicating, Some(p), ev, false));
    } else {
        // Worth showing with NoProblem: a replica broken alone (seed 004: its IO thread failing
        // while the primary is fine is the replica's problem, not the primary's).
        notes.extend(replicas.iter().filter(|r| !matches!(r.link, Link::Replicating { .. })).map(|r| r.line.clone()));
    }
    (found, notes)
}

/// The primary answers but refuses writes: the cluster takes no writes at all.
fn read_only_primary(input: &ClusterInput, primary: &InstanceInput, obs: &Observation) -> Analysis {
    let p = &primary.addr;
    let sro = if obs.super_read_only == Some(true) { " and super_read_only" } else { "" };
    let mut ev =
        vec![format!("primary {p} is reachable but read_only{sro} is ON: no server of the cluster takes writes")];
    if let Some(why) = &input.primary_unwritable {
        ev.push(format!("it could not be made writable again: {why}"));
        let actionable = if primary.maintenance {
            ev.push(format!("primary {p} is in maintenance: no automatic action"));
            false
        } else {
            ev.push("failing over to a replica".into());
            true
        };
        return Analysis::new(AnalysisCode::UnwritablePrimary, Some(p), ev, actionable);
    }
    let actionable = match input.primary_agent_holds_lease {
        _ if primary.maintenance => {
            ev.push(format!("primary {p} is in maintenance: left as it is"));
            false
        }
        Some(false) => {
            ev.push("its agent holds no lease from the leader (yet): made writable once it does".into());
            false
        }
        Some(true) => {
            ev.push("its agent holds a lease again: the leader makes it writable (write-ahead)".into());
            true
        }
        None => {
            ev.push("it has no fencing agent: the leader makes it writable (write-ahead)".into());
            true
        }
    };
    Analysis::new(AnalysisCode::ReadOnlyPrimary, Some(p), ev, actionable)
}

/// Seed 004's intermediate masters: the replicas of an intermediate give the holistic view of it.
fn dead_intermediates(input: &ClusterInput, th: &Thresholds) -> Vec<Analysis> {
    let mut found = Vec::new();
    for inst in input.instances.values().filter(|i| i.role == InstanceRole::Intermediate) {
        let reach = Reach::of(input, inst, th);
        if !reach.down_by_majority() {
            continue;
        }
        let replicas = links(input, th, &inst.addr);
        if replicas.is_empty() || replicas.iter().any(|r| matches!(r.link, Link::Replicating { .. })) {
            continue;
        }
        let lost = replicas.iter().filter(|r| matches!(r.link, Link::Lost { .. })).count();
        let a = &inst.addr;
        let of = inst.source.as_ref().map(|s| format!(" (replica of {s})")).unwrap_or_default();
        let mut ev = vec![format!(
            "intermediate {a}{of} unreachable from {}/{} coordinators ({})",
            reach.down.len(),
            reach.voters,
            reach.down_list()
        )];
        ev.extend(replicas.iter().map(|r| r.line.clone()));
        let mut actionable = true;
        if lost == 0 {
            ev.push("none of its replicas can be read: nothing to repoint".into());
            actionable = false;
        } else if !replicas.iter().any(ReplicaLink::confirms_loss) {
            ev.push("no readable replica has a replication channel from it: nothing confirms its death".into());
            actionable = false;
        } else {
            let to = inst.source.as_ref().map(|s| format!(" to {s}")).unwrap_or_default();
            let unreadable = match replicas.len() - lost {
                0 => String::new(),
                n => format!(", {n} cannot be read"),
            };
            ev.push(format!("{lost}/{} replicas lost it{unreadable}: repoint them{to}", replicas.len()));
        }
        if inst.maintenance {
            ev.push(format!("intermediate {a} is in maintenance: no automatic action"));
            actionable = false;
        }
        found.push(Analysis::new(AnalysisCode::DeadIntermediatePrimary, Some(a), ev, actionable));
    }
    found
}

/// More than one reachable instance accepting writes: whatever else is wrong, two writable
/// servers is the one state that corrupts data, so it is reported first.
fn primary_split(input: &ClusterInput, th: &Thresholds) -> Option<Analysis> {
    let writable: Vec<&InstanceInput> = input
        .instances
        .values()
        .filter(|i| Reach::of(input, i, th).latest.is_some_and(|(_, o)| !o.read_only))
        .collect();
    if writable.len() < 2 {
        return None;
    }
    let names: Vec<String> = writable
        .iter()
        .map(|i| match &i.source {
            Some(s) => format!("{} ({} of {s})", i.addr, i.role),
            None => format!("{} ({})", i.addr, i.role),
        })
        .collect();
    let mut ev = vec![format!("{} writable instances: {}", writable.len(), names.join(", "))];
    match &input.primary {
        Some(p) => ev.push(format!("every writable instance but {p} must be fenced")),
        None => ev.push("the topology has no primary: an operator must decide which one stays writable".into()),
    }
    let in_maintenance = |i: &&&InstanceInput| i.maintenance && Some(&i.addr) != input.primary.as_ref();
    ev.extend(writable.iter().filter(in_maintenance).map(|i| format!("{} is in maintenance: left writable", i.addr)));
    // Actionable: with a recorded primary, some other writable instance may be fenced.
    let fenceable = writable.iter().any(|i| Some(&i.addr) != input.primary.as_ref() && !i.maintenance);
    let subject = input.primary.as_ref().unwrap_or(&writable[0].addr);
    Some(Analysis::new(AnalysisCode::PrimarySplit, Some(subject), ev, input.primary.is_some() && fenceable))
}

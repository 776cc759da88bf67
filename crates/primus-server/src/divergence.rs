//! Divergence of former primaries, on the coordinator side: which failover replaced an
//! instance, and what it executed beyond that failover's promotion point (the computation
//! itself is [`primus_mysql::divergent_transactions`]).
//!
//! An instance is checked while it is a *former primary*: listed in the cluster's `demoted`
//! set, or shown demoted/detached in the topology, and the `old_primary` of a succeeded
//! failover that changed the primary. Once `rejoin` put it back as a replica it is no longer
//! checked (a rejoin with `--discard-divergent` is the operator's recorded decision).

use primus_mysql::{Divergence, Observation};
use primus_types::state::ClusterRecord;
use primus_types::{FailoverOutcome, FailoverRecord, InstanceAddr, InstanceRole};

/// A former primary compared with the promotion point of the failover that replaced it.
#[derive(Debug, Clone)]
pub struct Diverged {
    /// The failover that replaced it (the latest one, when it was replaced several times).
    pub failover: FailoverRecord,
    pub promotion_gtid: String,
    pub divergence: Divergence,
}

impl Diverged {
    /// The topology flag, e.g. `divergent: 5 transactions (0-1-101..105) since failover c-e2`.
    pub fn flag(&self) -> String {
        format!("divergent: {} ({}) since failover {}", count_text(&self.divergence), self.divergence, self.failover.id)
    }
}

/// `5 transactions`, `at least 2 transactions`, `1 transaction`.
pub fn count_text(d: &Divergence) -> String {
    let n = d.count();
    let at_least = if d.exact() { "" } else { "at least " };
    format!("{at_least}{n} transaction{}", if n == 1 { "" } else { "s" })
}

/// The succeeded failover that replaced `addr` as primary, while `addr` is a former primary
/// that has not rejoined.
pub fn replaced_by<'a>(c: &'a ClusterRecord, addr: &InstanceAddr) -> Option<&'a FailoverRecord> {
    let former = c.demoted.contains(addr)
        || c.topology
            .instances
            .get(addr)
            .is_some_and(|i| matches!(i.role, InstanceRole::Demoted | InstanceRole::Detached));
    if !former {
        return None;
    }
    c.history
        .iter()
        .rev()
        .find(|f| &f.old_primary == addr && f.kind.changes_primary() && f.outcome == Some(FailoverOutcome::Succeeded))
}

/// `None` when `addr` is not a former primary; otherwise its divergence as observed in `obs`,
/// or why it cannot be computed.
///
/// Every later failover that changed the primary counts too: one that promoted a replica
/// lacking some of what `addr` had executed before it was replaced left those behind on
/// `addr` as well (found by primus-sim: a former primary holding 196 transactions the
/// primary lacks was reported not divergent). The largest divergence wins, with the
/// failover it is measured from.
pub fn check(c: &ClusterRecord, addr: &InstanceAddr, obs: &Observation) -> Option<Result<Diverged, String>> {
    let f = replaced_by(c, addr)?;
    let first = c.history.iter().position(|h| h.id == f.id)?;
    let mut best: Option<Diverged> = None;
    for g in
        c.history[first..].iter().filter(|g| g.kind.changes_primary() && g.outcome == Some(FailoverOutcome::Succeeded))
    {
        let Some(point) = g.promotion_gtid.clone() else {
            if g.id == f.id {
                return Some(Err(format!("failover {} recorded no promotion point", f.id)));
            }
            continue;
        };
        let d = match primus_mysql::divergent_transactions(obs, &point, g.promotion_binlog_state.as_deref()) {
            Ok(d) => d,
            Err(e) if g.id == f.id => return Some(Err(format!("failover {}: {e}", f.id))),
            Err(_) => continue,
        };
        if best.as_ref().is_none_or(|b| d.count() > b.divergence.count()) {
            best = Some(Diverged { failover: g.clone(), promotion_gtid: point, divergence: d });
        }
    }
    best.map(Ok)
}

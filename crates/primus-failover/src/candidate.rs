//! Which replica becomes the primary, and who can follow it.
//!
//! Only the dead primary's direct replicas are considered, each through its freshest fresh
//! observation. A replica is *eligible* when promoting it is safe: binary log with
//! `log_slave_updates` (so the others can replicate what it received from the old primary), not
//! in maintenance, promotion rule other than `must_not`, no errant transactions, an applier that
//! can catch up (not stopped on an error, not delayed, within the lag limit), and a version no
//! newer than any replica that will replicate from it.
//!
//! Among eligible replicas the most advanced wins: data first, preferences second. A candidate
//! must hold every other replica's *executed* transactions, otherwise those replicas cannot be
//! repointed to it without losing (or keeping diverged) transactions; when none does, the most
//! advanced is chosen and the replicas that cannot follow are named. Then the promotion rule
//! (`prefer` > `neutral` > `prefer_not`), the old primary's datacenter, the lowest lag, and the
//! address, so the choice is deterministic.
//!
//! "Advanced" counts what a replica has *received*, not only applied: before promotion the
//! candidate applies its relay log ([`Candidate::target_gtid`]). MariaDB: `gtid_current_pos` ∪
//! `Gtid_IO_Pos`; MySQL: `gtid_executed` ∪ `Retrieved_Gtid_Set`.
//!
//! Errant transactions are checked against the old primary when it can still be read (a
//! switchover). Otherwise they are judged without it: a replica is suspect when it
//! holds transactions that no other replica has received and that the primary did not write
//! (the primary's identity comes from the replicas' `Master_Server_Id` / `Source_UUID`). The check
//! is [`primus_mysql::errant_transactions`] against a reference made of the other replicas'
//! received sets. It is conservative: a transaction of an *earlier* primary that only one replica
//! still has (all others far behind) also looks errant.

use crate::analysis::row_for;
use crate::input::{ClusterInput, InstanceInput, PromotionRule, Thresholds};
use crate::views::Reach;
use primus_mysql::{
    errant_transactions, AnyGtidSet, GtidOrdering, GtidState, MariaBinlogState, Observation, ReplicaStatus,
};
use primus_types::InstanceAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The replica to promote, and what to do with the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub addr: InstanceAddr,
    /// What it must have applied before promotion: everything it has received.
    pub target_gtid: AnyGtidSet,
    /// Other direct replicas of the old primary to repoint to it.
    pub followers: Vec<InstanceAddr>,
    /// Direct replicas that cannot be repointed to it now, and why.
    pub cannot_follow: Vec<(InstanceAddr, String)>,
    /// Why this one: human lines, including why others were excluded.
    pub reasons: Vec<String>,
}

/// No replica can be promoted safely; why, per replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct NoCandidate {
    pub reasons: BTreeMap<InstanceAddr, String>,
}

impl fmt::Display for NoCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no replica can be promoted")?;
        for (i, (addr, why)) in self.reasons.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{addr}: {why}")?;
        }
        Ok(())
    }
}

impl NoCandidate {
    fn one(addr: &InstanceAddr, why: impl Into<String>) -> Self {
        NoCandidate { reasons: BTreeMap::from([(addr.clone(), why.into())]) }
    }
}

/// Chooses the replica of `dead_primary` to promote. See the [module docs](self).
pub fn choose_candidate(
    input: &ClusterInput,
    dead_primary: &InstanceAddr,
    th: &Thresholds,
) -> Result<Candidate, NoCandidate> {
    let pool = Pool::new(input, dead_primary, th);
    if pool.replicas.is_empty() {
        return Err(NoCandidate::one(dead_primary, "has no direct replicas in the topology"));
    }
    let mut eligible: Vec<(usize, Assessment)> = Vec::new();
    let mut refused: BTreeMap<InstanceAddr, String> = BTreeMap::new();
    for i in 0..pool.replicas.len() {
        let a = pool.assess(i);
        if a.refusals.is_empty() {
            eligible.push((i, a));
        } else {
            refused.insert(pool.replicas[i].inst.addr.clone(), a.refusals.join("; "));
        }
    }
    let n = eligible.len();
    let best = eligible.into_iter().min_by(|(i, a), (j, b)| pool.rank_key(*i, a).cmp(&pool.rank_key(*j, b)));
    let Some((best, assessment)) = best else {
        return Err(NoCandidate { reasons: refused });
    };
    let mut c = pool.candidate(best, assessment);
    c.reasons.insert(0, format!("chosen among {n} eligible direct replicas of {dead_primary}"));
    c.reasons.extend(refused.iter().map(|(a, why)| format!("excluded {a}: {why}")));
    Ok(c)
}

/// Validates an operator's choice (`failover --to`): the same safety rules as
/// [`choose_candidate`], without the ranking. Refuses a replica that would make another lose
/// executed transactions when some eligible replica would not.
pub fn choose_candidate_explicit(
    input: &ClusterInput,
    dead_primary: &InstanceAddr,
    wanted: &InstanceAddr,
    th: &Thresholds,
) -> Result<Candidate, NoCandidate> {
    explicit(input, dead_primary, wanted, th, false)
}

/// [`choose_candidate_explicit`] for a planned switchover: the old primary is alive and
/// is fenced first, and the candidate then applies everything it executed, so a
/// replica that is momentarily ahead of the candidate loses nothing and can follow it.
pub fn choose_candidate_for_switchover(
    input: &ClusterInput,
    primary: &InstanceAddr,
    wanted: &InstanceAddr,
    th: &Thresholds,
) -> Result<Candidate, NoCandidate> {
    explicit(input, primary, wanted, th, true)
}

fn explicit(
    input: &ClusterInput,
    dead_primary: &InstanceAddr,
    wanted: &InstanceAddr,
    th: &Thresholds,
    switchover: bool,
) -> Result<Candidate, NoCandidate> {
    if wanted == dead_primary {
        return Err(NoCandidate::one(wanted, "is the primary being replaced"));
    }
    let Some(inst) = input.instances.get(wanted) else {
        return Err(NoCandidate::one(wanted, format!("is not an instance of cluster {}", input.cluster)));
    };
    if inst.source.as_ref() != Some(dead_primary) {
        let src =
            inst.source.as_ref().map(|s| format!("its source is {s}")).unwrap_or_else(|| "it has no source".into());
        return Err(NoCandidate::one(wanted, format!("is not a direct replica of {dead_primary} ({src})")));
    }
    let pool = Pool::new(input, dead_primary, th);
    let Some(i) = pool.replicas.iter().position(|r| &r.inst.addr == wanted) else {
        return Err(NoCandidate::one(wanted, format!("is not a direct replica of {dead_primary}")));
    };
    let mut a = pool.assess(i);
    if !a.refusals.is_empty() {
        return Err(NoCandidate::one(wanted, a.refusals.join("; ")));
    }
    if switchover {
        // It catches up with the fenced old primary, which holds all of theirs.
        let (ahead, rest): (Vec<_>, Vec<_>) = a.cannot_follow.into_iter().partition(|(_, k)| k.is_loss());
        a.followers.extend(ahead.into_iter().map(|((addr, _), _)| addr));
        a.followers.sort();
        a.cannot_follow = rest;
    }
    let losers: Vec<&(InstanceAddr, String)> =
        a.cannot_follow.iter().filter(|(_, k)| k.is_loss()).map(|(x, _)| x).collect();
    if !losers.is_empty() {
        if let Ok(auto) = choose_candidate(input, dead_primary, th) {
            let auto_loses =
                pool.assess_addr(&auto.addr).is_some_and(|b| b.cannot_follow.iter().any(|(_, k)| k.is_loss()));
            if !auto_loses {
                let what: Vec<String> = losers.iter().map(|(x, why)| format!("{x} {why}")).collect();
                return Err(NoCandidate::one(
                    wanted,
                    format!(
                        "{}; {} holds them all: wait for {wanted} to catch up, or choose {}",
                        what.join("; "),
                        auto.addr,
                        auto.addr
                    ),
                ));
            }
        }
    }
    let mut c = pool.candidate(i, a);
    c.reasons.insert(0, format!("chosen by the operator among the direct replicas of {dead_primary}"));
    Ok(c)
}

/// Why a replica cannot be repointed to a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cannot {
    /// It executed transactions the candidate lacks.
    Loss,
    /// Not readable, errant, or another flavor.
    Other,
}

impl Cannot {
    fn is_loss(self) -> bool {
        self == Cannot::Loss
    }
}

/// One direct replica of the dead primary, as far as we can see it.
struct Replica<'a> {
    inst: &'a InstanceInput,
    obs: Option<&'a Observation>,
    /// Why it cannot be read, when `obs` is `None`.
    unreadable: String,
    row: Option<&'a ReplicaStatus>,
    executed: Option<AnyGtidSet>,
    received: Option<AnyGtidSet>,
    /// Description of its errant transactions, if suspect.
    errant: Option<String>,
    lag_s: Option<u64>,
}

/// The candidate's relations to the others.
struct Assessment {
    refusals: Vec<String>,
    followers: Vec<InstanceAddr>,
    cannot_follow: Vec<((InstanceAddr, String), Cannot)>,
    /// Others' received transactions it lacks (lost for the cluster if it is promoted).
    unreceived: Vec<(InstanceAddr, AnyGtidSet)>,
}

struct Pool<'a> {
    input: &'a ClusterInput,
    th: &'a Thresholds,
    dead: &'a InstanceAddr,
    replicas: Vec<Replica<'a>>,
    /// Caveats of the errant check, for the reasons.
    notes: Vec<String>,
}

fn subtract(a: &AnyGtidSet, b: &AnyGtidSet) -> Option<AnyGtidSet> {
    match (a, b) {
        (AnyGtidSet::MariaDb(x), AnyGtidSet::MariaDb(y)) => Some(AnyGtidSet::MariaDb(x.subtract(y))),
        (AnyGtidSet::MySql(x), AnyGtidSet::MySql(y)) => Some(AnyGtidSet::MySql(x.subtract(y))),
        _ => None,
    }
}

/// `a` holds everything `b` holds, without a MariaDB same-seq conflict.
fn covers(a: &AnyGtidSet, b: &AnyGtidSet) -> bool {
    matches!(a.compare(b), Some(GtidOrdering::Equal | GtidOrdering::Ahead))
}

fn same_flavor(a: &AnyGtidSet, b: &AnyGtidSet) -> bool {
    matches!((a, b), (AnyGtidSet::MariaDb(_), AnyGtidSet::MariaDb(_)) | (AnyGtidSet::MySql(_), AnyGtidSet::MySql(_)))
}

/// What a replica has executed, and executed plus received.
fn positions(obs: &Observation, row: Option<&ReplicaStatus>) -> (AnyGtidSet, AnyGtidSet) {
    let executed = obs.gtid.executed();
    let received = match (&obs.gtid, row) {
        (GtidState::MariaDb { current_pos, .. }, Some(ReplicaStatus { gtid_io_pos: Some(io), .. })) => {
            AnyGtidSet::MariaDb(current_pos.union(io))
        }
        (GtidState::MySql { executed, .. }, Some(ReplicaStatus { retrieved_gtid_set: Some(r), .. })) => {
            AnyGtidSet::MySql(executed.union(r))
        }
        _ => executed.clone(),
    };
    (executed, received)
}

fn rule_rank(r: PromotionRule) -> u8 {
    match r {
        PromotionRule::Prefer => 0,
        PromotionRule::Neutral => 1,
        PromotionRule::PreferNot => 2,
        PromotionRule::MustNot => 3,
    }
}

impl<'a> Pool<'a> {
    fn new(input: &'a ClusterInput, dead: &'a InstanceAddr, th: &'a Thresholds) -> Pool<'a> {
        let mut replicas: Vec<Replica<'a>> = input
            .replicas_of(dead)
            .map(|inst| {
                let reach = Reach::of(input, inst, th);
                let obs = reach.latest.map(|(_, o)| o);
                let unreadable = if !reach.down.is_empty() {
                    format!(
                        "unreachable from {}/{} coordinators ({})",
                        reach.down.len(),
                        reach.voters,
                        reach.down_list()
                    )
                } else if !reach.refused.is_empty() {
                    format!("answered without data ({})", reach.refused_list())
                } else {
                    "no fresh observation".into()
                };
                let row = obs.and_then(|o| row_for(o, dead));
                let (executed, received) = match obs {
                    Some(o) => {
                        let (e, r) = positions(o, row);
                        (Some(e), Some(r))
                    }
                    None => (None, None),
                };
                Replica { inst, obs, unreadable, row, executed, received, errant: None, lag_s: None }
            })
            .collect();

        // Lag: Seconds_Behind when the server knows it (NULL while the IO thread is not
        // connected, i.e. whenever the primary is dead); otherwise how far its copy of the
        // heartbeat row trails the freshest copy among the replicas.
        let hb = |r: &Replica<'_>| r.obs.and_then(|o| o.heartbeat_of(&input.cluster)).map(|h| h.ts_ms);
        let newest_hb = replicas.iter().filter_map(hb).max();
        for r in &mut replicas {
            r.lag_s =
                r.row.and_then(|row| row.seconds_behind).or_else(|| Some(newest_hb?.saturating_sub(hb(r)?) / 1000));
        }

        let mut notes = Vec::new();
        // When the old primary can still be read (a switchover, or a primary only a minority
        // reaches), the errant check against it is exact.
        let primary_obs = input.instances.get(dead).and_then(|p| Reach::of(input, p, th).latest).map(|(_, o)| o);
        // Otherwise the replicas stand in for it, under its identity as they last saw it.
        let rows = || replicas.iter().filter_map(|r| r.row);
        let primary_id = rows().filter_map(|r| r.source_server_id).find(|id| *id != 0);
        let primary_uuid = rows().find_map(|r| r.source_uuid.clone());
        let mysql = replicas.iter().any(|r| matches!(r.executed, Some(AnyGtidSet::MySql(_))));
        if primary_obs.is_none() && ((mysql && primary_uuid.is_none()) || (!mysql && primary_id.is_none())) {
            notes.push(format!(
                "the identity of {dead} is unknown (no replica reports its server id/UUID): transactions only one replica received count as errant"
            ));
        }
        if primary_obs.is_none() && replicas.iter().filter(|r| r.obs.is_some()).count() == 1 {
            notes.push("no other readable replica to compare with: errant transactions not checked".into());
        }
        let mut errants = Vec::with_capacity(replicas.len());
        for (i, r) in replicas.iter().enumerate() {
            let Some(obs) = r.obs else {
                errants.push(None);
                continue;
            };
            let report = match primary_obs {
                Some(p) => errant_transactions(obs, p),
                None => {
                    let others: Vec<&Replica<'_>> = replicas
                        .iter()
                        .enumerate()
                        .filter(|(j, o)| {
                            *j != i && o.obs.is_some_and(|x| same_flavor(&x.gtid.executed(), &obs.gtid.executed()))
                        })
                        .map(|(_, o)| o)
                        .collect();
                    reference(&others, primary_id, primary_uuid.as_deref()).and_then(|r| errant_transactions(obs, &r))
                }
            };
            errants.push(report.filter(|e| !e.is_empty()).map(|e| e.to_string()));
        }
        for (r, e) in replicas.iter_mut().zip(errants) {
            r.errant = e;
        }
        Pool { input, th, dead, replicas, notes }
    }

    fn assess_addr(&self, addr: &InstanceAddr) -> Option<Assessment> {
        self.replicas.iter().position(|r| &r.inst.addr == addr).map(|i| self.assess(i))
    }

    /// Refusals for replica `i` as a candidate, and its followers if it were chosen.
    fn assess(&self, i: usize) -> Assessment {
        let c = &self.replicas[i];
        let mut a = Assessment {
            refusals: Vec::new(),
            followers: Vec::new(),
            cannot_follow: Vec::new(),
            unreceived: Vec::new(),
        };
        let (Some(obs), Some(received)) = (c.obs, c.received.as_ref()) else {
            a.refusals.push(format!("not reachable: {}", c.unreadable));
            return a;
        };
        let mut older = Vec::new();
        for (j, f) in self.replicas.iter().enumerate() {
            if j == i {
                continue;
            }
            let addr = f.inst.addr.clone();
            let (Some(f_obs), Some(f_exec), Some(f_recv)) = (f.obs, f.executed.as_ref(), f.received.as_ref()) else {
                a.cannot_follow.push((
                    (addr, format!("not reachable ({}): repoint it when it is back", f.unreadable)),
                    Cannot::Other,
                ));
                continue;
            };
            if !same_flavor(received, f_exec) {
                a.cannot_follow.push((
                    (addr, format!("is {}, the candidate {}", f_obs.server.flavor, obs.server.flavor)),
                    Cannot::Other,
                ));
                continue;
            }
            if let Some(e) = &f.errant {
                a.cannot_follow.push((
                    (
                        addr,
                        format!("holds errant transactions {e}: decide what to do with them, then repoint it by hand"),
                    ),
                    Cannot::Other,
                ));
                continue;
            }
            if let Some(missing) = subtract(f_recv, received).filter(|m| !m.is_empty()) {
                a.unreceived.push((addr.clone(), missing));
            }
            if !covers(received, f_exec) {
                let lacks = subtract(f_exec, received).map(|m| m.to_string()).unwrap_or_default();
                let lacks = if lacks.is_empty() { "conflicting transactions".to_string() } else { lacks };
                a.cannot_follow.push(((addr, format!("executed {lacks}, which the candidate lacks")), Cannot::Loss));
                continue;
            }
            if f_obs.server.version < obs.server.version {
                older.push(format!("{} ({})", f.inst.addr, f_obs.server.version));
            }
            a.followers.push(addr);
        }
        if !older.is_empty() {
            a.refusals.push(format!(
                "version {} is newer than {}, which would replicate from it",
                obs.server.version,
                older.join(" and ")
            ));
        }

        if c.inst.maintenance {
            a.refusals.insert(0, "in maintenance".into());
        }
        if c.inst.promotion_rule == PromotionRule::MustNot {
            a.refusals.insert(0, "promotion rule must_not".into());
        }
        if !obs.log_bin {
            a.refusals.push("log_bin is off".into());
        }
        if !obs.log_slave_updates {
            a.refusals.push("log_slave_updates is off".into());
        }
        if let Some(e) = &c.errant {
            a.refusals.push(format!("holds errant transactions {e}"));
        }
        if let Some(row) = c.row {
            if let (false, Some(e)) = (row.sql_running, &row.last_sql_error) {
                a.refusals.push(format!(
                    "SQL thread stopped on error {}: {}: it cannot apply its relay log",
                    e.errno, e.message
                ));
            }
            if let Some(d) = row.sql_delay.filter(|d| *d > 0) {
                a.refusals.push(format!("delayed replica (SQL_Delay {d} s)"));
            }
        }
        if let Some(max) = self.th.max_lag_for_candidate_s {
            match c.lag_s {
                None => a.refusals.push(format!("lag unknown (max_lag_for_candidate_s is {max})")),
                Some(l) if l > max => a.refusals.push(format!("lag {l} s exceeds max_lag_for_candidate_s {max}")),
                Some(_) => {}
            }
        }
        a
    }

    fn same_dc(&self, i: usize) -> bool {
        let old_dc = self.input.instances.get(self.dead).and_then(|p| p.datacenter.as_ref());
        self.th.prefer_same_datacenter && old_dc.is_some() && self.replicas[i].inst.datacenter.as_ref() == old_dc
    }

    /// Smaller is better: no loss, nothing unreceived, most received, semi-sync, rule, datacenter,
    /// lag, address.
    #[allow(clippy::type_complexity)]
    fn rank_key(
        &self,
        i: usize,
        a: &Assessment,
    ) -> (bool, bool, std::cmp::Reverse<u64>, bool, u8, bool, u64, &InstanceAddr) {
        let r = &self.replicas[i];
        (
            a.cannot_follow.iter().any(|(_, k)| k.is_loss()),
            !a.unreceived.is_empty(),
            std::cmp::Reverse(r.received.as_ref().map_or(0, AnyGtidSet::count)),
            !semi_sync_replica(r),
            rule_rank(r.inst.promotion_rule),
            !self.same_dc(i),
            r.lag_s.unwrap_or(u64::MAX),
            &r.inst.addr,
        )
    }

    fn candidate(&self, i: usize, a: Assessment) -> Candidate {
        let r = &self.replicas[i];
        let received = r.received.clone().unwrap_or(AnyGtidSet::MariaDb(Default::default()));
        let mut reasons = Vec::new();
        if a.cannot_follow.iter().any(|(_, k)| k.is_loss()) {
            reasons.push(format!(
                "no eligible replica holds every other replica's executed transactions; {} received the most ({received})",
                r.inst.addr
            ));
        } else {
            reasons
                .push(format!("received {received}, which holds every other readable replica's executed transactions"));
        }
        for (addr, missing) in &a.unreceived {
            reasons.push(format!("{missing} received only by {addr} will be lost"));
        }
        if semi_sync_replica(r) {
            reasons.push("semi-sync replica: it acknowledged what the primary acknowledged to clients".into());
        }
        reasons.push(format!("promotion rule {}", r.inst.promotion_rule));
        if self.same_dc(i) {
            if let Some(dc) = &r.inst.datacenter {
                reasons.push(format!("same datacenter as {} ({dc})", self.dead));
            }
        }
        reasons.push(match r.lag_s {
            Some(l) => format!("lag {l} s"),
            None => "lag unknown".into(),
        });
        reasons.extend(self.notes.iter().cloned());
        Candidate {
            addr: r.inst.addr.clone(),
            target_gtid: received,
            followers: a.followers,
            cannot_follow: a.cannot_follow.into_iter().map(|(x, _)| x).collect(),
            reasons,
        }
    }
}

/// No-loss (semi-sync) mode: what promoting `candidate` could lose, judged from `fresh`
/// (the leader's own probes, taken for this decision; never another coordinator's older
/// view). Every direct replica of `dead` that can acknowledge semi-synchronously (its
/// `rpl_semi_sync_slave_enabled` not known OFF) may have acknowledged what it received,
/// so the candidate must hold all of it: a readable replica that received a transaction
/// the candidate lacks, and a replica that cannot be read now (it may have), are each a
/// reason. Replicas out of the candidate pool (in maintenance, `must_not`, lagging)
/// count too: being ineligible does not undo an acknowledgement. Empty: nothing
/// acknowledged can be lost.
///
/// `seen_received`: what semi-sync replicas of `dead` were *seen* to have received while
/// it was the primary (see [`received_from`]); a replica that restarted since may have
/// lost its relay log (`relay_log_recovery`) and with it transactions it acknowledged,
/// so the candidate must hold those too.
///
/// `promoted_with`: `dead`'s promotion point, as Raft recorded it when a failover made
/// it the primary. Everything in it came from the primary before, which may have
/// acknowledged any of it to clients on `dead`'s own semi-sync acknowledgement; if
/// `dead` is now the only server holding some of it, promoting a candidate without it
/// loses acknowledged writes (found by primus-sim, seed 605753: a chained replica that
/// was down during the first failover was promoted in the second, 113 acknowledged
/// rows short).
pub fn no_loss_gaps(
    input: &ClusterInput,
    dead: &InstanceAddr,
    candidate: &InstanceAddr,
    fresh: &BTreeMap<InstanceAddr, Result<Observation, String>>,
    seen_received: Option<&AnyGtidSet>,
    promoted_with: Option<&str>,
) -> Vec<String> {
    let mut gaps = Vec::new();
    let received = |o: &Observation| positions(o, row_for(o, dead)).1;
    let cand = match fresh.get(candidate) {
        Some(Ok(o)) => received(o),
        Some(Err(e)) => return vec![format!("the candidate {candidate} cannot be read now ({e})")],
        None => return vec![format!("the candidate {candidate} was not probed for this decision")],
    };
    if let Some(text) = promoted_with {
        let point = match &cand {
            AnyGtidSet::MariaDb(_) => text.parse::<primus_mysql::MariaGtidSet>().ok().map(AnyGtidSet::MariaDb),
            AnyGtidSet::MySql(_) => text.parse::<primus_mysql::MySqlGtidSet>().ok().map(AnyGtidSet::MySql),
        };
        match point.as_ref().and_then(|p| subtract(p, &cand)) {
            Some(gap) if !gap.is_empty() => gaps.push(format!(
                "{dead} held {gap} when it was promoted (promotion point {text}), which the candidate {candidate} \
                 lacks: the primary before {dead} may have acknowledged them on {dead}'s semi-sync acknowledgement"
            )),
            Some(_) => {}
            None => gaps.push(format!(
                "{dead}'s promotion point {text} cannot be compared with what the candidate {candidate} received"
            )),
        }
    }
    if let Some(seen) = seen_received {
        match subtract(seen, &cand) {
            Some(gap) if !gap.is_empty() => gaps.push(format!(
                "semi-sync replicas of {dead} were seen to have received {gap}, which the candidate {candidate} \
                 lacks now (a replica restarted and lost its relay log?): they may have acknowledged them"
            )),
            Some(_) | None => {}
        }
    }
    for r in input.replicas_of(dead).filter(|r| &r.addr != candidate) {
        let addr = &r.addr;
        match fresh.get(addr) {
            Some(Ok(o)) => {
                if o.semi_sync.replica_enabled == Some(false) {
                    continue;
                }
                let theirs = received(o);
                match subtract(&theirs, &cand) {
                    Some(gap) if !gap.is_empty() => gaps.push(format!(
                        "{addr} received {gap}, which the candidate {candidate} lacks: it may have acknowledged them"
                    )),
                    Some(_) => {}
                    None => gaps.push(format!("{addr} is of another flavor than the candidate {candidate}")),
                }
            }
            other => {
                // Left out only when some view of it could be read and every such view
                // says semi-sync is off on it. Views that are all errors say nothing
                // (the check used to pass vacuously then: found by primus-sim).
                let mut readable = r.views.values().filter_map(|v| v.result.as_ref().ok()).peekable();
                let ever_off =
                    readable.peek().is_some() && readable.all(|o| o.semi_sync.replica_enabled == Some(false));
                if ever_off {
                    continue;
                }
                let why = match other {
                    Some(Err(e)) => e.clone(),
                    _ => "not probed".into(),
                };
                gaps.push(format!(
                    "{addr} cannot be read now ({why}): it may have acknowledged transactions the candidate {candidate} lacks"
                ));
            }
        }
    }
    gaps
}

/// What `obs`, a replica of `source`, has received (executed plus relay log), when it
/// acknowledges semi-synchronously (`rpl_semi_sync_slave_enabled` not known OFF);
/// `None` otherwise.
pub fn received_from(obs: &Observation, source: &InstanceAddr) -> Option<AnyGtidSet> {
    let row = row_for(obs, source)?;
    if obs.semi_sync.replica_enabled == Some(false) {
        return None;
    }
    Some(positions(obs, Some(row)).1)
}

/// Whether a replica has executed everything it received (its relay log is applied);
/// `None` when `obs` shows no replication channel or the sets cannot be compared.
pub fn relay_applied(obs: &Observation) -> Option<bool> {
    let row = obs.replication.first()?;
    let (executed, received) = positions(obs, Some(row));
    executed.contains(&received)
}

/// `a ∪ b` when both are of one flavor.
pub fn union_of(a: &AnyGtidSet, b: &AnyGtidSet) -> Option<AnyGtidSet> {
    match (a, b) {
        (AnyGtidSet::MariaDb(x), AnyGtidSet::MariaDb(y)) => Some(AnyGtidSet::MariaDb(x.union(y))),
        (AnyGtidSet::MySql(x), AnyGtidSet::MySql(y)) => Some(AnyGtidSet::MySql(x.union(y))),
        _ => None,
    }
}

/// A replica acknowledging transactions semi-synchronously (as last observed).
fn semi_sync_replica(r: &Replica<'_>) -> bool {
    r.obs.is_some_and(|o| o.semi_sync.replica_active == Some(true))
}

/// A stand-in for the dead primary in [`errant_transactions`]: the other replicas' received
/// transactions under the primary's identity, so that what only the primary wrote is "not yet
/// seen" rather than errant.
fn reference(others: &[&Replica<'_>], primary_id: Option<u32>, primary_uuid: Option<&str>) -> Option<Observation> {
    let first = others.first()?.obs?;
    let gtid = match &first.gtid {
        GtidState::MariaDb { strict_mode, domain_id, .. } => {
            let (mut current, mut slave, mut binlog_pos) = (Default::default(), Default::default(), Default::default());
            let mut pairs = Vec::new();
            for o in others {
                let (Some(obs), Some(AnyGtidSet::MariaDb(recv))) = (o.obs, o.received.as_ref()) else {
                    continue;
                };
                if let GtidState::MariaDb { slave_pos, binlog_pos: bp, binlog_state, .. } = &obs.gtid {
                    current = primus_mysql::MariaGtidSet::union(&current, recv);
                    slave = primus_mysql::MariaGtidSet::union(&slave, slave_pos);
                    binlog_pos = primus_mysql::MariaGtidSet::union(&binlog_pos, bp);
                    pairs.extend(binlog_state.gtids());
                }
            }
            GtidState::MariaDb {
                current_pos: current,
                binlog_pos,
                slave_pos: slave,
                strict_mode: *strict_mode,
                domain_id: *domain_id,
                binlog_state: MariaBinlogState::from_gtids(pairs),
            }
        }
        GtidState::MySql { mode, .. } => {
            let mut executed = primus_mysql::MySqlGtidSet::new();
            for o in others {
                if let Some(AnyGtidSet::MySql(recv)) = o.received.as_ref() {
                    executed = executed.union(recv);
                }
            }
            GtidState::MySql { executed, purged: Default::default(), mode: mode.clone() }
        }
    };
    let mut reference = first.clone();
    reference.gtid = gtid;
    reference.server_id = primary_id.unwrap_or(0);
    reference.server_uuid = primary_uuid.map(str::to_string);
    Some(reference)
}

//! Errant transactions: what a replica holds that its primary does not.
//!
//! [`errant_transactions`] is the one check the coordinator runs per replica. It compares two
//! [`Observation`]s and returns an [`ErrantReport`] (`None` across flavors).
//!
//! **MySQL**: `gtid_executed(replica) − gtid_executed(primary)`, which is exact: every
//! transaction keeps its own GTID forever.
//!
//! **MariaDB**: a position keeps one GTID per domain, so `gtid_current_pos` arithmetic alone
//! misses an errant write as soon as the primary's seq in that domain passes the replica's
//! errant seq — with `gtid_strict_mode` and a heartbeat written every few hundred milliseconds
//! that is almost at once (and the replica's applier then stops on the duplicate seq). The report
//! is the union of:
//!
//! 1. `gtid_current_pos(replica) − gtid_current_pos(primary)` (the seqs past the primary's
//!    position, and domains the primary has never seen);
//! 2. every (domain, server) pair of the replica — from `@@gtid_binlog_state`, plus the last
//!    GTIDs of its `gtid_current_pos` and `gtid_slave_pos` — whose last seq the primary does not
//!    hold: the primary's binlog state lacks the pair or lists it with a lower seq (the last
//!    GTIDs of the primary's own positions count as held too). A transaction written on the
//!    replica carries the replica's `server_id`, so it stays visible here after any number of
//!    primary writes. Transactions from earlier primaries are listed under their server ids on
//!    the replica *and* on the current primary (when it replicated them with
//!    `log_slave_updates`), so they cancel out; those of an earlier primary that reached the
//!    replica but not the current primary are reported — rightly: the replica holds
//!    transactions the primary lacks;
//! 3. domains where both positions end at the same seq written by different servers
//!    ([`MariaGtidSet::conflicts`]): the replica's last GTID there is reported.
//!
//! **Transactions written by the primary itself** (its `server_id`, or its `server_uuid` on
//! MySQL) are never errant: a replica can only have got them from the primary. When the
//! replica holds some that the primary's observation lacks, the usual cause is that the replica
//! was probed after the primary (probes run on independent schedules while the primary keeps
//! writing heartbeats). They are reported apart, in [`ErrantReport::unseen_on_primary`], and do
//! not make the report non-empty; if they persist, the primary lost transactions its replicas
//! have (crash without a durable binlog, restore from backup).
//!
//! MariaDB edge cases:
//!
//! * Purging binary logs on the primary drops nothing from its binlog state (the state is
//!   carried by each binlog file's `Gtid_list` event). `RESET MASTER` empties it: while the
//!   primary's state is empty (also: an observation serialized before the state was read, or no
//!   binlog), step 2 is skipped, since an empty state says nothing about what the primary has.
//!   After `RESET MASTER` *and* new writes, pairs of earlier servers that the replicas still
//!   list are reported; so are pairs of a domain dropped with
//!   `FLUSH BINARY LOGS DELETE_DOMAIN_ID` on the primary only.
//! * A primary that replicated with `log_slave_updates=OFF` before its promotion has only its
//!   own writes in its binlog state; the last GTID of each domain of its `gtid_slave_pos`
//!   stands for the server it last replicated from, but older origins that the replicas list in
//!   their binlog state are reported.
//! * A replica with `log_slave_updates=OFF` has only its own writes in its binlog state: exactly
//!   the transactions an errant check is about. Transactions it received from an errant
//!   intermediate show through its positions' last GTIDs (and on the intermediate itself).
//! * Without a binlog a MariaDB server assigns no GTID to its writes: they are invisible to any
//!   GTID-based check.
//! * [`ErrantReport::count`] counts position ranges exactly (in strict mode) but a binlog-state
//!   or conflict entry as one transaction: the state keeps only the *last* seq of each pair, so
//!   that count is a lower bound.

use crate::gtid::{AnyGtidSet, IntervalSet, MariaBinlogState, MariaGtid, MariaGtidSet, MySqlGtidSet, Uuid};
use crate::probe::{GtidState, Observation};
use std::collections::BTreeSet;
use std::fmt;

/// What [`errant_transactions`] found. `Display` prints the errant part, e.g.
/// `0-2-101..103,0-3-57 (conflicting domains: 0)`, or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrantReport {
    /// Errant part of the executed-set difference (MariaDB `gtid_current_pos`, MySQL
    /// `gtid_executed`), without the primary's own transactions.
    pub executed: AnyGtidSet,
    /// MariaDB: further errant transactions known one by one — the last GTID of each replica
    /// (domain, server) pair the primary does not hold, and the replica's last GTID in each
    /// conflicting domain — except those already inside `executed`. Empty for MySQL.
    pub binlog: Vec<MariaGtid>,
    /// MariaDB: domains where both positions end at the same seq from different servers.
    pub conflicting_domains: Vec<u32>,
    /// Not errant: transactions written by the primary itself that the replica holds and the
    /// primary's observation does not (normally the replica's observation is the newer one).
    pub unseen_on_primary: AnyGtidSet,
}

impl ErrantReport {
    /// No errant transaction (whatever `unseen_on_primary` holds).
    pub fn is_empty(&self) -> bool {
        self.executed.is_empty() && self.binlog.is_empty() && self.conflicting_domains.is_empty()
    }

    /// Number of errant transactions: exact for `executed` (in strict mode), one per `binlog`
    /// entry (a lower bound: a binlog state keeps only the last seq of each pair).
    pub fn count(&self) -> u64 {
        self.executed.count().saturating_add(self.binlog.len() as u64)
    }

    /// MariaDB: the servers that wrote errant transactions (for `executed`, the server of each
    /// domain's last errant GTID). Empty for MySQL, whose `executed` names server UUIDs.
    pub fn server_ids(&self) -> BTreeSet<u32> {
        let mut ids: BTreeSet<u32> = self.binlog.iter().map(|g| g.server_id).collect();
        if let AnyGtidSet::MariaDb(s) = &self.executed {
            ids.extend(s.domains().filter(|(_, d)| !d.seqs.is_empty()).map(|(_, d)| d.server_id));
        }
        ids
    }
}

impl fmt::Display for ErrantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.executed.is_empty() {
            parts.push(self.executed.to_string());
        }
        parts.extend(self.binlog.iter().map(ToString::to_string));
        if parts.is_empty() {
            f.write_str("none")?;
        } else {
            f.write_str(&parts.join(","))?;
        }
        if !self.conflicting_domains.is_empty() {
            let d: Vec<String> = self.conflicting_domains.iter().map(ToString::to_string).collect();
            write!(f, " (conflicting domains: {})", d.join(","))?;
        }
        Ok(())
    }
}

/// Transactions `replica` holds that `primary` does not, from their latest observations; `None`
/// when the two are of different flavors. See the [module docs](self) for the semantics and the
/// edge cases.
pub fn errant_transactions(replica: &Observation, primary: &Observation) -> Option<ErrantReport> {
    errant_between(&replica.gtid, &primary.gtid, primary.server_id, primary.server_uuid.as_deref())
}

/// [`errant_transactions`] on the GTID states, given the primary's identity.
fn errant_between(
    replica: &GtidState,
    primary: &GtidState,
    primary_server_id: u32,
    primary_uuid: Option<&str>,
) -> Option<ErrantReport> {
    match (replica, primary) {
        (GtidState::MariaDb { .. }, GtidState::MariaDb { .. }) => {
            Some(maria(MariaSide::of(replica)?, MariaSide::of(primary)?, primary_server_id))
        }
        (GtidState::MySql { executed: r, .. }, GtidState::MySql { executed: p, .. }) => {
            Some(mysql(r, p, primary_uuid.and_then(Uuid::parse)))
        }
        _ => None,
    }
}

fn mysql(replica: &MySqlGtidSet, primary: &MySqlGtidSet, primary_uuid: Option<Uuid>) -> ErrantReport {
    let (mut errant, mut unseen) = (MySqlGtidSet::new(), MySqlGtidSet::new());
    for (source, seqs) in MySqlGtidSet::errant(replica, primary).iter() {
        let into = if Some(source.uuid) == primary_uuid { &mut unseen } else { &mut errant };
        for &(lo, hi) in seqs.ranges() {
            into.add(source.clone(), lo, hi);
        }
    }
    ErrantReport {
        executed: AnyGtidSet::MySql(errant),
        binlog: Vec::new(),
        conflicting_domains: Vec::new(),
        unseen_on_primary: AnyGtidSet::MySql(unseen),
    }
}

/// The parts of a MariaDB GTID state the errant check reads.
struct MariaSide<'a> {
    current_pos: &'a MariaGtidSet,
    slave_pos: &'a MariaGtidSet,
    binlog_state: &'a MariaBinlogState,
}

impl<'a> MariaSide<'a> {
    fn of(state: &'a GtidState) -> Option<Self> {
        match state {
            GtidState::MariaDb { current_pos, slave_pos, binlog_state, .. } => {
                Some(MariaSide { current_pos, slave_pos, binlog_state })
            }
            GtidState::MySql { .. } => None,
        }
    }

    /// Highest seq of `domain` this server is known to hold from `server_id`: its binlog state
    /// and the last GTIDs of its positions.
    fn known(&self, domain: u32, server_id: u32) -> Option<u64> {
        let last_of = |p: &MariaGtidSet| p.last(domain).filter(|g| g.server_id == server_id).map(|g| g.seq_no);
        [self.binlog_state.get(domain, server_id), last_of(self.current_pos), last_of(self.slave_pos)]
            .into_iter()
            .flatten()
            .max()
    }

    /// Every (domain, server) pair this server is known to hold, with its last seq.
    fn pairs(&self) -> MariaBinlogState {
        MariaBinlogState::from_gtids(
            self.binlog_state.gtids().chain(self.current_pos.last_gtids()).chain(self.slave_pos.last_gtids()),
        )
    }
}

fn maria(replica: MariaSide<'_>, primary: MariaSide<'_>, primary_id: u32) -> ErrantReport {
    let mut errant = MariaGtidSet::new();
    let mut unseen = MariaGtidSet::new();

    // 1. Positions. Seqs up to the last one the replica holds from the primary may be the
    //    primary's own (others' in that range are caught by their pairs below); seqs above it
    //    were written elsewhere.
    for (domain, d) in replica.current_pos.subtract(primary.current_pos).domains() {
        let primarys = IntervalSet::prefix(replica.known(domain, primary_id).unwrap_or(0));
        let mine = d.seqs.intersection(&primarys);
        let rest = d.seqs.difference(&primarys);
        if !mine.is_empty() {
            unseen.add(domain, primary_id, mine);
        }
        if !rest.is_empty() {
            errant.add(domain, d.server_id, rest);
        }
    }

    // 2. (domain, server) pairs, when the primary's binlog state says something.
    let mut singles = BTreeSet::new();
    if !primary.binlog_state.is_empty() {
        for g in replica.pairs().gtids() {
            if g.seq_no == 0 || primary.known(g.domain_id, g.server_id).is_some_and(|k| k >= g.seq_no) {
                continue;
            }
            if g.server_id == primary_id {
                unseen.add(g.domain_id, primary_id, IntervalSet::range(g.seq_no, g.seq_no));
            } else {
                singles.insert(g);
            }
        }
    }

    // 3. Same last seq, different servers.
    let conflicting_domains = replica.current_pos.conflicts(primary.current_pos);
    singles.extend(conflicting_domains.iter().filter_map(|d| replica.current_pos.last(*d)));

    let in_errant = |g: &MariaGtid| errant.domains().any(|(d, s)| d == g.domain_id && s.seqs.contains_value(g.seq_no));
    let binlog = singles.into_iter().filter(|g| !in_errant(g)).collect();
    ErrantReport {
        executed: AnyGtidSet::MariaDb(errant),
        binlog,
        conflicting_domains,
        unseen_on_primary: AnyGtidSet::MariaDb(unseen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = 1;

    /// A MariaDB state from `gtid_current_pos`, `gtid_slave_pos` and `gtid_binlog_state`.
    fn maria(current_pos: &str, slave_pos: &str, binlog_state: &str) -> GtidState {
        let set = |s: &str| s.parse::<MariaGtidSet>().unwrap_or_else(|e| panic!("{e}"));
        GtidState::MariaDb {
            current_pos: set(current_pos),
            // The last GTID per domain of the binlog state (not read by the check).
            binlog_pos: set(binlog_state),
            slave_pos: set(slave_pos),
            strict_mode: true,
            domain_id: 0,
            binlog_state: binlog_state.parse().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    /// The check against a primary with server id [`P`].
    fn check(replica: &GtidState, primary: &GtidState) -> ErrantReport {
        errant_between(replica, primary, P, None).expect("same flavor")
    }

    fn g(domain_id: u32, server_id: u32, seq_no: u64) -> MariaGtid {
        MariaGtid { domain_id, server_id, seq_no }
    }

    fn assert_clean(r: &ErrantReport) {
        assert!(r.is_empty(), "{r} / {r:?}");
        assert_eq!((r.count(), r.to_string().as_str()), (0, "none"));
        assert!(r.server_ids().is_empty());
    }

    #[test]
    fn clean_replicas_report_nothing() {
        let primary = maria("0-1-100", "", "0-1-100");
        // Caught up, lagging, and without log_slave_updates (empty binlog state).
        for replica in
            [maria("0-1-100", "0-1-100", "0-1-100"), maria("0-1-90", "0-1-90", "0-1-90"), maria("0-1-90", "0-1-90", "")]
        {
            let r = check(&replica, &primary);
            assert_clean(&r);
            assert!(r.unseen_on_primary.is_empty());
        }
    }

    #[test]
    fn replica_probed_after_the_primary_wrote_more_is_not_errant() {
        let primary = maria("0-1-100", "", "0-1-100");
        let replica = maria("0-1-105", "0-1-105", "0-1-105");
        // Plain position arithmetic calls this errant.
        assert_eq!(replica.executed().compare(&primary.executed()), Some(crate::GtidOrdering::Ahead));
        let r = check(&replica, &primary);
        assert_clean(&r);
        assert_eq!(r.unseen_on_primary.to_string(), "0-1-101..105");
        // Same without a binlog state on the replica: its positions say who wrote seq 105.
        let r = check(&maria("0-1-105", "0-1-105", ""), &primary);
        assert_clean(&r);
        assert_eq!(r.unseen_on_primary.count(), 5);
    }

    #[test]
    fn errant_write_is_seen_before_and_after_the_primary_overtakes_it() {
        // Replica 2 applied up to 0-1-100, then something wrote on it directly.
        let replica = maria("0-2-101", "0-1-100", "0-1-100,0-2-101");

        let before = check(&replica, &maria("0-1-100", "", "0-1-100"));
        assert_eq!(before.to_string(), "0-2-101..101");
        assert_eq!((before.count(), before.server_ids()), (1, BTreeSet::from([2])));

        // The primary writes 20 more: positions alone no longer show anything.
        let primary = maria("0-1-120", "", "0-1-120");
        assert!(MariaGtidSet::errant(&"0-2-101".parse().expect("valid"), &"0-1-120".parse().expect("valid")).is_empty());
        let after = check(&replica, &primary);
        assert!(after.executed.is_empty());
        assert_eq!(after.binlog, [g(0, 2, 101)]);
        assert_eq!(after.to_string(), "0-2-101");
        assert_eq!((after.count(), after.server_ids()), (1, BTreeSet::from([2])));
        assert!(after.unseen_on_primary.is_empty());

        // Several errant writes in another domain too, with the replica further behind.
        let replica = maria("0-2-101,5-2-3", "0-1-100", "0-1-100,0-2-101,5-2-3");
        let r = check(&replica, &primary);
        assert_eq!(r.to_string(), "5-2-3,0-2-101");
        assert_eq!(r.count(), 4, "three seqs of an unknown domain, one overtaken");
    }

    #[test]
    fn same_seq_from_different_servers_is_a_conflict() {
        let replica = maria("0-2-101", "0-1-100", "0-1-100,0-2-101");
        let primary = maria("0-1-101", "", "0-1-101");
        let r = check(&replica, &primary);
        assert_eq!(r.conflicting_domains, [0]);
        assert_eq!(r.binlog, [g(0, 2, 101)], "reported once, from the pair and the conflict");
        assert_eq!(r.to_string(), "0-2-101 (conflicting domains: 0)");
        assert_eq!(r.count(), 1);

        // Observations without binlog states (serialized before they were read): the conflict
        // alone still shows it; once overtaken, nothing can.
        let replica = maria("0-2-101", "0-1-100", "");
        let r = check(&replica, &maria("0-1-101", "", ""));
        assert_eq!(
            (r.conflicting_domains.as_slice(), r.binlog.as_slice()),
            ([0].as_slice(), [g(0, 2, 101)].as_slice())
        );
        assert_clean(&check(&replica, &maria("0-1-120", "", "")));
    }

    #[test]
    fn chains_and_earlier_primaries() {
        // Server 9 was primary for seqs 1..50, then server 1 (P) took over; intermediate 2
        // replicates from P and leaf 3 from 2, all with log_slave_updates.
        let primary = maria("0-1-120", "0-9-50", "0-9-50,0-1-120");
        let intermediate = maria("0-1-100", "0-1-100", "0-9-50,0-1-100");
        let leaf = maria("0-1-90", "0-1-90", "0-9-50,0-1-90");
        assert_clean(&check(&intermediate, &primary));
        assert_clean(&check(&leaf, &primary));

        // An errant write on the intermediate reaches the leaf; the primary overtakes it.
        let intermediate = maria("0-2-101", "0-1-100", "0-9-50,0-1-100,0-2-101");
        let leaf = maria("0-2-101", "0-2-101", "0-9-50,0-1-100,0-2-101");
        for r in [check(&intermediate, &primary), check(&leaf, &primary)] {
            assert_eq!((r.binlog.as_slice(), r.count()), ([g(0, 2, 101)].as_slice(), 1));
        }
        // A leaf without log_slave_updates still shows it through its positions.
        let r = check(&maria("0-2-101", "0-2-101", ""), &primary);
        assert_eq!(r.binlog, [g(0, 2, 101)]);

        // The old primary's last transactions reached the intermediate but not the new primary
        // (possible without strict mode): the intermediate holds transactions the primary lacks.
        let intermediate = maria("0-1-100", "0-1-100", "0-9-52,0-1-100");
        assert_eq!(check(&intermediate, &primary).binlog, [g(0, 9, 52)]);

        // A primary promoted from a replica without log_slave_updates lists only its own writes
        // in its binlog; its slave position still vouches for the server it replicated from.
        let primary = maria("0-1-120", "0-9-50", "0-1-120");
        assert_clean(&check(&maria("0-1-110", "0-1-110", "0-9-50,0-1-110"), &primary));
    }

    #[test]
    fn an_empty_primary_binlog_state_proves_nothing() {
        // RESET MASTER on the primary, or an observation from before the state was read.
        let replica = maria("0-1-100", "0-1-100", "0-9-50,0-1-100");
        assert_clean(&check(&replica, &maria("0-1-100", "", "")));
    }

    #[test]
    fn pairs_of_the_primary_ahead_on_the_replica_are_unseen_not_errant() {
        // The primary's own pair ahead on the replica, next to an earlier server's pair.
        let replica = maria("0-1-110", "0-1-110", "0-1-110,0-7-3");
        let primary = maria("0-1-108", "", "0-1-108,0-7-3");
        let r = check(&replica, &primary);
        assert_clean(&r);
        assert_eq!(r.unseen_on_primary.to_string(), "0-1-109..110");
    }

    #[test]
    fn mysql_uses_gtid_executed_and_sets_the_primarys_uuid_apart() {
        let (pu, ru) = ("3e11fa47-71ca-11e1-9e33-c80aa9429562", "8a94f357-aab4-11df-86ab-c80aa9429563");
        let my = |executed: &str| GtidState::MySql {
            executed: executed.parse().unwrap_or_else(|e| panic!("{e}")),
            purged: MySqlGtidSet::new(),
            mode: "ON".into(),
        };
        let primary = my(&format!("{pu}:1-100"));
        let clean = my(&format!("{pu}:1-90"));
        let r = errant_between(&clean, &primary, P, Some(pu)).expect("same flavor");
        assert_clean(&r);

        let replica = my(&format!("{pu}:1-103,{ru}:1-2"));
        let r = errant_between(&replica, &primary, P, Some(pu)).expect("same flavor");
        assert_eq!(r.to_string(), format!("{ru}:1-2"));
        assert_eq!(r.count(), 2);
        assert_eq!(r.unseen_on_primary.to_string(), format!("{pu}:101-103"));
        assert!(r.server_ids().is_empty());
        // Unknown primary UUID: everything missing counts.
        let r = errant_between(&replica, &primary, P, None).expect("same flavor");
        assert_eq!(r.count(), 5);

        assert_eq!(errant_between(&replica, &maria("0-1-1", "", "0-1-1"), P, None), None);
        assert_eq!(errant_between(&maria("0-1-1", "", "0-1-1"), &primary, P, Some(pu)), None);
    }
}

//! MariaDB GTID positions: `domain-server-seq,domain-server-seq,...`.
//!
//! This is the format of `@@gtid_current_pos`, `@@gtid_binlog_pos`, `@@gtid_slave_pos` and the
//! `Gtid_IO_Pos` / `Gtid_Slave_Pos` columns. A position lists, per replication domain, the
//! last GTID applied in that domain. With `gtid_strict_mode` sequence numbers are monotonic per
//! domain, so a position `0-1-42` stands for "every transaction of domain 0 up to seq 42": the
//! set `1..=42` of domain 0. That is the model used here, which makes positions a special case
//! of the same interval algebra as MySQL GTID sets.
//!
//! The server id of the last GTID is kept: it is the only trace of *who* wrote the last
//! transaction, and two positions that end a domain at the same seq from different servers are
//! conflicting histories ([`MariaGtidSet::conflicts`], and `compare` says `Diverged`).
//!
//! Differences (`subtract`, `errant`) are generally not prefixes. They print as
//! `domain-server-LO..HI` elements — a primus notation for display and JSON, never sent to a
//! server — and parse back. Several elements for the same domain are united; the server id kept
//! is the one of the element ending highest (ties: the larger server id, so the result does not
//! depend on order).

use super::interval::IntervalSet;
use super::GtidParseError;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One MariaDB GTID, `domain-server-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MariaGtid {
    pub domain_id: u32,
    pub server_id: u32,
    pub seq_no: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain_id, self.server_id, self.seq_no)
    }
}

/// What a set holds for one domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DomainSeqs {
    /// Server id of the last (highest) GTID of the domain.
    pub server_id: u32,
    /// Sequence numbers; for a position, `1..=seq`.
    pub seqs: IntervalSet,
}

impl DomainSeqs {
    /// Key deciding whose server id survives a union: the side ending highest, then the larger id.
    fn last_key(&self) -> (u64, u32) {
        (self.seqs.last().unwrap_or(0), self.server_id)
    }

    fn merge(&self, other: &DomainSeqs, seqs: IntervalSet) -> DomainSeqs {
        let server_id = std::cmp::max(self.last_key(), other.last_key()).1;
        DomainSeqs { server_id, seqs }
    }
}

/// A MariaDB GTID position (or a difference of positions).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct MariaGtidSet {
    domains: BTreeMap<u32, DomainSeqs>,
}

impl MariaGtidSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// The position made of these GTIDs (each one standing for its domain's prefix `1..=seq`).
    pub fn from_gtids(gtids: impl IntoIterator<Item = MariaGtid>) -> Self {
        let mut s = MariaGtidSet::new();
        for g in gtids {
            s.insert(g.domain_id, DomainSeqs { server_id: g.server_id, seqs: IntervalSet::prefix(g.seq_no) });
        }
        s
    }

    /// Adds the sequence numbers `seqs` of `domain`, last written by `server_id`, as
    /// [`MariaGtidSet::union`] would.
    pub fn add(&mut self, domain: u32, server_id: u32, seqs: IntervalSet) {
        self.insert(domain, DomainSeqs { server_id, seqs });
    }

    fn insert(&mut self, domain: u32, d: DomainSeqs) {
        match self.domains.get_mut(&domain) {
            Some(cur) => {
                let seqs = cur.seqs.union(&d.seqs);
                *cur = cur.merge(&d, seqs);
            }
            None => {
                self.domains.insert(domain, d);
            }
        }
    }

    /// `true` when the set holds no transaction (domains listed at seq 0 hold none).
    pub fn is_empty(&self) -> bool {
        self.domains.values().all(|d| d.seqs.is_empty())
    }

    /// Domains and what the set holds for each.
    pub fn domains(&self) -> impl Iterator<Item = (u32, &DomainSeqs)> {
        self.domains.iter().map(|(k, v)| (*k, v))
    }

    /// The last GTID of `domain`, if the domain is listed.
    pub fn last(&self, domain: u32) -> Option<MariaGtid> {
        self.domains.get(&domain).map(|d| MariaGtid {
            domain_id: domain,
            server_id: d.server_id,
            seq_no: d.seqs.last().unwrap_or(0),
        })
    }

    /// The last GTID of every listed domain: the position as MariaDB would print it.
    pub fn last_gtids(&self) -> Vec<MariaGtid> {
        self.domains.keys().filter_map(|d| self.last(*d)).collect()
    }

    /// `true` if every domain holds a prefix `1..=seq` (i.e. this is a real position, printable
    /// in MariaDB syntax and usable in `SET GLOBAL gtid_slave_pos`).
    pub fn is_position(&self) -> bool {
        self.domains.values().all(|d| d.seqs.is_prefix())
    }

    /// Number of transactions (sum of sequence-number spans). Exact for positions written in
    /// strict mode without explicit `gtid_seq_no` jumps; an upper bound otherwise.
    pub fn count(&self) -> u64 {
        self.domains.values().fold(0u64, |a, d| a.saturating_add(d.seqs.count()))
    }

    /// `other ⊆ self`, comparing sequence numbers only (see [`MariaGtidSet::conflicts`]).
    pub fn contains(&self, other: &MariaGtidSet) -> bool {
        other
            .domains
            .iter()
            .all(|(dom, o)| o.seqs.is_empty() || self.domains.get(dom).is_some_and(|mine| mine.seqs.contains(&o.seqs)))
    }

    pub fn is_subset_of(&self, other: &MariaGtidSet) -> bool {
        other.contains(self)
    }

    /// Domains where both sets end at the same seq but that last GTID was written by different
    /// servers: the histories have diverged there even though the numbers agree.
    pub fn conflicts(&self, other: &MariaGtidSet) -> Vec<u32> {
        self.domains
            .iter()
            .filter_map(|(dom, mine)| {
                let theirs = other.domains.get(dom)?;
                let (a, b) = (mine.seqs.last()?, theirs.seqs.last()?);
                (a == b && mine.server_id != theirs.server_id).then_some(*dom)
            })
            .collect()
    }

    pub fn union(&self, other: &MariaGtidSet) -> MariaGtidSet {
        let mut out = self.clone();
        for (dom, d) in &other.domains {
            out.insert(*dom, d.clone());
        }
        out
    }

    pub fn intersection(&self, other: &MariaGtidSet) -> MariaGtidSet {
        let domains = self
            .domains
            .iter()
            .filter_map(|(dom, mine)| {
                let theirs = other.domains.get(dom)?;
                let seqs = mine.seqs.intersection(&theirs.seqs);
                (!seqs.is_empty()).then(|| (*dom, mine.merge(theirs, seqs)))
            })
            .collect();
        MariaGtidSet { domains }
    }

    /// `self − other`; domains left without transactions are dropped. The server id kept is
    /// `self`'s.
    pub fn subtract(&self, other: &MariaGtidSet) -> MariaGtidSet {
        let domains = self
            .domains
            .iter()
            .filter_map(|(dom, mine)| {
                let seqs = match other.domains.get(dom) {
                    Some(o) => mine.seqs.difference(&o.seqs),
                    None => mine.seqs.clone(),
                };
                if seqs.is_empty() {
                    return None;
                }
                Some((*dom, DomainSeqs { server_id: mine.server_id, seqs }))
            })
            .collect();
        MariaGtidSet { domains }
    }

    /// Transactions the replica has that the primary doesn't: for each domain, the seqs past the
    /// primary's position, and whole domains the primary has never seen. Compare the replica's
    /// `gtid_current_pos` with the primary's `gtid_current_pos` (or `gtid_binlog_pos`).
    ///
    /// Limitation inherent to MariaDB positions: an errant transaction that was later overtaken
    /// by higher seqs from the primary in the same domain is invisible here; one that ends the
    /// domain at the same seq as the primary shows up in [`MariaGtidSet::conflicts`] instead.
    /// With `gtid_strict_mode` and a primary writing heartbeats, that overtaking happens within
    /// a fraction of a second, so this alone misses real errant transactions: use
    /// [`crate::errant::errant_transactions`], which adds `@@gtid_binlog_state`
    /// ([`super::MariaBinlogState`]) and conflicts.
    pub fn errant(replica: &MariaGtidSet, primary: &MariaGtidSet) -> MariaGtidSet {
        replica.subtract(primary)
    }
}

/// Splits one `DOMAIN-SERVER-SEQ` element into its ids and the (unparsed) seq part;
/// shared by every MariaDB GTID list parser so they agree on what is valid.
pub(super) fn split_gtid(part: &str) -> Result<(u32, u32, &str), &'static str> {
    let mut it = part.splitn(3, '-');
    let (Some(d), Some(s), Some(q)) = (it.next(), it.next(), it.next()) else {
        return Err("expected DOMAIN-SERVER-SEQ");
    };
    let domain: u32 = d.parse().map_err(|_| "domain id is not a 32-bit unsigned integer")?;
    let server_id: u32 = s.parse().map_err(|_| "server id is not a 32-bit unsigned integer")?;
    Ok((domain, server_id, q))
}

impl FromStr for MariaGtidSet {
    type Err = GtidParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut set = MariaGtidSet::new();
        if input.trim().is_empty() {
            return Ok(set);
        }
        let err = |part: &str, reason: &'static str| GtidParseError::MariaDb {
            input: input.to_string(),
            part: part.to_string(),
            reason,
        };
        for part in input.split(',') {
            let part = part.trim();
            let (domain, server_id, q) = split_gtid(part).map_err(|reason| err(part, reason))?;
            let seqs = match q.split_once("..") {
                None => IntervalSet::prefix(q.parse().map_err(|_| err(part, "seq is not a 64-bit unsigned integer"))?),
                Some((lo, hi)) => {
                    let (Ok(lo), Ok(hi)) = (lo.parse::<u64>(), hi.parse::<u64>()) else {
                        return Err(err(part, "range is not LO..HI with unsigned integers"));
                    };
                    if lo == 0 || lo > hi {
                        return Err(err(part, "range must satisfy 1 <= LO <= HI"));
                    }
                    IntervalSet::range(lo, hi)
                }
            };
            set.insert(domain, DomainSeqs { server_id, seqs });
        }
        Ok(set)
    }
}

impl fmt::Display for MariaGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { f.write_str(",") };
            first = false;
            r
        };
        for (dom, d) in &self.domains {
            if d.seqs.is_prefix() {
                sep(f)?;
                write!(f, "{dom}-{}-{}", d.server_id, d.seqs.last().unwrap_or(0))?;
            } else {
                for &(lo, hi) in d.seqs.ranges() {
                    sep(f)?;
                    write!(f, "{dom}-{}-{lo}..{hi}", d.server_id)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> MariaGtidSet {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_and_prints_positions() {
        let s = p("1-2-7, 0-1-42");
        assert_eq!(s.to_string(), "0-1-42,1-2-7");
        assert_eq!(s.last(0), Some(MariaGtid { domain_id: 0, server_id: 1, seq_no: 42 }));
        assert_eq!(s.count(), 49);
        assert!(s.is_position());
        assert_eq!(p(""), MariaGtidSet::new());
        assert_eq!(p("0-1-0").to_string(), "0-1-0");
        assert!(p("0-1-0").is_empty());
    }

    #[test]
    fn duplicate_domains_keep_the_last_gtid() {
        // gtid_binlog_state-like input: several servers in one domain.
        let s = p("0-1-10,0-2-15,0-3-12");
        assert_eq!(s.to_string(), "0-2-15");
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        for bad in ["0-1", "a-1-2", "0-1-x", "0-1-2,", "0--1-2", "4294967296-1-1", "0-1-5..3", "0-1-0..3", "0-1-2-3"] {
            let e = bad.parse::<MariaGtidSet>().expect_err(bad);
            assert!(e.to_string().contains("MariaDB GTID"), "{e}");
        }
    }

    #[test]
    fn contains_uses_the_last_seq_per_domain() {
        let primary = p("0-1-100,1-1-5");
        assert!(primary.contains(&p("0-1-99")));
        assert!(primary.contains(&p("0-1-100,1-1-5")));
        assert!(!primary.contains(&p("0-1-101")));
        assert!(!primary.contains(&p("2-1-1")));
        assert!(primary.contains(&p("2-1-0")), "a domain at seq 0 holds nothing");
    }

    #[test]
    fn errant_covers_seqs_ahead_and_unknown_domains() {
        let primary = p("0-1-100");
        let replica = p("0-1-103,7-2-4");
        let errant = MariaGtidSet::errant(&replica, &primary);
        assert_eq!(errant.to_string(), "0-1-101..103,7-2-4");
        assert_eq!(errant.count(), 3 + 4);
        assert_eq!(p(&errant.to_string()), errant);
        assert!(!errant.is_position());
        assert!(MariaGtidSet::errant(&p("0-1-90"), &primary).is_empty());
    }

    #[test]
    fn same_seq_from_different_servers_is_a_conflict() {
        assert_eq!(p("0-1-43,1-1-2").conflicts(&p("0-2-43,1-1-2")), vec![0]);
        assert!(p("0-1-43").conflicts(&p("0-1-43")).is_empty());
        assert!(p("0-1-43").conflicts(&p("0-2-44")).is_empty());
    }
}

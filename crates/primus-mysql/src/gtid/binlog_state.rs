//! MariaDB `@@gtid_binlog_state`: the last sequence number of every (domain, server) pair
//! present in a server's binary log.
//!
//! A position (`@@gtid_current_pos`, [`super::MariaGtidSet`]) keeps one GTID per domain, so a
//! transaction written on a replica disappears from it as soon as a higher seq from elsewhere is
//! applied or compared against. The binlog state keeps one GTID per (domain, **server**): a
//! transaction written directly on a replica carries the replica's `server_id` and stays visible
//! there for as long as the binary log (and the `Gtid_list` events that carry the state from one
//! binlog file to the next) exists — purging old binlog files does not drop entries; only
//! `RESET MASTER`, `SET GLOBAL gtid_binlog_state` and `FLUSH BINARY LOGS DELETE_DOMAIN_ID` do.
//!
//! Format: `domain-server-seq` elements separated by commas, several per domain
//! (`0-1-120,0-2-5`). Printing is canonical (sorted by domain, then server), so
//! `parse(print(x)) == x`. An element repeated for the same (domain, server) keeps the highest
//! seq (the server never prints duplicates; accepting them costs nothing).

use super::{GtidParseError, MariaGtid};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// `@@gtid_binlog_state`: for each (domain, server) in the binary log, its last seq.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct MariaBinlogState {
    last: BTreeMap<(u32, u32), u64>,
}

impl MariaBinlogState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state made of these GTIDs (the highest seq wins for a repeated (domain, server)).
    pub fn from_gtids(gtids: impl IntoIterator<Item = MariaGtid>) -> Self {
        let mut s = MariaBinlogState::new();
        for g in gtids {
            s.insert(g);
        }
        s
    }

    /// Records `gtid`, keeping the highest seq of its (domain, server).
    pub fn insert(&mut self, gtid: MariaGtid) {
        let e = self.last.entry((gtid.domain_id, gtid.server_id)).or_insert(gtid.seq_no);
        *e = (*e).max(gtid.seq_no);
    }

    /// `true` when no (domain, server) is listed (no binlog, `RESET MASTER`, or an observation
    /// from a version that did not read the state).
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Number of (domain, server) pairs.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Last seq written by `server_id` in `domain`, if the pair is listed.
    pub fn get(&self, domain: u32, server_id: u32) -> Option<u64> {
        self.last.get(&(domain, server_id)).copied()
    }

    /// The last GTID of every (domain, server), sorted by domain then server.
    pub fn gtids(&self) -> impl Iterator<Item = MariaGtid> + '_ {
        self.last.iter().map(|(&(domain_id, server_id), &seq_no)| MariaGtid { domain_id, server_id, seq_no })
    }

    /// The pairs of `self` that `other` lacks or lists with a lower seq: the last GTID of each
    /// (domain, server) of which `self` holds transactions `other`'s binlog does not.
    pub fn ahead_of(&self, other: &MariaBinlogState) -> Vec<MariaGtid> {
        self.gtids().filter(|g| other.get(g.domain_id, g.server_id).is_none_or(|o| o < g.seq_no)).collect()
    }
}

impl FromStr for MariaBinlogState {
    type Err = GtidParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut state = MariaBinlogState::new();
        if input.trim().is_empty() {
            return Ok(state);
        }
        let err = |part: &str, reason: &'static str| GtidParseError::MariaDbBinlogState {
            input: input.to_string(),
            part: part.to_string(),
            reason,
        };
        for part in input.split(',') {
            let part = part.trim();
            let (domain_id, server_id, q) = super::mariadb::split_gtid(part).map_err(|reason| err(part, reason))?;
            if q.contains("..") {
                return Err(err(part, "a binlog state lists single GTIDs, not LO..HI ranges"));
            }
            let seq_no: u64 = q.parse().map_err(|_| err(part, "seq is not a 64-bit unsigned integer"))?;
            state.insert(MariaGtid { domain_id, server_id, seq_no });
        }
        Ok(state)
    }
}

impl fmt::Display for MariaBinlogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.gtids().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> MariaBinlogState {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn g(domain_id: u32, server_id: u32, seq_no: u64) -> MariaGtid {
        MariaGtid { domain_id, server_id, seq_no }
    }

    #[test]
    fn parses_several_servers_per_domain_and_prints_canonically() {
        let s = b("1-3-9, 0-2-5,0-1-120");
        assert_eq!(s.to_string(), "0-1-120,0-2-5,1-3-9");
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(0, 1), Some(120));
        assert_eq!(s.get(0, 2), Some(5));
        assert_eq!(s.get(0, 3), None);
        assert_eq!(s.gtids().collect::<Vec<_>>(), [g(0, 1, 120), g(0, 2, 5), g(1, 3, 9)]);
        assert_eq!(b(&s.to_string()), s);
        assert_eq!(MariaBinlogState::from_gtids(s.gtids()), s);
        assert!(b("").is_empty() && b("  ").is_empty());
        assert_eq!(b("").to_string(), "");
        assert_eq!(b("0-1-7,0-1-3").to_string(), "0-1-7", "a repeated pair keeps its highest seq");
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        for (bad, why) in [
            ("0-1", "expected DOMAIN-SERVER-SEQ"),
            ("a-1-2", "domain id"),
            ("0-x-2", "server id"),
            ("0-1-x", "seq"),
            ("0-1-2,", "expected DOMAIN-SERVER-SEQ"),
            ("0-1-2-3", "seq"),
            ("0-1-3..5", "not LO..HI ranges"),
            ("4294967296-1-1", "domain id"),
        ] {
            let e = bad.parse::<MariaBinlogState>().expect_err(bad);
            let msg = e.to_string();
            assert!(msg.contains("gtid_binlog_state") && msg.contains(why), "{bad}: {msg}");
        }
    }

    #[test]
    fn ahead_of_lists_pairs_missing_or_behind() {
        let replica = b("0-1-100,0-2-4,0-9-50,1-2-1");
        let primary = b("0-1-120,0-9-50,1-2-0");
        assert_eq!(replica.ahead_of(&primary), [g(0, 2, 4), g(1, 2, 1)]);
        assert!(primary.ahead_of(&primary).is_empty());
        assert_eq!(primary.ahead_of(&replica), [g(0, 1, 120)]);
    }
}

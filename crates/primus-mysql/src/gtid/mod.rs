//! GTID sets of both flavors, with the set algebra failover decisions need.
//!
//! Failover is about *which transactions exist where*: the most advanced replica is the one
//! whose GTID set contains the others'; a replica holding transactions the primary never had
//! (errant transactions) would poison the topology if promoted or repointed blindly. MySQL and
//! MariaDB spell GTIDs differently ([`MySqlGtidSet`]: `uuid:1-5:7-9`, [`MariaGtidSet`]:
//! `domain-server-seq`), but both reduce to sets of sequence numbers per origin
//! ([`IntervalSet`]), so both types offer the same operations, gathered in [`GtidSetOps`] for
//! generic code: parse (with a [`GtidParseError`] naming the offending element), canonical
//! `Display` that round-trips, `contains`/subset, a partial order ([`GtidOrdering`]), union,
//! intersection, subtraction, `errant(replica, primary)` and `count`.
//!
//! MariaDB positions hide a replica's own (errant) transaction once a higher seq from the primary
//! exists in the same domain; [`MariaBinlogState`] (`@@gtid_binlog_state`, the last seq of every
//! (domain, server) pair in the binary log) keeps it visible. The errant check that combines both
//! is [`crate::errant::errant_transactions`].
//!
//! All these types (de)serialize as their canonical string, so observations print readably as
//! JSON.

mod binlog_state;
mod interval;
mod mariadb;
mod mysql;

pub use binlog_state::MariaBinlogState;
pub use interval::IntervalSet;
pub use mariadb::{DomainSeqs, MariaGtid, MariaGtidSet};
pub use mysql::{GtidSource, MySqlGtidSet, Uuid};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a GTID string could not be parsed: the whole input, the element at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtidParseError {
    #[error("invalid MySQL GTID set {input:?}: element {part:?}: {reason}")]
    MySql { input: String, part: String, reason: &'static str },
    #[error("invalid MariaDB GTID position {input:?}: element {part:?}: {reason}")]
    MariaDb { input: String, part: String, reason: &'static str },
    #[error("invalid MariaDB gtid_binlog_state {input:?}: element {part:?}: {reason}")]
    MariaDbBinlogState { input: String, part: String, reason: &'static str },
}

/// How two GTID sets relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GtidOrdering {
    /// Same transactions.
    Equal,
    /// `self` has everything `other` has, and more.
    Ahead,
    /// `other` has everything `self` has, and more.
    Behind,
    /// Each has transactions the other lacks (or, for MariaDB, they end a domain at the same
    /// seq from different servers).
    Diverged,
}

/// The set algebra shared by both GTID flavors.
pub trait GtidSetOps: Sized + Clone + Eq + fmt::Display + FromStr<Err = GtidParseError> {
    fn empty() -> Self;
    fn is_empty(&self) -> bool;
    /// `other ⊆ self`.
    fn contains(&self, other: &Self) -> bool;
    fn union(&self, other: &Self) -> Self;
    fn intersection(&self, other: &Self) -> Self;
    /// `self − other`.
    fn subtract(&self, other: &Self) -> Self;
    /// Number of transactions in the set.
    fn count(&self) -> u64;

    /// Extra evidence of divergence beyond set inclusion (MariaDB: same last seq, different
    /// server). Defaults to none.
    fn conflicting(&self, _other: &Self) -> bool {
        false
    }

    /// `self ⊆ other`.
    fn is_subset_of(&self, other: &Self) -> bool {
        other.contains(self)
    }

    /// Transactions the replica has that the primary doesn't.
    fn errant(replica: &Self, primary: &Self) -> Self {
        replica.subtract(primary)
    }

    /// Partial order of `self` relative to `other`.
    fn compare(&self, other: &Self) -> GtidOrdering {
        if self.conflicting(other) {
            return GtidOrdering::Diverged;
        }
        match (self.contains(other), other.contains(self)) {
            (true, true) => GtidOrdering::Equal,
            (true, false) => GtidOrdering::Ahead,
            (false, true) => GtidOrdering::Behind,
            (false, false) => GtidOrdering::Diverged,
        }
    }
}

impl GtidSetOps for MySqlGtidSet {
    fn empty() -> Self {
        MySqlGtidSet::new()
    }
    fn is_empty(&self) -> bool {
        MySqlGtidSet::is_empty(self)
    }
    fn contains(&self, other: &Self) -> bool {
        MySqlGtidSet::contains(self, other)
    }
    fn union(&self, other: &Self) -> Self {
        MySqlGtidSet::union(self, other)
    }
    fn intersection(&self, other: &Self) -> Self {
        MySqlGtidSet::intersection(self, other)
    }
    fn subtract(&self, other: &Self) -> Self {
        MySqlGtidSet::subtract(self, other)
    }
    fn count(&self) -> u64 {
        MySqlGtidSet::count(self)
    }
}

impl GtidSetOps for MariaGtidSet {
    fn empty() -> Self {
        MariaGtidSet::new()
    }
    fn is_empty(&self) -> bool {
        MariaGtidSet::is_empty(self)
    }
    fn contains(&self, other: &Self) -> bool {
        MariaGtidSet::contains(self, other)
    }
    fn union(&self, other: &Self) -> Self {
        MariaGtidSet::union(self, other)
    }
    fn intersection(&self, other: &Self) -> Self {
        MariaGtidSet::intersection(self, other)
    }
    fn subtract(&self, other: &Self) -> Self {
        MariaGtidSet::subtract(self, other)
    }
    fn count(&self) -> u64 {
        MariaGtidSet::count(self)
    }
    fn conflicting(&self, other: &Self) -> bool {
        !self.conflicts(other).is_empty()
    }
}

/// A GTID set of either flavor, for code that handles both. Operations between different
/// flavors have no meaning and return `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "flavor", content = "set", rename_all = "lowercase")]
pub enum AnyGtidSet {
    MariaDb(MariaGtidSet),
    MySql(MySqlGtidSet),
}

impl AnyGtidSet {
    pub fn is_empty(&self) -> bool {
        match self {
            AnyGtidSet::MariaDb(s) => s.is_empty(),
            AnyGtidSet::MySql(s) => s.is_empty(),
        }
    }

    pub fn count(&self) -> u64 {
        match self {
            AnyGtidSet::MariaDb(s) => s.count(),
            AnyGtidSet::MySql(s) => s.count(),
        }
    }

    /// `other ⊆ self`; `None` across flavors.
    pub fn contains(&self, other: &AnyGtidSet) -> Option<bool> {
        match (self, other) {
            (AnyGtidSet::MariaDb(a), AnyGtidSet::MariaDb(b)) => Some(a.contains(b)),
            (AnyGtidSet::MySql(a), AnyGtidSet::MySql(b)) => Some(a.contains(b)),
            _ => None,
        }
    }

    /// Partial order; `None` across flavors.
    pub fn compare(&self, other: &AnyGtidSet) -> Option<GtidOrdering> {
        match (self, other) {
            (AnyGtidSet::MariaDb(a), AnyGtidSet::MariaDb(b)) => Some(GtidSetOps::compare(a, b)),
            (AnyGtidSet::MySql(a), AnyGtidSet::MySql(b)) => Some(GtidSetOps::compare(a, b)),
            _ => None,
        }
    }

    /// Transactions the replica has that the primary doesn't; `None` across flavors.
    pub fn errant(replica: &AnyGtidSet, primary: &AnyGtidSet) -> Option<AnyGtidSet> {
        match (replica, primary) {
            (AnyGtidSet::MariaDb(r), AnyGtidSet::MariaDb(p)) => Some(AnyGtidSet::MariaDb(MariaGtidSet::errant(r, p))),
            (AnyGtidSet::MySql(r), AnyGtidSet::MySql(p)) => Some(AnyGtidSet::MySql(MySqlGtidSet::errant(r, p))),
            _ => None,
        }
    }
}

impl fmt::Display for AnyGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyGtidSet::MariaDb(s) => s.fmt(f),
            AnyGtidSet::MySql(s) => s.fmt(f),
        }
    }
}

macro_rules! serde_as_string {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_string!(MySqlGtidSet);
serde_as_string!(MariaGtidSet);
serde_as_string!(MariaBinlogState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_orders_positions_partially() {
        let m = |s: &str| s.parse::<MariaGtidSet>().expect("valid");
        assert_eq!(m("0-1-5").compare(&m("0-1-5")), GtidOrdering::Equal);
        assert_eq!(m("0-1-6").compare(&m("0-1-5")), GtidOrdering::Ahead);
        assert_eq!(m("0-1-5").compare(&m("0-1-6,1-1-1")), GtidOrdering::Behind);
        assert_eq!(m("0-1-6,1-1-1").compare(&m("0-1-7")), GtidOrdering::Diverged);
        assert_eq!(m("0-2-5").compare(&m("0-1-5")), GtidOrdering::Diverged);

        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let y = |s: &str| format!("{u}:{s}").parse::<MySqlGtidSet>().expect("valid");
        assert_eq!(y("1-5").compare(&y("1-5")), GtidOrdering::Equal);
        assert_eq!(y("1-5").compare(&y("1-4")), GtidOrdering::Ahead);
        assert_eq!(y("1-3:5").compare(&y("1-4")), GtidOrdering::Diverged);
    }

    #[test]
    fn serializes_as_canonical_strings() {
        let m: MariaGtidSet = "1-2-7,0-1-42".parse().expect("valid");
        let j = serde_json::to_string(&m).expect("serializes");
        assert_eq!(j, "\"0-1-42,1-2-7\"");
        assert_eq!(serde_json::from_str::<MariaGtidSet>(&j).expect("parses"), m);
        assert!(serde_json::from_str::<MySqlGtidSet>("\"nope:1\"").is_err());

        let b: MariaBinlogState = "0-2-5,0-1-120".parse().expect("valid");
        let j = serde_json::to_string(&b).expect("serializes");
        assert_eq!(j, "\"0-1-120,0-2-5\"");
        assert_eq!(serde_json::from_str::<MariaBinlogState>(&j).expect("parses"), b);
        assert!(serde_json::from_str::<MariaBinlogState>("\"0-1-1..2\"").is_err());
    }
}

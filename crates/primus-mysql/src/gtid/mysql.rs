//! MySQL GTID sets: `uuid:1-5:7-9,uuid2:1-3`, and MySQL 8.4 tagged GTIDs `uuid:tag:1-5`.
//!
//! This is the format of `@@gtid_executed`, `@@gtid_purged` and the `Retrieved_Gtid_Set` /
//! `Executed_Gtid_Set` columns. MySQL prints long sets with a newline after each comma, and
//! accepts whitespace around tokens; the parser does too. Canonical printing (the `Display`
//! impl) is: sources sorted by UUID (lower-case, hyphenated) then tag (untagged first, tags
//! lower-cased and sorted), intervals merged and sorted, no whitespace — so equal sets print
//! identically and `parse(print(x)) == x`.

use super::interval::IntervalSet;
use super::GtidParseError;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A server UUID (the `source_id` of a MySQL GTID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid([u8; 16]);

impl Uuid {
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Uuid(b)
    }
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Accepts the hyphenated form (`3e11fa47-71ca-11e1-9e33-c80aa9429562`, any case) and the
    /// 32-hex-digit form, as MySQL does.
    pub fn parse(s: &str) -> Option<Uuid> {
        let s = s.trim();
        let hex: Vec<u8> = match s.len() {
            36 => {
                let b = s.as_bytes();
                if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                    return None;
                }
                b.iter().copied().filter(|&c| c != b'-').collect()
            }
            32 => s.as_bytes().to_vec(),
            _ => return None,
        };
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

/// Where a MySQL GTID comes from: the originating server's UUID plus, in MySQL 8.4+, an
/// optional tag (`[a-z_][a-z0-9_]{0,31}`, stored lower-case as MySQL normalises it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GtidSource {
    pub uuid: Uuid,
    pub tag: Option<String>,
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A MySQL GTID set. Sources with no transactions are never stored, so the empty set has a
/// single representation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct MySqlGtidSet {
    sets: BTreeMap<GtidSource, IntervalSet>,
}

impl MySqlGtidSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the transactions `lo..=hi` of `source`.
    pub fn add(&mut self, source: GtidSource, lo: u64, hi: u64) {
        let add = IntervalSet::range(lo, hi);
        if add.is_empty() {
            return;
        }
        let e = self.sets.entry(source).or_default();
        *e = e.union(&add);
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Per source, the transaction numbers.
    pub fn iter(&self) -> impl Iterator<Item = (&GtidSource, &IntervalSet)> {
        self.sets.iter()
    }

    pub fn get(&self, source: &GtidSource) -> Option<&IntervalSet> {
        self.sets.get(source)
    }

    /// Number of transactions in the set (saturating).
    pub fn count(&self) -> u64 {
        self.sets.values().fold(0u64, |a, s| a.saturating_add(s.count()))
    }

    /// `other ⊆ self`.
    pub fn contains(&self, other: &MySqlGtidSet) -> bool {
        other.sets.iter().all(|(src, s)| self.sets.get(src).is_some_and(|mine| mine.contains(s)))
    }

    pub fn is_subset_of(&self, other: &MySqlGtidSet) -> bool {
        other.contains(self)
    }

    pub fn union(&self, other: &MySqlGtidSet) -> MySqlGtidSet {
        let mut sets = self.sets.clone();
        for (src, s) in &other.sets {
            let e = sets.entry(src.clone()).or_default();
            *e = e.union(s);
        }
        MySqlGtidSet { sets }
    }

    pub fn intersection(&self, other: &MySqlGtidSet) -> MySqlGtidSet {
        let sets = self
            .sets
            .iter()
            .filter_map(|(src, s)| {
                let i = s.intersection(other.sets.get(src)?);
                (!i.is_empty()).then(|| (src.clone(), i))
            })
            .collect();
        MySqlGtidSet { sets }
    }

    /// `self − other`.
    pub fn subtract(&self, other: &MySqlGtidSet) -> MySqlGtidSet {
        let sets = self
            .sets
            .iter()
            .filter_map(|(src, s)| {
                let d = match other.sets.get(src) {
                    Some(o) => s.difference(o),
                    None => s.clone(),
                };
                (!d.is_empty()).then(|| (src.clone(), d))
            })
            .collect();
        MySqlGtidSet { sets }
    }

    /// Transactions the replica has executed that the primary has not: `replica − primary`.
    /// Non-empty means the replica has errant transactions and must not simply be repointed.
    pub fn errant(replica: &MySqlGtidSet, primary: &MySqlGtidSet) -> MySqlGtidSet {
        replica.subtract(primary)
    }
}

impl FromStr for MySqlGtidSet {
    type Err = GtidParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let mut set = MySqlGtidSet::new();
        if input.trim().is_empty() {
            return Ok(set);
        }
        let err = |part: &str, reason: &'static str| GtidParseError::MySql {
            input: input.to_string(),
            part: part.to_string(),
            reason,
        };
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(part, "empty element between commas"));
            }
            let mut fields = part.split(':').map(str::trim);
            let uuid_s = fields.next().unwrap_or_default();
            let uuid = Uuid::parse(uuid_s).ok_or_else(|| err(part, "source id is not a UUID"))?;
            let mut tag: Option<String> = None;
            // `true` once the current tag (or the untagged start) received an interval.
            let mut has_interval = false;
            let mut saw_any = false;
            for f in fields {
                saw_any = true;
                if f.starts_with(|c: char| c.is_ascii_digit()) {
                    let (lo, hi) = match f.split_once('-') {
                        Some((a, b)) => (a.trim().parse::<u64>(), b.trim().parse::<u64>()),
                        None => (f.parse::<u64>(), f.parse::<u64>()),
                    };
                    let (lo, hi) = match (lo, hi) {
                        (Ok(lo), Ok(hi)) => (lo, hi),
                        _ => return Err(err(part, "interval is not N or N-M with unsigned integers")),
                    };
                    if lo == 0 {
                        return Err(err(part, "transaction numbers start at 1"));
                    }
                    if lo > hi {
                        return Err(err(part, "interval end is before its start"));
                    }
                    if hi > i64::MAX as u64 {
                        return Err(err(part, "transaction number exceeds 2^63-1"));
                    }
                    set.add(GtidSource { uuid, tag: tag.clone() }, lo, hi);
                    has_interval = true;
                } else if valid_tag(f) {
                    if tag.is_some() && !has_interval {
                        return Err(err(part, "tag without any interval"));
                    }
                    tag = Some(f.to_ascii_lowercase());
                    has_interval = false;
                } else {
                    return Err(err(part, "expected an interval or a tag ([a-z_][a-z0-9_]{0,31})"));
                }
            }
            if !saw_any {
                return Err(err(part, "UUID without any interval"));
            }
            if !has_interval {
                return Err(err(part, "tag without any interval"));
            }
        }
        Ok(set)
    }
}

impl fmt::Display for MySqlGtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // BTreeMap order: by uuid, then tag with None first — exactly the grouping we print.
        let mut first_uuid = true;
        let mut cur_uuid: Option<Uuid> = None;
        for (src, set) in &self.sets {
            if cur_uuid != Some(src.uuid) {
                if !first_uuid {
                    f.write_str(",")?;
                }
                first_uuid = false;
                cur_uuid = Some(src.uuid);
                write!(f, "{}", src.uuid)?;
            }
            if let Some(t) = &src.tag {
                write!(f, ":{t}")?;
            }
            for &(lo, hi) in set.ranges() {
                if lo == hi {
                    write!(f, ":{lo}")?;
                } else {
                    write!(f, ":{lo}-{hi}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const B: &str = "8a94f357-aab4-11df-86ab-c80aa9429563";

    fn p(s: &str) -> MySqlGtidSet {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_gtid_executed_as_mysql_prints_it() {
        let s = p(&format!("{},\n{}:1-3", A.to_uppercase() + ":1-5:7-9", B));
        assert_eq!(s.to_string(), format!("{A}:1-5:7-9,{B}:1-3"));
        assert_eq!(s.count(), 5 + 3 + 3);
        assert_eq!(p(""), MySqlGtidSet::new());
        assert_eq!(p("  \n"), MySqlGtidSet::new());
    }

    #[test]
    fn merges_and_sorts_into_canonical_form() {
        let s = p(&format!("{B}:3,{A}:7-9:1-5,{B}:1-2, {A}:6"));
        assert_eq!(s.to_string(), format!("{A}:1-9,{B}:1-3"));
        let no_hyphens = A.replace('-', "");
        assert_eq!(p(&format!("{no_hyphens}:1")).to_string(), format!("{A}:1"));
    }

    #[test]
    fn parses_tagged_gtids_of_mysql_8_4() {
        let s = p(&format!("{A}:1-5:Domestic:1-3:7:international:4,{A}:domestic:4"));
        assert_eq!(s.to_string(), format!("{A}:1-5:domestic:1-4:7:international:4"));
        assert_eq!(s.count(), 5 + 5 + 1);
        let tag_only = p(&format!("{A}:t1:1"));
        assert_eq!(tag_only.to_string(), format!("{A}:t1:1"));
        assert!(!s.contains(&p(&format!("{A}:other:1"))));
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        for bad in [
            "x:1",
            A,
            &format!("{A}:"),
            &format!("{A}:0"),
            &format!("{A}:5-3"),
            &format!("{A}:1-x"),
            &format!("{A}:1,,{B}:1"),
            &format!("{A}:tag"),
            &format!("{A}:1:tag"),
            &format!("{A}:t1:t2:1"),
            &format!("{A}:-tag:1"),
            &format!("{A}:{}:1", "t".repeat(33)),
        ] {
            let e = bad.parse::<MySqlGtidSet>().expect_err(bad);
            let msg = e.to_string();
            assert!(msg.contains("MySQL GTID set"), "{msg}");
        }
    }

    #[test]
    fn errant_is_what_the_replica_has_and_the_primary_lacks() {
        let primary = p(&format!("{A}:1-100"));
        let replica = p(&format!("{A}:1-90,{B}:1-2"));
        let errant = MySqlGtidSet::errant(&replica, &primary);
        assert_eq!(errant.to_string(), format!("{B}:1-2"));
        assert_eq!(errant.count(), 2);
        assert!(MySqlGtidSet::errant(&p(&format!("{A}:1-90")), &primary).is_empty());
        assert_eq!(primary.subtract(&replica).to_string(), format!("{A}:91-100"));
    }
}

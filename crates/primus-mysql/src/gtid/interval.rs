//! Sets of transaction sequence numbers as sorted, disjoint, non-adjacent closed intervals.
//!
//! Both GTID flavors reduce to this: MySQL keeps one interval set per source UUID (and tag),
//! and a MariaDB position `domain-server-seq` stands for the prefix `1..=seq` of its domain.
//! Keeping the representation normalised (merged, sorted) makes equality structural, which is
//! what the `parse(print(x)) == x` property relies on.

use std::cmp::{max, min};

/// A normalised set of `u64` sequence numbers: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct IntervalSet {
    ranges: Vec<(u64, u64)>,
}

impl IntervalSet {
    /// The empty set.
    pub fn new() -> Self {
        IntervalSet { ranges: Vec::new() }
    }

    /// `1..=n` (empty for `n == 0`).
    pub fn prefix(n: u64) -> Self {
        if n == 0 {
            IntervalSet::new()
        } else {
            IntervalSet { ranges: vec![(1, n)] }
        }
    }

    /// `lo..=hi` (empty if `lo > hi`).
    pub fn range(lo: u64, hi: u64) -> Self {
        if lo > hi {
            IntervalSet::new()
        } else {
            IntervalSet { ranges: vec![(lo, hi)] }
        }
    }

    /// Builds a set from arbitrary (possibly overlapping, unsorted) inclusive ranges;
    /// ranges with `lo > hi` are ignored.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = ranges.into_iter().filter(|(a, b)| a <= b).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                // Merge overlapping or adjacent ranges (hi + 1 == lo is adjacent).
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = max(last.1, hi),
                _ => out.push((lo, hi)),
            }
        }
        IntervalSet { ranges: out }
    }

    /// The inclusive ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Largest element, if any.
    pub fn last(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    /// Smallest element, if any.
    pub fn first(&self) -> Option<u64> {
        self.ranges.first().map(|r| r.0)
    }

    /// Number of elements (saturating at `u64::MAX`).
    pub fn count(&self) -> u64 {
        self.ranges.iter().fold(0u64, |acc, (lo, hi)| acc.saturating_add((hi - lo).saturating_add(1)))
    }

    /// `true` if this set is `1..=n` for some `n`, or empty.
    pub fn is_prefix(&self) -> bool {
        matches!(self.ranges.as_slice(), [] | [(1, _)])
    }

    pub fn contains_value(&self, v: u64) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= v && v <= hi)
    }

    /// `other ⊆ self`.
    pub fn contains(&self, other: &IntervalSet) -> bool {
        // Every range of `other` must lie within a single range of `self` (ranges are merged).
        let mut i = 0;
        for &(lo, hi) in &other.ranges {
            while i < self.ranges.len() && self.ranges[i].1 < lo {
                i += 1;
            }
            match self.ranges.get(i) {
                Some(&(slo, shi)) if slo <= lo && hi <= shi => {}
                _ => return false,
            }
        }
        true
    }

    pub fn union(&self, other: &IntervalSet) -> IntervalSet {
        IntervalSet::from_ranges(self.ranges.iter().chain(other.ranges.iter()).copied())
    }

    pub fn intersection(&self, other: &IntervalSet) -> IntervalSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            let lo = max(a.0, b.0);
            let hi = min(a.1, b.1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        // Pieces of disjoint, non-adjacent inputs are already disjoint and non-adjacent.
        IntervalSet { ranges: out }
    }

    /// `self − other`.
    pub fn difference(&self, other: &IntervalSet) -> IntervalSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(lo, hi) in &self.ranges {
            let mut cur = lo;
            // Skip subtrahend ranges entirely before this one.
            while j < other.ranges.len() && other.ranges[j].1 < lo {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < other.ranges.len() && other.ranges[k].0 <= hi {
                let (olo, ohi) = other.ranges[k];
                if olo > cur {
                    out.push((cur, olo - 1));
                }
                if ohi >= hi {
                    done = true;
                    break;
                }
                cur = max(cur, ohi + 1);
                k += 1;
            }
            if !done && cur <= hi {
                out.push((cur, hi));
            }
        }
        IntervalSet { ranges: out }
    }

    pub fn is_disjoint(&self, other: &IntervalSet) -> bool {
        self.intersection(other).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_overlapping_and_adjacent_ranges() {
        let s = IntervalSet::from_ranges([(7, 9), (1, 3), (4, 5), (8, 12), (20, 20), (3, 2)]);
        assert_eq!(s.ranges(), &[(1, 5), (7, 12), (20, 20)]);
        assert_eq!(s.count(), 5 + 6 + 1);
    }

    #[test]
    fn algebra_on_small_examples() {
        let a = IntervalSet::from_ranges([(1, 10), (20, 30)]);
        let b = IntervalSet::from_ranges([(5, 25)]);
        assert_eq!(a.difference(&b).ranges(), &[(1, 4), (26, 30)]);
        assert_eq!(b.difference(&a).ranges(), &[(11, 19)]);
        assert_eq!(a.intersection(&b).ranges(), &[(5, 10), (20, 25)]);
        assert_eq!(a.union(&b).ranges(), &[(1, 30)]);
        assert!(a.contains(&IntervalSet::range(2, 9)));
        assert!(!a.contains(&IntervalSet::range(9, 21)));
        assert!(a.contains(&IntervalSet::new()));
        let full = IntervalSet::range(1, u64::MAX);
        assert_eq!(full.difference(&IntervalSet::range(u64::MAX, u64::MAX)).last(), Some(u64::MAX - 1));
        assert_eq!(full.count(), u64::MAX);
    }
}

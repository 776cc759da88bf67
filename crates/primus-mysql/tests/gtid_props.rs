//! Property tests of the GTID set algebra, run over both flavors with the same properties.

use primus_mysql::gtid::{GtidOrdering, GtidSetOps, MariaBinlogState, MariaGtid, MariaGtidSet, MySqlGtidSet};
use proptest::prelude::*;

const UUIDS: [&str; 3] = [
    "3e11fa47-71ca-11e1-9e33-c80aa9429562",
    "8a94f357-aab4-11df-86ab-c80aa9429563",
    "00000000-0000-0000-0000-000000000001",
];
const TAGS: [Option<&str>; 3] = [None, Some("alpha"), Some("tag_b")];

/// A MySQL set built from a small universe so that generated sets overlap often.
fn mysql_set() -> impl Strategy<Value = MySqlGtidSet> {
    prop::collection::vec((0..UUIDS.len(), 0..TAGS.len(), 1u64..40, 0u64..10), 0..6).prop_map(|elems| {
        let text: Vec<String> = elems
            .into_iter()
            .map(|(u, t, lo, len)| {
                let tag = TAGS[t].map(|t| format!(":{t}")).unwrap_or_default();
                format!("{}{tag}:{lo}-{}", UUIDS[u], lo + len)
            })
            .collect();
        text.join(",\n").parse().expect("generated MySQL GTID set parses")
    })
}

/// A MariaDB set: positions (`d-s-n`) mixed with difference-shaped ranges (`d-s-lo..hi`).
fn maria_set() -> impl Strategy<Value = MariaGtidSet> {
    let elem = (0u32..3, 1u32..4, 0u64..30, prop::option::of(0u64..8)).prop_map(|(d, s, a, len)| match len {
        None => format!("{d}-{s}-{a}"),
        Some(len) => format!("{d}-{s}-{}..{}", a + 1, a + 1 + len),
    });
    prop::collection::vec(elem, 0..6).prop_map(|v| v.join(",").parse().expect("generated MariaDB GTID set parses"))
}

/// `@@gtid_binlog_state`-shaped GTIDs: several servers per domain, repeats allowed.
fn binlog_gtids() -> impl Strategy<Value = Vec<MariaGtid>> {
    prop::collection::vec((0u32..3, 1u32..5, 0u64..200), 0..8).prop_map(|v| {
        v.into_iter().map(|(domain_id, server_id, seq_no)| MariaGtid { domain_id, server_id, seq_no }).collect()
    })
}

fn check_laws<T: GtidSetOps + std::fmt::Debug>(a: &T, b: &T, c: &T) -> Result<(), TestCaseError> {
    // Canonical printing round-trips.
    for x in [a, b, c] {
        let printed = x.to_string();
        prop_assert_eq!(&printed.parse::<T>().expect("canonical output parses"), x, "printed {}", printed);
    }
    // Union is commutative and associative.
    prop_assert_eq!(a.union(b), b.union(a));
    prop_assert_eq!(a.union(b).union(c), a.union(&b.union(c)));
    // Both operands are subsets of the union.
    prop_assert!(a.is_subset_of(&a.union(b)));
    prop_assert!(b.is_subset_of(&a.union(b)));
    // What is subtracted is gone.
    prop_assert!(a.subtract(b).intersection(b).is_empty());
    // Subtraction and intersection partition `a`.
    let rebuilt = a.subtract(b).union(&a.intersection(b));
    prop_assert!(rebuilt.contains(a) && a.contains(&rebuilt));
    prop_assert_eq!(a.union(b).count() + a.intersection(b).count(), a.count() + b.count(), "inclusion-exclusion");
    // Errant transactions.
    prop_assert!(T::errant(a, a).is_empty());
    prop_assert_eq!(T::errant(a, b).is_empty(), a.is_subset_of(b));
    // The partial order is antisymmetric.
    let expected_back = match a.compare(b) {
        GtidOrdering::Equal => GtidOrdering::Equal,
        GtidOrdering::Ahead => GtidOrdering::Behind,
        GtidOrdering::Behind => GtidOrdering::Ahead,
        GtidOrdering::Diverged => GtidOrdering::Diverged,
    };
    prop_assert_eq!(b.compare(a), expected_back);
    prop_assert_eq!(a.compare(a), GtidOrdering::Equal);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mysql_sets_obey_the_set_laws(a in mysql_set(), b in mysql_set(), c in mysql_set()) {
        check_laws(&a, &b, &c)?;
    }

    #[test]
    fn mariadb_sets_obey_the_set_laws(a in maria_set(), b in maria_set(), c in maria_set()) {
        check_laws(&a, &b, &c)?;
    }

    #[test]
    fn mariadb_positions_stay_positions_under_union(a in maria_set(), b in maria_set()) {
        if a.is_position() && b.is_position() {
            prop_assert!(a.union(&b).is_position());
        }
    }

    #[test]
    fn mariadb_binlog_states_round_trip(gtids in binlog_gtids(), other in binlog_gtids()) {
        let text: Vec<String> = gtids.iter().map(ToString::to_string).collect();
        let parsed: MariaBinlogState = text.join(",").parse().expect("generated binlog state parses");
        prop_assert_eq!(&parsed, &MariaBinlogState::from_gtids(gtids.iter().copied()));
        // Canonical printing round-trips, and the input order does not matter.
        prop_assert_eq!(&parsed.to_string().parse::<MariaBinlogState>().expect("canonical output parses"), &parsed);
        let reversed: Vec<String> = text.iter().rev().cloned().collect();
        prop_assert_eq!(&reversed.join(", ").parse::<MariaBinlogState>().expect("parses"), &parsed);
        // Each (domain, server) keeps its highest seq.
        for g in &gtids {
            let max = gtids.iter().filter(|h| (h.domain_id, h.server_id) == (g.domain_id, g.server_id)).map(|h| h.seq_no).max();
            prop_assert_eq!(parsed.get(g.domain_id, g.server_id), max);
        }
        // `ahead_of` lists exactly the pairs the other state does not cover.
        let other = MariaBinlogState::from_gtids(other);
        prop_assert!(parsed.ahead_of(&parsed).is_empty());
        let covered = parsed.gtids().all(|g| other.get(g.domain_id, g.server_id).is_some_and(|o| o >= g.seq_no));
        prop_assert_eq!(parsed.ahead_of(&other).is_empty(), covered);
        let serde = serde_json::to_string(&parsed).expect("serializes");
        prop_assert_eq!(serde_json::from_str::<MariaBinlogState>(&serde).expect("deserializes"), parsed);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_input(s in ".{0,80}") {
        let _ = s.parse::<MySqlGtidSet>();
        let _ = s.parse::<MariaGtidSet>();
        let _ = s.parse::<MariaBinlogState>();
    }

    #[test]
    fn parsers_never_panic_on_gtid_like_input(s in "[0-9a-fA-F:,\\- .\n]{0,60}") {
        let _ = s.parse::<MySqlGtidSet>();
        let _ = s.parse::<MariaGtidSet>();
        let _ = s.parse::<MariaBinlogState>();
    }
}

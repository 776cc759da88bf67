//! The history a schedule leaves (every write the clients tried, with its outcome, and
//! the state once every fault was healed), and the checker that judges it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a client learned about one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered OK: the write is acknowledged.
    Ack,
    /// It certainly did not commit: the connection was refused, or the server answered
    /// with an error (e.g. 1290, read-only).
    Fail,
    /// It may or may not have committed: a timeout, or the connection broke after the
    /// statement was sent.
    Unknown,
}

/// One write: a unique id inserted into `nemesis.writes` on the server the client
/// believed was the primary. Times are CLOCK_MONOTONIC microseconds, which every
/// process on the machine shares (network namespaces have no clock of their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub client: usize,
    pub id: u64,
    pub server: String,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// What primus answered to `divergence` for a server that holds rows the final
/// primary lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceSeen {
    pub former_primary: bool,
    pub divergent: bool,
    pub count: u64,
    pub count_exact: bool,
    /// The call failed: why.
    pub error: String,
    /// The leader's topology flags the server with errant GTIDs (how primus reports a
    /// replica, not a former primary, holding transactions the primary lacks).
    #[serde(default)]
    pub flagged_errant: bool,
}

/// The state after the last fault was healed and the convergence wait ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Final {
    pub no_loss: bool,
    /// Ids present in `nemesis.writes` on each server (by address).
    pub rows: BTreeMap<String, BTreeSet<u64>>,
    /// Servers that answered `read_only = 0` at the end.
    pub writable: Vec<String>,
    /// Each coordinator's own answer to GetPrimary (or its error).
    pub primary_by_coordinator: BTreeMap<u64, String>,
    /// Failovers still in progress at the end.
    pub in_flight: Vec<String>,
    /// The last write tried on the agreed primary failed: why.
    #[serde(default)]
    pub write_error: Option<String>,
    /// States accepted as converged that need an operator by design (reported).
    #[serde(default)]
    pub notes: Vec<String>,
    /// How long after the heal the cluster converged (`None`: not within the bound).
    pub converged_after_ms: Option<u64>,
    /// The convergence bound (10 s).
    pub converge_bound_ms: u64,
    /// primus' divergence report for each server holding rows the primary lacks.
    pub divergence: BTreeMap<String, DivergenceSeen>,
    /// Processes that exited although no fault killed them.
    pub crashed: Vec<String>,
    /// Log lines with a panic.
    pub panics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: String,
    pub detail: String,
}

/// Counts over the writes, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged writes missing from the final primary (a violation in no-loss mode;
    /// in asynchronous mode the loss a crash may cost, reported).
    pub acknowledged_lost: usize,
}

fn v(invariant: &str, detail: String) -> Violation {
    Violation { invariant: invariant.into(), detail }
}

/// Judge a schedule's history. Every invariant is checked; each broken one adds a
/// violation (at most a few examples each).
pub fn check(writes: &[Write], fin: &Final) -> (Vec<Violation>, Tally) {
    let mut out = Vec::new();
    let mut tally = Tally::default();
    for w in writes {
        match w.outcome {
            Outcome::Ack => tally.acknowledged += 1,
            Outcome::Fail => tally.failed += 1,
            Outcome::Unknown => tally.unknown += 1,
        }
    }

    // 1. No two servers acknowledged writes in overlapping intervals.
    for (a, b) in overlapping_acks(writes).into_iter().take(3) {
        out.push(v(
            "one writable primary",
            format!(
                "writes acknowledged by two servers in overlapping intervals: id {} on {} [{} us, {} us] (client {}) \
                 and id {} on {} [{} us, {} us] (client {})",
                a.id, a.server, a.start_us, a.end_us, a.client, b.id, b.server, b.start_us, b.end_us, b.client
            ),
        ));
    }

    // 2. After the heal: one writable primary, named by every coordinator, no failover
    //    in flight, within the bound.
    let primary = match fin.writable.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    match fin.converged_after_ms {
        Some(_) => {}
        None => out.push(v(
            "converges after the heal",
            format!(
                "not converged within {} ms of the last heal: writable {:?}, GetPrimary per coordinator {:?}, \
                 failovers in flight {:?}, write on the primary: {}",
                fin.converge_bound_ms,
                fin.writable,
                fin.primary_by_coordinator,
                fin.in_flight,
                fin.write_error.as_deref().unwrap_or("ok")
            ),
        )),
    }

    if let Some(primary) = &primary {
        let on_primary = fin.rows.get(primary).cloned().unwrap_or_default();
        // 3. Acknowledged writes on the final primary (no-loss mode: all of them).
        let lost: Vec<&Write> =
            writes.iter().filter(|w| w.outcome == Outcome::Ack && !on_primary.contains(&w.id)).collect();
        tally.acknowledged_lost = lost.len();
        if fin.no_loss && !lost.is_empty() {
            let ex: Vec<String> = lost
                .iter()
                .take(5)
                .map(|w| format!("id {} acknowledged by {} at {} us", w.id, w.server, w.end_us))
                .collect();
            out.push(v(
                "no acknowledged write lost (no-loss mode)",
                format!("{} acknowledged writes are not on the final primary {primary}: {}", lost.len(), ex.join("; ")),
            ));
        }
        // 4. Every transaction a server holds beyond the final primary is reported: by
        //    `primusctl divergence` for a former primary, as errant GTIDs in the topology
        //    for any other server.
        for (server, ids) in &fin.rows {
            if server == primary {
                continue;
            }
            let extra = ids.difference(&on_primary).count();
            if extra == 0 {
                continue;
            }
            let seen = fin.divergence.get(server).cloned().unwrap_or_default();
            let reported = (seen.divergent && (!seen.count_exact || seen.count >= extra as u64)) || seen.flagged_errant;
            if !reported {
                out.push(v(
                    "divergence reported",
                    format!(
                        "{server} holds {extra} written rows the final primary {primary} lacks, but primus' divergence \
                         report says {seen:?}"
                    ),
                ));
            }
        }
    }

    // 5. A write that certainly failed is nowhere.
    let everywhere: BTreeSet<u64> = fin.rows.values().flatten().copied().collect();
    let ghosts: Vec<&Write> =
        writes.iter().filter(|w| w.outcome == Outcome::Fail && everywhere.contains(&w.id)).collect();
    if !ghosts.is_empty() {
        let ex: Vec<String> =
            ghosts.iter().take(5).map(|w| format!("id {} on {}: {}", w.id, w.server, w.error)).collect();
        out.push(v(
            "a failed write is not committed",
            format!("{} writes answered with an error are present: {}", ghosts.len(), ex.join("; ")),
        ));
    }

    // 6. Nothing crashed on its own, no panic.
    for c in &fin.crashed {
        out.push(v("no unexpected crash", c.clone()));
    }
    for p in fin.panics.iter().take(3) {
        out.push(v("no panic", p.clone()));
    }
    (out, tally)
}

/// Pairs of acknowledged writes on different servers whose intervals overlap (at most
/// one pair per write). Sweep in start order, remembering each server's latest end.
fn overlapping_acks(writes: &[Write]) -> Vec<(&Write, &Write)> {
    let mut acks: Vec<&Write> = writes.iter().filter(|w| w.outcome == Outcome::Ack).collect();
    acks.sort_by_key(|w| (w.start_us, w.end_us));
    let mut latest: BTreeMap<&str, &Write> = BTreeMap::new();
    let mut out = Vec::new();
    for w in acks {
        if let Some(other) =
            latest.iter().filter(|(s, o)| **s != w.server.as_str() && o.end_us > w.start_us).map(|(_, o)| *o).next()
        {
            out.push((other, w));
        }
        let e = latest.entry(w.server.as_str()).or_insert(w);
        if w.end_us > e.end_us {
            *e = w;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, id: u64, server: &str, start_us: u64, end_us: u64, outcome: Outcome) -> Write {
        Write { client, id, server: server.into(), start_us, end_us, outcome, error: String::new() }
    }

    fn converged(primary: &str, rows: &[(&str, &[u64])]) -> Final {
        Final {
            rows: rows.iter().map(|(s, ids)| (s.to_string(), ids.iter().copied().collect())).collect(),
            writable: vec![primary.into()],
            converged_after_ms: Some(100),
            converge_bound_ms: 10_000,
            ..Default::default()
        }
    }

    fn invariants(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.invariant.as_str()).collect()
    }

    #[test]
    fn a_clean_history_passes_and_is_tallied() {
        let writes = [
            w(0, 1, "a", 0, 10, Outcome::Ack),
            w(1, 2, "a", 5, 12, Outcome::Ack),
            w(0, 3, "a", 20, 900, Outcome::Unknown),
            w(1, 4, "b", 30, 40, Outcome::Fail),
            w(0, 5, "b", 1000, 1010, Outcome::Ack),
        ];
        let fin = converged("b", &[("a", &[1, 2]), ("b", &[1, 2, 5])]);
        let (v, t) = check(&writes, &fin);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(t, Tally { acknowledged: 3, failed: 1, unknown: 1, acknowledged_lost: 0 });
    }

    #[test]
    fn two_servers_acknowledging_in_overlapping_intervals_is_a_violation_touching_ones_are_not() {
        let fin = converged("b", &[("b", &[1, 2])]);
        let overlap = [w(0, 1, "a", 0, 100, Outcome::Ack), w(1, 2, "b", 50, 60, Outcome::Ack)];
        assert_eq!(invariants(&check(&overlap, &fin).0), ["one writable primary"]);
        let after = [w(0, 1, "a", 0, 100, Outcome::Ack), w(1, 2, "b", 100, 160, Outcome::Ack)];
        assert!(check(&after, &fin).0.is_empty());
        // An unacknowledged write to the old primary overlapping is no evidence.
        let unknown = [w(0, 1, "a", 0, 100, Outcome::Unknown), w(1, 2, "b", 50, 60, Outcome::Ack)];
        assert!(check(&unknown, &fin).0.is_empty());
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_final_primary_is_a_violation_only_in_no_loss_mode() {
        let writes = [w(0, 1, "a", 0, 10, Outcome::Ack), w(0, 2, "b", 20, 30, Outcome::Ack)];
        let mut fin = converged("b", &[("b", &[2])]);
        let (v, t) = check(&writes, &fin);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(t.acknowledged_lost, 1);
        fin.no_loss = true;
        assert_eq!(invariants(&check(&writes, &fin).0), ["no acknowledged write lost (no-loss mode)"]);
    }

    #[test]
    fn rows_beyond_the_final_primary_must_be_reported_divergent() {
        let writes = [w(0, 1, "a", 0, 10, Outcome::Unknown)];
        let mut fin = converged("b", &[("a", &[1]), ("b", &[])]);
        assert_eq!(invariants(&check(&writes, &fin).0), ["divergence reported"]);
        fin.divergence.insert(
            "a".into(),
            DivergenceSeen {
                former_primary: true,
                divergent: true,
                count: 1,
                count_exact: true,
                error: String::new(),
                flagged_errant: false,
            },
        );
        assert!(check(&writes, &fin).0.is_empty());
        // A replica (no former primary) is reported by its errant flag.
        let mut replica = converged("b", &[("a", &[1]), ("b", &[])]);
        replica.divergence.insert("a".into(), DivergenceSeen { flagged_errant: true, ..Default::default() });
        assert!(check(&writes, &replica).0.is_empty());
        // An exact count lower than the rows found is not a report of them all.
        fin.rows.insert("a".into(), [1, 7].into_iter().collect());
        assert_eq!(invariants(&check(&writes, &fin).0), ["divergence reported"]);
    }

    #[test]
    fn a_failed_write_found_on_a_server_no_convergence_crashes_and_panics_are_violations() {
        let writes = [w(0, 1, "a", 0, 10, Outcome::Fail)];
        let mut fin = converged("a", &[("a", &[1])]);
        assert_eq!(invariants(&check(&writes, &fin).0), ["a failed write is not committed"]);
        fin.rows.clear();
        fin.converged_after_ms = None;
        fin.writable = vec!["a".into(), "b".into()];
        fin.crashed.push("primusd 2 exited with signal 6".into());
        fin.panics.push("thread 'x' panicked at".into());
        assert_eq!(
            invariants(&check(&writes, &fin).0),
            ["converges after the heal", "no unexpected crash", "no panic"]
        );
    }
}

//! The report: one row per fault kind (schedules that drew it, primary changes it
//! caused, time from the fault to the new primary being writable, violations).

use crate::run::OneResult;
use crate::schedule::Fault;
use std::collections::BTreeSet;
use std::time::Duration;

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_else(|| "–".into())
}

pub fn render(results: &[OneResult], seconds: u64, took: Duration) -> String {
    let mut s = String::new();
    let no_loss = results.iter().filter(|r| r.no_loss).count();
    let failovers: usize = results.iter().map(|r| r.failovers.len()).sum();
    let succeeded: usize = results.iter().flat_map(|r| &r.failovers).filter(|f| f.outcome == "succeeded").count();
    let acked: usize = results.iter().map(|r| r.tally.acknowledged).sum();
    let lost_async: usize = results.iter().filter(|r| !r.no_loss).map(|r| r.tally.acknowledged_lost).sum();
    let violating = results.iter().filter(|r| !r.violations.is_empty()).count();
    let converge: Vec<u64> = {
        let mut v: Vec<u64> = results.iter().filter_map(|r| r.final_state.converged_after_ms).collect();
        v.sort_unstable();
        v
    };
    s.push_str(&format!(
        "{} schedules of {seconds} s ({no_loss} in semi-sync no-loss mode), run in {:.0} min; {} faults injected; \
         {failovers} failovers recorded by primus ({succeeded} succeeded); {acked} writes acknowledged \
         ({lost_async} of them not on the final primary, all in asynchronous mode); converged after the heal: \
         median {} ms, max {} ms; schedules with violations: {violating}\n\n",
        results.len(),
        took.as_secs_f64() / 60.0,
        results.iter().map(|r| r.episodes.len()).sum::<usize>(),
        ms(percentile(&converge, 50.0)),
        ms(converge.last().copied()),
    ));
    s.push_str(
        "| fault | schedules | injected | primary changes after it | time to writable median (ms) | p99 (ms) | \
         schedules with violations |\n|---|---|---|---|---|---|---|\n",
    );
    for kind in Fault::KINDS {
        let with: Vec<&OneResult> = results.iter().filter(|r| r.episodes.iter().any(|e| e.kind == kind)).collect();
        let injected: usize = results
            .iter()
            .flat_map(|r| &r.episodes)
            .filter(|e| e.kind == kind && !e.detail.starts_with("not injected"))
            .count();
        let mut times: Vec<u64> = results
            .iter()
            .flat_map(|r| &r.changes)
            .filter(|c| c.cause == kind)
            .map(|c| c.time_to_writable_ms)
            .collect();
        times.sort_unstable();
        let bad = with.iter().filter(|r| !r.violations.is_empty()).count();
        s.push_str(&format!(
            "| {kind} | {} | {injected} | {} | {} | {} | {bad} |\n",
            with.len(),
            times.len(),
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
        ));
    }
    let locked = results.iter().filter(|r| !r.final_state.notes.is_empty()).count();
    if locked > 0 {
        s.push_str(&format!(
            "\n{locked} schedule(s) ended with the primary taking no write in no-loss mode because no semi-sync \
             replica was left (every other server a demoted former primary awaiting `rejoin`): primus reports it \
             as LockedSemiSyncPrimary, an operator's decision by design; counted as converged.\n"
        ));
    }
    let invariants: BTreeSet<&str> = results.iter().flat_map(|r| &r.violations).map(|v| v.invariant.as_str()).collect();
    if !invariants.is_empty() {
        s.push_str("\nViolated invariants:\n");
        for i in invariants {
            let seeds: Vec<String> = results
                .iter()
                .filter(|r| r.violations.iter().any(|v| v.invariant == i))
                .map(|r| r.seed.to_string())
                .collect();
            s.push_str(&format!("- {i}: seeds {}\n", seeds.join(", ")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}

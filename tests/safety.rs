//! Fault sequences that broke the safety promise (one writable primary, and a primary that
//! stays available when nothing is wrong with it) on real processes. Each test failed at
//! 3315362; the agent-related ones live in agent.rs, crash points in failover_crash.rs.

use primus_client::ReadConsistency;
use primus_integration_tests::world::{self, two_writable, World, WorldOptions, WritableSampler};
use std::time::{Duration, Instant};

const CLUSTER: &str = "c";

/// A promote whose statements ran but whose answer was lost (a timeout, a dropped
/// connection) used to count as "nothing irreversible happened": the switchover was
/// aborted and the fenced old primary made writable again beside the promoted candidate.
/// Now a failed promote first asks the candidate: writable and replicating from nobody
/// means promoted, and the failover goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_whose_answer_is_lost_is_never_aborted_so_never_two_are_writable() -> anyhow::Result<()> {
    let w = World::start(WorldOptions {
        fault_injection: true,
        env: vec![("PRIMUS_FAILPOINT".into(), "failover.promote_answer_lost".into())],
        ..Default::default()
    })
    .await?;
    w.register_sandbox(CLUSTER, Duration::from_millis(500)).await?;
    let old = w.sandbox.primary().clone();
    let to = w.sandbox.replicas()[0].addr();
    let sampler = WritableSampler::start(w.sandbox.instances().to_vec());
    let client = w.client()?;
    let answer = client.failover(CLUSTER, Some(&to), true).await;
    println!("switchover answered: {answer:?}");
    let h = world::wait_finished(&client, CLUSTER, 1, Duration::from_secs(30)).await?;
    // Long enough for the upkeep to restore an aborted switchover's old primary.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = sampler.stop().await?;
    let f = h.failovers.last().ok_or_else(|| anyhow::anyhow!("no failover recorded"))?;
    world::print_steps(f);
    let doubles = two_writable(&samples);
    println!(
        "{} samples, {} with two writable, outcome {} ({})",
        samples.len(),
        doubles.len(),
        f.outcome,
        f.outcome_reason
    );
    assert!(doubles.is_empty(), "two writable instances at once: {:?}", doubles.first());
    assert_ne!(f.outcome, "aborted", "a failover was aborted after its promote was sent: {f:#?}");
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.candidate, to);
    let promote = f.steps.iter().find(|s| s.description.starts_with("promote ")).map(|s| s.outcome.clone());
    assert!(promote.as_deref().is_some_and(|o| o.contains("although the promote reported")), "{f:#?}");
    assert!(old.read_only().await?, "the old primary is writable after the switchover");
    let last = samples.last().map(|s| s.writable.clone()).unwrap_or_default();
    assert_eq!(last, vec![to], "writable at the end");
    Ok(())
}

/// After a failover the leader's topology refresh compared a topology without the
/// demoted marks with the recorded one (which has them), found them different every
/// time, and committed the same topology every probe interval for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_topology_is_committed_only_when_it_changes() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox(CLUSTER, Duration::from_millis(1500)).await?;
    let client = w.client()?;
    w.sandbox.primary().kill9()?;
    let h = world::wait_finished(&client, CLUSTER, 1, Duration::from_secs(30)).await?;
    assert_eq!(h.failovers[0].outcome, "succeeded", "{:#?}", h.failovers[0]);
    let since = Instant::now();
    let topology_commits = |records: &[primus_client::AuditRecord], after: u64| {
        records.iter().filter(|r| r.index > after && r.summary.starts_with(&format!("topology of {CLUSTER}:"))).count()
    };
    let audit = client.audit(1000, ReadConsistency::Linearizable).await?;
    let start_index = audit.records.iter().map(|r| r.index).max().unwrap_or(0);
    // The probe interval is 300 ms: the old code committed ~100 times in 30 s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let audit = client.audit(1000, ReadConsistency::Linearizable).await?;
    let n = topology_commits(&audit.records, start_index);
    let lines: Vec<&str> =
        audit.records.iter().filter(|r| r.index > start_index).map(|r| r.summary.as_str()).take(10).collect();
    println!("{n} topology commits in {:?} after the failover; first entries: {lines:#?}", since.elapsed());
    assert!(n <= 2, "{n} topology commits in 30 s after a failover: {lines:#?}");
    Ok(())
}

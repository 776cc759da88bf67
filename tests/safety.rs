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

/// A leader cut off from its peers kept answering as leader: it served analysis with its
/// stale view (epoch 1 while the majority had promoted at epoch 2) and `status` through it
/// named itself leader at the old term. Now analysis is answered once the leader has
/// confirmed its leadership with a quorum, and a node that has not heard from a quorum for
/// an election timeout names no leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_peers_serves_no_stale_analysis_and_names_no_leader() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { fault_injection: true, ..Default::default() }).await?;
    w.register_sandbox(CLUSTER, Duration::from_millis(1500)).await?;
    let (old, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let majority: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    w.group.isolate(&[old]).await?;
    let (new, term) = w.group.wait_leader(&majority, Duration::from_secs(10)).await?;
    w.sandbox.primary().kill9()?;
    let by_majority = w.group.client_for(&majority, Duration::from_secs(10))?;
    let h = world::wait_finished(&by_majority, CLUSTER, 1, Duration::from_secs(30)).await?;
    assert_eq!((h.failovers[0].outcome.as_str(), h.failovers[0].epoch), ("succeeded", 2), "{:#?}", h.failovers[0]);
    println!("node {old} cut off; node {new} leads (term {term}) and failed over to epoch 2");

    // For 3 s, ask only the cut-off node.
    let by_old = w.group.client_for(&[old], Duration::from_millis(800))?;
    let (mut stale_answers, mut refused, mut said_leader) = (Vec::new(), 0, 0);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        match by_old.analysis(CLUSTER).await {
            Ok(a) if a.epoch < 2 => stale_answers.push(format!("{} epoch {} by node {}", a.code, a.epoch, a.served_by)),
            Ok(_) => {}
            Err(_) => refused += 1,
        }
        let s = w.group.status_of(old).await?;
        if s.leader_id == Some(old) {
            said_leader += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "through the cut-off node: {} stale analyses, {refused} refused, named itself leader {said_leader} times",
        stale_answers.len()
    );
    assert!(stale_answers.is_empty(), "stale analyses served: {stale_answers:?}");
    assert_eq!(said_leader, 0, "the cut-off node still names itself leader");
    let s = w.group.status_of(old).await?;
    assert!(s.leader_id.is_none(), "{s:#?}");
    Ok(())
}

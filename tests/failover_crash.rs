//! Crash mid-failover: the leader running a failover is SIGKILLed right after each
//! step is committed (a failpoint, one run per step). A new leader must finish the
//! failover (or cleanly abort it), and in every run at most one instance is writable
//! and exactly one failover record exists for the epoch.

use primus_client::ClusterSettings;
use primus_integration_tests::world::{World, WorldOptions};
use std::time::{Duration, Instant};

/// A world whose coordinators kill themselves at `failpoint`, with cluster "c"
/// registered and every instance seen by every coordinator.
async fn world_dying_at(failpoint: &str) -> anyhow::Result<World> {
    let w = World::start(WorldOptions {
        fault_injection: true,
        env: vec![("PRIMUS_FAILPOINT".into(), failpoint.into())],
        ..Default::default()
    })
    .await?;
    w.client()?.register_cluster("c", &[w.sandbox.primary().addr()], ClusterSettings::default()).await?;
    w.wait_topology("c", "all coordinators see every instance", Duration::from_secs(15), |t| {
        t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
    })
    .await?;
    Ok(w)
}

async fn crash_at(failpoint: &str) -> anyhow::Result<()> {
    let w = world_dying_at(failpoint).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    w.sandbox.primary().kill9()?;

    // The first leader dies at the failpoint; another one takes over and finishes.
    let client = w.client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let f = loop {
        if let Ok(h) = client.history("c").await {
            if let Some(f) = h.failovers.last() {
                if f.outcome != "in_progress" {
                    break f.clone();
                }
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "failover did not finish after the crash at {failpoint}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let h = client.history("c").await?;
    let mut writable = Vec::new();
    for r in w.sandbox.replicas() {
        if tokio::time::timeout(Duration::from_millis(500), r.read_only()).await.ok().and_then(|r| r.ok())
            == Some(false)
        {
            writable.push(r.addr());
        }
    }
    let new_leader = w.group.wait_leader(&[], Duration::from_secs(5)).await.map(|(l, _)| l).unwrap_or(0);
    println!(
        "crash at {failpoint}: leader {leader} killed, node {new_leader} finished: {} ({} steps), writable: {writable:?}",
        f.outcome,
        f.steps.len()
    );
    assert_eq!(h.failovers.len(), 1, "one failover per epoch, got {h:#?}");
    assert_eq!(f.epoch, 2);
    assert_ne!(new_leader, leader, "the crashed leader is still the leader?");
    assert!(writable.len() <= 1, "two writable instances: {writable:?}");
    if f.outcome == "succeeded" {
        assert_eq!(writable, vec![f.candidate.clone()], "{f:#?}");
        // The promotion point is the candidate's position before its first write (the
        // old primary's last transaction), even when a new leader finished the failover:
        // it was recorded with the promote step, not re-read after the heartbeat step.
        let old_id = w.sandbox.primary().server_id();
        assert!(
            f.promotion_gtid.starts_with(&format!("0-{old_id}-")),
            "promotion point {:?}: {f:#?}",
            f.promotion_gtid
        );
    } else {
        assert_eq!(f.outcome, "aborted", "{f:#?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_failover_start_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_start").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_fence_step_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_step=0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_catch_up_step_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_step=1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_lease_wait_step_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_step=2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_promotion_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_step=3").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_repointing_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_step=4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_heartbeat_step_is_finished_by_the_next_leader() -> anyhow::Result<()> {
    crash_at("failover.after_step=5").await
}

/// The leader dies right after the last step (`complete`). Recording that step and closing
/// the failover were two entries: a leader dying between them left the failover in flight
/// for ever (every resume failed with "plan has no step 7"), blocking every later failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_after_the_complete_step_leaves_no_failover_in_flight() -> anyhow::Result<()> {
    crash_at("failover.after_step=6").await
}

/// An operator's failover whose leader dies right after committing its start (the
/// client's connection breaks mid-request): the client asks again with the same request
/// id, and the next leader answers with that failover once it has finished it, instead of
/// the call failing with a broken connection (which left the operator guessing whether to
/// ask again, and asking again would have started a second failover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_request_broken_by_the_leader_s_death_is_answered_by_the_next_leader_with_the_same_failover(
) -> anyhow::Result<()> {
    let w = world_dying_at("failover.after_start").await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let order: Vec<u64> = std::iter::once(leader).chain((1..=3).filter(|i| *i != leader)).collect();
    let client = w.group.client_for(&order, Duration::from_secs(60))?;
    let to = w.sandbox.replicas()[0].addr();
    let t0 = Instant::now();
    let r = client.failover("c", Some(&to), false).await;
    let took = t0.elapsed();
    let f = r.map_err(|e| anyhow::anyhow!("failover failed after {} ms: {e}", took.as_millis()))?.failover;
    let f = f.ok_or_else(|| anyhow::anyhow!("no failover record"))?;
    let others: Vec<u64> = order[1..].to_vec();
    let new_leader = w.group.wait_leader(&others, Duration::from_secs(10)).await?.0;
    println!(
        "failover request: leader {leader} died after committing its start; node {new_leader} answered in {} ms: {} {} \
         epoch {}",
        took.as_millis(),
        f.id,
        f.outcome,
        f.epoch
    );
    assert_eq!((f.kind.as_str(), f.outcome.as_str(), f.epoch), ("manual", "succeeded", 2), "{f:#?}");
    assert_eq!(f.candidate, to, "{f:#?}");
    let h = w.client()?.history("c").await?;
    assert_eq!(h.failovers.len(), 1, "the request was carried out once: {h:#?}");
    Ok(())
}

//! Crash mid-failover: the leader running a failover is SIGKILLed right after each
//! step is committed (a failpoint, one run per step). A new leader must finish the
//! failover (or cleanly abort it), and in every run at most one instance is writable
//! and exactly one failover record exists for the epoch.

use primus_client::ClusterSettings;
use primus_integration_tests::world::{World, WorldOptions};
use std::time::{Duration, Instant};

async fn crash_at(failpoint: &str) -> anyhow::Result<()> {
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

//! Elections and leader failure on real primusd processes.

use primus_client::Role;
use primus_integration_tests::{register, wait_has_all};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn leader_kill9_then_new_leader_commits_and_old_one_rejoins(n: usize) -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: n, ..Default::default() })?;
    let (leader, term) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    // Exactly one node believes it is leader.
    let mut leaders = 0;
    for id in 1..=n as u64 {
        if g.status_of(id).await?.role == Role::Leader as i32 {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "more than one leader in a {n}-node group");

    let client = g.client(Duration::from_secs(10))?;
    let mut acked = BTreeSet::new();
    for i in 0..10 {
        register(&client, &format!("before-{i}")).await?;
        acked.insert(format!("before-{i}"));
    }

    let killed_at = Instant::now();
    g.kill9(leader)?;
    let others: Vec<u64> = (1..=n as u64).filter(|i| *i != leader).collect();
    let survivors = g.client_for(&others, Duration::from_secs(10))?;
    register(&survivors, "after-kill").await?;
    let elapsed = killed_at.elapsed();
    acked.insert("after-kill".into());
    let (new_leader, new_term) = g.wait_leader(&others, Duration::from_secs(5)).await?;
    println!(
        "{n}-node group: leader {leader} (term {term}) kill -9 -> node {new_leader} (term {new_term}) committed after {} ms",
        elapsed.as_millis()
    );
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    assert!(elapsed < Duration::from_secs(2), "new leader took {elapsed:?} to commit (limit 2 s)");

    // The killed node restarts, rejoins as a follower and catches up.
    g.start_node(leader)?;
    wait_has_all(&g, leader, &acked, Duration::from_secs(20)).await?;
    let s = g.status_of(leader).await?;
    assert_eq!(s.role, Role::Follower as i32, "restarted node is not a follower");
    assert_eq!(s.leader_id, Some(new_leader));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_group_elects_one_leader_and_replaces_a_killed_one() -> anyhow::Result<()> {
    leader_kill9_then_new_leader_commits_and_old_one_rejoins(3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_group_elects_one_leader_and_replaces_a_killed_one() -> anyhow::Result<()> {
    leader_kill9_then_new_leader_commits_and_old_one_rejoins(5).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_restart_recovers_state() -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(10))?;
    let mut acked = BTreeSet::new();
    for i in 0..5 {
        register(&client, &format!("c{i}")).await?;
        acked.insert(format!("c{i}"));
    }
    wait_has_all(&g, 2, &acked, Duration::from_secs(10)).await?;
    let code = g.terminate(2, Duration::from_secs(10))?;
    assert_eq!(code, Some(0), "primusd did not exit 0 on SIGTERM:\n{}", g.node(2).log_tail(20));
    assert!(g.node(2).log_tail(5).contains("stopped cleanly"));
    g.start_node(2)?;
    // Its own data comes back from disk: check before it could have heard from the leader
    // by asking for a stale read as soon as it answers.
    wait_has_all(&g, 2, &acked, Duration::from_secs(10)).await?;
    assert!(g.node(2).log_tail(50).contains("recovered from data_dir"));
    Ok(())
}

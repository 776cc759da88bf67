//! A leader cut off into a minority commits nothing; the majority carries on;
//! after healing, the old leader steps down and every log converges.

use primus_client::Role;
use primus_integration_tests::{local_clusters, register, wait_has_all};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_leader_commits_nothing_and_majority_moves_on() -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 5, fault_injection: true, ..Default::default() })?;
    let (old_leader, old_term) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(10))?;
    let mut acked = BTreeSet::new();
    for i in 0..5 {
        register(&client, &format!("pre-{i}")).await?;
        acked.insert(format!("pre-{i}"));
    }

    // Minority: the leader plus one follower. Majority: the other three.
    let buddy = (1..=5).find(|i| *i != old_leader).unwrap_or(1);
    let minority = [old_leader, buddy];
    let majority: Vec<u64> = (1..=5).filter(|i| !minority.contains(i)).collect();
    g.isolate(&minority).await?;

    // Writes through the minority must fail or time out — never succeed.
    let minority_client = g.client_for(&minority, Duration::from_secs(3))?;
    let mut minority_attempts = Vec::new();
    for i in 0..3 {
        let name = format!("minority-{i}");
        let r = register(&minority_client, &name).await;
        assert!(r.is_err(), "a write through the minority side was acknowledged: {name} at {:?}", r.ok());
        minority_attempts.push(name);
    }

    // The majority elects a new leader and commits.
    let (new_leader, new_term) = g.wait_leader(&majority, Duration::from_secs(10)).await?;
    assert!(majority.contains(&new_leader) && new_term > old_term);
    let majority_client = g.client_for(&majority, Duration::from_secs(10))?;
    for i in 0..5 {
        register(&majority_client, &format!("major-{i}")).await?;
        acked.insert(format!("major-{i}"));
    }

    // Heal: the old leader steps down, all logs converge, nothing committed is lost
    // and nothing proposed only in the minority appears.
    g.heal().await?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(10)).await?;
    for id in 1..=5 {
        wait_has_all(&g, id, &acked, Duration::from_secs(15)).await?;
    }
    let s = g.status_of(old_leader).await?;
    assert_ne!(s.role, Role::Leader as i32, "old leader did not step down");
    assert_eq!(s.leader_id, Some(leader));
    let reference = local_clusters(&g, leader).await?;
    for id in 1..=5 {
        let have = local_clusters(&g, id).await?;
        assert_eq!(have, reference, "node {id} diverges from the leader");
        for m in &minority_attempts {
            assert!(!have.contains(m), "write {m} proposed in the minority was applied on node {id}");
        }
    }
    Ok(())
}

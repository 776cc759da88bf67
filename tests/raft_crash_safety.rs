//! Nothing acknowledged is lost while random nodes (leader included) are kill -9'ed.

use primus_integration_tests::{register, wait_has_all};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_repeated_kill9_of_random_nodes() -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(5))?;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let writer = {
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut failures = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("crash-{i}");
                i += 1;
                match register(&client, &name).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(name);
                    }
                    Err(_) => failures += 1,
                }
            }
            (i, failures)
        })
    };

    let mut rng = rand::thread_rng();
    let mut kills = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..900))).await;
        // Prefer the leader half of the time.
        let victim = if rng.gen_bool(0.5) {
            g.wait_leader(&[], Duration::from_secs(10)).await.map(|(l, _)| l).unwrap_or(1)
        } else {
            rng.gen_range(1..=3)
        };
        g.kill9(victim)?;
        kills.push(victim);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..700))).await;
        g.start_node(victim)?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (attempts, failures) = writer.await?;
    let acked = acked.lock().unwrap().clone();
    println!("kills {kills:?}; {attempts} writes attempted, {} acknowledged, {failures} failed", acked.len());
    assert!(acked.len() > 20, "too few writes acknowledged ({}) to prove anything", acked.len());
    g.wait_leader(&[], Duration::from_secs(10)).await?;
    for id in 1..=3 {
        wait_has_all(&g, id, &acked, Duration::from_secs(20)).await?;
    }
    Ok(())
}

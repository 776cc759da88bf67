//! Nothing acknowledged is lost while random nodes (leader included) are kill -9'ed,
//! and a member whose data_dir was wiped is refused instead of coming back amnesic.

use primus_integration_tests::{register, wait_has_all, wait_members_recorded};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How the wiped member is stopped before its data_dir is removed.
enum Stop {
    Kill9,
    Sigterm,
}

/// A 3-node group commits; member `victim` (the leader or a follower) is stopped, its
/// data_dir wiped, and it is started again with the same config (initial_members
/// included). It must exit with code 2 at once, saying how to rejoin, instead of
/// coming back as a voter that forgot its log and its vote (which could elect a
/// leader lacking committed entries). The others keep committing and lose nothing.
async fn wiped_member_is_refused(opts: GroupOptions, wipe_leader: bool, stop: Stop) -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(opts)?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(5))?;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        register(&client, &name).await?;
        acked.insert(name);
    }
    // The group records every member once it holds log entries.
    wait_members_recorded(&client, &[1, 2, 3], Duration::from_secs(10)).await?;

    let victim = if wipe_leader { leader } else { (1..=3).find(|i| *i != leader).unwrap_or(1) };
    let others: Vec<u64> = (1..=3).filter(|i| *i != victim).collect();
    match stop {
        Stop::Kill9 => g.kill9(victim)?,
        Stop::Sigterm => {
            let code = g.terminate(victim, Duration::from_secs(10))?;
            anyhow::ensure!(code == Some(0), "node {victim} did not stop cleanly: {code:?}");
        }
    }
    std::fs::remove_dir_all(g.node(victim).data_dir())?;
    let survivors = g.client_for(&others, Duration::from_secs(10))?;
    register(&survivors, "while-wiped").await?;
    acked.insert("while-wiped".to_string());

    for attempt in 1..=2 {
        let started = Instant::now();
        g.start_node(victim)?;
        let exit = g.wait_exit(victim, Duration::from_secs(10));
        let took = started.elapsed();
        let log = g.node(victim).log_tail(30);
        let code = exit.map_err(|e| anyhow::anyhow!("{e}\n--- node {victim} log ---\n{log}"))?;
        println!("wiped node {victim} (leader: {wipe_leader}), start {attempt}: exit {code:?} after {took:?}");
        assert_eq!(code, Some(2), "wiped node {victim} exit code\n{log}");
        assert!(took < Duration::from_secs(5), "refusal took {took:?}\n{log}");
        let refusal = log.lines().rev().find(|l| l.starts_with("primusd: ")).unwrap_or_default();
        assert!(
            refusal.contains("new node_id") && refusal.contains("primusctl members add"),
            "the error does not say how to rejoin: {refusal:?}\n{log}"
        );
    }

    // The others keep working and nothing acknowledged is lost.
    for i in 0..10 {
        let name = format!("after-{i}");
        register(&survivors, &name).await?;
        acked.insert(name);
    }
    for id in others {
        wait_has_all(&g, id, &acked, Duration::from_secs(10)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_and_restarted_with_a_wiped_data_dir_is_refused() -> anyhow::Result<()> {
    wiped_member_is_refused(GroupOptions { nodes: 3, ..Default::default() }, true, Stop::Kill9).await
}

/// The same for a follower stopped cleanly, in a group with TLS (mutual) and a token:
/// the peers' answers go through the same security as Raft traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_and_restarted_with_a_wiped_data_dir_is_refused_under_tls_and_token() -> anyhow::Result<()> {
    let opts = GroupOptions {
        nodes: 3,
        tls: true,
        require_client_cert: true,
        token: Some("wiped-data-dir-token".into()),
        ..Default::default()
    };
    wiped_member_is_refused(opts, false, Stop::Sigterm).await
}

//! Adding a node after the log was purged (it catches up from a snapshot) and
//! removing one, while writes keep committing; a founding member started late.

use primus_client::Role;
use primus_integration_tests::{register, wait_has_all, wait_members_recorded};
use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions, RaftTuning};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_member_catches_up_from_snapshot_and_removal_keeps_group_writable() -> anyhow::Result<()> {
    let raft = RaftTuning { snapshot_every_entries: 50, keep_logs_after_snapshot: 0, ..Default::default() };
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, raft, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(10))?;
    let mut acked = BTreeSet::new();
    for i in 0..120 {
        register(&client, &format!("seed-{i}")).await?;
        acked.insert(format!("seed-{i}"));
    }
    // The log behind the snapshot is purged on the leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = client.status().await?;
        if s.snapshot_index.unwrap_or(0) >= 50 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no snapshot built after 120 entries: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Background writer: must keep committing through both membership changes.
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(BTreeSet::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, during, failures) = (stop.clone(), during.clone(), failures.clone());
        let c = g.client(Duration::from_secs(10))?;
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("during-{i}");
                i += 1;
                match register(&c, &name).await {
                    Ok(_) => {
                        during.lock().unwrap().insert(name);
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Node 4 starts empty, waits, and is added with primusctl.
    // A node that is not running, or is not who the operator says, is refused:
    // it would otherwise count toward quorum while unable to vote.
    let dead = format!("127.0.0.1:{}", primus_testkit::ports::free_port()?);
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints(), "members", "add", "5", &dead])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no primusd answers"), "dead node accepted: {err}");
    assert_eq!(client.status().await?.members.len(), 3);

    let addr4 = g.spawn_joining_node(4)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints_except(&[4]), "members", "add", "9", &addr4])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is node 4, not node 9"), "wrong id accepted: {err}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s4 = g.status_of(4).await?;
    assert_eq!(s4.role, Role::Uninitialized as i32, "joining node should wait to be added, is {s4:?}");
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints_except(&[4]), "--timeout", "60s", "members", "add", "4", &addr4])
        .args(["--datacenter", "dc4"])
        .output()?;
    assert!(out.status.success(), "members add failed: {}", String::from_utf8_lossy(&out.stderr));

    wait_has_all(&g, 4, &acked, Duration::from_secs(20)).await?;
    let s4 = g.status_of(4).await?;
    assert_eq!(s4.role, Role::Follower as i32);
    assert!(s4.snapshot_index.unwrap_or(0) >= 50, "node 4 did not receive a snapshot: {s4:?}");
    let status = g.client(Duration::from_secs(5))?.status().await?;
    assert_eq!(status.members.len(), 4);
    assert!(status.members.iter().any(|m| m.id == 4 && m.role == Role::Follower as i32 && m.datacenter == "dc4"));

    // Remove a follower that is not the leader.
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(5)).await?;
    let victim = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints(), "members", "remove", &victim.to_string()])
        .output()?;
    assert!(out.status.success(), "members remove failed: {}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;

    let status = g.client_for(&[leader], Duration::from_secs(5))?.status().await?;
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert!(!status.members.iter().any(|m| m.id == victim));
    let during = during.lock().unwrap().clone();
    println!(
        "writes during membership changes: {} committed, {} failed",
        during.len(),
        failures.load(Ordering::Relaxed)
    );
    assert!(during.len() >= 10, "writes did not keep committing during membership changes");
    let all: BTreeSet<String> = acked.union(&during).cloned().collect();
    for id in [leader, 4] {
        wait_has_all(&g, id, &all, Duration::from_secs(10)).await?;
    }
    // The group still commits without the removed node.
    g.kill9(victim)?;
    register(&g.client_for(&[leader, 4], Duration::from_secs(5))?, "after-remove").await?;
    Ok(())
}

/// `primusctl members transfer-leader ID` hands leadership to ID at once (one vote round),
/// and a leader stopped with SIGTERM hands it over before it exits, so that the group is
/// without a leader for far less than an election timeout. WAN timings as in
/// deploy/primusd-3dc.example (elections after 3-4 s without a leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_handed_over_on_request_and_before_a_sigterm_stop() -> anyhow::Result<()> {
    let raft = RaftTuning {
        heartbeat_ms: 100,
        election_timeout_min_ms: 1000,
        election_timeout_max_ms: 2000,
        ..Default::default()
    };
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, raft, ..Default::default() })?;
    let (leader, term) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    // A leader grants a transfer vote only once its own leader lease (election timeout
    // max) has passed since it was elected.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let to = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let asked = Instant::now();
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints(), "-o", "json", "members", "transfer-leader", &to.to_string()])
        .output()?;
    let took = asked.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("transfer-leader {to}: {took:?}, {stdout} {}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        for i in 1..=3 {
            println!("--- node {i} ---\n{}", g.node(i).log_tail(40));
        }
        anyhow::bail!("primusctl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(v["leader_id"].as_u64(), Some(to), "{v}");
    assert!(v["term"].as_u64().unwrap_or(0) > term, "{v}");
    // One vote round, or the rest of the leader's lease when it was elected again just
    // now (a start-up election can be repeated): within 2.5 s either way.
    assert!(took < Duration::from_millis(2500), "the transfer took {took:?}");
    let (l, _) = g.wait_leader(&[], Duration::from_secs(5)).await?;
    assert_eq!(l, to);

    // SIGTERM the leader: the others have a new leader long before an election timeout.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != to).collect();
    let watcher = g.client_for(&others, Duration::from_secs(1))?;
    g.sigterm(to)?;
    let stopped = Instant::now();
    let new_leader = loop {
        if let Ok(s) = watcher.node_status().await {
            if let Some(l) = s.leader_id.filter(|l| *l != to && s.term > 0) {
                if others.contains(&l) {
                    break l;
                }
            }
        }
        anyhow::ensure!(stopped.elapsed() < Duration::from_secs(10), "no new leader 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let leaderless = stopped.elapsed();
    let code = g.wait_exit(to, Duration::from_secs(10))?;
    println!("SIGTERM of leader {to}: node {new_leader} leads {} ms later; exit code {code:?}", leaderless.as_millis());
    assert_eq!(code, Some(0), "primusd did not stop cleanly");
    assert!(g.node(to).log_tail(200).contains("handed leadership over before stopping"), "{}", g.node(to).log_tail(30));
    // Without the hand-over the others wait 3-4 s (leader lease + election timeout).
    assert!(leaderless < Duration::from_millis(1000), "{leaderless:?} without a leader after a SIGTERM stop");
    Ok(())
}

/// Nodes 1 and 2 of a 3-node config form the group and commit while node 3 has not
/// been started. Node 3 then starts with its empty data_dir (as a wiped one would): the
/// group has never seen it hold entries, so it joins without initialising and
/// catches up. Once the group has recorded it, wiping it is refused like any member's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founding_member_started_late_joins_and_catches_up() -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, not_started: vec![3], ..Default::default() })?;
    g.wait_leader(&[1, 2], Duration::from_secs(20)).await?;
    let client = g.client_for(&[1, 2], Duration::from_secs(5))?;
    let mut acked = BTreeSet::new();
    for i in 0..30 {
        let name = format!("early-{i}");
        register(&client, &name).await?;
        acked.insert(name);
    }
    // Node 3 has never said which release it runs: the group stays at feature level 1
    // and writes no command of a later level (a founding member started late with an
    // older release could not decode it), the lost-data_dir records included.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let audit = client.audit(10_000, primus_client::ReadConsistency::Linearizable).await?;
    let later: Vec<String> = audit_summaries(&audit)
        .into_iter()
        .filter(|s| s.starts_with("group feature level") || s.contains("holds Raft log entries"))
        .collect();
    assert!(later.is_empty(), "level-2 commands written before node 3 ever answered: {later:?}");
    assert_eq!(g.status_of(1).await?.group_feature_level.max(1), 1);

    let started = Instant::now();
    g.start_node(3)?;
    wait_has_all(&g, 3, &acked, Duration::from_secs(20)).await?;
    println!("late founding member caught up in {:?}", started.elapsed());
    anyhow::ensure!(g.node_mut(3).is_running(), "node 3 exited\n{}", g.node(3).log_tail(30));
    let log3 = g.node(3).log_tail(200);
    assert!(!log3.contains("group initialised"), "the late founding member initialised a group\n{log3}");
    assert_eq!(g.status_of(3).await?.role, Role::Follower as i32);
    let all = g.client(Duration::from_secs(5))?;
    register(&all, "with-three").await?;
    acked.insert("with-three".into());
    wait_has_all(&g, 3, &acked, Duration::from_secs(10)).await?;

    // Now the group has seen node 3 with entries: a wiped node 3 is refused.
    wait_members_recorded(&all, &[1, 2, 3], Duration::from_secs(10)).await?;
    g.kill9(3)?;
    std::fs::remove_dir_all(g.node(3).data_dir())?;
    g.start_node(3)?;
    let code = g.wait_exit(3, Duration::from_secs(10));
    let code = code.map_err(|e| anyhow::anyhow!("{e}\n{}", g.node(3).log_tail(30)))?;
    assert_eq!(code, Some(2), "{}", g.node(3).log_tail(30));
    for id in [1, 2] {
        wait_has_all(&g, id, &acked, Duration::from_secs(10)).await?;
    }
    Ok(())
}

fn audit_summaries(a: &primus_client::AuditResponse) -> Vec<String> {
    a.records.iter().map(|r| r.summary.clone()).collect()
}

/// A command kind added after a release (here `MemberSeen`, and the feature-level
/// record itself) is not written while a member says its release does not know it (a
/// node started with `PRIMUS_FEATURE_LEVEL=1` stands in for primusd 3315362; the real
/// old binary is `scripts/upgrade-test.sh`'s). Once that member runs the new release the
/// leader raises the group's level by itself, the new commands follow, and a node of
/// an older release is then refused by `members add`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_commands_wait_until_every_member_runs_a_release_that_knows_them() -> anyhow::Result<()> {
    use primus_client::ReadConsistency;
    let older = vec![("PRIMUS_FEATURE_LEVEL".to_string(), "1".to_string())];
    let mut g = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        fault_injection: true,
        not_started: vec![3],
        ..Default::default()
    })?;
    g.node_mut(3).env = older.clone();
    g.start_node(3)?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(10))?;
    // Commands every release knows go through as before.
    register(&client, "mixed").await?;
    // Three rounds of the leader's question (once a second) and dozens of recorder ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summaries = audit_summaries(&client.audit(10_000, ReadConsistency::Linearizable).await?);
    assert!(
        !summaries.iter().any(|s| s.starts_with("group feature level") || s.contains("holds Raft log entries")),
        "a level-2 command was written while node 3 knows level 1 only: {summaries:#?}"
    );
    for id in 1..=3 {
        let s = match g.status_of(id).await {
            Ok(s) => s,
            Err(e) => anyhow::bail!("node {id}: {e}\n{}", g.node(id).log_tail(30)),
        };
        assert_eq!(s.group_feature_level.max(1), 1, "node {id}: {s:?}");
        let knows = if id == 3 { 1 } else { primus_types::FEATURE_LEVEL };
        assert_eq!(s.feature_level, knows, "node {id}: {s:?}");
    }
    let out = std::process::Command::new(bin("primusctl")?).args(["--endpoints", &g.endpoints(), "status"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("feature level: group 1"), "{text}");
    // A leader of the new release says why it does not raise the level (node 3, the
    // stand-in for the older release, has nothing to raise: it is handed leadership off).
    let mut leader = g.wait_leader(&[], Duration::from_secs(5)).await?.0;
    if leader == 3 {
        let out = std::process::Command::new(bin("primusctl")?)
            .args(["--endpoints", &g.endpoints(), "members", "transfer-leader", "1"])
            .output()?;
        assert!(out.status.success(), "transfer-leader: {}", String::from_utf8_lossy(&out.stderr));
        leader = g.wait_leader(&[1, 2], Duration::from_secs(5)).await?.0;
        anyhow::ensure!(leader != 3, "leadership stayed on node 3");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let log = std::fs::read_to_string(&g.node(leader).log_path)?;
    assert!(
        log.contains("group feature level stays at 1") && log.contains("node 3 (level 1)"),
        "the leader does not say why the level stays:\n{}",
        g.node(leader).log_tail(30)
    );

    // Node 3 "upgraded": restarted without the stand-in.
    g.terminate(3, Duration::from_secs(10))?;
    g.node_mut(3).env.clear();
    g.start_node(3)?;
    let upgraded = Instant::now();
    'raised: loop {
        let mut levels = Vec::new();
        for id in 1..=3 {
            levels.push(g.status_of(id).await.map(|s| s.group_feature_level).unwrap_or(0));
        }
        if levels.iter().all(|l| *l == primus_types::FEATURE_LEVEL) {
            break 'raised;
        }
        anyhow::ensure!(
            upgraded.elapsed() < Duration::from_secs(15),
            "group feature level not raised on every node 15 s after the last member was upgraded: {levels:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("group feature level raised on every node {} ms after the restart", upgraded.elapsed().as_millis());
    wait_members_recorded(&client, &[1, 2, 3], Duration::from_secs(10)).await?;
    let summaries = audit_summaries(&client.audit(10_000, ReadConsistency::Linearizable).await?);
    let raised: Vec<&String> = summaries.iter().filter(|s| s.starts_with("group feature level")).collect();
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert!(raised[0].starts_with(&format!("group feature level {}", primus_types::FEATURE_LEVEL)), "{raised:?}");

    // From now on a node of an older release could not decode the log: refused.
    let addr4 = g.spawn_joining_node_with_env(4, older)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints_except(&[4]), "members", "add", "4", &addr4])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!("older than the group's feature level {}", primus_types::FEATURE_LEVEL)),
        "a node of an older release was let into the group: {err}"
    );
    assert_eq!(client.status().await?.members.len(), 3);
    Ok(())
}

//! Automatic and operator failover on real MariaDB replication with real primusd
//! coordinators: speed, safety (only the quorum leader promotes), no promotion when
//! only the coordinators lose the primary, and the old primary kept read-only.

use primus_client::{Client, ClusterSettings, HistoryResponse};
use primus_integration_tests::world::{inst, print_steps, wait_finished, World, WorldOptions};
use primus_testkit::mariadb::Instance;
use primus_testkit::proxy::CutMode;
use std::time::{Duration, Instant};

async fn history(c: &Client) -> anyhow::Result<HistoryResponse> {
    Ok(c.history("c").await?)
}

async fn read_only(i: &Instance) -> Option<bool> {
    tokio::time::timeout(Duration::from_millis(300), i.read_only()).await.ok().and_then(|r| r.ok())
}

/// Wait until one of `candidates` is writable; returns it and when.
async fn wait_writable(candidates: &[Instance], timeout: Duration) -> anyhow::Result<(&Instance, Instant)> {
    let deadline = Instant::now() + timeout;
    loop {
        for i in candidates {
            if read_only(i).await == Some(false) {
                return Ok((i, Instant::now()));
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no replica became writable within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_primary_promotes_exactly_one_replica_fast_and_loses_no_row() -> anyhow::Result<()> {
    // Default probe interval (1 s): speed comes from the watch connection, not polling.
    let w =
        World::start(WorldOptions { probe_interval_ms: 1000, query_timeout_ms: 1000, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    w.sandbox.insert_rows(200).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let rows_before = w.sandbox.primary().test_row_count().await?;
    let old = w.sandbox.primary().addr();

    let killed = Instant::now();
    w.sandbox.primary().kill9()?;
    let (promoted, at) = wait_writable(w.sandbox.replicas(), Duration::from_secs(10)).await?;
    let to_writable = at - killed;

    let client = w.client()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    let f = &h.failovers[0];
    println!("kill -9 primary -> replica {} writable after {} ms", promoted.addr(), to_writable.as_millis());
    print_steps(f);
    assert_eq!(h.failovers.len(), 1, "{h:#?}");
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.old_primary, old);
    assert_eq!(f.candidate, promoted.addr());
    assert_eq!(f.epoch, 2);
    assert!(f.analysis_code.starts_with("DeadPrimary"), "{f:#?}");
    assert!(f.steps.len() >= 5, "every step recorded: {f:#?}");

    // Exactly one writable replica; the other replicates from it; no row lost.
    let other = w.sandbox.replicas().iter().find(|r| r.addr() != promoted.addr()).expect("two replicas");
    assert_eq!(read_only(other).await, Some(true));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = other.slave_status().await?;
        if st.as_ref().is_some_and(|s| s.master_port == promoted.port() && s.is_running()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "other replica not replicating from the new primary: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(promoted.test_row_count().await?, rows_before, "rows lost on the promoted replica");
    promoted.insert_test_rows(5).await?;
    let pos = promoted.gtid_binlog_pos().await?;
    other.wait_gtid(&pos, Duration::from_secs(10)).await?;
    let t = w.topology("c").await?;
    assert_eq!(t.primary, promoted.addr());
    assert_eq!(t.epoch, 2);
    assert_eq!(inst(&t, &old).role, "demoted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_unreachable_from_every_coordinator_while_replicas_replicate_is_not_failed_over() -> anyhow::Result<()>
{
    let w = World::start(WorldOptions { proxied: true, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let links = w.links.as_ref().expect("proxied");
    for coordinator in 0..3 {
        links.cut(coordinator, 0, CutMode::Silent);
    }
    let client = w.client()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen_code = String::new();
    while Instant::now() < deadline {
        if let Ok(a) = client.analysis("c").await {
            if a.code == "UnreachablePrimary" {
                seen_code = a.code;
            }
        }
        // Keep writing on the primary: the replicas keep receiving it.
        w.sandbox.primary().insert_test_rows(1).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen_code, "UnreachablePrimary", "the analysis never said UnreachablePrimary");
    assert!(history(&client).await?.failovers.is_empty(), "failed over although the replicas replicate");
    assert_eq!(read_only(&w.sandbox.replicas()[0]).await, Some(true));
    assert_eq!(read_only(&w.sandbox.replicas()[1]).await, Some(true));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_unreachable_from_one_coordinator_only_is_not_failed_over() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { proxied: true, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    w.links.as_ref().expect("proxied").cut(2, 0, CutMode::Silent);
    let client = w.client()?;
    let mut codes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(a) = client.analysis("c").await {
            codes.insert(a.code);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(codes.contains("UnreachablePrimaryFromSomeCoordinators"), "codes seen: {codes:?}");
    assert!(history(&client).await?.failovers.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_leader_cannot_promote_and_the_majority_fails_over() -> anyhow::Result<()> {
    let mut w = World::start(WorldOptions { fault_injection: true, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let (old_leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    // The leader loses its peers, and the primary dies.
    w.group.isolate(&[old_leader]).await?;
    w.sandbox.primary().kill9()?;
    let majority: Vec<u64> = (1..=3).filter(|i| *i != old_leader).collect();
    let (new_leader, _) = w.group.wait_leader(&majority, Duration::from_secs(10)).await?;
    let client = w.group.client_for(&majority, Duration::from_secs(10))?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    assert_eq!(h.failovers.len(), 1, "{h:#?}");
    assert_eq!(h.failovers[0].outcome, "succeeded");
    // The isolated old leader recorded nothing of its own.
    w.group.heal().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = history(&w.client()?).await?;
    assert_eq!(h.failovers.len(), 1, "the minority leader started a failover of its own: {h:#?}");
    let writable: Vec<String> = {
        let mut v = Vec::new();
        for r in w.sandbox.replicas() {
            if read_only(r).await == Some(false) {
                v.push(r.addr());
            }
        }
        v
    };
    assert_eq!(writable.len(), 1, "writable replicas: {writable:?}");
    println!("old leader {old_leader} isolated; new leader {new_leader} failed over to {}", writable[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_old_primary_stays_read_only_and_demoted() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let old = w.sandbox.primary().clone();
    old.kill9()?;
    let client = w.client()?;
    wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    old.restart().await?;
    // Whatever its config says, primus fences it again as soon as it sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if read_only(&old).await == Some(true) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "restarted old primary is still writable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = w.topology("c").await?;
    assert_eq!(inst(&t, &old.addr()).role, "demoted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_failover_off_means_no_failover_and_manual_failover_works() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { extra_config: "[failover]\nautomatic = false\n".into(), ..Default::default() })
        .await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    w.sandbox.primary().kill9()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let client = w.client()?;
    assert!(history(&client).await?.failovers.is_empty(), "failed over with automatic = false");
    let a = client.analysis("c").await?;
    assert!(a.code.starts_with("DeadPrimary"), "{a:?}");
    let to = w.sandbox.replicas()[1].addr();
    let r = client.failover("c", Some(&to), false).await?;
    let f = r.failover.expect("record");
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.kind, "manual");
    assert_eq!(f.candidate, to);
    assert_eq!(read_only(&w.sandbox.replicas()[1]).await, Some(false));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_is_failed_over_by_timeouts_and_replica_silence() -> anyhow::Result<()> {
    let w =
        World::start(WorldOptions { probe_interval_ms: 1000, query_timeout_ms: 1000, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let stopped = Instant::now();
    let stopped_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    w.sandbox.primary().sigstop()?;
    let r = wait_writable(w.sandbox.replicas(), Duration::from_secs(15)).await;
    w.sandbox.primary().sigcont()?;
    let (promoted, at) = r?;
    println!("SIGSTOP primary -> replica {} writable after {} ms", promoted.addr(), (at - stopped).as_millis());
    let h = wait_finished(&w.client()?, "c", 1, Duration::from_secs(20)).await?;
    let f = &h.failovers[0];
    println!(
        "  detected and confirmed (StartFailover committed) {} ms after SIGSTOP",
        f.started_at_ms.saturating_sub(stopped_ms)
    );
    for e in &f.evidence {
        println!("  evidence: {e}");
    }
    print_steps(f);
    assert_eq!(h.failovers.len(), 1);
    assert_eq!(f.outcome, "succeeded");
    // The old primary woke up: it must be fenced again (demoted and read-only).
    let old = w.sandbox.primary();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_only(old).await != Some(true) {
        anyhow::ensure!(Instant::now() < deadline, "resumed old primary stays writable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_continuous_writes_loses_no_acknowledged_row() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    // An application user, as applications have: no SUPER / READ ONLY ADMIN, so
    // read_only really stops it (MariaDB 10.11 lets privileged users write anyway).
    let primary = w.sandbox.primary();
    primary.insert_test_rows(1).await?;
    primary.exec("CREATE USER 'app'@'%' IDENTIFIED BY 'app-pass'").await?;
    primary.exec("GRANT SELECT, INSERT ON primus_test.* TO 'app'@'%'").await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let all: Vec<Instance> = w.sandbox.instances().to_vec();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let all = all.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = 0u64;
            let mut first_fail: Option<Instant> = None;
            let mut window = Duration::ZERO;
            let mut target = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(all[target].port())
                    .user(Some("app"))
                    .pass(Some("app-pass"))
                    .prefer_socket(false);
                let attempt = async {
                    use mysql_async::prelude::Queryable;
                    let mut c = mysql_async::Conn::new(opts).await?;
                    c.query_drop("INSERT INTO primus_test.t (v) VALUES ('w')").await?;
                    c.disconnect().await
                };
                match tokio::time::timeout(Duration::from_millis(500), attempt).await {
                    Ok(Ok(())) => {
                        acked += 1;
                        if let Some(t) = first_fail.take() {
                            window = window.max(t.elapsed());
                        }
                    }
                    _ => {
                        first_fail.get_or_insert_with(Instant::now);
                        for (k, inst) in all.iter().enumerate() {
                            if read_only(inst).await == Some(false) {
                                target = k;
                            }
                        }
                    }
                }
            }
            (acked, window, target)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to = w.sandbox.replicas()[0].addr();
    let r = w.client()?.failover("c", Some(&to), true).await?;
    let f = r.failover.expect("record");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, window, target) = writer.await?;
    println!(
        "switchover {}: {} steps, write-unavailability window {} ms, {acked} rows acknowledged",
        f.outcome,
        f.steps.len(),
        window.as_millis()
    );
    print_steps(&f);
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.kind, "switchover");
    let new_primary = &all[target];
    assert_eq!(new_primary.addr(), to, "writer ended on {}", new_primary.addr());
    assert!(window > Duration::ZERO, "writes never failed: the old primary was not fenced");
    // Every acknowledged row is on the new primary (plus the one seed row), and the
    // old primary follows it.
    let rows = new_primary.test_row_count().await?;
    assert!(rows > acked, "rows lost: {rows} on the new primary, {acked} acknowledged");
    let old = w.sandbox.primary();
    assert_eq!(read_only(old).await, Some(true));
    let pos = new_primary.gtid_binlog_pos().await?;
    old.wait_gtid(&pos, Duration::from_secs(10)).await?;
    let st = old.slave_status().await?.expect("old primary replicates");
    assert!(st.is_running() && st.last_sql_error.is_empty(), "old primary's replication: {st:?}");
    assert_eq!(st.master_port, new_primary.port());
    // In the agreed topology too: a replica of the new primary, not a demoted server.
    let t = w.topology("c").await?;
    let o = inst(&t, &old.addr());
    assert_eq!((o.role.as_str(), o.source.as_deref()), ("replica", Some(new_primary.addr().as_str())), "{t:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_failover_blocks_the_next_until_acknowledged_and_maintenance_blocks_too() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let client = w.client()?;
    // First failover: automatic.
    w.sandbox.primary().kill9()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    let new_primary = h.failovers[0].candidate.clone();
    let promoted = w.sandbox.replicas().iter().find(|r| r.addr() == new_primary).expect("promoted").clone();
    // The remaining replica follows it; now kill the new primary: anti-flap must block.
    tokio::time::sleep(Duration::from_secs(2)).await;
    promoted.kill9()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(client.history("c").await?.failovers.len(), 1, "anti-flap did not block a second failover");
    let a = client.analysis("c").await?;
    assert!(a.code.starts_with("DeadPrimary") || a.code == "DeadPrimaryAndReplicas", "{a:?}");
    // Put the cluster in maintenance, ack: still blocked by maintenance.
    client.maintenance("c", None, true, "test", Duration::from_secs(600)).await?;
    client.ack("c", None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(client.history("c").await?.failovers.len(), 1, "failed over during maintenance");
    // End maintenance: the acknowledged cluster may fail over again.
    client.maintenance("c", None, false, "", Duration::ZERO).await?;
    let h = wait_finished(&client, "c", 2, Duration::from_secs(20)).await?;
    assert_eq!(h.failovers.len(), 2, "{h:#?}");
    assert!(!h.failovers[0].acked_by.is_empty(), "first failover not marked acknowledged");
    assert_eq!(h.failovers[1].outcome, "succeeded", "{:#?}", h.failovers[1]);
    assert_eq!(h.failovers[1].epoch, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pre_failover_hook_vetoes_and_post_failover_hook_gets_placeholders() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let veto = dir.path().join("veto");
    let post = dir.path().join("post");
    std::fs::write(&veto, "")?;
    let hooks = format!(
        "[hooks]\npre_failover = [\"test ! -e {}\"]\n\
         post_failover = [\"echo {{failureType}} {{failedHost}}:{{failedPort}} {{successorHost}}:{{successorPort}} $PRIMUS_EPOCH {{isSuccessful}} >> {}\"]\n",
        veto.display(),
        post.display()
    );
    let w = World::start(WorldOptions { extra_config: hooks, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let old = w.sandbox.primary().addr();
    w.sandbox.primary().kill9()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let client = w.client()?;
    assert!(history(&client).await?.failovers.is_empty(), "failed over despite the pre_failover veto");
    std::fs::remove_file(&veto)?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    let f = &h.failovers[0];
    assert_eq!(f.outcome, "succeeded");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Ok(s) = std::fs::read_to_string(&post) {
            if !s.is_empty() {
                break s;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "post_failover hook did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let want = format!("{} {} {} 2 true", f.analysis_code, old, f.candidate);
    assert_eq!(line.trim(), want, "hook line");
    assert_eq!(line.lines().count(), 1, "post_failover ran more than once: {line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_repoints_a_clean_old_primary_and_refuses_one_with_errant_transactions() -> anyhow::Result<()> {
    let w = World::start(WorldOptions {
        topology: primus_testkit::mariadb::Topology::PrimaryWithReplicas(3),
        ..Default::default()
    })
    .await?;
    w.client()?.register_cluster("c", &[w.sandbox.primary().addr()], ClusterSettings::default()).await?;
    w.wait_topology("c", "all seen", Duration::from_secs(15), |t| {
        t.instances.len() == 4 && t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = w.client()?;
    let old = w.sandbox.primary().clone();
    old.kill9()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    let new_primary =
        w.sandbox.instances().iter().find(|i| i.addr() == h.failovers[0].candidate).expect("promoted").clone();
    old.restart().await?;
    w.wait_topology("c", "old primary reachable and demoted", Duration::from_secs(15), |t| {
        let i = inst(t, &old.addr());
        i.reachable && i.role == "demoted" && i.read_only == Some(true)
    })
    .await?;
    // Clean: it rejoins and replicates from the new primary.
    let r = client.rejoin("c", &old.addr()).await?;
    println!("rejoin: {}", r.message);
    new_primary.insert_test_rows(3).await?;
    let pos = new_primary.gtid_binlog_pos().await?;
    old.wait_gtid(&pos, Duration::from_secs(10)).await?;
    let st = old.slave_status().await?.expect("replicating");
    assert!(st.is_running() && st.last_sql_error.is_empty(), "{st:?}");
    w.wait_topology("c", "old primary is a replica of the new one", Duration::from_secs(15), |t| {
        let i = inst(t, &old.addr());
        i.role == "replica" && i.source.as_deref() == Some(new_primary.addr().as_str())
    })
    .await?;

    // Errant: fail over again (ack first), then write on the demoted instance
    // (root bypasses read_only) and try to rejoin it.
    client.ack("c", None).await?;
    let second_old = new_primary.clone();
    second_old.kill9()?;
    let h = wait_finished(&client, "c", 2, Duration::from_secs(20)).await?;
    assert_eq!(h.failovers[1].outcome, "succeeded", "{:#?}", h.failovers[1]);
    second_old.restart().await?;
    w.wait_topology("c", "second old primary demoted", Duration::from_secs(15), |t| {
        let i = inst(t, &second_old.addr());
        i.reachable && i.role == "demoted"
    })
    .await?;
    second_old.exec("CREATE DATABASE errant_write").await?;
    let e = client.rejoin("c", &second_old.addr()).await.expect_err("rejoin with errant transactions must be refused");
    println!("refused: {e}");
    assert!(e.to_string().contains("does not have") && e.to_string().contains("rebuild"), "{e}");
    assert!(second_old.slave_status().await?.is_none_or(|s| !s.is_running()), "errant instance was repointed anyway");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_slow_primary_is_not_failed_over() -> anyhow::Result<()> {
    let w =
        World::start(WorldOptions { probe_interval_ms: 1000, query_timeout_ms: 1000, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    // Saturate the primary's CPU (this machine has 2 cores) with 6 busy sessions for
    // 8 s while writes keep flowing: probes get slower, replicas keep replicating.
    let primary = w.sandbox.primary().clone();
    let mut load = Vec::new();
    for _ in 0..6 {
        let p = primary.clone();
        load.push(tokio::spawn(async move {
            let _ = p.exec_timeout("SELECT BENCHMARK(400000000, MD5('primus'))", Duration::from_secs(20)).await;
        }));
    }
    let client = w.client()?;
    let mut codes = std::collections::BTreeSet::new();
    let mut max_latency_us = 0u64;
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let _ = primary.insert_test_rows(1).await;
        if let Ok(a) = client.analysis("c").await {
            codes.insert(a.code);
        }
        if let Ok(t) = w.topology("c").await {
            if let Some(l) = inst(&t, &primary.addr()).probe_latency_us {
                max_latency_us = max_latency_us.max(l);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for l in load {
        l.abort();
    }
    println!("saturated primary: analysis codes seen {codes:?}, max probe latency {} ms", max_latency_us / 1000);
    assert!(client.history("c").await?.failovers.is_empty(), "a slow primary was failed over");
    assert!(!codes.iter().any(|c| c.starts_with("DeadPrimary")), "codes: {codes:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_safe_candidate_promotes_nothing_and_history_says_why() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let client = w.client()?;
    for r in w.sandbox.replicas() {
        client.set_promotion_rule("c", &r.addr(), "must_not").await?;
    }
    w.sandbox.primary().kill9()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = history(&client).await?;
        if !h.refusals.is_empty() {
            break h;
        }
        anyhow::ensure!(Instant::now() < deadline, "no refusal recorded: {h:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("refusal: {}", h.refusals[0].reason);
    assert!(h.failovers.is_empty(), "promoted a must_not replica: {h:#?}");
    assert!(h.refusals[0].reason.contains("must_not"), "{:?}", h.refusals[0]);
    assert!(h.refusals[0].analysis_code.starts_with("DeadPrimary"));
    for r in w.sandbox.replicas() {
        assert_eq!(read_only(r).await, Some(true));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_intermediate_primary_has_its_replicas_repointed_to_its_source() -> anyhow::Result<()> {
    // primary -> intermediate -> two leaves.
    let w = World::start(WorldOptions { topology: primus_testkit::mariadb::Topology::Chain(2), ..Default::default() })
        .await?;
    let primary = w.sandbox.instance(0);
    let intermediate = w.sandbox.instance(1);
    let leaves = [w.sandbox.instance(2), w.sandbox.instance(3)];
    w.client()?.register_cluster("c", &[primary.addr()], ClusterSettings::default()).await?;
    w.wait_topology("c", "all coordinators see the chain", Duration::from_secs(15), |t| {
        t.instances.len() == 4
            && t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
            && inst(t, &intermediate.addr()).role == "intermediate"
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let killed = Instant::now();
    intermediate.kill9()?;
    let client = w.client()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    let f = &h.failovers[0];
    println!("dead intermediate repaired in {} ms after kill -9:", killed.elapsed().as_millis());
    for s in &f.steps {
        println!("  step {}: {} -> {}", s.index, s.description, s.outcome);
    }
    assert_eq!(f.kind, "intermediate_repair", "{f:#?}");
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.analysis_code, "DeadIntermediatePrimary");
    assert_eq!((f.old_primary.as_str(), f.candidate.as_str()), (intermediate.addr().as_str(), primary.addr().as_str()));
    assert_eq!(f.epoch, 1, "a repair consumes no epoch");

    // Both leaves replicate from the primary and receive new writes.
    for leaf in leaves {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = leaf.slave_status().await?;
            if st.as_ref().is_some_and(|s| s.master_port == primary.port() && s.is_running()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{} not replicating from the primary: {st:?}", leaf.addr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    primary.insert_test_rows(5).await?;
    let pos = primary.gtid_binlog_pos().await?;
    for leaf in leaves {
        leaf.wait_gtid(&pos, Duration::from_secs(10)).await?;
        assert_eq!(read_only(leaf).await, Some(true), "{} must stay read-only", leaf.addr());
    }
    // The primary did not change, clients were not told it would.
    let p = client.primary("c").await?.state.unwrap_or_default();
    assert_eq!((p.primary.as_str(), p.epoch), (primary.addr().as_str(), 1));
    assert!(p.failover.is_none());
    let p_addr = primary.addr();
    let leaf_addrs: Vec<String> = leaves.iter().map(|l| l.addr()).collect();
    w.wait_topology("c", "the leaves shown under the primary", Duration::from_secs(5), |t| {
        leaf_addrs.iter().all(|l| inst(t, l).source.as_deref() == Some(p_addr.as_str()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_manual_failover_gives_the_fenced_primary_its_writes_back() -> anyhow::Result<()> {
    let w = World::start(WorldOptions {
        extra_config: "[failover]\ncatch_up_timeout_ms = 500\n".into(),
        ..Default::default()
    })
    .await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let primary = w.sandbox.primary();
    let candidate = &w.sandbox.replicas()[0];
    // The candidate receives but cannot apply: the catch-up step must fail after the fence.
    candidate.stop_replication_sql().await?;
    primary.insert_test_rows(3).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Until the leader's probes have seen the candidate receive those rows it refuses
    // ("wait for … to catch up"): ask again (on a loaded machine a probe round can lag).
    let asked = Instant::now();
    let r = loop {
        let r = w.client()?.failover("c", Some(&candidate.addr()), false).await;
        match &r {
            Err(e) if e.to_string().contains("catch up") && asked.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            _ => break r,
        }
    };
    let h = wait_finished(&w.client()?, "c", 1, Duration::from_secs(30)).await?;
    let f = &h.failovers[0];
    println!("manual failover: {r:?}\n  outcome {} ({})", f.outcome, f.outcome_reason);
    for s in &f.steps {
        println!("  step {}: {} -> {}", s.index, s.description, s.outcome);
    }
    assert_eq!(f.outcome, "aborted", "{f:#?}");
    assert!(f.steps.first().is_some_and(|s| s.outcome.starts_with("read_only set")), "the primary was fenced: {f:#?}");
    // The abort is recorded first; then the leader's upkeep makes the read-only primary
    // writable again, write-ahead (an unfence record), once it has checked every instance.
    let aborted = Instant::now();
    while read_only(primary).await != Some(false) {
        anyhow::ensure!(aborted.elapsed() < Duration::from_secs(5), "the only primary is still read-only 5 s later");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("primary writable again {} ms after the abort was read", aborted.elapsed().as_millis());
    assert_eq!(read_only(candidate).await, Some(true));
    let h = w.client()?.history("c").await?;
    let u = h.unfences.last().ok_or_else(|| anyhow::anyhow!("no unfence recorded: {h:#?}"))?;
    assert_eq!((u.instance.as_str(), u.epoch), (primary.addr().as_str(), 2), "{u:#?}");
    let t = w.topology("c").await?;
    assert_eq!(t.primary, primary.addr());
    assert_eq!(t.epoch, 2, "the aborted failover used its epoch");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_together_with_a_live_primary_promotes_nothing_and_the_majority_fails_over() -> anyhow::Result<()>
{
    // The network variant: the leader's peer links are cut and the primary is cut off
    // from the majority's coordinators and from its replicas (a datacenter partition);
    // the primary stays alive and reachable from the old leader.
    let mut w = World::start(WorldOptions { proxied: true, fault_injection: true, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let (old_leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let old = w.sandbox.primary().addr();
    let majority: Vec<u64> = (1..=3).filter(|i| *i != old_leader).collect();
    let cut_at = Instant::now();
    w.group.isolate(&[old_leader]).await?;
    {
        let links = w.links.as_ref().expect("proxied");
        for m in &majority {
            links.cut(*m as usize - 1, 0, CutMode::Silent);
        }
    }
    for r in w.sandbox.replicas() {
        r.stop_replication_io().await?;
    }
    let (new_leader, _) = w.group.wait_leader(&majority, Duration::from_secs(10)).await?;
    let client = w.group.client_for(&majority, Duration::from_secs(10))?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(30)).await?;
    let f = h.failovers[0].clone();
    println!(
        "old leader {old_leader} cut off with the primary; new leader {new_leader} failed over to {} ({}) {} ms after the cut",
        f.candidate,
        f.analysis_code,
        cut_at.elapsed().as_millis()
    );
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert!(f.analysis_code.starts_with("DeadPrimary"), "{f:#?}");
    assert!(f.steps[0].outcome.starts_with("skipped"), "the majority cannot reach the old primary: {f:#?}");
    // The old leader, still calling itself leader, committed nothing and promoted nothing.
    let lone = w.group.status_of(old_leader).await?;
    println!("old leader status while cut off: role {:?} term {}", lone.role, lone.term);
    assert_eq!(read_only(w.sandbox.primary()).await, Some(false), "nobody touched the live old primary yet");
    let writable_replicas = {
        let mut v = Vec::new();
        for r in w.sandbox.replicas() {
            if read_only(r).await == Some(false) {
                v.push(r.addr());
            }
        }
        v
    };
    assert_eq!(writable_replicas, vec![f.candidate.clone()]);

    // Heal: one record for the epoch, and the old primary is fenced as a demoted one.
    w.group.heal().await?;
    {
        let links = w.links.as_ref().expect("proxied");
        for m in &majority {
            links.heal(*m as usize - 1, 0);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_only(w.sandbox.primary()).await != Some(true) {
        anyhow::ensure!(Instant::now() < deadline, "the demoted old primary {old} was not fenced after healing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = history(&w.client()?).await?;
    assert_eq!(h.failovers.len(), 1, "the cut-off leader started a failover of its own: {h:#?}");
    assert_eq!(h.failovers[0].epoch, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_with_clocks_ten_seconds_behind_still_confirm_a_dead_primary() -> anyhow::Result<()> {
    // Wall clocks disagree between datacenters (a broken NTP). The leader must judge
    // how fresh a follower's view is by the follower's own measure of its age, not by
    // comparing two clocks: otherwise both followers' views look 10 s old, no majority
    // ever confirms the dead primary, and nothing is failed over.
    let mut w = World::start(WorldOptions { fault_injection: true, ..Default::default() }).await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    for id in &followers {
        w.group.kill9(*id)?;
        w.group.node_mut(*id).env.push(("PRIMUS_CLOCK_SKEW_MS".into(), "-10000".into()));
        w.group.start_node(*id)?;
    }
    let (still, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    anyhow::ensure!(still == leader, "leadership moved from {leader} to {still} while restarting the followers");
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let old = w.sandbox.primary().addr();
    let killed = Instant::now();
    w.sandbox.primary().kill9()?;
    let client = w.client()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    let f = &h.failovers[0];
    println!(
        "followers {followers:?} 10 s behind the leader {leader}: {} ({}) finished {} ms after kill -9",
        f.outcome,
        f.analysis_code,
        killed.elapsed().as_millis()
    );
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert!(f.analysis_code.starts_with("DeadPrimary"), "{f:#?}");
    assert_eq!(f.old_primary, old);
    assert_eq!(w.group.wait_leader(&[], Duration::from_secs(5)).await?.0, leader, "the leader changed mid-test");
    Ok(())
}

/// `primusctl` output as text; fails the test with its stderr when it exits non-zero.
fn ctl_ok(w: &World, args: &[&str]) -> anyhow::Result<String> {
    let out = w.primusctl(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "primusctl {args:?} failed: {stderr}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_maintenance_by_address_shows_in_topology_and_keeps_that_replica_from_promotion() -> anyhow::Result<()>
{
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let (r0, r1) = (w.sandbox.replicas()[0].addr(), w.sandbox.replicas()[1].addr());
    // r0 would be the preferred candidate, but maintenance takes it out of the running.
    // Without the cluster: the coordinators look it up.
    ctl_ok(&w, &["instance", "set-promotion-rule", &r0, "prefer"])?;
    let out = ctl_ok(&w, &["maintenance", "start", &r0, "--reason", "disk swap", "--duration", "2h"])?;
    println!("maintenance start {r0}: {out}");
    assert!(out.contains("started for 2h"), "{out}");

    let v: serde_json::Value = serde_json::from_str(&ctl_ok(&w, &["topology", "c", "-o", "json"])?)?;
    let i0 = v["instances"].as_array().and_then(|a| a.iter().find(|i| i["addr"] == r0.as_str())).cloned();
    let i0 = i0.ok_or_else(|| anyhow::anyhow!("{r0} missing from {v}"))?;
    println!("topology -o json, {r0}: {i0}");
    assert_eq!(i0["maintenance"]["reason"], "disk swap", "{i0}");
    assert_eq!(i0["promotion_rule"], "prefer", "{i0}");
    let left_ms = i0["maintenance"]["until_ms"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(i0["maintenance"]["since_ms"].as_u64().unwrap_or(0));
    assert_eq!(left_ms, 7_200_000, "{i0}");
    let table = ctl_ok(&w, &["topology", "c"])?;
    println!("{table}");
    assert!(
        table.contains("in maintenance for 2h more (disk swap)")
            || table.contains("in maintenance for 1h 59m more (disk swap)"),
        "{table}"
    );

    // An address in no cluster: a clear refusal, nothing committed.
    let out = w.primusctl(&["maintenance", "start", "127.0.0.1:1", "--reason", "x", "--duration", "1m"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("127.0.0.1:1 is in no registered cluster"), "{err}");

    // The primary dies: the replica in maintenance is not promoted, the other one is.
    w.sandbox.primary().kill9()?;
    let client = w.client()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(20)).await?;
    print_steps(&h.failovers[0]);
    assert_eq!(h.failovers[0].outcome, "succeeded", "{h:#?}");
    assert_eq!(h.failovers[0].candidate, r1, "a replica in maintenance was promoted: {h:#?}");

    // Ending it by address clears it from the topology.
    ctl_ok(&w, &["maintenance", "end", &r0])?;
    let v: serde_json::Value = serde_json::from_str(&ctl_ok(&w, &["topology", "c", "-o", "json"])?)?;
    let i0 = v["instances"].as_array().and_then(|a| a.iter().find(|i| i["addr"] == r0.as_str())).cloned();
    assert!(i0.is_some_and(|i| i["maintenance"].is_null()), "{v}");
    Ok(())
}

async fn wait_read_only(i: &Instance, timeout: Duration) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    while read_only(i).await != Some(true) {
        anyhow::ensure!(t0.elapsed() < timeout, "{} still writable after {timeout:?}", i.addr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_non_primaries_are_fenced_write_ahead_unless_in_maintenance() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let client = w.client()?;
    let primary = w.sandbox.primary();
    let (r0, r1) = (&w.sandbox.replicas()[0], &w.sandbox.replicas()[1]);

    // 1. A replica made writable by hand: set read-only again, its clients left alone.
    let mut reader = r0.admin_conn().await?;
    r0.set_read_only(false).await?;
    let took = wait_read_only(r0, Duration::from_secs(10)).await?;
    println!("writable replica {} fenced {} ms after read_only=0", r0.addr(), took.as_millis());
    use mysql_async::prelude::Queryable;
    let one: Option<u8> = reader.query_first("SELECT 1").await?;
    assert_eq!(one, Some(1), "a replica's client connection was killed");

    // 2. An instance detached and made writable (a primary of its own): fenced, its
    //    client connections killed so that clients come back to the real primary.
    r1.exec("STOP SLAVE").await?;
    r1.exec("RESET SLAVE ALL").await?;
    let mut app = r1.admin_conn().await?;
    r1.set_read_only(false).await?;
    let took = wait_read_only(r1, Duration::from_secs(10)).await?;
    println!("detached writable {} fenced {} ms after read_only=0", r1.addr(), took.as_millis());
    let killed = tokio::time::timeout(Duration::from_secs(5), app.query_first::<u8, _>("SELECT 1")).await;
    assert!(matches!(killed, Ok(Err(_))), "the detached instance's client connection survived: {killed:?}");

    // Both recorded, before and after; the primary untouched, no failover.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = history(&client).await?;
        if h.split_fences.len() >= 2 && h.split_fences.iter().all(|f| !f.outcome.is_empty()) {
            break h;
        }
        anyhow::ensure!(Instant::now() < deadline, "split fences not recorded: {h:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for f in &h.split_fences {
        println!("{} {} epoch {}: {} {:?}", f.id, f.instance, f.epoch, f.outcome, f.evidence);
    }
    let of = |a: String| h.split_fences.iter().find(|f| f.instance == a).cloned();
    let f0 = of(r0.addr()).ok_or_else(|| anyhow::anyhow!("no fence of {}", r0.addr()))?;
    let f1 = of(r1.addr()).ok_or_else(|| anyhow::anyhow!("no fence of {}", r1.addr()))?;
    assert!(f0.outcome.starts_with("read_only set, 0 client connections killed"), "{f0:?}");
    assert!(f1.outcome.starts_with("read_only set") && !f1.outcome.contains(" 0 client"), "{f1:?}");
    assert_eq!((f0.epoch, f1.epoch), (1, 1));
    assert!(h.failovers.is_empty(), "{h:#?}");
    assert_eq!(read_only(primary).await, Some(false), "the primary was fenced");

    // 3. In maintenance: reported, left writable.
    client.maintenance("c", Some(&r0.addr()), true, "schema work", Duration::from_secs(600)).await?;
    r0.set_read_only(false).await?;
    // (An analysis computed just before the maintenance was applied may still say
    // actionable; the leader had it applied before the instance became writable.)
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut last = None;
    while Instant::now() < deadline {
        last = Some(client.analysis("c").await?);
        assert_eq!(read_only(r0).await, Some(false), "an instance in maintenance was fenced");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a = last.ok_or_else(|| anyhow::anyhow!("no analysis"))?;
    assert!(a.code == "PrimarySplit" && !a.actionable, "{a:?}");
    assert!(a.evidence.iter().any(|e| e.contains("in maintenance: left writable")), "{a:?}");
    assert_eq!(history(&client).await?.split_fences.len(), 2);
    Ok(())
}

/// One failover request sent twice at once (to the leader and through a follower) and
/// a third time after it finished, all with one request id: the cluster is failed over
/// once, and every attempt is answered with that one failover. An id that is too long
/// is refused with INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_request_repeated_with_its_request_id_fails_over_once_and_every_repeat_gets_that_failover(
) -> anyhow::Result<()> {
    use primus_client::coordinator_client::CoordinatorClient;
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let raw = |id: u64| {
        let addr = format!("http://{}", w.group.node(id).addr());
        async move { anyhow::Ok(CoordinatorClient::new(tonic::transport::Endpoint::from_shared(addr)?.connect().await?)) }
    };
    let (mut to_leader, mut to_follower) = (raw(leader).await?, raw(follower).await?);
    let ask = primus_client::FailoverRequest {
        cluster: "c".into(),
        to: w.sandbox.replicas()[0].addr(),
        actor: "test".into(),
        request_id: "op-4711".into(),
        ..Default::default()
    };
    let (a, b) = tokio::join!(to_leader.failover(ask.clone()), to_follower.failover(ask.clone()));
    let a = a.map_err(|e| anyhow::anyhow!("the attempt sent to the leader: {e:?}"))?;
    let b = b.map_err(|e| anyhow::anyhow!("the attempt sent through a follower: {e:?}"))?;
    let (a, b) = (a.into_inner().failover.unwrap_or_default(), b.into_inner().failover.unwrap_or_default());
    let again = to_follower.failover(ask.clone()).await;
    let again = again.map_err(|e| anyhow::anyhow!("the repeat after it finished: {e:?}"))?;
    let again = again.into_inner().failover.unwrap_or_default();
    println!(
        "three attempts of request op-4711: {} {} / {} {} / {} {}",
        a.id, a.outcome, b.id, b.outcome, again.id, again.outcome
    );
    for f in [&a, &b, &again] {
        assert_eq!((f.id.as_str(), f.outcome.as_str(), f.epoch), ("c-e2", "succeeded", 2), "{f:#?}");
        assert_eq!(f.request_id, "op-4711", "{f:#?}");
    }
    let h = history(&w.client()?).await?;
    assert_eq!(h.failovers.len(), 1, "one failover for one request: {h:#?}");
    assert_eq!(w.topology("c").await?.epoch, 2);

    let too_long = primus_client::FailoverRequest { request_id: "x".repeat(129), ..ask };
    let e = to_leader.failover(too_long).await.err().ok_or_else(|| anyhow::anyhow!("a 129-byte id was accepted"))?;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    Ok(())
}

/// The analysis asked for right after a switchover returns is of the cluster as the
/// switchover left it: made after the switchover finished, under its epoch, of the new
/// primary as it is. (The leader answered with the analysis it had cached up to 200 ms
/// earlier, labelled with the current epoch: one made during the switchover, of the old
/// primary; made fresh, it judged the new primary by views from before its promotion,
/// read-only, until the next probe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysis_asked_for_right_after_a_switchover_is_made_after_it_finished() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let client = w.client()?;
    let mut addrs: Vec<String> = w.sandbox.replicas().iter().map(|r| r.addr()).collect();
    addrs.push(w.sandbox.primary().addr());
    for (n, to) in addrs.iter().enumerate() {
        let f = client.failover("c", Some(to), true).await?.failover.unwrap_or_default();
        let a = client.analysis("c").await?;
        let finished = f.finished_at_ms.unwrap_or(u64::MAX);
        println!(
            "switchover {} to {to} finished at {finished}: analysis at {} (epoch {}): {} {}",
            n + 1,
            a.at_ms,
            a.epoch,
            a.code,
            a.subject
        );
        assert_eq!(f.outcome, "succeeded", "{f:#?}");
        assert!(a.at_ms >= finished, "analysis made {} ms before the switchover finished: {a:#?}", finished - a.at_ms);
        assert_eq!(a.epoch, f.epoch, "{a:#?}");
        assert_eq!(a.subject, f.candidate, "an analysis of another primary after the switchover: {a:#?}");
        // The leader's views of the new primary were from before its promotion.
        assert_ne!(a.code, "ReadOnlyPrimary", "the new primary judged by a view from before its promotion: {a:#?}");
    }
    Ok(())
}

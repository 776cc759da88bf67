//! Semi-sync no-loss mode on real MariaDB and real primusd: primus turns lossless
//! semi-sync on everywhere (AFTER_SYNC, no fallback to async), and across repeated
//! `kill -9` failovers every transaction a client saw committed is on the new primary.

use primus_integration_tests::world::{World, WorldOptions};
use primus_testkit::mariadb::Instance;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// (master_enabled, slave_enabled, wait_point, timeout) as the server reports them.
async fn semi_sync_vars(i: &Instance) -> anyhow::Result<(u8, u8, String, u64)> {
    i.query_one::<(u8, u8, String, u64)>(
        "SELECT @@rpl_semi_sync_master_enabled, @@rpl_semi_sync_slave_enabled, \
         @@rpl_semi_sync_master_wait_point, @@rpl_semi_sync_master_timeout",
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("no row"))
}

async fn semi_sync_clients(i: &Instance) -> anyhow::Result<u64> {
    let row: Option<(String, String)> = i.query_one("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'").await?;
    Ok(row.and_then(|(_, v)| v.parse().ok()).unwrap_or(0))
}

async fn wait_no_loss_mode(w: &World, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ok = semi_sync_vars(w.sandbox.primary()).await? == (1, 1, "AFTER_SYNC".to_string(), 4_294_967_295);
        for r in w.sandbox.replicas() {
            // The source side stays off on replicas (they would wait for acks of their own).
            let (m, s, _, _) = semi_sync_vars(r).await?;
            ok &= (m, s) == (0, 1);
        }
        ok &= semi_sync_clients(w.sandbox.primary()).await? == w.sandbox.replicas().len() as u64;
        if ok {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no-loss mode not in place after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_mode_keeps_lossless_semi_sync_on_every_instance_and_off_when_asked() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::ZERO).await?;
    let client = w.client()?;
    client.set_semi_sync("c", Some(true)).await?;
    let t = Instant::now();
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;
    println!(
        "no-loss mode in place on 3 instances (2 semi-sync replicas acknowledging) after {} ms",
        t.elapsed().as_millis()
    );
    // Replication still applies (a replica with the source side on would wait for acks).
    let pos = w.sandbox.primary().insert_test_rows(3).await?;
    for r in w.sandbox.replicas() {
        r.wait_gtid(&pos, Duration::from_secs(5)).await?;
    }
    // An operator turning it off by hand is overruled while the mode is on.
    w.sandbox.replicas()[0].set_semi_sync(true, false).await?;
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;
    client.set_semi_sync("c", Some(false)).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut off = true;
        for i in w.sandbox.instances() {
            let (m, s, _, _) = semi_sync_vars(i).await?;
            off &= m == 0 && s == 0;
        }
        if off {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "semi-sync still on after the mode was turned off");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// One run, the primary either killed (`isolate = false`) or cut off by a real network
/// partition with its fencing agent beside it and the writer on its host (unix socket).
async fn one_run(run: usize, isolate: bool) -> anyhow::Result<(usize, Vec<u64>)> {
    let w = World::start(WorldOptions { primary_in_netns: isolate, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::ZERO).await?;
    let client = w.client()?;
    let primary = w.sandbox.primary();
    primary.exec("CREATE DATABASE IF NOT EXISTS appdb").await?;
    primary.exec("CREATE TABLE IF NOT EXISTS appdb.acks (id BIGINT PRIMARY KEY)").await?;
    primary.exec("CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pass'").await?;
    primary.exec("GRANT SELECT, INSERT ON appdb.* TO 'app'@'%'").await?;
    client.set_semi_sync("c", Some(true)).await?;
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;

    // With isolation: the primary's agent, in its namespace, reaching the coordinators
    // through the bridge.
    let _agent = match &w.net {
        Some((lab, _)) if isolate => {
            let coordinators = (1..=3u64)
                .map(|id| {
                    let addr = w.group.node(id).addr();
                    format!("{}:{}", lab.gateway, addr.rsplit(':').next().unwrap_or_default())
                })
                .collect();
            let opts = primus_testkit::agent::AgentOptions { cluster: "c".into(), coordinators, ..Default::default() };
            let a = primus_testkit::agent::AgentProc::start(primary, &opts)?;
            a.wait_log("lease granted", Duration::from_secs(10)).await?;
            Some(a)
        }
        _ => None,
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let port = primary.port();
    let socket = primary.unix_socket().display().to_string();
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            use mysql_async::prelude::Queryable;
            let base = mysql_async::OptsBuilder::default().user(Some("app")).pass(Some("app-pass"));
            let opts = if isolate {
                base.socket(Some(socket))
            } else {
                base.ip_or_hostname("127.0.0.1").tcp_port(port).prefer_socket(false)
            };
            let Ok(mut c) = mysql_async::Conn::new(opts).await else { return };
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    c.exec_drop("INSERT INTO appdb.acks (id) VALUES (?)", (id,)),
                )
                .await
                {
                    Ok(Ok(())) => acked.lock().unwrap_or_else(|p| p.into_inner()).push(id),
                    _ => return,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300 + (run as u64 % 5) * 40)).await;
    match &w.net {
        Some((lab, host)) if isolate => lab.cut(host)?,
        _ => primary.kill9()?,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let f = loop {
        if let Ok(h) = client.history("c").await {
            if let Some(f) = h.failovers.last().filter(|f| f.outcome != "in_progress") {
                break f.clone();
            }
        }
        if Instant::now() > deadline {
            let h = client.history("c").await;
            let a = client.analysis("c").await;
            for r in w.sandbox.replicas() {
                let st: Vec<(String, String)> =
                    r.query("SELECT 'pos', @@gtid_current_pos UNION ALL SELECT 'slave', @@gtid_slave_pos").await?;
                println!("{}: {st:?} {:#?}", r.addr(), r.slave_status().await);
            }
            let logs: Vec<String> = (1..=3).map(|i| w.group.node(i).log_tail(5)).collect();
            anyhow::bail!("run {run}: failover did not finish: {h:#?}\n{a:#?}\n{}", logs.join("\n-----\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
    anyhow::ensure!(f.outcome == "succeeded", "run {run}: {f:#?}");
    let new = w
        .sandbox
        .replicas()
        .iter()
        .find(|r| r.addr() == f.candidate)
        .ok_or_else(|| anyhow::anyhow!("run {run}: candidate {} is not a replica", f.candidate))?;
    let present: Vec<u64> = new.query("SELECT id FROM appdb.acks").await?;
    let present: std::collections::BTreeSet<u64> = present.into_iter().collect();
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let missing: Vec<u64> = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    Ok((acked.len(), missing))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_across_kill9_and_isolation_failovers_in_no_loss_mode() -> anyhow::Result<()> {
    let runs: usize = std::env::var("PRIMUS_NO_LOSS_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut total = 0;
    for run in 0..runs {
        // Every other run: a real partition of the primary instead of kill -9.
        let isolate = run % 2 == 1;
        let (acked, missing) = one_run(run, isolate).await?;
        let how = if isolate { "isolation" } else { "kill -9" };
        println!("run {run} ({how}): {acked} acknowledged inserts, {} missing on the promoted replica", missing.len());
        assert!(missing.is_empty(), "run {run}: acknowledged but lost: {missing:?}");
        assert!(acked > 0, "run {run}: the writer never got an acknowledgement");
        total += acked;
    }
    println!("{runs} failovers (kill -9 and real isolation, alternating) in no-loss mode: {total} acknowledged inserts, none lost");
    Ok(())
}

/// No-loss mode used to promote a replica lacking acknowledged transactions when the
/// replica that held them was out of the candidate pool (here: in maintenance; equally
/// unreadable, lagging or `must_not`): they were logged as "will be lost" and lost. Now
/// the failover is refused (recorded, analysis DeadPrimaryWouldLoseData) until the
/// operator accepts the loss explicitly with `failover --accept-loss`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_mode_refuses_a_candidate_lacking_acknowledged_transactions_unless_the_loss_is_accepted(
) -> anyhow::Result<()> {
    let w = World::start(WorldOptions {
        topology: primus_testkit::mariadb::Topology::PrimaryWithReplicas(3),
        ..Default::default()
    })
    .await?;
    w.register_sandbox("c", Duration::ZERO).await?;
    let client = w.client()?;
    client.set_semi_sync("c", Some(true)).await?;
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;
    w.sandbox.primary().insert_test_rows(1).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let (holder, lagging, other) = (&w.sandbox.replicas()[0], &w.sandbox.replicas()[1], &w.sandbox.replicas()[2]);
    client.maintenance("c", Some(&holder.addr()), true, "test", Duration::from_secs(3600)).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Two replicas stop receiving; the next commit is acknowledged by `holder` alone, and
    // the primary dies at once (before the upkeep restarts the stopped IO threads).
    lagging.stop_replication_io().await?;
    other.stop_replication_io().await?;
    let acked = w.sandbox.primary().insert_test_rows(5).await?;
    w.sandbox.primary().kill9()?;
    println!("5 rows acknowledged at {acked} (by {} alone); primary killed", holder.addr());

    // Refused, with the reason recorded.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        let h = client.history("c").await?;
        anyhow::ensure!(h.failovers.is_empty(), "a replica lacking acknowledged rows was promoted: {:#?}", h.failovers);
        if let Some(r) = h.refusals.iter().find(|r| r.analysis_code == "DeadPrimaryWouldLoseData") {
            break r.clone();
        }
        anyhow::ensure!(Instant::now() < deadline, "no refusal recorded: {h:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("refused: {}", refusal.reason);
    assert!(refusal.reason.contains(&holder.addr()) && refusal.reason.contains("--accept-loss"), "{refusal:#?}");
    // The analysis says so from the next tick on.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let a = client.analysis("c").await?;
        if a.code == "DeadPrimaryWouldLoseData" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "analysis: {a:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(client.history("c").await?.failovers.is_empty(), "failed over after all");
    // A manual failover without the override is refused the same way.
    let r = client.failover("c", None, false).await;
    assert!(r.as_ref().is_err_and(|e| e.to_string().contains("--accept-loss")), "{r:?}");

    // The operator accepts the loss: promoted, the override in the evidence.
    let out = w.primusctl(&["-o", "json", "failover", "c", "--accept-loss"])?;
    anyhow::ensure!(out.status.success(), "primusctl failover --accept-loss: {}", String::from_utf8_lossy(&out.stderr));
    let h = client.history("c").await?;
    let f = h.failovers.last().ok_or_else(|| anyhow::anyhow!("no failover"))?;
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert!([lagging.addr(), other.addr()].contains(&f.candidate), "{f:#?}");
    assert!(f.evidence.iter().any(|e| e.contains("overridden") && e.contains(&holder.addr())), "{:#?}", f.evidence);
    Ok(())
}

/// Found by the nemesis (seed 115): in no-loss mode a replica restarted after it had
/// received a transaction but before its acknowledgement reached the primary comes
/// back with semi-sync off (a runtime setting), replicates asynchronously past that
/// transaction, and is then switched to semi-sync by primus — from a position after the
/// transaction, so nobody ever acknowledges it. The primary waited for ever: writable,
/// and taking no write. Here both replicas receive a transaction asynchronously (their
/// semi-sync side off, as after a restart); every replica holds it, so it is safe on
/// them, and the primary must take writes again within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_loss_primary_waiting_for_acks_of_a_transaction_every_replica_already_holds_takes_writes_again(
) -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::ZERO).await?;
    w.client()?.set_semi_sync("c", Some(true)).await?;
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;
    let primary = w.sandbox.primary().clone();
    primary.insert_test_rows(1).await?;
    // Both replicas reconnect without semi-sync: they receive, apply and acknowledge nothing.
    for r in w.sandbox.replicas() {
        r.exec("SET GLOBAL rpl_semi_sync_slave_enabled = OFF").await?;
        r.exec("STOP SLAVE IO_THREAD").await?;
        r.exec("START SLAVE IO_THREAD").await?;
    }
    // This commit is sent to both replicas and waits for an acknowledgement.
    let stuck = {
        let p = primary.clone();
        tokio::spawn(async move {
            p.exec_timeout("INSERT INTO primus_test.t (v) VALUES ('stuck')", Duration::from_secs(60)).await
        })
    };
    let pos = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pos = primary.gtid_binlog_pos().await?;
            let mut all = true;
            for r in w.sandbox.replicas() {
                let n: Option<u64> = r.query_one("SELECT COUNT(*) FROM primus_test.t WHERE v = 'stuck'").await?;
                all &= n == Some(1);
            }
            if all {
                break pos;
            }
            anyhow::ensure!(Instant::now() < deadline, "the replicas did not receive the waiting transaction");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    println!("the waiting transaction ({pos}) is on every replica; primus restores semi-sync on them");
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), stuck).await;
    // Its session may be ended by primus (killed): the commit stands all the same.
    anyhow::ensure!(r.is_ok(), "the primary still waits for an acknowledgement 20 s later: nobody will ever give it");
    println!("the waiting commit returned after {} ms: {r:?}", t.elapsed().as_millis());
    let n: Option<u64> = primary.query_one("SELECT COUNT(*) FROM primus_test.t WHERE v = 'stuck'").await?;
    anyhow::ensure!(n == Some(1), "the waiting transaction is not committed on the primary");
    // And later commits are lossless again: each waits for a replica's acknowledgement.
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;
    let before: u64 = primary
        .query_one("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
        .await?
        .map(|(_, v): (String, u64)| v)
        .unwrap_or(0);
    primary.insert_test_rows(1).await?;
    let after: u64 = primary
        .query_one("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
        .await?
        .map(|(_, v): (String, u64)| v)
        .unwrap_or(0);
    anyhow::ensure!(after > before, "a later commit was not acknowledged by a semi-sync replica ({before} -> {after})");
    Ok(())
}

/// Found by the nemesis (seed 106): in no-loss mode a replica that acknowledged a write
/// and was killed before any coordinator saw it receive that write restarts without it
/// (a restart discards the relay log); if the primary is gone by then, nobody but the
/// primary holds the write, and promoting that replica lost it. Here, with one replica:
/// the coordinators are cut off from it (so none sees what it receives), its SQL thread
/// is stopped (so it only receives), the write is acknowledged by it, it is killed, the
/// primary frozen, and the replica restarted and reachable again. The failover must be
/// refused, not promote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_mode_refuses_to_promote_a_replica_that_restarted_after_acknowledging_what_only_the_frozen_primary_holds(
) -> anyhow::Result<()> {
    let w = World::start(WorldOptions {
        proxied: true,
        topology: primus_testkit::mariadb::Topology::PrimaryWithReplicas(1),
        ..Default::default()
    })
    .await?;
    w.register_sandbox("c", Duration::from_millis(500)).await?;
    let client = w.client()?;
    client.set_semi_sync("c", Some(true)).await?;
    wait_no_loss_mode(&w, Duration::from_secs(15)).await?;
    let primary = w.sandbox.primary().clone();
    let replica = w.sandbox.instance(1).clone();
    primary.insert_test_rows(1).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // From now on no coordinator sees what the replica receives.
    let links = w.links.as_ref().expect("proxied");
    for coord in 0..3 {
        links.cut(coord, 1, primus_testkit::proxy::CutMode::Reset);
    }
    replica.stop_replication_sql().await?;
    let acked = primary.insert_test_rows(1).await?;
    println!("acknowledged by {} (its SQL thread stopped): {acked}", replica.addr());
    replica.kill9()?;
    // The coordinators see the primary execute it; then it freezes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.sigstop()?;
    replica.restart().await?;
    let pos = replica.gtid_current_pos().await?;
    println!("{} restarted, at {pos}: the acknowledged write is gone from it", replica.addr());
    for coord in 0..3 {
        links.heal(coord, 1);
    }
    // DeadPrimary: the only candidate lacks what it acknowledged.
    let deadline = Instant::now() + Duration::from_secs(15);
    let refusal = loop {
        let h = client.history("c").await?;
        anyhow::ensure!(
            h.failovers.iter().all(|f| f.outcome != "succeeded"),
            "promoted a replica that had lost an acknowledged write: {:#?}",
            h.failovers
        );
        if let Some(r) = h.refusals.iter().find(|r| format!("{r:?}").contains("restarted")) {
            break r.clone();
        }
        anyhow::ensure!(Instant::now() < deadline, "no refusal within 15 s: {h:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("refused: {}", refusal.reason);
    let _ = primary.sigcont();
    Ok(())
}

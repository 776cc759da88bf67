//! Day-2 commands on a real sandbox (issue 16): `primusctl instance forget` and
//! `primusctl automatic off|on --all`, each through the real primusctl.

use primus_integration_tests::world::{World, WorldOptions};
use primus_testkit::coordinator::bin;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn primusctl(w: &World, args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &w.group.endpoints(), "--timeout", "15s"])
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A decommissioned replica stays UNREACHABLE (and alerting) for ever unless it can be
/// forgotten without losing the cluster's history: `instance forget` drops it, and it
/// does not come back. The primary and a replica that still replicates are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_replica_is_forgotten_and_the_primary_and_a_replicating_one_are_refused() -> anyhow::Result<()>
{
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(500)).await?;
    let primary = w.sandbox.primary().addr();
    let (keep, gone) = (w.sandbox.replicas()[0].clone(), w.sandbox.replicas()[1].clone());

    let o = primusctl(&w, &["instance", "forget", &primary])?;
    assert!(!o.status.success() && text(&o).contains("it is the primary"), "{}", text(&o));
    let o = primusctl(&w, &["instance", "forget", "c", &keep.addr()])?;
    assert!(!o.status.success() && text(&o).contains("still replicates from"), "{}", text(&o));
    let o = primusctl(&w, &["instance", "forget", "c", "127.0.0.1:1"])?;
    assert!(!o.status.success(), "an unknown instance was forgotten: {}", text(&o));

    // Decommissioned: the server is gone for good.
    gone.kill9()?;
    w.wait_topology("c", "the killed replica is seen down", Duration::from_secs(10), |t| {
        t.instances.iter().any(|i| i.addr == gone.addr() && !i.reachable)
    })
    .await?;
    let o = primusctl(&w, &["-o", "json", "instance", "forget", &gone.addr()])?;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["forgotten"], gone.addr());
    // Gone from the topology, and it stays gone (not rediscovered, not probed).
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let t = w.topology("c").await?;
        let addrs: Vec<&str> = t.instances.iter().map(|i| i.addr.as_str()).collect();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        assert!(!addrs.contains(&gone.addr().as_str()), "{addrs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = text(&primusctl(&w, &["audit"])?);
    assert!(audit.contains(&format!("forget instance {} of c", gone.addr())), "{audit}");
    // The cluster keeps working: a switchover to the remaining replica.
    let o = primusctl(&w, &["switchover", "c", "--to", &keep.addr()])?;
    assert!(o.status.success(), "{}", text(&o));
    Ok(())
}

/// `automatic off --all` is an emergency stop for every cluster: a dead primary is
/// left alone (and the leader says why) until `automatic on --all`, which lets the
/// failover happen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_failover_switched_off_for_every_cluster_waits_until_switched_back_on() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(500)).await?;
    let o = primusctl(&w, &["automatic", "off", "--all"])?;
    assert!(!o.status.success() && text(&o).contains("--reason"), "{}", text(&o));
    let o = primusctl(&w, &["automatic", "off", "--all", "--reason", "DC move"])?;
    assert!(o.status.success(), "{}", text(&o));
    let status = text(&primusctl(&w, &["status"])?);
    assert!(status.contains("automatic failover: OFF for every cluster") && status.contains("DC move"), "{status}");
    let v: serde_json::Value = serde_json::from_slice(&primusctl(&w, &["-o", "json", "status"])?.stdout)?;
    assert_eq!(v["automatic_off"]["reason"], "DC move", "{v:#}");

    w.sandbox.primary().kill9()?;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h = w.client()?.history("c").await?;
    assert!(h.failovers.is_empty(), "a failover ran while automatic failover was off everywhere: {h:#?}");
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let log = std::fs::read_to_string(&w.group.node(leader).log_path)?;
    assert!(log.contains("switched off for every cluster (DC move)"), "{}", w.group.node(leader).log_tail(20));

    let o = primusctl(&w, &["automatic", "on", "--all"])?;
    assert!(o.status.success(), "{}", text(&o));
    let on = Instant::now();
    let f = loop {
        let h = w.client()?.history("c").await?;
        if let Some(f) = h.failovers.last().filter(|f| f.outcome != "in_progress") {
            break f.clone();
        }
        anyhow::ensure!(on.elapsed() < Duration::from_secs(15), "no failover 15 s after automatic on --all");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.kind, "automatic");
    println!(
        "failover {} {} ms after `automatic on --all` ({} ms after the kill)",
        f.id,
        on.elapsed().as_millis(),
        killed.elapsed().as_millis()
    );
    let status = text(&primusctl(&w, &["status"])?);
    assert!(!status.contains("OFF for every cluster"), "{status}");
    Ok(())
}

/// `relocate` moves a replica under another replica by GTID (which becomes an
/// intermediate primary and passes the primary's writes on), write-ahead and audited;
/// a loop, the primary and a replica with errant transactions are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_relocated_below_another_and_loops_the_primary_and_errant_ones_are_refused() -> anyhow::Result<()>
{
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(500)).await?;
    let primary = w.sandbox.primary().clone();
    let (r1, r2) = (w.sandbox.replicas()[0].clone(), w.sandbox.replicas()[1].clone());

    let o = primusctl(&w, &["-o", "json", "relocate", &r2.addr(), "--below", &r1.addr()])?;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert!(v["message"].as_str().is_some_and(|m| m.contains("now replicates from")), "{v:#}");
    let t = w
        .wait_topology("c", "r2 below r1", Duration::from_secs(10), |t| {
            t.instances.iter().any(|i| i.addr == r2.addr() && i.source.as_deref() == Some(r1.addr().as_str()))
        })
        .await?;
    let role = |addr: &str| t.instances.iter().find(|i| i.addr == addr).map(|i| i.role.clone()).unwrap_or_default();
    assert_eq!(role(&r1.addr()), "intermediate", "{t:#?}");
    // The primary's writes reach r2 through r1.
    let pos = primary.insert_test_rows(10).await?;
    r2.wait_gtid(&pos, Duration::from_secs(10)).await?;
    let st = r2.slave_status().await?.ok_or_else(|| anyhow::anyhow!("r2 does not replicate"))?;
    assert_eq!(st.master_port, r1.port());

    // A loop, the primary, itself.
    let o = primusctl(&w, &["relocate", &r1.addr(), "--below", &r2.addr()])?;
    assert!(!o.status.success() && text(&o).contains("replication loop"), "{}", text(&o));
    let o = primusctl(&w, &["relocate", &primary.addr(), "--below", &r1.addr()])?;
    assert!(!o.status.success() && text(&o).contains("is the primary"), "{}", text(&o));
    let o = primusctl(&w, &["relocate", &r2.addr(), "--below", &r2.addr()])?;
    assert!(!o.status.success() && text(&o).contains("itself"), "{}", text(&o));

    // An errant transaction on r2 (written on the replica itself): it would stay errant.
    r2.exec("CREATE DATABASE errant_on_r2").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = primusctl(&w, &["relocate", &r2.addr(), "--below", &primary.addr()])?;
        anyhow::ensure!(!o.status.success(), "a replica with an errant transaction was relocated: {}", text(&o));
        if text(&o).contains("does not have") {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not refused for its errant transaction: {}", text(&o));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let audit = text(&primusctl(&w, &["audit"])?);
    assert!(audit.contains(&format!("relocate {} of c below {}", r2.addr(), r1.addr())), "{audit}");
    Ok(())
}

/// `cluster set` puts `[failover]` keys in Raft, and every coordinator applies them
/// over its own file: with `fence_split = false` in every config, a writable replica
/// is left alone until `cluster set c fence_split=true`, then fenced; `fence_split=`
/// clears it. Unknown keys and bad values are refused without a log entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_settings_in_raft_override_every_coordinators_file() -> anyhow::Result<()> {
    let w =
        World::start(WorldOptions { extra_config: "[failover]\nfence_split = false\n".into(), ..Default::default() })
            .await?;
    w.register_sandbox("c", Duration::from_millis(500)).await?;
    let r1 = w.sandbox.replicas()[0].clone();

    let audit_len = |a: &str| a.lines().count();
    let before = text(&primusctl(&w, &["audit", "--limit", "1000"])?);
    let o = primusctl(&w, &["cluster", "set", "c", "step_timeout_ms=5"])?;
    assert!(!o.status.success() && text(&o).contains("unknown cluster setting"), "{}", text(&o));
    let o = primusctl(&w, &["cluster", "set", "c", "catch_up_timeout_ms=0"])?;
    assert!(!o.status.success() && text(&o).contains("from 1 to"), "{}", text(&o));
    let after = text(&primusctl(&w, &["audit", "--limit", "1000"])?);
    assert_eq!(audit_len(&before), audit_len(&after), "a refused setting reached the log");

    // The files say no split fencing: a writable replica stays writable.
    r1.set_read_only(false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!r1.read_only().await?, "fenced although every config has fence_split = false");

    let o = primusctl(&w, &["cluster", "set", "c", "fence_split=true", "catch_up_timeout_ms=2500"])?;
    assert!(o.status.success(), "{}", text(&o));
    let set = Instant::now();
    loop {
        if r1.read_only().await? {
            break;
        }
        anyhow::ensure!(set.elapsed() < Duration::from_secs(10), "the Raft setting fence_split=true was not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("writable replica fenced {} ms after `cluster set c fence_split=true`", set.elapsed().as_millis());
    let list = text(&primusctl(&w, &["cluster", "list"])?);
    assert!(list.contains("fence_split=true") && list.contains("catch_up_timeout_ms=2500"), "{list}");
    let v: serde_json::Value = serde_json::from_slice(&primusctl(&w, &["-o", "json", "cluster", "list"])?.stdout)?;
    assert_eq!(v["clusters"][0]["failover_settings"]["fence_split"], "true", "{v:#}");

    // Cleared: back to the files.
    let o = primusctl(&w, &["cluster", "set", "c", "fence_split="])?;
    assert!(o.status.success(), "{}", text(&o));
    r1.set_read_only(false).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!r1.read_only().await?, "fenced after fence_split was cleared back to the files' false");
    let list = text(&primusctl(&w, &["cluster", "list"])?);
    assert!(!list.contains("fence_split") && list.contains("catch_up_timeout_ms=2500"), "{list}");
    r1.set_read_only(true).await?;
    Ok(())
}

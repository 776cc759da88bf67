//! Seeing MySQL/MariaDB: discovery, probes, heartbeats and per-coordinator views,
//! on real MariaDB replication watched by real primusd processes.

use primus_client::{ClientError, ClusterSettings, ReadConsistency};
use primus_integration_tests::world::{inst, World, WorldOptions};
use primus_testkit::mariadb::Topology;
use primus_testkit::proxy::CutMode;
use std::time::{Duration, Instant};

async fn add(w: &World, name: &str, seed: &str) -> Result<u64, ClientError> {
    w.client()
        .map_err(|e| ClientError::NoLeader(e.to_string()))?
        .register_cluster(name, &[seed.to_string()], ClusterSettings::default())
        .await
        .map(|r| r.log_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_from_primary_or_replica_finds_the_same_three_instances() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    let primary = w.sandbox.primary().addr();
    add(&w, "from-primary", &primary).await?;
    add(&w, "from-replica", &w.sandbox.replicas()[1].addr()).await?;
    for name in ["from-primary", "from-replica"] {
        let t = w.topology(name).await?;
        assert_eq!(t.primary, primary, "{name}: wrong primary");
        assert_eq!(t.instances.len(), 3, "{name}: {t:#?}");
        assert_eq!(t.epoch, 1);
        for r in w.sandbox.replicas() {
            let i = inst(&t, &r.addr());
            assert_eq!(i.role, "replica");
            assert_eq!(i.source.as_deref(), Some(primary.as_str()));
            assert_eq!(i.server_id, r.server_id());
        }
        assert_eq!(inst(&t, &primary).role, "primary");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_is_discovered_with_its_intermediate_primary() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { topology: Topology::Chain(1), ..Default::default() }).await?;
    let leaf = w.sandbox.instance(2).addr();
    add(&w, "chain", &leaf).await?;
    let t = w.topology("chain").await?;
    assert_eq!(t.instances.len(), 3, "{t:#?}");
    assert_eq!(t.primary, w.sandbox.instance(0).addr());
    let mid = inst(&t, &w.sandbox.instance(1).addr());
    assert_eq!(mid.role, "intermediate");
    assert_eq!(mid.source.as_deref(), Some(t.primary.as_str()));
    assert_eq!(inst(&t, &leaf).source.as_deref(), Some(mid.addr.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_primary_times_out_while_others_keep_their_pace_and_heartbeat_delay_grows() -> anyhow::Result<()> {
    // This test is about probing; the primary stays stopped for seconds, which would
    // (rightly) trigger a failover, so automatic failover is off here.
    let w = World::start(WorldOptions { extra_config: "[failover]\nautomatic = false\n".into(), ..Default::default() })
        .await?;
    let primary = w.sandbox.primary().addr();
    add(&w, "c", &primary).await?;
    let replica = w.sandbox.replicas()[0].addr();
    // Heartbeats flow before the fault.
    w.wait_topology("c", "heartbeat delay under 1 s on replicas", Duration::from_secs(10), |t| {
        t.instances.iter().filter(|i| i.role == "replica").all(|i| i.heartbeat_delay_ms.is_some_and(|d| d < 1000))
    })
    .await?;

    let stopped_at = Instant::now();
    w.sandbox.primary().sigstop()?;
    let mut replica_samples = Vec::new();
    let t = w
        .wait_topology("c", "primary probe timeout", Duration::from_secs(10), |t| {
            let i = inst(t, &primary);
            !i.reachable && i.last_error.as_deref().is_some_and(|e| e.contains("timed out"))
        })
        .await?;
    let detected = stopped_at.elapsed();
    // Watch the replica's probe timestamps for 3 s while the primary hangs.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let t = w.client()?.topology("c", ReadConsistency::Stale).await?;
        if let Some(at) = inst(&t, &replica).observed_at_ms {
            if replica_samples.last() != Some(&at) {
                replica_samples.push(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t2 = w.topology("c").await?;
    w.sandbox.primary().sigcont()?;
    let gaps: Vec<u64> = replica_samples.windows(2).map(|p| p[1] - p[0]).collect();
    let max_gap = gaps.iter().copied().max().unwrap_or(0);
    println!(
        "SIGSTOP primary: probe timeout reported after {} ms (query timeout 800 ms, probe interval 300 ms); \
         replica probe gaps while primary hung: {:?} ms (max {} ms); primary error: {:?}",
        detected.as_millis(),
        gaps,
        max_gap,
        inst(&t, &primary).last_error
    );
    assert!(detected < Duration::from_millis(800 + 300 + 1500), "timeout took {detected:?}");
    assert!(replica_samples.len() >= 6, "replica probes stalled: {replica_samples:?}");
    assert!(max_gap <= 800, "a replica's probe waited {max_gap} ms while the primary hung");
    let delays: Vec<i64> =
        t2.instances.iter().filter(|i| i.role == "replica").filter_map(|i| i.heartbeat_delay_ms).collect();
    assert!(delays.iter().all(|d| *d > 2000), "heartbeat delay did not grow while the primary hung: {delays:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_is_unreachable_from_every_coordinator_and_comes_back() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    add(&w, "c", &w.sandbox.primary().addr()).await?;
    let victim = &w.sandbox.replicas()[1];
    let addr = victim.addr();
    w.wait_topology("c", "all coordinators reporting", Duration::from_secs(10), |t| inst(t, &addr).seen_by.len() == 3)
        .await?;
    victim.kill9()?;
    let t = w
        .wait_topology("c", "replica unreachable from 3/3", Duration::from_secs(10), |t| {
            let i = inst(t, &addr);
            i.seen_by.len() == 3 && i.seen_by.values().all(|ok| !ok)
        })
        .await?;
    assert!(inst(&t, &addr).flags.iter().any(|f| f.contains("unreachable from 3/3")), "{t:#?}");
    victim.restart().await?;
    let t = w
        .wait_topology("c", "replica back", Duration::from_secs(20), |t| {
            let i = inst(t, &addr);
            i.reachable && i.seen_by.values().all(|ok| *ok) && i.io_running.as_deref() == Some("yes")
        })
        .await?;
    assert_eq!(inst(&t, &addr).role, "replica");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_sql_thread_grows_heartbeat_delay_which_recovers_after_start() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    add(&w, "c", &w.sandbox.primary().addr()).await?;
    let r = &w.sandbox.replicas()[0];
    let addr = r.addr();
    w.wait_topology("c", "heartbeat under 1 s", Duration::from_secs(10), |t| {
        inst(t, &addr).heartbeat_delay_ms.is_some_and(|d| d < 1000)
    })
    .await?;
    r.stop_replication_sql().await?;
    let t = w
        .wait_topology("c", "heartbeat delay > 2 s and not replicating", Duration::from_secs(10), |t| {
            let i = inst(t, &addr);
            i.heartbeat_delay_ms.is_some_and(|d| d > 2000) && i.sql_running == Some(false)
        })
        .await?;
    assert!(inst(&t, &addr).flags.iter().any(|f| f == "not replicating"), "{:?}", inst(&t, &addr).flags);
    r.start_replication_sql().await?;
    let started = Instant::now();
    w.wait_topology("c", "heartbeat delay back under 1 s", Duration::from_secs(10), |t| {
        inst(t, &addr).heartbeat_delay_ms.is_some_and(|d| d < 1000)
    })
    .await?;
    println!("heartbeat delay back under 1 s {} ms after START SLAVE SQL_THREAD", started.elapsed().as_millis());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_on_a_replica_shows_as_errant_gtid() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    add(&w, "c", &w.sandbox.primary().addr()).await?;
    let r = &w.sandbox.replicas()[0];
    r.exec("SET GLOBAL read_only = 0").await?;
    r.exec("CREATE DATABASE IF NOT EXISTS oops").await?;
    let addr = r.addr();
    let t = w
        .wait_topology("c", "errant GTID flag", Duration::from_secs(10), |t| {
            inst(t, &addr).flags.iter().any(|f| f.starts_with("errant GTID"))
        })
        .await?;
    let other = w.sandbox.replicas()[1].addr();
    assert!(!inst(&t, &other).flags.iter().any(|f| f.starts_with("errant")), "clean replica flagged");
    println!("flags on the written replica: {:?}", inst(&t, &addr).flags);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_from_one_coordinator_shows_in_seen_by_and_heals() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { proxied: true, ..Default::default() }).await?;
    let primary = w.sandbox.primary().addr();
    add(&w, "c", &primary).await?;
    let all_ok = |t: &primus_client::GetTopologyResponse| {
        let i = inst(t, &primary);
        i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok)
    };
    w.wait_topology("c", "all coordinators see the primary", Duration::from_secs(10), all_ok).await?;
    let links = w.links.as_ref().expect("proxied world");
    // Coordinator 2 is source index 1; the primary is target index 0.
    links.cut(1, 0, CutMode::Silent);
    let t = w
        .wait_topology("c", "primary unseen by coordinator 2 only", Duration::from_secs(10), |t| {
            let s = &inst(t, &primary).seen_by;
            s.get(&2) == Some(&false) && s.get(&1) == Some(&true) && s.get(&3) == Some(&true)
        })
        .await?;
    assert!(inst(&t, &primary).flags.iter().any(|f| f.contains("unreachable from 1/3")));
    links.heal(1, 0);
    w.wait_topology("c", "seen by all again", Duration::from_secs(10), all_ok).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_requests_give_clear_errors_and_commit_nothing() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    let client = w.client()?;
    let primary = w.sandbox.primary().addr();

    let e = client.topology("nope", ReadConsistency::Linearizable).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic_code_not_found()), "{e}");
    assert!(e.to_string().contains("not registered"), "{e}");

    let dead = format!("127.0.0.1:{}", primus_testkit::ports::free_port()?);
    let e = add(&w, "dead", &dead).await.unwrap_err();
    assert!(e.to_string().contains("unreachable") && e.to_string().contains("nothing was registered"), "{e}");

    add(&w, "c", &primary).await?;
    let e = add(&w, "c", &primary).await.unwrap_err();
    assert!(e.to_string().contains("already registered"), "{e}");

    let clusters = client.list_clusters(ReadConsistency::Linearizable).await?;
    let names: Vec<&str> = clusters.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["c"], "a failed registration left something behind");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mysql_password_is_refused_and_commits_nothing() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { password: "wrong".into(), coordinators: 3, ..Default::default() }).await?;
    let e = add(&w, "c", &w.sandbox.primary().addr()).await.unwrap_err();
    assert!(e.to_string().to_lowercase().contains("access denied"), "{e}");
    let clusters = w.client()?.list_clusters(ReadConsistency::Linearizable).await?;
    assert!(clusters.clusters.is_empty());
    Ok(())
}

fn tonic_code_not_found() -> tonic::Code {
    tonic::Code::NotFound
}

//! Fencing by lease, measured on real processes: a MariaDB primary with a
//! `primus-agent`, 3 primusd coordinators, and an application writing to the primary
//! as fast as it can (as an unprivileged user). Two kinds of cut, each silent
//! (connections hang, as in a real partition): only the agent's links to the
//! coordinators (TCP proxies), or the primary's whole network namespace (neighbours
//! pinned to an unused MAC on both sides) while a client on its host keeps writing
//! through the unix socket.
//!
//! Per run it records: when the primary became read-only (the agent's fence) after the
//! cut; when the new primary was promoted (`PrimaryLeaseExpired` → failover, lease wait
//! included); the **fencing window** — from the latest moment the agent's lease can
//! end (the cut + TTL: its last granted renewal was sent before the cut) to the first
//! refused write, 0 when writes were refused before that; and whether
//! any write was acknowledged by the old primary after the promotion (must be none).
//!
//! Run: `scripts/bench.sh fencing_time` (BENCH_RUNS, default 10).
//! Goal from issue 7: failover time of this case p50 ≤ 3 s.

use anyhow::{bail, Context, Result};
use primus_benches::{summarize, wall_ms};
use primus_client::{ClusterSettings, ReadConsistency};
use primus_testkit::agent::{AgentOptions, AgentProc};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use primus_testkit::mariadb::{Instance, Sandbox, SandboxOptions, Topology};
use primus_testkit::proxy::{CutMode, LinkProxy};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTER: &str = "main";

/// One insert as the app user: over TCP, or through the unix socket (`local`: a client
/// on the primary's own host, which a partition does not cut off).
async fn app_insert(inst: &Instance, local: bool) -> Result<()> {
    use mysql_async::prelude::Queryable;
    let base = mysql_async::OptsBuilder::default().user(Some("app")).pass(Some("app-pass"));
    let opts = if local {
        base.socket(Some(inst.unix_socket().display().to_string()))
    } else {
        base.ip_or_hostname(inst.host().to_string()).tcp_port(inst.port()).prefer_socket(false)
    };
    let fut = async {
        let mut c = mysql_async::Conn::new(opts).await?;
        c.query_drop("INSERT INTO appdb.t (v) VALUES (1)").await?;
        c.disconnect().await
    };
    tokio::time::timeout(Duration::from_millis(500), fut).await.context("timeout")?.context("insert")
}

struct Run {
    fenced_after_cut: Duration,
    promoted_after_cut: Duration,
    fencing_window: Duration,
    acked_after_promotion: u64,
}

/// How the primary is cut off.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Only the agent's links to the coordinators (silent TCP proxies).
    AgentLinks,
    /// The primary's whole network namespace (neighbours pinned to an unused MAC on
    /// both sides); a local client keeps writing through the unix socket.
    Isolation,
}

async fn one_run(run: usize, mode: Cut) -> Result<Run> {
    let net = if mode == Cut::Isolation {
        let lab = primus_testkit::netns::NetLab::new("b")?;
        let host = lab.add_host()?;
        Some((lab, host))
    } else {
        None
    };
    let mut sopts = SandboxOptions::new(Topology::PrimaryWithReplicas(2));
    if let Some((_, h)) = &net {
        sopts.netns = vec![Some(h.clone())];
    }
    let sandbox = Sandbox::start(sopts).await?;
    let secrets = tempfile::tempdir()?;
    let extra = sandbox.coordinator_mysql_section(
        secrets.path(),
        None,
        "probe_interval_ms = 300\nquery_timeout_ms = 800\nconnect_timeout_ms = 800\nheartbeat_interval_ms = 200",
    )?;
    let group = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        extra_config: extra,
        listen_all: net.is_some(),
        ..Default::default()
    })?;
    group.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = group.client(Duration::from_secs(15))?;
    let primary = sandbox.primary().clone();
    client.register_cluster(CLUSTER, &[primary.addr()], ClusterSettings::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = client.topology(CLUSTER, ReadConsistency::Linearizable).await;
        if t.as_ref().is_ok_and(|t| t.instances.len() == 3 && t.instances.iter().all(|i| i.seen_by.len() == 3)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("run {run}: topology never complete: {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for sql in [
        "CREATE DATABASE IF NOT EXISTS appdb",
        "CREATE TABLE IF NOT EXISTS appdb.t (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT)",
        "CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pass'",
        "GRANT SELECT, INSERT ON appdb.* TO 'app'@'%'",
    ] {
        primary.exec(sql).await?;
    }
    sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut proxies = Vec::new();
    let coordinators: Vec<String> = match &net {
        Some((lab, _)) => (1..=3u64)
            .map(|id| {
                let addr = group.node(id).addr();
                format!("{}:{}", lab.gateway, addr.rsplit(':').next().unwrap_or_default())
            })
            .collect(),
        None => {
            for id in 1..=3 {
                proxies.push(LinkProxy::start(group.node(id).addr().parse()?).await?);
            }
            proxies.iter().map(|p| p.listen_addr().to_string()).collect()
        }
    };
    let opts = AgentOptions { cluster: CLUSTER.into(), coordinators, ..Default::default() };
    let ttl = Duration::from_millis(opts.ttl_ms);
    let agent = AgentProc::start(&primary, &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;

    // The writer: wall-clock of every acknowledged insert, and of the first refusal.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (inst, stop) = (primary.clone(), stop.clone());
        let local = net.is_some();
        tokio::spawn(async move {
            let mut acks: Vec<u64> = Vec::new();
            let mut first_refusal: Option<u64> = None;
            while !stop.load(Ordering::Relaxed) {
                match app_insert(&inst, local).await {
                    Ok(()) => acks.push(wall_ms()),
                    Err(_) => {
                        first_refusal.get_or_insert_with(wall_ms);
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (acks, first_refusal)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The last lease the agent can hold was granted for a request sent before the cut.
    let cut_wall = wall_ms();
    let cut = Instant::now();
    for p in &proxies {
        p.cut_with(CutMode::Silent);
    }
    if let Some((lab, host)) = &net {
        lab.cut(host)?;
    }
    let mut fenced_after_cut = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let f = loop {
        if fenced_after_cut.is_none() && primary.read_only().await.unwrap_or(false) {
            fenced_after_cut = Some(cut.elapsed());
        }
        if let Ok(h) = client.history(CLUSTER).await {
            if let Some(f) = h.failovers.iter().find(|f| f.outcome != "in_progress") {
                break f.clone();
            }
        }
        if Instant::now() > deadline {
            bail!("run {run}: no failover within 30 s\n--- agent ---\n{}", agent.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let (acks, first_refusal) = writer.await?;
    let promote = f
        .steps
        .iter()
        .find(|s| s.description.starts_with("promote "))
        .ok_or_else(|| anyhow::anyhow!("run {run}: no promote step"))?;
    let promoted_after_cut = Duration::from_millis(promote.at_ms.saturating_sub(cut_wall));
    // The agent's lease ends at most `ttl` after the cut (its last renewal was sent before it).
    let lease_end = cut_wall + ttl.as_millis() as u64;
    let refusal = first_refusal.ok_or_else(|| anyhow::anyhow!("run {run}: no write was ever refused"))?;
    let fencing_window = Duration::from_millis(refusal.saturating_sub(lease_end));
    let acked_after_promotion = acks.iter().filter(|t| **t >= promote.at_ms).count() as u64;
    drop(agent);
    drop(group);
    drop(sandbox);
    drop(net);
    Ok(Run {
        fenced_after_cut: fenced_after_cut.unwrap_or(promoted_after_cut),
        promoted_after_cut,
        fencing_window,
        acked_after_promotion,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    for (mode, label) in [(Cut::AgentLinks, "agent links cut"), (Cut::Isolation, "primary's namespace isolated")] {
        measure(runs, mode, label).await?;
    }
    Ok(())
}

async fn measure(runs: usize, mode: Cut, label: &str) -> Result<()> {
    let (mut fenced, mut promoted, mut window) = (Vec::new(), Vec::new(), Vec::new());
    let mut late_acks = 0;
    for run in 0..runs {
        let r = one_run(run, mode).await?;
        println!(
            "{label} run {run}: read-only {} ms after the cut, promoted {} ms after the cut, fencing window {} ms, \
             {} writes acknowledged by the old primary after the promotion",
            r.fenced_after_cut.as_millis(),
            r.promoted_after_cut.as_millis(),
            r.fencing_window.as_millis(),
            r.acked_after_promotion
        );
        fenced.push(r.fenced_after_cut);
        promoted.push(r.promoted_after_cut);
        window.push(r.fencing_window);
        late_acks += r.acked_after_promotion;
    }
    println!("fencing_time [{label}] cut -> old primary read-only: {}", summarize(fenced));
    println!("fencing_time [{label}] cut -> new primary promoted (lease wait included): {}", summarize(promoted));
    println!("fencing_time [{label}] fencing window (latest lease end -> first refused write): {}", summarize(window));
    println!(
        "fencing_time [{label}] writes acknowledged by the old primary after a promotion: {late_acks} over {runs} runs"
    );
    Ok(())
}

//! Rolling upgrade rehearsal (run by `scripts/upgrade-test.sh`, not in CI: it needs a
//! primusd built from an older commit).
//!
//! A MariaDB sandbox (a primary and three replicas, GTID) is watched by a 3-node group
//! of the *old* primusd. An application writer follows the primary through
//! `GetPrimary` and inserts unique rows as a user without SUPER, recording each as
//! acknowledged or not. The nodes are then upgraded one at a time (followers first,
//! the leader last, SIGTERM then start with the new binary), with failovers before,
//! during and after:
//!
//! * old group: a switchover;
//! * 1 new + 2 old: a switchover;
//! * 2 new + 1 old: a switchover; the old leader stopped until a new node leads, then
//!   started again (a new leader replicating to an old follower); a switchover and
//!   the primary killed with kill -9 (an automatic failover; writes paused and the
//!   replicas caught up first, so that an async crash loses nothing by design); a
//!   command of the new release (`automatic off --all`) refused, saying why;
//! * all new: the group's feature level rises to this build's, then a switchover and
//!   another kill -9 failover.
//!
//! Checks: every failover succeeded; while any member ran the old release the group's
//! level stayed 1 and no node logged an entry it could not decode; every acknowledged
//! row is on the final primary and on its replicas; exactly one server is writable.
//!
//! Usage: `upgrade --old-bin DIR [--new-bin DIR] [--no-gate]` (DIR holds `primusd`; `--no-gate`
//! runs the new nodes without the feature gate, the counterfactual, which must fail).

use anyhow::{bail, ensure, Context, Result};
use primus_client::{Client, ReadConsistency};
use primus_integration_tests::world::{World, WorldOptions};
use primus_testkit::mariadb::{Instance, Topology};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLUSTER: &str = "up";
const APP_USER: &str = "app";
const APP_PASS: &str = "app-pass";

struct Args {
    old_bin: PathBuf,
    new_bin: Option<PathBuf>,
    /// Run the new nodes without the feature gate (failpoint `features.no_gate`): the
    /// counterfactual, expected to fail.
    no_gate: bool,
}

fn args() -> Result<Args> {
    let mut old_bin = None;
    let mut new_bin = None;
    let mut no_gate = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--old-bin" => old_bin = it.next().map(PathBuf::from),
            "--new-bin" => new_bin = it.next().map(PathBuf::from),
            "--no-gate" => no_gate = true,
            "-h" | "--help" => {
                println!(
                    "upgrade --old-bin DIR [--new-bin DIR] [--no-gate]   (DIR: a directory holding a primusd \
                     binary; --no-gate: the new nodes run without the feature gate, which must fail)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let old_bin = old_bin.context("--old-bin DIR is required (a directory with the old release's primusd)")?;
    Ok(Args { old_bin, new_bin, no_gate })
}

/// What the application writer saw.
#[derive(Default)]
struct Tally {
    acked: std::sync::Mutex<BTreeSet<u64>>,
    failed: AtomicU64,
}

async fn app_insert(i: &Instance, id: u64) -> Result<()> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(i.host().to_string())
        .tcp_port(i.port())
        .user(Some(APP_USER))
        .pass(Some(APP_PASS))
        .prefer_socket(false);
    let mut c = mysql_async::Conn::new(opts).await?;
    c.query_drop(format!("INSERT INTO upgrade_test.acked (id) VALUES ({id})")).await?;
    c.disconnect().await?;
    Ok(())
}

/// Follow the primary through GetPrimary and insert unique rows until `stop`; holds
/// `gate` around each insert so that a pause waits for the one in flight.
fn spawn_writer(
    client: Client,
    all: Vec<Instance>,
    stop: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Mutex<()>>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut primary = String::new();
        let mut refreshed: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if refreshed.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
                if let Ok(r) = client.primary_stale(CLUSTER).await {
                    primary = r.state.map(|s| s.primary).unwrap_or_default();
                }
                refreshed = Some(Instant::now());
            }
            let Some(inst) = all.iter().find(|i| i.addr() == primary) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _held = gate.lock().await;
            n += 1;
            match tokio::time::timeout(Duration::from_secs(1), app_insert(inst, n)).await {
                Ok(Ok(())) => {
                    tally.acked.lock().unwrap_or_else(|p| p.into_inner()).insert(n);
                }
                _ => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    refreshed = None;
                }
            }
            drop(_held);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

struct Rehearsal {
    w: World,
    client: Client,
    new_primusd: PathBuf,
    /// Environment of the upgraded nodes.
    new_env: Vec<(String, String)>,
    /// Which node runs which release, for the report.
    upgraded: BTreeSet<u64>,
    gate: Arc<tokio::sync::Mutex<()>>,
    report: Vec<String>,
    t0: Instant,
}

impl Rehearsal {
    fn note(&mut self, line: String) {
        let line = format!("[{:>6.1} s] {line}", self.t0.elapsed().as_secs_f64());
        println!("{line}");
        self.report.push(line);
    }

    fn mix(&self) -> String {
        let n = self.upgraded.len();
        format!("{n} new + {} old", self.w.group.nodes.len() - n)
    }

    async fn switchover(&mut self) -> Result<()> {
        let before = self.client.primary(CLUSTER).await?.state.map(|s| s.primary).unwrap_or_default();
        let started = Instant::now();
        let r = self.client.failover(CLUSTER, None, true).await.context("switchover")?;
        let f = r.failover.context("switchover answered without a record")?;
        ensure!(f.outcome == "succeeded", "switchover {} ({}): {} {}", f.id, self.mix(), f.outcome, f.outcome_reason);
        self.client.ack(CLUSTER, None).await?;
        let mix = self.mix();
        self.note(format!(
            "switchover {} ({mix}): {before} -> {} epoch {} in {} ms, {} steps",
            f.id,
            f.candidate,
            f.epoch,
            started.elapsed().as_millis(),
            f.steps.len()
        ));
        Ok(())
    }

    /// Pause the writer, let the replicas catch up, kill -9 the primary, wait for the
    /// automatic failover, resume.
    async fn crash_failover(&mut self) -> Result<()> {
        let gate = self.gate.clone();
        let paused = gate.lock().await;
        let primary = self.client.primary(CLUSTER).await?.state.map(|s| s.primary).unwrap_or_default();
        let inst = self.w.sandbox.instances().iter().find(|i| i.addr() == primary).cloned();
        let inst = inst.with_context(|| format!("primary {primary:?} is not a sandbox instance"))?;
        let pos = inst.gtid_binlog_pos().await?;
        for r in self.w.sandbox.instances().iter().filter(|i| i.addr() != primary && i.is_running()) {
            r.wait_gtid(&pos, Duration::from_secs(15)).await?;
        }
        let before = self.client.history(CLUSTER).await?.failovers.len();
        inst.kill9()?;
        let killed = Instant::now();
        let f = loop {
            let h = self.client.history(CLUSTER).await;
            if let Ok(h) = h {
                if let Some(f) = h.failovers.get(before).filter(|f| f.outcome != "in_progress") {
                    break f.clone();
                }
            }
            ensure!(killed.elapsed() < Duration::from_secs(30), "no failover finished 30 s after kill -9 of {primary}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        ensure!(f.outcome == "succeeded", "failover {} ({}): {} {}", f.id, self.mix(), f.outcome, f.outcome_reason);
        self.client.ack(CLUSTER, None).await?;
        drop(paused);
        let mix = self.mix();
        self.note(format!(
            "kill -9 of primary {primary} ({mix}): automatic failover {} to {} epoch {} finished {} ms after the kill",
            f.id,
            f.candidate,
            f.epoch,
            killed.elapsed().as_millis()
        ));
        Ok(())
    }

    async fn group_levels(&self) -> Vec<(u64, u32, u32)> {
        let mut out = Vec::new();
        for id in self.w.group.nodes.keys().copied() {
            if let Ok(s) = self.w.group.status_of(id).await {
                out.push((id, s.feature_level, s.group_feature_level));
            }
        }
        out
    }

    /// Node `id` applies everything the leader committed (within 15 s).
    async fn wait_caught_up(&self, id: u64, what: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let leader = self.client.status().await;
            let mine = self.w.group.status_of(id).await;
            if let (Ok(l), Ok(m)) = (&leader, &mine) {
                if m.applied_index.unwrap_or(0) >= l.commit_index.unwrap_or(u64::MAX) {
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "node {id} ({what}) does not apply what the leader commits: leader {leader:?}, node {mine:?}\n--- \
                 its log ---\n{}",
                self.w.group.node(id).log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the old node `old` until an upgraded node leads, then start it again (same
    /// old binary): the window where a new leader replicates to an older member.
    /// (openraft resumes the leadership of a leader restarted at once.)
    async fn hand_leadership_to_new(&mut self, old: u64) -> Result<u64> {
        let (leader, _) = self.w.group.wait_leader(&[], Duration::from_secs(10)).await?;
        if leader == old {
            self.w.group.terminate(old, Duration::from_secs(20))?;
            let new: Vec<u64> = self.upgraded.iter().copied().collect();
            self.w.group.wait_leader(&new, Duration::from_secs(10)).await?;
            self.w.group.start_node(old)?;
        }
        let (leader, _) = self.w.group.wait_leader(&[], Duration::from_secs(10)).await?;
        ensure!(self.upgraded.contains(&leader), "node {leader} (old release) leads again");
        let mix = self.mix();
        self.note(format!("node {leader} (new release) leads, node {old} runs the old one ({mix})"));
        Ok(leader)
    }

    /// SIGTERM node `id`, start it with the new binary, wait until it has caught up.
    async fn upgrade(&mut self, id: u64) -> Result<()> {
        let stopped = Instant::now();
        let code = self.w.group.terminate(id, Duration::from_secs(20))?;
        self.w.group.node_mut(id).primusd = Some(self.new_primusd.clone());
        self.w.group.node_mut(id).env = self.new_env.clone();
        self.w.group.start_node(id)?;
        self.upgraded.insert(id);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.client.status().await;
            let mine = self.w.group.status_of(id).await;
            if let (Ok(l), Ok(m)) = (&leader, &mine) {
                if m.applied_index.unwrap_or(0) >= l.commit_index.unwrap_or(u64::MAX) {
                    break;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "node {id} did not catch up within 30 s of its upgrade: leader {leader:?}, node {mine:?}\n--- its \
                 log ---\n{}",
                self.w.group.node(id).log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mix = self.mix();
        self.note(format!(
            "node {id} upgraded ({mix}): stopped with exit code {code:?}, back and caught up in {} ms",
            stopped.elapsed().as_millis()
        ));
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let a = args()?;
    let old_primusd = a.old_bin.join("primusd");
    ensure!(old_primusd.exists(), "{} not found", old_primusd.display());
    let new_primusd = match a.new_bin {
        Some(d) => d.join("primusd"),
        None => primus_testkit::coordinator::bin("primusd")?,
    };
    ensure!(new_primusd.exists(), "{} not found", new_primusd.display());
    let t0 = Instant::now();
    let w = World::start(WorldOptions {
        topology: Topology::PrimaryWithReplicas(3),
        primusd: Some(old_primusd.clone()),
        ..Default::default()
    })
    .await?;
    w.register_sandbox(CLUSTER, Duration::from_millis(1500)).await?;
    let primary = w.sandbox.primary().clone();
    primary.exec("CREATE DATABASE upgrade_test").await?;
    primary.exec("CREATE TABLE upgrade_test.acked (id BIGINT PRIMARY KEY) ENGINE=InnoDB").await?;
    primary.exec(&format!("CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASS}'")).await?;
    primary.exec(&format!("GRANT SELECT, INSERT ON upgrade_test.* TO '{APP_USER}'@'%'")).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let client = w.client()?;
    let all: Vec<Instance> = w.sandbox.instances().to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let tally = Arc::new(Tally::default());
    let writer = spawn_writer(w.client()?, all.clone(), stop.clone(), gate.clone(), tally.clone());
    let new_env = if a.no_gate {
        vec![
            ("PRIMUS_FAULT_INJECTION".to_string(), "1".to_string()),
            ("PRIMUS_FAILPOINT".to_string(), "features.no_gate".to_string()),
        ]
    } else {
        Vec::new()
    };
    let mut r = Rehearsal { w, client, new_primusd, new_env, upgraded: BTreeSet::new(), gate, report: Vec::new(), t0 };
    if a.no_gate {
        r.note("--no-gate: the new nodes run WITHOUT the feature gate; this run is expected to fail".into());
    }
    r.note(format!("old group up: {} (every node)", old_primusd.display()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Before.
    r.switchover().await?;

    // During: followers first, the leader last.
    let (leader, _) = r.w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    let order: Vec<u64> =
        r.w.group.nodes.keys().copied().filter(|id| *id != leader).chain(std::iter::once(leader)).collect();
    r.upgrade(order[0]).await?;
    r.switchover().await?;
    r.upgrade(order[1]).await?;
    r.switchover().await?;
    // A new leader with an old follower: commands only the new release knows (the
    // lost-data_dir records, at least) would now be written but for the gate.
    r.hand_leadership_to_new(order[2]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.wait_caught_up(order[2], "old release, new leader").await?;
    r.switchover().await?;
    r.crash_failover().await?;
    r.wait_caught_up(order[2], "old release, new leader").await?;
    // A client command of the new release is refused, saying why, while an old node
    // remains (it could not decode it).
    match r.client.set_automatic_failover_all(false, "upgrade rehearsal").await {
        Err(e) if e.to_string().contains("needs group feature level") => {
            r.note(format!("`automatic off --all` refused in the mixed group: {e}"))
        }
        other => bail!("`automatic off --all` in a mixed group: {other:?}"),
    }
    let levels = r.group_levels().await;
    r.note(format!("feature levels (node, knows, group) with one old node left: {levels:?}"));
    ensure!(
        levels.iter().all(|(_, _, group)| *group <= 1),
        "the group's feature level rose while node {} still runs the old release: {levels:?}",
        order[2]
    );
    r.upgrade(order[2]).await?;

    // After: the level rises by itself.
    let raised = Instant::now();
    loop {
        let levels = r.group_levels().await;
        if levels.len() == 3 && levels.iter().all(|(_, knows, group)| group == knows && *group >= 2) {
            r.note(format!(
                "group feature level raised on every node {} ms after the last upgrade: {levels:?}",
                raised.elapsed().as_millis()
            ));
            break;
        }
        ensure!(
            raised.elapsed() < Duration::from_secs(20),
            "feature level not raised 20 s after the upgrade: {levels:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.client.set_automatic_failover_all(false, "upgrade rehearsal").await.context("automatic off --all")?;
    r.client.set_automatic_failover_all(true, "").await.context("automatic on --all")?;
    r.note("`automatic off --all` / `on --all` accepted once every node runs the new release".into());
    r.switchover().await?;
    r.crash_failover().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;

    // Nothing acknowledged lost, one writable server.
    let final_primary = r.client.primary(CLUSTER).await?.state.map(|s| s.primary).unwrap_or_default();
    let fp = all.iter().find(|i| i.addr() == final_primary).context("final primary is not a sandbox instance")?;
    let pos = fp.gtid_binlog_pos().await?;
    let acked = tally.acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut writable = Vec::new();
    for i in all.iter().filter(|i| i.is_running()) {
        if i.addr() != final_primary {
            i.wait_gtid(&pos, Duration::from_secs(15)).await.with_context(|| format!("{} catching up", i.addr()))?;
        }
        let rows: BTreeSet<u64> = i.query::<u64>("SELECT id FROM upgrade_test.acked").await?.into_iter().collect();
        let missing: Vec<&u64> = acked.difference(&rows).collect();
        ensure!(
            missing.is_empty(),
            "{}: {} acknowledged rows missing, e.g. {:?}",
            i.addr(),
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        if !i.read_only().await? {
            writable.push(i.addr());
        }
    }
    ensure!(writable == vec![final_primary.clone()], "writable servers: {writable:?}, primary {final_primary}");
    let mut undecodable = Vec::new();
    for (id, n) in &r.w.group.nodes {
        let log = std::fs::read_to_string(&n.log_path).unwrap_or_default();
        for pat in ["undecodable AppendEntries payload", "cannot apply a log entry", "unknown variant"] {
            if log.contains(pat) {
                undecodable.push(format!("node {id}: {pat}"));
            }
        }
    }
    ensure!(undecodable.is_empty(), "entries a node could not decode: {undecodable:?}");
    let audit = r.client.audit(10_000, ReadConsistency::Linearizable).await?;
    let raised_at: Vec<String> = audit
        .records
        .iter()
        .filter(|a| a.summary.starts_with("group feature level"))
        .map(|a| a.summary.clone())
        .collect();
    let h = r.client.history(CLUSTER).await?;
    r.note(format!(
        "done: {} failovers all succeeded; {} rows acknowledged (all on the final primary {final_primary} and its \
         replicas), {} writes refused or unanswered during failovers; audit: {raised_at:?}",
        h.failovers.len(),
        acked.len(),
        tally.failed.load(Ordering::Relaxed)
    ));
    println!("\nUPGRADE REHEARSAL PASSED\n{}", r.report.join("\n"));
    Ok(())
}

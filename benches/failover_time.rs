//! Failover time on real MariaDB replication watched by a real 3-node primusd group (issue 6).
//!
//! Every run starts from scratch: a fresh MariaDB sandbox (a primary and 2 replicas, GTID
//! replication) and a fresh group of 3 `primusd` processes with the `[mysql]` settings a user
//! gets by default (probe_interval_ms 1000, query_timeout_ms 1000, connect_timeout_ms 1000,
//! heartbeat_interval_ms 500; `[failover]` and `[raft]` defaults). Cluster "c" is registered,
//! the bench waits until every coordinator sees every instance and the replicas show progress,
//! writes some rows, and then:
//!
//! * **kill -9** (`FAILOVER_KILL_RUNS`, default 20) or **SIGSTOP** (`FAILOVER_STOP_RUNS`,
//!   default 10) of the primary at T0. T0 is spread over the probe interval (a wait of
//!   0..probe_interval_ms after setup, in golden-ratio steps): real faults are not aligned with
//!   primusd's probe tick, and without it every run would hit the same phase of that tick.
//!   Both replicas' `@@read_only` are polled every 5 ms until one is writable (T_writable);
//!   the failover time is T_writable − T0. The history
//!   record then gives the phases (wall-clock ms, same machine):
//!   - *detect*: T0 → the leader's analysis first leaves `NoProblem` (polled every 10 ms);
//!   - *confirm*: → the analysis says `DeadPrimary*` (a quorum of coordinators and the
//!     replicas agree the primary is gone);
//!   - *double-check*: → `StartFailover` proposed (`started_at_ms`: fresh probes, quorum
//!     confirmation of leadership, candidate choice). detect+confirm+double-check =
//!     `started_at_ms` − T0 is printed as *to-start*;
//!   - then one interval per step, each from the previous record's proposal to this step's
//!     (so each includes the Raft commit of the previous record and the leader's quorum
//!     check): *fence* (includes the `StartFailover` commit), *catch-up*, *promotion*,
//!     *repoint* (all repoint steps), *heartbeat*;
//!   - *raft commit*: `finished_at_ms` − the `complete` step's `at_ms`: the commit of one
//!     record, with no MySQL work in between.
//! * **kill -9 of the primary's mysqld and of the Raft leader's primusd together**
//!   (`FAILOVER_LEADER_KILL_RUNS`, default 0; issue 14): the same measurement, but the
//!   coordinator that would run the failover dies with the primary; the new leader must
//!   be elected, see the primary dead and fail over. With agents, the primary's agent
//!   lives and hands its lease back to whichever coordinator leads.
//! * **switchover** (`FAILOVER_SWITCHOVER_RUNS`, default 3): a writer inserts rows into the
//!   primary in a loop as an unprivileged user (so `read_only` applies to it), one row per
//!   transaction, remembering every acknowledged row and the time of every failed attempt;
//!   after a failure it moves to whichever instance is writable. `primusctl failover
//!   --switchover` (the client call) runs meanwhile. The write-unavailability window is the
//!   time from the first failed write to the first acknowledged write on the new primary;
//!   afterwards every acknowledged row must be on the new primary.
//!
//! `FAILOVER_AGENTS=1` starts a `primus-agent` beside every server (the README
//! sandbox's settings: lease TTL 1.5 s, renewal 300 ms, restart guard auto, lease
//! hand-back on), so a failover of a killed primary includes the agent's hand-back
//! (or the lease wait when there is none).
//!
//! Runs are interleaved (kill, stop, switchover) and no new run starts after
//! `FAILOVER_BUDGET_SECS` (default 540), so the whole bench stays around 10 minutes. A run that
//! fails is printed with the reason and counted; a failure after the fault (no promotion,
//! outcome not `succeeded`, …) also saves the primusd logs under `FAILOVER_LOG_DIR`
//! (default `$TMPDIR/primus-failover-time-<pid>`).
//!
//! Run: `scripts/bench.sh failover_time` (builds the release binaries first), or
//! `cargo build --release --workspace --bins && cargo bench -p primus-benches --bench failover_time`.
//! Goals from issue 6: kill -9 p50 <= 0.5 s and p99 <= 1.5 s; SIGSTOP p50 <= 3 s; switchover
//! write unavailability <= 1 s.

use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use primus_benches::{env_or, ms, quantile_ms, wall_ms};
use primus_client::{Client, ClusterSettings, FailoverView, HistoryResponse, ReadConsistency};
use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions};
use primus_testkit::mariadb::{find_binaries, Credentials, Instance, Sandbox, SandboxOptions, Topology};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLUSTER: &str = "c";
/// An application user without SUPER/READ_ONLY ADMIN: `read_only` stops its writes.
const APP_USER: &str = "bench_app";
const APP_PASSWORD: &str = "bench-app-pass";

/// The `[mysql]` timing a user gets when the section sets nothing (primusd's defaults).
#[derive(Debug, Clone, Copy)]
struct Timing {
    probe_interval_ms: u64,
    query_timeout_ms: u64,
    connect_timeout_ms: u64,
    heartbeat_interval_ms: u64,
}

const DEFAULT_TIMING: Timing =
    Timing { probe_interval_ms: 1000, query_timeout_ms: 1000, connect_timeout_ms: 1000, heartbeat_interval_ms: 500 };

fn between(later: u64, earlier: u64) -> Duration {
    Duration::from_millis(later.saturating_sub(earlier))
}

// ---------------------------------------------------------------------------------------------
// The world: a sandbox watched by a primusd group (as tests/lib.rs `world` builds it)
// ---------------------------------------------------------------------------------------------

struct World {
    // Dropped first: the agents, then the coordinators, before the servers they watch.
    _agents: Vec<primus_testkit::agent::AgentProc>,
    group: CoordinatorGroup,
    sandbox: Sandbox,
    _secrets: tempfile::TempDir,
    setup: Duration,
}

impl World {
    async fn start(t: Timing) -> Result<World> {
        let t0 = Instant::now();
        let sandbox = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
        let secrets = tempfile::tempdir()?;
        let extra = sandbox.coordinator_mysql_section(
            secrets.path(),
            None,
            &format!(
                "probe_interval_ms = {}\nquery_timeout_ms = {}\nconnect_timeout_ms = {}\nheartbeat_interval_ms = {}",
                t.probe_interval_ms, t.query_timeout_ms, t.connect_timeout_ms, t.heartbeat_interval_ms
            ),
        )?;
        let group = CoordinatorGroup::start(GroupOptions { nodes: 3, extra_config: extra, ..Default::default() })?;
        group.wait_leader(&[], Duration::from_secs(20)).await?;
        let w = World { _agents: Vec::new(), group, sandbox, _secrets: secrets, setup: Duration::ZERO };
        w.client()?
            .register_cluster(CLUSTER, &[w.sandbox.primary().addr()], ClusterSettings::default())
            .await
            .context("register cluster")?;
        w.wait_seen_by_all(Duration::from_secs(20)).await?;
        // Replicas show replication progress (heartbeats) before any fault.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        w.sandbox.insert_rows(100).await?;
        w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
        // FAILOVER_AGENTS=1: a primus-agent beside every server, as the README's sandbox
        // runs them (lease TTL 1.5 s, renewal every 300 ms, restart guard auto).
        let mut agents = Vec::new();
        if env_or("FAILOVER_AGENTS", 0u8) == 1 {
            let opts = primus_testkit::agent::AgentOptions {
                cluster: CLUSTER.into(),
                coordinators: vec![w.group.endpoints()],
                ..Default::default()
            };
            for i in w.sandbox.instances() {
                agents.push(primus_testkit::agent::AgentProc::start(i, &opts)?);
            }
            agents[0].wait_log("lease granted", Duration::from_secs(10)).await?;
            agents[0].wait_log("watching mysqld's process", Duration::from_secs(10)).await?;
        }
        Ok(World { _agents: agents, setup: t0.elapsed(), ..w })
    }

    fn client(&self) -> Result<Client> {
        self.group.client(Duration::from_secs(15))
    }

    async fn wait_seen_by_all(&self, timeout: Duration) -> Result<()> {
        let c = self.client()?;
        let deadline = Instant::now() + timeout;
        loop {
            let t = c.topology(CLUSTER, ReadConsistency::Linearizable).await;
            if let Ok(t) = &t {
                if t.instances.len() == 3
                    && t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("not every coordinator sees every instance after {timeout:?}; last topology: {t:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn by_addr(&self, addr: &str) -> Option<&Instance> {
        self.sandbox.instances().iter().find(|i| i.addr() == addr)
    }

    /// Copy every primusd log (and the MariaDB error logs) somewhere that outlives the run.
    fn save_logs(&self, label: &str) -> String {
        let dir = log_root().join(label);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return format!("(could not save logs: {e})");
        }
        for (id, n) in &self.group.nodes {
            let _ = std::fs::copy(&n.log_path, dir.join(format!("primusd-node{id}.log")));
        }
        for i in self.sandbox.instances() {
            let _ = std::fs::copy(i.error_log(), dir.join(format!("mariadb-{}.err", i.index())));
        }
        dir.display().to_string()
    }

    fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for (id, n) in &self.group.nodes {
            s.push_str(&format!("--- primusd node {id} (last {lines} lines) ---\n{}\n", n.log_tail(lines)));
        }
        s
    }
}

fn log_root() -> PathBuf {
    std::env::var_os("FAILOVER_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("primus-failover-time-{}", std::process::id())))
}

async fn read_only(i: &Instance) -> Option<bool> {
    tokio::time::timeout(Duration::from_millis(300), i.read_only()).await.ok().and_then(|r| r.ok())
}

async fn wait_finished(c: &Client, n: usize, timeout: Duration) -> Result<HistoryResponse> {
    let deadline = Instant::now() + timeout;
    loop {
        let h = c.history(CLUSTER).await;
        if let Ok(h) = &h {
            if h.failovers.len() >= n && h.failovers.iter().all(|f| f.outcome != "in_progress") {
                return Ok(h.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("failover not finished within {timeout:?}: {h:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe(f: &FailoverView) -> String {
    let mut s = format!(
        "failover {} kind={} analysis={} old={} candidate={} epoch={} outcome={} reason={:?}\n",
        f.id, f.kind, f.analysis_code, f.old_primary, f.candidate, f.epoch, f.outcome, f.outcome_reason
    );
    for st in &f.steps {
        s.push_str(&format!(
            "    step {} +{} ms: {} -> {}\n",
            st.index,
            st.at_ms.saturating_sub(f.started_at_ms),
            st.description,
            st.outcome
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Phases from the history record
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Steps {
    fence: Option<Duration>,
    catch_up: Option<Duration>,
    promotion: Option<Duration>,
    repoint: Option<Duration>,
    heartbeat: Option<Duration>,
    /// Commit of one record (the `complete` step), nothing else.
    raft_commit: Option<Duration>,
}

fn add(slot: &mut Option<Duration>, d: Duration) {
    *slot = Some(slot.unwrap_or_default() + d);
}

fn steps_of(f: &FailoverView) -> Steps {
    let mut s = Steps::default();
    let mut prev = f.started_at_ms;
    let mut complete_at = None;
    for st in &f.steps {
        let d = between(st.at_ms, prev);
        prev = st.at_ms;
        let desc = st.description.as_str();
        if desc.starts_with("fence") {
            add(&mut s.fence, d);
        } else if desc.starts_with("wait for") {
            add(&mut s.catch_up, d);
        } else if desc.starts_with("promote") {
            add(&mut s.promotion, d);
        } else if desc.starts_with("repoint") {
            add(&mut s.repoint, d);
        } else if desc.starts_with("write heartbeat") {
            add(&mut s.heartbeat, d);
        } else if desc == "complete" {
            complete_at = Some(st.at_ms);
        }
    }
    if let (Some(c), Some(fin)) = (complete_at, f.finished_at_ms) {
        s.raft_commit = Some(between(fin, c));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Analysis watcher: when the leader's analysis first changed, and first said DeadPrimary
// ---------------------------------------------------------------------------------------------

struct AnalysisWatch {
    stop: Arc<AtomicBool>,
    first_abnormal: Arc<AtomicU64>,
    first_dead: Arc<AtomicU64>,
    /// Every analysis code seen after T0, with the first `at_ms` it was computed at.
    trail: Arc<Mutex<Vec<(String, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AnalysisWatch {
    fn start(client: Client, since_ms: u64) -> AnalysisWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let first_abnormal = Arc::new(AtomicU64::new(u64::MAX));
        let first_dead = Arc::new(AtomicU64::new(u64::MAX));
        let trail = Arc::new(Mutex::new(Vec::new()));
        let (s, a, d, tr) = (stop.clone(), first_abnormal.clone(), first_dead.clone(), trail.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), client.analysis(CLUSTER)).await {
                    if r.at_ms >= since_ms {
                        let mut t: std::sync::MutexGuard<'_, Vec<(String, u64)>> =
                            tr.lock().unwrap_or_else(|p| p.into_inner());
                        if t.last().is_none_or(|(c, _)| *c != r.code) {
                            t.push((r.code.clone(), r.at_ms));
                        }
                        drop(t);
                        if r.code != "NoProblem" {
                            a.fetch_min(r.at_ms, Ordering::Relaxed);
                        }
                        if r.code.starts_with("DeadPrimary") && r.actionable {
                            d.fetch_min(r.at_ms, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        AnalysisWatch { stop, first_abnormal, first_dead, trail, task }
    }

    /// (first abnormal at_ms, first actionable DeadPrimary at_ms, "code@+ms ..." since `t0_ms`)
    async fn finish(self, t0_ms: u64) -> (Option<u64>, Option<u64>, String) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let get = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|v| *v != u64::MAX);
        let trail = self.trail.lock().unwrap_or_else(|p| p.into_inner());
        let text: Vec<String> = trail.iter().map(|(c, at)| format!("{c}@+{}", at.saturating_sub(t0_ms))).collect();
        (get(&self.first_abnormal), get(&self.first_dead), text.join(" "))
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 / SIGSTOP runs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill9,
    Stop,
    /// kill -9 of the primary's mysqld and of the Raft leader's primusd at once.
    Kill9WithLeader,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill9",
            Fault::Stop => "sigstop",
            Fault::Kill9WithLeader => "kill9+leader",
        }
    }
}

#[derive(Debug, Clone)]
struct FaultRun {
    /// T0 → a replica is writable.
    total: Duration,
    /// T0 → the record is finished.
    finished: Option<Duration>,
    detect: Option<Duration>,
    confirm: Option<Duration>,
    double_check: Option<Duration>,
    /// T0 → StartFailover proposed.
    to_start: Duration,
    steps: Steps,
    /// Analysis codes after T0: "Code@+ms ...".
    trail: String,
    /// Extra wait before the fault (spreads T0 over the probe interval).
    jitter: Duration,
}

enum Failure {
    /// Before the fault: the bench's own setup failed; says nothing about primus.
    Setup(anyhow::Error),
    /// After the fault (or during the switchover): primus did not do its job in time.
    Primus(anyhow::Error),
}

async fn fault_run(fault: Fault, run: usize, t: Timing) -> Result<(FaultRun, Duration), Failure> {
    let mut w = World::start(t).await.map_err(Failure::Setup)?;
    let setup = w.setup;
    // Spread the fault over the probe schedule: primusd probes every instance on a fixed
    // tick, and the bench's setup is regular enough that without this every run would hit
    // the same phase of that tick (golden-ratio steps cover the interval evenly).
    let phase = (run as f64 * 0.618_034).fract();
    let jitter = Duration::from_millis((phase * t.probe_interval_ms as f64) as u64);
    tokio::time::sleep(jitter).await;
    let r = measure_fault(&mut w, fault).await;
    if fault == Fault::Stop {
        let _ = w.sandbox.primary().sigcont();
    }
    match r {
        Ok(r) => Ok((FaultRun { jitter, ..r }, setup)),
        Err(e) => {
            let saved = w.save_logs(&format!("{}-run{run}", fault.label()));
            Err(Failure::Primus(e.context(format!("logs saved in {saved}\n{}", w.log_tails(12)))))
        }
    }
}

async fn measure_fault(w: &mut World, fault: Fault) -> Result<FaultRun> {
    let client = w.client()?;
    let rows_before = w.sandbox.primary().test_row_count().await?;
    let old = w.sandbox.primary().addr();
    let watch_client = w.group.client(Duration::from_secs(2))?;

    let leader = match fault {
        Fault::Kill9WithLeader => Some(w.group.wait_leader(&[], Duration::from_secs(5)).await?.0),
        _ => None,
    };
    let t0_wall = wall_ms();
    let watch = AnalysisWatch::start(watch_client, t0_wall);
    let t0 = Instant::now();
    match fault {
        Fault::Kill9 => w.sandbox.primary().kill9()?,
        Fault::Stop => w.sandbox.primary().sigstop()?,
        Fault::Kill9WithLeader => {
            w.sandbox.primary().kill9()?;
            w.group.kill9(leader.ok_or_else(|| anyhow!("no leader"))?)?;
        }
    }
    let limit = match fault {
        Fault::Kill9 | Fault::Kill9WithLeader => Duration::from_secs(10),
        Fault::Stop => Duration::from_secs(20),
    };
    let mut writable: Option<(Instance, Instant)> = None;
    while writable.is_none() {
        for i in w.sandbox.replicas() {
            if read_only(i).await == Some(false) {
                writable = Some((i.clone(), Instant::now()));
                break;
            }
        }
        if writable.is_none() {
            if t0.elapsed() > limit {
                let h = client.history(CLUSTER).await.map(|h| h.failovers.iter().map(describe).collect::<String>());
                let a = client.analysis(CLUSTER).await;
                let (_, _, trail) = watch.finish(t0_wall).await;
                bail!(
                    "no replica writable {limit:?} after {}; analysis trail {trail}; last analysis {a:?}; history: {h:?}",
                    fault.label()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (promoted, at) = writable.ok_or_else(|| anyhow!("unreachable"))?;
    let total = at - t0;

    let h = wait_finished(&client, 1, Duration::from_secs(30)).await;
    let (first_abnormal, first_dead, trail) = watch.finish(t0_wall).await;
    let h = h?;
    let f = h.failovers.last().ok_or_else(|| anyhow!("empty history"))?;
    if h.failovers.len() != 1 || f.outcome != "succeeded" || f.candidate != promoted.addr() || f.old_primary != old {
        bail!(
            "unexpected history ({} record(s)); writable replica {}; analysis trail {trail}:\n{}",
            h.failovers.len(),
            promoted.addr(),
            h.failovers.iter().map(describe).collect::<String>()
        );
    }
    let rows = promoted.test_row_count().await?;
    if rows < rows_before {
        bail!("rows lost: {rows_before} on the old primary, {rows} on the promoted replica");
    }
    let start = f.started_at_ms;
    Ok(FaultRun {
        total,
        finished: f.finished_at_ms.map(|fin| between(fin, t0_wall)),
        detect: first_abnormal.map(|a| between(a, t0_wall)),
        confirm: first_abnormal.zip(first_dead).map(|(a, d)| between(d, a)),
        double_check: first_dead.map(|d| between(start, d)),
        to_start: between(start, t0_wall),
        steps: steps_of(f),
        trail,
        jitter: Duration::ZERO,
    })
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", ms(d))).unwrap_or_else(|| "-".into())
}

fn fault_line(fault: Fault, run: usize, r: &FaultRun, setup: Duration) -> String {
    let s = &r.steps;
    format!(
        "{} run {run} (fault +{} ms): writable after {:.0} ms | detect {} confirm {} double-check {} (to-start {:.0}) | fence {} \
         catch-up {} promotion {} repoint {} heartbeat {} raft-commit {} | finished {} ms | setup {:.1} s | \
         analysis {}",
        fault.label(),
        r.jitter.as_millis(),
        ms(r.total),
        opt_ms(r.detect),
        opt_ms(r.confirm),
        opt_ms(r.double_check),
        ms(r.to_start),
        opt_ms(s.fence),
        opt_ms(s.catch_up),
        opt_ms(s.promotion),
        opt_ms(s.repoint),
        opt_ms(s.heartbeat),
        opt_ms(s.raft_commit),
        opt_ms(r.finished),
        setup.as_secs_f64(),
        r.trail
    )
}

/// "p50 X ms (p99 Y)" of the runs where `pick` gives a value.
fn phase(runs: &[FaultRun], pick: impl Fn(&FaultRun) -> Option<Duration>) -> String {
    let v: Vec<Duration> = runs.iter().filter_map(pick).collect();
    if v.is_empty() {
        return "-".into();
    }
    format!("p50 {:.0} ms (p99 {:.0})", quantile_ms(&v, 0.5), quantile_ms(&v, 0.99))
}

fn fault_summary(fault: Fault, runs: &[FaultRun], failed: usize, setup_failed: usize, skipped: usize) {
    let totals: Vec<Duration> = runs.iter().map(|r| r.total).collect();
    let header = if totals.is_empty() {
        format!("failover_time {}: n=0", fault.label())
    } else {
        format!(
            "failover_time {}: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
            fault.label(),
            totals.len(),
            quantile_ms(&totals, 0.5),
            quantile_ms(&totals, 0.99),
            quantile_ms(&totals, 1.0)
        )
    };
    println!(
        "{header}; detection {}; confirmation {}; double-check {}; to-start {}; fence {}; catch-up {}; \
         promotion {}; repoint {}; heartbeat {}; raft commit {}; finished {}; failed {failed}, setup errors \
         {setup_failed}, skipped {skipped}",
        phase(runs, |r| r.detect),
        phase(runs, |r| r.confirm),
        phase(runs, |r| r.double_check),
        phase(runs, |r| Some(r.to_start)),
        phase(runs, |r| r.steps.fence),
        phase(runs, |r| r.steps.catch_up),
        phase(runs, |r| r.steps.promotion),
        phase(runs, |r| r.steps.repoint),
        phase(runs, |r| r.steps.heartbeat),
        phase(runs, |r| r.steps.raft_commit),
        phase(runs, |r| r.finished),
    );
}

fn goal(what: &str, value: f64, limit: f64, failed: usize) {
    let verdict = if value.is_nan() {
        "NOT met (no successful run)".to_string()
    } else if failed > 0 {
        format!("NOT met ({failed} run(s) failed after the fault)")
    } else if value <= limit {
        "met".to_string()
    } else {
        "NOT met".to_string()
    };
    println!("failover_time goal check: {what} {value:.0} ms (goal <= {limit:.0} ms): {verdict}");
}

// ---------------------------------------------------------------------------------------------
// Switchover with a writer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct WriterLog {
    /// (row value, acknowledged at, instance addr)
    acked: Vec<(String, Instant, String)>,
    failures: Vec<Instant>,
    errors: Vec<String>,
}

async fn writer(instances: Vec<Instance>, stop: Arc<AtomicBool>) -> WriterLog {
    let creds = Credentials { user: APP_USER.into(), password: APP_PASSWORD.into() };
    let mut log = WriterLog::default();
    let mut target = 0usize;
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    let op = Duration::from_millis(1000);
    while !stop.load(Ordering::Relaxed) {
        let addr = instances[target].addr();
        if conn.is_none() {
            match tokio::time::timeout(op, Conn::new(creds.opts(instances[target].socket_addr()))).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    log.failures.push(Instant::now());
                    note(&mut log.errors, format!("connect {addr}: {e}"));
                }
                Err(_) => {
                    log.failures.push(Instant::now());
                    note(&mut log.errors, format!("connect {addr}: timeout"));
                }
            }
        }
        let mut failed = conn.is_none();
        if let Some(c) = conn.as_mut() {
            let v = format!("sw-{seq}");
            seq += 1;
            let sql = format!("INSERT INTO primus_test.t (v) VALUES ('{v}')");
            match tokio::time::timeout(op, c.query_drop(sql)).await {
                Ok(Ok(())) => log.acked.push((v, Instant::now(), addr.clone())),
                Ok(Err(e)) => {
                    failed = true;
                    log.failures.push(Instant::now());
                    note(&mut log.errors, format!("insert on {addr}: {e}"));
                }
                Err(_) => {
                    failed = true;
                    log.failures.push(Instant::now());
                    note(&mut log.errors, format!("insert on {addr}: timeout"));
                }
            }
        }
        if failed {
            if let Some(c) = conn.take() {
                drop(tokio::time::timeout(Duration::from_millis(100), c.disconnect()).await);
            }
            // Move to whichever instance is writable now (stay if none is).
            for (k, i) in instances.iter().enumerate() {
                if read_only(i).await == Some(false) {
                    target = k;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if let Some(c) = conn.take() {
        drop(tokio::time::timeout(Duration::from_millis(100), c.disconnect()).await);
    }
    log
}

fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 8 && !errors.contains(&e) {
        errors.push(e);
    }
}

#[derive(Debug)]
struct SwitchoverRun {
    /// First failed write → first acknowledged write on the new primary.
    window: Duration,
    /// Longest time without an acknowledged write around the switchover.
    max_gap: Duration,
    /// The switchover call's duration.
    call: Duration,
    acked: usize,
    failed_attempts: usize,
    steps: Steps,
}

async fn switchover_run(run: usize, t: Timing) -> Result<(SwitchoverRun, Duration), Failure> {
    let w = World::start(t).await.map_err(Failure::Setup)?;
    let p = w.sandbox.primary();
    let prep = async {
        p.exec(&format!("CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'")).await?;
        p.exec(&format!("GRANT SELECT, INSERT ON primus_test.* TO '{APP_USER}'@'%'")).await?;
        w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await
    };
    prep.await.map_err(Failure::Setup)?;
    let setup = w.setup;
    match measure_switchover(&w).await {
        Ok(r) => Ok((r, setup)),
        Err(e) => {
            let saved = w.save_logs(&format!("switchover-run{run}"));
            Err(Failure::Primus(e.context(format!("logs saved in {saved}\n{}", w.log_tails(12)))))
        }
    }
}

async fn measure_switchover(w: &World) -> Result<SwitchoverRun> {
    let client = w.client()?;
    let old = w.sandbox.primary().addr();
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(writer(w.sandbox.instances().to_vec(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let t_call = Instant::now();
    let r = client.failover(CLUSTER, None, true).await;
    let call = t_call.elapsed();
    // Let the writer find the new primary and write there for a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let log = task.await.context("writer task")?;

    let h = client.history(CLUSTER).await.map(|h| h.failovers.iter().map(describe).collect::<String>());
    let f = match r {
        Ok(r) => r.failover.ok_or_else(|| anyhow!("switchover answered without a record; history: {h:?}"))?,
        Err(e) => bail!("switchover call failed after {call:?}: {e}; history: {h:?}; writer errors {:?}", log.errors),
    };
    if f.outcome != "succeeded" {
        bail!("switchover did not succeed:\n{}writer errors: {:?}", describe(&f), log.errors);
    }
    let new = f.candidate.clone();
    let new_i = w.by_addr(&new).ok_or_else(|| anyhow!("new primary {new} is not a sandbox instance"))?;
    if new == old {
        bail!("switchover kept {old} as primary");
    }

    let first_fail = log.failures.iter().copied().find(|t| *t >= t_call);
    let window = match first_fail {
        Some(ff) => {
            let ok = log.acked.iter().find(|(_, at, a)| *at > ff && *a == new).map(|(_, at, _)| *at);
            let ok = ok.ok_or_else(|| {
                anyhow!(
                    "no write acknowledged on the new primary {new} after the first failure; errors {:?}",
                    log.errors
                )
            })?;
            ok - ff
        }
        None => Duration::ZERO,
    };
    let mut max_gap = Duration::ZERO;
    let mut prev = t_call;
    for (_, at, _) in log.acked.iter().filter(|(_, at, _)| *at >= t_call) {
        max_gap = max_gap.max(*at - prev);
        prev = *at;
    }
    if !log.acked.iter().any(|(_, at, a)| *at >= t_call && *a == new) {
        bail!("the writer never wrote to the new primary {new}; errors {:?}", log.errors);
    }

    // Zero acknowledged rows lost: every one is on the new primary.
    let present: BTreeSet<String> =
        new_i.query::<String>("SELECT v FROM primus_test.t WHERE v LIKE 'sw-%'").await?.into_iter().collect();
    let lost: Vec<&String> = log.acked.iter().map(|(v, _, _)| v).filter(|v| !present.contains(*v)).collect();
    if !lost.is_empty() || present.len() < log.acked.len() {
        bail!(
            "{} acknowledged row(s) missing on the new primary {new} ({} acknowledged, {} present), e.g. {:?}\n{}",
            lost.len(),
            log.acked.len(),
            present.len(),
            lost.iter().take(5).collect::<Vec<_>>(),
            describe(&f)
        );
    }
    println!("  switchover {}", describe(&f).trim_end().replace('\n', "\n  "));
    println!("  writer errors seen: {:?}", log.errors);
    Ok(SwitchoverRun {
        window,
        max_gap,
        call,
        acked: log.acked.len(),
        failed_attempts: log.failures.len(),
        steps: steps_of(&f),
    })
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fault(Fault),
    Switchover,
}

/// Interleave the runs so that a cut by the time budget leaves every kind represented.
fn schedule(kill: usize, stop: usize, switchover: usize, with_leader: usize) -> Vec<Kind> {
    let kinds = [
        (Kind::Fault(Fault::Kill9), kill),
        (Kind::Fault(Fault::Stop), stop),
        (Kind::Switchover, switchover),
        (Kind::Fault(Fault::Kill9WithLeader), with_leader),
    ];
    let mut done = [0usize; 4];
    let mut out = Vec::new();
    for _ in 0..kill + stop + switchover + with_leader {
        let k = (0..4)
            .filter(|k| done[*k] < kinds[*k].1)
            .min_by(|a, b| {
                let ra = done[*a] as f64 / kinds[*a].1 as f64;
                let rb = done[*b] as f64 / kinds[*b].1 as f64;
                ra.total_cmp(&rb)
            })
            .unwrap_or(0);
        done[k] += 1;
        out.push(kinds[k].0);
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    for b in ["primusd", "primusctl"] {
        bin(b).with_context(|| {
            format!(
                "release binary {b} missing: run scripts/bench.sh failover_time, or \
                 `cargo build --release --workspace --bins` before `cargo bench`"
            )
        })?;
    }
    let mariadb = find_binaries()?;
    let kill_runs: usize = env_or("FAILOVER_KILL_RUNS", 20);
    let stop_runs: usize = env_or("FAILOVER_STOP_RUNS", 10);
    let sw_runs: usize = env_or("FAILOVER_SWITCHOVER_RUNS", 3);
    let leader_runs: usize = env_or("FAILOVER_LEADER_KILL_RUNS", 0);
    let budget = Duration::from_secs(env_or("FAILOVER_BUDGET_SECS", 540));
    let t = DEFAULT_TIMING;
    println!(
        "failover_time config: [mysql] probe_interval_ms={} query_timeout_ms={} connect_timeout_ms={} \
         heartbeat_interval_ms={} (primusd defaults); [failover] and [raft] defaults; MariaDB {}; 3 coordinators, \
         primary + 2 replicas; agents: {}; runs: kill9={kill_runs} sigstop={stop_runs} switchover={sw_runs} \
         kill9+leader={leader_runs}; \
         budget {} s",
        t.probe_interval_ms,
        t.query_timeout_ms,
        t.connect_timeout_ms,
        t.heartbeat_interval_ms,
        mariadb.version,
        if env_or("FAILOVER_AGENTS", 0u8) == 1 { "one beside every server (FAILOVER_AGENTS=1)" } else { "none" },
        budget.as_secs()
    );

    let began = Instant::now();
    let mut kill: Vec<FaultRun> = Vec::new();
    let mut stop: Vec<FaultRun> = Vec::new();
    let mut with_leader: Vec<FaultRun> = Vec::new();
    let mut sw: Vec<SwitchoverRun> = Vec::new();
    // [failed after the fault, setup errors, skipped] per kind: kill9, sigstop, switchover,
    // kill9+leader.
    let mut counts = [[0usize; 3]; 4];
    let mut n = [0usize; 4];
    for kind in schedule(kill_runs, stop_runs, sw_runs, leader_runs) {
        let k = match kind {
            Kind::Fault(Fault::Kill9) => 0,
            Kind::Fault(Fault::Stop) => 1,
            Kind::Switchover => 2,
            Kind::Fault(Fault::Kill9WithLeader) => 3,
        };
        n[k] += 1;
        let run = n[k];
        if began.elapsed() > budget {
            counts[k][2] += 1;
            continue;
        }
        let failure = match kind {
            Kind::Fault(fault) => match fault_run(fault, run, t).await {
                Ok((r, setup)) => {
                    println!("{}", fault_line(fault, run, &r, setup));
                    match fault {
                        Fault::Kill9 => &mut kill,
                        Fault::Stop => &mut stop,
                        Fault::Kill9WithLeader => &mut with_leader,
                    }
                    .push(r);
                    None
                }
                Err(f) => Some(f),
            },
            Kind::Switchover => match switchover_run(run, t).await {
                Ok((r, setup)) => {
                    println!(
                        "switchover run {run}: unavailability {:.0} ms (max gap between acks {:.0} ms), call {:.0} ms, \
                         {} rows acknowledged, {} failed attempts, 0 lost | fence {} catch-up {} promotion {} \
                         repoint {} heartbeat {} raft-commit {} | setup {:.1} s",
                        ms(r.window),
                        ms(r.max_gap),
                        ms(r.call),
                        r.acked,
                        r.failed_attempts,
                        opt_ms(r.steps.fence),
                        opt_ms(r.steps.catch_up),
                        opt_ms(r.steps.promotion),
                        opt_ms(r.steps.repoint),
                        opt_ms(r.steps.heartbeat),
                        opt_ms(r.steps.raft_commit),
                        setup.as_secs_f64()
                    );
                    sw.push(r);
                    None
                }
                Err(f) => Some(f),
            },
        };
        let label = ["kill9", "sigstop", "switchover", "kill9+leader"][k];
        match failure {
            None => {}
            Some(Failure::Setup(e)) => {
                counts[k][1] += 1;
                println!("{label} run {run}: SETUP ERROR (not counted against primus): {e:#}");
            }
            Some(Failure::Primus(e)) => {
                counts[k][0] += 1;
                println!("{label} run {run}: FAILED: {e:#}");
            }
        }
    }

    println!("failover_time: {} runs in {:.0} s", n.iter().sum::<usize>(), began.elapsed().as_secs_f64());
    fault_summary(Fault::Kill9, &kill, counts[0][0], counts[0][1], counts[0][2]);
    fault_summary(Fault::Stop, &stop, counts[1][0], counts[1][1], counts[1][2]);
    if leader_runs > 0 {
        fault_summary(Fault::Kill9WithLeader, &with_leader, counts[3][0], counts[3][1], counts[3][2]);
    }
    let windows: Vec<Duration> = sw.iter().map(|r| r.window).collect();
    let gaps: Vec<Duration> = sw.iter().map(|r| r.max_gap).collect();
    println!(
        "switchover unavailability: n={} p50={:.0} ms max={:.0} ms (longest gap between acknowledged writes: p50 \
         {:.0} ms, max {:.0} ms); acknowledged rows lost: 0 in every successful run; failed {}, setup errors {}, \
         skipped {}",
        windows.len(),
        quantile_ms(&windows, 0.5),
        quantile_ms(&windows, 1.0),
        quantile_ms(&gaps, 0.5),
        quantile_ms(&gaps, 1.0),
        counts[2][0],
        counts[2][1],
        counts[2][2]
    );
    let totals = |runs: &[FaultRun]| runs.iter().map(|r| r.total).collect::<Vec<_>>();
    goal("kill9 p50", quantile_ms(&totals(&kill), 0.5), 500.0, counts[0][0]);
    goal("kill9 p99", quantile_ms(&totals(&kill), 0.99), 1500.0, counts[0][0]);
    goal("sigstop p50", quantile_ms(&totals(&stop), 0.5), 3000.0, counts[1][0]);
    goal("switchover unavailability max", quantile_ms(&windows, 1.0), 1000.0, counts[2][0]);
    if leader_runs > 0 {
        // Issue 14's goal, with agents on.
        goal("kill9+leader p50", quantile_ms(&totals(&with_leader), 0.5), 1200.0, counts[3][0]);
    }
    Ok(())
}

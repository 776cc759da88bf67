//! One schedule on real processes: the lab (namespaces on a bridge, MariaDB servers
//! with their agents, primusd coordinators, client processes), the nemesis that
//! injects and undoes the schedule's faults, the read_only sampler, the final heal
//! and convergence wait, and the checker's verdict.

use crate::check::{self, DivergenceSeen, Final, Tally, Violation, Write};
use crate::schedule::{Episode, Fault, Role, Schedule};
use crate::workload::{mono_us, read_history};
use anyhow::{anyhow, bail, Context, Result};
use mysql_async::prelude::Queryable;
use primus_client::ReadConsistency;
use primus_testkit::agent::{AgentOptions, AgentProc};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use primus_testkit::mariadb::{Instance, Sandbox, SandboxOptions, Topology};
use primus_testkit::netns::{NetHost, NetLab};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLUSTER: &str = "nem";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// After the last heal, the cluster must settle within this.
const CONVERGE_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct OneOptions {
    pub seed: u64,
    pub seconds: u64,
    pub coordinators: usize,
    /// The schedule's directory (logs, history, result.json).
    pub dir: PathBuf,
    /// Which 10.77.X.0/24 the lab uses (schedules run at once must differ).
    pub subnet: u8,
    /// Start no primus-agent: a deliberately unsafe deployment (nothing fences a
    /// primary nobody can reach), to show that the checker catches split brain.
    pub no_agents: bool,
}

/// A primary change seen by the sampler, blamed on the fault injected last before it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimaryChange {
    pub to: String,
    pub at_ms: u64,
    /// Kind of the latest fault injected before the change (none: no fault yet).
    pub cause: String,
    /// From that fault's injection to the first sample showing the new primary writable.
    pub time_to_writable_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InjectedEpisode {
    pub at_ms: u64,
    pub kind: String,
    /// What it was resolved to, or why it could not be injected.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverSeen {
    pub id: String,
    pub kind: String,
    pub outcome: String,
    pub old_primary: String,
    pub candidate: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneResult {
    pub seed: u64,
    pub seconds: u64,
    pub coordinators: usize,
    pub no_loss: bool,
    pub episodes: Vec<InjectedEpisode>,
    pub failovers: Vec<FailoverSeen>,
    pub changes: Vec<PrimaryChange>,
    pub tally: Tally,
    pub violations: Vec<Violation>,
    pub final_state: Final,
    pub replay: String,
}

/// Where a resolved fault landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Db(usize),
    Co(u64),
    Cl(usize),
}

/// How to undo an injected episode.
#[derive(Debug, Clone)]
enum Undo {
    Nothing,
    RestartMysqld(usize),
    ContMysqld(usize),
    RestartAgent(usize),
    ContAgent(usize),
    RestartPrimusd(u64),
    ContPrimusd(u64),
    Unblock(Vec<(Host, Host)>),
    Clock(Host),
    EndMaintenance(String),
}

struct Lab {
    // Dropped in this order: clients, agents (they lift their port blocks), group,
    // sandbox; the lab's namespaces last.
    workload: Vec<Child>,
    agents: Vec<AgentProc>,
    group: CoordinatorGroup,
    sandbox: Sandbox,
    dbs: Vec<NetHost>,
    coords: Vec<NetHost>,
    clients: Vec<NetHost>,
    dir: PathBuf,
    /// Blocked (from, to) pairs with how many episodes hold each.
    blocks: BTreeMap<(Host, Host), usize>,
    /// Processes the nemesis itself killed or stopped (their exit is no crash).
    killed: BTreeSet<String>,
    crashed: Vec<String>,
    /// Instances maintenance was asked for (ended again at the heal).
    maintained: BTreeSet<String>,
    net: NetLab,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The servers run in their own process groups (their files are kept for a
        // failing schedule): stop them here.
        self.sandbox.kill_all();
    }
}

fn clock_file(dir: &Path, h: Host) -> PathBuf {
    match h {
        Host::Db(i) => dir.join(format!("clock-db{i}")),
        Host::Co(n) => dir.join(format!("clock-c{n}")),
        Host::Cl(i) => dir.join(format!("clock-client{i}")),
    }
}

fn faketime_env(file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
    ]
}

impl Lab {
    fn host(&self, h: Host) -> &NetHost {
        match h {
            Host::Db(i) => &self.dbs[i],
            Host::Co(n) => &self.coords[(n - 1) as usize],
            Host::Cl(i) => &self.clients[i],
        }
    }

    fn all_hosts(&self) -> Vec<Host> {
        let mut v: Vec<Host> = (0..self.dbs.len()).map(Host::Db).collect();
        v.extend((1..=self.coords.len() as u64).map(Host::Co));
        v.extend((0..self.clients.len()).map(Host::Cl));
        v
    }

    fn agent(&mut self, i: usize) -> Result<&mut AgentProc> {
        self.agents.get_mut(i).ok_or_else(|| anyhow!("no agent runs beside db{i}"))
    }

    fn inst(&self, i: usize) -> &Instance {
        self.sandbox.instance(i)
    }

    fn index_of(&self, addr: &str) -> Option<usize> {
        self.sandbox.instances().iter().position(|i| i.addr() == addr)
    }

    /// The primary as the coordinators name it (any that answers), else db0.
    async fn primary(&self) -> usize {
        for id in self.group.nodes.keys() {
            if let Ok(c) = self.group.client_for(&[*id], Duration::from_millis(300)) {
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(400), c.primary_stale(CLUSTER)).await {
                    if let Some(i) = r.state.and_then(|s| self.index_of(&s.primary)) {
                        return i;
                    }
                }
            }
        }
        0
    }

    async fn leader(&self) -> u64 {
        for id in self.group.nodes.keys() {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(400), self.group.status_of(*id)).await {
                if let Some(l) = s.leader_id {
                    return l;
                }
            }
        }
        1
    }

    async fn resolve(&self, r: &Role) -> Host {
        match r {
            Role::Primary => Host::Db(self.primary().await),
            Role::Replica(pick) => {
                let p = self.primary().await;
                let others: Vec<usize> = (0..self.dbs.len()).filter(|i| *i != p).collect();
                Host::Db(others[(*pick as usize) % others.len()])
            }
            Role::Leader => Host::Co(self.leader().await),
            Role::Follower(pick) => {
                let l = self.leader().await;
                let others: Vec<u64> = (1..=self.coords.len() as u64).filter(|i| *i != l).collect();
                Host::Co(others[(*pick as usize) % others.len()])
            }
            Role::Server(i) => Host::Db(*i),
            Role::Coord(n) => Host::Co(*n),
            Role::Client(i) => Host::Cl(*i),
        }
    }

    fn name(&self, h: Host) -> String {
        match h {
            Host::Db(i) => format!("db{i} ({})", self.inst(i).addr()),
            Host::Co(n) => format!("c{n} ({})", self.group.node(n).addr()),
            Host::Cl(i) => format!("client{i} ({})", self.clients[i].addr),
        }
    }

    fn block(&mut self, from: Host, to: Host) -> Result<()> {
        let n = self.blocks.entry((from, to)).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.net.block(self.host(from), self.host(to))?;
        }
        Ok(())
    }

    fn unblock(&mut self, from: Host, to: Host) -> Result<()> {
        let Some(n) = self.blocks.get_mut(&(from, to)) else { return Ok(()) };
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.blocks.remove(&(from, to));
            self.net.unblock(self.host(from), self.host(to))?;
        }
        Ok(())
    }

    async fn inject(&mut self, f: &Fault) -> Result<(String, Undo)> {
        let client = self.group.client(Duration::from_secs(5))?;
        Ok(match f {
            Fault::KillMysqld(r) => {
                let Host::Db(i) = self.resolve(r).await else { bail!("not a server") };
                self.killed.insert(format!("mysqld{i}"));
                self.inst(i).kill9()?;
                (self.name(Host::Db(i)), Undo::RestartMysqld(i))
            }
            Fault::StopMysqld(r) => {
                let Host::Db(i) = self.resolve(r).await else { bail!("not a server") };
                self.killed.insert(format!("mysqld{i}"));
                self.inst(i).sigstop()?;
                (self.name(Host::Db(i)), Undo::ContMysqld(i))
            }
            Fault::KillAgent(r) => {
                let Host::Db(i) = self.resolve(r).await else { bail!("not a server") };
                self.killed.insert(format!("agent{i}"));
                self.agent(i)?.kill9()?;
                (self.name(Host::Db(i)), Undo::RestartAgent(i))
            }
            Fault::StopAgent(r) => {
                let Host::Db(i) = self.resolve(r).await else { bail!("not a server") };
                self.agent(i)?.sigstop()?;
                (self.name(Host::Db(i)), Undo::ContAgent(i))
            }
            Fault::KillPrimusd(r) => {
                let Host::Co(n) = self.resolve(r).await else { bail!("not a coordinator") };
                self.killed.insert(format!("primusd{n}"));
                self.group.kill9(n)?;
                (self.name(Host::Co(n)), Undo::RestartPrimusd(n))
            }
            Fault::StopPrimusd(r) => {
                let Host::Co(n) = self.resolve(r).await else { bail!("not a coordinator") };
                self.group.sigstop(n)?;
                (self.name(Host::Co(n)), Undo::ContPrimusd(n))
            }
            Fault::Partition(roles) => {
                let mut side = BTreeSet::new();
                for r in roles {
                    side.insert(self.resolve(r).await);
                }
                let mut pairs = Vec::new();
                for a in &side {
                    for b in self.all_hosts().into_iter().filter(|b| !side.contains(b)) {
                        pairs.push((*a, b));
                        pairs.push((b, *a));
                    }
                }
                for (a, b) in &pairs {
                    self.block(*a, *b)?;
                }
                let names: Vec<String> = side.iter().map(|h| self.name(*h)).collect();
                (names.join(", "), Undo::Unblock(pairs))
            }
            Fault::OneWay(a, b) => {
                let (a, b) = (self.resolve(a).await, self.resolve(b).await);
                if a == b {
                    return Ok((format!("{} to itself: nothing", self.name(a)), Undo::Nothing));
                }
                self.block(a, b)?;
                (format!("{} -> {}", self.name(a), self.name(b)), Undo::Unblock(vec![(a, b)]))
            }
            Fault::ClockStep(r, secs) => {
                let h = self.resolve(r).await;
                std::fs::write(clock_file(&self.dir, h), format!("{secs:+}\n")).context("write clock file")?;
                let what = if matches!(h, Host::Db(_)) { "agent of " } else { "" };
                (format!("{what}{} {secs:+} s", self.name(h)), Undo::Clock(h))
            }
            Fault::Switchover => {
                // Runs in the background: the schedule goes on meanwhile.
                tokio::spawn(async move {
                    let r = client.failover(CLUSTER, None, true).await;
                    println!(
                        "    switchover: {}",
                        match r {
                            Ok(f) => f
                                .failover
                                .map(|f| format!("{} {} -> {}", f.outcome, f.old_primary, f.candidate))
                                .unwrap_or_default(),
                            Err(e) => format!("refused: {e}"),
                        }
                    );
                });
                ("asked".into(), Undo::Nothing)
            }
            Fault::Maintenance(r) => {
                let Host::Db(i) = self.resolve(r).await else { bail!("not a server") };
                let addr = self.inst(i).addr();
                // Ended at the end of the episode and again at the heal even when this
                // call fails: an unanswered write may still commit.
                self.maintained.insert(addr.clone());
                let r = client.maintenance(CLUSTER, Some(&addr), true, "nemesis", Duration::from_secs(120)).await;
                let what = match r {
                    Ok(_) => self.name(Host::Db(i)),
                    Err(e) => format!("{} (the call failed: {e})", self.name(Host::Db(i))),
                };
                (what, Undo::EndMaintenance(addr))
            }
            Fault::Ack => {
                let r = client.ack(CLUSTER, None).await;
                (r.map(|_| "acknowledged".to_string()).unwrap_or_else(|e| format!("refused: {e}")), Undo::Nothing)
            }
        })
    }

    async fn undo(&mut self, u: &Undo) -> Result<()> {
        match u {
            Undo::Nothing => {}
            Undo::RestartMysqld(i) | Undo::ContMysqld(i) => {
                if matches!(u, Undo::ContMysqld(_)) {
                    let _ = self.inst(*i).sigcont();
                }
                if !self.inst(*i).is_running() {
                    // As a service manager would, with read_only = ON in my.cnf.
                    tokio::time::timeout(Duration::from_secs(30), self.inst(*i).restart_with_args(&["--read-only=1"]))
                        .await
                        .map_err(|_| anyhow!("mysqld {i} not ready 30 s after restart"))??;
                }
                self.killed.remove(&format!("mysqld{i}"));
            }
            Undo::RestartAgent(i) => {
                self.agent(*i)?.restart()?;
                self.killed.remove(&format!("agent{i}"));
            }
            Undo::ContAgent(i) => self.agent(*i)?.sigcont()?,
            Undo::RestartPrimusd(n) => {
                if !self.group.node_mut(*n).is_running() {
                    self.group.start_node(*n)?;
                }
                self.killed.remove(&format!("primusd{n}"));
            }
            Undo::ContPrimusd(n) => self.group.sigcont(*n)?,
            Undo::Unblock(pairs) => {
                for (a, b) in pairs {
                    self.unblock(*a, *b)?;
                }
            }
            Undo::Clock(h) => std::fs::write(clock_file(&self.dir, *h), "+0\n").context("write clock file")?,
            Undo::EndMaintenance(addr) => {
                let client = self.group.client(Duration::from_secs(5))?;
                client.maintenance(CLUSTER, Some(addr), false, "nemesis", Duration::ZERO).await?;
            }
        }
        Ok(())
    }

    /// Undo whatever is still in place: every process running and continued, every
    /// link whole, every clock true. A process found dead that the nemesis did not
    /// kill has crashed (a mysqld its agent killed is the agent's fence, not a crash).
    async fn heal_all(&mut self) -> Result<()> {
        let pairs: Vec<(Host, Host)> = self.blocks.keys().copied().collect();
        for (a, b) in pairs {
            self.net.unblock(self.host(a), self.host(b))?;
        }
        self.blocks.clear();
        for h in self.all_hosts() {
            std::fs::write(clock_file(&self.dir, h), "+0\n").context("write clock file")?;
        }
        for n in self.group.nodes.keys().copied().collect::<Vec<_>>() {
            let _ = self.group.sigcont(n);
            if !self.group.node_mut(n).is_running() {
                if !self.killed.contains(&format!("primusd{n}")) {
                    self.crashed
                        .push(format!("primusd {n} exited on its own; log tail:\n{}", self.group.node(n).log_tail(20)));
                }
                self.group.start_node(n)?;
            }
        }
        for i in 0..self.agents.len() {
            let _ = self.agents[i].sigcont();
            if self.agents[i].try_exit()?.is_some() {
                if !self.killed.contains(&format!("agent{i}")) {
                    self.crashed
                        .push(format!("agent of db{i} exited on its own; log tail:\n{}", self.agents[i].log_tail(20)));
                }
                self.agents[i].restart()?;
            }
        }
        for i in 0..self.dbs.len() {
            self.undo(&Undo::ContMysqld(i)).await?;
        }
        self.killed.clear();
        // Every maintenance asked for ends, whatever its own end's call said.
        let deadline = Instant::now() + Duration::from_secs(15);
        for addr in std::mem::take(&mut self.maintained) {
            loop {
                match self.undo(&Undo::EndMaintenance(addr.clone())).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        bail!("could not end the maintenance on {addr} within 15 s of the heal: {e:#}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }
}

/// Every server's `read_only`, sampled every 50 ms over its unix socket (which no
/// network fault touches): (time, server index, answer; `None` when it did not answer
/// within 45 ms).
type Samples = Arc<Mutex<Vec<(u64, usize, Option<bool>)>>>;

fn start_sampler(instances: Vec<Instance>, stop: tokio::sync::watch::Receiver<bool>) -> Samples {
    let samples: Samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    tokio::spawn(async move {
        let mut conns: Vec<Option<mysql_async::Conn>> = instances.iter().map(|_| None).collect();
        loop {
            if *stop.borrow() {
                return;
            }
            let at = Instant::now();
            let now = mono_us();
            let answers = futures::future::join_all(instances.iter().zip(conns.iter_mut()).map(|(i, c)| async move {
                let r = tokio::time::timeout(Duration::from_millis(45), async {
                    if c.is_none() {
                        *c = Some(mysql_async::Conn::new(i.admin_opts()).await?);
                    }
                    match c.as_mut() {
                        Some(conn) => conn.query_first::<u8, _>("SELECT @@read_only").await,
                        None => Ok(None),
                    }
                })
                .await;
                match r {
                    Ok(Ok(Some(v))) => Some(v == 1),
                    _ => {
                        *c = None;
                        None
                    }
                }
            }))
            .await;
            {
                let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
                for (i, a) in answers.into_iter().enumerate() {
                    s.push((now, i, a));
                }
            }
            tokio::time::sleep_until((at + Duration::from_millis(50)).into()).await;
        }
    });
    samples
}

async fn setup(o: &OneOptions, sched: &Schedule) -> Result<Lab> {
    anyhow::ensure!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: the clock-step faults need libfaketime (apt-get install -y libfaketime; \
         scripts/nemesis.sh installs it)"
    );
    std::fs::create_dir_all(&o.dir).with_context(|| format!("create {}", o.dir.display()))?;
    let tag = format!("n{}", o.subnet);
    let net = NetLab::with_subnet(&tag, o.subnet)?;
    let dbs: Vec<NetHost> = (0..sched.servers).map(|_| net.add_host()).collect::<Result<_>>()?;
    let coords: Vec<NetHost> = (0..sched.coordinators).map(|_| net.add_host()).collect::<Result<_>>()?;
    let clients: Vec<NetHost> = (0..sched.clients).map(|_| net.add_host()).collect::<Result<_>>()?;
    let mut sopts = SandboxOptions::new(Topology::PrimaryWithReplicas(sched.servers - 1));
    sopts.netns = dbs.iter().cloned().map(Some).collect();
    sopts.base_dir = Some(o.dir.join("mariadb"));
    // Keep the servers' files (error logs, binlogs) for a failing schedule; the Lab
    // kills the servers when dropped.
    sopts.keep = true;
    let sandbox = Sandbox::start(sopts).await.context("starting the MariaDB servers")?;
    let p = sandbox.primary();
    for sql in [
        "CREATE DATABASE nemesis",
        "CREATE TABLE nemesis.writes (id BIGINT UNSIGNED PRIMARY KEY, client INT UNSIGNED NOT NULL, \
         at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
        // No SUPER, no READ_ONLY ADMIN: read_only stops it, as it stops applications.
        "CREATE USER 'app'@'%' IDENTIFIED BY 'app-pass'",
        "GRANT SELECT, INSERT ON nemesis.* TO 'app'@'%'",
        // The convergence check's own writes (not part of the clients' history).
        "CREATE TABLE nemesis.probes (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY) ENGINE=InnoDB",
    ] {
        p.exec(sql).await?;
    }
    sandbox.wait_replicas_caught_up(Duration::from_secs(20)).await?;

    let secrets = o.dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    let extra = sandbox.coordinator_mysql_section(
        &secrets,
        None,
        "probe_interval_ms = 300\nquery_timeout_ms = 800\nconnect_timeout_ms = 800\nheartbeat_interval_ms = 200\n\
         \n[failover]\nrecovery_block_period_ms = 5000\n",
    )?;
    for h in (0..sched.servers).map(Host::Db).chain((1..=sched.coordinators as u64).map(Host::Co)) {
        std::fs::write(clock_file(&o.dir, h), "+0\n")?;
    }
    let mut group = CoordinatorGroup::start(GroupOptions {
        nodes: sched.coordinators,
        extra_config: extra,
        netns: coords.iter().cloned().map(Some).collect(),
        base_dir: Some(o.dir.join("coordinators")),
        not_started: (1..=sched.coordinators as u64).collect(),
        ..Default::default()
    })?;
    for n in 1..=sched.coordinators as u64 {
        group.node_mut(n).env = faketime_env(&clock_file(&o.dir, Host::Co(n)));
        group.start_node(n)?;
    }
    group.wait_leader(&[], Duration::from_secs(30)).await?;
    let client = group.client(Duration::from_secs(10))?;
    client
        .register_cluster(CLUSTER, &[sandbox.primary().addr()], primus_client::ClusterSettings::default())
        .await
        .context("registering the cluster")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = client.topology(CLUSTER, ReadConsistency::Linearizable).await;
        if let Ok(t) = &t {
            if t.instances.len() == sched.servers
                && t.instances.iter().all(|i| i.seen_by.len() == sched.coordinators && i.seen_by.values().all(|ok| *ok))
            {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "not every coordinator sees every server after 20 s: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if sched.no_loss {
        client.set_semi_sync(CLUSTER, Some(true)).await.context("turning no-loss mode on")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let row: Option<(String, String)> =
                sandbox.primary().query_one("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'").await?;
            if row.and_then(|(_, v)| v.parse::<usize>().ok()) == Some(sched.servers - 1) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no-loss mode not in place after 20 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut agents = Vec::new();
    for i in (0..sched.servers).filter(|_| !o.no_agents) {
        let opts = AgentOptions {
            cluster: CLUSTER.into(),
            coordinators: vec![group.endpoints()],
            env: faketime_env(&clock_file(&o.dir, Host::Db(i))),
            ..Default::default()
        };
        agents.push(AgentProc::start_in(sandbox.instance(i), &opts, &o.dir.join(format!("agent-db{i}")))?);
    }
    if o.no_agents {
        println!("  NO AGENTS: nothing fences a primary cut off from the coordinators (checker self-test)");
    }
    // Every agent holds a lease before the first fault.
    let deadline = Instant::now() + Duration::from_secs(20);
    for a in &agents {
        let left = deadline.saturating_duration_since(Instant::now());
        a.wait_log("lease", left).await.context("an agent did not take its lease")?;
    }
    Ok(Lab {
        net,
        dbs,
        coords,
        clients,
        workload: Vec::new(),
        agents,
        group,
        sandbox,
        dir: o.dir.clone(),
        blocks: BTreeMap::new(),
        killed: BTreeSet::new(),
        crashed: Vec::new(),
        maintained: BTreeSet::new(),
    })
}

fn start_workload(lab: &mut Lab, seconds: u64) -> Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    for (i, h) in lab.clients.iter().enumerate() {
        let log = std::fs::File::create(lab.dir.join(format!("client{i}.log")))?;
        let log2 = log.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .arg(&exe)
            .args(["workload", "--endpoints", &lab.group.endpoints(), "--cluster", CLUSTER])
            .args(["--client", &i.to_string(), "--seconds", &seconds.to_string()])
            .arg("--out")
            .arg(lab.dir.join(format!("history-client{i}.jsonl")))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .context("starting a workload client")?;
        lab.workload.push(child);
    }
    Ok(())
}

/// Run one schedule and judge it.
pub async fn run_one(o: &OneOptions) -> Result<OneResult> {
    let sched = Schedule::generate(o.seed, o.seconds, o.coordinators);
    print!("{}", sched.describe());
    let replay =
        format!("scripts/nemesis.sh --seed {} --seconds {} --coordinators {}", o.seed, o.seconds, o.coordinators);
    let setup_started = Instant::now();
    let mut lab = setup(o, &sched).await?;
    println!("  lab ready in {} ms", setup_started.elapsed().as_millis());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let samples = start_sampler(lab.sandbox.instances().to_vec(), stop_rx);
    start_workload(&mut lab, o.seconds)?;

    // Injections and undos in time order.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (k, e) in sched.episodes.iter().enumerate() {
        events.push((e.at_ms, true, k));
        if e.hold_ms > 0 {
            events.push((e.at_ms + e.hold_ms, false, k));
        }
    }
    events.sort();
    let t0 = Instant::now();
    let mut undos: BTreeMap<usize, Undo> = BTreeMap::new();
    let mut injected: Vec<(u64, String)> = Vec::new(); // (mono us, kind)
    let mut episodes_out = Vec::new();
    for (at_ms, inject, k) in events {
        tokio::time::sleep_until((t0 + Duration::from_millis(at_ms)).into()).await;
        let e: &Episode = &sched.episodes[k];
        if inject {
            let at_us = mono_us();
            let r = lab.inject(&e.fault).await;
            let detail = match r {
                Ok((what, undo)) => {
                    undos.insert(k, undo);
                    injected.push((at_us, e.fault.kind().to_string()));
                    what
                }
                Err(err) => format!("not injected: {err:#}"),
            };
            println!("  [+{:>6} ms] {}: {detail}", t0.elapsed().as_millis(), e.fault);
            episodes_out.push(InjectedEpisode { at_ms, kind: e.fault.kind().into(), detail });
        } else if let Some(u) = undos.remove(&k) {
            let r = lab.undo(&u).await;
            println!(
                "  [+{:>6} ms] end of {}{}",
                t0.elapsed().as_millis(),
                e.fault,
                r.err().map(|e| format!(": {e:#}")).unwrap_or_default()
            );
        }
    }
    tokio::time::sleep_until((t0 + Duration::from_secs(o.seconds)).into()).await;
    lab.heal_all().await?;
    let healed = Instant::now();
    println!("  [+{:>6} ms] everything healed", t0.elapsed().as_millis());
    for c in &mut lab.workload {
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    let mut fin = converge(&lab, healed, sched.no_loss).await?;
    let _ = stop_tx.send(true);
    fin.crashed = lab.crashed.clone();
    fin.panics = panics(&lab);

    let mut writes: Vec<Write> = Vec::new();
    for i in 0..sched.clients {
        writes.extend(read_history(&lab.dir.join(format!("history-client{i}.jsonl")))?);
    }
    let (violations, tally) = check::check(&writes, &fin);

    let client = lab.group.client(Duration::from_secs(5))?;
    let failovers = match client.history(CLUSTER).await {
        Ok(h) => h
            .failovers
            .into_iter()
            .map(|f| FailoverSeen {
                id: f.id,
                kind: f.kind,
                outcome: f.outcome,
                old_primary: f.old_primary,
                candidate: f.candidate,
                reason: f.outcome_reason,
            })
            .collect(),
        Err(e) => {
            println!("  history unavailable: {e}");
            Vec::new()
        }
    };
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lines: Vec<String> = samples
        .iter()
        .map(|(at, i, ro)| {
            format!(
                "{{\"at_us\":{at},\"server\":\"{}\",\"read_only\":{}}}",
                lab.inst(*i).addr(),
                ro.map(|b| b.to_string()).unwrap_or_else(|| "null".into())
            )
        })
        .collect();
    std::fs::write(lab.dir.join("read-only-samples.jsonl"), lines.join("\n") + "\n")?;
    let changes = primary_changes(&lab, &samples, &injected, t0);

    let res = OneResult {
        seed: o.seed,
        seconds: o.seconds,
        coordinators: o.coordinators,
        no_loss: sched.no_loss,
        episodes: episodes_out,
        failovers,
        changes,
        tally,
        violations,
        final_state: fin,
        replay,
    };
    std::fs::write(o.dir.join("result.json"), serde_json::to_vec_pretty(&res)?)?;
    Ok(res)
}

/// Poll until one server is writable, every coordinator names it and no failover is
/// in flight, or the bound passes; then read each server's rows and primus'
/// divergence report for those holding rows the primary lacks.
async fn converge(lab: &Lab, healed: Instant, no_loss: bool) -> Result<Final> {
    let mut fin = Final { no_loss, converge_bound_ms: CONVERGE_BOUND.as_millis() as u64, ..Default::default() };
    loop {
        fin.writable.clear();
        for i in lab.sandbox.instances() {
            if let Ok(Some(0u8)) = i.query_one_timeout("SELECT @@read_only", Duration::from_millis(500)).await {
                fin.writable.push(i.addr());
            }
        }
        fin.primary_by_coordinator.clear();
        for id in lab.group.nodes.keys() {
            let answer = match lab.group.client_for(&[*id], Duration::from_millis(500)) {
                Ok(c) => match c.primary_stale(CLUSTER).await {
                    Ok(r) => r.state.map(|s| s.primary).unwrap_or_default(),
                    Err(e) => format!("error: {e}"),
                },
                Err(e) => format!("error: {e}"),
            };
            fin.primary_by_coordinator.insert(*id, answer);
        }
        fin.in_flight = match lab.group.client(Duration::from_secs(1))?.history(CLUSTER).await {
            Ok(h) => h.failovers.into_iter().filter(|f| f.outcome == "in_progress").map(|f| f.id).collect(),
            Err(e) => vec![format!("history unavailable: {e}")],
        };
        let agreed = fin.writable.len() == 1 && fin.primary_by_coordinator.values().all(|p| *p == fin.writable[0]);
        // Writable is not enough: a primary blocked waiting for semi-sync
        // acknowledgements answers read_only = 0 and commits nothing.
        fin.write_error = if agreed { write_probe(&fin.writable[0]).await.err() } else { None };
        if agreed && fin.in_flight.is_empty() && fin.write_error.is_none() {
            fin.converged_after_ms = Some(healed.elapsed().as_millis() as u64);
            break;
        }
        if healed.elapsed() > CONVERGE_BOUND {
            // In no-loss mode a primary with no semi-sync replica left (every other
            // server a demoted former primary awaiting `rejoin`) stops committing by
            // design; primus reports it as LockedSemiSyncPrimary for an operator. Still
            // so at the bound: noted, and counted as converged.
            if agreed && fin.in_flight.is_empty() {
                let client = lab.group.client(Duration::from_secs(1))?;
                if let Ok(a) = client.analysis(CLUSTER).await {
                    if a.code == "LockedSemiSyncPrimary" {
                        fin.notes.push(format!(
                            "the primary takes no write: {} ({}) — operator action by design",
                            a.code,
                            a.evidence.join("; ")
                        ));
                        fin.write_error = None;
                        fin.converged_after_ms = Some(healed.elapsed().as_millis() as u64);
                    }
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Replicas catch up before rows are compared (a lagging one only lacks rows).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in lab.sandbox.instances() {
        let ids: Vec<u64> = i.query("SELECT id FROM nemesis.writes").await.unwrap_or_default();
        fin.rows.insert(i.addr(), ids.into_iter().collect());
    }
    if let [primary] = fin.writable.as_slice() {
        let on_primary = fin.rows.get(primary).cloned().unwrap_or_default();
        let client = lab.group.client(Duration::from_secs(5))?;
        let topology = client.topology(CLUSTER, ReadConsistency::Linearizable).await.ok();
        for (server, ids) in &fin.rows {
            if server != primary && ids.difference(&on_primary).next().is_some() {
                let mut seen = match client.divergence(CLUSTER, server).await {
                    Ok(d) => DivergenceSeen {
                        former_primary: d.former_primary,
                        divergent: d.divergent,
                        count: d.count,
                        count_exact: d.count_exact,
                        error: String::new(),
                        flagged_errant: false,
                    },
                    Err(e) => DivergenceSeen { error: e.to_string(), ..Default::default() },
                };
                seen.flagged_errant = topology.as_ref().is_some_and(|t| {
                    t.instances.iter().any(|i| i.addr == *server && i.flags.iter().any(|f| f.contains("errant")))
                });
                fin.divergence.insert(server.clone(), seen);
            }
        }
    }
    Ok(fin)
}

/// One INSERT on `addr` as the application user, within a second.
async fn write_probe(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("bad address {addr}"))?;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port.parse().map_err(|_| format!("bad port in {addr}"))?)
        .user(Some("app"))
        .pass(Some("app-pass"))
        .prefer_socket(false);
    let r = tokio::time::timeout(Duration::from_secs(1), async {
        let mut c = mysql_async::Conn::new(opts).await?;
        c.query_drop("INSERT INTO nemesis.probes () VALUES ()").await?;
        c.disconnect().await
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("a write on {addr} failed: {e}")),
        Err(_) => Err(format!("a write on {addr} was not answered within 1 s")),
    }
}

fn panics(lab: &Lab) -> Vec<String> {
    let mut logs: Vec<(String, PathBuf)> =
        lab.group.nodes.values().map(|n| (format!("primusd {}", n.id), n.log_path.clone())).collect();
    logs.extend(lab.agents.iter().enumerate().map(|(i, a)| (format!("agent of db{i}"), a.log_path.clone())));
    let mut out = Vec::new();
    for (who, path) in logs {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for l in text.lines().filter(|l| l.contains("panicked")) {
            out.push(format!("{who}: {l}"));
        }
    }
    out
}

/// Each time a server other than the last writable one becomes writable (the only
/// writable one), blamed on the fault injected last before it.
fn primary_changes(
    lab: &Lab,
    samples: &[(u64, usize, Option<bool>)],
    injected: &[(u64, String)],
    t0: Instant,
) -> Vec<PrimaryChange> {
    let t0_us = mono_us().saturating_sub(t0.elapsed().as_micros() as u64);
    let mut by_time: BTreeMap<u64, Vec<(usize, Option<bool>)>> = BTreeMap::new();
    for (at, i, ro) in samples {
        by_time.entry(*at).or_default().push((*i, *ro));
    }
    let mut last: Option<usize> = None;
    let mut out = Vec::new();
    for (at, row) in by_time {
        let writable: Vec<usize> = row.iter().filter(|(_, ro)| *ro == Some(false)).map(|(i, _)| *i).collect();
        if let [w] = writable.as_slice() {
            if last.is_some() && last != Some(*w) {
                let cause = injected.iter().rev().find(|(t, _)| *t <= at);
                out.push(PrimaryChange {
                    to: lab.inst(*w).addr(),
                    at_ms: at.saturating_sub(t0_us) / 1000,
                    cause: cause.map(|c| c.1.clone()).unwrap_or_else(|| "none".into()),
                    time_to_writable_ms: cause.map(|c| at.saturating_sub(c.0) / 1000).unwrap_or(0),
                });
            }
            last = Some(*w);
        }
    }
    out
}

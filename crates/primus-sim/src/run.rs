//! One simulated run: a cluster of simulated MySQL/MariaDB servers (each with a fencing
//! agent), N coordinators running primus' real code, application clients writing unique
//! rows, and a seeded fault schedule; invariants are checked every few simulated
//! milliseconds and once more after every fault healed.
//!
//! Everything runs on one current-thread tokio runtime with a paused clock, seeded
//! (`tokio_unstable`'s `rng_seed` for `select!`, [`crate::raft::runtime::seed`] for
//! openraft's election timeouts, and `StdRng`s drawn from the seed for the rest): the
//! same seed gives the same run, which [`Outcome::digest`] shows.

use crate::coord::{CoordConfig, SimClock, SimCoordinator};
use crate::mysql::{AppError, Link, Peer, ReplicationSetup, ServerConfig, SimMysql, WorldConfig};
use crate::raft::net::SimNet;
use crate::schedule::{Fault, Party, Schedule};
use primus_server::consensus::Consensus;
use primus_server::failover::FailoverAsk;
use primus_store::AppliedState;
use primus_types::{
    ClusterName, ClusterSettings, Command, FailoverKind, InstanceAddr, NodeId, Origin, Request, Response,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// 3 or 5.
    pub coordinators: usize,
    /// Replicas of the primary (1..).
    pub replicas: usize,
    /// The last replica replicates from the first one (an intermediate primary).
    pub chain: bool,
    /// Semi-sync no-loss mode (`semi_sync = true` in the cluster's settings).
    pub semi_sync: bool,
    /// MySQL 8.0 servers instead of MariaDB 10.11.
    pub mysql: bool,
    /// A fencing agent beside every server.
    pub agents: bool,
    /// Application clients.
    pub clients: usize,
    /// Simulated time with faults.
    pub fault_ms: u64,
    /// After every fault healed: the bound within which the group must converge.
    pub settle_ms: u64,
    /// A fixed schedule (replay, shrinking, named regressions); `None`: drawn from the seed.
    pub schedule: Option<Schedule>,
    /// Faults per schedule when drawn.
    pub faults: usize,
    /// Once the faults healed, an operator rejoins demoted former primaries (the runbook).
    pub operator_rejoins: bool,
}

impl Options {
    /// The run of `seed`: its shape (group size, flavor, semi-sync, chain) drawn from it too.
    /// The shape of the run, in one line.
    pub fn shape(&self) -> String {
        format!(
            "{} coordinators, {} replicas{}, {}, {}, {} clients, {} s of faults",
            self.coordinators,
            self.replicas,
            if self.chain { " (chained)" } else { "" },
            if self.mysql { "MySQL 8.0" } else { "MariaDB 10.11" },
            if self.semi_sync { "semi-sync no-loss" } else { "async" },
            self.clients,
            self.fault_ms / 1000
        )
    }

    pub fn from_seed(seed: u64, fault_ms: u64) -> Options {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0907);
        Options {
            seed,
            coordinators: if rng.gen_bool(0.25) { 5 } else { 3 },
            replicas: rng.gen_range(2..=3),
            chain: rng.gen_bool(0.2),
            semi_sync: rng.gen_bool(0.4),
            mysql: rng.gen_bool(0.3),
            agents: true,
            clients: 2,
            fault_ms,
            settle_ms: 20_000,
            schedule: None,
            faults: rng.gen_range(1..=8),
            operator_rejoins: true,
        }
    }
}

/// A broken promise, with when and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at_ms: u64,
    pub invariant: &'static str,
    pub detail: String,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub seed: u64,
    pub shape: String,
    pub schedule: Schedule,
    pub violations: Vec<Violation>,
    /// Readable trace of faults and what the coordinators committed.
    pub trace: Vec<String>,
    pub failovers: u64,
    pub acked: u64,
    pub failed: u64,
    pub unknown: u64,
    /// Analysis codes the leader reached (how often, sampled).
    pub analysis_codes: BTreeMap<String, u64>,
    /// Failover steps recorded, by kind.
    pub steps: BTreeMap<String, u64>,
    /// Former primaries found divergent at the end (and flagged by primus).
    pub divergent: u64,
    /// Simulated ms the run covered.
    pub simulated_ms: u64,
    /// A hash of the trace (equal for two runs of one seed).
    pub digest: u64,
}

/// The simulated wall clock at the start of a run (unix ms); trace times are ms after it.
const WALL_START_MS: u64 = 1_700_000_000_000;

/// Checked at every coordinator crash and at the end of the run: what primusd would
/// load from the pairs its store wrote is the state it applied.
const PERSISTED_STATE: &str = "the persisted state is the applied state";

fn addr(i: usize) -> InstanceAddr {
    format!("db{}:3306", i + 1).parse().unwrap_or_else(|_| unreachable!("a valid address"))
}

/// The network state the schedule sets, shared by every link function.
#[derive(Default)]
struct Links {
    /// Silent cuts between parties (both directions).
    cut: BTreeSet<(Party, Party)>,
    /// Lossy links between coordinators (both directions): the percentage of messages lost.
    loss: BTreeMap<(NodeId, NodeId), u8>,
    /// Lossy links between a server's agent and a coordinator: the percentage of
    /// requests lost, and of answers.
    agent_loss: BTreeMap<(usize, NodeId), u8>,
}

impl Links {
    fn blocked(&self, a: &Party, b: &Party) -> bool {
        self.cut.contains(&(a.clone(), b.clone())) || self.cut.contains(&(b.clone(), a.clone()))
    }
}

/// Everything the tasks of a run share.
struct Harness {
    opts: Options,
    cfg: CoordConfig,
    sim: SimMysql,
    net: SimNet,
    links: Arc<Mutex<Links>>,
    coords: tokio::sync::Mutex<BTreeMap<NodeId, SimCoordinator>>,
    /// Each coordinator's last applied state, sampled (readable without the async lock).
    views: Mutex<BTreeMap<NodeId, Option<AppliedState>>>,
    cluster: ClusterName,
    servers: Vec<InstanceAddr>,
    agents: Mutex<BTreeMap<usize, (tokio::task::JoinHandle<()>, crate::agent::LeaseFile)>>,
    /// Sentinels of killed agents, by server (they die with their host).
    sentinels: Mutex<BTreeMap<usize, tokio::task::JoinHandle<()>>>,
    log: Mutex<Log>,
    /// Draws which agent messages a lossy link loses (seeded from the run's seed).
    loss_rng: Mutex<StdRng>,
    origin: Instant,
}

#[derive(Default)]
struct Log {
    trace: Vec<String>,
    violations: Vec<Violation>,
    acks: Vec<(u64, InstanceAddr, u64)>,
    failed: u64,
    unknown: u64,
    codes: BTreeMap<String, u64>,
    divergent: u64,
}

impl Harness {
    fn ms(&self) -> u64 {
        Instant::now().saturating_duration_since(self.origin).as_millis() as u64
    }

    fn trace(&self, line: String) {
        let at = self.ms();
        self.log.lock().unwrap_or_else(PoisonError::into_inner).trace.push(format!("{at:>7} ms  {line}"));
    }

    fn violate(&self, invariant: &'static str, detail: String) {
        let at_ms = self.ms();
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        // One report per invariant and detail is enough.
        if !log.violations.iter().any(|v| v.invariant == invariant && v.detail == detail) {
            log.trace.push(format!("{at_ms:>7} ms  VIOLATION {invariant}: {detail}"));
            log.violations.push(Violation { at_ms, invariant, detail });
        }
    }

    /// Install the link function of the simulated servers' network.
    fn install_links(self: &Arc<Self>) {
        let links = self.links.clone();
        let servers = self.servers.clone();
        let party_of = move |a: &InstanceAddr| Party::Server(servers.iter().position(|s| s == a).unwrap_or(usize::MAX));
        self.sim.set_links(Arc::new(move |peer: &Peer, to: &InstanceAddr| {
            let links = links.lock().unwrap_or_else(PoisonError::into_inner);
            // Asked at every request and every replication step: most of the time
            // nothing is cut.
            if links.cut.is_empty() {
                return Link::Up;
            }
            let from = match peer {
                Peer::Coordinator(n) => Party::Coord(*n),
                Peer::App(_) => Party::Apps,
                Peer::Server(a) => party_of(a),
                Peer::Local(_) => return Link::Up,
            };
            if links.blocked(&from, &party_of(to)) {
                Link::Silent
            } else {
                Link::Up
            }
        }));
    }

    /// Apply the cuts to the coordinators' network too.
    fn sync_coord_links(&self) {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        for a in 1..=self.opts.coordinators as NodeId {
            for b in 1..=self.opts.coordinators as NodeId {
                if a != b {
                    let l = if links.blocked(&Party::Coord(a), &Party::Coord(b)) { Link::Silent } else { Link::Up };
                    self.net.set_link(a, b, l);
                    let loss = links.loss.get(&(a.min(b), a.max(b))).copied().unwrap_or(0);
                    self.net.set_loss(a, b, loss);
                }
            }
        }
    }

    fn blocked(&self, a: &Party, b: &Party) -> bool {
        self.links.lock().unwrap_or_else(PoisonError::into_inner).blocked(a, b)
    }

    /// Whether a message between server `i`'s agent and coordinator `to` is lost on a
    /// lossy link (drawn per message).
    fn agent_message_lost(&self, i: usize, to: NodeId) -> bool {
        let p = self.links.lock().unwrap_or_else(PoisonError::into_inner).agent_loss.get(&(i, to)).copied();
        match p {
            Some(p) if p > 0 => self.loss_rng.lock().unwrap_or_else(PoisonError::into_inner).gen_range(0..100) < p,
            _ => false,
        }
    }

    /// The applied state of the coordinator that applied most (applied means committed).
    fn most_applied(&self) -> Option<AppliedState> {
        let views = self.views.lock().unwrap_or_else(PoisonError::into_inner);
        views.values().flatten().max_by_key(|s| s.last_applied.map(|l| l.index).unwrap_or(0)).cloned()
    }

    /// Commit `cmd` through whichever running coordinator leads (an operator's client
    /// reaching the leader).
    async fn commit(&self, cmd: Command, actor: &str) -> Result<Response, String> {
        let coords = self.coords.lock().await;
        for c in coords.values() {
            let Some(r) = &c.running else { continue };
            if c.gate.paused() || !r.consensus.view().is_leader {
                continue;
            }
            let req = Request::at(cmd.clone(), Origin { actor: actor.into(), via_node: c.id }, 0);
            let consensus = r.consensus.clone();
            drop(coords);
            return match tokio::time::timeout(
                Duration::from_secs(5),
                primus_server::consensus::Consensus::write(consensus.as_ref(), req),
            )
            .await
            {
                Ok(Ok((_, resp))) => Ok(resp),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            };
        }
        Err("no leader".into())
    }
}

/// Run `opts` to completion on the current (paused, current-thread) runtime.
pub async fn run(opts: Options) -> Outcome {
    crate::raft::runtime::seed(opts.seed);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let schedule = match &opts.schedule {
        Some(s) => s.clone(),
        None => Schedule::draw(&mut StdRng::seed_from_u64(rng.gen()), &opts),
    };
    let world = WorldConfig { wall_clock_start_ms: WALL_START_MS, ..WorldConfig::default() };
    let sim = match SimMysql::new(world, StdRng::seed_from_u64(rng.gen())) {
        Ok(s) => s,
        Err(e) => return failed_setup(&opts, schedule, format!("cannot create the servers: {e}")),
    };
    let servers: Vec<InstanceAddr> = (0..=opts.replicas).map(addr).collect();
    for (i, a) in servers.iter().enumerate() {
        let mut cfg = if opts.mysql {
            ServerConfig::mysql(a.clone(), i as u32 + 1)
        } else {
            ServerConfig::mariadb(a.clone(), i as u32 + 1)
        };
        cfg.slave_net_timeout = Duration::from_secs(4);
        if let Err(e) = sim.add_server(cfg) {
            return failed_setup(&opts, schedule, format!("cannot add {a}: {e}"));
        }
    }
    let mut cfg = CoordConfig::defaults();
    if opts.mysql {
        cfg.mysql.user = "primus".into();
    }
    let net = SimNet::new(StdRng::seed_from_u64(rng.gen()), (0, 2), Duration::from_millis(cfg.raft.rpc_timeout_ms));
    let origin = Instant::now();
    let h = Arc::new(Harness {
        opts: opts.clone(),
        cfg: cfg.clone(),
        sim: sim.clone(),
        net: net.clone(),
        links: Arc::default(),
        coords: tokio::sync::Mutex::new(BTreeMap::new()),
        views: Mutex::new(BTreeMap::new()),
        cluster: "sim".parse().unwrap_or_else(|_| unreachable!("a valid name")),
        servers: servers.clone(),
        agents: Mutex::new(BTreeMap::new()),
        sentinels: Mutex::new(BTreeMap::new()),
        log: Mutex::new(Log::default()),
        loss_rng: Mutex::new(StdRng::seed_from_u64(opts.seed ^ 0x1055_a6e7)),
        origin,
    });
    h.install_links();
    // The agents' own log lines (the real agent loop logs through `tracing`).
    let weak = Arc::downgrade(&h);
    crate::agentlog::set_sink(Some(Box::new(move |line| {
        if let Some(h) = weak.upgrade() {
            h.trace(line);
        }
    })));
    if let Err(e) = setup(&h, &mut rng).await {
        return failed_setup(&opts, schedule, e);
    }

    // Faults, workload and checks.
    let checker = tokio::spawn(check_loop(h.clone()));
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        clients.push(tokio::spawn(client_loop(h.clone(), c as u64, StdRng::seed_from_u64(rng.gen()))));
    }
    let start = Instant::now();
    for t in &schedule.faults {
        tokio::time::sleep_until(start + Duration::from_millis(t.at_ms)).await;
        apply(&h, &t.fault).await;
    }
    tokio::time::sleep_until(start + Duration::from_millis(opts.fault_ms)).await;
    apply(&h, &Fault::HealAll).await;
    let healed_ms = sim.now_ms();
    // Converge: checked once the bound has passed (and earlier if it already holds).
    let settle_deadline = Instant::now() + Duration::from_millis(opts.settle_ms);
    let mut last = Vec::new();
    let mut rejoined = BTreeSet::new();
    while Instant::now() < settle_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = converged(&h, healed_ms).await;
        if last.is_empty() {
            break;
        }
        // The service manager (`Restart=on-abort`) starts a mysqld that died after the
        // faults healed again — one its agent killed when its fence could not finish (found
        // by seed 713232: the only primary killed so, nothing writable for good).
        for a in &h.servers {
            if sim.process_state(a).ok() == Some(crate::mysql::ProcState::Crashed) && sim.start(a).is_ok() {
                h.trace(format!("service manager: started {a} again"));
            }
        }
        if opts.operator_rejoins {
            operator_rejoins(&h, &mut rejoined).await;
        }
    }
    for c in &clients {
        c.abort();
    }
    if !last.is_empty() {
        for a in &h.servers {
            h.trace(format!("at the end: {}", server_line(&sim, a)));
        }
        if let Some(c) = h.most_applied().and_then(|s| s.registry.clusters.get(&h.cluster).cloned()) {
            h.trace(format!("at the end: demoted {:?}; leader's analysis {:?}", c.demoted, leader_analysis(&h).await));
        }
    }
    for v in last {
        h.violate("converges after the faults heal", v);
    }
    if opts.semi_sync {
        no_loss_check(&h);
    }
    divergence_check(&h);
    single_writer_check(&h);
    checker.abort();
    let unmodelled = sim.unmodelled_statements();
    if let Some((a, sql)) = unmodelled.first() {
        h.violate("every statement is modelled", format!("{a}: {sql} ({} in all)", unmodelled.len()));
    }

    let mut out =
        Outcome { seed: opts.seed, shape: opts.shape(), schedule, simulated_ms: h.ms(), ..Outcome::default() };
    if let Some(s) = h.most_applied() {
        if let Some(c) = s.registry.clusters.get(&h.cluster) {
            out.failovers = c.history.iter().filter(|f| f.kind.changes_primary()).count() as u64;
            for f in &c.history {
                for s in &f.steps {
                    let kind = s.description.split_whitespace().next().unwrap_or("?").to_string();
                    *out.steps.entry(kind).or_default() += 1;
                }
            }
            for f in &c.history {
                let steps: Vec<String> = f
                    .steps
                    .iter()
                    .map(|s| format!("@{} {} [{}]", s.at_ms.saturating_sub(WALL_START_MS), s.description, s.outcome))
                    .collect();
                h.trace(format!(
                    "history: {} {:?} {} -> {} epoch {} outcome {:?}: {} | evidence: {}",
                    f.id,
                    f.kind,
                    f.old_primary,
                    f.candidate,
                    f.epoch,
                    f.outcome,
                    steps.join("; "),
                    f.evidence.join("; ")
                ));
            }
            let primary = c.topology.primary.as_ref().map(ToString::to_string).unwrap_or_default();
            h.trace(format!("final: epoch {} primary {primary} failovers {}", c.epoch, out.failovers));
        }
    }
    // Stop everything of this run before the runtime goes (no task outlives it).
    {
        let mut coords = h.coords.lock().await;
        for c in coords.values_mut() {
            if let Some(why) = c.crash(&net).await {
                h.violate(PERSISTED_STATE, format!("node {}: {why}", c.id));
            }
        }
    }
    for (_, (a, _)) in std::mem::take(&mut *h.agents.lock().unwrap_or_else(PoisonError::into_inner)) {
        a.abort();
    }
    for (_, s) in std::mem::take(&mut *h.sentinels.lock().unwrap_or_else(PoisonError::into_inner)) {
        s.abort();
    }
    let log = std::mem::take(&mut *h.log.lock().unwrap_or_else(PoisonError::into_inner));
    out.violations = log.violations;
    out.acked = log.acks.len() as u64;
    out.failed = log.failed;
    out.unknown = log.unknown;
    out.analysis_codes = log.codes;
    out.divergent = log.divergent;
    // The digest covers every acknowledged write (time, server, row) too: two runs of
    // one seed agree on those only if they agree event for event.
    let mut line = String::new();
    let mut acks = FNV_START;
    for (at, s, r) in &log.acks {
        line.clear();
        let _ = write!(line, "{at} {s} {r}");
        acks = fnv(acks, &line);
    }
    out.digest = digest(&log.trace) ^ acks.rotate_left(1) ^ (log.failed << 32) ^ log.unknown;
    out.trace = log.trace;
    out
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn digest(lines: &[String]) -> u64 {
    lines.iter().fold(FNV_START, |h, l| fnv(h, l))
}

/// FNV-1a over `line` and a newline: stable across builds and platforms (std's hasher
/// is not promised to be).
fn fnv(mut h: u64, line: &str) -> u64 {
    for b in line.bytes().chain(std::iter::once(b'\n')) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn failed_setup(opts: &Options, schedule: Schedule, why: String) -> Outcome {
    Outcome {
        seed: opts.seed,
        schedule,
        violations: vec![Violation { at_ms: 0, invariant: "the simulation sets up", detail: why }],
        ..Outcome::default()
    }
}

async fn setup(h: &Arc<Harness>, rng: &mut StdRng) -> Result<(), String> {
    let opts = &h.opts;
    // Replication: db1 the primary; the last replica below the first with `chain`.
    for i in 1..h.servers.len() {
        let source = if opts.chain && i == h.servers.len() - 1 && i > 1 { &h.servers[1] } else { &h.servers[0] };
        h.sim.replicate(&h.servers[i], source, &ReplicationSetup::default()).map_err(|e| e.to_string())?;
    }
    h.sim.admin(&h.servers[0], "SET GLOBAL read_only = OFF").await.map_err(|e| e.to_string())?;
    // Coordinators.
    let ids: Vec<NodeId> = (1..=opts.coordinators as NodeId).collect();
    {
        let mut coords = h.coords.lock().await;
        for id in &ids {
            let clock = Arc::new(SimClock::new(WALL_START_MS, h.origin));
            let mut c = SimCoordinator::new(*id, clock, h.net.gate(*id));
            c.start(&h.cfg, &h.net, &h.sim).await?;
            coords.insert(*id, c);
        }
        coords.get(&1).ok_or("no node 1")?.initialize(&ids).await?;
    }
    // A leader, then the cluster as `primusctl cluster add` registers it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let topology = loop {
        if Instant::now() > deadline {
            return Err("no leader elected within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let coords = h.coords.lock().await;
        let Some(leader) = coords.values().find(|c| c.running.as_ref().is_some_and(|r| r.consensus.view().is_leader))
        else {
            continue;
        };
        let Some(r) = &leader.running else { continue };
        let found = primus_server::discovery::discover(
            &h.servers[..1],
            r.monitor.connector.as_ref(),
            h.cfg.mysql.discovery_timeout(),
        )
        .await
        .map_err(|e| format!("discovery: {e}"))?;
        break found.topology;
    };
    let settings = ClusterSettings {
        automatic_failover: Some(true),
        semi_sync: opts.semi_sync.then_some(true),
        ..Default::default()
    };
    let cmd = Command::RegisterCluster {
        name: h.cluster.clone(),
        seeds: h.servers[..1].to_vec(),
        settings,
        topology: Some(topology),
    };
    match h.commit(cmd, "sim").await? {
        Response::Rejected(r) => return Err(format!("registration refused: {r}")),
        _ => h.trace(format!("registered {} with {} servers", h.cluster, h.servers.len())),
    }
    if opts.agents {
        for i in 0..h.servers.len() {
            start_agent(h, i, rng.gen());
        }
    }
    // Let the group settle (semi-sync set up, leases granted) before the faults start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sample_views(h).await;
    Ok(())
}

fn start_agent(h: &Arc<Harness>, i: usize, seed: u64) {
    let file = crate::agent::LeaseFile::default();
    let task =
        tokio::spawn(crate::agent::agent_loop(h.clone() as Arc<dyn crate::agent::AgentEnv>, i, seed, file.clone()));
    if let Some((old, _)) = h.agents.lock().unwrap_or_else(PoisonError::into_inner).insert(i, (task, file)) {
        old.abort();
    }
}

/// The host of server `i` is gone: its agent and any sentinel die with it.
fn stop_agent(h: &Harness, i: usize) {
    if let Some((old, _)) = h.agents.lock().unwrap_or_else(PoisonError::into_inner).remove(&i) {
        old.abort();
    }
    if let Some(s) = h.sentinels.lock().unwrap_or_else(PoisonError::into_inner).remove(&i) {
        s.abort();
    }
}

/// kill -9 of the agent of server `i` alone: its sentinel takes over its last lease.
fn kill_agent(h: &Arc<Harness>, i: usize) {
    let Some((task, file)) = h.agents.lock().unwrap_or_else(PoisonError::into_inner).remove(&i) else {
        return;
    };
    task.abort();
    let s = tokio::spawn(crate::agent::sentinel(h.clone() as Arc<dyn crate::agent::AgentEnv>, i, file));
    if let Some(old) = h.sentinels.lock().unwrap_or_else(PoisonError::into_inner).insert(i, s) {
        old.abort();
    }
}

#[async_trait::async_trait]
impl crate::agent::AgentEnv for Harness {
    fn sim(&self) -> &SimMysql {
        &self.sim
    }

    fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    fn addr(&self, i: usize) -> InstanceAddr {
        self.servers[i].clone()
    }

    fn coordinators(&self) -> Vec<NodeId> {
        (1..=self.opts.coordinators as NodeId).collect()
    }

    fn max_ttl(&self) -> Duration {
        Duration::from_millis(self.cfg.fencing.max_lease_ttl_ms)
    }

    async fn renew(
        &self,
        i: usize,
        to: NodeId,
        agent_id: &str,
        ttl: Duration,
        register: bool,
    ) -> Option<primus_client::RenewLeaseResponse> {
        let me = Party::Server(i);
        // The request's hop: the host's link and the coordinator's gate.
        if self.blocked(&me, &Party::Coord(to)) || self.agent_message_lost(i, to) {
            tokio::time::sleep(ttl).await;
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (gate, running) = {
            let coords = self.coords.lock().await;
            let c = coords.get(&to)?;
            let r = c.running.as_ref()?;
            (c.gate.clone(), (r.consensus.clone(), r.state.clone(), r.leases.clone()))
        };
        gate.pass().await;
        let (consensus, state, leases) = running;
        let instance = self.servers[i].clone();
        if register {
            // RegisterAgent, as the service commits it on the leader.
            let view = primus_server::consensus::Consensus::view(consensus.as_ref());
            if !view.is_leader {
                return None;
            }
            let cmd = Command::RegisterAgent {
                name: self.cluster.clone(),
                instance,
                agent_id: agent_id.to_string(),
                ttl_ms: Some(ttl.as_millis() as u64),
                fence_timeout_ms: Some(500),
                margin_ms: Some(leases.limits().margin.as_millis() as u64),
                release: None,
                of_registration: None,
            };
            let req = Request::at(cmd, Origin { actor: format!("agent {agent_id}"), via_node: to }, 0);
            let r =
                tokio::time::timeout(ttl, primus_server::consensus::Consensus::write(consensus.as_ref(), req)).await;
            return match r {
                // A registration's answer carries the log index it was committed at.
                Ok(Ok((index, _))) if !self.agent_message_lost(i, to) => {
                    Some(primus_client::RenewLeaseResponse { granted: true, epoch: index, ..Default::default() })
                }
                _ => None,
            };
        }
        // RenewLease, as the service answers it (service.rs `renew_lease`).
        let received_at = Instant::now();
        let view = primus_server::consensus::Consensus::view(consensus.as_ref());
        let not_leader = primus_client::RenewLeaseResponse { reason: "not_leader".into(), ..Default::default() };
        if !view.leads_with_quorum(self.cfg.raft.election_timeout_min_ms) {
            return Some(not_leader);
        }
        let limits = leases.limits();
        let decided =
            state.read(|s| primus_server::lease::verdict(&s.registry, &self.cluster, &instance, agent_id, ttl, limits));
        let (epoch, primary, verdict) = decided?;
        let a = leases.answer(&self.cluster, &instance, ttl, received_at, &verdict);
        let resp = primus_client::RenewLeaseResponse {
            granted: a.granted,
            ttl_ms: a.ttl_ms,
            epoch,
            primary,
            reason: a.reason.to_string(),
            fence_now: a.fence_now,
            served_by: to,
        };
        // The answer's hop back (a lost answer: the leader granted, the agent never knew).
        tokio::time::sleep(Duration::from_millis(1)).await;
        if self.blocked(&me, &Party::Coord(to)) || self.agent_message_lost(i, to) {
            tokio::time::sleep(ttl).await;
            return None;
        }
        Some(resp)
    }

    async fn release(&self, i: usize, to: NodeId, agent_id: &str, registration: u64, reason: &str) -> Option<bool> {
        let me = Party::Server(i);
        if self.blocked(&me, &Party::Coord(to)) || self.agent_message_lost(i, to) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (gate, consensus) = {
            let coords = self.coords.lock().await;
            let c = coords.get(&to)?;
            let r = c.running.as_ref()?;
            (c.gate.clone(), r.consensus.clone())
        };
        gate.pass().await;
        // RegisterAgent with `release`, as the service commits it on the leader.
        if !primus_server::consensus::Consensus::view(consensus.as_ref()).is_leader {
            return None;
        }
        let cmd = Command::RegisterAgent {
            name: self.cluster.clone(),
            instance: self.servers[i].clone(),
            agent_id: agent_id.to_string(),
            ttl_ms: None,
            fence_timeout_ms: None,
            margin_ms: None,
            release: Some(reason.to_string()),
            of_registration: Some(registration),
        };
        let req = Request::at(cmd, Origin { actor: format!("agent {agent_id}"), via_node: to }, 0);
        let w = primus_server::consensus::Consensus::write(consensus.as_ref(), req);
        match tokio::time::timeout(Duration::from_millis(1500), w).await {
            _ if self.agent_message_lost(i, to) => None,
            Ok(Ok((_, primus_types::Response::Rejected(_)))) => Some(false),
            Ok(Ok(_)) => Some(true),
            _ => None,
        }
    }

    fn note(&self, line: String) {
        self.trace(line);
    }

    fn lease_file(&self, i: usize) -> Option<crate::agent::LeaseFile> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner).get(&i).map(|(_, f)| f.clone())
    }
}

/// Carry out one fault.
async fn apply(h: &Arc<Harness>, f: &Fault) {
    h.trace(format!("fault: {f}"));
    match f {
        Fault::CrashServer(i) => {
            let _ = h.sim.crash(&h.servers[*i]);
        }
        Fault::RestartServer(i) => {
            let _ = h.sim.start(&h.servers[*i]);
        }
        Fault::PauseServer(i) => {
            let _ = h.sim.pause(&h.servers[*i]);
        }
        Fault::ResumeServer(i) => {
            let _ = h.sim.resume(&h.servers[*i]);
        }
        Fault::CrashHost(i) => {
            let _ = h.sim.crash(&h.servers[*i]);
            stop_agent(h, *i);
        }
        Fault::RestartHost(i) => {
            let _ = h.sim.start(&h.servers[*i]);
            if h.opts.agents && !h.agents.lock().unwrap_or_else(PoisonError::into_inner).contains_key(i) {
                start_agent(h, *i, h.ms() ^ (*i as u64));
            }
        }
        Fault::CrashAgent(i) => kill_agent(h, *i),
        Fault::RestartAgent(i) => {
            if h.opts.agents && !h.agents.lock().unwrap_or_else(PoisonError::into_inner).contains_key(i) {
                start_agent(h, *i, h.ms() ^ (*i as u64));
            }
        }
        Fault::CrashCoord(n) => {
            let mut coords = h.coords.lock().await;
            if let Some(c) = coords.get_mut(n) {
                if let Some(why) = c.crash(&h.net).await {
                    h.violate(PERSISTED_STATE, format!("node {}: {why}", c.id));
                }
            }
        }
        Fault::RestartCoord(n) => {
            let mut coords = h.coords.lock().await;
            if let Some(c) = coords.get_mut(n) {
                if let Err(e) = c.start(&h.cfg, &h.net, &h.sim).await {
                    h.violate("a coordinator restarts", e);
                }
            }
        }
        Fault::PauseCoord(n) => h.net.gate(*n).pause(),
        Fault::ResumeCoord(n) => h.net.gate(*n).resume(),
        Fault::Partition(side) => {
            let all = all_parties(h);
            let mut l = h.links.lock().unwrap_or_else(PoisonError::into_inner);
            for a in side {
                for b in all.iter().filter(|b| !side.contains(b)) {
                    l.cut.insert((a.clone(), b.clone()));
                }
            }
        }
        Fault::Cut(a, b) => {
            h.links.lock().unwrap_or_else(PoisonError::into_inner).cut.insert((a.clone(), b.clone()));
        }
        Fault::Lossy(a, b, percent) => {
            h.links.lock().unwrap_or_else(PoisonError::into_inner).loss.insert((*a.min(b), *a.max(b)), *percent);
        }
        Fault::LossyAgent(i, c, percent) => {
            h.links.lock().unwrap_or_else(PoisonError::into_inner).agent_loss.insert((*i, *c), *percent);
        }
        Fault::Heal => {
            let mut l = h.links.lock().unwrap_or_else(PoisonError::into_inner);
            l.cut.clear();
            l.loss.clear();
            l.agent_loss.clear();
        }
        Fault::ClockStep(n, ms) => {
            if let Some(c) = h.coords.lock().await.get(n) {
                c.clock.step(*ms);
            }
        }
        Fault::ClockDrift(n, ppm) => {
            if let Some(c) = h.coords.lock().await.get(n) {
                c.clock.set_drift_ppm(*ppm);
            }
        }
        Fault::SlowReplica(i, ms) => {
            let _ = h.sim.update_timing(&h.servers[*i], |t| t.apply_cost = Duration::from_millis(*ms));
        }
        Fault::SlowStatements(i, ms) => {
            let _ = h.sim.update_timing(&h.servers[*i], |t| t.statement_delay = Duration::from_millis(*ms));
        }
        Fault::Switchover => {
            let h2 = h.clone();
            tokio::spawn(async move {
                let engine = {
                    let coords = h2.coords.lock().await;
                    coords
                        .values()
                        .filter(|c| !c.gate.paused())
                        .filter_map(|c| c.running.as_ref())
                        .find(|r| r.consensus.view().is_leader)
                        .map(|r| r.engine.clone())
                };
                if let Some(e) = engine {
                    let ask = FailoverAsk {
                        kind: FailoverKind::Switchover,
                        to: None,
                        actor: "operator".into(),
                        accept_loss: false,
                        request_id: None,
                    };
                    let r = tokio::time::timeout(Duration::from_secs(30), e.request(&h2.cluster, ask)).await;
                    h2.trace(format!("switchover: {:?}", r.map(|r| r.map_err(|e| e.to_string()))));
                }
            });
        }
        Fault::Ack => {
            let last = h
                .most_applied()
                .and_then(|s| s.registry.clusters.get(&h.cluster)?.history.last().map(|f| f.id.clone()));
            if let Some(id) = last {
                let r = h.commit(Command::AckFailover { name: h.cluster.clone(), id: Some(id) }, "operator").await;
                h.trace(format!("ack: {:?}", r.map(|_| ())));
            }
        }
        Fault::Maintenance(i, ms) => {
            let since_ms = WALL_START_MS + h.ms();
            let m = primus_types::failover::Maintenance {
                reason: "simulated operator".into(),
                by: "operator".into(),
                since_ms,
                until_ms: since_ms + ms,
            };
            let instance = i.map(|i| h.servers[i].clone());
            let r = h
                .commit(Command::SetMaintenance { name: h.cluster.clone(), instance, maintenance: Some(m) }, "operator")
                .await;
            h.trace(format!("maintenance: {:?}", r.map(|_| ())));
        }
        Fault::EndMaintenance(i) => {
            let instance = i.map(|i| h.servers[i].clone());
            let r = h
                .commit(Command::SetMaintenance { name: h.cluster.clone(), instance, maintenance: None }, "operator")
                .await;
            h.trace(format!("end maintenance: {:?}", r.map(|_| ())));
        }
        Fault::HealAll => {
            {
                let mut l = h.links.lock().unwrap_or_else(PoisonError::into_inner);
                l.cut.clear();
                l.loss.clear();
                l.agent_loss.clear();
            }
            for i in 0..h.servers.len() {
                let _ = h.sim.resume(&h.servers[i]);
                if h.sim.process_state(&h.servers[i]).ok() == Some(crate::mysql::ProcState::Crashed) {
                    let _ = h.sim.start(&h.servers[i]);
                }
                let _ = h.sim.set_timing(&h.servers[i], crate::mysql::ReplicaTiming::default());
                if h.opts.agents && !h.agents.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&i) {
                    start_agent(h, i, h.ms() ^ (i as u64));
                }
            }
            let mut coords = h.coords.lock().await;
            for c in coords.values_mut() {
                c.gate.resume();
                if c.running.is_none() {
                    if let Err(e) = c.start(&h.cfg, &h.net, &h.sim).await {
                        h.violate("a coordinator restarts", e);
                    }
                }
            }
            drop(coords);
            // The operator ends every maintenance too (the group must converge after),
            // once a leader takes it.
            let h2 = h.clone();
            tokio::spawn(async move { end_all_maintenance(&h2).await });
        }
    }
    h.sync_coord_links();
    h.sim.links_changed();
}

/// End the cluster's and every server's maintenance (retried while no leader takes it).
async fn end_all_maintenance(h: &Harness) {
    let Some(c) = h.most_applied().and_then(|s| s.registry.clusters.get(&h.cluster).cloned()) else { return };
    let mut targets: Vec<Option<InstanceAddr>> = c.instance_maintenance.keys().cloned().map(Some).collect();
    if c.cluster_maintenance.is_some() {
        targets.push(None);
    }
    for instance in targets {
        let cmd = Command::SetMaintenance { name: h.cluster.clone(), instance, maintenance: None };
        for _ in 0..50 {
            if h.commit(cmd.clone(), "operator").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn all_parties(h: &Harness) -> Vec<Party> {
    let mut v: Vec<Party> = (1..=h.opts.coordinators as NodeId).map(Party::Coord).collect();
    v.extend((0..h.servers.len()).map(Party::Server));
    v.push(Party::Apps);
    v
}

/// An application client: finds the primary as primus-client does (asks a coordinator,
/// moving to the next when one does not answer) and writes unique rows to it.
/// An application client, following the primary as docs/clients.md tells applications to:
/// connect with a `LINEARIZABLE` GetPrimary, follow with the watch (the answering node's
/// applied `primary_state`, as `STALE` reads and `WatchPrimary` events give it), and ask
/// again with `LINEARIZABLE` when a write fails. A linearizable read is answered when the
/// node reached is, or can reach, a leader that has heard from a quorum (a follower
/// forwards it), from that leader's applied state; otherwise the next endpoint is tried.
async fn client_loop(h: Arc<Harness>, id: u64, mut rng: StdRng) {
    let mut endpoint = id as usize;
    let n = h.opts.coordinators as NodeId;
    let mut linearizable = true;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..40))).await;
        let to = (endpoint % n as usize) as NodeId + 1;
        let primary = if h.blocked(&Party::Apps, &Party::Coord(to)) {
            None
        } else {
            let coords = h.coords.lock().await;
            let reachable = |c: &SimCoordinator| !c.gate.paused() && c.running.is_some();
            let node = coords.get(&to).filter(|c| reachable(c));
            let answering = if linearizable {
                let window = h.cfg.raft.election_timeout_min_ms;
                node.and_then(|_| {
                    coords.values().find(|l| {
                        reachable(l)
                            && l.running.as_ref().is_some_and(|r| r.consensus.view().leads_with_quorum(window))
                            && (l.id == to || !h.blocked(&Party::Coord(to), &Party::Coord(l.id)))
                    })
                })
            } else {
                node
            };
            answering.and_then(|c| c.running.as_ref()).and_then(|r| {
                r.state.read(|s| s.registry.clusters.get(&h.cluster).and_then(|c| c.primary_state().primary))
            })
        };
        let Some(primary) = primary else {
            endpoint += 1;
            continue;
        };
        linearizable = false;
        let row = (id << 40) | rng.gen_range(0..(1u64 << 39));
        match tokio::time::timeout(Duration::from_secs(1), h.sim.app_write(id, &primary, row)).await {
            Ok(Ok(ack)) => {
                let at = h.sim.txn(ack.txn).map(|t| t.committed_at_ms).unwrap_or(0);
                h.log.lock().unwrap_or_else(PoisonError::into_inner).acks.push((at, ack.server, row));
            }
            Ok(Err(AppError::ConnectionLost)) | Err(_) => {
                h.log.lock().unwrap_or_else(PoisonError::into_inner).unknown += 1;
                linearizable = true;
            }
            Ok(Err(_)) => {
                h.log.lock().unwrap_or_else(PoisonError::into_inner).failed += 1;
                linearizable = true;
                endpoint += 1;
            }
        }
    }
}

/// Sample every coordinator's applied state; their incarnations, and whether any view
/// changed since the last sample.
async fn sample_views(h: &Harness) -> (BTreeMap<NodeId, u64>, bool) {
    let coords = h.coords.lock().await;
    let mut views = h.views.lock().unwrap_or_else(PoisonError::into_inner);
    let mut changed = false;
    for (id, c) in coords.iter() {
        // The applied state is a function of the last applied log id: a view that applied
        // the same entry is the same view, and is not copied again (the checker samples
        // every 10 simulated ms; the state changes far less often).
        let applied = c.running.as_ref().map(|r| r.state.read(|s| s.last_applied));
        let same = match (views.get(id), applied) {
            (Some(Some(v)), Some(a)) => v.last_applied == a,
            (Some(None), None) => true,
            _ => false,
        };
        if !same {
            views.insert(*id, c.running.as_ref().map(|r| r.state.read(light)));
            changed = true;
        }
    }
    (coords.iter().map(|(id, c)| (*id, c.incarnation)).collect(), changed)
}

/// What the invariants read of a coordinator's applied state: how far it applied and
/// its cluster records (shared pointers), without the audit log — copying that every
/// 10 simulated ms took most of a run's time.
fn light(s: &AppliedState) -> AppliedState {
    AppliedState {
        last_applied: s.last_applied,
        membership: s.membership.clone(),
        registry: primus_types::state::Registry { clusters: s.registry.clusters.clone(), ..Default::default() },
    }
}

/// Invariants checked every 10 simulated ms.
async fn check_loop(h: Arc<Harness>) {
    let mut writable: Vec<bool> = h.servers.iter().map(|a| a == &h.servers[0]).collect();
    // Per coordinator incarnation: the highest epoch seen.
    let mut epochs: BTreeMap<(NodeId, u64), u64> = BTreeMap::new();
    let mut tick = 0u64;
    let mut leaders: Vec<(NodeId, u64)> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tick += 1;
        let (now_leaders, code) = {
            let coords = h.coords.lock().await;
            let leading = || {
                coords
                    .values()
                    .filter_map(|c| c.running.as_ref().map(|r| (c.id, r, r.consensus.view())))
                    .filter(|(_, _, v)| v.is_leader)
            };
            let now_leaders: Vec<(NodeId, u64)> = leading().map(|(id, _, v)| (id, v.term)).collect();
            // The leader's analysis, sampled.
            let code = if tick.is_multiple_of(10) {
                leading().next().and_then(|(_, r, _)| r.engine.last_analysis(&h.cluster)).map(|(_, a)| a.code)
            } else {
                None
            };
            (now_leaders, code)
        };
        if let Some(code) = code {
            *h.log.lock().unwrap_or_else(PoisonError::into_inner).codes.entry(format!("{code:?}")).or_default() += 1;
        }
        if now_leaders != leaders {
            let l: Vec<String> = now_leaders.iter().map(|(id, t)| format!("c{id} (term {t})")).collect();
            h.trace(format!("leader: {}", if l.is_empty() { "none".into() } else { l.join(", ") }));
            leaders = now_leaders;
        }
        // No await from the sample to the writability reads below: nothing moves between.
        let (incarnations, views_changed) = sample_views(&h).await;
        // Epochs only grow (on each node, within one run of it).
        if views_changed {
            let views = h.views.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, v) in views.iter() {
                let Some(v) = v else { continue };
                let Some(c) = v.registry.clusters.get(&h.cluster) else { continue };
                let key = (*id, incarnations.get(id).copied().unwrap_or(0));
                let seen = epochs.entry(key).or_insert(c.epoch);
                if c.epoch < *seen {
                    h.violate("epochs only grow", format!("node {id}: epoch {} after {}", c.epoch, *seen));
                }
                *seen = (*seen).max(c.epoch);
            }
        }
        // A server becomes writable only when a committed record makes it the primary.
        let now_writable = h.sim.writable_all(&h.servers);
        for (i, a) in h.servers.iter().enumerate() {
            let now = now_writable.get(i).copied().unwrap_or(false);
            let before = std::mem::replace(&mut writable[i], now);
            if !now || before {
                continue;
            }
            let best = h.most_applied();
            let ok =
                best.as_ref().and_then(|s| s.registry.clusters.get(&h.cluster)).is_some_and(|c| match c.in_flight() {
                    Some(f) if f.kind.changes_primary() => &f.candidate == a,
                    _ => c.topology.primary.as_ref() == Some(a),
                });
            if !ok {
                h.violate(
                    "a server is made writable only by a committed record",
                    format!("{a} became writable; committed state: {}", describe(best.as_ref(), &h.cluster)),
                );
            }
            // No-loss mode: a server made writable (a promotion, or the primary
            // unfenced) holds every write acknowledged so far — on every later
            // primary, not only the final one.
            if h.opts.semi_sync {
                let rows = h.sim.rows(a).unwrap_or_default();
                let missing: Vec<(u64, InstanceAddr, u64)> = {
                    let log = h.log.lock().unwrap_or_else(PoisonError::into_inner);
                    log.acks.iter().filter(|(_, _, r)| !rows.contains(r)).cloned().collect()
                };
                if let Some((at, server, row)) = missing.first() {
                    h.violate(
                        "in no-loss mode every acknowledged write is on every later primary",
                        format!(
                            "{a} became writable without {} acknowledged rows, e.g. row {row} committed on {server} at \
                             {at}; committed state: {}",
                            missing.len(),
                            describe(best.as_ref(), &h.cluster)
                        ),
                    );
                }
            }
        }
    }
}

fn server_line(sim: &SimMysql, a: &InstanceAddr) -> String {
    match sim.observe(a) {
        Ok(o) => {
            let repl: Vec<String> = o
                .replication
                .iter()
                .map(|r| {
                    format!("from {}:{} io {:?} sql {}", r.source_host, r.source_port, r.io_running, r.sql_running)
                })
                .collect();
            format!(
                "{a} {:?} read_only {} semi-sync source {:?}/{:?} replica {:?} clients {:?}; {}",
                sim.process_state(a).ok(),
                o.read_only,
                o.semi_sync.source_enabled,
                o.semi_sync.source_active,
                o.semi_sync.replica_enabled,
                o.semi_sync.source_clients,
                if repl.is_empty() { "replicates from nobody".into() } else { repl.join(", ") }
            )
        }
        Err(e) => format!("{a}: {e}"),
    }
}

async fn leader_analysis(h: &Harness) -> Option<String> {
    let coords = h.coords.lock().await;
    coords
        .values()
        .filter_map(|c| c.running.as_ref())
        .find(|r| r.consensus.view().is_leader)
        .and_then(|r| r.engine.last_analysis(&h.cluster))
        .map(|(_, a)| format!("{:?} {:?}", a.code, a.evidence))
}

fn describe(s: Option<&AppliedState>, cluster: &ClusterName) -> String {
    let Some(c) = s.and_then(|s| s.registry.clusters.get(cluster)) else { return "none".into() };
    let flight = c.in_flight().map(|f| format!(", failover {} {} → {} in flight", f.id, f.old_primary, f.candidate));
    format!(
        "epoch {} primary {:?}{}",
        c.epoch,
        c.topology.primary.as_ref().map(ToString::to_string),
        flight.unwrap_or_default()
    )
}

/// After every fault healed: one writable primary, named by every coordinator, nothing
/// in flight. Empty when converged; otherwise what is still wrong.
async fn converged(h: &Harness, healed_ms: u64) -> Vec<String> {
    sample_views(h).await;
    let mut wrong = Vec::new();
    let writable: Vec<&InstanceAddr> = h.servers.iter().filter(|a| h.sim.writable(a).unwrap_or(false)).collect();
    let views = h.views.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let primaries: BTreeSet<Option<InstanceAddr>> = views
        .values()
        .map(|v| v.as_ref().and_then(|s| s.registry.clusters.get(&h.cluster)).and_then(|c| c.topology.primary.clone()))
        .collect();
    if writable.len() != 1 {
        wrong.push(format!("{} writable servers: {writable:?}", writable.len()));
    }
    if primaries.len() != 1 {
        wrong.push(format!("the coordinators name different primaries: {primaries:?}"));
    } else if let (Some(Some(p)), [w]) = (primaries.iter().next(), writable.as_slice()) {
        if p != *w {
            wrong.push(format!("the coordinators name {p} but {w} is writable"));
        }
    }
    for (id, v) in &views {
        if let Some(f) = v.as_ref().and_then(|s| s.registry.clusters.get(&h.cluster)).and_then(|c| c.in_flight()) {
            wrong.push(format!("node {id}: failover {} still in flight", f.id));
        }
    }
    // Available, not only writable: the clients' writes are acknowledged again.
    if let [w] = writable.as_slice() {
        let log = h.log.lock().unwrap_or_else(PoisonError::into_inner);
        if !log.acks.iter().any(|(at, s, _)| *at > healed_ms && s == *w) {
            wrong.push(format!("no write acknowledged by {w} since every fault healed"));
        }
    }
    wrong
}

/// What the runbook has an operator do once the faults are over: `primusctl ack` a
/// failed failover (after checking its candidate, which primus could not), and
/// `primusctl rejoin` each demoted former primary — one holding divergent transactions
/// rebuilt from the primary first (MySQL) or rejoined with `--discard-divergent` (MariaDB).
async fn operator_rejoins(h: &Harness, done: &mut BTreeSet<InstanceAddr>) {
    let Some(c) = h.most_applied().and_then(|s| s.registry.clusters.get(&h.cluster).cloned()) else { return };
    if let Some(f) = c
        .history
        .last()
        .filter(|f| f.acked_by.is_none() && matches!(f.outcome, Some(primus_types::FailoverOutcome::Failed(_))))
    {
        let r = h.commit(Command::AckFailover { name: h.cluster.clone(), id: Some(f.id.clone()) }, "operator").await;
        h.trace(format!("operator: ack failed failover {}: {:?}", f.id, r.map(|_| ())));
    }
    let engine = {
        let coords = h.coords.lock().await;
        coords
            .values()
            .filter_map(|c| c.running.as_ref())
            .find(|r| r.consensus.view().is_leader)
            .map(|r| r.engine.clone())
    };
    let Some(engine) = engine else { return };
    let todo: Vec<InstanceAddr> = c.demoted.iter().filter(|a| !done.contains(*a)).cloned().collect();
    for addr in &todo {
        let r = tokio::time::timeout(Duration::from_secs(10), engine.rejoin(&h.cluster, addr, "operator", false)).await;
        match r {
            Ok(Ok(j)) => {
                h.trace(format!("operator: rejoin {addr}: {}", j.message));
                done.insert(addr.clone());
            }
            Ok(Err(e)) if e.to_string().contains("is divergent") => {
                // The runbook: rebuild it from the primary, or on MariaDB replicate from the
                // promotion point (`rejoin --discard-divergent`); in no-loss mode what
                // diverged was never acknowledged.
                let primary = c.topology.primary.clone();
                let discard = !h.opts.mysql;
                if !discard {
                    if let Some(p) = &primary {
                        let _ = h.sim.clone_data(p, addr);
                    }
                }
                let r =
                    tokio::time::timeout(Duration::from_secs(10), engine.rejoin(&h.cluster, addr, "operator", discard))
                        .await;
                let how = if discard { "rejoin --discard-divergent" } else { "rebuild from the primary, rejoin" };
                match r {
                    Ok(Ok(j)) => {
                        h.trace(format!("operator: {how} {addr}: {}", j.message));
                        done.insert(addr.clone());
                    }
                    Ok(Err(e)) => h.trace(format!("operator: {how} {addr} refused: {e}")),
                    Err(_) => h.trace(format!("operator: {how} {addr} timed out")),
                }
            }
            Ok(Err(e)) => h.trace(format!("operator: rejoin {addr} refused: {e}")),
            Err(_) => h.trace(format!("operator: rejoin {addr} timed out")),
        }
    }
}

/// Every former primary holding transactions the primary lacks is flagged divergent by
/// primus (`primusctl divergence`, the topology flag): computed from the servers' GTIDs,
/// compared with `primus_server::divergence::check` on the same observation.
fn divergence_check(h: &Harness) {
    let Some(c) = h.most_applied().and_then(|s| s.registry.clusters.get(&h.cluster).cloned()) else { return };
    let Some(p) = c.topology.primary.clone() else { return };
    let Ok(primary_has) = h.sim.executed(&p) else { return };
    for d in &c.demoted {
        let Ok(has) = h.sim.executed(d) else { continue };
        let Some(extra) = primus_mysql::AnyGtidSet::errant(&has, &primary_has) else { continue };
        if extra.is_empty() {
            continue;
        }
        let seen = h.sim.observe(d).ok().and_then(|o| primus_server::divergence::check(&c, d, &o));
        match seen {
            Some(Ok(x)) if !x.divergence.is_empty() => {
                h.trace(format!("divergence: {d} holds {extra}, flagged: {}", x.flag()));
                h.log.lock().unwrap_or_else(PoisonError::into_inner).divergent += 1;
            }
            other => h.violate(
                "every divergent transaction on a former primary is flagged",
                format!(
                    "{d} holds {extra} that primary {p} lacks; primus says {}",
                    match other {
                        Some(Ok(_)) => "not divergent".to_string(),
                        Some(Err(e)) => format!("it cannot tell: {e}"),
                        None => "it is not a former primary".to_string(),
                    }
                ),
            ),
        }
    }
}

/// No-loss mode: every acknowledged row is on the final primary.
fn no_loss_check(h: &Harness) {
    let Some(primary) = h.most_applied().and_then(|s| s.registry.clusters.get(&h.cluster)?.topology.primary.clone())
    else {
        return;
    };
    let rows = h.sim.rows(&primary).unwrap_or_default();
    let log = h.log.lock().unwrap_or_else(PoisonError::into_inner);
    let lost: Vec<(u64, InstanceAddr, u64)> = log.acks.iter().filter(|(_, _, r)| !rows.contains(r)).cloned().collect();
    drop(log);
    if let Some((at, server, row)) = lost.first() {
        h.violate(
            "in no-loss mode every acknowledged write is on the final primary",
            format!(
                "{} acknowledged rows missing on {primary}, e.g. row {row} committed on {server} at {at}",
                lost.len()
            ),
        );
    }
}

/// Never two servers acknowledging writes in overlapping intervals: the servers that
/// acknowledged writes, in commit order (runs of one server merged), must follow the
/// order in which Raft's records made servers primary (the first primary, then each
/// failover's candidate that was sent a promote). Two servers taking writes at once
/// alternate more often than the records allow.
fn single_writer_check(h: &Harness) {
    let mut acks = h.log.lock().unwrap_or_else(PoisonError::into_inner).acks.clone();
    acks.sort();
    let mut primaries = vec![h.servers[0].clone()];
    if let Some(c) = h.most_applied().and_then(|s| s.registry.clusters.get(&h.cluster).cloned()) {
        for f in c.history.iter().filter(|f| f.kind.changes_primary()) {
            if f.steps.iter().any(|s| s.description.starts_with("promote")) {
                primaries.push(f.candidate.clone());
            }
        }
    }
    let mut runs: Vec<(InstanceAddr, u64, u64)> = Vec::new();
    for (at, server, row) in &acks {
        match runs.last() {
            Some((s, _, _)) if s == server => {}
            _ => runs.push((server.clone(), *at, *row)),
        }
    }
    let mut k = 0;
    for (server, at, row) in &runs {
        match primaries[k..].iter().position(|p| p == server) {
            Some(p) => k += p,
            None => {
                let order: Vec<String> = primaries.iter().map(ToString::to_string).collect();
                let seen: Vec<String> = runs.iter().map(|(s, at, _)| format!("{s}@{at}")).collect();
                h.violate(
                    "never two servers acknowledge writes in overlapping intervals",
                    format!(
                        "row {row} acknowledged by {server} at {at} out of the order Raft made primaries ({}); \
                         writers in commit order: {}",
                        order.join(" → "),
                        seen.join(", ")
                    ),
                );
                return;
            }
        }
    }
}

/// A readable report of `out`.
pub fn report(out: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "seed {} — {} violation(s) — {}", out.seed, out.violations.len(), out.shape);
    let _ = writeln!(s, "schedule:\n{}", out.schedule);
    for v in &out.violations {
        let _ = writeln!(s, "VIOLATION at {} ms: {}: {}", v.at_ms, v.invariant, v.detail);
    }
    let _ = writeln!(s, "trace:");
    for l in &out.trace {
        let _ = writeln!(s, "  {l}");
    }
    s
}

/// Whether tokio's own random choices (`select!` branch order, which watch notifier a
/// waiter queues on) are seeded: only in a build with `--cfg tokio_unstable`
/// (`.cargo/config.toml`).
pub fn seeded_runtime() -> bool {
    cfg!(tokio_unstable)
}

/// Run `opts` on a fresh seeded runtime of this thread.
pub fn run_blocking(opts: Options) -> Outcome {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_time().start_paused(true);
    #[cfg(tokio_unstable)]
    b.rng_seed(tokio::runtime::RngSeed::from_bytes(&opts.seed.to_le_bytes()));
    match b.build() {
        Ok(rt) => {
            let out = crate::agentlog::with_agent_log(|| rt.block_on(run(opts)));
            crate::agentlog::set_sink(None);
            rt.shutdown_background();
            out
        }
        Err(e) => failed_setup(&opts, Schedule::default(), format!("cannot build a runtime: {e}")),
    }
}

/// Used by the schedule: the indexes of servers and ids of coordinators.
pub fn parties(opts: &Options) -> (usize, Vec<NodeId>) {
    (opts.replicas + 1, (1..=opts.coordinators as NodeId).collect())
}

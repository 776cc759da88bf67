//! Watching MySQL/MariaDB: every coordinator probes every instance of every
//! registered cluster; followers report what they see to the leader; the leader
//! writes heartbeats on each primary and commits topology changes.
//!
//! * One task per instance, each with its own connection and its own timeouts,
//!   so a hung or cut-off instance only ever delays itself.
//! * Probe results are never committed to Raft (they change every second); the
//!   leader keeps every coordinator's latest view in memory: that is what
//!   "unreachable from 2/3 coordinators" and, later, quorum-confirmed detection
//!   are computed from.
//! * The topology (who replicates from whom) *is* committed, but only when its
//!   shape changes.

use crate::clock::Clock;
use crate::config::MysqlSection;
use crate::consensus::Consensus;
use crate::discovery::{self, replicas_of, source_of};
use primus_mysql::{Connector, IoThreadState, MysqlConn, Observation, ProbeError};
use primus_proto::raft::ObservationReport;
use primus_proto::v1::{GetTopologyResponse, InstanceView};
use primus_store::StateHandle;
use primus_types::state::ClusterRecord;
use primus_types::{ClusterName, Command, InstanceAddr, InstanceRole, NodeId, Origin, Request, Topology};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::clock::now_ms;
pub use crate::discovery::Targets;

/// How a follower's observation report reaches the leader (gRPC between coordinators;
/// a simulator delivers it over its own network).
#[async_trait::async_trait]
pub trait PeerLink: Send + Sync + 'static {
    /// Send `report` to the leader `to` at `addr`.
    async fn report(&self, to: NodeId, addr: &str, report: ObservationReport) -> Result<(), String>;
}

/// Carry a peer's record times over to this node's clock: the age a record had
/// when the peer sent it is measured on the peer's clock alone (skew cancels), and
/// is counted back from when the report arrived here. Without `sent_at_ms` (an
/// older peer) the times are taken as they are.
pub fn rebase_to_local_clock(records: &mut [ProbeRecord], sent_at_ms: u64, received_at_ms: u64) {
    if sent_at_ms == 0 {
        return;
    }
    let shift = |t: u64| received_at_ms.saturating_sub(sent_at_ms.saturating_sub(t));
    for r in records.iter_mut() {
        r.at_ms = shift(r.at_ms);
        if let Ok(o) = &mut r.result {
            // Just decoded: the record holds the only reference, nothing is copied.
            Arc::make_mut(o).taken_at_ms = shift(o.taken_at_ms);
        }
    }
}

/// One probe's outcome, as exchanged between coordinators.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub addr: InstanceAddr,
    /// When the probe finished (prober's wall clock, unix ms).
    pub at_ms: u64,
    /// Shared: every decision input and report copies the latest records.
    pub result: Result<Arc<Observation>, ProbeError>,
    /// When this node started the probe, on its monotonic clock (own probes only: never
    /// sent, never compared with another node's time).
    #[serde(skip)]
    pub started: Option<Instant>,
}

/// A primary's heartbeat connection and the lock that keeps one write in flight.
type HeartbeatWriter = (Arc<dyn MysqlConn>, Arc<tokio::sync::Mutex<()>>);

/// A probe task and the bell that makes it probe at once.
type ProbeTask = (JoinHandle<()>, Arc<tokio::sync::Notify>);

/// What counts as replication progress on a replica; any change is progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressMark {
    heartbeats: Option<u64>,
    read: Option<String>,
    io_gtid: Option<String>,
    retrieved: Option<String>,
}

/// Instances whose observations changed (see [`Monitor::take_changed`]).
#[derive(Debug, Default)]
pub struct Changed {
    pub instances: std::collections::HashSet<InstanceAddr>,
}

impl Changed {
    /// Whether `c` has one of the changed instances.
    pub fn touches(&self, c: &primus_types::state::ClusterRecord) -> bool {
        self.instances.iter().any(|a| c.topology.instances.contains_key(a))
    }
}

/// What makes an observation a change: reachable or not, and a replica's IO state.
fn change_mark(r: &ProbeRecord) -> (bool, Option<IoThreadState>) {
    (r.result.is_ok(), r.result.as_ref().ok().and_then(|o| o.replication.first()).map(|s| s.io_running))
}

struct PeerView {
    received: Instant,
    records: HashMap<InstanceAddr, ProbeRecord>,
}

pub struct Monitor {
    me: NodeId,
    cfg: MysqlSection,
    /// How this node reaches instances (real connections, or simulated ones).
    pub connector: Arc<dyn Connector>,
    consensus: Arc<dyn Consensus>,
    /// This node's wall clock.
    pub clock: Arc<dyn Clock>,
    link: Arc<dyn PeerLink>,
    state: StateHandle,
    own: RwLock<HashMap<InstanceAddr, ProbeRecord>>,
    peers: RwLock<HashMap<NodeId, PeerView>>,
    tasks: Mutex<HashMap<InstanceAddr, ProbeTask>>,
    /// One long-lived connection per primary whose loss triggers an immediate probe.
    watchers: Mutex<HashMap<InstanceAddr, JoinHandle<()>>>,
    /// Leader's clock (unix ms) of the last sign of replication progress per replica.
    progress_at: RwLock<HashMap<InstanceAddr, (ProgressMark, u64)>>,
    /// Bumped whenever an instance changes between reachable and unreachable, or a
    /// replica's IO state changes: wakes the reporter and the failover engine.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Which instances those changes were about, since the engine last asked
    /// ([`Monitor::take_changed`]): at 5,000 instances it re-analyses their clusters
    /// only, not all 1,000, on a change (every cluster still on its 200 ms tick).
    changed: Mutex<Changed>,
    /// Replicas a source lists that are not in the committed topology yet.
    candidates: Mutex<BTreeMap<InstanceAddr, ClusterName>>,
    heartbeat_writers: Mutex<HashMap<InstanceAddr, HeartbeatWriter>>,
    /// Per cluster: the last finished failover this node has applied, and when (its
    /// monotonic clock) it first saw it. Own probes started before then describe the
    /// shape the failover replaced.
    reshaped: Mutex<HashMap<ClusterName, (String, Instant)>>,
    election_timeout_min_ms: u64,
    metrics: Arc<crate::metrics::Metrics>,
    background: crate::tasks::Tasks,
}

/// Everything a [`Monitor`] needs from its node, behind seams.
pub struct MonitorParts {
    pub me: NodeId,
    pub cfg: MysqlSection,
    pub connector: Arc<dyn Connector>,
    pub consensus: Arc<dyn Consensus>,
    pub clock: Arc<dyn Clock>,
    pub link: Arc<dyn PeerLink>,
    pub state: StateHandle,
    pub election_timeout_min_ms: u64,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Monitor {
    pub fn new(p: MonitorParts) -> Arc<Monitor> {
        Arc::new(Monitor {
            me: p.me,
            cfg: p.cfg,
            connector: p.connector,
            consensus: p.consensus,
            clock: p.clock,
            link: p.link,
            state: p.state,
            own: RwLock::new(HashMap::new()),
            peers: RwLock::new(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            progress_at: RwLock::new(HashMap::new()),
            changes: tokio::sync::watch::channel(0).0,
            changed: Mutex::new(Changed::default()),
            candidates: Mutex::new(BTreeMap::new()),
            heartbeat_writers: Mutex::new(HashMap::new()),
            reshaped: Mutex::new(HashMap::new()),
            election_timeout_min_ms: p.election_timeout_min_ms,
            metrics: p.metrics,
            background: crate::tasks::Tasks::default(),
        })
    }

    /// This node's wall clock, unix ms.
    pub fn now_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    pub fn start(self: &Arc<Self>) {
        let m = self.clone();
        self.background.spawn(async move { m.reconcile_loop().await });
        let m = self.clone();
        self.background.spawn(async move { m.report_loop().await });
        let m = self.clone();
        self.background.spawn(async move { m.heartbeat_loop().await });
        let m = self.clone();
        self.background.spawn(async move { m.topology_loop().await });
    }

    /// Stop every task of this monitor (probes, reports, heartbeats, topology).
    pub fn stop(&self) {
        self.background.stop();
    }

    /// Leader with a fresh quorum acknowledgement (see `NodeCtx::leads_with_quorum`).
    fn is_leader(&self) -> bool {
        self.leads_with_quorum()
    }

    pub fn leads_with_quorum(&self) -> bool {
        self.consensus.view().leads_with_quorum(self.election_timeout_min_ms)
    }

    /// This node's own latest successful observation of `addr`, if its last probe succeeded.
    pub fn own_observation(&self, addr: &InstanceAddr) -> Option<Arc<primus_mysql::Observation>> {
        self.own.read().unwrap_or_else(|p| p.into_inner()).get(addr).and_then(|r| r.result.as_ref().ok().cloned())
    }

    /// Every coordinator's latest probe of `addr`: this node's own and each peer's
    /// (peers' only from reports received within the report TTL).
    pub fn views_of(&self, addr: &InstanceAddr) -> Vec<(NodeId, ProbeRecord)> {
        let mut out = Vec::new();
        if let Some(r) = self.own.read().unwrap_or_else(|p| p.into_inner()).get(addr) {
            out.push((self.me, r.clone()));
        }
        let ttl = self.report_ttl();
        for (id, v) in self.peers.read().unwrap_or_else(|p| p.into_inner()).iter() {
            if *id != self.me && v.received.elapsed() < ttl {
                if let Some(r) = v.records.get(addr) {
                    out.push((*id, r.clone()));
                }
            }
        }
        out
    }

    /// Every instance of every registered cluster (topology members and seeds).
    fn wanted(&self) -> BTreeMap<InstanceAddr, ClusterName> {
        let candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.state.read(|s| {
            let mut out = BTreeMap::new();
            for c in s.registry.clusters.values() {
                for a in c.topology.instances.keys().chain(c.seeds.iter()) {
                    out.insert(a.clone(), c.name.clone());
                }
            }
            for (a, c) in candidates {
                if s.registry.clusters.contains_key(&c) {
                    out.entry(a).or_insert(c);
                }
            }
            out
        })
    }

    /// Keep exactly one probe task per wanted instance.
    async fn reconcile_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let wanted = self.wanted();
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|addr, (h, _)| {
                let keep = wanted.contains_key(addr);
                if !keep {
                    h.abort();
                    self.metrics.forget_instance(&addr.to_string());
                    tracing::info!(instance = %addr, "stopped probing (no longer in any cluster)");
                }
                keep
            });
            for (addr, cluster) in wanted {
                if !tasks.contains_key(&addr) {
                    tracing::info!(%cluster, instance = %addr, "probing");
                    let m = self.clone();
                    let a = addr.clone();
                    let now = Arc::new(tokio::sync::Notify::new());
                    let n = now.clone();
                    tasks.insert(addr, (self.background.spawn(async move { m.probe_loop(a, n).await }), now));
                }
            }
            drop(tasks);
            self.reconcile_watchers();
            let wanted = self.wanted();
            self.own.write().unwrap_or_else(|p| p.into_inner()).retain(|a, _| wanted.contains_key(a));
        }
    }

    async fn probe_loop(self: Arc<Self>, addr: InstanceAddr, now: Arc<tokio::sync::Notify>) {
        let prober = self.connector.connect(&addr);
        let mut tick = tokio::time::interval(self.cfg.probe_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ok: Option<bool> = None;
        let mut last_mark = None;
        // Start of the last scheduled probe (not the extra ones `probe_now` asks for).
        let mut last_scheduled: Option<Instant> = None;
        loop {
            let scheduled = tokio::select! {
                biased;
                _ = tick.tick() => true,
                _ = now.notified() => false,
            };
            let started = Instant::now();
            if scheduled {
                if let Some(prev) = last_scheduled.replace(started) {
                    self.metrics.probe_interval.observe(started.duration_since(prev).as_secs_f64());
                }
            }
            let result = match tokio::time::timeout(self.connector.probe_deadline(), prober.probe()).await {
                Ok(r) => r,
                Err(_) => {
                    prober.disconnect().await;
                    Err(ProbeError::Timeout {
                        stage: primus_mysql::ProbeStage::Connect,
                        after_ms: self.connector.probe_deadline().as_millis() as u64,
                    })
                }
            };
            let result = result.map(|mut o| {
                o.addr = addr.clone();
                o
            });
            self.metrics.observe_probe(&addr.to_string(), started.elapsed(), &result);
            let ok = result.is_ok();
            if let Ok(o) = &result {
                self.track_progress(&addr, o);
            }
            if last_ok == Some(true) && !ok {
                // Emergency checks (orchestrator's double-checking): a primary that just
                // failed a probe gets its replicas probed every 250 ms for a while, so
                // "the replicas lost it" is known within a heartbeat period or two
                // instead of a probe interval or two.
                self.emergency_probe_replicas(&addr);
            }
            if last_ok != Some(ok) {
                match &result {
                    Ok(o) => tracing::info!(instance = %addr, server_id = o.server_id, "instance reachable"),
                    Err(e) => tracing::warn!(instance = %addr, error = %e, "instance probe failed"),
                }
                last_ok = Some(ok);
            }
            let rec = ProbeRecord {
                addr: addr.clone(),
                at_ms: self.now_ms(),
                result: result.map(Arc::new),
                started: Some(started),
            };
            let mark = Some(change_mark(&rec));
            let changed = mark != last_mark;
            last_mark = mark;
            self.own.write().unwrap_or_else(|p| p.into_inner()).insert(addr.clone(), rec);
            if changed {
                self.note_changed([addr.clone()]);
            }
        }
    }

    /// Remember when a replica's replication last moved: received heartbeats (sent by
    /// its source every MASTER_HEARTBEAT_PERIOD when idle), read position or IO GTID.
    /// A primary that is alive for its replicas keeps this moving whatever the
    /// coordinators' own links do.
    fn track_progress(&self, addr: &InstanceAddr, o: &Observation) {
        let Some(r) = o.replication.first() else { return };
        let mark = ProgressMark {
            heartbeats: r.received_heartbeats,
            read: r.read_coord.as_ref().map(|c| format!("{c:?}")),
            io_gtid: r.gtid_io_pos.as_ref().map(ToString::to_string),
            retrieved: r.retrieved_gtid_set.as_ref().map(ToString::to_string),
        };
        let now = self.now_ms();
        let mut p = self.progress_at.write().unwrap_or_else(|e| e.into_inner());
        match p.get(addr) {
            Some((prev, _)) if *prev == mark => {}
            Some(_) => {
                p.insert(addr.clone(), (mark, now));
            }
            // First sight: no evidence of progress yet, none against it either.
            None => {
                p.insert(addr.clone(), (mark, 0));
            }
        }
    }

    fn emergency_probe_replicas(self: &Arc<Self>, primary: &InstanceAddr) {
        let replicas: Vec<InstanceAddr> = self.state.read(|s| {
            s.registry
                .clusters
                .values()
                .filter(|c| c.topology.primary.as_ref() == Some(primary))
                .flat_map(|c| c.topology.instances.values().filter(|i| i.source.as_ref() == Some(primary)))
                .map(|i| i.addr.clone())
                .collect()
        });
        if replicas.is_empty() {
            return;
        }
        let m = self.clone();
        self.background.spawn(async move {
            for _ in 0..20 {
                for r in &replicas {
                    m.probe_now(r);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    /// Last time (unix ms) the replica at `addr` showed replication progress.
    pub fn progress_at(&self, addr: &InstanceAddr) -> Option<u64> {
        self.progress_at.read().unwrap_or_else(|e| e.into_inner()).get(addr).map(|(_, t)| *t).filter(|t| *t > 0)
    }

    /// Probe `addr` now instead of at its next tick.
    pub fn probe_now(&self, addr: &InstanceAddr) {
        if let Some((_, n)) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            n.notify_one();
        }
    }

    /// Probe `addrs` right now, bypassing the schedule, and return the results (the
    /// double-check before a failover). Each probe has its own connection and deadline.
    /// `probe_fresh`, as the map the failover decisions take (errors as text).
    pub async fn probe_fresh_map(
        &self,
        addrs: &[InstanceAddr],
    ) -> std::collections::BTreeMap<InstanceAddr, Result<primus_mysql::Observation, String>> {
        self.probe_fresh(addrs)
            .await
            .into_iter()
            .map(|r| (r.addr, r.result.map(Arc::unwrap_or_clone).map_err(|e| e.to_string())))
            .collect()
    }

    pub async fn probe_fresh(&self, addrs: &[InstanceAddr]) -> Vec<ProbeRecord> {
        let futs = addrs.iter().map(|a| {
            let prober = self.connector.connect(a);
            let deadline = self.connector.probe_deadline();
            let clock = self.clock.clone();
            let a = a.clone();
            let metrics = self.metrics.clone();
            async move {
                let started = Instant::now();
                let r = match tokio::time::timeout(deadline, prober.probe()).await {
                    Ok(r) => r,
                    Err(_) => Err(ProbeError::Timeout {
                        stage: primus_mysql::ProbeStage::Connect,
                        after_ms: deadline.as_millis() as u64,
                    }),
                };
                metrics.observe_probe(&a.to_string(), started.elapsed(), &r);
                prober.disconnect().await;
                let result = r.map(|mut o| {
                    o.addr = a.clone();
                    Arc::new(o)
                });
                ProbeRecord { addr: a, at_ms: clock.wall_ms(), result, started: Some(started) }
            }
        });
        let recs = futures::future::join_all(futs).await;
        {
            let mut own = self.own.write().unwrap_or_else(|p| p.into_inner());
            for r in &recs {
                if let Ok(o) = &r.result {
                    self.track_progress(&r.addr, o);
                }
                own.insert(r.addr.clone(), r.clone());
            }
        }
        recs
    }

    /// One watcher per current primary: a connection parked in `DO SLEEP(..)`. A
    /// crashed mysqld closes it at once, which triggers an immediate probe instead of
    /// waiting for the next tick. A hung mysqld just keeps it parked (timeouts catch that).
    fn reconcile_watchers(self: &Arc<Self>) {
        let primaries: std::collections::BTreeSet<InstanceAddr> =
            self.state.read(|s| s.registry.clusters.values().filter_map(|c| c.topology.primary.clone()).collect());
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|a, h| {
            let keep = primaries.contains(a) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for p in primaries {
            if !w.contains_key(&p) {
                let m = self.clone();
                let a = p.clone();
                w.insert(p, self.background.spawn(async move { m.watch(a).await }));
            }
        }
    }

    async fn watch(self: Arc<Self>, addr: InstanceAddr) {
        let prober = self.connector.connect(&addr);
        loop {
            let started = Instant::now();
            let r = prober.execute(&["DO SLEEP(20)".to_string()], Duration::from_secs(25)).await;
            match r {
                Ok(()) => continue,
                Err(ProbeError::Timeout { .. }) => {
                    // Hung or silent: the probe's own timeouts deal with it.
                    prober.disconnect().await;
                }
                Err(e) => {
                    if started.elapsed() > Duration::from_millis(50) {
                        tracing::info!(instance = %addr, error = %e, "watch connection lost: probing now");
                    }
                    self.probe_now(&addr);
                    prober.disconnect().await;
                    // Don't spin against a dead server: its probe tells us when it is back.
                    tokio::time::sleep(self.cfg.probe_interval().min(Duration::from_millis(500))).await;
                }
            }
        }
    }

    /// Followers send their latest view to the leader every probe interval.
    async fn report_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.probe_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes = self.changes.subscribe();
        loop {
            // Every interval, and at once when something changed: the leader's
            // failure detection waits for these reports.
            tokio::select! {
                biased;
                _ = tick.tick() => {}
                r = changes.changed() => { if r.is_err() { return; } }
            }
            let view = self.consensus.view();
            let Some((leader, addr)) = view.leader_target() else { continue };
            if leader == self.me {
                continue;
            }
            let records: Vec<ProbeRecord> =
                self.own.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            let payload = match serde_json::to_vec(&records) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode observation report");
                    continue;
                }
            };
            let report = ObservationReport { from: self.me, term: view.term, payload, sent_at_ms: self.now_ms() };
            if let Err(e) = self.link.report(leader, &addr, report).await {
                tracing::debug!(leader, error = %e, "observation report not delivered");
            }
        }
    }

    /// The leader writes `(cluster, epoch, ts, coordinator)` on every primary.
    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.is_leader() {
                continue;
            }
            let targets: Vec<(ClusterName, InstanceAddr, u64)> = self.state.read(|s| {
                s.registry
                    .clusters
                    .values()
                    .filter(|c| c.in_flight().is_none())
                    .filter_map(|c| c.topology.primary.clone().map(|p| (c.name.clone(), p, c.epoch)))
                    .collect()
            });
            for (cluster, primary, epoch) in targets {
                let (prober, busy) = {
                    let mut w = self.heartbeat_writers.lock().unwrap_or_else(|p| p.into_inner());
                    w.entry(primary.clone())
                        .or_insert_with(|| (self.connector.connect(&primary), Arc::new(tokio::sync::Mutex::new(()))))
                        .clone()
                };
                // One write in flight per primary: a hung primary never piles up writers.
                let Ok(guard) = busy.try_lock_owned() else { continue };
                let me = self.me;
                let deadline = self.connector.probe_deadline();
                let now = self.now_ms();
                self.background.spawn(async move {
                    let _guard = guard;
                    let r =
                        tokio::time::timeout(deadline, prober.write_heartbeat(cluster.as_str(), epoch, now, me)).await;
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(%cluster, instance = %primary, epoch, error = %e, "heartbeat write failed")
                        }
                        Err(_) => {
                            prober.disconnect().await;
                            tracing::debug!(%cluster, instance = %primary, epoch, "heartbeat write timed out")
                        }
                    }
                });
            }
        }
    }

    /// The leader commits topology changes it sees in its own probes.
    async fn topology_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.probe_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.is_leader() {
                continue;
            }
            let clusters: Vec<Arc<ClusterRecord>> =
                self.state.read(|s| s.registry.clusters.values().cloned().collect());
            for c in clusters {
                // A failover owns the topology until it finishes.
                if c.in_flight().is_some() {
                    continue;
                }
                let new = if c.topology.instances.is_empty() {
                    match discovery::discover(&c.seeds, self.connector.as_ref(), self.cfg.discovery_timeout()).await {
                        Ok(d) => d.topology,
                        Err(e) => {
                            tracing::debug!(cluster = %c.name, error = %e, "topology not discovered yet");
                            continue;
                        }
                    }
                } else {
                    self.refreshed_topology(&c)
                };
                // Compared as the state machine would store it (demoted former primaries
                // marked), so that an unchanged shape is never committed again.
                let new = new.with_demoted(&c.demoted);
                if new != c.topology && !new.instances.is_empty() {
                    tracing::info!(cluster = %c.name, epoch = c.epoch, topology = %new.summary(), "topology changed");
                    let req = Request::at(
                        Command::UpdateTopology { name: c.name.clone(), topology: new },
                        Origin { actor: "primusd topology".into(), via_node: self.me },
                        self.now_ms(),
                    );
                    match tokio::time::timeout(Duration::from_secs(5), self.consensus.write(req)).await {
                        Ok(Ok((_, primus_types::Response::Rejected(r)))) => {
                            tracing::warn!(cluster = %c.name, rejection = %r, "topology change refused")
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(cluster = %c.name, error = %e, "topology change not committed"),
                        Err(_) => tracing::warn!(cluster = %c.name, "topology change not committed in 5 s"),
                    }
                }
            }
        }
    }

    /// The committed topology updated with what this node's probes show (see
    /// [`refresh_topology`]); newly seen replicas are probed as candidates until they join.
    fn refreshed_topology(&self, c: &ClusterRecord) -> Topology {
        let since = self.reshaped_at(c);
        let own = self.own.read().unwrap_or_else(|p| p.into_inner());
        let r = refresh_topology(c, &own, since);
        drop(own);
        let mut candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        for a in &r.joined {
            candidates.remove(a);
        }
        for a in r.unprobed {
            candidates.insert(a, c.name.clone());
        }
        r.topology
    }

    /// When this node first saw the last finished failover of `c` (none: `None`).
    fn reshaped_at(&self, c: &ClusterRecord) -> Option<Instant> {
        let last = c.history.iter().rev().find(|f| f.finished_at_ms.is_some())?;
        let mut seen = self.reshaped.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(c.name.clone()).or_insert_with(|| (last.id.clone(), Instant::now()));
        if entry.0 != last.id {
            *entry = (last.id.clone(), Instant::now());
        }
        Some(entry.1)
    }

    /// Accept a follower's report (leader only).
    pub fn accept_report(&self, from: NodeId, term: u64, sent_at_ms: u64, payload: &[u8]) -> Result<bool, String> {
        let received_at_ms = self.now_ms();
        let current = self.consensus.view().term;
        if term < current || !self.is_leader() {
            return Ok(false);
        }
        let mut records: Vec<ProbeRecord> = serde_json::from_slice(payload).map_err(|e| format!("bad report: {e}"))?;
        rebase_to_local_clock(&mut records, sent_at_ms, received_at_ms);
        let records: HashMap<InstanceAddr, ProbeRecord> = records.into_iter().map(|r| (r.addr.clone(), r)).collect();
        // What changed in this peer's view, as its own probe loop judges a change
        // (reachability, a replica's IO state), or every instance of a first report.
        let changed: Vec<InstanceAddr> = {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            let changed = match peers.get(&from) {
                None => records.keys().cloned().collect(),
                Some(prev) => records
                    .iter()
                    .filter(|(a, r)| prev.records.get(*a).map(change_mark) != Some(change_mark(r)))
                    .map(|(a, _)| a.clone())
                    .chain(prev.records.keys().filter(|a| !records.contains_key(*a)).cloned())
                    .collect(),
            };
            peers.insert(from, PeerView { received: Instant::now(), records });
            changed
        };
        self.note_changed(changed);
        Ok(true)
    }

    /// Record that `instances` changed and wake the engine and the reporter.
    /// Nothing to record (a report that changed nothing) wakes nobody.
    fn note_changed(&self, instances: impl IntoIterator<Item = InstanceAddr>) {
        let mut instances = instances.into_iter().peekable();
        if instances.peek().is_none() {
            return;
        }
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).instances.extend(instances);
        self.changes.send_modify(|n| *n += 1);
    }

    /// The instances that changed since the last call (and forgets them).
    pub fn take_changed(&self) -> Changed {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// How old a peer's report may be and still count.
    fn report_ttl(&self) -> Duration {
        (self.cfg.probe_interval() * 3).max(Duration::from_secs(3))
    }

    /// The topology with every instance's latest state, as this node sees it
    /// (with every coordinator's reachability when `with_peers`).
    pub fn view(&self, c: &ClusterRecord, with_peers: bool) -> GetTopologyResponse {
        let now = self.now_ms();
        let own = self.own.read().unwrap_or_else(|p| p.into_inner());
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let ttl = self.report_ttl();
        let fresh_peers: Vec<(&NodeId, &PeerView)> = if with_peers {
            peers.iter().filter(|(id, v)| **id != self.me && v.received.elapsed() < ttl).collect()
        } else {
            vec![]
        };
        let primary_obs = c.topology.primary.as_ref().and_then(|p| own.get(p)).and_then(|r| r.result.as_ref().ok());

        let instances = c
            .topology
            .instances
            .values()
            .map(|inst| {
                let rec = own.get(&inst.addr);
                let obs = rec.and_then(|r| r.result.as_ref().ok());
                let mut seen_by = std::collections::HashMap::new();
                if let Some(r) = rec {
                    seen_by.insert(self.me, r.result.is_ok());
                }
                for (id, v) in &fresh_peers {
                    if let Some(r) = v.records.get(&inst.addr) {
                        seen_by.insert(**id, r.result.is_ok());
                    }
                }
                let mut flags = Vec::new();
                let down = seen_by.values().filter(|ok| !**ok).count();
                if down > 0 {
                    flags.push(format!("unreachable from {down}/{} coordinators", seen_by.len()));
                }
                let repl = obs.and_then(|o| o.replication.first());
                let is_replica = matches!(inst.role, InstanceRole::Replica | InstanceRole::Intermediate);
                if let (true, Some(o)) = (is_replica, obs) {
                    match repl {
                        None => flags.push("not replicating (no replication configured)".into()),
                        Some(r) if r.io_running != IoThreadState::Yes || !r.sql_running => {
                            flags.push("not replicating".into())
                        }
                        _ => {}
                    }
                    if !o.read_only {
                        flags.push("writable replica".into());
                    }
                    if let Some(r) = primary_obs.and_then(|p| primus_mysql::errant_transactions(o, p)) {
                        if !r.is_empty() {
                            flags.push(format!("errant GTID: {r}"));
                        }
                    }
                }
                // A former primary that executed transactions after it was replaced.
                match obs.and_then(|o| crate::divergence::check(c, &inst.addr, o)) {
                    Some(Ok(d)) if !d.divergence.is_empty() => flags.push(d.flag()),
                    Some(Err(e)) => flags.push(format!("divergence unknown: {e}")),
                    _ => {}
                }
                if inst.role == InstanceRole::Primary && obs.map(|o| o.read_only).unwrap_or(false) {
                    flags.push("primary is read_only".into());
                }
                let maintenance = c.instance_maintenance_at(&inst.addr, now).map(maintenance_view);
                if let Some(m) = &maintenance {
                    flags.push(format!(
                        "in maintenance for {} more ({})",
                        human_secs((m.until_ms - now).div_ceil(1000)),
                        m.reason
                    ));
                }
                let promotion_rule = c.promotion_rules.get(&inst.addr).copied().unwrap_or_default();
                if promotion_rule == primus_types::PromotionRule::MustNot {
                    flags.push("never promoted (must_not)".into());
                }
                let heartbeat_delay_ms =
                    obs.and_then(|o| o.heartbeat_of(c.name.as_str()).map(|h| o.taken_at_ms as i64 - h.ts_ms as i64));
                InstanceView {
                    addr: inst.addr.to_string(),
                    role: inst.role.to_string(),
                    source: inst.source.as_ref().map(ToString::to_string),
                    server_id: obs.map(|o| o.server_id).unwrap_or(inst.server_id),
                    flavor: inst.flavor.clone(),
                    version: obs.map(|o| o.server.version.to_string()).unwrap_or_else(|| inst.version.clone()),
                    read_only: obs.map(|o| o.read_only),
                    gtid_executed: obs.map(|o| o.gtid.executed().to_string()).unwrap_or_default(),
                    io_running: repl.map(|r| {
                        match r.io_running {
                            IoThreadState::Yes => "yes",
                            IoThreadState::Connecting => "connecting",
                            IoThreadState::No => "no",
                        }
                        .to_string()
                    }),
                    sql_running: repl.map(|r| r.sql_running),
                    seconds_behind: repl.and_then(|r| r.seconds_behind),
                    heartbeat_delay_ms,
                    reachable: obs.is_some(),
                    seen_by,
                    flags,
                    last_error: rec.and_then(|r| r.result.as_ref().err()).map(ToString::to_string),
                    observed_at_ms: rec.map(|r| r.at_ms),
                    probe_latency_us: obs.map(|o| o.latency_us),
                    last_io_error: repl
                        .and_then(|r| r.last_io_error.as_ref())
                        .map(|e| format!("{}: {}", e.errno, e.message)),
                    last_sql_error: repl
                        .and_then(|r| r.last_sql_error.as_ref())
                        .map(|e| format!("{}: {}", e.errno, e.message)),
                    promotion_rule: promotion_rule.to_string(),
                    datacenter: c.datacenters.get(&inst.addr).cloned().unwrap_or_default(),
                    maintenance,
                }
            })
            .collect();
        GetTopologyResponse {
            cluster: c.name.to_string(),
            epoch: c.epoch,
            primary: c.topology.primary.as_ref().map(ToString::to_string).unwrap_or_default(),
            instances,
            served_by: self.me,
            topology_index: c.topology_index,
            cluster_maintenance: c.cluster_maintenance_at(now).map(maintenance_view),
            settings: Some(primus_proto::v1::ClusterSettings {
                automatic_failover: c.settings.automatic_failover,
                semi_sync: c.settings.semi_sync,
                failover: c.settings.failover.entries().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            }),
            linearizable: false,
        }
    }
}

/// What [`refresh_topology`] found.
pub struct Refreshed {
    pub topology: Topology,
    /// Replicas that sources list, not in the topology, that this node has not probed
    /// successfully yet.
    pub unprobed: Vec<InstanceAddr>,
    /// Replicas that join the topology now.
    pub joined: Vec<InstanceAddr>,
}

/// The committed topology of `c` updated with this node's own probes `own`: new
/// replicas, changed sources. Pure.
///
/// * Unreachable instances keep their last known place.
/// * Probes started before `since` (when this node saw the last failover finish, on its
///   own monotonic clock) are not used: they show the shape the failover replaced (the
///   candidate still a replica, replicas under the old primary).
/// * The recorded primary stays the primary: only a failover moves it (the state
///   machine refuses anything else). It is kept as the head of the tree even when its
///   probe shows it replicating from another instance (an operator's change outside
///   primus; `topology` flags it).
pub fn refresh_topology(
    c: &ClusterRecord,
    own: &HashMap<InstanceAddr, ProbeRecord>,
    since: Option<Instant>,
) -> Refreshed {
    let usable = |a: &InstanceAddr| {
        own.get(a)
            .filter(|r| since.is_none_or(|s| r.started.is_some_and(|t| t >= s)))
            .and_then(|r| r.result.as_ref().ok())
    };
    let node = |o: &Observation, primary: bool| {
        (
            if primary { None } else { source_of(o) },
            o.server_id,
            o.server.flavor.to_string().to_lowercase(),
            o.server.version.to_string(),
        )
    };
    let mut nodes: BTreeMap<InstanceAddr, (Option<InstanceAddr>, u32, String, String)> = BTreeMap::new();
    let mut discovered = Vec::new();
    for (addr, inst) in &c.topology.instances {
        let primary = c.topology.primary.as_ref() == Some(addr);
        match usable(addr) {
            Some(o) => {
                nodes.insert(addr.clone(), node(o, primary));
                discovered.extend(replicas_of(o));
            }
            None => {
                let source = if primary { None } else { inst.source.clone() };
                nodes.insert(addr.clone(), (source, inst.server_id, inst.flavor.clone(), inst.version.clone()));
            }
        }
    }
    // Newly seen replicas join once this node has probed them successfully; until then
    // they are candidates, probed like members.
    let (mut unprobed, mut joined) = (Vec::new(), Vec::new());
    for a in discovered {
        if nodes.contains_key(&a) {
            continue;
        }
        match usable(&a) {
            Some(o) => {
                nodes.insert(a.clone(), node(o, false));
                joined.push(a);
            }
            None => unprobed.push(a),
        }
    }
    let nodes = nodes.into_iter().map(|(a, (s, id, f, v))| (a, s, id, f, v)).collect();
    Refreshed { topology: Topology::from_edges(nodes, c.topology.primary.as_ref()), unprobed, joined }
}

/// `2h`, `1h 5m`, `59m 59s`, `45s`: the two largest units.
fn human_secs(s: u64) -> String {
    if s == 0 {
        return "0s".into();
    }
    let parts = [(s / 86400, "d"), (s / 3600 % 24, "h"), (s / 60 % 60, "m"), (s % 60, "s")];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..].iter().take(2).filter(|(n, _)| *n > 0).map(|(n, u)| format!("{n}{u}")).collect::<Vec<_>>().join(" ")
}

fn maintenance_view(m: &primus_types::Maintenance) -> primus_proto::v1::MaintenanceView {
    primus_proto::v1::MaintenanceView {
        reason: m.reason.clone(),
        by: m.by.clone(),
        since_ms: m.since_ms,
        until_ms: m.until_ms,
    }
}

impl primus_raft::ObservationSink for Monitor {
    fn accept(&self, from: NodeId, term: u64, sent_at_ms: u64, payload: &[u8]) -> Result<bool, String> {
        self.accept_report(from, term, sent_at_ms, payload)
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn durations_are_shown_in_their_two_largest_units() {
        assert_eq!(human_secs(7200), "2h");
        assert_eq!(human_secs(7199), "1h 59m");
        assert_eq!(human_secs(3900), "1h 5m");
        assert_eq!(human_secs(59 * 60 + 59), "59m 59s");
        assert_eq!(human_secs(45), "45s");
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(90_000), "1d 1h");
    }

    fn record(at_ms: u64) -> ProbeRecord {
        ProbeRecord {
            addr: "db1:3306".parse().expect("addr"),
            at_ms,
            result: Err(ProbeError::Unreachable { message: "test".into() }),
            started: None,
        }
    }

    #[test]
    fn a_peer_clock_ten_seconds_behind_does_not_make_its_fresh_views_stale() {
        // The peer's clock reads 10 s less than ours: it probed 200 ms before sending.
        let (peer_sent, our_received) = (1_000_000u64, 1_010_005u64);
        let mut r = vec![record(peer_sent - 200)];
        rebase_to_local_clock(&mut r, peer_sent, our_received);
        assert_eq!(r[0].at_ms, our_received - 200);
    }

    #[test]
    fn a_peer_clock_ahead_does_not_make_old_views_look_new() {
        let (peer_sent, our_received) = (2_000_000u64, 1_990_000u64);
        let mut r = vec![record(peer_sent - 5_000)];
        rebase_to_local_clock(&mut r, peer_sent, our_received);
        assert_eq!(r[0].at_ms, our_received - 5_000, "5 s old on the peer's clock is 5 s old here");
    }

    mod refresh {
        use super::super::*;
        use primus_mysql::samples::{a, observation, row, P, R1, R2};

        /// Cluster `c`: primary P with replicas R1, R2, as registered.
        fn cluster() -> ClusterRecord {
            let n = |p: u16, s: Option<u16>| (a(p), s.map(a), p as u32 - 3305, "mariadb".into(), "10.11.6".into());
            let json = serde_json::json!({"name": "c", "seeds": [a(P)], "registered_at_index": 1,
                "registered_at_ms": 0, "registered_by": "t"});
            let mut c: ClusterRecord = serde_json::from_value(json).expect("record");
            c.topology = Topology::from_edges(vec![n(P, None), n(R1, Some(P)), n(R2, Some(P))], None);
            c
        }

        fn probe(port: u16, source: Option<u16>, started: Instant) -> (InstanceAddr, ProbeRecord) {
            let mut o = observation(port);
            o.replication = source.map(row).into_iter().collect();
            (a(port), ProbeRecord { addr: a(port), at_ms: 0, result: Ok(Arc::new(o)), started: Some(started) })
        }

        #[test]
        fn probes_from_before_the_failover_was_seen_do_not_move_the_primary_back() {
            // R1 was promoted: the committed topology has it as the primary.
            let mut c = cluster();
            let n = |p: u16, s: Option<u16>| (a(p), s.map(a), p as u32 - 3305, "mariadb".into(), "10.11.6".into());
            c.topology = Topology::from_edges(vec![n(P, None), n(R1, None), n(R2, Some(R1))], Some(&a(R1)));
            let before = Instant::now();
            let seen = before + Duration::from_millis(10);
            // Probes taken before this node saw the failover finish show the old shape.
            let own: HashMap<InstanceAddr, ProbeRecord> =
                [probe(P, None, before), probe(R1, Some(P), before), probe(R2, Some(P), before)].into_iter().collect();
            let r = refresh_topology(&c, &own, Some(seen));
            assert_eq!(r.topology.primary, Some(a(R1)));
            assert_eq!(r.topology.instances[&a(R2)].source, Some(a(R1)), "{:#?}", r.topology);
            assert_eq!(r.topology.instances[&a(R1)].source, None);
            // The same probes without the filter would have put P back at the head.
            let unfiltered = refresh_topology(&c, &own, None);
            assert_eq!(unfiltered.topology.instances[&a(R2)].source, Some(a(P)));
            assert_eq!(unfiltered.topology.primary, Some(a(R1)), "the recorded primary stays the head anyway");
        }

        #[test]
        fn the_recorded_primary_stays_the_head_of_the_tree_whatever_its_probe_shows() {
            let c = cluster();
            let now = Instant::now();
            // P now replicates from R1 (changed by hand), R2 from R1.
            let own: HashMap<InstanceAddr, ProbeRecord> =
                [probe(P, Some(R1), now), probe(R1, None, now), probe(R2, Some(R1), now)].into_iter().collect();
            let r = refresh_topology(&c, &own, None);
            assert_eq!(r.topology.primary, Some(a(P)), "{:#?}", r.topology);
            assert_eq!(r.topology.instances[&a(P)].source, None);
        }
    }

    #[test]
    fn reports_without_a_send_time_are_taken_as_they_are() {
        let mut r = vec![record(123)];
        rebase_to_local_clock(&mut r, 0, 999_999);
        assert_eq!(r[0].at_ms, 123);
    }
}

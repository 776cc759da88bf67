//! A simulated coordinator: primusd's real parts — openraft ([`SimRaft`]) with the real
//! state machine, the [`Monitor`], the failover [`Engine`] and the [`LeaseTable`] — wired
//! as `primus_server::node::run` wires them, over simulated seams: MySQL through
//! [`SimConnector`], peers through [`SimNet`], wall time through [`SimClock`].
//!
//! A crash stops every task of the node and its Raft at once (as kill -9 does: whatever
//! it had sent to a server still happens there); a restart builds a new node over the
//! same [`Disk`]. A pause holds everything the node sends or answers (its [`Gate`]).

use crate::mysql::{SimConnector, SimMysql};
use crate::raft::net::{Gate, NodeNet, SimNet};
use crate::raft::store::{member, Disk, SimLog, SimStateMachine};
use crate::raft::{SimConfig, SimRaft};
use primus_mysql::conn::{Connector, MysqlConn};
use primus_mysql::{Observation, ProbeConfig, ProbeError, ServerInfo, StatusRow};
use primus_server::clock::Clock;
use primus_server::config::{FailoverSection, FencingSection, MysqlSection, RaftSection};
use primus_server::consensus::{Consensus, RaftConsensus};
use primus_server::failover::Engine;
use primus_server::hooks::HooksSection;
use primus_server::lease::LeaseTable;
use primus_server::monitor::{Monitor, MonitorParts, PeerLink};
use primus_store::StateHandle;
use primus_types::{InstanceAddr, NodeId};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A node's wall clock: the simulated time plus a step offset the schedule may change
/// and a drift (parts per million of elapsed simulated time).
#[derive(Debug)]
pub struct SimClock {
    start_ms: u64,
    origin: Instant,
    offset_ms: AtomicI64,
    drift_ppm: AtomicI64,
}

impl SimClock {
    pub fn new(start_ms: u64, origin: Instant) -> SimClock {
        SimClock { start_ms, origin, offset_ms: AtomicI64::new(0), drift_ppm: AtomicI64::new(0) }
    }

    /// Step the clock by `ms` (negative: backwards).
    pub fn step(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_drift_ppm(&self, ppm: i64) {
        self.drift_ppm.store(ppm, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn wall_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.origin).as_millis() as i64;
        let drift = elapsed.saturating_mul(self.drift_ppm.load(Ordering::SeqCst)) / 1_000_000;
        (self.start_ms as i64 + elapsed + drift + self.offset_ms.load(Ordering::SeqCst)).max(0) as u64
    }
}

/// MySQL connections of a node that may be paused: a call waits for the node to run
/// before it is sent, and its answer is seen only once the node runs again.
struct GatedConnector {
    inner: SimConnector,
    gate: Gate,
    deadline: Duration,
}

impl Connector for GatedConnector {
    fn connect(&self, addr: &InstanceAddr) -> Arc<dyn MysqlConn> {
        Arc::new(GatedConn { inner: self.inner.conn(addr), gate: self.gate.clone() })
    }

    fn probe_deadline(&self) -> Duration {
        self.deadline
    }
}

struct GatedConn {
    inner: crate::mysql::SimConn,
    gate: Gate,
}

impl GatedConn {
    async fn gated<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.gate.pass().await;
        let out = f.await;
        self.gate.pass().await;
        out
    }
}

#[async_trait::async_trait]
impl MysqlConn for GatedConn {
    async fn probe(&self) -> Result<Observation, ProbeError> {
        self.gated(self.inner.probe()).await
    }

    async fn server_info(&self) -> Result<ServerInfo, ProbeError> {
        self.gated(self.inner.server_info()).await
    }

    async fn write_heartbeat(
        &self,
        cluster: &str,
        epoch: u64,
        ts_ms: u64,
        coordinator: u64,
    ) -> Result<bool, ProbeError> {
        self.gated(self.inner.write_heartbeat(cluster, epoch, ts_ms, coordinator)).await
    }

    async fn execute(&self, statements: &[String], timeout: Duration) -> Result<(), ProbeError> {
        self.gated(self.inner.execute(statements, timeout)).await
    }

    async fn query_rows(&self, sql: &str, timeout: Duration) -> Result<Vec<StatusRow>, ProbeError> {
        self.gated(self.inner.query_rows(sql, timeout)).await
    }

    async fn disconnect(&self) {
        self.inner.disconnect().await
    }
}

/// Observation reports to the leader over the simulated network.
struct SimPeerLink {
    me: NodeId,
    net: SimNet,
    clock: Arc<SimClock>,
}

#[async_trait::async_trait]
impl PeerLink for SimPeerLink {
    async fn report(
        &self,
        to: NodeId,
        _addr: &str,
        report: primus_proto::raft::ObservationReport,
    ) -> Result<(), String> {
        let _ = &self.clock;
        let ttl = self.net.rpc_timeout();
        match self.net.report(self.me, to, ttl, report.term, report.sent_at_ms, report.payload).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The replication password as primusd reads it (a file); the simulated servers take any.
fn repl_password_file() -> std::path::PathBuf {
    let p = std::env::temp_dir().join("primus-sim-replication-password");
    if !p.exists() {
        let _ = std::fs::write(&p, "repl\n");
    }
    p
}

/// Settings shared by every simulated coordinator.
#[derive(Debug, Clone)]
pub struct CoordConfig {
    pub raft: RaftSection,
    pub mysql: MysqlSection,
    pub failover: FailoverSection,
    pub fencing: FencingSection,
}

impl CoordConfig {
    /// primusd's defaults, with the probe settings of a LAN sandbox.
    pub fn defaults() -> CoordConfig {
        CoordConfig {
            raft: RaftSection::default(),
            mysql: MysqlSection {
                user: "primus".into(),
                password_file: None,
                password_env: None,
                replication_user: Some("repl".into()),
                replication_password_file: Some(repl_password_file()),
                replication_password_env: None,
                connect_timeout_ms: 500,
                query_timeout_ms: 500,
                probe_interval_ms: 500,
                heartbeat_interval_ms: 500,
                heartbeat_table: "primus.heartbeat".into(),
                discovery_timeout_ms: 5000,
                connect_via: BTreeMap::new(),
                tls_mode: Default::default(),
                tls_ca_file: None,
                tls_cert_file: None,
                tls_key_file: None,
                replication_ssl: false,
                replication_ssl_ca: None,
                replication_ssl_verify_server_cert: false,
                get_source_public_key: false,
            },
            failover: FailoverSection { recovery_block_period_ms: 1000, ..FailoverSection::default() },
            fencing: FencingSection::default(),
        }
    }

    fn openraft(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "primus-sim".into(),
            heartbeat_interval: self.raft.heartbeat_ms,
            election_timeout_min: self.raft.election_timeout_min_ms,
            election_timeout_max: self.raft.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            ..Default::default()
        }
    }

    fn probe_config(&self) -> ProbeConfig {
        let mut p = ProbeConfig::new(self.mysql.user.clone(), "");
        p.connect_timeout = self.mysql.connect_timeout();
        p.query_timeout = self.mysql.query_timeout();
        p
    }
}

/// One running coordinator's parts.
pub struct Running {
    pub raft: SimRaft,
    pub consensus: Arc<RaftConsensus<SimConfig>>,
    pub state: StateHandle,
    pub monitor: Arc<Monitor>,
    pub leases: Arc<LeaseTable>,
    pub engine: Arc<Engine>,
}

/// A coordinator across its crashes and restarts.
pub struct SimCoordinator {
    pub id: NodeId,
    pub disk: Disk,
    pub clock: Arc<SimClock>,
    pub gate: Gate,
    /// `None` while crashed.
    pub running: Option<Running>,
    /// Starts so far (1 after the first).
    pub incarnation: u64,
}

impl SimCoordinator {
    pub fn new(id: NodeId, clock: Arc<SimClock>, gate: Gate) -> SimCoordinator {
        SimCoordinator { id, disk: Disk::default(), clock, gate, running: None, incarnation: 0 }
    }

    /// Start (or restart) the node over its disk.
    pub async fn start(&mut self, cfg: &CoordConfig, net: &SimNet, sim: &SimMysql) -> Result<(), String> {
        if self.running.is_some() {
            return Ok(());
        }
        let state = StateHandle::in_memory();
        let raft = SimRaft::new(
            self.id,
            Arc::new(cfg.openraft()),
            NodeNet { net: net.clone(), me: self.id },
            SimLog::new(self.disk.clone()),
            SimStateMachine::new(self.disk.clone(), state.clone()),
        )
        .await
        .map_err(|e| format!("node {}: cannot start Raft: {e}", self.id))?;
        let consensus = Arc::new(RaftConsensus::new(raft.clone()));
        let dyn_consensus: Arc<dyn Consensus> = consensus.clone();
        let metrics = Arc::new(primus_server::metrics::Metrics::new().map_err(|e| e.to_string())?);
        let connector = GatedConnector {
            inner: sim.connector(crate::mysql::Peer::Coordinator(self.id), cfg.probe_config()),
            gate: self.gate.clone(),
            deadline: cfg.mysql.connect_timeout() + cfg.mysql.query_timeout() + Duration::from_millis(100),
        };
        let monitor = Monitor::new(MonitorParts {
            me: self.id,
            cfg: cfg.mysql.clone(),
            connector: Arc::new(connector),
            consensus: dyn_consensus.clone(),
            clock: self.clock.clone(),
            link: Arc::new(SimPeerLink { me: self.id, net: net.clone(), clock: self.clock.clone() }),
            state: state.clone(),
            election_timeout_min_ms: cfg.raft.election_timeout_min_ms,
            metrics,
        });
        monitor.start();
        let leases = Arc::new(LeaseTable::new(
            self.id,
            dyn_consensus.clone(),
            Duration::from_millis(cfg.fencing.max_lease_ttl_ms),
            Duration::from_millis(cfg.fencing.lease_margin_ms),
            Duration::from_millis(cfg.raft.election_timeout_max_ms),
        ));
        leases.start();
        let engine = Engine::new(
            self.id,
            dyn_consensus,
            state.clone(),
            monitor.clone(),
            cfg.failover.clone(),
            cfg.mysql.clone(),
            primus_server::hooks::Hooks::new(HooksSection::default()),
            leases.clone(),
            cfg.fencing.clone(),
        );
        engine.start();
        net.up(self.id, raft.clone(), monitor.clone());
        self.incarnation += 1;
        self.running = Some(Running { raft, consensus, state, monitor, leases, engine });
        Ok(())
    }

    /// kill -9: every task stops where it is. How the state primusd would load from
    /// the pairs its store wrote differs from the state applied, if it does.
    pub async fn crash(&mut self, net: &SimNet) -> Option<String> {
        let r = self.running.take()?;
        let differs = r.state.read(|s| self.disk.persisted_state_differs(&s.registry));
        net.down(self.id);
        r.engine.stop();
        r.monitor.stop();
        r.leases.stop();
        let _ = r.raft.shutdown().await;
        differs
    }

    /// Make this node (and the given members) a new group.
    pub async fn initialize(&self, members: &[NodeId]) -> Result<(), String> {
        let Some(r) = &self.running else { return Err("not running".into()) };
        let m: BTreeMap<NodeId, primus_types::Member> = members.iter().map(|id| (*id, member(*id))).collect();
        r.raft.initialize(m).await.map_err(|e| e.to_string())
    }
}

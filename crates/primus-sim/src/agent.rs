//! `primus-agent` in the simulation: the agent's own loop ([`primus_agent::Agent::run`]:
//! the renewer, the guard with its fence budget and escalation, the confirmation of a
//! refusal, the lease hand-back after mysqld exits) over simulated effects — the
//! simulated server's local socket ([`SimLocal`], which sends the statements
//! `primus_agent::fence::LocalMysql` sends), the coordinators over the simulated
//! network ([`SimCoordinators`]), SIGKILL of the simulated mysqld ([`SimHost`]) and a
//! [`LeaseFile`] for the sentinel. What decides is the agent's code, not a copy.
//!
//! Not modelled: the port block of `restart_guard = "block_port"`. A simulated server
//! starts read-only (from its config), which gives what the block guarantees (no client
//! write before the agent fenced the restarted server); the agent's watchdog is a 20 ms
//! poll of the process state rather than a pidfd, and reports the exit as blocked so the
//! lease is handed back as the real agent does with a working block.
//!
//! When the agent alone is killed, its [`sentinel`] fences the server at the end of the
//! lease it last published, deciding with the real sentinel's `decide`.

use crate::mysql::{Peer, ProcState, SimConn, SimMysql};
use primus_agent::fence::{Escalated, FenceError, FenceReport, Writability};
use primus_agent::seams::{Coordinators, Host, LeasePublisher, LocalServer};
use primus_agent::sentinel::{AgentIs, Step};
use primus_client::{AgentTimings, ClientError, RenewLeaseResponse};
use primus_mysql::conn::MysqlConn;
use primus_mysql::{ProbeConfig, ProbeError};
use primus_types::{ClusterName, InstanceAddr, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// What an agent needs from the simulation around it.
#[async_trait::async_trait]
pub trait AgentEnv: Send + Sync + 'static {
    fn sim(&self) -> &SimMysql;
    fn cluster(&self) -> &ClusterName;
    fn addr(&self, i: usize) -> InstanceAddr;
    fn coordinators(&self) -> Vec<NodeId>;
    fn max_ttl(&self) -> Duration;
    /// One RegisterAgent (`register`) or RenewLease call to coordinator `to`; `None`
    /// when it got no answer. A registration's answer carries the log index it was
    /// committed at in `epoch`.
    async fn renew(
        &self,
        i: usize,
        to: NodeId,
        agent_id: &str,
        ttl: Duration,
        register: bool,
    ) -> Option<primus_client::RenewLeaseResponse>;
    /// The agent hands the lease back (RegisterAgent with `release`) through
    /// coordinator `to`: `Some(true)` recorded, `Some(false)` refused, `None` no answer.
    async fn release(&self, i: usize, to: NodeId, agent_id: &str, registration: u64, reason: &str) -> Option<bool>;
    fn note(&self, line: String);
    /// The lease file of the live agent of server `i`, if one runs.
    fn lease_file(&self, i: usize) -> Option<LeaseFile>;
}

/// What an agent publishes for its sentinel (`sentinel::LeaseRecord`): the end of the
/// lease it holds, and the lease end after which it found its server fenced.
#[derive(Debug, Clone, Default)]
pub struct LeaseFile(Arc<Mutex<(Option<Instant>, Option<Instant>)>>);

impl LeaseFile {
    /// (lease end, lease end after which the agent found the server fenced).
    pub fn read(&self) -> (Option<Instant>, Option<Instant>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LeasePublisher for LeaseFile {
    fn publish(&self, until: Option<Instant>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).0 = until;
    }

    fn publish_fenced(&self, until: Instant) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(until);
    }
}

/// The agent's settings in the simulation (the sandbox's: TTL 1.5 s, renewal every
/// 300 ms, fence bound 500 ms; checks every 100 ms).
const TTL: Duration = Duration::from_millis(1500);
const FENCE_TIMEOUT: Duration = Duration::from_millis(500);
const LOCAL_TIMEOUT: Duration = Duration::from_millis(200);

/// The agent's configuration for server `addr` of `cluster`, as a TOML file would give it.
fn agent_config(cluster: &ClusterName, addr: &InstanceAddr) -> Result<primus_agent::config::Config, String> {
    let text = format!(
        r#"
cluster = "{cluster}"
instance = "{addr}"
coordinators = ["simulated:1"]
[lease]
renew_interval_ms = 300
ttl_ms = {ttl}
register_timeout_ms = 3000
[mysql]
socket = "/simulated/mysqld.sock"
user = "root"
connect_timeout_ms = {local}
query_timeout_ms = {local}
[fence]
timeout_ms = {fence}
escalation = "kill"
mysqld_pid_file = "/simulated/mysqld.pid"
check_interval_ms = 100
sentinel = true
restart_guard = "block_port"
release_lease_on_exit = true
"#,
        ttl = TTL.as_millis(),
        local = LOCAL_TIMEOUT.as_millis(),
        fence = FENCE_TIMEOUT.as_millis(),
    );
    primus_agent::config::Config::parse(std::path::Path::new("simulated-agent.toml"), &text).map_err(|e| e.to_string())
}

/// Run the agent of server `i` until aborted (a crash of it or of its host), publishing
/// its lease in `file`.
pub async fn agent_loop(env: Arc<dyn AgentEnv>, i: usize, seed: u64, file: LeaseFile) {
    let addr = env.addr(i);
    let cfg = match agent_config(env.cluster(), &addr) {
        Ok(c) => c,
        Err(e) => {
            env.note(format!("agent of {addr}: bad configuration: {e}"));
            return;
        }
    };
    let agent_id = format!("agent-{addr}-{seed:x}");
    // The endpoint list, starting at a seeded coordinator.
    let mut order = env.coordinators();
    let k = StdRng::seed_from_u64(seed).gen_range(0..order.len().max(1));
    order.rotate_left(k);
    let agent = primus_agent::Agent::new(&cfg);
    let seams = primus_agent::Seams {
        mysql: Box::new(SimLocal::new(env.sim(), &addr)),
        coordinators: Arc::new(SimCoordinators { env: env.clone(), i, order }),
        host: Arc::new(SimHost { sim: env.sim().clone(), addr: addr.clone() }),
        publisher: Some(Arc::new(file)),
    };
    // The watchdog: the moment mysqld's process exits, tell the agent (which fences
    // the restarted server first and hands the lease back meanwhile). The real one
    // holds mysqld's pidfd, which the kernel makes readable at the exit; here the world
    // counts exits. A mysqld already down when the agent starts is reported at once.
    let watch = {
        let (sim, addr, agent, cfg) = (env.sim().clone(), addr.clone(), agent.clone(), cfg.clone());
        tokio::spawn(async move {
            let Ok(mut exits) = sim.exits(&addr) else { return };
            exits.mark_unchanged();
            if sim.process_state(&addr).ok() == Some(ProcState::Crashed) {
                agent.mysqld_exited(&cfg, &format!("mysqld of {addr}"), true);
            }
            while exits.changed().await.is_ok() {
                agent.mysqld_exited(&cfg, &format!("mysqld of {addr}"), true);
            }
        })
    };
    let _watch = AbortOnDrop(watch);
    let span = tracing::info_span!("agent", instance = %addr);
    if let Err(e) = agent.run(cfg, agent_id, seams).instrument(span).await {
        env.note(format!("agent of {addr}: stopped: {e}"));
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The coordinators as the agent of server `i` reaches them over the simulated network.
struct SimCoordinators {
    env: Arc<dyn AgentEnv>,
    i: usize,
    order: Vec<NodeId>,
}

impl SimCoordinators {
    fn to(&self, k: usize) -> NodeId {
        self.order[k % self.order.len()]
    }
}

fn no_answer(to: NodeId) -> ClientError {
    ClientError::Unreachable { timeout_ms: 0, details: format!("coordinator {to} did not answer") }
}

#[async_trait::async_trait]
impl Coordinators for SimCoordinators {
    fn count(&self) -> usize {
        self.order.len()
    }

    fn name(&self, k: usize) -> String {
        format!("coordinator-{}", self.to(k))
    }

    async fn register(&self, k: usize, agent_id: &str, t: AgentTimings) -> Result<u64, ClientError> {
        let to = self.to(k);
        match self.env.renew(self.i, to, agent_id, Duration::from_millis(t.ttl_ms), true).await {
            Some(r) => Ok(r.epoch),
            None => Err(no_answer(to)),
        }
    }

    async fn renew(&self, k: usize, agent_id: &str, ttl_ms: u64) -> Result<RenewLeaseResponse, ClientError> {
        let to = self.to(k);
        self.env.renew(self.i, to, agent_id, Duration::from_millis(ttl_ms), false).await.ok_or_else(|| no_answer(to))
    }

    async fn release(&self, k: usize, agent_id: &str, registration: u64, reason: &str) -> Result<u64, ClientError> {
        let to = self.to(k);
        match self.env.release(self.i, to, agent_id, registration, reason).await {
            Some(true) => Ok(0),
            Some(false) => Err(ClientError::Rpc {
                endpoint: self.name(k),
                code: tonic::Code::FailedPrecondition,
                message: "the leader did not take the lease back".into(),
            }),
            None => Err(no_answer(to)),
        }
    }
}

/// SIGKILL of the simulated mysqld (escalation = "kill"); the port block is not modelled.
struct SimHost {
    sim: SimMysql,
    addr: InstanceAddr,
}

#[async_trait::async_trait]
impl Host for SimHost {
    async fn escalate(&self, _port: Option<u16>) -> Result<Escalated, String> {
        if self.sim.process_state(&self.addr).ok() == Some(ProcState::Crashed) {
            return Ok(Escalated::NotRunning("mysqld is not running".into()));
        }
        self.sim.crash(&self.addr).map_err(|e| e.to_string())?;
        Ok(Escalated::Killed { pid: 0 })
    }

    async fn unblock_port(&self, _port: u16) -> Result<(), String> {
        Ok(())
    }

    async fn port_blocked(&self, _port: u16) -> bool {
        false
    }
}

/// The agent's local connection to a simulated server: the statements
/// `primus_agent::fence::LocalMysql` sends, over the server's local socket (a paused
/// server answers none of them; a crashed one refuses the connection).
pub struct SimLocal {
    sim: SimMysql,
    addr: InstanceAddr,
    connector: crate::mysql::SimConnector,
    conn: Arc<SimConn>,
}

impl SimLocal {
    pub fn new(sim: &SimMysql, addr: &InstanceAddr) -> SimLocal {
        let mut cfg = ProbeConfig::new("root", "");
        cfg.connect_timeout = LOCAL_TIMEOUT;
        cfg.query_timeout = LOCAL_TIMEOUT;
        let connector = sim.connector(Peer::Local(addr.clone()), cfg);
        let conn = Arc::new(connector.conn(addr));
        SimLocal { sim: sim.clone(), addr: addr.clone(), connector, conn }
    }

    async fn fence_once(&mut self) -> Result<FenceReport, FenceError> {
        let w = self.writability_inner().await?;
        let was_writable = w.writable();
        if !was_writable && w.super_read_only != Some(false) {
            return Ok(FenceReport { was_writable, killed: 0 });
        }
        let info = self.conn.server_info().await.map_err(fence_error)?;
        let mut killed = 0;
        if was_writable {
            killed += self.kill_clients().await?;
        }
        self.conn.execute(&info.set_read_only_sql(true), LOCAL_TIMEOUT).await.map_err(fence_error)?;
        if was_writable {
            killed += self.kill_clients().await?;
        }
        Ok(FenceReport { was_writable, killed })
    }

    async fn writability_inner(&mut self) -> Result<Writability, FenceError> {
        let info = self.conn.server_info().await.map_err(fence_error)?;
        let mysql = info.has_super_read_only();
        let sql =
            if mysql { "SELECT @@global.read_only, @@global.super_read_only" } else { "SELECT @@global.read_only, 0" };
        let rows = self.conn.query_rows(sql, LOCAL_TIMEOUT).await.map_err(fence_error)?;
        let flag = |names: &[&str]| {
            rows.first()
                .and_then(|r| r.get(names))
                .flatten()
                .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("off"))
        };
        let ro = flag(&["@@global.read_only"]);
        let sro = flag(&["@@global.super_read_only"]);
        Ok(Writability { read_only: ro, super_read_only: mysql.then_some(sro) })
    }

    /// Clients' connections (the applications'; replication and this one are kept).
    async fn kill_clients(&mut self) -> Result<usize, FenceError> {
        let ids: Vec<u64> = self
            .sim
            .processlist(&self.addr)
            .into_iter()
            .filter(|p| matches!(p.peer, Some(Peer::App(_))))
            .map(|p| p.id)
            .collect();
        let mut n = 0;
        for id in ids {
            // Unknown thread (it ended meanwhile) is fine.
            if self.conn.execute(&[format!("KILL CONNECTION {id}")], LOCAL_TIMEOUT).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn fence_error(e: ProbeError) -> FenceError {
    match e {
        ProbeError::Unreachable { message } | ProbeError::ConnectionLost { message, .. } => FenceError::Down(message),
        ProbeError::Timeout { stage, after_ms } => {
            FenceError::Timeout { what: stage.to_string(), after_ms: u128::from(after_ms) }
        }
        e => FenceError::Sql { what: "local statement".into(), message: e.to_string() },
    }
}

#[async_trait::async_trait]
impl LocalServer for SimLocal {
    async fn writability(&mut self) -> Result<Writability, FenceError> {
        let r = self.writability_inner().await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn fence(&mut self) -> Result<FenceReport, FenceError> {
        let r = self.fence_once().await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn reset(&mut self) {
        // A fresh connection for the next statement; the old one is closed.
        let old = std::mem::replace(&mut self.conn, Arc::new(self.connector.conn(&self.addr)));
        tokio::spawn(async move { old.disconnect().await });
    }
}

/// The sentinel of server `i`'s killed agent (`primus_agent::sentinel::run`): at the end
/// of the lease the agent last published in `mine` it fences the server (escalating to
/// a kill of a mysqld that does not answer), unless the agent had found it fenced for
/// that lease end or a restarted agent holds a lease; then it exits. Decided by the real
/// sentinel's [`primus_agent::sentinel::decide`]. Only a dead agent's sentinel is run: a
/// live agent fences first (its sentinel would find the server read-only already).
pub async fn sentinel(env: Arc<dyn AgentEnv>, i: usize, mine: LeaseFile) {
    let addr = env.addr(i);
    let sim = env.sim().clone();
    let mut local = SimLocal::new(&sim, &addr);
    // Lease ends as nanoseconds on one clock (0: none), as in the lease file.
    let base = Instant::now().checked_sub(Duration::from_secs(3600)).unwrap_or_else(Instant::now);
    let ns = |t: Instant| t.saturating_duration_since(base).as_nanos() as u64 + 1;
    let mut fenced_for = 0u64;
    loop {
        let now = Instant::now();
        let (until, agent_fenced) = mine.read();
        let mine_until = until.map_or(0, ns);
        if mine_until != 0 && agent_fenced.map(ns) == Some(mine_until) {
            fenced_for = mine_until;
        }
        let other_holds = env.lease_file(i).is_some_and(|f| f.read().0.is_some_and(|u| u > now));
        match primus_agent::sentinel::decide(ns(now), mine_until, fenced_for, AgentIs::Gone, other_holds, FENCE_TIMEOUT)
        {
            Step::Wait(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            Step::Exit(why) => {
                env.note(format!("sentinel of {addr}: exits ({why})"));
                return;
            }
            Step::Fence { until_ns } => {
                fenced_for = until_ns;
                match local.fence_within(FENCE_TIMEOUT).await {
                    Ok(_) => env.note(format!("sentinel of {addr}: lease ran out with no agent; fenced")),
                    _ if sim.process_state(&addr).ok() == Some(ProcState::Crashed) => {
                        env.note(format!("sentinel of {addr}: lease ran out; mysqld is down (nothing can write)"));
                    }
                    _ => {
                        env.note(format!("sentinel of {addr}: fence not confirmed; killing mysqld"));
                        let _ = sim.crash(&addr);
                        local.reset();
                    }
                }
            }
        }
    }
}

//! Simulated MySQL/MariaDB servers behind primus' `MysqlConn`/`Connector` seam.
//!
//! A [`SimMysql`] is a world of servers, each addressed by its `InstanceAddr`, living on the
//! simulated clock of a single-threaded tokio runtime with paused time: every delay is
//! `tokio::time`, every random choice comes from the `StdRng` the world was given, every
//! collection that is iterated is ordered, no `tokio::select!` without `biased`. The same seed
//! and the same calls give the same observations.
//!
//! # Using it
//!
//! ```
//! use primus_sim::mysql::*;
//! use primus_types::InstanceAddr;
//! use primus_mysql::{Connector, ProbeConfig};
//! use rand::{rngs::StdRng, SeedableRng};
//! use std::sync::Arc;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
//! rt.block_on(async {
//!     let (a1, a2): (InstanceAddr, InstanceAddr) = ("db1:3306".parse().unwrap(), "db2:3306".parse().unwrap());
//!     let sim = SimMysql::new(WorldConfig::default(), StdRng::seed_from_u64(7)).unwrap();
//!     sim.add_server(ServerConfig { read_only_at_start: false, ..ServerConfig::mariadb(a1.clone(), 1) }).unwrap();
//!     sim.add_server(ServerConfig::mariadb(a2.clone(), 2)).unwrap();
//!     sim.replicate(&a2, &a1, &ReplicationSetup::default()).unwrap(); // CHANGE MASTER + START SLAVE
//!
//!     // The network: here, coordinator 2 is cut off from db1.
//!     sim.set_links(Arc::new(|from, to| match (from, to.host()) {
//!         (Peer::Coordinator(2), "db1") => Link::Silent,
//!         _ => Link::Up,
//!     }));
//!
//!     let ack = sim.app_write(1, &a1, 42).await.unwrap(); // an application's INSERT
//!     assert_eq!(ack.gtid.unwrap().to_string(), "0-1-1");
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!
//!     // What primus' monitor and failover code get instead of a `Prober`:
//!     let connector = SimConnector::new(&sim, Peer::Coordinator(1), ProbeConfig::new("primus", "pw"));
//!     let o = connector.connect(&a2).probe().await.unwrap();
//!     assert_eq!(o.gtid.executed().to_string(), "0-1-1");
//!     let cut = SimConnector::new(&sim, Peer::Coordinator(2), ProbeConfig::new("primus", "pw"));
//!     assert!(cut.connect(&a1).probe().await.is_err()); // timed out after connect_timeout
//!
//!     // Faults.
//!     sim.pause(&a1).unwrap();
//!     sim.resume(&a1).unwrap();
//!     sim.crash(&a2).unwrap();
//!     sim.start(&a2).unwrap();
//!     assert!(sim.unmodelled_statements().is_empty());
//! });
//! ```
//!
//! * **World**: [`SimMysql::new`] (needs the runtime: it spawns its driver task),
//!   [`SimMysql::add_server`] with a [`ServerConfig`] ([`ServerConfig::mariadb`] 10.11,
//!   [`ServerConfig::mysql`] 8.0, any `@@version` string), [`SimMysql::replicate`],
//!   [`SimMysql::clone_data`] (a restored backup), [`SimMysql::set_timing`].
//! * **Coordinators**: [`SimConnector`] (a `Connector`; its [`SimConn`]s behave like
//!   `primus_mysql::Prober`, see `conn`), one per coordinator node id.
//! * **Applications**: [`SimMysql::app_write`] (one connection per client id).
//! * **Faults**: [`SimMysql::crash`], [`SimMysql::start`], [`SimMysql::restart`],
//!   [`SimMysql::pause`], [`SimMysql::resume`]; the network through [`SimMysql::set_links`].
//! * **Inspection** (omniscient, for invariants): [`SimMysql::observe`],
//!   [`SimMysql::executed`], [`SimMysql::rows`], [`SimMysql::committed`], [`SimMysql::txn`],
//!   [`SimMysql::processlist`], [`SimMysql::unmodelled_statements`], [`SimMysql::admin`].
//!
//! # The network
//!
//! [`SimMysql::set_links`] installs a predicate answering, for a connection opened by a
//! [`Peer`] to a server, [`Link::Up`], [`Link::Refused`] (RST/ICMP: errors at once) or
//! [`Link::Silent`] (dropped: timeouts). It is asked for coordinators' and applications'
//! connections (when a request leaves and when its answer comes back) and for replication (a
//! replica's connection to its source, `Peer::Server(replica)`), never for [`Peer::Local`].
//! The world also polls it every `WorldConfig::poll_interval`; call
//! [`SimMysql::links_changed`] after changing the network so that replication reacts at that
//! very instant. It runs under the world's lock: it must not call back into the world.
//!
//! # What is modelled, and what is not
//!
//! Modelled: transactions with real GTIDs (MariaDB `domain-server-seq` allocated from the
//! binlog state; MySQL `uuid:n`, first free number), a binary log per server (end
//! coordinates, a new file at every start), `gtid_executed`/`gtid_purged` and
//! `gtid_current_pos`/`gtid_binlog_pos`/`gtid_slave_pos`/`gtid_binlog_state`, `log_bin`,
//! `log_slave_updates`, `gtid_strict_mode` (out-of-order GTIDs refused); replication by GTID
//! (MariaDB `slave_pos`/`current_pos`, MySQL auto-positioning) with per-link delay, jitter,
//! apply delay and serial apply cost, `Seconds_Behind_Master`, heartbeats, `slave_net_timeout`,
//! connect retries, errors 2003/2013/1236/1593/1062/1146/1950 where the servers give them;
//! semi-sync (`AFTER_SYNC`/`AFTER_COMMIT`, acknowledgements after a round trip, timeout and
//! fallback, switch back on catch-up, status counters); `read_only`/`super_read_only` and who
//! they stop, including `read_only` waiting for commits in progress; crash (with crash
//! recovery of binlogged transactions), start, SIGSTOP/SIGCONT (queued statements run on
//! resume); sessions, the process list, `KILL`; the SQL primus sends (see `sql`, `exec`).
//!
//! Simplified or absent: one replication channel per replica, no multi-source, no
//! file/position replication (`MASTER_USE_GTID=no`, `MASTER_AUTO_POSITION=0` fail as not
//! modelled); no binlog purging or rotation by size (so `gtid_purged` only holds what never
//! was in the binlog: restored backups, `log_slave_updates=OFF`); no parallel replication,
//! no `SQL_Delay`, no replication filters, no `replicate_same_server_id`; no MySQL 8.4 tagged
//! GTIDs; data is application rows (unique ids) and heartbeat rows, not tables in general;
//! DDL and row changes are single-statement transactions; `sync_binlog=1` and
//! `innodb_flush_log_at_trx_commit=1` (nothing committed is lost in a crash; the relay log is
//! discarded, as with `relay_log_recovery`); the replica always acknowledges semi-sync (no
//! per-event flag) and never waits for acknowledgements itself; the source's view of a dead
//! replica is the replica's view (no zombie dump threads); a restart is instantaneous
//! (crash, then start, at one instant unless the caller waits between); MariaDB's `Preparing`
//! IO state, `Slave_SQL_State` details and privileges beyond "may write through read_only"
//! are not modelled.

mod conn;
mod exec;
mod render;
mod replication;
mod server;
mod servermap;
mod sql;
mod world;

#[cfg(test)]
mod tests;

pub use conn::{SimConn, SimConnector};
pub use primus_mysql::status::UsingGtid;
pub use server::{Gtid, Payload, ProcState, ReplicaTiming, ServerConfig, Txn, TxnId, WaitPoint};

use primus_mysql::heartbeat::HeartbeatTable;
use primus_mysql::{AnyGtidSet, Observation, StatusRow};
use primus_types::InstanceAddr;
use rand::rngs::StdRng;
use server::{Identity, SessionKey};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use world::{Output, Request, Rt, World};

/// Who opens a connection (the network decides per peer and server).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A coordinator (primusd), by node id.
    Coordinator(u64),
    /// An application client, by client id.
    App(u64),
    /// A server: replication connections are opened by the replica.
    Server(InstanceAddr),
    /// A client on the server's own host (local socket: the fencing agent, an operator's
    /// `mysql`): never subject to the network.
    Local(InstanceAddr),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Coordinator(n) => write!(f, "coordinator {n}"),
            Peer::App(n) => write!(f, "app client {n}"),
            Peer::Server(a) => write!(f, "server {a}"),
            Peer::Local(a) => write!(f, "local client of {a}"),
        }
    }
}

/// The state of the network for one connection (both directions of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Connections are rejected (TCP RST, ICMP unreachable): errors come at once.
    Refused,
    /// Packets are dropped: nothing comes back, callers time out.
    Silent,
}

/// The network: the link of a connection opened by a peer to a server.
pub type LinkFn = Arc<dyn Fn(&Peer, &InstanceAddr) -> Link + Send + Sync>;

/// World-wide settings.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// The simulated wall clock (unix ms) when the world is created: `Observation::taken_at_ms`,
    /// transaction commit times, replication error timestamps.
    pub wall_clock_start_ms: u64,
    /// One client round trip (connect, statement). Tokio timers have 1 ms resolution.
    pub client_rtt: Duration,
    /// How often the world looks at links even when nothing is due (link changes are not
    /// announced unless [`SimMysql::links_changed`] is called).
    pub poll_interval: Duration,
    /// MariaDB: the coordinators' user holds `READ ONLY ADMIN` (primus' documented grants),
    /// so `read_only` does not stop its writes (the heartbeat). MySQL: its `SUPER` writes
    /// through `read_only` but not `super_read_only`, whatever this says.
    pub coordinator_read_only_admin: bool,
    /// `SET GLOBAL read_only = ON` takes the global read lock, which waits for commits in
    /// progress — including commits waiting for a semi-sync acknowledgement — while new
    /// writes queue behind it (MySQL and MariaDB behaviour).
    pub read_only_waits_for_commits: bool,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            wall_clock_start_ms: 1_700_000_000_000,
            client_rtt: Duration::from_millis(1),
            poll_interval: Duration::from_millis(50),
            coordinator_read_only_admin: true,
            read_only_waits_for_commits: true,
        }
    }
}

/// An error a server returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SqlError {
    /// Server error code; `None` for statements the simulator does not model.
    pub code: Option<u16>,
    pub message: String,
}

impl SqlError {
    pub(crate) fn new(code: u16, message: impl Into<String>) -> SqlError {
        SqlError { code: Some(code), message: message.into() }
    }

    pub(crate) fn not_modelled(message: impl Into<String>) -> SqlError {
        SqlError { code: None, message: message.into() }
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(c) => write!(f, "error {c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Misuse of the simulator (not something a server would answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no simulated server {0}")]
    UnknownServer(InstanceAddr),
    #[error("invalid simulator configuration: {0}")]
    InvalidConfig(String),
    #[error("{addr} is {state:?}, expected {wanted}")]
    BadState { addr: InstanceAddr, state: ProcState, wanted: &'static str },
    #[error("no tokio runtime: create the world inside the simulation's runtime")]
    NoRuntime,
    #[error("{0}")]
    Sql(SqlError),
    #[error("{0} is unreachable: {1}")]
    Unreachable(InstanceAddr, String),
    /// A bug of the simulator (e.g. rows its own parser rejects).
    #[error("simulator bug: {0}")]
    Internal(String),
}

/// How a commit's semi-sync wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemiSyncOutcome {
    /// No wait (semi-sync off or fallen back to asynchronous).
    NotWaited,
    /// A semi-sync replica acknowledged receipt.
    Acknowledged,
    /// The wait ended without an acknowledgement (timeout and fallback, semi-sync switched
    /// off, `RESET MASTER`).
    NotAcknowledged,
}

/// A successful application write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAck {
    pub txn: TxnId,
    pub gtid: Option<Gtid>,
    pub server: InstanceAddr,
    pub semi_sync: SemiSyncOutcome,
}

/// A failed application write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// No connection (refused, unknown host, server down): nothing was written.
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// Refused by `read_only`/`super_read_only`: nothing was written.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// The row id exists already.
    #[error("duplicate row: {0}")]
    Duplicate(String),
    /// The connection broke (killed, server crashed) after the write was sent: it may or may
    /// not be committed.
    #[error("connection lost during the write: outcome unknown")]
    ConnectionLost,
    #[error("write failed: {0}")]
    Failed(SqlError),
}

/// Replication as `CHANGE MASTER TO` sets it up (see [`SimMysql::replicate`]).
#[derive(Debug, Clone)]
pub struct ReplicationSetup {
    pub user: String,
    pub password: String,
    /// MariaDB `MASTER_USE_GTID` (`SlavePos` or `CurrentPos`); MySQL always auto-positions.
    pub use_gtid: UsingGtid,
    pub heartbeat_period: Duration,
    pub connect_retry: Duration,
}

impl Default for ReplicationSetup {
    /// What primus sets: `repl` user, `slave_pos`, heartbeat 0.5 s, connect retry 1 s.
    fn default() -> Self {
        ReplicationSetup {
            user: "repl".into(),
            password: "repl".into(),
            use_gtid: UsingGtid::SlavePos,
            heartbeat_period: Duration::from_millis(500),
            connect_retry: Duration::from_secs(1),
        }
    }
}

/// One row of a server's process list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRow {
    pub id: u64,
    pub user: String,
    /// `Sleep`, `Query` (a statement in progress) or `Binlog Dump GTID`.
    pub command: String,
    pub peer: Option<Peer>,
}

pub(crate) struct Shared {
    world: Mutex<World>,
    wake: Notify,
}

/// The simulated servers. Cheap to clone (a handle).
#[derive(Clone)]
pub struct SimMysql {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimMysql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimMysql").field("servers", &self.addrs()).finish()
    }
}

/// Moves the world along: wakes at the next event (or poll), or when poked.
async fn drive(weak: Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let now = Instant::now();
        let next = {
            let mut w = shared.world.lock().unwrap_or_else(|p| p.into_inner());
            w.advance_if_needed(now);
            w.next_event(now)
        };
        // Never spin at one instant (timers have millisecond resolution anyway).
        let next = next.max(now + Duration::from_millis(1));
        let _ = tokio::time::timeout_at(next, shared.wake.notified()).await;
    }
}

impl SimMysql {
    /// An empty world on the current tokio runtime (its driver task is spawned there and
    /// ends when the last handle is dropped). All links are up until [`SimMysql::set_links`].
    pub fn new(cfg: WorldConfig, rng: StdRng) -> Result<SimMysql, SimError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SimError::NoRuntime)?;
        let links: LinkFn = Arc::new(|_: &Peer, _: &InstanceAddr| Link::Up);
        let shared =
            Arc::new(Shared { world: Mutex::new(World::new(cfg, rng, links, Instant::now())), wake: Notify::new() });
        handle.spawn(drive(Arc::downgrade(&shared)));
        Ok(SimMysql { shared })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, World> {
        self.shared.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the driver: something changed.
    pub(crate) fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Runs `f` on the world brought up to now, then wakes the driver.
    fn with<T>(&self, f: impl FnOnce(&mut World, Instant) -> T) -> T {
        let out = {
            let mut w = self.lock();
            let now = Instant::now();
            w.advance_if_needed(now);
            let out = f(&mut w, now);
            w.settled_at = None;
            out
        };
        self.wake();
        out
    }

    /// Read the world at this instant: like [`SimMysql::with`] for a reader that changes
    /// nothing (the driver is woken only when bringing the world up to now moved it).
    fn peek<T>(&self, f: impl FnOnce(&World, Instant) -> T) -> T {
        let (out, moved) = {
            let mut w = self.lock();
            let now = Instant::now();
            let moved = w.advance_if_needed(now);
            (f(&w, now), moved)
        };
        if moved {
            self.wake();
        }
        out
    }

    pub(crate) fn rtt(&self) -> Duration {
        self.lock().cfg.client_rtt
    }

    /// Adds a running server (empty data, `read_only` from its configuration).
    pub fn add_server(&self, cfg: ServerConfig) -> Result<(), SimError> {
        self.with(|w, now| w.add_server(cfg, now))
    }

    /// Installs the network (see the module docs).
    pub fn set_links(&self, links: LinkFn) {
        self.with(|w, _| w.links = links);
    }

    /// The network changed: replication reacts now rather than at the next poll.
    pub fn links_changed(&self) {
        self.with(|_, _| ());
    }

    /// A connector for `from` (a coordinator's node id, usually), with primus' probe
    /// settings (timeouts, user, heartbeat table).
    pub fn connector(&self, from: Peer, config: primus_mysql::ProbeConfig) -> SimConnector {
        SimConnector::new(self, from, config)
    }

    /// SIGKILL `addr` (see [`ProcState::Crashed`]).
    pub fn crash(&self, addr: &InstanceAddr) -> Result<(), SimError> {
        self.with(|w, now| w.crash(addr, now))
    }

    /// Starts a crashed server (crash recovery, configured variables, replication restart).
    pub fn start(&self, addr: &InstanceAddr) -> Result<(), SimError> {
        self.with(|w, now| w.start(addr, now))
    }

    /// Crash and start at once (a `kill -9` followed by an immediate restart).
    pub fn restart(&self, addr: &InstanceAddr) -> Result<(), SimError> {
        self.with(|w, now| {
            if w.server(addr)?.proc != ProcState::Crashed {
                w.crash(addr, now)?;
            }
            w.start(addr, now)
        })
    }

    /// SIGSTOP.
    pub fn pause(&self, addr: &InstanceAddr) -> Result<(), SimError> {
        self.with(|w, now| w.pause(addr, now))
    }

    /// SIGCONT.
    pub fn resume(&self, addr: &InstanceAddr) -> Result<(), SimError> {
        self.with(|w, now| w.resume(addr, now))
    }

    /// Makes `replica` replicate from `source` now, as `CHANGE MASTER TO` (GTID positioning)
    /// and `START SLAVE` run on it would.
    pub fn replicate(
        &self,
        replica: &InstanceAddr,
        source: &InstanceAddr,
        setup: &ReplicationSetup,
    ) -> Result<(), SimError> {
        self.with(|w, now| w.replicate(replica, source, setup, now))
    }

    /// Gives `to` a copy of `from`'s committed data, as restoring a backup would (see
    /// `World::clone_data`): for starting a world with history without replaying it.
    pub fn clone_data(&self, from: &InstanceAddr, to: &InstanceAddr) -> Result<(), SimError> {
        self.with(|w, _| w.clone_data(from, to))
    }

    /// Changes the delays of `addr`'s incoming replication link from now on.
    pub fn set_timing(&self, addr: &InstanceAddr, timing: ReplicaTiming) -> Result<(), SimError> {
        self.with(|w, _| w.server_mut(addr).map(|s| s.cfg.timing = timing))
    }

    /// Change part of a server's timing.
    pub fn update_timing(&self, addr: &InstanceAddr, f: impl FnOnce(&mut ReplicaTiming)) -> Result<(), SimError> {
        self.with(|w, _| w.server_mut(addr).map(|s| f(&mut s.cfg.timing)))
    }

    /// What a probe would read on `addr` now, whatever its state or the network (for
    /// invariants and tests). Heartbeats from `primus.heartbeat`.
    pub fn observe(&self, addr: &InstanceAddr) -> Result<Observation, SimError> {
        self.with(|w, now| {
            w.server(addr)?;
            w.observation(addr, &HeartbeatTable::default(), now).map_err(SimError::Internal)
        })
    }

    /// `addr`'s executed GTIDs now: MariaDB `gtid_current_pos`, MySQL `gtid_executed`.
    pub fn executed(&self, addr: &InstanceAddr) -> Result<AnyGtidSet, SimError> {
        self.peek(|w, _| w.server(addr).map(|s| s.executed_set()))
    }

    /// `addr` is up (running, or paused: it takes writes again when resumed) and an
    /// application write would pass `read_only` (for invariants: cheaper than
    /// [`SimMysql::observe`]).
    pub fn writable(&self, addr: &InstanceAddr) -> Result<bool, SimError> {
        self.peek(|w, _| w.server(addr).map(|s| s.proc != ProcState::Crashed && !s.read_only && !s.super_read_only))
    }

    /// [`SimMysql::writable`] of each of `addrs` at one instant (unknown servers: false).
    pub fn writable_all(&self, addrs: &[InstanceAddr]) -> Vec<bool> {
        self.peek(|w, _| {
            addrs
                .iter()
                .map(|a| w.server(a).is_ok_and(|s| s.proc != ProcState::Crashed && !s.read_only && !s.super_read_only))
                .collect()
        })
    }

    /// The count of `addr`'s process exits (crashes), changed at each one: a watcher
    /// learns of an exit at the instant it happens, as a pidfd tells a real one.
    pub fn exits(&self, addr: &InstanceAddr) -> Result<tokio::sync::watch::Receiver<u64>, SimError> {
        self.lock().server(addr).map(|s| s.exits.subscribe())
    }

    pub fn process_state(&self, addr: &InstanceAddr) -> Result<ProcState, SimError> {
        self.peek(|w, _| w.server(addr).map(|s| s.proc))
    }

    /// Application rows committed (visible) on `addr`.
    pub fn rows(&self, addr: &InstanceAddr) -> Result<BTreeSet<u64>, SimError> {
        self.peek(|w, _| w.server(addr).map(|s| s.data.rows.keys().copied().collect()))
    }

    /// Transactions committed on `addr`, by id.
    pub fn committed(&self, addr: &InstanceAddr) -> Result<Vec<TxnId>, SimError> {
        self.with(|w, _| w.committed(addr))
    }

    /// A transaction of the world's log.
    pub fn txn(&self, id: TxnId) -> Option<Txn> {
        self.lock().txn(id).cloned()
    }

    /// Number of transactions committed anywhere so far (ids are `0..n`).
    pub fn txn_count(&self) -> u64 {
        self.lock().txns.len() as u64
    }

    pub fn processlist(&self, addr: &InstanceAddr) -> Vec<ProcessRow> {
        self.with(|w, _| w.processlist(addr))
    }

    /// Every statement some server received and the simulator did not understand (they
    /// failed with `QueryFailed { code: None, .. }`). A simulation run should assert this
    /// stays empty: primus ignores some failures (e.g. of `KILL`).
    pub fn unmodelled_statements(&self) -> Vec<(InstanceAddr, String)> {
        self.lock().unmodelled.clone()
    }

    /// Every server's address.
    pub fn addrs(&self) -> Vec<InstanceAddr> {
        self.lock().servers.keys().cloned().collect()
    }

    /// The simulated wall clock, unix ms.
    pub fn now_ms(&self) -> u64 {
        self.lock().wall_ms(Instant::now())
    }

    /// Runs `sql` on `addr` as `root` over the local socket (no network; hangs while the
    /// server is paused), for test set-up and inspection.
    pub async fn admin(&self, addr: &InstanceAddr, sql: &str) -> Result<Vec<StatusRow>, SimError> {
        let from = Peer::Local(addr.clone());
        let ident = Identity { user: "root".into(), peer: from.clone(), privileged: true };
        let unreachable = |m: String| SimError::Unreachable(addr.clone(), m);
        let key = match conn::round_trip(self, &from, addr, None, &ident, Request::Connect, None).await {
            Ok(Output::Session(k)) => k,
            Ok(_) => return Err(unreachable("unexpected answer".into())),
            Err(e) => return Err(unreachable(format!("{e:?}"))),
        };
        let r = conn::round_trip(self, &from, addr, Some(key), &ident, Request::Sql(sql.to_string()), None).await;
        self.close_session(addr, key);
        match r {
            Ok(Output::Rows(rows)) => Ok(rows),
            Ok(_) => Ok(Vec::new()),
            Err(Rt::Sql(e)) => Err(SimError::Sql(e)),
            Err(e) => Err(unreachable(format!("{e:?}"))),
        }
    }

    /// The client side of a session closed (also from `Drop`: touches nothing but the
    /// session, and does not need a runtime).
    pub(crate) fn close_session(&self, addr: &InstanceAddr, key: SessionKey) {
        let mut w = self.lock();
        w.close_session(addr, key);
        w.settled_at = None;
        self.wake();
    }
}

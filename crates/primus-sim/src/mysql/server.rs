//! One simulated server: its configuration, process state, data, binary log and GTID state.
//!
//! Data is a log of transactions ([`Txn`], kept once in the world and referred to by
//! [`TxnId`]); a server holds which of them it has committed, its binary log (the order it
//! wrote them), and the GTID variables derived from both, per flavor:
//!
//! * MySQL: `gtid_executed` (committed), the GTIDs in the binary log, and `gtid_purged`
//!   (committed but not in the binary log: a restored backup, replicated transactions with
//!   `log_replica_updates=OFF`).
//! * MariaDB: `gtid_binlog_pos` (last GTID binlogged per domain), `gtid_binlog_state` (last seq
//!   per domain and server), `gtid_slave_pos` (last GTID applied by replication, or set) and
//!   `gtid_current_pos` (per domain, whichever of those two has the higher seq — MariaDB's rule).

use super::replication::Replica;
use super::world::{Pending, Waiter};
use super::{Peer, SqlError};
use primus_mysql::flavor::{Flavor, ServerInfo};
use primus_mysql::gtid::{GtidSource, MariaBinlogState, MariaGtid, MariaGtidSet, MySqlGtidSet, Uuid};
use primus_mysql::{AnyGtidSet, GtidState, HeartbeatRow};
use primus_types::InstanceAddr;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// Identifies a transaction across the world (its index in the world's transaction log).
pub type TxnId = u64;

/// A transaction's GTID, per flavor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gtid {
    MariaDb(MariaGtid),
    MySql { uuid: Uuid, seq: u64 },
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtid::MariaDb(g) => g.fmt(f),
            Gtid::MySql { uuid, seq } => write!(f, "{uuid}:{seq}"),
        }
    }
}

/// What a transaction changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// An application row (see `SimMysql::app_write`); row ids are unique keys.
    AppRow {
        row: u64,
    },
    /// The heartbeat row of `row.cluster` in `db.table`, as it is after the upsert (row image).
    Heartbeat {
        db: String,
        table: String,
        row: HeartbeatRow,
    },
    CreateDatabase {
        db: String,
    },
    CreateTable {
        db: String,
        table: String,
    },
}

impl Payload {
    /// Bytes the transaction takes in a binary log (for plausible coordinates).
    pub(crate) fn event_size(&self) -> u64 {
        match self {
            Payload::AppRow { .. } => 250,
            Payload::Heartbeat { .. } => 320,
            Payload::CreateDatabase { .. } => 180,
            Payload::CreateTable { .. } => 420,
        }
    }
}

/// One transaction, as first committed on its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub id: TxnId,
    /// `None`: committed on a MariaDB server without binary log (no GTID is assigned).
    pub gtid: Option<Gtid>,
    /// Where it was first committed.
    pub origin: InstanceAddr,
    /// Simulated wall clock (unix ms) of its commit on the origin.
    pub committed_at_ms: u64,
    pub payload: Payload,
    /// Simulated instant of the commit on the origin (for `Seconds_Behind_Master`).
    pub(crate) origin_at: Instant,
}

/// `rpl_semi_sync_*_wait_point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPoint {
    /// Lossless: the transaction is in the binlog (and sent) but not committed (invisible,
    /// absent from MySQL `gtid_executed`) until a replica acknowledged it or the wait timed out.
    AfterSync,
    /// Committed at once; only the client's answer waits.
    AfterCommit,
}

/// How replication reaches this server as a replica (its incoming link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaTiming {
    /// One-way delay source → replica of each event (and replica → source of each semi-sync
    /// acknowledgement).
    pub io_delay: Duration,
    /// Uniform extra delay `0..=io_jitter` per event, drawn from the world's RNG (events keep
    /// their order).
    pub io_jitter: Duration,
    /// Time from receipt (relay log) to being applied.
    pub apply_delay: Duration,
    /// Uniform extra `0..=apply_jitter` per transaction, drawn from the world's RNG.
    pub apply_jitter: Duration,
    /// Serial cost of applying one transaction (the SQL thread applies one at a time, so a
    /// backlog builds up when transactions arrive faster).
    pub apply_cost: Duration,
    /// Every client statement (and connect) waits this long on the server before it runs
    /// (an overloaded or stalled server); it runs even when its caller gave up meanwhile.
    pub statement_delay: Duration,
}

impl Default for ReplicaTiming {
    /// 1 ms network delay, 1 ms apply delay, no jitter, no serial cost.
    fn default() -> Self {
        ReplicaTiming {
            io_delay: Duration::from_millis(1),
            io_jitter: Duration::ZERO,
            apply_delay: Duration::from_millis(1),
            apply_jitter: Duration::ZERO,
            apply_cost: Duration::ZERO,
            statement_delay: Duration::ZERO,
        }
    }
}

/// How a server is configured (its `my.cnf`): what it has at every start.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub addr: InstanceAddr,
    /// `@@version`; decides the flavor and dialect (see `primus_mysql::flavor::detect`).
    pub version: String,
    /// `@@version_comment`.
    pub version_comment: String,
    pub server_id: u32,
    /// MySQL `@@server_uuid`; `None`: drawn from the world's RNG.
    pub server_uuid: Option<String>,
    /// MariaDB `gtid_domain_id`.
    pub gtid_domain_id: u32,
    /// MariaDB `gtid_strict_mode` at start.
    pub gtid_strict_mode: bool,
    pub log_bin: bool,
    /// `log_slave_updates` / `log_replica_updates`.
    pub log_slave_updates: bool,
    /// `read_only` at every start.
    pub read_only_at_start: bool,
    /// MySQL `super_read_only` at every start (implies `read_only`).
    pub super_read_only_at_start: bool,
    /// `--skip-slave-start`: replication threads are not started at start.
    pub skip_slave_start: bool,
    /// `slave_net_timeout`: a replica that heard nothing (no event, no heartbeat) from its
    /// source for this long reconnects; also its connect timeout.
    pub slave_net_timeout: Duration,
    /// Semi-sync plugin loaded (always on MariaDB ≥ 10.3, where it is built in). Without it
    /// the semi-sync variables do not exist.
    pub semi_sync_plugin: bool,
    pub semi_sync_source_at_start: bool,
    pub semi_sync_replica_at_start: bool,
    pub semi_sync_timeout_ms_at_start: u64,
    pub semi_sync_wait_point_at_start: WaitPoint,
    /// `@@pid_file` (read by the agent).
    pub pid_file: String,
    /// Delays of this server's incoming replication link.
    pub timing: ReplicaTiming,
}

impl ServerConfig {
    /// A MariaDB 10.11 server configured like primus' test sandboxes: binlog with
    /// `log_slave_updates`, `gtid_strict_mode`, domain 0, `read_only` at start,
    /// `slave_net_timeout` 60 s (the server default), semi-sync off (`AFTER_COMMIT`, MariaDB's
    /// default wait point; primus sets `AFTER_SYNC`).
    pub fn mariadb(addr: InstanceAddr, server_id: u32) -> ServerConfig {
        ServerConfig {
            addr,
            version: "10.11.6-MariaDB-log".into(),
            version_comment: "MariaDB Server".into(),
            server_id,
            server_uuid: None,
            gtid_domain_id: 0,
            gtid_strict_mode: true,
            log_bin: true,
            log_slave_updates: true,
            read_only_at_start: true,
            super_read_only_at_start: false,
            skip_slave_start: false,
            slave_net_timeout: Duration::from_secs(60),
            semi_sync_plugin: true,
            semi_sync_source_at_start: false,
            semi_sync_replica_at_start: false,
            semi_sync_timeout_ms_at_start: 10_000,
            semi_sync_wait_point_at_start: WaitPoint::AfterCommit,
            pid_file: "/run/mysqld/mysqld.pid".into(),
            timing: ReplicaTiming::default(),
        }
    }

    /// A MySQL 8.0.36 server: GTID mode on, binlog with `log_replica_updates`, `read_only`
    /// (not `super_read_only`) at start, semi-sync plugin loaded but off (`AFTER_SYNC`).
    pub fn mysql(addr: InstanceAddr, server_id: u32) -> ServerConfig {
        ServerConfig {
            version: "8.0.36".into(),
            version_comment: "MySQL Community Server - GPL".into(),
            semi_sync_wait_point_at_start: WaitPoint::AfterSync,
            ..ServerConfig::mariadb(addr, server_id)
        }
    }
}

/// The process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    Running,
    /// SIGSTOP: connections are accepted by the kernel but nothing answers.
    Paused,
    /// Killed (or stopped): connections are refused.
    Crashed,
}

/// A client connection as the server knows it: `(incarnation, thread id)`, so that ids reused
/// after a restart never match an old connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SessionKey {
    pub incarnation: u64,
    pub id: u64,
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub user: String,
    pub peer: Peer,
    /// `SUPER` (MySQL: writes through `read_only`, not `super_read_only`) and, on MariaDB,
    /// `READ ONLY ADMIN` when the world says the coordinator has it.
    pub privileged: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub ident: Identity,
}

/// Semi-sync variables and status of one server.
#[derive(Debug, Clone)]
pub(crate) struct SemiSync {
    pub source_enabled: bool,
    pub replica_enabled: bool,
    pub timeout_ms: u64,
    pub wait_point: WaitPoint,
    /// `Rpl_semi_sync_master_status`: not fallen back to asynchronous.
    pub active: bool,
}

/// What is committed (visible) on a server.
#[derive(Debug, Clone, Default)]
pub(crate) struct Data {
    pub committed: BTreeSet<TxnId>,
    pub rows: BTreeMap<u64, TxnId>,
    pub databases: BTreeSet<String>,
    pub tables: BTreeMap<(String, String), BTreeMap<String, HeartbeatRow>>,
}

impl Data {
    /// Whether applying `p` would fail, and how.
    pub fn check(&self, p: &Payload) -> Result<(), SqlError> {
        match p {
            Payload::AppRow { row } if self.rows.contains_key(row) => {
                Err(SqlError::new(1062, format!("Duplicate entry '{row}' for key 'PRIMARY'")))
            }
            Payload::Heartbeat { db, table, .. } => self.table_exists(db, table),
            Payload::CreateTable { db, .. } if !self.databases.contains(db) => {
                Err(SqlError::new(1049, format!("Unknown database '{db}'")))
            }
            _ => Ok(()),
        }
    }

    pub fn table_exists(&self, db: &str, table: &str) -> Result<(), SqlError> {
        if !self.databases.contains(db) {
            Err(SqlError::new(1049, format!("Unknown database '{db}'")))
        } else if !self.tables.contains_key(&(db.to_string(), table.to_string())) {
            Err(SqlError::new(1146, format!("Table '{db}.{table}' doesn't exist")))
        } else {
            Ok(())
        }
    }

    fn apply(&mut self, id: TxnId, p: &Payload) {
        self.committed.insert(id);
        match p {
            Payload::AppRow { row } => {
                self.rows.insert(*row, id);
            }
            Payload::Heartbeat { db, table, row } => {
                self.tables.entry((db.clone(), table.clone())).or_default().insert(row.cluster.clone(), row.clone());
            }
            Payload::CreateDatabase { db } => {
                self.databases.insert(db.clone());
            }
            Payload::CreateTable { db, table } => {
                self.tables.entry((db.clone(), table.clone())).or_default();
            }
        }
    }
}

/// Where a binary log starts (after the format description and previous-GTIDs events).
pub(crate) const BINLOG_START_POS: u64 = 256;

/// One transaction in a binary log: which, and its end coordinates.
#[derive(Debug, Clone)]
pub(crate) struct BinlogEntry {
    pub txn: TxnId,
    pub gtid: Option<Gtid>,
    pub file_no: u32,
    pub end_pos: u64,
    pub written_at: Instant,
}

/// A binary log, never purged; a new file at every start; `RESET MASTER` empties it (and
/// starts a new `generation`, which ends every replica's dump connection).
#[derive(Debug, Clone)]
pub(crate) struct Binlog {
    pub entries: Vec<BinlogEntry>,
    pub file_no: u32,
    pub pos: u64,
    pub generation: u64,
}

impl Binlog {
    fn new() -> Binlog {
        Binlog { entries: Vec::new(), file_no: 1, pos: BINLOG_START_POS, generation: 0 }
    }
}

/// One simulated server.
pub(crate) struct Server {
    pub cfg: ServerConfig,
    pub info: ServerInfo,
    pub uuid: Option<Uuid>,
    pub proc: ProcState,
    /// Increments at every start: connections of an earlier run are dead.
    pub incarnation: u64,
    /// Counts the process's exits (crashes), for watchers (the agent's watchdog; the
    /// real one is told by the kernel through a pidfd the moment mysqld exits).
    pub exits: tokio::sync::watch::Sender<u64>,
    pub started_at: Instant,
    pub read_only: bool,
    pub super_read_only: bool,
    pub strict_mode: bool,
    pub semi: SemiSync,
    pub data: Data,
    pub binlog: Binlog,
    /// MySQL `gtid_executed`.
    pub my_executed: MySqlGtidSet,
    /// MySQL: GTIDs in the binary log.
    pub my_binlogged: MySqlGtidSet,
    /// MariaDB `gtid_slave_pos`, `gtid_binlog_pos`, `gtid_binlog_state`.
    pub slave_pos: BTreeMap<u32, MariaGtid>,
    pub binlog_pos: BTreeMap<u32, MariaGtid>,
    pub binlog_state: MariaBinlogState,
    /// Binlogged, not committed: commits waiting in `AFTER_SYNC` (committed by crash recovery).
    pub prepared: Vec<TxnId>,
    /// Semi-sync: binlog entries `..acked_upto` (of the current generation) are acknowledged.
    pub acked_upto: usize,
    /// Replication from a source (`None`: not a replica).
    pub repl: Option<Replica>,
    pub sessions: BTreeMap<u64, Session>,
    pub next_thread_id: u64,
    /// Requests received while paused, run in order on resume.
    pub inbox: VecDeque<Pending>,
    /// Requests held by `statement_delay`, in arrival order, with when they run.
    pub delayed: VecDeque<(Instant, Pending)>,
    /// Sessions their clients closed while a statement they sent was held: removed once
    /// what they sent has run (a statement the server received runs).
    pub closed_with_held: Vec<u64>,
    /// Statements in progress that wait for something (sleep, GTID wait, semi-sync ack...).
    pub waiters: Vec<Waiter>,
    /// Writes blocked behind a `SET GLOBAL read_only = ON` that waits for commits in progress.
    pub deferred: VecDeque<Pending>,
    /// Sessions their clients closed while the server was paused (removed on resume, after
    /// what they sent has run).
    pub closed_while_paused: Vec<u64>,
}

impl Server {
    pub fn new(cfg: ServerConfig, info: ServerInfo, uuid: Option<Uuid>, now: Instant) -> Server {
        let mut s = Server {
            semi: SemiSync {
                source_enabled: false,
                replica_enabled: false,
                timeout_ms: 0,
                wait_point: WaitPoint::AfterSync,
                active: false,
            },
            read_only: false,
            super_read_only: false,
            strict_mode: cfg.gtid_strict_mode,
            info,
            uuid,
            proc: ProcState::Running,
            incarnation: 1,
            exits: tokio::sync::watch::Sender::new(0),
            started_at: now,
            data: Data::default(),
            binlog: Binlog::new(),
            my_executed: MySqlGtidSet::new(),
            my_binlogged: MySqlGtidSet::new(),
            slave_pos: BTreeMap::new(),
            binlog_pos: BTreeMap::new(),
            binlog_state: MariaBinlogState::new(),
            prepared: Vec::new(),
            acked_upto: 0,
            repl: None,
            sessions: BTreeMap::new(),
            next_thread_id: 1,
            inbox: VecDeque::new(),
            delayed: VecDeque::new(),
            closed_with_held: Vec::new(),
            waiters: Vec::new(),
            deferred: VecDeque::new(),
            closed_while_paused: Vec::new(),
            cfg,
        };
        s.load_config_variables();
        s
    }

    /// The variables a start takes from the configuration.
    pub fn load_config_variables(&mut self) {
        self.super_read_only = self.cfg.super_read_only_at_start && self.info.has_super_read_only();
        self.read_only = self.cfg.read_only_at_start || self.super_read_only;
        self.strict_mode = self.cfg.gtid_strict_mode;
        let plugin = self.cfg.semi_sync_plugin;
        self.semi = SemiSync {
            source_enabled: plugin && self.cfg.semi_sync_source_at_start,
            replica_enabled: plugin && self.cfg.semi_sync_replica_at_start,
            timeout_ms: self.cfg.semi_sync_timeout_ms_at_start,
            wait_point: self.cfg.semi_sync_wait_point_at_start,
            active: plugin && self.cfg.semi_sync_source_at_start,
        };
    }

    pub fn is_maria(&self) -> bool {
        self.info.flavor == Flavor::MariaDb
    }

    pub fn running(&self) -> bool {
        self.proc == ProcState::Running
    }

    pub fn alloc_thread_id(&mut self) -> u64 {
        let id = self.next_thread_id;
        self.next_thread_id += 1;
        id
    }

    pub fn session_alive(&self, k: SessionKey) -> bool {
        self.proc != ProcState::Crashed && k.incarnation == self.incarnation && self.sessions.contains_key(&k.id)
    }

    pub fn binlog_base(&self) -> &'static str {
        if self.is_maria() {
            "mysql-bin"
        } else {
            "binlog"
        }
    }

    pub fn binlog_file(&self, no: u32) -> String {
        format!("{}.{no:06}", self.binlog_base())
    }

    fn my_source(&self) -> Option<GtidSource> {
        self.uuid.map(|uuid| GtidSource { uuid, tag: None })
    }

    /// MySQL: committed or binlogged (a GTID in either is taken).
    pub fn my_known(&self) -> MySqlGtidSet {
        self.my_executed.union(&self.my_binlogged)
    }

    /// MySQL `gtid_purged`: committed, not in the binary log.
    pub fn my_purged(&self) -> MySqlGtidSet {
        self.my_executed.subtract(&self.my_binlogged)
    }

    /// The GTID a transaction written here now gets.
    pub fn next_local_gtid(&self) -> Option<Gtid> {
        if self.is_maria() {
            if !self.cfg.log_bin {
                return None;
            }
            let domain = self.cfg.gtid_domain_id;
            // The domain's seq counter: the binlog state, bumped by what replication applied
            // (MariaDB does so even without log_slave_updates, so seqs never go back).
            let binlogged = self.binlog_state.gtids().filter(|g| g.domain_id == domain).map(|g| g.seq_no).max();
            let applied = self.slave_pos.get(&domain).map(|g| g.seq_no);
            let last = binlogged.unwrap_or(0).max(applied.unwrap_or(0));
            Some(Gtid::MariaDb(MariaGtid { domain_id: domain, server_id: self.cfg.server_id, seq_no: last + 1 }))
        } else {
            let source = self.my_source()?;
            let known = self.my_known();
            // MySQL takes the first number not yet used for its own UUID.
            let seq = match known.get(&source).map(|s| s.ranges().to_vec()).unwrap_or_default().first() {
                Some(&(1, hi)) => hi + 1,
                _ => 1,
            };
            Some(Gtid::MySql { uuid: source.uuid, seq })
        }
    }

    /// Writes `txn` to the binary log (if there is one) at `now`.
    pub fn log_binlog(&mut self, txn: &Txn, now: Instant) {
        if !self.cfg.log_bin {
            return;
        }
        self.binlog.pos += txn.payload.event_size();
        self.binlog.entries.push(BinlogEntry {
            txn: txn.id,
            gtid: txn.gtid,
            file_no: self.binlog.file_no,
            end_pos: self.binlog.pos,
            written_at: now,
        });
        match txn.gtid {
            Some(Gtid::MariaDb(g)) => {
                self.binlog_state.insert(g);
                self.binlog_pos.insert(g.domain_id, g);
            }
            Some(Gtid::MySql { uuid, seq }) => self.my_binlogged.add(GtidSource { uuid, tag: None }, seq, seq),
            None => {}
        }
    }

    /// Commits `txn` in the engine: its changes become visible (and MySQL `gtid_executed`
    /// includes it).
    pub fn engine_commit(&mut self, txn: &Txn) {
        self.data.apply(txn.id, &txn.payload);
        if let Some(Gtid::MySql { uuid, seq }) = txn.gtid {
            self.my_executed.add(GtidSource { uuid, tag: None }, seq, seq);
        }
    }

    /// MariaDB `gtid_current_pos`: per domain, the higher seq of `gtid_slave_pos` and
    /// `gtid_binlog_pos`.
    pub fn current_pos(&self) -> BTreeMap<u32, MariaGtid> {
        let mut pos = self.slave_pos.clone();
        for (d, g) in &self.binlog_pos {
            match pos.get(d) {
                Some(s) if s.seq_no >= g.seq_no => {}
                _ => {
                    pos.insert(*d, *g);
                }
            }
        }
        pos
    }

    pub fn gtid_state(&self) -> GtidState {
        if self.is_maria() {
            GtidState::MariaDb {
                current_pos: position(&self.current_pos()),
                binlog_pos: position(&self.binlog_pos),
                slave_pos: position(&self.slave_pos),
                strict_mode: self.strict_mode,
                domain_id: self.cfg.gtid_domain_id,
                binlog_state: self.binlog_state.clone(),
            }
        } else {
            GtidState::MySql { executed: self.my_executed.clone(), purged: self.my_purged(), mode: "ON".into() }
        }
    }

    /// MariaDB `gtid_current_pos` / MySQL `gtid_executed`.
    pub fn executed_set(&self) -> AnyGtidSet {
        self.gtid_state().executed()
    }

    pub fn has_semi_waiters(&self) -> bool {
        self.waiters.iter().any(|w| w.is_semi_sync())
    }

    /// A `SET GLOBAL read_only = ON` waits for commits in progress: writes queue behind it.
    pub fn read_only_pending(&self) -> bool {
        self.waiters.iter().any(|w| w.is_read_only())
    }

    /// Why a write by this identity is refused now, if it is (see the read_only notes of
    /// `primus_mysql::flavor`).
    pub fn write_refused(&self, privileged: bool, read_only_admin: bool) -> Option<SqlError> {
        let product = if self.is_maria() { "MariaDB" } else { "MySQL" };
        if self.super_read_only {
            return Some(SqlError::new(
                1290,
                format!("The {product} server is running with the --super-read-only option so it cannot execute this statement"),
            ));
        }
        let bypass = privileged && (!self.is_maria() || read_only_admin);
        (self.read_only && !bypass).then(|| {
            SqlError::new(
                1290,
                format!(
                    "The {product} server is running with the --read-only option so it cannot execute this statement"
                ),
            )
        })
    }
}

/// A MariaDB position from its last GTID per domain.
pub(crate) fn position(pos: &BTreeMap<u32, MariaGtid>) -> MariaGtidSet {
    MariaGtidSet::from_gtids(pos.values().copied())
}

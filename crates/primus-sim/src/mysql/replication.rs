//! Replication: a replica's configuration, its IO thread (connecting to the source, the dump
//! connection, what it received: relay log, `Gtid_IO_Pos` / `Retrieved_Gtid_Set`, heartbeats,
//! semi-sync acknowledgements) and its SQL thread (applying the relay log).
//!
//! Everything moves with simulated time, stepped by the world ([`World::step_replica`]):
//!
//! * **Connecting.** An attempt is decided by the network (`Link` of the connection the
//!   replica opens to its source) and the source process: refused (link refused, source
//!   crashed: error 2003 at once), hanging (link silent: 2003 after `slave_net_timeout`;
//!   source paused: the handshake never comes, 2013 after `slave_net_timeout`, unless it
//!   resumes first), or connected. Failed attempts repeat every `MASTER_CONNECT_RETRY`.
//! * **Start position.** MariaDB: `Gtid_IO_Pos` when the relay log is kept (IO thread
//!   reconnecting or restarted alone), else `gtid_slave_pos` or `gtid_current_pos`
//!   (`MASTER_USE_GTID`); the source must find each domain's GTID in its binary log, or it
//!   must be its own `gtid_slave_pos` (a promoted replica), else error 1236 stops the IO
//!   thread. MySQL auto-positioning: the replica sends `gtid_executed ∪ Retrieved_Gtid_Set`;
//!   the source refuses (1236) when it purged GTIDs the replica lacks or the replica has GTIDs
//!   of the source's UUID it never had, and sends everything else in its binary log.
//! * **Dump connection.** While it *flows* (source running, link up) every binlog entry is
//!   sent, arriving `io_delay` (+ jitter) after it was written (or after the flow resumed);
//!   a heartbeat arrives every `MASTER_HEARTBEAT_PERIOD` after the last event. When it does
//!   not flow (link silent, source paused) nothing arrives, and after `slave_net_timeout`
//!   without data the replica reconnects. A refused link, or the source crashing, restarting
//!   or running `RESET MASTER`, ends the connection at once and the replica reconnects.
//! * **SQL thread.** Each received transaction is applied `apply_delay` (+ jitter) after
//!   receipt, one at a time (`apply_cost` each). MySQL skips GTIDs it already has; MariaDB
//!   refuses an out-of-order GTID under `gtid_strict_mode` (1950); a duplicate application row
//!   (1062) or a missing heartbeat table (1146) stops the SQL thread with its error.

use super::server::{Gtid, ProcState, ReplicaTiming, Server, Txn, TxnId};
use super::world::World;
use super::{Link, Peer, SqlError};
use primus_mysql::gtid::{GtidSource, MariaGtid, MySqlGtidSet, Uuid};
use primus_mysql::status::UsingGtid;
use primus_mysql::Flavor;
use primus_types::InstanceAddr;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// An error a replication thread reported (`Last_IO_Errno`/`Last_SQL_Errno`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ThreadError {
    pub errno: u32,
    pub message: String,
    /// Simulated wall clock, unix ms.
    pub at_ms: u64,
}

/// Why a connection attempt hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hang {
    /// Packets are dropped: the TCP connect times out.
    Network,
    /// The source is paused: TCP connects, the handshake never comes.
    Handshake,
}

/// The IO thread.
#[derive(Debug)]
pub(crate) enum Io {
    Stopped,
    Connecting { next_attempt: Instant, hanging: Option<(Instant, Hang)> },
    Connected(Box<DumpConn>),
}

/// A live connection to the source (its binlog dump thread).
#[derive(Debug)]
pub(crate) struct DumpConn {
    pub source_incarnation: u64,
    pub source_generation: u64,
    /// Next index of the source's binary log to send.
    pub cursor: usize,
    pub in_flight: VecDeque<InFlight>,
    /// Semi-sync acknowledgements on their way back: (arrival at the source, entries acked).
    pub acks: VecDeque<(Instant, usize)>,
    pub last_rx: Instant,
    pub next_heartbeat: Instant,
    pub flowing: bool,
    pub flow_since: Instant,
    pub last_arrival: Instant,
    /// Semi-sync negotiated at connect: this replica acknowledges.
    pub semi: bool,
    /// Thread id of the dump thread on the source.
    pub dump_thread_id: u64,
}

/// A binlog entry on its way to the replica.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub txn: TxnId,
    pub index: usize,
    /// (file number, end position) in the source's binary log.
    pub coord: (u32, u64),
    pub arrive_at: Instant,
}

/// A received transaction not yet applied.
#[derive(Debug, Clone)]
pub(crate) struct RelayEntry {
    pub txn: TxnId,
    pub ready_at: Instant,
    pub coord: (u32, u64),
    pub size: u64,
}

/// A replica's replication state (one unnamed channel/connection).
#[derive(Debug)]
pub(crate) struct Replica {
    pub source: InstanceAddr,
    pub user: String,
    /// Kept as the server keeps it; never shown.
    pub password: String,
    /// MariaDB `MASTER_USE_GTID` (never `No`: file/position replication is not modelled).
    pub use_gtid: UsingGtid,
    /// MySQL `MASTER_AUTO_POSITION`.
    pub auto_position: bool,
    pub heartbeat_period: Duration,
    pub connect_retry: Duration,
    pub io: Io,
    pub sql_running: bool,
    /// When the SQL thread finished its last transaction (or started).
    pub sql_free_at: Instant,
    pub last_io_error: Option<ThreadError>,
    pub last_sql_error: Option<ThreadError>,
    pub relay: VecDeque<RelayEntry>,
    /// MariaDB `Gtid_IO_Pos`; `None` while the relay log holds nothing to continue from.
    pub io_pos: Option<BTreeMap<u32, MariaGtid>>,
    /// MySQL `Retrieved_Gtid_Set`.
    pub retrieved: MySqlGtidSet,
    pub read_coord: Option<(u32, u64)>,
    pub exec_coord: Option<(u32, u64)>,
    pub source_server_id: Option<u32>,
    pub source_uuid: Option<Uuid>,
    pub received_heartbeats: u64,
    pub executed_entries: u64,
    pub relay_space: u64,
}

impl Replica {
    pub fn new(source: InstanceAddr, heartbeat_period: Duration, now: Instant) -> Replica {
        Replica {
            source,
            user: String::new(),
            password: String::new(),
            use_gtid: UsingGtid::SlavePos,
            auto_position: false,
            heartbeat_period,
            connect_retry: Duration::from_secs(60),
            io: Io::Stopped,
            sql_running: false,
            sql_free_at: now,
            last_io_error: None,
            last_sql_error: None,
            relay: VecDeque::new(),
            io_pos: None,
            retrieved: MySqlGtidSet::new(),
            read_coord: None,
            exec_coord: None,
            source_server_id: None,
            source_uuid: None,
            received_heartbeats: 0,
            executed_entries: 0,
            relay_space: 0,
        }
    }

    pub fn io_stopped(&self) -> bool {
        matches!(self.io, Io::Stopped)
    }

    pub fn connected(&self) -> Option<&DumpConn> {
        match &self.io {
            Io::Connected(c) => Some(c),
            _ => None,
        }
    }

    /// Forgets the relay log and what the IO thread received (CHANGE MASTER, RESET SLAVE,
    /// restart with relay log recovery, MariaDB GTID START SLAVE).
    pub fn purge_relay(&mut self) {
        self.relay.clear();
        self.io_pos = None;
        self.retrieved = MySqlGtidSet::new();
        self.relay_space = 0;
    }

    pub fn stop_io(&mut self) {
        self.io = Io::Stopped;
    }

    pub fn start_io(&mut self, now: Instant) {
        if self.io_stopped() {
            self.io = Io::Connecting { next_attempt: now, hanging: None };
            self.last_io_error = None;
        }
    }

    pub fn start_sql(&mut self, now: Instant) {
        if !self.sql_running {
            self.sql_running = true;
            self.sql_free_at = now;
            self.last_sql_error = None;
        }
    }

    fn reconnect(&mut self, now: Instant) {
        self.io = Io::Connecting { next_attempt: now, hanging: None };
    }

    fn receive(&mut self, txn: &Txn, coord: (u32, u64), ready_at: Instant) {
        let size = txn.payload.event_size();
        self.relay.push_back(RelayEntry { txn: txn.id, ready_at, coord, size });
        self.relay_space += size;
        match txn.gtid {
            Some(Gtid::MariaDb(g)) => {
                self.io_pos.get_or_insert_with(BTreeMap::new).insert(g.domain_id, g);
            }
            Some(Gtid::MySql { uuid, seq }) => self.retrieved.add(GtidSource { uuid, tag: None }, seq, seq),
            None => {}
        }
        self.read_coord = Some(coord);
    }

    /// The next instant something happens on this replica by itself (`None`: nothing).
    pub fn next_event(&self, relay_cost: Duration, net_timeout: Duration) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        match &self.io {
            Io::Stopped => {}
            Io::Connecting { hanging: Some((until, _)), .. } => at(*until),
            Io::Connecting { next_attempt, hanging: None } => at(*next_attempt),
            Io::Connected(c) if c.flowing => {
                if let Some(f) = c.in_flight.front() {
                    at(f.arrive_at);
                }
                if let Some((t, _)) = c.acks.front() {
                    at(*t);
                }
                if !self.heartbeat_period.is_zero() {
                    at(c.next_heartbeat);
                }
            }
            Io::Connected(c) => at(c.last_rx + net_timeout),
        }
        if self.sql_running {
            if let Some(head) = self.relay.front() {
                at(head.ready_at.max(self.sql_free_at) + relay_cost);
            }
        }
        next
    }
}

/// `0..=max`, drawn from the world's RNG (always drawn, so the sequence of draws does not
/// depend on the values configured).
fn jitter(rng: &mut StdRng, max: Duration) -> Duration {
    let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.gen_range(0..=us))
}

/// Error 2003 as the IO thread reports it.
fn connect_error(flavor: Flavor, repl: &Replica, why: &str) -> String {
    let (who, retries) = match flavor {
        Flavor::MariaDb => ("master", "maximum-retries: 100000"),
        Flavor::MySql => ("source", "retries: 1"),
    };
    format!(
        "error connecting to {who} '{}@{}' - retry-time: {}  {retries}  message: {why}",
        repl.user,
        repl.source,
        repl.connect_retry.as_secs()
    )
}

/// Binlog entries to send, and (MariaDB) the position the replica starts from.
type DumpPlan = (Vec<usize>, Option<BTreeMap<u32, MariaGtid>>);

/// How a connection attempt from `replica` to `source` goes right now.
enum Reach {
    Ok,
    Refused,
    UnknownHost,
    Hang(Hang),
}

impl World {
    fn reach(&self, replica: &InstanceAddr, source: &InstanceAddr) -> Reach {
        match self.link(&Peer::Server(replica.clone()), source) {
            Link::Refused => Reach::Refused,
            Link::Silent => Reach::Hang(Hang::Network),
            Link::Up => match self.servers.get(source).map(|s| s.proc) {
                None => Reach::UnknownHost,
                Some(ProcState::Crashed) => Reach::Refused,
                Some(ProcState::Paused) => Reach::Hang(Hang::Handshake),
                Some(ProcState::Running) => Reach::Ok,
            },
        }
    }

    /// Moves replica `addr`'s threads up to `now`. Returns whether anything changed.
    pub(crate) fn step_replica(&mut self, addr: &InstanceAddr, now: Instant) -> bool {
        if !self.servers.get(addr).is_some_and(|r| r.running() && r.repl.is_some()) {
            return false;
        }
        let Some((slot, mut r)) = self.servers.take(addr) else { return false };
        let mut progress = false;
        if r.running() && r.repl.is_some() {
            progress |= self.step_io(&mut r, now);
            progress |= self.step_sql(&mut r, now);
        }
        self.servers.put(slot, r);
        progress
    }

    fn step_io(&mut self, r: &mut Server, now: Instant) -> bool {
        let addr = r.cfg.addr.clone();
        let net_timeout = r.cfg.slave_net_timeout;
        let wall = self.wall_ms(now);
        let flavor = r.info.flavor;
        let Some(repl) = r.repl.as_mut() else { return false };
        match &mut repl.io {
            Io::Stopped => false,
            Io::Connected(_) => self.step_dump(r, now),
            Io::Connecting { next_attempt, hanging } => {
                let retry = repl.connect_retry;
                if let Some((until, kind)) = *hanging {
                    if matches!(self.reach(&addr, &repl.source), Reach::Ok) {
                        self.connect_dump(r, now);
                    } else if now >= until {
                        *next_attempt = until + retry;
                        *hanging = None;
                        let (errno, why) = match kind {
                            Hang::Network => {
                                (2003, format!("Can't connect to server on '{}' (110 \"Connection timed out\")", repl.source.host()))
                            }
                            Hang::Handshake => (
                                2013,
                                "Lost connection to server at 'handshake: reading initial communication packet', system error: 110"
                                    .to_string(),
                            ),
                        };
                        let message = connect_error(flavor, repl, &why);
                        repl.last_io_error = Some(ThreadError { errno, message, at_ms: wall });
                    } else {
                        return false;
                    }
                    return true;
                }
                if now < *next_attempt {
                    return false;
                }
                match self.reach(&addr, &repl.source) {
                    Reach::Ok => self.connect_dump(r, now),
                    Reach::Hang(kind) => *hanging = Some((now + net_timeout, kind)),
                    reach @ (Reach::Refused | Reach::UnknownHost) => {
                        *next_attempt = now + retry;
                        let (errno, why) = if matches!(reach, Reach::UnknownHost) {
                            (2005, format!("Unknown server host '{}' (-2)", repl.source.host()))
                        } else {
                            (
                                2003,
                                format!(
                                    "Can't connect to server on '{}' (111 \"Connection refused\")",
                                    repl.source.host()
                                ),
                            )
                        };
                        let message = connect_error(flavor, repl, &why);
                        repl.last_io_error = Some(ThreadError { errno, message, at_ms: wall });
                    }
                }
                true
            }
        }
    }

    /// The IO thread reached its source: check the start position, open the dump connection
    /// and send the backlog (or stop with error 1236).
    fn connect_dump(&mut self, r: &mut Server, now: Instant) {
        let wall = self.wall_ms(now);
        let Some(repl) = r.repl.as_ref() else { return };
        let Some(src) = self.servers.get(&repl.source) else { return };
        let who =
            if r.is_maria() || r.info.version < primus_mysql::Version::new(8, 0, 26) { "master" } else { "source" };
        let fatal = |errno: u32, message: String| Err(ThreadError { errno, message, at_ms: wall });
        let plan: Result<DumpPlan, ThreadError> = if src.cfg.server_id == r.cfg.server_id {
            fatal(
                1593,
                format!(
                    "Fatal error: The slave I/O thread stops because {who} and slave have equal MySQL server ids; these ids must be different for replication to work (or the --replicate-same-server-id option must be used on slave but this does not always make sense; please check the manual before using it)."
                ),
            )
        } else if src.info.flavor != r.info.flavor {
            fatal(1236, "primus-sim does not model replication between MariaDB and MySQL".into())
        } else if !src.cfg.log_bin {
            fatal(
                1236,
                format!("Got fatal error 1236 from {who} when reading data from binary log: 'Binary log is not open'"),
            )
        } else if r.is_maria() {
            let start = match &repl.io_pos {
                Some(p) => p.clone(),
                None if repl.use_gtid == UsingGtid::CurrentPos => r.current_pos(),
                None => r.slave_pos.clone(),
            };
            maria_plan(&start, src).map(|p| (p, Some(start))).or_else(|m| {
                fatal(1236, format!("Got fatal error 1236 from {who} when reading data from binary log: '{m}'"))
            })
        } else {
            let request = r.my_known().union(&repl.retrieved);
            mysql_plan(&request, src).map(|p| (p, None)).or_else(|m| {
                fatal(1236, format!("Got fatal error 1236 from {who} when reading data from binary log: '{m}'"))
            })
        };
        let (indices, start) = match plan {
            Ok(p) => p,
            Err(e) => {
                if let Some(repl) = r.repl.as_mut() {
                    repl.io = Io::Stopped;
                    repl.last_io_error = Some(e);
                }
                return;
            }
        };
        let semi = r.semi.replica_enabled && src.cfg.semi_sync_plugin;
        let timing = r.cfg.timing;
        let World { servers, rng, .. } = self;
        let Some(repl) = r.repl.as_mut() else { return };
        let Some(src) = servers.get_mut(&repl.source) else { return };
        let mut c = DumpConn {
            source_incarnation: src.incarnation,
            source_generation: src.binlog.generation,
            cursor: src.binlog.entries.len(),
            in_flight: VecDeque::new(),
            acks: VecDeque::new(),
            last_rx: now,
            next_heartbeat: now + repl.heartbeat_period,
            flowing: true,
            flow_since: now,
            last_arrival: now,
            semi,
            dump_thread_id: src.alloc_thread_id(),
        };
        for i in indices {
            if let Some(e) = src.binlog.entries.get(i) {
                ship(&mut c, i, e.txn, (e.file_no, e.end_pos), now, &timing, rng);
            }
        }
        repl.source_server_id = Some(src.cfg.server_id);
        repl.source_uuid = src.uuid;
        repl.last_io_error = None;
        if repl.io_pos.is_none() {
            repl.io_pos = start;
        }
        repl.io = Io::Connected(Box::new(c));
        tracing::debug!(replica = %r.cfg.addr, source = %repl.source, "IO thread connected");
    }

    /// The dump connection of replica `r` up to `now`.
    fn step_dump(&mut self, r: &mut Server, now: Instant) -> bool {
        let addr = r.cfg.addr.clone();
        let net_timeout = r.cfg.slave_net_timeout;
        let timing = r.cfg.timing;
        let Some(repl) = r.repl.as_mut() else { return false };
        let mut io = std::mem::replace(&mut repl.io, Io::Stopped);
        let Io::Connected(c) = &mut io else {
            repl.io = io;
            return false;
        };
        let link = self.link(&Peer::Server(addr), &repl.source);
        let World { servers, rng, txns, .. } = self;
        let src = servers.get_mut(&repl.source).filter(|s| {
            s.proc != ProcState::Crashed
                && s.incarnation == c.source_incarnation
                && s.binlog.generation == c.source_generation
        });
        let Some(src) = src.filter(|_| link != Link::Refused) else {
            // Connection reset: the source is gone (or restarted, or reset its binlog), or
            // the network rejects the connection.
            repl.reconnect(now);
            return true;
        };
        let mut progress = false;
        let flowing = link == Link::Up && src.proc == ProcState::Running;
        if flowing != c.flowing {
            c.flowing = flowing;
            if flowing {
                c.flow_since = now;
                c.next_heartbeat = now;
            }
            progress = true;
        }
        if !flowing {
            if now >= c.last_rx + net_timeout {
                tracing::debug!(replica = %r.cfg.addr, "no data for slave_net_timeout: reconnecting");
                repl.reconnect(now);
                return true;
            }
            repl.io = io;
            return progress;
        }
        while let Some(e) = src.binlog.entries.get(c.cursor) {
            let base = e.written_at.max(c.flow_since);
            let index = c.cursor;
            ship(c, index, e.txn, (e.file_no, e.end_pos), base, &timing, rng);
            c.cursor += 1;
            progress = true;
        }
        while c.in_flight.front().is_some_and(|f| f.arrive_at <= now) {
            let Some(f) = c.in_flight.pop_front() else { break };
            let at = f.arrive_at.max(c.flow_since);
            let Some(txn) = usize::try_from(f.txn).ok().and_then(|i| txns.get(i)) else { continue };
            let ready = at + timing.apply_delay + jitter(rng, timing.apply_jitter);
            repl.receive(txn, f.coord, ready);
            if c.semi {
                c.acks.push_back((at + timing.io_delay, f.index + 1));
            }
            c.last_rx = c.last_rx.max(at);
            c.next_heartbeat = at + repl.heartbeat_period;
            progress = true;
        }
        while c.acks.front().is_some_and(|(t, _)| *t <= now) {
            let Some((_, upto)) = c.acks.pop_front() else { break };
            src.acked_upto = src.acked_upto.max(upto);
            if src.semi.source_enabled && !src.semi.active && src.acked_upto >= src.binlog.entries.len() {
                // A semi-sync replica caught up: the source switches back to semi-sync.
                src.semi.active = true;
            }
            progress = true;
        }
        if !repl.heartbeat_period.is_zero() {
            while c.next_heartbeat <= now {
                repl.received_heartbeats += 1;
                c.last_rx = c.last_rx.max(c.next_heartbeat);
                c.next_heartbeat += repl.heartbeat_period;
                progress = true;
            }
        }
        repl.io = io;
        progress
    }

    /// The SQL thread of replica `r` up to `now`.
    fn step_sql(&mut self, r: &mut Server, now: Instant) -> bool {
        let cost = r.cfg.timing.apply_cost;
        let wall = self.wall_ms(now);
        let mut progress = false;
        while let Some(repl) = r.repl.as_mut() {
            if !repl.sql_running {
                break;
            }
            let Some(head) = repl.relay.front().cloned() else { break };
            let at = head.ready_at.max(repl.sql_free_at) + cost;
            if at > now {
                break;
            }
            let Some(txn) = usize::try_from(head.txn).ok().and_then(|i| self.txns.get(i)) else { break };
            let result = r.apply_replicated(txn, at);
            let Some(repl) = r.repl.as_mut() else { break };
            progress = true;
            match result {
                Ok(()) => {
                    repl.relay.pop_front();
                    repl.relay_space = repl.relay_space.saturating_sub(head.size);
                    repl.sql_free_at = at;
                    repl.exec_coord = Some(head.coord);
                    repl.executed_entries += 1;
                }
                Err(e) => {
                    tracing::debug!(replica = %r.cfg.addr, error = %e, "SQL thread stopped");
                    repl.sql_running = false;
                    repl.last_sql_error =
                        Some(ThreadError { errno: u32::from(e.code.unwrap_or(0)), message: e.message, at_ms: wall });
                    break;
                }
            }
        }
        progress
    }
}

/// Puts binlog entry `index` on the wire: it arrives after `base` + delay (+ jitter), never
/// before an entry sent earlier.
fn ship(
    c: &mut DumpConn,
    index: usize,
    txn: TxnId,
    coord: (u32, u64),
    base: Instant,
    t: &ReplicaTiming,
    rng: &mut StdRng,
) {
    let arrive = (base + t.io_delay + jitter(rng, t.io_jitter)).max(c.last_arrival);
    c.last_arrival = arrive;
    c.in_flight.push_back(InFlight { txn, index, coord, arrive_at: arrive });
}

/// MariaDB: which entries of `src`'s binary log a replica starting at `start` gets.
fn maria_plan(start: &BTreeMap<u32, MariaGtid>, src: &Server) -> Result<Vec<usize>, String> {
    enum From {
        After(usize),
        AboveSeq(u64),
    }
    let mut from: BTreeMap<u32, From> = BTreeMap::new();
    for (d, g) in start {
        if g.seq_no == 0 {
            continue;
        }
        if let Some(i) = src.binlog.entries.iter().position(|e| e.gtid == Some(Gtid::MariaDb(*g))) {
            from.insert(*d, From::After(i));
        } else if src.slave_pos.get(d) == Some(g) {
            // The source applied it as a replica (not in its binlog, or before it): allowed.
            from.insert(*d, From::AboveSeq(g.seq_no));
        } else {
            let higher = src.binlog_state.gtids().any(|x| x.domain_id == *d && x.seq_no > g.seq_no);
            return Err(if higher {
                format!(
                    "Error: connecting slave requested to start from GTID {g}, which is not in the master's binlog. \
                     Since the master's binlog contains GTIDs with higher sequence numbers, it probably means that the \
                     slave has diverged due to executing extra erroneous transactions"
                )
            } else {
                format!("Error: connecting slave requested to start from GTID {g}, which is not in the master's binlog")
            });
        }
    }
    Ok(src
        .binlog
        .entries
        .iter()
        .enumerate()
        .filter(|(i, e)| match e.gtid {
            Some(Gtid::MariaDb(g)) => match from.get(&g.domain_id) {
                None => true,
                Some(From::After(k)) => i > k,
                Some(From::AboveSeq(s)) => g.seq_no > *s,
            },
            _ => false,
        })
        .map(|(i, _)| i)
        .collect())
}

/// MySQL auto-positioning: which entries of `src`'s binary log a replica holding `request`
/// gets.
fn mysql_plan(request: &MySqlGtidSet, src: &Server) -> Result<Vec<usize>, String> {
    let missing = src.my_purged().subtract(request);
    if !missing.is_empty() {
        return Err(format!(
            "Cannot replicate because the source purged required binary logs. Replicate the missing transactions from \
             elsewhere, or provision a new replica from backup. Consider increasing the source's binary log expiration \
             period. The GTID set sent by the replica is '{request}', and the missing transactions are '{missing}'"
        ));
    }
    if let Some(uuid) = src.uuid {
        let source = GtidSource { uuid, tag: None };
        let known = src.my_known();
        let theirs = request.get(&source);
        let mine = known.get(&source);
        if theirs.is_some_and(|t| !mine.is_some_and(|m| m.contains(t))) {
            return Err("Slave has more GTIDs than the master has, using the master's SERVER_UUID. This may indicate \
                        that the end of the binary log was truncated or that the last binary log file was lost, e.g., \
                        after a power or disk failure when sync_binlog != 1. The master may or may not have rolled back \
                        transactions that were already replicated to the slave. Suggest to replicate any transactions \
                        that master has rolled back from slave to master, and/or commit empty transactions on master to \
                        account for transactions that have been committed on master but are not included in GTID_EXECUTED."
                .into());
        }
    }
    Ok(src
        .binlog
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| match e.gtid {
            Some(Gtid::MySql { uuid, seq }) => {
                !request.get(&GtidSource { uuid, tag: None }).is_some_and(|s| s.contains_value(seq))
            }
            _ => false,
        })
        .map(|(i, _)| i)
        .collect())
}

impl Server {
    /// The SQL thread applies `txn` at `at`: skipped when already there (MySQL GTID
    /// auto-skip; MariaDB own server id), refused out of order (MariaDB strict mode) or when
    /// the data says so, else committed, recorded in `gtid_slave_pos` (MariaDB) and binlogged
    /// with `log_slave_updates`.
    pub(crate) fn apply_replicated(&mut self, txn: &Txn, at: Instant) -> Result<(), SqlError> {
        let binlogged = self.cfg.log_bin && self.cfg.log_slave_updates;
        match txn.gtid {
            Some(Gtid::MySql { uuid, seq })
                if self.my_known().get(&GtidSource { uuid, tag: None }).is_some_and(|s| s.contains_value(seq)) =>
            {
                return Ok(());
            }
            Some(Gtid::MariaDb(g)) => {
                if g.server_id == self.cfg.server_id {
                    return Ok(());
                }
                if binlogged && self.strict_mode {
                    let highest =
                        self.binlog_state.gtids().filter(|x| x.domain_id == g.domain_id).map(|x| x.seq_no).max();
                    if highest.is_some_and(|h| h >= g.seq_no) {
                        let existing = self.binlog_pos.get(&g.domain_id).map(ToString::to_string).unwrap_or_default();
                        return Err(SqlError::new(
                            1950,
                            format!(
                                "An attempt was made to binlog GTID {g} which would create an out-of-order sequence number \
                                 with existing GTID {existing}, and gtid strict mode is enabled"
                            ),
                        ));
                    }
                }
            }
            Some(Gtid::MySql { .. }) | None => {}
        }
        self.data.check(&txn.payload)?;
        self.engine_commit(txn);
        if let Some(Gtid::MariaDb(g)) = txn.gtid {
            self.slave_pos.insert(g.domain_id, g);
        }
        if binlogged {
            self.log_binlog(txn, at);
        }
        Ok(())
    }
}

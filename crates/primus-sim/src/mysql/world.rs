//! The world's state and its mechanics: requests from connections, commits (with semi-sync
//! waits), statements that wait (sleep, GTID waits, `read_only` behind commits), process
//! faults, and moving everything up to the current simulated instant.
//!
//! Everything here is synchronous and runs under the world's lock; the async parts (clients
//! waiting for answers, the driver sleeping until the next event) live in `mod.rs` and
//! `conn.rs` and never hold the lock across an `.await`.

use super::replication::{Io, Replica};
use super::server::{Gtid, Identity, Payload, ProcState, Server, ServerConfig, SessionKey, Txn, TxnId, WaitPoint};
use super::servermap::ServerMap;
use super::{AppAck, Link, LinkFn, Peer, SemiSyncOutcome, SimError, SqlError, WorldConfig};
use primus_mysql::flavor;
use primus_mysql::gtid::{MariaGtid, MySqlGtidSet, Uuid};
use primus_mysql::heartbeat::HeartbeatTable;
use primus_mysql::{Observation, StatusRow};
use primus_types::InstanceAddr;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a connection asks of a server.
#[derive(Debug)]
pub(crate) enum Request {
    /// Open a session (TCP + handshake + authentication).
    Connect,
    /// One statement.
    Sql(String),
    /// The probe batch (`primus_mysql::Prober::probe`), answered as one observation.
    Probe(HeartbeatTable),
    /// An application `INSERT` of one row.
    AppWrite(u64),
}

/// A successful answer.
#[derive(Debug)]
pub(crate) enum Output {
    Session(SessionKey),
    Done,
    Rows(Vec<StatusRow>),
    /// Affected rows of an `INSERT ... ON DUPLICATE KEY UPDATE` (0: unchanged).
    Affected(u64),
    Observation(Box<Result<Observation, String>>),
    App(AppAck),
}

pub(crate) type Reply = Result<Output, SqlError>;

/// A request on its way to being run.
#[derive(Debug)]
pub(crate) struct Pending {
    pub session: Option<SessionKey>,
    pub ident: Identity,
    pub req: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// What a commit answers once it may.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CommitOut {
    Done,
    Affected(u64),
    App { txn: TxnId },
}

/// What a statement in progress waits for.
#[derive(Debug)]
pub(crate) enum WaitKind {
    Sleep {
        until: Instant,
    },
    /// `MASTER_GTID_WAIT`: `gtid_slave_pos` reaches every GTID's seq in its domain.
    MariaGtidWait {
        target: Vec<MariaGtid>,
        until: Option<Instant>,
    },
    /// `WAIT_FOR_EXECUTED_GTID_SET`.
    MySqlGtidWait {
        target: MySqlGtidSet,
        until: Option<Instant>,
    },
    /// A commit waiting for a semi-sync acknowledgement of binlog entries `..upto`.
    SemiSync {
        generation: u64,
        upto: usize,
        /// When the commit began to wait (PROCESSLIST's `TIME`).
        since: Instant,
        deadline: Instant,
        /// Committed in the engine when the wait ends (`AFTER_SYNC`).
        prepared: Vec<TxnId>,
        out: CommitOut,
    },
    /// `SET GLOBAL read_only = ON` (or `super_read_only`) waiting for commits in progress.
    ReadOnly {
        super_read_only: bool,
    },
}

#[derive(Debug)]
pub(crate) struct Waiter {
    pub session: Option<SessionKey>,
    pub kind: WaitKind,
    pub reply: oneshot::Sender<Reply>,
}

impl Waiter {
    pub fn is_semi_sync(&self) -> bool {
        matches!(self.kind, WaitKind::SemiSync { .. })
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self.kind, WaitKind::ReadOnly { .. })
    }
}

/// How a round trip went wrong, before the caller maps it to its own error type.
#[derive(Debug)]
pub(crate) enum Rt {
    /// No connection could be made (refused, unknown host).
    Refused(String),
    /// The session was already closed by the server when the request was sent.
    Stale,
    /// The connection broke while waiting for the answer.
    Lost(String),
    Timeout,
    Sql(SqlError),
}

/// The state of the simulated servers.
pub(crate) struct World {
    pub cfg: WorldConfig,
    pub rng: StdRng,
    /// Simulated instant the world was created (wall clock `cfg.wall_clock_start_ms`).
    pub epoch: Instant,
    pub links: LinkFn,
    /// Boxed: a replica's step takes its server out of its slot and puts it back, many
    /// times per simulated ms (moving the box, not the server).
    pub servers: ServerMap,
    /// The servers' addresses in map order (servers are only ever added): `advance` walks
    /// them without copying every address each time.
    order: std::sync::Arc<Vec<InstanceAddr>>,
    /// Every transaction ever committed anywhere, by id.
    pub txns: Vec<Txn>,
    /// Statements the simulator did not understand, per server.
    pub unmodelled: Vec<(InstanceAddr, String)>,
    /// Application clients' open sessions.
    pub app_sessions: BTreeMap<(u64, InstanceAddr), SessionKey>,
    /// The instant of the last [`World::advance`] after which nothing changed: advancing
    /// again at that instant would find nothing to do. Cleared by every change.
    pub(crate) settled_at: Option<Instant>,
}

impl World {
    pub fn new(cfg: WorldConfig, rng: StdRng, links: LinkFn, now: Instant) -> World {
        World {
            cfg,
            rng,
            epoch: now,
            links,
            servers: ServerMap::default(),
            order: std::sync::Arc::new(Vec::new()),
            txns: Vec::new(),
            unmodelled: Vec::new(),
            app_sessions: BTreeMap::new(),
            settled_at: None,
        }
    }

    /// The simulated wall clock, unix ms.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.cfg.wall_clock_start_ms + u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(0)
    }

    pub fn link(&self, from: &Peer, to: &InstanceAddr) -> Link {
        (self.links)(from, to)
    }

    pub fn server(&self, addr: &InstanceAddr) -> Result<&Server, SimError> {
        self.servers.get(addr).ok_or_else(|| SimError::UnknownServer(addr.clone()))
    }

    pub fn server_mut(&mut self, addr: &InstanceAddr) -> Result<&mut Server, SimError> {
        self.servers.get_mut(addr).ok_or_else(|| SimError::UnknownServer(addr.clone()))
    }

    pub fn txn(&self, id: TxnId) -> Option<&Txn> {
        usize::try_from(id).ok().and_then(|i| self.txns.get(i))
    }

    pub fn add_server(&mut self, cfg: ServerConfig, now: Instant) -> Result<(), SimError> {
        if self.servers.contains_key(&cfg.addr) {
            return Err(SimError::InvalidConfig(format!("{} already exists", cfg.addr)));
        }
        if self.servers.values().any(|s| s.cfg.server_id == cfg.server_id) {
            // Allowed by MySQL but never what a test means.
            tracing::warn!(addr = %cfg.addr, server_id = cfg.server_id, "two simulated servers share a server_id");
        }
        let info = flavor::detect(&cfg.version, &cfg.version_comment)
            .map_err(|e| SimError::InvalidConfig(format!("{}: {e}", cfg.addr)))?;
        let uuid = match (&cfg.server_uuid, info.is_mariadb()) {
            (_, true) => None,
            (Some(u), false) => Some(
                Uuid::parse(u)
                    .ok_or_else(|| SimError::InvalidConfig(format!("{}: bad server_uuid {u:?}", cfg.addr)))?,
            ),
            (None, false) => {
                let mut b: [u8; 16] = self.rng.gen();
                // Version 1 UUIDs, like MySQL's.
                b[6] = (b[6] & 0x0f) | 0x10;
                b[8] = (b[8] & 0x3f) | 0x80;
                Some(Uuid::from_bytes(b))
            }
        };
        let addr = cfg.addr.clone();
        self.servers.insert(addr, Box::new(Server::new(cfg, info, uuid, now)));
        self.order = std::sync::Arc::new(self.servers.keys().cloned().collect());
        Ok(())
    }

    /// Moves the whole world up to `now`: replication threads, then statements in progress,
    /// until nothing more happens at this instant.
    /// [`World::advance`], unless nothing changed since the last advance at this instant
    /// (the entry points call this: reads are frequent, and every change made through
    /// them clears `settled_at`). True when the world moved.
    pub fn advance_if_needed(&mut self, now: Instant) -> bool {
        self.settled_at != Some(now) && self.advance(now)
    }

    pub fn advance(&mut self, now: Instant) -> bool {
        let addrs = self.order.clone();
        let mut any = false;
        for _ in 0..64 {
            let mut progress = false;
            for a in addrs.iter() {
                progress |= self.step_replica(a, now);
            }
            for a in addrs.iter() {
                progress |= self.step_waiters(a, now);
            }
            for a in addrs.iter() {
                progress |= self.step_delayed(a, now);
            }
            if !progress {
                self.settled_at = Some(now);
                return any;
            }
            any = true;
        }
        tracing::warn!("simulated servers still changing after 64 rounds at one instant");
        any
    }

    /// Run the held requests of a running server that are due.
    fn step_delayed(&mut self, addr: &InstanceAddr, now: Instant) -> bool {
        let mut ran = false;
        loop {
            let Some(s) = self.servers.get_mut(addr) else { return ran };
            if !s.running() || s.delayed.front().is_none_or(|(t, _)| *t > now) {
                return ran;
            }
            let Some((_, p)) = s.delayed.pop_front() else { return ran };
            let session = p.session;
            self.process(addr, p, now);
            ran = true;
            // A session closed meanwhile goes once nothing it sent is held any more.
            if let (Some(k), Some(s)) = (session, self.servers.get_mut(addr)) {
                if s.closed_with_held.contains(&k.id) && !s.delayed.iter().any(|(_, p)| p.session == Some(k)) {
                    s.closed_with_held.retain(|id| *id != k.id);
                    s.sessions.remove(&k.id);
                }
            }
        }
    }

    /// When something next happens by itself (the driver sleeps until then, or until the
    /// poll interval ends: links can change without notice).
    pub fn next_event(&self, now: Instant) -> Instant {
        let mut next = now + self.cfg.poll_interval;
        for s in self.servers.values().filter(|s| s.running()) {
            if let Some((t, _)) = s.delayed.front() {
                next = next.min(*t);
            }
            if let Some(r) = &s.repl {
                if let Some(t) = r.next_event(s.cfg.timing.apply_cost, s.cfg.slave_net_timeout) {
                    next = next.min(t);
                }
            }
            for w in &s.waiters {
                let t = match &w.kind {
                    WaitKind::Sleep { until } => Some(*until),
                    WaitKind::MariaGtidWait { until, .. } | WaitKind::MySqlGtidWait { until, .. } => *until,
                    WaitKind::SemiSync { deadline, .. } => Some(*deadline),
                    WaitKind::ReadOnly { .. } => None,
                };
                if let Some(t) = t {
                    next = next.min(t);
                }
            }
        }
        next
    }

    /// Hands `req` to server `addr`: run now, queued while the server is paused, refused when
    /// it is down. The answer comes on the returned channel (dropped: connection lost).
    pub fn submit(
        &mut self,
        addr: &InstanceAddr,
        session: Option<SessionKey>,
        ident: Identity,
        req: Request,
        now: Instant,
    ) -> Result<oneshot::Receiver<Reply>, Rt> {
        let Some(s) = self.servers.get_mut(addr) else {
            return Err(Rt::Refused(format!("Unknown server host '{}' (-2)", addr.host())));
        };
        match (session, s.proc) {
            (None, ProcState::Crashed) => {
                return Err(Rt::Refused(format!("Can't connect to server on '{addr}' (111 \"Connection refused\")")))
            }
            (Some(k), _) if !s.session_alive(k) => return Err(Rt::Stale),
            _ => {}
        }
        let (tx, rx) = oneshot::channel();
        let p = Pending { session, ident, req, reply: tx };
        let delay = s.cfg.timing.statement_delay;
        if s.proc == ProcState::Paused {
            s.inbox.push_back(p);
        } else if !delay.is_zero() || !s.delayed.is_empty() {
            // Behind the statements held before it, in order.
            let due = s.delayed.back().map_or(now + delay, |(t, _)| (*t).max(now + delay));
            s.delayed.push_back((due, p));
            self.advance(now);
        } else {
            self.process(addr, p, now);
            self.advance(now);
        }
        Ok(rx)
    }

    /// Runs one request on a running server.
    pub fn process(&mut self, addr: &InstanceAddr, p: Pending, now: Instant) {
        let Pending { session, ident, req, reply } = p;
        let Some(s) = self.servers.get_mut(addr) else { return };
        if session.is_some_and(|k| !s.session_alive(k)) {
            // Killed while the request was queued. (A session its client closed while the
            // server was paused is still there: what it sent runs.)
            return;
        }
        match req {
            Request::Connect => {
                if reply.is_closed() {
                    // The client gave up during the handshake.
                    return;
                }
                let id = s.alloc_thread_id();
                s.sessions.insert(id, super::server::Session { ident });
                let key = SessionKey { incarnation: s.incarnation, id };
                let _ = reply.send(Ok(Output::Session(key)));
            }
            Request::Probe(table) => {
                let obs = self.observation(addr, &table, now);
                let _ = reply.send(Ok(Output::Observation(Box::new(obs))));
            }
            Request::AppWrite(row) => self.app_write_here(addr, Pending { session, ident, req, reply }, row, now),
            Request::Sql(sql) => self.exec_sql(addr, session, ident, sql, reply, now),
        }
    }

    fn app_write_here(&mut self, addr: &InstanceAddr, p: Pending, row: u64, now: Instant) {
        let Some(s) = self.servers.get_mut(addr) else { return };
        if s.read_only_pending() {
            s.deferred.push_back(p);
            return;
        }
        if let Some(e) = s.write_refused(p.ident.privileged, self.cfg.coordinator_read_only_admin) {
            let _ = p.reply.send(Err(e));
            return;
        }
        let payload = Payload::AppRow { row };
        if let Err(e) = s.data.check(&payload) {
            let _ = p.reply.send(Err(e));
            return;
        }
        let txn = self.txns.len() as TxnId;
        self.commit(addr, p.session, vec![payload], CommitOut::App { txn }, p.reply, now);
    }

    /// Commits `payloads` on `addr` as one client's statement: binlogged at once (and so sent
    /// to replicas), then — on a semi-sync source — the answer (and with `AFTER_SYNC` the
    /// engine commit) waits for an acknowledgement or the timeout.
    pub fn commit(
        &mut self,
        addr: &InstanceAddr,
        session: Option<SessionKey>,
        payloads: Vec<Payload>,
        out: CommitOut,
        reply: oneshot::Sender<Reply>,
        now: Instant,
    ) {
        let wall = self.wall_ms(now);
        let World { servers, txns, .. } = self;
        let Some(s) = servers.get_mut(addr) else { return };
        let mut ids = Vec::new();
        for payload in payloads {
            let id = txns.len() as TxnId;
            let txn = Txn {
                id,
                gtid: s.next_local_gtid(),
                origin: addr.clone(),
                committed_at_ms: wall,
                payload,
                origin_at: now,
            };
            s.log_binlog(&txn, now);
            txns.push(txn);
            ids.push(id);
        }
        let wait = s.cfg.log_bin && s.semi.source_enabled && s.semi.active;
        if wait {
            let after_sync = s.semi.wait_point == WaitPoint::AfterSync;
            if after_sync {
                s.prepared.extend(ids.iter().copied());
            } else {
                for id in &ids {
                    if let Some(t) = usize::try_from(*id).ok().and_then(|i| txns.get(i)) {
                        s.engine_commit(t);
                    }
                }
            }
            let deadline = now + Duration::from_millis(s.semi.timeout_ms);
            s.waiters.push(Waiter {
                session,
                reply,
                kind: WaitKind::SemiSync {
                    generation: s.binlog.generation,
                    upto: s.binlog.entries.len(),
                    since: now,
                    deadline,
                    prepared: if after_sync { ids } else { Vec::new() },
                    out,
                },
            });
        } else {
            for id in &ids {
                if let Some(t) = usize::try_from(*id).ok().and_then(|i| txns.get(i)) {
                    s.engine_commit(t);
                }
            }
            let answer = finish(txns, addr, out, SemiSyncOutcome::NotWaited);
            let _ = reply.send(Ok(answer));
        }
    }

    /// Statements in progress on `addr` up to `now`.
    fn step_waiters(&mut self, addr: &InstanceAddr, now: Instant) -> bool {
        let (progress, deferred) = self.end_waits(addr, now);
        for p in deferred {
            self.process(addr, p, now);
        }
        progress
    }

    /// Ends the waits of `addr` that are over; returns the writes a `read_only` change had
    /// blocked, to run again now.
    fn end_waits(&mut self, addr: &InstanceAddr, now: Instant) -> (bool, Vec<Pending>) {
        let World { servers, txns, .. } = self;
        let Some(s) = servers.get_mut(addr) else { return (false, Vec::new()) };
        if !s.running() || s.waiters.is_empty() {
            return (false, Vec::new());
        }
        let generation = s.binlog.generation;
        let acked = s.acked_upto;
        let timed_out = s.semi.source_enabled
            && s.semi.active
            && s.waiters.iter().any(|w| {
                matches!(w.kind, WaitKind::SemiSync { generation: g, upto, deadline, .. }
                    if g == generation && upto > acked && deadline <= now)
            });
        if timed_out {
            tracing::debug!(server = %addr, "semi-sync wait timed out: falling back to asynchronous replication");
            s.semi.active = false;
        }
        let mut progress = false;
        let mut i = 0;
        while i < s.waiters.len() {
            let done: Option<SemiSyncOutcome> = match &s.waiters[i].kind {
                WaitKind::Sleep { until } => (now >= *until).then_some(SemiSyncOutcome::NotWaited),
                WaitKind::MariaGtidWait { target, until } => {
                    let reached =
                        target.iter().all(|g| s.slave_pos.get(&g.domain_id).is_some_and(|p| p.seq_no >= g.seq_no));
                    (reached || until.is_some_and(|u| now >= u)).then_some(SemiSyncOutcome::NotWaited)
                }
                WaitKind::MySqlGtidWait { target, until } => (s.my_executed.contains(target)
                    || until.is_some_and(|u| now >= u))
                .then_some(SemiSyncOutcome::NotWaited),
                WaitKind::SemiSync { generation: g, upto, .. } => {
                    if *g == generation && acked >= *upto {
                        Some(SemiSyncOutcome::Acknowledged)
                    } else if *g != generation || !s.semi.source_enabled || !s.semi.active {
                        Some(SemiSyncOutcome::NotAcknowledged)
                    } else {
                        None
                    }
                }
                WaitKind::ReadOnly { .. } => None,
            };
            let Some(outcome) = done else {
                i += 1;
                continue;
            };
            progress = true;
            let w = s.waiters.remove(i);
            let answer = match w.kind {
                WaitKind::SemiSync { prepared, out, .. } => {
                    commit_prepared(s, txns, &prepared);
                    finish(txns, addr, out, outcome)
                }
                _ => Output::Done,
            };
            let _ = w.reply.send(Ok(answer));
        }
        if !s.has_semi_waiters() && s.read_only_pending() {
            let (ro, rest): (Vec<Waiter>, Vec<Waiter>) =
                std::mem::take(&mut s.waiters).into_iter().partition(Waiter::is_read_only);
            s.waiters = rest;
            for w in ro {
                if let WaitKind::ReadOnly { super_read_only } = w.kind {
                    set_read_only(s, super_read_only, true);
                }
                let _ = w.reply.send(Ok(Output::Done));
            }
            return (true, s.deferred.drain(..).collect());
        }
        (progress, Vec::new())
    }

    /// Ends a client session from the server side (`KILL`): its statements in progress end
    /// (a commit waiting for semi-sync is committed, as the server does), its client sees the
    /// connection lost.
    pub fn kill_session(&mut self, addr: &InstanceAddr, key: SessionKey) {
        let World { servers, txns, .. } = self;
        let Some(s) = servers.get_mut(addr) else { return };
        if s.sessions.remove(&key.id).is_none() {
            return;
        }
        let (mine, rest): (Vec<Waiter>, Vec<Waiter>) =
            std::mem::take(&mut s.waiters).into_iter().partition(|w| w.session == Some(key));
        s.waiters = rest;
        for w in mine {
            if let WaitKind::SemiSync { prepared, .. } = w.kind {
                commit_prepared(s, txns, &prepared);
            }
        }
        s.deferred.retain(|p| p.session != Some(key));
    }

    /// The client closed its side: the session goes away (its statements in progress go on).
    pub fn close_session(&mut self, addr: &InstanceAddr, key: SessionKey) {
        if let Some(s) = self.servers.get_mut(addr) {
            let held = s.delayed.iter().any(|(_, p)| p.session == Some(key));
            if key.incarnation == s.incarnation && s.proc != ProcState::Paused && held {
                // What it sent runs first (see `step_delayed`).
                s.closed_with_held.push(key.id);
            } else if key.incarnation == s.incarnation && s.proc != ProcState::Paused {
                s.sessions.remove(&key.id);
            } else if key.incarnation == s.incarnation {
                // A paused server notices the close when it resumes.
                s.closed_while_paused.push(key.id);
            }
        }
    }

    /// SIGKILL: connections refused until [`World::start`]; sessions, statements in progress
    /// and queued requests are gone (their clients see the connection lost); replicas lose
    /// their dump connection at once.
    pub fn crash(&mut self, addr: &InstanceAddr, now: Instant) -> Result<(), SimError> {
        self.advance(now);
        let s = self.server_mut(addr)?;
        if s.proc == ProcState::Crashed {
            return Err(SimError::BadState { addr: addr.clone(), state: s.proc, wanted: "running or paused" });
        }
        s.proc = ProcState::Crashed;
        s.sessions.clear();
        s.closed_while_paused.clear();
        s.waiters.clear();
        s.inbox.clear();
        s.delayed.clear();
        s.closed_with_held.clear();
        s.deferred.clear();
        if let Some(r) = s.repl.as_mut() {
            r.io = Io::Stopped;
            r.sql_running = false;
            // relay_log_recovery: what was received but not applied is fetched again.
            r.purge_relay();
            r.received_heartbeats = 0;
        }
        s.exits.send_modify(|n| *n += 1);
        tracing::debug!(server = %addr, "crashed");
        self.advance(now);
        Ok(())
    }

    /// Starts a crashed server: crash recovery commits what its binary log holds, variables
    /// come from the configuration (`read_only_at_start`...), a new binlog file begins, and
    /// replication restarts unless `skip_slave_start`.
    pub fn start(&mut self, addr: &InstanceAddr, now: Instant) -> Result<(), SimError> {
        self.advance(now);
        let World { servers, txns, .. } = self;
        let s = servers.get_mut(addr).ok_or_else(|| SimError::UnknownServer(addr.clone()))?;
        if s.proc != ProcState::Crashed {
            return Err(SimError::BadState { addr: addr.clone(), state: s.proc, wanted: "crashed" });
        }
        let prepared = std::mem::take(&mut s.prepared);
        commit_prepared(s, txns, &prepared);
        s.proc = ProcState::Running;
        s.incarnation += 1;
        s.started_at = now;
        s.next_thread_id = 1;
        s.acked_upto = s.binlog.entries.len();
        s.load_config_variables();
        if s.cfg.log_bin {
            s.binlog.file_no += 1;
            s.binlog.pos = super::server::BINLOG_START_POS;
        }
        let skip = s.cfg.skip_slave_start;
        if let Some(r) = s.repl.as_mut() {
            r.last_io_error = None;
            r.last_sql_error = None;
            if !skip {
                r.start_io(now);
                r.start_sql(now);
            }
        }
        tracing::debug!(server = %addr, "started");
        self.advance(now);
        Ok(())
    }

    /// SIGSTOP: nothing runs, requests queue up, clients time out.
    pub fn pause(&mut self, addr: &InstanceAddr, now: Instant) -> Result<(), SimError> {
        self.advance(now);
        let s = self.server_mut(addr)?;
        if s.proc != ProcState::Running {
            return Err(SimError::BadState { addr: addr.clone(), state: s.proc, wanted: "running" });
        }
        s.proc = ProcState::Paused;
        tracing::debug!(server = %addr, "paused");
        self.advance(now);
        Ok(())
    }

    /// SIGCONT: queued requests run in order (also those whose client gave up), then time
    /// catches up (sleeps and timeouts that expired meanwhile end now).
    pub fn resume(&mut self, addr: &InstanceAddr, now: Instant) -> Result<(), SimError> {
        self.advance(now);
        let s = self.server_mut(addr)?;
        if s.proc != ProcState::Paused {
            return Err(SimError::BadState { addr: addr.clone(), state: s.proc, wanted: "paused" });
        }
        s.proc = ProcState::Running;
        if let Some(r) = s.repl.as_mut() {
            // Its own threads were frozen: nothing was received or applied during the pause.
            r.sql_free_at = r.sql_free_at.max(now);
            if let Io::Connected(c) = &mut r.io {
                c.last_rx = now;
                c.flow_since = c.flow_since.max(now);
            }
        }
        let inbox: Vec<Pending> = s.inbox.drain(..).collect();
        let closed = std::mem::take(&mut s.closed_while_paused);
        for p in inbox {
            self.process(addr, p, now);
        }
        if let Some(s) = self.servers.get_mut(addr) {
            for id in closed {
                s.sessions.remove(&id);
            }
        }
        tracing::debug!(server = %addr, "resumed");
        self.advance(now);
        Ok(())
    }

    /// `addr`'s replication configured and started as `CHANGE MASTER TO ...` + `START SLAVE`
    /// would (no network involved).
    pub fn replicate(
        &mut self,
        replica: &InstanceAddr,
        source: &InstanceAddr,
        setup: &super::ReplicationSetup,
        now: Instant,
    ) -> Result<(), SimError> {
        self.server(source)?;
        let s = self.server_mut(replica)?;
        if let Some(r) = &s.repl {
            if !r.io_stopped() || r.sql_running {
                return Err(SimError::InvalidConfig(format!("{replica}: replication is running")));
            }
        }
        let mut r = Replica::new(source.clone(), setup.heartbeat_period, now);
        r.user = setup.user.clone();
        r.password = setup.password.clone();
        r.use_gtid = setup.use_gtid;
        r.auto_position = true;
        r.connect_retry = setup.connect_retry;
        r.start_io(now);
        r.start_sql(now);
        s.repl = Some(r);
        self.advance(now);
        Ok(())
    }

    /// Copies `from`'s committed data to `to` as a restored backup would: same transactions,
    /// none of them in `to`'s binary log (MySQL: they are `gtid_purged`), MariaDB
    /// `gtid_slave_pos` set to `from`'s `gtid_current_pos`.
    pub fn clone_data(&mut self, from: &InstanceAddr, to: &InstanceAddr) -> Result<(), SimError> {
        let src = self.server(from)?;
        let data = src.data.clone();
        let executed = src.my_executed.clone();
        let current = src.current_pos();
        let flavor = src.info.flavor;
        let dst = self.server_mut(to)?;
        if dst.info.flavor != flavor {
            return Err(SimError::InvalidConfig(format!("{from} and {to} are not the same flavor")));
        }
        dst.data = data;
        dst.my_executed = executed;
        dst.slave_pos = current;
        Ok(())
    }

    /// Transactions committed on `addr`, in id order.
    pub fn committed(&self, addr: &InstanceAddr) -> Result<Vec<TxnId>, SimError> {
        Ok(self.server(addr)?.data.committed.iter().copied().collect())
    }
}

/// Commits binlogged-but-prepared transactions (end of an `AFTER_SYNC` wait, crash recovery).
fn commit_prepared(s: &mut Server, txns: &[Txn], ids: &[TxnId]) {
    for id in ids {
        s.prepared.retain(|p| p != id);
        if let Some(t) = usize::try_from(*id).ok().and_then(|i| txns.get(i)) {
            s.engine_commit(t);
        }
    }
}

/// `SET GLOBAL read_only`/`super_read_only`, with MySQL's coupling of the two.
pub(crate) fn set_read_only(s: &mut Server, super_read_only: bool, on: bool) {
    if super_read_only {
        s.super_read_only = on;
        if on {
            s.read_only = true;
        }
    } else {
        s.read_only = on;
        if !on {
            s.super_read_only = false;
        }
    }
}

/// The answer of a finished commit.
fn finish(txns: &[Txn], addr: &InstanceAddr, out: CommitOut, semi_sync: SemiSyncOutcome) -> Output {
    match out {
        CommitOut::Done => Output::Done,
        CommitOut::Affected(n) => Output::Affected(n),
        CommitOut::App { txn } => {
            let gtid: Option<Gtid> = usize::try_from(txn).ok().and_then(|i| txns.get(i)).and_then(|t| t.gtid);
            Output::App(AppAck { txn, gtid, server: addr.clone(), semi_sync })
        }
    }
}

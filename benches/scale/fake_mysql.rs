//! A farm of fake MySQL/MariaDB servers for the scale bench: thousands of MySQL wire-protocol
//! endpoints in one process (opensrv-mysql), each on its own 127.0.0.1 port, answering exactly
//! the statements primusd sends (the probe batch, heartbeat reads and writes, the failover
//! steps) with a plausible, changing replication state.
//!
//! This is a bench harness, not evidence that a feature works against real servers: the
//! replication model is deliberately simple.
//!
//! * One 100 ms tick for the whole farm. A primary commits one transaction a second (besides
//!   the heartbeat upserts primusd makes, which are transactions too); a replica whose source is
//!   alive copies the source's GTIDs, binlog position and heartbeat rows into its "relay log"
//!   (received) on one tick and applies them on the next (≤ 100–200 ms lag), and counts a
//!   replication heartbeat every 0.5 s (`MASTER_HEARTBEAT_PERIOD`).
//! * A killed instance closes its listener (connection refused) and every open connection;
//!   its replicas' IO threads go to `Connecting` with error 2003, as a real replica's would.
//! * GTIDs: MariaDB domain 0 (`0-SERVER_ID-SEQ`, one sequence for the domain, per-server
//!   entries in `gtid_binlog_state`); MySQL one UUID per server (`UUID:1-N`).
//! * A statement it does not know is logged (once per text) and answered with an error, and
//!   counted: the bench prints the count, so a new statement in primusd shows up.

use opensrv_mysql::{
    AsyncMysqlIntermediary, AsyncMysqlShim, Column, ErrorKind, OkResponse, ParamParser, QueryResultWriter,
    StatementMetaWriter,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    MySql,
}

impl Flavor {
    fn version(self) -> &'static str {
        match self {
            Flavor::MariaDb => "10.11.6-MariaDB-log",
            Flavor::MySql => "8.0.36",
        }
    }
    fn version_comment(self) -> &'static str {
        match self {
            Flavor::MariaDb => "MariaDB Server",
            Flavor::MySql => "MySQL Community Server - GPL",
        }
    }
}

/// Executed transactions: per writing server id, MariaDB's last sequence number (one sequence
/// per domain) or MySQL's transaction count for that server's UUID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Gtids {
    by_server: BTreeMap<u32, u64>,
    last_writer: u32,
}

fn uuid_of(server_id: u32) -> String {
    format!("3e11fa47-71ca-11e1-9e33-{:012x}", 0xc8_0000_0000u64 + u64::from(server_id))
}

impl Gtids {
    fn commit(&mut self, flavor: Flavor, server_id: u32) {
        let next = match flavor {
            Flavor::MariaDb => self.by_server.values().copied().max().unwrap_or(0) + 1,
            Flavor::MySql => self.by_server.get(&server_id).copied().unwrap_or(0) + 1,
        };
        self.by_server.insert(server_id, next);
        self.last_writer = server_id;
    }

    /// MariaDB position (`gtid_current_pos`, `Gtid_IO_Pos`) / MySQL GTID set.
    fn render(&self, flavor: Flavor) -> String {
        match flavor {
            Flavor::MariaDb => match self.by_server.get(&self.last_writer) {
                Some(seq) => format!("0-{}-{seq}", self.last_writer),
                None => String::new(),
            },
            Flavor::MySql => {
                self.by_server.iter().map(|(sid, n)| format!("{}:1-{n}", uuid_of(*sid))).collect::<Vec<_>>().join(",\n")
            }
        }
    }

    /// MariaDB `gtid_binlog_state`: the last GTID of every server in domain 0.
    fn binlog_state(&self) -> String {
        self.by_server.iter().map(|(sid, seq)| format!("0-{sid}-{seq}")).collect::<Vec<_>>().join(",")
    }

    fn count(&self) -> u64 {
        self.by_server.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HbRow {
    epoch: u64,
    ts_ms: u64,
    coordinator: u64,
}

#[derive(Debug, Clone)]
struct IoError {
    errno: u32,
    message: String,
}

/// One fake server.
struct Inst {
    port: u16,
    cluster: usize,
    server_id: u32,
    flavor: Flavor,
    alive: bool,
    read_only: bool,
    super_read_only: bool,
    /// Replication configured (`CHANGE MASTER`): the source's port.
    source: Option<u16>,
    io_running: bool,
    sql_running: bool,
    /// IO thread connected to a live source (last tick).
    io_connected: bool,
    io_error: Option<IoError>,
    executed: Gtids,
    /// Relay log: what the IO thread received.
    received: Gtids,
    /// MariaDB `gtid_slave_pos`: the last GTID applied by replication.
    slave_pos: Gtids,
    binlog_pos: u64,
    read_pos: u64,
    exec_pos: u64,
    received_heartbeats: u64,
    hb: BTreeMap<String, HbRow>,
    relay_hb: BTreeMap<String, HbRow>,
    started: Instant,
    kill: watch::Sender<bool>,
    /// When `read_only` last went from ON to OFF, and how often it did.
    writable_at: Option<Instant>,
    made_writable: u32,
}

/// Counters the bench prints.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub queries: AtomicU64,
    pub probes: AtomicU64,
    pub heartbeat_writes: AtomicU64,
    pub unknown: AtomicU64,
}

/// Intervals between consecutive probe batches on one connection (the coordinators keep one
/// connection per instance and probe it every `probe_interval_ms`), recorded per phase.
#[derive(Default)]
struct Intervals {
    phase: u32,
    /// (phase) -> interval samples in µs
    samples: BTreeMap<u32, Vec<u32>>,
    /// (phase, instance port) -> longest interval in µs
    worst: BTreeMap<(u32, u16), u32>,
}

struct World {
    insts: Vec<Inst>,
    clusters: Vec<Vec<usize>>,
    by_port: HashMap<u16, usize>,
    tick: u64,
}

pub struct Farm {
    world: Arc<Mutex<World>>,
    intervals: Arc<Mutex<Intervals>>,
    pub counters: Arc<Counters>,
    unknown_seen: Arc<Mutex<HashSet<String>>>,
    /// Per cluster: primary index first, then replicas.
    pub clusters: Vec<Vec<usize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Farm {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(w) = self.world.lock() {
            for i in &w.insts {
                let _ = i.kill.send(true);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Farm {
    /// `clusters` clusters of one primary and `replicas` replicas; even clusters MariaDB, odd
    /// ones MySQL 8.0. Every endpoint listens on its own 127.0.0.1 port chosen by the kernel.
    pub async fn start(clusters: usize, replicas: usize) -> anyhow::Result<Farm> {
        let mut listeners = Vec::new();
        let mut insts = Vec::new();
        let mut by_port = HashMap::new();
        let mut layout = Vec::new();
        let now = Instant::now();
        let mut server_id = 100u32;
        for c in 0..clusters {
            let flavor = if c % 2 == 0 { Flavor::MariaDb } else { Flavor::MySql };
            let mut members = Vec::new();
            let mut primary_port = 0;
            for r in 0..=replicas {
                let l = TcpListener::bind("127.0.0.1:0").await?;
                let port = l.local_addr()?.port();
                server_id += 1;
                let idx = insts.len();
                if r == 0 {
                    primary_port = port;
                }
                let mut executed = Gtids::default();
                // History: 1,000 transactions of the primary before the bench.
                for _ in 0..1000 {
                    executed.commit(flavor, server_id - r as u32);
                }
                let is_replica = r > 0;
                insts.push(Inst {
                    port,
                    cluster: c,
                    server_id,
                    flavor,
                    alive: true,
                    read_only: is_replica,
                    super_read_only: is_replica && flavor == Flavor::MySql,
                    source: is_replica.then_some(primary_port),
                    io_running: is_replica,
                    sql_running: is_replica,
                    io_connected: is_replica,
                    io_error: None,
                    received: executed.clone(),
                    slave_pos: if is_replica { executed.clone() } else { Gtids::default() },
                    executed,
                    binlog_pos: 4 + 1000 * 350,
                    read_pos: 4 + 1000 * 350,
                    exec_pos: 4 + 1000 * 350,
                    received_heartbeats: 0,
                    hb: BTreeMap::new(),
                    relay_hb: BTreeMap::new(),
                    started: now,
                    kill: watch::channel(false).0,
                    writable_at: None,
                    made_writable: 0,
                });
                by_port.insert(port, idx);
                listeners.push((idx, l));
                members.push(idx);
            }
            layout.push(members);
        }
        let world = Arc::new(Mutex::new(World { insts, clusters: layout.clone(), by_port, tick: 0 }));
        let mut farm = Farm {
            world,
            intervals: Arc::new(Mutex::new(Intervals::default())),
            counters: Arc::new(Counters::default()),
            unknown_seen: Arc::new(Mutex::new(HashSet::new())),
            clusters: layout,
            tasks: Vec::new(),
        };
        for (idx, l) in listeners {
            let kill = lock(&farm.world).insts[idx].kill.subscribe();
            let ctx = Ctx {
                world: farm.world.clone(),
                intervals: farm.intervals.clone(),
                counters: farm.counters.clone(),
                unknown_seen: farm.unknown_seen.clone(),
            };
            farm.tasks.push(tokio::spawn(serve(l, idx, ctx, kill)));
        }
        let world = farm.world.clone();
        let layout = farm.clusters.clone();
        farm.tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_millis(100));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                tick(&mut lock(&world), &layout);
            }
        }));
        Ok(farm)
    }

    pub fn addr(&self, idx: usize) -> String {
        format!("127.0.0.1:{}", lock(&self.world).insts[idx].port)
    }

    pub fn instances(&self) -> usize {
        lock(&self.world).insts.len()
    }

    /// The instance of `cluster` that is writable (the current primary), if exactly one is.
    pub fn writable_of(&self, cluster: usize) -> Vec<usize> {
        let w = lock(&self.world);
        self.clusters[cluster].iter().copied().filter(|i| w.insts[*i].alive && !w.insts[*i].read_only).collect()
    }

    /// Kill instance `idx`: its listener closes, so do its connections; returns the moment.
    pub fn kill(&self, idx: usize) -> Instant {
        let mut w = lock(&self.world);
        let w = &mut *w;
        let i = &mut w.insts[idx];
        i.alive = false;
        let _ = i.kill.send(true);
        let (port, cluster) = (i.port, i.cluster);
        // Its replicas' binlog dump connections are reset by the kernel at once: their IO
        // threads notice now, not at the next tick.
        for k in w.clusters[cluster].clone() {
            let r = &mut w.insts[k];
            if r.source == Some(port) && r.io_running {
                r.io_connected = false;
                r.io_error = Some(IoError { errno: 2013, message: "Lost connection to server during query".into() });
            }
        }
        Instant::now()
    }

    /// When `idx` was last made writable, and how many times it was.
    pub fn writable_at(&self, idx: usize) -> (Option<Instant>, u32) {
        let w = lock(&self.world);
        (w.insts[idx].writable_at, w.insts[idx].made_writable)
    }

    /// Start recording probe intervals under a new phase number.
    pub fn set_phase(&self, phase: u32) {
        lock(&self.intervals).phase = phase;
    }

    /// Interval samples (ms) of `phase`, and per instance the longest one (ms).
    pub fn intervals(&self, phase: u32) -> (Vec<f64>, Vec<f64>) {
        let iv = lock(&self.intervals);
        let s = iv.samples.get(&phase).map(|v| v.iter().map(|u| f64::from(*u) / 1000.0).collect()).unwrap_or_default();
        let worst = iv.worst.iter().filter(|((p, _), _)| *p == phase).map(|(_, u)| f64::from(*u) / 1000.0).collect();
        (s, worst)
    }

    pub fn unknown_statements(&self) -> Vec<String> {
        lock(&self.unknown_seen).iter().cloned().collect()
    }
}

/// One replication tick of the whole farm.
fn tick(w: &mut World, clusters: &[Vec<usize>]) {
    w.tick += 1;
    let tick_no = w.tick;
    // Primaries (writable, alive) commit one transaction a second, spread over the ticks.
    for (c, members) in clusters.iter().enumerate() {
        if !(tick_no + c as u64).is_multiple_of(10) {
            continue;
        }
        for &i in members {
            let inst = &mut w.insts[i];
            if inst.alive && !inst.read_only && inst.source.is_none() {
                inst.executed.commit(inst.flavor, inst.server_id);
                inst.binlog_pos += 350;
            }
        }
    }
    for i in 0..w.insts.len() {
        let Some(src_port) = w.insts[i].source else { continue };
        if !w.insts[i].alive {
            continue;
        }
        let src = w.by_port.get(&src_port).map(|s| {
            let s = &w.insts[*s];
            (s.alive, s.executed.clone(), s.binlog_pos, s.hb.clone())
        });
        let heartbeat_due = (tick_no + i as u64).is_multiple_of(5);
        let inst = &mut w.insts[i];
        // The SQL thread applies what the previous tick received.
        if inst.sql_running && inst.executed != inst.received {
            inst.executed = inst.received.clone();
            inst.slave_pos = inst.received.clone();
            inst.exec_pos = inst.read_pos;
            inst.binlog_pos += 350;
        }
        if inst.sql_running {
            inst.hb = inst.relay_hb.clone();
        }
        if !inst.io_running {
            inst.io_connected = false;
            continue;
        }
        match src {
            Some((true, executed, pos, hb)) => {
                inst.io_connected = true;
                inst.io_error = None;
                inst.received = executed;
                inst.read_pos = pos;
                inst.relay_hb = hb;
                if heartbeat_due {
                    inst.received_heartbeats += 1;
                }
            }
            _ => {
                inst.io_connected = false;
                inst.io_error = Some(IoError {
                    errno: 2003,
                    message: format!(
                        "error reconnecting to master 'repl@127.0.0.1:{src_port}' - retry-time: 1  maximum-retries: 86400  \
                         message: Can't connect to server on '127.0.0.1' (111 \"Connection refused\")"
                    ),
                });
            }
        }
    }
}

#[derive(Clone)]
struct Ctx {
    world: Arc<Mutex<World>>,
    intervals: Arc<Mutex<Intervals>>,
    counters: Arc<Counters>,
    unknown_seen: Arc<Mutex<HashSet<String>>>,
}

async fn serve(l: TcpListener, idx: usize, ctx: Ctx, kill: watch::Receiver<bool>) {
    static CONN_IDS: AtomicU32 = AtomicU32::new(1000);
    let mut stop = kill.clone();
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((stream, peer)) = r else { continue };
                let _ = stream.set_nodelay(true);
                ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
                let shim = Shim {
                    more: Arc::new(AtomicU32::new(0)),
                    idx,
                    ctx: ctx.clone(),
                    conn_id: CONN_IDS.fetch_add(1, Ordering::Relaxed),
                    peer,
                    last_probe: None,
                };
                tokio::spawn(connection(stream, shim, kill.clone()));
            }
            _ = stop.wait_for(|k| *k) => return,
        }
    }
}

async fn connection(stream: TcpStream, shim: Shim, mut kill: watch::Receiver<bool>) {
    if *kill.borrow() {
        return;
    }
    let (r, w) = stream.into_split();
    // opensrv writes every packet on its own and flushes after each command: buffered, a
    // probe answer (~100 packets) is one send instead of ~100.
    let w = MoreResults {
        inner: tokio::io::BufWriter::with_capacity(32 * 1024, w),
        pending: shim.more.clone(),
        header: [0; 4],
        got: 0,
        left: 0,
        offset: 0,
        patch: false,
    };
    tokio::select! {
        _ = AsyncMysqlIntermediary::run_on(shim, r, w) => {}
        _ = kill.wait_for(|k| *k) => {}
    }
}

struct Shim {
    /// Result-set terminators still to be marked "more results follow" (see [`MoreResults`]).
    more: Arc<AtomicU32>,
    idx: usize,
    ctx: Ctx,
    conn_id: u32,
    #[allow(dead_code)]
    peer: SocketAddr,
    last_probe: Option<Instant>,
}

/// One statement's answer.
enum Reply {
    Rows {
        cols: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
    },
    Ok {
        affected: u64,
    },
    Err {
        kind: ErrorKind,
        msg: String,
    },
    /// `DO SLEEP(n)`: answered OK after the sleep.
    Sleep(Duration),
    /// `MASTER_GTID_WAIT` / `WAIT_FOR_EXECUTED_GTID_SET`: OK once the instance executed it.
    WaitGtid {
        target: String,
        timeout: Duration,
    },
}

fn ok() -> Reply {
    Reply::Ok { affected: 0 }
}

fn one_row(cols: &[&str], vals: Vec<Option<String>>) -> Reply {
    Reply::Rows { cols: cols.iter().map(|c| c.to_string()).collect(), rows: vec![vals] }
}

/// Columns are leaked once per distinct list (a handful): opensrv wants them for the
/// writer's lifetime.
fn columns(names: &[String]) -> &'static [Column] {
    static CACHE: OnceLock<Mutex<HashMap<Vec<String>, &'static [Column]>>> = OnceLock::new();
    let mut m = lock(CACHE.get_or_init(Default::default));
    if let Some(c) = m.get(names) {
        return c;
    }
    let cols: Vec<Column> = names
        .iter()
        .map(|n| Column {
            table: String::new(),
            column: n.clone(),
            coltype: opensrv_mysql::ColumnType::MYSQL_TYPE_VAR_STRING,
            colflags: opensrv_mysql::ColumnFlags::empty(),
        })
        .collect();
    let leaked: &'static [Column] = Box::leak(cols.into_boxed_slice());
    m.insert(names.to_vec(), leaked);
    leaked
}

/// Splits a multi-statement query on `;` outside quotes.
fn split_statements(q: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote) = (0, None::<char>);
    let mut chars = q.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(qc), c) if c == qc => quote = None,
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, ';') => {
                out.push(q[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = q[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

fn quoted_after<'a>(s: &'a str, key: &str) -> Option<&'a str> {
    let rest = &s[s.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix('\'')?;
    Some(&rest[..rest.find('\'')?])
}

fn number_after(s: &str, key: &str) -> Option<u64> {
    let rest = s[s.find(key)? + key.len()..].trim_start();
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn onoff(s: &str) -> Option<bool> {
    let v = s.rsplit('=').next()?.trim().to_ascii_uppercase();
    match v.as_str() {
        "ON" | "1" => Some(true),
        "OFF" | "0" => Some(false),
        _ => None,
    }
}

fn b(v: bool) -> Option<String> {
    Some(if v { "1" } else { "0" }.to_string())
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

impl Shim {
    fn unknown(&self, st: &str) -> Reply {
        self.ctx.counters.unknown.fetch_add(1, Ordering::Relaxed);
        if lock(&self.ctx.unknown_seen).insert(st.to_string()) {
            eprintln!("fake mysql: unknown statement: {st}");
        }
        Reply::Err { kind: ErrorKind::ER_NOT_SUPPORTED_YET, msg: format!("fake server does not know: {st}") }
    }

    fn note_probe(&mut self) {
        self.ctx.counters.probes.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if let Some(prev) = self.last_probe.replace(now) {
            let us = u32::try_from(now.duration_since(prev).as_micros()).unwrap_or(u32::MAX);
            let port = lock(&self.ctx.world).insts[self.idx].port;
            let mut iv = lock(&self.ctx.intervals);
            let phase = iv.phase;
            iv.samples.entry(phase).or_default().push(us);
            let w = iv.worst.entry((phase, port)).or_insert(0);
            *w = (*w).max(us);
        }
    }

    /// Answers one statement against the instance's state.
    fn answer(&mut self, st: &str) -> Reply {
        let up = st.to_ascii_uppercase();
        if up.starts_with("SELECT @@SERVER_ID AS SERVER_ID") {
            self.note_probe();
            return self.variables(st);
        }
        let mut w = lock(&self.ctx.world);
        let w = &mut *w;
        // What needs other instances is read before this one is borrowed mutably.
        let (port, cluster, my_id) = {
            let me = &w.insts[self.idx];
            (me.port, me.cluster, me.server_id)
        };
        let src_id = w.insts[self.idx].source.and_then(|p| w.by_port.get(&p)).map_or(0, |k| w.insts[*k].server_id);
        if up == "SHOW SLAVE HOSTS" || up == "SHOW REPLICAS" {
            let mysql = w.insts[self.idx].flavor == Flavor::MySql;
            let rows: Vec<Vec<Option<String>>> = w.clusters[cluster]
                .iter()
                .map(|k| &w.insts[*k])
                .filter(|r| r.alive && r.source == Some(port) && r.io_running && r.io_connected)
                .map(|r| {
                    let mut row = vec![s(r.server_id), s("127.0.0.1"), s(r.port), s(my_id)];
                    if mysql {
                        row.push(s(uuid_of(r.server_id)));
                    }
                    row
                })
                .collect();
            let cols: &[&str] = if up == "SHOW REPLICAS" {
                &["Server_Id", "Host", "Port", "Source_Id", "Replica_UUID"]
            } else if mysql {
                &["Server_id", "Host", "Port", "Master_id", "Slave_UUID"]
            } else {
                &["Server_id", "Host", "Port", "Master_id"]
            };
            return Reply::Rows { cols: cols.iter().map(|c| c.to_string()).collect(), rows };
        }
        let change_to = if up.starts_with("CHANGE MASTER TO") || up.starts_with("CHANGE REPLICATION SOURCE TO") {
            let host = quoted_after(&up, "_HOST=");
            let p = number_after(&up, "_PORT=").and_then(|p| u16::try_from(p).ok());
            match (host, p) {
                (Some("127.0.0.1"), Some(p)) if w.by_port.contains_key(&p) => Some(p),
                _ => return self.unknown(st),
            }
        } else {
            None
        };
        let i = &mut w.insts[self.idx];
        let f = i.flavor;
        let mysql = f == Flavor::MySql;
        match up.as_str() {
            "SELECT @@VERSION, @@VERSION_COMMENT" => {
                return one_row(&["@@version", "@@version_comment"], vec![s(f.version()), s(f.version_comment())])
            }
            "SHOW ALL SLAVES STATUS" | "SHOW REPLICA STATUS" | "SHOW SLAVE STATUS" => {
                return replica_status(i, &up, src_id);
            }
            "DO 0" => return ok(),
            "STOP SLAVE" | "STOP REPLICA" => {
                i.io_running = false;
                i.sql_running = false;
                i.io_connected = false;
                return ok();
            }
            "START SLAVE" | "START REPLICA" => {
                if i.source.is_none() {
                    return Reply::Err {
                        kind: ErrorKind::ER_BAD_SLAVE,
                        msg:
                            "Misconfigured slave: MASTER_HOST was not set; Fix in config file or with CHANGE MASTER TO"
                                .into(),
                    };
                }
                i.io_running = true;
                i.sql_running = true;
                return ok();
            }
            "STOP SLAVE IO_THREAD" | "STOP REPLICA IO_THREAD" => {
                i.io_running = false;
                i.io_connected = false;
                return ok();
            }
            "START SLAVE IO_THREAD" | "START REPLICA IO_THREAD" => {
                if i.source.is_some() {
                    i.io_running = true;
                }
                return ok();
            }
            "RESET SLAVE ALL" | "RESET REPLICA ALL" => {
                i.source = None;
                i.io_running = false;
                i.sql_running = false;
                i.io_connected = false;
                i.io_error = None;
                return ok();
            }
            "RESET SLAVE" | "RESET REPLICA" => {
                i.io_error = None;
                return ok();
            }
            "RESET MASTER" => {
                i.executed = Gtids::default();
                return ok();
            }
            "SELECT @@GLOBAL.GTID_BINLOG_POS AS POS" => {
                return one_row(&["pos"], vec![s(i.executed.render(f))]);
            }
            _ => {}
        }
        if up.starts_with("SET GLOBAL READ_ONLY") || up.starts_with("SET GLOBAL SUPER_READ_ONLY") {
            let Some(on) = onoff(&up) else { return self.unknown(st) };
            let was_ro = i.read_only;
            if up.starts_with("SET GLOBAL READ_ONLY") {
                i.read_only = on;
                if !on {
                    i.super_read_only = false;
                }
            } else {
                if !mysql {
                    return Reply::Err {
                        kind: ErrorKind::ER_UNKNOWN_ERROR,
                        msg: "Unknown system variable 'super_read_only'".into(),
                    };
                }
                i.super_read_only = on;
                if on {
                    i.read_only = true;
                }
            }
            if was_ro && !i.read_only {
                i.writable_at = Some(Instant::now());
                i.made_writable += 1;
            }
            return ok();
        }
        if up.starts_with("SET GLOBAL RPL_SEMI_SYNC_") {
            return ok();
        }
        if up.starts_with("SET GLOBAL GTID_SLAVE_POS") {
            return ok();
        }
        if up.starts_with("CHANGE MASTER TO") || up.starts_with("CHANGE REPLICATION SOURCE TO") {
            if i.io_running || i.sql_running {
                return Reply::Err {
                    kind: ErrorKind::ER_SLAVE_MUST_STOP,
                    msg: "This operation cannot be performed with a running slave; run STOP SLAVE first".into(),
                };
            }
            i.source = change_to;
            i.io_error = None;
            return ok();
        }
        if up.starts_with("INSERT INTO `PRIMUS`.`HEARTBEAT`") {
            if i.read_only {
                return Reply::Err {
                    kind: ErrorKind::ER_OPTION_PREVENTS_STATEMENT,
                    msg:
                        "The MariaDB server is running with the --read-only option so it cannot execute this statement"
                            .into(),
                };
            }
            // VALUES ('cluster', epoch, ts_ms, coordinator)
            let Some(v) = st.find("VALUES (").map(|p| &st[p + 8..]) else { return self.unknown(st) };
            let Some(cluster) = v.strip_prefix('\'').and_then(|r| r.find('\'').map(|e| r[..e].to_string())) else {
                return self.unknown(st);
            };
            let nums: Vec<u64> = v[cluster.len() + 2..]
                .split(')')
                .next()
                .unwrap_or("")
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect();
            let [epoch, ts_ms, coordinator] = nums[..] else { return self.unknown(st) };
            let server_id = i.server_id;
            let cur = i.hb.get(&cluster).cloned();
            let new = match &cur {
                Some(c) if c.epoch > epoch => c.clone(),
                _ => HbRow { epoch, ts_ms, coordinator },
            };
            let changed = cur.as_ref() != Some(&new);
            if changed {
                i.hb.insert(cluster, new);
                i.executed.commit(f, server_id);
                i.binlog_pos += 350;
            }
            self.ctx.counters.heartbeat_writes.fetch_add(1, Ordering::Relaxed);
            return Reply::Ok { affected: if changed { 2 } else { 0 } };
        }
        if up.starts_with("CREATE DATABASE IF NOT EXISTS") || up.starts_with("CREATE TABLE IF NOT EXISTS") {
            return ok();
        }
        if up.starts_with("SELECT CLUSTER, EPOCH, TS_MS, COORDINATOR FROM `PRIMUS`.`HEARTBEAT`") {
            let rows = i.hb.iter().map(|(c, r)| vec![s(c), s(r.epoch), s(r.ts_ms), s(r.coordinator)]).collect();
            return Reply::Rows {
                cols: ["cluster", "epoch", "ts_ms", "coordinator"].iter().map(|c| c.to_string()).collect(),
                rows,
            };
        }
        if up.starts_with("DO SLEEP(") {
            let secs = number_after(&up, "DO SLEEP(").unwrap_or(0);
            return Reply::Sleep(Duration::from_secs(secs));
        }
        if up.starts_with("DO MASTER_GTID_WAIT(") || up.starts_with("DO WAIT_FOR_EXECUTED_GTID_SET(") {
            let target = quoted_after(st, "(").unwrap_or("").to_string();
            let secs = st.rsplit(',').next().and_then(|x| x.trim().trim_end_matches(')').parse().ok()).unwrap_or(1);
            return Reply::WaitGtid { target, timeout: Duration::from_secs(secs) };
        }
        if up.starts_with("SELECT ID FROM INFORMATION_SCHEMA.PROCESSLIST") {
            // No application clients on a fake server.
            return Reply::Rows { cols: vec!["ID".into()], rows: Vec::new() };
        }
        if up.starts_with("KILL CONNECTION ") {
            return ok();
        }
        self.unknown(st)
    }

    /// The probe batch's variables `SELECT`: one row, a value per `AS alias`.
    fn variables(&self, st: &str) -> Reply {
        let w = lock(&self.ctx.world);
        let i = &w.insts[self.idx];
        let f = i.flavor;
        let aliases: Vec<&str> = st
            .match_indices(" AS ")
            .map(|(p, _)| {
                let rest = &st[p + 4..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        let mut vals = Vec::with_capacity(aliases.len());
        for a in &aliases {
            let v = match *a {
                "server_id" => s(i.server_id),
                "read_only" => b(i.read_only),
                "super_read_only" => b(i.super_read_only),
                "log_bin" | "log_slave_updates" => b(true),
                "binlog_format" => s("ROW"),
                "uptime" => s(i.started.elapsed().as_secs() + 86_400),
                "semi_source_enabled" | "semi_replica_enabled" | "semi_source_status" | "semi_replica_status" => {
                    s("OFF")
                }
                "semi_source_clients" => s(0),
                "dump_threads" => {
                    let port = i.port;
                    s(w.clusters[i.cluster]
                        .iter()
                        .filter(|k| {
                            let r = &w.insts[**k];
                            r.alive && r.source == Some(port) && r.io_connected
                        })
                        .count())
                }
                "heartbeat_table" => s(1),
                "gtid_current_pos" | "gtid_binlog_pos" => s(i.executed.render(f)),
                "gtid_slave_pos" => s(i.slave_pos.render(f)),
                "gtid_strict_mode" => b(true),
                "gtid_domain_id" => s(0),
                "gtid_binlog_state" => s(i.executed.binlog_state()),
                "server_uuid" => s(uuid_of(i.server_id)),
                "gtid_executed" => s(i.executed.render(f)),
                "gtid_purged" => s(""),
                "gtid_mode" => s("ON"),
                other => {
                    drop(w);
                    return self.unknown(&format!("variables column {other} in: {st}"));
                }
            };
            vals.push(v);
        }
        Reply::Rows { cols: aliases.iter().map(|a| a.to_string()).collect(), rows: vec![vals] }
    }

    async fn wait_gtid(&self, target: &str, timeout: Duration) -> Reply {
        let deadline = Instant::now() + timeout;
        loop {
            let have = {
                let w = lock(&self.ctx.world);
                let i = &w.insts[self.idx];
                contains(i.flavor, &i.executed, target)
            };
            match have {
                Some(true) => return one_row(&["r"], vec![s(0)]),
                None => return self.unknown_target(target),
                Some(false) if Instant::now() >= deadline => return one_row(&["r"], vec![s(-1)]),
                Some(false) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn unknown_target(&self, target: &str) -> Reply {
        Reply::Err { kind: ErrorKind::ER_UNKNOWN_ERROR, msg: format!("fake server cannot parse GTID {target}") }
    }
}

/// Whether `have` contains the GTIDs `target` (parsed with primus-mysql's own GTID types).
fn contains(f: Flavor, have: &Gtids, target: &str) -> Option<bool> {
    match f {
        Flavor::MariaDb => {
            let t: primus_mysql::MariaGtidSet = target.parse().ok()?;
            let h: primus_mysql::MariaGtidSet = have.render(f).parse().ok()?;
            Some(h.contains(&t))
        }
        Flavor::MySql => {
            let t: primus_mysql::MySqlGtidSet = target.parse().ok()?;
            let h: primus_mysql::MySqlGtidSet = have.render(f).parse().ok()?;
            Some(h.contains(&t))
        }
    }
}

fn replica_status(i: &Inst, stmt: &str, src_id: u32) -> Reply {
    let Some(src) = i.source else {
        return Reply::Rows { cols: vec!["Master_Host".into()], rows: Vec::new() };
    };
    let f = i.flavor;
    let io = if !i.io_running {
        "No"
    } else if i.io_connected {
        "Yes"
    } else {
        "Connecting"
    };
    let io_state = if !i.io_running {
        ""
    } else if i.io_connected {
        "Waiting for master to send event"
    } else {
        "Reconnecting after a failed master event read"
    };
    let sql_state = if i.sql_running { "Slave has read all relay log; waiting for more updates" } else { "" };
    let behind = if i.io_running && i.io_connected && i.sql_running { s(0) } else { None };
    let (errno, err) = match &i.io_error {
        Some(e) if i.io_running => (s(e.errno), s(&e.message)),
        _ => (s(0), s("")),
    };
    let yes = |v: bool| s(if v { "Yes" } else { "No" });
    let mut cols: Vec<(&str, Option<String>)> = Vec::new();
    let new_names = stmt == "SHOW REPLICA STATUS";
    let n = |old: &'static str, new: &'static str| if new_names { new } else { old };
    if f == Flavor::MariaDb {
        cols.push(("Connection_name", s("")));
        cols.push(("Slave_SQL_State", s(sql_state)));
    }
    cols.extend([
        (n("Slave_IO_State", "Replica_IO_State"), s(io_state)),
        (n("Master_Host", "Source_Host"), s("127.0.0.1")),
        (n("Master_User", "Source_User"), s("repl")),
        (n("Master_Port", "Source_Port"), s(src)),
        ("Connect_Retry", s(1)),
        (n("Master_Log_File", "Source_Log_File"), s("binlog.000001")),
        (n("Read_Master_Log_Pos", "Read_Source_Log_Pos"), s(i.read_pos)),
        ("Relay_Log_File", s("relay.000002")),
        ("Relay_Log_Pos", s(i.exec_pos)),
        (n("Relay_Master_Log_File", "Relay_Source_Log_File"), s("binlog.000001")),
        (n("Slave_IO_Running", "Replica_IO_Running"), s(io)),
        (n("Slave_SQL_Running", "Replica_SQL_Running"), yes(i.sql_running)),
        ("Last_Errno", s(0)),
        ("Last_Error", s("")),
        (n("Exec_Master_Log_Pos", "Exec_Source_Log_Pos"), s(i.exec_pos)),
        ("Relay_Log_Space", s(i.read_pos.saturating_sub(i.exec_pos) + 1024)),
        (n("Seconds_Behind_Master", "Seconds_Behind_Source"), behind),
        ("Last_IO_Errno", errno),
        ("Last_IO_Error", err),
        ("Last_SQL_Errno", s(0)),
        ("Last_SQL_Error", s("")),
        (n("Master_Server_Id", "Source_Server_Id"), s(if i.io_connected { src_id } else { 0 })),
        ("SQL_Delay", s(0)),
        (n("Slave_SQL_Running_State", "Replica_SQL_Running_State"), s(sql_state)),
    ]);
    match f {
        Flavor::MariaDb => cols.extend([
            ("Using_Gtid", s("Slave_Pos")),
            ("Gtid_IO_Pos", s(i.received.render(f))),
            ("Retried_transactions", s(0)),
            ("Executed_log_entries", s(i.executed.count() * 3)),
            ("Slave_received_heartbeats", s(i.received_heartbeats)),
            ("Slave_heartbeat_period", s("0.500")),
            ("Gtid_Slave_Pos", s(i.slave_pos.render(f))),
        ]),
        Flavor::MySql => cols.extend([
            (n("Master_UUID", "Source_UUID"), if i.io_connected { s(uuid_of(src_id)) } else { s("") }),
            ("Last_IO_Error_Timestamp", s("")),
            ("Last_SQL_Error_Timestamp", s("")),
            ("Retrieved_Gtid_Set", s(i.received.render(f))),
            ("Executed_Gtid_Set", s(i.executed.render(f))),
            ("Auto_Position", s(1)),
            ("Channel_Name", s("")),
        ]),
    }
    Reply::Rows {
        cols: cols.iter().map(|(c, _)| c.to_string()).collect(),
        rows: vec![cols.into_iter().map(|(_, v)| v).collect()],
    }
}

#[async_trait::async_trait]
impl<W: tokio::io::AsyncWrite + Send + Unpin> AsyncMysqlShim<W> for Shim {
    type Error = io::Error;

    fn version(&self) -> String {
        match lock(&self.ctx.world).insts[self.idx].flavor {
            Flavor::MariaDb => "5.5.5-10.11.6-MariaDB-log".into(),
            Flavor::MySql => "8.0.36".into(),
        }
    }

    fn connect_id(&self) -> u32 {
        self.conn_id
    }

    async fn on_prepare<'a>(&'a mut self, _: &'a str, info: StatementMetaWriter<'a, W>) -> io::Result<()> {
        info.error(ErrorKind::ER_NOT_SUPPORTED_YET, b"prepared statements are not supported by the fake server").await
    }

    async fn on_execute<'a>(&'a mut self, _: u32, _: ParamParser<'a>, r: QueryResultWriter<'a, W>) -> io::Result<()> {
        r.error(ErrorKind::ER_NOT_SUPPORTED_YET, b"prepared statements are not supported by the fake server").await
    }

    async fn on_close<'a>(&'a mut self, _: u32)
    where
        W: 'async_trait,
    {
    }

    async fn on_query<'a>(&'a mut self, query: &'a str, mut results: QueryResultWriter<'a, W>) -> io::Result<()> {
        self.ctx.counters.queries.fetch_add(1, Ordering::Relaxed);
        let statements = split_statements(query);
        let n = statements.len();
        let mut prev_rows = false;
        for (k, st) in statements.into_iter().enumerate() {
            let reply = match self.answer(st) {
                Reply::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    ok()
                }
                Reply::WaitGtid { target, timeout } => match self.wait_gtid(&target, timeout).await {
                    Reply::Rows { .. } => ok(),
                    r => r,
                },
                r => r,
            };
            let last = k + 1 == n;
            match reply {
                Reply::Rows { cols, rows } => {
                    let cols = columns(&cols);
                    if prev_rows {
                        // Starting this set writes the previous one's terminator: more follow.
                        self.more.fetch_add(1, Ordering::SeqCst);
                    }
                    prev_rows = true;
                    let mut rw = results.start(cols).await?;
                    for row in rows {
                        for v in row {
                            rw.write_col(v.as_deref())?;
                        }
                        rw.end_row().await?;
                    }
                    if last {
                        return rw.finish().await;
                    }
                    results = rw.finish_one().await?;
                }
                Reply::Ok { .. } | Reply::Sleep(_) | Reply::WaitGtid { .. } => {
                    let affected = if let Reply::Ok { affected } = reply { affected } else { 0 };
                    let mut okr = OkResponse { affected_rows: affected, ..Default::default() };
                    if !last {
                        okr.status_flags = opensrv_mysql::StatusFlags::SERVER_MORE_RESULTS_EXISTS;
                    }
                    if prev_rows {
                        self.more.fetch_add(1, Ordering::SeqCst);
                    }
                    prev_rows = false;
                    if last {
                        return results.completed(okr).await;
                    }
                    results = results.complete_one(okr).await?;
                }
                Reply::Err { kind, msg } => {
                    // MariaDB/MySQL stop a multi-statement batch at the first error.
                    return results.error(kind, msg.as_bytes()).await;
                }
            }
        }
        results.completed(OkResponse::default()).await
    }
}

/// Works around opensrv-mysql 0.7: with `CLIENT_DEPRECATE_EOF` (which mysql_async asks for)
/// a result set ends with an OK packet (header 0xFE), and opensrv never sets
/// `SERVER_MORE_RESULTS_EXISTS` in it, so a client reading a multi-statement answer (the
/// probe batch) stops after the first set and finds the rest "out of sync". This writer
/// sets the flag in the next `pending` 0xFE OK packets that pass through (the shim counts
/// them: one per result set followed by another). It parses packet headers across writes;
/// rows and column definitions never start with 0xFE here (no value is 16 MiB long).
struct MoreResults<W> {
    inner: W,
    pending: Arc<AtomicU32>,
    header: [u8; 4],
    /// Header bytes seen of the current packet (0..=4).
    got: usize,
    /// Payload bytes left in the current packet.
    left: usize,
    /// Payload bytes seen of the current packet.
    offset: usize,
    /// The current packet is a terminator to mark.
    patch: bool,
}

/// Byte offset (in the payload) of the status flags of a 0xFE OK packet whose affected rows
/// and last insert id are single-byte length-encoded integers (always so for a terminator).
const OK_STATUS_OFFSET: usize = 3;
const MORE_RESULTS_EXISTS: u8 = 0x08;

impl<W> MoreResults<W> {
    /// Runs the packet parser over `buf`, patching it in place; `commit` keeps the new state.
    fn scan(&mut self, buf: &mut [u8], commit: bool) {
        let (mut header, mut got, mut left, mut offset, mut patch) =
            (self.header, self.got, self.left, self.offset, self.patch);
        let pending = self.pending.load(Ordering::SeqCst);
        let mut taken = 0;
        for b in buf.iter_mut() {
            if got < 4 {
                header[got] = *b;
                got += 1;
                if got == 4 {
                    left = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
                    offset = 0;
                    patch = false;
                    if left == 0 {
                        got = 0;
                    }
                }
                continue;
            }
            if offset == 0 && *b == 0xFE && (7..0xFF_FFFF).contains(&left) && pending > taken {
                patch = true;
                taken += 1;
            }
            if patch && offset == OK_STATUS_OFFSET {
                *b |= MORE_RESULTS_EXISTS;
            }
            offset += 1;
            left -= 1;
            if left == 0 {
                got = 0;
            }
        }
        if commit {
            (self.header, self.got, self.left, self.offset, self.patch) = (header, got, left, offset, patch);
            if taken > 0 {
                // Only this connection's shim adds to `pending`, before writing: no underflow.
                self.pending.fetch_sub(taken, Ordering::SeqCst);
            }
        }
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for MoreResults<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let mut copy = buf.to_vec();
        self.scan(&mut copy, false);
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, &copy) {
            std::task::Poll::Ready(Ok(n)) => {
                let mut done = buf[..n].to_vec();
                self.scan(&mut done, true);
                std::task::Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! [`Prober`]: one reused connection per instance, one round trip per probe, strict
//! timeouts (feature `client`). See the [module](super) for why it is built this way.

use super::{GtidState, Observation, ProbeConfig, ProbeCost, ProbeError, ProbeStage, SemiSyncStatus, TlsMode};
use crate::flavor::{self, Flavor, ServerInfo};
use crate::heartbeat::{self, HeartbeatError, HeartbeatRow, HeartbeatTable, ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE};
use crate::status::{ConnectedReplica, ReplicaStatus, StatusRow};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use primus_types::InstanceAddr;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;
use tokio::time::{timeout_at, Instant};

/// The statements of one probe batch, per dialect; built once per connection.
///
/// No statement of a batch may fail in normal operation: when a statement of a multi-statement
/// query fails, MariaDB ends the previous result without the "more results" flag and sends the
/// error afterwards, so the driver stops reading and leaves the error on the wire, where the
/// *next* query would find it. The heartbeat read (the only statement whose table may be missing)
/// is therefore included only once the variables `SELECT` has seen the table exist; until then a
/// separate `SELECT` runs the first time it appears.
#[derive(Debug, Clone)]
struct Batch {
    /// Variables, replica status, replica hosts, heartbeat read.
    statements: [String; 4],
    /// The first three statements.
    sql_without_heartbeat: String,
    /// All four statements.
    sql_with_heartbeat: String,
}

const STAGES: [ProbeStage; 4] =
    [ProbeStage::Variables, ProbeStage::ReplicaStatus, ProbeStage::ReplicaHosts, ProbeStage::Heartbeat];

fn variables_sql(info: &ServerInfo, table: &HeartbeatTable) -> String {
    let var = |table: &str, name: &str| format!("(SELECT VARIABLE_VALUE FROM {table} WHERE VARIABLE_NAME = '{name}')");
    let vars = info.global_variables_table();
    let status = info.global_status_table();
    // Where several plugin generations may be installed, take whichever answers.
    let candidates = info.semi_sync_name_candidates();
    let semi = |table: &str, pick: fn(&flavor::SemiSyncNames) -> &'static str| {
        let subqueries: Vec<String> = candidates.iter().map(|n| var(table, pick(n))).collect();
        match subqueries.as_slice() {
            [one] => one.clone(),
            many => format!("COALESCE({})", many.join(", ")),
        }
    };
    let mut cols: Vec<(String, &str)> = vec![
        ("@@server_id".into(), "server_id"),
        ("@@read_only".into(), "read_only"),
        ("@@log_bin".into(), "log_bin"),
        (format!("@@{}", info.log_replica_updates_variable()), "log_slave_updates"),
        ("@@binlog_format".into(), "binlog_format"),
        (var(status, "Uptime"), "uptime"),
        (semi(vars, |n| n.source_enabled), "semi_source_enabled"),
        (semi(vars, |n| n.replica_enabled), "semi_replica_enabled"),
        (semi(status, |n| n.source_status), "semi_source_status"),
        (semi(status, |n| n.replica_status), "semi_replica_status"),
        (semi(status, |n| n.source_clients), "semi_source_clients"),
        (format!("({})", info.binlog_dump_count_sql()), "dump_threads"),
        (
            format!(
                "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {})",
                flavor::quote_string(table.database()),
                flavor::quote_string(table.table())
            ),
            "heartbeat_table",
        ),
    ];
    match info.flavor {
        Flavor::MariaDb => {
            cols.extend([
                ("@@gtid_current_pos".into(), "gtid_current_pos"),
                ("@@gtid_binlog_pos".into(), "gtid_binlog_pos"),
                ("@@gtid_slave_pos".into(), "gtid_slave_pos"),
                ("@@gtid_strict_mode".into(), "gtid_strict_mode"),
                ("@@gtid_domain_id".into(), "gtid_domain_id"),
                // Exists wherever GTIDs do (10.0+) and needs no privilege: cannot fail.
                ("@@gtid_binlog_state".into(), "gtid_binlog_state"),
            ]);
        }
        Flavor::MySql => {
            cols.push(("@@server_uuid".into(), "server_uuid"));
            if info.has_super_read_only() {
                cols.push(("@@super_read_only".into(), "super_read_only"));
            }
            cols.extend([
                ("@@gtid_executed".into(), "gtid_executed"),
                ("@@gtid_purged".into(), "gtid_purged"),
                ("@@gtid_mode".into(), "gtid_mode"),
            ]);
        }
    }
    let list: Vec<String> = cols.iter().map(|(e, a)| format!("{e} AS {a}")).collect();
    format!("SELECT {}", list.join(", "))
}

fn batch_for(info: &ServerInfo, table: &HeartbeatTable) -> Batch {
    let statements = [
        variables_sql(info, table),
        info.replica_status_sql().to_string(),
        info.replica_hosts_sql().to_string(),
        table.select_sql(),
    ];
    Batch { sql_without_heartbeat: statements[..3].join("; "), sql_with_heartbeat: statements.join("; "), statements }
}

/// Renders a driver value as the text the server sent (text protocol sends everything as bytes).
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        Value::Date(y, mo, d, h, mi, s, us) => Some(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")),
        Value::Time(neg, d, h, mi, s, us) => {
            let sign = if *neg { "-" } else { "" };
            let hours = u64::from(*d) * 24 + u64::from(*h);
            Some(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
        }
    }
}

fn status_row(row: &Row) -> StatusRow {
    let cols = row.columns_ref();
    StatusRow(
        cols.iter().enumerate().map(|(i, c)| (c.name_str().into_owned(), row.as_ref(i).and_then(value_text))).collect(),
    )
}

fn parse_bool(stage: ProbeStage, name: &str, v: Option<&str>) -> Result<Option<bool>, ProbeError> {
    match v.map(|s| s.trim().to_ascii_uppercase()) {
        None => Ok(None),
        Some(s) => match s.as_str() {
            "1" | "ON" | "YES" | "TRUE" => Ok(Some(true)),
            "0" | "OFF" | "NO" | "FALSE" => Ok(Some(false)),
            _ => Err(ProbeError::Unparseable { stage, message: format!("{name} = {s:?} is not a boolean") }),
        },
    }
}

fn parse_num<T: std::str::FromStr>(stage: ProbeStage, name: &str, v: Option<&str>) -> Result<Option<T>, ProbeError>
where
    T::Err: fmt::Display,
{
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => {
            s.parse().map(Some).map_err(|e| ProbeError::Unparseable { stage, message: format!("{name} = {s:?}: {e}") })
        }
    }
}

fn parse_gtid<T: std::str::FromStr<Err = crate::gtid::GtidParseError>>(
    name: &str,
    v: Option<&str>,
) -> Result<T, ProbeError> {
    v.unwrap_or("")
        .parse()
        .map_err(|e| ProbeError::Unparseable { stage: ProbeStage::Variables, message: format!("{name}: {e}") })
}

/// The parts of an observation read from the variables `SELECT`.
struct Variables {
    server_id: u32,
    server_uuid: Option<String>,
    uptime_s: Option<u64>,
    read_only: bool,
    super_read_only: Option<bool>,
    log_bin: bool,
    log_slave_updates: bool,
    binlog_format: Option<String>,
    gtid: GtidState,
    semi_sync: SemiSyncStatus,
    binlog_dump_threads: u32,
    /// The heartbeat table exists.
    heartbeat_table: bool,
}

fn parse_variables(info: &ServerInfo, rows: &[StatusRow]) -> Result<Variables, ProbeError> {
    const S: ProbeStage = ProbeStage::Variables;
    let row = match rows {
        [row] => row,
        _ => return Err(ProbeError::Unparseable { stage: S, message: format!("expected 1 row, got {}", rows.len()) }),
    };
    let t = |n: &str| row.text(&[n]);
    let required = |name: &str, v: Option<bool>| {
        v.ok_or_else(|| ProbeError::Unparseable { stage: S, message: format!("{name} is NULL") })
    };
    let gtid = match info.flavor {
        Flavor::MariaDb => GtidState::MariaDb {
            current_pos: parse_gtid("gtid_current_pos", t("gtid_current_pos"))?,
            binlog_pos: parse_gtid("gtid_binlog_pos", t("gtid_binlog_pos"))?,
            slave_pos: parse_gtid("gtid_slave_pos", t("gtid_slave_pos"))?,
            strict_mode: parse_bool(S, "gtid_strict_mode", t("gtid_strict_mode"))?.unwrap_or(false),
            domain_id: parse_num(S, "gtid_domain_id", t("gtid_domain_id"))?.unwrap_or(0),
            binlog_state: parse_gtid("gtid_binlog_state", t("gtid_binlog_state"))?,
        },
        Flavor::MySql => GtidState::MySql {
            executed: parse_gtid("gtid_executed", t("gtid_executed"))?,
            purged: parse_gtid("gtid_purged", t("gtid_purged"))?,
            mode: t("gtid_mode").unwrap_or("OFF").to_string(),
        },
    };
    Ok(Variables {
        server_id: parse_num(S, "server_id", t("server_id"))?
            .ok_or_else(|| ProbeError::Unparseable { stage: S, message: "server_id is NULL".into() })?,
        server_uuid: t("server_uuid").map(str::to_string),
        uptime_s: parse_num(S, "Uptime", t("uptime"))?,
        read_only: required("read_only", parse_bool(S, "read_only", t("read_only"))?)?,
        super_read_only: parse_bool(S, "super_read_only", t("super_read_only"))?,
        log_bin: parse_bool(S, "log_bin", t("log_bin"))?.unwrap_or(false),
        log_slave_updates: parse_bool(S, "log_slave_updates", t("log_slave_updates"))?.unwrap_or(false),
        binlog_format: t("binlog_format").map(str::to_string),
        gtid,
        semi_sync: SemiSyncStatus {
            source_enabled: parse_bool(S, "semi-sync source enabled", t("semi_source_enabled"))?,
            replica_enabled: parse_bool(S, "semi-sync replica enabled", t("semi_replica_enabled"))?,
            source_active: parse_bool(S, "semi-sync source status", t("semi_source_status"))?,
            replica_active: parse_bool(S, "semi-sync replica status", t("semi_replica_status"))?,
            source_clients: parse_num(S, "semi-sync source clients", t("semi_source_clients"))?,
        },
        binlog_dump_threads: parse_num(S, "binlog dump threads", t("dump_threads"))?.unwrap_or(0),
        heartbeat_table: parse_num::<u64>(S, "heartbeat table count", t("heartbeat_table"))?.unwrap_or(0) > 0,
    })
}

/// A live connection and what we know about its server.
struct Session {
    conn: Conn,
    info: ServerInfo,
    batch: Batch,
    /// The heartbeat table was seen to exist: read it within the batch.
    heartbeat_in_batch: bool,
    /// Something unread may be left on the wire: drop the connection after this operation.
    poisoned: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

/// Authentication failures: wrong password/user (1045), no access to the database (1044),
/// unix_socket/no-password mismatch (1698).
const ACCESS_DENIED_CODES: [u16; 3] = [1045, 1044, 1698];

fn connect_error(e: mysql_async::Error, tls: &super::ClientTls) -> ProbeError {
    match e {
        // MariaDB answers a plain-TCP client of a `require_secure_transport=ON` server
        // with "Access denied", as for a wrong password (seen on 10.11): say so.
        mysql_async::Error::Server(s) if ACCESS_DENIED_CODES.contains(&s.code) && tls.mode == TlsMode::Disabled => {
            ProbeError::AccessDenied {
                code: s.code,
                message: format!(
                    "{} (primus connected without TLS: if the server sets require_secure_transport, set [mysql] \
                     tls_mode)",
                    s.message
                ),
            }
        }
        mysql_async::Error::Server(s) if ACCESS_DENIED_CODES.contains(&s.code) => {
            ProbeError::AccessDenied { code: s.code, message: s.message }
        }
        mysql_async::Error::Server(s) => ProbeError::ConnectRejected { code: s.code, message: s.message },
        mysql_async::Error::Io(io) => ProbeError::Unreachable { message: io.to_string() },
        mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed) => {
            ProbeError::Unreachable { message: "connection closed by the server during the handshake".into() }
        }
        other => ProbeError::Unparseable { stage: ProbeStage::Connect, message: other.to_string() },
    }
}

fn query_error(stage: ProbeStage, query: &str, e: mysql_async::Error) -> ProbeError {
    match e {
        mysql_async::Error::Server(s) => {
            ProbeError::QueryFailed { query: query.to_string(), code: Some(s.code), message: s.message }
        }
        mysql_async::Error::Io(io) => ProbeError::ConnectionLost { stage, message: io.to_string() },
        mysql_async::Error::Driver(d @ mysql_async::DriverError::ConnectionClosed) => {
            ProbeError::ConnectionLost { stage, message: d.to_string() }
        }
        other => ProbeError::Unparseable { stage, message: other.to_string() },
    }
}

/// Awaits `fut` until `deadline`; on expiry reports a timeout of `stage` measured from `started`.
async fn bounded<T>(
    deadline: Instant,
    started: Instant,
    stage: ProbeStage,
    fut: impl Future<Output = T>,
) -> Result<T, ProbeError> {
    timeout_at(deadline, fut).await.map_err(|_| ProbeError::Timeout { stage, after_ms: millis(started.elapsed()) })
}

/// Probes one instance over one reused connection. See the module docs.
pub struct Prober {
    addr: InstanceAddr,
    config: ProbeConfig,
    session: Mutex<Option<Session>>,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober").field("addr", &self.addr).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Prober {
    /// Does not connect: the first probe does.
    pub fn new(addr: InstanceAddr, config: ProbeConfig) -> Self {
        Prober { addr, config, session: Mutex::new(None) }
    }

    pub fn addr(&self) -> &InstanceAddr {
        &self.addr
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// Closes the connection (if any); the next call reconnects.
    pub async fn disconnect(&self) {
        let session = self.session.lock().await.take();
        if let Some(s) = session {
            // Best effort and bounded: a hung server must not hang us.
            let _ = tokio::time::timeout(self.config.connect_timeout, s.conn.disconnect()).await;
        }
    }

    async fn connect(&self) -> Result<Session, ProbeError> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.addr.host())
            .tcp_port(self.addr.port())
            .user(Some(self.config.user.clone()))
            .pass(Some(self.config.password.expose().to_string()))
            // Never switch to a unix socket behind our back (it would bypass the address the
            // coordinators are meant to reach, e.g. through a proxy).
            .prefer_socket(false)
            // Known values, so the driver does not spend a round trip asking for them.
            .max_allowed_packet(Some(64 * 1024 * 1024))
            .wait_timeout(Some(28_800))
            .stmt_cache_size(0)
            .tcp_nodelay(true)
            .ssl_opts(self.config.tls.ssl_opts());
        let started = Instant::now();
        let deadline = started + self.config.connect_timeout;
        let mut conn = bounded(deadline, started, ProbeStage::Connect, Conn::new(opts))
            .await?
            .map_err(|e| connect_error(e, &self.config.tls))?;

        let started = Instant::now();
        let deadline = started + self.config.query_timeout;
        let rows: Vec<Row> = bounded(deadline, started, ProbeStage::Detect, conn.query(flavor::DETECT_SQL))
            .await?
            .map_err(|e| query_error(ProbeStage::Detect, flavor::DETECT_SQL, e))?;
        let row = rows.first().map(status_row).unwrap_or_default();
        let version = row.0.first().and_then(|(_, v)| v.clone()).unwrap_or_default();
        let comment = row.0.get(1).and_then(|(_, v)| v.clone()).unwrap_or_default();
        let info = flavor::detect(&version, &comment)
            .map_err(|e| ProbeError::Unparseable { stage: ProbeStage::Detect, message: e.to_string() })?;
        tracing::debug!(addr = %self.addr, server = %info, "connected");
        let batch = batch_for(&info, &self.config.heartbeat_table);
        Ok(Session { conn, info, batch, heartbeat_in_batch: false, poisoned: false })
    }

    /// Runs `op` on the session, connecting first if needed; drops the connection if the error
    /// poisons it, and retries once on a fresh connection if a *reused* one turned out dead.
    async fn with_session<T, F>(&self, mut op: F) -> Result<T, ProbeError>
    where
        F: for<'s> FnMut(
            &'s mut Session,
            Option<u64>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<T, ProbeError>> + Send + 's>>,
    {
        let mut slot = self.session.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let reused = slot.is_some();
            let mut connect_us = None;
            let session = match slot.as_mut() {
                Some(s) => s,
                None => {
                    let started = Instant::now();
                    let s = self.connect().await?;
                    connect_us = Some(micros(started.elapsed()));
                    slot.insert(s)
                }
            };
            let res = op(session, connect_us).await;
            if session.poisoned {
                tracing::debug!(addr = %self.addr, "dropping a connection with unread data");
                *slot = None;
            }
            match res {
                Err(e) if e.poisons_connection() => {
                    *slot = None;
                    if reused && attempts == 1 && matches!(e, ProbeError::ConnectionLost { .. }) {
                        tracing::debug!(addr = %self.addr, error = %e, "reused connection is dead; reconnecting");
                        continue;
                    }
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// Takes one observation of the instance.
    pub async fn probe(&self) -> Result<Observation, ProbeError> {
        let query_timeout = self.config.query_timeout;
        let addr = self.addr.clone();
        self.with_session(move |s, connect_us| Box::pin(run_probe(s, addr.clone(), query_timeout, connect_us))).await
    }

    /// Measures what probing costs: one probe to (re)connect, then `n` probes over the same
    /// connection, summarised. For sizing probe intervals and spotting slow instances.
    pub async fn measure_cost(&self, n: usize) -> Result<ProbeCost, ProbeError> {
        let first = self.probe().await?;
        let mut lat: Vec<u64> = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            self.probe().await?;
            lat.push(micros(t.elapsed()));
        }
        lat.sort_unstable();
        let pct = |p: usize| lat.get((lat.len().saturating_sub(1)) * p / 100).copied().unwrap_or(0);
        Ok(ProbeCost {
            probes: n,
            connect_us: first.connect_us,
            min_us: lat.first().copied().unwrap_or(0),
            p50_us: pct(50),
            p99_us: pct(99),
            max_us: lat.last().copied().unwrap_or(0),
        })
    }

    /// Flavor and version of the instance (connecting if needed).
    pub async fn server_info(&self) -> Result<ServerInfo, ProbeError> {
        self.with_session(|s, _| {
            let info = s.info.clone();
            Box::pin(async move { Ok(info) })
        })
        .await
    }

    /// Writes the heartbeat row (see [`heartbeat::write_to`]) over the probe connection,
    /// bounded by `query_timeout`. Returns whether the row changed (`false`: a newer epoch owns it).
    pub async fn write_heartbeat(
        &self,
        cluster: &str,
        epoch: u64,
        ts_ms: u64,
        coordinator: u64,
    ) -> Result<bool, ProbeError> {
        let query_timeout = self.config.query_timeout;
        let table = self.config.heartbeat_table.clone();
        let cluster = cluster.to_string();
        self.with_session(move |s, _| {
            let table = table.clone();
            let cluster = cluster.clone();
            Box::pin(async move {
                let started = Instant::now();
                let fut = heartbeat::write_to(&mut s.conn, &table, &cluster, epoch, ts_ms, coordinator);
                match bounded(started + query_timeout, started, ProbeStage::HeartbeatWrite, fut).await? {
                    Ok(changed) => Ok(changed),
                    Err(HeartbeatError::ReadOnly { message }) => Err(ProbeError::ReadOnly { message }),
                    Err(HeartbeatError::Query { query, source }) => {
                        Err(query_error(ProbeStage::HeartbeatWrite, &query, source))
                    }
                }
            })
        })
        .await
    }

    /// Executes `statements` in order over the probe connection, all within `timeout` (for the
    /// failover actions built from [`crate::flavor`]). Stops at the first failure.
    pub async fn execute(&self, statements: &[String], timeout: Duration) -> Result<(), ProbeError> {
        let statements = statements.to_vec();
        self.with_session(move |s, _| {
            let statements = statements.clone();
            Box::pin(async move {
                let started = Instant::now();
                let deadline = started + timeout;
                for st in &statements {
                    bounded(deadline, started, ProbeStage::Execute, s.conn.query_drop(st.as_str())).await?.map_err(
                        |e| match e {
                            mysql_async::Error::Server(ref se)
                                if matches!(
                                    se.code,
                                    heartbeat::ER_OPTION_PREVENTS_STATEMENT | heartbeat::ER_READ_ONLY_MODE
                                ) =>
                            {
                                ProbeError::ReadOnly { message: se.message.clone() }
                            }
                            e => query_error(ProbeStage::Execute, st, e),
                        },
                    )?;
                }
                Ok(())
            })
        })
        .await
    }
}

impl Prober {
    /// Runs one query over the probe connection within `timeout` and returns its rows
    /// (for the few reads failover actions need, e.g. the process list to kill).
    pub async fn query_rows(&self, sql: &str, timeout: Duration) -> Result<Vec<StatusRow>, ProbeError> {
        let sql = sql.to_string();
        self.with_session(move |s, _| {
            let sql = sql.clone();
            Box::pin(async move {
                let started = Instant::now();
                let rows: Vec<Row> =
                    bounded(started + timeout, started, ProbeStage::Execute, s.conn.query(sql.as_str()))
                        .await?
                        .map_err(|e| query_error(ProbeStage::Execute, &sql, e))?;
                Ok(rows.iter().map(status_row).collect())
            })
        })
        .await
    }
}

/// Reads the rows of one statement's result set (the next one of `result`).
fn collect_rows(rows: &mut Vec<StatusRow>) -> impl FnMut(Row) + '_ {
    move |row| rows.push(status_row(&row))
}

fn heartbeat_rows(rows: &[StatusRow]) -> Result<Vec<HeartbeatRow>, ProbeError> {
    rows.iter()
        .map(HeartbeatRow::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|message| ProbeError::Unparseable { stage: ProbeStage::Heartbeat, message })
}

/// Runs the probe batch on an established session.
async fn run_probe(
    session: &mut Session,
    addr: InstanceAddr,
    query_timeout: Duration,
    connect_us: Option<u64>,
) -> Result<Observation, ProbeError> {
    let Session { conn, info, batch, heartbeat_in_batch, poisoned } = session;
    let taken_at_ms = unix_ms();
    let started = Instant::now();
    let deadline = started + query_timeout;
    let (sql, expected) = if *heartbeat_in_batch {
        (batch.sql_with_heartbeat.as_str(), 4)
    } else {
        (batch.sql_without_heartbeat.as_str(), 3)
    };

    // An error of the first statement arrives in place of its result: nothing else follows.
    let mut result = bounded(deadline, started, ProbeStage::Variables, conn.query_iter(sql))
        .await?
        .map_err(|e| query_error(ProbeStage::Variables, &batch.statements[0], e))?;

    let mut sets: Vec<Vec<StatusRow>> = Vec::with_capacity(expected);
    // Statement that failed, with its error when the driver surfaced it.
    let mut failure: Option<(usize, Option<mysql_async::Error>)> = None;
    for (i, stage) in STAGES.iter().enumerate().take(expected) {
        let mut rows = Vec::new();
        let read = bounded(deadline, started, *stage, result.for_each(collect_rows(&mut rows))).await?;
        match read {
            Ok(()) => {
                sets.push(rows);
                if i + 1 < expected && result.is_empty() {
                    // The server ended the batch early: statement i+1 failed (see [`Batch`]).
                    failure = Some((i + 1, None));
                    break;
                }
            }
            Err(e) => {
                // The driver reads the next statement's result header when it reaches the end
                // of the current set, so an error met while reading set i belongs to statement
                // i+1 once set i is complete. SHOW statements produce all their rows up front and
                // the variables SELECT exactly one row, so "complete" is decidable here.
                let complete = match stage {
                    ProbeStage::Variables => rows.len() == 1,
                    ProbeStage::ReplicaStatus | ProbeStage::ReplicaHosts => true,
                    _ => false,
                };
                let failed = if complete && i + 1 < expected { i + 1 } else { i };
                if failed == i + 1 {
                    sets.push(rows);
                }
                failure = Some((failed, Some(e)));
                break;
            }
        }
    }
    drop(result);
    let mut latency_us = micros(started.elapsed());

    let mut heartbeat_error = None;
    let mut heartbeat_rows_read: Option<Vec<StatusRow>> = None;
    if let Some((failed, err)) = failure {
        let stage = STAGES[failed];
        let err = match err {
            Some(e) => e,
            None => {
                // The error is still on the wire: the next command's answer is that error, and
                // the command's own answer then stays unread, so the connection is dropped after.
                *poisoned = true;
                match bounded(deadline, started, stage, conn.query_drop("DO 0")).await? {
                    Err(e) => e,
                    Ok(()) => {
                        return Err(ProbeError::Unparseable {
                            stage,
                            message: "the server ended the probe batch early without an error".into(),
                        })
                    }
                }
            }
        };
        match (&err, stage) {
            (mysql_async::Error::Server(se), ProbeStage::Heartbeat) => {
                if matches!(se.code, ER_NO_SUCH_TABLE | ER_BAD_DB_ERROR) {
                    *heartbeat_in_batch = false;
                } else {
                    heartbeat_error = Some(format!("error {}: {}", se.code, se.message));
                }
                heartbeat_rows_read = Some(Vec::new());
            }
            _ => return Err(query_error(stage, &batch.statements[failed], err)),
        }
    } else if expected == 4 {
        heartbeat_rows_read = sets.pop();
    }

    let [vars_rows, status_rows, hosts_rows] =
        <[Vec<StatusRow>; 3]>::try_from(sets).map_err(|s| ProbeError::Unparseable {
            stage: ProbeStage::Variables,
            message: format!("expected 3 result sets, got {}", s.len()),
        })?;
    let v = parse_variables(info, &vars_rows)?;

    if heartbeat_rows_read.is_none() && v.heartbeat_table {
        // The table appeared since the batch was chosen: read it once on its own (a lone
        // statement's error arrives in place of its result, so a failure here is clean), and
        // include it in the batch from now on.
        let sql = batch.statements[3].as_str();
        let read = async {
            let mut r = conn.query_iter(sql).await?;
            let mut rows = Vec::new();
            r.for_each(collect_rows(&mut rows)).await?;
            Ok::<_, mysql_async::Error>(rows)
        };
        match bounded(deadline, started, ProbeStage::Heartbeat, read).await? {
            Ok(rows) => {
                *heartbeat_in_batch = true;
                heartbeat_rows_read = Some(rows);
            }
            Err(mysql_async::Error::Server(se)) if matches!(se.code, ER_NO_SUCH_TABLE | ER_BAD_DB_ERROR) => {}
            Err(mysql_async::Error::Server(se)) => heartbeat_error = Some(format!("error {}: {}", se.code, se.message)),
            Err(e) => return Err(query_error(ProbeStage::Heartbeat, sql, e)),
        }
        latency_us = micros(started.elapsed());
    }
    let heartbeat = heartbeat_rows(&heartbeat_rows_read.unwrap_or_default())?;

    let replication = status_rows
        .iter()
        .map(ReplicaStatus::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProbeError::Unparseable { stage: ProbeStage::ReplicaStatus, message: e.to_string() })?;
    let replicas = hosts_rows
        .iter()
        .map(ConnectedReplica::from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProbeError::Unparseable { stage: ProbeStage::ReplicaHosts, message: e.to_string() })?;

    Ok(Observation {
        addr,
        taken_at_ms,
        latency_us,
        connect_us,
        server: info.clone(),
        server_id: v.server_id,
        server_uuid: v.server_uuid,
        uptime_s: v.uptime_s,
        read_only: v.read_only,
        super_read_only: v.super_read_only,
        log_bin: v.log_bin,
        log_slave_updates: v.log_slave_updates,
        binlog_format: v.binlog_format,
        gtid: v.gtid,
        replication,
        semi_sync: v.semi_sync,
        replicas,
        binlog_dump_threads: v.binlog_dump_threads,
        heartbeat,
        heartbeat_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(v: &str) -> ServerInfo {
        flavor::detect(v, "").expect("valid version")
    }

    #[test]
    fn secrets_never_print() {
        let cfg = ProbeConfig::new("primus", "hunter2");
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        assert_eq!(cfg.password.expose(), "hunter2");
        let p = Prober::new("db:3306".parse().expect("addr"), cfg);
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn batch_is_one_multi_statement_per_dialect() {
        let t = HeartbeatTable::default();
        let maria = batch_for(&info("10.11.6-MariaDB-0+deb12u1"), &t);
        assert_eq!(maria.statements[1], "SHOW ALL SLAVES STATUS");
        assert_eq!(maria.statements[2], "SHOW SLAVE HOSTS");
        assert!(maria.statements[0].contains("@@gtid_current_pos AS gtid_current_pos"));
        assert!(maria.statements[0].contains("@@gtid_binlog_state AS gtid_binlog_state"));
        assert!(!my_batch_mentions_binlog_state(&t));
        assert!(maria.statements[0].contains("information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Uptime'"));
        assert!(maria.statements[0].contains("'rpl_semi_sync_master_enabled'"));
        assert!(!maria.statements[0].contains("super_read_only"));
        assert!(!maria.statements[0].contains("COALESCE"));
        assert_eq!(maria.sql_with_heartbeat.matches("; ").count(), 3);
        assert_eq!(maria.sql_without_heartbeat.matches("; ").count(), 2);
        assert!(maria.statements[0].contains(
            "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'primus' AND TABLE_NAME = 'heartbeat') AS heartbeat_table"
        ));

        let my80 = batch_for(&info("8.0.36"), &t);
        assert!(my80.statements[0].contains("COALESCE((SELECT VARIABLE_VALUE FROM performance_schema.global_variables WHERE VARIABLE_NAME = 'rpl_semi_sync_source_enabled'), (SELECT VARIABLE_VALUE FROM performance_schema.global_variables WHERE VARIABLE_NAME = 'rpl_semi_sync_master_enabled'))"));

        let my84 = batch_for(&info("8.4.0"), &t);
        assert_eq!(my84.statements[1], "SHOW REPLICA STATUS");
        assert_eq!(my84.statements[2], "SHOW REPLICAS");
        assert!(my84.statements[0].contains("@@log_replica_updates AS log_slave_updates"));
        assert!(my84.statements[0].contains("@@super_read_only AS super_read_only"));
        assert!(my84.statements[0].contains("performance_schema.global_status"));
        assert!(my84.statements[0].contains("'rpl_semi_sync_source_enabled'"));
        assert!(!my84.statements[0].contains("master"));

        let my57 = batch_for(&info("5.7.44-log"), &t);
        assert_eq!(my57.statements[1], "SHOW SLAVE STATUS");
        assert!(my57.statements[0].contains("@@log_slave_updates AS log_slave_updates"));
        assert!(!my57.statements[0].contains("COALESCE"));
    }

    fn my_batch_mentions_binlog_state(t: &HeartbeatTable) -> bool {
        ["8.0.36", "8.4.0", "5.7.44-log"].iter().any(|v| batch_for(&info(v), t).statements[0].contains("binlog_state"))
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> StatusRow {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn parses_mariadb_variables_row() {
        let r = row(&[
            ("server_id", Some("2")),
            ("read_only", Some("1")),
            ("log_bin", Some("1")),
            ("log_slave_updates", Some("1")),
            ("binlog_format", Some("ROW")),
            ("uptime", Some("123")),
            ("semi_source_enabled", Some("OFF")),
            ("semi_replica_enabled", Some("ON")),
            ("semi_source_status", Some("OFF")),
            ("semi_replica_status", Some("ON")),
            ("semi_source_clients", Some("0")),
            ("dump_threads", Some("0")),
            ("gtid_current_pos", Some("0-1-42")),
            ("gtid_binlog_pos", Some("0-1-42")),
            ("gtid_slave_pos", Some("0-1-42")),
            ("gtid_strict_mode", Some("1")),
            ("gtid_domain_id", Some("0")),
            ("gtid_binlog_state", Some("0-2-5,0-1-42")),
        ]);
        let v = parse_variables(&info("10.11.6-MariaDB"), std::slice::from_ref(&r)).expect("parses");
        assert_eq!((v.server_id, v.read_only, v.super_read_only, v.uptime_s), (2, true, None, Some(123)));
        assert_eq!(v.semi_sync.replica_active, Some(true));
        assert_eq!(v.gtid.executed().to_string(), "0-1-42");
        match &v.gtid {
            GtidState::MariaDb { strict_mode, binlog_state, .. } => {
                assert!(*strict_mode);
                assert_eq!(binlog_state.to_string(), "0-1-42,0-2-5");
            }
            other => panic!("{other:?}"),
        }

        // NULL (no binlog) reads as empty; garbage is reported, naming the variable.
        let with_state = |v: Option<&str>| {
            let mut row = r.clone();
            for (k, val) in &mut row.0 {
                if k == "gtid_binlog_state" {
                    *val = v.map(str::to_string);
                }
            }
            row
        };
        let null = with_state(None);
        match parse_variables(&info("10.11.6-MariaDB"), &[null]).expect("parses").gtid {
            GtidState::MariaDb { binlog_state, .. } => assert!(binlog_state.is_empty()),
            other => panic!("{other:?}"),
        }
        let bad = with_state(Some("0-1-x"));
        match parse_variables(&info("10.11.6-MariaDB"), &[bad]) {
            Err(ProbeError::Unparseable { message, .. }) => assert!(message.contains("gtid_binlog_state"), "{message}"),
            other => panic!("{:?}", other.map(|v| v.gtid)),
        }
    }

    #[test]
    fn mariadb_gtid_state_without_binlog_state_still_decodes() {
        let state = GtidState::MariaDb {
            current_pos: "0-1-42".parse().expect("valid"),
            binlog_pos: "0-1-42".parse().expect("valid"),
            slave_pos: "0-1-40".parse().expect("valid"),
            strict_mode: true,
            domain_id: 0,
            binlog_state: "0-1-42,0-3-7".parse().expect("valid"),
        };
        let json = serde_json::to_string(&state).expect("serializes");
        assert!(json.contains(r#""binlog_state":"0-1-42,0-3-7""#), "{json}");
        assert_eq!(serde_json::from_str::<GtidState>(&json).expect("parses"), state);
        let old = r#"{"flavor":"mariadb","current_pos":"0-1-42","binlog_pos":"0-1-42","slave_pos":"0-1-40","strict_mode":true,"domain_id":0}"#;
        match serde_json::from_str::<GtidState>(old).expect("older observations decode") {
            GtidState::MariaDb { binlog_state, .. } => assert!(binlog_state.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_mysql_variables_row_without_semi_sync_plugin() {
        let r = row(&[
            ("server_id", Some("1")),
            ("read_only", Some("0")),
            ("log_bin", Some("1")),
            ("log_slave_updates", Some("1")),
            ("binlog_format", Some("ROW")),
            ("uptime", Some("5")),
            ("semi_source_enabled", None),
            ("semi_replica_enabled", None),
            ("semi_source_status", None),
            ("semi_replica_status", None),
            ("semi_source_clients", None),
            ("dump_threads", Some("2")),
            ("server_uuid", Some("3e11fa47-71ca-11e1-9e33-c80aa9429562")),
            ("super_read_only", Some("0")),
            (
                "gtid_executed",
                Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n8a94f357-aab4-11df-86ab-c80aa9429563:1-3"),
            ),
            ("gtid_purged", Some("")),
            ("gtid_mode", Some("ON")),
        ]);
        let v = parse_variables(&info("8.0.36"), &[r]).expect("parses");
        assert_eq!(v.super_read_only, Some(false));
        assert_eq!(v.semi_sync, SemiSyncStatus::default());
        assert_eq!(v.binlog_dump_threads, 2);
        assert_eq!(v.gtid.executed().count(), 8);
        let bad = row(&[("server_id", Some("1")), ("read_only", Some("maybe"))]);
        assert!(matches!(
            parse_variables(&info("8.0.36"), &[bad]),
            Err(ProbeError::Unparseable { stage: ProbeStage::Variables, .. })
        ));
    }

    #[test]
    fn errors_serialize_for_other_coordinators() {
        let e = ProbeError::Timeout { stage: ProbeStage::Variables, after_ms: 2001 };
        let j = serde_json::to_string(&e).expect("serializes");
        assert_eq!(j, r#"{"kind":"timeout","stage":"variables","after_ms":2001}"#);
        assert_eq!(serde_json::from_str::<ProbeError>(&j).expect("parses"), e);
        assert_eq!(e.to_string(), "timed out after 2001 ms during variables query");
    }
}

//! The local mysqld: one persistent, privileged connection with short timeouts,
//! used to check `read_only` and to fence (read_only = ON, then kill clients);
//! and the escalation when mysqld does not answer: SIGKILL from its pid file.

use crate::config::{Escalation, FenceSection, MysqlSection};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use primus_mysql::flavor::{self, ServerInfo};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("mysqld is not running or not accepting connections: {0}")]
    Down(String),
    #[error("mysqld did not answer {what} within {after_ms} ms")]
    Timeout { what: String, after_ms: u128 },
    #[error("{what}: {message}")]
    Sql { what: String, message: String },
}

/// The server's state as read over the local connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writability {
    pub read_only: bool,
    /// MySQL only; `None` on MariaDB.
    pub super_read_only: Option<bool>,
}

impl Writability {
    /// Whether an unprivileged user could write.
    pub fn writable(&self) -> bool {
        !self.read_only
    }
}

/// What one fence did.
#[derive(Debug, Clone, Default)]
pub struct FenceReport {
    /// `read_only` was OFF before the fence.
    pub was_writable: bool,
    pub killed: usize,
}

pub struct LocalMysql {
    opts: OptsBuilder,
    cfg: MysqlSection,
    conn: Option<(Conn, ServerInfo)>,
}

impl LocalMysql {
    pub fn new(cfg: &MysqlSection, password: Option<String>) -> LocalMysql {
        let mut opts = OptsBuilder::default()
            .user(Some(cfg.user.clone()))
            .pass(password)
            .stmt_cache_size(0)
            .wait_timeout(Some(28_800));
        if let Some(s) = &cfg.socket {
            opts = opts.socket(Some(s.to_string_lossy().into_owned()));
        } else {
            opts = opts
                .ip_or_hostname(cfg.host.clone().unwrap_or_default())
                .tcp_port(cfg.port.unwrap_or(3306))
                .prefer_socket(false)
                .tcp_nodelay(true);
        }
        LocalMysql { opts, cfg: cfg.clone(), conn: None }
    }

    /// Drop the connection (after any error or timeout: its state is unknown).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    pub fn flavor(&self) -> Option<&ServerInfo> {
        self.conn.as_ref().map(|(_, i)| i)
    }

    async fn connected(&mut self) -> Result<&mut (Conn, ServerInfo), FenceError> {
        if self.conn.is_none() {
            let t = self.cfg.connect_timeout();
            let mut conn = bounded(t, "connect", Conn::new(self.opts.clone())).await?.map_err(|e| match e {
                mysql_async::Error::Io(io) => FenceError::Down(io.to_string()),
                e => FenceError::Sql { what: "connect".into(), message: e.to_string() },
            })?;
            let q = self.cfg.query_timeout();
            let row: Option<(String, String)> = bounded(q, "version query", conn.query_first(flavor::DETECT_SQL))
                .await?
                .map_err(|e| sql("version query", e))?;
            let (v, c) = row.unwrap_or_default();
            let info = flavor::detect(&v, &c)
                .map_err(|e| FenceError::Sql { what: "version".into(), message: e.to_string() })?;
            tracing::info!(server = %info, "connected to the local mysqld");
            self.conn = Some((conn, info));
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(FenceError::Down("no connection".into())),
        }
    }

    /// read_only (and super_read_only on MySQL), bounded by the query timeout.
    pub async fn writability(&mut self) -> Result<Writability, FenceError> {
        let res = self.writability_inner().await;
        if res.is_err() {
            self.reset();
        }
        res
    }

    async fn writability_inner(&mut self) -> Result<Writability, FenceError> {
        let q = self.cfg.query_timeout();
        let (conn, info) = self.connected().await?;
        let mysql = info.has_super_read_only();
        let sql_text =
            if mysql { "SELECT @@global.read_only, @@global.super_read_only" } else { "SELECT @@global.read_only, 0" };
        let row: Option<(i64, i64)> =
            bounded(q, "read_only query", conn.query_first(sql_text)).await?.map_err(|e| sql("read_only query", e))?;
        let (ro, sro) = row.unwrap_or((0, 0));
        Ok(Writability { read_only: ro != 0, super_read_only: mysql.then_some(sro != 0) })
    }

    /// Make the server read-only and kill every client connection (except
    /// replication, system threads and this one). Each statement is bounded by the
    /// query timeout; the caller bounds the whole.
    pub async fn fence(&mut self) -> Result<FenceReport, FenceError> {
        let res = self.fence_inner().await;
        if res.is_err() {
            self.reset();
        }
        res
    }

    async fn fence_inner(&mut self) -> Result<FenceReport, FenceError> {
        let w = self.writability_inner().await?;
        let was_writable = w.writable();
        let q = self.cfg.query_timeout();
        let (conn, info) = self.connected().await?;
        if !was_writable && w.super_read_only != Some(false) {
            // Already read-only (e.g. demoted by the coordinators, who killed its
            // clients then): nothing to do, and its readers are left alone.
            return Ok(FenceReport { was_writable, killed: 0 });
        }
        let statements = info.set_read_only_sql(true);
        // Kill clients first: `SET GLOBAL read_only = ON` waits for transactions
        // that hold locks, so a client in a long write transaction would delay it.
        let mut killed = 0;
        if was_writable {
            killed += kill_clients(conn, q).await?;
        }
        for s in &statements {
            bounded(q, s, conn.query_drop(s.as_str())).await?.map_err(|e| sql(s, e))?;
        }
        // Whoever connected between the kill and read_only = ON.
        if was_writable {
            killed += kill_clients(conn, q).await?;
        }
        Ok(FenceReport { was_writable, killed })
    }
}

const CLIENTS_SQL: &str = "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
     AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
     AND USER NOT IN ('system user', 'event_scheduler')";

async fn kill_clients(conn: &mut Conn, q: Duration) -> Result<usize, FenceError> {
    let rows: Vec<Row> =
        bounded(q, "processlist", conn.query(CLIENTS_SQL)).await?.map_err(|e| sql("processlist", e))?;
    let ids: Vec<u64> = rows.iter().filter_map(|r| r.get_opt::<u64, _>(0).and_then(Result::ok)).collect();
    let mut n = 0;
    for id in ids {
        let s = format!("KILL CONNECTION {id}");
        match bounded(q, &s, conn.query_drop(s.as_str())).await? {
            Ok(()) => n += 1,
            // 1094 Unknown thread id: it ended on its own meanwhile.
            Err(mysql_async::Error::Server(e)) if e.code == 1094 => {}
            Err(e) => return Err(sql(&s, e)),
        }
    }
    Ok(n)
}

fn sql(what: &str, e: mysql_async::Error) -> FenceError {
    match e {
        mysql_async::Error::Io(io) => FenceError::Down(format!("{what}: {io}")),
        e => FenceError::Sql { what: what.into(), message: e.to_string() },
    }
}

async fn bounded<T>(t: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T, FenceError> {
    tokio::time::timeout(t, fut).await.map_err(|_| FenceError::Timeout { what: what.into(), after_ms: t.as_millis() })
}

/// What escalation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escalated {
    Killed {
        pid: i32,
    },
    /// escalation = "none".
    Disabled,
    /// The pid file names no live mysqld (nothing to kill).
    NotRunning(String),
}

/// SIGKILL the mysqld named in the pid file (it works on a SIGSTOPped process too,
/// so writes cannot resume when it would wake). Checks that the pid really is a
/// mysqld/mariadbd, so a stale pid file cannot make the agent kill another process.
pub fn escalate(f: &FenceSection) -> Result<Escalated, String> {
    if f.escalation == Escalation::None {
        return Ok(Escalated::Disabled);
    }
    let Some(path) = &f.mysqld_pid_file else {
        return Err("fence.mysqld_pid_file is not set".into());
    };
    let pid = match read_pid(path) {
        Ok(p) => p,
        Err(e) => return Ok(Escalated::NotRunning(e)),
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string());
    match comm {
        Ok(c) if c.contains("mysqld") || c.contains("mariadbd") => {}
        Ok(c) => {
            return Ok(Escalated::NotRunning(format!(
                "pid {pid} from {} is {c:?}, not mysqld/mariadbd (stale pid file)",
                path.display()
            )))
        }
        Err(_) => return Ok(Escalated::NotRunning(format!("pid {pid} from {} is not running", path.display()))),
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(|e| format!("SIGKILL pid {pid}: {e}"))?;
    Ok(Escalated::Killed { pid })
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(format!("{} holds no pid ({:?})", path.display(), text.trim())),
    }
}

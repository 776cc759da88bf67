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

    /// The server's `@@pid_file` (where mysqld writes its pid), bounded by the query timeout.
    pub async fn pid_file(&mut self) -> Result<std::path::PathBuf, FenceError> {
        let q = self.cfg.query_timeout();
        let res = async {
            let (conn, _) = self.connected().await?;
            let row: Option<String> = bounded(q, "pid_file query", conn.query_first("SELECT @@global.pid_file"))
                .await?
                .map_err(|e| sql("pid_file query", e))?;
            row.filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from)
                .ok_or_else(|| FenceError::Sql { what: "pid_file query".into(), message: "no pid_file".into() })
        }
        .await;
        if res.is_err() {
            self.reset();
        }
        res
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
    /// mysqld's TCP port is dropped in and out (escalation = "block_port").
    Blocked {
        port: u16,
    },
    /// escalation = "none".
    Disabled,
    /// The pid file names no live mysqld (nothing to kill).
    NotRunning(String),
}

/// SIGKILL the mysqld named in the pid file (it works on a SIGSTOPped process too,
/// so writes cannot resume when it would wake). Checks that the pid really is a
/// mysqld/mariadbd, so a stale pid file cannot make the agent kill another process.
///
/// With escalation = "block_port" it drops mysqld's TCP port instead ([`block_port`]).
pub async fn escalate(f: &FenceSection, port: Option<u16>) -> Result<Escalated, String> {
    match f.escalation {
        Escalation::None => Ok(Escalated::Disabled),
        Escalation::Kill => kill_mysqld(f),
        Escalation::BlockPort => {
            let port = port.ok_or("no mysqld port to block")?;
            block_port(f, port).await.map(|()| Escalated::Blocked { port })
        }
    }
}

fn kill_mysqld(f: &FenceSection) -> Result<Escalated, String> {
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

/// The pid in `path` when it names a live (not zombie) mysqld/mariadbd.
pub fn live_mysqld_pid(path: &Path) -> Option<i32> {
    let pid = read_pid(path).ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state letter follows the command in parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    ((comm.contains("mysqld") || comm.contains("mariadbd")) && !matches!(state, Some('Z' | 'X'))).then_some(pid)
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(format!("{} holds no pid ({:?})", path.display(), text.trim())),
    }
}

/// The nftables table that blocks `port` (one per port: several mysqld on a host).
pub fn block_table(port: u16) -> String {
    format!("primus_fence_{port}")
}

/// The nft script that (re)creates the block: every TCP packet to `port` coming in is
/// refused with a TCP reset, and every packet from `port` going out is dropped except
/// resets — new connections fail at once (clients and coordinators see "connection
/// refused" rather than waiting for a timeout: a failover's best-effort fence of a
/// crashed primary gives up at once instead of after 150 ms), and the replies of
/// connections already open never leave, so a statement mysqld had received before it
/// hung cannot be acknowledged when it wakes (a reset carries no data). The unix
/// socket is not affected (the agent fences over it). Atomic and idempotent (add +
/// delete + create in one transaction).
pub fn block_script(port: u16) -> String {
    let t = block_table(port);
    format!(
        "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n\
         \tchain input {{ type filter hook input priority -300; policy accept; tcp dport {port} reject with tcp reset; }}\n\
         \tchain output {{ type filter hook output priority -300; policy accept; \
         tcp sport {port} tcp flags & rst == rst accept; tcp sport {port} drop; }}\n}}\n"
    )
}

async fn run_cmd(cmd: &Path, args: &[&str], stdin: Option<&str>, timeout: Duration) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::process::Command::new(cmd);
    c.args(args)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{} {}", cmd.display(), args.join(" "));
    let run = async {
        let mut child = c.spawn().map_err(|e| format!("{what}: {e}"))?;
        if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
            w.write_all(text.as_bytes()).await.map_err(|e| format!("{what}: writing its input: {e}"))?;
        }
        let out = child.wait_with_output().await.map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{what}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("{what}: no answer within {} ms", timeout.as_millis()))?
}

/// Drop mysqld's TCP port (see [`block_script`]).
pub async fn block_port(f: &FenceSection, port: u16) -> Result<(), String> {
    run_cmd(&f.nft_path, &["-f", "-"], Some(&block_script(port)), Duration::from_secs(5)).await
}

/// After the server is fenced: reset every TCP connection of `port` that is still
/// open (those from before the block — none can have been made since), so that no
/// reply held back by the block is delivered later, then remove the block.
pub async fn unblock_port(f: &FenceSection, port: u16) -> Result<(), String> {
    let filter = format!("sport = :{port}");
    run_cmd(&f.ss_path, &["-t", "-K", "state", "connected", &filter], None, Duration::from_secs(5)).await?;
    match run_cmd(&f.nft_path, &["delete", "table", "inet", &block_table(port)], None, Duration::from_secs(5)).await {
        Err(e) if e.contains("No such file") => Ok(()),
        other => other,
    }
}

/// Whether this process may use nftables here (the command exists and it may list
/// tables: CAP_NET_ADMIN).
pub async fn nft_usable(f: &FenceSection) -> bool {
    run_cmd(&f.nft_path, &["list", "tables"], None, Duration::from_secs(5)).await.is_ok()
}

/// Whether the block of `port` is in place (a previous agent may have left it).
pub async fn port_blocked(f: &FenceSection, port: u16) -> bool {
    run_cmd(&f.nft_path, &["list", "table", "inet", &block_table(port)], None, Duration::from_secs(5)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_script_refuses_the_port_in_and_lets_only_resets_out_in_one_idempotent_transaction() {
        let s = block_script(3306);
        assert!(s.starts_with("add table inet primus_fence_3306\ndelete table inet primus_fence_3306\n"), "{s}");
        assert!(s.contains("hook input priority -300; policy accept; tcp dport 3306 reject with tcp reset;"), "{s}");
        assert!(
            s.contains("hook output priority -300; policy accept; tcp sport 3306 tcp flags & rst == rst accept; tcp sport 3306 drop;"),
            "{s}"
        );
    }
}

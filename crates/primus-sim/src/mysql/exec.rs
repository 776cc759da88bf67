//! Running the statements of [`super::sql`] on a server: their effects, their errors, and
//! which dialect accepts them (a MySQL 8.4 server refuses `STOP SLAVE`, MariaDB has no
//! `CHANGE REPLICATION SOURCE`...), so that primus sending the wrong spelling to a version
//! fails here as it would on the real server.

use super::replication::{Io, Replica};
use super::server::{Identity, Payload, Server, SessionKey};
use super::sql::{self, ChangeForm, ParseError, ReplicaWord, ShowStatus, Stmt, Threads, Value};
use super::world::{set_read_only, CommitOut, Output, Pending, Reply, Request, WaitKind, Waiter, World};
use super::SqlError;
use primus_mysql::flavor::ServerInfo;
use primus_mysql::gtid::{MariaGtidSet, MySqlGtidSet};
use primus_mysql::status::UsingGtid;
use primus_mysql::{Flavor, HeartbeatRow, StatusRow, Version};
use primus_types::InstanceAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What became of a statement.
enum Run {
    Reply(Reply),
    /// It waits; the answer comes when the wait ends.
    Wait(WaitKind),
    /// A write behind a pending `read_only` change: run again once it is applied.
    Defer,
    Commit(Vec<Payload>, CommitOut),
    /// Not understood: fails, and is recorded.
    NotModelled(String),
    /// No answer (the server is gone).
    Dropped,
}

fn ok() -> Run {
    Run::Reply(Ok(Output::Done))
}

fn err(e: SqlError) -> Run {
    Run::Reply(Err(e))
}

fn product(info: &ServerInfo) -> &'static str {
    match info.flavor {
        Flavor::MariaDb => "MariaDB",
        Flavor::MySql => "MySQL",
    }
}

fn syntax(info: &ServerInfo, near: &str) -> SqlError {
    SqlError::new(
        1064,
        format!(
            "You have an error in your SQL syntax; check the manual that corresponds to your {} server version for the \
             right syntax to use near '{near}' at line 1",
            product(info)
        ),
    )
}

fn unknown_variable(name: &str) -> SqlError {
    SqlError::new(1193, format!("Unknown system variable '{name}'"))
}

fn bad_value(name: &str, v: &Value) -> SqlError {
    SqlError::new(1231, format!("Variable '{name}' can't be set to the value of '{}'", v.text()))
}

fn must_stop(info: &ServerInfo) -> SqlError {
    match info.flavor {
        Flavor::MariaDb => SqlError::new(
            1198,
            "This operation cannot be performed as you have a running slave ''; run STOP SLAVE '' first",
        ),
        Flavor::MySql => SqlError::new(
            3021,
            "This operation cannot be performed with a running replica io thread; run STOP REPLICA IO_THREAD FOR \
             CHANNEL '' first.",
        ),
    }
}

fn mysql_at_least(info: &ServerInfo, major: u16, minor: u16, patch: u16) -> bool {
    info.flavor == Flavor::MySql && info.version >= Version::new(major, minor, patch)
}

fn maria_at_least(info: &ServerInfo, major: u16, minor: u16, patch: u16) -> bool {
    info.flavor == Flavor::MariaDb && info.version >= Version::new(major, minor, patch)
}

/// MySQL 8.4 removed the `MASTER`/`SLAVE` spellings.
fn old_words_ok(info: &ServerInfo) -> bool {
    info.is_mariadb() || !mysql_at_least(info, 8, 4, 0)
}

/// `REPLICA` arrived in MySQL 8.0.22 and MariaDB 10.5.1.
fn new_words_ok(info: &ServerInfo) -> bool {
    mysql_at_least(info, 8, 0, 22) || maria_at_least(info, 10, 5, 1)
}

fn word_ok(info: &ServerInfo, w: ReplicaWord) -> Result<(), SqlError> {
    match w {
        ReplicaWord::Slave if old_words_ok(info) => Ok(()),
        ReplicaWord::Replica if new_words_ok(info) => Ok(()),
        ReplicaWord::Slave => Err(syntax(info, "SLAVE")),
        ReplicaWord::Replica => Err(syntax(info, "REPLICA")),
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

fn row(pairs: Vec<(&str, Option<String>)>) -> StatusRow {
    StatusRow(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn rows(r: Vec<StatusRow>) -> Run {
    Run::Reply(Ok(Output::Rows(r)))
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

impl World {
    /// Runs one statement sent by `ident` on `session`; its answer goes to `reply`.
    pub(crate) fn exec_sql(
        &mut self,
        addr: &InstanceAddr,
        session: Option<SessionKey>,
        ident: Identity,
        sql: String,
        reply: oneshot::Sender<Reply>,
        now: Instant,
    ) {
        let run = match sql::parse(&sql) {
            Ok(stmt) => self.run(addr, session, &ident, stmt, now),
            Err(ParseError::Syntax(m)) => {
                err(SqlError::new(1064, format!("You have an error in your SQL syntax: {m}")))
            }
            Err(ParseError::NotModelled(text)) => Run::NotModelled(text),
        };
        match run {
            Run::Reply(r) => {
                let _ = reply.send(r);
            }
            Run::Wait(kind) => {
                if let Some(s) = self.servers.get_mut(addr) {
                    s.waiters.push(Waiter { session, kind, reply });
                }
            }
            Run::Defer => {
                if let Some(s) = self.servers.get_mut(addr) {
                    s.deferred.push_back(Pending { session, ident, req: Request::Sql(sql), reply });
                }
            }
            Run::Commit(payloads, out) => self.commit(addr, session, payloads, out, reply, now),
            Run::NotModelled(what) => {
                tracing::warn!(server = %addr, statement = %what, "statement not modelled by the simulator");
                self.unmodelled.push((addr.clone(), what.clone()));
                let _ = reply
                    .send(Err(SqlError::not_modelled(format!("primus-sim does not model this statement: {what}"))));
            }
            Run::Dropped => {}
        }
    }

    fn run(
        &mut self,
        addr: &InstanceAddr,
        session: Option<SessionKey>,
        ident: &Identity,
        stmt: Stmt,
        now: Instant,
    ) -> Run {
        let read_only_admin = self.cfg.coordinator_read_only_admin;
        let waits_for_commits = self.cfg.read_only_waits_for_commits;
        // Statements that read more than this server.
        match &stmt {
            Stmt::ShowStatus(form) => {
                let Some(s) = self.servers.get(addr) else { return Run::Dropped };
                let info = &s.info;
                let accepted = match form {
                    ShowStatus::AllSlaves => info.is_mariadb(),
                    ShowStatus::Slave => old_words_ok(info),
                    ShowStatus::Replica => new_words_ok(info),
                };
                if !accepted {
                    return err(syntax(
                        info,
                        if *form == ShowStatus::Replica { "REPLICA STATUS" } else { "SLAVE STATUS" },
                    ));
                }
                return rows(self.replica_status_rows(addr, *form == ShowStatus::AllSlaves, now));
            }
            Stmt::ShowHosts { replicas } => {
                let Some(s) = self.servers.get(addr) else { return Run::Dropped };
                let accepted = if *replicas { new_words_ok(&s.info) } else { old_words_ok(&s.info) };
                if !accepted {
                    return err(syntax(&s.info, if *replicas { "REPLICAS" } else { "SLAVE HOSTS" }));
                }
                return rows(self.hosts_rows(addr));
            }
            Stmt::SelectDumpThreadCount => {
                let n = self.dump_threads(addr).len();
                return rows(vec![row(vec![("COUNT(*)", Some(n.to_string()))])]);
            }
            Stmt::SelectSemiSyncWaiters => {
                // Sessions in `Waiting for semi-sync ACK from slave` for 2 s or more.
                let Some(s) = self.servers.get(addr) else { return Run::Dropped };
                let ids = s.waiters.iter().filter_map(|w| match (&w.kind, w.session) {
                    (WaitKind::SemiSync { since, .. }, Some(k))
                        if now.saturating_duration_since(*since) >= Duration::from_secs(2) =>
                    {
                        Some(row(vec![("ID", Some(k.id.to_string()))]))
                    }
                    _ => None,
                });
                return rows(ids.collect());
            }
            Stmt::SelectBinlogPos => {
                let Some(s) = self.servers.get(addr) else { return Run::Dropped };
                if !s.is_maria() {
                    return err(unknown_variable("gtid_binlog_pos"));
                }
                let pos = super::server::position(&s.binlog_pos).to_string();
                return rows(vec![row(vec![("pos", Some(pos))])]);
            }
            Stmt::Kill { id } => return self.kill(addr, session, *id, now),
            _ => {}
        }
        let Some(s) = self.servers.get_mut(addr) else { return Run::Dropped };
        let info = s.info.clone();
        match stmt {
            Stmt::SetSessionSqlMode => ok(),
            Stmt::SetGlobal { var, value } => set_global(s, &var, &value, waits_for_commits),
            Stmt::Stop { word, threads } => {
                if let Err(e) = word_ok(&info, word) {
                    return err(e);
                }
                if let Some(r) = s.repl.as_mut() {
                    if threads != Threads::Sql {
                        r.stop_io();
                    }
                    if threads != Threads::Io {
                        r.sql_running = false;
                    }
                }
                ok()
            }
            Stmt::Start { word, threads } => {
                if let Err(e) = word_ok(&info, word) {
                    return err(e);
                }
                let maria = s.is_maria();
                let Some(r) = s.repl.as_mut() else {
                    return err(SqlError::new(
                        1200,
                        "Misconfigured slave: MASTER_HOST was not set; Fix in config file or with CHANGE MASTER TO",
                    ));
                };
                if (maria && r.use_gtid == UsingGtid::No) || (!maria && !r.auto_position) {
                    return Run::NotModelled("START SLAVE of file/position replication (no GTID positioning)".into());
                }
                if threads == Threads::Both && maria && r.io_stopped() && !r.sql_running {
                    // MariaDB with GTID: the relay log is discarded and fetched again from
                    // the GTID position.
                    r.purge_relay();
                }
                if threads != Threads::Sql {
                    r.start_io(now);
                }
                if threads != Threads::Io {
                    r.start_sql(now);
                }
                ok()
            }
            Stmt::ResetReplica { word, all } => {
                if let Err(e) = word_ok(&info, word) {
                    return err(e);
                }
                if s.repl.as_ref().is_some_and(|r| !r.io_stopped() || r.sql_running) {
                    return err(must_stop(&info));
                }
                if all {
                    s.repl = None;
                } else if let Some(r) = s.repl.as_mut() {
                    {
                        r.purge_relay();
                        r.last_io_error = None;
                        r.last_sql_error = None;
                        r.read_coord = None;
                        r.exec_coord = None;
                        r.received_heartbeats = 0;
                    }
                }
                ok()
            }
            Stmt::ResetMaster => {
                if !old_words_ok(&info) {
                    return err(syntax(&info, "MASTER"));
                }
                reset_master(s);
                ok()
            }
            Stmt::ChangeSource { form, options } => change_source(s, form, &options, now),
            Stmt::DoSleep { secs: n } => {
                if n <= 0.0 {
                    ok()
                } else {
                    Run::Wait(WaitKind::Sleep { until: now + secs(n) })
                }
            }
            Stmt::DoMasterGtidWait { pos, timeout_s } => {
                if !s.is_maria() {
                    return err(SqlError::new(1305, "FUNCTION MASTER_GTID_WAIT does not exist"));
                }
                let Ok(target) = pos.parse::<MariaGtidSet>() else {
                    return err(SqlError::new(1941, "Could not parse GTID list"));
                };
                let target = target.last_gtids();
                let until = timeout_s.map(|t| now + secs(t));
                if target.iter().all(|g| s.slave_pos.get(&g.domain_id).is_some_and(|p| p.seq_no >= g.seq_no)) {
                    return ok();
                }
                // `DO` discards MASTER_GTID_WAIT's result: a timeout (-1) is no error.
                Run::Wait(WaitKind::MariaGtidWait { target, until })
            }
            Stmt::DoWaitForExecutedGtidSet { set, timeout_s } => {
                if s.is_maria() {
                    return err(SqlError::new(1305, "FUNCTION WAIT_FOR_EXECUTED_GTID_SET does not exist"));
                }
                let Ok(target) = set.parse::<MySqlGtidSet>() else {
                    return err(SqlError::new(1772, format!("Malformed GTID set specification '{set}'.")));
                };
                if s.my_executed.contains(&target) {
                    return ok();
                }
                // `DO` discards the result: a timeout (1) is no error.
                Run::Wait(WaitKind::MySqlGtidWait { target, until: timeout_s.map(|t| now + secs(t)) })
            }
            Stmt::SelectVersion => rows(vec![row(vec![
                ("@@version", Some(info.version_string.clone())),
                ("@@version_comment", Some(info.version_comment.clone())),
            ])]),
            Stmt::SelectReadOnly { super_read_only } => {
                if super_read_only && !info.has_super_read_only() {
                    return err(unknown_variable("super_read_only"));
                }
                let second = if super_read_only {
                    ("@@global.super_read_only", Some(flag(s.super_read_only)))
                } else {
                    ("0", Some("0".to_string()))
                };
                rows(vec![row(vec![("@@global.read_only", Some(flag(s.read_only))), second])])
            }
            Stmt::SelectPidFile => rows(vec![row(vec![("@@global.pid_file", Some(s.cfg.pid_file.clone()))])]),
            Stmt::SelectClientIds => {
                let own = session.map(|k| k.id);
                let ids = s.sessions.keys().filter(|id| Some(**id) != own);
                rows(ids.map(|id| row(vec![("ID", Some(id.to_string()))])).collect())
            }
            Stmt::SelectHeartbeat { table } => {
                if let Err(e) = s.data.table_exists(table.database(), table.table()) {
                    return err(e);
                }
                rows(heartbeat_rows(s, table.database(), table.table()))
            }
            Stmt::CreateDatabase { table } => {
                write(s, ident, read_only_admin, vec![Payload::CreateDatabase { db: table.database().to_string() }])
            }
            Stmt::CreateTable { table } => write(
                s,
                ident,
                read_only_admin,
                vec![Payload::CreateTable { db: table.database().to_string(), table: table.table().to_string() }],
            ),
            Stmt::UpsertHeartbeat { table, cluster, epoch, ts_ms, coordinator } => {
                if s.read_only_pending() {
                    return Run::Defer;
                }
                if let Some(e) = s.write_refused(ident.privileged, read_only_admin) {
                    return err(e);
                }
                let (db, t) = (table.database().to_string(), table.table().to_string());
                if let Err(e) = s.data.table_exists(&db, &t) {
                    return err(e);
                }
                let old = s.data.tables.get(&(db.clone(), t.clone())).and_then(|rows| rows.get(&cluster)).cloned();
                let new = match &old {
                    None => HeartbeatRow { cluster, epoch, ts_ms, coordinator },
                    // The upsert's IFs: an older epoch leaves the row as it is.
                    Some(o) if epoch >= o.epoch => HeartbeatRow { cluster, epoch, ts_ms, coordinator },
                    Some(o) => o.clone(),
                };
                let affected = match &old {
                    None => 1,
                    Some(o) if *o == new => 0,
                    Some(_) => 2,
                };
                if affected == 0 {
                    // Nothing changed: nothing is binlogged.
                    return Run::Reply(Ok(Output::Affected(0)));
                }
                Run::Commit(vec![Payload::Heartbeat { db, table: t, row: new }], CommitOut::Affected(affected))
            }
            Stmt::ShowStatus(_)
            | Stmt::ShowHosts { .. }
            | Stmt::SelectDumpThreadCount
            | Stmt::SelectSemiSyncWaiters
            | Stmt::SelectBinlogPos
            | Stmt::Kill { .. } => Run::Dropped,
        }
    }

    /// `KILL [CONNECTION] id`.
    fn kill(&mut self, addr: &InstanceAddr, session: Option<SessionKey>, id: u64, now: Instant) -> Run {
        let Some(s) = self.servers.get(addr) else { return Run::Dropped };
        let key = SessionKey { incarnation: s.incarnation, id };
        if s.sessions.contains_key(&id) {
            self.kill_session(addr, key);
            // Killing one's own connection: an error, and the connection is gone.
            return if session == Some(key) {
                err(SqlError::new(1317, "Query execution was interrupted"))
            } else {
                ok()
            };
        }
        // A binlog dump thread: its replica reconnects.
        let replica = self.dump_threads(addr).into_iter().find(|(_, tid)| *tid == id).map(|(r, _)| r);
        if let Some(r) = replica.and_then(|r| self.servers.get_mut(&r)).and_then(|r| r.repl.as_mut()) {
            r.io = Io::Connecting { next_attempt: now, hanging: None };
            return ok();
        }
        err(SqlError::new(1094, format!("Unknown thread id: {id}")))
    }
}

/// A write statement of a privileged session (the heartbeat DDL).
fn write(s: &mut Server, ident: &Identity, read_only_admin: bool, payloads: Vec<Payload>) -> Run {
    if s.read_only_pending() {
        return Run::Defer;
    }
    if let Some(e) = s.write_refused(ident.privileged, read_only_admin) {
        return err(e);
    }
    for p in &payloads {
        if let Err(e) = s.data.check(p) {
            return err(e);
        }
    }
    // `IF NOT EXISTS` DDL is binlogged whether or not the object existed.
    Run::Commit(payloads, CommitOut::Done)
}

pub(crate) fn heartbeat_rows(s: &Server, db: &str, table: &str) -> Vec<StatusRow> {
    let Some(t) = s.data.tables.get(&(db.to_string(), table.to_string())) else { return Vec::new() };
    t.values()
        .map(|h| {
            row(vec![
                ("cluster", Some(h.cluster.clone())),
                ("epoch", Some(h.epoch.to_string())),
                ("ts_ms", Some(h.ts_ms.to_string())),
                ("coordinator", Some(h.coordinator.to_string())),
            ])
        })
        .collect()
}

fn set_global(s: &mut Server, var: &str, value: &Value, waits_for_commits: bool) -> Run {
    let info = s.info.clone();
    let as_bool = || value.as_bool().ok_or_else(|| bad_value(var, value));
    match var {
        "read_only" | "super_read_only" => {
            let is_super = var == "super_read_only";
            if is_super && !info.has_super_read_only() {
                return err(unknown_variable(var));
            }
            let on = match as_bool() {
                Ok(b) => b,
                Err(e) => return err(e),
            };
            if on && !s.read_only && waits_for_commits && s.has_semi_waiters() {
                // The global read lock waits for commits in progress (here: waiting for a
                // semi-sync acknowledgement), and new writes queue behind it.
                return Run::Wait(WaitKind::ReadOnly { super_read_only: is_super });
            }
            set_read_only(s, is_super, on);
            ok()
        }
        "gtid_strict_mode" if s.is_maria() => match as_bool() {
            Ok(b) => {
                s.strict_mode = b;
                ok()
            }
            Err(e) => err(e),
        },
        "gtid_slave_pos" if s.is_maria() => set_gtid_slave_pos(s, value),
        _ => {
            let n = info.semi_sync_names();
            let wait_point = n.source_enabled.replace("_enabled", "_wait_point");
            let semi = [n.source_enabled, n.replica_enabled, n.source_timeout, wait_point.as_str()];
            if !semi.contains(&var) {
                if var.starts_with("rpl_semi_sync_") || var == "gtid_slave_pos" || var == "gtid_strict_mode" {
                    return err(unknown_variable(var));
                }
                return Run::NotModelled(format!("SET GLOBAL {var} = {}", value.text()));
            }
            if !s.cfg.semi_sync_plugin {
                return err(unknown_variable(var));
            }
            if var == n.source_enabled {
                match as_bool() {
                    Ok(on) => {
                        if on && !s.semi.source_enabled {
                            s.semi.active = true;
                        }
                        if !on {
                            s.semi.active = false;
                        }
                        s.semi.source_enabled = on;
                    }
                    Err(e) => return err(e),
                }
            } else if var == n.replica_enabled {
                match as_bool() {
                    // Takes effect when the IO thread next connects.
                    Ok(on) => s.semi.replica_enabled = on,
                    Err(e) => return err(e),
                }
            } else if var == n.source_timeout {
                match value.as_u64() {
                    Some(ms) => s.semi.timeout_ms = ms,
                    None => return err(bad_value(var, value)),
                }
            } else {
                s.semi.wait_point = match value.text().to_ascii_uppercase().as_str() {
                    "AFTER_SYNC" => super::WaitPoint::AfterSync,
                    "AFTER_COMMIT" => super::WaitPoint::AfterCommit,
                    _ => return err(bad_value(var, value)),
                };
            }
            ok()
        }
    }
}

/// MariaDB `SET GLOBAL gtid_slave_pos`: replication stopped; under `gtid_strict_mode` not
/// behind (or missing a domain of) the binary log.
fn set_gtid_slave_pos(s: &mut Server, value: &Value) -> Run {
    if s.repl.as_ref().is_some_and(|r| !r.io_stopped() || r.sql_running) {
        return err(must_stop(&s.info));
    }
    let Ok(pos) = value.text().parse::<MariaGtidSet>() else {
        return err(SqlError::new(1941, "Could not parse GTID list"));
    };
    if !pos.is_position() {
        return err(SqlError::new(1941, "Could not parse GTID list"));
    }
    if s.strict_mode {
        for (d, b) in &s.binlog_pos {
            match pos.last(*d) {
                None => {
                    return err(SqlError::new(
                        1948,
                        format!(
                            "Specified value for @@gtid_slave_pos contains no value for replication domain {d}. This \
                             conflicts with the binary log which contains GTID {b}. If MASTER_GTID_POS=CURRENT_POS is \
                             used, the binlog position will override the new value of @@gtid_slave_pos"
                        ),
                    ))
                }
                Some(g) if g.seq_no < b.seq_no => {
                    return err(SqlError::new(
                        1947,
                        format!(
                        "Specified GTID {g} conflicts with the binary log which contains a more recent GTID {b}. If \
                             MASTER_GTID_POS=CURRENT_POS is used, the binlog position will override the new value of \
                             @@gtid_slave_pos"
                    ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    s.slave_pos = pos.last_gtids().into_iter().filter(|g| g.seq_no > 0).map(|g| (g.domain_id, g)).collect();
    ok()
}

fn reset_master(s: &mut Server) {
    s.binlog.entries.clear();
    s.binlog.generation += 1;
    s.binlog.file_no = 1;
    s.binlog.pos = super::server::BINLOG_START_POS;
    s.acked_upto = 0;
    s.binlog_state = Default::default();
    s.binlog_pos.clear();
    if !s.is_maria() {
        // MySQL: gtid_executed and gtid_purged are emptied too.
        s.my_executed = MySqlGtidSet::new();
        s.my_binlogged = MySqlGtidSet::new();
    }
}

/// `CHANGE MASTER TO` / `CHANGE REPLICATION SOURCE TO`.
fn change_source(s: &mut Server, form: ChangeForm, options: &[(String, Value)], now: Instant) -> Run {
    let info = s.info.clone();
    let (accepted, prefix, near) = match form {
        ChangeForm::Master => (old_words_ok(&info), "MASTER_", "MASTER"),
        ChangeForm::ReplicationSource => (mysql_at_least(&info, 8, 0, 23), "SOURCE_", "REPLICATION SOURCE"),
    };
    if !accepted {
        return err(syntax(&info, near));
    }
    if s.repl.as_ref().is_some_and(|r| !r.io_stopped() || r.sql_running) {
        return err(must_stop(&info));
    }
    let old = s.repl.as_ref();
    let mut host = old.map(|r| r.source.host().to_string());
    let mut port = old.map_or(3306, |r| r.source.port());
    let mut user = old.map(|r| r.user.clone()).unwrap_or_default();
    let mut password = old.map(|r| r.password.clone()).unwrap_or_default();
    let mut use_gtid = old.map_or(UsingGtid::SlavePos, |r| r.use_gtid);
    let mut auto_position = old.is_some_and(|r| r.auto_position);
    let mut heartbeat = old.map(|r| r.heartbeat_period);
    let mut retry = old.map_or(Duration::from_secs(60), |r| r.connect_retry);
    for (name, value) in options {
        let Some(opt) = name.strip_prefix(prefix) else { return err(syntax(&info, name)) };
        let bad = || err(SqlError::new(1210, format!("Incorrect arguments to {name}")));
        match opt {
            "HOST" => host = Some(value.text().to_string()),
            "PORT" => match value.as_u64().and_then(|p| u16::try_from(p).ok()) {
                Some(p) => port = p,
                None => return bad(),
            },
            "USER" => user = value.text().to_string(),
            "PASSWORD" => password = value.text().to_string(),
            "USE_GTID" if info.is_mariadb() => {
                use_gtid = match value.text().to_ascii_lowercase().as_str() {
                    "slave_pos" => UsingGtid::SlavePos,
                    "current_pos" => UsingGtid::CurrentPos,
                    "no" => UsingGtid::No,
                    _ => return bad(),
                }
            }
            "AUTO_POSITION" if !info.is_mariadb() => match value.as_bool() {
                Some(b) => auto_position = b,
                None => return bad(),
            },
            "HEARTBEAT_PERIOD" => match value.as_f64() {
                Some(p) => heartbeat = Some(secs(p)),
                None => return bad(),
            },
            "CONNECT_RETRY" => match value.as_u64() {
                Some(r) => retry = Duration::from_secs(r),
                None => return bad(),
            },
            _ => return Run::NotModelled(format!("CHANGE MASTER option {name}")),
        }
    }
    let Some(host) = host else { return Run::NotModelled("CHANGE MASTER without MASTER_HOST".into()) };
    let Ok(source) = InstanceAddr::new(host.clone(), port) else {
        return err(SqlError::new(1210, format!("Incorrect arguments to {prefix}HOST: '{host}'")));
    };
    let heartbeat = heartbeat.unwrap_or(s.cfg.slave_net_timeout / 2);
    let mut r = Replica::new(source, heartbeat, now);
    r.user = user;
    r.password = password;
    r.use_gtid = use_gtid;
    r.auto_position = auto_position;
    r.connect_retry = retry;
    s.repl = Some(r);
    ok()
}

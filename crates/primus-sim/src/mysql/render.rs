//! What servers show: `SHOW ... STATUS` and `SHOW SLAVE HOSTS` rows with each flavor's and
//! version's column names, the process list, and whole probe observations.
//!
//! A probe's observation is assembled the way `primus_mysql::Prober` assembles it: the
//! replication rows and replica hosts are rendered as result rows and parsed back with
//! `ReplicaStatus::from_row` / `ConnectedReplica::from_row` / `HeartbeatRow::from_row`, so a
//! column the parser cannot read fails the simulated probe as it would fail the real one.

use super::exec::heartbeat_rows;
use super::replication::{Io, Replica};
use super::server::Server;
use super::world::World;
use super::{Peer, ProcessRow};
use primus_mysql::heartbeat::HeartbeatTable;
use primus_mysql::probe::SemiSyncStatus;
use primus_mysql::status::UsingGtid;
use primus_mysql::{ConnectedReplica, Flavor, HeartbeatRow, Observation, ReplicaStatus, StatusRow, Version};
use primus_types::InstanceAddr;
use tokio::time::Instant;

/// MySQL `Last_IO_Error_Timestamp` format (`YYMMDD hh:mm:ss`), from unix ms.
pub(crate) fn mysql_timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{:02}{m:02}{d:02} {:02}:{:02}:{:02}", y % 100, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn io_running(r: &Replica) -> &'static str {
    match r.io {
        Io::Stopped => "No",
        Io::Connecting { .. } => "Connecting",
        Io::Connected(_) => "Yes",
    }
}

impl World {
    /// `(replica, dump thread id)` of every replica connected to `source` now.
    pub(crate) fn dump_threads(&self, source: &InstanceAddr) -> Vec<(InstanceAddr, u64)> {
        let Some(src) = self.servers.get(source) else { return Vec::new() };
        self.servers
            .iter()
            .filter_map(|(a, s)| {
                let r = s.repl.as_ref().filter(|r| &r.source == source)?;
                let c = r.connected()?;
                (c.source_incarnation == src.incarnation && c.source_generation == src.binlog.generation)
                    .then(|| (a.clone(), c.dump_thread_id))
            })
            .collect()
    }

    /// The replication status rows of `addr` (none: not a replica). `all`: MariaDB's
    /// `SHOW ALL SLAVES STATUS` (with `Connection_name`, heartbeat counters, `Gtid_Slave_Pos`).
    pub(crate) fn replica_status_rows(&self, addr: &InstanceAddr, all: bool, now: Instant) -> Vec<StatusRow> {
        let Some(s) = self.servers.get(addr) else { return Vec::new() };
        let Some(r) = &s.repl else { return Vec::new() };
        vec![self.status_row(s, r, all, now)]
    }

    fn status_row(&self, s: &Server, r: &Replica, all: bool, now: Instant) -> StatusRow {
        let info = &s.info;
        let maria = info.flavor == Flavor::MariaDb;
        // Column names: MySQL 8.0.22 renamed them; state texts changed in 8.0.26.
        let new = !maria && info.version >= Version::new(8, 0, 22);
        let new_texts = !maria && info.version >= Version::new(8, 0, 26);
        let n = |new_name: &'static str, old_name: &'static str| if new { new_name } else { old_name };
        let (source_word, replica_word) = if new_texts { ("source", "Replica") } else { ("master", "Slave") };
        let io_state = match r.io {
            Io::Stopped => String::new(),
            Io::Connecting { .. } => format!("Connecting to {source_word}"),
            Io::Connected(_) => format!("Waiting for {source_word} to send event"),
        };
        let sql_state = if !r.sql_running {
            String::new()
        } else if r.relay.is_empty() {
            format!("{replica_word} has read all relay log; waiting for more updates")
        } else {
            "Reading event from the relay log".to_string()
        };
        let behind = if !r.sql_running {
            None
        } else if let Some(head) = r.relay.front() {
            self.txn(head.txn).map(|t| now.saturating_duration_since(t.origin_at).as_secs())
        } else if matches!(r.io, Io::Connected(_)) {
            Some(0)
        } else {
            None
        };
        let coord = |c: Option<(u32, u64)>| match c {
            Some((no, pos)) => (s.binlog_file(no), pos.to_string()),
            None => (String::new(), "4".to_string()),
        };
        let (read_file, read_pos) = coord(r.read_coord);
        let (exec_file, exec_pos) = coord(r.exec_coord);
        let relay_pos = (4 + r.executed_entries * 300).to_string();
        let (io_errno, io_error, io_ts) = match &r.last_io_error {
            Some(e) => (e.errno.to_string(), e.message.clone(), mysql_timestamp(e.at_ms)),
            None => ("0".to_string(), String::new(), String::new()),
        };
        let (sql_errno, sql_error, sql_ts) = match &r.last_sql_error {
            Some(e) => (e.errno.to_string(), e.message.clone(), mysql_timestamp(e.at_ms)),
            None => ("0".to_string(), String::new(), String::new()),
        };
        let some = |v: String| Some(v);
        let mut cols: Vec<(&str, Option<String>)> = Vec::new();
        if maria && all {
            cols.push(("Connection_name", some(String::new())));
            cols.push(("Slave_SQL_State", some(sql_state.clone())));
        }
        cols.extend([
            (n("Replica_IO_State", "Slave_IO_State"), some(io_state)),
            (n("Source_Host", "Master_Host"), some(r.source.host().to_string())),
            (n("Source_User", "Master_User"), some(r.user.clone())),
            (n("Source_Port", "Master_Port"), some(r.source.port().to_string())),
            ("Connect_Retry", some(r.connect_retry.as_secs().to_string())),
            (n("Source_Log_File", "Master_Log_File"), some(read_file)),
            (n("Read_Source_Log_Pos", "Read_Master_Log_Pos"), some(read_pos)),
            ("Relay_Log_File", some("relay-bin.000002".to_string())),
            ("Relay_Log_Pos", some(relay_pos)),
            (n("Relay_Source_Log_File", "Relay_Master_Log_File"), some(exec_file)),
            (n("Replica_IO_Running", "Slave_IO_Running"), some(io_running(r).to_string())),
            (n("Replica_SQL_Running", "Slave_SQL_Running"), some(if r.sql_running { "Yes" } else { "No" }.to_string())),
            ("Replicate_Do_DB", some(String::new())),
            ("Replicate_Ignore_DB", some(String::new())),
            ("Last_Errno", some(sql_errno.clone())),
            ("Last_Error", some(sql_error.clone())),
            ("Skip_Counter", some("0".to_string())),
            (n("Exec_Source_Log_Pos", "Exec_Master_Log_Pos"), some(exec_pos)),
            ("Relay_Log_Space", some((256 + r.relay_space).to_string())),
            ("Until_Condition", some("None".to_string())),
            (n("Seconds_Behind_Source", "Seconds_Behind_Master"), behind.map(|b| b.to_string())),
            ("Last_IO_Errno", some(io_errno)),
            ("Last_IO_Error", some(io_error)),
            ("Last_SQL_Errno", some(sql_errno)),
            ("Last_SQL_Error", some(sql_error)),
            ("Replicate_Ignore_Server_Ids", some(String::new())),
            (n("Source_Server_Id", "Master_Server_Id"), some(r.source_server_id.unwrap_or(0).to_string())),
        ]);
        if maria {
            let using = match r.use_gtid {
                UsingGtid::No => "No",
                UsingGtid::CurrentPos => "Current_Pos",
                UsingGtid::SlavePos => "Slave_Pos",
            };
            let io_pos = r.io_pos.as_ref().map(super::server::position).unwrap_or_default();
            cols.extend([
                ("Using_Gtid", some(using.to_string())),
                ("Gtid_IO_Pos", some(io_pos.to_string())),
                ("Parallel_Mode", some("optimistic".to_string())),
                ("SQL_Delay", some("0".to_string())),
                ("SQL_Remaining_Delay", None),
                ("Slave_SQL_Running_State", some(sql_state)),
            ]);
            if all {
                cols.extend([
                    ("Retried_transactions", some("0".to_string())),
                    ("Max_relay_log_size", some("1073741824".to_string())),
                    ("Executed_log_entries", some(r.executed_entries.to_string())),
                    ("Slave_received_heartbeats", some(r.received_heartbeats.to_string())),
                    ("Slave_heartbeat_period", some(format!("{:.3}", r.heartbeat_period.as_secs_f64()))),
                    ("Gtid_Slave_Pos", some(super::server::position(&s.slave_pos).to_string())),
                ]);
            }
        } else {
            cols.extend([
                (n("Source_UUID", "Master_UUID"), some(r.source_uuid.map(|u| u.to_string()).unwrap_or_default())),
                ("SQL_Delay", some("0".to_string())),
                ("SQL_Remaining_Delay", None),
                (n("Replica_SQL_Running_State", "Slave_SQL_Running_State"), some(sql_state)),
                (n("Source_Retry_Count", "Master_Retry_Count"), some("86400".to_string())),
                ("Last_IO_Error_Timestamp", some(io_ts)),
                ("Last_SQL_Error_Timestamp", some(sql_ts)),
                ("Retrieved_Gtid_Set", some(r.retrieved.to_string())),
                ("Executed_Gtid_Set", some(s.my_executed.to_string())),
                ("Auto_Position", some(if r.auto_position { "1" } else { "0" }.to_string())),
                ("Channel_Name", some(String::new())),
            ]);
        }
        StatusRow(cols.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// `SHOW SLAVE HOSTS` / `SHOW REPLICAS` of `addr`: every replica connected to it (they all
    /// set `report_host`/`report_port` to their own address).
    pub(crate) fn hosts_rows(&self, addr: &InstanceAddr) -> Vec<StatusRow> {
        let Some(s) = self.servers.get(addr) else { return Vec::new() };
        let new = !s.is_maria() && s.info.version >= Version::new(8, 0, 22);
        self.dump_threads(addr)
            .iter()
            .filter_map(|(r, _)| self.servers.get(r))
            .map(|r| {
                let mut cols = vec![
                    (if new { "Server_Id" } else { "Server_id" }, Some(r.cfg.server_id.to_string())),
                    ("Host", Some(r.cfg.addr.host().to_string())),
                    ("Port", Some(r.cfg.addr.port().to_string())),
                    (if new { "Source_Id" } else { "Master_id" }, Some(s.cfg.server_id.to_string())),
                ];
                if !s.is_maria() {
                    cols.push((
                        if new { "Replica_UUID" } else { "Slave_UUID" },
                        Some(r.uuid.map(|u| u.to_string()).unwrap_or_default()),
                    ));
                }
                StatusRow(cols.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            })
            .collect()
    }

    /// What a probe of `addr` reads now (see the module docs).
    pub(crate) fn observation(
        &self,
        addr: &InstanceAddr,
        table: &HeartbeatTable,
        now: Instant,
    ) -> Result<Observation, String> {
        let s = self.servers.get(addr).ok_or_else(|| format!("no simulated server {addr}"))?;
        let replication = self
            .replica_status_rows(addr, s.is_maria(), now)
            .iter()
            .map(ReplicaStatus::from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("replica status: {e}"))?;
        let replicas = self
            .hosts_rows(addr)
            .iter()
            .map(ConnectedReplica::from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("replica hosts: {e}"))?;
        let heartbeat = if s.data.table_exists(table.database(), table.table()).is_ok() {
            heartbeat_rows(s, table.database(), table.table())
                .iter()
                .map(HeartbeatRow::from_row)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("heartbeat: {e}"))?
        } else {
            Vec::new()
        };
        let dumps = self.dump_threads(addr);
        let semi_clients = dumps
            .iter()
            .filter(|(r, _)| {
                self.servers.get(r).and_then(|r| r.repl.as_ref()).and_then(Replica::connected).is_some_and(|c| c.semi)
            })
            .count();
        let semi_sync = if s.cfg.semi_sync_plugin {
            let replica_active =
                s.repl.as_ref().and_then(Replica::connected).is_some_and(|c| c.semi) && s.semi.replica_enabled;
            SemiSyncStatus {
                source_enabled: Some(s.semi.source_enabled),
                replica_enabled: Some(s.semi.replica_enabled),
                source_active: Some(s.semi.source_enabled && s.semi.active),
                replica_active: Some(replica_active),
                source_clients: Some(semi_clients as u64),
            }
        } else {
            SemiSyncStatus::default()
        };
        Ok(Observation {
            addr: addr.clone(),
            taken_at_ms: self.wall_ms(now),
            latency_us: 0,
            connect_us: None,
            server: s.info.clone(),
            server_id: s.cfg.server_id,
            server_uuid: s.uuid.map(|u| u.to_string()),
            uptime_s: Some(now.saturating_duration_since(s.started_at).as_secs()),
            read_only: s.read_only,
            super_read_only: s.info.has_super_read_only().then_some(s.super_read_only),
            log_bin: s.cfg.log_bin,
            log_slave_updates: s.cfg.log_slave_updates,
            binlog_format: Some("ROW".into()),
            gtid: s.gtid_state(),
            replication,
            semi_sync,
            replicas,
            binlog_dump_threads: u32::try_from(dumps.len()).unwrap_or(u32::MAX),
            heartbeat,
            heartbeat_error: None,
        })
    }

    /// `addr`'s process list: client sessions and binlog dump threads.
    pub(crate) fn processlist(&self, addr: &InstanceAddr) -> Vec<ProcessRow> {
        let Some(s) = self.servers.get(addr) else { return Vec::new() };
        let mut out: Vec<ProcessRow> = s
            .sessions
            .iter()
            .map(|(id, sess)| {
                let busy = s.waiters.iter().any(|w| w.session.is_some_and(|k| k.id == *id));
                ProcessRow {
                    id: *id,
                    user: sess.ident.user.clone(),
                    command: if busy { "Query" } else { "Sleep" }.to_string(),
                    peer: Some(sess.ident.peer.clone()),
                }
            })
            .collect();
        for (replica, tid) in self.dump_threads(addr) {
            let user =
                self.servers.get(&replica).and_then(|r| r.repl.as_ref()).map(|r| r.user.clone()).unwrap_or_default();
            out.push(ProcessRow {
                id: tid,
                user,
                command: "Binlog Dump GTID".into(),
                peer: Some(Peer::Server(replica)),
            });
        }
        out.sort_by_key(|p| p.id);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mysql_timestamps_are_civil_dates() {
        assert_eq!(super::mysql_timestamp(0), "700101 00:00:00");
        assert_eq!(super::mysql_timestamp(1_700_000_000_123), "231114 22:13:20");
        assert_eq!(super::mysql_timestamp(951_782_400_000), "000229 00:00:00");
    }
}

//! Typed replication status, parsed from `SHOW [ALL] {SLAVE|REPLICA}[S] STATUS` rows.
//!
//! The diagnosis of a failure leans on what replicas say about their source (are the IO
//! threads connecting? which error? how far behind? which GTIDs were received?), so this is
//! parsed carefully. Column names differ by flavor and version — MySQL 8.0.22+ says
//! `Source_Host`, `Replica_IO_Running`, `Seconds_Behind_Source`; MySQL 5.7/8.0 `SHOW SLAVE STATUS`
//! and MariaDB say `Master_Host`, `Slave_IO_Running`, `Seconds_Behind_Master`; MariaDB's
//! `SHOW ALL SLAVES STATUS` adds `Connection_name`, `Gtid_IO_Pos`, `Using_Gtid`, heartbeat
//! counters and `Gtid_Slave_Pos`. Column *order* also differs between versions (the MariaDB
//! docs warn about it), so columns are found by name, case-insensitively, from a generic row
//! ([`StatusRow`]) — which also lets the parser be tested on fixtures without a server.
//!
//! Required columns (host, port, thread states) missing or unparseable are an error; optional
//! ones are `None` when absent. `NULL` `Seconds_Behind_*` (IO or SQL thread not running) is
//! `None`, never 0.

use crate::gtid::{MariaGtidSet, MySqlGtidSet};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A result row as `(column name, value)` pairs; `None` is SQL `NULL`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusRow(pub Vec<(String, Option<String>)>);

impl StatusRow {
    /// The value of the first of `names` present (case-insensitive); `Some(None)` for `NULL`,
    /// `None` if no such column.
    pub fn get(&self, names: &[&str]) -> Option<Option<&str>> {
        names.iter().find_map(|n| self.0.iter().find(|(c, _)| c.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_deref()))
    }

    /// Like [`StatusRow::get`], `NULL` and absent both as `None`.
    pub fn text(&self, names: &[&str]) -> Option<&str> {
        self.get(names).flatten()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, Option<V>)> for StatusRow {
    fn from_iter<T: IntoIterator<Item = (K, Option<V>)>>(iter: T) -> Self {
        StatusRow(iter.into_iter().map(|(k, v)| (k.into(), v.map(Into::into))).collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("replication status has no {column} column (looked for {aliases:?})")]
    MissingColumn { column: &'static str, aliases: &'static [&'static str] },
    #[error("replication status column {column} has unexpected value {value:?}: {reason}")]
    BadValue { column: &'static str, value: String, reason: String },
}

/// State of the IO (receiver) thread: `Replica_IO_Running`/`Slave_IO_Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoThreadState {
    /// Connected to the source and receiving.
    Yes,
    /// Started, but not (yet, or any more) connected to the source. MariaDB's transient
    /// `Preparing` is reported as this too.
    Connecting,
    /// Stopped.
    No,
}

/// MariaDB `Using_Gtid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsingGtid {
    No,
    CurrentPos,
    SlavePos,
}

/// An error reported by a replication thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationError {
    pub errno: u32,
    pub message: String,
    /// `Last_IO_Error_Timestamp`/`Last_SQL_Error_Timestamp` (MySQL only), as printed.
    pub timestamp: Option<String>,
}

/// A binlog coordinate `(file, position)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BinlogCoord {
    pub file: String,
    pub pos: u64,
}

/// One replication channel (MySQL) / connection (MariaDB multi-source) of a replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// `Channel_Name` (MySQL) or `Connection_name` (MariaDB); empty for the default one.
    pub channel: String,
    pub source_host: String,
    pub source_port: u16,
    pub source_user: String,
    /// `Source_Server_Id`/`Master_Server_Id`; 0 until the IO thread first connected.
    pub source_server_id: Option<u32>,
    /// `Source_UUID`/`Master_UUID` (MySQL).
    pub source_uuid: Option<String>,
    pub io_running: IoThreadState,
    pub sql_running: bool,
    /// `Replica_IO_State`/`Slave_IO_State`, e.g. `Waiting for source to send event`.
    pub io_state: String,
    /// `Replica_SQL_Running_State`/`Slave_SQL_Running_State`.
    pub sql_state: String,
    pub last_io_error: Option<ReplicationError>,
    pub last_sql_error: Option<ReplicationError>,
    /// `Seconds_Behind_Source`/`Seconds_Behind_Master`; `None` when `NULL` (a thread is not
    /// running, or the IO thread is reconnecting).
    pub seconds_behind: Option<u64>,
    /// Where the IO thread has read up to in the source's binlog.
    pub read_coord: Option<BinlogCoord>,
    /// Where the SQL thread has executed up to, in source binlog coordinates.
    pub exec_coord: Option<BinlogCoord>,
    pub relay_log_space: Option<u64>,
    /// `SQL_Delay` in seconds (delayed replica).
    pub sql_delay: Option<u64>,
    /// MySQL: `Retrieved_Gtid_Set`.
    pub retrieved_gtid_set: Option<MySqlGtidSet>,
    /// MySQL: `Executed_Gtid_Set` (the replica's `gtid_executed`).
    pub executed_gtid_set: Option<MySqlGtidSet>,
    /// MySQL: `Auto_Position`.
    pub auto_position: Option<bool>,
    /// MariaDB: `Using_Gtid`.
    pub using_gtid: Option<UsingGtid>,
    /// MariaDB: `Gtid_IO_Pos`, the last GTID received per domain.
    pub gtid_io_pos: Option<MariaGtidSet>,
    /// MariaDB (`SHOW ALL SLAVES STATUS`): `Gtid_Slave_Pos`, the global `gtid_slave_pos`.
    pub gtid_slave_pos: Option<MariaGtidSet>,
    /// MariaDB: `Slave_heartbeat_period` in seconds. MySQL only exposes it in
    /// performance_schema.replication_connection_configuration.
    pub heartbeat_period_s: Option<f64>,
    /// MariaDB: `Slave_received_heartbeats`.
    pub received_heartbeats: Option<u64>,
    /// MariaDB: `Retried_transactions`.
    pub retried_transactions: Option<u64>,
    /// MariaDB: `Executed_log_entries`.
    pub executed_log_entries: Option<u64>,
}

impl ReplicaStatus {
    /// Both threads running and connected.
    pub fn is_healthy(&self) -> bool {
        self.io_running == IoThreadState::Yes && self.sql_running
    }
}

const HOST: &[&str] = &["Source_Host", "Master_Host"];
const PORT: &[&str] = &["Source_Port", "Master_Port"];
const USER: &[&str] = &["Source_User", "Master_User"];
const IO_RUNNING: &[&str] = &["Replica_IO_Running", "Slave_IO_Running"];
const SQL_RUNNING: &[&str] = &["Replica_SQL_Running", "Slave_SQL_Running"];

fn required<'a>(
    row: &'a StatusRow,
    column: &'static str,
    aliases: &'static [&'static str],
) -> Result<&'a str, StatusError> {
    row.text(aliases).ok_or(StatusError::MissingColumn { column, aliases })
}

fn bad(column: &'static str, value: &str, reason: impl ToString) -> StatusError {
    StatusError::BadValue { column, value: value.to_string(), reason: reason.to_string() }
}

/// Optional number: absent, `NULL` and empty are `None`.
fn opt_num<T: FromStr>(row: &StatusRow, column: &'static str, aliases: &[&str]) -> Result<Option<T>, StatusError>
where
    T::Err: ToString,
{
    match row.text(aliases).map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|e| bad(column, v, e)),
    }
}

fn yes_no(column: &'static str, v: &str) -> Result<bool, StatusError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "yes" | "on" | "1" => Ok(true),
        "no" | "off" | "0" => Ok(false),
        _ => Err(bad(column, v, "expected Yes or No")),
    }
}

fn thread_error(
    row: &StatusRow,
    column: &'static str,
    errno: &[&str],
    msg: &[&str],
    ts: &[&str],
) -> Result<Option<ReplicationError>, StatusError> {
    let errno: u32 = opt_num(row, column, errno)?.unwrap_or(0);
    let message = row.text(msg).unwrap_or("").to_string();
    if errno == 0 && message.is_empty() {
        return Ok(None);
    }
    let timestamp = row.text(ts).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
    Ok(Some(ReplicationError { errno, message, timestamp }))
}

fn coord(
    row: &StatusRow,
    column: &'static str,
    file: &[&str],
    pos: &[&str],
) -> Result<Option<BinlogCoord>, StatusError> {
    let file = row.text(file).map(str::trim).unwrap_or("");
    let pos: Option<u64> = opt_num(row, column, pos)?;
    Ok(match (file.is_empty(), pos) {
        (false, Some(pos)) => Some(BinlogCoord { file: file.to_string(), pos }),
        _ => None,
    })
}

fn opt_gtid<T: FromStr<Err = crate::gtid::GtidParseError>>(
    row: &StatusRow,
    column: &'static str,
    aliases: &[&str],
) -> Result<Option<T>, StatusError> {
    match row.text(aliases) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|e| bad(column, v, e)),
    }
}

impl ReplicaStatus {
    /// Parses one row of any supported flavor/version of the replication status statement.
    pub fn from_row(row: &StatusRow) -> Result<ReplicaStatus, StatusError> {
        let source_host = required(row, "Source_Host", HOST)?.to_string();
        let port_s = required(row, "Source_Port", PORT)?;
        let source_port: u16 = port_s.trim().parse().map_err(|e| bad("Source_Port", port_s, e))?;
        let io_s = required(row, "Replica_IO_Running", IO_RUNNING)?;
        let io_running = match io_s.trim().to_ascii_lowercase().as_str() {
            "yes" => IoThreadState::Yes,
            // MariaDB shows "Preparing" briefly between connecting and reading events.
            "connecting" | "preparing" => IoThreadState::Connecting,
            "no" => IoThreadState::No,
            _ => return Err(bad("Replica_IO_Running", io_s, "expected Yes, No, Connecting or Preparing")),
        };
        let sql_running = yes_no("Replica_SQL_Running", required(row, "Replica_SQL_Running", SQL_RUNNING)?)?;

        let using_gtid = match row.text(&["Using_Gtid"]) {
            None => None,
            Some(v) => Some(match v.trim().to_ascii_lowercase().as_str() {
                "no" => UsingGtid::No,
                "current_pos" => UsingGtid::CurrentPos,
                "slave_pos" => UsingGtid::SlavePos,
                _ => return Err(bad("Using_Gtid", v, "expected No, Current_Pos or Slave_Pos")),
            }),
        };
        let auto_position = match row.text(&["Auto_Position"]) {
            None => None,
            Some(v) => Some(yes_no("Auto_Position", v)?),
        };
        let source_uuid =
            row.text(&["Source_UUID", "Master_UUID"]).map(str::trim).filter(|u| !u.is_empty()).map(str::to_string);

        Ok(ReplicaStatus {
            channel: row.text(&["Channel_Name", "Connection_name"]).unwrap_or("").to_string(),
            source_host,
            source_port,
            source_user: row.text(USER).unwrap_or("").to_string(),
            source_server_id: opt_num(row, "Source_Server_Id", &["Source_Server_Id", "Master_Server_Id"])?,
            source_uuid,
            io_running,
            sql_running,
            io_state: row.text(&["Replica_IO_State", "Slave_IO_State"]).unwrap_or("").to_string(),
            sql_state: row.text(&["Replica_SQL_Running_State", "Slave_SQL_Running_State"]).unwrap_or("").to_string(),
            last_io_error: thread_error(
                row,
                "Last_IO_Errno",
                &["Last_IO_Errno"],
                &["Last_IO_Error"],
                &["Last_IO_Error_Timestamp"],
            )?,
            last_sql_error: thread_error(
                row,
                "Last_SQL_Errno",
                &["Last_SQL_Errno"],
                &["Last_SQL_Error"],
                &["Last_SQL_Error_Timestamp"],
            )?,
            seconds_behind: opt_num(row, "Seconds_Behind_Source", &["Seconds_Behind_Source", "Seconds_Behind_Master"])?,
            read_coord: coord(
                row,
                "Read_Source_Log_Pos",
                &["Source_Log_File", "Master_Log_File"],
                &["Read_Source_Log_Pos", "Read_Master_Log_Pos"],
            )?,
            exec_coord: coord(
                row,
                "Exec_Source_Log_Pos",
                &["Relay_Source_Log_File", "Relay_Master_Log_File"],
                &["Exec_Source_Log_Pos", "Exec_Master_Log_Pos"],
            )?,
            relay_log_space: opt_num(row, "Relay_Log_Space", &["Relay_Log_Space"])?,
            sql_delay: opt_num(row, "SQL_Delay", &["SQL_Delay"])?,
            retrieved_gtid_set: opt_gtid(row, "Retrieved_Gtid_Set", &["Retrieved_Gtid_Set"])?,
            executed_gtid_set: opt_gtid(row, "Executed_Gtid_Set", &["Executed_Gtid_Set"])?,
            auto_position,
            using_gtid,
            gtid_io_pos: opt_gtid(row, "Gtid_IO_Pos", &["Gtid_IO_Pos"])?,
            gtid_slave_pos: opt_gtid(row, "Gtid_Slave_Pos", &["Gtid_Slave_Pos"])?,
            heartbeat_period_s: opt_num(row, "Slave_heartbeat_period", &["Slave_heartbeat_period"])?,
            received_heartbeats: opt_num(row, "Slave_received_heartbeats", &["Slave_received_heartbeats"])?,
            retried_transactions: opt_num(row, "Retried_transactions", &["Retried_transactions"])?,
            executed_log_entries: opt_num(row, "Executed_log_entries", &["Executed_log_entries"])?,
        })
    }
}

/// A replica as listed by `SHOW SLAVE HOSTS` / `SHOW REPLICAS` on its source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectedReplica {
    pub server_id: u32,
    /// `report_host` of the replica; empty when it did not set one.
    pub host: String,
    pub port: u16,
    /// `Replica_UUID`/`Slave_UUID` (MySQL).
    pub uuid: Option<String>,
}

impl ConnectedReplica {
    /// Parses one row of `SHOW SLAVE HOSTS` (MySQL 5.7/8.0, MariaDB) or `SHOW REPLICAS`.
    pub fn from_row(row: &StatusRow) -> Result<ConnectedReplica, StatusError> {
        const ID: &[&str] = &["Server_id", "Server_Id"];
        let id_s = required(row, "Server_id", ID)?;
        let server_id = id_s.trim().parse().map_err(|e| bad("Server_id", id_s, e))?;
        let port: u16 = opt_num(row, "Port", &["Port"])?.unwrap_or(0);
        Ok(ConnectedReplica {
            server_id,
            host: row.text(&["Host"]).unwrap_or("").to_string(),
            port,
            uuid: row
                .text(&["Replica_UUID", "Slave_UUID"])
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        })
    }
}

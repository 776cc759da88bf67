//! Sample observations for the tests of crates that decide from what a probe saw
//! (`primus-failover`'s tables, `primus-server`'s topology refresh): a healthy MariaDB
//! 10.11 server and replication row, named by port (`127.0.0.1:PORT`, server id
//! `PORT - 3305`), with real MariaDB GTID positions. Not for production code.

use crate::probe::SemiSyncStatus;
use crate::status::{IoThreadState, UsingGtid};
use crate::{Flavor, GtidState, Observation, ReplicaStatus, ServerInfo, Version};
use primus_types::InstanceAddr;

pub const NOW: u64 = 10_000_000;
pub const P: u16 = 3306;
pub const R1: u16 = 3307;
pub const R2: u16 = 3308;
pub const R3: u16 = 3309;

pub fn a(port: u16) -> InstanceAddr {
    InstanceAddr::new("127.0.0.1", port).unwrap_or_else(|e| panic!("{e}"))
}

pub fn server_id(port: u16) -> u32 {
    u32::from(port) - 3305
}

/// A MariaDB GTID state from `gtid_current_pos`, `gtid_slave_pos` and `gtid_binlog_state`.
pub fn maria(current: &str, slave: &str, binlog_state: &str) -> GtidState {
    GtidState::MariaDb {
        current_pos: current.parse().unwrap_or_else(|e| panic!("{e}")),
        binlog_pos: current.parse().unwrap_or_else(|e| panic!("{e}")),
        slave_pos: slave.parse().unwrap_or_else(|e| panic!("{e}")),
        strict_mode: true,
        domain_id: 0,
        binlog_state: binlog_state.parse().unwrap_or_else(|e| panic!("{e}")),
    }
}

/// A MySQL GTID state.
pub fn mysql(executed: &str) -> GtidState {
    GtidState::MySql {
        executed: executed.parse().unwrap_or_else(|e| panic!("{e}")),
        purged: Default::default(),
        mode: "ON".into(),
    }
}

/// A MariaDB 10.11.6 server, read-only, binlog with log_slave_updates, at `0-1-100`.
pub fn observation(port: u16) -> Observation {
    Observation {
        addr: a(port),
        taken_at_ms: NOW - 200,
        latency_us: 400,
        connect_us: None,
        server: ServerInfo {
            flavor: Flavor::MariaDb,
            version: Version::new(10, 11, 6),
            version_string: "10.11.6-MariaDB".into(),
            version_comment: "MariaDB Server".into(),
        },
        server_id: server_id(port),
        server_uuid: None,
        uptime_s: Some(86_400),
        read_only: true,
        super_read_only: None,
        log_bin: true,
        log_slave_updates: true,
        binlog_format: Some("ROW".into()),
        gtid: maria("0-1-100", "0-1-100", "0-1-100"),
        replication: Vec::new(),
        semi_sync: SemiSyncStatus::default(),
        replicas: Vec::new(),
        binlog_dump_threads: 0,
        heartbeat: Vec::new(),
        heartbeat_error: None,
    }
}

/// A healthy replication row from `source`.
pub fn row(source: u16) -> ReplicaStatus {
    ReplicaStatus {
        channel: String::new(),
        source_host: "127.0.0.1".into(),
        source_port: source,
        source_user: "repl".into(),
        source_server_id: Some(server_id(source)),
        source_uuid: None,
        io_running: IoThreadState::Yes,
        sql_running: true,
        io_state: "Waiting for master to send event".into(),
        sql_state: "Slave has read all relay log; waiting for more updates".into(),
        last_io_error: None,
        last_sql_error: None,
        seconds_behind: Some(0),
        read_coord: None,
        exec_coord: None,
        relay_log_space: Some(1024),
        sql_delay: Some(0),
        retrieved_gtid_set: None,
        executed_gtid_set: None,
        auto_position: None,
        using_gtid: Some(UsingGtid::SlavePos),
        gtid_io_pos: Some("0-1-100".parse().unwrap_or_else(|e| panic!("{e}"))),
        gtid_slave_pos: Some("0-1-100".parse().unwrap_or_else(|e| panic!("{e}"))),
        heartbeat_period_s: Some(0.5),
        received_heartbeats: Some(1000),
        retried_transactions: Some(0),
        executed_log_entries: Some(5000),
    }
}

//! Replication status parsing over fixtures of every supported flavor/version, written from
//! the documented `\G` output (see tests/fixtures/README.md).

use primus_mysql::gtid::{MariaGtidSet, MySqlGtidSet};
use primus_mysql::status::{BinlogCoord, ConnectedReplica, IoThreadState, ReplicaStatus, StatusRow, UsingGtid};

/// Parses the mysql client's vertical layout into generic rows.
fn vertical(text: &str) -> Vec<StatusRow> {
    let mut rows: Vec<StatusRow> = Vec::new();
    for line in text.lines() {
        if line.starts_with("***") || line.trim_start().starts_with("***") {
            rows.push(StatusRow::default());
            continue;
        }
        let Some(row) = rows.last_mut() else { continue };
        let trimmed = line.trim_start();
        let name_len = trimmed.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(trimmed.len());
        let is_column = name_len > 0
            && trimmed.as_bytes()[0].is_ascii_alphabetic()
            && trimmed[name_len..].starts_with(':')
            && (trimmed.len() == name_len + 1 || trimmed[name_len + 1..].starts_with(' '));
        if is_column {
            let value = trimmed[name_len + 1..].trim();
            let value = (value != "NULL").then(|| value.to_string());
            row.0.push((trimmed[..name_len].to_string(), value));
        } else if let Some((_, Some(v))) = row.0.last_mut() {
            v.push('\n');
            v.push_str(line.trim());
        }
    }
    rows
}

fn fixture(name: &str) -> Vec<StatusRow> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rows = vertical(&text);
    assert!(!rows.is_empty(), "{name} has no rows");
    rows
}

fn statuses(name: &str) -> Vec<ReplicaStatus> {
    fixture(name).iter().map(|r| ReplicaStatus::from_row(r).unwrap_or_else(|e| panic!("{name}: {e}"))).collect()
}

fn my(s: &str) -> MySqlGtidSet {
    s.parse().expect("valid MySQL GTID set")
}

fn maria(s: &str) -> MariaGtidSet {
    s.parse().expect("valid MariaDB position")
}

#[test]
fn the_fixture_reader_handles_continuations_and_nulls() {
    let rows = fixture("mysql-5.7-show-slave-status.txt");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get(&["SQL_Remaining_Delay"]), Some(None));
    assert_eq!(rows[0].get(&["Replicate_Do_DB"]), Some(Some("")));
    assert_eq!(
        rows[0].text(&["Executed_Gtid_Set"]),
        Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-11,\n8a94f357-aab4-11df-86ab-c80aa9429563:1-3")
    );
    assert_eq!(rows[0].0.len(), 57, "MySQL 5.7 SHOW SLAVE STATUS has 57 columns");
}

#[test]
fn mysql_5_7_show_slave_status() {
    let s = statuses("mysql-5.7-show-slave-status.txt");
    assert_eq!(s.len(), 1);
    let r = &s[0];
    assert_eq!((r.source_host.as_str(), r.source_port, r.source_user.as_str()), ("db-1.example", 3306, "repl"));
    assert_eq!(r.channel, "");
    assert_eq!(r.io_running, IoThreadState::Yes);
    assert!(r.sql_running && r.is_healthy());
    assert_eq!(r.seconds_behind, Some(2));
    assert_eq!(r.source_server_id, Some(1));
    assert_eq!(r.source_uuid.as_deref(), Some("3e11fa47-71ca-11e1-9e33-c80aa9429562"));
    assert_eq!(r.io_state, "Waiting for master to send event");
    assert_eq!(r.sql_state, "Reading event from the relay log");
    assert_eq!(r.last_io_error, None);
    assert_eq!(r.last_sql_error, None);
    assert_eq!(r.read_coord, Some(BinlogCoord { file: "mysql-bin.000012".into(), pos: 4387 }));
    assert_eq!(r.exec_coord, Some(BinlogCoord { file: "mysql-bin.000012".into(), pos: 4201 }));
    assert_eq!(r.retrieved_gtid_set, Some(my("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-12")));
    assert_eq!(
        r.executed_gtid_set,
        Some(my("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-11,8a94f357-aab4-11df-86ab-c80aa9429563:1-3"))
    );
    assert_eq!(r.auto_position, Some(true));
    assert_eq!(r.sql_delay, Some(0));
    // MariaDB-only fields are absent, not defaulted.
    assert_eq!((r.using_gtid, r.gtid_io_pos.as_ref(), r.heartbeat_period_s), (None, None, None));
}

#[test]
fn mysql_8_0_old_syntax_with_a_broken_io_thread() {
    let s = statuses("mysql-8.0.21-show-slave-status.txt");
    let r = &s[0];
    assert_eq!(r.io_running, IoThreadState::Connecting);
    assert!(r.sql_running);
    assert!(!r.is_healthy());
    assert_eq!(r.seconds_behind, None, "NULL Seconds_Behind_Master is unknown, not zero");
    let e = r.last_io_error.as_ref().expect("IO error");
    assert_eq!(e.errno, 2003);
    assert!(e.message.contains("Can't connect to MySQL server on '10.0.0.11' (111)"));
    assert_eq!(e.timestamp.as_deref(), Some("210118 09:14:27"));
    assert_eq!(r.source_server_id, Some(11));
    assert_eq!(r.retrieved_gtid_set, Some(my("4c1f8d2e-5a6b-11eb-8f3c-0242ac110002:5-9")));
}

#[test]
fn mysql_8_0_new_syntax_with_two_channels() {
    let s = statuses("mysql-8.0-show-replica-status.txt");
    assert_eq!(s.len(), 2);
    let (default, eu) = (&s[0], &s[1]);
    assert_eq!(default.channel, "");
    assert_eq!((default.source_host.as_str(), default.source_port), ("127.0.0.1", 13000));
    assert!(default.is_healthy());
    assert_eq!(default.seconds_behind, Some(0));
    assert_eq!(default.io_state, "Waiting for source to send event");
    assert_eq!(default.sql_state, "Replica has read all relay log; waiting for more updates");
    assert_eq!(default.read_coord, Some(BinlogCoord { file: "master-bin.000001".into(), pos: 927 }));

    assert_eq!(eu.channel, "eu");
    assert_eq!(eu.io_running, IoThreadState::Yes);
    assert!(!eu.sql_running);
    assert_eq!(eu.seconds_behind, None);
    let e = eu.last_sql_error.as_ref().expect("SQL error");
    assert_eq!(e.errno, 1062);
    assert!(e.message.starts_with("Could not execute Write_rows event"));
    assert_eq!(e.timestamp.as_deref(), Some("240305 11:02:03"));
    assert_eq!(eu.last_io_error, None);
    // The applier is behind the receiver: what was retrieved is not all executed.
    let retrieved = eu.retrieved_gtid_set.clone().expect("retrieved");
    let executed = eu.executed_gtid_set.clone().expect("executed");
    assert_eq!(retrieved.subtract(&executed).to_string(), "9d2a4b1c-3e4f-11ee-a1b2-0242ac120003:402-420");
}

#[test]
fn mysql_8_4_delayed_replica_with_tagged_gtids() {
    let s = statuses("mysql-8.4-show-replica-status.txt");
    let r = &s[0];
    assert!(r.is_healthy());
    assert_eq!(r.sql_delay, Some(3600));
    assert_eq!(r.seconds_behind, Some(3600));
    assert_eq!(r.source_server_id, Some(100));
    let retrieved = r.retrieved_gtid_set.clone().expect("retrieved");
    assert_eq!(retrieved.count(), 3 + 5);
    assert_eq!(retrieved.to_string(), "ce9be252-2b71-11e6-b8f4-00212844f856:1-3:domestic:1-5");
    let behind = retrieved.subtract(r.executed_gtid_set.as_ref().expect("executed"));
    assert_eq!(behind.to_string(), "ce9be252-2b71-11e6-b8f4-00212844f856:domestic:3-5");
}

#[test]
fn mariadb_10_11_show_all_slaves_status_multi_source() {
    let rows = fixture("mariadb-10.11-show-all-slaves-status.txt");
    assert_eq!(rows[0].0.first().map(|c| c.0.as_str()), Some("Connection_name"));
    assert_eq!(rows[0].0.get(1).map(|c| c.0.as_str()), Some("Slave_SQL_State"));
    assert_eq!(rows[0].0.last().map(|c| c.0.as_str()), Some("Gtid_Slave_Pos"));

    let s = statuses("mariadb-10.11-show-all-slaves-status.txt");
    assert_eq!(s.len(), 2);
    let (default, analytics) = (&s[0], &s[1]);
    assert_eq!(default.channel, "");
    assert_eq!((default.source_host.as_str(), default.source_port), ("127.0.0.1", 33061));
    assert!(default.is_healthy());
    assert_eq!(default.seconds_behind, Some(0));
    assert_eq!(default.using_gtid, Some(UsingGtid::SlavePos));
    assert_eq!(default.gtid_io_pos, Some(maria("0-1-17")));
    assert_eq!(default.gtid_slave_pos, Some(maria("0-1-17,7-5-3")));
    assert_eq!(default.received_heartbeats, Some(12));
    assert_eq!(default.heartbeat_period_s, Some(1.0));
    assert_eq!(default.retried_transactions, Some(0));
    assert_eq!(default.executed_log_entries, Some(61));
    assert_eq!(default.sql_state, "Slave has read all relay log; waiting for more updates");
    // MySQL-only fields are absent.
    assert_eq!((default.auto_position, default.source_uuid.as_deref()), (None, None));
    assert_eq!(default.retrieved_gtid_set, None);

    assert_eq!(analytics.channel, "analytics");
    assert_eq!(analytics.io_running, IoThreadState::Connecting);
    assert_eq!(analytics.seconds_behind, None);
    let e = analytics.last_io_error.as_ref().expect("IO error");
    assert_eq!(e.errno, 2003);
    assert!(e.message.contains("Connection refused"));
    assert_eq!(e.timestamp, None);
    assert_eq!(analytics.heartbeat_period_s, Some(30.0));
    assert_eq!(analytics.received_heartbeats, Some(0));
}

#[test]
fn connected_replicas_of_every_flavor() {
    let hosts = |name: &str| -> Vec<ConnectedReplica> {
        fixture(name).iter().map(|r| ConnectedReplica::from_row(r).expect(name)).collect()
    };
    let m57 = hosts("mysql-5.7-show-slave-hosts.txt");
    assert_eq!(m57.len(), 2);
    assert_eq!((m57[0].server_id, m57[0].host.as_str(), m57[0].port), (192168010, "iconnect2", 3306));
    assert_eq!(m57[0].uuid.as_deref(), Some("14cb6624-7f93-11e0-b2c0-c80aa9429562"));
    assert_eq!((m57[1].host.as_str(), m57[1].uuid.as_deref()), ("", None));

    let m80 = hosts("mysql-8.0-show-replicas.txt");
    assert_eq!((m80[0].server_id, m80[0].host.as_str(), m80[0].port), (10, "replica-1", 3306));
    assert_eq!(m80[0].uuid.as_deref(), Some("9c9f6c8a-6e5d-11ee-9a31-0242ac120004"));

    let maria = hosts("mariadb-10.11-show-slave-hosts.txt");
    assert_eq!(maria.iter().map(|r| (r.server_id, r.port)).collect::<Vec<_>>(), [(2, 33062), (3, 33063)]);
    assert!(maria.iter().all(|r| r.uuid.is_none()));
}

#[test]
fn missing_or_garbled_required_columns_are_errors() {
    let base = fixture("mysql-8.0-show-replica-status.txt").remove(0);
    let without = |col: &str| StatusRow(base.0.iter().filter(|(c, _)| c != col).cloned().collect());
    let with = |col: &str, v: Option<&str>| {
        StatusRow(
            base.0
                .iter()
                .map(|(c, old)| (c.clone(), if c == col { v.map(str::to_string) } else { old.clone() }))
                .collect(),
        )
    };
    for col in ["Source_Host", "Source_Port", "Replica_IO_Running", "Replica_SQL_Running"] {
        let e = ReplicaStatus::from_row(&without(col)).expect_err(col);
        assert!(e.to_string().contains(col), "{e}");
    }
    for (col, v) in [
        ("Source_Port", "70000"),
        ("Replica_IO_Running", "Maybe"),
        ("Seconds_Behind_Source", "-1"),
        ("Executed_Gtid_Set", "not-a-gtid:1"),
        ("Last_IO_Errno", "x"),
    ] {
        let e = ReplicaStatus::from_row(&with(col, Some(v))).expect_err(col);
        assert!(e.to_string().contains(col), "{e}");
    }
    // NULL where a required value belongs is as bad as the column missing.
    assert!(ReplicaStatus::from_row(&with("Source_Host", None)).is_err());
}

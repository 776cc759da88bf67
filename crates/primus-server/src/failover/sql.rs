//! The statements failover steps send, built from what a probe observed.

use super::*;

/// `read_only` on (or off) over `p`, in the server's flavor (MySQL: `super_read_only` too).
pub(super) async fn set_read_only_over(p: &dyn MysqlConn, on: bool, t: Duration) -> Result<(), ProbeError> {
    let info = p.server_info().await?;
    p.execute(&info.set_read_only_sql(on), t).await
}

/// The replication user, its password and the TLS options every repoint sets
/// (`[mysql] replication_*`, `get_source_public_key`).
#[derive(Clone)]
pub(super) struct ReplicationLogin {
    pub user: String,
    pub password: String,
    pub tls: primus_mysql::ReplicationTls,
}

/// How primus points a replica at a source: GTID positioning (per flavor), heartbeat
/// every 0.5 s, reconnect every 1 s, the configured replication TLS.
pub(super) fn change_source_to<'a>(to: &'a InstanceAddr, login: &'a ReplicationLogin) -> ChangeSource<'a> {
    ChangeSource {
        host: to.host(),
        port: to.port(),
        user: &login.user,
        password: &login.password,
        heartbeat_period: Some(Duration::from_millis(500)),
        connect_retry_s: Some(1),
        tls: login.tls.clone(),
    }
}

/// The start of every repoint: stop replication (if any) and make the server read-only.
pub(super) fn stop_and_fence_sql(o: &primus_mysql::Observation) -> Vec<String> {
    let mut sql = Vec::new();
    if o.is_replica() {
        sql.push(o.server.stop_replica_sql());
    }
    sql.extend(o.server.set_read_only_sql(true));
    sql
}

/// Everything that makes the instance observed as `o` a read-only replica of `to`:
/// stop replication, read_only, CHANGE MASTER/SOURCE by GTID, start replication.
pub(super) fn repoint_sql(
    o: &primus_mysql::Observation,
    to: &InstanceAddr,
    login: &ReplicationLogin,
    former_primary: bool,
) -> Vec<String> {
    let change = change_source_to(to, login);
    let mut sql = stop_and_fence_sql(o);
    sql.push(change_source_for(o, &change, former_primary));
    sql.push(o.server.start_replica_sql());
    sql
}

/// `rejoin --discard-divergent` of a MariaDB former primary: replicate from the
/// promotion point (`gtid_slave_pos`), not from its own position. Under
/// `gtid_strict_mode` its binary log is reset first: it holds the divergent GTIDs, whose
/// seqs the new primary's transactions reuse, and strict mode would refuse to log those
/// (and to set a `gtid_slave_pos` behind the binlog).
pub(super) fn discard_sql(
    o: &primus_mysql::Observation,
    promotion_gtid: &str,
    to: &InstanceAddr,
    login: &ReplicationLogin,
) -> Result<Vec<String>, String> {
    let primus_mysql::GtidState::MariaDb { strict_mode, .. } = &o.gtid else {
        return Err("--discard-divergent is MariaDB only".into());
    };
    let point: primus_mysql::MariaGtidSet =
        promotion_gtid.parse().map_err(|e: primus_mysql::gtid::GtidParseError| e.to_string())?;
    if !point.is_position() {
        return Err(format!("the promotion point {promotion_gtid} is not a MariaDB position"));
    }
    let change = change_source_to(to, login);
    let mut sql = stop_and_fence_sql(o);
    if *strict_mode {
        sql.push("RESET MASTER".to_string());
    }
    sql.push(format!("SET GLOBAL gtid_slave_pos = {}", primus_mysql::flavor::quote_string(&point.to_string())));
    sql.push(o.server.change_source_sql(&change));
    sql.push(o.server.start_replica_sql());
    Ok(sql)
}

/// The CHANGE MASTER/SOURCE statement for `o`. A former MariaDB primary has its own
/// writes in gtid_binlog_pos but not in gtid_slave_pos, so it must start from
/// `current_pos` (MariaDB's documented way to turn a primary into a replica).
pub(super) fn change_source_for(
    o: &primus_mysql::Observation,
    change: &ChangeSource<'_>,
    former_primary: bool,
) -> String {
    let sql = o.server.change_source_sql(change);
    if former_primary && o.server.flavor == primus_mysql::Flavor::MariaDb {
        sql.replace("MASTER_USE_GTID=slave_pos", "MASTER_USE_GTID=current_pos")
    } else {
        sql
    }
}

/// `text` with every occurrence of `secret` (raw and SQL-quoted) replaced.
pub(super) fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let quoted = primus_mysql::flavor::quote_string(secret);
    text.replace(&quoted, "'<redacted>'").replace(secret, "<redacted>")
}

pub(super) fn is_unreachable(e: &ProbeError) -> bool {
    matches!(e, ProbeError::Unreachable { .. } | ProbeError::Timeout { .. } | ProbeError::ConnectionLost { .. })
}

/// Parse `s` as a GTID set of the same flavor as `like`.
pub(super) fn parse_like(like: &AnyGtidSet, s: &str) -> Result<AnyGtidSet, String> {
    match like {
        AnyGtidSet::MariaDb(_) => {
            s.parse().map(AnyGtidSet::MariaDb).map_err(|e: primus_mysql::gtid::GtidParseError| e.to_string())
        }
        AnyGtidSet::MySql(_) => {
            s.parse().map(AnyGtidSet::MySql).map_err(|e: primus_mysql::gtid::GtidParseError| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use primus_mysql::probe::SemiSyncStatus;
    use primus_mysql::{Flavor, GtidState, Observation, ServerInfo, Version};

    fn login() -> ReplicationLogin {
        ReplicationLogin { user: "repl".into(), password: "pw".into(), tls: Default::default() }
    }

    #[test]
    fn a_refused_repoint_error_carries_no_password() {
        let o = observation(Flavor::MariaDb, maria(true));
        let to = InstanceAddr::new("new", 3306).expect("valid");
        let secret = "s3cr'et pass";
        let sql = repoint_sql(&o, &to, &ReplicationLogin { password: secret.into(), ..login() }, false);
        let change = sql.iter().find(|s| s.starts_with("CHANGE MASTER")).expect("a CHANGE MASTER");
        // What a refused statement's error looks like: the driver's text quotes it.
        let e = ProbeError::QueryFailed {
            query: change.clone(),
            code: Some(1064),
            message: format!("You have an error in your SQL syntax near '{change}'"),
        };
        let text = redact(&e.to_string(), secret);
        assert!(!text.contains("s3cr"), "{text}");
        assert!(text.contains("MASTER_PASSWORD='<redacted>'"), "{text}");
    }

    #[test]
    fn a_repoint_sets_the_configured_replication_tls() {
        let to = InstanceAddr::new("new", 3306).expect("valid");
        let o = observation(Flavor::MariaDb, maria(true));
        let plain = repoint_sql(&o, &to, &login(), false).join("; ");
        assert!(!plain.contains("MASTER_SSL"), "{plain}");
        let tls = primus_mysql::ReplicationTls {
            ssl: true,
            ssl_ca: Some("/etc/mysql/ca.pem".into()),
            verify_server_cert: true,
            get_source_public_key: true,
        };
        let secured = repoint_sql(&o, &to, &ReplicationLogin { tls, ..login() }, true).join("; ");
        for want in ["MASTER_SSL=1", "MASTER_SSL_CA='/etc/mysql/ca.pem'", "MASTER_SSL_VERIFY_SERVER_CERT=1"] {
            assert!(secured.contains(want), "{want} missing in {secured}");
        }
    }

    fn observation(flavor: Flavor, gtid: GtidState) -> Observation {
        Observation {
            addr: InstanceAddr::new("h", 1).expect("valid"),
            taken_at_ms: 0,
            latency_us: 0,
            connect_us: None,
            server: ServerInfo {
                flavor,
                version: Version::new(10, 11, 6),
                version_string: "10.11.6".into(),
                version_comment: String::new(),
            },
            server_id: 1,
            server_uuid: None,
            uptime_s: None,
            read_only: true,
            super_read_only: None,
            log_bin: true,
            log_slave_updates: true,
            binlog_format: Some("ROW".into()),
            gtid,
            replication: Vec::new(),
            semi_sync: SemiSyncStatus::default(),
            replicas: Vec::new(),
            binlog_dump_threads: 0,
            heartbeat: Vec::new(),
            heartbeat_error: None,
        }
    }

    fn maria(strict_mode: bool) -> GtidState {
        GtidState::MariaDb {
            current_pos: "0-1-21".parse().expect("valid"),
            binlog_pos: "0-1-21".parse().expect("valid"),
            slave_pos: "0-1-10".parse().expect("valid"),
            strict_mode,
            domain_id: 0,
            binlog_state: "0-1-21".parse().expect("valid"),
        }
    }

    /// (case, observation, promotion point, Ok(statements that must appear) / Err(text))
    type DiscardCase = (&'static str, Observation, &'static str, Result<Vec<&'static str>, &'static str>);

    #[test]
    fn discard_divergent_replicates_from_the_promotion_point_and_is_mariadb_only() {
        let to = InstanceAddr::new("new", 3306).expect("valid");
        let mysql = GtidState::MySql {
            executed: "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5".parse().expect("valid"),
            purged: Default::default(),
            mode: "ON".into(),
        };
        let cases: Vec<DiscardCase> = vec![
            (
                "strict mode: binlog reset first",
                observation(Flavor::MariaDb, maria(true)),
                "0-1-17",
                Ok(vec!["RESET MASTER", "SET GLOBAL gtid_slave_pos = '0-1-17'", "MASTER_USE_GTID=slave_pos"]),
            ),
            (
                "no strict mode: binlog kept",
                observation(Flavor::MariaDb, maria(false)),
                "0-1-17",
                Ok(vec!["SET GLOBAL gtid_slave_pos = '0-1-17'", "MASTER_USE_GTID=slave_pos"]),
            ),
            ("MySQL is refused", observation(Flavor::MySql, mysql), "x:1", Err("MariaDB only")),
            (
                "a promotion point that is no position is refused",
                observation(Flavor::MariaDb, maria(true)),
                "0-1-3..5",
                Err("not a MariaDB position"),
            ),
        ];
        for (case, o, point, want) in cases {
            let got = discard_sql(&o, point, &to, &login());
            match (want, got) {
                (Ok(must), Ok(sql)) => {
                    let all = sql.join("; ");
                    for m in must {
                        assert!(all.contains(m), "{case}: {m:?} missing in {all}");
                    }
                    assert_eq!(all.contains("RESET MASTER"), case.starts_with("strict"), "{case}: {all}");
                    assert!(!all.contains("current_pos"), "{case}: {all}");
                    assert!(sql.last().is_some_and(|s| s.contains("START")), "{case}: {all}");
                }
                (Err(text), Err(e)) => assert!(e.contains(text), "{case}: {e}"),
                (want, got) => panic!("{case}: want {want:?}, got {got:?}"),
            }
        }
    }
}

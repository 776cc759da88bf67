//! Which server we are talking to, and how to say things to it.
//!
//! MySQL and MariaDB forked long ago and keep renaming replication vocabulary: MySQL moved from
//! `MASTER`/`SLAVE` to `SOURCE`/`REPLICA` over 8.0.22–8.0.26 and 8.4 removed most old spellings;
//! MariaDB kept the old names, added multi-source replication (`SHOW ALL SLAVES STATUS`) and its
//! own GTIDs. Everything version-dependent is decided here, from [`ServerInfo`] (detected from
//! `SELECT @@version, @@version_comment`), as pure functions returning SQL text — so that each
//! choice is unit-tested without a server, and the probe and the failover actions cannot
//! disagree about which dialect a server speaks.
//!
//! String literals are escaped by [`quote_string`]; see there for the `NO_BACKSLASH_ESCAPES`
//! caveat and [`SESSION_SQL_MODE_FIX`].
//!
//! ## read_only semantics per flavor
//!
//! * MySQL ≥ 5.7.8: `read_only=ON` still lets users with `SUPER` (or `CONNECTION_ADMIN`) write;
//!   `super_read_only=ON` blocks them too and implies `read_only=ON`. Turning `read_only` off
//!   turns `super_read_only` off. Demotion therefore sets both; promotion clears both.
//! * MariaDB has no `super_read_only`. Up to 10.10 `read_only` did not apply to `SUPER` users.
//!   From 10.11 (MDEV-29596) `SUPER` no longer implies the `READ ONLY ADMIN` privilege, so
//!   `read_only=ON` blocks every user except replication threads and users explicitly holding
//!   `READ ONLY ADMIN` — which `GRANT ALL PRIVILEGES` *does* include. A MariaDB 10.11 demotion is
//!   therefore as strong as `super_read_only` only if application users were not granted `ALL`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Server family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Oracle MySQL and compatible forks (Percona Server).
    MySql,
    MariaDb,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::MySql => "MySQL",
            Flavor::MariaDb => "MariaDB",
        })
    }
}

/// `major.minor.patch`, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl Version {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Version { major, minor, patch }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlavorError {
    #[error("cannot read a server version from @@version = {0:?}: expected it to start with MAJOR.MINOR.PATCH")]
    BadVersion(String),
}

/// Flavor and version of a server, plus the raw strings it reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub flavor: Flavor,
    pub version: Version,
    /// `@@version` as reported, e.g. `10.11.6-MariaDB-0+deb12u1`.
    pub version_string: String,
    /// `@@version_comment`, e.g. `Debian 12` or `MySQL Community Server - GPL`.
    pub version_comment: String,
}

impl fmt::Display for ServerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.flavor, self.version)
    }
}

/// The statement whose two columns [`detect`] reads.
pub const DETECT_SQL: &str = "SELECT @@version, @@version_comment";

/// Sessions that have waited 2 s or more for a semi-sync acknowledgement (MariaDB's
/// state name; MySQL 8.0.26+ says "replica"), one `ID` per row.
pub const SEMI_SYNC_WAITERS_SQL: &str = "SELECT ID FROM information_schema.PROCESSLIST \
     WHERE STATE LIKE 'Waiting for semi-sync ACK%' AND TIME >= 2";

/// MariaDB's binlogged position, in one column `pos` (the stranded-acknowledgement check
/// reads it right after [`SEMI_SYNC_WAITERS_SQL`]).
pub const BINLOG_POS_SQL: &str = "SELECT @@GLOBAL.gtid_binlog_pos AS pos";

/// Recognises the server from `@@version` and `@@version_comment`.
///
/// MariaDB says so in `@@version` (`10.11.6-MariaDB-0+deb12u1`, sometimes behind the
/// `5.5.5-` prefix MariaDB puts in its handshake for old clients) or in the comment; anything
/// else is treated as MySQL (Percona Server included: `8.0.36-28`).
pub fn detect(version: &str, version_comment: &str) -> Result<ServerInfo, FlavorError> {
    let is_maria =
        version.to_ascii_lowercase().contains("mariadb") || version_comment.to_ascii_lowercase().contains("mariadb");
    let mut v = version.trim();
    if is_maria {
        if let Some(rest) = v.strip_prefix("5.5.5-") {
            v = rest;
        }
    }
    let bad = || FlavorError::BadVersion(version.to_string());
    let numeric: &str = v.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap_or("");
    let mut parts = numeric.split('.').filter(|p| !p.is_empty()).map(str::parse::<u16>);
    let major = parts.next().ok_or_else(bad)?.map_err(|_| bad())?;
    let minor = parts.next().ok_or_else(bad)?.map_err(|_| bad())?;
    let patch = match parts.next() {
        Some(p) => p.map_err(|_| bad())?,
        None => 0,
    };
    Ok(ServerInfo {
        flavor: if is_maria { Flavor::MariaDb } else { Flavor::MySql },
        version: Version::new(major, minor, patch),
        version_string: version.to_string(),
        version_comment: version_comment.to_string(),
    })
}

/// The semi-sync timeout of no-loss mode: ~49.7 days (the largest value every flavor
/// accepts), i.e. never fall back to asynchronous replication on its own.
pub const SEMI_SYNC_NO_LOSS_TIMEOUT_MS: u64 = 4_294_967_295;

/// Names of the semi-synchronous replication variables and status counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemiSyncNames {
    /// Variable: semi-sync enabled on the primary side.
    pub source_enabled: &'static str,
    /// Variable: semi-sync enabled on the replica side.
    pub replica_enabled: &'static str,
    /// Status: primary currently operating semi-synchronously.
    pub source_status: &'static str,
    /// Status: replica currently operating semi-synchronously.
    pub replica_status: &'static str,
    /// Status: number of semi-sync replicas connected.
    pub source_clients: &'static str,
    /// Timeout (ms) after which the primary falls back to async.
    pub source_timeout: &'static str,
}

const SEMI_SYNC_OLD: SemiSyncNames = SemiSyncNames {
    source_enabled: "rpl_semi_sync_master_enabled",
    replica_enabled: "rpl_semi_sync_slave_enabled",
    source_status: "Rpl_semi_sync_master_status",
    replica_status: "Rpl_semi_sync_slave_status",
    source_clients: "Rpl_semi_sync_master_clients",
    source_timeout: "rpl_semi_sync_master_timeout",
};

const SEMI_SYNC_NEW: SemiSyncNames = SemiSyncNames {
    source_enabled: "rpl_semi_sync_source_enabled",
    replica_enabled: "rpl_semi_sync_replica_enabled",
    source_status: "Rpl_semi_sync_source_status",
    replica_status: "Rpl_semi_sync_replica_status",
    source_clients: "Rpl_semi_sync_source_clients",
    source_timeout: "rpl_semi_sync_source_timeout",
};

/// Where to point a replica (see [`ServerInfo::change_source_sql`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ChangeSource<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    /// `MASTER_HEARTBEAT_PERIOD`/`SOURCE_HEARTBEAT_PERIOD`; `None` leaves the server default
    /// (half of `slave_net_timeout`).
    pub heartbeat_period: Option<Duration>,
    /// `MASTER_CONNECT_RETRY`/`SOURCE_CONNECT_RETRY` in seconds; `None` leaves it unchanged.
    pub connect_retry_s: Option<u32>,
    /// How the replica's IO thread secures and authenticates its connection.
    pub tls: ReplicationTls,
}

/// TLS and authentication options of a replica's connection to its source, set on every
/// repoint (`[mysql] replication_ssl*`, `get_source_public_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationTls {
    /// `MASTER_SSL=1`/`SOURCE_SSL=1`: the IO thread connects over TLS.
    pub ssl: bool,
    /// `MASTER_SSL_CA`/`SOURCE_SSL_CA`: a CA file path **on the replica's host**.
    pub ssl_ca: Option<String>,
    /// `MASTER_SSL_VERIFY_SERVER_CERT=1`/`SOURCE_SSL_VERIFY_SERVER_CERT=1`: check the
    /// source's certificate names the host it is reached by.
    pub verify_server_cert: bool,
    /// MySQL 8: `GET_SOURCE_PUBLIC_KEY=1` (8.0.23+) / `GET_MASTER_PUBLIC_KEY=1` (8.0.4+), so
    /// a `caching_sha2_password` replication user can authenticate without TLS after its
    /// cached entry is gone (a new source has none). MariaDB and MySQL 5.7 have no such
    /// option and no such plugin: left out there.
    pub get_source_public_key: bool,
}

impl fmt::Debug for ChangeSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("heartbeat_period", &self.heartbeat_period)
            .field("connect_retry_s", &self.connect_retry_s)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What `RESET REPLICA` should forget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReplica {
    /// Forget relay logs and positions, keep the connection parameters.
    KeepConnection,
    /// `... ALL`: also forget the connection parameters (the server stops being a replica).
    All,
}

const MYSQL_REPLICA_KEYWORDS: Version = Version::new(8, 0, 22);
const MYSQL_CHANGE_SOURCE: Version = Version::new(8, 0, 23);
/// `GET_MASTER_PUBLIC_KEY` (caching_sha2_password's RSA key exchange) exists from 8.0.4.
const MYSQL_PUBLIC_KEY: Version = Version::new(8, 0, 4);
const MYSQL_REPLICA_VARIABLES: Version = Version::new(8, 0, 26);
const MYSQL_84: Version = Version::new(8, 4, 0);
const MYSQL_SUPER_READ_ONLY: Version = Version::new(5, 7, 8);

impl ServerInfo {
    pub fn is_mariadb(&self) -> bool {
        self.flavor == Flavor::MariaDb
    }

    fn mysql_at_least(&self, v: Version) -> bool {
        self.flavor == Flavor::MySql && self.version >= v
    }

    /// Replication status of every channel/connection. MariaDB's `ALL SLAVES` form covers
    /// multi-source and adds `Connection_name`, `Gtid_Slave_Pos` and the heartbeat counters.
    pub fn replica_status_sql(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "SHOW ALL SLAVES STATUS",
            Flavor::MySql if self.version >= MYSQL_REPLICA_KEYWORDS => "SHOW REPLICA STATUS",
            Flavor::MySql => "SHOW SLAVE STATUS",
        }
    }

    /// Replicas registered with this server (those started with `report_host`, or all of them on
    /// MariaDB ≥ 10.3 which lists every connected replica).
    pub fn replica_hosts_sql(&self) -> &'static str {
        if self.mysql_at_least(MYSQL_REPLICA_KEYWORDS) {
            "SHOW REPLICAS"
        } else {
            "SHOW SLAVE HOSTS"
        }
    }

    /// GTID-related variables, in the order [`crate::probe`] expects them.
    pub fn gtid_variables(&self) -> &'static [&'static str] {
        match self.flavor {
            Flavor::MariaDb => {
                &["gtid_current_pos", "gtid_binlog_pos", "gtid_slave_pos", "gtid_strict_mode", "gtid_domain_id"]
            }
            Flavor::MySql => &["gtid_executed", "gtid_purged", "gtid_mode"],
        }
    }

    /// `log_slave_updates` was renamed `log_replica_updates` in MySQL 8.0.26 (the old name is
    /// gone in 8.4). MariaDB keeps the old name.
    pub fn log_replica_updates_variable(&self) -> &'static str {
        if self.mysql_at_least(MYSQL_REPLICA_VARIABLES) {
            "log_replica_updates"
        } else {
            "log_slave_updates"
        }
    }

    /// `true` where `super_read_only` exists (MySQL ≥ 5.7.8).
    pub fn has_super_read_only(&self) -> bool {
        self.mysql_at_least(MYSQL_SUPER_READ_ONLY)
    }

    /// Names of the semi-sync variables. MySQL 8.0.26 introduced the `source`/`replica` plugins
    /// (and 8.4 dropped the old ones); MariaDB (built in since 10.3) and older MySQL use
    /// `master`/`slave`.
    pub fn semi_sync_names(&self) -> SemiSyncNames {
        if self.mysql_at_least(MYSQL_REPLICA_VARIABLES) {
            SEMI_SYNC_NEW
        } else {
            SEMI_SYNC_OLD
        }
    }

    /// Every generation of semi-sync names the server may be running, preferred first: MySQL
    /// 8.0.26 – 8.3 can load either the new `semisync_source` or the old `semisync_master`
    /// plugin; 8.4 only has the new one.
    pub fn semi_sync_name_candidates(&self) -> Vec<SemiSyncNames> {
        if self.mysql_at_least(MYSQL_REPLICA_VARIABLES) && self.version < MYSQL_84 {
            vec![SEMI_SYNC_NEW, SEMI_SYNC_OLD]
        } else {
            vec![self.semi_sync_names()]
        }
    }

    /// The table from which global variables/status can be read with plain SQL without
    /// erroring when a name does not exist: MySQL ≥ 5.7 moved them to performance_schema (and
    /// 8.0 removed the information_schema tables); MariaDB keeps information_schema and often
    /// runs with performance_schema disabled.
    pub fn global_status_table(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "information_schema.GLOBAL_STATUS",
            Flavor::MySql => "performance_schema.global_status",
        }
    }

    /// See [`ServerInfo::global_status_table`].
    pub fn global_variables_table(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "information_schema.GLOBAL_VARIABLES",
            Flavor::MySql => "performance_schema.global_variables",
        }
    }

    /// Points this server at a new source using GTID auto-positioning:
    /// MariaDB `CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos`, MySQL ≥ 8.0.23
    /// `CHANGE REPLICATION SOURCE TO ... SOURCE_AUTO_POSITION=1`, older MySQL
    /// `CHANGE MASTER TO ... MASTER_AUTO_POSITION=1`. Replication must be stopped first.
    pub fn change_source_sql(&self, to: &ChangeSource<'_>) -> String {
        let (head, p) = match self.flavor {
            Flavor::MySql if self.version >= MYSQL_CHANGE_SOURCE => ("CHANGE REPLICATION SOURCE TO", "SOURCE"),
            _ => ("CHANGE MASTER TO", "MASTER"),
        };
        let mut parts = vec![
            format!("{p}_HOST={}", quote_string(to.host)),
            format!("{p}_PORT={}", to.port),
            format!("{p}_USER={}", quote_string(to.user)),
            format!("{p}_PASSWORD={}", quote_string(to.password)),
        ];
        match self.flavor {
            Flavor::MariaDb => parts.push("MASTER_USE_GTID=slave_pos".to_string()),
            Flavor::MySql => parts.push(format!("{p}_AUTO_POSITION=1")),
        }
        if let Some(hb) = to.heartbeat_period {
            // Millisecond resolution; the server accepts 0.001 .. 4294967 seconds.
            let ms = hb.as_millis().min(4_294_967_000);
            parts.push(format!("{p}_HEARTBEAT_PERIOD={}.{:03}", ms / 1000, ms % 1000));
        }
        if let Some(r) = to.connect_retry_s {
            parts.push(format!("{p}_CONNECT_RETRY={r}"));
        }
        let tls = &to.tls;
        if tls.ssl {
            parts.push(format!("{p}_SSL=1"));
        }
        if let Some(ca) = &tls.ssl_ca {
            parts.push(format!("{p}_SSL_CA={}", quote_string(ca)));
        }
        if tls.verify_server_cert {
            parts.push(format!("{p}_SSL_VERIFY_SERVER_CERT=1"));
        }
        if tls.get_source_public_key && self.flavor == Flavor::MySql && self.version >= MYSQL_PUBLIC_KEY {
            parts.push(format!("GET_{p}_PUBLIC_KEY=1"));
        }
        format!("{head} {}", parts.join(", "))
    }

    fn replica_keyword(&self) -> &'static str {
        if self.mysql_at_least(MYSQL_REPLICA_KEYWORDS) {
            "REPLICA"
        } else {
            "SLAVE"
        }
    }

    pub fn stop_replica_sql(&self) -> String {
        format!("STOP {}", self.replica_keyword())
    }

    pub fn start_replica_sql(&self) -> String {
        format!("START {}", self.replica_keyword())
    }

    pub fn reset_replica_sql(&self, kind: ResetReplica) -> String {
        match kind {
            ResetReplica::KeepConnection => format!("RESET {}", self.replica_keyword()),
            ResetReplica::All => format!("RESET {} ALL", self.replica_keyword()),
        }
    }

    /// Semi-sync for no-loss mode (`on`): on the primary, the lossless `AFTER_SYNC` wait
    /// point, a timeout so long it never silently falls back to async, and the source side
    /// enabled; on every instance the replica side enabled (so that it acknowledges, and
    /// can be repointed). The source side stays **off on replicas**: a replica that logs
    /// what it applies would otherwise wait for acknowledgements of its own before
    /// committing, and stop applying. `on = false` turns both sides off. Replicas need
    /// their IO thread restarted to start acknowledging
    /// ([`ServerInfo::restart_io_thread_sql`]).
    pub fn semi_sync_sql(&self, on: bool, primary: bool) -> Vec<String> {
        let n = self.semi_sync_names();
        let wait_point = n.source_enabled.replace("_enabled", "_wait_point");
        let onoff = |b: bool| if b { "ON" } else { "OFF" };
        let mut sql = Vec::new();
        if on && primary {
            sql.push(format!("SET GLOBAL {wait_point} = 'AFTER_SYNC'"));
            sql.push(format!("SET GLOBAL {} = {SEMI_SYNC_NO_LOSS_TIMEOUT_MS}", n.source_timeout));
        }
        sql.push(format!("SET GLOBAL {} = {}", n.source_enabled, onoff(on && primary)));
        sql.push(format!("SET GLOBAL {} = {}", n.replica_enabled, onoff(on)));
        sql
    }

    /// Restart the replication IO thread (a replica starts acknowledging semi-sync only then).
    pub fn restart_io_thread_sql(&self) -> Vec<String> {
        let k = self.replica_keyword();
        vec![format!("STOP {k} IO_THREAD"), format!("START {k} IO_THREAD")]
    }

    /// Statements making the server read-only (`true`) or writable (`false`), in order.
    /// See the module docs for what `read_only` does and does not block per flavor.
    pub fn set_read_only_sql(&self, read_only: bool) -> Vec<String> {
        let v = if read_only { "ON" } else { "OFF" };
        if self.has_super_read_only() {
            if read_only {
                // super_read_only=ON implies read_only=ON; set read_only first anyway so that a
                // failure half-way leaves the weaker but still useful state.
                vec![format!("SET GLOBAL read_only = {v}"), format!("SET GLOBAL super_read_only = {v}")]
            } else {
                vec![format!("SET GLOBAL super_read_only = {v}"), format!("SET GLOBAL read_only = {v}")]
            }
        } else {
            vec![format!("SET GLOBAL read_only = {v}")]
        }
    }

    /// Counts binlog dump threads (connected replicas' IO threads, plus binlog readers such as
    /// CDC tools): `Binlog Dump` and `Binlog Dump GTID` commands.
    pub fn binlog_dump_count_sql(&self) -> &'static str {
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'"
    }
}

/// Quotes `s` as an SQL string literal: `'` doubled, `\` and NUL backslash-escaped.
///
/// Doubling quotes is valid in every `sql_mode`; backslash escapes are not valid under
/// `NO_BACKSLASH_ESCAPES`. Strings without backslashes or NULs (every host and user name in
/// practice) are therefore correct in all modes; for the rest run [`SESSION_SQL_MODE_FIX`] on
/// the session first.
pub fn quote_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            // Ctrl-Z: escaped as the MySQL client does, it confuses Windows tooling otherwise.
            '\u{1a}' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier (database, table, column, channel) with backticks, doubling embedded
/// backticks. Valid regardless of `sql_mode` except `ANSI_QUOTES`-only tools, which still accept
/// backticks.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Removes `NO_BACKSLASH_ESCAPES` from the session's `sql_mode`, so that [`quote_string`]
/// output is read as intended. Harmless when the mode is not set.
pub const SESSION_SQL_MODE_FIX: &str =
    "SET SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE(CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','))";

#[cfg(test)]
mod tests {
    use super::*;

    fn info(v: &str, c: &str) -> ServerInfo {
        detect(v, c).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    #[test]
    fn detects_flavor_and_version() {
        let cases = [
            ("10.11.6-MariaDB-0+deb12u1", "Debian 12", Flavor::MariaDb, (10, 11, 6)),
            ("5.5.5-10.6.16-MariaDB-log", "MariaDB Server", Flavor::MariaDb, (10, 6, 16)),
            ("11.4.2-MariaDB", "mariadb.org binary distribution", Flavor::MariaDb, (11, 4, 2)),
            (
                "10.5.23-MariaDB-1:10.5.23+maria~ubu2004-log",
                "mariadb.org binary distribution",
                Flavor::MariaDb,
                (10, 5, 23),
            ),
            ("8.0.36", "MySQL Community Server - GPL", Flavor::MySql, (8, 0, 36)),
            ("8.4.0", "MySQL Community Server - GPL", Flavor::MySql, (8, 4, 0)),
            ("5.7.44-log", "MySQL Community Server (GPL)", Flavor::MySql, (5, 7, 44)),
            ("8.0.36-28", "Percona Server (GPL), Release 28, Revision 47601f19", Flavor::MySql, (8, 0, 36)),
            ("9.1.0-commercial", "MySQL Enterprise Server - Commercial", Flavor::MySql, (9, 1, 0)),
        ];
        for (v, c, flavor, (a, b, p)) in cases {
            let i = info(v, c);
            assert_eq!((i.flavor, i.version), (flavor, Version::new(a, b, p)), "{v}");
            assert_eq!(i.version_string, v);
        }
        assert_eq!(info("8.0.36", "").to_string(), "MySQL 8.0.36");
        for bad in ["", "MariaDB", "x.y.z", "8", "99999.1.1"] {
            assert!(detect(bad, "").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chooses_status_statements_per_flavor_and_version() {
        let cases = [
            (("10.11.6-MariaDB", ""), "SHOW ALL SLAVES STATUS", "SHOW SLAVE HOSTS"),
            (("5.7.44-log", ""), "SHOW SLAVE STATUS", "SHOW SLAVE HOSTS"),
            (("8.0.21", ""), "SHOW SLAVE STATUS", "SHOW SLAVE HOSTS"),
            (("8.0.22", ""), "SHOW REPLICA STATUS", "SHOW REPLICAS"),
            (("8.0.36", ""), "SHOW REPLICA STATUS", "SHOW REPLICAS"),
            (("8.4.0", ""), "SHOW REPLICA STATUS", "SHOW REPLICAS"),
        ];
        for ((v, c), status, hosts) in cases {
            let i = info(v, c);
            assert_eq!(i.replica_status_sql(), status, "{v}");
            assert_eq!(i.replica_hosts_sql(), hosts, "{v}");
        }
    }

    #[test]
    fn chooses_variable_names_per_flavor_and_version() {
        let maria = info("10.11.6-MariaDB", "");
        assert_eq!(maria.gtid_variables()[..3], ["gtid_current_pos", "gtid_binlog_pos", "gtid_slave_pos"]);
        assert_eq!(maria.log_replica_updates_variable(), "log_slave_updates");
        assert!(!maria.has_super_read_only());
        assert_eq!(maria.semi_sync_names().source_enabled, "rpl_semi_sync_master_enabled");
        assert_eq!(maria.global_status_table(), "information_schema.GLOBAL_STATUS");

        let my57 = info("5.7.44-log", "");
        assert_eq!(my57.gtid_variables(), ["gtid_executed", "gtid_purged", "gtid_mode"]);
        assert_eq!(my57.log_replica_updates_variable(), "log_slave_updates");
        assert!(my57.has_super_read_only());
        assert!(!info("5.7.7", "").has_super_read_only());
        assert_eq!(my57.semi_sync_names().replica_status, "Rpl_semi_sync_slave_status");

        let my8025 = info("8.0.25", "");
        assert_eq!(my8025.log_replica_updates_variable(), "log_slave_updates");
        assert_eq!(my8025.semi_sync_names().source_clients, "Rpl_semi_sync_master_clients");
        let my8026 = info("8.0.26", "");
        assert_eq!(my8026.log_replica_updates_variable(), "log_replica_updates");
        assert_eq!(my8026.semi_sync_names().source_clients, "Rpl_semi_sync_source_clients");
        let my84 = info("8.4.0", "");
        assert_eq!(my84.semi_sync_names().replica_enabled, "rpl_semi_sync_replica_enabled");
        assert_eq!(my84.global_variables_table(), "performance_schema.global_variables");
        assert_eq!(my84.semi_sync_name_candidates(), [SEMI_SYNC_NEW]);
        assert_eq!(my8026.semi_sync_name_candidates(), [SEMI_SYNC_NEW, SEMI_SYNC_OLD]);
        assert_eq!(my8025.semi_sync_name_candidates(), [SEMI_SYNC_OLD]);
        assert_eq!(maria.semi_sync_name_candidates(), [SEMI_SYNC_OLD]);
    }

    fn target(password: &str) -> ChangeSource<'_> {
        ChangeSource {
            host: "db-2.example",
            port: 3307,
            user: "repl",
            password,
            heartbeat_period: Some(Duration::from_millis(1500)),
            connect_retry_s: None,
            tls: ReplicationTls::default(),
        }
    }

    #[test]
    fn replication_tls_options_per_flavor_and_version() {
        let tls = ReplicationTls {
            ssl: true,
            ssl_ca: Some("/etc/mysql/ca's.pem".into()),
            verify_server_cert: true,
            get_source_public_key: true,
        };
        let t = ChangeSource { heartbeat_period: None, tls, ..target("p") };
        let tail = |v: &str, c: &str| {
            let sql = info(v, c).change_source_sql(&t);
            sql[sql.find("_SSL=1").map(|i| i - 6).unwrap_or(0)..].to_string()
        };
        assert_eq!(
            tail("10.11.6-MariaDB", ""),
            "MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/ca''s.pem', MASTER_SSL_VERIFY_SERVER_CERT=1"
        );
        assert_eq!(
            tail("8.0.23", ""),
            "SOURCE_SSL=1, SOURCE_SSL_CA='/etc/mysql/ca''s.pem', SOURCE_SSL_VERIFY_SERVER_CERT=1, GET_SOURCE_PUBLIC_KEY=1"
        );
        assert_eq!(
            tail("8.0.22", ""),
            "MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/ca''s.pem', MASTER_SSL_VERIFY_SERVER_CERT=1, GET_MASTER_PUBLIC_KEY=1"
        );
        assert!(tail("8.4.0", "").ends_with("GET_SOURCE_PUBLIC_KEY=1"));
        // MySQL 5.7 and MariaDB have no caching_sha2_password: no public-key option.
        assert!(!info("5.7.44", "").change_source_sql(&t).contains("PUBLIC_KEY"));
        assert!(!info("10.11.6-MariaDB", "").change_source_sql(&t).contains("PUBLIC_KEY"));
        // Off by default: nothing added.
        assert!(!info("8.0.36", "").change_source_sql(&target("p")).contains("SSL"));
    }

    #[test]
    fn change_source_per_flavor_and_version() {
        let t = target("s3cr'et");
        assert_eq!(
            info("10.11.6-MariaDB", "").change_source_sql(&t),
            "CHANGE MASTER TO MASTER_HOST='db-2.example', MASTER_PORT=3307, MASTER_USER='repl', \
             MASTER_PASSWORD='s3cr''et', MASTER_USE_GTID=slave_pos, MASTER_HEARTBEAT_PERIOD=1.500"
        );
        assert_eq!(
            info("8.0.23", "").change_source_sql(&t),
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='db-2.example', SOURCE_PORT=3307, SOURCE_USER='repl', \
             SOURCE_PASSWORD='s3cr''et', SOURCE_AUTO_POSITION=1, SOURCE_HEARTBEAT_PERIOD=1.500"
        );
        let no_hb = ChangeSource { heartbeat_period: None, connect_retry_s: Some(5), ..target("p") };
        assert_eq!(
            info("8.0.22", "").change_source_sql(&no_hb),
            "CHANGE MASTER TO MASTER_HOST='db-2.example', MASTER_PORT=3307, MASTER_USER='repl', \
             MASTER_PASSWORD='p', MASTER_AUTO_POSITION=1, MASTER_CONNECT_RETRY=5"
        );
        assert!(info("5.7.44", "").change_source_sql(&no_hb).starts_with("CHANGE MASTER TO MASTER_HOST="));
        assert!(info("8.4.0", "").change_source_sql(&no_hb).contains("SOURCE_AUTO_POSITION=1"));
        assert!(!format!("{t:?}").contains("s3cr"), "password must not be Debug-printed");
    }

    #[test]
    fn replica_control_statements_per_flavor_and_version() {
        let maria = info("10.11.6-MariaDB", "");
        let old = info("8.0.21", "");
        let new = info("8.4.0", "");
        assert_eq!(maria.stop_replica_sql(), "STOP SLAVE");
        assert_eq!(maria.start_replica_sql(), "START SLAVE");
        assert_eq!(maria.reset_replica_sql(ResetReplica::All), "RESET SLAVE ALL");
        assert_eq!(old.stop_replica_sql(), "STOP SLAVE");
        assert_eq!(old.reset_replica_sql(ResetReplica::KeepConnection), "RESET SLAVE");
        assert_eq!(new.stop_replica_sql(), "STOP REPLICA");
        assert_eq!(new.start_replica_sql(), "START REPLICA");
        assert_eq!(new.reset_replica_sql(ResetReplica::All), "RESET REPLICA ALL");
    }

    #[test]
    fn read_only_statements_per_flavor() {
        assert_eq!(info("10.11.6-MariaDB", "").set_read_only_sql(true), ["SET GLOBAL read_only = ON"]);
        assert_eq!(info("10.11.6-MariaDB", "").set_read_only_sql(false), ["SET GLOBAL read_only = OFF"]);
        assert_eq!(
            info("8.0.36", "").set_read_only_sql(true),
            ["SET GLOBAL read_only = ON", "SET GLOBAL super_read_only = ON"]
        );
        assert_eq!(
            info("8.0.36", "").set_read_only_sql(false),
            ["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"]
        );
    }

    #[test]
    fn quoting_escapes_what_can_break_out_of_a_literal() {
        assert_eq!(quote_string("plain"), "'plain'");
        assert_eq!(quote_string("it's"), "'it''s'");
        assert_eq!(quote_string(r"a\'b"), r"'a\\''b'");
        assert_eq!(quote_string("nul\0z\u{1a}"), r"'nul\0z\Z'");
        assert_eq!(quote_string("ünï\ncode"), "'ünï\ncode'");
        assert_eq!(quote_string(""), "''");
        // A password crafted to end the literal stays inside it.
        let evil = r"x\', MASTER_HOST='evil";
        let q = quote_string(evil);
        assert_eq!(q, r"'x\\'', MASTER_HOST=''evil'");
        assert_eq!(quote_ident("pri`mus"), "`pri``mus`");
    }

    #[test]
    fn semi_sync_no_loss_sql_per_flavor() {
        let maria = info("10.11.6-MariaDB", "");
        assert_eq!(
            maria.semi_sync_sql(true, true),
            [
                "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'",
                "SET GLOBAL rpl_semi_sync_master_timeout = 4294967295",
                "SET GLOBAL rpl_semi_sync_master_enabled = ON",
                "SET GLOBAL rpl_semi_sync_slave_enabled = ON",
            ]
        );
        assert_eq!(
            maria.semi_sync_sql(true, false),
            ["SET GLOBAL rpl_semi_sync_master_enabled = OFF", "SET GLOBAL rpl_semi_sync_slave_enabled = ON"],
            "a replica that waited for acks of its own would stop applying"
        );
        assert_eq!(maria.semi_sync_sql(false, true).len(), 2);
        assert_eq!(maria.restart_io_thread_sql(), ["STOP SLAVE IO_THREAD", "START SLAVE IO_THREAD"]);
        let my84 = info("8.4.0", "MySQL Community Server - GPL");
        assert_eq!(my84.semi_sync_sql(true, true)[0], "SET GLOBAL rpl_semi_sync_source_wait_point = 'AFTER_SYNC'");
        assert_eq!(my84.semi_sync_sql(true, true)[3], "SET GLOBAL rpl_semi_sync_replica_enabled = ON");
        assert_eq!(my84.restart_io_thread_sql(), ["STOP REPLICA IO_THREAD", "START REPLICA IO_THREAD"]);
    }
}

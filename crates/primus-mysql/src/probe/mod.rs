//! Probing one instance: a reused connection, one round trip, strict timeouts.
//!
//! A probe is the unit of evidence for failure diagnosis, so it has to be cheap enough to run
//! every second against every instance and must never hang: a SIGSTOPped or overloaded server
//! is exactly the case we need to report promptly. Hence:
//!
//! * each [`Prober`] owns one connection to one instance and reuses it; the caller runs one task
//!   per instance, so a slow instance only ever delays its own probes;
//! * after the connection is set up (handshake, plus one `SELECT @@version, @@version_comment`
//!   to learn the dialect), a probe is **one round trip**: a multi-statement batch of the
//!   variables `SELECT` (with scalar subqueries for semi-sync state, uptime and the binlog dump
//!   thread count and whether the heartbeat table exists), the replication status, the
//!   registered replicas and the heartbeat rows (one extra round trip, once per connection, when
//!   the heartbeat table first appears; see `Batch` for why a batch must never contain a
//!   statement that can fail);
//! * every await is bounded: the connection by `connect_timeout`, the flavor query and the batch
//!   by `query_timeout` (one deadline for the whole batch, not per result set);
//! * a connection that timed out or broke is dropped, and the next probe reconnects; a reused
//!   connection found dead (server restarted) is replaced and the probe retried once at once;
//! * errors are typed ([`ProbeError`]) so the diagnosis can tell "refused" from "hangs" from
//!   "rejects our credentials";
//! * the password lives in a [`Secret`], which never prints.
//!
//! [`Prober::measure_cost`] summarises probe latency for sizing probe intervals.
//!
//! A missing heartbeat table is not an error (empty `heartbeat`); other heartbeat read errors
//! are reported in `heartbeat_error` without failing the probe, since the rest of the
//! observation is still valid.
//!
//! The types of this module (observations, errors, configuration) need no feature; the
//! [`Prober`] that produces them needs `client` (mysql_async and tokio).

use crate::flavor::ServerInfo;
use crate::gtid::{AnyGtidSet, MariaBinlogState, MariaGtidSet, MySqlGtidSet};
use crate::heartbeat::{HeartbeatRow, HeartbeatTable};
use crate::status::{ConnectedReplica, ReplicaStatus};
use primus_types::InstanceAddr;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

#[cfg(feature = "client")]
mod prober;
#[cfg(feature = "client")]
pub use prober::Prober;

/// A string that must not leak into logs: `Debug` prints `<redacted>`, there is no `Display`
/// and no `Serialize`. Deserializes from a plain string.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for handing to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

/// How to probe.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Bound on establishing a connection (TCP + handshake + authentication).
    pub connect_timeout: Duration,
    /// Bound on each query phase: the flavor query after connecting, and the whole probe batch.
    pub query_timeout: Duration,
    pub user: String,
    pub password: Secret,
    pub heartbeat_table: HeartbeatTable,
    /// TLS of these connections (off by default).
    pub tls: ClientTls,
}

/// How a coordinator's own connections to MySQL/MariaDB (probes and failover
/// statements) use TLS, as MySQL's `--ssl-mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disabled,
    /// Encrypted; the server's certificate is not checked (protects against passive
    /// listeners only).
    Required,
    /// Encrypted; the certificate must be signed by the CA (`ca_file`, or the system's roots).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host primus connects to.
    VerifyIdentity,
}

/// TLS settings of [`ProbeConfig`]. Files are read at each connect, so a renewed
/// certificate is picked up without a restart; a missing file fails that connect
/// with the path in the error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: TlsMode,
    /// PEM CA certificate(s) that sign the servers' certificates; with it, only these
    /// roots are trusted.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain and key (PEM), for servers that require X509 users.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// mysql_async's TLS options for this mode; `None` when TLS is off.
    #[cfg(feature = "client")]
    pub fn ssl_opts(&self) -> Option<mysql_async::SslOpts> {
        use mysql_async::{ClientIdentity, SslOpts};
        if self.mode == TlsMode::Disabled {
            return None;
        }
        let mut o = SslOpts::default();
        if let Some(ca) = &self.ca_file {
            o = o.with_root_certs(vec![ca.clone().into()]).with_disable_built_in_roots(true);
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            o = o.with_client_identity(Some(ClientIdentity::new(cert.clone().into(), key.clone().into())));
        }
        Some(match self.mode {
            TlsMode::Disabled | TlsMode::Required => {
                o.with_danger_accept_invalid_certs(true).with_danger_skip_domain_validation(true)
            }
            TlsMode::VerifyCa => o.with_danger_skip_domain_validation(true),
            TlsMode::VerifyIdentity => o,
        })
    }
}

impl ProbeConfig {
    /// Defaults: 2 s to connect, 2 s per query phase, heartbeats in `primus.heartbeat`.
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        ProbeConfig {
            connect_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(2),
            user: user.into(),
            password: password.into(),
            heartbeat_table: HeartbeatTable::default(),
            tls: ClientTls::default(),
        }
    }
}

/// What a probe was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStage {
    /// TCP connect, handshake, authentication.
    Connect,
    /// `SELECT @@version, @@version_comment`.
    Detect,
    /// The variables `SELECT` of the probe batch.
    Variables,
    /// `SHOW ... STATUS` of the batch.
    ReplicaStatus,
    /// `SHOW SLAVE HOSTS`/`SHOW REPLICAS` of the batch.
    ReplicaHosts,
    /// Heartbeat read of the batch.
    Heartbeat,
    /// [`Prober::write_heartbeat`].
    HeartbeatWrite,
    /// [`Prober::execute`].
    Execute,
}

impl fmt::Display for ProbeStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ProbeStage::Connect => "connect",
            ProbeStage::Detect => "flavor detection",
            ProbeStage::Variables => "variables query",
            ProbeStage::ReplicaStatus => "replica status query",
            ProbeStage::ReplicaHosts => "replica hosts query",
            ProbeStage::Heartbeat => "heartbeat read",
            ProbeStage::HeartbeatWrite => "heartbeat write",
            ProbeStage::Execute => "statement execution",
        };
        f.write_str(s)
    }
}

/// Why a probe produced no observation. Serializable: coordinators exchange these too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeError {
    /// No TCP connection could be made (refused, no route, name resolution), or it was closed
    /// during the handshake.
    #[error("instance unreachable: {message}")]
    Unreachable { message: String },
    /// Nothing (or not enough) came back in time: the server may be hung, stopped, overloaded,
    /// or the network may drop packets silently.
    #[error("timed out after {after_ms} ms during {stage}")]
    Timeout { stage: ProbeStage, after_ms: u64 },
    /// The server rejected our credentials.
    #[error("access denied (error {code}): {message}")]
    AccessDenied { code: u16, message: String },
    /// The server answered the handshake with another error (too many connections, host
    /// blocked, ...): it is alive but not letting us in.
    #[error("connection rejected by the server (error {code}): {message}")]
    ConnectRejected { code: u16, message: String },
    /// An established connection broke (reset, closed) during `stage`.
    #[error("connection lost during {stage}: {message}")]
    ConnectionLost { stage: ProbeStage, message: String },
    /// The server returned an error for a statement.
    #[error("query failed (error {code:?}): {message}; query: {query}")]
    QueryFailed { query: String, code: Option<u16>, message: String },
    /// A write was refused because the server is read-only.
    #[error("server is read-only: {message}")]
    ReadOnly { message: String },
    /// The server answered something we could not interpret.
    #[error("unexpected answer during {stage}: {message}")]
    Unparseable { stage: ProbeStage, message: String },
}

impl ProbeError {
    /// Every value [`ProbeError::kind`] returns.
    pub const KINDS: [&'static str; 8] = [
        "unreachable",
        "timeout",
        "access_denied",
        "rejected",
        "connection_lost",
        "query_failed",
        "read_only",
        "unparseable",
    ];

    /// A short, stable name of the error's kind (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Unreachable { .. } => "unreachable",
            ProbeError::Timeout { .. } => "timeout",
            ProbeError::AccessDenied { .. } => "access_denied",
            ProbeError::ConnectRejected { .. } => "rejected",
            ProbeError::ConnectionLost { .. } => "connection_lost",
            ProbeError::QueryFailed { .. } => "query_failed",
            ProbeError::ReadOnly { .. } => "read_only",
            ProbeError::Unparseable { .. } => "unparseable",
        }
    }

    /// Whether the connection can no longer be trusted after this error.
    #[cfg(feature = "client")]
    pub(crate) fn poisons_connection(&self) -> bool {
        matches!(self, ProbeError::Timeout { .. } | ProbeError::ConnectionLost { .. } | ProbeError::Unparseable { .. })
    }
}

/// MariaDB's GTID state, or MySQL's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "flavor", rename_all = "lowercase")]
pub enum GtidState {
    MariaDb {
        /// `@@gtid_current_pos`: what this server has applied or written, per domain.
        current_pos: MariaGtidSet,
        /// `@@gtid_binlog_pos`: the last GTIDs in its own binlog.
        binlog_pos: MariaGtidSet,
        /// `@@gtid_slave_pos`: the last GTIDs applied by replication.
        slave_pos: MariaGtidSet,
        strict_mode: bool,
        domain_id: u32,
        /// `@@gtid_binlog_state`: the last seq of every (domain, server) in its binlog, which
        /// keeps transactions written on this server visible after higher seqs from elsewhere
        /// (see [`crate::errant::errant_transactions`]). Empty in observations serialized before
        /// it was read (hence `serde(default)`), and on servers without a binlog.
        #[serde(default)]
        binlog_state: MariaBinlogState,
    },
    MySql {
        /// `@@gtid_executed`.
        executed: MySqlGtidSet,
        /// `@@gtid_purged`: executed but no longer in the binlogs.
        purged: MySqlGtidSet,
        /// `@@gtid_mode`: `OFF`, `OFF_PERMISSIVE`, `ON_PERMISSIVE`, `ON`.
        mode: String,
    },
}

impl GtidState {
    /// The set to compare between servers: MariaDB `gtid_current_pos`, MySQL `gtid_executed`.
    pub fn executed(&self) -> AnyGtidSet {
        match self {
            GtidState::MariaDb { current_pos, .. } => AnyGtidSet::MariaDb(current_pos.clone()),
            GtidState::MySql { executed, .. } => AnyGtidSet::MySql(executed.clone()),
        }
    }
}

/// Semi-synchronous replication state; `None` where the plugin/variable is not present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemiSyncStatus {
    /// `rpl_semi_sync_{master,source}_enabled`.
    pub source_enabled: Option<bool>,
    /// `rpl_semi_sync_{slave,replica}_enabled`.
    pub replica_enabled: Option<bool>,
    /// `Rpl_semi_sync_{master,source}_status`: currently semi-synchronous (not fallen back).
    pub source_active: Option<bool>,
    /// `Rpl_semi_sync_{slave,replica}_status`.
    pub replica_active: Option<bool>,
    /// `Rpl_semi_sync_{master,source}_clients`.
    pub source_clients: Option<u64>,
}

/// Everything one probe learned about one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub addr: InstanceAddr,
    /// When the probe batch was sent, unix milliseconds (prober's clock).
    pub taken_at_ms: u64,
    /// Round trip of the probe batch, microseconds.
    pub latency_us: u64,
    /// Time spent (re)connecting before this probe, if it had to.
    pub connect_us: Option<u64>,
    pub server: ServerInfo,
    pub server_id: u32,
    /// `@@server_uuid` (MySQL).
    pub server_uuid: Option<String>,
    /// `Uptime` status: seconds since the server started (a drop means a restart).
    pub uptime_s: Option<u64>,
    pub read_only: bool,
    /// `None` where the flavor has no such variable (MariaDB, MySQL < 5.7.8).
    pub super_read_only: Option<bool>,
    pub log_bin: bool,
    /// `log_slave_updates` / `log_replica_updates`.
    pub log_slave_updates: bool,
    pub binlog_format: Option<String>,
    pub gtid: GtidState,
    /// One entry per replication channel/connection; empty = not a replica.
    pub replication: Vec<ReplicaStatus>,
    pub semi_sync: SemiSyncStatus,
    /// Replicas registered with this server (`SHOW SLAVE HOSTS`/`SHOW REPLICAS`).
    pub replicas: Vec<ConnectedReplica>,
    /// Threads running `Binlog Dump`/`Binlog Dump GTID`: connected replica IO threads (and other
    /// binlog readers).
    pub binlog_dump_threads: u32,
    /// Rows of the heartbeat table; empty if it does not exist (yet).
    pub heartbeat: Vec<HeartbeatRow>,
    /// Why the heartbeat table could not be read, when it exists but reading failed.
    pub heartbeat_error: Option<String>,
}

impl Observation {
    /// Has at least one replication channel configured.
    pub fn is_replica(&self) -> bool {
        !self.replication.is_empty()
    }

    /// The heartbeat row of `cluster`, if present.
    pub fn heartbeat_of(&self, cluster: &str) -> Option<&HeartbeatRow> {
        self.heartbeat.iter().find(|h| h.cluster == cluster)
    }
}

/// Result of [`Prober::measure_cost`]: wall-clock latency of whole probes, microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCost {
    pub probes: usize,
    /// Connection set-up of the first probe, if it had to connect.
    pub connect_us: Option<u64>,
    pub min_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

//! primusd's configuration file (TOML). Every key is documented in docs/config.md.
//!
//! Errors are one line and name the key, because the person reading them is
//! starting a daemon at 3 a.m.: `config error: /etc/primus.toml line 4: key `node_id`:
//! invalid type: string "x", expected u64`. The binary exits with code 2 on any of them.

use primus_types::{Member, NodeId};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use primus_daemon::ConfigError;
use primus_daemon::EnvOverrides;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This coordinator's id in the Raft group (> 0, unique, never reused).
    pub node_id: NodeId,
    /// Datacenter / zone label of this coordinator.
    #[serde(default = "default_dc")]
    pub datacenter: String,
    /// gRPC listen address for clients and peers.
    pub listen: String,
    /// HTTP listen address (health checks, HAProxy checks, metrics); optional.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Limits of the HTTP endpoint.
    #[serde(default)]
    pub http: HttpSection,
    /// Where Raft log, vote, state machine and snapshots live.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftSection,
    /// The group's founding members; used only when `data_dir` is empty.
    #[serde(default)]
    pub initial_members: Vec<InitialMember>,
    /// How to reach and probe MySQL/MariaDB. Without it, this node probes nothing.
    #[serde(default)]
    pub mysql: Option<MysqlSection>,
    /// When and how to fail over.
    #[serde(default)]
    pub failover: FailoverSection,
    /// Leases of fencing agents (primus-agent).
    #[serde(default)]
    pub fencing: FencingSection,
    /// Commands run around failovers (see crate::hooks).
    #[serde(default)]
    pub hooks: crate::hooks::HooksSection,
    /// `WatchPrimary` streams.
    #[serde(default)]
    pub watch: WatchSection,
    /// TLS for the gRPC port (clients and peers). Without it, everything is plaintext.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Bearer-token authentication of writes (and optionally reads) and of peers.
    #[serde(default)]
    pub auth: Option<AuthSection>,
}

/// `[watch]`: bounds of the `WatchPrimary` streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchSection {
    /// Events a watcher may fall behind before its stream is closed with
    /// RESOURCE_EXHAUSTED (the client then resumes with the last epoch it saw).
    pub buffer: usize,
    /// A node that has known no leader for this long closes its watch streams with
    /// UNAVAILABLE, so clients move to a node that is still in the group.
    pub leaderless_close_ms: u64,
}

impl Default for WatchSection {
    fn default() -> Self {
        WatchSection { buffer: 1024, leaderless_close_ms: 3000 }
    }
}

pub use crate::tls::TlsSection;

/// `[auth]`: where the shared bearer token is. The token itself is never in this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// File holding the token (surrounding whitespace trimmed). The same on every coordinator.
    pub token_file: PathBuf,
    /// Also require the token for reads (GetStatus, ListClusters, …).
    #[serde(default)]
    pub require_token_for_reads: bool,
}

impl AuthSection {
    /// Read the token: trimmed, non-empty, printable ASCII (it travels in an HTTP header).
    pub fn token(&self) -> Result<crate::auth::Token, String> {
        let text = std::fs::read_to_string(&self.token_file)
            .map_err(|e| format!("cannot read {}: {e}", self.token_file.display()))?;
        crate::auth::Token::new(text.trim()).map_err(|e| format!("{}: {e}", self.token_file.display()))
    }
}

/// `[failover]`: detection thresholds and execution bounds. Every value has a default
/// tuned for a LAN; see docs/config.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverSection {
    /// Fail over on our own when the analysis says the primary is dead (per-cluster
    /// settings override it).
    pub automatic: bool,
    /// After an automatic failover, no other automatic one for this cluster until
    /// acknowledged or this long has passed.
    pub recovery_block_period_ms: u64,
    /// A replica whose replication has not moved for this long has lost its primary.
    pub replica_progress_stale_ms: u64,
    /// Coordinator views older than this do not count toward a decision.
    pub view_max_age_ms: u64,
    /// How long the candidate may take to apply what it received before promotion.
    pub catch_up_timeout_ms: u64,
    /// Bound on each step of a failover on MySQL.
    pub step_timeout_ms: u64,
    /// Prefer a candidate in the old primary's datacenter.
    pub prefer_same_datacenter: bool,
    /// Never promote a replica lagging more than this (seconds); unset = no limit.
    pub max_lag_for_candidate_s: Option<u64>,
    /// Split brain: set read_only on every writable instance other than the recorded
    /// primary (not demoted ones, which are always kept read-only, nor instances in
    /// maintenance).
    pub fence_split: bool,
}

/// `[fencing]`: the leases the leader grants to the agents of primaries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FencingSection {
    /// Longest lease an agent may ask for; longer requests are refused.
    pub max_lease_ttl_ms: u64,
    /// Added to every lease before the leader counts it as run out (clock-rate
    /// differences, scheduling).
    pub lease_margin_ms: u64,
    /// Refuse to fail over a primary that has no registered agent (it cannot be
    /// fenced when unreachable). Off: such failovers go on, recorded as unfenced.
    pub require_fencing: bool,
}

impl Config {
    /// A warning when no fencing agent could register with this configuration: its
    /// `[fencing] max_lease_ttl_ms` does not outlast the group's worst leaderless window.
    pub fn fencing_warning(&self) -> Option<String> {
        let window = self.raft.worst_leaderless_ms();
        (self.fencing.max_lease_ttl_ms <= window).then(|| {
            format!(
                "[fencing] max_lease_ttl_ms {} is not longer than the group's worst leaderless window ({window} ms = 2 \
                 x raft.election_timeout_max_ms + a vote round): no fencing agent can register (a leader change \
                 would fence every primary); raise it above {window} ms plus two agent renewals",
                self.fencing.max_lease_ttl_ms
            )
        })
    }
}

impl RaftSection {
    /// How long the group can be without a leader after the leader dies, at worst but for
    /// split votes: a follower waits `election_timeout_max` (openraft's leader lease) plus
    /// up to another `election_timeout_max` after the last heartbeat, then needs a vote
    /// round (bounded by `min(election_timeout_min, rpc_timeout)`).
    pub fn worst_leaderless_ms(&self) -> u64 {
        2 * self.election_timeout_max_ms + self.election_timeout_min_ms.min(self.rpc_timeout_ms)
    }
}

impl Default for FencingSection {
    fn default() -> Self {
        FencingSection { max_lease_ttl_ms: 2000, lease_margin_ms: 700, require_fencing: false }
    }
}

impl Default for FailoverSection {
    fn default() -> Self {
        FailoverSection {
            automatic: true,
            recovery_block_period_ms: 3_600_000,
            replica_progress_stale_ms: 1500,
            view_max_age_ms: 3000,
            catch_up_timeout_ms: 10_000,
            step_timeout_ms: 5000,
            prefer_same_datacenter: true,
            max_lag_for_candidate_s: None,
            fence_split: true,
        }
    }
}

/// `[http]`: bounds of the HTTP endpoint served on `http_listen` (see docs/http.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Bound on one request (handler included), on reading a request's headers and on
    /// a TLS handshake; a connection silent for twice this long is closed.
    pub request_timeout_ms: u64,
    /// `/replica/...` answers 503 for a replica lagging more than this (seconds).
    pub max_replica_lag_s: u64,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection { request_timeout_ms: 5000, max_replica_lag_s: 30, max_connections: 1024 }
    }
}

impl HttpSection {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// `[mysql]`: credentials and timing of probes. Passwords come from a file or an
/// environment variable, never from this file or a command line, and are never logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSection {
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub replication_user: Option<String>,
    #[serde(default)]
    pub replication_password_file: Option<PathBuf>,
    #[serde(default)]
    pub replication_password_env: Option<String>,
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_ms: u64,
    #[serde(default = "d_query_timeout")]
    pub query_timeout_ms: u64,
    #[serde(default = "d_probe_interval")]
    pub probe_interval_ms: u64,
    #[serde(default = "d_heartbeat_interval")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "d_heartbeat_table")]
    pub heartbeat_table: String,
    /// How long discovery may take in total when a cluster is added.
    #[serde(default = "d_discovery_timeout")]
    pub discovery_timeout_ms: u64,
    /// Connect to an instance through another address (NAT, a proxy, test link
    /// proxies): `"db1:3306" = "10.0.0.5:6033"`. Instances are still named by the
    /// address their replicas use.
    #[serde(default)]
    pub connect_via: BTreeMap<String, String>,
    /// TLS of primusd's own connections (probes and failover statements):
    /// `disabled` (default), `required`, `verify_ca`, `verify_identity`.
    #[serde(default)]
    pub tls_mode: primus_mysql::TlsMode,
    /// PEM CA file that signs the servers' certificates (then only it is trusted).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for users created `REQUIRE X509`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Repoints set `MASTER_SSL=1`/`SOURCE_SSL=1`: replication runs over TLS.
    #[serde(default)]
    pub replication_ssl: bool,
    /// `MASTER_SSL_CA`/`SOURCE_SSL_CA`: a CA path on the *replicas'* hosts.
    #[serde(default)]
    pub replication_ssl_ca: Option<String>,
    /// `MASTER_SSL_VERIFY_SERVER_CERT=1`: replicas check the source's host name.
    #[serde(default)]
    pub replication_ssl_verify_server_cert: bool,
    /// MySQL 8: `GET_SOURCE_PUBLIC_KEY=1` on repoints, so a `caching_sha2_password`
    /// replication user can log in to a new source without TLS.
    #[serde(default)]
    pub get_source_public_key: bool,
}

fn d_connect_timeout() -> u64 {
    1000
}
fn d_query_timeout() -> u64 {
    1000
}
fn d_probe_interval() -> u64 {
    1000
}
fn d_heartbeat_interval() -> u64 {
    500
}
fn d_heartbeat_table() -> String {
    "primus.heartbeat".into()
}
fn d_discovery_timeout() -> u64 {
    10_000
}

impl MysqlSection {
    fn secret(file: &Option<PathBuf>, env: &Option<String>, what: &str) -> Result<Option<String>, String> {
        match (file, env) {
            (Some(_), Some(_)) => Err(format!("set only one of {what}_file and {what}_env")),
            (Some(f), None) => std::fs::read_to_string(f)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read {}: {e}", f.display())),
            (None, Some(v)) => std::env::var(v).map(Some).map_err(|_| format!("environment variable {v} is not set")),
            (None, None) => Ok(None),
        }
    }

    /// The probe user's password (from `password_file` or `password_env`).
    pub fn password(&self) -> Result<String, String> {
        Self::secret(&self.password_file, &self.password_env, "password")?
            .ok_or_else(|| "set password_file or password_env".to_string())
    }

    /// The replication user's password, if configured.
    pub fn replication_password(&self) -> Result<Option<String>, String> {
        Self::secret(&self.replication_password_file, &self.replication_password_env, "replication_password")
    }

    /// TLS of primusd's own connections.
    pub fn client_tls(&self) -> primus_mysql::ClientTls {
        primus_mysql::ClientTls {
            mode: self.tls_mode,
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
        }
    }

    /// TLS and authentication options every repoint sets.
    pub fn replication_tls(&self) -> primus_mysql::ReplicationTls {
        primus_mysql::ReplicationTls {
            ssl: self.replication_ssl,
            ssl_ca: self.replication_ssl_ca.clone(),
            verify_server_cert: self.replication_ssl_verify_server_cert,
            get_source_public_key: self.get_source_public_key,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn discovery_timeout(&self) -> Duration {
        Duration::from_millis(self.discovery_timeout_ms)
    }
}

fn default_dc() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every_entries: u64,
    pub keep_logs_after_snapshot: u64,
    pub rpc_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub snapshot_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub membership_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every_entries: 5000,
            keep_logs_after_snapshot: 1000,
            rpc_timeout_ms: 1000,
            connect_timeout_ms: 500,
            snapshot_timeout_ms: 10_000,
            write_timeout_ms: 5000,
            membership_timeout_ms: 120_000,
        }
    }
}

impl RaftSection {
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn membership_timeout(&self) -> Duration {
        Duration::from_millis(self.membership_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitialMember {
    pub id: NodeId,
    pub addr: String,
    #[serde(default = "default_dc")]
    pub datacenter: String,
}

impl Config {
    /// Read, parse and validate (the bootstrap check, which depends on whether
    /// `data_dir` holds a store, is `check_bootstrap`).
    ///
    /// `PRIMUS_*` environment variables override the file's keys (see
    /// [`primus_daemon::env`] and docs/config.md, "Environment overrides").
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = EnvOverrides::from_env(primus_daemon::RESERVED_ENV)?;
        Self::load_with_env(Some(path), path, &env)
    }

    /// Without a file: every key from the environment (`path` only names the source
    /// in error messages).
    pub fn load_env_only(path: &Path) -> Result<Config, ConfigError> {
        let env = EnvOverrides::from_env(primus_daemon::RESERVED_ENV)?;
        Self::load_with_env(None, path, &env)
    }

    /// Read `file` (none: an empty one), merge `env`'s overrides, validate. Errors
    /// about a key an override set name the variable.
    pub fn load_with_env(file: Option<&Path>, path: &Path, env: &EnvOverrides) -> Result<Config, ConfigError> {
        let cfg: Config = match file {
            Some(f) => primus_daemon::read_toml_with_env(f, env)?,
            None => primus_daemon::parse_toml_with_env(path, "", env)?,
        };
        cfg.validate(path).map_err(|e| env.attribute(e))?;
        Ok(cfg)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        primus_daemon::parse_toml(path, text)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be greater than 0".into()));
        }
        if self.fencing.max_lease_ttl_ms == 0 {
            return Err(invalid("fencing.max_lease_ttl_ms", "must be greater than 0".into()));
        }
        if self.watch.buffer == 0 || self.watch.buffer > 1_000_000 {
            return Err(invalid("watch.buffer", format!("must be between 1 and 1000000, got {}", self.watch.buffer)));
        }
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("{:?} is not an IP:port address ({e})", self.listen)))?;
        if let Some(h) = &self.http_listen {
            h.parse::<SocketAddr>()
                .map_err(|e| invalid("http_listen", format!("{h:?} is not an IP:port address ({e})")))?;
        }
        if self.http.request_timeout_ms == 0 {
            return Err(invalid("http.request_timeout_ms", "must be greater than 0".into()));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be greater than 0".into()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be greater than 0".into()));
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!("must be greater than raft.heartbeat_ms ({})", r.heartbeat_ms),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                format!("must be greater than raft.election_timeout_min_ms ({})", r.election_timeout_min_ms),
            ));
        }
        if r.snapshot_every_entries == 0 {
            return Err(invalid("raft.snapshot_every_entries", "must be greater than 0".into()));
        }
        for (key, v) in [
            ("raft.rpc_timeout_ms", r.rpc_timeout_ms),
            ("raft.connect_timeout_ms", r.connect_timeout_ms),
            ("raft.snapshot_timeout_ms", r.snapshot_timeout_ms),
            ("raft.write_timeout_ms", r.write_timeout_ms),
            ("raft.membership_timeout_ms", r.membership_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if let Some(m) = &self.mysql {
            if m.user.is_empty() {
                return Err(invalid("mysql.user", "must not be empty".into()));
            }
            m.password().map_err(|e| invalid("mysql.password_file", e))?;
            m.replication_password().map_err(|e| invalid("mysql.replication_password_file", e))?;
            for (key, v) in [
                ("mysql.connect_timeout_ms", m.connect_timeout_ms),
                ("mysql.query_timeout_ms", m.query_timeout_ms),
                ("mysql.probe_interval_ms", m.probe_interval_ms),
                ("mysql.heartbeat_interval_ms", m.heartbeat_interval_ms),
                ("mysql.discovery_timeout_ms", m.discovery_timeout_ms),
            ] {
                if v == 0 {
                    return Err(invalid(key, "must be greater than 0".into()));
                }
            }
            m.heartbeat_table
                .parse::<primus_mysql::HeartbeatTable>()
                .map_err(|e| invalid("mysql.heartbeat_table", e.to_string()))?;
            for (from, to) in &m.connect_via {
                from.parse::<primus_types::InstanceAddr>()
                    .map_err(|e| invalid(&format!("mysql.connect_via.\"{from}\""), e.to_string()))?;
                check_host_port(to).map_err(|e| invalid(&format!("mysql.connect_via.\"{from}\""), e))?;
            }
            // TLS files are read at each connect; a typo must fail the start, not every probe.
            for (key, file) in [
                ("mysql.tls_ca_file", &m.tls_ca_file),
                ("mysql.tls_cert_file", &m.tls_cert_file),
                ("mysql.tls_key_file", &m.tls_key_file),
            ] {
                if let Some(f) = file {
                    std::fs::File::open(f).map_err(|e| invalid(key, format!("cannot read {}: {e}", f.display())))?;
                }
            }
            if m.tls_cert_file.is_some() != m.tls_key_file.is_some() {
                return Err(invalid(
                    "mysql.tls_cert_file",
                    "set both tls_cert_file and tls_key_file, or neither".into(),
                ));
            }
            let uses_tls_files = m.tls_ca_file.is_some() || m.tls_cert_file.is_some();
            if m.tls_mode == primus_mysql::TlsMode::Disabled && uses_tls_files {
                return Err(invalid(
                    "mysql.tls_mode",
                    "is disabled but TLS files are set: set tls_mode = \"verify_identity\" (or required, verify_ca)"
                        .into(),
                ));
            }
            if !m.replication_ssl && (m.replication_ssl_ca.is_some() || m.replication_ssl_verify_server_cert) {
                return Err(invalid(
                    "mysql.replication_ssl",
                    "is false but replication_ssl_ca or replication_ssl_verify_server_cert is set: set replication_ssl = true"
                        .into(),
                ));
            }
        }
        let f = &self.failover;
        for (key, v) in [
            ("failover.replica_progress_stale_ms", f.replica_progress_stale_ms),
            ("failover.view_max_age_ms", f.view_max_age_ms),
            ("failover.catch_up_timeout_ms", f.catch_up_timeout_ms),
            ("failover.step_timeout_ms", f.step_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0".into()));
            }
        }
        if let Some(m) = &self.mysql {
            if m.replication_user.is_some()
                && m.replication_password_file.is_none()
                && m.replication_password_env.is_none()
            {
                return Err(invalid(
                    "mysql.replication_user",
                    "set replication_password_file or replication_password_env as well".into(),
                ));
            }
        }
        self.hooks.validate_keyed().map_err(|(k, m)| invalid(&k, m))?;
        if let Some(t) = &self.tls {
            crate::tls::check(t).map_err(|(k, m)| invalid(&k, m))?;
        }
        if let Some(a) = &self.auth {
            a.token().map_err(|m| invalid("auth.token_file", m))?;
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in self.initial_members.iter().enumerate() {
            let key = format!("initial_members[{i}]");
            if m.id == 0 {
                return Err(invalid(&format!("{key}.id"), "must be greater than 0".into()));
            }
            if !ids.insert(m.id) {
                return Err(invalid(&format!("{key}.id"), format!("node id {} listed twice", m.id)));
            }
            check_host_port(&m.addr).map_err(|msg| invalid(&format!("{key}.addr"), msg))?;
            if !addrs.insert(m.addr.clone()) {
                return Err(invalid(&format!("{key}.addr"), format!("address {} listed twice", m.addr)));
            }
        }
        Ok(())
    }

    /// Called once `data_dir` is known to be empty: a founding node must be listed.
    pub fn check_bootstrap(&self, path: &Path) -> Result<(), ConfigError> {
        if !self.initial_members.is_empty() && !self.initial_members.iter().any(|m| m.id == self.node_id) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "initial_members".into(),
                message: format!(
                    "node_id {} is not among initial_members and data_dir is empty; list it, or omit \
                     initial_members to start a node that waits to be added with `primusctl members add`",
                    self.node_id
                ),
            });
        }
        Ok(())
    }

    pub fn initial_membership(&self) -> BTreeMap<NodeId, Member> {
        self.initial_members
            .iter()
            .map(|m| (m.id, Member { addr: m.addr.clone(), datacenter: m.datacenter.clone() }))
            .collect()
    }

    pub fn openraft_config(&self) -> Result<openraft::Config, String> {
        let r = &self.raft;
        let c = openraft::Config {
            cluster_name: "primus".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: r.snapshot_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
            max_in_snapshot_log_to_keep: r.keep_logs_after_snapshot,
            purge_batch_size: 256,
            ..Default::default()
        };
        c.validate().map_err(|e| e.to_string())
    }
}

/// `host:port` with a non-empty host and a valid non-zero port.
pub fn check_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().map(|p| p > 0).unwrap_or(false) => Ok(()),
        _ => Err(format!("{s:?} is not a HOST:PORT address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
datacenter = "dc1"
listen = "127.0.0.1:7101"
data_dir = "/tmp/x"
[[initial_members]]
id = 1
addr = "127.0.0.1:7101"
"#;

    fn err(text: &str) -> String {
        match Config::parse(Path::new("c.toml"), text).and_then(|c| c.validate(Path::new("c.toml")).map(|_| c)) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    /// Each section's keys, as serde lists them when it meets an unknown one, must
    /// all appear (as a word) in docs/config.md: a new key cannot ship undocumented.
    #[test]
    fn every_key_is_documented_in_docs_config_md() {
        let docs = include_str!("../../../docs/config.md");
        let probe = "zz_not_a_key = 1";
        let sections =
            ["", "raft", "mysql", "failover", "fencing", "hooks", "watch", "http", "tls", "auth", "initial_members"];
        for sec in sections {
            let text = match sec {
                "" => format!("{probe}\n{GOOD}"),
                "initial_members" => GOOD.replace("id = 1\n", &format!("{probe}\nid = 1\n")),
                s => GOOD.replace("[[initial_members]]", &format!("[{s}]\n{probe}\n[[initial_members]]")),
            };
            let e = match Config::parse(Path::new("c.toml"), &text) {
                Ok(_) => panic!("[{sec}] accepted an unknown key"),
                Err(e) => e.to_string(),
            };
            let missing = primus_daemon::undocumented_keys(&e, docs).unwrap_or_else(|m| panic!("[{sec}]: {m}"));
            assert!(missing.is_empty(), "[{sec}] not documented in docs/config.md: {missing:?}");
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        c.validate(Path::new("c.toml")).unwrap();
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.http.request_timeout_ms, 5000);
        assert_eq!(c.http.max_replica_lag_s, 30);
        assert!(c.openraft_config().is_ok());
    }

    #[test]
    fn errors_are_one_line_and_name_the_key() {
        let cases = [
            (GOOD.replace("node_id = 1\n", ""), "node_id"),
            (GOOD.replace("node_id = 1", "node_id = \"x\""), "node_id"),
            (GOOD.replace("listen = \"127.0.0.1:7101\"", "listen = \"nowhere\""), "listen"),
            (format!("{GOOD}\nbogus = 1\n"), "bogus"),
            (
                GOOD.replace("[[initial_members]]", "[raft]\nheartbeat_ms = 500\n[[initial_members]]"),
                "election_timeout_min_ms",
            ),
            (GOOD.replace("addr = \"127.0.0.1:7101\"", "addr = \"x\""), "initial_members[0].addr"),
            (GOOD.replace("[[initial_members]]", "[raft]\nturbo = true\n[[initial_members]]"), "turbo"),
            (GOOD.replace("[[initial_members]]", "[http]\nturbo = true\n[[initial_members]]"), "http.turbo"),
            (
                GOOD.replace("[[initial_members]]", "[http]\nrequest_timeout_ms = 0\n[[initial_members]]"),
                "http.request_timeout_ms",
            ),
        ];
        for (text, key) in cases {
            let e = err(&text);
            if key == "node_id" && !text.contains("node_id") {
                assert!(e.contains("key `node_id`: missing field"), "{e}");
            }
            assert!(!e.contains('\n'), "multi-line error: {e}");
            assert!(e.contains(key), "error {e:?} does not name {key}");
        }
    }

    #[test]
    fn tls_and_auth_problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let token = dir.path().join("token");
        let cases = [
            (
                format!("{GOOD}\n[tls]\ncert_file = \"{d}/c\"\nkey_file = \"{d}/k\"\nca_file = \"{d}/ca\"\n"),
                "tls.cert_file",
            ),
            (format!("{GOOD}\n[tls]\ncert_file = \"{d}/c\"\n"), "key_file"),
            (format!("{GOOD}\n[tls]\ncertfile = \"x\"\n"), "tls.certfile"),
            (format!("{GOOD}\n[auth]\ntoken_file = \"{}\"\n", token.display()), "auth.token_file"),
            (format!("{GOOD}\n[auth]\ntoken = \"inline-secret\"\n"), "auth.token"),
        ];
        std::fs::write(&token, "\n \n").unwrap();
        for (text, key) in cases {
            let e = err(&text);
            assert!(!e.contains('\n'), "multi-line error: {e}");
            assert!(e.contains(key), "error {e:?} does not name {key}");
            assert!(!e.contains("inline-secret"), "error repeats a secret: {e}");
        }
        std::fs::write(&token, "  s3cret-token\n").unwrap();
        let ok = format!("{GOOD}\n[auth]\ntoken_file = \"{}\"\n", token.display());
        let c = Config::parse(Path::new("c.toml"), &ok).unwrap();
        c.validate(Path::new("c.toml")).unwrap();
        let auth = c.auth.as_ref().unwrap();
        assert!(!auth.require_token_for_reads);
        assert!(!format!("{:?}", auth.token().unwrap()).contains("s3cret"));
    }

    fn load_env(file_text: Option<&str>, vars: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primusd.toml");
        if let Some(t) = file_text {
            std::fs::write(&path, t).unwrap();
        }
        let env =
            EnvOverrides::from_vars(vars.iter().copied(), primus_daemon::RESERVED_ENV).map_err(|e| e.to_string())?;
        Config::load_with_env(file_text.map(|_| path.as_path()), &path, &env).map_err(|e| e.to_string())
    }

    #[test]
    fn environment_overrides_any_key_over_the_file() {
        let c = load_env(
            Some(GOOD),
            &[
                ("PRIMUS_NODE_ID", "2"),
                ("PRIMUS_DATACENTER", "zone-b"),
                ("PRIMUS_HTTP_LISTEN", "0.0.0.0:7200"),
                ("PRIMUS_RAFT__HEARTBEAT_MS", "100"),
                ("PRIMUS_RAFT__ELECTION_TIMEOUT_MIN_MS", "1000"),
                ("PRIMUS_RAFT__ELECTION_TIMEOUT_MAX_MS", "2000"),
                ("PRIMUS_FAILOVER__AUTOMATIC", "false"),
                ("PRIMUS_HTTP__MAX_REPLICA_LAG_S", "5"),
                (
                    "PRIMUS_INITIAL_MEMBERS",
                    r#"[{id=1,addr="primus-0.primus:7100"},{id=2,addr="primus-1.primus:7100",datacenter="b"}]"#,
                ),
                ("PRIMUS_ENDPOINTS", "ignored:1"),
                ("PRIMUS_FAULT_INJECTION", "1"),
            ],
        )
        .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.datacenter, "zone-b");
        assert_eq!(c.listen, "127.0.0.1:7101", "keys the environment does not set keep the file's value");
        assert_eq!(c.http_listen.as_deref(), Some("0.0.0.0:7200"));
        assert_eq!((c.raft.heartbeat_ms, c.raft.election_timeout_max_ms), (100, 2000));
        assert_eq!(c.raft.snapshot_every_entries, 5000, "defaults stay");
        assert!(!c.failover.automatic);
        assert_eq!(c.http.max_replica_lag_s, 5);
        assert_eq!(c.initial_members.len(), 2);
        assert_eq!(c.initial_members[1].addr, "primus-1.primus:7100");
        assert_eq!(c.initial_members[1].datacenter, "b");
        assert_eq!(c.initial_members[0].datacenter, "default");
        // A section that is absent from the file is created.
        let c = load_env(
            Some(GOOD),
            &[
                ("PRIMUS_MYSQL__USER", "primus"),
                ("PRIMUS_MYSQL__PASSWORD_ENV", "PRIMUS_MYSQL_PASSWORD"),
                ("PRIMUS_MYSQL_PASSWORD", "pw"),
            ],
        );
        // PRIMUS_MYSQL_PASSWORD is named by password_env: a secret, not an override; it
        // is read from the real environment, where this test does not set it.
        let e = c.unwrap_err();
        assert!(e.contains("environment variable PRIMUS_MYSQL_PASSWORD is not set"), "{e}");
    }

    /// A reserved variable must not shadow a top-level key (it could not be set from
    /// the environment), and docs/config.md must list every one.
    #[test]
    fn reserved_variables_name_no_key_and_are_documented() {
        let docs = include_str!("../../../docs/config.md");
        let e = Config::parse(Path::new("c.toml"), &format!("zz_not_a_key = 1\n{GOOD}")).unwrap_err().to_string();
        for var in primus_daemon::RESERVED_ENV {
            let key = var.strip_prefix("PRIMUS_").unwrap().to_ascii_lowercase();
            assert!(!e.contains(&format!("`{key}`")), "{var} is reserved but names the key {key}");
            assert!(docs.contains(var), "{var} is reserved but docs/config.md does not list it");
        }
        for (_, var) in crate::hooks::PLACEHOLDERS.iter().chain([&("", "PRIMUS_HOOK")]) {
            assert!(primus_daemon::RESERVED_ENV.contains(var), "hooks set {var}: add it to RESERVED_ENV");
        }
    }

    #[test]
    fn environment_alone_is_a_configuration() {
        let c = load_env(
            None,
            &[
                ("PRIMUS_NODE_ID", "1"),
                ("PRIMUS_LISTEN", "0.0.0.0:7100"),
                ("PRIMUS_DATA_DIR", "/var/lib/primus"),
                ("PRIMUS_INITIAL_MEMBERS", r#"[{id=1,addr="primus-0.primus:7100"}]"#),
            ],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/primus"));
        assert!(load_env(None, &[]).unwrap_err().contains("missing field `node_id`"));
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let cases = [
            (
                "PRIMUS_RAFT__HEARTBEAT_MS",
                "fast",
                "PRIMUS_RAFT__HEARTBEAT_MS: invalid type: string \"fast\", expected u64",
            ),
            (
                "PRIMUS_FAILOVER__AUTOMATIC",
                "yes",
                "PRIMUS_FAILOVER__AUTOMATIC: invalid type: string \"yes\", expected a boolean",
            ),
            ("PRIMUS_RAFT__TURBO", "1", "PRIMUS_RAFT__TURBO: unknown field `turbo`"),
            ("PRIMUS_COLOUR", "blue", "PRIMUS_COLOUR: unknown field `colour`"),
            ("PRIMUS_LISTEN", "localhost:7100", "PRIMUS_LISTEN: \"localhost:7100\" is not an IP:port address"),
            ("PRIMUS_RAFT__HEARTBEAT_MS", "0", "PRIMUS_RAFT__HEARTBEAT_MS: must be greater than 0"),
            (
                "PRIMUS_INITIAL_MEMBERS",
                "[{id=1,addr=\"x\"}]",
                "PRIMUS_INITIAL_MEMBERS: \"x\" is not a HOST:PORT address",
            ),
            ("PRIMUS_INITIAL_MEMBERS", "[{id=1}]", "PRIMUS_INITIAL_MEMBERS: missing field `addr`"),
        ];
        for (var, value, want) in cases {
            let e = load_env(Some(GOOD), &[(var, value)]).unwrap_err();
            assert!(e.contains(want), "{var}={value}: {e}");
            assert!(!e.contains('\n'), "multi-line error: {e}");
        }
    }

    #[test]
    fn founding_node_must_be_listed() {
        let c = Config::parse(Path::new("c.toml"), &GOOD.replace("node_id = 1", "node_id = 4")).unwrap();
        let e = c.check_bootstrap(Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("initial_members"), "{e}");
        // Omitting initial_members is how a node asks to wait to be added.
        let c = Config::parse(Path::new("c.toml"), GOOD.split("[[initial_members]]").next().unwrap()).unwrap();
        assert!(c.check_bootstrap(Path::new("c.toml")).is_ok());
    }
}

#[cfg(test)]
mod mysql_tls_tests {
    use super::*;

    fn with_mysql(keys: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "x").map_err(|e| e.to_string())?;
        let text = format!(
            "node_id = 1\nlisten = \"127.0.0.1:7101\"\ndata_dir = \"/tmp/x\"\n[[initial_members]]\nid = 1\n\
             addr = \"127.0.0.1:7101\"\n[mysql]\nuser = \"primus\"\npassword_file = \"{}\"\n{keys}\n",
            pw.display()
        );
        let c = Config::parse(Path::new("c.toml"), &text).map_err(|e| e.to_string())?;
        c.validate(Path::new("c.toml")).map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn mysql_tls_keys_are_checked_at_start_with_the_key_named() {
        let cases = [
            ("tls_mode = \"verify_identity\"\ntls_ca_file = \"/nonexistent/ca.pem\"", "mysql.tls_ca_file"),
            ("tls_mode = \"sometimes\"", "tls_mode"),
            ("tls_mode = \"required\"\ntls_cert_file = \"/etc/hostname\"", "mysql.tls_cert_file"),
            ("tls_ca_file = \"/etc/hostname\"", "mysql.tls_mode"),
            ("replication_ssl_ca = \"/etc/mysql/ca.pem\"", "mysql.replication_ssl"),
        ];
        for (keys, want) in cases {
            let e = with_mysql(keys).err().unwrap_or_else(|| panic!("accepted: {keys}"));
            assert!(e.contains(want), "{keys}: {e}");
        }
        let c = with_mysql(
            "tls_mode = \"verify_ca\"\ntls_ca_file = \"/etc/hostname\"\nreplication_ssl = true\n\
             get_source_public_key = true",
        )
        .expect("valid");
        let m = c.mysql.expect("[mysql]");
        assert_eq!(m.client_tls().mode, primus_mysql::TlsMode::VerifyCa);
        assert!(m.client_tls().ssl_opts().is_some());
        assert!(m.replication_tls().ssl && m.replication_tls().get_source_public_key);
        assert!(with_mysql("").expect("valid").mysql.expect("[mysql]").client_tls().ssl_opts().is_none());
    }
}

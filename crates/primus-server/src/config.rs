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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config error: cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config error: {path}{location}: {message}")]
    Parse { path: PathBuf, location: String, message: String },
    #[error("config error: {path}: key `{key}`: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

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
    /// HTTP listen address (health, metrics); optional.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Where Raft log, vote, state machine and snapshots live.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftSection,
    /// The group's founding members; used only when `data_dir` is empty.
    #[serde(default)]
    pub initial_members: Vec<InitialMember>,
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
    /// Read, parse and validate. `data_dir_has_state` is asked only when the
    /// check depends on it (a node missing from `initial_members`).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let cfg = Self::parse(path, &text)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str::<Config>(text).map_err(|e| {
            let (location, message) = one_line(text, &e);
            ConfigError::Parse { path: path.to_path_buf(), location, message }
        })
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
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("{:?} is not an IP:port address ({e})", self.listen)))?;
        if let Some(h) = &self.http_listen {
            h.parse::<SocketAddr>()
                .map_err(|e| invalid("http_listen", format!("{h:?} is not an IP:port address ({e})")))?;
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

/// Turn toml's multi-line error into `line N: key `k`: message`.
fn one_line(text: &str, e: &toml::de::Error) -> (String, String) {
    let message = e.message().replace('\n', " ");
    let Some(span) = e.span() else { return (String::new(), message) };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let key = line.split('=').next().unwrap_or("").trim();
    let location = if !key.is_empty() && line.contains('=') {
        format!(" line {line_no}: key `{key}`")
    } else if !line.is_empty() {
        format!(" line {line_no}: `{line}`")
    } else {
        format!(" line {line_no}")
    };
    (location, message)
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

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        c.validate(Path::new("c.toml")).unwrap();
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert!(c.openraft_config().is_ok());
    }

    #[test]
    fn errors_are_one_line_and_name_the_key() {
        let cases = [
            (GOOD.replace("node_id = 1\n", ""), "node_id"),
            (GOOD.replace("node_id = 1", "node_id = \"x\""), "node_id"),
            (GOOD.replace("listen = \"127.0.0.1:7101\"", "listen = \"nowhere\""), "listen"),
            (format!("{GOOD}\nbogus = 1\n"), "bogus"),
            (GOOD.replace("[[initial_members]]", "[raft]\nheartbeat_ms = 500\n[[initial_members]]"), "election_timeout_min_ms"),
            (GOOD.replace("addr = \"127.0.0.1:7101\"", "addr = \"x\""), "initial_members[0].addr"),
            (GOOD.replace("[[initial_members]]", "[raft]\nturbo = true\n[[initial_members]]"), "turbo"),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert!(!e.contains('\n'), "multi-line error: {e}");
            assert!(e.contains(key), "error {e:?} does not name {key}");
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

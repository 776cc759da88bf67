//! primus-agent's configuration file (TOML). Every key is documented in
//! docs/fencing.md. Errors are one line and name the key; the binary exits with
//! code 2 on any of them.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use primus_daemon::ConfigError;
use primus_daemon::EnvOverrides;

/// primusd's reserved names, but `PRIMUS_TOKEN_FILE`: for the agent it is its own
/// top-level `token_file` (the same meaning primusctl gives it).
pub fn agent_reserved_env() -> Vec<&'static str> {
    primus_daemon::RESERVED_ENV.iter().copied().filter(|v| *v != "PRIMUS_TOKEN_FILE").collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster this agent's mysqld belongs to, as registered with the coordinators.
    pub cluster: String,
    /// `host:port` of this agent's mysqld, as the cluster's topology names it.
    pub instance: String,
    /// Free text naming this agent in the coordinators' logs; default `hostname:pid`.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Every coordinator's `host:port` (or `http(s)://host:port`).
    pub coordinators: Vec<String>,
    #[serde(default)]
    pub lease: LeaseSection,
    pub mysql: MysqlSection,
    #[serde(default)]
    pub fence: FenceSection,
    /// TLS and token for talking to the coordinators.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Bearer token file for the coordinators (`[auth]` on primusd).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[lease]`: how often to renew and how long a lease lasts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSection {
    /// Interval between renewals; also the bound on one renewal call.
    pub renew_interval_ms: u64,
    /// Lease length asked for, counted from when the request is sent.
    pub ttl_ms: u64,
    /// Bound on one RegisterAgent call (a Raft write) at start-up.
    pub register_timeout_ms: u64,
}

impl Default for LeaseSection {
    fn default() -> Self {
        LeaseSection { renew_interval_ms: 300, ttl_ms: 1500, register_timeout_ms: 3000 }
    }
}

impl LeaseSection {
    pub fn renew_interval(&self) -> Duration {
        Duration::from_millis(self.renew_interval_ms)
    }
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
    pub fn register_timeout(&self) -> Duration {
        Duration::from_millis(self.register_timeout_ms)
    }
}

/// `[mysql]`: the local, privileged connection used to fence the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSection {
    /// Unix socket of the local mysqld (preferred: it works when TCP is firewalled).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    pub user: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_query_timeout_ms")]
    pub query_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    300
}
fn default_query_timeout_ms() -> u64 {
    300
}

impl MysqlSection {
    /// The password from `password_file` or `password_env`; none (e.g. unix_socket
    /// authentication of root) when neither is set.
    pub fn password(&self) -> Result<Option<String>, String> {
        match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => Err("set only one of password_file and password_env".into()),
            (Some(f), None) => std::fs::read_to_string(f)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read {}: {e}", f.display())),
            (None, Some(v)) => std::env::var(v).map(Some).map_err(|_| format!("environment variable {v} is not set")),
            (None, None) => Ok(None),
        }
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }
}

/// What to do when mysqld does not confirm the fence in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Escalation {
    /// SIGKILL the mysqld named by `mysqld_pid_file`.
    Kill,
    /// Drop mysqld's TCP port in and out with nftables (`nft`) until the server
    /// answers and is fenced; then reset the connections from before and unblock.
    #[serde(rename = "block_port")]
    BlockPort,
    /// Only log.
    None,
}

/// What the agent does when its mysqld process exits (a crash, a kill, a restart):
/// MariaDB and MySQL start writable unless their config says `read_only=ON`, so a
/// restarted old primary could take a client write before anybody fenced it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartGuard {
    /// `block_port` when `nft` and `ss` work on this host (CAP_NET_ADMIN), else `fence`.
    Auto,
    /// Drop mysqld's TCP port (nftables, as escalation = "block_port" does) the moment
    /// the process exits; when the restarted server answers on the unix socket, fence it
    /// and reopen the port. No TCP client can write before the fence.
    BlockPort,
    /// Fence the restarted server as soon as it answers (polled every 20 ms): a client
    /// may get a write in first unless mysqld starts with `read_only=ON`.
    Fence,
    /// Nothing (mysqld must start with `read_only=ON`).
    Off,
}

/// `[fence]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FenceSection {
    /// mysqld must confirm it is read-only within this long of the decision to
    /// fence, else the agent escalates.
    pub timeout_ms: u64,
    pub escalation: Escalation,
    /// mysqld's pid file (`pid-file` in my.cnf); required with escalation = "kill".
    pub mysqld_pid_file: Option<PathBuf>,
    /// How often the agent checks that a fenced server is still read-only (and
    /// keeps its local connection warm otherwise).
    pub check_interval_ms: u64,
    /// Run the sentinel: a second process that fences the server at the end of the
    /// lease when no agent renewed it — also when the agent was killed or paused.
    pub sentinel: bool,
    /// The `nft` command used by escalation = "block_port".
    pub nft_path: PathBuf,
    /// The `ss` command used by escalation = "block_port" to reset the connections
    /// that were open when the port was blocked.
    pub ss_path: PathBuf,
    /// Where the agent publishes its lease end for the sentinel; default
    /// `/run/primus-agent/<cluster>-<instance>.lease` (a tmpfs path is best).
    pub lease_file: Option<PathBuf>,
    /// What to do when mysqld's process exits (see [`RestartGuard`]). Its pid comes
    /// from `mysqld_pid_file`, else from the server's `@@pid_file`.
    pub restart_guard: RestartGuard,
    /// When mysqld's process exits and its TCP port is blocked (`restart_guard` is
    /// `block_port`, or `auto` where nftables works), hand the lease back to the
    /// leader at once, so that a failover need not wait for it to run out; renew again
    /// only once the restarted server is fenced. Without a blocked port the lease is
    /// never handed back.
    pub release_lease_on_exit: bool,
}

impl Default for FenceSection {
    fn default() -> Self {
        FenceSection {
            timeout_ms: 500,
            escalation: Escalation::Kill,
            mysqld_pid_file: None,
            check_interval_ms: 200,
            sentinel: true,
            nft_path: PathBuf::from("nft"),
            ss_path: PathBuf::from("ss"),
            lease_file: None,
            restart_guard: RestartGuard::Auto,
            release_lease_on_exit: true,
        }
    }
}

impl FenceSection {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn check_interval(&self) -> Duration {
        Duration::from_millis(self.check_interval_ms)
    }
}

/// `[tls]`: like primusctl's --ca/--cert/--key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca_file: PathBuf,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Verify the coordinators' certificates against this name.
    #[serde(default)]
    pub domain: Option<String>,
}

impl Config {
    /// Read, merge the `PRIMUS_*` environment overrides (as primusd does; see
    /// docs/fencing.md), validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = EnvOverrides::from_env(&agent_reserved_env())?;
        Self::load_with_env(path, &env)
    }

    pub fn load_with_env(path: &Path, env: &EnvOverrides) -> Result<Config, ConfigError> {
        let cfg: Config = primus_daemon::read_toml_with_env(path, env)?;
        cfg.validate(path).map_err(|e| env.attribute(e))?;
        Ok(cfg)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        primus_daemon::parse_toml(path, text)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { path: path.to_path_buf(), key: key.into(), message };
        if self.cluster.trim().is_empty() {
            return Err(invalid("cluster", "must not be empty".into()));
        }
        match self.instance.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().map(|p| p > 0).unwrap_or(false) => {}
            _ => return Err(invalid("instance", format!("{:?} is not a HOST:PORT address", self.instance))),
        }
        if self.coordinators.iter().all(|c| c.trim().is_empty()) {
            return Err(invalid("coordinators", "list at least one coordinator HOST:PORT".into()));
        }
        let l = &self.lease;
        if l.renew_interval_ms == 0 {
            return Err(invalid("lease.renew_interval_ms", "must be greater than 0".into()));
        }
        if l.ttl_ms < 2 * l.renew_interval_ms {
            return Err(invalid(
                "lease.ttl_ms",
                format!(
                    "must be at least twice lease.renew_interval_ms ({}), or one lost renewal fences the server",
                    l.renew_interval_ms
                ),
            ));
        }
        if l.register_timeout_ms == 0 {
            return Err(invalid("lease.register_timeout_ms", "must be greater than 0".into()));
        }
        let m = &self.mysql;
        match (&m.socket, &m.host) {
            (Some(_), Some(_)) => {
                return Err(invalid("mysql.socket", "set either socket or host/port, not both".into()))
            }
            (None, None) => return Err(invalid("mysql.socket", "set socket, or host and port".into())),
            (None, Some(_)) if m.port.is_none() => {
                return Err(invalid("mysql.port", "required with mysql.host".into()))
            }
            (Some(_), None) if m.port.is_some() => {
                return Err(invalid("mysql.port", "only with mysql.host (a socket has no port)".into()))
            }
            _ => {}
        }
        if m.user.is_empty() {
            return Err(invalid("mysql.user", "must not be empty".into()));
        }
        m.password().map_err(|e| {
            invalid(
                if m.password_env.is_some() && m.password_file.is_none() {
                    "mysql.password_env"
                } else {
                    "mysql.password_file"
                },
                e,
            )
        })?;
        if m.connect_timeout_ms == 0 {
            return Err(invalid("mysql.connect_timeout_ms", "must be greater than 0".into()));
        }
        if m.query_timeout_ms == 0 {
            return Err(invalid("mysql.query_timeout_ms", "must be greater than 0".into()));
        }
        let f = &self.fence;
        if f.timeout_ms == 0 {
            return Err(invalid("fence.timeout_ms", "must be greater than 0".into()));
        }
        if f.check_interval_ms == 0 {
            return Err(invalid("fence.check_interval_ms", "must be greater than 0".into()));
        }
        if f.escalation == Escalation::Kill && f.mysqld_pid_file.is_none() {
            return Err(invalid(
                "fence.mysqld_pid_file",
                "required with escalation = \"kill\" (or set escalation = \"none\")".into(),
            ));
        }
        if f.escalation == Escalation::BlockPort || f.restart_guard == RestartGuard::BlockPort {
            let key = if f.escalation == Escalation::BlockPort { "escalation" } else { "restart_guard" };
            for (path_key, cmd, package) in
                [("fence.nft_path", &f.nft_path, "nftables"), ("fence.ss_path", &f.ss_path, "iproute2")]
            {
                if !command_exists(cmd) {
                    return Err(invalid(
                        path_key,
                        format!(
                            "{key} = \"block_port\" needs the {} command (package {package}); not found",
                            cmd.display()
                        ),
                    ));
                }
            }
            if self.mysqld_port().is_none() {
                return Err(invalid("instance", format!("{key} = \"block_port\" needs the port of `instance`")));
            }
        }
        if let Some(t) = &self.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(invalid("tls.cert_file", "cert_file and key_file go together".into()));
            }
        }
        self.client_options().map_err(|(key, e)| invalid(key, e))?;
        Ok(())
    }

    /// `agent_id`, or `hostname:pid`.
    /// The TCP port mysqld serves clients on: `[mysql] port` when the agent uses
    /// TCP, else the port of `instance`.
    pub fn mysqld_port(&self) -> Option<u16> {
        self.mysql.port.or_else(|| self.instance.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
    }

    pub fn agent_id(&self) -> String {
        match &self.agent_id {
            Some(a) if !a.trim().is_empty() => a.clone(),
            _ => {
                let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
                format!("{}:{}", if host.is_empty() { "localhost" } else { &host }, std::process::id())
            }
        }
    }

    /// Client options for one renewal (bounded by the renew interval); the key at
    /// fault on error.
    pub fn client_options(&self) -> Result<primus_client::ClientOptions, (&'static str, String)> {
        let tls = match &self.tls {
            Some(t) => {
                let mut o =
                    primus_client::TlsOptions::from_files(&t.ca_file, t.cert_file.as_deref(), t.key_file.as_deref())
                        .map_err(|e| ("tls.ca_file", e.to_string()))?;
                o.domain = t.domain.clone();
                Some(o)
            }
            None => None,
        };
        let token = match &self.token_file {
            Some(f) => Some(primus_client::read_token_file(f).map_err(|e| ("token_file", e.to_string()))?),
            None => None,
        };
        Ok(primus_client::ClientOptions {
            timeout: self.lease.renew_interval(),
            connect_timeout: self.lease.renew_interval(),
            actor: format!("primus-agent {}", self.agent_id()),
            tls,
            token,
        })
    }
}

/// Whether `cmd` names an executable file (a path, or a name found in PATH).
pub(crate) fn command_exists(cmd: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if cmd.components().count() > 1 {
        return executable(cmd);
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| executable(&d.join(cmd))))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "main"
instance = "db1:3306"
coordinators = ["c1:7000", "c2:7000", "c3:7000"]
[mysql]
socket = "/run/mysqld/mysqld.sock"
user = "root"
[fence]
mysqld_pid_file = "/run/mysqld/mysqld.pid"
"#;

    fn check(text: &str) -> Result<Config, ConfigError> {
        let p = Path::new("agent.toml");
        let c = Config::parse(p, text)?;
        c.validate(p)?;
        Ok(c)
    }

    /// Each section's keys, as serde lists them when it meets an unknown one, must all
    /// appear (as a word) in docs/fencing.md: a new key cannot ship undocumented.
    #[test]
    fn every_key_is_documented_in_docs_fencing_md() {
        let docs = include_str!("../../../docs/fencing.md");
        let probe = "zz_not_a_key = 1";
        for sec in ["", "lease", "mysql", "fence", "tls"] {
            let text = match sec {
                "" => format!("{probe}\n{GOOD}"),
                "mysql" | "fence" => GOOD.replace(&format!("[{sec}]\n"), &format!("[{sec}]\n{probe}\n")),
                s => format!("{GOOD}[{s}]\n{probe}\n"),
            };
            let e = match Config::parse(Path::new("agent.toml"), &text) {
                Ok(_) => panic!("[{sec}] accepted an unknown key"),
                Err(e) => e.to_string(),
            };
            let missing = primus_daemon::undocumented_keys(&e, docs).unwrap_or_else(|m| panic!("[{sec}]: {m}"));
            assert!(missing.is_empty(), "[{sec}] not documented in docs/fencing.md: {missing:?}");
        }
    }

    /// A reserved variable must not shadow one of the agent's top-level keys (it could
    /// not be set from the environment); PRIMUS_TOKEN_FILE is the agent's own key.
    #[test]
    fn reserved_variables_name_no_agent_key() {
        let e = Config::parse(Path::new("agent.toml"), &format!("zz_not_a_key = 1\n{GOOD}")).unwrap_err().to_string();
        assert!(e.contains("`token_file`"), "{e}");
        for var in agent_reserved_env() {
            let key = var.strip_prefix("PRIMUS_").unwrap().to_ascii_lowercase();
            assert!(!e.contains(&format!("`{key}`")), "{var} is reserved but names the agent key {key}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, GOOD).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken\n").unwrap();
        let token = token.display().to_string();
        let reserved = agent_reserved_env();
        let load = |vars: &[(&str, &str)]| {
            let env = EnvOverrides::from_vars(vars.iter().copied(), &reserved).unwrap();
            Config::load_with_env(&path, &env).map_err(|e| e.to_string())
        };
        let c = load(&[
            ("PRIMUS_INSTANCE", "db2:3306"),
            ("PRIMUS_COORDINATORS", r#"["primus-0.primus:7100", "primus-1.primus:7100"]"#),
            ("PRIMUS_LEASE__TTL_MS", "2000"),
            ("PRIMUS_MYSQL__USER", "fence"),
            ("PRIMUS_TOKEN_FILE", token.as_str()),
        ])
        .unwrap();
        assert_eq!(c.instance, "db2:3306");
        assert_eq!(c.coordinators, ["primus-0.primus:7100", "primus-1.primus:7100"]);
        assert_eq!(c.lease.ttl_ms, 2000);
        assert_eq!(c.mysql.user, "fence");
        assert_eq!(c.mysql.socket.as_deref(), Some(Path::new("/run/mysqld/mysqld.sock")));
        assert_eq!(c.token_file.as_deref(), Some(Path::new(&token)));
        let e = load(&[("PRIMUS_LEASE__TTL_MS", "long")]).unwrap_err();
        assert!(e.contains("PRIMUS_LEASE__TTL_MS: invalid type"), "{e}");
        let e = load(&[("PRIMUS_FENCE__BOGUS", "1")]).unwrap_err();
        assert!(e.contains("PRIMUS_FENCE__BOGUS: unknown field `bogus`"), "{e}");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() -> Result<(), ConfigError> {
        let c = check(GOOD)?;
        assert_eq!(c.lease.renew_interval_ms, 300);
        assert_eq!(c.lease.ttl_ms, 1500);
        assert_eq!(c.fence.timeout_ms, 500);
        assert_eq!(c.fence.escalation, Escalation::Kill);
        assert!(c.agent_id().contains(':'));
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("user = \"root\"", "user = \"root\"\nbogus = 1"), "mysql.bogus"),
            (GOOD.replace("instance = \"db1:3306\"", "instance = \"db1\""), "instance"),
            (GOOD.replace("[fence]\nmysqld_pid_file = \"/run/mysqld/mysqld.pid\"", ""), "fence.mysqld_pid_file"),
            (format!("{GOOD}\n[lease]\nttl_ms = 400\n"), "lease.ttl_ms"),
            (GOOD.replace("socket = \"/run/mysqld/mysqld.sock\"", "host = \"127.0.0.1\""), "mysql.port"),
            (GOOD.replace("escalation", "x").replace("[fence]", "[fence]\nescalation = \"shoot\""), "fence.escalation"),
            (
                GOOD.replace("coordinators = [\"c1:7000\", \"c2:7000\", \"c3:7000\"]", "coordinators = []"),
                "coordinators",
            ),
        ];
        for (text, key) in cases {
            match check(&text) {
                Ok(_) => panic!("accepted a config with a bad `{key}`:\n{text}"),
                Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "error {e} does not name `{key}`"),
            }
        }
    }

    #[test]
    fn unreadable_tls_and_token_files_name_their_key() {
        for (extra, key) in [("token_file = \"/nonexistent/token\"\n", "token_file"), ("", "tls.ca_file")] {
            let text = if extra.is_empty() {
                format!("{GOOD}\n[tls]\nca_file = \"/nonexistent/ca.pem\"\n")
            } else {
                format!("{extra}{GOOD}")
            };
            match check(&text) {
                Ok(_) => panic!("accepted a config with a bad `{key}`"),
                Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "error {e} does not name `{key}`"),
            }
        }
    }

    #[test]
    fn escalation_none_needs_no_pid_file() -> Result<(), ConfigError> {
        let text = GOOD.replace("mysqld_pid_file = \"/run/mysqld/mysqld.pid\"", "escalation = \"none\"");
        assert_eq!(check(&text)?.fence.escalation, Escalation::None);
        Ok(())
    }
}

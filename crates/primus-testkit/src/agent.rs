//! Real `primus-agent` processes beside sandbox instances.
//!
//! [`AgentProc::start`] writes a config for one [`Instance`] (root over its unix
//! socket, its pid file for the SIGKILL escalation) and spawns the agent with its
//! log in the agent's directory. `kill9`, `sigstop` and `sigcont` are real
//! signals; dropping the handle kills the agent.

use crate::coordinator::bin;
use crate::mariadb::Instance;
use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub cluster: String,
    /// Coordinator endpoints (`host:port`).
    pub coordinators: Vec<String>,
    pub renew_interval_ms: u64,
    pub ttl_ms: u64,
    pub fence_timeout_ms: u64,
    /// `"kill"` or `"none"`.
    pub escalation: String,
    /// Extra TOML appended at the end (e.g. `token_file = ...` before any table:
    /// use `top_level` for that).
    pub extra: String,
    /// Extra top-level keys (before the first table), e.g. `token_file = "..."`.
    pub top_level: String,
    /// Extra environment for the agent process (e.g. a faked clock).
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            cluster: "main".into(),
            coordinators: Vec::new(),
            renew_interval_ms: 300,
            ttl_ms: 1500,
            fence_timeout_ms: 500,
            escalation: "kill".into(),
            extra: String::new(),
            top_level: String::new(),
            env: Vec::new(),
        }
    }
}

/// One primus-agent process.
pub struct AgentProc {
    pub instance: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    netns: Option<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Every pid this handle's agent had: their sentinels are killed on drop.
    pids: Vec<u32>,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for AgentProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProc").field("instance", &self.instance).field("pid", &self.pid()).finish()
    }
}

/// Pids of the sentinel processes (`primus-agent --sentinel-for PID`) of the agent
/// `agent_pid`, found in /proc: they outlive their agent by design.
pub fn sentinel_pids(agent_pid: u32) -> Vec<u32> {
    let needle = format!("--sentinel-for\0{agent_pid}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILL the sentinels of `agent_pid` (test and sandbox teardown).
pub fn kill_sentinels(agent_pid: u32) {
    for pid in sentinel_pids(agent_pid) {
        if let Ok(p) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

/// The agent config for `inst` (root over the unix socket, no password), with its
/// lease file in `dir`.
pub fn agent_config(inst: &Instance, o: &AgentOptions, dir: &Path) -> String {
    let coordinators = o.coordinators.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "cluster = {cluster:?}\ninstance = {instance:?}\nagent_id = {id:?}\ncoordinators = [{coordinators}]\n{top}\n\
         [lease]\nrenew_interval_ms = {ri}\nttl_ms = {ttl}\n\n\
         [mysql]\nsocket = {sock:?}\nuser = \"root\"\nconnect_timeout_ms = 300\nquery_timeout_ms = 300\n\n\
         [fence]\ntimeout_ms = {ft}\nescalation = {esc:?}\nmysqld_pid_file = {pid:?}\ncheck_interval_ms = 100\nlease_file = {lease:?}\n{extra}\n",
        cluster = o.cluster,
        instance = inst.addr(),
        id = format!("test-agent-{}", inst.addr()),
        top = o.top_level,
        ri = o.renew_interval_ms,
        ttl = o.ttl_ms,
        sock = inst.unix_socket().display().to_string(),
        ft = o.fence_timeout_ms,
        esc = o.escalation,
        pid = inst.pid_file().display().to_string(),
        lease = dir.join("lease").display().to_string(),
        extra = o.extra,
    )
}

impl AgentProc {
    /// Start an agent for `inst` in a fresh temporary directory.
    pub fn start(inst: &Instance, o: &AgentOptions) -> Result<AgentProc> {
        let tmp = tempfile::Builder::new().prefix("primus-agent-").tempdir().context("agent temp dir")?;
        let dir = tmp.path().to_path_buf();
        let mut a = Self::start_in(inst, o, &dir)?;
        a._tmp = Some(tmp);
        Ok(a)
    }

    /// Start an agent for `inst` with its config and log in `dir` (kept).
    pub fn start_in(inst: &Instance, o: &AgentOptions, dir: &Path) -> Result<AgentProc> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, agent_config(inst, o, dir))
            .with_context(|| format!("write {}", config_path.display()))?;
        let log_path = dir.join("agent.log");
        let mut a = AgentProc {
            instance: inst.addr(),
            dir: dir.to_path_buf(),
            config_path,
            log_path,
            netns: inst.netns().map(str::to_string),
            child: None,
            env: o.env.clone(),
            pids: Vec::new(),
            _tmp: None,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> Result<()> {
        let exe = bin("primus-agent")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let log2 = log.try_clone().context("dup log file")?;
        // Beside its mysqld: in the same network namespace when it has one.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.arg("--config")
            .arg(&self.config_path)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null())
            .env("RUST_LOG", std::env::var("PRIMUS_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let child = cmd.spawn().with_context(|| format!("spawn {}", exe.display()))?;
        self.pids.push(child.id());
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Start the agent again with the same config (SIGKILLing it first if it runs),
    /// as a service manager restarting it would.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Exit status, if the agent has exited.
    pub fn try_exit(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(c) => c.try_wait().context("wait for agent"),
            None => bail!("agent not started"),
        }
    }

    /// SIGKILL the agent process only: its sentinel lives on, as it would.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("SIGKILL agent")?;
            c.wait().context("reap agent")?;
        }
        Ok(())
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("agent for {} not running", self.instance))?;
        let pid = i32::try_from(pid).context("pid out of range")?;
        kill(Pid::from_raw(pid), sig).with_context(|| format!("{sig} to agent {pid}"))
    }

    pub fn sigstop(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    pub fn sigcont(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until the agent's log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent log has no {needle:?} after {timeout:?}:\n{}", self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Leave the process (and its sentinel) running after drop (the sandbox uses this).
    pub fn detach(mut self) -> Option<u32> {
        self.pids.clear();
        self.child.take().map(|c| c.id())
    }
}

/// Remove the nftables block an agent may have left on `port` (it blocks mysqld's port
/// when mysqld exits, until the restarted server is fenced; an agent stopped before that
/// leaves it in place, by design). Tests and the sandbox must not leave it behind: a
/// later mysqld on the same port would see every TCP connect time out.
pub fn lift_port_block(port: u16, netns: Option<&str>) {
    let table = format!("primus_fence_{port}");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    let _ = cmd
        .args(["delete", "table", "inet", &table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        for pid in &self.pids {
            kill_sentinels(*pid);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(port) = self.instance.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) {
            lift_port_block(port, self.netns.as_deref());
        }
    }
}

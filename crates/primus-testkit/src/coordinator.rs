//! Groups of real `primusd` processes on loopback, for tests, benchmarks and the sandbox.
//!
//! Each node gets its own directory (config, data, log file) under the group's base
//! directory. Faults are real: `kill9` sends SIGKILL, `sigstop` freezes the process,
//! and `set_faults` uses primusd's test-only switch (PRIMUS_FAULT_INJECTION=1) to drop
//! Raft traffic between chosen nodes. Drop kills every process the group started.
//!
//! With `GroupOptions::tls` the group serves TLS only (certificates generated into
//! `<base>/pki`), with `GroupOptions::token` it requires a bearer token; the
//! group's own clients (`client`, `client_for`, `set_faults`) use both.

use anyhow::{anyhow, bail, Context, Result};
use primus_client::{Client, ClientOptions, GetStatusResponse, Role};
use primus_proto::raft::raft_client::RaftClient;
use primus_proto::raft::FaultRequest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Raft timing and snapshot settings written into every node's config.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every_entries: u64,
    pub keep_logs_after_snapshot: u64,
    pub write_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every_entries: 5000,
            keep_logs_after_snapshot: 1000,
            write_timeout_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GroupOptions {
    /// Number of founding members (3 or 5 usually).
    pub nodes: usize,
    pub raft: RaftTuning,
    /// Start primusd with PRIMUS_FAULT_INJECTION=1.
    pub fault_injection: bool,
    /// Put everything here instead of a temporary directory.
    pub base_dir: Option<PathBuf>,
    /// Leave processes and files behind on drop (the sandbox uses this).
    pub keep: bool,
    /// Extra TOML appended to every node's config.
    pub extra_config: String,
    /// Extra TOML for one node only (after `extra_config`), e.g. its `[mysql.connect_via]`.
    pub node_config: BTreeMap<u64, String>,
    /// Also give every node an HTTP listener.
    pub http: bool,
    /// Extra environment variables for every primusd (e.g. PRIMUS_FAILPOINT).
    pub env: Vec<(String, String)>,
    /// Listen on every address (0.0.0.0) instead of 127.0.0.1, so processes in network
    /// namespaces reach the coordinators through a bridge (peers still use 127.0.0.1).
    pub listen_all: bool,
    /// Serve TLS only, peers included, with certificates generated into `<base>/pki`.
    pub tls: bool,
    /// With `tls`: every client and peer must present a certificate (mTLS).
    pub require_client_cert: bool,
    /// Give every node `[auth]` with this token (written to `<base>/token`).
    pub token: Option<String>,
    /// With `token`: reads need it too.
    pub require_token_for_reads: bool,
    /// Founding members whose configs are written but whose processes `start` leaves
    /// alone (a founding member started late: the caller runs `start_node` later).
    pub not_started: Vec<u64>,
    /// Run this primusd binary instead of the build's own (`bin("primusd")`), e.g. an
    /// older release for a rolling-upgrade rehearsal; one node's `NodeProc::primusd`
    /// overrides it.
    pub primusd: Option<PathBuf>,
    /// Run node `i + 1` inside network namespace `netns[i]` (when present), listening
    /// on that namespace's address, which its peers and clients use too (see
    /// [`crate::netns`]). Other nodes stay on 127.0.0.1 (or `listen_all`).
    pub netns: Vec<Option<crate::netns::NetHost>>,
}

/// One primusd process (running or not).
#[derive(Debug)]
pub struct NodeProc {
    pub id: u64,
    pub port: u16,
    pub http_port: Option<u16>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Environment for this node only (after the group's), from its next start.
    pub env: Vec<(String, String)>,
    /// The primusd binary of this node from its next start (default: the group's).
    pub primusd: Option<PathBuf>,
    /// The address peers and clients reach it on (127.0.0.1, or its namespace's).
    pub host: std::net::Ipv4Addr,
    /// Its network namespace, when it runs in one.
    pub netns: Option<String>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
    /// `HOST:PORT` of this node's HTTP endpoint (groups started with `http: true`).
    pub fn http_addr(&self) -> Option<String> {
        self.http_port.map(|p| format!("{}:{p}", self.host))
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
    /// Last lines of this node's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Where cargo put the project's binaries (`target/<profile>/`), found from the
/// running test's own path, or `PRIMUS_BIN_DIR`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("PRIMUS_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(Path::to_path_buf).ok_or_else(|| anyhow!("test binary has no parent dir"))?;
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of a project binary (`primusd`, `primusctl`), or a clear error if it was not built.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.exists() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`, as scripts/test.sh does) \
             or set PRIMUS_BIN_DIR",
            p.display()
        );
    }
    Ok(p)
}

pub struct CoordinatorGroup {
    _tmp: Option<tempfile::TempDir>,
    base: PathBuf,
    opts: GroupOptions,
    pub nodes: BTreeMap<u64, NodeProc>,
    /// The founding members as written into configs.
    founding: Vec<(u64, u16)>,
    /// The certificates, when `opts.tls`.
    pub pki: Option<crate::pki::TestPki>,
    token_file: Option<PathBuf>,
}

impl CoordinatorGroup {
    /// Write configs for `opts.nodes` founding members and start them all.
    pub fn start(opts: GroupOptions) -> Result<CoordinatorGroup> {
        let (tmp, base) = match &opts.base_dir {
            Some(b) => {
                std::fs::create_dir_all(b).with_context(|| format!("create {}", b.display()))?;
                (None, b.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("primus-group-").tempdir().context("tempdir")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut founding = Vec::new();
        for id in 1..=opts.nodes as u64 {
            founding.push((id, crate::ports::free_port()?));
        }
        let pki = if opts.tls { Some(crate::pki::TestPki::generate(&base.join("pki"))?) } else { None };
        let token_file = match &opts.token {
            Some(t) => {
                let f = base.join("token");
                std::fs::write(&f, format!("{t}\n")).with_context(|| format!("write {}", f.display()))?;
                Some(f)
            }
            None => None,
        };
        let mut g = CoordinatorGroup { _tmp: tmp, base, opts, nodes: BTreeMap::new(), founding, pki, token_file };
        for (id, port) in g.founding.clone() {
            g.create_node(id, port, true)?;
        }
        let ids: Vec<u64> = g.nodes.keys().copied().filter(|id| !g.opts.not_started.contains(id)).collect();
        for id in ids {
            g.start_node(id)?;
        }
        Ok(g)
    }

    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    fn create_node(&mut self, id: u64, port: u16, founding: bool) -> Result<()> {
        let dir = self.base.join(format!("node{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let http_port = if self.opts.http { Some(crate::ports::free_port()?) } else { None };
        let r = &self.opts.raft;
        let net = self.net_of(id);
        let host = net.as_ref().map_or(std::net::Ipv4Addr::LOCALHOST, |h| h.addr);
        let listen_ip = match &net {
            Some(h) => h.addr.to_string(),
            None if self.opts.listen_all => "0.0.0.0".into(),
            None => "127.0.0.1".into(),
        };
        let mut cfg = format!(
            "node_id = {id}\ndatacenter = \"dc{id}\"\nlisten = \"{listen_ip}:{port}\"\ndata_dir = \"{}\"\n",
            dir.join("data").display()
        );
        if let Some(h) = http_port {
            let http_ip = if net.is_some() { listen_ip.as_str() } else { "127.0.0.1" };
            cfg.push_str(&format!("http_listen = \"{http_ip}:{h}\"\n"));
        }
        cfg.push_str(&self.opts.extra_config);
        if let Some(extra) = self.opts.node_config.get(&id) {
            cfg.push('\n');
            cfg.push_str(extra);
        }
        cfg.push_str(&format!(
            "\n[raft]\nheartbeat_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n\
             snapshot_every_entries = {}\nkeep_logs_after_snapshot = {}\nwrite_timeout_ms = {}\n",
            r.heartbeat_ms,
            r.election_timeout_min_ms,
            r.election_timeout_max_ms,
            r.snapshot_every_entries,
            r.keep_logs_after_snapshot,
            r.write_timeout_ms
        ));
        if let Some(pki) = &self.pki {
            cfg.push_str(&pki.tls_section(self.opts.require_client_cert));
        }
        if let Some(f) = &self.token_file {
            cfg.push_str(&format!(
                "\n[auth]\ntoken_file = \"{}\"\nrequire_token_for_reads = {}\n",
                f.display(),
                self.opts.require_token_for_reads
            ));
        }
        if founding {
            for (mid, mport) in &self.founding {
                let mhost = self.net_of(*mid).map_or(std::net::Ipv4Addr::LOCALHOST, |h| h.addr);
                cfg.push_str(&format!(
                    "\n[[initial_members]]\nid = {mid}\naddr = \"{mhost}:{mport}\"\ndatacenter = \"dc{mid}\"\n"
                ));
            }
        }
        let config_path = dir.join("primusd.toml");
        std::fs::write(&config_path, cfg).with_context(|| format!("write {}", config_path.display()))?;
        let log_path = dir.join("primusd.log");
        let netns = net.map(|h| h.ns);
        self.nodes.insert(
            id,
            NodeProc {
                id,
                port,
                http_port,
                dir,
                config_path,
                log_path,
                env: Vec::new(),
                primusd: None,
                host,
                netns,
                child: None,
            },
        );
        Ok(())
    }

    fn net_of(&self, id: u64) -> Option<crate::netns::NetHost> {
        usize::try_from(id).ok().and_then(|i| self.opts.netns.get(i.checked_sub(1)?).cloned().flatten())
    }

    /// Start (or restart) node `id` from its existing directory.
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        let fault = self.opts.fault_injection;
        let default_primusd = self.opts.primusd.clone();
        let node = self.nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let primusd = match node.primusd.clone().or(default_primusd) {
            Some(p) => p,
            None => bin("primusd")?,
        };
        if node.is_running() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("open {}", node.log_path.display()))?;
        let log2 = log.try_clone().context("dup log file")?;
        let mut cmd = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&primusd);
                c
            }
            None => Command::new(&primusd),
        };
        cmd.arg("--config")
            .arg(&node.config_path)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null());
        cmd.env("RUST_LOG", std::env::var("PRIMUS_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()));
        if fault {
            cmd.env("PRIMUS_FAULT_INJECTION", "1");
        }
        for (k, v) in self.opts.env.iter().chain(node.env.iter()) {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("spawn {}", primusd.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Add a node that starts with an empty data_dir and no initial_members (it
    /// waits to be added). Returns its address; the caller runs `members add`.
    pub fn spawn_joining_node(&mut self, id: u64) -> Result<String> {
        self.spawn_joining_node_with_env(id, Vec::new())
    }

    /// [`CoordinatorGroup::spawn_joining_node`] with environment for this node only.
    pub fn spawn_joining_node_with_env(&mut self, id: u64, env: Vec<(String, String)>) -> Result<String> {
        let port = crate::ports::free_port()?;
        self.create_node(id, port, false)?;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.env = env;
        }
        self.start_node(id)?;
        Ok(self.nodes[&id].addr())
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.get_mut(&id).expect("node id")
    }

    /// Every node's address, comma-separated (primusctl --endpoints).
    pub fn endpoints(&self) -> String {
        self.nodes.values().map(NodeProc::addr).collect::<Vec<_>>().join(",")
    }

    pub fn endpoints_except(&self, skip: &[u64]) -> String {
        self.nodes.values().filter(|n| !skip.contains(&n.id)).map(NodeProc::addr).collect::<Vec<_>>().join(",")
    }

    /// Client options that pass this group's security: its CA and client
    /// certificate when it serves TLS, its token when it has one.
    pub fn client_options(&self, timeout: Duration) -> Result<ClientOptions> {
        let tls = match &self.pki {
            Some(p) => Some(p.client_tls(true)?),
            None => None,
        };
        Ok(ClientOptions {
            timeout,
            actor: "testkit".into(),
            tls,
            token: self.opts.token.clone(),
            ..Default::default()
        })
    }

    /// A client over every node (or over the given ones).
    pub fn client(&self, timeout: Duration) -> Result<Client> {
        Ok(Client::new(&[self.endpoints()], self.client_options(timeout)?)?)
    }

    pub fn client_for(&self, ids: &[u64], timeout: Duration) -> Result<Client> {
        let eps: Vec<String> = ids.iter().map(|i| self.nodes[i].addr()).collect();
        Ok(Client::new(&eps, self.client_options(timeout)?)?)
    }

    /// A client over the given nodes with options of the caller's choosing.
    pub fn client_with(&self, ids: &[u64], opts: ClientOptions) -> Result<Client> {
        let eps: Vec<String> = ids.iter().map(|i| self.nodes[i].addr()).collect();
        Ok(Client::new(&eps, opts)?)
    }

    /// Status as node `id` itself reports it.
    pub async fn status_of(&self, id: u64) -> Result<GetStatusResponse> {
        let c = self.client_for(&[id], Duration::from_secs(2))?;
        Ok(c.node_status().await?)
    }

    /// Wait until some running node among `among` (all if empty) reports itself
    /// leader and a majority of them agree on it. Returns (leader id, term).
    pub async fn wait_leader(&self, among: &[u64], timeout: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        let ids: Vec<u64> = if among.is_empty() { self.nodes.keys().copied().collect() } else { among.to_vec() };
        loop {
            let mut votes: BTreeMap<(u64, u64), usize> = BTreeMap::new();
            let mut leaders = Vec::new();
            for id in &ids {
                if let Ok(s) = self.status_of(*id).await {
                    if s.role == Role::Leader as i32 {
                        leaders.push((s.node_id, s.term));
                    }
                    if let Some(l) = s.leader_id {
                        *votes.entry((l, s.term)).or_default() += 1;
                    }
                }
            }
            for (l, t) in &leaders {
                if votes.get(&(*l, *t)).copied().unwrap_or(0) * 2 > ids.len() {
                    return Ok((*l, *t));
                }
            }
            if Instant::now() > deadline {
                // Say why: a node that never came up (a port taken between the pick and the
                // bind, a config it refused) shows it in its log.
                let logs: Vec<String> = ids
                    .iter()
                    .filter_map(|id| {
                        self.nodes.get(id).map(|n| format!("--- node {id} log (last 15 lines):\n{}", n.log_tail(15)))
                    })
                    .collect();
                bail!(
                    "no leader agreed by a majority of {ids:?} within {timeout:?} (leaders seen: {leaders:?})\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// SIGTERM node `id` and wait for it to exit; returns its exit code.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> Result<Option<i32>> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let Some(mut c) = node.child.take() else { bail!("node {id} is not running") };
        signal(c.id(), nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().context("wait")? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("node {id} did not exit within {timeout:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM to node `id` without waiting ([`CoordinatorGroup::wait_exit`] reaps it).
    pub fn sigterm(&self, id: u64) -> Result<()> {
        let pid = self.nodes[&id].pid().ok_or_else(|| anyhow!("node {id} not running"))?;
        signal(pid, nix::sys::signal::Signal::SIGTERM)
    }

    /// Wait for node `id` to exit (after [`CoordinatorGroup::sigterm`]); its exit code.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Result<Option<i32>> {
        let node = self.nodes.get_mut(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let Some(mut c) = node.child.take() else { bail!("node {id} is not running") };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().context("wait")? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("node {id} did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigstop(&self, id: u64) -> Result<()> {
        let pid = self.nodes[&id].pid().ok_or_else(|| anyhow!("node {id} not running"))?;
        signal(pid, nix::sys::signal::Signal::SIGSTOP)
    }

    pub fn sigcont(&self, id: u64) -> Result<()> {
        let pid = self.nodes[&id].pid().ok_or_else(|| anyhow!("node {id} not running"))?;
        signal(pid, nix::sys::signal::Signal::SIGCONT)
    }

    /// Make node `id` drop all Raft traffic to and from `peers` (empty heals).
    pub async fn set_faults(&self, id: u64, peers: &[u64]) -> Result<()> {
        let addr = self.nodes[&id].addr();
        let ep = match &self.pki {
            Some(p) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&p.ca)?))
                    .identity(tonic::transport::Identity::from_pem(
                        std::fs::read(&p.node_cert)?,
                        std::fs::read(&p.node_key)?,
                    )),
            )?,
            None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?,
        };
        let ch = ep
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .with_context(|| format!("connect to node {id}"))?;
        let mut c = RaftClient::new(ch);
        let mut req = tonic::Request::new(FaultRequest { drop_peers: peers.to_vec() });
        req.set_timeout(Duration::from_secs(2));
        if let Some(t) = &self.opts.token {
            req.metadata_mut().insert("authorization", format!("Bearer {t}").parse()?);
        }
        c.set_faults(req).await.with_context(|| format!("set faults on node {id}"))?;
        Ok(())
    }

    /// Cut `side` off from every other node, in both directions.
    pub async fn isolate(&self, side: &[u64]) -> Result<()> {
        let others: Vec<u64> = self.nodes.keys().copied().filter(|i| !side.contains(i)).collect();
        for id in side {
            self.set_faults(*id, &others).await?;
        }
        for id in &others {
            self.set_faults(*id, side).await?;
        }
        Ok(())
    }

    /// Remove every fault on every running node.
    pub async fn heal(&mut self) -> Result<()> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes.get_mut(&id).map(|n| n.is_running()).unwrap_or(false) {
                self.set_faults(id, &[]).await?;
            }
        }
        Ok(())
    }

    /// Leave everything running and on disk (for the sandbox).
    pub fn detach(mut self) -> PathBuf {
        self.opts.keep = true;
        for n in self.nodes.values_mut() {
            n.child = None;
        }
        if let Some(t) = self._tmp.take() {
            let p = t.keep();
            return p;
        }
        self.base.clone()
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = i32::try_from(pid).context("pid")?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).with_context(|| format!("kill -{sig} {pid}"))
}

impl Drop for CoordinatorGroup {
    fn drop(&mut self) {
        if self.opts.keep {
            return;
        }
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

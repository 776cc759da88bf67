//! Helpers shared by the integration tests (the heavy lifting is in primus-testkit).

use primus_client::{Client, ClusterSettings, ReadConsistency};
use primus_testkit::coordinator::CoordinatorGroup;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Register `name` through `client`; Ok(true) when acknowledged.
pub async fn register(client: &Client, name: &str) -> anyhow::Result<u64> {
    let r = client.register_cluster(name, &["127.0.0.1:3306".to_string()], ClusterSettings::default()).await?;
    Ok(r.log_index)
}

/// The cluster names node `id` holds in its own state machine (stale read, no leader needed).
pub async fn local_clusters(group: &CoordinatorGroup, id: u64) -> anyhow::Result<BTreeSet<String>> {
    let c = group.client_for(&[id], Duration::from_secs(2))?;
    let r = c.list_clusters(ReadConsistency::Stale).await?;
    Ok(r.clusters.into_iter().map(|c| c.name).collect())
}

/// Wait until node `id`'s local state contains every name in `want`.
pub async fn wait_has_all(
    group: &CoordinatorGroup,
    id: u64,
    want: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = local_clusters(group, id).await.unwrap_or_default();
        let missing: Vec<&String> = want.difference(&have).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "node {id} is missing {} acknowledged clusters after {timeout:?}, e.g. {:?}\n--- node log ---\n{}",
                missing.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                group.node(id).log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the group has recorded each of `ids` as a member that holds Raft log
/// entries (one audit record each: `node N holds Raft log entries`).
pub async fn wait_members_recorded(client: &Client, ids: &[u64], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let audit = client.audit(10_000, ReadConsistency::Linearizable).await;
        let summaries: Vec<String> =
            audit.map(|a| a.records.into_iter().map(|r| r.summary).collect()).unwrap_or_default();
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !summaries.iter().any(|s| s.starts_with(&format!("node {id} holds Raft log entries"))))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the group did not record nodes {missing:?} as holding log entries within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub mod world {
    //! A MariaDB sandbox watched by a real primusd group, optionally with one cut-able
    //! link proxy per (coordinator, instance) pair.

    use primus_client::{GetTopologyResponse, InstanceView, ReadConsistency};
    use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
    use primus_testkit::mariadb::{Sandbox, SandboxOptions, Topology};
    use primus_testkit::proxy::LinkMatrix;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    pub struct World {
        pub sandbox: Sandbox,
        pub group: CoordinatorGroup,
        pub links: Option<LinkMatrix>,
        /// With `primary_in_netns`: the lab and the primary's namespace (dropped last).
        pub net: Option<(primus_testkit::netns::NetLab, primus_testkit::netns::NetHost)>,
        _secrets: tempfile::TempDir,
    }

    pub struct WorldOptions {
        pub topology: Topology,
        pub coordinators: usize,
        pub proxied: bool,
        pub password: String,
        pub probe_interval_ms: u64,
        pub query_timeout_ms: u64,
        pub fault_injection: bool,
        /// Extra TOML for every coordinator (e.g. a `[failover]` section).
        pub extra_config: String,
        /// Extra environment for every primusd (e.g. PRIMUS_FAILPOINT).
        pub env: Vec<(String, String)>,
        /// Give every coordinator an HTTP endpoint (`NodeProc::http_addr`).
        pub http: bool,
        /// Run instance 0 (the primary) in its own network namespace on a bridge, so a
        /// test can cut it off for real (`World::net`); coordinators listen on 0.0.0.0.
        pub primary_in_netns: bool,
        /// Raft timings of the coordinators (the testkit's fast LAN timings by default).
        pub raft: primus_testkit::coordinator::RaftTuning,
        /// Extra TOML for one coordinator (by node id), after `extra_config`: nodes
        /// configured differently from each other.
        pub node_config: BTreeMap<u64, String>,
        /// Servers with these certificates and `require_secure_transport=ON`, replicating
        /// over TLS (the coordinators' `[mysql] tls_*` keys go in `extra_config`).
        pub mysql_tls: Option<primus_testkit::pki::TestPki>,
        /// The coordinators' primusd binary (default: this build's).
        pub primusd: Option<std::path::PathBuf>,
        /// Give every coordinator `[auth]` with this token (the world's client sends it).
        pub token: Option<String>,
    }

    impl Default for WorldOptions {
        fn default() -> Self {
            WorldOptions {
                topology: Topology::PrimaryWithReplicas(2),
                coordinators: 3,
                proxied: false,
                password: "primus-pass".into(),
                probe_interval_ms: 300,
                query_timeout_ms: 800,
                fault_injection: false,
                extra_config: String::new(),
                env: Vec::new(),
                http: false,
                primary_in_netns: false,
                raft: Default::default(),
                node_config: BTreeMap::new(),
                mysql_tls: None,
                primusd: None,
                token: None,
            }
        }
    }

    impl World {
        pub async fn start(o: WorldOptions) -> anyhow::Result<World> {
            let net = if o.primary_in_netns {
                let lab = primus_testkit::netns::NetLab::new("w")?;
                let host = lab.add_host()?;
                Some((lab, host))
            } else {
                None
            };
            let mut sopts = SandboxOptions::new(o.topology);
            if let Some((_, h)) = &net {
                sopts.netns = vec![Some(h.clone())];
            }
            if let Some(pki) = &o.mysql_tls {
                sopts = sopts.with_tls(pki, true);
            }
            let sandbox = Sandbox::start(sopts).await?;
            let secrets = tempfile::tempdir()?;
            let extra = sandbox.coordinator_mysql_section(
                secrets.path(),
                Some(&o.password),
                &format!(
                    "probe_interval_ms = {}\nquery_timeout_ms = {}\nconnect_timeout_ms = {}\n\
                     heartbeat_interval_ms = 200\n{}",
                    o.probe_interval_ms, o.query_timeout_ms, o.query_timeout_ms, o.extra_config
                ),
            )?;
            let mut node_config = o.node_config.clone();
            let links = if o.proxied {
                let m = LinkMatrix::start(o.coordinators, &sandbox.addrs()).await?;
                for i in 0..o.coordinators {
                    let mut t = String::from("[mysql.connect_via]\n");
                    for (from, to) in m.address_map_strings(i) {
                        t.push_str(&format!("\"{from}\" = \"{to}\"\n"));
                    }
                    let own = node_config.entry(i as u64 + 1).or_default();
                    own.push('\n');
                    own.push_str(&t);
                }
                Some(m)
            } else {
                None
            };
            let group = CoordinatorGroup::start(GroupOptions {
                nodes: o.coordinators,
                extra_config: extra,
                node_config,
                fault_injection: o.fault_injection,
                env: o.env,
                http: o.http,
                listen_all: o.primary_in_netns,
                raft: o.raft,
                primusd: o.primusd,
                token: o.token,
                ..Default::default()
            })?;
            group.wait_leader(&[], Duration::from_secs(20)).await?;
            Ok(World { sandbox, group, links, net, _secrets: secrets })
        }

        pub fn client(&self) -> anyhow::Result<primus_client::Client> {
            self.group.client(Duration::from_secs(15))
        }

        /// Run the real `primusctl` against this world's coordinators (blocking: keep
        /// it to short commands).
        pub fn primusctl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
            let ctl = primus_testkit::coordinator::bin("primusctl")?;
            Ok(std::process::Command::new(ctl)
                .args(["--endpoints", &self.group.endpoints(), "--timeout", "15s"])
                .args(args)
                .output()?)
        }

        /// Hand Raft leadership to node `to` with `primusctl members transfer-leader`
        /// (retried: a leader hands over only once its own leader lease has passed).
        pub async fn transfer_leader(&self, to: u64, timeout: Duration) -> anyhow::Result<()> {
            let deadline = Instant::now() + timeout;
            loop {
                let (leader, _) = self.group.wait_leader(&[], Duration::from_secs(10)).await?;
                if leader == to {
                    return Ok(());
                }
                let out = self.primusctl(&["members", "transfer-leader", &to.to_string()])?;
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "leadership did not move from node {leader} to node {to} within {timeout:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        pub async fn topology(&self, cluster: &str) -> anyhow::Result<GetTopologyResponse> {
            Ok(self.client()?.topology(cluster, ReadConsistency::Linearizable).await?)
        }

        /// Register the sandbox as cluster `name` (seeded with its primary), wait until
        /// every coordinator sees every instance, then let `settle` pass (replicas'
        /// progress observed before any fault is injected).
        pub async fn register_sandbox(&self, name: &str, settle: Duration) -> anyhow::Result<()> {
            let n = self.sandbox.instances().len();
            let coordinators = self.group.nodes.len();
            self.client()?
                .register_cluster(name, &[self.sandbox.primary().addr()], primus_client::ClusterSettings::default())
                .await?;
            self.wait_topology(name, "all coordinators see every instance", Duration::from_secs(15), |t| {
                t.instances.len() == n
                    && t.instances.iter().all(|i| i.seen_by.len() == coordinators && i.seen_by.values().all(|ok| *ok))
            })
            .await?;
            tokio::time::sleep(settle).await;
            Ok(())
        }

        /// Poll the leader's topology until `pred` holds for it.
        pub async fn wait_topology(
            &self,
            cluster: &str,
            what: &str,
            timeout: Duration,
            pred: impl Fn(&GetTopologyResponse) -> bool,
        ) -> anyhow::Result<GetTopologyResponse> {
            let deadline = Instant::now() + timeout;
            loop {
                let t = self.topology(cluster).await;
                if let Ok(t) = &t {
                    if pred(t) {
                        return Ok(t.clone());
                    }
                }
                if Instant::now() > deadline {
                    let logs: Vec<String> = self
                        .group
                        .nodes
                        .keys()
                        .map(|id| format!("--- node {id} ---\n{}", self.group.node(*id).log_tail(25)))
                        .collect();
                    anyhow::bail!(
                        "timed out after {timeout:?} waiting for {what}; last topology: {t:#?}\n{}",
                        logs.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Wait until `cluster` has at least `n` failovers and none is in progress.
    pub async fn wait_finished(
        c: &primus_client::Client,
        cluster: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<primus_client::HistoryResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let h = c.history(cluster).await?;
            if h.failovers.len() >= n && h.failovers.iter().all(|f| f.outcome != "in_progress") {
                return Ok(h);
            }
            anyhow::ensure!(Instant::now() < deadline, "failover not finished within {timeout:?}: {h:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Print a failover's steps, each with its time from the start.
    pub fn print_steps(f: &primus_client::FailoverView) {
        for s in &f.steps {
            println!(
                "  step {} +{} ms: {} -> {}",
                s.index,
                s.at_ms.saturating_sub(f.started_at_ms),
                s.description,
                s.outcome
            );
        }
    }

    /// Samples every instance's `read_only` at once every 50 ms (45 ms deadline each) in
    /// the background, until dropped or [`WritableSampler::stop`]ped.
    pub struct WritableSampler {
        task: tokio::task::JoinHandle<Vec<Sample>>,
        stop: tokio::sync::watch::Sender<bool>,
    }

    /// One sample: when, and which instances answered writable.
    #[derive(Debug, Clone)]
    pub struct Sample {
        pub at: Instant,
        pub writable: Vec<String>,
        /// Instances that did not answer within 45 ms.
        pub silent: Vec<String>,
    }

    impl WritableSampler {
        pub fn start(instances: Vec<primus_testkit::mariadb::Instance>) -> WritableSampler {
            let (stop, rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    if *rx.borrow() {
                        return out;
                    }
                    let at = Instant::now();
                    let answers = futures::future::join_all(
                        instances.iter().map(|i| tokio::time::timeout(Duration::from_millis(45), i.read_only())),
                    )
                    .await;
                    let mut s = Sample { at, writable: Vec::new(), silent: Vec::new() };
                    for (i, a) in instances.iter().zip(answers) {
                        match a {
                            Ok(Ok(false)) => s.writable.push(i.addr()),
                            Ok(Ok(true)) => {}
                            _ => s.silent.push(i.addr()),
                        }
                    }
                    out.push(s);
                    tokio::time::sleep_until((at + Duration::from_millis(50)).into()).await;
                }
            });
            WritableSampler { task, stop }
        }

        pub async fn stop(self) -> anyhow::Result<Vec<Sample>> {
            let _ = self.stop.send(true);
            Ok(self.task.await?)
        }
    }

    /// The samples in which two or more instances answered writable.
    pub fn two_writable(samples: &[Sample]) -> Vec<&Sample> {
        samples.iter().filter(|s| s.writable.len() > 1).collect()
    }

    pub fn inst<'a>(t: &'a GetTopologyResponse, addr: &str) -> &'a InstanceView {
        t.instances.iter().find(|i| i.addr == addr).unwrap_or_else(|| panic!("{addr} not in topology {t:#?}"))
    }
}

pub mod browser {
    //! Debian's headless Chromium, driven over WebDriver (chromedriver) with fantoccini:
    //! the page's tests look at it as an operator's browser does.

    use anyhow::Context;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const CHROMIUM: &str = "/usr/bin/chromium";
    const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
    const HOW: &str = "the page's browser tests need Debian's headless Chromium and its WebDriver: \
                       apt-get install -y chromium chromium-driver (scripts/ensure-chromium.sh, which scripts/test.sh runs)";

    pub struct Browser {
        pub client: fantoccini::Client,
        driver: Child,
        _profile: tempfile::TempDir,
    }

    impl Browser {
        /// Start chromedriver and a headless Chromium session with a laptop-sized window.
        pub async fn start() -> anyhow::Result<Browser> {
            for bin in [CHROMIUM, CHROMEDRIVER] {
                anyhow::ensure!(Path::new(bin).exists(), "{bin} is missing: {HOW}");
            }
            let profile = tempfile::tempdir()?;
            let port = primus_testkit::ports::free_port()?;
            let log = std::fs::File::create(profile.path().join("chromedriver.log"))?;
            // Its own process group: dropping the browser kills chromedriver and the
            // Chromium it started, whatever state the session is in.
            let driver = std::os::unix::process::CommandExt::process_group(&mut Command::new(CHROMEDRIVER), 0)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {CHROMEDRIVER}: {HOW}"))?;
            let mut b = DriverGuard(Some(driver));
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                anyhow::ensure!(Instant::now() < deadline, "chromedriver did not listen on port {port} within 20 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let args = vec![
                "--headless=new".to_string(),
                "--no-sandbox".into(),
                "--disable-gpu".into(),
                "--disable-dev-shm-usage".into(),
                "--disable-quic".into(),
                "--no-first-run".into(),
                "--disable-background-networking".into(),
                "--disable-component-update".into(),
                "--disable-sync".into(),
                "--window-size=1440,1000".into(),
                format!("--user-data-dir={}", profile.path().join("profile").display()),
            ];
            let mut caps = serde_json::Map::new();
            caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
            let client = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .with_context(|| format!("open a Chromium session through chromedriver: {HOW}"))?;
            let driver = b.0.take().expect("driver present");
            Ok(Browser { client, driver, _profile: profile })
        }

        /// Evaluate `js` (a function body: `return …;`) in the page.
        pub async fn eval(&self, js: &str) -> anyhow::Result<serde_json::Value> {
            Ok(self.client.execute(js, vec![]).await?)
        }

        /// Poll `js` until it returns `true`; returns how long that took.
        pub async fn wait_for(&self, what: &str, js: &str, timeout: Duration) -> anyhow::Result<Duration> {
            let t0 = Instant::now();
            loop {
                if self.eval(js).await.ok().and_then(|v| v.as_bool()) == Some(true) {
                    return Ok(t0.elapsed());
                }
                if t0.elapsed() > timeout {
                    let text = self.eval("return document.body.innerText;").await.unwrap_or_default();
                    let html = self.eval("return document.querySelector('main')?.innerHTML;").await.unwrap_or_default();
                    anyhow::bail!(
                        "the page did not show {what} within {timeout:?}; it shows:\n{}\n\nHTML: {}",
                        text.as_str().unwrap_or(""),
                        html.as_str().unwrap_or("")
                    );
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }

        /// Save a PNG of the window to `dir/name.png`.
        pub async fn screenshot(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
            std::fs::create_dir_all(dir)?;
            let png = self.client.screenshot().await?;
            let path = dir.join(format!("{name}.png"));
            std::fs::write(&path, png)?;
            println!("screenshot: {}", path.display());
            Ok(path)
        }
    }

    fn kill_group(c: &mut Child) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).status();
        let _ = c.kill();
        let _ = c.wait();
    }

    struct DriverGuard(Option<Child>);
    impl Drop for DriverGuard {
        fn drop(&mut self) {
            if let Some(c) = &mut self.0 {
                kill_group(c);
            }
        }
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            kill_group(&mut self.driver);
        }
    }
}

//! `primus-sandbox up|down|status`: a local MariaDB replication sandbox (a primary
//! and two replicas, GTID) watched by three primusd coordinators, with one
//! primus-agent beside each mariadbd (docs/fencing.md), left running in
//! the background with everything under one directory. Run through
//! `scripts/sandbox.sh`, which installs MariaDB and builds the binaries first.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use primus_client::{ClusterSettings, ReadConsistency};
use primus_testkit::agent::{AgentOptions, AgentProc};
use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions};
use primus_testkit::mariadb::{Sandbox, SandboxOptions, Topology};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "A local MariaDB replication sandbox watched by three primusd coordinators")]
struct Cli {
    /// Where the sandbox keeps everything (databases, coordinator data, logs).
    #[arg(long, env = "PRIMUS_SANDBOX_DIR", default_value = ".sandbox")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start MariaDB (1 primary, 2 replicas), 3 coordinators and one agent per
    /// mariadbd; register the cluster (default).
    Up,
    /// Stop every process of the sandbox and delete its directory.
    Down,
    /// Show whether the sandbox runs, and its topology.
    Status,
}

#[derive(Serialize, Deserialize)]
struct State {
    endpoints: String,
    cluster: String,
    coordinators: Vec<(u64, u32, String)>,
    mariadb: Vec<(String, u32)>,
    /// (instance, pid) of each primus-agent.
    #[serde(default)]
    agents: Vec<(String, u32)>,
    /// Each coordinator's `http_listen` (health checks, metrics, the JSON API).
    #[serde(default)]
    http: Vec<String>,
}

/// The page's URL first, then the JSON API's, on the first coordinator (every
/// coordinator serves both).
fn print_api(s: &State) {
    if let Some(first) = s.http.first() {
        println!("Page: http://{first}/clusters/{}   (overview: http://{first}/)", s.cluster);
        println!("API:  http://{first}/api/v1/status   (every coordinator: {})", s.http.join(", "));
    }
}

const CLUSTER: &str = "sandbox";

fn alive(pid: u32) -> bool {
    i32::try_from(pid).map(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()).unwrap_or(false)
}

fn load(dir: &Path) -> Result<Option<State>> {
    let p = dir.join("state.json");
    if !p.exists() {
        return Ok(None);
    }
    let s = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(Some(serde_json::from_slice(&s).with_context(|| format!("parse {}", p.display()))?))
}

fn primusctl(endpoints: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(bin("primusctl")?).args(["--endpoints", endpoints]).args(args).status()?;
    if !st.success() {
        bail!("primusctl {} failed", args.join(" "));
    }
    Ok(())
}

fn print_next_steps(dir: &Path, s: &State) -> Result<()> {
    let ctl = bin("primusctl")?;
    println!();
    print_api(s);
    println!();
    println!("The sandbox runs in the background (data and logs under {}).", dir.display());
    println!("  export PRIMUS_ENDPOINTS={}", s.endpoints);
    println!("  {} status                  # the coordinator group", ctl.display());
    println!("  {} topology {}        # the MariaDB replication tree", ctl.display(), s.cluster);
    println!(
        "  mariadb -h127.0.0.1 -P{} -uprimus -pprimus-pass   # the primary",
        s.mariadb[0].0.rsplit(':').next().unwrap_or("")
    );
    println!("  {} watch {}           # one line per primary change", ctl.display(), s.cluster);
    println!(
        "  cargo run -p primus-client --example follow_primary -- --cluster {}   # an app that follows the primary",
        s.cluster
    );
    println!("Stop and delete it:  scripts/sandbox.sh down");
    Ok(())
}

async fn up(dir: &Path) -> Result<()> {
    if let Some(s) = load(dir)? {
        let down: Vec<String> = s
            .coordinators
            .iter()
            .filter(|(_, pid, _)| !alive(*pid))
            .map(|(id, _, _)| format!("primusd {id}"))
            .chain(s.mariadb.iter().filter(|(_, pid)| !alive(*pid)).map(|(a, _)| format!("mariadbd {a}")))
            .collect();
        if down.is_empty() {
            print_api(&s);
            println!("The sandbox is already running in {}; reusing it.", dir.display());
            primusctl(&s.endpoints, &["status"])?;
            primusctl(&s.endpoints, &["topology", &s.cluster])?;
            return print_next_steps(dir, &s);
        }
        bail!(
            "a sandbox exists in {} but {} not running; run `scripts/sandbox.sh down` to remove it, then start again",
            dir.display(),
            down.join(", ")
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    println!("starting MariaDB: 1 primary + 2 replicas with GTID replication…");
    let sandbox =
        Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2)).keep_in(dir.join("mariadb"))).await?;
    for i in sandbox.instances() {
        println!("  {} server_id {}", i.addr(), i.server_id());
    }
    // An application user as applications have (no SUPER / READ ONLY ADMIN, so
    // read_only stops it), for the follow_primary example.
    for sql in [
        "CREATE DATABASE IF NOT EXISTS app",
        "CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pass'",
        "GRANT ALL PRIVILEGES ON app.* TO 'app'@'%'",
    ] {
        sandbox.primary().exec(sql).await.with_context(|| format!("sandbox setup: {sql}"))?;
    }
    println!("starting 3 primusd coordinators…");
    let extra = sandbox.coordinator_mysql_section(&dir, None, "")?;
    let group = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        base_dir: Some(dir.join("coordinators")),
        keep: true,
        http: true,
        extra_config: extra,
        ..Default::default()
    })?;
    let (leader, term) = group.wait_leader(&[], Duration::from_secs(30)).await?;
    if let Some(http) = group.nodes.values().find_map(|n| n.http_addr()) {
        println!("  page: http://{http}/clusters/{CLUSTER}   (live; API under http://{http}/api/v1/)");
    }
    println!("  leader: node {leader} (term {term})");
    let client = group.client(Duration::from_secs(20))?;
    let primary = sandbox.primary().addr();
    println!("registering cluster {CLUSTER} from seed {primary} (discovers the replicas)…");
    client.register_cluster(CLUSTER, &[primary], ClusterSettings::default()).await?;
    // Give every coordinator a probe round so the view shows all of them.
    for _ in 0..50 {
        let t = client.topology(CLUSTER, ReadConsistency::Linearizable).await?;
        if t.instances.iter().all(|i| i.seen_by.len() == 3 && i.heartbeat_delay_ms.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("starting one primus-agent per mariadbd (leases and self-fencing)…");
    let mut agents = Vec::new();
    for i in sandbox.instances() {
        let opts =
            AgentOptions { cluster: CLUSTER.into(), coordinators: vec![group.endpoints()], ..Default::default() };
        let a = AgentProc::start_in(i, &opts, &dir.join("agents").join(format!("node-{}", i.index())))?;
        println!("  agent for {} (log {})", i.addr(), a.log_path.display());
        agents.push((i.addr(), a.detach().unwrap_or(0)));
    }
    let state = State {
        endpoints: group.endpoints(),
        cluster: CLUSTER.into(),
        coordinators: group.nodes.values().map(|n| (n.id, n.pid().unwrap_or(0), n.addr())).collect(),
        mariadb: sandbox.instances().iter().map(|i| (i.addr(), i.pid().unwrap_or(0))).collect(),
        agents,
        http: group.nodes.values().filter_map(|n| n.http_addr()).collect(),
    };
    std::fs::write(dir.join("state.json"), serde_json::to_vec_pretty(&state)?)?;
    group.detach();
    sandbox.keep();
    primusctl(&state.endpoints, &["status"])?;
    println!();
    primusctl(&state.endpoints, &["topology", CLUSTER])?;
    print_next_steps(&dir, &state)
}

fn down(dir: &Path) -> Result<()> {
    let Some(s) = load(dir)? else {
        println!("no sandbox in {}", dir.display());
        return Ok(());
    };
    // Agents first: an agent whose coordinators vanish fences (or kills) its mariadbd.
    for (addr, pid) in &s.agents {
        primus_testkit::agent::kill_sentinels(*pid);
        if alive(*pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
            println!("stopped primus-agent for {addr} (pid {pid})");
        }
        // A block the agent put on its mariadbd's port (restart guard) goes with it.
        if let Some(port) = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()) {
            primus_testkit::agent::lift_port_block(port, None);
        }
    }
    for (id, pid, _) in &s.coordinators {
        if alive(*pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::Signal::SIGKILL);
            println!("stopped primusd {id} (pid {pid})");
        }
    }
    Sandbox::destroy(&dir.join("mariadb"))?;
    println!("stopped MariaDB");
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    println!("removed {}", dir.display());
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let Some(s) = load(dir)? else {
        bail!("no sandbox in {} (start one with scripts/sandbox.sh)", dir.display());
    };
    print_api(&s);
    for (id, pid, addr) in &s.coordinators {
        println!("primusd {id} at {addr}: {}", if alive(*pid) { "running" } else { "DOWN" });
    }
    for (addr, pid) in &s.mariadb {
        println!("mariadbd {addr}: {}", if alive(*pid) { "running" } else { "DOWN" });
    }
    for (addr, pid) in &s.agents {
        println!("primus-agent for {addr}: {}", if alive(*pid) { "running" } else { "DOWN" });
    }
    primusctl(&s.endpoints, &["topology", &s.cluster])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd.unwrap_or(Cmd::Up) {
        Cmd::Up => up(&cli.dir).await,
        Cmd::Down => down(&cli.dir),
        Cmd::Status => status(&cli.dir),
    };
    if let Err(e) = r {
        eprintln!("primus-sandbox: error: {e:#}");
        std::process::exit(1);
    }
}

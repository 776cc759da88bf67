//! primus-agent on real processes: a real mariadbd, a real primus-agent, and (where
//! the coordinators matter) a real primusd group.
//!
//! Writes are checked as an unprivileged application user: on MariaDB 10.11
//! `read_only` does not stop users with READ ONLY ADMIN/SUPER (docs/failover.md,
//! "The read_only caveat").

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use primus_testkit::agent::{AgentOptions, AgentProc};
use primus_testkit::mariadb::{Instance, Sandbox, SandboxOptions, Topology};
use std::time::{Duration, Instant};

const APP_USER: &str = "app";
const APP_PASS: &str = "app-pass";

/// The test table and an application user that may only SELECT and INSERT.
async fn create_app_user(inst: &Instance) -> anyhow::Result<()> {
    inst.insert_test_rows(1).await?;
    inst.exec(&format!("CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASS}'")).await?;
    inst.exec(&format!("GRANT SELECT, INSERT ON primus_test.* TO '{APP_USER}'@'%'")).await?;
    Ok(())
}

fn app_opts(inst: &Instance) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(inst.port())
        .user(Some(APP_USER))
        .pass(Some(APP_PASS))
        .prefer_socket(false)
}

async fn app_conn(inst: &Instance) -> anyhow::Result<Conn> {
    Ok(tokio::time::timeout(Duration::from_secs(2), Conn::new(app_opts(inst))).await??)
}

/// One INSERT as the app user on a fresh connection, bounded: Ok(()) if it committed.
async fn app_insert(inst: &Instance) -> anyhow::Result<()> {
    let attempt = async {
        let mut c = Conn::new(app_opts(inst)).await?;
        c.query_drop("INSERT INTO primus_test.t (v) VALUES ('app')").await?;
        c.disconnect().await?;
        Ok::<(), mysql_async::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("INSERT timed out"),
    }
}

/// A loopback endpoint nothing listens on.
fn closed_endpoint() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", primus_testkit::ports::free_port()?))
}

/// Poll read_only (as root) until it is ON; the time it took.
async fn wait_read_only(
    inst: &Instance,
    since: Instant,
    timeout: Duration,
    agent: &AgentProc,
) -> anyhow::Result<Duration> {
    loop {
        if inst.read_only().await.unwrap_or(false) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            anyhow::bail!(
                "{} still writable {:?} after the agent started\n--- agent log ---\n{}",
                inst.addr(),
                since.elapsed(),
                agent.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fences_writable_server_within_ttl_when_no_coordinator_answers() -> anyhow::Result<()> {
    let sb = Sandbox::start(SandboxOptions::new(Topology::Standalone(1))).await?;
    let inst = sb.instance(0).clone();
    create_app_user(&inst).await?;
    assert!(!inst.read_only().await?, "a standalone sandbox server starts writable");
    // An application connection opened before the fence, as a pool would hold.
    let mut held = app_conn(&inst).await?;
    held.query_drop("INSERT INTO primus_test.t (v) VALUES ('before')").await?;

    let ttl = Duration::from_millis(1500);
    let opts =
        AgentOptions { coordinators: vec![closed_endpoint()?], ttl_ms: ttl.as_millis() as u64, ..Default::default() };
    let started = Instant::now();
    let agent = AgentProc::start(&inst, &opts)?;
    let took = wait_read_only(&inst, started, ttl + Duration::from_secs(3), &agent).await?;
    println!(
        "no coordinator reachable: read_only = ON {} ms after the agent was spawned (ttl {} ms)",
        took.as_millis(),
        ttl.as_millis()
    );
    assert!(took >= ttl, "fenced after {took:?}, before the TTL ({ttl:?}) the agent must wait for a first answer");
    assert!(took <= ttl + Duration::from_millis(1000), "fenced only after {took:?} (ttl {ttl:?} + 1 s slack)");

    // The held connection was killed, and a new one cannot write.
    let r =
        tokio::time::timeout(Duration::from_secs(2), held.query_drop("INSERT INTO primus_test.t (v) VALUES ('after')"))
            .await?;
    assert!(r.is_err(), "the application connection opened before the fence could still write");
    let e =
        app_insert(&inst).await.err().ok_or_else(|| anyhow::anyhow!("the app user could INSERT after the fence"))?;
    assert!(format!("{e:#}").contains("read-only") || format!("{e:#}").contains("1290"), "unexpected error: {e:#}");

    agent.wait_log("FENCED", Duration::from_secs(2)).await?;
    let log = agent.log();
    assert!(log.contains("no coordinator answered since start"), "fence reason missing from the log:\n{log}");
    assert!(
        log.contains("cluster=\"main\"") || log.contains("cluster=main") && log.contains(&inst.addr()),
        "fence log lacks cluster/instance:\n{log}"
    );

    // It stays fenced: made writable by hand (not by the coordinators, no lease),
    // the agent fences it again.
    inst.set_read_only(false).await?;
    let again = Instant::now();
    let took_again = wait_read_only(&inst, again, Duration::from_secs(3), &agent).await?;
    println!("made writable without a lease: fenced again after {} ms", took_again.as_millis());
    agent.wait_log("writable again without a lease", Duration::from_secs(2)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kills_hung_mysqld_that_cannot_be_fenced() -> anyhow::Result<()> {
    let sb = Sandbox::start(SandboxOptions::new(Topology::Standalone(1))).await?;
    let inst = sb.instance(0).clone();
    create_app_user(&inst).await?;
    let ttl = Duration::from_millis(1500);
    let fence_timeout = Duration::from_millis(500);
    let opts = AgentOptions {
        coordinators: vec![closed_endpoint()?],
        ttl_ms: ttl.as_millis() as u64,
        fence_timeout_ms: fence_timeout.as_millis() as u64,
        ..Default::default()
    };
    let started = Instant::now();
    let agent = AgentProc::start(&inst, &opts)?;
    agent.wait_log("connected to the local mysqld", Duration::from_secs(3)).await?;
    let pid = inst.pid().ok_or_else(|| anyhow::anyhow!("mariadbd not running"))?;
    inst.sigstop()?;
    let stopped = Instant::now();
    // Decision at ttl after the agent's start; mysqld has not answered for longer than
    // fence.timeout_ms by then, so one short attempt, then SIGKILL.
    let limit = ttl + fence_timeout + Duration::from_secs(2);
    while inst.is_running() {
        if started.elapsed() > limit {
            let _ = inst.sigcont();
            anyhow::bail!(
                "mariadbd {pid} (SIGSTOPped) still alive {:?} after the agent started\n--- agent log ---\n{}",
                started.elapsed(),
                agent.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "escalation: SIGSTOPped mariadbd killed {} ms after SIGSTOP, {} ms after the agent was spawned \
         (ttl {} ms + fence.timeout {} ms)",
        stopped.elapsed().as_millis(),
        started.elapsed().as_millis(),
        ttl.as_millis(),
        fence_timeout.as_millis()
    );
    println!("--- agent log ---\n{}", agent.log_tail(20));
    assert!(started.elapsed() >= ttl, "killed before the ttl ran out");
    agent.wait_log("ESCALATED", Duration::from_secs(2)).await?;
    // Killed only after fence.timeout_ms of silence in all (the attempt included).
    let log = agent.log();
    let waited: u64 = log
        .lines()
        .find(|l| l.contains("ESCALATED"))
        .and_then(|l| l.split("waited_ms=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no waited_ms in the escalation line:\n{}", agent.log_tail(10)))?;
    assert!(waited >= fence_timeout.as_millis() as u64, "escalated after {waited} ms of silence");
    // SIGCONT cannot revive it: the process is gone, nothing listens, nothing is written.
    assert!(inst.sigcont().is_err(), "SIGCONT reached a mariadbd that should be dead");
    assert!(
        std::net::TcpStream::connect_timeout(&inst.socket_addr(), Duration::from_millis(500)).is_err(),
        "something still listens on {}",
        inst.addr()
    );
    assert!(app_insert(&inst).await.is_err(), "an INSERT succeeded on the killed server");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_port_escalation_keeps_a_resumed_hung_server_from_acknowledging_any_write() -> anyhow::Result<()> {
    // mariadbd in its own network namespace (its own firewall), the agent beside it.
    let lab = primus_testkit::netns::NetLab::new("blk")?;
    let host = lab.add_host()?;
    let mut sopts = SandboxOptions::new(Topology::Standalone(1));
    sopts.netns = vec![Some(host.clone())];
    let sb = Sandbox::start(sopts).await?;
    let inst = sb.instance(0).clone();
    create_app_user(&inst).await?;
    let tcp = |user: &str, pass: &str| {
        OptsBuilder::default()
            .ip_or_hostname(inst.socket_addr().ip().to_string())
            .tcp_port(inst.port())
            .user(Some(user.to_string()))
            .pass(Some(pass.to_string()))
            .prefer_socket(false)
    };
    let ttl = Duration::from_millis(1500);
    let opts = AgentOptions {
        coordinators: vec![closed_endpoint()?],
        ttl_ms: ttl.as_millis() as u64,
        escalation: "block_port".into(),
        ..Default::default()
    };
    let agent = AgentProc::start(&inst, &opts)?;
    agent.wait_log("connected to the local mysqld", Duration::from_secs(3)).await?;
    // An application connection, open before the hang.
    let mut held = tokio::time::timeout(Duration::from_secs(2), Conn::new(tcp(APP_USER, APP_PASS))).await??;
    held.query_drop("INSERT INTO primus_test.t (v) VALUES ('before')").await?;
    let pid = inst.pid().ok_or_else(|| anyhow::anyhow!("mariadbd not running"))?;
    inst.sigstop()?;
    // A write sent while mysqld is hung: it sits in the kernel's socket buffer, to
    // be read when mysqld wakes. It must never be acknowledged.
    let in_flight = tokio::spawn(async move {
        let r = tokio::time::timeout(
            Duration::from_secs(8),
            held.query_drop("INSERT INTO primus_test.t (v) VALUES ('in flight during the hang')"),
        )
        .await;
        match r {
            Ok(Ok(())) => "acknowledged".to_string(),
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer".to_string(),
        }
    });
    agent.wait_log("TCP port is blocked", ttl + Duration::from_secs(3)).await?;
    // Blocked: a new TCP connection gets nowhere.
    let during = tokio::time::timeout(Duration::from_secs(1), Conn::new(tcp(APP_USER, APP_PASS))).await;
    assert!(!matches!(during, Ok(Ok(_))), "a TCP client connected while the port was blocked");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // mysqld wakes: the agent fences it over the unix socket, resets the connections
    // from before the block, then opens the port.
    let resumed = Instant::now();
    inst.sigcont()?;
    agent.wait_log("UNBLOCKED", Duration::from_secs(10)).await?;
    println!("block_port: port open again {} ms after mysqld resumed", resumed.elapsed().as_millis());
    let outcome = in_flight.await?;
    println!("the INSERT sent during the hang: {outcome}");
    assert_ne!(outcome, "acknowledged", "a write sent during the hang was acknowledged after mysqld woke");
    assert_eq!(inst.pid(), Some(pid), "block_port must not kill mysqld");
    assert!(inst.read_only().await?, "the resumed server is writable");
    // Reachable again over TCP, and read-only for the application.
    let mut c = tokio::time::timeout(Duration::from_secs(2), Conn::new(tcp(APP_USER, APP_PASS))).await??;
    let e = c.query_drop("INSERT INTO primus_test.t (v) VALUES ('after')").await;
    assert!(e.is_err(), "the application wrote to the fenced server after the unblock");
    let log = agent.log();
    assert!(log.contains("ESCALATED") && !log.contains("SIGKILL"), "{}", agent.log_tail(30));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_server_that_stalls_later_is_not_killed() -> anyhow::Result<()> {
    let sb = Sandbox::start(SandboxOptions::new(Topology::Standalone(1))).await?;
    let inst = sb.instance(0).clone();
    let opts = AgentOptions { coordinators: vec![closed_endpoint()?], ..Default::default() };
    let started = Instant::now();
    let agent = AgentProc::start(&inst, &opts)?;
    wait_read_only(&inst, started, Duration::from_secs(4), &agent).await?;
    agent.wait_log("FENCED", Duration::from_secs(2)).await?;
    // Read-only already: a stall (here 1.5 s, three fence timeouts) is no reason to kill it.
    inst.sigstop()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    inst.sigcont()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(inst.is_running(), "the agent killed a fenced server that only stalled:\n{}", agent.log_tail(20));
    assert!(inst.read_only().await?, "the server is writable after the stall");
    assert!(!agent.log().contains("ESCALATED"), "escalated:\n{}", agent.log_tail(20));
    Ok(())
}

// ---------------------------------------------------------------------------------
// With real coordinators (primusd group watching the sandbox).
// ---------------------------------------------------------------------------------

use primus_client::ClusterSettings;
use primus_integration_tests::world::{World, WorldOptions};

const CLUSTER: &str = "c";

fn world_agent_options(w: &World) -> AgentOptions {
    AgentOptions { cluster: CLUSTER.into(), coordinators: vec![w.group.endpoints()], ..Default::default() }
}

/// A registered default world whose primary has the app user and an agent holding
/// its lease (its sentinel running beside it).
struct WithAgent {
    agent: AgentProc,
    opts: AgentOptions,
    primary: Instance,
    w: World,
}

async fn primary_with_agent() -> anyhow::Result<WithAgent> {
    primary_with_agent_in(WorldOptions::default()).await
}

async fn primary_with_agent_in(o: WorldOptions) -> anyhow::Result<WithAgent> {
    primary_with_agent_in_with(o, |_| {}).await
}

async fn primary_with_agent_in_with(
    o: WorldOptions,
    tune: impl FnOnce(&mut AgentOptions),
) -> anyhow::Result<WithAgent> {
    let w = World::start(o).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let primary = w.sandbox.primary().clone();
    create_app_user(&primary).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let mut opts = world_agent_options(&w);
    tune(&mut opts);
    let agent = AgentProc::start(&primary, &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;
    Ok(WithAgent { agent, opts, primary, w })
}

/// The first failover of the cluster that is no longer in progress (history errors,
/// as a partition may cause, are retried until `timeout`).
async fn first_finished_failover(
    w: &World,
    timeout: Duration,
    agent: &AgentProc,
) -> anyhow::Result<primus_client::FailoverView> {
    let client = w.client()?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.history(CLUSTER).await {
            Ok(h) => match h.failovers.iter().find(|f| f.outcome != "in_progress") {
                Some(f) => return Ok(f.clone()),
                None => format!("{h:#?}"),
            },
            Err(e) => e.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "no finished failover within {timeout:?}: {last}\n--- agent log ---\n{}",
            agent.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fail if `inst` is read-only at any poll during `dur`.
async fn assert_stays_writable(inst: &Instance, dur: Duration, agent: &AgentProc, what: &str) -> anyhow::Result<()> {
    let until = Instant::now() + dur;
    while Instant::now() < until {
        if inst.read_only().await? {
            anyhow::bail!("{what}: {} became read-only\n--- agent log ---\n{}", inst.addr(), agent.log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_agent_holds_its_lease_and_a_leader_freeze_shorter_than_ttl_fences_nothing() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let primary = w.sandbox.primary().clone();
    create_app_user(&primary).await?;
    let agent = AgentProc::start(&primary, &world_agent_options(&w))?;
    agent.wait_log("agent registered", Duration::from_secs(10)).await?;
    agent.wait_log("lease granted", Duration::from_secs(5)).await?;
    assert_stays_writable(&primary, Duration::from_secs(5), &agent, "5 s of renewals").await?;
    app_insert(&primary).await?;

    // Freeze the leader for 0.5 s (< ttl 1.5 s): the agent renews through the others
    // (or the new leader) and never fences.
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    w.group.sigstop(leader)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.group.sigcont(leader)?;
    assert_stays_writable(&primary, Duration::from_secs(3), &agent, "after a 0.5 s leader freeze").await?;
    app_insert(&primary).await?;
    let log = agent.log();
    assert!(!log.contains("FENCED") && !log.contains("ESCALATED"), "the agent fenced a healthy primary:\n{log}");
    assert!(w.client()?.history(CLUSTER).await?.failovers.is_empty(), "a failover happened");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_s_sentinel_fences_the_primary_within_ttl_and_a_failover_follows() -> anyhow::Result<()> {
    let WithAgent { mut agent, opts, primary, w } = primary_with_agent().await?;
    let ttl = Duration::from_millis(opts.ttl_ms);
    agent.wait_log("sentinel started", Duration::from_secs(5)).await?;
    assert_stays_writable(&primary, Duration::from_millis(600), &agent, "before the kill").await?;
    let agent_pid = agent.pid().ok_or_else(|| anyhow::anyhow!("agent not running"))?;
    agent.kill9()?;
    let killed = Instant::now();
    let killed_wall = wall_ms();
    // Nobody renews: the sentinel fences at the end of the lease the agent last
    // renewed (at most one renew interval before the kill), not a moment later.
    let took = wait_read_only(&primary, killed, ttl + Duration::from_secs(3), &agent).await?;
    println!("agent killed: primary read-only {} ms after the kill (ttl {} ms)", took.as_millis(), ttl.as_millis());
    assert!(took <= ttl + Duration::from_millis(300), "fenced only {took:?} after the kill (ttl {ttl:?})");
    assert!(app_insert(&primary).await.is_err(), "the app user could write to the fenced primary");
    agent.wait_log("SENTINEL FENCED", Duration::from_secs(2)).await?;

    // ...and the coordinators, who get no renewal either, fail it over.
    let f = first_finished_failover(&w, Duration::from_secs(30), &agent).await?;
    println!(
        "failover {} ({}) promoted {} {} ms after the kill",
        f.outcome,
        f.analysis_code,
        f.candidate,
        f.steps
            .iter()
            .find(|s| s.description.starts_with("promote "))
            .map_or(0, |s| s.at_ms as i64 - killed_wall as i64)
    );
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.analysis_code, "PrimaryLeaseExpired", "{f:#?}");
    assert_ne!(f.candidate, primary.addr());
    assert!(primary.read_only().await?, "the old primary is writable again after the failover");
    // Its job done and its agent gone, the sentinel exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !primus_testkit::agent::sentinel_pids(agent_pid).is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the sentinel is still running 5 s after fencing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.wait_log("sentinel exiting", Duration::from_secs(1)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_restarted_within_ttl_takes_the_lease_over_without_fencing() -> anyhow::Result<()> {
    let WithAgent { mut agent, opts, primary, w: _w } = primary_with_agent().await?;
    agent.wait_log("sentinel started", Duration::from_secs(5)).await?;
    let old_pid = agent.pid().ok_or_else(|| anyhow::anyhow!("agent not running"))?;
    agent.kill9()?;
    // The agent does nothing on its way out (it cannot, under kill -9): the server is
    // as it was until the lease would end.
    assert!(!primary.read_only().await?, "the primary turned read-only at once when its agent died");
    app_insert(&primary).await?;
    // A new agent, started within the TTL, registers again and holds the lease; the
    // old agent's sentinel sees it and stands down instead of fencing.
    let agent2 = AgentProc::start_in(&primary, &opts, &agent.dir)?;
    agent2.wait_log("lease granted", Duration::from_secs(5)).await?;
    assert_stays_writable(&primary, Duration::from_secs(3), &agent2, "after the agent restart").await?;
    app_insert(&primary).await?;
    let log = agent2.log();
    assert!(!log.contains("FENCED"), "an agent or a sentinel fenced a primary with a lease:\n{log}");
    assert!(log.contains("a restarted agent holds the lease now"), "the old sentinel did not stand down:\n{log}");
    assert!(primus_testkit::agent::sentinel_pids(old_pid).is_empty(), "the old agent's sentinel is still running");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_is_fenced_within_ttl_when_every_coordinator_is_frozen() -> anyhow::Result<()> {
    let WithAgent { agent, opts, primary, w } = primary_with_agent().await?;
    let ttl = Duration::from_millis(opts.ttl_ms);
    assert_stays_writable(&primary, Duration::from_secs(1), &agent, "before the freeze").await?;
    for id in 1..=3 {
        w.group.sigstop(id)?;
    }
    let frozen = Instant::now();
    let res = wait_read_only(&primary, frozen, ttl + Duration::from_secs(3), &agent).await;
    for id in 1..=3 {
        let _ = w.group.sigcont(id);
    }
    let took = res?;
    println!(
        "all coordinators frozen: primary read-only {} ms after the freeze (ttl {} ms)",
        took.as_millis(),
        ttl.as_millis()
    );
    // The lease was last renewed at most one renew interval before the freeze and
    // is counted from that send: fenced no later than ttl after the freeze (+ the
    // guard's reaction, a few ms).
    assert!(took <= ttl + Duration::from_millis(300), "fenced only {took:?} after the freeze (ttl {ttl:?})");
    assert!(app_insert(&primary).await.is_err(), "the app user could write to the fenced primary");
    agent.wait_log("lease expired", Duration::from_secs(2)).await?;
    Ok(())
}

/// A stall of every coordinator longer than the agent's TTL (but shorter than TTL +
/// margin, so the leader never counts the lease as run out): the agent fences its
/// primary, and the primary used to stay read-only for good ("the agent does not
/// unfence"). Now the leader, once the agent holds a lease again, makes it writable,
/// write-ahead (an unfence record in `history`), within 2 s of the re-grant; no failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stall_longer_than_the_ttl_leaves_the_primary_writable_again_without_a_failover(
) -> anyhow::Result<()> {
    let WithAgent { agent, opts, primary, w } = primary_with_agent_in(WorldOptions {
        // A wide margin: after the stall the leader must not count the lease as run out.
        extra_config: "[fencing]\nlease_margin_ms = 2000\n".into(),
        ..Default::default()
    })
    .await?;
    let ttl = Duration::from_millis(opts.ttl_ms);
    assert_stays_writable(&primary, Duration::from_secs(1), &agent, "before the stall").await?;
    for id in 1..=3 {
        w.group.sigstop(id)?;
    }
    let stopped = Instant::now();
    let fenced = wait_read_only(&primary, stopped, Duration::from_millis(1800), &agent).await;
    tokio::time::sleep_until((stopped + Duration::from_millis(1800)).into()).await;
    for id in 1..=3 {
        w.group.sigcont(id)?;
    }
    let resumed = Instant::now();
    let fenced = fenced?;
    println!("all coordinators stopped for 1.8 s: the agent fenced the primary {} ms in", fenced.as_millis());
    assert!(fenced <= ttl + Duration::from_millis(300), "fenced {fenced:?} after the stall began (ttl {ttl:?})");
    // Writable again, and staying so.
    let writable_at = loop {
        if !primary.read_only().await.unwrap_or(true) {
            break resumed.elapsed();
        }
        anyhow::ensure!(
            resumed.elapsed() < Duration::from_secs(15),
            "the primary is still read-only 15 s after the stall\n--- agent log ---\n{}\n--- leader log ---\n{}",
            agent.log_tail(30),
            w.group.node(w.group.wait_leader(&[], Duration::from_secs(5)).await?.0).log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let regranted = agent.wait_log("lease granted again", Duration::from_secs(1)).await;
    println!("writable again {} ms after the coordinators resumed ({regranted:?})", writable_at.as_millis());
    // The re-grant comes within a renew interval or two (or an election) of the resume.
    assert!(writable_at <= Duration::from_millis(2500), "writable only {writable_at:?} after the resume");
    assert_stays_writable(&primary, Duration::from_secs(3), &agent, "after the unfence").await?;
    app_insert(&primary).await?;
    let h = w.client()?.history(CLUSTER).await?;
    assert!(h.failovers.is_empty(), "a failover happened: {:#?}", h.failovers);
    let u = h.unfences.last().ok_or_else(|| anyhow::anyhow!("no unfence recorded: {h:#?}"))?;
    println!("unfence {}: {} ({:?})", u.id, u.outcome, u.evidence);
    assert_eq!(u.instance, primary.addr());
    assert!(u.outcome.starts_with("read_only set OFF"), "{u:#?}");
    Ok(())
}

/// Right after a failover the leader used to judge the *new* primary's lease run out
/// ("it ran out 4097 ms ago"): its agent had only been answered `being_promoted`, which
/// the leader did not count as a lease, so the analysis said PrimaryLeaseExpired and only
/// the anti-flap block or a timely renewal stopped a second failover. With the block
/// lifted (`recovery_block_period_ms = 1`), 20 switchovers in a row with an agent on every
/// server: the analysis of each new primary never says its lease ran out, and every
/// switchover is followed by no other failover. Each new primary also stays writable
/// for the second after its switchover (its agent used to fence it when the lease it
/// held in an earlier round ran out just then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_switchovers_with_agents_never_count_the_new_primary_s_lease_as_run_out() -> anyhow::Result<()> {
    let w = World::start(WorldOptions {
        extra_config: "[failover]\nrecovery_block_period_ms = 1\n".into(),
        ..Default::default()
    })
    .await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let opts = world_agent_options(&w);
    let mut agents = Vec::new();
    for inst in w.sandbox.instances() {
        agents.push(AgentProc::start(inst, &opts)?);
    }
    agents[0].wait_log("lease granted", Duration::from_secs(10)).await?;
    let client = w.client()?;
    let addrs: Vec<String> = w.sandbox.instances().iter().map(|i| i.addr()).collect();
    let mut primary = 0usize;
    for n in 1..=20usize {
        let to = (primary + 1 + n % 2) % addrs.len();
        let r = match client.failover(CLUSTER, Some(&addrs[to]), true).await {
            Ok(r) => r,
            Err(e) => {
                let h = client.history(CLUSTER).await?;
                let summary: Vec<String> = h
                    .failovers
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {} {} -> {} ({}) {} {:?}",
                            f.id, f.kind, f.old_primary, f.candidate, f.outcome, f.analysis_code, f.evidence
                        )
                    })
                    .collect();
                let logs: Vec<String> =
                    (0..agents.len()).map(|i| format!("--- agent of {} ---\n{}", addrs[i], agents[i].log())).collect();
                let nodes: Vec<String> = w
                    .group
                    .nodes
                    .keys()
                    .map(|id| format!("--- node {id} ---\n{}", w.group.node(*id).log_tail(80)))
                    .collect();
                anyhow::bail!(
                    "switchover {n} to {}: {e}\nhistory:\n{}\n{}\n{}",
                    addrs[to],
                    summary.join("\n"),
                    logs.join("\n"),
                    nodes.join("\n")
                );
            }
        };
        let f = r.failover.ok_or_else(|| anyhow::anyhow!("switchover {n}: no record"))?;
        anyhow::ensure!(f.outcome == "succeeded", "switchover {n} to {}: {f:#?}", addrs[to]);
        primary = to;
        // Right after the switchover, for one second: the new primary's lease is not
        // counted as run out.
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let a = client.analysis(CLUSTER).await?;
            // About the new primary (the leader's last analysis may still be the one it
            // made while the switchover was in flight, of the old primary whose lease the
            // switchover waited out: seen once in CI, within 200 ms of the finish).
            anyhow::ensure!(
                a.code != "PrimaryLeaseExpired" || a.subject != addrs[to],
                "switchover {n}: the new primary {}'s lease counted as run out right after its promotion: {a:#?}",
                addrs[to]
            );
            // ... and nothing fences it: its agent may still hold the lease it had as
            // the primary of an earlier round, refused `not_primary` since, and that lease
            // ending just as the switchover promotes the server must not make it read-only.
            if w.sandbox.instances()[to].read_only().await? {
                anyhow::bail!(
                    "switchover {n}: the new primary {} turned read-only right after its promotion\n--- its agent ---\n{}",
                    addrs[to],
                    agents[to].log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let h = client.history(CLUSTER).await?;
    let kinds: Vec<&str> = h.failovers.iter().map(|f| f.kind.as_str()).collect();
    println!("{} failovers: {kinds:?}", h.failovers.len());
    assert_eq!(h.failovers.len(), 20, "a failover other than the 20 switchovers happened: {kinds:?}");
    assert!(h.failovers.iter().all(|f| f.kind == "switchover" && f.outcome == "succeeded"));
    let writable: Vec<String> = {
        let mut v = Vec::new();
        for i in w.sandbox.instances() {
            if !i.read_only().await? {
                v.push(i.addr());
            }
        }
        v
    };
    let confirmed = agents.iter().map(|a| a.log().matches("answer now that it may be").count()).sum::<usize>();
    println!("refusal-based fences lifted by a fresh answer: {confirmed}");
    if writable != vec![addrs[primary].clone()] {
        let logs: Vec<String> =
            (0..agents.len()).map(|i| format!("--- agent of {} ---\n{}", addrs[i], agents[i].log())).collect();
        let nodes: Vec<String> =
            w.group.nodes.keys().map(|id| format!("--- node {id} ---\n{}", w.group.node(*id).log_tail(60))).collect();
        panic!(
            "writable at the end: {writable:?}, expected only {}\nlast: {:#?}\n{}\n{}",
            addrs[primary],
            h.failovers.last(),
            logs.join("\n"),
            nodes.join("\n")
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_with_agents_fences_the_old_primary_and_spares_the_promoted_one() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let old = w.sandbox.primary().clone();
    let new = w.sandbox.replicas()[0].clone();
    create_app_user(&old).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let opts = world_agent_options(&w);
    let agents: Vec<AgentProc> =
        w.sandbox.instances().iter().map(|i| AgentProc::start(i, &opts)).collect::<anyhow::Result<_>>()?;
    agents[0].wait_log("lease granted", Duration::from_secs(10)).await?;
    // Replicas are refused (not_primary) and left alone.
    agents[1].wait_log("not_primary", Duration::from_secs(10)).await?;
    agents[2].wait_log("not_primary", Duration::from_secs(10)).await?;

    let client = w.client()?;
    let started = Instant::now();
    let r = client.failover(CLUSTER, Some(&new.addr()), true).await?;
    let steps: Vec<String> =
        r.failover.iter().flat_map(|f| f.steps.iter().map(|s| format!("{} -> {}", s.description, s.outcome))).collect();
    println!("switchover answered in {} ms: {steps:#?}", started.elapsed().as_millis());
    w.wait_topology(CLUSTER, "the new primary", Duration::from_secs(30), |t| t.primary == new.addr()).await?;
    let h = client.history(CLUSTER).await?;
    let f = h.failovers.last().ok_or_else(|| anyhow::anyhow!("no failover in history"))?;
    assert_eq!(f.outcome, "succeeded", "{f:#?}");

    // The promoted server: writable for the app user, and its agent holds the lease
    // (it was told being_promoted during the switchover, and did not fence).
    agents[1].wait_log("lease granted", Duration::from_secs(5)).await?;
    assert_stays_writable(&new, Duration::from_secs(3), &agents[1], "the promoted primary").await?;
    app_insert(&new).await?;
    let log1 = agents[1].log();
    assert!(!log1.contains("FENCED"), "the promoted server's agent fenced it:\n{log1}");
    // The old primary: read-only, its agent was told fence_now, and the app cannot write.
    assert!(old.read_only().await?, "the old primary is writable");
    agents[0].wait_log("fence_now", Duration::from_secs(5)).await?;
    assert!(app_insert(&old).await.is_err(), "the app user could write to the old primary");
    // The other replica was left alone.
    let log2 = agents[2].log();
    assert!(!log2.contains("FENCED"), "the other replica's agent fenced it:\n{log2}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_for_an_instance_the_coordinators_do_not_know_exits_with_code_2() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let opts = AgentOptions { cluster: "no-such-cluster".into(), ..world_agent_options(&w) };
    let mut agent = AgentProc::start(w.sandbox.primary(), &opts)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = agent.try_exit()? {
            break st;
        }
        anyhow::ensure!(Instant::now() < deadline, "the agent still runs:\n{}", agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = agent.log();
    assert_eq!(status.code(), Some(2), "exit status {status:?}:\n{log}");
    assert!(log.contains("do not know cluster \"no-such-cluster\""), "unclear error:\n{log}");
    Ok(())
}

/// After a switchover the old primary's agent holds no lease and keeps being answered
/// `not_primary`; its sentinel used to see a "new" lease end on every renewal (the end was
/// converted to CLOCK_MONOTONIC with a few hundred ns of jitter each time), fence again
/// and log "the lease ran out; the server is read-only already" at INFO every 200-400 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_of_a_former_primary_logs_once_not_at_every_renewal() -> anyhow::Result<()> {
    let WithAgent { agent, primary, w, .. } = primary_with_agent().await?;
    agent.wait_log("sentinel started", Duration::from_secs(5)).await?;
    let to = w.sandbox.replicas()[0].addr();
    let r = w.client()?.failover(CLUSTER, Some(&to), true).await?;
    assert_eq!(r.failover.map(|f| f.outcome).as_deref(), Some("succeeded"));
    // The old primary's lease runs out 1.5 s later; then 5 s of renewals answered not_primary.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    assert!(primary.read_only().await?, "the former primary is writable");
    let log = agent.log();
    let n = log.matches("the server is read-only already").count();
    println!("{n} \"read-only already\" lines in 6.5 s after the switchover");
    assert!(n <= 2, "{n} lines repeating the same state:\n{}", agent.log_tail(20));
    Ok(())
}

/// A primary whose mysqld crashed and restarted at once used to come back writable
/// (MariaDB starts with read_only=OFF) while its agent still held the lease: clients
/// wrote to it before anybody looked. Now the agent learns of the exit from a pidfd,
/// blocks the TCP port at once, fences the restarted server over the unix socket and
/// reopens the port; the coordinators then make it writable again (it is still the
/// primary: automatic failover is off here), write-ahead. No client write lands before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_takes_no_tcp_write_before_its_agent_fenced_it() -> anyhow::Result<()> {
    let WithAgent { agent, primary, w, .. } = primary_with_agent_in_with(
        WorldOptions { extra_config: "[failover]\nautomatic = false\n".into(), ..Default::default() },
        |o| o.extra.push_str("restart_guard = \"block_port\"\n"),
    )
    .await?;
    agent.wait_log("watching mysqld's process", Duration::from_secs(5)).await?;
    assert_stays_writable(&primary, Duration::from_millis(500), &agent, "before the crash").await?;
    // A client that writes every few ms, each time on a fresh TCP connection.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, inst) = (stop.clone(), primary.clone());
        tokio::spawn(async move {
            let mut ok_at = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if tokio::time::timeout(Duration::from_millis(300), app_insert(&inst)).await.is_ok_and(|r| r.is_ok()) {
                    ok_at.push(wall_ms());
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            ok_at
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crashed = wall_ms();
    primary.restart().await?;
    println!("mysqld killed and restarted: up again {} ms later", wall_ms() - crashed);
    let deadline = Instant::now() + Duration::from_secs(15);
    while primary.read_only().await.unwrap_or(true) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restarted primary is still read-only 15 s later\n{}",
            agent.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ok_at = writer.await?;
    let h = w.client()?.history(CLUSTER).await?;
    let unfence = h.unfences.last().ok_or_else(|| anyhow::anyhow!("no unfence recorded: {h:#?}"))?;
    let after_crash: Vec<u64> = ok_at.iter().copied().filter(|t| *t > crashed).collect();
    let before_unfence: Vec<u64> = after_crash.iter().copied().filter(|t| *t <= unfence.at_ms).collect();
    println!(
        "{} writes acknowledged before the crash, {} after it: the first {} ms after the crash, the unfence was \
         recorded {} ms after it",
        ok_at.len() - after_crash.len(),
        after_crash.len(),
        after_crash.first().map_or(0, |t| t - crashed),
        unfence.at_ms.saturating_sub(crashed)
    );
    assert!(
        before_unfence.is_empty(),
        "{} writes acknowledged by the restarted server before it was made writable again (first {} ms after the \
         crash)\n{}",
        before_unfence.len(),
        before_unfence[0] - crashed,
        agent.log_tail(20)
    );
    assert!(agent.log().contains("RESTART FENCED"), "{}", agent.log_tail(20));
    // The agent handed its lease back when mysqld exited, and took it up again (a new
    // registration, then renewals) once the restarted server was fenced: that is what
    // let the leader make the primary writable again.
    assert!(agent.log().contains("LEASE HANDED BACK"), "{}", agent.log_tail(20));
    assert!(agent.log().contains("registering again to renew the lease"), "{}", agent.log_tail(20));
    assert!(!after_crash.is_empty(), "no write acknowledged after the unfence");
    assert!(h.failovers.is_empty(), "a failover happened");
    Ok(())
}

/// Raft timings for coordinators in three datacenters (deploy/primusd-3dc.example):
/// after a leader crash the others wait 3-4 s before electing a new one.
fn wan_world_options() -> WorldOptions {
    WorldOptions {
        raft: primus_testkit::coordinator::RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            ..Default::default()
        },
        extra_config: "[fencing]\nmax_lease_ttl_ms = 8000\n".into(),
        ..Default::default()
    }
}

/// With those timings the default agent TTL (1.5 s) used to be accepted, and every
/// leader change then fenced the primary (for good, before the unfence upkeep). Now
/// the leader refuses to register such an agent, which exits with code 2 and says
/// which TTL would do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ttl_that_a_leader_change_would_outlast_is_refused_and_the_agent_exits_with_code_2(
) -> anyhow::Result<()> {
    let w = World::start(wan_world_options()).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let mut agent = AgentProc::start(w.sandbox.primary(), &world_agent_options(&w))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = agent.try_exit()? {
            break st;
        }
        anyhow::ensure!(Instant::now() < deadline, "the agent still runs:\n{}", agent.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = agent.log();
    println!("{}", agent.log_tail(3));
    assert_eq!(status.code(), Some(2), "exit status {status:?}:\n{log}");
    assert!(log.contains("does not outlast a leader change") && log.contains("above 5600"), "unclear error:\n{log}");
    assert!(!w.sandbox.primary().read_only().await?, "the refused agent fenced the primary");
    Ok(())
}

/// The same timings with a TTL the check accepts: a leader crash (kill -9, 3-4 s without
/// a leader) and a leader stop (SIGTERM, handed over at once) leave the primary writable
/// throughout, and nothing fails over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wan_raft_timings_neither_a_leader_crash_nor_a_leader_stop_fences_the_primary() -> anyhow::Result<()> {
    let mut w = World::start(wan_world_options()).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let primary = w.sandbox.primary().clone();
    let opts = AgentOptions { ttl_ms: 6000, ..world_agent_options(&w) };
    let agent = AgentProc::start(&primary, &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(15)).await?;
    let sampler = primus_integration_tests::world::WritableSampler::start(vec![primary.clone()]);

    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    w.group.kill9(leader)?;
    let killed = Instant::now();
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (next, _) = w.group.wait_leader(&others, Duration::from_secs(15)).await?;
    println!("leader {leader} killed: node {next} leads {} ms later", killed.elapsed().as_millis());
    w.group.start_node(leader)?;
    w.group.wait_leader(&[], Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    w.group.sigterm(leader)?;
    let stopped = Instant::now();
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (next, _) = w.group.wait_leader(&others, Duration::from_secs(15)).await?;
    println!("leader {leader} stopped (SIGTERM): node {next} leads {} ms later", stopped.elapsed().as_millis());
    let code = w.group.wait_exit(leader, Duration::from_secs(10))?;
    assert_eq!(code, Some(0));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let samples = sampler.stop().await?;
    let read_only: Vec<_> = samples.iter().filter(|s| s.writable.is_empty() && s.silent.is_empty()).collect();
    println!("{} samples of the primary, {} read-only", samples.len(), read_only.len());
    assert!(
        read_only.is_empty(),
        "the primary was read-only {} times (first {:?} after the start)\n--- agent log ---\n{}",
        read_only.len(),
        read_only.first().map(|s| s.at.duration_since(samples[0].at)),
        agent.log_tail(30)
    );
    assert!(!agent.log().contains("FENCED"), "{}", agent.log_tail(30));
    assert!(w.client()?.history(CLUSTER).await?.failovers.is_empty(), "a failover happened");
    Ok(())
}

/// Issue 12 item 7b on real processes: lease settings are the group's, in Raft, not
/// each node's. Node 1 accepts 6 s leases and waits 4 s past a lease; nodes 2 and 3
/// are configured with a 2 s maximum and a 100 ms margin. The agent registers while
/// node 1 leads; then leadership moves to node 2. Node 2 must keep granting the 6 s
/// lease node 1 accepted (refusing it as too long would fence a healthy primary), and
/// when the primary's mysqld is killed it must wait out 6 s + the 4 s margin Raft
/// recorded, not its own 100 ms: ≥ 9 s from the kill to a writable replica (with its
/// own settings it would promote after about 6.7 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_configured_with_a_shorter_lease_ttl_and_margin_waits_out_what_the_group_recorded(
) -> anyhow::Result<()> {
    let node_config = std::collections::BTreeMap::from([
        (1, "[fencing]\nmax_lease_ttl_ms = 8000\nlease_margin_ms = 4000\n".to_string()),
        (2, "[fencing]\nmax_lease_ttl_ms = 2000\nlease_margin_ms = 100\n".to_string()),
        (3, "[fencing]\nmax_lease_ttl_ms = 2000\nlease_margin_ms = 100\n".to_string()),
    ]);
    let w = World::start(WorldOptions { node_config, ..Default::default() }).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let primary = w.sandbox.primary().clone();
    create_app_user(&primary).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    w.transfer_leader(1, Duration::from_secs(15)).await?;
    // The wait is what this test is about: no hand-back of the lease when mysqld dies
    // (with it, the failover does not wait at all).
    let opts =
        AgentOptions { ttl_ms: 6000, extra: "release_lease_on_exit = false\n".into(), ..world_agent_options(&w) };
    let agent = AgentProc::start(&primary, &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;

    w.transfer_leader(2, Duration::from_secs(15)).await?;
    // Longer than the 6 s TTL: node 2 kept renewing the lease.
    assert_stays_writable(&primary, Duration::from_millis(7000), &agent, "with node 2 leading").await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    anyhow::ensure!(leader == 2, "node {leader} leads, not node 2: the test needs node 2 to fail over");

    let killed = Instant::now();
    primary.kill9()?;
    let deadline = killed + Duration::from_secs(30);
    let (promoted, took) = 'found: loop {
        for r in w.sandbox.replicas() {
            if tokio::time::timeout(Duration::from_millis(300), r.read_only()).await.ok().and_then(|r| r.ok())
                == Some(false)
            {
                break 'found (r.addr(), killed.elapsed());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no replica became writable within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let f = first_finished_failover(&w, Duration::from_secs(20), &agent).await?;
    println!("kill -9 of the primary -> {promoted} writable after {} ms (leader: node 2)", took.as_millis());
    primus_integration_tests::world::print_steps(&f);
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.candidate, promoted);
    assert!(
        took >= Duration::from_millis(9000),
        "node 2 promoted {} ms after the kill: it did not wait out the 6 s lease and the 4 s margin Raft recorded",
        took.as_millis()
    );
    Ok(())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_cut_off_from_coordinators_fences_its_primary_before_another_is_promoted() -> anyhow::Result<()> {
    use primus_testkit::proxy::{CutMode, LinkProxy};
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let primary = w.sandbox.primary().clone();
    create_app_user(&primary).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    // The agent reaches the coordinators only through proxies the test can cut;
    // the coordinators still reach the primary, and so do its clients.
    let mut proxies = Vec::new();
    for id in 1..=3 {
        proxies.push(LinkProxy::start(w.group.node(id).addr().parse()?).await?);
    }
    let opts = AgentOptions {
        coordinators: proxies.iter().map(|p| p.listen_addr().to_string()).collect(),
        ..world_agent_options(&w)
    };
    let agent = AgentProc::start(&primary, &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;

    // An application writing to the old primary as fast as it can, recording the
    // wall-clock time of its last acknowledged INSERT.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (inst, stop) = (primary.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut last_ok, mut n) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if app_insert(&inst).await.is_ok() {
                    last_ok = wall_ms();
                    n += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (last_ok, n)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in &proxies {
        p.cut_with(CutMode::Silent);
    }
    let cut = Instant::now();
    let fenced = wait_read_only(&primary, cut, Duration::from_secs(5), &agent).await?;
    let fenced_wall = wall_ms();
    let f = first_finished_failover(&w, Duration::from_secs(30), &agent).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (last_ok, n) = writer.await?;
    let promote = f
        .steps
        .iter()
        .find(|s| s.description.starts_with("promote "))
        .ok_or_else(|| anyhow::anyhow!("no promote step: {f:#?}"))?;
    println!(
        "agent cut off: primary read-only {} ms after the cut; failover {} ({}) promoted {} at +{} ms; \
         last acknowledged write on the old primary {} ms before the promotion ({n} writes in all)",
        fenced.as_millis(),
        f.outcome,
        f.analysis_code,
        f.candidate,
        (promote.at_ms as i64 - fenced_wall as i64) + fenced.as_millis() as i64,
        promote.at_ms as i64 - last_ok as i64,
    );
    for s in &f.steps {
        println!("  step {}: {} -> {}", s.index, s.description, s.outcome);
    }
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.analysis_code, "PrimaryLeaseExpired", "{f:#?}");
    assert!(n > 0, "the application never wrote");
    assert!(fenced <= Duration::from_millis(1500 + 300), "fenced only {fenced:?} after the cut");
    assert!(fenced_wall <= promote.at_ms, "the old primary was still writable when {} was promoted", f.candidate);
    assert!(last_ok < promote.at_ms, "a write was acknowledged by the old primary after the promotion");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_holds_its_lease_from_coordinators_with_mtls_and_a_token() -> anyhow::Result<()> {
    use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(1))).await?;
    let secrets = tempfile::tempdir()?;
    let pw = secrets.path().join("mysql.pass");
    std::fs::write(&pw, format!("{}\n", sb.credentials().coordinator.password))?;
    let group = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        tls: true,
        require_client_cert: true,
        token: Some("agent-test-token".into()),
        extra_config: format!(
            "[mysql]\nuser = \"{}\"\npassword_file = \"{}\"\nprobe_interval_ms = 300\n",
            sb.credentials().coordinator.user,
            pw.display()
        ),
        ..Default::default()
    })?;
    group.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = group.client(Duration::from_secs(15))?;
    client.register_cluster(CLUSTER, &[sb.primary().addr()], ClusterSettings::default()).await?;
    let pki = group.pki.as_ref().ok_or_else(|| anyhow::anyhow!("group without pki"))?;
    let token = secrets.path().join("agent.token");
    std::fs::write(&token, "agent-test-token\n")?;
    let tls = format!(
        "\n[tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string()
    );
    let opts = AgentOptions {
        cluster: CLUSTER.into(),
        coordinators: vec![group.endpoints()],
        top_level: format!("token_file = {:?}\n", token.display().to_string()),
        extra: tls.clone(),
        ..Default::default()
    };
    let agent = AgentProc::start(sb.primary(), &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(15)).await?;
    assert_stays_writable(sb.primary(), Duration::from_secs(2), &agent, "with mTLS and a token").await?;

    // An agent with a wrong token is refused and says why.
    let bad = secrets.path().join("bad.token");
    std::fs::write(&bad, "wrong-token\n")?;
    let replica = sb.replicas()[0].clone();
    let opts_bad =
        AgentOptions { top_level: format!("token_file = {:?}\n", bad.display().to_string()), ..opts.clone() };
    let agent_bad = AgentProc::start(&replica, &opts_bad)?;
    agent_bad.wait_log("cannot register with the coordinators", Duration::from_secs(10)).await?;
    let log = agent_bad.log();
    assert!(log.contains("permission denied") || log.contains("not authenticated"), "no auth error in:\n{log}");
    Ok(())
}

/// Steps the system wall clock (root only) and puts it back on drop, from a monotonic
/// reference, so the machine ends on the right time whatever the test does.
struct WallClockStep {
    base_wall: std::time::SystemTime,
    base_mono: Instant,
}

impl WallClockStep {
    fn new() -> WallClockStep {
        WallClockStep { base_wall: std::time::SystemTime::now(), base_mono: Instant::now() }
    }

    fn set(&self, offset_s: i64) -> anyhow::Result<()> {
        let real = self.base_wall + self.base_mono.elapsed();
        let secs = real.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() + offset_s as f64;
        let out = std::process::Command::new("date").args(["-u", "-s", &format!("@{secs:.3}")]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "cannot step the wall clock (this test needs root / CAP_SYS_TIME): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for WallClockStep {
    fn drop(&mut self) {
        if let Err(e) = self.set(0) {
            eprintln!("could not restore the wall clock: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_the_wall_clock_a_minute_either_way_changes_nothing_for_the_lease() -> anyhow::Result<()> {
    let WithAgent { agent, primary, w, .. } = primary_with_agent().await?;
    assert_stays_writable(&primary, Duration::from_secs(2), &agent, "before the clock steps").await?;

    // Lease timing uses monotonic clocks only: wall-clock steps of a minute either way
    // (as a bad NTP sync or an operator's `date -s` would make) must not fence anything.
    let clock = WallClockStep::new();
    clock.set(60)?;
    assert_stays_writable(&primary, Duration::from_secs(3), &agent, "wall clock stepped +60 s").await?;
    app_insert(&primary).await?;
    clock.set(-60)?;
    assert_stays_writable(&primary, Duration::from_secs(3), &agent, "wall clock stepped -60 s").await?;
    app_insert(&primary).await?;
    drop(clock);
    assert_stays_writable(&primary, Duration::from_secs(2), &agent, "wall clock restored").await?;
    let log = agent.log();
    assert!(!log.contains("FENCED") && !log.contains("ESCALATED"), "the agent fenced a healthy primary:\n{log}");
    assert!(w.client()?.history(CLUSTER).await?.failovers.is_empty(), "a clock step caused a failover");
    Ok(())
}

/// One sample of the hang test: when, which instances were writable, which did not answer.
#[derive(Debug)]
struct Sample {
    t: u64,
    writable: Vec<String>,
    silent: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_resumed_30_s_later_takes_no_write_and_never_two_are_writable() -> anyhow::Result<()> {
    let resume_after =
        Duration::from_secs(std::env::var("PRIMUS_HANG_RESUME_S").ok().and_then(|v| v.parse().ok()).unwrap_or(30));
    let WithAgent { agent, primary, w, .. } = primary_with_agent().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every 50 ms: how many instances accept writes (a hung one does not answer: not writable).
    // Every 50 ms, all instances at once: which accept writes, and which did not answer
    // within 45 ms (a hung one never does; a busy machine sometimes makes a healthy one
    // miss it — such a sample says nothing about that instance).
    let sampler = {
        let (all, stop) = (w.sandbox.instances().to_vec(), stop.clone());
        tokio::spawn(async move {
            let mut samples: Vec<Sample> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let t = wall_ms();
                let answers = futures::future::join_all(
                    all.iter().map(|i| tokio::time::timeout(Duration::from_millis(45), i.read_only())),
                )
                .await;
                let mut sample = Sample { t, writable: Vec::new(), silent: Vec::new() };
                for (i, a) in all.iter().zip(answers) {
                    match a {
                        Ok(Ok(false)) => sample.writable.push(i.addr()),
                        Ok(Ok(true)) => {}
                        _ => sample.silent.push(i.addr()),
                    }
                }
                samples.push(sample);
            }
            samples
        })
    };
    // A client that keeps trying to write to the old primary, recording every success.
    let writer = {
        let (inst, stop) = (primary.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ok = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if app_insert(&inst).await.is_ok() {
                    ok.push(wall_ms());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hung = Instant::now();
    let hung_wall = wall_ms();
    primary.sigstop()?;
    let f = first_finished_failover(&w, Duration::from_secs(30), &agent).await?;
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    let promoted_at = f
        .steps
        .iter()
        .find(|s| s.description.starts_with("promote "))
        .map(|s| s.at_ms)
        .ok_or_else(|| anyhow::anyhow!("no promote step: {f:#?}"))?;
    println!("SIGSTOP -> failover finished after {} ms", hung.elapsed().as_millis());
    tokio::time::sleep(resume_after.saturating_sub(hung.elapsed())).await;
    let _ = primary.sigcont();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await?;
    let writes = writer.await?;

    let late: Vec<u64> = writes.iter().copied().filter(|t| *t >= promoted_at).collect();
    assert!(late.is_empty(), "the resumed old primary acknowledged {} writes after the promotion", late.len());
    let two: Vec<&Sample> = samples.iter().filter(|s| s.writable.len() > 1).collect();
    assert!(two.is_empty(), "two writable instances at {} samples, e.g. {:?}", two.len(), two.first());
    // Exactly one writable instance at every sample outside the failover itself:
    // the old primary before the hang, the new one after its promotion. In between
    // (the hung primary answers nothing; the lease wait) there are none — never two.
    // A sample in which the instance that should be writable did not answer in time
    // is inconclusive (counted, and at most a fifth of them may be).
    let exactly = |from: u64, to: u64, who: &str| -> anyhow::Result<(usize, usize)> {
        let window: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < to).collect();
        let conclusive: Vec<&&Sample> = window.iter().filter(|s| !s.silent.iter().any(|a| a == who)).collect();
        anyhow::ensure!(!window.is_empty(), "no sample in the window for {who}");
        anyhow::ensure!(
            conclusive.len() * 5 >= window.len() * 4,
            "{who} did not answer in {} of {} samples",
            window.len() - conclusive.len(),
            window.len()
        );
        if let Some(bad) = conclusive.iter().find(|s| s.writable != [who.to_string()]) {
            anyhow::bail!("exactly {who} must be writable, but a sample says {bad:?}");
        }
        Ok((conclusive.len(), window.len()))
    };
    let before = exactly(0, hung_wall.saturating_sub(60), &primary.addr())?;
    let after = exactly(promoted_at + 500, u64::MAX, &f.candidate)?;
    let gap = samples.iter().filter(|s| s.t >= hung_wall && s.t <= promoted_at + 500 && s.writable.is_empty()).count();
    println!(
        "samples: {}/{} conclusive before the hang, exactly the old primary writable; {gap} with none writable during \
         the failover ({} ms from SIGSTOP to the promotion); {}/{} conclusive after, exactly the new primary writable",
        before.0,
        before.1,
        promoted_at.saturating_sub(hung_wall),
        after.0,
        after.1
    );
    let log = agent.log();
    println!(
        "{} samples every 50 ms, never two writable; resumed after {} s: 0 writes accepted after the promotion; agent: {}",
        samples.len(),
        resume_after.as_secs(),
        if log.contains("ESCALATED") { "escalated (SIGKILL of the hung mysqld)" } else { "fenced" }
    );
    Ok(())
}

/// Issue 14 (SIGSTOP failovers): a primary frozen since long before its failover starts
/// has not answered its agent for longer than the fence timeout when the leader tells
/// the agent to fence. The agent gives it one short attempt, not the whole timeout
/// again, and escalates (before: another 500 ms, a third of what is left after
/// detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_frozen_long_before_its_failover_is_escalated_at_once_not_after_another_fence_timeout(
) -> anyhow::Result<()> {
    let WithAgent { agent, opts, primary, w } = primary_with_agent().await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let hung = Instant::now();
    primary.sigstop()?;
    let f = first_finished_failover(&w, Duration::from_secs(30), &agent).await?;
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    println!("SIGSTOP -> failover finished after {} ms", hung.elapsed().as_millis());
    primus_integration_tests::world::print_steps(&f);
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("ESCALATED"))
        .ok_or_else(|| anyhow::anyhow!("the agent did not escalate:\n{}", agent.log_tail(30)))?;
    let field = |name: &str| -> Option<u64> {
        let rest = line.split(&format!("{name}=")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let (attempt, waited) = (field("attempt_ms"), field("waited_ms"));
    println!("agent: {line}");
    let (Some(attempt), Some(waited)) = (attempt, waited) else {
        anyhow::bail!("no attempt_ms / waited_ms in the escalation line: {line}")
    };
    assert!(
        attempt < opts.fence_timeout_ms / 2,
        "the frozen server was given {attempt} ms to answer the fence (the timeout is {} ms, and it had been silent \
         for {waited} ms in all)",
        opts.fence_timeout_ms
    );
    assert!(waited >= opts.fence_timeout_ms, "escalated after only {waited} ms of silence: {line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_off_by_a_real_partition_fences_itself_before_another_is_promoted() -> anyhow::Result<()> {
    // The primary runs in its own network namespace; the partition pins every peer's
    // address to an unused MAC on both sides (silent: connections time out).
    let w = World::start(WorldOptions { primary_in_netns: true, ..Default::default() }).await?;
    w.register_sandbox(CLUSTER, Duration::ZERO).await?;
    let primary = w.sandbox.primary().clone();
    create_app_user(&primary).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;
    let (lab, host) = w.net.as_ref().ok_or_else(|| anyhow::anyhow!("no network namespace"))?;
    // The agent runs beside mysqld in its namespace and reaches the coordinators
    // through the bridge.
    let coordinators: Vec<String> = (1..=3u64)
        .map(|id| {
            let addr = w.group.node(id).addr();
            let port = addr.rsplit(':').next().unwrap_or_default().to_string();
            format!("{}:{port}", lab.gateway)
        })
        .collect();
    let opts = AgentOptions { coordinators, ..world_agent_options(&w) };
    let ttl = Duration::from_millis(opts.ttl_ms);
    let agent = AgentProc::start(&primary, &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A client on the primary's host keeps writing through the unix socket.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (socket, stop) = (primary.unix_socket().to_path_buf(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let opts = OptsBuilder::default()
                    .socket(Some(socket.display().to_string()))
                    .user(Some(APP_USER))
                    .pass(Some(APP_PASS));
                let attempt = async {
                    let mut c = Conn::new(opts).await?;
                    c.query_drop("INSERT INTO primus_test.t (v) VALUES ('local')").await?;
                    c.disconnect().await
                };
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
                    acked.push(wall_ms());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_wall = wall_ms();
    let cut = Instant::now();
    lab.cut(host)?;
    let client = w.client()?;
    let f = first_finished_failover(&w, Duration::from_secs(30), &agent).await?;
    let failover_s = cut.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = writer.await?;
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    let promoted_at = f
        .steps
        .iter()
        .find(|s| s.description.starts_with("promote "))
        .map(|s| s.at_ms)
        .ok_or_else(|| anyhow::anyhow!("no promote step: {f:#?}"))?;
    let last_local = acked.iter().copied().max().unwrap_or(0);
    let after_cut = acked.iter().filter(|t| **t >= cut_wall).count();
    println!(
        "real partition: failover done {} ms after the cut ({}); local writes accepted until +{} ms ({after_cut} after \
         the cut); promotion at +{} ms",
        failover_s.as_millis(),
        f.analysis_code,
        last_local.saturating_sub(cut_wall),
        promoted_at.saturating_sub(cut_wall)
    );
    assert!(
        last_local < cut_wall + ttl.as_millis() as u64 + 500,
        "local writes went on {} ms after the cut (lease {} ms)",
        last_local.saturating_sub(cut_wall),
        ttl.as_millis()
    );
    assert!(last_local < promoted_at, "the old primary took a write after the new one was promoted");

    // Healed: the old primary stays read-only, and what it took after the cut is listed.
    lab.heal(host)?;
    // Under load the local mysqld may not confirm the fence within the agent's 500 ms:
    // the agent then kills it (escalation), as designed, and blocks its port until a
    // restart is fenced. Restart it, as its service manager would (seen in CI: the
    // coordinators timed out on the blocked port of a mysqld nobody restarted).
    let escalated = agent.log().contains("ESCALATED");
    if escalated {
        println!("the agent killed the old primary's mysqld (fence not confirmed in time): restarting it");
        primary.restart().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let d = loop {
        let d = client.divergence(CLUSTER, &primary.addr()).await;
        if let Ok(d) = &d {
            // A killed mysqld keeps what it wrote only as far as its log was flushed.
            if d.former_primary && (d.divergent || after_cut == 0 || escalated) {
                break d.clone();
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no divergence report after healing: {d:?}\n--- agent of the old primary ---\n{}\n--- nft ---\n{}",
            agent.log_tail(40),
            std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| e.to_string())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("after healing: {} divergent transactions listed ({:?})", d.count, d.gtids);
    assert!(primary.read_only().await?, "the old primary must stay read-only");
    if after_cut > 0 && !escalated {
        assert!(d.count as usize >= 1, "{after_cut} local writes after the cut, none listed as divergent: {d:?}");
    }
    Ok(())
}

/// Wait until one of `candidates` is writable; returns it and how long after `since`.
async fn wait_any_writable(
    candidates: &[Instance],
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<(Instance, Duration)> {
    loop {
        for i in candidates {
            let ro = tokio::time::timeout(Duration::from_millis(300), i.read_only()).await.ok().and_then(|r| r.ok());
            if ro == Some(false) {
                return Ok((i.clone(), since.elapsed()));
            }
        }
        anyhow::ensure!(since.elapsed() < timeout, "no replica became writable within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After a fault at `since` that calls for a failover: the replica made writable, how
/// long after the fault, the finished failover, and how its lease step went.
async fn failover_after(
    w: &World,
    agent: &AgentProc,
    since: Instant,
) -> anyhow::Result<(Instance, Duration, primus_client::FailoverView, Option<String>)> {
    let (promoted, took) = wait_any_writable(w.sandbox.replicas(), since, Duration::from_secs(20)).await?;
    let f = first_finished_failover(w, Duration::from_secs(15), agent).await?;
    let wait = f.steps.iter().find(|s| s.description.starts_with("wait for the lease")).map(|s| s.outcome.clone());
    Ok((promoted, took, f, wait))
}

/// Issue 14, item 1: kill -9 of a primary's mysqld. Its agent sees the process exit
/// (pidfd), blocks the port so that no restarted server can take a TCP write before it
/// has fenced it, and hands its lease back; the leader records that in Raft, and the
/// failover skips the wait for the lease (1.5 s TTL + 0.7 s margin before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_primary_whose_agent_hands_its_lease_back_fails_over_without_waiting_for_the_lease(
) -> anyhow::Result<()> {
    let WithAgent { agent, opts, primary, w } = primary_with_agent().await?;
    agent.wait_log("watching mysqld's process", Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    primary.kill9()?;
    let (promoted, took, f, wait) = failover_after(&w, &agent, killed).await?;
    println!(
        "kill -9 of the primary's mysqld: {} writable {} ms later (lease ttl {} ms); lease step: {}",
        promoted.addr(),
        took.as_millis(),
        opts.ttl_ms,
        wait.as_deref().unwrap_or("(none)")
    );
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(promoted.addr(), f.candidate);
    assert!(
        wait.as_deref().is_some_and(|o| o.contains("released its lease")),
        "the failover did not take the hand-back: {f:#?}\n--- agent log ---\n{}",
        agent.log_tail(30)
    );
    assert!(agent.log().contains("LEASE HANDED BACK"), "{}", agent.log_tail(30));
    assert!(
        took < Duration::from_millis(opts.ttl_ms),
        "writable only {took:?} after the kill: as slow as waiting the lease out"
    );
    let audit = w.client()?.audit(200, primus_client::ReadConsistency::Linearizable).await?;
    assert!(
        audit.records.iter().any(|e| e.summary.contains("released its lease") && e.outcome == "ok"),
        "no release in the audit trail"
    );
    Ok(())
}

/// Issue 14, item 1: without a hand-back (the agent was killed before its mysqld), the
/// failover waits the lease out as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_agent_died_first_is_failed_over_only_after_its_lease_ran_out() -> anyhow::Result<()> {
    let WithAgent { mut agent, opts, primary, w } = primary_with_agent().await?;
    agent.wait_log("watching mysqld's process", Duration::from_secs(5)).await?;
    agent.kill9()?;
    let killed = Instant::now();
    primary.kill9()?;
    let (promoted, took, f, wait) = failover_after(&w, &agent, killed).await?;
    println!(
        "agent then mysqld killed: {} writable {} ms later (lease ttl {} ms); lease step: {}",
        promoted.addr(),
        took.as_millis(),
        opts.ttl_ms,
        wait.as_deref().unwrap_or("(none)")
    );
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert!(wait.as_deref().is_some_and(|o| o.contains("ran out")), "{f:#?}");
    // The agent renewed at most one renewal interval before it was killed.
    let renew = Duration::from_millis(opts.renew_interval_ms);
    assert!(
        took + renew >= Duration::from_millis(opts.ttl_ms),
        "writable {took:?} after the kill: the lease (ttl {} ms) was not waited out",
        opts.ttl_ms
    );
    Ok(())
}

/// Issue 14, item 1: the Raft leader and the primary's mysqld killed together, the
/// agent alive. A new leader inherits every lease it never saw granted (TTL + an
/// election timeout + margin from its election: 2.8 s with the defaults); the agent
/// hands its lease back to whichever coordinator leads next, and the failover skips
/// that wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_leader_and_the_primary_killed_together_fail_over_without_the_inherited_lease_wait(
) -> anyhow::Result<()> {
    let WithAgent { agent, opts, primary, mut w } = primary_with_agent().await?;
    agent.wait_log("watching mysqld's process", Duration::from_secs(5)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    let killed = Instant::now();
    w.group.kill9(leader)?;
    primary.kill9()?;
    let (promoted, took, f, wait) = failover_after(&w, &agent, killed).await?;
    println!(
        "coordinator leader {leader} and the primary's mysqld killed together: {} writable {} ms later; lease step: {}",
        promoted.addr(),
        took.as_millis(),
        wait.as_deref().unwrap_or("(none)")
    );
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert!(
        wait.as_deref().is_some_and(|o| o.contains("released its lease")),
        "the new leader did not take the hand-back: {f:#?}\n--- agent log ---\n{}",
        agent.log_tail(30)
    );
    // The inherited wait alone would be TTL + election timeout (600 ms) + margin (700 ms).
    let inherited = Duration::from_millis(opts.ttl_ms + 600 + 700);
    assert!(took < inherited, "writable {took:?} after the kills: no faster than the inherited wait {inherited:?}");
    Ok(())
}

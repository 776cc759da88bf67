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
    // Decision at ttl after the agent's start, then fence.timeout_ms without an answer, then SIGKILL.
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
    assert!(started.elapsed() >= ttl + fence_timeout, "killed before ttl + fence timeout");
    agent.wait_log("ESCALATED", Duration::from_secs(2)).await?;
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

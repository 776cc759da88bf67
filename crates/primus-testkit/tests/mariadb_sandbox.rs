//! Real MariaDB sandboxes: replication, failures, cleanup.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use primus_testkit::mariadb::{mariadbd_pids_under, Sandbox, SandboxOptions, Topology};

const CATCH_UP: Duration = Duration::from_secs(15);

async fn start(topology: Topology) -> Result<Sandbox> {
    let t = Instant::now();
    let sb = Sandbox::start(SandboxOptions::new(topology)).await?;
    eprintln!(
        "sandbox {topology:?}: {} instances ready with replication in {:?} (Sandbox::start reported {:?})",
        sb.instances().len(),
        t.elapsed(),
        sb.startup_time()
    );
    Ok(sb)
}

fn proc_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_with_two_replicas_replicates_with_gtid() -> Result<()> {
    let sb = start(Topology::PrimaryWithReplicas(2)).await?;
    let primary = sb.primary();
    assert_eq!(sb.replicas().len(), 2);

    let ids: BTreeSet<u32> = sb.instances().iter().map(|i| i.server_id()).collect();
    assert_eq!(ids.len(), 3, "distinct server ids");
    let ports: BTreeSet<u16> = sb.instances().iter().map(|i| i.port()).collect();
    assert_eq!(ports.len(), 3, "distinct ports");

    assert!(!primary.read_only().await?, "primary is writable");
    assert_eq!(primary.gtid_current_pos().await?, "", "no GTID history at start");
    for r in sb.replicas() {
        assert!(r.read_only().await?, "replica {} is read_only", r.index());
        let st = r.slave_status().await?.context("replica has slave status")?;
        assert!(st.is_running(), "{st:?}");
        assert_eq!(st.using_gtid, "Slave_Pos");
        assert_eq!(st.master_port, primary.port());
        assert_eq!(st.master_server_id, u64::from(primary.server_id()));
        assert_eq!(r.gtid_current_pos().await?, "", "no errant GTIDs on replica {}", r.index());
    }
    let vars: Option<(String, String, i64, String)> =
        primary.query_one("SELECT @@binlog_format, @@log_slave_updates, @@gtid_strict_mode, @@report_host").await?;
    assert_eq!(vars, Some(("ROW".into(), "1".into(), 1, "127.0.0.1".into())));

    let pos = sb.insert_rows(5).await?;
    assert!(pos.starts_with(&format!("0-{}-", primary.server_id())), "{pos}");
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let primary_pos = primary.gtid_current_pos().await?;
    assert_eq!(primary_pos, pos);
    for r in sb.replicas() {
        assert_eq!(r.test_row_count().await?, 5, "replica {} has the rows", r.index());
        assert_eq!(r.gtid_current_pos().await?, primary_pos, "replica {} has exactly the primary's GTIDs", r.index());
    }

    // SHOW SLAVE HOSTS lists reachable addresses (report_host/report_port).
    let hosts: Vec<(u32, String, u16, u32)> = primary.query("SHOW SLAVE HOSTS").await?;
    let mut reported: Vec<(u32, String, u16)> = hosts.into_iter().map(|(id, h, p, _)| (id, h, p)).collect();
    reported.sort();
    let mut expected: Vec<(u32, String, u16)> =
        sb.replicas().iter().map(|r| (r.server_id(), "127.0.0.1".to_owned(), r.port())).collect();
    expected.sort();
    assert_eq!(reported, expected);

    // The coordinator user can do its job over TCP.
    let mut c = Conn::new(primary.coordinator_opts()).await?;
    c.query_drop("CREATE DATABASE IF NOT EXISTS primus").await?;
    c.query_drop("CREATE TABLE IF NOT EXISTS primus.heartbeat (id INT PRIMARY KEY, ts TIMESTAMP(6))").await?;
    c.query_drop("REPLACE INTO primus.heartbeat VALUES (1, NOW(6))").await?;
    let slave_hosts: Vec<mysql_async::Row> = c.query("SHOW SLAVE HOSTS").await?;
    assert_eq!(slave_hosts.len(), 2);
    c.query_drop("SET GLOBAL read_only = 1").await?;
    c.query_drop("SET GLOBAL read_only = 0").await?;
    let _: Vec<mysql_async::Row> = c.query("SHOW BINLOG STATUS").await?;
    c.disconnect().await?;
    let replica = &sb.replicas()[0];
    let mut c = Conn::new(replica.coordinator_opts()).await?;
    let all: Vec<mysql_async::Row> = c.query("SHOW ALL SLAVES STATUS").await?;
    assert_eq!(all.len(), 1);
    c.query_drop("STOP SLAVE").await?;
    c.query_drop("START SLAVE").await?;
    let slave_pos: Option<String> = c.query_first("SELECT @@gtid_slave_pos").await?;
    assert!(slave_pos.is_some());
    c.disconnect().await?;
    replica.wait_replication_running(CATCH_UP).await?;

    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let primary_pos = primary.gtid_current_pos().await?;
    for r in sb.replicas() {
        assert_eq!(r.gtid_current_pos().await?, primary_pos, "still no errant GTIDs");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_leaf_replicates_through_intermediate() -> Result<()> {
    let sb = start(Topology::Chain(1)).await?;
    let (primary, intermediate, leaf) = (sb.instance(0), sb.instance(1), sb.instance(2));
    let st = leaf.slave_status().await?.context("leaf is a replica")?;
    assert_eq!(st.master_port, intermediate.port(), "leaf replicates from the intermediate");
    assert_eq!(st.master_server_id, u64::from(intermediate.server_id()));
    let st = intermediate.slave_status().await?.context("intermediate is a replica")?;
    assert_eq!(st.master_port, primary.port());
    assert!(intermediate.read_only().await? && leaf.read_only().await?);

    sb.insert_rows(3).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    assert_eq!(leaf.test_row_count().await?, 3);
    let pos = primary.gtid_current_pos().await?;
    assert_eq!(intermediate.gtid_current_pos().await?, pos);
    assert_eq!(leaf.gtid_current_pos().await?, pos);

    // Stop the intermediate's SQL thread: the leaf falls behind, then catches up.
    intermediate.stop_replication_sql().await?;
    let pos = sb.insert_rows(2).await?;
    assert!(leaf.wait_gtid(&pos, Duration::from_millis(500)).await.is_err(), "leaf cannot get ahead");
    assert_eq!(leaf.test_row_count().await?, 3);
    intermediate.start_replication_sql().await?;
    leaf.wait_gtid(&pos, CATCH_UP).await?;
    assert_eq!(leaf.test_row_count().await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_resume_replication() -> Result<()> {
    let sb = start(Topology::PrimaryWithReplicas(2)).await?;
    sb.insert_rows(2).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;

    // A replica dies and comes back: it resumes and catches up.
    let replica = &sb.replicas()[0];
    let old_pid = replica.pid().context("replica runs")?;
    replica.kill9()?;
    assert!(!replica.is_running());
    assert!(!proc_alive(old_pid));
    assert!(replica.exec_timeout("SELECT 1", Duration::from_secs(1)).await.is_err());
    sb.insert_rows(3).await?;
    let t = Instant::now();
    replica.restart().await?;
    eprintln!("replica restart after kill -9: {:?}", t.elapsed());
    assert_ne!(replica.pid(), Some(old_pid));
    assert!(replica.read_only().await?, "a restarted replica is read_only again");
    replica.wait_replication_running(CATCH_UP).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    assert_eq!(replica.test_row_count().await?, 5);

    // The primary dies and comes back: replicas reconnect (MASTER_CONNECT_RETRY=1).
    sb.primary().kill9()?;
    let t = Instant::now();
    sb.primary().restart().await?;
    eprintln!("primary restart after kill -9: {:?}", t.elapsed());
    assert!(!sb.primary().read_only().await?);
    sb.insert_rows(1).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let pos = sb.primary().gtid_current_pos().await?;
    for r in sb.replicas() {
        r.wait_replication_running(CATCH_UP).await?;
        assert_eq!(r.test_row_count().await?, 6);
        assert_eq!(r.gtid_current_pos().await?, pos);
    }
    eprintln!("replicas resumed {:?} after the primary's restart", t.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_makes_queries_time_out_until_sigcont() -> Result<()> {
    let sb = start(Topology::Standalone(1)).await?;
    let db = sb.primary();
    db.exec("SELECT 1").await?;

    db.sigstop()?;
    assert!(db.is_running(), "a stopped process still exists");
    let t = Instant::now();
    let err = db.exec_timeout("SELECT 1", Duration::from_millis(500)).await.expect_err("stopped server answers");
    let elapsed = t.elapsed();
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");
    assert!(elapsed >= Duration::from_millis(450), "fails by timeout, not at once: {elapsed:?}");
    // Over TCP too: the kernel accepts, the server never greets.
    let tcp = tokio::time::timeout(Duration::from_millis(500), Conn::new(db.coordinator_opts())).await;
    assert!(tcp.is_err(), "TCP connect to a stopped server times out");

    db.sigcont()?;
    let v: Option<i64> = db.query_one_timeout("SELECT 1", Duration::from_secs(5)).await?;
    assert_eq!(v, Some(1));
    let mut c = Conn::new(db.coordinator_opts()).await?;
    c.query_drop("SELECT 1").await?;
    c.disconnect().await?;

    // Clean shutdown and start again.
    let t = Instant::now();
    db.shutdown().await?;
    assert!(!db.is_running());
    db.restart().await?;
    eprintln!("clean shutdown + restart: {:?}", t.elapsed());
    assert_eq!(db.query_one::<i64>("SELECT 1").await?, Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semi_sync_can_be_enabled() -> Result<()> {
    let opts = SandboxOptions::new(Topology::PrimaryWithReplicas(1)).with_semi_sync(Duration::from_secs(2));
    let sb = Sandbox::start(opts).await?;
    sb.insert_rows(1).await?;
    let status: Vec<(String, String)> = sb
        .primary()
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', 'Rpl_semi_sync_master_clients')",
        )
        .await?;
    let status: std::collections::HashMap<String, String> = status.into_iter().collect();
    assert_eq!(status.get("Rpl_semi_sync_master_status").map(String::as_str), Some("ON"), "{status:?}");
    assert_eq!(status.get("Rpl_semi_sync_master_clients").map(String::as_str), Some("1"), "{status:?}");

    // Default sandboxes leave it off; it can be switched at runtime.
    let plain = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(1))).await?;
    let on: Option<(i64, i64)> =
        plain.primary().query_one("SELECT @@rpl_semi_sync_master_enabled, @@rpl_semi_sync_slave_enabled").await?;
    assert_eq!(on, Some((0, 0)));
    plain.replicas()[0].set_semi_sync(false, true).await?;
    plain.primary().set_semi_sync(true, false).await?;
    plain.replicas()[0].wait_replication_running(CATCH_UP).await?;
    let on: Option<i64> = plain.primary().query_one("SELECT @@rpl_semi_sync_master_enabled").await?;
    assert_eq!(on, Some(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_check_drop_kills_processes_and_removes_dirs() -> Result<()> {
    let sb = start(Topology::PrimaryWithReplicas(1)).await?;
    let dir = sb.base_dir().to_path_buf();
    let pids: Vec<u32> = sb.instances().iter().filter_map(|i| i.pid()).collect();
    assert_eq!(pids.len(), 2);
    assert_eq!(mariadbd_pids_under(&dir).len(), 2, "the scan finds the running servers");
    // A stopped server must be killed too.
    sb.replicas()[0].sigstop()?;
    drop(sb);
    assert!(mariadbd_pids_under(&dir).is_empty(), "no mariadbd left for {}", dir.display());
    for pid in pids {
        assert!(!proc_alive(pid), "pid {pid} still alive");
    }
    assert!(!dir.exists(), "{} removed", dir.display());
    Ok(())
}

#[test]
fn leak_check_after_panic() {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let sb = Sandbox::start(SandboxOptions::new(Topology::Standalone(2))).await.expect("sandbox starts");
            tx.send(sb.base_dir().to_path_buf()).expect("send dir");
            panic!("test panics while the sandbox runs");
        })
    })
    .join();
    assert!(joined.is_err(), "the thread panicked");
    let dir = rx.recv().expect("sandbox dir");
    assert!(mariadbd_pids_under(&dir).is_empty(), "no mariadbd left after a panic");
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_mode_leaves_servers_running_until_destroyed() -> Result<()> {
    let base = tempfile::tempdir()?;
    let dir = base.path().join("sandbox");
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(1)).keep_in(&dir)).await?;
    let primary = sb.primary().clone();
    drop(sb);
    assert_eq!(mariadbd_pids_under(&dir).len(), 2, "kept servers still run");
    assert_eq!(primary.query_one::<i64>("SELECT 1").await?, Some(1));
    let info: primus_testkit::mariadb::SandboxInfo =
        serde_json::from_slice(&std::fs::read(dir.join("sandbox.json"))?).context("sandbox.json")?;
    assert_eq!(info.instances.len(), 2);
    assert_eq!(info.instances[1].master, Some(0));

    Sandbox::destroy(&dir)?;
    assert!(mariadbd_pids_under(&dir).is_empty());
    assert!(!dir.join("node-0").exists() && !dir.join("sandbox.json").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_failure_reports_error_log_and_cleans_up() -> Result<()> {
    let base = tempfile::tempdir()?;
    let dir = base.path().join("sb");
    let opts =
        SandboxOptions::new(Topology::PrimaryWithReplicas(1)).keep_in(&dir).with_extra_args(["--no-such-option=1"]);
    let err = Sandbox::start(opts).await.expect_err("an unknown option must fail the start");
    let text = format!("{err:#}");
    assert!(text.contains("exited during startup"), "{text}");
    assert!(text.contains("no-such-option"), "the error log tail is in the error: {text}");
    assert!(mariadbd_pids_under(&dir).is_empty());
    assert!(!dir.join("node-0").exists(), "a failed start is cleaned up even in keep mode");
    Ok(())
}

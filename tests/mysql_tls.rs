//! MySQL-side TLS on real MariaDB: servers that refuse every TCP client without TLS
//! (`require_secure_transport=ON`), coordinators that probe and act over verified TLS,
//! repoints that keep replication on TLS, and no password in any log or in Raft.

use mysql_async::prelude::Queryable;
use primus_integration_tests::world::{wait_finished, World, WorldOptions};
use primus_testkit::mariadb::{Instance, REPLICATION_PASSWORD};
use primus_testkit::pki::TestPki;
use std::time::{Duration, Instant};

/// `SHOW SLAVE STATUS` columns the testkit's summary does not carry.
async fn ssl_columns(i: &Instance) -> anyhow::Result<(String, String, String, u16)> {
    let mut conn = mysql_async::Conn::new(i.admin_opts()).await?;
    let row: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
    let row = row.ok_or_else(|| anyhow::anyhow!("{} is no replica", i.addr()))?;
    let col = |name: &str| row.get_opt::<String, _>(name).and_then(|r| r.ok()).unwrap_or_default();
    let port: u16 = col("Master_Port").parse().unwrap_or(0);
    let out = (col("Master_SSL_Allowed"), col("Master_SSL_Verify_Server_Cert"), col("Slave_IO_Running"), port);
    conn.disconnect().await?;
    Ok(out)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_servers_are_probed_and_failed_over_over_verified_tls_and_no_password_reaches_logs_or_raft(
) -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let pki = TestPki::generate(certs.path())?;
    let tls_keys = format!(
        "tls_mode = \"verify_identity\"\ntls_ca_file = \"{ca}\"\nreplication_ssl = true\n\
         replication_ssl_ca = \"{ca}\"\nreplication_ssl_verify_server_cert = true\n",
        ca = pki.ca.display()
    );
    let w = World::start(WorldOptions { mysql_tls: Some(pki), extra_config: tls_keys, ..Default::default() }).await?;
    // Plain TCP is refused by these servers: discovery and every probe below are TLS.
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    for r in w.sandbox.replicas() {
        let (ssl, _, io, _) = ssl_columns(r).await?;
        assert_eq!((ssl.as_str(), io.as_str()), ("Yes", "Yes"), "sandbox replication over TLS on {}", r.addr());
    }
    w.sandbox.insert_rows(20).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;

    let old = w.sandbox.primary().addr();
    w.sandbox.primary().kill9()?;
    let client = w.client()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(30)).await?;
    let f = &h.failovers[0];
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.old_primary, old);
    let promoted = w.sandbox.replicas().iter().find(|r| r.addr() == f.candidate).expect("candidate is a replica");
    let other = w.sandbox.replicas().iter().find(|r| r.addr() != f.candidate).expect("two replicas");

    // The other replica was repointed by primus with MASTER_SSL=1 and server-cert
    // verification, and its IO thread runs against the new primary over TLS.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ssl, verify, io, port) = ssl_columns(other).await?;
        if port == promoted.port() && io == "Yes" {
            assert_eq!((ssl.as_str(), verify.as_str()), ("Yes", "Yes"), "repointed without TLS");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} not replicating from {} over TLS: port {port}, IO {io}, SSL {ssl}",
            other.addr(),
            promoted.addr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    promoted.insert_test_rows(3).await?;
    let pos = promoted.gtid_binlog_pos().await?;
    other.wait_gtid(&pos, Duration::from_secs(10)).await?;

    // Neither password is in any coordinator's log or data directory (Raft log,
    // snapshots, state), after discovery, probes and a failover with repoints.
    let secrets = ["primus-pass", REPLICATION_PASSWORD];
    let mut checked = 0;
    for node in w.group.nodes.values() {
        let mut files = files_under(&node.data_dir());
        files.push(node.log_path.clone());
        for path in files {
            let bytes = std::fs::read(&path)?;
            checked += 1;
            for s in secrets {
                assert!(!bytes.windows(s.len()).any(|win| win == s.as_bytes()), "{s:?} found in {}", path.display());
            }
        }
    }
    assert!(checked >= 6, "checked only {checked} files");
    println!("no password in {checked} coordinator files");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_tls_against_tls_only_servers_gets_a_clear_error() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let pki = TestPki::generate(certs.path())?;
    let w = World::start(WorldOptions { mysql_tls: Some(pki), coordinators: 1, ..Default::default() }).await?;
    let err = w
        .client()?
        .register_cluster("c", &[w.sandbox.primary().addr()], primus_client::ClusterSettings::default())
        .await
        .expect_err("plain TCP is refused by require_secure_transport");
    let text = err.to_string();
    // MariaDB 10.11 answers a plain-TCP client of such a server with "Access denied"
    // (error 1045), as for a wrong password: primus adds what to check.
    assert!(text.contains("require_secure_transport") && text.contains("tls_mode"), "unclear error: {text}");
    println!("register without TLS: {text}");
    Ok(())
}

//! Link proxies: plain TCP behaviour and real MariaDB connections through them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use primus_testkit::mariadb::{Credentials, Sandbox, SandboxOptions, Topology};
use primus_testkit::proxy::{CutMode, LinkMatrix, LinkProxy, LinkState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server on a loopback port; runs until the runtime ends.
async fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn roundtrip(sock: &mut TcpStream, msg: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    sock.write_all(msg).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(timeout, sock.read_exact(&mut buf)).await.context("read timed out")??;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_forwarding_cut_heal_reset() -> Result<()> {
    let echo = echo_server().await?;
    let proxy = LinkProxy::start(echo).await?;
    assert_ne!(proxy.listen_addr(), echo);
    assert!(proxy.listen_addr().ip().is_loopback());

    let mut a = TcpStream::connect(proxy.listen_addr()).await?;
    assert_eq!(roundtrip(&mut a, b"hello", Duration::from_secs(2)).await?, b"hello");

    // Silent cut: no data, but no close either.
    proxy.cut();
    assert_eq!(proxy.state(), LinkState::Cut(CutMode::Silent));
    a.write_all(b"during-cut").await?;
    let mut buf = [0u8; 64];
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_millis(400), a.read(&mut buf)).await;
    assert!(r.is_err(), "silent cut: the read times out instead of returning {r:?}");
    assert!(t.elapsed() >= Duration::from_millis(350));
    // A new connection is accepted but nothing flows.
    let mut b = TcpStream::connect(proxy.listen_addr()).await?;
    assert!(roundtrip(&mut b, b"new", Duration::from_millis(300)).await.is_err());

    // Heal: old (paused) connections resume with what was queued, new ones work.
    proxy.heal();
    let mut got = vec![0u8; b"during-cut".len()];
    tokio::time::timeout(Duration::from_secs(2), a.read_exact(&mut got)).await??;
    assert_eq!(got, b"during-cut");
    let mut got = vec![0u8; 3];
    tokio::time::timeout(Duration::from_secs(2), b.read_exact(&mut got)).await??;
    assert_eq!(got, b"new");
    let mut c = TcpStream::connect(proxy.listen_addr()).await?;
    assert_eq!(roundtrip(&mut c, b"again", Duration::from_secs(2)).await?, b"again");

    // Reset: existing connections fail fast, new ones are reset at once.
    proxy.cut_with(CutMode::Reset);
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await.context("reset is not silent")?;
    assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    // The RST may even beat connect() to returning.
    if let Ok(mut d) = TcpStream::connect(proxy.listen_addr()).await {
        let r = tokio::time::timeout(Duration::from_secs(2), d.read(&mut buf)).await.context("new conn not reset")?;
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(1), "reset fails fast: {:?}", t.elapsed());

    proxy.heal();
    let mut e = TcpStream::connect(proxy.listen_addr()).await?;
    assert_eq!(roundtrip(&mut e, b"healed", Duration::from_secs(2)).await?, b"healed");

    // Drop closes the listener and the connections.
    let addr = proxy.listen_addr();
    drop(proxy);
    let r = tokio::time::timeout(Duration::from_secs(2), e.read(&mut buf)).await.context("drop closes conns")?;
    assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_connections() -> Result<()> {
    let echo = echo_server().await?;
    let proxy = LinkProxy::start(echo).await?;
    let addr = proxy.listen_addr();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            for j in 0..5u32 {
                let msg = format!("conn-{i}-msg-{j}");
                let back = roundtrip(&mut s, msg.as_bytes(), Duration::from_secs(10)).await?;
                anyhow::ensure!(back == msg.as_bytes(), "echo mismatch");
            }
            Ok::<_, anyhow::Error>(s)
        });
    }
    let mut open = Vec::new();
    while let Some(r) = tasks.join_next().await {
        open.push(r??);
    }
    assert_eq!(proxy.accepted_connections(), 300);
    assert_eq!(proxy.active_connections(), 300);
    drop(open);
    let t = Instant::now();
    while proxy.active_connections() > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.active_connections(), 0, "closed connections are cleaned up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_resets_client() -> Result<()> {
    let port = primus_testkit::ports::free_port()?;
    let proxy = LinkProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    // The RST may even beat connect() to returning.
    if let Ok(mut s) = TcpStream::connect(proxy.listen_addr()).await {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.context("not closed")?;
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    }
    assert!(proxy.accepted_connections() >= 1);
    Ok(())
}

fn opts_via(proxy: SocketAddr) -> OptsBuilder {
    Credentials::coordinator().opts(proxy)
}

async fn connect(opts: OptsBuilder, timeout: Duration) -> Result<Conn> {
    Ok(tokio::time::timeout(timeout, Conn::new(opts)).await.context("connect timed out")??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_through_proxy_cut_silent_and_reset() -> Result<()> {
    let sb = Sandbox::start(SandboxOptions::new(Topology::Standalone(1))).await?;
    let db = sb.primary();
    let proxy = LinkProxy::start(db.socket_addr()).await?;

    let mut conn = connect(opts_via(proxy.listen_addr()), Duration::from_secs(5)).await?;
    let port: Option<u16> = conn.query_first("SELECT @@port").await?;
    assert_eq!(port, Some(db.port()));
    // Really over TCP through the proxy (mysql_async's prefer_socket is off).
    let host: Option<String> =
        conn.query_first("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()").await?;
    let host = host.context("processlist row")?;
    assert!(host.starts_with("127.0.0.1:"), "{host}");
    assert_eq!(proxy.accepted_connections(), 1);

    // Silent cut: the query times out instead of failing at once.
    proxy.cut();
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(1), conn.query_first::<i64, _>("SELECT 1")).await;
    assert!(r.is_err(), "query through a silently cut link must time out: {r:?}");
    assert!(t.elapsed() >= Duration::from_millis(950));
    drop(conn);
    let r = connect(opts_via(proxy.listen_addr()), Duration::from_millis(700)).await;
    assert!(r.is_err_and(|e| format!("{e:#}").contains("timed out")), "new connections time out too");
    // The server itself is fine.
    db.exec("SELECT 1").await?;

    // Heal: a new connection works.
    proxy.heal();
    let mut conn = connect(opts_via(proxy.listen_addr()), Duration::from_secs(5)).await?;
    assert_eq!(conn.query_first::<i64, _>("SELECT 1").await?, Some(1));

    // Reset: the open connection and new ones fail fast.
    proxy.cut_with(CutMode::Reset);
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(3), conn.query_first::<i64, _>("SELECT 1")).await;
    assert!(matches!(r, Ok(Err(_))), "reset link: query errors out, got {r:?}");
    let r = tokio::time::timeout(Duration::from_secs(3), Conn::new(opts_via(proxy.listen_addr()))).await;
    assert!(matches!(r, Ok(Err(_))), "reset link: connect errors out");
    assert!(t.elapsed() < Duration::from_secs(1), "reset is fast: {:?}", t.elapsed());

    proxy.heal();
    let mut conn = connect(opts_via(proxy.listen_addr()), Duration::from_secs(5)).await?;
    assert_eq!(conn.query_first::<i64, _>("SELECT 1").await?, Some(1));
    conn.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_matrix_partitions_one_coordinator_only() -> Result<()> {
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(1))).await?;
    let matrix = LinkMatrix::start(2, &sb.addrs()).await?;
    assert_eq!(matrix.sources(), 2);
    let map = matrix.address_map(1);
    assert_eq!(map.len(), 2);
    assert_eq!(map[&sb.primary().socket_addr()], matrix.proxied_addr(1, 0));
    assert_eq!(matrix.target_index(sb.replicas()[0].socket_addr()), Some(1));

    // The primary becomes unreachable from coordinator 1 only.
    matrix.cut(1, 0, CutMode::Silent);
    let short = Duration::from_millis(700);
    let mut c0 = connect(opts_via(matrix.proxied_addr(0, 0)), Duration::from_secs(5)).await?;
    assert_eq!(c0.query_first::<i64, _>("SELECT 1").await?, Some(1), "coordinator 0 reaches the primary");
    assert!(connect(opts_via(matrix.proxied_addr(1, 0)), short).await.is_err(), "coordinator 1 does not");
    let mut c1r = connect(opts_via(matrix.proxied_addr(1, 1)), Duration::from_secs(5)).await?;
    assert_eq!(c1r.query_first::<i64, _>("SELECT 1").await?, Some(1), "coordinator 1 reaches the replica");

    matrix.isolate_source(0, CutMode::Reset);
    assert!(connect(opts_via(matrix.proxied_addr(0, 1)), Duration::from_secs(2)).await.is_err());
    matrix.heal_all();
    for s in 0..2 {
        for t in 0..2 {
            let mut c = connect(opts_via(matrix.proxied_addr(s, t)), Duration::from_secs(5)).await?;
            assert_eq!(c.query_first::<i64, _>("SELECT 1").await?, Some(1), "link {s}->{t} healed");
            c.disconnect().await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_notices_silent_partition_from_primary() -> Result<()> {
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(1))).await?;
    let replica = &sb.replicas()[0];
    let link = LinkProxy::start(sb.primary().socket_addr()).await?;
    replica.change_master_to("127.0.0.1", link.listen_addr().port()).await?;
    replica.wait_replication_running(Duration::from_secs(10)).await?;
    sb.insert_rows(1).await?;
    sb.wait_replicas_caught_up(Duration::from_secs(10)).await?;

    link.cut();
    let t = Instant::now();
    loop {
        let st = replica.slave_status().await?.context("slave status")?;
        if st.io_running != "Yes" {
            eprintln!("replica noticed the silent partition after {:?}: {}", t.elapsed(), st.io_running);
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "replica never noticed the partition");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pos = sb.insert_rows(1).await?;
    assert!(replica.wait_gtid(&pos, Duration::from_millis(300)).await.is_err());

    link.heal();
    replica.wait_gtid(&pos, Duration::from_secs(15)).await?;
    replica.wait_replication_running(Duration::from_secs(10)).await?;
    assert_eq!(replica.test_row_count().await?, 2);
    assert_eq!(replica.gtid_current_pos().await?, sb.primary().gtid_current_pos().await?);
    Ok(())
}

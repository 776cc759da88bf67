//! The client surface under load, on a local 3-node primusd group (real processes):
//! `GetPrimary` STALE throughput per node, `GetPrimary` LINEARIZABLE latency on the
//! leader and on a follower (which forwards), and `WatchPrimary` delivery latency on
//! every node from the commit of a change to its receipt by a watcher.
//!
//! Run: `scripts/bench.sh client_api` (builds release binaries first).
//! Goals from issue 5: STALE >= 50,000 requests/s per node; watch p99 <= 50 ms.
//! Client and server share this machine's cores, so the throughput printed is a
//! lower bound of what a node serves to remote clients.

use primus_benches::summarize;
use primus_client::{Client, ClientOptions, ClusterSettings, GetPrimaryRequest, ReadConsistency};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let c = g.client_for(&[leader], Duration::from_secs(10))?;
    c.register_cluster("bench", &["127.0.0.1:3306".into()], ClusterSettings::default()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. STALE throughput: many requests in flight over several HTTP/2 connections.
    for (what, node) in [("leader", leader), ("follower", follower)] {
        let connections = 8;
        let per_connection = 32;
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", g.node(node).addr()))?
                .tcp_nodelay(true)
                .connect()
                .await?;
            for _ in 0..per_connection {
                let mut raw = primus_client::coordinator_client::CoordinatorClient::new(ch.clone());
                let (done, errors) = (done.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let req = GetPrimaryRequest { cluster: "bench".into(), consistency: ReadConsistency::Stale as i32 };
                    while Instant::now() < deadline {
                        match raw.get_primary(req.clone()).await {
                            Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
        }
        let t0 = Instant::now();
        for t in tasks {
            t.await?;
        }
        let n = done.load(Ordering::Relaxed);
        println!(
            "client_api get_primary STALE on the {what} ({} connections x {} in flight): {:.0} requests/s \
             ({n} ok, {} errors in {:.1} s)",
            connections,
            per_connection,
            n as f64 / t0.elapsed().as_secs_f64(),
            errors.load(Ordering::Relaxed),
            t0.elapsed().as_secs_f64()
        );
    }

    // 2. LINEARIZABLE latency, one request at a time.
    for (what, node) in [("leader", leader), ("follower (forwards to the leader)", follower)] {
        let c = g.client_for(&[node], Duration::from_secs(10))?;
        for _ in 0..50 {
            c.primary("bench").await?;
        }
        let mut lat = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            c.primary("bench").await?;
            lat.push(t.elapsed());
        }
        println!("client_api get_primary LINEARIZABLE on the {what}: {}", summarize(lat));
    }

    // 3. Watch delivery: a watcher on every node, a change committed every 20 ms.
    let mut watchers = Vec::new();
    for id in 1..=3u64 {
        let wc = Client::new(
            &[g.node(id).addr()],
            ClientOptions { timeout: Duration::from_secs(10), ..Default::default() },
        )?;
        let mut s = wc.watch(None);
        // The initial state of every cluster comes first.
        let t = Instant::now();
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
            if t.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        watchers.push((id, wc, s));
    }
    let n = 300;
    let sent: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut receivers = Vec::new();
    for (id, wc, mut s) in watchers {
        receivers.push(tokio::spawn(async move {
            let _keep = wc;
            let mut got: Vec<(usize, Instant)> = Vec::new();
            while got.len() < n {
                match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                    Ok(Some(Ok(ev))) => {
                        let name = ev.state.map(|s| s.cluster).unwrap_or_default();
                        if let Some(i) = name.strip_prefix("w-").and_then(|i| i.parse::<usize>().ok()) {
                            got.push((i, Instant::now()));
                        }
                    }
                    _ => break,
                }
            }
            (id, got)
        }));
    }
    for i in 0..n {
        let t = Instant::now();
        c.register_cluster(&format!("w-{i}"), &["127.0.0.1:3306".into()], ClusterSettings::default()).await?;
        sent.lock().unwrap_or_else(|p| p.into_inner()).push((t, Instant::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut all_from_ack = Vec::new();
    for r in receivers {
        let (id, got) = r.await?;
        let role = if id == leader { "leader" } else { "follower" };
        let from_send: Vec<Duration> = got.iter().map(|(i, at)| at.saturating_duration_since(sent[*i].0)).collect();
        let from_ack: Vec<Duration> = got.iter().map(|(i, at)| at.saturating_duration_since(sent[*i].1)).collect();
        println!(
            "client_api watch on node {id} ({role}): {}/{n} changes received; from write sent (commit included): {}",
            got.len(),
            summarize(from_send)
        );
        println!("client_api watch on node {id} ({role}): after the writer's ack: {}", summarize(from_ack.clone()));
        all_from_ack.extend(from_ack);
    }
    println!("client_api watch, every node, after the writer's ack: {}", summarize(all_from_ack));
    Ok(())
}

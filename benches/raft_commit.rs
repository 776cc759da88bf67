//! Commit latency and throughput of registry writes on a local 3-node primusd group
//! (real processes, sled with fsync on every append batch).
//!
//! Run: `scripts/bench.sh raft_commit` (builds release binaries first).
//! Goal from issue 3: p50 <= 5 ms and >= 500 commits/s on a 2-core machine.

use primus_benches::{quantile_ms, summarize};
use primus_client::ClusterSettings;
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let sequential: usize = std::env::var("BENCH_SEQUENTIAL").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let secs: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let seeds = vec!["127.0.0.1:3306".to_string()];

    // 1. One writer, one write at a time, sent to the leader: pure commit latency.
    let client = g.client_for(&[leader], Duration::from_secs(10))?;
    for i in 0..20 {
        client.register_cluster(&format!("warm-{i}"), &seeds, ClusterSettings::default()).await?;
    }
    let mut lat = Vec::with_capacity(sequential);
    let t0 = Instant::now();
    for i in 0..sequential {
        let t = Instant::now();
        client.register_cluster(&format!("seq-{i}"), &seeds, ClusterSettings::default()).await?;
        lat.push(t.elapsed());
    }
    let seq_rate = sequential as f64 / t0.elapsed().as_secs_f64();
    println!("raft_commit sequential (1 writer, to leader): {} ; {:.0} commits/s", summarize(lat.clone()), seq_rate);

    // 2. Concurrent writers: throughput with group commit.
    for writers in [16usize, 64] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for w in 0..writers {
            let c = g.client_for(&[leader], Duration::from_secs(10))?;
            let done = done.clone();
            let seeds = seeds.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if c.register_cluster(&format!("w{writers}-{w}-{i}"), &seeds, ClusterSettings::default())
                        .await
                        .is_ok()
                    {
                        lat.push(t.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                lat
            }));
        }
        let t0 = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        let rate = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
        println!("raft_commit concurrent ({writers} writers): {:.0} commits/s ; {}", rate, summarize(all));
    }
    let p50 = quantile_ms(&lat, 0.5);
    println!(
        "raft_commit goal check: sequential p50 {:.2} ms (goal <= 5 ms): {}",
        p50,
        if p50 <= 5.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

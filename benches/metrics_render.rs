//! What one `GET /metrics` scrape costs primusd's CPU as the number of instances grows.
//!
//! At 5,000 instances the scale bench measured a whole scrape at ~0.7 s of CPU. This
//! bench isolates the encoding half of it: a `Metrics` registry with every instance's
//! probe histogram filled, and a snapshot of N clusters of 5 instances with every
//! per-instance series set, then `Metrics::render` (refresh the state series + the
//! Prometheus text encoding). The other half, collecting the samples from the
//! monitor's views, is what the scale bench's figure adds to this one.
//! Pure CPU: no processes, no I/O. Run: `scripts/bench.sh metrics_render`.

use primus_benches::summarize;
use primus_server::metrics::{InstanceSample, LeaseSample, LeaseState, MemberSample, Metrics, Snapshot};
use primus_types::state::ClusterRecord;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PER_CLUSTER: u16 = 5;

fn cluster(n: usize) -> ClusterRecord {
    let a = |p: u16| primus_types::InstanceAddr::new(format!("db{n}.example.net"), p).expect("addr");
    let json = serde_json::json!({"name": format!("cluster-{n:05}"), "seeds": [a(3306)], "registered_at_index": 1,
        "registered_at_ms": 0, "registered_by": "bench"});
    let mut c: ClusterRecord = serde_json::from_value(json).expect("record");
    let edges = (0..PER_CLUSTER)
        .map(|i| {
            let source = (i > 0).then(|| a(3306));
            (a(3306 + i), source, u32::from(i) + 1, "mariadb".to_string(), "10.11.19".to_string())
        })
        .collect();
    c.topology = primus_types::Topology::from_edges(edges, Some(&a(3306)));
    c
}

fn snapshot(clusters: &[Arc<ClusterRecord>]) -> Snapshot {
    let mut raft = openraft::RaftMetrics::new_initial(1);
    raft.current_term = 3;
    raft.current_leader = Some(1);
    let mut instances = Vec::new();
    let mut leases = Vec::new();
    for c in clusters {
        for (i, addr) in c.topology.instances.keys().enumerate() {
            let primary = i == 0;
            instances.push(InstanceSample {
                cluster: c.name.to_string(),
                instance: addr.to_string(),
                up: true,
                read_only: Some(!primary),
                replicating: (!primary).then_some(true),
                lag_seconds: (!primary).then_some(0),
                heartbeat_delay_ms: (!primary).then_some(120),
                divergent: Some(0),
                errant: Some(0),
            });
            leases.push(LeaseSample {
                cluster: c.name.to_string(),
                instance: addr.to_string(),
                state: if primary { LeaseState::Held } else { LeaseState::NotHeld },
                remaining: Duration::from_millis(1200),
            });
        }
    }
    let members = (1..=3).map(|id| MemberSample { id, voter: true, last_answer: Duration::from_millis(50) }).collect();
    Snapshot {
        raft,
        leads_with_quorum: true,
        committed_index: Some(5),
        watch_subscribers: 0,
        clusters: clusters.to_vec(),
        now_ms: primus_benches::wall_ms(),
        analysis: Default::default(),
        instances,
        leases,
        members,
        group_feature_level: primus_types::FEATURE_LEVEL,
        automatic_off: false,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("METRICS_CLUSTERS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    // METRICS_PROBE_HISTOGRAMS=0: without the per-instance probe-duration histograms
    // (17 series per instance), to see what they cost.
    let histograms = std::env::var("METRICS_PROBE_HISTOGRAMS").map_or(true, |v| v != "0");
    println!(
        "metrics_render: one Metrics::render (refresh + text encoding), {PER_CLUSTER} instances per cluster, \
         per-instance probe histograms {}",
        if histograms { "filled" } else { "empty" }
    );
    for clusters in sizes {
        let m = Metrics::new().expect("metrics");
        let records: Vec<Arc<ClusterRecord>> = (0..clusters).map(|n| Arc::new(cluster(n))).collect();
        for c in records.iter().filter(|_| histograms) {
            for addr in c.topology.instances.keys() {
                let ok: Result<(), primus_mysql::ProbeError> = Ok(());
                m.observe_probe(&addr.to_string(), Duration::from_millis(3), &ok);
            }
        }
        let s = snapshot(&records);
        let mut samples = Vec::new();
        let mut bytes = 0;
        let mut lines = 0;
        for _ in 0..7 {
            let started = Instant::now();
            let text = m.render(&s).expect("render");
            samples.push(started.elapsed());
            bytes = text.len();
            lines = text.lines().filter(|l| !l.starts_with('#')).count();
        }
        println!(
            "  {:>6} instances: {} series, {:.1} MiB; render {}",
            clusters * usize::from(PER_CLUSTER),
            lines,
            bytes as f64 / (1024.0 * 1024.0),
            summarize(samples)
        );
    }
}

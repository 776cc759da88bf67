//! What the replicated state costs the coordinators as the number of clusters grows.
//!
//! The failover engine re-reads every cluster's record on every tick (200 ms) and on
//! every observation change; the primary feed (GetPrimary/WatchPrimary) recomputes every
//! cluster's primary state after every applied entry. This bench builds a registry of N
//! clusters, each with a full failover history (100 records of 7 steps, as
//! `HISTORY_RETENTION` keeps), and prints the time of those two reads and of one apply.
//! Pure CPU: no processes, no I/O. Run: `scripts/bench.sh state_scale`.

use openraft::CommittedLeaderId;
use primus_types::state::{Registry, StateKey, HISTORY_RETENTION};
use primus_types::{
    AnalysisCode, Command, FailoverKind, FailoverOutcome, LogId, Origin, Request, Step, StepOutcome, Topology,
};
use std::time::{Duration, Instant};

fn log_id(i: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), i)
}

fn build(clusters: usize) -> (Registry, u64) {
    let mut r = Registry::default();
    let mut idx = 0u64;
    let mut apply = |r: &mut Registry, cmd: Command| {
        idx += 1;
        let (resp, _) = r.apply(&log_id(idx), &Request::new(cmd, Origin::default()));
        assert_eq!(resp.into_result(), Ok(()));
    };
    for n in 0..clusters {
        let name: primus_types::ClusterName = format!("cluster-{n:05}").parse().expect("name");
        let a = |p: u16| primus_types::InstanceAddr::new(format!("db{n}.example.net"), p).expect("addr");
        apply(
            &mut r,
            Command::RegisterCluster {
                name: name.clone(),
                seeds: vec![a(3306)],
                settings: Default::default(),
                topology: None,
            },
        );
        let topo = Topology::from_edges(
            vec![
                (a(3306), None, 1, "mariadb".into(), "10.11.19".into()),
                (a(3307), Some(a(3306)), 2, "mariadb".into(), "10.11.19".into()),
                (a(3308), Some(a(3306)), 3, "mariadb".into(), "10.11.19".into()),
            ],
            None,
        );
        apply(&mut r, Command::UpdateTopology { name: name.clone(), topology: topo });
        for e in 0..HISTORY_RETENTION as u64 {
            let epoch = e + 2;
            let id = format!("{name}-e{epoch}");
            let (old, new) = if e % 2 == 0 { (a(3306), a(3307)) } else { (a(3307), a(3306)) };
            let evidence = vec![
                format!("primary {old} unreachable from 3/3 coordinators (connection refused, os error 111)"),
                format!("replica {new}: IO connecting, progress 1 ms ago (IO error 2003: Can't connect to server)"),
                "2/2 direct replicas lost it".to_string(),
                format!("candidate: {new} most advanced (0-1-{}), no errant GTID, same datacenter", e * 100),
            ];
            let plan = (0..7).map(|_| Step::FenceOldPrimary { addr: new.clone(), best_effort: true }).collect();
            apply(
                &mut r,
                Command::StartFailover {
                    name: name.clone(),
                    id: id.clone(),
                    kind: FailoverKind::Automatic,
                    analysis_code: AnalysisCode::DeadPrimary,
                    evidence,
                    old_primary: old.clone(),
                    candidate: new.clone(),
                    epoch,
                    plan,
                    request_id: None,
                },
            );
            for s in 0..7u32 {
                apply(
                    &mut r,
                    Command::FailoverStep {
                        name: name.clone(),
                        id: id.clone(),
                        index: s,
                        description: format!("step {s} on {new} (best effort) for epoch {epoch}"),
                        outcome: StepOutcome::Done(format!(
                            "read_only set, 3 client connections killed; replicating from {new}"
                        )),
                    },
                );
            }
            apply(
                &mut r,
                Command::FinishFailover {
                    name: name.clone(),
                    id: id.clone(),
                    outcome: FailoverOutcome::Succeeded,
                    promotion_gtid: Some(format!("0-1-{}", e * 100)),
                },
            );
            apply(&mut r, Command::AckFailover { name: name.clone(), id: None });
        }
    }
    (r, idx)
}

/// Mean time of `f` over enough runs to fill ~1 s (at least 3).
fn time<T>(mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    let mut n = 0u32;
    while n < 3 || start.elapsed() < Duration::from_secs(1) {
        std::hint::black_box(f());
        n += 1;
    }
    start.elapsed() / n
}

fn main() {
    println!("state_scale: N clusters, each 3 instances and a full history ({HISTORY_RETENTION} failovers x 7 steps)");
    for clusters in [10usize, 100, 1000] {
        let built = Instant::now();
        let (mut r, mut idx) = build(clusters);
        let build_time = built.elapsed();
        let bytes: usize = r.encode_all().expect("the state encodes").iter().map(|(k, v)| k.len() + v.len()).sum();
        // The failover engine's read, every tick and every change.
        let engine = time(|| r.clusters.values().cloned().collect::<Vec<_>>());
        // The primary feed's recomputation after every applied entry.
        let feed = time(|| r.clusters.values().map(|c| c.primary_state()).collect::<Vec<_>>());
        // One applied entry (a maintenance toggle) while nobody holds a copy.
        let name = r.clusters.keys().next().cloned().expect("a cluster");
        let apply = time(|| {
            idx += 1;
            let cmd = Command::SetAutomaticFailover { name: name.clone(), enabled: Some(idx % 2 == 0) };
            r.apply(&log_id(idx), &Request::new(cmd, Origin::default()))
        });
        // What the store writes after a failover step: its own failover record and the
        // audit record (data format 2), against the whole record with its history that
        // format 1 rewrote after every step.
        let c = r.clusters[&name].clone();
        let last = c.history.last().expect("a history");
        let touched = [
            StateKey::Failover(name.clone(), last.started_index),
            StateKey::Audit(*r.audit.keys().last().expect("audit")),
        ];
        let step_bytes: usize = touched.iter().map(|k| r.encode(k).expect("encodes").1.map_or(0, |v| v.len())).sum();
        let persist = time(|| touched.iter().map(|k| r.encode(k)).collect::<Vec<_>>());
        let whole_bytes = serde_json::to_vec(&*c).expect("the record encodes").len();
        let persist_whole = time(|| serde_json::to_vec(&*c));
        println!(
            "state_scale clusters={clusters}: persisting a failover step {:.1} KiB in {:.3} ms \
             (format 1 rewrote the whole record with its history: {:.0} KiB in {:.3} ms)",
            step_bytes as f64 / 1024.0,
            persist.as_secs_f64() * 1e3,
            whole_bytes as f64 / 1024.0,
            persist_whole.as_secs_f64() * 1e3,
        );
        println!(
            "state_scale clusters={clusters}: state {:.1} MiB (built in {:.1} s); engine read of every record {:.3} ms \
             (x5/s per tick = {:.1}% of a core); primary feed recompute {:.3} ms per applied entry; one apply {:.1} us",
            bytes as f64 / 1048576.0,
            build_time.as_secs_f64(),
            engine.as_secs_f64() * 1e3,
            engine.as_secs_f64() * 5.0 * 100.0,
            feed.as_secs_f64() * 1e3,
            apply.as_secs_f64() * 1e6,
        );
    }
}

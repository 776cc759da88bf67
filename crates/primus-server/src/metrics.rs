//! Prometheus metrics of one primusd node (served as text on `GET /metrics`).
//!
//! Two kinds of series:
//! * **Event series** updated where the event happens: probe latency and probe
//!   errors (monitor.rs), watch subscribers (the gRPC watch stream).
//! * **State series** computed at scrape time from what the node already holds:
//!   Raft metrics, the replicated registry (epochs, failover history) and this
//!   node's latest probes and analyses. Nothing has to be kept in sync, and a
//!   cluster or instance that goes away takes its series with it.
//!
//! Failover counts come from the replicated history, not from a counter bumped by
//! the engine: every coordinator reports the same numbers, they survive restarts
//! and leader changes, and a failover finished by a new leader is counted exactly
//! once. The history is bounded (`HISTORY_RETENTION` per cluster), so the series is
//! a gauge (`primus_failovers`), not a `_total` counter; to alert on a new failover
//! use `changes(primus_cluster_epoch[…])` (the epoch only ever grows).

use primus_types::FailoverOutcome;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use std::sync::Mutex;

/// Probe latency buckets, seconds: 0.1 ms to 2 s.
pub const PROBE_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];

/// Buckets of the interval between two scheduled probes of one instance, seconds: around
/// the default 1 s probe interval, finer near it; above 1.5 × the interval a tick was late,
/// at 2 × one was missed.
pub const PROBE_INTERVAL_BUCKETS: [f64; 16] =
    [0.25, 0.5, 0.9, 0.95, 0.99, 1.01, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0];

pub struct Metrics {
    registry: Registry,
    /// Open `WatchPrimary` streams on this node (inc when one opens, dec when it ends).
    pub watch_subscribers: IntGauge,
    /// Wall time of this node's successful probes, by instance.
    pub probe_duration: HistogramVec,
    /// This node's failed probes, by instance and error kind (`ProbeError::kind`).
    pub probe_errors: IntCounterVec,
    /// Time between the starts of two consecutive *scheduled* probes of one instance (all
    /// instances in one series: a per-instance histogram would be 16 series per instance).
    pub probe_interval: prometheus::Histogram,
    raft_term: IntGauge,
    raft_is_leader: IntGauge,
    raft_leader_id: IntGauge,
    raft_commit_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_last_log_index: IntGauge,
    cluster_analysis: IntGaugeVec,
    cluster_epoch: IntGaugeVec,
    cluster_failover_in_progress: IntGaugeVec,
    cluster_has_primary: IntGaugeVec,
    split_fences: IntGaugeVec,
    unfences: IntGaugeVec,
    in_maintenance: IntGaugeVec,
    failovers: IntGaugeVec,
    last_failover_duration: GaugeVec,
    last_failover_finished: GaugeVec,
    instance_up: IntGaugeVec,
    /// One scrape at a time: state series are reset and refilled for each.
    scrape: Mutex<()>,
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn outcome_label(o: &Option<FailoverOutcome>) -> &'static str {
    match o {
        None => "in_progress",
        Some(FailoverOutcome::Succeeded) => "succeeded",
        Some(FailoverOutcome::Aborted(_)) => "aborted",
        Some(FailoverOutcome::Failed(_)) => "failed",
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let probe_duration = HistogramVec::new(
            HistogramOpts::new(
                "primus_probe_duration_seconds",
                "Wall time of this node's successful probes of an instance, including a reconnect when one was needed",
            )
            .buckets(PROBE_BUCKETS.to_vec()),
            &["instance"],
        )?;
        r.register(Box::new(probe_duration.clone()))?;
        let probe_errors = IntCounterVec::new(
            Opts::new("primus_probe_errors_total", "Failed probes of an instance by this node, by error kind"),
            &["instance", "kind"],
        )?;
        r.register(Box::new(probe_errors.clone()))?;
        let probe_interval = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "primus_probe_interval_seconds",
                "Time between the starts of two consecutive scheduled probes of the same instance by this node \
                 (every instance in one series); above probe_interval_ms the probe was late",
            )
            .buckets(PROBE_INTERVAL_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(probe_interval.clone()))?;
        Ok(Metrics {
            watch_subscribers: int_gauge(&r, "primus_watch_subscribers", "Open WatchPrimary streams on this node")?,
            probe_duration,
            probe_errors,
            probe_interval,
            raft_term: int_gauge(&r, "primus_raft_term", "Current Raft term of this node")?,
            raft_is_leader: int_gauge(
                &r,
                "primus_raft_is_leader",
                "1 when this node is the Raft leader and a quorum acknowledged it within an election timeout",
            )?,
            raft_leader_id: int_gauge(&r, "primus_raft_leader_id", "Id of the leader this node knows of, 0 for none")?,
            raft_commit_index: int_gauge(
                &r,
                "primus_raft_commit_index",
                "Highest log index known committed (on the leader: held by a quorum; elsewhere: applied)",
            )?,
            raft_applied_index: int_gauge(&r, "primus_raft_applied_index", "Last log index applied on this node")?,
            raft_last_log_index: int_gauge(&r, "primus_raft_last_log_index", "Last log index in this node's log")?,
            cluster_analysis: int_gauge_vec(
                &r,
                "primus_cluster_analysis",
                "This node's latest analysis of a cluster: 1 for the current code (the leader's decides)",
                &["cluster", "code"],
            )?,
            cluster_epoch: int_gauge_vec(
                &r,
                "primus_cluster_epoch",
                "A cluster's fencing epoch (bumped by every promotion)",
                &["cluster"],
            )?,
            cluster_failover_in_progress: int_gauge_vec(
                &r,
                "primus_cluster_failover_in_progress",
                "1 while a failover or switchover of the cluster is in progress",
                &["cluster"],
            )?,
            cluster_has_primary: int_gauge_vec(
                &r,
                "primus_cluster_has_primary",
                "1 when the cluster has an agreed primary",
                &["cluster"],
            )?,
            split_fences: int_gauge_vec(
                &r,
                "primus_split_fences",
                "Split-brain fences in the cluster's replicated record (the last 50): writable non-primaries \
                 the leader set read-only; the same on every node",
                &["cluster"],
            )?,
            unfences: int_gauge_vec(
                &r,
                "primus_unfences",
                "Times the leader made the cluster's read-only primary writable again, in its replicated record \
                 (the last 50), e.g. after its agent fenced it during a coordinator stall; the same on every node",
                &["cluster"],
            )?,
            in_maintenance: int_gauge_vec(
                &r,
                "primus_in_maintenance",
                "1 per active maintenance: instance=\"\" for the whole cluster",
                &["cluster", "instance"],
            )?,
            failovers: int_gauge_vec(
                &r,
                "primus_failovers",
                "Failovers in the cluster's replicated history (the last 100), by kind and outcome; \
                 the same on every node",
                &["cluster", "kind", "outcome"],
            )?,
            last_failover_duration: gauge_vec(
                &r,
                "primus_last_failover_duration_seconds",
                "Duration of the cluster's last finished failover (finished_at - started_at)",
                &["cluster", "kind", "outcome"],
            )?,
            last_failover_finished: gauge_vec(
                &r,
                "primus_last_failover_finished_timestamp_seconds",
                "When the cluster's last finished failover ended (unix seconds, leader's clock)",
                &["cluster"],
            )?,
            instance_up: int_gauge_vec(
                &r,
                "primus_instance_up",
                "1 when this node's latest probe of the instance succeeded, 0 when it failed",
                &["cluster", "instance"],
            )?,
            registry: r,
            scrape: Mutex::new(()),
        })
    }

    /// Forget an instance's event series (it left every cluster).
    pub fn forget_instance(&self, instance: &str) {
        let _ = self.probe_duration.remove_label_values(&[instance]);
        for kind in primus_mysql::ProbeError::KINDS {
            let _ = self.probe_errors.remove_label_values(&[instance, kind]);
        }
    }

    /// Refresh the state series from `s` and encode everything in the Prometheus
    /// text format.
    pub fn render(&self, s: &Snapshot) -> prometheus::Result<String> {
        let _guard = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(s);
        let families = self.registry.gather();
        let mut out = String::new();
        prometheus::TextEncoder::new().encode_utf8(&families, &mut out)?;
        Ok(out)
    }

    /// The `Content-Type` of [`Metrics::render`]'s output.
    pub fn content_type() -> String {
        prometheus::TextEncoder::new().format_type().to_string()
    }

    fn refresh(&self, s: &Snapshot) {
        let m = &s.raft;
        self.raft_term.set(i64_of(m.current_term));
        self.raft_is_leader.set(i64::from(s.leads_with_quorum));
        self.raft_leader_id.set(i64_of(m.current_leader.unwrap_or(0)));
        self.raft_applied_index.set(i64_of(m.last_applied.map(|l| l.index).unwrap_or(0)));
        self.raft_last_log_index.set(i64_of(m.last_log_index.unwrap_or(0)));
        self.raft_commit_index.set(i64_of(s.committed_index.unwrap_or(0)));
        self.watch_subscribers.set(i64::try_from(s.watch_subscribers).unwrap_or(i64::MAX));

        // Clusters and instances that went away must take their series with them.
        self.cluster_analysis.reset();
        self.cluster_epoch.reset();
        self.cluster_failover_in_progress.reset();
        self.cluster_has_primary.reset();
        self.split_fences.reset();
        self.unfences.reset();
        self.in_maintenance.reset();
        self.failovers.reset();
        self.last_failover_duration.reset();
        self.last_failover_finished.reset();
        self.instance_up.reset();

        for c in &s.clusters {
            let name = c.name.as_str();
            self.cluster_epoch.with_label_values(&[name]).set(i64_of(c.epoch));
            self.cluster_failover_in_progress.with_label_values(&[name]).set(i64::from(c.in_flight().is_some()));
            self.cluster_has_primary.with_label_values(&[name]).set(i64::from(c.topology.primary.is_some()));
            self.split_fences.with_label_values(&[name]).set(i64_of(c.split_fences.len() as u64));
            self.unfences.with_label_values(&[name]).set(i64_of(c.unfences.len() as u64));
            let now = s.now_ms;
            if c.cluster_maintenance_at(now).is_some() {
                self.in_maintenance.with_label_values(&[name, ""]).set(1);
            }
            for addr in c.instance_maintenance.keys().filter(|a| c.instance_maintenance_at(a, now).is_some()) {
                self.in_maintenance.with_label_values(&[name, addr.to_string().as_str()]).set(1);
            }
            for f in &c.history {
                let kind = f.kind.to_string();
                self.failovers.with_label_values(&[name, kind.as_str(), outcome_label(&f.outcome)]).inc();
            }
            if let Some(f) = c.history.iter().rev().find(|f| f.finished_at_ms.is_some()) {
                if let Some(end) = f.finished_at_ms {
                    let secs = end.saturating_sub(f.started_at_ms) as f64 / 1000.0;
                    let kind = f.kind.to_string();
                    self.last_failover_duration
                        .with_label_values(&[name, kind.as_str(), outcome_label(&f.outcome)])
                        .set(secs);
                    self.last_failover_finished.with_label_values(&[name]).set(end as f64 / 1000.0);
                }
            }
            if let Some(code) = s.analysis.get(&c.name) {
                self.cluster_analysis.with_label_values(&[name, code.as_str()]).set(1);
            }
        }
        for (cluster, instance, up) in &s.instance_up {
            self.instance_up.with_label_values(&[cluster.as_str(), instance.as_str()]).set(i64::from(*up));
        }
    }
}

/// What a scrape reads, gathered by the caller: the node's handles, not the node.
pub struct Snapshot {
    pub raft: openraft::RaftMetrics<primus_types::NodeId, primus_types::Member>,
    pub leads_with_quorum: bool,
    pub committed_index: Option<u64>,
    pub watch_subscribers: usize,
    pub clusters: Vec<std::sync::Arc<primus_types::state::ClusterRecord>>,
    pub now_ms: u64,
    /// The latest analysis code per cluster (this node's).
    pub analysis: std::collections::BTreeMap<primus_types::ClusterName, String>,
    /// (cluster, instance, up) for each instance this node has probed.
    pub instance_up: Vec<(String, String, bool)>,
}

impl Metrics {
    /// Record one completed probe of `instance` by this node.
    pub fn observe_probe<T>(
        &self,
        instance: &str,
        elapsed: std::time::Duration,
        result: &Result<T, primus_mysql::ProbeError>,
    ) {
        match result {
            Ok(_) => self.probe_duration.with_label_values(&[instance]).observe(elapsed.as_secs_f64()),
            Err(e) => self.probe_errors.with_label_values(&[instance, e.kind()]).inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_series_are_encoded_and_forgotten() {
        let m = Metrics::new().expect("metrics");
        m.watch_subscribers.inc();
        let ok: Result<(), primus_mysql::ProbeError> = Ok(());
        m.observe_probe("db1:3306", std::time::Duration::from_micros(300), &ok);
        let err: Result<(), _> = Err(primus_mysql::ProbeError::Unreachable { message: "refused".into() });
        m.observe_probe("db1:3306", std::time::Duration::from_millis(1), &err);
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut text).expect("encode");
        assert!(text.contains("primus_watch_subscribers 1"), "{text}");
        assert!(text.contains("primus_probe_duration_seconds_bucket{instance=\"db1:3306\",le=\"0.0005\"} 1"), "{text}");
        m.probe_interval.observe(1.003);
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut text).expect("encode");
        assert!(text.contains("primus_probe_interval_seconds_bucket{le=\"1.01\"} 1"), "{text}");
        assert!(text.contains("primus_probe_interval_seconds_bucket{le=\"0.99\"} 0"), "{text}");
        assert!(text.contains("primus_probe_errors_total{instance=\"db1:3306\",kind=\"unreachable\"} 1"), "{text}");
        m.forget_instance("db1:3306");
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut text).expect("encode");
        assert!(!text.contains("db1:3306"), "{text}");
    }
}

//! Prometheus metrics of one primusd node (served as text on `GET /metrics`).
//!
//! Two kinds of series:
//! * **Event series** updated where the event happens: probe latency and probe
//!   errors (monitor.rs), watch subscribers (the gRPC watch stream), hook runs and
//!   failures (hooks.rs), leader changes (a task watching Raft's metrics).
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
//!
//! Labels are bounded by what the node holds: clusters, their instances, the group's
//! members, hook kinds, and small fixed sets (roles, lease states, error kinds).
//! The process series (`process_*`: CPU, memory, file descriptors, threads) come from
//! the `prometheus` crate's process collector.

use primus_types::FailoverOutcome;
use prometheus::core::{Atomic, AtomicF64, AtomicI64, GenericGaugeVec};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Hook commands run by this node, by hook kind (`pre_failover` …).
    hook_runs: IntCounterVec,
    /// Hook commands that did not succeed (non-zero exit, signal, timeout, not started).
    hook_failures: IntCounterVec,
    /// Times this node learned of a new leader (another node, or a new term).
    leader_changes: prometheus::IntCounter,
    /// `primus_feature_level{of="build"|"group"}`.
    feature_level: IntGaugeVec,
    /// `primus_automatic_failover_off_everywhere`.
    automatic_off: IntGauge,
    raft_term: IntGauge,
    raft_is_leader: IntGauge,
    raft_leader_id: IntGauge,
    raft_commit_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_last_log_index: IntGauge,
    raft_voters: IntGauge,
    raft_member_last_answer: StateGauges<AtomicF64>,
    cluster_analysis: StateGauges<AtomicI64>,
    cluster_epoch: StateGauges<AtomicI64>,
    cluster_failover_in_progress: StateGauges<AtomicI64>,
    cluster_has_primary: StateGauges<AtomicI64>,
    split_fences: StateGauges<AtomicI64>,
    unfences: StateGauges<AtomicI64>,
    in_maintenance: StateGauges<AtomicI64>,
    failovers: StateGauges<AtomicI64>,
    last_failover_duration: StateGauges<AtomicF64>,
    last_failover_finished: StateGauges<AtomicF64>,
    last_split_fence: StateGauges<AtomicF64>,
    instance_up: StateGauges<AtomicI64>,
    instance_role: StateGauges<AtomicI64>,
    instance_read_only: StateGauges<AtomicI64>,
    instance_replicating: StateGauges<AtomicI64>,
    instance_lag: StateGauges<AtomicF64>,
    instance_heartbeat_delay: StateGauges<AtomicF64>,
    instance_divergent: StateGauges<AtomicI64>,
    instance_errant: StateGauges<AtomicI64>,
    agent_lease: StateGauges<AtomicI64>,
    agent_lease_remaining: StateGauges<AtomicF64>,
    /// One scrape at a time: state series are refilled for each.
    scrape: Mutex<()>,
}

type LabelSets = HashSet<Vec<String>>;

/// A labelled gauge family that each scrape refills from the state: the children set
/// by this refresh stay, the ones it did not set are removed. (`reset()` and refilling
/// re-created every child at every scrape: about half a second of CPU at 5,000
/// instances, `benches/metrics_render.rs`.) Used under [`Metrics::render`]'s lock.
struct StateGauges<P: Atomic + 'static> {
    vec: GenericGaugeVec<P>,
    /// Label values set by the refresh in progress, and by the previous one.
    live: Mutex<(LabelSets, LabelSets)>,
}

impl<P: Atomic + 'static> StateGauges<P> {
    fn new(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        let vec = GenericGaugeVec::<P>::new(Opts::new(name, help), labels)?;
        r.register(Box::new(vec.clone()))?;
        Ok(StateGauges { vec, live: Mutex::new(Default::default()) })
    }

    fn set(&self, labels: &[&str], v: P::T) {
        self.vec.with_label_values(labels).set(v);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.0.insert(labels.iter().map(|l| l.to_string()).collect());
    }

    /// Remove the children the refresh that just ended did not set.
    fn sweep(&self) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let (now, before) = &mut *live;
        for gone in before.difference(now) {
            let labels: Vec<&str> = gone.iter().map(String::as_str).collect();
            let _ = self.vec.remove_label_values(&labels);
        }
        *before = std::mem::take(now);
    }
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
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
        let hook_runs = IntCounterVec::new(
            Opts::new("primus_hook_runs_total", "Hook commands this node ran, by hook kind"),
            &["hook"],
        )?;
        r.register(Box::new(hook_runs.clone()))?;
        let hook_failures = IntCounterVec::new(
            Opts::new(
                "primus_hook_failures_total",
                "Hook commands this node ran that failed (non-zero exit, killed, timed out, or not started), \
                 by hook kind",
            ),
            &["hook"],
        )?;
        r.register(Box::new(hook_failures.clone()))?;
        // Every kind from the start: increase() sees the first run, and a dashboard the zero.
        for kind in crate::hooks::HookKind::ALL {
            hook_runs.with_label_values(&[kind.key()]).inc_by(0);
            hook_failures.with_label_values(&[kind.key()]).inc_by(0);
        }
        let leader_changes = prometheus::IntCounter::new(
            "primus_raft_leader_changes_total",
            "Times this node learned of a new leader (another node, or the same one in a new term) since it \
             started; the first leader it learns of is not counted",
        )?;
        r.register(Box::new(leader_changes.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "primus_build_info",
                "Always 1: the primusd version, and the git commit when it was built with one",
            ),
            &["version", "commit"],
        )?;
        r.register(Box::new(build_info.clone()))?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT.unwrap_or("unknown")]).set(1);
        let feature_level = IntGaugeVec::new(
            Opts::new(
                "primus_feature_level",
                "Feature levels (docs/operations.md, Upgrading): of=\"build\" the newest this primusd knows, \
                 of=\"group\" the group's as this node applied it; commands of a level above the group's are not \
                 written. group < build after every member was upgraded: a member did not answer the leader",
            ),
            &["of"],
        )?;
        r.register(Box::new(feature_level.clone()))?;
        feature_level.with_label_values(&["build"]).set(i64::from(primus_types::FEATURE_LEVEL));
        // CPU, memory, file descriptors and threads of this process (Linux /proc).
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics {
            hook_runs,
            hook_failures,
            leader_changes,
            feature_level,
            automatic_off: int_gauge(
                &r,
                "primus_automatic_failover_off_everywhere",
                "1 while automatic failover is switched off for every cluster (primusctl automatic off --all; the \
                 reason is in primusctl status)",
            )?,
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
            raft_voters: int_gauge(&r, "primus_raft_voters", "Voters in the group's membership as this node knows it")?,
            raft_member_last_answer: StateGauges::new(
                &r,
                "primus_raft_member_last_answer_seconds",
                "On the leader only: seconds since each member last answered one of its Raft RPCs (heartbeats \
                 included); 0 for the leader itself; the time since this node started for a member that has not \
                 answered since",
                &["member", "voter"],
            )?,
            cluster_analysis: StateGauges::new(
                &r,
                "primus_cluster_analysis",
                "This node's latest analysis of a cluster: 1 for the current code (the leader's decides)",
                &["cluster", "code"],
            )?,
            cluster_epoch: StateGauges::new(
                &r,
                "primus_cluster_epoch",
                "A cluster's fencing epoch (bumped by every promotion)",
                &["cluster"],
            )?,
            cluster_failover_in_progress: StateGauges::new(
                &r,
                "primus_cluster_failover_in_progress",
                "1 while a failover or switchover of the cluster is in progress",
                &["cluster"],
            )?,
            cluster_has_primary: StateGauges::new(
                &r,
                "primus_cluster_has_primary",
                "1 when the cluster has an agreed primary",
                &["cluster"],
            )?,
            split_fences: StateGauges::new(
                &r,
                "primus_split_fences",
                "Split-brain fences in the cluster's replicated record (the last 50): writable non-primaries \
                 the leader set read-only; the same on every node",
                &["cluster"],
            )?,
            unfences: StateGauges::new(
                &r,
                "primus_unfences",
                "Times the leader made the cluster's read-only primary writable again, in its replicated record \
                 (the last 50), e.g. after its agent fenced it during a coordinator stall; the same on every node",
                &["cluster"],
            )?,
            in_maintenance: StateGauges::new(
                &r,
                "primus_in_maintenance",
                "1 per active maintenance: instance=\"\" for the whole cluster",
                &["cluster", "instance"],
            )?,
            failovers: StateGauges::new(
                &r,
                "primus_failovers",
                "Failovers in the cluster's replicated history (the last 100), by kind and outcome; \
                 the same on every node",
                &["cluster", "kind", "outcome"],
            )?,
            last_failover_duration: StateGauges::new(
                &r,
                "primus_last_failover_duration_seconds",
                "Duration of the cluster's last finished failover (finished_at - started_at)",
                &["cluster", "kind", "outcome"],
            )?,
            last_failover_finished: StateGauges::new(
                &r,
                "primus_last_failover_finished_timestamp_seconds",
                "When the cluster's last finished failover ended (unix seconds, leader's clock)",
                &["cluster"],
            )?,
            last_split_fence: StateGauges::new(
                &r,
                "primus_last_split_fence_timestamp_seconds",
                "When the leader last set a writable non-primary of the cluster read-only (unix seconds, leader's \
                 clock); 0 when its replicated record holds no split fence",
                &["cluster"],
            )?,
            instance_up: StateGauges::new(
                &r,
                "primus_instance_up",
                "1 when this node's latest probe of the instance succeeded, 0 when it failed",
                &["cluster", "instance"],
            )?,
            instance_role: StateGauges::new(
                &r,
                "primus_instance_role",
                "1 for the instance's role in the cluster's replicated topology (primary, replica, intermediate, \
                 demoted, detached)",
                &["cluster", "instance", "role"],
            )?,
            instance_read_only: StateGauges::new(
                &r,
                "primus_instance_read_only",
                "1 when this node's latest successful probe found the instance read_only, 0 when writable",
                &["cluster", "instance"],
            )?,
            instance_replicating: StateGauges::new(
                &r,
                "primus_instance_replicating",
                "For replicas and intermediates this node reached: 1 when the IO thread is connected and the SQL \
                 thread runs, 0 otherwise (no replication configured included)",
                &["cluster", "instance"],
            )?,
            instance_lag: StateGauges::new(
                &r,
                "primus_instance_replication_lag_seconds",
                "Seconds_Behind_Master (Seconds_Behind_Source) of the instance at this node's latest probe; absent \
                 when unknown (not a replica, replication stopped, probe failed)",
                &["cluster", "instance"],
            )?,
            instance_heartbeat_delay: StateGauges::new(
                &r,
                "primus_instance_heartbeat_delay_seconds",
                "Age of the cluster's primus heartbeat row on the instance at this node's latest probe (probe time \
                 minus the row's timestamp): how far replication of writes lags, even when idle",
                &["cluster", "instance"],
            )?,
            instance_divergent: StateGauges::new(
                &r,
                "primus_instance_divergent_transactions",
                "Transactions a former primary executed beyond the promotion point of the failover that replaced \
                 it (at least this many when inexact); 0 for an instance that is not a former primary or has none",
                &["cluster", "instance"],
            )?,
            instance_errant: StateGauges::new(
                &r,
                "primus_instance_errant_transactions",
                "Errant transactions of a replica: executed on it but not on the primary, by this node's latest \
                 probes of both; 0 when none",
                &["cluster", "instance"],
            )?,
            agent_lease: StateGauges::new(
                &r,
                "primus_agent_lease",
                "On the leader only: 1 for the lease state of each instance with a registered fencing agent \
                 (held, expired: the primary's lease ran out, released, not_held)",
                &["cluster", "instance", "state"],
            )?,
            agent_lease_remaining: StateGauges::new(
                &r,
                "primus_agent_lease_remaining_seconds",
                "On the leader only: seconds left of the lease it granted the instance's agent; 0 when none \
                 is running",
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
        self.feature_level.with_label_values(&["group"]).set(i64::from(s.group_feature_level));
        self.automatic_off.set(i64::from(s.automatic_off));
        let membership = m.membership_config.membership();
        self.raft_voters.set(i64_of(membership.voter_ids().count() as u64));
        for member in &s.members {
            let secs = member.last_answer.as_secs_f64();
            let voter = if member.voter { "true" } else { "false" };
            self.raft_member_last_answer.set(&[member.id.to_string().as_str(), voter], secs);
        }

        for c in &s.clusters {
            let name = c.name.as_str();
            self.cluster_epoch.set(&[name], i64_of(c.epoch));
            self.cluster_failover_in_progress.set(&[name], i64::from(c.in_flight().is_some()));
            self.cluster_has_primary.set(&[name], i64::from(c.topology.primary.is_some()));
            self.split_fences.set(&[name], i64_of(c.split_fences.len() as u64));
            self.unfences.set(&[name], i64_of(c.unfences.len() as u64));
            let last_fence = c.split_fences.iter().map(|f| f.at_ms).max().unwrap_or(0);
            self.last_split_fence.set(&[name], last_fence as f64 / 1000.0);
            for i in c.topology.instances.values() {
                let role = i.role.to_string();
                self.instance_role.set(&[name, i.addr.to_string().as_str(), role.as_str()], 1);
            }
            let now = s.now_ms;
            if c.cluster_maintenance_at(now).is_some() {
                self.in_maintenance.set(&[name, ""], 1);
            }
            for addr in c.instance_maintenance.keys().filter(|a| c.instance_maintenance_at(a, now).is_some()) {
                self.in_maintenance.set(&[name, addr.to_string().as_str()], 1);
            }
            let mut counts: std::collections::BTreeMap<(String, &str), i64> = Default::default();
            for f in &c.history {
                *counts.entry((f.kind.to_string(), outcome_label(&f.outcome))).or_default() += 1;
            }
            for ((kind, outcome), n) in counts {
                self.failovers.set(&[name, kind.as_str(), outcome], n);
            }
            if let Some(f) = c.history.iter().rev().find(|f| f.finished_at_ms.is_some()) {
                if let Some(end) = f.finished_at_ms {
                    let secs = end.saturating_sub(f.started_at_ms) as f64 / 1000.0;
                    let kind = f.kind.to_string();
                    self.last_failover_duration.set(&[name, kind.as_str(), outcome_label(&f.outcome)], secs);
                    self.last_failover_finished.set(&[name], end as f64 / 1000.0);
                }
            }
            if let Some(code) = s.analysis.get(&c.name) {
                self.cluster_analysis.set(&[name, code.as_str()], 1);
            }
        }
        for i in &s.instances {
            let labels = [i.cluster.as_str(), i.instance.as_str()];
            self.instance_up.set(&labels, i64::from(i.up));
            if let Some(ro) = i.read_only {
                self.instance_read_only.set(&labels, i64::from(ro));
            }
            if let Some(r) = i.replicating {
                self.instance_replicating.set(&labels, i64::from(r));
            }
            if let Some(lag) = i.lag_seconds {
                self.instance_lag.set(&labels, lag as f64);
            }
            if let Some(ms) = i.heartbeat_delay_ms {
                self.instance_heartbeat_delay.set(&labels, ms as f64 / 1000.0);
            }
            if let Some(n) = i.divergent {
                self.instance_divergent.set(&labels, i64_of(n));
            }
            if let Some(n) = i.errant {
                self.instance_errant.set(&labels, i64_of(n));
            }
        }
        for l in &s.leases {
            let labels = [l.cluster.as_str(), l.instance.as_str()];
            self.agent_lease.set(&[labels[0], labels[1], l.state.as_str()], 1);
            self.agent_lease_remaining.set(&labels, l.remaining.as_secs_f64());
        }
        // Clusters, instances, members and leases that went away take their series with them.
        for sweep in self.state_families() {
            sweep();
        }
    }

    /// The sweep of every state family (see [`StateGauges`]).
    fn state_families(&self) -> [Box<dyn Fn() + '_>; 22] {
        [
            Box::new(|| self.raft_member_last_answer.sweep()),
            Box::new(|| self.cluster_analysis.sweep()),
            Box::new(|| self.cluster_epoch.sweep()),
            Box::new(|| self.cluster_failover_in_progress.sweep()),
            Box::new(|| self.cluster_has_primary.sweep()),
            Box::new(|| self.split_fences.sweep()),
            Box::new(|| self.unfences.sweep()),
            Box::new(|| self.in_maintenance.sweep()),
            Box::new(|| self.failovers.sweep()),
            Box::new(|| self.last_failover_duration.sweep()),
            Box::new(|| self.last_failover_finished.sweep()),
            Box::new(|| self.last_split_fence.sweep()),
            Box::new(|| self.instance_up.sweep()),
            Box::new(|| self.instance_role.sweep()),
            Box::new(|| self.instance_read_only.sweep()),
            Box::new(|| self.instance_replicating.sweep()),
            Box::new(|| self.instance_lag.sweep()),
            Box::new(|| self.instance_heartbeat_delay.sweep()),
            Box::new(|| self.instance_divergent.sweep()),
            Box::new(|| self.instance_errant.sweep()),
            Box::new(|| self.agent_lease.sweep()),
            Box::new(|| self.agent_lease_remaining.sweep()),
        ]
    }

    /// Count leader changes as this node learns of them, until `rx` closes (Raft stopped).
    pub fn watch_leader(self: &Arc<Self>, mut rx: tokio::sync::watch::Receiver<RaftMetricsOf>) {
        let counter = self.leader_changes.clone();
        tokio::spawn(async move {
            let mut known: Option<(u64, u64)> = None;
            loop {
                let now = {
                    let m = rx.borrow_and_update();
                    m.current_leader.map(|l| (l, m.current_term))
                };
                if let Some(now) = now {
                    if known.is_some_and(|k| k != now) {
                        counter.inc();
                    }
                    known = Some(now);
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The git commit primusd was built from, when the build set `PRIMUS_GIT_COMMIT`
/// (`PRIMUS_GIT_COMMIT=$(git rev-parse --short HEAD) cargo build`); a build from a
/// tarball has none and reports `unknown`.
const BUILD_COMMIT: Option<&str> = option_env!("PRIMUS_GIT_COMMIT");

type RaftMetricsOf = openraft::RaftMetrics<primus_types::NodeId, primus_types::Member>;

/// One instance of a cluster as this node probed it (scrape-time data).
#[derive(Debug, Clone, Default)]
pub struct InstanceSample {
    pub cluster: String,
    pub instance: String,
    /// This node's latest probe succeeded.
    pub up: bool,
    pub read_only: Option<bool>,
    /// For replicas and intermediates reached by the probe: IO thread `Yes` and SQL thread running.
    pub replicating: Option<bool>,
    pub lag_seconds: Option<u64>,
    pub heartbeat_delay_ms: Option<i64>,
    pub divergent: Option<u64>,
    pub errant: Option<u64>,
}

/// The lease state of an instance's fencing agent, as the leader counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// This leader granted a lease that is still running.
    Held,
    /// The primary's lease ran out (its agent has fenced it).
    Expired,
    /// The agent handed its lease back (its mysqld exited).
    Released,
    /// Registered, no running lease from this leader (an agent beside a replica, or one
    /// that has not renewed since this node became leader).
    NotHeld,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Held => "held",
            LeaseState::Expired => "expired",
            LeaseState::Released => "released",
            LeaseState::NotHeld => "not_held",
        }
    }
}

/// A registered agent's lease (leader only).
#[derive(Debug, Clone)]
pub struct LeaseSample {
    pub cluster: String,
    pub instance: String,
    pub state: LeaseState,
    /// What is left of the lease this leader granted (zero when none runs).
    pub remaining: Duration,
}

/// When a member of the group last answered the leader (leader only).
#[derive(Debug, Clone)]
pub struct MemberSample {
    pub id: primus_types::NodeId,
    pub voter: bool,
    /// Zero for the leader itself; for a member that has not answered since this node
    /// started, the time since it started.
    pub last_answer: Duration,
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
    /// Each instance this node has probed.
    pub instances: Vec<InstanceSample>,
    /// Registered agents' leases (empty unless this node leads).
    pub leases: Vec<LeaseSample>,
    /// Members and when they last answered (empty unless this node leads).
    pub members: Vec<MemberSample>,
    /// The group's feature level as this node applied it.
    pub group_feature_level: u32,
    /// Automatic failover is switched off for every cluster.
    pub automatic_off: bool,
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

    /// Record one hook command run by this node.
    pub fn observe_hook(&self, kind: crate::hooks::HookKind, success: bool) {
        self.hook_runs.with_label_values(&[kind.key()]).inc();
        if !success {
            self.hook_failures.with_label_values(&[kind.key()]).inc();
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

    fn cluster() -> primus_types::state::ClusterRecord {
        use primus_mysql::samples::{a, P, R1, R2};
        let n = |p: u16, s: Option<u16>| (a(p), s.map(a), p as u32 - 3305, "mariadb".into(), "10.11.6".into());
        let json = serde_json::json!({"name": "c", "seeds": [a(P)], "registered_at_index": 1,
            "registered_at_ms": 0, "registered_by": "t"});
        let mut c: primus_types::state::ClusterRecord = serde_json::from_value(json).expect("record");
        c.topology = primus_types::Topology::from_edges(vec![n(P, None), n(R1, Some(P)), n(R2, Some(P))], Some(&a(P)));
        c
    }

    fn snapshot(leader: bool) -> Snapshot {
        let mut raft = openraft::RaftMetrics::new_initial(1);
        raft.current_term = 3;
        raft.current_leader = Some(1);
        let members: Vec<MemberSample> = if leader {
            vec![
                MemberSample { id: 1, voter: true, last_answer: Duration::ZERO },
                MemberSample { id: 2, voter: true, last_answer: Duration::from_millis(250) },
                MemberSample { id: 3, voter: false, last_answer: Duration::from_secs(90) },
            ]
        } else {
            vec![]
        };
        let sample = |port: u16| InstanceSample {
            cluster: "c".into(),
            instance: format!("127.0.0.1:{port}"),
            up: true,
            ..Default::default()
        };
        let p = InstanceSample { read_only: Some(false), divergent: Some(0), errant: Some(0), ..sample(3306) };
        let r1 = InstanceSample {
            read_only: Some(true),
            replicating: Some(true),
            lag_seconds: Some(7),
            heartbeat_delay_ms: Some(1250),
            divergent: Some(0),
            errant: Some(2),
            ..sample(3307)
        };
        let r2 = InstanceSample { up: false, replicating: None, ..sample(3308) };
        Snapshot {
            raft,
            leads_with_quorum: leader,
            committed_index: Some(5),
            watch_subscribers: 0,
            clusters: vec![Arc::new(cluster())],
            now_ms: 1_000,
            analysis: Default::default(),
            instances: vec![p, r1, r2],
            leases: if leader {
                vec![LeaseSample {
                    cluster: "c".into(),
                    instance: "127.0.0.1:3306".into(),
                    state: LeaseState::Held,
                    remaining: Duration::from_millis(1200),
                }]
            } else {
                vec![]
            },
            members,
            group_feature_level: 2,
            automatic_off: false,
        }
    }

    #[test]
    fn instance_lease_member_and_build_series_are_rendered_and_leader_only_ones_only_on_the_leader() {
        let m = Metrics::new().expect("metrics");
        let text = m.render(&snapshot(true)).expect("render");
        for line in [
            "primus_instance_replication_lag_seconds{cluster=\"c\",instance=\"127.0.0.1:3307\"} 7",
            "primus_instance_heartbeat_delay_seconds{cluster=\"c\",instance=\"127.0.0.1:3307\"} 1.25",
            "primus_instance_replicating{cluster=\"c\",instance=\"127.0.0.1:3307\"} 1",
            "primus_instance_read_only{cluster=\"c\",instance=\"127.0.0.1:3306\"} 0",
            "primus_instance_errant_transactions{cluster=\"c\",instance=\"127.0.0.1:3307\"} 2",
            "primus_instance_divergent_transactions{cluster=\"c\",instance=\"127.0.0.1:3306\"} 0",
            "primus_instance_up{cluster=\"c\",instance=\"127.0.0.1:3308\"} 0",
            "primus_instance_role{cluster=\"c\",instance=\"127.0.0.1:3306\",role=\"primary\"} 1",
            "primus_instance_role{cluster=\"c\",instance=\"127.0.0.1:3308\",role=\"replica\"} 1",
            "primus_agent_lease{cluster=\"c\",instance=\"127.0.0.1:3306\",state=\"held\"} 1",
            "primus_agent_lease_remaining_seconds{cluster=\"c\",instance=\"127.0.0.1:3306\"} 1.2",
            "primus_raft_member_last_answer_seconds{member=\"1\",voter=\"true\"} 0",
            "primus_raft_member_last_answer_seconds{member=\"2\",voter=\"true\"} 0.25",
            "primus_raft_member_last_answer_seconds{member=\"3\",voter=\"false\"} 90",
            "primus_last_split_fence_timestamp_seconds{cluster=\"c\"} 0",
            "primus_hook_runs_total{hook=\"pre_failover\"} 0",
            "primus_hook_failures_total{hook=\"fence\"} 0",
            "primus_raft_leader_changes_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        let version = format!(
            "primus_build_info{{commit=\"{}\",version=\"{}\"}} 1",
            BUILD_COMMIT.unwrap_or("unknown"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{version}:\n{text}");
        // No lag or heartbeat series where the probe did not say.
        assert!(
            !text.contains("primus_instance_replication_lag_seconds{cluster=\"c\",instance=\"127.0.0.1:3306\"}"),
            "{text}"
        );
        assert!(!text.contains("primus_instance_replicating{cluster=\"c\",instance=\"127.0.0.1:3308\"}"), "{text}");
        // The process collector (Linux).
        for f in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(text.lines().any(|l| l.starts_with(f)), "{f} missing:\n{text}");
        }
        // On a follower: no lease or member series (leases and answers live on the leader).
        let text = m.render(&snapshot(false)).expect("render");
        assert!(!text.contains("primus_agent_lease{"), "{text}");
        assert!(!text.contains("primus_raft_member_last_answer_seconds{"), "{text}");
        assert!(text.contains("primus_raft_voters 0"), "no membership in the initial metrics: {text}");
    }

    #[test]
    fn hook_runs_and_failures_are_counted_by_kind() {
        let m = Metrics::new().expect("metrics");
        m.observe_hook(crate::hooks::HookKind::PostFailover, true);
        m.observe_hook(crate::hooks::HookKind::PostFailover, false);
        m.observe_hook(crate::hooks::HookKind::Fence, false);
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&m.registry.gather(), &mut text).expect("encode");
        assert!(text.contains("primus_hook_runs_total{hook=\"post_failover\"} 2"), "{text}");
        assert!(text.contains("primus_hook_failures_total{hook=\"post_failover\"} 1"), "{text}");
        assert!(text.contains("primus_hook_runs_total{hook=\"fence\"} 1"), "{text}");
        assert!(text.contains("primus_hook_failures_total{hook=\"fence\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn leader_changes_count_new_leaders_and_new_terms_not_the_first_leader() {
        let m = Arc::new(Metrics::new().expect("metrics"));
        let mut raft = openraft::RaftMetrics::new_initial(1);
        let (tx, rx) = tokio::sync::watch::channel(raft.clone());
        m.watch_leader(rx);
        let count = |m: &Metrics| m.leader_changes.get();
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        raft.current_term = 1;
        raft.current_leader = Some(1);
        tx.send(raft.clone()).expect("send");
        settle().await;
        assert_eq!(count(&m), 0, "the first leader is not a change");
        raft.current_leader = None;
        tx.send(raft.clone()).expect("send");
        settle().await;
        assert_eq!(count(&m), 0, "no leader known is not a change either");
        raft.current_term = 2;
        raft.current_leader = Some(2);
        tx.send(raft.clone()).expect("send");
        settle().await;
        assert_eq!(count(&m), 1);
        raft.current_term = 3;
        tx.send(raft.clone()).expect("send");
        settle().await;
        assert_eq!(count(&m), 2, "the same node elected again in a new term");
    }
}

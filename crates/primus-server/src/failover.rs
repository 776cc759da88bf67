//! Failover execution on the leader: analysis → double-check → write-ahead start →
//! one committed step at a time → finish.
//!
//! Safety rests on three rules:
//! * Only a leader that a quorum acknowledged recently decides, and before every
//!   step it confirms its leadership with a quorum (`ensure_linearizable`); a deposed
//!   leader stops at once, between two steps.
//! * Nothing touches MySQL before `StartFailover` (analysis, candidate, new epoch and
//!   the whole plan) is committed, and each step is committed when done. A new
//!   leader finds the unfinished record and resumes at the first step not recorded.
//! * Every step is idempotent (it checks the instance's state first), so running a
//!   step twice — once by a leader that died before recording it, once by its
//!   successor — is harmless.

use crate::config::{FailoverSection, MysqlSection};
use crate::monitor::{now_ms, Monitor};
use primus_failover::{
    analyze, choose_candidate, choose_candidate_explicit, plan, Analysis, AnalysisCode, ClusterInput, CoordinatorView,
    InstanceInput, Step, Thresholds,
};
use primus_mysql::flavor::{ChangeSource, ResetReplica};
use primus_mysql::{AnyGtidSet, ProbeError, Prober};
use primus_store::StateHandle;
use primus_types::state::ClusterRecord;
use primus_types::{
    ClusterName, Command, FailoverKind, FailoverOutcome, FailoverRecord, InstanceAddr, NodeId, Origin, Raft, Rejection,
    Request,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("this node is not the leader (or lost its quorum): {0}")]
    NotLeader(String),
    #[error("cluster {0} is not registered")]
    UnknownCluster(ClusterName),
    #[error("refused: {0}")]
    Refused(String),
    #[error("not committed: {0}")]
    Commit(String),
    /// The failover's start is committed but this node stopped leading before it
    /// finished: the new leader resumes it. Not "not the leader": the request took
    /// effect, and asking again would start another failover.
    #[error(
        "failover {id} started, but this coordinator stopped leading before it finished ({reason}); \
         the new leader resumes it: see `primusctl history`"
    )]
    Interrupted { id: String, reason: String },
}

/// What an operator (or the engine itself) asks of a failover.
#[derive(Debug, Clone)]
pub struct FailoverAsk {
    pub kind: FailoverKind,
    /// The replica to promote (`None`: the engine chooses).
    pub to: Option<InstanceAddr>,
    pub actor: String,
    /// No-loss mode: promote even if a semi-sync replica may have acknowledged
    /// transactions the candidate lacks (`primusctl failover --accept-loss`).
    pub accept_loss: bool,
}

impl FailoverAsk {
    pub fn automatic() -> FailoverAsk {
        FailoverAsk { kind: FailoverKind::Automatic, to: None, actor: "primusd".into(), accept_loss: false }
    }
}

/// Why a read-only primary was not made writable.
#[derive(Debug)]
enum Unfence {
    /// A precondition does not hold (yet): nothing was attempted on the server.
    NotNow(String),
    /// The server refused, or did not answer in time.
    Failed(String),
}

/// What `rejoin` did.
#[derive(Debug)]
pub struct Rejoined {
    pub log_index: u64,
    pub message: String,
    /// With `discard_divergent`: the divergent transactions left behind.
    pub discarded: Option<primus_mysql::Divergence>,
}

pub struct Engine {
    me: NodeId,
    raft: Raft,
    state: StateHandle,
    monitor: Arc<Monitor>,
    cfg: FailoverSection,
    mysql: MysqlSection,
    /// Clusters with a decision or execution task running on this node.
    running: Mutex<HashSet<ClusterName>>,
    /// Latest analysis per cluster (for `primusctl analysis`).
    last: RwLock<HashMap<ClusterName, (u64, Analysis)>>,
    /// Last time a "no candidate" refusal was logged, per cluster (to keep logs quiet).
    quiet: Mutex<HashMap<ClusterName, u64>>,
    /// After a refused automatic attempt, no new one before this time (unix ms).
    backoff: Mutex<HashMap<ClusterName, u64>>,
    hooks: crate::hooks::Hooks,
    /// Last time semi-sync settings were applied, per instance (unix ms).
    semi_sync_fixed: Mutex<HashMap<InstanceAddr, u64>>,
    /// Agents' leases, as this node (when leader) granted them.
    leases: Arc<crate::lease::LeaseTable>,
    fencing: crate::config::FencingSection,
    /// Divergent transaction count last logged per demoted former primary.
    divergent_seen: Mutex<HashMap<(ClusterName, InstanceAddr), u64>>,
    /// Last split-fence attempt per instance (unix ms): at most one every 5 s.
    split_fenced: Mutex<HashMap<InstanceAddr, u64>>,
    /// Last attempt to make a read-only primary writable, per cluster (unix ms).
    unfenced: Mutex<HashMap<ClusterName, u64>>,
    /// Failed attempts in a row to make the primary of (cluster, epoch) writable, and the
    /// last error; from `UNFENCE_ATTEMPTS` on the analysis calls for a failover.
    unfence_failures: Mutex<HashMap<ClusterName, (u64, u32, String)>>,
    /// No-loss mode: why the last attempt to fail over the primary of (cluster, epoch)
    /// was refused (shown in the analysis until an attempt passes the check).
    no_loss_refused: Mutex<HashMap<ClusterName, (u64, String)>>,
}

/// Failed attempts to make a read-only primary writable before failing it over.
const UNFENCE_ATTEMPTS: u32 = 3;

/// Bound on the statement that makes a read-only primary writable (shorter than any
/// lease, so that it cannot land after a lease the leader counted on has run out).
const UNFENCE_TIMEOUT: Duration = Duration::from_millis(1000);

fn thresholds(cfg: &FailoverSection) -> Thresholds {
    Thresholds {
        view_max_age_ms: cfg.view_max_age_ms,
        replica_progress_stale_ms: cfg.replica_progress_stale_ms,
        max_lag_for_candidate_s: cfg.max_lag_for_candidate_s,
        prefer_same_datacenter: cfg.prefer_same_datacenter,
    }
}

impl Engine {
    // Called once, from node::run, with everything an engine shares with the node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        raft: Raft,
        state: StateHandle,
        monitor: Arc<Monitor>,
        cfg: FailoverSection,
        mysql: MysqlSection,
        hooks: crate::hooks::Hooks,
        leases: Arc<crate::lease::LeaseTable>,
        fencing: crate::config::FencingSection,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            me,
            raft,
            state,
            monitor,
            cfg,
            mysql,
            running: Mutex::new(HashSet::new()),
            last: RwLock::new(HashMap::new()),
            quiet: Mutex::new(HashMap::new()),
            backoff: Mutex::new(HashMap::new()),
            hooks,
            semi_sync_fixed: Mutex::new(HashMap::new()),
            leases,
            fencing,
            divergent_seen: Mutex::new(HashMap::new()),
            split_fenced: Mutex::new(HashMap::new()),
            unfenced: Mutex::new(HashMap::new()),
            unfence_failures: Mutex::new(HashMap::new()),
            no_loss_refused: Mutex::new(HashMap::new()),
        })
    }

    pub fn start(self: &Arc<Self>) {
        let e = self.clone();
        tokio::spawn(async move { e.run().await });
    }

    /// The analysis this node computed last for `cluster` (the leader's is authoritative).
    pub fn last_analysis(&self, cluster: &ClusterName) -> Option<(u64, Analysis)> {
        self.last.read().unwrap_or_else(|p| p.into_inner()).get(cluster).cloned()
    }

    /// Build the decision input from every coordinator's latest views.
    pub fn input(&self, c: &ClusterRecord) -> ClusterInput {
        let now = now_ms();
        let voters = {
            let m = self.raft.metrics().borrow().clone();
            m.membership_config.membership().voter_ids().collect()
        };
        let instances = c
            .topology
            .instances
            .values()
            .map(|i| {
                let views = self
                    .monitor
                    .views_of(&i.addr)
                    .into_iter()
                    .map(|(node, rec)| (node, CoordinatorView { at_ms: rec.at_ms, result: rec.result }))
                    .collect();
                let rule = c.promotion_rules.get(&i.addr).copied().unwrap_or_default();
                (
                    i.addr.clone(),
                    InstanceInput {
                        addr: i.addr.clone(),
                        role: i.role,
                        source: i.source.clone(),
                        datacenter: c.datacenters.get(&i.addr).cloned(),
                        views,
                        io_progress_at_ms: self.monitor.progress_at(&i.addr),
                        maintenance: c.in_maintenance(&i.addr, now),
                        promotion_rule: rule.to_string().parse().unwrap_or_default(),
                    },
                )
            })
            .collect();
        ClusterInput {
            cluster: c.name.to_string(),
            epoch: c.epoch,
            now_ms: now,
            primary: c.topology.primary.clone(),
            voters,
            instances,
            primary_lease_expired: self.lease_expired(c),
            primary_agent_holds_lease: c.topology.primary.as_ref().filter(|p| c.agents.contains_key(*p)).map(|p| {
                // Leases live in the leader's memory: elsewhere nobody knows.
                self.leads() && self.leases.holds(&c.name, p)
            }),
            primary_unwritable: self.unwritable(c),
            no_loss_refusal: self
                .no_loss_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&c.name)
                .filter(|(epoch, _)| *epoch == c.epoch)
                .map(|(_, why)| why.clone()),
        }
    }

    /// The evidence line once the leader failed to make the primary of this epoch writable
    /// `UNFENCE_ATTEMPTS` times in a row.
    fn unwritable(&self, c: &ClusterRecord) -> Option<String> {
        let f = self.unfence_failures.lock().unwrap_or_else(|p| p.into_inner());
        match f.get(&c.name) {
            Some((epoch, n, last)) if *epoch == c.epoch && *n >= UNFENCE_ATTEMPTS => {
                Some(format!("{n} attempts to make it writable failed, the last with: {last}"))
            }
            _ => None,
        }
    }

    /// On the leader: the evidence line when the primary's agent lease has run out.
    fn lease_expired(&self, c: &ClusterRecord) -> Option<String> {
        let p = c.topology.primary.as_ref()?;
        let agent = c.agents.get(p)?;
        if !self.leads() {
            return None;
        }
        let fenced = self.monitor.own_observation(p).is_some_and(|o| o.read_only);
        let ago = self.leases.expired_for(&c.name, p, Some(agent), fenced)?;
        Some(match self.leases.granted(&c.name, p) {
            Some(_) => format!(
                "agent {} of primary {p} has not renewed its lease: it ran out {} ms ago, so the agent has fenced its server",
                agent.agent_id,
                ago.as_millis()
            ),
            None => format!(
                "agent {} of primary {p} has not renewed its lease since this node became leader, and the server is \
                 read-only: whatever lease it held ran out {} ms ago and its agent (or sentinel) fenced it",
                agent.agent_id,
                ago.as_millis()
            ),
        })
    }

    fn leads(&self) -> bool {
        self.monitor.leads_with_quorum()
    }

    async fn run(self: Arc<Self>) {
        let mut changes = self.monitor.changes.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = changes.changed() => { if r.is_err() { return; } }
            }
            let clusters: Vec<Arc<ClusterRecord>> =
                self.state.read(|s| s.registry.clusters.values().cloned().collect());
            let leads = self.leads();
            for c in clusters {
                let input = self.input(&c);
                let analysis = analyze(&input, &thresholds(&self.cfg));
                self.last
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c.name.clone(), (now_ms(), analysis.clone()));
                if !analysis.code.is_dead_primary() {
                    self.no_loss_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.name);
                }
                if !leads {
                    continue;
                }
                if c.in_flight().is_some() {
                    self.spawn_for(&c.name, |e, name| async move { e.resume(&name).await });
                    continue;
                }
                self.keep_demoted_fenced(&c);
                if analysis.code == AnalysisCode::PrimarySplit && analysis.actionable {
                    self.fence_split(&c);
                }
                if analysis.code == AnalysisCode::ReadOnlyPrimary && analysis.actionable {
                    self.unfence(&c);
                }
                self.keep_semi_sync(&c);
                let dead = analysis.code.calls_for_failover();
                let dead_intermediate = analysis.code == AnalysisCode::DeadIntermediatePrimary;
                if dead_intermediate && analysis.actionable && self.repair_allowed(&c) {
                    self.spawn_for(&c.name, |e, name| async move {
                        if let Err(err) = e.repair_intermediate(&name).await {
                            tracing::warn!(cluster = %name, error = %err, "intermediate primary not repaired");
                            let until = now_ms() + 2000;
                            e.backoff.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), until);
                        }
                    });
                    continue;
                }
                if dead && analysis.actionable && self.automatic_allowed(&c) {
                    self.spawn_for(&c.name, |e, name| async move {
                        if let Err(err) = e.decide_and_run(&name, FailoverAsk::automatic()).await {
                            tracing::warn!(cluster = %name, error = %err, "automatic failover not started");
                            // Don't re-probe every instance on every tick while nothing changes.
                            let until = now_ms() + 2000;
                            e.backoff.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), until);
                        }
                    });
                }
            }
        }
    }

    /// A demoted former primary must never take writes again on its own: when one
    /// shows up writable (restarted with its config's read_only=OFF), fence it again.
    fn keep_demoted_fenced(self: &Arc<Self>, c: &ClusterRecord) {
        for addr in &c.demoted {
            let own = self.monitor.own_observation(addr);
            if let Some(o) = &own {
                self.note_divergence(c, addr, o);
            }
            let writable = own.is_some_and(|o| !o.read_only);
            if !writable {
                continue;
            }
            let e = self.clone();
            let a = addr.clone();
            let cluster = c.name.clone();
            tokio::spawn(async move {
                let p = e.prober(&a);
                let r = set_read_only_over(&p, true, e.step_timeout()).await;
                p.disconnect().await;
                match r {
                    Ok(()) => {
                        tracing::warn!(%cluster, instance = %a, "demoted former primary was writable: read_only set again")
                    }
                    Err(err) => {
                        tracing::warn!(%cluster, instance = %a, error = %err, "cannot fence demoted former primary")
                    }
                }
                e.monitor.probe_now(&a);
            });
        }
    }

    /// Split brain: an instance other than the recorded primary is writable (made so
    /// by hand, or a replica configured without read_only). Raft's record decides who
    /// the primary is, so every other writable instance is fenced — except demoted
    /// ones (kept read-only by `keep_demoted_fenced`) and instances in maintenance
    /// (an operator's business: alert only). At most one attempt per instance every 5 s.
    fn fence_split(self: &Arc<Self>, c: &ClusterRecord) {
        if !self.cfg.fence_split {
            return;
        }
        let Some(primary) = c.topology.primary.clone() else { return };
        let now = now_ms();
        let mut targets = Vec::new();
        for addr in c.topology.instances.keys() {
            if *addr == primary || c.demoted.contains(addr) || c.in_maintenance(addr, now) {
                continue;
            }
            if self.monitor.own_observation(addr).is_none_or(|o| o.read_only) {
                continue;
            }
            let mut q = self.split_fenced.lock().unwrap_or_else(|p| p.into_inner());
            if q.get(addr).is_some_and(|t| now.saturating_sub(*t) < 5000) {
                continue;
            }
            q.insert(addr.clone(), now);
            targets.push(addr.clone());
        }
        if targets.is_empty() {
            return;
        }
        // In the cluster's one operation slot: never concurrent with a failover being
        // decided or run (which could be about to make one of them the primary).
        let epoch = c.epoch;
        self.spawn_for(&c.name, move |e, cluster| async move {
            for a in targets {
                match e.fence_split_instance(&cluster, &primary, &a, epoch).await {
                    Ok(Some(outcome)) => {
                        tracing::warn!(%cluster, instance = %a, epoch, %outcome, "split brain: fenced a writable non-primary")
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(%cluster, instance = %a, epoch, error = %err, "split brain: could not fence")
                    }
                }
                e.monitor.probe_now(&a);
            }
        });
    }

    /// Fence one writable non-primary, write-ahead: re-probe it, commit `FenceSplit`,
    /// set read_only (and kill client connections when it replicates from nobody, i.e.
    /// acts as a primary), commit the outcome. `Ok(None)`: nothing to do after all.
    async fn fence_split_instance(
        &self,
        cluster: &ClusterName,
        primary: &InstanceAddr,
        addr: &InstanceAddr,
        epoch: u64,
    ) -> Result<Option<String>, String> {
        let fresh = self.monitor.probe_fresh(std::slice::from_ref(addr)).await;
        let Some(o) = fresh.first().and_then(|r| r.result.as_ref().ok()) else {
            return Ok(None);
        };
        if o.read_only {
            return Ok(None);
        }
        let acting_primary = !o.is_replica();
        let mut evidence = vec![format!(
            "{addr} is writable ({}) while {primary} is the primary of epoch {epoch}",
            if acting_primary { "replicating from nobody" } else { "a replica" }
        )];
        if acting_primary {
            evidence.push("its client connections are killed so that clients reconnect to the primary".into());
        }
        let id = format!("{cluster}-e{epoch}-split-{}", now_ms());
        let start =
            Command::FenceSplit { name: cluster.clone(), id: id.clone(), instance: addr.clone(), epoch, evidence };
        self.commit(start, "primusd").await.map_err(|e| format!("not recorded, not fenced: {e}"))?;
        let t = self.step_timeout();
        let p = self.prober(addr);
        let result = async {
            // As before every failover step: still the leader (with a quorum), and the
            // cluster still at this epoch with no failover started since.
            self.confirm_leader().await.map_err(|e| format!("skipped: {e}"))?;
            let (now_epoch, in_flight) = self
                .state
                .read(|s| s.registry.clusters.get(cluster).map(|c| (c.epoch, c.in_flight().is_some())))
                .unwrap_or((0, false));
            if now_epoch != epoch || in_flight {
                return Err(format!(
                    "skipped: the cluster moved on (epoch {now_epoch}, failover running: {in_flight})"
                ));
            }
            set_read_only_over(&p, true, t).await.map_err(|e| e.to_string())?;
            let killed = if acting_primary { self.kill_clients(&p, t).await } else { 0 };
            Ok::<_, String>(format!("read_only set, {killed} client connections killed"))
        }
        .await;
        p.disconnect().await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(e) => format!("failed: {e}"),
        };
        let finish = Command::FinishSplitFence { name: cluster.clone(), id, outcome: outcome.clone() };
        if let Err(e) = self.commit(finish, "primusd").await {
            tracing::warn!(%cluster, instance = %addr, error = %e, "split fence outcome not recorded");
        }
        result.map(Some)
    }

    /// The recorded primary is read-only (its agent fenced it while the coordinators
    /// stalled, a failover was aborted after fencing it, it restarted with
    /// `read_only=ON`...) and nothing else is wrong: make it writable again, in the
    /// cluster's operation slot, at most once a second.
    fn unfence(self: &Arc<Self>, c: &ClusterRecord) {
        let Some(primary) = c.topology.primary.clone() else { return };
        let now = now_ms();
        {
            let mut q = self.unfenced.lock().unwrap_or_else(|p| p.into_inner());
            if q.get(&c.name).is_some_and(|t| now.saturating_sub(*t) < 1000) {
                return;
            }
            q.insert(c.name.clone(), now);
        }
        let epoch = c.epoch;
        self.spawn_for(&c.name, move |e, cluster| async move {
            match e.unfence_primary(&cluster, &primary, epoch).await {
                Ok(Some(outcome)) => {
                    e.unfence_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&cluster);
                    tracing::warn!(%cluster, instance = %primary, epoch, %outcome, "read-only primary made writable again")
                }
                Ok(None) => {}
                Err(Unfence::NotNow(why)) => {
                    tracing::info!(%cluster, instance = %primary, epoch, reason = %why, "read-only primary left read-only for now")
                }
                Err(Unfence::Failed(err)) => {
                    let mut f = e.unfence_failures.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = f.entry(cluster.clone()).or_insert((epoch, 0, String::new()));
                    if entry.0 != epoch {
                        *entry = (epoch, 0, String::new());
                    }
                    entry.1 += 1;
                    entry.2 = err.clone();
                    tracing::warn!(%cluster, instance = %primary, epoch, error = %err, attempts = entry.1,
                        "could not make the read-only primary writable");
                }
            }
            e.monitor.probe_now(&primary);
        });
    }

    /// Make the read-only primary of `epoch` writable, write-ahead: re-probe every
    /// instance (the primary must be read-only, reachable and replicate from nobody; no
    /// other instance may be writable), commit `UnfencePrimary`, confirm leadership and
    /// re-read the epoch, check the agent's lease once more, set `read_only = OFF`,
    /// commit the outcome. `Ok(None)`: nothing to do after all.
    async fn unfence_primary(
        &self,
        cluster: &ClusterName,
        primary: &InstanceAddr,
        epoch: u64,
    ) -> Result<Option<String>, Unfence> {
        let c = self.cluster(cluster).map_err(|e| Unfence::NotNow(e.to_string()))?;
        if c.epoch != epoch || c.in_flight().is_some() || c.topology.primary.as_ref() != Some(primary) {
            return Ok(None);
        }
        if let Some(f) = c.history.last().filter(|f| matches!(f.outcome, Some(FailoverOutcome::Failed(_)))) {
            if f.acked_by.is_none() {
                return Err(Unfence::NotNow(format!(
                    "failover {} failed and is not acknowledged: an operator decides (primusctl ack)",
                    f.id
                )));
            }
        }
        let addrs: Vec<InstanceAddr> = c.topology.instances.keys().cloned().collect();
        let fresh = self.monitor.probe_fresh(&addrs).await;
        let Some(o) = fresh.iter().find(|r| &r.addr == primary).and_then(|r| r.result.as_ref().ok()) else {
            return Ok(None);
        };
        if !o.read_only {
            return Ok(None);
        }
        if o.is_replica() {
            let from = o.replication.first().map(|r| format!("{}:{}", r.source_host, r.source_port));
            return Err(Unfence::NotNow(format!(
                "it replicates from {}: not made writable (an operator may have moved it; see primusctl topology)",
                from.unwrap_or_default()
            )));
        }
        let writable: Vec<String> = fresh
            .iter()
            .filter(|r| &r.addr != primary && r.result.as_ref().is_ok_and(|o| !o.read_only))
            .map(|r| r.addr.to_string())
            .collect();
        if !writable.is_empty() {
            return Err(Unfence::NotNow(format!(
                "{} writable as well (split brain is fenced first)",
                writable.join(", ")
            )));
        }
        let agent = c.agents.get(primary).map(|a| a.agent_id.clone());
        if agent.is_some() && !self.leases.holds(cluster, primary) {
            return Ok(None);
        }
        let mut evidence =
            vec![format!("primary {primary} of epoch {epoch} is read-only: no server of the cluster takes writes")];
        evidence.push(match &agent {
            Some(a) => format!("its agent {a} holds a lease granted by this leader"),
            None => "it has no fencing agent".into(),
        });
        evidence.push(format!("no other instance of {cluster} is writable (fresh probes of {})", addrs.len()));
        let id = format!("{cluster}-e{epoch}-unfence-{}", now_ms());
        let start = Command::UnfencePrimary {
            name: cluster.clone(),
            id: id.clone(),
            instance: primary.clone(),
            epoch,
            evidence,
        };
        self.commit(start, "primusd").await.map_err(|e| Unfence::NotNow(format!("not recorded, not touched: {e}")))?;
        let p = self.prober(primary);
        let result = async {
            // As before every failover step: still the leader (with a quorum), the cluster
            // still at this epoch with no failover started since, the lease still held.
            self.confirm_leader().await.map_err(|e| Unfence::NotNow(format!("skipped: {e}")))?;
            let (now_epoch, in_flight) = self
                .state
                .read(|s| s.registry.clusters.get(cluster).map(|c| (c.epoch, c.in_flight().is_some())))
                .unwrap_or((0, false));
            if now_epoch != epoch || in_flight {
                return Err(Unfence::NotNow(format!(
                    "skipped: the cluster moved on (epoch {now_epoch}, failover running: {in_flight})"
                )));
            }
            if agent.is_some() && !self.leases.holds(cluster, primary) {
                return Err(Unfence::NotNow("skipped: the agent's lease ran out meanwhile".into()));
            }
            set_read_only_over(&p, false, UNFENCE_TIMEOUT).await.map_err(|e| Unfence::Failed(e.to_string()))?;
            Ok(format!("read_only set OFF (epoch {epoch})"))
        }
        .await;
        p.disconnect().await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(Unfence::NotNow(e)) => e.clone(),
            Err(Unfence::Failed(e)) => format!("failed: {e}"),
        };
        let finish = Command::FinishUnfence { name: cluster.clone(), id, outcome };
        if let Err(e) = self.commit(finish, "primusd").await {
            tracing::warn!(%cluster, instance = %primary, error = %e, "unfence outcome not recorded");
        }
        result.map(Some)
    }

    /// Semi-sync no-loss mode: every instance must have lossless semi-sync on (or off,
    /// when the mode is `off`) as this node's latest probe sees it, and every
    /// replica must actually acknowledge. Fixes what it finds, at most every 5 s per
    /// instance. A failover in progress is left alone (its steps own the instances).
    fn keep_semi_sync(self: &Arc<Self>, c: &ClusterRecord) {
        let Some(want) = c.settings.semi_sync else { return };
        if c.in_flight().is_some() {
            return;
        }
        for (addr, inst) in &c.topology.instances {
            let Some(o) = self.monitor.own_observation(addr) else {
                continue;
            };
            let ss = &o.semi_sync;
            let is_primary = c.topology.primary.as_ref() == Some(addr);
            let enabled_right = ss.source_enabled == Some(want && is_primary) && ss.replica_enabled == Some(want);
            let replica = inst.source.is_some() && o.is_replica();
            let acks = !want || !replica || ss.replica_active == Some(true);
            if enabled_right && acks {
                continue;
            }
            {
                let mut q = self.semi_sync_fixed.lock().unwrap_or_else(|p| p.into_inner());
                let now = now_ms();
                if q.get(addr).is_some_and(|t| now.saturating_sub(*t) < 5000) {
                    continue;
                }
                q.insert(addr.clone(), now);
            }
            let e = self.clone();
            let a = addr.clone();
            let cluster = c.name.clone();
            let restart_io = want && replica && ss.replica_active != Some(true);
            tokio::spawn(async move {
                let p = e.prober(&a);
                let r = match p.server_info().await {
                    Ok(info) => {
                        let mut sql = info.semi_sync_sql(want, is_primary);
                        if restart_io {
                            sql.extend(info.restart_io_thread_sql());
                        }
                        p.execute(&sql, e.step_timeout()).await
                    }
                    Err(err) => Err(err),
                };
                p.disconnect().await;
                match r {
                    Ok(()) => tracing::info!(%cluster, instance = %a, semi_sync = want, restart_io,
                        "semi-sync no-loss mode applied"),
                    Err(err) => {
                        tracing::warn!(%cluster, instance = %a, error = %err, "cannot apply semi-sync no-loss mode")
                    }
                }
                e.monitor.probe_now(&a);
            });
        }
    }

    /// Log (once per change of its count) that a demoted former primary is divergent.
    fn note_divergence(&self, c: &ClusterRecord, addr: &InstanceAddr, o: &primus_mysql::Observation) {
        let Some(Ok(d)) = crate::divergence::check(c, addr, o) else { return };
        let n = d.divergence.count();
        let key = (c.name.clone(), addr.clone());
        let mut seen = self.divergent_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&key) == Some(&n) {
            return;
        }
        seen.insert(key, n);
        if n > 0 {
            tracing::warn!(cluster = %c.name, instance = %addr, epoch = c.epoch, failover_id = %d.failover.id,
                promotion_point = %d.promotion_gtid, divergent = %d.divergence, count = n,
                "former primary is divergent: it executed transactions after it was replaced; it stays demoted \
                 (see primusctl divergence)");
        }
    }

    /// Run `f` for `name` unless a task for it already runs on this node.
    fn spawn_for<F, Fut>(self: &Arc<Self>, name: &ClusterName, f: F)
    where
        F: FnOnce(Arc<Engine>, ClusterName) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone()) {
            return;
        }
        let fut = f(self.clone(), name.clone());
        let e = self.clone();
        let name = name.clone();
        tokio::spawn(async move {
            fut.await;
            e.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        });
    }

    /// Automatic failover enabled, and not blocked by a recent unacknowledged one.
    fn automatic_allowed(&self, c: &ClusterRecord) -> bool {
        if !c.settings.automatic_failover.unwrap_or(self.cfg.automatic) {
            return false;
        }
        let now = now_ms();
        // A failed failover (stopped after an irreversible step) blocks until an
        // operator acks it, whatever its age: the topology may be half-changed and a
        // second automatic failover could promote next to an already writable server.
        let blocked = c.history.iter().rev().find(|f| f.kind == FailoverKind::Automatic).is_some_and(|f| {
            f.acked_by.is_none()
                && match &f.outcome {
                    Some(FailoverOutcome::Failed(_)) => true,
                    Some(FailoverOutcome::Succeeded) => {
                        f.finished_at_ms.is_some_and(|t| now.saturating_sub(t) < self.cfg.recovery_block_period_ms)
                    }
                    _ => false,
                }
        });
        if self.backoff.lock().unwrap_or_else(|p| p.into_inner()).get(&c.name).is_some_and(|t| now < *t) {
            return false;
        }
        if blocked {
            self.say_once(&c.name, "automatic failover blocked: a recent failover is not acknowledged (primusctl ack)");
        }
        !blocked
    }

    /// Repairing a dead intermediate primary follows the automatic-failover switch but
    /// not the anti-flap block: it changes no primary, and its replicas are stuck until
    /// it is done.
    fn repair_allowed(&self, c: &ClusterRecord) -> bool {
        c.settings.automatic_failover.unwrap_or(self.cfg.automatic)
            && self.backoff.lock().unwrap_or_else(|p| p.into_inner()).get(&c.name).is_none_or(|t| now_ms() >= *t)
    }

    /// Repoint the replicas of a dead intermediate primary to its source, write-ahead
    /// through Raft like a failover (kind `intermediate_repair`, no epoch consumed).
    pub async fn repair_intermediate(self: &Arc<Self>, name: &ClusterName) -> Result<String, FailoverError> {
        let c = self.cluster(name)?;
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Refused(format!("failover {} is already in progress", f.id)));
        }
        self.confirm_leader().await?;
        // Double-check with the replicas' view now (the intermediate is unreachable).
        let addrs: Vec<InstanceAddr> = c.topology.instances.keys().cloned().collect();
        self.monitor.probe_fresh(&addrs).await;
        let c = self.cluster(name)?;
        let input = self.input(&c);
        let analysis = analyze(&input, &thresholds(&self.cfg));
        let intermediate = match (&analysis.code, &analysis.subject) {
            (AnalysisCode::DeadIntermediatePrimary, Some(s)) if analysis.actionable => s.clone(),
            _ => return Err(FailoverError::Refused(format!("double-check: {analysis}"))),
        };
        let to = c
            .topology
            .instances
            .get(&intermediate)
            .and_then(|i| i.source.clone())
            .ok_or_else(|| FailoverError::Refused(format!("intermediate {intermediate} has no known source")))?;
        let steps = primus_failover::plan_intermediate_repair(&input, &intermediate, &to).steps;
        let plan_json: Vec<serde_json::Value> = steps.iter().filter_map(|s| serde_json::to_value(s).ok()).collect();
        let id = format!("{name}-e{}-r{}", c.epoch, c.history.len() + 1);
        tracing::warn!(cluster = %name, failover_id = %id, epoch = c.epoch, analysis = %analysis,
            intermediate = %intermediate, to = %to, "repairing a dead intermediate primary");
        self.commit(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind: FailoverKind::IntermediateRepair,
                analysis_code: analysis.code.to_string(),
                evidence: analysis.evidence.clone(),
                old_primary: intermediate,
                candidate: to,
                epoch: c.epoch,
                plan: plan_json,
            },
            "primusd",
        )
        .await?;
        self.execute(name, &id).await?;
        Ok(id)
    }

    /// Log `msg` unless something was said about `cluster` in the last 30 s; true when logged.
    fn say_once(&self, cluster: &ClusterName, msg: &str) -> bool {
        let mut q = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if q.get(cluster).is_none_or(|t| now.saturating_sub(*t) > 30_000) {
            q.insert(cluster.clone(), now);
            tracing::warn!(cluster = %cluster, "{msg}");
            return true;
        }
        false
    }

    fn cluster(&self, name: &ClusterName) -> Result<Arc<ClusterRecord>, FailoverError> {
        self.state
            .read(|s| s.registry.clusters.get(name).cloned())
            .ok_or_else(|| FailoverError::UnknownCluster(name.clone()))
    }

    async fn commit(&self, cmd: Command, actor: &str) -> Result<u64, FailoverError> {
        let req = Request::new(cmd, Origin { actor: actor.to_string(), via_node: self.me });
        let t = Duration::from_millis(self.cfg.step_timeout_ms);
        match tokio::time::timeout(t, self.raft.client_write(req)).await {
            Err(_) => Err(FailoverError::Commit(format!("not committed within {} ms", t.as_millis()))),
            Ok(Err(e)) => Err(FailoverError::Commit(e.to_string())),
            Ok(Ok(resp)) => match resp.data.into_result() {
                Ok(()) => Ok(resp.log_id.index),
                Err(Rejection::FailoverInProgress(_, id)) => {
                    Err(FailoverError::Refused(format!("failover {id} is already in progress")))
                }
                Err(r) => Err(FailoverError::Refused(r.to_string())),
            },
        }
    }

    /// Confirm with a quorum that we still lead, bounded by the step timeout.
    async fn confirm_leader(&self) -> Result<(), FailoverError> {
        let t = Duration::from_millis(self.cfg.step_timeout_ms);
        match tokio::time::timeout(t, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(FailoverError::NotLeader(e.to_string())),
            Err(_) => Err(FailoverError::NotLeader("no quorum answered".into())),
        }
    }

    /// An operator's failover or switchover: runs in its own task under the
    /// per-cluster guard, so it never races the automatic path and a cancelled
    /// request cannot stop it between two steps.
    pub async fn request(self: &Arc<Self>, name: &ClusterName, ask: FailoverAsk) -> Result<String, FailoverError> {
        if !self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone()) {
            return Err(FailoverError::Refused(format!(
                "another operation on {name} (failover, repair or split fence) is being decided or executed; retry"
            )));
        }
        let e = self.clone();
        let n = name.clone();
        let task = tokio::spawn(async move {
            let r = e.decide_and_run(&n, ask).await;
            e.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
            r
        });
        task.await.map_err(|e| FailoverError::Refused(format!("failover task failed: {e}")))?
    }

    /// Double-check, choose, commit the start, execute. Returns the failover id.
    pub async fn decide_and_run(
        self: &Arc<Self>,
        name: &ClusterName,
        ask: FailoverAsk,
    ) -> Result<String, FailoverError> {
        let FailoverAsk { kind, to, actor, accept_loss } = ask;
        let c = self.cluster(name)?;
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Refused(format!("failover {} is already in progress", f.id)));
        }
        let primary = c
            .topology
            .primary
            .clone()
            .ok_or_else(|| FailoverError::Refused(format!("cluster {name} has no primary to fail over from")))?;
        self.confirm_leader().await?;
        // Double-check with fresh probes of the primary and its replicas (seed 004):
        // the decision must not rest on a view that is a probe interval old.
        // An automatic decision already rests on a majority's fresh views of the
        // primary (view_max_age_ms); re-probing a hung primary would only burn a whole
        // timeout. What the double-check adds is the replicas' view, now.
        let addrs: Vec<InstanceAddr> = c
            .topology
            .instances
            .keys()
            .filter(|a| kind != FailoverKind::Automatic || **a != primary)
            .cloned()
            .collect();
        let fresh: BTreeMap<InstanceAddr, Result<primus_mysql::Observation, String>> = self
            .monitor
            .probe_fresh(&addrs)
            .await
            .into_iter()
            .map(|r| (r.addr, r.result.map_err(|e| e.to_string())))
            .collect();
        let c = self.cluster(name)?;
        let input = self.input(&c);
        let th = thresholds(&self.cfg);
        let analysis = analyze(&input, &th);
        if kind == FailoverKind::Automatic {
            let dead = analysis.code.calls_for_failover();
            if !(dead && analysis.actionable) {
                tracing::info!(cluster = %name, analysis = %analysis, "double-check cleared the primary: no failover");
                return Err(FailoverError::Refused(format!("double-check: {analysis}")));
            }
        }
        let candidate = match &to {
            Some(t) if kind == FailoverKind::Switchover => {
                primus_failover::choose_candidate_for_switchover(&input, &primary, t, &th)
            }
            Some(t) => choose_candidate_explicit(&input, &primary, t, &th),
            None => choose_candidate(&input, &primary, &th),
        }
        .map_err(|e| FailoverError::Refused(format!("no safe candidate: {e}")));
        let candidate = match candidate {
            Ok(c) => c,
            Err(err) => {
                // Record why a dead primary is left alone, at most every 30 s per cluster.
                if self.say_once(name, &err.to_string()) {
                    let cmd = Command::RecordRefusal {
                        name: name.clone(),
                        analysis_code: analysis.code.to_string(),
                        evidence: analysis.evidence.clone(),
                        reason: err.to_string(),
                    };
                    if let Err(e) = self.commit(cmd, &actor).await {
                        tracing::warn!(cluster = %name, error = %e, "could not record the refusal");
                    }
                }
                return Err(err);
            }
        };
        // No-loss mode: nothing a semi-sync replica may have acknowledged may be lost,
        // judged from this decision's own probes. A switchover loses nothing (the
        // candidate catches up with the fenced old primary).
        let mut evidence = analysis.evidence.clone();
        if c.settings.semi_sync == Some(true) && kind != FailoverKind::Switchover {
            let gaps = primus_failover::no_loss_gaps(&input, &primary, &candidate.addr, &fresh);
            if gaps.is_empty() {
                self.no_loss_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                evidence.push(format!(
                    "no-loss mode: {} holds everything every semi-sync replica received (fresh probes)",
                    candidate.addr
                ));
            } else if accept_loss {
                evidence
                    .extend(gaps.iter().map(|g| format!("no-loss check overridden by {actor} (--accept-loss): {g}")));
            } else {
                let why = format!(
                    "promoting {} could lose acknowledged transactions: {}; to promote anyway: primusctl failover {name} \
                     --accept-loss",
                    candidate.addr,
                    gaps.join("; ")
                );
                self.no_loss_refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), (c.epoch, why.clone()));
                tracing::warn!(cluster = %name, epoch = c.epoch, candidate = %candidate.addr, reason = %why,
                    "no-loss mode: failover refused");
                let err = FailoverError::Refused(format!("no-loss mode: {why}"));
                if self.say_once(name, &err.to_string()) || kind != FailoverKind::Automatic {
                    let mut ev = vec![format!("no-loss mode: {why}")];
                    ev.extend(analysis.evidence.iter().cloned());
                    let cmd = Command::RecordRefusal {
                        name: name.clone(),
                        analysis_code: AnalysisCode::DeadPrimaryWouldLoseData.to_string(),
                        evidence: ev,
                        reason: err.to_string(),
                    };
                    if let Err(e) = self.commit(cmd, &actor).await {
                        tracing::warn!(cluster = %name, error = %e, "could not record the refusal");
                    }
                }
                return Err(err);
            }
        }
        let steps = plan(&input, &analysis, &candidate, kind).steps;
        let plan_json: Vec<serde_json::Value> = steps.iter().filter_map(|s| serde_json::to_value(s).ok()).collect();
        let epoch = c.epoch + 1;
        let id = format!("{name}-e{epoch}");
        evidence.extend(candidate.reasons.iter().map(|r| format!("candidate: {r}")));
        // pre_failover hooks may veto: they run before anything is committed or touched.
        if self.hooks.has(crate::hooks::HookKind::PreFailover) {
            let ctx = crate::hooks::HookContext {
                failure_type: analysis.code.to_string(),
                failure_description: analysis.evidence.join("; "),
                failure_cluster: name.to_string(),
                failed_host: primary.host().to_string(),
                failed_port: primary.port(),
                successor_host: Some(candidate.addr.host().to_string()),
                successor_port: Some(candidate.addr.port()),
                epoch,
                failover_id: id.clone(),
                kind,
                coordinator: self.me,
                ..Default::default()
            };
            if let Err(e) = self.hooks.run(crate::hooks::HookKind::PreFailover, &ctx).await {
                tracing::warn!(cluster = %name, failover_id = %id, epoch, error = %e, "pre_failover hook vetoed the failover");
                return Err(FailoverError::Refused(format!("vetoed by pre_failover hook: {e}")));
            }
        }
        tracing::warn!(cluster = %name, failover_id = %id, epoch, kind = %kind, analysis = %analysis,
            old_primary = %primary, candidate = %candidate.addr, "starting failover");
        self.commit(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind,
                analysis_code: analysis.code.to_string(),
                evidence,
                old_primary: primary,
                candidate: candidate.addr.clone(),
                epoch,
                plan: plan_json,
            },
            &actor,
        )
        .await?;
        failpoint("failover.after_start", None);
        self.execute(name, &id).await.map_err(|e| match e {
            FailoverError::NotLeader(reason) => FailoverError::Interrupted { id: id.clone(), reason },
            e => e,
        })?;
        Ok(id)
    }

    /// A new leader picks up an unfinished failover.
    async fn resume(self: &Arc<Self>, name: &ClusterName) {
        let Ok(c) = self.cluster(name) else { return };
        let Some(f) = c.in_flight().cloned() else { return };
        tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch, next_step = f.next_step(),
            "resuming a failover started by a previous leader");
        let steps = decode_plan(&f);
        // The previous leader may have performed the next step and died before
        // recording it: count it as possibly done.
        let irreversible_done = steps.iter().take(f.next_step() + 1).any(Step::is_irreversible);
        if !irreversible_done && f.kind == FailoverKind::Automatic {
            // Nothing irreversible happened: if the old primary is back, stand down.
            let rec = self.monitor.probe_fresh(std::slice::from_ref(&f.old_primary)).await;
            if rec.first().is_some_and(|r| r.result.as_ref().is_ok_and(|o| !o.read_only)) {
                let why = "the old primary is reachable and writable again before any irreversible step";
                tracing::warn!(cluster = %name, failover_id = %f.id, "aborting: {why}");
                if let Err(e) = self.abort(name, &f, &steps, why.to_string()).await {
                    tracing::warn!(cluster = %name, failover_id = %f.id, error = %e, "abort not recorded");
                }
                return;
            }
        }
        if let Err(e) = self.execute(name, &f.id).await {
            tracing::warn!(cluster = %name, failover_id = %f.id, error = %e, "resumed failover stopped");
        }
    }

    /// Abort a failover before anything irreversible, write-ahead: as a leader confirmed
    /// by a quorum, with the candidate confirmed read-only (set read-only if need be) when
    /// its promotion may have been sent. The abort is committed before anybody makes the
    /// old primary writable again: that is the ordinary upkeep of a read-only primary
    /// (`unfence`), which waits for its agent's lease and checks every instance first.
    /// When the candidate cannot be confirmed read-only the failover is recorded as
    /// failed instead: an operator must look.
    async fn abort(
        &self,
        name: &ClusterName,
        f: &FailoverRecord,
        steps: &[Step],
        why: String,
    ) -> Result<FailoverOutcome, FailoverError> {
        self.confirm_leader().await?;
        let promote_at = steps.iter().position(|s| matches!(s, Step::PromoteCandidate { .. }));
        // A leader runs the steps in order, each recorded before the next: the promotion
        // can have been sent only once every step before it is recorded.
        let promote_maybe_sent = promote_at.is_some_and(|p| f.next_step() >= p);
        let outcome = if !promote_maybe_sent {
            FailoverOutcome::Aborted(why)
        } else {
            let cand = &f.candidate;
            let r = self.monitor.probe_fresh(std::slice::from_ref(cand)).await;
            match r.first().map(|r| &r.result) {
                Some(Ok(o)) if o.read_only => FailoverOutcome::Aborted(format!("{why}; {cand} confirmed read-only")),
                Some(Ok(_)) => {
                    let p = self.prober(cand);
                    let fenced = set_read_only_over(&p, true, self.step_timeout()).await;
                    p.disconnect().await;
                    match fenced {
                        Ok(()) => FailoverOutcome::Aborted(format!("{why}; {cand} was writable and was set read-only")),
                        Err(e) => FailoverOutcome::Failed(format!(
                            "{why}; {cand} is writable and could not be set read-only ({e}): not aborted"
                        )),
                    }
                }
                Some(Err(e)) => FailoverOutcome::Failed(format!(
                    "{why}; cannot confirm that {cand} is read-only ({e}): not aborted, an operator must check it"
                )),
                None => FailoverOutcome::Failed(format!("{why}; {cand} was not probed: not aborted")),
            }
        };
        tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch, outcome = ?outcome, "failover stopped");
        self.commit(
            Command::FinishFailover {
                name: name.clone(),
                id: f.id.clone(),
                outcome: outcome.clone(),
                promotion_gtid: None,
            },
            "primusd",
        )
        .await?;
        Ok(outcome)
    }

    /// After a promote step that failed: whether the candidate is writable and replicates
    /// from nobody anyway (the statement ran, its answer was lost).
    async fn promoted_anyway(&self, candidate: &InstanceAddr) -> bool {
        let r = self.monitor.probe_fresh(std::slice::from_ref(candidate)).await;
        r.first().is_some_and(|r| r.result.as_ref().is_ok_and(|o| !o.read_only && !o.is_replica()))
    }

    /// Run the recorded plan from the first step not yet recorded.
    async fn execute(self: &Arc<Self>, name: &ClusterName, id: &str) -> Result<(), FailoverError> {
        let mut attempts = 0u32;
        loop {
            let c = self.cluster(name)?;
            let Some(f) = c.in_flight().filter(|f| f.id == id).cloned() else { return Ok(()) };
            let steps = decode_plan(&f);
            let i = f.next_step();
            // Before every step: still the leader, confirmed by a quorum.
            self.confirm_leader().await?;
            // `complete` is recorded by the finish itself (one entry). A plan whose every
            // step is recorded (`complete` too, by an older primusd that died before
            // finishing) is finished as well.
            let step = match steps.get(i) {
                Some(Step::Complete) | None => {
                    self.finish(name, &f, i).await?;
                    return Ok(());
                }
                Some(step) => step.clone(),
            };
            let result = match &step {
                Step::PromoteCandidate { candidate } => {
                    match self.promote(candidate, f.epoch, c.settings.semi_sync == Some(true)).await {
                        Ok((outcome, point)) => {
                            // The new primary's agent holds a lease from now on (it was
                            // answered "being promoted", which it counts as one): the leader
                            // counts it too, so that it never judges a lease it granted
                            // "never renewed" before the agent's next renewal.
                            if let Some(agent) = c.agents.get(candidate) {
                                let ttl = self.leases.ttl_of(Some(agent));
                                self.leases.grant(name, candidate, ttl, tokio::time::Instant::now());
                            }
                            // Committed before the step: a leader that resumes after the step
                            // finds the point already in the record.
                            self.commit(
                                Command::RecordPromotionPoint {
                                    name: name.clone(),
                                    id: id.to_string(),
                                    gtid: point.gtid,
                                    binlog_state: point.binlog_state,
                                },
                                "primusd",
                            )
                            .await?;
                            Ok(outcome)
                        }
                        // The statements may have run although their answer was lost: the
                        // server says whether it is the primary now.
                        Err(e) if self.promoted_anyway(candidate).await => Ok(format!(
                            "writable and replicating from nobody (epoch {}), although the promote reported: {e}",
                            f.epoch
                        )),
                        Err(e) => Err(e),
                    }
                }
                _ => self.run_step(&c, &f, &step).await,
            };
            match result {
                Ok(outcome) => {
                    tracing::info!(cluster = %name, failover_id = %id, epoch = f.epoch, step = %step, %outcome, "step done");
                    self.commit(
                        Command::FailoverStep {
                            name: name.clone(),
                            id: id.to_string(),
                            index: i as u32,
                            description: step.to_string(),
                            outcome,
                        },
                        "primusd",
                    )
                    .await?;
                    failpoint("failover.after_step", Some(i));
                    attempts = 0;
                }
                Err(e) => {
                    attempts += 1;
                    tracing::warn!(cluster = %name, failover_id = %id, epoch = f.epoch, step = %step, error = %e,
                        attempts, "step failed");
                    if attempts < 3 {
                        tokio::time::sleep(Duration::from_millis(200 * attempts as u64)).await;
                        continue;
                    }
                    // From the promotion on, only forward: a failed promote counts as sent
                    // (its candidate is then confirmed read-only before any abort).
                    let irreversible_done = steps.iter().take(i).any(Step::is_irreversible);
                    let why = format!("{step}: {e}");
                    if irreversible_done {
                        self.commit(
                            Command::FinishFailover {
                                name: name.clone(),
                                id: id.to_string(),
                                outcome: FailoverOutcome::Failed(why.clone()),
                                promotion_gtid: None,
                            },
                            "primusd",
                        )
                        .await?;
                    } else {
                        self.abort(name, &f, &steps, why.clone()).await?;
                    }
                    self.post_hooks(name, id);
                    return Err(FailoverError::Refused(why));
                }
            }
        }
    }

    /// Record the success of a failover whose steps are done: one entry that records its
    /// `complete` step, moves the primary and closes it.
    async fn finish(&self, name: &ClusterName, f: &FailoverRecord, i: usize) -> Result<(), FailoverError> {
        // Recorded at the promote step; only a failover promoted by an older version (or
        // whose promote answer was lost) lacks it, and then the best left is the new
        // primary's set now.
        let promotion_gtid = if f.promotion_gtid.is_none() && f.kind.changes_primary() {
            tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch,
                "no promotion point recorded at the promote step: reading the new primary's GTIDs now");
            self.gtid_of(&f.candidate).await
        } else {
            None
        };
        self.commit(
            Command::FinishFailover {
                name: name.clone(),
                id: f.id.clone(),
                outcome: FailoverOutcome::Succeeded,
                promotion_gtid,
            },
            "primusd",
        )
        .await?;
        failpoint("failover.after_step", Some(i));
        tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch, new_primary = %f.candidate,
            "failover completed");
        self.post_hooks(name, &f.id);
        Ok(())
    }

    /// `primusctl rejoin`: repoint a demoted (or detached) instance under the primary,
    /// only if it has no transactions the primary lacks (otherwise it would bring
    /// divergent data back into the cluster: it must be rebuilt).
    ///
    /// A former primary that executed transactions after the failover that replaced it
    /// (divergent, see [`crate::divergence`]) is refused with the list, unless the
    /// operator passes `discard_divergent` (MariaDB only): it then replicates from the
    /// promotion point, the divergent transactions' changes staying in its tables, and
    /// that choice is recorded in the audit trail.
    pub async fn rejoin(
        &self,
        name: &ClusterName,
        addr: &InstanceAddr,
        actor: &str,
        discard_divergent: bool,
    ) -> Result<Rejoined, FailoverError> {
        self.confirm_leader().await?;
        let c = self.cluster(name)?;
        if c.in_flight().is_some() {
            return Err(FailoverError::Refused("a failover is in progress; retry when it is done".into()));
        }
        let inst = c
            .topology
            .instances
            .get(addr)
            .ok_or_else(|| FailoverError::Refused(format!("{addr} is not an instance of {name}")))?;
        if !matches!(inst.role, primus_types::InstanceRole::Demoted | primus_types::InstanceRole::Detached) {
            return Err(FailoverError::Refused(format!(
                "{addr} is a {}, not a demoted or detached instance",
                inst.role
            )));
        }
        let primary =
            c.topology.primary.clone().ok_or_else(|| FailoverError::Refused(format!("{name} has no primary")))?;
        let recs = self.monitor.probe_fresh(&[addr.clone(), primary.clone()]).await;
        let obs = |a: &InstanceAddr| {
            recs.iter()
                .find(|r| &r.addr == a)
                .and_then(|r| r.result.as_ref().ok().cloned())
                .ok_or_else(|| FailoverError::Refused(format!("{a} cannot be probed right now")))
        };
        let (o, p) = (obs(addr)?, obs(&primary)?);
        let diverged = match crate::divergence::check(&c, addr, &o) {
            // No usable promotion point (a failover finished by an older primus): the
            // errant check against the primary below is all that is left.
            Some(Err(e)) => {
                tracing::warn!(cluster = %name, instance = %addr, epoch = c.epoch, error = %e,
                    "divergence of a former primary cannot be computed: relying on the errant check");
                None
            }
            Some(Ok(d)) if !d.divergence.is_empty() => Some(d),
            _ => None,
        };
        if let Some(d) = &diverged {
            let what = format!(
                "{addr} is divergent: it executed {} that the primary {primary} does not have, after failover {} \
                 replaced it (promotion point {}): {}",
                crate::divergence::count_text(&d.divergence),
                d.failover.id,
                d.promotion_gtid,
                d.divergence
            );
            if !discard_divergent {
                return Err(FailoverError::Refused(format!(
                    "{what}. To do: rebuild {addr} from the primary {primary} (a fresh backup or clone of it) and \
                     rejoin it then; or, on MariaDB, `primusctl rejoin --discard-divergent` to replicate from the \
                     promotion point, leaving those transactions' changes in its tables"
                )));
            }
            if o.server.flavor != primus_mysql::Flavor::MariaDb {
                return Err(FailoverError::Refused(format!(
                    "{what}. --discard-divergent is MariaDB only: on MySQL the divergent GTIDs stay in gtid_executed \
                     and the new primary would never send them; rebuild {addr} from the primary {primary}"
                )));
            }
        }
        if let Some(r) = primus_mysql::errant_transactions(&o, &p) {
            // With --discard-divergent, the old primary's own divergent writes are expected
            // here; anything written by another server still needs a rebuild.
            let only_divergent = diverged.is_some() && r.server_ids().iter().all(|id| *id == o.server_id);
            if !r.is_empty() && !only_divergent {
                return Err(FailoverError::Refused(format!(
                    "{addr} has {} transaction(s) the primary {primary} does not have: {r}; rebuild it from the primary \
                     (its data has diverged) before it can rejoin",
                    r.count()
                )));
            }
        }
        let (user, password) = self.replication_credentials().map_err(FailoverError::Refused)?;
        let sql = match &diverged {
            Some(d) => {
                discard_sql(&o, &d.promotion_gtid, &primary, &user, &password).map_err(FailoverError::Refused)?
            }
            None => repoint_sql(&o, &primary, &user, &password, true),
        };
        let prober = self.prober(addr);
        prober
            .execute(&sql, self.step_timeout())
            .await
            .map_err(|e| FailoverError::Refused(redact(&e.to_string(), &password)))?;
        prober.disconnect().await;
        let discarded_divergent = diverged.as_ref().map(|d| {
            format!(
                "{} beyond promotion point {} of failover {}: {}",
                crate::divergence::count_text(&d.divergence),
                d.promotion_gtid,
                d.failover.id,
                d.divergence
            )
        });
        let idx = self
            .commit(Command::ClearDemoted { name: name.clone(), instance: addr.clone(), discarded_divergent }, actor)
            .await?;
        self.monitor.probe_now(addr);
        let message = match &diverged {
            Some(d) => {
                tracing::warn!(cluster = %name, instance = %addr, %primary, epoch = c.epoch, failover_id = %d.failover.id,
                    divergent = %d.divergence, %actor,
                    "divergent former primary rejoined with --discard-divergent: its divergent changes stay in its tables");
                format!(
                    "{addr} now replicates from {primary}, starting at the promotion point {}; {} discarded from \
                     replication ({}), their changes stay in its tables",
                    d.promotion_gtid,
                    crate::divergence::count_text(&d.divergence),
                    d.divergence
                )
            }
            None => {
                tracing::warn!(cluster = %name, instance = %addr, %primary, epoch = c.epoch, "rejoined as a replica");
                format!("{addr} now replicates from {primary}")
            }
        };
        Ok(Rejoined { log_index: idx, message, discarded: diverged.map(|d| d.divergence) })
    }

    /// post_failover / post_switchover / post_unsuccessful_failover, in the background:
    /// they report, they cannot undo anything.
    fn post_hooks(&self, name: &ClusterName, id: &str) {
        let Ok(c) = self.cluster(name) else { return };
        let Some(f) = c.history.iter().rev().find(|f| f.id == id).cloned() else { return };
        let Some(outcome) = f.outcome.clone() else { return };
        let kind = crate::hooks::HookKind::after(f.kind, &outcome);
        if !self.hooks.has(kind) {
            return;
        }
        let ctx = crate::hooks::HookContext::from_record(name, &f, self.me);
        let hooks = self.hooks.clone();
        let (cluster, id) = (name.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = hooks.run(kind, &ctx).await {
                tracing::warn!(%cluster, failover_id = %id, error = %e, "{kind} hook failed");
            }
        });
    }

    async fn gtid_of(&self, addr: &InstanceAddr) -> Option<String> {
        let r = self.monitor.probe_fresh(std::slice::from_ref(addr)).await;
        r.first().and_then(|r| r.result.as_ref().ok()).map(|o| o.gtid.executed().to_string())
    }

    fn prober(&self, addr: &InstanceAddr) -> Prober {
        Prober::new(self.monitor.targets.connect_addr(addr), self.monitor.targets.probe_config.clone())
    }

    fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.step_timeout_ms)
    }

    /// Perform one step on MySQL. Idempotent: each checks the instance first.
    async fn run_step(&self, c: &ClusterRecord, f: &FailoverRecord, step: &Step) -> Result<String, String> {
        let t = self.step_timeout();
        match step {
            Step::FenceOldPrimary { addr, best_effort } => {
                let p = self.prober(addr);
                // Best effort means a majority already cannot reach it: a hung server
                // would only burn a whole connect timeout here, so try briefly.
                let reach = if *best_effort { BEST_EFFORT_FENCE_TIMEOUT } else { t };
                let info = match tokio::time::timeout(reach, p.server_info()).await {
                    Ok(Ok(i)) => i,
                    Ok(Err(e)) if *best_effort && is_unreachable(&e) => {
                        let hook = self.fence_hook(c, f).await;
                        return Ok(format!("skipped: unreachable ({e}){hook}"));
                    }
                    Ok(Err(e)) => return Err(format!("cannot fence {addr}: {e}")),
                    Err(_) if *best_effort => {
                        p.disconnect().await;
                        let hook = self.fence_hook(c, f).await;
                        return Ok(format!("skipped: no answer within {} ms{hook}", reach.as_millis()));
                    }
                    Err(_) => return Err(format!("cannot fence {addr}: no answer within {} ms", reach.as_millis())),
                };
                p.execute(&info.set_read_only_sql(true), t).await.map_err(|e| e.to_string())?;
                let killed = self.kill_clients(&p, t).await;
                p.disconnect().await;
                let hook = self.fence_hook(c, f).await;
                Ok(format!("read_only set, {killed} client connections killed{hook}"))
            }
            Step::WaitCandidateCatchUp { candidate, target_gtid, catch_up_with } => {
                let mut targets = vec![target_gtid.clone()];
                if let Some(old) = catch_up_with {
                    // A switchover: everything the fenced old primary executed, read now.
                    let r = self.monitor.probe_fresh(std::slice::from_ref(old)).await;
                    let o =
                        r.first().and_then(|r| r.result.as_ref().ok()).ok_or(format!("cannot read {old}'s GTIDs"))?;
                    targets.push(o.gtid.executed().to_string());
                }
                let p = self.prober(candidate);
                let info = p.server_info().await.map_err(|e| e.to_string())?;
                let secs = self.cfg.catch_up_timeout_ms.div_ceil(1000).max(1);
                for target in targets.iter().filter(|t| !t.is_empty()) {
                    let q = primus_mysql::flavor::quote_string(target);
                    let wait = match info.flavor {
                        primus_mysql::Flavor::MariaDb => format!("DO MASTER_GTID_WAIT({q}, {secs})"),
                        primus_mysql::Flavor::MySql => format!("DO WAIT_FOR_EXECUTED_GTID_SET({q}, {secs})"),
                    };
                    p.execute(&[wait], Duration::from_secs(secs + 2)).await.map_err(|e| e.to_string())?;
                }
                let o = p.probe().await.map_err(|e| e.to_string())?;
                p.disconnect().await;
                let have = o.gtid.executed();
                for target in targets.iter().filter(|t| !t.is_empty()) {
                    let want = parse_like(&have, target)?;
                    if have.contains(&want) != Some(true) {
                        return Err(format!("candidate applied only {have}, needs {target}"));
                    }
                }
                Ok(format!("applied {} (at {have})", targets.join(" + ")))
            }
            Step::WaitLeaseExpiry { addr } => {
                let agent = c.agents.get(addr);
                // Leases go only to registered agents; a grant without a record (an older
                // primusd) is waited out all the same.
                if agent.is_none() && self.leases.granted(&c.name, addr).is_none() {
                    if self.fencing.require_fencing {
                        return Err(format!(
                            "{addr} has no fencing agent and [fencing] require_fencing is on: not promoting next to a \
                             primary that may still take writes"
                        ));
                    }
                    return Ok(format!(
                        "skipped: {addr} has no fencing agent: UNFENCED unless the fence step reached it"
                    ));
                }
                let name = agent.map_or("(unregistered)", |a| a.agent_id.as_str());
                let until = self.leases.expiry(&c.name, addr, agent);
                let wait = until.saturating_duration_since(tokio::time::Instant::now());
                tracing::warn!(cluster = %c.name, instance = %addr, epoch = f.epoch, agent = %name,
                    wait_ms = wait.as_millis() as u64, "waiting for the old primary's lease to run out");
                tokio::time::sleep_until(until).await;
                Ok(format!("lease of agent {name} ran out (waited {} ms)", wait.as_millis()))
            }
            Step::PromoteCandidate { candidate } => {
                self.promote(candidate, f.epoch, c.settings.semi_sync == Some(true)).await.map(|(outcome, _)| outcome)
            }
            Step::RepointReplica { replica, to } | Step::RepointOldPrimary { addr: replica, to } => {
                let (user, password) = self.replication_credentials()?;
                let p = self.prober(replica);
                let o = match p.probe().await {
                    Ok(o) => o,
                    Err(e) if is_unreachable(&e) => return Ok(format!("skipped: unreachable ({e})")),
                    Err(e) => return Err(e.to_string()),
                };
                if let Some(r) = o.replication.first() {
                    if r.source_host == to.host() && r.source_port == to.port() && r.sql_running {
                        return Ok("already replicating from the new primary".into());
                    }
                }
                let sql = repoint_sql(&o, to, &user, &password, matches!(step, Step::RepointOldPrimary { .. }));
                // The error of a refused CHANGE MASTER quotes the statement: never let the
                // password reach logs or the Raft record.
                p.execute(&sql, t).await.map_err(|e| redact(&e.to_string(), &password))?;
                p.disconnect().await;
                Ok(format!("replicating from {to}"))
            }
            Step::WriteHeartbeat { primary, epoch } => {
                let p = self.prober(primary);
                p.write_heartbeat(c.name.as_str(), *epoch, now_ms(), self.me).await.map_err(|e| e.to_string())?;
                p.disconnect().await;
                Ok(format!("heartbeat written with epoch {epoch}"))
            }
            Step::Complete => Ok("done".into()),
        }
    }

    /// Promote `candidate`: stop its replication, read the promotion point (what it holds
    /// before it takes its first write), reset replication and make it writable. Run again
    /// on an already writable candidate (a resumed failover), the point read is an upper
    /// bound that may include the new primary's own first writes — harmless for divergence,
    /// which is about the old primary's transactions.
    async fn promote(
        &self,
        candidate: &InstanceAddr,
        epoch: u64,
        semi_sync: bool,
    ) -> Result<(String, primus_mysql::PromotionPoint), String> {
        let t = self.step_timeout();
        let p = self.prober(candidate);
        let o = p.probe().await.map_err(|e| e.to_string())?;
        if o.is_replica() {
            p.execute(&[o.server.stop_replica_sql()], t).await.map_err(|e| e.to_string())?;
        }
        let stopped = p.probe().await.map_err(|e| e.to_string())?;
        let point = primus_mysql::promotion_point(&stopped);
        let mut sql = Vec::new();
        if o.is_replica() {
            sql.push(o.server.reset_replica_sql(ResetReplica::All));
        }
        // No-loss mode: lossless semi-sync from the very first write on the new
        // primary (its first commits wait for a repointed replica to acknowledge).
        if semi_sync {
            sql.extend(o.server.semi_sync_sql(true, true));
        }
        sql.extend(o.server.set_read_only_sql(false));
        p.execute(&sql, t).await.map_err(|e| e.to_string())?;
        p.disconnect().await;
        if crate::faults::get().active("failover.promote_answer_lost") {
            return Err("failpoint failover.promote_answer_lost: the promote ran, its answer is dropped".into());
        }
        let ss = if semi_sync { "lossless semi-sync on, " } else { "" };
        Ok((
            format!("replication stopped and reset, {ss}writable (epoch {epoch}), promotion point {}", point.gtid),
            point,
        ))
    }

    /// The operator's `fence` hooks (STONITH, VIP removal): most useful exactly when
    /// primus cannot reach the old primary itself. Failures are reported, not fatal.
    async fn fence_hook(&self, c: &ClusterRecord, f: &FailoverRecord) -> String {
        if !self.hooks.has(crate::hooks::HookKind::Fence) {
            return String::new();
        }
        let ctx = crate::hooks::HookContext::from_record(&c.name, f, self.me);
        match self.hooks.run(crate::hooks::HookKind::Fence, &ctx).await {
            Ok(o) => format!("; fence hooks ran ({})", o.len()),
            Err(e) => format!("; fence hook failed: {e}"),
        }
    }

    fn replication_credentials(&self) -> Result<(String, String), String> {
        let user = self.mysql.replication_user.clone().ok_or(
            "no [mysql] replication_user configured: cannot repoint replicas (set replication_user and \
             replication_password_file)",
        )?;
        let password = self.mysql.replication_password()?.ok_or("no replication password configured")?;
        Ok((user, password))
    }

    /// Kill every client connection except replication and system threads.
    async fn kill_clients(&self, p: &Prober, t: Duration) -> usize {
        let q = "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
                 AND USER NOT IN ('system user', 'event_scheduler')";
        let Ok(rows) = p.query_rows(q, t).await else { return 0 };
        let ids: Vec<String> = rows.iter().filter_map(|r| r.get(&["ID"]).flatten().map(str::to_string)).collect();
        let mut n = 0;
        for id in ids {
            if id.chars().all(|c| c.is_ascii_digit()) && p.execute(&[format!("KILL CONNECTION {id}")], t).await.is_ok()
            {
                n += 1;
            }
        }
        n
    }
}

/// `read_only` on (or off) over `p`, in the server's flavor (MySQL: `super_read_only` too).
async fn set_read_only_over(p: &Prober, on: bool, t: Duration) -> Result<(), ProbeError> {
    let info = p.server_info().await?;
    p.execute(&info.set_read_only_sql(on), t).await
}

/// Test-only crash points: see [`crate::faults`].
fn failpoint(name: &str, step: Option<usize>) {
    crate::faults::get().kill_at(name, step);
}

/// How primus points a replica at a source: GTID positioning (per flavor), heartbeat
/// every 0.5 s, reconnect every 1 s.
fn change_source_to<'a>(to: &'a InstanceAddr, user: &'a str, password: &'a str) -> ChangeSource<'a> {
    ChangeSource {
        host: to.host(),
        port: to.port(),
        user,
        password,
        heartbeat_period: Some(Duration::from_millis(500)),
        connect_retry_s: Some(1),
    }
}

/// The start of every repoint: stop replication (if any) and make the server read-only.
fn stop_and_fence_sql(o: &primus_mysql::Observation) -> Vec<String> {
    let mut sql = Vec::new();
    if o.is_replica() {
        sql.push(o.server.stop_replica_sql());
    }
    sql.extend(o.server.set_read_only_sql(true));
    sql
}

/// Everything that makes the instance observed as `o` a read-only replica of `to`:
/// stop replication, read_only, CHANGE MASTER/SOURCE by GTID, start replication.
fn repoint_sql(
    o: &primus_mysql::Observation,
    to: &InstanceAddr,
    user: &str,
    password: &str,
    former_primary: bool,
) -> Vec<String> {
    let change = change_source_to(to, user, password);
    let mut sql = stop_and_fence_sql(o);
    sql.push(change_source_for(o, &change, former_primary));
    sql.push(o.server.start_replica_sql());
    sql
}

/// `rejoin --discard-divergent` of a MariaDB former primary: replicate from the
/// promotion point (`gtid_slave_pos`), not from its own position. Under
/// `gtid_strict_mode` its binary log is reset first: it holds the divergent GTIDs, whose
/// seqs the new primary's transactions reuse, and strict mode would refuse to log those
/// (and to set a `gtid_slave_pos` behind the binlog).
fn discard_sql(
    o: &primus_mysql::Observation,
    promotion_gtid: &str,
    to: &InstanceAddr,
    user: &str,
    password: &str,
) -> Result<Vec<String>, String> {
    let primus_mysql::GtidState::MariaDb { strict_mode, .. } = &o.gtid else {
        return Err("--discard-divergent is MariaDB only".into());
    };
    let point: primus_mysql::MariaGtidSet =
        promotion_gtid.parse().map_err(|e: primus_mysql::gtid::GtidParseError| e.to_string())?;
    if !point.is_position() {
        return Err(format!("the promotion point {promotion_gtid} is not a MariaDB position"));
    }
    let change = change_source_to(to, user, password);
    let mut sql = stop_and_fence_sql(o);
    if *strict_mode {
        sql.push("RESET MASTER".to_string());
    }
    sql.push(format!("SET GLOBAL gtid_slave_pos = {}", primus_mysql::flavor::quote_string(&point.to_string())));
    sql.push(o.server.change_source_sql(&change));
    sql.push(o.server.start_replica_sql());
    Ok(sql)
}

/// The CHANGE MASTER/SOURCE statement for `o`. A former MariaDB primary has its own
/// writes in gtid_binlog_pos but not in gtid_slave_pos, so it must start from
/// `current_pos` (MariaDB's documented way to turn a primary into a replica).
fn change_source_for(o: &primus_mysql::Observation, change: &ChangeSource<'_>, former_primary: bool) -> String {
    let sql = o.server.change_source_sql(change);
    if former_primary && o.server.flavor == primus_mysql::Flavor::MariaDb {
        sql.replace("MASTER_USE_GTID=slave_pos", "MASTER_USE_GTID=current_pos")
    } else {
        sql
    }
}

/// `text` with every occurrence of `secret` (raw and SQL-quoted) replaced.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let quoted = primus_mysql::flavor::quote_string(secret);
    text.replace(&quoted, "'<redacted>'").replace(secret, "<redacted>")
}

/// How long a best-effort fence of an unreachable old primary may try.
const BEST_EFFORT_FENCE_TIMEOUT: Duration = Duration::from_millis(150);

fn is_unreachable(e: &ProbeError) -> bool {
    matches!(e, ProbeError::Unreachable { .. } | ProbeError::Timeout { .. } | ProbeError::ConnectionLost { .. })
}

/// Parse `s` as a GTID set of the same flavor as `like`.
fn parse_like(like: &AnyGtidSet, s: &str) -> Result<AnyGtidSet, String> {
    match like {
        AnyGtidSet::MariaDb(_) => {
            s.parse().map(AnyGtidSet::MariaDb).map_err(|e: primus_mysql::gtid::GtidParseError| e.to_string())
        }
        AnyGtidSet::MySql(_) => {
            s.parse().map(AnyGtidSet::MySql).map_err(|e: primus_mysql::gtid::GtidParseError| e.to_string())
        }
    }
}

fn decode_plan(f: &FailoverRecord) -> Vec<Step> {
    f.plan.iter().filter_map(|v| serde_json::from_value(v.clone()).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use primus_mysql::probe::SemiSyncStatus;
    use primus_mysql::{Flavor, GtidState, Observation, ServerInfo, Version};

    fn observation(flavor: Flavor, gtid: GtidState) -> Observation {
        Observation {
            addr: InstanceAddr::new("h", 1).expect("valid"),
            taken_at_ms: 0,
            latency_us: 0,
            connect_us: None,
            server: ServerInfo {
                flavor,
                version: Version::new(10, 11, 6),
                version_string: "10.11.6".into(),
                version_comment: String::new(),
            },
            server_id: 1,
            server_uuid: None,
            uptime_s: None,
            read_only: true,
            super_read_only: None,
            log_bin: true,
            log_slave_updates: true,
            binlog_format: Some("ROW".into()),
            gtid,
            replication: Vec::new(),
            semi_sync: SemiSyncStatus::default(),
            replicas: Vec::new(),
            binlog_dump_threads: 0,
            heartbeat: Vec::new(),
            heartbeat_error: None,
        }
    }

    fn maria(strict_mode: bool) -> GtidState {
        GtidState::MariaDb {
            current_pos: "0-1-21".parse().expect("valid"),
            binlog_pos: "0-1-21".parse().expect("valid"),
            slave_pos: "0-1-10".parse().expect("valid"),
            strict_mode,
            domain_id: 0,
            binlog_state: "0-1-21".parse().expect("valid"),
        }
    }

    /// (case, observation, promotion point, Ok(statements that must appear) / Err(text))
    type DiscardCase = (&'static str, Observation, &'static str, Result<Vec<&'static str>, &'static str>);

    #[test]
    fn discard_divergent_replicates_from_the_promotion_point_and_is_mariadb_only() {
        let to = InstanceAddr::new("new", 3306).expect("valid");
        let mysql = GtidState::MySql {
            executed: "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5".parse().expect("valid"),
            purged: Default::default(),
            mode: "ON".into(),
        };
        let cases: Vec<DiscardCase> = vec![
            (
                "strict mode: binlog reset first",
                observation(Flavor::MariaDb, maria(true)),
                "0-1-17",
                Ok(vec!["RESET MASTER", "SET GLOBAL gtid_slave_pos = '0-1-17'", "MASTER_USE_GTID=slave_pos"]),
            ),
            (
                "no strict mode: binlog kept",
                observation(Flavor::MariaDb, maria(false)),
                "0-1-17",
                Ok(vec!["SET GLOBAL gtid_slave_pos = '0-1-17'", "MASTER_USE_GTID=slave_pos"]),
            ),
            ("MySQL is refused", observation(Flavor::MySql, mysql), "x:1", Err("MariaDB only")),
            (
                "a promotion point that is no position is refused",
                observation(Flavor::MariaDb, maria(true)),
                "0-1-3..5",
                Err("not a MariaDB position"),
            ),
        ];
        for (case, o, point, want) in cases {
            let got = discard_sql(&o, point, &to, "repl", "pw");
            match (want, got) {
                (Ok(must), Ok(sql)) => {
                    let all = sql.join("; ");
                    for m in must {
                        assert!(all.contains(m), "{case}: {m:?} missing in {all}");
                    }
                    assert_eq!(all.contains("RESET MASTER"), case.starts_with("strict"), "{case}: {all}");
                    assert!(!all.contains("current_pos"), "{case}: {all}");
                    assert!(sql.last().is_some_and(|s| s.contains("START")), "{case}: {all}");
                }
                (Err(text), Err(e)) => assert!(e.contains(text), "{case}: {e}"),
                (want, got) => panic!("{case}: want {want:?}, got {got:?}"),
            }
        }
    }
}

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
use crate::consensus::Consensus;
use crate::monitor::Monitor;
use primus_failover::{
    analyze, choose_candidate, choose_candidate_explicit, plan, Analysis, AnalysisCode, ClusterInput, CoordinatorView,
    InstanceInput, Step, Thresholds,
};
use primus_mysql::flavor::{ChangeSource, ResetReplica};
use primus_mysql::{AnyGtidSet, MysqlConn, ProbeError};
use primus_store::StateHandle;
use primus_types::state::ClusterRecord;
use primus_types::{
    ClusterName, Command, FailoverKind, FailoverOutcome, FailoverRecord, InstanceAddr, NodeId, Origin, Rejection,
    Request, StepOutcome,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Why a failover, switchover, repair or rejoin did not happen (or did not finish
/// here). Each kind tells a client something different about retrying, and answers
/// with its own gRPC code (`service::failover_status`).
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// This node does not lead, or a quorum did not confirm it: nothing was done
    /// (retry on another coordinator).
    #[error("this node is not the leader (or lost its quorum): {0}")]
    NotLeader(String),
    #[error("cluster {0} is not registered")]
    UnknownCluster(ClusterName),
    /// The request names an instance the cluster's topology does not have.
    #[error("refused: {instance} is not an instance of {cluster}")]
    UnknownInstance { cluster: ClusterName, instance: InstanceAddr },
    /// The request cannot be carried out whatever the cluster's state (e.g. promote
    /// the primary itself).
    #[error("refused: {0}")]
    InvalidRequest(String),
    /// Another operation on the cluster (failover, repair, split fence) is being
    /// decided or executed: retry when it is done.
    #[error("refused: {0}")]
    Busy(String),
    /// The cluster's state forbids it now: no primary, no safe candidate, the no-loss
    /// check, a double-check that cleared the primary, a pre-failover hook's veto, an
    /// instance that is not demoted or has diverged. Retrying changes nothing until
    /// the state does.
    #[error("refused: {0}")]
    Refused(String),
    /// The state machine refused the command (its own reason and code).
    #[error("refused: {0}")]
    Rejected(Rejection),
    /// The failover started and stopped at a step that failed: closed as `aborted`
    /// (nothing irreversible happened; the old primary stays) or `failed` (after the
    /// promotion: an operator must look, and ack it). `reason` is the step's error.
    #[error("refused: {reason}")]
    Stopped { id: String, outcome: FailoverOutcome, reason: String },
    /// Proposed, but not committed within the step timeout: it may still commit.
    #[error("not committed: not committed within {0} ms")]
    CommitTimeout(u128),
    /// Raft failed the proposal (stopped, storage error).
    #[error("not committed: {0}")]
    Raft(String),
    /// The failover's start is committed but this node stopped leading before it
    /// finished: the new leader resumes it. Not "not the leader": the request took
    /// effect, and asking again would start another failover.
    #[error(
        "failover {id} started, but this coordinator stopped leading before it finished ({reason}); \
         the new leader resumes it: see `primusctl history`"
    )]
    Interrupted { id: String, reason: String },
    /// A bug (a task that panicked).
    #[error("internal error: {0}")]
    Internal(String),
    /// The request's id is recorded with failover `id` already: this is a repeat of a
    /// request that started it (answered with that failover, not a second one).
    #[error("request {request_id} started failover {id} already")]
    Repeated { id: String, request_id: String },
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
    /// The operator's request id, recorded with the start (see
    /// `FailoverRecord::request_id`).
    pub request_id: Option<String>,
}

impl FailoverAsk {
    pub fn automatic() -> FailoverAsk {
        FailoverAsk {
            kind: FailoverKind::Automatic,
            to: None,
            actor: "primusd".into(),
            accept_loss: false,
            request_id: None,
        }
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

pub use relocate::Relocated;

pub struct Engine {
    me: NodeId,
    consensus: Arc<dyn Consensus>,
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
    /// Last time a no-loss primary was checked for commits waiting on acknowledgements
    /// nobody will give (unix ms).
    stranded_checked: Mutex<HashMap<ClusterName, u64>>,
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
    /// No-loss mode: per cluster, what semi-sync replicas of its primary were seen (by
    /// this node's probes) to have received since that server became primary. A replica
    /// that restarts loses its relay log; what it acknowledged before must still be on
    /// any candidate.
    seen_received: Mutex<HashMap<ClusterName, (InstanceAddr, primus_mysql::AnyGtidSet)>>,
    /// No-loss mode: per cluster, semi-sync replicas of its primary seen to restart
    /// (see [`Restarts`]).
    restarts: Mutex<HashMap<ClusterName, Restarts>>,
    /// Every task of this engine (stopped together by [`Engine::stop`]).
    tasks: crate::tasks::Tasks,
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

mod decide;
mod execute;
mod rejoin;
mod relocate;
mod sql;
mod upkeep;

use execute::failpoint;
use sql::*;

impl Engine {
    // Called once, from node::run, with everything an engine shares with the node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        consensus: Arc<dyn Consensus>,
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
            consensus,
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
            stranded_checked: Mutex::new(HashMap::new()),
            leases,
            fencing,
            divergent_seen: Mutex::new(HashMap::new()),
            split_fenced: Mutex::new(HashMap::new()),
            unfenced: Mutex::new(HashMap::new()),
            unfence_failures: Mutex::new(HashMap::new()),
            no_loss_refused: Mutex::new(HashMap::new()),
            seen_received: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
            tasks: crate::tasks::Tasks::default(),
        })
    }

    pub fn start(self: &Arc<Self>) {
        let e = self.clone();
        self.tasks.spawn(async move { e.run().await });
    }

    /// Stop every task of this engine (its loop, decisions and failovers running).
    pub fn stop(&self) {
        self.tasks.stop();
    }

    /// The analysis this node computed last for `cluster` (the leader's is authoritative).
    pub fn last_analysis(&self, cluster: &ClusterName) -> Option<(u64, Analysis)> {
        self.last.read().unwrap_or_else(|p| p.into_inner()).get(cluster).cloned()
    }

    /// `cluster`'s analysis made now, from the cluster's record as applied now and every
    /// coordinator's latest views, with the time and the record's epoch: `None` for a
    /// cluster not registered, or before this node's first analysis of it (it has no
    /// views to judge by yet). Not [`Engine::last_analysis`], which can be up to a tick
    /// (200 ms) older than the record: right after a switchover, an analysis of the old
    /// primary made while it was being fenced.
    pub fn analysis_now(&self, cluster: &ClusterName) -> Option<(u64, u64, Analysis)> {
        self.last_analysis(cluster)?;
        let c = self.cluster(cluster).ok()?;
        let analysis = analyze(&self.input(&c), &thresholds(&self.cfg_for(&c)));
        Some((self.now_ms(), c.epoch, analysis))
    }

    /// Whether the agent of `instance` holds a lease this leader granted, right now. An
    /// agent that handed its lease back holds none, whatever this leader granted before
    /// the release (a failover no longer waits for that grant, so nothing may count on
    /// it: no unfence on its strength).
    fn agent_holds_lease(&self, c: &ClusterRecord, instance: &InstanceAddr) -> bool {
        c.agents.get(instance).is_some_and(|a| a.released.is_none()) && self.leases.holds(&c.name, instance)
    }

    /// Build the decision input from every coordinator's latest views.
    pub fn input(&self, c: &ClusterRecord) -> ClusterInput {
        let now = self.now_ms();
        let voters = (*self.consensus.view().voters).clone();
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
                        promotion_rule: rule,
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
                self.leads() && self.agent_holds_lease(c, p)
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

    /// Add what the primary's semi-sync replicas received now (this node's probes) to
    /// what they were seen to have received since it became primary.
    fn note_received(&self, c: &ClusterRecord) {
        let Some(primary) = c.topology.primary.clone() else { return };
        self.note_restarts(c, &primary);
        let mut seen = self.seen_received.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&c.name).is_some_and(|(p, _)| *p != primary) {
            seen.remove(&c.name);
        }
        for addr in c.topology.instances.keys().filter(|a| **a != primary) {
            let Some(got) =
                self.monitor.own_observation(addr).and_then(|o| primus_failover::received_from(&o, &primary))
            else {
                continue;
            };
            match seen.get_mut(&c.name) {
                Some((_, set)) => {
                    if let Some(u) = primus_failover::union_of(set, &got) {
                        *set = u;
                    }
                }
                None => {
                    seen.insert(c.name.clone(), (primary.clone(), got));
                }
            }
        }
    }

    /// No-loss mode: note semi-sync replicas of `primary` that restarted (their start
    /// time, from `uptime`, moved), what the primary had executed by then, and when a
    /// restarted one has received all of that again. See [`Restarts`].
    fn note_restarts(&self, c: &ClusterRecord, primary: &InstanceAddr) {
        let mut all = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        let r = all.entry(c.name.clone()).or_default();
        if r.primary.as_ref() != Some(primary) {
            *r = Restarts { primary: Some(primary.clone()), ..Default::default() };
        }
        if let Some(o) = self.monitor.own_observation(primary) {
            if r.primary_seen.as_ref().is_none_or(|(_, at)| o.taken_at_ms > *at) {
                r.primary_seen = Some((o.gtid.executed().clone(), o.taken_at_ms));
            }
        }
        for addr in c.topology.instances.keys().filter(|a| *a != primary) {
            let Some(o) = self.monitor.own_observation(addr) else { continue };
            // Semi-sync may be off right after a restart (a runtime setting): any
            // replica of the primary counts.
            if !primus_failover::replicates_from(&o, primary) {
                continue;
            }
            let Some(up) = o.uptime_s else { continue };
            let started = o.taken_at_ms.saturating_sub(up.saturating_mul(1000));
            match r.started.get(addr).copied() {
                // Uptime has a 1 s resolution, and probes are not instantaneous.
                Some(before) if started > before + 2000 => {
                    r.started.insert(addr.clone(), started);
                    let owed = r.primary_seen.as_ref().map(|(e, _)| e.clone());
                    r.restarted.insert(addr.clone(), (started, owed));
                }
                Some(_) => {}
                None => {
                    r.started.insert(addr.clone(), started);
                }
            }
            // Received again everything the primary had executed when it restarted:
            // whatever it acknowledged before the restart is back.
            if let (Some((_, Some(owed))), Some(got)) =
                (r.restarted.get(addr), primus_failover::received_from(&o, primary))
            {
                if got.contains(owed) == Some(true) {
                    r.restarted.remove(addr);
                }
            }
        }
    }

    /// No-loss mode: why promoting a candidate holding `candidate_has` could lose what a
    /// restarted semi-sync replica of `primary` acknowledged (empty: nothing). A replica
    /// loses its relay log when it restarts; what it acknowledged since this node last
    /// saw its received position is then only on the primary. While a restarted replica
    /// has not received again everything the primary had executed when it restarted,
    /// the candidate must hold everything the primary was last seen to execute — and if
    /// the restart came after that last sight of the primary, nothing bounds what was
    /// acknowledged (found by the nemesis, seed 106: a replica killed right after it
    /// acknowledged a write, restarted while the primary was frozen, then promoted
    /// without it).
    fn restart_gaps(
        &self,
        name: &ClusterName,
        primary: &InstanceAddr,
        candidate_has: Option<&primus_mysql::AnyGtidSet>,
    ) -> Vec<String> {
        let all = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = all.get(name).filter(|r| r.primary.as_ref() == Some(primary)) else { return Vec::new() };
        if r.restarted.is_empty() {
            return Vec::new();
        }
        let who: Vec<String> = r.restarted.keys().map(|a| a.to_string()).collect();
        let Some((executed, seen_at)) = &r.primary_seen else {
            return vec![format!(
                "semi-sync replica(s) {} restarted while {primary} was their source, and {primary}'s executed set \
                 was never seen: what they acknowledged is unknown",
                who.join(", ")
            )];
        };
        let mut gaps = Vec::new();
        for (addr, (at, _)) in &r.restarted {
            if at > seen_at {
                gaps.push(format!(
                    "semi-sync replica {addr} restarted after {primary} was last seen: what it acknowledged before \
                     its restart may be on no server but {primary}"
                ));
            }
        }
        match candidate_has.map(|h| h.contains(executed)) {
            Some(Some(true)) => {}
            _ => gaps.push(format!(
                "semi-sync replica(s) {} restarted (losing their relay logs) and have not received again all that \
                 {primary} had executed ({executed}); the candidate does not hold all of it",
                who.join(", ")
            )),
        }
        gaps
    }

    /// `primary`'s promotion point, if a failover made it the primary of `c` (the latest
    /// one that promoted it, succeeded, with its point recorded in Raft).
    fn promoted_with(c: &ClusterRecord, primary: &InstanceAddr) -> Option<String> {
        c.history
            .iter()
            .rev()
            .find(|f| {
                &f.candidate == primary
                    && f.kind.changes_primary()
                    && f.outcome == Some(primus_types::FailoverOutcome::Succeeded)
            })
            .and_then(|f| f.promotion_gtid.clone())
    }

    /// What semi-sync replicas of `primary` were seen to have received while it was the
    /// primary.
    fn seen_received(&self, name: &ClusterName, primary: &InstanceAddr) -> Option<primus_mysql::AnyGtidSet> {
        let seen = self.seen_received.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(name).filter(|(p, _)| p == primary).map(|(_, s)| s.clone())
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
            let ticked = tokio::select! {
                biased;
                _ = tick.tick() => true,
                r = changes.changed() => { if r.is_err() { return; } false }
            };
            // Every cluster on the tick; on a change, only the clusters it was about
            // (at 1,000 clusters a full pass on every probe that flips would delay the
            // one cluster whose primary just died behind all the others).
            let changed = self.monitor.take_changed();
            let clusters: Vec<Arc<ClusterRecord>> = self
                .state
                .read(|s| s.registry.clusters.values().filter(|c| ticked || changed.touches(c)).cloned().collect());
            let leads = self.leads();
            for c in clusters {
                let input = self.input(&c);
                let analysis = analyze(&input, &thresholds(&self.cfg_for(&c)));
                self.last
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c.name.clone(), (self.now_ms(), analysis.clone()));
                if !analysis.code.is_dead_primary() {
                    self.no_loss_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.name);
                }
                if c.settings.semi_sync == Some(true) {
                    self.note_received(&c);
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
                self.release_stranded_acks(&c);
                if !analysis.code.calls_for_failover()
                    && analysis.code != AnalysisCode::DeadIntermediatePrimary
                    && self.repair_allowed(&c)
                    && self.left_behind(&c).is_some()
                {
                    self.spawn_for(&c.name, |e, name| async move {
                        if let Err(err) = e.repoint_left_behind(&name).await {
                            tracing::warn!(cluster = %name, error = %err, "replica left behind not moved");
                            let until = e.now_ms() + 2000;
                            let mut b = e.backoff.lock().unwrap_or_else(|p| p.into_inner());
                            let v = b.entry(name.clone()).or_insert(until);
                            *v = (*v).max(until);
                        }
                    });
                    continue;
                }
                let dead = analysis.code.calls_for_failover();
                let dead_intermediate = analysis.code == AnalysisCode::DeadIntermediatePrimary;
                if dead_intermediate && analysis.actionable && self.repair_allowed(&c) {
                    self.spawn_for(&c.name, |e, name| async move {
                        if let Err(err) = e.repair_intermediate(&name).await {
                            tracing::warn!(cluster = %name, error = %err, "intermediate primary not repaired");
                            let until = e.now_ms() + 2000;
                            e.backoff.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), until);
                        }
                    });
                    continue;
                }
                if dead && analysis.actionable && self.globally_off() {
                    let why =
                        self.state.read(|s| s.registry.automatic_off.clone()).map(|a| a.reason).unwrap_or_default();
                    self.say_once(
                        &c.name,
                        &format!(
                            "{}: no automatic failover, it is switched off for every cluster ({why}); `primusctl \
                             automatic on --all` or a manual `primusctl failover`",
                            analysis.code
                        ),
                    );
                }
                if dead && analysis.actionable && self.automatic_allowed(&c) {
                    self.spawn_for(&c.name, |e, name| async move {
                        if let Err(err) = e.decide_and_run(&name, FailoverAsk::automatic()).await {
                            tracing::warn!(cluster = %name, error = %err, "automatic failover not started");
                            // Don't re-probe every instance on every tick while nothing changes.
                            let until = e.now_ms() + 2000;
                            e.backoff.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), until);
                        }
                    });
                }
            }
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
        self.tasks.spawn(async move {
            fut.await;
            e.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        });
    }

    /// This node's `[failover]` section with the cluster's settings from Raft
    /// (`primusctl cluster set`) over it: every coordinator decides with the same.
    pub(crate) fn cfg_for(&self, c: &ClusterRecord) -> FailoverSection {
        let o = &c.settings.failover;
        let mut f = self.cfg.clone();
        if let Some(v) = o.recovery_block_period_ms {
            f.recovery_block_period_ms = v;
        }
        if let Some(v) = o.replica_progress_stale_ms {
            f.replica_progress_stale_ms = v;
        }
        if let Some(v) = o.view_max_age_ms {
            f.view_max_age_ms = v;
        }
        if let Some(v) = o.catch_up_timeout_ms {
            f.catch_up_timeout_ms = v;
        }
        if let Some(v) = o.prefer_same_datacenter {
            f.prefer_same_datacenter = v;
        }
        if let Some(v) = o.max_lag_for_candidate_s {
            f.max_lag_for_candidate_s = Some(v);
        }
        if let Some(v) = o.fence_split {
            f.fence_split = v;
        }
        f
    }

    /// [`Engine::cfg_for`] the cluster named `name` (this node's own section when it is gone).
    fn cfg_of(&self, name: &ClusterName) -> FailoverSection {
        match self.cluster(name) {
            Ok(c) => self.cfg_for(&c),
            Err(_) => self.cfg.clone(),
        }
    }

    /// `primusctl automatic off --all`: no automatic failover or repair anywhere.
    fn globally_off(&self) -> bool {
        self.state.read(|s| s.registry.automatic_off.is_some())
    }

    /// Automatic failover enabled, and not blocked by a recent unacknowledged one.
    fn automatic_allowed(&self, c: &ClusterRecord) -> bool {
        if !c.settings.automatic_failover.unwrap_or(self.cfg.automatic) || self.globally_off() {
            return false;
        }
        let now = self.now_ms();
        // A failed failover (stopped after an irreversible step) blocks until an
        // operator acks it, whatever its age: the topology may be half-changed and a
        // second automatic failover could promote next to an already writable server.
        let blocked = c.history.iter().rev().find(|f| f.kind == FailoverKind::Automatic).is_some_and(|f| {
            f.acked_by.is_none()
                && match &f.outcome {
                    Some(FailoverOutcome::Failed(_)) => true,
                    Some(FailoverOutcome::Succeeded) => f
                        .finished_at_ms
                        .is_some_and(|t| now.saturating_sub(t) < self.cfg_for(c).recovery_block_period_ms),
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
            && !self.globally_off()
            && self.backoff.lock().unwrap_or_else(|p| p.into_inner()).get(&c.name).is_none_or(|t| self.now_ms() >= *t)
    }

    /// Log `msg` unless something was said about `cluster` in the last 30 s; true when logged.
    fn say_once(&self, cluster: &ClusterName, msg: &str) -> bool {
        let mut q = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now_ms();
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
        let req = Request::at(cmd, Origin { actor: actor.to_string(), via_node: self.me }, self.now_ms());
        let t = Duration::from_millis(self.cfg.step_timeout_ms);
        match tokio::time::timeout(t, self.consensus.write(req)).await {
            Err(_) => Err(FailoverError::CommitTimeout(t.as_millis())),
            Ok(Err(crate::consensus::WriteError::NotLeader { leader })) => {
                Err(FailoverError::NotLeader(format!("not the leader (leader: {leader:?})")))
            }
            Ok(Err(crate::consensus::WriteError::Raft(e))) => Err(FailoverError::Raft(e)),
            // Mid-upgrade: nothing was proposed; the next tick tries again.
            Ok(Err(e @ crate::consensus::WriteError::FeatureNotEnabled(_))) => {
                Err(FailoverError::Refused(e.to_string()))
            }
            Ok(Ok((index, resp))) => match resp.into_result() {
                Ok(()) => Ok(index),
                Err(Rejection::FailoverInProgress(_, id)) => {
                    Err(FailoverError::Busy(format!("failover {id} is already in progress")))
                }
                Err(r) => Err(FailoverError::Rejected(r)),
            },
        }
    }

    /// Confirm with a quorum that we still lead, bounded by the step timeout.
    async fn confirm_leader(&self) -> Result<(), FailoverError> {
        let t = Duration::from_millis(self.cfg.step_timeout_ms);
        match tokio::time::timeout(t, self.consensus.ensure_leader()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(FailoverError::NotLeader(e.to_string())),
            Err(_) => Err(FailoverError::NotLeader("no quorum answered".into())),
        }
    }

    async fn gtid_of(&self, addr: &InstanceAddr) -> Option<String> {
        let r = self.monitor.probe_fresh(std::slice::from_ref(addr)).await;
        r.first().and_then(|r| r.result.as_ref().ok()).map(|o| o.gtid.executed().to_string())
    }

    fn prober(&self, addr: &InstanceAddr) -> Arc<dyn MysqlConn> {
        self.monitor.connector.connect(addr)
    }

    /// This node's wall clock, unix ms.
    fn now_ms(&self) -> u64 {
        self.monitor.now_ms()
    }

    fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.step_timeout_ms)
    }

    fn replication_credentials(&self) -> Result<sql::ReplicationLogin, String> {
        let user = self.mysql.replication_user.clone().ok_or(
            "no [mysql] replication_user configured: cannot repoint replicas (set replication_user and \
             replication_password_file)",
        )?;
        let password = self.mysql.replication_password()?.ok_or("no replication password configured")?;
        Ok(sql::ReplicationLogin { user, password, tls: self.mysql.replication_tls() })
    }
}

/// No-loss mode, per cluster: the semi-sync replicas of the current primary that
/// restarted while it was their source (their start time moved), from this node's own
/// probes. A restart discards the relay log, so what the replica acknowledged since its
/// received position was last seen may then be on the primary alone; a replica leaves
/// the list once it has received again everything the primary had executed when it
/// restarted (`owed`).
#[derive(Debug, Default)]
struct Restarts {
    primary: Option<InstanceAddr>,
    /// The primary's executed set at its latest successful probe, and when.
    primary_seen: Option<(primus_mysql::AnyGtidSet, u64)>,
    /// Each replica's server start time (unix ms) as last computed.
    started: HashMap<InstanceAddr, u64>,
    /// Restarted replicas: when, and what the primary had executed by then.
    restarted: std::collections::BTreeMap<InstanceAddr, (u64, Option<primus_mysql::AnyGtidSet>)>,
}

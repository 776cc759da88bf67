//! The replicated state and its pure, deterministic `apply`.
//!
//! The store persists this state key by key: every `apply` returns the keys it
//! touched ([`StateKey`]) and the store writes their current encoding
//! ([`Registry::encode`]) in one batch with the new `last_applied`. Keeping the
//! logic here, free of I/O, lets it be tested as a table and reused by any store.

use crate::command::{ClusterSettings, Command, Rejection, Request, Response};
use crate::failover::{FailoverOutcome, FailoverRecord, Maintenance, PromotionRule, Step, StepOutcome, StepRecord};
use crate::names::{ClusterName, InstanceAddr};
use crate::topology::Topology;
use crate::{LogId, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How many audit records the state machine keeps (oldest are dropped first).
pub const AUDIT_RETENTION: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: ClusterName,
    pub seeds: Vec<InstanceAddr>,
    #[serde(default)]
    pub settings: ClusterSettings,
    pub registered_at_index: u64,
    pub registered_at_ms: u64,
    pub registered_by: String,
    /// The agreed topology (empty until discovered).
    #[serde(default)]
    pub topology: Topology,
    /// Per-cluster fencing token: monotonic, starts at 1, bumped by every promotion.
    #[serde(default = "first_epoch")]
    pub epoch: u64,
    /// Log index of the last topology change.
    #[serde(default)]
    pub topology_index: u64,
    /// Failovers and switchovers, oldest first (bounded by `HISTORY_RETENTION`).
    #[serde(default)]
    pub history: Vec<FailoverRecord>,
    /// Former primaries: kept read-only, never promoted back on their own.
    #[serde(default)]
    pub demoted: std::collections::BTreeSet<InstanceAddr>,
    #[serde(default)]
    pub promotion_rules: BTreeMap<InstanceAddr, PromotionRule>,
    #[serde(default)]
    pub instance_maintenance: BTreeMap<InstanceAddr, Maintenance>,
    #[serde(default)]
    pub cluster_maintenance: Option<Maintenance>,
    /// Failovers the leader refused (most recent last, bounded by `REFUSAL_RETENTION`).
    #[serde(default)]
    pub refusals: Vec<crate::RefusalRecord>,
    /// Datacenter label per instance (set by operators; absent = unknown).
    #[serde(default)]
    pub datacenters: BTreeMap<InstanceAddr, String>,
    /// Fencing agents, per instance.
    #[serde(default)]
    pub agents: BTreeMap<InstanceAddr, crate::failover::AgentRecord>,
    /// Writable non-primaries the leader fenced (oldest first, bounded by
    /// `SPLIT_FENCE_RETENTION`).
    #[serde(default)]
    pub split_fences: Vec<crate::SplitFenceRecord>,
    /// Times the leader made a read-only primary writable again (oldest first,
    /// bounded by `SPLIT_FENCE_RETENTION`); same shape as a split fence.
    #[serde(default)]
    pub unfences: Vec<crate::SplitFenceRecord>,
}

/// What clients ask most: where to write, under which epoch, and whether that is
/// about to change. Derived from a [`ClusterRecord`]; the same on every node that
/// applied the same index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrimaryState {
    pub cluster: ClusterName,
    /// The agreed primary; `None` while none is known (discovery, or a failover
    /// that found no safe candidate).
    pub primary: Option<InstanceAddr>,
    pub epoch: u64,
    /// Datacenter label of the primary, when an operator set one.
    pub datacenter: Option<String>,
    /// The failover in progress, if any: its id, the instance it is promoting and
    /// the epoch it will establish.
    pub failover: Option<InFlight>,
    /// Former primaries kept read-only.
    pub demoted: Vec<InstanceAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InFlight {
    pub id: String,
    pub kind: String,
    pub old_primary: InstanceAddr,
    pub candidate: InstanceAddr,
    pub epoch: u64,
}

/// How many refusals a cluster keeps.
pub const REFUSAL_RETENTION: usize = 20;
/// Split fences kept per cluster.
pub const SPLIT_FENCE_RETENTION: usize = 50;

/// How many failover records a cluster keeps.
pub const HISTORY_RETENTION: usize = 100;

impl ClusterRecord {
    /// Where to write, at which epoch, and what is in flight.
    pub fn primary_state(&self) -> PrimaryState {
        PrimaryState {
            cluster: self.name.clone(),
            primary: self.topology.primary.clone(),
            epoch: self.epoch,
            datacenter: self.topology.primary.as_ref().and_then(|p| self.datacenters.get(p).cloned()),
            // A repair of an intermediate primary does not move the primary.
            failover: self.in_flight().filter(|f| f.kind.changes_primary()).map(|f| InFlight {
                id: f.id.clone(),
                kind: f.kind.to_string(),
                old_primary: f.old_primary.clone(),
                candidate: f.candidate.clone(),
                epoch: f.epoch,
            }),
            demoted: self.demoted.iter().cloned().collect(),
        }
    }

    /// The failover in progress, if any.
    pub fn in_flight(&self) -> Option<&FailoverRecord> {
        self.history.last().filter(|r| r.in_progress())
    }

    /// The failover an operator's request with id `request_id` started, if the history
    /// still holds it.
    pub fn failover_of_request(&self, request_id: &str) -> Option<&FailoverRecord> {
        self.history.iter().rev().find(|f| f.request_id.as_deref() == Some(request_id))
    }

    /// The failover of the history that the entry at `started_index` started.
    pub fn failover_started_at(&self, started_index: u64) -> Option<&FailoverRecord> {
        // Oldest first and ordered by index; the one asked for is usually the last.
        let at = self.history.partition_point(|f| f.started_index < started_index);
        self.history.get(at).filter(|f| f.started_index == started_index)
    }

    fn in_flight_mut(&mut self, id: &str) -> Option<&mut FailoverRecord> {
        self.history.last_mut().filter(|r| r.in_progress() && r.id == id)
    }

    /// Whether `addr` is under maintenance at `now_ms` (or the whole cluster is).
    pub fn in_maintenance(&self, addr: &InstanceAddr, now_ms: u64) -> bool {
        self.cluster_maintenance_at(now_ms).is_some() || self.instance_maintenance_at(addr, now_ms).is_some()
    }

    /// The whole cluster's maintenance, if it still runs at `now_ms`.
    pub fn cluster_maintenance_at(&self, now_ms: u64) -> Option<&Maintenance> {
        self.cluster_maintenance.as_ref().filter(|m| m.until_ms > now_ms)
    }

    /// `addr`'s own maintenance (not the cluster's), if it still runs at `now_ms`.
    pub fn instance_maintenance_at(&self, addr: &InstanceAddr, now_ms: u64) -> Option<&Maintenance> {
        self.instance_maintenance.get(addr).filter(|m| m.until_ms > now_ms)
    }
}

fn first_epoch() -> u64 {
    1
}

/// One line of the audit trail: every applied entry gets one, refused or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub index: u64,
    pub term: u64,
    pub time_ms: u64,
    pub actor: String,
    pub via_node: NodeId,
    pub summary: String,
    /// `"ok"` or the refusal reason.
    pub outcome: String,
}

/// A key of the persisted state; see [`Registry::encode`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum StateKey {
    /// A cluster's record without its history (`c/NAME`).
    Cluster(ClusterName),
    /// One failover record of a cluster's history, by the log index that started it
    /// (`h/NAME/INDEX`): a failover step rewrites its own record, not the cluster's
    /// hundred.
    Failover(ClusterName, u64),
    Audit(u64),
    /// [`Registry::members_seen`], one value.
    MembersSeen,
    /// [`Registry::feature_level`], one value.
    FeatureLevel,
    /// [`Registry::automatic_off`], one value.
    AutomaticOff,
}

const CLUSTER_PREFIX: &[u8] = b"c/";
/// `h/NAME/` then the failover's `started_index`, 8 bytes big-endian (so a cluster's
/// records sort oldest first and follow its `c/` key). Cluster names hold no `/`.
const HISTORY_PREFIX: &[u8] = b"h/";
const AUDIT_PREFIX: &[u8] = b"a/";
/// A whole key, not a prefix. Absent in a data_dir written before it existed
/// (the set is then empty until the leader records the members again).
const MEMBERS_SEEN_KEY: &[u8] = b"n/members_seen";
/// A whole key; absent until the group records a feature level.
const FEATURE_LEVEL_KEY: &[u8] = b"n/feature_level";
/// A whole key; absent while automatic failover is not switched off globally.
const AUTOMATIC_OFF_KEY: &[u8] = b"n/automatic_off";

/// A persisted key and its value (see [`Registry::encode`]).
pub type Encoded = (Vec<u8>, Vec<u8>);

/// A value of the state that serde_json could not encode (not expected for these
/// types; reported rather than written as a deletion).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode state key {key:?}: {source}")]
pub struct EncodeError {
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown state key prefix in {0:?}")]
    UnknownKey(String),
    #[error("failover record under {key:?} belongs to no stored cluster, or its key does not match it")]
    StrayFailover { key: String },
    #[error("bad state value for key {key:?}: {source}")]
    BadValue { key: String, source: serde_json::Error },
}

/// Everything the coordinators agree on: the cluster registry, the audit trail, and
/// which coordinators have held log entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Shared records: readers (the failover engine every tick, views) copy the map's
    /// pointers, not the records with their histories; a mutation copies a record only
    /// while someone still holds the old one.
    pub clusters: BTreeMap<ClusterName, Arc<ClusterRecord>>,
    pub audit: BTreeMap<u64, AuditRecord>,
    /// Node ids the group has seen hold Raft log entries ([`Command::MemberSeen`]).
    /// Such a node that starts again with an empty data_dir has lost its log and its
    /// vote. Never shrinks (node ids are never reused). Absent from snapshots and
    /// states written before it existed.
    #[serde(default)]
    pub members_seen: BTreeSet<NodeId>,
    /// The group's feature level ([`Command::SetFeatureLevel`]); 0 until one is
    /// recorded (states and snapshots written before it existed): read it through
    /// [`Registry::group_feature_level`].
    #[serde(default)]
    pub feature_level: u32,
    /// `primusctl automatic off --all`: automatic failover is off for every cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automatic_off: Option<GlobalSwitch>,
}

/// Who switched automatic failover off for every cluster, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalSwitch {
    pub reason: String,
    pub actor: String,
    pub at_ms: u64,
    pub index: u64,
}

impl Registry {
    /// The group's feature level: the commands the leader may propose
    /// ([`Command::check_feature_level`]). [`crate::BASE_FEATURE_LEVEL`] until one is recorded.
    pub fn group_feature_level(&self) -> u32 {
        self.feature_level.max(crate::BASE_FEATURE_LEVEL)
    }

    /// Apply one committed application entry. Deterministic: uses only the entry.
    pub fn apply(&mut self, log_id: &LogId, req: &Request) -> (Response, Vec<StateKey>) {
        let mut touched = Vec::new();
        let result = req.check_format().and_then(|()| self.apply_command(log_id, req, &mut touched));
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(r) => r.to_string(),
        };
        self.record(
            AuditRecord {
                index: log_id.index,
                term: log_id.leader_id.term,
                time_ms: req.proposed_at_ms,
                actor: req.origin.actor.clone(),
                via_node: req.origin.via_node,
                summary: req.command.summary(),
                outcome,
            },
            &mut touched,
        );
        let resp = match result {
            Ok(()) => Response::Done,
            Err(r) => Response::Rejected(r),
        };
        (resp, touched)
    }

    /// Record a non-application entry (membership change) in the audit trail.
    pub fn apply_internal(&mut self, log_id: &LogId, summary: String) -> Vec<StateKey> {
        let mut touched = Vec::new();
        self.record(
            AuditRecord {
                index: log_id.index,
                term: log_id.leader_id.term,
                time_ms: 0,
                actor: "raft".into(),
                via_node: log_id.leader_id.node_id,
                summary,
                outcome: "ok".into(),
            },
            &mut touched,
        );
        touched
    }

    fn apply_command(&mut self, log_id: &LogId, req: &Request, touched: &mut Vec<StateKey>) -> Result<(), Rejection> {
        match &req.command {
            Command::RegisterCluster { name, seeds, settings, topology } => {
                if self.clusters.contains_key(name) {
                    return Err(Rejection::ClusterExists(name.clone()));
                }
                if seeds.is_empty() {
                    return Err(Rejection::NoSeeds);
                }
                self.clusters.insert(
                    name.clone(),
                    Arc::new(ClusterRecord {
                        name: name.clone(),
                        seeds: seeds.clone(),
                        settings: settings.clone(),
                        registered_at_index: log_id.index,
                        registered_at_ms: req.proposed_at_ms,
                        registered_by: req.origin.actor.clone(),
                        topology: topology.clone().unwrap_or_default(),
                        epoch: first_epoch(),
                        topology_index: log_id.index,
                        history: Vec::new(),
                        demoted: Default::default(),
                        promotion_rules: BTreeMap::new(),
                        instance_maintenance: BTreeMap::new(),
                        cluster_maintenance: None,
                        refusals: Vec::new(),
                        datacenters: BTreeMap::new(),
                        agents: BTreeMap::new(),
                        split_fences: Vec::new(),
                        unfences: Vec::new(),
                    }),
                );
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::UpdateTopology { name, topology } => {
                let c = self.cluster_mut(name)?;
                // The failover owns the topology until it finishes.
                if let Some(f) = c.in_flight() {
                    return Err(Rejection::FailoverInProgress(name.clone(), f.id.clone()));
                }
                // Only a failover (write-ahead, with a new epoch and a lease wait) moves
                // the primary. A topology refresh may name one where there was none
                // (first discovery), never another one.
                if let Some(from) = &c.topology.primary {
                    if topology.primary.as_ref() != Some(from) {
                        return Err(Rejection::PrimaryMovesWithoutFailover {
                            name: name.clone(),
                            from: from.clone(),
                            to: topology.primary.as_ref().map_or_else(|| "none".to_string(), ToString::to_string),
                        });
                    }
                }
                c.topology = topology.clone().with_demoted(&c.demoted);
                c.topology_index = log_id.index;
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::StartFailover {
                name,
                id,
                kind,
                analysis_code,
                evidence,
                old_primary,
                candidate,
                epoch,
                plan,
                request_id,
            } => {
                let c = self.cluster_mut(name)?;
                if let Some(f) = c.in_flight() {
                    return Err(Rejection::FailoverInProgress(name.clone(), f.id.clone()));
                }
                // A repair of an intermediate primary changes no primary: it runs
                // under the current epoch instead of consuming one.
                let want = if kind.changes_primary() { c.epoch + 1 } else { c.epoch };
                if *epoch != want {
                    return Err(Rejection::StaleEpoch { name: name.clone(), got: *epoch, want });
                }
                c.epoch = *epoch;
                c.history.push(FailoverRecord {
                    id: id.clone(),
                    kind: *kind,
                    analysis_code: *analysis_code,
                    evidence: evidence.clone(),
                    old_primary: old_primary.clone(),
                    candidate: candidate.clone(),
                    epoch: *epoch,
                    plan: plan.clone(),
                    steps: Vec::new(),
                    started_at_ms: req.proposed_at_ms,
                    started_index: log_id.index,
                    started_by: req.origin.actor.clone(),
                    outcome: None,
                    finished_at_ms: None,
                    promotion_gtid: None,
                    promotion_binlog_state: None,
                    acked_by: None,
                    request_id: request_id.clone(),
                });
                touched.push(StateKey::Failover(name.clone(), log_id.index));
                if c.history.len() > HISTORY_RETENTION {
                    let dropped = c.history.remove(0);
                    touched.push(StateKey::Failover(name.clone(), dropped.started_index));
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::FailoverStep { name, id, index, description, outcome } => {
                let c = self.cluster_mut(name)?;
                let f = c
                    .in_flight_mut(id)
                    .ok_or_else(|| Rejection::NoSuchFailover { name: name.clone(), id: id.clone() })?;
                // A step recorded twice (a retried proposal) is a no-op, not an error.
                if (*index as usize) < f.steps.len() {
                    return Ok(());
                }
                f.steps.push(StepRecord {
                    index: *index,
                    description: description.clone(),
                    outcome: outcome.clone(),
                    at_ms: req.proposed_at_ms,
                    log_index: log_id.index,
                });
                // Only this failover's record: the cluster's own fields did not change.
                touched.push(StateKey::Failover(name.clone(), f.started_index));
                Ok(())
            }
            Command::FinishFailover { name, id, outcome, promotion_gtid } => {
                let c = self.cluster_mut(name)?;
                let f = c
                    .in_flight_mut(id)
                    .ok_or_else(|| Rejection::NoSuchFailover { name: name.clone(), id: id.clone() })?;
                // Success records the plan's last step (`complete`) in the same entry: a
                // leader dying between the two can no longer leave the failover with every
                // step recorded and no finish.
                if *outcome == FailoverOutcome::Succeeded && f.plan.get(f.steps.len()) == Some(&Step::Complete) {
                    f.steps.push(StepRecord {
                        index: f.steps.len() as u32,
                        description: Step::Complete.to_string(),
                        outcome: StepOutcome::complete(),
                        at_ms: req.proposed_at_ms,
                        log_index: log_id.index,
                    });
                }
                f.outcome = Some(outcome.clone());
                f.finished_at_ms = Some(req.proposed_at_ms);
                touched.push(StateKey::Failover(name.clone(), f.started_index));
                // The point recorded at the promote step wins over a later reading.
                if f.promotion_gtid.is_none() {
                    f.promotion_gtid = promotion_gtid.clone();
                }
                let (old, new) = (f.old_primary.clone(), f.candidate.clone());
                // A switchover repoints the old primary under the new one: it is a
                // healthy replica, not a demoted server.
                let switchover = f.kind == crate::FailoverKind::Switchover;
                if *outcome == FailoverOutcome::Succeeded && !f.kind.changes_primary() {
                    // Intermediate repair: the dead intermediate's replicas now replicate
                    // from its source; the intermediate itself keeps its place.
                    let nodes = c
                        .topology
                        .instances
                        .values()
                        .map(|i| {
                            let source =
                                if i.source.as_ref() == Some(&old) { Some(new.clone()) } else { i.source.clone() };
                            (i.addr.clone(), source, i.server_id, i.flavor.clone(), i.version.clone())
                        })
                        .collect();
                    let primary = c.topology.primary.clone();
                    c.topology = Topology::from_edges(nodes, primary.as_ref()).with_demoted(&c.demoted);
                    c.topology_index = log_id.index;
                } else if *outcome == FailoverOutcome::Succeeded {
                    if !switchover {
                        c.demoted.insert(old.clone());
                    }
                    c.demoted.remove(&new);
                    let nodes = c
                        .topology
                        .instances
                        .values()
                        .map(|i| {
                            let source = if i.addr == old && switchover {
                                Some(new.clone())
                            } else if i.addr == new || i.addr == old {
                                None
                            } else if i.source.as_ref() == Some(&old) {
                                Some(new.clone())
                            } else {
                                i.source.clone()
                            };
                            (i.addr.clone(), source, i.server_id, i.flavor.clone(), i.version.clone())
                        })
                        .collect();
                    c.topology = Topology::from_edges(nodes, Some(&new)).with_demoted(&c.demoted);
                    c.topology_index = log_id.index;
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::AckFailover { name, id } => {
                let c = self.cluster_mut(name)?;
                let mut found = false;
                for f in c.history.iter_mut().filter(|f| id.as_ref().is_none_or(|i| *i == f.id)) {
                    found = true;
                    if f.acked_by.is_none() {
                        f.acked_by = Some(req.origin.actor.clone());
                        touched.push(StateKey::Failover(name.clone(), f.started_index));
                    }
                }
                if let (Some(id), false) = (id, found) {
                    return Err(Rejection::NoSuchFailover { name: name.clone(), id: id.clone() });
                }
                Ok(())
            }
            Command::SetPromotionRule { name, instance, rule } => {
                let c = self.cluster_mut(name)?;
                if !c.topology.instances.contains_key(instance) {
                    return Err(Rejection::UnknownInstance { name: name.clone(), instance: instance.clone() });
                }
                c.promotion_rules.insert(instance.clone(), *rule);
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::RegisterAgent {
                name,
                instance,
                agent_id,
                ttl_ms,
                fence_timeout_ms,
                margin_ms,
                release,
                of_registration,
            } => {
                let c = self.cluster_mut(name)?;
                if !c.topology.instances.contains_key(instance) {
                    return Err(Rejection::UnknownInstance { name: name.clone(), instance: instance.clone() });
                }
                if let Some(reason) = release {
                    // Only the registered agent hands back the instance's lease; its
                    // recorded TTL and margin stay (a later registration clears it).
                    let current = |a: &&mut crate::failover::AgentRecord| {
                        a.agent_id == *agent_id
                            && a.registered_index.is_some()
                            && a.registered_index == *of_registration
                    };
                    let rec =
                        c.agents.get_mut(instance).filter(current).ok_or_else(|| Rejection::AgentNotRegistered {
                            name: name.clone(),
                            instance: instance.clone(),
                            agent_id: agent_id.clone(),
                        })?;
                    rec.released =
                        Some(crate::failover::LeaseRelease { at_ms: req.proposed_at_ms, reason: reason.clone() });
                    touched.push(StateKey::Cluster(name.clone()));
                    return Ok(());
                }
                // Leases an earlier agent of this instance holds may be longer than the new
                // agent's: the recorded TTL only grows.
                let before = c.agents.get(instance);
                let ttl_ms = (*ttl_ms).max(before.and_then(|a| a.ttl_ms));
                let fence_timeout_ms = (*fence_timeout_ms).max(before.and_then(|a| a.fence_timeout_ms));
                let margin_ms = (*margin_ms).max(before.and_then(|a| a.margin_ms));
                let rec = crate::failover::AgentRecord {
                    agent_id: agent_id.clone(),
                    registered_at_ms: req.proposed_at_ms,
                    ttl_ms,
                    fence_timeout_ms,
                    margin_ms,
                    released: None,
                    registered_index: Some(log_id.index),
                };
                c.agents.insert(instance.clone(), rec);
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::SetInstanceDatacenter { name, instance, datacenter } => {
                let c = self.cluster_mut(name)?;
                if !c.topology.instances.contains_key(instance) {
                    return Err(Rejection::UnknownInstance { name: name.clone(), instance: instance.clone() });
                }
                match datacenter {
                    Some(dc) => c.datacenters.insert(instance.clone(), dc.clone()),
                    None => c.datacenters.remove(instance),
                };
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::SetMaintenance { name, instance, maintenance } => {
                let c = self.cluster_mut(name)?;
                match (instance, maintenance) {
                    (Some(i), _) if !c.topology.instances.contains_key(i) => {
                        return Err(Rejection::UnknownInstance { name: name.clone(), instance: i.clone() })
                    }
                    (Some(i), Some(m)) => {
                        c.instance_maintenance.insert(i.clone(), m.clone());
                    }
                    (Some(i), None) => {
                        c.instance_maintenance.remove(i);
                    }
                    (None, m) => c.cluster_maintenance = m.clone(),
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::SetAutomaticFailover { name, enabled } => {
                let c = self.cluster_mut(name)?;
                c.settings.automatic_failover = *enabled;
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::SetSemiSync { name, enabled } => {
                let c = self.cluster_mut(name)?;
                c.settings.semi_sync = *enabled;
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::RecordRefusal { name, analysis_code, evidence, reason } => {
                let c = self.cluster_mut(name)?;
                c.refusals.push(crate::RefusalRecord {
                    at_ms: req.proposed_at_ms,
                    analysis_code: *analysis_code,
                    evidence: evidence.clone(),
                    reason: reason.clone(),
                });
                if c.refusals.len() > REFUSAL_RETENTION {
                    c.refusals.remove(0);
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::FenceSplit { name, id, instance, epoch, evidence } => {
                let c = self.cluster_mut(name)?;
                if let Some(f) = c.in_flight() {
                    return Err(Rejection::FailoverInProgress(name.clone(), f.id.clone()));
                }
                if *epoch != c.epoch {
                    return Err(Rejection::StaleEpoch { name: name.clone(), got: *epoch, want: c.epoch });
                }
                if !c.topology.instances.contains_key(instance) {
                    return Err(Rejection::UnknownInstance { name: name.clone(), instance: instance.clone() });
                }
                if c.topology.primary.as_ref() == Some(instance) {
                    return Err(Rejection::IsPrimary { name: name.clone(), instance: instance.clone() });
                }
                c.split_fences.push(crate::SplitFenceRecord {
                    id: id.clone(),
                    at_ms: req.proposed_at_ms,
                    instance: instance.clone(),
                    epoch: *epoch,
                    evidence: evidence.clone(),
                    outcome: None,
                    finished_at_ms: None,
                });
                if c.split_fences.len() > SPLIT_FENCE_RETENTION {
                    c.split_fences.remove(0);
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::FinishSplitFence { name, id, outcome } => {
                let c = self.cluster_mut(name)?;
                let f = c
                    .split_fences
                    .iter_mut()
                    .find(|f| &f.id == id)
                    .ok_or_else(|| Rejection::NoSuchSplitFence { name: name.clone(), id: id.clone() })?;
                f.outcome = Some(outcome.clone());
                f.finished_at_ms = Some(req.proposed_at_ms);
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::UnfencePrimary { name, id, instance, epoch, evidence } => {
                let c = self.cluster_mut(name)?;
                if let Some(f) = c.in_flight() {
                    return Err(Rejection::FailoverInProgress(name.clone(), f.id.clone()));
                }
                if *epoch != c.epoch {
                    return Err(Rejection::StaleEpoch { name: name.clone(), got: *epoch, want: c.epoch });
                }
                if c.topology.primary.as_ref() != Some(instance) {
                    return Err(Rejection::NotPrimary { name: name.clone(), instance: instance.clone() });
                }
                c.unfences.push(crate::SplitFenceRecord {
                    id: id.clone(),
                    at_ms: req.proposed_at_ms,
                    instance: instance.clone(),
                    epoch: *epoch,
                    evidence: evidence.clone(),
                    outcome: None,
                    finished_at_ms: None,
                });
                if c.unfences.len() > SPLIT_FENCE_RETENTION {
                    c.unfences.remove(0);
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::FinishUnfence { name, id, outcome } => {
                let c = self.cluster_mut(name)?;
                let f = c
                    .unfences
                    .iter_mut()
                    .find(|f| &f.id == id)
                    .ok_or_else(|| Rejection::NoSuchSplitFence { name: name.clone(), id: id.clone() })?;
                f.outcome = Some(outcome.clone());
                f.finished_at_ms = Some(req.proposed_at_ms);
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::ClearDemoted { name, instance, .. } => {
                let c = self.cluster_mut(name)?;
                c.demoted.remove(instance);
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::RecordPromotionPoint { name, id, gtid, binlog_state } => {
                let c = self.cluster_mut(name)?;
                let f = c
                    .in_flight_mut(id)
                    .ok_or_else(|| Rejection::NoSuchFailover { name: name.clone(), id: id.clone() })?;
                // A re-run promote step (new leader) reads later: the first reading wins.
                if f.promotion_gtid.is_none() {
                    f.promotion_gtid = Some(gtid.clone());
                    f.promotion_binlog_state = binlog_state.clone();
                    touched.push(StateKey::Failover(name.clone(), f.started_index));
                }
                Ok(())
            }
            Command::MemberSeen { id } => {
                if self.members_seen.insert(*id) {
                    touched.push(StateKey::MembersSeen);
                }
                Ok(())
            }
            Command::SetGlobalAutomaticFailover { enabled, reason } => {
                self.automatic_off = (!enabled).then(|| GlobalSwitch {
                    reason: reason.clone().unwrap_or_default(),
                    actor: req.origin.actor.clone(),
                    at_ms: req.proposed_at_ms,
                    index: log_id.index,
                });
                touched.push(StateKey::AutomaticOff);
                Ok(())
            }
            Command::ForgetInstance { name, instance } => {
                let c = self.cluster_mut(name)?;
                let in_use =
                    |why: String| Rejection::InstanceInUse { name: name.clone(), instance: instance.clone(), why };
                if !c.topology.instances.contains_key(instance) && !c.seeds.contains(instance) {
                    return Err(Rejection::UnknownInstance { name: name.clone(), instance: instance.clone() });
                }
                if c.topology.primary.as_ref() == Some(instance) {
                    return Err(in_use("it is the primary (switch over to another instance first)".into()));
                }
                if let Some(f) = c.in_flight() {
                    return Err(Rejection::FailoverInProgress(name.clone(), f.id.clone()));
                }
                let below: Vec<String> = c
                    .topology
                    .instances
                    .values()
                    .filter(|i| i.source.as_ref() == Some(instance))
                    .map(|i| i.addr.to_string())
                    .collect();
                if !below.is_empty() {
                    return Err(in_use(format!("{} replicate from it (relocate them first)", below.join(", "))));
                }
                c.topology.instances.remove(instance);
                c.seeds.retain(|s| s != instance);
                if c.seeds.is_empty() {
                    c.seeds.extend(c.topology.primary.clone());
                }
                c.promotion_rules.remove(instance);
                c.instance_maintenance.remove(instance);
                c.datacenters.remove(instance);
                c.agents.remove(instance);
                c.demoted.remove(instance);
                c.topology_index = log_id.index;
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::SetClusterSettings { name, settings } => {
                let c = self.cluster_mut(name)?;
                let mut next = c.settings.clone();
                for (k, v) in settings {
                    next.set(k, v.as_deref())
                        .map_err(|message| Rejection::BadSetting { name: name.clone(), message })?;
                }
                c.settings = next;
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::RelocateReplica { name, instance, below, .. } => {
                let c = self.cluster_mut(name)?;
                for a in [instance, below] {
                    if !c.topology.instances.contains_key(a) {
                        return Err(Rejection::UnknownInstance { name: name.clone(), instance: a.clone() });
                    }
                }
                if c.topology.primary.as_ref() == Some(instance) {
                    return Err(Rejection::InstanceInUse {
                        name: name.clone(),
                        instance: instance.clone(),
                        why: "it is the primary: it is not relocated (a switchover moves the primary)".into(),
                    });
                }
                if instance == below {
                    return Err(Rejection::InstanceInUse {
                        name: name.clone(),
                        instance: instance.clone(),
                        why: "it cannot replicate from itself".into(),
                    });
                }
                if let Some(f) = c.in_flight() {
                    return Err(Rejection::FailoverInProgress(name.clone(), f.id.clone()));
                }
                // The record is the audit line; the topology follows from the probes.
                Ok(())
            }
            Command::SetFeatureLevel { level } => {
                // Never down: a delayed proposal of a lower level changes nothing.
                if *level > self.feature_level {
                    self.feature_level = *level;
                    touched.push(StateKey::FeatureLevel);
                }
                Ok(())
            }
            Command::UnregisterCluster { name } => {
                let Some(removed) = self.clusters.remove(name) else {
                    return Err(Rejection::ClusterNotFound(name.clone()));
                };
                touched.push(StateKey::Cluster(name.clone()));
                touched.extend(removed.history.iter().map(|f| StateKey::Failover(name.clone(), f.started_index)));
                Ok(())
            }
        }
    }

    fn cluster_mut(&mut self, name: &ClusterName) -> Result<&mut ClusterRecord, Rejection> {
        self.clusters.get_mut(name).map(Arc::make_mut).ok_or_else(|| Rejection::ClusterNotFound(name.clone()))
    }

    fn record(&mut self, rec: AuditRecord, touched: &mut Vec<StateKey>) {
        touched.push(StateKey::Audit(rec.index));
        self.audit.insert(rec.index, rec);
        while self.audit.len() > AUDIT_RETENTION {
            if let Some((old, _)) = self.audit.pop_first() {
                touched.push(StateKey::Audit(old));
            }
        }
    }

    /// The persisted form of `key`: its storage key and current value (`None` = deleted).
    /// A value that cannot be encoded is an error, never a deletion.
    pub fn encode(&self, key: &StateKey) -> Result<(Vec<u8>, Option<Vec<u8>>), EncodeError> {
        fn json<T: Serialize>(key: &[u8], v: Option<&T>) -> Result<Option<Vec<u8>>, EncodeError> {
            v.map(serde_json::to_vec)
                .transpose()
                .map_err(|source| EncodeError { key: String::from_utf8_lossy(key).into_owned(), source })
        }
        match key {
            StateKey::Cluster(name) => {
                let mut k = CLUSTER_PREFIX.to_vec();
                k.extend_from_slice(name.as_str().as_bytes());
                let v = json(&k, self.clusters.get(name).map(|c| ClusterCore::of(c)).as_ref())?;
                Ok((k, v))
            }
            StateKey::Failover(name, started_index) => {
                let k = history_key(name, *started_index);
                let record = self.clusters.get(name).and_then(|c| c.failover_started_at(*started_index));
                let v = json(&k, record)?;
                Ok((k, v))
            }
            StateKey::Audit(idx) => {
                let mut k = AUDIT_PREFIX.to_vec();
                k.extend_from_slice(&idx.to_be_bytes());
                let v = json(&k, self.audit.get(idx))?;
                Ok((k, v))
            }
            StateKey::MembersSeen => {
                let v = json(MEMBERS_SEEN_KEY, Some(&self.members_seen).filter(|s| !s.is_empty()))?;
                Ok((MEMBERS_SEEN_KEY.to_vec(), v))
            }
            StateKey::FeatureLevel => {
                let v = json(FEATURE_LEVEL_KEY, Some(&self.feature_level).filter(|l| **l > 0))?;
                Ok((FEATURE_LEVEL_KEY.to_vec(), v))
            }
            StateKey::AutomaticOff => {
                let v = json(AUTOMATIC_OFF_KEY, self.automatic_off.as_ref())?;
                Ok((AUTOMATIC_OFF_KEY.to_vec(), v))
            }
        }
    }

    /// Every key/value pair of the state, for writing a whole state at once.
    pub fn encode_all(&self) -> Result<Vec<Encoded>, EncodeError> {
        let keys = self
            .clusters
            .keys()
            .map(|n| StateKey::Cluster(n.clone()))
            .chain(
                self.clusters
                    .iter()
                    .flat_map(|(n, c)| c.history.iter().map(move |f| StateKey::Failover(n.clone(), f.started_index))),
            )
            .chain(self.audit.keys().map(|i| StateKey::Audit(*i)))
            .chain([StateKey::MembersSeen, StateKey::FeatureLevel, StateKey::AutomaticOff]);
        let mut out = Vec::new();
        for key in keys {
            if let (k, Some(v)) = self.encode(&key)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Load one persisted pair (inverse of [`Registry::encode`]). Pairs come in key
    /// order, as the store iterates them: a cluster's `c/` key before its `h/` keys.
    ///
    /// [`Loaded::Legacy`]: the pair was written by a release that kept the history
    /// inside the cluster's record; the store rewrites the whole state once.
    pub fn load(&mut self, key: &[u8], value: &[u8]) -> Result<Loaded, DecodeError> {
        let name = || String::from_utf8_lossy(key).into_owned();
        if key == MEMBERS_SEEN_KEY {
            self.members_seen =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
        } else if key == FEATURE_LEVEL_KEY {
            self.feature_level =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
        } else if key == AUTOMATIC_OFF_KEY {
            self.automatic_off =
                Some(serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?);
        } else if key.starts_with(CLUSTER_PREFIX) {
            let rec: ClusterRecord =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
            let legacy = !rec.history.is_empty();
            self.clusters.insert(rec.name.clone(), Arc::new(rec));
            if legacy {
                return Ok(Loaded::Legacy);
            }
        } else if let Some(rest) = key.strip_prefix(HISTORY_PREFIX) {
            let rec: FailoverRecord =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
            let cluster = rest
                .len()
                .checked_sub(9)
                .filter(|&at| rest[at] == b'/' && rest[at + 1..] == rec.started_index.to_be_bytes())
                .and_then(|at| std::str::from_utf8(&rest[..at]).ok())
                .and_then(|n| n.parse::<ClusterName>().ok())
                .and_then(|n| self.clusters.get_mut(&n))
                .ok_or_else(|| DecodeError::StrayFailover { key: name() })?;
            let history = &mut Arc::make_mut(cluster).history;
            let at = history.partition_point(|f| f.started_index < rec.started_index);
            if history.get(at).is_some_and(|f| f.started_index == rec.started_index) {
                history[at] = rec;
            } else {
                history.insert(at, rec);
            }
        } else if key.starts_with(AUDIT_PREFIX) {
            let rec: AuditRecord =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
            self.audit.insert(rec.index, rec);
        } else {
            return Err(DecodeError::UnknownKey(name()));
        }
        Ok(Loaded::Current)
    }
}

/// How a persisted pair was written (see [`Registry::load`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Loaded {
    /// In this release's layout.
    Current,
    /// A cluster record with its history inside (data format 1): the state must be
    /// rewritten in the current layout, or the next write of that cluster's record
    /// would drop its history from disk.
    Legacy,
}

/// The persisted pairs of a state, kept up to date the way the store keeps its tree:
/// after each apply, the touched keys' encodings. The simulator and tests compare
/// [`KeyImage::load`] with the state in memory, which shows that every apply names
/// every key it changed (a key it forgot would be lost at the next restart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyImage(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl KeyImage {
    /// Every pair of `registry`, as written at once (a snapshot install).
    pub fn of(registry: &Registry) -> Result<KeyImage, EncodeError> {
        Ok(KeyImage(registry.encode_all()?.into_iter().collect()))
    }

    /// Write the current encoding of `touched`, as the store does after an apply.
    pub fn write<'k>(
        &mut self,
        registry: &Registry,
        touched: impl IntoIterator<Item = &'k StateKey>,
    ) -> Result<(), EncodeError> {
        for key in touched {
            match registry.encode(key)? {
                (k, Some(v)) => self.0.insert(k, v),
                (k, None) => self.0.remove(&k),
            };
        }
        Ok(())
    }

    /// The registry these pairs load as (as the store loads its tree at start).
    pub fn load(&self) -> Result<Registry, DecodeError> {
        let mut r = Registry::default();
        for (k, v) in &self.0 {
            let _ = r.load(k, v)?;
        }
        Ok(r)
    }
}

fn history_key(name: &ClusterName, started_index: u64) -> Vec<u8> {
    let mut k = HISTORY_PREFIX.to_vec();
    k.extend_from_slice(name.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(&started_index.to_be_bytes());
    k
}

/// A [`ClusterRecord`] as stored under its `c/` key: every field but `history`, which
/// is stored a record per key. Decodes as a `ClusterRecord` with an empty history.
#[derive(Serialize)]
struct ClusterCore<'a> {
    name: &'a ClusterName,
    seeds: &'a Vec<InstanceAddr>,
    settings: &'a ClusterSettings,
    registered_at_index: u64,
    registered_at_ms: u64,
    registered_by: &'a str,
    topology: &'a Topology,
    epoch: u64,
    topology_index: u64,
    demoted: &'a BTreeSet<InstanceAddr>,
    promotion_rules: &'a BTreeMap<InstanceAddr, PromotionRule>,
    instance_maintenance: &'a BTreeMap<InstanceAddr, Maintenance>,
    cluster_maintenance: &'a Option<Maintenance>,
    refusals: &'a Vec<crate::RefusalRecord>,
    datacenters: &'a BTreeMap<InstanceAddr, String>,
    agents: &'a BTreeMap<InstanceAddr, crate::failover::AgentRecord>,
    split_fences: &'a Vec<crate::SplitFenceRecord>,
    unfences: &'a Vec<crate::SplitFenceRecord>,
}

impl<'a> ClusterCore<'a> {
    fn of(c: &'a ClusterRecord) -> Self {
        // No `..`: a field added to ClusterRecord must be added here, or it would not
        // be persisted.
        let ClusterRecord {
            name,
            seeds,
            settings,
            registered_at_index,
            registered_at_ms,
            registered_by,
            topology,
            epoch,
            topology_index,
            history: _,
            demoted,
            promotion_rules,
            instance_maintenance,
            cluster_maintenance,
            refusals,
            datacenters,
            agents,
            split_fences,
            unfences,
        } = c;
        ClusterCore {
            name,
            seeds,
            settings,
            registered_at_index: *registered_at_index,
            registered_at_ms: *registered_at_ms,
            registered_by,
            topology,
            epoch: *epoch,
            topology_index: *topology_index,
            demoted,
            promotion_rules,
            instance_maintenance,
            cluster_maintenance,
            refusals,
            datacenters,
            agents,
            split_fences,
            unfences,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Origin;
    use openraft::CommittedLeaderId;

    fn log_id(i: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), i)
    }
    fn reg(name: &str) -> Request {
        Request::new(
            Command::RegisterCluster {
                name: name.parse().unwrap(),
                seeds: vec!["h:3306".parse().unwrap()],
                settings: Default::default(),
                topology: None,
            },
            Origin { actor: "test".into(), via_node: 2 },
        )
    }

    #[test]
    fn duplicate_registration_is_refused_and_audited() {
        let mut r = Registry::default();
        assert_eq!(r.apply(&log_id(1), &reg("c1")).0, Response::Done);
        let (resp, _) = r.apply(&log_id(2), &reg("c1"));
        assert!(matches!(resp, Response::Rejected(Rejection::ClusterExists(_))));
        assert_eq!(r.clusters.len(), 1);
        assert_eq!(r.audit.len(), 2);
        assert_eq!(r.audit[&1].outcome, "ok");
        assert!(r.audit[&2].outcome.contains("already registered"));
        assert_eq!(r.audit[&2].via_node, 2);
    }

    #[test]
    fn unregister_unknown_is_refused() {
        let mut r = Registry::default();
        let req = Request::new(Command::UnregisterCluster { name: "nope".parse().unwrap() }, Origin::default());
        assert!(matches!(r.apply(&log_id(1), &req).0, Response::Rejected(Rejection::ClusterNotFound(_))));
    }

    #[test]
    fn encode_load_round_trip_reproduces_state() {
        let mut r = Registry::default();
        r.apply(&log_id(1), &reg("a"));
        r.apply(&log_id(2), &reg("b"));
        let unreg = Request::new(Command::UnregisterCluster { name: "a".parse().unwrap() }, Origin::default());
        let (_, touched) = r.apply(&log_id(3), &unreg);
        assert!(r.encode(&touched[0]).unwrap().1.is_none(), "unregistered cluster must encode as a delete");
        assert_eq!(KeyImage::of(&r).unwrap().load().unwrap(), r);
    }

    fn seen(id: NodeId) -> Request {
        Request::new(Command::MemberSeen { id }, Origin { actor: "primusd".into(), via_node: 1 })
    }

    #[test]
    fn member_seen_is_recorded_once_persisted_under_its_own_key_and_audited() {
        let mut r = Registry::default();
        let (resp, touched) = r.apply(&log_id(1), &seen(2));
        assert_eq!(resp, Response::Done);
        assert_eq!(touched, vec![StateKey::MembersSeen, StateKey::Audit(1)]);
        // Idempotent: a second proposal (e.g. a new leader's) changes nothing but the audit.
        let (resp, touched) = r.apply(&log_id(2), &seen(2));
        assert_eq!(resp, Response::Done);
        assert_eq!(touched, vec![StateKey::Audit(2)]);
        r.apply(&log_id(3), &seen(1));
        assert_eq!(r.members_seen, BTreeSet::from([1, 2]));
        assert_eq!(r.audit[&1].summary, "node 2 holds Raft log entries");
        let (key, value) = r.encode(&StateKey::MembersSeen).unwrap();
        assert_eq!(key, b"n/members_seen");
        assert_eq!(value.as_deref(), Some(&b"[1,2]"[..]));
        r.apply(&log_id(4), &reg("c1"));
        assert_eq!(KeyImage::of(&r).unwrap().load().unwrap(), r);
        // Nothing recorded: no key at all (the store deletes it / never writes it).
        assert_eq!(Registry::default().encode(&StateKey::MembersSeen).unwrap().1, None);
        assert!(Registry::default().encode_all().unwrap().is_empty());
    }

    #[test]
    fn the_feature_level_only_grows_is_persisted_under_its_own_key_and_defaults_to_the_base() {
        let set =
            |level| Request::new(Command::SetFeatureLevel { level }, Origin { actor: "primusd".into(), via_node: 1 });
        let mut r = Registry::default();
        assert_eq!(r.group_feature_level(), crate::BASE_FEATURE_LEVEL);
        assert_eq!(r.encode(&StateKey::FeatureLevel).unwrap().1, None, "nothing stored until recorded");
        let (resp, touched) = r.apply(&log_id(1), &set(2));
        assert_eq!(resp, Response::Done);
        assert_eq!(touched, vec![StateKey::FeatureLevel, StateKey::Audit(1)]);
        assert_eq!(r.group_feature_level(), 2);
        // A lower (delayed) proposal changes nothing but the audit.
        let (resp, touched) = r.apply(&log_id(2), &set(1));
        assert_eq!(resp, Response::Done);
        assert_eq!(touched, vec![StateKey::Audit(2)]);
        assert_eq!(r.group_feature_level(), 2);
        let (key, value) = r.encode(&StateKey::FeatureLevel).unwrap();
        assert_eq!(key, b"n/feature_level");
        assert_eq!(value.as_deref(), Some(&b"2"[..]));
        assert_eq!(KeyImage::of(&r).unwrap().load().unwrap(), r);
        // A snapshot written before the field existed loads at the base level.
        let mut json = serde_json::to_value(Registry::default()).unwrap();
        json.as_object_mut().unwrap().remove("feature_level");
        let old: Registry = serde_json::from_value(json).unwrap();
        assert_eq!(old.group_feature_level(), crate::BASE_FEATURE_LEVEL);
    }

    #[test]
    fn states_written_before_members_seen_existed_load_with_an_empty_set() {
        // A data_dir of an earlier release: cluster and audit keys only.
        let mut old = Registry::default();
        old.apply(&log_id(1), &reg("c1"));
        let mut loaded = KeyImage::of(&old).unwrap().load().unwrap();
        assert!(loaded.members_seen.is_empty());
        assert_eq!(loaded, old);
        // A snapshot of an earlier release: the registry's JSON without the field.
        let mut json = serde_json::to_value(&old).unwrap();
        json.as_object_mut().unwrap().remove("members_seen");
        let from_snapshot: Registry = serde_json::from_value(json).unwrap();
        assert_eq!(from_snapshot, old);
        assert!(matches!(loaded.load(b"n/members_seen", b"{}"), Err(DecodeError::BadValue { .. })));
    }

    #[test]
    fn audit_is_bounded() {
        let mut r = Registry::default();
        for i in 1..=(AUDIT_RETENTION as u64 + 5) {
            r.apply_internal(&log_id(i), "x".into());
        }
        assert_eq!(r.audit.len(), AUDIT_RETENTION);
        assert_eq!(*r.audit.keys().next().unwrap(), 6);
    }

    fn start(name: &str, epoch: u64) -> Request {
        Request::new(
            Command::StartFailover {
                name: name.parse().unwrap(),
                id: format!("{name}-e{epoch}"),
                kind: crate::FailoverKind::Automatic,
                analysis_code: crate::AnalysisCode::DeadPrimary,
                evidence: vec![],
                old_primary: "h:1".parse().unwrap(),
                candidate: "h:2".parse().unwrap(),
                epoch,
                plan: vec![],
                request_id: None,
            },
            Origin::default(),
        )
    }

    fn registered_with_topology() -> Registry {
        let mut r = Registry::default();
        r.apply(&log_id(1), &reg("c"));
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        let topo = Topology::from_edges(
            vec![
                (a(1), None, 1, "mariadb".into(), "10.11".into()),
                (a(2), Some(a(1)), 2, "mariadb".into(), "10.11".into()),
                (a(3), Some(a(1)), 3, "mariadb".into(), "10.11".into()),
            ],
            None,
        );
        let up =
            Request::new(Command::UpdateTopology { name: "c".parse().unwrap(), topology: topo }, Origin::default());
        assert_eq!(r.apply(&log_id(2), &up).0, Response::Done);
        r
    }

    /// Issue 16: `instance forget` drops a decommissioned instance and everything kept
    /// for it, and refuses the primary, an instance others replicate from, and
    /// instances the cluster does not have.
    #[test]
    fn forgetting_an_instance_drops_it_and_its_settings_and_refuses_what_the_cluster_relies_on() {
        let mut r = registered_with_topology();
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        let c: ClusterName = "c".parse().unwrap();
        let forget =
            |p: u16| Request::new(Command::ForgetInstance { name: c.clone(), instance: a(p) }, Origin::default());
        let rule = Request::new(
            Command::SetPromotionRule { name: c.clone(), instance: a(3), rule: crate::PromotionRule::MustNot },
            Origin::default(),
        );
        assert_eq!(r.apply(&log_id(3), &rule).0, Response::Done);
        // The primary, and an instance the cluster does not have.
        assert!(matches!(r.apply(&log_id(4), &forget(1)).0, Response::Rejected(Rejection::InstanceInUse { .. })));
        assert!(matches!(r.apply(&log_id(5), &forget(9)).0, Response::Rejected(Rejection::UnknownInstance { .. })));
        // A replica: gone, with its rule; persisted that way.
        let (resp, touched) = r.apply(&log_id(6), &forget(3));
        assert_eq!(resp, Response::Done);
        assert!(touched.contains(&StateKey::Cluster(c.clone())));
        let rec = &r.clusters[&c];
        assert!(!rec.topology.instances.contains_key(&a(3)));
        assert!(rec.promotion_rules.is_empty());
        assert_eq!(rec.topology.instances.len(), 2);
        assert_eq!(KeyImage::of(&r).unwrap().load().unwrap(), r);
        // Again: unknown now.
        assert!(matches!(r.apply(&log_id(7), &forget(3)).0, Response::Rejected(Rejection::UnknownInstance { .. })));
        // An intermediate primary (h:4 replicates from h:2): refused, naming its replica.
        let topo = Topology::from_edges(
            vec![
                (a(1), None, 1, "mariadb".into(), "10.11".into()),
                (a(2), Some(a(1)), 2, "mariadb".into(), "10.11".into()),
                (a(4), Some(a(2)), 4, "mariadb".into(), "10.11".into()),
            ],
            Some(&a(1)),
        );
        let up = Request::new(Command::UpdateTopology { name: c.clone(), topology: topo }, Origin::default());
        assert_eq!(r.apply(&log_id(8), &up).0, Response::Done);
        match r.apply(&log_id(9), &forget(2)).0 {
            Response::Rejected(e @ Rejection::InstanceInUse { .. }) => {
                assert!(e.to_string().contains("h:4 replicate from it"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn automatic_failover_switched_off_for_every_cluster_is_recorded_persisted_and_cleared() {
        let mut r = registered_with_topology();
        let off = Request::at(
            Command::SetGlobalAutomaticFailover { enabled: false, reason: Some("DC move".into()) },
            Origin { actor: "ops".into(), via_node: 1 },
            1234,
        );
        let (resp, touched) = r.apply(&log_id(3), &off);
        assert_eq!(resp, Response::Done);
        assert_eq!(touched[0], StateKey::AutomaticOff);
        let sw = r.automatic_off.clone().unwrap();
        assert_eq!((sw.reason.as_str(), sw.actor.as_str(), sw.at_ms, sw.index), ("DC move", "ops", 1234, 3));
        assert_eq!(KeyImage::of(&r).unwrap().load().unwrap(), r);
        let on = Request::new(Command::SetGlobalAutomaticFailover { enabled: true, reason: None }, Origin::default());
        r.apply(&log_id(4), &on);
        assert_eq!(r.automatic_off, None);
        assert_eq!(r.encode(&StateKey::AutomaticOff).unwrap().1, None, "cleared: the key is deleted");
        assert_eq!(KeyImage::of(&r).unwrap().load().unwrap(), r);
    }

    /// Issue 14: the registered agent hands its lease back (recorded with the reason;
    /// TTL and margin kept); another agent cannot; the next registration clears it; an
    /// entry written without the field decodes as a registration.
    #[test]
    fn only_the_registered_agent_releases_its_lease_and_registering_again_takes_it_back() {
        let mut r = registered_with_topology();
        let inst = crate::InstanceAddr::new("h", 1).unwrap();
        let cmd = |agent: &str, release: Option<(&str, u64)>| {
            Request::at(
                Command::RegisterAgent {
                    name: "c".parse().unwrap(),
                    instance: inst.clone(),
                    agent_id: agent.into(),
                    ttl_ms: Some(1500),
                    fence_timeout_ms: Some(500),
                    margin_ms: Some(700),
                    release: release.map(|r| r.0.to_string()),
                    of_registration: release.map(|r| r.1),
                },
                Origin::default(),
                77,
            )
        };
        let rec = |r: &Registry| r.clusters[&"c".parse::<ClusterName>().unwrap()].agents.get(&inst).cloned();
        let refused = |resp: Response| matches!(resp, Response::Rejected(Rejection::AgentNotRegistered { .. }));
        // Nobody registered: nothing to release.
        assert!(refused(r.apply(&log_id(3), &cmd("a1", Some(("mysqld exited", 3)))).0));
        assert_eq!(rec(&r), None);
        assert_eq!(r.apply(&log_id(4), &cmd("a1", None)).0, Response::Done);
        assert_eq!(rec(&r).and_then(|a| a.registered_index), Some(4));
        // Another agent, or another registration of this one: refused.
        assert!(refused(r.apply(&log_id(5), &cmd("a2", Some(("mysqld exited", 4)))).0));
        assert!(refused(r.apply(&log_id(6), &cmd("a1", Some(("mysqld exited", 3)))).0));
        assert_eq!(rec(&r).and_then(|a| a.released), None);
        assert_eq!(r.apply(&log_id(7), &cmd("a1", Some(("mysqld pid 7 exited", 4)))).0, Response::Done);
        let a = rec(&r).unwrap();
        assert_eq!(
            (a.agent_id.as_str(), a.ttl_ms, a.margin_ms, a.registered_index, a.released.map(|x| (x.at_ms, x.reason))),
            ("a1", Some(1500), Some(700), Some(4), Some((77, "mysqld pid 7 exited".to_string())))
        );
        // Registering again takes the lease back; a release of the earlier registration
        // that arrives late (delayed in the network) is refused.
        assert_eq!(r.apply(&log_id(8), &cmd("a1", None)).0, Response::Done);
        assert_eq!(rec(&r).and_then(|a| a.released), None);
        assert!(refused(r.apply(&log_id(9), &cmd("a1", Some(("mysqld pid 7 exited", 4)))).0));
        assert_eq!(rec(&r).and_then(|a| a.released), None);
        let json = serde_json::json!({"RegisterAgent": {"name": "c", "instance": "h:1", "agent_id": "a3"}});
        assert!(matches!(
            serde_json::from_value::<Command>(json).unwrap(),
            Command::RegisterAgent { release: None, .. }
        ));
    }

    /// Issue 12 item 7b: what an agent's leases are counted with (TTL, fence time, the
    /// margin of the leaders that granted them) only grows in Raft, whichever agent or
    /// leader registers next, and a record written before the margin existed loads.
    #[test]
    fn an_agent_s_recorded_lease_ttl_and_margin_never_shrink() {
        let mut r = registered_with_topology();
        let inst = crate::InstanceAddr::new("h", 1).unwrap();
        let register = |agent: &str, ttl: u64, margin: Option<u64>| {
            Request::new(
                Command::RegisterAgent {
                    name: "c".parse().unwrap(),
                    instance: inst.clone(),
                    agent_id: agent.into(),
                    ttl_ms: Some(ttl),
                    fence_timeout_ms: Some(500),
                    margin_ms: margin,
                    release: None,
                    of_registration: None,
                },
                Origin::default(),
            )
        };
        let rec = |r: &Registry| r.clusters[&"c".parse::<ClusterName>().unwrap()].agents[&inst].clone();
        assert_eq!(r.apply(&log_id(3), &register("a1", 6000, Some(3000))).0, Response::Done);
        // A new agent with a shorter TTL, registered by a leader with a smaller margin
        // (and one by an older leader that sends none).
        assert_eq!(r.apply(&log_id(4), &register("a2", 1500, Some(100))).0, Response::Done);
        assert_eq!(r.apply(&log_id(5), &register("a2", 1500, None)).0, Response::Done);
        let a = rec(&r);
        assert_eq!((a.agent_id.as_str(), a.ttl_ms, a.margin_ms), ("a2", Some(6000), Some(3000)));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["margin_ms"], 3000);
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("margin_ms");
        let loaded: crate::failover::AgentRecord = serde_json::from_value(old).unwrap();
        assert_eq!(loaded.margin_ms, None);
        // A command written by an older leader (no margin field) decodes too.
        let cmd = serde_json::json!({"RegisterAgent": {"name": "c", "instance": "h:1", "agent_id": "a3"}});
        assert!(matches!(
            serde_json::from_value::<Command>(cmd).unwrap(),
            Command::RegisterAgent { margin_ms: None, ttl_ms: None, .. }
        ));
    }

    #[test]
    fn split_fence_is_recorded_before_and_after_and_never_of_the_primary_or_during_a_failover() {
        let mut r = registered_with_topology();
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        let fence = |id: &str, inst: u16, epoch: u64| {
            Request::new(
                Command::FenceSplit {
                    name: "c".parse().unwrap(),
                    id: id.into(),
                    instance: a(inst),
                    epoch,
                    evidence: vec!["2 writable".into()],
                },
                Origin::default(),
            )
        };
        let rejected = |r: &mut Registry, i: u64, q: &Request| match r.apply(&log_id(i), q).0 {
            Response::Rejected(e) => e,
            other => panic!("{other:?} accepted"),
        };
        assert!(matches!(rejected(&mut r, 3, &fence("f1", 1, 1)), Rejection::IsPrimary { .. }));
        assert!(matches!(rejected(&mut r, 4, &fence("f1", 2, 2)), Rejection::StaleEpoch { .. }));
        assert!(matches!(rejected(&mut r, 5, &fence("f1", 9, 1)), Rejection::UnknownInstance { .. }));
        assert_eq!(r.apply(&log_id(6), &fence("f1", 2, 1)).0, Response::Done);
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.split_fences.len(), 1);
        assert_eq!(c.split_fences[0].outcome, None, "written ahead: no outcome yet");
        let fin = |id: &str| {
            Request::new(
                Command::FinishSplitFence {
                    name: "c".parse().unwrap(),
                    id: id.into(),
                    outcome: "read_only set".into(),
                },
                Origin::default(),
            )
        };
        assert!(matches!(rejected(&mut r, 7, &fin("nope")), Rejection::NoSuchSplitFence { .. }));
        assert_eq!(r.apply(&log_id(8), &fin("f1")).0, Response::Done);
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.split_fences[0].outcome.as_deref(), Some("read_only set"));
        // A failover owns the instances while it runs.
        assert_eq!(r.apply(&log_id(9), &start("c", 2)).0, Response::Done);
        assert!(matches!(rejected(&mut r, 10, &fence("f2", 3, 2)), Rejection::FailoverInProgress(..)));
    }

    #[test]
    fn failover_start_bumps_epoch_write_ahead_and_refuses_a_second_one() {
        let mut r = registered_with_topology();
        assert_eq!(r.apply(&log_id(3), &start("c", 2)).0, Response::Done);
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.epoch, 2, "the new epoch is committed before any step runs");
        assert!(c.in_flight().is_some());
        assert!(matches!(r.apply(&log_id(4), &start("c", 3)).0, Response::Rejected(Rejection::FailoverInProgress(..))));
    }

    #[test]
    fn intermediate_repair_runs_under_the_current_epoch_and_reparents_without_moving_the_primary() {
        let mut r = Registry::default();
        r.apply(&log_id(1), &reg("c"));
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        // 1 -> 2 (intermediate) -> 3, 4
        let topo = Topology::from_edges(
            vec![
                (a(1), None, 1, "mariadb".into(), "10.11".into()),
                (a(2), Some(a(1)), 2, "mariadb".into(), "10.11".into()),
                (a(3), Some(a(2)), 3, "mariadb".into(), "10.11".into()),
                (a(4), Some(a(2)), 4, "mariadb".into(), "10.11".into()),
            ],
            None,
        );
        r.apply(
            &log_id(2),
            &Request::new(Command::UpdateTopology { name: "c".parse().unwrap(), topology: topo }, Origin::default()),
        );
        let repair = |epoch: u64| {
            Request::new(
                Command::StartFailover {
                    name: "c".parse().unwrap(),
                    id: "c-e1-r1".into(),
                    kind: crate::FailoverKind::IntermediateRepair,
                    analysis_code: crate::AnalysisCode::DeadIntermediatePrimary,
                    evidence: vec![],
                    old_primary: a(2),
                    candidate: a(1),
                    epoch,
                    plan: vec![],
                    request_id: None,
                },
                Origin::default(),
            )
        };
        assert!(matches!(r.apply(&log_id(3), &repair(2)).0, Response::Rejected(Rejection::StaleEpoch { .. })));
        assert_eq!(r.apply(&log_id(4), &repair(1)).0, Response::Done, "no epoch consumed");
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.epoch, 1);
        assert!(c.in_flight().is_some());
        assert_eq!(c.primary_state().failover, None, "clients are not told the primary moves");
        let fin = Request::new(
            Command::FinishFailover {
                name: "c".parse().unwrap(),
                id: "c-e1-r1".into(),
                outcome: crate::FailoverOutcome::Succeeded,
                promotion_gtid: None,
            },
            Origin::default(),
        );
        assert_eq!(r.apply(&log_id(5), &fin).0, Response::Done);
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.topology.primary, Some(a(1)));
        assert_eq!(c.topology.instances[&a(3)].source, Some(a(1)));
        assert_eq!(c.topology.instances[&a(4)].source, Some(a(1)));
        assert_eq!(c.topology.instances[&a(2)].source, Some(a(1)), "the dead intermediate keeps its place");
        assert!(c.demoted.is_empty());
    }

    #[test]
    fn promotion_point_recorded_at_the_promote_step_survives_a_resumed_finish() {
        let mut r = registered_with_topology();
        r.apply(&log_id(3), &start("c", 2));
        let point = |gtid: &str| {
            Request::new(
                Command::RecordPromotionPoint {
                    name: "c".parse().unwrap(),
                    id: "c-e2".into(),
                    gtid: gtid.into(),
                    binlog_state: Some(format!("{gtid},0-9-3")),
                },
                Origin::default(),
            )
        };
        assert_eq!(r.apply(&log_id(4), &point("0-1-100")).0, Response::Done);
        // A new leader re-runs the promote step and reads later: the first reading stays.
        assert_eq!(r.apply(&log_id(5), &point("0-2-104")).0, Response::Done);
        // ...and a finish carrying a later reading does not replace it either.
        let fin = Request::new(
            Command::FinishFailover {
                name: "c".parse().unwrap(),
                id: "c-e2".into(),
                outcome: crate::FailoverOutcome::Succeeded,
                promotion_gtid: Some("0-2-110".into()),
            },
            Origin::default(),
        );
        assert_eq!(r.apply(&log_id(6), &fin).0, Response::Done);
        let f = &r.clusters[&"c".parse().unwrap()].history[0];
        assert_eq!(f.promotion_gtid.as_deref(), Some("0-1-100"));
        assert_eq!(f.promotion_binlog_state.as_deref(), Some("0-1-100,0-9-3"));
        // No failover in flight: refused.
        assert!(matches!(r.apply(&log_id(7), &point("0-1-1")).0, Response::Rejected(Rejection::NoSuchFailover { .. })));
    }

    #[test]
    fn stale_epoch_is_refused() {
        let mut r = registered_with_topology();
        assert!(matches!(r.apply(&log_id(3), &start("c", 5)).0, Response::Rejected(Rejection::StaleEpoch { .. })));
    }

    #[test]
    fn steps_are_idempotent_and_finish_moves_the_primary_and_demotes_the_old_one() {
        let mut r = registered_with_topology();
        r.apply(&log_id(3), &start("c", 2));
        let step = |i: u32| {
            Request::new(
                Command::FailoverStep {
                    name: "c".parse().unwrap(),
                    id: "c-e2".into(),
                    index: i,
                    description: format!("s{i}"),
                    outcome: StepOutcome::Done("done".into()),
                },
                Origin::default(),
            )
        };
        r.apply(&log_id(4), &step(0));
        r.apply(&log_id(5), &step(0)); // a retried proposal of the same step
        r.apply(&log_id(6), &step(1));
        let fin = Request::new(
            Command::FinishFailover {
                name: "c".parse().unwrap(),
                id: "c-e2".into(),
                outcome: crate::FailoverOutcome::Succeeded,
                promotion_gtid: Some("0-2-10".into()),
            },
            Origin::default(),
        );
        assert_eq!(r.apply(&log_id(7), &fin).0, Response::Done);
        let c = &r.clusters[&"c".parse().unwrap()];
        let f = &c.history[0];
        assert_eq!(f.steps.len(), 2);
        assert!(c.in_flight().is_none());
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        assert_eq!(c.topology.primary, Some(a(2)));
        assert_eq!(c.topology.instances[&a(1)].role, crate::InstanceRole::Demoted);
        assert_eq!(c.topology.instances[&a(3)].source, Some(a(2)));
        assert!(c.demoted.contains(&a(1)));
        // A later topology refresh that sees the old primary source-less keeps it demoted.
        let refreshed = Topology::from_edges(
            vec![
                (a(1), None, 1, "mariadb".into(), "10.11".into()),
                (a(2), None, 2, "mariadb".into(), "10.11".into()),
                (a(3), Some(a(2)), 3, "mariadb".into(), "10.11".into()),
            ],
            Some(&a(2)),
        );
        let up = Request::new(
            Command::UpdateTopology { name: "c".parse().unwrap(), topology: refreshed },
            Origin::default(),
        );
        r.apply(&log_id(8), &up);
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.topology.instances[&a(1)].role, crate::InstanceRole::Demoted);
    }
    /// Issue 14: a failover step rewrites its own failover record, not the cluster's
    /// record with its hundred-failover history (up to 258 KiB per step before).
    #[test]
    fn a_failover_step_persists_its_own_record_not_the_cluster_with_its_history() {
        let mut r = registered_with_topology();
        let (_, touched) = r.apply(&log_id(3), &start("c", 2));
        let c: ClusterName = "c".parse().unwrap();
        assert_eq!(touched, vec![StateKey::Failover(c.clone(), 3), StateKey::Cluster(c.clone()), StateKey::Audit(3)]);
        let step = Request::new(
            Command::FailoverStep {
                name: c.clone(),
                id: "c-e2".into(),
                index: 0,
                description: "s0".into(),
                outcome: StepOutcome::Done("done".into()),
            },
            Origin::default(),
        );
        let (_, touched) = r.apply(&log_id(4), &step);
        assert_eq!(touched, vec![StateKey::Failover(c.clone(), 3), StateKey::Audit(4)]);
        let (key, value) = r.encode(&StateKey::Failover(c.clone(), 3)).unwrap();
        assert_eq!(key, [&b"h/c/"[..], &3u64.to_be_bytes()].concat());
        let stored: FailoverRecord = serde_json::from_slice(&value.unwrap()).unwrap();
        assert_eq!(stored.steps.len(), 1);
        // The cluster's own key holds no history at all.
        let (_, core) = r.encode(&StateKey::Cluster(c.clone())).unwrap();
        let core: serde_json::Value = serde_json::from_slice(&core.unwrap()).unwrap();
        assert!(core.get("history").is_none(), "{core}");
        assert_eq!(core["epoch"], 2);
    }

    /// Every apply names every key it changed: the pairs written after each entry (as
    /// the store writes them) load as the state in memory, through failovers, steps,
    /// promotion points, finishes, acknowledgements, the history's retention, and a
    /// cluster removed and registered again under the same name.
    #[test]
    fn persisting_the_touched_keys_after_every_entry_reproduces_the_state() {
        let mut r = Registry::default();
        let mut image = KeyImage::default();
        let mut idx = 0u64;
        let mut apply = |r: &mut Registry, image: &mut KeyImage, cmd: Command| {
            idx += 1;
            let (resp, touched) = r.apply(&log_id(idx), &Request::new(cmd, Origin::default()));
            image.write(r, &touched).unwrap();
            assert_eq!(&image.load().unwrap(), r, "after entry {idx}");
            resp
        };
        let c: ClusterName = "c".parse().unwrap();
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        let topology = Topology::from_edges(
            vec![
                (a(1), None, 1, "mariadb".into(), "10.11".into()),
                (a(2), Some(a(1)), 2, "mariadb".into(), "10.11".into()),
            ],
            None,
        );
        for round in 0..2 {
            apply(&mut r, &mut image, reg("c").command);
            apply(&mut r, &mut image, Command::UpdateTopology { name: c.clone(), topology: topology.clone() });
            let mut epoch = r.clusters[&c].epoch;
            for n in 0..HISTORY_RETENTION + 3 {
                epoch += 1;
                let id = format!("c-e{epoch}");
                let (old, new) = if epoch % 2 == 0 { (a(1), a(2)) } else { (a(2), a(1)) };
                let resp = apply(
                    &mut r,
                    &mut image,
                    Command::StartFailover {
                        name: c.clone(),
                        id: id.clone(),
                        kind: crate::FailoverKind::Automatic,
                        analysis_code: crate::AnalysisCode::DeadPrimary,
                        evidence: vec![format!("round {round} failover {n}")],
                        old_primary: old,
                        candidate: new,
                        epoch,
                        plan: vec![Step::Complete],
                        request_id: None,
                    },
                );
                assert_eq!(resp, Response::Done);
                apply(
                    &mut r,
                    &mut image,
                    Command::RecordPromotionPoint {
                        name: c.clone(),
                        id: id.clone(),
                        gtid: format!("0-1-{n}"),
                        binlog_state: None,
                    },
                );
                let outcome = if n % 3 == 2 {
                    crate::FailoverOutcome::Aborted("no".into())
                } else {
                    apply(
                        &mut r,
                        &mut image,
                        Command::FailoverStep {
                            name: c.clone(),
                            id: id.clone(),
                            index: 0,
                            description: "s0".into(),
                            outcome: StepOutcome::Done("done".into()),
                        },
                    );
                    crate::FailoverOutcome::Succeeded
                };
                let finish = Command::FinishFailover { name: c.clone(), id: id.clone(), outcome, promotion_gtid: None };
                assert_eq!(apply(&mut r, &mut image, finish), Response::Done);
                if n % 10 == 0 {
                    apply(&mut r, &mut image, Command::AckFailover { name: c.clone(), id: Some(id) });
                }
            }
            apply(&mut r, &mut image, Command::AckFailover { name: c.clone(), id: None });
            assert_eq!(r.clusters[&c].history.len(), HISTORY_RETENTION);
            assert_eq!(image.0.keys().filter(|k| k.starts_with(b"h/")).count(), HISTORY_RETENTION);
            apply(&mut r, &mut image, Command::UnregisterCluster { name: c.clone() });
            assert!(!image.0.keys().any(|k| k.starts_with(b"h/") || k.starts_with(b"c/")), "removed with its history");
        }
    }

    #[test]
    fn a_failover_record_without_its_cluster_or_under_a_wrong_key_is_refused() {
        let mut r = registered_with_topology();
        r.apply(&log_id(3), &start("c", 2));
        let image = KeyImage::of(&r).unwrap();
        let (key, value) = image.0.iter().find(|(k, _)| k.starts_with(b"h/")).unwrap();
        assert!(matches!(Registry::default().load(key, value), Err(DecodeError::StrayFailover { .. })));
        let mut loaded = image.load().unwrap();
        let wrong = [&b"h/c/"[..], &4u64.to_be_bytes()].concat();
        assert!(matches!(loaded.load(&wrong, value), Err(DecodeError::StrayFailover { .. })));
        assert!(matches!(loaded.load(b"h/c", value), Err(DecodeError::StrayFailover { .. })));
    }

    fn update(topology: Topology) -> Request {
        Request::new(Command::UpdateTopology { name: "c".parse().unwrap(), topology }, Origin::default())
    }

    #[test]
    fn a_topology_update_never_moves_the_primary_and_waits_for_a_running_failover() {
        let mut r = registered_with_topology();
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        let n = |p: u16, s: Option<u16>| (a(p), s.map(a), p as u32, "mariadb".to_string(), "10.11".to_string());
        // A stale probe shows h:2 as the head of the tree (or nobody): refused, the
        // primary stays h:1 at epoch 1.
        let moved = Topology::from_edges(vec![n(1, Some(2)), n(2, None), n(3, Some(2))], None);
        assert_eq!(moved.primary, Some(a(2)));
        assert!(matches!(
            r.apply(&log_id(3), &update(moved)).0,
            Response::Rejected(Rejection::PrimaryMovesWithoutFailover { .. })
        ));
        let headless = Topology::from_edges(vec![n(1, None), n(2, None), n(3, Some(2)), n(4, Some(1))], None);
        assert_eq!(headless.primary, None);
        assert!(matches!(
            r.apply(&log_id(4), &update(headless)).0,
            Response::Rejected(Rejection::PrimaryMovesWithoutFailover { .. })
        ));
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!((c.topology.primary.clone(), c.epoch), (Some(a(1)), 1));
        // A new replica under the same primary is fine.
        let grown = Topology::from_edges(vec![n(1, None), n(2, Some(1)), n(3, Some(1)), n(4, Some(1))], None);
        assert_eq!(r.apply(&log_id(5), &update(grown.clone())).0, Response::Done);
        // While a failover runs, nothing but the failover changes the topology.
        assert_eq!(r.apply(&log_id(6), &start("c", 2)).0, Response::Done);
        let shrunk = Topology::from_edges(vec![n(1, None), n(2, Some(1))], None);
        assert!(matches!(
            r.apply(&log_id(7), &update(shrunk)).0,
            Response::Rejected(Rejection::FailoverInProgress(..))
        ));
        assert_eq!(r.clusters[&"c".parse().unwrap()].topology, grown);
        // First discovery may name a primary where there was none.
        let mut fresh = Registry::default();
        fresh.apply(&log_id(1), &reg("c"));
        assert_eq!(fresh.apply(&log_id(2), &update(grown)).0, Response::Done);
    }

    #[test]
    fn a_successful_finish_records_the_complete_step_in_the_same_entry() {
        let mut r = registered_with_topology();
        let mut s = start("c", 2);
        if let Command::StartFailover { plan, .. } = &mut s.command {
            *plan = vec![Step::PromoteCandidate { candidate: "h:2".parse().unwrap() }, Step::Complete];
        }
        r.apply(&log_id(3), &s);
        let step = Request::new(
            Command::FailoverStep {
                name: "c".parse().unwrap(),
                id: "c-e2".into(),
                index: 0,
                description: "promote h:2".into(),
                outcome: StepOutcome::Done("writable".into()),
            },
            Origin::default(),
        );
        r.apply(&log_id(4), &step);
        let fin = Request::new(
            Command::FinishFailover {
                name: "c".parse().unwrap(),
                id: "c-e2".into(),
                outcome: crate::FailoverOutcome::Succeeded,
                promotion_gtid: None,
            },
            Origin::default(),
        );
        assert_eq!(r.apply(&log_id(5), &fin).0, Response::Done);
        let f = &r.clusters[&"c".parse().unwrap()].history[0];
        assert_eq!(f.steps.len(), 2, "{f:#?}");
        assert_eq!((f.steps[1].index, f.steps[1].description.as_str(), f.steps[1].log_index), (1, "complete", 5));
    }

    #[test]
    fn an_unfence_is_recorded_only_for_the_primary_of_the_current_epoch_and_never_during_a_failover() {
        let mut r = registered_with_topology();
        let a = |p: u16| crate::InstanceAddr::new("h", p).unwrap();
        let unfence = |id: &str, inst: u16, epoch: u64| {
            Request::new(
                Command::UnfencePrimary {
                    name: "c".parse().unwrap(),
                    id: id.into(),
                    instance: a(inst),
                    epoch,
                    evidence: vec!["read-only with a lease".into()],
                },
                Origin::default(),
            )
        };
        let rejected = |r: &mut Registry, i: u64, q: &Request| match r.apply(&log_id(i), q).0 {
            Response::Rejected(e) => e,
            other => panic!("{other:?} accepted"),
        };
        assert!(matches!(rejected(&mut r, 3, &unfence("u1", 2, 1)), Rejection::NotPrimary { .. }));
        assert!(matches!(rejected(&mut r, 4, &unfence("u1", 1, 2)), Rejection::StaleEpoch { .. }));
        assert_eq!(r.apply(&log_id(5), &unfence("u1", 1, 1)).0, Response::Done);
        let fin = Request::new(
            Command::FinishUnfence { name: "c".parse().unwrap(), id: "u1".into(), outcome: "writable".into() },
            Origin::default(),
        );
        assert_eq!(r.apply(&log_id(6), &fin).0, Response::Done);
        let c = &r.clusters[&"c".parse().unwrap()];
        assert_eq!(c.unfences.len(), 1);
        assert_eq!(c.unfences[0].outcome.as_deref(), Some("writable"));
        assert_eq!(r.apply(&log_id(7), &start("c", 2)).0, Response::Done);
        assert!(matches!(rejected(&mut r, 8, &unfence("u2", 1, 2)), Rejection::FailoverInProgress(..)));
    }
}

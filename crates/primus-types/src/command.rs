//! What goes through the Raft log.
//!
//! A log entry carries a [`Request`]: who asked, when (the proposer's wall clock, so
//! that applying is deterministic on every node), and a typed [`Command`].
//!
//! Compatibility rules, so that logs written today stay readable:
//! * `Command` is externally tagged by variant name; a new command is a new variant.
//!   Existing variants are never renamed or removed.
//! * New fields on an existing variant carry `#[serde(default)]`.
//! * `Request::format` is bumped only if the meaning of an existing field changes;
//!   a node refuses entries of a format it does not know (see `Request::check_format`).
//! * A new variant belongs to a new feature level ([`FEATURE_LEVEL`] bumped,
//!   [`Command::feature_level`] extended): the leader writes it only once every member
//!   runs a release that decodes it. A new field that an older release would ignore
//!   needs no level; a new *variant of an enum inside* a command or the state does.

use crate::analysis::AnalysisCode;
use crate::failover::{FailoverKind, FailoverOutcome, PromotionRule, Step, StepOutcome};
use crate::names::{ClusterName, InstanceAddr};
use crate::topology::Topology;
use crate::NodeId;
use serde::{Deserialize, Serialize};

/// The entry format this build writes and the newest it can read.
pub const REQUEST_FORMAT: u32 = 1;

/// The newest feature level this build knows: it decodes and applies every command of
/// this level and below ([`Command::feature_level`]).
///
/// A command kind added after a release can only be written once every member of the
/// group runs a release that knows it: an older node cannot decode the entry and stops
/// catching up. The leader therefore commits [`Command::SetFeatureLevel`] once every
/// member answers that it supports a level (the `JoinCheck` peer RPC), and proposes a
/// command only when the group's committed level is at least the command's level.
///
/// * 1 — every command of the releases before the gate (commit 3315362 and earlier).
/// * 2 — `UnfencePrimary`, `FinishUnfence`, `MemberSeen`, `SetFeatureLevel`.
/// * 3 — `SetGlobalAutomaticFailover`, `ForgetInstance`, `RelocateReplica`,
///   `SetClusterSettings` (issue 16's day-2 commands).
///
/// Bump it, and give the new commands the new level, whenever a command kind is added.
pub const FEATURE_LEVEL: u32 = 3;

/// The level of a group that never recorded one, and of a peer that does not say
/// (a release before the gate): the commands every release decodes.
pub const BASE_FEATURE_LEVEL: u32 = 1;

/// A command that the group cannot take yet: some member may run a release that
/// cannot decode it (see [`FEATURE_LEVEL`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{command} needs group feature level {needs} but the group is at level {group}: a member may run an older \
     primusd that cannot decode it; the leader raises the level once every member runs a release that knows it \
     (`primusctl status` shows the level)"
)]
pub struct FeatureNotEnabled {
    pub command: &'static str,
    pub needs: u32,
    pub group: u32,
}

fn format_v1() -> u32 {
    1
}

/// Who asked for a command, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Origin {
    /// Free text from the client, e.g. `primusctl root@ops-1`, or `primusd` for
    /// decisions the coordinator took itself.
    pub actor: String,
    /// The coordinator that received the request from the client.
    pub via_node: NodeId,
}

/// Per-cluster overrides of `[failover]` keys (`primusctl cluster set NAME KEY=VALUE`),
/// kept in Raft so that every coordinator — and every future leader — applies the same
/// ones; a key not set here follows each coordinator's own config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FailoverOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_block_period_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_progress_stale_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_max_age_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_same_datacenter: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_for_candidate_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_split: Option<bool>,
}

/// The keys `cluster set` takes (`automatic` is the cluster's `automatic_failover`).
pub const CLUSTER_SETTING_KEYS: &[&str] = &[
    "automatic",
    "recovery_block_period_ms",
    "replica_progress_stale_ms",
    "view_max_age_ms",
    "catch_up_timeout_ms",
    "prefer_same_datacenter",
    "max_lag_for_candidate_s",
    "fence_split",
];

/// Longest duration a `*_ms` setting takes: one day.
const MAX_SETTING_MS: u64 = 86_400_000;

impl FailoverOverrides {
    pub fn is_empty(&self) -> bool {
        *self == FailoverOverrides::default()
    }

    /// Every override that is set, as `(key, value)`.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("recovery_block_period_ms", self.recovery_block_period_ms.map(|v| v.to_string()));
        put("replica_progress_stale_ms", self.replica_progress_stale_ms.map(|v| v.to_string()));
        put("view_max_age_ms", self.view_max_age_ms.map(|v| v.to_string()));
        put("catch_up_timeout_ms", self.catch_up_timeout_ms.map(|v| v.to_string()));
        put("prefer_same_datacenter", self.prefer_same_datacenter.map(|v| v.to_string()));
        put("max_lag_for_candidate_s", self.max_lag_for_candidate_s.map(|v| v.to_string()));
        put("fence_split", self.fence_split.map(|v| v.to_string()));
        out
    }
}

impl ClusterSettings {
    /// Set (`Some`) or clear (`None`: back to the config file) one `cluster set` key,
    /// checking its value. Deterministic: the state machine applies it.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        fn ms(key: &str, v: &str) -> Result<u64, String> {
            match v.parse::<u64>() {
                Ok(n) if (1..=MAX_SETTING_MS).contains(&n) => Ok(n),
                _ => Err(format!("{key} must be a number of milliseconds from 1 to {MAX_SETTING_MS}, not {v:?}")),
            }
        }
        fn flag(key: &str, v: &str) -> Result<bool, String> {
            match v {
                "true" | "on" => Ok(true),
                "false" | "off" => Ok(false),
                _ => Err(format!("{key} must be true or false, not {v:?}")),
            }
        }
        let o = &mut self.failover;
        match (key, value) {
            ("automatic", v) => self.automatic_failover = v.map(|v| flag(key, v)).transpose()?,
            ("recovery_block_period_ms", v) => o.recovery_block_period_ms = v.map(|v| ms(key, v)).transpose()?,
            ("replica_progress_stale_ms", v) => o.replica_progress_stale_ms = v.map(|v| ms(key, v)).transpose()?,
            ("view_max_age_ms", v) => o.view_max_age_ms = v.map(|v| ms(key, v)).transpose()?,
            ("catch_up_timeout_ms", v) => o.catch_up_timeout_ms = v.map(|v| ms(key, v)).transpose()?,
            ("prefer_same_datacenter", v) => o.prefer_same_datacenter = v.map(|v| flag(key, v)).transpose()?,
            ("max_lag_for_candidate_s", v) => {
                o.max_lag_for_candidate_s = v
                    .map(|v| v.parse::<u64>().map_err(|_| format!("{key} must be a number of seconds, not {v:?}")))
                    .transpose()?
            }
            ("fence_split", v) => o.fence_split = v.map(|v| flag(key, v)).transpose()?,
            _ => return Err(format!("unknown cluster setting {key:?}: one of {}", CLUSTER_SETTING_KEYS.join(", "))),
        }
        Ok(())
    }
}

/// Per-cluster settings stored with the registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterSettings {
    /// Overrides the global `automatic_failover` for this cluster when set.
    #[serde(default)]
    pub automatic_failover: Option<bool>,
    /// Semi-sync no-loss mode: `Some(true)` primus keeps lossless semi-sync on every
    /// instance, `Some(false)` keeps it off, `None` leaves it to the operator.
    #[serde(default)]
    pub semi_sync: Option<bool>,
    /// `[failover]` keys set for this cluster in Raft (`cluster set`).
    #[serde(default, skip_serializing_if = "FailoverOverrides::is_empty")]
    pub failover: FailoverOverrides,
}

/// A state-machine command. See the module docs for the compatibility rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add a cluster to the registry. Refused if the name is taken.
    RegisterCluster {
        name: ClusterName,
        seeds: Vec<InstanceAddr>,
        #[serde(default)]
        settings: ClusterSettings,
        /// The topology discovered from the seeds before registering.
        #[serde(default)]
        topology: Option<Topology>,
    },
    /// Remove a cluster from the registry. Refused if it does not exist.
    UnregisterCluster {
        name: ClusterName,
    },
    /// The leader saw the shape of the topology change (new instance, new source,
    /// new roles). Refused if the cluster is unknown.
    UpdateTopology {
        name: ClusterName,
        topology: Topology,
    },
    /// Write-ahead start of a failover: committed before any instance is touched.
    /// Refused if another failover of the cluster is in progress or the epoch is not
    /// exactly the next one.
    StartFailover {
        name: ClusterName,
        id: String,
        kind: FailoverKind,
        analysis_code: AnalysisCode,
        evidence: Vec<String>,
        old_primary: InstanceAddr,
        candidate: InstanceAddr,
        epoch: u64,
        plan: Vec<Step>,
        /// The operator's request id (see `FailoverRecord::request_id`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A step of an in-progress failover completed (or was skipped, with the reason).
    FailoverStep {
        name: ClusterName,
        id: String,
        index: u32,
        description: String,
        outcome: StepOutcome,
    },
    /// Close a failover. On success the candidate becomes the primary, the followers
    /// replicate from it and the old primary is demoted.
    FinishFailover {
        name: ClusterName,
        id: String,
        outcome: FailoverOutcome,
        #[serde(default)]
        promotion_gtid: Option<String>,
    },
    /// Acknowledge the last failover(s) of a cluster: lifts the anti-flap block.
    AckFailover {
        name: ClusterName,
        id: Option<String>,
    },
    SetPromotionRule {
        name: ClusterName,
        instance: InstanceAddr,
        rule: PromotionRule,
    },
    /// Start (`until_ms` > 0) or end (`None`) maintenance of an instance or a whole cluster.
    SetMaintenance {
        name: ClusterName,
        instance: Option<InstanceAddr>,
        maintenance: Option<crate::failover::Maintenance>,
    },
    /// Turn automatic failover on/off for one cluster (`None` follows the global setting).
    SetAutomaticFailover {
        name: ClusterName,
        enabled: Option<bool>,
    },
    /// Forget that an instance is a demoted former primary (after `rejoin`).
    ClearDemoted {
        name: ClusterName,
        instance: InstanceAddr,
        /// `rejoin --discard-divergent`: the divergent transactions the operator chose to
        /// leave behind (their changes stay in the instance's tables), kept in the audit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discarded_divergent: Option<String>,
    },
    /// The promotion point of an in-progress failover: the candidate's GTID state read
    /// right after its replication was stopped and before it was made writable. Committed
    /// before the promote step is recorded, so a resumed failover never lacks it; the
    /// first one recorded wins.
    RecordPromotionPoint {
        name: ClusterName,
        id: String,
        /// Executed set (MariaDB `gtid_current_pos`, MySQL `gtid_executed`).
        gtid: String,
        /// MariaDB: the (domain, server) pairs it held (binlog state and positions).
        #[serde(default)]
        binlog_state: Option<String>,
    },
    /// The leader refused a failover it would otherwise have started (e.g. no safe
    /// candidate). Recorded for `history`; consumes no epoch.
    RecordRefusal {
        name: ClusterName,
        analysis_code: AnalysisCode,
        evidence: Vec<String>,
        reason: String,
    },
    /// Label an instance with its datacenter (`None` clears it). Used to prefer a
    /// candidate in the old primary's datacenter and reported to clients.
    SetInstanceDatacenter {
        name: ClusterName,
        instance: InstanceAddr,
        datacenter: Option<String>,
    },
    /// Semi-sync no-loss mode of one cluster (`None`: not managed by primus).
    SetSemiSync {
        name: ClusterName,
        enabled: Option<bool>,
    },
    /// A fencing agent announced itself for an instance (idempotent; a new agent id
    /// replaces the old one).
    RegisterAgent {
        name: ClusterName,
        instance: InstanceAddr,
        agent_id: String,
        /// The agent's lease TTL (an older agent sends none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
        /// The agent's fence timeout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence_timeout_ms: Option<u64>,
        /// The committing leader's `[fencing] lease_margin_ms` (an older leader sends
        /// none; an older release ignores it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        margin_ms: Option<u64>,
        /// `Some(why)`: not a registration but the registered agent handing its lease
        /// back: its mysqld exited and no restarted server can take a write before the
        /// agent has fenced it. Failovers of the instance skip the wait for its lease,
        /// and no lease is granted, until the agent registers again. A field rather than
        /// a command of its own so that an older primusd still decodes the entry (it
        /// reads a registration, and waits the lease out as before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<String>,
        /// With `release`: the log index at which the released registration was
        /// committed (what the agent's `RegisterAgent` answered). A release naming any
        /// other registration — one delayed in the network past the agent's next
        /// registration — is refused, so it can never release a lease granted since.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        of_registration: Option<u64>,
    },
    /// Split brain: the leader is about to fence `instance`, writable although the
    /// cluster's primary of `epoch` is another. Committed before the instance is
    /// touched; refused when a failover is in progress, the epoch moved on or the
    /// instance is the primary.
    FenceSplit {
        name: ClusterName,
        id: String,
        instance: InstanceAddr,
        epoch: u64,
        evidence: Vec<String>,
    },
    /// The outcome of a `FenceSplit`.
    FinishSplitFence {
        name: ClusterName,
        id: String,
        outcome: String,
    },
    /// The leader is about to make the recorded primary of `epoch` writable again
    /// (it was left read-only, e.g. fenced by its agent during a coordinator stall).
    /// Committed before the instance is touched; refused when a failover is in
    /// progress, the epoch moved on, or `instance` is not the primary.
    UnfencePrimary {
        name: ClusterName,
        id: String,
        instance: InstanceAddr,
        epoch: u64,
        evidence: Vec<String>,
    },
    /// The outcome of an `UnfencePrimary`.
    FinishUnfence {
        name: ClusterName,
        id: String,
        outcome: String,
    },
    /// The leader saw member `id` hold Raft log entries (a follower's matched index
    /// above 0, or the leader itself). Proposed once per node id; idempotent. A node
    /// that starts with an empty `data_dir` under an id the group recorded has lost
    /// its log and its vote, and is refused (primus-server's `bootstrap` module).
    MemberSeen {
        id: NodeId,
    },
    /// Every member of the group answered that it runs a release of at least feature
    /// `level` ([`FEATURE_LEVEL`]): commands of that level may be written from now on.
    /// The level never goes down (a lower one changes nothing); committed by the leader,
    /// and only once every member knows this command, which is itself of level 2.
    SetFeatureLevel {
        level: u32,
    },
    /// `primusctl automatic off --all --reason R` (`enabled: false`): no automatic
    /// failover or repair of any cluster, whatever its own setting, until `on --all`
    /// (`enabled: true`, which clears the switch: each cluster follows its own setting
    /// and the config again). Manual failovers and switchovers are not affected.
    SetGlobalAutomaticFailover {
        enabled: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// `primusctl instance forget`: drop a decommissioned instance from the cluster's
    /// topology, seeds and per-instance settings (promotion rule, maintenance,
    /// datacenter, agent, demoted mark). Refused for the primary, for an instance others
    /// replicate from, and during a failover. (The leader also refuses, before proposing,
    /// an instance it sees still replicating: it would be discovered again at once.)
    ForgetInstance {
        name: ClusterName,
        instance: InstanceAddr,
    },
    /// `primusctl relocate`: the leader is about to repoint replica `instance` (today
    /// replicating from `from`) under `below`, by GTID. Committed before the instance is
    /// touched (write-ahead, audited); the topology follows from the next probes.
    /// Refused for the primary, for `below` not in the cluster or equal to `instance`,
    /// and during a failover. (The leader refuses before proposing a loop, errant
    /// transactions, and a `below` that cannot serve as a source.)
    RelocateReplica {
        name: ClusterName,
        instance: InstanceAddr,
        below: InstanceAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<InstanceAddr>,
    },
    /// `primusctl cluster set NAME KEY=VALUE …`: per-cluster `[failover]` settings
    /// (value `None`: back to each coordinator's config). All or none are applied; an
    /// unknown key or a bad value refuses the whole command.
    SetClusterSettings {
        name: ClusterName,
        settings: std::collections::BTreeMap<String, Option<String>>,
    },
}

impl Command {
    /// The variant's name, as it is tagged in the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterCluster { .. } => "RegisterCluster",
            Command::UnregisterCluster { .. } => "UnregisterCluster",
            Command::UpdateTopology { .. } => "UpdateTopology",
            Command::StartFailover { .. } => "StartFailover",
            Command::FailoverStep { .. } => "FailoverStep",
            Command::FinishFailover { .. } => "FinishFailover",
            Command::AckFailover { .. } => "AckFailover",
            Command::SetPromotionRule { .. } => "SetPromotionRule",
            Command::SetMaintenance { .. } => "SetMaintenance",
            Command::SetAutomaticFailover { .. } => "SetAutomaticFailover",
            Command::ClearDemoted { .. } => "ClearDemoted",
            Command::RecordPromotionPoint { .. } => "RecordPromotionPoint",
            Command::RecordRefusal { .. } => "RecordRefusal",
            Command::SetInstanceDatacenter { .. } => "SetInstanceDatacenter",
            Command::SetSemiSync { .. } => "SetSemiSync",
            Command::RegisterAgent { .. } => "RegisterAgent",
            Command::FenceSplit { .. } => "FenceSplit",
            Command::FinishSplitFence { .. } => "FinishSplitFence",
            Command::UnfencePrimary { .. } => "UnfencePrimary",
            Command::FinishUnfence { .. } => "FinishUnfence",
            Command::MemberSeen { .. } => "MemberSeen",
            Command::SetFeatureLevel { .. } => "SetFeatureLevel",
            Command::SetGlobalAutomaticFailover { .. } => "SetGlobalAutomaticFailover",
            Command::ForgetInstance { .. } => "ForgetInstance",
            Command::RelocateReplica { .. } => "RelocateReplica",
            Command::SetClusterSettings { .. } => "SetClusterSettings",
        }
    }

    /// The feature level that introduced this command: a node of a lower level cannot
    /// decode it (see [`FEATURE_LEVEL`]).
    pub fn feature_level(&self) -> u32 {
        match self {
            Command::UnfencePrimary { .. }
            | Command::FinishUnfence { .. }
            | Command::MemberSeen { .. }
            | Command::SetFeatureLevel { .. } => 2,
            Command::SetGlobalAutomaticFailover { .. }
            | Command::ForgetInstance { .. }
            | Command::RelocateReplica { .. }
            | Command::SetClusterSettings { .. } => 3,
            Command::RegisterCluster { .. }
            | Command::UnregisterCluster { .. }
            | Command::UpdateTopology { .. }
            | Command::StartFailover { .. }
            | Command::FailoverStep { .. }
            | Command::FinishFailover { .. }
            | Command::AckFailover { .. }
            | Command::SetPromotionRule { .. }
            | Command::SetMaintenance { .. }
            | Command::SetAutomaticFailover { .. }
            | Command::ClearDemoted { .. }
            | Command::RecordPromotionPoint { .. }
            | Command::RecordRefusal { .. }
            | Command::SetInstanceDatacenter { .. }
            | Command::SetSemiSync { .. }
            | Command::RegisterAgent { .. }
            | Command::FenceSplit { .. }
            | Command::FinishSplitFence { .. } => BASE_FEATURE_LEVEL,
        }
    }

    /// Whether a group at feature level `group` may take this command.
    pub fn check_feature_level(&self, group: u32) -> Result<(), FeatureNotEnabled> {
        let needs = self.feature_level();
        if needs <= group.max(BASE_FEATURE_LEVEL) {
            Ok(())
        } else {
            Err(FeatureNotEnabled { command: self.kind(), needs, group: group.max(BASE_FEATURE_LEVEL) })
        }
    }

    /// One line for the audit log and for operators.
    pub fn summary(&self) -> String {
        match self {
            Command::RegisterCluster { name, seeds, .. } => {
                let seeds: Vec<String> = seeds.iter().map(ToString::to_string).collect();
                format!("register cluster {name} seeds [{}]", seeds.join(", "))
            }
            Command::UnregisterCluster { name } => format!("unregister cluster {name}"),
            Command::UpdateTopology { name, topology } => format!("topology of {name}: {}", topology.summary()),
            Command::StartFailover { name, id, kind, analysis_code, old_primary, candidate, epoch, .. } => format!(
                "start {kind} failover {id} of {name} ({analysis_code}): {old_primary} -> {candidate}, epoch {epoch}"
            ),
            Command::FailoverStep { name, id, index, description, outcome } => {
                format!("failover {id} of {name} step {index} {description}: {outcome}")
            }
            Command::FinishFailover { name, id, outcome, .. } => format!("finish failover {id} of {name}: {outcome:?}"),
            Command::AckFailover { name, id } => {
                format!("ack failover {} of {name}", id.as_deref().unwrap_or("(all)"))
            }
            Command::SetPromotionRule { name, instance, rule } => {
                format!("promotion rule of {instance} in {name}: {rule}")
            }
            Command::SetMaintenance { name, instance, maintenance } => format!(
                "maintenance of {} in {name}: {}",
                instance.as_ref().map(ToString::to_string).unwrap_or_else(|| "the whole cluster".into()),
                maintenance.as_ref().map(|m| format!("on ({})", m.reason)).unwrap_or_else(|| "off".into())
            ),
            Command::SetAutomaticFailover { name, enabled } => format!("automatic failover of {name}: {enabled:?}"),
            Command::SetSemiSync { name, enabled } => format!("semi-sync no-loss mode of {name}: {enabled:?}"),
            Command::ClearDemoted { name, instance, discarded_divergent: None } => {
                format!("{instance} in {name} no longer demoted")
            }
            Command::ClearDemoted { name, instance, discarded_divergent: Some(d) } => format!(
                "{instance} in {name} no longer demoted: rejoined with --discard-divergent, divergent transactions \
                 left in its tables: {d}"
            ),
            Command::RegisterAgent { name, instance, agent_id, release: Some(why), .. } => {
                format!("agent {agent_id} of {instance} in {name} released its lease: {why}")
            }
            Command::RegisterAgent { name, instance, agent_id, ttl_ms, .. } => match ttl_ms {
                Some(t) => format!("agent {agent_id} registered for {instance} in {name} (lease ttl {t} ms)"),
                None => format!("agent {agent_id} registered for {instance} in {name}"),
            },
            Command::RecordPromotionPoint { name, id, gtid, .. } => {
                format!("failover {id} of {name}: promotion point {gtid}")
            }
            Command::SetInstanceDatacenter { name, instance, datacenter } => {
                format!("datacenter of {instance} in {name}: {}", datacenter.as_deref().unwrap_or("(none)"))
            }
            Command::RecordRefusal { name, analysis_code, reason, .. } => {
                format!("failover of {name} refused ({analysis_code}): {reason}")
            }
            Command::FenceSplit { name, id, instance, epoch, .. } => {
                format!("split brain in {name}: fence {instance} (epoch {epoch}, {id})")
            }
            Command::FinishSplitFence { name, id, outcome } => format!("split fence {id} of {name}: {outcome}"),
            Command::UnfencePrimary { name, id, instance, epoch, .. } => {
                format!("make primary {instance} of {name} writable again (epoch {epoch}, {id})")
            }
            Command::FinishUnfence { name, id, outcome } => format!("unfence {id} of {name}: {outcome}"),
            Command::MemberSeen { id } => format!("node {id} holds Raft log entries"),
            Command::SetFeatureLevel { level } => {
                format!("group feature level {level}: every member runs a primusd that knows its commands")
            }
            Command::SetGlobalAutomaticFailover { enabled: true, .. } => {
                "automatic failover of every cluster: back to each cluster's own setting".to_string()
            }
            Command::SetGlobalAutomaticFailover { enabled: false, reason } => format!(
                "automatic failover OFF for every cluster: {}",
                reason.as_deref().unwrap_or("(no reason given)")
            ),
            Command::ForgetInstance { name, instance } => format!("forget instance {instance} of {name}"),
            Command::SetClusterSettings { name, settings } => {
                let kv: Vec<String> =
                    settings.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(config)"))).collect();
                format!("settings of {name}: {}", kv.join(" "))
            }
            Command::RelocateReplica { name, instance, below, from } => format!(
                "relocate {instance} of {name} below {below} (was below {})",
                from.as_ref().map(ToString::to_string).unwrap_or_else(|| "nothing".into())
            ),
        }
    }
}

/// The application payload of a Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default = "format_v1")]
    pub format: u32,
    pub origin: Origin,
    /// Proposer's wall clock in ms since the Unix epoch; recorded, never compared.
    pub proposed_at_ms: u64,
    pub command: Command,
}

impl Request {
    pub fn new(command: Command, origin: Origin) -> Self {
        let proposed_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Request::at(command, origin, proposed_at_ms)
    }

    /// A request proposed at `proposed_at_ms` on the proposer's clock (a coordinator's
    /// own clock, or a simulated one).
    pub fn at(command: Command, origin: Origin, proposed_at_ms: u64) -> Self {
        Request { format: REQUEST_FORMAT, origin, proposed_at_ms, command }
    }

    /// Entries from a newer primus are refused rather than misread.
    pub fn check_format(&self) -> Result<(), Rejection> {
        if self.format > REQUEST_FORMAT {
            Err(Rejection::UnsupportedFormat { found: self.format, supported: REQUEST_FORMAT })
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (by {} via node {})", self.command.summary(), self.origin.actor, self.origin.via_node)
    }
}

/// Why the state machine refused a committed command. The entry stays in the log
/// (and in the audit trail); the refusal is the command's deterministic result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("cluster {0} is already registered")]
    ClusterExists(ClusterName),
    #[error("cluster {0} is not registered")]
    ClusterNotFound(ClusterName),
    #[error("a cluster needs at least one seed instance")]
    NoSeeds,
    #[error("a failover of cluster {0} is already in progress ({1})")]
    FailoverInProgress(ClusterName, String),
    #[error("stale failover request for {name}: epoch {got}, expected {want}")]
    StaleEpoch { name: ClusterName, got: u64, want: u64 },
    #[error("no failover {id} in progress for cluster {name}")]
    NoSuchFailover { name: ClusterName, id: String },
    #[error("{instance} is not an instance of cluster {name}")]
    UnknownInstance { name: ClusterName, instance: InstanceAddr },
    #[error("log entry format {found} is newer than this primusd understands ({supported}); upgrade this node")]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("{instance} is the primary of cluster {name}: it is not fenced as a split")]
    IsPrimary { name: ClusterName, instance: InstanceAddr },
    #[error("no split fence {id} in cluster {name}")]
    NoSuchSplitFence { name: ClusterName, id: String },
    #[error("{instance} is not the primary of cluster {name}: it is never made writable")]
    NotPrimary { name: ClusterName, instance: InstanceAddr },
    /// Only a failover moves the primary: a topology update that would is refused.
    #[error(
        "the topology update of {name} would move the primary from {from} to {to}: only a failover (with a new epoch) changes the primary"
    )]
    PrimaryMovesWithoutFailover { name: ClusterName, from: InstanceAddr, to: String },
    /// `SetClusterSettings` with an unknown key or a bad value.
    #[error("cluster {name}: {message}")]
    BadSetting { name: ClusterName, message: String },
    /// `ForgetInstance` of an instance the cluster still relies on.
    #[error("{instance} cannot be forgotten from cluster {name}: {why}")]
    InstanceInUse { name: ClusterName, instance: InstanceAddr, why: String },
    /// A lease released by an agent that is not the one registered for the instance, or
    /// for a registration other than the current one.
    #[error(
        "agent {agent_id} is not the registered agent of {instance} in cluster {name}, or the release names an \
         earlier registration: it is ignored"
    )]
    AgentNotRegistered { name: ClusterName, instance: InstanceAddr, agent_id: String },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied; nothing to report beyond success.
    Done,
    /// Committed but refused by the state machine.
    Rejected(Rejection),
    /// A blank or membership entry (no application command).
    Internal,
}

impl Response {
    pub fn into_result(self) -> Result<(), Rejection> {
        match self {
            Response::Rejected(r) => Err(r),
            Response::Done | Response::Internal => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_entries_decode_without_optional_fields() {
        // An entry as the first release wrote it: no `format`, no `settings`.
        let json = r#"{"origin":{"actor":"a","via_node":1},"proposed_at_ms":5,
            "command":{"RegisterCluster":{"name":"c1","seeds":["h:1"]}}}"#;
        let r: Request = serde_json::from_str(json).unwrap();
        assert_eq!(r.format, 1);
        assert!(matches!(r.command, Command::RegisterCluster { .. }));
        assert!(r.check_format().is_ok());
    }

    #[test]
    fn member_seen_is_a_new_externally_tagged_variant() {
        let r = Request::new(Command::MemberSeen { id: 3 }, Origin { actor: "primusd".into(), via_node: 1 });
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["command"], serde_json::json!({"MemberSeen": {"id": 3}}));
        let back: Request = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.command.summary(), "node 3 holds Raft log entries");
    }

    #[test]
    fn commands_added_after_3315362_need_level_2_and_the_older_ones_level_1() {
        // The commands primusd 3315362 decodes (tests/fixtures/old-data-dir-3315362 wrote
        // them): a group of such nodes takes them at the base level.
        let name: ClusterName = "c".parse().unwrap();
        let old = Command::AckFailover { name: name.clone(), id: None };
        assert_eq!(old.feature_level(), BASE_FEATURE_LEVEL);
        assert_eq!(old.check_feature_level(0), Ok(()));
        let new = [
            Command::UnfencePrimary {
                name: name.clone(),
                id: "u".into(),
                instance: "h:1".parse().unwrap(),
                epoch: 2,
                evidence: vec![],
            },
            Command::FinishUnfence { name, id: "u".into(), outcome: "ok".into() },
            Command::MemberSeen { id: 2 },
            Command::SetFeatureLevel { level: 2 },
        ];
        for c in &new {
            assert_eq!(c.feature_level(), 2, "{c:?}");
            // A group that never recorded a level (0) is at the base level.
            let err = c.check_feature_level(0).unwrap_err();
            assert_eq!(err, FeatureNotEnabled { command: c.kind(), needs: 2, group: BASE_FEATURE_LEVEL });
            assert!(err.to_string().starts_with(&format!("{} needs group feature level 2", c.kind())), "{err}");
            assert_eq!(c.check_feature_level(2), Ok(()));
            assert!(c.feature_level() <= FEATURE_LEVEL);
        }
        // The tag in the log is the kind's name.
        let json = serde_json::to_value(&new[3]).unwrap();
        assert_eq!(json, serde_json::json!({"SetFeatureLevel": {"level": 2}}));
    }

    #[test]
    fn the_day_2_commands_need_level_3() {
        let off = Command::SetGlobalAutomaticFailover { enabled: false, reason: Some("DC move".into()) };
        let forget = Command::ForgetInstance { name: "c".parse().unwrap(), instance: "h:1".parse().unwrap() };
        for c in [&off, &forget] {
            assert_eq!(c.feature_level(), 3);
            assert!(c.check_feature_level(2).is_err());
            assert_eq!(c.check_feature_level(3), Ok(()));
        }
        assert_eq!(off.summary(), "automatic failover OFF for every cluster: DC move");
        assert_eq!(forget.summary(), "forget instance h:1 of c");
        let on = Command::SetGlobalAutomaticFailover { enabled: true, reason: None };
        assert_eq!(
            serde_json::to_value(&on).unwrap(),
            serde_json::json!({"SetGlobalAutomaticFailover": {"enabled": true}})
        );
    }

    #[test]
    fn cluster_settings_are_checked_set_and_cleared() {
        let mut s = ClusterSettings::default();
        s.set("catch_up_timeout_ms", Some("2500")).unwrap();
        s.set("fence_split", Some("false")).unwrap();
        s.set("automatic", Some("off")).unwrap();
        assert_eq!(s.failover.catch_up_timeout_ms, Some(2500));
        assert_eq!(s.failover.fence_split, Some(false));
        assert_eq!(s.automatic_failover, Some(false));
        assert_eq!(s.failover.entries(), vec![("catch_up_timeout_ms", "2500".into()), ("fence_split", "false".into())]);
        assert!(s.set("catch_up_timeout_ms", Some("0")).unwrap_err().contains("from 1 to"));
        assert!(s.set("catch_up_timeout_ms", Some("soon")).is_err());
        assert!(s.set("fence_split", Some("maybe")).unwrap_err().contains("true or false"));
        assert!(s.set("step_timeout_ms", Some("5")).unwrap_err().contains("unknown cluster setting"));
        s.set("catch_up_timeout_ms", None).unwrap();
        s.set("fence_split", None).unwrap();
        assert!(s.failover.is_empty());
        // Settings without overrides encode as before (an older release reads them).
        let json = serde_json::to_value(ClusterSettings::default()).unwrap();
        assert_eq!(json, serde_json::json!({"automatic_failover": null, "semi_sync": null}));
    }

    #[test]
    fn newer_format_is_refused_not_misread() {
        let mut r = Request::new(Command::UnregisterCluster { name: "c".parse().unwrap() }, Origin::default());
        r.format = REQUEST_FORMAT + 1;
        assert!(matches!(r.check_format(), Err(Rejection::UnsupportedFormat { .. })));
    }
}

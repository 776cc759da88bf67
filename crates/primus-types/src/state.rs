//! The replicated state and its pure, deterministic `apply`.
//!
//! The store persists this state key by key: every `apply` returns the keys it
//! touched ([`StateKey`]) and the store writes their current encoding
//! ([`Registry::encode`]) in one batch with the new `last_applied`. Keeping the
//! logic here, free of I/O, lets it be tested as a table and reused by any store.

use crate::command::{ClusterSettings, Command, Rejection, Request, Response};
use crate::names::{ClusterName, InstanceAddr};
use crate::topology::Topology;
use crate::{LogId, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    Cluster(ClusterName),
    Audit(u64),
}

const CLUSTER_PREFIX: &[u8] = b"c/";
const AUDIT_PREFIX: &[u8] = b"a/";

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown state key prefix in {0:?}")]
    UnknownKey(String),
    #[error("bad state value for key {key:?}: {source}")]
    BadValue { key: String, source: serde_json::Error },
}

/// Everything the coordinators agree on (for now: the cluster registry and the audit trail).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    pub clusters: BTreeMap<ClusterName, ClusterRecord>,
    pub audit: BTreeMap<u64, AuditRecord>,
}

impl Registry {
    /// Apply one committed application entry. Deterministic: uses only the entry.
    pub fn apply(&mut self, log_id: &LogId, req: &Request) -> (Response, Vec<StateKey>) {
        let mut touched = Vec::new();
        let result = req
            .check_format()
            .and_then(|()| self.apply_command(log_id, req, &mut touched));
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
            Command::RegisterCluster {
                name,
                seeds,
                settings,
                topology,
            } => {
                if self.clusters.contains_key(name) {
                    return Err(Rejection::ClusterExists(name.clone()));
                }
                if seeds.is_empty() {
                    return Err(Rejection::NoSeeds);
                }
                self.clusters.insert(
                    name.clone(),
                    ClusterRecord {
                        name: name.clone(),
                        seeds: seeds.clone(),
                        settings: settings.clone(),
                        registered_at_index: log_id.index,
                        registered_at_ms: req.proposed_at_ms,
                        registered_by: req.origin.actor.clone(),
                        topology: topology.clone().unwrap_or_default(),
                        epoch: first_epoch(),
                        topology_index: log_id.index,
                    },
                );
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::UpdateTopology { name, topology } => {
                let c = self
                    .clusters
                    .get_mut(name)
                    .ok_or_else(|| Rejection::ClusterNotFound(name.clone()))?;
                c.topology = topology.clone();
                c.topology_index = log_id.index;
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
            Command::UnregisterCluster { name } => {
                if self.clusters.remove(name).is_none() {
                    return Err(Rejection::ClusterNotFound(name.clone()));
                }
                touched.push(StateKey::Cluster(name.clone()));
                Ok(())
            }
        }
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
    pub fn encode(&self, key: &StateKey) -> (Vec<u8>, Option<Vec<u8>>) {
        match key {
            StateKey::Cluster(name) => {
                let mut k = CLUSTER_PREFIX.to_vec();
                k.extend_from_slice(name.as_str().as_bytes());
                (k, self.clusters.get(name).and_then(|v| serde_json::to_vec(v).ok()))
            }
            StateKey::Audit(idx) => {
                let mut k = AUDIT_PREFIX.to_vec();
                k.extend_from_slice(&idx.to_be_bytes());
                (k, self.audit.get(idx).and_then(|v| serde_json::to_vec(v).ok()))
            }
        }
    }

    /// Every key/value pair of the state, for writing a whole state at once.
    pub fn encode_all(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let keys = self
            .clusters
            .keys()
            .map(|n| StateKey::Cluster(n.clone()))
            .chain(self.audit.keys().map(|i| StateKey::Audit(*i)));
        keys.filter_map(|k| {
            let (k, v) = self.encode(&k);
            v.map(|v| (k, v))
        })
        .collect()
    }

    /// Load one persisted pair (inverse of [`Registry::encode`]).
    pub fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), DecodeError> {
        let name = || String::from_utf8_lossy(key).into_owned();
        if key.starts_with(CLUSTER_PREFIX) {
            let rec: ClusterRecord =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
            self.clusters.insert(rec.name.clone(), rec);
        } else if key.starts_with(AUDIT_PREFIX) {
            let rec: AuditRecord =
                serde_json::from_slice(value).map_err(|source| DecodeError::BadValue { key: name(), source })?;
            self.audit.insert(rec.index, rec);
        } else {
            return Err(DecodeError::UnknownKey(name()));
        }
        Ok(())
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
            Origin {
                actor: "test".into(),
                via_node: 2,
            },
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
        let req = Request::new(
            Command::UnregisterCluster {
                name: "nope".parse().unwrap(),
            },
            Origin::default(),
        );
        assert!(matches!(
            r.apply(&log_id(1), &req).0,
            Response::Rejected(Rejection::ClusterNotFound(_))
        ));
    }

    #[test]
    fn encode_load_round_trip_reproduces_state() {
        let mut r = Registry::default();
        r.apply(&log_id(1), &reg("a"));
        r.apply(&log_id(2), &reg("b"));
        let unreg = Request::new(
            Command::UnregisterCluster {
                name: "a".parse().unwrap(),
            },
            Origin::default(),
        );
        let (_, touched) = r.apply(&log_id(3), &unreg);
        assert!(
            r.encode(&touched[0]).1.is_none(),
            "unregistered cluster must encode as a delete"
        );
        let mut copy = Registry::default();
        for (k, v) in r.encode_all() {
            copy.load(&k, &v).unwrap();
        }
        assert_eq!(copy, r);
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
}

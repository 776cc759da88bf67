//! The replication topology of a cluster as the coordinators agreed on it.
//!
//! This is what goes through Raft: who the primary is, which instance replicates
//! from which, and the identity of each (server id, flavor, version). Volatile facts
//! (lag, GTID positions, reachability) are *observations*; they are exchanged
//! between coordinators but never committed, so a topology entry is written only
//! when the shape of the topology changes.

use crate::names::InstanceAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceRole {
    /// The writable head of the cluster.
    Primary,
    /// Replicates from another instance and has no replicas of its own.
    Replica,
    /// Replicates from another instance and is the source of at least one other.
    Intermediate,
    /// Replicates from nothing and is not the primary (e.g. a detached server).
    Detached,
    /// A former primary after a failover: kept read-only, never promoted back on its own.
    Demoted,
}

impl std::fmt::Display for InstanceRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceRole::Primary => "primary",
            InstanceRole::Replica => "replica",
            InstanceRole::Intermediate => "intermediate",
            InstanceRole::Detached => "detached",
            InstanceRole::Demoted => "demoted",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyInstance {
    pub addr: InstanceAddr,
    pub role: InstanceRole,
    /// Where it replicates from (`None` for a primary or detached instance).
    pub source: Option<InstanceAddr>,
    pub server_id: u32,
    /// `mariadb` or `mysql`.
    pub flavor: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub primary: Option<InstanceAddr>,
    pub instances: BTreeMap<InstanceAddr, TopologyInstance>,
}

impl Topology {
    /// Derive roles from sources: the instance others replicate from without a
    /// source of its own is the primary; instances with both a source and replicas
    /// are intermediate. `primary_hint` breaks ties between several source-less
    /// instances (the previously agreed primary keeps its role).
    pub fn from_edges(
        nodes: Vec<(InstanceAddr, Option<InstanceAddr>, u32, String, String)>,
        primary_hint: Option<&InstanceAddr>,
    ) -> Topology {
        let sources: std::collections::BTreeSet<InstanceAddr> =
            nodes.iter().filter_map(|(_, s, ..)| s.clone()).collect();
        let roots: Vec<&InstanceAddr> = nodes.iter().filter(|(_, s, ..)| s.is_none()).map(|(a, ..)| a).collect();
        let primary = match primary_hint {
            Some(h) if roots.contains(&h) => Some(h.clone()),
            _ => {
                let with_replicas: Vec<&&InstanceAddr> = roots.iter().filter(|r| sources.contains(**r)).collect();
                match (with_replicas.len(), roots.len()) {
                    (1, _) => Some((**with_replicas[0]).clone()),
                    (0, 1) => Some(roots[0].clone()),
                    _ => None,
                }
            }
        };
        let instances = nodes
            .into_iter()
            .map(|(addr, source, server_id, flavor, version)| {
                let role = match (&source, sources.contains(&addr)) {
                    (Some(_), true) => InstanceRole::Intermediate,
                    (Some(_), false) => InstanceRole::Replica,
                    (None, _) if primary.as_ref() == Some(&addr) => InstanceRole::Primary,
                    (None, _) => InstanceRole::Detached,
                };
                (addr.clone(), TopologyInstance { addr, role, source, server_id, flavor, version })
            })
            .collect();
        Topology { primary, instances }
    }

    /// Mark former primaries that replicate from nothing as demoted.
    pub fn with_demoted(mut self, demoted: &std::collections::BTreeSet<InstanceAddr>) -> Topology {
        for (a, i) in self.instances.iter_mut() {
            if demoted.contains(a) && i.source.is_none() && self.primary.as_ref() != Some(a) {
                i.role = InstanceRole::Demoted;
            }
        }
        self
    }

    pub fn summary(&self) -> String {
        format!(
            "primary {} with {} instances",
            self.primary.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into()),
            self.instances.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> InstanceAddr {
        InstanceAddr::new("127.0.0.1", p).unwrap()
    }
    fn n(p: u16, s: Option<u16>) -> (InstanceAddr, Option<InstanceAddr>, u32, String, String) {
        (a(p), s.map(a), p as u32, "mariadb".into(), "10.11".into())
    }

    #[test]
    fn roles_follow_replication_edges() {
        let t = Topology::from_edges(vec![n(1, None), n(2, Some(1)), n(3, Some(2)), n(4, Some(1))], None);
        assert_eq!(t.primary, Some(a(1)));
        assert_eq!(t.instances[&a(1)].role, InstanceRole::Primary);
        assert_eq!(t.instances[&a(2)].role, InstanceRole::Intermediate);
        assert_eq!(t.instances[&a(3)].role, InstanceRole::Replica);
        assert_eq!(t.instances[&a(4)].role, InstanceRole::Replica);
    }

    #[test]
    fn a_second_sourceless_instance_is_detached_not_a_second_primary() {
        let t = Topology::from_edges(vec![n(1, None), n(2, Some(1)), n(3, None)], None);
        assert_eq!(t.primary, Some(a(1)));
        assert_eq!(t.instances[&a(3)].role, InstanceRole::Detached);
        // Two source-less heads with replicas each: ambiguous unless a hint decides.
        let t = Topology::from_edges(vec![n(1, None), n(2, Some(1)), n(3, None), n(4, Some(3))], None);
        assert_eq!(t.primary, None);
        let t = Topology::from_edges(vec![n(1, None), n(2, Some(1)), n(3, None), n(4, Some(3))], Some(&a(3)));
        assert_eq!(t.primary, Some(a(3)));
        assert_eq!(t.instances[&a(1)].role, InstanceRole::Detached);
    }
}

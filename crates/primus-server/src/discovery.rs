//! Topology discovery from seed instances.
//!
//! From each seed, walk *up* (a replica names its source in its replication
//! status) and *down* (a source lists its registered replicas in `SHOW SLAVE HOSTS`,
//! which needs `report_host`/`report_port` on the replicas) until no new instance
//! appears. The first seed must answer: an unreachable seed or refused credentials
//! stop the registration with a clear error, and nothing is committed.

use crate::config::MysqlSection;
use primus_mysql::{Connector, MysqlConn, Observation, ProbeConfig, ProbeError, Prober};
use primus_types::{InstanceAddr, Topology};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How to reach instances: probe settings and address overrides. The real
/// [`Connector`]: one [`Prober`] per connection.
#[derive(Clone)]
pub struct Targets {
    pub probe_config: ProbeConfig,
    connect_via: HashMap<InstanceAddr, InstanceAddr>,
}

impl Targets {
    pub fn from_config(m: &MysqlSection) -> Result<Targets, String> {
        let mut pc = ProbeConfig::new(m.user.clone(), m.password()?);
        pc.connect_timeout = m.connect_timeout();
        pc.tls = m.client_tls();
        pc.query_timeout = m.query_timeout();
        pc.heartbeat_table =
            m.heartbeat_table.parse().map_err(|e: primus_mysql::heartbeat::BadHeartbeatTable| e.to_string())?;
        let mut connect_via = HashMap::new();
        for (from, to) in &m.connect_via {
            let f: InstanceAddr = from.parse().map_err(|e: primus_types::NameError| e.to_string())?;
            let t: InstanceAddr = to.parse().map_err(|e: primus_types::NameError| e.to_string())?;
            connect_via.insert(f, t);
        }
        Ok(Targets { probe_config: pc, connect_via })
    }

    pub fn connect_addr(&self, addr: &InstanceAddr) -> InstanceAddr {
        self.connect_via.get(addr).cloned().unwrap_or_else(|| addr.clone())
    }
}

impl Connector for Targets {
    fn connect(&self, addr: &InstanceAddr) -> Arc<dyn MysqlConn> {
        Arc::new(Prober::new(self.connect_addr(addr), self.probe_config.clone()))
    }

    fn probe_deadline(&self) -> Duration {
        self.probe_config.connect_timeout + self.probe_config.query_timeout * 2 + Duration::from_millis(200)
    }
}

/// Upper bound on instances walked from one seed set (a guard against loops and mistakes).
const MAX_INSTANCES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("seed {seed} cannot be probed: {error}; nothing was registered")]
    Seed { seed: InstanceAddr, error: ProbeError },
    #[error("discovery did not finish within {0:?}; nothing was registered")]
    Timeout(Duration),
    #[error("discovery found {0} instances, more than the limit of {MAX_INSTANCES}")]
    TooMany(usize),
}

pub struct Discovered {
    pub topology: Topology,
    pub observations: BTreeMap<InstanceAddr, Observation>,
    /// Instances named by others that could not be probed.
    pub unreachable: BTreeMap<InstanceAddr, ProbeError>,
}

/// The instance a replication status row points at.
pub fn source_of(obs: &Observation) -> Option<InstanceAddr> {
    obs.replication.first().and_then(|r| InstanceAddr::new(r.source_host.clone(), r.source_port).ok())
}

/// Replicas an instance lists (`SHOW SLAVE HOSTS` with report_host set).
pub fn replicas_of(obs: &Observation) -> Vec<InstanceAddr> {
    obs.replicas
        .iter()
        .filter(|r| !r.host.is_empty() && r.port != 0)
        .filter_map(|r| InstanceAddr::new(r.host.clone(), r.port).ok())
        .collect()
}

/// Build the topology edges from observations.
pub fn topology_from(observations: &BTreeMap<InstanceAddr, Observation>, hint: Option<&InstanceAddr>) -> Topology {
    let nodes = observations
        .iter()
        .map(|(addr, o)| {
            (
                addr.clone(),
                source_of(o),
                o.server_id,
                o.server.flavor.to_string().to_lowercase(),
                o.server.version.to_string(),
            )
        })
        .collect();
    Topology::from_edges(nodes, hint)
}

pub async fn discover(
    seeds: &[InstanceAddr],
    connector: &dyn Connector,
    timeout: Duration,
) -> Result<Discovered, DiscoveryError> {
    let deadline = Instant::now() + timeout;
    let mut queue: VecDeque<InstanceAddr> = seeds.iter().cloned().collect();
    let mut seen = BTreeSet::new();
    let mut observations = BTreeMap::new();
    let mut unreachable = BTreeMap::new();
    let mut first_seed_error = None;
    while let Some(addr) = queue.pop_front() {
        if !seen.insert(addr.clone()) {
            continue;
        }
        if seen.len() > MAX_INSTANCES {
            return Err(DiscoveryError::TooMany(seen.len()));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(DiscoveryError::Timeout(timeout));
        }
        let prober = connector.connect(&addr);
        let result = match tokio::time::timeout(remaining, prober.probe()).await {
            Ok(r) => r,
            Err(_) => return Err(DiscoveryError::Timeout(timeout)),
        };
        prober.disconnect().await;
        match result {
            Ok(mut obs) => {
                obs.addr = addr.clone();
                if let Some(s) = source_of(&obs) {
                    queue.push_back(s);
                }
                queue.extend(replicas_of(&obs));
                observations.insert(addr, obs);
            }
            Err(error) => {
                let is_seed = seeds.contains(&addr);
                // Wrong credentials are wrong everywhere: stop at once.
                if is_seed && matches!(error, ProbeError::AccessDenied { .. }) {
                    return Err(DiscoveryError::Seed { seed: addr, error });
                }
                if is_seed && first_seed_error.is_none() {
                    first_seed_error = Some((addr.clone(), error.clone()));
                }
                tracing::warn!(instance = %addr, %error, "discovery: instance cannot be probed");
                unreachable.insert(addr, error);
            }
        }
    }
    if observations.is_empty() {
        if let Some((seed, error)) = first_seed_error {
            return Err(DiscoveryError::Seed { seed, error });
        }
    }
    let topology = topology_from(&observations, None);
    Ok(Discovered { topology, observations, unreachable })
}

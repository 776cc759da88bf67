//! Scenario builder for the tables of tests: a cluster described by what each instance would
//! answer and by what each coordinator saw, turned into a [`ClusterInput`].
//!
//! Ports name instances (`127.0.0.1:PORT`, server id `PORT - 3305`); MariaDB GTIDs are real
//! positions (`0-1-100`). Every instance starts reachable by every voter, 200 ms ago.

use crate::input::{ClusterInput, CoordinatorView, InstanceInput, NodeId, PromotionRule};
use primus_mysql::status::{IoThreadState, ReplicationError};
use primus_mysql::{GtidState, Observation, ProbeError, ProbeStage, ReplicaStatus, Version};
use primus_types::InstanceRole;
use std::collections::BTreeMap;

pub use primus_mysql::samples::{a, maria, mysql, observation, row, NOW, P, R1, R2, R3};

/// What one coordinator's latest probe got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Ok,
    /// Connection refused.
    Down,
    /// Connect timeout after 800 ms.
    Timeout,
    /// Too many connections: alive.
    Refused,
    /// Access denied: alive.
    Denied,
}

impl Seen {
    fn result(self, obs: &Observation) -> Result<Observation, ProbeError> {
        match self {
            Seen::Ok => Ok(obs.clone()),
            Seen::Down => Err(ProbeError::Unreachable { message: "connection refused".into() }),
            Seen::Timeout => Err(ProbeError::Timeout { stage: ProbeStage::Connect, after_ms: 800 }),
            Seen::Refused => Err(ProbeError::ConnectRejected { code: 1040, message: "Too many connections".into() }),
            Seen::Denied => Err(ProbeError::AccessDenied { code: 1045, message: "Access denied".into() }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub role: InstanceRole,
    pub source: Option<u16>,
    pub datacenter: Option<String>,
    pub maintenance: bool,
    pub rule: PromotionRule,
    /// How long ago replication from the source last progressed.
    pub progress_age: Option<u64>,
    pub obs: Observation,
    /// Per coordinator: what it saw, and how long ago.
    pub views: BTreeMap<NodeId, (Seen, u64)>,
}

#[derive(Debug, Clone)]
pub struct Sim {
    pub voters: Vec<NodeId>,
    pub primary: Option<u16>,
    pub epoch: u64,
    pub specs: BTreeMap<u16, Spec>,
    pub lease_expired: Option<String>,
    pub agent_holds_lease: Option<bool>,
    pub unwritable: Option<String>,
    pub no_loss_refusal: Option<String>,
}

impl Sim {
    pub fn new(voters: &[NodeId]) -> Sim {
        Sim {
            voters: voters.to_vec(),
            primary: None,
            epoch: 7,
            specs: BTreeMap::new(),
            lease_expired: None,
            agent_holds_lease: None,
            unwritable: None,
            no_loss_refusal: None,
        }
    }

    /// The leader counts the primary's agent lease as run out.
    pub fn lease_expired(mut self) -> Sim {
        self.lease_expired = Some("agent a1 of the primary: lease ran out 300 ms ago".into());
        self
    }

    /// The primary has a fencing agent; `holds`: it holds a lease from this leader.
    pub fn agent(mut self, holds: bool) -> Sim {
        self.agent_holds_lease = Some(holds);
        self
    }

    /// The leader failed to make the read-only primary writable.
    pub fn unwritable(mut self) -> Sim {
        self.unwritable = Some("3 attempts to make it writable failed: Access denied".into());
        self
    }

    /// The leader's last attempt was refused in no-loss mode.
    pub fn no_loss_refused(mut self) -> Sim {
        self.no_loss_refusal = Some("promoting 127.0.0.1:3308 could lose acknowledged transactions".into());
        self
    }

    /// Primary P with replicas R1 and R2, all healthy, three voters.
    pub fn standard() -> Sim {
        Sim::new(&[1, 2, 3]).primary(P).replica(R1, P).replica(R2, P)
    }

    /// Primary P with replicas R1, R2, R3, and P dead: unreachable from every voter, every
    /// replica's IO thread connecting for 2.1 s.
    pub fn dead_primary() -> Sim {
        let mut s = Sim::standard().replica(R3, P).seen_all(P, Seen::Down);
        for r in [R1, R2, R3] {
            s = s.io(r, IoThreadState::Connecting).progress(r, Some(2100));
            s = s.with_row(r, |row| row.seconds_behind = None);
        }
        s
    }

    fn views_all(&self) -> BTreeMap<NodeId, (Seen, u64)> {
        self.voters.iter().map(|n| (*n, (Seen::Ok, 200))).collect()
    }

    pub fn primary(mut self, port: u16) -> Sim {
        let mut obs = observation(port);
        obs.read_only = false;
        obs.gtid = maria("0-1-100", "", "0-1-100");
        let views = self.views_all();
        self.primary = Some(port);
        self.specs.insert(
            port,
            Spec {
                role: InstanceRole::Primary,
                source: None,
                datacenter: None,
                maintenance: false,
                rule: PromotionRule::Neutral,
                progress_age: None,
                obs,
                views,
            },
        );
        self
    }

    /// A healthy replica of `source` (which becomes an intermediate unless it is the primary).
    pub fn replica(mut self, port: u16, source: u16) -> Sim {
        let mut obs = observation(port);
        obs.replication.push(row(source));
        let views = self.views_all();
        if let Some(s) = self.specs.get_mut(&source) {
            if s.role == InstanceRole::Replica {
                s.role = InstanceRole::Intermediate;
            }
        }
        self.specs.insert(
            port,
            Spec {
                role: InstanceRole::Replica,
                source: Some(source),
                datacenter: None,
                maintenance: false,
                rule: PromotionRule::Neutral,
                progress_age: Some(100),
                obs,
                views,
            },
        );
        self
    }

    /// A source-less, non-primary instance (a detached or demoted old primary).
    pub fn detached(mut self, port: u16) -> Sim {
        let views = self.views_all();
        self.specs.insert(
            port,
            Spec {
                role: InstanceRole::Detached,
                source: None,
                datacenter: None,
                maintenance: false,
                rule: PromotionRule::Neutral,
                progress_age: None,
                obs: observation(port),
                views,
            },
        );
        self
    }

    pub fn spec(mut self, port: u16, f: impl FnOnce(&mut Spec)) -> Sim {
        f(self.specs.get_mut(&port).unwrap_or_else(|| panic!("no instance {port}")));
        self
    }

    pub fn obs(self, port: u16, f: impl FnOnce(&mut Observation)) -> Sim {
        self.spec(port, |s| f(&mut s.obs))
    }

    pub fn with_row(self, port: u16, f: impl FnOnce(&mut ReplicaStatus)) -> Sim {
        self.obs(port, |o| f(o.replication.first_mut().unwrap_or_else(|| panic!("{port} is not a replica"))))
    }

    /// Coordinator `node` saw `seen`, 200 ms ago.
    pub fn seen(self, port: u16, node: NodeId, seen: Seen) -> Sim {
        self.spec(port, |s| {
            s.views.insert(node, (seen, 200));
        })
    }

    pub fn seen_all(mut self, port: u16, seen: Seen) -> Sim {
        for n in self.voters.clone() {
            self = self.seen(port, n, seen);
        }
        self
    }

    /// Coordinator `node`'s view of `port` is `age_ms` old.
    pub fn age(self, port: u16, node: NodeId, age_ms: u64) -> Sim {
        self.spec(port, |s| {
            s.views.get_mut(&node).unwrap_or_else(|| panic!("no view")).1 = age_ms;
        })
    }

    pub fn no_view(self, port: u16, node: NodeId) -> Sim {
        self.spec(port, |s| {
            s.views.remove(&node);
        })
    }

    pub fn io(self, port: u16, io: IoThreadState) -> Sim {
        self.with_row(port, |r| {
            r.io_running = io;
            if io != IoThreadState::Yes {
                r.io_state = "Reconnecting after a failed master event read".into();
                r.last_io_error = Some(ReplicationError {
                    errno: 2003,
                    message: "error reconnecting to master".into(),
                    timestamp: None,
                });
            }
        })
    }

    /// Stops the SQL thread on a duplicate-key error.
    pub fn sql_stopped(self, port: u16) -> Sim {
        self.with_row(port, |r| {
            r.sql_running = false;
            r.seconds_behind = None;
            r.last_sql_error = Some(ReplicationError {
                errno: 1062,
                message: "Duplicate entry '1' for key 'PRIMARY'".into(),
                timestamp: None,
            });
        })
    }

    pub fn progress(self, port: u16, age_ms: Option<u64>) -> Sim {
        self.spec(port, |s| s.progress_age = age_ms)
    }

    pub fn writable(self, port: u16) -> Sim {
        self.obs(port, |o| o.read_only = false)
    }

    pub fn maintenance(self, port: u16) -> Sim {
        self.spec(port, |s| s.maintenance = true)
    }

    pub fn rule(self, port: u16, rule: PromotionRule) -> Sim {
        self.spec(port, |s| s.rule = rule)
    }

    pub fn dc(self, port: u16, dc: &str) -> Sim {
        self.spec(port, |s| s.datacenter = Some(dc.into()))
    }

    /// MariaDB replica state: `gtid_current_pos` (also its slave position and binlog state) and
    /// `Gtid_IO_Pos`.
    pub fn gtid(self, port: u16, current: &str, io_pos: &str) -> Sim {
        self.gtid_state(port, maria(current, current, current), io_pos)
    }

    pub fn gtid_state(self, port: u16, state: GtidState, io_pos: &str) -> Sim {
        let io = io_pos.parse().unwrap_or_else(|e| panic!("{e}"));
        self.obs(port, |o| {
            o.gtid = state;
            if let Some(r) = o.replication.first_mut() {
                r.gtid_io_pos = Some(io);
            }
        })
    }

    pub fn version(self, port: u16, major: u16, minor: u16, patch: u16) -> Sim {
        self.obs(port, |o| o.server.version = Version::new(major, minor, patch))
    }

    pub fn input(&self) -> ClusterInput {
        let instances = self
            .specs
            .iter()
            .map(|(port, s)| {
                let views = s
                    .views
                    .iter()
                    .map(|(n, (seen, age))| {
                        (*n, CoordinatorView { at_ms: NOW - age, result: seen.result(&s.obs).map(std::sync::Arc::new) })
                    })
                    .collect();
                let inst = InstanceInput {
                    addr: a(*port),
                    role: s.role,
                    source: s.source.map(a),
                    datacenter: s.datacenter.clone(),
                    views,
                    io_progress_at_ms: s.progress_age.map(|age| NOW - age),
                    maintenance: s.maintenance,
                    promotion_rule: s.rule,
                };
                (a(*port), inst)
            })
            .collect();
        ClusterInput {
            cluster: "shop".into(),
            epoch: self.epoch,
            now_ms: NOW,
            primary: self.primary.map(a),
            voters: self.voters.iter().copied().collect(),
            instances,
            primary_lease_expired: self.lease_expired.clone(),
            primary_agent_holds_lease: self.agent_holds_lease,
            primary_unwritable: self.unwritable.clone(),
            no_loss_refusal: self.no_loss_refusal.clone(),
        }
    }
}

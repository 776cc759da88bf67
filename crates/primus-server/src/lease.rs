//! Leases of fencing agents, as the leader counts them.
//!
//! The agent beside a primary's mysqld renews a lease every few hundred ms; it counts
//! the lease from when it *sent* the renewal, the leader from when it *received* it,
//! both on monotonic clocks, so the agent always believes its lease ended first.
//! Leases live in the leader's memory only (a renewal is not a Raft write). A new
//! leader knows nothing of the leases its predecessor granted, so it treats every
//! agent's lease as running until `max_lease_ttl` plus an election timeout after it
//! became leader: a deposed leader stops granting at the latest an election timeout
//! after it last heard from a quorum, which is before anybody else can be elected.

use primus_types::{ClusterName, InstanceAddr, NodeId, Raft};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Grant {
    received_at: Instant,
    ttl: Duration,
}

pub struct LeaseTable {
    me: NodeId,
    raft: Raft,
    max_ttl: Duration,
    margin: Duration,
    election_timeout_max: Duration,
    /// The term in which this node last became leader, and when it noticed.
    leader_since: Mutex<Option<(u64, Instant)>>,
    grants: Mutex<HashMap<(ClusterName, InstanceAddr), Grant>>,
}

impl LeaseTable {
    pub fn new(
        me: NodeId,
        raft: Raft,
        max_ttl: Duration,
        margin: Duration,
        election_timeout_max: Duration,
    ) -> LeaseTable {
        LeaseTable {
            me,
            raft,
            max_ttl,
            margin,
            election_timeout_max,
            leader_since: Mutex::new(None),
            grants: Mutex::new(HashMap::new()),
        }
    }

    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// When this node became leader in its current term (noted on first use in a
    /// term; the caller has just checked that it leads).
    fn leader_since(&self) -> Instant {
        let term = self.raft.metrics().borrow().current_term;
        let mut g = self.leader_since.lock().unwrap_or_else(|p| p.into_inner());
        match *g {
            Some((t, at)) if t == term => at,
            _ => {
                let now = Instant::now();
                *g = Some((term, now));
                now
            }
        }
    }

    /// Watch leadership so `leader_since` is noted when leadership starts, not
    /// when it is first needed.
    pub fn start(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        let mut rx = self.raft.metrics();
        tokio::spawn(async move {
            loop {
                let leads = {
                    let m = rx.borrow();
                    m.current_leader == Some(me.me) && m.state == openraft::ServerState::Leader
                };
                if leads {
                    me.leader_since();
                } else {
                    *me.leader_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Record a lease granted now (the request was received at `received_at`).
    pub fn grant(&self, cluster: &ClusterName, instance: &InstanceAddr, ttl: Duration, received_at: Instant) {
        self.leader_since();
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        g.insert((cluster.clone(), instance.clone()), Grant { received_at, ttl });
    }

    /// The instant after which no lease of `instance` granted by this leader or a
    /// previous one can still be held (margin included).
    pub fn expiry(&self, cluster: &ClusterName, instance: &InstanceAddr) -> Instant {
        let inherited = self.leader_since() + self.max_ttl + self.election_timeout_max;
        let own = self
            .grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(cluster.clone(), instance.clone()))
            .map(|g| g.received_at + g.ttl);
        own.map_or(inherited, |o| o.max(inherited)) + self.margin
    }

    /// How long ago the lease of `instance` ran out, if it has (`None`: it may still be held).
    pub fn expired_for(&self, cluster: &ClusterName, instance: &InstanceAddr) -> Option<Duration> {
        let now = Instant::now();
        let e = self.expiry(cluster, instance);
        (now >= e).then(|| now - e)
    }

    /// Whether the agent of `instance` holds a lease this leader granted, right now.
    pub fn holds(&self, cluster: &ClusterName, instance: &InstanceAddr) -> bool {
        let now = Instant::now();
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(cluster.clone(), instance.clone()))
            .is_some_and(|g| g.received_at + g.ttl > now)
    }

    /// Forget grants of instances that are no longer anybody's concern.
    pub fn forget(&self, cluster: &ClusterName, instance: &InstanceAddr) {
        self.grants.lock().unwrap_or_else(|p| p.into_inner()).remove(&(cluster.clone(), instance.clone()));
    }
}

//! Leases of fencing agents, as the leader counts them.
//!
//! The agent beside a primary's mysqld renews a lease every few hundred ms; it counts
//! the lease from when it *sent* the renewal, the leader from when it *received* it,
//! both on monotonic clocks, so the agent always believes its lease ended first.
//! Leases live in the leader's memory only (a renewal is not a Raft write). A new
//! leader knows nothing of the leases its predecessor granted, so it treats every
//! agent's lease as running until the agent's TTL *as recorded in Raft* (the longest
//! any agent of that instance registered with) plus an election timeout after it
//! became leader: a deposed leader stops granting at the latest an election timeout
//! after it last heard from a quorum, which is before anybody else can be elected.
//! Using the recorded TTL rather than this node's `[fencing] max_lease_ttl_ms` means a
//! new leader configured with a shorter maximum still waits out what its predecessor
//! may have granted.
//!
//! Grants are forgotten when this node stops leading: a later term starts from the
//! inherited bound again.

use crate::consensus::Consensus;
use primus_types::state::Registry;
use primus_types::{AgentRecord, ClusterName, InstanceAddr, NodeId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct LeaseTable {
    me: NodeId,
    consensus: std::sync::Arc<dyn Consensus>,
    max_ttl: Duration,
    margin: Duration,
    election_timeout_max: Duration,
    /// The term in which this node last became leader, and when it noticed.
    leader_since: Mutex<Option<(u64, Instant)>>,
    /// The end of the longest lease granted per instance in this leadership.
    grants: Mutex<HashMap<(ClusterName, InstanceAddr), Instant>>,
    tasks: crate::tasks::Tasks,
}

impl LeaseTable {
    pub fn new(
        me: NodeId,
        consensus: std::sync::Arc<dyn Consensus>,
        max_ttl: Duration,
        margin: Duration,
        election_timeout_max: Duration,
    ) -> LeaseTable {
        LeaseTable {
            me,
            consensus,
            max_ttl,
            margin,
            election_timeout_max,
            leader_since: Mutex::new(None),
            grants: Mutex::new(HashMap::new()),
            tasks: crate::tasks::Tasks::default(),
        }
    }

    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// The TTL to count for `agent`'s leases: what Raft recorded for it (this node's
    /// maximum for an agent too old to have said).
    pub fn ttl_of(&self, agent: Option<&AgentRecord>) -> Duration {
        agent.and_then(|a| a.ttl_ms).map_or(self.max_ttl, Duration::from_millis)
    }

    /// What is added to a lease before it counts as run out: this node's margin, or the
    /// agent's fence timeout when that is longer (it fences after its lease ends).
    fn margin_of(&self, agent: Option<&AgentRecord>) -> Duration {
        let fence = agent.and_then(|a| a.fence_timeout_ms).map_or(Duration::ZERO, Duration::from_millis);
        self.margin.max(fence + Duration::from_millis(200))
    }

    /// When this node became leader in its current term (noted on first use in a
    /// term; the caller has just checked that it leads).
    pub fn leader_since(&self) -> Instant {
        let term = self.consensus.view().term;
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
    /// when it is first needed, and grants are forgotten when it ends.
    pub fn start(self: &std::sync::Arc<Self>) {
        let me = self.clone();
        let mut rx = self.consensus.watch();
        self.tasks.spawn(async move {
            loop {
                let leads = {
                    let v = rx.borrow();
                    v.leader == Some(me.me) && v.is_leader
                };
                if leads {
                    me.leader_since();
                } else {
                    *me.leader_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    me.grants.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Stop watching leadership.
    pub fn stop(&self) {
        self.tasks.stop();
    }

    /// Record a lease granted now (the request was received at `received_at`). A
    /// shorter grant never shortens one already given.
    pub fn grant(&self, cluster: &ClusterName, instance: &InstanceAddr, ttl: Duration, received_at: Instant) {
        self.leader_since();
        let until = received_at + ttl;
        let mut g = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.entry((cluster.clone(), instance.clone())).or_insert(until);
        *e = (*e).max(until);
    }

    /// The end of the lease this leader granted `instance`, if it granted one.
    pub fn granted(&self, cluster: &ClusterName, instance: &InstanceAddr) -> Option<Instant> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner()).get(&(cluster.clone(), instance.clone())).copied()
    }

    /// The instant after which no lease of `instance` granted by this leader or a
    /// previous one can still be held (margin included).
    pub fn expiry(&self, cluster: &ClusterName, instance: &InstanceAddr, agent: Option<&AgentRecord>) -> Instant {
        let inherited = self.leader_since() + self.ttl_of(agent) + self.election_timeout_max;
        let own = self.granted(cluster, instance);
        own.map_or(inherited, |o| o.max(inherited)) + self.margin_of(agent)
    }

    /// How long ago the lease of `instance` ran out (`None`: it may still be held, or
    /// it never was). A lease this leader granted runs out at its end; a lease it never
    /// granted counts as run out only once the inherited bound has passed *and* the
    /// server was seen read-only (`fenced`): an agent that never held a lease never
    /// fenced anything, and a promoted replica whose agent has not renewed yet must not
    /// look like a primary whose agent died.
    pub fn expired_for(
        &self,
        cluster: &ClusterName,
        instance: &InstanceAddr,
        agent: Option<&AgentRecord>,
        fenced: bool,
    ) -> Option<Duration> {
        if self.granted(cluster, instance).is_none() && !fenced {
            return None;
        }
        let now = Instant::now();
        let e = self.expiry(cluster, instance, agent);
        (now >= e).then(|| now - e)
    }

    /// Whether the agent of `instance` holds a lease this leader granted, right now.
    pub fn holds(&self, cluster: &ClusterName, instance: &InstanceAddr) -> bool {
        self.granted(cluster, instance).is_some_and(|until| until > Instant::now())
    }

    /// Forget grants of instances that are no longer anybody's concern.
    pub fn forget(&self, cluster: &ClusterName, instance: &InstanceAddr) {
        self.grants.lock().unwrap_or_else(|p| p.into_inner()).remove(&(cluster.clone(), instance.clone()));
    }
}

/// What a lease renewal gets, decided from the replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseVerdict {
    Grant,
    /// The instance is the candidate of a failover in progress.
    Promoting,
    /// The instance is the old primary of a failover in progress (its id).
    FailoverInProgress(String),
    Refuse {
        reason: &'static str,
        fence_now: bool,
    },
}

/// How the leader answers a renewal from `agent_id` for `instance` of cluster `name`
/// (`too_long`: it asked for more than `max_lease_ttl_ms`): the cluster's epoch, its
/// primary, and the verdict; `None` when the cluster is unknown. Pure: the leader
/// decides from its applied state alone.
pub fn verdict(
    s: &Registry,
    name: &ClusterName,
    instance: &InstanceAddr,
    agent_id: &str,
    too_long: bool,
) -> Option<(u64, String, LeaseVerdict)> {
    let c = s.clusters.get(name)?;
    let primary = c.topology.primary.as_ref().map(ToString::to_string).unwrap_or_default();
    let agent = c.agents.get(instance);
    let verdict = if !c.topology.instances.contains_key(instance) {
        LeaseVerdict::Refuse { reason: "unknown_instance", fence_now: false }
    } else if too_long {
        LeaseVerdict::Refuse { reason: "ttl_too_long", fence_now: false }
    } else {
        // A lease is waited out only for an agent Raft knows of: never grant one to
        // anybody else (the agent registers again on this answer).
        let unknown = agent.is_none_or(|a| a.agent_id != agent_id);
        let not_registered = LeaseVerdict::Refuse { reason: "not_registered", fence_now: false };
        match c.in_flight().filter(|f| f.kind.changes_primary()) {
            Some(f) if &f.candidate == instance && unknown => not_registered,
            // The agent counts this answer as a lease: so does the leader.
            Some(f) if &f.candidate == instance => LeaseVerdict::Promoting,
            // Fence at once; the failover still waits for the lease to run out, in case
            // this answer never reaches the agent.
            Some(f) if &f.old_primary == instance => LeaseVerdict::FailoverInProgress(f.id.clone()),
            _ if c.topology.primary.as_ref() == Some(instance) && unknown => not_registered,
            _ if c.topology.primary.as_ref() == Some(instance) => LeaseVerdict::Grant,
            // A demoted former primary must stay read-only; an ordinary replica is left alone.
            _ => LeaseVerdict::Refuse { reason: "not_primary", fence_now: c.demoted.contains(instance) },
        }
    };
    Some((c.epoch, primary, verdict))
}

/// A renewal's answer, after the leader recorded any grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewAnswer {
    pub granted: bool,
    pub ttl_ms: u64,
    pub reason: &'static str,
    pub fence_now: bool,
}

impl LeaseTable {
    /// Carry out `verdict` for a renewal of `ttl` received at `received_at`: record a
    /// grant (also for a candidate being promoted, which counts it as a lease).
    pub fn answer(
        &self,
        name: &ClusterName,
        instance: &InstanceAddr,
        ttl: Duration,
        received_at: Instant,
        verdict: &LeaseVerdict,
    ) -> RenewAnswer {
        let ttl_ms = ttl.as_millis() as u64;
        match verdict {
            LeaseVerdict::Grant => {
                self.grant(name, instance, ttl, received_at);
                RenewAnswer { granted: true, ttl_ms, reason: "", fence_now: false }
            }
            LeaseVerdict::Promoting => {
                self.grant(name, instance, ttl, received_at);
                RenewAnswer { granted: false, ttl_ms: 0, reason: "being_promoted", fence_now: false }
            }
            LeaseVerdict::FailoverInProgress(_) => {
                RenewAnswer { granted: false, ttl_ms: 0, reason: "failover_in_progress", fence_now: true }
            }
            LeaseVerdict::Refuse { reason, fence_now } => {
                RenewAnswer { granted: false, ttl_ms: 0, reason, fence_now: *fence_now }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{GroupView, WriteError};
    use primus_types::{Request, Response};
    use tokio::sync::watch;

    /// A group this node leads in term 7; nothing is ever written.
    struct Leads(watch::Sender<GroupView>);

    #[async_trait::async_trait]
    impl Consensus for Leads {
        async fn write(&self, _req: Request) -> Result<(u64, Response), WriteError> {
            unreachable!("the lease table does not write")
        }
        async fn ensure_leader(&self) -> Result<(), WriteError> {
            Ok(())
        }
        fn view(&self) -> GroupView {
            self.0.borrow().clone()
        }
        fn watch(&self) -> watch::Receiver<GroupView> {
            self.0.subscribe()
        }
    }

    fn table(max_ttl_ms: u64, margin_ms: u64) -> LeaseTable {
        let view = GroupView { term: 7, ..Default::default() };
        let (tx, _) = watch::channel(view);
        LeaseTable::new(
            1,
            std::sync::Arc::new(Leads(tx)),
            Duration::from_millis(max_ttl_ms),
            Duration::from_millis(margin_ms),
            Duration::from_millis(300),
        )
    }

    /// Issue 12 item 7b: a new leader whose own `max_lease_ttl_ms` (2 s) is shorter than
    /// the TTL an agent registered with under an earlier leader (6 s) waits out the
    /// recorded TTL, not its own, and at least the agent's recorded fence time.
    #[tokio::test]
    async fn a_new_leader_waits_out_the_ttl_raft_recorded_for_the_agent_not_its_own_maximum() {
        let t = table(2000, 100);
        let (c, i): (ClusterName, InstanceAddr) = ("c".parse().unwrap(), InstanceAddr::new("db1", 3306).unwrap());
        let since = t.leader_since();
        let agent =
            AgentRecord { agent_id: "a".into(), registered_at_ms: 0, ttl_ms: Some(6000), fence_timeout_ms: Some(900) };
        // Inherited (never granted here): 6 s TTL + an election timeout + the agent's
        // fence time and 200 ms (longer than this node's 100 ms margin).
        let want = since + Duration::from_millis(6000 + 300 + 900 + 200);
        assert_eq!(t.expiry(&c, &i, Some(&agent)), want);
        // An agent registered by an older version (no TTL recorded): this node's maximum.
        let old = AgentRecord { ttl_ms: None, fence_timeout_ms: None, ..agent.clone() };
        assert_eq!(t.expiry(&c, &i, Some(&old)), since + Duration::from_millis(2000 + 300 + 200));
        // A longer lease this leader granted itself still wins.
        t.grant(&c, &i, Duration::from_millis(9000), since);
        assert_eq!(t.expiry(&c, &i, Some(&agent)), since + Duration::from_millis(9000 + 900 + 200));
    }
}

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
//! The margin is recorded the same way: a leader grants a lease only under settings
//! Raft holds for the agent (a TTL no longer than the recorded one, a recorded margin
//! at least its own `[fencing] lease_margin_ms`); otherwise it answers
//! `not_registered`, the agent registers again and the leader's margin is committed
//! with the registration before any grant. So every lease was granted under a margin
//! Raft knows, and a later leader counts with the largest of its own and the recorded
//! one, whatever its configuration says.
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

    /// This node's own `[fencing]` settings, for [`verdict`].
    pub fn limits(&self) -> LeaseLimits {
        LeaseLimits { max_ttl: self.max_ttl, margin: self.margin }
    }

    /// The TTL to count for `agent`'s leases: what Raft recorded for it (this node's
    /// maximum for an agent too old to have said).
    pub fn ttl_of(&self, agent: Option<&AgentRecord>) -> Duration {
        agent.and_then(|a| a.ttl_ms).map_or(self.max_ttl, Duration::from_millis)
    }

    /// What is added to a lease before it counts as run out: the largest of this node's
    /// margin, the margin Raft recorded for the agent (the largest of the leaders that
    /// granted it leases) and the agent's fence timeout (it fences after its lease ends).
    fn margin_of(&self, agent: Option<&AgentRecord>) -> Duration {
        let fence = agent.and_then(|a| a.fence_timeout_ms).map_or(Duration::ZERO, Duration::from_millis);
        let recorded = agent.and_then(|a| a.margin_ms).map_or(Duration::ZERO, Duration::from_millis);
        self.margin.max(recorded).max(fence + Duration::from_millis(200))
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

/// A leader's own `[fencing]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLimits {
    /// `max_lease_ttl_ms`.
    pub max_ttl: Duration,
    /// `lease_margin_ms`.
    pub margin: Duration,
}

/// The longest TTL a renewal of `agent`'s lease may ask for: this leader's maximum, or
/// the TTL Raft recorded for the agent when a leader accepted a longer one (a new
/// leader configured with a smaller maximum does not fence a primary that an earlier
/// one let hold such leases).
pub fn longest_ttl(limits: LeaseLimits, agent: Option<&AgentRecord>) -> Duration {
    limits.max_ttl.max(agent.and_then(|a| a.ttl_ms).map_or(Duration::ZERO, Duration::from_millis))
}

/// Whether Raft holds `agent`'s lease settings as this leader would grant under them:
/// a TTL at least `ttl` (when one is recorded) and a margin at least this leader's.
/// If not, the leader must not grant before the agent registered again (with this
/// leader committing the registration and its margin).
fn settings_recorded(agent: &AgentRecord, ttl: Duration, limits: LeaseLimits) -> bool {
    let ttl_ok = agent.ttl_ms.is_none_or(|t| ttl <= Duration::from_millis(t));
    let margin_ok = agent.margin_ms.is_some_and(|m| Duration::from_millis(m) >= limits.margin);
    ttl_ok && margin_ok
}

/// How the leader answers a renewal of a `ttl` lease from `agent_id` for `instance` of
/// cluster `name` under its own `limits`: the cluster's epoch, its primary, and the
/// verdict; `None` when the cluster is unknown. Pure: the leader decides from its
/// applied state alone.
pub fn verdict(
    s: &Registry,
    name: &ClusterName,
    instance: &InstanceAddr,
    agent_id: &str,
    ttl: Duration,
    limits: LeaseLimits,
) -> Option<(u64, String, LeaseVerdict)> {
    let c = s.clusters.get(name)?;
    let primary = c.topology.primary.as_ref().map(ToString::to_string).unwrap_or_default();
    let agent = c.agents.get(instance);
    let verdict = if !c.topology.instances.contains_key(instance) {
        LeaseVerdict::Refuse { reason: "unknown_instance", fence_now: false }
    } else if ttl > longest_ttl(limits, agent) {
        LeaseVerdict::Refuse { reason: "ttl_too_long", fence_now: false }
    } else {
        // A lease is waited out only for an agent Raft knows of, and only as long as
        // Raft records: never grant one to anybody else, nor under settings Raft does
        // not hold, nor to an agent that handed its lease back (failovers no longer
        // wait for it): the agent registers again on this answer, which Raft orders
        // after the release.
        let unknown =
            agent.is_none_or(|a| a.agent_id != agent_id || !settings_recorded(a, ttl, limits) || a.released.is_some());
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

    fn agent(ttl: Option<u64>, fence: Option<u64>, margin: Option<u64>) -> AgentRecord {
        AgentRecord {
            agent_id: "a".into(),
            registered_at_ms: 0,
            ttl_ms: ttl,
            fence_timeout_ms: fence,
            margin_ms: margin,
            released: None,
            registered_index: None,
        }
    }

    /// Issue 12 item 7b: a new leader whose own `max_lease_ttl_ms` (2 s) and
    /// `lease_margin_ms` (100 ms) are smaller than what Raft recorded for the agent
    /// under an earlier leader (a 6 s TTL, a 3 s margin) waits out the recorded ones,
    /// not its own, and at least the agent's recorded fence time.
    #[tokio::test]
    async fn a_new_leader_waits_out_the_ttl_and_margin_raft_recorded_for_the_agent_not_its_own() {
        let t = table(2000, 100);
        let (c, i): (ClusterName, InstanceAddr) = ("c".parse().unwrap(), InstanceAddr::new("db1", 3306).unwrap());
        let since = t.leader_since();
        // Inherited (never granted here): 6 s TTL + an election timeout + the recorded
        // 3 s margin (longer than this node's 100 ms and the fence time).
        let rec = agent(Some(6000), Some(900), Some(3000));
        assert_eq!(t.expiry(&c, &i, Some(&rec)), since + Duration::from_millis(6000 + 300 + 3000));
        // No margin recorded (an older leader registered it): the agent's fence time and
        // 200 ms, which is longer than this node's 100 ms margin.
        let no_margin = agent(Some(6000), Some(900), None);
        assert_eq!(t.expiry(&c, &i, Some(&no_margin)), since + Duration::from_millis(6000 + 300 + 900 + 200));
        // An agent registered by an older version (no TTL recorded): this node's maximum.
        let old = agent(None, None, None);
        assert_eq!(t.expiry(&c, &i, Some(&old)), since + Duration::from_millis(2000 + 300 + 200));
        // A longer lease this leader granted itself still wins.
        t.grant(&c, &i, Duration::from_millis(9000), since);
        assert_eq!(t.expiry(&c, &i, Some(&rec)), since + Duration::from_millis(9000 + 3000));
    }

    /// A registry with cluster `c` whose primary `h:1` has agent `a` registered as `rec`.
    fn registry_with_agent(rec: &AgentRecord) -> Registry {
        use primus_types::{Command, Origin, Topology};
        let log_id = |i| primus_types::LogId::new(openraft::CommittedLeaderId::new(1, 1), i);
        let name: ClusterName = "c".parse().unwrap();
        let h = |p: u16| InstanceAddr::new("h", p).unwrap();
        let mut r = Registry::default();
        let mut apply =
            |i, cmd| assert_eq!(r.apply(&log_id(i), &Request::new(cmd, Origin::default())).0, Response::Done);
        apply(
            1,
            Command::RegisterCluster {
                name: name.clone(),
                seeds: vec![h(1)],
                settings: Default::default(),
                topology: None,
            },
        );
        let topology = Topology::from_edges(
            vec![
                (h(1), None, 1, "mariadb".into(), "10.11".into()),
                (h(2), Some(h(1)), 2, "mariadb".into(), "10.11".into()),
            ],
            None,
        );
        apply(2, Command::UpdateTopology { name: name.clone(), topology });
        apply(
            3,
            Command::RegisterAgent {
                name,
                instance: h(1),
                agent_id: rec.agent_id.clone(),
                ttl_ms: rec.ttl_ms,
                fence_timeout_ms: rec.fence_timeout_ms,
                margin_ms: rec.margin_ms,
                release: None,
                of_registration: None,
            },
        );
        if let Some(x) = &rec.released {
            apply(
                4,
                Command::RegisterAgent {
                    name: "c".parse().unwrap(),
                    instance: h(1),
                    agent_id: rec.agent_id.clone(),
                    ttl_ms: None,
                    fence_timeout_ms: None,
                    margin_ms: None,
                    release: Some(x.reason.clone()),
                    of_registration: Some(3),
                },
            );
        }
        r
    }

    /// Issue 12 item 7b: a leader grants a lease only under settings Raft holds for the
    /// agent. A margin smaller than its own (or none) and a TTL longer than the recorded
    /// one get `not_registered` (the agent registers again, and the leader's margin is
    /// committed before any grant); a TTL an earlier leader accepted is not refused as
    /// too long by a leader configured with a smaller maximum.
    #[test]
    fn a_lease_is_granted_only_under_a_ttl_and_margin_raft_recorded() {
        let (name, primary) = ("c".parse::<ClusterName>().unwrap(), InstanceAddr::new("h", 1).unwrap());
        let ms = Duration::from_millis;
        let limits = LeaseLimits { max_ttl: ms(2000), margin: ms(700) };
        let decide = |rec: &AgentRecord, ttl: u64| {
            let r = registry_with_agent(rec);
            verdict(&r, &name, &primary, "a", ms(ttl), limits).map(|v| v.2)
        };
        let not_registered = Some(LeaseVerdict::Refuse { reason: "not_registered", fence_now: false });
        let too_long = Some(LeaseVerdict::Refuse { reason: "ttl_too_long", fence_now: false });
        assert_eq!(decide(&agent(Some(1500), Some(500), Some(700)), 1500), Some(LeaseVerdict::Grant));
        assert_eq!(decide(&agent(Some(1500), Some(500), Some(3000)), 1500), Some(LeaseVerdict::Grant));
        assert_eq!(decide(&agent(Some(1500), Some(500), Some(100)), 1500), not_registered, "smaller margin");
        assert_eq!(decide(&agent(Some(1500), Some(500), None), 1500), not_registered, "no margin recorded");
        assert_eq!(decide(&agent(Some(1500), Some(500), Some(700)), 1800), not_registered, "longer than recorded");
        assert_eq!(decide(&agent(Some(1500), Some(500), Some(700)), 2500), too_long);
        // An earlier leader accepted 6 s: this one (2 s maximum) keeps granting it.
        assert_eq!(decide(&agent(Some(6000), Some(500), Some(700)), 6000), Some(LeaseVerdict::Grant));
        assert_eq!(decide(&agent(Some(6000), Some(500), Some(700)), 6001), too_long);
        // An older agent that recorded no TTL: this leader's maximum bounds it.
        assert_eq!(decide(&agent(None, None, Some(700)), 2000), Some(LeaseVerdict::Grant));
        // Issue 14: an agent that handed its lease back gets none until it registers
        // again (Raft orders that registration after the release).
        let released = AgentRecord {
            released: Some(primus_types::LeaseRelease { at_ms: 1, reason: "mysqld exited".into() }),
            ..agent(Some(1500), Some(500), Some(700))
        };
        assert_eq!(decide(&released, 1500), not_registered, "released");
    }
}

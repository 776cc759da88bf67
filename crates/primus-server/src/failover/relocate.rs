//! `primusctl relocate`: move a replica under another member of its cluster (GTID
//! repoint), write-ahead and audited.

use super::*;

/// What `relocate` did.
#[derive(Debug)]
pub struct Relocated {
    pub log_index: u64,
    pub message: String,
}

/// The instances `below` replicates from, nearest first (its chain up to the root),
/// as the agreed topology has it.
fn sources_of(c: &ClusterRecord, below: &InstanceAddr) -> Vec<InstanceAddr> {
    let mut chain = Vec::new();
    let mut at = below.clone();
    while let Some(src) = c.topology.instances.get(&at).and_then(|i| i.source.clone()) {
        if chain.contains(&src) || chain.len() > c.topology.instances.len() {
            break;
        }
        chain.push(src.clone());
        at = src;
    }
    chain
}

impl Engine {
    /// Repoint replica `addr` under `below` (another replica, an intermediate, or the
    /// primary), by GTID. Refused, with the reason, when it would create a loop (`below`
    /// replicates, directly or not, from `addr`), when either server has transactions
    /// the primary lacks (errant: they would spread, or `addr` could never line up), when
    /// `below` keeps no binary log of what it applies (`log_bin`, `log_slave_updates`),
    /// when either cannot be probed, for the primary, and during a failover. The
    /// `RelocateReplica` record is committed before `addr` is touched.
    pub async fn relocate(
        &self,
        name: &ClusterName,
        addr: &InstanceAddr,
        below: &InstanceAddr,
        actor: &str,
    ) -> Result<Relocated, FailoverError> {
        self.confirm_leader().await?;
        let c = self.cluster(name)?;
        if c.in_flight().is_some() {
            return Err(FailoverError::Busy("a failover is in progress; retry when it is done".into()));
        }
        let unknown = |a: &InstanceAddr| FailoverError::UnknownInstance { cluster: name.clone(), instance: a.clone() };
        let inst = c.topology.instances.get(addr).ok_or_else(|| unknown(addr))?;
        if !c.topology.instances.contains_key(below) {
            return Err(unknown(below));
        }
        if addr == below {
            return Err(FailoverError::InvalidRequest(format!("{addr} cannot replicate from itself")));
        }
        let primary =
            c.topology.primary.clone().ok_or_else(|| FailoverError::Refused(format!("{name} has no primary")))?;
        if &primary == addr {
            return Err(FailoverError::InvalidRequest(format!(
                "{addr} is the primary: a switchover moves the primary (`primusctl switchover {name} --to …`)"
            )));
        }
        if !matches!(inst.role, primus_types::InstanceRole::Replica | primus_types::InstanceRole::Intermediate) {
            return Err(FailoverError::Refused(format!(
                "{addr} is a {}, not a replica: `primusctl rejoin` brings a demoted or detached instance back",
                inst.role
            )));
        }
        if inst.source.as_ref() == Some(below) {
            return Err(FailoverError::Refused(format!("{addr} already replicates from {below}")));
        }
        if sources_of(&c, below).contains(addr) {
            return Err(FailoverError::Refused(format!(
                "{below} replicates (directly or through others) from {addr}: relocating {addr} below it would make a \
                 replication loop"
            )));
        }
        let mut probe = vec![addr.clone(), below.clone()];
        if below != &primary {
            probe.push(primary.clone());
        }
        let recs = self.monitor.probe_fresh(&probe).await;
        let obs = |a: &InstanceAddr| {
            recs.iter()
                .find(|r| &r.addr == a)
                .and_then(|r| r.result.as_ref().ok().cloned())
                .ok_or_else(|| FailoverError::Refused(format!("{a} cannot be probed right now")))
        };
        let (o, b, p) = (obs(addr)?, obs(below)?, obs(&primary)?);
        for (who, ob) in [(addr, &o), (below, &b)] {
            if who == &primary {
                continue;
            }
            if let Some(r) = primus_mysql::errant_transactions(ob, &p).filter(|r| !r.is_empty()) {
                return Err(FailoverError::Refused(format!(
                    "{who} has {} transaction(s) the primary {primary} does not have: {r}; relocating would {} \
                     (rebuild it from the primary, or remove the errant transactions, first)",
                    r.count(),
                    if who == addr { "not make them go away" } else { "copy them to the relocated replica" }
                )));
            }
        }
        if !b.log_bin || (below != &primary && !b.log_slave_updates) {
            return Err(FailoverError::Refused(format!(
                "{below} cannot serve as a source: it needs log_bin{} (log_bin {}, log_slave_updates {})",
                if below == &primary { "" } else { " and log_slave_updates" },
                b.log_bin,
                b.log_slave_updates
            )));
        }
        let login = self.replication_credentials().map_err(FailoverError::Refused)?;
        let password = login.password.clone();
        let from = inst.source.clone();
        let idx = self
            .commit(
                Command::RelocateReplica {
                    name: name.clone(),
                    instance: addr.clone(),
                    below: below.clone(),
                    from: from.clone(),
                },
                actor,
            )
            .await?;
        let prober = self.prober(addr);
        prober
            .execute(&repoint_sql(&o, below, &login, false), self.step_timeout())
            .await
            .map_err(|e| FailoverError::Refused(redact(&e.to_string(), &password)))?;
        prober.disconnect().await;
        self.monitor.probe_now(addr);
        let was = from.map(|f| f.to_string()).unwrap_or_else(|| "nothing".into());
        tracing::warn!(cluster = %name, instance = %addr, %below, from = %was, epoch = c.epoch, %actor, "replica relocated");
        Ok(Relocated { log_index: idx, message: format!("{addr} now replicates from {below} (was {was})") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use primus_types::Topology;

    #[test]
    fn the_chain_above_an_instance_is_what_a_loop_check_needs() {
        let a = |p: u16| InstanceAddr::new("h", p).unwrap();
        let topology = Topology::from_edges(
            vec![
                (a(1), None, 1, "mariadb".into(), "10.11".into()),
                (a(2), Some(a(1)), 2, "mariadb".into(), "10.11".into()),
                (a(3), Some(a(2)), 3, "mariadb".into(), "10.11".into()),
                (a(4), Some(a(1)), 4, "mariadb".into(), "10.11".into()),
            ],
            Some(&a(1)),
        );
        let json = serde_json::json!({"name": "c", "seeds": [a(1)], "registered_at_index": 1,
            "registered_at_ms": 0, "registered_by": "t"});
        let mut c: ClusterRecord = serde_json::from_value(json).expect("record");
        c.topology = topology;
        assert_eq!(sources_of(&c, &a(3)), vec![a(2), a(1)]);
        assert_eq!(sources_of(&c, &a(4)), vec![a(1)]);
        assert!(sources_of(&c, &a(1)).is_empty());
        // Relocating 2 below 3 would loop (3 is below 2); below 4 would not.
        assert!(sources_of(&c, &a(3)).contains(&a(2)));
        assert!(!sources_of(&c, &a(4)).contains(&a(2)));
    }
}

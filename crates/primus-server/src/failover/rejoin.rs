//! `primusctl rejoin`: a demoted or detached instance back under the primary.

use super::*;

impl Engine {
    /// `primusctl rejoin`: repoint a demoted (or detached) instance under the primary,
    /// only if it has no transactions the primary lacks (otherwise it would bring
    /// divergent data back into the cluster: it must be rebuilt).
    ///
    /// A former primary that executed transactions after the failover that replaced it
    /// (divergent, see [`crate::divergence`]) is refused with the list, unless the
    /// operator passes `discard_divergent` (MariaDB only): it then replicates from the
    /// promotion point, the divergent transactions' changes staying in its tables, and
    /// that choice is recorded in the audit trail.
    pub async fn rejoin(
        &self,
        name: &ClusterName,
        addr: &InstanceAddr,
        actor: &str,
        discard_divergent: bool,
    ) -> Result<Rejoined, FailoverError> {
        self.confirm_leader().await?;
        let c = self.cluster(name)?;
        if c.in_flight().is_some() {
            return Err(FailoverError::Busy("a failover is in progress; retry when it is done".into()));
        }
        let inst = c
            .topology
            .instances
            .get(addr)
            .ok_or_else(|| FailoverError::UnknownInstance { cluster: name.clone(), instance: addr.clone() })?;
        if !matches!(inst.role, primus_types::InstanceRole::Demoted | primus_types::InstanceRole::Detached) {
            return Err(FailoverError::Refused(format!(
                "{addr} is a {}, not a demoted or detached instance",
                inst.role
            )));
        }
        let primary =
            c.topology.primary.clone().ok_or_else(|| FailoverError::Refused(format!("{name} has no primary")))?;
        let recs = self.monitor.probe_fresh(&[addr.clone(), primary.clone()]).await;
        let obs = |a: &InstanceAddr| {
            recs.iter()
                .find(|r| &r.addr == a)
                .and_then(|r| r.result.as_ref().ok().cloned())
                .ok_or_else(|| FailoverError::Refused(format!("{a} cannot be probed right now")))
        };
        let (o, p) = (obs(addr)?, obs(&primary)?);
        let diverged = match crate::divergence::check(&c, addr, &o) {
            // No usable promotion point (a failover finished by an older primus): the
            // errant check against the primary below is all that is left.
            Some(Err(e)) => {
                tracing::warn!(cluster = %name, instance = %addr, epoch = c.epoch, error = %e,
                    "divergence of a former primary cannot be computed: relying on the errant check");
                None
            }
            Some(Ok(d)) if !d.divergence.is_empty() => Some(d),
            _ => None,
        };
        if let Some(d) = &diverged {
            let what = format!(
                "{addr} is divergent: it executed {} that the primary {primary} does not have, after failover {} \
                 replaced it (promotion point {}): {}",
                crate::divergence::count_text(&d.divergence),
                d.failover.id,
                d.promotion_gtid,
                d.divergence
            );
            if !discard_divergent {
                return Err(FailoverError::Refused(format!(
                    "{what}. To do: rebuild {addr} from the primary {primary} (a fresh backup or clone of it) and \
                     rejoin it then; or, on MariaDB, `primusctl rejoin --discard-divergent` to replicate from the \
                     promotion point, leaving those transactions' changes in its tables"
                )));
            }
            if o.server.flavor != primus_mysql::Flavor::MariaDb {
                return Err(FailoverError::Refused(format!(
                    "{what}. --discard-divergent is MariaDB only: on MySQL the divergent GTIDs stay in gtid_executed \
                     and the new primary would never send them; rebuild {addr} from the primary {primary}"
                )));
            }
        }
        if let Some(r) = primus_mysql::errant_transactions(&o, &p) {
            // With --discard-divergent, the old primary's own divergent writes are expected
            // here; anything written by another server still needs a rebuild.
            let only_divergent = diverged.is_some() && r.server_ids().iter().all(|id| *id == o.server_id);
            if !r.is_empty() && !only_divergent {
                return Err(FailoverError::Refused(format!(
                    "{addr} has {} transaction(s) the primary {primary} does not have: {r}; rebuild it from the primary \
                     (its data has diverged) before it can rejoin",
                    r.count()
                )));
            }
        }
        let login = self.replication_credentials().map_err(FailoverError::Refused)?;
        let password = login.password.clone();
        let sql = match &diverged {
            Some(d) => discard_sql(&o, &d.promotion_gtid, &primary, &login).map_err(FailoverError::Refused)?,
            None => repoint_sql(&o, &primary, &login, true),
        };
        let prober = self.prober(addr);
        prober
            .execute(&sql, self.step_timeout())
            .await
            .map_err(|e| FailoverError::Refused(redact(&e.to_string(), &password)))?;
        prober.disconnect().await;
        let discarded_divergent = diverged.as_ref().map(|d| {
            format!(
                "{} beyond promotion point {} of failover {}: {}",
                crate::divergence::count_text(&d.divergence),
                d.promotion_gtid,
                d.failover.id,
                d.divergence
            )
        });
        let idx = self
            .commit(Command::ClearDemoted { name: name.clone(), instance: addr.clone(), discarded_divergent }, actor)
            .await?;
        self.monitor.probe_now(addr);
        let message = match &diverged {
            Some(d) => {
                tracing::warn!(cluster = %name, instance = %addr, %primary, epoch = c.epoch, failover_id = %d.failover.id,
                    divergent = %d.divergence, %actor,
                    "divergent former primary rejoined with --discard-divergent: its divergent changes stay in its tables");
                format!(
                    "{addr} now replicates from {primary}, starting at the promotion point {}; {} discarded from \
                     replication ({}), their changes stay in its tables",
                    d.promotion_gtid,
                    crate::divergence::count_text(&d.divergence),
                    d.divergence
                )
            }
            None => {
                tracing::warn!(cluster = %name, instance = %addr, %primary, epoch = c.epoch, "rejoined as a replica");
                format!("{addr} now replicates from {primary}")
            }
        };
        Ok(Rejoined { log_index: idx, message, discarded: diverged.map(|d| d.divergence) })
    }
}

//! What the leader keeps true between failovers: demoted former primaries read-only,
//! split brains fenced, a read-only primary made writable again, semi-sync no-loss mode.

use super::*;

impl Engine {
    /// A demoted former primary must never take writes again on its own: when one
    /// shows up writable (restarted with its config's read_only=OFF), fence it again.
    pub(super) fn keep_demoted_fenced(self: &Arc<Self>, c: &ClusterRecord) {
        for addr in &c.demoted {
            let own = self.monitor.own_observation(addr);
            if let Some(o) = &own {
                self.note_divergence(c, addr, o);
            }
            let writable = own.is_some_and(|o| !o.read_only);
            if !writable {
                continue;
            }
            let e = self.clone();
            let a = addr.clone();
            let cluster = c.name.clone();
            self.tasks.spawn(async move {
                let p = e.prober(&a);
                let r = set_read_only_over(p.as_ref(), true, e.step_timeout()).await;
                p.disconnect().await;
                match r {
                    Ok(()) => {
                        tracing::warn!(%cluster, instance = %a, "demoted former primary was writable: read_only set again")
                    }
                    Err(err) => {
                        tracing::warn!(%cluster, instance = %a, error = %err, "cannot fence demoted former primary")
                    }
                }
                e.monitor.probe_now(&a);
            });
        }
    }

    /// Split brain: an instance other than the recorded primary is writable (made so
    /// by hand, or a replica configured without read_only). Raft's record decides who
    /// the primary is, so every other writable instance is fenced — except demoted
    /// ones (kept read-only by `keep_demoted_fenced`) and instances in maintenance
    /// (an operator's business: alert only). At most one attempt per instance every 5 s.
    pub(super) fn fence_split(self: &Arc<Self>, c: &ClusterRecord) {
        if !self.cfg_for(c).fence_split {
            return;
        }
        let Some(primary) = c.topology.primary.clone() else { return };
        let now = self.now_ms();
        let mut targets = Vec::new();
        for addr in c.topology.instances.keys() {
            if *addr == primary || c.demoted.contains(addr) || c.in_maintenance(addr, now) {
                continue;
            }
            if self.monitor.own_observation(addr).is_none_or(|o| o.read_only) {
                continue;
            }
            let mut q = self.split_fenced.lock().unwrap_or_else(|p| p.into_inner());
            if q.get(addr).is_some_and(|t| now.saturating_sub(*t) < 5000) {
                continue;
            }
            q.insert(addr.clone(), now);
            targets.push(addr.clone());
        }
        if targets.is_empty() {
            return;
        }
        // In the cluster's one operation slot: never concurrent with a failover being
        // decided or run (which could be about to make one of them the primary).
        let epoch = c.epoch;
        self.spawn_for(&c.name, move |e, cluster| async move {
            for a in targets {
                match e.fence_split_instance(&cluster, &primary, &a, epoch).await {
                    Ok(Some(outcome)) => {
                        tracing::warn!(%cluster, instance = %a, epoch, %outcome, "split brain: fenced a writable non-primary")
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(%cluster, instance = %a, epoch, error = %err, "split brain: could not fence")
                    }
                }
                e.monitor.probe_now(&a);
            }
        });
    }

    /// Fence one writable non-primary, write-ahead: re-probe it, commit `FenceSplit`,
    /// set read_only (and kill client connections when it replicates from nobody, i.e.
    /// acts as a primary), commit the outcome. `Ok(None)`: nothing to do after all.
    pub(super) async fn fence_split_instance(
        &self,
        cluster: &ClusterName,
        primary: &InstanceAddr,
        addr: &InstanceAddr,
        epoch: u64,
    ) -> Result<Option<String>, String> {
        let fresh = self.monitor.probe_fresh(std::slice::from_ref(addr)).await;
        let Some(o) = fresh.first().and_then(|r| r.result.as_ref().ok()) else {
            return Ok(None);
        };
        if o.read_only {
            return Ok(None);
        }
        let acting_primary = !o.is_replica();
        let mut evidence = vec![format!(
            "{addr} is writable ({}) while {primary} is the primary of epoch {epoch}",
            if acting_primary { "replicating from nobody" } else { "a replica" }
        )];
        if acting_primary {
            evidence.push("its client connections are killed so that clients reconnect to the primary".into());
        }
        let id = format!("{cluster}-e{epoch}-split-{}", self.now_ms());
        let start =
            Command::FenceSplit { name: cluster.clone(), id: id.clone(), instance: addr.clone(), epoch, evidence };
        self.commit(start, "primusd").await.map_err(|e| format!("not recorded, not fenced: {e}"))?;
        let t = self.step_timeout();
        let p = self.prober(addr);
        let result = async {
            // As before every failover step: still the leader (with a quorum), and the
            // cluster still at this epoch with no failover started since.
            self.confirm_leader().await.map_err(|e| format!("skipped: {e}"))?;
            let (now_epoch, in_flight) = self
                .state
                .read(|s| s.registry.clusters.get(cluster).map(|c| (c.epoch, c.in_flight().is_some())))
                .unwrap_or((0, false));
            if now_epoch != epoch || in_flight {
                return Err(format!(
                    "skipped: the cluster moved on (epoch {now_epoch}, failover running: {in_flight})"
                ));
            }
            set_read_only_over(p.as_ref(), true, t).await.map_err(|e| e.to_string())?;
            let killed = if acting_primary { self.kill_clients(p.as_ref(), t).await } else { 0 };
            Ok::<_, String>(format!("read_only set, {killed} client connections killed"))
        }
        .await;
        p.disconnect().await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(e) => format!("failed: {e}"),
        };
        let finish = Command::FinishSplitFence { name: cluster.clone(), id, outcome: outcome.clone() };
        if let Err(e) = self.commit(finish, "primusd").await {
            tracing::warn!(%cluster, instance = %addr, error = %e, "split fence outcome not recorded");
        }
        result.map(Some)
    }

    /// The recorded primary is read-only (its agent fenced it while the coordinators
    /// stalled, a failover was aborted after fencing it, it restarted with
    /// `read_only=ON`...) and nothing else is wrong: make it writable again, in the
    /// cluster's operation slot, at most once a second.
    pub(super) fn unfence(self: &Arc<Self>, c: &ClusterRecord) {
        let Some(primary) = c.topology.primary.clone() else { return };
        let now = self.now_ms();
        {
            let mut q = self.unfenced.lock().unwrap_or_else(|p| p.into_inner());
            if q.get(&c.name).is_some_and(|t| now.saturating_sub(*t) < 1000) {
                return;
            }
            q.insert(c.name.clone(), now);
        }
        let epoch = c.epoch;
        self.spawn_for(&c.name, move |e, cluster| async move {
            match e.unfence_primary(&cluster, &primary, epoch).await {
                Ok(Some(outcome)) => {
                    e.unfence_failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&cluster);
                    tracing::warn!(%cluster, instance = %primary, epoch, %outcome, "read-only primary made writable again")
                }
                Ok(None) => {}
                Err(Unfence::NotNow(why)) => {
                    tracing::info!(%cluster, instance = %primary, epoch, reason = %why, "read-only primary left read-only for now")
                }
                Err(Unfence::Failed(err)) => {
                    let mut f = e.unfence_failures.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = f.entry(cluster.clone()).or_insert((epoch, 0, String::new()));
                    if entry.0 != epoch {
                        *entry = (epoch, 0, String::new());
                    }
                    entry.1 += 1;
                    entry.2 = err.clone();
                    tracing::warn!(%cluster, instance = %primary, epoch, error = %err, attempts = entry.1,
                        "could not make the read-only primary writable");
                }
            }
            e.monitor.probe_now(&primary);
        });
    }

    /// Make the read-only primary of `epoch` writable, write-ahead: re-probe every
    /// instance (the primary must be read-only, reachable and replicate from nobody; no
    /// other instance may be writable), commit `UnfencePrimary`, confirm leadership and
    /// re-read the epoch, check the agent's lease once more, set `read_only = OFF`,
    /// commit the outcome. `Ok(None)`: nothing to do after all.
    pub(super) async fn unfence_primary(
        &self,
        cluster: &ClusterName,
        primary: &InstanceAddr,
        epoch: u64,
    ) -> Result<Option<String>, Unfence> {
        let c = self.cluster(cluster).map_err(|e| Unfence::NotNow(e.to_string()))?;
        if c.epoch != epoch || c.in_flight().is_some() || c.topology.primary.as_ref() != Some(primary) {
            return Ok(None);
        }
        if let Some(f) = c.history.last().filter(|f| matches!(f.outcome, Some(FailoverOutcome::Failed(_)))) {
            if f.acked_by.is_none() {
                return Err(Unfence::NotNow(format!(
                    "failover {} failed and is not acknowledged: an operator decides (primusctl ack)",
                    f.id
                )));
            }
        }
        let addrs: Vec<InstanceAddr> = c.topology.instances.keys().cloned().collect();
        let fresh = self.monitor.probe_fresh(&addrs).await;
        let Some(o) = fresh.iter().find(|r| &r.addr == primary).and_then(|r| r.result.as_ref().ok()) else {
            return Ok(None);
        };
        if !o.read_only {
            return Ok(None);
        }
        if o.is_replica() {
            let from = o.replication.first().map(|r| format!("{}:{}", r.source_host, r.source_port));
            return Err(Unfence::NotNow(format!(
                "it replicates from {}: not made writable (an operator may have moved it; see primusctl topology)",
                from.unwrap_or_default()
            )));
        }
        let writable: Vec<String> = fresh
            .iter()
            .filter(|r| &r.addr != primary && r.result.as_ref().is_ok_and(|o| !o.read_only))
            .map(|r| r.addr.to_string())
            .collect();
        if !writable.is_empty() {
            return Err(Unfence::NotNow(format!(
                "{} writable as well (split brain is fenced first)",
                writable.join(", ")
            )));
        }
        let agent = c.agents.get(primary).map(|a| a.agent_id.clone());
        if agent.is_some() && !self.agent_holds_lease(&c, primary) {
            return Ok(None);
        }
        let mut evidence =
            vec![format!("primary {primary} of epoch {epoch} is read-only: no server of the cluster takes writes")];
        evidence.push(match &agent {
            Some(a) => format!("its agent {a} holds a lease granted by this leader"),
            None => "it has no fencing agent".into(),
        });
        evidence.push(format!("no other instance of {cluster} is writable (fresh probes of {})", addrs.len()));
        let id = format!("{cluster}-e{epoch}-unfence-{}", self.now_ms());
        let start = Command::UnfencePrimary {
            name: cluster.clone(),
            id: id.clone(),
            instance: primary.clone(),
            epoch,
            evidence,
        };
        self.commit(start, "primusd").await.map_err(|e| Unfence::NotNow(format!("not recorded, not touched: {e}")))?;
        let p = self.prober(primary);
        let result = async {
            // As before every failover step: still the leader (with a quorum), the cluster
            // still at this epoch with no failover started since, the lease still held.
            self.confirm_leader().await.map_err(|e| Unfence::NotNow(format!("skipped: {e}")))?;
            let now = self.cluster(cluster).map_err(|e| Unfence::NotNow(e.to_string()))?;
            let (now_epoch, in_flight) = (now.epoch, now.in_flight().is_some());
            if now_epoch != epoch || in_flight {
                return Err(Unfence::NotNow(format!(
                    "skipped: the cluster moved on (epoch {now_epoch}, failover running: {in_flight})"
                )));
            }
            if agent.is_some() && !self.agent_holds_lease(&now, primary) {
                return Err(Unfence::NotNow("skipped: the agent's lease ran out meanwhile".into()));
            }
            set_read_only_over(p.as_ref(), false, UNFENCE_TIMEOUT).await.map_err(|e| Unfence::Failed(e.to_string()))?;
            Ok(format!("read_only set OFF (epoch {epoch})"))
        }
        .await;
        p.disconnect().await;
        let outcome = match &result {
            Ok(o) => o.clone(),
            Err(Unfence::NotNow(e)) => e.clone(),
            Err(Unfence::Failed(e)) => format!("failed: {e}"),
        };
        let finish = Command::FinishUnfence { name: cluster.clone(), id, outcome };
        if let Err(e) = self.commit(finish, "primusd").await {
            tracing::warn!(%cluster, instance = %primary, error = %e, "unfence outcome not recorded");
        }
        result.map(Some)
    }

    /// Semi-sync no-loss mode: every instance must have lossless semi-sync on (or off,
    /// when the mode is `off`) as this node's latest probe sees it, and every
    /// replica must actually acknowledge. Fixes what it finds, at most every 5 s per
    /// instance. A failover in progress is left alone (its steps own the instances).
    pub(super) fn keep_semi_sync(self: &Arc<Self>, c: &ClusterRecord) {
        let Some(want) = c.settings.semi_sync else { return };
        if c.in_flight().is_some() {
            return;
        }
        for (addr, inst) in &c.topology.instances {
            let Some(o) = self.monitor.own_observation(addr) else {
                continue;
            };
            let ss = &o.semi_sync;
            let is_primary = c.topology.primary.as_ref() == Some(addr);
            let enabled_right = ss.source_enabled == Some(want && is_primary) && ss.replica_enabled == Some(want);
            let replica = inst.source.is_some() && o.is_replica();
            let acks = !want || !replica || ss.replica_active == Some(true);
            if enabled_right && acks {
                continue;
            }
            {
                let mut q = self.semi_sync_fixed.lock().unwrap_or_else(|p| p.into_inner());
                let now = self.now_ms();
                if q.get(addr).is_some_and(|t| now.saturating_sub(*t) < 5000) {
                    continue;
                }
                q.insert(addr.clone(), now);
            }
            let e = self.clone();
            let a = addr.clone();
            let cluster = c.name.clone();
            let restart_io = want && replica && ss.replica_active != Some(true);
            self.tasks.spawn(async move {
                let p = e.prober(&a);
                let r = match p.server_info().await {
                    Ok(info) => {
                        let mut sql = info.semi_sync_sql(want, is_primary);
                        if restart_io {
                            sql.extend(info.restart_io_thread_sql());
                        }
                        p.execute(&sql, e.step_timeout()).await
                    }
                    Err(err) => Err(err),
                };
                p.disconnect().await;
                match r {
                    Ok(()) => tracing::info!(%cluster, instance = %a, semi_sync = want, restart_io,
                        "semi-sync no-loss mode applied"),
                    Err(err) => {
                        tracing::warn!(%cluster, instance = %a, error = %err, "cannot apply semi-sync no-loss mode")
                    }
                }
                e.monitor.probe_now(&a);
            });
        }
    }

    /// Semi-sync no-loss mode: commits on the primary that wait for an acknowledgement of
    /// transactions a replica already holds. A replica that received a transaction
    /// asynchronously — restarted with its semi-sync side off (a runtime setting), say,
    /// before primus switched it back on — reconnects past it and never acknowledges it,
    /// so the commit, and every commit queued behind it, waits for ever: the primary is
    /// writable and takes no write (found by the nemesis, seed 115). Once a second, the
    /// primary's sessions waiting on an acknowledgement for 2 s or more are listed; if,
    /// read afterwards, everything the primary binlogged is already executed by a replica,
    /// what they wait for is on that replica (the guarantee the acknowledgement stands
    /// for), and they are killed: the server commits what it binlogged, semi-sync stays
    /// on for every later commit (switching it off and on would let others commit
    /// unacknowledged meanwhile). A wait for a transaction no replica holds is a true one
    /// and is left alone. MariaDB only: there a waiting transaction is in
    /// `gtid_binlog_pos` (MySQL's `gtid_executed` may not hold it yet).
    pub(super) fn release_stranded_acks(self: &Arc<Self>, c: &ClusterRecord) {
        if c.settings.semi_sync != Some(true) || c.in_flight().is_some() {
            return;
        }
        let Some(primary) = c.topology.primary.clone() else { return };
        // Only a MariaDB primary whose semi-sync side is active can have sessions waiting
        // on acknowledgements: judged from the latest probe, without a connection.
        let waits_possible = self.monitor.own_observation(&primary).is_some_and(|o| {
            o.server.flavor == primus_mysql::Flavor::MariaDb && o.semi_sync.source_active == Some(true)
        });
        let replicas: Vec<InstanceAddr> = c.topology.instances.keys().filter(|a| **a != primary).cloned().collect();
        if !waits_possible || replicas.is_empty() {
            return;
        }
        {
            let mut q = self.stranded_checked.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.now_ms();
            if q.get(&c.name).is_some_and(|t| now.saturating_sub(*t) < 1000) {
                return;
            }
            q.insert(c.name.clone(), now);
        }
        let e = self.clone();
        let cluster = c.name.clone();
        let epoch = c.epoch;
        self.tasks.spawn(async move {
            match e.release_stranded(&primary, &replicas).await {
                Ok(Some(done)) => tracing::warn!(%cluster, instance = %primary, epoch, "{done}"),
                Ok(None) => {}
                Err(err) => tracing::debug!(%cluster, instance = %primary, epoch, error = %err,
                    "checking for commits waiting on acknowledgements failed"),
            }
        });
    }

    async fn release_stranded(
        &self,
        primary: &InstanceAddr,
        replicas: &[InstanceAddr],
    ) -> Result<Option<String>, String> {
        let t = self.step_timeout();
        let p = self.prober(primary);
        let rows = p.query_rows(primus_mysql::flavor::SEMI_SYNC_WAITERS_SQL, t).await.map_err(|e| e.to_string())?;
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get(&["ID"]).flatten().map(str::to_string))
            .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
            .collect();
        if ids.is_empty() {
            return Ok(None);
        }
        // Read after the list: every listed session's transaction is in it.
        let rows = p.query_rows(primus_mysql::flavor::BINLOG_POS_SQL, t).await.map_err(|e| e.to_string())?;
        let binlogged = rows.first().and_then(|r| r.get(&["pos"]).flatten().map(str::to_string)).unwrap_or_default();
        let want = binlogged.parse().map(primus_mysql::AnyGtidSet::MariaDb).map_err(
            |e: primus_mysql::gtid::GtidParseError| {
                format!("cannot read the primary's binlog position {binlogged:?}: {e}")
            },
        )?;
        let fresh = self.monitor.probe_fresh_map(replicas).await;
        let Some(holder) = fresh
            .iter()
            .find(|(_, r)| r.as_ref().is_ok_and(|o| o.gtid.executed().contains(&want) == Some(true)))
            .map(|(a, _)| a.clone())
        else {
            return Ok(None);
        };
        let mut killed = 0;
        for id in &ids {
            if p.execute(&[format!("KILL CONNECTION {id}")], t).await.is_ok() {
                killed += 1;
            }
        }
        p.disconnect().await;
        self.monitor.probe_now(primary);
        Ok(Some(format!(
            "no-loss mode: {killed} of {} sessions had waited 2 s or more for semi-sync acknowledgements of \
             transactions replica {holder} already holds (binlog {binlogged}), which no replica would acknowledge \
             any more: killed them so that the primary commits them and takes writes again",
            ids.len()
        )))
    }

    /// Log (once per change of its count) that a demoted former primary is divergent.
    pub(super) fn note_divergence(&self, c: &ClusterRecord, addr: &InstanceAddr, o: &primus_mysql::Observation) {
        let Some(Ok(d)) = crate::divergence::check(c, addr, o) else { return };
        let n = d.divergence.count();
        let key = (c.name.clone(), addr.clone());
        let mut seen = self.divergent_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&key) == Some(&n) {
            return;
        }
        seen.insert(key, n);
        if n > 0 {
            tracing::warn!(cluster = %c.name, instance = %addr, epoch = c.epoch, failover_id = %d.failover.id,
                promotion_point = %d.promotion_gtid, divergent = %d.divergence, count = n,
                "former primary is divergent: it executed transactions after it was replaced; it stays demoted \
                 (see primusctl divergence)");
        }
    }
}

/// A replica a failover left behind: it was unreachable when the plan was made, came
/// back, and still replicates from the demoted former primary.
#[derive(Debug, Clone)]
pub(super) struct LeftBehind {
    pub replica: InstanceAddr,
    pub demoted_source: InstanceAddr,
    pub primary: InstanceAddr,
}

impl Engine {
    /// The first replica left behind that can be moved under the primary with GTID
    /// auto-positioning: everything it executed is on the primary (otherwise it holds
    /// transactions the failover lost, and only an operator's `rejoin` may decide).
    /// From this node's own probes; `None` while the primary itself is not writable.
    pub(super) fn left_behind(&self, c: &ClusterRecord) -> Option<LeftBehind> {
        let primary = c.topology.primary.clone()?;
        let now = self.now_ms();
        let p = self.monitor.own_observation(&primary).filter(|o| !o.read_only && o.replication.is_empty())?;
        for addr in c.topology.instances.keys() {
            if *addr == primary || c.demoted.contains(addr) || c.in_maintenance(addr, now) {
                continue;
            }
            let Some(o) = self.monitor.own_observation(addr) else { continue };
            let Some(source) = o
                .replication
                .first()
                .and_then(|r| format!("{}:{}", r.source_host, r.source_port).parse::<InstanceAddr>().ok())
            else {
                continue;
            };
            if source == primary || !c.demoted.contains(&source) {
                continue;
            }
            // The same judgement as the repoint step's (binlog states, not only
            // positions): a replica the step would refuse is not "movable" here, or the
            // leader would start a repair the step skips, again and again (found by the
            // nemesis, seed 176: hundreds of repairs, pushing the failover that demoted
            // the source out of the kept history).
            let errant = primus_mysql::errant_transactions(&o, &p).is_some_and(|r| !r.is_empty());
            match p.gtid.executed().contains(&o.gtid.executed()) {
                Some(true) if !errant => {
                    return Some(LeftBehind { replica: addr.clone(), demoted_source: source, primary })
                }
                _ => {
                    self.say_once(
                        &c.name,
                        &format!(
                            "replica {addr} still replicates from demoted former primary {source} and holds \
                             transactions primary {primary} lacks: not moved (primusctl rejoin decides)"
                        ),
                    );
                }
            }
        }
        None
    }

    /// Move a replica left behind under the primary, write-ahead through Raft like an
    /// intermediate repair (no epoch consumed): without it, a replica that was down
    /// during a failover replicates from a demoted server for ever — and in no-loss
    /// mode the new primary waits for a semi-sync acknowledgement nobody gives.
    pub async fn repoint_left_behind(self: &Arc<Self>, name: &ClusterName) -> Result<String, FailoverError> {
        let c = self.cluster(name)?;
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Refused(format!("failover {} is already in progress", f.id)));
        }
        self.confirm_leader().await?;
        let Some(found) = self.left_behind(&c) else {
            return Err(FailoverError::Refused("no replica left behind".into()));
        };
        // Double-check with fresh probes of both ends.
        self.monitor.probe_fresh(&[found.replica.clone(), found.primary.clone()]).await;
        let c = self.cluster(name)?;
        let Some(found) = self.left_behind(&c).filter(|f| f.replica == found.replica) else {
            return Err(FailoverError::Refused("double-check: the replica is no longer left behind".into()));
        };
        let LeftBehind { replica, demoted_source, primary } = found;
        let steps = vec![Step::RepointReplica { replica: replica.clone(), to: primary.clone() }, Step::Complete];
        let id = format!("{name}-e{}-r{}", c.epoch, c.history.len() + 1);
        let evidence = vec![
            format!("replica {replica} replicates from {demoted_source}, a former primary demoted by a failover"),
            format!("everything it executed is on primary {primary}: repoint it there"),
        ];
        tracing::warn!(cluster = %name, failover_id = %id, epoch = c.epoch, replica = %replica,
            demoted = %demoted_source, to = %primary, "moving a replica left behind by a failover");
        self.commit(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind: FailoverKind::IntermediateRepair,
                analysis_code: AnalysisCode::ReplicaOfDemotedPrimary,
                evidence,
                old_primary: demoted_source,
                candidate: primary,
                epoch: c.epoch,
                plan: steps,
                request_id: None,
            },
            "primusd",
        )
        .await?;
        self.execute(name, &id).await?;
        // A repoint the step skipped (the replica found holding what the primary lacks,
        // or unreachable) leaves the replica where it was: no new repair of this cluster
        // for a while, whatever the next probe says, so a disagreement between this
        // judgement and the step's can never become a loop of repairs filling the history.
        let skipped = self.cluster(name).ok().and_then(|c| {
            c.history.iter().rev().find(|f| f.id == id).and_then(|f| {
                f.steps.iter().find_map(|s| match &s.outcome {
                    primus_types::StepOutcome::Skipped(why) => Some(why.clone()),
                    _ => None,
                })
            })
        });
        if let Some(why) = skipped {
            let until = self.now_ms() + LEFT_BEHIND_BACKOFF_MS;
            self.backoff.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), until);
            return Err(FailoverError::Refused(format!("repair {id} did not move the replica: {why}")));
        }
        Ok(id)
    }
}

/// After a repair whose repoint was skipped, no new repair of the cluster for this long.
const LEFT_BEHIND_BACKOFF_MS: u64 = 60_000;

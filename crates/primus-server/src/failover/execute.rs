//! Executing a recorded failover: one committed step at a time, resuming a predecessor's,
//! finishing in one entry, aborting write-ahead; the steps themselves.

use super::*;

/// Test-only crash points: see [`crate::faults`].
pub(super) fn failpoint(name: &str, step: Option<usize>) {
    crate::faults::get().kill_at(name, step);
}

/// How long a best-effort fence of an unreachable old primary may try.
pub(super) const BEST_EFFORT_FENCE_TIMEOUT: Duration = Duration::from_millis(150);
/// How often a lease wait looks for the agent's release in the applied state.
const RELEASE_POLL: Duration = Duration::from_millis(10);
/// Pause between reads of a just-fenced primary's GTIDs (see `executed_after_fence`).
pub(super) const FENCED_READ_RETRY: Duration = Duration::from_millis(50);

impl Engine {
    /// A new leader picks up an unfinished failover.
    pub(super) async fn resume(self: &Arc<Self>, name: &ClusterName) {
        let Ok(c) = self.cluster(name) else { return };
        let Some(f) = c.in_flight().cloned() else { return };
        tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch, next_step = f.next_step(),
            "resuming a failover started by a previous leader");
        // The previous leader may have performed the next step and died before
        // recording it: count it as possibly done.
        let irreversible_done = f.plan.iter().take(f.next_step() + 1).any(Step::is_irreversible);
        if !irreversible_done && f.kind == FailoverKind::Automatic {
            // Nothing irreversible happened: if the old primary is back, stand down.
            let rec = self.monitor.probe_fresh(std::slice::from_ref(&f.old_primary)).await;
            if rec.first().is_some_and(|r| r.result.as_ref().is_ok_and(|o| !o.read_only)) {
                let why = "the old primary is reachable and writable again before any irreversible step";
                tracing::warn!(cluster = %name, failover_id = %f.id, "aborting: {why}");
                if let Err(e) = self.abort(name, &f, why.to_string()).await {
                    tracing::warn!(cluster = %name, failover_id = %f.id, error = %e, "abort not recorded");
                }
                return;
            }
        }
        if let Err(e) = self.execute(name, &f.id).await {
            tracing::warn!(cluster = %name, failover_id = %f.id, error = %e, "resumed failover stopped");
        }
    }

    /// Abort a failover before anything irreversible, write-ahead: as a leader confirmed
    /// by a quorum, with the candidate confirmed read-only (set read-only if need be) when
    /// its promotion may have been sent. The abort is committed before anybody makes the
    /// old primary writable again: that is the ordinary upkeep of a read-only primary
    /// (`unfence`), which waits for its agent's lease and checks every instance first.
    /// When the candidate cannot be confirmed read-only the failover is recorded as
    /// failed instead: an operator must look.
    pub(super) async fn abort(
        &self,
        name: &ClusterName,
        f: &FailoverRecord,
        why: String,
    ) -> Result<FailoverOutcome, FailoverError> {
        self.confirm_leader().await?;
        let promote_at = f.plan.iter().position(|s| matches!(s, Step::PromoteCandidate { .. }));
        // A leader runs the steps in order, each recorded before the next: the promotion
        // can have been sent only once every step before it is recorded.
        let promote_maybe_sent = promote_at.is_some_and(|p| f.next_step() >= p);
        let outcome = if !promote_maybe_sent {
            FailoverOutcome::Aborted(why)
        } else {
            let cand = &f.candidate;
            let r = self.monitor.probe_fresh(std::slice::from_ref(cand)).await;
            match r.first().map(|r| &r.result) {
                Some(Ok(o)) if o.read_only => FailoverOutcome::Aborted(format!("{why}; {cand} confirmed read-only")),
                Some(Ok(_)) => {
                    let p = self.prober(cand);
                    let fenced = set_read_only_over(p.as_ref(), true, self.step_timeout()).await;
                    p.disconnect().await;
                    match fenced {
                        Ok(()) => FailoverOutcome::Aborted(format!("{why}; {cand} was writable and was set read-only")),
                        Err(e) => FailoverOutcome::Failed(format!(
                            "{why}; {cand} is writable and could not be set read-only ({e}): not aborted"
                        )),
                    }
                }
                Some(Err(e)) => FailoverOutcome::Failed(format!(
                    "{why}; cannot confirm that {cand} is read-only ({e}): not aborted, an operator must check it"
                )),
                None => FailoverOutcome::Failed(format!("{why}; {cand} was not probed: not aborted")),
            }
        };
        tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch, outcome = ?outcome, "failover stopped");
        self.commit(
            Command::FinishFailover {
                name: name.clone(),
                id: f.id.clone(),
                outcome: outcome.clone(),
                promotion_gtid: None,
            },
            "primusd",
        )
        .await?;
        Ok(outcome)
    }

    /// After a promote step that failed: whether the candidate is writable and replicates
    /// from nobody anyway (the statement ran, its answer was lost).
    pub(super) async fn promoted_anyway(&self, candidate: &InstanceAddr) -> bool {
        let r = self.monitor.probe_fresh(std::slice::from_ref(candidate)).await;
        r.first().is_some_and(|r| r.result.as_ref().is_ok_and(|o| !o.read_only && !o.is_replica()))
    }

    /// Run the recorded plan from the first step not yet recorded.
    pub(super) async fn execute(self: &Arc<Self>, name: &ClusterName, id: &str) -> Result<(), FailoverError> {
        let mut attempts = 0u32;
        loop {
            let c = self.cluster(name)?;
            let Some(f) = c.in_flight().filter(|f| f.id == id).cloned() else { return Ok(()) };
            let i = f.next_step();
            // Before every step: still the leader, confirmed by a quorum.
            self.confirm_leader().await?;
            // `complete` is recorded by the finish itself (one entry). A plan whose every
            // step is recorded (`complete` too, by an older primusd that died before
            // finishing) is finished as well.
            let step = match f.plan.get(i) {
                Some(Step::Complete) | None => {
                    self.finish(name, &f, i).await?;
                    return Ok(());
                }
                Some(step) => step.clone(),
            };
            // No-loss mode, right before the promotion: the candidate must still hold
            // everything a semi-sync replica may have acknowledged (a failing check is a
            // failed step: retried, then the failover is aborted — nothing irreversible yet).
            let no_loss = match &step {
                Step::PromoteCandidate { .. }
                    if c.settings.semi_sync == Some(true)
                        && f.kind != FailoverKind::Switchover
                        && !super::decide::loss_accepted(&f) =>
                {
                    self.no_loss_before_promote(name, &f).await
                }
                _ => Ok(()),
            };
            let result = match &step {
                Step::PromoteCandidate { .. } if no_loss.is_err() => Err(no_loss.err().unwrap_or_default()),
                Step::PromoteCandidate { candidate } => {
                    match self
                        .promote(
                            candidate,
                            f.epoch,
                            c.settings.semi_sync == Some(true),
                            self.cfg_for(&c).catch_up_timeout_ms,
                        )
                        .await
                    {
                        Ok((detail, point)) => {
                            // The new primary's agent holds a lease from now on (it was
                            // answered "being promoted", which it counts as one): the leader
                            // counts it too, so that it never judges a lease it granted
                            // "never renewed" before the agent's next renewal.
                            if let Some(agent) = c.agents.get(candidate) {
                                let ttl = self.leases.ttl_of(Some(agent));
                                self.leases.grant(name, candidate, ttl, tokio::time::Instant::now());
                            }
                            // Committed before the step: a leader that resumes after the step
                            // finds the point already in the record.
                            self.commit(
                                Command::RecordPromotionPoint {
                                    name: name.clone(),
                                    id: id.to_string(),
                                    gtid: point.gtid,
                                    binlog_state: point.binlog_state,
                                },
                                "primusd",
                            )
                            .await?;
                            Ok(StepOutcome::Done(detail))
                        }
                        // The statements may have run although their answer was lost: the
                        // server says whether it is the primary now.
                        Err(e) if self.promoted_anyway(candidate).await => Ok(StepOutcome::Done(format!(
                            "writable and replicating from nobody (epoch {}), although the promote reported: {e}",
                            f.epoch
                        ))),
                        Err(e) => Err(e),
                    }
                }
                _ => self.run_step(&c, &f, &step).await,
            };
            match result {
                Ok(outcome) => {
                    tracing::info!(cluster = %name, failover_id = %id, epoch = f.epoch, step = %step, %outcome, "step done");
                    self.commit(
                        Command::FailoverStep {
                            name: name.clone(),
                            id: id.to_string(),
                            index: i as u32,
                            description: step.to_string(),
                            outcome,
                        },
                        "primusd",
                    )
                    .await?;
                    failpoint("failover.after_step", Some(i));
                    attempts = 0;
                }
                Err(e) => {
                    attempts += 1;
                    tracing::warn!(cluster = %name, failover_id = %id, epoch = f.epoch, step = %step, error = %e,
                        attempts, "step failed");
                    if attempts < 3 {
                        tokio::time::sleep(Duration::from_millis(200 * attempts as u64)).await;
                        continue;
                    }
                    // From the promotion on, only forward: a failed promote counts as sent
                    // (its candidate is then confirmed read-only before any abort).
                    let irreversible_done = f.plan.iter().take(i).any(Step::is_irreversible);
                    let why = format!("{step}: {e}");
                    if irreversible_done {
                        // The candidate is the primary now, whatever else fails (a repoint,
                        // the heartbeat waiting for a semi-sync acknowledgement): record
                        // the step as failed and go on, so that the failover finishes with
                        // Raft naming the promoted candidate. Ending it `Failed` here left
                        // Raft naming the old primary beside a promoted candidate, and no
                        // writable primary once the faults healed (found by primus-sim).
                        tracing::error!(cluster = %name, failover_id = %id, epoch = f.epoch, step = %step, error = %e,
                            "step failed after the promotion; going on (the candidate is the primary)");
                        self.commit(
                            Command::FailoverStep {
                                name: name.clone(),
                                id: id.to_string(),
                                index: i as u32,
                                description: step.to_string(),
                                outcome: StepOutcome::Failed(e.to_string()),
                            },
                            "primusd",
                        )
                        .await?;
                        attempts = 0;
                        continue;
                    }
                    let outcome = self.abort(name, &f, why.clone()).await?;
                    self.post_hooks(name, id);
                    return Err(FailoverError::Stopped { id: id.to_string(), outcome, reason: why });
                }
            }
        }
    }

    /// Record the success of a failover whose steps are done: one entry that records its
    /// `complete` step, moves the primary and closes it.
    pub(super) async fn finish(&self, name: &ClusterName, f: &FailoverRecord, i: usize) -> Result<(), FailoverError> {
        // Recorded at the promote step; only a failover promoted by an older version (or
        // whose promote answer was lost) lacks it, and then the best left is the new
        // primary's set now.
        let promotion_gtid = if f.promotion_gtid.is_none() && f.kind.changes_primary() {
            tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch,
                "no promotion point recorded at the promote step: reading the new primary's GTIDs now");
            self.gtid_of(&f.candidate).await
        } else {
            None
        };
        self.commit(
            Command::FinishFailover {
                name: name.clone(),
                id: f.id.clone(),
                outcome: FailoverOutcome::Succeeded,
                promotion_gtid,
            },
            "primusd",
        )
        .await?;
        failpoint("failover.after_step", Some(i));
        tracing::warn!(cluster = %name, failover_id = %f.id, epoch = f.epoch, new_primary = %f.candidate,
            "failover completed");
        self.post_hooks(name, &f.id);
        // This node's views of the new primary (and of a switchover's live old primary)
        // date from before the promotion, when it was a read-only replica: until the next
        // probe interval every analysis would find the new primary read-only. Look again
        // now, so the analysis the operator asks for next is of the cluster as it is.
        let mut look = vec![f.candidate.clone()];
        if f.kind == FailoverKind::Switchover {
            look.push(f.old_primary.clone());
        }
        self.monitor.probe_fresh(&look).await;
        Ok(())
    }

    /// post_failover / post_switchover / post_unsuccessful_failover, in the background:
    /// they report, they cannot undo anything.
    pub(super) fn post_hooks(&self, name: &ClusterName, id: &str) {
        let Ok(c) = self.cluster(name) else { return };
        let Some(f) = c.history.iter().rev().find(|f| f.id == id).cloned() else { return };
        let Some(outcome) = f.outcome.clone() else { return };
        let kind = crate::hooks::HookKind::after(f.kind, &outcome);
        if !self.hooks.has(kind) {
            return;
        }
        let ctx = crate::hooks::HookContext::from_record(name, &f, self.me);
        let hooks = self.hooks.clone();
        let (cluster, id) = (name.clone(), id.to_string());
        self.tasks.spawn(async move {
            if let Err(e) = hooks.run(kind, &ctx).await {
                tracing::warn!(%cluster, failover_id = %id, error = %e, "{kind} hook failed");
            }
        });
    }

    /// The GTIDs a just-fenced server executed. The fence step killed its client
    /// connections, which can include the one a fresh probe picks up (the server answers
    /// "connection was killed" once), so the read is retried for up to a step timeout.
    /// Read-only by then, the server's set cannot grow, so a later read is as good.
    async fn executed_after_fence(&self, old: &InstanceAddr) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + self.step_timeout();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let r = self.monitor.probe_fresh(std::slice::from_ref(old)).await;
            let why = match r.first().map(|r| &r.result) {
                Some(Ok(o)) => return Ok(o.gtid.executed().to_string()),
                Some(Err(e)) => e.to_string(),
                None => "no probe result".to_string(),
            };
            if tokio::time::Instant::now() + FENCED_READ_RETRY >= deadline {
                return Err(format!("cannot read {old}'s GTIDs ({tries} tries, last: {why})"));
            }
            tracing::debug!(instance = %old, tries, error = %why, "reading the fenced primary's GTIDs again");
            tokio::time::sleep(FENCED_READ_RETRY).await;
        }
    }

    /// Before a replica is repointed: stop its replication, then compare what it executed
    /// with the new primary (fresh probes of both, taken after the stop). A replica still
    /// replicating from a demoted or fenced source can receive, between the decision and
    /// this step, transactions of that source beyond the promotion point; repointed with
    /// GTID auto-positioning it would then hold them as errant transactions under the new
    /// primary, silently (found by the nemesis, seed 198: a replica left behind by a
    /// failover pulled six divergent transactions from the demoted old primary after the
    /// leader had checked it and before it was moved). Such a replica is not repointed:
    /// its replication stays stopped (so it pulls nothing more), the topology flags its
    /// errant transactions, and `primusctl rejoin` decides. `Some(reason)`: refused.
    async fn stop_unless_errant(
        &self,
        p: &dyn primus_mysql::MysqlConn,
        o: &primus_mysql::Observation,
        replica: &InstanceAddr,
        to: &InstanceAddr,
    ) -> Result<Option<String>, String> {
        let t = self.step_timeout();
        p.execute(&[o.server.stop_replica_sql()], t).await.map_err(|e| e.to_string())?;
        let now = p.probe().await.map_err(|e| e.to_string())?;
        let primary = self.prober(to).probe().await.map_err(|e| format!("cannot read the new primary {to}: {e}"))?;
        match primus_mysql::errant_transactions(&now, &primary) {
            Some(report) if !report.is_empty() => {
                tracing::error!(instance = %replica, primary = %to, errant = %report,
                    "replica holds transactions the new primary lacks: not repointed, its replication stays stopped");
                Ok(Some(format!(
                    "holds transactions {to} lacks ({report}): not repointed, replication stopped; \
                     `primusctl rejoin` decides"
                )))
            }
            _ => Ok(None),
        }
    }

    /// Perform one step on MySQL. Idempotent: each checks the instance first.
    pub(super) async fn run_step(
        &self,
        c: &ClusterRecord,
        f: &FailoverRecord,
        step: &Step,
    ) -> Result<StepOutcome, String> {
        let t = self.step_timeout();
        match step {
            Step::FenceOldPrimary { addr, best_effort } => {
                let p = self.prober(addr);
                // Best effort means a majority already cannot reach it: a hung server
                // would only burn a whole connect timeout here, so try briefly.
                let reach = if *best_effort { BEST_EFFORT_FENCE_TIMEOUT } else { t };
                let info = match tokio::time::timeout(reach, p.server_info()).await {
                    Ok(Ok(i)) => i,
                    Ok(Err(e)) if *best_effort && is_unreachable(&e) => {
                        let hook = self.fence_hook(c, f).await;
                        return Ok(StepOutcome::Skipped(format!("unreachable ({e}){hook}")));
                    }
                    Ok(Err(e)) => return Err(format!("cannot fence {addr}: {e}")),
                    Err(_) if *best_effort => {
                        p.disconnect().await;
                        let hook = self.fence_hook(c, f).await;
                        return Ok(StepOutcome::Skipped(format!("no answer within {} ms{hook}", reach.as_millis())));
                    }
                    Err(_) => return Err(format!("cannot fence {addr}: no answer within {} ms", reach.as_millis())),
                };
                p.execute(&info.set_read_only_sql(true), t).await.map_err(|e| e.to_string())?;
                let killed = self.kill_clients(p.as_ref(), t).await;
                p.disconnect().await;
                let hook = self.fence_hook(c, f).await;
                Ok(StepOutcome::Done(format!("read_only set, {killed} client connections killed{hook}")))
            }
            Step::WaitCandidateCatchUp { candidate, target_gtid, catch_up_with } => {
                let mut targets = vec![target_gtid.clone()];
                if let Some(old) = catch_up_with {
                    // A switchover: everything the fenced old primary executed, read now.
                    targets.push(self.executed_after_fence(old).await?);
                }
                let p = self.prober(candidate);
                let info = p.server_info().await.map_err(|e| e.to_string())?;
                let secs = self.cfg_for(c).catch_up_timeout_ms.div_ceil(1000).max(1);
                for target in targets.iter().filter(|t| !t.is_empty()) {
                    let q = primus_mysql::flavor::quote_string(target);
                    let wait = match info.flavor {
                        primus_mysql::Flavor::MariaDb => format!("DO MASTER_GTID_WAIT({q}, {secs})"),
                        primus_mysql::Flavor::MySql => format!("DO WAIT_FOR_EXECUTED_GTID_SET({q}, {secs})"),
                    };
                    p.execute(&[wait], Duration::from_secs(secs + 2)).await.map_err(|e| e.to_string())?;
                }
                let o = p.probe().await.map_err(|e| e.to_string())?;
                p.disconnect().await;
                let have = o.gtid.executed();
                for target in targets.iter().filter(|t| !t.is_empty()) {
                    let want = parse_like(&have, target)?;
                    if have.contains(&want) != Some(true) {
                        return Err(format!("candidate applied only {have}, needs {target}"));
                    }
                }
                Ok(StepOutcome::Done(format!("applied {} (at {have})", targets.join(" + "))))
            }
            Step::WaitLeaseExpiry { addr } => {
                let agent = c.agents.get(addr);
                // Leases go only to registered agents; a grant without a record (an older
                // primusd) is waited out all the same.
                if agent.is_none() && self.leases.granted(&c.name, addr).is_none() {
                    if self.fencing.require_fencing {
                        return Err(format!(
                            "{addr} has no fencing agent and [fencing] require_fencing is on: not promoting next to a \
                             primary that may still take writes"
                        ));
                    }
                    return Ok(StepOutcome::Skipped(format!(
                        "{addr} has no fencing agent: UNFENCED unless the fence step reached it"
                    )));
                }
                let name = agent.map_or("(unregistered)", |a| a.agent_id.as_str());
                // The agent handed the lease back: its mysqld exited, and no restarted
                // server takes a write before the agent has fenced it (issue 14). Raft
                // ordered the release before any later grant (a released agent is
                // granted nothing until it registers again, which clears the release).
                let released = |c: &ClusterRecord| {
                    c.agents.get(addr).and_then(|a| a.released.clone().map(|r| (a.agent_id.clone(), r)))
                };
                if let Some((id, r)) = released(c) {
                    tracing::warn!(cluster = %c.name, instance = %addr, epoch = f.epoch, agent = %id,
                        reason = %r.reason, "the old primary's agent released its lease: not waiting");
                    return Ok(StepOutcome::Done(format!("agent {id} released its lease ({}): no wait", r.reason)));
                }
                let started = tokio::time::Instant::now();
                let until = self.leases.expiry(&c.name, addr, agent);
                let wait = until.saturating_duration_since(started);
                tracing::warn!(cluster = %c.name, instance = %addr, epoch = f.epoch, agent = %name,
                    wait_ms = wait.as_millis() as u64, "waiting for the old primary's lease to run out");
                // Until the lease runs out, or the agent's release is applied here.
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep_until(until.min(tokio::time::Instant::now() + RELEASE_POLL)).await;
                    if let Some((id, r)) = self.cluster(&c.name).ok().and_then(|c| released(&c)) {
                        let waited = started.elapsed().as_millis();
                        tracing::warn!(cluster = %c.name, instance = %addr, epoch = f.epoch, agent = %id,
                            reason = %r.reason, waited_ms = waited as u64,
                            "the old primary's agent released its lease: done waiting");
                        return Ok(StepOutcome::Done(format!(
                            "agent {id} released its lease ({}) after {waited} ms of the wait",
                            r.reason
                        )));
                    }
                }
                Ok(StepOutcome::Done(format!("lease of agent {name} ran out (waited {} ms)", wait.as_millis())))
            }
            Step::PromoteCandidate { candidate } => {
                let semi_sync = c.settings.semi_sync == Some(true);
                self.promote(candidate, f.epoch, semi_sync, self.cfg_for(c).catch_up_timeout_ms)
                    .await
                    .map(|(detail, _)| StepOutcome::Done(detail))
            }
            Step::RepointReplica { replica, to } | Step::RepointOldPrimary { addr: replica, to } => {
                if crate::faults::get().active("failover.repoint_delay") {
                    // Tests: a window between the decision and the repoint in which the
                    // replica may still receive from its old source.
                    tracing::warn!(instance = %replica, "failpoint failover.repoint_delay: repointing in 3 s");
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                let login = self.replication_credentials()?;
                let p = self.prober(replica);
                let o = match p.probe().await {
                    Ok(o) => o,
                    Err(e) if is_unreachable(&e) => return Ok(StepOutcome::Skipped(format!("unreachable ({e})"))),
                    Err(e) => return Err(e.to_string()),
                };
                if let Some(r) = o.replication.first() {
                    if r.source_host == to.host() && r.source_port == to.port() && r.sql_running {
                        return Ok(StepOutcome::Done("already replicating from the new primary".into()));
                    }
                }
                let former_primary = matches!(step, Step::RepointOldPrimary { .. });
                if !former_primary && !o.replication.is_empty() {
                    if let Some(refused) = self.stop_unless_errant(p.as_ref(), &o, replica, to).await? {
                        p.disconnect().await;
                        return Ok(StepOutcome::Skipped(refused));
                    }
                }
                let sql = repoint_sql(&o, to, &login, former_primary);
                // The error of a refused CHANGE MASTER quotes the statement: never let the
                // password reach logs or the Raft record.
                p.execute(&sql, t).await.map_err(|e| redact(&e.to_string(), &login.password))?;
                p.disconnect().await;
                Ok(StepOutcome::Done(format!("replicating from {to}")))
            }
            Step::WriteHeartbeat { primary, epoch } => {
                let p = self.prober(primary);
                p.write_heartbeat(c.name.as_str(), *epoch, self.now_ms(), self.me).await.map_err(|e| e.to_string())?;
                p.disconnect().await;
                Ok(StepOutcome::Done(format!("heartbeat written with epoch {epoch}")))
            }
            Step::Complete => Ok(StepOutcome::complete()),
        }
    }

    /// Promote `candidate`: stop its replication, read the promotion point (what it holds
    /// before it takes its first write), reset replication and make it writable. Run again
    /// on an already writable candidate (a resumed failover), the point read is an upper
    /// bound that may include the new primary's own first writes — harmless for divergence,
    /// which is about the old primary's transactions.
    /// No-loss mode, before the promote: the old primary is fenced now (its lease ran
    /// out, or it was fenced), so it acknowledges nothing more; but what it committed
    /// between the decision and its fence (a SIGSTOPped primary resuming, say) may have
    /// reached a semi-sync replica and not the candidate (found by primus-sim: an
    /// acknowledged write lost). Waits, up to 2 s (or `catch_up_timeout_ms` if shorter),
    /// until the candidate holds everything every semi-sync replica received, judged from
    /// fresh probes; a candidate that cannot get it from the fenced old primary is not
    /// worth waiting longer for (the step fails, the failover is aborted, and the next
    /// decision chooses one that holds it).
    pub(super) async fn no_loss_before_promote(&self, name: &ClusterName, f: &FailoverRecord) -> Result<(), String> {
        let catch_up = self.cfg_of(name).catch_up_timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(catch_up.min(2000));
        loop {
            let c = self.cluster(name).map_err(|e| e.to_string())?;
            let addrs: Vec<InstanceAddr> =
                c.topology.instances.keys().filter(|a| **a != f.old_primary).cloned().collect();
            let fresh: BTreeMap<InstanceAddr, Result<primus_mysql::Observation, String>> =
                self.monitor.probe_fresh_map(&addrs).await;
            let input = self.input(&c);
            let seen = self.seen_received(name, &f.old_primary);
            let promoted_with = Self::promoted_with(&c, &f.old_primary);
            let mut gaps = primus_failover::no_loss_gaps(
                &input,
                &f.old_primary,
                &f.candidate,
                &fresh,
                seen.as_ref(),
                promoted_with.as_deref(),
            );
            let candidate_has = fresh.get(&f.candidate).and_then(|r| r.as_ref().ok()).map(|o| o.gtid.executed());
            gaps.extend(self.restart_gaps(name, &f.old_primary, candidate_has.as_ref()));
            if gaps.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no-loss mode: not promoted: {}", gaps.join("; ")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) async fn promote(
        &self,
        candidate: &InstanceAddr,
        epoch: u64,
        semi_sync: bool,
        catch_up_timeout_ms: u64,
    ) -> Result<(String, primus_mysql::PromotionPoint), String> {
        let t = self.step_timeout();
        let p = self.prober(candidate);
        let o = p.probe().await.map_err(|e| e.to_string())?;
        if o.is_replica() {
            // Stop receiving, then let the SQL thread apply everything received before
            // replication is reset: a reset discards the relay log, and with it whatever
            // arrived after the decision's catch-up target — in no-loss mode,
            // transactions a semi-sync acknowledgement already confirmed to a client
            // (found by primus-sim).
            let io = o.server.restart_io_thread_sql();
            p.execute(&io[..1], t).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(catch_up_timeout_ms);
            loop {
                let now = p.probe().await.map_err(|e| e.to_string())?;
                if primus_failover::relay_applied(&now) != Some(false) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let _ = p.execute(&io[1..], t).await;
                    return Err(format!(
                        "{candidate} did not apply its relay log within {} ms (not promoted; receiving again)",
                        catch_up_timeout_ms
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            p.execute(&[o.server.stop_replica_sql()], t).await.map_err(|e| e.to_string())?;
        }
        let stopped = p.probe().await.map_err(|e| e.to_string())?;
        let point = primus_mysql::promotion_point(&stopped);
        let mut sql = Vec::new();
        if o.is_replica() {
            sql.push(o.server.reset_replica_sql(ResetReplica::All));
        }
        // No-loss mode: lossless semi-sync from the very first write on the new
        // primary (its first commits wait for a repointed replica to acknowledge).
        if semi_sync {
            sql.extend(o.server.semi_sync_sql(true, true));
        }
        sql.extend(o.server.set_read_only_sql(false));
        p.execute(&sql, t).await.map_err(|e| e.to_string())?;
        p.disconnect().await;
        if crate::faults::get().active("failover.promote_answer_lost") {
            return Err("failpoint failover.promote_answer_lost: the promote ran, its answer is dropped".into());
        }
        let ss = if semi_sync { "lossless semi-sync on, " } else { "" };
        Ok((
            format!("replication stopped and reset, {ss}writable (epoch {epoch}), promotion point {}", point.gtid),
            point,
        ))
    }

    /// The operator's `fence` hooks (STONITH, VIP removal): most useful exactly when
    /// primus cannot reach the old primary itself. Failures are reported, not fatal.
    pub(super) async fn fence_hook(&self, c: &ClusterRecord, f: &FailoverRecord) -> String {
        if !self.hooks.has(crate::hooks::HookKind::Fence) {
            return String::new();
        }
        let ctx = crate::hooks::HookContext::from_record(&c.name, f, self.me);
        match self.hooks.run(crate::hooks::HookKind::Fence, &ctx).await {
            Ok(o) => format!("; fence hooks ran ({})", o.len()),
            Err(e) => format!("; fence hook failed: {e}"),
        }
    }

    /// Kill every client connection except replication and system threads.
    pub(super) async fn kill_clients(&self, p: &dyn MysqlConn, t: Duration) -> usize {
        let q = "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
                 AND USER NOT IN ('system user', 'event_scheduler')";
        let Ok(rows) = p.query_rows(q, t).await else { return 0 };
        let ids: Vec<String> = rows.iter().filter_map(|r| r.get(&["ID"]).flatten().map(str::to_string)).collect();
        let mut n = 0;
        for id in ids {
            if id.chars().all(|c| c.is_ascii_digit()) && p.execute(&[format!("KILL CONNECTION {id}")], t).await.is_ok()
            {
                n += 1;
            }
        }
        n
    }
}

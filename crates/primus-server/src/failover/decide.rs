//! Deciding a failover: the double-check with fresh probes, the candidate, the no-loss
//! check, the plan, and the write-ahead start; also the repair of a dead intermediate.

use super::*;

/// How long an operator's failover or switchover waits for the cluster's operation slot.
const OPERATOR_SLOT_WAIT: Duration = Duration::from_secs(5);

/// How a failover's evidence records that an operator accepted losing what a semi-sync
/// replica may have acknowledged (`--accept-loss`); the pre-promote check honours it.
const LOSS_ACCEPTED: &str = "no-loss check overridden by";

/// The operator accepted the loss for this failover (see [`LOSS_ACCEPTED`]).
pub(super) fn loss_accepted(f: &FailoverRecord) -> bool {
    f.evidence.iter().any(|e| e.starts_with(LOSS_ACCEPTED))
}

impl Engine {
    /// Repoint the replicas of a dead intermediate primary to its source, write-ahead
    /// through Raft like a failover (kind `intermediate_repair`, no epoch consumed).
    pub async fn repair_intermediate(self: &Arc<Self>, name: &ClusterName) -> Result<String, FailoverError> {
        let c = self.cluster(name)?;
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Busy(format!("failover {} is already in progress", f.id)));
        }
        self.confirm_leader().await?;
        // Double-check with the replicas' view now (the intermediate is unreachable).
        let addrs: Vec<InstanceAddr> = c.topology.instances.keys().cloned().collect();
        self.monitor.probe_fresh(&addrs).await;
        let c = self.cluster(name)?;
        let input = self.input(&c);
        let analysis = analyze(&input, &thresholds(&self.cfg_for(&c)));
        let intermediate = match (&analysis.code, &analysis.subject) {
            (AnalysisCode::DeadIntermediatePrimary, Some(s)) if analysis.actionable => s.clone(),
            _ => return Err(FailoverError::Refused(format!("double-check: {analysis}"))),
        };
        let to = c
            .topology
            .instances
            .get(&intermediate)
            .and_then(|i| i.source.clone())
            .ok_or_else(|| FailoverError::Refused(format!("intermediate {intermediate} has no known source")))?;
        let plan = primus_failover::plan_intermediate_repair(&input, &intermediate, &to).steps;
        let id = format!("{name}-e{}-r{}", c.epoch, c.history.len() + 1);
        tracing::warn!(cluster = %name, failover_id = %id, epoch = c.epoch, analysis = %analysis,
            intermediate = %intermediate, to = %to, "repairing a dead intermediate primary");
        self.commit(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind: FailoverKind::IntermediateRepair,
                analysis_code: analysis.code,
                evidence: analysis.evidence.clone(),
                old_primary: intermediate,
                candidate: to,
                epoch: c.epoch,
                plan,
                request_id: None,
            },
            "primusd",
        )
        .await?;
        self.execute(name, &id).await?;
        Ok(id)
    }

    /// An operator's failover or switchover: runs in its own task under the
    /// per-cluster guard, so it never races the automatic path and a cancelled
    /// request cannot stop it between two steps.
    pub async fn request(self: &Arc<Self>, name: &ClusterName, ask: FailoverAsk) -> Result<String, FailoverError> {
        // The cluster's one operation slot may be held for a moment by upkeep (a split
        // fence, an unfence, moving a replica left behind, a decision that finds nothing
        // to do): wait for it a little rather than refusing the operator at once.
        let waited_until = tokio::time::Instant::now() + OPERATOR_SLOT_WAIT;
        while !self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone()) {
            if tokio::time::Instant::now() < waited_until {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            return Err(FailoverError::Busy(format!(
                "another operation on {name} (failover, repair or split fence) is being decided or executed; retry"
            )));
        }
        let e = self.clone();
        let n = name.clone();
        let task = self.tasks.spawn(async move {
            let r = e.decide_and_run(&n, ask).await;
            e.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
            r
        });
        // Not the JoinError's text: it names tokio's process-wide task id, which means
        // nothing to an operator (and differs between two replays of one simulated seed).
        task.await.map_err(|e| {
            FailoverError::Internal(if e.is_cancelled() {
                "failover task failed: cancelled (this coordinator is stopping; a failover it started is carried on \
                 by the next leader)"
                    .into()
            } else {
                "failover task failed: panicked".into()
            })
        })?
    }

    /// Double-check, choose, commit the start, execute. Returns the failover id.
    pub async fn decide_and_run(
        self: &Arc<Self>,
        name: &ClusterName,
        ask: FailoverAsk,
    ) -> Result<String, FailoverError> {
        let FailoverAsk { kind, to, actor, accept_loss, request_id } = ask;
        let c = self.cluster(name)?;
        // Under the cluster's operation slot, so a first attempt of this request has
        // either committed its start or given up by now.
        if let Some(rid) = &request_id {
            if let Some(f) = c.failover_of_request(rid) {
                return Err(FailoverError::Repeated { id: f.id.clone(), request_id: rid.clone() });
            }
        }
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Busy(format!("failover {} is already in progress", f.id)));
        }
        let primary = c
            .topology
            .primary
            .clone()
            .ok_or_else(|| FailoverError::Refused(format!("cluster {name} has no primary to fail over from")))?;
        // An operator's choice that no state of the cluster makes possible: an answer,
        // not a refusal to record.
        if let Some(t) = &to {
            if !c.topology.instances.contains_key(t) {
                return Err(FailoverError::UnknownInstance { cluster: name.clone(), instance: t.clone() });
            }
            if *t == primary {
                return Err(FailoverError::InvalidRequest(format!(
                    "{t} is the primary of {name}: name a replica to promote"
                )));
            }
        }
        self.confirm_leader().await?;
        // Double-check with fresh probes of the primary and its replicas (seed 004):
        // the decision must not rest on a view that is a probe interval old.
        // An automatic decision already rests on a majority's fresh views of the
        // primary (view_max_age_ms); re-probing a hung primary would only burn a whole
        // timeout. What the double-check adds is the replicas' view, now.
        let addrs: Vec<InstanceAddr> = c
            .topology
            .instances
            .keys()
            .filter(|a| kind != FailoverKind::Automatic || **a != primary)
            .cloned()
            .collect();
        let fresh: BTreeMap<InstanceAddr, Result<primus_mysql::Observation, String>> =
            self.monitor.probe_fresh_map(&addrs).await;
        let c = self.cluster(name)?;
        let input = self.input(&c);
        let th = thresholds(&self.cfg_for(&c));
        let analysis = analyze(&input, &th);
        if kind == FailoverKind::Automatic {
            let dead = analysis.code.calls_for_failover();
            if !(dead && analysis.actionable) {
                tracing::info!(cluster = %name, analysis = %analysis, "double-check cleared the primary: no failover");
                return Err(FailoverError::Refused(format!("double-check: {analysis}")));
            }
        }
        let candidate = match &to {
            Some(t) if kind == FailoverKind::Switchover => {
                primus_failover::choose_candidate_for_switchover(&input, &primary, t, &th)
            }
            Some(t) => choose_candidate_explicit(&input, &primary, t, &th),
            None => choose_candidate(&input, &primary, &th),
        }
        .map_err(|e| FailoverError::Refused(format!("no safe candidate: {e}")));
        let candidate = match candidate {
            Ok(c) => c,
            Err(err) => {
                // Record why a dead primary is left alone, at most every 30 s per cluster.
                if self.say_once(name, &err.to_string()) {
                    let cmd = Command::RecordRefusal {
                        name: name.clone(),
                        analysis_code: analysis.code,
                        evidence: analysis.evidence.clone(),
                        reason: err.to_string(),
                    };
                    if let Err(e) = self.commit(cmd, &actor).await {
                        tracing::warn!(cluster = %name, error = %e, "could not record the refusal");
                    }
                }
                return Err(err);
            }
        };
        // A switchover's candidate catches up from the live primary over its replication
        // channel. Raft records the source a failover intended; a replica that was down
        // then still replicates from the demoted old primary, and as a switchover's
        // candidate it would wait for ever with the primary fenced (found by primus-sim).
        if kind == FailoverKind::Switchover {
            if let Some(Ok(o)) = fresh.get(&candidate.addr) {
                if !primus_failover::replicates_from(o, &primary) {
                    let from: Vec<String> =
                        o.replication.iter().map(|c| format!("{}:{}", c.source_host, c.source_port)).collect();
                    let from = if from.is_empty() { "nobody".to_string() } else { from.join(", ") };
                    return Err(FailoverError::Refused(format!(
                        "no safe candidate: {} does not replicate from {primary} (it replicates from {from}): it \
                         cannot catch up",
                        candidate.addr
                    )));
                }
            }
        }
        // No-loss mode: nothing a semi-sync replica may have acknowledged may be lost,
        // judged from this decision's own probes. A switchover loses nothing (the
        // candidate catches up with the fenced old primary).
        let mut evidence = analysis.evidence.clone();
        if c.settings.semi_sync == Some(true) && kind != FailoverKind::Switchover {
            let seen = self.seen_received(name, &primary);
            let promoted_with = Self::promoted_with(&c, &primary);
            let mut gaps = primus_failover::no_loss_gaps(
                &input,
                &primary,
                &candidate.addr,
                &fresh,
                seen.as_ref(),
                promoted_with.as_deref(),
            );
            let candidate_has = fresh.get(&candidate.addr).and_then(|r| r.as_ref().ok()).map(|o| o.gtid.executed());
            gaps.extend(self.restart_gaps(name, &primary, candidate_has.as_ref()));
            if gaps.is_empty() {
                self.no_loss_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                evidence.push(format!(
                    "no-loss mode: {} holds everything every semi-sync replica received (fresh probes)",
                    candidate.addr
                ));
            } else if accept_loss {
                evidence.extend(gaps.iter().map(|g| format!("{LOSS_ACCEPTED} {actor} (--accept-loss): {g}")));
            } else {
                let why = format!(
                    "promoting {} could lose acknowledged transactions: {}; to promote anyway: primusctl failover {name} \
                     --accept-loss",
                    candidate.addr,
                    gaps.join("; ")
                );
                self.no_loss_refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), (c.epoch, why.clone()));
                tracing::warn!(cluster = %name, epoch = c.epoch, candidate = %candidate.addr, reason = %why,
                    "no-loss mode: failover refused");
                let err = FailoverError::Refused(format!("no-loss mode: {why}"));
                if self.say_once(name, &err.to_string()) || kind != FailoverKind::Automatic {
                    let mut ev = vec![format!("no-loss mode: {why}")];
                    ev.extend(analysis.evidence.iter().cloned());
                    let cmd = Command::RecordRefusal {
                        name: name.clone(),
                        analysis_code: AnalysisCode::DeadPrimaryWouldLoseData,
                        evidence: ev,
                        reason: err.to_string(),
                    };
                    if let Err(e) = self.commit(cmd, &actor).await {
                        tracing::warn!(cluster = %name, error = %e, "could not record the refusal");
                    }
                }
                return Err(err);
            }
        }
        let plan = plan(&input, &analysis, &candidate, kind).steps;
        let epoch = c.epoch + 1;
        let id = format!("{name}-e{epoch}");
        evidence.extend(candidate.reasons.iter().map(|r| format!("candidate: {r}")));
        // pre_failover hooks may veto: they run before anything is committed or touched.
        if self.hooks.has(crate::hooks::HookKind::PreFailover) {
            let ctx = crate::hooks::HookContext {
                failure_type: analysis.code.to_string(),
                failure_description: analysis.evidence.join("; "),
                failure_cluster: name.to_string(),
                failed_host: primary.host().to_string(),
                failed_port: primary.port(),
                successor_host: Some(candidate.addr.host().to_string()),
                successor_port: Some(candidate.addr.port()),
                epoch,
                failover_id: id.clone(),
                kind,
                coordinator: self.me,
                ..Default::default()
            };
            if let Err(e) = self.hooks.run(crate::hooks::HookKind::PreFailover, &ctx).await {
                tracing::warn!(cluster = %name, failover_id = %id, epoch, error = %e, "pre_failover hook vetoed the failover");
                return Err(FailoverError::Refused(format!("vetoed by pre_failover hook: {e}")));
            }
        }
        tracing::warn!(cluster = %name, failover_id = %id, epoch, kind = %kind, analysis = %analysis,
            old_primary = %primary, candidate = %candidate.addr, "starting failover");
        self.commit(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind,
                analysis_code: analysis.code,
                evidence,
                old_primary: primary,
                candidate: candidate.addr.clone(),
                epoch,
                plan,
                request_id,
            },
            &actor,
        )
        .await?;
        failpoint("failover.after_start", None);
        self.execute(name, &id).await.map_err(|e| match e {
            FailoverError::NotLeader(reason) => FailoverError::Interrupted { id: id.clone(), reason },
            e => e,
        })?;
        Ok(id)
    }
}

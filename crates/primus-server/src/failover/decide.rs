//! Deciding a failover: the double-check with fresh probes, the candidate, the no-loss
//! check, the plan, and the write-ahead start; also the repair of a dead intermediate.

use super::*;

impl Engine {
    /// Repoint the replicas of a dead intermediate primary to its source, write-ahead
    /// through Raft like a failover (kind `intermediate_repair`, no epoch consumed).
    pub async fn repair_intermediate(self: &Arc<Self>, name: &ClusterName) -> Result<String, FailoverError> {
        let c = self.cluster(name)?;
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Refused(format!("failover {} is already in progress", f.id)));
        }
        self.confirm_leader().await?;
        // Double-check with the replicas' view now (the intermediate is unreachable).
        let addrs: Vec<InstanceAddr> = c.topology.instances.keys().cloned().collect();
        self.monitor.probe_fresh(&addrs).await;
        let c = self.cluster(name)?;
        let input = self.input(&c);
        let analysis = analyze(&input, &thresholds(&self.cfg));
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
        let steps = primus_failover::plan_intermediate_repair(&input, &intermediate, &to).steps;
        let plan_json: Vec<serde_json::Value> = steps.iter().filter_map(|s| serde_json::to_value(s).ok()).collect();
        let id = format!("{name}-e{}-r{}", c.epoch, c.history.len() + 1);
        tracing::warn!(cluster = %name, failover_id = %id, epoch = c.epoch, analysis = %analysis,
            intermediate = %intermediate, to = %to, "repairing a dead intermediate primary");
        self.commit(
            Command::StartFailover {
                name: name.clone(),
                id: id.clone(),
                kind: FailoverKind::IntermediateRepair,
                analysis_code: analysis.code.to_string(),
                evidence: analysis.evidence.clone(),
                old_primary: intermediate,
                candidate: to,
                epoch: c.epoch,
                plan: plan_json,
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
        if !self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone()) {
            return Err(FailoverError::Refused(format!(
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
        task.await.map_err(|e| FailoverError::Refused(format!("failover task failed: {e}")))?
    }

    /// Double-check, choose, commit the start, execute. Returns the failover id.
    pub async fn decide_and_run(
        self: &Arc<Self>,
        name: &ClusterName,
        ask: FailoverAsk,
    ) -> Result<String, FailoverError> {
        let FailoverAsk { kind, to, actor, accept_loss } = ask;
        let c = self.cluster(name)?;
        if let Some(f) = c.in_flight() {
            return Err(FailoverError::Refused(format!("failover {} is already in progress", f.id)));
        }
        let primary = c
            .topology
            .primary
            .clone()
            .ok_or_else(|| FailoverError::Refused(format!("cluster {name} has no primary to fail over from")))?;
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
        let fresh: BTreeMap<InstanceAddr, Result<primus_mysql::Observation, String>> = self
            .monitor
            .probe_fresh(&addrs)
            .await
            .into_iter()
            .map(|r| (r.addr, r.result.map_err(|e| e.to_string())))
            .collect();
        let c = self.cluster(name)?;
        let input = self.input(&c);
        let th = thresholds(&self.cfg);
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
                        analysis_code: analysis.code.to_string(),
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
        // No-loss mode: nothing a semi-sync replica may have acknowledged may be lost,
        // judged from this decision's own probes. A switchover loses nothing (the
        // candidate catches up with the fenced old primary).
        let mut evidence = analysis.evidence.clone();
        if c.settings.semi_sync == Some(true) && kind != FailoverKind::Switchover {
            let gaps = primus_failover::no_loss_gaps(&input, &primary, &candidate.addr, &fresh);
            if gaps.is_empty() {
                self.no_loss_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                evidence.push(format!(
                    "no-loss mode: {} holds everything every semi-sync replica received (fresh probes)",
                    candidate.addr
                ));
            } else if accept_loss {
                evidence
                    .extend(gaps.iter().map(|g| format!("no-loss check overridden by {actor} (--accept-loss): {g}")));
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
                        analysis_code: AnalysisCode::DeadPrimaryWouldLoseData.to_string(),
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
        let steps = plan(&input, &analysis, &candidate, kind).steps;
        let plan_json: Vec<serde_json::Value> = steps.iter().filter_map(|s| serde_json::to_value(s).ok()).collect();
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
                analysis_code: analysis.code.to_string(),
                evidence,
                old_primary: primary,
                candidate: candidate.addr.clone(),
                epoch,
                plan: plan_json,
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

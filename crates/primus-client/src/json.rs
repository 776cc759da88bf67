//! The JSON shape of the coordinator's answers, shared by `primusctl -o json` and
//! primusd's HTTP API (`/api/v1/…`, docs/http.md): one conversion from the gRPC
//! messages, so that both always print the same fields with the same names.
//!
//! Times are kept as the milliseconds since the Unix epoch the coordinator
//! recorded (`…_ms`); `primusctl` adds RFC 3339 strings next to them where it
//! shows times ([`rfc3339_ms`]).

use primus_proto::v1::{
    AnalysisResponse, FailoverView, GetPrimaryResponse, GetStatusResponse, GetTopologyResponse, HistoryResponse,
    ListClustersResponse, MaintenanceView, PrimaryState, ReadConsistency, Role, SplitFenceView,
};
use serde_json::{json, Value};

/// A node's Raft role as a lowercase word.
pub fn role_name(r: i32) -> &'static str {
    match Role::try_from(r).unwrap_or(Role::Unspecified) {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Learner => "learner",
        Role::Candidate => "candidate",
        Role::Uninitialized => "uninitialized",
        Role::Unspecified => "unknown",
    }
}

fn consistency(linearizable: bool) -> &'static str {
    if linearizable {
        "linearizable"
    } else {
        "stale"
    }
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// `primusctl status` / `GET /api/v1/status`.
pub fn status(s: &GetStatusResponse) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            json!({"id": m.id, "addr": m.addr, "datacenter": m.datacenter,
                   "role": role_name(m.role), "matched_index": m.matched_index,
                   "millis_since_last_contact": m.millis_since_last_contact})
        })
        .collect();
    json!({
        "leader_id": s.leader_id, "leader_addr": s.leader_addr, "term": s.term,
        "commit_index": s.commit_index, "applied_index": s.applied_index,
        "last_log_index": s.last_log_index, "snapshot_index": s.snapshot_index,
        "served_by": s.node_id, "members": members,
        "millis_since_quorum_ack": s.millis_since_quorum_ack,
        "role": role_name(s.role), "consistency": consistency(s.linearizable),
        "version": s.version, "feature_level": s.feature_level,
        "group_feature_level": s.group_feature_level.max(1),
        "automatic_off": s.automatic_off.as_ref().map(|a| json!({
            "reason": a.reason, "actor": a.actor, "at_ms": a.at_ms, "at": rfc3339_ms(a.at_ms),
            "log_index": a.log_index,
        })),
    })
}

/// `primusctl cluster list` / `GET /api/v1/clusters`.
pub fn cluster_list(r: &ListClustersResponse) -> Value {
    let clusters: Vec<Value> = r
        .clusters
        .iter()
        .map(|c| {
            json!({"name": c.name, "seeds": c.seeds, "registered_at_index": c.registered_at_index,
                   "registered_at_ms": c.registered_at_ms, "registered_by": c.registered_by,
                   "automatic_failover": c.settings.as_ref().and_then(|s| s.automatic_failover),
                   "failover_settings": c.settings.as_ref().map(|s| s.failover.clone()).unwrap_or_default()})
        })
        .collect();
    json!({"clusters": clusters, "applied_index": r.applied_index, "served_by": r.served_by})
}

/// `primusctl topology` / `GET /api/v1/clusters/{name}/topology`.
pub fn topology(t: &GetTopologyResponse) -> Value {
    let instances: Vec<Value> = t
        .instances
        .iter()
        .map(|i| {
            let seen_by: serde_json::Map<String, Value> =
                i.seen_by.iter().map(|(k, v)| (k.to_string(), Value::Bool(*v))).collect();
            json!({
                "addr": i.addr, "role": i.role, "source": i.source, "server_id": i.server_id,
                "flavor": i.flavor, "version": i.version, "read_only": i.read_only,
                "gtid_executed": i.gtid_executed, "io_running": i.io_running, "sql_running": i.sql_running,
                "seconds_behind": i.seconds_behind, "heartbeat_delay_ms": i.heartbeat_delay_ms,
                "reachable": i.reachable, "seen_by": seen_by, "flags": i.flags,
                "last_error": i.last_error, "last_io_error": i.last_io_error, "last_sql_error": i.last_sql_error,
                "observed_at_ms": i.observed_at_ms, "probe_latency_us": i.probe_latency_us,
                "promotion_rule": i.promotion_rule,
                "datacenter": non_empty(&i.datacenter),
                "maintenance": i.maintenance.as_ref().map(maintenance),
            })
        })
        .collect();
    let settings = t.settings.clone().unwrap_or_default();
    json!({
        "cluster": t.cluster, "epoch": t.epoch,
        "primary": non_empty(&t.primary),
        "topology_index": t.topology_index, "served_by": t.served_by, "instances": instances,
        "maintenance": t.cluster_maintenance.as_ref().map(maintenance),
        "settings": {"automatic_failover": settings.automatic_failover, "semi_sync": settings.semi_sync,
                     "failover": settings.failover},
    })
}

pub fn maintenance(m: &MaintenanceView) -> Value {
    json!({"reason": m.reason, "by": m.by, "since_ms": m.since_ms, "until_ms": m.until_ms})
}

/// One failover (`primusctl failover|switchover`, and each entry of `history`).
pub fn failover(f: &FailoverView) -> Value {
    json!({
        "id": f.id, "kind": f.kind, "analysis": f.analysis_code, "evidence": f.evidence,
        "old_primary": f.old_primary, "new_primary": f.candidate, "epoch": f.epoch,
        "outcome": f.outcome, "outcome_reason": f.outcome_reason,
        "started_at_ms": f.started_at_ms, "started_at": rfc3339_ms(f.started_at_ms),
        "finished_at_ms": f.finished_at_ms, "finished_at": f.finished_at_ms.map(rfc3339_ms),
        "started_by": f.started_by, "acked_by": f.acked_by,
        "promotion_gtid": f.promotion_gtid, "request_id": f.request_id,
        "steps": f.steps.iter().map(|s| json!({"index": s.index, "step": s.description, "outcome": s.outcome,
            "at_ms": s.at_ms, "at": rfc3339_ms(s.at_ms)})).collect::<Vec<_>>(),
    })
}

/// `primusctl history` / `GET /api/v1/clusters/{name}/history`.
pub fn history(r: &HistoryResponse) -> Value {
    let refusals: Vec<Value> = r
        .refusals
        .iter()
        .map(|x| {
            json!({"at_ms": x.at_ms, "at": rfc3339_ms(x.at_ms), "analysis": x.analysis_code,
                   "evidence": x.evidence, "reason": x.reason})
        })
        .collect();
    let fences = |v: &[SplitFenceView]| -> Vec<Value> {
        v.iter()
            .map(|f| {
                json!({"id": f.id, "at_ms": f.at_ms, "at": rfc3339_ms(f.at_ms), "instance": f.instance,
                       "epoch": f.epoch, "evidence": f.evidence, "outcome": non_empty(&f.outcome),
                       "finished_at_ms": f.finished_at_ms})
            })
            .collect()
    };
    json!({"failovers": r.failovers.iter().map(failover).collect::<Vec<_>>(),
        "refusals": refusals, "split_fences": fences(&r.split_fences), "unfences": fences(&r.unfences),
        "applied_index": r.applied_index, "served_by": r.served_by})
}

/// `primusctl analysis` / `GET /api/v1/clusters/{name}/analysis`.
pub fn analysis(cluster: &str, a: &AnalysisResponse) -> Value {
    json!({"cluster": cluster, "code": a.code, "subject": a.subject, "evidence": a.evidence,
        "actionable": a.actionable, "at_ms": a.at_ms, "served_by": a.served_by, "epoch": a.epoch,
        "consistency": consistency(a.linearizable)})
}

/// A cluster's primary state (`primusctl primary`, and each `watch` event).
pub fn primary_state(s: &PrimaryState) -> Value {
    json!({
        "cluster": s.cluster, "primary": s.primary, "epoch": s.epoch, "datacenter": s.datacenter,
        "failover": s.failover.as_ref().map(|f| json!({"id": f.id, "kind": f.kind, "old_primary": f.old_primary,
            "candidate": f.candidate, "epoch": f.epoch})),
        "demoted": s.demoted,
    })
}

/// `primusctl primary` / `GET /api/v1/clusters/{name}/primary`.
pub fn primary(r: &GetPrimaryResponse) -> Value {
    let mut v = primary_state(&r.state.clone().unwrap_or_default());
    v["applied_index"] = json!(r.applied_index);
    v["served_by"] = json!(r.served_by);
    v["leader_id"] = json!(r.leader_id);
    v["leader_addr"] = json!(r.leader_addr);
    v["consistency"] = json!(consistency(r.consistency() == ReadConsistency::Linearizable));
    v
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2026-12-04T01:25:03.120Z`); out-of-range values as the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = i64::try_from(ms).ok().and_then(chrono::DateTime::from_timestamp_millis).unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_438_343_092), "2026-11-23T12:52:23.092Z");
        assert_eq!(rfc3339_ms(u64::MAX), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_cluster_without_primary_has_null_primary_in_topology() {
        let t = GetTopologyResponse { cluster: "c".into(), ..Default::default() };
        let v = topology(&t);
        assert!(v["primary"].is_null(), "{v}");
        assert_eq!(v["cluster"], "c");
    }
}

//! Records written before failover records got types (commit 3315362 and earlier)
//! decode into the typed records, and encode back to the same JSON.
//!
//! The samples are JSON that primusd of 3315362 wrote into the Raft log and the state
//! machine of `tests/fixtures/old-data-dir-3315362.tar.gz` (evidence lists trimmed),
//! plus the step and outcome shapes older releases wrote that the fixture lacks.
#![cfg(feature = "raft")]

use crate::state::{ClusterRecord, KeyImage, Loaded, Registry};
use crate::{AnalysisCode, Command, FailoverKind, FailoverOutcome, Request, Step, StepOutcome};
use serde_json::{json, Value};

/// `value` decodes as `T`, and `T` encodes back to the same JSON.
fn decodes_and_round_trips<T>(value: &Value) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value:#}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, value, "the typed record encodes differently");
    typed
}

fn addr(s: &str) -> crate::InstanceAddr {
    s.parse().unwrap()
}

/// Raft log entry 4: the write-ahead start of a switchover.
const START_FAILOVER: &str = r#"{
    "format": 1,
    "origin": {
        "actor": "testkit",
        "via_node": 1
    },
    "proposed_at_ms": 1796264116541,
    "command": {
        "StartFailover": {
            "name": "legacy",
            "id": "legacy-e2",
            "kind": "switchover",
            "analysis_code": "NoProblem",
            "evidence": [
                "primary 127.0.0.1:34385 reachable from 1/1 coordinators"
            ],
            "old_primary": "127.0.0.1:34385",
            "candidate": "127.0.0.1:41975",
            "epoch": 2,
            "plan": [
                {
                    "addr": "127.0.0.1:34385",
                    "best_effort": false,
                    "step": "fence_old_primary"
                },
                {
                    "candidate": "127.0.0.1:41975",
                    "catch_up_with": "127.0.0.1:34385",
                    "step": "wait_candidate_catch_up",
                    "target_gtid": "0-1-14"
                },
                {
                    "candidate": "127.0.0.1:41975",
                    "step": "promote_candidate"
                },
                {
                    "replica": "127.0.0.1:42773",
                    "step": "repoint_replica",
                    "to": "127.0.0.1:41975"
                },
                {
                    "addr": "127.0.0.1:34385",
                    "step": "repoint_old_primary",
                    "to": "127.0.0.1:41975"
                },
                {
                    "epoch": 2,
                    "primary": "127.0.0.1:41975",
                    "step": "write_heartbeat"
                },
                {
                    "step": "complete"
                }
            ]
        }
    }
}"#;

/// Raft log entry 3: a refused failover.
const RECORD_REFUSAL: &str = r#"{
    "format": 1,
    "origin": {
        "actor": "testkit",
        "via_node": 1
    },
    "proposed_at_ms": 1796264116531,
    "command": {
        "RecordRefusal": {
            "name": "legacy",
            "analysis_code": "NoProblem",
            "evidence": [
                "primary 127.0.0.1:34385 reachable from 1/1 coordinators"
            ],
            "reason": "refused: no safe candidate: no replica can be promoted: 127.0.0.1:34385: is the primary being replaced"
        }
    }
}"#;

/// Raft log entries 5, 31 and 33: a step done, a step skipped, the lease wait skipped.
const STEPS: [&str; 3] = [
    r#"{"format": 1, "origin": {"actor": "primusd", "via_node": 1}, "proposed_at_ms": 1796264116544, "command": {"FailoverStep": {"name": "legacy", "id": "legacy-e2", "index": 0, "description": "fence old primary 127.0.0.1:34385", "outcome": "read_only set, 3 client connections killed"}}}"#,
    r#"{"format": 1, "origin": {"actor": "primusd", "via_node": 1}, "proposed_at_ms": 1796264120272, "command": {"FailoverStep": {"name": "legacy", "id": "legacy-e3", "index": 0, "description": "fence old primary 127.0.0.1:41975 (best effort)", "outcome": "skipped: unreachable (instance unreachable: Input/output error: Connection refused (os error 111))"}}}"#,
    r#"{"format": 1, "origin": {"actor": "primusd", "via_node": 1}, "proposed_at_ms": 1796264120279, "command": {"FailoverStep": {"name": "legacy", "id": "legacy-e3", "index": 2, "description": "wait for the lease of 127.0.0.1:41975's agent to run out", "outcome": "skipped: 127.0.0.1:41975 has no fencing agent: UNFENCED unless the fence step reached it"}}}"#,
];

/// The state machine's `c/legacy` value (one of its two failovers kept).
const CLUSTER: &str = r#"{
    "name": "legacy",
    "seeds": [
        "127.0.0.1:34385"
    ],
    "settings": {
        "automatic_failover": null,
        "semi_sync": null
    },
    "registered_at_index": 2,
    "registered_at_ms": 1796264114706,
    "registered_by": "testkit",
    "topology": {
        "primary": "127.0.0.1:34385",
        "instances": {
            "127.0.0.1:34385": {
                "addr": "127.0.0.1:34385",
                "role": "primary",
                "source": null,
                "server_id": 1,
                "flavor": "mariadb",
                "version": "10.11.19"
            },
            "127.0.0.1:41975": {
                "addr": "127.0.0.1:41975",
                "role": "demoted",
                "source": null,
                "server_id": 2,
                "flavor": "mariadb",
                "version": "10.11.19"
            },
            "127.0.0.1:42773": {
                "addr": "127.0.0.1:42773",
                "role": "replica",
                "source": "127.0.0.1:34385",
                "server_id": 3,
                "flavor": "mariadb",
                "version": "10.11.19"
            }
        }
    },
    "epoch": 3,
    "topology_index": 43,
    "history": [
        {
            "id": "legacy-e3",
            "kind": "automatic",
            "analysis_code": "DeadPrimary",
            "evidence": [
                "primary 127.0.0.1:41975 unreachable from 1/1 coordinators (1: unreachable: Input/output error: Connection refused (os error 111))"
            ],
            "old_primary": "127.0.0.1:41975",
            "candidate": "127.0.0.1:34385",
            "epoch": 3,
            "plan": [
                {
                    "addr": "127.0.0.1:41975",
                    "best_effort": true,
                    "step": "fence_old_primary"
                },
                {
                    "candidate": "127.0.0.1:34385",
                    "step": "wait_candidate_catch_up",
                    "target_gtid": "0-2-35"
                },
                {
                    "addr": "127.0.0.1:41975",
                    "step": "wait_lease_expiry"
                },
                {
                    "candidate": "127.0.0.1:34385",
                    "step": "promote_candidate"
                },
                {
                    "replica": "127.0.0.1:42773",
                    "step": "repoint_replica",
                    "to": "127.0.0.1:34385"
                },
                {
                    "epoch": 3,
                    "primary": "127.0.0.1:34385",
                    "step": "write_heartbeat"
                },
                {
                    "step": "complete"
                }
            ],
            "steps": [
                {
                    "index": 0,
                    "description": "fence old primary 127.0.0.1:41975 (best effort)",
                    "outcome": "skipped: unreachable (instance unreachable: Input/output error: Connection refused (os error 111))",
                    "at_ms": 1796264120272,
                    "log_index": 31
                },
                {
                    "index": 1,
                    "description": "wait for 127.0.0.1:34385 to apply 0-2-35",
                    "outcome": "applied 0-2-35 (at 0-2-35)",
                    "at_ms": 1796264120277,
                    "log_index": 32
                },
                {
                    "index": 2,
                    "description": "wait for the lease of 127.0.0.1:41975's agent to run out",
                    "outcome": "skipped: 127.0.0.1:41975 has no fencing agent: UNFENCED unless the fence step reached it",
                    "at_ms": 1796264120279,
                    "log_index": 33
                },
                {
                    "index": 3,
                    "description": "promote 127.0.0.1:34385",
                    "outcome": "replication stopped and reset, writable (epoch 3), promotion point 0-2-35",
                    "at_ms": 1796264120288,
                    "log_index": 35
                },
                {
                    "index": 4,
                    "description": "repoint 127.0.0.1:42773 to 127.0.0.1:34385",
                    "outcome": "replicating from 127.0.0.1:34385",
                    "at_ms": 1796264120293,
                    "log_index": 36
                },
                {
                    "index": 5,
                    "description": "write heartbeat on 127.0.0.1:34385 with epoch 3",
                    "outcome": "heartbeat written with epoch 3",
                    "at_ms": 1796264120296,
                    "log_index": 37
                },
                {
                    "index": 6,
                    "description": "complete",
                    "outcome": "done",
                    "at_ms": 1796264120298,
                    "log_index": 38
                }
            ],
            "started_at_ms": 1796264120268,
            "started_index": 30,
            "started_by": "primusd",
            "outcome": {
                "result": "succeeded"
            },
            "finished_at_ms": 1796264120299,
            "promotion_gtid": "0-2-35",
            "promotion_binlog_state": "0-1-14,0-2-35",
            "acked_by": null
        }
    ],
    "demoted": [
        "127.0.0.1:41975"
    ],
    "promotion_rules": {},
    "instance_maintenance": {},
    "cluster_maintenance": null,
    "refusals": [
        {
            "at_ms": 1796264116531,
            "analysis_code": "NoProblem",
            "evidence": [
                "primary 127.0.0.1:34385 reachable from 1/1 coordinators"
            ],
            "reason": "refused: no safe candidate: no replica can be promoted: 127.0.0.1:34385: is the primary being replaced"
        }
    ],
    "datacenters": {
        "127.0.0.1:34385": "dc-13",
        "127.0.0.1:41975": "dc-15",
        "127.0.0.1:42773": "dc-11"
    },
    "agents": {},
    "split_fences": []
}"#;

#[test]
fn a_start_failover_entry_of_3315362_decodes_with_its_plan_typed() {
    let v: Value = serde_json::from_str(START_FAILOVER).unwrap();
    let r: Request = decodes_and_round_trips(&v);
    let Command::StartFailover { kind, analysis_code, plan, request_id, .. } = &r.command else { panic!("{r:?}") };
    assert_eq!((*kind, *analysis_code), (FailoverKind::Switchover, AnalysisCode::NoProblem));
    // Written before failover requests carried ids: none, and none written back.
    assert_eq!(request_id, &None);
    let (old, new) = (addr("127.0.0.1:34385"), addr("127.0.0.1:41975"));
    assert_eq!(
        plan,
        &vec![
            Step::FenceOldPrimary { addr: old.clone(), best_effort: false },
            Step::WaitCandidateCatchUp {
                candidate: new.clone(),
                target_gtid: "0-1-14".into(),
                catch_up_with: Some(old.clone()),
            },
            Step::PromoteCandidate { candidate: new.clone() },
            Step::RepointReplica { replica: addr("127.0.0.1:42773"), to: new.clone() },
            Step::RepointOldPrimary { addr: old, to: new.clone() },
            Step::WriteHeartbeat { primary: new, epoch: 2 },
            Step::Complete,
        ]
    );
    // The audit line is the one the old primusd wrote for it.
    assert_eq!(
        r.command.summary(),
        "start switchover failover legacy-e2 of legacy (NoProblem): 127.0.0.1:34385 -> 127.0.0.1:41975, epoch 2"
    );
}

#[test]
fn a_record_refusal_entry_of_3315362_decodes_with_its_analysis_code_typed() {
    let v: Value = serde_json::from_str(RECORD_REFUSAL).unwrap();
    let r: Request = decodes_and_round_trips(&v);
    let Command::RecordRefusal { analysis_code, reason, .. } = &r.command else { panic!("{r:?}") };
    assert_eq!(*analysis_code, AnalysisCode::NoProblem);
    assert!(reason.contains("no safe candidate"));
    assert_eq!(
        r.command.summary(),
        "failover of legacy refused (NoProblem): refused: no safe candidate: no replica can be promoted: \
         127.0.0.1:34385: is the primary being replaced"
    );
}

#[test]
fn failover_step_entries_of_3315362_decode_as_done_or_skipped_and_summarize_as_before() {
    let want = [
        (
            StepOutcome::Done("read_only set, 3 client connections killed".into()),
            "failover legacy-e2 of legacy step 0 fence old primary 127.0.0.1:34385: read_only set, 3 client \
             connections killed",
        ),
        (
            StepOutcome::Skipped(
                "unreachable (instance unreachable: Input/output error: Connection refused (os error 111))".into(),
            ),
            "failover legacy-e3 of legacy step 0 fence old primary 127.0.0.1:41975 (best effort): skipped: \
             unreachable (instance unreachable: Input/output error: Connection refused (os error 111))",
        ),
        (
            StepOutcome::Skipped(
                "127.0.0.1:41975 has no fencing agent: UNFENCED unless the fence step reached it".into(),
            ),
            "failover legacy-e3 of legacy step 2 wait for the lease of 127.0.0.1:41975's agent to run out: skipped: \
             127.0.0.1:41975 has no fencing agent: UNFENCED unless the fence step reached it",
        ),
    ];
    for (json, (outcome, summary)) in STEPS.iter().zip(want) {
        let v: Value = serde_json::from_str(json).unwrap();
        let r: Request = decodes_and_round_trips(&v);
        let Command::FailoverStep { outcome: got, .. } = &r.command else { panic!("{r:?}") };
        assert_eq!(got, &outcome);
        assert_eq!(r.command.summary(), summary);
    }
}

#[test]
fn a_cluster_record_of_3315362_loads_from_its_state_key_with_typed_history_and_refusals() {
    let mut registry = Registry::default();
    // Written with the history inside the record (data format 1): loads, and says so.
    assert_eq!(registry.load(b"c/legacy", CLUSTER.as_bytes()).unwrap(), Loaded::Legacy);
    let c = &registry.clusters[&"legacy".parse().unwrap()];
    let f = &c.history[0];
    assert_eq!((f.kind, f.analysis_code), (FailoverKind::Automatic, AnalysisCode::DeadPrimary));
    assert_eq!(f.outcome, Some(FailoverOutcome::Succeeded));
    assert_eq!(f.plan.len(), 7);
    assert_eq!(f.plan[2], Step::WaitLeaseExpiry { addr: addr("127.0.0.1:41975") });
    assert_eq!(f.steps.len(), f.plan.len(), "every step recorded, complete included");
    let skipped: Vec<u32> = f.steps.iter().filter(|s| s.outcome.is_skipped()).map(|s| s.index).collect();
    assert_eq!(skipped, vec![0, 2], "the unreachable fence and the agentless lease wait");
    assert_eq!(f.steps[6].outcome, StepOutcome::complete());
    assert_eq!(c.refusals[0].analysis_code, AnalysisCode::NoProblem);
    // Written before `unfences` existed: empty; the rest encodes as it was written.
    assert!(c.unfences.is_empty());
    let old: Value = serde_json::from_str(CLUSTER).unwrap();
    let mut new = serde_json::to_value(&**c).unwrap();
    assert_eq!(new.as_object_mut().and_then(|o| o.remove("unfences")), Some(json!([])));
    assert_eq!(new, old);
    // The same record inside a snapshot (the registry's JSON) loads the same.
    let snapshot = json!({"clusters": {"legacy": old}, "audit": {}});
    let from_snapshot: Registry = serde_json::from_value(snapshot).unwrap();
    assert_eq!(from_snapshot.clusters, registry.clusters);
    let _: ClusterRecord = decodes_and_round_trips(&serde_json::to_value(&**c).unwrap());
    // Rewritten in the current layout (what the store does once), it loads the same,
    // with the history under its own keys.
    let image = KeyImage::of(&registry).unwrap();
    assert_eq!(image.0.keys().filter(|k| k.starts_with(b"h/legacy/")).count(), c.history.len());
    assert_eq!(image.load().unwrap(), registry);
}

#[test]
fn every_step_shape_ever_written_decodes() {
    // As primusd wrote them (through serde_json::Value: keys sorted), including the
    // intermediate repair's and a catch-up without `catch_up_with`.
    let a = "h:1";
    let shapes = [
        json!({"addr": a, "best_effort": true, "step": "fence_old_primary"}),
        json!({"candidate": a, "step": "wait_candidate_catch_up", "target_gtid": "0-1-5"}),
        json!({"candidate": a, "catch_up_with": "h:2", "step": "wait_candidate_catch_up", "target_gtid": "0-1-5"}),
        json!({"addr": a, "step": "wait_lease_expiry"}),
        json!({"candidate": a, "step": "promote_candidate"}),
        json!({"replica": a, "step": "repoint_replica", "to": "h:2"}),
        json!({"addr": a, "step": "repoint_old_primary", "to": "h:2"}),
        json!({"epoch": 7, "primary": a, "step": "write_heartbeat"}),
        json!({"step": "complete"}),
    ];
    for v in shapes {
        let _: Step = decodes_and_round_trips(&v);
    }
    // Anything else is refused, not dropped.
    assert!(serde_json::from_value::<Step>(json!({"step": "reboot_the_datacenter"})).is_err());
    assert!(serde_json::from_value::<Step>(json!({"step": "promote_candidate"})).is_err());
}

#[test]
fn every_outcome_text_reads_back_as_it_was_written() {
    for text in [
        "done",
        "writable",
        "",
        "already replicating from the new primary",
        "lease of agent a1 ran out (waited 2162 ms)",
        "skipped: unreachable (connection refused); fence hooks ran (1)",
        "skipped: no answer within 150 ms",
        "skipped: ",
    ] {
        let o: StepOutcome = serde_json::from_value(json!(text)).unwrap();
        assert_eq!(o.is_skipped(), text.starts_with("skipped: "), "{text}");
        assert_eq!(o.to_string(), text);
        assert_eq!(serde_json::to_value(&o).unwrap(), json!(text));
    }
    assert_eq!(StepOutcome::Skipped("why".into()).text(), "why");
    // Not a string: refused.
    assert!(serde_json::from_value::<StepOutcome>(json!({"done": "x"})).is_err());
}

#[test]
fn every_analysis_code_is_stored_as_its_name() {
    for code in AnalysisCode::ALL {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        assert_eq!(serde_json::from_value::<AnalysisCode>(json!(code.as_str())).unwrap(), code);
    }
    assert!(serde_json::from_value::<AnalysisCode>(json!("Meltdown")).is_err());
}

#[test]
fn a_step_failed_after_the_promotion_is_stored_as_failed_text_and_reads_back() {
    let o = StepOutcome::Failed("timed out after 500 ms during heartbeat write".into());
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v, json!("failed: timed out after 500 ms during heartbeat write"));
    let back: StepOutcome = serde_json::from_value(v).unwrap();
    assert!(back.is_failed() && !back.is_skipped());
    assert_eq!(back, o);
    assert_eq!(back.text(), "timed out after 500 ms during heartbeat write");
}

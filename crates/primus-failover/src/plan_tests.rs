//! Plans: the order of steps per kind, the point of no return, and steps as stored data.

use crate::testkit::{a, Seen, Sim, P, R1, R2, R3};
use crate::{analyze, choose_candidate, plan, FailoverKind, FailoverPlan, PromotionRule, Step, Thresholds};
use primus_mysql::status::IoThreadState::Connecting;

fn fence(port: u16, best_effort: bool) -> Step {
    Step::FenceOldPrimary { addr: a(port), best_effort }
}

fn repoint(replica: u16, to: u16) -> Step {
    Step::RepointReplica { replica: a(replica), to: a(to) }
}

/// P dead, R2 most advanced (0-1-105 received): it is the candidate, R1 and R3 follow.
fn dead_primary_plan(kind: FailoverKind) -> FailoverPlan {
    let input = Sim::dead_primary().gtid(R2, "0-1-103", "0-1-105").input();
    let th = Thresholds::default();
    let analysis = analyze(&input, &th);
    assert_eq!(analysis.code, crate::AnalysisCode::DeadPrimary, "{analysis}");
    let candidate = choose_candidate(&input, &a(P), &th).expect("a candidate");
    plan(&input, &analysis, &candidate, kind)
}

#[test]
fn failover_fences_best_effort_then_catches_up_promotes_repoints_and_bumps_the_epoch() {
    for kind in [FailoverKind::Automatic, FailoverKind::Manual] {
        let p = dead_primary_plan(kind);
        assert_eq!(
            p.steps,
            vec![
                fence(P, true),
                Step::WaitCandidateCatchUp { candidate: a(R2), target_gtid: "0-1-105".into(), catch_up_with: None },
                Step::WaitLeaseExpiry { addr: a(P) },
                Step::PromoteCandidate { candidate: a(R2) },
                repoint(R1, R2),
                repoint(R3, R2),
                Step::WriteHeartbeat { primary: a(R2), epoch: 8 },
                Step::Complete,
            ],
            "{kind}"
        );
        assert_eq!(p.epoch(), Some(8));
    }
}

#[test]
fn manual_failover_of_a_reachable_primary_requires_the_fence() {
    // The operator fails over a primary the coordinators can reach (replicas stuck): a primary we
    // can reach must be fenced before another is promoted.
    let input = Sim::standard().io(R1, Connecting).io(R2, Connecting).input();
    let th = Thresholds::default();
    let analysis = analyze(&input, &th);
    let candidate = choose_candidate(&input, &a(P), &th).expect("a candidate");
    let p = plan(&input, &analysis, &candidate, FailoverKind::Manual);
    assert_eq!(p.steps[0], fence(P, false), "{analysis}");
}

#[test]
fn unreachable_primary_fence_is_best_effort() {
    let input = Sim::standard().seen_all(P, Seen::Down).input();
    let th = Thresholds::default();
    let analysis = analyze(&input, &th);
    assert_eq!(analysis.code, crate::AnalysisCode::UnreachablePrimary);
    let candidate = choose_candidate(&input, &a(P), &th).expect("a candidate");
    assert_eq!(plan(&input, &analysis, &candidate, FailoverKind::Manual).steps[0], fence(P, true));
}

#[test]
fn switchover_fences_first_waits_for_everything_and_repoints_the_old_primary() {
    let input = Sim::standard().replica(R3, P).rule(R3, PromotionRule::Prefer).input();
    let th = Thresholds::default();
    let analysis = analyze(&input, &th);
    let candidate = choose_candidate(&input, &a(P), &th).expect("a candidate");
    let p = plan(&input, &analysis, &candidate, FailoverKind::Switchover);
    assert_eq!(
        p.steps,
        vec![
            fence(P, false),
            Step::WaitCandidateCatchUp { candidate: a(R3), target_gtid: "0-1-100".into(), catch_up_with: Some(a(P)) },
            Step::PromoteCandidate { candidate: a(R3) },
            repoint(R1, R3),
            repoint(R2, R3),
            Step::RepointOldPrimary { addr: a(P), to: a(R3) },
            Step::WriteHeartbeat { primary: a(R3), epoch: 8 },
            Step::Complete,
        ]
    );
}

#[test]
fn a_failover_can_be_aborted_only_before_promotion() {
    let p = dead_primary_plan(FailoverKind::Automatic);
    assert_eq!(p.point_of_no_return(), Some(3));
    let reversible: Vec<bool> = p.steps.iter().map(|s| !s.is_irreversible()).collect();
    assert_eq!(reversible, [true, true, true, false, false, false, false, false]);
    assert!(p.can_abort(0));
    assert!(p.can_abort(3), "fenced, caught up, lease waited out: the old primary can be restored");
    assert!(!p.can_abort(4), "promotion started: finish it");
}

#[test]
fn steps_are_data_that_round_trip_through_json() {
    let p = dead_primary_plan(FailoverKind::Automatic);
    let json: Vec<String> = p.steps.iter().map(|s| serde_json::to_string(s).expect("serializes")).collect();
    assert_eq!(json[0], r#"{"step":"fence_old_primary","addr":"127.0.0.1:3306","best_effort":true}"#);
    assert_eq!(json[1], r#"{"step":"wait_candidate_catch_up","candidate":"127.0.0.1:3308","target_gtid":"0-1-105"}"#);
    assert_eq!(json[2], r#"{"step":"wait_lease_expiry","addr":"127.0.0.1:3306"}"#);
    assert_eq!(json[7], r#"{"step":"complete"}"#);
    for (s, j) in p.steps.iter().zip(&json) {
        assert_eq!(&serde_json::from_str::<Step>(j).expect("parses"), s);
    }
    let whole = serde_json::to_string(&p).expect("serializes");
    assert_eq!(serde_json::from_str::<FailoverPlan>(&whole).expect("parses"), p);
}

#[test]
fn plans_print_step_by_step() {
    let p = dead_primary_plan(FailoverKind::Automatic);
    assert_eq!(
        p.to_string(),
        "1. fence old primary 127.0.0.1:3306 (best effort); 2. wait for 127.0.0.1:3308 to apply 0-1-105; \
         3. wait for the lease of 127.0.0.1:3306's agent to run out; 4. promote 127.0.0.1:3308; \
         5. repoint 127.0.0.1:3307 to 127.0.0.1:3308; 6. repoint 127.0.0.1:3309 to 127.0.0.1:3308; \
         7. write heartbeat on 127.0.0.1:3308 with epoch 8; 8. complete"
    );
    let s = Step::WaitCandidateCatchUp { candidate: a(R1), target_gtid: "0-1-7".into(), catch_up_with: Some(a(P)) };
    assert_eq!(s.to_string(), "wait for 127.0.0.1:3307 to apply 0-1-7 and everything 127.0.0.1:3306 executed");
}

#[test]
fn thresholds_default_to_the_documented_values_and_fill_missing_config_keys() {
    let t = Thresholds::default();
    assert_eq!(
        (t.view_max_age_ms, t.replica_progress_stale_ms, t.max_lag_for_candidate_s, t.prefer_same_datacenter),
        (3000, 1500, None, true)
    );
    let partial: Thresholds = serde_json::from_str(r#"{"view_max_age_ms": 1000}"#).expect("parses");
    assert_eq!(partial, Thresholds { view_max_age_ms: 1000, ..Thresholds::default() });
}

#[test]
fn promotion_rules_parse_as_operators_type_them() {
    for (s, r) in [
        ("prefer", PromotionRule::Prefer),
        ("neutral", PromotionRule::Neutral),
        ("prefer_not", PromotionRule::PreferNot),
        ("must-not", PromotionRule::MustNot),
    ] {
        assert_eq!(s.parse::<PromotionRule>(), Ok(r));
    }
    assert!("never".parse::<PromotionRule>().is_err());
    assert_eq!(serde_json::to_string(&PromotionRule::PreferNot).expect("serializes"), r#""prefer_not""#);
}

#[test]
fn dead_intermediate_repair_repoints_its_replicas_to_its_source_and_nothing_else() {
    let input = Sim::standard()
        .replica(R3, R1)
        .replica(3310, R1)
        .seen_all(R1, Seen::Down)
        .io(R3, Connecting)
        .progress(R3, Some(2100))
        .io(3310, Connecting)
        .progress(3310, None)
        .input();
    let analysis = analyze(&input, &Thresholds::default());
    assert_eq!(analysis.code, crate::AnalysisCode::DeadIntermediatePrimary, "{analysis}");
    let p = crate::plan_intermediate_repair(&input, &a(R1), &a(P));
    assert_eq!(p.steps, vec![repoint(R3, P), repoint(3310, P), Step::Complete]);
    assert_eq!(p.epoch(), None, "a repair consumes no epoch");
    assert!(!p.can_abort(1), "repointing is irreversible: a new leader finishes it");
}

//! The failure cases of seeds 004 (holistic diagnosis) and 002 (progress, not process
//! liveness), one row each.

use crate::testkit::{a, Seen, Sim, P, R1, R2, R3};
use crate::{analyze, Analysis, AnalysisCode, Thresholds};
use primus_mysql::status::IoThreadState::{Connecting, No as IoNo};
use AnalysisCode::*;

struct Case {
    name: &'static str,
    sim: Sim,
    code: AnalysisCode,
    actionable: bool,
    subject: Option<u16>,
    /// Substrings the evidence must contain.
    evidence: &'static [&'static str],
}

fn case(name: &'static str, sim: Sim, code: AnalysisCode, actionable: bool, evidence: &'static [&'static str]) -> Case {
    Case { name, sim, code, actionable, subject: Some(P), evidence }
}

/// Both replicas' IO threads connecting and silent for 2.1 s.
fn replicas_lost(sim: Sim) -> Sim {
    sim.io(R1, Connecting).progress(R1, Some(2100)).io(R2, Connecting).progress(R2, Some(2100))
}

fn cases() -> Vec<Case> {
    let std = Sim::standard;
    vec![
        case("healthy_cluster_is_no_problem", std(), NoProblem, false, &["primary 127.0.0.1:3306 reachable from 3/3"]),
        // Seed 004 "dead master": we cannot reach it, we reach the replicas, they cannot either.
        case(
            "dead_primary_with_all_replicas_connecting_is_actionable",
            replicas_lost(std().seen_all(P, Seen::Down)),
            DeadPrimary,
            true,
            &[
                "primary 127.0.0.1:3306 unreachable from 3/3 coordinators (1, 2, 3: unreachable: connection refused)",
                "replica 127.0.0.1:3307: IO connecting, no progress for 2100 ms (IO error 2003",
                "2/2 direct replicas lost it",
            ],
        ),
        case(
            "dead_primary_needs_only_a_majority_of_voters",
            replicas_lost(std().seen(P, 1, Seen::Timeout).seen(P, 3, Seen::Down)),
            DeadPrimary,
            true,
            &[
                "unreachable from 2/3 coordinators (1: timeout after 800 ms during connect, 3: unreachable: connection refused)",
                "reached by coordinator 2",
            ],
        ),
        // Seed 002: a running process (or an IO thread saying Yes on a dead socket) is not
        // progress. A SIGSTOPped primary: probes time out, replicas stop seeing heartbeats.
        case(
            "hung_primary_with_io_yes_but_no_heartbeat_progress_is_dead",
            std().seen_all(P, Seen::Timeout).progress(R1, Some(2100)).progress(R2, Some(1600)),
            DeadPrimary,
            true,
            &["replica 127.0.0.1:3307: IO running, no progress for 2100 ms", "no progress for 1600 ms"],
        ),
        case(
            "replica_never_seen_progressing_has_lost_the_primary",
            std().seen_all(P, Seen::Timeout).progress(R1, None).progress(R2, None),
            DeadPrimary,
            true,
            &["replica 127.0.0.1:3308: IO running, no progress seen"],
        ),
        // Seed 004 "unreachable master": we cannot reach it but the replicas are happy.
        case(
            "unreachable_primary_with_happy_replicas_does_not_fail_over",
            std().seen_all(P, Seen::Down),
            UnreachablePrimary,
            false,
            &["2 of 2 direct replicas still replicate from it", "progress 100 ms ago"],
        ),
        case(
            "one_replica_still_replicating_vetoes_the_failover",
            std().seen_all(P, Seen::Down).io(R1, Connecting).progress(R1, Some(2100)),
            UnreachablePrimary,
            false,
            &["1 of 2 direct replicas still replicate"],
        ),
        case(
            "unreachable_from_one_coordinator_only_is_no_action",
            std().seen(P, 2, Seen::Down),
            UnreachablePrimaryFromSomeCoordinators,
            false,
            &["unreachable from 1/3 coordinators (2: unreachable: connection refused), a minority"],
        ),
        case(
            "minority_down_with_replicas_lost_is_not_a_dead_primary",
            replicas_lost(std().seen(P, 1, Seen::Down)),
            AllReplicasNotReplicating,
            false,
            &["also UnreachablePrimaryFromSomeCoordinators"],
        ),
        case(
            "minority_of_five_voters_reporting_down_is_no_action",
            Sim::new(&[1, 2, 3, 4, 5]).primary(P).replica(R1, P).seen(P, 1, Seen::Down).seen(P, 4, Seen::Timeout),
            UnreachablePrimaryFromSomeCoordinators,
            false,
            &["unreachable from 2/5 coordinators"],
        ),
        case(
            "voters_without_a_fresh_view_do_not_make_a_majority",
            replicas_lost(
                Sim::new(&[1, 2, 3, 4, 5])
                    .primary(P)
                    .replica(R1, P)
                    .replica(R2, P)
                    .seen(P, 1, Seen::Down)
                    .seen(P, 2, Seen::Down)
                    .no_view(P, 3)
                    .no_view(P, 4)
                    .no_view(P, 5),
            ),
            NotEnoughFreshViews,
            false,
            &["only 2/5 voters have a fresh view of primary 127.0.0.1:3306 (need 3)", "3: no view"],
        ),
        case(
            "views_from_non_voters_do_not_count",
            replicas_lost(std().seen(P, 1, Seen::Down).seen(P, 9, Seen::Down)),
            AllReplicasNotReplicating,
            false,
            &["also UnreachablePrimaryFromSomeCoordinators"],
        ),
        case(
            "a_stale_view_does_not_count",
            std().seen(P, 1, Seen::Down).seen(P, 2, Seen::Down).age(P, 2, 5000),
            UnreachablePrimaryFromSomeCoordinators,
            false,
            &["unreachable from 1/3 coordinators"],
        ),
        case(
            "stale_views_leave_no_verdict_even_with_replicas_lost",
            replicas_lost(std().seen(P, 1, Seen::Down).seen(P, 2, Seen::Down).age(P, 2, 5000).age(P, 3, 4000)),
            NotEnoughFreshViews,
            false,
            &["only 1/3 voters", "2: view 5000 ms old (max 3000)", "3: view 4000 ms old"],
        ),
        // Seed 004 "dead master and some slaves".
        case(
            "dead_primary_and_one_dead_replica",
            std().seen_all(P, Seen::Down).seen_all(R2, Seen::Down).io(R1, Connecting).progress(R1, Some(2100)),
            DeadPrimaryAndSomeReplicas,
            true,
            &["replica 127.0.0.1:3308: unreachable from 3/3 coordinators", "1/2 direct replicas lost it, 1 cannot be read"],
        ),
        case(
            "replica_answering_without_data_counts_as_unreadable",
            std().seen_all(P, Seen::Down).seen_all(R2, Seen::Denied).io(R1, Connecting).progress(R1, Some(2100)),
            DeadPrimaryAndSomeReplicas,
            true,
            &["replica 127.0.0.1:3308: answered without data (1, 2, 3: access denied (error 1045))"],
        ),
        // Seed 004 "dead master and slaves": the coordinators are probably the partitioned ones.
        case(
            "all_unreachable_means_nothing_to_promote",
            std().seen_all(P, Seen::Down).seen_all(R1, Seen::Down).seen_all(R2, Seen::Timeout),
            DeadPrimaryAndReplicas,
            false,
            &["or the coordinators are partitioned"],
        ),
        case(
            "primary_without_replicas_unreachable_is_not_actionable",
            Sim::new(&[1, 2, 3]).primary(P).seen_all(P, Seen::Down),
            DeadPrimaryAndReplicas,
            false,
            &["it has no direct replicas"],
        ),
        case(
            "replicas_without_a_channel_from_the_primary_do_not_confirm_its_death",
            std().seen_all(P, Seen::Down).obs(R1, |o| o.replication.clear()).obs(R2, |o| o.replication[0].source_port = 3399),
            DeadPrimaryAndReplicas,
            false,
            &["replica 127.0.0.1:3307: no replication channel from 127.0.0.1:3306", "nothing confirms its death"],
        ),
        // Seed 004 "all first tier slaves not replicating"; seed 002 "the replica has stopped".
        case(
            "all_replicas_sql_threads_stopped_is_not_a_failover",
            std().sql_stopped(R1).sql_stopped(R2),
            AllReplicasNotReplicating,
            false,
            &["none of its 2 readable direct replicas replicates", "SQL stopped", "SQL error 1062"],
        ),
        case(
            "all_replicas_io_stopped_with_primary_fine",
            std().io(R1, IoNo).io(R2, Connecting),
            AllReplicasNotReplicating,
            false,
            &["IO stopped", "IO connecting"],
        ),
        // Seed 004: "a first tier slave is failing to connect to the master" — alone.
        case(
            "replica_io_broken_alone_is_not_a_dead_primary",
            std().io(R1, Connecting).progress(R1, Some(9000)),
            NoProblem,
            false,
            &["replica 127.0.0.1:3307: IO connecting, no progress for 9000 ms"],
        ),
        // Seed 002: a big transaction keeps the applier busy; the channel is fine.
        case(
            "replica_busy_with_a_long_transaction_is_no_problem",
            std().with_row(R1, |r| {
                r.seconds_behind = Some(600);
                r.sql_state = "Update_rows_log_event::find_row(-1)".into();
            }),
            NoProblem,
            false,
            &[],
        ),
        // "Too many connections": it answered, so it is alive; the replicas may not reconnect
        // either, yet this is no failover.
        case(
            "too_many_connections_is_alive_not_dead",
            replicas_lost(std().seen_all(P, Seen::Refused)),
            UnreachablePrimary,
            false,
            &["cannot be observed by 3/3 coordinators but is alive", "(1, 2, 3: rejected (error 1040): Too many connections)"],
        ),
        case(
            "locked_semi_sync_primary",
            std().obs(P, |o| {
                o.semi_sync.source_enabled = Some(true);
                o.semi_sync.source_active = Some(true);
                o.semi_sync.source_clients = Some(0);
            }),
            LockedSemiSyncPrimary,
            false,
            &["0 semi-sync replicas connected"],
        ),
        case(
            "semi_sync_with_a_client_is_not_locked",
            std().obs(P, |o| {
                o.semi_sync.source_enabled = Some(true);
                o.semi_sync.source_active = Some(true);
                o.semi_sync.source_clients = Some(1);
            }),
            NoProblem,
            false,
            &[],
        ),
        case(
            "locked_semi_sync_outranks_replicas_not_replicating",
            std().sql_stopped(R1).sql_stopped(R2).obs(P, |o| {
                o.semi_sync.source_enabled = Some(true);
                o.semi_sync.source_active = Some(true);
                o.semi_sync.source_clients = Some(0);
            }),
            LockedSemiSyncPrimary,
            false,
            &["also AllReplicasNotReplicating on 127.0.0.1:3306"],
        ),
        case(
            "two_writable_instances_is_a_split",
            std().writable(R1),
            PrimarySplit,
            true,
            &[
                "2 writable instances: 127.0.0.1:3306 (primary), 127.0.0.1:3307 (replica of 127.0.0.1:3306)",
                "every writable instance but 127.0.0.1:3306 must be fenced",
            ],
        ),
        case(
            "old_primary_back_and_writable_is_a_split",
            std().detached(R3).writable(R3),
            PrimarySplit,
            true,
            &["127.0.0.1:3309 (detached)"],
        ),
        case(
            "split_outranks_a_dead_primary",
            replicas_lost(std().seen_all(P, Seen::Down)).writable(R1).writable(R2),
            PrimarySplit,
            true,
            &["also DeadPrimary on 127.0.0.1:3306"],
        ),
        case(
            "writable_replica_in_maintenance_is_a_split_left_alone",
            std().writable(R1).maintenance(R1),
            PrimarySplit,
            false,
            &["127.0.0.1:3307 is in maintenance: left writable"],
        ),
        case(
            "maintenance_on_a_dead_primary_is_not_actionable",
            replicas_lost(std().seen_all(P, Seen::Down)).maintenance(P),
            DeadPrimary,
            false,
            &["primary 127.0.0.1:3306 is in maintenance: no automatic action"],
        ),
        Case {
            name: "no_primary_in_topology",
            sim: Sim::new(&[1, 2, 3]).detached(R1),
            code: NoPrimary,
            actionable: false,
            subject: None,
            evidence: &["the topology has no primary"],
        },
        // Seed 004 "intermediate masters": C's replicas give the holistic view on C.
        Case {
            name: "dead_intermediate_primary_with_its_replicas_lost",
            sim: Sim::standard()
                .replica(R3, R1)
                .replica(3310, R1)
                .seen_all(R1, Seen::Down)
                .io(R3, Connecting)
                .progress(R3, Some(2100))
                .io(3310, Connecting)
                .progress(3310, None),
            code: DeadIntermediatePrimary,
            actionable: true,
            subject: Some(R1),
            evidence: &[
                "intermediate 127.0.0.1:3307 (replica of 127.0.0.1:3306) unreachable from 3/3 coordinators",
                "2/2 replicas lost it: repoint them to 127.0.0.1:3306",
            ],
        },
        Case {
            name: "intermediate_with_a_replicating_replica_is_not_dead",
            sim: Sim::standard().replica(R3, R1).replica(3310, R1).seen_all(R1, Seen::Down).io(R3, Connecting),
            code: NoProblem,
            actionable: false,
            subject: Some(P),
            evidence: &["replica 127.0.0.1:3307: unreachable from 3/3"],
        },
        Case {
            name: "primary_whose_agent_lease_ran_out_is_failed_over_although_reachable",
            sim: Sim::standard().lease_expired(),
            code: PrimaryLeaseExpired,
            actionable: true,
            subject: Some(P),
            evidence: &["lease ran out"],
        },
        Case {
            name: "lease_run_out_beats_unreachable_primary_its_agent_fenced_it",
            sim: Sim::standard().seen_all(P, Seen::Down).lease_expired(),
            code: PrimaryLeaseExpired,
            actionable: true,
            subject: Some(P),
            evidence: &["lease ran out", "also UnreachablePrimary"],
        },
        Case {
            name: "dead_primary_stays_dead_primary_when_its_lease_ran_out_too",
            sim: replicas_lost(Sim::standard().seen_all(P, Seen::Down)).lease_expired(),
            code: DeadPrimary,
            actionable: true,
            subject: Some(P),
            evidence: &["unreachable from 3/3"],
        },
        Case {
            name: "lease_run_out_on_a_primary_in_maintenance_is_not_actionable",
            sim: Sim::standard().lease_expired().maintenance(P),
            code: PrimaryLeaseExpired,
            actionable: false,
            subject: Some(P),
            evidence: &["in maintenance"],
        },
        Case {
            name: "read_only_primary_without_an_agent_is_made_writable",
            sim: Sim::standard().obs(P, |o| o.read_only = true),
            code: ReadOnlyPrimary,
            actionable: true,
            subject: Some(P),
            evidence: &["read_only is ON: no server of the cluster takes writes", "no fencing agent"],
        },
        Case {
            name: "read_only_primary_whose_agent_holds_a_lease_again_is_made_writable",
            sim: Sim::standard().obs(P, |o| o.read_only = true).agent(true),
            code: ReadOnlyPrimary,
            actionable: true,
            subject: Some(P),
            evidence: &["its agent holds a lease again"],
        },
        Case {
            name: "read_only_primary_waits_for_its_agent_to_hold_a_lease",
            sim: Sim::standard().obs(P, |o| o.read_only = true).agent(false),
            code: ReadOnlyPrimary,
            actionable: false,
            subject: Some(P),
            evidence: &["holds no lease from the leader"],
        },
        Case {
            name: "read_only_primary_in_maintenance_is_left_alone",
            sim: Sim::standard().obs(P, |o| o.read_only = true).maintenance(P),
            code: ReadOnlyPrimary,
            actionable: false,
            subject: Some(P),
            evidence: &["in maintenance: left as it is"],
        },
        Case {
            name: "read_only_primary_that_cannot_be_made_writable_is_failed_over",
            sim: Sim::standard().obs(P, |o| o.read_only = true).unwritable(),
            code: UnwritablePrimary,
            actionable: true,
            subject: Some(P),
            evidence: &["could not be made writable again", "failing over"],
        },
        Case {
            name: "lease_run_out_beats_a_read_only_primary_its_agent_fenced_it",
            sim: Sim::standard().obs(P, |o| o.read_only = true).agent(false).lease_expired(),
            code: PrimaryLeaseExpired,
            actionable: true,
            subject: Some(P),
            evidence: &["lease ran out", "also ReadOnlyPrimary"],
        },
        Case {
            name: "dead_primary_that_no_replica_can_replace_without_loss_says_so",
            sim: replicas_lost(Sim::standard().seen_all(P, Seen::Down)).no_loss_refused(),
            code: DeadPrimaryWouldLoseData,
            actionable: true,
            subject: Some(P),
            evidence: &["no-loss mode: promoting 127.0.0.1:3308 could lose", "2/2 direct replicas lost it"],
        },
        Case {
            name: "dead_intermediate_in_maintenance_is_not_actionable",
            sim: Sim::standard().replica(R3, R1).seen_all(R1, Seen::Timeout).io(R3, Connecting).maintenance(R1),
            code: DeadIntermediatePrimary,
            actionable: false,
            subject: Some(R1),
            evidence: &["intermediate 127.0.0.1:3307 is in maintenance"],
        },
    ]
}

#[test]
fn analysis_table() {
    let th = Thresholds::default();
    let mut failures = Vec::new();
    let cases = cases();
    let n = cases.len();
    for c in cases {
        let got: Analysis = analyze(&c.sim.input(), &th);
        let evidence = got.evidence.join("\n");
        let mut wrong = Vec::new();
        if got.code != c.code {
            wrong.push(format!("code {} (want {})", got.code, c.code));
        }
        if got.actionable != c.actionable {
            wrong.push(format!("actionable {} (want {})", got.actionable, c.actionable));
        }
        if got.subject != c.subject.map(a) {
            wrong.push(format!("subject {:?} (want {:?})", got.subject, c.subject.map(a)));
        }
        for e in c.evidence {
            if !evidence.contains(e) {
                wrong.push(format!("evidence lacks {e:?}"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n    got: {got}", c.name, wrong.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{} of {n} scenarios wrong:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn only_codes_with_an_automatic_action_are_ever_actionable() {
    for c in cases() {
        let got = analyze(&c.sim.input(), &Thresholds::default());
        if got.actionable {
            assert!(
                got.code.is_dead_primary()
                    || matches!(
                        got.code,
                        DeadIntermediatePrimary
                            | PrimaryLeaseExpired
                            | PrimarySplit
                            | ReadOnlyPrimary
                            | UnwritablePrimary
                    ),
                "{}: {got}",
                c.name
            );
        }
    }
}

#[test]
fn analysis_is_one_printable_line_and_round_trips_through_json() {
    let got = analyze(&replicas_lost(Sim::standard().seen_all(P, Seen::Down)).input(), &Thresholds::default());
    let line = got.to_string();
    assert!(
        line.starts_with("DeadPrimary on 127.0.0.1:3306 (actionable): primary 127.0.0.1:3306 unreachable"),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
    let json = serde_json::to_string(&got).expect("serializes");
    assert!(json.contains(r#""code":"DeadPrimary""#), "{json}");
    assert_eq!(serde_json::from_str::<Analysis>(&json).expect("parses"), got);
}

#[test]
fn codes_print_and_parse_as_their_camel_case_names() {
    for code in AnalysisCode::ALL {
        assert_eq!(code.to_string().parse::<AnalysisCode>(), Ok(code));
        assert_eq!(serde_json::to_string(&code).expect("serializes"), format!("\"{code}\""));
    }
    assert_eq!(
        "UnreachablePrimaryFromSomeCoordinators".parse::<AnalysisCode>(),
        Ok(UnreachablePrimaryFromSomeCoordinators)
    );
    assert!("DeadMaster".parse::<AnalysisCode>().is_err());
}

#[test]
fn analysis_is_a_function_of_its_input() {
    let input = replicas_lost(Sim::standard().seen_all(P, Seen::Down)).input();
    let json = serde_json::to_string(&input).expect("serializes");
    let replayed: crate::ClusterInput = serde_json::from_str(&json).expect("parses");
    assert_eq!(analyze(&replayed, &Thresholds::default()), analyze(&input, &Thresholds::default()));
}

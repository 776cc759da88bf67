//! Candidate choice, one row per rule; then `failover --to` validation.

use crate::testkit::{a, maria, mysql, Seen, Sim, NOW, P, R1, R2, R3};
use crate::{choose_candidate, choose_candidate_explicit, Candidate, NoCandidate, PromotionRule, Thresholds};
use primus_mysql::{Flavor, HeartbeatRow, Version};

enum Want {
    Chosen {
        addr: u16,
        target: &'static str,
        followers: &'static [u16],
        cannot_follow: &'static [u16],
        reasons: &'static [&'static str],
    },
    Refused(&'static [(u16, &'static str)]),
}

struct Case {
    name: &'static str,
    sim: Sim,
    th: Thresholds,
    want: Want,
}

fn chosen(
    name: &'static str,
    sim: Sim,
    addr: u16,
    followers: &'static [u16],
    cannot_follow: &'static [u16],
    reasons: &'static [&'static str],
) -> Case {
    Case {
        name,
        sim,
        th: Thresholds::default(),
        want: Want::Chosen { addr, target: "0-1-100", followers, cannot_follow, reasons },
    }
}

fn th(f: impl FnOnce(&mut Thresholds)) -> Thresholds {
    let mut t = Thresholds::default();
    f(&mut t);
    t
}

fn hb(ts_ms: u64) -> HeartbeatRow {
    HeartbeatRow { cluster: "shop".into(), epoch: 7, ts_ms, coordinator: 1 }
}

const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
const U9: &str = "8a94f357-aab4-11df-86ab-c80aa9429563";

/// The dead primary's replicas as MySQL 8.0 servers: `(port, gtid_executed, Retrieved_Gtid_Set)`.
fn mysql_cluster(replicas: &[(u16, &str, &str)]) -> Sim {
    let mut sim = Sim::dead_primary();
    for &(port, executed, retrieved) in replicas {
        let (executed, retrieved) = (executed.replace("U1", U1).replace("U9", U9), retrieved.replace("U1", U1));
        sim = sim
            .obs(port, |o| {
                o.server.flavor = Flavor::MySql;
                o.server.version = Version::new(8, 0, 36);
                o.server_uuid = Some(format!("00000000-0000-0000-0000-00000000{port}"));
                o.gtid = mysql(&executed);
            })
            .with_row(port, |r| {
                r.source_uuid = Some(U1.into());
                r.gtid_io_pos = None;
                r.using_gtid = None;
                r.auto_position = Some(true);
                r.retrieved_gtid_set = Some(retrieved.parse().unwrap_or_else(|e| panic!("{e}")));
            });
    }
    sim
}

fn cases() -> Vec<Case> {
    let dead = Sim::dead_primary;
    vec![
        Case {
            name: "most_advanced_wins",
            sim: dead().gtid(R1, "0-1-100", "0-1-100").gtid(R2, "0-1-103", "0-1-105").gtid(R3, "0-1-101", "0-1-101"),
            th: Thresholds::default(),
            want: Want::Chosen {
                addr: R2,
                target: "0-1-105",
                followers: &[R1, R3],
                cannot_follow: &[],
                reasons: &["received 0-1-105, which holds every other readable replica's executed transactions"],
            },
        },
        Case {
            name: "received_transactions_count_not_only_applied_ones",
            sim: dead().gtid(R1, "0-1-104", "0-1-104").gtid(R2, "0-1-100", "0-1-105"),
            th: Thresholds::default(),
            want: Want::Chosen { addr: R2, target: "0-1-105", followers: &[R1, R3], cannot_follow: &[], reasons: &[] },
        },
        Case {
            name: "what_only_the_primary_wrote_is_not_errant",
            sim: dead().gtid(R2, "0-1-105", "0-1-105"),
            th: Thresholds::default(),
            want: Want::Chosen { addr: R2, target: "0-1-105", followers: &[R1, R3], cannot_follow: &[], reasons: &[] },
        },
        chosen(
            "errant_replica_is_excluded_and_not_repointed",
            // R2 wrote 0-3-101 itself; the primary's seq 100 is the last it received.
            dead().gtid_state(R2, maria("0-3-101", "0-1-100", "0-1-100,0-3-101"), "0-1-100"),
            R1,
            &[R3],
            &[R2],
            &["excluded 127.0.0.1:3308: holds errant transactions 0-3-101"],
        ),
        chosen(
            "must_not_is_excluded",
            dead().rule(R1, PromotionRule::MustNot),
            R2,
            &[R1, R3],
            &[],
            &["excluded 127.0.0.1:3307: promotion rule must_not"],
        ),
        chosen(
            "prefer_beats_neutral_at_equal_gtid",
            dead().rule(R3, PromotionRule::Prefer),
            R3,
            &[R1, R2],
            &[],
            &["promotion rule prefer"],
        ),
        Case {
            name: "more_data_beats_prefer",
            sim: dead().rule(R3, PromotionRule::Prefer).gtid(R1, "0-1-101", "0-1-101"),
            th: Thresholds::default(),
            want: Want::Chosen {
                addr: R1,
                target: "0-1-101",
                followers: &[R2, R3],
                cannot_follow: &[],
                reasons: &["promotion rule neutral"],
            },
        },
        chosen(
            "semi_sync_replica_preferred_at_equal_data",
            dead().obs(R3, |o| o.semi_sync.replica_active = Some(true)).rule(R1, PromotionRule::Prefer),
            R3,
            &[R1, R2],
            &[],
            &["semi-sync replica"],
        ),
        chosen("prefer_not_loses_to_neutral", dead().rule(R1, PromotionRule::PreferNot), R2, &[R1, R3], &[], &[]),
        chosen(
            "same_datacenter_as_the_old_primary_preferred",
            dead().dc(P, "eu").dc(R1, "us").dc(R2, "eu").dc(R3, "us"),
            R2,
            &[R1, R3],
            &[],
            &["same datacenter as 127.0.0.1:3306 (eu)"],
        ),
        Case {
            name: "datacenter_ignored_when_not_preferred",
            sim: dead().dc(P, "eu").dc(R1, "us").dc(R2, "eu").dc(R3, "us"),
            th: th(|t| t.prefer_same_datacenter = false),
            want: Want::Chosen { addr: R1, target: "0-1-100", followers: &[R2, R3], cannot_follow: &[], reasons: &[] },
        },
        chosen(
            "lowest_lag_wins_at_equal_gtid",
            dead()
                .with_row(R1, |r| r.seconds_behind = Some(30))
                .with_row(R2, |r| r.seconds_behind = Some(2))
                .with_row(R3, |r| r.seconds_behind = Some(9)),
            R2,
            &[R1, R3],
            &[],
            &["lag 2 s"],
        ),
        chosen(
            "heartbeat_lag_when_seconds_behind_is_null",
            dead()
                .obs(R1, |o| o.heartbeat = vec![hb(NOW - 5000)])
                .obs(R2, |o| o.heartbeat = vec![hb(NOW - 1000)])
                .obs(R3, |o| o.heartbeat = vec![hb(NOW - 3000)]),
            R2,
            &[R1, R3],
            &[],
            &["lag 0 s"],
        ),
        chosen(
            "newer_version_excluded_when_older_replicas_would_follow",
            dead().version(R1, 10, 11, 8),
            R2,
            &[R1, R3],
            &[],
            &["excluded 127.0.0.1:3307: version 10.11.8 is newer than 127.0.0.1:3308 (10.11.6) and 127.0.0.1:3309 (10.11.6), which would replicate from it"],
        ),
        chosen(
            "no_log_bin_excluded",
            dead().obs(R1, |o| o.log_bin = false),
            R2,
            &[R1, R3],
            &[],
            &["excluded 127.0.0.1:3307: log_bin is off"],
        ),
        chosen(
            "no_log_slave_updates_excluded",
            dead().obs(R1, |o| o.log_slave_updates = false),
            R2,
            &[R1, R3],
            &[],
            &["excluded 127.0.0.1:3307: log_slave_updates is off"],
        ),
        chosen("maintenance_excluded", dead().maintenance(R1), R2, &[R1, R3], &[], &["excluded 127.0.0.1:3307: in maintenance"]),
        chosen(
            "unreachable_replica_is_no_candidate_and_cannot_follow",
            dead().seen_all(R1, Seen::Down),
            R2,
            &[R3],
            &[R1],
            &["excluded 127.0.0.1:3307: not reachable: unreachable from 3/3 coordinators"],
        ),
        chosen(
            "delayed_replica_excluded",
            dead().with_row(R1, |r| r.sql_delay = Some(3600)),
            R2,
            &[R1, R3],
            &[],
            &["delayed replica (SQL_Delay 3600 s)"],
        ),
        chosen(
            "replica_stopped_on_an_sql_error_excluded",
            dead().sql_stopped(R1),
            R2,
            &[R1, R3],
            &[],
            &["excluded 127.0.0.1:3307: SQL thread stopped on error 1062"],
        ),
        Case {
            name: "lag_over_the_limit_excluded",
            sim: dead().with_row(R1, |r| r.seconds_behind = Some(60)).with_row(R2, |r| r.seconds_behind = Some(0)),
            th: th(|t| t.max_lag_for_candidate_s = Some(10)),
            want: Want::Chosen {
                addr: R2,
                target: "0-1-100",
                followers: &[R1, R3],
                cannot_follow: &[],
                reasons: &["excluded 127.0.0.1:3307: lag 60 s exceeds max_lag_for_candidate_s 10"],
            },
        },
        Case {
            name: "unknown_lag_excluded_when_a_limit_is_set",
            sim: dead().seen_all(R2, Seen::Down).seen_all(R3, Seen::Down),
            th: th(|t| t.max_lag_for_candidate_s = Some(10)),
            want: Want::Refused(&[
                (R1, "lag unknown (max_lag_for_candidate_s is 10)"),
                (R2, "not reachable"),
                (R3, "not reachable"),
            ]),
        },
        Case {
            name: "replicas_ahead_of_every_eligible_one_are_named",
            sim: dead().rule(R1, PromotionRule::MustNot).gtid(R1, "0-1-105", "0-1-105"),
            th: Thresholds::default(),
            want: Want::Chosen {
                addr: R2,
                target: "0-1-100",
                followers: &[R3],
                cannot_follow: &[R1],
                reasons: &["no eligible replica holds every other replica's executed transactions"],
            },
        },
        chosen(
            "replicas_of_an_intermediate_are_not_candidates",
            dead().replica(3310, R1).gtid(3310, "0-1-120", "0-1-120"),
            R1,
            &[R2, R3],
            &[],
            &[],
        ),
        Case {
            name: "a_lone_errant_replica_is_caught_against_the_live_primary",
            sim: Sim::new(&[1, 2, 3])
                .primary(P)
                .replica(R1, P)
                .gtid_state(R1, maria("0-2-101", "0-1-100", "0-1-100,0-2-101"), "0-1-100"),
            th: Thresholds::default(),
            want: Want::Refused(&[(R1, "holds errant transactions 0-2-101")]),
        },
        Case {
            name: "a_lone_replica_of_a_dead_primary_cannot_be_checked_for_errant_transactions",
            sim: Sim::new(&[1, 2, 3]).primary(P).replica(R1, P).seen_all(P, Seen::Down),
            th: Thresholds::default(),
            want: Want::Chosen {
                addr: R1,
                target: "0-1-100",
                followers: &[],
                cannot_follow: &[],
                reasons: &["no other readable replica to compare with: errant transactions not checked"],
            },
        },
        Case {
            name: "no_candidate_gives_a_reason_for_each_replica",
            sim: dead().rule(R1, PromotionRule::MustNot).obs(R2, |o| o.log_bin = false).seen_all(R3, Seen::Timeout),
            th: Thresholds::default(),
            want: Want::Refused(&[
                (R1, "promotion rule must_not"),
                (R2, "log_bin is off"),
                (R3, "not reachable: unreachable from 3/3 coordinators (1, 2, 3: timeout after 800 ms during connect)"),
            ]),
        },
        Case {
            name: "primary_without_replicas_has_no_candidate",
            sim: Sim::new(&[1, 2, 3]).primary(P).seen_all(P, Seen::Down),
            th: Thresholds::default(),
            want: Want::Refused(&[(P, "has no direct replicas in the topology")]),
        },
        Case {
            name: "mysql_most_advanced_by_retrieved_set_and_foreign_uuid_is_errant",
            sim: mysql_cluster(&[
                (R1, "U1:1-100", "U1:1-100"),
                (R2, "U1:1-100", "U1:1-105"),
                (R3, "U1:1-100,U9:1-2", "U1:1-100"),
            ]),
            th: Thresholds::default(),
            want: Want::Chosen {
                addr: R2,
                target: "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-105",
                followers: &[R1],
                cannot_follow: &[R3],
                reasons: &["excluded 127.0.0.1:3309: holds errant transactions 8a94f357-aab4-11df-86ab-c80aa9429563:1-2"],
            },
        },
    ]
}

fn check(name: &str, got: Result<Candidate, NoCandidate>, want: &Want) -> Vec<String> {
    let mut wrong = Vec::new();
    match (got, want) {
        (Ok(c), Want::Chosen { addr, target, followers, cannot_follow, reasons }) => {
            if c.addr != a(*addr) {
                wrong.push(format!("chose {} (want {})", c.addr, a(*addr)));
            }
            if c.target_gtid.to_string() != *target {
                wrong.push(format!("target {} (want {target})", c.target_gtid));
            }
            let f: Vec<_> = followers.iter().map(|p| a(*p)).collect();
            if c.followers != f {
                wrong.push(format!("followers {:?} (want {f:?})", c.followers));
            }
            let cf: Vec<_> = c.cannot_follow.iter().map(|(x, _)| x.clone()).collect();
            let want_cf: Vec<_> = cannot_follow.iter().map(|p| a(*p)).collect();
            if cf != want_cf {
                wrong.push(format!("cannot_follow {:?} (want {want_cf:?})", c.cannot_follow));
            }
            let all = c.reasons.join("\n");
            for r in *reasons {
                if !all.contains(r) {
                    wrong.push(format!("reasons lack {r:?}: {all}"));
                }
            }
        }
        (Err(e), Want::Refused(refused)) => {
            let keys: Vec<_> = refused.iter().map(|(p, _)| a(*p)).collect();
            if e.reasons.keys().cloned().collect::<Vec<_>>() != keys {
                wrong.push(format!("refused {:?} (want {keys:?})", e.reasons.keys().collect::<Vec<_>>()));
            }
            for (p, why) in *refused {
                if !e.reasons.get(&a(*p)).is_some_and(|r| r.contains(why)) {
                    wrong.push(format!("reason for {p} lacks {why:?}: {e}"));
                }
            }
        }
        (Ok(c), Want::Refused(_)) => wrong.push(format!("chose {} ({:?}), want no candidate", c.addr, c.reasons)),
        (Err(e), Want::Chosen { .. }) => wrong.push(format!("no candidate: {e}")),
    }
    wrong.into_iter().map(|w| format!("{name}: {w}")).collect()
}

#[test]
fn candidate_table() {
    let cases = cases();
    let n = cases.len();
    let mut failures = Vec::new();
    for c in cases {
        let got = choose_candidate(&c.sim.input(), &a(P), &c.th);
        failures.extend(check(c.name, got, &c.want));
    }
    assert!(failures.is_empty(), "{} problems in {n} scenarios:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn explicit_choice_table() {
    let dead = Sim::dead_primary;
    let rows: Vec<(&str, Sim, u16, Want)> = vec![
        (
            "a_safe_replica_is_accepted_whatever_its_rank",
            dead().rule(R3, PromotionRule::Prefer),
            R1,
            Want::Chosen {
                addr: R1,
                target: "0-1-100",
                followers: &[R2, R3],
                cannot_follow: &[],
                reasons: &["chosen by the operator"],
            },
        ),
        (
            "must_not_is_refused",
            dead().rule(R1, PromotionRule::MustNot),
            R1,
            Want::Refused(&[(R1, "promotion rule must_not")]),
        ),
        (
            "a_replica_of_an_intermediate_is_refused",
            dead().replica(3310, R1),
            3310,
            Want::Refused(&[(3310, "is not a direct replica of 127.0.0.1:3306 (its source is 127.0.0.1:3307)")]),
        ),
        (
            "an_unknown_instance_is_refused",
            dead(),
            3399,
            Want::Refused(&[(3399, "is not an instance of cluster shop")]),
        ),
        ("the_dead_primary_itself_is_refused", dead(), P, Want::Refused(&[(P, "is the primary being replaced")])),
        (
            "a_replica_behind_is_refused_when_another_holds_everything",
            dead().gtid(R2, "0-1-105", "0-1-105"),
            R1,
            Want::Refused(&[(
                R1,
                "127.0.0.1:3308 executed 0-1-101..105, which the candidate lacks; 127.0.0.1:3308 holds them all",
            )]),
        ),
        (
            "a_replica_behind_is_accepted_when_no_eligible_one_holds_everything",
            dead().gtid(R2, "0-1-105", "0-1-105").rule(R2, PromotionRule::MustNot),
            R1,
            Want::Chosen { addr: R1, target: "0-1-100", followers: &[R3], cannot_follow: &[R2], reasons: &[] },
        ),
    ];
    let mut failures = Vec::new();
    for (name, sim, wanted, want) in rows {
        let got = choose_candidate_explicit(&sim.input(), &a(P), &a(wanted), &Thresholds::default());
        failures.extend(check(name, got, &want));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn no_candidate_prints_every_reason_on_one_line() {
    let sim = Sim::dead_primary().rule(R1, PromotionRule::MustNot).maintenance(R2).seen_all(R3, Seen::Down);
    let e = choose_candidate(&sim.input(), &a(P), &Thresholds::default()).expect_err("nobody is eligible");
    let line = e.to_string();
    assert!(
        line.starts_with(
            "no replica can be promoted: 127.0.0.1:3307: promotion rule must_not; 127.0.0.1:3308: in maintenance; 127.0.0.1:3309: not reachable"
        ),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

#[test]
fn equal_candidates_are_ordered_by_address() {
    let sim = Sim::dead_primary().gtid(R2, "0-1-100", "0-1-102").gtid(R3, "0-1-100", "0-1-102");
    let first = choose_candidate(&sim.input(), &a(P), &Thresholds::default()).expect("a candidate");
    assert_eq!(first.addr, a(R2), "equal data, equal rule, equal lag: lowest address");
    for _ in 0..10 {
        assert_eq!(choose_candidate(&sim.input(), &a(P), &Thresholds::default()).expect("a candidate"), first);
    }
}

#[test]
fn a_switchover_candidate_behind_another_replica_is_accepted_and_that_replica_follows_it() {
    // In a failover R1 would be refused (R2 executed more). In a switchover the old
    // primary is fenced and R1 first applies everything it executed, so R2 loses nothing.
    let input = Sim::standard().gtid(R1, "0-1-100", "0-1-100").gtid(R2, "0-1-105", "0-1-105").input();
    let th = Thresholds::default();
    assert!(crate::choose_candidate_explicit(&input, &a(P), &a(R1), &th).is_err());
    let c = crate::choose_candidate_for_switchover(&input, &a(P), &a(R1), &th).expect("accepted");
    assert_eq!(c.addr, a(R1));
    assert_eq!(c.followers, vec![a(R2)]);
    assert!(c.cannot_follow.is_empty(), "{:?}", c.cannot_follow);
}

mod no_loss {
    use super::*;
    use crate::no_loss_gaps;
    use primus_mysql::Observation;
    use std::collections::BTreeMap;

    /// The leader's fresh probes of every replica of the simulated cluster (as the sim's
    /// freshest observation), with `unreadable` failing.
    fn fresh(sim: &Sim, unreadable: &[u16]) -> BTreeMap<primus_types::InstanceAddr, Result<Observation, String>> {
        sim.specs
            .iter()
            .filter(|(p, _)| **p != P)
            .map(|(p, s)| {
                let r = if unreadable.contains(p) { Err("connection refused".to_string()) } else { Ok(s.obs.clone()) };
                (a(*p), r)
            })
            .collect()
    }

    #[test]
    fn a_candidate_holding_everything_every_replica_received_loses_nothing() {
        let sim = Sim::dead_primary().gtid(R1, "0-1-100", "0-1-104").gtid(R2, "0-1-100", "0-1-102");
        let input = sim.input();
        assert!(no_loss_gaps(&input, &a(P), &a(R1), &fresh(&sim, &[]), None, None).is_empty());
    }

    #[test]
    fn what_an_ineligible_replica_received_still_counts() {
        // R1 (in maintenance, or must_not: out of the pool) received 101..104; R2 did not.
        let sim = Sim::dead_primary().gtid(R1, "0-1-100", "0-1-104").gtid(R2, "0-1-100", "0-1-100").maintenance(R1);
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R2), &fresh(&sim, &[]), None, None);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].contains("127.0.0.1:3307 received 0-1-101..104"), "{gaps:?}");
    }

    #[test]
    fn an_unreadable_replica_may_have_acknowledged_anything() {
        let sim = Sim::dead_primary();
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[R2]), None, None);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].contains("127.0.0.1:3308 cannot be read now (connection refused)"), "{gaps:?}");
        // The candidate itself must be read for this decision too (not an older view).
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[R1]), None, None);
        assert!(gaps[0].contains("the candidate 127.0.0.1:3307 cannot be read now"), "{gaps:?}");
    }

    #[test]
    fn a_replica_no_coordinator_can_read_at_all_still_counts() {
        // Every view of R2 is an error (cut off from every coordinator): nothing says its
        // semi-sync is off, so it may have acknowledged what R1 lacks (found by primus-sim).
        let sim =
            Sim::dead_primary().obs(R2, |o| o.semi_sync.replica_enabled = Some(false)).seen_all(R2, Seen::Timeout);
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[R2]), None, None);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].contains("127.0.0.1:3308 cannot be read now"), "{gaps:?}");
    }

    #[test]
    fn what_semi_sync_replicas_were_seen_to_receive_must_be_on_the_candidate() {
        // R1 restarted and lost its relay log: now it has 0-1-100, but it was seen to have
        // received up to 0-1-104 (and may have acknowledged it) before.
        let sim = Sim::dead_primary().gtid(R1, "0-1-100", "0-1-100").gtid(R2, "0-1-100", "0-1-100");
        let seen: primus_mysql::AnyGtidSet =
            primus_mysql::AnyGtidSet::MariaDb("0-1-104".parse().unwrap_or_else(|e| panic!("{e}")));
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[]), Some(&seen), None);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].contains("were seen to have received 0-1-101..104"), "{gaps:?}");
        let held: primus_mysql::AnyGtidSet =
            primus_mysql::AnyGtidSet::MariaDb("0-1-100".parse().unwrap_or_else(|e| panic!("{e}")));
        assert!(no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[]), Some(&held), None).is_empty());
    }

    /// Found by primus-sim (seed 605753): the dead primary was itself promoted with
    /// 0-1-485; its former primary may have acknowledged any of that on its semi-sync
    /// acknowledgement, so a candidate holding only 0-1-369 (it was down then) must not
    /// be promoted; one holding the whole promotion point may.
    #[test]
    fn the_dead_primary_s_own_promotion_point_must_be_on_the_candidate() {
        let sim = Sim::dead_primary().gtid(R1, "0-1-369", "0-1-369").gtid(R2, "0-1-369", "0-1-369");
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[]), None, Some("0-1-485"));
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].contains("held 0-1-370..485 when it was promoted"), "{gaps:?}");
        let sim = Sim::dead_primary().gtid(R1, "0-2-500", "0-2-500").gtid(R2, "0-2-500", "0-2-500");
        assert!(no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[]), None, Some("0-1-485")).is_empty());
        let gaps = no_loss_gaps(&sim.input(), &a(P), &a(R1), &fresh(&sim, &[]), None, Some("not a gtid"));
        assert!(gaps[0].contains("cannot be compared"), "{gaps:?}");
    }

    #[test]
    fn a_replica_that_never_acknowledges_semi_synchronously_is_left_out() {
        let sim = Sim::dead_primary()
            .gtid(R1, "0-1-100", "0-1-104")
            .obs(R1, |o| o.semi_sync.replica_enabled = Some(false))
            .gtid(R2, "0-1-100", "0-1-100");
        assert!(no_loss_gaps(&sim.input(), &a(P), &a(R2), &fresh(&sim, &[]), None, None).is_empty());
    }
}

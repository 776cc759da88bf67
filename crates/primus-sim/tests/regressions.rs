//! Named regression schedules: fault sequences the simulator found (or that the safety
//! issue described), each run with its shape fixed, asserting that no invariant breaks.
//! A failure prints the whole trace.

use primus_sim::run::{report, run_blocking, Options};
use primus_sim::schedule::Schedule;

fn shape(seed: u64, semi_sync: bool, replicas: usize) -> Options {
    Options {
        seed,
        coordinators: 3,
        replicas,
        chain: false,
        semi_sync,
        mysql: false,
        agents: true,
        clients: 2,
        fault_ms: 20_000,
        settle_ms: 20_000,
        schedule: None,
        faults: 0,
        operator_rejoins: true,
    }
}

fn check(mut opts: Options, schedule: &str) {
    opts.schedule = Some(Schedule::parse(schedule).unwrap_or_else(|e| panic!("bad schedule: {e}")));
    let out = run_blocking(opts);
    assert!(out.violations.is_empty(), "{}", report(&out));
}

/// Found by the simulator (seed 11): in no-loss mode the only replica left is promoted,
/// the heartbeat step then waits for a semi-sync acknowledgement nobody can give, and
/// the failover ended `Failed` — with Raft still naming the old primary beside the
/// promoted candidate, and nothing writable once every fault healed.
#[test]
fn a_step_failing_after_the_promotion_still_moves_the_primary_to_the_promoted_candidate() {
    check(shape(11, true, 2), "@10097 crash-host db2; @11575 partition db1,c1");
}

/// Found by the simulator (seeds 11, 73): a replica down during a failover comes back
/// replicating from the demoted old primary, for ever; in no-loss mode the new primary
/// then takes no write (no semi-sync replica). The leader moves it under the primary
/// (no operator here to rejoin the old primary, which would also have unblocked it).
#[test]
fn a_replica_down_during_a_failover_is_moved_under_the_new_primary_when_it_returns() {
    let mut o = shape(11, true, 2);
    o.operator_rejoins = false;
    check(o, "@10097 crash-host db2; @11575 partition db1,c1");
}

fn run(mut opts: Options, schedule: &str) -> primus_sim::run::Outcome {
    opts.schedule = Some(Schedule::parse(schedule).unwrap_or_else(|e| panic!("bad schedule: {e}")));
    let out = run_blocking(opts);
    assert!(out.violations.is_empty(), "{}", report(&out));
    out
}

/// Safety issue, item 1: every coordinator stalls for longer than the agents' lease TTL
/// (1.5 s). The primary's agent fences it; once the coordinators run again the leader
/// makes it writable again — no failover, writes acknowledged again.
#[test]
fn item_1_a_coordinator_stall_longer_than_the_ttl_ends_with_the_same_primary_writable() {
    let mut o = shape(101, false, 2);
    o.operator_rejoins = false;
    let out =
        run(o, "@3000 pause c1; @3000 pause c2; @3000 pause c3; @4800 resume c1; @4800 resume c2; @4800 resume c3");
    assert!(
        out.trace.iter().any(|l| l.contains("agent[instance=db1:3306]") && l.contains("FENCED: server set read-only")),
        "{}",
        report(&out)
    );
    assert_eq!(out.failovers, 0, "{}", report(&out));
}

/// Safety issue, item 4: in no-loss mode a lagging replica must not be promoted over one
/// holding every acknowledged write (checked: every acknowledged row on the final primary).
#[test]
fn item_4_no_loss_mode_keeps_every_acknowledged_write_when_a_replica_lags() {
    run(shape(104, true, 2), "@0 slow db2 150; @6000 crash db1; @12000 restart db1");
}

/// Safety issue, items 6 and 3: the leader dies during the failover it runs (twice), and a
/// coordinator pauses; the failover still finishes once, with one writable primary.
#[test]
fn items_3_and_6_leaders_crashing_during_a_failover_leave_one_primary_and_nothing_in_flight() {
    run(
        shape(106, false, 2),
        "@2000 crash db1; @2300 crash c1; @2600 crash c2; @3500 restart c1; @3900 pause c3; @4300 resume c3; \
         @5000 restart c2; @9000 restart db1",
    );
}

/// Safety issue, item 10: switchovers in a row, with agents: never a second (automatic)
/// failover of a newly promoted primary whose lease the leader judged run out.
#[test]
fn item_10_switchovers_in_a_row_never_trigger_an_automatic_failover() {
    let sched: Vec<String> = (0..8).map(|i| format!("@{} switchover", 1000 + i * 2000)).collect();
    let out = run(shape(110, false, 2), &sched.join(";"));
    assert!(!out.trace.iter().any(|l| l.contains("history:") && l.contains(" Automatic ")), "{}", report(&out));
    assert!(out.failovers >= 4, "{}", report(&out));
}

/// Safety issue, item 12: the Raft leader and the primary are cut off together from
/// everybody; the majority fails over; on healing the old leader neither names itself
/// leader nor unfences its old primary.
#[test]
fn item_12_the_leader_and_the_primary_cut_off_together_leave_one_primary() {
    run(shape(112, false, 2), "@2000 partition db1,c1; @9000 heal");
}

/// Found by the simulator (seed 10412): no-loss mode, four servers; a partition leaves the
/// primary writing with one semi-sync replica (db3) on the minority side while the
/// majority promotes db2. db3 could not be read, yet the no-loss check let it pass: none
/// of its views was readable, and "every readable view says semi-sync is off" held
/// vacuously. 106 acknowledged writes were lost.
#[test]
fn no_loss_mode_refuses_while_a_semi_sync_replica_cannot_be_read_at_all() {
    let mut o = shape(10412, true, 3);
    o.coordinators = 3;
    run(o, "@3836 partition c2,db4,db2,c3");
}

/// Found by the simulator (seed 20123): no-loss mode, a lagging semi-sync replica (db1,
/// slow SQL thread) acknowledged transactions it had only received, crashed (its relay
/// log discarded on restart), then the primary crashed. The no-loss check compared the
/// candidate only with the other replicas now, and 299 acknowledged writes were lost:
/// what semi-sync replicas were seen to have received must be on the candidate too.
#[test]
fn no_loss_mode_remembers_what_a_restarted_replica_had_received_and_acknowledged() {
    let mut o = shape(20123, true, 2);
    o.coordinators = 5;
    run(
        o,
        "@4487 crash db2; @5755 switchover; @6139 slow db1 118; @7960 restart db2; @10725 crash db1; \
         @12042 crash db3; @13123 restart db1",
    );
}

/// What `tests/failover_crash.rs` does with real processes (kill the leader after each
/// step of a failover), in milliseconds: the primary dies, and the leader (node 1, which
/// founded the group) is killed at every 50 ms of the failover that follows — before the
/// decision, between every two steps, during the lease wait — and restarted later. Every
/// run ends with one writable primary named by every coordinator and nothing in flight.
#[test]
fn the_leader_killed_at_any_moment_of_a_failover_leaves_one_primary_and_nothing_in_flight() {
    for (k, offset) in (0..3200).step_by(50).enumerate() {
        let mut o = shape(7000 + k as u64, false, 2);
        o.fault_ms = 10_000;
        o.settle_ms = 15_000;
        let at = 1000 + offset;
        run(o, &format!("@1000 crash db1; @{at} crash c1; @{} restart c1; @6000 restart db1", at + 1500));
    }
}

/// Found by the simulator (seed 103679): no-loss mode; the primary is SIGSTOPped, the
/// coordinators decide to fail over to db2 (slow SQL thread); the primary resumes and
/// commits one more write, acknowledged by a semi-sync replica's receipt, before its agent
/// fences it. The promote then stopped replication and reset it: db2 had *received* that
/// write but not applied it, and the reset discarded it. The promote now stops the IO
/// thread and waits for the relay log to be applied first.
#[test]
fn a_promotion_applies_everything_the_candidate_received_before_resetting_replication() {
    let mut o = shape(103679, true, 3);
    o.coordinators = 5;
    run(
        o,
        "@44 partition c3; @2207 heal; @3973 pause db1; @5508 slow db2 175; @5976 resume db1; \
         @13203 clock-step c4 4448; @14448 pause c4; @16248 resume c4",
    );
}

/// Found by the simulator (seed 104250): a replica partitioned during a failover still
/// replicated from the demoted old primary (Raft recorded the source the failover
/// intended); a switchover right after the partition healed chose it, fenced the primary,
/// and waited for ever for it to catch up. A switchover's candidate must replicate from
/// the primary.
#[test]
fn a_switchover_never_chooses_a_candidate_that_does_not_replicate_from_the_primary() {
    run(
        shape(104250, false, 2),
        "@7153 clock-step c1 2984; @7550 pause c2; @11546 resume c2; @11664 partition db2,apps; \
         @11867 crash-host db1; @13847 restart-host db1; @14417 heal; @14471 switchover; @14732 partition c3; \
         @18559 heal",
    );
}

/// Found by the simulator (seed 111678): MySQL, async; db1 is replaced by db2 (promotion
/// point 1-265), then db2 by db3, which had only 1-69. db1 holds 70-265, which the
/// primary lacks, yet `divergence` reported it not divergent: it only compared db1 with
/// the failover that replaced it. Later failovers count too.
#[test]
fn a_former_primary_is_flagged_divergent_for_what_a_later_failover_left_behind() {
    let mut o = shape(111678, false, 2);
    o.mysql = true;
    run(
        o,
        "@182 slow db3 109; @3106 partition db1,c2; @3536 ack; @5529 crash-host db3; @5630 heal; @7812 partition db2; \
         @8614 restart-host db3; @11610 heal; @11909 partition apps,c3; @12613 crash-host db1; @13624 crash db1; \
         @13815 restart db1; @14633 heal; @15454 restart-host db1",
    );
}

/// When the first failover's first step ran (ms after the start of the simulated wall
/// clock, as the trace counts), from the history line at the end of the trace.
fn first_failover_step_ms(out: &primus_sim::run::Outcome) -> Option<u64> {
    let line = out.trace.iter().find(|l| l.contains("history: "))?;
    let after = &line[line.find("): @")? + 4..];
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// When the trace says `what` happened (its ms column).
fn trace_ms(out: &primus_sim::run::Outcome, what: &str) -> u64 {
    let line = out.trace.iter().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{what:?} not in the trace"));
    line.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no time in {line:?}"))
}

/// Operator maintenance: a primary that crashes while its cluster is in maintenance is
/// not failed over until the maintenance ends (the same crash without maintenance is,
/// at once), also when the maintenance runs out by the coordinators' wall clocks.
#[test]
fn a_crashed_primary_is_failed_over_only_once_its_maintenance_ends() {
    let mut o = shape(7, false, 2);
    o.operator_rejoins = false;
    // The crash, without maintenance: failed over within a second or so.
    let out = run(o.clone(), "@3000 crash db1");
    let crash = trace_ms(&out, "fault: crash db1");
    let first = first_failover_step_ms(&out).unwrap_or_else(|| panic!("no failover: {}", report(&out)));
    assert!(first < crash + 2000, "failed over only at {first} ms, crash at {crash}: {}", report(&out));
    // In maintenance for longer than the faults last: no failover until heal-all ends it.
    let out = run(o.clone(), "@2000 maintenance cluster 60000; @3000 crash db1");
    let heal = trace_ms(&out, "fault: heal-all");
    if let Some(first) = first_failover_step_ms(&out) {
        assert!(first >= heal, "a failover at {first} ms, during maintenance (until {heal}): {}", report(&out));
    }
    // The primary's own maintenance runs out 4 s after it began: then it is failed over.
    let out = run(o, "@2000 maintenance db1 4000; @3000 crash db1");
    let began = trace_ms(&out, "fault: maintenance db1");
    let first = first_failover_step_ms(&out).unwrap_or_else(|| panic!("no failover: {}", report(&out)));
    assert!(
        first >= began + 4000 && first < began + 6000,
        "failover at {first} ms; maintenance from {began} for 4000 ms: {}",
        report(&out)
    );
}

/// The agent of the primary is killed alone (kill -9; mysqld and the agent's sentinel
/// live on) and stays dead, while the primary is cut off from the coordinator majority
/// and its replicas but not from the applications, and the coordinator one client asks
/// is cut off from the others (so that client keeps writing to the old primary). The
/// sentinel fences the primary at the end of the lease the agent last published, before
/// the majority, which waits out that lease, promotes a replica. Revert-checked: with no
/// sentinel in the model, the old primary acknowledges that client's writes after the
/// promotion (two writers).
#[test]
fn a_killed_agent_s_sentinel_fences_its_primary_before_another_is_promoted() {
    let mut o = shape(21, false, 2);
    o.operator_rejoins = false;
    let out = run(
        o,
        "@3000 crash-agent db1; @3000 cut db1 c1; @3000 cut db1 c3; @3000 cut db1 db2; @3000 cut db1 db3; \
         @3000 cut c2 c1; @3000 cut c2 c3; @9000 heal",
    );
    assert!(
        out.trace.iter().any(|l| l.contains("sentinel of db1:3306: lease ran out with no agent; fenced")),
        "{}",
        report(&out)
    );
    assert_eq!(out.failovers, 1, "{}", report(&out));
}

/// Found by the simulator (seed 605753): no-loss mode, a chain db1 → db2 → db3. db3 is
/// down while db1 is failed over to db2 (promotion point 0-1-485); db2 then dies too
/// (its agent kills it when its fence cannot finish) and db3, back with 0-1-369 only,
/// was promoted: 113 acknowledged rows, held by db2 alone, lost. The candidate must
/// hold the dead primary's own promotion point: now the failover is refused.
#[test]
fn no_loss_mode_never_promotes_a_candidate_lacking_the_dead_primary_s_promotion_point() {
    let o = primus_sim::run::Options::from_seed(605753, 20_000);
    let out = run(o, "@4866 crash-host db3; @6384 partition db1,c3; @7362 slow db3 86; @9238 heal; @11284 restart db3");
    assert_eq!(out.failovers, 1, "{}", report(&out));
}

/// Found by the simulator (seed 713232, a 20,000-schedule run): right after every fault
/// healed, the new primary's agent lost its lease in a leader change, could not fence
/// (semi-sync writes held the read-only lock) and killed mysqld. Nothing restarted it, so
/// nothing was writable for good. The harness now models the service manager restarting
/// a mysqld that died after the heal; the restarted primary comes back read-only and the
/// leader makes it writable again (the unfence upkeep).
#[test]
fn a_primary_killed_by_its_agent_after_the_faults_healed_is_writable_again_once_restarted() {
    let o = primus_sim::run::Options::from_seed(713232, 20_000);
    run(
        o,
        "@850 crash-agent db2; @1985 switchover; @4102 clock-drift c3 293; @4177 restart-agent db2; \
         @5724 partition c5; @6014 heal; @7105 crash-host db3; @10143 crash db2; @10628 restart-host db3; \
         @13877 restart db2; @14997 partition db1,c3; @18416 heal",
    );
}

/// Found by the determinism check (seed 5012): after a coordinator was paused and
/// resumed, the messages it had held were released in an order tokio's unseeded dice
/// chose (which of a watch channel's notifiers each waiter queued on), and two runs of
/// one seed differed (2 digests in 12 runs). With the runtime's dice seeded
/// (`--cfg tokio_unstable`, .cargo/config.toml) every run agrees.
#[test]
fn a_paused_coordinator_s_held_messages_are_released_in_the_same_order_every_run() {
    assert!(primus_sim::run::seeded_runtime(), "built without --cfg tokio_unstable: see .cargo/config.toml");
    let digests: std::collections::BTreeSet<u64> = (0..8)
        .map(|_| {
            let mut o = Options::from_seed(5012, 20_000);
            o.schedule = Some(Schedule::parse("@11367 pause c2; @12199 resume c2").unwrap_or_else(|e| panic!("{e}")));
            let out = run_blocking(o);
            assert!(out.violations.is_empty(), "{}", report(&out));
            out.digest
        })
        .collect();
    assert_eq!(digests.len(), 1, "8 runs of one seed gave {} different digests", digests.len());
}

/// The lease step of the failover that a crashed primary needs.
fn lease_step(out: &primus_sim::run::Outcome) -> String {
    out.trace
        .iter()
        .filter(|l| l.contains("history: "))
        .flat_map(|l| l.split("; @"))
        .find(|s| s.contains("wait for the lease of"))
        .unwrap_or_default()
        .to_string()
}

/// Issue 14: mysqld of the primary crashes, its agent lives: the agent hands the lease
/// back and the failover does not wait for it (the simulated server restarts read-only,
/// standing for the agent's blocked port). The invariants hold as in every schedule.
#[test]
fn a_crashed_mysqld_s_agent_hands_its_lease_back_and_the_failover_does_not_wait_for_it() {
    let out = run(shape(31, false, 2), "@3000 crash db1; @12000 restart db1");
    assert!(
        out.trace.iter().any(|l| l.contains("agent[instance=db1:3306]") && l.contains("LEASE HANDED BACK")),
        "{}",
        report(&out)
    );
    assert_eq!(out.failovers, 1, "{}", report(&out));
    assert!(lease_step(&out).contains("released its lease"), "{}\n{}", lease_step(&out), report(&out));
}

/// Issue 14: the primary's whole host crashes (agent and mysqld): nobody hands the lease
/// back, and the failover waits it out as before.
#[test]
fn a_crashed_host_hands_nothing_back_and_the_failover_waits_the_lease_out() {
    let out = run(shape(32, false, 2), "@3000 crash-host db1");
    assert_eq!(out.failovers, 1, "{}", report(&out));
    assert!(lease_step(&out).contains("ran out"), "{}\n{}", lease_step(&out), report(&out));
}

/// Issue 13: the pre-promote no-loss recheck, alone. No-loss mode without agents: the
/// primary db1 is SIGSTOPped, the failover to db2 is decided with db2 holding everything;
/// then db1 loses its link to db2 and resumes before the promotion. Its commits that were
/// waiting for an acknowledgement reach db3 alone, which acknowledges them, so clients
/// hold acknowledged rows db2 lacks. The decision's check was right when made; only the
/// check right before the promotion (fresh probes: db2 lacks what db3 received) refuses
/// db2: the failover is aborted before anything irreversible, and db1 (back, and fenced
/// by the failover's own best-effort fence) is the primary again. Checked by reverting
/// the recheck: db2 is promoted without 2 acknowledged rows. (With agents, the agent's fence of the resumed primary kills the
/// waiting sessions before they are acknowledged; the recheck is defence in depth there.)
#[test]
fn no_loss_mode_rechecks_the_candidate_right_before_the_promotion() {
    let mut o = shape(2, true, 2);
    o.agents = false;
    let out = run(o, "@3000 pause db1; @4810 cut db1 db2; @4850 resume db1");
    assert!(out.trace.iter().any(|l| l.contains("no-loss mode: not promoted")), "{}", report(&out));
}

/// Issue 14 (found by the nemesis, now in the agent's own loop that the simulator runs):
/// a primary frozen (SIGSTOP) long before its failover starts gets one short fence
/// attempt, then its agent kills it — not the whole 500 ms fence timeout again, counted
/// from the decision.
#[test]
fn a_primary_frozen_long_before_its_failover_is_killed_by_its_agent_after_one_short_attempt() {
    let out = run(shape(2, false, 2), "@3000 pause db1");
    let line = out
        .trace
        .iter()
        .find(|l| l.contains("agent[instance=db1:3306]") && l.contains("ESCALATED"))
        .unwrap_or_else(|| panic!("no escalation\n{}", report(&out)));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert!(field("attempt_ms=") <= 100, "{line}");
    assert!(field("waited_ms=") >= 500, "{line}");
    assert_eq!(out.failovers, 1, "{}", report(&out));
}

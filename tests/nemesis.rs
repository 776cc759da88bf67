//! The nemesis (crates/primus-nemesis) judged by its own checker on real processes:
//! one fixed schedule — the primary partitioned together with one application client
//! for 7.7 s, among other faults — run twice. Without agents nothing fences the cut-off
//! primary, its client keeps writing to it while the other writes to the promoted
//! replica, and the checker must report split brain; with agents the same schedule is
//! clean. The first half shows the checker can see what it claims to check, the second
//! that fencing by lease prevents it.
//!
//! Seed 19 (20 s) is that schedule (`primus-nemesis schedule --seed 19 --seconds 20`);
//! a change to the schedule generator that moves the partition away fails the first test
//! loudly (no violation found), and the seed must then be chosen again.

use std::process::Command;

/// `subnet_base`: each test its own lab subnet (they may run at once).
fn nemesis(subnet_base: u8, extra: &[&str]) -> anyhow::Result<(bool, String)> {
    let exe = primus_testkit::coordinator::bin("primus-nemesis")?;
    let out = tempfile::tempdir()?;
    let o = Command::new(exe)
        .args(["run", "--seed", "19", "--seconds", "20", "--out"])
        .arg(out.path())
        .args(["--subnet-base", &subnet_base.to_string()])
        .args(extra)
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    println!("{text}");
    Ok((o.status.success(), text))
}

#[test]
fn the_nemesis_checker_reports_split_brain_when_no_agent_fences_a_primary_partitioned_with_a_client(
) -> anyhow::Result<()> {
    let (ok, text) = nemesis(150, &["--no-agents"])?;
    assert!(
        text.contains("partition {primary, client1} from the rest"),
        "seed 19 no longer partitions the primary with a client:\n{text}"
    );
    assert!(!ok, "the run must fail: {text}");
    assert!(
        text.contains("VIOLATION [one writable primary]: writes acknowledged by two servers in overlapping intervals"),
        "no split brain reported:\n{text}"
    );
    assert!(text.contains("replay: scripts/nemesis.sh --seed 19 --seconds 20"), "no replay command:\n{text}");
    Ok(())
}

#[test]
fn the_same_schedule_with_agents_fencing_by_lease_is_clean() -> anyhow::Result<()> {
    let (ok, text) = nemesis(120, &[])?;
    assert!(ok && text.contains("seed 19: clean"), "{text}");
    Ok(())
}

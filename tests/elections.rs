//! Clients during an election, on real primusd processes: a command issued the
//! moment the Raft leader is killed (kill -9) waits out the election and answers
//! from the new leader, well within its timeout, instead of retrying the dead one
//! until the timeout runs out (issue 12, item 2).

use primus_client::{Client, ClusterSettings};
use primus_integration_tests::world::{World, WorldOptions};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::time::{Duration, Instant};

/// How soon after kill -9 of the leader a command must have its answer...
const LIMIT: Duration = Duration::from_secs(2);
/// ...unless the election itself took longer (a split vote): then this soon after it.
const AFTER_ELECTION: Duration = Duration::from_millis(500);
const ROUNDS: usize = 5;

/// Polls every node but `killed` (GetStatus, every 10 ms) from just before the kill,
/// and says how long after `t0` one of them first called itself leader.
fn election_clock(g: &CoordinatorGroup, killed: u64) -> anyhow::Result<tokio::task::JoinHandle<Option<Duration>>> {
    let survivors: Vec<Client> = g
        .nodes
        .keys()
        .filter(|id| **id != killed)
        .map(|id| g.client_for(&[*id], Duration::from_millis(200)))
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    Ok(tokio::spawn(async move {
        while t0.elapsed() < Duration::from_secs(10) {
            for c in &survivors {
                if c.node_status().await.is_ok_and(|s| s.role == primus_client::Role::Leader as i32) {
                    return Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }))
}

/// Whether an answer `took` after the kill was in time, the election having taken `elected`.
fn in_time(took: Duration, elected: Option<Duration>) -> bool {
    took < LIMIT.max(elected.unwrap_or_default() + AFTER_ELECTION)
}

/// Run the real `primusctl` with every endpoint of `g` and `--timeout 10s`.
async fn primusctl(g: &CoordinatorGroup, args: &[&str]) -> anyhow::Result<(std::process::Output, Duration)> {
    let ctl = primus_testkit::coordinator::bin("primusctl")?;
    let t0 = Instant::now();
    let out = tokio::process::Command::new(ctl)
        .args(["--endpoints", &g.endpoints(), "--timeout", "10s"])
        .args(args)
        .output()
        .await?;
    Ok((out, t0.elapsed()))
}

/// Restart the killed node and wait until the whole group agrees on a leader again.
async fn restart_and_settle(g: &mut CoordinatorGroup, killed: u64) -> anyhow::Result<()> {
    g.start_node(killed)?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.status_of(killed).await.map(|s| s.leader_id.is_none()).unwrap_or(true) {
        anyhow::ensure!(Instant::now() < deadline, "restarted node {killed} knows no leader after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Print the rounds' times (answer, and election) and whether each was in time.
fn report(what: &str, rounds: &[(Duration, Option<Duration>)]) -> bool {
    let ms = |d: &Duration| d.as_millis();
    let took: Vec<u128> = rounds.iter().map(|(t, _)| ms(t)).collect();
    let elected: Vec<Option<u128>> = rounds.iter().map(|(_, e)| e.as_ref().map(ms)).collect();
    let max = rounds.iter().map(|(t, _)| *t).max().unwrap_or_default();
    println!(
        "{what} at +0 ms after kill -9 of the leader, {} rounds: answered after {took:?} ms (max {} ms); \
         new leader after {elected:?} ms",
        rounds.len(),
        max.as_millis()
    );
    rounds.iter().all(|(t, e)| in_time(*t, *e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primusctl_status_issued_the_moment_the_leader_dies_answers_with_the_new_leader_within_2_s(
) -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for round in 1..=ROUNDS {
        let (leader, term) = g.wait_leader(&[], Duration::from_secs(20)).await?;
        let clock = election_clock(&g, leader)?;
        g.kill9(leader)?;
        let (out, took) = primusctl(&g, &["status", "-o", "json"]).await?;
        let elected = clock.await?;
        times.push((took, elected));
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "round {round}: killed leader {leader} (term {term}); new leader after {:?} ms; status answered in {} ms",
            elected.map(|e| e.as_millis()),
            took.as_millis()
        );
        if !out.status.success() {
            failures.push(format!(
                "round {round}: exit {:?} after {} ms: {stderr}",
                out.status.code(),
                took.as_millis()
            ));
        } else {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let named = v["leader_id"].as_u64();
            anyhow::ensure!(named.is_some() && named != Some(leader), "round {round}: status names leader {v}");
            assert_eq!(v["served_by"], v["leader_id"], "round {round}: the leader's own view: {v}");
            anyhow::ensure!(v["term"].as_u64() > Some(term), "round {round}: term did not move: {v}");
        }
        restart_and_settle(&mut g, leader).await?;
    }
    let all_in_time = report("primusctl status", &times);
    assert!(failures.is_empty(), "primusctl status failed: {failures:#?}");
    assert!(all_in_time, "primusctl status answered later than {LIMIT:?} (or {AFTER_ELECTION:?} after the election)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_primary_issued_the_moment_the_leader_dies_answers_within_2_s() -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    // GetPrimary needs a registered cluster, not a reachable one (its primary stays
    // unknown here: these coordinators watch no MySQL).
    let seeds = ["127.0.0.1:3306".to_string()];
    g.client(Duration::from_secs(10))?.register_cluster("c", &seeds, ClusterSettings::default()).await?;
    // One long-lived client, as an application holds: its connections to the dead
    // leader break under it.
    let client: Client = g.client(Duration::from_secs(10))?;
    client.primary("c").await?;
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for round in 1..=ROUNDS {
        let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
        let clock = election_clock(&g, leader)?;
        g.kill9(leader)?;
        let t0 = Instant::now();
        let r = client.primary("c").await;
        let took = t0.elapsed();
        let elected = clock.await?;
        times.push((took, elected));
        match r {
            Ok(r) => {
                println!(
                    "round {round}: killed leader {leader}; new leader after {:?} ms; GetPrimary answered by node {} \
                     in {} ms",
                    elected.map(|e| e.as_millis()),
                    r.served_by,
                    took.as_millis()
                );
                assert_eq!(r.state.map(|s| s.cluster), Some("c".to_string()), "round {round}");
                assert_ne!(r.served_by, leader, "round {round}: the dead leader cannot answer");
                assert_ne!(r.leader_id, Some(leader), "round {round}: answered under the dead leader");
            }
            Err(e) => failures.push(format!("round {round}: after {} ms: {e}", took.as_millis())),
        }
        restart_and_settle(&mut g, leader).await?;
    }
    let all_in_time = report("GetPrimary (linearizable)", &times);
    assert!(failures.is_empty(), "GetPrimary failed: {failures:#?}");
    assert!(all_in_time, "GetPrimary answered later than {LIMIT:?} (or {AFTER_ELECTION:?} after the election)");
    Ok(())
}

/// A switchover asked for through `primusctl`, then a failover asked for through a
/// long-lived client connected to the leader, each the moment the coordinator leader
/// is killed: each is carried out by the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_failover_issued_the_moment_the_coordinator_leader_dies_are_carried_out_by_the_new_leader(
) -> anyhow::Result<()> {
    let mut w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let replicas: Vec<String> = w.sandbox.replicas().iter().map(|r| r.addr()).collect();
    let all_seen = |t: &primus_client::GetTopologyResponse| {
        t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
    };

    let to = &replicas[0];
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(20)).await?;
    w.group.kill9(leader)?;
    let (out, took) = primusctl(&w.group, &["switchover", "c", "--to", to, "-o", "json"]).await?;
    println!("primusctl switchover at +0 ms after kill -9 of coordinator leader {leader}: {} ms", took.as_millis());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "switchover failed after {} ms: {stderr}{stdout}", took.as_millis());
    assert!(took < Duration::from_secs(10), "switchover answered after {took:?}");
    let f: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((f["kind"].as_str(), f["outcome"].as_str()), (Some("switchover"), Some("succeeded")), "{f:#}");
    assert_eq!((f["new_primary"].as_str(), f["epoch"].as_u64()), (Some(to.as_str()), Some(2)), "{f:#}");
    w.group.start_node(leader)?;
    w.wait_topology("c", "every coordinator sees every instance again", Duration::from_secs(15), all_seen).await?;

    // An application's client, connected to the leader when it dies: its first call
    // meets the broken connection, which must not end the call.
    let to = &replicas[1];
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(20)).await?;
    let order: Vec<u64> = std::iter::once(leader).chain((1..=3).filter(|i| *i != leader)).collect();
    let client = w.group.client_for(&order, Duration::from_secs(60))?;
    assert_eq!(client.node_status().await?.node_id, leader, "the client starts on the leader");
    w.group.kill9(leader)?;
    let t0 = Instant::now();
    let mut r = client.failover("c", Some(to), false).await;
    // The primary is alive and writes a heartbeat every 200 ms: a candidate probed a moment
    // after it may lack the latest one, and a manual failover is then refused with "wait for
    // it to catch up" (seen once under CI load). That answer is primus' to give, and not
    // what this test is about (the leader's death): ask again, as an operator would.
    for _ in 0..3 {
        match &r {
            Err(e) if e.to_string().contains("to catch up") => {
                println!("refused while the candidate caught up ({e}); asking again");
                tokio::time::sleep(Duration::from_millis(300)).await;
                r = client.failover("c", Some(to), false).await;
            }
            _ => break,
        }
    }
    let took = t0.elapsed();
    println!("client failover at +0 ms after kill -9 of coordinator leader {leader}: {} ms", took.as_millis());
    let f = r.map_err(|e| anyhow::anyhow!("failover failed after {} ms: {e}", took.as_millis()))?.failover;
    let f = f.ok_or_else(|| anyhow::anyhow!("no failover record"))?;
    assert_eq!((f.kind.as_str(), f.outcome.as_str()), ("manual", "succeeded"), "{f:#?}");
    assert!(took < Duration::from_secs(10), "failover answered after {took:?}");
    assert_eq!((f.candidate.as_str(), f.epoch), (to.as_str(), 3), "{f:#?}");
    Ok(())
}

//! The coordinators' side of agent leases, on real primusd and real MariaDB, with the
//! agent played by the test (the real `primus-agent` is tested in tests/agent.rs):
//! only the primary gets a lease; a failover of a primary with an agent waits until
//! its lease has run out before promoting; an agent that stops renewing gets its
//! primary failed over; a demoted old primary is told to fence itself.

use primus_client::Client;
use primus_integration_tests::world::{print_steps, wait_finished, World, WorldOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TTL_MS: u64 = 1500;

/// A scripted agent for `instance`: renews every 300 ms until `stop`, recording when it
/// last *sent* a request that was granted.
fn renewer(
    client: Arc<Client>,
    instance: String,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Option<Instant>>>, tokio::task::JoinHandle<()>) {
    let last = Arc::new(Mutex::new(None));
    let l = last.clone();
    let h = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_millis(300),
                client.renew_lease("c", &instance, "test-agent", TTL_MS),
            )
            .await
            {
                if r.granted {
                    *l.lock().unwrap_or_else(|p| p.into_inner()) = Some(sent);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    (last, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_primary_gets_a_lease_and_a_failover_waits_for_it_to_run_out() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let client = Arc::new(w.client()?);
    let primary = w.sandbox.primary().addr();
    let replica = w.sandbox.replicas()[0].addr();
    client.register_agent("c", &primary, "test-agent").await?;

    let r = client.renew_lease("c", &replica, "test-agent", TTL_MS).await?;
    assert!(!r.granted && !r.fence_now, "a replica gets no lease and is left alone: {r:?}");
    assert_eq!(r.reason, "not_primary");
    let r = client.renew_lease("c", &primary, "test-agent", 60_000).await?;
    assert_eq!((r.granted, r.reason.as_str()), (false, "ttl_too_long"));

    let stop = Arc::new(AtomicBool::new(false));
    let (last_grant, task) = renewer(client.clone(), primary.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(last_grant.lock().unwrap_or_else(|p| p.into_inner()).is_some(), "the primary's agent holds a lease");

    // The primary dies while its agent keeps asking: the failover must not promote
    // before the last lease granted has run out.
    let killed = Instant::now();
    w.sandbox.primary().kill9()?;
    let h = wait_finished(&client, "c", 1, Duration::from_secs(30)).await?;
    stop.store(true, Ordering::Relaxed);
    task.await?;
    let f = &h.failovers[0];
    print_steps(f);
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    let lease_step = f.steps.iter().find(|s| s.description.contains("lease")).expect("a lease step");
    assert!(lease_step.outcome.contains("ran out"), "{lease_step:?}");
    let promote = f.steps.iter().find(|s| s.description.starts_with("promote")).expect("a promote step");
    let last = last_grant.lock().unwrap_or_else(|p| p.into_inner()).expect("a grant");
    // Wall-clock step times vs. monotonic grant time: compare both against the kill.
    let promoted_after_kill =
        promote.at_ms.saturating_sub(f.started_at_ms) as i64 + (f.started_at_ms as i64 - wall_ms_at(killed));
    let lease_end_after_kill =
        (last + Duration::from_millis(TTL_MS)).saturating_duration_since(killed).as_millis() as i64;
    println!(
        "kill -9 -> promotion after ~{promoted_after_kill} ms; the last lease granted ran until +{lease_end_after_kill} ms"
    );
    assert!(
        promoted_after_kill >= lease_end_after_kill,
        "promoted at +{promoted_after_kill} ms, before the lease ran out at +{lease_end_after_kill} ms"
    );
    // The old primary, now demoted, is told to fence itself.
    let r = client.renew_lease("c", &primary, "test-agent", TTL_MS).await?;
    assert!(!r.granted && r.fence_now, "{r:?}");
    println!("kill -9 -> failover finished in {} ms (lease wait included)", killed.elapsed().as_millis());
    Ok(())
}

/// A lease used to be granted to any caller naming the primary, registered or not, and a
/// failover then skipped the wait for it (no agent record in Raft). Now only the agent
/// Raft knows of gets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_goes_only_to_the_agent_raft_knows_of() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::ZERO).await?;
    let client = w.client()?;
    let primary = w.sandbox.primary().addr();
    let r = client.renew_lease("c", &primary, "ghost", TTL_MS).await?;
    assert_eq!((r.granted, r.reason.as_str(), r.fence_now), (false, "not_registered", false), "{r:?}");
    client.register_agent("c", &primary, "agent-1").await?;
    let r = client.renew_lease("c", &primary, "ghost", TTL_MS).await?;
    assert_eq!((r.granted, r.reason.as_str()), (false, "not_registered"), "another agent's name: {r:?}");
    let r = client.renew_lease("c", &primary, "agent-1", TTL_MS).await?;
    assert!(r.granted, "the registered agent: {r:?}");
    Ok(())
}

/// Wall-clock ms of a past monotonic instant.
fn wall_ms_at(t: Instant) -> i64 {
    let now_wall =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    now_wall - t.elapsed().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_renewing_gets_its_primary_failed_over() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let client = Arc::new(w.client()?);
    let primary = w.sandbox.primary().addr();
    client.register_agent("c", &primary, "test-agent").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (last_grant, task) = renewer(client.clone(), primary.clone(), stop.clone());
    // A renewal pause shorter than the lease changes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    task.await?;
    let stop2 = Arc::new(AtomicBool::new(false));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, task2) = renewer(client.clone(), primary.clone(), stop2.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(client.history("c").await?.failovers.is_empty(), "a 0.7 s renewal gap caused a failover");

    // The agent dies (stops renewing for good): the primary, healthy as it is, is
    // fenced and replaced once its lease has run out.
    stop2.store(true, Ordering::Relaxed);
    task2.await?;
    let stopped = Instant::now();
    let h = wait_finished(&client, "c", 1, Duration::from_secs(30)).await?;
    let f = &h.failovers[0];
    println!(
        "agent gone -> failover {} ({}) finished {} ms later",
        f.outcome,
        f.analysis_code,
        stopped.elapsed().as_millis()
    );
    print_steps(f);
    assert_eq!(f.analysis_code, "PrimaryLeaseExpired", "{f:#?}");
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert!(f.steps[0].outcome.starts_with("read_only set"), "the reachable old primary is fenced: {f:#?}");
    assert!(last_grant.lock().unwrap_or_else(|p| p.into_inner()).is_some());
    let t = w.topology("c").await?;
    assert_eq!(t.primary, f.candidate);
    assert_eq!(t.epoch, 2);
    Ok(())
}

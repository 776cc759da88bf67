//! The client surface on real primusd processes and a real MariaDB sandbox:
//! `GetPrimary` at both consistency levels on every node, before and after a
//! failover and in a partition; `WatchPrimary` streams that follow a failover, move
//! to another coordinator when theirs dies or is cut off, replay what a resuming
//! client missed, and cut off a slow consumer without slowing the group.

use primus_client::{
    Client, ClientError, ClientOptions, ClusterSettings, PrimaryEvent, PrimaryEventKind, ReadConsistency,
};
use primus_integration_tests::world::{World, WorldOptions};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn kind(ev: &PrimaryEvent) -> PrimaryEventKind {
    PrimaryEventKind::try_from(ev.kind).unwrap_or(PrimaryEventKind::Unspecified)
}

/// Next event within `timeout`, or a clear error.
async fn next(s: &mut primus_client::WatchStream, timeout: Duration) -> anyhow::Result<PrimaryEvent> {
    match tokio::time::timeout(timeout, s.next()).await {
        Err(_) => anyhow::bail!("no watch event within {timeout:?}"),
        Ok(None) => anyhow::bail!("watch stream ended"),
        Ok(Some(Err(e))) => anyhow::bail!("watch failed: {e}"),
        Ok(Some(Ok(ev))) => Ok(ev),
    }
}

/// Read events until `pred` holds for one; returns every event read.
async fn until(
    s: &mut primus_client::WatchStream,
    timeout: Duration,
    pred: impl Fn(&PrimaryEvent) -> bool,
) -> anyhow::Result<Vec<(PrimaryEvent, u64)>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next(s, left).await.map_err(|e| anyhow::anyhow!("{e}; events so far: {seen:#?}"))?;
        let done = pred(&ev);
        seen.push((ev, now_ms()));
        if done {
            return Ok(seen);
        }
    }
}

fn client_in_order(w: &World, ids: &[u64]) -> anyhow::Result<Client> {
    let eps: Vec<String> = ids.iter().map(|i| w.group.node(*i).addr()).collect();
    Ok(Client::new(&eps, ClientOptions { timeout: Duration::from_secs(5), ..Default::default() })?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_primary_is_right_on_every_node_at_both_levels_before_and_after_a_failover() -> anyhow::Result<()> {
    let w = World::start(WorldOptions::default()).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let old = w.sandbox.primary().addr();
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let follower = (1..=3).find(|i| *i != leader).unwrap_or(1);

    for id in 1..=3u64 {
        let c = w.group.client_for(&[id], Duration::from_secs(5))?;
        for (r, level) in [(c.primary("c").await?, "linearizable"), (c.primary_stale("c").await?, "stale")] {
            let st = r.state.clone().unwrap_or_default();
            assert_eq!(st.primary, old, "node {id} {level}: {r:#?}");
            assert_eq!(st.epoch, 1, "node {id} {level}");
            assert!(st.failover.is_none(), "node {id} {level}: {r:#?}");
            assert_eq!(r.leader_id, Some(leader), "node {id} {level}");
            assert!(r.applied_index > 0);
        }
    }
    // Unknown clusters are NOT_FOUND, for reads and for watches.
    let c = w.client()?;
    let e = c.primary("nope").await.err().map(|e| e.code());
    assert_eq!(e, Some(Some(tonic::Code::NotFound)), "{e:?}");
    let mut s = c.watch(Some("nope"));
    match tokio::time::timeout(Duration::from_secs(5), s.next()).await? {
        Some(Err(e)) => assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}"),
        other => anyhow::bail!("watch of an unknown cluster: {other:?}"),
    }
    // A datacenter label reaches clients.
    c.set_instance_datacenter("c", &old, "eu-1").await?;
    assert_eq!(c.primary("c").await?.state.unwrap_or_default().datacenter, "eu-1");

    // A watcher on a follower follows the failover.
    let mut watch = w.group.client_for(&[follower], Duration::from_secs(5))?.watch(Some("c"));
    let first = next(&mut watch, Duration::from_secs(5)).await?;
    assert_eq!(kind(&first), PrimaryEventKind::Current);
    assert_eq!(first.state.as_ref().map(|s| s.primary.as_str()), Some(old.as_str()));

    w.sandbox.primary().kill9()?;
    let events = until(&mut watch, Duration::from_secs(20), |ev| kind(ev) == PrimaryEventKind::PrimaryChanged).await?;
    let h = c.history("c").await?;
    let f = h.failovers.last().cloned().unwrap_or_default();
    assert_eq!(f.outcome, "succeeded", "{h:#?}");
    let (changed, received) = events.last().cloned().unwrap_or_default();
    let st = changed.state.clone().unwrap_or_default();
    assert_eq!(st.primary, f.candidate, "{events:#?}");
    assert_eq!(st.epoch, 2);
    assert!(st.demoted.contains(&old), "{st:?}");
    assert!(
        events.iter().any(|(e, _)| kind(e) == PrimaryEventKind::FailoverStarted),
        "the start of the failover was announced: {events:#?}"
    );
    println!(
        "watch on follower {follower}: primary change received {} ms after the failover's finish record",
        received as i64 - f.finished_at_ms.unwrap_or(0) as i64
    );

    // Linearizable reads are never stale: every node answers the new primary now.
    for id in 1..=3u64 {
        let r = w.group.client_for(&[id], Duration::from_secs(5))?.primary("c").await?;
        let st = r.state.unwrap_or_default();
        assert_eq!((st.primary.as_str(), st.epoch), (f.candidate.as_str(), 2), "node {id}");
    }
    // Stale reads catch up within moments.
    for id in 1..=3u64 {
        let c = w.group.client_for(&[id], Duration::from_secs(5))?;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let st = c.get_primary("c", ReadConsistency::Stale).await?.state.unwrap_or_default();
            if st.epoch == 2 && st.primary == f.candidate {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "node {id} stale read still {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A client resuming from epoch 1 is replayed the failover it missed, then the state.
    let resumed = w.group.client_for(&[leader], Duration::from_secs(5))?;
    let mut s = resumed.watch_from(Some("c"), [("c".to_string(), 1)].into());
    let r1 = next(&mut s, Duration::from_secs(5)).await?;
    assert_eq!(kind(&r1), PrimaryEventKind::Replayed, "{r1:#?}");
    assert_eq!(r1.state.as_ref().map(|s| (s.primary.clone(), s.epoch)), Some((f.candidate.clone(), 2)));
    let r2 = next(&mut s, Duration::from_secs(5)).await?;
    assert_eq!(kind(&r2), PrimaryEventKind::Current, "{r2:#?}");
    assert!(r2.state.unwrap_or_default().demoted.contains(&old));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_cut_off_from_the_leader_refuses_linearizable_reads_but_serves_stale_ones() -> anyhow::Result<()> {
    let w = World::start(WorldOptions { fault_injection: true, ..Default::default() }).await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let old = w.sandbox.primary().addr();
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let cut = (1..=3).find(|i| *i != leader).unwrap_or(1);
    let others: Vec<u64> = (1..=3).filter(|i| *i != cut).collect();
    let mut watch = client_in_order(&w, &[cut, others[0], others[1]])?.watch(Some("c"));
    let first = next(&mut watch, Duration::from_secs(5)).await?;
    assert_eq!(first.served_by, cut, "the watcher starts on the node about to be cut off");

    w.group.isolate(&[cut]).await?;
    // Once it knows no leader, linearizable reads fail clearly on it...
    // (Until it notices, it may still forward them to the leader it knew, and a
    // forward may fail on its own; what must come, and stay, is the clear refusal.)
    let lone = w.group.client_for(&[cut], Duration::from_secs(2))?;
    let cut_at = Instant::now();
    let deadline = cut_at + Duration::from_secs(10);
    let mut before = Vec::new();
    let err = loop {
        let r = lone.primary("c").await;
        let at = cut_at.elapsed().as_millis();
        match r {
            Err(e @ ClientError::NoLeader(_)) => break e,
            other => {
                before.push(format!("{at} ms: {:?}", other.map(|r| r.served_by)));
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "node {cut} did not refuse linearizable reads within 10 s of being cut off: {before:#?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    println!(
        "after {} ms, linearizable read on the cut-off node: {err}; before: {before:?}",
        cut_at.elapsed().as_millis()
    );
    // ...while stale reads still answer, saying which index they come from.
    let r = lone.primary_stale("c").await?;
    assert_eq!(r.state.as_ref().map(|s| s.primary.as_str()), Some(old.as_str()));
    assert_eq!(r.served_by, cut);
    assert!(r.applied_index > 0);

    // The majority goes on; the watcher leaves the cut-off node and misses nothing.
    let majority = w.group.client_for(&others, Duration::from_secs(5))?;
    majority.set_instance_datacenter("c", &old, "dc-after-cut").await?;
    let events = until(&mut watch, Duration::from_secs(15), |ev| {
        ev.state.as_ref().is_some_and(|s| s.datacenter == "dc-after-cut")
    })
    .await?;
    println!("watcher saw the majority's write {} ms after the cut", cut_at.elapsed().as_millis());
    let (last, _) = events.last().cloned().unwrap_or_default();
    assert_ne!(last.served_by, cut, "served by a node of the majority: {events:#?}");
    w.group.isolate(&[]).await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_a_failover_across_the_death_of_the_coordinator_running_it() -> anyhow::Result<()> {
    // The leader kills itself right after committing the start of the failover; the
    // watcher was connected to it.
    let w = World::start(WorldOptions {
        fault_injection: true,
        env: vec![("PRIMUS_FAILPOINT".into(), "failover.after_start".into())],
        ..Default::default()
    })
    .await?;
    w.register_sandbox("c", Duration::from_millis(1500)).await?;
    let old = w.sandbox.primary().addr();
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let mut watch = client_in_order(&w, &[leader, others[0], others[1]])?.watch(Some("c"));
    let first = next(&mut watch, Duration::from_secs(5)).await?;
    assert_eq!(first.served_by, leader);

    w.sandbox.primary().kill9()?;
    let events = until(&mut watch, Duration::from_secs(30), |ev| {
        ev.state.as_ref().is_some_and(|s| s.epoch == 2 && s.primary != old && s.failover.is_none())
    })
    .await?;
    for (e, _) in &events {
        println!(
            "  {:?} from node {}: {:?} epoch {} {}",
            kind(e),
            e.served_by,
            e.state.as_ref().map(|s| &s.primary),
            e.state.as_ref().map(|s| s.epoch).unwrap_or(0),
            e.detail
        );
    }
    let h = w.group.client_for(&others, Duration::from_secs(10))?.history("c").await?;
    let f = h.failovers.last().cloned().unwrap_or_default();
    assert_eq!(f.outcome, "succeeded", "{h:#?}");
    let (last, _) = events.last().cloned().unwrap_or_default();
    assert_eq!(last.state.as_ref().map(|s| s.primary.as_str()), Some(f.candidate.as_str()));
    assert_ne!(last.served_by, leader, "the dead leader cannot have served it");
    let epochs: Vec<u64> = events.iter().filter_map(|(e, _)| e.state.as_ref().map(|s| s.epoch)).collect();
    assert!(epochs.windows(2).all(|p| p[0] <= p[1]), "epochs never go back: {epochs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_cut_off_with_a_clear_status_and_the_group_is_not_slowed() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        extra_config: "[watch]\nbuffer = 8\n".into(),
        ..Default::default()
    })?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    // A watcher whose HTTP/2 window is tiny and that never reads: the server can
    // send it a handful of events, then it falls behind.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", g.node(leader).addr()))?
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await?;
    let mut raw = primus_client::coordinator_client::CoordinatorClient::new(ch);
    let mut stream = raw.watch_primary(primus_client::WatchPrimaryRequest::default()).await?.into_inner();

    let c = g.client(Duration::from_secs(10))?;
    let t0 = Instant::now();
    let n = 150;
    for i in 0..n {
        c.register_cluster(&format!("c{i}"), &["127.0.0.1:3306".into()], ClusterSettings::default()).await?;
    }
    let took = t0.elapsed();
    println!("{n} acknowledged writes with a stalled watcher: {} ms", took.as_millis());
    assert!(took < Duration::from_secs(30), "writes were held up: {took:?}");

    let mut got = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await? {
            Ok(Some(_)) => got += 1,
            Ok(None) => anyhow::bail!("stream ended without a status after {got} events"),
            Err(s) => break s,
        }
    };
    println!("slow watcher got {got} events, then: {:?} {}", status.code(), status.message());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("reconnect"), "{}", status.message());
    assert!(got < n, "the slow watcher was cut off before the end ({got} events)");
    // The node still serves: a new watcher starts with every cluster.
    let mut fresh = g.client_for(&[leader], Duration::from_secs(5))?.watch(None);
    let mut names = std::collections::BTreeSet::new();
    while names.len() < n {
        let ev = next(&mut fresh, Duration::from_secs(5)).await?;
        names.insert(ev.state.unwrap_or_default().cluster);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primusctl_primary_and_watch_answer_in_json_and_fail_clearly_for_unknown_clusters() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let c = g.client(Duration::from_secs(10))?;
    c.register_cluster("c", &["127.0.0.1:3306".into()], ClusterSettings::default()).await?;
    let ctl = primus_testkit::coordinator::bin("primusctl")?;
    let run = |args: &[&str]| {
        std::process::Command::new(&ctl).args(["--endpoints", &g.endpoints(), "--timeout", "5s"]).args(args).output()
    };
    let out = run(&["primary", "c", "-o", "json"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["cluster"], "c");
    assert_eq!(v["epoch"], 1);
    assert_eq!(v["consistency"], "linearizable");
    // A stale read answers from the contacted node's own state: let every node apply
    // the registration first (right after the write a follower may not have yet).
    let want: std::collections::BTreeSet<String> = ["c".to_string()].into();
    for id in 1..=3 {
        primus_integration_tests::wait_has_all(&g, id, &want, Duration::from_secs(5)).await?;
    }
    let out = run(&["primary", "c", "--stale"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stale read from node"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // `watch --count 2 -o json`: the current state, then the next change, as JSON lines.
    let mut child = std::process::Command::new(&ctl)
        .args(["--endpoints", &g.endpoints(), "watch", "-o", "json", "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.register_cluster("d", &["127.0.0.1:3306".into()], ClusterSettings::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "primusctl watch did not stop after 2 events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?, &mut stdout)?;
    assert!(status.success(), "{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}: {stdout}"))?;
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!((lines[0]["event"].as_str(), lines[0]["cluster"].as_str()), (Some("current"), Some("c")));
    assert_eq!((lines[1]["event"].as_str(), lines[1]["cluster"].as_str()), (Some("cluster_added"), Some("d")));

    // An unknown cluster: exit 1, one clear line.
    let out = run(&["primary", "nope"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster nope is not registered"), "{err}");
    Ok(())
}

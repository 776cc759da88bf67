//! primusd's HTTP endpoint on real processes: the documented status codes on
//! leaders and followers, the HAProxy write/read checks against a real MariaDB
//! topology (before and after a failover), Prometheus metrics (and that the shipped
//! alerting rules and Grafana dashboard use only metrics primusd exports), and garbage
//! that must not take the endpoint down.

use primus_client::ClusterSettings;
use primus_integration_tests::world::{World, WorldOptions};
use primus_testkit::agent::{AgentOptions, AgentProc};
use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions};
use primus_testkit::http::{get, parse_prometheus, request, send_raw, HttpResponse};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

fn http_addr(g: &CoordinatorGroup, id: u64) -> String {
    g.node(id).http_addr().expect("group started with http: true")
}

/// GET until `pred` holds (the endpoint reads local state, which converges).
async fn wait_get(
    addr: &str,
    path: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&HttpResponse) -> bool,
) -> anyhow::Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = get(addr, path, T).await;
        if let Ok(r) = &r {
            if pred(r) {
                return Ok(r.clone());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("{what}: GET {path} on {addr} not as expected after {timeout:?}; last answer: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_json(r: &HttpResponse, status: u16, what: &str) -> anyhow::Result<Value> {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    r.json()
}

fn http_group(nodes: usize, fault_injection: bool) -> anyhow::Result<CoordinatorGroup> {
    CoordinatorGroup::start(GroupOptions {
        nodes,
        http: true,
        fault_injection,
        extra_config: "[http]\nrequest_timeout_ms = 1000\n".into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_200_on_every_node_and_leader_200_only_on_the_leader() -> anyhow::Result<()> {
    let g = http_group(3, false)?;
    let (leader, term) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    for id in 1..=3u64 {
        let a = http_addr(&g, id);
        let h = wait_get(&a, "/health", "health", Duration::from_secs(10), |r| r.status == 200).await?;
        let body = assert_json(&h, 200, "/health")?;
        assert_eq!(body["node_id"], id);
        assert_eq!(body["leader_id"], leader);
        assert!(body["term"].as_u64().is_some_and(|t| t >= term), "{body}");
        assert!(body["applied_index"].as_u64().is_some(), "{body}");
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(body["role"], role, "{body}");
        if id == leader {
            // Quorum acknowledgements are refreshed every heartbeat; allow a loaded machine a retry.
            let l = wait_get(&a, "/leader", "leader check", Duration::from_secs(5), |r| r.status == 200).await?;
            assert_eq!(assert_json(&l, 200, "/leader on the leader")?["leads_with_quorum"], true);
        } else {
            let l = get(&a, "/leader", T).await?;
            assert_eq!(assert_json(&l, 503, "/leader on a follower")?["leads_with_quorum"], false);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_names_and_methods_get_documented_codes() -> anyhow::Result<()> {
    let g = http_group(3, false)?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    // Without [mysql] nothing discovers a topology: the cluster has no primary.
    primus_integration_tests::register(&g.client(Duration::from_secs(10))?, "c1").await?;
    for id in 1..=3u64 {
        let a = http_addr(&g, id);
        let r =
            wait_get(&a, "/primary/c1", "registered everywhere", Duration::from_secs(10), |r| r.status != 404).await?;
        let body = assert_json(&r, 503, "/primary of a cluster without primary")?;
        assert_eq!(body["cluster"], "c1");
        assert!(body["primary"].is_null(), "{body}");
        assert_eq!(body["epoch"], 1);
        assert_eq!(body["served_by"], id);

        let cases: &[(&str, &str, u16)] = &[
            ("GET", "/primary/nope", 404),
            ("GET", "/primary/nope/127.0.0.1:3306", 404),
            ("GET", "/replica/nope/127.0.0.1:3306", 404),
            ("GET", "/primary/c1/127.0.0.1:3306", 404), // not in the (empty) topology
            ("GET", "/primary/-bad-", 400),
            ("GET", "/primary/c1/not-an-address", 400),
            ("GET", "/replica/c1/host:0", 400),
            ("GET", "/replica/c1/host:99999", 400),
            ("GET", "/primary/%FF%FE", 400), // invalid UTF-8 once decoded
            ("GET", "/no/such/endpoint", 404),
            ("GET", "/ui/no-such-asset.js", 404),
            ("POST", "/health", 405),
            // Actions over HTTP need an [auth] token, which this group has none of.
            ("POST", "/api/v1/clusters/c1/ack", 403),
            ("GET", "/api/v1/clusters/c1/ack", 405),
            ("DELETE", "/primary/c1", 405),
        ];
        for (method, path, code) in cases {
            let r = request(&a, method, path, T).await?;
            let body = assert_json(&r, *code, &format!("{method} {path}"))?;
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {body}");
        }
    }
    // HEAD works like GET (HAProxy may use it); the answer has no body.
    let raw = send_raw(&http_addr(&g, 1), b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", T).await?;
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_group_fails_its_checks_and_the_new_leader_passes() -> anyhow::Result<()> {
    let mut g = http_group(3, true)?;
    let (old, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let old_addr = http_addr(&g, old);
    wait_get(&old_addr, "/leader", "leader check", Duration::from_secs(5), |r| r.status == 200).await?;
    g.isolate(&[old]).await?;
    // It still calls itself leader, but no quorum acknowledges it: both checks fail.
    let r = wait_get(&old_addr, "/leader", "isolated leader", Duration::from_secs(10), |r| r.status == 503).await?;
    assert_eq!(r.json()?["leads_with_quorum"], false);
    wait_get(&old_addr, "/health", "isolated leader health", Duration::from_secs(10), |r| r.status == 503).await?;
    // Liveness is not health: the process answers, so a liveness probe must not restart it.
    let live = get(&old_addr, "/live", T).await?;
    assert_eq!(assert_json(&live, 200, "/live on the isolated leader")?["has_leader"], false);
    let rest: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let (new, _) = g.wait_leader(&rest, Duration::from_secs(20)).await?;
    wait_get(&http_addr(&g, new), "/leader", "new leader", Duration::from_secs(10), |r| r.status == 200).await?;
    // The new leader counted the change, and sees the cut-off node stop answering while
    // the other follower answers (the data behind the quorum-at-risk alert).
    let silent = format!("primus_raft_member_last_answer_seconds{{member=\"{old}\",voter=\"true\"}}");
    let text = wait_get(&http_addr(&g, new), "/metrics", "the cut-off node silent", Duration::from_secs(10), |r| {
        metric_value(&r.text(), &silent).is_some_and(|s| s > 1.0)
    })
    .await?
    .text();
    assert!(metric_value(&text, "primus_raft_leader_changes_total").is_some_and(|n| n >= 1.0), "{text}");
    let other = rest.iter().find(|i| **i != new).expect("the other follower");
    let answering = format!("primus_raft_member_last_answer_seconds{{member=\"{other}\",voter=\"true\"}}");
    assert!(metric_value(&text, &answering).is_some_and(|s| s < 1.0), "{answering}:\n{text}");
    for id in &rest {
        wait_get(&http_addr(&g, *id), "/health", "majority health", Duration::from_secs(10), |r| r.status == 200)
            .await?;
    }
    g.heal().await?;
    wait_get(&old_addr, "/health", "healed node health", Duration::from_secs(20), |r| r.status == 200).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_headers_and_half_open_connections_do_not_take_the_endpoint_down() -> anyhow::Result<()> {
    let g = http_group(1, false)?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let a = http_addr(&g, 1);
    wait_get(&a, "/health", "health", Duration::from_secs(10), |r| r.status == 200).await?;

    // Half-open: connections that send nothing, or half a request, and stay.
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(&a).await?;
        if i % 2 == 0 {
            tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /health HTTP/1.1\r\nHost: x\r\n").await?;
        }
        idle.push(s);
    }
    // While they hang, the endpoint answers others.
    assert_eq!(get(&a, "/health", T).await?.status, 200);

    // Raw junk, binary junk, a 100 KB header, an invalid UTF-8 path, a bogus HTTP/2 preface.
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let junk: Vec<(&str, Vec<u8>)> = vec![
        ("text junk", b"HELLO THERE\r\n\r\n".to_vec()),
        ("binary junk", (0..=255u8).cycle().take(4096).collect()),
        ("100 KB header", big.into_bytes()),
        ("invalid UTF-8 path", b"GET /primary/\xff\xfe\xfd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad request line", b"GET\r\n\r\n".to_vec()),
        ("huge content-length", b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n".to_vec()),
        ("truncated h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00".to_vec()),
    ];
    for (what, bytes) in &junk {
        let out = send_raw(&a, bytes, T).await;
        // Whatever it answers (often nothing: the connection is closed) is not a 5xx.
        if let Ok(raw) = &out {
            if let Ok(r) = primus_testkit::http::parse(raw) {
                assert!(r.status < 500, "{what}: answered {}: {}", r.status, r.text());
            }
        }
        assert_eq!(get(&a, "/health", T).await?.status, 200, "endpoint down after {what}");
    }
    let big = send_raw(&a, format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(100 * 1024)).as_bytes(), T).await?;
    let r = primus_testkit::http::parse(&big)?;
    assert!([414, 431].contains(&r.status), "a 100 KB request line: {}", r.status);

    // The silent connections are closed by the server within 2 x request_timeout_ms (1 s).
    let started = Instant::now();
    for mut s in idle {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut s, &mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => anyhow::bail!("a half-open connection is still open after {:?}", started.elapsed()),
            }
        }
    }
    assert!(g.node(1).log_tail(200).lines().all(|l| !l.contains("panicked")), "{}", g.node(1).log_tail(50));
    assert_eq!(get(&a, "/health", T).await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_http_endpoint_with_the_node_and_exits_0() -> anyhow::Result<()> {
    let mut g = http_group(1, false)?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let a = http_addr(&g, 1);
    wait_get(&a, "/health", "health", Duration::from_secs(10), |r| r.status == 200).await?;
    // An idle client connection must not hold the shutdown up.
    let _idle = tokio::net::TcpStream::connect(&a).await?;
    let started = Instant::now();
    let code = tokio::task::block_in_place(|| g.terminate(1, Duration::from_secs(10)))?;
    assert_eq!(code, Some(0), "{}", g.node(1).log_tail(20));
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    let log = g.node(1).log_tail(50);
    assert!(log.contains("HTTP endpoint stopped") && log.contains("primusd stopped cleanly"), "{log}");
    assert!(tokio::net::TcpStream::connect(&a).await.is_err(), "HTTP port still accepting after exit");
    Ok(())
}

#[test]
fn an_http_port_in_use_is_a_startup_error_naming_http_listen() -> anyhow::Result<()> {
    let busy = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = primus_testkit::ports::free_port()?;
    let dir = tempfile::tempdir()?;
    let cfg = format!(
        "node_id = 1\nlisten = \"127.0.0.1:{port}\"\nhttp_listen = \"{}\"\ndata_dir = \"{}\"\n\
         [[initial_members]]\nid = 1\naddr = \"127.0.0.1:{port}\"\n",
        busy.local_addr()?,
        dir.path().join("data").display()
    );
    let path = dir.path().join("primusd.toml");
    std::fs::write(&path, cfg)?;
    let out = std::process::Command::new(bin("primusd")?).arg("--config").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {} (key `http_listen`)", busy.local_addr()?)), "{stderr}");
    Ok(())
}

async fn world() -> anyhow::Result<World> {
    let w = World::start(WorldOptions { http: true, ..Default::default() }).await?;
    w.client()?.register_cluster("c", &[w.sandbox.primary().addr()], ClusterSettings::default()).await?;
    w.wait_topology("c", "all coordinators see every instance", Duration::from_secs(15), |t| {
        t.instances.len() == 3 && t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
    })
    .await?;
    Ok(w)
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_replica_checks_follow_the_real_topology_on_every_node() -> anyhow::Result<()> {
    let w = world().await?;
    let primary = w.sandbox.primary().addr();
    let (r0, r1) = (w.sandbox.replicas()[0].addr(), w.sandbox.replicas()[1].addr());
    for id in 1..=3u64 {
        let a = http_addr(&w.group, id);
        let r = wait_get(&a, "/primary/c", "primary known", Duration::from_secs(10), |r| r.status == 200).await?;
        let body = assert_json(&r, 200, "/primary/c")?;
        assert_eq!(body["primary"], primary.as_str(), "{body}");
        assert_eq!(body["epoch"], 1);
        assert!(body["failover"].is_null(), "{body}");
        assert_eq!(body["served_by"], id);
        assert!(body["applied_index"].as_u64().is_some_and(|i| i > 0), "{body}");

        let r =
            wait_get(&a, &format!("/primary/c/{primary}"), "write check", Duration::from_secs(5), |r| r.status == 200)
                .await?;
        assert_eq!(assert_json(&r, 200, "write check on the primary")?["writable"], true);
        for replica in [&r0, &r1] {
            let r = get(&a, &format!("/primary/c/{replica}"), T).await?;
            let body = assert_json(&r, 503, "write check on a replica")?;
            assert!(body["reasons"][0].as_str().is_some_and(|s| s.contains("not the primary")), "{body}");
            let r = wait_get(&a, &format!("/replica/c/{replica}"), "read check", Duration::from_secs(10), |r| {
                r.status == 200
            })
            .await?;
            let body = assert_json(&r, 200, "read check on a healthy replica")?;
            assert_eq!(body["io_running"], "yes", "{body}");
            assert_eq!(body["sql_running"], true, "{body}");
        }
        let r = get(&a, &format!("/replica/c/{primary}"), T).await?;
        let body = assert_json(&r, 503, "read check on the primary")?;
        assert!(body["reasons"].to_string().contains("role is primary"), "{body}");
        let r = get(&a, "/primary/c/127.0.0.1:1", T).await?;
        assert_json(&r, 404, "write check on an instance outside the topology")?;
    }

    // A replica whose replication stops leaves the read pool on every node; the other stays.
    w.sandbox.replicas()[0].stop_replication().await?;
    for id in 1..=3u64 {
        let a = http_addr(&w.group, id);
        let r =
            wait_get(&a, &format!("/replica/c/{r0}"), "stopped replica", Duration::from_secs(10), |r| r.status == 503)
                .await?;
        let body = assert_json(&r, 503, "read check on a stopped replica")?;
        let reasons = body["reasons"].to_string();
        assert!(reasons.contains("IO thread") && reasons.contains("SQL thread"), "{body}");
        assert_eq!(get(&a, &format!("/replica/c/{r1}"), T).await?.status, 200);
    }
    w.sandbox.replicas()[0].start_replication().await?;
    wait_get(&http_addr(&w.group, 1), &format!("/replica/c/{r0}"), "restarted replica", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .await?;

    // Metrics on the leader: every family, parseable, with the cluster's state.
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let a = http_addr(&w.group, leader);
    let m = wait_get(&a, "/metrics", "analysis in metrics", Duration::from_secs(10), |r| {
        r.text().contains("primus_cluster_analysis{cluster=\"c\",code=\"NoProblem\"} 1")
    })
    .await?;
    assert!(m.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{m:?}");
    let text = m.text();
    let families = parse_prometheus(&text)?;
    for f in [
        "primus_raft_term",
        "primus_raft_is_leader",
        "primus_raft_leader_id",
        "primus_raft_commit_index",
        "primus_raft_applied_index",
        "primus_raft_last_log_index",
        "primus_cluster_analysis",
        "primus_cluster_epoch",
        "primus_cluster_failover_in_progress",
        "primus_cluster_has_primary",
        "primus_split_fences",
        "primus_probe_duration_seconds",
        "primus_instance_up",
        "primus_watch_subscribers",
        // Issue 17's observability pack.
        "primus_build_info",
        "primus_raft_voters",
        "primus_raft_leader_changes_total",
        "primus_raft_member_last_answer_seconds",
        "primus_instance_role",
        "primus_instance_read_only",
        "primus_instance_replicating",
        "primus_instance_replication_lag_seconds",
        "primus_instance_heartbeat_delay_seconds",
        "primus_instance_divergent_transactions",
        "primus_instance_errant_transactions",
        "primus_last_split_fence_timestamp_seconds",
        "primus_hook_runs_total",
        "primus_hook_failures_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
    ] {
        assert!(families.contains_key(f), "family {f} missing from /metrics:\n{text}");
    }
    assert_eq!(families["primus_raft_leader_changes_total"], "counter");
    assert_eq!(families["primus_hook_runs_total"], "counter");
    assert_eq!(metric_value(&text, "primus_raft_voters"), Some(3.0), "{text}");
    let build = "primus_build_info{commit=\"";
    assert!(
        text.lines().any(|l| l.starts_with(build) && l.contains(env!("CARGO_PKG_VERSION")) && l.ends_with(" 1")),
        "{text}"
    );
    // The leader answers itself at once; the followers answer its heartbeats.
    for id in 1..=3u64 {
        let s = format!("primus_raft_member_last_answer_seconds{{member=\"{id}\",voter=\"true\"}}");
        assert!(metric_value(&text, &s).is_some_and(|v| v < 2.0), "{s}:\n{text}");
    }
    let role = format!("primus_instance_role{{cluster=\"c\",instance=\"{primary}\",role=\"primary\"}}");
    assert_eq!(metric_value(&text, &role), Some(1.0), "{text}");
    let ro = format!("primus_instance_read_only{{cluster=\"c\",instance=\"{primary}\"}}");
    assert_eq!(metric_value(&text, &ro), Some(0.0), "{text}");
    assert_eq!(families["primus_probe_duration_seconds"], "histogram");
    // primus_probe_errors_total has no series until a probe fails (see the failover test).
    assert_eq!(metric_value(&text, "primus_raft_is_leader"), Some(1.0), "{text}");
    assert_eq!(metric_value(&text, "primus_raft_leader_id"), Some(leader as f64), "{text}");
    assert_eq!(metric_value(&text, "primus_cluster_epoch{cluster=\"c\"}"), Some(1.0), "{text}");
    assert_eq!(metric_value(&text, "primus_cluster_failover_in_progress{cluster=\"c\"}"), Some(0.0), "{text}");
    assert_eq!(metric_value(&text, "primus_split_fences{cluster=\"c\"}"), Some(0.0), "{text}");
    for i in [&primary, &r0, &r1] {
        let s = format!("primus_instance_up{{cluster=\"c\",instance=\"{i}\"}}");
        assert_eq!(metric_value(&text, &s), Some(1.0), "{s}:\n{text}");
        let count = format!("primus_probe_duration_seconds_count{{instance=\"{i}\"}}");
        assert!(metric_value(&text, &count).is_some_and(|n| n >= 1.0), "{count}:\n{text}");
    }
    // r0's replication was restarted above: the leader's own probe may see it a probe later.
    let r0_replicating = format!("primus_instance_replicating{{cluster=\"c\",instance=\"{r0}\"}}");
    let r0_lag = format!("primus_instance_replication_lag_seconds{{cluster=\"c\",instance=\"{r0}\"}}");
    let text = wait_get(&a, "/metrics", "r0 replicating again", Duration::from_secs(10), |r| {
        let t = r.text();
        metric_value(&t, &r0_replicating) == Some(1.0) && metric_value(&t, &r0_lag).is_some()
    })
    .await?
    .text();
    for r in [&r0, &r1] {
        let labels = format!("{{cluster=\"c\",instance=\"{r}\"}}");
        assert_eq!(metric_value(&text, &format!("primus_instance_replicating{labels}")), Some(1.0), "{text}");
        assert_eq!(metric_value(&text, &format!("primus_instance_read_only{labels}")), Some(1.0), "{text}");
        assert_eq!(metric_value(&text, &format!("primus_instance_errant_transactions{labels}")), Some(0.0), "{text}");
        let lag = format!("primus_instance_replication_lag_seconds{labels}");
        assert!(metric_value(&text, &lag).is_some_and(|s| s < 30.0), "{lag}:\n{text}");
    }
    // The heartbeat row reaches the replicas within a few heartbeat periods.
    let hb = format!("primus_instance_heartbeat_delay_seconds{{cluster=\"c\",instance=\"{r1}\"}}");
    let text = wait_get(&a, "/metrics", "heartbeat delay in metrics", Duration::from_secs(10), |r| {
        metric_value(&r.text(), &hb).is_some()
    })
    .await?
    .text();
    assert!(metric_value(&text, &hb).is_some_and(|s| s < 10.0), "{hb}:\n{text}");
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let text = get(&http_addr(&w.group, follower), "/metrics", T).await?.text();
    assert_eq!(metric_value(&text, "primus_raft_is_leader"), Some(0.0), "{text}");
    // Only the leader knows when members answered it.
    assert!(!text.contains("primus_raft_member_last_answer_seconds{"), "{text}");
    Ok(())
}

/// Every metric name (`primus_…`, `process_…`) in a rules file or dashboard.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["primus_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix).map(|i| i + from) {
            let starts_word = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            let end = text[at..].find(|c: char| !(c.is_ascii_lowercase() || c == '_')).map_or(text.len(), |i| i + at);
            if starts_word {
                names.insert(text[at..end].to_string());
            }
            from = end.max(at + 1);
        }
    }
    names
}

/// The sample names of a Prometheus text exposition (`…_bucket`, `…_sum`, `…_count` of
/// histograms included) and its family names.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.extend(rest.split_whitespace().next().map(str::to_string));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

fn repo_file(path: &str) -> anyhow::Result<String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
}

#[test]
fn every_alert_links_a_runbook_section_of_the_operations_guide() -> anyhow::Result<()> {
    let rules = repo_file("deploy/prometheus/alerts.yml")?;
    let ops = repo_file("docs/operations.md")?;
    // GitHub's anchors: headings lowercased, spaces to '-', other punctuation dropped.
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#').map(|h| h.trim_start_matches('#').trim()))
        .map(|h| {
            h.to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let (mut alerts, mut urls) = (0, 0);
    for line in rules.lines().map(str::trim) {
        if line.starts_with("- alert:") {
            alerts += 1;
        }
        if let Some(url) = line.strip_prefix("runbook_url:") {
            urls += 1;
            let anchor = url.trim().strip_prefix("docs/operations.md#");
            let anchor = anchor.ok_or_else(|| anyhow::anyhow!("runbook_url {url} is not into docs/operations.md"))?;
            anyhow::ensure!(anchors.contains(anchor), "runbook_url {url}: no such section in docs/operations.md");
        }
    }
    assert!(alerts >= 10 && urls == alerts, "{alerts} alerts, {urls} runbook links");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_only_metrics_a_real_primusd_exports() -> anyhow::Result<()> {
    let rules = repo_file("deploy/prometheus/alerts.yml")?;
    let dashboard = repo_file("deploy/grafana/primus.json")?;
    serde_json::from_str::<Value>(&dashboard).map_err(|e| anyhow::anyhow!("primus.json is not JSON: {e}"))?;
    let mut used = metric_names_in(&rules);
    used.extend(metric_names_in(&dashboard));
    assert!(used.len() > 20, "{used:?}");

    // A hook, so hook runs are counted; an agent, so its lease is; a switchover, so
    // the last failover's series exist; a maintenance; a dead replica, so probe errors do.
    let w = World::start(WorldOptions {
        http: true,
        extra_config: "[hooks]\npost_switchover = [\"true\"]\n".into(),
        ..Default::default()
    })
    .await?;
    w.client()?.register_cluster("c", &[w.sandbox.primary().addr()], ClusterSettings::default()).await?;
    w.wait_topology("c", "all coordinators see every instance", Duration::from_secs(15), |t| {
        t.instances.len() == 3 && t.instances.iter().all(|i| i.seen_by.len() == 3 && i.seen_by.values().all(|ok| *ok))
    })
    .await?;
    let primary = w.sandbox.primary().addr();
    let (new, other) = (w.sandbox.replicas()[0].addr(), w.sandbox.replicas()[1].clone());
    let opts = AgentOptions { cluster: "c".into(), coordinators: vec![w.group.endpoints()], ..Default::default() };
    let agent = AgentProc::start(w.sandbox.primary(), &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;

    // The leader counts the agent's lease as held, with time left.
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let held = format!("primus_agent_lease{{cluster=\"c\",instance=\"{primary}\",state=\"held\"}} 1");
    let text = wait_get(&http_addr(&w.group, leader), "/metrics", "lease held", Duration::from_secs(10), |r| {
        r.text().contains(&held)
    })
    .await?
    .text();
    let left = format!("primus_agent_lease_remaining_seconds{{cluster=\"c\",instance=\"{primary}\"}}");
    assert!(metric_value(&text, &left).is_some_and(|s| s > 0.0 && s <= 1.5), "{left}:\n{text}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = w.client()?;
    client.failover("c", Some(&new), true).await?;
    w.wait_topology("c", "the switchover's primary", Duration::from_secs(30), |t| t.primary == new).await?;
    client.maintenance("c", Some(&other.addr()), true, "metrics test", Duration::from_secs(600)).await?;
    other.kill9()?;

    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let errors = format!("primus_probe_errors_total{{instance=\"{}\",kind=", other.addr());
    let text =
        wait_get(&http_addr(&w.group, leader), "/metrics", "everything exported", Duration::from_secs(20), |r| {
            let t = r.text();
            t.contains(&errors)
                && t.contains("primus_hook_runs_total{hook=\"post_switchover\"} 1")
                && t.contains("primus_last_failover_duration_seconds{cluster=\"c\",kind=\"switchover\"")
                && t.contains("primus_in_maintenance{")
        })
        .await?
        .text();
    assert!(text.contains("primus_hook_failures_total{hook=\"post_switchover\"} 0"), "{text}");
    let exported = exported_names(&text);
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/prometheus/alerts.yml or deploy/grafana/primus.json but not on a real primusd's /metrics: \
         {missing:?}\n{text}"
    );
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_check_moves_to_the_promoted_replica_after_a_failover() -> anyhow::Result<()> {
    let w = world().await?;
    let old = w.sandbox.primary().addr();
    // Replicas show replication progress before the fault, as failover tests require.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in 1..=3u64 {
        wait_get(&http_addr(&w.group, id), &format!("/primary/c/{old}"), "write check", Duration::from_secs(10), |r| {
            r.status == 200
        })
        .await?;
    }
    w.sandbox.primary().kill9()?;
    let a1 = http_addr(&w.group, 1);
    let r = wait_get(&a1, "/primary/c", "new primary", Duration::from_secs(30), |r| {
        r.json().is_ok_and(|b| b["epoch"] == 2 && b["failover"].is_null() && b["primary"] != old.as_str())
    })
    .await?;
    let new = r.json()?["primary"].as_str().unwrap_or_default().to_string();
    assert!(w.sandbox.replicas().iter().any(|i| i.addr() == new), "{new} is not a former replica");
    for id in 1..=3u64 {
        let a = http_addr(&w.group, id);
        wait_get(&a, &format!("/primary/c/{new}"), "write check on the new primary", Duration::from_secs(10), |r| {
            r.status == 200
        })
        .await?;
        let r = get(&a, &format!("/primary/c/{old}"), T).await?;
        assert_json(&r, 503, "write check on the old primary")?;
        let r = get(&a, &format!("/replica/c/{old}"), T).await?;
        let body = assert_json(&r, 503, "read check on the demoted old primary")?;
        assert!(body["reasons"].to_string().contains("demoted"), "{body}");
    }
    let text = wait_get(&a1, "/metrics", "failover in metrics", Duration::from_secs(5), |r| {
        r.text().contains("primus_failovers{cluster=\"c\",kind=\"automatic\",outcome=\"succeeded\"} 1")
    })
    .await?
    .text();
    assert_eq!(metric_value(&text, "primus_cluster_epoch{cluster=\"c\"}"), Some(2.0), "{text}");
    let d = "primus_last_failover_duration_seconds{cluster=\"c\",kind=\"automatic\",outcome=\"succeeded\"}";
    assert!(metric_value(&text, d).is_some_and(|s| s > 0.0 && s < 30.0), "{d}:\n{text}");
    let down = format!("primus_instance_up{{cluster=\"c\",instance=\"{old}\"}}");
    assert_eq!(metric_value(&text, &down), Some(0.0), "{text}");
    assert!(text.contains(&format!("primus_probe_errors_total{{instance=\"{old}\",kind=")), "{text}");
    assert_eq!(parse_prometheus(&text)?.get("primus_probe_errors_total").map(String::as_str), Some("counter"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_s_lease_shows_expired_on_the_leader_while_no_failover_replaces_the_primary(
) -> anyhow::Result<()> {
    // Automatic failover off: the primary stays the primary once its agent's lease ran
    // out, which is what PrimusAgentLeaseLost and PrimusFailoverBlocked fire on.
    let w = World::start(WorldOptions {
        http: true,
        extra_config: "[failover]\nautomatic = false\n".into(),
        ..Default::default()
    })
    .await?;
    w.client()?.register_cluster("c", &[w.sandbox.primary().addr()], ClusterSettings::default()).await?;
    w.wait_topology("c", "every instance seen", Duration::from_secs(15), |t| t.instances.len() == 3).await?;
    let primary = w.sandbox.primary().addr();
    let opts = AgentOptions { cluster: "c".into(), coordinators: vec![w.group.endpoints()], ..Default::default() };
    let mut agent = AgentProc::start(w.sandbox.primary(), &opts)?;
    agent.wait_log("lease granted", Duration::from_secs(10)).await?;
    agent.wait_log("sentinel started", Duration::from_secs(5)).await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(5)).await?;
    let a = http_addr(&w.group, leader);
    let state = |s: &str| format!("primus_agent_lease{{cluster=\"c\",instance=\"{primary}\",state=\"{s}\"}} 1");
    wait_get(&a, "/metrics", "lease held", Duration::from_secs(5), |r| r.text().contains(&state("held"))).await?;

    agent.kill9()?;
    let text =
        wait_get(&a, "/metrics", "lease expired", Duration::from_secs(15), |r| r.text().contains(&state("expired")))
            .await?
            .text();
    let left = format!("primus_agent_lease_remaining_seconds{{cluster=\"c\",instance=\"{primary}\"}}");
    assert_eq!(metric_value(&text, &left), Some(0.0), "{text}");
    assert!(!text.contains(&state("held")), "{text}");
    // The sentinel fenced it: every coordinator's probe sees the primary read-only, or
    // down when setting read_only did not finish in time and the sentinel escalated to
    // SIGKILL (its documented fallback, seen on a loaded CI machine).
    let ro = format!("primus_instance_read_only{{cluster=\"c\",instance=\"{primary}\"}}");
    let up = format!("primus_instance_up{{cluster=\"c\",instance=\"{primary}\"}}");
    for id in 1..=3u64 {
        let r = wait_get(&http_addr(&w.group, id), "/metrics", "primary fenced", Duration::from_secs(10), |r| {
            let t = r.text();
            metric_value(&t, &ro) == Some(1.0) || metric_value(&t, &up) == Some(0.0)
        })
        .await?;
        if metric_value(&r.text(), &up) == Some(0.0) {
            println!("node {id}: the primary is down: the sentinel killed it rather than setting read_only");
        }
    }
    // Followers export no lease state (leases live on the leader).
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let text = get(&http_addr(&w.group, follower), "/metrics", T).await?.text();
    assert!(!text.contains("primus_agent_lease{"), "{text}");
    Ok(())
}

// ---- The JSON API under /api/v1 -------------------------------------------------------

/// Run the real `primusctl -o json` against one coordinator's gRPC port (stdin closed).
fn primusctl_json(g: &CoordinatorGroup, id: u64, args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.node(id).addr(), "--timeout", "15s", "-o", "json"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "primusctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).map_err(|e| anyhow::anyhow!("primusctl {args:?} printed no JSON: {e}"))
}

/// Where `a` and `b` differ: a key present in one only, or a value that differs at a
/// key not named in `volatile` (values that move between two reads: clocks, probes).
fn differences(a: &Value, b: &Value, volatile: &[&str], at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(_), Some(_)) if volatile.contains(&k.as_str()) => {}
                    (Some(u), Some(v)) => differences(u, v, volatile, &format!("{at}.{k}"), out),
                    _ => out.push(format!("{at}.{k}: only in one")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                differences(u, v, volatile, &format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: {a} != {b}")),
        _ => {}
    }
}

/// GET `path` on node `id`'s HTTP API and run `primusctl -o json ARGS` on its gRPC
/// port until the two agree (the applied index may move between the two reads).
async fn api_equals_primusctl(
    g: &CoordinatorGroup,
    id: u64,
    path: &str,
    args: &[&str],
    volatile: &[&str],
) -> anyhow::Result<Value> {
    let mut last = Vec::new();
    for _ in 0..10 {
        let r = get(&http_addr(g, id), path, T).await?;
        let api = assert_json(&r, 200, path)?;
        let cli = tokio::task::block_in_place(|| primusctl_json(g, id, args))?;
        last.clear();
        differences(&api, &cli, volatile, "", &mut last);
        if last.is_empty() {
            return Ok(api);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("GET {path} on node {id} and primusctl {args:?} differ: {last:?}")
}

fn has_fields(v: &Value, fields: &[&str], what: &str) {
    for f in fields {
        assert!(v.get(*f).is_some(), "{what}: no field {f:?} in {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_endpoint_answers_what_primusctl_json_prints_for_the_same_command() -> anyhow::Result<()> {
    let w = world().await?;
    // A switchover, so that the history has a failover with steps to compare.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new = w.sandbox.replicas()[0].addr();
    w.client()?.failover("c", Some(&new), true).await?;
    w.wait_topology("c", "the switchover's primary", Duration::from_secs(30), |t| t.primary == new).await?;
    let g = &w.group;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(5)).await?;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    // Probe results, clocks and the GTID the heartbeat writes move between two reads.
    let probe = ["observed_at_ms", "heartbeat_delay_ms", "probe_latency_us", "gtid_executed", "seconds_behind"];
    for id in [leader, follower] {
        let s = api_equals_primusctl(
            g,
            id,
            "/api/v1/status",
            &["status", "--stale"],
            &["millis_since_quorum_ack", "millis_since_last_contact"],
        )
        .await?;
        has_fields(
            &s,
            &["leader_id", "term", "commit_index", "applied_index", "members", "served_by", "role"],
            "status",
        );
        assert_eq!(s["served_by"], id);
        assert_eq!(s["leader_id"], leader);
        assert_eq!(s["members"].as_array().map(Vec::len), Some(3), "{s}");
        // Only the leader knows when each member last answered it.
        let contact = &s["members"][0]["millis_since_last_contact"];
        assert_eq!(contact.is_u64(), id == leader, "{s}");

        let c = api_equals_primusctl(g, id, "/api/v1/clusters", &["cluster", "list", "--stale"], &[]).await?;
        has_fields(&c, &["clusters", "applied_index", "served_by"], "clusters");
        assert_eq!(c["clusters"][0]["name"], "c", "{c}");

        let t =
            api_equals_primusctl(g, id, "/api/v1/clusters/c/topology", &["topology", "c", "--stale"], &probe).await?;
        has_fields(&t, &["cluster", "epoch", "primary", "instances", "settings", "served_by"], "topology");
        assert_eq!(t["primary"], new.as_str(), "{t}");
        assert_eq!(t["epoch"], 2, "{t}");
        assert_eq!(t["instances"].as_array().map(Vec::len), Some(3), "{t}");

        let a = api_equals_primusctl(
            g,
            id,
            "/api/v1/clusters/c/analysis",
            &["analysis", "c", "--stale"],
            &["at_ms", "evidence"],
        )
        .await?;
        has_fields(&a, &["cluster", "code", "evidence", "actionable", "epoch", "consistency"], "analysis");
        assert_eq!(a["consistency"], "stale");

        // primusctl history is answered by the leader, the API by the node asked.
        let h = api_equals_primusctl(g, id, "/api/v1/clusters/c/history", &["history", "c"], &["served_by"]).await?;
        assert_eq!(h["served_by"], id, "{h}");
        has_fields(&h, &["failovers", "refusals", "split_fences", "unfences"], "history");
        let f = &h["failovers"][0];
        assert_eq!(f["kind"], "switchover", "{h}");
        assert_eq!(f["new_primary"], new.as_str(), "{h}");
        // RFC 3339 next to the milliseconds.
        assert!(f["started_at"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{f}");
        assert!(f["steps"][0]["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{f}");
        // The table shows when it started in local time (`2026-12-04 02:25:03.120 +01:00`).
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(bin("primusctl")?)
                .args(["--endpoints", &g.node(id).addr(), "history", "c"])
                .output()
                .map_err(anyhow::Error::from)
        })?;
        let table = String::from_utf8_lossy(&out.stdout);
        let started = table.lines().find_map(|l| l.trim().strip_prefix("started ")).unwrap_or_default();
        let b = started.as_bytes();
        assert!(
            b.len() > 29 && b[4] == b'-' && b[10] == b' ' && b[19] == b'.' && (b[24] == b'+' || b[24] == b'-'),
            "no local start time in the history table:\n{table}"
        );

        let p = api_equals_primusctl(g, id, "/api/v1/clusters/c/primary", &["primary", "c", "--stale"], &[]).await?;
        has_fields(
            &p,
            &["cluster", "primary", "epoch", "failover", "demoted", "applied_index", "served_by"],
            "primary",
        );
        assert_eq!(p["primary"], new.as_str(), "{p}");
        assert_eq!(p["served_by"], id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_json_404_for_an_unknown_cluster_and_400_for_a_malformed_name() -> anyhow::Result<()> {
    let g = http_group(3, false)?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    primus_integration_tests::register(&g.client(Duration::from_secs(10))?, "c1").await?;
    let a = http_addr(&g, 2);
    wait_get(&a, "/api/v1/clusters", "registered", Duration::from_secs(10), |r| {
        r.json().is_ok_and(|b| b["clusters"][0]["name"] == "c1")
    })
    .await?;
    for what in ["topology", "analysis", "history", "primary"] {
        let path = format!("/api/v1/clusters/nope/{what}");
        let body = assert_json(&get(&a, &path, T).await?, 404, &path)?;
        assert!(body["error"].as_str().is_some_and(|e| e.contains("nope")), "{path}: {body}");
        let path = format!("/api/v1/clusters/-bad-/{what}");
        let body = assert_json(&get(&a, &path, T).await?, 400, &path)?;
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
    }
    // A node without [mysql] probes nothing and analyses nothing: 503, in JSON.
    for path in ["/api/v1/clusters/c1/topology", "/api/v1/clusters/c1/analysis"] {
        let body = assert_json(&get(&a, path, T).await?, 503, path)?;
        assert!(body["error"].as_str().is_some_and(|e| e.contains("[mysql]")), "{path}: {body}");
    }
    for (method, path, code) in [("GET", "/api/v1/nothing", 404), ("POST", "/api/v1/status", 405)] {
        let body = assert_json(&request(&a, method, path, T).await?, code, path)?;
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: {body}");
    }
    Ok(())
}

/// One GET with an `Authorization` header (or none).
async fn get_with_token(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<HttpResponse> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let raw =
        send_raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(), T)
            .await?;
    primus_testkit::http::parse(&raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reads_need_the_token_when_grpc_reads_do() -> anyhow::Result<()> {
    let token = "s3cret-api-token";
    let g = CoordinatorGroup::start(GroupOptions {
        nodes: 1,
        http: true,
        token: Some(token.into()),
        require_token_for_reads: true,
        ..Default::default()
    })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let a = http_addr(&g, 1);
    wait_get(&a, "/health", "health", Duration::from_secs(10), |r| r.status == 200).await?;
    for path in ["/api/v1/status", "/api/v1/clusters", "/api/v1/clusters/c/primary", "/api/v1/clusters/c/history"] {
        let r = get_with_token(&a, path, None).await?;
        let body = assert_json(&r, 401, path)?;
        assert!(body["error"].as_str().is_some_and(|e| e.contains("Bearer")), "{path}: {body}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        assert_json(&get_with_token(&a, path, Some("wrong")).await?, 403, path)?;
    }
    let ok = assert_json(&get_with_token(&a, "/api/v1/status", Some(token)).await?, 200, "with the token")?;
    assert_eq!(ok["served_by"], 1);
    let missing = get_with_token(&a, "/api/v1/clusters/c/primary", Some(token)).await?;
    assert_json(&missing, 404, "an unknown cluster, with the token")?;
    // The description is open; the health checks stay open too.
    assert_json(&get_with_token(&a, "/api/v1/openapi.json", None).await?, 200, "openapi.json")?;
    assert_eq!(get_with_token(&a, "/health", None).await?.status, 200);

    // Without require_token_for_reads the token guards writes only: reads are open.
    let open = CoordinatorGroup::start(GroupOptions {
        nodes: 1,
        http: true,
        token: Some(token.into()),
        ..Default::default()
    })?;
    open.wait_leader(&[], Duration::from_secs(20)).await?;
    let r =
        wait_get(&http_addr(&open, 1), "/api/v1/status", "open reads", Duration::from_secs(10), |r| r.status == 200)
            .await?;
    assert_json(&r, 200, "reads without a token")?;
    Ok(())
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_lists_every_served_api_path_and_every_listed_path_is_served() -> anyhow::Result<()> {
    let w = world().await?;
    let a = http_addr(&w.group, 1);
    let doc = assert_json(&get(&a, "/api/v1/openapi.json", T).await?, 200, "openapi.json")?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    let listed: BTreeSet<String> = doc["paths"].as_object().map(|p| p.keys().cloned().collect()).unwrap_or_default();
    // Every listed path answers 200 with JSON, with exactly the fields its schema lists.
    for p in &listed {
        let path = p.replace("{name}", "c");
        if doc["paths"][p.as_str()]["get"].is_null() {
            // An action (POST): this world has no [auth] token, so it is refused as read-only.
            assert!(!doc["paths"][p.as_str()]["post"].is_null(), "{p}: neither GET nor POST");
            let r = request(&a, "POST", &path, T).await?;
            let body = assert_json(&r, 403, &format!("POST {path}"))?;
            assert!(body["error"].as_str().is_some_and(|e| e.contains("read-only")), "{path}: {body}");
            continue;
        }
        wait_get(&a, &path, "a listed path", Duration::from_secs(10), |r| r.status == 200).await?;
        let body = assert_json(&get(&a, &path, T).await?, 200, &path)?;
        let schema = &doc["paths"][p.as_str()]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            let schema = &doc["components"]["schemas"][name];
            assert_eq!(keys(&body), keys(&schema["properties"]), "{path}: answer vs schema {name}");
            // Arrays of objects described inline (members, clusters, instances): their items too.
            for (field, prop) in schema["properties"].as_object().into_iter().flatten() {
                if let (Some(first), Some(items)) = (body[field].get(0), prop["items"].get("properties")) {
                    assert_eq!(keys(first), keys(items), "{path}: {field}[0] vs schema {name}.{field}");
                }
            }
        }
    }
    // Every /api/v1 path documented in docs/http.md (which lists every endpoint) is listed,
    // and each listed one is documented.
    let docs = repo_file("docs/http.md")?;
    let mut documented = BTreeSet::new();
    for line in docs.lines() {
        if let Some(rest) = line.strip_prefix("### `GET /api/v1/").or_else(|| line.strip_prefix("### `POST /api/v1/")) {
            let path = rest.split('`').next().unwrap_or_default();
            documented.insert(format!("/api/v1/{}", path.replace("NAME", "{name}")));
        }
    }
    assert_eq!(documented, listed, "docs/http.md's /api/v1 sections vs openapi.json");
    // Paths next to the served ones are not served: the API is exactly what is listed.
    for p in ["/api/v1", "/api/v1/", "/api/v1/clusters/c", "/api/v1/clusters/c/audit", "/api/v2/status"] {
        assert_json(&get(&a, p, T).await?, 404, p)?;
    }
    Ok(())
}

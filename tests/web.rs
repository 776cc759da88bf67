//! The operator's page (crates/primus-server/src/web.rs) in a real browser: Debian's
//! headless Chromium, driven through chromedriver, on real coordinators watching a
//! real MariaDB sandbox. A missing browser fails these tests with how to install it.
//!
//! Screenshots of the states the tests check are kept under
//! `$CARGO_TARGET_TMPDIR/web-screenshots` (or `PAGE_SCREENSHOT_DIR`).

use primus_integration_tests::browser::Browser;
use primus_integration_tests::world::{wait_finished, World, WorldOptions};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "web-test-token";

fn screenshot_dir() -> PathBuf {
    std::env::var_os("PAGE_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots"))
}

/// A JS string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `POST path` with a JSON body and maybe a bearer token: (status, body).
async fn post(addr: &str, path: &str, body: &str, token: Option<&str>) -> anyhow::Result<(u16, serde_json::Value)> {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = primus_testkit::http::send_raw(addr, req.as_bytes(), Duration::from_secs(30)).await?;
    let r = primus_testkit::http::parse(&raw)?;
    Ok((r.status, r.json()?))
}

/// Click `button` (a CSS selector) on the page.
async fn click(b: &Browser, css: &str) -> anyhow::Result<()> {
    b.client.find(fantoccini::Locator::Css(css)).await?.click().await?;
    Ok(())
}

/// Type the cluster's name into the open confirmation and confirm.
async fn confirm(b: &Browser, cluster: &str) -> anyhow::Result<()> {
    b.client.find(fantoccini::Locator::Id("confirm-input")).await?.send_keys(cluster).await?;
    click(b, "#confirm-ok").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_tree_and_leader_then_follows_a_kill9_failover_live_and_acts_with_the_token(
) -> anyhow::Result<()> {
    let shots = screenshot_dir();
    let w = World::start(WorldOptions {
        http: true,
        token: Some(TOKEN.into()),
        probe_interval_ms: 1000,
        query_timeout_ms: 1000,
        ..Default::default()
    })
    .await?;
    w.register_sandbox("web", Duration::from_millis(1500)).await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    // A follower's page: it asks the leader for what only the leader knows.
    let follower = *w.group.nodes.keys().find(|id| **id != leader).expect("3 nodes");
    let http = w.group.node(follower).http_addr().expect("http endpoint");
    let old = w.sandbox.primary().addr();
    let b = Browser::start().await?;

    // The overview: the cluster with its primary, the group with its leader.
    b.client.goto(&format!("http://{http}/")).await?;
    b.wait_for(
        "the cluster and its primary on the overview",
        &format!("return document.querySelector('#s-clusters tr[data-cluster=\"web\"] td[data-primary]')?.dataset.primary === {};", js(&old)),
        Duration::from_secs(10),
    )
    .await?;
    b.wait_for(
        "the leader and the members' matched index on the overview",
        &format!(
            "return document.querySelector('#leader')?.dataset.leader === '{leader}' && \
             document.querySelectorAll('#s-group tr[data-node]').length === 3 && \
             [...document.querySelectorAll('#s-group tr[data-node] td:nth-child(5)')].every(td => /^[0-9]+$/.test(td.textContent));"
        ),
        Duration::from_secs(10),
    )
    .await?;
    b.screenshot(&shots, "overview").await?;

    // The cluster's page: the tree (every instance, replicas under the primary, each
    // seen by all three coordinators), the analysis, the leader.
    b.client.goto(&format!("http://{http}/clusters/web")).await?;
    let mut replicas: Vec<String> = w.sandbox.replicas().iter().map(|r| r.addr()).collect();
    replicas.sort();
    b.wait_for(
        "the replication tree",
        &format!(
            "const p = document.querySelector('#s-tree .inst[data-addr={old}]'); \
             if (!p || !p.classList.contains('primary')) return false; \
             const kids = [...p.parentElement.querySelectorAll(':scope > ul > li > .inst')].map(e => e.dataset.addr).sort(); \
             return JSON.stringify(kids) === {kids} && \
               document.querySelectorAll('#s-tree .inst .seen .ok').length === 9 && \
               document.querySelector('#primary')?.dataset.primary === {old} && \
               document.querySelector('#s-analysis [data-code]')?.dataset.code === 'NoProblem' && \
               document.querySelector('#leader')?.dataset.leader === '{leader}';",
            old = js(&old),
            kids = js(&serde_json::to_string(&replicas)?),
        ),
        Duration::from_secs(10),
    )
    .await?;
    // Read-only without the token: no action is offered.
    let hidden = b.eval("return getComputedStyle(document.querySelector('.actions')).display === 'none';").await?;
    assert_eq!(hidden, serde_json::json!(true), "actions shown without a token");
    b.screenshot(&shots, "cluster-before").await?;

    // kill -9 of the primary: the page shows the new primary and the finished
    // failover within 2 s, without a reload (a marker set now must survive).
    b.eval("window.__noReload = 'still here'; return true;").await?;
    let killed = Instant::now();
    w.sandbox.primary().kill9()?;
    let shown = b
        .wait_for(
            "the new primary and the finished failover",
            &format!(
                "const p = document.querySelector('#primary')?.dataset.primary; \
                 const f = document.querySelector('#current-failover'); \
                 return !!p && p !== {old} && !!f && f.dataset.outcome === 'succeeded' && f.dataset.id !== '' && \
                   window.__noReload === 'still here';",
                old = js(&old)
            ),
            Duration::from_secs(10),
        )
        .await?;
    let after_kill = killed.elapsed();
    let new_primary = b.eval("return document.querySelector('#primary').dataset.primary;").await?;
    let new_primary = new_primary.as_str().unwrap_or_default().to_string();
    println!(
        "page shows new primary {new_primary} and the finished failover {} ms after kill -9",
        after_kill.as_millis()
    );
    let h = wait_finished(&w.client()?, "web", 1, Duration::from_secs(10)).await?;
    let f = h.failovers.last().expect("one failover");
    assert_eq!(f.outcome, "succeeded", "{f:#?}");
    assert_eq!(f.candidate, new_primary, "the page names the primary the failover promoted");
    // The steps of the failover are on the page, each with its time.
    let steps = b.eval("return document.querySelectorAll('#s-failover ol.steps li[data-step] time').length;").await?;
    assert_eq!(steps.as_u64(), Some(f.steps.len() as u64), "every step with its time: {f:#?}");
    b.wait_for(
        "the new primary probed writable",
        &format!("return !!document.querySelector('#s-tree .inst.primary[data-addr={}] .rw');", js(&new_primary)),
        Duration::from_secs(5),
    )
    .await?;
    b.wait_for(
        "the old primary as unreachable",
        &format!(
            "return document.querySelector('#s-tree .inst[data-addr={}]')?.classList.contains('down') === true;",
            js(&old)
        ),
        Duration::from_secs(5),
    )
    .await?;
    b.screenshot(&shots, "cluster-after-failover").await?;
    assert!(
        shown <= after_kill && after_kill < Duration::from_secs(2),
        "the page showed the new primary and the finished failover {} ms after kill -9 (bound: 2000 ms)",
        after_kill.as_millis()
    );

    // Actions: refused over HTTP without the token; from the page with it, behind a
    // confirmation that names the cluster.
    let (status, body) = post(&http, "/api/v1/clusters/web/ack", "{}", None).await?;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&http, "/api/v1/clusters/web/ack", "{}", Some("wrong")).await?;
    assert_eq!(status, 403, "{body}");

    b.client.find(fantoccini::Locator::Id("token-button")).await?.click().await?;
    b.client.find(fantoccini::Locator::Id("token-input")).await?.send_keys(TOKEN).await?;
    click(&b, "#token-dialog button[value=save]").await?;
    b.wait_for(
        "the actions once the token is entered",
        "return getComputedStyle(document.querySelector('.actions')).display !== 'none';",
        Duration::from_secs(5),
    )
    .await?;

    // Acknowledge the failover.
    click(&b, "button[data-action=ack]").await?;
    let title = b.eval("return document.querySelector('#confirm-title').textContent;").await?;
    assert!(title.as_str().unwrap_or_default().contains("web"), "the confirmation names the cluster: {title}");
    b.client.find(fantoccini::Locator::Id("confirm-input")).await?.send_keys("we").await?;
    let disabled = b.eval("return document.querySelector('#confirm-ok').disabled;").await?;
    assert_eq!(disabled, serde_json::json!(true), "confirm is possible only with the cluster's name typed");
    b.client.find(fantoccini::Locator::Id("confirm-input")).await?.send_keys("b").await?;
    b.client.find(fantoccini::Locator::Id("confirm-ok")).await?.click().await?;
    b.wait_for(
        "the failover acknowledged",
        &format!(
            "const r = document.querySelector('#s-history tr[data-id={}] td:nth-child(7)'); \
             return !!r && r.textContent.includes('http api: web page');",
            js(&f.id)
        ),
        Duration::from_secs(10),
    )
    .await?;

    // Start maintenance from the page.
    click(&b, "button[data-action=maintenance-start]").await?;
    b.client.find(fantoccini::Locator::Id("f-reason")).await?.send_keys("disk swap").await?;
    confirm(&b, "web").await?;
    b.wait_for(
        "the cluster in maintenance",
        "return (document.querySelector('#maintenance')?.textContent || '').includes('disk swap');",
        Duration::from_secs(10),
    )
    .await?;
    let t = w.topology("web").await?;
    let m = t.cluster_maintenance.as_ref().expect("maintenance committed");
    assert_eq!(m.reason, "disk swap");
    // End it, then switch over to the remaining replica from the page.
    click(&b, "button[data-action=maintenance-end]").await?;
    confirm(&b, "web").await?;
    b.wait_for("maintenance ended", "return !document.querySelector('#maintenance');", Duration::from_secs(10)).await?;

    let other = replicas.iter().find(|r| **r != new_primary).expect("a second replica").clone();
    click(&b, "button[data-action=switchover]").await?;
    b.client.find(fantoccini::Locator::Id("f-to")).await?.send_keys(&other).await?;
    confirm(&b, "web").await?;
    b.wait_for(
        "the switchover's new primary",
        &format!(
            "return document.querySelector('#primary')?.dataset.primary === {} && \
             document.querySelector('#current-failover')?.dataset.outcome === 'succeeded';",
            js(&other)
        ),
        Duration::from_secs(30),
    )
    .await?;
    b.screenshot(&shots, "cluster-after-switchover").await?;
    let h = wait_finished(&w.client()?, "web", 2, Duration::from_secs(10)).await?;
    let s = h.failovers.last().expect("the switchover");
    assert_eq!(
        (s.kind.as_str(), s.candidate.as_str(), s.outcome.as_str()),
        ("switchover", other.as_str(), "succeeded")
    );
    assert_eq!(s.started_by, "http api: web page", "audited as the page's action: {s:#?}");

    // The global switch (`primusctl automatic off --all`) shows at once, and goes.
    let c = w.client()?;
    c.set_automatic_failover_all(false, "datacenter move").await?;
    b.wait_for(
        "automatic failover off everywhere",
        "return (document.querySelector('#automatic-off')?.textContent || '').includes('datacenter move') && \
         document.querySelector('#s-summary [data-automatic]')?.dataset.automatic === 'off';",
        Duration::from_secs(5),
    )
    .await?;
    c.set_automatic_failover_all(true, "").await?;
    b.wait_for(
        "automatic failover back on",
        "return !document.querySelector('#automatic-off') && \
         document.querySelector('#s-summary [data-automatic]')?.dataset.automatic === 'on';",
        Duration::from_secs(5),
    )
    .await?;
    Ok(())
}

/// Read a server-sent event stream for `for_ms`; what arrived.
async fn read_stream(addr: &str, path: &str, for_ms: u64) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_page_is_read_only_and_needs_nothing_from_elsewhere() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions { nodes: 1, http: true, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let http = g.node(1).http_addr().expect("http endpoint");
    let t = Duration::from_secs(5);

    let page = primus_testkit::http::get(&http, "/", t).await?;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").is_some_and(|c| c.starts_with("text/html")), "{page:?}");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "the page may load nothing from elsewhere: {csp}");
    let html = page.text();
    assert!(!html.contains("http://") && !html.contains("https://"), "no external reference: {html}");
    for (asset, kind) in [("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")] {
        let r = primus_testkit::http::get(&http, asset, t).await?;
        assert_eq!(r.status, 200, "{asset}");
        assert!(r.header("content-type").is_some_and(|c| c.starts_with(kind)), "{asset}: {r:?}");
        assert!(!r.text().contains("https://"), "{asset} references nothing outside");
    }
    // The stream sends every section at once, then keeps the connection alive.
    let events = read_stream(&http, "/ui/stream", 1500).await?;
    assert!(events.contains("content-type: text/event-stream"), "{events}");
    for section in ["event: banner", "event: clusters", "event: group"] {
        assert!(events.contains(section), "{section} missing from the stream: {events}");
    }
    assert!(events.contains("No cluster is registered"), "{events}");
    let gone = read_stream(&http, "/ui/stream?cluster=nope", 800).await?;
    assert!(gone.contains("cluster nope is not registered"), "{gone}");
    let bad = primus_testkit::http::get(&http, "/ui/stream?cluster=no%20such", t).await?;
    assert_eq!(bad.status, 400, "{bad:?}");

    // No [auth] token: the HTTP endpoint takes no action, and says why.
    let (status, body) = post(&http, "/api/v1/clusters/c/switchover", "{}", Some("anything")).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains("read-only"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cut_off_from_its_group_says_so_on_its_page_and_recovers_after_the_heal() -> anyhow::Result<()> {
    let mut w = World::start(WorldOptions { http: true, fault_injection: true, ..Default::default() }).await?;
    w.register_sandbox("cut", Duration::from_millis(1000)).await?;
    let (leader, _) = w.group.wait_leader(&[], Duration::from_secs(10)).await?;
    let me = *w.group.nodes.keys().find(|id| **id != leader).expect("3 nodes");
    let http = w.group.node(me).http_addr().expect("http endpoint");
    let b = Browser::start().await?;
    b.client.goto(&format!("http://{http}/clusters/cut")).await?;
    b.wait_for(
        "the group's view",
        &format!(
            "return document.querySelectorAll('#s-tree .inst .seen .ok').length === 9 && \
             !document.querySelector('#own-view') && document.querySelector('#leader')?.dataset.leader === '{leader}';"
        ),
        Duration::from_secs(10),
    )
    .await?;

    // Cut this coordinator's Raft links: it loses its leader, and its page must not
    // pass its own probes off as the group's view.
    w.group.isolate(&[me]).await?;
    let t = b
        .wait_for(
            "no leader, and this coordinator's own view, said so",
            "return document.querySelector('#leader')?.dataset.leader === '' && \
             !!document.querySelector('#own-view') && \
             (document.querySelector('#s-banner')?.textContent || '').includes('No leader');",
            Duration::from_secs(15),
        )
        .await?;
    println!("the cut-off coordinator's page said so {} ms after the cut", t.as_millis());
    b.screenshot(&screenshot_dir(), "cut-off-coordinator").await?;
    // The page stays live meanwhile (its own probes go on).
    assert_eq!(b.eval("return document.body.dataset.live;").await?, serde_json::json!("1"));

    w.group.heal().await?;
    b.wait_for(
        "the group's view again after the heal",
        "return !!document.querySelector('#leader')?.dataset.leader && !document.querySelector('#own-view') && \
         !(document.querySelector('#s-banner')?.textContent || '').includes('No leader');",
        Duration::from_secs(15),
    )
    .await?;
    Ok(())
}

//! A data directory written by an older primusd (commit 3315362) still loads: the
//! failover records (plans, steps and their outcomes, analysis codes) and refusals it
//! holds read back the same through `history`, `audit`, `topology` and `GetPrimary`,
//! and `primusctl history` prints them, whether the new primusd loads them from the
//! state machine's sled keys, from the stored snapshot plus the log after it, or by
//! replaying the whole log.
//!
//! The fixture and how it was made: `tests/fixtures/README.md`. The ignored test at
//! the end of this file wrote it, running the primusd of that commit
//! (`PRIMUS_BIN_DIR`).

use anyhow::{bail, ensure, Context, Result};
use primus_client::{AuditResponse, Client, GetTopologyResponse, HistoryResponse, ReadConsistency};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions, RaftTuning};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cluster the fixture holds.
const CLUSTER: &str = "legacy";
const FIXTURE: &str = "old-data-dir-3315362.tar.gz";
const EXPECTED: &str = "old-data-dir-3315362.expected.json";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The parts of a history answer that come from the replicated records.
fn history_json(h: &HistoryResponse) -> Value {
    let failovers: Vec<Value> = h
        .failovers
        .iter()
        .map(|f| {
            let steps: Vec<Value> = f
                .steps
                .iter()
                .map(
                    |s| json!({"index": s.index, "description": s.description, "outcome": s.outcome, "at_ms": s.at_ms}),
                )
                .collect();
            json!({
                "id": f.id, "kind": f.kind, "analysis_code": f.analysis_code, "evidence": f.evidence,
                "old_primary": f.old_primary, "candidate": f.candidate, "epoch": f.epoch, "steps": steps,
                "started_at_ms": f.started_at_ms, "finished_at_ms": f.finished_at_ms, "outcome": f.outcome,
                "outcome_reason": f.outcome_reason, "started_by": f.started_by, "acked_by": f.acked_by,
                "promotion_gtid": f.promotion_gtid, "plan": f.plan,
            })
        })
        .collect();
    let refusals: Vec<Value> = h
        .refusals
        .iter()
        .map(
            |r| json!({"at_ms": r.at_ms, "analysis_code": r.analysis_code, "evidence": r.evidence, "reason": r.reason}),
        )
        .collect();
    json!({
        "failovers": failovers,
        "refusals": refusals,
        "split_fences": h.split_fences.len(),
        "unfences": h.unfences.len(),
    })
}

/// The committed parts of a topology answer (not what the serving node probes).
fn topology_json(t: &GetTopologyResponse) -> Value {
    let mut instances: Vec<Value> = t
        .instances
        .iter()
        .map(|i| {
            json!({
                "addr": i.addr, "role": i.role, "source": i.source, "server_id": i.server_id,
                "flavor": i.flavor, "version": i.version, "promotion_rule": i.promotion_rule,
                "datacenter": i.datacenter,
            })
        })
        .collect();
    instances.sort_by_key(|i| i["addr"].to_string());
    json!({
        "cluster": t.cluster, "epoch": t.epoch, "primary": t.primary,
        "topology_index": t.topology_index, "instances": instances,
    })
}

/// Audit records up to `last_index` (a new primusd adds its own after them).
fn audit_json(a: &AuditResponse, last_index: u64) -> Value {
    let records: Vec<Value> = a
        .records
        .iter()
        .filter(|r| r.index <= last_index)
        .map(|r| {
            json!({
                "index": r.index, "term": r.term, "time_ms": r.time_ms, "actor": r.actor,
                "via_node": r.via_node, "summary": r.summary, "outcome": r.outcome,
            })
        })
        .collect();
    Value::Array(records)
}

/// Wait until node 1 leads and has applied at least `index`.
async fn wait_applied(g: &CoordinatorGroup, index: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = g.status_of(1).await {
            if s.leader_id == Some(1) && s.applied_index.unwrap_or(0) >= index {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("node 1 did not lead with index {index} applied within {timeout:?}\n{}", g.node(1).log_tail(40));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which parts of the state a test removes from the fixture's copy before starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// As written: the state machine's sled keys.
    StateKeys,
    /// Without the state machine tree: the stored snapshot, then the log after it.
    SnapshotThenLog,
    /// Without the state machine tree and the snapshot: the whole log, replayed.
    WholeLog,
}

/// Unpack the fixture into `<base>/node1/data` and remove what `load` says.
fn unpack(base: &Path, load: Load) -> Result<()> {
    let node = base.join("node1");
    std::fs::create_dir_all(&node)?;
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixtures().join(FIXTURE))
        .arg("-C")
        .arg(&node)
        .output()
        .context("run tar")?;
    ensure!(out.status.success(), "tar -xzf {FIXTURE}: {}", String::from_utf8_lossy(&out.stderr));
    let data = node.join("data");
    ensure!(data.is_dir(), "the fixture holds no data/ directory");
    if load != Load::StateKeys {
        // primusd keeps its sled database in `<data_dir>/raft`.
        let store = data.join("raft");
        ensure!(store.join("db").is_file(), "the fixture holds no sled database in data/raft");
        let db = sled::open(&store).context("open the fixture's sled database")?;
        let mut drop = vec!["state_machine"];
        if load == Load::WholeLog {
            drop.push("snapshot");
        }
        for tree in drop {
            let names: Vec<String> = db.tree_names().iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
            ensure!(db.drop_tree(tree)?, "the fixture's database has no tree {tree:?} (trees: {names:?})");
        }
        db.flush()?;
    }
    Ok(())
}

/// A one-node group of the new primusd on a copy of the fixture. Its `[mysql]` section
/// only makes topology answerable: the fixture's MariaDB servers are long gone, and
/// automatic failover is off so that nothing is decided about them.
fn start_on_fixture(load: Load) -> Result<(tempfile::TempDir, CoordinatorGroup)> {
    let tmp = tempfile::Builder::new().prefix("primus-old-data-").tempdir()?;
    unpack(tmp.path(), load)?;
    let password = tmp.path().join("mysql.pass");
    std::fs::write(&password, "unused\n")?;
    let g = CoordinatorGroup::start(GroupOptions {
        nodes: 1,
        base_dir: Some(tmp.path().to_path_buf()),
        extra_config: format!(
            "[mysql]\nuser = \"primus\"\npassword_file = {:?}\nconnect_timeout_ms = 200\nquery_timeout_ms = 200\n\
             [failover]\nautomatic = false\n",
            password.display().to_string()
        ),
        ..Default::default()
    })?;
    Ok((tmp, g))
}

struct Expected {
    all: Value,
    last_index: u64,
}

fn expected() -> Result<Expected> {
    let path = fixtures().join(EXPECTED);
    let all: Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("read {}", path.display()))?)?;
    let last_index = all["last_log_index"].as_u64().context("last_log_index")?;
    Ok(Expected { all, last_index })
}

/// What the new primusd answers about the fixture's cluster.
async fn read_back(client: &Client, last_index: u64) -> Result<Value> {
    let h = client.history(CLUSTER).await?;
    let t = client.topology(CLUSTER, ReadConsistency::Linearizable).await?;
    let a = client.audit(10_000, ReadConsistency::Linearizable).await?;
    let p = client.primary(CLUSTER).await?;
    let p = p.state.context("no primary state")?;
    Ok(json!({
        "history": history_json(&h),
        "topology": topology_json(&t),
        "audit": audit_json(&a, last_index),
        "primary": {"primary": p.primary, "epoch": p.epoch, "demoted": p.demoted},
    }))
}

/// The first differing path between two JSON values, for a readable failure.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: expected {a}, got {b}")),
    }
}

fn assert_same(what: &str, expected: &Value, got: &Value) -> Result<()> {
    if let Some(d) = first_difference(what, expected, got) {
        bail!("{what} differs from what the old primusd answered: {d}");
    }
    Ok(())
}

/// What the fixture was made to hold, checked on the new primusd's own answers (so
/// that a fixture regenerated without them fails here rather than proving nothing).
fn check_contents(got: &Value) -> Result<()> {
    let h = &got["history"];
    let f = h["failovers"].as_array().context("failovers")?;
    ensure!(f.len() == 2, "two failovers expected: {h:#}");
    let (sw, auto) = (&f[0], &f[1]);
    ensure!(sw["kind"] == "switchover" && sw["outcome"] == "succeeded", "{sw:#}");
    ensure!(sw["analysis_code"] == "NoProblem", "{sw:#}");
    ensure!(auto["kind"] == "automatic" && auto["outcome"] == "succeeded", "{auto:#}");
    ensure!(auto["analysis_code"] == "DeadPrimary", "{auto:#}");
    for fo in [sw, auto] {
        let steps = fo["steps"].as_array().context("steps")?;
        let plan = fo["plan"].as_array().context("plan")?;
        ensure!(steps.len() == plan.len() && steps.len() >= 5, "every planned step recorded: {fo:#}");
        ensure!(plan[0].as_str().is_some_and(|p| p.contains("\"step\":\"fence_old_primary\"")), "{fo:#}");
        ensure!(steps.last().is_some_and(|s| s["description"] == "complete" && s["outcome"] == "done"), "{fo:#}");
    }
    let outcome = |fo: &Value, i: usize| fo["steps"][i]["outcome"].as_str().unwrap_or_default().to_string();
    ensure!(outcome(sw, 0).starts_with("read_only set, "), "the switchover fenced its live primary: {sw:#}");
    ensure!(outcome(auto, 0).starts_with("skipped: unreachable"), "the dead primary was not fenced: {auto:#}");
    ensure!(
        auto["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["outcome"].as_str().is_some_and(|o| o.contains("UNFENCED")))),
        "no agent, so the lease wait was skipped: {auto:#}"
    );
    let r = h["refusals"].as_array().context("refusals")?;
    ensure!(r.len() == 1 && r[0]["reason"].as_str().is_some_and(|r| r.contains("no safe candidate")), "{h:#}");
    ensure!(got["topology"]["epoch"] == 3 && got["primary"]["demoted"].as_array().is_some_and(|d| d.len() == 1));
    Ok(())
}

async fn reads_back_as_the_old_primusd_answered(load: Load) -> Result<()> {
    let exp = expected()?;
    let (_tmp, mut g) = start_on_fixture(load)?;
    wait_applied(&g, exp.last_index, Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(10))?;
    let got = read_back(&client, exp.last_index).await?;
    check_contents(&got)?;
    for part in ["history", "topology", "primary", "audit"] {
        assert_same(part, &exp.all[part], &got[part])?;
    }
    let log = std::fs::read_to_string(&g.node(1).log_path)?;
    match load {
        // Data format 1: rewritten once, with each failover record under its own key.
        Load::StateKeys => ensure!(
            !log.contains("restoring from the snapshot")
                && log.contains("(data format 1 -> 2)")
                && log.contains("data directory format upgraded version=2"),
            "{log}"
        ),
        Load::SnapshotThenLog => {
            ensure!(log.contains("state machine is behind the stored snapshot; restoring from the snapshot"), "{log}")
        }
        Load::WholeLog => ensure!(
            log.contains("state machine loaded last_applied=None") && !log.contains("restoring from the snapshot"),
            "{log}"
        ),
    }

    // primusctl shows them as it always did.
    let ctl = primus_testkit::coordinator::bin("primusctl")?;
    let out = std::process::Command::new(ctl)
        .args(["--endpoints", &g.endpoints(), "--timeout", "10s", "history", CLUSTER])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "primusctl history: {}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "legacy-e2 [switchover]",
        "analysis: NoProblem",
        "legacy-e3 [automatic]",
        "analysis: DeadPrimary",
        ": skipped: unreachable (instance unreachable",
        "has no fencing agent: UNFENCED unless the fence step reached it",
        "complete: done",
        "refused at ",
    ] {
        ensure!(text.contains(line), "primusctl history lacks {line:?}:\n{text}");
    }

    // The new primusd writes to the old records (an ack of every failover), and what it
    // wrote loads again after a restart.
    let ack = client.ack(CLUSTER, None).await?;
    ensure!(ack.log_index > exp.last_index);
    let before = client.history(CLUSTER).await?;
    ensure!(before.failovers.iter().all(|f| !f.acked_by.is_empty()), "{before:#?}");
    let code = g.terminate(1, Duration::from_secs(20))?;
    ensure!(code == Some(0), "primusd exit code {code:?}\n{}", g.node(1).log_tail(30));
    g.start_node(1)?;
    wait_applied(&g, ack.log_index, Duration::from_secs(20)).await?;
    let log = std::fs::read_to_string(&g.node(1).log_path)?;
    ensure!(log.matches("(data format 1 -> 2)").count() <= 1, "rewritten once, not at every start: {log}");
    let after = client.history(CLUSTER).await?;
    assert_same("history after a restart", &history_json(&before), &history_json(&after))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_dir_loads_from_its_state_keys() -> Result<()> {
    reads_back_as_the_old_primusd_answered(Load::StateKeys).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_dir_loads_from_its_snapshot_and_the_log_after_it() -> Result<()> {
    reads_back_as_the_old_primusd_answered(Load::SnapshotThenLog).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_dir_loads_by_replaying_its_whole_log() -> Result<()> {
    reads_back_as_the_old_primusd_answered(Load::WholeLog).await
}

/// Writes the fixture with whatever primusd `PRIMUS_BIN_DIR` holds (for the checked-in
/// fixture: the one of commit 3315362, see tests/fixtures/README.md):
///
/// ```sh
/// PRIMUS_BIN_DIR=/path/to/3315362/target/debug \
///   cargo nextest run -p primus-integration-tests --test old_data_dir --run-ignored only
/// ```
///
/// A one-coordinator group over a MariaDB primary with two replicas: a refused
/// failover, a switchover, enough acks for a snapshot, then a `kill -9` of the primary
/// and the automatic failover that follows. Then a clean stop, and the data directory
/// is packed with the answers the old primusd gave (`*.expected.json`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/old-data-dir-*: run with PRIMUS_BIN_DIR set to the old primusd's directory"]
async fn write_the_fixture_with_an_old_primusd() -> Result<()> {
    use primus_integration_tests::world::{wait_finished, World, WorldOptions};
    ensure!(std::env::var("PRIMUS_BIN_DIR").is_ok(), "set PRIMUS_BIN_DIR to the old primusd's directory");
    let mut w = World::start(WorldOptions {
        coordinators: 1,
        raft: RaftTuning { snapshot_every_entries: 30, keep_logs_after_snapshot: 100_000, ..Default::default() },
        ..Default::default()
    })
    .await?;
    let client = w.client()?;
    let version = client.node_status().await?.version;
    println!("old primusd: {version}");
    w.register_sandbox(CLUSTER, Duration::from_millis(1500)).await?;
    w.sandbox.insert_rows(20).await?;
    w.sandbox.wait_replicas_caught_up(Duration::from_secs(10)).await?;

    // A refusal: promoting the primary itself is no safe candidate.
    let primary = w.sandbox.primary().addr();
    let refused = client.failover(CLUSTER, Some(&primary), false).await;
    ensure!(refused.is_err(), "{refused:?}");
    println!("refused: {}", refused.err().map(|e| e.to_string()).unwrap_or_default());

    // A switchover to the first replica.
    let to = w.sandbox.replicas()[0].addr();
    let sw = client.failover(CLUSTER, Some(&to), true).await?;
    println!("switchover: {:?}", sw.failover.map(|f| f.outcome));
    let t = w
        .wait_topology(CLUSTER, "the switchover's primary", Duration::from_secs(20), |t| {
            t.primary == to && t.epoch == 2
        })
        .await?;
    println!("after the switchover: primary {} epoch {}", t.primary, t.epoch);

    // Entries until a snapshot holds the switchover (acks and datacenter labels).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0u32;
    loop {
        let s = client.node_status().await?;
        if s.snapshot_index.is_some_and(|i| i > 0) {
            println!("snapshot at index {:?}", s.snapshot_index);
            break;
        }
        ensure!(Instant::now() < deadline, "no snapshot built: {s:?}");
        if n.is_multiple_of(2) {
            client.ack(CLUSTER, None).await?;
        } else {
            let i = &w.sandbox.instances()[(n as usize / 2) % 3];
            client.set_instance_datacenter(CLUSTER, &i.addr(), &format!("dc-{n}")).await?;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The new primary dies: an automatic failover (no agent: the lease wait is skipped).
    // Writes on the switchover's primary, replicated before it dies.
    w.sandbox.replicas()[0].insert_test_rows(10).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.sandbox.replicas()[0].kill9()?;
    let h = wait_finished(&client, CLUSTER, 2, Duration::from_secs(30)).await?;
    ensure!(h.failovers.len() == 2 && h.failovers[1].outcome == "succeeded", "{h:#?}");
    w.wait_topology(CLUSTER, "the failover's primary", Duration::from_secs(20), |t| {
        t.epoch == 3 && t.instances.iter().any(|i| i.addr == to && i.role == "demoted")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let s = client.node_status().await?;
    let last_index = s.last_log_index.context("last_log_index")?;
    ensure!(s.applied_index == Some(last_index), "{s:?}");
    let a = client.audit(10_000, ReadConsistency::Linearizable).await?;
    let p = client.primary(CLUSTER).await?.state.context("no primary state")?;
    let t = client.topology(CLUSTER, ReadConsistency::Linearizable).await?;
    let h = client.history(CLUSTER).await?;
    let expected = json!({
        "written_by": version,
        "last_log_index": last_index,
        "snapshot_index": s.snapshot_index,
        "history": history_json(&h),
        "topology": topology_json(&t),
        "audit": audit_json(&a, last_index),
        "primary": {"primary": p.primary, "epoch": p.epoch, "demoted": p.demoted},
    });
    check_contents(&expected)?;

    // A clean stop, then pack the data directory.
    let code = w.group.terminate(1, Duration::from_secs(20))?;
    ensure!(code == Some(0), "old primusd exit code {code:?}");
    let node = w.group.node(1).dir.clone();
    let out = std::process::Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-czf"])
        .arg(fixtures().join(FIXTURE))
        .arg("-C")
        .arg(&node)
        .arg("data")
        .output()?;
    ensure!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(fixtures().join(EXPECTED), serde_json::to_string_pretty(&expected)? + "\n")?;
    println!("wrote {} and {}; {h:#?}", FIXTURE, EXPECTED);
    Ok(())
}

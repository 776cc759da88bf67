//! Scale (issue 14, items 3 and 4): one `primusd` watching 5,000 MySQL/MariaDB instances at
//! `probe_interval_ms = 1000`, a 3-node group watching 1,000, and failovers under that load.
//!
//! The instances are fake: [`fake_mysql`] serves the MySQL wire protocol (opensrv-mysql) on
//! one 127.0.0.1 port per instance, in this process, and answers exactly what primusd sends
//! (probe batch, heartbeat reads/writes, failover steps) from a simple replication model:
//! 1,000 clusters of a primary and 4 replicas, MariaDB 10.11 for even clusters and MySQL
//! 8.0 for odd ones, GTIDs advancing on every primary each second, replicas following within
//! 100–200 ms, heartbeat rows replicating. The coordinators are real: release `primusd`
//! processes started by primus-testkit with a `[mysql]` section as an operator writes it,
//! and every cluster is registered through the client API (`primusctl cluster add`), so
//! discovery, probing, the follower reports, analysis and the failover engine run as in
//! production.
//!
//! Parts (`SCALE_PARTS`, comma-separated, default `baseline,single,group`):
//!
//! * **baseline** — no load: one primusd, `SCALE_BASELINE_CLUSTERS` (5) clusters; the
//!   primaries are killed one at a time (`SCALE_KILLS`, 5), each at a different phase of
//!   the probe tick. Failover time = kill → the promoted replica writable (the fake records
//!   the coordinator's `SET GLOBAL read_only = OFF`).
//! * **single** — one primusd, `SCALE_CLUSTERS` (1,000) clusters = 5,000 instances, steady
//!   for `SCALE_SECONDS` (600; e.g. 60 for a quick run): probe intervals (seen by the fake
//!   servers per connection, and primusd's own `primus_probe_interval_seconds`), CPU
//!   (utime+stime of primusd from /proc over the steady window, in cores), RSS (sampled every
//!   5 s; peak = VmHWM), Raft entries committed. Then `SCALE_KILLS` single failovers under
//!   that load, one at a time; then `SCALE_MASS_KILLS` (50) primaries killed at the same
//!   moment: all must fail over, each with exactly one promotion (one history record, one
//!   instance made writable).
//! * **group** — three primusd processes, `SCALE_GROUP_CLUSTERS` (200) clusters = 1,000
//!   instances, steady for `SCALE_GROUP_SECONDS` (120): the same figures per node, then
//!   `SCALE_KILLS` single failovers.
//!
//! Everything stops by itself: the coordinators are killed when their group is dropped
//! (also on error), the fake servers when the farm is dropped; the bench exits with an
//! error if any failover does not complete within 60 s.
//!
//! Run: `scripts/bench.sh scale` (builds release binaries first), or
//! `cargo build --release --workspace --bins && SCALE_SECONDS=60 cargo bench -p primus-benches --bench scale`.
//! Goals (issue 14): no instance misses a probe interval; ≤ 1 core and ≤ 1 GiB per
//! coordinator at 5,000 instances; a failover under load within its no-load time + 100 ms;
//! 50 primaries killed at once all fail over, each with one promotion.

#[path = "scale/fake_mysql.rs"]
mod fake_mysql;

use anyhow::{anyhow, bail, Context, Result};
use fake_mysql::Farm;
use primus_benches::{env_or, ms, wall_ms};
use primus_client::{Client, ClusterSettings};
use primus_testkit::coordinator::{CoordinatorGroup, GroupOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const INTERVAL_MS: u64 = 1000;

fn cluster_name(c: usize) -> String {
    format!("s{c:04}")
}

/// p-quantile of `v` (sorted in place).
fn q(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn dist(v: &[f64]) -> String {
    let mut v = v.to_vec();
    if v.is_empty() {
        return "n=0".into();
    }
    format!(
        "n={} p50 {:.0} p99 {:.0} p99.9 {:.0} max {:.0} ms",
        v.len(),
        q(&mut v, 0.5),
        q(&mut v, 0.99),
        q(&mut v, 0.999),
        q(&mut v, 1.0)
    )
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is field 3 of stat(5), utime 14, stime 15.
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| anyhow!("no field {i}"));
    Ok(get(14)? + get(15)?)
}

/// The machine's CPU over a steady window: the coordinators' share (from their figures),
/// the fake servers' (this process) and everything else's.
struct CpuWindow {
    hz: f64,
    bench_cpu0: u64,
    busy0: u64,
    started: Instant,
}

impl CpuWindow {
    fn start() -> Result<CpuWindow> {
        Ok(CpuWindow {
            hz: clock_ticks(),
            bench_cpu0: cpu_ticks(std::process::id())?,
            busy0: machine_busy_ticks(),
            started: Instant::now(),
        })
    }

    /// The summary line, and the fake servers' cores.
    fn finish(self, figs: &[NodeFigures], who: &str) -> Result<(String, f64)> {
        let el = self.started.elapsed().as_secs_f64();
        let bench_cores = (cpu_ticks(std::process::id())? - self.bench_cpu0) as f64 / self.hz / el;
        let busy = (machine_busy_ticks() - self.busy0) as f64 / self.hz / el;
        let primusd_cores: f64 = figs.iter().map(|f| f.cores).sum();
        let line = format!(
            "{busy:.2} of 2 cores busy: {who} {primusd_cores:.2}, fake servers {bench_cores:.2}, other processes {:.2}",
            (busy - primusd_cores - bench_cores).max(0.0)
        );
        Ok((line, bench_cores))
    }
}

/// Busy clock ticks of the whole machine (all CPUs: /proc/stat minus idle and iowait).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        st.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Coordinators
// ---------------------------------------------------------------------------------------------

struct Coordinators {
    group: CoordinatorGroup,
    client: Arc<Client>,
    _secrets: tempfile::TempDir,
}

impl Coordinators {
    async fn start(nodes: usize) -> Result<Coordinators> {
        let secrets = tempfile::tempdir()?;
        let pw = secrets.path().join("mysql.pass");
        std::fs::write(&pw, "primus-pass\n")?;
        let rpw = secrets.path().join("repl.pass");
        std::fs::write(&rpw, "repl-pass\n")?;
        // What an operator writes: defaults everywhere but the credentials.
        let extra = format!(
            "[mysql]\nuser = \"primus\"\npassword_file = {:?}\nreplication_user = \"repl\"\n\
             replication_password_file = {:?}\nprobe_interval_ms = {INTERVAL_MS}\n",
            pw.display().to_string(),
            rpw.display().to_string()
        );
        let group =
            CoordinatorGroup::start(GroupOptions { nodes, extra_config: extra, http: true, ..Default::default() })?;
        group.wait_leader(&[], Duration::from_secs(30)).await?;
        let client = Arc::new(group.client(Duration::from_secs(30))?);
        Ok(Coordinators { group, client, _secrets: secrets })
    }

    fn pids(&self) -> Vec<(u64, u32)> {
        self.group.nodes.values().filter_map(|n| n.pid().map(|p| (n.id, p))).collect()
    }

    async fn metrics(&self, id: u64) -> Result<String> {
        let addr = self.group.node(id).http_addr().ok_or_else(|| anyhow!("node {id} has no http"))?;
        let r = primus_testkit::http::get(&addr, "/metrics", Duration::from_secs(30)).await?;
        Ok(r.text())
    }
}

/// Registers every cluster of `farm` (its primary as the seed), 8 at a time, as
/// `primusctl cluster add` does.
async fn register_all(client: &Arc<Client>, farm: &Farm) -> Result<(Duration, u32)> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut set = tokio::task::JoinSet::new();
    for (c, members) in farm.clusters.iter().enumerate() {
        let seed = farm.addr(members[0]);
        let client = client.clone();
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let _permit = permit;
            // As an operator would: `cluster add` again when discovery timed out on an
            // overloaded coordinator ("nothing was registered").
            let mut retries = 0u32;
            loop {
                match client
                    .register_cluster(&cluster_name(c), std::slice::from_ref(&seed), ClusterSettings::default())
                    .await
                {
                    Ok(_) => return Ok(retries),
                    Err(e) if e.to_string().to_lowercase().contains("already") && retries > 0 => return Ok(retries),
                    Err(e) if retries < 10 => {
                        eprintln!("register {}: {e}; again in 2 s", cluster_name(c));
                        retries += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => return Err(anyhow!("register {}: {e}", cluster_name(c))),
                }
            }
        });
    }
    let mut retries = 0;
    while let Some(r) = set.join_next().await {
        retries += r??;
    }
    Ok((t0.elapsed(), retries))
}

/// `name value` of every series of `metric` (`name{labels} value` lines).
fn series<'a>(text: &'a str, metric: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| v.parse().ok().map(|v| (k, v))))
        .collect()
}

/// Waits until node `id` reports every instance up (its own probes).
async fn wait_all_up(co: &Coordinators, id: u64, n: usize, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let text = co.metrics(id).await?;
        let up = series(&text, "primus_instance_up{").iter().filter(|(_, v)| *v == 1.0).count();
        if up >= n {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!("node {id}: {up}/{n} instances up after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Cumulative `primus_probe_interval_seconds` buckets (le → count) and the total count.
fn interval_buckets(text: &str) -> BTreeMap<String, f64> {
    series(text, "primus_probe_interval_seconds_bucket{le=\"")
        .into_iter()
        .map(|(k, v)| {
            (k.trim_start_matches("primus_probe_interval_seconds_bucket{le=\"").trim_end_matches("\"}").to_string(), v)
        })
        .collect()
}

/// "n, ≤1.05 s x%, >1.5 s n, >2 s n" from the difference of two scrapes.
fn interval_summary(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> (String, f64) {
    let d = |le: &str| after.get(le).copied().unwrap_or(0.0) - before.get(le).copied().unwrap_or(0.0);
    let total = d("+Inf");
    let pct = |x: f64| if total > 0.0 { 100.0 * x / total } else { f64::NAN };
    let late = total - d("1.5");
    let missed = total - d("2");
    (
        format!(
            "n={total:.0}; ≤1.01 s {:.2}%, ≤1.1 s {:.3}%, >1.5 s {late:.0}, >2 s {missed:.0}, >5 s {:.0}",
            pct(d("1.01")),
            pct(d("1.1")),
            total - d("5")
        ),
        missed,
    )
}

/// Raft indexes of node `id`.
fn raft_index(text: &str) -> (f64, f64) {
    let g = |m: &str| series(text, m).first().map(|(_, v)| *v).unwrap_or(0.0);
    (g("primus_raft_commit_index "), g("primus_raft_applied_index "))
}

/// Copies node `id`'s log next to the bench's temporary files (the group's directory goes
/// with it).
fn keep_log(co: &Coordinators, id: u64) {
    let to = std::env::temp_dir().join(format!("primus-scale-{}-node{id}.log", std::process::id()));
    match std::fs::copy(&co.group.node(id).log_path, &to) {
        Ok(_) => println!("primusd log of node {id} kept in {}", to.display()),
        Err(e) => println!("cannot keep the log of node {id}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Failovers
// ---------------------------------------------------------------------------------------------

struct FailoverResult {
    cluster: usize,
    to_writable: Duration,
    /// Kill → StartFailover proposed (detection, confirmation, double-check).
    to_start_ms: u64,
    /// finished_at − the `complete` step: one Raft commit of the record at the end.
    final_commit_ms: Option<u64>,
    promotions: u32,
    records: usize,
    /// Every record of the cluster: id, outcome, reason.
    outcomes: String,
}

/// Kills the primaries of `clusters` at the same moment and waits for each to be replaced by
/// a writable replica; then checks each history (one succeeded record) and that exactly one
/// instance was made writable.
async fn kill_and_measure(farm: &Farm, client: &Client, clusters: &[usize]) -> Result<Vec<FailoverResult>> {
    let primaries: Vec<(usize, usize)> = clusters
        .iter()
        .map(|c| {
            let w = farm.writable_of(*c);
            match w.as_slice() {
                [p] => Ok((*c, *p)),
                other => Err(anyhow!("cluster {c}: {} writable instances before the kill", other.len())),
            }
        })
        .collect::<Result<_>>()?;
    let before: BTreeMap<usize, u32> =
        clusters.iter().flat_map(|c| farm.clusters[*c].iter().map(|i| (*i, farm.writable_at(*i).1))).collect();
    let kill_wall = wall_ms();
    let mut killed_at = BTreeMap::new();
    for (c, p) in &primaries {
        killed_at.insert(*c, farm.kill(*p));
    }
    let mut writable: BTreeMap<usize, Duration> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while writable.len() < clusters.len() {
        for (c, p) in &primaries {
            if writable.contains_key(c) {
                continue;
            }
            let t0 = killed_at[c];
            for i in &farm.clusters[*c] {
                if i == p {
                    continue;
                }
                if let (Some(at), _) = farm.writable_at(*i) {
                    if at > t0 {
                        writable.insert(*c, at - t0);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let missing: Vec<String> =
                clusters.iter().filter(|c| !writable.contains_key(c)).map(|c| cluster_name(*c)).collect();
            bail!("no writable replica within 60 s in {} clusters: {}", missing.len(), missing.join(" "));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the failovers finish (repoint, heartbeat, FinishFailover) and read their records.
    let mut out = Vec::new();
    for c in clusters {
        let name = cluster_name(*c);
        let t0 = Instant::now();
        let h = loop {
            let h = client.history(&name).await.with_context(|| format!("history {name}"))?;
            if h.failovers.iter().all(|f| f.outcome != "in_progress") && !h.failovers.is_empty() {
                break h;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("{name}: failover still in progress after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let f = h.failovers.last().ok_or_else(|| anyhow!("{name}: no failover record"))?;
        if f.outcome != "succeeded" {
            bail!("{name}: failover {} ended {}: {}", f.id, f.outcome, f.outcome_reason);
        }
        let promotions: u32 =
            farm.clusters[*c].iter().map(|i| farm.writable_at(*i).1 - before.get(i).copied().unwrap_or(0)).sum();
        let complete = f.steps.iter().rev().find(|s| s.description.starts_with("complete")).map(|s| s.at_ms);
        out.push(FailoverResult {
            cluster: *c,
            to_writable: writable[c],
            to_start_ms: f.started_at_ms.saturating_sub(kill_wall),
            final_commit_ms: complete.zip(f.finished_at_ms).map(|(c, fin)| fin.saturating_sub(c)),
            promotions,
            records: h.failovers.len(),
            outcomes: h
                .failovers
                .iter()
                .map(|f| format!("{} {} → {} {} {}", f.id, f.old_primary, f.candidate, f.outcome, f.outcome_reason))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(out)
}

/// Kills the primaries of `clusters` one at a time, `gap` apart, each at a different phase
/// of the probe tick.
async fn one_at_a_time(farm: &Farm, client: &Client, clusters: &[usize]) -> Result<Vec<FailoverResult>> {
    let mut out = Vec::new();
    for (k, c) in clusters.iter().enumerate() {
        // Golden-ratio steps over the probe interval: faults are not aligned with the tick.
        let phase = ((k as f64 * 0.618_034).fract() * INTERVAL_MS as f64) as u64;
        tokio::time::sleep(Duration::from_millis(phase)).await;
        let r = kill_and_measure(farm, client, &[*c]).await?;
        out.extend(r);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(out)
}

fn check_one_promotion(rs: &[FailoverResult]) -> Result<()> {
    for r in rs {
        if r.promotions != 1 || r.records != 1 {
            bail!(
                "{}: {} instances made writable, {} failover records (want exactly one of each): {}",
                cluster_name(r.cluster),
                r.promotions,
                r.records,
                r.outcomes
            );
        }
    }
    Ok(())
}

fn failover_line(rs: &[FailoverResult]) -> String {
    let w: Vec<f64> = rs.iter().map(|r| ms(r.to_writable)).collect();
    let mut start: Vec<f64> = rs.iter().map(|r| r.to_start_ms as f64).collect();
    let mut commit: Vec<f64> = rs.iter().filter_map(|r| r.final_commit_ms.map(|v| v as f64)).collect();
    let mut w2 = w.clone();
    format!(
        "n={} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (kill → StartFailover p50 {:.0} ms; final Raft commit p50 {:.0} ms, max {:.0} ms)",
        w.len(),
        q(&mut w2, 0.5),
        q(&mut w2, 0.99),
        q(&mut w2, 1.0),
        q(&mut start, 0.5),
        q(&mut commit, 0.5),
        q(&mut commit, 1.0)
    )
}

// ---------------------------------------------------------------------------------------------
// Steady load
// ---------------------------------------------------------------------------------------------

struct NodeFigures {
    id: u64,
    cores: f64,
    rss_mib_avg: f64,
    rss_mib_max: f64,
    hwm_mib: f64,
    intervals: String,
    missed: f64,
    raft_entries: f64,
}

/// Runs the steady window: CPU and RSS of every coordinator, primusd's interval histogram.
async fn steady(co: &Coordinators, secs: u64) -> Result<Vec<NodeFigures>> {
    let hz = clock_ticks();
    let pids = co.pids();
    let mut start = BTreeMap::new();
    for (id, pid) in &pids {
        let m = co.metrics(*id).await?;
        start.insert(*id, (cpu_ticks(*pid)?, interval_buckets(&m), raft_index(&m)));
    }
    let t0 = Instant::now();
    let mut rss: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        for (id, pid) in &pids {
            rss.entry(*id).or_default().push(rss_kib(*pid)?.0);
        }
        tokio::time::sleep(Duration::from_secs(5).min(Duration::from_secs(secs).saturating_sub(t0.elapsed()))).await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for (id, pid) in &pids {
        let end_cpu = cpu_ticks(*pid)?;
        let m = co.metrics(*id).await?;
        let (cpu0, b0, r0) = &start[id];
        let (intervals, missed) = interval_summary(b0, &interval_buckets(&m));
        let r = rss.get(id).cloned().unwrap_or_default();
        let (_, hwm) = rss_kib(*pid)?;
        out.push(NodeFigures {
            id: *id,
            cores: (end_cpu - cpu0) as f64 / hz / elapsed,
            rss_mib_avg: r.iter().sum::<u64>() as f64 / r.len().max(1) as f64 / 1024.0,
            rss_mib_max: r.iter().copied().max().unwrap_or(0) as f64 / 1024.0,
            hwm_mib: hwm as f64 / 1024.0,
            intervals,
            missed,
            raft_entries: raft_index(&m).0 - r0.0,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------------

struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    fn add(&mut self, k: impl Into<String>, v: impl Into<String>) {
        let (k, v) = (k.into(), v.into());
        println!("{k}: {v}");
        self.rows.push((k, v));
    }
}

async fn baseline(rep: &mut Report, kills: usize) -> Result<Vec<FailoverResult>> {
    let clusters = env_or("SCALE_BASELINE_CLUSTERS", kills.max(1));
    let farm = Farm::start(clusters, 4).await?;
    let co = Coordinators::start(1).await?;
    register_all(&co.client, &farm).await?;
    wait_all_up(&co, 1, farm.instances(), Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rs = one_at_a_time(&farm, &co.client, &(0..kills.min(clusters)).collect::<Vec<_>>()).await?;
    check_one_promotion(&rs)?;
    rep.add(format!("baseline: failover, no load ({} instances, 1 primusd)", farm.instances()), failover_line(&rs));
    Ok(rs)
}

fn farm_lines(rep: &mut Report, label: &str, farm: &Farm, phase: u32) {
    let (samples, worst) = farm.intervals(phase);
    let late = samples.iter().filter(|v| **v > 1500.0).count();
    let missed = samples.iter().filter(|v| **v > 2000.0).count();
    let inst_missed = worst.iter().filter(|v| **v > 2000.0).count();
    rep.add(
        format!("{label}: probe intervals seen by the servers"),
        format!("{}; >1.5 s {late}, >2 s {missed} (instances with a missed interval: {inst_missed})", dist(&samples)),
    );
    rep.add(format!("{label}: per-instance longest interval"), dist(&worst));
}

fn node_lines(rep: &mut Report, label: &str, figs: &[NodeFigures]) {
    for f in figs {
        rep.add(
            format!("{label}: node {} CPU / RSS", f.id),
            format!(
                "{:.2} cores; RSS avg {:.0} MiB, max {:.0} MiB, peak (VmHWM) {:.0} MiB; Raft entries committed {:.0}",
                f.cores, f.rss_mib_avg, f.rss_mib_max, f.hwm_mib, f.raft_entries
            ),
        );
        rep.add(format!("{label}: node {} probe intervals (primus_probe_interval_seconds)", f.id), f.intervals.clone());
        let _ = f.missed;
    }
}

async fn single(rep: &mut Report, kills: usize, baseline: Option<&[FailoverResult]>) -> Result<()> {
    let clusters = env_or("SCALE_CLUSTERS", 1000usize);
    let secs = env_or("SCALE_SECONDS", 600u64);
    let mass = env_or("SCALE_MASS_KILLS", 50usize).min(clusters.saturating_sub(kills));
    let t_farm = Instant::now();
    let farm = Farm::start(clusters, 4).await?;
    let n = farm.instances();
    println!("farm: {n} fake servers up in {:.1} s", t_farm.elapsed().as_secs_f64());
    let co = Coordinators::start(1).await?;
    let (reg, retries) = register_all(&co.client, &farm).await?;
    rep.add(
        format!("single: register {clusters} clusters (discovery + Raft commit each, 8 at a time)"),
        format!("{:.1} s ({retries} retried after a discovery timeout)", reg.as_secs_f64()),
    );
    let up = wait_all_up(&co, 1, n, Duration::from_secs(180)).await?;
    println!("single: all {n} instances up {:.1} s after registration", up.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window = CpuWindow::start()?;
    farm.set_phase(1);
    let figs = steady(&co, secs).await?;
    farm.set_phase(2);
    let (line, bench_cores) = window.finish(&figs, "primusd")?;
    rep.add("single: machine CPU during the steady window", line);
    farm_lines(rep, &format!("single ({n} instances, {secs} s)"), &farm, 1);
    node_lines(rep, &format!("single ({n} instances, {secs} s)"), &figs);
    rep.add("single: the fake servers' own CPU (this process)", format!("{bench_cores:.2} cores"));
    // What one Prometheus scrape costs at this size (every instance's series, its
    // divergence and errant counts computed from the latest probes).
    let mut scrapes = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        bytes = co.metrics(1).await?.len();
        scrapes.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    scrapes.sort_by(f64::total_cmp);
    rep.add(
        format!("single: one GET /metrics ({n} instances, n = 5)"),
        format!("median {:.0} ms, max {:.0} ms, {:.1} MiB", scrapes[2], scrapes[4], bytes as f64 / 1048576.0),
    );
    let c = &farm.counters;
    rep.add(
        "single: fake server counters",
        format!(
            "{} connections, {} queries, {} probe batches, {} heartbeat writes, {} unknown statements",
            c.connections.load(std::sync::atomic::Ordering::Relaxed),
            c.queries.load(std::sync::atomic::Ordering::Relaxed),
            c.probes.load(std::sync::atomic::Ordering::Relaxed),
            c.heartbeat_writes.load(std::sync::atomic::Ordering::Relaxed),
            c.unknown.load(std::sync::atomic::Ordering::Relaxed)
        ),
    );

    // Failovers under load: one at a time.
    let singles: Vec<usize> = (0..kills).map(|k| clusters - 1 - k).collect();
    match one_at_a_time(&farm, &co.client, &singles).await.and_then(|rs| check_one_promotion(&rs).map(|_| rs)) {
        Ok(rs) => {
            rep.add(format!("single: failover under load ({n} instances)"), failover_line(&rs));
            if let Some(b) = baseline {
                let mut bw: Vec<f64> = b.iter().map(|r| ms(r.to_writable)).collect();
                let mut lw: Vec<f64> = rs.iter().map(|r| ms(r.to_writable)).collect();
                let (b50, l50) = (q(&mut bw, 0.5), q(&mut lw, 0.5));
                rep.add(
                    "single: under load − no load (p50)",
                    format!(
                        "{:+.0} ms (goal ≤ +100 ms: {})",
                        l50 - b50,
                        if l50 - b50 <= 100.0 { "met" } else { "MISSED" }
                    ),
                );
            }
        }
        Err(e) => rep.add(format!("single: failover under load ({n} instances)"), format!("FAILED: {e:#}")),
    }

    // Item 4: many primaries at once.
    farm.set_phase(3);
    let victims: Vec<usize> = (0..mass).map(|k| k * (clusters - kills) / mass.max(1)).collect();
    match kill_and_measure(&farm, &co.client, &victims).await {
        Ok(rs) => {
            rep.add(format!("single: {mass} primaries killed at once ({n} instances)"), failover_line(&rs));
            rep.add(
                format!("single: {mass} at once, promotions"),
                format!(
                    "{} clusters failed over, {} with exactly one promotion and one record",
                    rs.len(),
                    rs.iter().filter(|r| r.promotions == 1 && r.records == 1).count()
                ),
            );
            if let Err(e) = check_one_promotion(&rs) {
                rep.add(format!("single: {mass} at once"), format!("FAILED: {e:#}"));
                keep_log(&co, 1);
            }
        }
        Err(e) => rep.add(format!("single: {mass} primaries killed at once ({n} instances)"), format!("FAILED: {e:#}")),
    }
    // Nothing else may have failed over: the node's failover gauges (from the replicated
    // history) must add up to the primaries killed.
    let text = co.metrics(1).await?;
    let recorded: f64 = series(&text, "primus_failovers{").iter().map(|(_, v)| v).sum();
    rep.add(
        "single: failover records in all 1,000 clusters",
        format!(
            "{recorded:.0} for {} primaries killed{}",
            kills + mass,
            if recorded as usize == kills + mass { "" } else { " (MISMATCH)" }
        ),
    );
    farm_lines(rep, "single (during the failovers)", &farm, 2);
    let (rss, hwm) = rss_kib(co.pids().first().map(|p| p.1).unwrap_or(0))?;
    rep.add(
        "single: primusd RSS at the end / peak",
        format!("{:.0} MiB / {:.0} MiB", rss as f64 / 1024.0, hwm as f64 / 1024.0),
    );
    let unknown = farm.unknown_statements();
    if !unknown.is_empty() {
        rep.add("single: unknown statements", unknown.join(" | "));
    }
    Ok(())
}

async fn group(rep: &mut Report, kills: usize) -> Result<()> {
    let clusters = env_or("SCALE_GROUP_CLUSTERS", 200usize);
    let secs = env_or("SCALE_GROUP_SECONDS", 120u64);
    let farm = Farm::start(clusters, 4).await?;
    let n = farm.instances();
    let co = Coordinators::start(3).await?;
    let (reg, retries) = register_all(&co.client, &farm).await?;
    rep.add(format!("group: register {clusters} clusters"), format!("{:.1} s ({retries} retried)", reg.as_secs_f64()));
    for id in 1..=3 {
        wait_all_up(&co, id, n, Duration::from_secs(180)).await?;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (leader, _) = co.group.wait_leader(&[], Duration::from_secs(10)).await?;
    farm.set_phase(11);
    let window = CpuWindow::start()?;
    let figs = steady(&co, secs).await?;
    farm.set_phase(12);
    rep.add("group: machine CPU during the steady window", window.finish(&figs, "3 primusd")?.0);
    let label = format!("group (3 nodes, {n} instances, {secs} s, leader node {leader})");
    farm_lines(rep, &label, &farm, 11);
    node_lines(rep, &label, &figs);
    let singles: Vec<usize> = (0..kills.min(clusters)).collect();
    let killed = singles.len();
    match one_at_a_time(&farm, &co.client, &singles).await.and_then(|rs| check_one_promotion(&rs).map(|_| rs)) {
        Ok(rs) => rep.add(format!("group: failover under load ({n} instances, 3 nodes)"), failover_line(&rs)),
        Err(e) => rep.add(format!("group: failover under load ({n} instances, 3 nodes)"), format!("FAILED: {e:#}")),
    }
    let text = co.metrics(leader).await?;
    let recorded: f64 = series(&text, "primus_failovers{").iter().map(|(_, v)| v).sum();
    rep.add(
        format!("group: failover records in all {clusters} clusters"),
        format!("{recorded:.0} for {killed} primaries killed"),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let parts = std::env::var("SCALE_PARTS").unwrap_or_else(|_| "baseline,single,group".into());
    let kills = env_or("SCALE_KILLS", 5usize);
    let limit = open_files_limit();
    let need = env_or("SCALE_CLUSTERS", 1000u64) * 5 * 3;
    if parts.contains("single") && limit < need {
        bail!(
            "open files limit {limit} < {need}: raise it (ulimit -n) for 5 listeners and ~2 connections per instance"
        );
    }
    println!(
        "scale bench: parts {parts}; probe_interval_ms {INTERVAL_MS}; machine: {} cores (shared)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let mut rep = Report { rows: Vec::new() };
    let mut base = None;
    if parts.contains("baseline") {
        match baseline(&mut rep, kills).await {
            Ok(b) => base = Some(b),
            Err(e) => rep.add("baseline", format!("FAILED: {e:#}")),
        }
    }
    if parts.contains("single") {
        if let Err(e) = single(&mut rep, kills, base.as_deref()).await {
            rep.add("single", format!("FAILED: {e:#}"));
        }
    }
    if parts.contains("group") {
        if let Err(e) = group(&mut rep, kills).await {
            rep.add("group", format!("FAILED: {e:#}"));
        }
    }
    println!("\n| figure | value |\n|---|---|");
    for (k, v) in &rep.rows {
        println!("| {k} | {v} |");
    }
    Ok(())
}

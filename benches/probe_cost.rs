//! What one probe costs the coordinator, against real MariaDB (issue 4).
//!
//! A sandbox of real `mariadbd` processes (a primary and `PROBE_REPLICAS` = 2 replicas, with the
//! heartbeat table in place, so every probe is the full primusd batch: variables,
//! `SHOW ALL SLAVES STATUS`, `SHOW SLAVE HOSTS`, heartbeat rows) is multiplied into
//! `PROBE_TARGETS` distinct probe targets (default 300; issue 4 asks for at least 30) by TCP
//! proxies on distinct ports, round-robin over the servers.
//!
//! The probers run the way primusd runs them (`monitor.rs`): one task per instance, each owning
//! one [`Prober`] (one reused connection), every probe under a deadline, all on a
//! **single-threaded tokio runtime on its own thread**. The proxies and the sandbox live on a
//! separate runtime, so the CPU time of the prober thread (`CLOCK_THREAD_CPUTIME_ID`) is the
//! coordinator's cost of probing alone: the driver, parsing the observation, the runtime, and
//! the kernel's share of its socket calls. `mariadbd`'s CPU and the proxies' CPU are excluded
//! from that figure (printed separately, from `/proc/<pid>/stat`). With 2+ CPUs the prober
//! thread is pinned to the first one and everything else to the rest (`PROBE_PIN=0` to turn
//! off), so "one core" is a core the coordinator does not share with the servers it probes.
//!
//! Two measurements, on the same connections:
//! 1. *saturate*: every target probed back to back for `PROBE_SECONDS` (default 10), at most
//!    `PROBE_IN_FLIGHT` (default 8) probes at once so the servers answer well within the probe
//!    timeout: CPU µs per probe, hence instances per core at a 1 s interval
//!    (= 1e6 / CPU µs per probe). Wall latency here includes queueing at the servers.
//! 2. *steady*: every target probed at exactly a 1 s interval (starts spread over the second) for
//!    `PROBE_STEADY_SECONDS` (default 10): the prober thread's share of one core, and the real
//!    wall latency of a probe. This includes the per-wake-up cost (a probe wakes the thread
//!    ~4 times) that the saturated run amortises away, so it is the conservative figure; it
//!    falls as the number of targets grows and wake-ups coalesce.
//!
//! Run: `cargo bench -p primus-benches --bench probe_cost` (or `scripts/bench.sh probe_cost`).
//! Goal from issue 4: 5,000 instances at a 1 s interval per coordinator (on one core), i.e.
//! at most 200 µs of CPU per probe; checked against the worse of the two figures.

use primus_benches::{env_or, quantile_ms, summarize};
use primus_mysql::{ProbeConfig, Prober};
use primus_testkit::mariadb::{Sandbox, SandboxOptions, Topology, COORDINATOR_PASSWORD, COORDINATOR_USER};
use primus_testkit::proxy::LinkProxy;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// primusd's per-probe deadline is of this order (probe interval + slack).
const PROBE_DEADLINE: Duration = Duration::from_secs(3);
/// Instances per core per second the goal asks for.
const GOAL_INSTANCES: f64 = 5000.0;

/// CPU accounting (the only unsafe code here: plain libc calls with valid pointers).
#[allow(unsafe_code)]
mod cpu {
    use std::time::Duration;

    /// CPU time consumed so far by the calling thread.
    pub fn this_thread() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// `getrusage(RUSAGE_THREAD)` of the calling thread.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Usage {
        pub user: Duration,
        pub sys: Duration,
        /// Voluntary + involuntary context switches: roughly, how often the thread slept and woke.
        pub switches: u64,
    }

    pub fn this_thread_usage() -> Usage {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
            return Usage::default();
        }
        let tv = |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
        Usage { user: tv(ru.ru_utime), sys: tv(ru.ru_stime), switches: (ru.ru_nvcsw + ru.ru_nivcsw) as u64 }
    }

    /// Raises the soft limit of open files to the hard limit: every target costs the process
    /// 4 descriptors (prober socket, proxy listener, both proxy sockets).
    pub fn raise_nofile_limit() {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `lim` is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            // SAFETY: `lim` is a valid rlimit; failure only leaves the old limit.
            let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        }
    }

    /// CPUs this thread may run on.
    pub fn allowed() -> Vec<usize> {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
            return Vec::new();
        }
        // SAFETY: CPU_ISSET only reads `set`; indices are below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
    }

    /// Pins thread `tid` (0: the calling thread) to `cpus`; false if the kernel refused.
    pub fn pin(tid: i32, cpus: &[usize]) -> bool {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cpus {
            // SAFETY: `set` is a valid cpu_set_t; CPU_SET ignores out-of-range indices.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
    }

    /// Pins every current thread of process `pid` (new threads inherit their creator's mask).
    pub fn pin_process(pid: u32, cpus: &[usize]) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
        let mut ok = true;
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                ok &= pin(tid, cpus);
            }
        }
        ok
    }

    fn clock_ticks_per_sec() -> u64 {
        // SAFETY: sysconf has no memory-safety preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as u64
        } else {
            100
        }
    }

    /// user + system CPU time of a process (all its threads), from `/proc/<pid>/stat`
    /// (clock-tick resolution, 10 ms usually: fine over seconds).
    pub fn process(pid: &str) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start at field 3 (state);
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let hz = clock_ticks_per_sec();
        Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }
}

/// CPU of the processes outside the prober thread, for the "excluded" line.
#[derive(Clone)]
struct Others {
    mariadbd_pids: Vec<u32>,
}

impl Others {
    /// (all mariadbd, this whole process).
    fn sample(&self) -> (Duration, Duration) {
        let servers = self.mariadbd_pids.iter().filter_map(|p| cpu::process(&p.to_string())).sum();
        (servers, cpu::process("self").unwrap_or_default())
    }
}

/// What one measured window produced.
struct Window {
    label: &'static str,
    wall: Duration,
    /// CPU time of the prober thread.
    cpu: Duration,
    /// Its user/system split and context switches.
    usage: cpu::Usage,
    /// CPU time of the mariadbd processes.
    server_cpu: Duration,
    /// CPU time of this process minus the prober thread: the proxies (and the idle main thread).
    proxy_cpu: Duration,
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Window {
    fn probes(&self) -> usize {
        self.latencies.len()
    }
    fn cpu_us_per_probe(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.probes().max(1) as f64
    }
    fn per_core_at_1s(&self) -> f64 {
        1e6 / self.cpu_us_per_probe()
    }
}

/// Outcome of one probe task: latencies of successful probes, error count, first error.
type TaskResult = (Vec<Duration>, u64, Option<String>);

/// One probe under primusd's deadline; dropping the connection on expiry as primusd does.
async fn probe_once(p: &Prober, lat: &mut Vec<Duration>, errors: &mut u64, first: &mut Option<String>) {
    let t = Instant::now();
    match tokio::time::timeout(PROBE_DEADLINE, p.probe()).await {
        Ok(Ok(obs)) => {
            lat.push(t.elapsed());
            drop(obs);
        }
        Ok(Err(e)) => {
            *errors += 1;
            first.get_or_insert_with(|| e.to_string());
        }
        Err(_) => {
            p.disconnect().await;
            *errors += 1;
            first.get_or_insert_with(|| "probe deadline exceeded".into());
        }
    }
}

/// Runs the tasks of one window on the current (prober) runtime and accounts for it.
async fn measure<F, Fut>(label: &'static str, probers: &[Arc<Prober>], others: &Others, task: F) -> Window
where
    F: Fn(usize, Arc<Prober>) -> Fut,
    Fut: std::future::Future<Output = TaskResult> + Send + 'static,
{
    let (server0, proc0) = others.sample();
    let usage0 = cpu::this_thread_usage();
    let cpu0 = cpu::this_thread();
    let t0 = Instant::now();
    let handles: Vec<_> = probers.iter().enumerate().map(|(i, p)| tokio::spawn(task(i, p.clone()))).collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok((lat, e, first)) => {
                latencies.extend(lat);
                errors += e;
                if first_error.is_none() {
                    first_error = first;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("probe task failed: {e}"));
            }
        }
    }
    let wall = t0.elapsed();
    let cpu = cpu::this_thread().saturating_sub(cpu0);
    let usage1 = cpu::this_thread_usage();
    let usage = cpu::Usage {
        user: usage1.user.saturating_sub(usage0.user),
        sys: usage1.sys.saturating_sub(usage0.sys),
        switches: usage1.switches.saturating_sub(usage0.switches),
    };
    let (server1, proc1) = others.sample();
    Window {
        label,
        wall,
        cpu,
        usage,
        server_cpu: server1.saturating_sub(server0),
        proxy_cpu: proc1.saturating_sub(proc0).saturating_sub(cpu),
        latencies,
        errors,
        first_error,
    }
}

/// Everything the prober thread reports back.
struct ProberReport {
    connect: Vec<Duration>,
    replicas_seen: usize,
    heartbeat_seen: usize,
    saturate: Window,
    steady: Window,
}

/// How long and how hard to probe.
#[derive(Debug, Clone, Copy)]
struct Settings {
    saturate_secs: u64,
    /// Probes in flight at once during the saturated run.
    in_flight: usize,
    steady_secs: u64,
}

fn run_probers(targets: Vec<String>, others: Others, settings: Settings) -> anyhow::Result<ProberReport> {
    let Settings { saturate_secs, in_flight, steady_secs } = settings;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let config = ProbeConfig::new(COORDINATOR_USER, COORDINATOR_PASSWORD);
        let probers = targets
            .iter()
            .map(|t| Ok(Arc::new(Prober::new(t.parse()?, config.clone()))))
            .collect::<anyhow::Result<Vec<_>>>()?;

        // Connect every prober (as primusd's first probe does) and check what a probe sees.
        let firsts: Vec<_> = probers
            .iter()
            .map(|p| {
                let p = p.clone();
                tokio::spawn(async move { p.probe().await })
            })
            .collect();
        let mut connect = Vec::new();
        let (mut replicas_seen, mut heartbeat_seen) = (0, 0);
        for (h, target) in firsts.into_iter().zip(&targets) {
            let obs = h.await?.map_err(|e| anyhow::anyhow!("first probe of {target} failed: {e}"))?;
            if let Some(us) = obs.connect_us {
                connect.push(Duration::from_micros(us));
            }
            replicas_seen += usize::from(obs.is_replica());
            heartbeat_seen += usize::from(!obs.heartbeat.is_empty());
        }
        // A few unmeasured probes each so allocators and caches are warm.
        for _ in 0..3 {
            for p in &probers {
                p.probe().await.map_err(|e| anyhow::anyhow!("warm-up probe failed: {e}"))?;
            }
        }

        // 1. Saturate: every target back to back, at most `in_flight` probes at once (FIFO
        //    permits: round robin), so that the servers (which share the other CPUs) answer
        //    within the probe timeout instead of queueing 300 batches.
        let deadline = Instant::now() + Duration::from_secs(saturate_secs);
        let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        let saturate = measure("saturate", &probers, &others, move |_, p| {
            let permits = permits.clone();
            async move {
                let (mut lat, mut errors, mut first) = (Vec::with_capacity(8192), 0, None);
                while Instant::now() < deadline {
                    let Ok(_permit) = permits.acquire().await else { break };
                    probe_once(&p, &mut lat, &mut errors, &mut first).await;
                }
                (lat, errors, first)
            }
        })
        .await;

        // 2. Steady: exactly a 1 s interval per target, starts spread over the second, like
        //    primusd's probe loops started at different times.
        let n = probers.len();
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let steady = measure("steady 1 s", &probers, &others, move |i, p| async move {
            let offset = Duration::from_secs(1) * i as u32 / n as u32;
            let mut tick = tokio::time::interval_at(start + offset, Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut lat, mut errors, mut first) = (Vec::new(), 0, None);
            for _ in 0..steady_secs {
                tick.tick().await;
                probe_once(&p, &mut lat, &mut errors, &mut first).await;
            }
            (lat, errors, first)
        })
        .await;

        for p in &probers {
            p.disconnect().await;
        }
        Ok(ProberReport { connect, replicas_seen, heartbeat_seen, saturate, steady })
    })
}

/// 24000.4 -> "24,000".
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_window(w: &Window, targets: usize) {
    let probes = w.probes();
    let per_probe = |d: Duration| d.as_secs_f64() * 1e6 / probes.max(1) as f64;
    println!(
        "probe_cost {}: {} targets, {} probes in {:.1} s ({} errors), wall p50 {:.2} ms p99 {:.2} ms, \
         CPU {:.0} µs/probe (prober thread at {:.2}% of one core) -> ~{} instances per core at 1 s",
        w.label,
        targets,
        probes,
        w.wall.as_secs_f64(),
        w.errors,
        quantile_ms(&w.latencies, 0.50),
        quantile_ms(&w.latencies, 0.99),
        w.cpu_us_per_probe(),
        w.cpu.as_secs_f64() * 100.0 / w.wall.as_secs_f64(),
        thousands(w.per_core_at_1s()),
    );
    println!(
        "probe_cost {} prober thread: user {:.0} + sys {:.0} µs/probe (getrusage), {:.1} context switches/probe; latency {}",
        w.label,
        per_probe(w.usage.user),
        per_probe(w.usage.sys),
        w.usage.switches as f64 / probes.max(1) as f64,
        summarize(w.latencies.clone())
    );
    println!(
        "probe_cost {} excluded from the figure above: mariadbd {:.0} µs/probe, proxies {:.0} µs/probe (separate runtime)",
        w.label,
        per_probe(w.server_cpu),
        per_probe(w.proxy_cpu),
    );
    if let Some(e) = &w.first_error {
        println!("probe_cost {} first error: {e}", w.label);
    }
}

fn main() -> anyhow::Result<()> {
    let targets: usize = env_or("PROBE_TARGETS", 300).max(1);
    let settings = Settings {
        saturate_secs: env_or("PROBE_SECONDS", 10).max(1),
        in_flight: env_or("PROBE_IN_FLIGHT", 8).max(1),
        steady_secs: env_or("PROBE_STEADY_SECONDS", 10).max(1),
    };
    let replicas: usize = env_or("PROBE_REPLICAS", 2);

    cpu::raise_nofile_limit();
    // With 2+ CPUs, the prober thread gets the first one to itself and everything else (this
    // thread, hence the proxy runtime and the mariadbd processes, which inherit the mask) the
    // rest: "one core" for the coordinator's probing, not shared with what it probes.
    let allowed = cpu::allowed();
    let pin = env_or("PROBE_PIN", 1) != 0 && allowed.len() >= 2;
    let (prober_cpu, other_cpus) = match allowed.split_first() {
        Some((first, rest)) if pin => (Some(*first), rest.to_vec()),
        _ => (None, Vec::new()),
    };
    if prober_cpu.is_some() && !cpu::pin(0, &other_cpus) {
        anyhow::bail!("sched_setaffinity refused; run with PROBE_PIN=0");
    }
    // The sandbox and the proxies run here, never on the prober thread.
    let infra =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("proxies").enable_all().build()?;
    let (sandbox, proxies) = infra.block_on(async {
        let sandbox = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(replicas))).await?;
        // The heartbeat table as primusd leaves it, so probes read it in their batch.
        let config = ProbeConfig::new(COORDINATOR_USER, COORDINATOR_PASSWORD);
        let primary = Prober::new(sandbox.primary().addr().parse()?, config);
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        primary
            .write_heartbeat("bench", 1, now_ms, 1)
            .await
            .map_err(|e| anyhow::anyhow!("heartbeat write failed: {e}"))?;
        primary.disconnect().await;
        sandbox.wait_replicas_caught_up(Duration::from_secs(20)).await?;
        let addrs = sandbox.addrs();
        let mut proxies = Vec::with_capacity(targets);
        for i in 0..targets {
            proxies.push(LinkProxy::start(addrs[i % addrs.len()]).await?);
        }
        anyhow::Ok((sandbox, proxies))
    })?;
    let servers = sandbox.instances().len();
    let version = sandbox.info().version;
    let others = Others { mariadbd_pids: sandbox.instances().iter().filter_map(|i| i.pid()).collect() };
    if prober_cpu.is_some() {
        for pid in &others.mariadbd_pids {
            cpu::pin_process(*pid, &other_cpus);
        }
    }
    let placement = match prober_cpu {
        Some(c) => format!("prober thread pinned to CPU {c}, mariadbd and proxies to CPUs {other_cpus:?}"),
        None => "no CPU pinning".to_string(),
    };
    let target_addrs: Vec<String> = proxies.iter().map(|p| p.listen_addr().to_string()).collect();
    println!(
        "probe_cost: {version}: primary + {replicas} replicas, {targets} probe targets on distinct ports \
         (~{} per mariadbd, through TCP proxies on a separate runtime); probers: one task and one \
         connection per target on a single-threaded runtime on its own thread; {placement}",
        targets.div_ceil(servers)
    );

    let report = std::thread::Builder::new()
        .name("probers".into())
        .spawn(move || {
            if let Some(c) = prober_cpu {
                if !cpu::pin(0, &[c]) {
                    anyhow::bail!("cannot pin the prober thread to CPU {c}; run with PROBE_PIN=0");
                }
            }
            run_probers(target_addrs, others, settings)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("prober thread panicked"))??;

    println!(
        "probe_cost: first probes: {}/{targets} saw replication status (replicas), {}/{targets} read heartbeat rows; \
         connect (handshake + flavor query): {}",
        report.replicas_seen,
        report.heartbeat_seen,
        summarize(report.connect.clone())
    );
    println!("probe_cost saturate: {} probes in flight at most (PROBE_IN_FLIGHT)", settings.in_flight);
    print_window(&report.saturate, targets);
    print_window(&report.steady, targets);
    let worst = report.saturate.cpu_us_per_probe().max(report.steady.cpu_us_per_probe());
    let capacity = 1e6 / worst;
    println!(
        "probe_cost goal check: {} instances at 1 s per coordinator on one core needs <= {:.0} µs CPU/probe; \
         measured {:.0} µs (saturate) / {:.0} µs (steady 1 s) -> ~{} instances per core: {} \
         (prober CPU only; mariadbd's CPU is not the coordinator's and is excluded)",
        thousands(GOAL_INSTANCES),
        1e6 / GOAL_INSTANCES,
        report.saturate.cpu_us_per_probe(),
        report.steady.cpu_us_per_probe(),
        thousands(capacity),
        if capacity >= GOAL_INSTANCES { "met" } else { "NOT met" }
    );

    let switches = |w: &Window| w.usage.switches as f64 / w.probes().max(1) as f64;
    println!(
        "probe_cost note: the steady figure pays {:.1} thread wake-ups per probe against {:.1} saturated; more \
         instances per second share wake-ups, so at 5,000 probes/s the CPU per probe lies between the two figures",
        switches(&report.steady),
        switches(&report.saturate)
    );

    drop(proxies);
    drop(sandbox);
    drop(infra);
    Ok(())
}

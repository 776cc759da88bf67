//! `primus-nemesis`: randomized faults on real processes (issue 15).
//!
//! `primus-nemesis run` draws fault schedules from seeds and runs each on a fresh lab:
//! three MariaDB servers (each with its primus-agent), three or five primusd and two
//! application clients, every one in its own network namespace on a bridge. Each
//! schedule's history is judged by the checker (`check.rs`); the run ends with a
//! report, one row per fault kind. Needs root (namespaces, nftables).

mod check;
mod report;
mod run;
mod schedule;
mod workload;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "primus-nemesis",
    about = "Random fault schedules against real primusd, primus-agent and MariaDB processes in network \
             namespaces, with a workload history judged by a checker",
    after_help = "Examples:\n  primus-nemesis run --schedules 3 --seconds 20     three short schedules\n  \
                  primus-nemesis run --seed 17 --seconds 30        replay one schedule\n  \
                  primus-nemesis run --schedules 100 --jobs 2 --report docs/nemesis-report.md"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run schedules and print the report (exit 1 on any violation or failed run).
    Run(RunArgs),
    /// Print the schedules of these seeds without running them.
    Schedule {
        /// First seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many seeds from --seed.
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        coordinators: usize,
    },
    /// Run one schedule in this process (what `run` starts per schedule).
    #[command(hide = true)]
    One {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        coordinators: usize,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        subnet: u8,
        #[arg(long)]
        no_agents: bool,
    },
    /// The application client (runs inside a client namespace).
    #[command(hide = true)]
    Workload(workload::WorkloadArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// How many schedules (seeds first-seed, first-seed + 1, ...).
    #[arg(long, default_value_t = 1)]
    schedules: u64,
    /// Run exactly this seed (a replay); overrides --schedules and --first-seed.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Length of each schedule's fault phase.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// 3 or 5 coordinators.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    coordinators: u64,
    /// Schedules run at once (each on its own lab).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Where each schedule keeps its logs, history and result (a failing schedule's
    /// directory is kept; a clean one's is removed unless --keep).
    #[arg(long, default_value = "target/nemesis")]
    out: PathBuf,
    #[arg(long)]
    keep: bool,
    /// Also write the report (markdown) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print every schedule's own output (the default when running 3 or fewer).
    #[arg(long)]
    verbose: bool,
    /// Labs use the subnets 10.77.(B + seed % 100).0/24 for this B (100..=155); runs
    /// at once on one machine need bases 100 apart or disjoint seeds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(100..=155))]
    subnet_base: u8,
    /// Start no primus-agent: a deliberately unsafe deployment in which nothing fences
    /// a primary cut off from the coordinators. The checker's self-test: schedules that
    /// partition the primary with a client must then report split brain.
    #[arg(long)]
    no_agents: bool,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("primus-nemesis: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Workload(a) => runtime()?.block_on(workload::run(a)),
        Cmd::One { seed, seconds, coordinators, dir, subnet, no_agents } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("NEMESIS_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .init();
            let o = run::OneOptions { seed, seconds, coordinators, dir, subnet, no_agents };
            let r = runtime()?.block_on(run::run_one(&o))?;
            println!(
                "  {} writes acknowledged, {} failed, {} unknown; {} acknowledged not on the final primary; \
                 {} primary changes; converged {}",
                r.tally.acknowledged,
                r.tally.failed,
                r.tally.unknown,
                r.tally.acknowledged_lost,
                r.changes.len(),
                r.final_state
                    .converged_after_ms
                    .map(|ms| format!("{ms} ms after the heal"))
                    .unwrap_or_else(|| "NOT within 10 s".into())
            );
            for n in &r.final_state.notes {
                println!("  note: {n}");
            }
            for v in &r.violations {
                println!("  VIOLATION [{}]: {}", v.invariant, v.detail);
            }
            std::process::exit(if r.violations.is_empty() { 0 } else { 1 });
        }
        Cmd::Run(a) => run_many(a),
        Cmd::Schedule { seed, count, seconds, coordinators } => {
            for s in seed..seed + count {
                print!("{}", schedule::Schedule::generate(s, seconds, coordinators).describe());
            }
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")
}

fn run_many(a: RunArgs) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    anyhow::ensure!(uid == 0, "primus-nemesis needs root (network namespaces, nftables); running as uid {uid}");
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first_seed..a.first_seed + a.schedules).collect(),
    };
    let verbose = a.verbose || seeds.len() <= 3;
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    // Absolute: mariadbd resolves its paths after changing directory.
    let out = std::fs::canonicalize(&a.out).with_context(|| format!("resolve {}", a.out.display()))?;
    let exe = std::env::current_exe().context("own executable")?;
    let started = Instant::now();
    println!(
        "primus-nemesis: {} schedule(s) of {} s, {} coordinators, {} at once, seeds {}..={}",
        seeds.len(),
        a.seconds,
        a.coordinators,
        a.jobs,
        seeds[0],
        seeds[seeds.len() - 1]
    );
    let mut results: Vec<run::OneResult> = Vec::new();
    let mut failed_runs: Vec<(u64, String)> = Vec::new();
    let mut queue = seeds.clone().into_iter();
    let mut running: Vec<(u64, PathBuf, std::process::Child, Instant)> = Vec::new();
    loop {
        while running.len() < a.jobs.max(1) {
            let Some(seed) = queue.next() else { break };
            let dir = out.join(format!("seed-{seed}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::File::create(dir.join("run.log"))?;
            let log2 = log.try_clone()?;
            // Concurrent labs get distinct subnets (and namespace names).
            let subnet = a.subnet_base + (seed % 100) as u8;
            let child = Command::new(&exe)
                .args(["one", "--seed", &seed.to_string(), "--seconds", &a.seconds.to_string()])
                .args(["--coordinators", &a.coordinators.to_string(), "--subnet", &subnet.to_string()])
                .arg("--dir")
                .arg(&dir)
                .args(a.no_agents.then_some("--no-agents"))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .context("starting a schedule")?;
            running.push((seed, dir, child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].2.try_wait()? else {
                i += 1;
                continue;
            };
            let (seed, dir, _, t) = running.remove(i);
            let log = std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();
            if verbose {
                print!("{log}");
            }
            let result: Option<run::OneResult> =
                std::fs::read(dir.join("result.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let replay =
                format!("scripts/nemesis.sh --seed {seed} --seconds {} --coordinators {}", a.seconds, a.coordinators);
            match result {
                Some(r) => {
                    let ok = r.violations.is_empty();
                    println!(
                        "seed {seed}: {} in {:.0} s — {} faults, {} primary changes, {} writes acknowledged{}",
                        if ok { "clean" } else { "VIOLATIONS" },
                        t.elapsed().as_secs_f64(),
                        r.episodes.len(),
                        r.changes.len(),
                        r.tally.acknowledged,
                        if r.no_loss { " (no-loss mode)" } else { "" }
                    );
                    for n in &r.final_state.notes {
                        println!("  note: {n}");
                    }
                    for e in r.episodes.iter().filter(|e| e.detail.starts_with("not injected")) {
                        println!("  @{} ms {}: {}", e.at_ms, e.kind, e.detail);
                    }
                    if !ok {
                        for v in &r.violations {
                            println!("  VIOLATION [{}]: {}", v.invariant, v.detail);
                        }
                        println!("  logs, history and result kept in {}\n  replay: {replay}", dir.display());
                    } else if !a.keep {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    results.push(r);
                }
                None => {
                    let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
                    println!(
                        "seed {seed}: the run itself FAILED ({status}) after {:.0} s:\n{}\n  logs kept in {}\n  replay: {replay}",
                        t.elapsed().as_secs_f64(),
                        tail.join("\n"),
                        dir.display()
                    );
                    failed_runs.push((seed, tail.join("\n")));
                }
            }
        }
    }
    let table = report::render(&results, a.seconds, started.elapsed());
    println!("\n{table}");
    if let Some(p) = &a.report {
        std::fs::write(p, &table).with_context(|| format!("write {}", p.display()))?;
    }
    let violating = results.iter().filter(|r| !r.violations.is_empty()).count();
    if violating > 0 || !failed_runs.is_empty() {
        anyhow::bail!(
            "{violating} schedule(s) with violations, {} run(s) that failed to complete (see above)",
            failed_runs.len()
        );
    }
    Ok(())
}

//! `primus-sim`: run seeded fault schedules against primus' real decision code in
//! simulation, check invariants, print a summary; replay or shrink a failing seed.

use anyhow::Context;
use clap::Parser;
use primus_sim::run::{report, run_blocking, Options, Outcome};
use primus_sim::schedule::Schedule;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A faster allocator for the runner (the simulation allocates heavily).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "primus-sim",
    about = "Deterministic simulation of primus: N coordinators running the real engine, monitor, \
             state machine and lease code over simulated MySQL/MariaDB servers, networks and clocks, \
             under seeded random fault schedules, with invariants checked every 10 simulated ms.",
    after_help = "Examples:\n  primus-sim --schedules 1000            # seeds 1..=1000\n  \
                  primus-sim --seed 42 --trace           # replay one seed, print its trace\n  \
                  primus-sim --seed 42 --schedule '@100 crash db1;@2000 restart db1'\n  \
                  primus-sim --minutes 10 --first-seed 100000"
)]
struct Args {
    /// Run only this seed (and print its trace when it fails or with --trace).
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to run (from --first-seed on).
    #[arg(long, default_value_t = 100)]
    schedules: u64,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Run seeds until this many minutes have passed (instead of --schedules).
    #[arg(long)]
    minutes: Option<f64>,
    /// Simulated seconds of faults per schedule (then everything heals).
    #[arg(long, default_value_t = 20)]
    fault_seconds: u64,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// A fixed schedule (`@MS FAULT` entries separated by `;` or newlines), for --seed.
    #[arg(long)]
    schedule: Option<String>,
    /// Print the trace of the run (with --seed).
    #[arg(long)]
    trace: bool,
    /// Shrink a failing schedule to fewer faults that still fail (with --seed).
    #[arg(long)]
    shrink: bool,
    /// Also run every seed a second time and fail when the two runs differ.
    #[arg(long)]
    check_determinism: bool,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn options(args: &Args, seed: u64) -> anyhow::Result<Options> {
    let mut o = Options::from_seed(seed, args.fault_seconds * 1000);
    if let Some(s) = &args.schedule {
        o.schedule = Some(Schedule::parse(s).map_err(anyhow::Error::msg).context("--schedule")?);
    }
    Ok(o)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !primus_sim::run::seeded_runtime() {
        eprintln!(
            "primus-sim: built without --cfg tokio_unstable (an environment RUSTFLAGS replaces .cargo/config.toml's): \
             tokio's own random choices are not seeded, so a seed may not replay event for event"
        );
        anyhow::ensure!(
            !args.check_determinism,
            "--check-determinism needs a build with --cfg tokio_unstable (unset RUSTFLAGS, or add it to them)"
        );
    }
    if let Some(seed) = args.seed {
        return one(&args, seed);
    }
    many(&args)
}

fn one(args: &Args, seed: u64) -> anyhow::Result<()> {
    let opts = options(args, seed)?;
    let started = Instant::now();
    let out = run_blocking(opts.clone());
    let took = started.elapsed();
    if args.trace || !out.violations.is_empty() {
        print!("{}", report(&out));
    }
    println!(
        "seed {seed}: {} violation(s), {} failover(s), {} acknowledged writes, {:.1} simulated s in {:.2} s (digest {:016x})",
        out.violations.len(),
        out.failovers,
        out.acked,
        out.simulated_ms as f64 / 1000.0,
        took.as_secs_f64(),
        out.digest
    );
    if out.violations.is_empty() {
        return Ok(());
    }
    if args.shrink {
        let small = shrink(&opts, &out);
        println!("shrunk to {} fault(s):\n{}", small.faults.len(), small);
        let replay: Vec<String> = small.faults.iter().map(|t| format!("@{} {}", t.at_ms, t.fault)).collect();
        println!("replay: scripts/sim.sh --seed {seed} --schedule '{}'", replay.join(";"));
    } else {
        println!("replay: scripts/sim.sh --seed {seed} --trace   (add --shrink for a shorter schedule)");
    }
    std::process::exit(1);
}

/// Drop faults one at a time while the run still violates an invariant.
fn shrink(opts: &Options, failing: &Outcome) -> Schedule {
    let mut best = failing.schedule.clone();
    let mut i = 0;
    while i < best.faults.len() {
        let mut candidate = best.clone();
        candidate.faults.remove(i);
        let mut o = opts.clone();
        o.schedule = Some(candidate.clone());
        let out = run_blocking(o);
        if !out.violations.is_empty() {
            eprintln!("  shrink: {} fault(s) still fail", candidate.faults.len());
            best = candidate;
        } else {
            i += 1;
        }
    }
    best
}

#[derive(Default)]
struct Summary {
    runs: u64,
    failing: Vec<(u64, String)>,
    faults: u64,
    failovers: u64,
    divergent: u64,
    acked: u64,
    failed: u64,
    unknown: u64,
    simulated_ms: u64,
    codes: BTreeMap<String, u64>,
    steps: BTreeMap<String, u64>,
    nondeterministic: Vec<u64>,
}

fn many(args: &Args) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let deadline = args.minutes.map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0));
    let total = if deadline.is_some() { u64::MAX } else { args.schedules };
    let next = Arc::new(AtomicU64::new(0));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let started = Instant::now();
    println!(
        "primus-sim: {} schedule(s) of {} simulated s of faults (+ settling), {threads} thread(s), seeds from {}",
        if deadline.is_some() { format!("{} minute(s) of", args.minutes.unwrap_or(0.0)) } else { total.to_string() },
        args.fault_seconds,
        args.first_seed
    );
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (next, summary) = (next.clone(), summary.clone());
            scope.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let seed = args.first_seed + k;
                let Ok(opts) = options(args, seed) else { return };
                let out = run_blocking(opts.clone());
                let again = args.check_determinism.then(|| run_blocking(opts).digest);
                let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                s.runs += 1;
                s.faults += out.schedule.faults.len() as u64;
                s.failovers += out.failovers;
                s.divergent += out.divergent;
                s.acked += out.acked;
                s.failed += out.failed;
                s.unknown += out.unknown;
                s.simulated_ms += out.simulated_ms;
                for (c, n) in &out.analysis_codes {
                    *s.codes.entry(c.clone()).or_default() += n;
                }
                for (c, n) in &out.steps {
                    *s.steps.entry(c.clone()).or_default() += n;
                }
                if again.is_some_and(|d| d != out.digest) {
                    s.nondeterministic.push(seed);
                }
                if let Some(v) = out.violations.first() {
                    s.failing.push((seed, format!("{}: {}", v.invariant, v.detail)));
                    eprintln!("\nseed {seed} FAILED: {}: {}", v.invariant, v.detail);
                }
                let done = s.runs;
                let bad = s.failing.len();
                drop(s);
                let el = started.elapsed().as_secs_f64();
                let bar = if total == u64::MAX {
                    format!("{done} run")
                } else {
                    let w = 30usize;
                    let filled = ((done as f64 / total as f64) * w as f64) as usize;
                    format!("[{}{}] {done}/{total}", "#".repeat(filled.min(w)), ".".repeat(w - filled.min(w)))
                };
                // A terminal gets a live bar; a log (CI) a line every 10 %.
                let rate = done as f64 / el.max(0.001);
                if std::io::stderr().is_terminal() {
                    eprint!("\r{bar}  {bad} failing  {rate:.1} schedules/s   ");
                    let _ = std::io::stderr().flush();
                } else if (total == u64::MAX && done.is_multiple_of(500))
                    || (total != u64::MAX && done.is_multiple_of((total / 10).max(1)))
                {
                    eprintln!("{bar}  {bad} failing  {rate:.1} schedules/s");
                }
            });
        }
    });
    eprintln!();
    let s = summary.lock().unwrap_or_else(|p| p.into_inner());
    let el = started.elapsed().as_secs_f64();
    println!("\nsummary");
    println!("  schedules run            {}", s.runs);
    println!("  faults per schedule      {:.1}", s.faults as f64 / s.runs.max(1) as f64);
    println!("  failovers                {}", s.failovers);
    println!("  divergent former primaries flagged {}", s.divergent);
    println!("  writes ack/failed/unknown {}/{}/{}", s.acked, s.failed, s.unknown);
    println!("  invariant violations     {} schedule(s)", s.failing.len());
    if args.check_determinism {
        println!("  non-deterministic seeds  {}", s.nondeterministic.len());
    }
    println!("  wall time                {el:.1} s on {threads} thread(s)");
    println!("  schedules/s per core     {:.2}", s.runs as f64 / el.max(0.001) / threads as f64);
    println!(
        "  simulated/real time      {:.0}x per core",
        s.simulated_ms as f64 / 1000.0 / el.max(0.001) / threads as f64
    );
    println!("  analysis codes reached (leader samples):");
    for (c, n) in &s.codes {
        println!("    {c:<28} {n}");
    }
    println!("  failover steps recorded:");
    for (c, n) in &s.steps {
        println!("    {c:<28} {n}");
    }
    for (seed, why) in &s.failing {
        println!("FAILED seed {seed}: {why}\n  replay: scripts/sim.sh --seed {seed} --trace --shrink");
    }
    for seed in &s.nondeterministic {
        println!("NON-DETERMINISTIC seed {seed}: two runs differ");
    }
    if let Some(path) = &args.json {
        let j = serde_json::json!({
            "schedules": s.runs,
            "failing": s.failing.iter().map(|(seed, why)| serde_json::json!({"seed": seed, "violation": why})).collect::<Vec<_>>(),
            "failovers": s.failovers,
            "divergent_flagged": s.divergent,
            "acked": s.acked,
            "wall_seconds": el,
            "threads": threads,
            "simulated_seconds": s.simulated_ms as f64 / 1000.0,
            "analysis_codes": s.codes,
            "steps": s.steps,
            "nondeterministic": s.nondeterministic,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&j)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !s.failing.is_empty() || !s.nondeterministic.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

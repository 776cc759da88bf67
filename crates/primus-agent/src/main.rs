//! `primus-agent --config FILE`: the fencing agent beside one mysqld.

use anyhow::Context;
use clap::Parser;
use primus_agent::config::Config;
use primus_agent::AgentError;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::Instrument;

/// primus-agent — holds a write lease for the local mysqld and fences it when the
/// lease cannot be renewed.
///
/// Run one agent beside every mysqld of a cluster managed by primus coordinators.
/// The agent registers with the coordinators, then renews a lease every
/// `lease.renew_interval_ms`. When the lease runs out (coordinators unreachable,
/// lease refused, a failover started), when the coordinators say the server is not
/// the primary, or when no coordinator has answered for a whole `lease.ttl_ms`
/// since start, it makes the server read-only (`SET GLOBAL read_only = ON`, plus
/// `super_read_only` on MySQL) and kills client connections; if mysqld does not
/// answer within `fence.timeout_ms` it SIGKILLs mysqld (escalation = "kill"). The
/// agent never makes its server writable — only the coordinators do.
///
/// Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime error, 2 configuration error
/// (including a cluster/instance the coordinators do not know).
///
/// See docs/fencing.md for the configuration keys and the timing argument.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Path to the TOML configuration file. PRIMUS_* variables override its keys as
    /// for primusd (PRIMUS_LEASE__TTL_MS=2000, PRIMUS_TOKEN_FILE=…; docs/fencing.md).
    #[arg(long, short = 'c', env = "PRIMUS_CONFIG")]
    config: PathBuf,
    /// Log format: `text` for people, `json` for log shippers.
    #[arg(long, env = "PRIMUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, env = "PRIMUS_LOG", default_value = "info")]
    log: String,
    /// Check the configuration and exit (0 when valid, 2 otherwise).
    #[arg(long)]
    check_config: bool,
    /// Internal: run as the sentinel of the agent with this pid (the agent starts
    /// it; see docs/fencing.md).
    #[arg(long, hide = true)]
    sentinel_for: Option<u32>,
}

/// Start the sentinel as its own process (own process group, so a signal meant for
/// the agent's group does not reach it), and start it again if it dies while the
/// agent runs.
fn spawn_sentinel(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the primus-agent executable for the sentinel")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config")
        .arg(&args.config)
        .arg("--log-format")
        .arg(&args.log_format)
        .arg("--log")
        .arg(&args.log)
        .arg("--sentinel-for")
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().context("cannot start the sentinel process")?;
    tracing::info!(sentinel_pid = child.id(), "sentinel process started");
    std::thread::Builder::new()
        .name("sentinel-watch".into())
        .spawn(move || loop {
            let status = child.wait();
            tracing::warn!(?status, "the sentinel process ended while the agent runs; starting another in 1 s");
            std::thread::sleep(std::time::Duration::from_secs(1));
            match cmd.spawn() {
                Ok(c) => {
                    tracing::info!(sentinel_pid = c.id(), "sentinel process started again");
                    child = c;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the sentinel again; the agent still fences by itself");
                    return;
                }
            }
        })
        .context("cannot start the sentinel watcher thread")?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("primus-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("primus-agent: {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    primus_daemon::init_logging(&args.log_format, &args.log);
    if let Some(agent_pid) = args.sentinel_for {
        return sentinel_main(cfg, agent_pid);
    }
    if cfg.fence.sentinel {
        if let Err(e) = spawn_sentinel(&args) {
            tracing::error!(error = %format!("{e:#}"), "primus-agent exiting");
            eprintln!("primus-agent: {e:#}");
            return ExitCode::from(1);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("primus-agent: {e:#}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(primus_agent::run(cfg, primus_daemon::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "primus-agent exiting");
            eprintln!("primus-agent: {e}");
            ExitCode::from(if matches!(e, AgentError::NotFound { .. } | AgentError::Refused(_)) { 2 } else { 1 })
        }
    }
}

fn sentinel_main(cfg: Config, agent_pid: u32) -> ExitCode {
    let span = tracing::info_span!("sentinel", cluster = %cfg.cluster, instance = %cfg.instance);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "sentinel: cannot start the tokio runtime");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(primus_agent::sentinel::run(cfg, agent_pid).instrument(span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sentinel exiting");
            ExitCode::from(1)
        }
    }
}

//! `primus-agent --config FILE`: the fencing agent beside one mysqld.

use anyhow::Context;
use clap::Parser;
use primus_agent::config::Config;
use primus_agent::AgentError;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Path to the TOML configuration file.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Log format: `text` for people, `json` for log shippers.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
    /// Check the configuration and exit (0 when valid, 2 otherwise).
    #[arg(long)]
    check_config: bool,
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
            ExitCode::from(if matches!(e, AgentError::NotFound { .. }) { 2 } else { 1 })
        }
    }
}

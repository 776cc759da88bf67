//! `primusd --config FILE`: one coordinator of a primus Raft group.

use anyhow::Context;
use clap::Parser;
use primus_server::config::Config;
use primus_server::ExitError;
use std::path::PathBuf;
use std::process::ExitCode;

/// primusd — a failover coordinator for MySQL/MariaDB replication.
///
/// Three or five primusd nodes form a Raft group that stores topology and failover
/// decisions. See docs/config.md for every configuration key and
/// docs/architecture.md for how the group bootstraps and changes membership.
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
    #[arg(long, default_value = "info,openraft=warn")]
    log: String,
    /// Check the configuration and exit (0 when valid, 2 otherwise).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One process-wide TLS provider (ring), so nothing depends on which rustls
    // features the dependency graph happens to enable. Err means one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("primusd: {e}");
            return ExitCode::from(2);
        }
    };
    // A founding node must be listed in initial_members; find out before touching data_dir.
    if !primus_server::node::has_store(&cfg.data_dir) {
        if let Err(e) = cfg.check_bootstrap(&args.config) {
            eprintln!("primusd: {e}");
            return ExitCode::from(2);
        }
    }
    if args.check_config {
        if let Some(w) = cfg.fencing_warning() {
            eprintln!("primusd: warning: {w}");
        }
        println!("primusd: {} is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    primus_daemon::init_logging(&args.log_format, &args.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("primusd: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(primus_server::node::run(cfg, &args.config, primus_daemon::shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<ExitError>().map(|x| x.code).unwrap_or(1);
            eprintln!("primusd: {e:#}");
            tracing::error!(error = %format!("{e:#}"), "primusd exiting");
            ExitCode::from(code as u8)
        }
    }
}

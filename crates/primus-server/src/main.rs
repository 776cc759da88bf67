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
///
/// Environment overrides: every configuration key can be set by a PRIMUS_*
/// variable, which wins over the file: a top-level key as PRIMUS_NODE_ID, a key in a
/// section as PRIMUS_SECTION__KEY (double underscore), e.g. PRIMUS_MYSQL__USER=primus,
/// PRIMUS_RAFT__HEARTBEAT_MS=100,
/// PRIMUS_INITIAL_MEMBERS='[{id=1,addr="primus-0.primus:7100"}]'. A value that parses
/// as a TOML value (number, boolean, array, inline table, quoted string) is taken as
/// one, anything else as a string. A variable naming an unknown key is an error.
/// Command-line flags win over both. Not overrides: PRIMUS_CONFIG, PRIMUS_LOG,
/// PRIMUS_LOG_FORMAT (the flags below), primusctl's PRIMUS_ENDPOINTS, PRIMUS_CA,
/// PRIMUS_CERT, PRIMUS_KEY, PRIMUS_TOKEN_FILE, the test-only PRIMUS_FAULT_INJECTION,
/// PRIMUS_FAILPOINT, PRIMUS_CLOCK_SKEW_MS, the variables set for hooks, and any
/// variable named by a *_env key (password_env). Full list: docs/config.md,
/// "Environment overrides".
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Path to the TOML configuration file. Without it, every key comes from PRIMUS_*
    /// environment variables.
    #[arg(long, short = 'c', env = "PRIMUS_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `text` for people, `json` for log shippers.
    #[arg(long, env = "PRIMUS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, env = "PRIMUS_LOG", default_value = "info,openraft=warn")]
    log: String,
    /// Check the configuration and exit (0 when valid, 2 otherwise).
    #[arg(long)]
    check_config: bool,
}

/// What errors and `--check-config` call the configuration when there is no file.
const NO_FILE: &str = "(no --config file: environment only)";

fn main() -> ExitCode {
    let args = Args::parse();
    // One process-wide TLS provider (ring), so nothing depends on which rustls
    // features the dependency graph happens to enable. Err means one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The name errors give the configuration's source.
    let config_path = args.config.clone().unwrap_or_else(|| PathBuf::from(NO_FILE));
    let loaded = match &args.config {
        Some(path) => Config::load(path),
        None => Config::load_env_only(&config_path),
    };
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("primusd: {e}");
            return ExitCode::from(2);
        }
    };
    // A founding node must be listed in initial_members; find out before touching data_dir.
    if !primus_server::node::has_store(&cfg.data_dir) {
        if let Err(e) = cfg.check_bootstrap(&config_path) {
            eprintln!("primusd: {e}");
            return ExitCode::from(2);
        }
    }
    if args.check_config {
        if let Some(w) = cfg.fencing_warning() {
            eprintln!("primusd: warning: {w}");
        }
        println!("primusd: {} is valid", config_path.display());
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
    let result = rt.block_on(primus_server::node::run(cfg, &config_path, primus_daemon::shutdown_signal()));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags win over their PRIMUS_* variables (which win over nothing else: they are
    /// not configuration keys). The variables are set only in this test binary.
    #[test]
    fn flags_win_over_their_environment_variables() {
        std::env::set_var("PRIMUS_LOG_FORMAT", "json");
        std::env::set_var("PRIMUS_LOG", "debug");
        std::env::set_var("PRIMUS_CONFIG", "/etc/primus/env.toml");
        let a = Args::try_parse_from(["primusd"]).unwrap();
        assert_eq!((a.log_format.as_str(), a.log.as_str()), ("json", "debug"));
        assert_eq!(a.config, Some(PathBuf::from("/etc/primus/env.toml")));
        let a = Args::try_parse_from(["primusd", "--log-format", "text", "--log", "warn", "-c", "/x.toml"]).unwrap();
        assert_eq!((a.log_format.as_str(), a.log.as_str()), ("text", "warn"));
        assert_eq!(a.config, Some(PathBuf::from("/x.toml")));
        std::env::remove_var("PRIMUS_LOG_FORMAT");
        std::env::remove_var("PRIMUS_LOG");
        std::env::remove_var("PRIMUS_CONFIG");
        let a = Args::try_parse_from(["primusd"]).unwrap();
        assert_eq!(a.config, None);
        assert_eq!(a.log_format, "text");
    }
}

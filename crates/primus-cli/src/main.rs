//! `primusctl`: talk to a primus coordinator group.
//!
//! Every command accepts `--endpoints` (or `PRIMUS_ENDPOINTS`), `--output table|json`
//! and `--timeout`, and the security flags `--ca`, `--cert`, `--key`, `--token-file`
//! (or `PRIMUS_CA`, …). Any endpoint will do: writes are forwarded to the leader. When
//! nothing answers, or the group has no leader, primusctl says so in one line and
//! exits with status 1 (2 for usage errors).

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use primus_client::{Client, ClientOptions, ClusterSettings, ReadConsistency, TlsOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "primusctl", version, about = "Operate a primus coordinator group", long_about = None)]
struct Cli {
    /// Coordinator gRPC endpoints, comma-separated HOST:PORT list. Any subset that
    /// includes one live node works; writes are forwarded to the leader.
    #[arg(long, env = "PRIMUS_ENDPOINTS", global = true, default_value = "127.0.0.1:7101")]
    endpoints: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, global = true, default_value = "table")]
    output: Output,
    /// Overall deadline per command, retries included (e.g. 10s, 500ms): a command
    /// issued during an election retries every endpoint until the new leader answers.
    /// Membership changes wait at least 130 s, as they may include a snapshot transfer.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Verbose client logging to stderr.
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    /// PEM CA bundle that signed the coordinators' certificates. Setting it turns
    /// on TLS: needed when the coordinators have a [tls] section.
    #[arg(long, env = "PRIMUS_CA", global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM client certificate, for coordinators with `require_client_cert = true`
    /// (with --key; needs --ca).
    #[arg(long, env = "PRIMUS_CERT", global = true, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "PRIMUS_KEY", global = true, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// File holding the bearer token, for coordinators with an [auth] section
    /// (writes need it; reads too with `require_token_for_reads`). The token is
    /// never taken on the command line.
    #[arg(long, env = "PRIMUS_TOKEN_FILE", global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the coordinator group as its leader sees it: term, commit index, members.
    /// The leader answers once it has confirmed its leadership with a quorum (during an
    /// election this waits for the new leader); --stale prints the contacted node's own
    /// view instead (a node that calls itself leader without a quorum names no leader).
    Status {
        #[arg(long)]
        stale: bool,
    },
    /// Add or remove coordinators.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Register, list and remove MySQL/MariaDB clusters.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Show a cluster's replication topology as a tree: the primary, replicas under
    /// their source, with lag, heartbeat delay, GTID position, read_only, and flags
    /// such as `not replicating`, `errant GTID`, `unreachable from 2/3 coordinators`,
    /// `divergent: N transactions (…)` (a former primary that took writes after it was
    /// replaced: see `primusctl divergence`).
    Topology {
        name: String,
        /// Answer from the contacted node's own probes without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Emergency failover: promote the best replica (or --to HOST:PORT) now. For a
    /// primary that is dead; the old primary is fenced where reachable.
    Failover {
        name: String,
        #[arg(long)]
        to: Option<String>,
        /// No-loss (semi-sync) mode: promote even when a semi-sync replica may have
        /// acknowledged transactions the candidate lacks (refused otherwise, with the
        /// transactions named). The override is recorded in the failover's evidence.
        #[arg(long)]
        accept_loss: bool,
        /// Identifies this request (1–128 printable characters; default: a random
        /// one). Run the command again with the same ID — after primusctl was killed or
        /// timed out — and it is answered with the failover the first run started,
        /// never with a second one. primusctl itself retries under one ID.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Planned switchover: the old primary goes read-only, the candidate catches up
    /// exactly, is promoted, and the old primary replicates from it.
    Switchover {
        name: String,
        #[arg(long)]
        to: Option<String>,
        /// As for `failover`: asked again with the same ID, answered with the
        /// switchover the first run started.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
    },
    /// Every failover of a cluster with its steps, times, analysis, epoch and outcome.
    History { name: String },
    /// The leader's current analysis of a cluster (code and evidence), confirmed with a
    /// quorum; --stale: the contacted node's own analysis (not the one that decides).
    Analysis {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Repoint a demoted former primary (HOST:PORT) under the current primary —
    /// refused, with the list, when it has transactions the primary lacks, or when it
    /// is divergent (it executed transactions after the failover that replaced it:
    /// see `primusctl divergence`). Rebuild a divergent instance from the new primary;
    /// or, MariaDB only, pass --discard-divergent.
    Rejoin {
        name: String,
        instance: String,
        /// MariaDB only: rejoin a divergent former primary anyway, replicating from the
        /// promotion point of the failover that replaced it. Its divergent transactions
        /// are NOT undone: their changes stay in its tables (and its binary log is reset
        /// under gtid_strict_mode). The choice is recorded in the audit trail. Prefer
        /// rebuilding it from the new primary.
        #[arg(long)]
        discard_divergent: bool,
    },
    /// Show what a former primary (HOST:PORT) executed after the failover that replaced
    /// it: the failover, its promotion point (the new primary's GTIDs when it was
    /// promoted) and the divergent GTIDs with their count. A divergent instance stays
    /// demoted and read-only until it is rebuilt or rejoined with --discard-divergent.
    Divergence { name: String, instance: String },
    /// Acknowledge failovers (all, or one id): lifts the anti-flap block.
    Ack { name: String, id: Option<String> },
    /// Per-instance settings.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Put an instance (HOST:PORT) or a whole cluster in maintenance, or take it out.
    #[command(subcommand)]
    Maintenance(MaintenanceCmd),
    /// Move a replica under another member of its cluster (GTID repoint): `relocate
    /// [CLUSTER] HOST:PORT --below HOST:PORT`. The target may be another replica (which
    /// becomes an intermediate primary), an intermediate, or the primary. Refused, with
    /// the reason, when it would make a replication loop, when either server has
    /// transactions the primary lacks (errant), when the target keeps no binary log of
    /// what it applies (log_bin, log_slave_updates), for the primary, and during a
    /// failover. Committed to Raft before the replica is touched (audited).
    Relocate {
        /// CLUSTER, or HOST:PORT when the cluster is left out.
        #[arg(value_name = "CLUSTER|HOST:PORT")]
        first: String,
        /// HOST:PORT (when CLUSTER is given).
        #[arg(value_name = "HOST:PORT")]
        second: Option<String>,
        /// The member it replicates from afterwards.
        #[arg(long, value_name = "HOST:PORT")]
        below: String,
    },
    /// Switch automatic failover off for every cluster at once (`off --all --reason R`:
    /// an emergency stop, shown in `status`, that overrides each cluster's own setting;
    /// manual failovers and switchovers still work), or back on (`on --all`: each
    /// cluster follows its own setting again). With a cluster NAME instead of --all:
    /// that cluster only, as `automatic-failover NAME on|off`.
    Automatic {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// One cluster (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Every cluster.
        #[arg(long)]
        all: bool,
        /// Why (required with `off --all`): shown in `status` and the audit.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Turn automatic failover of a cluster on or off, or back to the global default.
    AutomaticFailover {
        name: String,
        #[arg(value_parser = ["on", "off", "default"])]
        state: String,
    },
    /// Where to write for a cluster: the primary's HOST:PORT, the epoch (fencing
    /// token), its datacenter, and any failover in progress. By default the answer is
    /// confirmed with the leader (never stale); --stale answers from the contacted
    /// node alone (works in a partition, may lag).
    Primary {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Follow a cluster's primary (or every cluster's, without NAME): prints the
    /// current state, then one line per change (failover started, primary changed,
    /// failover ended, demoted instances). Reconnects to another coordinator on its
    /// own and misses nothing. JSON lines with --output json. Stops on Ctrl-C.
    Watch {
        name: Option<String>,
        /// Resume after this epoch: completed failovers since are replayed first.
        #[arg(long, default_value_t = 0)]
        from_epoch: u64,
        /// Stop after this many events (for scripts); 0 = never.
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Semi-sync no-loss mode of a cluster: `on` makes primus keep lossless semi-sync
    /// (AFTER_SYNC, a timeout so long the primary never falls back to async) on every
    /// instance and prefer semi-sync replicas as candidates, so every transaction a
    /// client saw committed is on the promoted replica; commits then wait for a
    /// replica's acknowledgement. `off` keeps it off; `default` leaves it alone.
    SemiSync {
        name: String,
        #[arg(value_parser = ["on", "off", "default"])]
        state: String,
    },
    /// Print a shell completion script for primusctl, e.g.
    /// `primusctl completions bash > /etc/bash_completion.d/primusctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print primusctl's manual page (roff), e.g. `primusctl man > primusctl.1; man ./primusctl.1`.
    Man,
    /// Show the audit trail: every command the group applied, who asked, and the outcome.
    Audit {
        /// How many of the most recent records to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
enum MembersCmd {
    /// Add a coordinator: it joins as a learner, catches up (from a snapshot if the
    /// log was purged), then becomes a voter. Start its primusd first, with an empty
    /// data_dir and no initial_members.
    Add {
        id: u64,
        /// Its gRPC HOST:PORT as peers should reach it.
        addr: String,
        #[arg(long, default_value = "default")]
        datacenter: String,
    },
    /// Remove a coordinator from the group (voter or learner).
    Remove { id: u64 },
    /// Hand leadership to voter ID: the leader waits until ID holds its whole log, then
    /// asks it to start an election at once (before maintenance on the leader's host;
    /// primusd does this by itself when it stops on SIGTERM).
    TransferLeader { id: u64 },
}

#[derive(Subcommand, Debug)]
enum InstanceCmd {
    /// `set-promotion-rule [CLUSTER] HOST:PORT RULE`, RULE one of prefer | neutral |
    /// prefer_not | must_not. Without CLUSTER the instance's cluster is looked up.
    SetPromotionRule {
        /// CLUSTER, or HOST:PORT when the cluster is left out.
        #[arg(value_name = "CLUSTER|HOST:PORT")]
        first: String,
        /// HOST:PORT, or RULE when the cluster is left out.
        #[arg(value_name = "HOST:PORT|RULE")]
        second: String,
        /// RULE (when CLUSTER is given).
        #[arg(value_name = "RULE")]
        third: Option<String>,
    },
    /// Label an instance with its datacenter ("" clears it). A failover prefers a
    /// candidate in the old primary's datacenter ([failover] prefer_same_datacenter);
    /// clients see the primary's label.
    ///
    /// `set-datacenter [CLUSTER] HOST:PORT DC`; without CLUSTER the instance's cluster
    /// is looked up.
    SetDatacenter {
        /// CLUSTER, or HOST:PORT when the cluster is left out.
        #[arg(value_name = "CLUSTER|HOST:PORT")]
        first: String,
        /// HOST:PORT, or DC when the cluster is left out.
        #[arg(value_name = "HOST:PORT|DC")]
        second: String,
        /// DC (when CLUSTER is given).
        #[arg(value_name = "DC")]
        third: Option<String>,
    },
    /// Drop a decommissioned instance from its cluster: its topology entry, seed,
    /// promotion rule, maintenance, datacenter label, agent and demoted mark, so that it
    /// is no longer probed, shown UNREACHABLE or alerted on. Refused for the primary
    /// (switch over first), for an instance others replicate from (relocate them first),
    /// for one the leader sees still replicating (stop replication or shut it down
    /// first: it would be found again at once) and during a failover. Audited; the
    /// cluster's history, rules and epoch stay (unlike `cluster remove`).
    ///
    /// `forget [CLUSTER] HOST:PORT`; without CLUSTER the instance's cluster is looked up.
    Forget {
        /// CLUSTER, or HOST:PORT when the cluster is left out.
        #[arg(value_name = "CLUSTER|HOST:PORT")]
        first: String,
        /// HOST:PORT (when CLUSTER is given).
        #[arg(value_name = "HOST:PORT")]
        second: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum MaintenanceCmd {
    /// Start maintenance: no automatic failover, never promoted while it lasts.
    ///
    /// `maintenance start NAME` covers a whole cluster, `maintenance start HOST:PORT`
    /// one instance (its cluster is looked up), `maintenance start NAME HOST:PORT`
    /// names both.
    Start {
        /// Cluster NAME, or an instance's HOST:PORT.
        #[arg(value_name = "NAME|HOST:PORT")]
        target: String,
        /// HOST:PORT of an instance of cluster NAME; omit for the whole cluster.
        instance: Option<String>,
        /// Why: shown in `topology`, `analysis` and the audit trail.
        #[arg(long)]
        reason: String,
        /// How long it lasts; it ends by itself then (e.g. 90s, 30m, 2h, 1d).
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// End maintenance (same targets as `start`).
    End {
        /// Cluster NAME, or an instance's HOST:PORT.
        #[arg(value_name = "NAME|HOST:PORT")]
        target: String,
        /// HOST:PORT of an instance of cluster NAME.
        instance: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Register a cluster by one or more seed instances.
    Add {
        name: String,
        /// HOST:PORT of an instance of the cluster; repeat for several.
        #[arg(long = "seed", required = true)]
        seeds: Vec<String>,
        /// Turn automatic failover off (or on) for this cluster, overriding the global setting.
        #[arg(long)]
        automatic_failover: Option<bool>,
    },
    /// List registered clusters.
    List {
        /// Answer from the contacted node's local state without asking the leader (may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Set failover settings of one cluster in Raft, so that every coordinator (and
    /// every future leader) applies the same: `cluster set NAME KEY=VALUE [KEY=VALUE…]`;
    /// `KEY=` (empty) clears a key, back to each coordinator's `[failover]` section.
    /// Keys: automatic, recovery_block_period_ms, replica_progress_stale_ms,
    /// view_max_age_ms, catch_up_timeout_ms, prefer_same_datacenter,
    /// max_lag_for_candidate_s, fence_split. All or none are applied; `cluster list`
    /// and `topology` show them.
    Set {
        name: String,
        /// KEY=VALUE (an empty VALUE clears the key).
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Unregister a cluster: primus stops watching it and forgets its topology and
    /// failover history. Asks for confirmation on a terminal; scripts pass --yes (without
    /// it, and without a terminal to ask on, nothing is removed).
    Remove {
        name: String,
        /// Do not ask: remove it.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `maintenance start|end TARGET [INSTANCE]`: a TARGET with a `:` is an instance
/// (cluster names cannot hold one) whose cluster the leader looks up.
fn maintenance_target(target: String, instance: Option<String>) -> (String, Option<String>) {
    match instance {
        None if target.contains(':') => (String::new(), Some(target)),
        instance => (target, instance),
    }
}

/// `[CLUSTER] HOST:PORT VALUE` → (cluster, or "" for the leader to look it up;
/// instance; value).
fn instance_args(
    first: String,
    second: String,
    third: Option<String>,
    value: &str,
) -> anyhow::Result<(String, String, String)> {
    match third {
        Some(v) => Ok((first, second, v)),
        None if first.contains(':') => Ok((String::new(), first, second)),
        None => {
            anyhow::bail!("expected [CLUSTER] HOST:PORT {value}: {first:?} is not a HOST:PORT and {value} is missing")
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?} (use e.g. 500ms, 10s, 30m, 2h, 1d)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h or d)")),
    };
    if !(secs > 0.0 && secs.is_finite() && secs < 1e10) {
        return Err(format!("duration {s:?} must be positive (and under 300 years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `2h`, `90s`, `1h 5m 3s`: whole units as far as they go.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let parts = [(s / 86400, "d"), (s / 3600 % 24, "h"), (s / 60 % 60, "m"), (s % 60, "s")];
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, u)| format!("{n}{u}")).collect::<Vec<_>>().join(" ")
}

/// Print rows as aligned columns.
fn divergence_json(d: &primus_client::DivergenceResponse) -> Value {
    json!({"instance": d.instance, "former_primary": d.former_primary, "failover_id": d.failover_id,
        "epoch": d.epoch, "new_primary": d.new_primary, "promotion_gtid": d.promotion_gtid,
        "divergent": d.divergent, "count": d.count, "count_exact": d.count_exact, "gtids": d.gtids,
        "executed": d.executed, "observed_at_ms": d.observed_at_ms, "flavor": d.flavor, "served_by": d.served_by})
}

fn print_divergence(d: &primus_client::DivergenceResponse) {
    if !d.former_primary {
        println!(
            "{} is not a former primary replaced by a failover (or it has rejoined): nothing to compare",
            d.instance
        );
        return;
    }
    let count = format!("{}{}", if d.count_exact { "" } else { "at least " }, d.count);
    table(
        &["INSTANCE", "FAILOVER", "EPOCH", "NEW PRIMARY", "PROMOTION POINT", "EXECUTED", "DIVERGENT"],
        vec![vec![
            d.instance.clone(),
            d.failover_id.clone(),
            d.epoch.to_string(),
            d.new_primary.clone(),
            d.promotion_gtid.clone(),
            d.executed.clone(),
            if d.divergent { count } else { "0".into() },
        ]],
    );
    if d.divergent {
        println!();
        println!("divergent GTIDs ({} transactions):", d.count);
        for g in &d.gtids {
            println!("  {g}");
        }
        println!();
        println!(
            "{} stays demoted and read-only. Rebuild it from the new primary {}; or (MariaDB only) \
             `primusctl rejoin --discard-divergent` to replicate from the promotion point, leaving these \
             transactions' changes in its tables.",
            d.instance, d.new_primary
        );
    } else {
        println!("\n{} executed nothing beyond the promotion point: `primusctl rejoin` can repoint it.", d.instance);
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Milliseconds since the Unix epoch in this machine's time zone, for tables.
fn local_time(ms: u64) -> String {
    use chrono::TimeZone;
    i64::try_from(ms)
        .ok()
        .and_then(|ms| chrono::Local.timestamp_millis_opt(ms).single())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f %:z").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `cluster remove` without `--yes`: ask on a terminal; refuse without one.
fn confirm_remove(
    name: &str,
    stdin_is_terminal: bool,
    answer: impl FnOnce() -> std::io::Result<String>,
) -> anyhow::Result<()> {
    if !stdin_is_terminal {
        anyhow::bail!(
            "not removing cluster {name}: stdin is not a terminal to confirm on; pass --yes to remove it without asking"
        );
    }
    eprint!("Unregister cluster {name}? primus stops watching it and forgets its topology and history. [y/N] ");
    let line = answer().context("cannot read the answer")?;
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => anyhow::bail!("not removing cluster {name}: not confirmed"),
    }
}

/// Commands that need no coordinator: completions and the manual page.
fn print_local(cmd: &Cmd) -> anyhow::Result<bool> {
    use clap::CommandFactory;
    use std::io::Write;
    // Rendered into memory first: clap_complete panics on a write error (`| head`).
    let mut out = Vec::new();
    match cmd {
        Cmd::Completions { shell } => clap_complete::generate(*shell, &mut Cli::command(), "primusctl", &mut out),
        Cmd::Man => clap_mangen::Man::new(Cli::command()).render(&mut out).context("cannot render the man page")?,
        _ => return Ok(false),
    }
    match std::io::stdout().write_all(&out) {
        Ok(()) => Ok(true),
        // The reader stopped early (`| head`): nothing left to do.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if print_local(&cli.cmd)? {
        return Ok(());
    }
    if let Cmd::Cluster(ClusterCmd::Remove { name, yes: false }) = &cli.cmd {
        use std::io::IsTerminal;
        confirm_remove(name, std::io::stdin().is_terminal(), || {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })?;
    }
    let timeout = match cli.cmd {
        // Adding a member may wait for a snapshot transfer: give it the server's own bound.
        Cmd::Members(_) => cli.timeout.max(Duration::from_secs(130)),
        // A failover's steps each have their own bound on the server; wait for them.
        Cmd::Failover { .. } | Cmd::Switchover { .. } => cli.timeout.max(Duration::from_secs(60)),
        _ => cli.timeout,
    };
    let tls = match (&cli.ca, &cli.cert) {
        (Some(ca), cert) => Some(
            TlsOptions::from_files(ca, cert.as_deref(), cli.key.as_deref())
                .context("--ca/--cert/--key (PRIMUS_CA/PRIMUS_CERT/PRIMUS_KEY)")?,
        ),
        (None, Some(_)) => anyhow::bail!("--cert needs --ca: client certificates are only used over TLS"),
        (None, None) => None,
    };
    let token = match &cli.token_file {
        Some(f) => Some(primus_client::read_token_file(f).context("--token-file (PRIMUS_TOKEN_FILE)")?),
        None => None,
    };
    let opts = ClientOptions {
        timeout,
        actor: format!("primusctl {}", primus_client::default_actor()),
        tls,
        token,
        ..Default::default()
    };
    let client = Client::new(std::slice::from_ref(&cli.endpoints), opts)?;
    let json_out = cli.output == Output::Json;
    let print_json = |v: Value| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    match cli.cmd {
        Cmd::Status { stale } => {
            let s = if stale { client.node_status().await? } else { client.status().await? };
            if json_out {
                print_json(primus_client::json::status(&s));
            } else {
                if stale {
                    println!(
                        "(stale: node {}'s own view; it is {})",
                        s.node_id,
                        primus_client::json::role_name(s.role)
                    );
                }
                println!(
                    "leader: node {} at {}   term: {}   commit index: {}   applied: {}   snapshot: {}   quorum ack: {} ms ago",
                    opt(s.leader_id),
                    s.leader_addr,
                    s.term,
                    opt(s.commit_index),
                    opt(s.applied_index),
                    opt(s.snapshot_index),
                    opt(s.millis_since_quorum_ack)
                );
                let rows = s
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.addr.clone(),
                            m.datacenter.clone(),
                            primus_client::json::role_name(m.role).to_string(),
                            opt(m.matched_index),
                            m.millis_since_last_contact.map(|ms| format!("{ms} ms ago")).unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                table(&["id", "addr", "datacenter", "role", "matched_index", "last_contact"], rows);
                if let Some(off) = &s.automatic_off {
                    println!(
                        "automatic failover: OFF for every cluster since {} by {} ({}); `primusctl automatic on --all` \
                         ends it",
                        local_time(off.at_ms),
                        off.actor,
                        off.reason
                    );
                }
                // Mid-upgrade, commands added by the new release wait for every member.
                let group = s.group_feature_level.max(1);
                let knows = s.feature_level.max(1);
                println!(
                    "feature level: group {group}, node {} ({}) knows {knows}{}",
                    s.node_id,
                    if s.version.is_empty() { "version unknown" } else { &s.version },
                    if group < knows { "   (raised once every member runs a release that knows it)" } else { "" }
                );
            }
        }
        Cmd::Members(MembersCmd::Add { id, addr, datacenter }) => {
            if !json_out {
                eprintln!(
                    "adding node {id} at {addr} as a learner; waiting for it to catch up, then promoting it to voter…"
                );
            }
            let r = client.add_member(id, &addr, &datacenter).await?;
            if json_out {
                print_json(json!({"added": id, "addr": addr, "datacenter": datacenter, "log_index": r.log_index}));
            } else {
                println!("node {id} is now a voter (log index {})", r.log_index);
            }
        }
        Cmd::Members(MembersCmd::TransferLeader { id }) => {
            let r = client.transfer_leader(id).await?;
            if json_out {
                print_json(json!({"leader_id": r.leader_id, "term": r.term}));
            } else {
                println!("node {} leads now (term {})", r.leader_id, r.term);
            }
        }
        Cmd::Members(MembersCmd::Remove { id }) => {
            let r = client.remove_member(id).await?;
            if json_out {
                print_json(json!({"removed": id, "log_index": r.log_index}));
            } else {
                println!("node {id} removed (log index {})", r.log_index);
            }
        }
        Cmd::Cluster(ClusterCmd::Add { name, seeds, automatic_failover }) => {
            let r = client
                .register_cluster(&name, &seeds, ClusterSettings { automatic_failover, ..Default::default() })
                .await?;
            if json_out {
                print_json(json!({"cluster": name, "seeds": seeds, "log_index": r.log_index}));
            } else {
                println!("cluster {name} registered (log index {})", r.log_index);
            }
        }
        Cmd::Cluster(ClusterCmd::List { stale }) => {
            let c = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
            let r = client.list_clusters(c).await?;
            if json_out {
                print_json(primus_client::json::cluster_list(&r));
            } else if r.clusters.is_empty() {
                println!("no clusters registered");
            } else {
                let rows = r
                    .clusters
                    .iter()
                    .map(|c| {
                        let settings: Vec<String> = c
                            .settings
                            .iter()
                            .flat_map(|s| {
                                s.automatic_failover
                                    .map(|a| format!("automatic={a}"))
                                    .into_iter()
                                    .chain(s.failover.iter().map(|(k, v)| format!("{k}={v}")))
                            })
                            .collect();
                        vec![
                            c.name.clone(),
                            c.seeds.join(","),
                            c.registered_at_index.to_string(),
                            c.registered_by.clone(),
                            if settings.is_empty() { "-".into() } else { settings.join(" ") },
                        ]
                    })
                    .collect();
                table(&["name", "seeds", "registered_at_index", "registered_by", "settings"], rows);
            }
        }
        Cmd::Cluster(ClusterCmd::Set { name, settings }) => {
            let mut kv = Vec::new();
            for s in &settings {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("expected KEY=VALUE (KEY= clears it), got {s:?}"))?;
                let v = v.trim();
                kv.push((k.trim().to_string(), (!v.is_empty()).then(|| v.to_string())));
            }
            let r = client.set_cluster_settings(&name, &kv).await?;
            if json_out {
                let set: serde_json::Map<String, Value> =
                    kv.iter().map(|(k, v)| (k.clone(), v.clone().map(Value::String).unwrap_or(Value::Null))).collect();
                print_json(json!({"cluster": name, "settings": set, "log_index": r.log_index}));
            } else {
                let text: Vec<String> =
                    kv.iter().map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("(config file)"))).collect();
                println!("{name}: {} (log index {})", text.join(" "), r.log_index);
            }
        }
        Cmd::Cluster(ClusterCmd::Remove { name, yes: _ }) => {
            let r = client.unregister_cluster(&name).await?;
            if json_out {
                print_json(json!({"removed": name, "log_index": r.log_index}));
            } else {
                println!("cluster {name} unregistered (log index {})", r.log_index);
            }
        }
        Cmd::Topology { name, stale } => {
            let c = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
            let t = client.topology(&name, c).await?;
            if json_out {
                print_json(primus_client::json::topology(&t));
            } else {
                print_topology(&t);
            }
        }
        Cmd::Failover { name, to, accept_loss, request_id } => {
            if !json_out {
                eprintln!("failing over {name}{}…", to.as_ref().map(|t| format!(" to {t}")).unwrap_or_default());
                if accept_loss {
                    eprintln!(
                        "WARNING: --accept-loss: in no-loss mode this promotes even a replica that lacks transactions \
                         a semi-sync replica may have acknowledged; they are lost"
                    );
                }
            }
            let asked = client.failover_with_id(&name, to.as_deref(), false, accept_loss, request_id.as_deref());
            let r = with_progress(&client, &name, json_out, asked).await?;
            print_failover(r.failover.as_ref(), json_out);
        }
        Cmd::Switchover { name, to, request_id } => {
            if !json_out {
                eprintln!("switching over {name}{}…", to.as_ref().map(|t| format!(" to {t}")).unwrap_or_default());
            }
            let asked = client.failover_with_id(&name, to.as_deref(), true, false, request_id.as_deref());
            let r = with_progress(&client, &name, json_out, asked).await?;
            print_failover(r.failover.as_ref(), json_out);
        }
        Cmd::History { name } => {
            let r = client.history(&name).await?;
            if json_out {
                print_json(primus_client::json::history(&r));
            } else {
                if r.failovers.is_empty() {
                    println!("no failovers of {name}");
                }
                for f in &r.failovers {
                    print_failover(Some(f), false);
                    println!();
                }
                for x in &r.refusals {
                    println!("refused at {} ({}): {}", local_time(x.at_ms), x.analysis_code, x.reason);
                }
                let fences = r.split_fences.iter().map(|f| (f, "split brain: fenced"));
                for (f, what) in fences.chain(r.unfences.iter().map(|f| (f, "read-only primary made writable again:")))
                {
                    let outcome = if f.outcome.is_empty() { "not completed (leader changed?)" } else { &f.outcome };
                    println!("{} {} {what} {} (epoch {}): {outcome}", local_time(f.at_ms), f.id, f.instance, f.epoch);
                    for e in &f.evidence {
                        println!("    - {e}");
                    }
                }
            }
        }
        Cmd::Analysis { name, stale } => {
            let c = if stale { ReadConsistency::Stale } else { ReadConsistency::Linearizable };
            let a = client.analysis_with(&name, c).await?;
            if json_out {
                print_json(primus_client::json::analysis(&name, &a));
            } else {
                println!(
                    "{name}: {}{} (epoch {}, by node {}{})",
                    a.code,
                    if a.subject.is_empty() { String::new() } else { format!(" on {}", a.subject) },
                    a.epoch,
                    a.served_by,
                    if a.linearizable { "" } else { "; stale: that node's own analysis" }
                );
                for e in &a.evidence {
                    println!("  - {e}");
                }
            }
        }
        Cmd::Rejoin { name, instance, discard_divergent } => {
            // On stderr even with -o json: stdout stays machine-readable.
            if discard_divergent {
                eprintln!(
                    "WARNING: --discard-divergent rejoins {instance} even if it executed transactions after the \
                     failover that replaced it. Those divergent transactions are not undone: their changes stay in \
                     its tables, next to the new primary's. Rebuilding it from the new primary is the safe way."
                );
            }
            let r = client.rejoin_with(&name, &instance, discard_divergent).await?;
            if json_out {
                print_json(json!({"message": r.message, "log_index": r.log_index,
                    "discarded_count": r.discarded_count, "discarded_gtids": r.discarded_gtids}));
            } else {
                if r.discarded_count > 0 {
                    eprintln!(
                        "WARNING: {} divergent transaction(s) left in {instance}'s tables: {}",
                        r.discarded_count,
                        r.discarded_gtids.join(",")
                    );
                }
                done(false, &r.message, r.log_index);
            }
        }
        Cmd::Divergence { name, instance } => {
            let d = client.divergence(&name, &instance).await?;
            if json_out {
                print_json(divergence_json(&d));
            } else {
                print_divergence(&d);
            }
        }
        Cmd::Ack { name, id } => {
            let r = client.ack(&name, id.as_deref()).await?;
            done(json_out, &format!("acknowledged failovers of {name}"), r.log_index);
        }
        Cmd::Instance(InstanceCmd::SetPromotionRule { first, second, third }) => {
            let (cluster, instance, rule) = instance_args(first, second, third, "RULE")?;
            let r = client.set_promotion_rule(&cluster, &instance, &rule).await?;
            done(json_out, &format!("{instance}: promotion rule {rule}"), r.log_index);
        }
        Cmd::Instance(InstanceCmd::Forget { first, second }) => {
            let (cluster, instance) = match second {
                Some(i) => (first, i),
                None => (String::new(), first),
            };
            let r = client.forget_instance(&cluster, &instance).await?;
            if json_out {
                print_json(json!({"forgotten": instance, "cluster": cluster, "log_index": r.log_index}));
            } else {
                println!("{instance} forgotten (log index {}): no longer probed or shown", r.log_index);
            }
        }
        Cmd::Instance(InstanceCmd::SetDatacenter { first, second, third }) => {
            let (cluster, instance, datacenter) = instance_args(first, second, third, "DC")?;
            let r = client.set_instance_datacenter(&cluster, &instance, &datacenter).await?;
            done(json_out, &format!("{instance}: datacenter {datacenter:?}"), r.log_index);
        }
        Cmd::Primary { name, stale } => {
            let r = if stale { client.primary_stale(&name).await? } else { client.primary(&name).await? };
            let st = r.state.clone().unwrap_or_default();
            if json_out {
                print_json(primus_client::json::primary(&r));
            } else {
                println!("{}", primary_line(&st));
                if stale {
                    println!(
                        "(stale read from node {} at index {}; leader {})",
                        r.served_by,
                        r.applied_index,
                        r.leader_id.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into())
                    );
                }
            }
        }
        Cmd::Watch { name, from_epoch, count } => {
            use tokio_stream::StreamExt;
            let mut from = std::collections::HashMap::new();
            if let Some(n) = &name {
                if from_epoch > 0 {
                    from.insert(n.clone(), from_epoch);
                }
            }
            let mut stream = client.watch_from(name.as_deref(), from);
            let mut seen = 0u64;
            loop {
                let ev = tokio::select! {
                    ev = stream.next() => ev,
                    _ = tokio::signal::ctrl_c() => break,
                };
                let Some(ev) = ev else { break };
                let ev = ev?;
                let st = ev.state.clone().unwrap_or_default();
                let kind = event_kind_name(ev.kind);
                if json_out {
                    let mut v = primus_client::json::primary_state(&st);
                    v["event"] = json!(kind);
                    v["detail"] = json!(ev.detail);
                    v["applied_index"] = json!(ev.applied_index);
                    v["served_by"] = json!(ev.served_by);
                    v["at_ms"] = json!(ev.at_ms);
                    v["received_at_ms"] = json!(now_ms());
                    println!("{}", serde_json::to_string(&v).unwrap_or_default());
                } else {
                    let detail = if ev.detail.is_empty() { String::new() } else { format!(" ({})", ev.detail) };
                    println!("{} {:<16} {}{detail}", clock(), kind, primary_line(&st));
                }
                seen += 1;
                if count > 0 && seen >= count {
                    break;
                }
            }
        }
        Cmd::Maintenance(MaintenanceCmd::Start { target, instance, reason, duration }) => {
            let (cluster, instance) = maintenance_target(target, instance);
            let r = client.maintenance(&cluster, instance.as_deref(), true, &reason, duration).await?;
            let what = instance.as_deref().unwrap_or(&cluster);
            done(json_out, &format!("maintenance of {what} started for {}", human_duration(duration)), r.log_index);
        }
        Cmd::Maintenance(MaintenanceCmd::End { target, instance }) => {
            let (cluster, instance) = maintenance_target(target, instance);
            let r = client.maintenance(&cluster, instance.as_deref(), false, "", Duration::ZERO).await?;
            done(json_out, &format!("maintenance of {} ended", instance.as_deref().unwrap_or(&cluster)), r.log_index);
        }
        Cmd::SemiSync { name, state } => {
            let enabled = match state.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            };
            let r = client.set_semi_sync(&name, enabled).await?;
            done(json_out, &format!("semi-sync no-loss mode of {name}: {state}"), r.log_index);
        }
        Cmd::Relocate { first, second, below } => {
            let (cluster, instance) = match second {
                Some(i) => (first, i),
                None => (String::new(), first),
            };
            let r = client.relocate(&cluster, &instance, &below).await?;
            if json_out {
                print_json(json!({"relocated": instance, "below": below, "message": r.message,
                                  "log_index": r.log_index}));
            } else {
                println!("{} (log index {})", r.message, r.log_index);
            }
        }
        Cmd::Automatic { state, name, all, reason } => {
            let enabled = state == "on";
            let reason = reason.unwrap_or_default();
            let r = match (all, name) {
                (true, _) => {
                    if !enabled && reason.trim().is_empty() {
                        anyhow::bail!(
                            "`automatic off --all` needs --reason \"…\" (shown in status until it is back on)"
                        );
                    }
                    client.set_automatic_failover_all(enabled, &reason).await?
                }
                (false, Some(name)) => client.set_automatic_failover(&name, Some(enabled)).await?,
                (false, None) => anyhow::bail!("name a cluster or pass --all"),
            };
            let what = if !all {
                format!("automatic failover of the cluster: {state}")
            } else if enabled {
                "automatic failover of every cluster: back to each cluster's own setting".to_string()
            } else {
                format!("automatic failover OFF for every cluster ({reason}); `primusctl automatic on --all` ends it")
            };
            done(json_out, &what, r.log_index);
        }
        Cmd::AutomaticFailover { name, state } => {
            let enabled = match state.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            };
            let r = client.set_automatic_failover(&name, enabled).await?;
            done(json_out, &format!("automatic failover of {name}: {state}"), r.log_index);
        }
        Cmd::Completions { .. } | Cmd::Man => {}
        Cmd::Audit { limit } => {
            let r = client.audit(limit, ReadConsistency::Linearizable).await?;
            if json_out {
                let recs: Vec<Value> = r
                    .records
                    .iter()
                    .map(|a| {
                        json!({"index": a.index, "term": a.term, "time_ms": a.time_ms,
                               "time": primus_client::json::rfc3339_ms(a.time_ms), "actor": a.actor,
                               "via_node": a.via_node, "summary": a.summary, "outcome": a.outcome})
                    })
                    .collect();
                print_json(json!({"records": recs}));
            } else {
                let rows = r
                    .records
                    .iter()
                    .map(|a| {
                        vec![
                            a.index.to_string(),
                            a.term.to_string(),
                            local_time(a.time_ms),
                            a.actor.clone(),
                            a.summary.clone(),
                            a.outcome.clone(),
                        ]
                    })
                    .collect();
                table(&["index", "term", "time", "actor", "command", "outcome"], rows);
            }
        }
    }
    Ok(())
}

/// Run a failover call while printing each step to stderr as the cluster's history
/// records it (the steps are committed to Raft one by one, so this is live).
async fn with_progress<F, T>(
    client: &Client,
    cluster: &str,
    json_out: bool,
    call: F,
) -> Result<T, primus_client::ClientError>
where
    F: std::future::Future<Output = Result<T, primus_client::ClientError>>,
{
    tokio::pin!(call);
    let mut printed: Option<(String, usize)> = None;
    loop {
        tokio::select! {
            r = &mut call => return r,
            _ = tokio::time::sleep(Duration::from_millis(150)), if !json_out => {
                let Ok(h) = client.history(cluster).await else { continue };
                let Some(f) = h.failovers.last().filter(|f| f.outcome == "in_progress") else { continue };
                let from = match &printed {
                    Some((id, n)) if *id == f.id => *n,
                    _ => {
                        eprintln!("  {} started: {} -> {} (epoch {})", f.id, f.old_primary, f.candidate, f.epoch);
                        0
                    }
                };
                for st in f.steps.iter().skip(from) {
                    eprintln!("  {:>2}. {}: {}", st.index, st.description, st.outcome);
                }
                printed = Some((f.id.clone(), f.steps.len()));
            }
        }
    }
}

fn done(json_out: bool, what: &str, log_index: u64) {
    if json_out {
        println!("{}", json!({"ok": true, "what": what, "log_index": log_index}));
    } else {
        println!("{what} (log index {log_index})");
    }
}

fn print_failover(f: Option<&primus_client::FailoverView>, json_out: bool) {
    let Some(f) = f else { return };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&primus_client::json::failover(f)).unwrap_or_default());
        return;
    }
    let took = f.finished_at_ms.map(|t| format!(" in {} ms", t.saturating_sub(f.started_at_ms))).unwrap_or_default();
    println!(
        "{} [{}] {} -> {}  epoch {}  {}{}{}",
        f.id,
        f.kind,
        f.old_primary,
        f.candidate,
        f.epoch,
        f.outcome,
        if f.outcome_reason.is_empty() { String::new() } else { format!(": {}", f.outcome_reason) },
        took
    );
    println!("  started {} by {}", local_time(f.started_at_ms), f.started_by);
    println!("  analysis: {}", f.analysis_code);
    for e in &f.evidence {
        println!("    - {e}");
    }
    for s in &f.steps {
        println!(
            "  {:>2}. +{:>5} ms  {}: {}",
            s.index,
            s.at_ms.saturating_sub(f.started_at_ms),
            s.description,
            s.outcome
        );
    }
    if !f.acked_by.is_empty() {
        println!("  acknowledged by {}", f.acked_by);
    }
}

/// orchestrator-style tree: each instance under its source.
fn print_topology(t: &primus_client::GetTopologyResponse) {
    println!(
        "cluster {}   epoch {}   primary {}",
        t.cluster,
        t.epoch,
        if t.primary.is_empty() { "none" } else { &t.primary }
    );
    let settings = t.settings.clone().unwrap_or_default();
    if settings.automatic_failover == Some(false) {
        println!("automatic failover: off for this cluster");
    }
    if !settings.failover.is_empty() {
        let kv: Vec<String> = settings.failover.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("failover settings in Raft (cluster set): {}", kv.join(" "));
    }
    if let Some(on) = settings.semi_sync {
        println!("semi-sync no-loss mode: {}", if on { "on" } else { "off" });
    }
    if let Some(m) = &t.cluster_maintenance {
        let left = Duration::from_millis(m.until_ms.saturating_sub(now_ms()));
        println!("IN MAINTENANCE for {} more (by {}): {}", human_duration(left), m.by, m.reason);
    }
    let by_addr: std::collections::BTreeMap<&str, &primus_client::InstanceView> =
        t.instances.iter().map(|i| (i.addr.as_str(), i)).collect();
    let children = |src: Option<&str>| -> Vec<&primus_client::InstanceView> {
        let mut v: Vec<_> = t
            .instances
            .iter()
            .filter(|i| match src {
                None => i.source.as_deref().map(|s| !by_addr.contains_key(s)).unwrap_or(true),
                Some(s) => i.source.as_deref() == Some(s),
            })
            .collect();
        v.sort_by_key(|i| (i.role != "primary", i.addr.clone()));
        v
    };
    fn line(i: &primus_client::InstanceView, depth: usize) {
        let mut facts = vec![i.role.clone()];
        if !i.version.is_empty() {
            facts.push(format!("{} {}", i.flavor, i.version));
        }
        match i.read_only {
            Some(true) => facts.push("ro".into()),
            Some(false) => facts.push("rw".into()),
            None => {}
        }
        if !i.reachable {
            facts.push("UNREACHABLE".into());
        }
        if let Some(s) = i.seconds_behind {
            facts.push(format!("lag {s}s"));
        }
        if let Some(h) = i.heartbeat_delay_ms {
            facts.push(format!("hb {h}ms"));
        }
        if !i.gtid_executed.is_empty() {
            facts.push(format!("gtid {}", i.gtid_executed));
        }
        if !i.datacenter.is_empty() {
            facts.push(format!("dc {}", i.datacenter));
        }
        if !i.promotion_rule.is_empty() && i.promotion_rule != "neutral" {
            facts.push(i.promotion_rule.clone());
        }
        let indent = if depth == 0 { String::new() } else { format!("{}+ ", "  ".repeat(depth)) };
        let flags = if i.flags.is_empty() { String::new() } else { format!("  ! {}", i.flags.join("; ")) };
        println!("{indent}{} [{}]{flags}", i.addr, facts.join(", "));
    }
    fn walk<'a>(
        i: &'a primus_client::InstanceView,
        depth: usize,
        children: &dyn Fn(Option<&str>) -> Vec<&'a primus_client::InstanceView>,
        seen: &mut std::collections::BTreeSet<String>,
    ) {
        if !seen.insert(i.addr.clone()) {
            return;
        }
        line(i, depth);
        for c in children(Some(&i.addr)) {
            walk(c, depth + 1, children, seen);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for root in children(None) {
        walk(root, 0, &children, &mut seen);
    }
    for i in &t.instances {
        if !seen.contains(&i.addr) {
            line(i, 0);
        }
    }
}

/// `db1:3306 epoch 3 (dc eu) — failover c-e4 in progress: promoting …`
fn primary_line(s: &primus_client::PrimaryState) -> String {
    let mut out = format!(
        "{}: primary {} epoch {}",
        s.cluster,
        if s.primary.is_empty() { "(none)" } else { &s.primary },
        s.epoch
    );
    if !s.datacenter.is_empty() {
        out.push_str(&format!(" datacenter {}", s.datacenter));
    }
    if let Some(f) = &s.failover {
        out.push_str(&format!(
            "; {} {} in progress: {} -> {} (epoch {})",
            f.kind, f.id, f.old_primary, f.candidate, f.epoch
        ));
    }
    if !s.demoted.is_empty() {
        out.push_str(&format!("; demoted: {}", s.demoted.join(", ")));
    }
    out
}

fn event_kind_name(k: i32) -> &'static str {
    use primus_client::PrimaryEventKind as K;
    match K::try_from(k).unwrap_or(K::Unspecified) {
        K::Current => "current",
        K::FailoverStarted => "failover_started",
        K::PrimaryChanged => "primary_changed",
        K::FailoverEnded => "failover_ended",
        K::DemotedChanged => "demoted_changed",
        K::ClusterAdded => "cluster_added",
        K::ClusterRemoved => "cluster_removed",
        K::Replayed => "replayed",
        K::Updated => "updated",
        K::Unspecified => "unknown",
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Wall-clock time of day (UTC) with milliseconds, for watch lines.
fn clock() -> String {
    let ms = now_ms();
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}Z", (s / 3600) % 24, (s / 60) % 60, s % 60, ms % 1000)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter("debug,h2=info,tower=info,hyper=info")
            .init();
    }
    let json_out = cli.output == Output::Json;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start runtime") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("primusctl: error: {e:#}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json_out {
                println!("{}", json!({"error": format!("{e:#}")}));
            }
            eprintln!("primusctl: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_h_d_and_refuse_junk() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in ["", "0s", "-1s", "2w", "h", "1e400s", "1x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(human_duration(Duration::from_secs(86400 + 3605)), "1d 1h 5s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn instance_settings_take_the_cluster_or_leave_it_to_the_leader() {
        let a = |f: &str, s: &str, t: Option<&str>| instance_args(f.into(), s.into(), t.map(Into::into), "RULE");
        assert_eq!(a("db:3306", "prefer", None).ok(), Some((String::new(), "db:3306".into(), "prefer".into())));
        assert_eq!(a("c1", "db:3306", Some("prefer")).ok(), Some(("c1".into(), "db:3306".into(), "prefer".into())));
        let e = a("c1", "db:3306", None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("RULE is missing"), "{e}");
    }

    #[test]
    fn cluster_remove_refuses_without_a_terminal_and_goes_on_only_on_yes() {
        let e = confirm_remove("c1", false, || Ok("y\n".into())).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--yes") && e.contains("not a terminal"), "{e}");
        assert!(confirm_remove("c1", true, || Ok("y\n".into())).is_ok());
        assert!(confirm_remove("c1", true, || Ok(" YES \n".into())).is_ok());
        for no in ["\n", "n\n", "no\n", "yep\n", ""] {
            assert!(confirm_remove("c1", true, || Ok(no.into())).is_err(), "{no:?} confirmed");
        }
    }

    #[test]
    fn local_times_show_date_time_milliseconds_and_offset() {
        let t = local_time(1_795_438_343_092);
        assert!(t.len() == "2026-11-23 12:52:23.092 +00:00".len() && t.contains(".092 "), "{t}");
        assert_eq!(local_time(u64::MAX), "-");
    }

    #[test]
    fn a_maintenance_target_with_a_colon_is_an_instance() {
        assert_eq!(maintenance_target("db:3306".into(), None), (String::new(), Some("db:3306".into())));
        assert_eq!(maintenance_target("c1".into(), None), ("c1".into(), None));
        assert_eq!(maintenance_target("c1".into(), Some("db:3306".into())), ("c1".into(), Some("db:3306".into())));
    }
}

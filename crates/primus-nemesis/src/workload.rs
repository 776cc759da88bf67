//! The application client: a process in its own network namespace that follows the
//! primary through primus-client (a watch, and GetPrimary when a write fails) and
//! inserts unique ids, recording each write's outcome as one JSON line.

use crate::check::{Outcome, Write};
use anyhow::{Context, Result};
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Coordinator endpoints, comma-separated.
    #[arg(long)]
    pub endpoints: String,
    #[arg(long)]
    pub cluster: String,
    /// This client's number (ids are `client * 10^9 + n`).
    #[arg(long)]
    pub client: usize,
    /// Where to append the history (JSON lines).
    #[arg(long)]
    pub out: PathBuf,
    /// Run this long.
    #[arg(long)]
    pub seconds: u64,
    #[arg(long, default_value = "app")]
    pub user: String,
    #[arg(long, default_value = "app-pass")]
    pub password: String,
    /// Bound on connecting and on each INSERT.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Server errors that certainly mean the INSERT did not run: read-only (1290, 1792),
/// access denied (1044, 1045, 1142), no such table (1146).
const REFUSED: [u16; 6] = [1290, 1792, 1044, 1045, 1142, 1146];

/// CLOCK_MONOTONIC in microseconds: one clock for every process on the machine.
pub fn mono_us() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1000,
        Err(_) => 0,
    }
}

pub async fn run(a: WorkloadArgs) -> Result<()> {
    let endpoints: Vec<String> = a.endpoints.split(',').map(str::to_string).collect();
    let timeout = Duration::from_millis(a.timeout_ms);
    let client = primus_client::Client::new(
        &endpoints,
        primus_client::ClientOptions { timeout, actor: format!("nemesis-client-{}", a.client), ..Default::default() },
    )
    .context("primus client")?;
    let primary: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    {
        let primary = primary.clone();
        let mut watch = client.watch(Some(&a.cluster));
        tokio::spawn(async move {
            while let Some(ev) = watch.next().await {
                if let Some(st) = ev.ok().and_then(|e| e.state) {
                    if !st.primary.is_empty() {
                        *primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(st.primary);
                    }
                }
            }
        });
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)
        .with_context(|| format!("open {}", a.out.display()))?;
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let mut conn: Option<(String, mysql_async::Conn)> = None;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let target = primary.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(target) = target else {
            ask(&client, &a.cluster, &primary).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if conn.as_ref().map(|(s, _)| s != &target).unwrap_or(true) {
            if let Some((_, c)) = conn.take() {
                drop(tokio::time::timeout(Duration::from_millis(100), c.disconnect()).await);
            }
            let (host, port) = target.rsplit_once(':').unwrap_or((&target, "3306"));
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host.to_string())
                .tcp_port(port.parse().unwrap_or(3306))
                .user(Some(a.user.clone()))
                .pass(Some(a.password.clone()))
                .prefer_socket(false);
            match tokio::time::timeout(timeout, mysql_async::Conn::new(opts)).await {
                Ok(Ok(c)) => conn = Some((target.clone(), c)),
                _ => {
                    // Nothing was sent: no write to record. Ask where the primary is.
                    ask(&client, &a.cluster, &primary).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some((server, c)) = conn.as_mut() else { continue };
        seq += 1;
        let id = a.client as u64 * 1_000_000_000 + seq;
        let start_us = mono_us();
        let r = tokio::time::timeout(
            timeout,
            c.exec_drop("INSERT INTO nemesis.writes (id, client) VALUES (?, ?)", (id, a.client as u64)),
        )
        .await;
        let end_us = mono_us();
        let (outcome, error, keep) = match r {
            Ok(Ok(())) => (Outcome::Ack, String::new(), true),
            // The server refused the statement (read-only, no privilege, no table): the
            // autocommit INSERT did not run. Any other error (a killed connection, an
            // interrupted statement) may come after the commit: unknown.
            Ok(Err(mysql_async::Error::Server(e))) if REFUSED.contains(&e.code) => {
                (Outcome::Fail, format!("{} {}", e.code, e.message), true)
            }
            Ok(Err(mysql_async::Error::Server(e))) => (Outcome::Unknown, format!("{} {}", e.code, e.message), false),
            Ok(Err(e)) => (Outcome::Unknown, e.to_string(), false),
            Err(_) => (Outcome::Unknown, format!("no answer within {timeout:?}"), false),
        };
        let w = Write { client: a.client, id, server: server.clone(), start_us, end_us, outcome, error };
        let line = serde_json::to_string(&w).context("encode write")?;
        writeln!(out, "{line}").context("append history")?;
        if !keep {
            conn = None;
        }
        if outcome != Outcome::Ack {
            ask(&client, &a.cluster, &primary).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out.flush().context("flush history")?;
    Ok(())
}

/// Ask the coordinators where the primary is (linearizable), within a second.
async fn ask(client: &primus_client::Client, cluster: &str, primary: &Mutex<Option<String>>) {
    if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), client.primary(cluster)).await {
        if let Some(p) = r.state.map(|s| s.primary).filter(|p| !p.is_empty()) {
            *primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        }
    }
}

/// Every write recorded in `path` (a line cut short by a kill is skipped).
pub fn read_history(path: &std::path::Path) -> Result<Vec<Write>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

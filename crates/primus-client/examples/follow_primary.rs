//! A tiny application that always writes to the current primary of a cluster.
//!
//! It watches the cluster through primus (`Client::watch`), keeps one MariaDB/MySQL
//! connection pool pointed at the primary the coordinators agreed on, and moves the
//! pool the moment a failover promotes another instance — no polling, no DNS TTL.
//! Writes that fail while the old primary is gone are reported, not retried blindly.
//!
//! ```sh
//! scripts/sandbox.sh                      # MariaDB + primusd sandbox, with an `app` user
//! export PRIMUS_ENDPOINTS=…               # as printed by the sandbox
//! cargo run -p primus-client --example follow_primary -- --cluster sandbox
//! # elsewhere: kill -9 the primary's mariadbd and watch the writes move
//! ```

use mysql_async::prelude::Queryable;
use primus_client::{Client, ClientOptions, PrimaryEventKind};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

struct Args {
    endpoints: String,
    cluster: String,
    user: String,
    password: String,
    database: String,
    interval: Duration,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        endpoints: std::env::var("PRIMUS_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:7101".into()),
        cluster: String::new(),
        user: std::env::var("APP_USER").unwrap_or_else(|_| "app".into()),
        password: std::env::var("APP_PASSWORD").unwrap_or_else(|_| "app-pass".into()),
        database: "app".into(),
        interval: Duration::from_millis(100),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoints" => a.endpoints = val()?,
            "--cluster" => a.cluster = val()?,
            "--database" => a.database = val()?,
            "--interval-ms" => a.interval = Duration::from_millis(val()?.parse().map_err(|e| format!("{e}"))?),
            "-h" | "--help" => {
                return Err("usage: follow_primary --cluster NAME [--endpoints H:P,…] [--database app] \
                            [--interval-ms 100]  (APP_USER / APP_PASSWORD from the environment)"
                    .into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.cluster.is_empty() {
        return Err("--cluster NAME is required".into());
    }
    Ok(a)
}

fn pool_for(a: &Args, primary: &str) -> Option<mysql_async::Pool> {
    let (host, port) = primary.rsplit_once(':')?;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port.parse().ok()?)
        .user(Some(a.user.clone()))
        .pass(Some(a.password.clone()))
        .db_name(Some(a.database.clone()))
        .prefer_socket(false);
    Some(mysql_async::Pool::new(opts))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let client = match Client::new(std::slice::from_ref(&a.endpoints), ClientOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("follow_primary: {e}");
            std::process::exit(1);
        }
    };
    let mut events = client.watch(Some(&a.cluster));
    let mut current: Option<(String, u64, mysql_async::Pool)> = None;
    let mut tick = tokio::time::interval(a.interval);
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut last_report = Instant::now();
    loop {
        tokio::select! {
            ev = events.next() => {
                let ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => { eprintln!("follow_primary: watch failed: {e}"); std::process::exit(1); }
                    None => { eprintln!("follow_primary: watch ended"); return; }
                };
                let st = ev.state.unwrap_or_default();
                let kind = PrimaryEventKind::try_from(ev.kind).unwrap_or(PrimaryEventKind::Unspecified);
                println!("[primus] {kind:?}: primary {} epoch {} {}", st.primary, st.epoch, ev.detail);
                let moved = current.as_ref().is_none_or(|(p, _, _)| *p != st.primary);
                if moved && !st.primary.is_empty() {
                    if let Some((old, _, pool)) = current.take() {
                        println!("[app] moving writes from {old} to {} (epoch {})", st.primary, st.epoch);
                        tokio::spawn(async move { let _ = pool.disconnect().await; });
                    }
                    current = pool_for(&a, &st.primary).map(|p| (st.primary.clone(), st.epoch, p));
                }
            }
            _ = tick.tick() => {
                let Some((primary, epoch, pool)) = &current else { continue };
                let write = async {
                    let mut conn = pool.get_conn().await?;
                    conn.query_drop("CREATE TABLE IF NOT EXISTS ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                                     epoch BIGINT NOT NULL, at TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP(3))").await?;
                    conn.exec_drop("INSERT INTO ticks (epoch) VALUES (?)", (*epoch,)).await
                };
                match tokio::time::timeout(Duration::from_secs(1), write).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(e)) => { failed += 1; println!("[app] write to {primary} failed: {e}"); }
                    Err(_) => { failed += 1; println!("[app] write to {primary} timed out"); }
                }
                if last_report.elapsed() >= Duration::from_secs(2) {
                    println!("[app] {ok} writes to {primary} (epoch {epoch}) ok, {failed} failed so far");
                    last_report = Instant::now();
                }
            }
        }
    }
}

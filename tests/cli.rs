//! primusctl itself, as an operator runs it: shell completions and the man page
//! generated from its clap definitions, `cluster remove` confirmation, times in
//! `audit`, and each member's last contact in `status` (real primusd processes).

use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions};
use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::Duration;

/// Run the real primusctl with stdin closed (not a terminal), blocking.
fn primusctl(endpoints: &str, args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(bin("primusctl")?)
        .args(["--endpoints", endpoints, "--timeout", "15s"])
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output, what: &str) -> anyhow::Result<String> {
    anyhow::ensure!(o.status.success(), "{what}: {}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    Ok(stdout(&o))
}

#[test]
fn completions_for_bash_zsh_and_fish_cover_the_subcommands() -> anyhow::Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(primusctl("127.0.0.1:1", &["completions", shell])?, shell)?;
        // fish spells long options `-l endpoints`.
        for word in ["primusctl", "topology", "switchover", "maintenance", "endpoints"] {
            assert!(out.contains(word), "{shell} completions lack {word:?}");
        }
    }
    let bad = primusctl("127.0.0.1:1", &["completions", "tcsh"])?;
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
    Ok(())
}

#[test]
fn man_prints_a_roff_page_from_the_clap_definitions() -> anyhow::Result<()> {
    // No coordinator is needed (the endpoint is a closed port).
    let out = ok(primusctl("127.0.0.1:1", &["man"])?, "man")?;
    assert!(out.contains(".TH primusctl"), "{out}");
    for word in ["topology", "history", "audit", "completions", "endpoints"] {
        assert!(out.contains(word), "the man page lacks {word:?}");
    }
    Ok(())
}

async fn group(nodes: usize) -> anyhow::Result<CoordinatorGroup> {
    let g = CoordinatorGroup::start(GroupOptions { nodes, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    Ok(g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_remove_without_yes_refuses_when_stdin_is_not_a_terminal_and_with_yes_removes() -> anyhow::Result<()> {
    let g = group(1).await?;
    let e = g.endpoints();
    primus_integration_tests::register(&g.client(Duration::from_secs(10))?, "c1").await?;
    let refused = tokio::task::block_in_place(|| primusctl(&e, &["cluster", "remove", "c1"]))?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--yes") && stderr.contains("not a terminal"), "{stderr}");
    let list = tokio::task::block_in_place(|| primusctl(&e, &["cluster", "list", "-o", "json"]))?;
    let list: Value = serde_json::from_str(&ok(list, "cluster list")?)?;
    assert_eq!(list["clusters"][0]["name"], "c1", "removed without --yes: {list}");

    let removed = tokio::task::block_in_place(|| primusctl(&e, &["cluster", "remove", "c1", "--yes"]))?;
    assert!(ok(removed, "cluster remove --yes")?.contains("c1 unregistered"));
    let list = tokio::task::block_in_place(|| primusctl(&e, &["cluster", "list", "-o", "json"]))?;
    let list: Value = serde_json::from_str(&ok(list, "cluster list")?)?;
    assert_eq!(list["clusters"].as_array().map(Vec::len), Some(0), "{list}");
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS.mmm ±HH:MM` somewhere in `line`.
fn has_local_time(line: &str) -> bool {
    line.as_bytes().windows(30).any(|w| {
        let s = String::from_utf8_lossy(w);
        let d = |r: std::ops::Range<usize>| s.get(r).is_some_and(|x| x.bytes().all(|b| b.is_ascii_digit()));
        d(0..4)
            && &s[4..5] == "-"
            && d(5..7)
            && &s[10..11] == " "
            && &s[13..14] == ":"
            && &s[19..20] == "."
            && (&s[24..25] == "+" || &s[24..25] == "-")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_shows_rfc3339_times_in_json_and_local_times_in_the_table() -> anyhow::Result<()> {
    let g = group(1).await?;
    let e = g.endpoints();
    primus_integration_tests::register(&g.client(Duration::from_secs(10))?, "c1").await?;
    let json = tokio::task::block_in_place(|| primusctl(&e, &["audit", "-o", "json"]))?;
    let json: Value = serde_json::from_str(&ok(json, "audit -o json")?)?;
    let rec = json["records"].as_array().and_then(|r| r.last()).cloned().unwrap_or_default();
    let time = rec["time"].as_str().unwrap_or_default();
    // 2026-12-04T01:25:03.120Z, the same instant as time_ms.
    assert!(time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T", "{rec}");
    let ms = rec["time_ms"].as_u64().unwrap_or_default();
    assert_eq!(time, primus_client::json::rfc3339_ms(ms), "{rec}");

    let table = ok(tokio::task::block_in_place(|| primusctl(&e, &["audit"]))?, "audit")?;
    let mut lines = table.lines();
    assert!(lines.next().is_some_and(|h| h.contains("TIME")), "{table}");
    assert!(lines.any(|l| l.contains("c1") && has_local_time(l)), "no local time on the register line:\n{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_when_each_member_last_answered_the_leader() -> anyhow::Result<()> {
    let g = group(3).await?;
    let e = g.endpoints();
    // Linearizable status is the leader's: it has heard from every member within a heartbeat or so.
    let json = tokio::task::block_in_place(|| primusctl(&e, &["status", "-o", "json"]))?;
    let json: Value = serde_json::from_str(&ok(json, "status -o json")?)?;
    let members = json["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 3, "{json}");
    for m in &members {
        let ms = m["millis_since_last_contact"].as_u64();
        assert!(ms.is_some_and(|ms| ms < 5000), "{m}");
        if m["role"] == "leader" {
            assert_eq!(ms, Some(0), "{m}");
        }
    }
    let table = ok(tokio::task::block_in_place(|| primusctl(&e, &["status"]))?, "status")?;
    assert!(table.contains("LAST_CONTACT"), "{table}");
    let rows = table.lines().filter(|l| !l.starts_with("leader:") && l.trim_end().ends_with(" ms ago")).count();
    assert_eq!(rows, 3, "{table}");
    // A follower's own view names no last contact.
    let follower = json["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "follower"))
        .and_then(|m| m["addr"].as_str())
        .unwrap_or_default()
        .to_string();
    let own = tokio::task::block_in_place(|| primusctl(&follower, &["status", "--stale", "-o", "json"]))?;
    let own: Value = serde_json::from_str(&ok(own, "status --stale on a follower")?)?;
    assert!(
        own["members"].as_array().is_some_and(|m| m.iter().all(|m| m["millis_since_last_contact"].is_null())),
        "{own}"
    );
    Ok(())
}

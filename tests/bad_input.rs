//! Bad input gets a clear error and loses nothing: broken configs, dead endpoints,
//! garbage on the gRPC port.

use primus_integration_tests::register;
use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const GOOD: &str = r#"node_id = 1
datacenter = "dc1"
listen = "127.0.0.1:17999"
data_dir = "DATA"
[raft]
heartbeat_ms = 50
[[initial_members]]
id = 1
addr = "127.0.0.1:17999"
datacenter = "dc1"
"#;

#[test]
fn malformed_configs_exit_2_with_one_line_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let good = GOOD.replace("DATA", &data.display().to_string());
    let empty_token = dir.path().join("token");
    std::fs::write(&empty_token, " \n")?;
    let cases: Vec<(&str, String, &str)> = vec![
        ("missing key", good.replace("node_id = 1\n", ""), "node_id"),
        ("malformed value", good.replace("node_id = 1", "node_id = \"one\""), "node_id"),
        ("unknown key", format!("colour = \"blue\"\n{good}"), "colour"),
        ("unknown nested key", good.replace("heartbeat_ms = 50", "heartbeat_ms = 50\nturbo = 1"), "turbo"),
        ("bad listen address", good.replace("listen = \"127.0.0.1:17999\"", "listen = \"localhost\""), "listen"),
        (
            "bad member address",
            good.replace("addr = \"127.0.0.1:17999\"", "addr = \"nope\""),
            "initial_members[0].addr",
        ),
        ("node not an initial member", good.replace("node_id = 1", "node_id = 7"), "initial_members"),
        ("not TOML at all", "{{{ this is not toml".to_string(), "line 1"),
        ("bad election timeouts", good.replace("heartbeat_ms = 50", "heartbeat_ms = 400"), "election_timeout_min_ms"),
        (
            "missing TLS certificate file",
            format!(
                "{good}\n[tls]\ncert_file = \"{d}/nope.pem\"\nkey_file = \"{d}/nope.key\"\nca_file = \"{d}/ca.pem\"\n",
                d = dir.path().display()
            ),
            "tls.cert_file",
        ),
        (
            "empty token file",
            format!("{good}\n[auth]\ntoken_file = \"{}\"\n", empty_token.display()),
            "auth.token_file",
        ),
        ("unknown [tls] key", format!("{good}\n[tls]\ncert = \"x\"\n"), "tls.cert"),
    ];
    for (what, text, key) in cases {
        let path = dir.path().join("primusd.toml");
        std::fs::write(&path, &text)?;
        let out = Command::new(bin("primusd")?).arg("--config").arg(&path).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: expected exit 2, got {:?}: {stderr}", out.status);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: error is not one line: {stderr}");
        assert!(lines[0].contains(key), "{what}: error does not name `{key}`: {stderr}");
    }
    let out = Command::new(bin("primusd")?).args(["--config", "/nonexistent/primusd.toml"]).output()?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/primusd.toml"));
    Ok(())
}

/// `PRIMUS_*` variables reach a real primusd: they override the file, a bad or unknown
/// one is one error line naming the variable (exit 2), and the environment alone is a
/// configuration (no `--config`). Checked with `--check-config`, which starts nothing.
#[test]
fn environment_overrides_reach_primusd() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let path = dir.path().join("primusd.toml");
    std::fs::write(&path, GOOD.replace("DATA", &data.display().to_string()))?;
    let run =
        |file: Option<&std::path::Path>, vars: &[(&str, &str)]| -> anyhow::Result<(Option<i32>, String, String)> {
            let mut cmd = Command::new(bin("primusd")?);
            cmd.arg("--check-config").env_remove("PRIMUS_CONFIG");
            if let Some(f) = file {
                cmd.arg("--config").arg(f);
            }
            for (k, v) in vars {
                cmd.env(k, v);
            }
            let out = cmd.output()?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok((out.status.code(), stdout, String::from_utf8_lossy(&out.stderr).into_owned()))
        };
    let (code, stdout, stderr) = run(Some(&path), &[])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    // The environment wins over the file: node 7 is not among the file's initial_members…
    let (code, _, stderr) = run(Some(&path), &[("PRIMUS_NODE_ID", "7")])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("node_id 7 is not among initial_members"), "{stderr}");
    // …unless the environment lists it too (an array of inline tables).
    let members = r#"[{id=7,addr="127.0.0.1:17999"},{id=8,addr="primus-1.primus:7100"}]"#;
    let (code, _, stderr) = run(Some(&path), &[("PRIMUS_NODE_ID", "7"), ("PRIMUS_INITIAL_MEMBERS", members)])?;
    assert_eq!(code, Some(0), "{stderr}");
    for (var, value, want) in [
        ("PRIMUS_RAFT__HEARTBEAT_MS", "fast", "PRIMUS_RAFT__HEARTBEAT_MS: invalid type: string \"fast\", expected u64"),
        ("PRIMUS_RAFT__TURBO", "1", "PRIMUS_RAFT__TURBO: unknown field `turbo`"),
        ("PRIMUS_LISTEN", "localhost:7100", "PRIMUS_LISTEN: \"localhost:7100\" is not an IP:port address"),
    ] {
        let (code, _, stderr) = run(Some(&path), &[(var, value)])?;
        assert_eq!(code, Some(2), "{var}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}: error is not one line: {stderr}");
        assert!(lines[0].contains(want), "{var}: {stderr}");
    }
    // No file at all: every key from the environment.
    let env_only = [
        ("PRIMUS_NODE_ID", "1"),
        ("PRIMUS_LISTEN", "127.0.0.1:17998"),
        ("PRIMUS_DATA_DIR", &*data.display().to_string()),
        ("PRIMUS_INITIAL_MEMBERS", r#"[{id=1,addr="127.0.0.1:17998"}]"#),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let vars: Vec<(&str, &str)> = env_only.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr) = run(None, &vars)?;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("environment only) is valid"), "{stdout}");
    let (code, _, stderr) = run(None, &[])?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing field `node_id`"), "{stderr}");
    assert!(!data.exists(), "--check-config created data_dir");
    Ok(())
}

#[test]
fn primusctl_with_every_endpoint_down_fails_clearly() -> anyhow::Result<()> {
    let p1 = primus_testkit::ports::free_port()?;
    let p2 = primus_testkit::ports::free_port()?;
    let eps = format!("127.0.0.1:{p1},127.0.0.1:{p2}");
    for args in [vec!["status"], vec!["cluster", "list"], vec!["cluster", "add", "x", "--seed", "h:1"]] {
        for output in ["table", "json"] {
            let out = Command::new(bin("primusctl")?)
                .args(["--endpoints", &eps, "--timeout", "2s", "--output", output])
                .args(&args)
                .output()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded with no endpoint up");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: not one line: {stderr}");
            assert!(stderr.contains("no coordinator answered"), "{args:?}: unclear: {stderr}");
            if output == "json" {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                assert!(v["error"].is_string());
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_leaves_primusd_running() -> anyhow::Result<()> {
    let mut g = CoordinatorGroup::start(GroupOptions { nodes: 3, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    // Node 1 takes Raft traffic once it has decided how it starts (bootstrap check):
    // until then a Raft call gets UNAVAILABLE whatever its payload.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while g.status_of(1).await.ok().and_then(|s| s.leader_id).is_none() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "node 1 never names a leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = g.node(1).addr();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for round in 0..50 {
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        let mut junk = vec![0u8; 64 + round * 37];
        for b in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        if round % 5 == 0 {
            // A valid HTTP/2 preface followed by garbage frames.
            let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        }
        let _ = s.write_all(&junk);
    }
    // Well-formed gRPC with an undecodable Raft payload.
    let ch = tonic_channel(&addr).await?;
    let mut raft = primus_testkit::raft_client(ch);
    let r = raft.append_entries(primus_testkit::raft_request(1, b"\xff\x00 not json".to_vec())).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));

    assert!(g.node_mut(1).is_running(), "primusd died on garbage input:\n{}", g.node(1).log_tail(20));
    let client = g.client(Duration::from_secs(5))?;
    register(&client, "still-works").await?;
    let s = g.status_of(1).await?;
    assert!(s.leader_id.is_some());
    Ok(())
}

async fn tonic_channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?)
}

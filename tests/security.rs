//! TLS and bearer-token authentication on real primusd processes: peers talk TLS,
//! clients need the right CA (and a client certificate with mTLS), writes need the
//! token, followers forward the caller's token, and the token never reaches a log.

use primus_client::{Client, ClientError, ClientOptions, ReadConsistency};
use primus_integration_tests::{register, wait_has_all};
use primus_testkit::coordinator::{bin, CoordinatorGroup, GroupOptions};
use primus_testkit::pki::TestPki;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

const TOKEN: &str = "tok-3f9a1c7e5b2d4086a1e9c3b5d7f0a2c4";

/// Some node other than `leader`.
fn follower_of(g: &CoordinatorGroup, leader: u64) -> u64 {
    g.nodes.keys().copied().find(|id| *id != leader).unwrap_or(leader)
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) -> ClientError {
    match r {
        Ok(v) => panic!("{what}: succeeded, but should have failed: {v:?}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_token_group_elects_commits_and_forwards_writes_over_tls() -> anyhow::Result<()> {
    let g =
        CoordinatorGroup::start(GroupOptions { nodes: 3, tls: true, token: Some(TOKEN.into()), ..Default::default() })?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let client = g.client(Duration::from_secs(10))?;
    let mut acked = BTreeSet::new();
    for i in 0..3 {
        register(&client, &format!("tls-{i}")).await?;
        acked.insert(format!("tls-{i}"));
    }
    // Committed means replicated to a majority over TLS; every node gets it.
    for id in g.nodes.keys() {
        wait_has_all(&g, *id, &acked, Duration::from_secs(10)).await?;
    }
    // A write sent only to a follower is forwarded to the leader over TLS, with the token.
    let follower = follower_of(&g, leader);
    let via_follower = g.client_for(&[follower], Duration::from_secs(10))?;
    register(&via_follower, "via-follower").await?;
    acked.insert("via-follower".into());
    wait_has_all(&g, leader, &acked, Duration::from_secs(10)).await?;

    // primusctl with the security flags from the environment.
    let pki = g.pki.as_ref().expect("tls group has certificates");
    let token_file = g.base_dir().join("token");
    let ctl = |args: &[&str], with_token: bool| -> anyhow::Result<std::process::Output> {
        let mut c = Command::new(bin("primusctl")?);
        c.args(["--endpoints", &g.endpoints(), "--timeout", "5s"]).args(args).env("PRIMUS_CA", &pki.ca);
        if with_token {
            c.env("PRIMUS_TOKEN_FILE", &token_file);
        }
        Ok(c.output()?)
    };
    let out = ctl(&["cluster", "list"], false)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cluster list over TLS failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("via-follower"), "{stdout}");
    let out = ctl(&["cluster", "add", "ctl-no-token", "--seed", "127.0.0.1:3306"], false)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("requires a token for writes") && stderr.contains("--token-file"), "{stderr}");
    let out = ctl(&["cluster", "add", "ctl-with-token", "--seed", "127.0.0.1:3306"], true)?;
    assert!(out.status.success(), "write with token failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_rejects_a_wrong_ca_and_plaintext_clients_with_a_clear_error() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions { nodes: 3, tls: true, ..Default::default() })?;
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let right = g.client(Duration::from_secs(5))?;
    register(&right, "right-ca").await?;

    // A CA that did not sign the coordinators' certificates.
    let other = tempfile::tempdir()?;
    let wrong_pki = TestPki::generate(other.path())?;
    let opts = ClientOptions {
        timeout: Duration::from_secs(5),
        tls: Some(wrong_pki.client_tls(false)?),
        ..Default::default()
    };
    let wrong = g.client_with(&[1, 2, 3], opts)?;
    let started = std::time::Instant::now();
    let e = expect_err(wrong.list_clusters(ReadConsistency::Stale).await, "wrong CA");
    let msg = e.to_string();
    println!("wrong CA: {msg}");
    assert!(matches!(e, ClientError::Tls { .. }), "not a TLS error: {e:?}");
    assert!(msg.contains("TLS") && msg.contains("certificate") && msg.contains("CA"), "unclear: {msg}");
    assert!(started.elapsed() < Duration::from_secs(4), "a TLS failure was retried until the deadline");

    // A plaintext client against the TLS-only port.
    let plain = g.client_with(&[1], ClientOptions { timeout: Duration::from_secs(3), ..Default::default() })?;
    let e = expect_err(plain.list_clusters(ReadConsistency::Stale).await, "plaintext client");
    let msg = e.to_string();
    println!("plaintext client: {msg}");
    assert!(msg.contains("TLS"), "does not say TLS may be needed: {msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_client_cert_refuses_clients_without_one_and_accepts_one_with_it() -> anyhow::Result<()> {
    let g =
        CoordinatorGroup::start(GroupOptions { nodes: 3, tls: true, require_client_cert: true, ..Default::default() })?;
    // Electing a leader and committing proves the peers' own client certificates are accepted.
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let pki = g.pki.as_ref().expect("certificates");
    let with_cert = g.client(Duration::from_secs(5))?;
    register(&with_cert, "mtls").await?;

    let opts =
        ClientOptions { timeout: Duration::from_secs(5), tls: Some(pki.client_tls(false)?), ..Default::default() };
    let without = g.client_with(&[1, 2, 3], opts)?;
    let e = expect_err(without.list_clusters(ReadConsistency::Stale).await, "no client certificate");
    let msg = e.to_string();
    println!("no client certificate: {msg}");
    assert!(msg.contains("TLS") && msg.contains("client certificate"), "unclear: {msg}");

    // primusctl --cert/--key.
    let out = Command::new(bin("primusctl")?)
        .args(["--endpoints", &g.endpoints(), "--timeout", "5s", "cluster", "list"])
        .arg("--ca")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .output()?;
    assert!(out.status.success(), "primusctl with a client cert: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mtls"));
    Ok(())
}

fn opts_with_token(token: Option<&str>) -> ClientOptions {
    ClientOptions { timeout: Duration::from_secs(5), token: token.map(str::to_string), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_token_reads_do_not_and_followers_forward_it() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        token: Some(TOKEN.into()),
        // Everything primusd logs, to check the token is in none of it.
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let all = [1, 2, 3];

    let none = g.client_with(&all, opts_with_token(None))?;
    let e = expect_err(register(&none, "no-token").await.map_err(to_client_error), "write without token");
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    assert!(e.to_string().contains("requires a token for writes: pass --token-file"), "{e}");

    let wrong = g.client_with(&all, opts_with_token(Some("not-the-token")))?;
    let e = expect_err(register(&wrong, "wrong-token").await.map_err(to_client_error), "write with wrong token");
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");

    let right = g.client_with(&all, opts_with_token(Some(TOKEN)))?;
    register(&right, "right-token").await?;

    // Reads are open.
    let listed = none.list_clusters(ReadConsistency::Linearizable).await?;
    assert_eq!(listed.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["right-token"]);
    none.status().await?;
    none.audit(10, ReadConsistency::Stale).await?;

    // A follower forwards the caller's token; the leader checks it again.
    let follower = follower_of(&g, leader);
    let via_follower = g.client_with(&[follower], opts_with_token(Some(TOKEN)))?;
    register(&via_follower, "forwarded").await?;
    let wrong_via_follower = g.client_with(&[follower], opts_with_token(Some("wrong")))?;
    let e = expect_err(register(&wrong_via_follower, "nope").await.map_err(to_client_error), "wrong token at follower");
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let names: BTreeSet<String> = ["right-token", "forwarded"].iter().map(|s| s.to_string()).collect();
    for id in all {
        wait_has_all(&g, id, &names, Duration::from_secs(10)).await?;
    }
    let listed = right.list_clusters(ReadConsistency::Linearizable).await?;
    assert_eq!(listed.clusters.len(), 2, "a refused write was applied: {listed:?}");

    let mut refusals_logged = false;
    for id in all {
        let log = std::fs::read_to_string(&g.node(id).log_path)?;
        refusals_logged |= log.contains("request refused");
        assert!(!log.contains(TOKEN), "node {id}'s log contains the token");
        assert!(!log.contains("not-the-token"), "node {id}'s log contains a presented token");
    }
    assert!(refusals_logged, "no node logged a refused request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_require_token_for_reads_reads_need_the_token_too() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        token: Some(TOKEN.into()),
        require_token_for_reads: true,
        ..Default::default()
    })?;
    // The group's own client carries the token: wait_leader reads through it.
    g.wait_leader(&[], Duration::from_secs(20)).await?;
    let none: Client = g.client_with(&[1, 2, 3], opts_with_token(None))?;
    let e = expect_err(none.list_clusters(ReadConsistency::Stale).await, "read without token");
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    assert!(e.to_string().contains("token for reads"), "{e}");
    let e = expect_err(none.node_status().await, "status without token");
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    let wrong = g.client_with(&[1, 2, 3], opts_with_token(Some("wrong")))?;
    let e = expect_err(wrong.list_clusters(ReadConsistency::Stale).await, "read with wrong token");
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let right = g.client(Duration::from_secs(5))?;
    register(&right, "reads-too").await?;
    assert_eq!(right.list_clusters(ReadConsistency::Linearizable).await?.clusters.len(), 1);
    Ok(())
}

fn to_client_error(e: anyhow::Error) -> ClientError {
    match e.downcast::<ClientError>() {
        Ok(c) => c,
        Err(e) => ClientError::Config(format!("{e:#}")),
    }
}

/// GET `path` over HTTPS, trusting `pki`'s CA (and presenting its client certificate
/// when `client_cert`). Returns the raw response.
async fn https_get(pki: &TestPki, addr: &str, path: &str, client_cert: bool) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca)? {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = if client_cert {
        let certs = CertificateDer::pem_file_iter(&pki.client_cert)?.collect::<Result<Vec<_>, _>>()?;
        builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_file(&pki.client_key)?)?
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut s = connector.connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        anyhow::ensure!(!out.is_empty(), "no answer");
        Ok::<_, anyhow::Error>(out)
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint_serves_https_from_the_tls_files_and_requires_client_certs_with_mtls() -> anyhow::Result<()> {
    let g = CoordinatorGroup::start(GroupOptions {
        nodes: 3,
        tls: true,
        require_client_cert: true,
        http: true,
        ..Default::default()
    })?;
    let (leader, _) = g.wait_leader(&[], Duration::from_secs(20)).await?;
    let pki = g.pki.clone().ok_or_else(|| anyhow::anyhow!("TLS group without certificates"))?;
    let addr = g.node(leader).http_addr().ok_or_else(|| anyhow::anyhow!("no HTTP address"))?;
    // The right CA and a client certificate: served.
    let ok = https_get(&pki, &addr, "/leader", true).await?;
    let head = String::from_utf8_lossy(&ok);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // mTLS on: no client certificate, no answer.
    let refused = https_get(&pki, &addr, "/health", false).await;
    assert!(refused.is_err(), "answered without a client certificate: {refused:?}");
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = primus_testkit::http::get(&addr, "/health", Duration::from_secs(3)).await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // The node is still healthy after the refused attempts.
    let again = https_get(&pki, &addr, "/health", true).await?;
    assert!(String::from_utf8_lossy(&again).starts_with("HTTP/1.1 200"));
    Ok(())
}

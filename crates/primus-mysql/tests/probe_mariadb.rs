//! The prober, the heartbeat and the flavor statements against real MariaDB servers started by
//! primus-testkit (GTID replication, users `primus`/`primus-pass` and `repl`/`repl-pass`).
//!
//! Tests run one at a time (they hold [`SERIAL`]): the SIGSTOP test measures timing, and several
//! three-server sandboxes starting at once on two cores would distort it.

use anyhow::{bail, Context, Result};
use mysql_async::prelude::Queryable;
use primus_mysql::flavor::{self, ChangeSource, Flavor, ResetReplica};
use primus_mysql::gtid::{GtidOrdering, GtidSetOps, MariaGtid, MariaGtidSet};
use primus_mysql::probe::GtidState;
use primus_mysql::status::{IoThreadState, UsingGtid};
use primus_mysql::{errant_transactions, HeartbeatRow, Observation, ProbeConfig, ProbeError, ProbeStage, Prober};
use primus_testkit::mariadb::{
    Instance, Sandbox, SandboxOptions, Topology, COORDINATOR_PASSWORD, COORDINATOR_USER, REPLICATION_PASSWORD,
    REPLICATION_USER,
};
use primus_types::InstanceAddr;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CATCH_UP: Duration = Duration::from_secs(15);

fn config(connect_timeout: Duration, query_timeout: Duration) -> ProbeConfig {
    let mut c = ProbeConfig::new(COORDINATOR_USER, COORDINATOR_PASSWORD);
    c.connect_timeout = connect_timeout;
    c.query_timeout = query_timeout;
    c
}

fn addr(i: &Instance) -> InstanceAddr {
    InstanceAddr::new("127.0.0.1", i.port()).expect("loopback address is valid")
}

fn prober(i: &Instance) -> Prober {
    Prober::new(addr(i), config(Duration::from_secs(2), Duration::from_secs(2)))
}

fn maria_state(o: &Observation) -> (&MariaGtidSet, &MariaGtidSet, &MariaGtidSet) {
    match &o.gtid {
        GtidState::MariaDb { current_pos, binlog_pos, slave_pos, .. } => (current_pos, binlog_pos, slave_pos),
        other => panic!("expected MariaDB GTID state, got {other:?}"),
    }
}

fn current_pos(o: &Observation) -> &MariaGtidSet {
    maria_state(o).0
}

/// Probes until `pred` holds (or fails after `timeout`), returning the last observation.
async fn probe_until(
    p: &Prober,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Observation) -> bool,
) -> Result<Observation> {
    let start = Instant::now();
    loop {
        let o = p.probe().await?;
        if pred(&o) {
            return Ok(o);
        }
        if start.elapsed() > timeout {
            bail!("{what}: not reached after {timeout:?}; last observation: {o:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_roles_ids_positions_and_heartbeats() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
    sb.insert_rows(5).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let primary_pos = sb.primary().gtid_current_pos().await?;
    assert!(!primary_pos.is_empty());

    let pp = prober(sb.primary());
    let p = pp.probe().await?;
    assert_eq!(p.server.flavor, Flavor::MariaDb);
    assert_eq!((p.server.version.major, p.server.version.minor), (10, 11), "{}", p.server.version_string);
    assert_eq!(p.server_id, sb.primary().server_id());
    assert!(!p.is_replica(), "{:?}", p.replication);
    assert!(!p.read_only);
    assert_eq!(p.super_read_only, None, "MariaDB has no super_read_only");
    assert!(p.log_bin && p.log_slave_updates);
    assert_eq!(p.binlog_format.as_deref(), Some("ROW"));
    assert_eq!(p.server_uuid, None);
    assert!(p.uptime_s.is_some());
    let (cur, binlog, _) = maria_state(&p);
    assert_eq!(cur.to_string(), primary_pos);
    assert_eq!(binlog.to_string(), primary_pos);
    match &p.gtid {
        GtidState::MariaDb { strict_mode, domain_id, .. } => assert_eq!((*strict_mode, *domain_id), (true, 0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.binlog_dump_threads, 2, "one dump thread per replica");
    let mut hosts: Vec<(u32, u16)> = p.replicas.iter().map(|r| (r.server_id, r.port)).collect();
    hosts.sort();
    let mut expected: Vec<(u32, u16)> = sb.replicas().iter().map(|r| (r.server_id(), r.port())).collect();
    expected.sort();
    assert_eq!(hosts, expected, "SHOW SLAVE HOSTS lists both replicas with their report_port");
    assert_eq!(p.semi_sync.source_enabled, Some(false), "semi-sync is built in and off");
    assert_eq!(p.semi_sync.source_clients, Some(0));
    assert!(p.heartbeat.is_empty() && p.heartbeat_error.is_none(), "missing table is not an error");
    assert!(p.connect_us.is_some(), "first probe connects");

    // Observations travel between coordinators as JSON.
    let json = serde_json::to_string(&p)?;
    assert!(json.contains(&format!("\"current_pos\":\"{primary_pos}\"")), "{json}");
    assert_eq!(serde_json::from_str::<Observation>(&json)?, p);

    // What a probe costs on loopback (printed for the record; the bound is loose on purpose).
    let cost = prober(&sb.replicas()[0]).measure_cost(50).await?;
    eprintln!("probe cost on a replica: {cost:?}");
    assert!(cost.connect_us.is_some() && cost.p50_us < 50_000, "{cost:?}");

    let again = pp.probe().await?;
    assert_eq!(again.connect_us, None, "the connection is reused");
    assert!(again.taken_at_ms >= p.taken_at_ms);

    for r in sb.replicas() {
        let o = prober(r).probe().await?;
        assert_eq!(o.server_id, r.server_id());
        assert!(o.is_replica() && o.read_only);
        assert_eq!(o.replication.len(), 1);
        let st = &o.replication[0];
        assert_eq!(st.channel, "");
        assert_eq!((st.source_host.as_str(), st.source_port), ("127.0.0.1", sb.primary().port()));
        assert_eq!(st.source_user, REPLICATION_USER);
        assert_eq!(st.source_server_id, Some(sb.primary().server_id()));
        assert_eq!((st.io_running, st.sql_running), (IoThreadState::Yes, true));
        assert_eq!(st.using_gtid, Some(UsingGtid::SlavePos));
        assert_eq!(st.gtid_io_pos.as_ref().map(ToString::to_string).as_deref(), Some(primary_pos.as_str()));
        assert_eq!(st.gtid_slave_pos.as_ref().map(ToString::to_string).as_deref(), Some(primary_pos.as_str()));
        assert_eq!(st.heartbeat_period_s, Some(0.5));
        assert!(st.received_heartbeats.is_some());
        assert!(st.seconds_behind.is_some());
        assert_eq!(current_pos(&o).to_string(), primary_pos);
        assert_eq!(GtidSetOps::compare(current_pos(&o), current_pos(&p)), GtidOrdering::Equal);
        assert!(o.gtid.executed().compare(&p.gtid.executed()) == Some(GtidOrdering::Equal));
        assert!(MariaGtidSet::errant(current_pos(&o), current_pos(&p)).is_empty());
        assert!(o.replicas.is_empty() && o.binlog_dump_threads == 0);
    }

    // Heartbeat: written on the primary (creating the table), seen on every replica.
    assert!(pp.write_heartbeat("c1", 1, 1_000, 7).await?, "first write inserts");
    assert!(pp.write_heartbeat("c1", 1, 2_000, 7).await?, "same epoch advances");
    assert!(!pp.write_heartbeat("c1", 0, 3_000, 9).await?, "an older epoch is fenced off");
    assert!(pp.write_heartbeat("c2", 4, 5, 6).await?, "one row per cluster");
    let want = HeartbeatRow { cluster: "c1".into(), epoch: 1, ts_ms: 2_000, coordinator: 7 };
    let p = pp.probe().await?;
    assert_eq!(p.heartbeat_of("c1"), Some(&want));
    assert_eq!(p.heartbeat.len(), 2);
    for r in sb.replicas() {
        let o =
            probe_until(&prober(r), CATCH_UP, "heartbeat replicated", |o| o.heartbeat_of("c1") == Some(&want)).await?;
        assert_eq!(o.heartbeat_of("c2").map(|h| h.epoch), Some(4));
    }
    assert!(pp.write_heartbeat("c1", 2, 2_500, 8).await?, "a newer epoch takes over");
    let r0 = prober(&sb.replicas()[0]);
    probe_until(&r0, CATCH_UP, "epoch 2 replicated", |o| {
        o.heartbeat_of("c1").is_some_and(|h| (h.epoch, h.ts_ms, h.coordinator) == (2, 2_500, 8))
    })
    .await?;

    // Dropping the table while the probes read it within their batch: no error, no desync.
    sb.primary().exec("DROP TABLE primus.heartbeat").await?;
    for _ in 0..3 {
        let p = pp.probe().await?;
        assert!(p.heartbeat.is_empty() && p.heartbeat_error.is_none(), "{:?}", p.heartbeat_error);
        assert_eq!(p.server_id, sb.primary().server_id());
    }
    let o = probe_until(&r0, CATCH_UP, "table drop replicated", |o| o.heartbeat.is_empty()).await?;
    assert!(o.heartbeat_error.is_none() && o.is_replica());

    // The free function works on any connection (and recreates the table).
    let mut conn = mysql_async::Conn::new(sb.primary().coordinator_opts()).await?;
    assert!(primus_mysql::heartbeat::write(&mut conn, "c3", 1, 1, 1).await?);
    conn.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstopped_primary_times_out_while_replica_probes_keep_their_pace() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
    let query_timeout = Duration::from_millis(800);
    let connect_timeout = Duration::from_millis(600);
    let slack = Duration::from_millis(400);
    let pp = Prober::new(addr(sb.primary()), config(connect_timeout, query_timeout));
    pp.probe().await?; // connection established before the freeze

    // One task per replica, probing every 100 ms, as the coordinator will.
    let window = Duration::from_secs(4);
    let mut tasks = Vec::new();
    for r in sb.replicas() {
        let p = Prober::new(addr(r), config(connect_timeout, query_timeout));
        p.probe().await?;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let start = Instant::now();
            while start.elapsed() < window {
                let t = Instant::now();
                p.probe().await?;
                latencies.push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, ProbeError>(latencies)
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    sb.primary().sigstop()?;
    let frozen = async {
        // On the established connection the batch gets no answer.
        let t = Instant::now();
        let e = pp.probe().await.expect_err("a stopped server cannot answer");
        let first = t.elapsed();
        // The next probe must reconnect: the kernel accepts TCP, the server never greets.
        let t = Instant::now();
        let e2 = pp.probe().await.expect_err("a stopped server cannot greet");
        (e, first, e2, t.elapsed())
    }
    .await;
    sb.primary().sigcont()?;

    let (e, first, e2, second) = frozen;
    assert!(matches!(e, ProbeError::Timeout { stage: ProbeStage::Variables, .. }), "{e:?}");
    assert!(first >= query_timeout && first < query_timeout + slack, "took {first:?}");
    assert!(matches!(e2, ProbeError::Timeout { stage: ProbeStage::Connect, .. }), "{e2:?}");
    assert!(second >= connect_timeout && second < connect_timeout + slack, "took {second:?}");

    for t in tasks {
        let latencies = t.await??;
        let max = latencies.iter().max().copied().unwrap_or_default();
        // ~4 s / (100 ms sleep + probe) ≈ 35 probes: the frozen primary did not slow them down.
        assert!(latencies.len() >= 25, "only {} replica probes in {window:?}", latencies.len());
        assert!(max < Duration::from_millis(300), "a replica probe took {max:?}");
    }

    // And the primary is probed normally again once it runs.
    let o = pp.probe().await?;
    assert!(o.connect_us.is_some());
    assert_eq!(o.server_id, sb.primary().server_id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errant_writes_on_a_replica_show_against_the_primary() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
    sb.insert_rows(3).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let (bad, good) = (&sb.replicas()[0], &sb.replicas()[1]);

    // A direct write on a replica (root holds READ ONLY ADMIN, so read_only does not stop it).
    bad.exec("CREATE DATABASE errant_db").await?;

    let p = prober(sb.primary()).probe().await?;
    let b = prober(bad).probe().await?;
    let g = prober(good).probe().await?;
    let errant = MariaGtidSet::errant(current_pos(&b), current_pos(&p));
    assert_eq!(errant.count(), 1, "{errant}");
    let (domain, d) = errant.domains().next().context("one errant domain")?;
    assert_eq!((domain, d.server_id), (0, bad.server_id()), "errant GTID written by the replica itself");
    assert_eq!(GtidSetOps::compare(current_pos(&b), current_pos(&p)), GtidOrdering::Ahead);
    assert!(MariaGtidSet::errant(current_pos(&g), current_pos(&p)).is_empty());
    let any = primus_mysql::AnyGtidSet::errant(&b.gtid.executed(), &p.gtid.executed()).context("same flavor")?;
    assert_eq!(any.count(), 1);

    // The primary now writes the same seq number: the histories conflict, and in strict mode
    // the bad replica's applier stops with an error that the probe reports.
    sb.primary().exec("INSERT INTO primus_test.t (v) VALUES ('same seq')").await?;
    let bp = prober(bad);
    let b = probe_until(&bp, CATCH_UP, "SQL thread error on the errant replica", |o| {
        o.replication.first().is_some_and(|s| s.last_sql_error.is_some())
    })
    .await?;
    let p = prober(sb.primary()).probe().await?;
    let sql_err = b.replication[0].last_sql_error.clone().context("SQL error")?;
    assert!(!b.replication[0].sql_running);
    assert!(sql_err.errno > 0 && !sql_err.message.is_empty(), "{sql_err:?}");
    assert_eq!(current_pos(&b).conflicts(current_pos(&p)), vec![0]);
    assert_eq!(GtidSetOps::compare(current_pos(&b), current_pos(&p)), GtidOrdering::Diverged);
    assert_eq!(b.replication[0].io_running, IoThreadState::Yes, "the receiver still works");
    Ok(())
}

fn binlog_state(o: &Observation) -> &primus_mysql::MariaBinlogState {
    match &o.gtid {
        GtidState::MariaDb { binlog_state, .. } => binlog_state,
        other => panic!("expected MariaDB GTID state, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errant_write_stays_visible_after_the_primary_overtakes_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
    sb.insert_rows(3).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let (bad, good) = (&sb.replicas()[0], &sb.replicas()[1]);

    // What an operator (or a buggy application) might do on a replica.
    bad.exec("SET GLOBAL read_only = 0").await?;
    bad.exec("CREATE DATABASE errant_x").await?;
    bad.exec("SET GLOBAL read_only = 1").await?;
    // The primary moves on, as it does every few hundred ms with coordinator heartbeats: its
    // seq in domain 0 overtakes the errant one, and the bad replica's applier stops on the
    // out-of-order seq (strict mode).
    let mut pos = String::new();
    for _ in 0..20 {
        pos = sb.insert_rows(1).await?; // one INSERT transaction each
    }
    good.wait_gtid(&pos, CATCH_UP).await?;
    let b = probe_until(&prober(bad), CATCH_UP, "SQL thread error on the errant replica", |o| {
        o.replication.first().is_some_and(|s| s.last_sql_error.is_some())
    })
    .await?;
    let p = prober(sb.primary()).probe().await?;
    let g = prober(good).probe().await?;
    eprintln!(
        "primary {} / {}; bad replica {} / {}; good replica {} / {}",
        current_pos(&p),
        binlog_state(&p),
        current_pos(&b),
        binlog_state(&b),
        current_pos(&g),
        binlog_state(&g)
    );

    // The probe reads @@gtid_binlog_state.
    let primary_last = current_pos(&p).last(0).context("domain 0 on the primary")?;
    assert_eq!(primary_last.server_id, sb.primary().server_id());
    let errant_seq = binlog_state(&b).get(0, bad.server_id()).context("the replica's own pair")?;
    assert!(primary_last.seq_no >= errant_seq + 20, "the primary overtook the errant seq");
    assert_eq!(binlog_state(&p).get(0, sb.primary().server_id()), Some(primary_last.seq_no));

    // Position arithmetic alone has lost it...
    assert!(
        primus_mysql::AnyGtidSet::errant(&b.gtid.executed(), &p.gtid.executed()).context("same flavor")?.is_empty(),
        "the primary's position overtook the errant seq"
    );
    // ... the binlog state keeps it.
    let report = errant_transactions(&b, &p).context("same flavor")?;
    eprintln!("errant on the written replica: {report}");
    assert!(!report.is_empty());
    assert_eq!(report.count(), 1, "{report:?}");
    assert_eq!(report.server_ids(), BTreeSet::from([bad.server_id()]), "{report:?}");
    assert_eq!(report.binlog.len(), 1, "{report:?}");
    assert_eq!(report.binlog[0], MariaGtid { domain_id: 0, server_id: bad.server_id(), seq_no: errant_seq });
    assert!(report.unseen_on_primary.is_empty(), "{report:?}");

    let clean = errant_transactions(&g, &p).context("same flavor")?;
    assert!(clean.is_empty(), "{clean:?}");
    assert_eq!(clean.count(), 0);
    assert!(errant_transactions(&p, &p).context("same flavor")?.is_empty());

    // The replica probed after the primary wrote more (probes run on their own schedules):
    // positions say "ahead", but the primary wrote those itself, so nothing is errant.
    let pos = sb.insert_rows(1).await?;
    good.wait_gtid(&pos, CATCH_UP).await?;
    let g_later = prober(good).probe().await?;
    assert!(!primus_mysql::AnyGtidSet::errant(&g_later.gtid.executed(), &p.gtid.executed())
        .context("same flavor")?
        .is_empty());
    let skewed = errant_transactions(&g_later, &p).context("same flavor")?;
    assert!(skewed.is_empty(), "{skewed:?}");
    assert!(!skewed.unseen_on_primary.is_empty(), "{skewed:?}");
    let still = errant_transactions(&prober(bad).probe().await?, &p).context("same flavor")?;
    assert_eq!((still.count(), still.server_ids()), (1, BTreeSet::from([bad.server_id()])));

    // Observations carry the state through JSON.
    let json = serde_json::to_string(&b)?;
    assert!(json.contains("\"binlog_state\":\""), "{json}");
    let back: Observation = serde_json::from_str(&json)?;
    assert_eq!(errant_transactions(&back, &p), Some(report));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_typed_and_restarts_are_survived() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::Standalone(1))).await?;
    let inst = sb.primary();

    let mut wrong = config(Duration::from_secs(2), Duration::from_secs(2));
    wrong.password = "not-the-password".into();
    match Prober::new(addr(inst), wrong).probe().await {
        Err(ProbeError::AccessDenied { code: 1045, message }) => {
            assert!(message.contains("Access denied"), "{message}");
            assert!(!message.contains("not-the-password"));
        }
        other => panic!("expected AccessDenied, got {other:?}"),
    }

    let closed = primus_testkit::ports::free_port()?;
    let t = Instant::now();
    match Prober::new(InstanceAddr::new("127.0.0.1", closed)?, config(Duration::from_secs(2), Duration::from_secs(2)))
        .probe()
        .await
    {
        Err(ProbeError::Unreachable { message }) => assert!(!message.is_empty()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(1), "refusal is immediate, not a timeout");

    // A statement of the batch failing (here: no privilege for SHOW ALL SLAVES STATUS) is
    // reported with the server's own error, probe after probe.
    inst.exec("CREATE USER 'weak'@'%' IDENTIFIED BY 'weak-pass'").await?;
    let mut weak = config(Duration::from_secs(2), Duration::from_secs(2));
    weak.user = "weak".into();
    weak.password = "weak-pass".into();
    let pw = Prober::new(addr(inst), weak);
    for _ in 0..2 {
        match pw.probe().await {
            Err(ProbeError::QueryFailed { query, code: Some(1227), message }) => {
                assert_eq!(query, "SHOW ALL SLAVES STATUS");
                assert!(message.contains("Access denied"), "{message}");
            }
            other => panic!("expected QueryFailed(1227), got {other:?}"),
        }
    }

    // A restart kills the reused connection; the next probe reconnects transparently.
    let p = prober(inst);
    let before = p.probe().await?;
    inst.restart().await?;
    let after = p.probe().await?;
    assert!(after.connect_us.is_some(), "reconnected");
    assert_eq!(after.server_id, before.server_id);
    assert!(after.uptime_s <= before.uptime_s.map(|u| u + 1), "uptime restarted");

    // A dead server: refused outright once the port is closed.
    inst.kill9()?;
    assert!(matches!(p.probe().await, Err(ProbeError::Unreachable { .. })));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flavor_statements_run_on_a_real_server() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(2))).await?;
    sb.insert_rows(2).await?;
    sb.wait_replicas_caught_up(CATCH_UP).await?;
    let (r1, r2) = (&sb.replicas()[0], &sb.replicas()[1]);
    let p2 = prober(r2);
    let info = p2.server_info().await?;
    let t = Duration::from_secs(5);

    // Repoint replica 2 under replica 1 (a chain), with the statements primus will use.
    let repoint = info.change_source_sql(&ChangeSource {
        host: "127.0.0.1",
        port: r1.port(),
        user: REPLICATION_USER,
        password: REPLICATION_PASSWORD,
        heartbeat_period: Some(Duration::from_millis(250)),
        connect_retry_s: Some(1),
        tls: Default::default(),
    });
    p2.execute(&[info.stop_replica_sql(), repoint, info.start_replica_sql()], t).await?;
    let o = probe_until(&p2, CATCH_UP, "replica 2 replicating from replica 1", |o| {
        o.replication.first().is_some_and(|s| s.source_port == r1.port() && s.is_healthy())
    })
    .await?;
    assert_eq!(o.replication[0].heartbeat_period_s, Some(0.25));
    assert_eq!(o.replication[0].source_server_id, Some(r1.server_id()));
    let pos = sb.insert_rows(1).await?;
    r2.wait_gtid(&pos, CATCH_UP).await?;
    let o1 = prober(r1).probe().await?;
    assert_eq!(o1.replicas.iter().map(|h| h.server_id).collect::<Vec<_>>(), [r2.server_id()]);

    // Promote replica 2: stop, forget its source, make it writable.
    let mut promote = vec![info.stop_replica_sql(), info.reset_replica_sql(ResetReplica::All)];
    promote.extend(info.set_read_only_sql(false));
    p2.execute(&promote, t).await?;
    let o = p2.probe().await?;
    assert!(!o.is_replica() && !o.read_only, "{:?}", o.replication);
    p2.execute(&info.set_read_only_sql(true), t).await?;
    assert!(p2.probe().await?.read_only);

    // MariaDB 10.11: read_only stops even SUPER users unless they hold READ ONLY ADMIN.
    r2.exec("CREATE USER 'sup'@'%' IDENTIFIED BY 'sup-pass'").await?;
    r2.exec("GRANT SUPER, INSERT, CREATE ON *.* TO 'sup'@'%'").await?;
    let mut sup = config(Duration::from_secs(2), Duration::from_secs(2));
    sup.user = "sup".into();
    sup.password = "sup-pass".into();
    let ps = Prober::new(addr(r2), sup);
    let e = ps.execute(&["CREATE DATABASE sup_db".into()], t).await.expect_err("read_only applies to SUPER");
    assert!(matches!(e, ProbeError::ReadOnly { .. }), "{e:?}");
    // ... and the coordinator user, which holds READ ONLY ADMIN, can write: see the flavor docs.
    assert!(p2.write_heartbeat("ro", 1, 1, 1).await?);

    // Quoting survives a hostile string, in the default sql_mode and after the session fix
    // for NO_BACKSLASH_ESCAPES.
    let evil = "x\\', MASTER_HOST='evil'; -- \u{1a}\0\"`";
    let mut conn = mysql_async::Conn::new(r2.coordinator_opts()).await?;
    let back: Option<String> = conn.query_first(format!("SELECT {}", flavor::quote_string(evil))).await?;
    assert_eq!(back.as_deref(), Some(evil));
    conn.query_drop("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES,STRICT_TRANS_TABLES'").await?;
    conn.query_drop(flavor::SESSION_SQL_MODE_FIX).await?;
    let mode: Option<String> = conn.query_first("SELECT @@SESSION.sql_mode").await?;
    assert_eq!(mode.as_deref(), Some("STRICT_TRANS_TABLES"));
    let back: Option<String> = conn.query_first(format!("SELECT {}", flavor::quote_string(evil))).await?;
    assert_eq!(back.as_deref(), Some(evil));
    conn.query_drop("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'").await?;
    conn.query_drop(flavor::SESSION_SQL_MODE_FIX).await?;
    let mode: Option<String> = conn.query_first("SELECT @@SESSION.sql_mode").await?;
    assert_eq!(mode.as_deref(), Some(""));
    conn.disconnect().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_show_all_slaves_status_has_the_fixture_columns() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let sb = Sandbox::start(SandboxOptions::new(Topology::PrimaryWithReplicas(1))).await?;
    let mut conn = mysql_async::Conn::new(sb.replicas()[0].coordinator_opts()).await?;
    let result = conn.query_iter("SHOW ALL SLAVES STATUS").await?;
    let real: Vec<String> = result.columns_ref().iter().map(|c| c.name_str().into_owned()).collect();
    result.drop_result().await?;
    let fixture = std::fs::read_to_string(format!(
        "{}/tests/fixtures/mariadb-10.11-show-all-slaves-status.txt",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let documented: Vec<String> = fixture
        .lines()
        .skip_while(|l| !l.contains("1. row"))
        .skip(1)
        .take_while(|l| !l.contains("2. row"))
        .filter_map(|l| l.split_once(':').map(|(c, _)| c.trim().to_string()))
        .collect();
    assert_eq!(real, documented, "the MariaDB 10.11 fixture lists the real columns in the real order");
    conn.disconnect().await?;
    Ok(())
}

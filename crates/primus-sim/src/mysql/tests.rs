//! Tests of the simulated servers, on paused-clock single-threaded runtimes.

use super::*;
use primus_mysql::flavor::{self, ChangeSource, ResetReplica};
use primus_mysql::Flavor;
use primus_mysql::{Connector, GtidState, IoThreadState, MysqlConn, ProbeConfig, ProbeError, ProbeStage};
use rand::SeedableRng;
use std::time::Duration;
use tokio::time::{sleep, Instant};

fn addr(n: u16) -> InstanceAddr {
    InstanceAddr::new(format!("db{n}"), 3306).expect("valid address")
}

fn world(seed: u64) -> SimMysql {
    SimMysql::new(WorldConfig::default(), StdRng::seed_from_u64(seed)).expect("inside a runtime")
}

fn probe_config() -> ProbeConfig {
    ProbeConfig::new("primus", "secret")
}

fn conn(sim: &SimMysql, a: &InstanceAddr) -> SimConn {
    sim.connector(Peer::Coordinator(1), probe_config()).conn(a)
}

/// A writable primary `db1` (server id 1) and replicas `db2..` replicating from it.
fn cluster(sim: &SimMysql, replicas: u16, mysql: bool, tweak: impl Fn(&mut ServerConfig)) -> Vec<InstanceAddr> {
    let make = |n: u16| {
        let mut c = if mysql {
            ServerConfig::mysql(addr(n), u32::from(n))
        } else {
            ServerConfig::mariadb(addr(n), u32::from(n))
        };
        c.read_only_at_start = n != 1;
        tweak(&mut c);
        c
    };
    let mut out = vec![addr(1)];
    sim.add_server(make(1)).expect("primary");
    for n in 2..2 + replicas {
        sim.add_server(make(n)).expect("replica");
        sim.replicate(&addr(n), &addr(1), &ReplicationSetup::default()).expect("replicate");
        out.push(addr(n));
    }
    out
}

async fn exec(sim: &SimMysql, a: &InstanceAddr, sql: &[&str]) -> Result<(), ProbeError> {
    let statements: Vec<String> = sql.iter().map(|s| s.to_string()).collect();
    conn(sim, a).execute(&statements, Duration::from_secs(5)).await
}

fn maria_pos(o: &Observation) -> (String, String, String) {
    match &o.gtid {
        GtidState::MariaDb { current_pos, binlog_pos, slave_pos, .. } => {
            (current_pos.to_string(), binlog_pos.to_string(), slave_pos.to_string())
        }
        other => panic!("not MariaDB: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn replica_receives_and_applies_with_the_configured_delay_and_lag() {
    let sim = world(1);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    sim.set_timing(
        &r,
        ReplicaTiming {
            io_delay: Duration::from_millis(100),
            apply_delay: Duration::from_millis(2400),
            ..Default::default()
        },
    )
    .expect("timing");
    sleep(Duration::from_secs(1)).await;
    let ack = sim.app_write(1, &p, 42).await.expect("written");
    let committed = Instant::now();
    assert_eq!(ack.gtid.map(|g| g.to_string()).as_deref(), Some("0-1-1"));
    assert_eq!(ack.semi_sync, SemiSyncOutcome::NotWaited);
    let c = conn(&sim, &r);

    sleep(Duration::from_millis(50)).await;
    let o = c.probe().await.expect("probe");
    let row = &o.replication[0];
    assert_eq!(row.io_running, IoThreadState::Yes);
    assert_eq!(row.gtid_io_pos.as_ref().map(ToString::to_string).as_deref(), Some(""), "not received yet");

    sleep_until_after(committed, Duration::from_millis(150)).await;
    let o = c.probe().await.expect("probe");
    let row = &o.replication[0];
    assert_eq!(row.gtid_io_pos.as_ref().map(ToString::to_string).as_deref(), Some("0-1-1"), "received");
    assert_eq!(maria_pos(&o).0, "", "not applied yet");
    assert_eq!(row.seconds_behind, Some(0));
    assert!(row.read_coord.is_some(), "read position moved: {row:?}");

    sleep_until_after(committed, Duration::from_millis(2200)).await;
    let o = c.probe().await.expect("probe");
    assert_eq!(o.replication[0].seconds_behind, Some(2), "the pending transaction was committed 2.2 s ago");
    assert!(sim.rows(&r).expect("rows").is_empty());

    sleep_until_after(committed, Duration::from_millis(2600)).await;
    let o = c.probe().await.expect("probe");
    let (current, binlog, slave) = maria_pos(&o);
    assert_eq!((current.as_str(), binlog.as_str(), slave.as_str()), ("0-1-1", "0-1-1", "0-1-1"));
    assert_eq!(o.replication[0].seconds_behind, Some(0));
    assert_eq!(o.replication[0].gtid_slave_pos.as_ref().map(ToString::to_string).as_deref(), Some("0-1-1"));
    assert_eq!(sim.rows(&r).expect("rows").into_iter().collect::<Vec<_>>(), [42]);
    // The primary lists its replica, reported by its own address.
    let po = conn(&sim, &p).probe().await.expect("probe primary");
    assert_eq!(po.binlog_dump_threads, 1);
    assert_eq!((po.replicas[0].host.as_str(), po.replicas[0].port, po.replicas[0].server_id), ("db2", 3306, 2));
}

async fn sleep_until_after(t: Instant, d: Duration) {
    tokio::time::sleep_until(t + d).await;
}

#[tokio::test(start_paused = true)]
async fn mysql_replica_reports_retrieved_and_executed_gtid_sets() {
    let sim = world(2);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, true, |_| {})).expect("two");
    sim.set_timing(&r, ReplicaTiming { apply_delay: Duration::from_secs(1), ..Default::default() }).expect("timing");
    for row in 1..=3 {
        sim.app_write(1, &p, row).await.expect("written");
    }
    let uuid = sim.observe(&p).expect("primary").server_uuid.expect("MySQL has a uuid");
    sleep(Duration::from_millis(100)).await;
    let o = conn(&sim, &r).probe().await.expect("probe");
    let row = &o.replication[0];
    assert_eq!(row.retrieved_gtid_set.as_ref().map(ToString::to_string), Some(format!("{uuid}:1-3")));
    assert_eq!(row.executed_gtid_set.as_ref().map(ToString::to_string).as_deref(), Some(""));
    assert_eq!(row.auto_position, Some(true));
    assert_eq!(row.source_uuid.as_deref(), Some(uuid.as_str()));
    assert_eq!(o.super_read_only, Some(false));
    assert_eq!(o.replicas.len(), 0);
    sleep(Duration::from_secs(2)).await;
    let o = conn(&sim, &r).probe().await.expect("probe");
    assert_eq!(o.gtid.executed().to_string(), format!("{uuid}:1-3"));
    assert_eq!(o.replication[0].received_heartbeats, None, "MySQL shows no heartbeat counter");
    let po = conn(&sim, &p).probe().await.expect("probe");
    assert_eq!(po.replicas[0].uuid, sim.observe(&r).expect("replica").server_uuid);
}

#[tokio::test(start_paused = true)]
async fn crashed_primary_refuses_connections_and_its_replicas_reconnect_without_heartbeats() {
    let sim = world(3);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    sleep(Duration::from_secs(2)).await;
    let c = conn(&sim, &r);
    let before = c.probe().await.expect("probe").replication[0].clone();
    assert_eq!(before.io_running, IoThreadState::Yes);
    assert_eq!(before.heartbeat_period_s, Some(0.5));
    let beats = before.received_heartbeats.expect("MariaDB counts heartbeats");
    assert!((3..=5).contains(&beats), "{beats} heartbeats in 2 s");

    let pc = conn(&sim, &p);
    pc.probe().await.expect("primary answers");
    sim.crash(&p).expect("crash");
    match pc.probe().await {
        Err(ProbeError::Unreachable { .. }) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
    sleep(Duration::from_secs(3)).await;
    let after = c.probe().await.expect("probe").replication[0].clone();
    assert_eq!(after.io_running, IoThreadState::Connecting);
    assert_eq!(after.last_io_error.as_ref().map(|e| e.errno), Some(2003));
    assert!(after.received_heartbeats.expect("count") <= beats + 1, "{after:?}");
    assert_eq!(after.seconds_behind, None);
    assert!(sim.observe(&r).expect("obs").semi_sync.replica_active == Some(false));

    sim.start(&p).expect("start");
    sleep(Duration::from_millis(1500)).await;
    let back = c.probe().await.expect("probe").replication[0].clone();
    assert_eq!(back.io_running, IoThreadState::Yes, "reconnected within the connect retry");
    assert_eq!(back.last_io_error, None);
    let o = pc.probe().await.expect("the restarted primary answers");
    assert!(o.uptime_s.expect("uptime") <= 2);
}

/// A server whose statements are slow (`statement_delay`): a call bounded below the
/// delay times out, and the statement still runs once its time comes; statements keep
/// their order; with the delay back at 0 the server answers at once again.
#[tokio::test(start_paused = true)]
async fn slow_statements_run_late_in_order_even_when_the_caller_gave_up() {
    let sim = world(5);
    let [p, _r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    let c = conn(&sim, &p);
    c.probe().await.expect("connected");
    sim.update_timing(&p, |t| t.statement_delay = Duration::from_millis(800)).expect("timing");
    let started = Instant::now();
    match c.execute(&["SET GLOBAL read_only = ON".to_string()], Duration::from_millis(300)).await {
        Err(ProbeError::Timeout { stage: ProbeStage::Execute, after_ms }) => assert_eq!(after_ms, 300),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!sim.observe(&p).expect("obs").read_only, "not run yet");
    sleep(Duration::from_millis(600)).await;
    assert!(sim.observe(&p).expect("obs").read_only, "the statement ran 800 ms after it arrived");
    let c2 = conn(&sim, &p);
    let t = Instant::now();
    c2.execute(&["SET GLOBAL read_only = OFF".to_string()], Duration::from_secs(5)).await.expect("runs, late");
    assert!(t.elapsed() >= Duration::from_millis(800) * 2, "connect and statement each held: {:?}", t.elapsed());
    sim.update_timing(&p, |t| t.statement_delay = Duration::ZERO).expect("timing");
    let t = Instant::now();
    c2.probe().await.expect("answers");
    assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
    assert!(started.elapsed() > Duration::from_millis(900));
}

#[tokio::test(start_paused = true)]
async fn paused_server_makes_calls_time_out_and_runs_a_statement_sent_meanwhile_when_resumed() {
    let sim = world(4);
    let [p, _r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    let c = conn(&sim, &p);
    c.probe().await.expect("connected before the pause");
    sim.pause(&p).expect("pause");
    let started = Instant::now();
    match c.execute(&["SET GLOBAL read_only = ON".to_string()], Duration::from_secs(1)).await {
        Err(ProbeError::Timeout { stage: ProbeStage::Execute, after_ms }) => assert_eq!(after_ms, 1000),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    match conn(&sim, &p).probe().await {
        Err(ProbeError::Timeout { stage: ProbeStage::Connect, .. }) => {}
        other => panic!("a new connection hangs in the handshake: {other:?}"),
    }
    assert!(!sim.observe(&p).expect("obs").read_only, "nothing ran while paused");
    sim.resume(&p).expect("resume");
    assert!(sim.observe(&p).expect("obs").read_only, "the statement received during the pause ran on resume");
    c.probe().await.expect("answers again");
}

#[tokio::test(start_paused = true)]
async fn semi_sync_after_sync_waits_for_a_replica_receipt_and_falls_back_after_the_timeout() {
    let sim = world(5);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |c| {
        c.semi_sync_source_at_start = c.server_id == 1;
        c.semi_sync_replica_at_start = true;
        c.semi_sync_timeout_ms_at_start = 1000;
        c.semi_sync_wait_point_at_start = WaitPoint::AfterSync;
        c.timing.io_delay = Duration::from_millis(50);
    }))
    .expect("two");
    sleep(Duration::from_millis(200)).await;
    let o = sim.observe(&p).expect("primary");
    assert_eq!(
        (o.semi_sync.source_enabled, o.semi_sync.source_active, o.semi_sync.source_clients),
        (Some(true), Some(true), Some(1))
    );
    assert_eq!(sim.observe(&r).expect("replica").semi_sync.replica_active, Some(true));

    // The commit waits for the replica's acknowledgement (50 ms there, 50 ms back); with
    // AFTER_SYNC the row is in the binlog (and on the replica) before it is visible.
    let sim2 = sim.clone();
    let p2 = p.clone();
    let started = Instant::now();
    let write = tokio::spawn(async move { sim2.app_write(1, &p2, 7).await });
    sleep(Duration::from_millis(70)).await;
    let during = sim.observe(&p).expect("primary");
    assert_eq!(maria_pos(&during).1, "0-1-1", "binlogged");
    assert!(sim.rows(&p).expect("rows").is_empty(), "not committed before the ack");
    let ack = write.await.expect("task").expect("written");
    assert_eq!(ack.semi_sync, SemiSyncOutcome::Acknowledged);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100) && took < Duration::from_millis(110), "{took:?}");
    assert!(sim.rows(&p).expect("rows").contains(&7));

    // Without a semi-sync replica the commit waits for the timeout, then falls back.
    exec(&sim, &r, &["STOP SLAVE IO_THREAD"]).await.expect("stop io");
    assert_eq!(sim.observe(&p).expect("primary").semi_sync.source_clients, Some(0));
    let started = Instant::now();
    let ack = sim.app_write(1, &p, 8).await.expect("written after the timeout");
    assert_eq!(ack.semi_sync, SemiSyncOutcome::NotAcknowledged);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1010), "{took:?}");
    assert_eq!(sim.observe(&p).expect("primary").semi_sync.source_active, Some(false));
    let ack = sim.app_write(1, &p, 9).await.expect("written");
    assert_eq!(ack.semi_sync, SemiSyncOutcome::NotWaited, "asynchronous now");

    // The replica catches up and the primary switches back to semi-sync.
    exec(&sim, &r, &["START SLAVE IO_THREAD"]).await.expect("start io");
    sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.observe(&p).expect("primary").semi_sync.source_active, Some(true));
    assert_eq!(sim.app_write(1, &p, 10).await.expect("written").semi_sync, SemiSyncOutcome::Acknowledged);
}

#[tokio::test(start_paused = true)]
async fn no_loss_semi_sync_never_falls_back_and_read_only_waits_for_the_waiting_commit() {
    let sim = world(6);
    let [p] = <[InstanceAddr; 1]>::try_from(cluster(&sim, 0, true, |_| {})).expect("one");
    let info = conn(&sim, &p).server_info().await.expect("info");
    let sql = info.semi_sync_sql(true, true);
    conn(&sim, &p).execute(&sql, Duration::from_secs(1)).await.expect("no-loss mode");
    let o = sim.observe(&p).expect("obs");
    assert_eq!((o.semi_sync.source_active, o.semi_sync.source_clients), (Some(true), Some(0)));

    let sim2 = sim.clone();
    let p2 = p.clone();
    let write = tokio::spawn(async move { sim2.app_write(1, &p2, 1).await });
    sleep(Duration::from_secs(60)).await;
    assert!(!write.is_finished(), "no replica: the commit waits (for ~49 days)");
    assert_eq!(sim.observe(&p).expect("obs").gtid.executed().to_string(), "", "AFTER_SYNC: not committed");
    // primus' stranded-acknowledgement check lists it (waiting 2 s or more).
    let waiters = conn(&sim, &p)
        .query_rows(primus_mysql::flavor::SEMI_SYNC_WAITERS_SQL, Duration::from_secs(1))
        .await
        .expect("waiters");
    let app = conn(&sim, &p).query_rows(sql::CLIENT_IDS_SQL, Duration::from_secs(1)).await.expect("ids");
    assert_eq!(waiters, app, "the waiting application session, by id");

    // The global read lock of read_only waits for the commit in progress: primus' fence
    // (read_only first) times out...
    let fence = conn(&sim, &p);
    match fence.execute(&info.set_read_only_sql(true), Duration::from_secs(2)).await {
        Err(ProbeError::Timeout { .. }) => {}
        other => panic!("read_only should wait for the commit: {other:?}"),
    }
    assert!(!sim.observe(&p).expect("obs").read_only);
    // ...until the waiting client is killed: its commit completes (the client sees the
    // connection lost) and read_only applies.
    let rows = conn(&sim, &p).query_rows(sql::CLIENT_IDS_SQL, Duration::from_secs(1)).await.expect("ids");
    assert_eq!(rows.len(), 1, "only the application's connection: {rows:?}");
    let id = rows[0].text(&["ID"]).expect("id").to_string();
    exec(&sim, &p, &[&format!("KILL CONNECTION {id}")]).await.expect("kill");
    assert_eq!(write.await.expect("task"), Err(AppError::ConnectionLost));
    let o = sim.observe(&p).expect("obs");
    assert!(o.read_only, "read_only applied once the commit ended");
    assert_eq!(o.gtid.executed().count(), 1, "the killed commit was committed");
    assert_eq!(sim.rows(&p).expect("rows").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn change_master_current_pos_and_start_slave_repoints_a_former_primary() {
    let sim = world(7);
    let [a, b] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    for row in 1..=3 {
        sim.app_write(1, &a, row).await.expect("written");
    }
    sleep(Duration::from_millis(100)).await;
    let info = conn(&sim, &b).server_info().await.expect("info");

    // Promote b, demote a (what a failover's steps send).
    exec(&sim, &a, &["SET GLOBAL read_only = ON"]).await.expect("fence");
    let mut promote = vec![info.stop_replica_sql(), info.reset_replica_sql(ResetReplica::All)];
    promote.extend(info.set_read_only_sql(false));
    conn(&sim, &b).execute(&promote, Duration::from_secs(1)).await.expect("promote");
    assert!(sim.observe(&b).expect("b").replication.is_empty());
    for row in 4..=5 {
        sim.app_write(1, &b, row).await.expect("written on the new primary");
    }
    assert_eq!(maria_pos(&sim.observe(&b).expect("b")).0, "0-2-5");

    // `repoint_sql` of a former primary: CHANGE MASTER ... MASTER_USE_GTID=current_pos.
    let to = ChangeSource {
        host: b.host(),
        port: b.port(),
        user: "repl",
        password: "pw",
        heartbeat_period: Some(Duration::from_millis(500)),
        connect_retry_s: Some(1),
        tls: Default::default(),
    };
    let change = info.change_source_sql(&to).replace("MASTER_USE_GTID=slave_pos", "MASTER_USE_GTID=current_pos");
    let mut sql = info.set_read_only_sql(true);
    sql.extend([change, info.start_replica_sql()]);
    conn(&sim, &a).execute(&sql, Duration::from_secs(1)).await.expect("repoint");
    sleep(Duration::from_millis(100)).await;
    let o = conn(&sim, &a).probe().await.expect("probe");
    let row = &o.replication[0];
    assert_eq!((row.source_host.as_str(), row.io_running, row.sql_running), ("db2", IoThreadState::Yes, true));
    assert_eq!(row.using_gtid, Some(UsingGtid::CurrentPos));
    assert_eq!((row.last_io_error.as_ref(), row.last_sql_error.as_ref()), (None, None));
    assert_eq!(maria_pos(&o).0, "0-2-5");
    assert_eq!(sim.rows(&a).expect("rows").len(), 5);

    // With slave_pos (empty on a former primary) it would fetch b's whole binlog and stop
    // on the first transaction it already has.
    let c = sim.clone();
    c.add_server(ServerConfig::mariadb(addr(3), 3)).expect("third");
    c.clone_data(&a, &addr(3)).expect("restore a backup of a");
    let x = addr(3);
    exec(&sim, &x, &["SET GLOBAL gtid_slave_pos = ''"]).await.expect("forget the position");
    let plain = info.change_source_sql(&to);
    exec(&sim, &x, &[&plain, "START SLAVE"]).await.expect("repoint with slave_pos");
    sleep(Duration::from_millis(100)).await;
    let row = sim.observe(&x).expect("x").replication[0].clone();
    assert!(!row.sql_running, "{row:?}");
    assert_eq!(row.last_sql_error.map(|e| e.errno), Some(1062), "the first row is there already");
}

#[tokio::test(start_paused = true)]
async fn a_divergent_former_primary_is_refused_by_gtid_and_rejoins_after_discarding() {
    let sim = world(8);
    let [a, b] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    for row in 1..=3 {
        sim.app_write(1, &a, row).await.expect("written");
    }
    sleep(Duration::from_millis(100)).await;
    // b loses a; a takes one more write that b never gets.
    let cut = (Peer::Server(b.clone()), a.clone());
    sim.set_links(Arc::new(move |from, to| if (from.clone(), to.clone()) == cut { Link::Silent } else { Link::Up }));
    sim.app_write(1, &a, 100).await.expect("divergent write");
    exec(&sim, &b, &["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF"]).await.expect("promote");
    sim.app_write(1, &b, 4).await.expect("new primary's write");
    sim.set_links(Arc::new(|_, _| Link::Up));

    let to = ChangeSource {
        host: b.host(),
        port: 3306,
        user: "repl",
        password: "pw",
        heartbeat_period: None,
        connect_retry_s: None,
        tls: Default::default(),
    };
    let info = conn(&sim, &a).server_info().await.expect("info");
    let change = info.change_source_sql(&to).replace("slave_pos", "current_pos");
    exec(&sim, &a, &["SET GLOBAL read_only = ON", &change, "START SLAVE"]).await.expect("repoint");
    sleep(Duration::from_millis(100)).await;
    let row = sim.observe(&a).expect("a").replication[0].clone();
    assert_eq!(row.io_running, IoThreadState::No);
    let e = row.last_io_error.expect("error 1236");
    assert_eq!(e.errno, 1236);
    assert!(e.message.contains("0-1-4, which is not in the master's binlog"), "{}", e.message);

    // rejoin --discard-divergent: reset the binlog, start from the promotion point.
    exec(
        &sim,
        &a,
        &[
            "STOP SLAVE",
            "RESET MASTER",
            "SET GLOBAL gtid_slave_pos = '0-1-3'",
            &info.change_source_sql(&to),
            "START SLAVE",
        ],
    )
    .await
    .expect("discard");
    sleep(Duration::from_millis(100)).await;
    let o = sim.observe(&a).expect("a");
    assert_eq!(o.replication[0].io_running, IoThreadState::Yes);
    assert_eq!(o.replication[0].last_sql_error, None);
    assert_eq!(maria_pos(&o), ("0-2-4".into(), "0-2-4".into(), "0-2-4".into()));
    assert!(sim.rows(&a).expect("rows").contains(&4));
}

#[tokio::test(start_paused = true)]
async fn read_only_stops_app_writes_but_not_the_coordinators_privileged_session() {
    let sim = world(9);
    // MariaDB: the coordinator holds READ ONLY ADMIN.
    sim.add_server(ServerConfig::mariadb(addr(1), 1)).expect("maria");
    assert!(matches!(sim.app_write(1, &addr(1), 1).await, Err(AppError::ReadOnly(_))));
    let c = conn(&sim, &addr(1));
    assert_eq!(c.write_heartbeat("c1", 1, 1000, 1).await, Ok(true));
    let unprivileged = sim.connector(Peer::Coordinator(2), probe_config()).unprivileged().conn(&addr(1));
    assert!(matches!(unprivileged.write_heartbeat("c1", 2, 2000, 2).await, Err(ProbeError::ReadOnly { .. })));

    // MySQL: SUPER writes through read_only, not through super_read_only.
    sim.add_server(ServerConfig { read_only_at_start: false, ..ServerConfig::mysql(addr(2), 2) }).expect("mysql");
    let m = conn(&sim, &addr(2));
    sim.app_write(1, &addr(2), 1).await.expect("writable");
    m.execute(&["SET GLOBAL read_only = ON".into()], Duration::from_secs(1)).await.expect("read_only");
    assert!(matches!(sim.app_write(1, &addr(2), 2).await, Err(AppError::ReadOnly(_))));
    assert_eq!(m.write_heartbeat("c1", 1, 1000, 1).await, Ok(true));
    m.execute(&["SET GLOBAL super_read_only = ON".into()], Duration::from_secs(1)).await.expect("super_read_only");
    match m.write_heartbeat("c1", 1, 2000, 1).await {
        Err(ProbeError::ReadOnly { message }) => assert!(message.contains("--super-read-only"), "{message}"),
        other => panic!("{other:?}"),
    }
    // read_only = OFF turns super_read_only off too.
    m.execute(&["SET GLOBAL read_only = OFF".into()], Duration::from_secs(1)).await.expect("writable");
    let o = sim.observe(&addr(2)).expect("obs");
    assert_eq!((o.read_only, o.super_read_only), (false, Some(false)));
}

#[tokio::test(start_paused = true)]
async fn restart_restores_read_only_from_config_and_restarts_replication_unless_skipped() {
    let sim = world(10);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    exec(&sim, &r, &["SET GLOBAL read_only = OFF"]).await.expect("writable");
    sim.app_write(1, &p, 1).await.expect("written");
    sleep(Duration::from_millis(100)).await;
    sim.restart(&r).expect("restart");
    sleep(Duration::from_millis(100)).await;
    let o = sim.observe(&r).expect("obs");
    assert!(o.read_only, "read_only_at_start");
    assert_eq!(o.replication[0].io_running, IoThreadState::Yes);
    assert_eq!(maria_pos(&o).0, "0-1-1", "crash recovery keeps what was committed");

    sim.crash(&r).expect("crash");
    sim.app_write(1, &p, 2).await.expect("written");
    let cfg_skip = {
        let mut w = sim.lock();
        let s = w.server_mut(&r).expect("r");
        s.cfg.skip_slave_start = true;
        s.cfg.read_only_at_start = false;
        s.cfg.clone()
    };
    assert!(cfg_skip.skip_slave_start);
    sim.start(&r).expect("start");
    sleep(Duration::from_millis(100)).await;
    let o = sim.observe(&r).expect("obs");
    assert!(!o.read_only);
    assert_eq!((o.replication[0].io_running, o.replication[0].sql_running), (IoThreadState::No, false));
    assert_eq!(maria_pos(&o).0, "0-1-1");
    exec(&sim, &r, &["START SLAVE"]).await.expect("start slave");
    sleep(Duration::from_millis(100)).await;
    assert_eq!(maria_pos(&sim.observe(&r).expect("obs")).0, "0-1-2");
}

#[tokio::test(start_paused = true)]
async fn master_gtid_wait_returns_when_applied_or_after_its_timeout() {
    let sim = world(11);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    sim.set_timing(&r, ReplicaTiming { apply_delay: Duration::from_secs(2), ..Default::default() }).expect("timing");
    sim.app_write(1, &p, 1).await.expect("written");
    let c = conn(&sim, &r);
    let started = Instant::now();
    c.execute(&["DO MASTER_GTID_WAIT('0-1-1', 10)".into()], Duration::from_secs(12)).await.expect("waited");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_millis(2100), "{took:?}");
    assert_eq!(sim.executed(&r).expect("executed").to_string(), "0-1-1");

    // Not reached: `DO` returns after the timeout without error; the caller checks the GTIDs.
    let started = Instant::now();
    c.execute(&["DO MASTER_GTID_WAIT('0-1-5', 1)".into()], Duration::from_secs(3)).await.expect("timed out quietly");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1100), "{took:?}");
    // The statement's own timeout longer than the caller's: the caller times out.
    match c.execute(&["DO MASTER_GTID_WAIT('0-1-5', 30)".into()], Duration::from_secs(3)).await {
        Err(ProbeError::Timeout { stage: ProbeStage::Execute, .. }) => {}
        other => panic!("{other:?}"),
    }
    match c.execute(&["DO WAIT_FOR_EXECUTED_GTID_SET('x:1', 1)".into()], Duration::from_secs(3)).await {
        Err(ProbeError::QueryFailed { code: Some(1305), .. }) => {}
        other => panic!("MySQL's function does not exist on MariaDB: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn wait_for_executed_gtid_set_returns_when_applied() {
    let sim = world(12);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, true, |_| {})).expect("two");
    sim.set_timing(&r, ReplicaTiming { apply_delay: Duration::from_secs(1), ..Default::default() }).expect("timing");
    let ack = sim.app_write(1, &p, 1).await.expect("written");
    let gtid = ack.gtid.expect("gtid").to_string();
    let started = Instant::now();
    let wait = format!("DO WAIT_FOR_EXECUTED_GTID_SET('{gtid}', 5)");
    conn(&sim, &r).execute(&[wait], Duration::from_secs(7)).await.expect("waited");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1100), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_or_wrong_dialect_sql_fails_loudly() {
    let sim = world(13);
    sim.add_server(ServerConfig::mariadb(addr(1), 1)).expect("maria");
    sim.add_server(ServerConfig { version: "8.0.21".into(), ..ServerConfig::mysql(addr(2), 2) }).expect("mysql 8.0.21");
    sim.add_server(ServerConfig { version: "8.4.0".into(), ..ServerConfig::mysql(addr(3), 3) }).expect("mysql 8.4");
    match exec(&sim, &addr(1), &["FLUSH BINARY LOGS"]).await {
        Err(ProbeError::QueryFailed { code: None, message, .. }) => {
            assert!(message.contains("does not model") && message.contains("FLUSH BINARY LOGS"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match conn(&sim, &addr(1)).query_rows("SELECT 1", Duration::from_secs(1)).await {
        Err(ProbeError::QueryFailed { code: None, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sim.unmodelled_statements(),
        [(addr(1), "FLUSH BINARY LOGS".to_string()), (addr(1), "SELECT 1".to_string())]
    );
    let syntax = |r: Result<(), ProbeError>| matches!(r, Err(ProbeError::QueryFailed { code: Some(1064), .. }));
    assert!(syntax(exec(&sim, &addr(2), &["STOP REPLICA"]).await), "REPLICA needs 8.0.22");
    assert!(syntax(exec(&sim, &addr(3), &["STOP SLAVE"]).await), "8.4 removed SLAVE");
    assert!(syntax(exec(&sim, &addr(3), &["RESET MASTER"]).await), "8.4 removed RESET MASTER");
    assert!(syntax(exec(&sim, &addr(1), &["CHANGE REPLICATION SOURCE TO SOURCE_HOST='db2'"]).await));
    match exec(&sim, &addr(2), &["SET GLOBAL rpl_semi_sync_source_enabled = ON"]).await {
        Err(ProbeError::QueryFailed { code: Some(1193), .. }) => {}
        other => panic!("8.0.21 has the master/slave plugin: {other:?}"),
    }
    assert_eq!(sim.unmodelled_statements().len(), 2, "dialect errors are server errors, not unmodelled");
}

/// Every statement `primus_mysql::flavor` (and the failover engine, monitor, heartbeat and
/// fencing agent) can send is understood by every flavor/version it is built for.
#[tokio::test(start_paused = true)]
async fn every_statement_primus_builds_is_understood_by_its_flavor_and_version() {
    let versions = [
        "10.11.6-MariaDB-log",
        "10.6.16-MariaDB",
        "10.4.32-MariaDB",
        "11.4.2-MariaDB",
        "5.7.44-log",
        "8.0.21",
        "8.0.22",
        "8.0.23",
        "8.0.26",
        "8.0.36",
        "8.4.0",
    ];
    let sim = world(14);
    for (i, v) in versions.iter().enumerate() {
        let n = u16::try_from(i).expect("few") * 2 + 1;
        let (x, y) = (addr(n), addr(n + 1));
        let base = |a: InstanceAddr, id: u16| {
            let c = if v.contains("MariaDB") {
                ServerConfig::mariadb(a, u32::from(id))
            } else {
                ServerConfig::mysql(a, u32::from(id))
            };
            ServerConfig { version: v.to_string(), read_only_at_start: false, ..c }
        };
        sim.add_server(base(x.clone(), n)).expect("server");
        sim.add_server(base(y.clone(), n + 1)).expect("source");
        let c = conn(&sim, &x);
        let info = c.server_info().await.expect("info");
        assert_eq!(info.version_string, *v);
        let run = |sql: Vec<String>| {
            let c = &c;
            async move {
                for s in &sql {
                    if let Err(e) = c.execute(std::slice::from_ref(s), Duration::from_secs(5)).await {
                        panic!("{v}: {s}: {e}");
                    }
                }
            }
        };
        let to = ChangeSource {
            host: y.host(),
            port: y.port(),
            user: "repl",
            password: "p'w",
            heartbeat_period: Some(Duration::from_millis(500)),
            connect_retry_s: Some(1),
            tls: Default::default(),
        };
        run(vec![flavor::SESSION_SQL_MODE_FIX.to_string()]).await;
        for on in [true, false] {
            run(info.set_read_only_sql(on)).await;
            for primary in [true, false] {
                run(info.semi_sync_sql(on, primary)).await;
            }
        }
        run(vec![info.change_source_sql(&to), info.start_replica_sql()]).await;
        run(info.restart_io_thread_sql()).await;
        run(vec![info.stop_replica_sql(), info.reset_replica_sql(ResetReplica::KeepConnection)]).await;
        let no_options = ChangeSource { heartbeat_period: None, connect_retry_s: None, ..to.clone() };
        run(vec![info.change_source_sql(&no_options), info.start_replica_sql(), info.stop_replica_sql()]).await;
        run(vec![info.reset_replica_sql(ResetReplica::All)]).await;
        for q in [info.replica_status_sql(), info.replica_hosts_sql(), info.binlog_dump_count_sql(), flavor::DETECT_SQL]
        {
            if let Err(e) = c.query_rows(q, Duration::from_secs(1)).await {
                panic!("{v}: {q}: {e}");
            }
        }
        // Monitor watch, failover waits, kills, heartbeat, agent.
        run(vec!["DO SLEEP(1)".to_string()]).await;
        let wait = match info.flavor {
            Flavor::MariaDb => format!("DO MASTER_GTID_WAIT({}, 1)", flavor::quote_string("0-1-0")),
            Flavor::MySql => format!("DO WAIT_FOR_EXECUTED_GTID_SET({}, 1)", flavor::quote_string("")),
        };
        run(vec![wait]).await;
        let other = conn(&sim, &x);
        other.server_info().await.expect("second connection");
        let ids = c.query_rows(sql::CLIENT_IDS_SQL, Duration::from_secs(1)).await.expect("kill query");
        assert_eq!(ids.len(), 1, "{v}: the other connection only: {ids:?}");
        run(vec![format!("KILL CONNECTION {}", ids[0].text(&["ID"]).expect("id"))]).await;
        assert_eq!(c.write_heartbeat("c", 1, 1, 1).await, Ok(true), "{v}");
        let table = primus_mysql::HeartbeatTable::default();
        c.query_rows(&table.select_sql(), Duration::from_secs(1)).await.expect("heartbeat select");
        let mut agent_selects = vec!["SELECT @@global.pid_file"];
        agent_selects.push(if info.has_super_read_only() {
            "SELECT @@global.read_only, @@global.super_read_only"
        } else {
            "SELECT @@global.read_only, 0"
        });
        for q in agent_selects {
            c.query_rows(q, Duration::from_secs(1)).await.unwrap_or_else(|e| panic!("{v}: {q}: {e}"));
        }
        if info.is_mariadb() {
            // rejoin --discard-divergent
            run(vec!["RESET MASTER".into(), format!("SET GLOBAL gtid_slave_pos = {}", flavor::quote_string("0-1-17"))])
                .await;
        }
    }
    assert_eq!(sim.unmodelled_statements(), []);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_writes_create_the_table_once_and_never_go_back_an_epoch() {
    let sim = world(15);
    let [p, r] = <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |_| {})).expect("two");
    let c = conn(&sim, &p);
    assert_eq!(c.write_heartbeat("c1", 5, 1000, 1).await, Ok(true));
    assert_eq!(maria_pos(&sim.observe(&p).expect("obs")).0, "0-1-3", "CREATE DATABASE, CREATE TABLE, upsert");
    assert_eq!(c.write_heartbeat("c1", 4, 2000, 2).await, Ok(false), "older epoch");
    assert_eq!(c.write_heartbeat("c1", 5, 1000, 1).await, Ok(false), "same row");
    assert_eq!(maria_pos(&sim.observe(&p).expect("obs")).0, "0-1-3", "unchanged rows are not binlogged");
    assert_eq!(c.write_heartbeat("c1", 6, 3000, 2).await, Ok(true));
    sleep(Duration::from_millis(100)).await;
    let o = conn(&sim, &r).probe().await.expect("replica probe");
    let hb = o.heartbeat_of("c1").expect("replicated");
    assert_eq!((hb.epoch, hb.ts_ms, hb.coordinator), (6, 3000, 2));
}

#[tokio::test(start_paused = true)]
async fn silent_replication_link_stops_heartbeats_then_the_replica_reconnects_after_slave_net_timeout() {
    let sim = world(16);
    let [p, r] =
        <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |c| c.slave_net_timeout = Duration::from_secs(2)))
            .expect("two");
    sleep(Duration::from_secs(1)).await;
    let cut = r.clone();
    sim.set_links(Arc::new(move |from, _| if *from == Peer::Server(cut.clone()) { Link::Silent } else { Link::Up }));
    sim.links_changed();
    let beats = |o: &Observation| o.replication[0].received_heartbeats.expect("count");
    let at_cut = beats(&sim.observe(&r).expect("obs"));
    sim.app_write(1, &p, 1).await.expect("written");
    sleep(Duration::from_millis(1500)).await;
    let o = sim.observe(&r).expect("obs");
    assert_eq!(o.replication[0].io_running, IoThreadState::Yes, "does not know yet");
    assert_eq!(beats(&o), at_cut, "but hears nothing");
    sleep(Duration::from_secs(3)).await;
    let row = sim.observe(&r).expect("obs").replication[0].clone();
    assert_eq!(row.io_running, IoThreadState::Connecting);
    assert_eq!(row.last_io_error.map(|e| e.errno), Some(2003));
    sim.set_links(Arc::new(|_, _| Link::Up));
    sim.links_changed();
    sleep(Duration::from_secs(3)).await;
    let o = sim.observe(&r).expect("obs");
    assert_eq!(o.replication[0].io_running, IoThreadState::Yes);
    assert_eq!(maria_pos(&o).0, "0-1-1", "caught up");
}

#[tokio::test(start_paused = true)]
async fn a_paused_primary_freezes_replication_until_replicas_give_up_after_slave_net_timeout() {
    let sim = world(20);
    let [p, r] =
        <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |c| c.slave_net_timeout = Duration::from_secs(3)))
            .expect("two");
    sleep(Duration::from_secs(1)).await;
    let beats = |o: &Observation| o.replication[0].received_heartbeats.expect("count");
    sim.pause(&p).expect("pause");
    let at_pause = beats(&sim.observe(&r).expect("obs"));
    sleep(Duration::from_secs(2)).await;
    let o = sim.observe(&r).expect("obs");
    assert_eq!((o.replication[0].io_running, beats(&o)), (IoThreadState::Yes, at_pause), "connected, silent");
    sleep(Duration::from_secs(5)).await;
    let row = sim.observe(&r).expect("obs").replication[0].clone();
    assert_eq!(row.io_running, IoThreadState::Connecting, "gave up after slave_net_timeout");
    assert_eq!(row.last_io_error.map(|e| e.errno), Some(2013), "the handshake never came");
    sim.resume(&p).expect("resume");
    sleep(Duration::from_millis(1100)).await;
    let o = sim.observe(&r).expect("obs");
    assert_eq!(o.replication[0].io_running, IoThreadState::Yes);
    assert!(beats(&o) > at_pause);
}

#[tokio::test(start_paused = true)]
async fn mysql_auto_position_refuses_a_replica_that_lacks_purged_gtids() {
    let sim = world(21);
    let [p] = <[InstanceAddr; 1]>::try_from(cluster(&sim, 0, true, |_| {})).expect("one");
    for row in 1..=3 {
        sim.app_write(1, &p, row).await.expect("written");
    }
    // s: restored from a backup of p (p's GTIDs are gtid_purged there), then written to.
    sim.add_server(ServerConfig { read_only_at_start: false, ..ServerConfig::mysql(addr(2), 2) }).expect("s");
    sim.clone_data(&p, &addr(2)).expect("backup");
    sim.app_write(1, &addr(2), 4).await.expect("written on s");
    let GtidState::MySql { executed, purged, .. } = sim.observe(&addr(2)).expect("s").gtid else { panic!("MySQL") };
    assert_eq!((executed.count(), purged.count()), (4, 3));
    // An empty replica cannot get the purged ones; a restored one can.
    for (n, restored) in [(3, false), (4, true)] {
        sim.add_server(ServerConfig::mysql(addr(n), u32::from(n))).expect("replica");
        if restored {
            sim.clone_data(&p, &addr(n)).expect("backup");
        }
        sim.replicate(&addr(n), &addr(2), &ReplicationSetup::default()).expect("replicate");
    }
    sleep(Duration::from_millis(100)).await;
    let row = sim.observe(&addr(3)).expect("empty").replication[0].clone();
    assert_eq!(row.io_running, IoThreadState::No);
    let e = row.last_io_error.expect("1236");
    assert!(e.errno == 1236 && e.message.contains("purged required binary logs"), "{e:?}");
    assert_eq!(sim.rows(&addr(4)).expect("rows").len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_promoted_replica_without_log_slave_updates_serves_replicas_from_its_own_slave_pos() {
    let sim = world(22);
    let addrs = cluster(&sim, 2, false, |c| c.log_slave_updates = c.server_id != 2);
    for row in 1..=3 {
        sim.app_write(1, &addrs[0], row).await.expect("written");
    }
    sleep(Duration::from_millis(100)).await;
    let (r1, r2) = (&addrs[1], &addrs[2]);
    let o = sim.observe(r1).expect("r1");
    assert_eq!(maria_pos(&o), ("0-1-3".into(), "".into(), "0-1-3".into()), "applied, not binlogged");
    sim.crash(&addrs[0]).expect("primary lost");
    exec(&sim, r1, &["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF"]).await.expect("promote");
    let ack = sim.app_write(1, r1, 4).await.expect("written on the new primary");
    assert_eq!(ack.gtid.map(|g| g.to_string()).as_deref(), Some("0-2-4"), "the seq counter went on");
    let change = format!("CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT=3306, MASTER_USE_GTID=slave_pos", r1.host());
    exec(&sim, r2, &["STOP SLAVE", &change, "START SLAVE"]).await.expect("repoint");
    sleep(Duration::from_millis(100)).await;
    let o = sim.observe(r2).expect("r2");
    assert_eq!(o.replication[0].last_io_error, None, "0-1-3 is r1's own gtid_slave_pos");
    assert_eq!(maria_pos(&o).0, "0-2-4");
}

#[tokio::test(start_paused = true)]
async fn a_coordinator_cut_off_from_a_server_times_out_while_another_reaches_it() {
    let sim = world(17);
    let [p] = <[InstanceAddr; 1]>::try_from(cluster(&sim, 0, false, |_| {})).expect("one");
    sim.set_links(Arc::new(|from, _| if *from == Peer::Coordinator(1) { Link::Silent } else { Link::Up }));
    let cut = sim.connector(Peer::Coordinator(1), probe_config());
    let fine = sim.connector(Peer::Coordinator(2), probe_config());
    let started = Instant::now();
    match cut.connect(&p).probe().await {
        Err(ProbeError::Timeout { stage: ProbeStage::Connect, after_ms: 2000 }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert!(started.elapsed() <= cut.probe_deadline());
    fine.connect(&p).probe().await.expect("reachable from coordinator 2");
    sim.set_links(Arc::new(|from, _| if *from == Peer::Coordinator(1) { Link::Refused } else { Link::Up }));
    assert!(matches!(cut.connect(&p).probe().await, Err(ProbeError::Unreachable { .. })));
}

#[tokio::test(start_paused = true)]
async fn the_watch_sleep_fails_at_once_when_the_server_crashes_and_hangs_while_it_is_paused() {
    let sim = world(18);
    let [p] = <[InstanceAddr; 1]>::try_from(cluster(&sim, 0, false, |_| {})).expect("one");
    let watch = || {
        let c = conn(&sim, &p);
        tokio::spawn(async move {
            let started = Instant::now();
            let r = c.execute(&["DO SLEEP(20)".into()], Duration::from_secs(25)).await;
            (r, started.elapsed())
        })
    };
    let (r, took) = watch().await.expect("task");
    assert_eq!((r, took), (Ok(()), Duration::from_millis(20_003)), "20 s and 3 round trips (connect, version, sleep)");

    let w = watch();
    sleep(Duration::from_secs(1)).await;
    sim.crash(&p).expect("crash");
    let (r, took) = w.await.expect("task");
    assert!(matches!(r, Err(ProbeError::ConnectionLost { .. })), "{r:?}");
    assert!(took < Duration::from_millis(1010), "{took:?}");

    sim.start(&p).expect("start");
    let w = watch();
    sleep(Duration::from_secs(1)).await;
    sim.pause(&p).expect("pause");
    let (r, took) = w.await.expect("task");
    assert!(matches!(r, Err(ProbeError::Timeout { .. })), "{r:?}");
    assert_eq!(took, Duration::from_millis(25_002), "connect, version, then the 25 s statement timeout");
}

#[tokio::test(start_paused = true)]
async fn the_kill_query_lists_client_connections_only_and_kill_ends_them() {
    let sim = world(19);
    let [p, _r] =
        <[InstanceAddr; 2]>::try_from(cluster(&sim, 1, false, |c| c.read_only_at_start = false)).expect("two");
    sim.app_write(7, &p, 1).await.expect("app connection");
    let other = sim.connector(Peer::Coordinator(2), probe_config()).conn(&p);
    other.probe().await.expect("another coordinator");
    let me = conn(&sim, &p);
    let rows = me.query_rows(sql::CLIENT_IDS_SQL, Duration::from_secs(1)).await.expect("ids");
    let ids: Vec<String> = rows.iter().filter_map(|r| r.text(&["ID"]).map(str::to_string)).collect();
    assert_eq!(ids.len(), 2, "app and the other coordinator, not me, not the dump thread: {ids:?}");
    let list = sim.processlist(&p);
    assert_eq!(list.len(), 4, "{list:?}");
    assert!(list.iter().any(|r| r.command == "Binlog Dump GTID" && r.user == "repl"));
    for id in &ids {
        me.execute(&[format!("KILL CONNECTION {id}")], Duration::from_secs(1)).await.expect("killed");
    }
    assert!(matches!(
        me.execute(&[format!("KILL CONNECTION {}", ids[0])], Duration::from_secs(1)).await,
        Err(ProbeError::QueryFailed { code: Some(1094), .. })
    ));
    // Their clients reconnect transparently (the Prober does; the app's pool does).
    other.probe().await.expect("reconnected");
    sim.app_write(7, &p, 2).await.expect("reconnected");
    assert_eq!(sim.processlist(&p).len(), 4);
}

/// Runs a jittery scenario and returns what was observed, in order.
fn scenario(seed: u64) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
    rt.block_on(async move {
        let sim = world(seed);
        let jitter = |c: &mut ServerConfig| {
            c.timing = ReplicaTiming {
                io_delay: Duration::from_millis(5),
                io_jitter: Duration::from_millis(40),
                apply_delay: Duration::from_millis(10),
                apply_jitter: Duration::from_millis(300),
                apply_cost: Duration::from_millis(2),
                ..ReplicaTiming::default()
            };
            c.semi_sync_source_at_start = c.server_id == 1;
            c.semi_sync_replica_at_start = true;
        };
        let addrs = cluster(&sim, 2, true, jitter);
        let mut seen = Vec::new();
        let c = sim.connector(Peer::Coordinator(1), probe_config());
        for round in 0..20u64 {
            let ack = sim.app_write(1, &addrs[0], round).await;
            seen.push(format!("{ack:?}"));
            if round == 7 {
                sim.pause(&addrs[1]).expect("pause");
            }
            if round == 12 {
                sim.resume(&addrs[1]).expect("resume");
                sim.crash(&addrs[2]).expect("crash");
            }
            if round == 15 {
                sim.start(&addrs[2]).expect("start");
            }
            sleep(Duration::from_millis(37)).await;
            for a in &addrs {
                seen.push(format!("{:?}", c.connect(a).probe().await));
            }
        }
        seen
    })
}

#[test]
fn the_same_seed_and_the_same_calls_give_the_same_observations() {
    let a = scenario(42);
    let b = scenario(42);
    assert_eq!(a.len(), 20 * 4);
    assert_eq!(a, b);
    assert!(a.iter().any(|s| s.contains("Timeout")), "the paused replica timed out");
    // The seed matters: MySQL server UUIDs (and delays) are drawn from it.
    assert_ne!(a, scenario(43));
}

#[tokio::test(start_paused = true)]
async fn every_process_exit_is_counted_at_once_even_a_crash_and_restart_within_one_instant() {
    let sim = world(7);
    let servers = cluster(&sim, 1, false, |_| {});
    let mut exits = sim.exits(&servers[0]).expect("known server");
    assert!(!exits.has_changed().expect("world alive"), "no exit yet");
    // A kill -9 followed by an immediate start: a 20 ms poll of the process state missed
    // this; a pidfd (the real watchdog) sees the exit.
    sim.restart(&servers[0]).expect("restart");
    assert!(exits.has_changed().expect("world alive"), "the exit of a restart is seen");
    assert_eq!(*exits.borrow_and_update(), 1);
    sim.crash(&servers[0]).expect("crash");
    assert_eq!(*exits.borrow_and_update(), 2);
    // Crashing a server already down is refused and is no exit.
    assert!(sim.crash(&servers[0]).is_err());
    assert!(!exits.has_changed().expect("world alive"));
    sim.start(&servers[0]).expect("start");
    assert!(!exits.has_changed().expect("world alive"), "a start is not an exit");
    assert!(sim.exits(&addr(9)).is_err(), "an unknown server has no exits to watch");
}

#[tokio::test(start_paused = true)]
async fn writability_of_many_servers_at_once_matches_each_read_alone() {
    let sim = world(8);
    let servers = cluster(&sim, 2, false, |_| {});
    exec(&sim, &servers[0], &["SET GLOBAL read_only = OFF"]).await.expect("primary writable");
    let mut asked = servers.clone();
    asked.push(addr(9));
    let alone: Vec<bool> = asked.iter().map(|a| sim.writable(a).unwrap_or(false)).collect();
    assert_eq!(sim.writable_all(&asked), alone);
    assert_eq!(alone, [true, false, false, false]);
    sim.crash(&servers[0]).expect("crash");
    assert_eq!(sim.writable_all(&asked), [false, false, false, false], "a crashed server takes no writes");
}

//! Connections: [`SimConnector`]/[`SimConn`] implement primus' `Connector`/`MysqlConn` with
//! the behaviour of `primus_mysql::Prober`, and the application client's writes.
//!
//! A [`SimConn`] behaves like a `Prober` towards its caller:
//!
//! * one session (connection) at a time, opened on first use: TCP + handshake bounded by
//!   `connect_timeout`, then `SELECT @@version, @@version_comment` bounded by `query_timeout`;
//!   calls on one `SimConn` are serialised;
//! * errors are the `Prober`'s: `Unreachable` (refused, unknown host, server down),
//!   `Timeout { stage, after_ms }` (silent link, paused server), `ConnectionLost` (reset,
//!   killed, crashed while waiting), `QueryFailed`, `ReadOnly` (1290/1836 from `execute` or
//!   the heartbeat write);
//! * a timeout or a lost connection drops the session; a session found dead when reused (the
//!   server restarted, or killed it) is replaced at once and the call retried once — so a
//!   crashed server answers `Unreachable`;
//! * `write_heartbeat` runs `heartbeat::write_to`'s statements: the upsert, and on "unknown
//!   database/table" the two `CREATE ... IF NOT EXISTS` and the upsert again, all within one
//!   `query_timeout`.
//!
//! Each round trip costs `WorldConfig::client_rtt`; the request is lost when the link is
//! silent (the caller times out, the statement never runs) and the answer is lost when the
//! link went silent meanwhile (the statement ran, the caller times out). A statement that
//! reached a paused server runs when it resumes, whether or not its caller still waits.

use super::server::{Identity, SessionKey};
use super::world::{Output, Request, Rt};
use super::{AppAck, AppError, Link, Peer, SimMysql, SqlError};
use primus_mysql::flavor::{self, ServerInfo};
use primus_mysql::heartbeat::{ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE, ER_OPTION_PREVENTS_STATEMENT, ER_READ_ONLY_MODE};
use primus_mysql::{Connector, MysqlConn, Observation, ProbeConfig, ProbeError, ProbeStage, StatusRow};
use primus_types::InstanceAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn wait_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}

/// One request and its answer between `from` and server `addr`, bounded by `deadline`.
pub(crate) async fn round_trip(
    sim: &SimMysql,
    from: &Peer,
    addr: &InstanceAddr,
    session: Option<SessionKey>,
    ident: &Identity,
    req: Request,
    deadline: Option<Instant>,
) -> Result<Output, Rt> {
    let local = matches!(from, Peer::Local(_));
    let rtt = if local { Duration::ZERO } else { sim.rtt() };
    if !rtt.is_zero() {
        let arrive = Instant::now() + rtt;
        if deadline.is_some_and(|d| d <= arrive) {
            wait_until(deadline).await;
            return Err(Rt::Timeout);
        }
        tokio::time::sleep_until(arrive).await;
    }
    let rx = {
        let mut w = sim.lock();
        let now = Instant::now();
        w.advance_if_needed(now);
        let link = if local { Link::Up } else { w.link(from, addr) };
        match link {
            Link::Refused => {
                return Err(Rt::Refused(format!("Can't connect to server on '{addr}' (111 \"Connection refused\")")))
            }
            Link::Silent => None,
            Link::Up => {
                w.settled_at = None;
                Some(w.submit(addr, session, ident.clone(), req, now)?)
            }
        }
    };
    sim.wake();
    let Some(rx) = rx else {
        wait_until(deadline).await;
        return Err(Rt::Timeout);
    };
    let got = match deadline {
        Some(d) => tokio::time::timeout_at(d, rx).await.map_err(|_| Rt::Timeout)?,
        None => rx.await,
    };
    let reply = got.map_err(|_| Rt::Lost("Lost connection to server during query".into()))?;
    // The answer's way back.
    let link = if local { Link::Up } else { sim.lock().link(from, addr) };
    match link {
        Link::Up => reply.map_err(Rt::Sql),
        Link::Silent => {
            wait_until(deadline).await;
            Err(Rt::Timeout)
        }
        Link::Refused => Err(Rt::Lost("Connection reset by peer".into())),
    }
}

/// Opens [`SimConn`]s for one peer (a coordinator): primus' `Connector` over the simulated
/// servers.
#[derive(Clone)]
pub struct SimConnector {
    sim: SimMysql,
    from: Peer,
    config: ProbeConfig,
    privileged: bool,
}

impl std::fmt::Debug for SimConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConnector").field("from", &self.from).field("user", &self.config.user).finish()
    }
}

impl SimConnector {
    /// Connections opened by `from` with `config`'s timeouts, user and heartbeat table, as a
    /// privileged user (primus' coordinator grants: `SUPER`, `READ ONLY ADMIN`...).
    pub fn new(sim: &SimMysql, from: Peer, config: ProbeConfig) -> SimConnector {
        SimConnector { sim: sim.clone(), from, config, privileged: true }
    }

    /// A user without `SUPER`/`READ ONLY ADMIN`: stopped by `read_only` like applications.
    pub fn unprivileged(mut self) -> SimConnector {
        self.privileged = false;
        self
    }

    /// A connection to `addr` (opened on first use).
    pub fn conn(&self, addr: &InstanceAddr) -> SimConn {
        SimConn {
            sim: self.sim.clone(),
            from: self.from.clone(),
            addr: addr.clone(),
            ident: Identity { user: self.config.user.clone(), peer: self.from.clone(), privileged: self.privileged },
            config: self.config.clone(),
            session: tokio::sync::Mutex::new(None),
        }
    }
}

impl Connector for SimConnector {
    fn connect(&self, addr: &InstanceAddr) -> Arc<dyn MysqlConn> {
        Arc::new(self.conn(addr))
    }

    /// As primus' monitor bounds a probe: connect, detect and batch, plus slack.
    fn probe_deadline(&self) -> Duration {
        self.config.connect_timeout + self.config.query_timeout * 2 + Duration::from_millis(200)
    }
}

#[derive(Debug, Clone)]
struct Open {
    key: SessionKey,
    info: ServerInfo,
}

enum Op<'a> {
    Probe,
    Info,
    Heartbeat { cluster: &'a str, epoch: u64, ts_ms: u64, coordinator: u64 },
    Execute(&'a [String], Duration),
    Query(&'a str, Duration),
}

enum Done {
    Obs(Box<Observation>),
    Info(ServerInfo),
    Changed(bool),
    Unit,
    Rows(Vec<StatusRow>),
}

/// One simulated connection of one peer to one server (see the module docs).
pub struct SimConn {
    sim: SimMysql,
    from: Peer,
    addr: InstanceAddr,
    ident: Identity,
    config: ProbeConfig,
    session: tokio::sync::Mutex<Option<Open>>,
}

impl std::fmt::Debug for SimConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConn").field("from", &self.from).field("addr", &self.addr).finish()
    }
}

fn poisons(e: &ProbeError) -> bool {
    matches!(e, ProbeError::Timeout { .. } | ProbeError::ConnectionLost { .. } | ProbeError::Unparseable { .. })
}

/// A failed round trip on an open session as the `Prober` reports it during `stage`.
fn session_error(e: Rt, stage: ProbeStage, started: Instant, query: &str, read_only_errors: bool) -> ProbeError {
    match e {
        Rt::Timeout => ProbeError::Timeout { stage, after_ms: millis(started.elapsed()) },
        Rt::Refused(message) | Rt::Lost(message) => ProbeError::ConnectionLost { stage, message },
        Rt::Stale => ProbeError::ConnectionLost { stage, message: "Lost connection to server during query".into() },
        Rt::Sql(e)
            if read_only_errors && matches!(e.code, Some(ER_OPTION_PREVENTS_STATEMENT) | Some(ER_READ_ONLY_MODE)) =>
        {
            ProbeError::ReadOnly { message: e.message }
        }
        Rt::Sql(SqlError { code, message }) => ProbeError::QueryFailed { query: query.to_string(), code, message },
    }
}

impl SimConn {
    pub fn addr(&self) -> &InstanceAddr {
        &self.addr
    }

    async fn rt(&self, key: Option<SessionKey>, req: Request, deadline: Instant) -> Result<Output, Rt> {
        round_trip(&self.sim, &self.from, &self.addr, key, &self.ident, req, Some(deadline)).await
    }

    async fn open(&self) -> Result<Open, ProbeError> {
        let started = Instant::now();
        let key = match self.rt(None, Request::Connect, started + self.config.connect_timeout).await {
            Ok(Output::Session(k)) => k,
            Ok(_) => {
                return Err(ProbeError::Unparseable {
                    stage: ProbeStage::Connect,
                    message: "unexpected answer to a connection".into(),
                })
            }
            Err(Rt::Timeout) => {
                return Err(ProbeError::Timeout { stage: ProbeStage::Connect, after_ms: millis(started.elapsed()) })
            }
            Err(Rt::Refused(message)) => return Err(ProbeError::Unreachable { message }),
            Err(Rt::Lost(_) | Rt::Stale) => {
                return Err(ProbeError::Unreachable {
                    message: "connection closed by the server during the handshake".into(),
                })
            }
            Err(Rt::Sql(e)) => {
                return Err(ProbeError::ConnectRejected { code: e.code.unwrap_or(0), message: e.message })
            }
        };
        let started = Instant::now();
        let detect =
            self.rt(Some(key), Request::Sql(flavor::DETECT_SQL.into()), started + self.config.query_timeout).await;
        let info = match detect {
            Ok(Output::Rows(rows)) => {
                let row = rows.first().cloned().unwrap_or_default();
                let version = row.0.first().and_then(|(_, v)| v.clone()).unwrap_or_default();
                let comment = row.0.get(1).and_then(|(_, v)| v.clone()).unwrap_or_default();
                flavor::detect(&version, &comment)
                    .map_err(|e| ProbeError::Unparseable { stage: ProbeStage::Detect, message: e.to_string() })
            }
            Ok(_) => Err(ProbeError::Unparseable { stage: ProbeStage::Detect, message: "no rows".into() }),
            Err(e) => Err(session_error(e, ProbeStage::Detect, started, flavor::DETECT_SQL, false)),
        };
        match info {
            Ok(info) => Ok(Open { key, info }),
            Err(e) => {
                self.sim.close_session(&self.addr, key);
                Err(e)
            }
        }
    }

    /// `Prober::with_session`: connect if needed, run, drop a poisoned connection, retry
    /// once on a fresh connection if a reused one was dead.
    async fn run(&self, op: Op<'_>) -> Result<Done, ProbeError> {
        let mut slot = self.session.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let reused = slot.is_some();
            let mut connect_us = None;
            let open = match slot.as_ref() {
                Some(o) => o.clone(),
                None => {
                    let started = Instant::now();
                    let o = self.open().await?;
                    connect_us = Some(micros(started.elapsed()));
                    *slot = Some(o.clone());
                    o
                }
            };
            match self.op(&open, &op, connect_us).await {
                Err(e) if poisons(&e) => {
                    if let Some(o) = slot.take() {
                        self.sim.close_session(&self.addr, o.key);
                    }
                    if reused && attempts == 1 && matches!(e, ProbeError::ConnectionLost { .. }) {
                        continue;
                    }
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    async fn op(&self, open: &Open, op: &Op<'_>, connect_us: Option<u64>) -> Result<Done, ProbeError> {
        let key = Some(open.key);
        match op {
            Op::Info => Ok(Done::Info(open.info.clone())),
            Op::Probe => {
                let taken_at_ms = self.sim.now_ms();
                let started = Instant::now();
                let table = self.config.heartbeat_table.clone();
                match self.rt(key, Request::Probe(table), started + self.config.query_timeout).await {
                    Ok(Output::Observation(obs)) => match *obs {
                        Ok(mut o) => {
                            o.addr = self.addr.clone();
                            o.taken_at_ms = taken_at_ms;
                            o.latency_us = micros(started.elapsed());
                            o.connect_us = connect_us;
                            Ok(Done::Obs(Box::new(o)))
                        }
                        Err(message) => Err(ProbeError::Unparseable { stage: ProbeStage::ReplicaStatus, message }),
                    },
                    Ok(_) => {
                        Err(ProbeError::Unparseable { stage: ProbeStage::Variables, message: "no observation".into() })
                    }
                    Err(e) => Err(session_error(e, ProbeStage::Variables, started, "probe batch", false)),
                }
            }
            Op::Heartbeat { cluster, epoch, ts_ms, coordinator } => {
                let table = &self.config.heartbeat_table;
                let started = Instant::now();
                let deadline = started + self.config.query_timeout;
                let stage = ProbeStage::HeartbeatWrite;
                let upsert = table.upsert_sql(cluster, *epoch, *ts_ms, *coordinator);
                let changed = |o: Output| matches!(o, Output::Affected(n) if n > 0);
                match self.rt(key, Request::Sql(upsert.clone()), deadline).await {
                    Ok(o) => return Ok(Done::Changed(changed(o))),
                    Err(Rt::Sql(e)) if matches!(e.code, Some(ER_NO_SUCH_TABLE) | Some(ER_BAD_DB_ERROR)) => {}
                    Err(e) => return Err(session_error(e, stage, started, &upsert, true)),
                }
                for ddl in [table.create_database_sql(), table.create_table_sql()] {
                    self.rt(key, Request::Sql(ddl.clone()), deadline)
                        .await
                        .map_err(|e| session_error(e, stage, started, &ddl, true))?;
                }
                let o = self
                    .rt(key, Request::Sql(upsert.clone()), deadline)
                    .await
                    .map_err(|e| session_error(e, stage, started, &upsert, true))?;
                Ok(Done::Changed(changed(o)))
            }
            Op::Execute(statements, timeout) => {
                let started = Instant::now();
                let deadline = started + *timeout;
                for st in statements.iter() {
                    self.rt(key, Request::Sql(st.clone()), deadline)
                        .await
                        .map_err(|e| session_error(e, ProbeStage::Execute, started, st, true))?;
                }
                Ok(Done::Unit)
            }
            Op::Query(sql, timeout) => {
                let started = Instant::now();
                match self.rt(key, Request::Sql(sql.to_string()), started + *timeout).await {
                    Ok(Output::Rows(rows)) => Ok(Done::Rows(rows)),
                    Ok(_) => Ok(Done::Rows(Vec::new())),
                    Err(e) => Err(session_error(e, ProbeStage::Execute, started, sql, false)),
                }
            }
        }
    }
}

impl Drop for SimConn {
    /// Dropping a connection closes its socket: the server ends the session.
    fn drop(&mut self) {
        if let Some(o) = self.session.get_mut().take() {
            self.sim.close_session(&self.addr, o.key);
        }
    }
}

fn unexpected() -> ProbeError {
    ProbeError::Unparseable { stage: ProbeStage::Execute, message: "internal: unexpected result kind".into() }
}

#[async_trait::async_trait]
impl MysqlConn for SimConn {
    async fn probe(&self) -> Result<Observation, ProbeError> {
        match self.run(Op::Probe).await? {
            Done::Obs(o) => Ok(*o),
            _ => Err(unexpected()),
        }
    }

    async fn server_info(&self) -> Result<ServerInfo, ProbeError> {
        match self.run(Op::Info).await? {
            Done::Info(i) => Ok(i),
            _ => Err(unexpected()),
        }
    }

    async fn write_heartbeat(
        &self,
        cluster: &str,
        epoch: u64,
        ts_ms: u64,
        coordinator: u64,
    ) -> Result<bool, ProbeError> {
        match self.run(Op::Heartbeat { cluster, epoch, ts_ms, coordinator }).await? {
            Done::Changed(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn execute(&self, statements: &[String], timeout: Duration) -> Result<(), ProbeError> {
        match self.run(Op::Execute(statements, timeout)).await? {
            Done::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn query_rows(&self, sql: &str, timeout: Duration) -> Result<Vec<StatusRow>, ProbeError> {
        match self.run(Op::Query(sql, timeout)).await? {
            Done::Rows(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn disconnect(&self) {
        if let Some(o) = self.session.lock().await.take() {
            self.sim.close_session(&self.addr, o.key);
        }
    }
}

impl SimMysql {
    /// Application client `client` inserts row `row` on `addr` (over its own connection,
    /// opened on first use and reopened after it broke; one connection per client id and
    /// server, so concurrent writers should use distinct ids): refused by `read_only`/
    /// `super_read_only` (the application user has no privilege to bypass them), waiting for
    /// a semi-sync acknowledgement on a semi-sync source (see [`SemiSyncOutcome`]). There is
    /// no timeout: a silent link or a paused server make it wait — wrap it in
    /// `tokio::time::timeout`; a write sent to a paused server commits when it resumes even if
    /// the caller gave up.
    ///
    /// [`SemiSyncOutcome`]: super::SemiSyncOutcome
    pub async fn app_write(&self, client: u64, addr: &InstanceAddr, row: u64) -> Result<AppAck, AppError> {
        let from = Peer::App(client);
        let ident = Identity { user: "app".into(), peer: from.clone(), privileged: false };
        for _ in 0..2 {
            let existing = self.lock().app_sessions.get(&(client, addr.clone())).copied();
            let key = match existing {
                Some(k) => k,
                None => match round_trip(self, &from, addr, None, &ident, Request::Connect, None).await {
                    Ok(Output::Session(k)) => {
                        self.lock().app_sessions.insert((client, addr.clone()), k);
                        k
                    }
                    Ok(_) => return Err(AppError::Unreachable("unexpected answer to a connection".into())),
                    Err(Rt::Refused(m) | Rt::Lost(m)) => return Err(AppError::Unreachable(m)),
                    Err(Rt::Stale | Rt::Timeout) => return Err(AppError::Unreachable("no connection".into())),
                    Err(Rt::Sql(e)) => return Err(AppError::Failed(e)),
                },
            };
            let r = round_trip(self, &from, addr, Some(key), &ident, Request::AppWrite(row), None).await;
            let forget = || {
                self.lock().app_sessions.remove(&(client, addr.clone()));
            };
            return match r {
                Ok(Output::App(ack)) => Ok(ack),
                Ok(_) => Err(AppError::Failed(SqlError::not_modelled("unexpected answer to a write"))),
                Err(Rt::Stale) => {
                    // The connection was already dead: the write was not sent; reconnect.
                    forget();
                    continue;
                }
                Err(Rt::Refused(m)) => {
                    forget();
                    Err(AppError::Unreachable(m))
                }
                Err(Rt::Lost(_) | Rt::Timeout) => {
                    forget();
                    Err(AppError::ConnectionLost)
                }
                Err(Rt::Sql(e)) => Err(match e.code {
                    Some(ER_OPTION_PREVENTS_STATEMENT) | Some(ER_READ_ONLY_MODE) => AppError::ReadOnly(e.message),
                    Some(1062) => AppError::Duplicate(e.message),
                    _ => AppError::Failed(e),
                }),
            };
        }
        Err(AppError::Unreachable("the connection broke again at once".into()))
    }
}

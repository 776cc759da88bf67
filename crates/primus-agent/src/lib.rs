//! primus-agent: a small daemon beside each mysqld. It holds a write *lease* from
//! the coordinators and fences its own server (read_only = ON, clients killed, and
//! SIGKILL of a hung mysqld) when it cannot renew it — so an old primary cannot
//! take writes even when no coordinator can reach it. See docs/fencing.md.
//!
//! Two tasks that never wait on each other:
//! * the *renewer* registers the agent, then renews the lease every
//!   `lease.renew_interval_ms`, each call bounded by that interval, and records the
//!   answers in the shared [`lease::LeaseState`];
//! * the *guard* decides from that state (monotonic time only) whether the server
//!   must be read-only, fences it over a persistent local connection, escalates
//!   when mysqld does not answer, and keeps checking that a fenced server stays
//!   read-only.
//!
//! The agent never makes its server writable: only the coordinators do.

pub mod config;
pub mod fence;
pub mod lease;
pub mod seams;
pub mod sentinel;

use crate::config::{Config, Escalation, RestartGuard};
use crate::fence::{Escalated, FenceError, LocalMysql};
use crate::lease::{Answer, Event, LeaseState};
use crate::seams::{ClientCoordinators, Coordinators, Host, LeasePublisher, LocalServer, RealHost};
use primus_client::ClientError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

/// The shortest attempt to fence a server that has been silent for longer than the
/// fence timeout already: one round trip, in case it has just come back.
const MIN_FENCE_ATTEMPT: Duration = Duration::from_millis(50);

/// Why the agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The coordinators know no such cluster or instance: the config is wrong.
    #[error("the coordinators do not know cluster {cluster:?} / instance {instance:?} ({message}); check `cluster` and `instance` in the config")]
    NotFound { cluster: String, instance: String, message: String },
    /// The coordinators refuse this agent's configuration (e.g. a lease TTL that a
    /// leader change would outlast).
    #[error("the coordinators refuse this agent's configuration: {0}")]
    Refused(String),
    #[error("bad coordinator endpoint: {0}")]
    Client(#[from] ClientError),
    #[error("a task of the agent ended: {0}")]
    Task(String),
}

struct Shared {
    state: Mutex<LeaseState>,
    changed: Notify,
    /// Ask the renewer for a renewal now rather than at its next interval.
    renew_now: Notify,
    /// mysqld's process exited and the server it restarts as is not fenced yet.
    restart: Mutex<Restart>,
    /// The renewer hands the lease back and stops renewing (see [`Handback`]).
    handback: Mutex<Handback>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Restart {
    /// The restarted server must be fenced as soon as it answers.
    pending: bool,
    /// mysqld's TCP port was blocked when the process exited.
    blocked: bool,
}

/// The lease hand-back after mysqld exited (`fence.release_lease_on_exit`).
#[derive(Debug, Default, Clone)]
struct Handback {
    /// What to tell the leader; `Some` from the exit until the renewer has registered
    /// again after the restarted server was fenced.
    reason: Option<String>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restart(&self) -> MutexGuard<'_, Restart> {
        self.restart.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handback(&self) -> MutexGuard<'_, Handback> {
        self.handback.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The effects the agent's loop runs over ([`seams`]): the real ones in [`run`], simulated
/// ones in `primus-sim`.
pub struct Seams {
    pub mysql: Box<dyn LocalServer>,
    pub coordinators: Arc<dyn Coordinators>,
    pub host: Arc<dyn Host>,
    pub publisher: Option<Arc<dyn LeasePublisher>>,
}

/// One agent's lease state and the signals between its tasks. [`Agent::run`] runs the
/// renewer and the guard; the watchdog (the real one watches mysqld's pidfd) reports
/// mysqld's exits with [`Agent::mysqld_exited`].
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

impl Agent {
    pub fn new(cfg: &Config) -> Agent {
        Agent {
            shared: Arc::new(Shared {
                state: Mutex::new(LeaseState::new(cfg.lease.ttl(), Instant::now())),
                changed: Notify::new(),
                renew_now: Notify::new(),
                restart: Mutex::new(Restart::default()),
                handback: Mutex::new(Handback::default()),
            }),
        }
    }

    /// Run the renewer and the guard until one of them ends (a fatal error). Dropping
    /// the future stops both.
    pub async fn run(&self, cfg: Config, agent_id: String, seams: Seams) -> Result<(), AgentError> {
        let Seams { mysql, coordinators, host, publisher } = seams;
        let mut guard = AbortOnDrop(tokio::spawn(
            guard(cfg.clone(), self.shared.clone(), mysql, host, publisher.clone()).in_current_span(),
        ));
        let mut renewer = AbortOnDrop(tokio::spawn(
            renewer(cfg, agent_id, self.shared.clone(), coordinators, publisher).in_current_span(),
        ));
        tokio::select! {
            r = &mut renewer.0 => match r {
                Ok(r) => r,
                Err(e) => Err(AgentError::Task(format!("renewer: {e}"))),
            },
            r = &mut guard.0 => Err(AgentError::Task(format!("guard ended: {:?}", r.map(|_| ())))),
        }
    }

    /// mysqld's process (`what`, for logs) exited. `blocked`: no client can reach the
    /// server it restarts as before the guard has fenced it (the real agent blocked its
    /// TCP port). The guard fences that server before anything else, and with
    /// `fence.release_lease_on_exit` the renewer hands the lease back.
    pub fn mysqld_exited(&self, cfg: &Config, what: &str, blocked: bool) {
        let shared = &self.shared;
        {
            let mut r = shared.restart();
            r.pending = true;
            r.blocked |= blocked;
        }
        // The process is gone and no TCP client can reach its successor before the
        // guard has fenced it: the lease protects nothing any more, so hand it back and
        // spare a failover the wait for it (issue 14). Not without the block.
        if blocked && cfg.fence.release_lease_on_exit {
            let reason = format!(
                "{what} exited; TCP port {} is blocked until the restarted server is fenced",
                cfg.mysqld_port().unwrap_or_default()
            );
            shared.handback().reason = Some(reason);
            shared.renew_now.notify_one();
        } else if cfg.fence.release_lease_on_exit {
            tracing::warn!(
                what,
                "mysqld exited but its port is not blocked: the lease is not handed back (a failover \
                waits for it to run out)"
            );
        }
        shared.changed.notify_one();
    }
}

/// Run the agent until `shutdown` completes or a fatal error.
pub async fn run(cfg: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let span = tracing::info_span!("agent", cluster = %cfg.cluster, instance = %cfg.instance);
    async move {
        let agent = Agent::new(&cfg);
        let agent_id = cfg.agent_id();
        tracing::info!(
            agent_id = %agent_id,
            coordinators = ?cfg.coordinators,
            renew_interval_ms = cfg.lease.renew_interval_ms,
            ttl_ms = cfg.lease.ttl_ms,
            escalation = ?cfg.fence.escalation,
            "primus-agent started"
        );
        // Validated at load; an error here is a file that changed since.
        let password = cfg.mysql.password().map_err(|e| AgentError::Task(format!("mysql password: {e}")))?;
        let mysql = LocalMysql::new(&cfg.mysql, password);
        let publisher: Option<Arc<dyn LeasePublisher>> = if cfg.fence.sentinel {
            let path = sentinel::lease_file(&cfg);
            let p = sentinel::Publisher::start(path.clone())
                .map_err(|e| AgentError::Task(format!("fence.lease_file: cannot write {}: {e}", path.display())))?;
            Some(Arc::new(p))
        } else {
            None
        };
        let seams = Seams {
            mysql: Box::new(mysql),
            coordinators: Arc::new(ClientCoordinators::new(&cfg)?),
            host: Arc::new(RealHost(cfg.fence.clone())),
            publisher,
        };
        let restart_mode = restart_mode(&cfg).await;
        let watchdog = (restart_mode != RestartGuard::Off).then(|| {
            let m = LocalMysql::new(&cfg.mysql, cfg.mysql.password().ok().flatten());
            tokio::spawn(watchdog(cfg.clone(), agent.clone(), m, restart_mode).in_current_span())
        });
        let _watchdog = watchdog.map(AbortOnDrop);
        tokio::select! {
            _ = shutdown => {
                tracing::info!("primus-agent stopping (the lease is no longer renewed; the server is left as it is)");
                Ok(())
            }
            r = agent.run(cfg.clone(), agent_id, seams) => r,
        }
    }
    .instrument(span)
    .await
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `fence.restart_guard` with `auto` resolved: block the port when nftables works here.
async fn restart_mode(cfg: &Config) -> RestartGuard {
    match cfg.fence.restart_guard {
        RestartGuard::Auto => {
            let usable = crate::config::command_exists(&cfg.fence.ss_path)
                && cfg.mysqld_port().is_some()
                && fence::nft_usable(&cfg.fence).await;
            if usable {
                RestartGuard::BlockPort
            } else {
                tracing::warn!(
                    "fence.restart_guard = \"auto\": nftables is not usable here (nft/ss missing, or no \
                     CAP_NET_ADMIN): a restarted mysqld is fenced as soon as it answers, and a client may write \
                     first unless mysqld starts with read_only=ON"
                );
                RestartGuard::Fence
            }
        }
        other => other,
    }
}

/// Watch mysqld's process (pidfd: the kernel says at once when it exits). When it
/// exits: block its TCP port (`block_port`), and ask the guard to fence the server it
/// restarts as before anything else; then wait for the new process and watch it.
async fn watchdog(cfg: Config, agent: Agent, mut mysql: LocalMysql, mode: RestartGuard) {
    let pid_file = match &cfg.fence.mysqld_pid_file {
        Some(p) => p.clone(),
        None => loop {
            match mysql.pid_file().await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read @@pid_file yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        },
    };
    drop(mysql);
    tracing::info!(pid_file = %pid_file.display(), mode = ?mode, "watching mysqld's process for restarts");
    let mut last: Option<i32> = None;
    loop {
        let Some(pid) = fence::live_mysqld_pid(&pid_file).filter(|p| Some(*p) != last) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        tracing::debug!(pid, "watching mysqld");
        // A thread of its own, not the runtime's blocking pool: dropping the runtime
        // would wait for it (until mysqld exits).
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(e) = std::thread::Builder::new().name("mysqld-watch".into()).spawn(move || {
            let _ = tx.send(wait_exit(pid));
        }) {
            tracing::warn!(pid, error = %e, "cannot start the mysqld watch thread");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(pid, error = %e, "cannot watch mysqld's process (pidfd)");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => continue,
        }
        last = Some(pid);
        let port = cfg.mysqld_port();
        let mut blocked = false;
        if let (RestartGuard::BlockPort, Some(p)) = (mode, port) {
            match fence::block_port(&cfg.fence, p).await {
                Ok(()) => blocked = true,
                Err(e) => tracing::error!(pid, port = p, error = %e, "cannot block mysqld's port"),
            }
        }
        tracing::warn!(
            pid,
            blocked,
            "mysqld exited: its restarted server will be fenced before it takes a write{}",
            if blocked { " (TCP port blocked until then)" } else { "" }
        );
        agent.mysqld_exited(&cfg, &format!("mysqld pid {pid}"), blocked);
    }
}

/// The renewer's part of a hand-back: tell the leader (until it has recorded it, or
/// the restarted server is fenced already), renew nothing meanwhile, and once the
/// restarted server is fenced register again (which takes the hand-back back in Raft)
/// before renewing. `registration`: the log index of the registration whose lease is
/// handed back; returns the new registration's.
async fn hand_back(
    cfg: &Config,
    agent_id: &str,
    shared: &Shared,
    coords: &dyn Coordinators,
    reason: &str,
    registration: u64,
    i: &mut usize,
) -> Result<u64, AgentError> {
    // Each attempt bounded by a renewal interval, as renewals are: a dead coordinator
    // (the leader may have died with mysqld) costs one interval, not a registration
    // timeout, before the next endpoint is tried.
    let attempt = cfg.lease.renew_interval();
    let t0 = Instant::now();
    let mut failures = 0u64;
    while shared.restart().pending {
        let name = coords.name(*i);
        match tokio::time::timeout(attempt, coords.release(*i, agent_id, registration, reason)).await {
            Ok(Ok(log_index)) => {
                tracing::warn!(endpoint = %name, log_index, took_ms = t0.elapsed().as_millis() as u64,
                    reason, "LEASE HANDED BACK: a failover need not wait for it; renewing again once the restarted \
                    server is fenced");
                break;
            }
            Ok(Err(e)) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                tracing::warn!(endpoint = %name, error = %e, "the leader did not take the lease back; it runs out");
                break;
            }
            other => {
                failures += 1;
                if worth_logging(failures, 20) {
                    let error = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer in time".into(),
                    };
                    tracing::warn!(endpoint = %name, error = %error, failures, "cannot hand the lease back; retrying");
                }
                *i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    while shared.restart().pending {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("the restarted server is fenced: registering again to renew the lease");
    let registration = register(cfg, agent_id, coords, i).await?;
    shared.handback().reason = None;
    Ok(registration)
}

/// Block until process `pid` exits: its pidfd becomes readable then.
fn wait_exit(pid: i32) -> Result<(), String> {
    use rustix::event::{poll, PollFd, PollFlags};
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| format!("bad pid {pid}"))?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(|e| e.to_string())?;
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Log the first of a run of failures and then every `every`-th.
fn worth_logging(n: u64, every: u64) -> bool {
    n == 1 || n.is_multiple_of(every)
}

/// Register (a Raft write), retried until it succeeds; `i` is the endpoint to try first.
/// Returns the log index the registration was committed at (a hand-back names it).
async fn register(cfg: &Config, agent_id: &str, coords: &dyn Coordinators, i: &mut usize) -> Result<u64, AgentError> {
    let timings = primus_client::AgentTimings {
        ttl_ms: cfg.lease.ttl_ms,
        renew_interval_ms: cfg.lease.renew_interval_ms,
        fence_timeout_ms: cfg.fence.timeout_ms,
    };
    let mut failures = 0u64;
    loop {
        let name = coords.name(*i);
        let t = cfg.lease.register_timeout();
        match tokio::time::timeout(t, coords.register(*i, agent_id, timings)).await {
            Ok(Ok(log_index)) => {
                tracing::info!(endpoint = %name, log_index, agent_id = %agent_id, "agent registered");
                return Ok(log_index);
            }
            Ok(Err(e)) if matches!(e.code(), Some(tonic::Code::NotFound | tonic::Code::InvalidArgument)) => {
                return Err(AgentError::NotFound {
                    cluster: cfg.cluster.clone(),
                    instance: cfg.instance.clone(),
                    message: e.to_string(),
                })
            }
            Ok(Err(e)) if e.code() == Some(tonic::Code::FailedPrecondition) => {
                return Err(AgentError::Refused(e.to_string()));
            }
            Ok(Err(e)) => {
                failures += 1;
                if worth_logging(failures, 20) {
                    tracing::warn!(endpoint = %name, error = %e, failures, "cannot register with the coordinators; retrying");
                }
            }
            Err(_) => {
                failures += 1;
                if worth_logging(failures, 20) {
                    tracing::warn!(endpoint = %name, timeout_ms = t.as_millis(), failures, "registration timed out; retrying");
                }
            }
        }
        *i += 1;
        tokio::time::sleep(cfg.lease.renew_interval()).await;
    }
}

async fn renewer(
    cfg: Config,
    agent_id: String,
    shared: Arc<Shared>,
    coords: Arc<dyn Coordinators>,
    publisher: Option<Arc<dyn LeasePublisher>>,
) -> Result<(), AgentError> {
    let interval = cfg.lease.renew_interval();
    let ttl_ms = cfg.lease.ttl_ms;
    let coords = coords.as_ref();
    let mut i = 0usize;
    let mut registration = register(&cfg, &agent_id, coords, &mut i).await?;

    let mut failures = 0u64;
    let mut last_reason = String::from("none");
    loop {
        let handback = shared.handback().reason.clone();
        if let Some(reason) = handback {
            registration = hand_back(&cfg, &agent_id, &shared, coords, &reason, registration, &mut i).await?;
            continue;
        }
        let sent_at = Instant::now();
        let name = coords.name(i);
        let answer = match tokio::time::timeout(interval, coords.renew(i, &agent_id, ttl_ms)).await {
            Ok(Ok(r)) => {
                tracing::debug!(endpoint = %name, granted = r.granted, ttl_ms = r.ttl_ms, epoch = r.epoch,
                    reason = %r.reason, fence_now = r.fence_now, served_by = r.served_by, "renewal answered");
                if r.reason == "ttl_too_long" {
                    tracing::error!(endpoint = %name, requested_ttl_ms = ttl_ms,
                        "the coordinators refuse lease.ttl_ms as too long; lower it in the config");
                }
                Answer::from_response(&r)
            }
            Ok(Err(e)) => {
                failures += 1;
                if worth_logging(failures, 20) {
                    if matches!(e, ClientError::Auth { .. } | ClientError::Tls { .. } | ClientError::Config(_)) {
                        tracing::error!(endpoint = %name, error = %e, failures,
                            "lease renewal refused: check token_file and [tls] (the lease will run out)");
                    } else {
                        tracing::warn!(endpoint = %name, error = %e, failures, "lease renewal failed");
                    }
                }
                Answer::NoAnswer
            }
            Err(_) => {
                failures += 1;
                if worth_logging(failures, 20) {
                    tracing::warn!(endpoint = %name, timeout_ms = interval.as_millis(), failures, "lease renewal timed out");
                }
                Answer::NoAnswer
            }
        };
        if answer == Answer::NoAnswer {
            i += 1;
        } else {
            if failures > 0 {
                tracing::info!(endpoint = %name, after_failures = failures, "coordinators answer again");
            }
            failures = 0;
        }
        let (event, until) = {
            let mut st = shared.state();
            let event = st.on_answer(sent_at, &answer);
            (event, st.lease_until())
        };
        if let Some(p) = &publisher {
            p.publish(until);
        }
        // The coordinators lost this agent's registration (a new agent replaced it, the
        // cluster was registered again), or the leader grants only once its own lease
        // settings are recorded with it (a new leader with a larger margin): register
        // again, the lease running out meanwhile.
        if matches!(&event, Event::Refused { reason, .. } if reason == "not_registered") {
            tracing::warn!(
                "the leader has no registration of this agent under its lease settings (a new agent replaced it, or \
                 a leader with a larger [fencing] lease_margin_ms took over): registering again"
            );
            registration = register(&cfg, &agent_id, coords, &mut i).await?;
        }
        match &event {
            Event::Granted { epoch, .. } => {
                if !last_reason.is_empty() {
                    tracing::info!(epoch, ttl_ms, "lease granted");
                    last_reason.clear();
                }
            }
            Event::GrantedWhileFenced { epoch, .. } => {
                if last_reason != "granted_while_fenced" {
                    tracing::warn!(
                        epoch,
                        "lease granted again after this agent fenced the server; the agent does not unfence \
                         (only the coordinators make a server writable)"
                    );
                    last_reason = "granted_while_fenced".into();
                }
            }
            Event::Promoting { epoch, .. } => {
                if last_reason != "being_promoted" {
                    tracing::info!(epoch, "the coordinators are promoting this server; not fencing");
                    last_reason = "being_promoted".into();
                }
            }
            Event::Refused { reason, fence_now, epoch } => {
                if &last_reason != reason {
                    tracing::info!(epoch, reason = %reason, fence_now, "lease refused");
                    last_reason = reason.clone();
                }
            }
            Event::NoAnswer => {}
        }
        shared.changed.notify_one();
        tokio::select! {
            _ = tokio::time::sleep_until(sent_at + interval) => {}
            _ = shared.renew_now.notified() => {}
        }
    }
}

/// Decide and fence. Never waits on the renewer; bounded by the fence timeout.
async fn guard(
    cfg: Config,
    shared: Arc<Shared>,
    mut mysql: Box<dyn LocalServer>,
    host: Arc<dyn Host>,
    publisher: Option<Arc<dyn LeasePublisher>>,
) {
    // The agent fenced the server, or found it read-only, after its lease ran out: the
    // sentinel need not fence for that lease end (see sentinel::LeaseRecord::fenced_ns).
    let mark_fenced = |shared: &Shared| {
        let until = {
            let mut s = shared.state();
            s.mark_fenced();
            s.lease_until()
        };
        if let (Some(p), Some(u)) = (&publisher, until) {
            p.publish_fenced(u);
        }
    };
    let check = cfg.fence.check_interval();
    let fence_timeout = cfg.fence.timeout();
    // The server was fenced (or its mysqld killed) by this agent and has not been
    // seen writable with a lease since.
    let mut fenced = false;
    let mut next_check = Instant::now();
    // When mysqld last answered this agent (a local check or a fence). A fence due
    // when it has been silent for a while gets only what is left of `timeout_ms`:
    // a server frozen since long before (SIGSTOP, a hung disk) is escalated at once
    // instead of being given the whole timeout again (issue 14: SIGSTOP failovers).
    let mut last_answer = Instant::now();
    let mut errors = 0u64;
    // escalation = "block_port": mysqld's TCP port is blocked until the server
    // answers and is fenced.
    let port = cfg.mysqld_port();
    let mut blocked = false;
    if let (Escalation::BlockPort, Some(p)) = (cfg.fence.escalation, port) {
        if host.port_blocked(p).await {
            tracing::warn!(
                port = p,
                "mysqld's port is blocked (left by an earlier agent); it stays blocked until \
                the server is confirmed read-only"
            );
            blocked = true;
        }
    }
    loop {
        // mysqld restarted: fence the new server before anything else, whatever the lease.
        let restart = *shared.restart();
        if restart.pending {
            match tokio::time::timeout(fence_timeout, mysql.fence_within(fence_timeout)).await {
                Ok(Ok(r)) => {
                    tracing::warn!(
                        was_writable = r.was_writable,
                        killed_connections = r.killed,
                        "RESTART FENCED: the restarted mysqld is read-only (the coordinators make it writable again \
                         if it is still the primary and this agent holds its lease)"
                    );
                    fenced = true;
                    mark_fenced(&shared);
                    let mut lifted = true;
                    if restart.blocked {
                        let epoch = shared.state().epoch;
                        lifted = unblock(host.as_ref(), port, epoch).await;
                    }
                    let mut r = shared.restart();
                    r.pending = false;
                    r.blocked = !lifted;
                    if !lifted {
                        blocked = true;
                    }
                }
                _ => {
                    mysql.reset();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let now = Instant::now();
        let (decision, holds, epoch, deadline) = {
            let s = shared.state();
            (s.must_fence(now), s.holds_lease(now), s.epoch, s.next_deadline(now))
        };
        if let Some(reason) = decision {
            // Fence on the decision, then whenever the server is seen writable.
            let need = if !fenced {
                true
            } else if now >= next_check && blocked {
                // Blocked port: fence again until mysqld answers, then unblock.
                next_check = now + check;
                true
            } else if now >= next_check {
                next_check = now + check;
                let r = tokio::time::timeout(fence_timeout, mysql.writability()).await;
                if matches!(r, Ok(Ok(_))) {
                    last_answer = Instant::now();
                }
                match r {
                    Ok(Ok(w)) if w.writable() => {
                        tracing::warn!(epoch, reason = %reason, "server is writable again without a lease; fencing again");
                        true
                    }
                    Ok(Ok(_)) => false,
                    Ok(Err(FenceError::Down(_))) => false,
                    // A fenced server that stalls is still read-only: no reason to kill
                    // it. If it comes back writable, the next check fences it.
                    Ok(Err(FenceError::Timeout { .. })) | Err(_) => {
                        mysql.reset();
                        false
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        if worth_logging(errors, 50) {
                            tracing::warn!(epoch, error = %e, "cannot check the fenced server");
                        }
                        false
                    }
                }
            } else {
                false
            };
            let need = if need && reason.needs_confirmation() {
                match confirm_refusal(&cfg, &shared, mysql.as_mut(), fence_timeout).await {
                    Confirmed::ReadOnly => {
                        if !fenced {
                            tracing::info!(epoch, reason = %reason, "must be read-only, and is already: keeping it so");
                        }
                        fenced = true;
                        errors = 0;
                        mark_fenced(&shared);
                        false
                    }
                    Confirmed::Lifted => {
                        tracing::info!(epoch, reason = %reason,
                            "the server is writable and the coordinators answer now that it may be (it is being \
                             promoted, or holds the lease again): not fencing");
                        false
                    }
                    Confirmed::Fence => true,
                }
            } else {
                need
            };
            if need {
                let started = Instant::now();
                let silent = started.saturating_duration_since(last_answer);
                let budget = fence_timeout.saturating_sub(silent).max(MIN_FENCE_ATTEMPT);
                match mysql.fence_within(budget).await {
                    Ok(r) => {
                        last_answer = Instant::now();
                        let took_ms = started.elapsed().as_millis() as u64;
                        if r.was_writable {
                            tracing::warn!(epoch, reason = %reason, killed_connections = r.killed, took_ms,
                                "FENCED: server set read-only");
                        } else {
                            tracing::info!(epoch, reason = %reason, took_ms,
                                "must be read-only, and is already: keeping it so");
                        }
                        fenced = true;
                        errors = 0;
                        mark_fenced(&shared);
                        if blocked {
                            blocked = !unblock(host.as_ref(), port, epoch).await;
                        }
                    }
                    Err(FenceError::Down(m)) => {
                        // Nothing listening: nothing can write. Keep trying.
                        errors += 1;
                        if worth_logging(errors, 50) {
                            tracing::warn!(epoch, reason = %reason, error = %m,
                                "must fence, but mysqld is not accepting connections (nothing can write); will fence it when it is back");
                        }
                    }
                    Err(e @ FenceError::Sql { .. }) => {
                        errors += 1;
                        if worth_logging(errors, 50) {
                            tracing::error!(epoch, reason = %reason, error = %e,
                                "cannot fence the server: check [mysql] user and privileges (needs SUPER or \
                                 READ ONLY ADMIN + CONNECTION ADMIN)");
                        }
                    }
                    Err(FenceError::Timeout { .. }) if blocked => {
                        // Still hung, and the block holds: nothing gets in or out.
                    }
                    Err(FenceError::Timeout { .. }) => {
                        // How long mysqld has not answered, this attempt included.
                        let attempt_ms = started.elapsed().as_millis() as u64;
                        let waited = attempt_ms + silent.as_millis() as u64;
                        match host.escalate(port).await {
                            Ok(Escalated::Blocked { port }) => {
                                tracing::error!(epoch, reason = %reason, port, waited_ms = waited, attempt_ms,
                                    "ESCALATED: mysqld did not answer the fence in time; its TCP port is blocked \
                                     both ways until it answers and is fenced");
                                fenced = true;
                                blocked = true;
                                mark_fenced(&shared);
                            }
                            Ok(Escalated::Killed { pid }) => {
                                tracing::error!(epoch, reason = %reason, pid, waited_ms = waited, attempt_ms,
                                    "ESCALATED: mysqld did not answer the fence in time; sent it SIGKILL");
                                fenced = true;
                                mark_fenced(&shared);
                            }
                            Ok(Escalated::Disabled) => {
                                tracing::error!(epoch, reason = %reason, waited_ms = waited,
                                    "mysqld did not answer the fence in time and escalation = \"none\": the server may still take writes");
                            }
                            Ok(Escalated::NotRunning(m)) => {
                                tracing::warn!(epoch, reason = %reason, waited_ms = waited, detail = %m,
                                    "mysqld did not answer the fence in time; no live mysqld to kill");
                            }
                            Err(m) => {
                                tracing::error!(epoch, reason = %reason, waited_ms = waited, error = %m,
                                    "mysqld did not answer the fence in time and could not be killed");
                            }
                        }
                    }
                }
                next_check = Instant::now() + check;
            }
        } else if now >= next_check {
            // A lease is held (or the start-up grace runs): keep the local
            // connection warm, and notice when the coordinators made a fenced
            // server writable again.
            next_check = now + check;
            // Never let this check delay a fence due at the lease's end.
            let bound = deadline
                .map_or(cfg.mysql.query_timeout(), |d| d.saturating_duration_since(now).min(cfg.mysql.query_timeout()));
            match tokio::time::timeout(bound, mysql.writability()).await {
                Ok(Ok(w)) => {
                    last_answer = Instant::now();
                    if fenced && holds && w.writable() {
                        tracing::info!(epoch, "server writable again with a lease (made writable by the coordinators)");
                        fenced = false;
                    }
                    // Granted a lease again while blocked: the server answers and is
                    // read-only (the coordinators cannot have made it writable
                    // through the block); let them reach it.
                    if blocked && !w.writable() {
                        blocked = !unblock(host.as_ref(), port, epoch).await;
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "local mysqld check failed"),
                Err(_) => {
                    mysql.reset();
                    tracing::debug!("local mysqld check timed out");
                }
            }
        }
        let wake = deadline.map_or(next_check, |d| d.min(next_check)).max(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.changed.notified() => {}
        }
    }
}

/// What a refusal-based fence decision came to (see `lease` module docs).
enum Confirmed {
    /// The server is read-only: nothing to fence.
    ReadOnly,
    /// A renewal sent after the server was seen writable was granted (or answered
    /// `being_promoted`): the refusal is outdated.
    Lifted,
    /// Still refused, no fresh answer in time, or the server could not be checked.
    Fence,
}

/// Before fencing on a refusal (`not_primary` and no lease left), which may predate
/// the coordinators promoting this very server: check the server, and when it is
/// writable, ask for a renewal now and decide on its answer. The coordinators answer
/// `being_promoted` from the commit of a failover to this server on, before they make it
/// writable, so a request sent after it was seen writable tells a promotion from a
/// stray write. Waits at most one renewal interval (the renewer's own timeout); no
/// fresh answer in that time means fence.
async fn confirm_refusal(cfg: &Config, shared: &Shared, mysql: &mut dyn LocalServer, bound: Duration) -> Confirmed {
    match tokio::time::timeout(bound, mysql.writability()).await {
        Ok(Ok(w)) if !w.writable() => return Confirmed::ReadOnly,
        Ok(Ok(_)) => {}
        // Down, hung or failing: the fence path deals with it as it always has.
        Ok(Err(_)) | Err(_) => return Confirmed::Fence,
    }
    let seen_writable = Instant::now();
    let until = seen_writable + cfg.lease.renew_interval();
    shared.renew_now.notify_one();
    loop {
        // Registered before the check, so an answer between the two is not missed.
        let changed = shared.changed.notified();
        {
            let s = shared.state();
            if s.answered_since(seen_writable) {
                return if s.must_fence(Instant::now()).is_some() { Confirmed::Fence } else { Confirmed::Lifted };
            }
        }
        if tokio::time::timeout_at(until, changed).await.is_err() {
            return Confirmed::Fence;
        }
    }
}

/// Reset the connections from before the block and lift it; true when lifted.
async fn unblock(host: &dyn Host, port: Option<u16>, epoch: u64) -> bool {
    let Some(port) = port else { return true };
    match host.unblock_port(port).await {
        Ok(()) => {
            tracing::warn!(
                epoch,
                port,
                "UNBLOCKED: the server answers and is read-only; connections from before \
                the block reset, port open again"
            );
            true
        }
        Err(e) => {
            tracing::error!(epoch, port, error = %e, "cannot lift the port block; retrying");
            false
        }
    }
}

//! A simulated `primus-agent`: the real lease decision ([`primus_agent::lease::LeaseState`],
//! fed with [`Answer::from_response`] as the agent's renewer does) and the agent's fence
//! (kill client connections, `read_only` on, again for whoever connected meanwhile;
//! mysqld killed when that does not finish within the fence timeout — escalation
//! `kill`), over the simulated servers' local socket.
//!
//! The loop mirrors `primus_agent::run`'s renewer and guard (including the confirmation
//! of a refusal before a writable server is fenced on it) rather than sharing them:
//! those are written against mysql_async, nftables and the gRPC client. What decides
//! — when a lease holds, when to fence — is the agent's own code.
//!
//! The agent publishes its lease end in a [`LeaseFile`], as the real one does for its
//! sentinel. When the agent alone is killed, its [`sentinel`] fences the server at the
//! end of that lease, deciding with the real sentinel's `decide`.

use crate::mysql::{Peer, SimMysql};
use primus_agent::lease::{Answer, Event, LeaseState};
use primus_agent::sentinel::{AgentIs, Step};
use primus_mysql::conn::MysqlConn;
use primus_mysql::ProbeConfig;
use primus_types::{ClusterName, InstanceAddr, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What an agent needs from the simulation around it.
#[async_trait::async_trait]
pub trait AgentEnv: Send + Sync + 'static {
    fn sim(&self) -> &SimMysql;
    fn cluster(&self) -> &ClusterName;
    fn addr(&self, i: usize) -> InstanceAddr;
    fn coordinators(&self) -> Vec<NodeId>;
    fn max_ttl(&self) -> Duration;
    /// One RegisterAgent (`register`) or RenewLease call to coordinator `to`; `None`
    /// when it got no answer. A registration's answer carries the log index it was
    /// committed at in `epoch`.
    async fn renew(
        &self,
        i: usize,
        to: NodeId,
        agent_id: &str,
        ttl: Duration,
        register: bool,
    ) -> Option<primus_client::RenewLeaseResponse>;
    /// The agent hands the lease back (RegisterAgent with `release`) through
    /// coordinator `to`: `Some(true)` recorded, `Some(false)` refused, `None` no answer.
    async fn release(&self, i: usize, to: NodeId, agent_id: &str, registration: u64, reason: &str) -> Option<bool>;
    fn note(&self, line: String);
    /// The lease file of the live agent of server `i`, if one runs.
    fn lease_file(&self, i: usize) -> Option<LeaseFile>;
}

/// What an agent publishes for its sentinel (`sentinel::LeaseRecord`): the end of the
/// lease it holds, and the lease end after which it found its server fenced.
#[derive(Debug, Clone, Default)]
pub struct LeaseFile(Arc<Mutex<(Option<Instant>, Option<Instant>)>>);

impl LeaseFile {
    fn publish(&self, until: Option<Instant>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).0 = until;
    }

    fn publish_fenced(&self, until: Option<Instant>) {
        if let Some(u) = until {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(u);
        }
    }

    /// (lease end, lease end after which the agent found the server fenced).
    pub fn read(&self) -> (Option<Instant>, Option<Instant>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The agent's settings in the simulation (the sandbox's: TTL 1.5 s, renewal every
/// 300 ms, fence bound 500 ms, checks every 100 ms).
const TTL: Duration = Duration::from_millis(1500);
const RENEW: Duration = Duration::from_millis(300);
const FENCE_TIMEOUT: Duration = Duration::from_millis(500);
const CHECK: Duration = Duration::from_millis(100);

/// Run the agent of server `i` until aborted (a crash of it or of its host), publishing
/// its lease in `file`.
pub async fn agent_loop(env: Arc<dyn AgentEnv>, i: usize, seed: u64, file: LeaseFile) {
    let addr = env.addr(i);
    let agent_id = format!("agent-{addr}-{seed:x}");
    let state = Arc::new(Mutex::new(LeaseState::new(TTL, Instant::now())));
    let renew_now = Arc::new(Notify::new());
    let guard = tokio::spawn(guard(env.clone(), addr.clone(), state.clone(), renew_now.clone(), file.clone()));
    let _abort = AbortOnDrop(guard);
    let coords = env.coordinators();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut k = rng.gen_range(0..coords.len());
    // Register (until a leader takes it).
    let register = |k: &mut usize| {
        let env = env.clone();
        let coords = coords.clone();
        let agent_id = agent_id.clone();
        let mut at = *k;
        async move {
            loop {
                let to = coords[at % coords.len()];
                if let Some(r) = env.renew(i, to, &agent_id, TTL, true).await {
                    return (at, r.epoch);
                }
                at += 1;
                tokio::time::sleep(RENEW).await;
            }
        }
    };
    let (mut k, mut registration) = register(&mut k).await;
    // The agent's watchdog (`primus_agent::watchdog`): the moment mysqld's process
    // exits, hand the lease back. The simulated servers start read-only, standing for
    // the real agent's blocked port until it has fenced the restarted server.
    let handback = Arc::new(Mutex::new(None::<String>));
    let watch = {
        let (sim, addr, handback, renew_now) = (env.sim().clone(), addr.clone(), handback.clone(), renew_now.clone());
        tokio::spawn(async move {
            let mut was_up = true;
            loop {
                let up = sim.process_state(&addr).ok() != Some(crate::mysql::ProcState::Crashed);
                if was_up && !up {
                    *handback.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(format!("mysqld of {addr} exited; its port is blocked until the restart is fenced"));
                    renew_now.notify_one();
                }
                was_up = up;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let _watch = AbortOnDrop(watch);
    let crashed =
        |env: &Arc<dyn AgentEnv>| env.sim().process_state(&addr).ok() == Some(crate::mysql::ProcState::Crashed);
    loop {
        // As the agent's `hand_back`: tell a leader (until one recorded it, or the server
        // is back), renew nothing meanwhile, register again once the restarted server is
        // read-only, then renew.
        let reason = handback.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(reason) = reason {
            while crashed(&env) {
                let to = coords[k % coords.len()];
                match env.release(i, to, &agent_id, registration, &reason).await {
                    Some(ok) => {
                        env.note(format!(
                            "agent of {addr}: lease handed back ({})",
                            if ok { "recorded" } else { "refused" }
                        ));
                        break;
                    }
                    None => {
                        k += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            // The restarted server answers (read-only from its config): the real
            // agent's restart fence is done at that moment.
            while crashed(&env) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (k, registration) = register(&mut k).await;
            *handback.lock().unwrap_or_else(PoisonError::into_inner) = None;
            continue;
        }
        let sent_at = Instant::now();
        let to = coords[k % coords.len()];
        let answer = match tokio::time::timeout(RENEW, env.renew(i, to, &agent_id, TTL, false)).await {
            Ok(Some(r)) => Answer::from_response(&r),
            _ => Answer::NoAnswer,
        };
        if answer == Answer::NoAnswer {
            k += 1;
        }
        let event = {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let event = s.on_answer(sent_at, &answer);
            file.publish(s.lease_until());
            event
        };
        if matches!(&event, Event::Refused { reason, .. } if reason == "not_registered") {
            (k, registration) = register(&mut k).await;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(sent_at + RENEW) => {}
            _ = renew_now.notified() => {}
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fence when the lease says so; check a fenced server stays read-only.
async fn guard(
    env: Arc<dyn AgentEnv>,
    addr: InstanceAddr,
    state: Arc<Mutex<LeaseState>>,
    renew_now: Arc<Notify>,
    file: LeaseFile,
) {
    // As the agent's `mark_fenced`: the sentinel need not fence for this lease end.
    let mark_fenced = || {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.mark_fenced();
        file.publish_fenced(s.lease_until());
    };
    let sim = env.sim().clone();
    let mut cfg = ProbeConfig::new("root", "");
    cfg.connect_timeout = Duration::from_millis(200);
    cfg.query_timeout = Duration::from_millis(200);
    let local = sim.connector(Peer::Local(addr.clone()), cfg);
    let conn = local.conn(&addr);
    let mut fenced = false;
    let mut next_check = Instant::now();
    loop {
        let now = Instant::now();
        let (decision, deadline) = {
            let s = state.lock().unwrap_or_else(PoisonError::into_inner);
            (s.must_fence(now), s.next_deadline(now))
        };
        match decision {
            None => fenced = false,
            Some(reason) => {
                let need = if !fenced {
                    true
                } else if now >= next_check {
                    next_check = now + CHECK;
                    sim.writable(&addr).unwrap_or(false)
                } else {
                    false
                };
                // As the agent's `confirm_refusal`: a refusal may predate a promotion of
                // this server, so a writable server is fenced on it only after an answer
                // to a renewal sent once it was seen writable still refuses.
                let need = if need && reason.needs_confirmation() {
                    if sim.process_state(&addr).ok() == Some(crate::mysql::ProcState::Running)
                        && !sim.writable(&addr).unwrap_or(true)
                    {
                        fenced = true;
                        mark_fenced();
                        false
                    } else {
                        let seen = Instant::now();
                        renew_now.notify_one();
                        let until = seen + RENEW;
                        loop {
                            let (fresh, still) = {
                                let s = state.lock().unwrap_or_else(PoisonError::into_inner);
                                (s.answered_since(seen), s.must_fence(Instant::now()).is_some())
                            };
                            if fresh || Instant::now() >= until {
                                if fresh && !still {
                                    env.note(format!(
                                        "agent of {addr}: refusal outdated by a fresh answer; not fencing"
                                    ));
                                }
                                break !fresh || still;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                } else {
                    need
                };
                if need {
                    env.note(format!("agent of {addr}: fencing ({reason})"));
                    match tokio::time::timeout(FENCE_TIMEOUT, fence(&sim, &conn, &addr)).await {
                        Ok(Ok(())) => {
                            env.note(format!("agent of {addr}: fenced ({reason})"));
                            fenced = true;
                            mark_fenced();
                        }
                        Ok(Err(_)) | Err(_) => {
                            // Escalation: mysqld does not confirm the fence in time.
                            if sim.process_state(&addr).ok() != Some(crate::mysql::ProcState::Crashed) {
                                env.note(format!("agent of {addr}: fence not confirmed; killing mysqld ({reason})"));
                                let _ = sim.crash(&addr);
                            }
                            fenced = true;
                            conn.disconnect().await;
                        }
                    }
                }
            }
        }
        let wake = deadline.unwrap_or(now + CHECK).min(now + CHECK);
        tokio::time::sleep_until(wake.max(Instant::now() + Duration::from_millis(1))).await;
    }
}

/// The sentinel of server `i`'s killed agent (`primus_agent::sentinel::run`): at the end
/// of the lease the agent last published in `mine` it fences the server (escalating to
/// a kill of a mysqld that does not answer), unless the agent had found it fenced for
/// that lease end or a restarted agent holds a lease; then it exits. Decided by the real
/// sentinel's [`primus_agent::sentinel::decide`]. Only a dead agent's sentinel is run: a
/// live agent fences first (its sentinel would find the server read-only already).
pub async fn sentinel(env: Arc<dyn AgentEnv>, i: usize, mine: LeaseFile) {
    let addr = env.addr(i);
    let sim = env.sim().clone();
    let mut cfg = ProbeConfig::new("root", "");
    cfg.connect_timeout = Duration::from_millis(200);
    cfg.query_timeout = Duration::from_millis(200);
    let conn = sim.connector(Peer::Local(addr.clone()), cfg).conn(&addr);
    // Lease ends as nanoseconds on one clock (0: none), as in the lease file.
    let base = Instant::now().checked_sub(Duration::from_secs(3600)).unwrap_or_else(Instant::now);
    let ns = |t: Instant| t.saturating_duration_since(base).as_nanos() as u64 + 1;
    let mut fenced_for = 0u64;
    loop {
        let now = Instant::now();
        let (until, agent_fenced) = mine.read();
        let mine_until = until.map_or(0, ns);
        if mine_until != 0 && agent_fenced.map(ns) == Some(mine_until) {
            fenced_for = mine_until;
        }
        let other_holds = env.lease_file(i).is_some_and(|f| f.read().0.is_some_and(|u| u > now));
        match primus_agent::sentinel::decide(ns(now), mine_until, fenced_for, AgentIs::Gone, other_holds, FENCE_TIMEOUT)
        {
            Step::Wait(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            Step::Exit(why) => {
                env.note(format!("sentinel of {addr}: exits ({why})"));
                return;
            }
            Step::Fence { until_ns } => {
                fenced_for = until_ns;
                match tokio::time::timeout(FENCE_TIMEOUT, fence(&sim, &conn, &addr)).await {
                    Ok(Ok(())) => env.note(format!("sentinel of {addr}: lease ran out with no agent; fenced")),
                    _ if sim.process_state(&addr).ok() == Some(crate::mysql::ProcState::Crashed) => {
                        env.note(format!("sentinel of {addr}: lease ran out; mysqld is down (nothing can write)"));
                    }
                    _ => {
                        env.note(format!("sentinel of {addr}: fence not confirmed; killing mysqld"));
                        let _ = sim.crash(&addr);
                        conn.disconnect().await;
                    }
                }
            }
        }
    }
}

/// The agent's fence (`LocalMysql::fence`): kill clients, read-only on, kill again.
async fn fence(sim: &SimMysql, conn: &crate::mysql::SimConn, addr: &InstanceAddr) -> Result<(), String> {
    // Already read-only (the agent learns it with a query, which a paused server does
    // not answer: then the fence times out and escalates).
    let running = sim.process_state(addr).ok() == Some(crate::mysql::ProcState::Running);
    if running && !sim.writable(addr).map_err(|e| e.to_string())? {
        return Ok(());
    }
    let info = conn.server_info().await.map_err(|e| e.to_string())?;
    kill_clients(sim, conn, addr).await?;
    conn.execute(&info.set_read_only_sql(true), FENCE_TIMEOUT).await.map_err(|e| e.to_string())?;
    kill_clients(sim, conn, addr).await
}

async fn kill_clients(sim: &SimMysql, conn: &crate::mysql::SimConn, addr: &InstanceAddr) -> Result<(), String> {
    let ids: Vec<u64> =
        sim.processlist(addr).into_iter().filter(|p| matches!(p.peer, Some(Peer::App(_)))).map(|p| p.id).collect();
    for id in ids {
        // Unknown thread (it ended meanwhile) is fine.
        let _ = conn.execute(&[format!("KILL CONNECTION {id}")], FENCE_TIMEOUT).await;
    }
    Ok(())
}

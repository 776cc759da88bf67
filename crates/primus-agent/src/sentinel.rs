//! The sentinel: a second, tiny process beside the agent that fences the server
//! when the lease the agent held runs out and nobody renewed it — including when
//! the agent itself was killed (`kill -9`, OOM killer, a crash) or is paused.
//!
//! The agent publishes its lease end in a small *lease file* after every renewal
//! answer: `boot id, agent pid + start time, lease end on CLOCK_MONOTONIC`.
//! CLOCK_MONOTONIC is one clock for every process of a boot and never steps with
//! the wall clock, so the sentinel's deadline is the agent's deadline. The sentinel:
//! * sleeps until its agent's last published lease end (re-reading the file then:
//!   a renewed lease has moved it);
//! * at that end, fences the server (read_only = ON, clients killed, SIGKILL of a
//!   mysqld that does not answer, as the agent would) — at once when its agent is
//!   dead or stopped, after `fence.timeout_ms` when the agent is running (it fences
//!   first; the sentinel then only finds the server read-only already);
//! * stands down when another live agent for the same instance (a restarted one)
//!   holds a lease: that agent and its own sentinel own the server from then on;
//! * exits once its agent is dead and the server is fenced (or no lease was held).
//!
//! It never makes a server writable.

use crate::config::Config;
use crate::fence::{self, Escalated, FenceError, LocalMysql};
use crate::seams::LocalServer;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// How often the sentinel looks at the file while no lease is held.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Nanoseconds on CLOCK_MONOTONIC (the clock `Instant` uses on Linux).
pub fn mono_now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec() as u64),
        // CLOCK_MONOTONIC cannot fail on Linux; a zero reads as "no lease".
        Err(_) => 0,
    }
}

/// Maps `Instant`s onto CLOCK_MONOTONIC nanoseconds with one offset, read once, so that
/// one instant always gives the same number. (Reading both clocks at every conversion
/// gave a lease end a few hundred ns off each time: every renewal rewrote the lease file
/// with an "new" end, and the sentinel fenced, and logged, again and again.)
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    instant: Instant,
    ns: u64,
}

impl MonoClock {
    pub fn new() -> MonoClock {
        // CLOCK_MONOTONIC first: the offset errs (by the time between the two reads) on
        // the side of an earlier lease end, never a later one.
        let ns = mono_now_ns();
        MonoClock { instant: Instant::now(), ns }
    }

    /// `instant` as nanoseconds on CLOCK_MONOTONIC.
    pub fn ns(&self, instant: Instant) -> u64 {
        if instant >= self.instant {
            self.ns.saturating_add(instant.duration_since(self.instant).as_nanos() as u64)
        } else {
            self.ns.saturating_sub(self.instant.duration_since(instant).as_nanos() as u64).max(1)
        }
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        MonoClock::new()
    }
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A process as seen in /proc: its state letter and its start time (clock ticks
/// since boot), which tells a process from a later one that reused its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub state: char,
    pub start: u64,
}

pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<ProcInfo> {
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // starttime is field 22 of stat; `rest` starts at field 3.
    let start = fields.get(19)?.parse().ok()?;
    Some(ProcInfo { state, start })
}

/// Alive (not gone, not a zombie) and the same process as `start` says.
fn alive(pid: u32, start: u64) -> Option<ProcInfo> {
    proc_info(pid).filter(|p| p.start == start && !matches!(p.state, 'Z' | 'X' | 'x'))
}

/// One line of the lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub boot_id: String,
    pub pid: u32,
    pub start: u64,
    /// Lease end on CLOCK_MONOTONIC; 0 when this agent never held a lease.
    pub until_ns: u64,
    /// The lease end for which the agent itself found the server read-only (or made
    /// it so) after that end; 0 when none. The sentinel has nothing left to do for
    /// that end: fencing again later could hit a server the coordinators have since
    /// promoted (the agent asks them before it fences on a refusal; the sentinel
    /// cannot). Older sentinels ignore the field.
    pub fenced_ns: u64,
}

impl LeaseRecord {
    pub fn encode(&self) -> String {
        format!(
            "primus-lease v1 boot={} pid={} start={} until_ns={} fenced_ns={}\n",
            self.boot_id, self.pid, self.start, self.until_ns, self.fenced_ns
        )
    }

    pub fn parse(text: &str) -> Option<LeaseRecord> {
        let mut words = text.split_whitespace();
        if words.next()? != "primus-lease" || words.next()? != "v1" {
            return None;
        }
        let mut r = LeaseRecord { boot_id: String::new(), pid: 0, start: 0, until_ns: 0, fenced_ns: 0 };
        for w in words {
            let (k, v) = w.split_once('=')?;
            match k {
                "boot" => r.boot_id = v.to_string(),
                "pid" => r.pid = v.parse().ok()?,
                "start" => r.start = v.parse().ok()?,
                "until_ns" => r.until_ns = v.parse().ok()?,
                "fenced_ns" => r.fenced_ns = v.parse().ok()?,
                _ => {}
            }
        }
        (r.pid > 0 && !r.boot_id.is_empty()).then_some(r)
    }
}

/// Writes the agent's lease end to the lease file, off the async runtime, in the
/// order given; a write replaces the file atomically (write + rename).
pub struct Publisher {
    tx: std::sync::mpsc::Sender<Publish>,
    clock: MonoClock,
}

#[derive(Debug, Clone, Copy)]
enum Publish {
    Until(u64),
    Fenced(u64),
}

impl Publisher {
    pub fn start(path: PathBuf) -> std::io::Result<Publisher> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let me = std::process::id();
        let base = LeaseRecord {
            boot_id: boot_id(),
            pid: me,
            start: proc_info(me).map(|p| p.start).unwrap_or(0),
            until_ns: 0,
            fenced_ns: 0,
        };
        // Fail now, with the path in the message, rather than on the first renewal.
        write_atomic(&path, &base.encode())?;
        let (tx, rx) = std::sync::mpsc::channel::<Publish>();
        std::thread::Builder::new().name("lease-file".into()).spawn(move || {
            let mut errors = 0u64;
            let mut written = Some((0u64, 0u64));
            let (mut until_ns, mut fenced_ns) = (0u64, 0u64);
            while let Ok(first) = rx.recv() {
                // Only the newest values matter, and only when they changed (a failed
                // renewal publishes the same lease end again).
                for p in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    match p {
                        Publish::Until(u) => until_ns = u,
                        Publish::Fenced(u) => fenced_ns = u,
                    }
                }
                if written == Some((until_ns, fenced_ns)) {
                    continue;
                }
                let rec = LeaseRecord { until_ns, fenced_ns, ..base.clone() };
                match write_atomic(&path, &rec.encode()) {
                    Ok(()) => written = Some((until_ns, fenced_ns)),
                    Err(e) => {
                        written = None;
                        errors += 1;
                        if errors == 1 || errors.is_multiple_of(100) {
                            tracing::error!(path = %path.display(), error = %e, errors,
                                "cannot write the lease file: the sentinel may fence the server at the old lease end");
                        }
                    }
                }
            }
        })?;
        Ok(Publisher { tx, clock: MonoClock::new() })
    }

    /// Publish the lease end (`None`: no lease ever held).
    pub fn publish(&self, until: Option<Instant>) {
        let _ = self.tx.send(Publish::Until(until.map_or(0, |u| self.clock.ns(u))));
    }

    /// Publish that the agent found the server read-only (or made it so) after the
    /// lease that ended at `until` ran out.
    pub fn publish_fenced(&self, until: Instant) {
        let _ = self.tx.send(Publish::Fenced(self.clock.ns(until)));
    }
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn read_record(path: &Path) -> Option<LeaseRecord> {
    let text = tokio::fs::read_to_string(path).await.ok()?;
    LeaseRecord::parse(&text)
}

/// What the sentinel does next, from what it knows (pure; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Look again after this long.
    Wait(Duration),
    /// Fence the server now (its agent's lease ended at `until_ns`).
    Fence { until_ns: u64 },
    /// Nothing left to guard: exit, saying why.
    Exit(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentIs {
    Running,
    /// SIGSTOPped or traced: it cannot fence.
    Stopped,
    Gone,
}

/// The decision. `mine_until_ns`: the last lease end its own agent published (0 =
/// none); `fenced_for`: the lease end the sentinel already fenced for;
/// `other_holds`: another live agent for this instance holds a lease now.
pub fn decide(
    now_ns: u64,
    mine_until_ns: u64,
    fenced_for: u64,
    agent: AgentIs,
    other_holds: bool,
    grace: Duration,
) -> Step {
    if other_holds && agent == AgentIs::Gone {
        return Step::Exit("a restarted agent holds the lease now");
    }
    if mine_until_ns == 0 {
        return if agent == AgentIs::Gone {
            Step::Exit("the agent is gone and never held a lease")
        } else {
            Step::Wait(IDLE_POLL)
        };
    }
    if now_ns < mine_until_ns {
        return Step::Wait(Duration::from_nanos(mine_until_ns - now_ns).min(Duration::from_secs(5)));
    }
    if fenced_for == mine_until_ns || other_holds {
        return if agent == AgentIs::Gone {
            Step::Exit("the lease ended and the server is fenced")
        } else {
            Step::Wait(IDLE_POLL)
        };
    }
    if agent == AgentIs::Running {
        let due = mine_until_ns.saturating_add(grace.as_nanos() as u64);
        if now_ns < due {
            return Step::Wait(Duration::from_nanos(due - now_ns));
        }
    }
    Step::Fence { until_ns: mine_until_ns }
}

/// The lease file's path from the config (default under /run/primus-agent).
pub fn lease_file(cfg: &Config) -> PathBuf {
    cfg.fence.lease_file.clone().unwrap_or_else(|| {
        let name: String = format!("{}-{}", cfg.cluster, cfg.instance)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
            .collect();
        PathBuf::from("/run/primus-agent").join(format!("{name}.lease"))
    })
}

/// Run the sentinel for the agent `agent_pid` until there is nothing left to guard.
pub async fn run(cfg: Config, agent_pid: u32) -> Result<(), String> {
    let path = lease_file(&cfg);
    let Some(agent_start) = proc_info(agent_pid).map(|p| p.start) else {
        return Err(format!("agent pid {agent_pid} is not running"));
    };
    let boot = boot_id();
    let password = cfg.mysql.password().map_err(|e| format!("mysql password: {e}"))?;
    let mut mysql = LocalMysql::new(&cfg.mysql, password);
    let grace = cfg.fence.timeout();
    let mut mine_until_ns = 0u64;
    let mut fenced_for = 0u64;
    // What the last fence found: said at INFO when it changes, at DEBUG when it repeats.
    let mut last_found: Option<Found> = None;
    tracing::info!(agent_pid, lease_file = %path.display(), "sentinel started");
    loop {
        let rec = read_record(&path).await.filter(|r| r.boot_id == boot);
        let now_ns = mono_now_ns();
        let mut other_holds = false;
        if let Some(r) = &rec {
            if r.pid == agent_pid && r.start == agent_start {
                if r.until_ns != mine_until_ns {
                    tracing::debug!(until_ns = r.until_ns, "lease end moved");
                }
                mine_until_ns = r.until_ns;
                // The agent handled this lease end itself: count it as fenced.
                if r.fenced_ns != 0 && r.fenced_ns == mine_until_ns && fenced_for != mine_until_ns {
                    tracing::debug!(until_ns = r.until_ns, "the agent found the server read-only after this lease end");
                    fenced_for = mine_until_ns;
                }
            } else if r.until_ns > now_ns && alive(r.pid, r.start).is_some() {
                other_holds = true;
            }
        }
        let agent = match alive(agent_pid, agent_start) {
            None => AgentIs::Gone,
            Some(p) if matches!(p.state, 'T' | 't') => AgentIs::Stopped,
            Some(_) => AgentIs::Running,
        };
        match decide(now_ns, mine_until_ns, fenced_for, agent, other_holds, grace) {
            Step::Wait(d) => tokio::time::sleep(d.max(Duration::from_millis(1))).await,
            Step::Exit(why) => {
                tracing::info!(agent_pid, why, "sentinel exiting");
                return Ok(());
            }
            Step::Fence { until_ns } => {
                let late_ms = now_ns.saturating_sub(until_ns) / 1_000_000;
                let found = fence_once(&cfg, &mut mysql, agent, late_ms, last_found).await;
                last_found = Some(found);
                fenced_for = until_ns;
            }
        }
    }
}

/// What a fence by the sentinel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Fenced,
    ReadOnlyAlready,
    Down,
    Failed,
}

async fn fence_once(cfg: &Config, mysql: &mut LocalMysql, agent: AgentIs, late_ms: u64, last: Option<Found>) -> Found {
    let started = Instant::now();
    let again = |f: Found| last == Some(f);
    match mysql.fence_within(cfg.fence.timeout()).await {
        Ok(r) if r.was_writable => {
            tracing::warn!(
                ?agent,
                killed_connections = r.killed,
                late_ms,
                took_ms = started.elapsed().as_millis() as u64,
                "SENTINEL FENCED: the lease ran out with no agent renewing it; server set read-only"
            );
            Found::Fenced
        }
        Ok(_) => {
            if again(Found::ReadOnlyAlready) {
                tracing::debug!(?agent, late_ms, "the lease ran out; the server is read-only already");
            } else {
                tracing::info!(?agent, late_ms, "the lease ran out; the server is read-only already");
            }
            Found::ReadOnlyAlready
        }
        Err(FenceError::Down(m)) => {
            if again(Found::Down) {
                tracing::debug!(?agent, detail = %m, "the lease ran out; mysqld is not accepting connections");
            } else {
                tracing::info!(?agent, detail = %m,
                    "the lease ran out; mysqld is not accepting connections (nothing can write)");
            }
            Found::Down
        }
        Err(e @ FenceError::Sql { .. }) => {
            tracing::error!(?agent, error = %e, "the lease ran out and the sentinel cannot fence the server");
            Found::Failed
        }
        Err(FenceError::Timeout { .. }) => {
            match fence::escalate(&cfg.fence, cfg.mysqld_port()).await {
                Ok(Escalated::Killed { pid }) => tracing::error!(
                    pid,
                    late_ms,
                    "SENTINEL ESCALATED: mysqld did not answer the fence in time; sent it SIGKILL"
                ),
                Ok(Escalated::Blocked { port }) => {
                    tracing::error!(
                        port,
                        late_ms,
                        "SENTINEL ESCALATED: mysqld did not answer the fence in time; its TCP port is blocked"
                    );
                    // Until mysqld answers: then fence it, and lift the block.
                    loop {
                        tokio::time::sleep(cfg.fence.check_interval()).await;
                        if mysql.fence_within(cfg.fence.timeout()).await.is_ok() {
                            match fence::unblock_port(&cfg.fence, port).await {
                                Ok(()) => {
                                    tracing::warn!(port, "SENTINEL UNBLOCKED: the server answers and is read-only");
                                    break;
                                }
                                Err(e) => tracing::error!(port, error = %e, "cannot lift the port block; retrying"),
                            }
                        } else {
                            mysql.reset();
                        }
                    }
                }
                Ok(other) => tracing::error!(?other, "mysqld did not answer the sentinel's fence in time"),
                Err(m) => {
                    tracing::error!(error = %m, "mysqld did not answer the fence in time and could not be killed")
                }
            }
            Found::Fenced
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_millis(500);
    const S: u64 = 1_000_000_000;

    #[test]
    fn lease_record_round_trips_and_rejects_garbage() {
        let r = LeaseRecord { boot_id: "b-1".into(), pid: 42, start: 7, until_ns: 123, fenced_ns: 120 };
        assert_eq!(LeaseRecord::parse(&r.encode()), Some(r));
        // A file written by an older agent has no fenced_ns: nothing handled.
        let old = LeaseRecord::parse("primus-lease v1 boot=b-1 pid=42 start=7 until_ns=123\n");
        assert_eq!(old.map(|r| (r.until_ns, r.fenced_ns)), Some((123, 0)));
        for bad in
            ["", "garbage", "primus-lease v2 boot=b pid=1", "primus-lease v1 boot=b pid=x", "primus-lease v1 pid=3"]
        {
            assert_eq!(LeaseRecord::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stat_with_spaces_and_parens_in_comm_parses() {
        let stat = "123 (primus (agent) x) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(ProcInfo { state: 'S', start: 98765 }));
        assert_eq!(parse_stat("nonsense"), None);
    }

    #[test]
    fn own_process_is_seen_running_with_a_start_time() {
        let me = proc_info(std::process::id()).expect("own /proc entry");
        assert!(matches!(me.state, 'R' | 'S'));
        assert!(alive(std::process::id(), me.start).is_some());
        assert!(alive(std::process::id(), me.start + 1).is_none(), "another start time is another process");
    }

    #[test]
    fn waits_while_the_lease_runs_and_fences_at_its_end_when_the_agent_is_gone() {
        assert_eq!(decide(5 * S, 6 * S, 0, AgentIs::Gone, false, G), Step::Wait(Duration::from_secs(1)));
        assert_eq!(decide(6 * S, 6 * S, 0, AgentIs::Gone, false, G), Step::Fence { until_ns: 6 * S });
        assert_eq!(decide(6 * S, 6 * S, 0, AgentIs::Stopped, false, G), Step::Fence { until_ns: 6 * S });
    }

    #[test]
    fn a_running_agent_gets_the_fence_timeout_to_fence_first() {
        assert_eq!(decide(6 * S, 6 * S, 0, AgentIs::Running, false, G), Step::Wait(G));
        assert_eq!(decide(6 * S + 500_000_000, 6 * S, 0, AgentIs::Running, false, G), Step::Fence { until_ns: 6 * S });
    }

    #[test]
    fn fences_once_per_lease_end_then_exits_when_the_agent_is_gone() {
        assert_eq!(decide(7 * S, 6 * S, 6 * S, AgentIs::Running, false, G), Step::Wait(IDLE_POLL));
        assert!(matches!(decide(7 * S, 6 * S, 6 * S, AgentIs::Gone, false, G), Step::Exit(_)));
    }

    #[test]
    fn a_restarted_agent_holding_a_lease_relieves_the_old_sentinel() {
        // Before the old lease ends, and after: the new agent owns the server.
        assert!(matches!(decide(5 * S, 6 * S, 0, AgentIs::Gone, true, G), Step::Exit(_)));
        assert!(matches!(decide(7 * S, 6 * S, 0, AgentIs::Gone, true, G), Step::Exit(_)));
        // A new agent without a lease yet relieves nobody: the old lease end stands.
        assert_eq!(decide(6 * S, 6 * S, 0, AgentIs::Gone, false, G), Step::Fence { until_ns: 6 * S });
    }

    #[test]
    fn no_lease_ever_held_means_nothing_to_guard() {
        assert_eq!(decide(5 * S, 0, 0, AgentIs::Running, false, G), Step::Wait(IDLE_POLL));
        assert!(matches!(decide(5 * S, 0, 0, AgentIs::Gone, false, G), Step::Exit(_)));
    }

    #[test]
    fn instants_map_onto_the_monotonic_clock() {
        let clock = MonoClock::new();
        let now = Instant::now();
        let a = clock.ns(now + Duration::from_secs(2));
        let b = mono_now_ns();
        assert!(a > b + 1_900_000_000 && a < b + 2_100_000_000, "{a} vs {b}");
        assert!(clock.ns(now) <= mono_now_ns());
    }

    #[test]
    fn the_same_instant_always_maps_to_the_same_nanosecond() {
        let clock = MonoClock::new();
        let until = Instant::now() + Duration::from_millis(1500);
        let first = clock.ns(until);
        for _ in 0..1000 {
            assert_eq!(clock.ns(until), first, "a lease end that did not move was published as a new one");
        }
    }
}

//! Fault schedules: what happens when, drawn from a seed or written by hand (named
//! regressions), printable and parseable so a failing one can be replayed and shrunk.

use crate::run::Options;
use primus_types::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::fmt;

/// A host of the simulation, for network cuts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Party {
    Coord(NodeId),
    /// A MySQL host (the server and its agent), by index (0: the first primary).
    Server(usize),
    /// The application clients' hosts.
    Apps,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Coord(n) => write!(f, "c{n}"),
            Party::Server(i) => write!(f, "db{}", i + 1),
            Party::Apps => write!(f, "apps"),
        }
    }
}

impl std::str::FromStr for Party {
    type Err = String;
    fn from_str(s: &str) -> Result<Party, String> {
        if s == "apps" {
            return Ok(Party::Apps);
        }
        if let Some(n) = s.strip_prefix('c') {
            return n.parse().map(Party::Coord).map_err(|_| format!("bad party {s:?}"));
        }
        if let Some(n) = s.strip_prefix("db") {
            return n
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Party::Server(n - 1))
                .ok_or(format!("bad party {s:?}"));
        }
        Err(format!("bad party {s:?} (c1, db2, apps)"))
    }
}

/// One fault (or operator action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a mysqld (its agent lives on).
    CrashServer(usize),
    RestartServer(usize),
    PauseServer(usize),
    ResumeServer(usize),
    /// The whole host: mysqld and its agent.
    CrashHost(usize),
    RestartHost(usize),
    /// kill -9 of a server's agent alone (mysqld and the agent's sentinel live on).
    CrashAgent(usize),
    RestartAgent(usize),
    CrashCoord(NodeId),
    RestartCoord(NodeId),
    /// SIGSTOP of a primusd.
    PauseCoord(NodeId),
    ResumeCoord(NodeId),
    /// Silent cut between these parties and all others.
    Partition(Vec<Party>),
    /// Silent cut between two parties.
    Cut(Party, Party),
    /// The link between two coordinators loses this percentage of messages, both ways
    /// (Raft RPCs and observation reports time out), until healed.
    Lossy(NodeId, NodeId, u8),
    /// The link between a server's agent and a coordinator loses this percentage of
    /// requests and, independently, of answers (a renewal granted whose answer is
    /// lost), until healed.
    LossyAgent(usize, NodeId, u8),
    /// Every cut healed.
    Heal,
    ClockStep(NodeId, i64),
    ClockDrift(NodeId, i64),
    /// A replica's SQL thread takes this long per transaction.
    SlowReplica(usize, u64),
    /// Every statement on a server waits this long before it runs (0: no longer), and
    /// runs even when its caller gave up.
    SlowStatements(usize, u64),
    Switchover,
    Ack,
    /// An operator puts a server (`Some`) or the whole cluster (`None`) in maintenance
    /// for this many ms (by the coordinators' wall clocks, which may be stepped).
    Maintenance(Option<usize>, u64),
    /// ... and ends it early.
    EndMaintenance(Option<usize>),
    /// Everything healed, restarted and resumed (the end of every schedule).
    HealAll,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = |i: &usize| format!("db{}", i + 1);
        match self {
            Fault::CrashServer(i) => write!(f, "crash {}", db(i)),
            Fault::RestartServer(i) => write!(f, "restart {}", db(i)),
            Fault::PauseServer(i) => write!(f, "pause {}", db(i)),
            Fault::ResumeServer(i) => write!(f, "resume {}", db(i)),
            Fault::CrashHost(i) => write!(f, "crash-host {}", db(i)),
            Fault::RestartHost(i) => write!(f, "restart-host {}", db(i)),
            Fault::CrashAgent(i) => write!(f, "crash-agent {}", db(i)),
            Fault::RestartAgent(i) => write!(f, "restart-agent {}", db(i)),
            Fault::CrashCoord(n) => write!(f, "crash c{n}"),
            Fault::RestartCoord(n) => write!(f, "restart c{n}"),
            Fault::PauseCoord(n) => write!(f, "pause c{n}"),
            Fault::ResumeCoord(n) => write!(f, "resume c{n}"),
            Fault::Partition(side) => {
                let s: Vec<String> = side.iter().map(ToString::to_string).collect();
                write!(f, "partition {}", s.join(","))
            }
            Fault::Cut(a, b) => write!(f, "cut {a} {b}"),
            Fault::Lossy(a, b, p) => write!(f, "lossy c{a} c{b} {p}"),
            Fault::LossyAgent(i, c, p) => write!(f, "lossy-agent {} c{c} {p}", db(i)),
            Fault::Heal => write!(f, "heal"),
            Fault::ClockStep(n, ms) => write!(f, "clock-step c{n} {ms}"),
            Fault::ClockDrift(n, ppm) => write!(f, "clock-drift c{n} {ppm}"),
            Fault::SlowReplica(i, ms) => write!(f, "slow {} {ms}", db(i)),
            Fault::SlowStatements(i, ms) => write!(f, "slow-sql {} {ms}", db(i)),
            Fault::Switchover => write!(f, "switchover"),
            Fault::Ack => write!(f, "ack"),
            Fault::Maintenance(i, ms) => write!(f, "maintenance {} {ms}", i.as_ref().map_or("cluster".into(), db)),
            Fault::EndMaintenance(i) => write!(f, "end-maintenance {}", i.as_ref().map_or("cluster".into(), db)),
            Fault::HealAll => write!(f, "heal-all"),
        }
    }
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let w: Vec<&str> = s.split_whitespace().collect();
        let party = |i: usize| -> Result<Party, String> { w.get(i).ok_or(format!("{s:?}: missing argument"))?.parse() };
        let server = |i: usize| match party(i)? {
            Party::Server(n) => Ok(n),
            p => Err(format!("{s:?}: {p} is not a server")),
        };
        let coord = |i: usize| match party(i)? {
            Party::Coord(n) => Ok(n),
            p => Err(format!("{s:?}: {p} is not a coordinator")),
        };
        let num = |i: usize| -> Result<i64, String> {
            w.get(i).and_then(|v| v.parse().ok()).ok_or(format!("{s:?}: argument {i} is not a number"))
        };
        let on_server = w.get(1).is_some_and(|p| p.starts_with("db"));
        Ok(match w.first().copied() {
            Some("crash") if on_server => Fault::CrashServer(server(1)?),
            Some("crash") => Fault::CrashCoord(coord(1)?),
            Some("restart") if on_server => Fault::RestartServer(server(1)?),
            Some("restart") => Fault::RestartCoord(coord(1)?),
            Some("pause") if on_server => Fault::PauseServer(server(1)?),
            Some("pause") => Fault::PauseCoord(coord(1)?),
            Some("resume") if on_server => Fault::ResumeServer(server(1)?),
            Some("resume") => Fault::ResumeCoord(coord(1)?),
            Some("crash-host") => Fault::CrashHost(server(1)?),
            Some("restart-host") => Fault::RestartHost(server(1)?),
            Some("crash-agent") => Fault::CrashAgent(server(1)?),
            Some("restart-agent") => Fault::RestartAgent(server(1)?),
            Some("partition") => Fault::Partition(
                w.get(1).ok_or(format!("{s:?}: no side"))?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            ),
            Some("cut") => Fault::Cut(party(1)?, party(2)?),
            Some("lossy") => Fault::Lossy(coord(1)?, coord(2)?, num(3)?.clamp(0, 100) as u8),
            Some("lossy-agent") => Fault::LossyAgent(server(1)?, coord(2)?, num(3)?.clamp(0, 100) as u8),
            Some("heal") => Fault::Heal,
            Some("clock-step") => Fault::ClockStep(coord(1)?, num(2)?),
            Some("clock-drift") => Fault::ClockDrift(coord(1)?, num(2)?),
            Some("slow") => Fault::SlowReplica(server(1)?, num(2)?.max(0) as u64),
            Some("slow-sql") => Fault::SlowStatements(server(1)?, num(2)?.max(0) as u64),
            Some("switchover") => Fault::Switchover,
            Some("ack") => Fault::Ack,
            Some("maintenance") if w.get(1) == Some(&"cluster") => Fault::Maintenance(None, num(2)?.max(0) as u64),
            Some("maintenance") => Fault::Maintenance(Some(server(1)?), num(2)?.max(0) as u64),
            Some("end-maintenance") if w.get(1) == Some(&"cluster") => Fault::EndMaintenance(None),
            Some("end-maintenance") => Fault::EndMaintenance(Some(server(1)?)),
            Some("heal-all") => Fault::HealAll,
            _ => return Err(format!("unknown fault {s:?}")),
        })
    }
}

/// A fault at a time (ms after the faults start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub at_ms: u64,
    pub fault: Fault,
}

/// A whole schedule, sorted by time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub faults: Vec<Timed>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.faults {
            writeln!(f, "  @{} {}", t.at_ms, t.fault)?;
        }
        Ok(())
    }
}

impl Schedule {
    /// Parse `@MS FAULT` lines (`;` also separates entries).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let mut faults = Vec::new();
        for line in text.split(['\n', ';']).map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (at, rest) = line
                .strip_prefix('@')
                .and_then(|l| l.split_once(' '))
                .ok_or(format!("{line:?}: expected `@MS FAULT`"))?;
            let at_ms = at.parse().map_err(|_| format!("{line:?}: bad time"))?;
            faults.push(Timed { at_ms, fault: rest.trim().parse()? });
        }
        faults.sort_by_key(|t| t.at_ms);
        Ok(Schedule { faults })
    }

    /// A random schedule for `opts`: `opts.faults` faults, each with its undo a little
    /// later (pauses resumed, crashes restarted, cuts healed), over `opts.fault_ms`.
    pub fn draw(rng: &mut StdRng, opts: &Options) -> Schedule {
        let (servers, coords) = crate::run::parties(opts);
        let span = opts.fault_ms.max(1000);
        let mut faults = Vec::new();
        for _ in 0..opts.faults {
            let at = rng.gen_range(0..span * 3 / 4);
            let hold = rng.gen_range(100..4000u64);
            let undo = (at + hold).min(span);
            let s = rng.gen_range(0..servers);
            let c = *coords.choose(rng).unwrap_or(&1);
            let (fault, undo_fault) = match rng.gen_range(0..17) {
                0 | 1 => (Fault::CrashServer(s), Some(Fault::RestartServer(s))),
                2 => (Fault::PauseServer(s), Some(Fault::ResumeServer(s))),
                3 => (Fault::CrashHost(s), Some(Fault::RestartHost(s))),
                4 => (Fault::CrashCoord(c), Some(Fault::RestartCoord(c))),
                5 => (Fault::PauseCoord(c), Some(Fault::ResumeCoord(c))),
                6 | 7 => {
                    // A random side: some coordinators and some servers.
                    let mut all: Vec<Party> = coords.iter().map(|n| Party::Coord(*n)).collect();
                    all.extend((0..servers).map(Party::Server));
                    all.push(Party::Apps);
                    all.shuffle(rng);
                    let k = rng.gen_range(1..=all.len() / 2);
                    (Fault::Partition(all[..k].to_vec()), Some(Fault::Heal))
                }
                8 => {
                    // The primary's host and the Raft leader's (or any coordinator) together.
                    (Fault::Partition(vec![Party::Server(0), Party::Coord(c)]), Some(Fault::Heal))
                }
                9 => {
                    let a = Party::Server(s);
                    let b = if rng.gen_bool(0.5) { Party::Coord(c) } else { Party::Server(rng.gen_range(0..servers)) };
                    if a == b {
                        (Fault::Cut(a, Party::Apps), Some(Fault::Heal))
                    } else {
                        (Fault::Cut(a, b), Some(Fault::Heal))
                    }
                }
                10 => (Fault::ClockStep(c, rng.gen_range(-5000..5000)), None),
                11 => (Fault::ClockDrift(c, rng.gen_range(-500..500)), None),
                12 if rng.gen_bool(0.5) => (Fault::SlowReplica(s, rng.gen_range(5..200)), None),
                // Every statement on a server slow: some shorter, some longer than the
                // coordinators' query timeout and the agents' fence bound.
                12 => (Fault::SlowStatements(s, rng.gen_range(20..1500)), Some(Fault::SlowStatements(s, 0))),
                13 => (if rng.gen_bool(0.7) { Fault::Switchover } else { Fault::Ack }, None),
                // The agent alone: its sentinel fences at the end of its last lease.
                14 => (Fault::CrashAgent(s), Some(Fault::RestartAgent(s))),
                15 if rng.gen_bool(0.5) => {
                    // A flaky link between two coordinators.
                    let mut two: Vec<NodeId> = coords.clone();
                    two.shuffle(rng);
                    (Fault::Lossy(two[0], two[1], rng.gen_range(10..=60)), Some(Fault::Heal))
                }
                // A flaky link between an agent and a coordinator.
                15 => (Fault::LossyAgent(s, c, rng.gen_range(10..=60)), Some(Fault::Heal)),
                _ => {
                    // Maintenance of a server or of the whole cluster, for a while; ended
                    // early by the operator half the time (else it runs out on its own).
                    let who = rng.gen_bool(0.7).then_some(s);
                    let ms = rng.gen_range(500..6000u64);
                    (Fault::Maintenance(who, ms), rng.gen_bool(0.5).then_some(Fault::EndMaintenance(who)))
                }
            };
            faults.push(Timed { at_ms: at, fault });
            if let Some(u) = undo_fault {
                faults.push(Timed { at_ms: undo, fault: u });
            }
        }
        faults.sort_by_key(|t| t.at_ms);
        Schedule { faults }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_drawn_schedule_prints_and_parses_back_to_itself() {
        for seed in 0..50 {
            let opts = Options::from_seed(seed, 20_000);
            let s = Schedule::draw(&mut StdRng::seed_from_u64(seed), &opts);
            let again = Schedule::parse(&s.to_string()).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{s}"));
            assert_eq!(again, s, "seed {seed}");
        }
    }
}

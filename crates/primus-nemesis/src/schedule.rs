//! Fault schedules drawn from a seed: the same seed always gives the same schedule
//! (printed at the start of a run). Targets are named by role ("the primary", "the
//! Raft leader") and resolved when the fault is injected, so a schedule means the
//! same thing whatever happened before it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// Who a fault hits, resolved at injection time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The MariaDB host the coordinators name as primary.
    Primary,
    /// A MariaDB host other than the primary (`pick` chooses among them).
    Replica(u64),
    /// The coordinator that leads the Raft group.
    Leader,
    /// A coordinator that does not lead (`pick` chooses among them).
    Follower(u64),
    /// MariaDB host `i` (0-based).
    Server(usize),
    /// Coordinator `n` (1-based node id).
    Coord(u64),
    /// Application client host `i`.
    Client(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => write!(f, "primary"),
            Role::Replica(_) => write!(f, "a replica"),
            Role::Leader => write!(f, "leader"),
            Role::Follower(_) => write!(f, "a follower"),
            Role::Server(i) => write!(f, "db{i}"),
            Role::Coord(n) => write!(f, "c{n}"),
            Role::Client(i) => write!(f, "client{i}"),
        }
    }
}

/// One fault or operator action. Each is undone at the end of its episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a mysqld (its agent lives on); restarted read-only at the end, as
    /// a service manager with `read_only = ON` in my.cnf would.
    KillMysqld(Role),
    /// SIGSTOP of a mysqld, SIGCONT at the end (restarted if its agent killed it).
    StopMysqld(Role),
    /// kill -9 of an agent (its sentinel lives on); restarted at the end.
    KillAgent(Role),
    StopAgent(Role),
    /// kill -9 of a primusd; restarted at the end.
    KillPrimusd(Role),
    StopPrimusd(Role),
    /// Silent cut of these hosts from every other host (both ways), healed at the end.
    Partition(Vec<Role>),
    /// Silent loss of everything the first host sends to the second.
    OneWay(Role, Role),
    /// The wall clock of a host's primusd or agent stepped by this many seconds.
    ClockStep(Role, i64),
    /// `primusctl switchover` (no target).
    Switchover,
    /// Maintenance on an instance, ended at the end of the episode.
    Maintenance(Role),
    /// `primusctl ack` of the latest failover (lifts the anti-flap block).
    Ack,
}

impl Fault {
    /// The fault's kind, one row of the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillMysqld(_) => "kill -9 mysqld",
            Fault::StopMysqld(_) => "SIGSTOP mysqld",
            Fault::KillAgent(_) => "kill -9 agent",
            Fault::StopAgent(_) => "SIGSTOP agent",
            Fault::KillPrimusd(_) => "kill -9 primusd",
            Fault::StopPrimusd(_) => "SIGSTOP primusd",
            Fault::Partition(_) => "partition",
            Fault::OneWay(..) => "one-way cut",
            Fault::ClockStep(..) => "clock step",
            Fault::Switchover => "switchover",
            Fault::Maintenance(_) => "maintenance",
            Fault::Ack => "ack",
        }
    }

    /// Every kind, in report order.
    pub const KINDS: [&'static str; 12] = [
        "kill -9 mysqld",
        "SIGSTOP mysqld",
        "kill -9 agent",
        "SIGSTOP agent",
        "kill -9 primusd",
        "SIGSTOP primusd",
        "partition",
        "one-way cut",
        "clock step",
        "switchover",
        "maintenance",
        "ack",
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillMysqld(r) => write!(f, "kill -9 mysqld of {r}"),
            Fault::StopMysqld(r) => write!(f, "SIGSTOP mysqld of {r}"),
            Fault::KillAgent(r) => write!(f, "kill -9 agent of {r}"),
            Fault::StopAgent(r) => write!(f, "SIGSTOP agent of {r}"),
            Fault::KillPrimusd(r) => write!(f, "kill -9 primusd {r}"),
            Fault::StopPrimusd(r) => write!(f, "SIGSTOP primusd {r}"),
            Fault::Partition(rs) => {
                let names: Vec<String> = rs.iter().map(Role::to_string).collect();
                write!(f, "partition {{{}}} from the rest", names.join(", "))
            }
            Fault::OneWay(a, b) => write!(f, "drop {a} -> {b}"),
            Fault::ClockStep(r, s) => write!(f, "wall clock of {r} {s:+} s"),
            Fault::Switchover => write!(f, "switchover"),
            Fault::Maintenance(r) => write!(f, "maintenance on {r}"),
            Fault::Ack => write!(f, "ack the latest failover"),
        }
    }
}

/// A fault injected at `at_ms` (from the schedule's start) and undone `hold_ms` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub at_ms: u64,
    pub hold_ms: u64,
    pub fault: Fault,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub seconds: u64,
    pub coordinators: usize,
    pub servers: usize,
    pub clients: usize,
    /// The cluster runs in semi-sync no-loss mode.
    pub no_loss: bool,
    pub episodes: Vec<Episode>,
}

impl Schedule {
    /// The schedule of `seed`: episodes from 2 s in (the workload warms up first)
    /// until 3 s before the end, some overlapping, every one undone by the end.
    pub fn generate(seed: u64, seconds: u64, coordinators: usize) -> Schedule {
        let servers = 3;
        let clients = 2;
        let mut rng = StdRng::seed_from_u64(seed);
        let no_loss = rng.gen_bool(0.5);
        let end_ms = seconds * 1000;
        let mut episodes = Vec::new();
        let mut t = 2000u64;
        while t + 3000 < end_ms {
            let fault = draw(&mut rng, coordinators, servers, clients);
            let hold_ms = match fault {
                Fault::Switchover | Fault::Ack => 0,
                _ => rng.gen_range(1500..8000u64).min(end_ms.saturating_sub(1000 + t)),
            };
            episodes.push(Episode { at_ms: t, hold_ms, fault });
            t += rng.gen_range(1000..5000u64);
        }
        Schedule { seed, seconds, coordinators, servers, clients, no_loss, episodes }
    }

    /// What the run prints first.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "schedule seed {} ({} s, {} coordinators, {} MariaDB servers with agents, {} clients, {}):\n",
            self.seed,
            self.seconds,
            self.coordinators,
            self.servers,
            self.clients,
            if self.no_loss { "semi-sync no-loss mode" } else { "asynchronous replication" }
        );
        for e in &self.episodes {
            if e.hold_ms == 0 {
                s.push_str(&format!("  @{:>6} ms  {}\n", e.at_ms, e.fault));
            } else {
                s.push_str(&format!("  @{:>6} ms  {}  (for {} ms)\n", e.at_ms, e.fault, e.hold_ms));
            }
        }
        s
    }
}

fn draw(rng: &mut StdRng, coordinators: usize, servers: usize, clients: usize) -> Fault {
    let server = |rng: &mut StdRng| if rng.gen_bool(0.65) { Role::Primary } else { Role::Replica(rng.gen()) };
    let coord = |rng: &mut StdRng| if rng.gen_bool(0.6) { Role::Leader } else { Role::Follower(rng.gen()) };
    let any_host = |rng: &mut StdRng| match rng.gen_range(0..3) {
        0 => Role::Server(rng.gen_range(0..servers)),
        1 => Role::Coord(rng.gen_range(1..=coordinators as u64)),
        _ => Role::Client(rng.gen_range(0..clients)),
    };
    // Weights: the faults that lead to failovers most often, then the rest.
    let weights: [(u32, u8); 12] =
        [(14, 0), (8, 1), (5, 2), (4, 3), (10, 4), (7, 5), (16, 6), (8, 7), (6, 8), (8, 9), (5, 10), (4, 11)];
    let total: u32 = weights.iter().map(|w| w.0).sum();
    let mut roll = rng.gen_range(0..total);
    let mut which = 0;
    for (w, k) in weights {
        if roll < w {
            which = k;
            break;
        }
        roll -= w;
    }
    match which {
        0 => Fault::KillMysqld(server(rng)),
        1 => Fault::StopMysqld(server(rng)),
        2 => Fault::KillAgent(server(rng)),
        3 => Fault::StopAgent(server(rng)),
        4 => Fault::KillPrimusd(coord(rng)),
        5 => Fault::StopPrimusd(coord(rng)),
        6 => Fault::Partition(match rng.gen_range(0..5) {
            0 => vec![Role::Primary],
            1 => vec![Role::Leader],
            2 => vec![Role::Primary, Role::Leader],
            // The primary keeps one client: the split-brain case fencing must stop.
            3 => vec![Role::Primary, Role::Client(rng.gen_range(0..clients))],
            _ => {
                let a = any_host(rng);
                let b = any_host(rng);
                if a == b || rng.gen_bool(0.5) {
                    vec![a]
                } else {
                    vec![a, b]
                }
            }
        }),
        7 => {
            let a = any_host(rng);
            let mut b = any_host(rng);
            while b == a {
                b = any_host(rng);
            }
            Fault::OneWay(a, b)
        }
        8 => {
            let who = if rng.gen_bool(0.5) { coord(rng) } else { server(rng) };
            let secs = rng.gen_range(5..120i64) * if rng.gen_bool(0.5) { 1 } else { -1 };
            Fault::ClockStep(who, secs)
        }
        9 => Fault::Switchover,
        10 => Fault::Maintenance(server(rng)),
        _ => Fault::Ack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_every_fault_ends_before_the_schedule() {
        for seed in 0..200 {
            let a = Schedule::generate(seed, 30, 3);
            assert_eq!(a, Schedule::generate(seed, 30, 3));
            assert!(!a.episodes.is_empty());
            for e in &a.episodes {
                assert!(e.at_ms + e.hold_ms <= 29_000, "seed {seed}: {e:?}");
            }
        }
        assert_ne!(Schedule::generate(1, 30, 3), Schedule::generate(2, 30, 3));
        let kinds: std::collections::BTreeSet<&str> =
            (0..200).flat_map(|s| Schedule::generate(s, 30, 3).episodes).map(|e| e.fault.kind()).collect();
        assert_eq!(kinds.len(), Fault::KINDS.len(), "200 seeds draw every kind: {kinds:?}");
    }
}

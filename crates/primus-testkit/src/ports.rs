//! Free loopback ports for test processes.
//!
//! Tests run as many processes at once (nextest), and each starts servers on ports it picked
//! a moment before the server binds them. Two races can take a picked port in between:
//!
//! - another test process picks the same port: every pick is claimed machine-wide with a
//!   file created exclusively under the temp dir, naming the claiming process; a claim of a
//!   process that has exited is taken over;
//! - an outgoing connection (any client of any test) is given the port by the kernel: ports
//!   are picked below the kernel's ephemeral range (`ip_local_port_range`), which outgoing
//!   connections never use.
//!
//! When the ephemeral range leaves no room below it, ports come from binding port 0 as
//! before (the second race then remains, and shows as "address in use" in the server's log).

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Lowest port handed out (below: well-known and registered services).
const FLOOR: u16 = 10_000;

/// A loopback TCP port that was free a moment ago, that no other running test process
/// claimed, and that this process has not handed out before.
pub fn free_port() -> std::io::Result<u16> {
    let below = ephemeral_low().filter(|lo| *lo > FLOOR + 1000);
    let Some(below) = below else { return from_port_zero() };
    let dir = std::env::temp_dir().join("primus-testkit-ports");
    std::fs::create_dir_all(&dir)?;
    let mut x = seed();
    for _ in 0..2000 {
        // xorshift: spread the picks of concurrent processes over the range.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = FLOOR + (x % u64::from(below - FLOOR)) as u16;
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashSet::new).contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() || !claim(&dir.join(port.to_string()))? {
            continue;
        }
        GIVEN.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashSet::new).insert(port);
        return Ok(port);
    }
    Err(std::io::Error::other(format!("no free loopback port in {FLOOR}..{below} after 2000 tries")))
}

/// Claims `path` for this process: true when it did (the file did not exist, or named a
/// process that has exited).
fn claim(path: &std::path::Path) -> std::io::Result<bool> {
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                write!(f, "{}", std::process::id())?;
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner: Option<u32> = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok());
                match owner {
                    Some(pid) if pid == std::process::id() => return Ok(false),
                    Some(pid) if std::path::Path::new(&format!("/proc/{pid}")).exists() => return Ok(false),
                    // The owner exited (or is writing its pid right now: then the
                    // removal races it, and the bind check of the loser's server shows it).
                    Some(_) => {
                        let _ = std::fs::remove_file(path);
                    }
                    None => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The low end of the kernel's ephemeral port range.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

fn seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

fn from_port_zero() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free loopback port found after 100 tries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a port")).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if let Some(lo) = ephemeral_low().filter(|lo| *lo > FLOOR + 1000) {
            assert!(ports.iter().all(|p| (FLOOR..lo).contains(p)), "{ports:?} not in {FLOOR}..{lo}");
            let dir = std::env::temp_dir().join("primus-testkit-ports");
            for p in &ports {
                let owner = std::fs::read_to_string(dir.join(p.to_string())).expect("claimed");
                assert_eq!(owner.trim(), std::process::id().to_string());
            }
        }
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
    }
}

//! Free loopback ports for test processes.
//!
//! A port is found by binding port 0 and releasing it. Ports handed out by this
//! process are remembered so two callers never get the same one; the remaining
//! race (another process grabbing it in between) is small and shows as a clear
//! "address in use" failure, not a hang.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that was free a moment ago and that this process has not handed out before.
pub fn free_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free loopback port found after 100 tries"))
}

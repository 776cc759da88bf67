//! Wall-clock time as the coordinators see it, behind a seam: the real clock (offset
//! by `PRIMUS_CLOCK_SKEW_MS` under fault injection), or a simulator's clock per node.
//!
//! Only wall-clock time goes through here (timestamps recorded in Raft, ages of probe
//! results). Durations and deadlines use `tokio::time::Instant`, which a simulation
//! pauses and advances by itself.

/// A source of wall-clock time, in ms since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn wall_ms(&self) -> u64;
}

/// This host's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        now_ms()
    }
}

/// This coordinator's wall clock, unix ms. Under fault injection
/// (`PRIMUS_FAULT_INJECTION=1`) `PRIMUS_CLOCK_SKEW_MS` offsets it, so tests can run
/// coordinators whose clocks disagree on one machine.
pub fn now_ms() -> u64 {
    let real =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    real.saturating_add(crate::faults::get().clock_skew_ms()).max(0) as u64
}

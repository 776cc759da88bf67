//! Test-only fault injection, read from the environment once, at first use.
//!
//! Everything here is inert unless `PRIMUS_FAULT_INJECTION=1` (exactly "1"; any other
//! value, "0" included, disables it):
//! * `PRIMUS_FAILPOINT`: comma-separated failpoint names (TiKV's fail-rs in spirit).
//!   `failover.after_start` and `failover.after_step=N` SIGKILL this process right after
//!   that record is committed; other names change what one code path does (see
//!   [`Faults::active`] callers, e.g. `failover.promote_answer_lost`).
//! * `PRIMUS_CLOCK_SKEW_MS`: offset of this coordinator's wall clock, so tests can run
//!   coordinators whose clocks disagree on one machine.
//! * `PRIMUS_FEATURE_LEVEL`: the feature level this node says its release knows (to
//!   its peers and in `GetStatus`), so tests can stand in for an older release in a
//!   mixed group (see `crate::features`).

use std::sync::OnceLock;

#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    failpoints: Vec<String>,
    clock_skew_ms: i64,
    feature_level: Option<u32>,
}

impl Faults {
    fn from_env() -> Faults {
        let enabled = std::env::var("PRIMUS_FAULT_INJECTION").as_deref() == Ok("1");
        if !enabled {
            return Faults::default();
        }
        let failpoints = std::env::var("PRIMUS_FAILPOINT")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let clock_skew_ms = std::env::var("PRIMUS_CLOCK_SKEW_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let feature_level = std::env::var("PRIMUS_FEATURE_LEVEL").ok().and_then(|v| v.parse().ok());
        Faults { enabled, failpoints, clock_skew_ms, feature_level }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the failpoint `name` is set.
    pub fn active(&self, name: &str) -> bool {
        self.failpoints.iter().any(|f| f == name)
    }

    pub fn clock_skew_ms(&self) -> i64 {
        self.clock_skew_ms
    }

    /// `PRIMUS_FEATURE_LEVEL`, when set.
    pub fn feature_level(&self) -> Option<u32> {
        self.feature_level
    }

    /// SIGKILL this process when the failpoint `name` (or `name=step`) is set.
    pub fn kill_at(&self, name: &str, step: Option<usize>) {
        let hit = match step {
            None => self.active(name),
            Some(n) => self.active(&format!("{name}={n}")),
        };
        if hit {
            tracing::error!(failpoint = name, step, "failpoint hit: killing this process");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// This process's fault injection settings.
pub fn get() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(Faults::from_env)
}

//! Shared helpers for the benchmarks: latency summaries printed the same way everywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The wall clock, unix milliseconds (what primusd stamps failover records with).
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50/p90/p99/max of a set of latencies, in milliseconds with two decimals.
pub fn summarize(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0;
    format!(
        "n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        pick(0.50),
        pick(0.90),
        pick(0.99),
        pick(1.0)
    )
}

/// The `q` quantile in milliseconds.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
}

//! Cheap clocks for the hot path: one reading per batch.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| Instant::now() - Duration::from_secs(1))
}

/// Nanoseconds of `t` since a process-wide epoch (never 0 for instants after start).
pub fn mono_ns(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// The instant `ns` after the process-wide epoch.
pub fn from_mono_ns(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

/// Wall clock, Unix nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Wall clock, Unix milliseconds.
pub fn unix_ms() -> u64 {
    unix_ns() / 1_000_000
}

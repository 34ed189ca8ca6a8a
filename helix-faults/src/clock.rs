//! The clocks of the tick logs.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds on the system-wide monotonic clock (`CLOCK_MONOTONIC`): the same clock in every
/// process of one machine, never stepped, so instants taken in different processes compare.
/// It does not advance while the machine is suspended.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC is always present on the systems this crate runs on (Linux, macOS); the
    // call can only fail for an unknown clock id.
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is available");
    let secs = u64::try_from(now.tv_sec()).unwrap_or_default();
    let nanos = u64::try_from(now.tv_nsec()).unwrap_or_default();
    secs * 1_000_000_000 + nanos
}

/// Nanoseconds since the Unix epoch on the wall clock, for reading a log; 0 before 1970.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

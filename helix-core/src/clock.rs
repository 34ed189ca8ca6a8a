//! Wall-clock time as an injectable dependency.
//!
//! Liveness decisions in a real deployment are made on the database's clock (`NOW(6)`), never
//! on a client's. The [`Clock`] trait exists for the in-memory store, which plays the part of
//! the database in tests: there it is driven by hand ([`ManualClock`]) or by virtual time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The operating system's wall clock read once, then moved on by the monotonic clock
/// ([`std::time::Instant`]): it starts at the wall-clock time of its creation and never
/// jumps, backwards or forwards, when the wall clock is stepped (NTP, an operator), so leases
/// measured on it last exactly as long as they should. The in-memory store's default clock.
///
/// ```
/// use helix_core::{Clock, MonotonicClock};
///
/// let clock = MonotonicClock::new();
/// let (a, b) = (clock.now(), clock.now());
/// assert!(b >= a);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    base: DateTime<Utc>,
    start: std::time::Instant,
}

impl MonotonicClock {
    /// A clock that reads the wall-clock time now and moves with the monotonic clock.
    pub fn new() -> Self {
        Self { base: Utc::now(), start: std::time::Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.start.elapsed()).unwrap_or(chrono::Duration::MAX);
        self.base.checked_add_signed(elapsed).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use helix_core::{Clock, ManualClock};
///
/// let clock = ManualClock::default();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(3));
/// assert_eq!((clock.now() - before).num_seconds(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut now = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now = now.checked_add_signed(by).unwrap_or(DateTime::<Utc>::MAX_UTC);
    }
}

impl Default for ManualClock {
    /// A clock stopped at 2030-01-01T00:00:00Z, a fixed point that keeps test output stable.
    fn default() -> Self {
        Self::new(DateTime::from_timestamp(1_893_456_000, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

//! A wall clock driven by tokio's clock, so the in-memory store runs on virtual time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::Clock;
use tokio::time::Instant;

/// A [`Clock`] that reads tokio's clock: under `tokio::time::pause()` it moves only as
/// virtual time does, in step with every timer of the runtime. Give it to a
/// [`MemStore`](helix_store::MemStore) to run a whole cluster deterministically.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use helix_actors::TokioClock;
/// use helix_core::Clock;
///
/// tokio::time::pause();
/// let clock = TokioClock::new();
/// let before = clock.now();
/// tokio::time::sleep(Duration::from_secs(3)).await; // instant under a paused clock
/// assert_eq!((clock.now() - before).num_seconds(), 3);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: DateTime<Utc>,
    start: Instant,
}

impl TokioClock {
    /// A clock that reads 2030-01-01T00:00:00Z now and moves with tokio's clock.
    pub fn new() -> Self {
        let base = DateTime::from_timestamp(1_893_456_000, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Self { base, start: Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed: Duration = Instant::now().saturating_duration_since(self.start);
        self.base + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

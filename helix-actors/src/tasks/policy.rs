//! How a queue's tasks are run: in-flight limit and retry backoff.

use std::time::Duration;

use crate::backoff;

/// The most tasks of one partition that run at once (the store's largest batch,
/// [`MAX_TASK_BATCH`](helix_store::MAX_TASK_BATCH)); a larger `in_flight` is cut to it.
pub const MAX_IN_FLIGHT: u32 = 10_000;
const _: () = assert!(MAX_IN_FLIGHT as usize == helix_store::MAX_TASK_BATCH);

/// How a worker runs the tasks of one queue. The defaults suit most queues; `docs/tasks.md`
/// says how to choose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPolicy {
    /// How many tasks of one partition run at once on its owner, from 1 to
    /// [`MAX_IN_FLIGHT`] (values outside are cut to that range). With 1, a
    /// partition runs its tasks strictly one after another in claim order (priority,
    /// `run_at`, id). A partition claims again once half of this is free, so claims and
    /// completions come in batches of up to about half of it. Default 16.
    pub in_flight: u32,
    /// The backoff after the first failed attempt. Default 1 s.
    pub initial_backoff: Duration,
    /// The longest backoff between attempts. Default 1 h.
    pub max_backoff: Duration,
    /// The wait before trying a claim or a write of outcomes again after the store failed
    /// (the store actor already retried transient errors). Default 500 ms; at least 1 ms.
    pub store_retry: Duration,
    /// How long a partition's runner waits for the answer of a store call (a claim, a write
    /// of outcomes, a recovery): past it the call counts as failed without an answer (a claim
    /// is followed by a recovery, a write is sent again). The store operation itself is not
    /// cut short: the partition's next call on this worker, and a new runner's recovery, wait
    /// until it has ended, so the operations of one partition never overlap. Default 10 s;
    /// at least 1 ms.
    pub store_timeout: Duration,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        Self {
            in_flight: 16,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3_600),
            store_retry: Duration::from_millis(500),
            store_timeout: Duration::from_secs(10),
        }
    }
}

impl TaskPolicy {
    /// The same policy with `in_flight` tasks at once per partition (cut to 1 ..=
    /// [`MAX_IN_FLIGHT`]).
    pub fn in_flight(mut self, in_flight: u32) -> Self {
        self.in_flight = in_flight.clamp(1, MAX_IN_FLIGHT);
        self
    }

    /// The same policy backing off from `initial` up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The wait before the next attempt after attempt `attempt` (1-based) failed:
    /// `initial_backoff × 2^(attempt−1)`, at most `max_backoff`, with equal jitter (drawn
    /// from the upper half of that wait).
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        backoff::jittered(backoff::exponential(self.initial_backoff, self.max_backoff, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_its_jitter() {
        let policy = TaskPolicy::default().backoff(Duration::from_secs(2), Duration::from_secs(30));
        for (attempt, full) in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (9, 30)] {
            let wait = policy.backoff_for(attempt);
            let full = Duration::from_secs(full);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempt}: {wait:?} not within half of {full:?}"
            );
        }
    }
}

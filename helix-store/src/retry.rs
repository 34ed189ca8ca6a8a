//! The one backoff policy of the SQL stores: how often and how long to wait before trying a
//! store operation again after a transient failure.
//!
//! Only [`StoreError::Transient`] is retried: a deadlock (MySQL 1213), a lock wait timeout
//! (1205), a lost connection, a busy SQLite database. Everything else — above all
//! [`StoreError::Fenced`], but also `NotFound`, `Conflict`, `Invalid` and `Unavailable` (the
//! pool already waited a whole connect timeout for a connection) — is returned at once.
//!
//! Waits grow exponentially from [`Backoff::base`] up to [`Backoff::cap`], with "equal
//! jitter" (a random wait between half and all of the exponential step) so that contenders
//! that failed together, such as the two sides of a deadlock, do not retry in lockstep.

use std::time::Duration;

use rand::Rng;

use crate::error::StoreError;

/// How a store operation is retried after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// How many times an operation runs at most, the first attempt included.
    pub(crate) max_attempts: u32,
    /// The wait before the first retry, before jitter.
    pub(crate) base: Duration,
    /// The longest wait between two attempts.
    pub(crate) cap: Duration,
}

impl Backoff {
    /// The policy of the SQL stores: up to 5 attempts, waits of about 10, 20, 40 and 80 ms
    /// (capped at 250 ms), about 150 ms in all before the last error is returned.
    pub(crate) const DEFAULT: Backoff =
        Backoff { max_attempts: 5, base: Duration::from_millis(10), cap: Duration::from_millis(250) };

    /// The wait before retry number `retry` (1 for the first retry), with `jitter` in `[0, 1]`
    /// choosing between half and all of the exponential step.
    pub(crate) fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let step = self.base.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(self.cap);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// The retry state of one store operation.
///
/// ```text
/// let mut retry = Retry::new("heartbeat");
/// let result = loop {
///     match attempt().await {
///         Err(err) if retry.again(&err).await => continue,
///         result => break result,
///     }
/// };
/// ```
#[derive(Debug)]
pub(crate) struct Retry {
    op: &'static str,
    policy: Backoff,
    attempts: u32,
}

impl Retry {
    /// Starts the retry state of `op` (its name, for logs) under [`Backoff::DEFAULT`].
    pub(crate) fn new(op: &'static str) -> Self {
        Self { op, policy: Backoff::DEFAULT, attempts: 1 }
    }

    /// Decides whether to try again after `err`; when it does, it first waits the backoff.
    pub(crate) async fn again(&mut self, err: &StoreError) -> bool {
        if !matches!(err, StoreError::Transient(_)) || self.attempts >= self.policy.max_attempts {
            return false;
        }
        let delay = self.policy.delay(self.attempts, rand::rng().random::<f64>());
        tracing::debug!(
            op = self.op,
            attempt = self.attempts,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "retrying store operation after transient failure"
        );
        self.attempts += 1;
        tokio::time::sleep(delay).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let policy = Backoff::DEFAULT;
        assert_eq!(policy.delay(1, 1.0), Duration::from_millis(10));
        assert_eq!(policy.delay(2, 1.0), Duration::from_millis(20));
        assert_eq!(policy.delay(4, 1.0), Duration::from_millis(80));
        assert_eq!(policy.delay(30, 1.0), Duration::from_millis(250));
        assert_eq!(policy.delay(1, 0.0), Duration::from_millis(5));
        assert!(
            policy.delay(3, 0.5) >= Duration::from_millis(20)
                && policy.delay(3, 0.5) <= Duration::from_millis(40)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_transient_failures_a_bounded_number_of_times() {
        let mut retry = Retry::new("test");
        assert!(!retry.again(&StoreError::Fenced("stale term".into())).await);
        assert!(!retry.again(&StoreError::Unavailable("down".into())).await);
        let transient = StoreError::Transient("deadlock".into());
        let mut retries = 0;
        while retry.again(&transient).await {
            retries += 1;
        }
        assert_eq!(retries, Backoff::DEFAULT.max_attempts - 1);
    }
}

//! The one exponential backoff of the runtime: partition restarts ([`RestartPolicy`]) and
//! task retries ([`TaskPolicy`]) both wait `initial × 2^(n−1)`, capped.
//!
//! [`RestartPolicy`]: crate::worker::RestartPolicy
//! [`TaskPolicy`]: crate::tasks::TaskPolicy

use std::time::Duration;

use rand::Rng;

/// The wait after the `n`-th failure (1-based; 0 counts as 1): `initial × 2^(n−1)`, at most
/// `max`.
pub(crate) fn exponential(initial: Duration, max: Duration, n: u32) -> Duration {
    let exponent = n.saturating_sub(1).min(30);
    initial.saturating_mul(1 << exponent).min(max)
}

/// `delay` with "equal jitter": uniformly drawn from `[delay / 2, delay]`, so that tasks
/// that failed together do not all come back at the same instant, and none comes back
/// sooner than half its backoff (the AWS Architecture Blog's "Exponential Backoff And
/// Jitter", 2015).
pub(crate) fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    let spread = u64::try_from((delay - half).as_nanos()).unwrap_or(u64::MAX);
    if spread == 0 {
        return delay;
    }
    half + Duration::from_nanos(rand::rng().random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_up_to_max() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let waits: Vec<_> = (1..=8).map(|n| exponential(initial, max, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(exponential(initial, max, 0), initial);
        assert_eq!(exponential(initial, max, u32::MAX), max);
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole() {
        let delay = Duration::from_millis(1_000);
        for _ in 0..1_000 {
            let j = jittered(delay);
            assert!(j >= delay / 2 && j <= delay, "{j:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}

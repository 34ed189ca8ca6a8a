//! Failure detection, as pure functions of leases and the database time.
//!
//! A worker is dead when its lease has expired: `lease_expires_at < now`, both on the
//! database's clock (DESIGN.md §4.1). The failure detector reads the leases, calls
//! [`expired_workers`], and tells the coordinator.
//!
//! A worker that keeps dying and coming back (a crash loop, a flaky network) would pull
//! partitions back and forth every time. [`FlapHistory`] remembers recent deaths, and
//! [`FlapPolicy`] says when a worker that came back is *held back*: the coordinator treats it
//! as not accepting partitions (for example by passing it to the allocator as draining) until
//! its hold-back ends.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::WorkerId;

/// Whether a lease that lasts until `lease_expires_at` has expired at `now`. A lease is still
/// valid at the very instant it expires.
pub fn is_expired(lease_expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    lease_expires_at < now
}

/// The workers whose lease has expired at `now`, sorted by id and without duplicates.
///
/// ```
/// use chrono::{TimeDelta, Utc};
/// use helix_core::failure::expired_workers;
/// use helix_core::WorkerId;
///
/// let now = Utc::now();
/// let (alive, dead) = (WorkerId::new_v7(), WorkerId::new_v7());
/// let leases = [(alive, now + TimeDelta::seconds(2)), (dead, now - TimeDelta::milliseconds(1))];
/// assert_eq!(expired_workers(leases, now), [dead]);
/// ```
pub fn expired_workers(
    leases: impl IntoIterator<Item = (WorkerId, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Vec<WorkerId> {
    let mut expired: Vec<WorkerId> =
        leases.into_iter().filter(|(_, expires_at)| is_expired(*expires_at, now)).map(|(id, _)| id).collect();
    expired.sort_unstable();
    expired.dedup();
    expired
}

/// The earliest instant after `now` at which one of `leases` expires, if any: when the
/// failure detector next needs to look.
pub fn next_expiry(
    leases: impl IntoIterator<Item = (WorkerId, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    leases
        .into_iter()
        .map(|(_, expires_at)| expires_at)
        .filter(|expires_at| !is_expired(*expires_at, now))
        .min()
}

/// When a worker that died repeatedly is held back from getting partitions.
///
/// A worker with at least `threshold` deaths within the last `window` is held back until
/// `hold_back` after its latest death.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlapPolicy {
    /// How far back deaths count. Default 5 minutes.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How many deaths within the window make a worker flap. Default 2.
    pub threshold: u32,
    /// How long after its latest death a flapping worker is held back. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub hold_back: Duration,
}

impl Default for FlapPolicy {
    fn default() -> Self {
        Self { window: Duration::from_secs(300), threshold: 2, hold_back: Duration::from_secs(30) }
    }
}

fn before(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|d| at.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn after(at: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The recent deaths of workers, to tell which ones flap.
///
/// ```
/// use chrono::{TimeDelta, Utc};
/// use helix_core::failure::{FlapHistory, FlapPolicy};
/// use helix_core::WorkerId;
///
/// let policy = FlapPolicy::default(); // 2 deaths in 5 min → held back 30 s
/// let (worker, t0) = (WorkerId::new_v7(), Utc::now());
/// let mut history = FlapHistory::new();
/// history.record_death(worker, t0);
/// assert!(!history.is_held_back(worker, t0 + TimeDelta::seconds(1), &policy));
/// history.record_death(worker, t0 + TimeDelta::seconds(10));
/// assert!(history.is_held_back(worker, t0 + TimeDelta::seconds(20), &policy));
/// assert!(!history.is_held_back(worker, t0 + TimeDelta::seconds(41), &policy));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlapHistory {
    deaths: BTreeMap<WorkerId, Vec<DateTime<Utc>>>,
}

impl FlapHistory {
    /// No deaths recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `worker` was declared dead at `at`.
    pub fn record_death(&mut self, worker: WorkerId, at: DateTime<Utc>) {
        let deaths = self.deaths.entry(worker).or_default();
        deaths.push(at);
        deaths.sort_unstable();
    }

    /// Whether `worker` is held back from getting partitions at `now`.
    pub fn is_held_back(&self, worker: WorkerId, now: DateTime<Utc>, policy: &FlapPolicy) -> bool {
        let Some(deaths) = self.deaths.get(&worker) else { return false };
        let Some(latest) = deaths.last() else { return false };
        let since = before(now, policy.window);
        let recent = deaths.iter().filter(|at| **at >= since && **at <= now).count();
        policy.threshold > 0 && recent >= policy.threshold as usize && now < after(*latest, policy.hold_back)
    }

    /// The workers held back at `now`, sorted by id.
    pub fn held_back(&self, now: DateTime<Utc>, policy: &FlapPolicy) -> Vec<WorkerId> {
        self.deaths.keys().copied().filter(|worker| self.is_held_back(*worker, now, policy)).collect()
    }

    /// Forgets deaths older than the policy's window and workers with none left.
    pub fn prune(&mut self, now: DateTime<Utc>, policy: &FlapPolicy) {
        let since = before(now, policy.window);
        self.deaths.retain(|_, deaths| {
            deaths.retain(|at| *at >= since);
            !deaths.is_empty()
        });
    }
}

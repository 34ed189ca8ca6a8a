//! The failure-detection helpers.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use common::wid;
use helix_core::failure::{FlapHistory, FlapPolicy, expired_workers, is_expired, next_expiry};

#[test]
fn a_lease_is_valid_up_to_its_last_instant() {
    let now = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    assert!(!is_expired(now, now));
    assert!(is_expired(now - TimeDelta::microseconds(1), now));
    assert!(!is_expired(now + TimeDelta::seconds(3), now));
}

#[test]
fn expired_workers_are_sorted_and_unique_and_the_next_expiry_is_found() {
    let now = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let leases = [
        (wid(3), now - TimeDelta::seconds(1)),
        (wid(1), now + TimeDelta::seconds(2)),
        (wid(2), now - TimeDelta::seconds(5)),
        (wid(3), now - TimeDelta::seconds(1)),
        (wid(4), now + TimeDelta::seconds(1)),
    ];
    assert_eq!(expired_workers(leases, now), [wid(2), wid(3)]);
    assert_eq!(next_expiry(leases, now), Some(now + TimeDelta::seconds(1)));
    assert_eq!(next_expiry([], now), None);
}

#[test]
fn a_flapping_worker_is_held_back_then_forgiven() {
    let t0 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let policy =
        FlapPolicy { window: Duration::from_secs(60), threshold: 3, hold_back: Duration::from_secs(20) };
    let (flapper, steady) = (wid(1), wid(2));
    let mut history = FlapHistory::new();
    history.record_death(steady, t0);
    for second in [0, 10, 20] {
        history.record_death(flapper, t0 + TimeDelta::seconds(second));
    }
    let at = |s| t0 + TimeDelta::seconds(s);
    assert_eq!(history.held_back(at(25), &policy), [flapper]);
    assert!(!history.is_held_back(flapper, at(40), &policy), "the hold-back ends 20 s after the last death");
    assert!(!history.is_held_back(steady, at(1), &policy), "one death is not flapping");
    history.record_death(flapper, at(100));
    assert!(!history.is_held_back(flapper, at(101), &policy), "the old deaths are out of the window");
    history.prune(at(200), &policy);
    assert_eq!(history, FlapHistory::new());
    let zero = FlapPolicy { threshold: 0, ..policy };
    history.record_death(steady, at(300));
    assert!(!history.is_held_back(steady, at(300), &zero));
}

#[test]
fn flap_policy_reads_human_durations() {
    let policy: FlapPolicy = serde_json::from_str(r#"{ "window": "2m", "hold_back": "45s" }"#).unwrap();
    assert_eq!(policy.window, Duration::from_secs(120));
    assert_eq!(policy.threshold, 2);
    assert_eq!(policy.hold_back, Duration::from_secs(45));
}

//! The FailureDetector actor alone, over a scripted `MockStore`: what it reads, what it writes
//! under the coordinator's term, and its hysteresis.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use helix_actors::coordinator::{FailureDetector, Sweep, WorkersExpired};
use helix_core::failure::FlapPolicy;
use helix_core::{ClusterName, SessionEpoch, Term, WorkerId};
use helix_store::{CoordinatorFence, MockStore, StoreError, WorkerFilter, WorkerRecord, WorkerStatus};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid instant")
}

fn fence() -> CoordinatorFence {
    CoordinatorFence { cluster: ClusterName::default(), holder: WorkerId::new_v7(), term: Term(7) }
}

fn record(id: WorkerId, lease_expires_at: DateTime<Utc>) -> WorkerRecord {
    WorkerRecord {
        id,
        host: "host-1".into(),
        pid: 1,
        labels: BTreeMap::new(),
        status: WorkerStatus::Active,
        registered_at: t0(),
        lease_expires_at,
        session_epoch: SessionEpoch(1),
        subscriptions: Vec::new(),
    }
}

/// What the store answers to one sweep: the expired workers, the time, the live workers.
struct Scene {
    expired: Vec<WorkerRecord>,
    now: DateTime<Utc>,
    live: Vec<WorkerRecord>,
}

/// A mock that plays `scenes` in order, one per sweep, and accepts every `mark_workers_dead`
/// fenced by `fence` (declaring dead exactly what it is given).
fn scripted(scenes: Vec<Scene>, fence: &CoordinatorFence) -> MockStore {
    let scenes = Arc::new(Mutex::new(VecDeque::from(scenes)));
    let current: Arc<Mutex<Option<Scene>>> = Arc::new(Mutex::new(None));
    let mut mock = MockStore::new();
    let (s, c) = (Arc::clone(&scenes), Arc::clone(&current));
    mock.expect_list_workers().withf(|f| *f == WorkerFilter::Expired).returning(move |_| {
        let scene = s.lock().expect("scenes").pop_front().expect("a scene per sweep");
        let expired = scene.expired.clone();
        *c.lock().expect("current") = Some(scene);
        Ok(expired)
    });
    let c = Arc::clone(&current);
    mock.expect_now().returning(move || Ok(c.lock().expect("current").as_ref().expect("scene").now));
    let c = Arc::clone(&current);
    mock.expect_list_workers()
        .withf(|f| *f == WorkerFilter::Live)
        .returning(move |_| Ok(c.lock().expect("current").as_ref().expect("scene").live.clone()));
    let expected = fence.clone();
    mock.expect_mark_workers_dead()
        .withf(move |f, workers| *f == expected && !workers.is_empty())
        .returning(|_, workers| Ok(workers.to_vec()));
    mock
}

async fn sweep(detector: &actix::Addr<FailureDetector>, fence: &CoordinatorFence) -> WorkersExpired {
    detector.send(Sweep { fence: fence.clone() }).await.expect("detector answers").expect("sweep")
}

#[actix::test]
async fn a_sweep_declares_the_expired_dead_under_the_term_and_reports_the_live() {
    let fence = fence();
    let (dead, alive) = (WorkerId::new_v7(), WorkerId::new_v7());
    let now = t0() + TimeDelta::seconds(10);
    let scenes = vec![Scene {
        expired: vec![record(dead, now - TimeDelta::milliseconds(1))],
        now,
        live: vec![record(alive, now + TimeDelta::seconds(3))],
    }];
    let detector = FailureDetector::new(Arc::new(scripted(scenes, &fence)), FlapPolicy::default()).start();

    let found = sweep(&detector, &fence).await;
    assert_eq!(found.declared_dead, vec![dead]);
    assert_eq!(found.live.iter().map(|w| w.id).collect::<Vec<_>>(), vec![alive]);
    assert!(found.held_back.is_empty());
    assert_eq!(found.now, now);
}

#[actix::test]
async fn nothing_expired_means_no_write() {
    let fence = fence();
    let alive = WorkerId::new_v7();
    let mut mock = MockStore::new();
    mock.expect_list_workers().withf(|f| *f == WorkerFilter::Expired).times(1).returning(|_| Ok(Vec::new()));
    mock.expect_now().times(1).returning(|| Ok(t0()));
    mock.expect_mark_workers_dead().never();
    mock.expect_list_workers()
        .withf(|f| *f == WorkerFilter::Live)
        .times(1)
        .returning(move |_| Ok(vec![record(alive, t0() + TimeDelta::seconds(3))]));
    let detector = FailureDetector::new(Arc::new(mock), FlapPolicy::default()).start();

    let found = sweep(&detector, &fence).await;
    assert!(found.declared_dead.is_empty());
    assert_eq!(found.live.len(), 1);
}

#[actix::test]
async fn a_fenced_write_is_returned_once_and_not_retried() {
    let fence = fence();
    let dead = WorkerId::new_v7();
    let mut mock = MockStore::new();
    mock.expect_list_workers()
        .withf(|f| *f == WorkerFilter::Expired)
        .times(1)
        .returning(move |_| Ok(vec![record(dead, t0())]));
    mock.expect_now().times(1).returning(|| Ok(t0() + TimeDelta::seconds(1)));
    mock.expect_mark_workers_dead()
        .times(1)
        .returning(|_, _| Err(StoreError::Fenced("term 7 is over".into())));
    mock.expect_list_workers().withf(|f| *f == WorkerFilter::Live).never();
    let detector = FailureDetector::new(Arc::new(mock), FlapPolicy::default()).start();

    let result = detector.send(Sweep { fence: fence.clone() }).await.expect("detector answers");
    assert!(matches!(result, Err(StoreError::Fenced(_))), "{result:?}");
}

/// A worker that dies twice within the window is held back for `hold_back` after its latest
/// death, then given partitions again.
#[actix::test]
async fn a_flapping_worker_is_held_back_until_its_hold_back_ends() {
    let fence = fence();
    let flapper = WorkerId::new_v7();
    let policy =
        FlapPolicy { window: Duration::from_secs(300), threshold: 2, hold_back: Duration::from_secs(30) };
    let at = |s: i64| t0() + TimeDelta::seconds(s);
    let alive = |s: i64| vec![record(flapper, at(s) + TimeDelta::seconds(3))];
    let died = |s: i64| vec![record(flapper, at(s) - TimeDelta::milliseconds(1))];
    let scenes = vec![
        Scene { expired: died(10), now: at(10), live: Vec::new() }, // first death
        Scene { expired: Vec::new(), now: at(12), live: alive(12) }, // back: one death is fine
        Scene { expired: died(20), now: at(20), live: Vec::new() }, // second death
        Scene { expired: Vec::new(), now: at(22), live: alive(22) }, // back: held back
        Scene { expired: Vec::new(), now: at(49), live: alive(49) }, // still within 30 s
        Scene { expired: Vec::new(), now: at(51), live: alive(51) }, // hold-back over
    ];
    let detector = FailureDetector::new(Arc::new(scripted(scenes, &fence)), policy).start();

    let held: Vec<BTreeSet<WorkerId>> = {
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(sweep(&detector, &fence).await.held_back);
        }
        held
    };
    let flapping = BTreeSet::from([flapper]);
    assert_eq!(
        held,
        vec![BTreeSet::new(), BTreeSet::new(), BTreeSet::new(), flapping.clone(), flapping, BTreeSet::new()]
    );
}

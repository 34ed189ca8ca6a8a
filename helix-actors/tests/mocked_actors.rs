//! Unit tests of single actors, each alone over a `MockStore` on virtual time: the store's
//! answers are scripted, so each test pins down how one actor reacts to one answer.
//!
//! - `LeaderElection`: an acquired lease makes it leader under the store's term; a renewal
//!   answered `Fenced` makes it step down at once, long before it would stop trusting the
//!   lease on its own;
//! - `WorkerSession`: a heartbeat answered `Expired` stops every partition at once and
//!   registers again under a new session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use helix_actors::coordinator::{CurrentFence, LeaderElection, LeadershipChanged};
use helix_actors::worker::{
    GetStatus, HandlerError, HandlerFactory, Kill, PartitionContext, PartitionHandler, WorkerSession,
};
use helix_core::{
    ClusterConfig, ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueId, QueueName,
    SessionEpoch, Term, WorkerId,
};
use helix_store::{
    AssignmentRecord, AssignmentState, CoordinatorFence, Heartbeat, MockStore, QueueRecord, StoreError,
    Subscription, WorkerLease, WorkerRegistration,
};
use tokio::time::Instant;

/// tokio rounds a timer's deadline up to its next millisecond: a timer set for `d` from now
/// fires between `d` and `d + 1 ms` later on the virtual clock.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// Whether `instant` is when a timer set at `start` for `after` fires.
fn fired(instant: Instant, start: Instant, after: Duration) -> bool {
    instant >= start + after && instant <= start + after + TIMER_RESOLUTION
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().expect("valid instant")
}

/// Lets virtual time pass in steps of 10 ms until `done` holds, for at most 10 s.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

// ---- LeaderElection ------------------------------------------------------------------------

type Changes = Arc<Mutex<Vec<(Instant, LeadershipChanged)>>>;

/// Records every change of leadership with the virtual instant it arrived.
struct Recorder(Changes);

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<LeadershipChanged> for Recorder {
    type Result = ();
    fn handle(&mut self, change: LeadershipChanged, _: &mut Self::Context) {
        self.0.lock().expect("changes").push((Instant::now(), change));
    }
}

fn changes(log: &Changes) -> Vec<(Instant, LeadershipChanged)> {
    log.lock().expect("changes").clone()
}

fn start_election(store: MockStore, me: WorkerId, log: &Changes) -> Addr<LeaderElection> {
    let recorder = Recorder(Arc::clone(log)).start();
    LeaderElection::new(
        Arc::new(store),
        ClusterName::default(),
        me,
        ClusterConfig::default(),
        recorder.recipient(),
    )
    .start()
}

#[actix::test]
async fn an_acquired_lease_makes_the_election_leader_under_the_stores_term() {
    tokio::time::pause();
    let me = WorkerId::new_v7();
    let config = ClusterConfig::default();
    let mut store = MockStore::new();
    let lease = config.coordinator_lease;
    store
        .expect_acquire_lease()
        .withf(move |cluster, holder, d| *cluster == ClusterName::default() && *holder == me && *d == lease)
        .times(1)
        .returning(|_, _, _| Ok(Some(Term(7))));
    store.expect_renew_lease().withf(|fence, _| fence.term == Term(7)).returning(|_, _| Ok(()));
    store.expect_release_lease().returning(|_| Ok(()));
    let log = Changes::default();
    let start = Instant::now();

    let election = start_election(store, me, &log);

    assert!(wait_until(|| !changes(&log).is_empty()).await, "no change of leadership");
    let expected = CoordinatorFence { cluster: ClusterName::default(), holder: me, term: Term(7) };
    assert_eq!(changes(&log), vec![(start, LeadershipChanged::BecameLeader { fence: expected.clone() })]);
    // Renewals keep it leader under the same term, without another notification.
    tokio::time::sleep(config.coordinator_lease * 5).await;
    assert_eq!(changes(&log).len(), 1, "{:?}", changes(&log));
    assert_eq!(election.send(CurrentFence).await.expect("running"), Some(expected));
}

#[actix::test]
async fn a_fenced_renewal_makes_the_leader_step_down_at_once() {
    tokio::time::pause();
    let me = WorkerId::new_v7();
    let config = ClusterConfig::default();
    let mut store = MockStore::new();
    store.expect_acquire_lease().times(1).returning(|_, _, _| Ok(Some(Term(3))));
    store
        .expect_renew_lease()
        .withf(move |fence, _| fence.holder == me && fence.term == Term(3))
        .times(1)
        .returning(|_, _| Err(StoreError::Fenced("term 3 is stale".to_owned())));
    // Afterwards another process holds the lease.
    store.expect_acquire_lease().returning(|_, _, _| Ok(None));
    // A lease it lost is not released.
    store.expect_release_lease().never();
    let log = Changes::default();
    let start = Instant::now();

    let election = start_election(store, me, &log);

    assert!(wait_until(|| changes(&log).len() == 2).await, "{:?}", changes(&log));
    let log = changes(&log);
    assert!(matches!(&log[0], (_, LeadershipChanged::BecameLeader { fence }) if fence.term == Term(3)));
    let (lost_at, lost) = &log[1];
    assert_eq!(*lost, LeadershipChanged::LostLeadership { term: Term(3) });
    // At the first renewal, not when the trust it had would have run out.
    assert!(fired(*lost_at, start, config.coordinator_renew_interval), "{lost_at:?} after {start:?}");
    assert!(*lost_at < start + config.coordinator_lease - config.safety_margin);
    assert_eq!(election.send(CurrentFence).await.expect("running"), None);
}

// ---- WorkerSession -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Assigned(Epoch),
    Dropped(Epoch),
}

type Calls = Arc<Mutex<Vec<(Instant, Call)>>>;

/// Records `assigned` and the drop of the handler (a stop without drain).
struct Recording {
    calls: Calls,
    epoch: Epoch,
}

#[async_trait(?Send)]
impl PartitionHandler for Recording {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        self.calls.lock().expect("calls").push((Instant::now(), Call::Assigned(ctx.epoch)));
        Ok(())
    }
    async fn revoked(&mut self, _: &PartitionContext) {}
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((Instant::now(), Call::Dropped(self.epoch)));
        }
    }
}

#[actix::test]
async fn an_expired_heartbeat_stops_every_partition_and_registers_again() {
    tokio::time::pause();
    let me = WorkerId::new_v7();
    let queue = QueueId(5);
    let config = ClusterConfig::default();
    let registration = WorkerRegistration {
        id: me,
        host: "localhost".to_owned(),
        pid: 1,
        labels: BTreeMap::new(),
        subscriptions: vec![Subscription { queue_id: queue, capacity: 1 }],
        session_timeout: config.session_timeout,
    };
    let row = AssignmentRecord {
        queue_id: queue,
        partition: PartitionId(0),
        owner: Some(me),
        epoch: Epoch(4),
        state: AssignmentState::Assigned,
        target: None,
        coordinator_term: Term(1),
        updated_at: at(0),
    };
    let record = QueueRecord {
        id: queue,
        domain: DomainName::new("domain_order").expect("name"),
        name: QueueName::new("food_order").expect("name"),
        partition_count: PartitionCount::new(1).expect("count"),
        allocator: "balanced-sticky".to_owned(),
        settings: serde_json::json!({}),
        assignment_version: 1,
        created_at: at(0),
    };

    let mut store = MockStore::new();
    let mut sessions = 0;
    store.expect_register_worker().withf(move |r| r.id == me).times(2).returning(move |_| {
        sessions += 1;
        Ok(WorkerLease { session_epoch: SessionEpoch(sessions), lease_expires_at: at(3) })
    });
    // The first session's first heartbeat finds its lease expired; the next session's renew.
    store
        .expect_heartbeat()
        .withf(move |worker, session, _| *worker == me && *session == SessionEpoch(1))
        .times(1)
        .returning(|_, _, _| Ok(Heartbeat::Expired));
    store
        .expect_heartbeat()
        .withf(move |worker, session, _| *worker == me && *session == SessionEpoch(2))
        .returning(|_, _, _| Ok(Heartbeat::Renewed { assignments_moved: true }));
    // The store keeps saying the worker owns the partition: only the heartbeat can stop it.
    store
        .expect_assignments_of()
        .withf(move |worker| *worker == me)
        .returning(move |_| Ok(vec![row.clone()]));
    store.expect_get_queue_by_id().returning(move |_| Ok(record.clone()));

    let calls = Calls::default();
    let made = Arc::clone(&calls);
    let factory: HandlerFactory = Arc::new(move |ctx: &PartitionContext| {
        Box::new(Recording { calls: Arc::clone(&made), epoch: ctx.epoch }) as Box<dyn PartitionHandler>
    });
    let recorded = |call: Call| -> Vec<Instant> {
        calls.lock().expect("calls").iter().filter(|(_, c)| *c == call).map(|(at, _)| *at).collect()
    };
    let start = Instant::now();
    let session = WorkerSession::new(Arc::new(store), config.clone(), registration, factory).start();

    assert!(wait_until(|| !recorded(Call::Assigned(Epoch(4))).is_empty()).await, "the partition starts");
    assert_eq!(recorded(Call::Assigned(Epoch(4))), vec![start], "at registration");
    let report = session.send(GetStatus).await.expect("running");
    assert_eq!(report.session_epoch, Some(SessionEpoch(1)));
    assert_eq!(report.running(), vec![(queue, PartitionId(0), Epoch(4))]);

    assert!(wait_until(|| !recorded(Call::Dropped(Epoch(4))).is_empty()).await, "the partition stops");
    // At the first heartbeat, long before the worker would have fenced itself.
    let stopped = recorded(Call::Dropped(Epoch(4)));
    assert!(matches!(stopped[..], [at] if fired(at, start, config.heartbeat_interval)), "{stopped:?}");
    assert!(config.heartbeat_interval < config.session_timeout - config.safety_margin);

    // Registered again, it serves what the store says it still owns under the new session.
    assert!(wait_until(|| recorded(Call::Assigned(Epoch(4))).len() == 2).await, "{calls:?}");
    let report = session.send(GetStatus).await.expect("running");
    assert_eq!(report.session_epoch, Some(SessionEpoch(2)), "{report:?}");
    assert!(!report.fenced, "{report:?}");
    assert_eq!(report.running(), vec![(queue, PartitionId(0), Epoch(4))]);
    assert_eq!(recorded(Call::Dropped(Epoch(4))).len(), 1, "the new handler runs on");
    // Ends without a goodbye, so the mock needs no script for a graceful leave.
    session.send(Kill).await.expect("running");
}

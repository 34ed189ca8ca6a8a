//! The worker session on virtual time: registration and heartbeats, partitions started with
//! their epoch, acknowledged handoff, self-fencing when the store is cut off, restarts of a
//! panicking handler until it ends failed, graceful leave, and a new session after being
//! declared dead. The workers reach the store through a [`CutOffStore`] link. The coordinator is simulated by hand through the store (`apply_plan`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr};
use async_trait::async_trait;
use helix_actors::TokioClock;
use helix_actors::testing::{CallFault, CutOffStore};
use helix_actors::worker::{
    GetStatus, HandlerError, HandlerFactory, Kill, Leave, PartitionContext, PartitionHandler, PartitionState,
    RestartPolicy, WorkerSession, WorkerStatusReport,
};
use helix_core::planner::PlanChange;
use helix_core::{
    ClusterConfig, ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueId, QueueName, WorkerId,
};
use helix_store::{
    AssignmentRecord, AssignmentState, CoordinatorFence, EventKind, Heartbeat, MemStore, QueueRecord,
    QueueSpec, Store, Subscription, WorkerFilter, WorkerRegistration, WorkerStatus,
};
use tokio::time::Instant;

/// One step of virtual time while waiting for a condition.
const STEP: Duration = Duration::from_millis(10);
/// At most this many steps (20 s of virtual time) per wait.
const MAX_STEPS: usize = 2_000;

/// Waits for a condition by letting virtual time pass in steps; fails after `MAX_STEPS`.
macro_rules! wait_until {
    ($what:expr, $cond:expr) => {{
        let mut met = false;
        for _ in 0..MAX_STEPS {
            if $cond {
                met = true;
                break;
            }
            tokio::time::sleep(STEP).await;
        }
        assert!(met, "timed out waiting until {}", $what);
    }};
}

// ---- recording handlers ------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Assigned,
    Revoked,
    Dropped,
}

/// What handlers did, with the virtual instant.
type Log = Arc<Mutex<Vec<(Instant, Call, PartitionId, Epoch)>>>;

fn calls(log: &Log, call: Call, partition: u32) -> Vec<(Instant, Epoch)> {
    log.lock()
        .expect("log lock")
        .iter()
        .filter(|(_, c, p, _)| *c == call && *p == PartitionId(partition))
        .map(|(at, _, _, epoch)| (*at, *epoch))
        .collect()
}

struct Recording {
    log: Log,
    ctx: PartitionContext,
    panic_on_assign: bool,
    hang_on_revoke: bool,
}

impl Recording {
    fn record(&self, call: Call) {
        self.log.lock().expect("log lock").push((Instant::now(), call, self.ctx.partition, self.ctx.epoch));
    }
}

#[async_trait(?Send)]
impl PartitionHandler for Recording {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        assert_eq!(ctx, &self.ctx, "the handler gets the context it was created for");
        self.record(Call::Assigned);
        if self.panic_on_assign {
            panic!("poison pill in partition {}", ctx.partition);
        }
        Ok(())
    }

    async fn revoked(&mut self, _ctx: &PartitionContext) {
        self.record(Call::Revoked);
        if self.hang_on_revoke {
            futures::future::pending::<()>().await;
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.record(Call::Dropped);
    }
}

fn recording_factory(log: &Log, panic_on_assign: bool) -> HandlerFactory {
    factory(log, panic_on_assign, false)
}

fn factory(log: &Log, panic_on_assign: bool, hang_on_revoke: bool) -> HandlerFactory {
    let log = Arc::clone(log);
    Arc::new(move |ctx: &PartitionContext| {
        let handler = Recording { log: Arc::clone(&log), ctx: ctx.clone(), panic_on_assign, hang_on_revoke };
        Box::new(handler) as Box<dyn PartitionHandler>
    })
}

// ---- the simulated cluster ---------------------------------------------------------------

struct Env {
    mem: Arc<MemStore>,
    /// The workers' link to the store, which the test can cut off.
    store: CutOffStore,
    queue: QueueRecord,
    fence: CoordinatorFence,
    config: ClusterConfig,
    log: Log,
}

impl Env {
    /// Pauses tokio's clock, then builds a store on it with one queue and a coordinator lease.
    async fn new(partitions: u64) -> Self {
        tokio::time::pause();
        let mem = Arc::new(MemStore::new(Arc::new(TokioClock::new())));
        let domain = DomainName::new("domain_order").expect("domain name");
        mem.create_domain(&domain).await.expect("create domain");
        let spec = QueueSpec::new(
            domain,
            QueueName::new("food_order").expect("queue name"),
            PartitionCount::new(partitions).expect("partition count"),
        );
        let queue = mem.create_queue(&spec).await.expect("create queue");
        let cluster = ClusterName::default();
        let holder = WorkerId::new_v7();
        let term = mem
            .acquire_lease(&cluster, holder, Duration::from_secs(3600))
            .await
            .expect("acquire lease")
            .expect("lease is free");
        Self {
            store: CutOffStore::new(Arc::clone(&mem) as Arc<dyn Store>),
            mem,
            queue,
            fence: CoordinatorFence { cluster, holder, term },
            config: ClusterConfig::default(),
            log: Log::default(),
        }
    }

    fn registration(&self, id: WorkerId) -> WorkerRegistration {
        WorkerRegistration {
            id,
            host: "localhost".into(),
            pid: 1,
            labels: BTreeMap::new(),
            subscriptions: vec![Subscription { queue_id: self.queue.id, capacity: 1 }],
            session_timeout: self.config.session_timeout,
        }
    }

    /// Starts a worker session and waits until it registered.
    async fn start_worker(&self, factory: HandlerFactory) -> (WorkerId, Addr<WorkerSession>) {
        let id = WorkerId::new_v7();
        let store: Arc<dyn Store> = Arc::new(self.store.clone());
        let session = WorkerSession::new(store, self.config.clone(), self.registration(id), factory).start();
        wait_until!("the worker registered", status(&session).await.session_epoch.is_some());
        (id, session)
    }

    /// Registers a worker by hand (a revocation target that never runs), with a lease long
    /// enough to stay live through a test without heartbeats: a handoff goes only to a live
    /// target.
    async fn register_by_hand(&self) -> WorkerId {
        let id = WorkerId::new_v7();
        let registration =
            WorkerRegistration { session_timeout: Duration::from_secs(3_600), ..self.registration(id) };
        self.mem.register_worker(&registration).await.expect("register by hand");
        id
    }

    async fn row(&self, partition: u32) -> AssignmentRecord {
        let rows = self.mem.assignments(self.queue.id).await.expect("assignments");
        rows.rows.into_iter().find(|r| r.partition == PartitionId(partition)).expect("row of the partition")
    }

    /// The coordinator grants `partition` to `to` (owner absent or dead); returns the new epoch.
    async fn grant(&self, partition: u32, to: WorkerId) -> Epoch {
        let expected_epoch = self.row(partition).await.epoch;
        let change = PlanChange::Grant { partition: PartitionId(partition), expected_epoch, to };
        let outcome = self.mem.apply_plan(&self.fence, self.queue.id, &[change]).await.expect("apply grant");
        assert_eq!(outcome.applied, 1, "grant applied: {outcome:?}");
        expected_epoch.next()
    }

    /// The coordinator asks the owner of `partition` to hand it to `to`.
    async fn revoke(&self, partition: u32, to: WorkerId) {
        let expected_epoch = self.row(partition).await.epoch;
        let change = PlanChange::Revoke { partition: PartitionId(partition), expected_epoch, to: Some(to) };
        let outcome = self.mem.apply_plan(&self.fence, self.queue.id, &[change]).await.expect("apply revoke");
        assert_eq!(outcome.applied, 1, "revoke applied: {outcome:?}");
    }

    /// A second queue of 2 partitions, which the workers started by [`Env::start_worker`] do
    /// not serve.
    async fn queue_not_served(&self) -> QueueRecord {
        let spec = QueueSpec::new(
            DomainName::new("domain_order").expect("domain name"),
            QueueName::new("not_served").expect("queue name"),
            PartitionCount::new(2).expect("partition count"),
        );
        self.mem.create_queue(&spec).await.expect("create queue")
    }

    async fn is_expired(&self, worker: WorkerId) -> bool {
        self.mem
            .list_workers(WorkerFilter::Expired)
            .await
            .expect("list expired")
            .iter()
            .any(|w| w.id == worker)
    }
}

async fn status(session: &Addr<WorkerSession>) -> WorkerStatusReport {
    session.send(GetStatus).await.expect("session answers")
}

async fn runs(session: &Addr<WorkerSession>, queue: QueueId, partition: u32, epoch: Epoch) -> bool {
    status(session).await.running().contains(&(queue, PartitionId(partition), epoch))
}

// ---- scenarios ---------------------------------------------------------------------------

#[actix::test]
async fn heartbeats_keep_the_worker_live_across_many_session_timeouts() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let first = status(&session).await.session_epoch.expect("registered");

    // 10 session timeouts of virtual time.
    for _ in 0..30 {
        tokio::time::sleep(env.config.session_timeout / 3).await;
        let live = env.mem.list_workers(WorkerFilter::Live).await.expect("list live");
        assert!(live.iter().any(|w| w.id == id), "the worker stays live");
    }
    let report = status(&session).await;
    assert_eq!(report.session_epoch, Some(first), "the same session all along");
    assert!(!report.fenced, "a renewing worker is not fenced");
    let record = env.mem.get_worker(id).await.expect("worker record");
    assert_eq!(record.status, WorkerStatus::Active);
    assert_eq!(record.session_epoch, first);
}

#[actix::test]
async fn a_granted_partition_starts_its_handler_with_the_epoch() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let epoch0 = env.grant(0, id).await;
    let epoch2 = env.grant(2, id).await;

    wait_until!("both partitions run", {
        runs(&session, env.queue.id, 0, epoch0).await && runs(&session, env.queue.id, 2, epoch2).await
    });
    assert_eq!(calls(&env.log, Call::Assigned, 0).iter().map(|c| c.1).collect::<Vec<_>>(), vec![epoch0]);
    assert_eq!(calls(&env.log, Call::Assigned, 2).iter().map(|c| c.1).collect::<Vec<_>>(), vec![epoch2]);
    assert!(calls(&env.log, Call::Assigned, 1).is_empty(), "partitions not granted do not start");
    assert_eq!(status(&session).await.running().len(), 2);
}

#[actix::test]
async fn a_revoked_partition_is_drained_then_handed_to_the_target() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let target = env.register_by_hand().await;
    let epoch0 = env.grant(0, id).await;
    let epoch1 = env.grant(1, id).await;
    wait_until!("both partitions run", {
        runs(&session, env.queue.id, 0, epoch0).await && runs(&session, env.queue.id, 1, epoch1).await
    });

    env.revoke(0, target).await;
    wait_until!("the partition is handed off", env.row(0).await.owner == Some(target));

    let row = env.row(0).await;
    assert_eq!(row.epoch, epoch0.next(), "the handoff bumps the epoch");
    assert_eq!(row.state, AssignmentState::Assigned);
    let revoked = calls(&env.log, Call::Revoked, 0);
    assert_eq!(
        revoked.iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![epoch0],
        "revoked ran before the handoff"
    );
    wait_until!(
        "the worker no longer runs it",
        !status(&session).await.partitions.iter().any(|p| p.partition == PartitionId(0))
    );
    assert!(!calls(&env.log, Call::Dropped, 0).is_empty(), "the drained handler is dropped");
    assert!(runs(&session, env.queue.id, 1, epoch1).await, "the partition that does not move keeps running");
    assert!(calls(&env.log, Call::Revoked, 1).is_empty());
}

#[actix::test]
async fn a_worker_cut_off_from_the_store_stops_its_partitions_before_its_lease_expires() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let epoch = env.grant(0, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 0, epoch).await);

    env.store.cut_off();
    let mut stopped_before_expiry = false;
    for _ in 0..MAX_STEPS {
        if env.is_expired(id).await {
            // The store now considers the worker dead: its handler must be gone already.
            let dropped = calls(&env.log, Call::Dropped, 0);
            assert_eq!(dropped.len(), 1, "the handler was stopped before the lease expired");
            let report = status(&session).await;
            assert!(report.fenced, "the worker knows it is fenced");
            assert!(report.running().is_empty(), "no partition runs");
            stopped_before_expiry = true;
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    assert!(stopped_before_expiry, "the lease expired in the store");
    let record = env.mem.get_worker(id).await.expect("worker record");
    let dropped_at = calls(&env.log, Call::Dropped, 0)[0].0;
    // Stopped before the expiry, by about the safety margin (both on the same virtual clock;
    // tokio's timers fire at millisecond granularity, hence the one-step tolerance).
    let now_store = env.mem.now().await.expect("store now");
    let expired_for = (now_store - record.lease_expires_at).to_std().unwrap_or_default();
    let stopped_for = Instant::now().saturating_duration_since(dropped_at);
    assert!(stopped_for > expired_for, "stopped {stopped_for:?} ago, lease expired {expired_for:?} ago");
    assert!(
        stopped_for + STEP >= expired_for + env.config.safety_margin,
        "stopped {stopped_for:?} ago, lease expired {expired_for:?} ago: less than the safety margin"
    );
    assert!(calls(&env.log, Call::Revoked, 0).is_empty(), "a fenced partition is not drained");
}

#[actix::test]
async fn a_worker_declared_dead_registers_again_under_a_new_session() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let first = status(&session).await.session_epoch.expect("registered");
    let epoch0 = env.grant(0, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 0, epoch0).await);

    env.store.cut_off();
    wait_until!("the lease expired", env.is_expired(id).await);
    // The coordinator declares it dead and gives its partition to another worker.
    let other = env.register_by_hand().await;
    let dead = env.mem.mark_workers_dead(&env.fence, &[id]).await.expect("mark dead");
    assert_eq!(dead, vec![id]);
    let moved = env.grant(0, other).await;
    env.store.restore();

    wait_until!("a new session", status(&session).await.session_epoch == Some(first.next()));
    let record = env.mem.get_worker(id).await.expect("worker record");
    assert_eq!(record.status, WorkerStatus::Active);
    assert_eq!(record.session_epoch, first.next());
    assert_eq!(env.row(0).await.owner, Some(other), "the moved partition stays moved");
    assert_eq!(env.row(0).await.epoch, moved);

    // The new session serves what it is granted next.
    let epoch1 = env.grant(1, id).await;
    wait_until!("the new grant runs", runs(&session, env.queue.id, 1, epoch1).await);
    assert!(
        status(&session).await.partitions.iter().all(|p| p.partition != PartitionId(0)),
        "the lost partition does not come back"
    );
    assert_eq!(calls(&env.log, Call::Assigned, 0).len(), 1, "partition 0 ran in the first session only");
}

#[actix::test]
async fn a_panicking_handler_restarts_with_backoff_then_ends_failed() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, true)).await;
    let epoch = env.grant(0, id).await;

    wait_until!("the failure is recorded", env.row(0).await.state == AssignmentState::Failed);
    let attempts = calls(&env.log, Call::Assigned, 0);
    assert_eq!(attempts.len(), 5, "five failures, then it stays stopped");
    assert!(attempts.iter().all(|a| a.1 == epoch));
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let backoff = Duration::from_millis(100) * 2u32.pow(u32::try_from(i).expect("small index"));
        assert!(gap >= backoff, "restart {} came after {gap:?}, expected at least {backoff:?}", i + 1);
    }
    let row = env.row(0).await;
    assert_eq!((row.owner, row.epoch), (None, epoch.next()), "given up, fenced by a new epoch");
    let events = env.mem.events_since(0, 1_000).await.expect("events");
    let failed = events.iter().find(|e| e.kind == EventKind::PartitionFailed).expect("failed event");
    assert_eq!(failed.queue_id, Some(env.queue.id));
    assert_eq!(failed.worker, Some(id));
    assert_eq!(failed.epoch, Some(epoch.next()));
    assert_eq!(failed.detail["failures"], 5);
    wait_until!("the session forgets it", status(&session).await.partitions.is_empty());

    // It stays stopped, and the worker itself stays healthy.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(calls(&env.log, Call::Assigned, 0).len(), 5);
    let report = status(&session).await;
    assert!(!report.fenced);
    assert!(report.partitions.is_empty());
    assert_eq!(env.row(0).await.state, AssignmentState::Failed);

    // Once reset and granted again, it runs again (and, still panicking, restarts).
    assert!(env.mem.reset_partition(env.queue.id, PartitionId(0)).await.expect("reset"));
    let again = env.grant(0, id).await;
    wait_until!("it runs again", calls(&env.log, Call::Assigned, 0).iter().any(|a| a.1 == again));
}

/// A handler whose `assigned` waits for the test's signal, then fails.
struct FailsOnSignal(Arc<tokio::sync::Notify>);

#[async_trait(?Send)]
impl PartitionHandler for FailsOnSignal {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        self.0.notified().await;
        Err(HandlerError::msg("cannot go on"))
    }
    async fn revoked(&mut self, _: &PartitionContext) {}
}

#[actix::test]
async fn a_failure_that_cannot_reach_the_store_is_reported_again_once_it_can() {
    let env = Env::new(4).await;
    let signal = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&signal);
    let factory: HandlerFactory = Arc::new(move |_: &PartitionContext| {
        Box::new(FailsOnSignal(Arc::clone(&gate))) as Box<dyn PartitionHandler>
    });
    let id = WorkerId::new_v7();
    let policy = RestartPolicy { max_failures: 1, ..RestartPolicy::default() };
    let session =
        WorkerSession::new(Arc::new(env.store.clone()), env.config.clone(), env.registration(id), factory)
            .with_restart_policy(policy)
            .start();
    wait_until!("the worker registered", status(&session).await.session_epoch.is_some());
    let epoch = env.grant(0, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 0, epoch).await);

    env.store.cut_off();
    signal.notify_one();
    wait_until!("the partition failed here", {
        status(&session).await.partitions.iter().any(|p| p.state == PartitionState::Failed)
    });
    let row = env.row(0).await;
    assert_eq!((row.owner, row.state), (Some(id), AssignmentState::Assigned), "the store has not heard yet");

    // Back before the worker's lease runs out: its next poll reports the failure again.
    env.store.restore();
    wait_until!("the failure is recorded", env.row(0).await.state == AssignmentState::Failed);
    assert_eq!(env.row(0).await.epoch, epoch.next());
    let events = env.mem.events_since(0, 1_000).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::PartitionFailed).count(), 1);
    wait_until!("the session forgets it", status(&session).await.partitions.is_empty());
    assert!(!status(&session).await.fenced);
}

#[actix::test]
async fn a_graceful_leave_releases_every_partition_and_deregisters() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let session_epoch = status(&session).await.session_epoch.expect("registered");
    let epoch0 = env.grant(0, id).await;
    let epoch3 = env.grant(3, id).await;
    wait_until!("both partitions run", {
        runs(&session, env.queue.id, 0, epoch0).await && runs(&session, env.queue.id, 3, epoch3).await
    });

    let outcome = session.send(Leave).await.expect("leave answered");
    assert!(outcome.deregistered);
    assert_eq!(outcome.released, vec![(env.queue.id, PartitionId(0)), (env.queue.id, PartitionId(3))]);
    assert!(outcome.handed_off.is_empty());

    for (partition, epoch) in [(0, epoch0), (3, epoch3)] {
        let row = env.row(partition).await;
        assert_eq!(row.owner, None, "partition {partition} released");
        assert_eq!(row.epoch, epoch.next());
        assert_eq!(calls(&env.log, Call::Revoked, partition).len(), 1, "partition {partition} drained first");
    }
    let answer =
        env.mem.heartbeat(id, session_epoch, env.config.session_timeout).await.expect("heartbeat answers");
    assert_eq!(answer, Heartbeat::Deregistered);
    wait_until!("the session actor stopped", !session.connected());
    assert_eq!(env.mem.get_worker(id).await.expect("worker record").status, WorkerStatus::Left);
}

#[actix::test]
async fn a_worker_that_renews_again_in_time_resumes_its_partitions() {
    let mut env = Env::new(4).await;
    // A wide margin so that the worker fences itself well before the store would expire it.
    env.config.session_timeout = Duration::from_secs(4);
    env.config.safety_margin = Duration::from_millis(1500);
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let first = status(&session).await.session_epoch.expect("registered");
    let epoch = env.grant(0, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 0, epoch).await);

    env.store.cut_off();
    wait_until!("the worker fenced itself", status(&session).await.fenced);
    assert_eq!(calls(&env.log, Call::Dropped, 0).len(), 1, "fencing stopped the handler");
    assert!(!env.is_expired(id).await, "the store still counts the worker live");
    env.store.restore();

    wait_until!("the partition runs again", runs(&session, env.queue.id, 0, epoch).await);
    assert_eq!(status(&session).await.session_epoch, Some(first), "renewed, not registered again");
    assert_eq!(
        calls(&env.log, Call::Assigned, 0).iter().map(|c| c.1).collect::<Vec<_>>(),
        vec![epoch, epoch]
    );
    assert!(calls(&env.log, Call::Revoked, 0).is_empty());
}

#[actix::test]
async fn a_drain_that_does_not_finish_is_cancelled_at_the_drain_timeout() {
    let mut env = Env::new(4).await;
    env.config.drain_timeout = Duration::from_secs(2);
    let (id, session) = env.start_worker(factory(&env.log, false, true)).await;
    let target = env.register_by_hand().await;
    let epoch = env.grant(0, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 0, epoch).await);

    env.revoke(0, target).await;
    wait_until!("revoked runs", !calls(&env.log, Call::Revoked, 0).is_empty());
    let revoked_at = calls(&env.log, Call::Revoked, 0)[0].0;
    wait_until!("the partition is handed off", env.row(0).await.owner == Some(target));
    let handed_off_after = Instant::now().saturating_duration_since(revoked_at);
    assert!(
        handed_off_after >= env.config.drain_timeout,
        "handed off {handed_off_after:?} after the drain began"
    );
    assert!(
        handed_off_after < env.config.drain_timeout + env.config.heartbeat_interval,
        "handed off {handed_off_after:?} after the drain began, long after the drain timeout"
    );
    assert_eq!(env.row(0).await.epoch, epoch.next());
    assert_eq!(calls(&env.log, Call::Dropped, 0).len(), 1, "the hanging handler was cancelled and dropped");
    assert!(status(&session).await.partitions.is_empty());
}

#[actix::test]
async fn a_worker_whose_store_calls_hang_still_fences_itself_in_time() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let first = status(&session).await.session_epoch.expect("registered");
    let epoch = env.grant(0, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 0, epoch).await);

    // Heartbeats hang instead of failing: the fence timer does not wait for them.
    env.store.stall();
    wait_until!("the lease expired", env.is_expired(id).await);
    assert_eq!(calls(&env.log, Call::Dropped, 0).len(), 1, "stopped before the lease expired");
    assert!(status(&session).await.fenced);

    env.store.restore();
    wait_until!("a new session", status(&session).await.session_epoch == Some(first.next()));
    // The new session adopted the partition at the next epoch.
    wait_until!("the partition runs again", runs(&session, env.queue.id, 0, epoch.next()).await);
}

#[actix::test]
async fn a_killed_worker_stops_its_partitions_at_once_and_says_no_goodbye() {
    let env = Env::new(4).await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let epoch1 = env.grant(1, id).await;
    wait_until!("the partition runs", runs(&session, env.queue.id, 1, epoch1).await);

    session.do_send(Kill);
    wait_until!("the session actor stopped", !session.connected());
    wait_until!("the handler was dropped", !calls(&env.log, Call::Dropped, 1).is_empty());
    assert!(calls(&env.log, Call::Revoked, 1).is_empty(), "a killed worker does not drain");

    let row = env.row(1).await;
    assert_eq!(row.owner, Some(id), "nothing released");
    assert_eq!(row.epoch, epoch1);
    assert_eq!(env.mem.get_worker(id).await.expect("worker record").status, WorkerStatus::Active);
    assert!(!env.is_expired(id).await, "the lease still runs");
    wait_until!("the lease ran out in the store", env.is_expired(id).await);
}

/// A grant of a partition of a queue the worker does not serve (a custom allocator may make
/// one) is never run: the worker gives it back at its epoch, so the coordinator can place it on
/// a worker that serves the queue.
#[actix::test]
async fn a_partition_of_a_queue_the_worker_does_not_serve_is_given_back_not_run() {
    let env = Env::new(2).await;
    let other = env.queue_not_served().await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let change = PlanChange::Grant { partition: PartitionId(1), expected_epoch: Epoch(0), to: id };
    let outcome = env.mem.apply_plan(&env.fence, other.id, &[change]).await.expect("apply grant");
    assert_eq!(outcome.applied, 1, "{outcome:?}");
    // A grant on its own queue makes the worker poll, and so see both rows.
    let epoch = env.grant(0, id).await;
    wait_until!("its own partition runs", runs(&session, env.queue.id, 0, epoch).await);
    let given_back = || async {
        let row = &env.mem.assignments(other.id).await.expect("rows").rows[1];
        (row.owner, row.epoch, row.state)
    };
    wait_until!(
        "the partition was given back",
        given_back().await == (None, Epoch(2), AssignmentState::Assigned)
    );
    assert!(calls(&env.log, Call::Assigned, 1).is_empty(), "ran a queue it does not serve");
    assert!(status(&session).await.partitions.iter().all(|p| p.queue == env.queue.id));
}

/// A give-back whose failure is answered only after the worker fenced itself (its answer is
/// stale by then) is still tried again once the session renews: the partition is given back,
/// not kept forever by a worker that neither runs it nor gives it up.
#[actix::test]
async fn a_give_back_that_failed_across_a_fence_is_tried_again_after_the_renewal() {
    let mut env = Env::new(2).await;
    // The fence lapses 2 s after the last renewal was sent, the lease runs 3 s.
    env.config.safety_margin = Duration::from_secs(1);
    let other = env.queue_not_served().await;
    let (id, session) = env.start_worker(recording_factory(&env.log, false)).await;
    let change = PlanChange::Grant { partition: PartitionId(1), expected_epoch: Epoch(0), to: id };
    env.mem.apply_plan(&env.fence, other.id, &[change]).await.expect("apply grant");
    // The poll that shows both rows answers 200 ms after its heartbeat; the release it starts
    // reaches the link 1.9 s later, when the worker has fenced itself and the link is cut off.
    env.store.delay_polls(Duration::from_millis(200));
    env.store.inject("release_partition", CallFault::Delay(Duration::from_millis(1_900)), 1);
    let epoch = env.grant(0, id).await;
    wait_until!("its own partition runs", runs(&session, env.queue.id, 0, epoch).await);
    let started = Instant::now();
    env.store.delay_polls(Duration::ZERO);
    env.store.cut_off();
    wait_until!("the worker fenced itself", status(&session).await.fenced);
    tokio::time::sleep_until(started + Duration::from_millis(2_000)).await;
    env.store.restore();
    wait_until!("the worker renews", !status(&session).await.fenced);
    let session_epoch = status(&session).await.session_epoch;
    let released = || async { env.mem.assignments(other.id).await.expect("rows").rows[1].owner.is_none() };
    wait_until!("the partition was given back", released().await);
    assert_eq!(status(&session).await.session_epoch, session_epoch, "the same session gave it back");
    assert!(calls(&env.log, Call::Assigned, 1).is_empty(), "ran a queue it does not serve");
}

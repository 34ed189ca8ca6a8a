//! The ownership guard (DESIGN §4 rule 10): a handler's ticker spawned through
//! `ctx.guard().spawn` stops when the ownership ends (revocation, fence, lost session) and
//! never ticks under an old epoch once the new owner has started; and a handler that blocks
//! its thread does not stop the worker's heartbeats, and a worker frozen as by SIGSTOP does not
//! tick under its old epoch when it wakes. All use the in-memory store; the two that block
//! real threads run on real time, the others on virtual time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr};
use async_trait::async_trait;
use helix_actors::TokioClock;
use helix_actors::node::Worker;
use helix_actors::testing::CutOffStore;
use helix_actors::worker::{
    GetStatus, HandlerError, HandlerFactory, PartitionContext, PartitionHandler, WorkerSession,
    WorkerStatusReport,
};
use helix_core::planner::PlanChange;
use helix_core::{
    ClusterConfig, ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueName, WorkerId,
};
use helix_store::{
    AssignmentRecord, CoordinatorFence, MemStore, QueueRecord, QueueSpec, Store, Subscription, WorkerFilter,
    WorkerRegistration,
};
use tokio::time::Instant;

/// One step of tokio's clock while waiting for a condition.
const STEP: Duration = Duration::from_millis(10);
/// At most this many steps (20 s of tokio's clock) per wait.
const MAX_STEPS: usize = 2_000;

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

/// How often the tickers tick.
const TICK: Duration = Duration::from_millis(20);

/// One tick: when, by which worker, under which epoch, in which ownership (a counter per
/// handler created).
#[derive(Debug, Clone, Copy)]
struct Tick {
    at: Instant,
    worker: WorkerId,
    epoch: Epoch,
    ownership: u64,
}

#[derive(Default)]
struct Ticks {
    ticks: Mutex<Vec<Tick>>,
    created: Mutex<u64>,
}

impl Ticks {
    fn all(&self) -> Vec<Tick> {
        self.ticks.lock().expect("ticks").clone()
    }

    fn of(&self, worker: WorkerId, epoch: Epoch) -> Vec<Tick> {
        self.all().into_iter().filter(|t| t.worker == worker && t.epoch == epoch).collect()
    }

    /// Every tick of an older epoch comes before every tick of a newer one, in the order
    /// they happened (one thread: the log's order is the order of events).
    fn assert_no_stale_tick(&self) {
        let ticks = self.all();
        let mut highest = Epoch(0);
        for (i, tick) in ticks.iter().enumerate() {
            assert!(
                tick.epoch >= highest,
                "tick {i} of {} under epoch {} after a tick under {highest}: {tick:?}",
                ticks.len(),
                tick.epoch
            );
            highest = tick.epoch;
        }
    }
}

/// A handler that ticks every [`TICK`] through the ownership guard.
struct Ticker {
    ticks: Arc<Ticks>,
    ownership: u64,
}

#[async_trait(?Send)]
impl PartitionHandler for Ticker {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        let (ticks, ownership, worker, epoch) =
            (Arc::clone(&self.ticks), self.ownership, ctx.worker, ctx.epoch);
        ctx.guard().spawn(async move {
            let mut every = tokio::time::interval(TICK);
            loop {
                every.tick().await;
                let tick = Tick { at: Instant::now(), worker, epoch, ownership };
                ticks.ticks.lock().expect("ticks").push(tick);
            }
        });
        Ok(())
    }

    async fn revoked(&mut self, _: &PartitionContext) {}
}

fn ticker_factory(ticks: &Arc<Ticks>) -> HandlerFactory {
    let ticks = Arc::clone(ticks);
    Arc::new(move |_: &PartitionContext| {
        let ownership = {
            let mut created = ticks.created.lock().expect("created");
            *created += 1;
            *created
        };
        Box::new(Ticker { ticks: Arc::clone(&ticks), ownership }) as Box<dyn PartitionHandler>
    })
}

struct Env {
    mem: Arc<MemStore>,
    queue: QueueRecord,
    fence: CoordinatorFence,
    config: ClusterConfig,
}

impl Env {
    /// A store with one queue of one partition and a coordinator lease held by hand, on
    /// tokio's clock (virtual time when paused).
    async fn new(config: ClusterConfig) -> Self {
        let mem = Arc::new(MemStore::new(Arc::new(TokioClock::new())));
        let domain = DomainName::new("domain_order").expect("domain name");
        mem.create_domain(&domain).await.expect("create domain");
        let spec = QueueSpec::new(
            domain,
            QueueName::new("food_order").expect("queue name"),
            PartitionCount::new(1).expect("partition count"),
        );
        let queue = mem.create_queue(&spec).await.expect("create queue");
        let (cluster, holder) = (ClusterName::default(), WorkerId::new_v7());
        let term = mem
            .acquire_lease(&cluster, holder, Duration::from_secs(3600))
            .await
            .expect("acquire lease")
            .expect("lease is free");
        Self { mem, queue, fence: CoordinatorFence { cluster, holder, term }, config }
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

    /// Starts a worker session over `store` and waits until it registered.
    async fn start_worker(
        &self,
        store: Arc<dyn Store>,
        factory: HandlerFactory,
    ) -> (WorkerId, Addr<WorkerSession>) {
        let id = WorkerId::new_v7();
        let session = WorkerSession::new(store, self.config.clone(), self.registration(id), factory).start();
        wait_until!("the worker registered", status(&session).await.session_epoch.is_some());
        (id, session)
    }

    async fn row(&self) -> AssignmentRecord {
        let rows = self.mem.assignments(self.queue.id).await.expect("assignments");
        rows.rows.into_iter().next().expect("the partition's row")
    }

    /// The coordinator grants the partition to `to` (no owner, or a dead one).
    async fn grant(&self, to: WorkerId) -> Epoch {
        let expected_epoch = self.row().await.epoch;
        let change = PlanChange::Grant { partition: PartitionId(0), expected_epoch, to };
        let outcome = self.mem.apply_plan(&self.fence, self.queue.id, &[change]).await.expect("apply grant");
        assert_eq!(outcome.applied, 1, "grant applied: {outcome:?}");
        expected_epoch.next()
    }

    /// The coordinator asks the live owner to hand the partition to `to`.
    async fn revoke(&self, to: WorkerId) {
        let expected_epoch = self.row().await.epoch;
        let change = PlanChange::Revoke { partition: PartitionId(0), expected_epoch, to: Some(to) };
        let outcome = self.mem.apply_plan(&self.fence, self.queue.id, &[change]).await.expect("apply revoke");
        assert_eq!(outcome.applied, 1, "revoke applied: {outcome:?}");
    }

    async fn is_expired(&self, worker: WorkerId) -> bool {
        let expired = self.mem.list_workers(WorkerFilter::Expired).await.expect("list expired");
        expired.iter().any(|w| w.id == worker)
    }
}

async fn status(session: &Addr<WorkerSession>) -> WorkerStatusReport {
    session.send(GetStatus).await.expect("session answers")
}

#[actix::test]
async fn a_guarded_ticker_stops_at_the_handoff_before_the_new_owner_ticks() {
    tokio::time::pause();
    let env = Env::new(ClusterConfig::default()).await;
    let ticks = Arc::new(Ticks::default());
    let (a, _sa) = env.start_worker(Arc::clone(&env.mem) as Arc<dyn Store>, ticker_factory(&ticks)).await;
    let (b, _sb) = env.start_worker(Arc::clone(&env.mem) as Arc<dyn Store>, ticker_factory(&ticks)).await;
    let first = env.grant(a).await;
    wait_until!("a ticks", ticks.of(a, first).len() >= 5);

    env.revoke(b).await;
    let second = first.next();
    wait_until!("b ticks under the next epoch", !ticks.of(b, second).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;

    ticks.assert_no_stale_tick();
    let last_a = ticks.of(a, first).last().map(|t| t.at).expect("a ticked");
    let first_b = ticks.of(b, second).first().map(|t| t.at).expect("b ticked");
    assert!(last_a <= first_b, "a's ticker stopped before b's started");
    assert!(ticks.of(b, second).len() > 50, "b keeps ticking");
}

#[actix::test]
async fn a_guarded_ticker_stops_at_the_fence_before_the_lease_expires() {
    tokio::time::pause();
    let env = Env::new(ClusterConfig::default()).await;
    let ticks = Arc::new(Ticks::default());
    let link = CutOffStore::new(Arc::clone(&env.mem) as Arc<dyn Store>);
    let (a, _sa) = env.start_worker(Arc::new(link.clone()), ticker_factory(&ticks)).await;
    let (b, _sb) = env.start_worker(Arc::clone(&env.mem) as Arc<dyn Store>, ticker_factory(&ticks)).await;
    let first = env.grant(a).await;
    wait_until!("a ticks", ticks.of(a, first).len() >= 5);

    // A can no longer renew: it must stop ticking by its fence deadline, before the store
    // finds its lease expired and the coordinator grants the partition to B.
    link.cut_off();
    wait_until!("a's lease expired in the store", env.is_expired(a).await);
    let expired_at = Instant::now();
    let second = env.grant(b).await;
    wait_until!("b ticks under the next epoch", !ticks.of(b, second).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;

    ticks.assert_no_stale_tick();
    let last_a = ticks.of(a, first).last().map(|t| t.at).expect("a ticked");
    assert!(last_a < expired_at, "a stopped ticking before its lease expired in the store");
}

#[actix::test]
async fn a_guarded_ticker_stops_when_the_session_is_lost() {
    tokio::time::pause();
    let env = Env::new(ClusterConfig::default()).await;
    let ticks = Arc::new(Ticks::default());
    let (a, sa) = env.start_worker(Arc::clone(&env.mem) as Arc<dyn Store>, ticker_factory(&ticks)).await;
    let first = env.grant(a).await;
    wait_until!("a ticks", ticks.of(a, first).len() >= 5);
    let session = status(&sa).await.session_epoch.expect("registered");

    // The session ends in the store behind the worker's back and another process takes the
    // id over (the store's view of a superseding process; a live id cannot be taken over).
    env.mem.deregister_worker(a, session).await.expect("end the session in the store");
    env.mem.register_worker(&env.registration(a)).await.expect("register the id again");
    // A superseded session stops for good (DESIGN §4 rule 8).
    wait_until!("a's session learned it was superseded", !sa.connected());
    let ownership = ticks.of(a, first).first().map(|t| t.ownership).expect("a ticked");
    let before = ticks.all().iter().filter(|t| t.ownership == ownership).count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ticks.all().iter().filter(|t| t.ownership == ownership).count();
    assert_eq!(before, after, "the superseded session's ticker no longer ticks");
}

/// Real time: the handler really blocks its thread for five session timeouts.
#[actix::test]
async fn a_handler_that_blocks_its_thread_does_not_stop_the_heartbeats() {
    let config = ClusterConfig {
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_millis(600),
        safety_margin: Duration::from_millis(200),
        ..ClusterConfig::default()
    };
    let env = Env::new(config.clone()).await;
    let blocking = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicBool::new(false));
    let (flag, done) = (Arc::clone(&blocking), Arc::clone(&blocked));
    let worker = Worker::builder(Arc::clone(&env.mem) as Arc<dyn Store>, config.clone())
        .serve(env.queue.id, 1)
        .handler_fn(move |_| Box::new(Blocking { blocking: Arc::clone(&flag), blocked: Arc::clone(&done) }))
        .start()
        .await
        .expect("worker starts");
    let id = worker.id();
    wait_until!("the worker registered", worker.status().await.expect("status").session_epoch.is_some());
    let session = worker.status().await.expect("status").session_epoch;
    let epoch = env.grant(id).await;

    wait_until!("the handler blocks its thread", blocking.load(Ordering::SeqCst));
    while !blocked.load(Ordering::SeqCst) {
        assert!(!env.is_expired(id).await, "the lease stays renewed while a handler blocks");
        tokio::time::sleep(STEP).await;
    }
    assert!(!env.is_expired(id).await, "the lease stays renewed while a handler blocks");
    let record = env.mem.get_worker(id).await.expect("worker record");
    assert_eq!(Some(record.session_epoch), session, "the same session all along");
    wait_until!(
        "the partition runs on",
        worker.status().await.expect("status").running() == vec![(env.queue.id, PartitionId(0), epoch)]
    );
    assert_eq!(worker.status().await.expect("status").session_epoch, session);
    worker.leave().await.expect("leave");
}

/// Real time: the whole worker (its control and handler arbiters) freezes for five session
/// timeouts, as under SIGSTOP, while another worker takes its partition over; after the
/// freeze its ticker must not tick once more under the old epoch.
#[actix::test]
async fn a_frozen_worker_does_not_tick_under_its_old_epoch_when_it_wakes() {
    let config = ClusterConfig {
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_millis(600),
        safety_margin: Duration::from_millis(200),
        ..ClusterConfig::default()
    };
    let env = Env::new(config.clone()).await;
    let ticks = Arc::new(Ticks::default());
    let (control, handlers) = (actix::Arbiter::new(), actix::Arbiter::new());
    let a = WorkerId::new_v7();
    let (store, registration, factory, handler_arbiter) = (
        Arc::clone(&env.mem) as Arc<dyn Store>,
        env.registration(a),
        ticker_factory(&ticks),
        handlers.handle(),
    );
    let session = WorkerSession::start_in_arbiter(&control.handle(), move |_| {
        WorkerSession::new(store, config, registration, factory).with_handler_arbiter(handler_arbiter)
    });
    wait_until!("a registered", status(&session).await.session_epoch.is_some());
    let (b, _sb) = env.start_worker(Arc::clone(&env.mem) as Arc<dyn Store>, ticker_factory(&ticks)).await;
    let first = env.grant(a).await;
    wait_until!("a ticks", ticks.of(a, first).len() >= 5);

    // The fault under test, not a wait: both of a's threads stop, as the process would.
    let woken = Arc::new(AtomicBool::new(false));
    for arbiter in [control.handle(), handlers.handle()] {
        let woken = Arc::clone(&woken);
        arbiter.spawn_fn(move || {
            std::thread::sleep(Duration::from_secs(3));
            woken.store(true, Ordering::SeqCst);
        });
    }
    wait_until!("a's lease expired in the store", env.is_expired(a).await);
    let second = env.grant(b).await;
    wait_until!("b ticks under the next epoch", !ticks.of(b, second).is_empty());
    wait_until!("a's threads run again", woken.load(Ordering::SeqCst));
    wait_until!("a noticed it lost its session", status(&session).await.running().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;

    ticks.assert_no_stale_tick();
    control.stop();
    handlers.stop();
}

/// Blocks its thread in `assigned` for five session timeouts of the test's configuration.
struct Blocking {
    blocking: Arc<AtomicBool>,
    blocked: Arc<AtomicBool>,
}

#[async_trait(?Send)]
impl PartitionHandler for Blocking {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        if !self.blocking.swap(true, Ordering::SeqCst) {
            // The fault under test, not a wait: user code that blocks its thread.
            std::thread::sleep(Duration::from_secs(3));
            self.blocked.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn revoked(&mut self, _: &PartitionContext) {}
}

#[actix::test]
async fn a_panicking_handler_factory_counts_as_a_failure_and_the_partition_restarts() {
    tokio::time::pause();
    let env = Env::new(ClusterConfig::default()).await;
    let ticks = Arc::new(Ticks::default());
    let inner = ticker_factory(&ticks);
    let panicked = Arc::new(AtomicBool::new(false));
    let once = Arc::clone(&panicked);
    let factory: HandlerFactory = Arc::new(move |ctx: &PartitionContext| {
        if !once.swap(true, Ordering::SeqCst) {
            panic!("no handler for partition {}", ctx.partition);
        }
        inner(ctx)
    });
    let (a, _sa) = env.start_worker(Arc::clone(&env.mem) as Arc<dyn Store>, factory).await;
    let epoch = env.grant(a).await;
    wait_until!("the restarted partition ticks", !ticks.of(a, epoch).is_empty());
    assert!(panicked.load(Ordering::SeqCst), "the factory panicked first");
}

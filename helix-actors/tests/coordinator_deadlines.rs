//! The coordinator's deadlines on virtual time with the in-memory store: an allocator that
//! hangs or panics, and store calls that hang inside a round. The leader must step down and
//! release its lease so the standby takes over within the lease and a second, and a failure
//! in one queue must not stop the round for the others.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use helix_actors::TokioClock;
use helix_actors::coordinator::{Allocate, AllocateResult, StrategyAllocator};
use helix_core::{
    ClusterConfig, ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueId, QueueName,
    SessionEpoch, Term, WorkerId,
};
use helix_store::{
    AssignmentRecord, AssignmentState, CoordinatorFence, DomainRecord, Event, Heartbeat, LeaseRecord,
    MemStore, NewEvent, PlanChange, PlanOutcome, QueueAssignments, QueueRecord, QueueSpec, Store,
    StoreResult, Subscription, WorkerFilter, WorkerLease, WorkerRecord, WorkerRegistration, WorkerStatus,
};
use helix_store::{
    CancelOutcome, Enqueued, NewTask, OwnerFence, TaskBatchOutcome, TaskCount, TaskFailure, TaskId,
    TaskRecord, TaskRecovery, TaskRetry, TaskState,
};
use tokio::time::Instant;

mod support;

use support::{Harness, pass, wait_for};

fn virtual_store() -> Arc<dyn Store> {
    Arc::new(MemStore::new(Arc::new(TokioClock::new())))
}

/// A method name, and the queue it hangs for (`None`: every call).
type HungCall = (&'static str, Option<QueueId>);

/// A link to a store on which chosen calls hang forever: by method name, and for
/// `assignments` optionally for one queue only.
#[derive(Clone)]
struct HangingStore {
    inner: Arc<dyn Store>,
    hung: Arc<Mutex<BTreeSet<HungCall>>>,
    /// When a call first hung.
    first_hung: Arc<Mutex<Option<Instant>>>,
}

impl HangingStore {
    fn new(inner: Arc<dyn Store>) -> Self {
        Self { inner, hung: Arc::new(Mutex::new(BTreeSet::new())), first_hung: Arc::new(Mutex::new(None)) }
    }

    /// Makes every later call of `method` (for `queue` only, if given) hang.
    fn hang(&self, method: &'static str, queue: Option<QueueId>) {
        self.hung.lock().expect("hung").insert((method, queue));
    }

    fn hangs(&self, method: &'static str, queue: Option<QueueId>) -> bool {
        let hung = self.hung.lock().expect("hung");
        let hangs = hung.contains(&(method, None)) || (queue.is_some() && hung.contains(&(method, queue)));
        if hangs {
            self.first_hung.lock().expect("first hung").get_or_insert_with(Instant::now);
        }
        hangs
    }

    async fn gate(&self, method: &'static str) {
        if self.hangs(method, None) {
            std::future::pending::<()>().await;
        }
    }

    async fn gate_queue(&self, method: &'static str, queue: QueueId) {
        if self.hangs(method, Some(queue)) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Store for HangingStore {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        self.gate("now").await;
        self.inner.now().await
    }
    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.gate("create_domain").await;
        self.inner.create_domain(name).await
    }
    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.gate("get_domain").await;
        self.inner.get_domain(name).await
    }
    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        self.gate("list_domains").await;
        self.inner.list_domains().await
    }
    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        self.gate("delete_domain").await;
        self.inner.delete_domain(name).await
    }
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        self.gate("create_queue").await;
        self.inner.create_queue(spec).await
    }
    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        self.gate("get_queue").await;
        self.inner.get_queue(domain, name).await
    }
    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        self.gate("get_queue_by_id").await;
        self.inner.get_queue_by_id(id).await
    }
    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        self.gate("list_queues").await;
        self.inner.list_queues(domain).await
    }
    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        self.gate("delete_queue").await;
        self.inner.delete_queue(domain, name).await
    }
    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        self.gate("register_worker").await;
        self.inner.register_worker(registration).await
    }
    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        self.gate("heartbeat").await;
        self.inner.heartbeat(worker, session_epoch, session_timeout).await
    }
    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        self.gate("set_worker_status").await;
        self.inner.set_worker_status(worker, session_epoch, status).await
    }
    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        self.gate("deregister_worker").await;
        self.inner.deregister_worker(worker, session_epoch).await
    }
    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        self.gate("get_worker").await;
        self.inner.get_worker(worker).await
    }
    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        self.gate("list_workers").await;
        self.inner.list_workers(filter).await
    }
    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        self.gate("mark_workers_dead").await;
        self.inner.mark_workers_dead(fence, workers).await
    }
    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        self.gate("acquire_lease").await;
        self.inner.acquire_lease(cluster, holder, lease).await
    }
    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        self.gate("renew_lease").await;
        self.inner.renew_lease(fence, lease).await
    }
    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        self.gate("release_lease").await;
        self.inner.release_lease(fence).await
    }
    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        self.gate("get_lease").await;
        self.inner.get_lease(cluster).await
    }
    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        self.gate_queue("assignments", queue).await;
        self.inner.assignments(queue).await
    }
    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        self.gate("assignments_of").await;
        self.inner.assignments_of(worker).await
    }
    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        self.gate("apply_plan").await;
        self.inner.apply_plan(fence, queue, changes).await
    }
    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.gate("handoff").await;
        self.inner.handoff(queue, partition, worker, epoch).await
    }
    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.gate("release_partition").await;
        self.inner.release_partition(queue, partition, worker, epoch).await
    }
    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch> {
        self.gate("fail_partition").await;
        self.inner.fail_partition(queue, partition, worker, epoch, detail).await
    }
    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        self.gate("reset_partition").await;
        self.inner.reset_partition(queue, partition).await
    }
    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        self.gate("append_event").await;
        self.inner.append_event(event).await
    }
    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        self.gate("events_since").await;
        self.inner.events_since(after, limit).await
    }
    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        self.gate("prune_events").await;
        self.inner.prune_events(older_than).await
    }
    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        self.gate("enqueue_task").await;
        self.inner.enqueue_task(queue, task).await
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        self.gate("enqueue_tasks").await;
        self.inner.enqueue_tasks(queue, tasks).await
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        self.gate("claim_tasks").await;
        self.inner.claim_tasks(fence, limit).await
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        self.gate("complete_tasks").await;
        self.inner.complete_tasks(fence, ids).await
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        self.gate("fail_tasks").await;
        self.inner.fail_tasks(fence, failures).await
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        self.gate("retry_tasks_later").await;
        self.inner.retry_tasks_later(fence, retries).await
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        self.gate("extend_tasks").await;
        self.inner.extend_tasks(fence, ids, by).await
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        self.gate("cancel_task").await;
        self.inner.cancel_task(id).await
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        self.gate("recover_partition_tasks").await;
        self.inner.recover_partition_tasks(fence).await
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<std::collections::BTreeMap<PartitionId, DateTime<Utc>>> {
        self.gate("next_due").await;
        self.inner.next_due(queue, partitions).await
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        self.gate("task_counts").await;
        self.inner.task_counts(queue).await
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.gate("get_task").await;
        self.inner.get_task(id).await
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        self.gate("list_tasks").await;
        self.inner.list_tasks(queue, state, after, limit).await
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.gate("retry_dead_task").await;
        self.inner.retry_dead_task(id).await
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        self.gate("prune_tasks").await;
        self.inner.prune_tasks(older_than, limit).await
    }
}

/// What the faulty allocator does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Hang,
    Panic,
}

/// An allocator that answers like the default one, or hangs, or panics, and notes when it
/// first failed.
struct Faulty {
    mode: Arc<Mutex<Mode>>,
    first_failure: Arc<Mutex<Option<Instant>>>,
    inner: Addr<StrategyAllocator>,
}

impl Actor for Faulty {
    type Context = Context<Self>;
}

impl Handler<Allocate> for Faulty {
    type Result = ResponseFuture<AllocateResult>;

    fn handle(&mut self, msg: Allocate, _: &mut Self::Context) -> Self::Result {
        let mode = *self.mode.lock().expect("mode");
        if mode != Mode::Healthy {
            self.first_failure.lock().expect("first failure").get_or_insert_with(Instant::now);
        }
        match mode {
            Mode::Healthy => {
                let inner = self.inner.clone();
                Box::pin(async move { inner.send(msg).await.unwrap_or_default() })
            }
            Mode::Hang => Box::pin(std::future::pending()),
            Mode::Panic => panic!("allocator bug"),
        }
    }
}

async fn lease(store: &Arc<dyn Store>) -> Option<LeaseRecord> {
    store.get_lease(&ClusterName::default()).await.expect("lease")
}

/// A simulated worker subscribed to `queues` (as `Harness::worker`, for several queues).
fn worker_on(h: &Harness, queues: &[QueueId]) -> (WorkerId, tokio::task::JoinHandle<()>) {
    let id = WorkerId::new_v7();
    let store = Arc::clone(&h.store);
    let config = h.config.clone();
    let registration = WorkerRegistration {
        id,
        host: "localhost".into(),
        pid: 1,
        labels: BTreeMap::new(),
        subscriptions: queues.iter().map(|&queue_id| Subscription { queue_id, capacity: 1 }).collect(),
        session_timeout: config.session_timeout,
    };
    let task = actix::spawn(async move {
        let mut session = store.register_worker(&registration).await.expect("register").session_epoch;
        loop {
            match store.heartbeat(id, session, config.session_timeout).await {
                Ok(Heartbeat::Renewed { .. }) | Err(_) => {}
                Ok(_) => {
                    if let Ok(lease) = store.register_worker(&registration).await {
                        session = lease.session_epoch;
                    }
                }
            }
            for row in store.assignments_of(id).await.unwrap_or_default() {
                if row.state == AssignmentState::Revoking {
                    let _ = store.handoff(row.queue_id, row.partition, id, row.epoch).await;
                }
            }
            pass(config.heartbeat_interval).await;
        }
    });
    (id, task)
}

/// How a leader is made to stop doing work.
enum Fault {
    Allocator(Mode),
    StoreCall(&'static str),
}

/// A leader with a healthy allocator and store settles 20 partitions over two workers; a
/// standby follows. Then `fault` strikes the leader and a worker dies: the leader must step
/// down and release the lease so the standby takes over within the lease and a second of the
/// leader's first stuck call, and the standby moves the dead worker's partitions.
async fn standby_takes_over_from_a_stuck_leader(fault: Fault) {
    tokio::time::pause();
    let config = ClusterConfig::default();
    let h = Harness::new(virtual_store(), 20, config.clone()).await;
    let mode = Arc::new(Mutex::new(Mode::Healthy));
    let first_failure = Arc::new(Mutex::new(None));
    let allocator = Faulty {
        mode: Arc::clone(&mode),
        first_failure: Arc::clone(&first_failure),
        inner: StrategyAllocator.start(),
    }
    .start();
    let link = HangingStore::new(Arc::clone(&h.store));
    let _leader = h.coordinator(Arc::new(link.clone()), allocator.recipient());
    let (_, victim) = h.worker();
    let (_survivor, _task) = h.worker();
    assert!(wait_for(Duration::from_secs(10), || h.settled(&[10, 10])).await, "{:?}", h.loads().await);
    let first = lease(&h.store).await.expect("a lease");
    let _standby = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    pass(Duration::from_secs(2)).await;

    match fault {
        Fault::Allocator(fault) => *mode.lock().expect("mode") = fault,
        Fault::StoreCall(method) => link.hang(method, None),
    }
    victim.abort();
    let taken_over = || async {
        lease(&h.store).await.is_some_and(|l| !l.expired && l.term > first.term && l.holder != first.holder)
    };
    assert!(wait_for(Duration::from_secs(30), taken_over).await, "the standby never took over");
    let stuck_at = match fault {
        Fault::Allocator(_) => first_failure.lock().expect("first failure").expect("the allocator was asked"),
        Fault::StoreCall(_) => link.first_hung.lock().expect("first hung").expect("the call was made"),
    };
    let took = stuck_at.elapsed();
    assert!(
        took <= config.coordinator_lease + Duration::from_secs(1),
        "the standby took over {took:?} after the leader got stuck"
    );
    assert!(wait_for(Duration::from_secs(15), || h.settled(&[20])).await, "{:?}", h.loads().await);
    pass(Duration::from_secs(10)).await;
    let now = lease(&h.store).await.expect("a lease");
    assert!(now.holder != first.holder && !now.expired, "the stuck leader took the lease back");
}

#[actix::test]
async fn a_hanging_allocator_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::Allocator(Mode::Hang)).await;
}

#[actix::test]
async fn a_panicking_allocator_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::Allocator(Mode::Panic)).await;
}

#[actix::test]
async fn a_hanging_read_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::StoreCall("assignments")).await;
}

#[actix::test]
async fn a_hanging_write_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::StoreCall("apply_plan")).await;
}

#[actix::test]
async fn a_hanging_failure_sweep_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::StoreCall("list_workers")).await;
}

/// A read that hangs for one queue fails that queue only: the other queue is allocated, and
/// the leader keeps its lease.
#[actix::test]
async fn a_call_that_hangs_for_one_queue_does_not_stop_the_others() {
    tokio::time::pause();
    let h = Harness::new(virtual_store(), 6, ClusterConfig::default()).await;
    let spec = QueueSpec::new(
        DomainName::new("domain_order").expect("name"),
        QueueName::new("drink_order").expect("name"),
        PartitionCount::new(6).expect("count"),
    );
    let other = h.store.create_queue(&spec).await.expect("queue");
    let link = HangingStore::new(Arc::clone(&h.store));
    link.hang("assignments", Some(h.queue.id));
    let _leader = h.coordinator(Arc::new(link), StrategyAllocator.start().recipient());
    let _workers: Vec<_> = (0..2).map(|_| worker_on(&h, &[h.queue.id, other.id])).collect();
    let other_settled = || async {
        let rows = h.store.assignments(other.id).await.expect("rows").rows;
        rows.iter().all(|r| r.owner.is_some() && r.state == AssignmentState::Assigned)
    };
    assert!(wait_for(Duration::from_secs(15), other_settled).await, "the healthy queue was not allocated");
    assert!(h.owners().await.iter().all(Option::is_none), "the stuck queue cannot have been planned");
    let first = lease(&h.store).await.expect("a lease");
    pass(Duration::from_secs(10)).await;
    let now = lease(&h.store).await.expect("a lease");
    assert_eq!((now.holder, now.term), (first.holder, first.term), "the leader kept its lease");
    assert!(!now.expired);
}

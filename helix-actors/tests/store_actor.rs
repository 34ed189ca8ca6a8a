//! The Store actor over a mocked store: every operation reaches the store once through the
//! handle, results (a `Fenced` or a `Transient` one above all) come back after exactly one
//! call, at most `max_in_flight` operations run at once, and a stopped actor answers
//! `Unavailable`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use helix_actors::store_actor::{STOPPED, Shutdown, StoreActor, StoreHandle};
use helix_core::planner::PlanChange;
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionId, QueueId, QueueName, SessionEpoch, Term, WorkerId,
};
use helix_store::{
    AssignmentRecord, CoordinatorFence, DomainRecord, Event, Heartbeat, LeaseRecord, MockStore, NewEvent,
    PlanOutcome, QueueAssignments, QueueRecord, QueueSpec, Store, StoreError, StoreResult, WorkerFilter,
    WorkerLease, WorkerRecord, WorkerRegistration, WorkerStatus,
};
use helix_store::{
    CancelOutcome, Enqueued, NewTask, OwnerFence, PartitionOutcomes, TaskBatchOutcome, TaskCount,
    TaskFailure, TaskId, TaskRecord, TaskRecovery, TaskRetry, TaskState,
};
use helix_store::{FireOutcome, NewSchedule, ScheduleFire, ScheduleRecord};
use tokio::sync::Semaphore;
use tokio::time::Instant;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().expect("valid instant")
}

fn fence(term: u64) -> CoordinatorFence {
    CoordinatorFence { cluster: ClusterName::default(), holder: WorkerId::new_v7(), term: Term(term) }
}

/// Checks `done` in steps of 10 ms of (virtual) time for at most 5 s; whether it came true.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn handle_over(mock: MockStore, max_in_flight: usize) -> StoreHandle {
    StoreActor::start_handle(Arc::new(mock), max_in_flight)
}

#[actix::test]
async fn operations_reach_the_store_once_with_their_arguments_and_answer_unchanged() {
    let worker = WorkerId::new_v7();
    let dead = [WorkerId::new_v7(), WorkerId::new_v7()];
    let coordinator = fence(4);
    let changes = vec![PlanChange::Grant { partition: PartitionId(3), expected_epoch: Epoch(1), to: worker }];
    let detail = serde_json::json!({ "failures": 5, "last_error": "boom" });

    let mut mock = MockStore::new();
    mock.expect_now().times(1).returning(|| Ok(at(1_000)));
    mock.expect_heartbeat()
        .withf(move |w, session, timeout| {
            *w == worker && *session == SessionEpoch(2) && *timeout == Duration::from_secs(3)
        })
        .times(1)
        .returning(|_, _, _| Ok(Heartbeat::Superseded));
    let (expected_fence, expected_dead) = (coordinator.clone(), dead);
    mock.expect_mark_workers_dead()
        .withf(move |f, workers| *f == expected_fence && workers == expected_dead)
        .times(1)
        .returning(|_, workers| Ok(workers[..1].to_vec()));
    let (expected_fence, expected_changes) = (coordinator.clone(), changes.clone());
    mock.expect_apply_plan()
        .withf(move |f, queue, c| *f == expected_fence && *queue == QueueId(7) && c == expected_changes)
        .times(1)
        .returning(|_, _, _| Ok(PlanOutcome { applied: 1, skipped: Vec::new(), assignment_version: 12 }));
    let expected_detail = detail.clone();
    mock.expect_fail_partition()
        .withf(move |queue, partition, w, epoch, d| {
            (*queue, *partition, *w, *epoch) == (QueueId(7), PartitionId(3), worker, Epoch(2))
                && *d == expected_detail
        })
        .times(1)
        .returning(|_, _, _, epoch, _| Ok(Epoch(epoch.0 + 1)));
    mock.expect_reset_partition()
        .withf(|queue, partition| (*queue, *partition) == (QueueId(7), PartitionId(3)))
        .times(1)
        .returning(|_, _| Ok(true));
    mock.expect_get_queue()
        .withf(|domain, name| domain.as_str() == "domain_order" && name.as_str() == "food_order")
        .times(1)
        .returning(|domain, _| Err(StoreError::NotFound(format!("queue in {domain}"))));

    let store = handle_over(mock, 2);
    assert_eq!(store.now().await, Ok(at(1_000)));
    assert_eq!(
        store.heartbeat(worker, SessionEpoch(2), Duration::from_secs(3)).await,
        Ok(Heartbeat::Superseded)
    );
    assert_eq!(store.mark_workers_dead(&coordinator, &dead).await, Ok(vec![dead[0]]));
    let outcome = store.apply_plan(&coordinator, QueueId(7), &changes).await.expect("applied");
    assert_eq!((outcome.applied, outcome.assignment_version), (1, 12));
    assert_eq!(
        store.fail_partition(QueueId(7), PartitionId(3), worker, Epoch(2), &detail).await,
        Ok(Epoch(3))
    );
    assert_eq!(store.reset_partition(QueueId(7), PartitionId(3)).await, Ok(true));
    let domain = DomainName::new("domain_order").expect("name");
    let name = QueueName::new("food_order").expect("name");
    assert_eq!(
        store.get_queue(&domain, &name).await,
        Err(StoreError::NotFound("queue in domain_order".to_owned()))
    );
}

#[actix::test]
async fn a_fenced_answer_comes_back_after_exactly_one_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut mock = MockStore::new();
    let counted = Arc::clone(&calls);
    mock.expect_renew_lease().times(1).returning(move |f, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::Fenced(format!("term {} is stale", f.term.0)))
    });
    let store = handle_over(mock, 4);

    let answer = store.renew_lease(&fence(3), Duration::from_secs(3)).await;

    assert_eq!(answer, Err(StoreError::Fenced("term 3 is stale".to_owned())));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a fenced operation is never tried again");
}

#[actix::test]
async fn a_transient_failure_is_not_retried_a_second_time_by_the_actor() {
    // The SQL stores retry transient failures inside the transaction; what reaches the actor
    // has been retried already and is passed through as is.
    let calls = Arc::new(AtomicUsize::new(0));
    let mut mock = MockStore::new();
    let counted = Arc::clone(&calls);
    mock.expect_handoff().times(1).returning(move |_, _, _, _| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::Transient("deadlock".to_owned()))
    });
    let store = handle_over(mock, 4);

    let answer = store.handoff(QueueId(1), PartitionId(0), WorkerId::new_v7(), Epoch(1)).await;

    assert_eq!(answer, Err(StoreError::Transient("deadlock".to_owned())));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A store whose `now` holds until the test lets it through, counting the calls under way.
/// Every other operation goes to the mock.
struct Gated {
    inner: MockStore,
    gate: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Gated {
    fn new(inner: MockStore) -> Self {
        Self { inner, gate: Arc::new(Semaphore::new(0)), running: Arc::default(), peak: Arc::default() }
    }
}

#[async_trait]
impl Store for Gated {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(running, Ordering::SeqCst);
        let permit = self.gate.acquire().await.map_err(|_| StoreError::Unavailable("gate closed".into()));
        permit?.forget();
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.inner.now().await
    }
    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.inner.create_domain(name).await
    }
    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.inner.get_domain(name).await
    }
    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        self.inner.list_domains().await
    }
    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        self.inner.delete_domain(name).await
    }
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        self.inner.create_queue(spec).await
    }
    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        self.inner.get_queue(domain, name).await
    }
    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        self.inner.get_queue_by_id(id).await
    }
    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        self.inner.list_queues(domain).await
    }
    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        self.inner.delete_queue(domain, name).await
    }
    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        self.inner.register_worker(registration).await
    }
    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        self.inner.heartbeat(worker, session_epoch, session_timeout).await
    }
    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        self.inner.set_worker_status(worker, session_epoch, status).await
    }
    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        self.inner.deregister_worker(worker, session_epoch).await
    }
    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        self.inner.get_worker(worker).await
    }
    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        self.inner.list_workers(filter).await
    }
    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        self.inner.mark_workers_dead(fence, workers).await
    }
    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        self.inner.acquire_lease(cluster, holder, lease).await
    }
    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        self.inner.renew_lease(fence, lease).await
    }
    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        self.inner.release_lease(fence).await
    }
    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        self.inner.get_lease(cluster).await
    }
    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        self.inner.assignments(queue).await
    }
    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        self.inner.assignments_of(worker).await
    }
    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        self.inner.apply_plan(fence, queue, changes).await
    }
    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.inner.handoff(queue, partition, worker, epoch).await
    }
    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
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
        self.inner.fail_partition(queue, partition, worker, epoch, detail).await
    }
    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        self.inner.reset_partition(queue, partition).await
    }
    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        self.inner.append_event(event).await
    }
    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        self.inner.events_since(after, limit).await
    }
    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        self.inner.prune_events(older_than).await
    }
    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        self.inner.enqueue_task(queue, task).await
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        self.inner.enqueue_tasks(queue, tasks).await
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        self.inner.claim_tasks(fence, limit).await
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        self.inner.complete_tasks(fence, ids).await
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        self.inner.fail_tasks(fence, failures).await
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        self.inner.retry_tasks_later(fence, retries).await
    }
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        self.inner.record_task_outcomes(batches).await
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        self.inner.extend_tasks(fence, ids, by).await
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        self.inner.cancel_task(id).await
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        self.inner.recover_partition_tasks(fence).await
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<std::collections::BTreeMap<PartitionId, DateTime<Utc>>> {
        self.inner.next_due(queue, partitions).await
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        self.inner.task_counts(queue).await
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        self.inner.list_tasks(queue, state, after, limit).await
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.inner.retry_dead_task(id).await
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        self.inner.prune_tasks(older_than, limit).await
    }
    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord> {
        self.inner.create_schedule(queue, schedule).await
    }
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        self.inner.get_schedule(queue, name).await
    }
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        self.inner.list_schedules(queue).await
    }
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        self.inner.set_schedule_paused(queue, name, paused).await
    }
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        self.inner.delete_schedule(queue, name).await
    }
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        self.inner.due_schedules(horizon, limit).await
    }
    async fn fire_schedules(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>> {
        self.inner.fire_schedules(fence, fires).await
    }
}

#[actix::test]
async fn at_most_max_in_flight_operations_run_at_once() {
    tokio::time::pause();
    const MAX_IN_FLIGHT: usize = 3;
    const CALLS: usize = 10;
    let mut mock = MockStore::new();
    mock.expect_now().times(CALLS).returning(|| Ok(at(2_000)));
    let gated = Gated::new(mock);
    let (gate, running, peak) =
        (Arc::clone(&gated.gate), Arc::clone(&gated.running), Arc::clone(&gated.peak));
    let store = StoreActor::start_handle(Arc::new(gated), MAX_IN_FLIGHT);
    let done = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (store, done) = (store.clone(), Arc::clone(&done));
            actix::spawn(async move {
                let answer = store.now().await;
                done.fetch_add(1, Ordering::SeqCst);
                answer
            })
        })
        .collect();

    assert!(wait_until(|| running.load(Ordering::SeqCst) == MAX_IN_FLIGHT).await, "the first ones run");
    // Time passes and nothing more gets in while the store holds them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running.load(Ordering::SeqCst), MAX_IN_FLIGHT);
    assert_eq!(done.load(Ordering::SeqCst), 0);

    // One finishes: exactly one waiting operation takes its place.
    gate.add_permits(1);
    assert!(wait_until(|| done.load(Ordering::SeqCst) == 1).await, "the released call answers");
    assert!(wait_until(|| running.load(Ordering::SeqCst) == MAX_IN_FLIGHT).await, "a waiting one runs");
    assert_eq!(peak.load(Ordering::SeqCst), MAX_IN_FLIGHT);

    gate.add_permits(CALLS);
    for call in calls {
        assert_eq!(call.await.expect("the call task ends"), Ok(at(2_000)));
    }
    assert_eq!(done.load(Ordering::SeqCst), CALLS);
    assert_eq!(peak.load(Ordering::SeqCst), MAX_IN_FLIGHT, "never more than the bound at once");
}

#[actix::test]
async fn a_stopped_actor_answers_unavailable_and_finishes_what_was_under_way() {
    tokio::time::pause();
    let mut mock = MockStore::new();
    mock.expect_now().times(1).returning(|| Ok(at(3_000)));
    mock.expect_get_lease().never();
    let gated = Gated::new(mock);
    let (gate, running) = (Arc::clone(&gated.gate), Arc::clone(&gated.running));
    let store = StoreActor::start_handle(Arc::new(gated), 2);
    let under_way = {
        let store = store.clone();
        actix::spawn(async move { store.now().await })
    };
    assert!(wait_until(|| running.load(Ordering::SeqCst) == 1).await, "the call reached the store");

    store.addr().send(Shutdown).await.expect("the actor was running");
    assert!(wait_until(|| !store.addr().connected()).await, "the actor stops");

    assert_eq!(
        store.get_lease(&ClusterName::default()).await,
        Err(StoreError::Unavailable(STOPPED.to_owned()))
    );
    gate.add_permits(1);
    assert_eq!(under_way.await.expect("the call task ends"), Ok(at(3_000)));
}

//! Helpers for testing code built on Helix deterministically.
//!
//! - [`SimCluster`]: a whole cluster in one process — real coordinators and real worker
//!   sessions on one store, on virtual time — where workers are added, killed (no goodbye),
//!   stopped (gracefully) or cut off from the store, time is advanced, and an invariant
//!   checker records every partition handler's [`Tenure`] to assert that no two workers ever
//!   run a partition at once, that epochs only grow, and that a queue has settled;
//! - [`CutOffStore`]: a link to a store that can be cut off or stalled, the fault every
//!   liveness test needs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use helix_core::{
    Clock, ClusterConfig, ClusterName, ConfigError, DomainName, Epoch, NameError, PartitionCount,
    PartitionId, QueueId, QueueName, SessionEpoch, Term, WorkerId,
};
use helix_store::{
    AssignmentRecord, AssignmentState, CoordinatorFence, DomainRecord, Event, Heartbeat, LeaseRecord,
    MemStore, NewEvent, PlanChange, PlanOutcome, QueueAssignments, QueueRecord, QueueSpec, Store, StoreError,
    StoreResult, Subscription, WorkerFilter, WorkerLease, WorkerRecord, WorkerRegistration, WorkerStatus,
};
use helix_store::{
    CancelOutcome, Enqueued, NewTask, OwnerFence, PartitionOutcomes, TaskBatchOutcome, TaskCount,
    TaskFailure, TaskId, TaskRecord, TaskRecovery, TaskRetry, TaskState,
};
use helix_store::{FireOutcome, NewSchedule, ScheduleFire, ScheduleRecord};
use tokio::time::Instant;

use crate::TokioClock;
use crate::coordinator::{
    Allocate, Coordinator, CurrentFence, LeaderElection, LeadershipChanged, Resign, StrategyAllocator,
};
use crate::tasks::TaskQueues;
use crate::worker::{
    GetStatus, HandlerError, HandlerFactory, Kill, Leave, LeaveOutcome, PartitionContext, PartitionHandler,
    PartitionState, RestartPolicy, SessionEnd, WorkerSession, WorkerStatusReport,
};

/// Timings five times faster than the defaults (heartbeat 200 ms, session timeout and lease
/// 1 s, reconcile every 100 ms), valid under [`ClusterConfig::validate`]: for tests on a real
/// database, where time passes for real.
pub fn fast_config() -> ClusterConfig {
    ClusterConfig {
        heartbeat_interval: Duration::from_millis(200),
        session_timeout: Duration::from_secs(1),
        coordinator_lease: Duration::from_secs(1),
        coordinator_renew_interval: Duration::from_millis(300),
        safety_margin: Duration::from_millis(200),
        coordinator_call_timeout: Duration::from_millis(300),
        reconcile_interval: Duration::from_millis(100),
        full_reevaluation_interval: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(1),
        revoke_timeout: Duration::from_secs(5),
        revoke_cooldown: Duration::from_secs(5),
        rejoin_delay: Duration::ZERO,
        ..ClusterConfig::default()
    }
}

/// A handler that does nothing, for tests about placement rather than about work.
struct NoopHandler;

#[async_trait(?Send)]
impl PartitionHandler for NoopHandler {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn revoked(&mut self, _: &PartitionContext) {}
}

/// A factory of handlers that do nothing, for tests about placement rather than about work.
pub fn noop_handler() -> HandlerFactory {
    Arc::new(|_: &PartitionContext| Box::new(NoopHandler) as Box<dyn PartitionHandler>)
}

/// A [`Store`] that forwards to another one until it is cut off; while cut off, every call
/// fails with [`StoreError::Unavailable`], as for a process whose network to the database is
/// down; while stalled, every call hangs until the link is restored, as for a network that
/// drops packets. The database itself (the inner store) keeps running for everyone else.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use helix_actors::testing::CutOffStore;
/// use helix_store::{MemStore, Store, StoreError};
///
/// let shared = Arc::new(MemStore::new(Arc::new(helix_core::SystemClock)));
/// let link = CutOffStore::new(shared.clone());
/// link.cut_off();
/// assert!(matches!(link.now().await, Err(StoreError::Unavailable(_))));
/// link.restore();
/// assert!(link.now().await.is_ok());
/// # }
/// ```
#[derive(Clone)]
pub struct CutOffStore {
    inner: Arc<dyn Store>,
    state: Arc<AtomicU8>,
    lost: Arc<std::sync::atomic::AtomicUsize>,
    /// Milliseconds every assignment poll's answer takes to come back.
    poll_delay: Arc<AtomicU64>,
    /// How many assignment polls went through the link.
    polls: Arc<AtomicU64>,
    /// How many more renewals that say assignments moved commit and lose their answer.
    lose_moved: Arc<std::sync::atomic::AtomicUsize>,
    /// The calls that hang forever.
    hung: Arc<Mutex<BTreeSet<HungCall>>>,
    /// When a hung call was first made.
    first_hung: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// The faults waiting for the next calls of each method, in order.
    faults: Arc<Mutex<BTreeMap<&'static str, VecDeque<CallFault>>>>,
    /// Per task method: the calls under way, and the most ever under way at once.
    in_flight: Arc<Mutex<BTreeMap<&'static str, (usize, usize)>>>,
    /// Per task method: how many calls were made.
    made: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// One task call under way through a [`CutOffStore`], counted until dropped.
struct CallUnderWay {
    in_flight: Arc<Mutex<BTreeMap<&'static str, (usize, usize)>>>,
    method: &'static str,
}

impl Drop for CallUnderWay {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((now, _)) = in_flight.get_mut(self.method) {
            *now = now.saturating_sub(1);
        }
    }
}

/// A fault for one call of a [`Store`] method, put there by [`CutOffStore::inject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFault {
    /// The call reaches the store and commits, then its answer is lost: the caller gets
    /// [`StoreError::Unavailable`], as when the connection dies between the commit and the
    /// reply. Only the task methods that write (`enqueue_task`, `enqueue_tasks`,
    /// `claim_tasks`, `complete_tasks`, `fail_tasks`, `retry_tasks_later`,
    /// `record_task_outcomes`, `extend_tasks`, `recover_partition_tasks`) and
    /// `fire_schedules` take it; on others it stays queued.
    LoseAnswer,
    /// The call is answered with this error without reaching the store.
    Refuse(StoreError),
    /// The call never reaches the store and never answers, as a request lost on the wire.
    Hang,
    /// The call waits this long (on tokio's clock) on its way, then reaches the store (unless
    /// its caller dropped it meanwhile), as a request held up by the network.
    Delay(Duration),
    /// The call panics without reaching the store, as a store implementation with a bug.
    Panic,
}

/// A store method's name, and the queue its calls hang for (`None`: every call).
type HungCall = (&'static str, Option<QueueId>);

const CONNECTED: u8 = 0;
const CUT_OFF: u8 = 1;
const STALLED: u8 = 2;

impl CutOffStore {
    /// A link to `inner`, connected.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            state: Arc::new(AtomicU8::new(CONNECTED)),
            lost: Arc::default(),
            poll_delay: Arc::default(),
            polls: Arc::default(),
            lose_moved: Arc::default(),
            hung: Arc::default(),
            first_hung: Arc::default(),
            faults: Arc::default(),
            in_flight: Arc::default(),
            made: Arc::default(),
        }
    }

    /// How many calls of the task method named `method` (`"record_task_outcomes"`, say) were
    /// made through this link so far, whatever became of them.
    pub fn calls(&self, method: &'static str) -> usize {
        self.made.lock().unwrap_or_else(PoisonError::into_inner).get(method).copied().unwrap_or(0)
    }

    /// The most calls of the task method named `method` (`"claim_tasks"`, say) that were ever
    /// under way through this link at once, from their start until they answered.
    pub fn peak_calls(&self, method: &'static str) -> usize {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).get(method).map_or(0, |(_, peak)| *peak)
    }

    fn enter(&self, method: &'static str) -> CallUnderWay {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let (now, peak) = in_flight.entry(method).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
        *self.made.lock().unwrap_or_else(PoisonError::into_inner).entry(method).or_default() += 1;
        CallUnderWay { in_flight: Arc::clone(&self.in_flight), method }
    }

    /// The next `calls` calls of the [`Store`] method named `method` (`"claim_tasks"`, say)
    /// meet `fault`, after the faults injected before for that method; later calls go
    /// through.
    pub fn inject(&self, method: &'static str, fault: CallFault, calls: usize) {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        faults.entry(method).or_default().extend(std::iter::repeat_n(fault, calls));
    }

    /// Takes the next fault of `method` if it is a [`CallFault::LoseAnswer`] (when
    /// `lose_answer`) or another kind (when not); `None` otherwise.
    fn next_fault(&self, method: &'static str, lose_answer: bool) -> Option<CallFault> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = faults.get_mut(method)?;
        if (*queue.front()? == CallFault::LoseAnswer) == lose_answer { queue.pop_front() } else { None }
    }

    /// `result`, lost when `lose` (see [`CallFault::LoseAnswer`]).
    fn answer<T>(method: &'static str, lose: bool, result: StoreResult<T>) -> StoreResult<T> {
        match result {
            Ok(_) if lose => Err(StoreError::Unavailable(format!("the answer of {method} was lost"))),
            other => other,
        }
    }

    /// Every later call of the [`Store`] method named `method` never answers; with a `queue`,
    /// only calls for that queue (`assignments` is the method that names one). As a query
    /// that a server never answers, whatever happens to the link afterwards.
    pub fn hang(&self, method: &'static str, queue: Option<QueueId>) {
        self.hung.lock().unwrap_or_else(PoisonError::into_inner).insert((method, queue));
    }

    /// When the first call that [`hang`](Self::hang) holds was made (on tokio's clock),
    /// `None` before any.
    pub fn first_hung(&self) -> Option<tokio::time::Instant> {
        *self.first_hung.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hangs(&self, method: &'static str, queue: Option<QueueId>) -> bool {
        let hangs = {
            let hung = self.hung.lock().unwrap_or_else(PoisonError::into_inner);
            hung.contains(&(method, None)) || (queue.is_some() && hung.contains(&(method, queue)))
        };
        if hangs {
            self.first_hung
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(tokio::time::Instant::now);
        }
        hangs
    }

    /// The next `heartbeats` heartbeats whose renewal says that assignments moved commit in
    /// the store, then their answer is lost: the caller gets [`StoreError::Unavailable`], as
    /// when the connection dies between the commit and the reply. Other heartbeats, and later
    /// ones, go through.
    pub fn lose_moved_heartbeats(&self, heartbeats: usize) {
        self.lose_moved.store(heartbeats, Ordering::SeqCst);
    }

    /// The next `calls` calls never answer, whatever happens to the link afterwards: as if
    /// their connection died with the request on the wire. Later calls go through.
    pub fn lose_next(&self, calls: usize) {
        self.lost.store(calls, Ordering::SeqCst);
    }

    /// How many [`Store::assignments_of`] calls (a worker's assignment polls) reached the
    /// store through this link so far.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::SeqCst)
    }

    /// Delays the answer of every later [`Store::assignments_of`] by `delay` (on tokio's
    /// clock) after the store has read it, as a slow network does to a reply: the answer
    /// describes the rows as they were when read. `Duration::ZERO` ends the delay.
    pub fn delay_polls(&self, delay: Duration) {
        self.poll_delay.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Fails every call from now on, until [`restore`](Self::restore).
    pub fn cut_off(&self) {
        self.state.store(CUT_OFF, Ordering::SeqCst);
    }

    /// Holds every call from now on (and those under way), until [`restore`](Self::restore)
    /// or [`cut_off`](Self::cut_off).
    pub fn stall(&self) {
        self.state.store(STALLED, Ordering::SeqCst);
    }

    /// Forwards calls again.
    pub fn restore(&self) {
        self.state.store(CONNECTED, Ordering::SeqCst);
    }

    /// Whether calls fail or hang.
    pub fn is_cut_off(&self) -> bool {
        self.state.load(Ordering::SeqCst) != CONNECTED
    }

    async fn link(&self, method: &'static str, queue: Option<QueueId>) -> StoreResult<&dyn Store> {
        match self.next_fault(method, false) {
            Some(CallFault::Refuse(error)) => return Err(error),
            Some(CallFault::Hang) => std::future::pending::<()>().await,
            Some(CallFault::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(CallFault::Panic) => panic!("a panic injected into {method}"),
            _ => {}
        }
        if self.lost.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
            || self.hangs(method, queue)
        {
            std::future::pending::<()>().await;
        }
        // A stalled call checks back on tokio's clock, so it stays deterministic on virtual
        // time.
        while self.state.load(Ordering::SeqCst) == STALLED {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.state.load(Ordering::SeqCst) == CUT_OFF {
            Err(StoreError::Unavailable("cut off from the store".to_owned()))
        } else {
            Ok(self.inner.as_ref())
        }
    }
}

#[async_trait]
impl Store for CutOffStore {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        self.link("now", None).await?.now().await
    }
    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.link("create_domain", None).await?.create_domain(name).await
    }
    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.link("get_domain", None).await?.get_domain(name).await
    }
    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        self.link("list_domains", None).await?.list_domains().await
    }
    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        self.link("delete_domain", None).await?.delete_domain(name).await
    }
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        self.link("create_queue", None).await?.create_queue(spec).await
    }
    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        self.link("get_queue", None).await?.get_queue(domain, name).await
    }
    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        self.link("get_queue_by_id", None).await?.get_queue_by_id(id).await
    }
    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        self.link("list_queues", None).await?.list_queues(domain).await
    }
    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        self.link("delete_queue", None).await?.delete_queue(domain, name).await
    }
    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        self.link("register_worker", None).await?.register_worker(registration).await
    }
    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        let answer =
            self.link("heartbeat", None).await?.heartbeat(worker, session_epoch, session_timeout).await?;
        if matches!(answer, Heartbeat::Renewed { assignments_moved: true })
            && self.lose_moved.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(StoreError::Unavailable(
                "the heartbeat's answer was lost after it committed".to_owned(),
            ));
        }
        Ok(answer)
    }
    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        self.link("set_worker_status", None).await?.set_worker_status(worker, session_epoch, status).await
    }
    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        self.link("deregister_worker", None).await?.deregister_worker(worker, session_epoch).await
    }
    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        self.link("get_worker", None).await?.get_worker(worker).await
    }
    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        self.link("list_workers", None).await?.list_workers(filter).await
    }
    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        self.link("mark_workers_dead", None).await?.mark_workers_dead(fence, workers).await
    }
    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        self.link("acquire_lease", None).await?.acquire_lease(cluster, holder, lease).await
    }
    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        self.link("renew_lease", None).await?.renew_lease(fence, lease).await
    }
    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        self.link("release_lease", None).await?.release_lease(fence).await
    }
    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        self.link("get_lease", None).await?.get_lease(cluster).await
    }
    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        self.link("assignments", Some(queue)).await?.assignments(queue).await
    }
    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        let store = self.link("assignments_of", None).await?;
        self.polls.fetch_add(1, Ordering::SeqCst);
        let answer = store.assignments_of(worker).await;
        let delay = self.poll_delay.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        answer
    }
    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        self.link("apply_plan", None).await?.apply_plan(fence, queue, changes).await
    }
    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.link("handoff", None).await?.handoff(queue, partition, worker, epoch).await
    }
    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.link("release_partition", None).await?.release_partition(queue, partition, worker, epoch).await
    }
    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch> {
        self.link("fail_partition", None).await?.fail_partition(queue, partition, worker, epoch, detail).await
    }
    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        self.link("reset_partition", None).await?.reset_partition(queue, partition).await
    }
    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        self.link("append_event", None).await?.append_event(event).await
    }
    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        self.link("events_since", None).await?.events_since(after, limit).await
    }
    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        self.link("prune_events", None).await?.prune_events(older_than).await
    }
    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        let _call = self.enter("enqueue_task");
        let lose = self.next_fault("enqueue_task", true).is_some();
        let result = self.link("enqueue_task", None).await?.enqueue_task(queue, task).await;
        Self::answer("enqueue_task", lose, result)
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        let _call = self.enter("enqueue_tasks");
        let lose = self.next_fault("enqueue_tasks", true).is_some();
        let result = self.link("enqueue_tasks", None).await?.enqueue_tasks(queue, tasks).await;
        Self::answer("enqueue_tasks", lose, result)
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        let _call = self.enter("claim_tasks");
        let lose = self.next_fault("claim_tasks", true).is_some();
        let result = self.link("claim_tasks", None).await?.claim_tasks(fence, limit).await;
        Self::answer("claim_tasks", lose, result)
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        let _call = self.enter("complete_tasks");
        let lose = self.next_fault("complete_tasks", true).is_some();
        let result = self.link("complete_tasks", None).await?.complete_tasks(fence, ids).await;
        Self::answer("complete_tasks", lose, result)
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        let _call = self.enter("fail_tasks");
        let lose = self.next_fault("fail_tasks", true).is_some();
        let result = self.link("fail_tasks", None).await?.fail_tasks(fence, failures).await;
        Self::answer("fail_tasks", lose, result)
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        let _call = self.enter("retry_tasks_later");
        let lose = self.next_fault("retry_tasks_later", true).is_some();
        let result = self.link("retry_tasks_later", None).await?.retry_tasks_later(fence, retries).await;
        Self::answer("retry_tasks_later", lose, result)
    }
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        let _call = self.enter("record_task_outcomes");
        let lose = self.next_fault("record_task_outcomes", true).is_some();
        let result = self.link("record_task_outcomes", None).await?.record_task_outcomes(batches).await;
        Self::answer("record_task_outcomes", lose, result)
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        let _call = self.enter("extend_tasks");
        let lose = self.next_fault("extend_tasks", true).is_some();
        let result = self.link("extend_tasks", None).await?.extend_tasks(fence, ids, by).await;
        Self::answer("extend_tasks", lose, result)
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        self.link("cancel_task", None).await?.cancel_task(id).await
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        let _call = self.enter("recover_partition_tasks");
        let lose = self.next_fault("recover_partition_tasks", true).is_some();
        let result = self.link("recover_partition_tasks", None).await?.recover_partition_tasks(fence).await;
        Self::answer("recover_partition_tasks", lose, result)
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<std::collections::BTreeMap<PartitionId, DateTime<Utc>>> {
        self.link("next_due", None).await?.next_due(queue, partitions).await
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        self.link("task_counts", None).await?.task_counts(queue).await
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.link("get_task", None).await?.get_task(id).await
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        self.link("list_tasks", None).await?.list_tasks(queue, state, after, limit).await
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.link("retry_dead_task", None).await?.retry_dead_task(id).await
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        self.link("prune_tasks", None).await?.prune_tasks(older_than, limit).await
    }
    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord> {
        self.link("create_schedule", None).await?.create_schedule(queue, schedule).await
    }
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        self.link("get_schedule", None).await?.get_schedule(queue, name).await
    }
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        self.link("list_schedules", None).await?.list_schedules(queue).await
    }
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        self.link("set_schedule_paused", None).await?.set_schedule_paused(queue, name, paused).await
    }
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        self.link("delete_schedule", None).await?.delete_schedule(queue, name).await
    }
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        self.link("due_schedules", None).await?.due_schedules(horizon, limit).await
    }
    async fn fire_schedules(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>> {
        let _call = self.enter("fire_schedules");
        let lose = self.next_fault("fire_schedules", true).is_some();
        let result = self.link("fire_schedules", None).await?.fire_schedules(fence, fires).await;
        Self::answer("fire_schedules", lose, result)
    }
}

/// What a [`SimCluster`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The cluster's timings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A name or a partition count is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An actor of the cluster has stopped and cannot answer.
    #[error("actor unavailable: {0}")]
    Mailbox(#[from] MailboxError),
}

/// One stretch of time during which one worker ran the handler of one partition at one epoch,
/// as the [`SimCluster`] recorded it on the virtual clock (the store's clock under
/// [`SimCluster::new`], so it compares with the `at` of the store's events).
///
/// A tenure starts when the worker session creates the handler and stops at the first of:
/// `revoked` returning (a drain) or the handler being dropped (a hard stop: self-fencing, a
/// lost session, a failure). `start_seq` and `stop_seq` order every start and stop of the
/// whole cluster exactly, even when they share a virtual instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenure {
    /// The worker that ran the handler.
    pub worker: WorkerId,
    /// The queue.
    pub queue: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// The epoch it ran at.
    pub epoch: Epoch,
    /// When the handler was created.
    pub started: DateTime<Utc>,
    /// When it stopped, `None` while it runs.
    pub stopped: Option<DateTime<Utc>>,
    /// The position of the start in the cluster's order of starts and stops.
    pub start_seq: u64,
    /// The position of the stop, `None` while it runs.
    pub stop_seq: Option<u64>,
}

impl Tenure {
    /// Whether the handler still runs.
    pub fn is_running(&self) -> bool {
        self.stop_seq.is_none()
    }
}

/// The invariants a [`SimCluster`] found broken, each described in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .violations.join("; "))]
pub struct InvariantViolation {
    /// One line per broken invariant.
    pub violations: Vec<String>,
}

#[derive(Default)]
struct Log {
    seq: u64,
    tenures: Vec<Tenure>,
}

impl Log {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks its tenure stopped when dropped or when [`close`](Self::close) is called, whichever
/// comes first.
struct TenureGuard {
    log: Arc<Mutex<Log>>,
    clock: TokioClock,
    index: usize,
}

impl TenureGuard {
    fn close(&self) {
        let mut log = lock(&self.log);
        let seq = log.next_seq();
        let now = self.clock.now();
        if let Some(tenure) = log.tenures.get_mut(self.index).filter(|t| t.stop_seq.is_none()) {
            tenure.stopped = Some(now);
            tenure.stop_seq = Some(seq);
        }
    }
}

impl Drop for TenureGuard {
    fn drop(&mut self) {
        self.close();
    }
}

/// The user's handler, with the kit's record of its tenure.
struct Recorded {
    inner: Box<dyn PartitionHandler>,
    guard: TenureGuard,
}

#[async_trait(?Send)]
impl PartitionHandler for Recorded {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        self.inner.assigned(ctx).await
    }

    async fn revoked(&mut self, ctx: &PartitionContext) {
        self.inner.revoked(ctx).await;
        self.guard.close();
    }
}

fn recording(factory: HandlerFactory, log: Arc<Mutex<Log>>, clock: TokioClock) -> HandlerFactory {
    Arc::new(move |ctx: &PartitionContext| {
        let inner = factory(ctx);
        let index = {
            let mut log = lock(&log);
            let start_seq = log.next_seq();
            log.tenures.push(Tenure {
                worker: ctx.worker,
                queue: ctx.queue,
                partition: ctx.partition,
                epoch: ctx.epoch,
                started: clock.now(),
                stopped: None,
                start_seq,
                stop_seq: None,
            });
            log.tenures.len() - 1
        };
        Box::new(Recorded { inner, guard: TenureGuard { log: Arc::clone(&log), clock, index } })
            as Box<dyn PartitionHandler>
    })
}

/// A worker of a [`SimCluster`]: a real [`WorkerSession`] on its own link to the store.
#[derive(Clone)]
pub struct SimWorker {
    id: WorkerId,
    link: CutOffStore,
    session: Addr<WorkerSession>,
    ended: tokio::sync::watch::Receiver<Option<SessionEnd>>,
}

impl SimWorker {
    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Its session actor (stopped after [`SimCluster::kill`] or [`SimCluster::stop`]).
    pub fn session(&self) -> &Addr<WorkerSession> {
        &self.session
    }

    /// Its link to the store.
    pub fn link(&self) -> &CutOffStore {
        &self.link
    }

    /// What its session is doing.
    ///
    /// # Errors
    /// [`SimError::Mailbox`] once the session has stopped (after [`SimCluster::kill`] or
    /// [`SimCluster::stop`]).
    pub async fn status(&self) -> Result<WorkerStatusReport, SimError> {
        Ok(self.session.send(GetStatus).await?)
    }

    /// Why the worker's session ended, `None` while it runs.
    pub fn end(&self) -> Option<SessionEnd> {
        self.ended.borrow().clone()
    }
}

impl fmt::Debug for SimWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimWorker").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A coordinator node of a [`SimCluster`]: a [`LeaderElection`], a [`Coordinator`] and a
/// [`StrategyAllocator`] on their own link to the store.
#[derive(Clone)]
pub struct SimCoordinator {
    id: WorkerId,
    link: CutOffStore,
    election: Addr<LeaderElection>,
    coordinator: Addr<Coordinator>,
}

impl SimCoordinator {
    /// The id it holds the lease under.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Its election actor.
    pub fn election(&self) -> &Addr<LeaderElection> {
        &self.election
    }

    /// Its coordinator actor.
    pub fn coordinator(&self) -> &Addr<Coordinator> {
        &self.coordinator
    }

    /// Its link to the store.
    pub fn link(&self) -> &CutOffStore {
        &self.link
    }

    /// The fence it holds if it believes it leads now, `None` otherwise (or once stopped).
    pub async fn fence(&self) -> Option<CoordinatorFence> {
        self.election.send(CurrentFence).await.ok().flatten()
    }
}

impl fmt::Debug for SimCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCoordinator").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A simulated Helix cluster in one process: real coordinators and real [`WorkerSession`]s,
/// each on its own [`CutOffStore`] link to one shared store, with an invariant checker that
/// records when every partition handler runs.
///
/// [`SimCluster::new`] runs on a [`MemStore`] whose clock is a [`TokioClock`]: call it inside
/// an actix system with tokio's clock paused (`tokio::time::pause()`), and every timeout,
/// lease and heartbeat happens on virtual time, deterministically and instantly.
/// [`SimCluster::with_store`] runs the same kit on any store (MySQL, SQLite) on real time.
///
/// Every worker's handler factory is wrapped so the kit records each [`Tenure`]: when each
/// `(worker, queue, partition, epoch)` starts running and stops.
/// [`check_invariants`](Self::check_invariants) then asserts that no two tenures of one
/// partition ever overlap and that epochs only grow; [`check_settled`](Self::check_settled) that every partition of
/// a queue is owned once, by a live worker that runs it, with no revocation under way.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use helix_actors::testing::SimCluster;
/// use helix_actors::worker::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};
/// use helix_core::ClusterConfig;
///
/// struct Noop;
///
/// #[async_trait(?Send)]
/// impl PartitionHandler for Noop {
///     async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> { Ok(()) }
///     async fn revoked(&mut self, _: &PartitionContext) {}
/// }
///
/// actix_rt::System::new().block_on(async {
///     tokio::time::pause();
///     let mut cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
///     let queue = cluster.create_queue("domain_order", "food_order", 10).await.expect("queue");
///     cluster.add_coordinator();
///     let factory: HandlerFactory = Arc::new(|_: &PartitionContext| Box::new(Noop) as Box<dyn PartitionHandler>);
///     let a = cluster.add_worker(&[(&queue, 1)], factory.clone());
///     let b = cluster.add_worker(&[(&queue, 1)], factory);
///     assert!(cluster.wait_until(Duration::from_secs(10), || async { cluster.check_settled(&queue).await.is_ok() }).await);
///
///     cluster.kill(&a); // no goodbye: b gets a's partitions once a's session has timed out
///     assert!(cluster.wait_until(Duration::from_secs(10), || async {
///         cluster.loads(&queue).await.is_ok_and(|l| l.get(&b.id()) == Some(&10))
///     }).await);
///     cluster.check_invariants().await.expect("never two owners, epochs only grow");
/// });
/// ```
pub struct SimCluster {
    store: Arc<dyn Store>,
    clock: TokioClock,
    config: ClusterConfig,
    log: Arc<Mutex<Log>>,
    workers: Vec<SimWorker>,
    killed: BTreeSet<WorkerId>,
    coordinators: Vec<SimCoordinator>,
    killed_coordinators: BTreeSet<WorkerId>,
    /// The highest epoch seen in the store for each partition, to check that epochs only grow.
    epochs: Mutex<BTreeMap<(QueueId, PartitionId), Epoch>>,
}

impl SimCluster {
    /// A cluster on a fresh [`MemStore`] on virtual time, with no node yet.
    ///
    /// # Errors
    /// [`SimError::Config`] for invalid timings.
    pub async fn new(config: ClusterConfig) -> Result<Self, SimError> {
        let clock = TokioClock::new();
        let store: Arc<dyn Store> = Arc::new(MemStore::new(Arc::new(clock)));
        Self::build(store, clock, config)
    }

    /// A cluster on `store` (any [`Store`]: MySQL, SQLite), with no node yet. Tenures are
    /// recorded on tokio's clock, which is real time unless paused.
    ///
    /// # Errors
    /// [`SimError::Config`] for invalid timings.
    pub fn with_store(store: Arc<dyn Store>, config: ClusterConfig) -> Result<Self, SimError> {
        Self::build(store, TokioClock::new(), config)
    }

    fn build(store: Arc<dyn Store>, clock: TokioClock, config: ClusterConfig) -> Result<Self, SimError> {
        config.validate()?;
        Ok(Self {
            store,
            clock,
            config,
            log: Arc::default(),
            workers: Vec::new(),
            killed: BTreeSet::new(),
            coordinators: Vec::new(),
            killed_coordinators: BTreeSet::new(),
            epochs: Mutex::default(),
        })
    }

    /// The shared store, as the database itself (no link, never cut off).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The cluster's timings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The kit's clock now: the store's clock under [`new`](Self::new).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Creates the queue `domain/name` with `partitions` partitions (and the domain, if it
    /// does not exist yet).
    ///
    /// # Errors
    /// [`SimError::Name`] for a bad name or count, [`SimError::Store`] when the store refuses
    /// (the queue exists).
    pub async fn create_queue(
        &self,
        domain: &str,
        name: &str,
        partitions: u64,
    ) -> Result<QueueRecord, SimError> {
        let domain = DomainName::new(domain)?;
        match self.store.create_domain(&domain).await {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(err) => return Err(err.into()),
        }
        let spec = QueueSpec::new(domain, QueueName::new(name)?, PartitionCount::new(partitions)?);
        Ok(self.store.create_queue(&spec).await?)
    }

    /// Starts a coordinator node: an election, a coordinator and the default allocator, on a
    /// link of its own. Call within an actix system.
    pub fn add_coordinator(&mut self) -> SimCoordinator {
        self.add_coordinator_with(StrategyAllocator.start().recipient())
    }

    /// [`add_coordinator`](Self::add_coordinator) with an allocator actor of one's own.
    pub fn add_coordinator_with(&mut self, allocator: Recipient<Allocate>) -> SimCoordinator {
        let id = WorkerId::new_v7();
        let link = CutOffStore::new(Arc::clone(&self.store));
        let store: Arc<dyn Store> = Arc::new(link.clone());
        let config = self.config.clone();
        let ctx = Context::<Coordinator>::new();
        let election = LeaderElection::new(
            Arc::clone(&store),
            ClusterName::default(),
            id,
            config.clone(),
            ctx.address().recipient::<LeadershipChanged>(),
        )
        .start();
        let coordinator =
            ctx.run(Coordinator::new(store, config, allocator).with_election(election.clone().recipient()));
        let node = SimCoordinator { id, link, election, coordinator };
        self.coordinators.push(node.clone());
        node
    }

    /// Starts a worker session subscribed to `queues` (each with its capacity weight),
    /// serving them with handlers from `factory`, on a link of its own. Call within an actix
    /// system.
    pub fn add_worker(&mut self, queues: &[(&QueueRecord, u32)], factory: HandlerFactory) -> SimWorker {
        self.add_worker_with(queues, factory, RestartPolicy::default())
    }

    /// [`add_worker`](Self::add_worker) with a [`RestartPolicy`] of one's own.
    pub fn add_worker_with(
        &mut self,
        queues: &[(&QueueRecord, u32)],
        factory: HandlerFactory,
        policy: RestartPolicy,
    ) -> SimWorker {
        self.spawn_worker(WorkerId::new_v7(), queues, factory, policy)
    }

    /// Starts a worker session subscribed to `queues` that runs the tasks of `tasks` (every
    /// served queue needs a task handler there), over its own link like
    /// [`add_worker`](Self::add_worker): the task writes go through the link, so cutting it
    /// off cuts them off too. Its due-time poll runs on the current arbiter.
    pub fn add_task_worker(&mut self, queues: &[(&QueueRecord, u32)], tasks: &TaskQueues) -> SimWorker {
        self.spawn_task_worker(WorkerId::new_v7(), queues, tasks)
    }

    /// Starts `worker` again with the tasks of `tasks`, as
    /// [`restart`](Self::restart) does with a handler factory.
    pub fn restart_task_worker(
        &mut self,
        worker: &SimWorker,
        queues: &[(&QueueRecord, u32)],
        tasks: &TaskQueues,
    ) -> SimWorker {
        self.killed.remove(&worker.id);
        self.spawn_task_worker(worker.id, queues, tasks)
    }

    fn spawn_task_worker(
        &mut self,
        id: WorkerId,
        queues: &[(&QueueRecord, u32)],
        tasks: &TaskQueues,
    ) -> SimWorker {
        let link = CutOffStore::new(Arc::clone(&self.store));
        let (factory, poll) = tasks.factory(Arc::new(link.clone()), None);
        actix::spawn(poll);
        self.spawn_worker_on(link, id, queues, factory, RestartPolicy::default())
    }

    /// Starts `worker` again, as a new process with the same identity would after a restart
    /// (a new session under the same id), once it was stopped or killed.
    pub fn restart(
        &mut self,
        worker: &SimWorker,
        queues: &[(&QueueRecord, u32)],
        factory: HandlerFactory,
    ) -> SimWorker {
        self.killed.remove(&worker.id);
        self.spawn_worker(worker.id, queues, factory, RestartPolicy::default())
    }

    fn spawn_worker(
        &mut self,
        id: WorkerId,
        queues: &[(&QueueRecord, u32)],
        factory: HandlerFactory,
        policy: RestartPolicy,
    ) -> SimWorker {
        let link = CutOffStore::new(Arc::clone(&self.store));
        self.spawn_worker_on(link, id, queues, factory, policy)
    }

    fn spawn_worker_on(
        &mut self,
        link: CutOffStore,
        id: WorkerId,
        queues: &[(&QueueRecord, u32)],
        factory: HandlerFactory,
        policy: RestartPolicy,
    ) -> SimWorker {
        let registration = WorkerRegistration {
            id,
            host: "sim".to_owned(),
            pid: u32::try_from(self.workers.len() + 1).unwrap_or(u32::MAX),
            labels: BTreeMap::new(),
            subscriptions: queues
                .iter()
                .map(|(queue, capacity)| Subscription { queue_id: queue.id, capacity: *capacity })
                .collect(),
            session_timeout: self.config.session_timeout,
        };
        let factory = recording(factory, Arc::clone(&self.log), self.clock);
        let session = WorkerSession::new(Arc::new(link.clone()), self.config.clone(), registration, factory)
            .with_restart_policy(policy);
        let ended = session.ended();
        let session = session.start();
        let worker = SimWorker { id, link, session, ended };
        self.workers.push(worker.clone());
        worker
    }

    /// The workers added so far, killed and stopped ones included.
    pub fn workers(&self) -> &[SimWorker] {
        &self.workers
    }

    /// The coordinator nodes added so far.
    pub fn coordinators(&self) -> &[SimCoordinator] {
        &self.coordinators
    }

    /// Kills `worker` without a goodbye, as `SIGKILL` would: its session stops at once with
    /// every partition ([`Kill`]: no drain, no release, no deregistration) and its link is cut
    /// off for good, so nothing it had under way reaches the store. Its lease is left to run
    /// out, and the coordinator moves its partitions only after the session timeout.
    pub fn kill(&mut self, worker: &SimWorker) {
        worker.link.cut_off();
        worker.session.do_send(Kill);
        self.killed.insert(worker.id);
    }

    /// Stops `worker` gracefully ([`Leave`]): it drains and gives up its partitions,
    /// deregisters and stops. Resolves once it has left.
    ///
    /// # Errors
    /// [`SimError::Mailbox`] when the session had already stopped.
    pub async fn stop(&mut self, worker: &SimWorker) -> Result<LeaveOutcome, SimError> {
        let outcome = worker.session.send(Leave).await?;
        self.killed.insert(worker.id);
        Ok(outcome)
    }

    /// Cuts `worker` off from the store until [`restore`](Self::restore): its calls fail.
    pub fn cut_off(&self, worker: &SimWorker) {
        worker.link.cut_off();
    }

    /// Reconnects `worker`; a killed worker stays cut off. Whether it was reconnected.
    pub fn restore(&self, worker: &SimWorker) -> bool {
        if self.killed.contains(&worker.id) {
            return false;
        }
        worker.link.restore();
        true
    }

    /// Kills a coordinator node without a goodbye: its link is cut off for good, so it keeps
    /// no lease and writes nothing.
    pub fn kill_coordinator(&mut self, node: &SimCoordinator) {
        node.link.cut_off();
        self.killed_coordinators.insert(node.id);
    }

    /// Stops a coordinator node gracefully ([`Resign`]): it gives its lease up at once.
    pub fn stop_coordinator(&mut self, node: &SimCoordinator) {
        node.election.do_send(Resign);
        self.killed_coordinators.insert(node.id);
    }

    /// Cuts a coordinator node off from the store until
    /// [`restore_coordinator`](Self::restore_coordinator).
    pub fn cut_off_coordinator(&self, node: &SimCoordinator) {
        node.link.cut_off();
    }

    /// Reconnects a coordinator node; a killed one stays cut off. Whether it was reconnected.
    pub fn restore_coordinator(&self, node: &SimCoordinator) -> bool {
        if self.killed_coordinators.contains(&node.id) {
            return false;
        }
        node.link.restore();
        true
    }

    /// Lets `d` pass on tokio's clock (instantly on virtual time, while every actor runs).
    pub async fn advance(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Checks `condition` every 10 ms of tokio's clock for at most `limit`; whether it came
    /// true.
    pub async fn wait_until<F, Fut>(&self, limit: Duration, mut condition: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if condition().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The coordinator node that leads now (per its own election) with its fence, the one of
    /// the highest term if several believe they lead.
    pub async fn leader(&self) -> Option<(SimCoordinator, CoordinatorFence)> {
        let mut best: Option<(SimCoordinator, CoordinatorFence)> = None;
        for node in &self.coordinators {
            if let Some(fence) = node.fence().await
                && best.as_ref().is_none_or(|(_, b)| fence.term > b.term)
            {
                best = Some((node.clone(), fence));
            }
        }
        best
    }

    /// The owner of every partition of `queue` in the store, by partition.
    ///
    /// # Errors
    /// [`SimError::Store`] when the store fails.
    pub async fn partition_map(&self, queue: &QueueRecord) -> Result<Vec<Option<WorkerId>>, SimError> {
        Ok(self.rows(queue).await?.iter().map(|r| r.owner).collect())
    }

    /// How many partitions of `queue` each owner has in the store.
    ///
    /// # Errors
    /// [`SimError::Store`] when the store fails.
    pub async fn loads(&self, queue: &QueueRecord) -> Result<BTreeMap<WorkerId, usize>, SimError> {
        let mut loads = BTreeMap::new();
        for owner in self.partition_map(queue).await?.into_iter().flatten() {
            *loads.entry(owner).or_default() += 1;
        }
        Ok(loads)
    }

    /// Every event the store recorded, oldest first.
    ///
    /// # Errors
    /// [`SimError::Store`] when the store fails.
    pub async fn events(&self) -> Result<Vec<Event>, SimError> {
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &Event| e.id);
            let page = self.store.events_since(after, 1_000).await?;
            if page.is_empty() {
                return Ok(events);
            }
            events.extend(page);
        }
    }

    /// Every tenure recorded so far, in the order they started.
    pub fn tenures(&self) -> Vec<Tenure> {
        lock(&self.log).tenures.clone()
    }

    /// Reads `queue`'s rows and checks that no epoch went down since the last read.
    async fn rows(&self, queue: &QueueRecord) -> Result<Vec<AssignmentRecord>, SimError> {
        let rows = self.store.assignments(queue.id).await?.rows;
        let mut epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        for row in &rows {
            let seen = epochs.entry((row.queue_id, row.partition)).or_insert(row.epoch);
            *seen = (*seen).max(row.epoch);
        }
        Ok(rows)
    }

    /// Checks the safety invariants over everything recorded so far:
    /// - no two tenures of one partition ever overlap (never two workers running it at once,
    ///   nor one worker twice);
    /// - each partition's tenures, in the order they started, never go down in epoch, and a
    ///   change of worker always comes with a higher epoch;
    /// - no partition's epoch in the store ever went down between two reads by the kit, and
    ///   none is below an epoch a handler ran at;
    /// - every partition that is owned and settled runs on its owner, at the store's epoch:
    ///   `ASSIGNED`, its owner live in the store and a worker of the kit that is neither
    ///   killed, cut off, fenced nor leaving, and the partition not draining, backing off or
    ///   failed there. A partition that breaks this is given one session timeout plus two
    ///   heartbeat intervals (waited for on tokio's clock) to start before it is reported.
    ///
    /// # Errors
    /// [`InvariantViolation`] listing every broken invariant.
    pub async fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut violations = Vec::new();
        let tenures = self.tenures();
        let mut by_partition: BTreeMap<(QueueId, PartitionId), Vec<&Tenure>> = BTreeMap::new();
        for tenure in &tenures {
            by_partition.entry((tenure.queue, tenure.partition)).or_default().push(tenure);
        }
        for ((queue, partition), list) in &by_partition {
            // `list` is in start order: the log appends on start.
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    if a.stop_seq.is_none_or(|stop| stop > b.start_seq) {
                        violations.push(format!(
                            "queue {queue} partition {partition}: worker {} (epoch {}) still ran when worker {} (epoch {}) started at {}",
                            a.worker, a.epoch, b.worker, b.epoch, b.started
                        ));
                    }
                }
            }
            for pair in list.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if b.epoch < a.epoch || (b.worker != a.worker && b.epoch <= a.epoch) {
                    violations.push(format!(
                        "queue {queue} partition {partition}: epoch went from {} (worker {}) to {} (worker {})",
                        a.epoch, a.worker, b.epoch, b.worker
                    ));
                }
            }
        }
        let mut queues: BTreeSet<QueueId> = by_partition.keys().map(|(q, _)| *q).collect();
        queues.extend(self.epochs.lock().unwrap_or_else(PoisonError::into_inner).keys().map(|(q, _)| *q));
        for queue in queues {
            let before = self.epochs.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let rows = match self.store.assignments(queue).await {
                Ok(read) => read.rows,
                Err(err) => {
                    violations.push(format!("queue {queue}: could not read assignments: {err}"));
                    continue;
                }
            };
            {
                let mut epochs = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
                for row in rows {
                    let key = (row.queue_id, row.partition);
                    if let Some(seen) = before.get(&key).filter(|seen| row.epoch < **seen) {
                        violations.push(format!(
                            "queue {queue} partition {}: epoch went down in the store from {seen} to {}",
                            row.partition, row.epoch
                        ));
                    }
                    if let Some(ran) = by_partition.get(&key).and_then(|l| l.iter().map(|t| t.epoch).max())
                        && row.epoch < ran
                    {
                        violations.push(format!(
                            "queue {queue} partition {}: store epoch {} below epoch {ran} a handler ran at",
                            row.partition, row.epoch
                        ));
                    }
                    let seen = epochs.entry(key).or_insert(row.epoch);
                    *seen = (*seen).max(row.epoch);
                }
            }
            violations.extend(self.idle_owned(queue).await);
        }
        if violations.is_empty() { Ok(()) } else { Err(InvariantViolation { violations }) }
    }

    /// How long a settled partition may run nowhere before the checker calls it a violation:
    /// one session timeout plus two heartbeat intervals (a new owner starts a grant on its
    /// next assignment poll).
    fn idle_grace(&self) -> Duration {
        self.config.session_timeout + self.config.heartbeat_interval * 2
    }

    /// The partitions of `queue` that are owned and settled (`ASSIGNED`, owner live in the
    /// store and running here: not killed, cut off, fenced or leaving, and the partition not
    /// draining, backing off or failed on it) yet run nowhere, or elsewhere, or at another
    /// epoch, and stay so for [`idle_grace`](Self::idle_grace). One line each.
    async fn idle_owned(&self, queue: QueueId) -> Vec<String> {
        let deadline = Instant::now() + self.idle_grace();
        loop {
            let found = match self.idle_owned_now(queue).await {
                Ok(found) => found,
                Err(err) => return vec![format!("queue {queue}: could not check who runs what: {err}")],
            };
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn idle_owned_now(&self, queue: QueueId) -> Result<Vec<String>, SimError> {
        let rows = self.store.assignments(queue).await?.rows;
        let live: BTreeSet<WorkerId> =
            self.store.list_workers(WorkerFilter::Live).await?.iter().map(|w| w.id).collect();
        let owners: BTreeSet<WorkerId> = rows
            .iter()
            .filter(|r| r.state == AssignmentState::Assigned)
            .filter_map(|r| r.owner)
            .filter(|o| !self.killed.contains(o) && live.contains(o))
            .collect();
        let mut statuses: BTreeMap<WorkerId, WorkerStatusReport> = BTreeMap::new();
        for owner in owners {
            // The latest session under that id that still runs, if it is reachable.
            let worker = self.workers.iter().rev().find(|w| w.id == owner && w.session.connected());
            if let Some(w) = worker.filter(|w| !w.link.is_cut_off())
                && let Ok(status) = w.session.send(GetStatus).await
            {
                statuses.insert(owner, status);
            }
        }
        let tenures = self.tenures();
        let mut found = Vec::new();
        for row in rows {
            let Some(owner) = row.owner.filter(|_| row.state == AssignmentState::Assigned) else {
                continue;
            };
            let Some(status) = statuses.get(&owner) else {
                continue;
            };
            let busy = status.partitions.iter().any(|p| {
                p.queue == queue
                    && p.partition == row.partition
                    && matches!(
                        p.state,
                        PartitionState::Draining | PartitionState::Backoff | PartitionState::Failed
                    )
            });
            if status.fenced || status.leaving || busy {
                continue;
            }
            let running: Vec<(WorkerId, Epoch)> = tenures
                .iter()
                .filter(|t| t.queue == queue && t.partition == row.partition && t.is_running())
                .map(|t| (t.worker, t.epoch))
                .collect();
            if running != [(owner, row.epoch)] {
                found.push(format!(
                    "queue {queue} partition {}: owned and settled (owner {owner}, epoch {}) but runs on {running:?}",
                    row.partition, row.epoch
                ));
            }
        }
        Ok(found)
    }

    /// Checks that `queue` has settled: every partition owned in the store by a live worker
    /// the kit has not killed or stopped, no revocation under way, and each partition running
    /// on exactly one worker — its owner, at the store's epoch.
    ///
    /// # Errors
    /// [`InvariantViolation`] listing what is not settled yet (use it as a condition for
    /// [`wait_until`](Self::wait_until)).
    pub async fn check_settled(&self, queue: &QueueRecord) -> Result<(), InvariantViolation> {
        let mut violations = Vec::new();
        let (rows, live) = match (self.rows(queue).await, self.store.list_workers(WorkerFilter::Live).await) {
            (Ok(rows), Ok(live)) => (rows, live),
            (Err(err), _) => return Err(InvariantViolation { violations: vec![err.to_string()] }),
            (_, Err(err)) => return Err(InvariantViolation { violations: vec![err.to_string()] }),
        };
        let live: BTreeSet<WorkerId> =
            live.iter().map(|w| w.id).filter(|id| !self.killed.contains(id)).collect();
        let tenures = self.tenures();
        for row in rows {
            let p = row.partition;
            let runs = |t: &Tenure| t.queue == queue.id && t.partition == p && t.is_running();
            if row.state == AssignmentState::Failed {
                // Settled while it waits for an operator, as long as it runs nowhere.
                if tenures.iter().any(runs) {
                    violations.push(format!("partition {p} failed but still runs"));
                }
                continue;
            }
            let Some(owner) = row.owner else {
                violations.push(format!("partition {p} has no owner"));
                continue;
            };
            if row.state != AssignmentState::Assigned {
                violations.push(format!("partition {p} is {:?}", row.state));
            }
            if !live.contains(&owner) {
                violations.push(format!("partition {p} is owned by {owner}, which is not live"));
            }
            let running: Vec<&Tenure> = tenures.iter().filter(|t| runs(t)).collect();
            match running.as_slice() {
                [t] if t.worker == owner && t.epoch == row.epoch => {}
                [] => violations.push(format!("partition {p} runs nowhere")),
                many => violations.push(format!(
                    "partition {p} (owner {owner}, epoch {}) runs on {:?}",
                    row.epoch,
                    many.iter().map(|t| (t.worker, t.epoch)).collect::<Vec<_>>()
                )),
            }
        }
        if violations.is_empty() { Ok(()) } else { Err(InvariantViolation { violations }) }
    }
}

impl fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCluster")
            .field("workers", &self.workers)
            .field("coordinators", &self.coordinators)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenure(worker: WorkerId, epoch: u64, start_seq: u64, stop_seq: Option<u64>) -> Tenure {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        Tenure {
            worker,
            queue: QueueId(1),
            partition: PartitionId(0),
            epoch: Epoch(epoch),
            started: at,
            stopped: stop_seq.map(|_| at),
            start_seq,
            stop_seq,
        }
    }

    async fn check(tenures: Vec<Tenure>) -> Result<(), InvariantViolation> {
        let cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
        let queue = cluster.create_queue("domain_order", "food_order", 1).await.expect("queue");
        lock(&cluster.log).tenures = tenures.into_iter().map(|t| Tenure { queue: queue.id, ..t }).collect();
        // The store never granted these epochs: leave that check out but make sure it fires.
        match cluster.check_invariants().await {
            Ok(()) => panic!("the store's epoch 0 is below the epochs the handlers ran at"),
            Err(mut v) => {
                let before = v.violations.len();
                v.violations.retain(|line| !line.contains("a handler ran at"));
                assert_eq!(before, v.violations.len() + 1, "{v}");
                if v.violations.is_empty() { Ok(()) } else { Err(v) }
            }
        }
    }

    #[actix::test]
    async fn the_checker_catches_overlaps_and_falling_epochs() {
        let (a, b) = (WorkerId::new_v7(), WorkerId::new_v7());
        check(vec![tenure(a, 1, 1, Some(2)), tenure(b, 2, 3, None)]).await.expect("a clean handoff");
        let overlap = check(vec![tenure(a, 1, 1, Some(4)), tenure(b, 2, 3, None)]).await;
        assert!(overlap.is_err_and(|v| v.violations.len() == 1 && v.violations[0].contains("still ran")));
        let never_stopped = check(vec![tenure(a, 1, 1, None), tenure(b, 2, 3, None)]).await;
        assert!(never_stopped.is_err());
        let same_epoch = check(vec![tenure(a, 2, 1, Some(2)), tenure(b, 2, 3, None)]).await;
        assert!(same_epoch.is_err_and(|v| v.violations[0].contains("epoch went from")));
        let restart = check(vec![tenure(a, 2, 1, Some(2)), tenure(a, 2, 3, None)]).await;
        restart.expect("a restart on the same worker keeps its epoch");
    }
}

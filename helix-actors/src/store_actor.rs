//! The Store actor: the single door to the database (DESIGN §5).
//!
//! A [`StoreActor`] owns a [`Store`] and is the one thing a node's actors talk to it
//! through. Every operation of the [`Store`] trait is a typed message of [`msg`]; a
//! [`StoreHandle`] is the clonable address that implements [`Store`] by sending them, so the
//! actors of a node take an `Arc<dyn Store>` and never know whether it is the store itself or
//! the door in front of it.
//!
//! **Bounded concurrency.** Handlers do not run the operations on the actor: each one returns
//! a future that first takes a permit of a semaphore and then calls the store, so up to
//! `max_in_flight` operations run at once (the pool's size, [`DEFAULT_MAX_IN_FLIGHT`] by
//! default) and the others wait for a permit instead of queueing on the pool's connection
//! timeout. Permits are granted in order of arrival.
//!
//! **Retries live with the transaction, not here.** The MySQL and SQLite stores already retry
//! a [`StoreError::Transient`] failure (deadlock, lock wait timeout, lost connection, busy
//! database) with capped, jittered backoff, around the one transaction that must be run
//! again; what reaches the actor has already been retried. The actor therefore passes every
//! result through unchanged and never tries an operation again: a second retry layer would
//! multiply the attempts (5 × 5 for one deadlock) and the time a caller waits, and would run
//! again operations that are not idempotent. A [`StoreError::Fenced`] answer in particular
//! comes back after exactly one call: the caller's term or epoch is stale and it must stop,
//! not insist.
//!
//! The actor keeps no timers: it stops when the last [`StoreHandle`] is dropped, or at once on
//! [`Shutdown`]. Operations already under way then finish and answer; later ones get
//! [`StoreError::Unavailable`] ([`STOPPED`]).
//!
//! ```
//! use helix_actors::store_actor::{DEFAULT_MAX_IN_FLIGHT, StoreActor};
//! use helix_core::DomainName;
//! use helix_store::{MemStore, Store};
//! # use std::sync::Arc;
//!
//! #[actix::main]
//! async fn main() -> Result<(), helix_store::StoreError> {
//!     let store = Arc::new(MemStore::new(Arc::new(helix_core::SystemClock)));
//!     let handle = StoreActor::start_handle(store, DEFAULT_MAX_IN_FLIGHT);
//!     let domain = DomainName::new("domain_order")?;
//!     handle.create_domain(&domain).await?;
//!     assert_eq!(handle.get_domain(&domain).await?.name, domain);
//!     Ok(())
//! }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionId, QueueId, QueueName, SessionEpoch, Term, WorkerId,
};
use helix_store::{
    AssignmentRecord, CoordinatorFence, DomainRecord, Event, Heartbeat, LeaseRecord, NewEvent, PlanChange,
    PlanOutcome, QueueAssignments, QueueRecord, QueueSpec, Store, StoreError, StoreResult, WorkerFilter,
    WorkerLease, WorkerRecord, WorkerRegistration, WorkerStatus,
};
use helix_store::{
    CancelOutcome, Enqueued, NewTask, OwnerFence, PartitionOutcomes, TaskBatchOutcome, TaskCount,
    TaskFailure, TaskId, TaskRecord, TaskRecovery, TaskRetry, TaskState,
};
use helix_store::{FireOutcome, NewSchedule, ScheduleFire, ScheduleRecord};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many store operations a [`StoreActor`] runs at once unless told otherwise: the default
/// size of the store's connection pool ([`helix_store::ConnectOptions::pool_size`]), so that
/// every operation under way has a connection and none waits on the pool.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10;

/// The reason of the [`StoreError::Unavailable`] a [`StoreHandle`] answers once its actor has
/// stopped.
pub const STOPPED: &str = "the store actor has stopped";

/// The single door of a node to its [`Store`]: runs the operations sent as [`msg`] messages,
/// at most `max_in_flight` at once, and passes their results through unchanged (no retry of
/// its own, see the [module documentation](self)).
///
/// Start one with [`StoreActor::start_handle`] and hand the [`StoreHandle`] out.
///
/// Arbiter: a [`Worker`](crate::node::Worker)'s store actor lives on the worker's control
/// arbiter, with its session and never with user handlers; a
/// [`CoordinatorNode`](crate::node::CoordinatorNode)'s on the arbiter that starts the node.
pub struct StoreActor {
    store: Arc<dyn Store>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
}

impl StoreActor {
    /// An actor in front of `store` that runs at most `max_in_flight` operations at once (at
    /// least 1: a bound of 0 is taken as 1, since nothing would ever run).
    pub fn new(store: Arc<dyn Store>, max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self { store, permits: Arc::new(Semaphore::new(max_in_flight)), max_in_flight }
    }

    /// Starts an actor in front of `store` on the current arbiter (see [`new`](Self::new))
    /// and returns its handle. Call it inside a running actix system.
    pub fn start_handle(store: Arc<dyn Store>, max_in_flight: usize) -> StoreHandle {
        StoreHandle::new(Self::new(store, max_in_flight).start())
    }

    /// The most operations that run at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The store and a future permit, moved into the future of one operation.
    fn operation(&self) -> Operation {
        Operation { store: Arc::clone(&self.store), permits: Arc::clone(&self.permits) }
    }
}

impl fmt::Debug for StoreActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreActor")
            .field("max_in_flight", &self.max_in_flight)
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        tracing::debug!(max_in_flight = self.max_in_flight, "store actor started");
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        tracing::debug!("store actor stopped");
    }
}

/// One operation on its way: waits for a permit, then runs against the store.
struct Operation {
    store: Arc<dyn Store>,
    permits: Arc<Semaphore>,
}

impl Operation {
    /// Waits for a permit; the operation runs while the permit is held.
    async fn begin(self) -> StoreResult<(Arc<dyn Store>, OwnedSemaphorePermit)> {
        // The semaphore is never closed; an error would only mean the actor is gone.
        let permit =
            self.permits.acquire_owned().await.map_err(|_| StoreError::Unavailable(STOPPED.to_owned()))?;
        Ok((self.store, permit))
    }
}

/// Stops a [`StoreActor`] at once: operations under way finish and answer, later ones get
/// [`StoreError::Unavailable`] ([`STOPPED`]).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for StoreActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Declares one message per [`Store`] operation and its handler on [`StoreActor`].
///
/// `Name { field: Type, .. } -> Output = method(arguments);` declares the message `Name` with
/// the owned arguments of [`Store::method`], answered with `StoreResult<Output>` by calling
/// `method(arguments)`, where the arguments name the fields (borrowed with `&` where the trait
/// takes a reference).
macro_rules! store_messages {
    ($(
        $(#[$doc:meta])*
        $name:ident { $($field:ident: $ty:ty),* $(,)? } -> $output:ty = $method:ident($($arg:expr),* $(,)?);
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            $(
                #[doc = concat!("The `", stringify!($field), "` argument of [`Store::", stringify!($method), "`].")]
                pub $field: $ty,
            )*
        }

        impl Message for $name {
            type Result = StoreResult<$output>;
        }

        impl Handler<$name> for super::StoreActor {
            type Result = ResponseFuture<StoreResult<$output>>;

            fn handle(&mut self, message: $name, _: &mut Self::Context) -> Self::Result {
                let $name { $($field),* } = message;
                let operation = self.operation();
                Box::pin(async move {
                    let (store, _permit) = operation.begin().await?;
                    store.$method($($arg),*).await
                })
            }
        }
    )*};
}

/// One message per [`Store`] operation, each answered with the operation's
/// [`StoreResult`] by a [`StoreActor`]. The fields are the operation's arguments, owned.
pub mod msg {
    use super::*;

    store_messages! {
        /// Reads the store's clock: [`Store::now`].
        Now {} -> DateTime<Utc> = now();

        /// Creates a domain: [`Store::create_domain`].
        CreateDomain { name: DomainName } -> DomainRecord = create_domain(&name);
        /// Reads a domain: [`Store::get_domain`].
        GetDomain { name: DomainName } -> DomainRecord = get_domain(&name);
        /// Lists every domain: [`Store::list_domains`].
        ListDomains {} -> Vec<DomainRecord> = list_domains();
        /// Deletes an empty domain: [`Store::delete_domain`].
        DeleteDomain { name: DomainName } -> () = delete_domain(&name);

        /// Creates a queue: [`Store::create_queue`].
        CreateQueue { spec: QueueSpec } -> QueueRecord = create_queue(&spec);
        /// Reads a queue by name: [`Store::get_queue`].
        GetQueue { domain: DomainName, name: QueueName } -> QueueRecord = get_queue(&domain, &name);
        /// Reads a queue by id: [`Store::get_queue_by_id`].
        GetQueueById { id: QueueId } -> QueueRecord = get_queue_by_id(id);
        /// Lists the queues of one domain or of all: [`Store::list_queues`].
        ListQueues { domain: Option<DomainName> } -> Vec<QueueRecord> = list_queues(domain);
        /// Deletes a queue: [`Store::delete_queue`].
        DeleteQueue { domain: DomainName, name: QueueName } -> () = delete_queue(&domain, &name);

        /// Registers a worker or starts a new session of it: [`Store::register_worker`].
        RegisterWorker { registration: WorkerRegistration } -> WorkerLease = register_worker(&registration);
        /// Renews a worker's lease: [`Store::heartbeat`].
        Heartbeat {
            worker: WorkerId,
            session_epoch: SessionEpoch,
            session_timeout: Duration,
        } -> helix_store::Heartbeat = heartbeat(worker, session_epoch, session_timeout);
        /// Moves a live session between ACTIVE and DRAINING: [`Store::set_worker_status`].
        SetWorkerStatus {
            worker: WorkerId,
            session_epoch: SessionEpoch,
            status: WorkerStatus,
        } -> () = set_worker_status(worker, session_epoch, status);
        /// Ends a session gracefully: [`Store::deregister_worker`].
        DeregisterWorker { worker: WorkerId, session_epoch: SessionEpoch } -> ()
            = deregister_worker(worker, session_epoch);
        /// Reads one worker: [`Store::get_worker`].
        GetWorker { worker: WorkerId } -> WorkerRecord = get_worker(worker);
        /// Lists workers: [`Store::list_workers`].
        ListWorkers { filter: WorkerFilter } -> Vec<WorkerRecord> = list_workers(filter);
        /// Declares expired workers dead, fenced by term: [`Store::mark_workers_dead`].
        MarkWorkersDead { fence: CoordinatorFence, workers: Vec<WorkerId> } -> Vec<WorkerId>
            = mark_workers_dead(&fence, &workers);

        /// Tries to take the coordinator lease: [`Store::acquire_lease`].
        AcquireLease { cluster: ClusterName, holder: WorkerId, lease: Duration } -> Option<Term>
            = acquire_lease(&cluster, holder, lease);
        /// Extends the caller's running lease: [`Store::renew_lease`].
        RenewLease { fence: CoordinatorFence, lease: Duration } -> () = renew_lease(&fence, lease);
        /// Gives the lease up: [`Store::release_lease`].
        ReleaseLease { fence: CoordinatorFence } -> () = release_lease(&fence);
        /// Reads a cluster's lease: [`Store::get_lease`].
        GetLease { cluster: ClusterName } -> Option<LeaseRecord> = get_lease(&cluster);

        /// Reads every assignment row of a queue: [`Store::assignments`].
        Assignments { queue: QueueId } -> QueueAssignments = assignments(queue);
        /// Reads the rows a worker owns: [`Store::assignments_of`].
        AssignmentsOf { worker: WorkerId } -> Vec<AssignmentRecord> = assignments_of(worker);
        /// Applies a coordinator's plan for one queue, fenced by term: [`Store::apply_plan`].
        ApplyPlan { fence: CoordinatorFence, queue: QueueId, changes: Vec<PlanChange> } -> PlanOutcome
            = apply_plan(&fence, queue, &changes);
        /// Hands a revoked partition over, fenced by epoch: [`Store::handoff`].
        Handoff { queue: QueueId, partition: PartitionId, worker: WorkerId, epoch: Epoch } -> Epoch
            = handoff(queue, partition, worker, epoch);
        /// Gives a partition up, fenced by epoch: [`Store::release_partition`].
        ReleasePartition { queue: QueueId, partition: PartitionId, worker: WorkerId, epoch: Epoch } -> Epoch
            = release_partition(queue, partition, worker, epoch);
        /// Gives up a partition that keeps failing, fenced by epoch: [`Store::fail_partition`].
        FailPartition {
            queue: QueueId,
            partition: PartitionId,
            worker: WorkerId,
            epoch: Epoch,
            detail: serde_json::Value,
        } -> Epoch = fail_partition(queue, partition, worker, epoch, &detail);
        /// Resets a failed partition: [`Store::reset_partition`].
        ResetPartition { queue: QueueId, partition: PartitionId } -> bool = reset_partition(queue, partition);

        /// Appends an event: [`Store::append_event`].
        AppendEvent { event: NewEvent } -> u64 = append_event(&event);
        /// Reads events after an id: [`Store::events_since`].
        EventsSince { after: u64, limit: u32 } -> Vec<Event> = events_since(after, limit);
        /// Deletes old events: [`Store::prune_events`].
        PruneEvents { older_than: Duration } -> u64 = prune_events(older_than);

        /// Enqueues one task: [`Store::enqueue_task`].
        EnqueueTask { queue: QueueId, task: NewTask } -> Enqueued = enqueue_task(queue, &task);
        /// Enqueues a batch of tasks: [`Store::enqueue_tasks`].
        EnqueueTasks { queue: QueueId, tasks: Vec<NewTask> } -> Vec<Enqueued> = enqueue_tasks(queue, &tasks);
        /// Claims due tasks, fenced by epoch: [`Store::claim_tasks`].
        ClaimTasks { fence: OwnerFence, limit: u32 } -> Vec<TaskRecord> = claim_tasks(&fence, limit);
        /// Completes tasks, fenced by epoch: [`Store::complete_tasks`].
        CompleteTasks { fence: OwnerFence, ids: Vec<TaskId> } -> TaskBatchOutcome = complete_tasks(&fence, &ids);
        /// Records failed attempts, fenced by epoch: [`Store::fail_tasks`].
        FailTasks { fence: OwnerFence, failures: Vec<TaskFailure> } -> TaskBatchOutcome = fail_tasks(&fence, &failures);
        /// Puts tasks back for later, fenced by epoch: [`Store::retry_tasks_later`].
        RetryTasksLater { fence: OwnerFence, retries: Vec<TaskRetry> } -> TaskBatchOutcome = retry_tasks_later(&fence, &retries);
        /// Records the outcomes of many partitions in one transaction, each fenced by its
        /// epoch: [`Store::record_task_outcomes`].
        RecordTaskOutcomes { batches: Vec<PartitionOutcomes> } -> Vec<StoreResult<TaskBatchOutcome>>
            = record_task_outcomes(&batches);
        /// Extends running attempts, fenced by epoch: [`Store::extend_tasks`].
        ExtendTasks { fence: OwnerFence, ids: Vec<TaskId>, by: Duration } -> TaskBatchOutcome = extend_tasks(&fence, &ids, by);
        /// Cancels a task: [`Store::cancel_task`].
        CancelTask { id: TaskId } -> CancelOutcome = cancel_task(id);
        /// Recovers the tasks of older epochs, fenced by epoch: [`Store::recover_partition_tasks`].
        RecoverPartitionTasks { fence: OwnerFence } -> TaskRecovery = recover_partition_tasks(&fence);
        /// Reads the next due time of partitions: [`Store::next_due`].
        NextDue { queue: QueueId, partitions: Vec<PartitionId> } -> std::collections::BTreeMap<PartitionId, DateTime<Utc>> = next_due(queue, &partitions);
        /// Counts tasks by partition and state: [`Store::task_counts`].
        TaskCounts { queue: QueueId } -> Vec<TaskCount> = task_counts(queue);
        /// Reads a task: [`Store::get_task`].
        GetTask { id: TaskId } -> TaskRecord = get_task(id);
        /// Lists tasks in one state: [`Store::list_tasks`].
        ListTasks { queue: QueueId, state: TaskState, after: Option<TaskId>, limit: u32 } -> Vec<TaskRecord> = list_tasks(queue, state, after, limit);
        /// Retries a dead task: [`Store::retry_dead_task`].
        RetryDeadTask { id: TaskId } -> TaskRecord = retry_dead_task(id);
        /// Deletes old finished tasks: [`Store::prune_tasks`].
        PruneTasks { older_than: Duration, limit: u32 } -> u64 = prune_tasks(older_than, limit);
        /// Creates a schedule: [`Store::create_schedule`].
        CreateSchedule { queue: QueueId, schedule: NewSchedule } -> ScheduleRecord = create_schedule(queue, &schedule);
        /// Reads a schedule: [`Store::get_schedule`].
        GetSchedule { queue: QueueId, name: String } -> ScheduleRecord = get_schedule(queue, &name);
        /// Lists schedules: [`Store::list_schedules`].
        ListSchedules { queue: Option<QueueId> } -> Vec<ScheduleRecord> = list_schedules(queue);
        /// Pauses or resumes a schedule: [`Store::set_schedule_paused`].
        SetSchedulePaused { queue: QueueId, name: String, paused: bool } -> ScheduleRecord = set_schedule_paused(queue, &name, paused);
        /// Deletes a schedule: [`Store::delete_schedule`].
        DeleteSchedule { queue: QueueId, name: String } -> () = delete_schedule(queue, &name);
        /// Reads the schedules due within a horizon: [`Store::due_schedules`].
        DueSchedules { horizon: Duration, limit: u32 } -> (DateTime<Utc>, Vec<ScheduleRecord>) = due_schedules(horizon, limit);
        /// Fires schedule slots under a term: [`Store::fire_schedules`].
        FireSchedules { fence: CoordinatorFence, fires: Vec<ScheduleFire> } -> Vec<FireOutcome> = fire_schedules(&fence, &fires);
    }
}

/// The address of a [`StoreActor`], usable as a [`Store`]: every call sends the matching
/// [`msg`] message and waits for its answer. Cheap to clone; the actor runs while a handle
/// exists (or until [`Shutdown`]).
///
/// A call made after the actor stopped answers [`StoreError::Unavailable`] with the reason
/// [`STOPPED`]. A call that gives up waiting (its future is dropped) does not cancel its
/// operation once sent: the operation still runs, when a permit is free, and its answer is
/// dropped.
#[derive(Clone)]
pub struct StoreHandle {
    addr: Addr<StoreActor>,
}

impl StoreHandle {
    /// The handle of the actor at `addr`.
    pub fn new(addr: Addr<StoreActor>) -> Self {
        Self { addr }
    }

    /// The actor's address, for example to send it [`Shutdown`].
    pub fn addr(&self) -> &Addr<StoreActor> {
        &self.addr
    }

    /// This handle as the `Arc<dyn Store>` the actors take.
    pub fn into_store(self) -> Arc<dyn Store> {
        Arc::new(self)
    }

    async fn call<M, T>(&self, message: M) -> StoreResult<T>
    where
        M: Message<Result = StoreResult<T>> + Send + 'static,
        T: Send + 'static,
        StoreActor: Handler<M>,
    {
        self.addr.send(message).await.map_err(|_| StoreError::Unavailable(STOPPED.to_owned()))?
    }
}

impl From<Addr<StoreActor>> for StoreHandle {
    fn from(addr: Addr<StoreActor>) -> Self {
        Self::new(addr)
    }
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreHandle").field("connected", &self.addr.connected()).finish()
    }
}

#[async_trait]
impl Store for StoreHandle {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        self.call(msg::Now {}).await
    }

    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.call(msg::CreateDomain { name: name.clone() }).await
    }
    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        self.call(msg::GetDomain { name: name.clone() }).await
    }
    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        self.call(msg::ListDomains {}).await
    }
    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        self.call(msg::DeleteDomain { name: name.clone() }).await
    }

    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        self.call(msg::CreateQueue { spec: spec.clone() }).await
    }
    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        self.call(msg::GetQueue { domain: domain.clone(), name: name.clone() }).await
    }
    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        self.call(msg::GetQueueById { id }).await
    }
    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        self.call(msg::ListQueues { domain }).await
    }
    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        self.call(msg::DeleteQueue { domain: domain.clone(), name: name.clone() }).await
    }

    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        self.call(msg::RegisterWorker { registration: registration.clone() }).await
    }
    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        self.call(msg::Heartbeat { worker, session_epoch, session_timeout }).await
    }
    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        self.call(msg::SetWorkerStatus { worker, session_epoch, status }).await
    }
    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        self.call(msg::DeregisterWorker { worker, session_epoch }).await
    }
    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        self.call(msg::GetWorker { worker }).await
    }
    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        self.call(msg::ListWorkers { filter }).await
    }
    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        self.call(msg::MarkWorkersDead { fence: fence.clone(), workers: workers.to_vec() }).await
    }

    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        self.call(msg::AcquireLease { cluster: cluster.clone(), holder, lease }).await
    }
    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        self.call(msg::RenewLease { fence: fence.clone(), lease }).await
    }
    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        self.call(msg::ReleaseLease { fence: fence.clone() }).await
    }
    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        self.call(msg::GetLease { cluster: cluster.clone() }).await
    }

    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        self.call(msg::Assignments { queue }).await
    }
    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        self.call(msg::AssignmentsOf { worker }).await
    }
    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        self.call(msg::ApplyPlan { fence: fence.clone(), queue, changes: changes.to_vec() }).await
    }
    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.call(msg::Handoff { queue, partition, worker, epoch }).await
    }
    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.call(msg::ReleasePartition { queue, partition, worker, epoch }).await
    }
    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch> {
        self.call(msg::FailPartition { queue, partition, worker, epoch, detail: detail.clone() }).await
    }
    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        self.call(msg::ResetPartition { queue, partition }).await
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        self.call(msg::AppendEvent { event: event.clone() }).await
    }
    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        self.call(msg::EventsSince { after, limit }).await
    }
    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        self.call(msg::PruneEvents { older_than }).await
    }
    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        self.call(msg::EnqueueTask { queue, task: task.clone() }).await
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        self.call(msg::EnqueueTasks { queue, tasks: tasks.to_vec() }).await
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        self.call(msg::ClaimTasks { fence: *fence, limit }).await
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        self.call(msg::CompleteTasks { fence: *fence, ids: ids.to_vec() }).await
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        self.call(msg::FailTasks { fence: *fence, failures: failures.to_vec() }).await
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        self.call(msg::RetryTasksLater { fence: *fence, retries: retries.to_vec() }).await
    }
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        self.call(msg::RecordTaskOutcomes { batches: batches.to_vec() }).await
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        self.call(msg::ExtendTasks { fence: *fence, ids: ids.to_vec(), by }).await
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        self.call(msg::CancelTask { id }).await
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        self.call(msg::RecoverPartitionTasks { fence: *fence }).await
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<std::collections::BTreeMap<PartitionId, DateTime<Utc>>> {
        self.call(msg::NextDue { queue, partitions: partitions.to_vec() }).await
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        self.call(msg::TaskCounts { queue }).await
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.call(msg::GetTask { id }).await
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        self.call(msg::ListTasks { queue, state, after, limit }).await
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.call(msg::RetryDeadTask { id }).await
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        self.call(msg::PruneTasks { older_than, limit }).await
    }
    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord> {
        self.call(msg::CreateSchedule { queue, schedule: schedule.clone() }).await
    }
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        self.call(msg::GetSchedule { queue, name: name.to_owned() }).await
    }
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        self.call(msg::ListSchedules { queue }).await
    }
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        self.call(msg::SetSchedulePaused { queue, name: name.to_owned(), paused }).await
    }
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        self.call(msg::DeleteSchedule { queue, name: name.to_owned() }).await
    }
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        self.call(msg::DueSchedules { horizon, limit }).await
    }
    async fn fire_schedules(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>> {
        self.call(msg::FireSchedules { fence: fence.clone(), fires: fires.to_vec() }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_is_the_default_pool_size() {
        let pool_size = helix_store::ConnectOptions::default().pool_size;
        assert_eq!(u32::try_from(DEFAULT_MAX_IN_FLIGHT).ok(), Some(pool_size));
    }
}

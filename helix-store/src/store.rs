//! The [`Store`] trait: everything Helix keeps in its database.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionId, QueueId, QueueName, SessionEpoch, Term, WorkerId,
};

use crate::error::StoreResult;
use crate::model::{
    AssignmentRecord, CoordinatorFence, DomainRecord, Event, Heartbeat, LeaseRecord, NewEvent, PlanChange,
    PlanOutcome, QueueAssignments, QueueRecord, QueueSpec, WorkerFilter, WorkerLease, WorkerRecord,
    WorkerRegistration, WorkerStatus,
};
use crate::schedules::{FireOutcome, NewSchedule, ScheduleFire, ScheduleRecord};
use crate::tasks::{
    CancelOutcome, Enqueued, NewTask, OwnerFence, PartitionOutcomes, TaskBatchOutcome, TaskCount,
    TaskFailure, TaskId, TaskRecord, TaskRecovery, TaskRetry, TaskState,
};

/// Everything Helix keeps in its database, behind one async interface that the MySQL, SQLite
/// and in-memory stores implement with the same semantics (checked by the conformance suite).
///
/// Rules every implementation keeps:
/// - **Time is the store's.** Leases are set and compared on the database clock (`NOW(6)` on
///   MySQL); callers pass durations, never instants.
/// - **Coordinator writes are fenced by term** ([`CoordinatorFence`]) and **owner writes by
///   epoch**, checked in the same transaction as the write; a stale caller gets
///   [`StoreError::Fenced`](crate::StoreError::Fenced) and nothing changes.
/// - **History is written with the change.** Operations that change membership, leadership or
///   assignments append their events in the same transaction.
/// - Names and partition counts arrive validated by their types; anything else that is bad
///   input is refused with [`StoreError::Invalid`](crate::StoreError::Invalid).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current time on the store's clock.
    async fn now(&self) -> StoreResult<DateTime<Utc>>;

    // ---- domains and queues -------------------------------------------------------------

    /// Creates a domain; `Conflict` when it exists.
    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord>;
    /// Reads a domain; `NotFound` when absent.
    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord>;
    /// Every domain, sorted by name.
    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>>;
    /// Deletes an empty domain; `Conflict` while it has queues, `NotFound` when absent.
    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()>;

    /// Creates a queue and one unowned assignment row (epoch 0) per partition; `NotFound`
    /// when the domain does not exist, `Conflict` when the queue does.
    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord>;
    /// Reads a queue by name; `NotFound` when absent.
    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord>;
    /// Reads a queue by id; `NotFound` when absent.
    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord>;
    /// The queues of one domain, or of all, sorted by (domain, name).
    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>>;
    /// Deletes a queue with its assignments and subscriptions; `NotFound` when absent.
    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()>;

    // ---- workers ------------------------------------------------------------------------

    /// Registers a worker (or starts a new session of a known one: status ACTIVE, session
    /// epoch + 1, subscriptions replaced) with a lease of `session_timeout` from now.
    ///
    /// **One process per identity**: while a session of this id is live (ACTIVE or DRAINING
    /// with a lease running on the store's clock) the registration is refused with
    /// [`StoreError::IdInUse`](crate::StoreError::IdInUse), saying how long that lease still
    /// runs, and nothing changes. A LEFT or DEAD worker, or one whose lease ran out, registers
    /// at once.
    ///
    /// **Adoption bumps the epoch**: in the same transaction, every row the id still owns
    /// (kept through a restart within the rejoin delay, or left behind by a session that
    /// expired) moves to epoch + 1, keeping its owner, state and target (a revocation keeps
    /// its start); each touched queue's assignment version moves once and each row gets a
    /// `partition_adopted` event. So the previous process's epoch is fenced before the new
    /// session can read its rows. A row of a queue the new session does not subscribe to is
    /// released instead (no owner, epoch + 1, assigned, a `partition_released` event), for the
    /// coordinator to grant to a worker that serves it (`docs/protocol.md`, "Adoption bumps
    /// the epoch").
    ///
    /// `NotFound` when a subscribed queue does not exist.
    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease>;
    /// Renews the lease of a session for `session_timeout` from now, if the lease is still
    /// running; otherwise says why not. Never revives an expired lease.
    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat>;
    /// Moves a live session between ACTIVE and DRAINING; `Fenced` when the session is over,
    /// `Invalid` for any other status.
    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()>;
    /// Ends a session gracefully: status LEFT, lease ended, subscriptions removed. Idempotent;
    /// `Fenced` when a newer session exists.
    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()>;
    /// Reads one worker; `NotFound` when absent.
    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord>;
    /// Lists workers, sorted by id.
    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>>;
    /// Declares dead those of `workers` whose lease has run out on the store's clock and whose
    /// status is still ACTIVE or DRAINING; returns the ones it changed. Fenced by term.
    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>>;

    // ---- coordinator lease --------------------------------------------------------------

    /// Tries to take the cluster's coordinator lease for `lease` from now. Returns the new
    /// term (`term + 1`) when the lease was free, released or had run out. `None` while any
    /// process holds a running lease, **including one under the caller's own id**: a holder
    /// keeps its lease with [`renew_lease`](Self::renew_lease) under its term, never by
    /// acquiring, so a second process started under the holder's id cannot lead under the
    /// holder's term (one process per term; `docs/protocol.md`).
    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>>;
    /// Extends the caller's running lease for `lease` from now; `Fenced` when it is no longer
    /// the holder, its term is stale or its lease has run out.
    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()>;
    /// Gives the lease up so another process can take it at once. Idempotent; does nothing
    /// when the caller no longer holds it.
    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()>;
    /// Reads the lease of a cluster; `None` when nobody ever held it.
    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>>;

    // ---- assignments --------------------------------------------------------------------

    /// Every assignment row of a queue, with its assignment version, in one snapshot;
    /// `NotFound` when the queue does not exist.
    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments>;
    /// The rows a worker owns, across queues, sorted by (queue, partition).
    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>>;
    /// Applies a coordinator's plan (from [`helix_core::planner::plan`]) for one queue
    /// atomically, fenced by term. A change applies only where the row still has the change's
    /// `expected_epoch` and satisfies its rule; the others are reported as skipped:
    ///
    /// | change | rule | effect |
    /// |---|---|---|
    /// | `Grant { to }` | no owner, an owner not live on the store's clock, or `to` itself; and `to` live (else `TargetNotLive`) | `owner = to`, epoch + 1, `ASSIGNED` |
    /// | `Release` | an owner that is not live | no owner, epoch + 1, `ASSIGNED` |
    /// | `Revoke { to }` | `ASSIGNED` with an owner other than `to` | `REVOKING`, `target = to` (`None`: the owner releases) |
    /// | `Retarget { to }` | `REVOKING`, owner other than `to` | `target = to`, the revocation keeps its start |
    /// | `CancelRevoke` | `REVOKING` | `ASSIGNED`, no target |
    ///
    /// No change applies to a `FAILED` row. Revocations and cancellations keep the epoch. Bumps the queue's assignment version once
    /// when anything changed and records an event per applied change. `Invalid` when a
    /// partition is out of range or appears twice; `NotFound` when the queue does not exist.
    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome>;
    /// The owner of a REVOKING partition hands it to the revocation's target: `owner =
    /// target` (no owner when the revocation has no target, or when the target is no longer
    /// live on the store's clock), `epoch + 1, ASSIGNED`, only where `owner = worker AND epoch = epoch AND
    /// state = REVOKING`; `Fenced` otherwise. Returns the new epoch.
    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch>;
    /// The owner gives a partition up (graceful leave): `owner = NULL, epoch + 1`, only where
    /// `owner = worker AND epoch = epoch`; `Fenced` otherwise. Returns the new epoch.
    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch>;

    /// The owner gives up a partition that keeps failing: `owner = NULL, epoch + 1, FAILED`,
    /// only where `owner = worker AND epoch = epoch`; `Fenced` otherwise. The coordinator
    /// leaves a failed partition unowned until an operator resets it
    /// ([`Store::reset_partition`]). Records a `partition_failed` event carrying `detail`.
    /// Returns the new epoch.
    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch>;
    /// An operator's reset of a failed partition: `FAILED` becomes `ASSIGNED` with no owner,
    /// so the coordinator grants it again. Returns whether the partition was failed (a reset
    /// of a partition that is not failed changes nothing); `NotFound` when the queue or the
    /// partition does not exist.
    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool>;

    // ---- events -------------------------------------------------------------------------

    /// Appends an event; returns its id.
    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64>;
    /// Up to `limit` events with an id greater than `after`, in id order; a `limit` above
    /// [`MAX_EVENTS_PER_READ`](crate::MAX_EVENTS_PER_READ) reads as that bound (page on with
    /// the last id). Event details are stored cut to
    /// [`MAX_EVENT_DETAIL_BYTES`](crate::MAX_EVENT_DETAIL_BYTES) ([`crate::bound_detail`]).
    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>>;
    /// Deletes the events older than `older_than` on the store's clock; returns how many.
    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64>;

    // ---- tasks (DESIGN §6; guarantees in docs/tasks.md) ----------------------------------

    /// Enqueues one task in `queue`; see [`Store::enqueue_tasks`].
    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued>;
    /// Enqueues a batch of tasks atomically (all or none), in multi-row statements; returns
    /// one [`Enqueued`] per task, in order. New tasks get increasing ids in batch order. A
    /// task whose dedup key an unfinished task of the queue holds is not created: its answer
    /// carries that task's id and `created: false` (so does a repeat of a key within the
    /// batch). A dedup key held by an uncommitted enqueue is waited for, never trusted: if
    /// that enqueue rolls back, this one creates the task.
    ///
    /// `NotFound` for an unknown queue; `Invalid` (nothing written) for a task that breaks
    /// a limit of [`crate::rules::tasks::validate_new_task`] or a batch over
    /// [`MAX_TASK_BATCH`](crate::MAX_TASK_BATCH).
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>>;
    /// Claims up to `limit` due tasks (`PENDING`, `run_at` at or before the store's now) of the
    /// fence's partition in claim order (priority, run_at, id): each becomes `RUNNING` with
    /// attempts + 1, `claimed_epoch`/`claimed_by` from the fence, `started_at` now and
    /// `deadline_at` now + its timeout. Fenced by `owner = worker AND epoch = epoch AND state =
    /// ASSIGNED` on the assignment row in the same transaction: `Fenced` otherwise (a
    /// REVOKING partition takes no new work). Returns the claimed tasks in claim order.
    /// `Invalid` for a limit over [`MAX_TASK_BATCH`](crate::MAX_TASK_BATCH).
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>>;
    /// Completes tasks the fence's owner claimed under its epoch: `DONE` (or `CANCELLED` when
    /// cancelled while running), moved to the history table. Ids not running under the
    /// fence are skipped. `Fenced` (nothing written) when `owner = worker AND epoch = epoch`
    /// no longer holds on the assignment row (REVOKING still may complete).
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome>;
    /// Records failed attempts, fenced as [`Store::complete_tasks`]: `PENDING` again at now +
    /// `retry_in` with the error as `last_error`, or `DEAD` (history) when the attempt was the
    /// last allowed; `CANCELLED` when cancelled while running. `Invalid` for a delay over
    /// [`MAX_SCHEDULE_AHEAD`](crate::MAX_SCHEDULE_AHEAD).
    async fn fail_tasks(&self, fence: &OwnerFence, failures: &[TaskFailure])
    -> StoreResult<TaskBatchOutcome>;
    /// Puts tasks back for later, fenced as [`Store::complete_tasks`]: `PENDING` at now +
    /// `delay`, and the attempt does not count (attempts − 1); `CANCELLED` when cancelled
    /// while running. `Invalid` for a delay over [`MAX_SCHEDULE_AHEAD`](crate::MAX_SCHEDULE_AHEAD).
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome>;
    /// Records the outcomes of many partitions' attempts in **one transaction**: the coalesced
    /// form of [`Store::complete_tasks`], [`Store::fail_tasks`] and
    /// [`Store::retry_tasks_later`], for a worker that writes what its partitions finished
    /// together (one commit instead of up to three per partition).
    ///
    /// Each partition's fence is checked in the transaction as those operations check it
    /// (`owner = worker AND epoch = epoch`, not `FAILED`; the assignment rows locked in share
    /// mode on MySQL). The answer has one entry per partition, in order: `Ok` with the tasks
    /// written and skipped, or `Err(Fenced)` for a partition whose fence no longer holds —
    /// nothing of that partition is written, and the others are. Within a partition, the
    /// same rules as the single-kind writes hold: only tasks of that queue and partition,
    /// claimed under the fence's epoch and still `RUNNING` (or `CANCELLING`: they end
    /// `CANCELLED`) are written; any other id is skipped and left alone, so writing the same
    /// outcomes again changes nothing (a rewrite after a lost answer is safe). A task listed
    /// twice counts once (see [`PartitionOutcomes`]).
    ///
    /// # Errors
    /// The whole call (no partition written): [`StoreError::Invalid`](crate::StoreError::Invalid)
    /// for input refused by [`crate::rules::tasks::validate_outcomes`] (more than
    /// [`MAX_TASK_BATCH`](crate::MAX_TASK_BATCH) partitions or task rows in all, a partition
    /// listed twice, a delay over [`MAX_SCHEDULE_AHEAD`](crate::MAX_SCHEDULE_AHEAD)); a
    /// transient or database failure. On MySQL a failure of the commit itself is not tried
    /// again and answers [`StoreError::Unavailable`](crate::StoreError::Unavailable): the
    /// outcomes may or may not have been written, and the caller writes them again.
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>>;
    /// Moves the deadline of running attempts to now + `by`, fenced as
    /// [`Store::complete_tasks`]. A task cancelled while running is answered `CANCELLING`:
    /// the owner should stop it. `Invalid` for `by` over
    /// [`MAX_TASK_TIMEOUT`](crate::MAX_TASK_TIMEOUT).
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome>;
    /// Cancels a task: a pending one becomes `CANCELLED` at once; a running one `CANCELLING`,
    /// so that its owner's next write ends it as `CANCELLED` (its completion is not recorded
    /// as `DONE`). A finished task is left alone. `NotFound` for an unknown id.
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome>;
    /// Orphan recovery by epoch, for an owner that runs none of the partition's tasks: when it
    /// is granted (or adopts) the partition, or starts running it again at the same epoch.
    /// Every task of the partition still claimed under the fence's epoch or an older one lost
    /// its attempt (with its owner, or with an earlier run of this one). It becomes `PENDING` again (run_at unchanged), or `DEAD`
    /// when that was its last attempt (with a `last_error` saying so), or `CANCELLED` when it
    /// was `CANCELLING`; the tasks behind it are unaffected. Never decided by elapsed time.
    /// Fenced by `owner = worker AND epoch = epoch` on the assignment row, in the same
    /// transaction; `Fenced` otherwise.
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery>;
    /// The earliest `run_at` of a `PENDING` task in each of `partitions` of `queue`, in one
    /// statement; partitions without pending tasks are absent. Due times may be in the past.
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<BTreeMap<PartitionId, DateTime<Utc>>>;
    /// How many tasks of `queue` are in each state, per partition, sorted by (partition,
    /// state); zero counts are absent. Counting finished tasks reads the history: meant for
    /// operators, not for hot paths.
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>>;
    /// Reads one task, unfinished or finished; `NotFound` for an unknown (or pruned) id.
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord>;
    /// Up to `limit` tasks of `queue` in `state` with an id above `after`, in id order: keyset
    /// paging, pass the last id of a page to get the next. `Invalid` for a limit over
    /// [`MAX_TASK_BATCH`](crate::MAX_TASK_BATCH).
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>>;
    /// An operator's retry of a dead task: it goes back to the hot table as `PENDING`, due
    /// now, with its id, attempts 0 and its last error kept. `NotFound` for an unknown id,
    /// `Conflict` when the task is not `DEAD` or its dedup key is held by another unfinished
    /// task.
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord>;
    /// Deletes up to `limit` finished tasks that finished more than `older_than` ago on the
    /// store's clock, oldest first; returns how many. Call again while it returns `limit`.
    /// Also forgets the schedule runs (`helix_schedule_runs`) of slots older than
    /// `older_than`: every schedule's cursor is past them, so they can never fire again.
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64>;

    // ---- recurring schedules (DESIGN §6, docs/scheduling.md) ----

    /// Creates a schedule of `queue`, its cursor at its first slot at or after the store's
    /// now. `NotFound` for an unknown queue, `Conflict` when the queue already has a schedule
    /// of that name, `Invalid` for what [`validate_schedule`](crate::rules::schedules::validate_schedule)
    /// refuses.
    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord>;
    /// Reads a schedule by name; `NotFound` when `queue` has none of that name.
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord>;
    /// Every schedule of `queue` (of every queue with `None`), sorted by (queue, name).
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>>;
    /// Pauses or resumes a schedule; answers it as it is now. A pause cancels the tasks of
    /// its slots after the store's now that were materialized ahead and are still `PENDING`
    /// (and forgets their runs); a paused schedule makes no task. A resume moves its cursor
    /// to its first slot at or after now: the slots of the pause are skipped, whatever the
    /// missed-slot policy. Pausing a paused schedule or resuming a running one changes
    /// nothing. `NotFound` when `queue` has no schedule of that name.
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord>;
    /// Deletes a schedule, cancelling the tasks of its future slots as a pause does; tasks
    /// of slots already due are left to run. `NotFound` when `queue` has no schedule of that
    /// name.
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()>;
    /// The store's now, and up to `limit` unpaused schedules whose cursor is at or before
    /// now + `horizon`, earliest cursor first: what the leader fires next. One statement on
    /// the SQL stores (index on `(paused, next_slot_at)`).
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)>;
    /// The leader's write of schedule slots, in one transaction fenced by its term:
    /// `Fenced` (and nothing written) when `fence` is not the current lease. Each fire
    /// applies only while its schedule exists, is unpaused and still has the fire's cursor
    /// (else [`FireOutcome::Stale`]). Then each slot inserts its (schedule, slot) row into
    /// `helix_schedule_runs`, whose primary key makes a second insert of a slot a quiet
    /// duplicate, and only a slot inserted now enqueues its task; the cursor moves to the
    /// fire's `next_slot_at`. One answer per fire, in order. `Invalid` (nothing written) for
    /// more than [`MAX_FIRE_BATCH`](crate::MAX_FIRE_BATCH) fires or slots, or a task an
    /// enqueue would refuse.
    async fn fire_schedules(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>>;
}

//! The records and inputs of the task queue (DESIGN §6): what an enqueue carries, what a task
//! looks like when read, and what the owner-fenced batch writes answer. The decisions live in
//! [`crate::rules::tasks`]; the guarantees are written down in `docs/tasks.md`.
//!
//! A task's life is described on [`TaskState`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{Epoch, PartitionId, QueueId, WorkerId};
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreResult};

/// The largest payload of a task, in bytes (1 MiB). Larger payloads belong in a blob store,
/// with their address in the task.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// The longest dedup key, in bytes of UTF-8.
pub const MAX_DEDUP_KEY_BYTES: usize = 255;
/// The longest `last_error` kept, in bytes; longer messages are cut at a character boundary
/// and end with `…`.
pub const MAX_LAST_ERROR_BYTES: usize = 4_096;
/// The longest `result` kept for a completed task, in bytes; longer results are cut at a
/// character boundary and end with `…`, as `last_error` is.
pub const MAX_RESULT_BYTES: usize = 4_096;
/// The most attempts a task may be given.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;
/// How many attempts a task gets when its enqueuer does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// How long one attempt may run when its enqueuer does not say.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest timeout of one attempt.
pub const MAX_TASK_TIMEOUT: Duration = Duration::from_secs(24 * 3_600);
/// How far ahead of the store's now a task may be scheduled (and the longest retry delay):
/// ten years. Anything later is taken for a mistake (a timestamp in the wrong unit).
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(3_650 * 86_400);
/// The most tasks one batch (an enqueue, a claim, an owner write) may carry; also the most
/// task rows one [`Store::record_task_outcomes`](crate::Store::record_task_outcomes) call
/// writes across all its partitions, so that one transaction stays short.
pub const MAX_TASK_BATCH: usize = 10_000;

/// A task's id: sequential per store, never reused (MySQL's `AUTO_INCREMENT`, persisted
/// across restarts since MySQL 8.0 and MariaDB 10.2.4; SQLite's `AUTOINCREMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a task is in its life.
///
/// A task's life, and where its row lives:
///
/// | state | table | meaning |
/// |---|---|---|
/// | `PENDING` | `helix_tasks` | waits for `run_at`, then for its partition's owner to claim it |
/// | `RUNNING` | `helix_tasks` | claimed by `claimed_by` under `claimed_epoch` |
/// | `CANCELLING` | `helix_tasks` | running, and cancelled meanwhile: the owner's next write for it ends it as `CANCELLED` |
/// | `DONE` | `helix_task_history` | completed by its owner |
/// | `DEAD` | `helix_task_history` | failed on its last allowed attempt (a dead letter) |
/// | `CANCELLED` | `helix_task_history` | cancelled before it finished |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Waiting for `run_at` and a claim.
    Pending,
    /// Claimed by an owner.
    Running,
    /// Running, and cancelled meanwhile; its owner's next write ends it as cancelled.
    Cancelling,
    /// Completed.
    Done,
    /// Out of attempts: a dead letter, with its last error.
    Dead,
    /// Cancelled.
    Cancelled,
}

impl TaskState {
    /// Every state, in the order of the table above.
    pub const ALL: [TaskState; 6] =
        [Self::Pending, Self::Running, Self::Cancelling, Self::Done, Self::Dead, Self::Cancelled];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Cancelling => "CANCELLING",
            Self::Done => "DONE",
            Self::Dead => "DEAD",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// [`StoreError::Database`] for a name this binary does not know.
    pub fn parse(s: &str) -> StoreResult<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| StoreError::Database(format!("unknown task state {s:?}")))
    }

    /// Whether the task has finished (its row is in the history table).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Dead | Self::Cancelled)
    }

    /// Whether an owner holds the task (`RUNNING` or `CANCELLING`).
    pub fn is_claimed(self) -> bool {
        matches!(self, Self::Running | Self::Cancelling)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a task becomes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunAt {
    /// This long after the store's now when the enqueue runs (zero: at once). At most
    /// [`MAX_SCHEDULE_AHEAD`].
    After(Duration),
    /// At this instant: not before 1970-01-01, not more than [`MAX_SCHEDULE_AHEAD`] after the
    /// store's now. An instant in the past means "due at once" (and sorts before later ones).
    /// SQLite keeps milliseconds, MySQL microseconds.
    At(DateTime<Utc>),
}

impl Default for RunAt {
    fn default() -> Self {
        Self::After(Duration::ZERO)
    }
}

/// A task to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// The partition that runs it; below the queue's partition count. Use
    /// [`helix_core::partition_for_key`] to route by key.
    pub partition: PartitionId,
    /// Smaller runs first within a partition; claim order is (priority, run_at, id). Default 0.
    pub priority: i32,
    /// When it becomes due.
    pub run_at: RunAt,
    /// How many attempts it gets, 1 to [`MAX_ATTEMPTS_LIMIT`].
    pub max_attempts: u32,
    /// How long one attempt may run, 1 ms to [`MAX_TASK_TIMEOUT`]; a claim sets the attempt's
    /// deadline to the claim's instant plus this.
    pub timeout: Duration,
    /// At most one unfinished task per (queue, dedup key); 1 to [`MAX_DEDUP_KEY_BYTES`]
    /// bytes. The key is free again once its task finishes.
    pub dedup_key: Option<String>,
    /// Opaque bytes for the handler, at most [`MAX_PAYLOAD_BYTES`].
    pub payload: Vec<u8>,
}

impl NewTask {
    /// A task for `partition` with `payload`, due at once, priority 0,
    /// [`DEFAULT_MAX_ATTEMPTS`] attempts of at most [`DEFAULT_TASK_TIMEOUT`], no dedup key.
    pub fn new(partition: PartitionId, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            partition,
            priority: 0,
            run_at: RunAt::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TASK_TIMEOUT,
            dedup_key: None,
            payload: payload.into(),
        }
    }
}

/// The answer to one enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The task's id: the new task, or the unfinished task that already held the dedup key.
    pub id: TaskId,
    /// Whether this enqueue created the task (`false`: the dedup key was taken, by `id`).
    pub created: bool,
}

/// What an owner presents with each task write: its claim to one partition. Checked in the
/// same transaction as the write against the assignment row (`owner = worker AND epoch =
/// epoch`, and `state = ASSIGNED` for claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnerFence {
    /// The queue.
    pub queue: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// The owning worker.
    pub worker: WorkerId,
    /// The epoch it was granted the partition at: its fencing token.
    pub epoch: Epoch,
}

impl fmt::Display for OwnerFence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} at epoch {} of queue {} partition {}",
            self.worker, self.epoch, self.queue, self.partition
        )
    }
}

/// One task, as read from the hot table or the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its id.
    pub id: TaskId,
    /// Its queue.
    pub queue_id: QueueId,
    /// Its partition.
    pub partition: PartitionId,
    /// Its state.
    pub state: TaskState,
    /// Its priority (smaller first).
    pub priority: i32,
    /// When it is (or was last) due, on the store's clock.
    pub run_at: DateTime<Utc>,
    /// Attempts begun so far (a claim adds one; a retry-later gives it back).
    pub attempts: u32,
    /// The most attempts it gets.
    pub max_attempts: u32,
    /// How long one attempt may run.
    pub timeout: Duration,
    /// Its dedup key.
    pub dedup_key: Option<String>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The epoch of its last claim.
    pub claimed_epoch: Option<Epoch>,
    /// The worker of its last claim.
    pub claimed_by: Option<WorkerId>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When its last attempt began.
    pub started_at: Option<DateTime<Utc>>,
    /// When its running attempt times out (claim + timeout, moved by an extension).
    pub deadline_at: Option<DateTime<Utc>>,
    /// When it finished (history only).
    pub finished_at: Option<DateTime<Utc>>,
    /// The last error recorded, at most [`MAX_LAST_ERROR_BYTES`].
    pub last_error: Option<String>,
    /// What the attempt that completed it reported (a short summary, such as a webhook's
    /// response status and the start of its body), at most [`MAX_RESULT_BYTES`]. Written only
    /// with a completion through [`PartitionOutcomes::results`]; `None` otherwise.
    pub result: Option<String>,
}

/// One failed attempt to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The task.
    pub id: TaskId,
    /// Why it failed; cut to [`MAX_LAST_ERROR_BYTES`].
    pub error: String,
    /// When to try again, from the store's now (the caller's backoff with jitter); at most
    /// [`MAX_SCHEDULE_AHEAD`]. Unused when the attempt was the last. `None`: a permanent
    /// failure, not worth another attempt: the task is `DEAD` at once, whatever attempts it
    /// has left.
    pub retry_in: Option<Duration>,
}

impl TaskFailure {
    /// A failed attempt, to try again `retry_in` from the store's now if attempts are left.
    pub fn retry(id: TaskId, error: impl Into<String>, retry_in: Duration) -> Self {
        Self { id, error: error.into(), retry_in: Some(retry_in) }
    }

    /// A permanent failure: the task is `DEAD` at once (a dead letter) with `error`.
    pub fn dead(id: TaskId, error: impl Into<String>) -> Self {
        Self { id, error: error.into(), retry_in: None }
    }
}

/// One task to put back for later, without counting the attempt as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRetry {
    /// The task.
    pub id: TaskId,
    /// When to try again, from the store's now; at most [`MAX_SCHEDULE_AHEAD`].
    pub delay: Duration,
}

/// The outcomes of one partition's finished attempts, written by
/// [`Store::record_task_outcomes`](crate::Store::record_task_outcomes) together with those of
/// other partitions of the same worker.
///
/// A task listed more than once counts once, by its first listing in the order completed,
/// failed, retried later (the order the single-kind writes would run in); the others are
/// answered as skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOutcomes {
    /// The owner's claim to the partition, checked as
    /// [`Store::complete_tasks`](crate::Store::complete_tasks) checks it.
    pub fence: OwnerFence,
    /// Tasks to complete, as [`Store::complete_tasks`](crate::Store::complete_tasks).
    pub completed: Vec<TaskId>,
    /// Failed attempts, as [`Store::fail_tasks`](crate::Store::fail_tasks).
    pub failed: Vec<TaskFailure>,
    /// Tasks to put back for later, as
    /// [`Store::retry_tasks_later`](crate::Store::retry_tasks_later).
    pub retried_later: Vec<TaskRetry>,
    /// Results of tasks listed in `completed`, kept as their `result` (cut to
    /// [`MAX_RESULT_BYTES`]) when this write completes them. A result is ignored for a task
    /// the write does not complete (skipped, or not listed in `completed`); for a task
    /// given two results, the first counts. At most as many as `completed` (else the write is
    /// refused with `Invalid`); they do not count towards [`MAX_TASK_BATCH`].
    pub results: Vec<TaskResult>,
}

/// The result of one completed task, see [`PartitionOutcomes::results`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// What its completing attempt reported; cut to [`MAX_RESULT_BYTES`].
    pub result: String,
}

impl TaskResult {
    /// The result `result` of task `id`.
    pub fn new(id: TaskId, result: impl Into<String>) -> Self {
        Self { id, result: result.into() }
    }
}

impl PartitionOutcomes {
    /// No outcome yet for the partition of `fence`.
    pub fn new(fence: OwnerFence) -> Self {
        Self {
            fence,
            completed: Vec::new(),
            failed: Vec::new(),
            retried_later: Vec::new(),
            results: Vec::new(),
        }
    }

    /// How many task rows the outcomes name (repeats included): what counts towards
    /// [`MAX_TASK_BATCH`].
    pub fn len(&self) -> usize {
        self.completed.len() + self.failed.len() + self.retried_later.len()
    }

    /// Whether there is no outcome.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every task id named, in the order completed, failed, retried later.
    pub fn ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.completed
            .iter()
            .copied()
            .chain(self.failed.iter().map(|f| f.id))
            .chain(self.retried_later.iter().map(|r| r.id))
    }
}

/// The answer to an owner's batch write (complete, fail, retry-later, extend).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBatchOutcome {
    /// The tasks written, with the state each is in now: a task cancelled while running ends
    /// `CANCELLED` (or stays `CANCELLING` on an extension, telling the owner to stop it).
    pub applied: Vec<(TaskId, TaskState)>,
    /// The ids left untouched because they are not running under the caller's fence in its
    /// partition (unknown, finished, or claimed under another epoch).
    pub skipped: Vec<TaskId>,
}

/// The answer to a cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelOutcome {
    /// The task was pending: it is `CANCELLED` and will not run.
    Cancelled,
    /// The task was running: it is `CANCELLING`. Its owner's completion, failure or
    /// retry ends it as `CANCELLED`; so does the recovery of its partition after a handoff.
    Requested,
    /// The task had already finished in this state; nothing changed.
    AlreadyFinished(TaskState),
}

/// What [`Store::recover_partition_tasks`](crate::Store::recover_partition_tasks) did with
/// the tasks left running under older epochs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecovery {
    /// Put back to `PENDING` (their lost attempt counts).
    pub requeued: Vec<TaskId>,
    /// Lost their last allowed attempt: `DEAD`, with a `last_error` that says so.
    pub dead: Vec<TaskId>,
    /// Were `CANCELLING`: now `CANCELLED`.
    pub cancelled: Vec<TaskId>,
}

/// How many tasks of one partition are in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskCount {
    /// The partition.
    pub partition: PartitionId,
    /// The state.
    pub state: TaskState,
    /// How many.
    pub count: u64,
}

//! What user code implements to run tasks: a [`TaskHandler`] per queue, called with a
//! [`TaskContext`] for each claimed task, answering a [`TaskOutcome`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_core::Epoch;
use helix_store::{TaskId, TaskRecord};

use crate::worker::{OwnershipGuard, PartitionContext};

/// One attempt of one task, as its handler sees it.
///
/// The attempt runs under the partition's ownership at [`epoch`](Self::epoch): its future is
/// polled only while that ownership holds (see [`OwnershipGuard`]) and is dropped when the
/// ownership ends or the task's timeout passes. Whatever the handler writes elsewhere should
/// carry the task id (for idempotency: a task can run more than once, see `docs/tasks.md`)
/// or the epoch (as a fencing token).
#[derive(Debug, Clone)]
pub struct TaskContext {
    task: Arc<TaskRecord>,
    partition: PartitionContext,
}

impl TaskContext {
    pub(crate) fn new(task: Arc<TaskRecord>, partition: PartitionContext) -> Self {
        Self { task, partition }
    }

    /// The task's id: stable across its attempts, the natural idempotency key.
    pub fn id(&self) -> TaskId {
        self.task.id
    }

    /// The task's payload, as enqueued.
    pub fn payload(&self) -> &[u8] {
        &self.task.payload
    }

    /// The payload decoded as JSON.
    ///
    /// # Errors
    /// The decoding error when the payload is not a JSON `T`; a handler usually answers it
    /// with [`TaskOutcome::fail`], since another attempt cannot fix the payload.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.task.payload)
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.task.attempts
    }

    /// How many attempts the task gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.task.max_attempts
    }

    /// Whether this is the task's last allowed attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.task.attempts >= self.task.max_attempts
    }

    /// How long this attempt may run before it is cancelled and counted as failed.
    pub fn timeout(&self) -> Duration {
        self.task.timeout
    }

    /// The task as claimed: priority, `run_at`, dedup key, last error of an earlier attempt...
    pub fn record(&self) -> &TaskRecord {
        &self.task
    }

    /// The epoch of the partition's ownership this attempt runs under: its fencing token.
    pub fn epoch(&self) -> Epoch {
        self.partition.epoch
    }

    /// The ownership this attempt runs under.
    pub fn guard(&self) -> &OwnershipGuard {
        self.partition.guard()
    }

    /// The partition (domain, queue, partition, epoch, worker) the task runs in.
    pub fn partition(&self) -> &PartitionContext {
        &self.partition
    }
}

/// How an attempt ended, as the handler answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The task is done: recorded `DONE` (exactly once in the database).
    Done,
    /// The task is done, as [`Done`](Self::Done), and the attempt reports `result`: kept as
    /// the task's `result` ([`TaskRecord::result`]), cut to
    /// [`MAX_RESULT_BYTES`](helix_store::MAX_RESULT_BYTES) (4 KiB) at a character boundary.
    /// Meant for a short summary (a status, the start of a response), not for payloads.
    DoneWith(String),
    /// The attempt failed: the task runs again after `delay` (`None`: the queue's
    /// exponential backoff with jitter, see [`TaskPolicy`](super::TaskPolicy)), or is dead
    /// (a dead letter with `error`) when this was its last allowed attempt. A panic and a
    /// timeout count as this.
    Retry {
        /// Why the attempt failed; kept as the task's `last_error` (cut to 4 KiB).
        error: String,
        /// When to try again, instead of the backoff (for example a `Retry-After`).
        delay: Option<Duration>,
    },
    /// The task can never succeed (a malformed payload, a refusal that another attempt
    /// cannot change): it is dead at once, a dead letter with `error`, whatever attempts it
    /// had left. An operator can bring it back ([`Client::retry_task`](crate::client::Client::retry_task)).
    Fail(String),
    /// Not now: the task goes back to pending for `delay`, and this attempt does not count
    /// towards its maximum (waiting is not failing).
    Snooze(Duration),
}

impl TaskOutcome {
    /// Done, with `result` kept on the task ([`TaskOutcome::DoneWith`]).
    pub fn done_with(result: impl fmt::Display) -> Self {
        Self::DoneWith(result.to_string())
    }

    /// A failed attempt, retried after the queue's backoff.
    pub fn retry(error: impl fmt::Display) -> Self {
        Self::Retry { error: error.to_string(), delay: None }
    }

    /// A failed attempt, retried after `delay`.
    pub fn retry_after(error: impl fmt::Display, delay: Duration) -> Self {
        Self::Retry { error: error.to_string(), delay: Some(delay) }
    }

    /// A permanent failure: the task is dead at once.
    pub fn fail(error: impl fmt::Display) -> Self {
        Self::Fail(error.to_string())
    }
}

/// `Ok` is [`TaskOutcome::Done`]; `Err(e)` a failed attempt retried after the backoff.
impl<E: fmt::Display> From<Result<(), E>> for TaskOutcome {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(error) => Self::retry(error),
        }
    }
}

/// Runs the tasks of one queue, registered on the worker with
/// [`WorkerBuilder::tasks`](crate::node::WorkerBuilder::tasks).
///
/// One handler serves every partition of its queue on this worker; `run` is called on the
/// worker's handler arbiter (its futures need not be `Send`), up to the queue's in-flight
/// limit at once per partition. An attempt's future is dropped, never polled again, when the
/// task's timeout passes (a failed attempt), when the partition's ownership ends (the next
/// owner runs the task again) or when the worker stops; a panic is caught and counts as a
/// failed attempt.
///
/// Execution is at least once: a task whose owner died mid-attempt runs again under the next
/// owner; its completion is recorded exactly once. A handler with effects outside the
/// process makes them idempotent by [`TaskContext::id`] or fences them by
/// [`TaskContext::epoch`] (`docs/tasks.md`).
///
/// ```
/// use async_trait::async_trait;
/// use helix_actors::tasks::{TaskContext, TaskHandler, TaskOutcome};
///
/// #[derive(serde::Deserialize)]
/// struct SendEmail { to: String }
///
/// struct Mailer;
///
/// #[async_trait(?Send)]
/// impl TaskHandler for Mailer {
///     async fn run(&self, task: TaskContext) -> TaskOutcome {
///         let Ok(email) = task.json::<SendEmail>() else {
///             return TaskOutcome::fail("the payload is not a SendEmail");
///         };
///         println!("task {} attempt {}: mail to {}", task.id(), task.attempt(), email.to);
///         TaskOutcome::Done
///     }
/// }
/// ```
#[async_trait(?Send)]
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one attempt of `task`.
    async fn run(&self, task: TaskContext) -> TaskOutcome;
}

/// A [`TaskHandler`] made of a closure returning a future, from [`task_handler_fn`].
pub struct TaskHandlerFn<F>(F);

impl<F> fmt::Debug for TaskHandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TaskHandlerFn")
    }
}

/// A [`TaskHandler`] from a closure: `task_handler_fn(|task| async move { TaskOutcome::Done })`.
pub fn task_handler_fn<F, Fut>(run: F) -> TaskHandlerFn<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskOutcome> + 'static,
{
    TaskHandlerFn(run)
}

#[async_trait(?Send)]
impl<F, Fut> TaskHandler for TaskHandlerFn<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = TaskOutcome> + 'static,
{
    async fn run(&self, task: TaskContext) -> TaskOutcome {
        (self.0)(task).await
    }
}

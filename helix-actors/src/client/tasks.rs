//! The client's task operations: enqueue (one or a batch), read, list, count, cancel, and an
//! operator's retry of a dead task (`docs/tasks.md`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{DomainName, PartitionCount, PartitionId, QueueId, QueueName, partition_for_key};
use helix_store::{
    CancelOutcome, DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_TIMEOUT, Enqueued, NewTask, RunAt, StoreError,
    TaskCount, TaskId, TaskRecord, TaskState,
};
use rand::Rng;
use serde::Serialize;

use super::{Client, ClientError};

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Any partition: the dedup key's, else one drawn at random.
    Any,
    /// The partition of this key (`helix_core::partition_for_key`).
    Key(String),
    /// This partition.
    Partition(u32),
}

/// A task to enqueue with [`Client::enqueue`]: a payload and how to run it.
///
/// Defaults: due at once, priority 0, [`DEFAULT_MAX_ATTEMPTS`] attempts of at most
/// [`DEFAULT_TASK_TIMEOUT`] each, no dedup key, and a partition drawn at random (or the dedup
/// key's partition when there is one). Tasks with the same [`key`](Self::key) go to the same
/// partition, so they run in order, one owner at a time; the key → partition hash is
/// xxHash64 with seed 0 modulo the partition count, stable across processes and versions.
///
/// ```
/// use std::time::Duration;
/// use helix_actors::client::TaskSpec;
///
/// let task = TaskSpec::json(&serde_json::json!({ "order": 42 }))?
///     .key("customer-7")
///     .priority(-1)
///     .delay(Duration::from_secs(30))
///     .max_attempts(5)
///     .timeout(Duration::from_secs(10))
///     .dedup_key("order-42-confirmation");
/// # let _ = task;
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    payload: Vec<u8>,
    route: Route,
    priority: i32,
    run_at: RunAt,
    max_attempts: u32,
    timeout: Duration,
    dedup_key: Option<String>,
}

impl TaskSpec {
    /// A task carrying `payload` (at most 1 MiB), with the defaults above.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: payload.into(),
            route: Route::Any,
            priority: 0,
            run_at: RunAt::default(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TASK_TIMEOUT,
            dedup_key: None,
        }
    }

    /// A task whose payload is `value` as JSON.
    ///
    /// # Errors
    /// When `value` does not serialize.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self::new(serde_json::to_vec(value)?))
    }

    /// A webhook delivery: a POST of `body` (as JSON) to `url`, for a queue served by a
    /// [`WebhookHandler`](crate::tasks::webhook::WebhookHandler). The URL is checked now
    /// (`http` or `https`, a host, no `user:pass@`, at most
    /// [`MAX_URL_BYTES`](crate::tasks::webhook::MAX_URL_BYTES)); whether its destination is
    /// allowed is for the handler to decide when it delivers. The defaults of
    /// [`TaskSpec::new`] apply (10 attempts of at most 60 s each); `docs/scheduling.md`, "Webhooks"
    /// says what a receiver sees.
    ///
    /// ```
    /// use helix_actors::client::TaskSpec;
    ///
    /// let task = TaskSpec::webhook("https://hooks.example.com/orders", &serde_json::json!({ "order": 42 }))?
    ///     .key("customer-7")
    ///     .max_attempts(5);
    /// assert!(TaskSpec::webhook("ftp://example.com/", &()).is_err());
    /// # let _ = task;
    /// # Ok::<(), helix_actors::client::ClientError>(())
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Webhook`] naming the rule the URL breaks, or a body that does not
    /// serialize.
    pub fn webhook<T: Serialize + ?Sized>(url: &str, body: &T) -> Result<Self, ClientError> {
        Self::webhook_request(&crate::tasks::webhook::WebhookRequest::new(url, body)?)
    }

    /// A webhook delivery of `request` (which may carry extra headers), as
    /// [`webhook`](Self::webhook).
    ///
    /// # Errors
    /// [`ClientError::Webhook`] when the request breaks a rule of
    /// [`WebhookRequest`](crate::tasks::webhook::WebhookRequest).
    pub fn webhook_request(request: &crate::tasks::webhook::WebhookRequest) -> Result<Self, ClientError> {
        request.validate()?;
        Ok(Self::new(request.to_payload()?))
    }

    /// Routes the task by `key`: every task with this key goes to the same partition.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.route = Route::Key(key.into());
        self
    }

    /// Puts the task in `partition` (below the queue's partition count).
    pub fn partition(mut self, partition: u32) -> Self {
        self.route = Route::Partition(partition);
        self
    }

    /// Runs it before tasks of a larger priority in its partition (claim order is priority,
    /// `run_at`, id; default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Makes it due at `at` (on the database's clock; in the past: at once; at most ten
    /// years ahead).
    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = RunAt::At(at);
        self
    }

    /// Makes it due `delay` after the enqueue, on the database's clock.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = RunAt::After(delay);
        self
    }

    /// Gives it `attempts` attempts in all (1 to 1,000).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Lets one attempt run for at most `timeout` (1 ms to 24 h).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// At most one unfinished task of the queue holds `key` (1 to 255 bytes): while one does,
    /// enqueuing another answers its id with `created: false`.
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// The store's task for a queue of `partitions` partitions.
    fn resolve(self, partitions: PartitionCount) -> NewTask {
        let partition = match (&self.route, &self.dedup_key) {
            (Route::Partition(p), _) => PartitionId(*p),
            (Route::Key(key), _) | (Route::Any, Some(key)) => partition_for_key(key.as_bytes(), partitions),
            (Route::Any, None) => PartitionId(rand::rng().random_range(0..partitions.get())),
        };
        NewTask {
            partition,
            priority: self.priority,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            timeout: self.timeout,
            dedup_key: self.dedup_key,
            payload: self.payload,
        }
    }
}

impl Client {
    /// The id and partition count of `domain/name`, from the cache or the store.
    pub(super) async fn queue_ref(
        &self,
        domain: &str,
        name: &str,
    ) -> Result<(QueueId, PartitionCount), ClientError> {
        let key = (DomainName::new(domain)?, QueueName::new(name)?);
        if let Some(found) = self.queues.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(*found);
        }
        let queue = self.store.get_queue(&key.0, &key.1).await?;
        let found = (queue.id, queue.partition_count);
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).insert(key, found);
        Ok(found)
    }

    fn forget_queue(&self, domain: &str, name: &str) {
        if let (Ok(d), Ok(n)) = (DomainName::new(domain), QueueName::new(name)) {
            self.queues.lock().unwrap_or_else(|e| e.into_inner()).remove(&(d, n));
        }
    }

    /// Enqueues `task` in `domain/queue`; returns its id, or the id of the unfinished task
    /// that holds its dedup key (`created: false`). A worker of this process that runs the
    /// task's partition is woken at once (others find it at their next poll).
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name; [`StoreError::NotFound`] for an unknown domain
    /// or queue; [`StoreError::Invalid`] (nothing written) for a task over a limit of
    /// `docs/tasks.md` (payload over 1 MiB, `run_at` before 1970 or over ten years ahead,
    /// max attempts 0 or over 1,000, a partition out of range, a dedup key over 255 bytes...).
    pub async fn enqueue(&self, domain: &str, queue: &str, task: TaskSpec) -> Result<Enqueued, ClientError> {
        let mut answers = self.enqueue_batch(domain, queue, vec![task]).await?;
        answers
            .pop()
            .ok_or_else(|| StoreError::Database("an enqueue of one task answered nothing".into()).into())
    }

    /// Enqueues `tasks` in `domain/queue` atomically (all or none) in multi-row statements;
    /// one answer per task, in order. At most 10,000 tasks.
    ///
    /// # Errors
    /// As [`enqueue`](Self::enqueue), naming the first bad task; nothing is written.
    pub async fn enqueue_batch(
        &self,
        domain: &str,
        queue: &str,
        tasks: Vec<TaskSpec>,
    ) -> Result<Vec<Enqueued>, ClientError> {
        let (id, partitions) = self.queue_ref(domain, queue).await?;
        let resolved: Vec<NewTask> = tasks.iter().cloned().map(|t| t.resolve(partitions)).collect();
        let (id, tasks, answers) = match self.store.enqueue_tasks(id, &resolved).await {
            // The queue was deleted (and maybe created again, with another partition count)
            // since it was cached: route the tasks again by what it is now.
            Err(StoreError::NotFound(_)) => {
                self.forget_queue(domain, queue);
                let (id, partitions) = self.queue_ref(domain, queue).await?;
                let resolved: Vec<NewTask> = tasks.into_iter().map(|t| t.resolve(partitions)).collect();
                let answers = self.store.enqueue_tasks(id, &resolved).await?;
                (id, resolved, answers)
            }
            other => (id, resolved, other?),
        };
        // This process's runners of those partitions need not wait for their next poll.
        let created = tasks.iter().zip(&answers).filter(|(_, answer)| answer.created);
        crate::tasks::wake_local(id, created.map(|(task, _)| (task.partition, task.run_at)));
        Ok(answers)
    }

    /// The task `id`, unfinished or finished: state, attempts, last error, timestamps.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown (or pruned) id.
    pub async fn task(&self, id: TaskId) -> Result<TaskRecord, ClientError> {
        Ok(self.store.get_task(id).await?)
    }

    /// Cancels the task `id`: a pending task will not run; a running one ends `CANCELLED`
    /// when its attempt ends (its outcome is not recorded as done); a finished one is left
    /// alone.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id.
    pub async fn cancel_task(&self, id: TaskId) -> Result<CancelOutcome, ClientError> {
        Ok(self.store.cancel_task(id).await?)
    }

    /// An operator's retry of the dead task `id`: pending again, due now, with its attempts
    /// reset and its last error kept. A worker of this process that runs its partition is
    /// woken at once.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id; [`StoreError::Conflict`] when it is not
    /// dead, or another unfinished task holds its dedup key.
    pub async fn retry_task(&self, id: TaskId) -> Result<TaskRecord, ClientError> {
        let task = self.store.retry_dead_task(id).await?;
        // Due at once: this process's runner of its partition need not wait for its poll.
        crate::tasks::wake_local(
            task.queue_id,
            std::iter::once((task.partition, RunAt::After(Duration::ZERO))),
        );
        Ok(task)
    }

    /// Up to `limit` (at most 10,000) tasks of `domain/queue` in `state` with an id above
    /// `after`, in id order: pass the last id of a page to get the next.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name; [`StoreError::NotFound`] for an unknown queue;
    /// [`StoreError::Invalid`] for a limit over 10,000.
    pub async fn list_tasks(
        &self,
        domain: &str,
        queue: &str,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.list_tasks(id, state, after, limit).await?)
    }

    /// How many tasks of `domain/queue` are in each state, per partition (zero counts absent).
    /// Reads the history of finished tasks too: for operators, not for hot paths.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name; [`StoreError::NotFound`] for an unknown queue.
    pub async fn task_counts(&self, domain: &str, queue: &str) -> Result<Vec<TaskCount>, ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.task_counts(id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_routes_by_the_stable_hash_and_a_partition_is_taken_as_given() {
        let count = PartitionCount::new(16).expect("count");
        let by_key = TaskSpec::new("x").key("customer-7").resolve(count);
        assert_eq!(by_key.partition, partition_for_key(b"customer-7", count));
        let by_dedup = TaskSpec::new("x").dedup_key("customer-7").resolve(count);
        assert_eq!(by_dedup.partition, by_key.partition, "the dedup key routes a task with no key");
        assert_eq!(TaskSpec::new("x").partition(3).resolve(count).partition, PartitionId(3));
        for _ in 0..100 {
            assert!(TaskSpec::new("x").resolve(count).partition.0 < 16);
        }
    }
}

//! Durable tasks run on partitions (DESIGN §6; guarantees in `docs/tasks.md`).
//!
//! A queue's tasks are enqueued with the [`Client`](crate::client::Client) (or inside the
//! application's own transaction, see `helix_store::mysql::enqueue_in_transaction`), routed to
//! a partition by key, and run by whichever worker owns that partition, through the
//! [`TaskHandler`] registered for the queue on that worker ([`TaskQueues`],
//! [`WorkerBuilder::tasks`](crate::node::WorkerBuilder::tasks)).
//!
//! Per owned partition, the worker:
//! 1. recovers the tasks an earlier owner left running (orphan recovery by epoch: they run
//!    again, or go dead when that was their last attempt);
//! 2. claims due tasks in claim order (priority, `run_at`, id), up to the queue's in-flight
//!    limit, each claim fenced by `owner = me AND epoch = E AND state = ASSIGNED` in the
//!    claim's transaction;
//! 3. runs each under its timeout, with panics caught, polled only while the ownership holds;
//! 4. records the outcomes in batches (done, failed with backoff and jitter or dead, snoozed),
//!    each partition's fenced by `owner = me AND epoch = E`: an owner that lost the partition
//!    records nothing, and the next owner runs the task again. The worker writes the outcomes
//!    of many partitions together: one transaction ([`Store::record_task_outcomes`]) for all
//!    that finished while its previous write was under way;
//! 5. on a revocation, takes no new tasks and finishes those in flight before the handoff.
//!
//! Idle partitions do not poll: one poll per worker and poll interval reads the next due time
//! of each of its partitions (one statement per task queue), and a partition sets a timer for
//! it.
//!
//! ```
//! use std::time::Duration;
//! use helix_actors::client::{Client, TaskSpec};
//! use helix_actors::node::{CoordinatorNode, Worker};
//! use helix_actors::tasks::{TaskOutcome, TaskPolicy, task_handler_fn};
//! use helix_core::ClusterConfig;
//!
//! #[actix::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::connect("memory://").await?;
//!     let queue = client.ensure_queue("shop", "emails", 8).await?;
//!     let config = ClusterConfig::default();
//!     let coordinator = CoordinatorNode::new(client.store(), config.clone()).start()?;
//!     let worker = Worker::builder(client.store(), config)
//!         .tasks(
//!             queue.id,
//!             task_handler_fn(|task| async move {
//!                 println!("sending {}", String::from_utf8_lossy(task.payload()));
//!                 TaskOutcome::Done
//!             }),
//!             TaskPolicy::default(),
//!         )
//!         .start()
//!         .await?;
//!
//!     let sent = client.enqueue("shop", "emails", TaskSpec::new("hello").key("customer-42")).await?;
//!     for _ in 0..100 {
//!         if client.task(sent.id).await?.state.is_finished() {
//!             break;
//!         }
//!         tokio::time::sleep(Duration::from_millis(100)).await;
//!     }
//!     assert_eq!(client.task(sent.id).await?.state, helix_actors::store::TaskState::Done);
//!     worker.leave().await?;
//!     coordinator.stop().await;
//!     Ok(())
//! }
//! ```

mod handler;
mod outbox;
mod policy;
mod runner;
pub mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_core::QueueId;
use helix_store::Store;

pub use handler::{TaskContext, TaskHandler, TaskHandlerFn, TaskOutcome, task_handler_fn};
pub use policy::{MAX_IN_FLIGHT, TaskPolicy};
pub(crate) use runner::wake_local;

use crate::worker::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};

/// The default interval of a worker's due-time poll: 1 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How many task operations of one worker use the store at once by default: 2 of the default
/// pool of 10 connections (and of the store actor's 10 operations at once), the rest kept for
/// the session's heartbeats and polls.
pub const DEFAULT_STORE_CONCURRENCY: usize = 2;

/// The task queues one worker runs: a [`TaskHandler`] and a [`TaskPolicy`] per queue, and
/// the interval of the worker's due-time poll.
///
/// [`WorkerBuilder::tasks`](crate::node::WorkerBuilder::tasks) is the usual way in; the
/// testing kit takes a `TaskQueues` whole
/// ([`SimCluster::add_task_worker`](crate::testing::SimCluster::add_task_worker)).
#[derive(Clone)]
pub struct TaskQueues {
    queues: BTreeMap<QueueId, (Arc<dyn TaskHandler>, TaskPolicy)>,
    poll_interval: Duration,
    store_concurrency: usize,
}

impl Default for TaskQueues {
    fn default() -> Self {
        Self {
            queues: BTreeMap::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            store_concurrency: DEFAULT_STORE_CONCURRENCY,
        }
    }
}

impl fmt::Debug for TaskQueues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueues")
            .field("queues", &self.queues.iter().map(|(q, (_, p))| (q, p)).collect::<Vec<_>>())
            .field("poll_interval", &self.poll_interval)
            .field("store_concurrency", &self.store_concurrency)
            .finish()
    }
}

impl TaskQueues {
    /// No queue yet; a poll every [`DEFAULT_POLL_INTERVAL`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the tasks of `queue` with `handler` under `policy` (replacing an earlier
    /// registration of the queue).
    pub fn queue(mut self, queue: QueueId, handler: impl TaskHandler, policy: TaskPolicy) -> Self {
        self.queues.insert(queue, (Arc::new(handler), policy));
        self
    }

    /// Polls for due tasks every `every` (at least 1 ms) instead of every
    /// [`DEFAULT_POLL_INTERVAL`]: a task enqueued by another process, or delayed, is found
    /// within one interval (one enqueued through a [`Client`](crate::client::Client) of this
    /// process wakes its partition at once). Each poll is one statement per task queue of the
    /// worker.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Lets at most `operations` task operations (claims, writes of outcomes, recoveries) of
    /// all this worker's partitions use the store at once, instead of
    /// [`DEFAULT_STORE_CONCURRENCY`] (at least 1, at most 1,024). Keep it below the worker's
    /// pool size (`ConnectOptions::pool_size`, default 10) and the store actor's limit
    /// ([`DEFAULT_MAX_IN_FLIGHT`](crate::store_actor::DEFAULT_MAX_IN_FLIGHT), 10), so that a busy task queue never
    /// keeps the worker's heartbeats waiting for a connection: a worker whose heartbeats
    /// wait past its session timeout loses its partitions.
    pub fn store_concurrency(mut self, operations: usize) -> Self {
        self.store_concurrency = operations.clamp(1, 1_024);
        self
    }

    /// Whether `queue` has a task handler here.
    pub fn contains(&self, queue: QueueId) -> bool {
        self.queues.contains_key(&queue)
    }

    /// Whether no queue was registered.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// A handler factory that runs these queues' tasks over `store` (the worker's store) and
    /// serves every other queue with `other`, and the worker's due-time poll. Run the poll on
    /// the arbiter the partitions run on (the handler arbiter); it ends once the factory is
    /// dropped. A partition of a queue with no task handler and no `other` fails its
    /// `assigned`.
    pub fn factory(
        &self,
        store: Arc<dyn Store>,
        other: Option<HandlerFactory>,
    ) -> (HandlerFactory, impl Future<Output = ()> + Send + 'static) {
        let registry = runner::Registry::new(Arc::clone(&store), self.store_concurrency);
        let poll = runner::poll(Arc::clone(&store), Arc::downgrade(&registry), self.poll_interval);
        let queues = self.queues.clone();
        let factory: HandlerFactory = Arc::new(move |ctx: &PartitionContext| match queues.get(&ctx.queue) {
            Some((handler, policy)) => Box::new(runner::TaskPartition::new(
                Arc::clone(&store),
                Arc::clone(handler),
                policy.clone(),
                Arc::clone(&registry),
            )) as Box<dyn PartitionHandler>,
            None => match &other {
                Some(other) => other(ctx),
                None => Box::new(NoHandler) as Box<dyn PartitionHandler>,
            },
        });
        (factory, poll)
    }
}

/// Stands in for the handler of a queue nothing serves.
struct NoHandler;

#[async_trait(?Send)]
impl PartitionHandler for NoHandler {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        Err(HandlerError::msg(format!("no handler for queue {}/{}", ctx.domain, ctx.queue_name)))
    }

    async fn revoked(&mut self, _: &PartitionContext) {}
}

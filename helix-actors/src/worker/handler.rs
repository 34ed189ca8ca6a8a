//! What user code implements to serve partitions: [`PartitionHandler`], created per owned
//! partition by a [`HandlerFactory`], with the [`PartitionContext`] of that ownership.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use helix_core::{DomainName, Epoch, PartitionId, QueueId, QueueName, WorkerId};

use super::guard::OwnershipGuard;

/// One ownership of one partition, as user code sees it.
///
/// The `epoch` is the fencing token of this ownership: it grows on every change of owner, and
/// a side effect that user code tags with it (and checks, the way the store checks `owner = me
/// AND epoch = E`) can never be applied by a stale owner (see `docs/protocol.md`).
///
/// The [`guard`](Self::guard) tells whether the ownership still holds and binds work the
/// handler spawns to it. Two contexts are equal when they describe the same ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionContext {
    /// The domain of the queue.
    pub domain: DomainName,
    /// The queue's name.
    pub queue_name: QueueName,
    /// The queue's id.
    pub queue: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// The epoch this worker owns the partition at.
    pub epoch: Epoch,
    /// The worker that owns it.
    pub worker: WorkerId,
    guard: OwnershipGuard,
}

impl PartitionContext {
    pub(crate) fn new(
        domain: DomainName,
        queue_name: QueueName,
        queue: QueueId,
        partition: PartitionId,
        epoch: Epoch,
        worker: WorkerId,
        guard: OwnershipGuard,
    ) -> Self {
        Self { domain, queue_name, queue, partition, epoch, worker, guard }
    }

    /// The guard of this ownership: [`is_held`](OwnershipGuard::is_held),
    /// [`lost`](OwnershipGuard::lost) and [`spawn`](OwnershipGuard::spawn) for work that must
    /// stop when the ownership ends.
    pub fn guard(&self) -> &OwnershipGuard {
        &self.guard
    }
}

/// Why a handler could not take a partition. The worker session counts it as a failure of the
/// partition: it restarts the partition with backoff and, after too many failures, marks it
/// failed (see [`RestartPolicy`](super::RestartPolicy)).
#[derive(Debug)]
pub struct HandlerError {
    message: String,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl HandlerError {
    /// An error with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self { message: message.into(), source: None }
    }

    /// An error caused by another.
    pub fn from_error(error: impl Error + Send + Sync + 'static) -> Self {
        Self { message: error.to_string(), source: Some(Box::new(error)) }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for HandlerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// User code for one owned partition. A [`HandlerFactory`] creates one handler per ownership
/// (per `(queue, partition, epoch)`) on the worker's *handler arbiter*, and the handler runs
/// there in its own actor, so a handler need not be `Send`. The worker session, its
/// heartbeats and its store run on the *control arbiter*, another thread: a handler that
/// blocks its thread delays its own partitions, never the lease (`docs/architecture.md`).
///
/// No future of the handler is polled once its ownership has ended (see
/// [`OwnershipGuard`]): past the worker's fence deadline the future is dropped, not polled,
/// even if the thread wakes up late after a pause. Work the handler starts on its own
/// (tickers, consumer loops) should run through [`OwnershipGuard::spawn`] to get the same
/// guarantee.
///
/// Lifecycle:
/// - [`assigned`](Self::assigned) runs once when the worker starts serving the partition. An
///   error or a panic counts as a failure: the handler is dropped and a fresh one is created
///   after a backoff (see [`RestartPolicy`](super::RestartPolicy)).
/// - [`revoked`](Self::revoked) runs when the partition is handed over gracefully (a
///   revocation by the coordinator, or the worker leaving). It may finish in-flight work but
///   is cancelled after `drain_timeout`; the partition is handed over right after it returns.
/// - When the partition is lost without a drain (the worker fenced itself because it could not
///   renew its lease, its session ended, or the partition was reassigned), in-flight handler
///   futures are cancelled (never polled again) and the handler is dropped soon after:
///   release resources in `Drop`.
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use helix_actors::worker::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};
///
/// struct Logger;
///
/// #[async_trait(?Send)]
/// impl PartitionHandler for Logger {
///     async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
///         println!("serving {}/{} partition {} at epoch {}", ctx.domain, ctx.queue_name, ctx.partition, ctx.epoch);
///         Ok(())
///     }
///     async fn revoked(&mut self, ctx: &PartitionContext) {
///         println!("handing over partition {}", ctx.partition);
///     }
/// }
///
/// let factory: HandlerFactory = Arc::new(|_ctx: &PartitionContext| Box::new(Logger) as Box<dyn PartitionHandler>);
/// # let _ = factory;
/// ```
#[async_trait(?Send)]
pub trait PartitionHandler: 'static {
    /// The worker now owns the partition at `ctx.epoch`; prepare to serve it.
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError>;
    /// The worker is handing the partition over: stop taking new work and finish (or give up)
    /// what is in flight. Cancelled after `drain_timeout`. The ownership ends when it returns:
    /// work spawned through the guard is dropped then, before the handoff is written.
    async fn revoked(&mut self, ctx: &PartitionContext);
}

/// Creates the handler of one partition ownership. Called on the handler arbiter (the thread
/// the handler then runs on) each time a partition is started or restarted.
pub type HandlerFactory = Arc<dyn Fn(&PartitionContext) -> Box<dyn PartitionHandler> + Send + Sync>;

//! What user code implements to serve partitions: [`PartitionHandler`], created per owned
//! partition by a [`HandlerFactory`], with the [`PartitionContext`] of that ownership.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use helix_core::{DomainName, Epoch, PartitionId, QueueId, QueueName, WorkerId};

/// One ownership of one partition, as user code sees it.
///
/// The `epoch` is the fencing token of this ownership: it grows on every change of owner, and
/// a side effect that user code tags with it (and checks, the way the store checks `owner = me
/// AND epoch = E`) can never be applied by a stale owner (see `docs/protocol.md`).
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
/// (per `(queue, partition, epoch)`), and the worker session runs it in its own actor on the
/// session's thread, so a handler need not be `Send`.
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
///   futures are cancelled and the handler is dropped at once: release resources in `Drop`.
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
    /// what is in flight. Cancelled after `drain_timeout`.
    async fn revoked(&mut self, ctx: &PartitionContext);
}

/// Creates the handler of one partition ownership. Called on the worker session's thread each
/// time a partition is started or restarted.
pub type HandlerFactory = Arc<dyn Fn(&PartitionContext) -> Box<dyn PartitionHandler> + Send + Sync>;

//! The actor that runs one owned partition's handler, catching its panics.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Duration;

use actix::WeakAddr;
use actix::prelude::*;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::handler::{PartitionContext, PartitionHandler};
use super::session::{PartitionKey, WorkerSession};

/// A child of the [`WorkerSession`]: runs the handler of one `(queue, partition, epoch)`.
///
/// actix does not catch panics (a panicking handler would just close the mailbox), so every
/// call into user code runs under `catch_unwind`; a panic or an error of `assigned` is reported
/// to the session as a [`PartitionFailure`] and the actor stops. The handler sits behind an
/// async mutex so that `revoked` runs only after `assigned` has returned.
pub(crate) struct PartitionActor {
    ctx: PartitionContext,
    handler: Rc<Mutex<Box<dyn PartitionHandler>>>,
    session: WeakAddr<WorkerSession>,
    generation: u64,
    drain_timeout: Duration,
    /// The drain under way, shared by every `Drain` request so `revoked` runs once.
    drain: Option<Shared<LocalBoxFuture<'static, ()>>>,
}

impl PartitionActor {
    pub(crate) fn new(
        ctx: PartitionContext,
        handler: Box<dyn PartitionHandler>,
        session: WeakAddr<WorkerSession>,
        generation: u64,
        drain_timeout: Duration,
    ) -> Self {
        Self { ctx, handler: Rc::new(Mutex::new(handler)), session, generation, drain_timeout, drain: None }
    }

    fn key(&self) -> PartitionKey {
        (self.ctx.queue, self.ctx.partition)
    }
}

impl Actor for PartitionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let handler = Rc::clone(&self.handler);
        let pctx = self.ctx.clone();
        let assigned = async move {
            let mut handler = handler.lock().await;
            AssertUnwindSafe(handler.assigned(&pctx)).catch_unwind().await
        };
        ctx.spawn(assigned.into_actor(self).map(|outcome, act, ctx| {
            let reason = match outcome {
                Ok(Ok(())) => {
                    debug!(queue = %act.ctx.queue, partition = %act.ctx.partition, epoch = %act.ctx.epoch, "partition handler assigned");
                    return;
                }
                Ok(Err(error)) => error.to_string(),
                Err(panic) => format!("handler panicked: {}", panic_message(&panic)),
            };
            warn!(queue = %act.ctx.queue, partition = %act.ctx.partition, epoch = %act.ctx.epoch, %reason, "partition handler failed");
            if let Some(session) = act.session.upgrade().filter(|_| act.drain.is_none()) {
                session.do_send(PartitionFailure { key: act.key(), generation: act.generation, reason });
            }
            ctx.stop();
        }));
    }
}

/// Graceful stop: runs `revoked` (after `assigned` returned), at most `drain_timeout`, then
/// stops the actor. Replies once the handler is done with the partition.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

impl Handler<Drain> for PartitionActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        let drain = match &self.drain {
            Some(drain) => drain.clone(),
            None => {
                let drain = drain_handler(Rc::clone(&self.handler), self.ctx.clone(), self.drain_timeout)
                    .boxed_local()
                    .shared();
                self.drain = Some(drain.clone());
                drain
            }
        };
        Box::pin(drain.into_actor(self).map(|(), _, ctx| ctx.stop()))
    }
}

/// Runs `revoked` once `assigned` has returned, for at most `timeout`.
async fn drain_handler(
    handler: Rc<Mutex<Box<dyn PartitionHandler>>>,
    pctx: PartitionContext,
    timeout: Duration,
) {
    let drained = tokio::time::timeout(timeout, async {
        let mut handler = handler.lock().await;
        AssertUnwindSafe(handler.revoked(&pctx)).catch_unwind().await
    })
    .await;
    let (queue, partition, epoch) = (pctx.queue, pctx.partition, pctx.epoch);
    match drained {
        Ok(Ok(())) => debug!(%queue, %partition, %epoch, "partition drained"),
        Ok(Err(panic)) => {
            warn!(%queue, %partition, %epoch, reason = %panic_message(&panic), "revoked handler panicked");
        }
        Err(_) => warn!(%queue, %partition, %epoch, ?timeout, "drain timed out, in-flight work cancelled"),
    }
}

/// Hard stop: cancels the handler's futures and drops it at once (self-fencing, lost session,
/// partition no longer owned).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;

impl Handler<Stop> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// A partition actor's `assigned` failed or panicked; it has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PartitionFailure {
    pub(crate) key: PartitionKey,
    pub(crate) generation: u64,
    pub(crate) reason: String,
}

fn panic_message(panic: &Box<dyn Any + Send>) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

//! The actor that runs one owned partition's handler, catching its panics and gating every
//! poll of its futures by the ownership guard.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Duration;

use actix::WeakRecipient;
use actix::prelude::*;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::handler::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};
use super::session::PartitionKey;

/// A child of the [`WorkerSession`](super::WorkerSession): runs the handler of one `(queue, partition, epoch)`.
///
/// Lives on the worker's **handler arbiter** (the thread that runs user code), never on the
/// control arbiter of the session, its heartbeats and its store.
///
/// Every poll of a handler future (`assigned`, `revoked`) goes through the ownership guard of
/// the context ([`OwnershipGuard`](super::OwnershipGuard)): once the ownership has ended,
/// by the session ending it or by the fence deadline passing on this thread's clock, the
/// future is dropped without being polled again, and the actor stops on its own; stopping
/// does not wait for the session's [`Stop`] message. The ownership ends when the actor stops.
///
/// actix does not catch panics (a panicking handler would just close the mailbox), so every
/// call into user code runs under `catch_unwind`; a panic or an error of `assigned` is reported
/// to the session as a [`PartitionFailure`] and the actor stops. The handler sits behind an
/// async mutex so that `revoked` runs only after `assigned` has returned.
pub(crate) struct PartitionActor {
    ctx: PartitionContext,
    handler: Rc<Mutex<Box<dyn PartitionHandler>>>,
    session: WeakRecipient<PartitionFailure>,
    generation: u64,
    drain_timeout: Duration,
    /// The drain under way, shared by every `Drain` request so `revoked` runs once.
    drain: Option<Shared<LocalBoxFuture<'static, ()>>>,
}

impl PartitionActor {
    pub(crate) fn new(
        ctx: PartitionContext,
        handler: Box<dyn PartitionHandler>,
        session: WeakRecipient<PartitionFailure>,
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
        let guard = self.ctx.guard().clone();
        let assigned = guard.gate(async move {
            let mut handler = handler.lock().await;
            AssertUnwindSafe(handler.assigned(&pctx)).catch_unwind().await
        });
        // Stops the actor when the ownership ends, whatever the session's messages do.
        let lost = guard.lost();
        ctx.spawn(lost.into_actor(self).map(|(), act, ctx| {
            debug!(queue = %act.ctx.queue, partition = %act.ctx.partition, epoch = %act.ctx.epoch, "ownership ended, stopping partition");
            ctx.stop();
        }));
        ctx.spawn(assigned.into_actor(self).map(|outcome, act, ctx| {
            let Some(outcome) = outcome else {
                debug!(queue = %act.ctx.queue, partition = %act.ctx.partition, epoch = %act.ctx.epoch, "ownership ended before the handler was assigned");
                ctx.stop();
                return;
            };
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

    fn stopped(&mut self, _: &mut Self::Context) {
        self.ctx.guard().end();
    }
}

/// Creates the handler of `ctx` with `factory` on the calling thread (the handler arbiter). A
/// panicking factory gives a handler whose `assigned` fails with the panic's message: the
/// partition counts it as a failure and restarts with backoff, and the panic does not take the
/// arbiter's thread down with every other partition on it.
pub(crate) fn create_handler(factory: &HandlerFactory, ctx: &PartitionContext) -> Box<dyn PartitionHandler> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| factory(ctx))) {
        Ok(handler) => handler,
        Err(panic) => {
            Box::new(FactoryPanicked(format!("handler factory panicked: {}", panic_message(&panic))))
        }
    }
}

/// Stands in for the handler a panicking factory did not create.
struct FactoryPanicked(String);

#[async_trait::async_trait(?Send)]
impl PartitionHandler for FactoryPanicked {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        Err(HandlerError::msg(self.0.clone()))
    }

    async fn revoked(&mut self, _: &PartitionContext) {}
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

/// Runs `revoked` once `assigned` has returned, for at most `timeout`, gated by the ownership;
/// then ends the ownership, so that nothing spawned through the guard runs once the drain is
/// over (and the session writes the handoff).
async fn drain_handler(
    handler: Rc<Mutex<Box<dyn PartitionHandler>>>,
    pctx: PartitionContext,
    timeout: Duration,
) {
    let guard = pctx.guard().clone();
    let revoked = guard.gate(async {
        let mut handler = handler.lock().await;
        AssertUnwindSafe(handler.revoked(&pctx)).catch_unwind().await
    });
    let drained = tokio::time::timeout(timeout, revoked).await;
    guard.end();
    let (queue, partition, epoch) = (pctx.queue, pctx.partition, pctx.epoch);
    match drained {
        Ok(Some(Ok(()))) => debug!(%queue, %partition, %epoch, "partition drained"),
        Ok(None) => debug!(%queue, %partition, %epoch, "ownership ended while draining"),
        Ok(Some(Err(panic))) => {
            warn!(%queue, %partition, %epoch, reason = %panic_message(&panic), "revoked handler panicked");
        }
        Err(_) => warn!(%queue, %partition, %epoch, ?timeout, "drain timed out, in-flight work cancelled"),
    }
}

/// Hard stop: cancels the handler's futures and drops it (self-fencing, lost session,
/// partition no longer owned). The session ends the ownership before sending it, so the
/// handler's futures are not polled again even while this message waits in the mailbox.
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

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &Box<dyn Any + Send>) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use async_trait::async_trait;
    use helix_core::{DomainName, Epoch, PartitionId, QueueId, QueueName, WorkerId};
    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::*;
    use crate::worker::guard::{FenceDeadline, OwnershipGuard};

    type Steps = Arc<StdMutex<Vec<&'static str>>>;

    /// Takes one step, waits to be woken, takes the next.
    struct TwoSteps {
        steps: Steps,
        wake: Arc<Notify>,
    }

    #[async_trait(?Send)]
    impl PartitionHandler for TwoSteps {
        async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
            self.steps.lock().expect("steps").push("first");
            self.wake.notified().await;
            self.steps.lock().expect("steps").push("second");
            Ok(())
        }

        async fn revoked(&mut self, _: &PartitionContext) {}
    }

    impl Drop for TwoSteps {
        fn drop(&mut self) {
            self.steps.lock().expect("steps").push("dropped");
        }
    }

    struct NoSession;

    impl Actor for NoSession {
        type Context = Context<Self>;
    }

    impl Handler<PartitionFailure> for NoSession {
        type Result = ();

        fn handle(&mut self, _: PartitionFailure, _: &mut Self::Context) {}
    }

    /// Virtual time, no session at all (so no fence timer and no `Stop` message): only the
    /// published deadline tells the partition its ownership is over.
    #[actix::test]
    async fn a_handler_future_woken_after_a_pause_past_the_deadline_is_not_polled() {
        tokio::time::pause();
        let fence = FenceDeadline::new();
        fence.set(Instant::now() + Duration::from_secs(2));
        let guard = OwnershipGuard::new(fence);
        let ctx = PartitionContext::new(
            DomainName::new("domain_order").expect("name"),
            QueueName::new("food_order").expect("name"),
            QueueId(1),
            PartitionId(0),
            Epoch(7),
            WorkerId::new_v7(),
            guard.clone(),
        );
        let steps = Steps::default();
        let wake = Arc::new(Notify::new());
        let handler = TwoSteps { steps: Arc::clone(&steps), wake: Arc::clone(&wake) };
        let session = NoSession.start();
        let actor =
            PartitionActor::new(ctx, Box::new(handler), session.downgrade().recipient(), 1, Duration::ZERO)
                .start();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*steps.lock().expect("steps"), vec!["first"]);

        // The pause: the clock jumps past the deadline, then the handler's wake-up arrives.
        tokio::time::advance(Duration::from_secs(3)).await;
        wake.notify_one();
        for _ in 0..100 {
            if !actor.connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*steps.lock().expect("steps"), vec!["first", "dropped"], "the second step never ran");
        assert!(!actor.connected(), "the partition actor stopped on its own");
        assert!(!guard.is_held());
    }
}

//! The ownership guard: how user code (and the partition actor) knows whether an ownership
//! still holds, on any thread, without waiting for a message (DESIGN §4 rule 10).
//!
//! Two things end an ownership:
//! - its **fence deadline** passes: the worker session publishes `sent + session_timeout −
//!   safety_margin` of its last renewal in a [`FenceDeadline`], an atomic that every thread
//!   reads on its own monotonic clock, so a handler thread that wakes after a pause sees the
//!   deadline has passed before the session's fence timer has had a chance to run;
//! - the runtime **ends** it: the session stops the partition (revocation drained, fence,
//!   lost session, no longer owned, worker stopped) by setting a flag, again without a message.
//!
//! An ended ownership never holds again, even if a later renewal moves the deadline: the check
//! that first sees the deadline passed ends it for good.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The instant until which a worker session trusts its lease, shared with every thread that
/// runs its partitions. Written by the session only (on renewal and when it fences); read by
/// anyone with [`FenceDeadline::get`].
#[derive(Clone)]
pub(crate) struct FenceDeadline(Arc<DeadlineCell>);

struct DeadlineCell {
    /// Monotonic origin of `nanos`.
    base: Instant,
    /// Nanoseconds after `base` plus one; 0 means no deadline (fenced).
    nanos: AtomicU64,
}

impl FenceDeadline {
    /// A deadline that has not been set: fenced until the first renewal.
    pub(crate) fn new() -> Self {
        Self(Arc::new(DeadlineCell { base: Instant::now(), nanos: AtomicU64::new(0) }))
    }

    /// Publishes `deadline` (a renewal moved it).
    pub(crate) fn set(&self, deadline: Instant) {
        let after = deadline.saturating_duration_since(self.0.base).as_nanos();
        let nanos = u64::try_from(after).unwrap_or(u64::MAX - 1).saturating_add(1);
        self.0.nanos.store(nanos, Ordering::Release);
    }

    /// Withdraws the deadline: nothing is trusted until the next renewal.
    pub(crate) fn clear(&self) {
        self.0.nanos.store(0, Ordering::Release);
    }

    /// The published deadline, `None` when fenced.
    pub(crate) fn get(&self) -> Option<Instant> {
        match self.0.nanos.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(self.0.base + Duration::from_nanos(nanos - 1)),
        }
    }
}

impl fmt::Debug for FenceDeadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FenceDeadline").field(&self.get()).finish()
    }
}

struct Ownership {
    fence: FenceDeadline,
    ended: AtomicBool,
    lost: Notify,
}

impl Ownership {
    fn is_held(&self) -> bool {
        // The deadline is read before the flag: a session that ends an ownership and then
        // publishes a later deadline (a renewal after a gap) is seen ending it.
        let deadline = self.fence.get();
        if self.ended.load(Ordering::Acquire) {
            return false;
        }
        if deadline.is_some_and(|at| Instant::now() < at) {
            return true;
        }
        self.end();
        false
    }

    fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.lost.notify_waiters();
        }
    }
}

/// The guard of one ownership of one partition (one `(queue, partition, epoch)` in this
/// process), from [`PartitionContext::guard`](super::PartitionContext::guard).
///
/// The ownership holds from the moment the partition starts until the first of: the worker's
/// fence deadline passes on its monotonic clock (`sent + session_timeout − safety_margin` of
/// its last renewal, `docs/protocol.md`), its session is lost, the partition is stopped as no
/// longer owned, `revoked` returns (or is cancelled at `drain_timeout`) in a handoff, the
/// handler's `assigned` fails, or the worker stops. Once ended it never holds again.
///
/// The guard is cheap to clone, `Send + Sync`, and every method may be called from any
/// thread, except [`spawn`](Self::spawn), which runs work on the calling thread.
///
/// - [`is_held`](Self::is_held): a check (an atomic load and a clock read).
/// - [`lost`](Self::lost): a future that completes when the ownership ends.
/// - [`spawn`](Self::spawn): runs a future bound to the ownership: polled only while it
///   holds, dropped (not polled again) as soon as it ends.
///
/// The runtime gates the handler's own futures (`assigned`, `revoked`) the same way. A gate
/// works between polls: a poll that blocks its thread is not interrupted, so code that must
/// never act under a stale ownership also carries [`epoch`](super::PartitionContext::epoch)
/// as a fencing token to whatever it writes to (see `docs/protocol.md`, "What self-fencing
/// cannot see").
///
/// ```
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use helix_actors::worker::{HandlerError, PartitionContext, PartitionHandler};
///
/// /// Publishes the partition's state every 20 ms while this worker owns it.
/// struct Ticker;
///
/// #[async_trait(?Send)]
/// impl PartitionHandler for Ticker {
///     async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
///         let (partition, epoch) = (ctx.partition, ctx.epoch);
///         // Polled only while the ownership holds and dropped when it ends (handoff, fence,
///         // lost session): it never ticks under an old epoch.
///         ctx.guard().spawn(async move {
///             let mut every = tokio::time::interval(Duration::from_millis(20));
///             loop {
///                 every.tick().await;
///                 // Whatever leaves the process carries `epoch` as its fencing token.
///                 println!("partition {partition}: state at epoch {epoch}");
///             }
///         });
///
///         // Work on a thread of its own is not gated: it checks the guard itself.
///         let guard = ctx.guard().clone();
///         std::thread::spawn(move || {
///             while guard.is_held() {
///                 // ... take one message, write it with `epoch` as its fencing token ...
///                 # break;
///             }
///         });
///         Ok(())
///     }
///
///     async fn revoked(&mut self, _ctx: &PartitionContext) {
///         // The ticker runs until this returns; the ownership ends right after.
///     }
/// }
/// ```
///
/// [`lost`](Self::lost) suits code that takes a shutdown signal, for example a server's
/// graceful shutdown or a `tokio::select!` branch outside the gated work (gated work itself
/// never sees the end: it is dropped first).
#[derive(Clone)]
pub struct OwnershipGuard(Arc<Ownership>);

impl OwnershipGuard {
    /// A guard that holds while `fence` lies in the future and until it is ended.
    pub(crate) fn new(fence: FenceDeadline) -> Self {
        Self(Arc::new(Ownership { fence, ended: AtomicBool::new(false), lost: Notify::new() }))
    }

    /// Ends the ownership: every gated future is dropped at its next wake-up and
    /// [`lost`](Self::lost) completes. Idempotent.
    pub(crate) fn end(&self) {
        self.0.end();
    }

    /// Whether the ownership still holds now: not ended, and the worker's fence deadline has
    /// not passed on this thread's monotonic clock (tokio's clock, so virtual time in tests).
    /// `false` is final.
    pub fn is_held(&self) -> bool {
        self.0.is_held()
    }

    /// A future that completes when the ownership ends (at once if it already has): when it
    /// is ended, or when the fence deadline passes (it wakes at the deadline, and again if a
    /// renewal moves it). `Send` and `'static`, so it can be raced against any work, for
    /// example in `tokio::select!` or as a cancellation signal for a client library.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let ownership = Arc::clone(&self.0);
        async move {
            loop {
                let ended = ownership.lost.notified();
                tokio::pin!(ended);
                // Registered before the check, so an end between the two is not missed.
                ended.as_mut().enable();
                if !ownership.is_held() {
                    return;
                }
                match ownership.fence.get() {
                    Some(deadline) => {
                        let expired = tokio::time::sleep_until(deadline);
                        tokio::pin!(expired);
                        futures::future::select(ended, expired).await;
                    }
                    None => return,
                }
            }
        }
    }

    /// Runs `work` on the calling thread's actix arbiter, bound to this ownership: it is
    /// polled only while the ownership holds, and dropped, without another poll, as soon as
    /// it ends. The handle yields `Some(output)` when `work` completed, `None` when the
    /// ownership ended first.
    ///
    /// Call it from the handler (its thread runs the work, so `work` need not be `Send`).
    ///
    /// # Panics
    /// When called outside an actix arbiter (a thread with a tokio `LocalSet`), like
    /// [`actix::spawn`].
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<Option<F::Output>>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        actix::spawn(self.gate(work))
    }

    /// `work`, polled only while the ownership holds: resolves to `None`, dropping `work`
    /// unpolled, once it has ended.
    pub(crate) fn gate<F: Future>(&self, work: F) -> Gated<F> {
        Gated { ownership: Arc::clone(&self.0), lost: Box::pin(self.lost()), work: Some(Box::pin(work)) }
    }
}

impl fmt::Debug for OwnershipGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnershipGuard").field("held", &self.is_held()).finish()
    }
}

/// Two guards are equal when they guard the same ownership.
impl PartialEq for OwnershipGuard {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for OwnershipGuard {}

/// A future polled only while an ownership holds (see [`OwnershipGuard::gate`]).
pub(crate) struct Gated<F: Future> {
    ownership: Arc<Ownership>,
    /// Wakes the task when the ownership ends, so that `work` is dropped even while it
    /// waits on something that never comes.
    lost: BoxFuture<'static, ()>,
    work: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Gated<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(work) = this.work.as_mut() else {
            return Poll::Ready(None);
        };
        // The check comes before every poll of `work`, whatever woke the task.
        if this.lost.as_mut().poll(cx).is_ready() || !this.ownership.is_held() {
            this.work = None;
            return Poll::Ready(None);
        }
        match work.as_mut().poll(cx) {
            Poll::Ready(output) => {
                this.work = None;
                Poll::Ready(Some(output))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A future that counts its polls and never completes.
    async fn counted(polls: Arc<AtomicUsize>) {
        futures::future::poll_fn(|_| {
            polls.fetch_add(1, Ordering::SeqCst);
            Poll::<()>::Pending
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_gated_future_polled_after_the_deadline_is_dropped_unpolled() {
        let fence = FenceDeadline::new();
        fence.set(Instant::now() + Duration::from_secs(2));
        let guard = OwnershipGuard::new(fence);
        let polls = Arc::new(AtomicUsize::new(0));
        let mut gated = std::pin::pin!(guard.gate(counted(Arc::clone(&polls))));

        assert!(futures::poll!(gated.as_mut()).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled while the ownership holds");

        // A pause: the clock jumps past the deadline and nothing else ran in between.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            futures::poll!(gated.as_mut()),
            Poll::Ready(None),
            "dropped at the first poll past the deadline"
        );
        assert_eq!(polls.load(Ordering::SeqCst), 1, "never polled past the deadline");
        assert!(!guard.is_held());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_ownership_never_holds_again_even_when_the_deadline_moves() {
        let fence = FenceDeadline::new();
        assert!(!OwnershipGuard::new(fence.clone()).is_held(), "no deadline, no ownership");
        fence.set(Instant::now() + Duration::from_secs(2));
        let guard = OwnershipGuard::new(fence.clone());
        assert!(guard.is_held());

        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!guard.is_held(), "past the deadline");
        fence.set(Instant::now() + Duration::from_secs(2));
        assert!(!guard.is_held(), "a later renewal does not revive it");

        let ended = OwnershipGuard::new(fence.clone());
        ended.end();
        assert!(!ended.is_held());
        assert_eq!(futures::poll!(std::pin::pin!(ended.lost())), Poll::Ready(()));
    }

    #[tokio::test(start_paused = true)]
    async fn lost_completes_at_the_deadline_and_follows_renewals() {
        let fence = FenceDeadline::new();
        let start = Instant::now();
        fence.set(start + Duration::from_secs(2));
        let guard = OwnershipGuard::new(fence.clone());
        let lost = tokio::spawn(guard.lost());
        tokio::time::sleep(Duration::from_secs(1)).await;
        fence.set(start + Duration::from_secs(4));
        lost.await.expect("lost completes");
        assert_eq!(Instant::now(), start + Duration::from_secs(4), "at the renewed deadline");
    }
}

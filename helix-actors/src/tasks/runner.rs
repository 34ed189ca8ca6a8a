//! How a worker runs the tasks of its partitions: a [`TaskPartition`] per owned partition of a
//! task queue (a [`PartitionHandler`] like any other, so it inherits the ownership guard, the
//! drain and the restart policy), and one due-time poll per worker ([`TaskPoller`]).
//!
//! Everything here runs on the worker's handler arbiter, except the poller's store calls,
//! which go through the worker's store actor like every other call.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use helix_core::{PartitionId, QueueId};
use helix_store::{
    MAX_SCHEDULE_AHEAD, MAX_TASK_BATCH, OwnerFence, PartitionOutcomes, RunAt, Store, StoreError, StoreResult,
    TaskBatchOutcome, TaskFailure, TaskId, TaskRecord, TaskRecovery, TaskResult, TaskRetry,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::handler::{TaskContext, TaskHandler, TaskOutcome};
use super::outbox::Outbox;
use super::policy::{MAX_IN_FLIGHT, TaskPolicy};
use crate::worker::{HandlerError, PartitionContext, PartitionHandler, PartitionKey, panic_message};

/// The most due instants a partition keeps (see [`Slot::due`]).
const MAX_HINTS: usize = 64;

/// The first and the longest wait before a claim after claims sent for due times came back
/// empty (see `Loop::serve`).
const EMPTY_CLAIM_STEP: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(1));

/// The task queues of one worker and what its partitions share: due-time hints from the
/// poller, the store clock's offset, and each partition's store-call lock.
pub(crate) struct Registry {
    slots: Mutex<HashMap<PartitionKey, Arc<Slot>>>,
    /// The origin of the local milliseconds below (tokio's clock: virtual time in tests).
    origin: Instant,
    /// `store now − local now` in milliseconds, sampled by the poller (`None` until then).
    offset_ms: Mutex<Option<i64>>,
    /// The task operations of all partitions that may use the store at once (see
    /// `TaskQueues::store_concurrency`): the rest of the worker's pool stays free for its
    /// session's heartbeats and polls.
    permits: Arc<tokio::sync::Semaphore>,
    /// The partitions' writes of outcomes, coalesced (under the same permits).
    outbox: Arc<Outbox>,
}

/// What one partition of this worker shares with the poller and with its next incarnation.
pub(crate) struct Slot {
    /// Due instants the poller and the runner's own retries saw, earliest first (hints: a
    /// claim decides), at most [`MAX_HINTS`]; a claim sent at `t` takes those up to `t`.
    due: Mutex<BTreeSet<Instant>>,
    wake: Notify,
    /// Held by each store call of the partition's runners from before it is sent until the
    /// store operation has ended (even when its caller stopped waiting at `store_timeout`):
    /// the operations of one partition on this worker never overlap, and a new incarnation's
    /// recovery comes after every operation an ended one left under way (a claim that lands
    /// after the recovery would leave tasks `RUNNING` that nothing runs; a write of outcomes,
    /// fail a newer attempt).
    calls: Arc<tokio::sync::Mutex<()>>,
}

/// The registries of this process's task workers, for [`wake_local`].
static LOCAL: Mutex<Vec<Weak<Registry>>> = Mutex::new(Vec::new());

/// Wakes this process's runners of the partitions that tasks were just enqueued on, each
/// given as `(partition, run_at)` in `queue`: a task due at once is claimed now rather than
/// at the worker's next poll (`TaskQueues::poll_interval`), a later one at its due time (on
/// the store's clock as last sampled by the poller, or at once before any sample: the claim
/// then finds it not due and the poll brings it later). Only a hint to runners of this
/// process: partitions run elsewhere wait for their owner's poll, and a runner of another
/// store whose queue has the same id wakes for nothing (its claim finds nothing).
pub(crate) fn wake_local(queue: QueueId, tasks: impl Iterator<Item = (PartitionId, RunAt)>) {
    let registries: Vec<Arc<Registry>> = {
        let mut local = LOCAL.lock().unwrap_or_else(|e| e.into_inner());
        local.retain(|r| r.strong_count() > 0);
        local.iter().filter_map(Weak::upgrade).collect()
    };
    if registries.is_empty() {
        return;
    }
    let tasks: Vec<(PartitionId, RunAt)> = tasks.collect();
    let now = Instant::now();
    for registry in registries {
        let offset = *registry.offset_ms.lock().unwrap_or_else(|e| e.into_inner());
        for (partition, run_at) in &tasks {
            let Some(slot) = registry.running((queue, *partition)) else { continue };
            let at = match (run_at, offset) {
                (RunAt::After(delay), _) if delay.is_zero() => now,
                (RunAt::After(delay), _) => {
                    let Some(at) = now.checked_add(*delay + Duration::from_millis(1)) else { continue };
                    at
                }
                (RunAt::At(at), Some(offset)) => registry.local(*at, now, registry.local_ms(now) + offset),
                (RunAt::At(_), None) => now,
            };
            slot.hint(at);
        }
    }
}

impl Registry {
    /// A registry whose partitions run at most `store_concurrency` store operations at once
    /// (at least 1; `TaskQueues::store_concurrency` bounds it) on `store`, their writes of
    /// outcomes coalesced. In-process enqueues wake its runners ([`wake_local`]).
    pub(crate) fn new(store: Arc<dyn Store>, store_concurrency: usize) -> Arc<Self> {
        let permits = Arc::new(tokio::sync::Semaphore::new(store_concurrency.max(1)));
        let registry = Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            origin: Instant::now(),
            offset_ms: Mutex::new(None),
            outbox: Outbox::new(store, Arc::clone(&permits)),
            permits,
        });
        let mut local = LOCAL.lock().unwrap_or_else(|e| e.into_inner());
        local.retain(|r| r.strong_count() > 0);
        local.push(Arc::downgrade(&registry));
        registry
    }

    /// The slot of `key` when a runner of it is alive here.
    fn running(&self, key: PartitionKey) -> Option<Arc<Slot>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(&key).filter(|slot| Arc::strong_count(slot) > 1).cloned()
    }

    fn slot(&self, key: PartitionKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(key).or_insert_with(|| {
            Arc::new(Slot { due: Mutex::default(), wake: Notify::new(), calls: Arc::default() })
        }))
    }

    /// The partitions of each queue that have had a runner, for the poller.
    fn partitions(&self) -> BTreeMap<QueueId, Vec<PartitionId>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: BTreeMap<QueueId, Vec<PartitionId>> = BTreeMap::new();
        for ((queue, partition), slot) in slots.iter() {
            // Only partitions with a live runner (the slot held by more than the map).
            if Arc::strong_count(slot) > 1 {
                out.entry(*queue).or_default().push(*partition);
            }
        }
        out
    }

    /// Milliseconds of the local monotonic clock since the registry was made.
    fn local_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(i64::MAX)
    }

    /// The local instant of a store instant, by the sampled offset, rounded up to the next
    /// millisecond so that a claim sent then finds the task due on the store's clock.
    fn local(&self, at: DateTime<Utc>, local_now: Instant, store_now_ms: i64) -> Instant {
        let ahead = at.timestamp_millis().saturating_sub(store_now_ms);
        match u64::try_from(ahead) {
            Ok(ms) => local_now + Duration::from_millis(ms.saturating_add(1)),
            Err(_) => local_now,
        }
    }
}

impl Slot {
    fn hint(&self, at: Instant) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        due.insert(at);
        if due.len() > MAX_HINTS {
            // The latest is found again by a later poll.
            due.pop_last();
        }
        drop(due);
        self.wake.notify_one();
    }

    /// The earliest due instant known.
    fn first_due(&self) -> Option<Instant> {
        self.due.lock().unwrap_or_else(|e| e.into_inner()).first().copied()
    }

    /// Forgets the due instants up to `at`: a claim sent at `at` covers them.
    fn covered(&self, at: Instant) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        *due = due.split_off(&(at + Duration::from_nanos(1)));
    }
}

/// One poll per worker and poll interval: the earliest due time of each partition the worker
/// runs (one `next_due` statement per task queue), handed to the partitions as hints, so that
/// partitions never poll on their own and a task enqueued by another process is found within
/// one poll interval. Ends once the worker's registry is gone.
pub(crate) async fn poll(store: Arc<dyn Store>, registry: Weak<Registry>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = 0u32;
    loop {
        tick.tick().await;
        let Some(registry) = registry.upgrade() else { return };
        let partitions = registry.partitions();
        if partitions.is_empty() {
            continue;
        }
        // The store's clock, sampled now and then: timers are set on the local clock.
        let known = *registry.offset_ms.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_none() || samples.is_multiple_of(60) {
            let sent = Instant::now();
            if let Ok(now) = store.now().await {
                let rtt = sent.elapsed() / 2;
                let local_ms = registry.local_ms(sent + rtt);
                *registry.offset_ms.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(now.timestamp_millis() - local_ms);
            }
        }
        samples = samples.wrapping_add(1);
        let Some(offset) = *registry.offset_ms.lock().unwrap_or_else(|e| e.into_inner()) else { continue };
        for (queue, parts) in partitions {
            match store.next_due(queue, &parts).await {
                Ok(due) => {
                    let local_now = Instant::now();
                    let store_now_ms = registry.local_ms(local_now) + offset;
                    for (partition, at) in due {
                        let at = registry.local(at, local_now, store_now_ms);
                        registry.slot((queue, partition)).hint(at);
                    }
                }
                Err(error) => debug!(%queue, %error, "task due-time poll failed"),
            }
        }
    }
}

/// The handler of one owned partition of a task queue.
pub(crate) struct TaskPartition {
    store: Arc<dyn Store>,
    handler: Arc<dyn TaskHandler>,
    policy: TaskPolicy,
    registry: Arc<Registry>,
    control: Rc<Control>,
}

/// What `revoked` tells the loop, and the loop answers.
#[derive(Default)]
struct Control {
    draining: Cell<bool>,
    drained: Cell<bool>,
    changed: Notify,
    done: Notify,
}

impl TaskPartition {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        handler: Arc<dyn TaskHandler>,
        policy: TaskPolicy,
        registry: Arc<Registry>,
    ) -> Self {
        let floor = Duration::from_millis(1);
        let policy = TaskPolicy {
            in_flight: policy.in_flight.clamp(1, MAX_IN_FLIGHT),
            store_retry: policy.store_retry.max(floor),
            store_timeout: policy.store_timeout.max(floor),
            ..policy
        };
        Self { store, handler, policy, registry, control: Rc::default() }
    }
}

#[async_trait(?Send)]
impl PartitionHandler for TaskPartition {
    /// Starts the claim loop, bound to the ownership. Its first store operation recovers the
    /// tasks left running at this epoch or an older one (by an earlier owner, or by an earlier
    /// run here), once every operation such a run left under way has ended; it is tried again
    /// until it succeeds, so a store that is down or overloaded delays the partition's tasks
    /// but never fails the partition.
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        let fence =
            OwnerFence { queue: ctx.queue, partition: ctx.partition, worker: ctx.worker, epoch: ctx.epoch };
        let slot = self.registry.slot((ctx.queue, ctx.partition));
        let calls = Calls {
            store: Arc::clone(&self.store),
            slot: Arc::clone(&slot),
            permits: Arc::clone(&self.registry.permits),
            outbox: Arc::clone(&self.registry.outbox),
            bound: self.policy.store_timeout,
        };
        let run = Loop {
            calls,
            handler: Arc::clone(&self.handler),
            policy: self.policy.clone(),
            fence,
            pctx: ctx.clone(),
            slot,
            control: Rc::clone(&self.control),
            registry: Arc::clone(&self.registry),
        };
        ctx.guard().spawn(run.run());
        Ok(())
    }

    /// Takes no new tasks, lets the running ones finish and records their outcomes; the
    /// runtime cancels it at the drain timeout (unfinished attempts then run again).
    async fn revoked(&mut self, _ctx: &PartitionContext) {
        self.control.draining.set(true);
        self.control.changed.notify_one();
        while !self.control.drained.get() {
            self.control.done.notified().await;
        }
    }
}

fn log_recovery(fence: &OwnerFence, recovery: &TaskRecovery) {
    if !(recovery.requeued.is_empty() && recovery.dead.is_empty() && recovery.cancelled.is_empty()) {
        info!(
            %fence, requeued = recovery.requeued.len(), dead = recovery.dead.len(),
            cancelled = recovery.cancelled.len(), "tasks left running were recovered"
        );
    }
}

/// The store calls of one partition's runner. Each runs detached from its caller, under the
/// partition's call lock ([`Slot::calls`]), until the store operation has ended: a runner
/// dropped mid-call (the ownership ended) still holds the lock until then. The caller waits
/// at most the policy's `store_timeout` for the answer; past it the call counts as failed
/// without an answer, and the lock is still held until the operation ends. Writes of
/// outcomes go through the worker's [`Outbox`], which keeps the same rules for the
/// coalesced write that carries them.
struct Calls {
    store: Arc<dyn Store>,
    slot: Arc<Slot>,
    permits: Arc<tokio::sync::Semaphore>,
    outbox: Arc<Outbox>,
    bound: Duration,
}

impl Calls {
    /// Runs `call` detached (see [`Calls`]). A call that is `only_if_awaited` (a claim) is
    /// not sent when its runner is gone by the time the lock and a permit are free: nothing
    /// would run what it claims.
    fn call<T, F>(
        &self,
        what: &'static str,
        only_if_awaited: bool,
        call: F,
    ) -> LocalBoxFuture<'static, StoreResult<T>>
    where
        T: 'static,
        F: Future<Output = StoreResult<T>> + 'static,
    {
        let (lock, permits, bound) = (Arc::clone(&self.slot.calls), Arc::clone(&self.permits), self.bound);
        let (answer, answered) = oneshot::channel();
        actix::spawn(async move {
            let _held = lock.lock_owned().await;
            // Never closed: the semaphore lives as long as the registry this call holds.
            let permit = permits.acquire_owned().await;
            if only_if_awaited && answer.is_closed() {
                return;
            }
            let mut call = std::pin::pin!(call);
            match tokio::time::timeout(bound, call.as_mut()).await {
                // The runner may be gone: its successor recovers what this call left.
                Ok(result) => drop(answer.send(result)),
                Err(_) => {
                    let late = format!("{what} did not answer within {} ms", bound.as_millis());
                    drop(answer.send(Err(StoreError::Unavailable(late))));
                    // The worker's other partitions need not wait for this one.
                    drop(permit);
                    // The operation may still be applied (the store finishes what it was
                    // sent): the partition's next call waits for its end.
                    drop(call.await);
                }
            }
        });
        async move {
            answered
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("{what} ended without an answer"))))
        }
        .boxed_local()
    }

    fn recover(&self, fence: OwnerFence) -> LocalBoxFuture<'static, StoreResult<TaskRecovery>> {
        let store = Arc::clone(&self.store);
        self.call("recovering tasks", false, async move { store.recover_partition_tasks(&fence).await })
    }

    fn claim(&self, fence: OwnerFence, limit: u32) -> LocalBoxFuture<'static, StoreResult<Vec<TaskRecord>>> {
        let store = Arc::clone(&self.store);
        self.call("claiming tasks", true, async move { store.claim_tasks(&fence, limit).await })
    }

    /// The earliest `run_at` of the partition's pending tasks (the poll's statement, for this
    /// partition alone).
    fn next_due(&self, fence: OwnerFence) -> LocalBoxFuture<'static, StoreResult<Option<DateTime<Utc>>>> {
        let store = Arc::clone(&self.store);
        self.call("reading the next due time", true, async move {
            let due = store.next_due(fence.queue, &[fence.partition]).await?;
            Ok(due.get(&fence.partition).copied())
        })
    }

    /// Writes outcomes, coalesced with other partitions' (see [`Outbox`]).
    fn write(&self, outcomes: PartitionOutcomes) -> LocalBoxFuture<'static, StoreResult<TaskBatchOutcome>> {
        self.outbox.post(Arc::clone(&self.slot.calls), outcomes, self.bound)
    }
}

/// One finished attempt, waiting to be recorded.
struct Finished {
    id: TaskId,
    attempt: u32,
    outcome: TaskOutcome,
}

/// The answer of the loop's store call.
enum Answer {
    Claimed {
        asked: u32,
        /// Sent for a due-time hint, rather than because an earlier claim came back full.
        by_hint: bool,
        result: StoreResult<Vec<TaskRecord>>,
    },
    /// A write of outcomes: on success, the delays of the tasks put back for later.
    Flushed {
        batch: Vec<Finished>,
        result: StoreResult<BTreeSet<Duration>>,
    },
    Recovered(StoreResult<TaskRecovery>),
    /// The partition's next due time, read after a claim that came back not full.
    NextDue(StoreResult<Option<DateTime<Utc>>>),
}

struct Loop {
    calls: Calls,
    handler: Arc<dyn TaskHandler>,
    policy: TaskPolicy,
    fence: OwnerFence,
    pctx: PartitionContext,
    slot: Arc<Slot>,
    control: Rc<Control>,
    /// For the store clock's offset, to set a timer for a due time read here.
    registry: Arc<Registry>,
}

/// The earliest of two optional instants (`None` is never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Loop {
    async fn run(mut self) {
        self.serve().await;
        self.control.drained.set(true);
        self.control.done.notify_one();
    }

    /// The claim loop. One store call at a time (outcomes first, then a recovery when one is
    /// owed, then claims), so that a write that has to be sent again can never meet an attempt
    /// claimed after it:
    ///
    /// - a write of outcomes whose answer was lost (a transient error, a timeout) is sent
    ///   again, and no claim is sent until it is written (writes skip tasks already written);
    /// - a claim whose answer was lost may have claimed tasks that nothing runs: no claim is
    ///   sent until the running attempts are finished and recorded and a recovery at this
    ///   epoch has put such tasks back (their attempt counts, as for a worker that died);
    /// - a fenced claim (the partition is being revoked) is tried again after `store_retry`;
    ///   a fenced write ends the loop (the partition has a new owner, who recovers the tasks
    ///   still running here).
    async fn serve(&mut self) {
        // Within 1 ..= MAX_IN_FLIGHT (see `TaskPartition::new`).
        let limit = self.policy.in_flight;
        let claim_at_room = limit.div_ceil(2);
        let mut running: FuturesUnordered<LocalBoxFuture<'static, Finished>> = FuturesUnordered::new();
        let mut finished: Vec<Finished> = Vec::new();
        let mut call: Option<LocalBoxFuture<'static, Answer>> = None;
        // Tasks may be waiting already: look at once. Later, `more` says a claim came back
        // full (or a recovery put tasks back), so more may be due now; otherwise the slot's
        // hints say when.
        let mut more = true;
        let (mut flush_after, mut claim_after) = (Instant::now(), Instant::now());
        // The first operation is the recovery of what earlier runs left (see `assigned`).
        let (mut rewrite, mut resync) = (false, true);
        // A claim took every due task (it came back not full) and the partition knows no
        // later due time: read it (the poll reads only a partition's earliest, so the tasks
        // behind the one it found would otherwise wait for the next poll). That holds too for
        // a claim that found nothing: after a full one, or sent for a due time that was stale
        // (a poll read the task as pending while a claim that took it was under way) or
        // reached before the store's clock did (the clock's offset is an estimate). After the
        // latter, the due time read is set no earlier than `not_before`, a step that doubles
        // while such claims keep finding nothing, so that a wrong offset costs a few claims,
        // never a busy loop. An idle partition has no due time in view, so it sends nothing.
        let mut look_ahead = false;
        let (mut empty_step, mut not_before) = (EMPTY_CLAIM_STEP.0, None::<Instant>);
        loop {
            let now = Instant::now();
            let draining = self.control.draining.get();
            let room = limit.saturating_sub(u32::try_from(running.len()).unwrap_or(u32::MAX));
            let may_recover = resync && !draining && running.is_empty() && finished.is_empty();
            let may_claim = !draining && !resync && !rewrite && room >= claim_at_room;
            let due = if more { Some(now) } else { self.slot.first_due() };
            let claim_at = due.filter(|_| may_claim).map(|at| at.max(claim_after));
            if call.is_none() {
                if !finished.is_empty() && flush_after <= now {
                    let rest = finished.split_off(finished.len().min(MAX_TASK_BATCH));
                    let batch = std::mem::replace(&mut finished, rest);
                    call = Some(self.flush(batch));
                } else if may_recover && claim_after <= now {
                    let recovered = self.calls.recover(self.fence);
                    call = Some(recovered.map(Answer::Recovered).boxed_local());
                } else if claim_at.is_some_and(|at| at <= now) {
                    self.slot.covered(now);
                    let by_hint = !more;
                    more = false;
                    let claimed = self.calls.claim(self.fence, room);
                    let answer = claimed
                        .map(move |result| Answer::Claimed { asked: room, by_hint, result })
                        .boxed_local();
                    call = Some(answer);
                } else if look_ahead && !draining {
                    look_ahead = false;
                    if self.slot.first_due().is_none() {
                        call = Some(self.calls.next_due(self.fence).map(Answer::NextDue).boxed_local());
                    }
                }
            }
            if draining && running.is_empty() && finished.is_empty() && call.is_none() {
                return;
            }
            // The timers that could start a call, while none is under way.
            let wake_at = if call.is_some() {
                None
            } else {
                let flush = (!finished.is_empty()).then_some(flush_after);
                let recover = may_recover.then_some(claim_after);
                earliest(earliest(flush, recover), claim_at)
            };
            tokio::select! {
                Some(done) = running.next(), if !running.is_empty() => finished.push(done),
                answer = async { call.as_mut().expect("guarded").await }, if call.is_some() => {
                    call = None;
                    let now = Instant::now();
                    match answer {
                        Answer::Claimed { asked, by_hint, result: Ok(tasks) } => {
                            let got = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
                            for task in tasks {
                                running.push(self.attempt(task));
                            }
                            // A full batch may leave more due: look again when there is room.
                            more = got >= asked;
                            look_ahead |= !more;
                            if got > 0 {
                                (empty_step, not_before) = (EMPTY_CLAIM_STEP.0, None);
                            } else if by_hint {
                                not_before = Some(now + empty_step);
                                empty_step = (empty_step * 2).min(EMPTY_CLAIM_STEP.1);
                            }
                        }
                        Answer::Claimed { result: Err(error), .. } if error.is_fenced() => {
                            // Revoking (no new work) or lost (the guard ends this loop soon).
                            debug!(fence = %self.fence, %error, "claims refused, trying again later");
                            claim_after = now + self.policy.store_retry;
                            more = true;
                        }
                        Answer::Claimed { result: Err(error), .. } => {
                            warn!(fence = %self.fence, %error, "claiming tasks failed; recovering before claiming again");
                            resync = true;
                            more = true;
                            claim_after = now + self.policy.store_retry;
                        }
                        Answer::Flushed { result: Ok(delays), .. } => {
                            rewrite = false;
                            for delay in delays {
                                self.slot.hint(now + delay);
                            }
                        }
                        Answer::Flushed { result: Err(error), .. } if error.is_fenced() => {
                            info!(fence = %self.fence, %error, "task outcomes fenced, the partition has a new owner");
                            return;
                        }
                        Answer::Flushed { batch, result: Err(error) } if error.is_retryable() || matches!(error, StoreError::Database(_)) => {
                            warn!(fence = %self.fence, %error, tasks = batch.len(), "recording task outcomes failed, writing them again");
                            finished.extend(batch);
                            rewrite = true;
                            flush_after = now + self.policy.store_retry;
                        }
                        Answer::Flushed { batch, result: Err(error) } => {
                            // Refused as such: a recovery puts the tasks back.
                            error!(fence = %self.fence, %error, tasks = batch.len(), "task outcomes refused; recovering the tasks");
                            resync = true;
                        }
                        Answer::NextDue(Ok(Some(at))) => {
                            let offset = *self.registry.offset_ms.lock().unwrap_or_else(|e| e.into_inner());
                            // Before the first sample of the store's clock, the poll brings it.
                            if let Some(offset) = offset {
                                let store_now_ms = self.registry.local_ms(now) + offset;
                                let at = self.registry.local(at, now, store_now_ms);
                                self.slot.hint(not_before.map_or(at, |floor| at.max(floor)));
                            }
                        }
                        Answer::NextDue(Ok(None)) => {}
                        Answer::NextDue(Err(error)) => {
                            debug!(fence = %self.fence, %error, "reading the next due time failed, the poll will find it");
                        }
                        Answer::Recovered(result) => match result {
                            Ok(recovery) => {
                                log_recovery(&self.fence, &recovery);
                                resync = false;
                                more = true;
                            }
                            Err(error) => {
                                warn!(fence = %self.fence, %error, "recovering tasks failed, trying again");
                                claim_after = now + self.policy.store_retry;
                            }
                        },
                    }
                }
                () = async { tokio::time::sleep_until(wake_at.expect("guarded")).await }, if wake_at.is_some() => {}
                () = self.slot.wake.notified() => {}
                () = self.control.changed.notified() => {}
            }
        }
    }

    /// One attempt: the handler's future, under the task's timeout, with panics caught.
    fn attempt(&self, task: TaskRecord) -> LocalBoxFuture<'static, Finished> {
        let (id, attempt, timeout) = (task.id, task.attempts, task.timeout);
        let ctx = TaskContext::new(Arc::new(task), self.pctx.clone());
        let handler = Arc::clone(&self.handler);
        async move {
            let run = AssertUnwindSafe(async move { handler.run(ctx).await }).catch_unwind();
            let outcome = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panic)) => {
                    TaskOutcome::retry(format!("task handler panicked: {}", panic_message(&panic)))
                }
                Err(_) => {
                    TaskOutcome::retry(format!("the attempt timed out after {} ms", timeout.as_millis()))
                }
            };
            Finished { id, attempt, outcome }
        }
        .boxed_local()
    }

    /// Records a batch of outcomes (at most [`MAX_TASK_BATCH`]) in one epoch-fenced write,
    /// coalesced with other partitions' by the worker's [`Outbox`]. Delays are cut to
    /// [`MAX_SCHEDULE_AHEAD`].
    fn flush(&self, batch: Vec<Finished>) -> LocalBoxFuture<'static, Answer> {
        let mut outcomes = PartitionOutcomes::new(self.fence);
        // The delays of the tasks put back for later, each a due-time hint once written.
        let mut delays: BTreeSet<Duration> = BTreeSet::new();
        for f in &batch {
            match &f.outcome {
                TaskOutcome::Done => outcomes.completed.push(f.id),
                TaskOutcome::DoneWith(result) => {
                    outcomes.completed.push(f.id);
                    outcomes.results.push(TaskResult::new(f.id, result.clone()));
                }
                TaskOutcome::Retry { error, delay } => {
                    let delay =
                        delay.unwrap_or_else(|| self.policy.backoff_for(f.attempt)).min(MAX_SCHEDULE_AHEAD);
                    delays.insert(delay);
                    outcomes.failed.push(TaskFailure::retry(f.id, error.clone(), delay));
                }
                TaskOutcome::Fail(error) => outcomes.failed.push(TaskFailure::dead(f.id, error.clone())),
                TaskOutcome::Snooze(delay) => {
                    let delay = (*delay).min(MAX_SCHEDULE_AHEAD);
                    delays.insert(delay);
                    outcomes.retried_later.push(TaskRetry { id: f.id, delay });
                }
            }
        }
        // The write skips the tasks an earlier try of this batch already wrote.
        let written = self.calls.write(outcomes);
        written.map(move |result| Answer::Flushed { batch, result: result.map(|_| delays) }).boxed_local()
    }
}

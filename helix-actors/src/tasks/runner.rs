//! How a worker runs the tasks of its partitions: a [`TaskPartition`] per owned partition of a
//! task queue (a [`PartitionHandler`] like any other, so it inherits the ownership guard, the
//! drain and the restart policy), and one due-time poll per worker ([`TaskPoller`]).
//!
//! Everything here runs on the worker's handler arbiter, except the poller's store calls,
//! which go through the worker's store actor like every other call.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use helix_core::{Epoch, PartitionId, QueueId};
use helix_store::{OwnerFence, Store, StoreError, TaskFailure, TaskId, TaskRecord, TaskRetry};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::handler::{TaskContext, TaskHandler, TaskOutcome};
use super::policy::TaskPolicy;
use crate::worker::{HandlerError, PartitionContext, PartitionHandler, PartitionKey, panic_message};

/// The task queues of one worker and what its partitions share: due-time hints from the
/// poller, the store clock's offset, and the tasks an ended incarnation left claimed.
pub(crate) struct Registry {
    slots: Mutex<HashMap<PartitionKey, Arc<Slot>>>,
    /// The origin of the local milliseconds below (tokio's clock: virtual time in tests).
    origin: Instant,
    /// `store now − local now` in milliseconds, sampled by the poller (`None` until then).
    offset_ms: Mutex<Option<i64>>,
}

/// What one partition of this worker shares with the poller and with its next incarnation.
pub(crate) struct Slot {
    /// The earliest due instant the poller saw (a hint: a claim decides).
    due: Mutex<Option<Instant>>,
    wake: Notify,
    /// Tasks claimed under `epoch` by an incarnation that ended before finishing them
    /// (a drain that timed out, say); the next incarnation at the same epoch fails them first,
    /// since orphan recovery only takes tasks of older epochs.
    orphans: Mutex<Vec<(Epoch, TaskId, u32)>>,
}

impl Registry {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            origin: Instant::now(),
            offset_ms: Mutex::new(None),
        })
    }

    fn slot(&self, key: PartitionKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(key).or_insert_with(|| {
            Arc::new(Slot { due: Mutex::new(None), wake: Notify::new(), orphans: Mutex::new(Vec::new()) })
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

    /// The local instant of a store instant, by the sampled offset.
    fn local(&self, at: DateTime<Utc>, local_now: Instant, store_now_ms: i64) -> Instant {
        let ahead = at.timestamp_millis().saturating_sub(store_now_ms);
        match u64::try_from(ahead) {
            Ok(ms) => local_now + Duration::from_millis(ms),
            Err(_) => local_now,
        }
    }
}

impl Slot {
    fn hint(&self, at: Instant) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        if due.is_none_or(|d| at < d) {
            *due = Some(at);
        }
        drop(due);
        self.wake.notify_one();
    }

    fn take_hint(&self) -> Option<Instant> {
        self.due.lock().unwrap_or_else(|e| e.into_inner()).take()
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
        Self { store, handler, policy, registry, control: Rc::default() }
    }
}

#[async_trait(?Send)]
impl PartitionHandler for TaskPartition {
    /// Recovers the tasks older epochs left running (and those an earlier incarnation at this
    /// epoch left), then starts the claim loop, bound to the ownership.
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        let fence =
            OwnerFence { queue: ctx.queue, partition: ctx.partition, worker: ctx.worker, epoch: ctx.epoch };
        let recovery = self.store.recover_partition_tasks(&fence).await.map_err(HandlerError::from_error)?;
        if !(recovery.requeued.is_empty() && recovery.dead.is_empty() && recovery.cancelled.is_empty()) {
            info!(
                queue = %ctx.queue, partition = %ctx.partition, epoch = %ctx.epoch,
                requeued = recovery.requeued.len(), dead = recovery.dead.len(), cancelled = recovery.cancelled.len(),
                "tasks of an earlier owner recovered"
            );
        }
        let slot = self.registry.slot((ctx.queue, ctx.partition));
        let orphans: Vec<TaskFailure> = {
            let mut orphans = slot.orphans.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *orphans)
                .into_iter()
                .filter(|(epoch, _, _)| *epoch == ctx.epoch)
                .map(|(_, id, attempt)| {
                    TaskFailure::retry(
                        id,
                        "the attempt was abandoned when its partition stopped (a drain that timed out)",
                        self.policy.backoff_for(attempt),
                    )
                })
                .collect()
        };
        if !orphans.is_empty() {
            self.store.fail_tasks(&fence, &orphans).await.map_err(HandlerError::from_error)?;
        }
        let run = Loop {
            store: Arc::clone(&self.store),
            handler: Arc::clone(&self.handler),
            policy: self.policy.clone(),
            fence,
            pctx: ctx.clone(),
            slot,
            control: Rc::clone(&self.control),
            ledger: Ledger::default(),
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

/// One finished attempt, waiting to be recorded.
struct Finished {
    id: TaskId,
    attempt: u32,
    outcome: TaskOutcome,
}

/// The tasks this incarnation claimed and has not recorded: left to the next incarnation at
/// the same epoch when the loop is dropped with some (see [`Slot::orphans`]).
#[derive(Default)]
struct Ledger {
    open: HashMap<TaskId, u32>,
    epoch: Option<(Epoch, Arc<Slot>)>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if let Some((epoch, slot)) = self.epoch.take()
            && !self.open.is_empty()
        {
            let mut orphans = slot.orphans.lock().unwrap_or_else(|e| e.into_inner());
            orphans.retain(|(e, _, _)| *e == epoch);
            orphans.extend(self.open.drain().map(|(id, attempt)| (epoch, id, attempt)));
        }
    }
}

struct Loop {
    store: Arc<dyn Store>,
    handler: Arc<dyn TaskHandler>,
    policy: TaskPolicy,
    fence: OwnerFence,
    pctx: PartitionContext,
    slot: Arc<Slot>,
    control: Rc<Control>,
    ledger: Ledger,
}

/// When the partition may have due work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    At(Instant),
    /// Nothing known: wait for the poller's hint.
    Unknown,
}

/// A claim under way.
type ClaimFuture = LocalBoxFuture<'static, Result<Vec<TaskRecord>, StoreError>>;

/// How a write of outcomes ended: the tasks recorded, or the outcomes it could not write and
/// why.
type FlushResult = Result<Vec<TaskId>, (StoreError, Vec<Finished>)>;

impl Loop {
    async fn run(mut self) {
        self.serve().await;
        self.control.drained.set(true);
        self.control.done.notify_one();
    }

    async fn serve(&mut self) {
        self.ledger.epoch = Some((self.fence.epoch, Arc::clone(&self.slot)));
        let limit = self.policy.in_flight.max(1);
        let claim_at_room = limit.div_ceil(2).max(1);
        let mut running: FuturesUnordered<LocalBoxFuture<'static, Finished>> = FuturesUnordered::new();
        let mut finished: Vec<Finished> = Vec::new();
        let mut claim: Option<(u32, ClaimFuture)> = None;
        let mut flush: Option<LocalBoxFuture<'static, FlushResult>> = None;
        // Tasks may be waiting already: look at once.
        let mut due = Due::At(Instant::now());
        let mut flush_after = Instant::now();
        let mut claims_refused = false;
        loop {
            if let Some(at) = self.slot.take_hint() {
                due = due.min(Due::At(at));
            }
            let now = Instant::now();
            let draining = self.control.draining.get();
            let in_flight = u32::try_from(running.len()).unwrap_or(u32::MAX);
            let room = limit.saturating_sub(in_flight);
            if claim.is_none()
                && !draining
                && !claims_refused
                && room >= claim_at_room
                && matches!(due, Due::At(at) if at <= now)
            {
                let store = Arc::clone(&self.store);
                let fence = self.fence;
                claim = Some((room, async move { store.claim_tasks(&fence, room).await }.boxed_local()));
            }
            if flush.is_none() && !finished.is_empty() && flush_after <= now {
                flush = Some(self.flush(std::mem::take(&mut finished)));
            }
            if draining && running.is_empty() && finished.is_empty() && flush.is_none() && claim.is_none() {
                return;
            }
            let wake_at = match due {
                Due::At(at) if at > now && !draining => Some(at),
                _ => None,
            };
            let wake_at = match (wake_at, finished.is_empty() || flush.is_some()) {
                (Some(at), true) => Some(at),
                (Some(at), false) => Some(at.min(flush_after)),
                (None, false) => Some(flush_after),
                (None, true) => None,
            };
            tokio::select! {
                Some(done) = running.next(), if !running.is_empty() => finished.push(done),
                result = async { claim.as_mut().map(|(_, f)| f).expect("guarded").await }, if claim.is_some() => {
                    let asked = claim.take().map_or(0, |(asked, _)| asked);
                    match result {
                        Ok(tasks) => {
                            let got = tasks.len();
                            for task in tasks {
                                self.ledger.open.insert(task.id, task.attempts);
                                running.push(self.attempt(task));
                            }
                            // A full batch may leave more due: look again when there is room.
                            due = if u32::try_from(got).unwrap_or(u32::MAX) >= asked {
                                Due::At(Instant::now())
                            } else {
                                Due::Unknown
                            };
                        }
                        Err(error) if error.is_fenced() => {
                            // Revoking (no new work) or lost: finish what runs.
                            debug!(fence = %self.fence, %error, "claims refused");
                            claims_refused = true;
                        }
                        Err(error) => {
                            warn!(fence = %self.fence, %error, "claiming tasks failed, trying again");
                            due = Due::At(Instant::now() + self.policy.store_retry);
                        }
                    }
                }
                result = async { flush.as_mut().expect("guarded").await }, if flush.is_some() => {
                    flush = None;
                    match result {
                        Ok(recorded) => {
                            for id in recorded {
                                self.ledger.open.remove(&id);
                            }
                        }
                        Err((error, _)) if error.is_fenced() => {
                            // The partition moved on: the next owner recovers what runs here.
                            info!(fence = %self.fence, %error, "task outcomes fenced, the partition has a new owner");
                            self.ledger.open.clear();
                            return;
                        }
                        Err((error, unwritten)) => {
                            warn!(fence = %self.fence, %error, tasks = unwritten.len(), "recording task outcomes failed, trying again");
                            finished.extend(unwritten);
                            flush_after = Instant::now() + self.policy.store_retry;
                        }
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

    /// Records a batch of outcomes: at most one statement group per kind (completions,
    /// failures, snoozes), each epoch-fenced. Keeps the failed tasks' next due times as hints.
    fn flush(&self, batch: Vec<Finished>) -> LocalBoxFuture<'static, FlushResult> {
        let (store, fence, policy, slot) =
            (Arc::clone(&self.store), self.fence, self.policy.clone(), Arc::clone(&self.slot));
        async move {
            let mut done = Vec::new();
            let mut failures = Vec::new();
            let mut snoozes = Vec::new();
            let mut soonest: Option<Duration> = None;
            for f in &batch {
                match &f.outcome {
                    TaskOutcome::Done => done.push(f.id),
                    TaskOutcome::Retry { error, delay } => {
                        let delay = delay.unwrap_or_else(|| policy.backoff_for(f.attempt));
                        soonest = Some(soonest.map_or(delay, |s| s.min(delay)));
                        failures.push(TaskFailure::retry(f.id, error.clone(), delay));
                    }
                    TaskOutcome::Fail(error) => failures.push(TaskFailure::dead(f.id, error.clone())),
                    TaskOutcome::Snooze(delay) => {
                        soonest = Some(soonest.map_or(*delay, |s| s.min(*delay)));
                        snoozes.push(TaskRetry { id: f.id, delay: *delay });
                    }
                }
            }
            let written = async {
                if !done.is_empty() {
                    store.complete_tasks(&fence, &done).await?;
                    done.clear();
                }
                if !failures.is_empty() {
                    store.fail_tasks(&fence, &failures).await?;
                    failures.clear();
                }
                if !snoozes.is_empty() {
                    store.retry_tasks_later(&fence, &snoozes).await?;
                }
                Ok::<(), StoreError>(())
            }
            .await;
            match written {
                Ok(()) => {
                    if let Some(delay) = soonest {
                        slot.hint(Instant::now() + delay);
                    }
                    Ok(batch.iter().map(|f| f.id).collect())
                }
                // Writes are idempotent per task (a task written once is skipped the next
                // time), so the whole batch is kept for the next try.
                Err(error) => Err((error, batch)),
            }
        }
        .boxed_local()
    }
}

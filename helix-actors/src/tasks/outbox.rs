//! A worker's outbox of task outcomes: the writes of all its partitions' runners coalesced into
//! few store operations ([`Store::record_task_outcomes`], one transaction each).
//!
//! Natural batching, no timer: while one coalesced write is under way, the outcomes that
//! partitions post wait in the outbox; when it ends, everything waiting goes as the next one
//! (at most [`MAX_TASK_BATCH`] task rows in all; a partition's runner posts at most that
//! many at a time). So an idle worker writes a partition's outcomes at once, and a busy one
//! writes the outcomes of many partitions per commit instead of up to three commits per
//! partition.
//!
//! What a partition's runner relies on holds as for its other store calls (`runner::Calls`):
//! - a posted write holds its partition's call lock from before it waits in the outbox until
//!   the coalesced store operation has really ended, even past `store_timeout`: the
//!   partition's next call (a rewrite, a claim, the next runner's recovery) comes after it;
//! - a coalesced write takes one of the worker's `store_concurrency` permits, like any task
//!   operation, and gives it back at `store_timeout` (the smallest of its partitions' queues'
//!   when they differ) if it has not ended by then;
//! - each partition gets its own answer: its outcomes written, or `Fenced` for it alone; a
//!   failure of the whole write (transient, a lost or late answer, an ambiguous commit) is the
//!   answer of every partition in it, each of which writes its outcomes again (a rewrite skips
//!   what was written).
//!
//! Lives on the worker's handler arbiter, with the runners that post to it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use helix_store::{MAX_TASK_BATCH, PartitionOutcomes, Store, StoreError, StoreResult, TaskBatchOutcome};
use tokio::sync::{OwnedMutexGuard, Semaphore, oneshot};
use tracing::debug;

/// The outcomes of one partition, waiting for the next coalesced write.
struct Letter {
    outcomes: PartitionOutcomes,
    /// How long its runner waits for the answer once the write is sent (its `store_timeout`).
    bound: Duration,
    /// The partition's call lock, held until the write that carries the letter has ended.
    held: OwnedMutexGuard<()>,
    answer: oneshot::Sender<StoreResult<TaskBatchOutcome>>,
}

#[derive(Default)]
struct Queue {
    letters: VecDeque<Letter>,
    /// Whether a sender is running (it takes the letters until none is left).
    sending: bool,
}

/// The outcome writes of one worker's partitions, coalesced (see the [module](self)).
pub(crate) struct Outbox {
    store: Arc<dyn Store>,
    /// The worker's task operations' share of the store (`TaskQueues::store_concurrency`).
    permits: Arc<Semaphore>,
    queue: Mutex<Queue>,
}

impl Outbox {
    pub(crate) fn new(store: Arc<dyn Store>, permits: Arc<Semaphore>) -> Arc<Self> {
        Arc::new(Self { store, permits, queue: Mutex::default() })
    }

    /// Posts one partition's outcomes (at most [`MAX_TASK_BATCH`] rows) once `lock`, the
    /// partition's call lock, is free, and answers when the coalesced write that carries them
    /// has answered, or with `Unavailable` once it has been under way for `bound`. The write
    /// is detached from the returned future: it is sent even if that future is dropped.
    pub(crate) fn post(
        self: &Arc<Self>,
        lock: Arc<tokio::sync::Mutex<()>>,
        outcomes: PartitionOutcomes,
        bound: Duration,
    ) -> LocalBoxFuture<'static, StoreResult<TaskBatchOutcome>> {
        debug_assert!(outcomes.len() <= MAX_TASK_BATCH, "a runner posts at most MAX_TASK_BATCH outcomes");
        let (answer, answered) = oneshot::channel();
        let outbox = Arc::clone(self);
        actix::spawn(async move {
            let held = lock.lock_owned().await;
            outbox.enqueue(Letter { outcomes, bound, held, answer });
        });
        async move {
            answered.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable("recording task outcomes ended without an answer".to_owned()))
            })
        }
        .boxed_local()
    }

    fn enqueue(self: Arc<Self>, letter: Letter) {
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.letters.push_back(letter);
            !std::mem::replace(&mut queue.sending, true)
        };
        if start {
            actix::spawn(self.send());
        }
    }

    /// The letters of the next write: the oldest first, as many as fit in
    /// [`MAX_TASK_BATCH`] rows and partitions (at least one); none when the outbox is empty,
    /// and then the sender stops.
    fn next_batch(&self) -> Vec<Letter> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = 0;
        let mut batch = Vec::new();
        while let Some(letter) = queue.letters.front() {
            let len = letter.outcomes.len();
            if !batch.is_empty() && (rows + len > MAX_TASK_BATCH || batch.len() == MAX_TASK_BATCH) {
                break;
            }
            rows += len;
            batch.extend(queue.letters.pop_front());
        }
        if batch.is_empty() {
            queue.sending = false;
        }
        batch
    }

    /// Sends coalesced writes, one at a time, until the outbox is empty.
    async fn send(self: Arc<Self>) {
        loop {
            // The permit first: letters posted while it is awaited join this write.
            // Never closed: the semaphore lives as long as the registry that holds it.
            let permit = Arc::clone(&self.permits).acquire_owned().await;
            let letters = self.next_batch();
            if letters.is_empty() {
                return;
            }
            let bound = letters.iter().map(|l| l.bound).min().unwrap_or(Duration::ZERO);
            let (batches, waiting): (Vec<PartitionOutcomes>, Vec<_>) =
                letters.into_iter().map(|l| (l.outcomes, (l.answer, l.held))).unzip();
            let (partitions, rows) =
                (batches.len(), batches.iter().map(PartitionOutcomes::len).sum::<usize>());
            let store = Arc::clone(&self.store);
            // A store that panics fails this write for each of its partitions (they write
            // again) instead of ending the sender with `sending` still set, which would leave
            // every later letter waiting for good.
            let mut call = Box::pin(
                std::panic::AssertUnwindSafe(async move { store.record_task_outcomes(&batches).await })
                    .catch_unwind()
                    .map(|result| {
                        result.unwrap_or_else(|panic| {
                            Err(StoreError::Database(format!(
                                "recording task outcomes panicked: {}",
                                crate::worker::panic_message(&panic)
                            )))
                        })
                    }),
            );
            match tokio::time::timeout(bound, call.as_mut()).await {
                Ok(result) => {
                    debug!(partitions, rows, ok = result.is_ok(), "task outcomes written");
                    answer(waiting, result);
                }
                Err(_) => {
                    let late =
                        format!("recording task outcomes did not answer within {} ms", bound.as_millis());
                    let (answers, held): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
                    for answer in answers {
                        drop(answer.send(Err(StoreError::Unavailable(late.clone()))));
                    }
                    // The other partitions need not wait for these: the next write may go.
                    drop(permit);
                    // The write may still be applied (the store finishes what it was sent):
                    // its partitions' next calls wait for its end.
                    actix::spawn(async move {
                        drop(call.await);
                        drop(held);
                    });
                }
            }
        }
    }
}

/// Gives every partition of a write its answer, then frees its call lock: its own entry of
/// the store's answer, or the error of the whole write.
fn answer(
    waiting: Vec<(oneshot::Sender<StoreResult<TaskBatchOutcome>>, OwnedMutexGuard<()>)>,
    result: StoreResult<Vec<StoreResult<TaskBatchOutcome>>>,
) {
    let n = waiting.len();
    let answers: Vec<StoreResult<TaskBatchOutcome>> = match result {
        Ok(answers) if answers.len() == n => answers,
        Ok(answers) => {
            let wrong = format!("the store answered {} of {n} partitions' outcomes", answers.len());
            vec![Err(StoreError::Database(wrong)); n]
        }
        Err(error) => vec![Err(error); n],
    };
    for ((sender, held), answer) in waiting.into_iter().zip(answers) {
        // The runner may be gone: its successor recovers what it left.
        drop(sender.send(answer));
        drop(held);
    }
}

//! Conformance cases of the task queue (DESIGN §6, docs/tasks.md), run on every store by
//! [`task_conformance_tests!`](crate::task_conformance_tests).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{Epoch, PartitionId, WorkerId};

use super::{
    Backend, LONG, assert_fenced, assert_invalid, assert_not_found, grant, lead, make_queue, register,
};
use crate::{
    CancelOutcome, CoordinatorFence, Enqueued, MAX_ATTEMPTS_LIMIT, MAX_DEDUP_KEY_BYTES, MAX_LAST_ERROR_BYTES,
    MAX_PAYLOAD_BYTES, MAX_RESULT_BYTES, MAX_SCHEDULE_AHEAD, MAX_TASK_BATCH, NewTask, OwnerFence,
    PartitionOutcomes, PlanChange, QueueRecord, RunAt, Store, StoreError, TaskBatchOutcome, TaskCount,
    TaskFailure, TaskId, TaskResult, TaskRetry, TaskState,
};

/// Instantiates every task conformance case as a `#[tokio::test]` for the backend that
/// `$setup` (an async expression yielding a [`Backend`]) creates; used next to
/// [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! task_conformance_tests {
    ($setup:expr) => {
        $crate::task_conformance_tests!(@cases $setup;
            tasks_enqueue_gives_increasing_ids_and_reads_back,
            tasks_are_claimed_in_priority_run_at_id_order,
            tasks_completion_moves_tasks_to_the_history,
            tasks_failures_retry_then_go_dead_and_an_operator_retries,
            tasks_retry_later_gives_the_attempt_back,
            tasks_dedup_returns_the_unfinished_task,
            tasks_concurrent_dedup_enqueues_make_one_task,
            tasks_cancel_pending_and_running,
            tasks_a_stale_epoch_is_fenced_and_its_tasks_recovered,
            tasks_a_revoking_partition_takes_no_new_claims_but_completes,
            tasks_a_lost_last_attempt_goes_dead_and_the_rest_still_run,
            tasks_bad_input_is_refused_and_changes_nothing,
            tasks_next_due_per_partition,
            tasks_next_due_over_many_partitions,
            tasks_counts_by_partition_and_state,
            tasks_list_pages_by_id,
            tasks_prune_removes_old_finished_tasks,
            tasks_large_batches_are_written_whole,
            tasks_outcomes_of_many_partitions_commit_together,
            tasks_outcomes_of_a_fenced_partition_are_refused_alone,
            tasks_outcomes_touch_only_their_partitions_tasks_of_their_epoch,
            tasks_outcomes_written_again_change_nothing,
            tasks_outcomes_bad_input_is_refused_and_changes_nothing,
            tasks_completion_keeps_a_bounded_result,
        );
    };
    (@cases $setup:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $setup.await;
                $crate::conformance::tasks::$case(&backend).await;
                $crate::conformance::Backend::teardown(&backend).await;
            }
        )*
    };
}

// ---- helpers ------------------------------------------------------------------------------

/// A coordinator and a queue whose partitions the cases grant to workers.
struct Setup {
    queue: QueueRecord,
    coordinator: CoordinatorFence,
}

async fn setup(store: &dyn Store, partitions: u64) -> Setup {
    let queue = make_queue(store, "d", "q", partitions).await;
    let coordinator = lead(store, "main").await;
    Setup { queue, coordinator }
}

impl Setup {
    /// Grants `partition` (currently at `epoch`, unowned) to a new worker; its fence.
    async fn own(&self, store: &dyn Store, partition: u32, epoch: u64) -> OwnerFence {
        let (worker, _) = register(store, &[&self.queue], LONG).await;
        self.grant_to(store, partition, epoch, worker).await
    }

    async fn grant_to(&self, store: &dyn Store, partition: u32, epoch: u64, worker: WorkerId) -> OwnerFence {
        let outcome = store
            .apply_plan(&self.coordinator, self.queue.id, &[grant(partition, epoch, worker)])
            .await
            .expect("grant");
        assert!(outcome.skipped.is_empty(), "grant skipped: {outcome:?}");
        OwnerFence {
            queue: self.queue.id,
            partition: PartitionId(partition),
            worker,
            epoch: Epoch(epoch + 1),
        }
    }
}

fn task(partition: u32, payload: &str) -> NewTask {
    NewTask::new(PartitionId(partition), payload.as_bytes().to_vec())
}

fn keyed(partition: u32, key: &str) -> NewTask {
    NewTask { dedup_key: Some(key.to_owned()), ..task(partition, key) }
}

async fn enqueue(store: &dyn Store, s: &Setup, t: NewTask) -> TaskId {
    let e = store.enqueue_task(s.queue.id, &t).await.expect("enqueue");
    assert!(e.created);
    e.id
}

fn ids(tasks: &[crate::TaskRecord]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

async fn state(store: &dyn Store, id: TaskId) -> TaskState {
    store.get_task(id).await.expect("get_task").state
}

/// Two instants within a second of each other (SQLite keeps milliseconds, and the SQL stores'
/// clocks move while a case runs).
fn close(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() < 1_000
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

// ---- cases ---------------------------------------------------------------------------------

/// Enqueues answer ids that grow in batch order; a task reads back as enqueued, pending.
pub async fn tasks_enqueue_gives_increasing_ids_and_reads_back(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 4).await;
    let before = store.now().await.expect("now");
    let one = NewTask { priority: 7, max_attempts: 3, timeout: Duration::from_secs(9), ..task(2, "first") };
    let first = enqueue(&*store, &s, one.clone()).await;
    let batch = store
        .enqueue_tasks(s.queue.id, &[task(0, "a"), task(3, "b"), task(0, "c")])
        .await
        .expect("enqueue batch");
    assert!(batch.iter().all(|e| e.created));
    let mut seen = vec![first];
    seen.extend(batch.iter().map(|e| e.id));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {seen:?}");

    let t = store.get_task(first).await.expect("get");
    assert_eq!(
        (t.id, t.queue_id, t.partition, t.state),
        (first, s.queue.id, PartitionId(2), TaskState::Pending)
    );
    assert_eq!((t.priority, t.attempts, t.max_attempts, t.timeout), (7, 0, 3, Duration::from_secs(9)));
    assert_eq!((t.payload.as_slice(), t.dedup_key.as_deref()), (b"first".as_slice(), None));
    assert_eq!(
        (t.claimed_epoch, t.claimed_by, t.started_at, t.finished_at, t.last_error.clone()),
        (None, None, None, None, None)
    );
    assert!(close(t.run_at, before) && close(t.created_at, before), "{t:?} vs {before}");
    assert_eq!(store.get_task(batch[1].id).await.expect("get").payload, b"b".to_vec());
    assert!(store.enqueue_tasks(s.queue.id, &[]).await.expect("empty batch").is_empty());
    assert_not_found(store.enqueue_task(helix_core::QueueId(s.queue.id.0 + 1_000), &one).await, "queue");
    assert_not_found(store.get_task(TaskId(first.0 + 1_000)).await, "unknown task");
}

/// A claim takes due pending tasks of its partition only, in (priority, run_at, id) order,
/// up to its limit, and marks them running under the claimer's epoch.
pub async fn tasks_are_claimed_in_priority_run_at_id_order(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 2).await;
    let owner = s.own(&*store, 0, 0).await;
    let now = store.now().await.expect("now");
    let a = enqueue(&*store, &s, task(0, "a")).await;
    let urgent = enqueue(&*store, &s, NewTask { priority: -1, ..task(0, "urgent") }).await;
    let early = enqueue(&*store, &s, NewTask { run_at: RunAt::At(now - hours(1)), ..task(0, "early") }).await;
    let later =
        enqueue(&*store, &s, NewTask { run_at: RunAt::After(Duration::from_secs(3_600)), ..task(0, "x") })
            .await;
    let low = enqueue(&*store, &s, NewTask { priority: 5, ..task(0, "low") }).await;
    let other = enqueue(&*store, &s, task(1, "other partition")).await;

    let first = store.claim_tasks(&owner, 3).await.expect("claim");
    assert_eq!(ids(&first), vec![urgent, early, a]);
    let t = &first[0];
    assert_eq!(
        (t.state, t.attempts, t.claimed_epoch, t.claimed_by),
        (TaskState::Running, 1, Some(owner.epoch), Some(owner.worker))
    );
    let started = t.started_at.expect("started_at");
    assert!(close(started, store.now().await.expect("now")));
    assert!(close(t.deadline_at.expect("deadline"), started + chrono::Duration::seconds(60)));
    assert_eq!(state(&*store, urgent).await, TaskState::Running);

    assert_eq!(ids(&store.claim_tasks(&owner, 10).await.expect("claim")), vec![low]);
    assert!(store.claim_tasks(&owner, 10).await.expect("claim").is_empty());
    assert_eq!(
        (state(&*store, later).await, state(&*store, other).await),
        (TaskState::Pending, TaskState::Pending)
    );
    assert!(store.claim_tasks(&owner, 0).await.expect("claim nothing").is_empty());
}

/// A completion moves the owner's running tasks to the history as DONE; ids it does not
/// hold (unknown, pending, repeated, already done) are skipped and left alone.
pub async fn tasks_completion_moves_tasks_to_the_history(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    let one = enqueue(&*store, &s, task(0, "1")).await;
    let two = enqueue(&*store, &s, task(0, "2")).await;
    assert_eq!(ids(&store.claim_tasks(&owner, 1).await.expect("claim")), vec![one]);
    let unknown = TaskId(two.0 + 1_000);
    let out = store.complete_tasks(&owner, &[one, one, unknown, two]).await.expect("complete");
    assert_eq!(out.applied, vec![(one, TaskState::Done)]);
    assert_eq!(out.skipped, vec![unknown, two]);
    let done = store.get_task(one).await.expect("get");
    assert_eq!((done.state, done.attempts), (TaskState::Done, 1));
    assert!(done.finished_at.is_some());
    assert_eq!(done.payload, b"1".to_vec());
    assert_eq!(state(&*store, two).await, TaskState::Pending);
    let again = store.complete_tasks(&owner, &[one]).await.expect("complete again");
    assert_eq!((again.applied, again.skipped), (vec![], vec![one]));
    assert_eq!(ids(&store.claim_tasks(&owner, 5).await.expect("claim")), vec![two]);
    assert!(store.complete_tasks(&owner, &[]).await.expect("empty").applied.is_empty());
}

/// A failed attempt goes back to pending at now + its delay with its error; the last allowed
/// attempt's failure makes it DEAD with its last error; an operator's retry brings a dead
/// task back with its id.
pub async fn tasks_failures_retry_then_go_dead_and_an_operator_retries(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    let t = enqueue(&*store, &s, NewTask { max_attempts: 2, ..task(0, "flaky") }).await;
    let fail = |error: &str, retry_in| TaskFailure::retry(t, error, retry_in);

    store.claim_tasks(&owner, 1).await.expect("claim");
    let out = store.fail_tasks(&owner, &[fail("boom 1", Duration::from_secs(3_600))]).await.expect("fail");
    assert_eq!(out.applied, vec![(t, TaskState::Pending)]);
    let rec = store.get_task(t).await.expect("get");
    assert_eq!((rec.state, rec.attempts, rec.last_error.as_deref()), (TaskState::Pending, 1, Some("boom 1")));
    assert!(close(rec.run_at, store.now().await.expect("now") + hours(1)));
    assert!(store.claim_tasks(&owner, 1).await.expect("claim").is_empty(), "backing off");

    assert!(
        matches!(store.retry_dead_task(t).await, Err(StoreError::Conflict(_))),
        "retry of a pending task"
    );
    let long = "x".repeat(3 * MAX_LAST_ERROR_BYTES);
    let t2 = enqueue(&*store, &s, NewTask { max_attempts: 1, ..task(0, "once") }).await;
    store.claim_tasks(&owner, 1).await.expect("claim");
    let out = store.fail_tasks(&owner, &[TaskFailure::retry(t2, long, Duration::ZERO)]).await.expect("fail");
    assert_eq!(out.applied, vec![(t2, TaskState::Dead)]);
    let dead = store.get_task(t2).await.expect("get");
    assert_eq!((dead.state, dead.attempts), (TaskState::Dead, 1));
    assert!(dead.last_error.as_ref().is_some_and(|e| e.len() <= MAX_LAST_ERROR_BYTES && e.ends_with('…')));
    assert_eq!(ids(&store.list_tasks(s.queue.id, TaskState::Dead, None, 10).await.expect("list")), vec![t2]);

    let back = store.retry_dead_task(t2).await.expect("operator retry");
    assert_eq!((back.id, back.state, back.attempts), (t2, TaskState::Pending, 0));
    assert_eq!(back.last_error, dead.last_error);
    let again = store.claim_tasks(&owner, 1).await.expect("claim");
    assert_eq!((ids(&again), again[0].attempts), (vec![t2], 1));
    assert!(matches!(store.retry_dead_task(t2).await, Err(StoreError::Conflict(_))), "not dead");
    assert_not_found(store.retry_dead_task(TaskId(t2.0 + 1_000)).await, "unknown task");

    // A permanent failure is dead at once, with attempts left.
    let t3 = enqueue(&*store, &s, NewTask { max_attempts: 5, ..task(0, "malformed") }).await;
    let claimed = store.claim_tasks(&owner, 10).await.expect("claim");
    assert!(ids(&claimed).contains(&t3));
    let out = store.fail_tasks(&owner, &[TaskFailure::dead(t3, "bad input")]).await.expect("fail");
    assert_eq!(out.applied, vec![(t3, TaskState::Dead)]);
    let rec = store.get_task(t3).await.expect("get");
    assert_eq!((rec.state, rec.attempts, rec.last_error.as_deref()), (TaskState::Dead, 1, Some("bad input")));
}

/// A retry-later puts a running task back for later without counting the attempt.
pub async fn tasks_retry_later_gives_the_attempt_back(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    let t = enqueue(&*store, &s, NewTask { max_attempts: 1, ..task(0, "wait") }).await;
    store.claim_tasks(&owner, 1).await.expect("claim");
    let out = store
        .retry_tasks_later(&owner, &[TaskRetry { id: t, delay: Duration::from_secs(7_200) }])
        .await
        .expect("retry later");
    assert_eq!(out.applied, vec![(t, TaskState::Pending)]);
    let rec = store.get_task(t).await.expect("get");
    assert_eq!((rec.state, rec.attempts, rec.last_error), (TaskState::Pending, 0, None));
    assert!(close(rec.run_at, store.now().await.expect("now") + hours(2)));
    assert!(store.claim_tasks(&owner, 1).await.expect("claim").is_empty());

    let now_due = enqueue(&*store, &s, NewTask { max_attempts: 1, ..task(0, "now") }).await;
    store.claim_tasks(&owner, 1).await.expect("claim");
    store
        .retry_tasks_later(&owner, &[TaskRetry { id: now_due, delay: Duration::ZERO }])
        .await
        .expect("retry");
    let again = store.claim_tasks(&owner, 1).await.expect("claim again");
    assert_eq!((ids(&again), again[0].attempts), (vec![now_due], 1), "one attempt allowed, still claimable");
    let ext = store.extend_tasks(&owner, &[now_due], Duration::from_secs(600)).await.expect("extend");
    assert_eq!(ext.applied, vec![(now_due, TaskState::Running)]);
    let deadline = store.get_task(now_due).await.expect("get").deadline_at.expect("deadline");
    assert!(close(deadline, store.now().await.expect("now") + chrono::Duration::seconds(600)));
}

/// A second enqueue with an unfinished task's dedup key answers that task's id, `created:
/// false`, in single and batch enqueues; a finished task frees its key.
pub async fn tasks_dedup_returns_the_unfinished_task(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 2).await;
    let owner = s.own(&*store, 0, 0).await;
    let k = store.enqueue_task(s.queue.id, &keyed(0, "k")).await.expect("enqueue");
    assert!(k.created);
    assert_eq!(
        store.enqueue_task(s.queue.id, &keyed(1, "k")).await.expect("again"),
        Enqueued { id: k.id, created: false }
    );
    let batch = store
        .enqueue_tasks(
            s.queue.id,
            &[task(0, "plain"), keyed(0, "k"), keyed(0, "m"), keyed(0, "m"), keyed(0, "m ")],
        )
        .await
        .expect("batch");
    assert_eq!(batch[1], Enqueued { id: k.id, created: false });
    assert!(batch[0].created && batch[2].created && batch[4].created);
    assert_eq!(batch[3], Enqueued { id: batch[2].id, created: false });
    assert!(batch[0].id < batch[2].id && batch[2].id < batch[4].id);
    assert_eq!(store.get_task(batch[4].id).await.expect("get").dedup_key.as_deref(), Some("m "));
    assert_eq!(store.list_tasks(s.queue.id, TaskState::Pending, None, 100).await.expect("list").len(), 4);

    // The key is free again once its task has finished.
    let claimed = store.claim_tasks(&owner, 1).await.expect("claim");
    assert_eq!(ids(&claimed), vec![k.id]);
    store.complete_tasks(&owner, &[k.id]).await.expect("complete");
    let fresh = store.enqueue_task(s.queue.id, &keyed(0, "k")).await.expect("enqueue after finish");
    assert!(fresh.created && fresh.id != k.id);
    // Keys are per queue.
    let other = make_queue(&*store, "d", "other", 1).await;
    assert!(store.enqueue_task(other.id, &keyed(0, "k")).await.expect("other queue").created);
}

/// Concurrent enqueues of one dedup key create exactly one task, and all answer its id.
pub async fn tasks_concurrent_dedup_enqueues_make_one_task(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let calls = (0..8).map(|_| {
        let store = store.clone();
        let q = s.queue.id;
        tokio::spawn(async move { store.enqueue_task(q, &keyed(0, "same")).await })
    });
    let answers: Vec<Enqueued> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("join").expect("enqueue"))
        .collect();
    assert_eq!(answers.iter().filter(|e| e.created).count(), 1, "{answers:?}");
    assert!(answers.iter().all(|e| e.id == answers[0].id), "{answers:?}");
    assert_eq!(store.list_tasks(s.queue.id, TaskState::Pending, None, 100).await.expect("list").len(), 1);
}

/// A pending task is cancelled at once; a running one is marked so that its owner's
/// completion ends it as CANCELLED; a finished one is left alone.
pub async fn tasks_cancel_pending_and_running(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    let running = enqueue(&*store, &s, task(0, "running")).await;
    let extended = enqueue(&*store, &s, task(0, "extended")).await;
    let pending = enqueue(&*store, &s, task(0, "pending")).await;
    assert_eq!(ids(&store.claim_tasks(&owner, 2).await.expect("claim")), vec![running, extended]);

    assert_eq!(store.cancel_task(pending).await.expect("cancel"), CancelOutcome::Cancelled);
    assert_eq!(state(&*store, pending).await, TaskState::Cancelled);
    assert!(store.claim_tasks(&owner, 5).await.expect("claim").is_empty(), "cancelled tasks never run");

    assert_eq!(store.cancel_task(running).await.expect("cancel"), CancelOutcome::Requested);
    assert_eq!(store.cancel_task(extended).await.expect("cancel"), CancelOutcome::Requested);
    assert_eq!(state(&*store, running).await, TaskState::Cancelling);
    let ext = store.extend_tasks(&owner, &[extended], Duration::from_secs(5)).await.expect("extend");
    assert_eq!(ext.applied, vec![(extended, TaskState::Cancelling)], "the owner learns it should stop");
    let out = store.complete_tasks(&owner, &[running]).await.expect("complete");
    assert_eq!(out.applied, vec![(running, TaskState::Cancelled)]);
    let failure = TaskFailure::retry(extended, "stopped", Duration::ZERO);
    assert_eq!(
        store.fail_tasks(&owner, &[failure]).await.expect("fail").applied,
        vec![(extended, TaskState::Cancelled)]
    );
    assert_eq!(state(&*store, running).await, TaskState::Cancelled);

    assert_eq!(
        store.cancel_task(running).await.expect("cancel"),
        CancelOutcome::AlreadyFinished(TaskState::Cancelled)
    );
    assert_not_found(store.cancel_task(TaskId(pending.0 + 1_000)).await, "unknown task");
}

/// After a partition changes hands, the old owner's claims and completions are fenced; the
/// new owner's recovery puts the task it left running back, and the task runs again there.
pub async fn tasks_a_stale_epoch_is_fenced_and_its_tasks_recovered(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let old = s.own(&*store, 0, 0).await;
    let t = enqueue(&*store, &s, NewTask { max_attempts: 3, ..task(0, "t") }).await;
    let behind = enqueue(&*store, &s, task(0, "behind")).await;
    assert_eq!(ids(&store.claim_tasks(&old, 1).await.expect("claim")), vec![t]);
    let released =
        store.release_partition(s.queue.id, PartitionId(0), old.worker, old.epoch).await.expect("release");

    assert_fenced(store.complete_tasks(&old, &[t]).await, "complete under a stale epoch");
    assert_fenced(store.claim_tasks(&old, 1).await, "claim under a stale epoch");
    let failure = TaskFailure::retry(t, "late", Duration::ZERO);
    assert_fenced(store.fail_tasks(&old, std::slice::from_ref(&failure)).await, "fail under a stale epoch");
    assert_fenced(
        store.retry_tasks_later(&old, &[TaskRetry { id: t, delay: Duration::ZERO }]).await,
        "retry",
    );
    assert_fenced(store.extend_tasks(&old, &[t], Duration::from_secs(1)).await, "extend");
    assert_fenced(store.recover_partition_tasks(&old).await, "recover under a stale epoch");
    assert_eq!(state(&*store, t).await, TaskState::Running, "fenced writes change nothing");

    let new = s.own(&*store, 0, released.0).await;
    let early = store.complete_tasks(&new, &[t]).await.expect("complete before recovery");
    assert_eq!(
        (early.applied, early.skipped),
        (vec![], vec![t]),
        "claimed under another epoch: not the new owner's"
    );
    let recovery = store.recover_partition_tasks(&new).await.expect("recover");
    assert_eq!((recovery.requeued, recovery.dead, recovery.cancelled), (vec![t], vec![], vec![]));
    let rec = store.get_task(t).await.expect("get");
    assert_eq!((rec.state, rec.attempts), (TaskState::Pending, 1));
    assert!(rec.last_error.as_deref().is_some_and(|e| e.contains("lost")), "{:?}", rec.last_error);
    assert!(store.recover_partition_tasks(&new).await.expect("again").requeued.is_empty(), "idempotent");

    let again = store.claim_tasks(&new, 5).await.expect("claim");
    assert_eq!(ids(&again), vec![t, behind], "the recovered task keeps its place");
    assert_eq!(
        (again[0].attempts, again[0].claimed_epoch, again[0].claimed_by),
        (2, Some(new.epoch), Some(new.worker))
    );
    assert_fenced(store.complete_tasks(&old, &[t]).await, "the old owner still cannot complete");
    // An owner that starts over at its own epoch (its earlier run of the partition ended with
    // the task claimed) recovers its own epoch's tasks too; its stale completion is skipped.
    let recovered = store.recover_partition_tasks(&new).await.expect("recover");
    assert_eq!(recovered.requeued, vec![t, behind], "the tasks of the owner's own epoch are recovered");
    assert!(store.complete_tasks(&new, &[t]).await.expect("complete").skipped.contains(&t));
    let third = store.claim_tasks(&new, 5).await.expect("claim");
    assert_eq!((ids(&third), third[0].attempts), (vec![t, behind], 3));
    let done = store.complete_tasks(&new, &[t, behind]).await.expect("complete").applied;
    assert_eq!(done, vec![(t, TaskState::Done), (behind, TaskState::Done)]);

    // The same worker under a newer epoch (as after adopting its rows again) is a new owner:
    // its older epoch stays fenced.
    let released =
        store.release_partition(s.queue.id, PartitionId(0), new.worker, new.epoch).await.expect("release");
    let adopted = s.grant_to(&*store, 0, released.0, old.worker).await;
    assert_eq!(adopted.worker, old.worker);
    assert_fenced(store.claim_tasks(&old, 1).await, "the same worker under its older epoch");
    assert_fenced(store.complete_tasks(&old, &[behind]).await, "the same worker under its older epoch");
    assert!(store.claim_tasks(&adopted, 1).await.expect("claim under the new epoch").is_empty());
}

/// A REVOKING partition takes no new claims, but its owner may still finish what it runs.
pub async fn tasks_a_revoking_partition_takes_no_new_claims_but_completes(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    let (target, _) = register(&*store, &[&s.queue], LONG).await;
    let running = enqueue(&*store, &s, task(0, "running")).await;
    let waiting = enqueue(&*store, &s, task(0, "waiting")).await;
    store.claim_tasks(&owner, 1).await.expect("claim");
    let revoke =
        PlanChange::Revoke { partition: PartitionId(0), expected_epoch: owner.epoch, to: Some(target) };
    store.apply_plan(&s.coordinator, s.queue.id, &[revoke]).await.expect("revoke");
    assert_fenced(store.claim_tasks(&owner, 1).await, "claim while revoking");
    assert_eq!(
        store.complete_tasks(&owner, &[running]).await.expect("complete").applied,
        vec![(running, TaskState::Done)]
    );
    let epoch = store.handoff(s.queue.id, PartitionId(0), owner.worker, owner.epoch).await.expect("handoff");
    let next = OwnerFence { worker: target, epoch, ..owner };
    assert_eq!(ids(&store.claim_tasks(&next, 5).await.expect("claim")), vec![waiting]);
}

/// A task whose last allowed attempt was lost with its owner goes DEAD when the partition is
/// recovered, with a clear last error, and the tasks behind it still run.
pub async fn tasks_a_lost_last_attempt_goes_dead_and_the_rest_still_run(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let old = s.own(&*store, 0, 0).await;
    let last = enqueue(&*store, &s, NewTask { max_attempts: 1, ..task(0, "poison") }).await;
    let cancelled = enqueue(&*store, &s, task(0, "cancelled while running")).await;
    let behind = enqueue(&*store, &s, task(0, "behind")).await;
    assert_eq!(ids(&store.claim_tasks(&old, 2).await.expect("claim")), vec![last, cancelled]);
    store.cancel_task(cancelled).await.expect("cancel");
    let released =
        store.release_partition(s.queue.id, PartitionId(0), old.worker, old.epoch).await.expect("release");
    let new = s.own(&*store, 0, released.0).await;

    let recovery = store.recover_partition_tasks(&new).await.expect("recover");
    assert_eq!((recovery.requeued, recovery.dead, recovery.cancelled), (vec![], vec![last], vec![cancelled]));
    let dead = store.get_task(last).await.expect("get");
    assert_eq!((dead.state, dead.attempts), (TaskState::Dead, 1));
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("attempt 1 of 1") && error.contains("lost"), "{error}");
    assert_eq!(ids(&store.claim_tasks(&new, 5).await.expect("claim")), vec![behind]);
}

/// Every limit is enforced with `Invalid` (or `NotFound` for an unknown queue), and a batch
/// with one bad task writes nothing.
pub async fn tasks_bad_input_is_refused_and_changes_nothing(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 4).await;
    let owner = s.own(&*store, 0, 0).await;
    let now = store.now().await.expect("now");
    let good = task(0, "good");
    let bad: Vec<(&str, NewTask)> = vec![
        ("payload over the limit", NewTask { payload: vec![0; MAX_PAYLOAD_BYTES + 1], ..good.clone() }),
        ("max attempts 0", NewTask { max_attempts: 0, ..good.clone() }),
        ("max attempts over the limit", NewTask { max_attempts: MAX_ATTEMPTS_LIMIT + 1, ..good.clone() }),
        ("partition out of range", task(4, "p4")),
        (
            "dedup key over the limit",
            NewTask { dedup_key: Some("k".repeat(MAX_DEDUP_KEY_BYTES + 1)), ..good.clone() },
        ),
        ("empty dedup key", NewTask { dedup_key: Some(String::new()), ..good.clone() }),
        (
            "run_at before 1970",
            NewTask { run_at: RunAt::At(DateTime::<Utc>::UNIX_EPOCH - hours(1)), ..good.clone() },
        ),
        (
            "run_at absurdly far ahead",
            NewTask { run_at: RunAt::At(now + hours(24 * 365 * 11)), ..good.clone() },
        ),
        (
            "delay over the limit",
            NewTask { run_at: RunAt::After(MAX_SCHEDULE_AHEAD + Duration::from_secs(1)), ..good.clone() },
        ),
        ("zero timeout", NewTask { timeout: Duration::ZERO, ..good.clone() }),
    ];
    for (what, task) in &bad {
        assert_invalid(store.enqueue_task(s.queue.id, task).await, what);
        assert_invalid(store.enqueue_tasks(s.queue.id, &[good.clone(), task.clone()]).await, what);
    }
    let edge = NewTask {
        payload: vec![1; MAX_PAYLOAD_BYTES],
        max_attempts: MAX_ATTEMPTS_LIMIT,
        dedup_key: Some("é".repeat(MAX_DEDUP_KEY_BYTES / 2)),
        run_at: RunAt::At(DateTime::<Utc>::UNIX_EPOCH),
        ..task(3, "")
    };
    assert_eq!(store.task_counts(s.queue.id).await.expect("counts"), vec![], "nothing was written");
    let unknown = helix_core::QueueId(s.queue.id.0 + 1_000);
    assert_not_found(store.enqueue_task(unknown, &good).await, "unknown queue");
    assert_invalid(store.enqueue_tasks(s.queue.id, &vec![good.clone(); MAX_TASK_BATCH + 1]).await, "batch");
    assert_invalid(store.claim_tasks(&owner, MAX_TASK_BATCH as u32 + 1).await, "claim limit");
    let too_late = TaskFailure::retry(TaskId(1), String::new(), MAX_SCHEDULE_AHEAD * 2);
    assert_invalid(store.fail_tasks(&owner, &[too_late]).await, "retry delay");
    assert_invalid(
        store.retry_tasks_later(&owner, &[TaskRetry { id: TaskId(1), delay: MAX_SCHEDULE_AHEAD * 2 }]).await,
        "delay",
    );
    assert_invalid(
        store.extend_tasks(&owner, &[TaskId(1)], Duration::from_secs(100 * 86_400)).await,
        "extension",
    );
    assert_invalid(
        store.list_tasks(s.queue.id, TaskState::Pending, None, MAX_TASK_BATCH as u32 + 1).await,
        "page",
    );
    assert_eq!(store.task_counts(s.queue.id).await.expect("counts"), vec![], "nothing was written");

    // The limits themselves are allowed.
    let id = enqueue(&*store, &s, edge.clone()).await;
    let stored = store.get_task(id).await.expect("get");
    assert_eq!(
        (stored.payload.len(), stored.dedup_key, stored.run_at),
        (MAX_PAYLOAD_BYTES, edge.dedup_key, DateTime::<Utc>::UNIX_EPOCH)
    );
}

/// The next due time of each partition is its earliest pending `run_at`; running tasks and
/// partitions without pending tasks do not count.
pub async fn tasks_next_due_per_partition(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 4).await;
    let owner = s.own(&*store, 3, 0).await;
    let now = store.now().await.expect("now");
    let at = |h: i64| RunAt::At(now + hours(h));
    for (p, h) in [(0, 2), (0, 1), (1, -1), (3, -2)] {
        enqueue(&*store, &s, NewTask { run_at: at(h), priority: -h as i32, ..task(p, "t") }).await;
    }
    enqueue(&*store, &s, NewTask { run_at: at(5), ..task(3, "later") }).await;
    assert_eq!(store.claim_tasks(&owner, 1).await.expect("claim").len(), 1, "partition 3's due task runs");
    let partitions: Vec<PartitionId> = (0..4).map(PartitionId).collect();
    let due = store.next_due(s.queue.id, &partitions).await.expect("next due");
    assert_eq!(due.keys().copied().collect::<Vec<_>>(), vec![PartitionId(0), PartitionId(1), PartitionId(3)]);
    assert!(close(due[&PartitionId(0)], now + hours(1)), "{due:?}");
    assert!(close(due[&PartitionId(1)], now - hours(1)), "{due:?}");
    assert!(close(due[&PartitionId(3)], now + hours(5)), "{due:?}");
    let only = store.next_due(s.queue.id, &[PartitionId(1), PartitionId(2)]).await.expect("next due");
    assert_eq!(only.keys().copied().collect::<Vec<_>>(), vec![PartitionId(1)]);
    assert!(store.next_due(s.queue.id, &[]).await.expect("none").is_empty());
}

/// The next due time over more partitions than one statement's chunk (SQLite compounds at
/// most 500 terms) answers each partition that has a pending task, and only those.
pub async fn tasks_next_due_over_many_partitions(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1_200).await;
    let now = store.now().await.expect("now");
    for (p, h) in [(0, 1), (499, 2), (500, 3), (1_199, 4)] {
        enqueue(&*store, &s, NewTask { run_at: RunAt::At(now + hours(h)), ..task(p, "t") }).await;
    }
    let partitions: Vec<PartitionId> = (0..1_200).map(PartitionId).collect();
    let due = store.next_due(s.queue.id, &partitions).await.expect("next due");
    assert_eq!(
        due.keys().copied().collect::<Vec<_>>(),
        vec![PartitionId(0), PartitionId(499), PartitionId(500), PartitionId(1_199)]
    );
    assert!(close(due[&PartitionId(1_199)], now + hours(4)), "{due:?}");
}

/// Counts per (partition, state) cover the hot table and the history.
pub async fn tasks_counts_by_partition_and_state(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 2).await;
    let owner = s.own(&*store, 0, 0).await;
    for _ in 0..4 {
        enqueue(&*store, &s, task(0, "p0")).await;
    }
    enqueue(&*store, &s, task(1, "p1")).await;
    let claimed = ids(&store.claim_tasks(&owner, 3).await.expect("claim"));
    store.complete_tasks(&owner, &claimed[..1]).await.expect("complete");
    store.cancel_task(claimed[1]).await.expect("cancel");
    let count = |p, state, count| TaskCount { partition: PartitionId(p), state, count };
    assert_eq!(
        store.task_counts(s.queue.id).await.expect("counts"),
        vec![
            count(0, TaskState::Pending, 1),
            count(0, TaskState::Running, 1),
            count(0, TaskState::Cancelling, 1),
            count(0, TaskState::Done, 1),
            count(1, TaskState::Pending, 1),
        ]
    );
}

/// Listing pages through one state in id order with a keyset on id.
pub async fn tasks_list_pages_by_id(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 3).await;
    let owner = s.own(&*store, 2, 0).await;
    let mut pending = Vec::new();
    for i in 0..7 {
        pending.push(enqueue(&*store, &s, task(i % 2, "t")).await);
    }
    let running = enqueue(&*store, &s, task(2, "r")).await;
    store.claim_tasks(&owner, 1).await.expect("claim");
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_tasks(s.queue.id, TaskState::Pending, after, 3).await.expect("list");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|t| t.id);
        pages.push(ids(&page));
    }
    assert_eq!(pages, vec![pending[..3].to_vec(), pending[3..6].to_vec(), pending[6..].to_vec()]);
    assert_eq!(
        ids(&store.list_tasks(s.queue.id, TaskState::Running, None, 10).await.expect("list")),
        vec![running]
    );
    assert!(store.list_tasks(s.queue.id, TaskState::Done, None, 10).await.expect("list").is_empty());
    let by_key: BTreeMap<TaskId, PartitionId> = store
        .list_tasks(s.queue.id, TaskState::Pending, None, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|t| (t.id, t.partition))
        .collect();
    assert_eq!(by_key.len(), 7);
}

/// Retention deletes finished tasks older than the cutoff, oldest first, at most `limit` at
/// a time, and never an unfinished one.
pub async fn tasks_prune_removes_old_finished_tasks(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    for _ in 0..3 {
        enqueue(&*store, &s, task(0, "done")).await;
    }
    let done = ids(&store.claim_tasks(&owner, 3).await.expect("claim"));
    store.complete_tasks(&owner, &done).await.expect("complete");
    let pending = enqueue(&*store, &s, task(0, "pending")).await;
    assert_eq!(store.prune_tasks(Duration::from_secs(3_600), 10).await.expect("prune"), 0, "too recent");
    b.advance(Duration::from_millis(300)).await;
    assert_eq!(store.prune_tasks(Duration::from_millis(100), 2).await.expect("prune"), 2);
    assert_eq!(store.prune_tasks(Duration::from_millis(100), 2).await.expect("prune"), 1);
    assert_eq!(store.prune_tasks(Duration::from_millis(100), 2).await.expect("prune"), 0);
    assert_not_found(store.get_task(done[0]).await, "pruned task");
    assert_eq!(state(&*store, pending).await, TaskState::Pending);
    assert_eq!(store.prune_tasks(Duration::MAX, 10).await.expect("prune with a huge cutoff"), 0);
}

/// Claims and owner writes of thousands of tasks at once (past SQLite's 500 terms of a
/// compound SELECT, and past MySQL's chunks) write every task.
pub async fn tasks_large_batches_are_written_whole(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let owner = s.own(&*store, 0, 0).await;
    let batch: Vec<NewTask> = (0..2_400).map(|i| task(0, &format!("t{i}"))).collect();
    store.enqueue_tasks(s.queue.id, &batch).await.expect("enqueue");
    let claimed = store.claim_tasks(&owner, 2_400).await.expect("claim");
    assert_eq!(claimed.len(), 2_400);
    let (done, rest) = claimed.split_at(1_200);
    let (failed, snoozed) = rest.split_at(600);
    let out = store.complete_tasks(&owner, &ids(done)).await.expect("complete");
    assert_eq!(out.applied.len(), 1_200);
    let failures: Vec<TaskFailure> =
        failed.iter().map(|t| TaskFailure::retry(t.id, "again", Duration::from_secs(3_600))).collect();
    assert_eq!(store.fail_tasks(&owner, &failures).await.expect("fail").applied.len(), 600);
    let retries: Vec<TaskRetry> =
        snoozed.iter().map(|t| TaskRetry { id: t.id, delay: Duration::from_secs(3_600) }).collect();
    assert_eq!(store.retry_tasks_later(&owner, &retries).await.expect("retry later").applied.len(), 600);
    let counts = store.task_counts(s.queue.id).await.expect("counts");
    let count = |state| counts.iter().filter(|c| c.state == state).map(|c| c.count).sum::<u64>();
    assert_eq!(
        (count(TaskState::Done), count(TaskState::Pending), count(TaskState::Running)),
        (1_200, 1_200, 0)
    );
}

// ---- outcomes of many partitions at once ----------------------------------------------------

/// `partitions` partitions of a new queue granted to one worker (from epoch 0); their fences.
async fn own_all(store: &dyn Store, s: &Setup, partitions: u32) -> Vec<OwnerFence> {
    let (worker, _) = register(store, &[&s.queue], LONG).await;
    let mut fences = Vec::new();
    for p in 0..partitions {
        fences.push(s.grant_to(store, p, 0, worker).await);
    }
    fences
}

/// Enqueues one task per payload in the fence's partition and claims them; their ids.
async fn running(store: &dyn Store, s: &Setup, fence: &OwnerFence, payloads: &[&str]) -> Vec<TaskId> {
    let mut out = Vec::new();
    for payload in payloads {
        let t = NewTask { max_attempts: 3, ..task(fence.partition.0, payload) };
        out.push(enqueue(store, s, t).await);
    }
    let claimed = store.claim_tasks(fence, 100).await.expect("claim");
    assert_eq!(ids(&claimed), out);
    out
}

fn answered(answers: &[Result<TaskBatchOutcome, StoreError>], i: usize) -> TaskBatchOutcome {
    answers[i].clone().unwrap_or_else(|e| panic!("partition {i}: {e}"))
}

/// One call records completions, failures and retries of several partitions of one worker,
/// each as its single-kind write would; the answers come per partition, in order; a task
/// listed twice counts once, by its first kind.
pub async fn tasks_outcomes_of_many_partitions_commit_together(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 3).await;
    let f = own_all(&*store, &s, 3).await;
    let p0 = running(&*store, &s, &f[0], &["done", "failed", "twice"]).await;
    let p1 = running(&*store, &s, &f[1], &["later"]).await;
    let p2 = running(&*store, &s, &f[2], &["done", "dead"]).await;
    let hour = Duration::from_secs(3_600);
    let batches = vec![
        PartitionOutcomes {
            completed: vec![p0[0], p0[2]],
            failed: vec![TaskFailure::retry(p0[1], "boom", hour), TaskFailure::dead(p0[2], "listed twice")],
            ..PartitionOutcomes::new(f[0])
        },
        PartitionOutcomes {
            retried_later: vec![TaskRetry { id: p1[0], delay: hour * 2 }],
            ..PartitionOutcomes::new(f[1])
        },
        PartitionOutcomes {
            completed: vec![p2[0]],
            failed: vec![TaskFailure::dead(p2[1], "bad input")],
            ..PartitionOutcomes::new(f[2])
        },
    ];
    let answers = store.record_task_outcomes(&batches).await.expect("record");
    assert_eq!(answers.len(), 3);
    let a0 = answered(&answers, 0);
    assert_eq!(
        a0.applied,
        vec![(p0[0], TaskState::Done), (p0[2], TaskState::Done), (p0[1], TaskState::Pending)]
    );
    assert_eq!(a0.skipped, Vec::<TaskId>::new(), "a repeat is neither written twice nor skipped");
    assert_eq!(answered(&answers, 1).applied, vec![(p1[0], TaskState::Pending)]);
    assert_eq!(answered(&answers, 2).applied, vec![(p2[0], TaskState::Done), (p2[1], TaskState::Dead)]);

    let now = store.now().await.expect("now");
    for id in [p0[0], p0[2], p2[0]] {
        let t = store.get_task(id).await.expect("get");
        assert_eq!((t.state, t.attempts), (TaskState::Done, 1), "{t:?}");
        assert!(t.finished_at.is_some());
    }
    let failed = store.get_task(p0[1]).await.expect("get");
    assert_eq!(
        (failed.state, failed.attempts, failed.last_error.as_deref()),
        (TaskState::Pending, 1, Some("boom"))
    );
    assert!(close(failed.run_at, now + hours(1)), "{failed:?}");
    let later = store.get_task(p1[0]).await.expect("get");
    assert_eq!((later.state, later.attempts, later.last_error.as_deref()), (TaskState::Pending, 0, None));
    assert!(close(later.run_at, now + hours(2)), "{later:?}");
    let dead = store.get_task(p2[1]).await.expect("get");
    assert_eq!(
        (dead.state, dead.attempts, dead.last_error.as_deref()),
        (TaskState::Dead, 1, Some("bad input"))
    );
    assert!(store.record_task_outcomes(&[]).await.expect("nothing").is_empty());
}

/// A partition whose fence no longer holds (another epoch, released, owned by someone else,
/// failed) is answered `Fenced` and nothing of it is written, while the other partitions of
/// the same call commit; a REVOKING partition still records its outcomes.
pub async fn tasks_outcomes_of_a_fenced_partition_are_refused_alone(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 6).await;
    let f = own_all(&*store, &s, 6).await;
    let mut tasks = Vec::new();
    for fence in &f {
        tasks.push(running(&*store, &s, fence, &["t"]).await[0]);
    }
    let (other, _) = register(&*store, &[&s.queue], LONG).await;
    // 1: a stale epoch; 2: released; 3: another worker's fence; 4: revoking; 5: failed.
    let stale = OwnerFence { epoch: Epoch(f[1].epoch.0 + 1), ..f[1] };
    store.release_partition(s.queue.id, PartitionId(2), f[2].worker, f[2].epoch).await.expect("release");
    let foreign = OwnerFence { worker: other, ..f[3] };
    let revoke =
        PlanChange::Revoke { partition: PartitionId(4), expected_epoch: f[4].epoch, to: Some(other) };
    store.apply_plan(&s.coordinator, s.queue.id, &[revoke]).await.expect("revoke");
    store
        .fail_partition(s.queue.id, PartitionId(5), f[5].worker, f[5].epoch, &serde_json::json!({}))
        .await
        .expect("fail partition");
    let fences = [f[0], stale, f[2], foreign, f[4], f[5]];
    let batches: Vec<PartitionOutcomes> = fences
        .iter()
        .zip(&tasks)
        .map(|(fence, id)| PartitionOutcomes { completed: vec![*id], ..PartitionOutcomes::new(*fence) })
        .collect();
    let answers = store.record_task_outcomes(&batches).await.expect("record");
    assert_eq!(answered(&answers, 0).applied, vec![(tasks[0], TaskState::Done)]);
    for (i, what) in
        [(1, "a stale epoch"), (2, "a released partition"), (3, "another worker"), (5, "a failed partition")]
    {
        assert_fenced(answers[i].clone(), what);
        assert_eq!(state(&*store, tasks[i]).await, TaskState::Running, "{what}: nothing written");
    }
    assert_eq!(answered(&answers, 4).applied, vec![(tasks[4], TaskState::Done)], "revoking may finish");
    assert_eq!(state(&*store, tasks[0]).await, TaskState::Done);

    // A call where no fence holds writes nothing and answers each.
    let answers = store.record_task_outcomes(&batches[1..4]).await.expect("record");
    assert!(answers.iter().all(|a| matches!(a, Err(StoreError::Fenced(_)))), "{answers:?}");
}

/// Under a partition, only its own tasks claimed under its epoch and still running are
/// written: a task of another partition, one claimed under an older epoch, a pending one,
/// an unknown id are skipped and left as they were.
pub async fn tasks_outcomes_touch_only_their_partitions_tasks_of_their_epoch(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 2).await;
    let f = own_all(&*store, &s, 2).await;
    let old = running(&*store, &s, &f[0], &["older epoch"]).await[0];
    // Partition 0 moves on to a new epoch of the same worker, its task left running.
    let released =
        store.release_partition(s.queue.id, PartitionId(0), f[0].worker, f[0].epoch).await.expect("release");
    let now0 = s.grant_to(&*store, 0, released.0, f[0].worker).await;
    let mine = running(&*store, &s, &now0, &["mine"]).await[0];
    let pending = enqueue(&*store, &s, task(0, "pending")).await;
    let elsewhere = running(&*store, &s, &f[1], &["partition 1"]).await[0];
    let unknown = TaskId(pending.0 + 1_000);
    let batch = PartitionOutcomes {
        completed: vec![old, elsewhere, mine],
        failed: vec![TaskFailure::dead(pending, "not running"), TaskFailure::dead(unknown, "unknown")],
        retried_later: vec![TaskRetry { id: elsewhere, delay: Duration::ZERO }],
        ..PartitionOutcomes::new(now0)
    };
    let answers = store.record_task_outcomes(&[batch]).await.expect("record");
    let a = answered(&answers, 0);
    assert_eq!(a.applied, vec![(mine, TaskState::Done)]);
    assert_eq!(a.skipped, vec![old, elsewhere, pending, unknown]);
    let t = store.get_task(old).await.expect("get");
    assert_eq!((t.state, t.claimed_epoch), (TaskState::Running, Some(f[0].epoch)));
    let t = store.get_task(elsewhere).await.expect("get");
    assert_eq!((t.state, t.attempts), (TaskState::Running, 1));
    let t = store.get_task(pending).await.expect("get");
    assert_eq!((t.state, t.attempts, t.last_error), (TaskState::Pending, 0, None));
}

/// Writing the same outcomes again (a rewrite after a lost answer) changes nothing: every
/// task is skipped, its state, due time and error stay as the first write left them.
pub async fn tasks_outcomes_written_again_change_nothing(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 2).await;
    let f = own_all(&*store, &s, 2).await;
    let p0 = running(&*store, &s, &f[0], &["done", "failed"]).await;
    let p1 = running(&*store, &s, &f[1], &["later"]).await;
    let batches = vec![
        PartitionOutcomes {
            completed: vec![p0[0]],
            failed: vec![TaskFailure::retry(p0[1], "boom", Duration::from_secs(60))],
            ..PartitionOutcomes::new(f[0])
        },
        PartitionOutcomes {
            retried_later: vec![TaskRetry { id: p1[0], delay: Duration::from_secs(120) }],
            ..PartitionOutcomes::new(f[1])
        },
    ];
    store.record_task_outcomes(&batches).await.expect("record");
    let mut before = Vec::new();
    for id in p0.iter().chain(&p1) {
        before.push(store.get_task(*id).await.expect("get"));
    }
    let again = store.record_task_outcomes(&batches).await.expect("record again");
    assert_eq!(answered(&again, 0), TaskBatchOutcome { applied: vec![], skipped: p0.clone() });
    assert_eq!(answered(&again, 1), TaskBatchOutcome { applied: vec![], skipped: p1.clone() });
    for (id, was) in p0.iter().chain(&p1).zip(before) {
        assert_eq!(store.get_task(*id).await.expect("get"), was, "task {id} unchanged");
    }
}

/// More than `MAX_TASK_BATCH` task rows in all (even spread over partitions under the limit
/// each), a partition listed twice, or a delay past the limit refuse the whole call with
/// `Invalid` and write nothing.
pub async fn tasks_outcomes_bad_input_is_refused_and_changes_nothing(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 2).await;
    let f = own_all(&*store, &s, 2).await;
    let p0 = running(&*store, &s, &f[0], &["t"]).await[0];
    let p1 = running(&*store, &s, &f[1], &["t"]).await[0];
    let good =
        |fence: OwnerFence, id| PartitionOutcomes { completed: vec![id], ..PartitionOutcomes::new(fence) };
    let half = MAX_TASK_BATCH / 2 + 1;
    let over = vec![
        PartitionOutcomes { completed: vec![p0; half], ..PartitionOutcomes::new(f[0]) },
        PartitionOutcomes { completed: vec![p1; half], ..PartitionOutcomes::new(f[1]) },
    ];
    assert_invalid(store.record_task_outcomes(&over).await, "rows over the limit in all");
    assert_invalid(store.record_task_outcomes(&[good(f[0], p0), good(f[0], p0)]).await, "a partition twice");
    let late = PartitionOutcomes {
        failed: vec![TaskFailure::retry(p1, "late", MAX_SCHEDULE_AHEAD * 2)],
        ..PartitionOutcomes::new(f[1])
    };
    assert_invalid(store.record_task_outcomes(&[good(f[0], p0), late]).await, "retry delay");
    let later = PartitionOutcomes {
        retried_later: vec![TaskRetry { id: p1, delay: MAX_SCHEDULE_AHEAD * 2 }],
        ..PartitionOutcomes::new(f[1])
    };
    assert_invalid(store.record_task_outcomes(&[good(f[0], p0), later]).await, "retry-later delay");
    for id in [p0, p1] {
        assert_eq!(state(&*store, id).await, TaskState::Running, "nothing was written");
    }
    // The limit itself is allowed.
    let at_limit = vec![
        PartitionOutcomes { completed: vec![p0; MAX_TASK_BATCH / 2], ..PartitionOutcomes::new(f[0]) },
        PartitionOutcomes { completed: vec![p1; MAX_TASK_BATCH / 2], ..PartitionOutcomes::new(f[1]) },
    ];
    let answers = store.record_task_outcomes(&at_limit).await.expect("at the limit");
    assert_eq!(answered(&answers, 1).applied, vec![(p1, TaskState::Done)]);
}

/// A completion written with a result keeps it on the finished task (read back by `get_task`
/// and `list_tasks`), cut to `MAX_RESULT_BYTES` at a character boundary as `last_error` is;
/// tasks completed without one, failed, pending or revived from the dead have none; a result
/// for a task the write does not complete is ignored; more results than completions refuse
/// the write.
pub async fn tasks_completion_keeps_a_bounded_result(b: &dyn Backend) {
    let store = b.store();
    let s = setup(&*store, 1).await;
    let f = own_all(&*store, &s, 1).await;
    let t = running(&*store, &s, &f[0], &["with", "without", "long", "failed", "cancelled"]).await;
    assert_eq!(store.get_task(t[0]).await.expect("get").result, None, "a running task has no result");

    let too_many = PartitionOutcomes {
        completed: vec![t[0]],
        results: vec![TaskResult::new(t[0], "a"), TaskResult::new(t[1], "b")],
        ..PartitionOutcomes::new(f[0])
    };
    assert_invalid(store.record_task_outcomes(&[too_many]).await, "more results than completions");
    assert_eq!(state(&*store, t[0]).await, TaskState::Running, "nothing was written");

    assert_eq!(store.cancel_task(t[4]).await.expect("cancel"), CancelOutcome::Requested);
    let long = "é".repeat(MAX_RESULT_BYTES);
    let batch = PartitionOutcomes {
        completed: vec![t[0], t[1], t[2], t[4]],
        failed: vec![TaskFailure::retry(t[3], "boom", Duration::from_secs(3_600))],
        results: vec![
            TaskResult::new(t[0], "HTTP 200 OK: {\"ok\":true}"),
            TaskResult::new(t[0], "a second result for the same task"),
            TaskResult::new(t[2], long.clone()),
            TaskResult::new(t[3], "not completed: ignored"),
        ],
        ..PartitionOutcomes::new(f[0])
    };
    let answers = store.record_task_outcomes(&[batch]).await.expect("record");
    assert_eq!(
        answered(&answers, 0).applied,
        vec![
            (t[0], TaskState::Done),
            (t[1], TaskState::Done),
            (t[2], TaskState::Done),
            (t[4], TaskState::Cancelled),
            (t[3], TaskState::Pending),
        ]
    );
    let with = store.get_task(t[0]).await.expect("get");
    assert_eq!((with.state, with.result.as_deref()), (TaskState::Done, Some("HTTP 200 OK: {\"ok\":true}")));
    assert_eq!(store.get_task(t[1]).await.expect("get").result, None);
    let cut = store.get_task(t[2]).await.expect("get").result.expect("a result");
    assert!(cut.len() <= MAX_RESULT_BYTES && cut.ends_with('…'), "{} bytes", cut.len());
    assert!(long.starts_with(cut.trim_end_matches('…')), "cut at a character boundary");
    assert_eq!(store.get_task(t[3]).await.expect("get").result, None, "a failed attempt keeps no result");
    assert_eq!(store.get_task(t[4]).await.expect("get").state, TaskState::Cancelled);
    let listed = store.list_tasks(s.queue.id, TaskState::Done, None, 10).await.expect("list");
    assert_eq!(listed.iter().find(|l| l.id == t[0]).and_then(|l| l.result.clone()), with.result);

    // The single-kind completion keeps no result; a revived dead task has none.
    let more = running(&*store, &s, &f[0], &["plain", "dead"]).await;
    store.complete_tasks(&f[0], &[more[0]]).await.expect("complete");
    assert_eq!(store.get_task(more[0]).await.expect("get").result, None);
    store.fail_tasks(&f[0], &[TaskFailure::dead(more[1], "bad input")]).await.expect("fail");
    let revived = store.retry_dead_task(more[1]).await.expect("revive");
    assert_eq!((revived.state, revived.result), (TaskState::Pending, None));
}

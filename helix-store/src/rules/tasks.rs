//! The task decisions every backend makes the same way: what is valid input, and what an
//! owner's write or a recovery does to a task it holds. A backend locks the rows, asks these
//! functions, and writes the answers in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{Epoch, PartitionCount};

use crate::error::{StoreError, StoreResult};
use crate::tasks::*;

/// The earliest instant a task may be scheduled at: 1970-01-01T00:00:00Z.
pub fn earliest_run_at() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH
}

/// Adds a bounded duration to an instant of the store's clock.
pub fn plus(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d.min(MAX_SCHEDULE_AHEAD)).unwrap_or(chrono::Duration::MAX)
}

/// Refuses a batch bigger than [`MAX_TASK_BATCH`].
///
/// # Errors
/// [`StoreError::Invalid`].
pub fn validate_batch(len: usize, what: &str) -> StoreResult<()> {
    if len > MAX_TASK_BATCH {
        return Err(StoreError::Invalid(format!(
            "{what} of {len} tasks is over the limit of {MAX_TASK_BATCH}"
        )));
    }
    Ok(())
}

/// Refuses a delay longer than [`MAX_SCHEDULE_AHEAD`].
///
/// # Errors
/// [`StoreError::Invalid`].
pub fn validate_delay(d: Duration, what: &str) -> StoreResult<()> {
    if d > MAX_SCHEDULE_AHEAD {
        return Err(StoreError::Invalid(format!(
            "{what} of {d:?} is more than the limit of {} days",
            MAX_SCHEDULE_AHEAD.as_secs() / 86_400
        )));
    }
    Ok(())
}

/// Checks one task to enqueue in a queue of `partitions` partitions, on the store's `now`;
/// returns the instant it becomes due.
///
/// # Errors
/// [`StoreError::Invalid`], saying which rule the task breaks: payload over
/// [`MAX_PAYLOAD_BYTES`], `max_attempts` outside 1 to [`MAX_ATTEMPTS_LIMIT`], a timeout
/// outside 1 ms to [`MAX_TASK_TIMEOUT`], a partition out of range, an empty dedup key or one
/// over [`MAX_DEDUP_KEY_BYTES`], a `run_at` before 1970 or more than [`MAX_SCHEDULE_AHEAD`]
/// after `now`.
pub fn validate_new_task(
    task: &NewTask,
    partitions: PartitionCount,
    now: DateTime<Utc>,
) -> StoreResult<DateTime<Utc>> {
    let invalid = |m: String| Err(StoreError::Invalid(m));
    if task.payload.len() > MAX_PAYLOAD_BYTES {
        return invalid(format!(
            "payload of {} bytes is over the limit of {MAX_PAYLOAD_BYTES} bytes",
            task.payload.len()
        ));
    }
    if task.max_attempts == 0 || task.max_attempts > MAX_ATTEMPTS_LIMIT {
        return invalid(format!(
            "max attempts {} is not between 1 and {MAX_ATTEMPTS_LIMIT}",
            task.max_attempts
        ));
    }
    if task.timeout < Duration::from_millis(1) || task.timeout > MAX_TASK_TIMEOUT {
        return invalid(format!(
            "task timeout {:?} is not between 1ms and {MAX_TASK_TIMEOUT:?}",
            task.timeout
        ));
    }
    if task.partition.0 >= partitions.get() {
        return invalid(format!(
            "partition {} is out of range for a queue of {} partitions",
            task.partition,
            partitions.get()
        ));
    }
    if let Some(key) = &task.dedup_key
        && (key.is_empty() || key.len() > MAX_DEDUP_KEY_BYTES)
    {
        return invalid(format!(
            "dedup key of {} bytes is not between 1 and {MAX_DEDUP_KEY_BYTES} bytes",
            key.len()
        ));
    }
    match task.run_at {
        RunAt::After(d) => {
            validate_delay(d, "run_at delay")?;
            Ok(plus(now, d))
        }
        RunAt::At(at) => {
            if at < earliest_run_at() {
                return invalid(format!("run_at {at} is before 1970-01-01"));
            }
            if at > plus(now, MAX_SCHEDULE_AHEAD) {
                return invalid(format!(
                    "run_at {at} is more than {} days after the store's now ({now})",
                    MAX_SCHEDULE_AHEAD.as_secs() / 86_400
                ));
            }
            Ok(at)
        }
    }
}

/// Checks a whole enqueue batch; returns the due instant of each task, in order. Nothing is
/// written when any task is refused.
///
/// # Errors
/// As [`validate_new_task`], naming the index of the first bad task; a batch over
/// [`MAX_TASK_BATCH`].
pub fn validate_enqueue(
    tasks: &[NewTask],
    partitions: PartitionCount,
    now: DateTime<Utc>,
) -> StoreResult<Vec<DateTime<Utc>>> {
    validate_batch(tasks.len(), "an enqueue")?;
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            validate_new_task(t, partitions, now).map_err(|e| match e {
                StoreError::Invalid(m) if tasks.len() > 1 => {
                    StoreError::Invalid(format!("task {i} of the batch: {m}"))
                }
                other => other,
            })
        })
        .collect()
}

/// Whether the enqueue needs the store's now to validate (an absolute `run_at`); delays are
/// computed in SQL on the database clock.
pub fn needs_now(tasks: &[NewTask]) -> bool {
    tasks.iter().any(|t| matches!(t.run_at, RunAt::At(_)))
}

/// `error` cut to at most [`MAX_LAST_ERROR_BYTES`] bytes at a character boundary; a cut
/// message ends with `…`.
pub fn bound_error(error: &str) -> String {
    bound_text(error, MAX_LAST_ERROR_BYTES)
}

/// `result` cut to at most [`MAX_RESULT_BYTES`] bytes, as [`bound_error`] cuts errors.
pub fn bound_result(result: &str) -> String {
    bound_text(result, MAX_RESULT_BYTES)
}

/// `text` cut to at most `max` bytes (at least 3) at a character boundary, ending with `…`
/// when cut.
fn bound_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What a write needs to know of a task it holds (locked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskHead {
    /// The task.
    pub id: TaskId,
    /// Its state (`RUNNING` or `CANCELLING` for owner writes).
    pub state: TaskState,
    /// Attempts begun.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The epoch of its claim.
    pub claimed_epoch: Option<Epoch>,
}

/// The new values of one task. A finished state moves the row to the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskWrite {
    /// The task.
    pub id: TaskId,
    /// Its new state.
    pub state: TaskState,
    /// Its new attempt count.
    pub attempts: u32,
    /// Its new `run_at` (`None`: unchanged).
    pub run_at: Option<DateTime<Utc>>,
    /// Its new deadline (only extensions set one; `None`: unchanged).
    pub deadline_at: Option<DateTime<Utc>>,
    /// Its new last error (`None`: unchanged).
    pub last_error: Option<String>,
    /// Its result (completions only; `None`: unchanged).
    pub result: Option<String>,
}

impl TaskWrite {
    fn keep(head: &TaskHead, state: TaskState) -> Self {
        Self {
            id: head.id,
            state,
            attempts: head.attempts,
            run_at: None,
            deadline_at: None,
            last_error: None,
            result: None,
        }
    }
}

/// A completion: `DONE`, or `CANCELLED` for a task cancelled while running; either way with
/// the completing attempt's `result`, if any (bounded).
pub fn after_complete(head: &TaskHead, result: Option<&str>) -> TaskWrite {
    let state = match head.state {
        TaskState::Cancelling => TaskState::Cancelled,
        _ => TaskState::Done,
    };
    TaskWrite { result: result.map(bound_result), ..TaskWrite::keep(head, state) }
}

/// A cancellation of a pending task: `CANCELLED`, attempts unchanged.
pub fn after_cancel(head: &TaskHead) -> TaskWrite {
    TaskWrite::keep(head, TaskState::Cancelled)
}

/// A failed attempt: `DEAD` when it was the last allowed or the failure is permanent
/// (`retry_in` is `None`), else `PENDING` again at `now + retry_in`; `CANCELLED` for a task cancelled while running. Records the error
/// (bounded).
pub fn after_failure(head: &TaskHead, now: DateTime<Utc>, failure: &TaskFailure) -> TaskWrite {
    let error = Some(bound_error(&failure.error));
    let state = match head.state {
        TaskState::Cancelling => TaskState::Cancelled,
        _ if head.attempts >= head.max_attempts => TaskState::Dead,
        _ => match failure.retry_in {
            Some(_) => TaskState::Pending,
            None => TaskState::Dead,
        },
    };
    let run_at = failure.retry_in.filter(|_| state == TaskState::Pending).map(|d| plus(now, d));
    TaskWrite { last_error: error, run_at, ..TaskWrite::keep(head, state) }
}

/// A retry-later: `PENDING` again at `now + delay`, and the attempt is given back (it does not
/// count towards `max_attempts`: the handler chose to wait, it did not fail); `CANCELLED`
/// for a task cancelled while running.
pub fn after_retry_later(head: &TaskHead, now: DateTime<Utc>, delay: Duration) -> TaskWrite {
    match head.state {
        TaskState::Cancelling => TaskWrite::keep(head, TaskState::Cancelled),
        _ => TaskWrite {
            attempts: head.attempts.saturating_sub(1),
            run_at: Some(plus(now, delay)),
            ..TaskWrite::keep(head, TaskState::Pending)
        },
    }
}

/// An extension: the running attempt's deadline becomes `now + by`. A `CANCELLING` task is
/// left as it is, and the answer tells the owner to stop it.
pub fn after_extend(head: &TaskHead, now: DateTime<Utc>, by: Duration) -> TaskWrite {
    match head.state {
        TaskState::Cancelling => TaskWrite::keep(head, TaskState::Cancelling),
        _ => TaskWrite { deadline_at: Some(plus(now, by)), ..TaskWrite::keep(head, TaskState::Running) },
    }
}

/// Recovery of a task left claimed under the fence's epoch or an older one when `fence`
/// took (or took up again) the partition: its attempt was lost and counts. `DEAD` when it was the last allowed,
/// `CANCELLED` when it was cancelled meanwhile, otherwise `PENDING` again with its `run_at`
/// unchanged (it keeps its place in the claim order).
pub fn after_recovery(head: &TaskHead, fence: &OwnerFence) -> TaskWrite {
    let lost = format!(
        "attempt {} of {} was lost (its owner died, stopped or lost the claim's answer): the task was still \
         running under epoch {} when {fence} recovered the partition",
        head.attempts,
        head.max_attempts,
        head.claimed_epoch.map_or_else(|| "none".to_owned(), |e| e.to_string()),
    );
    let state = match head.state {
        TaskState::Cancelling => TaskState::Cancelled,
        _ if head.attempts >= head.max_attempts => TaskState::Dead,
        _ => TaskState::Pending,
    };
    TaskWrite { last_error: Some(lost), ..TaskWrite::keep(head, state) }
}

/// Splits the heads an owner write asked for into those it may write (claimed under the
/// fence's epoch) and the ids it skips, in the order of `ids`; a repeated id counts once.
pub fn held<'a>(
    ids: impl IntoIterator<Item = TaskId>,
    heads: &'a [TaskHead],
    fence: &OwnerFence,
) -> (Vec<&'a TaskHead>, Vec<TaskId>) {
    let mut seen = std::collections::BTreeSet::new();
    let by_id: std::collections::HashMap<TaskId, &TaskHead> = heads.iter().map(|h| (h.id, h)).collect();
    let (mut held, mut skipped) = (Vec::new(), Vec::new());
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        match by_id.get(&id).copied() {
            Some(h) if h.state.is_claimed() && h.claimed_epoch == Some(fence.epoch) => held.push(h),
            _ => skipped.push(id),
        }
    }
    (held, skipped)
}

/// Checks the input of [`Store::record_task_outcomes`](crate::Store::record_task_outcomes):
/// at most [`MAX_TASK_BATCH`] partitions and [`MAX_TASK_BATCH`] task rows in all, each
/// partition (queue and partition) at most once, every delay at most
/// [`MAX_SCHEDULE_AHEAD`]. Nothing is written when it fails.
///
/// # Errors
/// [`StoreError::Invalid`], naming the partition at fault.
pub fn validate_outcomes(batches: &[PartitionOutcomes]) -> StoreResult<()> {
    if batches.len() > MAX_TASK_BATCH {
        return Err(StoreError::Invalid(format!(
            "a write of outcomes for {} partitions is over the limit of {MAX_TASK_BATCH}",
            batches.len()
        )));
    }
    let rows: usize = batches.iter().map(PartitionOutcomes::len).sum();
    validate_batch(rows, "a write of outcomes")?;
    let mut seen = std::collections::BTreeSet::new();
    for b in batches {
        let at = |m: String| StoreError::Invalid(format!("{m} for {}", b.fence));
        if !seen.insert((b.fence.queue, b.fence.partition)) {
            return Err(at("a second set of outcomes".to_owned()));
        }
        for f in &b.failed {
            if let Some(retry_in) = f.retry_in {
                validate_delay(retry_in, "retry delay").map_err(|e| at(e.to_string()))?;
            }
        }
        for r in &b.retried_later {
            validate_delay(r.delay, "retry delay").map_err(|e| at(e.to_string()))?;
        }
        if b.results.len() > b.completed.len() {
            return Err(at(format!("{} results for {} completed tasks", b.results.len(), b.completed.len())));
        }
    }
    Ok(())
}

/// The ids named by the partitions of a coalesced write whose fence holds (`held[i]` for
/// `batches[i]`), sorted and each once: the tasks to lock, in the order every writer locks
/// tasks in.
pub fn held_task_ids(batches: &[PartitionOutcomes], held: &[bool]) -> Vec<TaskId> {
    debug_assert_eq!(batches.len(), held.len(), "one fence verdict per partition");
    let mut ids: Vec<TaskId> =
        batches.iter().zip(held).filter(|(_, held)| **held).flat_map(|(b, _)| b.ids()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The writes and the answers of a coalesced write of outcomes: `held[i]` says whether the
/// fence of `batches[i]` holds, and `heads` are the locked tasks named by the partitions whose
/// fence holds, by their stored (queue, partition). A partition whose fence does not hold is
/// answered `Fenced` and writes nothing; each other one writes only tasks of its own queue and
/// partition ([`outcome_writes`]).
pub fn coalesced_writes(
    batches: &[PartitionOutcomes],
    held: &[bool],
    heads: &std::collections::BTreeMap<(u64, u32), Vec<TaskHead>>,
    now: DateTime<Utc>,
) -> (Vec<TaskWrite>, Vec<StoreResult<TaskBatchOutcome>>) {
    debug_assert_eq!(batches.len(), held.len(), "one fence verdict per partition");
    let mut writes = Vec::new();
    let mut answers = Vec::with_capacity(batches.len());
    for (b, held) in batches.iter().zip(held) {
        if !held {
            answers.push(Err(fenced(&b.fence)));
            continue;
        }
        let mine = heads.get(&(b.fence.queue.0, b.fence.partition.0)).map_or(&[][..], Vec::as_slice);
        let (w, answer) = outcome_writes(b, mine, now);
        writes.extend(w);
        answers.push(Ok(answer));
    }
    (writes, answers)
}

/// What one partition's outcomes do to the tasks it holds: `heads` are the locked tasks of
/// that partition (tasks of other partitions must not be among them); a task is written when
/// it is claimed under the fence's epoch, by the first kind it is listed under (completed,
/// failed, retried later). Returns the writes and the partition's answer.
pub fn outcome_writes(
    batch: &PartitionOutcomes,
    heads: &[TaskHead],
    now: DateTime<Utc>,
) -> (Vec<TaskWrite>, TaskBatchOutcome) {
    enum Kind<'a> {
        Complete,
        Fail(&'a TaskFailure),
        Later(Duration),
    }
    let mut kinds: std::collections::HashMap<TaskId, Kind<'_>> = std::collections::HashMap::new();
    let mut results: std::collections::HashMap<TaskId, &str> = std::collections::HashMap::new();
    for r in &batch.results {
        results.entry(r.id).or_insert(&r.result);
    }
    for id in &batch.completed {
        kinds.entry(*id).or_insert(Kind::Complete);
    }
    for f in &batch.failed {
        kinds.entry(f.id).or_insert(Kind::Fail(f));
    }
    for r in &batch.retried_later {
        kinds.entry(r.id).or_insert(Kind::Later(r.delay));
    }
    let (held, skipped) = held(batch.ids(), heads, &batch.fence);
    let writes: Vec<TaskWrite> = held
        .into_iter()
        .map(|h| match kinds.get(&h.id) {
            Some(Kind::Fail(f)) => after_failure(h, now, f),
            Some(Kind::Later(delay)) => after_retry_later(h, now, *delay),
            Some(Kind::Complete) | None => after_complete(h, results.get(&h.id).copied()),
        })
        .collect();
    let answer = outcome(&writes, skipped);
    (writes, answer)
}

/// The outcome of a batch write from its writes and skipped ids.
pub fn outcome(writes: &[TaskWrite], skipped: Vec<TaskId>) -> TaskBatchOutcome {
    TaskBatchOutcome { applied: writes.iter().map(|w| (w.id, w.state)).collect(), skipped }
}

/// Refuses an extension longer than [`MAX_TASK_TIMEOUT`].
///
/// # Errors
/// [`StoreError::Invalid`].
pub fn validate_extension(by: Duration) -> StoreResult<()> {
    if by > MAX_TASK_TIMEOUT {
        return Err(StoreError::Invalid(format!(
            "extension of {by:?} is over the limit of {MAX_TASK_TIMEOUT:?}"
        )));
    }
    Ok(())
}

/// What a recovery reports, from its writes.
pub fn recovery(writes: &[TaskWrite]) -> TaskRecovery {
    let mut out = TaskRecovery::default();
    for w in writes {
        match w.state {
            TaskState::Dead => out.dead.push(w.id),
            TaskState::Cancelled => out.cancelled.push(w.id),
            _ => out.requeued.push(w.id),
        }
    }
    out
}

/// An operator's retry of a dead task: `PENDING`, due `now`, attempts 0, no claim, not
/// finished; its last error stays for the record.
pub fn revive(task: &mut TaskRecord, now: DateTime<Utc>) {
    task.state = TaskState::Pending;
    task.run_at = now;
    task.attempts = 0;
    task.started_at = None;
    task.deadline_at = None;
    task.finished_at = None;
    task.result = None;
}

/// The error of an owner write whose fence no longer holds.
pub fn fenced(fence: &OwnerFence) -> StoreError {
    StoreError::Fenced(format!("{fence} no longer owns the partition"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_LAST_ERROR_BYTES);
        let cut = bound_error(&long);
        assert!(cut.len() <= MAX_LAST_ERROR_BYTES);
        assert!(cut.ends_with('…'));
        assert_eq!(bound_error("short"), "short");
    }

    #[test]
    fn the_last_attempt_fails_dead_and_earlier_ones_retry() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let head = TaskHead {
            id: TaskId(1),
            state: TaskState::Running,
            attempts: 2,
            max_attempts: 3,
            claimed_epoch: Some(Epoch(1)),
        };
        let failure = TaskFailure::retry(TaskId(1), "boom", Duration::from_secs(5));
        let w = after_failure(&head, now, &failure);
        assert_eq!((w.state, w.run_at), (TaskState::Pending, Some(plus(now, Duration::from_secs(5)))));
        let w = after_failure(&TaskHead { attempts: 3, ..head }, now, &failure);
        assert_eq!((w.state, w.last_error.as_deref()), (TaskState::Dead, Some("boom")));
        let w = after_failure(&head, now, &TaskFailure::dead(TaskId(1), "bad input"));
        assert_eq!((w.state, w.run_at), (TaskState::Dead, None), "a permanent failure is dead at once");
        let w = after_retry_later(&head, now, Duration::ZERO);
        assert_eq!((w.state, w.attempts), (TaskState::Pending, 1));
    }
}

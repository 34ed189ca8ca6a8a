//! The task queue of the in-memory store: the same decisions as the SQL stores
//! ([`crate::rules::tasks`]), under the store's one lock, on its injected clock.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{PartitionCount, PartitionId, QueueId};

use super::{Inner, MemStore};
use crate::error::{StoreError, StoreResult};
use crate::model::AssignmentState;
use crate::rules::tasks::{self as rules, TaskHead, TaskWrite};
use crate::tasks::*;

/// The task rows: the hot table, the history and the dedup index.
#[derive(Debug, Default)]
pub(super) struct TaskTables {
    next_id: u64,
    hot: BTreeMap<TaskId, TaskRecord>,
    history: BTreeMap<TaskId, TaskRecord>,
    /// (queue, dedup key) → the unfinished task holding the key.
    dedup: HashMap<(QueueId, String), TaskId>,
}

impl TaskTables {
    /// Forgets every task of a deleted queue.
    pub(super) fn delete_queue(&mut self, queue: QueueId) {
        self.hot.retain(|_, t| t.queue_id != queue);
        self.history.retain(|_, t| t.queue_id != queue);
        self.dedup.retain(|(q, _), _| *q != queue);
    }

    /// Inserts `task` as `PENDING`, due at `run_at`, unless its dedup key is held.
    pub(super) fn insert(
        &mut self,
        queue: QueueId,
        task: &NewTask,
        run_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Enqueued {
        if let Some(key) = &task.dedup_key
            && let Some(&id) = self.dedup.get(&(queue, key.clone()))
        {
            return Enqueued { id, created: false };
        }
        self.next_id += 1;
        let id = TaskId(self.next_id);
        if let Some(key) = &task.dedup_key {
            self.dedup.insert((queue, key.clone()), id);
        }
        self.hot.insert(
            id,
            TaskRecord {
                id,
                queue_id: queue,
                partition: task.partition,
                state: TaskState::Pending,
                priority: task.priority,
                run_at,
                attempts: 0,
                max_attempts: task.max_attempts,
                timeout: task.timeout,
                dedup_key: task.dedup_key.clone(),
                payload: task.payload.clone(),
                claimed_epoch: None,
                claimed_by: None,
                created_at: now,
                started_at: None,
                deadline_at: None,
                finished_at: None,
                last_error: None,
                result: None,
            },
        );
        Enqueued { id, created: true }
    }

    /// Cancels `id` when it is `PENDING` and due after `now`; whether it did.
    pub(super) fn cancel_future(&mut self, id: TaskId, now: DateTime<Utc>) -> bool {
        match self.hot.get_mut(&id) {
            Some(t) if t.state == TaskState::Pending && t.run_at > now => {
                t.state = TaskState::Cancelled;
                self.finish(id, now);
                true
            }
            _ => false,
        }
    }

    fn heads(&self, fence: &OwnerFence, ids: &[TaskId]) -> Vec<TaskHead> {
        ids.iter()
            .filter_map(|id| self.hot.get(id))
            .filter(|t| t.queue_id == fence.queue && t.partition == fence.partition)
            .map(head)
            .collect()
    }

    /// Applies the writes: finished states move to the history and free their dedup keys.
    fn apply(&mut self, now: DateTime<Utc>, writes: &[TaskWrite]) {
        for w in writes {
            let Some(task) = self.hot.get_mut(&w.id) else { continue };
            task.state = w.state;
            task.attempts = w.attempts;
            if let Some(at) = w.run_at {
                task.run_at = at;
            }
            if let Some(at) = w.deadline_at {
                task.deadline_at = Some(at);
            }
            if let Some(e) = &w.last_error {
                task.last_error = Some(e.clone());
            }
            if let Some(r) = &w.result {
                task.result = Some(r.clone());
            }
            if w.state.is_finished() {
                self.finish(w.id, now);
            }
        }
    }

    fn finish(&mut self, id: TaskId, now: DateTime<Utc>) {
        if let Some(mut task) = self.hot.remove(&id) {
            if let Some(key) = &task.dedup_key {
                self.dedup.remove(&(task.queue_id, key.clone()));
            }
            task.finished_at = Some(now);
            self.history.insert(id, task);
        }
    }
}

fn head(t: &TaskRecord) -> TaskHead {
    TaskHead {
        id: t.id,
        state: t.state,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        claimed_epoch: t.claimed_epoch,
    }
}

impl Inner {
    pub(super) fn partition_count(&self, queue: QueueId) -> StoreResult<PartitionCount> {
        let q = self.queues.get(&queue).ok_or_else(|| StoreError::NotFound(format!("queue {queue}")))?;
        Ok(q.partition_count)
    }

    /// `owner = worker AND epoch = epoch` (and `ASSIGNED` when `claiming`).
    fn check_owner(&self, fence: &OwnerFence, claiming: bool) -> StoreResult<()> {
        let row = self.assignments.get(&fence.queue).and_then(|rows| rows.get(fence.partition.0 as usize));
        match row {
            Some(r)
                if r.owner == Some(fence.worker)
                    && r.epoch == fence.epoch
                    && r.state != AssignmentState::Failed
                    && (!claiming || r.state == AssignmentState::Assigned) =>
            {
                Ok(())
            }
            _ => Err(rules::fenced(fence)),
        }
    }
}

impl MemStore {
    pub(super) fn tasks_enqueue(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        let (mut s, now) = self.lock();
        let partitions = s.partition_count(queue)?;
        let due = rules::validate_enqueue(tasks, partitions, now)?;
        Ok(tasks.iter().zip(due).map(|(task, run_at)| s.tasks.insert(queue, task, run_at, now)).collect())
    }

    pub(super) fn tasks_claim(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        rules::validate_batch(limit as usize, "a claim")?;
        let (mut s, now) = self.lock();
        s.check_owner(fence, true)?;
        let mut due: Vec<&TaskRecord> = s
            .tasks
            .hot
            .values()
            .filter(|t| {
                t.queue_id == fence.queue
                    && t.partition == fence.partition
                    && t.state == TaskState::Pending
                    && t.run_at <= now
            })
            .collect();
        due.sort_by_key(|t| (t.priority, t.run_at, t.id));
        let ids: Vec<TaskId> = due.iter().take(limit as usize).map(|t| t.id).collect();
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(t) = s.tasks.hot.get_mut(&id) {
                t.state = TaskState::Running;
                t.attempts += 1;
                t.claimed_epoch = Some(fence.epoch);
                t.claimed_by = Some(fence.worker);
                t.started_at = Some(now);
                t.deadline_at = Some(rules::plus(now, t.timeout));
                claimed.push(t.clone());
            }
        }
        Ok(claimed)
    }

    /// The owner-fenced batch write shared by complete, fail, retry-later and extend.
    fn tasks_owner_write(
        &self,
        fence: &OwnerFence,
        ids: Vec<TaskId>,
        decide: impl Fn(&TaskHead, DateTime<Utc>) -> TaskWrite,
    ) -> StoreResult<TaskBatchOutcome> {
        rules::validate_batch(ids.len(), "a task write")?;
        let (mut s, now) = self.lock();
        s.check_owner(fence, false)?;
        let heads = s.tasks.heads(fence, &ids);
        let (held, skipped) = rules::held(ids, &heads, fence);
        let writes: Vec<TaskWrite> = held.into_iter().map(|h| decide(h, now)).collect();
        s.tasks.apply(now, &writes);
        Ok(rules::outcome(&writes, skipped))
    }

    pub(super) fn tasks_complete(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        self.tasks_owner_write(fence, ids.to_vec(), |h, _| rules::after_complete(h, None))
    }

    pub(super) fn tasks_fail(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        for f in failures {
            if let Some(retry_in) = f.retry_in {
                rules::validate_delay(retry_in, "retry delay")?;
            }
        }
        let ids = failures.iter().map(|f| f.id).collect();
        self.tasks_owner_write(fence, ids, |h, now| {
            let f = failures.iter().find(|f| f.id == h.id);
            match f {
                Some(f) => rules::after_failure(h, now, f),
                None => rules::after_complete(h, None),
            }
        })
    }

    pub(super) fn tasks_retry_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        for r in retries {
            rules::validate_delay(r.delay, "retry delay")?;
        }
        let ids = retries.iter().map(|r| r.id).collect();
        self.tasks_owner_write(fence, ids, |h, now| {
            let delay = retries.iter().find(|r| r.id == h.id).map_or(Duration::ZERO, |r| r.delay);
            rules::after_retry_later(h, now, delay)
        })
    }

    /// Every partition's outcomes under the store's one lock: atomic, as one transaction.
    pub(super) fn tasks_record_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        rules::validate_outcomes(batches)?;
        let (mut s, now) = self.lock();
        let mut answers = Vec::with_capacity(batches.len());
        for batch in batches {
            if let Err(fenced) = s.check_owner(&batch.fence, false) {
                answers.push(Err(fenced));
                continue;
            }
            let ids: Vec<TaskId> = batch.ids().collect();
            let heads = s.tasks.heads(&batch.fence, &ids);
            let (writes, answer) = rules::outcome_writes(batch, &heads, now);
            s.tasks.apply(now, &writes);
            answers.push(Ok(answer));
        }
        Ok(answers)
    }

    pub(super) fn tasks_extend(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        rules::validate_extension(by)?;
        self.tasks_owner_write(fence, ids.to_vec(), |h, now| rules::after_extend(h, now, by))
    }

    pub(super) fn tasks_cancel(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        let (mut s, now) = self.lock();
        if let Some(t) = s.tasks.history.get(&id) {
            return Ok(CancelOutcome::AlreadyFinished(t.state));
        }
        let t = s.tasks.hot.get_mut(&id).ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
        match t.state {
            TaskState::Pending => {
                t.state = TaskState::Cancelled;
                s.tasks.finish(id, now);
                Ok(CancelOutcome::Cancelled)
            }
            _ => {
                t.state = TaskState::Cancelling;
                Ok(CancelOutcome::Requested)
            }
        }
    }

    pub(super) fn tasks_recover(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        let (mut s, now) = self.lock();
        s.check_owner(fence, false)?;
        let writes: Vec<TaskWrite> = s
            .tasks
            .hot
            .values()
            .filter(|t| {
                t.queue_id == fence.queue
                    && t.partition == fence.partition
                    && t.state.is_claimed()
                    && t.claimed_epoch.is_some_and(|e| e <= fence.epoch)
            })
            .map(|t| rules::after_recovery(&head(t), fence))
            .collect();
        s.tasks.apply(now, &writes);
        Ok(rules::recovery(&writes))
    }

    pub(super) fn tasks_next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<BTreeMap<PartitionId, DateTime<Utc>>> {
        let (s, _) = self.lock();
        let mut due = BTreeMap::new();
        for t in s.tasks.hot.values() {
            if t.queue_id == queue && t.state == TaskState::Pending && partitions.contains(&t.partition) {
                let at = due.entry(t.partition).or_insert(t.run_at);
                *at = (*at).min(t.run_at);
            }
        }
        Ok(due)
    }

    pub(super) fn tasks_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        let (s, _) = self.lock();
        let mut counts: BTreeMap<(PartitionId, TaskState), u64> = BTreeMap::new();
        for t in s.tasks.hot.values().chain(s.tasks.history.values()).filter(|t| t.queue_id == queue) {
            *counts.entry((t.partition, t.state)).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((partition, state), count)| TaskCount { partition, state, count })
            .collect())
    }

    pub(super) fn tasks_get(&self, id: TaskId) -> StoreResult<TaskRecord> {
        let (s, _) = self.lock();
        s.tasks
            .hot
            .get(&id)
            .or_else(|| s.tasks.history.get(&id))
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("task {id}")))
    }

    pub(super) fn tasks_list(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        rules::validate_batch(limit as usize, "a page")?;
        let (s, _) = self.lock();
        let table = if state.is_finished() { &s.tasks.history } else { &s.tasks.hot };
        let from = after.map_or(TaskId(0), |a| TaskId(a.0.saturating_add(1)));
        Ok(table
            .range(from..)
            .map(|(_, t)| t)
            .filter(|t| t.queue_id == queue && t.state == state)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    pub(super) fn tasks_retry_dead(&self, id: TaskId) -> StoreResult<TaskRecord> {
        let (mut s, now) = self.lock();
        let t = &mut s.tasks;
        let task = match t.history.get(&id) {
            Some(task) if task.state == TaskState::Dead => task,
            Some(task) => return Err(StoreError::Conflict(format!("task {id} is {}, not DEAD", task.state))),
            None if t.hot.contains_key(&id) => {
                return Err(StoreError::Conflict(format!("task {id} is not DEAD")));
            }
            None => return Err(StoreError::NotFound(format!("task {id}"))),
        };
        if let Some(key) = &task.dedup_key
            && let Some(holder) = t.dedup.get(&(task.queue_id, key.clone()))
        {
            return Err(StoreError::Conflict(format!("dedup key of task {id} is held by task {holder}")));
        }
        let Some(mut task) = t.history.remove(&id) else {
            return Err(StoreError::NotFound(format!("task {id}")));
        };
        rules::revive(&mut task, now);
        if let Some(key) = &task.dedup_key {
            t.dedup.insert((task.queue_id, key.clone()), id);
        }
        t.hot.insert(id, task.clone());
        Ok(task)
    }

    pub(super) fn tasks_prune(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        let (mut s, now) = self.lock();
        // A cutoff before the clock's range: nothing is that old.
        let Some(cutoff) =
            chrono::Duration::from_std(older_than).ok().and_then(|d| now.checked_sub_signed(d))
        else {
            return Ok(0);
        };
        let mut old: Vec<(DateTime<Utc>, TaskId)> = s
            .tasks
            .history
            .values()
            .filter_map(|t| t.finished_at.filter(|f| *f < cutoff).map(|f| (f, t.id)))
            .collect();
        old.sort();
        old.truncate(limit as usize);
        for (_, id) in &old {
            s.tasks.history.remove(id);
        }
        s.schedules.prune_runs(cutoff);
        Ok(old.len() as u64)
    }
}

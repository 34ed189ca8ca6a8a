//! Recurring schedules in the in-memory store: the same decisions as the SQL stores
//! ([`crate::rules::schedules`]), under the store's one lock, on its injected clock.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::QueueId;

use super::{Inner, MemStore};
use crate::error::{StoreError, StoreResult};
use crate::model::CoordinatorFence;
use crate::rules::schedules as rules;
use crate::rules::tasks::validate_new_task;
use crate::schedules::*;
use crate::tasks::TaskId;

/// The schedule rows and `helix_schedule_runs`, the unique key on (schedule, slot).
#[derive(Debug, Default)]
pub(super) struct ScheduleTables {
    next_id: u64,
    rows: BTreeMap<ScheduleId, ScheduleRecord>,
    runs: BTreeMap<(ScheduleId, DateTime<Utc>), TaskId>,
}

impl ScheduleTables {
    /// Forgets every schedule of a deleted queue (its tasks go with the queue's).
    pub(super) fn delete_queue(&mut self, queue: QueueId) {
        let gone: Vec<ScheduleId> =
            self.rows.values().filter(|r| r.queue_id == queue).map(|r| r.id).collect();
        for id in gone {
            self.rows.remove(&id);
            self.runs.retain(|(s, _), _| *s != id);
        }
    }

    fn by_name(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleId> {
        self.rows
            .values()
            .find(|r| r.queue_id == queue && r.spec.name == name)
            .map(|r| r.id)
            .ok_or_else(|| StoreError::NotFound(format!("schedule {name:?} of queue {queue}")))
    }

    /// Forgets runs older than `cutoff`; their slots are behind every cursor.
    pub(super) fn prune_runs(&mut self, cutoff: DateTime<Utc>) {
        self.runs.retain(|(_, slot), _| *slot >= cutoff);
    }
}

impl Inner {
    /// Cancels the tasks of `schedule`'s slots after `now` that have not started, and
    /// forgets those runs, so that the slots can be materialized again after a resume.
    fn cancel_future_slots(&mut self, schedule: ScheduleId, now: DateTime<Utc>) {
        let future: Vec<(DateTime<Utc>, TaskId)> = self
            .schedules
            .runs
            .range((schedule, now)..)
            .take_while(|((s, _), _)| *s == schedule)
            .filter(|((_, slot), _)| *slot > now)
            .map(|((_, slot), task)| (*slot, *task))
            .collect();
        for (slot, task) in future {
            if self.tasks.cancel_future(task, now) {
                self.schedules.runs.remove(&(schedule, slot));
            }
        }
    }
}

impl MemStore {
    pub(super) fn schedules_create(
        &self,
        queue: QueueId,
        schedule: &NewSchedule,
    ) -> StoreResult<ScheduleRecord> {
        let (mut s, now) = self.lock();
        let partitions = s.partition_count(queue)?;
        let slots = rules::validate_schedule(schedule, partitions, now)?;
        if s.schedules.by_name(queue, &schedule.name).is_ok() {
            return Err(StoreError::Conflict(format!(
                "queue {queue} already has a schedule named {:?}",
                schedule.name
            )));
        }
        s.schedules.next_id += 1;
        let id = ScheduleId(s.schedules.next_id);
        let record = ScheduleRecord {
            id,
            queue_id: queue,
            spec: schedule.clone(),
            next_slot_at: rules::first_slot(&slots, now)?,
            last_slot_at: None,
            last_task_id: None,
            created_at: now,
            updated_at: now,
        };
        s.schedules.rows.insert(id, record.clone());
        Ok(record)
    }

    pub(super) fn schedules_get(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        let (s, _) = self.lock();
        let id = s.schedules.by_name(queue, name)?;
        Ok(s.schedules.rows[&id].clone())
    }

    pub(super) fn schedules_list(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        let (s, _) = self.lock();
        let mut list: Vec<ScheduleRecord> =
            s.schedules.rows.values().filter(|r| queue.is_none_or(|q| r.queue_id == q)).cloned().collect();
        list.sort_by(|a, b| (a.queue_id, &a.spec.name).cmp(&(b.queue_id, &b.spec.name)));
        Ok(list)
    }

    pub(super) fn schedules_set_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        let (mut s, now) = self.lock();
        let id = s.schedules.by_name(queue, name)?;
        let record = &s.schedules.rows[&id];
        if record.spec.paused != paused {
            let next_slot_at = if paused {
                record.next_slot_at
            } else {
                let slots = rules::Slots::new(&record.spec.recurrence, &record.spec.time_zone)?;
                rules::first_slot(&slots, now)?
            };
            if paused {
                s.cancel_future_slots(id, now);
            }
            let record = s.schedules.rows.get_mut(&id).expect("found above");
            record.spec.paused = paused;
            record.next_slot_at = next_slot_at;
            record.updated_at = now;
        }
        Ok(s.schedules.rows[&id].clone())
    }

    pub(super) fn schedules_delete(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        let (mut s, now) = self.lock();
        let id = s.schedules.by_name(queue, name)?;
        s.cancel_future_slots(id, now);
        s.schedules.rows.remove(&id);
        s.schedules.runs.retain(|(schedule, _), _| *schedule != id);
        Ok(())
    }

    pub(super) fn schedules_due(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        let (s, now) = self.lock();
        let until = chrono::Duration::from_std(horizon)
            .ok()
            .and_then(|h| now.checked_add_signed(h))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut due: Vec<ScheduleRecord> = s
            .schedules
            .rows
            .values()
            .filter(|r| !r.spec.paused && r.next_slot_at <= until)
            .cloned()
            .collect();
        due.sort_by_key(|r| (r.next_slot_at, r.id));
        due.truncate(limit as usize);
        Ok((now, due))
    }

    pub(super) fn schedules_fire(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>> {
        rules::validate_fires(fires)?;
        let (mut s, now) = self.lock();
        s.check_fence(fence, now)?;
        // Every task is checked before anything is written; a fire with a task the store
        // refuses (a schedule stored by an older release) makes none, and its slots are
        // skipped so that it cannot hold up the others.
        let mut invalid: BTreeMap<usize, String> = BTreeMap::new();
        for (i, fire) in fires.iter().enumerate() {
            if let Some(record) = s.schedules.rows.get(&fire.schedule) {
                let partitions = s.partition_count(record.queue_id)?;
                for (_, task) in &fire.slots {
                    match validate_new_task(task, partitions, now) {
                        Ok(_) => {}
                        Err(StoreError::Invalid(reason)) => {
                            invalid.insert(i, reason);
                            break;
                        }
                        Err(other) => return Err(other),
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(fires.len());
        for (i, fire) in fires.iter().enumerate() {
            let Some(record) = s.schedules.rows.get(&fire.schedule) else {
                out.push(FireOutcome::Stale);
                continue;
            };
            if record.spec.paused || record.next_slot_at != fire.cursor {
                out.push(FireOutcome::Stale);
                continue;
            }
            if let Some(reason) = invalid.get(&i) {
                let record = s.schedules.rows.get_mut(&fire.schedule).expect("found above");
                record.next_slot_at = fire.next_slot_at;
                record.updated_at = now;
                out.push(FireOutcome::Invalid(reason.clone()));
                continue;
            }
            let queue = record.queue_id;
            let (mut created, mut duplicates) = (Vec::new(), Vec::new());
            for (slot, task) in &fire.slots {
                if s.schedules.runs.contains_key(&(fire.schedule, *slot)) {
                    duplicates.push(*slot);
                    continue;
                }
                let at = validate_new_task(task, s.partition_count(queue)?, now)?;
                let id = s.tasks.insert(queue, task, at, now).id;
                s.schedules.runs.insert((fire.schedule, *slot), id);
                created.push((*slot, id));
            }
            let record = s.schedules.rows.get_mut(&fire.schedule).expect("found above");
            record.next_slot_at = fire.next_slot_at;
            if let Some((slot, id)) = created.last() {
                record.last_slot_at = Some(*slot);
                record.last_task_id = Some(*id);
            }
            record.updated_at = now;
            out.push(FireOutcome::Fired { created, duplicates });
        }
        Ok(out)
    }
}

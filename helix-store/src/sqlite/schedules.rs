//! Recurring schedules on SQLite (`helix_schedules`, `helix_schedule_runs`). Every write runs
//! in the caller's `BEGIN IMMEDIATE` transaction, so it is the only writer while it decides;
//! the decisions come from [`crate::rules::schedules`], instants from SQLite's clock at its
//! precision (milliseconds).
//!
//! A fire inserts each slot's run with `ON CONFLICT DO NOTHING RETURNING`, which answers
//! exactly the runs inserted now: only those slots enqueue their tasks (the enqueue path of
//! [`super::tasks`]), whose ids then go into the runs. The primary key on (schedule, slot)
//! decides, as on MySQL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_query;
use diesel::sql_types::{BigInt, Binary, Bool, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;
use helix_core::{PartitionCount, QueueId};

use super::schema::helix_schedules;
use super::tasks::{self, MAX_COMPOUND_ROWS, db_now, derived, marks, text};
use super::{Fail, MAX_BINDS, Tx, check_fence, to_i64, to_u64};
use crate::error::StoreError;
use crate::model::CoordinatorFence;
use crate::rules::schedules as rules;
use crate::rules::tasks::validate_new_task;
use crate::schedules::*;
use crate::tasks::{NewTask, TaskId};

/// A schedule's row after a fire call: its cursor, and its last slot that made a task.
type After = (DateTime<Utc>, Option<(DateTime<Utc>, TaskId)>);

/// The columns of `helix_schedules`, in [`ScheduleRow`]'s order.
const COLUMNS: &str = "id, queue_id, name, cron, every_ms, time_zone, partition_id, priority, max_attempts, \
     timeout_ms, payload, missed_slots, grace_ms, paused, next_slot_at, last_slot_at, last_task_id, created_at, \
     updated_at";

#[derive(QueryableByName)]
#[diesel(table_name = helix_schedules, check_for_backend(Sqlite))]
struct ScheduleRow {
    id: i64,
    queue_id: i64,
    name: String,
    cron: Option<String>,
    every_ms: Option<i64>,
    time_zone: String,
    partition_id: i64,
    priority: i64,
    max_attempts: i64,
    timeout_ms: i64,
    payload: Vec<u8>,
    missed_slots: String,
    grace_ms: i64,
    paused: bool,
    next_slot_at: NaiveDateTime,
    last_slot_at: Option<NaiveDateTime>,
    last_task_id: Option<i64>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

impl ScheduleRow {
    fn record(self) -> Result<ScheduleRecord, StoreError> {
        StoredSchedule {
            id: self.id,
            queue_id: self.queue_id,
            name: self.name,
            cron: self.cron,
            every_ms: self.every_ms,
            time_zone: self.time_zone,
            partition_id: self.partition_id,
            priority: self.priority,
            max_attempts: self.max_attempts,
            timeout_ms: self.timeout_ms,
            payload: self.payload,
            missed_slots: self.missed_slots,
            grace_ms: self.grace_ms,
            paused: self.paused,
            next_slot_at: self.next_slot_at,
            last_slot_at: self.last_slot_at,
            last_task_id: self.last_task_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
        .record()
    }
}

/// A schedule row with the store's now; `row` is `None` on the one row of a `LEFT JOIN`
/// that found no schedule.
#[derive(QueryableByName)]
struct ClockedRow {
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
    #[diesel(embed)]
    row: Option<ScheduleRow>,
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    partition_count: i64,
}

#[derive(QueryableByName)]
struct RunRow {
    #[diesel(sql_type = BigInt)]
    schedule_id: i64,
    #[diesel(sql_type = Text)]
    slot_at: String,
}

#[derive(QueryableByName)]
struct FutureRunRow {
    #[diesel(sql_type = Text)]
    slot_at: String,
    #[diesel(sql_type = BigInt)]
    task_id: i64,
}

/// An instant at the store's precision (milliseconds): what it keeps and compares.
fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn partitions_of(count: i64) -> Result<PartitionCount, StoreError> {
    u64::try_from(count)
        .ok()
        .and_then(|n| PartitionCount::new(n).ok())
        .ok_or_else(|| StoreError::Database(format!("stored partition count {count}")))
}

fn not_found(queue: QueueId, name: &str) -> Fail {
    Fail(StoreError::NotFound(format!("schedule {name:?} of queue {queue}")))
}

fn by_id(conn: &mut SqliteConnection, id: i64) -> Tx<ScheduleRecord> {
    let row: ScheduleRow = sql_query(format!("SELECT {COLUMNS} FROM helix_schedules WHERE id = ?"))
        .bind::<BigInt, _>(id)
        .get_result(conn)?;
    Ok(row.record()?)
}

fn by_name(conn: &mut SqliteConnection, queue: QueueId, name: &str) -> Tx<ScheduleRow> {
    let row: Option<ScheduleRow> =
        sql_query(format!("SELECT {COLUMNS} FROM helix_schedules WHERE queue_id = ? AND name = ?"))
            .bind::<BigInt, _>(to_i64(queue.0, "queue id")?)
            .bind::<Text, _>(name)
            .get_result(conn)
            .optional()?;
    row.ok_or_else(|| not_found(queue, name))
}

/// Cancels the still pending tasks of `schedule`'s slots after `now` and forgets their runs.
fn cancel_future_slots(conn: &mut SqliteConnection, schedule: i64, now: DateTime<Utc>) -> Tx<()> {
    let runs: Vec<FutureRunRow> =
        sql_query("SELECT slot_at, task_id FROM helix_schedule_runs WHERE schedule_id = ? AND slot_at > ?")
            .bind::<BigInt, _>(schedule)
            .bind::<Text, _>(text(now))
            .load(conn)?;
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = runs.iter().map(|r| r.task_id).collect();
    let cancelled: HashSet<i64> = tasks::cancel_future(conn, now, &ids)?.into_iter().collect();
    let slots: Vec<&str> =
        runs.iter().filter(|r| cancelled.contains(&r.task_id)).map(|r| r.slot_at.as_str()).collect();
    for chunk in slots.chunks(MAX_BINDS - 1) {
        let mut q = sql_query(format!(
            "DELETE FROM helix_schedule_runs WHERE schedule_id = ? AND slot_at IN ({})",
            marks(chunk.len())
        ))
        .into_boxed::<Sqlite>()
        .bind::<BigInt, _>(schedule);
        for slot in chunk {
            q = q.bind::<Text, _>(*slot);
        }
        q.execute(conn)?;
    }
    Ok(())
}

// ---- operations ---------------------------------------------------------------------------

/// Creates a schedule of `queue`; see [`Store::create_schedule`](crate::Store::create_schedule).
pub(super) fn create(conn: &mut SqliteConnection, queue: QueueId, spec: &NewSchedule) -> Tx<ScheduleRecord> {
    let queue_id = to_i64(queue.0, "queue id")?;
    let count: Option<QueueRow> = sql_query("SELECT id, partition_count FROM helix_queues WHERE id = ?")
        .bind::<BigInt, _>(queue_id)
        .get_result(conn)
        .optional()?;
    let Some(count) = count else {
        return Err(Fail(StoreError::NotFound(format!("queue {queue}"))));
    };
    let now = db_now(conn)?;
    let slots = rules::validate_schedule(spec, partitions_of(count.partition_count)?, now)?;
    let next_slot_at = stored(rules::first_slot(&slots, now)?);
    let (cron, every_ms) = recurrence_columns(&spec.recurrence);
    let inserted: Result<ScheduleRow, _> = sql_query(format!(
        "INSERT INTO helix_schedules ({COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?) \
         RETURNING {COLUMNS}"
    ))
    .bind::<BigInt, _>(queue_id)
    .bind::<Text, _>(spec.name.as_str())
    .bind::<Nullable<Text>, _>(cron)
    .bind::<Nullable<BigInt>, _>(every_ms)
    .bind::<Text, _>(spec.time_zone.as_str())
    .bind::<BigInt, _>(i64::from(spec.partition.0))
    .bind::<BigInt, _>(i64::from(spec.priority))
    .bind::<BigInt, _>(i64::from(spec.max_attempts))
    .bind::<BigInt, _>(millis(spec.timeout))
    .bind::<Binary, _>(spec.payload.as_slice())
    .bind::<Text, _>(spec.missed_slots.as_str())
    .bind::<BigInt, _>(millis(spec.grace))
    .bind::<Bool, _>(spec.paused)
    .bind::<Text, _>(text(next_slot_at))
    .bind::<Text, _>(text(now))
    .bind::<Text, _>(text(now))
    .get_result(conn);
    match inserted {
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            Err(Fail(StoreError::Conflict(format!(
                "queue {queue} already has a schedule named {:?}",
                spec.name
            ))))
        }
        other => Ok(other?.record()?),
    }
}

/// Reads a schedule by name.
pub(super) fn get(conn: &mut SqliteConnection, queue: QueueId, name: &str) -> Tx<ScheduleRecord> {
    Ok(by_name(conn, queue, name)?.record()?)
}

/// Every schedule of `queue` (of all queues with `None`), by (queue, name).
pub(super) fn list(conn: &mut SqliteConnection, queue: Option<QueueId>) -> Tx<Vec<ScheduleRecord>> {
    let rows: Vec<ScheduleRow> = match queue {
        Some(queue) => sql_query(format!(
            "SELECT {COLUMNS} FROM helix_schedules WHERE queue_id = ? ORDER BY queue_id, name"
        ))
        .bind::<BigInt, _>(to_i64(queue.0, "queue id")?)
        .load(conn)?,
        None => {
            sql_query(format!("SELECT {COLUMNS} FROM helix_schedules ORDER BY queue_id, name")).load(conn)?
        }
    };
    Ok(rows.into_iter().map(ScheduleRow::record).collect::<Result<_, _>>()?)
}

/// Pauses or resumes a schedule; see
/// [`Store::set_schedule_paused`](crate::Store::set_schedule_paused).
pub(super) fn set_paused(
    conn: &mut SqliteConnection,
    queue: QueueId,
    name: &str,
    paused: bool,
) -> Tx<ScheduleRecord> {
    let row = by_name(conn, queue, name)?;
    let id = row.id;
    if row.paused != paused {
        let now = db_now(conn)?;
        let next_slot_at = if paused {
            cancel_future_slots(conn, id, now)?;
            row.next_slot_at.and_utc()
        } else {
            let record = row.record()?;
            let slots = rules::Slots::new(&record.spec.recurrence, &record.spec.time_zone)
                .map_err(|e| StoreError::Database(format!("schedule {}: {e}", record.id)))?;
            stored(rules::first_slot(&slots, now)?)
        };
        sql_query("UPDATE helix_schedules SET paused = ?, next_slot_at = ?, updated_at = ? WHERE id = ?")
            .bind::<Bool, _>(paused)
            .bind::<Text, _>(text(next_slot_at))
            .bind::<Text, _>(text(now))
            .bind::<BigInt, _>(id)
            .execute(conn)?;
    }
    by_id(conn, id)
}

/// Deletes a schedule, cancelling the tasks of its future slots.
pub(super) fn delete(conn: &mut SqliteConnection, queue: QueueId, name: &str) -> Tx<()> {
    let row = by_name(conn, queue, name)?;
    let now = db_now(conn)?;
    cancel_future_slots(conn, row.id, now)?;
    for statement in
        ["DELETE FROM helix_schedule_runs WHERE schedule_id = ?", "DELETE FROM helix_schedules WHERE id = ?"]
    {
        sql_query(statement).bind::<BigInt, _>(row.id).execute(conn)?;
    }
    Ok(())
}

/// The statements that delete the schedules of a queue (bound to its id) and their runs.
pub(super) const DELETE_QUEUE: [&str; 2] = [
    "DELETE FROM helix_schedule_runs WHERE schedule_id IN (SELECT id FROM helix_schedules WHERE queue_id = ?)",
    "DELETE FROM helix_schedules WHERE queue_id = ?",
];

/// The store's now and the schedules due by now + `horizon` (an SQLite date modifier), in
/// one statement.
pub(super) fn due(
    conn: &mut SqliteConnection,
    horizon: String,
    limit: u32,
) -> Tx<(DateTime<Utc>, Vec<ScheduleRecord>)> {
    if limit == 0 {
        return Ok((db_now(conn)?, Vec::new()));
    }
    // The LEFT JOIN answers the clock even when nothing is due; ix_schedules_due serves the
    // range and the order.
    let prefixed: Vec<String> = COLUMNS.split(", ").map(|c| format!("s.{}", c.trim())).collect();
    let rows: Vec<ClockedRow> = sql_query(format!(
        "SELECT c.now, {} FROM (SELECT {} AS now, {} AS until) AS c LEFT JOIN helix_schedules AS s \
         ON s.paused = 0 AND s.next_slot_at <= c.until ORDER BY s.next_slot_at, s.id LIMIT ?",
        prefixed.join(", "),
        now!(),
        now!(modified)
    ))
    .bind::<Text, _>(horizon)
    .bind::<BigInt, _>(i64::from(limit))
    .load(conn)?;
    let now = <[ClockedRow]>::first(&rows)
        .map(|r| r.now.and_utc())
        .ok_or_else(|| StoreError::Database("the due schedules answered no clock".to_owned()))?;
    // A row this binary cannot read (written by another version, or by hand) is left out
    // with a warning rather than stopping every schedule.
    let due = rows
        .into_iter()
        .filter_map(|r| r.row)
        .filter_map(|row| match row.record() {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::warn!(%error, "a schedule row that does not read is left out");
                None
            }
        })
        .collect();
    Ok((now, due))
}

/// Forgets up to `limit` runs of slots before `cutoff` (an SQLite date modifier).
pub(super) fn prune_runs(conn: &mut SqliteConnection, cutoff: String, limit: u32) -> Tx<u64> {
    let pruned = sql_query(concat!(
        "DELETE FROM helix_schedule_runs WHERE (schedule_id, slot_at) IN (SELECT schedule_id, slot_at \
         FROM helix_schedule_runs WHERE slot_at < ",
        now!(modified),
        " ORDER BY slot_at LIMIT ?)"
    ))
    .bind::<Text, _>(cutoff)
    .bind::<BigInt, _>(i64::from(limit))
    .execute(conn)?;
    Ok(pruned as u64)
}

/// The leader's fire; see [`Store::fire_schedules`](crate::Store::fire_schedules). The
/// caller checked the sizes ([`rules::validate_fires`]).
pub(super) fn fire(
    conn: &mut SqliteConnection,
    fence: &CoordinatorFence,
    fires: &[ScheduleFire],
) -> Tx<Vec<FireOutcome>> {
    check_fence(conn, fence)?;
    let mut ids: Vec<i64> = fires.iter().filter_map(|f| i64::try_from(f.schedule.0).ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut schedules: HashMap<u64, ScheduleRecord> = HashMap::new();
    for chunk in ids.chunks(MAX_BINDS) {
        let mut q =
            sql_query(format!("SELECT {COLUMNS} FROM helix_schedules WHERE id IN ({})", marks(chunk.len())))
                .into_boxed::<Sqlite>();
        for id in chunk {
            q = q.bind::<BigInt, _>(*id);
        }
        for row in q.load::<ScheduleRow>(conn)? {
            let record = row.record()?;
            schedules.insert(record.id.0, record);
        }
    }
    if schedules.is_empty() {
        return Ok(vec![FireOutcome::Stale; fires.len()]);
    }
    let now = db_now(conn)?;
    let mut queue_ids: Vec<i64> =
        schedules.values().map(|r| to_i64(r.queue_id.0, "queue id")).collect::<Result<_, _>>()?;
    queue_ids.sort_unstable();
    queue_ids.dedup();
    let mut q = sql_query(format!(
        "SELECT id, partition_count FROM helix_queues WHERE id IN ({})",
        marks(queue_ids.len())
    ))
    .into_boxed::<Sqlite>();
    for id in &queue_ids {
        q = q.bind::<BigInt, _>(*id);
    }
    let mut partitions: HashMap<u64, PartitionCount> = HashMap::new();
    for row in q.load::<QueueRow>(conn)? {
        partitions.insert(to_u64(row.id, "queue id")?, partitions_of(row.partition_count)?);
    }

    // Every task of every fire is checked before anything is written.
    let mut due: Vec<Vec<DateTime<Utc>>> = Vec::with_capacity(fires.len());
    let mut invalid: HashMap<usize, String> = HashMap::new();
    for fire in fires {
        let mut at = Vec::new();
        if let Some(record) = schedules.get(&fire.schedule.0) {
            let count = partitions.get(&record.queue_id.0).copied().ok_or_else(|| {
                StoreError::Database(format!("the queue of schedule {} is gone", record.id))
            })?;
            for (_, task) in &fire.slots {
                match validate_new_task(task, count, now) {
                    Ok(due_at) => at.push(due_at),
                    Err(StoreError::Invalid(reason)) => {
                        invalid.insert(due.len(), reason);
                        break;
                    }
                    Err(other) => return Err(other.into()),
                }
            }
        }
        due.push(at);
    }

    // Which fires apply, in order: a second fire of one schedule sees the first's cursor.
    let mut cursors: HashMap<u64, (bool, DateTime<Utc>)> =
        schedules.values().map(|r| (r.id.0, (r.spec.paused, r.next_slot_at))).collect();
    let mut applied: Vec<usize> = Vec::new();
    for (i, fire) in fires.iter().enumerate() {
        if let Some((paused, cursor)) = cursors.get_mut(&fire.schedule.0)
            && !*paused
            && *cursor == stored(fire.cursor)
        {
            *cursor = stored(fire.next_slot_at);
            applied.push(i);
        }
    }

    // A fire whose tasks the store refuses (a schedule stored by an older release, or edited
    // by hand) makes none: its slots are skipped, so that it cannot hold up the others.
    let order = applied.clone();
    applied.retain(|i| !invalid.contains_key(i));

    // The runs, each with task 0 until its task is enqueued; the answer lists exactly the
    // runs inserted now.
    let keys: Vec<(i64, String)> = applied
        .iter()
        .flat_map(|&i| fires[i].slots.iter().map(move |(slot, _)| (fires[i].schedule.0 as i64, text(*slot))))
        .collect();
    let mut fresh: HashSet<(i64, String)> = HashSet::new();
    for chunk in keys.chunks(MAX_BINDS / 2) {
        let mut q = sql_query(format!(
            "INSERT INTO helix_schedule_runs (schedule_id, slot_at, task_id) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING schedule_id, slot_at",
            vec!["(?, ?, 0)"; chunk.len()].join(", ")
        ))
        .into_boxed::<Sqlite>();
        for (schedule, slot) in chunk {
            q = q.bind::<BigInt, _>(*schedule).bind::<Text, _>(slot.as_str());
        }
        fresh.extend(q.load::<RunRow>(conn)?.into_iter().map(|r| (r.schedule_id, r.slot_at)));
    }

    // The slots inserted now make their tasks, enqueued per queue as an enqueue does.
    let mut plans: Vec<(usize, usize, Option<TaskId>)> = Vec::new();
    let mut by_queue: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &i in &applied {
        let fire = &fires[i];
        for (k, (slot, _)) in fire.slots.iter().enumerate() {
            if fresh.remove(&(fire.schedule.0 as i64, text(*slot))) {
                by_queue.entry(schedules[&fire.schedule.0].queue_id.0).or_default().push(plans.len());
            }
            plans.push((i, k, None));
        }
    }
    for (queue, members) in &by_queue {
        let batch: Vec<NewTask> =
            members.iter().map(|&p| fires[plans[p].0].slots[plans[p].1].1.clone()).collect();
        let at: Vec<DateTime<Utc>> = members.iter().map(|&p| due[plans[p].0][plans[p].1]).collect();
        let enqueued = tasks::insert_validated(conn, to_i64(*queue, "queue id")?, now, &batch, &at)?;
        for (&p, e) in members.iter().zip(enqueued) {
            plans[p].2 = Some(e.id);
        }
    }
    let made: Vec<(i64, String, i64)> = plans
        .iter()
        .filter_map(|&(i, k, task)| {
            task.map(|t| (fires[i].schedule.0 as i64, text(fires[i].slots[k].0), t.0 as i64))
        })
        .collect();
    for chunk in made.chunks((MAX_BINDS / 3).min(MAX_COMPOUND_ROWS)) {
        let values = derived(chunk.len(), "? AS schedule_id, ? AS slot_at, ? AS task_id", "?, ?, ?");
        let mut q = sql_query(format!(
            "UPDATE helix_schedule_runs AS r SET task_id = v.task_id FROM ({values}) AS v \
             WHERE r.schedule_id = v.schedule_id AND r.slot_at = v.slot_at"
        ))
        .into_boxed::<Sqlite>();
        for (schedule, slot, task) in chunk {
            q = q.bind::<BigInt, _>(*schedule).bind::<Text, _>(slot.as_str()).bind::<BigInt, _>(*task);
        }
        let updated = q.execute(conn)?;
        if updated != chunk.len() {
            return Err(Fail(StoreError::Database(format!(
                "recorded the tasks of {updated} of {} schedule runs",
                chunk.len()
            ))));
        }
    }

    // The answers, and each schedule's row afterwards.
    let mut out = vec![FireOutcome::Stale; fires.len()];
    let mut rows: BTreeMap<u64, After> = BTreeMap::new();
    let mut p = 0;
    for &i in &order {
        let fire = &fires[i];
        if let Some(reason) = invalid.get(&i) {
            rows.entry(fire.schedule.0).or_insert((fire.next_slot_at, None)).0 = fire.next_slot_at;
            out[i] = FireOutcome::Invalid(reason.clone());
            continue;
        }
        let (mut created, mut duplicates) = (Vec::new(), Vec::new());
        for (slot, _) in &fire.slots {
            match plans[p].2 {
                Some(task) => created.push((*slot, task)),
                None => duplicates.push(*slot),
            }
            p += 1;
        }
        let row = rows.entry(fire.schedule.0).or_insert((fire.next_slot_at, None));
        row.0 = fire.next_slot_at;
        if let Some(last) = created.last() {
            row.1 = Some(*last);
        }
        out[i] = FireOutcome::Fired { created, duplicates };
    }
    for (id, (next, last)) in rows {
        sql_query(
            "UPDATE helix_schedules SET next_slot_at = ?, last_slot_at = COALESCE(?, last_slot_at), \
             last_task_id = COALESCE(?, last_task_id), updated_at = ? WHERE id = ?",
        )
        .bind::<Text, _>(text(next))
        .bind::<Nullable<Text>, _>(last.map(|(slot, _)| text(slot)))
        .bind::<Nullable<BigInt>, _>(last.map(|(_, task)| task.0 as i64))
        .bind::<Text, _>(text(now))
        .bind::<BigInt, _>(id as i64)
        .execute(conn)?;
    }
    Ok(out)
}

/// A horizon or retention as an SQLite date modifier, bounded to the range of its dates.
pub(super) fn modifier(sign: char, d: Duration) -> String {
    super::modifier(sign, d.min(Duration::from_secs(400 * 366 * 86_400)))
}

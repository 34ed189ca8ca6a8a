//! Recurring schedules on MySQL / MariaDB (`helix_schedules`, `helix_schedule_runs`), each
//! operation on one connection inside the transaction its caller opened. The decisions come
//! from [`crate::rules::schedules`], instants from `NOW(6)`.
//!
//! - **Locks.** Every write of a schedule's row or of its runs first locks the schedule row
//!   (`SELECT … FOR UPDATE`), so a fire, a pause and a delete of one schedule take turns.
//!   `delete_queue` deletes the queue's schedules before its tasks, so a fire that committed
//!   first has its tasks deleted with the queue, and one that waited finds no schedule.
//! - **Once per slot.** A fire inserts each slot's row into `helix_schedule_runs` with
//!   `task_id = 0` (`ON DUPLICATE KEY UPDATE` that changes nothing: only a duplicate key is
//!   ignored, every other error still fails the statement), reads back which rows still
//!   hold 0 (exactly the slots inserted now), enqueues only those slots' tasks and writes
//!   their ids into the rows; all in the fire's transaction.
//! - **Statements.** A fire call takes a fixed handful of statements whatever the number of
//!   schedules and slots (up to the bind limit): the term fence, the schedule locks, the
//!   queues, the runs insert, the read of the inserted runs, two per queue for the tasks,
//!   the runs update and the schedules update.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::mysql::Mysql;
use diesel::sql_types::{BigInt, Binary, Bool, Datetime, Integer, Nullable, Text};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use helix_core::{PartitionCount, QueueId};

use super::schema::helix_schedules;
use super::tasks::{self, derived, marks, naive, q_i64, stored_u64};
use super::{Failure, MAX_BINDS, ops};
use crate::error::StoreError;
use crate::model::CoordinatorFence;
use crate::rules::schedules as rules;
use crate::rules::tasks::validate_new_task;
use crate::schedules::*;
use crate::tasks::{NewTask, TaskId};

type Conn = AsyncMysqlConnection;
/// A schedule's row after a fire call: its cursor, and its last slot that made a task.
type After = (DateTime<Utc>, Option<(DateTime<Utc>, TaskId)>);
type Res<T> = Result<T, Failure>;

/// The columns of `helix_schedules`, in [`ScheduleRow`]'s order.
const COLUMNS: [&str; 19] = [
    "id",
    "queue_id",
    "name",
    "cron",
    "every_ms",
    "time_zone",
    "partition_id",
    "priority",
    "max_attempts",
    "timeout_ms",
    "payload",
    "missed_slots",
    "grace_ms",
    "paused",
    "next_slot_at",
    "last_slot_at",
    "last_task_id",
    "created_at",
    "updated_at",
];

/// The columns, each prefixed by `alias` (`""` for none).
fn columns(alias: &str) -> String {
    COLUMNS.iter().map(|c| format!("{alias}{c}")).collect::<Vec<_>>().join(", ")
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_schedules, check_for_backend(Mysql))]
struct ScheduleRow {
    id: i64,
    queue_id: i64,
    name: String,
    cron: Option<String>,
    every_ms: Option<i64>,
    time_zone: String,
    partition_id: i32,
    priority: i32,
    max_attempts: i32,
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
            partition_id: i64::from(self.partition_id),
            priority: i64::from(self.priority),
            max_attempts: i64::from(self.max_attempts),
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
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
    #[diesel(embed)]
    row: Option<ScheduleRow>,
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Integer)]
    partition_count: i32,
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
    #[diesel(sql_type = BigInt)]
    step: i64,
}

#[derive(QueryableByName)]
struct ClockRow {
    #[diesel(sql_type = Integer)]
    partition_count: i32,
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct RunRow {
    #[diesel(sql_type = BigInt)]
    schedule_id: i64,
    #[diesel(sql_type = Datetime)]
    slot_at: NaiveDateTime,
}

#[derive(QueryableByName)]
struct FutureRunRow {
    #[diesel(sql_type = Datetime)]
    slot_at: NaiveDateTime,
    #[diesel(sql_type = BigInt)]
    task_id: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// An instant at the precision of `DATETIME(6)`: what the store keeps and compares.
fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

fn partitions_of(count: i32) -> Result<PartitionCount, StoreError> {
    u64::try_from(count)
        .ok()
        .and_then(|n| PartitionCount::new(n).ok())
        .ok_or_else(|| StoreError::Database(format!("stored partition count {count}")))
}

fn not_found(queue: QueueId, name: &str) -> Failure {
    Failure::Store(StoreError::NotFound(format!("schedule {name:?} of queue {queue}")))
}

async fn by_id(conn: &mut Conn, id: i64) -> Res<ScheduleRecord> {
    let row: ScheduleRow =
        diesel::sql_query(format!("SELECT {} FROM helix_schedules WHERE id = ?", columns("")))
            .bind::<BigInt, _>(id)
            .get_result(conn)
            .await?;
    Ok(row.record()?)
}

/// Locks the schedule `name` of `queue` until commit and reads the store's now.
async fn lock_by_name(conn: &mut Conn, queue: QueueId, name: &str) -> Res<(ScheduleRow, DateTime<Utc>)> {
    let found: Option<ClockedRow> = diesel::sql_query(format!(
        "SELECT NOW(6) AS now, {} FROM helix_schedules WHERE queue_id = ? AND name = ? FOR UPDATE",
        columns("")
    ))
    .bind::<BigInt, _>(q_i64(queue)?)
    .bind::<Text, _>(name)
    .get_result(conn)
    .await
    .optional()?;
    match found {
        // NOW(6) is the instant a statement starts, before it waited for the lock: the now
        // that decides which slots are still ahead is read once the lock is held.
        Some(ClockedRow { row: Some(row), .. }) => Ok((row, super::ops::now(conn).await?)),
        _ => Err(not_found(queue, name)),
    }
}

/// Cancels the still pending tasks of `schedule`'s slots after `now` and forgets their runs,
/// inside the caller's transaction (which locked the schedule row).
async fn cancel_future_slots(conn: &mut Conn, schedule: i64, now: DateTime<Utc>) -> Res<()> {
    let runs: Vec<FutureRunRow> = diesel::sql_query(
        "SELECT slot_at, task_id FROM helix_schedule_runs WHERE schedule_id = ? AND slot_at > ? ORDER BY slot_at",
    )
    .bind::<BigInt, _>(schedule)
    .bind::<Datetime, _>(naive(now))
    .load(conn)
    .await?;
    if runs.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = runs.iter().map(|r| r.task_id).collect();
    let cancelled: HashSet<i64> = tasks::cancel_future(conn, now, &ids).await?.into_iter().collect();
    let slots: Vec<NaiveDateTime> =
        runs.iter().filter(|r| cancelled.contains(&r.task_id)).map(|r| r.slot_at).collect();
    for chunk in slots.chunks(MAX_BINDS - 1) {
        let mut q = diesel::sql_query(format!(
            "DELETE FROM helix_schedule_runs WHERE schedule_id = ? AND slot_at IN ({})",
            marks(chunk.len())
        ))
        .into_boxed::<Mysql>()
        .bind::<BigInt, _>(schedule);
        for slot in chunk {
            q = q.bind::<Datetime, _>(*slot);
        }
        q.execute(conn).await?;
    }
    Ok(())
}

// ---- operations ---------------------------------------------------------------------------

/// Creates a schedule of `queue`; see [`Store::create_schedule`](crate::Store::create_schedule).
pub(super) async fn create(conn: &mut Conn, queue: QueueId, spec: &NewSchedule) -> Res<ScheduleRecord> {
    let queue_id = q_i64(queue)?;
    // In share mode: a concurrent delete_queue waits for this schedule, or this for it.
    let row: Option<ClockRow> = diesel::sql_query(
        "SELECT partition_count, NOW(6) AS now FROM helix_queues WHERE id = ? LOCK IN SHARE MODE",
    )
    .bind::<BigInt, _>(queue_id)
    .get_result(conn)
    .await
    .optional()?;
    let Some(row) = row else {
        return Err(Failure::Store(StoreError::NotFound(format!("queue {queue}"))));
    };
    let now = row.now.and_utc();
    let slots = rules::validate_schedule(spec, partitions_of(row.partition_count)?, now)?;
    let next_slot_at = stored(rules::first_slot(&slots, now)?);
    let (cron, every_ms) = recurrence_columns(&spec.recurrence);
    let inserted = diesel::sql_query(format!(
        "INSERT INTO helix_schedules ({}) VALUES (DEFAULT, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?)",
        columns("")
    ))
    .bind::<BigInt, _>(queue_id)
    .bind::<Text, _>(spec.name.as_str())
    .bind::<Nullable<Text>, _>(cron)
    .bind::<Nullable<BigInt>, _>(every_ms)
    .bind::<Text, _>(spec.time_zone.as_str())
    .bind::<Integer, _>(i32::try_from(spec.partition.0).unwrap_or(i32::MAX))
    .bind::<Integer, _>(spec.priority)
    .bind::<Integer, _>(i32::try_from(spec.max_attempts).unwrap_or(i32::MAX))
    .bind::<BigInt, _>(millis(spec.timeout))
    .bind::<Binary, _>(spec.payload.as_slice())
    .bind::<Text, _>(spec.missed_slots.as_str())
    .bind::<BigInt, _>(millis(spec.grace))
    .bind::<Bool, _>(spec.paused)
    .bind::<Datetime, _>(naive(next_slot_at))
    .bind::<Datetime, _>(row.now)
    .bind::<Datetime, _>(row.now)
    .execute(conn)
    .await;
    match inserted {
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            return Err(Failure::Store(StoreError::Conflict(format!(
                "queue {queue} already has a schedule named {:?}",
                spec.name
            ))));
        }
        other => {
            other?;
        }
    }
    let id: IdRow =
        diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS id").get_result(conn).await?;
    by_id(conn, id.id).await
}

/// Reads a schedule by name.
pub(super) async fn get(conn: &mut Conn, queue: QueueId, name: &str) -> Res<ScheduleRecord> {
    let row: Option<ScheduleRow> = diesel::sql_query(format!(
        "SELECT {} FROM helix_schedules WHERE queue_id = ? AND name = ?",
        columns("")
    ))
    .bind::<BigInt, _>(q_i64(queue)?)
    .bind::<Text, _>(name)
    .get_result(conn)
    .await
    .optional()?;
    match row {
        Some(row) => Ok(row.record()?),
        None => Err(not_found(queue, name)),
    }
}

/// Every schedule of `queue` (of all queues with `None`), by (queue, name).
pub(super) async fn list(conn: &mut Conn, queue: Option<QueueId>) -> Res<Vec<ScheduleRecord>> {
    let rows: Vec<ScheduleRow> = match queue {
        Some(queue) => {
            diesel::sql_query(format!(
                "SELECT {} FROM helix_schedules WHERE queue_id = ? ORDER BY queue_id, name",
                columns("")
            ))
            .bind::<BigInt, _>(q_i64(queue)?)
            .load(conn)
            .await?
        }
        None => {
            diesel::sql_query(format!("SELECT {} FROM helix_schedules ORDER BY queue_id, name", columns("")))
                .load(conn)
                .await?
        }
    };
    Ok(rows.into_iter().map(ScheduleRow::record).collect::<Result<_, _>>()?)
}

/// Pauses or resumes a schedule; see
/// [`Store::set_schedule_paused`](crate::Store::set_schedule_paused).
pub(super) async fn set_paused(
    conn: &mut Conn,
    queue: QueueId,
    name: &str,
    paused: bool,
) -> Res<ScheduleRecord> {
    let (row, now) = lock_by_name(conn, queue, name).await?;
    let id = row.id;
    if row.paused != paused {
        let next_slot_at = if paused {
            cancel_future_slots(conn, id, now).await?;
            row.next_slot_at.and_utc()
        } else {
            let record = row.record()?;
            let slots = rules::Slots::new(&record.spec.recurrence, &record.spec.time_zone)
                .map_err(|e| StoreError::Database(format!("schedule {}: {e}", record.id)))?;
            stored(rules::first_slot(&slots, now)?)
        };
        diesel::sql_query(
            "UPDATE helix_schedules SET paused = ?, next_slot_at = ?, updated_at = ? WHERE id = ?",
        )
        .bind::<Bool, _>(paused)
        .bind::<Datetime, _>(naive(next_slot_at))
        .bind::<Datetime, _>(naive(now))
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await?;
    }
    by_id(conn, id).await
}

/// Deletes a schedule, cancelling the tasks of its future slots.
pub(super) async fn delete(conn: &mut Conn, queue: QueueId, name: &str) -> Res<()> {
    let (row, now) = lock_by_name(conn, queue, name).await?;
    cancel_future_slots(conn, row.id, now).await?;
    for statement in
        ["DELETE FROM helix_schedule_runs WHERE schedule_id = ?", "DELETE FROM helix_schedules WHERE id = ?"]
    {
        diesel::sql_query(statement).bind::<BigInt, _>(row.id).execute(conn).await?;
    }
    Ok(())
}

/// Deletes the schedules of a deleted queue and their runs, in `delete_queue`'s transaction
/// (before its tasks: see the module documentation).
pub(super) async fn delete_queue(conn: &mut Conn, queue_id: i64) -> Res<()> {
    // The schedule rows first, then their runs, in the order a fire locks them, so the two
    // never wait on each other crosswise.
    for statement in [
        "SELECT id FROM helix_schedules WHERE queue_id = ? ORDER BY id FOR UPDATE",
        "DELETE FROM helix_schedule_runs WHERE schedule_id IN \
         (SELECT id FROM helix_schedules WHERE queue_id = ?)",
        "DELETE FROM helix_schedules WHERE queue_id = ?",
    ] {
        diesel::sql_query(statement).bind::<BigInt, _>(queue_id).execute(conn).await?;
    }
    Ok(())
}

/// The store's now and the schedules due by now + `horizon`, in one statement.
pub(super) async fn due(
    conn: &mut Conn,
    horizon: Duration,
    limit: u32,
) -> Res<(DateTime<Utc>, Vec<ScheduleRecord>)> {
    // Four centuries ahead is after any cursor; beyond, MySQL's date arithmetic overflows.
    let micros =
        i64::try_from(horizon.min(Duration::from_secs(400 * 366 * 86_400)).as_micros()).unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok((ops::now(conn).await?, Vec::new()));
    }
    // The LEFT JOIN answers the clock even when nothing is due; ix_schedules_due serves the
    // range and the order.
    let rows: Vec<ClockedRow> = diesel::sql_query(format!(
        "SELECT c.now, {} FROM (SELECT NOW(6) AS now) AS c LEFT JOIN helix_schedules AS s \
         ON s.paused = FALSE AND s.next_slot_at <= c.now + INTERVAL ? MICROSECOND \
         ORDER BY s.next_slot_at, s.id LIMIT ?",
        columns("s.")
    ))
    .bind::<BigInt, _>(micros)
    .bind::<BigInt, _>(i64::from(limit))
    .load(conn)
    .await?;
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

/// Forgets up to `limit` runs of slots more than `older_than` before now.
pub(super) async fn prune_runs(conn: &mut Conn, older_than: Duration, limit: u32) -> Res<u64> {
    let micros = i64::try_from(older_than.min(Duration::from_secs(400 * 366 * 86_400)).as_micros())
        .unwrap_or(i64::MAX);
    let deleted = diesel::sql_query(
        "DELETE FROM helix_schedule_runs WHERE slot_at < NOW(6) - INTERVAL ? MICROSECOND ORDER BY slot_at LIMIT ?",
    )
    .bind::<BigInt, _>(micros)
    .bind::<BigInt, _>(i64::from(limit))
    .execute(conn)
    .await?;
    Ok(deleted as u64)
}

/// A slot of an applied fire: its task once enqueued.
struct SlotPlan {
    fire: usize,
    slot: usize,
    task: Option<TaskId>,
}

/// The leader's fire; see [`Store::fire_schedules`](crate::Store::fire_schedules). The
/// caller checked the sizes ([`rules::validate_fires`]).
pub(super) async fn fire(
    conn: &mut Conn,
    fence: &CoordinatorFence,
    fires: &[ScheduleFire],
) -> Res<Vec<FireOutcome>> {
    ops::check_fence(conn, fence).await?;
    // Ids out of the column's range name no schedule: their fires are stale.
    let mut ids: Vec<i64> = fires.iter().filter_map(|f| i64::try_from(f.schedule.0).ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(vec![FireOutcome::Stale; fires.len()]);
    }
    let q = diesel::sql_query(format!(
        "SELECT {} FROM helix_schedules WHERE id IN ({}) ORDER BY id FOR UPDATE",
        columns(""),
        marks(ids.len())
    ))
    .into_boxed::<Mysql>();
    let rows: Vec<ScheduleRow> = tasks::bind_ids(q, &ids).load(conn).await?;
    let mut schedules: HashMap<u64, ScheduleRecord> = HashMap::new();
    for row in rows {
        let record = row.record()?;
        schedules.insert(record.id.0, record);
    }
    if schedules.is_empty() {
        return Ok(vec![FireOutcome::Stale; fires.len()]);
    }
    // The queues' partition counts (a plain read: a queue's schedules go before it does),
    // the store's now, and the auto-increment step for the task ids.
    let mut queue_ids: Vec<i64> = schedules.values().map(|r| q_i64(r.queue_id)).collect::<Result<_, _>>()?;
    queue_ids.sort_unstable();
    queue_ids.dedup();
    let q = diesel::sql_query(format!(
        "SELECT id, partition_count, NOW(6) AS now, CAST(@@auto_increment_increment AS SIGNED) AS step \
         FROM helix_queues WHERE id IN ({})",
        marks(queue_ids.len())
    ))
    .into_boxed::<Mysql>();
    let queues: Vec<QueueRow> = tasks::bind_ids(q, &queue_ids).load(conn).await?;
    let (now, step) = match <[QueueRow]>::first(&queues) {
        Some(q) => (q.now.and_utc(), u64::try_from(q.step).unwrap_or(1).max(1)),
        None => {
            return Err(Failure::Store(StoreError::Database("the schedules' queues are gone".to_owned())));
        }
    };
    let mut partitions: HashMap<u64, PartitionCount> = HashMap::new();
    for q in &queues {
        partitions.insert(stored_u64(q.id, "queue id")?, partitions_of(q.partition_count)?);
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

    // The runs, each with task 0 until its task is enqueued; a slot already there stays as
    // it is.
    let keys: Vec<(i64, NaiveDateTime)> = applied
        .iter()
        .flat_map(|&i| fires[i].slots.iter().map(move |(slot, _)| (i, naive(stored(*slot)))))
        .map(|(i, slot)| (fires[i].schedule.0 as i64, slot))
        .collect();
    for chunk in keys.chunks(MAX_BINDS / 2) {
        let mut q = diesel::sql_query(format!(
            "INSERT INTO helix_schedule_runs (schedule_id, slot_at, task_id) VALUES {} \
             ON DUPLICATE KEY UPDATE task_id = task_id",
            vec!["(?, ?, 0)"; chunk.len()].join(", ")
        ))
        .into_boxed::<Mysql>();
        for (schedule, slot) in chunk {
            q = q.bind::<BigInt, _>(*schedule).bind::<Datetime, _>(*slot);
        }
        q.execute(conn).await?;
    }
    // The runs inserted now: those still at task 0, read by primary key ranges.
    let mut ranges: BTreeMap<i64, (NaiveDateTime, NaiveDateTime)> = BTreeMap::new();
    for (schedule, slot) in &keys {
        let range = ranges.entry(*schedule).or_insert((*slot, *slot));
        range.0 = range.0.min(*slot);
        range.1 = range.1.max(*slot);
    }
    let ranges: Vec<(i64, (NaiveDateTime, NaiveDateTime))> = ranges.into_iter().collect();
    let mut fresh: HashSet<(i64, NaiveDateTime)> = HashSet::new();
    for chunk in ranges.chunks(MAX_BINDS / 3) {
        let mut q = diesel::sql_query(format!(
            "SELECT schedule_id, slot_at FROM helix_schedule_runs WHERE task_id = 0 AND ({})",
            vec!["(schedule_id = ? AND slot_at BETWEEN ? AND ?)"; chunk.len()].join(" OR ")
        ))
        .into_boxed::<Mysql>();
        for (schedule, (first, last)) in chunk {
            q = q.bind::<BigInt, _>(*schedule).bind::<Datetime, _>(*first).bind::<Datetime, _>(*last);
        }
        let rows: Vec<RunRow> = q.load(conn).await?;
        fresh.extend(rows.into_iter().map(|r| (r.schedule_id, r.slot_at)));
    }

    // The slots inserted now make their tasks, enqueued per queue as an enqueue does.
    let mut plans: Vec<SlotPlan> = Vec::new();
    let mut by_queue: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for &i in &applied {
        let fire = &fires[i];
        for (k, (slot, _)) in fire.slots.iter().enumerate() {
            if fresh.remove(&(fire.schedule.0 as i64, naive(stored(*slot)))) {
                let queue = schedules[&fire.schedule.0].queue_id.0;
                by_queue.entry(queue).or_default().push(plans.len());
            }
            plans.push(SlotPlan { fire: i, slot: k, task: None });
        }
    }
    for (queue, members) in &by_queue {
        let batch: Vec<NewTask> =
            members.iter().map(|&p| fires[plans[p].fire].slots[plans[p].slot].1.clone()).collect();
        let at: Vec<DateTime<Utc>> = members.iter().map(|&p| due[plans[p].fire][plans[p].slot]).collect();
        let queue_id =
            i64::try_from(*queue).map_err(|_| StoreError::Database(format!("queue id {queue}")))?;
        let enqueued = tasks::insert_validated(conn, queue_id, now, &batch, &at, step).await?;
        for (&p, e) in members.iter().zip(enqueued) {
            plans[p].task = Some(e.id);
        }
    }
    let made: Vec<(i64, NaiveDateTime, i64)> = plans
        .iter()
        .filter_map(|p| {
            let fire = &fires[p.fire];
            p.task.map(|t| (fire.schedule.0 as i64, naive(stored(fire.slots[p.slot].0)), t.0 as i64))
        })
        .collect();
    for chunk in made.chunks(MAX_BINDS / 3) {
        let values = derived(chunk.len(), "? AS schedule_id, ? AS slot_at, ? AS task_id", "?, ?, ?");
        let mut q = diesel::sql_query(format!(
            "UPDATE helix_schedule_runs AS r JOIN ({values}) AS v ON r.schedule_id = v.schedule_id \
             AND r.slot_at = v.slot_at SET r.task_id = v.task_id"
        ))
        .into_boxed::<Mysql>();
        for (schedule, slot, task) in chunk {
            q = q.bind::<BigInt, _>(*schedule).bind::<Datetime, _>(*slot).bind::<BigInt, _>(*task);
        }
        let updated = q.execute(conn).await?;
        if updated != chunk.len() {
            return Err(Failure::Store(StoreError::Database(format!(
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
            match plans[p].task {
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
    let rows: Vec<(u64, After)> = rows.into_iter().collect();
    for chunk in rows.chunks(MAX_BINDS / 4 - 1) {
        let values = derived(
            chunk.len(),
            "? AS id, ? AS next_slot_at, ? AS last_slot_at, ? AS last_task_id",
            "?, ?, ?, ?",
        );
        let mut q = diesel::sql_query(format!(
            "UPDATE helix_schedules AS s JOIN ({values}) AS v ON s.id = v.id SET s.next_slot_at = v.next_slot_at, \
             s.last_slot_at = COALESCE(v.last_slot_at, s.last_slot_at), \
             s.last_task_id = COALESCE(v.last_task_id, s.last_task_id), s.updated_at = ?"
        ))
        .into_boxed::<Mysql>();
        for (id, (next, last)) in chunk {
            q = q
                .bind::<BigInt, _>(*id as i64)
                .bind::<Datetime, _>(naive(stored(*next)))
                .bind::<Nullable<Datetime>, _>(last.map(|(slot, _)| naive(stored(slot))))
                .bind::<Nullable<BigInt>, _>(last.map(|(_, task)| task.0 as i64));
        }
        q.bind::<Datetime, _>(naive(now)).execute(conn).await?;
    }
    Ok(out)
}

//! The task queue on SQLite (`helix_tasks` and `helix_task_history`). Every write runs in the
//! caller's `BEGIN IMMEDIATE` transaction, so it is the only writer while it decides: the
//! dedup check and the insert cannot interleave with another enqueue. The decisions come from
//! [`crate::rules::tasks`]; instants come from SQLite's clock, read once per transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_query;
use diesel::sql_types::{BigInt, Binary, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;
use helix_core::{Epoch, PartitionCount, PartitionId, QueueId};

use super::{Fail, MAX_BINDS, Tx, to_i64, to_u64, worker_id};
use crate::error::{StoreError, StoreResult};
use crate::rules::tasks::{self as rules, TaskHead, TaskWrite};
use crate::tasks::*;

type Query<'a> = BoxedSqlQuery<'a, Sqlite, SqlQuery>;

/// The columns of both task tables but `finished_at`, in [`TaskRow`]'s order.
const COLUMNS: &str = "id, queue_id, partition_id, state, priority, run_at, attempts, max_attempts, timeout_ms, \
     dedup_key, payload, claimed_epoch, claimed_by, created_at, started_at, deadline_at, last_error, result";

/// The columns an enqueue writes, in the order [`insert_rows`] binds them.
const INSERT_COLUMNS: usize = 9;

#[derive(QueryableByName)]
struct TaskRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = BigInt)]
    partition_id: i64,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    priority: i64,
    #[diesel(sql_type = Timestamp)]
    run_at: NaiveDateTime,
    #[diesel(sql_type = BigInt)]
    attempts: i64,
    #[diesel(sql_type = BigInt)]
    max_attempts: i64,
    #[diesel(sql_type = BigInt)]
    timeout_ms: i64,
    #[diesel(sql_type = Nullable<Text>)]
    dedup_key: Option<String>,
    #[diesel(sql_type = Binary)]
    payload: Vec<u8>,
    #[diesel(sql_type = Nullable<BigInt>)]
    claimed_epoch: Option<i64>,
    #[diesel(sql_type = Nullable<Binary>)]
    claimed_by: Option<Vec<u8>>,
    #[diesel(sql_type = Timestamp)]
    created_at: NaiveDateTime,
    #[diesel(sql_type = Nullable<Timestamp>)]
    started_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    deadline_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    result: Option<String>,
    #[diesel(sql_type = Nullable<Timestamp>)]
    finished_at: Option<NaiveDateTime>,
}

impl TaskRow {
    fn record(self) -> Result<TaskRecord, StoreError> {
        let int = |v: i64, what: &str| {
            u32::try_from(v)
                .map_err(|_| StoreError::Database(format!("stored task {what} {v} is out of range")))
        };
        Ok(TaskRecord {
            id: TaskId(to_u64(self.id, "task id")?),
            queue_id: QueueId(to_u64(self.queue_id, "queue id")?),
            partition: PartitionId(int(self.partition_id, "partition")?),
            state: TaskState::parse(&self.state)?,
            priority: i32::try_from(self.priority).map_err(|_| {
                StoreError::Database(format!("stored priority {} is out of range", self.priority))
            })?,
            run_at: self.run_at.and_utc(),
            attempts: int(self.attempts, "attempts")?,
            max_attempts: int(self.max_attempts, "max attempts")?,
            timeout: Duration::from_millis(to_u64(self.timeout_ms, "timeout")?),
            dedup_key: self.dedup_key,
            payload: self.payload,
            claimed_epoch: self.claimed_epoch.map(|e| to_u64(e, "epoch").map(Epoch)).transpose()?,
            claimed_by: self.claimed_by.as_deref().map(worker_id).transpose()?,
            created_at: self.created_at.and_utc(),
            started_at: self.started_at.map(|t| t.and_utc()),
            deadline_at: self.deadline_at.map(|t| t.and_utc()),
            finished_at: self.finished_at.map(|t| t.and_utc()),
            last_error: self.last_error,
            result: self.result,
        })
    }
}

#[derive(QueryableByName)]
struct HeadRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    attempts: i64,
    #[diesel(sql_type = BigInt)]
    max_attempts: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    claimed_epoch: Option<i64>,
}

impl HeadRow {
    fn head(self) -> Result<TaskHead, StoreError> {
        let int = |v: i64| u32::try_from(v).map_err(|_| StoreError::Database(format!("stored attempts {v}")));
        Ok(TaskHead {
            id: TaskId(to_u64(self.id, "task id")?),
            state: TaskState::parse(&self.state)?,
            attempts: int(self.attempts)?,
            max_attempts: int(self.max_attempts)?,
            claimed_epoch: self.claimed_epoch.map(|e| to_u64(e, "epoch").map(Epoch)).transpose()?,
        })
    }
}

/// A task's head with its queue and partition.
#[derive(QueryableByName)]
struct PlacedHeadRow {
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = BigInt)]
    partition_id: i64,
    #[diesel(embed)]
    head: HeadRow,
}

/// A partition whose owner's fence holds, and the store's now.
#[derive(QueryableByName)]
struct FenceRow {
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = BigInt)]
    partition_id: i64,
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct ClockRow {
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct QueueClockRow {
    #[diesel(sql_type = BigInt)]
    partition_count: i64,
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    dedup_key: String,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct DueRow {
    #[diesel(sql_type = BigInt)]
    partition_id: i64,
    #[diesel(sql_type = Nullable<Timestamp>)]
    due: Option<NaiveDateTime>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    partition_id: i64,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct StateRow {
    #[diesel(sql_type = Text)]
    state: String,
}

/// An instant in the stored format (milliseconds, UTC): text order is time order.
pub(super) fn text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

fn id_i64(id: TaskId) -> Result<i64, StoreError> {
    to_i64(id.0, "task id")
}

pub(super) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn bind_task_ids<'a>(mut q: Query<'a>, ids: &[i64]) -> Query<'a> {
    for id in ids {
        q = q.bind::<BigInt, _>(*id);
    }
    q
}

pub(super) fn db_now(conn: &mut SqliteConnection) -> Tx<DateTime<Utc>> {
    let row: ClockRow = sql_query(concat!("SELECT ", now!(), " AS now")).get_result(conn)?;
    Ok(row.now.and_utc())
}

/// Checks the owner's fence on the assignment row (inside the immediate transaction, so it
/// holds until commit) and reads the store's now.
fn check_owner(conn: &mut SqliteConnection, fence: &OwnerFence, claiming: bool) -> Tx<DateTime<Utc>> {
    let sql = if claiming {
        concat!(
            "SELECT ",
            now!(),
            " AS now FROM helix_assignments WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ? \
             AND state = 'ASSIGNED'"
        )
    } else {
        concat!(
            "SELECT ",
            now!(),
            " AS now FROM helix_assignments WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ? \
             AND state <> 'FAILED'"
        )
    };
    let row: Option<ClockRow> = sql_query(sql)
        .bind::<BigInt, _>(to_i64(fence.queue.0, "queue id")?)
        .bind::<BigInt, _>(i64::from(fence.partition.0))
        .bind::<Binary, _>(fence.worker.as_bytes().to_vec())
        .bind::<BigInt, _>(to_i64(fence.epoch.0, "epoch")?)
        .get_result(conn)
        .optional()?;
    row.map(|r| r.now.and_utc()).ok_or_else(|| Fail(rules::fenced(fence)))
}

// ---- enqueue ----------------------------------------------------------------------------

/// Enqueues `tasks` in `queue` on `conn`, inside the transaction the caller holds; see
/// [`Store::enqueue_tasks`](crate::Store::enqueue_tasks) and
/// [`enqueue_in_transaction`](super::enqueue_in_transaction).
pub(super) fn enqueue(conn: &mut SqliteConnection, queue: QueueId, tasks: &[NewTask]) -> Tx<Vec<Enqueued>> {
    let queue_id = to_i64(queue.0, "queue id")?;
    let row: Option<QueueClockRow> =
        sql_query(concat!("SELECT partition_count, ", now!(), " AS now FROM helix_queues WHERE id = ?"))
            .bind::<BigInt, _>(queue_id)
            .get_result(conn)
            .optional()?;
    let Some(row) = row else {
        return Err(Fail(StoreError::NotFound(format!("queue {queue}"))));
    };
    let partitions = u64::try_from(row.partition_count)
        .ok()
        .and_then(|n| PartitionCount::new(n).ok())
        .ok_or_else(|| StoreError::Database(format!("stored partition count {}", row.partition_count)))?;
    let now = row.now.and_utc();
    let due = rules::validate_enqueue(tasks, partitions, now)?;
    insert_validated(conn, queue_id, now, tasks, &due)
}

/// Inserts `tasks`, already validated on the store's `now` and due at `due`, into the queue
/// `queue_id`, as an enqueue does (dedup keys included), inside the caller's transaction.
pub(super) fn insert_validated(
    conn: &mut SqliteConnection,
    queue_id: i64,
    now: DateTime<Utc>,
    tasks: &[NewTask],
    due: &[DateTime<Utc>],
) -> Tx<Vec<Enqueued>> {
    // Keys already held by unfinished tasks: under the write lock nobody else inserts.
    let keys: Vec<&str> = tasks.iter().filter_map(|t| t.dedup_key.as_deref()).collect();
    let mut held: HashMap<String, TaskId> = HashMap::new();
    for chunk in keys.chunks(MAX_BINDS - 1) {
        let sql = format!(
            "SELECT id, dedup_key FROM helix_tasks WHERE queue_id = ? AND dedup_key IN ({})",
            marks(chunk.len())
        );
        let mut q = sql_query(sql).into_boxed::<Sqlite>().bind::<BigInt, _>(queue_id);
        for key in chunk {
            q = q.bind::<Text, _>((*key).to_owned());
        }
        for r in q.load::<KeyRow>(conn)? {
            held.insert(r.dedup_key, TaskId(to_u64(r.id, "task id")?));
        }
    }

    // Which tasks are new, in batch order; a key repeated in the batch goes to its first task.
    enum Slot {
        New(usize),
        Existing(TaskId),
        SameAs(usize),
    }
    let mut slots = Vec::with_capacity(tasks.len());
    let mut fresh: Vec<usize> = Vec::new();
    let mut first_of_key: HashMap<&str, usize> = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        match task.dedup_key.as_deref() {
            Some(key) if held.contains_key(key) => slots.push(Slot::Existing(held[key])),
            Some(key) if first_of_key.contains_key(key) => slots.push(Slot::SameAs(first_of_key[key])),
            key => {
                if let Some(key) = key {
                    first_of_key.insert(key, fresh.len());
                }
                slots.push(Slot::New(fresh.len()));
                fresh.push(i);
            }
        }
    }
    let mut ids: Vec<TaskId> = Vec::with_capacity(fresh.len());
    for chunk in fresh.chunks(MAX_BINDS / INSERT_COLUMNS) {
        ids.extend(insert_rows(conn, queue_id, now, tasks, due, chunk)?);
    }
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::New(n) => Enqueued { id: ids[n], created: true },
            Slot::SameAs(n) => Enqueued { id: ids[n], created: false },
            Slot::Existing(id) => Enqueued { id, created: false },
        })
        .collect())
}

/// One multi-row `INSERT` of the tasks at `indexes`; returns their ids, in order. AUTOINCREMENT
/// numbers the rows of one statement consecutively, and the write lock keeps others out.
fn insert_rows(
    conn: &mut SqliteConnection,
    queue_id: i64,
    now: DateTime<Utc>,
    tasks: &[NewTask],
    due: &[DateTime<Utc>],
    indexes: &[usize],
) -> Tx<Vec<TaskId>> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let row = format!("(?, ?, 'PENDING', ?, ?, 0, ?, ?, ?, ?, '{}')", text(now));
    let sql = format!(
        "INSERT INTO helix_tasks (queue_id, partition_id, state, priority, run_at, attempts, max_attempts, \
         timeout_ms, dedup_key, payload, created_at) VALUES {}",
        vec![row.as_str(); indexes.len()].join(", ")
    );
    let mut q = sql_query(sql).into_boxed::<Sqlite>();
    for &i in indexes {
        let t = &tasks[i];
        q = q
            .bind::<BigInt, _>(queue_id)
            .bind::<BigInt, _>(i64::from(t.partition.0))
            .bind::<BigInt, _>(i64::from(t.priority))
            .bind::<Text, _>(text(due[i]))
            .bind::<BigInt, _>(i64::from(t.max_attempts))
            .bind::<BigInt, _>(i64::try_from(t.timeout.as_millis()).unwrap_or(i64::MAX))
            .bind::<Nullable<Text>, _>(t.dedup_key.clone())
            .bind::<Binary, _>(t.payload.clone());
    }
    q.execute(conn)?;
    let last: IdRow = sql_query("SELECT last_insert_rowid() AS id").get_result(conn)?;
    let n = i64::try_from(indexes.len()).unwrap_or(i64::MAX);
    (0..n).map(|k| Ok(TaskId(to_u64(last.id - n + 1 + k, "task id")?))).collect()
}

// ---- claims and owner writes ------------------------------------------------------------

/// Claims up to `limit` due tasks in claim order, fenced by the assignment row.
pub(super) fn claim(conn: &mut SqliteConnection, fence: &OwnerFence, limit: u32) -> Tx<Vec<TaskRecord>> {
    let now = check_owner(conn, fence, true)?;
    let sql = format!(
        "UPDATE helix_tasks SET state = 'RUNNING', attempts = attempts + 1, claimed_epoch = ?, claimed_by = ?, \
         started_at = ?, deadline_at = strftime('%Y-%m-%d %H:%M:%f', ?, printf('+%.3f seconds', \
         timeout_ms / 1000.0)) WHERE id IN (SELECT id FROM helix_tasks WHERE queue_id = ? AND partition_id = ? \
         AND state = 'PENDING' AND run_at <= ? ORDER BY priority, run_at, id LIMIT ?) \
         RETURNING {COLUMNS}, NULL AS finished_at"
    );
    let rows: Vec<TaskRow> = sql_query(sql)
        .bind::<BigInt, _>(to_i64(fence.epoch.0, "epoch")?)
        .bind::<Binary, _>(fence.worker.as_bytes().to_vec())
        .bind::<Text, _>(text(now))
        .bind::<Text, _>(text(now))
        .bind::<BigInt, _>(to_i64(fence.queue.0, "queue id")?)
        .bind::<BigInt, _>(i64::from(fence.partition.0))
        .bind::<Text, _>(text(now))
        .bind::<BigInt, _>(i64::from(limit))
        .load(conn)?;
    let mut claimed = rows.into_iter().map(TaskRow::record).collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|t| (t.priority, t.run_at, t.id));
    Ok(claimed)
}

/// The owner-fenced batch write shared by complete, fail, retry-later and extend.
pub(super) fn owner_write(
    conn: &mut SqliteConnection,
    fence: &OwnerFence,
    ids: &[TaskId],
    decide: &dyn Fn(&TaskHead, DateTime<Utc>) -> TaskWrite,
) -> Tx<TaskBatchOutcome> {
    let now = check_owner(conn, fence, false)?;
    let keys = ids.iter().map(|id| id_i64(*id)).collect::<Result<Vec<_>, _>>()?;
    let mut heads = Vec::with_capacity(ids.len());
    for chunk in keys.chunks(MAX_BINDS - 2) {
        let sql = format!(
            "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks \
             WHERE queue_id = ? AND partition_id = ? AND id IN ({})",
            marks(chunk.len())
        );
        let q = sql_query(sql)
            .into_boxed::<Sqlite>()
            .bind::<BigInt, _>(to_i64(fence.queue.0, "queue id")?)
            .bind::<BigInt, _>(i64::from(fence.partition.0));
        for r in bind_task_ids(q, chunk).load::<HeadRow>(conn)? {
            heads.push(r.head()?);
        }
    }
    let (held, skipped) = rules::held(ids.iter().copied(), &heads, fence);
    let writes: Vec<TaskWrite> = held.into_iter().map(|h| decide(h, now)).collect();
    apply(conn, now, &writes)?;
    Ok(rules::outcome(&writes, skipped))
}

/// The fences one statement of [`record_outcomes`] checks: far below SQLite's expression
/// depth limit (1,000) for the `OR` of one term per partition.
const FENCES_PER_STATEMENT: usize = 200;

/// Checks the fences of `batches` (`owner = worker AND epoch = epoch`, not `FAILED`) in one
/// statement per [`FENCES_PER_STATEMENT`]; returns which hold, in order, and the store's now
/// (`None` when none holds).
fn check_owners(
    conn: &mut SqliteConnection,
    batches: &[PartitionOutcomes],
) -> Tx<(Vec<bool>, Option<DateTime<Utc>>)> {
    let mut holding: std::collections::BTreeSet<(u64, u32)> = std::collections::BTreeSet::new();
    let mut now = None;
    for chunk in batches.chunks(FENCES_PER_STATEMENT) {
        let terms = vec!["(queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ?)"; chunk.len()];
        let sql = format!(
            concat!(
                "SELECT queue_id, partition_id, ",
                now!(),
                " AS now FROM helix_assignments WHERE state <> 'FAILED' AND ({})"
            ),
            terms.join(" OR ")
        );
        let mut q = sql_query(sql).into_boxed::<Sqlite>();
        for b in chunk {
            q = q
                .bind::<BigInt, _>(to_i64(b.fence.queue.0, "queue id")?)
                .bind::<BigInt, _>(i64::from(b.fence.partition.0))
                .bind::<Binary, _>(b.fence.worker.as_bytes().to_vec())
                .bind::<BigInt, _>(to_i64(b.fence.epoch.0, "epoch")?);
        }
        for row in q.load::<FenceRow>(conn)? {
            let partition = u32::try_from(row.partition_id)
                .map_err(|_| StoreError::Database(format!("stored partition {}", row.partition_id)))?;
            holding.insert((to_u64(row.queue_id, "queue id")?, partition));
            now = Some(row.now.and_utc());
        }
    }
    let held = batches.iter().map(|b| holding.contains(&(b.fence.queue.0, b.fence.partition.0))).collect();
    Ok((held, now))
}

/// Records the outcomes of many partitions in the caller's transaction: one fence check,
/// one read of the named tasks, then the writes of every partition whose fence holds
/// together ([`apply`]); see [`Store::record_task_outcomes`](crate::Store::record_task_outcomes).
pub(super) fn record_outcomes(
    conn: &mut SqliteConnection,
    batches: &[PartitionOutcomes],
) -> Tx<Vec<StoreResult<TaskBatchOutcome>>> {
    let (held, now) = check_owners(conn, batches)?;
    let Some(now) = now else {
        return Ok(batches.iter().map(|b| Err(rules::fenced(&b.fence))).collect());
    };
    let keys = rules::held_task_ids(batches, &held).into_iter().map(id_i64).collect::<Result<Vec<_>, _>>()?;
    let mut heads: BTreeMap<(u64, u32), Vec<TaskHead>> = BTreeMap::new();
    for chunk in keys.chunks(MAX_BINDS) {
        let sql = format!(
            "SELECT id, queue_id, partition_id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks \
             WHERE id IN ({})",
            marks(chunk.len())
        );
        for r in bind_task_ids(sql_query(sql).into_boxed(), chunk).load::<PlacedHeadRow>(conn)? {
            let partition = u32::try_from(r.partition_id)
                .map_err(|_| StoreError::Database(format!("stored partition {}", r.partition_id)))?;
            let place = (to_u64(r.queue_id, "queue id")?, partition);
            heads.entry(place).or_default().push(r.head.head()?);
        }
    }
    let (writes, answers) = rules::coalesced_writes(batches, &held, &heads, now);
    apply(conn, now, &writes)?;
    Ok(answers)
}

/// Writes decided task changes: finished ones move to the history (one `INSERT … SELECT` and
/// one `DELETE` per chunk), the others are updated in one `UPDATE … FROM` per chunk.
fn apply(conn: &mut SqliteConnection, now: DateTime<Utc>, writes: &[TaskWrite]) -> Tx<()> {
    let (finished, hot): (Vec<&TaskWrite>, Vec<&TaskWrite>) =
        writes.iter().partition(|w| w.state.is_finished());
    for chunk in finished.chunks((MAX_BINDS / 6).min(MAX_COMPOUND_ROWS)) {
        let values =
            derived(chunk.len(), "? AS id, ? AS state, ? AS attempts, ? AS err, ? AS res", "?, ?, ?, ?, ?");
        let sql = format!(
            "INSERT INTO helix_task_history ({COLUMNS}, finished_at) SELECT t.id, t.queue_id, t.partition_id, \
             v.state, t.priority, t.run_at, v.attempts, t.max_attempts, t.timeout_ms, t.dedup_key, t.payload, \
             t.claimed_epoch, t.claimed_by, t.created_at, t.started_at, t.deadline_at, \
             COALESCE(v.err, t.last_error), COALESCE(v.res, t.result), ? FROM helix_tasks AS t \
             JOIN ({values}) AS v ON t.id = v.id"
        );
        // `finished_at` comes first in the text, before the derived table.
        let mut q = sql_query(sql).into_boxed::<Sqlite>().bind::<Text, _>(text(now));
        for w in chunk {
            q = q
                .bind::<BigInt, _>(id_i64(w.id)?)
                .bind::<Text, _>(w.state.as_str())
                .bind::<BigInt, _>(i64::from(w.attempts))
                .bind::<Nullable<Text>, _>(w.last_error.clone())
                .bind::<Nullable<Text>, _>(w.result.clone());
        }
        let moved = q.execute(conn)?;
        if moved != chunk.len() {
            return Err(Fail(StoreError::Database(format!(
                "moved {moved} of {} finished tasks to the history",
                chunk.len()
            ))));
        }
        let ids = chunk.iter().map(|w| id_i64(w.id)).collect::<Result<Vec<_>, _>>()?;
        let q = sql_query(format!("DELETE FROM helix_tasks WHERE id IN ({})", marks(ids.len()))).into_boxed();
        bind_task_ids(q, &ids).execute(conn)?;
    }
    for chunk in hot.chunks((MAX_BINDS / 7).min(MAX_COMPOUND_ROWS)) {
        let values = derived(
            chunk.len(),
            "? AS id, ? AS state, ? AS attempts, ? AS run_at, ? AS deadline_at, ? AS err",
            "?, ?, ?, ?, ?, ?",
        );
        let sql = format!(
            "UPDATE helix_tasks AS t SET state = v.state, attempts = v.attempts, \
             run_at = COALESCE(v.run_at, t.run_at), deadline_at = COALESCE(v.deadline_at, t.deadline_at), \
             last_error = COALESCE(v.err, t.last_error) FROM ({values}) AS v WHERE t.id = v.id"
        );
        let mut q = sql_query(sql).into_boxed::<Sqlite>();
        for w in chunk {
            q = q
                .bind::<BigInt, _>(id_i64(w.id)?)
                .bind::<Text, _>(w.state.as_str())
                .bind::<BigInt, _>(i64::from(w.attempts))
                .bind::<Nullable<Text>, _>(w.run_at.map(text))
                .bind::<Nullable<Text>, _>(w.deadline_at.map(text))
                .bind::<Nullable<Text>, _>(w.last_error.clone());
        }
        q.execute(conn)?;
    }
    Ok(())
}

/// The most rows of one [`derived`] table: SQLite refuses a compound `SELECT` of more than
/// 500 terms (`SQLITE_MAX_COMPOUND_SELECT`, "too many terms in compound SELECT").
pub(super) const MAX_COMPOUND_ROWS: usize = 500;

/// `SELECT <first> UNION ALL SELECT <rest> …`: a derived table of `n` bound rows, at most
/// [`MAX_COMPOUND_ROWS`].
pub(super) fn derived(n: usize, first: &str, rest: &str) -> String {
    let mut sql = format!("SELECT {first}");
    for _ in 1..n {
        sql.push_str(" UNION ALL SELECT ");
        sql.push_str(rest);
    }
    sql
}

/// Orphan recovery by epoch for the fence's partition.
pub(super) fn recover(conn: &mut SqliteConnection, fence: &OwnerFence) -> Tx<TaskRecovery> {
    let now = check_owner(conn, fence, false)?;
    let heads: Vec<HeadRow> = sql_query(
        "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks WHERE queue_id = ? \
         AND partition_id = ? AND state IN ('RUNNING', 'CANCELLING') AND claimed_epoch <= ? ORDER BY id",
    )
    .bind::<BigInt, _>(to_i64(fence.queue.0, "queue id")?)
    .bind::<BigInt, _>(i64::from(fence.partition.0))
    .bind::<BigInt, _>(to_i64(fence.epoch.0, "epoch")?)
    .load(conn)?;
    let heads = heads.into_iter().map(HeadRow::head).collect::<Result<Vec<_>, _>>()?;
    let writes: Vec<TaskWrite> = heads.iter().map(|h| rules::after_recovery(h, fence)).collect();
    apply(conn, now, &writes)?;
    Ok(rules::recovery(&writes))
}

/// Cancels those of the tasks `ids` that are still `PENDING` and due after `now`, as
/// [`cancel`] cancels a pending task (to the history as `CANCELLED`), in the caller's
/// immediate transaction; answers the ids it cancelled.
pub(super) fn cancel_future(conn: &mut SqliteConnection, now: DateTime<Utc>, ids: &[i64]) -> Tx<Vec<i64>> {
    let mut cancelled = Vec::new();
    for chunk in ids.chunks(MAX_BINDS - 1) {
        let q = sql_query(format!(
            "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks WHERE id IN ({}) \
             AND state = 'PENDING' AND run_at > ? ORDER BY id",
            marks(chunk.len())
        ))
        .into_boxed::<Sqlite>();
        let rows: Vec<HeadRow> = bind_task_ids(q, chunk).bind::<Text, _>(text(now)).load(conn)?;
        let heads = rows.into_iter().map(HeadRow::head).collect::<Result<Vec<_>, _>>()?;
        let writes: Vec<TaskWrite> = heads.iter().map(rules::after_cancel).collect();
        apply(conn, now, &writes)?;
        for h in &heads {
            cancelled.push(id_i64(h.id)?);
        }
    }
    Ok(cancelled)
}

/// A cancellation; not fenced (operators and clients cancel).
pub(super) fn cancel(conn: &mut SqliteConnection, id: TaskId) -> Tx<CancelOutcome> {
    let key = id_i64(id)?;
    let hot: Option<HeadRow> =
        sql_query("SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks WHERE id = ?")
            .bind::<BigInt, _>(key)
            .get_result(conn)
            .optional()?;
    match hot.map(HeadRow::head).transpose()? {
        Some(head) if head.state == TaskState::Pending => {
            let now = db_now(conn)?;
            apply(conn, now, &[rules::after_cancel(&head)])?;
            Ok(CancelOutcome::Cancelled)
        }
        Some(_) => {
            sql_query("UPDATE helix_tasks SET state = 'CANCELLING' WHERE id = ?")
                .bind::<BigInt, _>(key)
                .execute(conn)?;
            Ok(CancelOutcome::Requested)
        }
        None => {
            let done: Option<StateRow> = sql_query("SELECT state FROM helix_task_history WHERE id = ?")
                .bind::<BigInt, _>(key)
                .get_result(conn)
                .optional()?;
            match done {
                Some(r) => Ok(CancelOutcome::AlreadyFinished(TaskState::parse(&r.state)?)),
                None => Err(Fail(StoreError::NotFound(format!("task {id}")))),
            }
        }
    }
}

// ---- reads and maintenance --------------------------------------------------------------

/// The earliest pending `run_at` per partition, in one statement per chunk of partitions.
pub(super) fn next_due(
    conn: &mut SqliteConnection,
    queue: QueueId,
    partitions: &[PartitionId],
) -> Tx<BTreeMap<PartitionId, DateTime<Utc>>> {
    // One scalar `MIN` per partition: each is a single seek into `ix_tasks_due` (SQLite's
    // min/max optimization), where a `GROUP BY` reads every pending row of the partitions.
    const MIN_DUE: &str =
        "(SELECT MIN(run_at) FROM helix_tasks WHERE queue_id = ? AND partition_id = ? AND state = 'PENDING')";
    let queue = to_i64(queue.0, "queue id")?;
    let mut due = BTreeMap::new();
    // At most 500 terms in one compound SELECT, and 3 binds a term.
    for chunk in partitions.chunks((MAX_BINDS / 3).min(MAX_COMPOUND_ROWS)) {
        let mut sql = String::new();
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" UNION ALL ");
            }
            sql.push_str(&format!("SELECT ? AS partition_id, {MIN_DUE} AS due"));
        }
        let mut q = sql_query(sql).into_boxed::<Sqlite>();
        for p in chunk {
            q = q
                .bind::<BigInt, _>(i64::from(p.0))
                .bind::<BigInt, _>(queue)
                .bind::<BigInt, _>(i64::from(p.0));
        }
        for r in q.load::<DueRow>(conn)? {
            let p = u32::try_from(r.partition_id)
                .map_err(|_| StoreError::Database(format!("stored partition {}", r.partition_id)))?;
            if let Some(at) = r.due {
                due.insert(PartitionId(p), at.and_utc());
            }
        }
    }
    Ok(due)
}

/// Counts by (partition, state) over both tables.
pub(super) fn counts(conn: &mut SqliteConnection, queue: QueueId) -> Tx<Vec<TaskCount>> {
    let q = to_i64(queue.0, "queue id")?;
    let rows: Vec<CountRow> = sql_query(
        "SELECT partition_id, state, COUNT(*) AS n FROM helix_tasks WHERE queue_id = ? GROUP BY partition_id, state \
         UNION ALL SELECT partition_id, state, COUNT(*) AS n FROM helix_task_history WHERE queue_id = ? \
         GROUP BY partition_id, state",
    )
    .bind::<BigInt, _>(q)
    .bind::<BigInt, _>(q)
    .load(conn)?;
    let mut out = rows
        .into_iter()
        .map(|r| {
            Ok(TaskCount {
                partition: PartitionId(
                    u32::try_from(r.partition_id)
                        .map_err(|_| StoreError::Database(format!("stored partition {}", r.partition_id)))?,
                ),
                state: TaskState::parse(&r.state)?,
                count: to_u64(r.n, "count")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort();
    Ok(out)
}

/// One task from either table.
pub(super) fn get(conn: &mut SqliteConnection, id: TaskId) -> Tx<TaskRecord> {
    let key = id_i64(id)?;
    let row: Option<TaskRow> = sql_query(format!(
        "SELECT {COLUMNS}, NULL AS finished_at FROM helix_tasks WHERE id = ? \
         UNION ALL SELECT {COLUMNS}, finished_at FROM helix_task_history WHERE id = ?"
    ))
    .bind::<BigInt, _>(key)
    .bind::<BigInt, _>(key)
    .get_result(conn)
    .optional()?;
    match row {
        Some(r) => Ok(r.record()?),
        None => Err(Fail(StoreError::NotFound(format!("task {id}")))),
    }
}

/// A page of tasks in one state, keyset on id.
pub(super) fn list(
    conn: &mut SqliteConnection,
    queue: QueueId,
    state: TaskState,
    after: Option<TaskId>,
    limit: u32,
) -> Tx<Vec<TaskRecord>> {
    let sql = if state.is_finished() {
        format!(
            "SELECT {COLUMNS}, finished_at FROM helix_task_history WHERE queue_id = ? AND state = ? AND id > ? \
             ORDER BY id LIMIT ?"
        )
    } else {
        format!(
            "SELECT {COLUMNS}, NULL AS finished_at FROM helix_tasks WHERE queue_id = ? AND state = ? AND id > ? \
             ORDER BY id LIMIT ?"
        )
    };
    let rows: Vec<TaskRow> = sql_query(sql)
        .bind::<BigInt, _>(to_i64(queue.0, "queue id")?)
        .bind::<Text, _>(state.as_str())
        .bind::<BigInt, _>(after.map_or(Ok(0), id_i64)?)
        .bind::<BigInt, _>(i64::from(limit))
        .load(conn)?;
    Ok(rows.into_iter().map(TaskRow::record).collect::<Result<_, _>>()?)
}

/// An operator's retry of a dead task: back to the hot table under its id.
pub(super) fn retry_dead(conn: &mut SqliteConnection, id: TaskId) -> Tx<TaskRecord> {
    let mut task = get(conn, id)?;
    if task.state != TaskState::Dead {
        return Err(Fail(StoreError::Conflict(format!("task {id} is {}, not DEAD", task.state))));
    }
    let now = db_now(conn)?;
    rules::revive(&mut task, now);
    let inserted = sql_query(format!(
        "INSERT INTO helix_tasks ({COLUMNS}) SELECT id, queue_id, partition_id, 'PENDING', priority, ?, 0, \
         max_attempts, timeout_ms, dedup_key, payload, claimed_epoch, claimed_by, created_at, NULL, NULL, \
         last_error, NULL FROM helix_task_history WHERE id = ? AND state = 'DEAD'"
    ))
    .bind::<Text, _>(text(now))
    .bind::<BigInt, _>(id_i64(id)?)
    .execute(conn);
    match inserted {
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            return Err(Fail(StoreError::Conflict(format!(
                "dedup key of task {id} is held by another unfinished task"
            ))));
        }
        other => {
            other?;
        }
    }
    sql_query("DELETE FROM helix_task_history WHERE id = ?").bind::<BigInt, _>(id_i64(id)?).execute(conn)?;
    get(conn, id)
}

/// Deletes up to `limit` tasks finished before `cutoff` (an SQLite date modifier).
pub(super) fn prune(conn: &mut SqliteConnection, cutoff: String, limit: u32) -> Tx<u64> {
    let pruned = sql_query(concat!(
        "DELETE FROM helix_task_history WHERE id IN (SELECT id FROM helix_task_history WHERE finished_at < ",
        now!(modified),
        " ORDER BY finished_at LIMIT ?)"
    ))
    .bind::<Text, _>(cutoff)
    .bind::<BigInt, _>(i64::from(limit))
    .execute(conn)?;
    Ok(pruned as u64)
}

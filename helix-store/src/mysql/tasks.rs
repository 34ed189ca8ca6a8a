//! The task queue on MySQL / MariaDB (`helix_tasks` and `helix_task_history`), each operation
//! on one connection inside the transaction its caller opened (READ COMMITTED on the store's
//! sessions). The decisions come from [`crate::rules::tasks`].
//!
//! - **Fencing.** Owner writes first read the assignment row with `LOCK IN SHARE MODE` where
//!   `owner = worker AND epoch = epoch` (and `state = 'ASSIGNED'` for claims), with `NOW(6)`
//!   in the same statement: a coordinator's or a handoff's change of that row waits for the
//!   task write to commit, and a write under a stale epoch finds no row and is `Fenced`.
//! - **Dedup.** The unique index `(queue_id, dedup_key)` decides, never a read: `INSERT
//!   IGNORE` waits for an uncommitted holder of the key (InnoDB locks the duplicate), so a
//!   holder that rolls back leaves the key to this insert, and one that commits makes this
//!   insert skip the row. The rows this statement inserted carry a random marker in
//!   `claimed_by` (cleared before commit), so `created` is exact; the ids of skipped rows are
//!   read with `LOCK IN SHARE MODE`, which sees the latest committed row.
//! - **Batches.** Each batch operation is a handful of statements whatever its size:
//!   multi-row inserts, `IN` lists and `UPDATE … JOIN` over a derived table of bound rows.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::mysql::Mysql;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{BigInt, Binary, Datetime, Integer, Nullable, Text};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use helix_core::{Epoch, PartitionCount, PartitionId, QueueId, WorkerId};

use super::{Failure, MAX_BINDS, Scrubber, classify};
use crate::error::{StoreError, StoreResult};
use crate::rules::tasks::{self as rules, TaskHead, TaskWrite};
use crate::tasks::*;

type Conn = AsyncMysqlConnection;
type Res<T> = Result<T, Failure>;
type Query<'a> = BoxedSqlQuery<'a, Mysql, SqlQuery>;

/// The most payload bytes one insert statement carries (below `max_allowed_packet`, 16 MiB
/// by default on MariaDB); a single task may carry up to [`MAX_PAYLOAD_BYTES`].
const MAX_STATEMENT_PAYLOAD: usize = 8 << 20;

/// The columns of both task tables but `finished_at`, in [`TaskRow`]'s order.
const COLUMNS: &str = "id, queue_id, partition_id, state, priority, run_at, attempts, max_attempts, timeout_ms, \
     dedup_key, payload, claimed_epoch, claimed_by, created_at, started_at, deadline_at, last_error, result";

/// Values an enqueue binds per row.
const INSERT_BINDS: usize = 9;

#[derive(QueryableByName)]
struct TaskRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = Integer)]
    partition_id: i32,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Integer)]
    priority: i32,
    #[diesel(sql_type = Datetime)]
    run_at: NaiveDateTime,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Integer)]
    max_attempts: i32,
    #[diesel(sql_type = BigInt)]
    timeout_ms: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    dedup_key: Option<Vec<u8>>,
    #[diesel(sql_type = Binary)]
    payload: Vec<u8>,
    #[diesel(sql_type = Nullable<BigInt>)]
    claimed_epoch: Option<i64>,
    #[diesel(sql_type = Nullable<Binary>)]
    claimed_by: Option<Vec<u8>>,
    #[diesel(sql_type = Datetime)]
    created_at: NaiveDateTime,
    #[diesel(sql_type = Nullable<Datetime>)]
    started_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Datetime>)]
    deadline_at: Option<NaiveDateTime>,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    result: Option<String>,
    #[diesel(sql_type = Nullable<Datetime>)]
    finished_at: Option<NaiveDateTime>,
}

fn stored_u32(v: i32, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Database(format!("stored task {what} {v} is negative")))
}

pub(super) fn stored_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Database(format!("stored {what} {v} is negative")))
}

fn key_of(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Database("stored dedup key is not utf-8".to_owned()))
}

impl TaskRow {
    fn record(self) -> Result<TaskRecord, StoreError> {
        Ok(TaskRecord {
            id: TaskId(stored_u64(self.id, "task id")?),
            queue_id: QueueId(stored_u64(self.queue_id, "queue id")?),
            partition: PartitionId(stored_u32(self.partition_id, "partition")?),
            state: TaskState::parse(&self.state)?,
            priority: self.priority,
            run_at: self.run_at.and_utc(),
            attempts: stored_u32(self.attempts, "attempts")?,
            max_attempts: stored_u32(self.max_attempts, "max attempts")?,
            timeout: Duration::from_millis(stored_u64(self.timeout_ms, "timeout")?),
            dedup_key: self.dedup_key.map(key_of).transpose()?,
            payload: self.payload,
            claimed_epoch: self.claimed_epoch.map(|e| stored_u64(e, "epoch").map(Epoch)).transpose()?,
            claimed_by: self
                .claimed_by
                .map(|b| {
                    WorkerId::from_slice(&b)
                        .ok_or_else(|| StoreError::Database(format!("stored worker id of {} bytes", b.len())))
                })
                .transpose()?,
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
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Integer)]
    max_attempts: i32,
    #[diesel(sql_type = Nullable<BigInt>)]
    claimed_epoch: Option<i64>,
}

impl HeadRow {
    fn head(self) -> Result<TaskHead, StoreError> {
        Ok(TaskHead {
            id: TaskId(stored_u64(self.id, "task id")?),
            state: TaskState::parse(&self.state)?,
            attempts: stored_u32(self.attempts, "attempts")?,
            max_attempts: stored_u32(self.max_attempts, "max attempts")?,
            claimed_epoch: self.claimed_epoch.map(|e| stored_u64(e, "epoch").map(Epoch)).transpose()?,
        })
    }
}

/// A task's head with its queue and partition.
#[derive(QueryableByName)]
struct PlacedHeadRow {
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = Integer)]
    partition_id: i32,
    #[diesel(embed)]
    head: HeadRow,
}

/// A partition whose owner's fence holds, and the store's now.
#[derive(QueryableByName)]
struct FenceRow {
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = Integer)]
    partition_id: i32,
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct ClockRow {
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct QueueClockRow {
    #[diesel(sql_type = Integer)]
    partition_count: i32,
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
    #[diesel(sql_type = BigInt)]
    step: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    dedup_key: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct DueRow {
    #[diesel(sql_type = Integer)]
    partition_id: i32,
    #[diesel(sql_type = Nullable<Datetime>)]
    due: Option<NaiveDateTime>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = Integer)]
    partition_id: i32,
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

fn id_i64(id: TaskId) -> Result<i64, StoreError> {
    i64::try_from(id.0).map_err(|_| StoreError::Invalid(format!("task id {id} is too large")))
}

pub(super) fn q_i64(queue: QueueId) -> Result<i64, StoreError> {
    i64::try_from(queue.0).map_err(|_| StoreError::Invalid(format!("queue id {queue} is too large")))
}

fn p_i32(p: PartitionId) -> Result<i32, StoreError> {
    i32::try_from(p.0).map_err(|_| StoreError::Invalid(format!("partition {p} is out of range")))
}

pub(super) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

pub(super) fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.naive_utc()
}

pub(super) fn bind_ids<'a>(mut q: Query<'a>, ids: &[i64]) -> Query<'a> {
    for id in ids {
        q = q.bind::<BigInt, _>(*id);
    }
    q
}

/// `SELECT <first> UNION ALL SELECT <rest> …`: a derived table of `n` bound rows.
pub(super) fn derived(n: usize, first: &str, rest: &str) -> String {
    let mut sql = format!("SELECT {first}");
    for _ in 1..n {
        sql.push_str(" UNION ALL SELECT ");
        sql.push_str(rest);
    }
    sql
}

/// Checks the owner's fence on the assignment row, locking it in share mode until commit,
/// and reads the store's now in the same statement.
async fn check_owner(conn: &mut Conn, fence: &OwnerFence, claiming: bool) -> Res<DateTime<Utc>> {
    let sql = if claiming {
        "SELECT NOW(6) AS now FROM helix_assignments WHERE queue_id = ? AND partition_id = ? AND owner = ? \
         AND epoch = ? AND state = 'ASSIGNED' LOCK IN SHARE MODE"
    } else {
        "SELECT NOW(6) AS now FROM helix_assignments WHERE queue_id = ? AND partition_id = ? AND owner = ? \
         AND epoch = ? AND state <> 'FAILED' LOCK IN SHARE MODE"
    };
    let (Ok(q), Ok(p), Ok(e)) = (q_i64(fence.queue), p_i32(fence.partition), i64::try_from(fence.epoch.0))
    else {
        return Err(Failure::Store(rules::fenced(fence)));
    };
    let row: Option<ClockRow> = diesel::sql_query(sql)
        .bind::<BigInt, _>(q)
        .bind::<Integer, _>(p)
        .bind::<Binary, _>(fence.worker.as_bytes().to_vec())
        .bind::<BigInt, _>(e)
        .get_result(conn)
        .await
        .optional()?;
    row.map(|r| r.now.and_utc()).ok_or_else(|| Failure::Store(rules::fenced(fence)))
}

// ---- enqueue ----------------------------------------------------------------------------

/// Enqueues `tasks` in `queue` on `conn`, inside the transaction the caller holds.
pub(super) async fn enqueue(conn: &mut Conn, queue: QueueId, tasks: &[NewTask]) -> Res<Vec<Enqueued>> {
    let queue_id = q_i64(queue)?;
    let row: Option<QueueClockRow> = diesel::sql_query(
        "SELECT partition_count, NOW(6) AS now, CAST(@@auto_increment_increment AS SIGNED) AS step \
         FROM helix_queues WHERE id = ?",
    )
    .bind::<BigInt, _>(queue_id)
    .get_result(conn)
    .await
    .optional()?;
    let Some(row) = row else {
        return Err(Failure::Store(StoreError::NotFound(format!("queue {queue}"))));
    };
    let partitions = u64::try_from(row.partition_count)
        .ok()
        .and_then(|n| PartitionCount::new(n).ok())
        .ok_or_else(|| StoreError::Database(format!("stored partition count {}", row.partition_count)))?;
    let now = row.now.and_utc();
    let due = rules::validate_enqueue(tasks, partitions, now)?;
    let step = u64::try_from(row.step).unwrap_or(1).max(1);
    insert_validated(conn, queue_id, now, tasks, &due, step).await
}

/// Inserts `tasks`, already validated on the store's `now` and due at `due`, into the queue
/// `queue_id`, as an enqueue does (dedup keys included), inside the caller's transaction;
/// `step` is `@@auto_increment_increment`.
pub(super) async fn insert_validated(
    conn: &mut Conn,
    queue_id: i64,
    now: DateTime<Utc>,
    tasks: &[NewTask],
    due: &[DateTime<Utc>],
    step: u64,
) -> Res<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut start = 0;
    while start < tasks.len() {
        // A chunk: as many rows as the bind and packet limits allow, at least one.
        let (mut end, mut bytes) = (start, 0);
        while end < tasks.len()
            && (end == start
                || ((end - start + 1) * INSERT_BINDS <= MAX_BINDS
                    && bytes + tasks[end].payload.len() <= MAX_STATEMENT_PAYLOAD))
        {
            bytes += tasks[end].payload.len();
            end += 1;
        }
        let chunk = &tasks[start..end];
        if chunk.iter().all(|t| t.dedup_key.is_none()) {
            out.extend(insert_plain(conn, queue_id, now, chunk, &due[start..end], step).await?);
        } else {
            out.extend(insert_deduplicated(conn, queue_id, now, chunk, &due[start..end]).await?);
        }
        start = end;
    }
    Ok(out)
}

/// The multi-row `INSERT` of a chunk; `marker` goes to `claimed_by` (dedup chunks).
fn insert_query<'a>(
    ignore: bool,
    queue_id: i64,
    now: DateTime<Utc>,
    chunk: &'a [NewTask],
    due: &[DateTime<Utc>],
    marker: Option<Vec<u8>>,
) -> Query<'a> {
    let sql = format!(
        "INSERT {}INTO helix_tasks (queue_id, partition_id, state, priority, run_at, attempts, max_attempts, \
         timeout_ms, dedup_key, payload, claimed_by, created_at) VALUES {}",
        if ignore { "IGNORE " } else { "" },
        vec!["(?, ?, 'PENDING', ?, ?, 0, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
    );
    let mut q = diesel::sql_query(sql).into_boxed::<Mysql>();
    for (t, at) in chunk.iter().zip(due) {
        q = q
            .bind::<BigInt, _>(queue_id)
            .bind::<Integer, _>(i32::try_from(t.partition.0).unwrap_or(i32::MAX))
            .bind::<Integer, _>(t.priority)
            .bind::<Datetime, _>(naive(*at))
            .bind::<Integer, _>(i32::try_from(t.max_attempts).unwrap_or(i32::MAX))
            .bind::<BigInt, _>(i64::try_from(t.timeout.as_millis()).unwrap_or(i64::MAX))
            .bind::<Nullable<Binary>, _>(t.dedup_key.as_ref().map(|k| k.as_bytes().to_vec()))
            .bind::<Binary, _>(t.payload.as_slice())
            .bind::<Nullable<Binary>, _>(marker.clone())
            .bind::<Datetime, _>(naive(now));
    }
    q
}

/// A chunk without dedup keys: one `INSERT`. InnoDB gives the rows of one multi-row insert
/// consecutive values (a "simple insert" in every `innodb_autoinc_lock_mode`), `step` apart.
async fn insert_plain(
    conn: &mut Conn,
    queue_id: i64,
    now: DateTime<Utc>,
    chunk: &[NewTask],
    due: &[DateTime<Utc>],
    step: u64,
) -> Res<Vec<Enqueued>> {
    insert_query(false, queue_id, now, chunk, due, None).execute(conn).await?;
    let first: IdRow =
        diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS id").get_result(conn).await?;
    let first = stored_u64(first.id, "task id")?;
    Ok((0..chunk.len() as u64).map(|i| Enqueued { id: TaskId(first + i * step), created: true }).collect())
}

/// A chunk with dedup keys: `INSERT IGNORE` marked with a random token, the marked rows read
/// back (exactly the rows this statement inserted, in insertion order) and unmarked, and the
/// ids of the skipped keys read with a locking read.
async fn insert_deduplicated(
    conn: &mut Conn,
    queue_id: i64,
    now: DateTime<Utc>,
    chunk: &[NewTask],
    due: &[DateTime<Utc>],
) -> Res<Vec<Enqueued>> {
    let marker = WorkerId::new_v7().as_bytes().to_vec();
    let inserted = insert_query(true, queue_id, now, chunk, due, Some(marker.clone())).execute(conn).await?;
    let mut mine: Vec<(i64, Option<String>)> = Vec::with_capacity(inserted);
    if inserted > 0 {
        let rows: Vec<KeyRow> = diesel::sql_query(
            "SELECT id, dedup_key FROM helix_tasks WHERE id >= LAST_INSERT_ID() AND claimed_by = ? ORDER BY id \
             LIMIT ?",
        )
        .bind::<Binary, _>(marker.clone())
        .bind::<BigInt, _>(i64::try_from(inserted).unwrap_or(i64::MAX))
        .load(conn)
        .await?;
        for r in rows {
            mine.push((r.id, r.dedup_key.map(key_of).transpose()?));
        }
        if mine.len() != inserted {
            return Err(Failure::Store(StoreError::Database(format!(
                "inserted {inserted} tasks but found {} of them",
                mine.len()
            ))));
        }
        let ids: Vec<i64> = mine.iter().map(|(id, _)| *id).collect();
        let q = diesel::sql_query(format!(
            "UPDATE helix_tasks SET claimed_by = NULL WHERE id IN ({})",
            marks(ids.len())
        ))
        .into_boxed::<Mysql>();
        bind_ids(q, &ids).execute(conn).await?;
    }
    // Inserted rows come in batch order: walk the chunk and the inserted rows together.
    let mut answers: Vec<Option<Enqueued>> = Vec::with_capacity(chunk.len());
    let mut k = 0;
    let mut skipped: Vec<&str> = Vec::new();
    for t in chunk {
        let takes = k < mine.len() && mine[k].1.as_deref() == t.dedup_key.as_deref();
        if takes {
            answers.push(Some(Enqueued { id: TaskId(stored_u64(mine[k].0, "task id")?), created: true }));
            k += 1;
        } else if let Some(key) = t.dedup_key.as_deref() {
            answers.push(None);
            skipped.push(key);
        } else {
            return Err(Failure::Store(StoreError::Database("an inserted task went missing".to_owned())));
        }
    }
    if !skipped.is_empty() {
        let sql = format!(
            "SELECT id, dedup_key FROM helix_tasks WHERE queue_id = ? AND dedup_key IN ({}) LOCK IN SHARE MODE",
            marks(skipped.len())
        );
        let mut q = diesel::sql_query(sql).into_boxed::<Mysql>().bind::<BigInt, _>(queue_id);
        for key in &skipped {
            q = q.bind::<Binary, _>(key.as_bytes().to_vec());
        }
        let rows: Vec<KeyRow> = q.load(conn).await?;
        let mut holders: HashMap<String, TaskId> = HashMap::new();
        for r in rows {
            if let Some(key) = r.dedup_key {
                holders.insert(key_of(key)?, TaskId(stored_u64(r.id, "task id")?));
            }
        }
        for (t, answer) in chunk.iter().zip(answers.iter_mut()) {
            if answer.is_none() {
                let key = t.dedup_key.as_deref().unwrap_or_default();
                // The holder finished between the insert and this read: try the whole
                // enqueue again (the key is free now).
                let id = holders.get(key).copied().ok_or_else(|| {
                    StoreError::Transient(format!(
                        "the task holding dedup key {key:?} finished during the enqueue"
                    ))
                })?;
                *answer = Some(Enqueued { id, created: false });
            }
        }
    }
    Ok(answers.into_iter().flatten().collect())
}

/// Enqueues `tasks` in `queue` on the application's own connection, inside the transaction
/// it holds: the tasks commit or roll back with it (transactional enqueue, DESIGN §6). The
/// same rules, limits and answers as [`Store::enqueue_tasks`](crate::Store::enqueue_tasks);
/// when it fails, the caller should roll back (a failed batch may have written part of
/// itself inside the transaction).
///
/// Call it inside `conn.transaction(…)`. A dedup key held by another uncommitted transaction
/// makes this call wait for it, up to the session's `innodb_lock_wait_timeout`; keep the
/// transactions that enqueue with dedup keys short. READ COMMITTED is recommended (the
/// store's own sessions use it); the locking reads above are correct under REPEATABLE READ
/// too. The connection must be on the database of a [`MysqlStore`](super::MysqlStore).
///
/// ```no_run
/// # async fn demo(queue: helix_core::QueueId) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use diesel_async::{AsyncConnection, AsyncMysqlConnection};
/// use helix_core::PartitionId;
/// use helix_store::NewTask;
///
/// type AppError = Box<dyn std::error::Error + Send + Sync>;
/// let mut conn = AsyncMysqlConnection::establish("mysql://app@127.0.0.1/shop").await?;
/// let enqueued = conn
///     .transaction(async |conn| -> Result<_, AppError> {
///         // … the application's own writes on `conn` …
///         let task = NewTask::new(PartitionId(0), b"welcome mail".to_vec());
///         Ok(helix_store::mysql::enqueue_in_transaction(conn, queue, &[task]).await?)
///     })
///     .await?;
/// assert!(enqueued[0].created);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`Store::enqueue_tasks`](crate::Store::enqueue_tasks); a lock wait timeout or a
/// deadlock is [`StoreError::Transient`] (roll back and try again).
pub async fn enqueue_in_transaction(
    conn: &mut AsyncMysqlConnection,
    queue: QueueId,
    tasks: &[NewTask],
) -> StoreResult<Vec<Enqueued>> {
    enqueue(conn, queue, tasks).await.map_err(|failure| match failure {
        Failure::Store(err) => err,
        Failure::Db(err) => classify(&err, &Scrubber::default()).0,
    })
}

// ---- claims and owner writes ------------------------------------------------------------

/// Claims up to `limit` due tasks in claim order, fenced by the assignment row.
pub(super) async fn claim(conn: &mut Conn, fence: &OwnerFence, limit: u32) -> Res<Vec<TaskRecord>> {
    let now = check_owner(conn, fence, true).await?;
    let rows: Vec<IdRow> = diesel::sql_query(
        "SELECT id FROM helix_tasks WHERE queue_id = ? AND partition_id = ? AND state = 'PENDING' AND run_at <= ? \
         ORDER BY priority, run_at, id LIMIT ? FOR UPDATE",
    )
    .bind::<BigInt, _>(q_i64(fence.queue)?)
    .bind::<Integer, _>(p_i32(fence.partition)?)
    .bind::<Datetime, _>(naive(now))
    .bind::<BigInt, _>(i64::from(limit))
    .load(conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let q = diesel::sql_query(format!(
        "UPDATE helix_tasks SET state = 'RUNNING', attempts = attempts + 1, claimed_epoch = ?, claimed_by = ?, \
         started_at = ?, deadline_at = ? + INTERVAL timeout_ms * 1000 MICROSECOND WHERE id IN ({})",
        marks(ids.len())
    ))
    .into_boxed::<Mysql>()
    .bind::<BigInt, _>(i64::try_from(fence.epoch.0).map_err(|_| rules::fenced(fence))?)
    .bind::<Binary, _>(fence.worker.as_bytes().to_vec())
    .bind::<Datetime, _>(naive(now))
    .bind::<Datetime, _>(naive(now));
    bind_ids(q, &ids).execute(conn).await?;
    let q = diesel::sql_query(format!(
        "SELECT {COLUMNS}, NULL AS finished_at FROM helix_tasks WHERE id IN ({})",
        marks(ids.len())
    ))
    .into_boxed::<Mysql>();
    let rows: Vec<TaskRow> = bind_ids(q, &ids).load(conn).await?;
    let mut claimed = rows.into_iter().map(TaskRow::record).collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|t| (t.priority, t.run_at, t.id));
    Ok(claimed)
}

/// The owner-fenced batch write shared by complete, fail, retry-later and extend.
pub(super) async fn owner_write(
    conn: &mut Conn,
    fence: &OwnerFence,
    ids: &[TaskId],
    decide: &(dyn Fn(&TaskHead, DateTime<Utc>) -> TaskWrite + Sync),
) -> Res<TaskBatchOutcome> {
    let now = check_owner(conn, fence, false).await?;
    let keys = ids.iter().map(|id| id_i64(*id)).collect::<Result<Vec<_>, _>>()?;
    let mut heads = Vec::with_capacity(ids.len());
    for chunk in keys.chunks(MAX_BINDS - 2) {
        let q = diesel::sql_query(format!(
            "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks \
             WHERE queue_id = ? AND partition_id = ? AND id IN ({}) FOR UPDATE",
            marks(chunk.len())
        ))
        .into_boxed::<Mysql>()
        .bind::<BigInt, _>(q_i64(fence.queue)?)
        .bind::<Integer, _>(p_i32(fence.partition)?);
        let rows: Vec<HeadRow> = bind_ids(q, chunk).load(conn).await?;
        for r in rows {
            heads.push(r.head()?);
        }
    }
    let (held, skipped) = rules::held(ids.iter().copied(), &heads, fence);
    let writes: Vec<TaskWrite> = held.into_iter().map(|h| decide(h, now)).collect();
    apply(conn, now, &writes).await?;
    Ok(rules::outcome(&writes, skipped))
}

/// The fences one statement of [`record_outcomes`] checks (4 binds each).
const FENCES_PER_STATEMENT: usize = 1_000;

/// Checks the fences of `batches` (`owner = worker AND epoch = epoch`, not `FAILED`) in one
/// statement per [`FENCES_PER_STATEMENT`], locking the rows that hold in share mode until
/// commit (an `OR` of primary-key equalities: only those rows are read and locked); returns
/// which hold, in order, and the store's now (`None` when none holds).
async fn check_owners(
    conn: &mut Conn,
    batches: &[PartitionOutcomes],
) -> Res<(Vec<bool>, Option<DateTime<Utc>>)> {
    let mut holding = std::collections::BTreeSet::new();
    let mut now = None;
    for chunk in batches.chunks(FENCES_PER_STATEMENT) {
        let terms = vec!["(queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ?)"; chunk.len()];
        let sql = format!(
            "SELECT queue_id, partition_id, NOW(6) AS now FROM helix_assignments WHERE ({}) AND state <> 'FAILED' \
             LOCK IN SHARE MODE",
            terms.join(" OR ")
        );
        let mut q = diesel::sql_query(sql).into_boxed::<Mysql>();
        for b in chunk {
            // A fence no stored row can match (out of the columns' range) holds nowhere.
            let (Ok(queue), Ok(partition), Ok(epoch)) =
                (q_i64(b.fence.queue), p_i32(b.fence.partition), i64::try_from(b.fence.epoch.0))
            else {
                q = q
                    .bind::<BigInt, _>(-1)
                    .bind::<Integer, _>(-1)
                    .bind::<Binary, _>(Vec::new())
                    .bind::<BigInt, _>(-1);
                continue;
            };
            q = q
                .bind::<BigInt, _>(queue)
                .bind::<Integer, _>(partition)
                .bind::<Binary, _>(b.fence.worker.as_bytes().to_vec())
                .bind::<BigInt, _>(epoch);
        }
        let rows: Vec<FenceRow> = q.load(conn).await?;
        for row in rows {
            holding
                .insert((stored_u64(row.queue_id, "queue id")?, stored_u32(row.partition_id, "partition")?));
            now = Some(row.now.and_utc());
        }
    }
    let held = batches.iter().map(|b| holding.contains(&(b.fence.queue.0, b.fence.partition.0))).collect();
    Ok((held, now))
}

/// Records the outcomes of many partitions in the caller's transaction: one fence check,
/// one locking read of the named tasks, then the writes of every partition whose fence holds
/// together ([`apply`]: one `INSERT … SELECT` into the history and one `DELETE` for all the
/// finished tasks, one `UPDATE … JOIN` for the others, per chunk); see
/// [`Store::record_task_outcomes`](crate::Store::record_task_outcomes).
pub(super) async fn record_outcomes(
    conn: &mut Conn,
    batches: &[PartitionOutcomes],
) -> Res<Vec<StoreResult<TaskBatchOutcome>>> {
    let (held, now) = check_owners(conn, batches).await?;
    let Some(now) = now else {
        return Ok(batches.iter().map(|b| Err(rules::fenced(&b.fence))).collect());
    };
    let keys = rules::held_task_ids(batches, &held).into_iter().map(id_i64).collect::<Result<Vec<_>, _>>()?;
    let mut heads: BTreeMap<(u64, u32), Vec<TaskHead>> = BTreeMap::new();
    for chunk in keys.chunks(MAX_BINDS) {
        // By primary key, in id order (the order every writer locks tasks in).
        let q = diesel::sql_query(format!(
            "SELECT id, queue_id, partition_id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks \
             WHERE id IN ({}) ORDER BY id FOR UPDATE",
            marks(chunk.len())
        ))
        .into_boxed::<Mysql>();
        let rows: Vec<PlacedHeadRow> = bind_ids(q, chunk).load(conn).await?;
        for r in rows {
            let place = (stored_u64(r.queue_id, "queue id")?, stored_u32(r.partition_id, "partition")?);
            heads.entry(place).or_default().push(r.head.head()?);
        }
    }
    let (writes, answers) = rules::coalesced_writes(batches, &held, &heads, now);
    apply(conn, now, &writes).await?;
    Ok(answers)
}

/// Writes decided task changes: finished ones move to the history (one `INSERT … SELECT` and
/// one `DELETE` per chunk), the others are updated in one `UPDATE … JOIN` per chunk.
async fn apply(conn: &mut Conn, now: DateTime<Utc>, writes: &[TaskWrite]) -> Res<()> {
    let (finished, hot): (Vec<&TaskWrite>, Vec<&TaskWrite>) =
        writes.iter().partition(|w| w.state.is_finished());
    for chunk in finished.chunks(MAX_BINDS / 6) {
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
        let mut q = diesel::sql_query(sql).into_boxed::<Mysql>().bind::<Datetime, _>(naive(now));
        for w in chunk {
            q = q
                .bind::<BigInt, _>(id_i64(w.id)?)
                .bind::<Text, _>(w.state.as_str())
                .bind::<Integer, _>(i32::try_from(w.attempts).unwrap_or(i32::MAX))
                .bind::<Nullable<Text>, _>(w.last_error.clone())
                .bind::<Nullable<Text>, _>(w.result.clone());
        }
        let moved = q.execute(conn).await?;
        if moved != chunk.len() {
            return Err(Failure::Store(StoreError::Database(format!(
                "moved {moved} of {} finished tasks to the history",
                chunk.len()
            ))));
        }
        let ids = chunk.iter().map(|w| id_i64(w.id)).collect::<Result<Vec<_>, _>>()?;
        let q = diesel::sql_query(format!("DELETE FROM helix_tasks WHERE id IN ({})", marks(ids.len())))
            .into_boxed::<Mysql>();
        bind_ids(q, &ids).execute(conn).await?;
    }
    for chunk in hot.chunks(MAX_BINDS / 7) {
        let values = derived(
            chunk.len(),
            "? AS id, ? AS state, ? AS attempts, ? AS run_at, ? AS deadline_at, ? AS err",
            "?, ?, ?, ?, ?, ?",
        );
        let sql = format!(
            "UPDATE helix_tasks AS t JOIN ({values}) AS v ON t.id = v.id SET t.state = v.state, \
             t.attempts = v.attempts, t.run_at = COALESCE(v.run_at, t.run_at), \
             t.deadline_at = COALESCE(v.deadline_at, t.deadline_at), t.last_error = COALESCE(v.err, t.last_error)"
        );
        let mut q = diesel::sql_query(sql).into_boxed::<Mysql>();
        for w in chunk {
            q = q
                .bind::<BigInt, _>(id_i64(w.id)?)
                .bind::<Text, _>(w.state.as_str())
                .bind::<Integer, _>(i32::try_from(w.attempts).unwrap_or(i32::MAX))
                .bind::<Nullable<Datetime>, _>(w.run_at.map(naive))
                .bind::<Nullable<Datetime>, _>(w.deadline_at.map(naive))
                .bind::<Nullable<Text>, _>(w.last_error.clone());
        }
        q.execute(conn).await?;
    }
    Ok(())
}

/// Orphan recovery by epoch for the fence's partition.
pub(super) async fn recover(conn: &mut Conn, fence: &OwnerFence) -> Res<TaskRecovery> {
    let now = check_owner(conn, fence, false).await?;
    let rows: Vec<HeadRow> = diesel::sql_query(
        "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks WHERE queue_id = ? \
         AND partition_id = ? AND state IN ('RUNNING', 'CANCELLING') AND claimed_epoch <= ? ORDER BY id FOR UPDATE",
    )
    .bind::<BigInt, _>(q_i64(fence.queue)?)
    .bind::<Integer, _>(p_i32(fence.partition)?)
    .bind::<BigInt, _>(i64::try_from(fence.epoch.0).map_err(|_| rules::fenced(fence))?)
    .load(conn)
    .await?;
    let heads = rows.into_iter().map(HeadRow::head).collect::<Result<Vec<_>, _>>()?;
    let writes: Vec<TaskWrite> = heads.iter().map(|h| rules::after_recovery(h, fence)).collect();
    apply(conn, now, &writes).await?;
    Ok(rules::recovery(&writes))
}

/// Cancels those of the tasks `ids` that are still `PENDING` and due after `now`, as
/// [`cancel`] cancels a pending task (to the history as `CANCELLED`), in the caller's
/// transaction; answers the ids it cancelled.
pub(super) async fn cancel_future(conn: &mut Conn, now: DateTime<Utc>, ids: &[i64]) -> Res<Vec<i64>> {
    let mut cancelled = Vec::new();
    for chunk in ids.chunks(MAX_BINDS - 1) {
        // By primary key, in id order (the order every writer locks tasks in).
        let q = diesel::sql_query(format!(
            "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks WHERE id IN ({}) \
             AND state = 'PENDING' AND run_at > ? ORDER BY id FOR UPDATE",
            marks(chunk.len())
        ))
        .into_boxed::<Mysql>();
        let rows: Vec<HeadRow> = bind_ids(q, chunk).bind::<Datetime, _>(naive(now)).load(conn).await?;
        let heads = rows.into_iter().map(HeadRow::head).collect::<Result<Vec<_>, _>>()?;
        let writes: Vec<TaskWrite> = heads.iter().map(rules::after_cancel).collect();
        apply(conn, now, &writes).await?;
        for h in &heads {
            cancelled.push(id_i64(h.id)?);
        }
    }
    Ok(cancelled)
}

/// A cancellation; not fenced (operators and clients cancel).
pub(super) async fn cancel(conn: &mut Conn, id: TaskId) -> Res<CancelOutcome> {
    let key = id_i64(id)?;
    let hot: Option<HeadRow> = diesel::sql_query(
        "SELECT id, state, attempts, max_attempts, claimed_epoch FROM helix_tasks WHERE id = ? FOR UPDATE",
    )
    .bind::<BigInt, _>(key)
    .get_result(conn)
    .await
    .optional()?;
    match hot.map(HeadRow::head).transpose()? {
        Some(head) if head.state == TaskState::Pending => {
            let now: ClockRow = diesel::sql_query("SELECT NOW(6) AS now").get_result(conn).await?;
            apply(conn, now.now.and_utc(), &[rules::after_cancel(&head)]).await?;
            Ok(CancelOutcome::Cancelled)
        }
        Some(_) => {
            diesel::sql_query("UPDATE helix_tasks SET state = 'CANCELLING' WHERE id = ?")
                .bind::<BigInt, _>(key)
                .execute(conn)
                .await?;
            Ok(CancelOutcome::Requested)
        }
        None => {
            let done: Option<StateRow> =
                diesel::sql_query("SELECT state FROM helix_task_history WHERE id = ?")
                    .bind::<BigInt, _>(key)
                    .get_result(conn)
                    .await
                    .optional()?;
            match done {
                Some(r) => Ok(CancelOutcome::AlreadyFinished(TaskState::parse(&r.state)?)),
                None => Err(Failure::Store(StoreError::NotFound(format!("task {id}")))),
            }
        }
    }
}

// ---- reads and maintenance --------------------------------------------------------------

/// The earliest pending `run_at` per partition, one statement per chunk of partitions.
pub(super) async fn next_due(
    conn: &mut Conn,
    queue: QueueId,
    partitions: &[PartitionId],
) -> Res<BTreeMap<PartitionId, DateTime<Utc>>> {
    // One scalar `MIN` per partition: each is a single dive into `ix_tasks_due` (equality on
    // queue, partition and state), where a `GROUP BY` over an `IN` list reads every pending
    // row of the partitions.
    const MIN_DUE: &str =
        "(SELECT MIN(run_at) FROM helix_tasks WHERE queue_id = ? AND partition_id = ? AND state = 'PENDING')";
    let mut due = BTreeMap::new();
    for chunk in partitions.chunks(MAX_BINDS / 3) {
        let sql =
            derived(chunk.len(), &format!("? AS partition_id, {MIN_DUE} AS due"), &format!("?, {MIN_DUE}"));
        let mut q = diesel::sql_query(sql).into_boxed::<Mysql>();
        for p in chunk {
            q = q
                .bind::<Integer, _>(p_i32(*p)?)
                .bind::<BigInt, _>(q_i64(queue)?)
                .bind::<Integer, _>(p_i32(*p)?);
        }
        let rows: Vec<DueRow> = q.load(conn).await?;
        for r in rows {
            if let Some(at) = r.due {
                due.insert(PartitionId(stored_u32(r.partition_id, "partition")?), at.and_utc());
            }
        }
    }
    Ok(due)
}

/// Counts by (partition, state) over both tables.
pub(super) async fn counts(conn: &mut Conn, queue: QueueId) -> Res<Vec<TaskCount>> {
    let q = q_i64(queue)?;
    let rows: Vec<CountRow> = diesel::sql_query(
        "SELECT partition_id, state, COUNT(*) AS n FROM helix_tasks WHERE queue_id = ? GROUP BY partition_id, state \
         UNION ALL SELECT partition_id, state, COUNT(*) AS n FROM helix_task_history WHERE queue_id = ? \
         GROUP BY partition_id, state",
    )
    .bind::<BigInt, _>(q)
    .bind::<BigInt, _>(q)
    .load(conn)
    .await?;
    let mut out = rows
        .into_iter()
        .map(|r| {
            Ok(TaskCount {
                partition: PartitionId(stored_u32(r.partition_id, "partition")?),
                state: TaskState::parse(&r.state)?,
                count: stored_u64(r.n, "count")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    out.sort();
    Ok(out)
}

/// One task from either table.
pub(super) async fn get(conn: &mut Conn, id: TaskId) -> Res<TaskRecord> {
    let key = id_i64(id)?;
    let row: Option<TaskRow> = diesel::sql_query(format!(
        "SELECT {COLUMNS}, NULL AS finished_at FROM helix_tasks WHERE id = ? \
         UNION ALL SELECT {COLUMNS}, finished_at FROM helix_task_history WHERE id = ?"
    ))
    .bind::<BigInt, _>(key)
    .bind::<BigInt, _>(key)
    .get_result(conn)
    .await
    .optional()?;
    match row {
        Some(r) => Ok(r.record()?),
        None => Err(Failure::Store(StoreError::NotFound(format!("task {id}")))),
    }
}

/// A page of tasks in one state, keyset on id.
pub(super) async fn list(
    conn: &mut Conn,
    queue: QueueId,
    state: TaskState,
    after: Option<TaskId>,
    limit: u32,
) -> Res<Vec<TaskRecord>> {
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
    let rows: Vec<TaskRow> = diesel::sql_query(sql)
        .bind::<BigInt, _>(q_i64(queue)?)
        .bind::<Text, _>(state.as_str())
        .bind::<BigInt, _>(after.map_or(Ok(0), id_i64)?)
        .bind::<BigInt, _>(i64::from(limit))
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(TaskRow::record).collect::<Result<_, _>>()?)
}

/// An operator's retry of a dead task: back to the hot table under its id.
pub(super) async fn retry_dead(conn: &mut Conn, id: TaskId) -> Res<TaskRecord> {
    let key = id_i64(id)?;
    let state: Option<StateRow> =
        diesel::sql_query("SELECT state FROM helix_task_history WHERE id = ? FOR UPDATE")
            .bind::<BigInt, _>(key)
            .get_result(conn)
            .await
            .optional()?;
    match state {
        Some(s) if s.state == TaskState::Dead.as_str() => {}
        Some(s) => {
            return Err(Failure::Store(StoreError::Conflict(format!("task {id} is {}, not DEAD", s.state))));
        }
        None => {
            // Unfinished (not dead) or unknown.
            let task = get(conn, id).await?;
            return Err(Failure::Store(StoreError::Conflict(format!(
                "task {id} is {}, not DEAD",
                task.state
            ))));
        }
    }
    let inserted = diesel::sql_query(format!(
        "INSERT INTO helix_tasks ({COLUMNS}) SELECT id, queue_id, partition_id, 'PENDING', priority, NOW(6), 0, \
         max_attempts, timeout_ms, dedup_key, payload, claimed_epoch, claimed_by, created_at, NULL, NULL, \
         last_error, NULL FROM helix_task_history WHERE id = ?"
    ))
    .bind::<BigInt, _>(key)
    .execute(conn)
    .await;
    match inserted {
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            return Err(Failure::Store(StoreError::Conflict(format!(
                "dedup key of task {id} is held by another unfinished task"
            ))));
        }
        other => {
            other?;
        }
    }
    diesel::sql_query("DELETE FROM helix_task_history WHERE id = ?")
        .bind::<BigInt, _>(key)
        .execute(conn)
        .await?;
    get(conn, id).await
}

/// Deletes up to `limit` tasks that finished more than `older_than` ago.
pub(super) async fn prune(conn: &mut Conn, older_than: Duration, limit: u32) -> Res<u64> {
    // Four centuries back is before any row; beyond, MySQL's date arithmetic overflows.
    let micros = i64::try_from(older_than.min(Duration::from_secs(400 * 366 * 86_400)).as_micros())
        .unwrap_or(i64::MAX);
    let deleted = diesel::sql_query(
        "DELETE FROM helix_task_history WHERE finished_at < NOW(6) - INTERVAL ? MICROSECOND \
         ORDER BY finished_at LIMIT ?",
    )
    .bind::<BigInt, _>(micros)
    .bind::<BigInt, _>(i64::from(limit))
    .execute(conn)
    .await?;
    Ok(deleted as u64)
}

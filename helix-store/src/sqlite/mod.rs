//! The SQLite store: the embedded default. SQLite is compiled in, so a whole cluster (several
//! processes on one machine sharing one database file) runs with nothing installed.
//!
//! How it keeps the [`Store`] rules on SQLite:
//! - **One writer at a time, waiting its turn.** Every operation that reads and then writes
//!   runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock up front and
//!   waits for it up to the busy timeout. (A deferred transaction that reads first and then
//!   tries to write fails with `SQLITE_BUSY` at once instead of waiting.) Files use the WAL
//!   journal, so readers never wait for the writer.
//! - **The database clock.** Every instant is produced by SQLite itself, as TEXT in the fixed
//!   format `YYYY-MM-DD HH:MM:SS.SSS` (UTC): `strftime('%Y-%m-%d %H:%M:%f', 'now')`, and for a
//!   lease `strftime(…, 'now', '+3.000 seconds')`. One format makes text order chronological
//!   order, so lease comparisons are plain text comparisons in SQL, never a Rust clock.
//! - **Fencing in the same transaction.** Coordinator writes check the coordinator row
//!   (`holder = me AND term = my_term AND expires_at > now`) inside their immediate
//!   transaction; owner writes are one conditional `UPDATE … WHERE owner = ? AND epoch = ?`.
//! - **Same decisions everywhere.** Plans, lease acquisitions and refused heartbeats are
//!   decided by [`crate::rules`], exactly as the other stores decide them.
//!
//! A busy database that outlasts the busy timeout is reported as
//! [`StoreError::Transient`]; callers may retry.

mod pool;
mod schema;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::query_builder::BoxedSqlQuery;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_query;
use diesel::sql_types::{BigInt, Binary, Bool, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueId, QueueName, SessionEpoch, Term,
    WorkerId,
};

use self::pool::{Pool, Target};
use self::schema::*;
use crate::ConnectOptions;
use crate::error::{StoreError, StoreResult};
use crate::migrate;
use crate::model::*;
use crate::retry::Retry;
use crate::rules::{self, LeaseDecision, RowState};
use crate::schedules::*;
use crate::store::Store;
use crate::tasks::*;

/// The SQLite migrations, embedded in the binary.
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// How many values one statement binds at most (`IN (…)` lists, multi-row writes): below
/// SQLite's default limit of 32,766 variables, so a plan of 50,000 partitions takes a handful
/// of statements, not one per partition.
const MAX_BINDS: usize = 30_000;

/// The current instant on the database clock, in the stored format.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    };
    (modified) => {
        "strftime('%Y-%m-%d %H:%M:%f', 'now', ?)"
    };
}

// After `now!`, which they use.
mod schedules;
mod tasks;

/// Enqueues `tasks` in `queue` on the application's own connection, inside the transaction
/// it holds: the tasks commit or roll back with it (transactional enqueue, DESIGN §6). The
/// same rules, limits and answers as [`Store::enqueue_tasks`]; nothing is written when it
/// fails.
///
/// Run it inside `conn.immediate_transaction(…)`: SQLite lets one writer in at a time, and a
/// deferred transaction that read before this call may fail with a busy error when it tries
/// to write. Outside a transaction each statement commits by itself, and a failure may leave
/// part of a batch behind. The connection must be on the database of a [`SqliteStore`] (its
/// schema migrated).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use diesel::{Connection, SqliteConnection};
/// use helix_core::{DomainName, PartitionCount, PartitionId, QueueName};
/// use helix_store::{ConnectOptions, NewTask, QueueSpec, SqliteStore, Store};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.db");
/// let store = SqliteStore::open(Some(&path), &ConnectOptions::default()).await?;
/// store.create_domain(&DomainName::new("shop")?).await?;
/// let spec = QueueSpec::new(DomainName::new("shop")?, QueueName::new("mail")?, PartitionCount::new(4)?);
/// let queue = store.create_queue(&spec).await?;
///
/// let mut conn = SqliteConnection::establish(path.to_str().expect("utf-8 path"))?;
/// let enqueued = conn.immediate_transaction(|conn| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
///     // … the application's own writes …
///     let task = NewTask::new(PartitionId(0), b"welcome mail".to_vec());
///     Ok(helix_store::sqlite::enqueue_in_transaction(conn, queue.id, &[task])?)
/// })?;
/// assert!(enqueued[0].created);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`Store::enqueue_tasks`]; a busy database is [`StoreError::Transient`].
pub fn enqueue_in_transaction(
    conn: &mut SqliteConnection,
    queue: QueueId,
    tasks: &[NewTask],
) -> StoreResult<Vec<Enqueued>> {
    tasks::enqueue(conn, queue, tasks).map_err(|Fail(e)| e)
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> Self {
        fail.0
    }
}

/// The statuses of a worker that holds a session.
const IN_SESSION: &str = "('ACTIVE', 'DRAINING')";

/// A failure inside an operation: a database error, or a decision (fenced, not found…) that
/// rolls the transaction back.
#[derive(Debug)]
pub(crate) struct Fail(StoreError);

impl From<DieselError> for Fail {
    fn from(err: DieselError) -> Self {
        Self(map_error(err))
    }
}

impl From<StoreError> for Fail {
    fn from(err: StoreError) -> Self {
        Self(err)
    }
}

type Tx<T> = Result<T, Fail>;

/// Translates a diesel error into what a caller can act on: a locked database is transient, a
/// unique violation a conflict.
fn map_error(err: DieselError) -> StoreError {
    match err {
        DieselError::DatabaseError(kind, info) => {
            let message = info.message().to_owned();
            match kind {
                DatabaseErrorKind::UniqueViolation => StoreError::Conflict(message),
                DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation => {
                    StoreError::Invalid(message)
                }
                DatabaseErrorKind::SerializationFailure => StoreError::Transient(message),
                _ if is_busy(&message) => StoreError::Transient(message),
                _ => StoreError::Database(message),
            }
        }
        DieselError::NotFound => StoreError::NotFound("row".to_owned()),
        other => {
            let message = other.to_string();
            if is_busy(&message) { StoreError::Transient(message) } else { StoreError::Database(message) }
        }
    }
}

/// `SQLITE_BUSY` ("database is locked") and `SQLITE_LOCKED` ("database table is locked"):
/// another connection held the lock for longer than the busy timeout.
pub(super) fn is_busy(message: &str) -> bool {
    message.contains("is locked") || message.contains("database is busy")
}

/// The store on a SQLite database file (or a private in-memory database). Cheap to clone:
/// clones share one connection pool.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), helix_store::StoreError> {
/// use helix_core::DomainName;
/// use helix_store::{ConnectOptions, SqliteStore, Store};
///
/// let store = SqliteStore::open(None, &ConnectOptions::default()).await?;
/// store.create_domain(&DomainName::new("domain_order")?).await?;
/// assert_eq!(store.list_domains().await?.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: Pool,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("database", &self.pool.target().describe())
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

impl SqliteStore {
    /// Opens the database file at `path` (created when missing; its directory must exist), or
    /// a private in-memory database for `None`, checks the schema version and, when
    /// `options.run_migrations`, applies pending migrations.
    ///
    /// Every connection waits up to `options.busy_timeout` for SQLite's locks (the busy
    /// timeout), uses the WAL journal (files), `synchronous = NORMAL` and foreign keys. At most
    /// `options.pool_size` connections are open at once; an in-memory database has exactly
    /// one, since each `:memory:` connection is a database of its own.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened (for example, its directory
    /// does not exist), [`StoreError::SchemaTooNew`] when the database holds a migration this
    /// binary does not know, [`StoreError::Database`] when a migration fails.
    pub async fn open(path: Option<&Path>, options: &ConnectOptions) -> StoreResult<Self> {
        let target = path.map_or(Target::Memory, |p| Target::File(p.to_path_buf()));
        let pool = Pool::new(target, options.pool_size, options.busy_timeout, options.busy_timeout);
        let run_migrations = options.run_migrations;
        pool.run(move |conn| prepare_schema(conn, run_migrations)).await?;
        Ok(Self { pool })
    }

    /// Runs `f` on a pooled connection, again (with [`Retry`]'s capped backoff) while it fails
    /// with [`StoreError::Transient`]: a database still locked after the busy timeout. A
    /// transient failure never commits, so trying again is safe.
    async fn retrying<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Tx<T> + Clone + Send + 'static,
    {
        let mut retry = Retry::new(op);
        loop {
            match self.pool.run(f.clone()).await {
                Err(err) if retry.again(&err).await => continue,
                result => return result,
            }
        }
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction: for every operation that reads and then
    /// writes.
    async fn write<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Tx<T> + Clone + Send + 'static,
    {
        self.retrying(op, move |conn| conn.immediate_transaction(f)).await
    }

    /// Runs `f` in a read transaction: one consistent snapshot across its statements.
    async fn read<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Tx<T> + Clone + Send + 'static,
    {
        self.retrying(op, move |conn| conn.transaction(f)).await
    }

    /// Runs `f` outside any explicit transaction: for single statements.
    async fn single<T, F>(&self, op: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Tx<T> + Clone + Send + 'static,
    {
        self.retrying(op, f).await
    }
}

// ---- schema version ---------------------------------------------------------------------

/// Refuses a database that holds a migration this binary does not embed, then applies the
/// pending ones ([`crate::migrate`]); all under the write lock, so processes opening one file
/// at once migrate it once.
fn prepare_schema(conn: &mut SqliteConnection, run_migrations: bool) -> Tx<()> {
    conn.immediate_transaction(|conn| Ok(migrate::check_and_migrate(conn, MIGRATIONS, run_migrations)?))
}

// ---- conversions ------------------------------------------------------------------------

/// A lease length as an SQLite date modifier, `+3.000 seconds` (SQLite keeps milliseconds).
fn modifier(sign: char, d: Duration) -> String {
    format!("{sign}{}.{:03} seconds", d.as_secs(), d.subsec_millis())
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is out of range")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Database(format!("stored {what} {value} is negative")))
}

fn to_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Database(format!("stored {what} {value} is out of range")))
}

fn worker_id(bytes: &[u8]) -> Result<WorkerId, StoreError> {
    WorkerId::from_slice(bytes)
        .ok_or_else(|| StoreError::Database(format!("stored worker id is {} bytes, not 16", bytes.len())))
}

fn opt_worker_id(bytes: Option<&[u8]>) -> Result<Option<WorkerId>, StoreError> {
    bytes.map(worker_id).transpose()
}

fn opt_bytes(worker: Option<WorkerId>) -> Option<Vec<u8>> {
    worker.map(|w| w.as_bytes().to_vec())
}

fn instant(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

fn json_text(value: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| StoreError::Invalid(format!("cannot encode json: {err}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|err| StoreError::Database(format!("stored {what} is not valid json: {err}")))
}

fn stored_name<T>(parsed: Result<T, helix_core::NameError>) -> Result<T, StoreError> {
    parsed.map_err(|err| StoreError::Database(format!("stored name is invalid: {err}")))
}

/// `?, ?, …` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

// ---- rows -------------------------------------------------------------------------------

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct NowRow {
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_domains, check_for_backend(Sqlite))]
struct DomainRow {
    name: String,
    created_at: NaiveDateTime,
}

impl DomainRow {
    fn into_record(self) -> Result<DomainRecord, StoreError> {
        Ok(DomainRecord {
            name: stored_name(DomainName::new(self.name))?,
            created_at: instant(self.created_at),
        })
    }
}

const QUEUE_COLUMNS: &str =
    "id, domain, name, partition_count, allocator, settings, assignment_version, created_at";

#[derive(QueryableByName)]
#[diesel(table_name = helix_queues, check_for_backend(Sqlite))]
struct QueueRow {
    id: i64,
    domain: String,
    name: String,
    partition_count: i64,
    allocator: String,
    settings: String,
    assignment_version: i64,
    created_at: NaiveDateTime,
}

impl QueueRow {
    fn into_record(self) -> Result<QueueRecord, StoreError> {
        let count = to_u64(self.partition_count, "partition count")?;
        Ok(QueueRecord {
            id: QueueId(to_u64(self.id, "queue id")?),
            domain: stored_name(DomainName::new(self.domain))?,
            name: stored_name(QueueName::new(self.name))?,
            partition_count: stored_name(PartitionCount::new(count))?,
            allocator: self.allocator,
            settings: parse_json(&self.settings, "queue settings")?,
            assignment_version: to_u64(self.assignment_version, "assignment version")?,
            created_at: instant(self.created_at),
        })
    }
}

const WORKER_COLUMNS: &str = "id, host, pid, labels, status, registered_at, lease_expires_at, session_epoch";

#[derive(QueryableByName)]
#[diesel(table_name = helix_workers, check_for_backend(Sqlite))]
struct WorkerRow {
    id: Vec<u8>,
    host: String,
    pid: i64,
    labels: String,
    status: String,
    registered_at: NaiveDateTime,
    lease_expires_at: NaiveDateTime,
    session_epoch: i64,
}

impl WorkerRow {
    fn into_record(self, subscriptions: Vec<Subscription>) -> Result<WorkerRecord, StoreError> {
        Ok(WorkerRecord {
            id: worker_id(&self.id)?,
            host: self.host,
            pid: to_u32(self.pid, "pid")?,
            labels: parse_json(&self.labels, "worker labels")?,
            status: WorkerStatus::parse(&self.status)?,
            registered_at: instant(self.registered_at),
            lease_expires_at: instant(self.lease_expires_at),
            session_epoch: SessionEpoch(to_u64(self.session_epoch, "session epoch")?),
            subscriptions,
        })
    }
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_subscriptions, check_for_backend(Sqlite))]
struct SubscriptionRow {
    worker_id: Vec<u8>,
    queue_id: i64,
    capacity: i64,
}

impl SubscriptionRow {
    fn subscription(&self) -> Result<Subscription, StoreError> {
        Ok(Subscription {
            queue_id: QueueId(to_u64(self.queue_id, "queue id")?),
            capacity: to_u32(self.capacity, "capacity")?,
        })
    }
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_workers, check_for_backend(Sqlite))]
struct SessionRow {
    status: String,
    session_epoch: i64,
    #[diesel(sql_type = Bool)]
    expired: bool,
}

#[derive(QueryableByName)]
struct PreviousSession {
    #[diesel(sql_type = BigInt)]
    session_epoch: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    live_ms: Option<i64>,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_assignments, check_for_backend(Sqlite))]
struct AdoptedRow {
    queue_id: i64,
    partition_id: i64,
    epoch: i64,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_coordinator, check_for_backend(Sqlite))]
struct LeaseRow {
    cluster: String,
    holder: Option<Vec<u8>>,
    term: i64,
    expires_at: NaiveDateTime,
    #[diesel(sql_type = Bool)]
    expired: bool,
}

const ASSIGNMENT_COLUMNS: &str =
    "queue_id, partition_id, owner, epoch, state, target, coordinator_term, updated_at";

#[derive(QueryableByName)]
#[diesel(table_name = helix_assignments, check_for_backend(Sqlite))]
struct AssignmentRow {
    queue_id: i64,
    partition_id: i64,
    owner: Option<Vec<u8>>,
    epoch: i64,
    state: String,
    target: Option<Vec<u8>>,
    coordinator_term: i64,
    updated_at: NaiveDateTime,
}

impl AssignmentRow {
    fn into_record(self) -> Result<AssignmentRecord, StoreError> {
        Ok(AssignmentRecord {
            queue_id: QueueId(to_u64(self.queue_id, "queue id")?),
            partition: PartitionId(to_u32(self.partition_id, "partition")?),
            owner: opt_worker_id(self.owner.as_deref())?,
            epoch: Epoch(to_u64(self.epoch, "epoch")?),
            state: AssignmentState::parse(&self.state)?,
            target: opt_worker_id(self.target.as_deref())?,
            coordinator_term: Term(to_u64(self.coordinator_term, "term")?),
            updated_at: instant(self.updated_at),
        })
    }
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_assignments, check_for_backend(Sqlite))]
struct PlanRow {
    partition_id: i64,
    owner: Option<Vec<u8>>,
    epoch: i64,
    state: String,
    target: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_assignments, check_for_backend(Sqlite))]
struct OwnerEpochRow {
    owner: Option<Vec<u8>>,
    epoch: i64,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_queues, check_for_backend(Sqlite))]
struct VersionOfQueue {
    partition_count: i64,
    assignment_version: i64,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_queues, check_for_backend(Sqlite))]
struct AssignmentVersionRow {
    assignment_version: i64,
}

#[derive(QueryableByName)]
#[diesel(table_name = helix_workers, check_for_backend(Sqlite))]
struct WorkerIdRow {
    id: Vec<u8>,
}

const EVENT_COLUMNS: &str = "id, at, kind, queue_id, partition_id, worker, term, epoch, detail";

#[derive(QueryableByName)]
#[diesel(table_name = helix_events, check_for_backend(Sqlite))]
struct EventRow {
    id: i64,
    at: NaiveDateTime,
    kind: String,
    queue_id: Option<i64>,
    partition_id: Option<i64>,
    worker: Option<Vec<u8>>,
    term: Option<i64>,
    epoch: Option<i64>,
    detail: String,
}

impl EventRow {
    fn into_event(self) -> Result<Event, StoreError> {
        Ok(Event {
            id: to_u64(self.id, "event id")?,
            at: instant(self.at),
            kind: EventKind::parse(&self.kind)?,
            queue_id: self.queue_id.map(|q| to_u64(q, "queue id").map(QueueId)).transpose()?,
            partition: self.partition_id.map(|p| to_u32(p, "partition").map(PartitionId)).transpose()?,
            worker: opt_worker_id(self.worker.as_deref())?,
            term: self.term.map(|t| to_u64(t, "term").map(Term)).transpose()?,
            epoch: self.epoch.map(|e| to_u64(e, "epoch").map(Epoch)).transpose()?,
            detail: parse_json(&self.detail, "event detail")?,
        })
    }
}

// ---- shared statements ------------------------------------------------------------------

/// Appends `events` in as few statements as possible (up to [`MAX_BINDS`] values each), all stamped
/// with the same database instant per statement; returns the id of the last one.
fn record(conn: &mut SqliteConnection, events: &[NewEvent]) -> Tx<Option<u64>> {
    let mut last = None;
    for chunk in events.chunks(MAX_BINDS / 7) {
        let row = concat!("(", now!(), ", ?, ?, ?, ?, ?, ?, ?)");
        let sql = format!(
            "INSERT INTO helix_events (at, kind, queue_id, partition_id, worker, term, epoch, detail) VALUES {} \
             RETURNING id",
            vec![row; chunk.len()].join(", ")
        );
        let mut query = sql_query(sql).into_boxed::<Sqlite>();
        for event in chunk {
            query = query
                .bind::<Text, _>(event.kind.as_str())
                .bind::<Nullable<BigInt>, _>(event.queue_id.map(|q| to_i64(q.0, "queue id")).transpose()?)
                .bind::<Nullable<BigInt>, _>(event.partition.map(|p| i64::from(p.0)))
                .bind::<Nullable<Binary>, _>(opt_bytes(event.worker))
                .bind::<Nullable<BigInt>, _>(event.term.map(|t| to_i64(t.0, "term")).transpose()?)
                .bind::<Nullable<BigInt>, _>(event.epoch.map(|e| to_i64(e.0, "epoch")).transpose()?)
                .bind::<Text, _>(json_text(&bound_detail(&event.detail))?);
        }
        let ids: Vec<IdRow> = query.load(conn)?;
        if let Some(max) = ids.iter().map(|r| r.id).max() {
            last = Some(to_u64(max, "event id")?);
        }
    }
    Ok(last)
}

/// Fails with `Fenced` unless `fence` holds the cluster's running lease, on the database
/// clock. Runs inside the caller's immediate transaction, so the lease cannot change before
/// the caller's write commits.
fn check_fence(conn: &mut SqliteConnection, fence: &CoordinatorFence) -> Tx<()> {
    let held: CountRow = sql_query(concat!(
        "SELECT COUNT(*) AS n FROM helix_coordinator WHERE cluster = ? AND holder = ? AND term = ? AND expires_at > ",
        now!()
    ))
    .bind::<Text, _>(fence.cluster.as_str())
    .bind::<Binary, _>(fence.holder.as_bytes().as_slice())
    .bind::<BigInt, _>(to_i64(fence.term.0, "term")?)
    .get_result(conn)?;
    if held.n == 0 {
        return Err(Fail(StoreError::Fenced(format!(
            "coordinator term {} of cluster {} is no longer current",
            fence.term, fence.cluster
        ))));
    }
    Ok(())
}

fn bump_version(conn: &mut SqliteConnection, queue: i64) -> Tx<u64> {
    let row: AssignmentVersionRow = sql_query(
        "UPDATE helix_queues SET assignment_version = assignment_version + 1 WHERE id = ? \
         RETURNING assignment_version",
    )
    .bind::<BigInt, _>(queue)
    .get_result(conn)?;
    Ok(to_u64(row.assignment_version, "assignment version")?)
}

fn queue_row_by_name(conn: &mut SqliteConnection, domain: &str, name: &str) -> Tx<Option<QueueRow>> {
    Ok(sql_query(format!("SELECT {QUEUE_COLUMNS} FROM helix_queues WHERE domain = ? AND name = ?"))
        .bind::<Text, _>(domain)
        .bind::<Text, _>(name)
        .get_result(conn)
        .optional()?)
}

/// The subscriptions of the workers selected by `filter` (a condition on `w`), by worker.
fn subscriptions_where(
    conn: &mut SqliteConnection,
    filter: &str,
    worker: Option<&[u8]>,
) -> Tx<BTreeMap<Vec<u8>, Vec<Subscription>>> {
    let sql = format!(
        "SELECT s.worker_id, s.queue_id, s.capacity FROM helix_subscriptions s \
         JOIN helix_workers w ON w.id = s.worker_id WHERE {filter} ORDER BY s.worker_id, s.queue_id"
    );
    let mut query = sql_query(sql).into_boxed::<Sqlite>();
    if let Some(id) = worker {
        query = query.bind::<Binary, _>(id.to_vec());
    }
    let rows: Vec<SubscriptionRow> = query.load(conn)?;
    let mut by_worker: BTreeMap<Vec<u8>, Vec<Subscription>> = BTreeMap::new();
    for row in rows {
        let sub = row.subscription()?;
        by_worker.entry(row.worker_id).or_default().push(sub);
    }
    Ok(by_worker)
}

/// Binds a list of 16-byte worker ids.
fn bind_ids<'a>(
    mut query: BoxedSqlQuery<'a, Sqlite, diesel::query_builder::SqlQuery>,
    ids: &[Vec<u8>],
) -> BoxedSqlQuery<'a, Sqlite, diesel::query_builder::SqlQuery> {
    for id in ids {
        query = query.bind::<Binary, _>(id.clone());
    }
    query
}

/// The owner-fenced write shared by handoff, release and failure: one conditional `UPDATE`,
/// then the version bump and the event, in one immediate transaction.
fn owner_write(
    conn: &mut SqliteConnection,
    queue: QueueId,
    partition: PartitionId,
    worker: WorkerId,
    epoch: Epoch,
    write: OwnerWrite<'_>,
) -> Tx<Epoch> {
    let queue_id = to_i64(queue.0, "queue id")?;
    let sql = match write {
        // A handoff to a target that is no longer live releases instead.
        OwnerWrite::HandOff => concat!(
            "UPDATE helix_assignments SET owner = CASE WHEN target IN (SELECT id FROM helix_workers \
             WHERE status IN ('ACTIVE', 'DRAINING') AND lease_expires_at >= ",
            now!(),
            ") THEN target ELSE NULL END, epoch = epoch + 1, state = 'ASSIGNED', target = NULL, updated_at = ",
            now!(),
            " WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ? AND state = 'REVOKING' \
             RETURNING owner, epoch"
        ),
        OwnerWrite::Release => concat!(
            "UPDATE helix_assignments SET owner = NULL, epoch = epoch + 1, state = 'ASSIGNED', target = NULL, \
             updated_at = ",
            now!(),
            " WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ? RETURNING owner, epoch"
        ),
        OwnerWrite::Fail(_) => concat!(
            "UPDATE helix_assignments SET owner = NULL, epoch = epoch + 1, state = 'FAILED', target = NULL, \
             updated_at = ",
            now!(),
            " WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ? RETURNING owner, epoch"
        ),
    };
    let row: Option<OwnerEpochRow> = sql_query(sql)
        .bind::<BigInt, _>(queue_id)
        .bind::<BigInt, _>(i64::from(partition.0))
        .bind::<Binary, _>(worker.as_bytes().as_slice())
        .bind::<BigInt, _>(to_i64(epoch.0, "epoch")?)
        .get_result(conn)
        .optional()?;
    let Some(row) = row else {
        return Err(Fail(StoreError::Fenced(format!(
            "worker {worker} no longer owns queue {queue} partition {partition} at epoch {epoch}"
        ))));
    };
    let new_epoch = Epoch(to_u64(row.epoch, "epoch")?);
    let new_owner = opt_worker_id(row.owner.as_deref())?;
    bump_version(conn, queue_id)?;
    record(conn, &[write.event(queue, partition, worker, new_owner, new_epoch)])?;
    Ok(new_epoch)
}

/// Adoption, inside the registration's immediate transaction (after the new subscriptions are
/// written): every row `worker` still owns in a queue it serves moves to the next epoch (a
/// revocation keeps its start, `rules::adoption_keeps_updated_at`) with a `partition_adopted`
/// event; every row it owns in a queue it no longer serves is released (no owner, next epoch)
/// with a `partition_released` event, for the coordinator to grant to a worker that serves
/// it. Each queue's version moves once.
fn adopt(conn: &mut SqliteConnection, worker: WorkerId, session_epoch: SessionEpoch) -> Tx<()> {
    let id = worker.as_bytes().as_slice();
    let released: Vec<AdoptedRow> = sql_query(concat!(
        "UPDATE helix_assignments SET owner = NULL, epoch = epoch + 1, state = 'ASSIGNED', target = NULL, \
         updated_at = ",
        now!(),
        " WHERE owner = ? AND queue_id NOT IN (SELECT queue_id FROM helix_subscriptions WHERE worker_id = ?) \
         RETURNING queue_id, partition_id, epoch"
    ))
    .bind::<Binary, _>(id)
    .bind::<Binary, _>(id)
    .load(conn)?;
    let adopted: Vec<AdoptedRow> = sql_query(concat!(
        "UPDATE helix_assignments SET epoch = epoch + 1, updated_at = CASE WHEN state = 'REVOKING' \
         THEN updated_at ELSE ",
        now!(),
        " END WHERE owner = ? RETURNING queue_id, partition_id, epoch"
    ))
    .bind::<Binary, _>(id)
    .load(conn)?;
    let queues: BTreeSet<i64> = released.iter().chain(&adopted).map(|r| r.queue_id).collect();
    for queue in queues {
        bump_version(conn, queue)?;
    }
    let mut events = Vec::with_capacity(released.len() + adopted.len());
    for (row, is_released) in released.iter().map(|r| (r, true)).chain(adopted.iter().map(|r| (r, false))) {
        let queue = QueueId(to_u64(row.queue_id, "queue id")?);
        let partition = PartitionId(to_u32(row.partition_id, "partition")?);
        let epoch = Epoch(to_u64(row.epoch, "epoch")?);
        events.push(if is_released {
            NewEvent::partition_released(queue, partition, worker, epoch)
        } else {
            NewEvent::partition_adopted(queue, partition, worker, epoch, session_epoch)
        });
    }
    record(conn, &events)?;
    Ok(())
}

/// An operator's reset of a failed partition, in one immediate transaction.
fn reset_partition(conn: &mut SqliteConnection, queue: QueueId, partition: PartitionId) -> Tx<bool> {
    let queue_id = to_i64(queue.0, "queue id")?;
    let row: Option<OwnerEpochRow> = sql_query(concat!(
        "UPDATE helix_assignments SET state = 'ASSIGNED', updated_at = ",
        now!(),
        " WHERE queue_id = ? AND partition_id = ? AND state = 'FAILED' RETURNING owner, epoch"
    ))
    .bind::<BigInt, _>(queue_id)
    .bind::<BigInt, _>(i64::from(partition.0))
    .get_result(conn)
    .optional()?;
    let Some(row) = row else {
        let exists: CountRow =
            sql_query("SELECT COUNT(*) AS n FROM helix_assignments WHERE queue_id = ? AND partition_id = ?")
                .bind::<BigInt, _>(queue_id)
                .bind::<BigInt, _>(i64::from(partition.0))
                .get_result(conn)?;
        if exists.n == 0 {
            return Err(Fail(StoreError::NotFound(format!("queue {queue} partition {partition}"))));
        }
        return Ok(false);
    };
    bump_version(conn, queue_id)?;
    record(conn, &[NewEvent::partition_reset(queue, partition, Epoch(to_u64(row.epoch, "epoch")?))])?;
    Ok(true)
}

// ---- the store --------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        self.single("now", |conn| {
            let row: NowRow = sql_query(concat!("SELECT ", now!(), " AS now")).get_result(conn)?;
            Ok(instant(row.now))
        })
        .await
    }

    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        let name = name.clone();
        self.write("create_domain", move |conn| {
            let created: Option<DomainRow> = sql_query(concat!(
                "INSERT INTO helix_domains (name, created_at) VALUES (?, ",
                now!(),
                ") ON CONFLICT (name) DO NOTHING RETURNING name, created_at"
            ))
            .bind::<Text, _>(name.as_str())
            .get_result(conn)
            .optional()?;
            let Some(created) = created else {
                return Err(Fail(StoreError::Conflict(format!("domain {name} already exists"))));
            };
            record(conn, &[NewEvent::domain_created(&name)])?;
            Ok(created.into_record()?)
        })
        .await
    }

    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        let name = name.clone();
        self.single("get_domain", move |conn| {
            let row: Option<DomainRow> =
                sql_query("SELECT name, created_at FROM helix_domains WHERE name = ?")
                    .bind::<Text, _>(name.as_str())
                    .get_result(conn)
                    .optional()?;
            Ok(row.ok_or_else(|| StoreError::NotFound(format!("domain {name}")))?.into_record()?)
        })
        .await
    }

    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        self.single("list_domains", |conn| {
            let rows: Vec<DomainRow> =
                sql_query("SELECT name, created_at FROM helix_domains ORDER BY name").load(conn)?;
            Ok(rows.into_iter().map(DomainRow::into_record).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        let name = name.clone();
        self.write("delete_domain", move |conn| {
            let queues: CountRow = sql_query("SELECT COUNT(*) AS n FROM helix_queues WHERE domain = ?")
                .bind::<Text, _>(name.as_str())
                .get_result(conn)?;
            let exists: CountRow = sql_query("SELECT COUNT(*) AS n FROM helix_domains WHERE name = ?")
                .bind::<Text, _>(name.as_str())
                .get_result(conn)?;
            if exists.n == 0 {
                return Err(Fail(StoreError::NotFound(format!("domain {name}"))));
            }
            if queues.n > 0 {
                return Err(Fail(StoreError::Conflict(format!("domain {name} still has queues"))));
            }
            sql_query("DELETE FROM helix_domains WHERE name = ?")
                .bind::<Text, _>(name.as_str())
                .execute(conn)?;
            record(conn, &[NewEvent::domain_deleted(&name)])?;
            Ok(())
        })
        .await
    }

    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        spec.validate()?;
        let spec = spec.clone();
        let settings = json_text(&spec.settings)?;
        self.write("create_queue", move |conn| {
            let domain: CountRow = sql_query("SELECT COUNT(*) AS n FROM helix_domains WHERE name = ?")
                .bind::<Text, _>(spec.domain.as_str())
                .get_result(conn)?;
            if domain.n == 0 {
                return Err(Fail(StoreError::NotFound(format!("domain {}", spec.domain))));
            }
            if queue_row_by_name(conn, spec.domain.as_str(), spec.name.as_str())?.is_some() {
                return Err(Fail(StoreError::Conflict(format!(
                    "queue {}/{} already exists",
                    spec.domain, spec.name
                ))));
            }
            let row: QueueRow = sql_query(format!(
                "INSERT INTO helix_queues (domain, name, partition_count, allocator, settings, assignment_version, \
                 created_at) VALUES (?, ?, ?, ?, ?, 0, {}) RETURNING {QUEUE_COLUMNS}",
                now!()
            ))
            .bind::<Text, _>(spec.domain.as_str())
            .bind::<Text, _>(spec.name.as_str())
            .bind::<BigInt, _>(i64::from(spec.partition_count.get()))
            .bind::<Text, _>(spec.allocator.as_str())
            .bind::<Text, _>(settings.as_str())
            .get_result(conn)?;
            // One unowned row per partition, in one statement.
            sql_query(concat!(
                "WITH RECURSIVE p(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM p WHERE n + 1 < ?) \
                 INSERT INTO helix_assignments (queue_id, partition_id, owner, epoch, state, target, \
                 coordinator_term, updated_at) SELECT ?, n, NULL, 0, 'ASSIGNED', NULL, 0, ",
                now!(),
                " FROM p"
            ))
            .bind::<BigInt, _>(i64::from(spec.partition_count.get()))
            .bind::<BigInt, _>(row.id)
            .execute(conn)?;
            let record_ = row.into_record()?;
            let event = NewEvent::queue_created(record_.id, &spec.domain, &spec.name, spec.partition_count);
            record(conn, &[event])?;
            Ok(record_)
        })
        .await
    }

    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        let (domain, name) = (domain.clone(), name.clone());
        self.single("get_queue", move |conn| {
            let row = queue_row_by_name(conn, domain.as_str(), name.as_str())?
                .ok_or_else(|| StoreError::NotFound(format!("queue {domain}/{name}")))?;
            Ok(row.into_record()?)
        })
        .await
    }

    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        self.single("get_queue_by_id", move |conn| {
            let not_found = || StoreError::NotFound(format!("queue {id}"));
            let key = i64::try_from(id.0).map_err(|_| not_found())?;
            let row: Option<QueueRow> =
                sql_query(format!("SELECT {QUEUE_COLUMNS} FROM helix_queues WHERE id = ?"))
                    .bind::<BigInt, _>(key)
                    .get_result(conn)
                    .optional()?;
            Ok(row.ok_or_else(not_found)?.into_record()?)
        })
        .await
    }

    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        self.single("list_queues", move |conn| {
            let rows: Vec<QueueRow> = match &domain {
                Some(d) => sql_query(format!(
                    "SELECT {QUEUE_COLUMNS} FROM helix_queues WHERE domain = ? ORDER BY domain, name"
                ))
                .bind::<Text, _>(d.as_str())
                .load(conn)?,
                None => sql_query(format!("SELECT {QUEUE_COLUMNS} FROM helix_queues ORDER BY domain, name"))
                    .load(conn)?,
            };
            Ok(rows.into_iter().map(QueueRow::into_record).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        let (domain, name) = (domain.clone(), name.clone());
        self.write("delete_queue", move |conn| {
            let row = queue_row_by_name(conn, domain.as_str(), name.as_str())?
                .ok_or_else(|| StoreError::NotFound(format!("queue {domain}/{name}")))?;
            for statement in [
                schedules::DELETE_QUEUE[0],
                schedules::DELETE_QUEUE[1],
                "DELETE FROM helix_assignments WHERE queue_id = ?",
                "DELETE FROM helix_subscriptions WHERE queue_id = ?",
                "DELETE FROM helix_tasks WHERE queue_id = ?",
                "DELETE FROM helix_task_history WHERE queue_id = ?",
                "DELETE FROM helix_queues WHERE id = ?",
            ] {
                sql_query(statement).bind::<BigInt, _>(row.id).execute(conn)?;
            }
            let event = NewEvent::queue_deleted(QueueId(to_u64(row.id, "queue id")?), &domain, &name);
            record(conn, &[event])?;
            Ok(())
        })
        .await
    }

    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        registration.validate()?;
        let reg = registration.clone();
        let labels = serde_json::to_string(&reg.labels)
            .map_err(|err| StoreError::Invalid(format!("cannot encode worker labels: {err}")))?;
        self.write("register_worker", move |conn| {
            // Every subscribed queue must exist.
            let wanted: Vec<i64> =
                reg.subscriptions.iter().map(|s| i64::try_from(s.queue_id.0).unwrap_or(-1)).collect();
            let mut found = HashSet::new();
            for chunk in wanted.chunks(MAX_BINDS - 1) {
                let mut query = sql_query(format!(
                    "SELECT id FROM helix_queues WHERE id IN ({})",
                    placeholders(chunk.len())
                ))
                .into_boxed::<Sqlite>();
                for id in chunk {
                    query = query.bind::<BigInt, _>(*id);
                }
                let rows: Vec<IdRow> = query.load(conn)?;
                found.extend(rows.into_iter().map(|r| r.id));
            }
            if let Some((missing, _)) =
                reg.subscriptions.iter().zip(&wanted).find(|(_, id)| !found.contains(*id))
            {
                return Err(Fail(StoreError::NotFound(format!("queue {}", missing.queue_id))));
            }
            let id = reg.id.as_bytes().as_slice();
            // Under the write lock of this immediate transaction: nothing (no plan, no other
            // registration) can change the row between this read and the writes below.
            let previous: Option<PreviousSession> = sql_query(format!(
                "SELECT session_epoch, CASE WHEN status IN {IN_SESSION} AND lease_expires_at >= {now} \
                 THEN CAST(round((julianday(lease_expires_at) - julianday({now})) * 86400000.0) AS INTEGER) \
                 END AS live_ms FROM helix_workers WHERE id = ?",
                now = now!()
            ))
            .bind::<Binary, _>(id)
            .get_result(conn)
            .optional()?;
            let live_for = previous
                .as_ref()
                .and_then(|p| p.live_ms)
                .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
            rules::refuse_live_id(reg.id, live_for)?;
            let session_epoch = match previous {
                Some(row) => SessionEpoch(to_u64(row.session_epoch, "session epoch")?).next(),
                None => SessionEpoch(1),
            };
            let lease: NowRow = sql_query(concat!(
                "INSERT INTO helix_workers (id, host, pid, labels, status, registered_at, lease_expires_at, \
                 session_epoch) VALUES (?, ?, ?, ?, 'ACTIVE', ",
                now!(),
                ", ",
                now!(modified),
                ", ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
                 labels = excluded.labels, status = excluded.status, registered_at = excluded.registered_at, \
                 lease_expires_at = excluded.lease_expires_at, session_epoch = excluded.session_epoch \
                 RETURNING lease_expires_at AS now"
            ))
            .bind::<Binary, _>(id)
            .bind::<Text, _>(reg.host.as_str())
            .bind::<BigInt, _>(i64::from(reg.pid))
            .bind::<Text, _>(labels.as_str())
            .bind::<Text, _>(modifier('+', reg.session_timeout))
            .bind::<BigInt, _>(to_i64(session_epoch.0, "session epoch")?)
            .get_result(conn)?;
            sql_query("DELETE FROM helix_subscriptions WHERE worker_id = ?")
                .bind::<Binary, _>(id)
                .execute(conn)?;
            for sub in &reg.subscriptions {
                sql_query("INSERT INTO helix_subscriptions (worker_id, queue_id, capacity) VALUES (?, ?, ?)")
                    .bind::<Binary, _>(id)
                    .bind::<BigInt, _>(to_i64(sub.queue_id.0, "queue id")?)
                    .bind::<BigInt, _>(i64::from(sub.capacity))
                    .execute(conn)?;
            }
            record(conn, &[NewEvent::worker_joined(reg.id, &reg.host, reg.pid, session_epoch)])?;
            adopt(conn, reg.id, session_epoch)?;
            Ok(WorkerLease { session_epoch, lease_expires_at: instant(lease.now) })
        })
        .await
    }

    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        validate_lease_duration("session timeout", session_timeout)?;
        let epoch = to_i64(session_epoch.0, "session epoch")?;
        self.single("heartbeat", move |conn| {
            // The happy path is this one statement.
            let renewed = sql_query(format!(
                "UPDATE helix_workers SET lease_expires_at = {} WHERE id = ? AND session_epoch = ? \
                 AND status IN {IN_SESSION} AND lease_expires_at >= {}",
                now!(modified),
                now!()
            ))
            .bind::<Text, _>(modifier('+', session_timeout))
            .bind::<Binary, _>(worker.as_bytes().as_slice())
            .bind::<BigInt, _>(epoch)
            .execute(conn)?;
            if renewed == 1 {
                // Brings the versions this session saw in step; any row changed means moved.
                let moved = sql_query(
                    "UPDATE helix_subscriptions SET seen_version = \
                     (SELECT q.assignment_version FROM helix_queues q WHERE q.id = helix_subscriptions.queue_id) \
                     WHERE worker_id = ? AND seen_version <> \
                     (SELECT q.assignment_version FROM helix_queues q WHERE q.id = helix_subscriptions.queue_id)",
                )
                .bind::<Binary, _>(worker.as_bytes().as_slice())
                .execute(conn)?;
                return Ok(Heartbeat::Renewed { assignments_moved: moved > 0 });
            }
            let row: Option<SessionRow> = sql_query(concat!(
                "SELECT status, session_epoch, lease_expires_at < ",
                now!(),
                " AS expired FROM helix_workers WHERE id = ?"
            ))
            .bind::<Binary, _>(worker.as_bytes().as_slice())
            .get_result(conn)
            .optional()?;
            let row = match row {
                Some(r) => Some((
                    WorkerStatus::parse(&r.status)?,
                    SessionEpoch(to_u64(r.session_epoch, "session epoch")?),
                    r.expired,
                )),
                None => None,
            };
            Ok(rules::classify_heartbeat(row, session_epoch))
        })
        .await
    }

    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        rules::settable_status(status)?;
        let epoch = to_i64(session_epoch.0, "session epoch")?;
        self.write("set_worker_status", move |conn| {
            let current: Option<SessionRow> = sql_query(format!(
                "SELECT status, session_epoch, 0 AS expired FROM helix_workers WHERE id = ? AND session_epoch = ? \
                 AND status IN {IN_SESSION} AND lease_expires_at >= {}",
                now!()
            ))
            .bind::<Binary, _>(worker.as_bytes().as_slice())
            .bind::<BigInt, _>(epoch)
            .get_result(conn)
            .optional()?;
            let Some(current) = current else {
                return Err(Fail(StoreError::Fenced(format!("session {session_epoch} of worker {worker} is over"))));
            };
            if current.status == status.as_str() {
                return Ok(());
            }
            sql_query("UPDATE helix_workers SET status = ? WHERE id = ?")
                .bind::<Text, _>(status.as_str())
                .bind::<Binary, _>(worker.as_bytes().as_slice())
                .execute(conn)?;
            record(conn, &[NewEvent::worker_status_changed(worker, status)])?;
            Ok(())
        })
        .await
    }

    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        self.write("deregister_worker", move |conn| {
            let current: Option<SessionRow> =
                sql_query("SELECT status, session_epoch, 0 AS expired FROM helix_workers WHERE id = ?")
                    .bind::<Binary, _>(worker.as_bytes().as_slice())
                    .get_result(conn)
                    .optional()?;
            let Some(current) = current else {
                return Ok(());
            };
            if u64::try_from(current.session_epoch).ok() != Some(session_epoch.0) {
                return Err(Fail(StoreError::Fenced(format!(
                    "worker {worker} has a newer session than {session_epoch}"
                ))));
            }
            if current.status == WorkerStatus::Left.as_str() {
                return Ok(());
            }
            sql_query(concat!(
                "UPDATE helix_workers SET status = 'LEFT', lease_expires_at = min(lease_expires_at, ",
                now!(),
                ") WHERE id = ?"
            ))
            .bind::<Binary, _>(worker.as_bytes().as_slice())
            .execute(conn)?;
            sql_query("DELETE FROM helix_subscriptions WHERE worker_id = ?")
                .bind::<Binary, _>(worker.as_bytes().as_slice())
                .execute(conn)?;
            record(conn, &[NewEvent::worker_left(worker)])?;
            Ok(())
        })
        .await
    }

    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        self.read("get_worker", move |conn| {
            let id = worker.as_bytes().to_vec();
            let row: Option<WorkerRow> =
                sql_query(format!("SELECT {WORKER_COLUMNS} FROM helix_workers WHERE id = ?"))
                    .bind::<Binary, _>(id.clone())
                    .get_result(conn)
                    .optional()?;
            let row = row.ok_or_else(|| StoreError::NotFound(format!("worker {worker}")))?;
            let mut subs = subscriptions_where(conn, "w.id = ?", Some(&id))?;
            Ok(row.into_record(subs.remove(&id).unwrap_or_default())?)
        })
        .await
    }

    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        self.read("list_workers", move |conn| {
            let condition = match filter {
                WorkerFilter::All => "1 = 1".to_owned(),
                WorkerFilter::Live => {
                    format!("w.status IN {IN_SESSION} AND w.lease_expires_at >= {}", now!())
                }
                WorkerFilter::Expired => {
                    format!("w.status IN {IN_SESSION} AND w.lease_expires_at < {}", now!())
                }
            };
            let rows: Vec<WorkerRow> = sql_query(format!(
                "SELECT {WORKER_COLUMNS} FROM helix_workers w WHERE {condition} ORDER BY w.id"
            ))
            .load(conn)?;
            let mut subs = subscriptions_where(conn, &condition, None)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mine = subs.remove(&row.id).unwrap_or_default();
                out.push(row.into_record(mine)?);
            }
            Ok(out)
        })
        .await
    }

    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        let fence = fence.clone();
        let ids: Vec<Vec<u8>> =
            workers.iter().collect::<BTreeSet<_>>().into_iter().map(|w| w.as_bytes().to_vec()).collect();
        self.write("mark_workers_dead", move |conn| {
            check_fence(conn, &fence)?;
            let mut marked = Vec::new();
            for chunk in ids.chunks(MAX_BINDS - 1) {
                let condition = format!(
                    "id IN ({}) AND status IN {IN_SESSION} AND lease_expires_at < {}",
                    placeholders(chunk.len()),
                    now!()
                );
                let query = sql_query(format!(
                    "UPDATE helix_workers SET status = 'DEAD' WHERE {condition} RETURNING id"
                ))
                .into_boxed::<Sqlite>();
                let rows: Vec<WorkerIdRow> = bind_ids(query, chunk).load(conn)?;
                for row in rows {
                    marked.push(worker_id(&row.id)?);
                }
            }
            marked.sort();
            let events: Vec<NewEvent> =
                marked.iter().map(|id| NewEvent::worker_dead(*id, fence.term)).collect();
            record(conn, &events)?;
            Ok(marked)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        validate_lease_duration("coordinator lease", lease)?;
        let cluster = cluster.clone();
        self.write("acquire_lease", move |conn| {
            let row: Option<LeaseRow> = sql_query(concat!(
                "SELECT cluster, holder, term, expires_at, expires_at <= ",
                now!(),
                " AS expired FROM helix_coordinator WHERE cluster = ?"
            ))
            .bind::<Text, _>(cluster.as_str())
            .get_result(conn)
            .optional()?;
            let current = match &row {
                Some(r) => {
                    Some((opt_worker_id(r.holder.as_deref())?, Term(to_u64(r.term, "term")?), r.expired))
                }
                None => None,
            };
            let previous = current.and_then(|c| c.0);
            let term = match rules::decide_acquire(current, holder) {
                LeaseDecision::Refuse => return Ok(None),
                LeaseDecision::Take { term } => term,
            };
            sql_query(concat!(
                "INSERT INTO helix_coordinator (cluster, holder, term, expires_at) VALUES (?, ?, ?, ",
                now!(modified),
                ") ON CONFLICT (cluster) DO UPDATE SET holder = excluded.holder, term = excluded.term, \
                 expires_at = excluded.expires_at"
            ))
            .bind::<Text, _>(cluster.as_str())
            .bind::<Binary, _>(holder.as_bytes().as_slice())
            .bind::<BigInt, _>(to_i64(term.0, "term")?)
            .bind::<Text, _>(modifier('+', lease))
            .execute(conn)?;
            record(conn, &[NewEvent::leader_elected(holder, term, &cluster, previous)])?;
            Ok(Some(term))
        })
        .await
    }

    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        validate_lease_duration("coordinator lease", lease)?;
        let fence = fence.clone();
        self.single("renew_lease", move |conn| {
            // One conditional statement: the fence check and the write are atomic.
            let renewed = sql_query(concat!(
                "UPDATE helix_coordinator SET expires_at = ",
                now!(modified),
                " WHERE cluster = ? AND holder = ? AND term = ? AND expires_at > ",
                now!()
            ))
            .bind::<Text, _>(modifier('+', lease))
            .bind::<Text, _>(fence.cluster.as_str())
            .bind::<Binary, _>(fence.holder.as_bytes().as_slice())
            .bind::<BigInt, _>(to_i64(fence.term.0, "term")?)
            .execute(conn)?;
            if renewed == 0 {
                return Err(Fail(StoreError::Fenced(format!(
                    "coordinator term {} of cluster {} is no longer current",
                    fence.term, fence.cluster
                ))));
            }
            Ok(())
        })
        .await
    }

    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        let fence = fence.clone();
        self.write("release_lease", move |conn| {
            let Ok(term) = i64::try_from(fence.term.0) else {
                return Ok(());
            };
            let released = sql_query(concat!(
                "UPDATE helix_coordinator SET expires_at = ",
                now!(),
                " WHERE cluster = ? AND holder = ? AND term = ? AND expires_at > ",
                now!()
            ))
            .bind::<Text, _>(fence.cluster.as_str())
            .bind::<Binary, _>(fence.holder.as_bytes().as_slice())
            .bind::<BigInt, _>(term)
            .execute(conn)?;
            if released > 0 {
                record(conn, &[NewEvent::leader_released(fence.holder, fence.term, &fence.cluster)])?;
            }
            Ok(())
        })
        .await
    }

    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        let cluster = cluster.clone();
        self.single("get_lease", move |conn| {
            let row: Option<LeaseRow> = sql_query(concat!(
                "SELECT cluster, holder, term, expires_at, expires_at <= ",
                now!(),
                " AS expired FROM helix_coordinator WHERE cluster = ?"
            ))
            .bind::<Text, _>(cluster.as_str())
            .get_result(conn)
            .optional()?;
            let Some(row) = row else {
                return Ok(None);
            };
            Ok(Some(LeaseRecord {
                cluster: stored_name(ClusterName::new(row.cluster))?,
                holder: opt_worker_id(row.holder.as_deref())?,
                term: Term(to_u64(row.term, "term")?),
                expires_at: instant(row.expires_at),
                expired: row.expired,
            }))
        })
        .await
    }

    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        self.read("assignments", move |conn| {
            let not_found = || StoreError::NotFound(format!("queue {queue}"));
            let key = i64::try_from(queue.0).map_err(|_| not_found())?;
            let version: Option<AssignmentVersionRow> =
                sql_query("SELECT assignment_version FROM helix_queues WHERE id = ?")
                    .bind::<BigInt, _>(key)
                    .get_result(conn)
                    .optional()?;
            let version = version.ok_or_else(not_found)?;
            let rows: Vec<AssignmentRow> = sql_query(format!(
                "SELECT {ASSIGNMENT_COLUMNS} FROM helix_assignments WHERE queue_id = ? ORDER BY partition_id"
            ))
            .bind::<BigInt, _>(key)
            .load(conn)?;
            Ok(QueueAssignments {
                queue_id: queue,
                assignment_version: to_u64(version.assignment_version, "assignment version")?,
                rows: rows.into_iter().map(AssignmentRow::into_record).collect::<Result<_, _>>()?,
            })
        })
        .await
    }

    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        self.single("assignments_of", move |conn| {
            let rows: Vec<AssignmentRow> = sql_query(format!(
                "SELECT {ASSIGNMENT_COLUMNS} FROM helix_assignments WHERE owner = ? ORDER BY queue_id, partition_id"
            ))
            .bind::<Binary, _>(worker.as_bytes().as_slice())
            .load(conn)?;
            Ok(rows.into_iter().map(AssignmentRow::into_record).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        let fence = fence.clone();
        let changes = changes.to_vec();
        self.write("apply_plan", move |conn| {
            check_fence(conn, &fence)?;
            let not_found = || StoreError::NotFound(format!("queue {queue}"));
            let key = i64::try_from(queue.0).map_err(|_| not_found())?;
            let q: Option<VersionOfQueue> =
                sql_query("SELECT partition_count, assignment_version FROM helix_queues WHERE id = ?")
                    .bind::<BigInt, _>(key)
                    .get_result(conn)
                    .optional()?;
            let q = q.ok_or_else(not_found)?;
            let count = stored_name(PartitionCount::new(to_u64(q.partition_count, "partition count")?))?;
            rules::validate_plan(count, &changes)?;
            let version = to_u64(q.assignment_version, "assignment version")?;

            // The rows the plan touches, in chunked IN lists.
            let partitions: Vec<i64> = changes.iter().map(|c| i64::from(c.partition().0)).collect();
            let mut rows = Vec::with_capacity(changes.len());
            for chunk in partitions.chunks(MAX_BINDS - 1) {
                let mut query = sql_query(format!(
                    "SELECT partition_id, owner, epoch, state, target FROM helix_assignments \
                     WHERE queue_id = ? AND partition_id IN ({})",
                    placeholders(chunk.len())
                ))
                .into_boxed::<Sqlite>()
                .bind::<BigInt, _>(key);
                for p in chunk {
                    query = query.bind::<BigInt, _>(*p);
                }
                let loaded: Vec<PlanRow> = query.load(conn)?;
                rows.extend(loaded);
            }

            // Which of their owners and of the grants' workers are live, in one query per chunk.
            // (Registration, the only other writer of liveness, waits for this immediate
            // transaction: SQLite has one writer at a time.)
            let grantees = changes.iter().filter_map(|c| match c {
                PlanChange::Grant { to, .. } => Some(to.as_bytes().to_vec()),
                _ => None,
            });
            let owners: Vec<Vec<u8>> = rows
                .iter()
                .filter_map(|r| r.owner.clone())
                .chain(grantees)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut live = HashSet::new();
            for chunk in owners.chunks(MAX_BINDS - 1) {
                let query = sql_query(format!(
                    "SELECT id FROM helix_workers WHERE id IN ({}) AND status IN {IN_SESSION} \
                     AND lease_expires_at >= {}",
                    placeholders(chunk.len()),
                    now!()
                ))
                .into_boxed::<Sqlite>();
                let alive: Vec<WorkerIdRow> = bind_ids(query, chunk).load(conn)?;
                live.extend(alive.into_iter().map(|r| r.id));
            }

            let mut states = Vec::with_capacity(rows.len());
            for row in &rows {
                states.push(RowState {
                    partition: PartitionId(to_u32(row.partition_id, "partition")?),
                    owner: opt_worker_id(row.owner.as_deref())?,
                    epoch: Epoch(to_u64(row.epoch, "epoch")?),
                    state: AssignmentState::parse(&row.state)?,
                    target: opt_worker_id(row.target.as_deref())?,
                    owner_live: row.owner.as_ref().is_some_and(|o| live.contains(o)),
                });
            }
            let eval = rules::evaluate_plan(queue, fence.term, &states, &changes, |w| {
                live.contains(w.as_bytes().as_slice())
            })?;
            if eval.writes.is_empty() {
                return Ok(PlanOutcome { applied: 0, skipped: eval.skipped, assignment_version: version });
            }

            // The writes, many rows per statement. Every SET expression sees the old row, so a
            // revocation that stays a revocation keeps its start (`rules::keeps_updated_at`).
            let term = to_i64(fence.term.0, "term")?;
            for chunk in eval.writes.chunks((MAX_BINDS - 2) / 5) {
                let sql = format!(
                    "UPDATE helix_assignments SET owner = v.column2, epoch = v.column3, state = v.column4, \
                     target = v.column5, coordinator_term = ?, \
                     updated_at = CASE WHEN helix_assignments.state = 'REVOKING' AND v.column4 = 'REVOKING' \
                     THEN helix_assignments.updated_at ELSE {} END \
                     FROM (VALUES {}) AS v WHERE helix_assignments.queue_id = ? \
                     AND helix_assignments.partition_id = v.column1",
                    now!(),
                    vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
                );
                let mut query = sql_query(sql).into_boxed::<Sqlite>().bind::<BigInt, _>(term);
                for w in chunk {
                    query = query
                        .bind::<BigInt, _>(i64::from(w.partition.0))
                        .bind::<Nullable<Binary>, _>(opt_bytes(w.owner))
                        .bind::<BigInt, _>(to_i64(w.epoch.0, "epoch")?)
                        .bind::<Text, _>(w.state.as_str())
                        .bind::<Nullable<Binary>, _>(opt_bytes(w.target));
                }
                let written = query.bind::<BigInt, _>(key).execute(conn)?;
                if written != chunk.len() {
                    return Err(Fail(StoreError::Database(format!(
                        "plan for queue {queue} wrote {written} of {} assignment rows",
                        chunk.len()
                    ))));
                }
            }
            let assignment_version = bump_version(conn, key)?;
            record(conn, &eval.events)?;
            Ok(PlanOutcome { applied: eval.writes.len(), skipped: eval.skipped, assignment_version })
        })
        .await
    }

    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.write("handoff", move |conn| {
            owner_write(conn, queue, partition, worker, epoch, OwnerWrite::HandOff)
        })
        .await
    }

    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        self.write("release_partition", move |conn| {
            owner_write(conn, queue, partition, worker, epoch, OwnerWrite::Release)
        })
        .await
    }

    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch> {
        let detail = detail.clone();
        self.write("fail_partition", move |conn| {
            owner_write(conn, queue, partition, worker, epoch, OwnerWrite::Fail(&detail))
        })
        .await
    }

    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        self.write("reset_partition", move |conn| reset_partition(conn, queue, partition)).await
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        let event = event.clone();
        self.write("append_event", move |conn| {
            record(conn, std::slice::from_ref(&event))?
                .ok_or_else(|| Fail(StoreError::Database("appending an event returned no id".to_owned())))
        })
        .await
    }

    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.single("events_since", move |conn| {
            let rows: Vec<EventRow> = sql_query(format!(
                "SELECT {EVENT_COLUMNS} FROM helix_events WHERE id > ? ORDER BY id LIMIT ?"
            ))
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(i64::from(limit.min(MAX_EVENTS_PER_READ)))
            .load(conn)?;
            Ok(rows.into_iter().map(EventRow::into_event).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        // Beyond the range of SQLite's dates the cutoff is NULL and nothing is older.
        let cutoff = modifier('-', older_than.min(Duration::from_secs(400 * 366 * 86_400)));
        self.single("prune_events", move |conn| {
            let pruned = sql_query(concat!("DELETE FROM helix_events WHERE at < ", now!(modified)))
                .bind::<Text, _>(cutoff)
                .execute(conn)?;
            Ok(pruned as u64)
        })
        .await
    }

    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        let mut out = self.enqueue_tasks(queue, std::slice::from_ref(task)).await?;
        out.pop().ok_or_else(|| StoreError::Database("an enqueue of one task answered nothing".to_owned()))
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        let tasks = tasks.to_vec();
        self.write("enqueue_tasks", move |conn| tasks::enqueue(conn, queue, &tasks)).await
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        crate::rules::tasks::validate_batch(limit as usize, "a claim")?;
        let fence = *fence;
        self.write("claim_tasks", move |conn| tasks::claim(conn, &fence, limit)).await
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        crate::rules::tasks::validate_batch(ids.len(), "a task write")?;
        let (fence, ids) = (*fence, ids.to_vec());
        self.write("complete_tasks", move |conn| {
            tasks::owner_write(conn, &fence, &ids, &|h, _| crate::rules::tasks::after_complete(h, None))
        })
        .await
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        crate::rules::tasks::validate_batch(failures.len(), "a task write")?;
        for f in failures {
            if let Some(retry_in) = f.retry_in {
                crate::rules::tasks::validate_delay(retry_in, "retry delay")?;
            }
        }
        let (fence, failures) = (*fence, failures.to_vec());
        self.write("fail_tasks", move |conn| {
            let ids: Vec<TaskId> = failures.iter().map(|f| f.id).collect();
            tasks::owner_write(conn, &fence, &ids, &|h, now| match failures.iter().find(|f| f.id == h.id) {
                Some(f) => crate::rules::tasks::after_failure(h, now, f),
                None => crate::rules::tasks::after_complete(h, None),
            })
        })
        .await
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        crate::rules::tasks::validate_batch(retries.len(), "a task write")?;
        for r in retries {
            crate::rules::tasks::validate_delay(r.delay, "retry delay")?;
        }
        let (fence, retries) = (*fence, retries.to_vec());
        self.write("retry_tasks_later", move |conn| {
            let ids: Vec<TaskId> = retries.iter().map(|r| r.id).collect();
            tasks::owner_write(conn, &fence, &ids, &|h, now| {
                let delay = retries.iter().find(|r| r.id == h.id).map_or(Duration::ZERO, |r| r.delay);
                crate::rules::tasks::after_retry_later(h, now, delay)
            })
        })
        .await
    }
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        crate::rules::tasks::validate_outcomes(batches)?;
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let batches = std::sync::Arc::new(batches.to_vec());
        self.write("record_task_outcomes", move |conn| tasks::record_outcomes(conn, &batches)).await
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        crate::rules::tasks::validate_batch(ids.len(), "a task write")?;
        crate::rules::tasks::validate_extension(by)?;
        let (fence, ids) = (*fence, ids.to_vec());
        self.write("extend_tasks", move |conn| {
            tasks::owner_write(conn, &fence, &ids, &|h, now| crate::rules::tasks::after_extend(h, now, by))
        })
        .await
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        self.write("cancel_task", move |conn| tasks::cancel(conn, id)).await
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        let fence = *fence;
        self.write("recover_partition_tasks", move |conn| tasks::recover(conn, &fence)).await
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<BTreeMap<PartitionId, DateTime<Utc>>> {
        let partitions = partitions.to_vec();
        self.read("next_due", move |conn| tasks::next_due(conn, queue, &partitions)).await
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        self.single("task_counts", move |conn| tasks::counts(conn, queue)).await
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.single("get_task", move |conn| tasks::get(conn, id)).await
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        crate::rules::tasks::validate_batch(limit as usize, "a page")?;
        self.single("list_tasks", move |conn| tasks::list(conn, queue, state, after, limit)).await
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.write("retry_dead_task", move |conn| tasks::retry_dead(conn, id)).await
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        // Beyond the range of SQLite's dates the cutoff is NULL and nothing is older.
        let cutoff = modifier('-', older_than.min(Duration::from_secs(400 * 366 * 86_400)));
        self.write("prune_tasks", move |conn| {
            let pruned = tasks::prune(conn, cutoff.clone(), limit)?;
            schedules::prune_runs(conn, cutoff, limit)?;
            Ok(pruned)
        })
        .await
    }

    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord> {
        let schedule = schedule.clone();
        self.write("create_schedule", move |conn| schedules::create(conn, queue, &schedule)).await
    }
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        let name = name.to_owned();
        self.single("get_schedule", move |conn| schedules::get(conn, queue, &name)).await
    }
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        self.single("list_schedules", move |conn| schedules::list(conn, queue)).await
    }
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        let name = name.to_owned();
        self.write("set_schedule_paused", move |conn| schedules::set_paused(conn, queue, &name, paused)).await
    }
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.write("delete_schedule", move |conn| schedules::delete(conn, queue, &name)).await
    }
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        let horizon = schedules::modifier('+', horizon);
        self.single("due_schedules", move |conn| schedules::due(conn, horizon, limit)).await
    }
    async fn fire_schedules(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>> {
        rules::schedules::validate_fires(fires)?;
        if fires.is_empty() {
            return Ok(Vec::new());
        }
        let (fence, fires) = (fence.clone(), std::sync::Arc::new(fires.to_vec()));
        self.write("fire_schedules", move |conn| schedules::fire(conn, &fence, &fires)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lease_lengths_become_sqlite_modifiers() {
        assert_eq!(modifier('+', Duration::from_secs(3)), "+3.000 seconds");
        assert_eq!(modifier('+', Duration::from_millis(1_500)), "+1.500 seconds");
        assert_eq!(modifier('-', Duration::from_micros(2_000_999)), "-2.000 seconds");
    }

    #[tokio::test]
    async fn instants_are_fixed_format_text_that_round_trips() {
        let store = SqliteStore::open(None, &ConnectOptions::default()).await.unwrap();
        let (text, later, parsed) = store
            .pool
            .run(|conn| {
                #[derive(QueryableByName)]
                struct Pair {
                    #[diesel(sql_type = Text)]
                    text: String,
                    #[diesel(sql_type = Text)]
                    later: String,
                }
                let pair: Pair =
                    sql_query(concat!("SELECT ", now!(), " AS text, ", now!(modified), " AS later"))
                        .bind::<Text, _>(modifier('+', Duration::from_millis(2_500)))
                        .get_result(conn)?;
                let parsed: NowRow =
                    sql_query("SELECT ? AS now").bind::<Text, _>(pair.text.as_str()).get_result(conn)?;
                Ok((pair.text, pair.later, parsed.now))
            })
            .await
            .unwrap();
        // 'YYYY-MM-DD HH:MM:SS.SSS': fixed width, so text order is time order.
        assert_eq!(text.len(), 23, "{text}");
        assert_eq!(&text[10..11], " ");
        assert_eq!(&text[19..20], ".");
        assert!(later > text);
        assert_eq!(parsed.format("%Y-%m-%d %H:%M:%S%.3f").to_string(), text);
        let later = NaiveDateTime::parse_from_str(&later, "%Y-%m-%d %H:%M:%S%.3f").unwrap();
        assert_eq!(later - parsed, chrono::Duration::milliseconds(2_500));
        let skew = (instant(parsed) - Utc::now()).num_seconds().abs();
        assert!(skew < 5, "the database clock is {skew} s away from the system clock");
    }
}

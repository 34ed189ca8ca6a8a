//! The SQL of every store operation, each on one connection (inside the transaction that the
//! caller opened where the operation needs one). The decisions come from `rules.rs`, so this
//! store decides exactly like the others.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::dsl::sql;
use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Datetime, Integer, Nullable, Text};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueId, QueueName, SessionEpoch, Term,
    WorkerId,
};

use super::schema::{
    helix_assignments, helix_domains, helix_events, helix_queues, helix_subscriptions, helix_workers,
};
use super::{Failure, MAX_BINDS};
use crate::error::StoreError;
use crate::model::*;
use crate::rules::{self, LeaseDecision, RowState};

type Conn = AsyncMysqlConnection;
type Res<T> = Result<T, Failure>;

/// The session statuses of a worker that holds a lease.
const IN_SESSION: [&str; 2] = ["ACTIVE", "DRAINING"];

// ---- conversions ------------------------------------------------------------------------

/// `NOW(6)` for the query builder.
fn now6() -> diesel::expression::SqlLiteral<Datetime> {
    sql::<Datetime>("NOW(6)")
}

fn utc(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is too large")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Database(format!("stored {what} {value} is negative")))
}

fn partition_i32(p: PartitionId) -> Result<i32, StoreError> {
    i32::try_from(p.0).map_err(|_| StoreError::Invalid(format!("partition {p} is out of range")))
}

fn partition_of(value: i32) -> Result<PartitionId, StoreError> {
    u32::try_from(value)
        .map(PartitionId)
        .map_err(|_| StoreError::Database(format!("stored partition {value} is negative")))
}

fn worker_of(bytes: &[u8]) -> Result<WorkerId, StoreError> {
    WorkerId::from_slice(bytes)
        .ok_or_else(|| StoreError::Database(format!("stored worker id of {} bytes", bytes.len())))
}

fn bytes(worker: WorkerId) -> Vec<u8> {
    worker.as_bytes().to_vec()
}

/// A lease duration in microseconds; durations are validated to at most a day before.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn json_of(text: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Database(format!("stored {what} is not json: {e}")))
}

/// `(?, ?), (?, ?), …`: `rows` copies of `row`, comma separated.
fn value_rows(sql: &mut String, rows: usize, row: &str) {
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
}

/// `?, ?, …` for an `IN` list.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn fenced(fence: &CoordinatorFence) -> Failure {
    Failure::Store(StoreError::Fenced(format!(
        "coordinator term {} of cluster {} is no longer current",
        fence.term, fence.cluster
    )))
}

// ---- rows -------------------------------------------------------------------------------

#[derive(Queryable, Selectable)]
#[diesel(table_name = helix_domains, check_for_backend(Mysql))]
struct DomainRow {
    name: String,
    created_at: NaiveDateTime,
}

impl DomainRow {
    fn record(self) -> Result<DomainRecord, StoreError> {
        Ok(DomainRecord {
            name: DomainName::new(self.name).map_err(|e| StoreError::Database(e.to_string()))?,
            created_at: utc(self.created_at),
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = helix_queues, check_for_backend(Mysql))]
struct QueueRow {
    id: i64,
    domain: String,
    name: String,
    partition_count: i32,
    allocator: String,
    settings: String,
    assignment_version: i64,
    created_at: NaiveDateTime,
}

impl QueueRow {
    fn record(self) -> Result<QueueRecord, StoreError> {
        let bad = |e: helix_core::NameError| StoreError::Database(e.to_string());
        Ok(QueueRecord {
            id: QueueId(to_u64(self.id, "queue id")?),
            domain: DomainName::new(self.domain).map_err(bad)?,
            name: QueueName::new(self.name).map_err(bad)?,
            partition_count: PartitionCount::new(u64::try_from(self.partition_count).unwrap_or(0))
                .map_err(bad)?,
            allocator: self.allocator,
            settings: json_of(&self.settings, "queue settings")?,
            assignment_version: to_u64(self.assignment_version, "assignment version")?,
            created_at: utc(self.created_at),
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = helix_workers, check_for_backend(Mysql))]
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
    fn record(self, subscriptions: Vec<Subscription>) -> Result<WorkerRecord, StoreError> {
        let labels: BTreeMap<String, String> = serde_json::from_str(&self.labels)
            .map_err(|e| StoreError::Database(format!("stored worker labels are not a json object: {e}")))?;
        Ok(WorkerRecord {
            id: worker_of(&self.id)?,
            host: self.host,
            pid: u32::try_from(self.pid)
                .map_err(|_| StoreError::Database(format!("stored pid {}", self.pid)))?,
            labels,
            status: WorkerStatus::parse(&self.status)?,
            registered_at: utc(self.registered_at),
            lease_expires_at: utc(self.lease_expires_at),
            session_epoch: SessionEpoch(to_u64(self.session_epoch, "session epoch")?),
            subscriptions,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = helix_subscriptions, check_for_backend(Mysql))]
struct SubscriptionRow {
    worker_id: Vec<u8>,
    queue_id: i64,
    capacity: i32,
}

impl SubscriptionRow {
    fn subscription(&self) -> Result<Subscription, StoreError> {
        Ok(Subscription {
            queue_id: QueueId(to_u64(self.queue_id, "queue id")?),
            capacity: u32::try_from(self.capacity)
                .map_err(|_| StoreError::Database(format!("stored capacity {}", self.capacity)))?,
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = helix_assignments, check_for_backend(Mysql))]
struct AssignmentRow {
    queue_id: i64,
    partition_id: i32,
    owner: Option<Vec<u8>>,
    epoch: i64,
    state: String,
    target: Option<Vec<u8>>,
    coordinator_term: i64,
    updated_at: NaiveDateTime,
}

impl AssignmentRow {
    fn record(self) -> Result<AssignmentRecord, StoreError> {
        Ok(AssignmentRecord {
            queue_id: QueueId(to_u64(self.queue_id, "queue id")?),
            partition: partition_of(self.partition_id)?,
            owner: self.owner.as_deref().map(worker_of).transpose()?,
            epoch: Epoch(to_u64(self.epoch, "epoch")?),
            state: AssignmentState::parse(&self.state)?,
            target: self.target.as_deref().map(worker_of).transpose()?,
            coordinator_term: Term(to_u64(self.coordinator_term, "term")?),
            updated_at: utc(self.updated_at),
        })
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = helix_events, check_for_backend(Mysql))]
struct EventRow {
    id: i64,
    at: NaiveDateTime,
    kind: String,
    queue_id: Option<i64>,
    partition_id: Option<i32>,
    worker: Option<Vec<u8>>,
    term: Option<i64>,
    epoch: Option<i64>,
    detail: String,
}

impl EventRow {
    fn record(self) -> Result<Event, StoreError> {
        Ok(Event {
            id: to_u64(self.id, "event id")?,
            at: utc(self.at),
            kind: EventKind::parse(&self.kind)?,
            queue_id: self.queue_id.map(|q| to_u64(q, "queue id").map(QueueId)).transpose()?,
            partition: self.partition_id.map(partition_of).transpose()?,
            worker: self.worker.as_deref().map(worker_of).transpose()?,
            term: self.term.map(|t| to_u64(t, "term").map(Term)).transpose()?,
            epoch: self.epoch.map(|e| to_u64(e, "epoch").map(Epoch)).transpose()?,
            detail: json_of(&self.detail, "event detail")?,
        })
    }
}

#[derive(QueryableByName)]
struct NowRow {
    #[diesel(sql_type = Datetime)]
    now: NaiveDateTime,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct FlagRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    flag: Option<i64>,
}

/// A coordinator row with a flag computed on the database clock.
#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Text)]
    cluster: String,
    #[diesel(sql_type = Nullable<Binary>)]
    holder: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    term: i64,
    #[diesel(sql_type = Datetime)]
    expires_at: NaiveDateTime,
    #[diesel(sql_type = BigInt)]
    flag: i64,
}

#[derive(QueryableByName)]
struct LiveRow {
    #[diesel(sql_type = Binary)]
    id: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    flag: i64,
}

#[derive(QueryableByName)]
struct PreviousSession {
    #[diesel(sql_type = Nullable<BigInt>)]
    live_us: Option<i64>,
}

#[derive(QueryableByName)]
struct AdoptedRow {
    #[diesel(sql_type = BigInt)]
    queue_id: i64,
    #[diesel(sql_type = Integer)]
    partition_id: i32,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(QueryableByName)]
struct HeartbeatRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    session_epoch: i64,
    #[diesel(sql_type = BigInt)]
    expired: i64,
}

// ---- shared pieces ----------------------------------------------------------------------

/// Makes the next transaction of this session REPEATABLE READ (the session stays READ
/// COMMITTED): its plain reads then share one snapshot and take no locks.
pub(super) async fn snapshot_next_transaction(conn: &mut Conn) -> Res<()> {
    diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(conn).await?;
    Ok(())
}

/// Lifts MariaDB's statement bound on this session (migrations); nothing on MySQL, which has
/// none.
pub(super) async fn unbounded_statements(conn: &mut Conn) -> Res<()> {
    let row: FlagRow =
        diesel::sql_query("SELECT CAST(LOCATE('mariadb', LOWER(VERSION())) > 0 AS SIGNED) AS flag")
            .get_result(conn)
            .await?;
    if row.flag == Some(1) {
        diesel::sql_query("SET SESSION max_statement_time = 0").execute(conn).await?;
    }
    Ok(())
}

/// Takes the migration lock of this database, waiting at most `wait_secs`.
pub(super) async fn named_lock(conn: &mut Conn, wait_secs: i64) -> Res<bool> {
    let row: FlagRow = diesel::sql_query("SELECT GET_LOCK(CONCAT('helix_migrate.', DATABASE()), ?) AS flag")
        .bind::<BigInt, _>(wait_secs)
        .get_result(conn)
        .await?;
    Ok(row.flag == Some(1))
}

/// Releases the migration lock.
pub(super) async fn named_unlock(conn: &mut Conn) -> Res<()> {
    diesel::sql_query("SELECT RELEASE_LOCK(CONCAT('helix_migrate.', DATABASE())) AS flag")
        .get_result::<FlagRow>(conn)
        .await?;
    Ok(())
}

/// Appends events with multi-row inserts; `at` is the database clock.
async fn insert_events(conn: &mut Conn, events: &[NewEvent]) -> Res<()> {
    const BINDS_PER_ROW: usize = 7;
    for chunk in events.chunks(MAX_BINDS / BINDS_PER_ROW) {
        let mut text = String::from(
            "INSERT INTO helix_events (at, kind, queue_id, partition_id, worker, term, epoch, detail) VALUES ",
        );
        value_rows(&mut text, chunk.len(), "(NOW(6), ?, ?, ?, ?, ?, ?, ?)");
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>();
        for event in chunk {
            query = query
                .bind::<Text, _>(event.kind.as_str())
                .bind::<Nullable<BigInt>, _>(event.queue_id.map(|q| to_i64(q.0, "queue id")).transpose()?)
                .bind::<Nullable<Integer>, _>(event.partition.map(partition_i32).transpose()?)
                .bind::<Nullable<Binary>, _>(event.worker.map(bytes))
                .bind::<Nullable<BigInt>, _>(event.term.map(|t| to_i64(t.0, "term")).transpose()?)
                .bind::<Nullable<BigInt>, _>(event.epoch.map(|e| to_i64(e.0, "epoch")).transpose()?)
                .bind::<Text, _>(bound_detail(&event.detail).to_string());
        }
        query.execute(conn).await?;
    }
    Ok(())
}

async fn last_insert_id(conn: &mut Conn) -> Res<i64> {
    let row: IdRow =
        diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS id").get_result(conn).await?;
    Ok(row.id)
}

/// Locks the coordinator row and checks the fence: `holder = me AND term = my_term AND
/// expires_at > NOW(6)`. Every coordinator write starts with this, in its transaction.
pub(super) async fn check_fence(conn: &mut Conn, fence: &CoordinatorFence) -> Res<()> {
    let row: Option<LeaseRow> = diesel::sql_query(
        "SELECT cluster, holder, term, expires_at, CAST(expires_at > NOW(6) AS SIGNED) AS flag \
         FROM helix_coordinator WHERE cluster = ? FOR UPDATE",
    )
    .bind::<Text, _>(fence.cluster.as_str())
    .get_result(conn)
    .await
    .optional()?;
    let holds = row.is_some_and(|r| {
        r.holder.as_deref() == Some(fence.holder.as_bytes().as_slice())
            && u64::try_from(r.term).ok() == Some(fence.term.0)
            && r.flag != 0
    });
    if holds { Ok(()) } else { Err(fenced(fence)) }
}

async fn subscriptions_of(conn: &mut Conn, workers: &[Vec<u8>]) -> Res<BTreeMap<Vec<u8>, Vec<Subscription>>> {
    let mut out: BTreeMap<Vec<u8>, Vec<Subscription>> = BTreeMap::new();
    for chunk in workers.chunks(MAX_BINDS) {
        let rows: Vec<SubscriptionRow> = helix_subscriptions::table
            .filter(helix_subscriptions::worker_id.eq_any(chunk))
            .select(SubscriptionRow::as_select())
            .order((helix_subscriptions::worker_id, helix_subscriptions::queue_id))
            .load(conn)
            .await?;
        for row in rows {
            let sub = row.subscription()?;
            out.entry(row.worker_id).or_default().push(sub);
        }
    }
    Ok(out)
}

// ---- operations -------------------------------------------------------------------------

pub(super) async fn now(conn: &mut Conn) -> Res<DateTime<Utc>> {
    let row: NowRow = diesel::sql_query("SELECT NOW(6) AS now").get_result(conn).await?;
    Ok(utc(row.now))
}

pub(super) async fn create_domain(conn: &mut Conn, name: &DomainName) -> Res<DomainRecord> {
    let inserted = diesel::insert_into(helix_domains::table)
        .values((helix_domains::name.eq(name.as_str()), helix_domains::created_at.eq(now6())))
        .execute(conn)
        .await;
    match inserted {
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            return Err(StoreError::Conflict(format!("domain {name} already exists")).into());
        }
        other => other?,
    };
    insert_events(conn, &[NewEvent::domain_created(name)]).await?;
    get_domain(conn, name).await
}

pub(super) async fn get_domain(conn: &mut Conn, name: &DomainName) -> Res<DomainRecord> {
    let row: Option<DomainRow> = helix_domains::table
        .find(name.as_str())
        .select(DomainRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("domain {name}")))?;
    Ok(row.record()?)
}

pub(super) async fn list_domains(conn: &mut Conn) -> Res<Vec<DomainRecord>> {
    let rows: Vec<DomainRow> =
        helix_domains::table.select(DomainRow::as_select()).order(helix_domains::name).load(conn).await?;
    Ok(rows.into_iter().map(DomainRow::record).collect::<Result<_, _>>()?)
}

pub(super) async fn delete_domain(conn: &mut Conn, name: &DomainName) -> Res<()> {
    let found: Option<String> = helix_domains::table
        .find(name.as_str())
        .select(helix_domains::name)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    if found.is_none() {
        return Err(StoreError::NotFound(format!("domain {name}")).into());
    }
    let queues: i64 =
        helix_queues::table.filter(helix_queues::domain.eq(name.as_str())).count().get_result(conn).await?;
    if queues > 0 {
        return Err(StoreError::Conflict(format!("domain {name} still has queues")).into());
    }
    diesel::delete(helix_domains::table.find(name.as_str())).execute(conn).await?;
    insert_events(conn, &[NewEvent::domain_deleted(name)]).await
}

pub(super) async fn create_queue(conn: &mut Conn, spec: &QueueSpec) -> Res<QueueRecord> {
    let domain: Option<FlagRow> =
        diesel::sql_query("SELECT 1 AS flag FROM helix_domains WHERE name = ? LOCK IN SHARE MODE")
            .bind::<Text, _>(spec.domain.as_str())
            .get_result(conn)
            .await
            .optional()?;
    if domain.is_none() {
        return Err(StoreError::NotFound(format!("domain {}", spec.domain)).into());
    }
    let count = i32::try_from(spec.partition_count.get())
        .map_err(|_| StoreError::Invalid(format!("partition count {} is too large", spec.partition_count)))?;
    let inserted = diesel::insert_into(helix_queues::table)
        .values((
            helix_queues::domain.eq(spec.domain.as_str()),
            helix_queues::name.eq(spec.name.as_str()),
            helix_queues::partition_count.eq(count),
            helix_queues::allocator.eq(spec.allocator.as_str()),
            helix_queues::settings.eq(spec.settings.to_string()),
            helix_queues::assignment_version.eq(0i64),
            helix_queues::created_at.eq(now6()),
        ))
        .execute(conn)
        .await;
    match inserted {
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            return Err(
                StoreError::Conflict(format!("queue {}/{} already exists", spec.domain, spec.name)).into()
            );
        }
        other => other?,
    };
    let id = last_insert_id(conn).await?;
    // One unowned row per partition, in multi-row inserts.
    let partitions: Vec<i32> = (0..count).collect();
    for chunk in partitions.chunks(MAX_BINDS / 2) {
        let mut text = String::from(
            "INSERT INTO helix_assignments \
             (queue_id, partition_id, owner, epoch, state, target, coordinator_term, updated_at) VALUES ",
        );
        value_rows(&mut text, chunk.len(), "(?, ?, NULL, 0, 'ASSIGNED', NULL, 0, NOW(6))");
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>();
        for &p in chunk {
            query = query.bind::<BigInt, _>(id).bind::<Integer, _>(p);
        }
        query.execute(conn).await?;
    }
    let queue_id = QueueId(to_u64(id, "queue id")?);
    let event = NewEvent::queue_created(queue_id, &spec.domain, &spec.name, spec.partition_count);
    insert_events(conn, &[event]).await?;
    get_queue_by_id(conn, queue_id).await
}

pub(super) async fn get_queue(conn: &mut Conn, domain: &DomainName, name: &QueueName) -> Res<QueueRecord> {
    let row: Option<QueueRow> = helix_queues::table
        .filter(helix_queues::domain.eq(domain.as_str()))
        .filter(helix_queues::name.eq(name.as_str()))
        .select(QueueRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("queue {domain}/{name}")))?;
    Ok(row.record()?)
}

pub(super) async fn get_queue_by_id(conn: &mut Conn, id: QueueId) -> Res<QueueRecord> {
    let key = to_i64(id.0, "queue id")?;
    let row: Option<QueueRow> =
        helix_queues::table.find(key).select(QueueRow::as_select()).first(conn).await.optional()?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("queue {id}")))?;
    Ok(row.record()?)
}

pub(super) async fn list_queues(conn: &mut Conn, domain: Option<&DomainName>) -> Res<Vec<QueueRecord>> {
    let mut query = helix_queues::table
        .select(QueueRow::as_select())
        .order((helix_queues::domain, helix_queues::name))
        .into_boxed();
    if let Some(domain) = domain {
        query = query.filter(helix_queues::domain.eq(domain.as_str()));
    }
    let rows: Vec<QueueRow> = query.load(conn).await?;
    Ok(rows.into_iter().map(QueueRow::record).collect::<Result<_, _>>()?)
}

pub(super) async fn delete_queue(conn: &mut Conn, domain: &DomainName, name: &QueueName) -> Res<()> {
    let id: Option<i64> = helix_queues::table
        .filter(helix_queues::domain.eq(domain.as_str()))
        .filter(helix_queues::name.eq(name.as_str()))
        .select(helix_queues::id)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let id = id.ok_or_else(|| StoreError::NotFound(format!("queue {domain}/{name}")))?;
    // The schedules first: a fire that holds one of them commits its tasks before the
    // tasks below are deleted.
    super::schedules::delete_queue(conn, id).await?;
    diesel::delete(helix_assignments::table.filter(helix_assignments::queue_id.eq(id))).execute(conn).await?;
    diesel::delete(helix_subscriptions::table.filter(helix_subscriptions::queue_id.eq(id)))
        .execute(conn)
        .await?;
    diesel::sql_query("DELETE FROM helix_tasks WHERE queue_id = ?")
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await?;
    diesel::sql_query("DELETE FROM helix_task_history WHERE queue_id = ?")
        .bind::<BigInt, _>(id)
        .execute(conn)
        .await?;
    diesel::delete(helix_queues::table.find(id)).execute(conn).await?;
    let event = NewEvent::queue_deleted(QueueId(to_u64(id, "queue id")?), domain, name);
    insert_events(conn, &[event]).await
}

pub(super) async fn register_worker(conn: &mut Conn, registration: &WorkerRegistration) -> Res<WorkerLease> {
    let id = bytes(registration.id);
    // Lock order, as every assignment writer: queue rows first (the subscribed ones, which
    // must exist, and those of the rows the id owns, whose versions adoption bumps), in id
    // order; then the worker row; then the assignment rows. (A grant to this id that commits
    // between the read of `owned` and the worker row lock adds a queue not locked here;
    // adoption then locks it last. That rare order can deadlock with a plan on that queue;
    // InnoDB breaks it at once and the loser is retried as a transient failure.)
    let subscribed: Vec<i64> = registration
        .subscriptions
        .iter()
        .map(|s| to_i64(s.queue_id.0, "queue id"))
        .collect::<Result<_, _>>()?;
    let owned: Vec<i64> = helix_assignments::table
        .filter(helix_assignments::owner.eq(&id))
        .select(helix_assignments::queue_id)
        .distinct()
        .load(conn)
        .await?;
    let queues: BTreeSet<i64> = subscribed.iter().chain(&owned).copied().collect();
    if !queues.is_empty() {
        let text = format!(
            "SELECT id FROM helix_queues WHERE id IN ({}) ORDER BY id FOR UPDATE",
            placeholders(queues.len())
        );
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>();
        for id in &queues {
            query = query.bind::<BigInt, _>(*id);
        }
        let found: BTreeSet<i64> = query.load::<IdRow>(conn).await?.into_iter().map(|r| r.id).collect();
        if let Some(missing) =
            registration.subscriptions.iter().zip(&subscribed).find(|(_, id)| !found.contains(id))
        {
            return Err(StoreError::NotFound(format!("queue {}", missing.0.queue_id)).into());
        }
    }
    // One process per identity: refuse while a session of this id is live, deciding on the
    // locked row.
    let previous: Option<PreviousSession> = diesel::sql_query(
        "SELECT CASE WHEN status IN ('ACTIVE', 'DRAINING') AND lease_expires_at >= NOW(6) \
         THEN CAST(TIMESTAMPDIFF(MICROSECOND, NOW(6), lease_expires_at) AS SIGNED) END AS live_us \
         FROM helix_workers WHERE id = ? FOR UPDATE",
    )
    .bind::<Binary, _>(&id)
    .get_result(conn)
    .await
    .optional()?;
    let live_for = previous
        .as_ref()
        .and_then(|p| p.live_us)
        .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)));
    rules::refuse_live_id(registration.id, live_for)?;
    let labels = serde_json::to_string(&registration.labels)
        .map_err(|e| StoreError::Invalid(format!("labels cannot be stored: {e}")))?;
    if previous.is_some() {
        diesel::sql_query(
            "UPDATE helix_workers SET session_epoch = session_epoch + 1, host = ?, pid = ?, labels = ?, \
             status = 'ACTIVE', registered_at = NOW(6), lease_expires_at = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE id = ?",
        )
        .bind::<Text, _>(&registration.host)
        .bind::<BigInt, _>(i64::from(registration.pid))
        .bind::<Text, _>(&labels)
        .bind::<BigInt, _>(micros(registration.session_timeout))
        .bind::<Binary, _>(&id)
        .execute(conn)
        .await?;
    } else {
        // A first registration. Two at once under one new id: the second waits on the first's
        // insert and fails on the duplicate key; retried, it finds the first's live session.
        let inserted = diesel::sql_query(
            "INSERT INTO helix_workers \
             (id, host, pid, labels, status, registered_at, lease_expires_at, session_epoch) \
             VALUES (?, ?, ?, ?, 'ACTIVE', NOW(6), NOW(6) + INTERVAL ? MICROSECOND, 1)",
        )
        .bind::<Binary, _>(&id)
        .bind::<Text, _>(&registration.host)
        .bind::<BigInt, _>(i64::from(registration.pid))
        .bind::<Text, _>(&labels)
        .bind::<BigInt, _>(micros(registration.session_timeout))
        .execute(conn)
        .await;
        match inserted {
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Err(StoreError::Transient(format!(
                    "worker {} registered concurrently by another process",
                    registration.id
                ))
                .into());
            }
            other => other?,
        };
    }
    diesel::delete(helix_subscriptions::table.filter(helix_subscriptions::worker_id.eq(&id)))
        .execute(conn)
        .await?;
    if !registration.subscriptions.is_empty() {
        let mut text =
            String::from("INSERT INTO helix_subscriptions (worker_id, queue_id, capacity) VALUES ");
        value_rows(&mut text, registration.subscriptions.len(), "(?, ?, ?)");
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>();
        for sub in &registration.subscriptions {
            let capacity = i32::try_from(sub.capacity)
                .map_err(|_| StoreError::Invalid(format!("capacity {} is too large", sub.capacity)))?;
            query = query
                .bind::<Binary, _>(id.clone())
                .bind::<BigInt, _>(to_i64(sub.queue_id.0, "queue id")?)
                .bind::<Integer, _>(capacity);
        }
        query.execute(conn).await?;
    }
    let (epoch, expires): (i64, NaiveDateTime) = helix_workers::table
        .find(&id)
        .select((helix_workers::session_epoch, helix_workers::lease_expires_at))
        .first(conn)
        .await?;
    let session_epoch = SessionEpoch(to_u64(epoch, "session epoch")?);
    let event = NewEvent::worker_joined(registration.id, &registration.host, registration.pid, session_epoch);
    insert_events(conn, &[event]).await?;
    adopt(conn, registration.id, session_epoch, &subscribed).await?;
    Ok(WorkerLease { session_epoch, lease_expires_at: utc(expires) })
}

/// Adoption, in the registration's transaction: every row `worker` still owns in a queue it
/// serves (`served`) moves to the next epoch (a revocation keeps its start,
/// `rules::adoption_keeps_updated_at`) with a `partition_adopted` event; every row it owns in
/// a queue it no longer serves is released (no owner, next epoch) with a `partition_released`
/// event, for the coordinator to grant to a worker that serves it. Each queue's version moves
/// once. `updated_at` comes first in the SET list while `state` is still the old one (MySQL
/// assigns left to right).
async fn adopt(conn: &mut Conn, worker: WorkerId, session_epoch: SessionEpoch, served: &[i64]) -> Res<()> {
    let id = bytes(worker);
    let owned: Vec<AdoptedRow> = diesel::sql_query(
        "SELECT queue_id, partition_id, epoch FROM helix_assignments WHERE owner = ? \
         ORDER BY queue_id, partition_id FOR UPDATE",
    )
    .bind::<Binary, _>(&id)
    .load(conn)
    .await?;
    if owned.is_empty() {
        return Ok(());
    }
    let unserved: BTreeSet<i64> = owned.iter().map(|r| r.queue_id).filter(|q| !served.contains(q)).collect();
    if !unserved.is_empty() {
        let text = format!(
            "UPDATE helix_assignments SET owner = NULL, epoch = epoch + 1, state = 'ASSIGNED', target = NULL, \
             updated_at = NOW(6) WHERE owner = ? AND queue_id IN ({})",
            placeholders(unserved.len())
        );
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>().bind::<Binary, _>(id.clone());
        for queue in &unserved {
            query = query.bind::<BigInt, _>(*queue);
        }
        query.execute(conn).await?;
    }
    if owned.iter().any(|r| !unserved.contains(&r.queue_id)) {
        diesel::sql_query(
            "UPDATE helix_assignments SET updated_at = IF(state = 'REVOKING', updated_at, NOW(6)), \
             epoch = epoch + 1 WHERE owner = ?",
        )
        .bind::<Binary, _>(&id)
        .execute(conn)
        .await?;
    }
    let queues: BTreeSet<i64> = owned.iter().map(|r| r.queue_id).collect();
    for queue in queues {
        diesel::update(helix_queues::table.find(queue))
            .set(helix_queues::assignment_version.eq(helix_queues::assignment_version + 1))
            .execute(conn)
            .await?;
    }
    let mut events = Vec::with_capacity(owned.len());
    for row in &owned {
        let (queue, partition) =
            (QueueId(to_u64(row.queue_id, "queue id")?), partition_of(row.partition_id)?);
        let epoch = Epoch(to_u64(row.epoch, "epoch")?).next();
        events.push(if unserved.contains(&row.queue_id) {
            NewEvent::partition_released(queue, partition, worker, epoch)
        } else {
            NewEvent::partition_adopted(queue, partition, worker, epoch, session_epoch)
        });
    }
    insert_events(conn, &events).await
}

/// The heartbeat's renewal: renews the lease and, in the same update, brings `seen_version`
/// of the subscriptions whose queue's assignment version moved in step. Only those
/// subscriptions join (the inner join's condition), so with found rows the count is 1 (the
/// worker) plus one per moved queue, and 0 when the lease was not running. Under READ
/// COMMITTED the queues are read without locks.
///
/// A query of its own rather than `sql_query`, which diesel never caches: with a static query
/// id the connection prepares it once, and each heartbeat is one execute (one round trip).
struct RenewSession {
    session_timeout_us: i64,
    worker: Vec<u8>,
    session_epoch: i64,
}

impl diesel::query_builder::QueryId for RenewSession {
    type QueryId = Self;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl diesel::query_builder::QueryFragment<Mysql> for RenewSession {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE helix_workers w \
             LEFT JOIN (helix_subscriptions s JOIN helix_queues q \
                        ON q.id = s.queue_id AND q.assignment_version <> s.seen_version) \
             ON s.worker_id = w.id \
             SET w.lease_expires_at = NOW(6) + INTERVAL ",
        );
        out.push_bind_param::<BigInt, _>(&self.session_timeout_us)?;
        out.push_sql(" MICROSECOND, s.seen_version = q.assignment_version WHERE w.id = ");
        out.push_bind_param::<Binary, _>(&self.worker)?;
        out.push_sql(" AND w.session_epoch = ");
        out.push_bind_param::<BigInt, _>(&self.session_epoch)?;
        out.push_sql(" AND w.status IN ('ACTIVE', 'DRAINING') AND w.lease_expires_at >= NOW(6)");
        Ok(())
    }
}

pub(super) async fn heartbeat(
    conn: &mut Conn,
    worker: WorkerId,
    session_epoch: SessionEpoch,
    session_timeout: Duration,
) -> Res<Heartbeat> {
    let id = bytes(worker);
    let epoch = to_i64(session_epoch.0, "session epoch")?;
    // The happy path is this one statement, one round trip once its prepared form is cached.
    let renew = RenewSession {
        session_timeout_us: micros(session_timeout),
        worker: id.clone(),
        session_epoch: epoch,
    };
    let matched = renew.execute(conn).await?;
    if matched > 0 {
        return Ok(Heartbeat::Renewed { assignments_moved: matched > 1 });
    }
    let row: Option<HeartbeatRow> = diesel::sql_query(
        "SELECT status, session_epoch, CAST(lease_expires_at < NOW(6) AS SIGNED) AS expired \
         FROM helix_workers WHERE id = ?",
    )
    .bind::<Binary, _>(&id)
    .get_result(conn)
    .await
    .optional()?;
    let row = match row {
        Some(r) => Some((
            WorkerStatus::parse(&r.status)?,
            SessionEpoch(to_u64(r.session_epoch, "session epoch")?),
            r.expired != 0,
        )),
        None => None,
    };
    Ok(rules::classify_heartbeat(row, session_epoch))
}

pub(super) async fn set_worker_status(
    conn: &mut Conn,
    worker: WorkerId,
    session_epoch: SessionEpoch,
    status: WorkerStatus,
) -> Res<()> {
    let id = bytes(worker);
    let current: Option<String> = helix_workers::table
        .find(&id)
        .filter(helix_workers::session_epoch.eq(to_i64(session_epoch.0, "session epoch")?))
        .filter(helix_workers::status.eq_any(IN_SESSION))
        .filter(helix_workers::lease_expires_at.ge(now6()))
        .select(helix_workers::status)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let current = current
        .ok_or_else(|| StoreError::Fenced(format!("session {session_epoch} of worker {worker} is over")))?;
    if current == status.as_str() {
        return Ok(());
    }
    diesel::update(helix_workers::table.find(&id))
        .set(helix_workers::status.eq(status.as_str()))
        .execute(conn)
        .await?;
    insert_events(conn, &[NewEvent::worker_status_changed(worker, status)]).await
}

pub(super) async fn deregister_worker(
    conn: &mut Conn,
    worker: WorkerId,
    session_epoch: SessionEpoch,
) -> Res<()> {
    let id = bytes(worker);
    let current: Option<(i64, String)> = helix_workers::table
        .find(&id)
        .select((helix_workers::session_epoch, helix_workers::status))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((epoch, status)) = current else {
        return Ok(());
    };
    if u64::try_from(epoch).ok() != Some(session_epoch.0) {
        return Err(
            StoreError::Fenced(format!("worker {worker} has a newer session than {session_epoch}")).into()
        );
    }
    if status == WorkerStatus::Left.as_str() {
        return Ok(());
    }
    diesel::sql_query(
        "UPDATE helix_workers SET status = 'LEFT', lease_expires_at = LEAST(lease_expires_at, NOW(6)) WHERE id = ?",
    )
    .bind::<Binary, _>(&id)
    .execute(conn)
    .await?;
    diesel::delete(helix_subscriptions::table.filter(helix_subscriptions::worker_id.eq(&id)))
        .execute(conn)
        .await?;
    insert_events(conn, &[NewEvent::worker_left(worker)]).await
}

pub(super) async fn get_worker(conn: &mut Conn, worker: WorkerId) -> Res<WorkerRecord> {
    let id = bytes(worker);
    let row: Option<WorkerRow> =
        helix_workers::table.find(&id).select(WorkerRow::as_select()).first(conn).await.optional()?;
    let row = row.ok_or_else(|| StoreError::NotFound(format!("worker {worker}")))?;
    let mut subs = subscriptions_of(conn, std::slice::from_ref(&id)).await?;
    Ok(row.record(subs.remove(&id).unwrap_or_default())?)
}

pub(super) async fn list_workers(conn: &mut Conn, filter: WorkerFilter) -> Res<Vec<WorkerRecord>> {
    let mut query = helix_workers::table.select(WorkerRow::as_select()).order(helix_workers::id).into_boxed();
    query = match filter {
        WorkerFilter::All => query,
        WorkerFilter::Live => query
            .filter(helix_workers::status.eq_any(IN_SESSION))
            .filter(helix_workers::lease_expires_at.ge(now6())),
        WorkerFilter::Expired => query
            .filter(helix_workers::status.eq_any(IN_SESSION))
            .filter(helix_workers::lease_expires_at.lt(now6())),
    };
    let rows: Vec<WorkerRow> = query.load(conn).await?;
    let ids: Vec<Vec<u8>> = rows.iter().map(|r| r.id.clone()).collect();
    let mut subs = subscriptions_of(conn, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mine = subs.remove(&row.id).unwrap_or_default();
            row.record(mine)
        })
        .collect::<Result<_, _>>()?)
}

pub(super) async fn mark_workers_dead(
    conn: &mut Conn,
    fence: &CoordinatorFence,
    workers: &[WorkerId],
) -> Res<Vec<WorkerId>> {
    check_fence(conn, fence).await?;
    let ids: BTreeSet<Vec<u8>> = workers.iter().map(|w| bytes(*w)).collect();
    let ids: Vec<Vec<u8>> = ids.into_iter().collect();
    let mut expired: Vec<Vec<u8>> = Vec::new();
    for chunk in ids.chunks(MAX_BINDS) {
        let found: Vec<Vec<u8>> = helix_workers::table
            .filter(helix_workers::id.eq_any(chunk))
            .filter(helix_workers::status.eq_any(IN_SESSION))
            .filter(helix_workers::lease_expires_at.lt(now6()))
            .select(helix_workers::id)
            .for_update()
            .load(conn)
            .await?;
        expired.extend(found);
    }
    for chunk in expired.chunks(MAX_BINDS) {
        diesel::update(helix_workers::table.filter(helix_workers::id.eq_any(chunk)))
            .set(helix_workers::status.eq(WorkerStatus::Dead.as_str()))
            .execute(conn)
            .await?;
    }
    let mut marked: Vec<WorkerId> = expired.iter().map(|b| worker_of(b)).collect::<Result<_, _>>()?;
    marked.sort();
    let events: Vec<NewEvent> = marked.iter().map(|id| NewEvent::worker_dead(*id, fence.term)).collect();
    insert_events(conn, &events).await?;
    Ok(marked)
}

async fn lock_lease(conn: &mut Conn, cluster: &ClusterName) -> Res<Option<LeaseRow>> {
    Ok(diesel::sql_query(
        "SELECT cluster, holder, term, expires_at, CAST(expires_at <= NOW(6) AS SIGNED) AS flag \
         FROM helix_coordinator WHERE cluster = ? FOR UPDATE",
    )
    .bind::<Text, _>(cluster.as_str())
    .get_result(conn)
    .await
    .optional()?)
}

pub(super) async fn acquire_lease(
    conn: &mut Conn,
    cluster: &ClusterName,
    holder: WorkerId,
    lease: Duration,
) -> Res<Option<Term>> {
    let mut row = lock_lease(conn, cluster).await?;
    if row.is_none() {
        // The first acquisition ever: create the row (free, term 0) so there is one to lock.
        // Concurrent first acquirers wait on the insert of the first; whoever locks the row
        // next sees the first one's lease.
        diesel::sql_query(
            "INSERT IGNORE INTO helix_coordinator (cluster, holder, term, expires_at) VALUES (?, NULL, 0, NOW(6))",
        )
        .bind::<Text, _>(cluster.as_str())
        .execute(conn)
        .await?;
        row = lock_lease(conn, cluster).await?;
    }
    let row =
        row.ok_or_else(|| StoreError::Database(format!("coordinator row of cluster {cluster} vanished")))?;
    let previous = row.holder.as_deref().map(worker_of).transpose()?;
    let current_term = Term(to_u64(row.term, "term")?);
    // A fresh row (term 0, no holder) decides like no row at all: the new term is 1.
    match rules::decide_acquire(Some((previous, current_term, row.flag != 0)), holder) {
        LeaseDecision::Refuse => Ok(None),
        LeaseDecision::Take { term } => {
            diesel::sql_query(
                "UPDATE helix_coordinator SET holder = ?, term = ?, expires_at = NOW(6) + INTERVAL ? MICROSECOND \
                 WHERE cluster = ?",
            )
            .bind::<Binary, _>(bytes(holder))
            .bind::<BigInt, _>(to_i64(term.0, "term")?)
            .bind::<BigInt, _>(micros(lease))
            .bind::<Text, _>(cluster.as_str())
            .execute(conn)
            .await?;
            insert_events(conn, &[NewEvent::leader_elected(holder, term, cluster, previous)]).await?;
            Ok(Some(term))
        }
    }
}

pub(super) async fn renew_lease(conn: &mut Conn, fence: &CoordinatorFence, lease: Duration) -> Res<()> {
    // One conditional update is the lock, the check and the write (found rows: 1 when the
    // fence holds, even if the value did not change).
    let renewed = diesel::sql_query(
        "UPDATE helix_coordinator SET expires_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE cluster = ? AND holder = ? AND term = ? AND expires_at > NOW(6)",
    )
    .bind::<BigInt, _>(micros(lease))
    .bind::<Text, _>(fence.cluster.as_str())
    .bind::<Binary, _>(bytes(fence.holder))
    .bind::<BigInt, _>(to_i64(fence.term.0, "term")?)
    .execute(conn)
    .await?;
    if renewed == 0 { Err(fenced(fence)) } else { Ok(()) }
}

pub(super) async fn release_lease(conn: &mut Conn, fence: &CoordinatorFence) -> Res<()> {
    let released = diesel::sql_query(
        "UPDATE helix_coordinator SET expires_at = NOW(6) \
         WHERE cluster = ? AND holder = ? AND term = ? AND expires_at > NOW(6)",
    )
    .bind::<Text, _>(fence.cluster.as_str())
    .bind::<Binary, _>(bytes(fence.holder))
    .bind::<BigInt, _>(to_i64(fence.term.0, "term")?)
    .execute(conn)
    .await?;
    if released == 0 {
        return Ok(());
    }
    insert_events(conn, &[NewEvent::leader_released(fence.holder, fence.term, &fence.cluster)]).await
}

pub(super) async fn get_lease(conn: &mut Conn, cluster: &ClusterName) -> Res<Option<LeaseRecord>> {
    let row: Option<LeaseRow> = diesel::sql_query(
        "SELECT cluster, holder, term, expires_at, CAST(expires_at <= NOW(6) AS SIGNED) AS flag \
         FROM helix_coordinator WHERE cluster = ?",
    )
    .bind::<Text, _>(cluster.as_str())
    .get_result(conn)
    .await
    .optional()?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(LeaseRecord {
        cluster: ClusterName::new(row.cluster).map_err(|e| StoreError::Database(e.to_string()))?,
        holder: row.holder.as_deref().map(worker_of).transpose()?,
        term: Term(to_u64(row.term, "term")?),
        expires_at: utc(row.expires_at),
        expired: row.flag != 0,
    }))
}

pub(super) async fn assignments(conn: &mut Conn, queue: QueueId) -> Res<QueueAssignments> {
    let key = to_i64(queue.0, "queue id")?;
    // Inside a REPEATABLE READ transaction (`snapshot_next_transaction`): both reads see one
    // snapshot, so the version and the rows match, with no lock taken.
    let version: Option<FlagRow> =
        diesel::sql_query("SELECT assignment_version AS flag FROM helix_queues WHERE id = ?")
            .bind::<BigInt, _>(key)
            .get_result(conn)
            .await
            .optional()?;
    let version =
        version.and_then(|v| v.flag).ok_or_else(|| StoreError::NotFound(format!("queue {queue}")))?;
    let rows: Vec<AssignmentRow> = helix_assignments::table
        .filter(helix_assignments::queue_id.eq(key))
        .order(helix_assignments::partition_id)
        .select(AssignmentRow::as_select())
        .load(conn)
        .await?;
    Ok(QueueAssignments {
        queue_id: queue,
        assignment_version: to_u64(version, "assignment version")?,
        rows: rows.into_iter().map(AssignmentRow::record).collect::<Result<_, _>>()?,
    })
}

pub(super) async fn assignments_of(conn: &mut Conn, worker: WorkerId) -> Res<Vec<AssignmentRecord>> {
    let rows: Vec<AssignmentRow> = helix_assignments::table
        .filter(helix_assignments::owner.eq(bytes(worker)))
        .order((helix_assignments::queue_id, helix_assignments::partition_id))
        .select(AssignmentRow::as_select())
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(AssignmentRow::record).collect::<Result<_, _>>()?)
}

/// The columns of an assignment row that a plan reads.
type LockedRow = (i32, Option<Vec<u8>>, i64, String, Option<Vec<u8>>);

pub(super) async fn apply_plan(
    conn: &mut Conn,
    fence: &CoordinatorFence,
    queue: QueueId,
    changes: &[PlanChange],
) -> Res<PlanOutcome> {
    check_fence(conn, fence).await?;
    let key = to_i64(queue.0, "queue id")?;
    let found: Option<(i32, i64)> = helix_queues::table
        .find(key)
        .select((helix_queues::partition_count, helix_queues::assignment_version))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let (count, version) = found.ok_or_else(|| StoreError::NotFound(format!("queue {queue}")))?;
    let count = PartitionCount::new(u64::try_from(count).unwrap_or(0))
        .map_err(|e| StoreError::Database(e.to_string()))?;
    let version = to_u64(version, "assignment version")?;
    rules::validate_plan(count, changes)?;
    if changes.is_empty() {
        return Ok(PlanOutcome { applied: 0, skipped: Vec::new(), assignment_version: version });
    }

    // Lock the rows the plan names: all of the queue's at once when the plan covers most of
    // them, otherwise in IN-list chunks.
    let mut wanted: Vec<i32> =
        changes.iter().map(|c| partition_i32(c.partition())).collect::<Result<_, _>>()?;
    wanted.sort_unstable();
    let base = helix_assignments::table
        .filter(helix_assignments::queue_id.eq(key))
        .select((
            helix_assignments::partition_id,
            helix_assignments::owner,
            helix_assignments::epoch,
            helix_assignments::state,
            helix_assignments::target,
        ))
        .order(helix_assignments::partition_id);
    let mut locked: Vec<LockedRow> = Vec::with_capacity(wanted.len());
    if wanted.len() * 2 >= count.get() as usize {
        locked = base.for_update().load(conn).await?;
    } else {
        for chunk in wanted.chunks(MAX_BINDS / 10) {
            let rows: Vec<LockedRow> =
                base.filter(helix_assignments::partition_id.eq_any(chunk)).for_update().load(conn).await?;
            locked.extend(rows);
        }
    }

    // Which of the owners and of the grants' workers are live, on the database clock, read
    // under a shared lock of their rows: a registration of one of them (which locks its row
    // for update) either committed before, and is seen, or waits until this plan commits and
    // then adopts what the plan left it (docs/protocol.md, "One process per identity").
    // Registration locks the queue rows before the worker row, as this plan does, so the two
    // never wait on each other in opposite orders.
    let grantees = changes.iter().filter_map(|c| match c {
        PlanChange::Grant { to, .. } => Some(bytes(*to)),
        _ => None,
    });
    let owners: BTreeSet<Vec<u8>> = locked.iter().filter_map(|r| r.1.clone()).chain(grantees).collect();
    let owners: Vec<Vec<u8>> = owners.into_iter().collect();
    let mut live: BTreeSet<Vec<u8>> = BTreeSet::new();
    for chunk in owners.chunks(MAX_BINDS) {
        let text = format!(
            "SELECT id, CAST(status IN ('ACTIVE', 'DRAINING') AND lease_expires_at >= NOW(6) AS SIGNED) AS flag \
             FROM helix_workers WHERE id IN ({}) ORDER BY id LOCK IN SHARE MODE",
            placeholders(chunk.len())
        );
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>();
        for id in chunk {
            query = query.bind::<Binary, _>(id.clone());
        }
        let rows: Vec<LiveRow> = query.load(conn).await?;
        live.extend(rows.into_iter().filter(|r| r.flag != 0).map(|r| r.id));
    }

    let wanted: BTreeSet<i32> = wanted.into_iter().collect();
    let states: Vec<RowState> = locked
        .into_iter()
        .filter(|r| wanted.contains(&r.0))
        .map(|(partition, owner, epoch, state, target)| {
            Ok(RowState {
                partition: partition_of(partition)?,
                owner_live: owner.as_ref().is_some_and(|o| live.contains(o)),
                owner: owner.as_deref().map(worker_of).transpose()?,
                epoch: Epoch(to_u64(epoch, "epoch")?),
                state: AssignmentState::parse(&state)?,
                target: target.as_deref().map(worker_of).transpose()?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let eval = rules::evaluate_plan(queue, fence.term, &states, changes, |w| {
        live.contains(w.as_bytes().as_slice())
    })?;
    if eval.writes.is_empty() {
        return Ok(PlanOutcome { applied: 0, skipped: eval.skipped, assignment_version: version });
    }

    // Write the final values, computed above, in multi-row upserts of existing (locked) rows.
    // MySQL evaluates the assignments left to right, a later one seeing the columns already
    // assigned: `updated_at` therefore comes first, while `state` is still the old state (a
    // revocation that stays a revocation keeps its start, see `rules::keeps_updated_at`), and
    // every other assignment takes its value from VALUES() alone.
    let term = to_i64(fence.term.0, "term")?;
    const BINDS_PER_ROW: usize = 7;
    for chunk in eval.writes.chunks(MAX_BINDS / BINDS_PER_ROW) {
        let mut text = String::from(
            "INSERT INTO helix_assignments \
             (queue_id, partition_id, owner, epoch, state, target, coordinator_term, updated_at) VALUES ",
        );
        value_rows(&mut text, chunk.len(), "(?, ?, ?, ?, ?, ?, ?, NOW(6))");
        text.push_str(
            " ON DUPLICATE KEY UPDATE \
             updated_at = IF(state = 'REVOKING' AND VALUES(state) = 'REVOKING', updated_at, VALUES(updated_at)), \
             owner = VALUES(owner), epoch = VALUES(epoch), state = VALUES(state), \
             target = VALUES(target), coordinator_term = VALUES(coordinator_term)",
        );
        let mut query = diesel::sql_query(text).into_boxed::<Mysql>();
        for write in chunk {
            query = query
                .bind::<BigInt, _>(key)
                .bind::<Integer, _>(partition_i32(write.partition)?)
                .bind::<Nullable<Binary>, _>(write.owner.map(bytes))
                .bind::<BigInt, _>(to_i64(write.epoch.0, "epoch")?)
                .bind::<Text, _>(write.state.as_str())
                .bind::<Nullable<Binary>, _>(write.target.map(bytes))
                .bind::<BigInt, _>(term);
        }
        query.execute(conn).await?;
    }
    diesel::update(helix_queues::table.find(key))
        .set(helix_queues::assignment_version.eq(helix_queues::assignment_version + 1))
        .execute(conn)
        .await?;
    insert_events(conn, &eval.events).await?;
    Ok(PlanOutcome { applied: eval.writes.len(), skipped: eval.skipped, assignment_version: version + 1 })
}

/// The owner-fenced write of `handoff` (to the revocation's target), `release_partition` (to
/// nobody) and `fail_partition` (to nobody, failed): one conditional update, the version bump
/// and the event, in one transaction.
pub(super) async fn owner_write(
    conn: &mut Conn,
    queue: QueueId,
    partition: PartitionId,
    worker: WorkerId,
    epoch: Epoch,
    write: OwnerWrite<'_>,
) -> Res<Epoch> {
    let fenced = || {
        Failure::Store(StoreError::Fenced(format!(
            "worker {worker} no longer owns queue {queue} partition {partition} at epoch {epoch}"
        )))
    };
    let (Ok(key), Ok(p), Ok(e)) =
        (to_i64(queue.0, "queue id"), partition_i32(partition), to_i64(epoch.0, "epoch"))
    else {
        return Err(fenced());
    };
    // The queue row first: every assignment writer locks it before the rows, so writers
    // never wait on each other in opposite orders.
    let bumped = diesel::update(helix_queues::table.find(key))
        .set(helix_queues::assignment_version.eq(helix_queues::assignment_version + 1))
        .execute(conn)
        .await?;
    if bumped == 0 {
        return Err(fenced());
    }
    // `owner = target` comes before `target = NULL`: MySQL assigns left to right.
    let text = match write {
        // A handoff to a target that is no longer live releases instead.
        OwnerWrite::HandOff => {
            "UPDATE helix_assignments SET owner = IF(target IN (SELECT id FROM helix_workers \
             WHERE status IN ('ACTIVE', 'DRAINING') AND lease_expires_at >= NOW(6)), target, NULL), epoch = epoch + 1, state = 'ASSIGNED', target = NULL, \
             updated_at = NOW(6) WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ? \
             AND state = 'REVOKING'"
        }
        OwnerWrite::Release => {
            "UPDATE helix_assignments SET owner = NULL, epoch = epoch + 1, state = 'ASSIGNED', target = NULL, \
             updated_at = NOW(6) WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ?"
        }
        OwnerWrite::Fail(_) => {
            "UPDATE helix_assignments SET owner = NULL, epoch = epoch + 1, state = 'FAILED', target = NULL, \
             updated_at = NOW(6) WHERE queue_id = ? AND partition_id = ? AND owner = ? AND epoch = ?"
        }
    };
    let changed = diesel::sql_query(text)
        .bind::<BigInt, _>(key)
        .bind::<Integer, _>(p)
        .bind::<Binary, _>(bytes(worker))
        .bind::<BigInt, _>(e)
        .execute(conn)
        .await?;
    if changed == 0 {
        return Err(fenced());
    }
    let (owner, new_epoch): (Option<Vec<u8>>, i64) = helix_assignments::table
        .find((key, p))
        .select((helix_assignments::owner, helix_assignments::epoch))
        .first(conn)
        .await?;
    let new_epoch = Epoch(to_u64(new_epoch, "epoch")?);
    let new_owner = owner.as_deref().map(worker_of).transpose()?;
    let event = write.event(queue, partition, worker, new_owner, new_epoch);
    insert_events(conn, &[event]).await?;
    Ok(new_epoch)
}

/// An operator's reset of a failed partition. Locks the queue row first, as every assignment
/// writer does, then changes the row and bumps the version, with the event.
pub(super) async fn reset_partition(conn: &mut Conn, queue: QueueId, partition: PartitionId) -> Res<bool> {
    let not_found = || Failure::Store(StoreError::NotFound(format!("queue {queue} partition {partition}")));
    let (Ok(key), Ok(p)) = (to_i64(queue.0, "queue id"), partition_i32(partition)) else {
        return Err(not_found());
    };
    let locked: Option<i64> =
        helix_queues::table.find(key).select(helix_queues::id).for_update().first(conn).await.optional()?;
    if locked.is_none() {
        return Err(not_found());
    }
    let found: Option<(String, i64)> = helix_assignments::table
        .find((key, p))
        .select((helix_assignments::state, helix_assignments::epoch))
        .first(conn)
        .await
        .optional()?;
    let Some((state, epoch)) = found else {
        return Err(not_found());
    };
    if AssignmentState::parse(&state)? != AssignmentState::Failed {
        return Ok(false);
    }
    diesel::sql_query(
        "UPDATE helix_assignments SET state = 'ASSIGNED', updated_at = NOW(6) \
         WHERE queue_id = ? AND partition_id = ? AND state = 'FAILED'",
    )
    .bind::<BigInt, _>(key)
    .bind::<Integer, _>(p)
    .execute(conn)
    .await?;
    diesel::update(helix_queues::table.find(key))
        .set(helix_queues::assignment_version.eq(helix_queues::assignment_version + 1))
        .execute(conn)
        .await?;
    let epoch = Epoch(to_u64(epoch, "epoch")?);
    insert_events(conn, &[NewEvent::partition_reset(queue, partition, epoch)]).await?;
    Ok(true)
}

pub(super) async fn append_event(conn: &mut Conn, event: &NewEvent) -> Res<u64> {
    insert_events(conn, std::slice::from_ref(event)).await?;
    Ok(to_u64(last_insert_id(conn).await?, "event id")?)
}

pub(super) async fn events_since(conn: &mut Conn, after: u64, limit: u32) -> Res<Vec<Event>> {
    let Ok(after) = i64::try_from(after) else { return Ok(Vec::new()) };
    let rows: Vec<EventRow> = helix_events::table
        .filter(helix_events::id.gt(after))
        .order(helix_events::id)
        .limit(i64::from(limit.min(MAX_EVENTS_PER_READ)))
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(EventRow::record).collect::<Result<_, _>>()?)
}

pub(super) async fn prune_events(conn: &mut Conn, older_than: Duration) -> Res<u64> {
    // Beyond a few centuries the cutoff is before any event anyway.
    let micros = micros(older_than.min(Duration::from_secs(300 * 365 * 86_400)));
    let deleted = diesel::sql_query("DELETE FROM helix_events WHERE at < NOW(6) - INTERVAL ? MICROSECOND")
        .bind::<BigInt, _>(micros)
        .execute(conn)
        .await?;
    Ok(deleted as u64)
}

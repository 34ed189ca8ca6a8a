//! The MySQL / MariaDB store: diesel-async over mysql_async (pure Rust, no libmysqlclient),
//! pooled with bb8.
//!
//! How it keeps the [`Store`] rules:
//! - **Database clock.** Every instant written and every lease comparison is `NOW(6)` on the
//!   server; the pool's sessions run with `time_zone = '+00:00'`, so `DATETIME(6)` values are
//!   UTC.
//! - **READ COMMITTED.** Every pooled session is set up with
//!   `SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED`: no gap locks, fewer deadlocks
//!   (DESIGN §9); the writes lock the rows they decide on with `SELECT … FOR UPDATE`.
//! - **Affected rows are found rows.** The connections use `CLIENT_FOUND_ROWS`, so an
//!   `UPDATE` reports the rows its `WHERE` matched, even when a value did not change; "0 rows"
//!   means "the condition did not hold", which is what the fenced updates rely on.
//! - **Fencing in the same transaction.** Coordinator writes lock and check the coordinator
//!   row (`holder = me AND term = my_term AND expires_at > NOW(6)`) before they write; owner
//!   writes are one conditional `UPDATE … WHERE owner = ? AND epoch = ?`; both in the
//!   transaction of the write.
//! - **Bounded sessions.** Every connection is opened within `connect_timeout` (1 s by
//!   default) and runs with a short lock wait (`innodb_lock_wait_timeout`, 1 s), TCP keepalive
//!   (10 s) and, on MariaDB, `idle_transaction_timeout` (5 s: the server ends a transaction
//!   its client abandoned, releasing its locks) and `max_statement_time` (10 s); see
//!   [`ConnectOptions`]. The pool replaces connections after 30 min, or 5 min idle. A client
//!   that stalls inside a transaction therefore costs the others a lock wait of about a
//!   second per attempt (a transient error, retried), never a round.
//! - **Retries.** Deadlocks (1213), lock wait timeouts (1205) and lost connections are
//!   retried with the policy of `retry.rs`; a connection that was lost is dropped from the
//!   pool. `Fenced` and the other answers are never retried.
//! - **Batching.** `apply_plan` and `create_queue` write rows in multi-row statements of at
//!   most `MAX_BINDS` placeholders: a plan over 50,000 partitions takes about twenty
//!   statements, not 50,000.

mod ops;
mod schedules;
mod schema;
mod tasks;

pub use tasks::enqueue_in_transaction;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection, RunError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::{AnsiTransactionManager, AsyncConnection, AsyncMysqlConnection, TransactionManager};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use futures::FutureExt;
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionId, QueueId, QueueName, SessionEpoch, Term, WorkerId,
};

use crate::error::{StoreError, StoreResult};
use crate::model::*;
use crate::retry::Retry;
use crate::rules;
use crate::schedules::*;
use crate::store::Store;
use crate::tasks::*;
use crate::url::StoreUrl;
use crate::{ConnectOptions, migrate};

/// The migrations of `migrations/mysql`, embedded in the binary.
pub(crate) const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/mysql");

/// The most placeholders one statement binds (MySQL's limit is 65,535).
pub(crate) const MAX_BINDS: usize = 60_000;

/// Statements every new pooled connection runs before it is used, on MySQL and MariaDB.
const SESSION_SETUP: [&str; 2] =
    ["SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", "SET time_zone = '+00:00'"];

/// The TCP keepalive of every connection: a peer that vanished (a partition, a dead host) is
/// found out by the kernel within about this much idle time, and the server ends the
/// session (and its transaction) of a client that vanished the same way.
const TCP_KEEPALIVE: Duration = Duration::from_secs(10);
/// A pooled connection is closed and replaced after this long, so connections follow a
/// failover or a load balancer's changes.
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// A pooled connection idle for this long is closed.
const MAX_CONNECTION_IDLE: Duration = Duration::from_secs(5 * 60);

/// Whole seconds, at least 1: MySQL's lock and idle timeouts take integers.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

/// The per-session bounds of `options`: the lock wait on both servers; on MariaDB also the
/// idle-transaction timeout and the statement bound (MySQL has neither variable).
fn session_bounds(options: &ConnectOptions, mariadb: bool) -> Vec<String> {
    let mut statements =
        vec![format!("SET SESSION innodb_lock_wait_timeout = {}", whole_seconds(options.lock_wait_timeout))];
    if mariadb {
        statements.push(format!(
            "SET SESSION idle_transaction_timeout = {}",
            whole_seconds(options.idle_transaction_timeout)
        ));
        statements
            .push(format!("SET SESSION max_statement_time = {:.3}", options.statement_timeout.as_secs_f64()));
    }
    statements
}

/// The MySQL / MariaDB store. Cheap to share behind an `Arc`; it holds a pool of at most
/// [`ConnectOptions::pool_size`] connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), helix_store::StoreError> {
/// use helix_store::{ConnectOptions, MysqlStore, Store};
///
/// let url = url::Url::parse("mysql://helix:secret@127.0.0.1:3306/helix").expect("valid url");
/// let store = MysqlStore::connect(&url, &ConnectOptions::default()).await?;
/// println!("database time: {}", store.now().await?);
/// # Ok(())
/// # }
/// ```
pub struct MysqlStore {
    pool: Pool<AsyncMysqlConnection>,
    /// The URL with its password replaced by `***`.
    url: String,
    scrub: Scrubber,
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.pool.state();
        f.debug_struct("MysqlStore")
            .field("url", &self.url)
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .finish()
    }
}

/// Removes a password from text that a driver may have formatted it into.
#[derive(Clone, Default)]
struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    fn new(url: &url::Url) -> Self {
        let mut secrets = Vec::new();
        if let Some(raw) = url.password().filter(|p| !p.is_empty()) {
            secrets.push(raw.to_owned());
            if let Ok(decoded) = percent_decode(raw)
                && decoded != raw
                && !decoded.is_empty()
            {
                secrets.push(decoded);
            }
        }
        Self { secrets }
    }

    fn clean(&self, text: impl Into<String>) -> String {
        let mut text = text.into();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

fn percent_decode(raw: &str) -> Result<String, ()> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Why an operation failed inside the store: an answer already decided ([`StoreError`]) or a
/// database error still to classify.
#[derive(Debug)]
pub(crate) enum Failure {
    Store(StoreError),
    Db(DieselError),
}

impl From<DieselError> for Failure {
    fn from(err: DieselError) -> Self {
        Self::Db(err)
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

/// Message fragments of errors after which the connection cannot be used again.
const LOST_CONNECTION: [&str; 11] = [
    "input/output error",
    "connection to the server is closed",
    "lost connection",
    "server has gone away",
    "connection was killed",
    "broken pipe",
    "connection reset",
    "packet out of order",
    "server shutdown in progress",
    "unexpected eof",
    "connection refused",
];

/// Classifies a database error; the flag says whether the connection is lost. The driver
/// passes MySQL's message but not its code, so deadlocks (1213, "Deadlock found …") and lock
/// wait timeouts (1205, "Lock wait timeout exceeded …") are recognised by their message.
fn classify(err: &DieselError, scrub: &Scrubber) -> (StoreError, bool) {
    match err {
        DieselError::DatabaseError(kind, info) => {
            let message = scrub.clean(info.message());
            let lower = message.to_ascii_lowercase();
            if matches!(kind, DatabaseErrorKind::UniqueViolation) {
                return (StoreError::Conflict(message), false);
            }
            if lower.contains("deadlock")
                || lower.contains("lock wait timeout")
                || lower.contains("try restarting transaction")
            {
                return (StoreError::Transient(message), false);
            }
            if LOST_CONNECTION.iter().any(|m| lower.contains(m)) {
                return (StoreError::Transient(message), true);
            }
            (StoreError::Database(message), false)
        }
        DieselError::BrokenTransactionManager | DieselError::RollbackErrorOnCommit { .. } => {
            (StoreError::Transient(scrub.clean(err.to_string())), true)
        }
        other => (StoreError::Database(scrub.clean(other.to_string())), false),
    }
}

/// Runs one store operation: takes a pooled connection, runs `$body` with it bound to
/// `$conn`, classifies the failure, and tries again after transient ones (see `retry.rs`).
macro_rules! run {
    ($store:expr, $op:literal, |$conn:ident| $body:expr) => {{
        let store: &MysqlStore = $store;
        let mut retry = Retry::new($op);
        loop {
            let result = match store.checkout().await {
                Ok(mut pooled) => {
                    let $conn: &mut AsyncMysqlConnection = &mut pooled;
                    let outcome: Result<_, Failure> = $body.await;
                    store.settle($conn, outcome)
                }
                Err(err) => Err(err),
            };
            match result {
                Err(err) if retry.again(&err).await => continue,
                result => break result,
            }
        }
    }};
}

/// As `run!` with `tx!`, for an operation that must not be applied twice (a claim, an
/// enqueue): a failure before the commit was sent is rolled back by the server and tried
/// again like any other, but a transient failure of the commit itself (a lost connection)
/// leaves it unknown whether the transaction was applied, so it is not tried again and
/// answers [`StoreError::Unavailable`] saying so. The caller decides: the task runner
/// recovers its partition's tasks, an application enqueues again with a dedup key.
macro_rules! run_once {
    ($store:expr, $op:literal, |$conn:ident| $body:expr) => {{
        let store: &MysqlStore = $store;
        let mut retry = Retry::new($op);
        loop {
            let committing = std::sync::atomic::AtomicBool::new(false);
            let result = match store.checkout().await {
                Ok(mut pooled) => {
                    let $conn: &mut AsyncMysqlConnection = &mut pooled;
                    let outcome: Result<_, Failure> = $conn
                        .transaction(async |$conn: &mut AsyncMysqlConnection| -> Result<_, Failure> {
                            let out = $body.await;
                            committing.store(out.is_ok(), std::sync::atomic::Ordering::Relaxed);
                            out
                        })
                        .await;
                    store.settle($conn, outcome)
                }
                Err(err) => Err(err),
            };
            match result {
                Err(StoreError::Transient(err)) if committing.load(std::sync::atomic::Ordering::Relaxed) => {
                    break Err(StoreError::Unavailable(format!(
                        "{}: the commit failed ({err}); the operation may or may not have been applied",
                        $op
                    )));
                }
                Err(err) if retry.again(&err).await => continue,
                result => break result,
            }
        }
    }};
}

/// Runs `$body` (an expression using `$conn`) inside a transaction of `$conn`.
macro_rules! tx {
    ($conn:ident, $body:expr) => {
        $conn.transaction(async |$conn: &mut AsyncMysqlConnection| -> Result<_, Failure> { $body.await })
    };
}

impl MysqlStore {
    /// Connects to the database of `url` (`mysql://user:password@host:port/database`),
    /// refuses a schema newer than this binary and, when `options.run_migrations` is set,
    /// applies the pending migrations (serialized between processes by a named lock).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when no connection is made within
    /// `options.connect_timeout` (server down, wrong credentials, unknown database),
    /// [`StoreError::SchemaTooNew`] for a database written by a newer Helix,
    /// [`StoreError::Invalid`] for unusable options or URL parameters. No message contains
    /// the password.
    pub async fn connect(url: &url::Url, options: &ConnectOptions) -> StoreResult<Self> {
        if options.pool_size == 0 {
            return Err(StoreError::Invalid("pool size must be at least 1".to_owned()));
        }
        if options.connect_timeout.is_zero() {
            return Err(StoreError::Invalid("connect timeout must be more than zero".to_owned()));
        }
        for (what, bound) in [
            ("lock wait timeout", options.lock_wait_timeout),
            ("idle transaction timeout", options.idle_transaction_timeout),
        ] {
            if bound.is_zero() || bound > Duration::from_secs(86_400) {
                return Err(StoreError::Invalid(format!(
                    "{what} must be between 1 s and a day, not {bound:?}"
                )));
            }
        }
        let redacted = StoreUrl::Mysql(url.clone()).redacted();
        let scrub = Scrubber::new(url);
        let opts = mysql_async::Opts::from_url(url.as_str()).map_err(|e| {
            StoreError::Invalid(scrub.clean(format!("mysql url {redacted} is not usable: {e}")))
        })?;
        let keepalive = u32::try_from(TCP_KEEPALIVE.as_millis()).unwrap_or(u32::MAX);
        let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(opts)
            .client_found_rows(true)
            .stmt_cache_size(0usize)
            .tcp_keepalive(Some(keepalive))
            .init(SESSION_SETUP.to_vec())
            .into();
        let timeout = options.connect_timeout;
        let bounds = (session_bounds(options, false), session_bounds(options, true));
        let mut config = ManagerConfig::<AsyncMysqlConnection>::default();
        // No test query on every checkout: a lost connection fails its first statement, is
        // classified transient, dropped from the pool (see `settle`) and retried.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(move |_url| establish(opts.clone(), timeout, bounds.clone()).boxed());
        let manager = AsyncDieselConnectionManager::new_with_config(redacted.clone(), config);
        let pool = Pool::builder()
            .max_size(options.pool_size)
            .connection_timeout(timeout)
            .max_lifetime(Some(MAX_CONNECTION_LIFETIME))
            .idle_timeout(Some(MAX_CONNECTION_IDLE))
            .build_unchecked(manager);

        // The first connection without the pool's retries, so a refused login says why.
        let conn = match tokio::time::timeout(timeout, pool.dedicated_connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                return Err(StoreError::Unavailable(
                    scrub.clean(format!("cannot connect to {redacted}: {err}")),
                ));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!("no answer from {redacted} within {timeout:?}")));
            }
        };
        let conn = prepare_schema(conn, options.run_migrations, timeout, &scrub).await?;
        // A full pool only means the connection is not needed.
        let _ = pool.add(conn);
        tracing::debug!(url = %redacted, pool_size = options.pool_size, "connected to mysql");
        Ok(Self { pool, url: redacted, scrub })
    }

    async fn checkout(&self) -> StoreResult<PooledConnection<'_, AsyncMysqlConnection>> {
        self.pool.get().await.map_err(|err| match err {
            RunError::TimedOut => StoreError::Unavailable(format!(
                "no database connection to {} within the connect timeout",
                self.url
            )),
            RunError::User(err) => {
                StoreError::Unavailable(self.scrub.clean(format!("cannot connect to {}: {err}", self.url)))
            }
        })
    }

    /// Turns a failure into the caller's error, and marks a lost connection broken so the
    /// pool drops it instead of handing it out again.
    fn settle<T>(&self, conn: &mut AsyncMysqlConnection, outcome: Result<T, Failure>) -> StoreResult<T> {
        outcome.map_err(|failure| match failure {
            Failure::Store(err) => err,
            Failure::Db(err) => {
                let (err, lost) = classify(&err, &self.scrub);
                if lost {
                    <AnsiTransactionManager as TransactionManager<AsyncMysqlConnection>>::transaction_manager_status_mut(
                        conn,
                    )
                    .set_in_error();
                }
                err
            }
        })
    }
}

/// Opens one connection and sets its session up (`SESSION_SETUP`, then the bounds of the
/// server's flavour: `bounds.0` on MySQL, `bounds.1` on MariaDB), all within `timeout`.
async fn establish(
    opts: mysql_async::Opts,
    timeout: Duration,
    bounds: (Vec<String>, Vec<String>),
) -> diesel::ConnectionResult<AsyncMysqlConnection> {
    use mysql_async::prelude::Queryable;
    let bad = |e: mysql_async::Error| ConnectionError::BadConnection(e.to_string());
    let setup = async move {
        let mut conn = mysql_async::Conn::new(opts).await.map_err(bad)?;
        let version: Option<String> = conn.query_first("SELECT VERSION()").await.map_err(bad)?;
        let mariadb = version.is_some_and(|v| v.to_ascii_lowercase().contains("mariadb"));
        for statement in if mariadb { &bounds.1 } else { &bounds.0 } {
            conn.query_drop(statement.as_str()).await.map_err(bad)?;
        }
        AsyncMysqlConnection::try_from(conn).await
    };
    tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| ConnectionError::BadConnection(format!("no answer within {timeout:?}")))?
}

/// Checks the schema version and runs the migrations on `conn`, holding a named lock of the
/// database so that processes starting together migrate one after the other.
async fn prepare_schema(
    mut conn: AsyncMysqlConnection,
    run: bool,
    timeout: Duration,
    scrub: &Scrubber,
) -> StoreResult<AsyncMysqlConnection> {
    // Migrations (and the wait for another process's) may take longer than any statement
    // bound of the pooled sessions.
    ops::unbounded_statements(&mut conn).await.map_err(|e| to_store(e, scrub))?;
    let wait = i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX);
    let locked = ops::named_lock(&mut conn, wait).await.map_err(|e| to_store(e, scrub))?;
    if !locked {
        return Err(StoreError::Unavailable(format!(
            "another process held the migration lock for longer than {timeout:?}"
        )));
    }
    let (conn, result) = tokio::task::spawn_blocking(move || {
        // The wrapper blocks on the runtime's handle: fine on this blocking thread, whose
        // runtime keeps driving the connection's socket meanwhile.
        let mut wrapper: AsyncConnectionWrapper<AsyncMysqlConnection> = AsyncConnectionWrapper::from(conn);
        let result = migrate::check_and_migrate(&mut wrapper, MIGRATIONS, run);
        (wrapper.into_inner(), result)
    })
    .await
    .map_err(|e| StoreError::Database(format!("the migration task failed: {e}")))?;
    let mut conn = conn;
    ops::named_unlock(&mut conn).await.map_err(|e| to_store(e, scrub))?;
    result.map(|()| conn)
}

fn to_store(failure: Failure, scrub: &Scrubber) -> StoreError {
    match failure {
        Failure::Store(err) => err,
        Failure::Db(err) => classify(&err, scrub).0,
    }
}

#[async_trait]
impl Store for MysqlStore {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        run!(self, "now", |conn| ops::now(conn))
    }

    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        run!(self, "create_domain", |conn| tx!(conn, ops::create_domain(conn, name)))
    }

    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        run!(self, "get_domain", |conn| ops::get_domain(conn, name))
    }

    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        run!(self, "list_domains", |conn| ops::list_domains(conn))
    }

    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        run!(self, "delete_domain", |conn| tx!(conn, ops::delete_domain(conn, name)))
    }

    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        spec.validate()?;
        run!(self, "create_queue", |conn| tx!(conn, ops::create_queue(conn, spec)))
    }

    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        run!(self, "get_queue", |conn| ops::get_queue(conn, domain, name))
    }

    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        run!(self, "get_queue_by_id", |conn| ops::get_queue_by_id(conn, id))
    }

    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        run!(self, "list_queues", |conn| ops::list_queues(conn, domain.as_ref()))
    }

    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        run!(self, "delete_queue", |conn| tx!(conn, ops::delete_queue(conn, domain, name)))
    }

    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        registration.validate()?;
        run!(self, "register_worker", |conn| tx!(conn, ops::register_worker(conn, registration)))
    }

    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        validate_lease_duration("session timeout", session_timeout)?;
        // A renewal that is tried again may have committed the first time, answer lost, and
        // with it the record of the assignment versions the worker has seen: a renewal on a
        // second attempt therefore reports that assignments moved, so the worker polls.
        let mut attempts = 0_u32;
        run!(self, "heartbeat", |conn| {
            attempts += 1;
            let retried = attempts > 1;
            let renewal = ops::heartbeat(conn, worker, session_epoch, session_timeout);
            async move {
                let answer = renewal.await?;
                Ok(match answer {
                    Heartbeat::Renewed { .. } if retried => Heartbeat::Renewed { assignments_moved: true },
                    answer => answer,
                })
            }
        })
    }

    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        rules::settable_status(status)?;
        run!(self, "set_worker_status", |conn| tx!(
            conn,
            ops::set_worker_status(conn, worker, session_epoch, status)
        ))
    }

    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        run!(self, "deregister_worker", |conn| tx!(conn, ops::deregister_worker(conn, worker, session_epoch)))
    }

    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        run!(self, "get_worker", |conn| ops::get_worker(conn, worker))
    }

    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        run!(self, "list_workers", |conn| ops::list_workers(conn, filter))
    }

    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        run!(self, "mark_workers_dead", |conn| tx!(conn, ops::mark_workers_dead(conn, fence, workers)))
    }

    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        validate_lease_duration("coordinator lease", lease)?;
        run!(self, "acquire_lease", |conn| tx!(conn, ops::acquire_lease(conn, cluster, holder, lease)))
    }

    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        validate_lease_duration("coordinator lease", lease)?;
        run!(self, "renew_lease", |conn| ops::renew_lease(conn, fence, lease))
    }

    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        run!(self, "release_lease", |conn| tx!(conn, ops::release_lease(conn, fence)))
    }

    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        run!(self, "get_lease", |conn| ops::get_lease(conn, cluster))
    }

    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        // One REPEATABLE READ snapshot for the version and the rows, read without locks: the
        // coordinator's snapshot never waits for (nor blocks) a writer.
        run!(self, "assignments", |conn| async {
            ops::snapshot_next_transaction(conn).await?;
            tx!(conn, ops::assignments(conn, queue)).await
        })
    }

    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        run!(self, "assignments_of", |conn| ops::assignments_of(conn, worker))
    }

    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        run!(self, "apply_plan", |conn| tx!(conn, ops::apply_plan(conn, fence, queue, changes)))
    }

    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        run!(self, "handoff", |conn| tx!(
            conn,
            ops::owner_write(conn, queue, partition, worker, epoch, OwnerWrite::HandOff)
        ))
    }

    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        run!(self, "release_partition", |conn| tx!(
            conn,
            ops::owner_write(conn, queue, partition, worker, epoch, OwnerWrite::Release)
        ))
    }

    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch> {
        run!(self, "fail_partition", |conn| tx!(
            conn,
            ops::owner_write(conn, queue, partition, worker, epoch, OwnerWrite::Fail(detail))
        ))
    }

    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        run!(self, "reset_partition", |conn| tx!(conn, ops::reset_partition(conn, queue, partition)))
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        run!(self, "append_event", |conn| ops::append_event(conn, event))
    }

    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        run!(self, "events_since", |conn| ops::events_since(conn, after, limit))
    }

    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        run!(self, "prune_events", |conn| ops::prune_events(conn, older_than))
    }

    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        let mut out = self.enqueue_tasks(queue, std::slice::from_ref(task)).await?;
        out.pop().ok_or_else(|| StoreError::Database("an enqueue of one task answered nothing".to_owned()))
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        run_once!(self, "enqueue_tasks", |conn| tasks::enqueue(conn, queue, tasks))
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        rules::tasks::validate_batch(limit as usize, "a claim")?;
        run_once!(self, "claim_tasks", |conn| tasks::claim(conn, fence, limit))
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        rules::tasks::validate_batch(ids.len(), "a task write")?;
        let decide = |h: &rules::tasks::TaskHead, _| rules::tasks::after_complete(h, None);
        run!(self, "complete_tasks", |conn| tx!(conn, tasks::owner_write(conn, fence, ids, &decide)))
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        rules::tasks::validate_batch(failures.len(), "a task write")?;
        for f in failures {
            if let Some(retry_in) = f.retry_in {
                rules::tasks::validate_delay(retry_in, "retry delay")?;
            }
        }
        let ids: Vec<TaskId> = failures.iter().map(|f| f.id).collect();
        let decide = |h: &rules::tasks::TaskHead, now| match failures.iter().find(|f| f.id == h.id) {
            Some(f) => rules::tasks::after_failure(h, now, f),
            None => rules::tasks::after_complete(h, None),
        };
        run!(self, "fail_tasks", |conn| tx!(conn, tasks::owner_write(conn, fence, &ids, &decide)))
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        rules::tasks::validate_batch(retries.len(), "a task write")?;
        for r in retries {
            rules::tasks::validate_delay(r.delay, "retry delay")?;
        }
        let ids: Vec<TaskId> = retries.iter().map(|r| r.id).collect();
        let decide = |h: &rules::tasks::TaskHead, now| {
            let delay = retries.iter().find(|r| r.id == h.id).map_or(Duration::ZERO, |r| r.delay);
            rules::tasks::after_retry_later(h, now, delay)
        };
        run!(self, "retry_tasks_later", |conn| tx!(conn, tasks::owner_write(conn, fence, &ids, &decide)))
    }
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        rules::tasks::validate_outcomes(batches)?;
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        // Not tried again after a failed commit: the caller writes the outcomes again, which
        // skips what an applied commit wrote.
        run_once!(self, "record_task_outcomes", |conn| tasks::record_outcomes(conn, batches))
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        rules::tasks::validate_batch(ids.len(), "a task write")?;
        rules::tasks::validate_extension(by)?;
        let decide = |h: &rules::tasks::TaskHead, now| rules::tasks::after_extend(h, now, by);
        run!(self, "extend_tasks", |conn| tx!(conn, tasks::owner_write(conn, fence, ids, &decide)))
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        run!(self, "cancel_task", |conn| tx!(conn, tasks::cancel(conn, id)))
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        run!(self, "recover_partition_tasks", |conn| tx!(conn, tasks::recover(conn, fence)))
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<BTreeMap<PartitionId, DateTime<Utc>>> {
        run!(self, "next_due", |conn| tasks::next_due(conn, queue, partitions))
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        run!(self, "task_counts", |conn| tasks::counts(conn, queue))
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        run!(self, "get_task", |conn| tasks::get(conn, id))
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        rules::tasks::validate_batch(limit as usize, "a page")?;
        run!(self, "list_tasks", |conn| tasks::list(conn, queue, state, after, limit))
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        run!(self, "retry_dead_task", |conn| tx!(conn, tasks::retry_dead(conn, id)))
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        run!(self, "prune_tasks", |conn| async {
            let pruned = tasks::prune(conn, older_than, limit).await?;
            schedules::prune_runs(conn, older_than, limit).await?;
            Ok(pruned)
        })
    }

    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord> {
        run!(self, "create_schedule", |conn| tx!(conn, schedules::create(conn, queue, schedule)))
    }
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        run!(self, "get_schedule", |conn| schedules::get(conn, queue, name))
    }
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        run!(self, "list_schedules", |conn| schedules::list(conn, queue))
    }
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        run!(self, "set_schedule_paused", |conn| tx!(conn, schedules::set_paused(conn, queue, name, paused)))
    }
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        run!(self, "delete_schedule", |conn| tx!(conn, schedules::delete(conn, queue, name)))
    }
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        run!(self, "due_schedules", |conn| schedules::due(conn, horizon, limit))
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
        // Tried again after a failed commit like any coordinator write: a fire that was
        // applied finds its cursor moved and answers Stale, and its slots keep their tasks.
        run!(self, "fire_schedules", |conn| tx!(conn, schedules::fire(conn, fence, fires)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubber_removes_raw_and_decoded_passwords() {
        let url = url::Url::parse("mysql://app:p%40ss@db:3306/helix").expect("valid");
        let scrub = Scrubber::new(&url);
        assert_eq!(scrub.clean("bad p%40ss and p@ss"), "bad *** and ***");
        assert_eq!(Scrubber::new(&url::Url::parse("mysql://app@db/x").expect("valid")).clean("x"), "x");
    }

    #[test]
    fn errors_are_classified_by_what_the_caller_can_do() {
        let scrub = Scrubber::default();
        let db = |kind, msg: &str| DieselError::DatabaseError(kind, Box::new(msg.to_owned()));
        let deadlock = db(
            DatabaseErrorKind::Unknown,
            "Deadlock found when trying to get lock; try restarting transaction",
        );
        assert!(matches!(classify(&deadlock, &scrub), (StoreError::Transient(_), false)));
        let wait = db(DatabaseErrorKind::Unknown, "Lock wait timeout exceeded; try restarting transaction");
        assert!(matches!(classify(&wait, &scrub), (StoreError::Transient(_), false)));
        let lost = db(DatabaseErrorKind::Unknown, "Input/output error: broken pipe");
        assert!(matches!(classify(&lost, &scrub), (StoreError::Transient(_), true)));
        let dup = db(DatabaseErrorKind::UniqueViolation, "Duplicate entry 'x' for key 'PRIMARY'");
        assert!(matches!(classify(&dup, &scrub), (StoreError::Conflict(_), false)));
        let syntax = db(DatabaseErrorKind::Unknown, "You have an error in your SQL syntax");
        assert!(matches!(classify(&syntax, &scrub), (StoreError::Database(_), false)));
    }
}

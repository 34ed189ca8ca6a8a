//! A small pool of plain diesel `SqliteConnection`s. Each operation borrows one connection and
//! runs, whole, on tokio's blocking pool, so async callers never block on SQLite (which
//! waits on file locks for up to the busy timeout).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::{Connection, SqliteConnection};
use tokio::sync::Semaphore;

use super::{Fail, is_busy};
use crate::error::{StoreError, StoreResult};

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// A database file, shared with other connections and processes through WAL.
    File(PathBuf),
    /// A private in-memory database: exactly one connection, kept for the pool's lifetime,
    /// because every new `:memory:` connection would be a new, empty database.
    Memory,
}

impl Target {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Memory => ":memory:".to_owned(),
        }
    }
}

/// The connection pool; cheap to clone.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
}

struct Inner {
    target: Target,
    busy_timeout: Duration,
    acquire_timeout: Duration,
    size: usize,
    idle: Mutex<Vec<SqliteConnection>>,
    memory_opened: AtomicBool,
}

impl Pool {
    /// A pool of at most `size` connections (exactly one for [`Target::Memory`]). Connections
    /// open lazily; each waits up to `busy_timeout` for SQLite's locks, and a caller waits up
    /// to `acquire_timeout` for a free connection.
    pub(super) fn new(target: Target, size: u32, busy_timeout: Duration, acquire_timeout: Duration) -> Self {
        let size = match target {
            Target::Memory => 1,
            Target::File(_) => usize::try_from(size.max(1)).unwrap_or(1),
        };
        Self {
            inner: Arc::new(Inner {
                target,
                busy_timeout,
                acquire_timeout,
                size,
                idle: Mutex::new(Vec::with_capacity(size)),
                memory_opened: AtomicBool::new(false),
            }),
            permits: Arc::new(Semaphore::new(size)),
        }
    }

    /// The database's location, for messages.
    pub(super) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// The most connections the pool opens.
    pub(super) fn size(&self) -> usize {
        self.inner.size
    }

    /// Runs `f` on a pooled connection on the blocking pool. The connection goes back to the
    /// pool from inside the blocking task, so a caller that gives up waiting (a dropped future)
    /// never loses it.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<T, Fail> + Send + 'static,
    {
        let permit =
            tokio::time::timeout(self.inner.acquire_timeout, Arc::clone(&self.permits).acquire_owned())
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "no connection to sqlite database {} became free within {:?}",
                        self.inner.target.describe(),
                        self.inner.acquire_timeout
                    ))
                })?
                .map_err(|_| StoreError::Unavailable("the sqlite connection pool is closed".to_owned()))?;
        let inner = Arc::clone(&self.inner);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = inner.take()?;
            let result = f(&mut conn);
            inner.give_back(conn);
            result
        });
        match task.await {
            Ok(result) => result.map_err(|Fail(err)| err),
            Err(err) => Err(StoreError::Database(format!("sqlite operation did not complete: {err}"))),
        }
    }
}

impl Inner {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<SqliteConnection>> {
        // The vector is always in a consistent state, so a poisoned lock is safe to reuse.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self) -> Result<SqliteConnection, Fail> {
        if let Some(conn) = self.idle().pop() {
            return Ok(conn);
        }
        if self.target == Target::Memory && self.memory_opened.swap(true, Ordering::SeqCst) {
            return Err(Fail(StoreError::Database(
                "the in-memory sqlite database was lost after a failed operation".to_owned(),
            )));
        }
        open(&self.target, self.busy_timeout).map_err(Fail)
    }

    fn give_back(&self, mut conn: SqliteConnection) {
        // A connection whose transaction state is broken is closed, except the one that holds
        // the in-memory database, which must outlive every error.
        let broken =
            <AnsiTransactionManager as TransactionManager<SqliteConnection>>::is_broken_transaction_manager(
                &mut conn,
            );
        if broken && self.target != Target::Memory {
            tracing::warn!(database = %self.target.describe(), "closing a sqlite connection left in a broken transaction");
            return;
        }
        self.idle().push(conn);
    }
}

/// Opens and sets up one connection: busy timeout, foreign keys, `synchronous = NORMAL`, and
/// for files the WAL journal, which lets readers and one writer (from any process on the
/// machine) work at once.
fn open(target: &Target, busy_timeout: Duration) -> Result<SqliteConnection, StoreError> {
    let describe = target.describe();
    let url = match target {
        Target::Memory => ":memory:".to_owned(),
        Target::File(path) => {
            // SQLite's own message would be "unable to open database file".
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                return Err(StoreError::Invalid(format!(
                    "cannot open sqlite database {describe}: directory {} does not exist",
                    dir.display()
                )));
            }
            let text = path.to_str().ok_or_else(|| {
                StoreError::Invalid(format!("sqlite database path {describe} is not valid UTF-8"))
            })?;
            if text.starts_with("file:") || text.starts_with("sqlite:") {
                // SQLite (or diesel) would read it as a URI with options; a plain path is all
                // this store accepts.
                format!("./{text}")
            } else {
                text.to_owned()
            }
        }
    };
    let mut conn = SqliteConnection::establish(&url)
        .map_err(|err| StoreError::Unavailable(format!("cannot open sqlite database {describe}: {err}")))?;
    let millis = busy_timeout.as_millis().clamp(1, i32::MAX as u128);
    let setup =
        format!("PRAGMA busy_timeout = {millis}; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;");
    let set_up_failed =
        |err| StoreError::Unavailable(format!("cannot set up sqlite database {describe}: {err}"));
    conn.batch_execute(&setup).map_err(set_up_failed)?;
    if matches!(target, Target::File(_)) {
        enable_wal(&mut conn, busy_timeout).map_err(set_up_failed)?;
    }
    Ok(conn)
}

/// Switches the file to the WAL journal (a no-op once it is in WAL: the mode is stored in the
/// file). While several processes open a new file at once, SQLite can refuse the switch with
/// "database is locked" without waiting in its busy handler, so this retries for up to
/// `busy_timeout`.
fn enable_wal(conn: &mut SqliteConnection, busy_timeout: Duration) -> diesel::QueryResult<()> {
    let deadline = std::time::Instant::now() + busy_timeout;
    loop {
        match conn.batch_execute("PRAGMA journal_mode = WAL;") {
            Err(diesel::result::Error::DatabaseError(_, info))
                if is_busy(info.message()) && std::time::Instant::now() < deadline =>
            {
                // On tokio's blocking pool (see `Pool::run`), so sleeping blocks no task.
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

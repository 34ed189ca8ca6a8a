//! The Store of Helix: the data model of DESIGN §3 on MySQL/MariaDB (production), SQLite (the
//! embedded default) and in memory (tests on virtual time), behind one [`Store`] trait.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), helix_store::StoreError> {
//! use helix_core::{DomainName, PartitionCount, QueueName};
//! use helix_store::{QueueSpec, connect};
//!
//! let store = connect("memory://").await?;
//! let domain = DomainName::new("domain_order")?;
//! store.create_domain(&domain).await?;
//! let spec = QueueSpec::new(domain, QueueName::new("food_order")?, PartitionCount::new(50)?);
//! let queue = store.create_queue(&spec).await?;
//! assert_eq!(store.assignments(queue.id).await?.rows.len(), 50);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use helix_core::{Clock, MonotonicClock};

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod mem;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod migrate;
mod model;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
mod retry;
pub mod rules;
mod schedules;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
mod tasks;
mod url;

pub use error::{StoreError, StoreResult};
pub use mem::MemStore;
pub use model::*;
#[cfg(feature = "mysql")]
pub use mysql::MysqlStore;
pub use schedules::*;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
#[cfg(feature = "mock")]
pub use store::MockStore;
pub use store::Store;
pub use tasks::*;
pub use url::StoreUrl;

/// How to connect to a store.
///
/// Every bound here serves the leases of `docs/protocol.md`: with the default 3 s session
/// timeout and coordinator lease, a store call must fail well before a lease could run out,
/// so the caller can try again (or step down) in time.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The most connections the pool keeps open (MySQL and SQLite). Default 10.
    pub pool_size: u32,
    /// How long one attempt to open a database connection, or to get one from the pool, may
    /// take before giving up with [`StoreError::Unavailable`] (MySQL; and the first connection
    /// of SQLite). Default 1 s: after a connection reset, a new connection is tried (and a
    /// leader steps down) well inside a lease instead of a whole lease later.
    pub connect_timeout: Duration,
    /// How long SQLite waits for its database lock (its busy timeout) and for a free pooled
    /// connection. Default 5 s. A busy database past it is [`StoreError::Transient`].
    pub busy_timeout: Duration,
    /// MySQL/MariaDB: how long a statement waits for a row lock before failing with a lock
    /// wait timeout (1205, [`StoreError::Transient`], retried), whole seconds, at least 1.
    /// Default 1 s, instead of the server's 50 s: a client stalled inside a transaction
    /// costs the others a short wait, not a round.
    pub lock_wait_timeout: Duration,
    /// MariaDB: how long a transaction may stay idle (no statement running) before the server
    /// ends it and closes its connection, releasing its locks (`idle_transaction_timeout`),
    /// whole seconds, at least 1. Default 5 s. Helix never leaves a transaction idle between
    /// its statements longer than a round trip, so only an abandoned one (a paused, cut off or
    /// blocked client) reaches it. MySQL has no such setting: there an abandoned transaction
    /// lasts until the connection's TCP keepalive or `wait_timeout` ends it.
    pub idle_transaction_timeout: Duration,
    /// MariaDB: the longest one statement may run before the server interrupts it
    /// (`max_statement_time`; the transaction then rolls back and the call fails with
    /// [`StoreError::Database`]). Default 10 s, a backstop far above any statement Helix
    /// issues; migrations run without it. Zero leaves statements unbounded.
    pub statement_timeout: Duration,
    /// Whether to apply pending migrations on connect. Default `true`. Either way a schema
    /// newer than this binary is refused with [`StoreError::SchemaTooNew`].
    pub run_migrations: bool,
    /// The clock of the in-memory store (the SQL stores use the database's). Default: a
    /// [`MonotonicClock`], so a step of the machine's wall clock neither ends nor extends a
    /// lease.
    pub clock: Arc<dyn Clock>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            pool_size: 10,
            connect_timeout: Duration::from_secs(1),
            busy_timeout: Duration::from_secs(5),
            lock_wait_timeout: Duration::from_secs(1),
            idle_transaction_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            run_migrations: true,
            clock: Arc::new(MonotonicClock::new()),
        }
    }
}

/// Connects to the store at `url` with default options; see [`StoreUrl`] for the forms.
///
/// # Errors
/// [`StoreError::Invalid`] for a bad URL or a backend this build leaves out,
/// [`StoreError::Unavailable`] when the database cannot be reached within the connect
/// timeout, [`StoreError::SchemaTooNew`] for a database written by a newer Helix.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    connect_with(url, ConnectOptions::default()).await
}

/// The schema version that [`connect`] brings the database at `url` to: the version of the
/// newest migration this build embeds for its backend (such as `20261130000002`). A database
/// that [`connect`] accepted is at this version. `None` for the in-memory store, which has no
/// schema, and for a backend this build leaves out.
///
/// ```
/// use helix_store::{StoreUrl, schema_version};
///
/// assert_eq!(schema_version(&StoreUrl::Memory), None);
/// # #[cfg(feature = "sqlite")]
/// assert!(schema_version(&StoreUrl::SqliteMemory).is_some());
/// ```
pub fn schema_version(url: &StoreUrl) -> Option<String> {
    match url {
        StoreUrl::Memory => None,
        #[cfg(feature = "mysql")]
        StoreUrl::Mysql(_) => migrate::newest_version::<diesel::mysql::Mysql, _>(mysql::MIGRATIONS),
        #[cfg(feature = "sqlite")]
        StoreUrl::Sqlite(_) | StoreUrl::SqliteMemory => {
            migrate::newest_version::<diesel::sqlite::Sqlite, _>(sqlite::MIGRATIONS)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Connects to the store at `url` with `options`; see [`connect`].
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(url: &str, options: ConnectOptions) -> StoreResult<Arc<dyn Store>> {
    match StoreUrl::parse(url)? {
        StoreUrl::Memory => Ok(Arc::new(MemStore::new(options.clock))),
        #[cfg(feature = "mysql")]
        StoreUrl::Mysql(url) => Ok(Arc::new(MysqlStore::connect(&url, &options).await?)),
        #[cfg(feature = "sqlite")]
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(Some(&path), &options).await?)),
        #[cfg(feature = "sqlite")]
        StoreUrl::SqliteMemory => Ok(Arc::new(SqliteStore::open(None, &options).await?)),
        #[allow(unreachable_patterns)]
        other => {
            Err(StoreError::Invalid(format!("{other} needs a backend this build of helix-store leaves out")))
        }
    }
}

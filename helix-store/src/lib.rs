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
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
#[cfg(feature = "mock")]
pub use store::MockStore;
pub use store::Store;
pub use tasks::*;
pub use url::StoreUrl;

/// How to connect to a store.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The most connections the pool keeps open (MySQL and SQLite). Default 10.
    pub pool_size: u32,
    /// How long to wait for a connection before giving up with
    /// [`StoreError::Unavailable`]. Default 5 s.
    pub connect_timeout: Duration,
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
            connect_timeout: Duration::from_secs(5),
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

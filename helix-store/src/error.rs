//! The error type of every store operation.

use std::time::Duration;

use helix_core::{NameError, WorkerId};

/// What went wrong in a store operation, in terms a caller can act on.
///
/// - [`is_retryable`](StoreError::is_retryable) errors are worth trying again
///   (the MySQL store already did, with capped backoff, before returning one);
/// - [`Fenced`](StoreError::Fenced) means the caller's term or epoch is stale: it must stop
///   acting on its own account, never retry;
/// - [`NotFound`](StoreError::NotFound), [`Conflict`](StoreError::Conflict) and
///   [`Invalid`](StoreError::Invalid) are answers about the request itself.
///
/// No variant ever carries a database password: URLs are redacted before they are formatted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The caller's coordinator term or partition epoch is no longer current; the write did
    /// not happen.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with existing state (a duplicate name, a non-empty domain).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request itself is malformed (a bad name, a partition count out of range, a bad
    /// URL).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A transient failure: lost connection, deadlock (MySQL 1213), lock wait timeout (1205),
    /// a busy SQLite database. Retrying may succeed.
    #[error("transient database failure: {0}")]
    Transient(String),
    /// The database could not be reached within the connect timeout.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database's schema was written by a newer version of Helix than this binary.
    #[error(
        "database schema version {database} is newer than the newest this binary knows ({binary}); \
         upgrade this binary or point it at another database"
    )]
    SchemaTooNew {
        /// The newest migration applied to the database.
        database: String,
        /// The newest migration embedded in this binary.
        binary: String,
    },
    /// A worker id that a live session still holds (ACTIVE or DRAINING, its lease running on
    /// the store's clock) cannot be registered again: one process per identity
    /// (`docs/protocol.md`). Wait for the old lease to end, or for the old process to leave,
    /// or register under another id. Not retried by the store.
    #[error(
        "worker id {worker} is in use by a live session whose lease runs for {}ms more; \
         wait for it to end (or for that process to leave) or register under another id",
        lease_remaining.as_millis()
    )]
    IdInUse {
        /// The id that is in use.
        worker: WorkerId,
        /// How long the live session's lease still runs, on the store's clock.
        lease_remaining: Duration,
    },
    /// Any other database failure; not worth retrying as is.
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient(_) | Self::Unavailable(_))
    }

    /// Whether the caller lost its term or epoch.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Fenced(_))
    }
}

impl From<NameError> for StoreError {
    fn from(err: NameError) -> Self {
        Self::Invalid(err.to_string())
    }
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

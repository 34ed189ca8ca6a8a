//! Schema versions of the SQL stores: refuse a database whose schema is newer than this
//! binary, then apply the pending migrations.
//!
//! It runs on a synchronous diesel connection: for MySQL an `AsyncConnectionWrapper` moved
//! into `tokio::task::spawn_blocking` (the wrapper blocks on the runtime's handle, which must
//! not happen on an async worker thread; see DESIGN §9).

use diesel::backend::Backend;
use diesel::migration::MigrationSource;
use diesel_migrations::MigrationHarness;

use crate::error::{StoreError, StoreResult};

/// Checks the schema version of the database behind `conn` against the migrations of
/// `source` (the ones embedded in this binary), then applies the pending ones when `run` is
/// set.
///
/// # Errors
/// [`StoreError::SchemaTooNew`] when the database has an applied migration that `source`
/// does not know (written by a newer Helix), [`StoreError::Database`] when a migration fails.
pub(crate) fn check_and_migrate<DB, C, S>(conn: &mut C, source: S, run: bool) -> StoreResult<()>
where
    DB: Backend,
    C: MigrationHarness<DB>,
    S: MigrationSource<DB>,
{
    let embedded: Vec<String> = source
        .migrations()
        .map_err(|e| StoreError::Database(format!("cannot read the embedded migrations: {e}")))?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    let applied = conn
        .applied_migrations()
        .map_err(|e| StoreError::Database(format!("cannot read the applied migrations: {e}")))?;
    let unknown = applied.iter().map(ToString::to_string).filter(|v| !embedded.contains(v)).max();
    if let Some(database) = unknown {
        return Err(StoreError::SchemaTooNew {
            database,
            binary: embedded.iter().max().cloned().unwrap_or_else(|| "none".to_owned()),
        });
    }
    if run {
        let done = conn
            .run_pending_migrations(source)
            .map_err(|e| StoreError::Database(format!("migration failed: {e}")))?;
        for version in &done {
            tracing::info!(version = %version, "applied migration");
        }
    }
    Ok(())
}

/// The version of the newest migration of `source`: the schema version a database reaches
/// once its migrations have run. `None` when `source` has none or cannot be read.
pub(crate) fn newest_version<DB: Backend, S: MigrationSource<DB>>(source: S) -> Option<String> {
    source.migrations().ok()?.iter().map(|m| m.name().version().to_string()).max()
}

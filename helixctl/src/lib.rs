//! The library half of `helixctl`: the scheduler server of `helixctl serve` ([`serve`]), so
//! that it can be embedded and tested in-process. The commands themselves live in the binary.

pub mod serve;

/// The database used when neither `--database-url` nor `HELIX_DATABASE_URL` names one: a
/// SQLite file in the current directory, created (and migrated) on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://helix.db";

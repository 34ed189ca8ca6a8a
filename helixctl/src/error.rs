//! What can go wrong, and the exit code each answer gets.

use helix_actors::client::ClientError;
use helix_store::StoreError;

/// Why a command failed. Each message says what was wrong and, where there is one, what to
/// do about it; none contains a database password (store errors are redacted at the source).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Input that the command line's parsers could not check (a name, a limit, a cron
    /// expression the store refused): exit 2, like clap's own usage errors.
    #[error("{0}")]
    Usage(String),
    /// The named thing does not exist: exit 1.
    #[error("{0}")]
    NotFound(String),
    /// The store refused (a conflict) or failed: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process's exit code for this error: 2 for bad usage, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::NotFound(_) | Self::Failed(_) => 1,
        }
    }

    /// Replaces the message of a `NotFound` with `message` (naming the thing and what to do);
    /// other errors pass unchanged.
    pub(crate) fn when_not_found(self, message: impl FnOnce() -> String) -> Self {
        match self {
            Self::NotFound(_) => Self::NotFound(message()),
            other => other,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(_) => Self::NotFound(err.to_string()),
            StoreError::Invalid(_) => Self::Usage(err.to_string()),
            StoreError::Unavailable(_) => Self::Failed(format!(
                "{err}; check --database-url (or HELIX_DATABASE_URL) and that the database is up"
            )),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Invalid(name) => Self::Usage(name.to_string()),
            ClientError::Store(store) => store.into(),
            ClientError::Webhook(webhook) => Self::Usage(webhook.to_string()),
        }
    }
}

impl From<helix_core::NameError> for CliError {
    fn from(err: helix_core::NameError) -> Self {
        Self::Usage(err.to_string())
    }
}

/// The result of a command.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;

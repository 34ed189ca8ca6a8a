//! What bounded calls need from the runtime.

use helix_store::StoreError;

/// `Some(Unavailable)` when the caller is polled outside any tokio runtime, where a timer
/// cannot be made (tokio panics: "there is no reactor running"). Actix polls an actor's
/// pending items once more when its system is dropped with the actor still running, outside
/// the runtime that is being dropped; a bounded store call started then is not sent and fails
/// as if the store had not answered.
pub(crate) fn stopped(what: &str) -> Option<StoreError> {
    tokio::runtime::Handle::try_current()
        .is_err()
        .then(|| StoreError::Unavailable(format!("{what} not sent: the runtime has stopped")))
}

//! `MockStore` (feature `mock`) lets callers of the `Store` trait script its answers.

use std::sync::Arc;
use std::time::Duration;

use helix_core::{SessionEpoch, WorkerId};
use helix_store::{Heartbeat, MockStore, Store, StoreError};

#[tokio::test]
async fn a_mock_store_answers_as_scripted() {
    let worker = WorkerId::new_v7();
    let mut mock = MockStore::new();
    mock.expect_heartbeat()
        .withf(move |w, s, _| *w == worker && *s == SessionEpoch(1))
        .times(1)
        .returning(|_, _, _| Ok(Heartbeat::Expired));
    mock.expect_heartbeat().returning(|_, _, _| Err(StoreError::Transient("connection lost".into())));
    let store: Arc<dyn Store> = Arc::new(mock);

    let timeout = Duration::from_secs(3);
    assert_eq!(store.heartbeat(worker, SessionEpoch(1), timeout).await, Ok(Heartbeat::Expired));
    let err = store.heartbeat(worker, SessionEpoch(2), timeout).await.expect_err("scripted failure");
    assert!(err.is_retryable());
}

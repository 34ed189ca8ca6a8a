//! Task checks shared by the virtual-time and the SQL task tests.

use std::time::Duration;

use helix_actors::client::{Client, ClientError, TaskSpec};
use helix_store::{Store, StoreError};

/// Bad input to the client (the domain `shop` with the queue `orders` of 4 partitions, no
/// task yet) gets a clear error and writes nothing.
pub async fn bad_input_is_refused(client: &Client, store: &dyn Store) {
    let unknown_queue = client.enqueue("shop", "nope", TaskSpec::new("x")).await;
    assert!(matches!(unknown_queue, Err(ClientError::Store(StoreError::NotFound(_)))));
    let unknown_domain = client.enqueue("nowhere", "orders", TaskSpec::new("x")).await;
    assert!(matches!(unknown_domain, Err(ClientError::Store(StoreError::NotFound(_)))));
    let bad_name = client.enqueue("shop", "bad name!", TaskSpec::new("x")).await;
    assert!(matches!(bad_name, Err(ClientError::Invalid(_))));
    let now = store.now().await.expect("now");
    let cases = [
        ("payload", TaskSpec::new(vec![0u8; helix_store::MAX_PAYLOAD_BYTES + 1])),
        ("run_at", TaskSpec::new("x").run_at(now + chrono::Duration::days(365 * 11))),
        ("run_at", TaskSpec::new("x").run_at(chrono::DateTime::UNIX_EPOCH - chrono::Duration::seconds(1))),
        ("max attempts", TaskSpec::new("x").max_attempts(0)),
        ("partition", TaskSpec::new("x").partition(4)),
        ("dedup key", TaskSpec::new("x").dedup_key("k".repeat(256))),
        ("timeout", TaskSpec::new("x").timeout(Duration::ZERO)),
    ];
    for (what, spec) in cases {
        match client.enqueue("shop", "orders", spec).await {
            Err(ClientError::Store(StoreError::Invalid(message))) => {
                assert!(message.contains(what), "the error names the {what}: {message}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A batch with one bad task writes none.
    let batch = vec![TaskSpec::new("fine"), TaskSpec::new("x").max_attempts(0)];
    assert!(client.enqueue_batch("shop", "orders", batch).await.is_err());
    assert!(client.task_counts("shop", "orders").await.expect("counts").is_empty(), "nothing was written");
    // A valid store-level task still goes in (the queue is fine).
    let ok = client.enqueue("shop", "orders", TaskSpec::new("fine")).await.expect("enqueue");
    assert!(ok.created);
}

//! Event retention: a leading coordinator node deletes the events older than
//! `event_retention`.

use std::sync::Arc;
use std::time::Duration;

use helix_actors::TokioClock;
use helix_actors::node::CoordinatorNode;
use helix_core::ClusterConfig;
use helix_store::{EventKind, MemStore, NewEvent, Store};

#[actix::test]
async fn a_leading_coordinator_prunes_events_past_the_retention() {
    tokio::time::pause();
    let store: Arc<dyn Store> = Arc::new(MemStore::new(Arc::new(TokioClock::new())));
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(store.append_event(&NewEvent::new(EventKind::PartitionReset)).await.expect("append"));
    }
    let retention = Duration::from_secs(60);
    let config = ClusterConfig { event_retention: retention, ..ClusterConfig::default() };
    let node = CoordinatorNode::new(Arc::clone(&store), config).start().expect("start");
    tokio::time::sleep(retention / 2).await;
    let kept = store.events_since(0, 1_000).await.expect("events");
    assert!(old.iter().all(|id| kept.iter().any(|e| e.id == *id)), "younger than the retention: kept");
    let fresh = store.append_event(&NewEvent::new(EventKind::PartitionReset)).await.expect("append");

    let deadline = tokio::time::Instant::now() + retention * 2;
    loop {
        let left = store.events_since(0, 1_000).await.expect("events");
        if old.iter().all(|id| left.iter().all(|e| e.id != *id)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "old events still there: {left:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        store.events_since(0, 1_000).await.expect("events").iter().any(|e| e.id == fresh),
        "the recent history stays"
    );
    node.stop().await;
}

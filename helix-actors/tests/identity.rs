//! One process per identity (docs/protocol.md): a worker cannot start under the id of a live
//! session, and says why.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_actors::TokioClock;
use helix_actors::node::{NodeError, Worker};
use helix_actors::worker::{HandlerError, PartitionContext, PartitionHandler};
use helix_core::{ClusterConfig, DomainName, PartitionCount, QueueName, WorkerId};
use helix_store::{MemStore, QueueSpec, Store, StoreError};

struct Idle;

#[async_trait(?Send)]
impl PartitionHandler for Idle {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn revoked(&mut self, _: &PartitionContext) {}
}

#[actix::test]
async fn a_worker_cannot_start_under_the_id_of_a_live_session() {
    tokio::time::pause();
    let store: Arc<dyn Store> = Arc::new(MemStore::new(Arc::new(TokioClock::new())));
    let domain = DomainName::new("domain_order").expect("name");
    store.create_domain(&domain).await.expect("domain");
    let spec = QueueSpec::new(
        domain,
        QueueName::new("food_order").expect("name"),
        PartitionCount::new(4).expect("4"),
    );
    let queue = store.create_queue(&spec).await.expect("queue");
    let config = ClusterConfig::default();
    let id = WorkerId::new_v7();
    let builder = || {
        Worker::builder(Arc::clone(&store), config.clone())
            .id(id)
            .serve(queue.id, 1)
            .handler_fn(|_| Box::new(Idle))
    };

    let first = builder().start().await.expect("the first process starts");
    let refused = builder().start().await;
    let Err(NodeError::Store(err @ StoreError::IdInUse { worker, lease_remaining })) = refused else {
        panic!("a second process started under a live id: {refused:?}");
    };
    assert_eq!(worker, id);
    assert!(lease_remaining > Duration::ZERO && lease_remaining <= config.session_timeout);
    assert!(err.to_string().contains(&id.to_string()), "{err}");
    tokio::time::sleep(config.heartbeat_interval * 3).await;
    let status = first.status().await.expect("the first process runs on");
    assert_eq!(status.session_epoch.map(|s| s.0), Some(1), "its session was not superseded");

    // Once the first has left, the id is free again: a new session.
    first.leave().await.expect("leave");
    let second = builder().start().await.expect("the id is free");
    assert_eq!(second.status().await.expect("status").session_epoch.map(|s| s.0), Some(2));
    second.leave().await.expect("leave");
}

//! How to test your own partition handler deterministically with Helix's testing kit.
//!
//! `OrderProjector` below is an application's handler: while it owns a partition it keeps a
//! projection row for it in an external system (here a shared map standing in for a
//! database), and it fences its own writes with the partition's epoch so that a previous
//! owner can never overwrite a newer one. The test runs two workers and a coordinator on
//! virtual time, kills one worker, and checks the application's own invariant (every
//! partition projected by exactly the live owner, at a growing epoch) as well as the kit's
//! (no two workers ever ran a partition at once). A minute of cluster time takes
//! milliseconds, and every run is the same.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use helix_actors::testing::SimCluster;
use helix_actors::worker::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};
use helix_core::{ClusterConfig, Epoch, PartitionId, WorkerId};

/// The external system: per partition, who projects it and under which epoch.
type Projections = Arc<Mutex<BTreeMap<PartitionId, (WorkerId, Epoch)>>>;

/// The application's handler.
struct OrderProjector {
    projections: Projections,
}

#[async_trait(?Send)]
impl PartitionHandler for OrderProjector {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        let mut projections = self.projections.lock().map_err(|_| HandlerError::msg("poisoned"))?;
        // Fence the side effect with the epoch, as a conditional write would in a database.
        if let Some((_, epoch)) = projections.get(&ctx.partition)
            && *epoch > ctx.epoch
        {
            return Err(HandlerError::msg("a newer owner already projects this partition"));
        }
        projections.insert(ctx.partition, (ctx.worker, ctx.epoch));
        Ok(())
    }

    async fn revoked(&mut self, ctx: &PartitionContext) {
        if let Ok(mut projections) = self.projections.lock()
            && projections.get(&ctx.partition).is_some_and(|(w, e)| *w == ctx.worker && *e == ctx.epoch)
        {
            projections.remove(&ctx.partition);
        }
    }
}

fn factory(projections: &Projections) -> HandlerFactory {
    let projections = Arc::clone(projections);
    Arc::new(move |_ctx| Box::new(OrderProjector { projections: Arc::clone(&projections) }))
}

#[actix::test]
async fn projections_follow_the_owners_through_a_crash() {
    tokio::time::pause();
    let config = ClusterConfig::default();
    let mut cluster = SimCluster::new(config.clone()).await.expect("cluster");
    let queue = cluster.create_queue("orders", "projections", 8).await.expect("queue");
    cluster.add_coordinator();
    let projections = Projections::default();
    let first = cluster.add_worker(&[(&queue, 1)], factory(&projections));
    let second = cluster.add_worker(&[(&queue, 1)], factory(&projections));

    let settled = || async { projections.lock().expect("map").len() == 8 };
    assert!(cluster.wait_until(Duration::from_secs(10), settled).await, "every partition projected");
    let before = projections.lock().expect("map").clone();
    let per_worker = |map: &BTreeMap<PartitionId, (WorkerId, Epoch)>, w: WorkerId| {
        map.values().filter(|(owner, _)| *owner == w).count()
    };
    assert_eq!((per_worker(&before, first.id()), per_worker(&before, second.id())), (4, 4));

    // A crash: no goodbye, so the first worker's projections stay until its lease runs out
    // and the survivor takes its partitions over at a higher epoch.
    cluster.kill(&first);
    let taken_over = || async {
        let map = projections.lock().expect("map");
        map.len() == 8 && map.values().all(|(owner, _)| *owner == second.id())
    };
    let limit = config.session_timeout + Duration::from_secs(2);
    assert!(cluster.wait_until(limit, taken_over).await, "the survivor projects everything");
    let after = projections.lock().expect("map").clone();
    for (partition, (owner, epoch)) in &before {
        let (_, now) = after[partition];
        if *owner == first.id() {
            assert!(now > *epoch, "partition {partition} moved under a higher epoch");
        } else {
            assert_eq!(now, *epoch, "partition {partition} did not move");
        }
    }
    cluster.check_invariants().await.expect("no partition ever ran on two workers at once");
    cluster.check_settled(&queue).await.expect("settled");
}

//! A custom allocator actor plugged into a coordinator node: a zone-aware allocator.
//!
//! Workers carry a `zone` label. The zones in use, sorted, are numbered 0, 1, …; partition `p`
//! goes to a worker of zone `p % zones`, the zone's workers taking its partitions in turn.
//! Workers without a zone label serve zone `default`.
//!
//! ```sh
//! cargo run -p helix-examples --bin custom_allocator
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use actix::prelude::*;
use helix_actors::client::Client;
use helix_actors::coordinator::{Allocate, AllocateError, AllocateResult, AllocationRequest};
use helix_actors::node::{CoordinatorNode, Worker};
use helix_core::allocation::{Allocation, Assignment, Unassigned, UnassignedReason};
use helix_core::{ClusterConfig, PartitionId, WorkerId, WorkerState};
use helix_examples::{LoggingHandler, init_tracing, watch_until_settled};

/// The label that names a worker's zone.
const ZONE: &str = "zone";

/// Gives partition `p` to a worker of zone `p % zones`.
///
/// Deterministic, as an allocator must be: the answer depends on the set of workers and their
/// labels, never on their order in the request. It never gives a partition to a draining
/// worker; with no active worker every partition is left without an owner. For brevity it
/// ignores the queue's constraints (`request.constraints`: required labels, a limit per
/// worker), which an allocator for real use must honour.
struct ZoneAware;

impl Actor for ZoneAware {
    type Context = Context<Self>;
}

impl Handler<Allocate> for ZoneAware {
    type Result = AllocateResult;

    /// The coordinator asks for every queue of the cluster at once; this allocator decides
    /// each queue on its own.
    fn handle(&mut self, msg: Allocate, _: &mut Self::Context) -> AllocateResult {
        msg.each(zone_aware)
    }
}

/// The target of one queue.
fn zone_aware(request: &AllocationRequest) -> Result<Allocation, AllocateError> {
    // zone → its active workers, sorted by id.
    let mut zones: BTreeMap<&str, Vec<WorkerId>> = BTreeMap::new();
    for worker in request.workers.iter().filter(|w| w.state == WorkerState::Active) {
        let zone = worker.labels.get(ZONE).map_or("default", String::as_str);
        zones.entry(zone).or_default().push(worker.id);
    }
    for workers in zones.values_mut() {
        workers.sort_unstable();
    }
    let zones: Vec<Vec<WorkerId>> = zones.into_values().collect();
    let partitions = request.current.len();
    let partitions_u32 = request.queue.partition_count.get();
    if zones.is_empty() {
        let unassigned = (0..partitions)
            .map(|p| Unassigned {
                partition: PartitionId(u32::try_from(p).unwrap_or(u32::MAX)),
                reason: UnassignedReason::NoEligibleWorker,
            })
            .collect();
        return Ok(Allocation { assignment: Assignment::unassigned(partitions_u32), unassigned });
    }
    let owners = (0..partitions).map(|p| {
        let zone = &zones[p % zones.len()];
        // The zone's partitions are p, p + zones, p + 2·zones, …: take turns within it.
        Some(zone[(p / zones.len()) % zone.len()])
    });
    Ok(Allocation { assignment: Assignment::from_owners(owners), unassigned: Vec::new() })
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let client = Client::connect("memory://").await?;
    let queue = client.ensure_queue("domain_order", "food_order", 12).await?;
    let config = ClusterConfig::default();

    let allocator = ZoneAware.start();
    let coordinator =
        CoordinatorNode::new(client.store(), config.clone()).with_allocator(allocator.recipient()).start()?;

    let mut workers = Vec::new();
    let mut zone_of = BTreeMap::new();
    let mut letters = BTreeMap::new();
    for (letter, zone) in [('A', "eu-west"), ('B', "eu-west"), ('C', "us-east"), ('D', "ap-south")] {
        let worker = Worker::builder(client.store(), config.clone())
            .serve(queue.id, 1)
            .label(ZONE, zone)
            .handler_fn(|_| Box::new(LoggingHandler))
            .start()
            .await?;
        println!("worker {letter} in zone {zone}");
        zone_of.insert(worker.id(), zone);
        letters.insert(worker.id(), letter);
        workers.push(worker);
    }

    let owners: BTreeSet<WorkerId> = workers.iter().map(|w| w.id()).collect();
    let (map, _) =
        watch_until_settled(&client, queue.id, &owners, &letters, Duration::from_secs(60), false).await?;
    println!("\n{}\n", map.render(&letters));

    // Zones sorted: ap-south = 0, eu-west = 1, us-east = 2.
    let zones: Vec<&str> = zone_of.values().copied().collect::<BTreeSet<_>>().into_iter().collect();
    for p in 0..queue.partition_count.get() {
        let owner = map.owner(PartitionId(p)).ok_or_else(|| anyhow::anyhow!("partition {p} has no owner"))?;
        let zone = zone_of.get(&owner).copied().unwrap_or("?");
        let wanted = zones[p as usize % zones.len()];
        anyhow::ensure!(zone == wanted, "partition {p} is in zone {zone}, not {wanted}");
        println!("partition {p:>2} → worker {} in zone {zone}", letters.get(&owner).copied().unwrap_or('?'));
    }
    println!("every partition is in its zone");

    for worker in workers {
        worker.leave().await?;
    }
    coordinator.stop().await;
    println!("custom allocator example finished");
    Ok(())
}

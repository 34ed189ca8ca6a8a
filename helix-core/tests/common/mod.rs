//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use helix_core::allocation::Assignment;
use helix_core::{PartitionId, WorkerId, WorkerInfo};
use uuid::Uuid;

/// A worker id that sorts by `i`.
pub fn wid(i: u64) -> WorkerId {
    WorkerId::from_uuid(Uuid::from_u128((u128::from(i) << 64) | 0x7000_8000_0000_0000))
}

/// Workers `0..n` with the given capacities (1 where the slice is short).
pub fn workers(n: usize, capacities: &[u32]) -> Vec<WorkerInfo> {
    (0..n)
        .map(|i| {
            let capacity = capacities.get(i).copied().and_then(NonZeroU32::new).unwrap_or(NonZeroU32::MIN);
            WorkerInfo::new(wid(i as u64)).with_capacity(capacity)
        })
        .collect()
}

/// An assignment where `owners[p]` is an index into `ids`, or anything beyond for no owner.
pub fn assignment(ids: &[WorkerId], owners: &[usize]) -> Assignment {
    Assignment::from_owners(owners.iter().map(|&o| ids.get(o).copied()))
}

/// The load of every worker, in the order of `workers`.
pub fn loads(assignment: &Assignment, workers: &[WorkerInfo]) -> Vec<u32> {
    workers.iter().map(|w| assignment.load(w.id)).collect()
}

/// Partitions whose owner before was one of `live` and changed.
pub fn live_moves(before: &Assignment, after: &Assignment, live: &[WorkerInfo]) -> usize {
    let live: BTreeSet<WorkerId> = live.iter().map(|w| w.id).collect();
    (0..before.len() as u32)
        .map(PartitionId)
        .filter(|&p| {
            before.owner(p).is_some_and(|owner| live.contains(&owner)) && before.owner(p) != after.owner(p)
        })
        .count()
}

/// The fewest partitions that must leave a live owner for a balanced result: every worker
/// ends with ⌊share⌋, or ⌈share⌉ when its share is fractional, and `r` of them get the ceil.
/// Computed independently of the strategy's code.
pub fn optimal_live_moves(partitions: u32, before: &Assignment, workers: &[WorkerInfo]) -> usize {
    let total: u64 = workers.iter().map(|w| u64::from(w.capacity.get())).sum();
    let p = u64::from(partitions);
    let mut kept = 0u64;
    let mut given = 0u64;
    let mut candidates = 0u64;
    for w in workers {
        let c = u64::from(w.capacity.get());
        let base = p * c / total;
        let fractional = p * c % total != 0;
        let held = u64::from(before.load(w.id));
        kept += held.min(base);
        given += base;
        if fractional && held > base {
            candidates += 1;
        }
    }
    let extra = p - given;
    kept += extra.min(candidates);
    let held_by_live: u64 = workers.iter().map(|w| u64::from(before.load(w.id))).sum();
    (held_by_live - kept) as usize
}

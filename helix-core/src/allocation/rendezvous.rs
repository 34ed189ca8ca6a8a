//! Highest-random-weight (rendezvous) hashing.

use crate::allocation::{
    Allocation, AllocationError, AllocationInput, AllocationStrategy, Assignment, Prepared, Unassigned,
};
use crate::ids::{PartitionId, WorkerId};

/// Highest random weight: every partition goes to the eligible worker with the highest
/// [`rendezvous_score`] for it.
///
/// It needs no table and no current state: anyone who knows the workers and the queue can
/// compute where a partition lives, and a join or a leave moves only the partitions the
/// changed worker wins or held (about `P/N` of them). Balance is statistical, not exact: each
/// worker's count is a binomial draw, so its spread grows like `√(P/N)` per queue, nothing
/// bounds it (a worker may get nothing when `P/N` is small), and nothing bounds a worker's
/// total over queues either; the queue salt only makes the queues' draws independent, so
/// totals over `Q` queues spread like `√(Q·P/N)` instead of `Q·√(P/N)`. Capacity weights use the logarithmic method (a worker of
/// weight `w` wins with probability proportional to `w`); with equal weights the integer
/// scores are compared directly.
///
/// With `max_partitions_per_worker`, partitions are placed in partition order and skip
/// workers that are full, so placement then depends on the partition order too.
///
/// Cost: `O(P × N)` hash evaluations — fine for thousands of partitions, slow for a million
/// partitions over ten thousand workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RendezvousHash;

impl RendezvousHash {
    /// The strategy's name in a queue's `allocator` column.
    pub const NAME: &'static str = "rendezvous";
}

/// The golden-ratio increment of splitmix64.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", 2014): a bijective 64-bit mix with full avalanche.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn worker_key(worker: WorkerId) -> u64 {
    let (high, low) = worker.as_uuid().as_u64_pair();
    mix64(high ^ mix64(low))
}

fn partition_key(queue: u64, partition: PartitionId) -> u64 {
    mix64(u64::from(partition.0).wrapping_add(GOLDEN) ^ mix64(queue))
}

/// The rendezvous score of `worker` for `partition`. It is stable across processes, machines,
/// platforms and releases, because it is defined here rather than by a library:
///
/// ```text
/// mix64(z)        = splitmix64 finaliser:
///                   z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9
///                   z = (z ^ z >> 27) * 0x94D049BB133111EB
///                   z ^ z >> 31                       (wrapping 64-bit arithmetic)
/// worker_key(w)   = mix64(high ^ mix64(low))           (high, low: the UUID's bytes 0-7 and
///                                                       8-15 read big-endian)
/// partition_key(q, p) = mix64((p + 0x9E3779B97F4A7C15) ^ mix64(q))
/// score(q, w, p)  = mix64(worker_key(w) ^ partition_key(q, p))
/// ```
///
/// `q` is the queue's salt ([`AllocationInput::queue`](crate::allocation::AllocationInput)):
/// without it every queue served by the same workers would get the very same placement, so the
/// workers that win many partitions in one queue would win them in every queue. With `q = 0`
/// (`mix64(0) = 0`) the score is that of the unsalted formula.
///
/// ```
/// use helix_core::allocation::rendezvous_score;
/// use helix_core::{PartitionId, WorkerId};
///
/// let worker: WorkerId = "01890a5d-ac96-774b-bcce-b302099a8057".parse().expect("uuid");
/// assert_eq!(rendezvous_score(1, worker, PartitionId(7)), rendezvous_score(1, worker, PartitionId(7)));
/// assert_ne!(rendezvous_score(1, worker, PartitionId(7)), rendezvous_score(1, worker, PartitionId(8)));
/// assert_ne!(rendezvous_score(1, worker, PartitionId(7)), rendezvous_score(2, worker, PartitionId(7)));
/// ```
pub fn rendezvous_score(queue: u64, worker: WorkerId, partition: PartitionId) -> u64 {
    mix64(worker_key(worker) ^ partition_key(queue, partition))
}

/// The weighted score `weight / -ln(u)` for a uniform `u` in (0, 1) taken from the top 53
/// bits of the integer score.
fn weighted(score: u64, weight: f64) -> f64 {
    let unit = ((score >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -unit.ln()
}

impl AllocationStrategy for RendezvousHash {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn allocate(&self, input: &AllocationInput<'_>) -> Result<Allocation, AllocationError> {
        let prepared = Prepared::new(input)?;
        let eligible = &prepared.eligible_indices;
        let keys: Vec<u64> = eligible.iter().map(|&i| worker_key(prepared.ids[i as usize])).collect();
        let weights: Vec<f64> =
            eligible.iter().map(|&i| f64::from(prepared.workers[i as usize].capacity.get())).collect();
        let equal_weights = weights.windows(2).all(|pair| pair[0] == pair[1]);
        let max = input.constraints.max_partitions_per_worker.unwrap_or(u32::MAX);
        let mut count = vec![0u32; prepared.ids.len()];
        let reason = prepared.unassigned_reason();
        let mut unassigned = Vec::new();
        let mut owners = Vec::with_capacity(input.current.len());
        for partition in 0..input.partition_count() {
            let pk = partition_key(input.queue, PartitionId(partition));
            // Ties (practically impossible) go to the lower worker id: the scan is in id order
            // and only a strictly higher score replaces the best so far.
            let mut best: Option<usize> = None;
            if equal_weights {
                let mut best_score = 0u64;
                for (slot, &key) in keys.iter().enumerate() {
                    let score = mix64(key ^ pk);
                    if (best.is_none() || score > best_score) && count[eligible[slot] as usize] < max {
                        best = Some(slot);
                        best_score = score;
                    }
                }
            } else {
                let mut best_score = f64::NEG_INFINITY;
                for (slot, &key) in keys.iter().enumerate() {
                    let score = weighted(mix64(key ^ pk), weights[slot]);
                    if (best.is_none() || score > best_score) && count[eligible[slot] as usize] < max {
                        best = Some(slot);
                        best_score = score;
                    }
                }
            }
            match best {
                Some(slot) => {
                    let index = eligible[slot];
                    count[index as usize] += 1;
                    owners.push(index);
                }
                None => {
                    owners.push(Assignment::NO_OWNER);
                    unassigned.push(Unassigned { partition: PartitionId(partition), reason });
                }
            }
        }
        Ok(Allocation { assignment: Assignment::from_trusted_parts(prepared.ids, owners, count), unassigned })
    }
}

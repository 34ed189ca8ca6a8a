//! The plain baseline: partition `p` goes to the `p mod N`-th eligible worker.

use crate::allocation::{
    Allocation, AllocationError, AllocationInput, AllocationStrategy, Assignment, Prepared, Unassigned,
};
use crate::ids::PartitionId;

/// Partition `p` goes to the `(p mod N)`-th eligible worker in id order; when that worker is
/// at `max_partitions_per_worker`, to the next one that is not.
///
/// It balances exactly (⌊P/N⌋ or ⌈P/N⌉) but ignores capacity weights, the current owners and
/// the load of other queues, so a join or a leave moves almost every partition. It is here as
/// the baseline to compare with (it is what gox-helix does), not for production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundRobin;

impl RoundRobin {
    /// The strategy's name in a queue's `allocator` column.
    pub const NAME: &'static str = "round-robin";
}

impl AllocationStrategy for RoundRobin {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn allocate(&self, input: &AllocationInput<'_>) -> Result<Allocation, AllocationError> {
        let prepared = Prepared::new(input)?;
        let eligible = &prepared.eligible_indices;
        let n = eligible.len();
        let max = input.constraints.max_partitions_per_worker.unwrap_or(u32::MAX);
        let mut count = vec![0u32; prepared.ids.len()];
        let mut full = if max == 0 { n } else { 0 };
        let reason = prepared.unassigned_reason();
        let mut unassigned = Vec::new();
        let mut owners = Vec::with_capacity(input.current.len());
        let partitions = input.partition_count();
        if n > 0 && (max as u64) * (n as u64) >= u64::from(partitions) + n as u64 {
            // No worker can fill up: plain cycling, and the counts follow from arithmetic.
            owners.extend(eligible.iter().copied().cycle().take(partitions as usize));
            for (position, &index) in eligible.iter().enumerate() {
                count[index as usize] =
                    partitions / n as u32 + u32::from((position as u32) < partitions % n as u32);
            }
            return Ok(Allocation {
                assignment: Assignment::from_trusted_parts(prepared.ids, owners, count),
                unassigned,
            });
        }
        for partition in 0..partitions {
            if full == n {
                owners.push(Assignment::NO_OWNER);
                unassigned.push(Unassigned { partition: PartitionId(partition), reason });
                continue;
            }
            let start = partition as usize % n;
            let chosen = (0..n)
                .map(|step| eligible[(start + step) % n])
                .find(|&index| count[index as usize] < max)
                .unwrap_or(Assignment::NO_OWNER);
            if let Some(held) = count.get_mut(chosen as usize) {
                *held += 1;
                if *held == max {
                    full += 1;
                }
            }
            owners.push(chosen);
        }
        Ok(Allocation { assignment: Assignment::from_trusted_parts(prepared.ids, owners, count), unassigned })
    }
}

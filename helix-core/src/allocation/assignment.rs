//! The compact partition → owner table shared by every strategy.

use std::collections::BTreeMap;

use crate::allocation::AllocationError;
use crate::ids::{PartitionId, WorkerId};

/// The owner of every partition of one queue, as a compact table.
///
/// Owners are stored as `u32` indices into a small table of worker ids, so an allocator maps
/// partitions to workers with array lookups only: no hashing and no 16-byte comparisons per
/// partition. Two assignments are equal when every partition has the same owner, whatever the
/// order of their internal worker tables.
///
/// ```
/// use helix_core::allocation::Assignment;
/// use helix_core::{PartitionId, WorkerId};
///
/// let (a, b) = (WorkerId::new_v7(), WorkerId::new_v7());
/// let assignment = Assignment::from_owners([Some(a), Some(b), None, Some(a)]);
/// assert_eq!(assignment.len(), 4);
/// assert_eq!(assignment.owner(PartitionId(1)), Some(b));
/// assert_eq!(assignment.load(a), 2);
/// assert_eq!(assignment.unowned(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Assignment {
    /// The worker table, without duplicates.
    workers: Vec<WorkerId>,
    /// For every partition, an index into `workers` or [`Assignment::NO_OWNER`].
    owners: Vec<u32>,
    /// For every entry of `workers`, how many partitions it owns.
    counts: Vec<u32>,
}

impl Assignment {
    /// The index that stands for "no owner" in [`Assignment::from_parts`].
    pub const NO_OWNER: u32 = u32::MAX;

    /// An assignment of `partition_count` partitions, none of them owned.
    pub fn unassigned(partition_count: u32) -> Self {
        Self {
            workers: Vec::new(),
            owners: vec![Self::NO_OWNER; partition_count as usize],
            counts: Vec::new(),
        }
    }

    /// Builds an assignment from the owner of every partition, in partition order.
    ///
    /// This looks every owner up in an ordered map (runs of one owner are looked up once), so
    /// it costs `O(P log W)`; allocators build their results with [`Assignment::from_parts`].
    pub fn from_owners(owners: impl IntoIterator<Item = Option<WorkerId>>) -> Self {
        let mut index: BTreeMap<WorkerId, u32> = BTreeMap::new();
        let mut workers = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        let mut last: Option<(WorkerId, u32)> = None;
        let owners = owners
            .into_iter()
            .map(|owner| {
                let Some(owner) = owner else { return Self::NO_OWNER };
                let slot = match last {
                    Some((id, slot)) if id == owner => slot,
                    _ => {
                        let next = workers.len() as u32;
                        let slot = *index.entry(owner).or_insert_with(|| {
                            workers.push(owner);
                            counts.push(0);
                            next
                        });
                        last = Some((owner, slot));
                        slot
                    }
                };
                counts[slot as usize] += 1;
                slot
            })
            .collect();
        Self { workers, owners, counts }
    }

    /// Builds an assignment from a worker table and, for every partition, an index into it
    /// ([`Assignment::NO_OWNER`] for none).
    ///
    /// # Errors
    /// [`AllocationError::DuplicateWorker`] when `workers` names a worker twice and
    /// [`AllocationError::OwnerOutOfRange`] when an index is outside the table.
    pub fn from_parts(workers: Vec<WorkerId>, owners: Vec<u32>) -> Result<Self, AllocationError> {
        let mut sorted = workers.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(AllocationError::DuplicateWorker(pair[0]));
        }
        let mut counts = vec![0u32; workers.len()];
        for (partition, &owner) in owners.iter().enumerate() {
            if owner == Self::NO_OWNER {
                continue;
            }
            match counts.get_mut(owner as usize) {
                Some(count) => *count += 1,
                None => {
                    return Err(AllocationError::OwnerOutOfRange {
                        partition: PartitionId(partition as u32),
                        index: owner,
                    });
                }
            }
        }
        Ok(Self { workers, owners, counts })
    }

    /// Builds an assignment from parts the caller guarantees to be consistent (unique
    /// workers, indices in range, exact counts).
    pub(crate) fn from_trusted_parts(workers: Vec<WorkerId>, owners: Vec<u32>, counts: Vec<u32>) -> Self {
        debug_assert_eq!(workers.len(), counts.len());
        debug_assert!(owners.iter().all(|&o| o == Self::NO_OWNER || (o as usize) < workers.len()));
        Self { workers, owners, counts }
    }

    /// The number of partitions.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether the queue has no partitions.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The owner of `partition`; `None` when it has none or is out of range.
    pub fn owner(&self, partition: PartitionId) -> Option<WorkerId> {
        let slot = *self.owners.get(partition.0 as usize)?;
        self.workers.get(slot as usize).copied()
    }

    /// Every partition with its owner, in partition order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (PartitionId, Option<WorkerId>)> + '_ {
        self.owners.iter().enumerate().map(|(partition, &slot)| {
            (PartitionId(partition as u32), self.workers.get(slot as usize).copied())
        })
    }

    /// The owner of every partition, in partition order.
    pub fn to_owners(&self) -> Vec<Option<WorkerId>> {
        self.iter().map(|(_, owner)| owner).collect()
    }

    /// How many partitions `worker` owns.
    pub fn load(&self, worker: WorkerId) -> u32 {
        self.workers.iter().zip(&self.counts).filter(|(id, _)| **id == worker).map(|(_, count)| count).sum()
    }

    /// Every worker of the internal table with the number of partitions it owns, sorted by
    /// worker id. Workers that own nothing may or may not appear.
    pub fn loads(&self) -> Vec<(WorkerId, u32)> {
        let mut loads: Vec<(WorkerId, u32)> =
            self.workers.iter().copied().zip(self.counts.iter().copied()).collect();
        loads.sort_unstable();
        loads
    }

    /// How many partitions have no owner.
    pub fn unowned(&self) -> usize {
        self.owners.len() - self.counts.iter().map(|&count| count as usize).sum::<usize>()
    }

    /// How many partitions have a different owner in `other` (partitions beyond the shorter
    /// of the two count as different).
    pub fn differences(&self, other: &Assignment) -> usize {
        let common = self.len().min(other.len());
        let extra = self.len().max(other.len()) - common;
        if self.workers == other.workers {
            return extra + self.owners.iter().zip(&other.owners).filter(|(a, b)| a != b).count();
        }
        extra + self.iter().zip(other.iter()).filter(|((_, a), (_, b))| a != b).count()
    }

    /// Sets the owner of `partition` and returns the previous one. Costs `O(W)` for a worker
    /// the table does not know yet; meant for tests, simulations and small updates.
    ///
    /// # Errors
    /// [`AllocationError::PartitionOutOfRange`] when `partition` is not below [`len`](Self::len).
    pub fn set_owner(
        &mut self,
        partition: PartitionId,
        owner: Option<WorkerId>,
    ) -> Result<Option<WorkerId>, AllocationError> {
        let len = self.owners.len();
        let slot = self
            .owners
            .get_mut(partition.0 as usize)
            .ok_or(AllocationError::PartitionOutOfRange { partition, partition_count: len as u32 })?;
        let previous = self.workers.get(*slot as usize).copied();
        if let Some(count) = self.counts.get_mut(*slot as usize) {
            *count -= 1;
        }
        *slot = match owner {
            None => Self::NO_OWNER,
            Some(owner) => {
                let index = match self.workers.iter().position(|id| *id == owner) {
                    Some(index) => index,
                    None => {
                        self.workers.push(owner);
                        self.counts.push(0);
                        self.workers.len() - 1
                    }
                };
                self.counts[index] += 1;
                index as u32
            }
        };
        Ok(previous)
    }

    /// The internal worker table.
    pub fn worker_table(&self) -> &[WorkerId] {
        &self.workers
    }

    /// For every partition, its owner's index in [`worker_table`](Self::worker_table) or
    /// [`Assignment::NO_OWNER`].
    pub fn owner_indices(&self) -> &[u32] {
        &self.owners
    }

    /// For every entry of [`worker_table`](Self::worker_table), how many partitions it owns.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }
}

impl PartialEq for Assignment {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.differences(other) == 0
    }
}

impl Eq for Assignment {}

impl FromIterator<Option<WorkerId>> for Assignment {
    fn from_iter<I: IntoIterator<Item = Option<WorkerId>>>(iter: I) -> Self {
        Self::from_owners(iter)
    }
}

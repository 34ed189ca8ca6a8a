//! Allocation strategies: which live worker should own each partition of a queue.
//!
//! An [`AllocationStrategy`] is a pure, deterministic function of an [`AllocationInput`]: the
//! live workers (with their capacity weight, labels and state), the current owner of every
//! partition, the queue's [`Constraints`] and each worker's load from the other queues. It
//! returns the target owner of every partition, and for every partition it cannot place, the
//! reason ([`UnassignedReason`]).
//!
//! *Deterministic* means more than "no randomness": the same input with the workers listed in
//! any order gives the same output, so strategies sort workers by id and never let the
//! iteration order of a hash map reach their result.
//!
//! Three strategies ship with Helix, selected by the `allocator` column of a queue through
//! [`strategy_by_name`]:
//!
//! | name                | type               | balance                 | movement on change   |
//! |---------------------|--------------------|-------------------------|----------------------|
//! | `balanced-sticky`   | [`BalancedSticky`] | exact (⌊P/N⌋ or ⌈P/N⌉)  | the minimum          |
//! | `rendezvous`        | [`RendezvousHash`] | statistical             | about P/N per change |
//! | `round-robin`       | [`RoundRobin`]     | exact, ignores capacity | almost everything    |
//!
//! `docs/allocation.md` states what each one guarantees and how to write your own.
//!
//! ```
//! use helix_core::allocation::{strategy_by_name, AllocationInput, Assignment};
//! use helix_core::{WorkerId, WorkerInfo};
//!
//! let workers: Vec<WorkerInfo> = (0..3).map(|_| WorkerInfo::new(WorkerId::new_v7())).collect();
//! let current = Assignment::unassigned(50);
//! let strategy = strategy_by_name("balanced-sticky").expect("known strategy");
//! let allocation = strategy.allocate(&AllocationInput::new(&workers, &current)).expect("valid input");
//! let mut loads: Vec<u32> = workers.iter().map(|w| allocation.assignment.load(w.id)).collect();
//! loads.sort_unstable();
//! assert_eq!(loads, [16, 17, 17]);
//! assert!(allocation.unassigned.is_empty());
//! ```

mod assignment;
mod balanced_sticky;
mod flow;
mod rendezvous;
mod round_robin;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use assignment::Assignment;
pub use balanced_sticky::{BalancedSticky, MoveCap};
pub use rendezvous::{RendezvousHash, rendezvous_score};
pub use round_robin::RoundRobin;

use crate::ids::{PartitionId, WorkerId};
use crate::worker::WorkerInfo;

/// The name of the default strategy, [`BalancedSticky`].
pub const DEFAULT_STRATEGY: &str = BalancedSticky::NAME;

/// The names [`strategy_by_name`] knows.
pub const STRATEGY_NAMES: [&str; 3] = [BalancedSticky::NAME, RendezvousHash::NAME, RoundRobin::NAME];

/// A pure, deterministic way to decide which worker owns each partition of a queue.
///
/// Implementations must be deterministic: the same input, with the workers in any order,
/// gives the same [`Allocation`]. Sort workers by id (or use
/// [`AllocationInput::sorted_workers`]) and never let a hash map's iteration order reach the
/// result. They must not read clocks, random numbers or anything outside the input.
///
/// The trait is object safe: the coordinator holds strategies as `Box<dyn AllocationStrategy>`.
///
/// A strategy of your own, which gives every eligible worker one contiguous range of
/// partitions (it ignores `max_partitions_per_worker` to stay short; a real one must not):
///
/// ```
/// use helix_core::allocation::{
///     Allocation, AllocationError, AllocationInput, AllocationStrategy, Assignment, Unassigned, UnassignedReason,
/// };
/// use helix_core::{PartitionId, WorkerId, WorkerInfo};
///
/// #[derive(Debug)]
/// struct Contiguous;
///
/// impl AllocationStrategy for Contiguous {
///     fn name(&self) -> &str {
///         "contiguous"
///     }
///
///     fn allocate(&self, input: &AllocationInput<'_>) -> Result<Allocation, AllocationError> {
///         // Sorted by id, so the order of `input.workers` cannot change the result.
///         let eligible: Vec<&WorkerInfo> =
///             input.sorted_workers()?.into_iter().filter(|w| input.constraints.admits(w)).collect();
///         let partitions = input.partition_count();
///         if eligible.is_empty() {
///             let unassigned = (0..partitions)
///                 .map(|p| Unassigned { partition: PartitionId(p), reason: UnassignedReason::NoEligibleWorker })
///                 .collect();
///             return Ok(Allocation { assignment: Assignment::unassigned(partitions), unassigned });
///         }
///         let owners = (0..partitions as usize).map(|p| Some(eligible[p * eligible.len() / partitions as usize].id));
///         Ok(Allocation { assignment: Assignment::from_owners(owners), unassigned: Vec::new() })
///     }
/// }
///
/// let mut workers: Vec<WorkerInfo> = (0..3).map(|_| WorkerInfo::new(WorkerId::new_v7())).collect();
/// let current = Assignment::unassigned(6);
/// let first = Contiguous.allocate(&AllocationInput::new(&workers, &current))?;
/// workers.reverse();
/// let second = Contiguous.allocate(&AllocationInput::new(&workers, &current))?;
/// assert_eq!(first, second);
/// assert_eq!(first.assignment.owner(PartitionId(0)), first.assignment.owner(PartitionId(1)));
/// # Ok::<(), AllocationError>(())
/// ```
pub trait AllocationStrategy: Send + Sync + fmt::Debug {
    /// The name a queue's `allocator` column uses to select this strategy (`balanced-sticky`).
    fn name(&self) -> &str;

    /// The target owner of every partition of `input.current`.
    ///
    /// # Errors
    /// [`AllocationError`] when the input is inconsistent (a worker listed twice).
    fn allocate(&self, input: &AllocationInput<'_>) -> Result<Allocation, AllocationError>;

    /// The target owner of every partition of several queues at once, one [`Allocation`] per
    /// input, in order. The queues may share workers (a worker appears in the input of every
    /// queue it serves, with that queue's capacity).
    ///
    /// The default allocates each queue on its own with [`allocate`](Self::allocate) (each
    /// input's `other_load` as given). [`BalancedSticky`] overrides it with one allocation over
    /// all the queues that bounds every queue and every worker's total at once, and ignores
    /// `other_load`.
    ///
    /// # Errors
    /// [`AllocationError`] when one input is inconsistent (a worker listed twice in a queue).
    fn allocate_all(&self, queues: &[AllocationInput<'_>]) -> Result<Vec<Allocation>, AllocationError> {
        queues.iter().map(|queue| self.allocate(queue)).collect()
    }
}

/// The strategy registered under `name`, with its default settings; `None` for an unknown
/// name. See [`STRATEGY_NAMES`].
///
/// ```
/// use helix_core::allocation::strategy_by_name;
/// assert_eq!(strategy_by_name("rendezvous").map(|s| s.name().to_owned()).as_deref(), Some("rendezvous"));
/// assert!(strategy_by_name("random").is_none());
/// ```
pub fn strategy_by_name(name: &str) -> Option<Box<dyn AllocationStrategy>> {
    match name {
        BalancedSticky::NAME => Some(Box::new(BalancedSticky::default())),
        RendezvousHash::NAME => Some(Box::new(RendezvousHash)),
        RoundRobin::NAME => Some(Box::new(RoundRobin)),
        _ => None,
    }
}

/// What a queue demands of the workers that own its partitions. Every strategy honours them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// Only workers carrying every one of these `key = value` labels get partitions.
    pub required_labels: BTreeMap<String, String>,
    /// No worker gets more partitions of this queue than this.
    pub max_partitions_per_worker: Option<u32>,
}

static NO_CONSTRAINTS: Constraints =
    Constraints { required_labels: BTreeMap::new(), max_partitions_per_worker: None };
pub(crate) static NO_LOAD: BTreeMap<WorkerId, u64> = BTreeMap::new();

impl Constraints {
    /// Whether `worker` may be given partitions under these constraints: it is active and
    /// carries the required labels.
    pub fn admits(&self, worker: &WorkerInfo) -> bool {
        worker.accepts_partitions()
            && (self.required_labels.is_empty() || worker.has_labels(&self.required_labels))
    }
}

/// Everything an [`AllocationStrategy`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct AllocationInput<'a> {
    /// The live workers (active and draining), in any order. A current owner that is not in
    /// this list is dead or gone: its partitions are orphans.
    pub workers: &'a [WorkerInfo],
    /// The current owner of every partition; its length is the queue's partition count.
    pub current: &'a Assignment,
    /// The queue's constraints.
    pub constraints: &'a Constraints,
    /// How many partitions of the other queues each worker owns (missing means 0).
    pub other_load: &'a BTreeMap<WorkerId, u64>,
    /// A number that identifies the queue (the coordinator passes its `QueueId`), so that
    /// strategies that hash, like [`RendezvousHash`], place the partitions of different queues
    /// differently. 0 by default.
    pub queue: u64,
}

impl<'a> AllocationInput<'a> {
    /// An input without constraints and without load from other queues.
    pub fn new(workers: &'a [WorkerInfo], current: &'a Assignment) -> Self {
        Self { workers, current, constraints: &NO_CONSTRAINTS, other_load: &NO_LOAD, queue: 0 }
    }

    /// The same input for the queue identified by `queue` (see [`AllocationInput::queue`]).
    #[must_use]
    pub fn with_queue(mut self, queue: u64) -> Self {
        self.queue = queue;
        self
    }

    /// The same input with `constraints`.
    #[must_use]
    pub fn with_constraints(mut self, constraints: &'a Constraints) -> Self {
        self.constraints = constraints;
        self
    }

    /// The same input with each worker's load from the other queues.
    #[must_use]
    pub fn with_other_load(mut self, other_load: &'a BTreeMap<WorkerId, u64>) -> Self {
        self.other_load = other_load;
        self
    }

    /// The number of partitions of the queue.
    pub fn partition_count(&self) -> u32 {
        self.current.len() as u32
    }

    /// The workers sorted by id, the order every strategy starts from.
    ///
    /// # Errors
    /// [`AllocationError::DuplicateWorker`] when a worker is listed twice.
    pub fn sorted_workers(&self) -> Result<Vec<&'a WorkerInfo>, AllocationError> {
        let mut sorted: Vec<&WorkerInfo> = self.workers.iter().collect();
        // The UUID as a big-endian u128 orders exactly like the id, and compares faster.
        sorted.sort_unstable_by_key(|worker| worker.id.as_uuid().as_u128());
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(AllocationError::DuplicateWorker(pair[0].id));
        }
        Ok(sorted)
    }
}

/// The result of an allocation: the target owner of every partition, and why some have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The target owner of every partition.
    pub assignment: Assignment,
    /// The partitions left without an owner, in partition order, each with its reason.
    pub unassigned: Vec<Unassigned>,
}

/// A partition that stays without an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Unassigned {
    /// The partition.
    pub partition: PartitionId,
    /// Why it has no owner.
    pub reason: UnassignedReason,
}

/// Why a partition stays without an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnassignedReason {
    /// No live, active worker carries the queue's required labels.
    NoEligibleWorker,
    /// Every eligible worker already holds `max_partitions_per_worker` partitions.
    WorkerLimitReached,
}

impl fmt::Display for UnassignedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoEligibleWorker => "no active worker carries the required labels",
            Self::WorkerLimitReached => "every eligible worker holds its maximum of partitions",
        })
    }
}

/// Why an allocation input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    /// A worker was listed twice.
    #[error("worker {0} is listed twice")]
    DuplicateWorker(WorkerId),
    /// An owner index was outside the worker table of an [`Assignment`].
    #[error("partition {partition} names owner index {index}, outside the worker table")]
    OwnerOutOfRange {
        /// The partition.
        partition: PartitionId,
        /// The index it names.
        index: u32,
    },
    /// A partition was outside the queue.
    #[error("partition {partition} is out of range, the queue has {partition_count} partitions")]
    PartitionOutOfRange {
        /// The partition.
        partition: PartitionId,
        /// The queue's partition count.
        partition_count: u32,
    },
}

/// The input reduced to flat, index-based data that strategies work on: workers sorted by
/// id and numbered `0..n`, and a map from the current assignment's worker table to those
/// numbers.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    /// The live workers, sorted by id.
    pub(crate) workers: Vec<&'a WorkerInfo>,
    /// Their ids, in the same order (the worker table of the result).
    pub(crate) ids: Vec<WorkerId>,
    /// Whether each worker may be given partitions.
    pub(crate) eligible: Vec<bool>,
    /// The indices of the eligible workers, ascending.
    pub(crate) eligible_indices: Vec<u32>,
    /// For every entry of the current worker table, the worker's index or `NO_OWNER`.
    pub(crate) remap: Vec<u32>,
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(input: &AllocationInput<'a>) -> Result<Self, AllocationError> {
        let workers = input.sorted_workers()?;
        let ids: Vec<WorkerId> = workers.iter().map(|worker| worker.id).collect();
        let eligible: Vec<bool> = workers.iter().map(|worker| input.constraints.admits(worker)).collect();
        let eligible_indices = eligible
            .iter()
            .enumerate()
            .filter(|(_, eligible)| **eligible)
            .map(|(index, _)| index as u32)
            .collect();
        let remap = remap(input.current.worker_table(), &ids);
        Ok(Self { workers, ids, eligible, eligible_indices, remap })
    }

    /// The reason a partition that could not be placed stays unassigned.
    pub(crate) fn unassigned_reason(&self) -> UnassignedReason {
        if self.eligible_indices.is_empty() {
            UnassignedReason::NoEligibleWorker
        } else {
            UnassignedReason::WorkerLimitReached
        }
    }
}

/// For every entry of `table`, its index in the sorted `ids` or `NO_OWNER`. A sorted table
/// (every allocation result has one) is merged in one linear pass; any other is searched.
fn remap(table: &[WorkerId], ids: &[WorkerId]) -> Vec<u32> {
    let key = |id: &WorkerId| id.as_uuid().as_u128();
    let keys: Vec<u128> = ids.iter().map(key).collect();
    if table.windows(2).all(|pair| key(&pair[0]) < key(&pair[1])) {
        let mut next = 0;
        table
            .iter()
            .map(|id| {
                let wanted = key(id);
                while next < keys.len() && keys[next] < wanted {
                    next += 1;
                }
                if keys.get(next) == Some(&wanted) { next as u32 } else { Assignment::NO_OWNER }
            })
            .collect()
    } else {
        table
            .iter()
            .map(|id| keys.binary_search(&key(id)).map_or(Assignment::NO_OWNER, |index| index as u32))
            .collect()
    }
}

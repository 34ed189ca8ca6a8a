//! What the coordinator knows about a live worker when it allocates partitions.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::ids::WorkerId;

/// The state of a live worker, as far as allocation is concerned.
///
/// Workers that left or were declared dead are not live and are not passed to an allocator at
/// all; their partitions are orphans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerState {
    /// The worker accepts partitions.
    #[default]
    Active,
    /// The worker is leaving: it keeps running what it owns until it is handed off, and it is
    /// never given a partition.
    Draining,
}

/// A live worker as seen by an allocation strategy: its identity, its capacity weight for the
/// queue being allocated, its labels and its state.
///
/// ```
/// use std::num::NonZeroU32;
/// use helix_core::{WorkerId, WorkerInfo};
///
/// let worker = WorkerInfo::new(WorkerId::new_v7())
///     .with_capacity(NonZeroU32::new(2).expect("non-zero"))
///     .with_label("zone", "eu-west-1a");
/// assert_eq!(worker.capacity.get(), 2);
/// assert!(worker.accepts_partitions());
/// assert!(!worker.draining().accepts_partitions());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's identity.
    pub id: WorkerId,
    /// The worker's weight for this queue (from its subscription): a worker of capacity 2 is
    /// given twice the partitions of a worker of capacity 1.
    pub capacity: NonZeroU32,
    /// Free-form `key = value` labels, matched against a queue's required labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether the worker accepts partitions.
    #[serde(default)]
    pub state: WorkerState,
}

impl WorkerInfo {
    /// An active worker of capacity 1 without labels.
    pub fn new(id: WorkerId) -> Self {
        Self { id, capacity: NonZeroU32::MIN, labels: BTreeMap::new(), state: WorkerState::Active }
    }

    /// The same worker with another capacity weight.
    #[must_use]
    pub fn with_capacity(mut self, capacity: NonZeroU32) -> Self {
        self.capacity = capacity;
        self
    }

    /// The same worker with one more label.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The same worker in the [`WorkerState::Draining`] state.
    #[must_use]
    pub fn draining(mut self) -> Self {
        self.state = WorkerState::Draining;
        self
    }

    /// Whether the worker may be given partitions at all (it is [`WorkerState::Active`]).
    pub fn accepts_partitions(&self) -> bool {
        self.state == WorkerState::Active
    }

    /// Whether the worker carries every `key = value` pair of `required`.
    pub fn has_labels(&self, required: &BTreeMap<String, String>) -> bool {
        required.iter().all(|(key, value)| self.labels.get(key) == Some(value))
    }
}

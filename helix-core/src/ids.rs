//! Identifiers and fencing tokens.
//!
//! [`Term`] fences the coordinator's writes and [`Epoch`] fences a partition owner's writes
//! (see `docs/protocol.md`). Both only ever grow.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The database id of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The index of a partition inside its queue, from 0 to `partition_count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionId(pub u32);

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! counter {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(pub u64);

        impl $ty {
            /// The value that follows this one.
            #[must_use]
            pub fn next(self) -> Self {
                Self(self.0 + 1)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

counter!(
    /// The coordinator's term. It increases by one every time the coordinator lease changes
    /// hands and never on renewal; every coordinator write is checked against it.
    Term
);
counter!(
    /// A partition's fencing token. It increases by one every time the partition's owner
    /// changes; every write by the owner is checked against it.
    Epoch
);
counter!(
    /// A worker's registration generation. It increases every time a worker registers again
    /// under the same [`WorkerId`] (after it was declared dead, or on a rolling restart), so a
    /// heartbeat from the previous incarnation is refused.
    SessionEpoch
);

/// The identity of a worker process: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(Uuid);

impl WorkerId {
    /// A fresh, time-ordered id.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID (for example one read back from the database or configured for
    /// a static identity that survives restarts).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The 16 bytes of the UUID, as stored in the database.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an id from its 16 stored bytes; `None` when `bytes` is not 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Uuid::from_slice(bytes).ok().map(Self)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for WorkerId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_round_trip_and_sort_by_creation() {
        let a = WorkerId::new_v7();
        let b = WorkerId::new_v7();
        assert!(a < b);
        assert_eq!(WorkerId::from_slice(a.as_bytes()), Some(a));
        assert_eq!(a.to_string().parse::<WorkerId>().ok(), Some(a));
        assert_eq!(WorkerId::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn counters_grow() {
        assert_eq!(Term(4).next(), Term(5));
        assert!(Epoch(1) < Epoch(1).next());
    }
}

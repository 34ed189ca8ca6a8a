//! The pure heart of Helix: validated names and identifiers, the cluster configuration, the
//! [`Clock`] abstraction, the allocation strategies, the handoff planner and the
//! failure-detection helpers.
//!
//! Nothing in this crate performs I/O: every function is a deterministic function of its
//! input, which is what makes the coordinator's decisions unit-testable, property-testable and
//! benchmarkable on their own.

pub mod allocation;
pub mod clock;
pub mod config;
pub mod failure;
pub mod ids;
pub mod names;
pub mod partitioning;
pub mod planner;
pub mod worker;

pub use clock::{Clock, ManualClock, MonotonicClock, SystemClock};
pub use config::{ClusterConfig, ConfigError};
pub use ids::{Epoch, PartitionId, QueueId, SessionEpoch, Term, WorkerId};
pub use names::{ClusterName, DomainName, MAX_PARTITIONS, NameError, PartitionCount, QueueName};
pub use partitioning::partition_for_key;
pub use worker::{WorkerInfo, WorkerState};

//! The Helix runtime: the coordinator, the failure detector, the allocator, worker sessions
//! and their supervised partition actors, over a [`helix_store::Store`].
//!
//! - [`node`]: the API in the user's terms: [`node::CoordinatorNode`] and
//!   [`node::Worker::builder`], with [`client::Client`] to create queues and read the cluster;
//! - [`coordinator`]: [`coordinator::LeaderElection`] takes and keeps the coordinator lease
//!   and steps down before it can run out; [`coordinator::Coordinator`] reconciles every queue
//!   while it leads, asking a pluggable allocator actor ([`coordinator::Allocate`]) for each
//!   queue's target and applying the plan fenced by its term;
//! - [`worker`]: [`worker::WorkerSession`], one per worker process, registers, heartbeats,
//!   fences itself when it cannot renew in time, runs one supervised partition actor per owned
//!   partition with the user's [`worker::PartitionHandler`], hands revoked partitions over
//!   and leaves gracefully;
//! - [`store_actor`]: [`store_actor::StoreActor`], the single door of a node to its store:
//!   every operation a typed message, a bounded number in flight, and a
//!   [`store_actor::StoreHandle`] that is itself a [`helix_store::Store`];
//! - [`testing`]: [`testing::SimCluster`], a whole cluster on virtual time with faults and an
//!   invariant checker, and [`TokioClock`] for the in-memory store.
//!
//! `docs/architecture.md` and `docs/protocol.md` explain how they fit and why they are safe.

mod backoff;
pub mod client;
mod clock;
pub mod coordinator;
pub mod node;
mod runtime;
pub mod store_actor;
pub mod tasks;
pub mod testing;
pub mod worker;

pub use clock::TokioClock;

pub use helix_core as core;
pub use helix_store as store;

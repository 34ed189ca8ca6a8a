//! Worker sessions and their partition actors.
//!
//! A worker process runs one [`WorkerSession`]: it registers with the store, keeps its lease
//! alive, fences itself when it cannot (`docs/protocol.md`), polls the partitions the store
//! says it owns and runs one [`PartitionHandler`] per owned partition, created by a
//! [`HandlerFactory`], in a supervised child actor. Panics in handlers are caught and the
//! partition restarted with backoff ([`RestartPolicy`]). Each ownership has an
//! [`OwnershipGuard`]: no handler future is polled once it has ended, and work the handler
//! spawns through it is bound to it too.
//!
//! Threads: the session lives on the *control arbiter*, the partition actors on the *handler
//! arbiter* ([`WorkerSession::with_handler_arbiter`]; [`Worker`](crate::node::Worker) gives
//! each its own thread).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use actix::Actor;
//! use async_trait::async_trait;
//! use helix_actors::worker::{HandlerError, HandlerFactory, Leave, PartitionContext, PartitionHandler, WorkerSession};
//! use helix_core::{ClusterConfig, QueueId, WorkerId};
//! use helix_store::{Store, Subscription, WorkerRegistration};
//!
//! struct Noop;
//!
//! #[async_trait(?Send)]
//! impl PartitionHandler for Noop {
//!     async fn assigned(&mut self, _ctx: &PartitionContext) -> Result<(), HandlerError> { Ok(()) }
//!     async fn revoked(&mut self, _ctx: &PartitionContext) {}
//! }
//!
//! async fn serve(store: Arc<dyn Store>, queue: QueueId) {
//!     let config = ClusterConfig::default();
//!     let registration = WorkerRegistration {
//!         id: WorkerId::new_v7(),
//!         host: "localhost".into(),
//!         pid: std::process::id(),
//!         labels: BTreeMap::new(),
//!         subscriptions: vec![Subscription { queue_id: queue, capacity: 1 }],
//!         session_timeout: config.session_timeout,
//!     };
//!     let factory: HandlerFactory = Arc::new(|_: &PartitionContext| Box::new(Noop) as Box<dyn PartitionHandler>);
//!     let session = WorkerSession::new(store, config, registration, factory).start();
//!     // ... until asked to stop:
//!     let _ = session.send(Leave).await;
//! }
//! ```

mod guard;
mod handler;
mod partition;
mod session;

pub use guard::OwnershipGuard;
pub use handler::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};
pub(crate) use partition::panic_message;
pub use session::{
    GetStatus, Kill, Leave, LeaveOutcome, PartitionKey, PartitionState, PartitionStatus, RestartPolicy,
    SessionEnd, WorkerSession, WorkerStatusReport,
};

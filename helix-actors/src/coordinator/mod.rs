//! The coordinator: the one process, elected through the store's lease, that assigns every
//! partition to a live worker.
//!
//! - [`LeaderElection`] takes and keeps the lease and says when this process leads;
//! - [`Coordinator`] reconciles every queue on each tick while it leads: it has its
//!   [`FailureDetector`] declare expired workers dead, asks its allocator for each queue's target, plans the changes and applies
//!   them fenced by its term;
//! - the allocator is any actor that answers [`Allocate`]; [`StrategyAllocator`] serves the
//!   strategies of `helix-core` by the name in each queue's `allocator` column;
//! - while it leads, the [`Coordinator`] also materializes the slots of recurring schedules
//!   ahead of time, fenced by its term ([`SCHEDULE_LOOKAHEAD`]).
//!
//! The decision itself is [`reconcile`] (or [`allocation_request`] then [`plan_towards`]), pure
//! functions of what the coordinator read; the actors only read, ask and write.

mod actor;
mod allocator;
mod detector;
mod election;
mod reconcile;
mod schedules;

pub use actor::{Coordinator, RoundReport, RunRound};
pub use allocator::{Allocate, AllocateError, AllocateResult, StrategyAllocator};
pub use detector::{FailureDetector, Sweep, WorkersExpired};
pub use election::{CurrentFence, LeaderElection, LeadershipChanged, Resign, StepDown, takeover_bound};
pub use reconcile::{
    AllocationRequest, CONSTRAINTS_KEY, ReconcileError, ReconcileInput, Reconciled, allocation_request,
    plan_towards, queue_constraints, reconcile, request_for,
};
pub use schedules::{
    FireReport, SCHEDULE_LOOKAHEAD, SCHEDULE_POLL_INTERVAL, SCHEDULES_PER_FIRE, SLOTS_PER_SCHEDULE,
};

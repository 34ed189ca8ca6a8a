//! The allocator extension point: any actor that answers [`Allocate`].

use actix::prelude::*;
use helix_core::allocation::{Allocation, AllocationError, strategy_by_name};

use super::reconcile::AllocationRequest;

/// Asks an allocator for the target owner of every partition of one queue.
///
/// Any actor that handles this message can be plugged into a [`Coordinator`](super::Coordinator)
/// as its allocator. It must answer deterministically from the request alone (the same
/// request, whatever the order of its workers, gives the same answer), never give a
/// partition to a worker that is not in the request, and honour the request's constraints.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Allocation, AllocateError>")]
pub struct Allocate(pub AllocationRequest);

/// Why an allocator could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    /// The queue names an allocator this one does not serve.
    #[error("unknown allocator {0:?}")]
    UnknownAllocator(String),
    /// The strategy refused its input.
    #[error(transparent)]
    Strategy(#[from] AllocationError),
}

/// The default allocator: serves the strategies of `helix-core` (`balanced-sticky`,
/// `rendezvous`, `round-robin`) by the name in each queue's `allocator` column.
#[derive(Debug, Default)]
pub struct StrategyAllocator;

impl Actor for StrategyAllocator {
    type Context = Context<Self>;
}

impl Handler<Allocate> for StrategyAllocator {
    type Result = Result<Allocation, AllocateError>;

    fn handle(&mut self, Allocate(request): Allocate, _: &mut Self::Context) -> Self::Result {
        let strategy = strategy_by_name(&request.queue.allocator)
            .ok_or_else(|| AllocateError::UnknownAllocator(request.queue.allocator.clone()))?;
        Ok(strategy.allocate(&request.input())?)
    }
}

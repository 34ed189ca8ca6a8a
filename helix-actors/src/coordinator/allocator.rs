//! The allocator extension point: any actor that answers [`Allocate`].

use std::collections::BTreeMap;

use actix::prelude::*;
use helix_core::allocation::{Allocation, AllocationError, AllocationInput, strategy_by_name};

use super::reconcile::AllocationRequest;

/// What an allocator answers to [`Allocate`]: one result per request, in the order of the
/// requests.
pub type AllocateResult = Vec<Result<Allocation, AllocateError>>;

/// Asks an allocator for the target owner of every partition of every queue of one round.
///
/// The coordinator sends one `Allocate` per round, with a request for every queue of the
/// cluster, so an allocator can balance the queues against each other (the default
/// [`StrategyAllocator`] does, for the queues of `balanced-sticky`). Any actor that handles
/// this message can be plugged into a [`Coordinator`](super::Coordinator) as its allocator.
/// It must answer with one result per request, in order; answer deterministically from the
/// requests alone (the same requests, whatever the order of each one's workers, give the same
/// answer); never give a partition to a worker that is not in its request; and honour each
/// request's constraints. An error for one queue leaves that queue as it is for the round and
/// does not affect the others. The coordinator waits at most
/// [`ClusterConfig::coordinator_call_timeout`](helix_core::ClusterConfig) for the answer.
///
/// An allocator that decides each queue on its own answers with [`Allocate::each`]:
///
/// ```
/// use actix::prelude::*;
/// use helix_actors::coordinator::{Allocate, AllocateError, AllocateResult};
/// use helix_core::allocation::{Allocation, AllocationStrategy, RoundRobin};
///
/// struct PerQueue;
///
/// impl Actor for PerQueue {
///     type Context = Context<Self>;
/// }
///
/// impl Handler<Allocate> for PerQueue {
///     type Result = AllocateResult;
///
///     fn handle(&mut self, msg: Allocate, _: &mut Self::Context) -> AllocateResult {
///         msg.each(|request| Ok(RoundRobin.allocate(&request.input())?))
///     }
/// }
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "AllocateResult")]
pub struct Allocate {
    /// One request per queue.
    pub requests: Vec<AllocationRequest>,
}

impl Allocate {
    /// Answers every request on its own with `allocate`, in order: the simple way to write an
    /// allocator that decides one queue at a time.
    pub fn each(
        self,
        mut allocate: impl FnMut(&AllocationRequest) -> Result<Allocation, AllocateError>,
    ) -> AllocateResult {
        self.requests.iter().map(&mut allocate).collect()
    }
}

/// Why an allocator could not answer for a queue.
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
///
/// The queues of one strategy are allocated together with
/// [`AllocationStrategy::allocate_all`](helix_core::allocation::AllocationStrategy::allocate_all):
/// for `balanced-sticky` that is one allocation over all of them, which keeps every queue
/// and every worker's total over them within one of its share with the fewest moves. When a
/// strategy refuses the set (one request is inconsistent), each queue is allocated on its own
/// so that only the faulty one fails.
#[derive(Debug, Default)]
pub struct StrategyAllocator;

impl Actor for StrategyAllocator {
    type Context = Context<Self>;
}

impl Handler<Allocate> for StrategyAllocator {
    type Result = AllocateResult;

    fn handle(&mut self, Allocate { requests }: Allocate, _: &mut Self::Context) -> Self::Result {
        let mut results: Vec<Option<Result<Allocation, AllocateError>>> = vec![None; requests.len()];
        let mut by_strategy: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, request) in requests.iter().enumerate() {
            by_strategy.entry(request.queue.allocator.as_str()).or_default().push(index);
        }
        for (name, indices) in by_strategy {
            let Some(strategy) = strategy_by_name(name) else {
                for index in indices {
                    results[index] = Some(Err(AllocateError::UnknownAllocator(name.to_owned())));
                }
                continue;
            };
            let inputs: Vec<AllocationInput<'_>> = indices.iter().map(|&i| requests[i].input()).collect();
            match strategy.allocate_all(&inputs) {
                Ok(allocations) => {
                    for (index, allocation) in indices.iter().zip(allocations) {
                        results[*index] = Some(Ok(allocation));
                    }
                }
                Err(_) => {
                    for (&index, input) in indices.iter().zip(&inputs) {
                        results[index] = Some(strategy.allocate(input).map_err(AllocateError::from));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(AllocateError::UnknownAllocator(String::new()))))
            .collect()
    }
}

//! The FailureDetector actor: declares dead the workers whose lease ran out on the store's
//! clock, and holds back those that keep dying (DESIGN.md §5).

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use helix_core::WorkerId;
use helix_core::failure::{FlapHistory, FlapPolicy};
use helix_store::{CoordinatorFence, Store, StoreResult, WorkerFilter, WorkerRecord};

/// Asks the detector to sweep: declare dead, fenced by the coordinator's term, every worker
/// whose lease ran out on the store's clock, and say who is live now. Answered with
/// [`WorkersExpired`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "StoreResult<WorkersExpired>")]
pub struct Sweep {
    /// The asking coordinator's fence: the deaths are written under its term.
    pub fence: CoordinatorFence,
}

/// What a [`Sweep`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersExpired {
    /// The workers declared dead by this sweep.
    pub declared_dead: Vec<WorkerId>,
    /// The workers live after the sweep (ACTIVE or DRAINING with a running lease).
    pub live: Vec<WorkerRecord>,
    /// The live workers held back from new partitions because they keep dying
    /// ([`FlapPolicy`]).
    pub held_back: BTreeSet<WorkerId>,
    /// The store's time of the sweep.
    pub now: DateTime<Utc>,
}

/// Failure detection on the store's clock, with hysteresis.
///
/// On each [`Sweep`] it reads the workers whose lease has expired (`lease_expires_at <
/// NOW()`, never a local clock), marks them DEAD in one statement fenced by the coordinator's
/// term, and remembers each death. A worker with `threshold` deaths within the policy's
/// window is held back for `hold_back` after its latest death: it stays live but the
/// coordinator gives it nothing new, so a crash-looping worker does not pull partitions back
/// and forth. Sweeps are answered one at a time, so the history is never updated twice at once.
pub struct FailureDetector {
    store: Arc<dyn Store>,
    policy: FlapPolicy,
    flaps: FlapHistory,
}

impl FailureDetector {
    /// A detector over `store` holding back workers per `policy`.
    pub fn new(store: Arc<dyn Store>, policy: FlapPolicy) -> Self {
        Self { store, policy, flaps: FlapHistory::default() }
    }
}

impl Actor for FailureDetector {
    type Context = Context<Self>;
}

impl Handler<Sweep> for FailureDetector {
    type Result = AtomicResponse<Self, StoreResult<WorkersExpired>>;

    fn handle(&mut self, Sweep { fence }: Sweep, _: &mut Self::Context) -> Self::Result {
        let store = Arc::clone(&self.store);
        let read = async move {
            let expired: Vec<WorkerId> =
                store.list_workers(WorkerFilter::Expired).await?.iter().map(|w| w.id).collect();
            let now = store.now().await?;
            let declared_dead = if expired.is_empty() {
                Vec::new()
            } else {
                store.mark_workers_dead(&fence, &expired).await?
            };
            let live = store.list_workers(WorkerFilter::Live).await?;
            for worker in &declared_dead {
                tracing::info!(worker = %worker, term = fence.term.0, "worker declared dead");
            }
            Ok((declared_dead, live, now))
        };
        AtomicResponse::new(Box::pin(read.into_actor(self).map(|result: StoreResult<_>, act, _| {
            let (declared_dead, live, now) = result?;
            for worker in &declared_dead {
                act.flaps.record_death(*worker, now);
            }
            act.flaps.prune(now, &act.policy);
            let held_back =
                live.iter().map(|w| w.id).filter(|w| act.flaps.is_held_back(*w, now, &act.policy)).collect();
            Ok(WorkersExpired { declared_dead, live, held_back, now })
        })))
    }
}

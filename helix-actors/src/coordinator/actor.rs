//! The Coordinator actor: while this process leads, reconciles every queue on each tick.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::prelude::*;
use helix_core::failure::FlapPolicy;
use helix_core::planner::Cooldowns;
use helix_core::{ClusterConfig, QueueId, SessionEpoch, WorkerId};
use helix_store::{
    AssignmentState, CoordinatorFence, QueueRecord, Store, StoreError, Subscription, WorkerStatus,
};
use tokio::time::Instant;

use super::allocator::Allocate;
use super::detector::{FailureDetector, Sweep, WorkersExpired};
use super::election::{LeadershipChanged, StepDown};
use super::reconcile::{ReconcileInput, allocation_request, plan_towards};

/// What one reconciliation round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Workers declared dead this round.
    pub declared_dead: Vec<WorkerId>,
    /// The queues read and reconciled this round (the others had not changed).
    pub reconciled: Vec<QueueId>,
    /// How many changes were applied, per queue.
    pub applied: BTreeMap<QueueId, usize>,
    /// How many planned changes the store skipped (their rows had moved on).
    pub skipped: usize,
    /// Queues that could not be reconciled, with the reason.
    pub failed: Vec<(QueueId, String)>,
}

/// Runs a full round now (every queue re-evaluated), as an operator's "rebalance" would, and
/// answers with its report; `None` when this process does not lead or a round is under way.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<RoundReport>")]
pub struct RunRound;

/// What the coordinator remembers between rounds.
#[derive(Debug, Default)]
struct Memory {
    cooldowns: BTreeMap<QueueId, Cooldowns>,
    /// Live membership as last seen: who, which session, which status, which queues.
    membership: Vec<(WorkerId, SessionEpoch, WorkerStatus, Vec<Subscription>)>,
    held_back: BTreeSet<WorkerId>,
    /// Each queue's assignment version when last read, and the load of its target per worker
    /// (its current owners' counts when it could not be allocated). An unchanged version means
    /// unchanged rows and an unchanged target.
    versions: BTreeMap<QueueId, u64>,
    loads: BTreeMap<QueueId, BTreeMap<WorkerId, u64>>,
    /// Queues with a revocation under way: re-evaluated every round until it settles.
    revoking: BTreeSet<QueueId>,
    /// Queues with partitions held for a worker's return (`rejoin_delay`): re-evaluated every
    /// round until the worker is back or the delay is over.
    holding: BTreeSet<QueueId>,
}

/// Reconciles every queue while this process leads.
///
/// On every `reconcile_interval` tick it: asks its [`FailureDetector`] to declare dead the
/// workers whose lease ran out on the store's clock (holding back those that flap, per
/// [`FlapPolicy`]); re-reads the queues whose
/// assignment version moved, all of them when the live membership changed, those with a
/// revocation under way, and every queue each `full_reevaluation_interval`; asks its allocator
/// for each such queue's target; and applies the planned changes fenced by its term. A write
/// that comes back fenced stops it at once and tells the election to step down.
pub struct Coordinator {
    store: Arc<dyn Store>,
    config: ClusterConfig,
    flap_policy: FlapPolicy,
    allocator: Recipient<Allocate>,
    /// Started with the coordinator unless one was given.
    detector: Option<Recipient<Sweep>>,
    election: Option<Recipient<StepDown>>,
    fence: Option<CoordinatorFence>,
    /// `None` while a round runs: the round owns it.
    memory: Option<Memory>,
    last_full: Option<Instant>,
}

impl Coordinator {
    /// A coordinator over `store` that asks `allocator` for targets. It acts only between a
    /// [`LeadershipChanged::BecameLeader`] and the next
    /// [`LeadershipChanged::LostLeadership`]; subscribe it to a
    /// [`LeaderElection`](super::LeaderElection).
    pub fn new(store: Arc<dyn Store>, config: ClusterConfig, allocator: Recipient<Allocate>) -> Self {
        Self {
            store,
            config,
            flap_policy: FlapPolicy::default(),
            allocator,
            detector: None,
            election: None,
            fence: None,
            memory: Some(Memory::default()),
            last_full: None,
        }
    }

    /// Tells `election` to step down when a write comes back fenced.
    #[must_use]
    pub fn with_election(mut self, election: Recipient<StepDown>) -> Self {
        self.election = Some(election);
        self
    }

    /// Uses `policy` to hold back flapping workers (in the [`FailureDetector`] the coordinator
    /// starts; ignored with [`with_failure_detector`](Self::with_failure_detector)).
    #[must_use]
    pub fn with_flap_policy(mut self, policy: FlapPolicy) -> Self {
        self.flap_policy = policy;
        self
    }

    /// Sweeps for dead workers through `detector` instead of starting its own
    /// [`FailureDetector`].
    #[must_use]
    pub fn with_failure_detector(mut self, detector: Recipient<Sweep>) -> Self {
        self.detector = Some(detector);
        self
    }

    /// Starts a round if leading and none is under way; the future answers its report.
    fn start_round(
        &mut self,
        force_full: bool,
    ) -> Option<impl ActorFuture<Self, Output = Option<RoundReport>> + use<>> {
        let fence = self.fence.clone()?;
        let detector = self.detector.clone()?;
        let memory = self.memory.take()?;
        let full = force_full
            || self.last_full.is_none_or(|at| at.elapsed() >= self.config.full_reevaluation_interval);
        if full {
            self.last_full = Some(Instant::now());
        }
        let round = run_round(
            Arc::clone(&self.store),
            self.config.clone(),
            detector,
            self.allocator.clone(),
            fence.clone(),
            memory,
            full,
        );
        Some(round.into_actor(self).map(move |(memory, result), act, _| {
            act.memory = Some(memory);
            match result {
                Ok(report) => Some(report),
                Err(err) => {
                    if err.is_fenced() {
                        tracing::warn!(term = fence.term.0, error = %err, "coordinator write fenced, stepping down");
                        if act.fence.as_ref() == Some(&fence) {
                            act.fence = None;
                        }
                        if let Some(election) = &act.election {
                            election.do_send(StepDown { term: fence.term });
                        }
                    } else {
                        tracing::warn!(error = %err, "reconciliation round failed");
                    }
                    None
                }
            }
        }))
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.detector.is_none() {
            let detector = FailureDetector::new(Arc::clone(&self.store), self.flap_policy).start();
            self.detector = Some(detector.recipient());
        }
        ctx.run_interval(self.config.reconcile_interval, |act, ctx| {
            if let Some(round) = act.start_round(false) {
                ctx.spawn(round.map(|_, _, _| ()));
            }
        });
    }
}

impl Handler<LeadershipChanged> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: LeadershipChanged, _: &mut Self::Context) {
        match msg {
            LeadershipChanged::BecameLeader { fence } => {
                tracing::info!(term = fence.term.0, "coordinating");
                self.fence = Some(fence);
                // A new term starts from what the store says, not from what an earlier term saw.
                self.last_full = None;
                if let Some(memory) = self.memory.as_mut() {
                    memory.versions.clear();
                }
            }
            LeadershipChanged::LostLeadership { term } => {
                if self.fence.as_ref().is_some_and(|f| f.term == term) {
                    tracing::info!(term = term.0, "stopped coordinating");
                    self.fence = None;
                }
            }
        }
    }
}

impl Handler<RunRound> for Coordinator {
    type Result = ResponseActFuture<Self, Option<RoundReport>>;

    fn handle(&mut self, _: RunRound, _: &mut Self::Context) -> Self::Result {
        match self.start_round(true) {
            Some(round) => Box::pin(round),
            None => Box::pin(actix::fut::ready(None)),
        }
    }
}

/// One round, off the actor: reads, decides, writes. Returns the memory with the result so the
/// actor gets it back even when the round fails.
async fn run_round(
    store: Arc<dyn Store>,
    config: ClusterConfig,
    detector: Recipient<Sweep>,
    allocator: Recipient<Allocate>,
    fence: CoordinatorFence,
    mut memory: Memory,
    full: bool,
) -> (Memory, Result<RoundReport, StoreError>) {
    let result = round(&*store, &config, &detector, &allocator, &fence, &mut memory, full).await;
    (memory, result)
}

async fn round(
    store: &dyn Store,
    config: &ClusterConfig,
    detector: &Recipient<Sweep>,
    allocator: &Recipient<Allocate>,
    fence: &CoordinatorFence,
    memory: &mut Memory,
    full: bool,
) -> Result<RoundReport, StoreError> {
    let mut report = RoundReport::default();

    // Failure detection, on the store's clock.
    let WorkersExpired { declared_dead, live, held_back, now } = detector
        .send(Sweep { fence: fence.clone() })
        .await
        .map_err(|err| StoreError::Unavailable(format!("the failure detector stopped: {err}")))??;
    report.declared_dead = declared_dead;

    let membership: Vec<_> =
        live.iter().map(|w| (w.id, w.session_epoch, w.status, w.subscriptions.clone())).collect();
    let membership_changed = membership != memory.membership || held_back != memory.held_back;
    memory.membership = membership;
    memory.held_back = held_back;

    let queues: Vec<QueueRecord> = store.list_queues(None).await?;
    let known: BTreeSet<QueueId> = queues.iter().map(|q| q.id).collect();
    memory.versions.retain(|q, _| known.contains(q));
    memory.loads.retain(|q, _| known.contains(q));
    memory.cooldowns.retain(|q, _| known.contains(q));
    memory.revoking.retain(|q| known.contains(q));
    memory.holding.retain(|q| known.contains(q));
    let live_ids: BTreeSet<WorkerId> = live.iter().map(|w| w.id).collect();
    let mut rejoin = Rejoin::new(config.rejoin_delay, now);

    for queue in &queues {
        let changed = memory.versions.get(&queue.id) != Some(&queue.assignment_version);
        let watched = memory.revoking.contains(&queue.id) || memory.holding.contains(&queue.id);
        if !(full || membership_changed || changed || watched) {
            continue;
        }
        report.reconciled.push(queue.id);
        let read = store.assignments(queue.id).await?;
        let mut loads: BTreeMap<WorkerId, u64> = BTreeMap::new();
        for owner in read.rows.iter().filter_map(|r| r.owner) {
            *loads.entry(owner).or_default() += 1;
        }
        memory.versions.insert(queue.id, read.assignment_version);
        memory.loads.insert(queue.id, loads);
        let mut other_load: BTreeMap<WorkerId, u64> = BTreeMap::new();
        for (_, counts) in memory.loads.iter().filter(|(q, _)| **q != queue.id) {
            for (worker, count) in counts {
                *other_load.entry(*worker).or_default() += count;
            }
        }
        let cooldowns = memory.cooldowns.entry(queue.id).or_default();
        cooldowns.prune(now);
        let input = ReconcileInput {
            queue,
            rows: &read.rows,
            live_workers: &live,
            held_back: &memory.held_back,
            other_load: &other_load,
            cooldowns,
            now,
            revoke_timeout: config.revoke_timeout,
        };
        let request = match allocation_request(&input) {
            Ok(request) => request,
            Err(err) => {
                report.failed.push((queue.id, err.to_string()));
                continue;
            }
        };
        let allocation = match allocator.send(Allocate(request)).await {
            Ok(Ok(allocation)) => allocation,
            Ok(Err(err)) => {
                report.failed.push((queue.id, err.to_string()));
                continue;
            }
            Err(err) => {
                report.failed.push((queue.id, format!("allocator unavailable: {err}")));
                continue;
            }
        };
        // Other queues balance against this queue's target, not its current owners: while
        // handoffs are in flight the current owners lag behind, and balancing against them
        // makes queues undo each other's choices round after round.
        let mut target_loads: BTreeMap<WorkerId, u64> = BTreeMap::new();
        for owner in allocation.assignment.iter().filter_map(|(_, owner)| owner) {
            *target_loads.entry(owner).or_default() += 1;
        }
        let mut plan = plan_towards(&input, &allocation.assignment);
        let held = rejoin.hold(store, &read.rows, &live_ids, &mut plan).await?;
        if held > 0 {
            tracing::debug!(queue = %queue.id, held, "partitions held for their owner's return");
            memory.holding.insert(queue.id);
        } else {
            memory.holding.remove(&queue.id);
        }
        let revoking_after = read.rows.iter().any(|r| r.state == AssignmentState::Revoking)
            || plan.changes.iter().any(|c| matches!(c, helix_core::planner::PlanChange::Revoke { .. }));
        if revoking_after {
            memory.revoking.insert(queue.id);
        } else {
            memory.revoking.remove(&queue.id);
        }
        memory.loads.insert(queue.id, target_loads);
        if plan.is_empty() {
            continue;
        }
        let outcome = store.apply_plan(fence, queue.id, &plan.changes).await?;
        tracing::debug!(
            queue = %queue.id,
            applied = outcome.applied,
            skipped = outcome.skipped.len(),
            version = outcome.assignment_version,
            "plan applied"
        );
        cooldowns.record_timeouts(&plan, now, config.revoke_cooldown);
        report.applied.insert(queue.id, outcome.applied);
        report.skipped += outcome.skipped.len();
        // The rows changed: read them again next round for exact loads.
        memory.versions.remove(&queue.id);
    }
    Ok(report)
}

/// The partitions of workers that left or died less than `rejoin_delay` ago wait for them:
/// no change is applied to a row whose owner is such a worker (static membership).
struct Rejoin {
    delay: chrono::TimeDelta,
    now: chrono::DateTime<chrono::Utc>,
    /// Whether each owner seen gone this round is still within its delay.
    reserved: BTreeMap<WorkerId, bool>,
}

impl Rejoin {
    fn new(delay: std::time::Duration, now: chrono::DateTime<chrono::Utc>) -> Self {
        let delay = chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::MAX);
        Self { delay, now, reserved: BTreeMap::new() }
    }

    /// Drops from `plan` the changes to rows owned by a reserved worker; returns how many rows
    /// are held. Reads the record of each gone owner once per round, and only with a delay.
    async fn hold(
        &mut self,
        store: &dyn Store,
        rows: &[helix_store::AssignmentRecord],
        live: &BTreeSet<WorkerId>,
        plan: &mut helix_core::planner::Plan,
    ) -> Result<usize, StoreError> {
        if self.delay.is_zero() {
            return Ok(0);
        }
        let mut held = BTreeSet::new();
        for row in rows {
            let Some(owner) = row.owner.filter(|o| !live.contains(o)) else { continue };
            if !self.reserved.contains_key(&owner) {
                let reserved = match store.get_worker(owner).await {
                    // The lease ended when it left, or ran out when it died.
                    Ok(record) => record
                        .lease_expires_at
                        .checked_add_signed(self.delay)
                        .is_none_or(|until| self.now < until),
                    Err(StoreError::NotFound(_)) => false,
                    Err(err) => return Err(err),
                };
                self.reserved.insert(owner, reserved);
            }
            if self.reserved.get(&owner) == Some(&true) {
                held.insert(row.partition);
            }
        }
        plan.changes.retain(|change| !held.contains(&change.partition()));
        Ok(held.len())
    }
}

//! The Coordinator actor: while this process leads, reconciles every queue on each tick.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use helix_core::allocation::{Allocation, Assignment};
use helix_core::failure::FlapPolicy;
use helix_core::planner::Cooldowns;
use helix_core::{ClusterConfig, QueueId, SessionEpoch, WorkerId};
use helix_store::{
    AssignmentRecord, AssignmentState, CoordinatorFence, PlanOutcome, QueueAssignments, QueueRecord, Store,
    StoreError, Subscription, WorkerRecord, WorkerStatus,
};
use tokio::time::Instant;

use super::allocator::Allocate;
use super::detector::{FailureDetector, Sweep, WorkersExpired};
use super::election::{LeadershipChanged, StepDown};
use super::reconcile::{ReconcileInput, check_rows, plan_towards, request_for};
use super::schedules::{SCHEDULE_POLL_INTERVAL, fire_due};

/// How long after a live worker's lease end the coordinator sweeps for it, and the least
/// delay of such a sweep.
const LEASE_END_SLACK: Duration = Duration::from_millis(5);

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
    /// Each queue's assignment version when last read, and its owners then. An unchanged
    /// version means unchanged rows, so a queue that is not read again is allocated from
    /// these owners.
    versions: BTreeMap<QueueId, u64>,
    current: BTreeMap<QueueId, Assignment>,
    /// Queues with a revocation under way: re-evaluated every round until it settles.
    revoking: BTreeSet<QueueId>,
    /// Queues with partitions held for a worker's return (`rejoin_delay`): re-evaluated every
    /// round until the worker is back or the delay is over.
    holding: BTreeSet<QueueId>,
    /// When the earliest lease of a live worker runs out, as of the last sweep, on the local
    /// clock: the coordinator sweeps then rather than at its next tick.
    earliest_lease_end: Option<Instant>,
}

/// Reconciles every queue while this process leads.
///
/// On every `reconcile_interval` tick it: asks its [`FailureDetector`] to declare dead the
/// workers whose lease ran out on the store's clock (holding back those that flap, per
/// [`FlapPolicy`]); re-reads the queues whose assignment version moved, all of them when the
/// live membership changed, those with a revocation under way, and every queue each
/// `full_reevaluation_interval`; asks its allocator once for the targets of every queue of the
/// cluster (the queues not re-read with the owners last read, which their unchanged version
/// vouches for); and applies the planned changes of each queue fenced by its term (a queue
/// that was not re-read is read first, if its target moves anything).
///
/// Bounds (`docs/protocol.md`): every store call and the allocator's answer are given up after
/// `coordinator_call_timeout`; a call that served one queue fails that queue for the round
/// and the round goes on with the others. A round that fails as a whole (the failure sweep,
/// the list of queues or the allocator failed or timed out) makes no progress; when no round
/// made progress for `coordinator_lease - safety_margin`, or one round runs that long, the
/// coordinator stops acting and tells the election to step down, which releases the lease so
/// a standby takes over. A write that comes back fenced stops it at once likewise.
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
    /// When the current term began or its last round made progress.
    last_progress: Instant,
    /// A round planned for when a live worker's lease runs out, before the next tick.
    wake: Option<(Instant, SpawnHandle)>,
    /// Whether a fire of schedules is under way.
    firing: bool,
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
            last_progress: Instant::now(),
            wake: None,
            firing: false,
        }
    }

    /// Tells `election` to step down when a write comes back fenced or no round makes
    /// progress for a lease.
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

    /// How long the coordinator may go without progress: `coordinator_lease - safety_margin`.
    fn progress_limit(&self) -> Duration {
        self.config.coordinator_lease.saturating_sub(self.config.safety_margin)
    }

    /// Notes progress now and checks again once the limit has passed.
    fn progressed(&mut self, ctx: &mut Context<Self>) {
        self.last_progress = Instant::now();
        let Some(fence) = self.fence.clone() else { return };
        ctx.run_later(self.progress_limit(), move |act, _| {
            let stuck = act.last_progress.elapsed() >= act.progress_limit();
            if stuck && act.fence.as_ref() == Some(&fence) {
                tracing::warn!(term = fence.term.0, "no reconciliation progress for a lease, stepping down");
                act.step_down(&fence);
            }
        });
    }

    /// Plans a round for just after `lease_end` (the earliest end of a live worker's lease)
    /// when that comes before the next tick, so that a dead worker's partitions move as soon
    /// as its lease has run out on the store's clock rather than up to `reconcile_interval`
    /// later (`docs/protocol.md`, "Failover"). A live worker's lease ends within a tick only
    /// when it missed renewals, so a healthy cluster never gets these extra rounds.
    fn wake_at_lease_end(&mut self, lease_end: Option<Instant>, ctx: &mut Context<Self>) {
        let Some(lease_end) = lease_end else { return };
        // Past the end by a little, so that the store's clock has passed it too; never sooner
        // than a few ms from now, so an early wake costs one extra sweep, not a busy loop.
        let at = (lease_end + LEASE_END_SLACK).max(Instant::now() + LEASE_END_SLACK);
        if at >= Instant::now() + self.config.reconcile_interval || self.wake.is_some_and(|(w, _)| w <= at) {
            return;
        }
        if let Some((_, handle)) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
            act.wake = None;
            if let Some(round) = act.start_round(false) {
                ctx.spawn(round.map(|_, _, _| ()));
            }
        });
        self.wake = Some((at, handle));
    }

    /// Stops acting under `fence` and tells the election to step down.
    fn step_down(&mut self, fence: &CoordinatorFence) {
        if self.fence.as_ref() == Some(fence) {
            self.fence = None;
        }
        if let Some(election) = &self.election {
            election.do_send(StepDown { term: fence.term });
        }
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
            self.progress_limit(),
        );
        Some(round.into_actor(self).map(move |(memory, result), act, ctx| {
            let lease_end = memory.earliest_lease_end;
            act.memory = Some(memory);
            act.wake_at_lease_end(lease_end, ctx);
            match result {
                Ok((report, progress)) => {
                    if progress && act.fence.as_ref() == Some(&fence) {
                        act.progressed(ctx);
                    }
                    Some(report)
                }
                Err(RoundError::Store(err)) if err.is_fenced() => {
                    tracing::warn!(term = fence.term.0, error = %err, "coordinator write fenced, stepping down");
                    act.step_down(&fence);
                    None
                }
                Err(RoundError::Deadline(limit)) => {
                    tracing::warn!(term = fence.term.0, ?limit, "reconciliation round outlived the lease, stepping down");
                    act.step_down(&fence);
                    None
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reconciliation round failed");
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
        ctx.run_interval(SCHEDULE_POLL_INTERVAL, |act, ctx| act.fire_schedules(ctx));
    }
}

impl Coordinator {
    /// Materializes the slots of due schedules, if leading and no fire is under way. A fenced
    /// write steps down; any other failure is logged and tried again at the next poll, which
    /// reads the cursors afresh, so a write whose answer was lost is never repeated blindly.
    fn fire_schedules(&mut self, ctx: &mut Context<Self>) {
        let Some(fence) = self.fence.clone() else { return };
        if self.firing {
            return;
        }
        self.firing = true;
        let fire = fire_due(Arc::clone(&self.store), fence.clone(), self.config.coordinator_call_timeout);
        ctx.spawn(fire.into_actor(self).map(move |result, act, _| {
            act.firing = false;
            match result {
                Ok(_) => {}
                Err(err) if err.is_fenced() => {
                    tracing::warn!(term = fence.term.0, error = %err, "schedule fire fenced, stepping down");
                    act.step_down(&fence);
                }
                Err(err) => tracing::warn!(error = %err, "schedule fire failed"),
            }
        }));
    }
}

impl Handler<LeadershipChanged> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Self::Context) {
        match msg {
            LeadershipChanged::BecameLeader { fence } => {
                tracing::info!(term = fence.term.0, "coordinating");
                self.fence = Some(fence);
                // A new term starts from what the store says, not from what an earlier term saw.
                self.last_full = None;
                if let Some(memory) = self.memory.as_mut() {
                    memory.versions.clear();
                    memory.current.clear();
                }
                self.progressed(ctx);
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

/// Why a round failed as a whole.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// A store call that every queue depends on failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The round ran for this long.
    #[error("the round ran for {0:?}")]
    Deadline(Duration),
}

/// `call`, given up after `limit` as [`StoreError::Unavailable`].
pub(super) async fn timed<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    if let Some(stopped) = crate::runtime::stopped(what) {
        return Err(stopped);
    }
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("{what} took longer than {limit:?}"))))
}

/// One round, off the actor: reads, decides, writes, within `limit`. Returns the memory with
/// the result so the actor gets it back even when the round fails.
#[allow(clippy::too_many_arguments)]
async fn run_round(
    store: Arc<dyn Store>,
    config: ClusterConfig,
    detector: Recipient<Sweep>,
    allocator: Recipient<Allocate>,
    fence: CoordinatorFence,
    mut memory: Memory,
    full: bool,
    limit: Duration,
) -> (Memory, Result<(RoundReport, bool), RoundError>) {
    if let Some(stopped) = crate::runtime::stopped("the round") {
        return (memory, Err(RoundError::Store(stopped)));
    }
    let round = round(&*store, &config, &detector, &allocator, &fence, &mut memory, full);
    let result = tokio::time::timeout(limit, round).await.unwrap_or(Err(RoundError::Deadline(limit)));
    (memory, result)
}

/// The owner every partition is committed to: the target of a revocation under way when that
/// target is live, the owner otherwise. Allocating from these rather than from the owners of
/// the moment keeps targets steady while handoffs are in flight (an allocation is a fixed
/// point of itself), instead of recomputing them from half-moved states.
fn committed_owners(rows: &[AssignmentRecord], live: &BTreeSet<WorkerId>) -> Assignment {
    Assignment::from_owners(rows.iter().map(|row| match (row.state, row.target) {
        (AssignmentState::Revoking, Some(target)) if live.contains(&target) => Some(target),
        _ => row.owner,
    }))
}

/// The counts of an assignment per worker.
fn loads_of(assignment: &Assignment) -> impl Iterator<Item = (WorkerId, u64)> + '_ {
    assignment.worker_table().iter().copied().zip(assignment.counts().iter().map(|&c| u64::from(c)))
}

/// A round; answers its report and whether it made progress: the allocator answered, and
/// the store did not fail every queue the round tried.
async fn round(
    store: &dyn Store,
    config: &ClusterConfig,
    detector: &Recipient<Sweep>,
    allocator: &Recipient<Allocate>,
    fence: &CoordinatorFence,
    memory: &mut Memory,
    full: bool,
) -> Result<(RoundReport, bool), RoundError> {
    let call = config.coordinator_call_timeout;
    let mut report = RoundReport::default();

    // Failure detection, on the store's clock.
    memory.earliest_lease_end = None;
    let sweep = async {
        detector
            .send(Sweep { fence: fence.clone() })
            .await
            .map_err(|err| StoreError::Unavailable(format!("the failure detector stopped: {err}")))?
    };
    let WorkersExpired { declared_dead, live, held_back, now } =
        timed(call, "the failure sweep", sweep).await?;
    report.declared_dead = declared_dead;
    // On the local clock, counted from when the sweep answered (its `now` was read a little
    // earlier, so this errs late by the rest of the sweep).
    let swept = Instant::now();
    memory.earliest_lease_end = live
        .iter()
        .map(|w| w.lease_expires_at)
        .min()
        .map(|end| swept + (end - now).to_std().unwrap_or_default());

    let membership: Vec<_> =
        live.iter().map(|w| (w.id, w.session_epoch, w.status, w.subscriptions.clone())).collect();
    let membership_changed = membership != memory.membership || held_back != memory.held_back;
    memory.membership = membership;
    memory.held_back = held_back;

    let queues: Vec<QueueRecord> = timed(call, "listing the queues", store.list_queues(None)).await?;
    let known: BTreeSet<QueueId> = queues.iter().map(|q| q.id).collect();
    memory.versions.retain(|q, _| known.contains(q));
    memory.current.retain(|q, _| known.contains(q));
    memory.cooldowns.retain(|q, _| known.contains(q));
    memory.revoking.retain(|q| known.contains(q));
    memory.holding.retain(|q| known.contains(q));
    let live_ids: BTreeSet<WorkerId> = live.iter().map(|w| w.id).collect();
    let mut rejoin = Rejoin::new(config.rejoin_delay, now, call);

    // Read the queues that changed (or all of them), one call each.
    let mut read: BTreeMap<QueueId, QueueAssignments> = BTreeMap::new();
    // Queues that failed for want of the store, and queues planned (and applied) in full.
    let (mut stuck, mut succeeded) = (0usize, 0usize);
    for queue in &queues {
        let changed = memory.versions.get(&queue.id) != Some(&queue.assignment_version);
        let watched = memory.revoking.contains(&queue.id) || memory.holding.contains(&queue.id);
        let unknown = !memory.current.contains_key(&queue.id);
        if !(full || membership_changed || changed || watched || unknown) {
            continue;
        }
        report.reconciled.push(queue.id);
        match timed(call, "reading a queue's assignments", store.assignments(queue.id)).await {
            Ok(rows) => {
                memory.versions.insert(queue.id, rows.assignment_version);
                memory.current.insert(queue.id, committed_owners(&rows.rows, &live_ids));
                read.insert(queue.id, rows);
            }
            Err(err) => {
                memory.versions.remove(&queue.id);
                report.failed.push((queue.id, err.to_string()));
                stuck += 1;
            }
        }
    }
    if read.is_empty() && stuck == 0 {
        return Ok((report, true));
    }

    // One request for every queue of the cluster, so the allocator can balance them together.
    let mut total: BTreeMap<WorkerId, u64> = BTreeMap::new();
    for current in memory.current.values() {
        for (worker, count) in loads_of(current) {
            *total.entry(worker).or_default() += count;
        }
    }
    let mut requests = Vec::new();
    let mut asked: Vec<&QueueRecord> = Vec::new();
    for queue in &queues {
        let Some(current) = memory.current.get(&queue.id) else { continue };
        let mut other_load = total.clone();
        for (worker, count) in loads_of(current) {
            if let Some(load) = other_load.get_mut(&worker) {
                *load -= count;
            }
        }
        match request_for(queue, current.clone(), &live, &memory.held_back, other_load) {
            Ok(request) => {
                requests.push(request);
                asked.push(queue);
            }
            Err(err) => {
                if read.remove(&queue.id).is_some() {
                    report.failed.push((queue.id, err.to_string()));
                }
            }
        }
    }
    let expected = requests.len();
    let answers = match tokio::time::timeout(call, allocator.send(Allocate { requests })).await {
        Ok(Ok(answers)) if answers.len() == expected => answers,
        outcome => {
            let reason = match outcome {
                Ok(Ok(answers)) => format!("the allocator answered {} of {expected} queues", answers.len()),
                Ok(Err(err)) => format!("allocator unavailable: {err}"),
                Err(_) => format!("the allocator did not answer within {call:?}"),
            };
            tracing::warn!(reason = %reason, "no allocation this round");
            for queue in read.keys() {
                // Read again next round: what was read still awaits a decision.
                memory.versions.remove(queue);
                report.failed.push((*queue, reason.clone()));
            }
            return Ok((report, false));
        }
    };

    for (queue, answer) in asked.into_iter().zip(answers) {
        let allocation = match answer {
            Ok(allocation) => allocation,
            Err(err) => {
                if read.remove(&queue.id).is_some() {
                    memory.versions.remove(&queue.id);
                    report.failed.push((queue.id, err.to_string()));
                }
                continue;
            }
        };
        let rows = match read.remove(&queue.id) {
            Some(rows) => rows,
            None => {
                // Not read this round: its target moves something only if it differs from the
                // owners last read; then read its rows to plan (a version that moved in the
                // meantime is read again next round).
                if memory.current.get(&queue.id) == Some(&allocation.assignment) {
                    succeeded += 1;
                    continue;
                }
                report.reconciled.push(queue.id);
                match timed(call, "reading a queue's assignments", store.assignments(queue.id)).await {
                    Ok(rows) => {
                        if memory.versions.get(&queue.id) != Some(&rows.assignment_version) {
                            memory.versions.remove(&queue.id);
                        }
                        rows
                    }
                    Err(err) => {
                        report.failed.push((queue.id, err.to_string()));
                        stuck += 1;
                        continue;
                    }
                }
            }
        };
        match apply_queue(
            store,
            config,
            fence,
            memory,
            &mut rejoin,
            &live,
            &live_ids,
            now,
            queue,
            &rows,
            &allocation,
        )
        .await
        {
            Ok(Some(outcome)) => {
                report.applied.insert(queue.id, outcome.applied);
                report.skipped += outcome.skipped.len();
                succeeded += 1;
            }
            Ok(None) => succeeded += 1,
            Err(err) if err.is_fenced() => return Err(err.into()),
            Err(err) => {
                memory.versions.remove(&queue.id);
                if !matches!(err, StoreError::Invalid(_)) {
                    stuck += 1;
                }
                report.failed.push((queue.id, err.to_string()));
            }
        }
    }
    // A round makes progress unless the store failed it for every queue it tried; a queue
    // whose input is invalid does not count against it.
    Ok((report, stuck == 0 || succeeded > 0))
}

/// Plans one queue's changes towards `allocation` and applies them; the outcome when a plan
/// was applied.
#[allow(clippy::too_many_arguments)]
async fn apply_queue(
    store: &dyn Store,
    config: &ClusterConfig,
    fence: &CoordinatorFence,
    memory: &mut Memory,
    rejoin: &mut Rejoin,
    live: &[WorkerRecord],
    live_ids: &BTreeSet<WorkerId>,
    now: DateTime<Utc>,
    queue: &QueueRecord,
    rows: &QueueAssignments,
    allocation: &Allocation,
) -> Result<Option<PlanOutcome>, StoreError> {
    let invalid = |reason: String| StoreError::Invalid(reason);
    check_rows(queue, &rows.rows).map_err(|err| invalid(err.to_string()))?;
    if allocation.assignment.len() != rows.rows.len() {
        return Err(invalid(format!(
            "the allocator answered {} partitions for {}",
            allocation.assignment.len(),
            rows.rows.len()
        )));
    }
    let no_load = BTreeMap::new();
    let cooldowns = memory.cooldowns.entry(queue.id).or_default();
    cooldowns.prune(now);
    let input = ReconcileInput {
        queue,
        rows: &rows.rows,
        live_workers: live,
        held_back: &memory.held_back,
        other_load: &no_load,
        cooldowns,
        now,
        revoke_timeout: config.revoke_timeout,
    };
    let mut plan = plan_towards(&input, &allocation.assignment);
    let held = rejoin.hold(store, &rows.rows, live_ids, &mut plan).await?;
    if held > 0 {
        tracing::debug!(queue = %queue.id, held, "partitions held for their owner's return");
        memory.holding.insert(queue.id);
    } else {
        memory.holding.remove(&queue.id);
    }
    let revoking_after = rows.rows.iter().any(|r| r.state == AssignmentState::Revoking)
        || plan.changes.iter().any(|c| matches!(c, helix_core::planner::PlanChange::Revoke { .. }));
    if revoking_after {
        memory.revoking.insert(queue.id);
    } else {
        memory.revoking.remove(&queue.id);
    }
    if plan.is_empty() {
        return Ok(None);
    }
    let call = config.coordinator_call_timeout;
    let outcome = timed(call, "applying a plan", store.apply_plan(fence, queue.id, &plan.changes)).await?;
    tracing::debug!(
        queue = %queue.id,
        applied = outcome.applied,
        skipped = outcome.skipped.len(),
        version = outcome.assignment_version,
        "plan applied"
    );
    if let Some(cooldowns) = memory.cooldowns.get_mut(&queue.id) {
        cooldowns.record_timeouts(&plan, now, config.revoke_cooldown);
    }
    // The rows changed: read them again next round.
    memory.versions.remove(&queue.id);
    Ok(Some(outcome))
}

/// The partitions of workers that left or died less than `rejoin_delay` ago wait for them:
/// no change is applied to a row whose owner is such a worker (static membership).
struct Rejoin {
    delay: chrono::TimeDelta,
    now: chrono::DateTime<chrono::Utc>,
    /// Whether each owner seen gone this round is still within its delay.
    reserved: BTreeMap<WorkerId, bool>,
    /// How long one store call may take.
    call: Duration,
}

impl Rejoin {
    fn new(delay: Duration, now: DateTime<Utc>, call: Duration) -> Self {
        let delay = chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::MAX);
        Self { delay, now, reserved: BTreeMap::new(), call }
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
                let reserved = match timed(self.call, "reading a worker", store.get_worker(owner)).await {
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

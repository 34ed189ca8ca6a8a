//! One queue's reconciliation: from the rows, workers and time read from the store to the
//! plan that moves the queue towards its target assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::allocation::{
    AllocationError, AllocationInput, AllocationStrategy, Assignment, Constraints, Unassigned,
};
use helix_core::planner::{self, Cooldowns, PartitionRow, Plan, PlanInput, RowState};
use helix_core::{WorkerId, WorkerInfo};
use helix_store::{AssignmentRecord, AssignmentState, QueueRecord, WorkerRecord, WorkerStatus};

/// The key of a queue's settings that holds its [`Constraints`].
pub const CONSTRAINTS_KEY: &str = "constraints";

/// Why a queue could not be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The queue's `constraints` setting is not a valid [`Constraints`] object.
    #[error("queue {queue} has invalid constraints: {reason}")]
    BadConstraints {
        /// The queue.
        queue: String,
        /// What is wrong.
        reason: String,
    },
    /// The rows read do not cover the queue's partitions once each, in order.
    #[error("queue {queue} has {rows} assignment rows for {partitions} partitions")]
    InconsistentRows {
        /// The queue.
        queue: String,
        /// How many rows were read.
        rows: usize,
        /// How many partitions the queue has.
        partitions: u32,
    },
    /// The allocation strategy refused its input.
    #[error("allocation failed: {0}")]
    Allocation(#[from] AllocationError),
}

/// What the coordinator read for one queue, all on the store's clock.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileInput<'a> {
    /// The queue.
    pub queue: &'a QueueRecord,
    /// Its assignment rows, one per partition, sorted by partition.
    pub rows: &'a [AssignmentRecord],
    /// The workers that are live on the store's clock (ACTIVE or DRAINING with a running
    /// lease), whatever they subscribe to. Those subscribed to the queue are the candidates;
    /// any live owner keeps its partitions until it hands them off.
    pub live_workers: &'a [WorkerRecord],
    /// Workers held back from new partitions (flapping), though live.
    pub held_back: &'a BTreeSet<WorkerId>,
    /// How many partitions of the other queues each worker owns.
    pub other_load: &'a BTreeMap<WorkerId, u64>,
    /// Partitions whose revocation timed out recently.
    pub cooldowns: &'a Cooldowns,
    /// The store's current time.
    pub now: DateTime<Utc>,
    /// How long an owner may take to hand off a revoked partition.
    pub revoke_timeout: Duration,
}

/// The result of reconciling one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The changes to apply, fenced by term.
    pub plan: Plan,
    /// The owner every partition should end up with.
    pub target: Assignment,
    /// The partitions no worker can take, and why.
    pub unassigned: Vec<Unassigned>,
}

/// The constraints a queue declares under the `constraints` key of its settings; none when
/// the key is absent.
///
/// ```
/// use helix_actors::coordinator::queue_constraints;
/// # use helix_core::{DomainName, PartitionCount, QueueId, QueueName};
/// # use helix_store::QueueRecord;
/// # let mut queue = QueueRecord { id: QueueId(1), domain: DomainName::new("d").unwrap(),
/// #     name: QueueName::new("q").unwrap(), partition_count: PartitionCount::new(4).unwrap(),
/// #     allocator: "balanced-sticky".into(), settings: serde_json::json!({}),
/// #     assignment_version: 0, created_at: chrono::Utc::now() };
/// queue.settings = serde_json::json!({
///     "constraints": { "required_labels": { "zone": "eu" }, "max_partitions_per_worker": 8 }
/// });
/// let constraints = queue_constraints(&queue).unwrap();
/// assert_eq!(constraints.max_partitions_per_worker, Some(8));
/// ```
///
/// # Errors
/// [`ReconcileError::BadConstraints`] when the value is not a valid constraints object.
pub fn queue_constraints(queue: &QueueRecord) -> Result<Constraints, ReconcileError> {
    match queue.settings.get(CONSTRAINTS_KEY) {
        None | Some(serde_json::Value::Null) => Ok(Constraints::default()),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| ReconcileError::BadConstraints {
            queue: format!("{}/{}", queue.domain, queue.name),
            reason: e.to_string(),
        }),
    }
}

/// What an allocator is asked for one queue: the candidates, the current owners, the
/// constraints and everyone's load elsewhere. [`Allocate`](super::Allocate) carries it to a
/// pluggable allocator actor.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocationRequest {
    /// The queue, with its allocator's name and its settings.
    pub queue: QueueRecord,
    /// The live workers subscribed to the queue, with their capacity, labels and state
    /// (draining or held back workers are marked draining: they get nothing new).
    pub workers: Vec<WorkerInfo>,
    /// The current owner of every partition.
    pub current: Assignment,
    /// The queue's constraints.
    pub constraints: Constraints,
    /// How many partitions of the other queues each worker owns.
    pub other_load: BTreeMap<WorkerId, u64>,
}

impl AllocationRequest {
    /// The request as the input of an [`AllocationStrategy`].
    pub fn input(&self) -> AllocationInput<'_> {
        AllocationInput::new(&self.workers, &self.current)
            .with_constraints(&self.constraints)
            .with_other_load(&self.other_load)
            .with_queue(self.queue.id.0)
    }
}

/// Checks that `rows` hold every partition of `queue` once, in order.
///
/// # Errors
/// [`ReconcileError::InconsistentRows`] when they do not.
pub(crate) fn check_rows(queue: &QueueRecord, rows: &[AssignmentRecord]) -> Result<(), ReconcileError> {
    let partitions = queue.partition_count.get();
    let in_order = rows.len() == partitions as usize
        && rows.iter().enumerate().all(|(i, row)| row.partition.0 as usize == i);
    if in_order {
        Ok(())
    } else {
        Err(ReconcileError::InconsistentRows {
            queue: format!("{}/{}", queue.domain, queue.name),
            rows: rows.len(),
            partitions,
        })
    }
}

/// Builds the allocation request of one queue from what the coordinator read.
///
/// # Errors
/// [`ReconcileError`] for invalid constraints or rows that do not match the queue.
pub fn allocation_request(input: &ReconcileInput<'_>) -> Result<AllocationRequest, ReconcileError> {
    let queue = input.queue;
    check_rows(queue, input.rows)?;
    let current = Assignment::from_owners(input.rows.iter().map(|row| row.owner));
    request_for(queue, current, input.live_workers, input.held_back, input.other_load.clone())
}

/// Builds the allocation request of one queue from its current owners (as last read) and the
/// live workers.
///
/// # Errors
/// [`ReconcileError::BadConstraints`] for invalid constraints.
pub fn request_for(
    queue: &QueueRecord,
    current: Assignment,
    live_workers: &[WorkerRecord],
    held_back: &BTreeSet<WorkerId>,
    other_load: BTreeMap<WorkerId, u64>,
) -> Result<AllocationRequest, ReconcileError> {
    let constraints = queue_constraints(queue)?;
    let workers: Vec<WorkerInfo> = live_workers
        .iter()
        .filter_map(|worker| {
            let subscription = worker.subscriptions.iter().find(|s| s.queue_id == queue.id)?;
            let capacity = NonZeroU32::new(subscription.capacity).unwrap_or(NonZeroU32::MIN);
            let mut info = WorkerInfo::new(worker.id).with_capacity(capacity);
            info.labels = worker.labels.clone();
            let draining = worker.status == WorkerStatus::Draining || held_back.contains(&worker.id);
            Some(if draining { info.draining() } else { info })
        })
        .collect();
    Ok(AllocationRequest { queue: queue.clone(), workers, current, constraints, other_load })
}

/// Plans the grants, revocations and cancellations that move the queue's rows towards
/// `target` without ever giving a partition two owners ([`helix_core::planner::plan`]).
pub fn plan_towards(input: &ReconcileInput<'_>, target: &Assignment) -> Plan {
    let rows: Vec<PartitionRow> = input
        .rows
        .iter()
        .map(|row| PartitionRow {
            owner: row.owner,
            epoch: row.epoch,
            state: match row.state {
                AssignmentState::Assigned => RowState::Assigned,
                AssignmentState::Revoking => RowState::Revoking { target: row.target, since: row.updated_at },
                AssignmentState::Failed => RowState::Failed,
            },
        })
        .collect();
    let live: BTreeSet<WorkerId> = input.live_workers.iter().map(|w| w.id).collect();
    planner::plan(&PlanInput {
        current: &rows,
        target,
        live: &live,
        cooldowns: input.cooldowns,
        now: input.now,
        revoke_timeout: input.revoke_timeout,
    })
}

/// Decides what to change in one queue: allocates its partitions among the live workers that
/// subscribe to it (with their capacity, labels and state, and everyone's load from the other
/// queues) with `strategy`, then plans the changes towards that target
/// ([`plan_towards`]). The coordinator actor does the same in two steps, asking its
/// allocator actor in between.
///
/// # Errors
/// [`ReconcileError`] for invalid constraints, rows that do not match the queue, or an input
/// the strategy refuses.
pub fn reconcile(
    input: &ReconcileInput<'_>,
    strategy: &dyn AllocationStrategy,
) -> Result<Reconciled, ReconcileError> {
    let request = allocation_request(input)?;
    let allocation = strategy.allocate(&request.input())?;
    let plan = plan_towards(input, &allocation.assignment);
    Ok(Reconciled { plan, target: allocation.assignment, unassigned: allocation.unassigned })
}

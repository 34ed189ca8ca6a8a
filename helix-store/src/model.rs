//! The records the store reads and writes, and the inputs of its operations.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{
    ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueId, QueueName, SessionEpoch, Term,
    WorkerId,
};
use serde::{Deserialize, Serialize};

use crate::error::{StoreError, StoreResult};

pub use helix_core::planner::{CancelReason, PlanChange};

/// The allocator a queue uses when none is named.
pub const DEFAULT_ALLOCATOR: &str = "balanced-sticky";

/// The longest host name a worker may register with, in bytes.
pub const MAX_HOST_LEN: usize = 255;
/// The most labels a worker may carry.
pub const MAX_LABELS: usize = 64;
/// The longest label key or value, in bytes.
pub const MAX_LABEL_LEN: usize = 255;
/// The largest capacity weight of one subscription.
pub const MAX_CAPACITY: u32 = 1_000;
/// The largest detail an event is stored with, in bytes of its JSON text. A longer detail
/// (a handler's error of any size, for example) has its strings cut, on a character boundary
/// and marked with `…`, until it fits; see [`bound_detail`]. Far below the 64 KiB of a MySQL
/// `TEXT` column.
pub const MAX_EVENT_DETAIL_BYTES: usize = 16 * 1024;
/// The most events [`Store::events_since`](crate::Store::events_since) returns at once; a
/// larger limit is read as this one. Page with the last id for more.
pub const MAX_EVENTS_PER_READ: u32 = 1_000;

/// A domain, the namespace of queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Its name.
    pub name: DomainName,
    /// When it was created, on the database clock.
    pub created_at: DateTime<Utc>,
}

/// What a new queue looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueSpec {
    /// The domain it belongs to; it must exist.
    pub domain: DomainName,
    /// Its name, unique inside the domain.
    pub name: QueueName,
    /// Its fixed number of partitions.
    pub partition_count: PartitionCount,
    /// The name of the allocator that places its partitions (1 to 64 characters from
    /// `a-z 0-9 - _`); [`DEFAULT_ALLOCATOR`] by default.
    pub allocator: String,
    /// Free-form settings, a JSON object (`{}` by default).
    pub settings: serde_json::Value,
}

impl QueueSpec {
    /// A spec with the default allocator and no settings.
    pub fn new(domain: DomainName, name: QueueName, partition_count: PartitionCount) -> Self {
        Self {
            domain,
            name,
            partition_count,
            allocator: DEFAULT_ALLOCATOR.to_owned(),
            settings: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Checks the parts that the types do not already guarantee.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a bad allocator name or settings that are not an object.
    pub fn validate(&self) -> StoreResult<()> {
        let allocator_ok = !self.allocator.is_empty()
            && self.allocator.len() <= 64
            && self
                .allocator
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !allocator_ok {
            return Err(StoreError::Invalid(format!(
                "allocator name {:?} must be 1 to 64 characters from a-z 0-9 - _",
                self.allocator
            )));
        }
        if !self.settings.is_object() {
            return Err(StoreError::Invalid("queue settings must be a JSON object".to_owned()));
        }
        Ok(())
    }
}

/// A queue as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Its database id.
    pub id: QueueId,
    /// Its domain.
    pub domain: DomainName,
    /// Its name.
    pub name: QueueName,
    /// Its number of partitions.
    pub partition_count: PartitionCount,
    /// The allocator that places its partitions.
    pub allocator: String,
    /// Its settings (a JSON object).
    pub settings: serde_json::Value,
    /// Bumped by every write to the queue's assignments, so readers can skip unchanged state.
    pub assignment_version: u64,
    /// When it was created, on the database clock.
    pub created_at: DateTime<Utc>,
}

/// A worker's interest in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subscription {
    /// The queue served.
    pub queue_id: QueueId,
    /// The worker's weight for that queue, 1 to [`MAX_CAPACITY`]; a worker with capacity 2
    /// gets about twice the partitions of one with capacity 1.
    pub capacity: u32,
}

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// Its identity; registering again under the same id starts a new session.
    pub id: WorkerId,
    /// The host it runs on (at most [`MAX_HOST_LEN`] bytes).
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Free-form labels that queues may require (at most [`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
    /// The queues it serves; each queue at most once.
    pub subscriptions: Vec<Subscription>,
    /// How long its lease lasts after each heartbeat.
    pub session_timeout: Duration,
}

impl WorkerRegistration {
    /// Checks sizes, capacities, duplicate subscriptions and the timeout.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] naming the first problem.
    pub fn validate(&self) -> StoreResult<()> {
        let invalid = |msg: String| Err(StoreError::Invalid(msg));
        if self.host.len() > MAX_HOST_LEN {
            return invalid(format!(
                "host name is {} bytes long, the maximum is {MAX_HOST_LEN}",
                self.host.len()
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return invalid(format!("{} labels given, the maximum is {MAX_LABELS}", self.labels.len()));
        }
        if let Some((key, _)) = self
            .labels
            .iter()
            .find(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
        {
            return invalid(format!(
                "label {key:?} must have a key of 1 to {MAX_LABEL_LEN} bytes and a value of at most {MAX_LABEL_LEN}"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for sub in &self.subscriptions {
            if !(1..=MAX_CAPACITY).contains(&sub.capacity) {
                return invalid(format!(
                    "capacity {} for queue {} must be between 1 and {MAX_CAPACITY}",
                    sub.capacity, sub.queue_id
                ));
            }
            if !seen.insert(sub.queue_id) {
                return invalid(format!("queue {} is subscribed twice", sub.queue_id));
            }
        }
        validate_lease_duration("session timeout", self.session_timeout)
    }
}

/// Refuses zero and absurd (over a day) lease durations.
pub(crate) fn validate_lease_duration(what: &str, d: Duration) -> StoreResult<()> {
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(StoreError::Invalid(format!("{what} {d:?} must be more than zero and at most a day")));
    }
    Ok(())
}

/// The lifecycle state of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkerStatus {
    /// Serving, and eligible for new partitions.
    Active,
    /// Serving what it has, handing it over, and getting nothing new.
    Draining,
    /// Deregistered gracefully.
    Left,
    /// Declared dead by the coordinator after its lease expired.
    Dead,
}

impl WorkerStatus {
    /// The stored form: `ACTIVE`, `DRAINING`, `LEFT`, `DEAD`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Draining => "DRAINING",
            Self::Left => "LEFT",
            Self::Dead => "DEAD",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> StoreResult<Self> {
        Ok(match s {
            "ACTIVE" => Self::Active,
            "DRAINING" => Self::Draining,
            "LEFT" => Self::Left,
            "DEAD" => Self::Dead,
            other => return Err(StoreError::Database(format!("unknown worker status {other:?}"))),
        })
    }

    /// Whether a worker in this state holds a session (ACTIVE or DRAINING).
    pub fn in_session(self) -> bool {
        matches!(self, Self::Active | Self::Draining)
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What registration grants a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLease {
    /// The session's generation: pass it to every heartbeat.
    pub session_epoch: SessionEpoch,
    /// When the lease ends unless renewed, on the database clock.
    pub lease_expires_at: DateTime<Utc>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Heartbeat {
    /// The lease was renewed for another session timeout.
    Renewed {
        /// Whether the assignment version of a queue the worker subscribes to moved since the
        /// previous renewal of this session (always `true` on the first renewal of a session
        /// with subscriptions, never for a worker without any). A worker that keeps its own
        /// rows in step with the store needs to read them again only when this is `true`: no
        /// assignment write leaves the version alone.
        assignments_moved: bool,
    },
    /// The lease had already run out (or the worker was declared dead): the worker must stop
    /// its partitions and register again.
    Expired,
    /// The worker deregistered; it must register again to serve.
    Deregistered,
    /// The worker registered again since (a newer session epoch exists); this session is over.
    Superseded,
    /// No worker with this id is registered.
    Unknown,
}

/// A worker as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its identity.
    pub id: WorkerId,
    /// The host it registered from.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its lifecycle state.
    pub status: WorkerStatus,
    /// When its current session began, on the database clock.
    pub registered_at: DateTime<Utc>,
    /// When its lease ends unless renewed, on the database clock.
    pub lease_expires_at: DateTime<Utc>,
    /// Its current session's generation.
    pub session_epoch: SessionEpoch,
    /// The queues it serves, sorted by queue id.
    pub subscriptions: Vec<Subscription>,
}

/// Which workers to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerFilter {
    /// ACTIVE or DRAINING with a lease that has not run out on the database clock.
    Live,
    /// ACTIVE or DRAINING with a lease that has run out: dead, but not yet declared so.
    Expired,
    /// Every worker ever registered and not pruned.
    All,
}

/// The coordinator lease of a cluster, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The cluster.
    pub cluster: ClusterName,
    /// The process holding (or last holding) the lease.
    pub holder: Option<WorkerId>,
    /// The current term.
    pub term: Term,
    /// When the lease ends unless renewed, on the database clock.
    pub expires_at: DateTime<Utc>,
    /// Whether it had ended when read, on the database clock.
    pub expired: bool,
}

/// What a coordinator presents with each write: its claim to the lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CoordinatorFence {
    /// The cluster whose lease it holds.
    pub cluster: ClusterName,
    /// Its identity.
    pub holder: WorkerId,
    /// The term it was granted.
    pub term: Term,
}

/// Whether a partition is settled or being handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AssignmentState {
    /// Owned (or unowned) and settled.
    Assigned,
    /// The coordinator asked the owner to hand the partition to `target`.
    Revoking,
    /// The partition failed too often on its last owner and has no owner; the coordinator
    /// leaves it alone until an operator resets it
    /// ([`Store::reset_partition`](crate::Store::reset_partition)).
    Failed,
}

impl AssignmentState {
    /// The stored form: `ASSIGNED`, `REVOKING` or `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "ASSIGNED",
            Self::Revoking => "REVOKING",
            Self::Failed => "FAILED",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "ASSIGNED" => Ok(Self::Assigned),
            "REVOKING" => Ok(Self::Revoking),
            "FAILED" => Ok(Self::Failed),
            other => Err(StoreError::Database(format!("unknown assignment state {other:?}"))),
        }
    }
}

/// One partition's assignment row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// The queue.
    pub queue_id: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// Its owner, if any.
    pub owner: Option<WorkerId>,
    /// Its fencing token; grows on every change of owner.
    pub epoch: Epoch,
    /// Settled or being handed over.
    pub state: AssignmentState,
    /// While revoking, the worker it goes to.
    pub target: Option<WorkerId>,
    /// The term of the coordinator that last wrote the row.
    pub coordinator_term: Term,
    /// When the row last changed, on the database clock (for a revocation, when it began).
    pub updated_at: DateTime<Utc>,
}

/// All assignment rows of a queue, read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAssignments {
    /// The queue.
    pub queue_id: QueueId,
    /// The queue's assignment version at the time of the read.
    pub assignment_version: u64,
    /// One row per partition, sorted by partition.
    pub rows: Vec<AssignmentRecord>,
}

/// Why a change of a plan was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// The row's epoch is no longer the one the coordinator read.
    StaleEpoch {
        /// The row's epoch now.
        actual: Epoch,
    },
    /// The row is not in a state the change applies to (cancelling or retargeting a
    /// revocation that is not under way, revoking an unowned partition, a revocation already
    /// under way, or revoking towards the owner itself), or the partition has failed.
    WrongState,
    /// A grant or release would take the partition from an owner that is still live.
    OwnerAlive,
    /// A grant names a worker that is not live on the store's clock: granting would leave
    /// the partition with an owner that cannot run it.
    TargetNotLive,
}

/// What [`Store::apply_plan`](crate::Store::apply_plan) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOutcome {
    /// How many changes were applied.
    pub applied: usize,
    /// The changes that were not, with the reason, in the order given.
    pub skipped: Vec<(PartitionId, SkipReason)>,
    /// The queue's assignment version after the plan (unchanged when nothing was applied).
    pub assignment_version: u64,
}

/// The kinds of event in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A process acquired the coordinator lease with a new term.
    LeaderElected,
    /// The leader released the lease.
    LeaderReleased,
    /// A domain was created.
    DomainCreated,
    /// A domain was deleted.
    DomainDeleted,
    /// A queue was created.
    QueueCreated,
    /// A queue was deleted.
    QueueDeleted,
    /// A worker registered (a new session).
    WorkerJoined,
    /// A worker changed status (ACTIVE ↔ DRAINING).
    WorkerStatusChanged,
    /// A worker deregistered.
    WorkerLeft,
    /// The coordinator declared a worker dead.
    WorkerDead,
    /// A partition was granted to a worker.
    PartitionGranted,
    /// The coordinator asked a partition's owner to hand it over.
    PartitionRevoking,
    /// A revocation was called off.
    RevokeCancelled,
    /// An owner handed a partition to the revocation's target.
    PartitionHandedOff,
    /// A partition lost its owner.
    PartitionReleased,
    /// A partition failed too often and stopped.
    PartitionFailed,
    /// An operator reset a failed partition.
    PartitionReset,
    /// A new session of a worker took over a partition its id still owned, with the next
    /// epoch (`docs/protocol.md`, "Adoption bumps the epoch").
    PartitionAdopted,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 18] = [
        Self::LeaderElected,
        Self::LeaderReleased,
        Self::DomainCreated,
        Self::DomainDeleted,
        Self::QueueCreated,
        Self::QueueDeleted,
        Self::WorkerJoined,
        Self::WorkerStatusChanged,
        Self::WorkerLeft,
        Self::WorkerDead,
        Self::PartitionGranted,
        Self::PartitionRevoking,
        Self::RevokeCancelled,
        Self::PartitionHandedOff,
        Self::PartitionReleased,
        Self::PartitionFailed,
        Self::PartitionReset,
        Self::PartitionAdopted,
    ];

    /// The stored form, such as `leader_elected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeaderElected => "leader_elected",
            Self::LeaderReleased => "leader_released",
            Self::DomainCreated => "domain_created",
            Self::DomainDeleted => "domain_deleted",
            Self::QueueCreated => "queue_created",
            Self::QueueDeleted => "queue_deleted",
            Self::WorkerJoined => "worker_joined",
            Self::WorkerStatusChanged => "worker_status_changed",
            Self::WorkerLeft => "worker_left",
            Self::WorkerDead => "worker_dead",
            Self::PartitionGranted => "partition_granted",
            Self::PartitionRevoking => "partition_revoking",
            Self::RevokeCancelled => "revoke_cancelled",
            Self::PartitionHandedOff => "partition_handed_off",
            Self::PartitionReleased => "partition_released",
            Self::PartitionFailed => "partition_failed",
            Self::PartitionReset => "partition_reset",
            Self::PartitionAdopted => "partition_adopted",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> StoreResult<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| StoreError::Database(format!("unknown event kind {s:?}")))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to append to the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The queue concerned, if any.
    pub queue_id: Option<QueueId>,
    /// The partition concerned, if any.
    pub partition: Option<PartitionId>,
    /// The worker concerned, if any.
    pub worker: Option<WorkerId>,
    /// The coordinator term, if any.
    pub term: Option<Term>,
    /// The partition epoch, if any.
    pub epoch: Option<Epoch>,
    /// Anything else, as a JSON object.
    pub detail: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` with nothing else filled in.
    pub fn new(kind: EventKind) -> Self {
        Self {
            kind,
            queue_id: None,
            partition: None,
            worker: None,
            term: None,
            epoch: None,
            detail: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// The `DomainCreated` event of domain `name`.
    pub fn domain_created(name: &DomainName) -> Self {
        let mut event = Self::new(EventKind::DomainCreated);
        event.detail = serde_json::json!({ "domain": name });
        event
    }

    /// The `DomainDeleted` event of domain `name`.
    pub fn domain_deleted(name: &DomainName) -> Self {
        let mut event = Self::new(EventKind::DomainDeleted);
        event.detail = serde_json::json!({ "domain": name });
        event
    }

    /// The `QueueCreated` event of queue `id`, `domain`/`name`, with `partitions` partitions.
    pub fn queue_created(
        id: QueueId,
        domain: &DomainName,
        name: &QueueName,
        partitions: PartitionCount,
    ) -> Self {
        let mut event = Self::new(EventKind::QueueCreated);
        event.queue_id = Some(id);
        event.detail = serde_json::json!({ "domain": domain, "queue": name, "partitions": partitions });
        event
    }

    /// The `QueueDeleted` event of queue `id`, `domain`/`name`.
    pub fn queue_deleted(id: QueueId, domain: &DomainName, name: &QueueName) -> Self {
        let mut event = Self::new(EventKind::QueueDeleted);
        event.queue_id = Some(id);
        event.detail = serde_json::json!({ "domain": domain, "queue": name });
        event
    }

    /// The `WorkerJoined` event of `worker`, registered from `host`/`pid` with `session_epoch`.
    pub fn worker_joined(worker: WorkerId, host: &str, pid: u32, session_epoch: SessionEpoch) -> Self {
        let mut event = Self::new(EventKind::WorkerJoined);
        event.worker = Some(worker);
        event.detail = serde_json::json!({ "host": host, "pid": pid, "session_epoch": session_epoch });
        event
    }

    /// The `WorkerStatusChanged` event of `worker`, now `status`.
    pub fn worker_status_changed(worker: WorkerId, status: WorkerStatus) -> Self {
        let mut event = Self::new(EventKind::WorkerStatusChanged);
        event.worker = Some(worker);
        event.detail = serde_json::json!({ "status": status });
        event
    }

    /// The `WorkerLeft` event of `worker`.
    pub fn worker_left(worker: WorkerId) -> Self {
        let mut event = Self::new(EventKind::WorkerLeft);
        event.worker = Some(worker);
        event
    }

    /// The `WorkerDead` event of `worker`, marked dead by the coordinator of `term`.
    pub fn worker_dead(worker: WorkerId, term: Term) -> Self {
        let mut event = Self::new(EventKind::WorkerDead);
        event.worker = Some(worker);
        event.term = Some(term);
        event
    }

    /// The `LeaderElected` event of `holder` taking the lease of `cluster` at `term` from `previous`.
    pub fn leader_elected(
        holder: WorkerId,
        term: Term,
        cluster: &ClusterName,
        previous: Option<WorkerId>,
    ) -> Self {
        let mut event = Self::new(EventKind::LeaderElected);
        event.worker = Some(holder);
        event.term = Some(term);
        event.detail = serde_json::json!({
            "cluster": cluster,
            "previous_holder": previous.map(|p| p.to_string()),
        });
        event
    }

    /// The `LeaderReleased` event of `holder` giving up the lease of `cluster` at `term`.
    pub fn leader_released(holder: WorkerId, term: Term, cluster: &ClusterName) -> Self {
        let mut event = Self::new(EventKind::LeaderReleased);
        event.worker = Some(holder);
        event.term = Some(term);
        event.detail = serde_json::json!({ "cluster": cluster });
        event
    }

    /// The `PartitionHandedOff` event of `previous_owner` handing a partition to `new_owner` at `epoch`.
    pub fn handed_off(
        queue: QueueId,
        partition: PartitionId,
        previous_owner: WorkerId,
        new_owner: Option<WorkerId>,
        epoch: Epoch,
    ) -> Self {
        let mut event = Self::new(EventKind::PartitionHandedOff);
        event.queue_id = Some(queue);
        event.partition = Some(partition);
        event.worker = new_owner;
        event.epoch = Some(epoch);
        event.detail = serde_json::json!({ "previous_owner": previous_owner.to_string() });
        event
    }

    /// The `PartitionReleased` event of `worker` giving up a partition, now at `epoch`, unowned.
    pub fn partition_released(
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> Self {
        let mut event = Self::new(EventKind::PartitionReleased);
        event.queue_id = Some(queue);
        event.partition = Some(partition);
        event.worker = Some(worker);
        event.epoch = Some(epoch);
        event.detail = serde_json::json!({ "previous_owner": worker.to_string() });
        event
    }

    /// The `PartitionFailed` event of `worker` giving up a partition that kept failing, now
    /// at `epoch`, unowned and failed; `detail` says why.
    pub fn partition_failed(
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: serde_json::Value,
    ) -> Self {
        let mut event = Self::new(EventKind::PartitionFailed);
        event.queue_id = Some(queue);
        event.partition = Some(partition);
        event.worker = Some(worker);
        event.epoch = Some(epoch);
        event.detail = detail;
        event
    }

    /// The `PartitionReset` event of an operator resetting a failed partition.
    pub fn partition_reset(queue: QueueId, partition: PartitionId, epoch: Epoch) -> Self {
        let mut event = Self::new(EventKind::PartitionReset);
        event.queue_id = Some(queue);
        event.partition = Some(partition);
        event.epoch = Some(epoch);
        event
    }

    /// The `PartitionAdopted` event: session `session_epoch` of `worker` took over a
    /// partition its id still owned, now at `epoch`.
    pub fn partition_adopted(
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        session_epoch: SessionEpoch,
    ) -> Self {
        let mut event = Self::new(EventKind::PartitionAdopted);
        event.queue_id = Some(queue);
        event.partition = Some(partition);
        event.worker = Some(worker);
        event.epoch = Some(epoch);
        event.detail = serde_json::json!({ "session_epoch": session_epoch.0 });
        event
    }
}

/// `detail` as it is stored: unchanged when its JSON text is at most
/// [`MAX_EVENT_DETAIL_BYTES`]; otherwise with every string cut (on a character boundary, with
/// a trailing `…`) to the longest length that makes the whole fit, and, for an object, a
/// `"truncated_from_bytes"` member with the original size. A detail that cannot fit even with
/// empty strings (huge arrays or keys) is replaced by `{"truncated_from_bytes": n}`. Every
/// store applies this to every event it writes, so no detail can overflow a column.
pub fn bound_detail(detail: &serde_json::Value) -> serde_json::Value {
    fn size(value: &serde_json::Value) -> usize {
        serde_json::to_string(value).map_or(usize::MAX, |text| text.len())
    }
    fn cut(value: &serde_json::Value, cap: usize) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) if s.len() > cap => {
                let mut end = cap;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                Value::String(format!("{}…", &s[..end]))
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| cut(v, cap)).collect()),
            Value::Object(members) => {
                Value::Object(members.iter().map(|(k, v)| (k.clone(), cut(v, cap))).collect())
            }
            other => other.clone(),
        }
    }
    let original = size(detail);
    if original <= MAX_EVENT_DETAIL_BYTES {
        return detail.clone();
    }
    let mut cap = MAX_EVENT_DETAIL_BYTES;
    while cap > 0 {
        cap /= 2;
        let mut bounded = cut(detail, cap);
        if let serde_json::Value::Object(members) = &mut bounded {
            members.insert("truncated_from_bytes".to_owned(), original.into());
        }
        if size(&bounded) <= MAX_EVENT_DETAIL_BYTES {
            return bounded;
        }
    }
    serde_json::json!({ "truncated_from_bytes": original })
}

/// The owner-fenced writes, each applied only where `owner = worker AND epoch = E`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OwnerWrite<'a> {
    /// Hand a `REVOKING` partition to the revocation's target.
    HandOff,
    /// Give the partition up: no owner, `ASSIGNED`.
    Release,
    /// Give up a partition that kept failing: no owner, `FAILED`, with the event's detail.
    Fail(&'a serde_json::Value),
}

impl OwnerWrite<'_> {
    /// The event of the write, now that the row is at `epoch` with `new_owner`.
    pub(crate) fn event(
        self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        new_owner: Option<WorkerId>,
        epoch: Epoch,
    ) -> NewEvent {
        match self {
            Self::HandOff => NewEvent::handed_off(queue, partition, worker, new_owner, epoch),
            Self::Release => NewEvent::partition_released(queue, partition, worker, epoch),
            Self::Fail(detail) => NewEvent::partition_failed(queue, partition, worker, epoch, detail.clone()),
        }
    }

    /// The state the row ends in.
    pub(crate) fn new_state(self) -> AssignmentState {
        match self {
            Self::Fail(_) => AssignmentState::Failed,
            Self::HandOff | Self::Release => AssignmentState::Assigned,
        }
    }
}

/// An event of the history, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its id; ids grow with time.
    pub id: u64,
    /// When it was recorded, on the database clock.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The queue concerned, if any.
    pub queue_id: Option<QueueId>,
    /// The partition concerned, if any.
    pub partition: Option<PartitionId>,
    /// The worker concerned, if any.
    pub worker: Option<WorkerId>,
    /// The coordinator term, if any.
    pub term: Option<Term>,
    /// The partition epoch, if any.
    pub epoch: Option<Epoch>,
    /// Anything else.
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_bounded_on_character_boundaries() {
        let small = serde_json::json!({ "error": "boom" });
        assert_eq!(bound_detail(&small), small);
        let long = serde_json::json!({ "error": "é".repeat(MAX_EVENT_DETAIL_BYTES), "n": 1 });
        let cut = bound_detail(&long);
        assert!(cut.to_string().len() <= MAX_EVENT_DETAIL_BYTES);
        let text = cut["error"].as_str().expect("a string");
        assert!(text.ends_with('…') && text.trim_end_matches('…').chars().all(|c| c == 'é'));
        assert_eq!((cut["n"].as_u64(), cut["truncated_from_bytes"].as_u64().is_some()), (Some(1), true));
        // Nothing left to cut but numbers: only the size remains.
        let numbers = serde_json::Value::Array((0..MAX_EVENT_DETAIL_BYTES).map(|i| i.into()).collect());
        let cut = bound_detail(&numbers);
        assert!(cut.to_string().len() <= MAX_EVENT_DETAIL_BYTES);
        assert!(cut["truncated_from_bytes"].as_u64().is_some());
    }
}

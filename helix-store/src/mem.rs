//! The in-memory store: the same semantics as the SQL stores, with an injected clock so tests
//! can run it on virtual time. Everything lives in one process; nothing is persisted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use helix_core::{
    Clock, ClusterName, DomainName, Epoch, PartitionId, QueueId, QueueName, SessionEpoch, Term, WorkerId,
};

use crate::error::{StoreError, StoreResult};
use crate::model::*;
use crate::rules::{self, LeaseDecision, RowState};
use crate::schedules::*;
use crate::store::Store;
use crate::tasks::*;

mod schedules;
mod tasks;

/// The in-memory store. Cheap to clone handles share one state through [`Arc`].
///
/// ```
/// use std::sync::Arc;
/// use helix_core::ManualClock;
/// use helix_store::MemStore;
///
/// let clock = ManualClock::default();
/// let store = MemStore::new(Arc::new(clock.clone()));
/// // advance `clock` to expire leases
/// ```
#[derive(Debug, Clone)]
pub struct MemStore {
    clock: Arc<dyn Clock>,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    domains: BTreeMap<DomainName, DomainRecord>,
    queues: BTreeMap<QueueId, QueueRecord>,
    next_queue_id: u64,
    assignments: BTreeMap<QueueId, Vec<AssignmentRecord>>,
    workers: BTreeMap<WorkerId, WorkerRecord>,
    leases: BTreeMap<ClusterName, LeaseRecord>,
    events: Vec<Event>,
    next_event_id: u64,
    tasks: tasks::TaskTables,
    schedules: schedules::ScheduleTables,
    /// Per worker, the session and the assignment versions its last renewal saw (the SQL
    /// stores' `helix_subscriptions.seen_version`).
    seen_versions: BTreeMap<WorkerId, (SessionEpoch, BTreeMap<QueueId, u64>)>,
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Inner {
    fn record(&mut self, now: DateTime<Utc>, event: NewEvent) -> u64 {
        self.next_event_id += 1;
        let id = self.next_event_id;
        self.events.push(Event {
            id,
            at: now,
            kind: event.kind,
            queue_id: event.queue_id,
            partition: event.partition,
            worker: event.worker,
            term: event.term,
            epoch: event.epoch,
            detail: bound_detail(&event.detail),
        });
        id
    }

    fn check_fence(&self, fence: &CoordinatorFence, now: DateTime<Utc>) -> StoreResult<()> {
        match self.leases.get(&fence.cluster) {
            Some(l) if l.holder == Some(fence.holder) && l.term == fence.term && l.expires_at > now => Ok(()),
            _ => Err(StoreError::Fenced(format!(
                "coordinator term {} of cluster {} is no longer current",
                fence.term, fence.cluster
            ))),
        }
    }

    fn live(&self, worker: WorkerId, now: DateTime<Utc>) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.status.in_session() && w.lease_expires_at >= now)
    }

    /// How long the live session of `worker` still runs, `None` when it has none.
    fn live_for(&self, worker: WorkerId, now: DateTime<Utc>) -> Option<Duration> {
        self.workers
            .get(&worker)
            .filter(|_| self.live(worker, now))
            .map(|w| (w.lease_expires_at - now).to_std().unwrap_or(Duration::ZERO))
    }

    fn bump_version(&mut self, queue: QueueId) -> u64 {
        match self.queues.get_mut(&queue) {
            Some(q) => {
                q.assignment_version += 1;
                q.assignment_version
            }
            None => 0,
        }
    }

    fn queue_by_name(&self, domain: &DomainName, name: &QueueName) -> Option<&QueueRecord> {
        self.queues.values().find(|q| &q.domain == domain && &q.name == name)
    }

    /// The owner-fenced write shared by handoff, release and failure.
    fn owner_write(
        &mut self,
        now: DateTime<Utc>,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        write: OwnerWrite<'_>,
    ) -> StoreResult<Epoch> {
        let handoff = matches!(write, OwnerWrite::HandOff);
        let live_targets: Vec<WorkerId> =
            self.workers.keys().copied().filter(|w| self.live(*w, now)).collect();
        let row = self
            .assignments
            .get_mut(&queue)
            .and_then(|rows| rows.get_mut(partition.0 as usize))
            .filter(|r| {
                r.owner == Some(worker)
                    && r.epoch == epoch
                    && (!handoff || r.state == AssignmentState::Revoking)
            })
            .ok_or_else(|| {
                StoreError::Fenced(format!(
                    "worker {worker} no longer owns queue {queue} partition {partition} at epoch {epoch}"
                ))
            })?;
        // A handoff to a target that is no longer live releases instead.
        row.owner = if handoff { row.target.filter(|t| live_targets.contains(t)) } else { None };
        row.epoch = row.epoch.next();
        row.state = write.new_state();
        row.target = None;
        row.updated_at = now;
        let (new_epoch, new_owner) = (row.epoch, row.owner);
        self.bump_version(queue);
        self.record(now, write.event(queue, partition, worker, new_owner, new_epoch));
        Ok(new_epoch)
    }
}

impl MemStore {
    /// An empty store on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, inner: Arc::new(Mutex::new(Inner::default())) }
    }

    fn lock(&self) -> (MutexGuard<'_, Inner>, DateTime<Utc>) {
        // A panic while holding the lock leaves no half-written state behind (every write
        // below validates before it mutates), so a poisoned lock is safe to reuse.
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard, self.clock.now())
    }
}

#[async_trait]
impl Store for MemStore {
    async fn now(&self) -> StoreResult<DateTime<Utc>> {
        Ok(self.clock.now())
    }

    async fn create_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        let (mut s, now) = self.lock();
        if s.domains.contains_key(name) {
            return Err(StoreError::Conflict(format!("domain {name} already exists")));
        }
        let record = DomainRecord { name: name.clone(), created_at: now };
        s.domains.insert(name.clone(), record.clone());
        s.record(now, NewEvent::domain_created(name));
        Ok(record)
    }

    async fn get_domain(&self, name: &DomainName) -> StoreResult<DomainRecord> {
        let (s, _) = self.lock();
        s.domains.get(name).cloned().ok_or_else(|| StoreError::NotFound(format!("domain {name}")))
    }

    async fn list_domains(&self) -> StoreResult<Vec<DomainRecord>> {
        Ok(self.lock().0.domains.values().cloned().collect())
    }

    async fn delete_domain(&self, name: &DomainName) -> StoreResult<()> {
        let (mut s, now) = self.lock();
        if !s.domains.contains_key(name) {
            return Err(StoreError::NotFound(format!("domain {name}")));
        }
        if s.queues.values().any(|q| &q.domain == name) {
            return Err(StoreError::Conflict(format!("domain {name} still has queues")));
        }
        s.domains.remove(name);
        s.record(now, NewEvent::domain_deleted(name));
        Ok(())
    }

    async fn create_queue(&self, spec: &QueueSpec) -> StoreResult<QueueRecord> {
        spec.validate()?;
        let (mut s, now) = self.lock();
        if !s.domains.contains_key(&spec.domain) {
            return Err(StoreError::NotFound(format!("domain {}", spec.domain)));
        }
        if s.queue_by_name(&spec.domain, &spec.name).is_some() {
            return Err(StoreError::Conflict(format!("queue {}/{} already exists", spec.domain, spec.name)));
        }
        s.next_queue_id += 1;
        let id = QueueId(s.next_queue_id);
        let record = QueueRecord {
            id,
            domain: spec.domain.clone(),
            name: spec.name.clone(),
            partition_count: spec.partition_count,
            allocator: spec.allocator.clone(),
            settings: spec.settings.clone(),
            assignment_version: 0,
            created_at: now,
        };
        let rows = (0..spec.partition_count.get())
            .map(|p| AssignmentRecord {
                queue_id: id,
                partition: PartitionId(p),
                owner: None,
                epoch: Epoch(0),
                state: AssignmentState::Assigned,
                target: None,
                coordinator_term: Term(0),
                updated_at: now,
            })
            .collect();
        s.queues.insert(id, record.clone());
        s.assignments.insert(id, rows);
        s.record(now, NewEvent::queue_created(id, &spec.domain, &spec.name, spec.partition_count));
        Ok(record)
    }

    async fn get_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<QueueRecord> {
        let (s, _) = self.lock();
        s.queue_by_name(domain, name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("queue {domain}/{name}")))
    }

    async fn get_queue_by_id(&self, id: QueueId) -> StoreResult<QueueRecord> {
        let (s, _) = self.lock();
        s.queues.get(&id).cloned().ok_or_else(|| StoreError::NotFound(format!("queue {id}")))
    }

    async fn list_queues(&self, domain: Option<DomainName>) -> StoreResult<Vec<QueueRecord>> {
        let (s, _) = self.lock();
        let mut queues: Vec<_> =
            s.queues.values().filter(|q| domain.as_ref().is_none_or(|d| &q.domain == d)).cloned().collect();
        queues.sort_by(|a, b| (&a.domain, &a.name).cmp(&(&b.domain, &b.name)));
        Ok(queues)
    }

    async fn delete_queue(&self, domain: &DomainName, name: &QueueName) -> StoreResult<()> {
        let (mut s, now) = self.lock();
        let id = s
            .queue_by_name(domain, name)
            .map(|q| q.id)
            .ok_or_else(|| StoreError::NotFound(format!("queue {domain}/{name}")))?;
        s.queues.remove(&id);
        s.assignments.remove(&id);
        s.tasks.delete_queue(id);
        s.schedules.delete_queue(id);
        for worker in s.workers.values_mut() {
            worker.subscriptions.retain(|sub| sub.queue_id != id);
        }
        s.record(now, NewEvent::queue_deleted(id, domain, name));
        Ok(())
    }

    async fn register_worker(&self, registration: &WorkerRegistration) -> StoreResult<WorkerLease> {
        registration.validate()?;
        let (mut s, now) = self.lock();
        if let Some(missing) =
            registration.subscriptions.iter().find(|sub| !s.queues.contains_key(&sub.queue_id))
        {
            return Err(StoreError::NotFound(format!("queue {}", missing.queue_id)));
        }
        rules::refuse_live_id(registration.id, s.live_for(registration.id, now))?;
        let session_epoch =
            s.workers.get(&registration.id).map_or(SessionEpoch(1), |w| w.session_epoch.next());
        let lease_expires_at = after(now, registration.session_timeout);
        let mut subscriptions = registration.subscriptions.clone();
        subscriptions.sort();
        s.workers.insert(
            registration.id,
            WorkerRecord {
                id: registration.id,
                host: registration.host.clone(),
                pid: registration.pid,
                labels: registration.labels.clone(),
                status: WorkerStatus::Active,
                registered_at: now,
                lease_expires_at,
                session_epoch,
                subscriptions,
            },
        );
        s.record(
            now,
            NewEvent::worker_joined(registration.id, &registration.host, registration.pid, session_epoch),
        );
        // Adoption: the rows the id still owns move to the next epoch before the new session
        // can read them; those of queues it no longer serves are released instead.
        let served: std::collections::BTreeSet<QueueId> =
            registration.subscriptions.iter().map(|sub| sub.queue_id).collect();
        let mut events = Vec::new();
        let mut queues = std::collections::BTreeSet::new();
        for (queue, rows) in &mut s.assignments {
            for row in rows.iter_mut().filter(|r| r.owner == Some(registration.id)) {
                row.epoch = row.epoch.next();
                queues.insert(*queue);
                if served.contains(queue) {
                    if !rules::adoption_keeps_updated_at(row.state) {
                        row.updated_at = now;
                    }
                    events.push(NewEvent::partition_adopted(
                        *queue,
                        row.partition,
                        registration.id,
                        row.epoch,
                        session_epoch,
                    ));
                } else {
                    (row.owner, row.target, row.state, row.updated_at) =
                        (None, None, AssignmentState::Assigned, now);
                    events.push(NewEvent::partition_released(
                        *queue,
                        row.partition,
                        registration.id,
                        row.epoch,
                    ));
                }
            }
        }
        for queue in queues {
            s.bump_version(queue);
        }
        for event in events {
            s.record(now, event);
        }
        Ok(WorkerLease { session_epoch, lease_expires_at })
    }

    async fn heartbeat(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        session_timeout: Duration,
    ) -> StoreResult<Heartbeat> {
        validate_lease_duration("session timeout", session_timeout)?;
        let (mut s, now) = self.lock();
        let Some(w) = s.workers.get_mut(&worker) else {
            return Ok(Heartbeat::Unknown);
        };
        if w.session_epoch == session_epoch && w.status.in_session() && w.lease_expires_at >= now {
            w.lease_expires_at = after(now, session_timeout);
            let subscribed: Vec<QueueId> = w.subscriptions.iter().map(|sub| sub.queue_id).collect();
            let current: BTreeMap<QueueId, u64> = subscribed
                .iter()
                .filter_map(|q| s.queues.get(q).map(|record| (*q, record.assignment_version)))
                .collect();
            let seen = s.seen_versions.entry(worker).or_insert_with(|| (session_epoch, BTreeMap::new()));
            if seen.0 != session_epoch {
                *seen = (session_epoch, BTreeMap::new());
            }
            let assignments_moved = current.iter().any(|(q, v)| seen.1.get(q) != Some(v));
            seen.1 = current;
            return Ok(Heartbeat::Renewed { assignments_moved });
        }
        Ok(rules::classify_heartbeat(
            Some((w.status, w.session_epoch, w.lease_expires_at < now)),
            session_epoch,
        ))
    }

    async fn set_worker_status(
        &self,
        worker: WorkerId,
        session_epoch: SessionEpoch,
        status: WorkerStatus,
    ) -> StoreResult<()> {
        rules::settable_status(status)?;
        let (mut s, now) = self.lock();
        let w = s
            .workers
            .get_mut(&worker)
            .filter(|w| {
                w.session_epoch == session_epoch && w.status.in_session() && w.lease_expires_at >= now
            })
            .ok_or_else(|| {
                StoreError::Fenced(format!("session {session_epoch} of worker {worker} is over"))
            })?;
        if w.status == status {
            return Ok(());
        }
        w.status = status;
        s.record(now, NewEvent::worker_status_changed(worker, status));
        Ok(())
    }

    async fn deregister_worker(&self, worker: WorkerId, session_epoch: SessionEpoch) -> StoreResult<()> {
        let (mut s, now) = self.lock();
        let Some(w) = s.workers.get_mut(&worker) else {
            return Ok(());
        };
        if w.session_epoch != session_epoch {
            return Err(StoreError::Fenced(format!(
                "worker {worker} has a newer session than {session_epoch}"
            )));
        }
        if w.status == WorkerStatus::Left {
            return Ok(());
        }
        w.status = WorkerStatus::Left;
        w.lease_expires_at = w.lease_expires_at.min(now);
        w.subscriptions.clear();
        s.record(now, NewEvent::worker_left(worker));
        Ok(())
    }

    async fn get_worker(&self, worker: WorkerId) -> StoreResult<WorkerRecord> {
        let (s, _) = self.lock();
        s.workers.get(&worker).cloned().ok_or_else(|| StoreError::NotFound(format!("worker {worker}")))
    }

    async fn list_workers(&self, filter: WorkerFilter) -> StoreResult<Vec<WorkerRecord>> {
        let (s, now) = self.lock();
        Ok(s.workers
            .values()
            .filter(|w| match filter {
                WorkerFilter::All => true,
                WorkerFilter::Live => w.status.in_session() && w.lease_expires_at >= now,
                WorkerFilter::Expired => w.status.in_session() && w.lease_expires_at < now,
            })
            .cloned()
            .collect())
    }

    async fn mark_workers_dead(
        &self,
        fence: &CoordinatorFence,
        workers: &[WorkerId],
    ) -> StoreResult<Vec<WorkerId>> {
        let (mut s, now) = self.lock();
        s.check_fence(fence, now)?;
        let mut marked = Vec::new();
        for id in workers {
            if let Some(w) =
                s.workers.get_mut(id).filter(|w| w.status.in_session() && w.lease_expires_at < now)
            {
                w.status = WorkerStatus::Dead;
                marked.push(*id);
            }
        }
        marked.sort();
        marked.dedup();
        for id in &marked {
            s.record(now, NewEvent::worker_dead(*id, fence.term));
        }
        Ok(marked)
    }

    async fn acquire_lease(
        &self,
        cluster: &ClusterName,
        holder: WorkerId,
        lease: Duration,
    ) -> StoreResult<Option<Term>> {
        validate_lease_duration("coordinator lease", lease)?;
        let (mut s, now) = self.lock();
        let current = s.leases.get(cluster).map(|l| (l.holder, l.term, l.expires_at <= now));
        let previous = current.and_then(|c| c.0);
        match rules::decide_acquire(current, holder) {
            LeaseDecision::Refuse => Ok(None),
            LeaseDecision::Take { term } => {
                s.leases.insert(
                    cluster.clone(),
                    LeaseRecord {
                        cluster: cluster.clone(),
                        holder: Some(holder),
                        term,
                        expires_at: after(now, lease),
                        expired: false,
                    },
                );
                s.record(now, NewEvent::leader_elected(holder, term, cluster, previous));
                Ok(Some(term))
            }
        }
    }

    async fn renew_lease(&self, fence: &CoordinatorFence, lease: Duration) -> StoreResult<()> {
        validate_lease_duration("coordinator lease", lease)?;
        let (mut s, now) = self.lock();
        s.check_fence(fence, now)?;
        if let Some(l) = s.leases.get_mut(&fence.cluster) {
            l.expires_at = after(now, lease);
        }
        Ok(())
    }

    async fn release_lease(&self, fence: &CoordinatorFence) -> StoreResult<()> {
        let (mut s, now) = self.lock();
        let Some(l) = s
            .leases
            .get_mut(&fence.cluster)
            .filter(|l| l.holder == Some(fence.holder) && l.term == fence.term)
        else {
            return Ok(());
        };
        if l.expires_at <= now {
            return Ok(());
        }
        l.expires_at = now;
        s.record(now, NewEvent::leader_released(fence.holder, fence.term, &fence.cluster));
        Ok(())
    }

    async fn get_lease(&self, cluster: &ClusterName) -> StoreResult<Option<LeaseRecord>> {
        let (s, now) = self.lock();
        Ok(s.leases.get(cluster).map(|l| LeaseRecord { expired: l.expires_at <= now, ..l.clone() }))
    }

    async fn assignments(&self, queue: QueueId) -> StoreResult<QueueAssignments> {
        let (s, _) = self.lock();
        let q = s.queues.get(&queue).ok_or_else(|| StoreError::NotFound(format!("queue {queue}")))?;
        Ok(QueueAssignments {
            queue_id: queue,
            assignment_version: q.assignment_version,
            rows: s.assignments.get(&queue).cloned().unwrap_or_default(),
        })
    }

    async fn assignments_of(&self, worker: WorkerId) -> StoreResult<Vec<AssignmentRecord>> {
        let (s, _) = self.lock();
        Ok(s.assignments.values().flatten().filter(|r| r.owner == Some(worker)).cloned().collect())
    }

    async fn apply_plan(
        &self,
        fence: &CoordinatorFence,
        queue: QueueId,
        changes: &[PlanChange],
    ) -> StoreResult<PlanOutcome> {
        let (mut s, now) = self.lock();
        s.check_fence(fence, now)?;
        let q = s.queues.get(&queue).ok_or_else(|| StoreError::NotFound(format!("queue {queue}")))?;
        rules::validate_plan(q.partition_count, changes)?;
        let version = q.assignment_version;
        let rows = s.assignments.get(&queue).map(Vec::as_slice).unwrap_or_default();
        let states: Vec<RowState> = changes
            .iter()
            .filter_map(|c| rows.get(c.partition().0 as usize))
            .map(|r| RowState {
                partition: r.partition,
                owner: r.owner,
                epoch: r.epoch,
                state: r.state,
                target: r.target,
                owner_live: r.owner.is_some_and(|o| s.live(o, now)),
            })
            .collect();
        let eval = rules::evaluate_plan(queue, fence.term, &states, changes, |w| s.live(w, now))?;
        if eval.writes.is_empty() {
            return Ok(PlanOutcome { applied: 0, skipped: eval.skipped, assignment_version: version });
        }
        if let Some(rows) = s.assignments.get_mut(&queue) {
            for w in &eval.writes {
                if let Some(row) = rows.get_mut(w.partition.0 as usize) {
                    if !rules::keeps_updated_at(row.state, w.state) {
                        row.updated_at = now;
                    }
                    row.owner = w.owner;
                    row.epoch = w.epoch;
                    row.state = w.state;
                    row.target = w.target;
                    row.coordinator_term = fence.term;
                }
            }
        }
        let assignment_version = s.bump_version(queue);
        for event in eval.events {
            s.record(now, event);
        }
        Ok(PlanOutcome { applied: eval.writes.len(), skipped: eval.skipped, assignment_version })
    }

    async fn handoff(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        let (mut s, now) = self.lock();
        s.owner_write(now, queue, partition, worker, epoch, OwnerWrite::HandOff)
    }

    async fn release_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
    ) -> StoreResult<Epoch> {
        let (mut s, now) = self.lock();
        s.owner_write(now, queue, partition, worker, epoch, OwnerWrite::Release)
    }

    async fn fail_partition(
        &self,
        queue: QueueId,
        partition: PartitionId,
        worker: WorkerId,
        epoch: Epoch,
        detail: &serde_json::Value,
    ) -> StoreResult<Epoch> {
        let (mut s, now) = self.lock();
        s.owner_write(now, queue, partition, worker, epoch, OwnerWrite::Fail(detail))
    }

    async fn reset_partition(&self, queue: QueueId, partition: PartitionId) -> StoreResult<bool> {
        let (mut s, now) = self.lock();
        let row = s
            .assignments
            .get_mut(&queue)
            .ok_or_else(|| StoreError::NotFound(format!("queue {queue}")))?
            .get_mut(partition.0 as usize)
            .ok_or_else(|| StoreError::NotFound(format!("queue {queue} partition {partition}")))?;
        if row.state != AssignmentState::Failed {
            return Ok(false);
        }
        row.state = AssignmentState::Assigned;
        row.updated_at = now;
        let epoch = row.epoch;
        s.bump_version(queue);
        s.record(now, NewEvent::partition_reset(queue, partition, epoch));
        Ok(true)
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<u64> {
        let (mut s, now) = self.lock();
        Ok(s.record(now, event.clone()))
    }

    async fn events_since(&self, after: u64, limit: u32) -> StoreResult<Vec<Event>> {
        let (s, _) = self.lock();
        let start = s.events.partition_point(|e| e.id <= after);
        let limit = limit.min(MAX_EVENTS_PER_READ) as usize;
        Ok(s.events[start..].iter().take(limit).cloned().collect())
    }

    async fn prune_events(&self, older_than: Duration) -> StoreResult<u64> {
        let (mut s, now) = self.lock();
        let cutoff = now - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let before = s.events.len();
        s.events.retain(|e| e.at >= cutoff);
        Ok((before - s.events.len()) as u64)
    }

    async fn enqueue_task(&self, queue: QueueId, task: &NewTask) -> StoreResult<Enqueued> {
        let mut out = self.tasks_enqueue(queue, std::slice::from_ref(task))?;
        out.pop().ok_or_else(|| StoreError::Database("an enqueue of one task answered nothing".to_owned()))
    }
    async fn enqueue_tasks(&self, queue: QueueId, tasks: &[NewTask]) -> StoreResult<Vec<Enqueued>> {
        self.tasks_enqueue(queue, tasks)
    }
    async fn claim_tasks(&self, fence: &OwnerFence, limit: u32) -> StoreResult<Vec<TaskRecord>> {
        self.tasks_claim(fence, limit)
    }
    async fn complete_tasks(&self, fence: &OwnerFence, ids: &[TaskId]) -> StoreResult<TaskBatchOutcome> {
        self.tasks_complete(fence, ids)
    }
    async fn fail_tasks(
        &self,
        fence: &OwnerFence,
        failures: &[TaskFailure],
    ) -> StoreResult<TaskBatchOutcome> {
        self.tasks_fail(fence, failures)
    }
    async fn retry_tasks_later(
        &self,
        fence: &OwnerFence,
        retries: &[TaskRetry],
    ) -> StoreResult<TaskBatchOutcome> {
        self.tasks_retry_later(fence, retries)
    }
    async fn extend_tasks(
        &self,
        fence: &OwnerFence,
        ids: &[TaskId],
        by: Duration,
    ) -> StoreResult<TaskBatchOutcome> {
        self.tasks_extend(fence, ids, by)
    }
    async fn record_task_outcomes(
        &self,
        batches: &[PartitionOutcomes],
    ) -> StoreResult<Vec<StoreResult<TaskBatchOutcome>>> {
        self.tasks_record_outcomes(batches)
    }
    async fn cancel_task(&self, id: TaskId) -> StoreResult<CancelOutcome> {
        self.tasks_cancel(id)
    }
    async fn recover_partition_tasks(&self, fence: &OwnerFence) -> StoreResult<TaskRecovery> {
        self.tasks_recover(fence)
    }
    async fn next_due(
        &self,
        queue: QueueId,
        partitions: &[PartitionId],
    ) -> StoreResult<std::collections::BTreeMap<PartitionId, DateTime<Utc>>> {
        self.tasks_next_due(queue, partitions)
    }
    async fn task_counts(&self, queue: QueueId) -> StoreResult<Vec<TaskCount>> {
        self.tasks_counts(queue)
    }
    async fn get_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.tasks_get(id)
    }
    async fn list_tasks(
        &self,
        queue: QueueId,
        state: TaskState,
        after: Option<TaskId>,
        limit: u32,
    ) -> StoreResult<Vec<TaskRecord>> {
        self.tasks_list(queue, state, after, limit)
    }
    async fn retry_dead_task(&self, id: TaskId) -> StoreResult<TaskRecord> {
        self.tasks_retry_dead(id)
    }
    async fn prune_tasks(&self, older_than: Duration, limit: u32) -> StoreResult<u64> {
        self.tasks_prune(older_than, limit)
    }

    async fn create_schedule(&self, queue: QueueId, schedule: &NewSchedule) -> StoreResult<ScheduleRecord> {
        self.schedules_create(queue, schedule)
    }
    async fn get_schedule(&self, queue: QueueId, name: &str) -> StoreResult<ScheduleRecord> {
        self.schedules_get(queue, name)
    }
    async fn list_schedules(&self, queue: Option<QueueId>) -> StoreResult<Vec<ScheduleRecord>> {
        self.schedules_list(queue)
    }
    async fn set_schedule_paused(
        &self,
        queue: QueueId,
        name: &str,
        paused: bool,
    ) -> StoreResult<ScheduleRecord> {
        self.schedules_set_paused(queue, name, paused)
    }
    async fn delete_schedule(&self, queue: QueueId, name: &str) -> StoreResult<()> {
        self.schedules_delete(queue, name)
    }
    async fn due_schedules(
        &self,
        horizon: Duration,
        limit: u32,
    ) -> StoreResult<(DateTime<Utc>, Vec<ScheduleRecord>)> {
        self.schedules_due(horizon, limit)
    }
    async fn fire_schedules(
        &self,
        fence: &CoordinatorFence,
        fires: &[ScheduleFire],
    ) -> StoreResult<Vec<FireOutcome>> {
        self.schedules_fire(fence, fires)
    }
}

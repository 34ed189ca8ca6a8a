//! The client's schedule operations: create, read, list, pause, resume and delete recurring
//! schedules (`docs/scheduling.md`).

use std::time::Duration;

use helix_core::{PartitionId, partition_for_key};
use helix_store::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MISSED_SLOT_GRACE, DEFAULT_TASK_TIMEOUT, MissedSlots, NewSchedule,
    Recurrence, ScheduleRecord,
};
use serde::Serialize;

use super::{Client, ClientError};

/// A recurring schedule to create with [`Client::create_schedule`]: when its slots fall and
/// the task each slot becomes.
///
/// Defaults: read in UTC, an empty payload, the partition of the schedule's name (xxHash64,
/// as [`TaskSpec::key`](super::TaskSpec::key) routes), priority 0, [`DEFAULT_MAX_ATTEMPTS`]
/// attempts of at most [`DEFAULT_TASK_TIMEOUT`], missed slots skipped after
/// [`DEFAULT_MISSED_SLOT_GRACE`], running.
///
/// ```
/// use std::time::Duration;
/// use helix_actors::client::ScheduleSpec;
/// use helix_actors::store::MissedSlots;
///
/// // Every weekday at 07:30 in Berlin, with the slot's instant in the payload.
/// let report = ScheduleSpec::cron("30 7 * * MON-FRI")
///     .time_zone("Europe/Berlin")
///     .json(&serde_json::json!({ "report": "daily", "slot": "{{slot}}" }))?
///     .missed_slots(MissedSlots::RunLatest);
/// // Every 10 s, on the tens of seconds.
/// let probe = ScheduleSpec::every(Duration::from_secs(10)).payload("ping").key("probes");
/// # let _ = (report, probe);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    recurrence: Recurrence,
    time_zone: String,
    payload: Vec<u8>,
    key: Option<String>,
    partition: Option<u32>,
    priority: i32,
    max_attempts: u32,
    timeout: Duration,
    missed_slots: MissedSlots,
    grace: Duration,
    paused: bool,
}

impl ScheduleSpec {
    fn new(recurrence: Recurrence) -> Self {
        Self {
            recurrence,
            time_zone: "UTC".to_owned(),
            payload: Vec::new(),
            key: None,
            partition: None,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TASK_TIMEOUT,
            missed_slots: MissedSlots::Skip,
            grace: DEFAULT_MISSED_SLOT_GRACE,
            paused: false,
        }
    }

    /// Slots at the instants a cron expression names: 5 fields (minute first) or 6 (second
    /// first), read in the [`time_zone`](Self::time_zone); see
    /// [`Recurrence::Cron`] for the syntax and daylight saving.
    pub fn cron(expression: impl Into<String>) -> Self {
        Self::new(Recurrence::Cron(expression.into()))
    }

    /// Slots every `interval` (1 s to 366 days, whole ms), at its multiples since the Unix
    /// epoch.
    pub fn every(interval: Duration) -> Self {
        Self::new(Recurrence::Every(interval))
    }

    /// Reads the cron expression in this IANA time zone (`"Europe/Berlin"`) instead of UTC.
    pub fn time_zone(mut self, zone: impl Into<String>) -> Self {
        self.time_zone = zone.into();
        self
    }

    /// Each task's payload, at most 1 MiB: a template in which `{{slot}}` becomes the slot's
    /// instant (RFC 3339, UTC, ms) and `{{schedule}}` the schedule's name.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Each task's payload as `value` in JSON (a template as for [`payload`](Self::payload):
    /// put `"{{slot}}"` in a string).
    ///
    /// # Errors
    /// When `value` does not serialize.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, serde_json::Error> {
        self.payload = serde_json::to_vec(value)?;
        Ok(self)
    }

    /// Puts the tasks on the partition of `key` instead of the schedule name's.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self.partition = None;
        self
    }

    /// Puts the tasks on `partition` (below the queue's partition count).
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self.key = None;
        self
    }

    /// Each task's priority (smaller first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Each task's attempts, 1 to 1,000.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Each attempt's timeout, 1 ms to 24 h.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What becomes of slots nobody materialized within the [`grace`](Self::grace).
    pub fn missed_slots(mut self, policy: MissedSlots) -> Self {
        self.missed_slots = policy;
        self
    }

    /// How late a slot may still make its task before it counts as missed (at most 1 day).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Creates the schedule paused: it makes no task until resumed.
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }
}

impl Client {
    /// Creates the schedule `name` of `domain/queue`; each of its slots becomes exactly one
    /// task, due at the slot (`docs/scheduling.md`). A leader must run for the slots to be
    /// materialized: a [`CoordinatorNode`](crate::node::CoordinatorNode) of the cluster.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad domain or queue name;
    /// [`StoreError::NotFound`](helix_store::StoreError::NotFound) for an unknown queue;
    /// [`StoreError::Conflict`](helix_store::StoreError::Conflict) when the queue has a
    /// schedule of that name; [`StoreError::Invalid`](helix_store::StoreError::Invalid) naming
    /// what is wrong (name, cron expression, time zone, interval, partition, attempts…).
    pub async fn create_schedule(
        &self,
        domain: &str,
        queue: &str,
        name: &str,
        spec: ScheduleSpec,
    ) -> Result<ScheduleRecord, ClientError> {
        let (id, partitions) = self.queue_ref(domain, queue).await?;
        let partition = match (&spec.partition, &spec.key) {
            (Some(p), _) => PartitionId(*p),
            (None, Some(key)) => partition_for_key(key.as_bytes(), partitions),
            (None, None) => partition_for_key(name.as_bytes(), partitions),
        };
        let schedule = NewSchedule {
            name: name.to_owned(),
            recurrence: spec.recurrence,
            time_zone: spec.time_zone,
            partition,
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            timeout: spec.timeout,
            payload: spec.payload,
            missed_slots: spec.missed_slots,
            grace: spec.grace,
            paused: spec.paused,
        };
        Ok(self.store.create_schedule(id, &schedule).await?)
    }

    /// Reads the schedule `name` of `domain/queue`.
    ///
    /// # Errors
    /// As [`create_schedule`](Self::create_schedule); `NotFound` for an unknown schedule.
    pub async fn schedule(
        &self,
        domain: &str,
        queue: &str,
        name: &str,
    ) -> Result<ScheduleRecord, ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.get_schedule(id, name).await?)
    }

    /// Every schedule of `domain/queue`, by name.
    ///
    /// # Errors
    /// As [`create_schedule`](Self::create_schedule).
    pub async fn schedules(&self, domain: &str, queue: &str) -> Result<Vec<ScheduleRecord>, ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.list_schedules(Some(id)).await?)
    }

    /// Pauses the schedule: it makes no task until resumed, and the tasks of its slots
    /// still ahead (materialized up to a few seconds early) are cancelled.
    ///
    /// # Errors
    /// As [`schedule`](Self::schedule).
    pub async fn pause_schedule(
        &self,
        domain: &str,
        queue: &str,
        name: &str,
    ) -> Result<ScheduleRecord, ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.set_schedule_paused(id, name, true).await?)
    }

    /// Resumes a paused schedule from its first slot at or after now; the slots of the
    /// pause are skipped.
    ///
    /// # Errors
    /// As [`schedule`](Self::schedule).
    pub async fn resume_schedule(
        &self,
        domain: &str,
        queue: &str,
        name: &str,
    ) -> Result<ScheduleRecord, ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.set_schedule_paused(id, name, false).await?)
    }

    /// Deletes the schedule; the tasks of its slots still ahead are cancelled, those already
    /// due run.
    ///
    /// # Errors
    /// As [`schedule`](Self::schedule).
    pub async fn delete_schedule(&self, domain: &str, queue: &str, name: &str) -> Result<(), ClientError> {
        let (id, _) = self.queue_ref(domain, queue).await?;
        Ok(self.store.delete_schedule(id, name).await?)
    }
}

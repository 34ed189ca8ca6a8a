//! Recurring schedules (DESIGN §6, `docs/scheduling.md`): a named schedule of a queue turns
//! each slot of its recurrence into exactly one task.
//!
//! The leader materializes slots a little ahead of time
//! ([`Store::fire_schedules`](crate::Store::fire_schedules)), each as a task whose `run_at` is
//! the slot, so the task runs on time through the partition's due-time timer and never
//! before its slot. Exactly once per slot comes from two checks in the firing transaction:
//! the coordinator's term (a deposed leader writes nothing) and a unique key on
//! (schedule, slot) in `helix_schedule_runs` (a retried or racing write of a slot that
//! already has its task is skipped quietly).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{PartitionId, QueueId};
use serde::{Deserialize, Serialize};

use crate::tasks::{DEFAULT_MAX_ATTEMPTS, DEFAULT_TASK_TIMEOUT, NewTask, TaskId};

/// The longest schedule name, in bytes of UTF-8.
pub const MAX_SCHEDULE_NAME_BYTES: usize = 128;
/// The longest cron expression, in bytes.
pub const MAX_CRON_EXPRESSION_BYTES: usize = 255;
/// The shortest interval of an [`Recurrence::Every`] schedule: 1 s. Cron expressions can
/// name every second too.
pub const MIN_SCHEDULE_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval of an [`Recurrence::Every`] schedule: 366 days.
pub const MAX_SCHEDULE_INTERVAL: Duration = Duration::from_secs(366 * 86_400);
/// How late a slot may be materialized and still count as on time, unless the schedule
/// says otherwise: 60 s. A slot found later than this is *missed* and handled by the
/// schedule's [`MissedSlots`] policy.
pub const DEFAULT_MISSED_SLOT_GRACE: Duration = Duration::from_secs(60);
/// The longest grace a schedule may give its slots: 1 day.
pub const MAX_MISSED_SLOT_GRACE: Duration = Duration::from_secs(86_400);
/// The most slots (and schedules) one [`Store::fire_schedules`](crate::Store::fire_schedules)
/// call may write, in all: it holds the coordinator's lease row for its transaction, so it
/// stays short.
pub const MAX_FIRE_BATCH: usize = 1_000;

/// A schedule's id: sequential per store, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScheduleId(pub u64);

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// When a schedule's slots fall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recurrence {
    /// A cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6 (with
    /// seconds first), read in the schedule's time zone by the `croner` crate (Open Cron
    /// Pattern Specification): `L`, `W`, `#` and `?` work as its documentation says, and so do
    /// daylight-saving gaps and repeats (see [`crate::rules::schedules`]). At most
    /// [`MAX_CRON_EXPRESSION_BYTES`].
    Cron(String),
    /// Every this long, at the instants that are whole multiples of it since
    /// 1970-01-01T00:00:00Z (so `every 1 h` falls on the hour in UTC, whatever the time zone).
    /// From [`MIN_SCHEDULE_INTERVAL`] to [`MAX_SCHEDULE_INTERVAL`], in whole milliseconds.
    Every(Duration),
}

impl fmt::Display for Recurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cron(expression) => write!(f, "cron {expression:?}"),
            Self::Every(every) => write!(f, "every {} ms", every.as_millis()),
        }
    }
}

/// What becomes of slots that nobody materialized in time (the leader was down, or the
/// schedule was created with slots in the past): slots found more than the schedule's grace
/// after their instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MissedSlots {
    /// Missed slots make no task; the schedule goes on with its next slot on time.
    #[default]
    Skip,
    /// The latest missed slot makes one task, due at once; earlier missed slots make none.
    /// (Quartz's "fire once now", Kubernetes CronJob's single catch-up run.)
    RunLatest,
}

impl MissedSlots {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "SKIP",
            Self::RunLatest => "RUN_LATEST",
        }
    }

    /// Parses a stored name; `None` for a name this binary does not know.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Skip, Self::RunLatest].into_iter().find(|p| p.as_str() == s)
    }
}

/// A schedule to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSchedule {
    /// Its name, unique within its queue: 1 to [`MAX_SCHEDULE_NAME_BYTES`] bytes of
    /// letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// When its slots fall.
    pub recurrence: Recurrence,
    /// The IANA time zone its cron expression is read in (`"UTC"`, `"Europe/Berlin"`).
    pub time_zone: String,
    /// The partition its tasks go to.
    pub partition: PartitionId,
    /// Its tasks' priority.
    pub priority: i32,
    /// Its tasks' attempts.
    pub max_attempts: u32,
    /// Its tasks' timeout per attempt.
    pub timeout: Duration,
    /// Its tasks' payload, at most 1 MiB: a template in which, when it is UTF-8, every
    /// `{{slot}}` becomes the slot's instant (RFC 3339, UTC, milliseconds) and every
    /// `{{schedule}}` the schedule's name; other bytes are copied as they are.
    pub payload: Vec<u8>,
    /// What becomes of missed slots.
    pub missed_slots: MissedSlots,
    /// How late a slot may be materialized and still count as on time, at most
    /// [`MAX_MISSED_SLOT_GRACE`]; default [`DEFAULT_MISSED_SLOT_GRACE`].
    pub grace: Duration,
    /// Whether it starts paused.
    pub paused: bool,
}

impl NewSchedule {
    /// A schedule named `name` that puts `payload` on `partition` at every slot of
    /// `recurrence`, read in UTC, with the task defaults ([`DEFAULT_MAX_ATTEMPTS`],
    /// [`DEFAULT_TASK_TIMEOUT`], priority 0), missed slots skipped after
    /// [`DEFAULT_MISSED_SLOT_GRACE`].
    pub fn new(
        name: impl Into<String>,
        recurrence: Recurrence,
        partition: PartitionId,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            name: name.into(),
            recurrence,
            time_zone: "UTC".to_owned(),
            partition,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TASK_TIMEOUT,
            payload: payload.into(),
            missed_slots: MissedSlots::Skip,
            grace: DEFAULT_MISSED_SLOT_GRACE,
            paused: false,
        }
    }
}

/// A schedule, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Its id.
    pub id: ScheduleId,
    /// Its queue.
    pub queue_id: QueueId,
    /// What it was created with.
    pub spec: NewSchedule,
    /// Its cursor: the first slot not yet materialized (on the store's clock). Slots before it
    /// have their task or were skipped. While paused it stays where it was; a resume moves it
    /// to the first slot at or after the resume.
    pub next_slot_at: DateTime<Utc>,
    /// The latest slot that made a task.
    pub last_slot_at: Option<DateTime<Utc>>,
    /// The task of that slot.
    pub last_task_id: Option<TaskId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last created, fired, paused or resumed.
    pub updated_at: DateTime<Utc>,
}

/// The leader's write of one schedule's slots, checked and applied by
/// [`Store::fire_schedules`](crate::Store::fire_schedules) in one transaction with the
/// others of the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleFire {
    /// The schedule.
    pub schedule: ScheduleId,
    /// The cursor the leader read ([`ScheduleRecord::next_slot_at`]): the write applies only
    /// while the schedule is still there, unpaused, with this cursor.
    pub cursor: DateTime<Utc>,
    /// The slots to materialize, in order, each with its task (`run_at` = the slot).
    pub slots: Vec<(DateTime<Utc>, NewTask)>,
    /// The cursor afterwards: after the last slot materialized or skipped.
    pub next_slot_at: DateTime<Utc>,
}

/// What [`Store::fire_schedules`](crate::Store::fire_schedules) did with one
/// [`ScheduleFire`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FireOutcome {
    /// The cursor moved to the fire's `next_slot_at`; `created` lists the slots that made a
    /// task now, `duplicates` the slots that already had theirs (a write retried after a lost
    /// answer), which made none.
    Fired {
        /// Each slot that made a task, with the task.
        created: Vec<(DateTime<Utc>, TaskId)>,
        /// Slots that already had their task.
        duplicates: Vec<DateTime<Utc>>,
    },
    /// Nothing was written: the schedule is gone, paused, or its cursor moved since it was
    /// read (another write fired these slots). Not an error.
    Stale,
    /// The store refuses a task of these slots (what an enqueue would answer
    /// [`StoreError::Invalid`](crate::StoreError::Invalid) for: a schedule stored under older
    /// limits, or edited by hand): they make no task and are skipped, the cursor moves to the
    /// fire's `next_slot_at`, so that the schedule cannot hold up the others. Says why.
    Invalid(String),
}

/// A schedule's columns as the SQL stores keep them (integers widened to `i64`), for one
/// conversion to [`ScheduleRecord`] shared by both.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) struct StoredSchedule {
    pub(crate) id: i64,
    pub(crate) queue_id: i64,
    pub(crate) name: String,
    pub(crate) cron: Option<String>,
    pub(crate) every_ms: Option<i64>,
    pub(crate) time_zone: String,
    pub(crate) partition_id: i64,
    pub(crate) priority: i64,
    pub(crate) max_attempts: i64,
    pub(crate) timeout_ms: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) missed_slots: String,
    pub(crate) grace_ms: i64,
    pub(crate) paused: bool,
    pub(crate) next_slot_at: chrono::NaiveDateTime,
    pub(crate) last_slot_at: Option<chrono::NaiveDateTime>,
    pub(crate) last_task_id: Option<i64>,
    pub(crate) created_at: chrono::NaiveDateTime,
    pub(crate) updated_at: chrono::NaiveDateTime,
}

#[cfg(any(feature = "mysql", feature = "sqlite"))]
impl StoredSchedule {
    /// The record; `Database` for a row no store writes.
    pub(crate) fn record(self) -> Result<ScheduleRecord, crate::StoreError> {
        use crate::StoreError;
        let bad =
            |what: &str, v: i64| StoreError::Database(format!("stored schedule {what} {v} is out of range"));
        let u64_of = |v: i64, what: &str| u64::try_from(v).map_err(|_| bad(what, v));
        let u32_of = |v: i64, what: &str| u32::try_from(v).map_err(|_| bad(what, v));
        let recurrence = match (self.cron, self.every_ms) {
            (Some(expression), None) => Recurrence::Cron(expression),
            (None, Some(ms)) => Recurrence::Every(Duration::from_millis(u64_of(ms, "interval")?)),
            _ => {
                return Err(StoreError::Database(format!(
                    "stored schedule {} has no single recurrence",
                    self.id
                )));
            }
        };
        let missed_slots = MissedSlots::parse(&self.missed_slots).ok_or_else(|| {
            StoreError::Database(format!("stored missed-slot policy {:?} is unknown", self.missed_slots))
        })?;
        Ok(ScheduleRecord {
            id: ScheduleId(u64_of(self.id, "id")?),
            queue_id: QueueId(u64_of(self.queue_id, "queue id")?),
            spec: NewSchedule {
                name: self.name,
                recurrence,
                time_zone: self.time_zone,
                partition: PartitionId(u32_of(self.partition_id, "partition")?),
                priority: i32::try_from(self.priority).map_err(|_| bad("priority", self.priority))?,
                max_attempts: u32_of(self.max_attempts, "max attempts")?,
                timeout: Duration::from_millis(u64_of(self.timeout_ms, "timeout")?),
                payload: self.payload,
                missed_slots,
                grace: Duration::from_millis(u64_of(self.grace_ms, "grace")?),
                paused: self.paused,
            },
            next_slot_at: self.next_slot_at.and_utc(),
            last_slot_at: self.last_slot_at.map(|t| t.and_utc()),
            last_task_id: self.last_task_id.map(|id| u64_of(id, "last task id").map(TaskId)).transpose()?,
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
        })
    }
}

/// A recurrence as its two columns, `cron` and `every_ms`.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn recurrence_columns(recurrence: &Recurrence) -> (Option<String>, Option<i64>) {
    match recurrence {
        Recurrence::Cron(expression) => (Some(expression.clone()), None),
        Recurrence::Every(every) => (None, Some(i64::try_from(every.as_millis()).unwrap_or(i64::MAX))),
    }
}

/// Milliseconds of a duration for a `BIGINT` column, saturating.
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! The leader's firing of recurring schedules (DESIGN §6, `docs/scheduling.md`): every
//! [`SCHEDULE_POLL_INTERVAL`] it reads the schedules whose cursor comes within
//! [`SCHEDULE_LOOKAHEAD`] and materializes their slots as tasks due at each slot, in one
//! write fenced by its term.
//!
//! Materializing ahead is what makes a slot run on time: its task is in the store before
//! its `run_at`, so the owner of its partition finds it with its due-time poll and sets a
//! timer for it, as for any delayed task. A leader that dies leaves the slots of the next
//! lookahead already written; its successor takes over within a lease and goes on from the
//! cursor. Nothing a leader does can fire a slot twice: a deposed leader's write is fenced
//! by term, and a slot written again (a write retried after its answer was lost) meets the
//! unique key on (schedule, slot) and makes no task.

use std::sync::Arc;
use std::time::Duration;

use helix_store::rules::schedules::plan_fire;
use helix_store::{CoordinatorFence, FireOutcome, MAX_FIRE_BATCH, ScheduleFire, Store, StoreError};

/// How often the leader looks for schedule slots to materialize: 1 s. One statement when
/// none are due.
pub const SCHEDULE_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How far ahead of a slot the leader materializes its task: 5 s, which leaves the slot's
/// partition at least four due-time polls (at the default 1 s) to see it coming.
pub const SCHEDULE_LOOKAHEAD: Duration = Duration::from_secs(5);
/// The most schedules one fire reads and writes; more due schedules wait for the next poll,
/// earliest cursor first.
pub const SCHEDULES_PER_FIRE: u32 = 100;
/// The most slots one schedule materializes per fire (an every-second schedule needs 5 per
/// lookahead). One fire writes at most [`MAX_FIRE_BATCH`] slots in all, earliest cursor
/// first; the rest wait for the next poll.
pub const SLOTS_PER_SCHEDULE: usize = 100;

/// What one fire did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FireReport {
    /// Schedules whose cursor moved.
    pub fired: usize,
    /// Tasks created, one per slot.
    pub created: usize,
    /// Slots that already had their task.
    pub duplicates: usize,
    /// Schedules that moved or paused between the read and the write.
    pub stale: usize,
    /// Schedules whose slots were skipped because the store refuses their task.
    pub invalid: usize,
}

/// Reads the due schedules and writes their slots under `fence`, each store call given up
/// after `call_timeout`. A fenced write is answered `Fenced`; a schedule whose stored
/// recurrence no longer parses is logged and skipped.
pub(crate) async fn fire_due(
    store: Arc<dyn Store>,
    fence: CoordinatorFence,
    call_timeout: Duration,
) -> Result<FireReport, StoreError> {
    let (now, due) = super::actor::timed(
        call_timeout,
        "due_schedules",
        store.due_schedules(SCHEDULE_LOOKAHEAD, SCHEDULES_PER_FIRE),
    )
    .await?;
    let fires: Vec<ScheduleFire> = due
        .iter()
        .filter_map(|schedule| match plan_fire(schedule, now, SCHEDULE_LOOKAHEAD, SLOTS_PER_SCHEDULE) {
            Ok(fire) => fire,
            Err(error) => {
                tracing::warn!(schedule = schedule.id.0, name = %schedule.spec.name, %error, "schedule skipped");
                None
            }
        })
        .collect();
    // One write holds the lease row for its transaction: at most MAX_FIRE_BATCH slots in all;
    // the rest wait for the next poll.
    let mut total = 0;
    let fires: Vec<ScheduleFire> = fires
        .into_iter()
        .take_while(|fire| {
            total += fire.slots.len();
            total <= MAX_FIRE_BATCH
        })
        .collect();
    if fires.is_empty() {
        return Ok(FireReport::default());
    }
    let outcomes =
        super::actor::timed(call_timeout, "fire_schedules", store.fire_schedules(&fence, &fires)).await?;
    let mut report = FireReport::default();
    for (fire, outcome) in fires.iter().zip(outcomes) {
        match outcome {
            FireOutcome::Fired { created, duplicates } => {
                report.fired += 1;
                report.created += created.len();
                report.duplicates += duplicates.len();
                if !duplicates.is_empty() {
                    tracing::debug!(
                        schedule = fire.schedule.0,
                        slots = duplicates.len(),
                        "slots already fired"
                    );
                }
            }
            FireOutcome::Stale => report.stale += 1,
            FireOutcome::Invalid(reason) => {
                report.invalid += 1;
                tracing::warn!(schedule = fire.schedule.0, %reason, "schedule slots skipped: the store refuses their task");
            }
        }
    }
    tracing::debug!(term = fence.term.0, ?report, "schedules fired");
    Ok(report)
}

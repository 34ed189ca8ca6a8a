//! The decisions of recurring schedules, shared by every store and by the leader that fires
//! them (DESIGN §6, `docs/scheduling.md`): validating a schedule, finding its slots, and
//! planning which slots a fire materializes.
//!
//! # Slots and the time zone
//! A cron schedule's slots are the instants whose wall-clock time in the schedule's time
//! zone matches the expression, as the `croner` crate finds them (Open Cron Pattern
//! Specification). Across daylight-saving changes it behaves as its documentation says:
//! - a gap (spring forward): a fixed-time expression (numbers in its second, minute and hour
//!   fields, e.g. `30 2 * * *`) fires at the first valid instant after the gap, the same day;
//!   an expression with a wildcard or step in those fields skips the slots inside the gap;
//! - a repeat (fall back): a fixed-time expression fires once, at the first pass; a
//!   wildcard or step expression fires at each pass.
//!
//! An [`Recurrence::Every`] schedule counts in real time (multiples of its interval since
//! 1970-01-01T00:00:00Z) and does not see daylight saving at all.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use helix_core::PartitionCount;

use crate::error::{StoreError, StoreResult};
use crate::rules::tasks::validate_new_task;
use crate::schedules::*;
use crate::tasks::{NewTask, RunAt};

/// A parsed recurrence in its time zone: what finds the slots.
#[derive(Debug, Clone)]
pub struct Slots {
    kind: SlotKind,
}

#[derive(Debug, Clone)]
enum SlotKind {
    Cron(Box<Cron>, chrono_tz::Tz),
    Every(i64),
}

impl Slots {
    /// Parses `recurrence` in `time_zone`.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a cron expression `croner` refuses (or longer than
    /// [`MAX_CRON_EXPRESSION_BYTES`]), a time zone not in the IANA database, or an interval
    /// out of [`MIN_SCHEDULE_INTERVAL`]..=[`MAX_SCHEDULE_INTERVAL`] or not in whole ms.
    pub fn new(recurrence: &Recurrence, time_zone: &str) -> StoreResult<Self> {
        let tz: chrono_tz::Tz = time_zone.parse().map_err(|_| {
            StoreError::Invalid(format!("time zone {time_zone:?} is not in the IANA time zone database"))
        })?;
        let kind = match recurrence {
            Recurrence::Cron(expression) => {
                if expression.len() > MAX_CRON_EXPRESSION_BYTES {
                    return Err(StoreError::Invalid(format!(
                        "cron expression of {} bytes is over the limit of {MAX_CRON_EXPRESSION_BYTES}",
                        expression.len()
                    )));
                }
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(expression)
                    .map_err(|e| StoreError::Invalid(format!("cron expression {expression:?}: {e}")))?;
                SlotKind::Cron(Box::new(cron), tz)
            }
            Recurrence::Every(every) => {
                if *every < MIN_SCHEDULE_INTERVAL
                    || *every > MAX_SCHEDULE_INTERVAL
                    || every.subsec_nanos() % 1_000_000 != 0
                {
                    return Err(StoreError::Invalid(format!(
                        "interval {every:?} is not a whole number of ms between \
                         {MIN_SCHEDULE_INTERVAL:?} and {MAX_SCHEDULE_INTERVAL:?}"
                    )));
                }
                SlotKind::Every(every.as_millis() as i64)
            }
        };
        Ok(Self { kind })
    }

    /// The first slot at or after `at` (`inclusive`) or strictly after it; `None` when
    /// there is none before year 5000 (a cron expression that never matches, such as
    /// `0 0 30 2 *`).
    pub fn next(&self, at: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        match &self.kind {
            SlotKind::Cron(cron, tz) => {
                let found = cron.find_next_occurrence(&at.with_timezone(tz), inclusive).ok()?;
                // croner drops the fraction of a second of its start: from 07:30:00.5 it
                // answers 07:30:00, before `at`. The slot after that one is the answer then.
                let found = if found < at { cron.find_next_occurrence(&found, false).ok()? } else { found };
                Some(found.with_timezone(&Utc))
            }
            SlotKind::Every(ms) => {
                let micros = at.timestamp_micros();
                let step = ms * 1_000;
                let k = if inclusive {
                    (micros + step - 1).div_euclid(step)
                } else {
                    micros.div_euclid(step) + 1
                };
                Utc.timestamp_millis_opt(k * ms).single()
            }
        }
    }

    /// The last slot strictly before `at`; `None` when there is none since year 1.
    pub fn previous(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            SlotKind::Cron(cron, tz) => {
                let found = cron.find_previous_occurrence(&at.with_timezone(tz), false).ok()?;
                // As in `next`: from 07:30:00.5 croner starts at 07:30:00 and misses it.
                let found = match cron.find_next_occurrence(&found, false) {
                    Ok(later) if later < at => later,
                    _ => found,
                };
                Some(found.with_timezone(&Utc))
            }
            SlotKind::Every(ms) => {
                // The largest multiple of ms strictly below `at` (µs precision).
                let micros = at.timestamp_micros();
                let step = ms * 1_000;
                let k = (micros - 1).div_euclid(step);
                Utc.timestamp_millis_opt(k * ms).single()
            }
        }
    }
}

/// Checks `schedule` for a queue of `partitions` partitions and answers its slots.
///
/// # Errors
/// [`StoreError::Invalid`] naming what is wrong: the name, the recurrence or time zone
/// ([`Slots::new`]), the grace, a recurrence with no slot ahead of `now`, or the task fields
/// (as an enqueue checks them: payload size, attempts, timeout, partition).
pub fn validate_schedule(
    schedule: &NewSchedule,
    partitions: PartitionCount,
    now: DateTime<Utc>,
) -> StoreResult<Slots> {
    let name = &schedule.name;
    if name.is_empty()
        || name.len() > MAX_SCHEDULE_NAME_BYTES
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(StoreError::Invalid(format!(
            "schedule name {name:?} is not 1 to {MAX_SCHEDULE_NAME_BYTES} letters, digits, '-', '_' or '.'"
        )));
    }
    if schedule.grace > MAX_MISSED_SLOT_GRACE {
        return Err(StoreError::Invalid(format!(
            "missed-slot grace {:?} is over the limit of {MAX_MISSED_SLOT_GRACE:?}",
            schedule.grace
        )));
    }
    let slots = Slots::new(&schedule.recurrence, &schedule.time_zone)?;
    if slots.next(now, true).is_none() {
        return Err(StoreError::Invalid(format!("{} has no slot after {now}", schedule.recurrence)));
    }
    validate_new_task(&task_of(schedule, now), partitions, now)?;
    Ok(slots)
}

/// The cursor of a schedule created or resumed at `now`: its first slot at or after `now`.
///
/// # Errors
/// [`StoreError::Invalid`] when the recurrence has no slot left (see [`Slots::next`]).
pub fn first_slot(slots: &Slots, now: DateTime<Utc>) -> StoreResult<DateTime<Utc>> {
    slots
        .next(now, true)
        .ok_or_else(|| StoreError::Invalid(format!("the recurrence has no slot after {now}")))
}

/// The task of `schedule` for `slot`: `run_at` = the slot, the payload template filled in.
pub fn task_of(schedule: &NewSchedule, slot: DateTime<Utc>) -> NewTask {
    NewTask {
        partition: schedule.partition,
        priority: schedule.priority,
        run_at: RunAt::At(slot),
        max_attempts: schedule.max_attempts,
        timeout: schedule.timeout,
        dedup_key: None,
        payload: render_payload(&schedule.payload, &schedule.name, slot),
    }
}

/// `template` with `{{slot}}` and `{{schedule}}` filled in when it is UTF-8; as it is
/// otherwise.
pub fn render_payload(template: &[u8], name: &str, slot: DateTime<Utc>) -> Vec<u8> {
    match std::str::from_utf8(template) {
        Ok(text) if text.contains("{{") => text
            .replace("{{slot}}", &slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .replace("{{schedule}}", name)
            .into_bytes(),
        _ => template.to_vec(),
    }
}

/// What one fire of `schedule` materializes at `now`: the slots from its cursor up to
/// `now + lookahead`, at most `max_slots` of them; `None` when its cursor is beyond that.
///
/// Slots earlier than `now - grace` are missed: [`MissedSlots::Skip`] makes no task for
/// them, [`MissedSlots::RunLatest`] one task for the latest of them. The slots from
/// `now - grace` on each make a task. The returned fire's cursor is the first slot after
/// those materialized (or skipped).
///
/// # Errors
/// [`StoreError::Database`] when the stored recurrence no longer parses.
pub fn plan_fire(
    schedule: &ScheduleRecord,
    now: DateTime<Utc>,
    lookahead: Duration,
    max_slots: usize,
) -> StoreResult<Option<ScheduleFire>> {
    let spec = &schedule.spec;
    let slots = Slots::new(&spec.recurrence, &spec.time_zone)
        .map_err(|e| StoreError::Database(format!("schedule {}: {e}", schedule.id)))?;
    let horizon = plus(now, lookahead);
    let cursor = schedule.next_slot_at;
    if cursor > horizon || max_slots == 0 {
        return Ok(None);
    }
    let on_time_from = minus(now, spec.grace);
    let mut fire = Vec::new();
    let mut at = Some(cursor);
    if cursor < on_time_from {
        // Missed slots: jump over them rather than walk them (a long outage of an
        // every-second schedule has many).
        let latest_missed = slots.previous(on_time_from).filter(|s| *s >= cursor);
        if spec.missed_slots == MissedSlots::RunLatest
            && let Some(slot) = latest_missed
        {
            fire.push(slot);
        }
        at = slots.next(on_time_from, true);
    }
    while let Some(slot) = at {
        if slot > horizon || fire.len() >= max_slots {
            break;
        }
        fire.push(slot);
        at = slots.next(slot, false);
    }
    // The cursor afterwards: the first slot not materialized; with no slot left at all
    // (a cron that stops matching before year 5000), past the horizon, so that the schedule
    // is not read again for a long while.
    let next_slot_at = at.unwrap_or_else(|| plus(horizon, MAX_SCHEDULE_INTERVAL));
    if next_slot_at == cursor {
        return Ok(None);
    }
    Ok(Some(ScheduleFire {
        schedule: schedule.id,
        cursor,
        slots: fire.into_iter().map(|slot| (slot, task_of(spec, slot))).collect(),
        next_slot_at,
    }))
}

/// Checks a fire call's size and each fire's shape.
///
/// # Errors
/// [`StoreError::Invalid`], nothing written, for more than [`MAX_FIRE_BATCH`] fires or slots
/// in all, or a fire whose slots are not strictly increasing from its cursor and before its
/// `next_slot_at` (so a fire can never name a slot behind the schedule's cursor: the cursor
/// only moves forward, and a slot it has passed never makes a task again, even once its run
/// is pruned).
pub fn validate_fires(fires: &[ScheduleFire]) -> StoreResult<()> {
    let slots: usize = fires.iter().map(|f| f.slots.len()).sum();
    if fires.len() > MAX_FIRE_BATCH || slots > MAX_FIRE_BATCH {
        return Err(StoreError::Invalid(format!(
            "a fire call of {} schedules and {slots} slots is over the limit of {MAX_FIRE_BATCH} slots",
            fires.len()
        )));
    }
    for fire in fires {
        let mut after = None;
        for (slot, _) in &fire.slots {
            if *slot < fire.cursor || after.is_some_and(|a| *slot <= a) || *slot >= fire.next_slot_at {
                return Err(StoreError::Invalid(format!(
                    "fire of schedule {}: slot {slot} is not after the cursor {} and the slot before it, \
                     and before the next cursor {}",
                    fire.schedule, fire.cursor, fire.next_slot_at
                )));
            }
            after = Some(*slot);
        }
        if fire.next_slot_at <= fire.cursor {
            return Err(StoreError::Invalid(format!(
                "fire of schedule {}: the next cursor {} is not after the cursor {}",
                fire.schedule, fire.next_slot_at, fire.cursor
            )));
        }
    }
    Ok(())
}

fn plus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| at.checked_add_signed(d)).unwrap_or(at)
}

fn minus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| at.checked_sub_signed(d)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use helix_core::{PartitionId, QueueId};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).expect("a valid instant")
    }

    fn record(spec: NewSchedule, cursor: DateTime<Utc>) -> ScheduleRecord {
        ScheduleRecord {
            id: ScheduleId(1),
            queue_id: QueueId(1),
            spec,
            next_slot_at: cursor,
            last_slot_at: None,
            last_task_id: None,
            created_at: cursor,
            updated_at: cursor,
        }
    }

    fn slots_of(fire: &ScheduleFire) -> Vec<DateTime<Utc>> {
        fire.slots.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn interval_slots_are_multiples_of_the_interval_since_the_epoch() {
        let s = Slots::new(&Recurrence::Every(Duration::from_secs(10)), "UTC").expect("valid");
        assert_eq!(s.next(at("2026-03-01T00:00:03Z"), true), Some(at("2026-03-01T00:00:10Z")));
        assert_eq!(s.next(at("2026-03-01T00:00:10Z"), true), Some(at("2026-03-01T00:00:10Z")));
        assert_eq!(s.next(at("2026-03-01T00:00:10Z"), false), Some(at("2026-03-01T00:00:20Z")));
        assert_eq!(s.next(at("2026-03-01T00:00:10.000500Z"), true), Some(at("2026-03-01T00:00:20Z")));
        assert_eq!(s.previous(at("2026-03-01T00:00:10Z")), Some(at("2026-03-01T00:00:00Z")));
        assert_eq!(s.previous(at("2026-03-01T00:00:10.000500Z")), Some(at("2026-03-01T00:00:10Z")));
    }

    #[test]
    fn a_cron_slot_at_or_after_an_instant_is_never_before_it() {
        let daily = Slots::new(&Recurrence::Cron("30 7 * * *".into()), "UTC").expect("valid");
        let within = at("2026-03-02T07:30:00.500Z");
        assert_eq!(daily.next(within, true), Some(at("2026-03-03T07:30:00Z")));
        assert_eq!(daily.next(at("2026-03-02T07:30:00Z"), true), Some(at("2026-03-02T07:30:00Z")));
        let every_second = Slots::new(&Recurrence::Cron("* * * * * *".into()), "UTC").expect("valid");
        assert_eq!(every_second.next(within, true), Some(at("2026-03-02T07:30:01Z")));
        assert_eq!(every_second.next(within, false), Some(at("2026-03-02T07:30:01Z")));
        assert_eq!(daily.previous(within), Some(at("2026-03-02T07:30:00Z")));
        assert_eq!(daily.previous(at("2026-03-02T07:30:00Z")), Some(at("2026-03-01T07:30:00Z")));
    }

    #[test]
    fn cron_with_and_without_seconds() {
        let five = Slots::new(&Recurrence::Cron("*/15 * * * *".into()), "UTC").expect("valid");
        assert_eq!(five.next(at("2026-03-01T10:01:00Z"), true), Some(at("2026-03-01T10:15:00Z")));
        let six = Slots::new(&Recurrence::Cron("*/5 * * * * *".into()), "UTC").expect("valid");
        assert_eq!(six.next(at("2026-03-01T10:01:01Z"), true), Some(at("2026-03-01T10:01:05Z")));
    }

    #[test]
    fn bad_recurrences_and_zones_are_refused_with_what_is_wrong() {
        for (recurrence, zone, needle) in [
            (Recurrence::Cron("61 * * * *".into()), "UTC", "cron expression"),
            (Recurrence::Cron("* * *".into()), "UTC", "cron expression"),
            (Recurrence::Cron("* * * * *".into()), "Mars/Olympus", "time zone"),
            (Recurrence::Every(Duration::from_millis(999)), "UTC", "interval"),
            (Recurrence::Every(Duration::from_micros(1_000_500)), "UTC", "interval"),
        ] {
            let err = Slots::new(&recurrence, zone).expect_err("refused");
            assert!(matches!(&err, StoreError::Invalid(m) if m.contains(needle)), "{recurrence}: {err}");
        }
        let never = NewSchedule::new("n", Recurrence::Cron("0 0 30 2 *".into()), PartitionId(0), "x");
        let partitions = PartitionCount::new(4).expect("valid");
        assert!(validate_schedule(&never, partitions, at("2026-03-01T00:00:00Z")).is_err());
        let bad_name =
            NewSchedule::new("a b", Recurrence::Every(Duration::from_secs(1)), PartitionId(0), "x");
        assert!(validate_schedule(&bad_name, partitions, at("2026-03-01T00:00:00Z")).is_err());
        let bad_partition =
            NewSchedule::new("p", Recurrence::Every(Duration::from_secs(1)), PartitionId(4), "x");
        assert!(validate_schedule(&bad_partition, partitions, at("2026-03-01T00:00:00Z")).is_err());
    }

    /// Europe/Berlin springs forward on 2026-03-29 at 02:00 local (01:00Z) to 03:00 and falls
    /// back on 2026-10-25 at 03:00 local (01:00Z) to 02:00.
    #[test]
    fn daylight_saving_gaps_and_repeats_follow_the_parsers_rules() {
        let zone = "Europe/Berlin";
        // Fixed time in the gap: once, at the first valid instant after it (03:00 CEST = 01:00Z).
        let fixed = Slots::new(&Recurrence::Cron("30 2 * * *".into()), zone).expect("valid");
        assert_eq!(fixed.next(at("2026-03-28T12:00:00Z"), true), Some(at("2026-03-29T01:00:00Z")));
        // … and back to 02:30 local the day after (00:30Z in summer time).
        assert_eq!(fixed.next(at("2026-03-29T01:00:00Z"), false), Some(at("2026-03-30T00:30:00Z")));
        // Wildcard minutes in the gap: the slots inside it do not exist, the next is 03:00 local.
        let every_15 = Slots::new(&Recurrence::Cron("*/15 * * * *".into()), zone).expect("valid");
        assert_eq!(every_15.next(at("2026-03-29T00:46:00Z"), true), Some(at("2026-03-29T01:00:00Z")));
        // Fixed time in the repeated hour: once, at its first pass (02:30 CEST = 00:30Z).
        let repeated = Slots::new(&Recurrence::Cron("30 2 * * *".into()), zone).expect("valid");
        let first = repeated.next(at("2026-10-24T12:00:00Z"), true).expect("a slot");
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        assert_eq!(repeated.next(first, false), Some(at("2026-10-26T01:30:00Z")));
        // Wildcard minutes in the repeated hour: both passes (02:00 CEST, then 02:00 CET).
        let hourly = Slots::new(&Recurrence::Cron("0 * * * *".into()), zone).expect("valid");
        let mut t = at("2026-10-24T23:30:00Z");
        let mut seen = Vec::new();
        for _ in 0..4 {
            t = hourly.next(t, false).expect("a slot");
            seen.push(t);
        }
        assert_eq!(
            seen,
            vec![
                at("2026-10-25T00:00:00Z"), // 02:00 CEST
                at("2026-10-25T01:00:00Z"), // 02:00 CET, the repeat
                at("2026-10-25T02:00:00Z"), // 03:00 CET
                at("2026-10-25T03:00:00Z"),
            ]
        );
        // An interval schedule counts real time through both.
        let every_hour = Slots::new(&Recurrence::Every(Duration::from_secs(3_600)), zone).expect("valid");
        assert_eq!(every_hour.next(at("2026-03-29T00:30:00Z"), false), Some(at("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn a_fire_materializes_the_slots_up_to_the_lookahead_and_moves_the_cursor_past_them() {
        let spec = NewSchedule::new(
            "s",
            Recurrence::Every(Duration::from_secs(1)),
            PartitionId(2),
            "{{schedule}}@{{slot}}",
        );
        let now = at("2026-03-01T00:00:10.300Z");
        let fire = plan_fire(&record(spec, at("2026-03-01T00:00:10Z")), now, Duration::from_secs(2), 100)
            .expect("plans")
            .expect("a fire");
        assert_eq!(
            slots_of(&fire),
            vec![at("2026-03-01T00:00:10Z"), at("2026-03-01T00:00:11Z"), at("2026-03-01T00:00:12Z")]
        );
        assert_eq!(fire.next_slot_at, at("2026-03-01T00:00:13Z"));
        let (slot, task) = &fire.slots[1];
        assert_eq!(task.run_at, RunAt::At(*slot));
        assert_eq!(task.partition, PartitionId(2));
        assert_eq!(task.payload, b"s@2026-03-01T00:00:11.000Z");
    }

    #[test]
    fn nothing_to_fire_before_the_cursor_comes_into_the_lookahead() {
        let spec = NewSchedule::new("s", Recurrence::Every(Duration::from_secs(60)), PartitionId(0), "x");
        let r = record(spec, at("2026-03-01T00:01:00Z"));
        assert_eq!(
            plan_fire(&r, at("2026-03-01T00:00:50Z"), Duration::from_secs(5), 10).expect("plans"),
            None
        );
    }

    #[test]
    fn missed_slots_are_skipped_or_only_the_latest_runs() {
        let mut spec = NewSchedule::new("s", Recurrence::Every(Duration::from_secs(10)), PartitionId(0), "x");
        spec.grace = Duration::from_secs(15);
        // The cursor is an hour behind: slots 00:00 … 00:59:40 are missed (before 00:59:45).
        let cursor = at("2026-03-01T00:00:00Z");
        let now = at("2026-03-01T01:00:00Z");
        let skip = plan_fire(&record(spec.clone(), cursor), now, Duration::from_secs(1), 100)
            .expect("plans")
            .expect("a fire");
        assert_eq!(slots_of(&skip), vec![at("2026-03-01T00:59:50Z"), at("2026-03-01T01:00:00Z")]);
        assert_eq!(skip.next_slot_at, at("2026-03-01T01:00:10Z"));
        spec.missed_slots = MissedSlots::RunLatest;
        let latest = plan_fire(&record(spec, cursor), now, Duration::from_secs(1), 100)
            .expect("plans")
            .expect("a fire");
        assert_eq!(
            slots_of(&latest),
            vec![at("2026-03-01T00:59:40Z"), at("2026-03-01T00:59:50Z"), at("2026-03-01T01:00:00Z")]
        );
    }

    #[test]
    fn a_fire_stops_at_its_slot_limit_and_resumes_from_there() {
        let spec = NewSchedule::new("s", Recurrence::Every(Duration::from_secs(1)), PartitionId(0), "x");
        let now = at("2026-03-01T00:00:00Z");
        let fire =
            plan_fire(&record(spec, now), now, Duration::from_secs(60), 5).expect("plans").expect("a fire");
        assert_eq!(fire.slots.len(), 5);
        assert_eq!(fire.next_slot_at, at("2026-03-01T00:00:05Z"));
    }
}

//! Conformance cases of recurring schedules (DESIGN §6, docs/scheduling.md), run on every
//! store by [`schedule_conformance_tests!`](crate::schedule_conformance_tests).

use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_core::{PartitionId, Term};

use super::{Backend, assert_fenced, assert_invalid, assert_not_found, lead, make_queue};
use crate::rules::schedules::plan_fire;
use crate::{
    CoordinatorFence, FireOutcome, NewSchedule, NewTask, Recurrence, RunAt, ScheduleFire, ScheduleRecord,
    Store, StoreError, TaskId, TaskState,
};

/// Instantiates every schedule conformance case as a `#[tokio::test]` for the backend that
/// `$setup` (an async expression yielding a [`Backend`]) creates; used next to
/// [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! schedule_conformance_tests {
    ($setup:expr) => {
        $crate::schedule_conformance_tests!(@cases $setup;
            schedules_round_trip,
            schedules_fire_materializes_each_slot_once,
            schedules_fire_is_fenced_by_term,
            schedules_racing_fires_make_one_task_per_slot,
            schedules_bad_fire_changes_nothing,
            schedules_pause_cancels_future_slots_and_resume_skips_the_pause,
            schedules_delete_cancels_future_slots_and_leaves_due_ones,
            schedules_go_with_their_queue_and_old_runs_are_pruned,
            schedules_two_fires_of_one_schedule_in_one_call_apply_in_order,
        );
    };
    (@cases $setup:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $setup.await;
                $crate::conformance::schedules::$case(&backend).await;
                $crate::conformance::Backend::teardown(&backend).await;
            }
        )*
    };
}

fn every(name: &str, ms: u64) -> NewSchedule {
    NewSchedule::new(
        name,
        Recurrence::Every(Duration::from_millis(ms)),
        PartitionId(1),
        "{{schedule}} {{slot}}",
    )
}

async fn fire(
    store: &dyn Store,
    fence: &CoordinatorFence,
    record: &ScheduleRecord,
    lookahead: Duration,
) -> FireOutcome {
    let now = store.now().await.expect("now");
    let plan = plan_fire(record, now, lookahead, 100).expect("plan").expect("slots to fire");
    let mut out = store.fire_schedules(fence, &[plan]).await.expect("fire");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn created(outcome: &FireOutcome) -> Vec<(DateTime<Utc>, TaskId)> {
    match outcome {
        FireOutcome::Fired { created, .. } => created.clone(),
        other => panic!("expected a fire, got {other:?}"),
    }
}

async fn state(store: &dyn Store, id: TaskId) -> TaskState {
    store.get_task(id).await.expect("get_task").state
}

/// Two instants within a millisecond (SQLite keeps milliseconds).
fn same(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_microseconds().is_some_and(|us| us.abs() < 1_000)
}

// ---- cases ---------------------------------------------------------------------------------

/// A schedule reads back as created, its cursor at its first slot at or after now; names
/// are unique per queue; bad input is refused with what is wrong.
pub async fn schedules_round_trip(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let other = make_queue(&*store, "d", "other", 2).await;
    let before = store.now().await.expect("now");
    let mut spec = every("hourly", 3_600_000);
    spec.time_zone = "Europe/Berlin".into();
    spec.priority = -3;
    spec.max_attempts = 2;
    let record = store.create_schedule(queue.id, &spec).await.expect("create");
    assert_eq!(record.queue_id, queue.id);
    assert_eq!(record.spec, spec);
    assert!(record.next_slot_at >= before && record.next_slot_at.timestamp() % 3_600 == 0, "{record:?}");
    assert!((record.next_slot_at - before).num_seconds() <= 3_600);
    assert_eq!((record.last_slot_at, record.last_task_id), (None, None));
    assert_eq!(store.get_schedule(queue.id, "hourly").await.expect("get"), record);
    let cron = NewSchedule::new("at-noon", Recurrence::Cron("0 0 12 * * *".into()), PartitionId(0), "x");
    let noon = store.create_schedule(queue.id, &cron).await.expect("create cron");
    assert_eq!(noon.spec.recurrence, cron.recurrence);
    store.create_schedule(other.id, &every("hourly", 1_000)).await.expect("same name, other queue");
    let names: Vec<_> =
        store.list_schedules(Some(queue.id)).await.expect("list").into_iter().map(|r| r.spec.name).collect();
    assert_eq!(names, ["at-noon", "hourly"]);
    assert_eq!(store.list_schedules(None).await.expect("list all").len(), 3);
    assert!(matches!(store.create_schedule(queue.id, &spec).await, Err(StoreError::Conflict(_))));
    assert_not_found(store.get_schedule(queue.id, "nope").await, "unknown schedule");
    assert_not_found(store.create_schedule(helix_core::QueueId(9_999), &spec).await, "unknown queue");
    for bad in [
        NewSchedule { name: String::new(), ..spec.clone() },
        NewSchedule { name: "has space".into(), ..spec.clone() },
        NewSchedule { recurrence: Recurrence::Cron("not cron".into()), ..every("c", 1_000) },
        NewSchedule { time_zone: "Nowhere/Else".into(), ..every("z", 1_000) },
        NewSchedule { partition: PartitionId(4), ..every("p", 1_000) },
        NewSchedule { max_attempts: 0, ..every("a", 1_000) },
        every("short", 10),
    ] {
        assert_invalid(store.create_schedule(queue.id, &bad).await, &format!("{bad:?}"));
    }
    assert_eq!(store.list_schedules(None).await.expect("list all").len(), 3, "nothing created by bad input");
}

/// A fire materializes each slot as one task due at the slot, with the payload filled in,
/// and moves the cursor; the same fire again is stale, and a slot fired again is a quiet
/// duplicate that makes no second task.
pub async fn schedules_fire_materializes_each_slot_once(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    let record = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let (now, due) = store.due_schedules(Duration::from_secs(3), 10).await.expect("due");
    assert_eq!(due, vec![record.clone()]);
    let plan = plan_fire(&record, now, Duration::from_secs(3), 100).expect("plan").expect("slots");
    let first = store.fire_schedules(&fence, std::slice::from_ref(&plan)).await.expect("fire");
    let made = created(&first[0]);
    assert_eq!(made.len(), plan.slots.len());
    assert!(made.len() >= 3, "{made:?}");
    for (slot, id) in &made {
        let task = store.get_task(*id).await.expect("task");
        assert_eq!(
            (task.queue_id, task.partition, task.state),
            (queue.id, PartitionId(1), TaskState::Pending)
        );
        assert!(same(task.run_at, *slot), "run_at {} is the slot {slot}", task.run_at);
        let payload = format!("tick {}", slot.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        assert_eq!(String::from_utf8_lossy(&task.payload), payload);
    }
    let after = store.get_schedule(queue.id, "tick").await.expect("get");
    assert!(same(after.next_slot_at, plan.next_slot_at));
    assert!(after.last_slot_at.is_some_and(|s| same(s, made.last().expect("made").0)));
    assert_eq!(after.last_task_id, Some(made.last().expect("made").1));
    assert_eq!(
        store.fire_schedules(&fence, std::slice::from_ref(&plan)).await.expect("fire again"),
        vec![FireOutcome::Stale],
        "a fire whose cursor moved writes nothing"
    );
    // A write that names slots the cursor has passed is refused: a slot behind the cursor
    // never makes a task again (the runs' primary key, tested by each SQL store's own tests,
    // stops it too).
    let again = ScheduleFire {
        schedule: record.id,
        cursor: after.next_slot_at,
        slots: plan.slots.clone(),
        next_slot_at: after.next_slot_at + chrono::Duration::seconds(1),
    };
    assert_invalid(store.fire_schedules(&fence, &[again]).await, "slots behind the cursor");
    let pending = store.list_tasks(queue.id, TaskState::Pending, None, 100).await.expect("list");
    assert_eq!(pending.len(), made.len(), "one task per slot");
}

/// A deposed leader's fire is refused whole; nothing is written.
pub async fn schedules_fire_is_fenced_by_term(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    let record = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let now = store.now().await.expect("now");
    let plan = plan_fire(&record, now, Duration::from_secs(2), 100).expect("plan").expect("slots");
    let stale = CoordinatorFence { term: Term(fence.term.0 + 1), ..fence.clone() };
    assert_fenced(
        store.fire_schedules(&stale, std::slice::from_ref(&plan)).await,
        "a fire under another term",
    );
    let other = CoordinatorFence { holder: helix_core::WorkerId::new_v7(), ..fence.clone() };
    assert_fenced(store.fire_schedules(&other, &[plan]).await, "a fire by another holder");
    assert_eq!(store.get_schedule(queue.id, "tick").await.expect("get"), record, "cursor unchanged");
    assert!(store.list_tasks(queue.id, TaskState::Pending, None, 10).await.expect("list").is_empty());
}

/// A fire with a task an enqueue would refuse (a schedule stored under older limits) makes
/// no task and skips its slots, so it cannot hold up the others of the call; a call over the
/// size limit, or a fire naming slots behind its cursor, is refused whole.
pub async fn schedules_bad_fire_changes_nothing(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    let good = store.create_schedule(queue.id, &every("good", 1_000)).await.expect("create");
    let bad = store.create_schedule(queue.id, &every("bad", 1_000)).await.expect("create");
    let now = store.now().await.expect("now");
    let ok = plan_fire(&good, now, Duration::from_secs(1), 10).expect("plan").expect("slots");
    let mut wrong = plan_fire(&bad, now, Duration::from_secs(1), 10).expect("plan").expect("slots");
    wrong.slots[0].1 = NewTask { partition: PartitionId(9), ..wrong.slots[0].1.clone() };

    let too_many =
        ScheduleFire { slots: vec![wrong.slots[0].clone(); crate::MAX_FIRE_BATCH + 1], ..wrong.clone() };
    assert_invalid(store.fire_schedules(&fence, &[ok.clone(), too_many]).await, "too many slots");
    let behind = ScheduleFire {
        cursor: wrong.cursor + chrono::Duration::seconds(5),
        next_slot_at: wrong.cursor + chrono::Duration::seconds(6),
        ..wrong.clone()
    };
    assert_invalid(store.fire_schedules(&fence, &[ok.clone(), behind]).await, "slots behind the cursor");
    let backwards = ScheduleFire { next_slot_at: wrong.cursor, slots: Vec::new(), ..wrong.clone() };
    assert_invalid(store.fire_schedules(&fence, &[backwards]).await, "a cursor that goes back");
    assert_eq!(store.get_schedule(queue.id, "good").await.expect("get"), good, "nothing written");
    assert!(store.list_tasks(queue.id, TaskState::Pending, None, 10).await.expect("list").is_empty());

    let out = store.fire_schedules(&fence, &[wrong.clone(), ok.clone()]).await.expect("fire");
    assert!(matches!(&out[0], FireOutcome::Invalid(reason) if reason.contains("partition")), "{out:?}");
    assert_eq!(created(&out[1]).len(), ok.slots.len(), "the good schedule is not held up");
    let skipped = store.get_schedule(queue.id, "bad").await.expect("get");
    assert!(same(skipped.next_slot_at, wrong.next_slot_at), "the bad fire's slots are skipped");
    assert_eq!(skipped.last_task_id, None);
    let pending = store.list_tasks(queue.id, TaskState::Pending, None, 10).await.expect("list");
    assert_eq!(pending.len(), ok.slots.len());
    let _ = RunAt::default();
}

/// A pause cancels the tasks of slots still ahead and stops the fires; a resume skips the
/// paused slots and materializes the slots ahead again.
pub async fn schedules_pause_cancels_future_slots_and_resume_skips_the_pause(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    let record = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let made = created(&fire(&*store, &fence, &record, Duration::from_secs(10)).await);
    let paused = store.set_schedule_paused(queue.id, "tick", true).await.expect("pause");
    assert!(paused.spec.paused);
    let now = store.now().await.expect("now");
    for (slot, id) in &made {
        let expected = if *slot > now { TaskState::Cancelled } else { TaskState::Pending };
        assert_eq!(state(&*store, *id).await, expected, "slot {slot} at {now}");
    }
    assert_eq!(store.set_schedule_paused(queue.id, "tick", true).await.expect("pause again"), paused);
    let (_, due) = store.due_schedules(Duration::from_secs(3_600), 10).await.expect("due");
    assert!(due.is_empty(), "a paused schedule is not due");
    let plan = plan_fire(&paused, now, Duration::from_secs(20), 100).expect("plan").expect("slots");
    assert_eq!(store.fire_schedules(&fence, &[plan]).await.expect("fire paused"), vec![FireOutcome::Stale]);

    b.advance(Duration::from_millis(1_200)).await;
    let resumed = store.set_schedule_paused(queue.id, "tick", false).await.expect("resume");
    let at = store.now().await.expect("now");
    assert!(!resumed.spec.paused);
    assert!(
        resumed.next_slot_at >= at - chrono::Duration::milliseconds(1)
            && (resumed.next_slot_at - at).num_milliseconds() <= 1_000
    );
    let again = created(&fire(&*store, &fence, &resumed, Duration::from_secs(10)).await);
    assert!(again.len() >= 9, "the slots ahead are materialized again: {again:?}");
    for (slot, _) in &again {
        assert!(*slot >= resumed.next_slot_at);
    }
}

/// A delete cancels the tasks of the schedule's future slots; those already due stay.
pub async fn schedules_delete_cancels_future_slots_and_leaves_due_ones(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    let record = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let made = created(&fire(&*store, &fence, &record, Duration::from_secs(5)).await);
    b.advance(Duration::from_millis(1_100)).await;
    store.delete_schedule(queue.id, "tick").await.expect("delete");
    let now = store.now().await.expect("now");
    assert_not_found(store.get_schedule(queue.id, "tick").await, "deleted schedule");
    assert_not_found(store.delete_schedule(queue.id, "tick").await, "deleted twice");
    let mut due = 0;
    for (slot, id) in &made {
        let s = state(&*store, *id).await;
        if *slot <= now - chrono::Duration::milliseconds(50) {
            due += 1;
            assert_eq!(s, TaskState::Pending, "slot {slot} was due at {now}");
        } else if *slot > now + chrono::Duration::milliseconds(50) {
            assert_eq!(s, TaskState::Cancelled, "slot {slot} was ahead of {now}");
        }
    }
    assert!(due >= 1, "{made:?} at {now}");
    let again = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("the name is free again");
    let _ = fire(&*store, &fence, &again, Duration::from_secs(5)).await;
}

/// Two writes of the same slots racing (on the SQL stores, really at once, on two
/// connections): one makes the tasks, the other makes none; one task per slot in the end.
pub async fn schedules_racing_fires_make_one_task_per_slot(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let mut slots = 0;
    for round in 1..=8u64 {
        let record = store.get_schedule(queue.id, "tick").await.expect("get");
        let now = store.now().await.expect("now");
        let plan =
            plan_fire(&record, now, Duration::from_secs(2 * round), 100).expect("plan").expect("slots");
        let (a, b) = tokio::join!(
            store.fire_schedules(&fence, std::slice::from_ref(&plan)),
            store.fire_schedules(&fence, std::slice::from_ref(&plan))
        );
        let made: usize = [a, b]
            .into_iter()
            .map(|r| match r.expect("a racing fire succeeds").remove(0) {
                FireOutcome::Fired { created, duplicates } => {
                    assert!(created.is_empty() || duplicates.is_empty(), "{created:?} {duplicates:?}");
                    created.len()
                }
                FireOutcome::Stale => 0,
                FireOutcome::Invalid(reason) => panic!("a valid fire was refused: {reason}"),
            })
            .sum();
        assert_eq!(made, plan.slots.len(), "round {round}: each slot made once");
        slots += made;
    }
    let pending = store.list_tasks(queue.id, TaskState::Pending, None, 1_000).await.expect("list");
    assert_eq!(pending.len(), slots);
    let mut at: Vec<_> = pending.iter().map(|t| t.run_at).collect();
    at.dedup();
    assert_eq!(at.len(), slots, "one task per slot");
}

/// Deleting a queue deletes its schedules (and their runs: a new queue's schedule of the same
/// name starts afresh); `prune_tasks` forgets runs older than its cutoff, never a slot that
/// could fire again.
pub async fn schedules_go_with_their_queue_and_old_runs_are_pruned(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let keep = make_queue(&*store, "d", "keep", 4).await;
    let fence = lead(&*store, "main").await;
    let gone = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let kept = store.create_schedule(keep.id, &every("tick", 1_000)).await.expect("create");
    let _ = fire(&*store, &fence, &gone, Duration::from_secs(2)).await;
    let made = created(&fire(&*store, &fence, &kept, Duration::from_secs(2)).await);
    store.delete_queue(&queue.domain, &queue.name).await.expect("delete queue");
    let left = store.list_schedules(None).await.expect("list");
    assert_eq!(left.iter().map(|r| r.queue_id).collect::<Vec<_>>(), vec![keep.id]);

    // Prune: the runs of `kept` are at most 3 s old; a cutoff of 1 h keeps them, then (past
    // them) a short one removes them, and the cursor still never goes back.
    store.prune_tasks(Duration::from_secs(3_600), 100).await.expect("prune");
    let cursor = store.get_schedule(keep.id, "tick").await.expect("get").next_slot_at;
    b.advance(Duration::from_millis(3_500)).await;
    assert!(store.prune_tasks(Duration::from_millis(100), 100).await.is_ok());
    // A pruned slot is behind the cursor: a write naming it is refused.
    let dup = ScheduleFire {
        schedule: kept.id,
        cursor,
        slots: vec![(made[0].0, made_task(&kept, made[0].0))],
        next_slot_at: cursor + chrono::Duration::seconds(60),
    };
    assert_invalid(store.fire_schedules(&fence, &[dup]).await, "a pruned slot");
    let after = store.get_schedule(keep.id, "tick").await.expect("get");
    assert!(after.next_slot_at > made.last().expect("made").0, "the cursor is past every pruned slot");
}

fn made_task(record: &ScheduleRecord, slot: DateTime<Utc>) -> NewTask {
    crate::rules::schedules::task_of(&record.spec, slot)
}

/// Two fires of one schedule in one call apply in order: the second, read at the cursor the
/// first leaves, goes on from there; one read at the old cursor is stale.
pub async fn schedules_two_fires_of_one_schedule_in_one_call_apply_in_order(b: &dyn Backend) {
    let store = b.store();
    let queue = make_queue(&*store, "d", "q", 4).await;
    let fence = lead(&*store, "main").await;
    let record = store.create_schedule(queue.id, &every("tick", 1_000)).await.expect("create");
    let now = store.now().await.expect("now");
    let first = plan_fire(&record, now, Duration::from_secs(3), 2).expect("plan").expect("slots");
    let moved = ScheduleRecord { next_slot_at: first.next_slot_at, ..record.clone() };
    let second = plan_fire(&moved, now, Duration::from_secs(6), 2).expect("plan").expect("slots");
    let out = store.fire_schedules(&fence, &[first.clone(), second.clone(), first]).await.expect("fire");
    assert_eq!(created(&out[0]).len(), 2);
    assert_eq!(created(&out[1]).len(), 2);
    assert_eq!(out[2], FireOutcome::Stale);
    let after = store.get_schedule(queue.id, "tick").await.expect("get");
    assert!(same(after.next_slot_at, second.next_slot_at));
    let pending = store.list_tasks(queue.id, TaskState::Pending, None, 100).await.expect("list");
    assert_eq!(pending.len(), 4);
}

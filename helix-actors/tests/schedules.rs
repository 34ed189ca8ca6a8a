//! Recurring schedules end to end on virtual time with the testing kit (DESIGN §6,
//! `docs/scheduling.md`): every slot becomes exactly one task that runs at its slot and never
//! before, through leader failovers and lost answers; missed slots follow their policy; a
//! pause, a resume and a delete act as documented.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use helix_actors::client::{Client, ScheduleSpec};
use helix_actors::tasks::{TaskContext, TaskOutcome, TaskPolicy, TaskQueues, task_handler_fn};
use helix_actors::testing::{CallFault, SimCluster};
use helix_core::ClusterConfig;
use helix_store::rules::schedules::plan_fire;
use helix_store::{MissedSlots, QueueRecord, Store, TaskRecord, TaskState};
use tokio::time::Instant;

/// One run a handler saw: the slot its payload names, and when it started.
type Run = (String, DateTime<Utc>);

/// Every run a handler saw: the slot its payload names, and when it started (on the kit's
/// clock, which is the store's).
#[derive(Clone)]
struct Runs {
    runs: Arc<Mutex<Vec<Run>>>,
    /// The kit's clock at `origin`, to turn tokio instants into store instants.
    epoch: (DateTime<Utc>, Instant),
}

impl Runs {
    fn new(cluster: &SimCluster) -> Self {
        Self { runs: Arc::default(), epoch: (cluster.now(), Instant::now()) }
    }

    fn queues(&self, queue: &QueueRecord) -> TaskQueues {
        let me = self.clone();
        TaskQueues::new().queue(
            queue.id,
            task_handler_fn(move |task: TaskContext| {
                let me = me.clone();
                async move {
                    let at = me.epoch.0 + chrono::Duration::from_std(me.epoch.1.elapsed()).expect("elapsed");
                    let payload = String::from_utf8_lossy(task.payload()).into_owned();
                    me.runs.lock().expect("runs").push((payload, at));
                    TaskOutcome::Done
                }
            }),
            TaskPolicy::default(),
        )
    }

    /// Runs per payload.
    fn by_payload(&self) -> BTreeMap<String, Vec<DateTime<Utc>>> {
        let mut out: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
        for (payload, at) in self.runs.lock().expect("runs").iter() {
            out.entry(payload.clone()).or_default().push(*at);
        }
        out
    }
}

/// How far ahead the racer of the failover test plans: past the leader's lookahead, so that
/// what it read is usually still due when it writes.
const RACER_LOOKAHEAD: Duration = Duration::from_secs(8);

async fn cluster(partitions: u64) -> (SimCluster, QueueRecord, Client) {
    tokio::time::pause();
    let cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
    let queue = cluster.create_queue("ops", "jobs", partitions).await.expect("queue");
    let client = Client::new(Arc::clone(cluster.store()));
    (cluster, queue, client)
}

fn slot_of(payload: &str) -> DateTime<Utc> {
    let slot = payload.rsplit(' ').next().expect("a slot");
    DateTime::parse_from_rfc3339(slot).expect("an RFC 3339 slot").with_timezone(&Utc)
}

/// Every task of the queue in the store, pending, running or finished.
async fn all_tasks(store: &Arc<dyn Store>, queue: &QueueRecord) -> Vec<TaskRecord> {
    let mut out = Vec::new();
    for state in TaskState::ALL {
        out.extend(store.list_tasks(queue.id, state, None, 10_000).await.expect("list"));
    }
    out
}

/// The slots of `name`'s tasks, each with how many tasks it has.
async fn tasks_per_slot(
    store: &Arc<dyn Store>,
    queue: &QueueRecord,
    name: &str,
) -> BTreeMap<DateTime<Utc>, usize> {
    let mut out = BTreeMap::new();
    for task in all_tasks(store, queue).await {
        let payload = String::from_utf8_lossy(&task.payload).into_owned();
        if payload.starts_with(&format!("{name} ")) {
            assert_eq!(task.run_at, slot_of(&payload), "a slot's task is due at the slot");
            *out.entry(slot_of(&payload)).or_default() += 1;
        }
    }
    out
}

fn assert_consecutive(slots: &[DateTime<Utc>], every: chrono::Duration) {
    for pair in slots.windows(2) {
        assert_eq!(pair[1] - pair[0], every, "no slot is missing between {} and {}", pair[0], pair[1]);
    }
}

#[actix::test]
async fn every_slot_runs_once_at_its_slot_and_never_before_it() {
    let (mut cluster, queue, client) = cluster(4).await;
    let runs = Runs::new(&cluster);
    let tasks = runs.queues(&queue);
    cluster.add_task_worker(&[(&queue, 1)], &tasks);
    cluster.add_task_worker(&[(&queue, 1)], &tasks);
    cluster.add_coordinator();
    let spec = ScheduleSpec::every(Duration::from_secs(1)).payload("tick {{slot}}");
    let created = client.create_schedule("ops", "jobs", "tick", spec).await.expect("create");
    cluster.advance(Duration::from_secs(40)).await;

    let seen = runs.by_payload();
    let slots: Vec<DateTime<Utc>> = seen.keys().map(|p| slot_of(p)).collect();
    assert!(slots.len() >= 35, "{} slots ran in 40 s", slots.len());
    assert_eq!(slots[0], created.next_slot_at, "the first slot is the cursor at creation");
    assert_consecutive(&slots, chrono::Duration::seconds(1));
    for (payload, starts) in &seen {
        assert_eq!(starts.len(), 1, "slot {payload} ran {} times", starts.len());
        let slot = slot_of(payload);
        let late = starts[0] - slot;
        assert!(late >= chrono::Duration::zero(), "slot {payload} ran {late} early");
        // Once the leader is elected and its first fire is in (the first ~4 s), each slot's
        // task is written ahead and runs on its partition's timer.
        if slot >= created.created_at + chrono::Duration::seconds(6) {
            assert!(late <= chrono::Duration::milliseconds(20), "slot {payload} ran {late} late");
        }
    }
    let per_slot = tasks_per_slot(cluster.store(), &queue, "tick").await;
    assert!(per_slot.values().all(|n| *n == 1), "{per_slot:?}");
}

/// Two coordinators, the leader's fire answers lost three times (the write committed, the
/// leader did not hear), stale writes racing the leader's under its own term, then the leader
/// killed and the standby taking over mid-way: still exactly one task per slot, with no slot
/// missing, none run before its slot.
#[actix::test]
async fn a_failover_and_lost_answers_still_make_exactly_one_task_per_slot() {
    let (mut cluster, queue, client) = cluster(4).await;
    let runs = Runs::new(&cluster);
    let tasks = runs.queues(&queue);
    cluster.add_task_worker(&[(&queue, 1)], &tasks);
    cluster.add_task_worker(&[(&queue, 1)], &tasks);
    let first = cluster.add_coordinator();
    let second = cluster.add_coordinator();
    let spec = ScheduleSpec::every(Duration::from_secs(1)).payload("tick {{slot}}");
    client.create_schedule("ops", "jobs", "tick", spec).await.expect("create");
    cluster.advance(Duration::from_secs(5)).await;
    let (leader, fence) = cluster.leader().await.expect("a leader");
    assert!(leader.id() == first.id() || leader.id() == second.id());
    leader.link().inject("fire_schedules", CallFault::LoseAnswer, 3);
    // A racer writes what it read 1.2 s earlier under whatever term leads then: a zombie
    // write racing the leader's own, as a paused leader or a second coordinator would.
    let racer = {
        let store = Arc::clone(cluster.store());
        let leaders: Vec<_> = cluster.coordinators().to_vec();
        actix::spawn(async move {
            let mut raced = 0;
            for _ in 0..30 {
                let (now, due) = store.due_schedules(RACER_LOOKAHEAD, 10).await.expect("due");
                tokio::time::sleep(Duration::from_millis(1_200)).await;
                let fires: Vec<_> = due
                    .iter()
                    .filter_map(|r| plan_fire(r, now, RACER_LOOKAHEAD, 100).expect("plan"))
                    .collect();
                for node in &leaders {
                    if let Some(fence) = node.fence().await
                        && let Ok(out) = store.fire_schedules(&fence, &fires).await
                    {
                        raced += out.len();
                    }
                }
            }
            raced
        })
    };
    cluster.advance(Duration::from_secs(15)).await;
    assert!(leader.link().calls("fire_schedules") >= 4, "the lost answers were retried");
    cluster.kill_coordinator(&leader);
    cluster.advance(Duration::from_secs(30)).await;
    let (successor, next) = cluster.leader().await.expect("a new leader");
    assert_ne!(successor.id(), leader.id());
    assert!(next.term > fence.term);

    let raced = racer.await.expect("racer");
    assert!(raced >= 20, "the racer wrote {raced} times");
    let per_slot = tasks_per_slot(cluster.store(), &queue, "tick").await;
    assert!(per_slot.len() >= 45, "{} slots in 50 s", per_slot.len());
    assert!(per_slot.values().all(|n| *n == 1), "a slot with more than one task: {per_slot:?}");
    let slots: Vec<DateTime<Utc>> = per_slot.keys().copied().collect();
    assert_consecutive(&slots, chrono::Duration::seconds(1));
    for (payload, starts) in runs.by_payload() {
        assert_eq!(starts.len(), 1, "slot {payload} ran {} times", starts.len());
        assert!(starts[0] >= slot_of(&payload), "slot {payload} ran early, at {}", starts[0]);
    }
}

/// With no leader for ten minutes, an every-minute schedule that skips missed slots makes
/// none of them; one that runs the latest makes exactly that one, at once; both then go on
/// at their slots.
#[actix::test]
async fn missed_slots_are_skipped_or_only_the_latest_runs() {
    let (mut cluster, queue, client) = cluster(2).await;
    let runs = Runs::new(&cluster);
    cluster.add_task_worker(&[(&queue, 1)], &runs.queues(&queue));
    let minute = ScheduleSpec::every(Duration::from_secs(60)).grace(Duration::from_secs(10));
    client
        .create_schedule("ops", "jobs", "skip", minute.clone().payload("skip {{slot}}"))
        .await
        .expect("create skip");
    client
        .create_schedule(
            "ops",
            "jobs",
            "latest",
            minute.payload("latest {{slot}}").missed_slots(MissedSlots::RunLatest),
        )
        .await
        .expect("create latest");
    cluster.advance(Duration::from_secs(600)).await;
    assert!(runs.by_payload().is_empty(), "nothing runs without a leader");

    cluster.add_coordinator();
    let start = cluster.now();
    cluster.advance(Duration::from_secs(8)).await;
    // The missed slots: every minute before start - grace.
    let skip = tasks_per_slot(cluster.store(), &queue, "skip").await;
    assert!(
        skip.keys().all(|slot| *slot > start - chrono::Duration::seconds(10)),
        "a missed slot ran: {skip:?}"
    );
    let latest = tasks_per_slot(cluster.store(), &queue, "latest").await;
    let missed: Vec<_> =
        latest.keys().filter(|slot| **slot <= start - chrono::Duration::seconds(10)).collect();
    assert_eq!(missed.len(), 1, "only the latest missed slot runs: {latest:?}");
    assert!(*missed[0] > start - chrono::Duration::seconds(70), "it is the latest: {} at {start}", missed[0]);
    let caught_up = runs.by_payload();
    assert_eq!(caught_up.len(), latest.len() + skip.len());

    cluster.advance(Duration::from_secs(120)).await;
    let after = runs.by_payload();
    let on_time: Vec<_> = after
        .iter()
        .filter(|(p, _)| slot_of(p) > start)
        .map(|(p, starts)| (p.split(' ').next().expect("name").to_owned(), starts[0] - slot_of(p)))
        .collect();
    for name in ["skip", "latest"] {
        let of_name: Vec<_> = on_time.iter().filter(|(n, _)| n == name).collect();
        assert!(of_name.len() >= 2, "{name} goes on every minute: {after:?}");
        assert!(of_name.iter().all(|(_, late)| *late <= chrono::Duration::milliseconds(20)), "{of_name:?}");
    }
}

/// A paused schedule makes no task and its slots already written ahead are cancelled; a
/// resume goes on from the next slot; a delete stops it for good. All through the client.
#[actix::test]
async fn pause_resume_and_delete_through_the_client() {
    let (mut cluster, queue, client) = cluster(2).await;
    let runs = Runs::new(&cluster);
    cluster.add_task_worker(&[(&queue, 1)], &runs.queues(&queue));
    cluster.add_coordinator();
    let spec = ScheduleSpec::every(Duration::from_secs(1)).payload("tick {{slot}}");
    client.create_schedule("ops", "jobs", "tick", spec.clone()).await.expect("create");
    let err =
        client.create_schedule("ops", "jobs", "tick", spec).await.expect_err("a second one of that name");
    assert!(err.to_string().contains("already has a schedule"), "{err}");
    let bad = client.create_schedule("ops", "jobs", "bad", ScheduleSpec::cron("every tuesday")).await;
    assert!(bad.expect_err("refused").to_string().contains("cron expression"));
    cluster.advance(Duration::from_secs(10)).await;
    assert!(runs.by_payload().len() >= 5);

    let paused = client.pause_schedule("ops", "jobs", "tick").await.expect("pause");
    assert!(paused.spec.paused);
    let at_pause = cluster.now();
    let ran = runs.by_payload().len();
    cluster.advance(Duration::from_secs(10)).await;
    // A slot already due at the pause still runs; none after it does.
    let during: Vec<_> = runs.by_payload().into_keys().filter(|p| slot_of(p) > at_pause).collect();
    assert!(during.is_empty(), "slots after the pause ran: {during:?}");
    let cancelled = all_tasks(cluster.store(), &queue)
        .await
        .into_iter()
        .filter(|t| t.state == TaskState::Cancelled)
        .count();
    assert!(cancelled >= 3, "the slots written ahead were cancelled: {cancelled}");

    let resumed = client.resume_schedule("ops", "jobs", "tick").await.expect("resume");
    assert!(resumed.next_slot_at >= cluster.now() - chrono::Duration::milliseconds(1));
    cluster.advance(Duration::from_secs(10)).await;
    let seen = runs.by_payload();
    assert!(seen.len() >= ran + 8, "it runs again");
    assert!(
        seen.keys().all(|p| slot_of(p) <= at_pause || slot_of(p) >= resumed.next_slot_at),
        "no slot of the pause ran"
    );
    let listed = client.schedules("ops", "jobs").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_slot_at.is_some());

    client.delete_schedule("ops", "jobs", "tick").await.expect("delete");
    let at_delete = cluster.now();
    cluster.advance(Duration::from_secs(10)).await;
    let after: Vec<_> = runs.by_payload().into_keys().filter(|p| slot_of(p) > at_delete).collect();
    assert!(after.is_empty(), "slots after the delete ran: {after:?}");
    assert!(client.schedule("ops", "jobs", "tick").await.is_err());
}

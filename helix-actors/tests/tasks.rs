//! Running tasks on partitions, on virtual time with the testing kit (DESIGN §6,
//! `docs/tasks.md`): order, retries with backoff, dead letters, timeouts, panics, cancel,
//! snooze, and what happens to tasks when their owner is killed or moves on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_actors::client::{Client, TaskSpec};
use helix_actors::tasks::{TaskContext, TaskOutcome, TaskPolicy, TaskQueues, task_handler_fn};
use helix_actors::testing::{CallFault, SimCluster, SimWorker};
use helix_core::{ClusterConfig, Epoch, PartitionId, WorkerId};
use helix_store::{
    CancelOutcome, Enqueued, NewTask, OwnerFence, QueueRecord, RunAt, StoreError, TaskId, TaskState,
};
use tokio::sync::Notify;
use tokio::time::Instant;

mod support;

const LIMIT: Duration = Duration::from_secs(60);

/// One attempt as the handler saw it.
#[derive(Debug, Clone)]
struct Run {
    id: TaskId,
    attempt: u32,
    epoch: Epoch,
    worker: WorkerId,
    payload: String,
    at: Instant,
}

/// Records every attempt, then acts on its payload: `ok`, `fail` (a failed attempt), `dead`
/// (a permanent failure), `panic`, `hang` (never answers), `wait` (until `release`),
/// `snooze` (once, then ok), `again` (a failed first attempt to retry at once, then 10 s of
/// work), `gated-again` (as `again`, the first attempt ending at `gate`), `snooze-forever`
/// and `retry-forever` (delays past every limit), `retry-in-N` (a first attempt to retry in N
/// seconds).
#[derive(Clone, Default)]
struct Recorder {
    runs: Arc<Mutex<Vec<Run>>>,
    release: Arc<Notify>,
    gate: Arc<Notify>,
}

impl Recorder {
    fn queues(&self, queue: &QueueRecord, policy: TaskPolicy) -> TaskQueues {
        let me = self.clone();
        TaskQueues::new().queue(
            queue.id,
            task_handler_fn(move |task: TaskContext| {
                let me = me.clone();
                async move { me.run(task).await }
            }),
            policy,
        )
    }

    async fn run(&self, task: TaskContext) -> TaskOutcome {
        let payload = String::from_utf8_lossy(task.payload()).into_owned();
        let snoozed_before = self.runs_of(task.id()).iter().any(|r| r.payload == "snooze");
        self.runs.lock().expect("runs").push(Run {
            id: task.id(),
            attempt: task.attempt(),
            epoch: task.epoch(),
            worker: task.partition().worker,
            payload: payload.clone(),
            at: Instant::now(),
        });
        match payload.as_str() {
            "fail" => TaskOutcome::retry("it failed"),
            "dead" => TaskOutcome::fail("it can never work"),
            "panic" => panic!("the handler panicked on purpose"),
            "hang" => std::future::pending().await,
            "wait" => {
                self.release.notified().await;
                TaskOutcome::Done
            }
            "snooze" if !snoozed_before => TaskOutcome::Snooze(Duration::from_secs(30)),
            "again" if task.attempt() == 1 => {
                TaskOutcome::Retry { error: "once more".to_owned(), delay: Some(Duration::ZERO) }
            }
            "again" => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                TaskOutcome::Done
            }
            "gated-again" if task.attempt() == 1 => {
                self.gate.notified().await;
                TaskOutcome::Retry { error: "once more".to_owned(), delay: Some(Duration::ZERO) }
            }
            "gated-again" => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                TaskOutcome::Done
            }
            retry if retry.starts_with("retry-in-") && task.attempt() == 1 => {
                let secs = retry.trim_start_matches("retry-in-").parse().expect("seconds");
                TaskOutcome::Retry { error: "later".to_owned(), delay: Some(Duration::from_secs(secs)) }
            }
            "snooze-forever" => TaskOutcome::Snooze(Duration::MAX),
            "retry-forever" => {
                TaskOutcome::Retry { error: "much later".to_owned(), delay: Some(Duration::MAX) }
            }
            _ => TaskOutcome::Done,
        }
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().expect("runs").clone()
    }

    fn runs_of(&self, id: TaskId) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.id == id).collect()
    }
}

async fn cluster(partitions: u64) -> (SimCluster, QueueRecord, Client) {
    tokio::time::pause();
    let cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
    let queue = cluster.create_queue("shop", "orders", partitions).await.expect("queue");
    let client = Client::new(Arc::clone(cluster.store()));
    (cluster, queue, client)
}

async fn enqueue(client: &Client, spec: TaskSpec) -> TaskId {
    let Enqueued { id, created } = client.enqueue("shop", "orders", spec).await.expect("enqueue");
    assert!(created);
    id
}

async fn state(client: &Client, id: TaskId) -> TaskState {
    client.task(id).await.expect("task").state
}

async fn wait_state(cluster: &SimCluster, client: &Client, id: TaskId, want: TaskState) {
    let reached = cluster.wait_until(LIMIT, || async { state(client, id).await == want }).await;
    assert!(reached, "task {id} never reached {want}: {:?}", client.task(id).await);
}

async fn wait_all_finished(cluster: &SimCluster, client: &Client, ids: &[TaskId]) {
    let done = cluster
        .wait_until(Duration::from_secs(300), || async {
            for id in ids {
                if !state(client, *id).await.is_finished() {
                    return false;
                }
            }
            true
        })
        .await;
    assert!(done, "not every task finished");
}

#[actix::test]
async fn a_partition_runs_its_tasks_in_priority_run_at_id_order() {
    let (mut cluster, queue, client) = cluster(1).await;
    let now = cluster.now();
    let mut expected = Vec::new();
    // Enqueued out of order; claim order is (priority, run_at, id).
    let late =
        enqueue(&client, TaskSpec::new("ok").priority(0).run_at(now - chrono::Duration::seconds(1))).await;
    let urgent = enqueue(&client, TaskSpec::new("ok").priority(-5)).await;
    let early =
        enqueue(&client, TaskSpec::new("ok").priority(0).run_at(now - chrono::Duration::seconds(60))).await;
    let plain: Vec<TaskId> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(enqueue(&client, TaskSpec::new("ok").priority(0).run_at(now)).await);
        }
        ids
    };
    let last = enqueue(&client, TaskSpec::new("ok").priority(9)).await;
    expected.extend([urgent, early, late]);
    expected.extend(plain.iter().copied());
    expected.push(last);

    let recorder = Recorder::default();
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &recorder.queues(&queue, TaskPolicy::default().in_flight(1)));
    wait_all_finished(&cluster, &client, &expected).await;
    let order: Vec<TaskId> = recorder.runs().iter().map(|r| r.id).collect();
    assert_eq!(order, expected, "strict claim order with an in-flight limit of 1");
    for id in expected {
        assert_eq!(state(&client, id).await, TaskState::Done);
    }
}

#[actix::test]
async fn failed_attempts_back_off_exponentially_then_go_dead_and_the_tasks_behind_still_run() {
    let (mut cluster, queue, client) = cluster(1).await;
    let flaky = enqueue(&client, TaskSpec::new("fail").partition(0).max_attempts(4)).await;
    let behind = enqueue(&client, TaskSpec::new("ok").partition(0)).await;
    let recorder = Recorder::default();
    let policy = TaskPolicy::default().in_flight(1).backoff(Duration::from_secs(2), Duration::from_secs(60));
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &recorder.queues(&queue, policy));

    wait_state(&cluster, &client, flaky, TaskState::Dead).await;
    wait_state(&cluster, &client, behind, TaskState::Done).await;
    let runs = recorder.runs_of(flaky);
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // Backoff 2 s, 4 s, 8 s, each with equal jitter: at least half of it.
    for (i, pair) in runs.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let full = Duration::from_secs(2 << i);
        assert!(gap >= full / 2, "gap {i} of {gap:?} is shorter than half of {full:?}");
        assert!(gap <= full + Duration::from_secs(2), "gap {i} of {gap:?} is much longer than {full:?}");
    }
    let dead = client.task(flaky).await.expect("task");
    assert_eq!((dead.attempts, dead.last_error.as_deref()), (4, Some("it failed")));
    assert!(
        recorder.runs_of(behind)[0].at < runs[1].at,
        "the task behind ran while the flaky one backed off"
    );
    let listed = client.list_tasks("shop", "orders", TaskState::Dead, None, 10).await.expect("dead letters");
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![flaky]);

    // An operator's retry brings it back; it fails again four times.
    let back = client.retry_task(flaky).await.expect("retry");
    assert_eq!((back.state, back.attempts), (TaskState::Pending, 0));
    let reached = cluster.wait_until(LIMIT, || async { recorder.runs_of(flaky).len() == 5 }).await;
    assert!(reached, "the revived task ran again");
}

#[actix::test]
async fn panics_timeouts_and_permanent_failures_count_as_failures() {
    let (mut cluster, queue, client) = cluster(2).await;
    let panics = enqueue(&client, TaskSpec::new("panic").partition(0).max_attempts(2)).await;
    let hangs =
        enqueue(&client, TaskSpec::new("hang").partition(1).max_attempts(1).timeout(Duration::from_secs(5)))
            .await;
    let dead = enqueue(&client, TaskSpec::new("dead").partition(0).max_attempts(10)).await;
    let after = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    let recorder = Recorder::default();
    let policy = TaskPolicy::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &recorder.queues(&queue, policy));
    wait_all_finished(&cluster, &client, &[panics, hangs, dead, after]).await;

    let p = client.task(panics).await.expect("task");
    assert_eq!((p.state, p.attempts), (TaskState::Dead, 2));
    assert!(p.last_error.as_deref().is_some_and(|e| e.contains("panicked on purpose")), "{p:?}");
    let h = client.task(hangs).await.expect("task");
    assert_eq!(h.state, TaskState::Dead);
    assert!(h.last_error.as_deref().is_some_and(|e| e.contains("timed out after 5000 ms")), "{h:?}");
    let d = client.task(dead).await.expect("task");
    assert_eq!(
        (d.state, d.attempts, d.last_error.as_deref()),
        (TaskState::Dead, 1, Some("it can never work"))
    );
    assert_eq!(state(&client, after).await, TaskState::Done, "the worker kept running after a panic");
}

#[actix::test]
async fn a_snooze_puts_the_task_back_without_counting_the_attempt() {
    let (mut cluster, queue, client) = cluster(1).await;
    let snoozer = enqueue(&client, TaskSpec::new("snooze").max_attempts(1)).await;
    let recorder = Recorder::default();
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &recorder.queues(&queue, TaskPolicy::default()));
    wait_state(&cluster, &client, snoozer, TaskState::Done).await;
    let runs = recorder.runs_of(snoozer);
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 1],
        "the snooze gave the attempt back"
    );
    assert!(runs[1].at - runs[0].at >= Duration::from_secs(30), "not before the snooze ended");
}

#[actix::test]
async fn cancelled_tasks_do_not_run_and_a_running_one_ends_cancelled() {
    let (mut cluster, queue, client) = cluster(1).await;
    let running = enqueue(&client, TaskSpec::new("wait").priority(-1)).await;
    let pending = enqueue(&client, TaskSpec::new("ok").delay(Duration::from_secs(20))).await;
    let recorder = Recorder::default();
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &recorder.queues(&queue, TaskPolicy::default().in_flight(1)));
    wait_state(&cluster, &client, running, TaskState::Running).await;

    assert_eq!(client.cancel_task(pending).await.expect("cancel"), CancelOutcome::Cancelled);
    assert_eq!(client.cancel_task(running).await.expect("cancel"), CancelOutcome::Requested);
    recorder.release.notify_one();
    wait_state(&cluster, &client, running, TaskState::Cancelled).await;
    cluster.advance(Duration::from_secs(40)).await;
    assert_eq!(state(&client, pending).await, TaskState::Cancelled);
    assert!(recorder.runs_of(pending).is_empty(), "a cancelled task never runs");
    assert_eq!(
        client.cancel_task(running).await.expect("cancel"),
        CancelOutcome::AlreadyFinished(TaskState::Cancelled)
    );
}

#[actix::test]
async fn delayed_tasks_do_not_run_before_their_run_at() {
    let (mut cluster, queue, client) = cluster(4).await;
    let recorder = Recorder::default();
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &recorder.queues(&queue, TaskPolicy::default()));
    let start = Instant::now();
    let mut due = BTreeMap::new();
    for (i, secs) in [7u64, 3, 12, 5].into_iter().enumerate() {
        let id =
            enqueue(&client, TaskSpec::new("ok").key(format!("k{i}")).delay(Duration::from_secs(secs))).await;
        due.insert(id, start + Duration::from_secs(secs));
    }
    let ids: Vec<TaskId> = due.keys().copied().collect();
    wait_all_finished(&cluster, &client, &ids).await;
    let runs = recorder.runs();
    for run in &runs {
        let at = due[&run.id];
        assert!(run.at >= at, "task {} ran {:?} before its run_at", run.id, at - run.at);
        // Enqueued in this process: its partition's timer was set at the enqueue.
        assert!(run.at <= at + Duration::from_millis(50), "task {} ran {:?} late", run.id, run.at - at);
    }
    let order: Vec<Instant> = runs.iter().map(|r| due[&r.id]).collect();
    assert!(order.is_sorted(), "ran out of due order: {order:?}");
}

/// Tasks that fall due while their partition moves (its owner was killed) run once the new
/// owner has it: those already due at once and in due order, the later ones at their due
/// time, none before it.
#[actix::test]
async fn tasks_due_while_their_partition_moved_run_after_the_move_in_order() {
    let (mut cluster, queue, client) = cluster(1).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let first = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let warm = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, warm, TaskState::Done).await;
    let second = cluster.add_task_worker(&[(&queue, 1)], &queues);
    cluster.advance(Duration::from_secs(2)).await;

    let start = Instant::now();
    let mut due = BTreeMap::new();
    for secs in [3u64, 1, 2, 6] {
        let id = enqueue(&client, TaskSpec::new("ok").delay(Duration::from_secs(secs))).await;
        due.insert(id, start + Duration::from_secs(secs));
    }
    cluster.kill(&first);
    let ids: Vec<TaskId> = due.keys().copied().collect();
    wait_all_finished(&cluster, &client, &ids).await;
    let runs: Vec<Run> = recorder.runs().into_iter().filter(|r| due.contains_key(&r.id)).collect();
    assert_eq!(runs.len(), 4, "each ran once: {runs:?}");
    assert!(runs.iter().all(|r| r.worker == second.id()), "the new owner ran them: {runs:?}");
    let order: Vec<Instant> = runs.iter().map(|r| due[&r.id]).collect();
    assert!(order.is_sorted(), "ran out of due order: {order:?}");
    let moved_at = runs[0].at;
    for run in &runs {
        let at = due[&run.id];
        assert!(run.at >= at, "task {} ran {:?} before its run_at", run.id, at - run.at);
        let by = at.max(moved_at) + Duration::from_millis(50);
        assert!(run.at <= by, "task {} ran {:?} after it was due here", run.id, run.at - at.max(moved_at));
    }
    assert!(moved_at > start + Duration::from_secs(2), "the move took the session timeout");
}

/// Two workers, a kill mid-way: every task ends DONE exactly once, tasks of the killed worker
/// ran again under a higher epoch, and no attempt ran under an epoch after another owner's.
#[actix::test]
async fn a_killed_workers_tasks_run_again_after_reassignment_and_each_completes_once() {
    let (mut cluster, queue, client) = cluster(8).await;
    let specs: Vec<TaskSpec> =
        (0..200).map(|i| TaskSpec::new("wait-free").key(format!("order-{i}"))).collect();
    let ids: Vec<TaskId> = client
        .enqueue_batch("shop", "orders", specs)
        .await
        .expect("batch")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let slow = Recorder::default();
    let handler_runs = Arc::clone(&slow.runs);
    // Each attempt takes 100 ms of virtual time.
    let queues = TaskQueues::new().queue(
        queue.id,
        task_handler_fn(move |task: TaskContext| {
            let runs = Arc::clone(&handler_runs);
            async move {
                runs.lock().expect("runs").push(Run {
                    id: task.id(),
                    attempt: task.attempt(),
                    epoch: task.epoch(),
                    worker: task.partition().worker,
                    payload: String::new(),
                    at: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                TaskOutcome::Done
            }
        }),
        TaskPolicy::default().in_flight(2),
    );
    cluster.add_coordinator();
    let a = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let b = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let halfway = cluster.wait_until(LIMIT, || async { slow.runs().len() >= 60 }).await;
    assert!(halfway);
    let victim: SimWorker = if slow.runs().iter().filter(|r| r.worker == a.id()).count() > 0 { a } else { b };
    cluster.kill(&victim);
    wait_all_finished(&cluster, &client, &ids).await;

    for id in &ids {
        assert_eq!(state(&client, *id).await, TaskState::Done, "task {id}");
    }
    let done: u64 = client
        .task_counts("shop", "orders")
        .await
        .expect("counts")
        .iter()
        .filter(|c| c.state == TaskState::Done)
        .map(|c| c.count)
        .sum();
    assert_eq!(done, 200, "each task completed exactly once in the database");
    let runs = slow.runs();
    let rerun: Vec<&Run> = runs.iter().filter(|r| r.attempt > 1).collect();
    assert!(!rerun.is_empty(), "the killed worker's running tasks ran again");
    for r in rerun {
        let first = runs.iter().find(|f| f.id == r.id && f.attempt == 1).expect("first attempt");
        assert_eq!(first.worker, victim.id(), "only the killed worker's tasks ran again");
        assert!(r.epoch > first.epoch, "the rerun is under a newer epoch");
    }
    cluster.check_invariants().await.expect("one owner at a time");
}

/// The task on its last allowed attempt dies with its worker: when the partition is granted
/// again, the task goes dead, and the tasks behind it run.
#[actix::test]
async fn a_worker_killed_during_a_last_attempt_leaves_a_dead_task_and_the_rest_run() {
    let (mut cluster, queue, client) = cluster(1).await;
    let last = enqueue(&client, TaskSpec::new("hang").max_attempts(1)).await;
    let behind: Vec<TaskId> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(enqueue(&client, TaskSpec::new("ok")).await);
        }
        ids
    };
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default().in_flight(1));
    cluster.add_coordinator();
    let first = cluster.add_task_worker(&[(&queue, 1)], &queues);
    wait_state(&cluster, &client, last, TaskState::Running).await;
    cluster.kill(&first);
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    wait_state(&cluster, &client, last, TaskState::Dead).await;
    wait_all_finished(&cluster, &client, &behind).await;
    let dead = client.task(last).await.expect("task");
    assert!(dead.last_error.as_deref().is_some_and(|e| e.contains("was lost (its owner died")), "{dead:?}");
    assert_eq!(recorder.runs_of(last).len(), 1, "a dead task does not run again");
    for id in behind {
        assert_eq!(state(&client, id).await, TaskState::Done);
    }
}

/// A worker cut off from the store while a task runs: the partition moves, the old owner's
/// completion is refused (fenced by epoch), and the new owner runs the task again.
#[actix::test]
async fn a_stale_owners_completion_is_refused_and_the_new_owner_runs_the_task() {
    let (mut cluster, queue, client) = cluster(1).await;
    let task = enqueue(&client, TaskSpec::new("wait").max_attempts(3)).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let old = cluster.add_task_worker(&[(&queue, 1)], &queues);
    wait_state(&cluster, &client, task, TaskState::Running).await;
    let first = recorder.runs_of(task)[0].clone();
    cluster.cut_off(&old);
    let new = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let moved = cluster
        .wait_until(LIMIT, || async { recorder.runs_of(task).iter().any(|r| r.worker == new.id()) })
        .await;
    assert!(moved, "the new owner ran the task again");
    let stale =
        OwnerFence { queue: queue.id, partition: PartitionId(0), worker: old.id(), epoch: first.epoch };
    assert!(
        matches!(cluster.store().complete_tasks(&stale, &[task]).await, Err(StoreError::Fenced(_))),
        "the old owner's completion is refused"
    );
    recorder.release.notify_waiters();
    wait_state(&cluster, &client, task, TaskState::Done).await;
    let done = client.task(task).await.expect("task");
    assert_eq!(done.claimed_by, Some(new.id()));
    assert!(done.claimed_epoch > Some(first.epoch));
    assert_eq!(recorder.runs_of(task).iter().filter(|r| r.worker == old.id()).count(), 1);
}

/// Bad input to the client gets a clear error and writes nothing.
#[actix::test]
async fn bad_task_input_is_refused_and_changes_nothing() {
    let (cluster, _queue, client) = cluster(4).await;
    support::tasks::bad_input_is_refused(&client, cluster.store().as_ref()).await;
}

/// A cluster of one partition with a coordinator and one worker running its tasks under
/// `policy`, shown running by a first task done.
struct Running {
    cluster: SimCluster,
    client: Client,
    recorder: Recorder,
    worker: SimWorker,
}

async fn running_worker(policy: TaskPolicy) -> Running {
    let (mut cluster, queue, client) = cluster(1).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, policy);
    cluster.add_coordinator();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let canary = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, canary, TaskState::Done).await;
    Running { cluster, client, recorder, worker }
}

/// A claim that commits but whose answer is lost leaves tasks `RUNNING` that nothing runs:
/// the runner recovers them at its own epoch (the lost attempt counts, as for a dead worker)
/// and runs them, each once.
#[actix::test]
async fn the_tasks_of_a_claim_whose_answer_was_lost_are_recovered_and_run() {
    let Running { cluster, client, recorder, worker, .. } = running_worker(TaskPolicy::default()).await;
    worker.link().inject("claim_tasks", CallFault::LoseAnswer, 1);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(enqueue(&client, TaskSpec::new("ok").max_attempts(3)).await);
    }
    wait_all_finished(&cluster, &client, &ids).await;
    for id in ids {
        let task = client.task(id).await.expect("task");
        assert_eq!(task.state, TaskState::Done, "{task:?}");
        assert_eq!(task.attempts, 2, "the lost claim's attempt counts: {task:?}");
        let runs = recorder.runs_of(id);
        assert_eq!(runs.len(), 1, "ran once: {runs:?}");
        assert_eq!(runs[0].attempt, 2);
    }
}

/// A write of outcomes that commits but whose answer is lost is written again before any
/// claim: it can never land on a newer attempt of the same task (here the failed first
/// attempt is due again at once, and its second attempt takes 10 s, longer than the
/// `store_retry` before the write is sent again).
#[actix::test]
async fn an_outcome_write_whose_answer_was_lost_never_lands_on_a_newer_attempt() {
    let Running { cluster, client, recorder, worker, .. } =
        running_worker(TaskPolicy { store_retry: Duration::from_secs(5), ..TaskPolicy::default() }).await;
    worker.link().inject("record_task_outcomes", CallFault::LoseAnswer, 1);
    let id = enqueue(&client, TaskSpec::new("again").max_attempts(5)).await;
    wait_state(&cluster, &client, id, TaskState::Done).await;
    let task = client.task(id).await.expect("task");
    assert_eq!(task.attempts, 2, "{task:?}");
    let runs = recorder.runs_of(id);
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2], "{runs:?}");
}

/// A claim refused as fenced (the partition was being revoked, say) is tried again: the
/// partition does not stop claiming for good.
#[actix::test]
async fn a_refused_claim_is_tried_again() {
    let Running { cluster, client, worker, .. } = running_worker(TaskPolicy::default()).await;
    let fenced = StoreError::Fenced("the partition is being revoked".to_owned());
    worker.link().inject("claim_tasks", CallFault::Refuse(fenced), 3);
    let id = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, id, TaskState::Done).await;
    assert_eq!(client.task(id).await.expect("task").attempts, 1);
}

/// A write of outcomes that outlives `store_timeout` counts as failed without an answer, but
/// the store operation goes on, and the partition's next call (the write sent again) waits
/// until it has ended: the late write cannot land after the task was claimed again.
#[actix::test]
async fn a_write_that_outlives_its_bound_still_ends_before_the_next_call() {
    let Running { cluster, client, recorder, worker, .. } =
        running_worker(TaskPolicy { store_timeout: Duration::from_secs(5), ..TaskPolicy::default() }).await;
    worker.link().inject("record_task_outcomes", CallFault::Delay(Duration::from_secs(15)), 1);
    let id = enqueue(&client, TaskSpec::new("again").max_attempts(5)).await;
    wait_state(&cluster, &client, id, TaskState::Done).await;
    let runs = recorder.runs_of(id);
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2], "{runs:?}");
    assert!(
        runs[1].at - runs[0].at >= Duration::from_secs(15),
        "claimed again only after the late write: {runs:?}"
    );
    assert_eq!(client.task(id).await.expect("task").attempts, 2);
}

/// A claim that outlives `store_timeout` and then claims tasks: the runner recovers them once
/// the claim has ended (their attempt counts) and runs them.
#[actix::test]
async fn a_claim_that_outlives_its_bound_is_recovered_after_it_ends() {
    let Running { cluster, client, recorder, worker, .. } =
        running_worker(TaskPolicy { store_timeout: Duration::from_secs(5), ..TaskPolicy::default() }).await;
    worker.link().inject("claim_tasks", CallFault::Delay(Duration::from_secs(15)), 1);
    let sent = Instant::now();
    let id = enqueue(&client, TaskSpec::new("ok").max_attempts(3)).await;
    wait_state(&cluster, &client, id, TaskState::Done).await;
    let runs = recorder.runs_of(id);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].at - sent >= Duration::from_secs(15), "ran after the late claim ended: {runs:?}");
    assert_eq!(runs[0].attempt, 2, "the late claim's attempt counts");
}

/// Outcomes past the store's limits (delays over ten years) and an in-flight limit over the
/// store's batch limit are cut to the limits, never refused: the other outcomes of the same
/// batch are written, and the partition goes on.
#[actix::test]
async fn outcomes_and_limits_past_the_stores_bounds_are_cut_not_refused() {
    let Running { cluster, client, .. } =
        running_worker(TaskPolicy { in_flight: u32::MAX, ..TaskPolicy::default() }).await;
    let snoozed = enqueue(&client, TaskSpec::new("snooze-forever")).await;
    let retried = enqueue(&client, TaskSpec::new("retry-forever").max_attempts(3)).await;
    let ok = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, ok, TaskState::Done).await;
    let nine_years = chrono::Duration::days(9 * 365);
    for id in [snoozed, retried] {
        let reached = cluster
            .wait_until(LIMIT, || async {
                let task = client.task(id).await.expect("task");
                task.state == TaskState::Pending && task.run_at > task.created_at + nine_years
            })
            .await;
        assert!(reached, "put back about ten years ahead: {:?}", client.task(id).await);
    }
    let later = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, later, TaskState::Done).await;
}

/// A drain cut at `drain_timeout` drops the attempts under way; when the revocation is then
/// cancelled (its target died), the same worker runs the partition again at the same epoch,
/// and recovery at that epoch puts the dropped attempt back (it counts): the task runs again
/// there and completes once.
#[actix::test]
async fn attempts_dropped_by_a_cut_drain_run_again_when_the_partition_runs_again_at_its_epoch() {
    let (mut cluster, queue, client) = cluster(2).await;
    let ids = [
        enqueue(&client, TaskSpec::new("wait").partition(0).max_attempts(5)).await,
        enqueue(&client, TaskSpec::new("wait").partition(1).max_attempts(5)).await,
    ];
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let owner = cluster.add_task_worker(&[(&queue, 1)], &queues);
    for id in ids {
        wait_state(&cluster, &client, id, TaskState::Running).await;
    }
    // A newcomer takes one partition: the owner drains it, its attempt never ends.
    let newcomer = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let revoking = || async {
        let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
        rows.iter().any(|r| r.state == helix_store::AssignmentState::Revoking)
    };
    assert!(cluster.wait_until(LIMIT, revoking).await, "a partition is revoked toward the newcomer");
    cluster.kill(&newcomer);
    // The drain is cut at 10 s and the revocation cancelled: the owner runs it again.
    cluster.advance(Duration::from_secs(15)).await;
    let again =
        cluster.wait_until(LIMIT, || async { ids.iter().any(|id| recorder.runs_of(*id).len() == 2) }).await;
    assert!(again, "the dropped attempt ran again: {:?}", recorder.runs());
    let (rerun, runs) =
        ids.iter().map(|id| (*id, recorder.runs_of(*id))).find(|(_, runs)| runs.len() == 2).expect("rerun");
    assert!(runs.iter().all(|r| r.worker == owner.id()), "{runs:?}");
    assert_eq!(runs[0].epoch, runs[1].epoch, "run again at the same epoch: {runs:?}");
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2]);
    recorder.release.notify_waiters();
    wait_all_finished(&cluster, &client, &ids).await;
    let task = client.task(rerun).await.expect("task");
    assert_eq!((task.state, task.attempts), (TaskState::Done, 2), "{task:?}");
    cluster.check_invariants().await.expect("invariants");
}

/// A write of outcomes still on its way when its runner is dropped (a drain cut at its
/// timeout) lands before the next runner of the partition at the same epoch recovers and
/// claims: the late write cannot fail an attempt claimed after it.
#[actix::test]
async fn a_dropped_runners_late_write_lands_before_the_next_runner_claims() {
    let (mut cluster, queue, client) = cluster(2).await;
    let mut late = Vec::new();
    for partition in 0..2 {
        enqueue(&client, TaskSpec::new("hang").partition(partition).max_attempts(5)).await;
        late.push(enqueue(&client, TaskSpec::new("gated-again").partition(partition).max_attempts(5)).await);
    }
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let owner = cluster.add_task_worker(&[(&queue, 1)], &queues);
    for id in &late {
        wait_state(&cluster, &client, *id, TaskState::Running).await;
    }
    // A newcomer takes one partition and dies: the owner drains it (the hung attempt keeps
    // the drain going until its cut at 10 s) and runs it again at the same epoch.
    let newcomer = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let revoking = || async {
        let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
        rows.iter().any(|r| r.state == helix_store::AssignmentState::Revoking)
    };
    assert!(cluster.wait_until(LIMIT, revoking).await, "a partition is revoked toward the newcomer");
    cluster.kill(&newcomer);
    // Late in the drain, the gated attempts fail; their writes are held up for 8 s on the way,
    // past the drain's cut and the partition's next run at the same epoch.
    cluster.advance(Duration::from_secs(8)).await;
    owner.link().inject("record_task_outcomes", CallFault::Delay(Duration::from_secs(8)), 2);
    recorder.gate.notify_waiters();
    wait_all_finished(&cluster, &client, &late).await;
    for id in late {
        let runs = recorder.runs_of(id);
        assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2], "{runs:?}");
        let task = client.task(id).await.expect("task");
        assert_eq!((task.state, task.attempts), (TaskState::Done, 2), "{task:?}");
    }
}

/// Two tasks put back for later with different delays each run again at their own due time,
/// not at the next poll (here a minute away): a nearer due time does not hide a later one.
#[actix::test]
async fn retries_run_at_their_own_due_times_without_waiting_for_a_poll() {
    let (mut cluster, queue, client) = cluster(1).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default()).poll_interval(Duration::from_secs(60));
    let soon = enqueue(&client, TaskSpec::new("retry-in-5")).await;
    let later = enqueue(&client, TaskSpec::new("retry-in-10")).await;
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    wait_all_finished(&cluster, &client, &[soon, later]).await;
    for (id, delay) in [(soon, 5), (later, 10)] {
        let runs = recorder.runs_of(id);
        assert_eq!(runs.len(), 2, "{runs:?}");
        let waited = runs[1].at - runs[0].at;
        assert!(
            waited >= Duration::from_secs(delay) && waited < Duration::from_secs(delay + 1),
            "task {id} ran again {waited:?} after its failure, not {delay} s: {runs:?}"
        );
    }
}

/// Delayed tasks enqueued by another process (straight into the store, so nothing in this
/// process wakes for them) each run at their own due time: the poll reads only the earliest
/// due time of a partition, so once a partition has run a task it reads its next due time
/// itself rather than leave the tasks behind it to the next poll (here 30 s away).
#[actix::test]
async fn delayed_tasks_from_another_process_run_at_their_own_due_times_not_at_the_next_poll() {
    let (mut cluster, queue, client) = cluster(1).await;
    let recorder = Recorder::default();
    let poll = Duration::from_secs(30);
    let queues = recorder.queues(&queue, TaskPolicy::default()).poll_interval(poll);
    cluster.add_coordinator();
    // The worker's polls run at `started + k × poll`.
    let started = Instant::now();
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    let warm = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, warm, TaskState::Done).await;
    assert!(Instant::now() < started + poll / 2, "the worker took too long to start");

    // Due after the second poll, which sees the first alone; the others fall due before the
    // third.
    let mut due = BTreeMap::new();
    for secs in [35u64, 37, 40, 52] {
        let at = started + Duration::from_secs(secs);
        let task =
            NewTask { run_at: RunAt::After(at - Instant::now()), ..NewTask::new(PartitionId(0), "ok") };
        let ids = cluster.store().enqueue_tasks(queue.id, &[task]).await.expect("enqueue");
        due.insert(ids[0].id, at);
    }
    let ids: Vec<TaskId> = due.keys().copied().collect();
    wait_all_finished(&cluster, &client, &ids).await;
    for run in recorder.runs().iter().filter(|r| due.contains_key(&r.id)) {
        let at = due[&run.id];
        assert!(run.at >= at, "task {} ran {:?} before its run_at", run.id, at - run.at);
        assert!(run.at <= at + Duration::from_millis(50), "task {} ran {:?} late", run.id, run.at - at);
    }
}

/// The same after a claim that came back full: the claim after it finds nothing, and the
/// partition reads its next due time rather than leave the task behind to the next poll.
#[actix::test]
async fn a_delayed_task_behind_a_full_claim_runs_at_its_due_time_not_at_the_next_poll() {
    let (mut cluster, queue, client) = cluster(1).await;
    let recorder = Recorder::default();
    let poll = Duration::from_secs(30);
    let queues = recorder.queues(&queue, TaskPolicy::default().in_flight(2)).poll_interval(poll);
    cluster.add_coordinator();
    let started = Instant::now();
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    let warm = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, warm, TaskState::Done).await;
    assert!(Instant::now() < started + poll / 2, "the worker took too long to start");

    // Two due at 35 s fill a claim of two; the third falls due before the third poll.
    let mut due = BTreeMap::new();
    for secs in [35u64, 35, 45] {
        let at = started + Duration::from_secs(secs);
        let task =
            NewTask { run_at: RunAt::After(at - Instant::now()), ..NewTask::new(PartitionId(0), "ok") };
        let ids = cluster.store().enqueue_tasks(queue.id, &[task]).await.expect("enqueue");
        due.insert(ids[0].id, at);
    }
    let ids: Vec<TaskId> = due.keys().copied().collect();
    wait_all_finished(&cluster, &client, &ids).await;
    for run in recorder.runs().iter().filter(|r| due.contains_key(&r.id)) {
        let at = due[&run.id];
        assert!(run.at >= at, "task {} ran {:?} before its run_at", run.id, at - run.at);
        assert!(run.at <= at + Duration::from_millis(50), "task {} ran {:?} late", run.id, run.at - at);
    }
}

/// A timer that fires before the store's clock reaches the due time (here the poller's sample
/// of the store's clock was held up 2 s on its way, so the worker believes the store 1 s
/// ahead) sends a claim that finds nothing: the partition then reads its next due time and
/// claims again, waiting a step that doubles each time, rather than leave the task to the
/// next poll (30 s away); a few claims, never a busy loop.
#[actix::test]
async fn a_claim_sent_before_the_stores_clock_reached_the_due_time_is_sent_again_not_left_to_the_poll() {
    let (mut cluster, queue, client) = cluster(1).await;
    let recorder = Recorder::default();
    let poll = Duration::from_secs(30);
    let queues = recorder.queues(&queue, TaskPolicy::default()).poll_interval(poll);
    cluster.add_coordinator();
    // The worker's polls run at `started + k × poll`.
    let started = Instant::now();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    worker.link().inject("now", CallFault::Delay(Duration::from_secs(2)), 1);
    let warm = enqueue(&client, TaskSpec::new("ok")).await;
    wait_state(&cluster, &client, warm, TaskState::Done).await;
    assert!(Instant::now() < started + poll / 2, "the worker took too long to start");

    // The second poll (at 30 s) finds the first; the second comes by reading ahead.
    let mut due = BTreeMap::new();
    for secs in [35u64, 45] {
        let at = started + Duration::from_secs(secs);
        let task =
            NewTask { run_at: RunAt::After(at - Instant::now()), ..NewTask::new(PartitionId(0), "ok") };
        let ids = cluster.store().enqueue_tasks(queue.id, &[task]).await.expect("enqueue");
        due.insert(ids[0].id, at);
    }
    let ids: Vec<TaskId> = due.keys().copied().collect();
    let claims = worker.link().calls("claim_tasks");
    wait_all_finished(&cluster, &client, &ids).await;
    for run in recorder.runs().iter().filter(|r| due.contains_key(&r.id)) {
        let at = due[&run.id];
        assert!(run.at >= at, "task {} ran {:?} before its run_at", run.id, at - run.at);
        assert!(run.at <= at + Duration::from_secs(1), "task {} ran {:?} late", run.id, run.at - at);
    }
    let claims = worker.link().calls("claim_tasks") - claims;
    assert!(claims <= 2 * 12, "{claims} claims for two tasks");
}

/// A store that keeps refusing the recovery a runner starts with (down, or out of pooled
/// connections) delays the partition's tasks but never fails the partition: the recovery is
/// tried again until it succeeds, and the tasks then run.
#[actix::test]
async fn a_failing_recovery_delays_the_partition_but_never_fails_it() {
    let (mut cluster, queue, client) = cluster(1).await;
    let id = enqueue(&client, TaskSpec::new("ok")).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let down = StoreError::Unavailable("no database connection within the connect timeout".to_owned());
    worker.link().inject("recover_partition_tasks", CallFault::Refuse(down), 12);
    wait_state(&cluster, &client, id, TaskState::Done).await;
    let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
    assert_eq!(rows[0].state, helix_store::AssignmentState::Assigned, "{rows:?}");
    assert_eq!(rows[0].owner, Some(worker.id()));
    assert_eq!(client.task(id).await.expect("task").attempts, 1);
}

/// Enqueues four tasks on each of the first `partitions` partitions; their ids.
async fn four_per_partition(client: &Client, partitions: u32) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for partition in 0..partitions {
        for _ in 0..4 {
            ids.push(enqueue(client, TaskSpec::new("ok").partition(partition)).await);
        }
    }
    ids
}

/// The task operations of all a worker's partitions use the store at most
/// `store_concurrency` at once, leaving the rest of its pool to the session's heartbeats.
#[actix::test]
async fn a_workers_task_operations_use_the_store_at_most_store_concurrency_at_once() {
    let (mut cluster, queue, client) = cluster(8).await;
    let ids = four_per_partition(&client, 8).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default()).store_concurrency(2);
    cluster.add_coordinator();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    worker.link().inject("claim_tasks", CallFault::Delay(Duration::from_secs(1)), 16);
    wait_all_finished(&cluster, &client, &ids).await;
    for method in ["recover_partition_tasks", "claim_tasks", "record_task_outcomes"] {
        let peak = worker.link().peak_calls(method);
        assert!((1..=2).contains(&peak), "{method}: {peak} calls at once");
    }
}

/// How many store calls wrote outcomes through `worker`'s link, by any write method.
fn outcome_writes(worker: &SimWorker) -> usize {
    ["record_task_outcomes", "complete_tasks", "fail_tasks", "retry_tasks_later"]
        .into_iter()
        .map(|method| worker.link().calls(method))
        .sum()
}

/// The outcomes of many partitions of one worker go to the store together: far fewer
/// writes than partitions, each write of one worker at a time, and every task done once.
#[actix::test]
async fn many_partitions_outcomes_are_written_in_few_store_calls() {
    let (mut cluster, queue, client) = cluster(32).await;
    let ids = four_per_partition(&client, 32).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    wait_all_finished(&cluster, &client, &ids).await;
    let writes = outcome_writes(&worker);
    assert!(writes <= 8, "{writes} writes for 32 partitions");
    assert_eq!(worker.link().peak_calls("record_task_outcomes"), 1, "one coalesced write at a time");
    assert_eq!(recorder.runs().len(), ids.len(), "each task ran once");
}

/// A worker of `partitions` partitions with one `payload` task in each, enqueued before it
/// starts (so that they run and finish together), under `policy`; faults of its link are
/// injected by `faults` before it starts.
async fn together(
    partitions: u32,
    payload: &str,
    policy: TaskPolicy,
    faults: impl FnOnce(&SimWorker),
) -> (SimCluster, Client, Recorder, SimWorker, Vec<TaskId>) {
    let (mut cluster, queue, client) = cluster(u64::from(partitions)).await;
    let mut ids = Vec::new();
    for partition in 0..partitions {
        ids.push(enqueue(&client, TaskSpec::new(payload).partition(partition).max_attempts(5)).await);
    }
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, policy);
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    faults(&worker);
    cluster.add_coordinator();
    (cluster, client, recorder, worker, ids)
}

/// A coalesced write whose answer is lost (it committed) is written again by every partition
/// in it before any of them claims: the rewrite skips what was written, and no outcome lands
/// on a newer attempt (each failed first attempt is due again at once).
#[actix::test]
async fn a_lost_answer_of_a_coalesced_write_is_written_again_by_each_of_its_partitions() {
    let policy = TaskPolicy { store_retry: Duration::from_secs(5), ..TaskPolicy::default() };
    let (cluster, client, recorder, worker, ids) = together(8, "again", policy, |worker| {
        worker.link().inject("record_task_outcomes", CallFault::LoseAnswer, 1);
    })
    .await;
    wait_all_finished(&cluster, &client, &ids).await;
    for id in &ids {
        let runs = recorder.runs_of(*id);
        assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), [1, 2], "{runs:?}");
        let task = client.task(*id).await.expect("task");
        assert_eq!((task.state, task.attempts), (TaskState::Done, 2), "{task:?}");
        assert!(
            runs[1].at - runs[0].at >= Duration::from_secs(5),
            "claimed again only after the rewrite: {runs:?}"
        );
    }
    assert!(outcome_writes(&worker) <= 4, "{} writes", outcome_writes(&worker));
}

/// Eight partitions' outcomes on one worker whose first `failed` coalesced writes meet
/// `fault`: every task still completes once, on its first attempt, and the writes were sent
/// again; a task enqueued afterwards completes too (the worker's writes go on).
async fn failed_coalesced_writes_are_written_again(fault: CallFault, failed: usize) {
    let (cluster, client, recorder, worker, ids) = together(8, "ok", TaskPolicy::default(), |worker| {
        worker.link().inject("record_task_outcomes", fault, failed);
    })
    .await;
    wait_all_finished(&cluster, &client, &ids).await;
    for id in &ids {
        let task = client.task(*id).await.expect("task");
        assert_eq!((task.state, task.attempts), (TaskState::Done, 1), "{task:?}");
        assert_eq!(recorder.runs_of(*id).len(), 1);
    }
    assert!(worker.link().calls("record_task_outcomes") > failed, "the failed writes were sent again");
    let later = enqueue(&client, TaskSpec::new("ok").partition(3)).await;
    wait_state(&cluster, &client, later, TaskState::Done).await;
}

/// A coalesced write refused as a whole (a transient failure) is a failure for every
/// partition in it, never a silent success: each writes its outcomes again, and every task
/// completes once.
#[actix::test]
async fn a_refused_coalesced_write_is_written_again_by_each_of_its_partitions() {
    let down = StoreError::Transient("deadlock found when trying to get lock".to_owned());
    failed_coalesced_writes_are_written_again(CallFault::Refuse(down), 2).await;
}

/// A store that panics while it records a coalesced write fails that write for each of its
/// partitions, which write again; the worker's writes go on.
#[actix::test]
async fn a_coalesced_write_that_panics_is_written_again_and_the_writes_go_on() {
    failed_coalesced_writes_are_written_again(CallFault::Panic, 1).await;
}

/// A coalesced write that never ends stops the partitions in it on this worker (their next
/// calls wait for it), but not the worker's other partitions: past `store_timeout` the next
/// coalesced write goes.
#[actix::test]
async fn a_hung_coalesced_write_stops_only_its_own_partitions() {
    let policy = TaskPolicy { store_timeout: Duration::from_secs(5), ..TaskPolicy::default() };
    let (mut cluster, queue, client) = cluster(2).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, policy);
    cluster.add_coordinator();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let first = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    wait_state(&cluster, &client, first, TaskState::Done).await;
    // Partition 0's write hangs.
    worker.link().inject("record_task_outcomes", CallFault::Hang, 1);
    let stuck = enqueue(&client, TaskSpec::new("ok").partition(0)).await;
    assert!(
        cluster.wait_until(LIMIT, || async { !recorder.runs_of(stuck).is_empty() }).await,
        "the task ran"
    );
    let behind = enqueue(&client, TaskSpec::new("ok").partition(0)).await;
    let other = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    wait_state(&cluster, &client, other, TaskState::Done).await;
    cluster.advance(Duration::from_secs(30)).await;
    assert_eq!(state(&client, stuck).await, TaskState::Running, "its write never reached the store");
    assert_eq!(state(&client, behind).await, TaskState::Pending, "no claim while the write is owed");
    let late = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    wait_state(&cluster, &client, late, TaskState::Done).await;
}

/// In one coalesced write, a partition whose fence no longer holds (it was released behind
/// the worker's back) is refused alone: its runner ends and writes nothing, while the other
/// partition's outcome commits and that partition goes on. The released partition's task runs
/// again under its next grant.
#[actix::test]
async fn a_fenced_partition_in_a_coalesced_write_ends_only_its_own_runner() {
    let (mut cluster, queue, client) = cluster(2).await;
    let lost = enqueue(&client, TaskSpec::new("wait").partition(0).max_attempts(5)).await;
    let kept = enqueue(&client, TaskSpec::new("wait").partition(1).max_attempts(5)).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default());
    cluster.add_coordinator();
    let worker = cluster.add_task_worker(&[(&queue, 1)], &queues);
    for id in [lost, kept] {
        wait_state(&cluster, &client, id, TaskState::Running).await;
    }
    let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
    let epoch = rows[0].epoch;
    cluster.store().release_partition(queue.id, PartitionId(0), worker.id(), epoch).await.expect("release");
    let writes = worker.link().calls("record_task_outcomes");
    recorder.release.notify_waiters();
    wait_state(&cluster, &client, kept, TaskState::Done).await;
    assert_eq!(worker.link().calls("record_task_outcomes"), writes + 1, "both outcomes in one write");
    let task = client.task(lost).await.expect("task");
    assert_eq!((task.state, task.claimed_epoch), (TaskState::Running, Some(epoch)), "{task:?}");
    let next = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    wait_state(&cluster, &client, next, TaskState::Done).await;
    // Granted again, partition 0 recovers the lost task and runs it again.
    let again = cluster.wait_until(LIMIT, || async { recorder.runs_of(lost).len() == 2 }).await;
    assert!(again, "{:?}", recorder.runs_of(lost));
    recorder.release.notify_waiters();
    wait_state(&cluster, &client, lost, TaskState::Done).await;
    let task = client.task(lost).await.expect("task");
    assert_eq!(task.attempts, 2, "{task:?}");
    assert!(task.claimed_epoch > Some(epoch), "{task:?}");
}

/// A task enqueued through a client of this process wakes its partition's runner here: due
/// at once, it runs at once rather than at the worker's next poll (here a minute away);
/// delayed, it runs at its due time, not before.
#[actix::test]
async fn a_task_enqueued_in_process_runs_at_once_not_at_the_next_poll() {
    let (mut cluster, queue, client) = cluster(2).await;
    let recorder = Recorder::default();
    let queues = recorder.queues(&queue, TaskPolicy::default()).poll_interval(Duration::from_secs(60));
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    let first = enqueue(&client, TaskSpec::new("ok").partition(0)).await;
    let second = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    wait_state(&cluster, &client, first, TaskState::Done).await;
    wait_state(&cluster, &client, second, TaskState::Done).await;
    cluster.advance(Duration::from_secs(5)).await;

    let enqueued_at = Instant::now();
    let now = enqueue(&client, TaskSpec::new("ok").partition(1)).await;
    let later = enqueue(&client, TaskSpec::new("ok").partition(0).delay(Duration::from_secs(2))).await;
    wait_state(&cluster, &client, now, TaskState::Done).await;
    let ran = recorder.runs_of(now)[0].at - enqueued_at;
    assert!(ran <= Duration::from_millis(50), "a task due at once ran {ran:?} after its enqueue");
    wait_state(&cluster, &client, later, TaskState::Done).await;
    let ran = recorder.runs_of(later)[0].at - enqueued_at;
    assert!(
        (Duration::from_secs(2)..=Duration::from_millis(2_050)).contains(&ran),
        "a task delayed 2 s ran {ran:?} after its enqueue"
    );

    // An operator's retry of a dead task wakes its partition too.
    let dead = enqueue(&client, TaskSpec::new("dead").partition(1)).await;
    wait_state(&cluster, &client, dead, TaskState::Dead).await;
    cluster.advance(Duration::from_secs(5)).await;
    let retried_at = Instant::now();
    client.retry_task(dead).await.expect("retry");
    cluster
        .wait_until(LIMIT, || async { recorder.runs_of(dead).len() == 2 })
        .await
        .then_some(())
        .expect("the retried task ran again");
    let ran = recorder.runs_of(dead)[1].at - retried_at;
    assert!(ran <= Duration::from_millis(50), "a retried task ran {ran:?} after the retry");
}

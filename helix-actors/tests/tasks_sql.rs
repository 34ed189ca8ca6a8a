//! Tasks on real databases, MariaDB and SQLite, with the testing kit's cluster on real time:
//! order within a partition, a killed worker's tasks run again and each completes once, a
//! task lost on its last attempt goes dead while the tasks behind it run, bad input refused.
//! Waits are for conditions with generous deadlines, never assertions on how long things took.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_actors::client::{Client, TaskSpec};
use helix_actors::node::{CoordinatorNode, Worker};
use helix_actors::tasks::{TaskContext, TaskOutcome, TaskPolicy, TaskQueues, task_handler_fn};
use helix_actors::testing::{SimCluster, fast_config};
use helix_core::{Epoch, PartitionId, WorkerId};
use helix_store::{Store, TaskId, TaskState};
use support::{mysql, sqlite, wait_for};

/// Generous against a busy two-core machine; only a real failure exceeds it.
const DEADLINE: Duration = Duration::from_secs(120);

/// One attempt: task, attempt, partition, epoch, worker.
type Attempt = (TaskId, u32, PartitionId, Epoch, WorkerId);

/// A handler that records each attempt, then sleeps `work` and answers done; `hang` payloads
/// never answer.
fn recording(
    queue: helix_core::QueueId,
    work: Duration,
    policy: TaskPolicy,
) -> (TaskQueues, Arc<Mutex<Vec<Attempt>>>) {
    let runs: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let seen = Arc::clone(&runs);
    let queues = TaskQueues::new().poll_interval(Duration::from_millis(200)).queue(
        queue,
        task_handler_fn(move |task: TaskContext| {
            let seen = Arc::clone(&seen);
            async move {
                let p = task.partition();
                seen.lock().expect("runs").push((task.id(), task.attempt(), p.partition, p.epoch, p.worker));
                if task.payload() == b"hang" {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(work).await;
                TaskOutcome::Done
            }
        }),
        policy,
    );
    (queues, runs)
}

async fn all_finished(client: &Client, ids: &[TaskId]) -> bool {
    let mut finished = 0;
    for id in ids {
        if client.task(*id).await.is_ok_and(|t| t.state.is_finished()) {
            finished += 1;
        }
    }
    finished == ids.len()
}

async fn kill_midway_each_task_completes_once(store: Arc<dyn Store>) {
    let mut cluster = SimCluster::with_store(Arc::clone(&store), fast_config()).expect("cluster");
    let queue = cluster.create_queue("shop", "orders", 8).await.expect("queue");
    let client = Client::new(store);
    let specs: Vec<TaskSpec> = (0..300).map(|i| TaskSpec::new("ok").key(format!("order-{i}"))).collect();
    let ids: Vec<TaskId> = client
        .enqueue_batch("shop", "orders", specs)
        .await
        .expect("batch")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let (queues, runs) = recording(queue.id, Duration::from_millis(5), TaskPolicy::default().in_flight(1));
    cluster.add_coordinator();
    let a = cluster.add_task_worker(&[(&queue, 1)], &queues);
    let b = cluster.add_task_worker(&[(&queue, 1)], &queues);
    assert!(wait_for(DEADLINE, || async { runs.lock().expect("runs").len() >= 100 }).await, "tasks started");
    let victim = if runs.lock().expect("runs").iter().any(|r| r.4 == a.id()) { a } else { b };
    cluster.kill(&victim);
    assert!(wait_for(DEADLINE, || async { all_finished(&client, &ids).await }).await, "every task finished");

    for id in &ids {
        assert_eq!(client.task(*id).await.expect("task").state, TaskState::Done, "task {id}");
    }
    let done: u64 = client
        .task_counts("shop", "orders")
        .await
        .expect("counts")
        .iter()
        .filter(|c| c.state == TaskState::Done)
        .map(|c| c.count)
        .sum();
    assert_eq!(done, 300, "each task completed exactly once in the database");
    // Per partition, first attempts come in claim order (equal priority and run_at: by id);
    // a task run again after the kill keeps its place.
    let runs = runs.lock().expect("runs").clone();
    let mut firsts: BTreeMap<PartitionId, Vec<TaskId>> = BTreeMap::new();
    for (id, attempt, partition, _, _) in &runs {
        if *attempt == 1 {
            firsts.entry(*partition).or_default().push(*id);
        }
    }
    for (partition, order) in firsts {
        assert!(order.windows(2).all(|w| w[0] < w[1]), "partition {partition} ran out of order: {order:?}");
    }
    // A task runs again only when the killed worker had claimed it (its attempt may have
    // been lost before the handler even started), and under a newer epoch elsewhere.
    let reruns: Vec<&Attempt> = runs.iter().filter(|r| r.1 > 1).collect();
    assert!(!reruns.is_empty(), "the killed worker's claimed tasks ran again");
    for (id, _, partition, epoch, worker) in reruns {
        assert_ne!(*worker, victim.id(), "task {id} ran again on the killed worker");
        for earlier in runs.iter().filter(|r| r.0 == *id && r.4 != *worker) {
            assert_eq!(earlier.4, victim.id(), "task {id} ran on a live worker, then again");
            assert!(*epoch > earlier.3, "task {id} of partition {partition} ran again under a newer epoch");
        }
    }
    cluster.check_invariants().await.expect("one owner at a time");
}

async fn a_lost_last_attempt_goes_dead_and_the_rest_run(store: Arc<dyn Store>) {
    let mut cluster = SimCluster::with_store(Arc::clone(&store), fast_config()).expect("cluster");
    let queue = cluster.create_queue("shop", "orders", 1).await.expect("queue");
    let client = Client::new(store);
    let last =
        client.enqueue("shop", "orders", TaskSpec::new("hang").max_attempts(1)).await.expect("enqueue").id;
    let behind: Vec<TaskId> = client
        .enqueue_batch("shop", "orders", (0..3).map(|_| TaskSpec::new("ok")).collect())
        .await
        .expect("batch")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let (queues, runs) = recording(queue.id, Duration::ZERO, TaskPolicy::default().in_flight(1));
    cluster.add_coordinator();
    let first = cluster.add_task_worker(&[(&queue, 1)], &queues);
    assert!(wait_for(DEADLINE, || async { !runs.lock().expect("runs").is_empty() }).await);
    cluster.kill(&first);
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    assert!(
        wait_for(DEADLINE, || async { all_finished(&client, &behind).await }).await,
        "the tasks behind ran"
    );
    let dead = client.task(last).await.expect("task");
    assert_eq!(dead.state, TaskState::Dead);
    assert!(dead.last_error.as_deref().is_some_and(|e| e.contains("was lost (its owner died")), "{dead:?}");
    assert_eq!(runs.lock().expect("runs").iter().filter(|r| r.0 == last).count(), 1);
}

/// The worker builder's own path (two arbiters, the store actor) on a real database.
async fn a_worker_built_with_tasks_runs_them(store: Arc<dyn Store>) {
    let client = Client::new(Arc::clone(&store));
    let queue = client.ensure_queue("shop", "orders", 4).await.expect("queue");
    let runs: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let coordinator = CoordinatorNode::new(Arc::clone(&store), fast_config()).start().expect("coordinator");
    let seen = Arc::clone(&runs);
    let worker = Worker::builder(Arc::clone(&store), fast_config())
        .task_poll_interval(Duration::from_millis(200))
        .tasks(
            queue.id,
            task_handler_fn(move |task: TaskContext| {
                let seen = Arc::clone(&seen);
                async move {
                    let p = task.partition();
                    seen.lock().expect("runs").push((
                        task.id(),
                        task.attempt(),
                        p.partition,
                        p.epoch,
                        p.worker,
                    ));
                    TaskOutcome::Done
                }
            }),
            TaskPolicy::default(),
        )
        .start()
        .await
        .expect("worker");
    let ids: Vec<TaskId> = client
        .enqueue_batch("shop", "orders", (0..40).map(|i| TaskSpec::new("ok").key(format!("k{i}"))).collect())
        .await
        .expect("batch")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(wait_for(DEADLINE, || async { all_finished(&client, &ids).await }).await, "every task ran");
    assert!(runs.lock().expect("runs").iter().all(|r| r.4 == worker.id()));
    worker.leave().await.expect("leave");
    coordinator.stop().await;
}

async fn bad_input(store: Arc<dyn Store>) {
    let client = Client::new(Arc::clone(&store));
    client.ensure_queue("shop", "orders", 4).await.expect("queue");
    support::tasks::bad_input_is_refused(&client, store.as_ref()).await;
}

#[actix::test]
async fn mysql_kill_midway_each_task_completes_once() {
    let (store, db) = mysql().await;
    kill_midway_each_task_completes_once(store).await;
    db.drop_database().await;
}

#[actix::test]
async fn sqlite_kill_midway_each_task_completes_once() {
    let dir = tempfile::tempdir().expect("dir");
    kill_midway_each_task_completes_once(sqlite(&dir).await).await;
}

#[actix::test]
async fn mysql_a_lost_last_attempt_goes_dead_and_the_rest_run() {
    let (store, db) = mysql().await;
    a_lost_last_attempt_goes_dead_and_the_rest_run(store).await;
    db.drop_database().await;
}

#[actix::test]
async fn sqlite_a_lost_last_attempt_goes_dead_and_the_rest_run() {
    let dir = tempfile::tempdir().expect("dir");
    a_lost_last_attempt_goes_dead_and_the_rest_run(sqlite(&dir).await).await;
}

#[actix::test]
async fn mysql_a_worker_built_with_tasks_runs_them() {
    let (store, db) = mysql().await;
    a_worker_built_with_tasks_runs_them(store).await;
    db.drop_database().await;
}

#[actix::test]
async fn sqlite_a_worker_built_with_tasks_runs_them() {
    let dir = tempfile::tempdir().expect("dir");
    a_worker_built_with_tasks_runs_them(sqlite(&dir).await).await;
}

#[actix::test]
async fn mysql_bad_task_input_is_refused() {
    let (store, db) = mysql().await;
    bad_input(store).await;
    db.drop_database().await;
}

#[actix::test]
async fn sqlite_bad_task_input_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    bad_input(sqlite(&dir).await).await;
}

/// Large in-flight limits: claims and outcome batches of hundreds of tasks per partition.
async fn large_batches_drain_the_backlog(store: Arc<dyn Store>) {
    let mut cluster = SimCluster::with_store(Arc::clone(&store), fast_config()).expect("cluster");
    let queue = cluster.create_queue("shop", "orders", 2).await.expect("queue");
    let client = Client::new(store);
    let ids: Vec<TaskId> = client
        .enqueue_batch(
            "shop",
            "orders",
            (0..3_000).map(|i| TaskSpec::new("ok").key(format!("k{i}"))).collect(),
        )
        .await
        .expect("batch")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let (queues, runs) = recording(queue.id, Duration::ZERO, TaskPolicy::default().in_flight(512));
    cluster.add_coordinator();
    cluster.add_task_worker(&[(&queue, 1)], &queues);
    assert!(wait_for(DEADLINE, || async { all_finished(&client, &ids).await }).await, "every task finished");
    assert_eq!(runs.lock().expect("runs").len(), 3_000, "each task ran once");
}

#[actix::test]
async fn mysql_large_batches_drain_the_backlog() {
    let (store, db) = mysql().await;
    large_batches_drain_the_backlog(store).await;
    db.drop_database().await;
}

#[actix::test]
async fn sqlite_large_batches_drain_the_backlog() {
    let dir = tempfile::tempdir().expect("dir");
    large_batches_drain_the_backlog(sqlite(&dir).await).await;
}

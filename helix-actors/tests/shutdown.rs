//! A system torn down with its actors still running (dropped, or unwound by a panic), on the
//! in-memory store and on MariaDB with tasks in flight: nothing else panics on the way down,
//! nor when the store is dropped after the system is gone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helix_actors::TokioClock;
use helix_actors::client::{Client, TaskSpec};
use helix_actors::tasks::{TaskOutcome, TaskPolicy, TaskQueues, task_handler_fn};
use helix_actors::testing::{SimCluster, noop_handler};
use helix_core::ClusterConfig;
use helix_store::{MemStore, Store};

/// The payload of the panic the test raises on purpose.
const RAISED: &str = "raised by the test";

/// Serialises the tests of this file: each swaps the process's panic hook.
static HOOK: Mutex<()> = Mutex::new(());

/// Runs a coordinator, a worker and a task worker with tasks that keep running on `store`
/// until both workers run their partitions; then ends the system's `block_on` (by panicking
/// when `panic_inside`), drops the system, then the store. Answers how many panics there
/// were besides the one it raised.
fn tear_down(store: Arc<dyn Store>, panic_inside: bool) -> usize {
    let _serial = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&panics);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&RAISED) {
            counted.fetch_add(1, Ordering::SeqCst);
            eprintln!("unexpected panic: {info}");
        }
    }));
    let system = actix::System::new();
    let cluster_store = Arc::clone(&store);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        system.block_on(async move {
            let mut cluster =
                SimCluster::with_store(cluster_store, ClusterConfig::default()).expect("cluster");
            let plain = cluster.create_queue("domain_order", "plain", 4).await.expect("queue");
            let tasked = cluster.create_queue("domain_order", "tasked", 4).await.expect("queue");
            let client = Client::new(Arc::clone(cluster.store()));
            let specs = (0..200).map(|i| TaskSpec::new(format!("task {i}"))).collect();
            client.enqueue_batch("domain_order", "tasked", specs).await.expect("enqueue");
            let slow = task_handler_fn(|_| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                TaskOutcome::Done
            });
            let tasks = TaskQueues::new().queue(tasked.id, slow, TaskPolicy::default());
            cluster.add_coordinator();
            let worker = cluster.add_worker(&[(&plain, 1)], noop_handler());
            let task_worker = cluster.add_task_worker(&[(&tasked, 1)], &tasks);
            let running = cluster
                .wait_until(Duration::from_secs(60), || async {
                    worker.status().await.is_ok_and(|s| s.partitions.len() == 4)
                        && task_worker.status().await.is_ok_and(|s| s.partitions.len() == 4)
                })
                .await;
            assert!(running, "the workers run their partitions");
            if panic_inside {
                std::panic::panic_any(RAISED);
            }
            (cluster, client)
        })
    }));
    drop(system);
    drop(outcome);
    drop(store);
    drop(std::panic::take_hook());
    std::panic::set_hook(previous);
    panics.load(Ordering::SeqCst)
}

fn mem() -> Arc<dyn Store> {
    Arc::new(MemStore::new(Arc::new(TokioClock::new())))
}

/// Runs `test` on a MySQL store on a scratch database, made and dropped on a runtime of
/// their own.
fn on_mysql(test: impl FnOnce(Arc<dyn Store>) -> usize) -> usize {
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (store, database) = runtime().block_on(support::mysql());
    let panics = test(store);
    runtime().block_on(database.drop_database());
    panics
}

#[test]
fn a_system_dropped_with_its_actors_running_panics_nowhere() {
    assert_eq!(tear_down(mem(), false), 0);
}

#[test]
fn a_system_unwound_by_a_panic_with_its_actors_running_panics_no_further() {
    assert_eq!(tear_down(mem(), true), 0);
}

#[test]
fn on_mysql_a_system_dropped_with_its_actors_running_then_its_store_panics_nowhere() {
    assert_eq!(on_mysql(|store| tear_down(store, false)), 0);
}

#[test]
fn on_mysql_a_system_unwound_by_a_panic_then_its_store_dropped_panics_no_further() {
    assert_eq!(on_mysql(|store| tear_down(store, true)), 0);
}

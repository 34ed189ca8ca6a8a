//! The core cluster scenarios on real databases, MariaDB and SQLite, with the testing kit's
//! cluster on real time: real coordinators and real worker sessions in one process, fast
//! timings, and waits for conditions with generous deadlines (never an assertion on how long
//! something took).

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use helix_actors::testing::{SimCluster, fast_config, noop_handler};
use helix_core::WorkerId;
use helix_store::{QueueRecord, Store};
use support::{mysql, sqlite, wait_for};

/// Generous against a busy two-core machine; only a real failure exceeds it.
const DEADLINE: Duration = Duration::from_secs(60);

async fn sorted_loads(cluster: &SimCluster, queue: &QueueRecord) -> Vec<usize> {
    let mut loads: Vec<usize> = cluster.loads(queue).await.expect("loads").into_values().collect();
    loads.sort_unstable();
    loads
}

/// Waits until `queue` has settled (owned once by live workers that run it) at these loads.
async fn settle(cluster: &SimCluster, queue: &QueueRecord, expected: &[usize]) {
    let settled = wait_for(DEADLINE, || async {
        cluster.check_settled(queue).await.is_ok() && sorted_loads(cluster, queue).await == expected
    })
    .await;
    assert!(
        settled,
        "not settled at {expected:?}: {:?}, {:?}",
        sorted_loads(cluster, queue).await,
        cluster.check_settled(queue).await
    );
}

/// 50 partitions over three workers (two coordinator nodes), a join that moves only the
/// newcomer's share, and a kill that moves only the victim's partitions; the invariants hold
/// throughout.
async fn settle_join_kill(store: Arc<dyn Store>) {
    let mut cluster = SimCluster::with_store(store, fast_config()).expect("cluster");
    let queue = cluster.create_queue("domain_order", "food_order", 50).await.expect("queue");
    cluster.add_coordinator();
    cluster.add_coordinator();
    let workers: Vec<_> = (0..3).map(|_| cluster.add_worker(&[(&queue, 1)], noop_handler())).collect();
    settle(&cluster, &queue, &[16, 17, 17]).await;
    cluster.check_invariants().await.expect("invariants after settling");

    let before = cluster.partition_map(&queue).await.expect("map");
    let newcomer = cluster.add_worker(&[(&queue, 1)], noop_handler());
    settle(&cluster, &queue, &[12, 12, 13, 13]).await;
    let after = cluster.partition_map(&queue).await.expect("map");
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(_, a)| *a).collect();
    assert!(matches!(moved.len(), 12 | 13), "{} moved", moved.len());
    assert!(moved.iter().all(|a| *a == Some(newcomer.id())), "every move went to the newcomer");
    cluster.check_invariants().await.expect("invariants after the join");

    let victim = workers[0].id();
    cluster.kill(&workers[0]);
    let gone = || async {
        !cluster.partition_map(&queue).await.expect("map").contains(&Some(victim))
            && cluster.check_settled(&queue).await.is_ok()
    };
    assert!(wait_for(DEADLINE, gone).await, "{:?}", cluster.check_settled(&queue).await);
    assert_eq!(sorted_loads(&cluster, &queue).await, [16, 17, 17]);
    let last = cluster.partition_map(&queue).await.expect("map");
    let survivors: BTreeSet<WorkerId> = after.iter().flatten().copied().filter(|w| *w != victim).collect();
    for (p, (b, a)) in after.iter().zip(&last).enumerate() {
        if b.is_some_and(|b| survivors.contains(&b)) {
            assert_eq!(b, a, "survivor's partition {p} moved");
        }
    }
    cluster.check_invariants().await.expect("invariants after the kill");
}

#[actix::test]
async fn mysql_worker_sessions_settle_join_kill() {
    let (store, database) = mysql().await;
    settle_join_kill(store).await;
    database.drop_database().await;
}

#[actix::test]
async fn sqlite_worker_sessions_settle_join_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    settle_join_kill(sqlite(&dir).await).await;
}

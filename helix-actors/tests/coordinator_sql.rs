//! The coordinator scenarios on real databases, MariaDB and SQLite, with several in-process
//! nodes on real time: fast timings, and waits for conditions with generous deadlines (never
//! an assertion on how long something took).

mod support;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use helix_actors::coordinator::StrategyAllocator;
use helix_actors::testing::{CutOffStore, fast_config};
use helix_core::ClusterName;
use helix_store::Store;
use support::{Harness, mysql, sqlite, wait_for};

/// Generous against a busy two-core machine; only a real failure exceeds it.
const DEADLINE: Duration = Duration::from_secs(60);

/// 50 partitions over three workers, a join that moves only the newcomer's share, and a kill
/// that moves only the victim's partitions.
async fn settle_join_kill(store: Arc<dyn Store>) {
    let h = Harness::new(store, 50, fast_config()).await;
    let _coordinators: Vec<_> =
        (0..2).map(|_| h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient())).collect();
    let mut workers: Vec<_> = (0..3).map(|_| h.worker()).collect();
    assert!(wait_for(DEADLINE, || h.settled(&[16, 17, 17])).await, "{:?}", h.loads().await);

    let before = h.owners().await;
    let (newcomer, _task) = h.worker();
    assert!(wait_for(DEADLINE, || h.settled(&[12, 12, 13, 13])).await, "{:?}", h.loads().await);
    let after = h.owners().await;
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(_, a)| *a).collect();
    assert!(matches!(moved.len(), 12 | 13), "{} moved", moved.len());
    assert!(moved.iter().all(|a| *a == Some(newcomer)), "every move went to the newcomer");

    let (victim, task) = workers.remove(0);
    task.abort();
    let victim_gone =
        || async { !h.owners().await.contains(&Some(victim)) && h.settled(&[16, 17, 17]).await };
    assert!(wait_for(DEADLINE, victim_gone).await, "{:?}", h.loads().await);
    for (b, a) in after.iter().zip(h.owners().await) {
        if *b != Some(victim) {
            assert_eq!(*b, a, "a survivor's partition moved");
        }
    }
}

/// The leader loses its link to the database; the other node takes over under term 2 and
/// keeps coordinating.
async fn takeover(store: Arc<dyn Store>) {
    let h = Harness::new(store, 20, fast_config()).await;
    let link = CutOffStore::new(Arc::clone(&h.store));
    let _old = h.coordinator(Arc::new(link.clone()), StrategyAllocator.start().recipient());
    let _workers: Vec<_> = (0..2).map(|_| h.worker()).collect();
    assert!(wait_for(DEADLINE, || h.settled(&[10, 10])).await, "{:?}", h.loads().await);
    let _new = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    link.stall();
    let store = Arc::clone(&h.store);
    let term_two = move || {
        let store = Arc::clone(&store);
        async move {
            store.get_lease(&ClusterName::default()).await.expect("lease").is_some_and(|l| l.term.0 == 2)
        }
    };
    assert!(wait_for(DEADLINE, term_two).await, "the other node took over");
    let (_, _third) = h.worker();
    assert!(wait_for(DEADLINE, || h.settled(&[6, 7, 7])).await, "{:?}", h.loads().await);
}

#[actix::test]
async fn mysql_settle_join_kill() {
    let (store, database) = mysql().await;
    settle_join_kill(store).await;
    database.drop_database().await;
}

#[actix::test]
async fn mysql_takeover() {
    let (store, database) = mysql().await;
    takeover(store).await;
    database.drop_database().await;
}

#[actix::test]
async fn sqlite_settle_join_kill() {
    let dir = tempfile::tempdir().expect("temp dir");
    settle_join_kill(sqlite(&dir).await).await;
}

#[actix::test]
async fn sqlite_takeover() {
    let dir = tempfile::tempdir().expect("temp dir");
    takeover(sqlite(&dir).await).await;
}

//! The coordinator on virtual time against the in-memory store, with simulated workers (a task
//! per worker that heartbeats and hands off what it is asked to): the scenarios of DESIGN §1,
//! a leader change, and a plugged-in allocator.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use helix_actors::TokioClock;
use helix_actors::coordinator::{Allocate, AllocateError, AllocateResult, RunRound, StrategyAllocator};
use helix_actors::testing::CutOffStore;
use helix_core::allocation::{Allocation, Assignment};
use helix_core::{ClusterConfig, ClusterName, WorkerId};
use helix_store::{MemStore, Store};
use tokio::time::Instant;

mod support;

use support::{Harness, pass, wait_for};

fn virtual_store() -> Arc<dyn Store> {
    Arc::new(MemStore::new(Arc::new(TokioClock::new())))
}

#[actix::test]
async fn fifty_partitions_settle_at_17_17_16_and_a_join_moves_only_the_newcomers_share() {
    tokio::time::pause();
    let h = Harness::new(virtual_store(), 50, ClusterConfig::default()).await;
    let _coordinator = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    let _workers: Vec<_> = (0..3).map(|_| h.worker()).collect();
    assert!(wait_for(Duration::from_secs(10), || h.settled(&[16, 17, 17])).await, "{:?}", h.loads().await);

    let before = h.owners().await;
    let (newcomer, _task) = h.worker();
    assert!(
        wait_for(Duration::from_secs(10), || h.settled(&[12, 12, 13, 13])).await,
        "{:?}",
        h.loads().await
    );
    let after = h.owners().await;
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(_, a)| *a).collect();
    assert!(matches!(moved.len(), 12 | 13), "{} moved", moved.len());
    assert!(moved.iter().all(|a| *a == Some(newcomer)), "every move went to the newcomer");
}

#[actix::test]
async fn a_killed_worker_loses_only_its_partitions_within_the_session_timeout_and_a_second() {
    tokio::time::pause();
    let h = Harness::new(virtual_store(), 50, ClusterConfig::default()).await;
    let _coordinator = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    let mut workers: Vec<_> = (0..3).map(|_| h.worker()).collect();
    assert!(wait_for(Duration::from_secs(10), || h.settled(&[16, 17, 17])).await);
    let before = h.owners().await;

    let (victim, task) = workers.remove(0);
    task.abort();
    let killed_at = Instant::now();
    let victim_gone = || async { !h.owners().await.contains(&Some(victim)) && h.settled(&[25, 25]).await };
    assert!(wait_for(Duration::from_secs(30), victim_gone).await, "{:?}", h.loads().await);
    let took = killed_at.elapsed();
    assert!(took <= h.config.session_timeout + Duration::from_secs(1), "orphans owned again after {took:?}");
    let after = h.owners().await;
    for (b, a) in before.iter().zip(&after) {
        if *b != Some(victim) {
            assert_eq!(b, a, "a survivor's partition moved");
        }
    }
}

#[actix::test]
async fn a_new_leader_takes_over_with_a_higher_term_and_the_old_one_stops_writing() {
    tokio::time::pause();
    let h = Harness::new(virtual_store(), 20, ClusterConfig::default()).await;
    let link = CutOffStore::new(Arc::clone(&h.store));
    let old = h.coordinator(Arc::new(link.clone()), StrategyAllocator.start().recipient());
    let _workers: Vec<_> = (0..2).map(|_| h.worker()).collect();
    assert!(wait_for(Duration::from_secs(10), || h.settled(&[10, 10])).await);
    let new = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    pass(Duration::from_secs(5)).await;
    assert_eq!(new.send(RunRound).await.expect("mailbox"), None, "a follower does not coordinate");

    link.stall();
    let store = Arc::clone(&h.store);
    let lease = move |term: u64| {
        let store = store.clone();
        async move {
            store.get_lease(&ClusterName::default()).await.expect("lease").is_some_and(|l| l.term.0 == term)
        }
    };
    assert!(wait_for(Duration::from_secs(10), || lease(2)).await, "the follower took over");
    let (_, _third) = h.worker();
    assert!(wait_for(Duration::from_secs(15), || h.settled(&[6, 7, 7])).await, "the new leader coordinates");

    link.restore();
    pass(Duration::from_secs(5)).await;
    assert_eq!(old.send(RunRound).await.expect("mailbox"), None, "the old leader no longer coordinates");
    let report = new.send(RunRound).await.expect("mailbox").expect("the new leader coordinates");
    assert_eq!(report.applied.values().sum::<usize>(), 0, "nothing left to do");
    assert!(lease(2).await, "no further change of hands");
}

/// An allocator that puts every partition on the worker with the smallest id, and counts its
/// calls.
struct Everything(Arc<Mutex<usize>>);

impl Actor for Everything {
    type Context = Context<Self>;
}

impl Handler<Allocate> for Everything {
    type Result = AllocateResult;
    fn handle(&mut self, msg: Allocate, _: &mut Self::Context) -> Self::Result {
        *self.0.lock().expect("calls") += 1;
        msg.each(|request| {
            let first = request.workers.iter().map(|w| w.id).min();
            let count = request.current.len();
            Ok::<_, AllocateError>(Allocation {
                assignment: Assignment::from_owners((0..count).map(|_| first)),
                unassigned: Vec::new(),
            })
        })
    }
}

#[actix::test]
async fn a_plugged_in_allocator_is_the_one_used() {
    tokio::time::pause();
    let h = Harness::new(virtual_store(), 8, ClusterConfig::default()).await;
    let calls = Arc::new(Mutex::new(0));
    let _coordinator =
        h.coordinator(Arc::clone(&h.store), Everything(Arc::clone(&calls)).start().recipient());
    let workers: BTreeSet<WorkerId> = (0..3).map(|_| h.worker().0).collect();
    let first = *workers.first().expect("workers");
    assert!(wait_for(Duration::from_secs(10), || async { h.owners().await == vec![Some(first); 8] }).await);
    assert!(*calls.lock().expect("calls") > 0);
}

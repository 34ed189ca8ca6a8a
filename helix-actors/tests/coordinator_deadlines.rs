//! The coordinator's deadlines on virtual time with the in-memory store: an allocator that
//! hangs or panics, and store calls that hang inside a round. The leader must step down and
//! release its lease so the standby takes over within the lease and a second, and a failure
//! in one queue must not stop the round for the others.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use helix_actors::TokioClock;
use helix_actors::coordinator::{Allocate, AllocateResult, StrategyAllocator};
use helix_actors::testing::CutOffStore;
use helix_core::{ClusterConfig, ClusterName, DomainName, PartitionCount, QueueName};
use helix_store::{AssignmentState, LeaseRecord, MemStore, QueueSpec, Store};
use tokio::time::Instant;

mod support;

use support::{Harness, pass, wait_for};

fn virtual_store() -> Arc<dyn Store> {
    Arc::new(MemStore::new(Arc::new(TokioClock::new())))
}

/// What the faulty allocator does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Hang,
    Panic,
}

/// An allocator that answers like the default one, or hangs, or panics, and notes when it
/// first failed.
struct Faulty {
    mode: Arc<Mutex<Mode>>,
    first_failure: Arc<Mutex<Option<Instant>>>,
    inner: Addr<StrategyAllocator>,
}

impl Actor for Faulty {
    type Context = Context<Self>;
}

impl Handler<Allocate> for Faulty {
    type Result = ResponseFuture<AllocateResult>;

    fn handle(&mut self, msg: Allocate, _: &mut Self::Context) -> Self::Result {
        let mode = *self.mode.lock().expect("mode");
        if mode != Mode::Healthy {
            self.first_failure.lock().expect("first failure").get_or_insert_with(Instant::now);
        }
        match mode {
            Mode::Healthy => {
                let inner = self.inner.clone();
                Box::pin(async move { inner.send(msg).await.unwrap_or_default() })
            }
            Mode::Hang => Box::pin(std::future::pending()),
            Mode::Panic => panic!("allocator bug"),
        }
    }
}

async fn lease(store: &Arc<dyn Store>) -> Option<LeaseRecord> {
    store.get_lease(&ClusterName::default()).await.expect("lease")
}

/// How a leader is made to stop doing work.
enum Fault {
    Allocator(Mode),
    StoreCall(&'static str),
}

/// A leader with a healthy allocator and store settles 20 partitions over two workers; a
/// standby follows. Then `fault` strikes the leader and a worker dies: the leader must step
/// down and release the lease so the standby takes over within the lease and a second of the
/// leader's first stuck call, and the standby moves the dead worker's partitions.
async fn standby_takes_over_from_a_stuck_leader(fault: Fault) {
    tokio::time::pause();
    let config = ClusterConfig::default();
    let h = Harness::new(virtual_store(), 20, config.clone()).await;
    let mode = Arc::new(Mutex::new(Mode::Healthy));
    let first_failure = Arc::new(Mutex::new(None));
    let allocator = Faulty {
        mode: Arc::clone(&mode),
        first_failure: Arc::clone(&first_failure),
        inner: StrategyAllocator.start(),
    }
    .start();
    let link = Arc::new(CutOffStore::new(Arc::clone(&h.store)));
    let _leader = h.coordinator(Arc::clone(&link) as Arc<dyn Store>, allocator.recipient());
    let (_, victim) = h.worker();
    let (_survivor, _task) = h.worker();
    assert!(wait_for(Duration::from_secs(10), || h.settled(&[10, 10])).await, "{:?}", h.loads().await);
    let first = lease(&h.store).await.expect("a lease");
    let _standby = h.coordinator(Arc::clone(&h.store), StrategyAllocator.start().recipient());
    pass(Duration::from_secs(2)).await;

    match fault {
        Fault::Allocator(fault) => *mode.lock().expect("mode") = fault,
        Fault::StoreCall(method) => link.hang(method, None),
    }
    victim.abort();
    let taken_over = || async {
        lease(&h.store).await.is_some_and(|l| !l.expired && l.term > first.term && l.holder != first.holder)
    };
    assert!(wait_for(Duration::from_secs(30), taken_over).await, "the standby never took over");
    let stuck_at = match fault {
        Fault::Allocator(_) => first_failure.lock().expect("first failure").expect("the allocator was asked"),
        Fault::StoreCall(_) => link.first_hung().expect("the call was made"),
    };
    let took = stuck_at.elapsed();
    assert!(
        took <= config.coordinator_lease + Duration::from_secs(1),
        "the standby took over {took:?} after the leader got stuck"
    );
    assert!(wait_for(Duration::from_secs(15), || h.settled(&[20])).await, "{:?}", h.loads().await);
    pass(Duration::from_secs(10)).await;
    let now = lease(&h.store).await.expect("a lease");
    assert!(now.holder != first.holder && !now.expired, "the stuck leader took the lease back");
}

#[actix::test]
async fn a_hanging_allocator_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::Allocator(Mode::Hang)).await;
}

#[actix::test]
async fn a_panicking_allocator_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::Allocator(Mode::Panic)).await;
}

#[actix::test]
async fn a_hanging_read_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::StoreCall("assignments")).await;
}

#[actix::test]
async fn a_hanging_write_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::StoreCall("apply_plan")).await;
}

#[actix::test]
async fn a_hanging_failure_sweep_makes_the_leader_step_down_for_the_standby() {
    standby_takes_over_from_a_stuck_leader(Fault::StoreCall("list_workers")).await;
}

/// A read that hangs for one queue fails that queue only: the other queue is allocated, and
/// the leader keeps its lease.
#[actix::test]
async fn a_call_that_hangs_for_one_queue_does_not_stop_the_others() {
    tokio::time::pause();
    let h = Harness::new(virtual_store(), 6, ClusterConfig::default()).await;
    let spec = QueueSpec::new(
        DomainName::new("domain_order").expect("name"),
        QueueName::new("drink_order").expect("name"),
        PartitionCount::new(6).expect("count"),
    );
    let other = h.store.create_queue(&spec).await.expect("queue");
    let link = CutOffStore::new(Arc::clone(&h.store));
    link.hang("assignments", Some(h.queue.id));
    let _leader = h.coordinator(Arc::new(link), StrategyAllocator.start().recipient());
    let _workers: Vec<_> = (0..2).map(|_| h.worker_on(&[h.queue.id, other.id])).collect();
    let other_settled = || async {
        let rows = h.store.assignments(other.id).await.expect("rows").rows;
        rows.iter().all(|r| r.owner.is_some() && r.state == AssignmentState::Assigned)
    };
    assert!(wait_for(Duration::from_secs(15), other_settled).await, "the healthy queue was not allocated");
    assert!(h.owners().await.iter().all(Option::is_none), "the stuck queue cannot have been planned");
    let first = lease(&h.store).await.expect("a lease");
    pass(Duration::from_secs(10)).await;
    let now = lease(&h.store).await.expect("a lease");
    assert_eq!((now.holder, now.term), (first.holder, first.term), "the leader kept its lease");
    assert!(!now.expired);
}

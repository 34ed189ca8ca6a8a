//! Shared pieces of the coordinator tests: a cluster around one queue, simulated workers and
//! condition waits. They run on virtual time (under `tokio::time::pause()`) or real time alike.

#![allow(dead_code, unreachable_pub)]

pub mod tasks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use helix_actors::coordinator::{Allocate, Coordinator, LeaderElection, LeadershipChanged};
use helix_core::{ClusterConfig, ClusterName, DomainName, PartitionCount, QueueId, QueueName, WorkerId};
use helix_store::conformance::ScratchMysql;
use helix_store::{
    AssignmentState, ConnectOptions, Heartbeat, MysqlStore, QueueRecord, QueueSpec, SqliteStore, Store,
    Subscription, WorkerRegistration,
};
use tokio::time::Instant;

/// Lets `d` pass on tokio's clock.
pub async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Checks `done` every 50 ms of tokio's clock for at most `limit`; whether it came true.
pub async fn wait_for<F, Fut>(limit: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        pass(Duration::from_millis(50)).await;
    }
}

/// One queue (`domain_order/food_order`) in a store, with the timings everyone uses.
pub struct Harness {
    pub store: Arc<dyn Store>,
    pub queue: QueueRecord,
    pub config: ClusterConfig,
}

impl Harness {
    pub async fn new(store: Arc<dyn Store>, partitions: u64, config: ClusterConfig) -> Self {
        config.validate().expect("valid timings");
        let domain = DomainName::new("domain_order").expect("name");
        store.create_domain(&domain).await.expect("domain");
        let spec = QueueSpec::new(
            domain,
            QueueName::new("food_order").expect("name"),
            PartitionCount::new(partitions).expect("count"),
        );
        let queue = store.create_queue(&spec).await.expect("queue");
        Self { store, queue, config }
    }

    /// A coordinator node over `store`: an election and a coordinator asking `allocator`.
    pub fn coordinator(&self, store: Arc<dyn Store>, allocator: Recipient<Allocate>) -> Addr<Coordinator> {
        let me = WorkerId::new_v7();
        let config = self.config.clone();
        Coordinator::create(|ctx| {
            let election = LeaderElection::new(
                Arc::clone(&store),
                ClusterName::default(),
                me,
                config.clone(),
                ctx.address().recipient::<LeadershipChanged>(),
            )
            .start();
            Coordinator::new(store, config, allocator).with_election(election.recipient())
        })
    }

    /// A simulated worker: registers, heartbeats every interval and hands off every partition
    /// it is asked to. Aborting the handle kills it without a goodbye.
    pub fn worker(&self) -> (WorkerId, tokio::task::JoinHandle<()>) {
        self.worker_on(&[self.queue.id])
    }

    /// A simulated worker as [`worker`](Self::worker), subscribed to `queues`.
    pub fn worker_on(&self, queues: &[QueueId]) -> (WorkerId, tokio::task::JoinHandle<()>) {
        let id = WorkerId::new_v7();
        let store = Arc::clone(&self.store);
        let config = self.config.clone();
        let registration = WorkerRegistration {
            id,
            host: "localhost".into(),
            pid: 1,
            labels: BTreeMap::new(),
            subscriptions: queues.iter().map(|&queue_id| Subscription { queue_id, capacity: 1 }).collect(),
            session_timeout: config.session_timeout,
        };
        let task = actix::spawn(async move {
            let mut session = store.register_worker(&registration).await.expect("register").session_epoch;
            loop {
                match store.heartbeat(id, session, config.session_timeout).await {
                    Ok(Heartbeat::Renewed { .. }) | Err(_) => {}
                    Ok(_) => {
                        if let Ok(lease) = store.register_worker(&registration).await {
                            session = lease.session_epoch;
                        }
                    }
                }
                for row in store.assignments_of(id).await.unwrap_or_default() {
                    if row.state == AssignmentState::Revoking {
                        let _ = store.handoff(row.queue_id, row.partition, id, row.epoch).await;
                    }
                }
                pass(config.heartbeat_interval).await;
            }
        });
        (id, task)
    }

    pub async fn owners(&self) -> Vec<Option<WorkerId>> {
        self.store.assignments(self.queue.id).await.expect("rows").rows.iter().map(|r| r.owner).collect()
    }

    pub async fn loads(&self) -> Vec<usize> {
        let mut loads: BTreeMap<Option<WorkerId>, usize> = BTreeMap::new();
        for owner in self.owners().await {
            *loads.entry(owner).or_default() += 1;
        }
        let mut counts: Vec<usize> = loads.into_values().collect();
        counts.sort_unstable();
        counts
    }

    /// Every partition owned and settled, with these sorted loads.
    pub async fn settled(&self, expected: &[usize]) -> bool {
        let rows = self.store.assignments(self.queue.id).await.expect("rows").rows;
        rows.iter().all(|r| r.owner.is_some() && r.state == AssignmentState::Assigned)
            && self.loads().await == expected
    }
}

/// A MySQL store on a fresh scratch database; drop the database when done.
pub async fn mysql() -> (Arc<dyn Store>, ScratchMysql) {
    let database = ScratchMysql::create().await;
    let store = MysqlStore::connect(database.url(), &ConnectOptions::default()).await.expect("connect");
    (Arc::new(store), database)
}

/// A SQLite store on a file in `dir`.
pub async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let path = dir.path().join("helix.db");
    Arc::new(SqliteStore::open(Some(&path), &ConnectOptions::default()).await.expect("open"))
}

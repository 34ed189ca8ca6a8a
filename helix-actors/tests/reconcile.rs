//! The coordinator's decision for a queue, driven against the in-memory store on a manual
//! clock: the scenarios of DESIGN §1 (50 partitions over 3 workers, a join, a kill) and the
//! revoke timeout, with owners that hand off by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use helix_actors::coordinator::{ReconcileInput, Reconciled, reconcile};
use helix_core::allocation::strategy_by_name;
use helix_core::planner::{CancelReason, Cooldowns, PlanChange};
use helix_core::{ClusterName, DomainName, ManualClock, PartitionCount, QueueName, WorkerId};
use helix_store::{
    AssignmentState, CoordinatorFence, MemStore, QueueRecord, QueueSpec, Store, Subscription, WorkerFilter,
    WorkerRegistration,
};

const SESSION: Duration = Duration::from_secs(3);
const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);

struct Cluster {
    clock: ManualClock,
    store: Arc<MemStore>,
    queue: QueueRecord,
    fence: CoordinatorFence,
    cooldowns: Cooldowns,
}

impl Cluster {
    async fn new(partitions: u64) -> Self {
        let clock = ManualClock::default();
        let store = Arc::new(MemStore::new(Arc::new(clock.clone())));
        let domain = DomainName::new("domain_order").expect("name");
        store.create_domain(&domain).await.expect("domain");
        let spec = QueueSpec::new(
            domain,
            QueueName::new("food_order").expect("name"),
            PartitionCount::new(partitions).expect("count"),
        );
        let queue = store.create_queue(&spec).await.expect("queue");
        let cluster = ClusterName::default();
        let holder = WorkerId::new_v7();
        let term = store
            .acquire_lease(&cluster, holder, Duration::from_secs(3600))
            .await
            .expect("lease")
            .expect("free");
        Self {
            clock,
            store,
            queue,
            fence: CoordinatorFence { cluster, holder, term },
            cooldowns: Cooldowns::new(),
        }
    }

    async fn join(&self) -> WorkerId {
        let id = WorkerId::new_v7();
        let registration = WorkerRegistration {
            id,
            host: "localhost".into(),
            pid: 1,
            labels: BTreeMap::new(),
            subscriptions: vec![Subscription { queue_id: self.queue.id, capacity: 1 }],
            session_timeout: SESSION,
        };
        self.store.register_worker(&registration).await.expect("register");
        id
    }

    async fn heartbeat_all(&self, except: &[WorkerId]) {
        for worker in self.store.list_workers(WorkerFilter::Live).await.expect("live") {
            if !except.contains(&worker.id) {
                self.store.heartbeat(worker.id, worker.session_epoch, SESSION).await.expect("heartbeat");
            }
        }
    }

    /// Lets `total` pass in one-second steps, every live worker heartbeating at each step.
    async fn pass_heartbeating(&self, total: Duration) {
        let step = Duration::from_secs(1);
        let mut passed = Duration::ZERO;
        while passed < total {
            self.clock.advance(step);
            passed += step;
            self.heartbeat_all(&[]).await;
        }
    }

    /// One coordinator tick for the queue: read, decide, apply.
    async fn tick(&mut self) -> Reconciled {
        let rows = self.store.assignments(self.queue.id).await.expect("rows").rows;
        let live = self.store.list_workers(WorkerFilter::Live).await.expect("live");
        let now = self.store.now().await.expect("now");
        let strategy = strategy_by_name(&self.queue.allocator).expect("known allocator");
        let decided = reconcile(
            &ReconcileInput {
                queue: &self.queue,
                rows: &rows,
                live_workers: &live,
                held_back: &BTreeSet::new(),
                other_load: &BTreeMap::new(),
                cooldowns: &self.cooldowns,
                now,
                revoke_timeout: REVOKE_TIMEOUT,
            },
            strategy.as_ref(),
        )
        .expect("reconcile");
        let outcome =
            self.store.apply_plan(&self.fence, self.queue.id, &decided.plan.changes).await.expect("apply");
        assert!(outcome.skipped.is_empty(), "a fresh plan applies whole: {:?}", outcome.skipped);
        self.cooldowns.record_timeouts(&decided.plan, now, Duration::from_secs(60));
        decided
    }

    /// Every owner hands off what it was asked to, as its worker session would.
    async fn hand_off_all(&self) -> usize {
        let rows = self.store.assignments(self.queue.id).await.expect("rows").rows;
        let mut handed = 0;
        for row in rows.iter().filter(|r| r.state == AssignmentState::Revoking) {
            let owner = row.owner.expect("a revoked row has an owner");
            self.store.handoff(self.queue.id, row.partition, owner, row.epoch).await.expect("handoff");
            handed += 1;
        }
        handed
    }

    async fn owners(&self) -> Vec<Option<WorkerId>> {
        self.store.assignments(self.queue.id).await.expect("rows").rows.iter().map(|r| r.owner).collect()
    }

    async fn sorted_loads(&self) -> Vec<usize> {
        let mut loads: BTreeMap<Option<WorkerId>, usize> = BTreeMap::new();
        for owner in self.owners().await {
            *loads.entry(owner).or_default() += 1;
        }
        let mut counts: Vec<usize> = loads.values().copied().collect();
        counts.sort_unstable();
        counts
    }
}

#[tokio::test]
async fn fifty_partitions_over_three_workers_then_a_join_moves_only_the_newcomers_share() {
    let mut cluster = Cluster::new(50).await;
    for _ in 0..3 {
        cluster.join().await;
    }
    let first = cluster.tick().await;
    assert!(first.plan.changes.iter().all(|c| matches!(c, PlanChange::Grant { .. })), "{:?}", first.plan);
    assert_eq!(cluster.sorted_loads().await, vec![16, 17, 17]);
    assert!(cluster.tick().await.plan.is_empty(), "unchanged input changes nothing");

    let before = cluster.owners().await;
    let newcomer = cluster.join().await;
    let join = cluster.tick().await;
    assert!(
        join.plan
            .changes
            .iter()
            .all(|c| matches!(c, PlanChange::Revoke { to: Some(t), .. } if *t == newcomer)),
        "only revocations towards the newcomer: {:?}",
        join.plan
    );
    assert!(matches!(join.plan.changes.len(), 12 | 13), "{}", join.plan.changes.len());
    assert_eq!(cluster.owners().await, before, "nothing moves before its owner hands it off");

    assert_eq!(cluster.hand_off_all().await, join.plan.changes.len());
    assert!(cluster.tick().await.plan.is_empty(), "settled");
    let after = cluster.owners().await;
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert!(moved.iter().all(|(_, a)| **a == Some(newcomer)), "every move went to the newcomer");
    assert_eq!(moved.len(), join.plan.changes.len());
    assert_eq!(cluster.sorted_loads().await, vec![12, 12, 13, 13]);
}

#[tokio::test]
async fn a_killed_worker_loses_only_its_partitions_after_the_session_timeout() {
    let mut cluster = Cluster::new(50).await;
    let victim = cluster.join().await;
    cluster.join().await;
    cluster.join().await;
    cluster.tick().await;
    let before = cluster.owners().await;

    cluster.clock.advance(SESSION / 2);
    cluster.heartbeat_all(&[victim]).await;
    assert!(
        cluster.tick().await.plan.is_empty(),
        "a silent worker keeps its partitions until its lease ends"
    );

    cluster.clock.advance(SESSION);
    cluster.heartbeat_all(&[victim]).await;
    let takeover = cluster.tick().await;
    let orphans = before.iter().filter(|o| **o == Some(victim)).count();
    assert_eq!(takeover.plan.changes.len(), orphans, "only the orphans move");
    assert!(takeover.plan.changes.iter().all(|c| matches!(c, PlanChange::Grant { .. })), "granted at once");
    let after = cluster.owners().await;
    for (b, a) in before.iter().zip(&after) {
        if *b != Some(victim) {
            assert_eq!(b, a, "a survivor's partition moved");
        }
    }
    assert_eq!(cluster.sorted_loads().await, vec![25, 25]);
}

#[tokio::test]
async fn an_owner_that_does_not_hand_off_keeps_its_partition_and_cools_down() {
    let mut cluster = Cluster::new(4).await;
    let owner = cluster.join().await;
    cluster.tick().await;
    cluster.join().await;
    let revoked = cluster.tick().await.plan.changes.len();
    assert_eq!(revoked, 2);

    cluster.pass_heartbeating(REVOKE_TIMEOUT + Duration::from_secs(1)).await;
    let cancelled = cluster.tick().await;
    assert_eq!(cancelled.plan.changes.len(), revoked, "{:?}", cancelled.plan);
    assert!(
        cancelled
            .plan
            .changes
            .iter()
            .all(|c| matches!(c, PlanChange::CancelRevoke { reason: CancelReason::TimedOut, .. }))
    );
    assert!(cluster.tick().await.plan.is_empty(), "no new revocation during the cool-down");
    assert_eq!(cluster.owners().await, vec![Some(owner); 4], "the owner kept everything");
}

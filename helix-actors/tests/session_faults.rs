//! Faults of the worker session on virtual time with the testing kit (DESIGN §4 rules 8 and
//! 10): a handoff that comes back fenced, a session told it was superseded, a poll answered
//! across a fence, and how fast a grant reaches its new owner.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_actors::testing::{SimCluster, SimWorker, noop_handler};
use helix_actors::worker::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler};
use helix_core::{ClusterConfig, PartitionId, WorkerId};
use helix_store::{AssignmentState, EventKind, QueueRecord};

const LIMIT: Duration = Duration::from_secs(30);

/// A handler whose `revoked` takes `drain` (forever when `None`).
struct SlowDrain(Option<Duration>);

#[async_trait(?Send)]
impl PartitionHandler for SlowDrain {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn revoked(&mut self, _: &PartitionContext) {
        match self.0 {
            Some(drain) => tokio::time::sleep(drain).await,
            None => futures::future::pending::<()>().await,
        }
    }
}

fn slow_drain(drain: Option<Duration>) -> HandlerFactory {
    Arc::new(move |_: &PartitionContext| Box::new(SlowDrain(drain)) as Box<dyn PartitionHandler>)
}

/// A cluster on virtual time with one coordinator node, one queue of `partitions` and one
/// worker running `factory`, settled on that worker.
async fn one_owner(
    config: ClusterConfig,
    partitions: u64,
    factory: HandlerFactory,
) -> (SimCluster, QueueRecord, SimWorker) {
    tokio::time::pause();
    let mut cluster = SimCluster::new(config).await.expect("cluster");
    let queue = cluster.create_queue("domain_order", "food_order", partitions).await.expect("queue");
    cluster.add_coordinator();
    let owner = cluster.add_worker(&[(&queue, 1)], factory);
    let settled = cluster
        .wait_until(LIMIT, || async {
            cluster.check_settled(&queue).await.is_ok()
                && cluster.loads(&queue).await.expect("loads").get(&owner.id())
                    == Some(&(partitions as usize))
        })
        .await;
    assert!(settled, "{:?}", cluster.check_settled(&queue).await);
    (cluster, queue, owner)
}

/// The partitions of `queue` being revoked toward `target`.
async fn revoking_to(cluster: &SimCluster, queue: &QueueRecord, target: WorkerId) -> Vec<PartitionId> {
    let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
    rows.iter()
        .filter(|r| r.state == AssignmentState::Revoking && r.target == Some(target))
        .map(|r| r.partition)
        .collect()
}

/// Waits until every partition of `queue` is owned by `owner` and runs there at its epoch.
async fn all_run_on(cluster: &SimCluster, queue: &QueueRecord, owner: &SimWorker, limit: Duration) -> bool {
    cluster
        .wait_until(limit, || async {
            let map = cluster.partition_map(queue).await.expect("map");
            map.iter().all(|o| *o == Some(owner.id())) && cluster.check_settled(queue).await.is_ok()
        })
        .await
}

#[actix::test]
async fn a_handoff_fenced_by_a_cancelled_revocation_runs_the_partition_again() {
    let (mut cluster, queue, owner) =
        one_owner(ClusterConfig::default(), 4, slow_drain(Some(Duration::from_secs(6)))).await;

    // A newcomer joins: some partitions are revoked toward it and the owner drains them (6 s).
    let newcomer = cluster.add_worker(&[(&queue, 1)], noop_handler());
    let revoking = || async { !revoking_to(&cluster, &queue, newcomer.id()).await.is_empty() };
    assert!(cluster.wait_until(LIMIT, revoking).await, "a partition is revoked toward the newcomer");
    let moving = revoking_to(&cluster, &queue, newcomer.id()).await;

    // The newcomer dies before the handoff: the coordinator cancels the revocations, so the
    // owner's handoff comes back fenced while the row still names it owner.
    cluster.kill(&newcomer);
    let cancelled = || async {
        let events = cluster.events().await.expect("events");
        moving
            .iter()
            .all(|p| events.iter().any(|e| e.kind == EventKind::RevokeCancelled && e.partition == Some(*p)))
    };
    assert!(cluster.wait_until(LIMIT, cancelled).await, "the revocations were cancelled");
    // The drains end and the handoffs come back fenced.
    cluster.advance(Duration::from_secs(10)).await;

    assert!(
        all_run_on(&cluster, &queue, &owner, LIMIT).await,
        "the owner runs what it still owns: {:?}",
        cluster.check_settled(&queue).await
    );
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_handoff_that_outlives_the_revoke_timeout_runs_the_partition_again() {
    let config = ClusterConfig {
        revoke_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_millis(9_500),
        ..ClusterConfig::default()
    };
    let (mut cluster, queue, owner) = one_owner(config, 2, slow_drain(None)).await;
    let newcomer = cluster.add_worker(&[(&queue, 1)], noop_handler());
    let revoking = || async { !revoking_to(&cluster, &queue, newcomer.id()).await.is_empty() };
    assert!(cluster.wait_until(LIMIT, revoking).await, "a partition is revoked toward the newcomer");
    let moving = revoking_to(&cluster, &queue, newcomer.id()).await;
    assert_eq!(moving.len(), 1, "one of two partitions moves");
    let partition = moving[0];
    let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
    let began = rows.iter().find(|r| r.partition == partition).expect("row").updated_at;

    // The owner's handoff (after a drain cut at 9.5 s) is held up on the network from 9.4 s
    // to 10.6 s after the revocation began, past the revoke timeout (10 s): the coordinator
    // cancels the revocation meanwhile and the handoff comes back fenced. The hold is shorter
    // than the owner's trust in its lease, so it does not fence itself.
    let since = |at: chrono::DateTime<chrono::Utc>| (cluster.now() - at).to_std().unwrap_or_default();
    cluster.advance(Duration::from_millis(9_400).saturating_sub(since(began))).await;
    cluster.cut_off(&owner);
    owner.link().stall();
    cluster.advance(Duration::from_millis(1_200)).await;
    assert!(cluster.restore(&owner));
    let cancelled = cluster.events().await.expect("events");
    assert!(
        cancelled.iter().any(|e| e.kind == EventKind::RevokeCancelled && e.partition == Some(partition)),
        "the revocation was cancelled at the revoke timeout"
    );
    cluster.advance(Duration::from_secs(1)).await;
    let rows = cluster.store().assignments(queue.id).await.expect("rows").rows;
    let row = rows.iter().find(|r| r.partition == partition).expect("row").clone();
    assert_eq!((row.owner, row.state), (Some(owner.id()), AssignmentState::Assigned), "{row:?}");

    let again = || async {
        let status = owner.status().await.expect("status");
        status.running().iter().any(|(q, p, e)| *q == queue.id && *p == partition && *e == row.epoch)
    };
    assert!(
        cluster.wait_until(Duration::from_secs(5), again).await,
        "the owner runs partition {partition} again: {:?}",
        owner.status().await
    );
    assert!(!owner.status().await.expect("status").fenced, "the hold did not fence the owner");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_superseded_session_stops_for_good_and_says_so() {
    let (cluster, _queue, owner) = one_owner(ClusterConfig::default(), 4, noop_handler()).await;
    let first = owner.status().await.expect("status").session_epoch.expect("registered");

    // The owner pauses past its lease; meanwhile another process registers under its id.
    owner.link().stall();
    let expired = || async {
        let record = cluster.store().get_worker(owner.id()).await.expect("worker");
        record.lease_expires_at < cluster.now()
    };
    assert!(cluster.wait_until(LIMIT, expired).await, "the owner's lease ran out");
    let mut other = cluster.store().get_worker(owner.id()).await.expect("worker");
    other.pid += 1_000;
    let registration = helix_store::WorkerRegistration {
        id: owner.id(),
        host: "another-host".into(),
        pid: other.pid,
        labels: Default::default(),
        subscriptions: Vec::new(),
        session_timeout: cluster.config().session_timeout,
    };
    let newer = cluster.store().register_worker(&registration).await.expect("the other process registers");
    assert!(newer.session_epoch > first);
    owner.link().restore();

    let told = || async { owner.end().is_some() };
    assert!(cluster.wait_until(LIMIT, told).await, "the owner learns it was superseded");
    assert_eq!(
        owner.end(),
        Some(helix_actors::worker::SessionEnd::Superseded { worker: owner.id(), session_epoch: first })
    );
    assert!(owner.status().await.is_err(), "the superseded session has stopped");
    assert!(
        cluster.tenures().iter().filter(|t| t.worker == owner.id()).all(|t| !t.is_running()),
        "every partition stopped"
    );
    // It never registers again: the other process's session stays the newest, for good.
    cluster.advance(Duration::from_secs(30)).await;
    let record = cluster.store().get_worker(owner.id()).await.expect("worker");
    assert_eq!(record.session_epoch, newer.session_epoch, "the superseded process registered again");
    assert_eq!(record.host, "another-host");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_poll_answered_after_a_fence_and_a_new_session_is_dropped() {
    tokio::time::pause();
    let mut cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
    let queue = cluster.create_queue("domain_order", "food_order", 2).await.expect("queue");
    cluster.add_coordinator();
    let slow = cluster.add_worker(&[(&queue, 1)], noop_handler());
    let other = cluster.add_worker(&[(&queue, 1)], noop_handler());
    let settled = cluster
        .wait_until(LIMIT, || async {
            cluster.check_settled(&queue).await.is_ok()
                && cluster.loads(&queue).await.expect("loads").len() == 2
        })
        .await;
    assert!(settled, "{:?}", cluster.check_settled(&queue).await);
    let map = cluster.partition_map(&queue).await.expect("map");
    let partition = PartitionId(
        u32::try_from(map.iter().position(|o| *o == Some(slow.id())).expect("owned")).expect("small"),
    );
    let first = slow.status().await.expect("status").session_epoch.expect("registered");

    // The slow worker's next poll reads its rows now and answers 8 s later. Meanwhile it is
    // cut off, fences itself, its lease runs out and its partition goes to the other worker;
    // back on the network it registers a new session before the old answer arrives.
    slow.link().delay_polls(Duration::from_secs(8));
    cluster.advance(Duration::from_millis(1_100)).await;
    slow.link().delay_polls(Duration::ZERO);
    cluster.cut_off(&slow);
    let moved = || async {
        cluster.partition_map(&queue).await.expect("map")[partition.0 as usize] == Some(other.id())
    };
    assert!(cluster.wait_until(LIMIT, moved).await, "the partition moved to the other worker");
    assert!(cluster.restore(&slow));
    let again = || async { slow.status().await.expect("status").session_epoch.is_some_and(|s| s > first) };
    assert!(cluster.wait_until(LIMIT, again).await, "a new session");

    // The old answer arrives under the new session: it must not start the partition.
    cluster.advance(Duration::from_secs(10)).await;
    let tenures = cluster.tenures();
    let stale: Vec<_> = tenures
        .iter()
        .filter(|t| t.worker == slow.id() && t.partition == partition && t.start_seq > 0)
        .filter(|t| {
            tenures
                .iter()
                .any(|o| o.worker == other.id() && o.partition == partition && o.start_seq < t.start_seq)
        })
        .collect();
    assert!(stale.is_empty(), "the stale poll started the partition again: {stale:?}");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn an_idle_worker_polls_only_when_its_assignments_move_and_still_starts_grants_within_a_heartbeat() {
    let (mut cluster, queue, owner) = one_owner(ClusterConfig::default(), 4, noop_handler()).await;
    let interval = cluster.config().heartbeat_interval;

    // Settled and idle: the heartbeat answers that nothing moved, so nothing is polled.
    let before = owner.link().polls();
    cluster.advance(interval * 30).await;
    let idle = owner.link().polls() - before;
    assert!(idle <= 1, "{idle} polls in 30 idle heartbeats");

    // A change still reaches it within about one heartbeat: a newcomer joins and dies, and
    // its partitions are granted back to the owner.
    let newcomer = cluster.add_worker(&[(&queue, 1)], noop_handler());
    let shared = || async { cluster.loads(&queue).await.expect("loads").len() == 2 };
    assert!(cluster.wait_until(LIMIT, shared).await, "the newcomer got its share");
    assert!(cluster.wait_until(LIMIT, || async { cluster.check_settled(&queue).await.is_ok() }).await);
    cluster.kill(&newcomer);
    let owned =
        || async { cluster.partition_map(&queue).await.expect("map").iter().all(|o| *o == Some(owner.id())) };
    assert!(cluster.wait_until(LIMIT, owned).await, "granted back");
    let granted = tokio::time::Instant::now();
    assert!(all_run_on(&cluster, &queue, &owner, LIMIT).await);
    let took = granted.elapsed();
    assert!(took <= interval + Duration::from_millis(20), "running {took:?} after the grant");
    cluster.check_invariants().await.expect("invariants");
}

/// A renewal that commits but whose answer is lost takes with it the news that assignments
/// moved (the store records what the worker has seen): the worker must poll after a failed
/// heartbeat, or a partition granted to it stays owned and runs nowhere.
#[actix::test]
async fn a_grant_whose_heartbeat_answer_was_lost_still_runs() {
    let (mut cluster, queue, owner) = one_owner(ClusterConfig::default(), 4, noop_handler()).await;
    let newcomer = cluster.add_worker(&[(&queue, 1)], noop_handler());
    let shared = || async { cluster.loads(&queue).await.expect("loads").len() == 2 };
    assert!(cluster.wait_until(LIMIT, shared).await, "the newcomer got its share");
    assert!(cluster.wait_until(LIMIT, || async { cluster.check_settled(&queue).await.is_ok() }).await);

    // Every renewal that would tell the owner about the grant loses its answer.
    owner.link().lose_moved_heartbeats(usize::MAX);
    cluster.kill(&newcomer);
    let owned =
        || async { cluster.partition_map(&queue).await.expect("map").iter().all(|o| *o == Some(owner.id())) };
    assert!(cluster.wait_until(LIMIT, owned).await, "granted back");
    assert!(all_run_on(&cluster, &queue, &owner, LIMIT).await, "the granted partitions run on their owner");
    cluster.check_invariants().await.expect("invariants");
}

/// A store request of the session that never answers (its connection went silent) is given up
/// at its bound (DESIGN §4 rule 11): the session goes on heartbeating and the worker runs its
/// partitions again, instead of waiting for that answer forever.
#[actix::test]
async fn a_session_request_that_never_answers_is_given_up_at_its_bound() {
    let (cluster, queue, owner) = one_owner(ClusterConfig::default(), 4, noop_handler()).await;
    // An idle worker's next request is its heartbeat.
    owner.link().lose_next(1);
    let fenced = || async { owner.status().await.is_ok_and(|s| s.partitions.is_empty()) };
    assert!(cluster.wait_until(LIMIT, fenced).await, "the worker fenced itself without its renewal");
    assert!(all_run_on(&cluster, &queue, &owner, LIMIT).await, "the partitions run on their owner again");
    cluster.check_invariants().await.expect("invariants");
}

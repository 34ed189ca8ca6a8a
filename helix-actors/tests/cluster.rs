//! Deterministic cluster scenarios on virtual time with the testing kit: real coordinators
//! and real worker sessions on one in-memory store, with the invariant checker watching every
//! partition handler (DESIGN §4, §8).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use helix_actors::coordinator::{Allocate, AllocateError, AllocateResult, takeover_bound};
use helix_actors::testing::{SimCluster, SimWorker, noop_handler};
use helix_actors::worker::{HandlerError, HandlerFactory, PartitionContext, PartitionHandler, RestartPolicy};
use helix_core::allocation::{Allocation, Assignment};
use helix_core::{ClusterConfig, PartitionId, WorkerId};
use helix_store::{AssignmentState, EventKind, PlanChange, QueueRecord, Store, StoreError};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

/// A cluster with one coordinator node, `workers` workers and one queue of `partitions`.
async fn cluster(workers: usize, partitions: u64) -> (SimCluster, QueueRecord, Vec<SimWorker>) {
    cluster_with(ClusterConfig::default(), workers, partitions).await
}

/// [`cluster`] with timings of one's own.
async fn cluster_with(
    config: ClusterConfig,
    workers: usize,
    partitions: u64,
) -> (SimCluster, QueueRecord, Vec<SimWorker>) {
    tokio::time::pause();
    let mut cluster = SimCluster::new(config).await.expect("cluster");
    let queue = cluster.create_queue("domain_order", "food_order", partitions).await.expect("queue");
    cluster.add_coordinator();
    let workers = (0..workers).map(|_| cluster.add_worker(&[(&queue, 1)], noop_handler())).collect();
    (cluster, queue, workers)
}

async fn sorted_loads(cluster: &SimCluster, queue: &QueueRecord) -> Vec<usize> {
    let mut loads: Vec<usize> = cluster.loads(queue).await.expect("loads").into_values().collect();
    loads.sort_unstable();
    loads
}

/// Waits until `queue` has settled with these sorted loads.
async fn settle(cluster: &SimCluster, queue: &QueueRecord, expected: &[usize]) {
    let settled = cluster
        .wait_until(LIMIT, || async {
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

fn owned_by(map: &[Option<WorkerId>], worker: WorkerId) -> BTreeSet<PartitionId> {
    (0u32..).zip(map).filter(|(_, o)| **o == Some(worker)).map(|(p, _)| PartitionId(p)).collect()
}

fn millis(d: chrono::TimeDelta) -> i64 {
    d.num_milliseconds()
}

/// [`cluster`] with a rejoin delay of 20 s.
async fn cluster_with_rejoin(workers: usize, partitions: u64) -> (SimCluster, QueueRecord, Vec<SimWorker>) {
    let config = ClusterConfig { rejoin_delay: Duration::from_secs(20), ..ClusterConfig::default() };
    cluster_with(config, workers, partitions).await
}

#[actix::test]
async fn a_restart_within_the_rejoin_delay_moves_nothing() {
    let (mut cluster, queue, workers) = cluster_with_rejoin(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let before = cluster.partition_map(&queue).await.expect("map");
    let rows_before = cluster.store().assignments(queue.id).await.expect("rows").rows;
    let restarted = &workers[0];
    let its_own = owned_by(&before, restarted.id());

    let outcome = cluster.stop(restarted).await.expect("leave");
    assert_eq!(outcome.kept.len(), its_own.len(), "{outcome:?}");
    assert!(outcome.released.is_empty() && outcome.deregistered);
    cluster.advance(Duration::from_secs(15)).await;
    assert_eq!(cluster.partition_map(&queue).await.expect("map"), before, "held while it is away");

    let again = cluster.restart(restarted, &[(&queue, 1)], noop_handler());
    settle(&cluster, &queue, &[16, 17, 17]).await;
    assert_eq!(cluster.partition_map(&queue).await.expect("map"), before, "nothing moved");
    let rows_after = cluster.store().assignments(queue.id).await.expect("rows").rows;
    // No partition changed hands; the new session adopted its own at the next epoch.
    let expected: Vec<_> = rows_before
        .iter()
        .map(|r| if r.owner == Some(restarted.id()) { r.epoch.next() } else { r.epoch })
        .collect();
    assert_eq!(
        rows_after.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        expected,
        "adoption bumps only its own"
    );
    let status = again.status().await.expect("status");
    assert_eq!(status.partitions.len(), its_own.len(), "its partitions run again");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn partitions_wait_out_the_rejoin_delay_then_move() {
    let (mut cluster, queue, workers) = cluster_with_rejoin(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let gone = &workers[0];
    let its_own = owned_by(&cluster.partition_map(&queue).await.expect("map"), gone.id());
    let left_at = cluster.now();
    cluster.stop(gone).await.expect("leave");

    settle(&cluster, &queue, &[25, 25]).await;
    let first_grant = cluster
        .events()
        .await
        .expect("events")
        .iter()
        .filter(|e| e.kind == EventKind::PartitionGranted && e.at > left_at)
        .filter(|e| e.partition.is_some_and(|p| its_own.contains(&p)))
        .map(|e| e.at)
        .min()
        .expect("its partitions were granted elsewhere");
    let waited = (first_grant - left_at).to_std().expect("positive");
    assert!(waited >= Duration::from_secs(20), "moved after {waited:?}, before the rejoin delay");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn three_workers_share_fifty_partitions_17_17_16() {
    let (cluster, queue, _workers) = cluster(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_join_moves_only_the_newcomers_share() {
    let (mut cluster, queue, _workers) = cluster(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let before = cluster.partition_map(&queue).await.expect("map");

    let newcomer = cluster.add_worker(&[(&queue, 1)], noop_handler());
    settle(&cluster, &queue, &[12, 12, 13, 13]).await;
    let after = cluster.partition_map(&queue).await.expect("map");
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).map(|(_, a)| *a).collect();
    assert!(matches!(moved.len(), 12 | 13), "{} moved", moved.len());
    assert!(moved.iter().all(|a| *a == Some(newcomer.id())), "every move went to the newcomer");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_kill_moves_only_the_orphans_and_only_after_the_session_timeout() {
    let (mut cluster, queue, workers) = cluster(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let before = cluster.partition_map(&queue).await.expect("map");
    let victim = &workers[0];
    let orphans = owned_by(&before, victim.id());
    let config = cluster.config().clone();

    // Kill it right after a heartbeat, so its lease has the whole session timeout left.
    let lease = || async { cluster.store().get_worker(victim.id()).await.expect("worker").lease_expires_at };
    let last = lease().await;
    assert!(cluster.wait_until(LIMIT, || async { lease().await != last }).await, "the victim heartbeats");
    let expires = lease().await;
    cluster.kill(victim);
    let killed_at = Instant::now();
    let killed_clock = cluster.now();

    let moved = || async { cluster.partition_map(&queue).await.expect("map") != before };
    let early = config.session_timeout - config.safety_margin;
    assert!(!cluster.wait_until(early, moved).await, "nothing moves before {early:?}");

    // Owned again in the store, by the survivors.
    let owned = || async {
        let map = cluster.partition_map(&queue).await.expect("map");
        map.iter().all(|o| o.is_some_and(|o| o != victim.id()))
    };
    assert!(cluster.wait_until(LIMIT, owned).await, "the orphans are owned again");
    let took = killed_at.elapsed();
    assert!(took <= config.session_timeout + Duration::from_secs(1), "orphans owned again after {took:?}");
    // Running again: the new owners see their grants on their next assignment poll.
    assert!(cluster.wait_until(LIMIT, || async { cluster.check_settled(&queue).await.is_ok() }).await);
    let running = killed_at.elapsed();
    eprintln!("kill -> orphans owned again after {took:?}, running again after {running:?} of virtual time");
    assert!(running <= took + config.heartbeat_interval, "running again after {running:?}");

    let after = cluster.partition_map(&queue).await.expect("map");
    for (p, (b, a)) in before.iter().zip(&after).enumerate() {
        if *b != Some(victim.id()) {
            assert_eq!(b, a, "survivor's partition {p} moved");
        }
    }
    // Every grant of an orphan came after the victim's lease ran out on the store's clock.
    let events = cluster.events().await.expect("events");
    let grants: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::PartitionGranted && e.at >= killed_clock)
        .filter(|e| e.partition.is_some_and(|p| orphans.contains(&p)))
        .collect();
    assert_eq!(grants.len(), orphans.len(), "each orphan granted once");
    assert!(grants.iter().all(|e| e.at > expires), "an orphan was granted before the lease ran out");
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_graceful_leave_hands_off_without_overlap_and_fast() {
    let (mut cluster, queue, workers) = cluster(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let leaver = &workers[0];
    let orphans = owned_by(&cluster.partition_map(&queue).await.expect("map"), leaver.id());
    let asked = cluster.now();

    let outcome = cluster.stop(leaver).await.expect("leave");
    assert_eq!(outcome.released.len() + outcome.handed_off.len(), orphans.len(), "{outcome:?}");
    assert!(outcome.deregistered);
    settle(&cluster, &queue, &[25, 25]).await;
    cluster.check_invariants().await.expect("no overlap");

    // Per orphan: the leaver's handler stopped, then the new owner's started.
    let tenures = cluster.tenures();
    let mut gaps = Vec::new();
    let mut done = asked;
    for p in &orphans {
        let old = tenures.iter().find(|t| t.worker == leaver.id() && t.partition == *p).expect("old tenure");
        let new = tenures
            .iter()
            .find(|t| t.worker != leaver.id() && t.partition == *p && t.start_seq > old.start_seq)
            .expect("new tenure");
        let stopped = old.stopped.expect("the leaver stopped");
        assert!(stopped <= new.started && old.stop_seq < Some(new.start_seq), "overlap on {p}");
        assert!(new.epoch > old.epoch);
        gaps.push(millis(new.started - stopped));
        done = done.max(new.started);
    }
    let whole = done - asked;
    let widest = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "graceful leave: all {} handoffs done {} ms after the leave, widest gap {widest} ms",
        orphans.len(),
        millis(whole)
    );
    // Much faster than the failure path: no session has to time out.
    assert!(whole.to_std().expect("positive") < cluster.config().session_timeout, "took {whole}");
}

#[actix::test]
async fn a_new_leader_takes_over_with_a_higher_term_and_the_old_ones_writes_are_fenced() {
    let (mut cluster, queue, _workers) = cluster(3, 50).await;
    cluster.add_coordinator();
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let (old, old_fence) = cluster.leader().await.expect("a leader");

    cluster.kill_coordinator(&old);
    let died = Instant::now();
    let took_over = || async { cluster.leader().await.is_some_and(|(_, f)| f.term > old_fence.term) };
    assert!(cluster.wait_until(LIMIT, took_over).await, "another node took over");
    let took = died.elapsed();
    eprintln!("leader death -> takeover after {took:?} of virtual time");
    assert!(took <= takeover_bound(cluster.config()) + Duration::from_secs(1), "took {took:?}");
    let (new, new_fence) = cluster.leader().await.expect("a leader");
    assert_ne!(new.id(), old.id());
    assert!(old.fence().await.is_none(), "the old leader no longer believes it leads");

    // A late write under the old term, even through a working link, changes nothing.
    let row = cluster.store().assignments(queue.id).await.expect("rows").rows[0].clone();
    let late = PlanChange::Grant { partition: row.partition, expected_epoch: row.epoch, to: old.id() };
    old.link().restore();
    let fenced = old.link().apply_plan(&old_fence, queue.id, &[late]).await;
    assert!(matches!(fenced, Err(StoreError::Fenced(_))), "{fenced:?}");
    assert_eq!(cluster.store().assignments(queue.id).await.expect("rows").rows[0], row);
    old.link().cut_off();

    let lease = cluster.store().get_lease(&Default::default()).await.expect("lease").expect("held");
    assert_eq!(lease.term, new_fence.term);
    cluster.add_worker(&[(&queue, 1)], noop_handler());
    settle(&cluster, &queue, &[12, 12, 13, 13]).await;
    cluster.check_invariants().await.expect("invariants");
}

#[actix::test]
async fn a_worker_cut_off_stops_its_partitions_before_anyone_else_is_granted_them() {
    let (cluster, queue, workers) = cluster(3, 50).await;
    settle(&cluster, &queue, &[16, 17, 17]).await;
    let victim = &workers[0];
    let orphans = owned_by(&cluster.partition_map(&queue).await.expect("map"), victim.id());
    let cut_at = cluster.now();
    cluster.cut_off(victim);

    let gone = || async { !cluster.partition_map(&queue).await.expect("map").contains(&Some(victim.id())) };
    assert!(cluster.wait_until(LIMIT, gone).await, "its partitions moved");
    settle(&cluster, &queue, &[25, 25]).await;
    let status = victim.status().await.expect("status");
    assert!(status.fenced && status.partitions.is_empty(), "{status:?}");

    let tenures = cluster.tenures();
    let last_stop = tenures
        .iter()
        .filter(|t| t.worker == victim.id())
        .map(|t| t.stopped.expect("every partition of the cut-off worker stopped"))
        .max()
        .expect("tenures");
    let events = cluster.events().await.expect("events");
    let first_grant = events
        .iter()
        .filter(|e| e.kind == EventKind::PartitionGranted && e.at >= cut_at)
        .filter(|e| e.partition.is_some_and(|p| orphans.contains(&p)))
        .map(|e| e.at)
        .min()
        .expect("grants");
    eprintln!(
        "cut off: partitions stopped {} ms after the cut, first grant elsewhere {} ms after it",
        millis(last_stop - cut_at),
        millis(first_grant - cut_at)
    );
    assert!(last_stop < first_grant, "stopped at {last_stop}, granted at {first_grant}");

    // Back on the network, it registers again and gets its share back.
    assert!(cluster.restore(victim));
    settle(&cluster, &queue, &[16, 17, 17]).await;
    cluster.check_invariants().await.expect("invariants");
}

struct Panics;

#[async_trait(?Send)]
impl PartitionHandler for Panics {
    async fn assigned(&mut self, _: &PartitionContext) -> Result<(), HandlerError> {
        panic!("poison pill")
    }
    async fn revoked(&mut self, _: &PartitionContext) {}
}

#[actix::test]
async fn a_panicking_handler_restarts_then_ends_failed_until_reset() {
    tokio::time::pause();
    let mut cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
    let queue = cluster.create_queue("domain_order", "poison", 1).await.expect("queue");
    cluster.add_coordinator();
    let policy = RestartPolicy { max_failures: 3, ..RestartPolicy::default() };
    let factory: HandlerFactory =
        Arc::new(|_: &PartitionContext| Box::new(Panics) as Box<dyn PartitionHandler>);
    let first = cluster.add_worker_with(&[(&queue, 1)], Arc::clone(&factory), policy.clone());
    let second = cluster.add_worker_with(&[(&queue, 1)], factory, policy);

    let failed = || async {
        cluster.store().assignments(queue.id).await.expect("rows").rows[0].state == AssignmentState::Failed
    };
    assert!(cluster.wait_until(LIMIT, failed).await, "the partition was recorded failed");
    let row = cluster.store().assignments(queue.id).await.expect("rows").rows[0].clone();
    assert_eq!(row.owner, None, "a failed partition has no owner");
    let runs = cluster.tenures();
    assert_eq!(runs.len(), 3, "started, restarted twice, then failed: {runs:?}");
    let owner = runs[0].worker;
    assert!(runs.iter().all(|t| t.worker == owner && t.epoch == runs[0].epoch && !t.is_running()));
    let events = cluster.events().await.expect("events");
    let event = events.iter().find(|e| e.kind == EventKind::PartitionFailed).expect("partition_failed");
    assert_eq!((event.worker, event.epoch), (Some(owner), Some(row.epoch)));
    assert_eq!(event.detail["failures"], 3);

    // The coordinator leaves it alone: no worker gets it back, however long we wait.
    cluster.advance(Duration::from_secs(60)).await;
    assert_eq!(cluster.tenures().len(), 3, "a failed partition is not granted again");
    let row = cluster.store().assignments(queue.id).await.expect("rows").rows[0].clone();
    assert_eq!((row.owner, row.state), (None, AssignmentState::Failed));
    for worker in [&first, &second] {
        assert!(worker.status().await.expect("status").partitions.is_empty());
    }
    cluster.check_settled(&queue).await.expect("settled with the partition failed");

    // An operator's reset: granted again (the handler still panics, so it fails again).
    assert!(cluster.store().reset_partition(queue.id, PartitionId(0)).await.expect("reset"));
    let granted_again = || async { cluster.tenures().len() > 3 };
    assert!(cluster.wait_until(LIMIT, granted_again).await, "granted again after the reset");
    assert!(cluster.tenures()[3].epoch > runs[0].epoch);
    assert!(cluster.wait_until(LIMIT, failed).await, "failed again");
    cluster.check_invariants().await.expect("invariants");
}

/// An allocator that puts every partition on the worker with the smallest id.
struct Everything;

impl actix::Actor for Everything {
    type Context = actix::Context<Self>;
}

impl actix::Handler<Allocate> for Everything {
    type Result = AllocateResult;
    fn handle(&mut self, msg: Allocate, _: &mut Self::Context) -> Self::Result {
        msg.each(|request| {
            let first = request.workers.iter().map(|w| w.id).min();
            Ok::<_, AllocateError>(Allocation {
                assignment: Assignment::from_owners(request.current.iter().map(|_| first)),
                unassigned: Vec::new(),
            })
        })
    }
}

#[actix::test]
async fn a_plugged_in_allocator_actor_is_the_one_used() {
    tokio::time::pause();
    let mut cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
    let queue = cluster.create_queue("domain_order", "food_order", 8).await.expect("queue");
    cluster.add_coordinator_with(actix::Actor::start(Everything).recipient());
    let workers: Vec<_> = (0..3).map(|_| cluster.add_worker(&[(&queue, 1)], noop_handler())).collect();
    let first = workers.iter().map(SimWorker::id).min().expect("workers");
    settle(&cluster, &queue, &[8]).await;
    assert_eq!(cluster.partition_map(&queue).await.expect("map"), vec![Some(first); 8]);
    cluster.check_invariants().await.expect("invariants");
}

/// Many workers on several queues settle once and stay put: each queue balances its "+1"
/// partitions against the other queues' targets, so queues do not undo each other's choices
/// while handoffs are in flight, and every worker's total over the queues is within one.
#[actix::test]
async fn several_queues_settle_once_and_stay_put() {
    tokio::time::pause();
    let mut cluster = SimCluster::new(ClusterConfig::default()).await.expect("cluster");
    let mut queues = Vec::new();
    for name in ["q1", "q2", "q3", "q4"] {
        queues.push(cluster.create_queue("domain_order", name, 256).await.expect("queue"));
    }
    cluster.add_coordinator();
    let subscriptions: Vec<(&QueueRecord, u32)> = queues.iter().map(|q| (q, 1)).collect();
    let workers: Vec<SimWorker> =
        (0..100).map(|_| cluster.add_worker(&subscriptions, noop_handler())).collect();

    // Once every partition has an owner, nothing should move again: the first placement
    // is already balanced across the queues.
    let all_owned = || async {
        for queue in &queues {
            if cluster.partition_map(queue).await.expect("map").contains(&None) {
                return false;
            }
        }
        true
    };
    assert!(cluster.wait_until(Duration::from_secs(60), all_owned).await, "not every partition was granted");
    let mut first = Vec::new();
    for queue in &queues {
        first.push(cluster.partition_map(queue).await.expect("map"));
    }
    let all_settled = || async {
        for queue in &queues {
            if cluster.check_settled(queue).await.is_err() {
                return false;
            }
        }
        true
    };
    assert!(cluster.wait_until(Duration::from_secs(60), all_settled).await, "the queues never settled");
    let versions = |store: Arc<dyn Store>| async move {
        let mut versions = Vec::new();
        for queue in store.list_queues(None).await.expect("queues") {
            versions.push(queue.assignment_version);
        }
        versions
    };
    let mut moved = 0;
    for (queue, first) in queues.iter().zip(&first) {
        let now = cluster.partition_map(queue).await.expect("map");
        moved += first.iter().zip(&now).filter(|(a, b)| a != b).count();
    }
    assert_eq!(moved, 0, "partitions moved after the first placement");
    let before = versions(Arc::clone(cluster.store())).await;
    cluster.advance(Duration::from_secs(60)).await;
    assert_eq!(versions(Arc::clone(cluster.store())).await, before, "assignments moved in a settled cluster");

    let mut totals: BTreeMap<WorkerId, usize> = workers.iter().map(|w| (w.id(), 0)).collect();
    for queue in &queues {
        for (worker, load) in cluster.loads(queue).await.expect("loads") {
            *totals.entry(worker).or_default() += load;
        }
    }
    let (min, max) = (totals.values().min().copied(), totals.values().max().copied());
    assert!(matches!((min, max), (Some(10), Some(11))), "totals from {min:?} to {max:?}");
    cluster.check_invariants().await.expect("invariants");
}

/// A worker that comes back under its id serving fewer queues gives up the partitions of the
/// queues it no longer serves when it registers: they move to a worker that serves them at
/// once, instead of staying with an owner that neither runs them as a subscriber nor watches
/// their queue for the revocation (docs/protocol.md, "Adoption bumps the epoch").
#[actix::test]
async fn a_worker_back_with_fewer_queues_gives_up_the_others_at_once() {
    tokio::time::pause();
    let config = ClusterConfig { rejoin_delay: Duration::from_secs(20), ..ClusterConfig::default() };
    let mut cluster = SimCluster::new(config).await.expect("cluster");
    let kept = cluster.create_queue("domain_order", "kept", 4).await.expect("queue");
    let dropped = cluster.create_queue("domain_order", "dropped", 4).await.expect("queue");
    cluster.add_coordinator();
    let both = [(&kept, 1), (&dropped, 1)];
    let workers: Vec<SimWorker> = (0..2).map(|_| cluster.add_worker(&both, noop_handler())).collect();
    settle(&cluster, &kept, &[2, 2]).await;
    settle(&cluster, &dropped, &[2, 2]).await;
    let (back, other) = (&workers[0], &workers[1]);

    cluster.stop(back).await.expect("leave");
    cluster.advance(Duration::from_secs(5)).await;
    let restarted_at = cluster.now();
    let again = cluster.restart(back, &[(&kept, 1)], noop_handler());

    let moved = cluster
        .wait_until(Duration::from_secs(5), || async {
            cluster.partition_map(&dropped).await.expect("map").iter().all(|o| *o == Some(other.id()))
                && cluster.check_settled(&dropped).await.is_ok()
        })
        .await;
    assert!(
        moved,
        "the dropped queue's partitions stayed with the worker that no longer serves it: {:?}",
        cluster.store().assignments(dropped.id).await.expect("rows").rows
    );
    let ran_unsubscribed: Vec<_> = cluster
        .tenures()
        .into_iter()
        .filter(|t| t.worker == back.id() && t.queue == dropped.id && t.started >= restarted_at)
        .collect();
    assert!(ran_unsubscribed.is_empty(), "ran a queue it does not serve: {ran_unsubscribed:?}");
    settle(&cluster, &kept, &[2, 2]).await;
    assert_eq!(again.status().await.expect("status").partitions.len(), 2, "its own queue's partitions run");
    cluster.check_invariants().await.expect("invariants");
}

/// The coordinator sweeps when a live worker's lease runs out rather than at its next tick:
/// with a reconcile interval of 2 s, a dead worker's partitions are granted within a few ms
/// after its lease ended on the store's clock, and never before (docs/protocol.md,
/// "Failover").
#[actix::test]
async fn a_dead_workers_partitions_are_granted_as_its_lease_runs_out_not_at_the_next_tick() {
    let config = ClusterConfig { reconcile_interval: Duration::from_secs(2), ..ClusterConfig::default() };
    let (mut cluster, queue, workers) = cluster_with(config, 3, 12).await;
    settle(&cluster, &queue, &[4, 4, 4]).await;
    let victim = &workers[0];
    let orphans = owned_by(&cluster.partition_map(&queue).await.expect("map"), victim.id());
    let killed_clock = cluster.now();
    cluster.kill(victim);
    let expires = cluster.store().get_worker(victim.id()).await.expect("worker").lease_expires_at;

    let owned = || async {
        let map = cluster.partition_map(&queue).await.expect("map");
        map.iter().all(|o| o.is_some_and(|o| o != victim.id()))
    };
    assert!(cluster.wait_until(LIMIT, owned).await, "the orphans are owned again");
    let grants: Vec<_> = cluster
        .events()
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == EventKind::PartitionGranted && e.at >= killed_clock)
        .filter(|e| e.partition.is_some_and(|p| orphans.contains(&p)))
        .map(|e| e.at)
        .collect();
    assert_eq!(grants.len(), orphans.len(), "each orphan granted once");
    let first = grants.iter().min().copied().expect("granted");
    assert!(first > expires, "granted at {first} before the lease ran out at {expires}");
    let late = millis(first - expires);
    assert!(late <= 50, "granted {late} ms after the lease ran out; the next tick was up to 2,000 ms away");
    cluster.check_invariants().await.expect("invariants");
}

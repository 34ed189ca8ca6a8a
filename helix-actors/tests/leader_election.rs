//! The LeaderElection actor on virtual time against the in-memory store: one leader, a term
//! that grows only when the lease changes hands, and a leader that stops trusting its lease
//! before another can be elected.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use helix_actors::TokioClock;
use helix_actors::coordinator::{
    CurrentFence, LeaderElection, LeadershipChanged, Resign, StepDown, takeover_bound,
};
use helix_actors::testing::CutOffStore;
use helix_core::{ClusterConfig, ClusterName, Term, WorkerId};
use helix_store::{MemStore, Store};
use tokio::time::Instant;

type Log = Arc<Mutex<Vec<(Instant, WorkerId, LeadershipChanged)>>>;

/// Records every change of leadership of one node, with the virtual instant it arrived.
struct Recorder {
    node: WorkerId,
    log: Log,
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<LeadershipChanged> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: LeadershipChanged, _: &mut Self::Context) {
        self.log.lock().expect("log").push((Instant::now(), self.node, msg));
    }
}

struct Node {
    id: WorkerId,
    election: Addr<LeaderElection>,
}

fn start_node(store: Arc<dyn Store>, log: &Log) -> Node {
    let id = WorkerId::new_v7();
    let recorder = Recorder { node: id, log: Arc::clone(log) }.start();
    let election = LeaderElection::new(
        store,
        ClusterName::default(),
        id,
        ClusterConfig::default(),
        recorder.recipient(),
    )
    .start();
    Node { id, election }
}

fn shared_store() -> Arc<MemStore> {
    Arc::new(MemStore::new(Arc::new(TokioClock::new())))
}

/// Lets virtual time pass.
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Waits, in virtual time steps of 50 ms for at most `limit`, until `done` holds.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        pass(Duration::from_millis(50)).await;
    }
    done()
}

fn elected(log: &Log) -> Vec<(Instant, WorkerId, Term)> {
    log.lock()
        .expect("log")
        .iter()
        .filter_map(|(at, node, change)| match change {
            LeadershipChanged::BecameLeader { fence } => Some((*at, *node, fence.term)),
            LeadershipChanged::LostLeadership { .. } => None,
        })
        .collect()
}

fn lost(log: &Log) -> Vec<(Instant, WorkerId, Term)> {
    log.lock()
        .expect("log")
        .iter()
        .filter_map(|(at, node, change)| match change {
            LeadershipChanged::LostLeadership { term } => Some((*at, *node, *term)),
            LeadershipChanged::BecameLeader { .. } => None,
        })
        .collect()
}

#[actix::test]
async fn a_lone_node_leads_under_one_term_across_many_renewals() {
    tokio::time::pause();
    let store = shared_store();
    let log = Log::default();
    let node = start_node(store.clone(), &log);
    assert!(wait_until(Duration::from_secs(5), || !elected(&log).is_empty()).await, "no leader");
    pass(Duration::from_secs(60)).await;

    let elected = elected(&log);
    assert_eq!(elected.len(), 1, "{elected:?}");
    assert_eq!((elected[0].1, elected[0].2), (node.id, Term(1)));
    assert!(lost(&log).is_empty(), "renewals kept the lease");
    let lease = store.get_lease(&ClusterName::default()).await.expect("read").expect("lease");
    assert_eq!((lease.holder, lease.term, lease.expired), (Some(node.id), Term(1), false));
    let fence = node.election.send(CurrentFence).await.expect("mailbox").expect("leads");
    assert_eq!(fence.term, Term(1));
}

#[actix::test]
async fn two_nodes_elect_one_and_a_resignation_hands_over_within_a_renewal() {
    tokio::time::pause();
    let store = shared_store();
    let log = Log::default();
    let nodes = [start_node(store.clone(), &log), start_node(store.clone(), &log)];
    assert!(wait_until(Duration::from_secs(5), || !elected(&log).is_empty()).await, "no leader");
    pass(Duration::from_secs(20)).await;
    let first = elected(&log);
    assert_eq!(first.len(), 1, "exactly one leader: {first:?}");
    let leader = nodes.iter().find(|n| n.id == first[0].1).expect("a node leads");
    let follower = nodes.iter().find(|n| n.id != first[0].1).expect("the other node");
    assert_eq!(follower.election.send(CurrentFence).await.expect("mailbox"), None);

    let resigned_at = Instant::now();
    leader.election.send(Resign).await.expect("mailbox");
    let renew = ClusterConfig::default().coordinator_renew_interval;
    assert!(
        wait_until(renew * 2, || elected(&log).len() == 2).await,
        "the follower takes over within a renewal interval of the resignation"
    );
    let second = elected(&log)[1];
    assert_eq!((second.1, second.2), (follower.id, Term(2)));
    assert!(second.0 - resigned_at <= renew + Duration::from_millis(100));
    let lost = lost(&log);
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].1, lost[0].2), (leader.id, Term(1)));
    assert!(lost[0].0 <= second.0, "the old leader stopped before the new one started");
}

#[actix::test]
async fn a_leader_whose_renewals_hang_steps_down_before_its_lease_runs_out() {
    tokio::time::pause();
    let shared = shared_store();
    let log = Log::default();
    let link = CutOffStore::new(shared.clone());
    let leader = start_node(Arc::new(link.clone()), &log);
    assert!(wait_until(Duration::from_secs(5), || !elected(&log).is_empty()).await, "no leader");
    let follower = start_node(shared.clone(), &log);
    pass(Duration::from_secs(5)).await;
    assert_eq!(elected(&log).len(), 1);

    link.stall();
    let config = ClusterConfig::default();
    assert!(
        wait_until(takeover_bound(&config) * 2, || elected(&log).len() == 2).await,
        "the follower takes over once the lease has run out"
    );
    let lost = lost(&log);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].1, leader.id);
    let taken = elected(&log)[1];
    assert_eq!((taken.1, taken.2), (follower.id, Term(2)));
    // The leader gave up on its own clock, at least the safety margin before the follower
    // could take the lease.
    assert!(
        taken.0 - lost[0].0 >= config.safety_margin,
        "stepped down {:?} before the takeover",
        taken.0 - lost[0].0
    );
    assert_eq!(leader.election.send(CurrentFence).await.expect("mailbox"), None);

    // Once the link is back, the old leader finds the lease taken and stays a follower.
    link.restore();
    pass(Duration::from_secs(10)).await;
    assert_eq!(elected(&log).len(), 2);
}

#[actix::test]
async fn a_cut_off_leader_steps_down_at_its_first_failed_renewal() {
    tokio::time::pause();
    let shared = shared_store();
    let log = Log::default();
    let link = CutOffStore::new(shared.clone());
    let leader = start_node(Arc::new(link.clone()), &log);
    assert!(wait_until(Duration::from_secs(5), || !elected(&log).is_empty()).await, "no leader");
    let cut_at = Instant::now();
    link.cut_off();
    let renew = ClusterConfig::default().coordinator_renew_interval;
    assert!(wait_until(renew * 2, || !lost(&log).is_empty()).await, "still leading");
    assert!(lost(&log)[0].0 - cut_at <= renew + Duration::from_millis(100));
    assert_eq!(lost(&log)[0].1, leader.id);
}

#[actix::test]
async fn a_fenced_write_steps_the_leader_down_and_a_stale_one_does_not() {
    tokio::time::pause();
    let store = shared_store();
    let log = Log::default();
    let node = start_node(store.clone(), &log);
    assert!(wait_until(Duration::from_secs(5), || !elected(&log).is_empty()).await, "no leader");
    node.election.send(StepDown { term: Term(7) }).await.expect("mailbox");
    assert!(lost(&log).is_empty(), "a step-down for another term is ignored");
    node.election.send(StepDown { term: Term(1) }).await.expect("mailbox");
    assert_eq!(lost(&log).len(), 1);
    assert_eq!(node.election.send(CurrentFence).await.expect("mailbox"), None);
}

#[actix::test]
async fn an_acquisition_that_never_answers_does_not_stop_the_next_ones() {
    tokio::time::pause();
    let shared = shared_store();
    let log = Log::default();
    let link = CutOffStore::new(shared.clone());
    link.lose_next(1);
    let node = start_node(Arc::new(link.clone()), &log);
    let config = ClusterConfig::default();
    // The lost call is given up after lease − margin; the next tick then acquires.
    let bound = config.coordinator_lease - config.safety_margin + config.coordinator_renew_interval;
    assert!(
        wait_until(bound + Duration::from_millis(100), || !elected(&log).is_empty()).await,
        "the election skipped its ticks behind the lost acquisition"
    );
    assert_eq!(elected(&log)[0].1, node.id);
}

#[actix::test]
async fn a_second_election_under_the_leaders_id_never_shares_its_term() {
    tokio::time::pause();
    let shared = shared_store();
    let log = Log::default();
    let first = start_node(shared.clone(), &log);
    assert!(wait_until(Duration::from_secs(5), || !elected(&log).is_empty()).await, "no leader");
    // A second process under the same id (a deploy with surge).
    let recorder = Recorder { node: first.id, log: Arc::clone(&log) }.start();
    let twin = LeaderElection::new(
        shared.clone(),
        ClusterName::default(),
        first.id,
        ClusterConfig::default(),
        recorder.recipient(),
    )
    .start();
    pass(Duration::from_secs(10)).await;
    assert_eq!(elected(&log).len(), 1, "the twin never leads while the first holds the lease");
    assert_eq!(twin.send(CurrentFence).await.expect("mailbox"), None);

    // The first resigns: the twin takes over under a new term.
    first.election.send(Resign).await.expect("resign");
    assert!(wait_until(Duration::from_secs(5), || elected(&log).len() == 2).await, "no takeover");
    let terms: Vec<Term> = elected(&log).iter().map(|e| e.2).collect();
    assert_eq!(terms, vec![Term(1), Term(2)]);
    assert!(twin.send(CurrentFence).await.expect("mailbox").is_some());
}

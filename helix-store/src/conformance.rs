//! The store conformance suite: one set of behavioural tests that every [`Store`]
//! implementation passes, written once and run against MySQL, SQLite and the in-memory store
//! (openraft's storage suite works the same way).
//!
//! A test file instantiates the suite for a backend with [`conformance_tests!`]; each case
//! becomes its own `#[tokio::test]`:
//!
//! ```text
//! helix_store::conformance_tests!(my_backend_setup());
//! ```
//!
//! where `my_backend_setup()` is an async expression that yields a [`Backend`]: a fresh,
//! empty store of its own plus a way to let time pass on the store's clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Store;

pub mod schedules;
pub mod tasks;

/// A store under test, freshly created and empty.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The store.
    fn store(&self) -> Arc<dyn Store>;
    /// Lets `by` pass on the store's clock: moves a manual clock, or waits in real time for a
    /// store on the database clock.
    async fn advance(&self, by: Duration);
    /// Whether the store runs on real time, where concurrent callers really race.
    fn real_time(&self) -> bool;
    /// Removes what the backend created (a database, a file). Runs after each case.
    async fn teardown(&self);
}

/// Instantiates every conformance case as a `#[tokio::test]` for the backend that `$setup`
/// (an async expression yielding a [`Backend`]) creates.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:expr) => {
        $crate::conformance_tests!(@cases $setup;
            domains_round_trip,
            names_are_stored_verbatim_and_case_sensitive,
            queues_round_trip,
            queue_input_is_validated,
            register_and_heartbeat,
            registration_is_validated,
            lease_expiry_follows_the_store_clock,
            heartbeat_after_deregister_says_so,
            heartbeat_of_unknown_worker_says_so,
            a_new_session_supersedes_the_old,
            dead_workers_are_marked_and_come_back_with_a_new_session,
            worker_status_moves_between_active_and_draining,
            a_heartbeat_says_when_subscribed_assignments_moved,
            term_grows_only_on_a_change_of_holder,
            an_expired_lease_changes_hands_with_a_higher_term,
            racing_contenders_get_exactly_one_leader,
            a_stale_term_cannot_write,
            the_same_holder_under_an_old_term_cannot_write,
            a_lease_that_ran_out_cannot_write,
            a_fence_holds_for_its_own_holder_and_cluster_only,
            every_owner_write_checks_owner_epoch_and_state,
            every_session_write_checks_worker_session_status_and_expiry,
            plan_events_name_the_previous_owner,
            plans_grant_revoke_and_cancel,
            plans_skip_stale_epochs_and_live_owners,
            grants_take_over_partitions_of_expired_owners,
            handoff_moves_ownership_once,
            retargeting_keeps_the_revocation_start_and_no_target_releases,
            a_stale_epoch_cannot_hand_off_or_release,
            a_failed_partition_stays_unowned_until_reset,
            bad_plans_are_refused,
            events_come_back_in_order,
            changes_record_their_events,
            old_events_are_pruned,
            deleting_a_queue_removes_its_rows_and_subscriptions,
            // one process per identity, adoption, bounded inputs
            a_live_worker_id_cannot_register_again,
            a_holder_cannot_take_its_running_lease_again,
            a_new_session_adopts_its_rows_at_the_next_epoch,
            a_handoff_to_a_target_that_is_gone_releases,
            long_event_details_are_cut_to_the_bound,
            events_since_returns_at_most_the_bound,
        );
    };
    (@cases $setup:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $setup.await;
                $crate::conformance::$case(&backend).await;
                $crate::conformance::Backend::teardown(&backend).await;
            }
        )*
    };
}

// ---- helpers ------------------------------------------------------------------------------

use std::collections::BTreeMap;

use helix_core::{
    ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueName, SessionEpoch, Term, WorkerId,
};

use crate::{
    AssignmentState, CancelReason, CoordinatorFence, EventKind, Heartbeat, NewEvent, PlanChange, QueueRecord,
    QueueSpec, SkipReason, StoreError, Subscription, WorkerFilter, WorkerRegistration, WorkerStatus,
};

/// A lease long enough never to run out during a case.
const LONG: Duration = Duration::from_secs(600);
/// A lease short enough to let run out; generous against a busy machine.
const SHORT: Duration = Duration::from_secs(2);
/// How long to wait for [`SHORT`] to have run out.
const PAST_SHORT: Duration = Duration::from_millis(2_600);

fn domain(name: &str) -> DomainName {
    DomainName::new(name).expect("valid domain name")
}

fn queue_name(name: &str) -> QueueName {
    QueueName::new(name).expect("valid queue name")
}

fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).expect("valid cluster name")
}

async fn make_queue(store: &dyn Store, dom: &str, name: &str, partitions: u64) -> QueueRecord {
    let d = domain(dom);
    match store.create_domain(&d).await {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => panic!("create_domain: {e}"),
    }
    let spec = QueueSpec::new(d, queue_name(name), PartitionCount::new(partitions).expect("valid count"));
    store.create_queue(&spec).await.expect("create_queue")
}

fn registration(id: WorkerId, subs: &[&QueueRecord], timeout: Duration) -> WorkerRegistration {
    WorkerRegistration {
        id,
        host: "host-1".into(),
        pid: 4242,
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        subscriptions: subs.iter().map(|q| Subscription { queue_id: q.id, capacity: 1 }).collect(),
        session_timeout: timeout,
    }
}

async fn register(store: &dyn Store, subs: &[&QueueRecord], timeout: Duration) -> (WorkerId, SessionEpoch) {
    let id = WorkerId::new_v7();
    let lease = store.register_worker(&registration(id, subs, timeout)).await.expect("register_worker");
    (id, lease.session_epoch)
}

async fn lead(store: &dyn Store, name: &str) -> CoordinatorFence {
    let holder = WorkerId::new_v7();
    let term =
        store.acquire_lease(&cluster(name), holder, LONG).await.expect("acquire_lease").expect("free lease");
    CoordinatorFence { cluster: cluster(name), holder, term }
}

fn grant(p: u32, epoch: u64, to: WorkerId) -> PlanChange {
    PlanChange::Grant { partition: PartitionId(p), expected_epoch: Epoch(epoch), to }
}

fn revoke(p: u32, epoch: u64, to: WorkerId) -> PlanChange {
    PlanChange::Revoke { partition: PartitionId(p), expected_epoch: Epoch(epoch), to: Some(to) }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(matches!(result, Err(StoreError::Invalid(_))), "{what}: expected Invalid, got {result:?}");
}

fn assert_fenced<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(matches!(result, Err(StoreError::Fenced(_))), "{what}: expected Fenced, got {result:?}");
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    assert!(matches!(result, Err(StoreError::NotFound(_))), "{what}: expected NotFound, got {result:?}");
}

// ---- domains and queues -------------------------------------------------------------------

/// Domains can be created once, read, listed in name order and deleted when empty.
pub async fn domains_round_trip(b: &dyn Backend) {
    let store = b.store();
    let created = store.create_domain(&domain("beta")).await.expect("create beta");
    assert_eq!(created.name, domain("beta"));
    store.create_domain(&domain("alpha")).await.expect("create alpha");
    assert!(matches!(store.create_domain(&domain("beta")).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_domain(&domain("beta")).await.expect("get"), created);
    let names: Vec<_> = store.list_domains().await.expect("list").into_iter().map(|d| d.name).collect();
    assert_eq!(names, vec![domain("alpha"), domain("beta")]);

    make_queue(&*store, "beta", "q", 1).await;
    assert!(matches!(store.delete_domain(&domain("beta")).await, Err(StoreError::Conflict(_))));
    store.delete_domain(&domain("alpha")).await.expect("delete empty domain");
    assert_not_found(store.get_domain(&domain("alpha")).await, "deleted domain");
    assert_not_found(store.delete_domain(&domain("alpha")).await, "deleting twice");
}

/// Names with characters that are special in SQL are stored and matched byte for byte.
pub async fn names_are_stored_verbatim_and_case_sensitive(b: &dyn Backend) {
    let store = b.store();
    for name in ["x_y", "a--b", "drop.table:v1", "Orders", "orders"] {
        store.create_domain(&domain(name)).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
        assert_eq!(store.get_domain(&domain(name)).await.expect("get").name.as_str(), name);
    }
    // `_` is a LIKE wildcard: a lookup must not treat it as one.
    assert_not_found(store.get_domain(&domain("x1y")).await, "x1y");
    assert_not_found(store.get_domain(&domain("ORDERS")).await, "ORDERS");
    let q = make_queue(&*store, "x_y", "food_order--1", 2).await;
    assert_eq!(store.get_queue(&domain("x_y"), &queue_name("food_order--1")).await.expect("get").id, q.id);
    assert_not_found(store.get_queue(&domain("x_y"), &queue_name("food1order--1")).await, "wildcard queue");
}

/// A queue is created with one unowned row per partition and can be read, listed and deleted.
pub async fn queues_round_trip(b: &dyn Backend) {
    let store = b.store();
    store.create_domain(&domain("domain_order")).await.expect("domain");
    let mut spec = QueueSpec::new(
        domain("domain_order"),
        queue_name("food_order"),
        PartitionCount::new(50).expect("50"),
    );
    spec.allocator = "round-robin".into();
    spec.settings = serde_json::json!({ "in_flight": 4, "note": "it's \"quoted\"" });
    let q = store.create_queue(&spec).await.expect("create");
    assert_eq!((q.partition_count.get(), q.allocator.as_str(), q.assignment_version), (50, "round-robin", 0));
    assert_eq!(q.settings, spec.settings);
    assert_eq!(store.get_queue(&spec.domain, &spec.name).await.expect("by name"), q);
    assert_eq!(store.get_queue_by_id(q.id).await.expect("by id"), q);
    assert!(matches!(store.create_queue(&spec).await, Err(StoreError::Conflict(_))), "duplicate queue");

    let rows = store.assignments(q.id).await.expect("assignments");
    assert_eq!(rows.rows.len(), 50);
    for (i, row) in rows.rows.iter().enumerate() {
        assert_eq!(row.partition, PartitionId(i as u32));
        assert_eq!(
            (row.owner, row.epoch, row.state, row.target),
            (None, Epoch(0), AssignmentState::Assigned, None)
        );
    }

    let other = make_queue(&*store, "aaa", "zzz", 1).await;
    let all: Vec<_> = store.list_queues(None).await.expect("list").into_iter().map(|q| q.id).collect();
    assert_eq!(all, vec![other.id, q.id], "sorted by (domain, name)");
    let one: Vec<_> =
        store.list_queues(Some(domain("aaa"))).await.expect("list").into_iter().map(|q| q.id).collect();
    assert_eq!(one, vec![other.id]);

    let missing = QueueSpec::new(domain("nowhere"), queue_name("q"), PartitionCount::new(1).expect("1"));
    assert_not_found(store.create_queue(&missing).await, "queue in a missing domain");
    assert_not_found(store.get_queue(&domain("domain_order"), &queue_name("nope")).await, "missing queue");
    assert_not_found(store.get_queue_by_id(helix_core::QueueId(999_999)).await, "missing queue id");

    let max = make_queue(&*store, "domain_order", "biggest", u64::from(helix_core::MAX_PARTITIONS)).await;
    assert_eq!(
        store.assignments(max.id).await.expect("rows").rows.len(),
        helix_core::MAX_PARTITIONS as usize
    );
}

/// Bad allocators, settings and partition counts are refused with `Invalid`.
pub async fn queue_input_is_validated(b: &dyn Backend) {
    let store = b.store();
    store.create_domain(&domain("d")).await.expect("domain");
    let base = QueueSpec::new(domain("d"), queue_name("q"), PartitionCount::new(4).expect("4"));
    for allocator in ["", "Balanced", "a b", "x';--", &"a".repeat(65)] {
        let spec = QueueSpec { allocator: allocator.to_owned(), ..base.clone() };
        assert_invalid(store.create_queue(&spec).await, &format!("allocator {allocator:?}"));
    }
    for settings in [serde_json::json!([1, 2]), serde_json::json!("s"), serde_json::Value::Null] {
        let spec = QueueSpec { settings, ..base.clone() };
        assert_invalid(store.create_queue(&spec).await, "settings");
    }
    // Partition counts and names are validated by their types; the errors convert to Invalid.
    let zero = PartitionCount::new(0).map_err(StoreError::from);
    assert_invalid(zero, "0 partitions");
    let too_many = PartitionCount::new(u64::from(helix_core::MAX_PARTITIONS) + 1).map_err(StoreError::from);
    assert_invalid(too_many, "too many partitions");
    assert_invalid(DomainName::new("").map_err(StoreError::from), "empty name");
    assert_invalid(QueueName::new("a".repeat(65)).map_err(StoreError::from), "long name");
    assert_invalid(
        QueueName::new("x'; DROP TABLE helix_queues; --").map_err(StoreError::from),
        "sql in a name",
    );
    assert!(store.list_queues(None).await.expect("list").is_empty(), "nothing was created");
}

// ---- workers ------------------------------------------------------------------------------

/// A registered worker is live, reads back as registered and renews its lease.
pub async fn register_and_heartbeat(b: &dyn Backend) {
    let store = b.store();
    let (q1, q2) = (make_queue(&*store, "d", "q1", 2).await, make_queue(&*store, "d", "q2", 2).await);
    let id = WorkerId::new_v7();
    let mut reg = registration(id, &[&q2, &q1], LONG);
    reg.subscriptions[0].capacity = 3;
    let lease = store.register_worker(&reg).await.expect("register");
    assert_eq!(lease.session_epoch, SessionEpoch(1));
    let now = store.now().await.expect("now");
    assert!(lease.lease_expires_at > now, "lease runs into the future");

    let w = store.get_worker(id).await.expect("get");
    assert_eq!(
        (w.host.as_str(), w.pid, w.status, w.session_epoch),
        ("host-1", 4242, WorkerStatus::Active, SessionEpoch(1))
    );
    assert_eq!(w.labels, reg.labels);
    assert_eq!(
        w.subscriptions,
        vec![Subscription { queue_id: q1.id, capacity: 1 }, Subscription { queue_id: q2.id, capacity: 3 }]
    );
    assert!(matches!(
        store.heartbeat(id, SessionEpoch(1), LONG).await.expect("heartbeat"),
        Heartbeat::Renewed { .. }
    ));
    let live: Vec<_> =
        store.list_workers(WorkerFilter::Live).await.expect("live").into_iter().map(|w| w.id).collect();
    assert_eq!(live, vec![id]);
    assert!(store.list_workers(WorkerFilter::Expired).await.expect("expired").is_empty());
    assert_not_found(store.get_worker(WorkerId::new_v7()).await, "unknown worker");
}

/// Bad registrations are refused, and subscriptions to missing queues are `NotFound`.
pub async fn registration_is_validated(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let base = registration(WorkerId::new_v7(), &[&q], LONG);
    let mut zero = base.clone();
    zero.subscriptions[0].capacity = 0;
    assert_invalid(store.register_worker(&zero).await, "capacity 0");
    let mut twice = base.clone();
    twice.subscriptions.push(twice.subscriptions[0]);
    assert_invalid(store.register_worker(&twice).await, "duplicate subscription");
    let mut no_timeout = base.clone();
    no_timeout.session_timeout = Duration::ZERO;
    assert_invalid(store.register_worker(&no_timeout).await, "zero timeout");
    let mut long_host = base.clone();
    long_host.host = "h".repeat(300);
    assert_invalid(store.register_worker(&long_host).await, "long host");
    let mut missing = base.clone();
    missing.subscriptions[0].queue_id = helix_core::QueueId(987_654);
    assert_not_found(store.register_worker(&missing).await, "missing queue");
    assert_invalid(store.heartbeat(base.id, SessionEpoch(1), Duration::ZERO).await, "zero heartbeat timeout");
    assert!(store.list_workers(WorkerFilter::All).await.expect("list").is_empty(), "nothing was registered");
}

/// A lease runs out on the store's clock: before, the worker is live and renews; after, it is
/// listed as expired and its heartbeat is refused rather than reviving it.
pub async fn lease_expiry_follows_the_store_clock(b: &dyn Backend) {
    let store = b.store();
    let (id, session) = register(&*store, &[], SHORT).await;
    let (other, other_session) = register(&*store, &[], LONG).await;
    assert!(matches!(
        store.heartbeat(id, session, SHORT).await.expect("heartbeat"),
        Heartbeat::Renewed { .. }
    ));
    b.advance(PAST_SHORT).await;
    let expired: Vec<_> =
        store.list_workers(WorkerFilter::Expired).await.expect("list").into_iter().map(|w| w.id).collect();
    assert_eq!(expired, vec![id]);
    let live: Vec<_> =
        store.list_workers(WorkerFilter::Live).await.expect("list").into_iter().map(|w| w.id).collect();
    assert_eq!(live, vec![other]);
    assert_eq!(store.heartbeat(id, session, LONG).await.expect("late heartbeat"), Heartbeat::Expired);
    assert_eq!(store.heartbeat(id, session, LONG).await.expect("again"), Heartbeat::Expired, "not revived");
    assert!(matches!(
        store.heartbeat(other, other_session, LONG).await.expect("heartbeat"),
        Heartbeat::Renewed { .. }
    ));
    assert_eq!(store.list_workers(WorkerFilter::All).await.expect("all").len(), 2);
}

/// After deregistering, a heartbeat says so; deregistering is idempotent.
pub async fn heartbeat_after_deregister_says_so(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 1).await;
    let (id, session) = register(&*store, &[&q], LONG).await;
    store.deregister_worker(id, session).await.expect("deregister");
    store.deregister_worker(id, session).await.expect("deregister twice");
    assert_eq!(store.heartbeat(id, session, LONG).await.expect("heartbeat"), Heartbeat::Deregistered);
    let w = store.get_worker(id).await.expect("get");
    assert_eq!(w.status, WorkerStatus::Left);
    assert!(w.subscriptions.is_empty());
    assert!(store.list_workers(WorkerFilter::Live).await.expect("live").is_empty());
    assert!(
        store.list_workers(WorkerFilter::Expired).await.expect("expired").is_empty(),
        "left is not expired"
    );
}

/// A heartbeat of a worker that never registered says so.
pub async fn heartbeat_of_unknown_worker_says_so(b: &dyn Backend) {
    let store = b.store();
    assert_eq!(
        store.heartbeat(WorkerId::new_v7(), SessionEpoch(1), LONG).await.expect("heartbeat"),
        Heartbeat::Unknown
    );
    store
        .deregister_worker(WorkerId::new_v7(), SessionEpoch(1))
        .await
        .expect("deregistering an unknown worker");
}

/// Registering again under the same id once the old lease ran out starts a new session; the
/// old one is superseded.
pub async fn a_new_session_supersedes_the_old(b: &dyn Backend) {
    let store = b.store();
    let (q1, q2) = (make_queue(&*store, "d", "q1", 1).await, make_queue(&*store, "d", "q2", 1).await);
    let id = WorkerId::new_v7();
    let first = store.register_worker(&registration(id, &[&q1], SHORT)).await.expect("first");
    b.advance(PAST_SHORT).await;
    let second = store.register_worker(&registration(id, &[&q2], LONG)).await.expect("second");
    assert_eq!(second.session_epoch, first.session_epoch.next());
    assert_eq!(store.heartbeat(id, first.session_epoch, LONG).await.expect("old"), Heartbeat::Superseded);
    assert!(matches!(
        store.heartbeat(id, second.session_epoch, LONG).await.expect("new"),
        Heartbeat::Renewed { .. }
    ));
    assert_fenced(store.deregister_worker(id, first.session_epoch).await, "deregistering an old session");
    let w = store.get_worker(id).await.expect("get");
    assert_eq!(
        w.subscriptions,
        vec![Subscription { queue_id: q2.id, capacity: 1 }],
        "subscriptions replaced"
    );
    assert_eq!(w.status, WorkerStatus::Active);
}

/// The coordinator declares expired workers dead (only those); a dead worker's heartbeat is
/// refused until it registers again.
pub async fn dead_workers_are_marked_and_come_back_with_a_new_session(b: &dyn Backend) {
    let store = b.store();
    let fence = lead(&*store, "c1").await;
    let (dying, session) = register(&*store, &[], SHORT).await;
    let (alive, _) = register(&*store, &[], LONG).await;
    assert!(
        store.mark_workers_dead(&fence, &[dying, alive]).await.expect("mark").is_empty(),
        "nobody expired yet"
    );
    b.advance(PAST_SHORT).await;
    assert_eq!(store.mark_workers_dead(&fence, &[dying, alive]).await.expect("mark"), vec![dying]);
    assert!(store.mark_workers_dead(&fence, &[dying]).await.expect("mark twice").is_empty(), "only once");
    assert_eq!(store.get_worker(dying).await.expect("get").status, WorkerStatus::Dead);
    assert_eq!(store.get_worker(alive).await.expect("get").status, WorkerStatus::Active);
    assert_eq!(store.heartbeat(dying, session, LONG).await.expect("heartbeat"), Heartbeat::Expired);
    assert!(
        store.list_workers(WorkerFilter::Expired).await.expect("expired").is_empty(),
        "dead is not expired"
    );

    let lease = store.register_worker(&registration(dying, &[], LONG)).await.expect("register again");
    assert_eq!(lease.session_epoch, session.next());
    assert!(matches!(
        store.heartbeat(dying, lease.session_epoch, LONG).await.expect("heartbeat"),
        Heartbeat::Renewed { .. }
    ));
    assert_eq!(store.get_worker(dying).await.expect("get").status, WorkerStatus::Active);
}

/// A live session moves between ACTIVE and DRAINING; other statuses are refused and an
/// ended session is fenced.
pub async fn worker_status_moves_between_active_and_draining(b: &dyn Backend) {
    let store = b.store();
    let (id, session) = register(&*store, &[], SHORT).await;
    store.set_worker_status(id, session, WorkerStatus::Draining).await.expect("draining");
    assert_eq!(store.get_worker(id).await.expect("get").status, WorkerStatus::Draining);
    assert!(
        matches!(store.heartbeat(id, session, SHORT).await.expect("heartbeat"), Heartbeat::Renewed { .. }),
        "draining renews"
    );
    let live = store.list_workers(WorkerFilter::Live).await.expect("live");
    assert_eq!(live.iter().map(|w| w.id).collect::<Vec<_>>(), vec![id], "draining workers are live");
    store.set_worker_status(id, session, WorkerStatus::Active).await.expect("active");
    assert_invalid(store.set_worker_status(id, session, WorkerStatus::Dead).await, "DEAD by hand");
    assert_invalid(store.set_worker_status(id, session, WorkerStatus::Left).await, "LEFT by hand");
    assert_fenced(store.set_worker_status(id, session.next(), WorkerStatus::Draining).await, "wrong session");
    b.advance(PAST_SHORT).await;
    assert_fenced(store.set_worker_status(id, session, WorkerStatus::Draining).await, "expired session");
}

/// A renewal says whether the assignment version of a queue the worker subscribes to moved
/// since the session's previous renewal: on the first renewal of a session with
/// subscriptions, after any assignment write to a subscribed queue (a grant, a revocation, a
/// handoff), never for unsubscribed queues nor for a worker without subscriptions.
pub async fn a_heartbeat_says_when_subscribed_assignments_moved(b: &dyn Backend) {
    let store = b.store();
    let (q1, q2) = (make_queue(&*store, "d", "q1", 2).await, make_queue(&*store, "d", "q2", 2).await);
    let other_queue = make_queue(&*store, "d", "q3", 1).await;
    let (id, session) = register(&*store, &[&q1, &q2], LONG).await;
    let (idle, idle_session) = register(&*store, &[], LONG).await;
    let fence = lead(&*store, "main").await;
    let moved = |answer: Heartbeat| match answer {
        Heartbeat::Renewed { assignments_moved } => assignments_moved,
        other => panic!("not renewed: {other:?}"),
    };
    let beat = || async { moved(store.heartbeat(id, session, LONG).await.expect("heartbeat")) };

    assert!(beat().await, "the first renewal of a session reports a move");
    assert!(!beat().await, "nothing moved since");
    store.apply_plan(&fence, other_queue.id, &[grant(0, 0, idle)]).await.expect("grant elsewhere");
    assert!(!beat().await, "a queue it does not serve");
    store.apply_plan(&fence, q1.id, &[grant(0, 0, id)]).await.expect("grant");
    assert!(beat().await, "a grant in a subscribed queue");
    assert!(!beat().await, "reported once");
    store.apply_plan(&fence, q2.id, &[grant(1, 0, id)]).await.expect("grant");
    store.apply_plan(&fence, q2.id, &[revoke(1, 1, idle)]).await.expect("revoke");
    assert!(beat().await, "two writes, one report");
    assert!(!beat().await);
    store.handoff(q2.id, PartitionId(1), id, Epoch(1)).await.expect("handoff");
    assert!(beat().await, "a handoff");
    assert!(!moved(store.heartbeat(idle, idle_session, LONG).await.expect("heartbeat")), "no subscriptions");

    store.deregister_worker(id, session).await.expect("deregister");
    let again = store.register_worker(&registration(id, &[&q1], LONG)).await.expect("a new session");
    assert!(moved(store.heartbeat(id, again.session_epoch, LONG).await.expect("heartbeat")), "a new session");
    assert!(!moved(store.heartbeat(id, again.session_epoch, LONG).await.expect("heartbeat")));
}

// ---- coordinator lease --------------------------------------------------------------------

/// The term starts at 1, stays the same across renewals, and grows by one when the lease
/// changes hands; an acquisition under the holder's id while its lease runs is refused.
pub async fn term_grows_only_on_a_change_of_holder(b: &dyn Backend) {
    let store = b.store();
    let c = cluster("main");
    let (a, other) = (WorkerId::new_v7(), WorkerId::new_v7());
    assert_eq!(store.get_lease(&c).await.expect("get"), None);
    assert_eq!(store.acquire_lease(&c, a, LONG).await.expect("acquire"), Some(Term(1)));
    assert_eq!(store.acquire_lease(&c, a, LONG).await.expect("again"), None, "one process per term");
    assert_eq!(store.acquire_lease(&c, other, LONG).await.expect("contender"), None);
    let fence_a = CoordinatorFence { cluster: c.clone(), holder: a, term: Term(1) };
    for _ in 0..5 {
        store.renew_lease(&fence_a, LONG).await.expect("renew");
    }
    let lease = store.get_lease(&c).await.expect("get").expect("exists");
    assert_eq!((lease.holder, lease.term, lease.expired), (Some(a), Term(1), false));

    store.release_lease(&fence_a).await.expect("release");
    store.release_lease(&fence_a).await.expect("release twice");
    assert!(store.get_lease(&c).await.expect("get").expect("exists").expired, "released lease is free");
    assert_eq!(store.acquire_lease(&c, other, LONG).await.expect("take over"), Some(Term(2)));
    assert_fenced(store.renew_lease(&fence_a, LONG).await, "renewal by the old holder");
    store.release_lease(&fence_a).await.expect("releasing a lost lease does nothing");
    let lease = store.get_lease(&c).await.expect("get").expect("exists");
    assert_eq!((lease.holder, lease.term, lease.expired), (Some(other), Term(2), false));
    // Another cluster's lease is independent.
    assert_eq!(store.acquire_lease(&cluster("other"), a, LONG).await.expect("other cluster"), Some(Term(1)));
}

/// A lease that runs out on the store's clock can be taken by another process with the next
/// term; the old holder's renewal is then fenced.
pub async fn an_expired_lease_changes_hands_with_a_higher_term(b: &dyn Backend) {
    let store = b.store();
    let c = cluster("main");
    let (a, other) = (WorkerId::new_v7(), WorkerId::new_v7());
    let term = store.acquire_lease(&c, a, SHORT).await.expect("acquire").expect("free");
    assert_eq!(store.acquire_lease(&c, other, SHORT).await.expect("too early"), None);
    b.advance(PAST_SHORT).await;
    assert!(store.get_lease(&c).await.expect("get").expect("exists").expired);
    let fence_a = CoordinatorFence { cluster: c.clone(), holder: a, term };
    assert_fenced(store.renew_lease(&fence_a, SHORT).await, "renewing an expired lease");
    assert_eq!(store.acquire_lease(&c, other, LONG).await.expect("take over"), Some(term.next()));
    assert_eq!(store.acquire_lease(&c, a, LONG).await.expect("old holder"), None);
}

/// Contenders racing for a free lease get exactly one leader, round after round: both for a
/// cluster that never had a leader and for a lease that was just released.
pub async fn racing_contenders_get_exactly_one_leader(b: &dyn Backend) {
    let store = b.store();
    let rounds = if b.real_time() { 25 } else { 5 };
    for round in 0..rounds {
        let c = cluster(&format!("race-{round}"));
        let first = race_for_lease(&store, &c, round).await;
        assert_eq!(first.term, Term(1), "round {round}");
        store.release_lease(&first).await.expect("release");
        let second = race_for_lease(&store, &c, round).await;
        assert_eq!(second.term, Term(2), "round {round}: the lease changed hands once");
    }
}

async fn race_for_lease(store: &Arc<dyn Store>, c: &ClusterName, round: usize) -> CoordinatorFence {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (store, c) = (Arc::clone(store), c.clone());
            tokio::spawn(async move {
                let me = WorkerId::new_v7();
                store.acquire_lease(&c, me, LONG).await.map(|t| t.map(|t| (me, t)))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(win) = task.await.expect("task").expect("acquire") {
            winners.push(win);
        }
    }
    assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
    let (holder, term) = winners[0];
    let lease = store.get_lease(c).await.expect("get").expect("exists");
    assert_eq!((lease.holder, lease.term, lease.expired), (Some(holder), term, false));
    CoordinatorFence { cluster: c.clone(), holder, term }
}

/// Once the lease has changed hands, the old leader's plans and death sentences are fenced
/// and change nothing.
pub async fn a_stale_term_cannot_write(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 4).await;
    let (w, _) = register(&*store, &[&q], LONG).await;
    let old = lead(&*store, "main").await;
    store.apply_plan(&old, q.id, &[grant(0, 0, w)]).await.expect("plan under the current term");
    store.release_lease(&old).await.expect("release");
    let new_holder = WorkerId::new_v7();
    let term = store.acquire_lease(&old.cluster, new_holder, LONG).await.expect("acquire").expect("free");
    assert!(term > old.term);

    let before = store.assignments(q.id).await.expect("read");
    assert_fenced(store.apply_plan(&old, q.id, &[grant(1, 0, w)]).await, "stale plan");
    assert_fenced(store.mark_workers_dead(&old, &[w]).await, "stale death sentence");
    assert_eq!(store.assignments(q.id).await.expect("read"), before, "nothing changed");
    let forged = CoordinatorFence { term, ..old.clone() };
    assert_fenced(store.apply_plan(&forged, q.id, &[grant(1, 0, w)]).await, "right term, wrong holder");
    let current = CoordinatorFence { cluster: old.cluster.clone(), holder: new_holder, term };
    assert_eq!(store.apply_plan(&current, q.id, &[grant(1, 0, w)]).await.expect("current").applied, 1);
}

// ---- fences: every condition of every fence ------------------------------------------------
//
// Each fence is a conjunction (coordinator: cluster, holder, term, expiry; owner: queue,
// partition, owner, epoch, state; session: worker, session epoch, status, expiry). The cases
// below give each condition a write that only that condition refuses, so that dropping it from
// any backend fails a case (`scripts/mutants-fences.sh` checks this).

/// How far [`wait_until`] lets the store's clock move between two looks at its condition.
const STEP: Duration = Duration::from_millis(100);
/// How long [`wait_until`] lets time pass before it fails: generous against a busy machine.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Lets time pass on the store's clock, a step at a time, until `done` holds; panics naming
/// `what` when it still does not after [`WAIT_LIMIT`].
async fn wait_until(b: &dyn Backend, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let mut waited = Duration::ZERO;
    while !done().await {
        assert!(waited < WAIT_LIMIT, "{what}: still not so after {waited:?}");
        b.advance(STEP).await;
        waited += STEP;
    }
}

async fn lease_ran_out(store: &dyn Store, c: &ClusterName) -> bool {
    store.get_lease(c).await.expect("get_lease").is_some_and(|l| l.expired)
}

async fn session_ran_out(store: &dyn Store, worker: WorkerId) -> bool {
    let expired = store.list_workers(WorkerFilter::Expired).await.expect("list_workers");
    expired.iter().any(|w| w.id == worker)
}

/// Everything a refused write must leave as it was: the rows of some queues, every worker,
/// the leases of some clusters and the event log.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: Vec<crate::QueueAssignments>,
    workers: Vec<crate::WorkerRecord>,
    leases: Vec<Option<crate::LeaseRecord>>,
    last_event: Option<u64>,
}

impl Snapshot {
    async fn take(store: &dyn Store, queues: &[&QueueRecord], clusters: &[&ClusterName]) -> Self {
        let mut rows = Vec::new();
        for q in queues {
            rows.push(store.assignments(q.id).await.expect("assignments"));
        }
        let mut leases = Vec::new();
        for c in clusters {
            leases.push(store.get_lease(c).await.expect("get_lease"));
        }
        Self {
            rows,
            workers: store.list_workers(WorkerFilter::All).await.expect("list_workers"),
            leases,
            last_event: store.events_since(0, 100_000).await.expect("events").last().map(|e| e.id),
        }
    }

    async fn assert_unchanged(
        &self,
        store: &dyn Store,
        queues: &[&QueueRecord],
        clusters: &[&ClusterName],
        what: &str,
    ) {
        let now = Self::take(store, queues, clusters).await;
        assert_eq!(&now, self, "{what} changed something");
    }
}

/// A leader whose lease ran out and that took it again under the same identity (term + 1)
/// cannot write under its old term: a plan or a death sentence computed before is `Fenced`,
/// a renewal is `Fenced`, a release does nothing (the new term's lease stays), and none of
/// them changes anything. The holder and expiry conditions all hold here: only the term
/// refuses these writes.
pub async fn the_same_holder_under_an_old_term_cannot_write(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 4).await;
    let (w, _) = register(&*store, &[&q], LONG).await;
    let c = cluster("main");
    let me = WorkerId::new_v7();
    let old_term = store.acquire_lease(&c, me, SHORT).await.expect("acquire").expect("free lease");
    let old = CoordinatorFence { cluster: c.clone(), holder: me, term: old_term };
    store.apply_plan(&old, q.id, &[grant(0, 0, w)]).await.expect("plan under the current term");
    let (dying, _) = register(&*store, &[], SHORT).await;
    wait_until(b, "the lease and the short session run out", async || {
        lease_ran_out(&*store, &c).await && session_ran_out(&*store, dying).await
    })
    .await;
    let term = store.acquire_lease(&c, me, LONG).await.expect("acquire again").expect("a lease that ran out");
    assert_eq!(term, old_term.next(), "taking a lease that ran out starts a new term, even for its holder");
    let elected: Vec<_> = store
        .events_since(0, 1_000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == EventKind::LeaderElected)
        .map(|e| (e.worker, e.term))
        .collect();
    assert_eq!(
        elected,
        vec![(Some(me), Some(old_term)), (Some(me), Some(term))],
        "each new term is an election"
    );
    let current = CoordinatorFence { term, ..old.clone() };

    let before = Snapshot::take(&*store, &[&q], &[&c]).await;
    assert_fenced(store.apply_plan(&old, q.id, &[grant(1, 0, w)]).await, "plan under the old term");
    assert_fenced(store.mark_workers_dead(&old, &[dying]).await, "death sentence under the old term");
    assert_fenced(store.renew_lease(&old, LONG).await, "renewal under the old term");
    store.release_lease(&old).await.expect("a release under the old term does nothing");
    before.assert_unchanged(&*store, &[&q], &[&c], "writes under the old term").await;

    assert_eq!(store.apply_plan(&current, q.id, &[grant(1, 0, w)]).await.expect("plan").applied, 1);
    assert_eq!(store.mark_workers_dead(&current, &[dying]).await.expect("mark"), vec![dying]);
    store.renew_lease(&current, LONG).await.expect("renewal under the current term");
    let lease = store.get_lease(&c).await.expect("get").expect("exists");
    assert_eq!((lease.holder, lease.term, lease.expired), (Some(me), term, false));
}

/// A lease that ran out fences its holder even while nobody else has taken it: plans, death
/// sentences and renewals are `Fenced`, a release does nothing, none changes anything. Only
/// the expiry refuses these writes.
pub async fn a_lease_that_ran_out_cannot_write(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (w, _) = register(&*store, &[&q], LONG).await;
    let c = cluster("main");
    let me = WorkerId::new_v7();
    let term = store.acquire_lease(&c, me, SHORT).await.expect("acquire").expect("free lease");
    let fence = CoordinatorFence { cluster: c.clone(), holder: me, term };
    let (dying, _) = register(&*store, &[], SHORT).await;
    // From the first moment the store calls the lease run out (on a manual clock, the very
    // instant it ends), its holder is fenced.
    wait_until(b, "the lease runs out", async || lease_ran_out(&*store, &c).await).await;

    let before = Snapshot::take(&*store, &[&q], &[&c]).await;
    assert_fenced(store.apply_plan(&fence, q.id, &[grant(0, 0, w)]).await, "plan after the lease ran out");
    assert_fenced(store.mark_workers_dead(&fence, &[dying]).await, "death sentence after the lease ran out");
    assert_fenced(store.renew_lease(&fence, LONG).await, "renewal after the lease ran out");
    store.release_lease(&fence).await.expect("releasing a lease that ran out does nothing");
    before.assert_unchanged(&*store, &[&q], &[&c], "writes after the lease ran out").await;
}

/// A fence names one cluster's lease: a holder of the same term in another cluster, or
/// another holder in this one, cannot plan, sentence, renew or release with it. Only the
/// holder (and the cluster) conditions refuse these writes.
pub async fn a_fence_holds_for_its_own_holder_and_cluster_only(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (w, _) = register(&*store, &[&q], LONG).await;
    let (dying, _) = register(&*store, &[], SHORT).await;
    let (main, second) = (cluster("main"), cluster("second"));
    let (leader, other) = (WorkerId::new_v7(), WorkerId::new_v7());
    let term = store.acquire_lease(&main, leader, LONG).await.expect("acquire").expect("free lease");
    let other_term = store.acquire_lease(&second, other, LONG).await.expect("acquire").expect("free lease");
    assert_eq!(term, other_term, "both clusters start at the same term");
    wait_until(b, "the short session runs out", async || session_ran_out(&*store, dying).await).await;

    // `other` holds a running lease of this term, but in the other cluster.
    let forged = CoordinatorFence { cluster: main.clone(), holder: other, term };
    let before = Snapshot::take(&*store, &[&q], &[&main, &second]).await;
    assert_fenced(store.apply_plan(&forged, q.id, &[grant(0, 0, w)]).await, "plan by another holder");
    assert_fenced(store.mark_workers_dead(&forged, &[dying]).await, "death sentence by another holder");
    assert_fenced(store.renew_lease(&forged, LONG).await, "renewal by another holder");
    store.release_lease(&forged).await.expect("a release by another holder does nothing");
    before.assert_unchanged(&*store, &[&q], &[&main, &second], "writes by another holder").await;

    let fence = CoordinatorFence { cluster: main.clone(), holder: leader, term };
    assert_eq!(store.apply_plan(&fence, q.id, &[grant(0, 0, w)]).await.expect("plan").applied, 1);
}

/// Handoff, release and failure are each refused to a worker that does not own the row (at
/// the row's epoch), to the owner under an earlier epoch, and (handoff) on a row that is not
/// being revoked; the allowed write changes its own row only.
pub async fn every_owner_write_checks_owner_epoch_and_state(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 3).await;
    let other_q = make_queue(&*store, "d", "other", 3).await;
    let (owner, _) = register(&*store, &[&q, &other_q], LONG).await;
    let (stranger, _) = register(&*store, &[&q, &other_q], LONG).await;
    let fence = lead(&*store, "main").await;
    for queue in [&q, &other_q] {
        let first: Vec<_> = (0..3).map(|p| grant(p, 0, owner)).collect();
        store.apply_plan(&fence, queue.id, &first).await.expect("grant");
        // Granted again to the same owner: epoch 2, so epoch 1 is the owner's own stale epoch.
        let again: Vec<_> = (0..3).map(|p| grant(p, 1, owner)).collect();
        store.apply_plan(&fence, queue.id, &again).await.expect("grant again");
    }
    store.apply_plan(&fence, q.id, &[revoke(0, 2, stranger)]).await.expect("revoke");
    store.apply_plan(&fence, other_q.id, &[revoke(0, 2, stranger)]).await.expect("revoke");
    let detail = serde_json::json!({ "failures": 3 });
    let (p0, p1, p2) = (PartitionId(0), PartitionId(1), PartitionId(2));

    let before = Snapshot::take(&*store, &[&q, &other_q], &[]).await;
    assert_fenced(store.handoff(q.id, p0, stranger, Epoch(2)).await, "handoff by a stranger");
    assert_fenced(store.release_partition(q.id, p1, stranger, Epoch(2)).await, "release by a stranger");
    assert_fenced(store.fail_partition(q.id, p2, stranger, Epoch(2), &detail).await, "failure by a stranger");
    assert_fenced(store.handoff(q.id, p0, owner, Epoch(1)).await, "handoff under a stale epoch");
    assert_fenced(store.release_partition(q.id, p1, owner, Epoch(1)).await, "release under a stale epoch");
    assert_fenced(
        store.fail_partition(q.id, p2, owner, Epoch(1), &detail).await,
        "failure under a stale epoch",
    );
    assert_fenced(store.handoff(q.id, p1, owner, Epoch(2)).await, "handoff of a row not being revoked");
    before.assert_unchanged(&*store, &[&q, &other_q], &[], "refused owner writes").await;

    // Each allowed write changes its own row and nothing else.
    let check = async |done: &[(u32, Option<WorkerId>, u64, AssignmentState)]| {
        let rows = store.assignments(q.id).await.expect("read").rows;
        for (p, owner, epoch, state) in done {
            let row = &rows[*p as usize];
            assert_eq!((row.owner, row.epoch, row.state), (*owner, Epoch(*epoch), *state), "partition {p}");
        }
        let others = store.assignments(other_q.id).await.expect("read");
        assert_eq!(others, before.rows[1], "the other queue is untouched");
    };
    let (assigned, revoking) = (AssignmentState::Assigned, AssignmentState::Revoking);
    assert_eq!(store.release_partition(q.id, p1, owner, Epoch(2)).await.expect("release"), Epoch(3));
    check(&[(0, Some(owner), 2, revoking), (1, None, 3, assigned), (2, Some(owner), 2, assigned)]).await;
    assert_eq!(store.fail_partition(q.id, p2, owner, Epoch(2), &detail).await.expect("fail"), Epoch(3));
    check(&[(0, Some(owner), 2, revoking), (2, None, 3, AssignmentState::Failed)]).await;
    assert_eq!(store.handoff(q.id, p0, owner, Epoch(2)).await.expect("handoff"), Epoch(3));
    check(&[(0, Some(stranger), 3, assigned), (1, None, 3, assigned), (2, None, 3, AssignmentState::Failed)])
        .await;
}

/// Heartbeats and status changes are refused to a session that is over, whoever else is
/// live: an unknown worker, a deregistered one and an expired one, each while another
/// worker holds a live session of the same number; and none of them renews or changes
/// anyone.
pub async fn every_session_write_checks_worker_session_status_and_expiry(b: &dyn Backend) {
    let store = b.store();
    let (live, live_session) = register(&*store, &[], LONG).await;
    let (left, left_session) = register(&*store, &[], LONG).await;
    let (dying, dying_session) = register(&*store, &[], SHORT).await;
    assert_eq!((left_session, dying_session), (live_session, live_session), "first sessions all");
    store.deregister_worker(left, left_session).await.expect("deregister");

    // Right away, before any time passes: only the status refuses these.
    let before = Snapshot::take(&*store, &[], &[]).await;
    assert_eq!(store.heartbeat(left, left_session, LONG).await.expect("heartbeat"), Heartbeat::Deregistered);
    assert_fenced(
        store.set_worker_status(left, left_session, WorkerStatus::Active).await,
        "status after leaving",
    );
    let unknown = WorkerId::new_v7();
    assert_eq!(store.heartbeat(unknown, live_session, LONG).await.expect("heartbeat"), Heartbeat::Unknown);
    assert_fenced(
        store.set_worker_status(unknown, live_session, WorkerStatus::Draining).await,
        "unknown worker",
    );
    assert_fenced(
        store.set_worker_status(live, live_session.next(), WorkerStatus::Draining).await,
        "a session that never began",
    );
    before.assert_unchanged(&*store, &[], &[], "refused session writes").await;

    // Up to the instant its lease ends, a session listed live is not declared dead. Only a
    // manual clock can stop at that instant; on real time the lease may end between the two
    // calls.
    let fence = lead(&*store, "main").await;
    wait_until(b, "the short session runs out", async || {
        let live = store.list_workers(WorkerFilter::Live).await.expect("list");
        if !b.real_time() && live.iter().any(|w| w.id == dying) {
            let marked = store.mark_workers_dead(&fence, &[dying]).await.expect("mark");
            assert!(marked.is_empty(), "a session listed live was declared dead");
        }
        session_ran_out(&*store, dying).await
    })
    .await;
    let before = Snapshot::take(&*store, &[], &[]).await;
    assert_eq!(store.heartbeat(dying, dying_session, LONG).await.expect("heartbeat"), Heartbeat::Expired);
    assert_fenced(
        store.set_worker_status(dying, dying_session, WorkerStatus::Draining).await,
        "expired session",
    );
    before.assert_unchanged(&*store, &[], &[], "refused session writes after expiry").await;

    store.set_worker_status(live, live_session, WorkerStatus::Draining).await.expect("live session");
    let statuses: Vec<_> =
        store.list_workers(WorkerFilter::All).await.expect("list").iter().map(|w| (w.id, w.status)).collect();
    let mut expected =
        vec![(live, WorkerStatus::Draining), (left, WorkerStatus::Left), (dying, WorkerStatus::Active)];
    expected.sort();
    assert_eq!(statuses, expected, "only the live session changed");

    // A session that has just left is refused even within the tick of the store's clock in
    // which it left, where its ended lease still reads as running: there only the status
    // refuses it. A clock with coarse ticks (SQLite's milliseconds) makes that tick likely.
    for _ in 0..50 {
        let (id, session) = register(&*store, &[], LONG).await;
        store.deregister_worker(id, session).await.expect("deregister");
        assert_eq!(store.heartbeat(id, session, LONG).await.expect("heartbeat"), Heartbeat::Deregistered);
        assert_fenced(
            store.set_worker_status(id, session, WorkerStatus::Active).await,
            "right after leaving",
        );
    }
}

/// A plan's events say whose partition moved: a grant that takes over names the previous
/// owner in its detail; a release names the owner it released as its worker.
pub async fn plan_events_name_the_previous_owner(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (dying, _) = register(&*store, &[&q], SHORT).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, dying), grant(1, 0, dying)]).await.expect("grant");
    wait_until(b, "the short session runs out", async || session_ran_out(&*store, dying).await).await;
    let (heir, _) = register(&*store, &[&q], LONG).await;
    let release = PlanChange::Release { partition: PartitionId(1), expected_epoch: Epoch(1) };
    store.apply_plan(&fence, q.id, &[grant(0, 1, heir), release]).await.expect("take over");
    let events = store.events_since(0, 1_000).await.expect("events");
    let [.., granted, released] = events.as_slice() else { panic!("too few events: {events:?}") };
    assert_eq!((granted.kind, granted.worker), (EventKind::PartitionGranted, Some(heir)));
    assert_eq!(granted.detail["previous_owner"], serde_json::json!(dying.to_string()));
    assert_eq!((released.kind, released.worker), (EventKind::PartitionReleased, Some(dying)));
    assert_eq!(released.detail.get("previous_owner"), None, "a release has no previous owner: {released:?}");
}

// ---- assignments --------------------------------------------------------------------------

/// Grants bump the epoch and the version once per plan; revocations mark the row and keep the
/// epoch; cancellations undo them.
pub async fn plans_grant_revoke_and_cancel(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 4).await;
    let (w1, _) = register(&*store, &[&q], LONG).await;
    let (w2, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;

    let all: Vec<_> = (0..4).map(|p| grant(p, 0, w1)).collect();
    let outcome = store.apply_plan(&fence, q.id, &all).await.expect("grant all");
    assert_eq!((outcome.applied, outcome.skipped.len(), outcome.assignment_version), (4, 0, 1));
    let rows = store.assignments(q.id).await.expect("read");
    assert_eq!(rows.assignment_version, 1);
    assert!(
        rows.rows
            .iter()
            .all(|r| r.owner == Some(w1) && r.epoch == Epoch(1) && r.coordinator_term == fence.term)
    );
    assert_eq!(store.get_queue_by_id(q.id).await.expect("queue").assignment_version, 1);

    let outcome =
        store.apply_plan(&fence, q.id, &[revoke(0, 1, w2), revoke(1, 1, w2)]).await.expect("revoke");
    assert_eq!((outcome.applied, outcome.assignment_version), (2, 2));
    let rows = store.assignments(q.id).await.expect("read").rows;
    assert_eq!(
        (rows[0].owner, rows[0].epoch, rows[0].state, rows[0].target),
        (Some(w1), Epoch(1), AssignmentState::Revoking, Some(w2))
    );
    assert_eq!(rows[2].state, AssignmentState::Assigned);

    let cancel = PlanChange::CancelRevoke {
        partition: PartitionId(1),
        expected_epoch: Epoch(1),
        reason: CancelReason::TimedOut,
    };
    let outcome = store.apply_plan(&fence, q.id, &[cancel]).await.expect("cancel");
    assert_eq!(outcome.applied, 1);
    let row = &store.assignments(q.id).await.expect("read").rows[1];
    assert_eq!(
        (row.owner, row.epoch, row.state, row.target),
        (Some(w1), Epoch(1), AssignmentState::Assigned, None)
    );

    let owned: Vec<_> =
        store.assignments_of(w1).await.expect("of w1").into_iter().map(|r| r.partition.0).collect();
    assert_eq!(owned, vec![0, 1, 2, 3]);
    assert!(store.assignments_of(w2).await.expect("of w2").is_empty(), "a target does not own");

    let empty = store.apply_plan(&fence, q.id, &[]).await.expect("empty plan");
    assert_eq!((empty.applied, empty.assignment_version), (0, 3), "nothing applied, version unchanged");
}

/// Changes whose row moved on, or that would take a partition from a live owner, are
/// skipped with the reason while the rest of the plan applies.
pub async fn plans_skip_stale_epochs_and_live_owners(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 4).await;
    let (w1, _) = register(&*store, &[&q], LONG).await;
    let (w2, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, w1), grant(1, 0, w1)]).await.expect("setup");

    let plan = [
        grant(0, 1, w2), // live owner
        grant(1, 0, w2), // stale epoch
        grant(2, 0, w2), // fine
        PlanChange::CancelRevoke {
            partition: PartitionId(3),
            expected_epoch: Epoch(0),
            reason: CancelReason::NoLongerNeeded,
        }, // not revoking
        revoke(1, 1, w1), // hmm: duplicate partition
    ];
    assert_invalid(store.apply_plan(&fence, q.id, &plan).await, "a partition twice");
    let outcome = store.apply_plan(&fence, q.id, &plan[..4]).await.expect("plan");
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        outcome.skipped,
        vec![
            (PartitionId(0), SkipReason::OwnerAlive),
            (PartitionId(1), SkipReason::StaleEpoch { actual: Epoch(1) }),
            (PartitionId(3), SkipReason::WrongState),
        ]
    );
    let rows = store.assignments(q.id).await.expect("read").rows;
    assert_eq!(rows[0].owner, Some(w1));
    assert_eq!(rows[2].owner, Some(w2));
    let revoke_self =
        store.apply_plan(&fence, q.id, &[revoke(0, 1, w1), revoke(3, 0, w1)]).await.expect("plan");
    assert_eq!(
        revoke_self.skipped,
        vec![(PartitionId(0), SkipReason::WrongState), (PartitionId(3), SkipReason::WrongState)]
    );
    let regrant = store.apply_plan(&fence, q.id, &[grant(0, 1, w1)]).await.expect("re-grant to the owner");
    assert_eq!(regrant.applied, 1);
    assert_eq!(
        store.assignments(q.id).await.expect("read").rows[0].epoch,
        Epoch(2),
        "every grant moves the epoch"
    );
}

/// A partition whose owner's lease ran out can be granted (and released) at once, even
/// before the owner is declared dead.
pub async fn grants_take_over_partitions_of_expired_owners(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (dying, _) = register(&*store, &[&q], SHORT).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, dying), grant(1, 0, dying)]).await.expect("setup");
    b.advance(PAST_SHORT).await;
    let (heir, _) = register(&*store, &[&q], LONG).await;
    let release = PlanChange::Release { partition: PartitionId(1), expected_epoch: Epoch(1) };
    let outcome = store.apply_plan(&fence, q.id, &[grant(0, 1, heir), release]).await.expect("take over");
    assert_eq!((outcome.applied, outcome.skipped.len()), (2, 0));
    let rows = store.assignments(q.id).await.expect("read").rows;
    assert_eq!((rows[0].owner, rows[0].epoch), (Some(heir), Epoch(2)));
    assert_eq!((rows[1].owner, rows[1].epoch), (None, Epoch(2)));
    let release_unowned = PlanChange::Release { partition: PartitionId(1), expected_epoch: Epoch(2) };
    let outcome = store.apply_plan(&fence, q.id, &[release_unowned]).await.expect("release again");
    assert_eq!(outcome.skipped, vec![(PartitionId(1), SkipReason::WrongState)]);
}

/// The owner of a revoked partition hands it to the target with the next epoch, exactly once.
pub async fn handoff_moves_ownership_once(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (w1, _) = register(&*store, &[&q], LONG).await;
    let (w2, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, w1), grant(1, 0, w1)]).await.expect("grant");
    assert_fenced(store.handoff(q.id, PartitionId(0), w1, Epoch(1)).await, "handoff without a revocation");
    store.apply_plan(&fence, q.id, &[revoke(0, 1, w2)]).await.expect("revoke");
    let version = store.assignments(q.id).await.expect("read").assignment_version;

    assert_fenced(store.handoff(q.id, PartitionId(0), w2, Epoch(1)).await, "handoff by the target");
    assert_eq!(store.handoff(q.id, PartitionId(0), w1, Epoch(1)).await.expect("handoff"), Epoch(2));
    assert_fenced(store.handoff(q.id, PartitionId(0), w1, Epoch(1)).await, "second handoff");
    let rows = store.assignments(q.id).await.expect("read");
    assert_eq!(rows.assignment_version, version + 1);
    let row = &rows.rows[0];
    assert_eq!(
        (row.owner, row.epoch, row.state, row.target),
        (Some(w2), Epoch(2), AssignmentState::Assigned, None)
    );

    assert_eq!(store.release_partition(q.id, PartitionId(1), w1, Epoch(1)).await.expect("release"), Epoch(2));
    let row = &store.assignments(q.id).await.expect("read").rows[1];
    assert_eq!((row.owner, row.epoch), (None, Epoch(2)));
    assert_fenced(store.release_partition(q.id, PartitionId(1), w1, Epoch(1)).await, "second release");
}

/// A retargeted revocation keeps the instant it began (so the revoke timeout is not
/// extended), a revocation cannot be started twice, and a revocation without a target ends
/// with the owner releasing the partition.
pub async fn retargeting_keeps_the_revocation_start_and_no_target_releases(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (w1, _) = register(&*store, &[&q], LONG).await;
    let (w2, _) = register(&*store, &[&q], LONG).await;
    let (w3, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, w1), grant(1, 0, w1)]).await.expect("grant");
    store.apply_plan(&fence, q.id, &[revoke(0, 1, w2)]).await.expect("revoke");
    let began = store.assignments(q.id).await.expect("read").rows[0].updated_at;
    b.advance(Duration::from_millis(50)).await;

    let outcome = store.apply_plan(&fence, q.id, &[revoke(0, 1, w3)]).await.expect("revoke twice");
    assert_eq!(outcome.skipped, vec![(PartitionId(0), SkipReason::WrongState)], "revoking a revoking row");
    let retarget = PlanChange::Retarget { partition: PartitionId(0), expected_epoch: Epoch(1), to: Some(w3) };
    let outcome = store.apply_plan(&fence, q.id, &[retarget]).await.expect("retarget");
    assert_eq!(outcome.applied, 1);
    let row = &store.assignments(q.id).await.expect("read").rows[0];
    assert_eq!((row.state, row.target, row.epoch), (AssignmentState::Revoking, Some(w3), Epoch(1)));
    assert_eq!(row.updated_at, began, "a retarget keeps the start of the revocation");
    let not_revoking =
        PlanChange::Retarget { partition: PartitionId(1), expected_epoch: Epoch(1), to: Some(w3) };
    let outcome = store.apply_plan(&fence, q.id, &[not_revoking]).await.expect("retarget an assigned row");
    assert_eq!(outcome.skipped, vec![(PartitionId(1), SkipReason::WrongState)]);

    let to_nobody = PlanChange::Revoke { partition: PartitionId(1), expected_epoch: Epoch(1), to: None };
    assert_eq!(store.apply_plan(&fence, q.id, &[to_nobody]).await.expect("revoke to nobody").applied, 1);
    let row = &store.assignments(q.id).await.expect("read").rows[1];
    assert!(row.updated_at > began, "a new revocation starts now");
    assert_eq!((row.state, row.target), (AssignmentState::Revoking, None));
    assert_eq!(
        store.handoff(q.id, PartitionId(1), w1, Epoch(1)).await.expect("hand off to nobody"),
        Epoch(2)
    );
    let row = &store.assignments(q.id).await.expect("read").rows[1];
    assert_eq!((row.owner, row.epoch, row.state), (None, Epoch(2), AssignmentState::Assigned));
}

/// After a partition moved on (a new epoch), the previous owner can neither hand it off nor
/// release it.
pub async fn a_stale_epoch_cannot_hand_off_or_release(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 1).await;
    let (old, _) = register(&*store, &[&q], SHORT).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, old)]).await.expect("grant");
    b.advance(PAST_SHORT).await;
    let (heir, _) = register(&*store, &[&q], LONG).await;
    store.apply_plan(&fence, q.id, &[grant(0, 1, heir)]).await.expect("take over");
    store.apply_plan(&fence, q.id, &[revoke(0, 2, old)]).await.expect("revoke towards the old owner");
    assert_fenced(store.handoff(q.id, PartitionId(0), old, Epoch(1)).await, "old owner, old epoch");
    assert_fenced(store.handoff(q.id, PartitionId(0), old, Epoch(2)).await, "old owner, new epoch");
    assert_fenced(store.release_partition(q.id, PartitionId(0), old, Epoch(1)).await, "old owner releases");
    assert_fenced(store.handoff(q.id, PartitionId(0), heir, Epoch(1)).await, "new owner, old epoch");
    let row = &store.assignments(q.id).await.expect("read").rows[0];
    assert_eq!((row.owner, row.epoch, row.state), (Some(heir), Epoch(2), AssignmentState::Revoking));
    assert_fenced(store.handoff(q.id, PartitionId(5), heir, Epoch(2)).await, "missing partition");
}

/// The owner marks a partition failed (fenced by its epoch); no plan touches the failed row;
/// an operator's reset makes it grantable again; resetting what is not failed changes nothing.
pub async fn a_failed_partition_stays_unowned_until_reset(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (w1, _) = register(&*store, &[&q], LONG).await;
    let (w2, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, w1), grant(1, 0, w1)]).await.expect("grant");
    let detail = serde_json::json!({ "failures": 3, "last_error": "boom" });

    assert_fenced(store.fail_partition(q.id, PartitionId(0), w2, Epoch(1), &detail).await, "not the owner");
    assert_fenced(store.fail_partition(q.id, PartitionId(0), w1, Epoch(0), &detail).await, "stale epoch");
    let version = store.assignments(q.id).await.expect("read").assignment_version;
    assert_eq!(
        store.fail_partition(q.id, PartitionId(0), w1, Epoch(1), &detail).await.expect("fail"),
        Epoch(2)
    );
    let rows = store.assignments(q.id).await.expect("read");
    assert_eq!(rows.assignment_version, version + 1);
    let row = &rows.rows[0];
    assert_eq!(
        (row.owner, row.epoch, row.state, row.target),
        (None, Epoch(2), AssignmentState::Failed, None)
    );
    assert_fenced(store.release_partition(q.id, PartitionId(0), w1, Epoch(2)).await, "release after failing");
    let failed = store.events_since(0, 1_000).await.expect("events");
    let failed =
        failed.iter().rfind(|e| e.kind == EventKind::PartitionFailed).expect("a partition_failed event");
    assert_eq!(
        (failed.queue_id, failed.partition, failed.worker, failed.epoch, &failed.detail),
        (Some(q.id), Some(PartitionId(0)), Some(w1), Some(Epoch(2)), &detail)
    );

    let outcome = store.apply_plan(&fence, q.id, &[grant(0, 2, w2)]).await.expect("grant a failed row");
    assert_eq!(outcome.skipped, vec![(PartitionId(0), SkipReason::WrongState)]);

    assert!(!store.reset_partition(q.id, PartitionId(1)).await.expect("reset an owned partition"));
    assert_eq!(store.assignments(q.id).await.expect("read").rows[1].owner, Some(w1), "untouched");
    let version = store.assignments(q.id).await.expect("read").assignment_version;
    assert!(store.reset_partition(q.id, PartitionId(0)).await.expect("reset"));
    assert!(!store.reset_partition(q.id, PartitionId(0)).await.expect("second reset"));
    let rows = store.assignments(q.id).await.expect("read");
    assert_eq!(rows.assignment_version, version + 1);
    let row = &rows.rows[0];
    assert_eq!((row.owner, row.epoch, row.state), (None, Epoch(2), AssignmentState::Assigned));
    let events = store.events_since(0, 1_000).await.expect("events");
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::PartitionReset).count(), 1);
    assert_eq!(store.apply_plan(&fence, q.id, &[grant(0, 2, w2)]).await.expect("grant").applied, 1);

    assert_not_found(store.reset_partition(q.id, PartitionId(2)).await, "partition out of range");
    assert_not_found(
        store.reset_partition(helix_core::QueueId(q.id.0 + 1_000), PartitionId(0)).await,
        "no queue",
    );
}

/// Plans naming partitions out of range or twice are `Invalid`; plans for a missing queue
/// are `NotFound`; neither changes anything.
pub async fn bad_plans_are_refused(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 3).await;
    let (w, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    assert_invalid(store.apply_plan(&fence, q.id, &[grant(0, 0, w), grant(3, 0, w)]).await, "out of range");
    assert_invalid(store.apply_plan(&fence, q.id, &[grant(1, 0, w), grant(1, 0, w)]).await, "twice");
    assert_not_found(
        store.apply_plan(&fence, helix_core::QueueId(424_242), &[grant(0, 0, w)]).await,
        "missing queue",
    );
    assert_not_found(store.assignments(helix_core::QueueId(424_242)).await, "assignments of a missing queue");
    let rows = store.assignments(q.id).await.expect("read");
    assert_eq!(rows.assignment_version, 0);
    assert!(rows.rows.iter().all(|r| r.owner.is_none()));
}

// ---- events -------------------------------------------------------------------------------

/// Appended events come back in id order, with every field, from any point and in pages.
pub async fn events_come_back_in_order(b: &dyn Backend) {
    let store = b.store();
    let start = store.events_since(0, 1_000).await.expect("events").last().map_or(0, |e| e.id);
    let worker = WorkerId::new_v7();
    let mut ids = Vec::new();
    for i in 0..10u32 {
        let mut event = NewEvent::new(EventKind::PartitionFailed);
        event.queue_id = Some(helix_core::QueueId(7));
        event.partition = Some(PartitionId(i));
        event.worker = Some(worker);
        event.term = Some(Term(3));
        event.epoch = Some(Epoch(u64::from(i)));
        event.detail = serde_json::json!({ "error": format!("boom {i}"), "quote": "it's" });
        ids.push(store.append_event(&event).await.expect("append"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let events = store.events_since(start, 1_000).await.expect("events");
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    let e = &events[4];
    assert_eq!(
        (e.kind, e.queue_id, e.partition, e.worker),
        (EventKind::PartitionFailed, Some(helix_core::QueueId(7)), Some(PartitionId(4)), Some(worker))
    );
    assert_eq!((e.term, e.epoch), (Some(Term(3)), Some(Epoch(4))));
    assert_eq!(e.detail, serde_json::json!({ "error": "boom 4", "quote": "it's" }));
    let page = store.events_since(ids[2], 3).await.expect("page");
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), ids[3..6].to_vec());
    assert!(store.events_since(ids[9], 10).await.expect("tail").is_empty());
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at), "times do not go backwards");
}

/// Leadership, membership and assignment changes record their events with the change.
pub async fn changes_record_their_events(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (w1, s1) = register(&*store, &[&q], LONG).await;
    let (w2, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, w1), grant(1, 0, w1)]).await.expect("grant");
    store.apply_plan(&fence, q.id, &[revoke(0, 1, w2)]).await.expect("revoke");
    store.handoff(q.id, PartitionId(0), w1, Epoch(1)).await.expect("handoff");
    store.release_partition(q.id, PartitionId(1), w1, Epoch(1)).await.expect("release");
    store.deregister_worker(w1, s1).await.expect("deregister");
    store.release_lease(&fence).await.expect("release lease");

    let events = store.events_since(0, 1_000).await.expect("events");
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        vec![
            DomainCreated,
            QueueCreated,
            WorkerJoined,
            WorkerJoined,
            LeaderElected,
            PartitionGranted,
            PartitionGranted,
            PartitionRevoking,
            PartitionHandedOff,
            PartitionReleased,
            WorkerLeft,
            LeaderReleased,
        ]
    );
    let granted = &events[5];
    assert_eq!(
        (granted.queue_id, granted.partition, granted.worker, granted.term, granted.epoch),
        (Some(q.id), Some(PartitionId(0)), Some(w1), Some(fence.term), Some(Epoch(1)))
    );
    let revoking = &events[7];
    assert_eq!(
        (revoking.worker, revoking.epoch),
        (Some(w2), Some(Epoch(1))),
        "a revocation names its target"
    );
    let handed = &events[8];
    assert_eq!(
        (handed.partition, handed.worker, handed.epoch),
        (Some(PartitionId(0)), Some(w2), Some(Epoch(2)))
    );
    let elected = &events[4];
    assert_eq!((elected.worker, elected.term), (Some(fence.holder), Some(fence.term)));
    assert_eq!(events[2].worker, Some(w1));
}

/// Events older than the retention are pruned on the store's clock; newer ones stay.
pub async fn old_events_are_pruned(b: &dyn Backend) {
    let store = b.store();
    for _ in 0..3 {
        store.append_event(&NewEvent::new(EventKind::PartitionReset)).await.expect("append");
    }
    assert_eq!(store.prune_events(LONG).await.expect("prune nothing"), 0);
    b.advance(PAST_SHORT).await;
    let fresh = store.append_event(&NewEvent::new(EventKind::PartitionReset)).await.expect("append");
    assert_eq!(store.prune_events(SHORT).await.expect("prune"), 3);
    let left: Vec<_> = store.events_since(0, 100).await.expect("events").into_iter().map(|e| e.id).collect();
    assert_eq!(left, vec![fresh]);
}

/// Deleting a queue removes its assignments and the workers' subscriptions to it.
pub async fn deleting_a_queue_removes_its_rows_and_subscriptions(b: &dyn Backend) {
    let store = b.store();
    let (q1, q2) = (make_queue(&*store, "d", "q1", 3).await, make_queue(&*store, "d", "q2", 2).await);
    let (w, _) = register(&*store, &[&q1, &q2], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q1.id, &[grant(0, 0, w)]).await.expect("grant");
    store.delete_queue(&domain("d"), &queue_name("q1")).await.expect("delete");
    assert_not_found(store.get_queue_by_id(q1.id).await, "deleted queue");
    assert_not_found(store.assignments(q1.id).await, "deleted queue's rows");
    assert!(store.assignments_of(w).await.expect("of w").is_empty());
    assert_eq!(
        store.get_worker(w).await.expect("get").subscriptions,
        vec![Subscription { queue_id: q2.id, capacity: 1 }]
    );
    assert_not_found(store.delete_queue(&domain("d"), &queue_name("q1")).await, "deleting twice");
    store.delete_domain(&domain("d")).await.expect_err("domain still has q2");
}

// ---- one process per identity, adoption, bounded inputs ------------------------------------

/// A worker id whose session is live is refused with `IdInUse` (saying how long the lease
/// still runs) and the live session goes on untouched; once the lease ran out, the session
/// left, or the worker was declared dead, the id registers again with a new session.
pub async fn a_live_worker_id_cannot_register_again(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 1).await;
    let id = WorkerId::new_v7();
    let first = store.register_worker(&registration(id, &[&q], LONG)).await.expect("first");
    let refused = store.register_worker(&registration(id, &[], LONG)).await;
    match &refused {
        Err(StoreError::IdInUse { worker, lease_remaining }) => {
            assert_eq!(*worker, id);
            assert!(
                *lease_remaining > LONG - Duration::from_secs(60) && *lease_remaining <= LONG,
                "lease remaining {lease_remaining:?}"
            );
            let message = refused.as_ref().expect_err("refused").to_string();
            assert!(message.contains(&id.to_string()) && message.contains("wait"), "{message}");
        }
        other => panic!("a live id registered again: {other:?}"),
    }
    assert!(!refused.expect_err("refused").is_retryable(), "not retried by the store");
    assert!(matches!(
        store.heartbeat(id, first.session_epoch, LONG).await.expect("hb"),
        Heartbeat::Renewed { .. }
    ));
    let w = store.get_worker(id).await.expect("get");
    assert_eq!(
        (w.session_epoch, w.subscriptions.len()),
        (first.session_epoch, 1),
        "the refused registration changed nothing"
    );
    store.set_worker_status(id, first.session_epoch, WorkerStatus::Draining).await.expect("draining");
    assert!(
        matches!(store.register_worker(&registration(id, &[], LONG)).await, Err(StoreError::IdInUse { .. })),
        "a draining session is live too"
    );

    // Left: registers at once.
    store.deregister_worker(id, first.session_epoch).await.expect("deregister");
    let second = store.register_worker(&registration(id, &[], SHORT)).await.expect("after leaving");
    assert_eq!(second.session_epoch, first.session_epoch.next());
    // Lease ran out: registers again.
    b.advance(PAST_SHORT).await;
    let third = store.register_worker(&registration(id, &[], SHORT)).await.expect("after the lease ended");
    assert_eq!(third.session_epoch, second.session_epoch.next());
    // Declared dead: registers again.
    let fence = lead(&*store, "main").await;
    b.advance(PAST_SHORT).await;
    assert_eq!(store.mark_workers_dead(&fence, &[id]).await.expect("dead"), vec![id]);
    let fourth = store.register_worker(&registration(id, &[], LONG)).await.expect("after death");
    assert_eq!(fourth.session_epoch, third.session_epoch.next());
}

/// An acquisition under the id of the holder of a running lease is refused (`None`): a
/// second process with the same id cannot lead under the holder's term. The holder keeps its
/// lease by renewing under its term; once the lease was released or ran out the id takes it
/// again under a new term.
pub async fn a_holder_cannot_take_its_running_lease_again(b: &dyn Backend) {
    let store = b.store();
    let c = cluster("main");
    let a = WorkerId::new_v7();
    let term = store.acquire_lease(&c, a, SHORT).await.expect("acquire").expect("free");
    assert_eq!(store.acquire_lease(&c, a, LONG).await.expect("same id again"), None);
    let fence = CoordinatorFence { cluster: c.clone(), holder: a, term };
    store.renew_lease(&fence, SHORT).await.expect("the holder renews under its term");
    let lease = store.get_lease(&c).await.expect("get").expect("exists");
    assert_eq!((lease.holder, lease.term, lease.expired), (Some(a), term, false));

    b.advance(PAST_SHORT).await;
    let next = store.acquire_lease(&c, a, LONG).await.expect("after the lease ran out").expect("free");
    assert_eq!(next, term.next(), "a new process under the same id gets a new term");
    assert_fenced(store.renew_lease(&fence, LONG).await, "the old term");
    let fence = CoordinatorFence { cluster: c.clone(), holder: a, term: next };
    store.release_lease(&fence).await.expect("release");
    assert_eq!(store.acquire_lease(&c, a, LONG).await.expect("after release"), Some(next.next()));
}

/// A new session of a worker id that still owns rows (after its lease ran out, or after it
/// left with its partitions kept for its return) bumps each row's epoch in the registration:
/// the old session's epoch is fenced before the new one runs anything. Owners and states stay
/// (static membership moves nothing); a revocation under way stays under way with its target
/// and its start. Rows of a queue the new session no longer serves are released (no owner,
/// next epoch), so the coordinator can grant them at once. Other workers' rows do not move.
pub async fn a_new_session_adopts_its_rows_at_the_next_epoch(b: &dyn Backend) {
    let store = b.store();
    let (q1, q2) = (make_queue(&*store, "d", "q1", 3).await, make_queue(&*store, "d", "q2", 2).await);
    let id = WorkerId::new_v7();
    let first = store.register_worker(&registration(id, &[&q1, &q2], SHORT)).await.expect("register");
    let (other, _) = register(&*store, &[&q1], LONG).await;
    let fence = lead(&*store, "main").await;
    store
        .apply_plan(&fence, q1.id, &[grant(0, 0, id), grant(1, 0, id), grant(2, 0, other)])
        .await
        .expect("grant");
    store.apply_plan(&fence, q2.id, &[grant(0, 0, id), grant(1, 0, id)]).await.expect("grant");
    store.apply_plan(&fence, q1.id, &[revoke(1, 1, other)]).await.expect("revoke");
    store.apply_plan(&fence, q2.id, &[revoke(1, 1, other)]).await.expect("revoke");
    let before = store.assignments(q1.id).await.expect("read");
    let v2 = store.assignments(q2.id).await.expect("read").assignment_version;
    let events_before = store.events_since(0, 1_000).await.expect("events").len();

    // The session ends without a goodbye; the same id comes back before anyone moved its rows.
    b.advance(PAST_SHORT).await;
    let second = store.register_worker(&registration(id, &[&q1], LONG)).await.expect("register again");
    let after = store.assignments(q1.id).await.expect("read");
    assert_eq!(
        (after.rows[0].owner, after.rows[0].epoch, after.rows[0].state),
        (Some(id), Epoch(2), AssignmentState::Assigned)
    );
    assert_eq!(
        (after.rows[1].owner, after.rows[1].epoch, after.rows[1].state, after.rows[1].target),
        (Some(id), Epoch(2), AssignmentState::Revoking, Some(other)),
        "a revocation under way stays under way"
    );
    assert_eq!(after.rows[1].updated_at, before.rows[1].updated_at, "the revocation keeps its start");
    assert_eq!(after.rows[2], before.rows[2], "another worker's row does not move");
    assert!(after.assignment_version > before.assignment_version, "readers see the change");
    let q2_row = &store.assignments(q2.id).await.expect("read");
    for row in &q2_row.rows {
        assert_eq!(
            (row.owner, row.epoch, row.state, row.target),
            (None, Epoch(2), AssignmentState::Assigned, None),
            "a queue it no longer serves is released, a revocation under way included"
        );
    }
    assert!(q2_row.assignment_version > v2, "readers see the release");
    assert_fenced(
        store.release_partition(q2.id, PartitionId(0), id, Epoch(1)).await,
        "released row, old epoch",
    );

    // The old session's epoch is fenced; the new one acts at the new epoch.
    assert_fenced(store.release_partition(q1.id, PartitionId(0), id, Epoch(1)).await, "old session's epoch");
    assert_fenced(store.handoff(q1.id, PartitionId(1), id, Epoch(1)).await, "old session's handoff");
    assert_eq!(store.handoff(q1.id, PartitionId(1), id, Epoch(2)).await.expect("handoff"), Epoch(3));
    let events = store.events_since(0, 1_000).await.expect("events");
    let adopted: Vec<_> = events[events_before..]
        .iter()
        .filter(|e| e.kind == EventKind::PartitionAdopted)
        .map(|e| (e.queue_id, e.partition, e.worker, e.epoch))
        .collect();
    assert_eq!(adopted.len(), 2, "{adopted:?}");
    assert!(adopted.contains(&(Some(q1.id), Some(PartitionId(0)), Some(id), Some(Epoch(2)))));
    let released: Vec<_> = events[events_before..]
        .iter()
        .filter(|e| e.kind == EventKind::PartitionReleased)
        .map(|e| (e.queue_id, e.partition, e.worker, e.epoch))
        .collect();
    assert_eq!(
        released,
        vec![
            (Some(q2.id), Some(PartitionId(0)), Some(id), Some(Epoch(2))),
            (Some(q2.id), Some(PartitionId(1)), Some(id), Some(Epoch(2)))
        ]
    );

    // Leaving with the partitions kept, then coming back: bumped again.
    store.deregister_worker(id, second.session_epoch).await.expect("leave");
    store.register_worker(&registration(id, &[&q1], LONG)).await.expect("come back");
    let row = &store.assignments(q1.id).await.expect("read").rows[0];
    assert_eq!((row.owner, row.epoch), (Some(id), Epoch(3)));
    assert!(first.session_epoch < second.session_epoch);
}

/// A handoff to a target whose session is no longer live releases the partition (no owner,
/// next epoch) instead of giving it to a worker that cannot run it; a grant to a worker that
/// is not live is skipped.
pub async fn a_handoff_to_a_target_that_is_gone_releases(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 2).await;
    let (owner, _) = register(&*store, &[&q], LONG).await;
    let (target, target_session) = register(&*store, &[&q], SHORT).await;
    let (left, left_session) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, owner), grant(1, 0, owner)]).await.expect("grant");
    store.apply_plan(&fence, q.id, &[revoke(0, 1, target), revoke(1, 1, left)]).await.expect("revoke");
    b.advance(PAST_SHORT).await;
    store.heartbeat(owner, SessionEpoch(1), LONG).await.expect("owner renews");
    assert_eq!(store.heartbeat(target, target_session, LONG).await.expect("hb"), Heartbeat::Expired);
    store.deregister_worker(left, left_session).await.expect("leave");

    assert_eq!(store.handoff(q.id, PartitionId(0), owner, Epoch(1)).await.expect("handoff"), Epoch(2));
    assert_eq!(store.handoff(q.id, PartitionId(1), owner, Epoch(1)).await.expect("handoff"), Epoch(2));
    let rows = store.assignments(q.id).await.expect("read").rows;
    for row in &rows {
        assert_eq!(
            (row.owner, row.epoch, row.state, row.target),
            (None, Epoch(2), AssignmentState::Assigned, None)
        );
    }
    let events = store.events_since(0, 1_000).await.expect("events");
    let last = events.iter().rfind(|e| e.partition == Some(PartitionId(0))).expect("an event");
    assert_eq!(last.worker, None, "the event names no new owner");

    let outcome =
        store.apply_plan(&fence, q.id, &[grant(0, 2, target), grant(1, 2, owner)]).await.expect("plan");
    assert_eq!(outcome.applied, 1);
    assert_eq!(outcome.skipped, vec![(PartitionId(0), SkipReason::TargetNotLive)]);
    assert_eq!(store.assignments(q.id).await.expect("read").rows[0].owner, None);
}

/// A partition failure whose detail is far beyond any column (a handler error of hundreds of
/// KiB, multi-byte characters included) is recorded, with the detail cut on a character
/// boundary to at most `MAX_EVENT_DETAIL_BYTES` of JSON; a small detail is kept as is.
pub async fn long_event_details_are_cut_to_the_bound(b: &dyn Backend) {
    let store = b.store();
    let q = make_queue(&*store, "d", "q", 1).await;
    let (w, _) = register(&*store, &[&q], LONG).await;
    let fence = lead(&*store, "main").await;
    store.apply_plan(&fence, q.id, &[grant(0, 0, w)]).await.expect("grant");
    let error = "é€x\"\n".repeat(50_000);
    let detail = serde_json::json!({ "failures": 5, "last_error": error });
    assert_eq!(
        store.fail_partition(q.id, PartitionId(0), w, Epoch(1), &detail).await.expect("fail"),
        Epoch(2)
    );
    let events = store.events_since(0, 1_000).await.expect("events");
    let failed = events.iter().rfind(|e| e.kind == EventKind::PartitionFailed).expect("recorded");
    let text = failed.detail.to_string();
    assert!(text.len() <= crate::MAX_EVENT_DETAIL_BYTES, "{} bytes", text.len());
    assert_eq!(failed.detail["failures"], 5);
    let kept = failed.detail["last_error"].as_str().expect("a string");
    let kept = kept.strip_suffix('…').expect("marked as cut");
    assert!(!kept.is_empty() && error.starts_with(kept), "a prefix of the error");

    let mut small = NewEvent::new(EventKind::PartitionFailed);
    small.detail = serde_json::json!({ "last_error": "short" });
    let id = store.append_event(&small).await.expect("append");
    let back = store.events_since(id - 1, 1).await.expect("read");
    assert_eq!(back[0].detail, small.detail);
}

/// `events_since` returns at most `MAX_EVENTS_PER_READ` events whatever the limit asked.
pub async fn events_since_returns_at_most_the_bound(b: &dyn Backend) {
    let store = b.store();
    for _ in 0..crate::MAX_EVENTS_PER_READ + 3 {
        store.append_event(&NewEvent::new(EventKind::PartitionReset)).await.expect("append");
    }
    let page = store.events_since(0, u32::MAX).await.expect("read");
    assert_eq!(page.len(), crate::MAX_EVENTS_PER_READ as usize);
    let rest = store.events_since(page.last().expect("some").id, u32::MAX).await.expect("rest");
    assert!(rest.len() >= 3);
}

/// A scratch MySQL/MariaDB database for tests: created fresh on the server of
/// `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`, a server URL without a
/// database) and dropped by [`drop_database`](ScratchMysql::drop_database).
#[cfg(feature = "mysql")]
#[derive(Debug)]
pub struct ScratchMysql {
    server: String,
    database: String,
    url: url::Url,
}

#[cfg(feature = "mysql")]
impl ScratchMysql {
    /// The server URL tests use when `HELIX_TEST_MYSQL_URL` is not set.
    pub const DEFAULT_SERVER: &'static str = "mysql://root@127.0.0.1:3306";

    /// Creates a database named `helix_t_<uuid>`.
    ///
    /// # Panics
    /// When no server answers (saying how to start one) or the database cannot be created:
    /// tests that need MySQL fail rather than skip.
    pub async fn create() -> Self {
        let server =
            std::env::var("HELIX_TEST_MYSQL_URL").unwrap_or_else(|_| Self::DEFAULT_SERVER.to_owned());
        let database = format!("helix_t_{}", uuid::Uuid::now_v7().simple());
        Self::execute(&server, &format!("CREATE DATABASE {database}")).await;
        let mut url = url::Url::parse(&server).expect("HELIX_TEST_MYSQL_URL is a url");
        url.set_path(&database);
        Self { server, database, url }
    }

    /// The URL of the scratch database.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.database
    }

    /// Drops the database.
    pub async fn drop_database(&self) {
        Self::execute(&self.server, &format!("DROP DATABASE IF EXISTS {}", self.database)).await;
    }

    /// A connection to the test server with no database selected, for what a test does
    /// behind the store's back (creating users, killing connections).
    ///
    /// # Panics
    /// When no server answers, saying how to start one.
    pub async fn admin(&self) -> mysql_async::Conn {
        Self::connect_admin(&self.server).await
    }

    async fn connect_admin(server: &str) -> mysql_async::Conn {
        let opts = mysql_async::Opts::from_url(server)
            .unwrap_or_else(|e| panic!("HELIX_TEST_MYSQL_URL is not a mysql url: {e}"));
        match tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts)).await {
            Ok(Ok(conn)) => conn,
            outcome => panic!(
                "no MySQL/MariaDB server answers at HELIX_TEST_MYSQL_URL (default {}): {}. Start one with \
                 `scripts/ensure-mysql.sh` or `start-stop-daemon --start --oknodo --background --exec \
                 /usr/sbin/mariadbd`, or point HELIX_TEST_MYSQL_URL at a server",
                Self::DEFAULT_SERVER,
                match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                }
            ),
        }
    }

    async fn execute(server: &str, statement: &str) {
        use mysql_async::prelude::Queryable;
        let mut conn = Self::connect_admin(server).await;
        conn.query_drop(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
        let _ = conn.disconnect().await;
    }
}

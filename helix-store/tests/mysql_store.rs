//! What only the MySQL / MariaDB store has to show: connect errors within a bounded time,
//! passwords kept out of every message, the schema version check, idempotent migrations,
//! recovery from killed connections, and a plan over 50,000 partitions in one transaction.
//!
//! Needs a server at `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`); fails,
//! saying how to start one, when none answers.

use std::collections::BTreeMap;
use std::time::Duration;

use helix_core::{ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueName, WorkerId};
use helix_store::conformance::ScratchMysql;
use helix_store::rules::schedules::plan_fire;
use helix_store::{
    ConnectOptions, CoordinatorFence, EventKind, MysqlStore, PlanChange, QueueSpec, Store, StoreError,
    Subscription, WorkerRegistration,
};
use helix_store::{FireOutcome, NewSchedule, Recurrence, ScheduleFire, TaskState};
use mysql_async::prelude::Queryable;

const LONG: Duration = Duration::from_secs(600);

/// Connects a store to the scratch database with the default options.
async fn connect(db: &ScratchMysql) -> Result<MysqlStore, StoreError> {
    MysqlStore::connect(db.url(), &ConnectOptions::default()).await
}

fn options(timeout: Duration) -> ConnectOptions {
    ConnectOptions { connect_timeout: timeout, ..ConnectOptions::default() }
}

/// Generous against a busy machine; only a hang exceeds it.
const NO_HANG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // Port 1 on the loopback: nothing listens, the connection is refused.
    let url = url::Url::parse("mysql://app:hunter2-secret@127.0.0.1:1/helix").expect("url");
    let err = tokio::time::timeout(NO_HANG, MysqlStore::connect(&url, &options(Duration::from_secs(2))))
        .await
        .expect("no hang")
        .expect_err("nothing listens");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2-secret"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2-secret"), "{err:?}");

    // Through the generic entry point too.
    let Err(err) = helix_store::connect_with(
        "mysql://app:hunter2-secret@127.0.0.1:1/helix",
        options(Duration::from_secs(2)),
    )
    .await
    else {
        panic!("nothing listens, yet it connected");
    };
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2-secret"), "{err}");
}

/// A server that accepts the connection but never speaks (a hung server, a black-holing
/// proxy) gives up at the connect timeout instead of hanging.
#[tokio::test]
async fn a_silent_server_is_unavailable_after_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = silent.local_addr().expect("addr").port();
    // Accept and hold connections without ever sending the server greeting.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let url = format!("mysql://app:hunter2-secret@127.0.0.1:{port}/helix");
    let err = tokio::time::timeout(NO_HANG, helix_store::connect_with(&url, options(Duration::from_secs(1))))
        .await
        .expect("the connect timeout bounds the wait")
        .map(|_| ())
        .expect_err("a silent server");
    holder.abort();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2-secret"), "{err}");
}

#[tokio::test]
async fn passwords_never_show_in_errors_or_debug_output() {
    let db = ScratchMysql::create().await;
    let user = format!("u{}", &db.name()[8..24]);
    let password = "Pa55-w0rd-kept-out";
    let mut conn = db.admin().await;
    conn.query_drop(format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        .await
        .expect("create user");
    conn.query_drop(format!("GRANT ALL ON {}.* TO '{user}'@'%'", db.name())).await.expect("grant");

    let mut url = db.url().clone();
    url.set_username(&user).expect("user");
    url.set_password(Some(password)).expect("password");
    let store = MysqlStore::connect(&url, &ConnectOptions::default()).await.expect("connect with a password");
    let debug = format!("{store:?}");
    assert!(!debug.contains(password) && debug.contains("***"), "{debug}");
    store.now().await.expect("a query works");

    // A wrong password and a database without grants: refused, and nothing secret shown.
    url.set_password(Some("Wr0ng-secret-value")).expect("password");
    let err = MysqlStore::connect(&url, &options(Duration::from_secs(3))).await.expect_err("wrong password");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("Wr0ng-secret-value"), "{err}");

    url.set_password(Some(password)).expect("password");
    url.set_path("mysql");
    let err = MysqlStore::connect(&url, &options(Duration::from_secs(3))).await.expect_err("no grants");
    assert!(!err.to_string().contains(password), "{err}");

    drop(store);
    conn.query_drop(format!("DROP USER '{user}'@'%'")).await.expect("drop user");
    db.drop_database().await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
    let db = ScratchMysql::create().await;
    let store = connect(&db).await.expect("first connect migrates");
    let domain = DomainName::new("kept").expect("name");
    store.create_domain(&domain).await.expect("create domain");
    drop(store);

    let store = connect(&db).await.expect("second connect finds nothing to do");
    assert_eq!(store.get_domain(&domain).await.expect("still there").name, domain);
    drop(store);
    let mut conn = db.admin().await;
    let applied: Option<i64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {}.__diesel_schema_migrations", db.name()))
        .await
        .expect("count migrations");
    assert_eq!(applied, Some(5));

    // A migration this binary does not know: written by a newer Helix.
    conn.query_drop(format!(
        "INSERT INTO {}.__diesel_schema_migrations (version, run_on) VALUES ('99991231000000', NOW())",
        db.name()
    ))
    .await
    .expect("fake a future migration");
    for run_migrations in [true, false] {
        let options = ConnectOptions { run_migrations, ..ConnectOptions::default() };
        match MysqlStore::connect(db.url(), &options).await {
            Err(StoreError::SchemaTooNew { database, .. }) => assert_eq!(database, "99991231000000"),
            other => panic!("run_migrations={run_migrations}: expected SchemaTooNew, got {other:?}"),
        }
    }
    db.drop_database().await;
}

#[tokio::test]
async fn killed_connections_are_replaced_transparently() {
    let db = ScratchMysql::create().await;
    let options = ConnectOptions { pool_size: 2, ..ConnectOptions::default() };
    let store = MysqlStore::connect(db.url(), &options).await.expect("connect");
    store.now().await.expect("warm the pool");
    let domain = DomainName::new("d").expect("name");
    store.create_domain(&domain).await.expect("create");

    // Kill every connection of the store, as a restarting proxy or server would.
    let mut conn = db.admin().await;
    let ids: Vec<u64> = conn
        .exec("SELECT id FROM information_schema.processlist WHERE db = ?", (db.name(),))
        .await
        .expect("list connections");
    assert!(!ids.is_empty());
    for id in ids {
        conn.query_drop(format!("KILL {id}")).await.expect("kill");
    }

    // The next operations retry on fresh connections.
    for _ in 0..3 {
        assert_eq!(store.get_domain(&domain).await.expect("retried after the kill").name, domain);
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_50000_partitions_applies_in_one_transaction() {
    const PARTITIONS: u32 = 50_000;
    let db = ScratchMysql::create().await;
    let store = connect(&db).await.expect("connect");
    let domain = DomainName::new("big").expect("name");
    store.create_domain(&domain).await.expect("domain");
    let spec = QueueSpec::new(
        domain,
        QueueName::new("q").expect("name"),
        PartitionCount::new(u64::from(PARTITIONS)).expect("count"),
    );
    let queue = store.create_queue(&spec).await.expect("create a queue of 50,000 partitions");
    assert_eq!(store.assignments(queue.id).await.expect("rows").rows.len(), PARTITIONS as usize);

    let workers: Vec<WorkerId> = (0..4).map(|_| WorkerId::new_v7()).collect();
    for id in &workers {
        store
            .register_worker(&WorkerRegistration {
                id: *id,
                host: "h".into(),
                pid: 1,
                labels: BTreeMap::new(),
                subscriptions: vec![Subscription { queue_id: queue.id, capacity: 1 }],
                session_timeout: LONG,
            })
            .await
            .expect("register");
    }
    let cluster = ClusterName::default();
    let holder = WorkerId::new_v7();
    let term = store.acquire_lease(&cluster, holder, LONG).await.expect("acquire").expect("free");
    let fence = CoordinatorFence { cluster, holder, term };
    let before = store.events_since(0, u32::MAX).await.expect("events").last().map_or(0, |e| e.id);

    let grants: Vec<PlanChange> = (0..PARTITIONS)
        .map(|p| PlanChange::Grant {
            partition: PartitionId(p),
            expected_epoch: Epoch(0),
            to: workers[p as usize % workers.len()],
        })
        .collect();
    let outcome = store.apply_plan(&fence, queue.id, &grants).await.expect("apply the plan");
    assert_eq!(outcome.applied, PARTITIONS as usize);
    assert!(outcome.skipped.is_empty());
    assert_eq!(outcome.assignment_version, 1, "one version bump for the whole plan");

    let snapshot = store.assignments(queue.id).await.expect("rows");
    assert_eq!(snapshot.assignment_version, 1);
    for row in &snapshot.rows {
        assert_eq!(row.owner, Some(workers[row.partition.0 as usize % workers.len()]));
        assert_eq!((row.epoch, row.coordinator_term), (Epoch(1), term));
    }
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(before, |e: &helix_store::Event| e.id);
        let page = store.events_since(after, u32::MAX).await.expect("events");
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    assert_eq!(events.len(), PARTITIONS as usize);
    assert!(events.iter().all(|e| e.kind == EventKind::PartitionGranted && e.term == Some(term)));

    // Replaying the same plan changes nothing: every expected epoch is stale now.
    let again = store.apply_plan(&fence, queue.id, &grants).await.expect("replay");
    assert_eq!((again.applied, again.skipped.len(), again.assignment_version), (0, PARTITIONS as usize, 1));
    db.drop_database().await;
}

/// A worker registered for a long time and a leader's fence, on a queue of `partitions`.
async fn leader_and_worker(
    store: &MysqlStore,
    partitions: u64,
) -> (helix_store::QueueRecord, WorkerId, CoordinatorFence) {
    let domain = DomainName::new("d").expect("name");
    store.create_domain(&domain).await.expect("domain");
    let spec = QueueSpec::new(
        domain,
        QueueName::new("q").expect("name"),
        PartitionCount::new(partitions).expect("count"),
    );
    let queue = store.create_queue(&spec).await.expect("queue");
    let worker = WorkerId::new_v7();
    store
        .register_worker(&WorkerRegistration {
            id: worker,
            host: "h".into(),
            pid: 1,
            labels: BTreeMap::new(),
            subscriptions: vec![Subscription { queue_id: queue.id, capacity: 1 }],
            session_timeout: LONG,
        })
        .await
        .expect("register");
    let cluster = ClusterName::default();
    let holder = WorkerId::new_v7();
    let term = store.acquire_lease(&cluster, holder, LONG).await.expect("acquire").expect("free");
    (queue, worker, CoordinatorFence { cluster, holder, term })
}

/// Another client that holds a lock in an open transaction (a paused or cut-off process)
/// costs an owner-fenced write only the store's short lock waits: the write fails with a
/// transient error once its retries are spent, instead of hanging for the server's default of
/// 50 s per attempt, and succeeds once the lock is gone.
#[tokio::test]
async fn a_lock_held_by_another_client_costs_only_the_short_lock_wait() {
    let db = ScratchMysql::create().await;
    let store = connect(&db).await.expect("connect");
    let (queue, worker, fence) = leader_and_worker(&store, 1).await;
    let grant = PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(0), to: worker };
    store.apply_plan(&fence, queue.id, &[grant]).await.expect("grant");

    let mut holder = db.admin().await;
    holder.query_drop("START TRANSACTION").await.expect("begin");
    holder
        .query_drop(format!("SELECT id FROM {}.helix_queues WHERE id = {} FOR UPDATE", db.name(), queue.id.0))
        .await
        .expect("lock the queue row");
    let blocked =
        tokio::time::timeout(NO_HANG, store.release_partition(queue.id, PartitionId(0), worker, Epoch(1)))
            .await
            .expect("the lock wait is bounded");
    assert!(matches!(blocked, Err(StoreError::Transient(_))), "{blocked:?}");
    holder.query_drop("COMMIT").await.expect("commit");
    assert_eq!(
        store.release_partition(queue.id, PartitionId(0), worker, Epoch(1)).await.expect("released"),
        Epoch(2)
    );
    db.drop_database().await;
}

/// A grant decides on its target's liveness under a lock: while a registration (or any
/// change) of that worker holds its row, the plan waits for it and then decides on what it
/// committed, never on the state before it.
#[tokio::test]
async fn a_grant_waits_for_a_change_of_its_targets_liveness() {
    let db = ScratchMysql::create().await;
    let store = std::sync::Arc::new(connect(&db).await.expect("connect"));
    let (queue, worker, fence) = leader_and_worker(&store, 1).await;

    // A change of the worker under way: its row locked and its session ended, not committed.
    let mut change = db.admin().await;
    change.query_drop("START TRANSACTION").await.expect("begin");
    change
        .exec_drop(
            format!("UPDATE {}.helix_workers SET status = 'LEFT' WHERE id = ?", db.name()),
            (worker.as_bytes().to_vec(),),
        )
        .await
        .expect("end the session");
    let plan = {
        let store = std::sync::Arc::clone(&store);
        let grant = PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(0), to: worker };
        tokio::spawn(async move { store.apply_plan(&fence, queue.id, &[grant]).await })
    };
    // Wait until the plan waits on the worker's row (or has finished without waiting).
    let mut watcher = db.admin().await;
    let deadline = tokio::time::Instant::now() + NO_HANG;
    let waited = loop {
        let waiting: Option<u64> = watcher
            .query_first(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_wait_started IS NOT NULL",
            )
            .await
            .expect("transactions");
        if waiting.unwrap_or(0) > 0 {
            break true;
        }
        if plan.is_finished() || tokio::time::Instant::now() > deadline {
            break false;
        }
        // A poll interval, not a synchronisation: InnoDB refreshes this view at most every
        // 100 ms, and not while it is read back to back.
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    change.query_drop("COMMIT").await.expect("commit");
    let outcome = plan.await.expect("plan task").expect("plan");
    assert!(waited, "the plan read the target's liveness without waiting for the change: {outcome:?}");
    assert_eq!(outcome.skipped, vec![(PartitionId(0), helix_store::SkipReason::TargetNotLive)]);
    assert_eq!(store.assignments(queue.id).await.expect("rows").rows[0].owner, None);
    db.drop_database().await;
}

/// A TCP proxy to the test server that can freeze: while frozen it forwards nothing either
/// way but keeps both connections open, as a paused process or a partitioned network does.
struct FreezingProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(server: &url::Url) -> Self {
        use std::sync::atomic::Ordering;
        let upstream = format!("{}:{}", server.host_str().expect("a host"), server.port().unwrap_or(3306));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                    let flag = std::sync::Arc::clone(&flag);
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            // Held while frozen: the bytes never reach the other side.
                            while flag.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, frozen, task }
    }

    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A client that stops in the middle of a transaction (frozen after its plan took the
/// coordinator, queue and assignment row locks) does not keep those locks: MariaDB ends the
/// idle transaction after the store's `idle_transaction_timeout`, and another coordinator
/// write goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_is_ended_by_the_server() {
    let db = ScratchMysql::create().await;
    let direct = connect(&db).await.expect("connect");
    let (queue, worker, fence) = leader_and_worker(&direct, 1).await;

    let proxy = FreezingProxy::start(db.url()).await;
    let mut url = db.url().clone();
    url.set_port(Some(proxy.port)).expect("port");
    url.set_query(Some("prefer_socket=false"));
    let options = ConnectOptions { pool_size: 1, ..ConnectOptions::default() };
    let stalling = std::sync::Arc::new(MysqlStore::connect(&url, &options).await.expect("connect via proxy"));

    // The worker's row is locked elsewhere, so the plan stops inside its transaction, after
    // its own locks, waiting for that one.
    let mut change = db.admin().await;
    change.query_drop("START TRANSACTION").await.expect("begin");
    change
        .exec_drop(
            format!("SELECT id FROM {}.helix_workers WHERE id = ? FOR UPDATE", db.name()),
            (worker.as_bytes().to_vec(),),
        )
        .await
        .expect("lock the worker row");
    let plan = {
        let (stalling, fence) = (std::sync::Arc::clone(&stalling), fence.clone());
        let grant = PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(0), to: worker };
        tokio::spawn(async move { stalling.apply_plan(&fence, queue.id, &[grant]).await })
    };
    let mut watcher = db.admin().await;
    let deadline = tokio::time::Instant::now() + NO_HANG;
    loop {
        let waiting: Option<u64> = watcher
            .query_first(
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_wait_started IS NOT NULL",
            )
            .await
            .expect("transactions");
        if waiting.unwrap_or(0) > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline && !plan.is_finished(), "the plan never waited");
        // A poll interval: InnoDB refreshes this view at most every 100 ms.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The client stops; its statement completes on the server and the transaction sits idle
    // with its locks.
    proxy.freeze();
    change.query_drop("COMMIT").await.expect("commit");

    // Another coordinator write needs the coordinator row the frozen transaction holds.
    let deadline = tokio::time::Instant::now() + NO_HANG;
    loop {
        match direct.mark_workers_dead(&fence, &[]).await {
            Ok(_) => break,
            Err(err) => {
                assert!(err.is_retryable(), "{err}");
                assert!(tokio::time::Instant::now() < deadline, "the abandoned transaction kept its locks");
            }
        }
    }
    plan.abort();
    proxy.task.abort();
    db.drop_database().await;
}

/// The coordinator's snapshot of a queue takes no lock: a writer holding the queue row in an
/// open transaction does not make it wait, and it sees the last committed version and rows.
#[tokio::test]
async fn a_snapshot_of_assignments_does_not_wait_for_a_writer() {
    let db = ScratchMysql::create().await;
    let store = connect(&db).await.expect("connect");
    let (queue, worker, fence) = leader_and_worker(&store, 2).await;
    let grant = PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(0), to: worker };
    store.apply_plan(&fence, queue.id, &[grant]).await.expect("grant");

    let mut writer = db.admin().await;
    writer.query_drop("START TRANSACTION").await.expect("begin");
    writer
        .query_drop(format!(
            "UPDATE {}.helix_queues SET assignment_version = assignment_version + 1 WHERE id = {}",
            db.name(),
            queue.id.0
        ))
        .await
        .expect("a writer holds the queue row");
    let snapshot = store.assignments(queue.id).await.expect("read while the writer holds the row");
    assert_eq!(snapshot.assignment_version, 1, "the committed version");
    assert_eq!(snapshot.rows[0].owner, Some(worker));
    writer.query_drop("ROLLBACK").await.expect("rollback");
    db.drop_database().await;
}

/// A store dropped after the runtime that used it has stopped (an application's `main`
/// returning, a test's system ending) closes quietly: its pooled connections need no runtime
/// to be let go.
#[test]
fn a_store_dropped_after_its_runtime_stopped_does_not_panic() {
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (db, store) = runtime().block_on(async {
        let db = ScratchMysql::create().await;
        let store = connect(&db).await.expect("connect");
        store.now().await.expect("a pooled connection in use");
        (db, store)
    });
    // The runtime above is gone: dropping the store here must not need one.
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(store)));
    runtime().block_on(db.drop_database());
    assert!(dropped.is_ok(), "dropping the store after its runtime stopped panicked");
}

/// The runs' primary key alone stops a second task: with the cursor put back by hand behind
/// slots that already have their task (the Store API never moves a cursor back), a fire of
/// those slots makes none and answers them as duplicates.
async fn a_slot_with_a_run_never_makes_a_second_task(
    store: &dyn Store,
    queue: helix_core::QueueId,
) -> ScheduleFire {
    let holder = WorkerId::new_v7();
    let term =
        store.acquire_lease(&ClusterName::default(), holder, LONG).await.expect("lease").expect("free");
    let fence = CoordinatorFence { cluster: ClusterName::default(), holder, term };
    let spec = NewSchedule::new("tick", Recurrence::Every(Duration::from_secs(1)), PartitionId(0), "x");
    let record = store.create_schedule(queue, &spec).await.expect("create");
    let now = store.now().await.expect("now");
    let plan = plan_fire(&record, now, Duration::from_secs(3), 100).expect("plan").expect("slots");
    store.fire_schedules(&fence, std::slice::from_ref(&plan)).await.expect("fire");
    plan
}

async fn refire(store: &dyn Store, queue: helix_core::QueueId, plan: &ScheduleFire) {
    let lease = store.get_lease(&ClusterName::default()).await.expect("lease").expect("held");
    let fence = CoordinatorFence {
        cluster: ClusterName::default(),
        holder: lease.holder.expect("holder"),
        term: lease.term,
    };
    let out = store.fire_schedules(&fence, std::slice::from_ref(plan)).await.expect("fire again");
    match &out[0] {
        FireOutcome::Fired { created, duplicates } => {
            assert!(created.is_empty(), "a second task: {created:?}");
            assert_eq!(duplicates.len(), plan.slots.len());
        }
        other => panic!("expected duplicates, got {other:?}"),
    }
    let pending = store.list_tasks(queue, TaskState::Pending, None, 100).await.expect("list");
    assert_eq!(pending.len(), plan.slots.len(), "one task per slot");
}

#[tokio::test]
async fn a_slot_with_a_run_never_makes_a_second_task_even_with_the_cursor_put_back() {
    let db = ScratchMysql::create().await;
    let store = connect(&db).await.expect("connect");
    let domain = DomainName::new("d").expect("name");
    store.create_domain(&domain).await.expect("domain");
    let spec =
        QueueSpec::new(domain, QueueName::new("q").expect("name"), PartitionCount::new(4).expect("count"));
    let queue = store.create_queue(&spec).await.expect("queue");
    let plan = a_slot_with_a_run_never_makes_a_second_task(&store, queue.id).await;
    let mut conn = db.admin().await;
    conn.query_drop(format!(
        "UPDATE {0}.helix_schedules SET next_slot_at = (SELECT MIN(slot_at) FROM {0}.helix_schedule_runs)",
        db.name()
    ))
    .await
    .expect("put the cursor back");
    refire(&store, queue.id, &plan).await;
    drop(conn);
    db.drop_database().await;
}

//! What only the SQLite store has to show: several stores (as several processes would) sharing
//! one database file, the in-memory database, the schema version check, reopening, and bad
//! paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl, sql_query};
use helix_core::{ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueName, Term, WorkerId};
use helix_store::rules::schedules::plan_fire;
use helix_store::{
    ConnectOptions, CoordinatorFence, EventKind, Heartbeat, PlanChange, QueueRecord, QueueSpec, SqliteStore,
    Store, StoreError, Subscription, WorkerRegistration,
};
use helix_store::{FireOutcome, NewSchedule, Recurrence, ScheduleFire, TaskState};
use tempfile::TempDir;

const LONG: Duration = Duration::from_secs(600);

fn temp_db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("helix.db");
    (dir, path)
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(Some(path), &ConnectOptions::default()).await.expect("open sqlite store")
}

fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::establish(path.to_str().expect("utf-8 path")).expect("raw connection")
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Mode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    journal_mode: String,
}

fn count(conn: &mut SqliteConnection, sql: &str) -> i64 {
    sql_query(sql).get_result::<Count>(conn).expect("count query").n
}

async fn make_queue(store: &dyn Store, partitions: u64) -> QueueRecord {
    let domain = DomainName::new("d").expect("name");
    match store.create_domain(&domain).await {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(err) => panic!("create_domain: {err}"),
    }
    let spec = QueueSpec::new(
        domain,
        QueueName::new(format!("q{partitions}")).expect("name"),
        PartitionCount::new(partitions).expect("count"),
    );
    store.create_queue(&spec).await.expect("create_queue")
}

fn registration(id: WorkerId, queue: &QueueRecord) -> WorkerRegistration {
    WorkerRegistration {
        id,
        host: "localhost".into(),
        pid: 1,
        labels: BTreeMap::new(),
        subscriptions: vec![Subscription { queue_id: queue.id, capacity: 1 }],
        session_timeout: LONG,
    }
}

/// Two stores on one file stand for two processes: racing for a fresh lease, round after
/// round, exactly one of them wins, and both read the same leader afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_elect_exactly_one_leader() {
    let (_dir, path) = temp_db();
    let (a, b) = (Arc::new(open(&path).await), Arc::new(open(&path).await));
    for round in 0..40 {
        let cluster = ClusterName::new(format!("race-{round}")).expect("name");
        let contenders: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|store| {
                let (store, cluster) = (Arc::clone(store), cluster.clone());
                tokio::spawn(async move {
                    let me = WorkerId::new_v7();
                    store.acquire_lease(&cluster, me, LONG).await.map(|term| term.map(|t| (me, t)))
                })
            })
            .collect();
        let mut winners = Vec::new();
        for contender in contenders {
            if let Some(win) = contender.await.expect("task").expect("acquire_lease") {
                winners.push(win);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (holder, term) = winners[0];
        assert_eq!(term, Term(1));
        for store in [&a, &b] {
            let lease = store.get_lease(&cluster).await.expect("get_lease").expect("lease exists");
            assert_eq!((lease.holder, lease.term, lease.expired), (Some(holder), term, false));
        }
    }
}

/// Writers in two stores on one file wait for each other (busy timeout, immediate
/// transactions) instead of failing: concurrent heartbeats and plans all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_in_two_stores_wait_instead_of_failing() {
    let (_dir, path) = temp_db();
    let (a, b) = (Arc::new(open(&path).await), Arc::new(open(&path).await));
    let queue = make_queue(&*a, 64).await;
    let mut workers = Vec::new();
    for i in 0..8 {
        let id = WorkerId::new_v7();
        let store = if i % 2 == 0 { &a } else { &b };
        let lease = store.register_worker(&registration(id, &queue)).await.expect("register");
        workers.push((id, lease.session_epoch));
    }
    let holder = WorkerId::new_v7();
    let cluster = ClusterName::default();
    let term = a.acquire_lease(&cluster, holder, LONG).await.expect("acquire").expect("free");
    let fence = CoordinatorFence { cluster, holder, term };

    let mut tasks = Vec::new();
    for (i, (id, session)) in workers.iter().copied().enumerate() {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let answer = store.heartbeat(id, session, LONG).await.expect("heartbeat");
                assert!(matches!(answer, Heartbeat::Renewed { .. }), "{answer:?}");
            }
        }));
    }
    let planner = {
        let (store, fence, workers) = (Arc::clone(&b), fence.clone(), workers.clone());
        tokio::spawn(async move {
            for p in 0..64u32 {
                let to = workers[p as usize % workers.len()].0;
                let change = PlanChange::Grant { partition: PartitionId(p), expected_epoch: Epoch(0), to };
                let outcome = store.apply_plan(&fence, queue.id, &[change]).await.expect("apply_plan");
                assert_eq!(outcome.applied, 1);
            }
        })
    };
    for task in tasks {
        task.await.expect("heartbeats");
    }
    planner.await.expect("plans");
    let rows = a.assignments(queue.id).await.expect("assignments");
    assert_eq!(rows.assignment_version, 64);
    assert!(rows.rows.iter().all(|r| r.owner.is_some() && r.epoch == Epoch(1)));
}

/// After another process took the lease over, the deposed leader's plan is fenced.
#[tokio::test]
async fn a_deposed_leader_in_another_store_is_fenced() {
    let (_dir, path) = temp_db();
    let (a, b) = (open(&path).await, open(&path).await);
    let queue = make_queue(&a, 4).await;
    let worker = WorkerId::new_v7();
    a.register_worker(&registration(worker, &queue)).await.expect("register");
    let cluster = ClusterName::default();
    let old = CoordinatorFence { cluster: cluster.clone(), holder: WorkerId::new_v7(), term: Term(0) };
    let old = CoordinatorFence {
        term: a.acquire_lease(&cluster, old.holder, LONG).await.expect("acquire").expect("free"),
        ..old
    };
    a.release_lease(&old).await.expect("release");
    let new_term = b.acquire_lease(&cluster, WorkerId::new_v7(), LONG).await.expect("acquire").expect("free");
    assert_eq!(new_term, old.term.next());
    let grant = PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(0), to: worker };
    assert!(matches!(a.apply_plan(&old, queue.id, &[grant]).await, Err(StoreError::Fenced(_))));
    assert_eq!(b.assignments(queue.id).await.expect("assignments").assignment_version, 0);
}

/// `sqlite::memory:` is one database for the whole store, however many calls run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_in_memory_database_is_shared_by_concurrent_calls() {
    let store = helix_store::connect("sqlite::memory:").await.expect("connect");
    let queue = make_queue(&*store, 8).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = Arc::clone(&store);
            let queue = queue.clone();
            tokio::spawn(async move {
                let id = WorkerId::new_v7();
                store.register_worker(&registration(id, &queue)).await.expect("register");
                id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("task"));
    }
    ids.sort();
    let listed: Vec<_> = store
        .list_workers(helix_store::WorkerFilter::All)
        .await
        .expect("list")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(store.assignments(queue.id).await.expect("assignments").rows.len(), 8);

    // A second in-memory store is a database of its own.
    let other = helix_store::connect("sqlite::memory:").await.expect("connect");
    assert!(other.list_domains().await.expect("list").is_empty());
}

/// A database holding a migration this binary does not know is refused, with or without
/// running migrations.
#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let (_dir, path) = temp_db();
    drop(open(&path).await);
    sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ('99991231000000')")
        .execute(&mut raw(&path))
        .expect("insert a future version");
    for run_migrations in [true, false] {
        let options = ConnectOptions { run_migrations, ..ConnectOptions::default() };
        match SqliteStore::open(Some(&path), &options).await {
            Err(StoreError::SchemaTooNew { database, binary }) => {
                assert_eq!(database, "99991231000000");
                assert_eq!(binary, "20261204000002");
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
    let url = format!("sqlite://{}", path.display());
    let err = helix_store::connect(&url).await.map(|_| ()).expect_err("refused through connect too");
    assert!(err.to_string().contains("newer than the newest this binary knows"), "{err}");
}

/// Reopening a file keeps its data; migrating it again changes nothing. The file is in WAL
/// mode.
#[tokio::test]
async fn reopening_keeps_data_and_migrations_run_once() {
    let (_dir, path) = temp_db();
    let store = open(&path).await;
    let queue = make_queue(&store, 3).await;
    let events = store.events_since(0, 100).await.expect("events");
    drop(store);

    let store = open(&path).await;
    let again = store.get_queue(&queue.domain, &queue.name).await.expect("queue survives");
    assert_eq!(again, queue);
    assert_eq!(store.events_since(0, 100).await.expect("events"), events);
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::QueueCreated));

    let mut conn = raw(&path);
    assert_eq!(count(&mut conn, "SELECT COUNT(*) AS n FROM __diesel_schema_migrations"), 5);
    let mode: Mode = sql_query("PRAGMA journal_mode").get_result(&mut conn).expect("journal mode");
    assert_eq!(mode.journal_mode, "wal");

    // The down migrations, newest first, remove every table the up migrations made, and up
    // works again after.
    let tables = "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name LIKE 'helix_%'";
    assert_eq!(count(&mut conn, tables), 11);
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-12-04-000002_task_result/down.sql"))
        .expect("down task_result");
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-12-04-000001_schedules/down.sql"))
        .expect("down schedules");
    assert_eq!(count(&mut conn, tables), 9);
    conn.batch_execute(include_str!(
        "../../migrations/sqlite/2026-11-30-000002_subscription_seen_version/down.sql"
    ))
    .expect("down seen_version");
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-11-30-000001_tasks/down.sql"))
        .expect("down tasks");
    assert_eq!(count(&mut conn, tables), 8);
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-11-21-000001_initial/down.sql"))
        .expect("down");
    assert_eq!(count(&mut conn, tables), 0);
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-11-21-000001_initial/up.sql")).expect("up");
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-11-30-000001_tasks/up.sql"))
        .expect("up tasks");
    conn.batch_execute(include_str!(
        "../../migrations/sqlite/2026-11-30-000002_subscription_seen_version/up.sql"
    ))
    .expect("up seen_version");
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-12-04-000001_schedules/up.sql"))
        .expect("up schedules");
    conn.batch_execute(include_str!("../../migrations/sqlite/2026-12-04-000002_task_result/up.sql"))
        .expect("up task_result");
    assert_eq!(count(&mut conn, tables), 11);
}

/// A database whose directory does not exist is refused at once with a message naming it.
#[tokio::test]
async fn a_path_in_a_missing_directory_is_a_clear_error() {
    let (dir, _) = temp_db();
    let missing = dir.path().join("no-such-dir").join("helix.db");
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        SqliteStore::open(Some(&missing), &ConnectOptions::default()),
    )
    .await
    .expect("no hang")
    .expect_err("missing directory");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("no-such-dir") && message.contains("does not exist"), "{message}");
    assert!(!missing.parent().expect("parent").exists(), "nothing was created");

    let url = format!("sqlite://{}", missing.display());
    let err = helix_store::connect(&url).await.map(|_| ()).expect_err("through connect too");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A plan over every partition of the largest queue is applied in one transaction of batched
/// statements (well past SQLite's limit of variables per statement), bumping the version once
/// and recording one event per change.
#[tokio::test]
async fn a_plan_over_the_largest_queue_is_applied_at_once() {
    let (_dir, path) = temp_db();
    let store = open(&path).await;
    let partitions = u64::from(helix_core::MAX_PARTITIONS);
    let queue = make_queue(&store, partitions).await;
    let worker = WorkerId::new_v7();
    store.register_worker(&registration(worker, &queue)).await.expect("register");
    let holder = WorkerId::new_v7();
    let cluster = ClusterName::default();
    let term = store.acquire_lease(&cluster, holder, LONG).await.expect("acquire").expect("free");
    let fence = CoordinatorFence { cluster, holder, term };
    let last_event = store.events_since(0, u32::MAX).await.expect("events").last().map_or(0, |e| e.id);

    let changes: Vec<_> = (0..helix_core::MAX_PARTITIONS)
        .map(|p| PlanChange::Grant { partition: PartitionId(p), expected_epoch: Epoch(0), to: worker })
        .collect();
    let outcome = store.apply_plan(&fence, queue.id, &changes).await.expect("apply_plan");
    assert_eq!((outcome.applied, outcome.skipped.len(), outcome.assignment_version), (changes.len(), 0, 1));

    let rows = store.assignments(queue.id).await.expect("assignments");
    assert_eq!(rows.rows.len(), changes.len());
    assert!(
        rows.rows
            .iter()
            .all(|r| r.owner == Some(worker) && r.epoch == Epoch(1) && r.coordinator_term == term)
    );
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(last_event, |e: &helix_store::Event| e.id);
        let page = store.events_since(after, u32::MAX).await.expect("events");
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    assert_eq!(events.len(), changes.len());
    assert!(events.iter().all(|e| e.kind == EventKind::PartitionGranted && e.worker == Some(worker)));
    assert!(events.windows(2).all(|w| w[0].id < w[1].id && w[0].partition < w[1].partition));

    // The same plan again is stale everywhere and changes nothing.
    let outcome = store.apply_plan(&fence, queue.id, &changes).await.expect("apply_plan");
    assert_eq!((outcome.applied, outcome.skipped.len(), outcome.assignment_version), (0, changes.len(), 1));
}

/// The environment variable that turns [`lease_contender_process`] into a contender.
const CHILD_DB: &str = "HELIX_SQLITE_CONTENDER_DB";
const PROCESS_ROUNDS: usize = 30;

fn go_file(db: &Path) -> PathBuf {
    db.with_extension("go")
}

/// Real processes (this test binary, started again) sharing one new file: they race to
/// migrate it, then race for the lease of every round; each round has exactly one winner.
#[tokio::test]
async fn separate_processes_elect_exactly_one_leader() {
    let (_dir, path) = temp_db();
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "lease_contender_process", "--nocapture", "--test-threads=1"])
                .env(CHILD_DB, &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a contender process")
        })
        .collect();
    // Start the rounds together, once every contender has opened (and maybe migrated) the file.
    std::fs::write(go_file(&path), b"go").expect("start signal");
    let mut wins = vec![Vec::new(); PROCESS_ROUNDS];
    for (child, process) in children.into_iter().enumerate() {
        let output = process.wait_with_output().expect("contender output");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "contender {child} failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // libtest may print its own text on the same line before ours.
        let lines: Vec<_> =
            stdout.lines().filter_map(|l| l.split_once("contender round ").map(|(_, rest)| rest)).collect();
        assert_eq!(lines.len(), PROCESS_ROUNDS, "contender {child}: {stdout}");
        for line in lines {
            let (round, outcome) = line.split_once(' ').expect("round and outcome");
            if outcome == "won" {
                wins[round.parse::<usize>().expect("round number")].push(child);
            }
        }
    }
    for (round, winners) in wins.iter().enumerate() {
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
    }
    let store = open(&path).await;
    for round in 0..PROCESS_ROUNDS {
        let cluster = ClusterName::new(format!("race-{round}")).expect("name");
        assert_eq!(store.get_lease(&cluster).await.expect("get_lease").map(|l| l.term), Some(Term(1)));
    }
}

/// The contender half of [`separate_processes_elect_exactly_one_leader`]: does nothing unless
/// started by it, with the database in [`CHILD_DB`].
#[tokio::test]
async fn lease_contender_process() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    let store = open(Path::new(&path)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !go_file(Path::new(&path)).exists() {
        assert!(Instant::now() < deadline, "no start signal within a minute");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let me = WorkerId::new_v7();
    for round in 0..PROCESS_ROUNDS {
        let cluster = ClusterName::new(format!("race-{round}")).expect("name");
        let outcome = match store.acquire_lease(&cluster, me, LONG).await.expect("acquire_lease") {
            Some(_) => "won",
            None => "lost",
        };
        println!("contender round {round} {outcome}");
    }
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
    let (_dir, path) = temp_db();
    let store = open(&path).await;
    let queue = make_queue(&store, 4).await;
    let plan = a_slot_with_a_run_never_makes_a_second_task(&store, queue.id).await;
    let mut conn = raw(&path);
    conn.batch_execute(
        "UPDATE helix_schedules SET next_slot_at = (SELECT MIN(slot_at) FROM helix_schedule_runs)",
    )
    .expect("put the cursor back");
    refire(&store, queue.id, &plan).await;
}

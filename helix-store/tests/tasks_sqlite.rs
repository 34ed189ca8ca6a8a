//! Transactional enqueue and the dedup rollback race on SQLite: an application's own
//! transaction on the store's database file enqueues tasks that commit or roll back with it.
//! SQLite admits one writer at a time, so an enqueue that races an uncommitted holder of its
//! dedup key waits for the holder's transaction to end before it looks.

use std::sync::Arc;
use std::sync::mpsc;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use helix_core::{DomainName, PartitionCount, PartitionId, QueueId, QueueName};
use helix_store::{ConnectOptions, NewTask, QueueSpec, SqliteStore, Store, TaskState};
use tempfile::TempDir;

type AppError = Box<dyn std::error::Error + Send + Sync>;

struct Fixture {
    dir: TempDir,
    store: Arc<SqliteStore>,
    queue: QueueId,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store =
        SqliteStore::open(Some(&dir.path().join("app.db")), &ConnectOptions::default()).await.expect("open");
    store.create_domain(&DomainName::new("shop").expect("name")).await.expect("domain");
    let spec = QueueSpec::new(
        DomainName::new("shop").expect("name"),
        QueueName::new("mail").expect("name"),
        PartitionCount::new(4).expect("count"),
    );
    let queue = store.create_queue(&spec).await.expect("queue").id;
    Fixture { dir, store: Arc::new(store), queue }
}

fn app_connection(f: &Fixture) -> SqliteConnection {
    let path = f.dir.path().join("app.db");
    let mut conn = SqliteConnection::establish(path.to_str().expect("utf-8 path")).expect("app connection");
    conn.batch_execute("PRAGMA busy_timeout = 10000").expect("busy timeout");
    conn
}

fn keyed(key: &str) -> NewTask {
    NewTask { dedup_key: Some(key.to_owned()), ..NewTask::new(PartitionId(1), key.as_bytes().to_vec()) }
}

async fn pending(f: &Fixture) -> Vec<helix_store::TaskRecord> {
    f.store.list_tasks(f.queue, TaskState::Pending, None, 100).await.expect("list")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_enqueue_commits_and_rolls_back_with_the_application() {
    let f = fixture().await;
    let mut conn = app_connection(&f);
    let queue = f.queue;
    let rolled_back = conn.immediate_transaction(|conn| -> Result<(), AppError> {
        let out = helix_store::sqlite::enqueue_in_transaction(conn, queue, &[keyed("a"), keyed("b")])?;
        assert!(out.iter().all(|e| e.created));
        Err("the application changed its mind".into())
    });
    assert!(rolled_back.is_err());
    assert!(pending(&f).await.is_empty(), "a rolled-back transaction leaves no task");

    let committed = conn
        .immediate_transaction(|conn| -> Result<_, AppError> {
            Ok(helix_store::sqlite::enqueue_in_transaction(conn, queue, &[keyed("a")])?)
        })
        .expect("commit");
    let tasks = pending(&f).await;
    assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![committed[0].id], "exactly one task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_dedup_holder_leaves_the_key_to_the_racing_enqueue() {
    let f = fixture().await;
    let mut holder = app_connection(&f);
    let queue = f.queue;
    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let holder_thread = std::thread::spawn(move || {
        holder.batch_execute("BEGIN IMMEDIATE").expect("begin");
        let held =
            helix_store::sqlite::enqueue_in_transaction(&mut holder, queue, &[keyed("k")]).expect("hold");
        held_tx.send(held[0]).expect("send");
        go_rx.recv().expect("go");
        holder.batch_execute("ROLLBACK").expect("rollback");
    });
    let held = tokio::task::spawn_blocking(move || held_rx.recv().expect("held")).await.expect("join");
    assert!(held.created);

    // The store's enqueue starts while the holder's insert is uncommitted; it waits for the
    // write lock, so it can only look after the rollback.
    let racer = {
        let store = f.store.clone();
        tokio::spawn(async move { store.enqueue_task(queue, &keyed("k")).await })
    };
    go_tx.send(()).expect("go");
    tokio::task::spawn_blocking(move || holder_thread.join().expect("holder thread")).await.expect("join");

    let second = racer.await.expect("join").expect("enqueue");
    assert!(second.created, "the key was free once the holder rolled back");
    let tasks = pending(&f).await;
    assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![second.id], "exactly one task");
    f.store.get_task(second.id).await.expect("the answered id exists");
}

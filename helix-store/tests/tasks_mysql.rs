//! Transactional enqueue and the dedup rollback race on MySQL / MariaDB: an application's own
//! diesel-async transaction enqueues tasks that commit or roll back with it, and an enqueue
//! that waits on an uncommitted holder of its dedup key ends with exactly one real task.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncMysqlConnection, SimpleAsyncConnection};
use helix_core::{DomainName, PartitionCount, PartitionId, QueueId, QueueName};
use helix_store::conformance::ScratchMysql;
use helix_store::{ConnectOptions, MysqlStore, NewTask, QueueSpec, Store, TaskState};
use mysql_async::prelude::Queryable;

type AppError = Box<dyn std::error::Error + Send + Sync>;

struct Fixture {
    database: ScratchMysql,
    store: Arc<MysqlStore>,
    queue: QueueId,
}

async fn fixture() -> Fixture {
    let database = ScratchMysql::create().await;
    // A generous connect timeout: these tests are about lock waits, and a server busy with
    // other tests' scratch databases may take over the default second to accept a connection.
    let options = ConnectOptions { connect_timeout: Duration::from_secs(10), ..ConnectOptions::default() };
    let store = MysqlStore::connect(database.url(), &options).await.expect("connect");
    store.create_domain(&DomainName::new("shop").expect("name")).await.expect("domain");
    let spec = QueueSpec::new(
        DomainName::new("shop").expect("name"),
        QueueName::new("mail").expect("name"),
        PartitionCount::new(4).expect("count"),
    );
    let queue = store.create_queue(&spec).await.expect("queue").id;
    Fixture { database, store: Arc::new(store), queue }
}

/// The application's own connection, as an application would open it.
async fn app_connection(f: &Fixture) -> AsyncMysqlConnection {
    let mut conn = AsyncMysqlConnection::establish(f.database.url().as_str()).await.expect("app connection");
    conn.batch_execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await.expect("isolation");
    conn
}

fn keyed(key: &str) -> NewTask {
    NewTask { dedup_key: Some(key.to_owned()), ..NewTask::new(PartitionId(1), key.as_bytes().to_vec()) }
}

async fn pending(f: &Fixture) -> Vec<helix_store::TaskRecord> {
    f.store.list_tasks(f.queue, TaskState::Pending, None, 100).await.expect("list")
}

/// Waits, up to a generous deadline, until some transaction on the server waits for a lock;
/// fails at once if `waiter` finished without waiting.
async fn until_a_lock_wait<T>(admin: &mut mysql_async::Conn, waiter: &tokio::task::JoinHandle<T>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: Option<i64> = admin
            .query_first("SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'")
            .await
            .expect("innodb_trx");
        if waiting.unwrap_or(0) > 0 {
            return;
        }
        assert!(!waiter.is_finished(), "the enqueue finished without waiting for the uncommitted key");
        assert!(tokio::time::Instant::now() < deadline, "no enqueue waited for the uncommitted key");
        // Past the server's 100 ms refresh of its cache of the transaction tables: polled
        // more often, the cache would keep answering the first look.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_enqueue_commits_and_rolls_back_with_the_application() {
    let f = fixture().await;
    let mut conn = app_connection(&f).await;
    let queue = f.queue;

    let rolled_back = conn
        .transaction(async |conn| -> Result<(), AppError> {
            let out =
                helix_store::mysql::enqueue_in_transaction(conn, queue, &[keyed("a"), keyed("b")]).await?;
            assert!(out.iter().all(|e| e.created));
            Err("the application changed its mind".into())
        })
        .await;
    assert!(rolled_back.is_err());
    assert!(pending(&f).await.is_empty(), "a rolled-back transaction leaves no task");

    let committed = conn
        .transaction(async |conn| -> Result<_, AppError> {
            Ok(helix_store::mysql::enqueue_in_transaction(conn, queue, &[keyed("a")]).await?)
        })
        .await
        .expect("commit");
    let tasks = pending(&f).await;
    assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![committed[0].id], "exactly one task");
    assert_eq!(tasks[0].dedup_key.as_deref(), Some("a"));
    f.database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_dedup_holder_leaves_the_key_to_the_waiting_enqueue() {
    let f = fixture().await;
    let mut holder = app_connection(&f).await;
    holder.batch_execute("START TRANSACTION").await.expect("begin");
    let held =
        helix_store::mysql::enqueue_in_transaction(&mut holder, f.queue, &[keyed("k")]).await.expect("hold");
    assert!(held[0].created);

    // The second enqueue looks while the first is uncommitted: it must wait, not trust it.
    // Connected before the waiter starts: on a busy server a connection can take longer than
    // the waiter's whole lock-wait budget.
    let mut admin = f.database.admin().await;
    let waiter = {
        let (store, queue) = (f.store.clone(), f.queue);
        tokio::spawn(async move { store.enqueue_task(queue, &keyed("k")).await })
    };
    until_a_lock_wait(&mut admin, &waiter).await;
    holder.batch_execute("ROLLBACK").await.expect("rollback");

    let second = waiter.await.expect("join").expect("enqueue");
    assert!(second.created, "the key was free once the holder rolled back");
    assert_ne!(second.id, held[0].id, "the rolled-back id never existed");
    let tasks = pending(&f).await;
    assert_eq!(tasks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![second.id], "exactly one task");
    f.database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_dedup_holder_answers_the_waiting_enqueue() {
    let f = fixture().await;
    let mut holder = app_connection(&f).await;
    holder.batch_execute("START TRANSACTION").await.expect("begin");
    let held =
        helix_store::mysql::enqueue_in_transaction(&mut holder, f.queue, &[keyed("k")]).await.expect("hold");

    // Connected before the waiter starts: on a busy server a connection can take longer than
    // the waiter's whole lock-wait budget.
    let mut admin = f.database.admin().await;
    let waiter = {
        let (store, queue) = (f.store.clone(), f.queue);
        tokio::spawn(async move { store.enqueue_tasks(queue, &[keyed("j"), keyed("k")]).await })
    };
    until_a_lock_wait(&mut admin, &waiter).await;
    holder.batch_execute("COMMIT").await.expect("commit");

    let answers = waiter.await.expect("join").expect("enqueue");
    assert!(answers[0].created);
    assert_eq!((answers[1].id, answers[1].created), (held[0].id, false), "the committed holder's id");
    assert_eq!(pending(&f).await.len(), 2);
    f.database.drop_database().await;
}

/// Enqueues (and claims, by the same path) are applied at most once, yet a connection that
/// fails before their commit is rolled back by the server and the operation is tried again on
/// a fresh one, as other operations are: a killed pooled connection is not an error to the
/// caller, and the enqueue is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_on_killed_connections_is_tried_again_and_applied_once() {
    let f = fixture().await;
    let mut admin = f.database.admin().await;
    let ids: Vec<u64> = admin
        .exec(
            "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
            (f.database.name(),),
        )
        .await
        .expect("list connections");
    assert!(!ids.is_empty(), "the store holds pooled connections");
    for id in ids {
        admin.query_drop(format!("KILL {id}")).await.expect("kill");
    }
    let enqueued = f.store.enqueue_task(f.queue, &NewTask::new(PartitionId(1), b"once".to_vec())).await;
    assert!(enqueued.is_ok(), "{enqueued:?}");
    assert_eq!(pending(&f).await.len(), 1, "applied once");
    f.database.drop_database().await;
}

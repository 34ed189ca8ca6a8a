//! Benchmark of the task queue on a chosen store (DESIGN §6, `docs/tasks.md`):
//!
//! 1. enqueue rate: single enqueues from 16 concurrent callers, and batches of 1,000 from one
//!    caller, then from `HELIX_BENCH_BATCH_CALLERS` (default 4) callers at once;
//! 2. end to end: tasks per second with a no-op handler over 8 workers and 64 partitions,
//!    from the instant all tasks fall due until every one is recorded done, and the database
//!    statements per completed task (MySQL/MariaDB: the server's global `Questions` counter,
//!    which counts every statement including `BEGIN` and `COMMIT`);
//! 3. memory: the resident memory of a worker serving a partition with 1,000,000 pending
//!    tasks against one with 1,000 (the process's `VmRSS` growth while the worker runs).
//!
//! ```text
//! cargo bench -p helix-actors --bench tasks                      # a scratch MariaDB database
//! HELIX_BENCH_URL=sqlite:///tmp/helix-bench.db cargo bench -p helix-actors --bench tasks
//! HELIX_BENCH_TASKS=50000 HELIX_BENCH_SKIP_MEMORY=1 cargo bench -p helix-actors --bench tasks
//! ```
//!
//! Without `HELIX_BENCH_URL` it creates a scratch database on the server at
//! `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`) and drops it at the end.
//! Every node runs in this process, each worker with its own pool and store actor, as
//! `Worker::builder` makes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use helix_actors::client::{Client, TaskSpec};
use helix_actors::node::{CoordinatorNode, Worker, WorkerHandle};
use helix_actors::tasks::{TaskOutcome, TaskPolicy, task_handler_fn};
use helix_core::ClusterConfig;
use helix_store::conformance::ScratchMysql;
use helix_store::{ConnectOptions, QueueRecord, Store, TaskState};
use mysql_async::prelude::Queryable;
use tokio::time::Instant;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const CALLERS: usize = 16;
/// Concurrent callers of the second batch enqueue rate, unless `HELIX_BENCH_BATCH_CALLERS`
/// says otherwise.
const BATCH_CALLERS: u32 = 4;
const WORKERS: usize = 8;
const PARTITIONS: u64 = 64;

fn main() -> BenchResult<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("tasks: run with `cargo bench -p helix-actors --bench tasks`");
        return Ok(());
    }
    actix_rt::System::new().block_on(run())
}

/// The store under test, a scratch database kept alive with it, and a MySQL pool for the
/// server's counters.
struct Target {
    url: String,
    scratch: Option<ScratchMysql>,
    counters: Option<mysql_async::Pool>,
}

impl Target {
    async fn open() -> BenchResult<Self> {
        match std::env::var("HELIX_BENCH_URL") {
            Ok(url) => {
                let counters = url.starts_with("mysql://").then(|| mysql_async::Pool::new(url.as_str()));
                Ok(Self { url, scratch: None, counters })
            }
            Err(_) => {
                let scratch = ScratchMysql::create().await;
                let url = scratch.url().to_string();
                let counters = Some(mysql_async::Pool::new(url.as_str()));
                Ok(Self { url, scratch: Some(scratch), counters })
            }
        }
    }

    async fn store(&self, pool_size: u32) -> BenchResult<Arc<dyn Store>> {
        let options = ConnectOptions { pool_size, ..ConnectOptions::default() };
        Ok(helix_store::connect_with(&self.url, options).await?)
    }

    /// The server's statement counter, when the store is MySQL/MariaDB.
    async fn questions(&self) -> Option<u64> {
        let pool = self.counters.as_ref()?;
        let mut conn = pool.get_conn().await.ok()?;
        let row: Option<(String, String)> =
            conn.query_first("SHOW GLOBAL STATUS LIKE 'Questions'").await.ok()?;
        row.and_then(|(_, v)| v.parse().ok())
    }
}

async fn run() -> BenchResult<()> {
    let target = Target::open().await?;
    println!("store: {}", target.url.split('@').next_back().unwrap_or("?"));
    let client = Client::new(target.store(CALLERS as u32 + 4).await?);
    enqueue_rates(&client).await?;
    let tasks: usize =
        std::env::var("HELIX_BENCH_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    end_to_end(&target, &client, tasks).await?;
    if std::env::var("HELIX_BENCH_SKIP_MEMORY").is_err() {
        memory(&target, &client).await?;
    }
    if let Some(scratch) = target.scratch {
        scratch.drop_database().await;
    }
    Ok(())
}

async fn enqueue_rates(client: &Client) -> BenchResult<()> {
    client.ensure_queue("bench", "enqueue", PARTITIONS).await?;
    let window = Duration::from_secs(10);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (client, done) = (client.clone(), Arc::clone(&done));
            actix_rt::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < window {
                    let spec = TaskSpec::new("x").key(format!("{c}-{i}"));
                    if client.enqueue("bench", "enqueue", spec).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await?;
    }
    let single = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("single enqueues, {CALLERS} callers: {single:.0} tasks/s");

    let batches = 50;
    let start = Instant::now();
    for b in 0..batches {
        let specs = (0..1_000).map(|i| TaskSpec::new("x").key(format!("b{b}-{i}"))).collect();
        client.enqueue_batch("bench", "enqueue", specs).await?;
    }
    let rate = f64::from(batches * 1_000) / start.elapsed().as_secs_f64();
    println!("batches of 1,000, one caller: {rate:.0} rows/s");

    // As many batches again, from several callers at once.
    let batch_callers: u32 = std::env::var("HELIX_BENCH_BATCH_CALLERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(BATCH_CALLERS)
        .max(1);
    let start = Instant::now();
    let callers: Vec<_> = (0..batch_callers)
        .map(|c| {
            let client = client.clone();
            actix_rt::spawn(async move {
                for b in (c..batches).step_by(batch_callers as usize) {
                    let specs = (0..1_000).map(|i| TaskSpec::new("x").key(format!("c{b}-{i}"))).collect();
                    client.enqueue_batch("bench", "enqueue", specs).await?;
                }
                Ok::<_, helix_actors::client::ClientError>(())
            })
        })
        .collect();
    for caller in callers {
        caller.await??;
    }
    let rate = f64::from(batches * 1_000) / start.elapsed().as_secs_f64();
    println!("batches of 1,000, {batch_callers} callers: {rate:.0} rows/s");
    Ok(())
}

/// Fills `queue` with `tasks` no-op tasks, all due at one instant a little ahead.
async fn fill(client: &Client, queue: &QueueRecord, tasks: usize, due_in: Duration) -> BenchResult<Instant> {
    let due = client.store().now().await? + chrono::Duration::from_std(due_in)?;
    let due_local = Instant::now() + due_in;
    let mut left = tasks;
    let mut b = 0;
    while left > 0 {
        let n = left.min(5_000);
        let specs = (0..n).map(|i| TaskSpec::new("").key(format!("{b}-{i}")).run_at(due)).collect();
        client.enqueue_batch(queue.domain.as_str(), queue.name.as_str(), specs).await?;
        left -= n;
        b += 1;
    }
    Ok(due_local)
}

/// Starts `count` workers of `queue` with a no-op handler that counts its attempts in `ran`.
async fn workers(
    target: &Target,
    queue: &QueueRecord,
    count: usize,
    in_flight: u32,
    ran: &Arc<AtomicU64>,
) -> BenchResult<Vec<WorkerHandle>> {
    let mut handles = Vec::new();
    for _ in 0..count {
        let ran = Arc::clone(ran);
        let worker = Worker::builder(target.store(4).await?, ClusterConfig::default())
            .tasks(
                queue.id,
                task_handler_fn(move |_| {
                    ran.fetch_add(1, Ordering::Relaxed);
                    async { TaskOutcome::Done }
                }),
                TaskPolicy::default().in_flight(in_flight),
            )
            .start()
            .await?;
        handles.push(worker);
    }
    Ok(handles)
}

async fn settle(client: &Client, queue: &QueueRecord) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.partition_map(queue.id).await?.is_settled() {
        if Instant::now() > deadline {
            return Err("the queue did not settle".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn backlog_empty(client: &Client, queue: &QueueRecord) -> BenchResult<bool> {
    for state in [TaskState::Pending, TaskState::Running] {
        if !client.list_tasks(queue.domain.as_str(), queue.name.as_str(), state, None, 1).await?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn end_to_end(target: &Target, client: &Client, tasks: usize) -> BenchResult<()> {
    let queue = client.ensure_queue("bench", "e2e", PARTITIONS).await?;
    let in_flight: u32 =
        std::env::var("HELIX_BENCH_IN_FLIGHT").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let coordinator = CoordinatorNode::new(client.store(), ClusterConfig::default()).start()?;
    let ran = Arc::new(AtomicU64::new(0));
    let handles = workers(target, &queue, WORKERS, in_flight, &ran).await?;
    settle(client, &queue).await?;
    let fill_start = Instant::now();
    let due = fill(client, &queue, tasks, Duration::from_secs(5) + Duration::from_millis(tasks as u64 / 10))
        .await?;
    println!("filled {tasks} tasks in {:.1} s", fill_start.elapsed().as_secs_f64());
    if Instant::now() >= due {
        return Err("the fill took longer than its head start; lower HELIX_BENCH_TASKS".into());
    }
    tokio::time::sleep_until(due).await;
    let before = target.questions().await;
    // The database is asked only once every task has run here (a listing of the hot table
    // while it is full would compete with the workers for the server), then until every
    // outcome is recorded.
    while ran.load(Ordering::Relaxed) < tasks as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while !backlog_empty(client, &queue).await? {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = due.elapsed().as_secs_f64();
    let after = target.questions().await;
    println!(
        "end to end, {WORKERS} workers, {PARTITIONS} partitions, in-flight {in_flight} per partition: \
         {tasks} tasks in {took:.2} s = {:.0} tasks/s",
        tasks as f64 / took
    );
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "statements per completed task: {:.4} ({} statements, all clients, polls of this bench included)",
            (a - b) as f64 / tasks as f64,
            a - b
        );
    }
    for worker in handles {
        worker.leave().await?;
    }
    coordinator.stop().await;
    Ok(())
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn memory(target: &Target, client: &Client) -> BenchResult<()> {
    for pending in [1_000usize, 1_000_000] {
        let queue = client.ensure_queue("bench", &format!("memory_{pending}"), 1).await?;
        fill(client, &queue, pending, Duration::ZERO).await?;
        let coordinator = CoordinatorNode::new(client.store(), ClusterConfig::default()).start()?;
        let before = rss_kib();
        let handles = workers(target, &queue, 1, 16, &Arc::new(AtomicU64::new(0))).await?;
        let mut peak = before;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            peak = peak.max(rss_kib());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "worker over one partition with {pending} pending tasks: resident memory +{} KiB while running 10 s",
            peak.saturating_sub(before)
        );
        for worker in handles {
            worker.leave().await?;
        }
        coordinator.stop().await;
    }
    Ok(())
}

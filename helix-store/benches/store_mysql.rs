//! Benchmark of the MySQL / MariaDB store: heartbeat round trips per second with 1, 8 and 32
//! concurrent workers, and the time and statement count of `apply_plan` for 1,000 and 50,000
//! changed partitions of one queue.
//!
//! Run it with a server at `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`):
//!
//! ```text
//! cargo bench -p helix-store --bench store_mysql
//! HELIX_BENCH_SECS=5 cargo bench -p helix-store --bench store_mysql   # longer heartbeat runs
//! ```
//!
//! It creates a database of its own (`helix_t_<random>`), prints a table, and drops the
//! database. It takes about a minute. Statements per plan come from the server's global
//! `Questions`, `Com_stmt_prepare` and `Com_stmt_execute` counters around each plan, so run it
//! on an otherwise idle server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use helix_core::{ClusterName, DomainName, Epoch, PartitionCount, PartitionId, QueueName, WorkerId};
use helix_store::conformance::ScratchMysql;
use helix_store::{
    CancelReason, ConnectOptions, CoordinatorFence, MysqlStore, PlanChange, QueueSpec, Store,
    WorkerRegistration,
};
use mysql_async::prelude::Queryable;

const LONG: Duration = Duration::from_secs(3_600);

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and only wants
    // the bench to build and start.
    if !std::env::args().any(|a| a == "--bench") {
        println!("store_mysql: run with `cargo bench -p helix-store --bench store_mysql`");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run())
}

async fn run() -> BenchResult<()> {
    let secs: u64 = std::env::var("HELIX_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let database = ScratchMysql::create().await;
    let mut conn = database.admin().await;
    let result = bench(database.url(), &mut conn, Duration::from_secs(secs)).await;
    database.drop_database().await;
    result
}

async fn bench(url: &url::Url, admin: &mut mysql_async::Conn, period: Duration) -> BenchResult<()> {
    let version: Option<String> = admin.query_first("SELECT VERSION()").await?;
    let options = ConnectOptions { pool_size: 32, ..ConnectOptions::default() };
    let store = Arc::new(MysqlStore::connect(url, &options).await?);
    println!(
        "helix-store MySQL benchmark — server {}, {} cpus",
        version.unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!("\nheartbeat (one UPDATE on the happy path), {period:?} per row");
    println!("{:>8} {:>14} {:>14} {:>12}", "workers", "heartbeats", "per second", "mean (ms)");
    for workers in [1usize, 8, 32] {
        let (count, elapsed) = heartbeats(&store, workers, period).await?;
        let rate = count as f64 / elapsed.as_secs_f64();
        let mean_ms = elapsed.as_secs_f64() * 1_000.0 * workers as f64 / count.max(1) as f64;
        println!("{workers:>8} {count:>14} {rate:>14.0} {mean_ms:>12.2}");
    }

    println!("\napply_plan, every partition of one queue changed");
    println!(
        "{:>11} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "partitions", "plan", "time (ms)", "questions", "prepares", "executes"
    );
    let cluster = ClusterName::new("bench")?;
    let holder = WorkerId::new_v7();
    let term = store.acquire_lease(&cluster, holder, LONG).await?.ok_or("the bench lease is taken")?;
    let fence = CoordinatorFence { cluster, holder, term };
    let workers: Vec<WorkerId> = (0..8).map(|_| WorkerId::new_v7()).collect();
    for id in &workers {
        store.register_worker(&registration(*id)).await?;
    }
    let domain = DomainName::new("bench")?;
    store.create_domain(&domain).await?;
    for partitions in [1_000u32, 50_000] {
        let spec = QueueSpec::new(
            domain.clone(),
            QueueName::new(format!("q{partitions}"))?,
            PartitionCount::new(u64::from(partitions))?,
        );
        let queue = store.create_queue(&spec).await?;
        let to = |p: u32, shift: usize| workers[(p as usize + shift) % workers.len()];
        let plans: [(&str, Vec<PlanChange>); 3] = [
            (
                "grant",
                (0..partitions)
                    .map(|p| PlanChange::Grant {
                        partition: PartitionId(p),
                        expected_epoch: Epoch(0),
                        to: to(p, 0),
                    })
                    .collect(),
            ),
            (
                "revoke",
                (0..partitions)
                    .map(|p| PlanChange::Revoke {
                        partition: PartitionId(p),
                        expected_epoch: Epoch(1),
                        to: Some(to(p, 1)),
                    })
                    .collect(),
            ),
            (
                "cancel",
                (0..partitions)
                    .map(|p| PlanChange::CancelRevoke {
                        partition: PartitionId(p),
                        expected_epoch: Epoch(1),
                        reason: CancelReason::NoLongerNeeded,
                    })
                    .collect(),
            ),
        ];
        for (name, changes) in plans {
            let before = counters(admin).await?;
            let started = Instant::now();
            let outcome = store.apply_plan(&fence, queue.id, &changes).await?;
            let elapsed = started.elapsed();
            let after = counters(admin).await?;
            if outcome.applied != partitions as usize {
                return Err(format!("{name} plan applied {} of {partitions}", outcome.applied).into());
            }
            // Each `counters` call is one question of its own.
            let delta = |i: usize| after[i].saturating_sub(before[i]);
            println!(
                "{partitions:>11} {name:>8} {:>10.1} {:>10} {:>10} {:>10}",
                elapsed.as_secs_f64() * 1_000.0,
                delta(0).saturating_sub(1),
                delta(1),
                delta(2)
            );
        }
    }
    Ok(())
}

fn registration(id: WorkerId) -> WorkerRegistration {
    WorkerRegistration {
        id,
        host: "bench".into(),
        pid: std::process::id(),
        labels: BTreeMap::new(),
        subscriptions: Vec::new(),
        session_timeout: LONG,
    }
}

/// Runs `workers` tasks, each registering and then heartbeating in a loop for `period`.
async fn heartbeats(
    store: &Arc<MysqlStore>,
    workers: usize,
    period: Duration,
) -> BenchResult<(u64, Duration)> {
    let mut sessions = Vec::new();
    for _ in 0..workers {
        let id = WorkerId::new_v7();
        let lease = store.register_worker(&registration(id)).await?;
        sessions.push((id, lease.session_epoch));
    }
    let started = Instant::now();
    let deadline = started + period;
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|(id, epoch)| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let mut count = 0u64;
                while Instant::now() < deadline {
                    match store.heartbeat(id, epoch, LONG).await {
                        Ok(helix_store::Heartbeat::Renewed { .. }) => count += 1,
                        Ok(other) => return Err(format!("heartbeat answered {other:?}")),
                        Err(err) => return Err(err.to_string()),
                    }
                }
                Ok(count)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, started.elapsed()))
}

/// The server's global `Questions`, `Com_stmt_prepare` and `Com_stmt_execute`.
async fn counters(admin: &mut mysql_async::Conn) -> BenchResult<[u64; 3]> {
    let rows: Vec<(String, String)> = admin
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_stmt_prepare', 'Com_stmt_execute')",
        )
        .await?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok([get("Questions"), get("Com_stmt_prepare"), get("Com_stmt_execute")])
}

//! Benchmark of task scheduling on MariaDB (DESIGN §6, `docs/tasks.md`, "Due times without
//! polling per partition"): how late tasks start, and what an idle cluster costs the database.
//! One queue of 64 partitions over 8 workers and a coordinator, every node in this process
//! with its own pool (as `Worker::builder` makes them), and a handler that only notes when it
//! started.
//!
//! 1. **Lateness of delayed tasks**: `HELIX_BENCH_RATE` (default 1,000) tasks fall due per
//!    second for `HELIX_BENCH_SECONDS` (default 60), spread evenly, each with an absolute
//!    `run_at`, enqueued in batches of 100 ms of them 1.5 s ahead (each task ≥ 1 s ahead of
//!    its `run_at`; the run checks it). Lateness = handler start − `run_at`; the store-side
//!    figure is the claim's `started_at` − `run_at` (both on the database's clock). Two paths:
//!    enqueued through a `Client` in the workers' process (the enqueue wakes the partition's
//!    runner, which sets a timer for each task: this is the path of the goal), and enqueued by
//!    another process (`HELIX_BENCH_REMOTE_SECONDS`, default 20; only the due-time poll finds
//!    them).
//! 2. **Pickup latency of tasks due at once**, `HELIX_BENCH_PICKUPS` (default 300) tasks, one
//!    every 20–50 ms (uniformly drawn, so their phase against the poll is random): (a) enqueued
//!    through a `Client` in the workers' process, from just before the enqueue call to the
//!    handler's start, on this process's monotonic clock; (b) enqueued by another process
//!    (this binary run again with `HELIX_SCHEDBENCH_ROLE`), which prints the wall-clock
//!    instant just before each enqueue call, against the wall-clock instant the handler
//!    started; with the default poll interval (1 s; `HELIX_BENCH_POLL_MS` sets another, for
//!    parts 1 and 2a too) and with `HELIX_BENCH_SHORT_POLL_MS` (default 100; 0 skips it).
//! 3. **Idle load**: with no task at all, the statements each worker sends over
//!    `HELIX_BENCH_IDLE_SECONDS` (default 15), counted exactly by a TCP proxy in front of each
//!    worker (so no other client of the server counts), by statement: the due-time poll
//!    (`next_due`) apart from the session's heartbeats and the rest, at both poll intervals.
//!
//! ```text
//! cargo bench -p helix-actors --bench scheduling                                    # full run
//! HELIX_BENCH_SECONDS=10 HELIX_BENCH_REMOTE_SECONDS=5 HELIX_BENCH_PICKUPS=100 \
//!   HELIX_BENCH_IDLE_SECONDS=5 cargo bench -p helix-actors --bench scheduling       # quick run
//! ```
//!
//! **Clocks.** `run_at` and `started_at` are on the database's clock (`NOW(6)`, the server
//! host's real-time clock); the handler's start and the other process's send instant are this
//! host's real-time clock (`SystemTime`). The server runs on the same host (127.0.0.1), so
//! these are one clock: the bench checks it by reading `NOW(6)` between two local readings
//! and prints the offset with its uncertainty (half the round trip); figures are not
//! corrected by it. A server on another host would need its offset subtracted. In-process
//! pickup latency uses the monotonic clock alone.
//!
//! The latency phases run with the workers connected to the server directly; the idle phase
//! starts workers of its own behind the counting proxies (one more hop for each statement,
//! which does not matter when idle). It creates a scratch database on the server at
//! `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`) and drops it at the end.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use helix_actors::client::{Client, TaskSpec};
use helix_actors::node::{CoordinatorNode, Worker, WorkerHandle};
use helix_actors::tasks::{DEFAULT_POLL_INTERVAL, TaskContext, TaskOutcome, TaskPolicy, task_handler_fn};
use helix_core::ClusterConfig;
use helix_store::conformance::ScratchMysql;
use helix_store::{ConnectOptions, Store, TaskId};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const WORKERS: usize = 8;
const PARTITIONS: u64 = 64;
const DOMAIN: &str = "bench";
const QUEUE: &str = "scheduling";
/// Delayed tasks are enqueued in batches covering this much of their `run_at`s...
const BATCH_SPAN: Duration = Duration::from_millis(100);
/// ...this long before the first of them falls due.
const LEAD: Duration = Duration::from_millis(1_500);
/// The environment variable that makes this binary the other process, and its settings.
const ROLE: &str = "HELIX_SCHEDBENCH_ROLE";
const ROLE_URL: &str = "HELIX_SCHEDBENCH_URL";
const ROLE_TAG: &str = "HELIX_SCHEDBENCH_TAG";
const ROLE_COUNT: &str = "HELIX_SCHEDBENCH_COUNT";
const ROLE_SECONDS: &str = "HELIX_SCHEDBENCH_SECONDS";
const ROLE_RATE: &str = "HELIX_SCHEDBENCH_RATE";

fn main() -> BenchResult<()> {
    if let Ok(role) = std::env::var(ROLE) {
        return actix_rt::System::new().block_on(other_process(&role));
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("scheduling: run with `cargo bench -p helix-actors --bench scheduling`");
        return Ok(());
    }
    actix_rt::System::new().block_on(run())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Microseconds since the Unix epoch on this host's real-time clock.
fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---- what the handler notes --------------------------------------------------------------

/// One attempt's start, as the handler saw it.
#[derive(Debug, Clone)]
struct Start {
    tag: String,
    /// The handler's start on this host's real-time clock.
    wall_us: i64,
    /// The same on this process's monotonic clock.
    at: Instant,
    /// The task's `run_at` and its claim's `started_at`, on the database's clock.
    run_at_us: i64,
    claimed_us: Option<i64>,
}

type Starts = Arc<Mutex<HashMap<TaskId, Start>>>;

fn starts_of(starts: &Starts, tag: &str) -> Vec<(TaskId, Start)> {
    let starts = starts.lock().unwrap_or_else(PoisonError::into_inner);
    starts.iter().filter(|(_, s)| s.tag == tag).map(|(id, s)| (*id, s.clone())).collect()
}

/// Waits until `count` tasks tagged `tag` have started, or `deadline`.
async fn wait_for(starts: &Starts, tag: &str, count: usize, deadline: Instant) -> Vec<(TaskId, Start)> {
    loop {
        let seen = starts_of(starts, tag);
        if seen.len() >= count || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- figures -----------------------------------------------------------------------------

/// One row of the results table.
struct Row {
    measure: String,
    samples: usize,
    expected: usize,
    p50: f64,
    p99: f64,
    max: f64,
    goal: Option<f64>,
}

impl Row {
    fn new(measure: impl Into<String>, mut ms: Vec<f64>, expected: usize, goal: Option<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        // Nearest rank.
        let rank = |q: f64| {
            if ms.is_empty() {
                f64::NAN
            } else {
                let k = (q * ms.len() as f64).ceil() as usize;
                ms[k.clamp(1, ms.len()) - 1]
            }
        };
        Self {
            measure: measure.into(),
            samples: ms.len(),
            expected,
            p50: rank(0.5),
            p99: rank(0.99),
            max: ms.last().copied().unwrap_or(f64::NAN),
            goal,
        }
    }

    fn verdict(&self) -> String {
        match self.goal {
            None => "-".into(),
            Some(goal) if self.samples < self.expected => {
                format!("p99 ≤ {goal:.0}: MISSED ({} lost)", self.expected - self.samples)
            }
            Some(goal) if self.p99 <= goal => format!("p99 ≤ {goal:.0}: met"),
            Some(goal) => format!("p99 ≤ {goal:.0}: MISSED"),
        }
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!("| measure | tasks | p50 ms | p99 ms | max ms | goal |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let tasks = if r.samples == r.expected {
            r.samples.to_string()
        } else {
            format!("{}/{}", r.samples, r.expected)
        };
        println!(
            "| {} | {tasks} | {:.1} | {:.1} | {:.1} | {} |",
            r.measure,
            r.p50,
            r.p99,
            r.max,
            r.verdict()
        );
    }
}

// ---- the cluster -------------------------------------------------------------------------

struct Cluster {
    workers: Vec<WorkerHandle>,
    /// The workers' proxies, when they count statements.
    proxies: Vec<CountingProxy>,
}

/// Starts the workers of `queue` polling every `poll`, behind counting proxies when `counted`,
/// and waits until they own every partition.
async fn start_cluster(
    scratch: &ScratchMysql,
    client: &Client,
    queue: helix_core::QueueId,
    poll: Duration,
    counted: bool,
    starts: &Starts,
) -> BenchResult<Cluster> {
    let server = scratch.url().socket_addrs(|| Some(3306))?.into_iter().next().ok_or("no server address")?;
    let (mut workers, mut proxies) = (Vec::new(), Vec::new());
    for _ in 0..WORKERS {
        let url = if counted {
            let proxy = CountingProxy::start(server).await?;
            let mut url = scratch.url().clone();
            url.set_port(Some(proxy.addr.port())).map_err(|()| "the url cannot take a port")?;
            url.query_pairs_mut().append_pair("prefer_socket", "false");
            proxies.push(proxy);
            url.to_string()
        } else {
            scratch.url().to_string()
        };
        let store =
            helix_store::connect_with(&url, ConnectOptions { pool_size: 4, ..ConnectOptions::default() })
                .await?;
        let starts = Arc::clone(starts);
        let handler = task_handler_fn(move |task: TaskContext| {
            let record = task.record();
            let start = Start {
                tag: String::from_utf8_lossy(task.payload()).into_owned(),
                wall_us: wall_us(),
                at: Instant::now(),
                run_at_us: record.run_at.timestamp_micros(),
                claimed_us: record.started_at.map(|t| t.timestamp_micros()),
            };
            starts.lock().unwrap_or_else(PoisonError::into_inner).insert(task.id(), start);
            async { TaskOutcome::Done }
        });
        let worker = Worker::builder(store, ClusterConfig::default())
            .tasks(queue, handler, TaskPolicy::default())
            .task_poll_interval(poll)
            .start()
            .await?;
        workers.push(worker);
    }
    let ids: Vec<_> = workers.iter().map(WorkerHandle::id).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let map = client.partition_map(queue).await?;
        let counts = map.counts();
        if map.is_settled() && counts.len() == WORKERS && counts.keys().all(|w| ids.contains(w)) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the queue did not settle on the new workers".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every runner has recovered and every worker has sampled the store's clock.
    tokio::time::sleep(2 * poll + Duration::from_secs(1)).await;
    Ok(Cluster { workers, proxies })
}

impl Cluster {
    async fn stop(self) -> BenchResult<()> {
        for worker in self.workers {
            worker.leave().await?;
        }
        drop(self.proxies);
        Ok(())
    }
}

/// The database clock against this host's: `(NOW(6) − local midpoint, half round trip)` of
/// the tightest of 20 readings, in microseconds.
async fn clock_offset(store: &Arc<dyn Store>) -> BenchResult<(i64, i64)> {
    let mut best: Option<(i64, i64)> = None;
    for _ in 0..20 {
        let before = wall_us();
        let db = store.now().await?.timestamp_micros();
        let after = wall_us();
        let half = (after - before) / 2;
        if best.is_none_or(|(_, h)| half < h) {
            best = Some((db - (before + half), half));
        }
    }
    best.ok_or_else(|| "no clock reading".into())
}

/// Round trips to the server (`SELECT NOW(6)`), one every `every` until `stop`, in ms.
async fn round_trips(store: Arc<dyn Store>, every: Duration, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut ms = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let before = Instant::now();
        if store.now().await.is_ok() {
            ms.push(before.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(every).await;
    }
    ms
}

// ---- the run -----------------------------------------------------------------------------

async fn run() -> BenchResult<()> {
    let seconds: u64 = env_or("HELIX_BENCH_SECONDS", 60);
    let remote_seconds: u64 = env_or("HELIX_BENCH_REMOTE_SECONDS", 20);
    let rate: u64 = env_or("HELIX_BENCH_RATE", 1_000);
    let pickups: usize = env_or("HELIX_BENCH_PICKUPS", 300);
    let idle_seconds: u64 = env_or("HELIX_BENCH_IDLE_SECONDS", 15);
    let short_poll = Duration::from_millis(env_or("HELIX_BENCH_SHORT_POLL_MS", 100));
    let poll = match env_or("HELIX_BENCH_POLL_MS", 0u64) {
        0 => DEFAULT_POLL_INTERVAL,
        ms => Duration::from_millis(ms),
    };
    let polls: Vec<Duration> =
        [poll].into_iter().chain((!short_poll.is_zero()).then_some(short_poll)).collect();
    println!(
        "scheduling: {WORKERS} workers, {PARTITIONS} partitions, in-flight {} per partition; load average {} at start",
        TaskPolicy::default().in_flight,
        load_average()
    );

    let scratch = ScratchMysql::create().await;
    let url = scratch.url().to_string();
    let client = Client::new(helix_store::connect_with(&url, ConnectOptions::default()).await?);
    let queue = client.ensure_queue(DOMAIN, QUEUE, PARTITIONS).await?.id;
    let (offset, half) = clock_offset(&client.store()).await?;
    println!(
        "database clock − local clock: {:+.3} ms ± {:.3} ms (same host: the figures are not corrected by it)",
        offset as f64 / 1e3,
        half as f64 / 1e3
    );
    let coordinator = CoordinatorNode::new(client.store(), ClusterConfig::default()).start()?;
    let starts: Starts = Arc::default();

    // 3. Idle load first, on an empty queue.
    for poll in &polls {
        let cluster = start_cluster(&scratch, &client, queue, *poll, true, &starts).await?;
        idle(&cluster, *poll, Duration::from_secs(idle_seconds)).await;
        cluster.stop().await?;
    }

    let mut delayed = Vec::new();
    let mut pickup = Vec::new();
    for (i, poll) in polls.iter().enumerate() {
        let cluster = start_cluster(&scratch, &client, queue, *poll, false, &starts).await?;
        let name = format!("{} ms poll", poll.as_millis());
        if i == 0 {
            // 1. Delayed, in process, then from another process.
            let tag = "delayed-local";
            let t0 = client.store().now().await? + chrono::Duration::from_std(LEAD + Duration::from_secs(1))?;
            let stop = Arc::new(AtomicBool::new(false));
            let probe =
                actix_rt::spawn(round_trips(client.store(), Duration::from_millis(10), Arc::clone(&stop)));
            let sent = enqueue_delayed(&client, tag, t0, rate, seconds).await?;
            println!(
                "{tag}: {} tasks, each enqueued ≥ {:.0} ms ahead of its run_at",
                sent.tasks, sent.min_ahead_ms
            );
            let deadline = Instant::now() + 2 * *poll + Duration::from_secs(10);
            let got = wait_for(&starts, tag, sent.tasks, deadline).await;
            stop.store(true, Ordering::Relaxed);
            delayed.extend(lateness_rows(
                &format!("delayed, in-process enqueue (wake_local), {name}"),
                &got,
                sent.tasks,
            ));
            let probed = probe.await?;
            let n = probed.len();
            delayed.push(Row::new(
                "  for scale: one round trip (SELECT NOW(6)) meanwhile, every 10 ms",
                probed,
                n,
                None,
            ));

            let tag = "delayed-remote";
            let n = rate * remote_seconds;
            if n > 0 {
                let out = in_other_process(
                    &url,
                    "delayed",
                    tag,
                    &[(ROLE_RATE, rate), (ROLE_SECONDS, remote_seconds)],
                )
                .await?;
                println!("{tag}: {}", out.trim());
                let deadline = Instant::now() + 2 * *poll + Duration::from_secs(10);
                let got = wait_for(&starts, tag, n as usize, deadline).await;
                delayed.extend(lateness_rows(
                    &format!("delayed, enqueued by another process (poll), {name}"),
                    &got,
                    n as usize,
                ));
            }

            // 2a. Due at once, in process; for scale, round trips on the idle cluster first.
            let stop = Arc::new(AtomicBool::new(false));
            let probe =
                actix_rt::spawn(round_trips(client.store(), Duration::from_millis(10), Arc::clone(&stop)));
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.store(true, Ordering::Relaxed);
            let probed = probe.await?;
            let n = probed.len();
            pickup.push(Row::new("for scale: one round trip (SELECT NOW(6)), idle cluster", probed, n, None));
            let tag = "pickup-local";
            let mut sent: HashMap<TaskId, Instant> = HashMap::new();
            let mut enqueue_ms = Vec::new();
            for _ in 0..pickups {
                tokio::time::sleep(Duration::from_millis(rand::rng().random_range(20..=50))).await;
                let before = Instant::now();
                let done = client.enqueue(DOMAIN, QUEUE, TaskSpec::new(tag)).await?;
                enqueue_ms.push(before.elapsed().as_secs_f64() * 1e3);
                sent.insert(done.id, before);
            }
            let got =
                wait_for(&starts, tag, pickups, Instant::now() + 2 * *poll + Duration::from_secs(5)).await;
            let ms = got
                .iter()
                .filter_map(|(id, s)| sent.get(id).map(|b| (s.at - *b).as_secs_f64() * 1e3))
                .collect();
            pickup.push(Row::new(
                format!("due at once, in-process enqueue (wake_local), {name}"),
                ms,
                pickups,
                Some(5.0),
            ));
            pickup.push(Row::new("  of which the enqueue call (commit)", enqueue_ms, pickups, None));
        }

        // 2b. Due at once, from another process.
        let tag = format!("pickup-remote-{}", poll.as_millis());
        let out = in_other_process(&url, "pickup", &tag, &[(ROLE_COUNT, pickups as u64)]).await?;
        let sent: HashMap<TaskId, i64> = out
            .lines()
            .filter_map(|l| {
                let (id, at) = l.split_once(' ')?;
                Some((TaskId(id.parse().ok()?), at.parse().ok()?))
            })
            .collect();
        let got =
            wait_for(&starts, &tag, sent.len(), Instant::now() + 2 * *poll + Duration::from_secs(5)).await;
        let ms =
            got.iter().filter_map(|(id, s)| sent.get(id).map(|b| (s.wall_us - b) as f64 / 1e3)).collect();
        let goal = poll.as_secs_f64() * 1e3 + 10.0;
        pickup.push(Row::new(
            format!("due at once, enqueued by another process (poll), {name}"),
            ms,
            pickups,
            Some(goal),
        ));
        cluster.stop().await?;
    }

    print_table("1. lateness of delayed tasks (ms after run_at)", &delayed);
    print_table("2. pickup latency of tasks due at once (ms after the enqueue call began)", &pickup);
    println!("\nload average {} at the end", load_average());
    coordinator.stop().await;
    scratch.drop_database().await;
    Ok(())
}

/// The rows of one lateness phase: from the handler's start, and from the claim (store side).
fn lateness_rows(measure: &str, got: &[(TaskId, Start)], expected: usize) -> Vec<Row> {
    let handler = got.iter().map(|(_, s)| (s.wall_us - s.run_at_us) as f64 / 1e3).collect();
    let claimed =
        got.iter().filter_map(|(_, s)| s.claimed_us.map(|c| (c - s.run_at_us) as f64 / 1e3)).collect();
    let claim = got.iter().filter_map(|(_, s)| s.claimed_us.map(|c| (s.wall_us - c) as f64 / 1e3)).collect();
    vec![
        Row::new(format!("{measure}: handler start − run_at"), handler, expected, Some(10.0)),
        Row::new("  store side: started_at (claim) − run_at", claimed, expected, None),
        Row::new("  the claim: handler start − started_at", claim, expected, None),
    ]
}

/// What an enqueue of delayed tasks did.
struct DelayedSent {
    tasks: usize,
    /// The least time any task was enqueued ahead of its `run_at`.
    min_ahead_ms: f64,
}

/// Enqueues `rate` tasks per second of `run_at`, evenly spaced from `t0` (on the store's
/// clock) for `seconds`, each batch of [`BATCH_SPAN`] of them [`LEAD`] before its first falls
/// due; to random partitions.
async fn enqueue_delayed(
    client: &Client,
    tag: &str,
    t0: DateTime<Utc>,
    rate: u64,
    seconds: u64,
) -> BenchResult<DelayedSent> {
    // Local instants of store instants, by one reading (only to pace the batches).
    let (db0, local0) = (client.store().now().await?, Instant::now());
    let local_of = |at: DateTime<Utc>| {
        let ahead = (at - db0).to_std().unwrap_or_default();
        local0 + ahead
    };
    let per_batch = (rate * BATCH_SPAN.as_millis() as u64 / 1_000).max(1);
    let spacing = BATCH_SPAN / u32::try_from(per_batch)?;
    let batches = seconds * 1_000 / BATCH_SPAN.as_millis() as u64;
    let (mut tasks, mut min_ahead_ms) = (0, f64::INFINITY);
    for b in 0..batches {
        let first = t0 + chrono::Duration::from_std(BATCH_SPAN * u32::try_from(b)?)?;
        tokio::time::sleep_until(local_of(first).checked_sub(LEAD).unwrap_or(local0).into()).await;
        let specs = (0..per_batch)
            .map(|i| {
                Ok(TaskSpec::new(tag)
                    .run_at(first + chrono::Duration::from_std(spacing * u32::try_from(i)?)?))
            })
            .collect::<BenchResult<Vec<_>>>()?;
        client.enqueue_batch(DOMAIN, QUEUE, specs).await?;
        tasks += per_batch as usize;
        let ahead = local_of(first).saturating_duration_since(Instant::now());
        min_ahead_ms = min_ahead_ms.min(ahead.as_secs_f64() * 1e3);
    }
    Ok(DelayedSent { tasks, min_ahead_ms })
}

// ---- the other process -------------------------------------------------------------------

/// Runs this binary again as the other process in `role`, and returns what it printed.
async fn in_other_process(url: &str, role: &str, tag: &str, settings: &[(&str, u64)]) -> BenchResult<String> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.env(ROLE, role).env(ROLE_URL, url).env(ROLE_TAG, tag).stdout(std::process::Stdio::piped());
    for (name, value) in settings {
        command.env(name, value.to_string());
    }
    let mut child = command.spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    while !reader.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = reader.join().map_err(|_| "the reader panicked")??;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the other process failed: {status}").into());
    }
    Ok(out)
}

/// The other process: enqueues only, through a `Client` of its own (no runner here, so its
/// enqueues wake nothing: the workers' poll finds them).
async fn other_process(role: &str) -> BenchResult<()> {
    let url = std::env::var(ROLE_URL)?;
    let tag = std::env::var(ROLE_TAG)?;
    let client = Client::new(helix_store::connect_with(&url, ConnectOptions::default()).await?);
    // Connected and the queue cached before the first timed enqueue.
    client.task_counts(DOMAIN, QUEUE).await?;
    match role {
        "pickup" => {
            let count: usize = env_or(ROLE_COUNT, 0);
            let mut lines = String::new();
            for _ in 0..count {
                tokio::time::sleep(Duration::from_millis(rand::rng().random_range(20..=50))).await;
                let sent = wall_us();
                let done = client.enqueue(DOMAIN, QUEUE, TaskSpec::new(tag.as_str())).await?;
                lines.push_str(&format!("{} {sent}\n", done.id));
            }
            print!("{lines}");
        }
        "delayed" => {
            let (rate, seconds) = (env_or(ROLE_RATE, 0), env_or(ROLE_SECONDS, 0));
            let t0 = client.store().now().await? + chrono::Duration::from_std(LEAD + Duration::from_secs(1))?;
            let sent = enqueue_delayed(&client, &tag, t0, rate, seconds).await?;
            println!("{} tasks, each enqueued ≥ {:.0} ms ahead of its run_at", sent.tasks, sent.min_ahead_ms);
        }
        other => return Err(format!("unknown role {other}").into()),
    }
    Ok(())
}

// ---- idle load ---------------------------------------------------------------------------

async fn idle(cluster: &Cluster, poll: Duration, window: Duration) {
    let total = |c: &Cluster| {
        c.proxies.iter().fold(BTreeMap::<String, u64>::new(), |mut sum, p| {
            for (k, v) in p.counts() {
                *sum.entry(k).or_default() += v;
            }
            sum
        })
    };
    let before = total(cluster);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let took = started.elapsed().as_secs_f64();
    let after = total(cluster);
    let mut diff: Vec<(String, u64)> = after
        .into_iter()
        .map(|(k, v)| {
            let gained = v - before.get(&k).copied().unwrap_or(0);
            (k, gained)
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    diff.sort_by_key(|(_, v)| std::cmp::Reverse(*v));
    let per_worker_s = |n: u64| n as f64 / WORKERS as f64 / took;
    let intervals = took / poll.as_secs_f64();
    let polls: u64 = diff.iter().filter(|(k, _)| k.starts_with(POLL)).map(|(_, v)| v).sum();
    let all: u64 = diff.iter().filter(|(k, _)| !k.starts_with(NO_ANSWER)).map(|(_, v)| v).sum();
    println!(
        "\n3. idle load, {} ms poll: {took:.1} s window, {WORKERS} workers, each through a counting proxy",
        poll.as_millis()
    );
    println!("| statement (round trips of the workers) | per worker per s | per worker per poll interval |");
    println!("|---|---|---|");
    for (k, v) in &diff {
        println!("| {k} | {:.2} | {:.3} |", per_worker_s(*v), *v as f64 / WORKERS as f64 / intervals);
    }
    println!(
        "| **all round trips** | {:.2} | {:.3} |",
        per_worker_s(all),
        all as f64 / WORKERS as f64 / intervals
    );
    println!(
        "due-time polls: {:.3} per worker per poll interval (goal ≤ 1, one tick more at the window's edge: {}); everything else: {:.2} statements per worker per s; load average {}",
        polls as f64 / WORKERS as f64 / intervals,
        // A window of n intervals holds n or n + 1 ticks of each worker's poll.
        if polls as f64 / WORKERS as f64 <= intervals.floor() + 1.0 { "met" } else { "MISSED" },
        per_worker_s(all - polls),
        load_average()
    );
}

// ---- the counting proxy ------------------------------------------------------------------

/// The class of a poll statement, and of commands the server does not answer.
const POLL: &str = "due-time poll: next_due";
const NO_ANSWER: &str = "(no answer)";

/// A TCP proxy in front of the server that counts the statements its clients send, by
/// statement text, exactly (other clients of the server do not count). It extends the
/// command counting of `helix_faults::proxy` (which see for the framing) with the statements'
/// texts: a `COM_QUERY` carries its text; a `COM_STMT_EXECUTE` names a statement id, which
/// the server's answer to the `COM_STMT_PREPARE` that carried the text assigned (the first
/// packet of that answer, `0x00` then the id). The protocol has one command under way per
/// connection, so the next answer after a prepare is the prepare's. No TLS, no compression.
struct CountingProxy {
    addr: SocketAddr,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CountingProxy {
    async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let shared = Arc::clone(&counts);
        let accept = tokio::spawn(async move {
            let mut connections: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.retain(|c| !c.is_finished());
                connections.push(tokio::spawn(forward(client, upstream, Arc::clone(&shared))));
            }
        });
        Ok(Self { addr, counts, accept })
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Splits a byte stream into MySQL packets: `(sequence id, payload)`.
#[derive(Default)]
struct Packets {
    buffer: Vec<u8>,
}

impl Packets {
    fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(u8, &[u8])) {
        self.buffer.extend_from_slice(bytes);
        let mut at = 0;
        while self.buffer.len() - at >= 4 {
            let h = &self.buffer[at..at + 4];
            let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
            if self.buffer.len() - at < 4 + len {
                break;
            }
            each(h[3], &self.buffer[at + 4..at + 4 + len]);
            at += 4 + len;
        }
        self.buffer.drain(..at);
    }
}

/// The prepared statements of one connection.
#[derive(Default)]
struct Prepared {
    pending: Option<String>,
    texts: HashMap<u32, String>,
}

/// The class a statement counts under: the poll, or its text (shortened).
fn classify(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    if text.contains("MIN(run_at)") {
        return POLL.into();
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut short = words.join(" ");
    if short.len() > 90 {
        let cut = (0..=90).rev().find(|i| short.is_char_boundary(*i)).unwrap_or(0);
        short.truncate(cut);
        short.push('…');
    }
    format!("`{}`", short.replace('|', "\\|"))
}

async fn forward(client: TcpStream, upstream: SocketAddr, counts: Arc<Mutex<BTreeMap<String, u64>>>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let prepared = Arc::new(Mutex::new(Prepared::default()));
    let up = async {
        let (mut packets, mut buffer) = (Packets::default(), vec![0u8; 16 * 1024]);
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            packets.feed(&buffer[..n], |sequence, payload| {
                // A command starts a sequence at 0; handshake and continuation packets do not.
                if sequence != 0 || payload.is_empty() {
                    return;
                }
                let mut prepared = prepared.lock().unwrap_or_else(PoisonError::into_inner);
                let class = match payload[0] {
                    0x03 => classify(&payload[1..]),
                    0x16 => {
                        prepared.pending = Some(classify(&payload[1..]));
                        "(prepare)".into()
                    }
                    0x17 if payload.len() >= 5 => {
                        let id = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
                        prepared
                            .texts
                            .get(&id)
                            .cloned()
                            .unwrap_or_else(|| "(execute of an unknown statement)".into())
                    }
                    0x0e => "(ping)".into(),
                    0x19 | 0x01 => format!("{NO_ANSWER} close or quit"),
                    other => format!("(command 0x{other:02x})"),
                };
                *counts.lock().unwrap_or_else(PoisonError::into_inner).entry(class).or_default() += 1;
            });
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let (mut packets, mut buffer) = (Packets::default(), vec![0u8; 16 * 1024]);
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            packets.feed(&buffer[..n], |sequence, payload| {
                let mut prepared = prepared.lock().unwrap_or_else(PoisonError::into_inner);
                if sequence == 1
                    && let Some(text) = prepared.pending.take()
                    && payload.len() >= 5
                    && payload[0] == 0x00
                {
                    let id = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
                    prepared.texts.insert(id, text);
                }
            });
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

//! Failover of real worker processes on MariaDB / MySQL, with the default timings
//! (`ClusterConfig::default()`: heartbeat 500 ms, session timeout 3 s, lease 3 s, reconcile
//! 500 ms):
//!
//! - a coordinator process and `HELIX_BENCH_WORKERS` (default 4) worker processes of the
//!   `helix-node` binary serve one queue of `HELIX_BENCH_PARTITIONS` (default 64) partitions,
//!   each partition ticking every 100 ms into its process's tick log;
//! - idle load over 20 s windows (three with the coordinator at the start, two without it at
//!   the end): the round trips per worker per heartbeat, counted exactly by a TCP proxy in
//!   front of each node process (`helix_faults::proxy`), and, for comparison, the server's
//!   global `Questions` counter;
//! - `HELIX_BENCH_KILLS` times (default 30): `SIGKILL` the oldest worker, measure the time from
//!   the kill until (a) every partition it owned is owned by a live worker (the assignment
//!   rows, read every 20 ms) and (b) every one of them runs again elsewhere (the first tick of
//!   another process after the kill, from the tick logs); start a replacement and wait until
//!   the cluster is balanced and running again;
//! - prints min, p50, p99 and max of (a) and (b).
//!
//! ```text
//! cargo bench -p helix-faults --bench failover
//! HELIX_BENCH_KILLS=5 cargo bench -p helix-faults --bench failover
//! ```
//!
//! It creates a scratch database (`helix_t_<uuid>`, on `HELIX_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306`) and drops it at the end; about 30 s plus 10 s per kill. The
//! `Questions` counter is global to the server, so it counts other clients too (the report
//! says how many other connections it saw open during each window); the proxies' counts are
//! the cluster's alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use helix_core::{PartitionId, WorkerId};
use helix_faults::clock::monotonic_ns;
use helix_faults::cluster::{Cluster, Deadline, POLL, describe_rows};
use helix_faults::process::NodeOptions;
use helix_faults::proxy::{CommandCounts, CountingProxy};
use helix_store::AssignmentState;
use helix_store::conformance::ScratchMysql;
use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use tokio::time::{Instant, sleep};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The node binary of this crate.
const NODE: &str = env!("CARGO_BIN_EXE_helix-node");
/// How long the cluster may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(60);
/// How long a failover may take before the sample counts as missed.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);
/// How often the assignment rows are read during a failover.
const FAILOVER_POLL: Duration = Duration::from_millis(20);
/// How fresh a tick must be for its partition to count as running.
const FRESH: Duration = Duration::from_secs(1);
/// One idle window.
const WINDOW: Duration = Duration::from_secs(20);
/// How long a process may take to stop.
const STOP: Duration = Duration::from_secs(20);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and only wants
    // the bench to build and start.
    if !std::env::args().any(|a| a == "--bench") {
        println!("failover: run with `cargo bench -p helix-faults --bench failover`");
        return Ok(());
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run())
}

async fn run() -> BenchResult<()> {
    let db = ScratchMysql::create().await;
    let dir = tempfile::tempdir()?;
    let outcome = bench(&db, dir.path()).await;
    db.drop_database().await;
    let report = outcome?;
    println!("\n{report}");
    Ok(())
}

/// The server's global `Questions` counter.
async fn questions(admin: &mut mysql_async::Conn) -> BenchResult<u64> {
    let row: Option<(String, String)> = admin.query_first("SHOW GLOBAL STATUS LIKE 'Questions'").await?;
    Ok(row.and_then(|(_, v)| v.parse().ok()).unwrap_or_default())
}

/// One node process and the proxy that counts its round trips.
struct Node {
    id: WorkerId,
    index: usize,
    proxy: CountingProxy,
}

/// What one idle window measured.
struct Window {
    /// The server's `Questions` per second (every client of the server).
    questions_per_s: f64,
    /// The most connections to other databases seen during the window.
    others: u64,
    /// The commands of the workers, together.
    workers: CommandCounts,
    /// The commands of the coordinator.
    coordinator: CommandCounts,
    secs: f64,
}

/// One idle window of [`WINDOW`]: the proxies' counts of the workers and of the coordinator,
/// and the server's `Questions` with the most connections to other databases seen open,
/// sampled every second (the samples' own statements are not counted).
async fn idle_window(
    admin: &mut mysql_async::Conn,
    db: &ScratchMysql,
    workers: &[Node],
    coordinator: Option<&Node>,
) -> BenchResult<Window> {
    let sum =
        |nodes: &[Node]| nodes.iter().fold(CommandCounts::default(), |sum, n| sum.plus(&n.proxy.counts()));
    let coordinator_counts = || coordinator.map(|n| n.proxy.counts()).unwrap_or_default();
    let before = questions(admin).await?;
    let (workers_before, coordinator_before) = (sum(workers), coordinator_counts());
    let t0 = Instant::now();
    let mut others = 0;
    // The SHOW that ends the window counts itself.
    let mut own = 1;
    while t0.elapsed() + Duration::from_secs(1) < WINDOW {
        sleep(Duration::from_secs(1)).await;
        let seen: Option<u64> = admin
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE (DB IS NULL OR DB <> ?) AND ID <> \
                 CONNECTION_ID()",
                (db.name(),),
            )
            .await?;
        others = others.max(seen.unwrap_or_default());
        own += 1;
    }
    sleep(WINDOW.saturating_sub(t0.elapsed())).await;
    let (workers_after, coordinator_after) = (sum(workers), coordinator_counts());
    let after = questions(admin).await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Window {
        questions_per_s: after.saturating_sub(before).saturating_sub(own) as f64 / secs,
        others,
        workers: workers_after.since(&workers_before),
        coordinator: coordinator_after.since(&coordinator_before),
        secs,
    })
}

impl Window {
    fn describe(&self, label: &str, workers: usize, heartbeat: Duration) -> String {
        let per_heartbeat = |n: u64| n as f64 / self.secs * heartbeat.as_secs_f64();
        let mut out = format!(
            "{label}: workers {:.2} round trips per worker per heartbeat ({}: {} in {:.0} s)",
            per_heartbeat(self.workers.round_trips()) / workers as f64,
            self.workers.describe(),
            self.workers.round_trips(),
            self.secs
        );
        if self.coordinator.total() > 0 {
            out.push_str(&format!(
                "; coordinator {:.1} round trips/s ({})",
                self.coordinator.round_trips() as f64 / self.secs,
                self.coordinator.describe()
            ));
        }
        out.push_str(&format!(
            "; server Questions {:.1}/s with {} other connections open\n",
            self.questions_per_s, self.others
        ));
        out
    }
}

/// `url` pointing at `proxy` instead of the server, over TCP.
fn through(url: &url::Url, proxy: &CountingProxy) -> BenchResult<String> {
    let mut url = url.clone();
    url.set_port(Some(proxy.addr().port())).map_err(|()| "the url cannot take a port")?;
    url.query_pairs_mut().append_pair("prefer_socket", "false");
    Ok(url.to_string())
}

/// Waits until every partition runs on its owner, the owners are exactly `live`, balanced.
async fn settle(c: &mut Cluster, live: &BTreeSet<WorkerId>) -> BenchResult<Duration> {
    let deadline = Deadline::after("every partition running on its owner, balanced", SETTLE);
    loop {
        let (idle, rows) = c.idle_rows(FRESH).await?;
        let mut loads: BTreeMap<WorkerId, usize> = live.iter().map(|w| (*w, 0)).collect();
        let mut foreign = false;
        for owner in rows.iter().filter_map(|r| r.owner) {
            match loads.get_mut(&owner) {
                Some(n) => *n += 1,
                None => foreign = true,
            }
        }
        let balanced =
            loads.values().max().zip(loads.values().min()).is_some_and(|(max, min)| max - min <= 1);
        if idle.is_empty() && !foreign && balanced {
            return Ok(deadline.elapsed());
        }
        if deadline.expired() {
            let state = format!("not running: {}\n{}", describe_rows(&idle), c.report());
            return Err(deadline.missed(&state).into());
        }
        sleep(POLL).await;
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn figure(name: &str, samples: &[Option<Duration>], over: Duration) -> String {
    let mut got: Vec<Duration> = samples.iter().flatten().copied().collect();
    got.sort();
    let cell = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    let late = got.iter().filter(|d| **d > over).count();
    format!(
        "{name:<44} {:>3} {:>8} {:>8} {:>8} {:>8}   {} missed, {late} over {:.1} s",
        samples.len(),
        cell(got.first().copied()),
        cell(percentile(&got, 0.5)),
        cell(percentile(&got, 0.99)),
        cell(got.last().copied()),
        samples.len() - got.len(),
        over.as_secs_f64()
    )
}

async fn bench(db: &ScratchMysql, dir: &Path) -> BenchResult<String> {
    let workers = env_or("HELIX_BENCH_WORKERS", 4);
    let partitions = env_or("HELIX_BENCH_PARTITIONS", 64) as u64;
    let kills = env_or("HELIX_BENCH_KILLS", 30);
    let mut admin = mysql_async::Conn::new(mysql_async::Opts::from_url(db.url().as_str())?).await?;
    let version: Option<String> = admin.query_first("SELECT VERSION()").await?;
    let server = tokio::net::lookup_host(format!(
        "{}:{}",
        db.url().host_str().unwrap_or("127.0.0.1"),
        db.url().port_or_known_default().unwrap_or(3306)
    ))
    .await?
    .next()
    .ok_or("the server's address does not resolve")?;

    let mut base = NodeOptions::new(db.url().to_string(), partitions);
    base.tick_interval = Duration::from_millis(100);
    let config = base.config.clone();
    let mut c = Cluster::new(Path::new(NODE), dir, base).await?;
    println!(
        "failover benchmark — server {}, {} cpus; {workers} worker processes + 1 coordinator process, 1 queue × \
         {partitions} partitions; heartbeat {:?}, session timeout {:?}, lease {:?}, reconcile {:?}",
        version.clone().unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        config.heartbeat_interval,
        config.session_timeout,
        config.coordinator_lease,
        config.reconcile_interval
    );

    // Every node reaches the server through a counting proxy of its own.
    let proxy = CountingProxy::start(server).await?;
    let id = WorkerId::new_v7();
    let mut options = c.base().clone().coordinator(id);
    options.database_url = through(db.url(), &proxy)?;
    let coordinator = Node { id, index: c.spawn("coordinator", &options)?, proxy };
    let mut live: Vec<Node> = Vec::new();
    for i in 0..workers {
        live.push(start_worker(&mut c, db, server, &format!("w{i}")).await?);
    }
    let ids = |live: &[Node]| live.iter().map(|n| n.id).collect::<BTreeSet<_>>();
    let took = settle(&mut c, &ids(&live)).await?;
    println!("settled {:.1} s after the start", took.as_secs_f64());

    let mut idle = String::new();
    for i in 0..3 {
        let window = idle_window(&mut admin, db, &live, Some(&coordinator)).await?;
        idle.push_str(&window.describe(
            &format!("idle, workers + coordinator, window {}", i + 1),
            workers,
            config.heartbeat_interval,
        ));
    }

    let mut owned = Vec::new();
    let mut running = Vec::new();
    for k in 0..kills {
        let victim = live.remove(0);
        let victim_pid = c.node(victim.index).pid();
        let rows = c.rows().await?;
        let keys: BTreeSet<PartitionId> =
            rows.iter().filter(|r| r.owner == Some(victim.id)).map(|r| r.partition).collect();
        let others = ids(&live);
        c.refresh()?;
        c.forget_ticks_before(monotonic_ns());
        let t0 = Instant::now();
        let mono0 = monotonic_ns();
        c.node(victim.index).signal(Signal::SIGKILL)?;
        let mut owned_at = None;
        let mut first_tick: BTreeMap<PartitionId, u64> = BTreeMap::new();
        while t0.elapsed() < FAILOVER_LIMIT && (owned_at.is_none() || first_tick.len() < keys.len()) {
            if owned_at.is_none() {
                let rows = c.rows().await?;
                let done = rows.iter().filter(|r| keys.contains(&r.partition)).all(|r| {
                    r.state == AssignmentState::Assigned && r.owner.is_some_and(|o| others.contains(&o))
                });
                if done {
                    owned_at = Some(t0.elapsed());
                }
            }
            c.refresh()?;
            for t in c.ticks() {
                if t.pid != victim_pid && t.mono_ns >= mono0 && keys.contains(&t.partition) {
                    let at = first_tick.entry(t.partition).or_insert(t.mono_ns);
                    *at = (*at).min(t.mono_ns);
                }
            }
            sleep(FAILOVER_POLL).await;
        }
        let running_at = (first_tick.len() == keys.len())
            .then(|| first_tick.values().max().map(|at| Duration::from_nanos(at - mono0)))
            .flatten();
        c.node(victim.index).kill()?;
        println!(
            "kill {:>2}: {} partitions; owned by others after {}, running after {}",
            k + 1,
            keys.len(),
            owned_at.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
            running_at.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
        );
        owned.push(owned_at);
        running.push(running_at);
        live.push(start_worker(&mut c, db, server, &format!("w{}", workers + k)).await?);
        c.forget_ticks_before(monotonic_ns().saturating_sub(2_000_000_000));
        settle(&mut c, &ids(&live)).await?;
    }

    // Without the coordinator: the workers' own idle cost.
    c.node(coordinator.index).terminate(STOP).await?;
    for i in 0..2 {
        let window = idle_window(&mut admin, db, &live, None).await?;
        idle.push_str(&window.describe(
            &format!("idle, workers only (coordinator stopped), window {}", i + 1),
            workers,
            config.heartbeat_interval,
        ));
    }
    c.stop_all(STOP).await?;

    let goal = config.session_timeout + Duration::from_millis(500);
    Ok(format!(
        "helix-faults failover benchmark — MariaDB/MySQL {}; {workers} workers, 1 × {partitions} partitions, \
         {kills} SIGKILLs\n\n{:<44} {:>3} {:>8} {:>8} {:>8} {:>8}\n{}\n{}\n\n{idle}",
        version.unwrap_or_default(),
        "figure (time from the SIGKILL)",
        "n",
        "min",
        "p50",
        "p99",
        "max",
        figure("(a) its partitions owned by others (rows)", &owned, goal),
        figure("(b) ... and running elsewhere (tick logs)", &running, goal),
    ))
}

/// Starts a worker process `name` behind a counting proxy of its own.
async fn start_worker(
    c: &mut Cluster,
    db: &ScratchMysql,
    server: std::net::SocketAddr,
    name: &str,
) -> BenchResult<Node> {
    let proxy = CountingProxy::start(server).await?;
    let url = through(db.url(), &proxy)?;
    let id = WorkerId::new_v7();
    let index = c.spawn_worker(name, id, |o| o.database_url = url)?;
    Ok(Node { id, index, proxy })
}

//! Benchmark of a Helix cluster on MariaDB / MySQL with the default timings
//! (`ClusterConfig::default()`: heartbeat 500 ms, session timeout 3 s, coordinator lease 3 s,
//! reconcile 500 ms), with in-process nodes on one actix system:
//!
//! 1. the time from the death of a worker (no goodbye: its link to the store is cut off for
//!    good, it fences itself) to all its partitions owned again by the others;
//! 2. the time of a graceful leave: until `Leave` returns and until every partition the
//!    leaver owned is owned by another worker;
//! 3. the coordinator takeover after the leader's link stalls for good: until the standby
//!    holds the lease under the next term, until it applied its first plan and until a worker
//!    that joined right after the stall owns its share;
//! 4. the statements per second of an idle cluster of 100 worker sessions on 4 queues × 256
//!    partitions (and 4 × 1024), from the server's global `Questions` counter, with and
//!    without the coordinator.
//!
//! Run it with a server at `HELIX_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`):
//!
//! ```text
//! cargo bench -p helix-actors --bench cluster_mysql
//! HELIX_BENCH_IDLE_ONLY=1 cargo bench -p helix-actors --bench cluster_mysql   # part 4 alone
//! ```
//!
//! It creates scratch databases (`helix_t_<uuid>`), drops them at the end, and prints a table.
//! It takes about three minutes. The statement counts are global to the server: run it on an
//! otherwise idle server (each idle window runs twice so a disturbance shows).
//!
//! Every node reaches its store through a Store actor, as `CoordinatorNode` and `Worker` do.
//! Each process role has its own connection pool, except the 100 idle workers of part 4:
//! 100 pools would not fit in MariaDB's default `max_connections` (151), so groups of
//! four workers share one pool of two connections (the statements are the same).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use helix_actors::coordinator::{Coordinator, LeaderElection, LeadershipChanged, Resign, StrategyAllocator};
use helix_actors::store_actor::{DEFAULT_MAX_IN_FLIGHT, StoreActor};
use helix_actors::testing::{CutOffStore, noop_handler};
use helix_actors::worker::{GetStatus, Leave, PartitionState, WorkerSession};
use helix_core::{
    ClusterConfig, ClusterName, DomainName, PartitionCount, PartitionId, QueueId, QueueName, WorkerId,
};
use helix_store::conformance::ScratchMysql;
use helix_store::{
    AssignmentRecord, AssignmentState, ConnectOptions, MysqlStore, QueueSpec, Store, Subscription,
    WorkerFilter, WorkerRegistration,
};
use mysql_async::prelude::Queryable;
use tokio::time::{Instant, sleep};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// How long any wait may last before the bench calls it a failure.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often the bench reads the store while measuring.
const POLL: Duration = Duration::from_millis(50);
/// The length of one idle window of part 4.
const WINDOW: Duration = Duration::from_secs(20);
/// Repetitions of parts 1–3.
const REPEATS: usize = 3;

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and only wants
    // the bench to build and start.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster_mysql: run with `cargo bench -p helix-actors --bench cluster_mysql`");
        return Ok(());
    }
    actix_rt::System::new().block_on(run())
}

/// A pool of its own on the scratch database.
async fn pool(db: &ScratchMysql, size: u32) -> BenchResult<Arc<dyn Store>> {
    let options = ConnectOptions { pool_size: size, ..ConnectOptions::default() };
    Ok(Arc::new(MysqlStore::connect(db.url(), &options).await?))
}

struct WorkerNode {
    id: WorkerId,
    link: CutOffStore,
    addr: Addr<WorkerSession>,
}

struct CoordinatorNode {
    id: WorkerId,
    link: CutOffStore,
    election: Addr<LeaderElection>,
    _coordinator: Addr<Coordinator>,
}

/// A cluster on one scratch database: its queues, an observer's pool, the nodes.
struct Cluster {
    db: ScratchMysql,
    observer: Arc<dyn Store>,
    config: ClusterConfig,
    queues: Vec<QueueId>,
    workers: Vec<WorkerNode>,
    coordinators: Vec<CoordinatorNode>,
    /// Every link ever made, cut off at the end.
    links: Vec<CutOffStore>,
}

impl Cluster {
    async fn new(queues: usize, partitions: u64) -> BenchResult<Self> {
        let db = ScratchMysql::create().await;
        let observer = pool(&db, 2).await?;
        let domain = DomainName::new("domain_order")?;
        observer.create_domain(&domain).await?;
        let mut ids = Vec::new();
        for q in 0..queues {
            let spec = QueueSpec::new(
                domain.clone(),
                QueueName::new(format!("q{q}"))?,
                PartitionCount::new(partitions)?,
            );
            ids.push(observer.create_queue(&spec).await?.id);
        }
        Ok(Self {
            db,
            observer,
            config: ClusterConfig::default(),
            queues: ids,
            workers: Vec::new(),
            coordinators: Vec::new(),
            links: Vec::new(),
        })
    }

    /// Starts a worker session over `store` subscribed to every queue.
    fn add_worker(&mut self, store: Arc<dyn Store>) -> WorkerId {
        let id = WorkerId::new_v7();
        let link = CutOffStore::new(store);
        let registration = WorkerRegistration {
            id,
            host: "bench".into(),
            pid: std::process::id(),
            labels: BTreeMap::new(),
            subscriptions: self.queues.iter().map(|q| Subscription { queue_id: *q, capacity: 1 }).collect(),
            session_timeout: self.config.session_timeout,
        };
        // As a node does: the session reaches the store through a Store actor.
        let door = StoreActor::start_handle(Arc::new(link.clone()), DEFAULT_MAX_IN_FLIGHT).into_store();
        let addr = WorkerSession::new(door, self.config.clone(), registration, noop_handler()).start();
        self.links.push(link.clone());
        self.workers.push(WorkerNode { id, link, addr });
        id
    }

    /// Starts a coordinator node (election + coordinator) over a pool of its own.
    async fn add_coordinator(&mut self) -> BenchResult<WorkerId> {
        let id = WorkerId::new_v7();
        let link = CutOffStore::new(pool(&self.db, 2).await?);
        let store = StoreActor::start_handle(Arc::new(link.clone()), DEFAULT_MAX_IN_FLIGHT).into_store();
        let config = self.config.clone();
        let allocator = StrategyAllocator.start().recipient();
        let mut election = None;
        let coordinator = Coordinator::create(|ctx| {
            let addr = LeaderElection::new(
                Arc::clone(&store),
                ClusterName::default(),
                id,
                config.clone(),
                ctx.address().recipient::<LeadershipChanged>(),
            )
            .start();
            election = Some(addr.clone());
            Coordinator::new(store, config, allocator).with_election(addr.recipient())
        });
        let election = election.ok_or("the election was not started")?;
        self.links.push(link.clone());
        self.coordinators.push(CoordinatorNode { id, link, election, _coordinator: coordinator });
        Ok(id)
    }

    async fn rows(&self) -> BenchResult<Vec<AssignmentRecord>> {
        let mut rows = Vec::new();
        for q in &self.queues {
            rows.extend(self.observer.assignments(*q).await?.rows);
        }
        Ok(rows)
    }

    async fn version(&self) -> BenchResult<u64> {
        let mut sum = 0;
        for q in &self.queues {
            sum += self.observer.assignments(*q).await?.assignment_version;
        }
        Ok(sum)
    }

    fn alive(&self) -> BTreeSet<WorkerId> {
        self.workers.iter().map(|w| w.id).collect()
    }

    /// Every partition owned by a live worker, settled, each queue balanced within one.
    async fn balanced(&self) -> BenchResult<bool> {
        let alive = self.alive();
        for q in &self.queues {
            let rows = self.observer.assignments(*q).await?.rows;
            let mut loads: BTreeMap<WorkerId, usize> = alive.iter().map(|w| (*w, 0)).collect();
            for r in &rows {
                match r.owner {
                    Some(owner) if r.state == AssignmentState::Assigned && alive.contains(&owner) => {
                        *loads.entry(owner).or_default() += 1;
                    }
                    _ => return Ok(false),
                }
            }
            let (min, max) = (loads.values().min(), loads.values().max());
            if max.zip(min).is_none_or(|(max, min)| max - min > 1) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Balanced, and every partition running on its owner.
    async fn settled(&self) -> BenchResult<bool> {
        Ok(self.balanced().await? && self.running().await? == self.rows().await?.len())
    }

    /// Where the cluster stands, for a report when it does not settle.
    async fn describe(&self) -> String {
        let rows = match self.rows().await {
            Ok(rows) => rows,
            Err(error) => return format!("rows unreadable: {error}"),
        };
        let unowned = rows.iter().filter(|r| r.owner.is_none()).count();
        let revoking = rows.iter().filter(|r| r.state == AssignmentState::Revoking).count();
        let owners: BTreeSet<WorkerId> = rows.iter().filter_map(|r| r.owner).collect();
        let live = self.observer.list_workers(WorkerFilter::Live).await.map_or(0, |w| w.len());
        let mut running = 0;
        let mut fenced = 0;
        let mut unregistered = 0;
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        let mut stuck = Vec::new();
        for w in &self.workers {
            if let Ok(status) = w.addr.send(GetStatus).await {
                running += status.running().len();
                fenced += usize::from(status.fenced);
                unregistered += usize::from(status.session_epoch.is_none());
                for p in &status.partitions {
                    *states.entry(format!("{:?}", p.state)).or_default() += 1;
                }
                for r in rows.iter().filter(|r| r.owner == Some(w.id)) {
                    let known = status
                        .partitions
                        .iter()
                        .find(|p| p.queue == r.queue_id && p.partition == r.partition);
                    if known.is_none_or(|p| p.state != PartitionState::Running || p.epoch != r.epoch) {
                        stuck.push(format!(
                            "(queue {} partition {} epoch {} in the store; session: {:?})",
                            r.queue_id,
                            r.partition,
                            r.epoch,
                            known.map(|p| (p.state, p.epoch))
                        ));
                    }
                }
            }
        }
        stuck.truncate(5);
        format!(
            "{} partitions: {unowned} unowned, {revoking} revoking, {} owners; {live} live workers in the \
             store; sessions: {running} partitions running, {fenced} fenced, {unregistered} unregistered, states \
             {states:?}; owned but not running: {}",
            rows.len(),
            owners.len(),
            stuck.join(" ")
        )
    }

    /// Every partition owned and settled (no REVOKING), whatever the balance.
    async fn all_owned(&self) -> BenchResult<bool> {
        Ok(self.rows().await?.iter().all(|r| r.owner.is_some() && r.state == AssignmentState::Assigned))
    }

    /// How many partitions the live workers' sessions run.
    async fn running(&self) -> BenchResult<usize> {
        let mut sum = 0;
        for w in &self.workers {
            sum += w.addr.send(GetStatus).await?.running().len();
        }
        Ok(sum)
    }

    /// The partitions `worker` owns in the store.
    async fn owned_by(&self, worker: WorkerId) -> BenchResult<BTreeSet<(QueueId, PartitionId)>> {
        Ok(self
            .rows()
            .await?
            .iter()
            .filter(|r| r.owner == Some(worker))
            .map(|r| (r.queue_id, r.partition))
            .collect())
    }

    /// Whether every partition of `keys` is owned (settled) by a live worker.
    async fn owned_by_others(&self, keys: &BTreeSet<(QueueId, PartitionId)>) -> BenchResult<bool> {
        let alive = self.alive();
        Ok(self
            .rows()
            .await?
            .iter()
            .filter(|r| keys.contains(&(r.queue_id, r.partition)))
            .all(|r| r.state == AssignmentState::Assigned && r.owner.is_some_and(|o| alive.contains(&o))))
    }

    /// Whether every partition of `keys` runs on a live worker.
    async fn running_on_others(&self, keys: &BTreeSet<(QueueId, PartitionId)>) -> BenchResult<bool> {
        let mut running = BTreeSet::new();
        for w in &self.workers {
            running.extend(w.addr.send(GetStatus).await?.running().into_iter().map(|(q, p, _)| (q, p)));
        }
        Ok(keys.is_subset(&running))
    }

    /// Cuts every link off, stops the sessions and drops the database.
    async fn shut_down(self) {
        for link in &self.links {
            link.cut_off();
        }
        for w in &self.workers {
            let _ = w.addr.send(Leave).await;
        }
        for c in &self.coordinators {
            c.election.do_send(Resign);
        }
        self.db.drop_database().await;
    }
}

/// Checks `done` every [`POLL`] until it holds; how long that took, `None` after [`DEADLINE`].
async fn until<F, Fut>(start: Instant, mut done: F) -> BenchResult<Option<Duration>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<bool>>,
{
    loop {
        if done().await? {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() >= DEADLINE {
            return Ok(None);
        }
        sleep(POLL).await;
    }
}

async fn settle<F, Fut>(c: &Cluster, what: &str, done: F) -> BenchResult<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<bool>>,
{
    match until(Instant::now(), done).await? {
        Some(_) => Ok(()),
        None => Err(format!("{what}: not settled within {DEADLINE:?}: {}", c.describe().await).into()),
    }
}

/// A measured figure: its samples, `None` for a sample that missed the deadline.
struct Figure {
    name: String,
    samples: Vec<Option<Duration>>,
    goal: Option<Duration>,
}

impl Figure {
    fn new(name: &str, goal: Option<Duration>) -> Self {
        Self { name: name.to_owned(), samples: Vec::new(), goal }
    }

    fn row(&self) -> String {
        let mut got: Vec<Duration> = self.samples.iter().flatten().copied().collect();
        got.sort();
        let missed = self.samples.len() - got.len();
        let cell = |d: Option<&Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        let verdict = match (self.goal, got.last()) {
            (_, _) if missed > 0 => format!("MISSED ({missed} timed out)"),
            (Some(goal), Some(max)) if *max <= goal => "met".to_owned(),
            (Some(_), Some(_)) => "MISSED".to_owned(),
            _ => "(info)".to_owned(),
        };
        format!(
            "{:<58} {:>3} {:>8} {:>8} {:>8} {:>8}  {}",
            self.name,
            self.samples.len(),
            cell(got.first()),
            cell(got.get(got.len() / 2)),
            cell(got.last()),
            self.goal.map_or("-".to_owned(), |g| format!("≤ {:.1} s", g.as_secs_f64())),
            verdict
        )
    }
}

async fn run() -> BenchResult<()> {
    let info_db = ScratchMysql::create().await;
    let mut admin = mysql_async::Conn::new(mysql_async::Opts::from_url(info_db.url().as_str())?).await?;
    let version: Option<String> = admin.query_first("SELECT VERSION()").await?;
    let max_connections: Option<u64> = admin.query_first("SELECT @@max_connections").await?;
    let config = ClusterConfig::default();
    println!(
        "helix-actors cluster benchmark — server {} (max_connections {}), {} cpus",
        version.clone().unwrap_or_default(),
        max_connections.unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "timings: heartbeat {:?}, session timeout {:?}, lease {:?} (renewed every {:?}), reconcile {:?}, \
         safety margin {:?}",
        config.heartbeat_interval,
        config.session_timeout,
        config.coordinator_lease,
        config.coordinator_renew_interval,
        config.reconcile_interval,
        config.safety_margin
    );
    let result = bench(&mut admin, &config).await;
    drop(admin);
    info_db.drop_database().await;
    let (figures, idle) = result?;
    println!();
    println!("helix-actors cluster benchmark — MariaDB/MySQL {}", version.unwrap_or_default());
    println!(
        "machine: {} cpus; timings ClusterConfig::default(); samples polled every {POLL:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "\n{:<58} {:>3} {:>8} {:>8} {:>8} {:>8}  verdict",
        "figure (time from the event)", "n", "min", "median", "max", "goal"
    );
    for f in &figures {
        println!("{}", f.row());
    }
    println!("\n{idle}");
    Ok(())
}

async fn bench(admin: &mut mysql_async::Conn, config: &ClusterConfig) -> BenchResult<(Vec<Figure>, String)> {
    let started = Instant::now();
    let mut figures = Vec::new();
    // HELIX_BENCH_IDLE_ONLY=1 runs part 4 alone.
    if std::env::var_os("HELIX_BENCH_IDLE_ONLY").is_none() {
        figures.extend(death_and_leave(config).await?);
        println!("[{:>5.1} s] parts 1–2 done", started.elapsed().as_secs_f64());
        figures.extend(takeover(config).await?);
        println!("[{:>5.1} s] part 3 done", started.elapsed().as_secs_f64());
    }
    let mut idle = String::new();
    for (partitions, windows) in [(256, 2), (1024, 1)] {
        let mut c = Cluster::new(4, partitions).await?;
        match idle_cluster(admin, config, &mut c, partitions, windows).await {
            Ok(report) => idle.push_str(&report),
            Err(error) => idle.push_str(&format!("4. idle cluster, 4 × {partitions}: FAILED: {error}\n")),
        }
        c.shut_down().await;
        println!("[{:>5.1} s] part 4 ({partitions}) done", started.elapsed().as_secs_f64());
    }
    Ok((figures, idle))
}

/// Parts 1 and 2: 1 queue × 50 partitions, 3 workers and one coordinator node.
async fn death_and_leave(config: &ClusterConfig) -> BenchResult<Vec<Figure>> {
    let mut c = Cluster::new(1, 50).await?;
    c.add_coordinator().await?;
    for _ in 0..3 {
        let store = pool(&c.db, 2).await?;
        c.add_worker(store);
    }
    settle(&c, "3 workers", || c.settled()).await?;

    let death_goal = config.session_timeout + Duration::from_secs(1);
    let mut fenced = Figure::new("1. worker death: the victim has fenced itself", None);
    let mut owned = Figure::new("1. worker death: its partitions owned by others (store)", Some(death_goal));
    let mut running = Figure::new("1. worker death: ... and running on the others", None);
    for _ in 0..REPEATS {
        let victim = c.workers.remove(0);
        let keys = c.owned_by(victim.id).await?;
        victim.link.cut_off();
        let t0 = Instant::now();
        fenced
            .samples
            .push(until(t0, || async { Ok(victim.addr.send(GetStatus).await?.running().is_empty()) }).await?);
        owned.samples.push(until(t0, || c.owned_by_others(&keys)).await?);
        running.samples.push(until(t0, || c.running_on_others(&keys)).await?);
        let _ = victim.addr.send(Leave).await;
        let store = pool(&c.db, 2).await?;
        c.add_worker(store);
        settle(&c, "a replacement worker", || c.settled()).await?;
    }

    let leave_goal = Duration::from_secs(1);
    let mut returned = Figure::new("2. graceful leave: Leave returned", Some(leave_goal));
    let mut handed =
        Figure::new("2. graceful leave: its partitions owned by others (store)", Some(leave_goal));
    let mut started = Figure::new("2. graceful leave: ... and running on the others", None);
    for _ in 0..REPEATS {
        let leaver = c.workers.remove(0);
        let keys = c.owned_by(leaver.id).await?;
        let t0 = Instant::now();
        let leave = async {
            let outcome = leaver.addr.send(Leave).await;
            (t0.elapsed(), outcome)
        };
        let watch = async {
            let owned = until(t0, || c.owned_by_others(&keys)).await;
            let running = until(t0, || c.running_on_others(&keys)).await;
            (owned, running)
        };
        let ((back, outcome), (owned, running)) = futures::future::join(leave, watch).await;
        let outcome = outcome?;
        if !outcome.deregistered || outcome.released.len() + outcome.handed_off.len() != keys.len() {
            println!("  leave outcome: {outcome:?} for {} partitions", keys.len());
        }
        returned.samples.push(Some(back));
        handed.samples.push(owned?);
        started.samples.push(running?);
        let store = pool(&c.db, 2).await?;
        c.add_worker(store);
        settle(&c, "a replacement worker", || c.settled()).await?;
    }
    c.shut_down().await;
    Ok(vec![fenced, owned, running, returned, handed, started])
}

/// Part 3: two coordinator nodes; the leader's link stalls for good.
async fn takeover(config: &ClusterConfig) -> BenchResult<Vec<Figure>> {
    let mut c = Cluster::new(1, 50).await?;
    let first = c.add_coordinator().await?;
    let observer = Arc::clone(&c.observer);
    let holds = |who: WorkerId| {
        let observer = Arc::clone(&observer);
        move || {
            let observer = Arc::clone(&observer);
            async move {
                Ok(observer
                    .get_lease(&ClusterName::default())
                    .await?
                    .is_some_and(|l| l.holder == Some(who) && !l.expired))
            }
        }
    };
    settle(&c, "the first leader", holds(first)).await?;
    for _ in 0..3 {
        let store = pool(&c.db, 2).await?;
        c.add_worker(store);
    }
    settle(&c, "3 workers", || c.settled()).await?;
    c.add_coordinator().await?;

    let goal = config.coordinator_lease + Duration::from_secs(1);
    let mut lease = Figure::new("3. takeover: the standby holds the lease, term + 1", Some(goal));
    let mut plan = Figure::new("3. takeover: ... and applied its first plan", Some(goal));
    let mut share = Figure::new("3. takeover: ... a worker added at the stall owns its share", None);
    for _ in 0..REPEATS {
        let lease_now = observer.get_lease(&ClusterName::default()).await?.ok_or("no lease")?;
        let leader_at = c
            .coordinators
            .iter()
            .position(|n| Some(n.id) == lease_now.holder)
            .ok_or("the leader is unknown")?;
        let leader = c.coordinators.remove(leader_at);
        let standby = c.coordinators.last().ok_or("no standby")?.id;
        let version = c.version().await?;
        leader.link.stall();
        let t0 = Instant::now();
        let store = pool(&c.db, 2).await?;
        let newcomer = c.add_worker(store);
        let term = lease_now.term.0 + 1;
        let next_term = |observer: Arc<dyn Store>| async move {
            Ok(observer
                .get_lease(&ClusterName::default())
                .await?
                .is_some_and(|l| l.holder == Some(standby) && l.term.0 == term))
        };
        lease.samples.push(until(t0, || next_term(Arc::clone(&observer))).await?);
        plan.samples.push(until(t0, || async { Ok(c.version().await? != version) }).await?);
        share.samples.push(
            until(t0, || async { Ok(!c.owned_by(newcomer).await?.is_empty() && c.balanced().await?) })
                .await?,
        );
        // The old leader is dead for good; a fresh standby takes its place.
        leader.link.cut_off();
        leader.election.do_send(Resign);
        c.add_coordinator().await?;
    }
    c.shut_down().await;
    Ok(vec![lease, plan, share])
}

/// The server's global `Questions`, `Com_stmt_prepare`, `Com_stmt_execute`.
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
            .unwrap_or_default()
    };
    Ok([get("Questions"), get("Com_stmt_prepare"), get("Com_stmt_execute")])
}

/// One idle window: statements per second (Questions), prepares and executes per second, and
/// whether the assignments stayed put.
async fn window(admin: &mut mysql_async::Conn, c: &Cluster) -> BenchResult<([f64; 3], bool)> {
    let version = c.version().await?;
    let before = counters(admin).await?;
    let t0 = Instant::now();
    sleep(WINDOW).await;
    let after = counters(admin).await?;
    let secs = t0.elapsed().as_secs_f64();
    // The admin's own SHOW statement is one question.
    let rate = |i: usize| after[i].saturating_sub(before[i]).saturating_sub(u64::from(i == 0)) as f64 / secs;
    Ok(([rate(0), rate(1), rate(2)], c.version().await? == version))
}

/// Part 4: 100 worker sessions on 4 queues × `partitions`, then one coordinator node.
async fn idle_cluster(
    admin: &mut mysql_async::Conn,
    config: &ClusterConfig,
    c: &mut Cluster,
    partitions: u64,
    leader_windows: usize,
) -> BenchResult<String> {
    const WORKERS: usize = 100;
    const PER_POOL: usize = 4;
    let mut store = pool(&c.db, 2).await?;
    for i in 0..WORKERS {
        if i > 0 && i % PER_POOL == 0 {
            store = pool(&c.db, 2).await?;
        }
        c.add_worker(Arc::clone(&store));
    }
    let observer = Arc::clone(&c.observer);
    settle(c, "100 registrations", || async {
        Ok(observer.list_workers(WorkerFilter::Live).await?.len() == WORKERS)
    })
    .await?;
    let t0 = Instant::now();
    c.add_coordinator().await?;
    let total = partitions as usize * c.queues.len();
    settle(c, "1 coordinator, 100 workers", || async {
        Ok(c.all_owned().await? && c.running().await? == total)
    })
    .await?;
    let settled = t0.elapsed();
    let first: Vec<Option<WorkerId>> = c.rows().await?.iter().map(|r| r.owner).collect();
    // The first grant may be followed by a rebalancing wave: wait until the assignments stay
    // put for four reconcile ticks.
    loop {
        let version = c.version().await?;
        sleep(config.reconcile_interval * 4).await;
        if c.version().await? == version && c.all_owned().await? && c.running().await? == total {
            break;
        }
        if t0.elapsed() > DEADLINE * 2 {
            return Err(format!("the idle cluster never stopped moving: {}", c.describe().await).into());
        }
    }
    let stable = t0.elapsed();
    let moved = c.rows().await?.iter().zip(&first).filter(|(r, f)| r.owner != **f).count();

    let heartbeat = config.heartbeat_interval.as_secs_f64();
    let tick = config.reconcile_interval.as_secs_f64();
    let mut out = format!(
        "4. idle cluster: 100 workers × 4 queues × {partitions} partitions ({total}), one coordinator \
         (all owned and running {:.1} s after it started; then {moved} partitions moved before the assignments \
         stayed put at {:.1} s); {WINDOW:?} windows, Questions counter\n",
        settled.as_secs_f64(),
        stable.as_secs_f64()
    );
    let mut with = Vec::new();
    for i in 0..leader_windows {
        let (rates, stable) = window(admin, c).await?;
        with.push(rates[0]);
        out.push_str(&format!(
            "   workers + coordinator, window {}: {:>7.1} statements/s (prepare {:.1}/s, execute {:.1}/s) = \
             {:.2} per worker per heartbeat{}\n",
            i + 1,
            rates[0],
            rates[1],
            rates[2],
            rates[0] * heartbeat / WORKERS as f64,
            if stable { "" } else { "  (assignments moved!)" }
        ));
    }
    for node in &c.coordinators {
        node.election.do_send(Resign);
    }
    sleep(Duration::from_secs(1)).await;
    let (rates, stable) = window(admin, c).await?;
    let per_worker = rates[0] * heartbeat / WORKERS as f64;
    out.push_str(&format!(
        "   workers only (coordinator resigned): {:>7.1} statements/s (prepare {:.1}/s, execute {:.1}/s) = \
         {per_worker:.2} per worker per heartbeat (goal ≤ 1: {}){}\n",
        rates[0],
        rates[1],
        rates[2],
        if per_worker <= 1.0 { "met" } else { "MISSED" },
        if stable { "" } else { "  (assignments moved!)" }
    ));
    for (i, w) in with.iter().enumerate() {
        out.push_str(&format!(
            "   coordinator share, window {}: {:.1} statements/s = {:.2} per reconcile tick of {:?}\n",
            i + 1,
            w - rates[0],
            (w - rates[0]) * tick,
            config.reconcile_interval
        ));
    }
    Ok(out)
}

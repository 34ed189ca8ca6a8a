//! Multi-process fault tests of the ownership promise (issue 7, points 1, 2 and 4).
//!
//! Every node is a real `helix-node` process, on a scratch MariaDB/MySQL database of its own
//! (`HELIX_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`) or on a SQLite file shared
//! by the processes; the verdicts come from the processes' tick logs (user code running under
//! an ownership) and from the store. The cluster runs with the default timings (heartbeat 500 ms,
//! session timeout 3 s, lease 3 s); partitions tick every 20 ms.
//!
//! ```text
//! cargo nextest run -j2 -p helix-faults --test process_faults
//! ```
//!
//! Every wait is for a condition with a generous deadline; the only fixed pause is the fault
//! itself (a worker stopped with `SIGSTOP` for 6 s).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use helix_core::WorkerId;
use helix_faults::analysis::{leader_conflicts, leaderships, overlaps, tenures};
use helix_faults::cluster::{Cluster, Deadline, POLL, describe_rows};
use helix_faults::process::NodeOptions;
use helix_store::conformance::ScratchMysql;
use helix_store::{AssignmentRecord, AssignmentState, EventKind, WorkerStatus};
use nix::sys::signal::Signal;
use tokio::time::{Instant, sleep};

/// The node binary of this crate.
const NODE: &str = env!("CARGO_BIN_EXE_helix-node");
/// How long a cluster may take to reach a settled, running state.
const SETTLE: Duration = Duration::from_secs(40);
/// How long a process may take to stop after `SIGTERM` (a drain included).
const STOP: Duration = Duration::from_secs(20);
/// How fresh a tick must be for its partition to count as running.
const FRESH: Duration = Duration::from_secs(1);
/// How long a second process under a live id may take to be refused.
const REFUSAL: Duration = Duration::from_secs(15);
/// How long a worker is stopped with `SIGSTOP`: twice the session timeout.
const PAUSE: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Mysql,
    Sqlite,
}

/// A cluster on a scratch store, with its files in a temporary directory.
struct Scene {
    cluster: Cluster,
    mysql: Option<ScratchMysql>,
    _dir: tempfile::TempDir,
}

impl Scene {
    async fn new(db: Db, partitions: u64, adjust: impl FnOnce(&mut NodeOptions)) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (mysql, url) = match db {
            Db::Mysql => {
                let scratch = ScratchMysql::create().await;
                let url = scratch.url().to_string();
                (Some(scratch), url)
            }
            Db::Sqlite => (None, format!("sqlite://{}", dir.path().join("helix.db").display())),
        };
        let mut base = NodeOptions::new(url, partitions);
        adjust(&mut base);
        let cluster = match Cluster::new(std::path::Path::new(NODE), dir.path(), base).await {
            Ok(cluster) => cluster,
            Err(error) => {
                if let Some(scratch) = &mysql {
                    scratch.drop_database().await;
                }
                return Err(error.into());
            }
        };
        Ok(Self { cluster, mysql, _dir: dir })
    }

    /// Stops the processes and drops the database, whatever the outcome of the scenario.
    async fn close(mut self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let stopped = self.cluster.stop_all(STOP).await;
        if let Some(scratch) = &self.mysql {
            scratch.drop_database().await;
        }
        outcome?;
        stopped.context("stopping the processes")
    }
}

/// Waits until every partition runs on its owner (ticks at the row's epoch) and the owners are
/// exactly `owners`, each within one of the others' load; returns the rows.
async fn until_running_on(c: &mut Cluster, owners: &[WorkerId]) -> anyhow::Result<Vec<AssignmentRecord>> {
    let wanted: BTreeSet<WorkerId> = owners.iter().copied().collect();
    let deadline = Deadline::after("every partition running on its owner, balanced", SETTLE);
    loop {
        let (idle, rows) = c.idle_rows(FRESH).await?;
        let mut loads: BTreeMap<WorkerId, usize> = BTreeMap::new();
        for owner in rows.iter().filter_map(|r| r.owner) {
            *loads.entry(owner).or_default() += 1;
        }
        let balanced =
            loads.values().max().zip(loads.values().min()).is_some_and(|(max, min)| max - min <= 1);
        if idle.is_empty() && loads.keys().copied().collect::<BTreeSet<_>>() == wanted && balanced {
            return Ok(rows);
        }
        if deadline.expired() {
            let state = format!(
                "rows {}; not running: {}\n{}",
                describe_rows(&rows),
                describe_rows(&idle),
                c.report()
            );
            return Err(deadline.missed(&state).into());
        }
        sleep(POLL).await;
    }
}

/// The harness itself: a node process serves its partitions, ticks, and on `SIGTERM` leaves
/// gracefully (its partitions released, its session deregistered) and exits with 0.
#[tokio::test]
async fn sqlite_a_node_process_ticks_and_stops_cleanly_on_sigterm() -> anyhow::Result<()> {
    let mut scene = Scene::new(Db::Sqlite, 2, |_| {}).await?;
    let outcome = async {
        let c = &mut scene.cluster;
        let id = WorkerId::new_v7();
        let node = c.spawn("node", &c.base().clone().worker(id).coordinator(WorkerId::new_v7()))?;
        until_running_on(c, &[id]).await?;
        let (status, by_itself) = c.node(node).terminate(STOP).await?;
        ensure!(by_itself && status.success(), "the node did not stop cleanly: {status}\n{}", c.report());
        let worker = c.client().store().get_worker(id).await?;
        ensure!(worker.status == WorkerStatus::Left, "the worker did not deregister: {:?}", worker.status);
        let rows = c.rows().await?;
        ensure!(rows.iter().all(|r| r.owner.is_none()), "partitions still owned: {}", describe_rows(&rows));
        Ok(())
    }
    .await;
    scene.close(outcome).await
}

/// The last `helix-node: error:` line a process printed, if any.
fn error_line(stderr: &str) -> Option<String> {
    stderr.lines().rev().find(|l| l.starts_with("helix-node: error:")).map(str::to_owned)
}

/// Point 1: a second process under the id of a live worker is refused with an error that names
/// the id and the lease, and never runs a partition; the first keeps running.
async fn second_worker_process_under_a_live_id(db: Db) -> anyhow::Result<()> {
    let mut scene = Scene::new(db, 8, |_| {}).await?;
    let outcome = async {
        let c = &mut scene.cluster;
        c.spawn_coordinator("coordinator", WorkerId::new_v7())?;
        let id = WorkerId::new_v7();
        let first = c.spawn_worker("first", id, |_| {})?;
        until_running_on(c, &[id]).await?;

        let second = c.spawn_worker("second", id, |_| {})?;
        let second_pid = c.node(second).pid();
        let start = Instant::now();
        // Until the second process exits, or both have run one partition at once.
        let exit = loop {
            if let Some(status) = c.node(second).try_status()? {
                break Some(status);
            }
            c.refresh()?;
            if start.elapsed() >= REFUSAL || !overlaps(&tenures(c.ticks())).is_empty() {
                break None;
            }
            sleep(POLL).await;
        };
        let first_alive = c.node(first).try_status()?.is_none();
        let report = c.report();
        c.stop_all(STOP).await?;

        let mut problems = Vec::new();
        let message = error_line(&c.node(second).stderr_text());
        match exit {
            None => problems.push(format!(
                "the second process under the live id {id} was not refused: still running {:.1} s after it started",
                start.elapsed().as_secs_f64()
            )),
            Some(status) if status.success() => problems.push(format!("the second process exited with {status}")),
            Some(status) => {
                let names_it = message.as_deref().is_some_and(|m| {
                    m.contains(&id.to_string()) && m.to_lowercase().contains("lease")
                });
                if !names_it {
                    problems.push(format!(
                        "the second process exited with {status}, but its error does not name the id {id} and its \
                         lease: {message:?}"
                    ));
                }
            }
        }
        let second_ticks = c.ticks().iter().filter(|t| t.pid == second_pid).count();
        if second_ticks > 0 {
            problems.push(format!("the second process ran user code: {second_ticks} ticks"));
        }
        let found = overlaps(&tenures(c.ticks()));
        if !found.is_empty() {
            let examples: Vec<String> = found.iter().take(3).map(ToString::to_string).collect();
            problems.push(format!("{} overlapping tenures, e.g.\n  {}", found.len(), examples.join("\n  ")));
        }
        if !first_alive {
            problems.push("the first process did not keep running".to_owned());
        }
        ensure!(problems.is_empty(), "{}\n{report}", problems.join("\n"));
        Ok(())
    }
    .await;
    scene.close(outcome).await
}

#[tokio::test]
async fn mysql_second_worker_process_under_a_live_id_is_refused() -> anyhow::Result<()> {
    second_worker_process_under_a_live_id(Db::Mysql).await
}

#[tokio::test]
async fn sqlite_second_worker_process_under_a_live_id_is_refused() -> anyhow::Result<()> {
    second_worker_process_under_a_live_id(Db::Sqlite).await
}

/// Point 1, coordinators: two processes under one coordinator id never lead under one term,
/// nor at the same time.
#[tokio::test]
async fn mysql_two_coordinator_processes_under_one_id_never_share_a_term() -> anyhow::Result<()> {
    let mut scene = Scene::new(Db::Mysql, 4, |_| {}).await?;
    let outcome = async {
        let c = &mut scene.cluster;
        let id = WorkerId::new_v7();
        let first = c.spawn_coordinator("first", id)?;
        c.spawn_worker("worker", WorkerId::new_v7(), |_| {})?;
        let first_pid = c.node(first).pid();
        let deadline = Deadline::after("the first coordinator process leading", SETTLE);
        loop {
            c.refresh()?;
            if c.leads().iter().any(|l| l.pid == first_pid) {
                break;
            }
            if deadline.expired() {
                return Err(deadline.missed(&c.report()).into());
            }
            sleep(POLL).await;
        }

        let second = c.spawn_coordinator("second", id)?;
        let start = Instant::now();
        // Three leases long, or until the second exits or the two conflict.
        let window = c.base().config.coordinator_lease * 3;
        let exit = loop {
            if let Some(status) = c.node(second).try_status()? {
                break Some(status);
            }
            c.refresh()?;
            if start.elapsed() >= window || !leader_conflicts(&leaderships(c.leads())).is_empty() {
                break None;
            }
            sleep(POLL).await;
        };
        let report = c.report();
        c.stop_all(STOP).await?;

        let elected: Vec<String> = c
            .client()
            .events_since(0, 1000)
            .await?
            .iter()
            .filter(|e| e.kind == EventKind::LeaderElected)
            .map(|e| format!("term {:?} by {:?}", e.term.map(|t| t.0), e.worker.map(|w| w.to_string())))
            .collect();
        let conflicts = leader_conflicts(&leaderships(c.leads()));
        let second_said = error_line(&c.node(second).stderr_text());
        let second_fate = exit.map_or_else(|| "it was still running".to_owned(), |s| format!("it exited with {s}"));
        let examples: Vec<String> = conflicts.iter().take(3).map(|(a, b)| format!("[{a}] and [{b}]")).collect();
        ensure!(
            conflicts.is_empty(),
            "two coordinator processes under the id {id} led together ({} conflicts), e.g. {}; the second process \
             started {:.1} s before and {second_fate} ({second_said:?}); elections: {elected:?}\n{report}",
            conflicts.len(),
            examples.join(", "),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
    .await;
    scene.close(outcome).await
}

/// Point 2: the owner drains a revoked partition for 6 s; the newcomer it was revoked towards
/// is killed; the revocation is called off. Every partition must end up running on its owner.
async fn cancelled_revocation(db: Db) -> anyhow::Result<()> {
    let mut scene = Scene::new(db, 4, |_| {}).await?;
    let outcome = async {
        let c = &mut scene.cluster;
        c.spawn_coordinator("coordinator", WorkerId::new_v7())?;
        let owner = WorkerId::new_v7();
        c.spawn_worker("owner", owner, |o| o.drain_time = Duration::from_secs(6))?;
        until_running_on(c, &[owner]).await?;

        let newcomer = WorkerId::new_v7();
        let n = c.spawn_worker("newcomer", newcomer, |_| {})?;
        let deadline = Deadline::after("a partition revoked towards the newcomer", SETTLE);
        loop {
            let rows = c.rows().await?;
            if rows.iter().any(|r| r.state == AssignmentState::Revoking && r.target == Some(newcomer)) {
                break;
            }
            if deadline.expired() {
                return Err(deadline.missed(&describe_rows(&rows)).into());
            }
            sleep(POLL).await;
        }
        c.node(n).kill()?;

        // The newcomer's lease runs out (3 s), the revocation is called off, the owner's drain
        // ends (6 s) and its handoff is fenced: the owner must run the partition again.
        let deadline = Deadline::after(
            "every partition running on its owner after the revocation was called off",
            SETTLE,
        );
        loop {
            let (idle, rows) = c.idle_rows(FRESH).await?;
            if idle.is_empty() && rows.iter().all(|r| r.owner == Some(owner)) {
                break;
            }
            if deadline.expired() {
                let events: Vec<String> = c
                    .client()
                    .events_since(0, 1000)
                    .await?
                    .iter()
                    .filter(|e| e.partition.is_some())
                    .map(|e| {
                        format!("{:?} p{:?} e{:?}", e.kind, e.partition.map(|p| p.0), e.epoch.map(|e| e.0))
                    })
                    .collect();
                let state = format!(
                    "rows {}; not running on their owner: {}; partition events: {}\n{}",
                    describe_rows(&rows),
                    describe_rows(&idle),
                    events.join(", "),
                    c.report()
                );
                return Err(deadline.missed(&state).into());
            }
            sleep(POLL).await;
        }
        Ok(())
    }
    .await;
    scene.close(outcome).await
}

#[tokio::test]
async fn mysql_a_cancelled_revocation_leaves_every_partition_running_on_its_owner() -> anyhow::Result<()> {
    cancelled_revocation(Db::Mysql).await
}

#[tokio::test]
async fn sqlite_a_cancelled_revocation_leaves_every_partition_running_on_its_owner() -> anyhow::Result<()> {
    cancelled_revocation(Db::Sqlite).await
}

/// Point 4: a worker stopped with `SIGSTOP` for 6 s, long enough for its partitions to be
/// granted to the other worker and to tick there, then resumed. User code of the paused worker
/// must never run under its old epoch once the new owner's has started: for every partition,
/// tenures in epoch order never overlap in time.
async fn paused_worker(db: Db, pauses: usize) -> anyhow::Result<()> {
    let mut scene = Scene::new(db, 8, |_| {}).await?;
    let outcome = async {
        let c = &mut scene.cluster;
        c.spawn_coordinator("coordinator", WorkerId::new_v7())?;
        let ids = [WorkerId::new_v7(), WorkerId::new_v7()];
        let workers = [c.spawn_worker("a", ids[0], |_| {})?, c.spawn_worker("b", ids[1], |_| {})?];
        let mut rows = until_running_on(c, &ids).await?;

        for round in 0..pauses {
            let (victim, other) = (round % 2, (round + 1) % 2);
            let moving: Vec<AssignmentRecord> =
                rows.iter().filter(|r| r.owner == Some(ids[victim])).cloned().collect();
            ensure!(!moving.is_empty(), "the victim owns nothing: {}", describe_rows(&rows));
            c.node(workers[victim]).signal(Signal::SIGSTOP)?;
            let stopped = Instant::now();
            // The pause must outlast the failover: the other worker runs the victim's
            // partitions under higher epochs before the victim resumes.
            let deadline = Deadline::after("the paused worker's partitions running on the other", SETTLE);
            loop {
                let (idle, now) = c.idle_rows(FRESH).await?;
                let moved = moving.iter().all(|m| {
                    now.iter().any(|r| {
                        r.partition == m.partition
                            && r.owner == Some(ids[other])
                            && r.epoch > m.epoch
                            && !idle.iter().any(|i| i.partition == r.partition)
                    })
                });
                if moved {
                    break;
                }
                if deadline.expired() {
                    let state =
                        format!("rows {}; not running: {}", describe_rows(&now), describe_rows(&idle));
                    return Err(deadline.missed(&state).into());
                }
                sleep(POLL).await;
            }
            // The fault itself: the pause lasts `PAUSE` in all.
            sleep(PAUSE.saturating_sub(stopped.elapsed())).await;
            c.node(workers[victim]).signal(Signal::SIGCONT)?;
            rows = until_running_on(c, &ids).await?;
        }
        c.stop_all(STOP).await?;
        let found = overlaps(&tenures(c.ticks()));
        let examples: Vec<String> = found.iter().take(5).map(ToString::to_string).collect();
        ensure!(
            found.is_empty(),
            "after {pauses} pauses of {PAUSE:?}, {} tenures overlap, e.g.\n  {}",
            found.len(),
            examples.join("\n  ")
        );
        Ok(())
    }
    .await;
    scene.close(outcome).await
}

#[tokio::test]
async fn mysql_a_paused_worker_never_ticks_under_its_old_epoch_after_the_new_owner_started()
-> anyhow::Result<()> {
    paused_worker(Db::Mysql, 2).await
}

#[tokio::test]
async fn sqlite_a_paused_worker_never_ticks_under_its_old_epoch_after_the_new_owner_started()
-> anyhow::Result<()> {
    paused_worker(Db::Sqlite, 1).await
}

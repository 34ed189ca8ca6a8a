//! One Helix node as a process of its own, for the multi-process fault tests and benchmarks:
//! a worker, a coordinator candidate, or both, on one queue of one store (MySQL/MariaDB or a
//! SQLite file). Its partition handler starts a ticker per owned partition that appends one
//! `tick` record per tick to the tick log (see `helix_faults::ticklog`); a coordinator
//! candidate appends a `lead` record every 50 ms while it believes it leads.
//!
//! ```text
//! helix-node --database-url mysql://root@127.0.0.1:3306/db --partitions 8 \
//!     --worker-id 0190… --tick-log /tmp/a.ticks --tick-interval 20ms
//! ```
//!
//! Exit codes: 0 after `SIGTERM` or Ctrl-C (the worker leaves gracefully, the coordinator
//! resigns); 1 when the node could not start (the error is the last line of standard error,
//! `helix-node: error: …`); 3 when the worker session or the coordinator node stopped by
//! itself; 4 when the tick log could not be written.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Parser;
use helix_actors::client::Client;
use helix_actors::node::{CoordinatorHandle, CoordinatorNode, Worker, WorkerHandle};
use helix_actors::worker::{HandlerError, PartitionContext, PartitionHandler};
use helix_core::{ClusterConfig, SessionEpoch, Term, WorkerId};
use helix_faults::ticklog::{Lead, LogWriter, Record, Tick};
use helix_store::ConnectOptions;
use tokio::signal::unix::{SignalKind, signal};

/// How often the node samples its coordinator's leadership and its worker's session.
const SAMPLE: Duration = Duration::from_millis(50);
/// How long a coordinator may take to resign when the node stops.
const RESIGN_LIMIT: Duration = Duration::from_secs(5);
/// Exit code: the worker session or the coordinator node stopped by itself.
const EXIT_NODE_STOPPED: u8 = 3;
/// Exit code: the tick log could not be written.
const EXIT_LOG_FAILED: i32 = 4;

#[derive(Debug, Parser)]
#[command(about = "One Helix node (worker and/or coordinator candidate) whose partitions tick into a log")]
struct Args {
    /// The store: `mysql://user@host:3306/database` or `sqlite:///path/to/file.db`.
    #[arg(long)]
    database_url: String,
    /// The queue's domain.
    #[arg(long, default_value = "faults")]
    domain: String,
    /// The queue's name.
    #[arg(long, default_value = "q")]
    queue: String,
    /// The queue's partition count; the queue is created when it does not exist.
    #[arg(long, default_value_t = 8)]
    partitions: u64,
    /// Run a worker under this id.
    #[arg(long)]
    worker_id: Option<WorkerId>,
    /// The worker's capacity for the queue.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Run a coordinator candidate under this id.
    #[arg(long)]
    coordinator_id: Option<WorkerId>,
    /// The tick log to append to.
    #[arg(long)]
    tick_log: std::path::PathBuf,
    /// How often each owned partition ticks.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
    tick_interval: Duration,
    /// How long the handler's `revoked` takes (a drain of in-flight work); the ticker stops
    /// when it begins.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    drain_time: Duration,
    /// The connection pool's size.
    #[arg(long, default_value_t = 4)]
    pool_size: u32,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    heartbeat_interval: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    session_timeout: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    coordinator_lease: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    coordinator_renew_interval: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    safety_margin: Duration,
    /// The bound of each store call and allocator request of a coordinator round; by default
    /// 1 s, or half of `coordinator_lease - safety_margin` when that is shorter.
    #[arg(long, value_parser = humantime::parse_duration)]
    coordinator_call_timeout: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    reconcile_interval: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    full_reevaluation_interval: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    revoke_timeout: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    revoke_cooldown: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    rejoin_delay: Duration,
}

impl Args {
    fn config(&self) -> ClusterConfig {
        ClusterConfig {
            heartbeat_interval: self.heartbeat_interval,
            session_timeout: self.session_timeout,
            coordinator_lease: self.coordinator_lease,
            coordinator_renew_interval: self.coordinator_renew_interval,
            safety_margin: self.safety_margin,
            coordinator_call_timeout: self.coordinator_call_timeout.unwrap_or_else(|| {
                Duration::from_secs(1).min(self.coordinator_lease.saturating_sub(self.safety_margin) / 2)
            }),
            reconcile_interval: self.reconcile_interval,
            full_reevaluation_interval: self.full_reevaluation_interval,
            drain_timeout: self.drain_timeout,
            revoke_timeout: self.revoke_timeout,
            revoke_cooldown: self.revoke_cooldown,
            rejoin_delay: self.rejoin_delay,
            ..ClusterConfig::default()
        }
    }
}

/// The handler of one owned partition: a ticker while it serves, a drain of `drain` when it is
/// revoked.
struct TickingHandler {
    log: LogWriter,
    every: Duration,
    drain: Duration,
    ticker: Option<Ticker>,
}

#[async_trait(?Send)]
impl PartitionHandler for TickingHandler {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        self.ticker = Some(spawn_ticker(ctx, self.log.clone(), self.every));
        Ok(())
    }

    async fn revoked(&mut self, _ctx: &PartitionContext) {
        // No new work once the drain begins; the drain itself stands for in-flight work.
        self.ticker = None;
        tokio::time::sleep(self.drain).await;
    }
}

/// A partition's ticker; dropping it (with its handler) stops it.
struct Ticker(tokio::task::JoinHandle<Option<()>>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the ticker of one ownership: a tick record every `every`, the first at once.
///
/// The ticker is user work bound to the ownership in `ctx` through its ownership guard: it
/// is polled only while the ownership holds (never past the worker's fence deadline) and
/// dropped when it ends; dropping the handler stops it too.
fn spawn_ticker(ctx: &PartitionContext, log: LogWriter, every: Duration) -> Ticker {
    let (worker, queue, partition, epoch) = (ctx.worker, ctx.queue, ctx.partition, ctx.epoch);
    let guard = ctx.guard().clone();
    Ticker(ctx.guard().spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // The guard gates every poll, but a poll already under way when the process is
            // paused finishes after it wakes. So the tick's instant is taken first and the
            // tick is recorded only if the ownership still held after that instant: what the
            // log says ticked at a time was owned at that time (docs/protocol.md, "What
            // self-fencing cannot see").
            let tick = Tick::now(worker, queue, partition, epoch);
            if !guard.is_held() {
                break;
            }
            if let Err(error) = log.append(&Record::Tick(tick)) {
                eprintln!("helix-node: error: writing the tick log: {error}");
                std::process::exit(EXIT_LOG_FAILED);
            }
        }
    }))
}

/// Why the node ended.
enum Outcome {
    /// Asked to stop; stopped gracefully.
    Stopped,
    /// The worker session or the coordinator node stopped by itself.
    NodeEnded(String),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let outcome = actix::System::new().block_on(run(args));
    match outcome {
        Ok(Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(Outcome::NodeEnded(why)) => {
            eprintln!("helix-node: error: {why}");
            ExitCode::from(EXIT_NODE_STOPPED)
        }
        Err(error) => {
            eprintln!("helix-node: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Outcome> {
    let config = args.config();
    let options = ConnectOptions { pool_size: args.pool_size, ..ConnectOptions::default() };
    let shown = helix_store::StoreUrl::parse(&args.database_url)
        .map_or_else(|_| "the store".to_owned(), |u| u.to_string());
    let store = helix_store::connect_with(&args.database_url, options)
        .await
        .with_context(|| format!("connecting to {shown}"))?;
    let client = Client::new(Arc::clone(&store));
    let queue = client.ensure_queue(&args.domain, &args.queue, args.partitions).await?;
    let log =
        LogWriter::open(&args.tick_log).with_context(|| format!("opening {}", args.tick_log.display()))?;
    let mut terminate = signal(SignalKind::terminate())?;

    let coordinator = match args.coordinator_id {
        Some(id) => Some(
            CoordinatorNode::new(Arc::clone(&store), config.clone())
                .id(id)
                .start()
                .with_context(|| format!("starting coordinator node {id}"))?,
        ),
        None => None,
    };
    let worker = match args.worker_id {
        Some(id) => {
            let (every, drain) = (args.tick_interval, args.drain_time);
            let log = log.clone();
            let started = Worker::builder(Arc::clone(&store), config.clone())
                .id(id)
                .serve(queue.id, args.capacity)
                .handler_fn(move |_| {
                    Box::new(TickingHandler { log: log.clone(), every, drain, ticker: None })
                })
                .start()
                .await
                .with_context(|| format!("starting worker {id}"))?;
            Some(started)
        }
        None => None,
    };
    println!(
        "started pid={} worker={} coordinator={} queue={}",
        std::process::id(),
        args.worker_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
        args.coordinator_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
        queue.id
    );

    let mut watch = Watch { client: &client, log: &log, term: None, session: None };
    let ended = loop {
        tokio::select! {
            _ = terminate.recv() => break None,
            _ = tokio::signal::ctrl_c() => break None,
            () = tokio::time::sleep(SAMPLE) => {
                if let Some(why) = watch.sample(coordinator.as_ref(), worker.as_ref()).await? {
                    break Some(why);
                }
            }
        }
    };
    if let Some(why) = ended {
        return Ok(Outcome::NodeEnded(why));
    }
    println!("stopping");
    if let Some(worker) = worker {
        let limit = config.drain_timeout + Duration::from_secs(5);
        match tokio::time::timeout(limit, worker.leave()).await {
            Ok(Ok(outcome)) => println!("left: {outcome:?}"),
            Ok(Err(error)) => println!("leave failed: {error}"),
            Err(_) => println!("leave did not finish within {limit:?}"),
        }
    }
    if let Some(coordinator) = coordinator
        && tokio::time::timeout(RESIGN_LIMIT, coordinator.stop()).await.is_err()
    {
        println!("the coordinator did not resign within {RESIGN_LIMIT:?}");
    }
    Ok(Outcome::Stopped)
}

/// What the node watches between two samples.
struct Watch<'a> {
    client: &'a Client,
    log: &'a LogWriter,
    /// The term the coordinator leads under, while it leads.
    term: Option<Term>,
    /// The worker's last seen session.
    session: Option<SessionEpoch>,
}

impl Watch<'_> {
    /// One sample: a `lead` record while the coordinator leads, a line on standard output when
    /// the worker's session changes. `Some(why)` when a node has stopped by itself.
    async fn sample(
        &mut self,
        coordinator: Option<&CoordinatorHandle>,
        worker: Option<&WorkerHandle>,
    ) -> anyhow::Result<Option<String>> {
        if let Some(node) = coordinator {
            if !node.coordinator().connected() {
                return Ok(Some(format!("coordinator node {} stopped", node.id())));
            }
            if node.is_leader().await {
                if self.term.is_none() {
                    // The term is the lease's while this node holds it.
                    self.term = match self.client.leader().await {
                        Ok(Some(lease)) if lease.holder == Some(node.id()) && !lease.expired => {
                            Some(lease.term)
                        }
                        _ => None,
                    };
                    if let Some(term) = self.term {
                        println!("leading term={term}");
                    }
                }
                if let Some(term) = self.term {
                    self.log
                        .append(&Record::Lead(Lead::now(node.id(), term)))
                        .context("writing the tick log")?;
                }
            } else if self.term.take().is_some() {
                println!("no longer leading");
            }
        }
        if let Some(worker) = worker {
            match worker.status().await {
                Ok(status) => {
                    if status.session_epoch != self.session {
                        self.session = status.session_epoch;
                        match self.session {
                            Some(session) => println!("worker {} session {session}", worker.id()),
                            None => println!("worker {} has no session", worker.id()),
                        }
                    }
                }
                Err(_) => return Ok(Some(format!("the session of worker {} stopped", worker.id()))),
            }
        }
        Ok(None)
    }
}

//! The quickstart: one queue of 50 partitions, a coordinator and three workers (17/17/16), then
//! a fourth worker joins and one worker is killed, with every rebalance printed as it happens.
//!
//! ```sh
//! cargo run -p helix-examples --bin quickstart                       # SQLite file, no setup
//! cargo run -p helix-examples --bin quickstart -- --database-url mysql://root@127.0.0.1:3306/test
//! ```
//!
//! Ctrl-C or SIGTERM stops it early: the workers leave gracefully and the coordinator resigns
//! (a second Ctrl-C exits without waiting for that).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use helix_actors::client::{Client, PartitionMap};
use helix_actors::node::{CoordinatorHandle, CoordinatorNode, Worker, WorkerHandle};
use helix_core::{ClusterConfig, QueueId, WorkerId};
use helix_examples::{
    LoggingHandler, describe_moves, init_tracing, loads, shutdown_signal, watch_until_settled,
};

/// How long any one step may take before the quickstart gives up.
const STEP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(about = "Helix quickstart: 50 partitions over a changing set of workers")]
struct Args {
    /// The store, e.g. `mysql://user:password@host:3306/database`; by default a SQLite file in
    /// the temporary directory, removed at the end.
    #[arg(long)]
    database_url: Option<String>,
}

/// The running pieces, so that an interruption can stop them gracefully.
struct Cluster {
    client: Client,
    config: ClusterConfig,
    queue: QueueId,
    coordinator: Option<CoordinatorHandle>,
    workers: Vec<WorkerHandle>,
    /// Each worker's letter in the printed maps, `A`, `B`, … in order of start.
    letters: BTreeMap<WorkerId, char>,
}

impl Cluster {
    async fn add_worker(&mut self) -> anyhow::Result<char> {
        let worker = Worker::builder(self.client.store(), self.config.clone())
            .serve(self.queue, 1)
            .handler_fn(|_| Box::new(LoggingHandler))
            .start()
            .await?;
        let letter = char::from(b'A' + u8::try_from(self.letters.len() % 26)?);
        self.letters.insert(worker.id(), letter);
        self.workers.push(worker);
        Ok(letter)
    }

    /// Waits until the map is settled on the running workers, printing each change if `print`.
    async fn settle(&self, print: bool) -> anyhow::Result<(PartitionMap, Duration)> {
        let owners: BTreeSet<WorkerId> = self.workers.iter().map(WorkerHandle::id).collect();
        watch_until_settled(&self.client, self.queue, &owners, &self.letters, STEP_LIMIT, print).await
    }

    fn print_settled(&self, map: &PartitionMap) {
        println!("settled: {} workers own the 50 partitions ({})", self.workers.len(), loads(map));
        println!("{}\n", map.render(&self.letters));
    }

    /// The demonstration itself.
    async fn run(&mut self) -> anyhow::Result<()> {
        println!("starting a coordinator and 3 workers (A, B, C)");
        self.coordinator = Some(CoordinatorNode::new(self.client.store(), self.config.clone()).start()?);
        for _ in 0..3 {
            self.add_worker().await?;
        }
        let (before, _) = self.settle(false).await?;
        self.print_settled(&before);

        let letter = self.add_worker().await?;
        println!("worker {letter} joins; the rebalance as it happens (lowercase: being handed over):");
        let (after, took) = self.settle(true).await?;
        let newcomer = self.workers.last().map(WorkerHandle::id);
        let only_newcomer = after.moves_since(&before).iter().all(|(_, _, to)| *to == newcomer);
        println!(
            "moved in {:.2} s: {}{}",
            took.as_secs_f64(),
            describe_moves(&before, &after, &self.letters),
            if only_newcomer { ", every one to the newcomer" } else { "" }
        );
        self.print_settled(&after);

        let victim = self.workers.remove(0);
        let victim_id = victim.id();
        let letter = self.letters.get(&victim_id).copied().unwrap_or('?');
        println!(
            "killing worker {letter} (no goodbye: its lease runs out after the session timeout, {:?})",
            self.config.session_timeout
        );
        victim.kill();
        let (orphaned, took) = self.settle(true).await?;
        let only_orphans = orphaned.moves_since(&after).iter().all(|(_, from, _)| *from == Some(victim_id));
        println!(
            "moved {:.2} s after the kill: {}{}",
            took.as_secs_f64(),
            describe_moves(&after, &orphaned, &self.letters),
            if only_orphans { ", only the dead worker's partitions" } else { "" }
        );
        self.print_settled(&orphaned);
        Ok(())
    }

    /// Leaves every worker gracefully and stops the coordinator.
    async fn shutdown(&mut self) {
        println!("the {} remaining workers leave gracefully, the coordinator resigns", self.workers.len());
        for worker in self.workers.drain(..) {
            if let Err(error) = worker.leave().await {
                tracing::warn!(%error, "a worker could not leave");
            }
        }
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.stop().await;
        }
    }
}

#[actix::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let temp_file: Option<PathBuf> = match args.database_url {
        Some(_) => None,
        None => Some(std::env::temp_dir().join(format!("helix-quickstart-{}.db", std::process::id()))),
    };
    let url = match (&args.database_url, &temp_file) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => format!("sqlite://{}", path.display()),
        (None, None) => anyhow::bail!("no store"),
    };
    let outcome = quickstart(&url).await;
    if let Some(path) = temp_file {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            // Missing files are fine: not every journal mode creates them.
            let _ = std::fs::remove_file(file);
        }
    }
    outcome?;
    println!("quickstart finished");
    Ok(())
}

async fn quickstart(url: &str) -> anyhow::Result<()> {
    // Printed with the password masked.
    let shown = helix_store::StoreUrl::parse(url).map_or_else(|_| "the store".to_owned(), |u| u.to_string());
    let client = Client::connect(url).await.with_context(|| format!("connecting to {shown}"))?;
    let queue = client.ensure_queue("domain_order", "food_order", 50).await?;
    println!("queue domain_order/food_order: {} partitions", queue.partition_count);
    let config = ClusterConfig::default();
    let mut cluster = Cluster {
        client,
        config,
        queue: queue.id,
        coordinator: None,
        workers: Vec::new(),
        letters: BTreeMap::new(),
    };
    let outcome = tokio::select! {
        outcome = cluster.run() => outcome,
        () = shutdown_signal() => {
            println!("interrupted");
            Ok(())
        }
    };
    // Whatever happened, leave gracefully; a second interrupt gives up on that.
    tokio::select! {
        () = cluster.shutdown() => {}
        () = shutdown_signal() => println!("interrupted again, exiting without leaving"),
    }
    outcome
}

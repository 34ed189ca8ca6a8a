//! Runnable examples of Helix, and the small helpers they share.
//!
//! - `quickstart`: a coordinator and workers on one queue of 50 partitions; a join, a kill and
//!   the rebalances they cause (`cargo run -p helix-examples --bin quickstart`);
//! - `custom_allocator`: a zone-aware allocator actor plugged into a coordinator node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use helix_actors::client::{Client, PartitionMap};
use helix_actors::worker::{HandlerError, PartitionContext, PartitionHandler};
use helix_core::{QueueId, WorkerId};
use tokio::time::Instant;

pub use helix_actors;
pub use helix_core;
pub use helix_store;

/// Logs to stderr at the level of `RUST_LOG`, `warn` when it is not set.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second initialisation (in tests) is harmless.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A partition handler that only logs, at debug level, when its partition is assigned and
/// revoked.
#[derive(Debug, Default)]
pub struct LoggingHandler;

#[async_trait(?Send)]
impl PartitionHandler for LoggingHandler {
    async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
        tracing::debug!(worker = %ctx.worker, partition = %ctx.partition, epoch = %ctx.epoch, "partition assigned");
        Ok(())
    }

    async fn revoked(&mut self, ctx: &PartitionContext) {
        tracing::debug!(worker = %ctx.worker, partition = %ctx.partition, epoch = %ctx.epoch, "partition revoked");
    }
}

/// Whether `map` is settled on exactly the workers `owners`: every partition owned by one of
/// them, each of them owning at least one, and no partition being handed over.
pub fn settled_on(map: &PartitionMap, owners: &BTreeSet<WorkerId>) -> bool {
    map.is_settled() && map.counts().keys().copied().collect::<BTreeSet<_>>() == *owners
}

/// The first line of the map's [`render`](PartitionMap::render)ing with `letters`: every owner
/// with its count, and how many partitions are being handed over.
pub fn summary(map: &PartitionMap, letters: &BTreeMap<WorkerId, char>) -> String {
    let mut line = map.render(letters).lines().next().unwrap_or_default().to_owned();
    let revoking = map.revoking();
    if revoking > 0 {
        line.push_str(&format!("  handing over: {revoking}"));
    }
    line
}

/// The owners' counts, largest first, as `17/17/16`.
pub fn loads(map: &PartitionMap) -> String {
    let mut loads = map.loads();
    loads.reverse();
    loads.iter().map(ToString::to_string).collect::<Vec<_>>().join("/")
}

/// Reads the partition map of `queue` every 250 ms until it is [`settled_on`] `owners`,
/// printing one line (the time since the call, the assignment version, [`summary`]) each time
/// the assignment version moves when `print` is set. Returns the settled map and how long it
/// took to settle.
///
/// # Errors
/// When a read fails, or when the map has not settled within `limit`.
pub async fn watch_until_settled(
    client: &Client,
    queue: QueueId,
    owners: &BTreeSet<WorkerId>,
    letters: &BTreeMap<WorkerId, char>,
    limit: Duration,
    print: bool,
) -> anyhow::Result<(PartitionMap, Duration)> {
    let start = Instant::now();
    let mut version = None;
    loop {
        let map = client.partition_map(queue).await?;
        if print && version != Some(map.assignment_version) {
            println!(
                "  {:>6.2}s  version {:<5} {}",
                start.elapsed().as_secs_f64(),
                map.assignment_version,
                summary(&map, letters)
            );
        }
        version = Some(map.assignment_version);
        if settled_on(&map, owners) {
            return Ok((map, start.elapsed()));
        }
        if start.elapsed() >= limit {
            anyhow::bail!("the partition map did not settle within {limit:?}:\n{}", map.render(letters));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The moves between two maps, grouped by `from → to` with the owners' letters:
/// `12 (A→D 4, B→D 4, C→D 4)`.
pub fn describe_moves(
    before: &PartitionMap,
    after: &PartitionMap,
    letters: &BTreeMap<WorkerId, char>,
) -> String {
    let moves = after.moves_since(before);
    let letter = |w: Option<WorkerId>| w.map_or('.', |w| letters.get(&w).copied().unwrap_or('?'));
    let mut groups: BTreeMap<(char, char), usize> = BTreeMap::new();
    for (_, from, to) in &moves {
        *groups.entry((letter(*from), letter(*to))).or_default() += 1;
    }
    let groups: Vec<String> = groups.iter().map(|((from, to), n)| format!("{from}→{to} {n}")).collect();
    format!("{} ({})", moves.len(), groups.join(", "))
}

/// Resolves on Ctrl-C, or on SIGTERM on Unix.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for sigterm, listening for ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! A cluster of `helix-node` processes on one store, seen from outside: the processes, their
//! tick logs read as they grow, and the store's assignment rows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use helix_actors::client::{Client, ClientError};
use helix_core::WorkerId;
use helix_store::{AssignmentRecord, ConnectOptions, QueueRecord, StoreError};
use tokio::time::Instant;

use crate::clock::monotonic_ns;
use crate::process::{NodeOptions, NodeProcess, SignalError};
use crate::ticklog::{Lead, LogError, LogReader, Record, Tick};

/// How often a loop waiting for a condition looks again.
pub const POLL: Duration = Duration::from_millis(50);

/// Why a cluster step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A tick log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client refused or failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A process could not be signalled.
    #[error(transparent)]
    Signal(#[from] SignalError),
    /// A condition did not come true in time.
    #[error("{0}")]
    Timeout(String),
}

/// A bound on a wait for a condition.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    what: &'static str,
    start: Instant,
    limit: Duration,
}

impl Deadline {
    /// A deadline `limit` from now for the condition `what`.
    pub fn after(what: &'static str, limit: Duration) -> Self {
        Self { what, start: Instant::now(), limit }
    }

    /// How long since the wait began.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.start.elapsed() >= self.limit
    }

    /// The error for a condition that did not come true in time, with `state` (how things
    /// stand) for the report.
    pub fn missed(&self, state: &str) -> ClusterError {
        ClusterError::Timeout(format!("{} did not happen within {:?}; {state}", self.what, self.limit))
    }
}

/// A cluster of `helix-node` processes on one store and one queue.
///
/// Dropping it kills every process still running (see [`NodeProcess`]).
#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    dir: PathBuf,
    client: Client,
    queue: QueueRecord,
    base: NodeOptions,
    nodes: Vec<NodeProcess>,
    readers: Vec<LogReader>,
    ticks: Vec<Tick>,
    leads: Vec<Lead>,
}

impl Cluster {
    /// Connects to `url` (applying migrations), creates the queue of `base`, and prepares to
    /// start `binary` (the `helix-node` executable) with options derived from `base`; the
    /// processes' files go to `dir`.
    ///
    /// # Errors
    /// When the store cannot be reached or the queue cannot be created.
    pub async fn new(binary: &Path, dir: &Path, base: NodeOptions) -> Result<Self, ClusterError> {
        let options = ConnectOptions { pool_size: 2, ..ConnectOptions::default() };
        let client = Client::new(helix_store::connect_with(&base.database_url, options).await?);
        let queue = client.ensure_queue(&base.domain, &base.queue, base.partitions).await?;
        Ok(Self {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            client,
            queue,
            base,
            nodes: Vec::new(),
            readers: Vec::new(),
            ticks: Vec::new(),
            leads: Vec::new(),
        })
    }

    /// The observer's client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue.
    pub fn queue(&self) -> &QueueRecord {
        &self.queue
    }

    /// The options every node starts from.
    pub fn base(&self) -> &NodeOptions {
        &self.base
    }

    /// Starts a worker process under `id`, with the base options changed by `adjust`; returns
    /// its index.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn_worker(
        &mut self,
        name: &str,
        id: WorkerId,
        adjust: impl FnOnce(&mut NodeOptions),
    ) -> Result<usize, ClusterError> {
        let mut options = self.base.clone().worker(id);
        adjust(&mut options);
        self.spawn(name, &options)
    }

    /// Starts a coordinator process (no worker) under `id`; returns its index.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn_coordinator(&mut self, name: &str, id: WorkerId) -> Result<usize, ClusterError> {
        let options = self.base.clone().coordinator(id);
        self.spawn(name, &options)
    }

    /// Starts a process with `options`; returns its index.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn(&mut self, name: &str, options: &NodeOptions) -> Result<usize, ClusterError> {
        let node = NodeProcess::spawn(&self.binary, &self.dir, name, options)
            .map_err(|source| ClusterError::Io { what: format!("starting {name}"), source })?;
        self.readers.push(LogReader::new(node.tick_log()));
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// The process at `index`.
    ///
    /// # Panics
    /// When there is no such process.
    pub fn node(&mut self, index: usize) -> &mut NodeProcess {
        &mut self.nodes[index]
    }

    /// Every process started, in order.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// Reads what the tick logs gained since the last call.
    ///
    /// # Errors
    /// When a log cannot be read.
    pub fn refresh(&mut self) -> Result<(), ClusterError> {
        for reader in &mut self.readers {
            for record in reader.read_new()? {
                match record {
                    Record::Tick(t) => self.ticks.push(t),
                    Record::Lead(l) => self.leads.push(l),
                }
            }
        }
        Ok(())
    }

    /// Every tick read so far.
    pub fn ticks(&self) -> &[Tick] {
        &self.ticks
    }

    /// Forgets the ticks read so far that are older than `mono_ns` (monotonic), so that a
    /// long run keeps only what it still looks at.
    pub fn forget_ticks_before(&mut self, mono_ns: u64) {
        self.ticks.retain(|t| t.mono_ns >= mono_ns);
    }

    /// Every leadership sample read so far.
    pub fn leads(&self) -> &[Lead] {
        &self.leads
    }

    /// The queue's assignment rows now.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn rows(&self) -> Result<Vec<AssignmentRecord>, ClusterError> {
        Ok(self.client.store().assignments(self.queue.id).await?.rows)
    }

    /// Refreshes the logs and returns the rows that do not run on their owner (see
    /// [`not_running_on_owner`](crate::analysis::not_running_on_owner)), counting ticks of the
    /// last `fresh`, and the rows.
    ///
    /// # Errors
    /// When a log or the store cannot be read.
    pub async fn idle_rows(
        &mut self,
        fresh: Duration,
    ) -> Result<(Vec<AssignmentRecord>, Vec<AssignmentRecord>), ClusterError> {
        let rows = self.rows().await?;
        self.refresh()?;
        let since = monotonic_ns().saturating_sub(u64::try_from(fresh.as_nanos()).unwrap_or(u64::MAX));
        let last = crate::analysis::last_ticks(&self.ticks);
        let idle = crate::analysis::not_running_on_owner(&rows, &last, since).into_iter().cloned().collect();
        Ok((idle, rows))
    }

    /// Stops every process still running with `SIGTERM` (a process that does not exit within
    /// `within` is killed), then reads the rest of the logs.
    ///
    /// # Errors
    /// When a process cannot be signalled or a log read.
    pub async fn stop_all(&mut self, within: Duration) -> Result<(), ClusterError> {
        for node in &mut self.nodes {
            let _ = node.terminate(within).await?;
        }
        self.refresh()
    }

    /// How every process stands and what it said last, for a failure report.
    pub fn report(&mut self) -> String {
        let mut out = String::new();
        for node in &mut self.nodes {
            let status = match node.try_status() {
                Ok(Some(status)) => status.to_string(),
                Ok(None) => "running".to_owned(),
                Err(error) => format!("unknown ({error})"),
            };
            let _ = writeln!(out, "--- {} (pid {}): {status}", node.name(), node.pid());
            let _ = writeln!(out, "{}", node.stderr_tail(8));
        }
        out
    }
}

/// A short description of `rows`: `partition owner@epoch STATE` each.
pub fn describe_rows<'a>(rows: impl IntoIterator<Item = &'a AssignmentRecord>) -> String {
    rows.into_iter()
        .map(|r| {
            let owner = r.owner.map_or_else(|| "-".to_owned(), |o| o.to_string());
            let target = r.target.map_or_else(String::new, |t| format!(" → {t}"));
            format!("[p{} {owner}@{} {:?}{target}]", r.partition, r.epoch, r.state)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

//! A client for applications and operators: creates domains and queues and reads the state of
//! the cluster (who owns which partition, which workers are live, who coordinates, what
//! happened). Every operation is one or a few [`Store`] calls; the client keeps no state.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), helix_actors::client::ClientError> {
//! use helix_actors::client::Client;
//!
//! let client = Client::connect("memory://").await?;
//! let queue = client.ensure_queue("domain_order", "food_order", 50).await?;
//! // A second call finds the same queue.
//! assert_eq!(client.ensure_queue("domain_order", "food_order", 50).await?.id, queue.id);
//!
//! let map = client.partition_map(queue.id).await?;
//! assert_eq!(map.unowned(), 50); // no worker has joined yet
//! println!("{map}");
//! # Ok(())
//! # }
//! ```

mod schedules;
mod tasks;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use helix_core::{
    ClusterName, DomainName, NameError, PartitionCount, PartitionId, QueueId, QueueName, WorkerId,
};
pub use schedules::ScheduleSpec;
pub use tasks::TaskSpec;

use helix_store::{
    AssignmentRecord, AssignmentState, DomainRecord, Event, LeaseRecord, QueueRecord, QueueSpec, Store,
    StoreError, WorkerFilter, WorkerRecord,
};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A name or a partition count is not valid; nothing was sent to the store.
    #[error(transparent)]
    Invalid(#[from] NameError),
    /// The store refused or failed (see [`StoreError`] for which errors are worth retrying);
    /// [`StoreError::Conflict`] when a queue exists with another partition count.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A webhook task was refused before anything was sent to the store: its URL or an
    /// extra header breaks a rule of [`WebhookRequest`](crate::tasks::webhook::WebhookRequest).
    #[error(transparent)]
    Webhook(#[from] crate::tasks::webhook::WebhookError),
}

/// Queue name → (id, partition count).
type QueueCache = std::collections::HashMap<(DomainName, QueueName), (QueueId, PartitionCount)>;

/// A client of a Helix cluster's store. Clones share one cache of queue ids.
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
    /// Queue name → (id, partition count), for enqueues: partition counts never change, and
    /// a queue deleted meanwhile answers `NotFound`, which drops its entry.
    queues: Arc<std::sync::Mutex<QueueCache>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, queues: Arc::default() }
    }

    /// Connects to the store at `url` (see [`helix_store::StoreUrl`] for the forms), applying
    /// pending migrations.
    ///
    /// # Errors
    /// As [`helix_store::connect`].
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Ok(Self::new(helix_store::connect(url).await?))
    }

    /// The store, to start nodes on (see [`crate::node`]).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Creates the domain `name`, or finds it when it exists.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name, [`ClientError::Store`] when the store fails.
    pub async fn ensure_domain(&self, name: &str) -> Result<DomainRecord, ClientError> {
        let name = DomainName::new(name)?;
        match self.store.get_domain(&name).await {
            Err(StoreError::NotFound(_)) => match self.store.create_domain(&name).await {
                // Created by someone else in the meantime.
                Err(StoreError::Conflict(_)) => Ok(self.store.get_domain(&name).await?),
                other => Ok(other?),
            },
            other => Ok(other?),
        }
    }

    /// Creates the queue `domain/name` with `partitions` partitions and the default allocator
    /// (creating the domain too), or finds it when it exists with that many partitions.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name or partition count; [`StoreError::Conflict`]
    /// when the queue exists with another partition count (partition counts never change).
    pub async fn ensure_queue(
        &self,
        domain: &str,
        name: &str,
        partitions: u64,
    ) -> Result<QueueRecord, ClientError> {
        let count = PartitionCount::new(partitions)?;
        let queue_name = QueueName::new(name)?;
        let domain = self.ensure_domain(domain).await?.name;
        let existing = match self.store.get_queue(&domain, &queue_name).await {
            Err(StoreError::NotFound(_)) => {
                match self
                    .store
                    .create_queue(&QueueSpec::new(domain.clone(), queue_name.clone(), count))
                    .await
                {
                    Err(StoreError::Conflict(_)) => self.store.get_queue(&domain, &queue_name).await?,
                    other => return Ok(other?),
                }
            }
            other => other?,
        };
        if existing.partition_count != count {
            return Err(StoreError::Conflict(format!(
                "queue {domain}/{queue_name} exists with {} partitions, not {count}",
                existing.partition_count
            ))
            .into());
        }
        Ok(existing)
    }

    /// The queue `domain/name`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name, [`StoreError::NotFound`] when it does not exist.
    pub async fn queue(&self, domain: &str, name: &str) -> Result<QueueRecord, ClientError> {
        Ok(self.store.get_queue(&DomainName::new(domain)?, &QueueName::new(name)?).await?)
    }

    /// Who owns every partition of `queue` now, read in one statement.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the queue does not exist.
    pub async fn partition_map(&self, queue: QueueId) -> Result<PartitionMap, ClientError> {
        let read = self.store.assignments(queue).await?;
        Ok(PartitionMap { queue, assignment_version: read.assignment_version, rows: read.rows })
    }

    /// Resets the failed partition `partition` of `domain/name` (see
    /// [`RestartPolicy`](crate::worker::RestartPolicy)): it becomes unowned and the coordinator
    /// grants it again on its next round. Returns whether it was failed; resetting a partition
    /// that is not failed changes nothing.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a bad name, [`StoreError::NotFound`] when the queue or the
    /// partition does not exist.
    pub async fn reset_partition(
        &self,
        domain: &str,
        name: &str,
        partition: PartitionId,
    ) -> Result<bool, ClientError> {
        let queue = self.queue(domain, name).await?;
        Ok(self.store.reset_partition(queue.id, partition).await?)
    }

    /// The workers that `filter` selects ([`WorkerFilter::Live`] for the live ones).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn workers(&self, filter: WorkerFilter) -> Result<Vec<WorkerRecord>, ClientError> {
        Ok(self.store.list_workers(filter).await?)
    }

    /// The coordinator lease of the default cluster (`helix`): who holds it, under which term,
    /// and whether it has run out; `None` before anyone was ever elected.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn leader(&self) -> Result<Option<LeaseRecord>, ClientError> {
        self.leader_of(&ClusterName::default()).await
    }

    /// The coordinator lease of `cluster`, as [`leader`](Self::leader).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn leader_of(&self, cluster: &ClusterName) -> Result<Option<LeaseRecord>, ClientError> {
        Ok(self.store.get_lease(cluster).await?)
    }

    /// At most `limit` (and at most [`helix_store::MAX_EVENTS_PER_READ`]) events recorded
    /// after the event `after` (0 for the first), oldest first: grants, revocations,
    /// handoffs, deaths, elections. Page on with the last id for more.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn events_since(&self, after: u64, limit: u32) -> Result<Vec<Event>, ClientError> {
        Ok(self.store.events_since(after, limit).await?)
    }
}

/// Who owns every partition of one queue, as read at one assignment version.
///
/// Its `Display` prints one line with every owner (a letter, the end of its id, its count)
/// and one row with the owner letter of each partition in partition order: `.` for no owner,
/// `!` for a failed partition, a lowercase letter for a partition being handed over from that
/// owner.
///
/// ```text
/// A …3f1c0a9e: 17  B …77d2be10: 17  C …c09a4411: 16
/// AAAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCC
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMap {
    /// The queue.
    pub queue: QueueId,
    /// The queue's assignment version at the time of the read; it moves with every change.
    pub assignment_version: u64,
    /// One row per partition, in partition order: owner, epoch, state.
    pub rows: Vec<AssignmentRecord>,
}

impl PartitionMap {
    /// The owner of `partition`, if any.
    pub fn owner(&self, partition: PartitionId) -> Option<WorkerId> {
        self.rows.iter().find(|r| r.partition == partition).and_then(|r| r.owner)
    }

    /// How many partitions each worker owns, by worker id.
    pub fn counts(&self) -> BTreeMap<WorkerId, usize> {
        let mut counts = BTreeMap::new();
        for owner in self.rows.iter().filter_map(|r| r.owner) {
            *counts.entry(owner).or_default() += 1;
        }
        counts
    }

    /// The owners' counts, smallest first (for example `[16, 17, 17]`).
    pub fn loads(&self) -> Vec<usize> {
        let mut loads: Vec<usize> = self.counts().into_values().collect();
        loads.sort_unstable();
        loads
    }

    /// How many partitions have no owner and have not failed.
    pub fn unowned(&self) -> usize {
        self.rows.iter().filter(|r| r.owner.is_none() && r.state != AssignmentState::Failed).count()
    }

    /// The partitions that failed and wait for an operator's reset
    /// ([`Client::reset_partition`]).
    pub fn failed(&self) -> Vec<PartitionId> {
        self.rows.iter().filter(|r| r.state == AssignmentState::Failed).map(|r| r.partition).collect()
    }

    /// How many partitions are being handed over.
    pub fn revoking(&self) -> usize {
        self.rows.iter().filter(|r| r.state == AssignmentState::Revoking).count()
    }

    /// Whether every partition that has not failed has an owner and none is being handed over.
    pub fn is_settled(&self) -> bool {
        self.unowned() == 0 && self.revoking() == 0
    }

    /// The partitions whose owner differs between `earlier` and this map, each with its owner
    /// then and now, in partition order.
    pub fn moves_since(
        &self,
        earlier: &PartitionMap,
    ) -> Vec<(PartitionId, Option<WorkerId>, Option<WorkerId>)> {
        self.rows
            .iter()
            .filter_map(|row| {
                let before = earlier.owner(row.partition);
                (before != row.owner).then_some((row.partition, before, row.owner))
            })
            .collect()
    }

    /// The letter each owner is printed with: `A`, `B`, … in the order of worker ids (UUID v7
    /// ids sort by creation, so older workers come first), `?` past `Z`.
    pub fn letters(&self) -> BTreeMap<WorkerId, char> {
        self.counts().into_keys().zip(('A'..='Z').chain(std::iter::repeat('?'))).collect()
    }
}

/// The last 8 hex digits of a worker id: the random end of a UUID v7 (its start is a
/// timestamp, the same for workers started together).
fn short(id: WorkerId) -> String {
    let simple = id.as_uuid().simple().to_string();
    simple[simple.len().saturating_sub(8)..].to_owned()
}

impl PartitionMap {
    /// The map as its `Display` prints it, but with the given letter for each owner (for
    /// letters that stay the same while workers come and go); an owner missing from
    /// `letters` is printed `?`.
    pub fn render(&self, letters: &BTreeMap<WorkerId, char>) -> String {
        let counts = self.counts();
        let mut owners: Vec<(char, WorkerId, usize)> =
            counts.iter().map(|(w, n)| (letters.get(w).copied().unwrap_or('?'), *w, *n)).collect();
        owners.sort_unstable();
        let mut parts: Vec<String> =
            owners.iter().map(|(letter, worker, n)| format!("{letter} …{}: {n}", short(*worker))).collect();
        let unowned = self.unowned();
        if unowned > 0 {
            parts.push(format!("unowned: {unowned}"));
        }
        let failed = self.failed().len();
        if failed > 0 {
            parts.push(format!("failed: {failed}"));
        }
        let row: String = self
            .rows
            .iter()
            .map(|row| match row.owner {
                None if row.state == AssignmentState::Failed => '!',
                None => '.',
                Some(owner) => {
                    let letter = letters.get(&owner).copied().unwrap_or('?');
                    if row.state == AssignmentState::Revoking { letter.to_ascii_lowercase() } else { letter }
                }
            })
            .collect();
        format!("{}\n{row}", parts.join("  "))
    }
}

impl fmt::Display for PartitionMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(&self.letters()))
    }
}

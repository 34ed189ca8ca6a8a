//! The public API in the user's terms: a [`CoordinatorNode`] that takes part in the election
//! and assigns partitions while it leads, and a [`Worker`] that serves queues with the user's
//! [`PartitionHandler`].
//!
//! Both run inside the actix system of the calling thread (start them inside
//! `#[actix::main]`, `#[actix::test]` or an `actix_rt::System`), over any [`Store`]. Each
//! started node reaches its store through a [`StoreActor`] of its own (at most
//! [`DEFAULT_MAX_IN_FLIGHT`] operations at once), the single door to the database of
//! DESIGN §5.
//!
//! A [`Worker`] runs on two arbiters (threads) of its own, so that user code can never hold
//! up its lease (DESIGN §4 rule 10, `docs/architecture.md`):
//! - the **control arbiter** runs the [`WorkerSession`] (registration, heartbeats, the fence
//!   timer, assignment polls, handoffs) and the worker's [`StoreActor`];
//! - the **handler arbiter** runs the partition actors and the user's [`PartitionHandler`]s,
//!   created there by the [`HandlerFactory`]; a handler that blocks this thread delays only
//!   the partitions of this worker, and its futures are not polled past the fence deadline.
//!
//! A [`CoordinatorNode`] runs on the arbiter that starts it.
//!
//! ```
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use helix_actors::client::Client;
//! use helix_actors::node::{CoordinatorNode, Worker};
//! use helix_actors::worker::{HandlerError, PartitionContext, PartitionHandler};
//! use helix_core::ClusterConfig;
//!
//! struct Orders;
//!
//! #[async_trait(?Send)]
//! impl PartitionHandler for Orders {
//!     async fn assigned(&mut self, ctx: &PartitionContext) -> Result<(), HandlerError> {
//!         println!("serving partition {} at epoch {}", ctx.partition, ctx.epoch);
//!         Ok(())
//!     }
//!     async fn revoked(&mut self, _ctx: &PartitionContext) {}
//! }
//!
//! #[actix::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // `sqlite:///var/lib/app/helix.db` or `mysql://user:password@host/db` in real use.
//!     let client = Client::connect("memory://").await?;
//!     let queue = client.ensure_queue("domain_order", "food_order", 8).await?;
//!     let config = ClusterConfig::default();
//!
//!     let coordinator = CoordinatorNode::new(client.store(), config.clone()).start()?;
//!     let worker = Worker::builder(client.store(), config)
//!         .serve(queue.id, 1)
//!         .label("zone", "eu-1")
//!         .handler_fn(|_ctx| Box::new(Orders))
//!         .start()
//!         .await?;
//!
//!     // The coordinator grants the worker every partition within a few reconcile ticks.
//!     for _ in 0..100 {
//!         if client.partition_map(queue.id).await?.is_settled() {
//!             break;
//!         }
//!         tokio::time::sleep(Duration::from_millis(100)).await;
//!     }
//!     assert_eq!(client.partition_map(queue.id).await?.counts().get(&worker.id()), Some(&8));
//!
//!     // ... until asked to stop:
//!     worker.leave().await?;
//!     coordinator.stop().await;
//!     Ok(())
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use helix_core::{ClusterConfig, ClusterName, ConfigError, QueueId, WorkerId};
use helix_store::{Store, StoreError, Subscription, WorkerRegistration};
use tokio::sync::oneshot;

use crate::coordinator::{
    Allocate, Coordinator, CurrentFence, LeaderElection, LeadershipChanged, Resign, RoundReport, RunRound,
    StrategyAllocator,
};
use crate::store_actor::{DEFAULT_MAX_IN_FLIGHT, StoreActor, StoreHandle};
use crate::tasks::{TaskHandler, TaskPolicy, TaskQueues};
use crate::worker::{
    GetStatus, HandlerFactory, Kill, Leave, LeaveOutcome, PartitionContext, PartitionHandler, RestartPolicy,
    SessionEnd, WorkerSession, WorkerStatusReport,
};

/// Why a node could not be started or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster configuration is inconsistent; fix the configuration.
    #[error("invalid cluster configuration: {0}")]
    Config(#[from] ConfigError),
    /// The node was asked for something that cannot work (no handler, no queue served, a
    /// capacity out of range).
    #[error("invalid node: {0}")]
    Invalid(String),
    /// A store operation failed (for example a served queue that does not exist).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node's actor has stopped (it left, was killed or was stopped).
    #[error("the node has stopped")]
    Stopped,
}

impl From<MailboxError> for NodeError {
    fn from(_: MailboxError) -> Self {
        Self::Stopped
    }
}

/// A coordinator node: takes part in the election of the cluster's coordinator and, while
/// it holds the lease, reconciles every queue (see [`Coordinator`]). Every process may run
/// one; only the lease holder acts.
///
/// It wires a [`LeaderElection`], a [`Coordinator`] and an allocator (by default a
/// [`StrategyAllocator`]; any actor answering [`Allocate`] can be plugged in with
/// [`with_allocator`](Self::with_allocator)).
pub struct CoordinatorNode {
    store: Arc<dyn Store>,
    config: ClusterConfig,
    cluster: ClusterName,
    id: WorkerId,
    allocator: Option<Recipient<Allocate>>,
}

impl CoordinatorNode {
    /// A node of the default cluster (`helix`) with a fresh UUID v7 identity and the default
    /// allocator.
    pub fn new(store: Arc<dyn Store>, config: ClusterConfig) -> Self {
        Self { store, config, cluster: ClusterName::default(), id: WorkerId::new_v7(), allocator: None }
    }

    /// The same node in another cluster (clusters sharing a database elect separately).
    pub fn cluster(mut self, cluster: ClusterName) -> Self {
        self.cluster = cluster;
        self
    }

    /// The same node with another identity in the election. Two processes under one id never
    /// share a term: while one holds the lease, the other stays a follower (the store refuses
    /// a running lease to every id), and leads under a new term only once the lease was
    /// released or ran out.
    pub fn id(mut self, id: WorkerId) -> Self {
        self.id = id;
        self
    }

    /// The same node asking `allocator` for every queue's target instead of the
    /// [`StrategyAllocator`].
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// use actix::prelude::*;
    /// use helix_actors::coordinator::{Allocate, AllocateResult, StrategyAllocator};
    /// use helix_actors::node::CoordinatorNode;
    /// use helix_core::ClusterConfig;
    ///
    /// /// Logs every round's queues, then lets the default strategies answer.
    /// struct Logged(Recipient<Allocate>);
    ///
    /// impl Actor for Logged {
    ///     type Context = Context<Self>;
    /// }
    ///
    /// impl Handler<Allocate> for Logged {
    ///     type Result = ResponseFuture<AllocateResult>;
    ///     fn handle(&mut self, msg: Allocate, _: &mut Context<Self>) -> Self::Result {
    ///         println!("allocating {} queues", msg.requests.len());
    ///         let inner = self.0.clone();
    ///         // No answer is a failed round: the coordinator leaves every queue as it is.
    ///         Box::pin(async move { inner.send(msg).await.unwrap_or_default() })
    ///     }
    /// }
    ///
    /// # fn run(store: Arc<dyn helix_store::Store>) -> Result<(), helix_actors::node::NodeError> {
    /// let allocator = Logged(StrategyAllocator.start().recipient()).start();
    /// let node = CoordinatorNode::new(store, ClusterConfig::default())
    ///     .with_allocator(allocator.recipient())
    ///     .start()?;
    /// # let _ = node; Ok(()) }
    /// ```
    pub fn with_allocator(mut self, allocator: Recipient<Allocate>) -> Self {
        self.allocator = Some(allocator);
        self
    }

    /// Validates the configuration and starts the node's [`StoreActor`], the election, the
    /// coordinator and (unless one was plugged in) the default allocator on the current
    /// arbiter; the election and the coordinator reach the store through the store actor.
    ///
    /// # Errors
    /// [`NodeError::Config`] when the configuration does not validate.
    pub fn start(self) -> Result<CoordinatorHandle, NodeError> {
        self.config.validate()?;
        let Self { store, config, cluster, id, allocator } = self;
        let store = StoreActor::start_handle(store, DEFAULT_MAX_IN_FLIGHT).into_store();
        let allocator = allocator.unwrap_or_else(|| StrategyAllocator.start().recipient());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut election = None;
        let coordinator = Coordinator::create(|ctx| {
            let started = LeaderElection::new(
                Arc::clone(&store),
                cluster.clone(),
                id,
                config.clone(),
                ctx.address().recipient::<LeadershipChanged>(),
            )
            .start();
            election = Some(started.clone());
            prune_events_while_leading(ctx, Arc::clone(&store), started.clone(), config.event_retention);
            // The coordinator's timer keeps it alive; this is how `stop` ends it.
            ctx.spawn(
                actix::fut::wrap_future::<_, Coordinator>(stop_rx)
                    .map(|_, _, ctx: &mut Context<Coordinator>| ctx.stop()),
            );
            Coordinator::new(Arc::clone(&store), config, allocator).with_election(started.recipient())
        });
        let election = election.ok_or(NodeError::Stopped)?;
        tracing::info!(cluster = %cluster, node = %id, "coordinator node started");
        Ok(CoordinatorHandle { id, cluster, store, coordinator, election, stop: Some(stop_tx) })
    }
}

/// While `election` leads, deletes the events older than `retention` every tenth of it (at
/// most hourly); nothing when `retention` is zero. Pruning changes no ownership, so it needs no
/// fence: leading only keeps the work to one node.
fn prune_events_while_leading(
    ctx: &mut Context<Coordinator>,
    store: Arc<dyn Store>,
    election: Addr<LeaderElection>,
    retention: Duration,
) {
    if retention.is_zero() {
        return;
    }
    let every = (retention / 10).clamp(Duration::from_millis(1), Duration::from_secs(3_600));
    ctx.run_interval(every, move |_, ctx| {
        let (store, election) = (Arc::clone(&store), election.clone());
        ctx.spawn(actix::fut::wrap_future(async move {
            if !matches!(election.send(CurrentFence).await, Ok(Some(_))) {
                return;
            }
            match store.prune_events(retention).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, retention_s = retention.as_secs(), "old events pruned"),
                Err(error) => tracing::warn!(%error, "pruning old events failed"),
            }
        }));
    });
}

/// A running [`CoordinatorNode`].
///
/// Dropping the handle leaves the node running; call [`stop`](Self::stop) to end it.
pub struct CoordinatorHandle {
    id: WorkerId,
    cluster: ClusterName,
    store: Arc<dyn Store>,
    coordinator: Addr<Coordinator>,
    election: Addr<LeaderElection>,
    stop: Option<oneshot::Sender<()>>,
}

impl CoordinatorHandle {
    /// The node's identity in the election.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The coordinator actor, for sending it messages directly.
    pub fn coordinator(&self) -> &Addr<Coordinator> {
        &self.coordinator
    }

    /// Whether this node holds the lease now and trusts it on its own clock.
    pub async fn is_leader(&self) -> bool {
        matches!(self.election.send(CurrentFence).await, Ok(Some(_)))
    }

    /// Runs a full reconciliation round now, instead of waiting for the next tick; `None`
    /// when this node does not lead or a round is already under way.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] when the node has stopped.
    pub async fn rebalance(&self) -> Result<Option<RoundReport>, NodeError> {
        Ok(self.coordinator.send(RunRound).await?)
    }

    /// Gives the lease up (so another node can take over at once instead of waiting for it to
    /// run out) and stops the node. Waits up to one renewal interval for the release to reach
    /// the store; when it does not, the lease simply runs out.
    pub async fn stop(mut self) {
        // An error means the election has already stopped.
        let _ = self.election.send(Resign).await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::Instant::now() < deadline {
            match self.store.get_lease(&self.cluster).await {
                Ok(Some(lease)) if lease.holder == Some(self.id) && !lease.expired => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(cluster = %self.cluster, node = %self.id, "coordinator node stopped");
    }
}

/// A worker process's membership: serves some queues with the user's handler.
///
/// Build one with [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A builder for a worker over `store` with the cluster's `config`.
    pub fn builder(store: Arc<dyn Store>, config: ClusterConfig) -> WorkerBuilder {
        WorkerBuilder {
            store,
            config,
            id: WorkerId::new_v7(),
            host: default_host(),
            labels: BTreeMap::new(),
            subscriptions: Vec::new(),
            factory: None,
            policy: RestartPolicy::default(),
            tasks: TaskQueues::new(),
        }
    }
}

/// The host name a worker registers with: `$HOSTNAME` (or `$COMPUTERNAME`), else
/// `localhost`.
fn default_host() -> String {
    ["HOSTNAME", "COMPUTERNAME"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Builds a [`WorkerHandle`]: which queues to serve, with which labels and handler.
pub struct WorkerBuilder {
    store: Arc<dyn Store>,
    config: ClusterConfig,
    id: WorkerId,
    host: String,
    labels: BTreeMap<String, String>,
    subscriptions: Vec<Subscription>,
    factory: Option<HandlerFactory>,
    policy: RestartPolicy,
    tasks: TaskQueues,
}

impl WorkerBuilder {
    /// Serves the queue `queue` with the weight `capacity` (1 or more: a worker of capacity 2
    /// gets about twice the partitions of one of capacity 1). Serving a queue twice keeps the
    /// last capacity.
    pub fn serve(mut self, queue: QueueId, capacity: u32) -> Self {
        self.subscriptions.retain(|s| s.queue_id != queue);
        self.subscriptions.push(Subscription { queue_id: queue, capacity });
        self
    }

    /// Adds the label `key = value` (allocators may use labels, for example a zone).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Registers under `id` instead of a fresh UUID v7. A stable id lets a restarted process
    /// find the partitions it kept (with a cluster `rejoin_delay`); only one process at a
    /// time may use it ([`start`](Self::start) is refused while another one's session is
    /// live).
    pub fn id(mut self, id: WorkerId) -> Self {
        self.id = id;
        self
    }

    /// Registers with `host` instead of `$HOSTNAME` (or `localhost`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Runs the tasks of `queue` with `handler` under `policy` (see [`crate::tasks`]), and
    /// serves the queue with capacity 1 unless [`serve`](Self::serve) gave it another. The
    /// partitions of this queue then run tasks; those of other queues use the
    /// [`handler`](Self::handler) factory.
    pub fn tasks(mut self, queue: QueueId, handler: impl TaskHandler, policy: TaskPolicy) -> Self {
        self.tasks = self.tasks.queue(queue, handler, policy);
        if !self.subscriptions.iter().any(|s| s.queue_id == queue) {
            self.subscriptions.push(Subscription { queue_id: queue, capacity: 1 });
        }
        self
    }

    /// Polls for due tasks every `every` instead of every
    /// [`DEFAULT_POLL_INTERVAL`](crate::tasks::DEFAULT_POLL_INTERVAL); see
    /// [`TaskQueues::poll_interval`].
    pub fn task_poll_interval(mut self, every: Duration) -> Self {
        self.tasks = self.tasks.poll_interval(every);
        self
    }

    /// Lets at most `operations` task operations of this worker use the store at once
    /// instead of [`DEFAULT_STORE_CONCURRENCY`](crate::tasks::DEFAULT_STORE_CONCURRENCY); see
    /// [`TaskQueues::store_concurrency`].
    pub fn task_store_concurrency(mut self, operations: usize) -> Self {
        self.tasks = self.tasks.store_concurrency(operations);
        self
    }

    /// Creates each partition's handler with `factory`.
    pub fn handler(mut self, factory: HandlerFactory) -> Self {
        self.factory = Some(factory);
        self
    }

    /// Restarts failing partitions and gives them up as failed per `policy` instead of the
    /// default [`RestartPolicy`].
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Creates each partition's handler with the closure `make`.
    pub fn handler_fn<F>(self, make: F) -> Self
    where
        F: Fn(&PartitionContext) -> Box<dyn PartitionHandler> + Send + Sync + 'static,
    {
        self.handler(Arc::new(make))
    }

    /// Validates the worker, starts its control arbiter (with its [`StoreActor`]) and its
    /// handler arbiter (see the [module documentation](self)), checks through the store actor
    /// that every served queue exists, registers the worker (a new session) and starts the
    /// worker session on the control arbiter, reaching the store through the store actor.
    /// Both arbiters stop when the session stops (after [`WorkerHandle::leave`] or
    /// [`WorkerHandle::kill`]), or at once when the start fails.
    ///
    /// One process per identity: while another process holds a live session under this
    /// worker's id (see [`id`](Self::id)), the registration is refused and nothing starts.
    ///
    /// # Errors
    /// [`NodeError::Config`] for an invalid configuration, [`NodeError::Invalid`] without a
    /// handler, without a queue to serve or for a capacity of 0, [`NodeError::Store`] when a
    /// served queue cannot be read (`NotFound` when it does not exist) or the registration
    /// fails: [`StoreError::IdInUse`] (with how long the other session's lease still runs)
    /// when the id is in use; wait for that lease to end, or for that process to leave, or use
    /// another id.
    pub async fn start(self) -> Result<WorkerHandle, NodeError> {
        self.config.validate()?;
        if self.subscriptions.is_empty() {
            return Err(NodeError::Invalid("the worker serves no queue".into()));
        }
        if self.factory.is_none()
            && let Some(unhandled) = self.subscriptions.iter().find(|s| !self.tasks.contains(s.queue_id))
        {
            return Err(NodeError::Invalid(format!(
                "no handler was given for queue {} (give a handler, or task handlers for every served queue)",
                unhandled.queue_id
            )));
        }
        if let Some(zero) = self.subscriptions.iter().find(|s| s.capacity == 0) {
            return Err(NodeError::Invalid(format!("capacity 0 for queue {}", zero.queue_id)));
        }
        let control = Arbiter::new();
        let handlers = Arbiter::new();
        let arbiters = vec![control.handle(), handlers.handle()];
        let stop_arbiters = |arbiters: &[ArbiterHandle]| {
            for arbiter in arbiters {
                // `false` means it has stopped already.
                let _ = arbiter.stop();
            }
        };
        let inner = self.store;
        let store_actor = StoreActor::start_in_arbiter(&control.handle(), move |_| {
            StoreActor::new(inner, DEFAULT_MAX_IN_FLIGHT)
        });
        let store = StoreHandle::new(store_actor).into_store();
        for subscription in &self.subscriptions {
            if let Err(error) = store.get_queue_by_id(subscription.queue_id).await {
                stop_arbiters(&arbiters);
                return Err(error.into());
            }
        }
        let registration = WorkerRegistration {
            id: self.id,
            host: self.host,
            pid: std::process::id(),
            labels: self.labels,
            subscriptions: self.subscriptions,
            session_timeout: self.config.session_timeout,
        };
        // Registered here, not by the session, so that a refusal reaches the caller: above all
        // an id still held by a live session (`StoreError::IdInUse`, one process per id).
        let sent = tokio::time::Instant::now();
        let lease = match store.register_worker(&registration).await {
            Ok(lease) => lease,
            Err(error) => {
                stop_arbiters(&arbiters);
                return Err(error.into());
            }
        };
        let factory = if self.tasks.is_empty() {
            self.factory.ok_or_else(|| NodeError::Invalid("no handler was given".into()))?
        } else {
            let (factory, poll) = self.tasks.factory(Arc::clone(&store), self.factory);
            handlers.spawn(poll);
            factory
        };
        let (config, policy, handler_arbiter) = (self.config, self.policy, handlers.handle());
        let session = WorkerSession::new(store, config, registration, factory)
            .with_restart_policy(policy)
            .with_registration(lease, sent)
            .with_handler_arbiter(handler_arbiter)
            .stopping_arbiters(arbiters);
        let ended = session.ended();
        let session = WorkerSession::start_in_arbiter(&control.handle(), move |_| session);
        tracing::info!(worker = %self.id, "worker started");
        Ok(WorkerHandle { id: self.id, session, ended })
    }
}

/// A running worker.
///
/// Dropping the handle leaves the worker running (its timers keep it alive); end it with
/// [`leave`](Self::leave) or [`kill`](Self::kill).
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    id: WorkerId,
    session: Addr<WorkerSession>,
    ended: tokio::sync::watch::Receiver<Option<SessionEnd>>,
}

impl WorkerHandle {
    /// The worker's identity.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The worker session actor, for sending it messages directly.
    pub fn session(&self) -> &Addr<WorkerSession> {
        &self.session
    }

    /// Why the worker ended, `None` while it runs. A worker ends by itself only when another
    /// process registered under its id ([`SessionEnd::Superseded`]).
    pub fn end(&self) -> Option<SessionEnd> {
        self.ended.borrow().clone()
    }

    /// Waits until the worker ends and says why: await it next to the application's own
    /// shutdown signal, so that a worker superseded by another process under its id stops
    /// the application rather than leaving it running without partitions.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] when the worker's actor went away without saying why (its
    /// actix system stopped).
    pub async fn ended(&self) -> Result<SessionEnd, NodeError> {
        let mut ended = self.ended.clone();
        let end = ended.wait_for(Option::is_some).await.map_err(|_| NodeError::Stopped)?;
        end.clone().ok_or(NodeError::Stopped)
    }

    /// What the worker is doing: its session, whether it is fenced, its partitions.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] when the worker has stopped.
    pub async fn status(&self) -> Result<WorkerStatusReport, NodeError> {
        Ok(self.session.send(GetStatus).await?)
    }

    /// Leaves gracefully: drains every partition, hands over or releases them (so the
    /// coordinator can grant them at once; with a cluster `rejoin_delay`, keeps them for this
    /// worker's return under the same id), deregisters and stops.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] when the worker had already stopped.
    pub async fn leave(self) -> Result<LeaveOutcome, NodeError> {
        Ok(self.session.send(Leave).await?)
    }

    /// Stops the worker the way a crash would: its partitions stop at once, nothing is
    /// written to the store, and its lease is left to run out, so the coordinator moves its
    /// partitions about one session timeout later. For tests and demonstrations.
    pub fn kill(self) {
        self.session.do_send(Kill);
    }
}

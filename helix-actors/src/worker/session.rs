//! The worker session: one lease per process, its partitions, self-fencing, acknowledged
//! handoff and graceful leave (`docs/protocol.md`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use helix_core::{ClusterConfig, DomainName, Epoch, PartitionId, QueueId, QueueName, SessionEpoch, WorkerId};
use helix_store::{
    AssignmentRecord, AssignmentState, Heartbeat, QueueRecord, Store, StoreError, StoreResult, WorkerLease,
    WorkerRegistration, WorkerStatus,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::guard::{FenceDeadline, OwnershipGuard};
use super::handler::{HandlerFactory, PartitionContext};
use super::partition::{Drain, PartitionActor, PartitionFailure, Stop, create_handler};

/// A partition of a queue.
pub type PartitionKey = (QueueId, PartitionId);

/// How the session restarts a partition whose handler failed (an error or a panic in
/// `assigned`): after `initial_backoff`, doubling up to `max_backoff`; after `max_failures`
/// failures within `window` the partition fails: the worker gives it up in the store as
/// `FAILED` (with a `partition_failed` event), and the coordinator leaves it unowned until an
/// operator resets it ([`Client::reset_partition`](crate::client::Client::reset_partition)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait before the first restart. Default 100 ms.
    pub initial_backoff: Duration,
    /// The longest wait between restarts. Default 10 s.
    pub max_backoff: Duration,
    /// How many failures within `window` make the partition failed. Default 5.
    pub max_failures: usize,
    /// The window failures are counted in. Default 60 s.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_failures: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The wait before the restart that follows the `failures`-th failure (1-based).
    fn backoff(&self, failures: usize) -> Duration {
        let failures = u32::try_from(failures).unwrap_or(u32::MAX);
        crate::backoff::exponential(self.initial_backoff, self.max_backoff, failures)
    }
}

/// Where an owned partition stands in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    /// Its handler runs.
    Running,
    /// Its handler failed and restarts after a backoff.
    Backoff,
    /// It is being drained and handed over (or released).
    Draining,
    /// It was drained but the handoff did not reach the store, or came back fenced; the next
    /// poll hands it over again, runs it again (a cancelled revocation) or drops it (moved on).
    Stopped,
    /// Its handler failed too often; it stays stopped until the store records it as failed
    /// (see [`RestartPolicy`]).
    Failed,
}

/// One owned partition in a [`WorkerStatusReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The queue.
    pub queue: QueueId,
    /// The partition.
    pub partition: PartitionId,
    /// The epoch it is owned at.
    pub epoch: Epoch,
    /// Where it stands.
    pub state: PartitionState,
}

/// What a [`WorkerSession`] is doing, for tests and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatusReport {
    /// The worker.
    pub worker: WorkerId,
    /// The current session, `None` while unregistered (before registration, after the session
    /// was lost until it registers again, after leaving).
    pub session_epoch: Option<SessionEpoch>,
    /// Whether the worker is fenced: it has no lease it can trust on its own clock, so it runs
    /// no partition.
    pub fenced: bool,
    /// Whether it is leaving.
    pub leaving: bool,
    /// The partitions it knows it owns, sorted by (queue, partition).
    pub partitions: Vec<PartitionStatus>,
}

impl WorkerStatusReport {
    /// The partitions whose handler runs, with their epochs.
    pub fn running(&self) -> Vec<(QueueId, PartitionId, Epoch)> {
        self.partitions
            .iter()
            .filter(|p| p.state == PartitionState::Running)
            .map(|p| (p.queue, p.partition, p.epoch))
            .collect()
    }
}

/// Asks a [`WorkerSession`] for its [`WorkerStatusReport`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "WorkerStatusReport")]
pub struct GetStatus;

/// Asks a [`WorkerSession`] to leave gracefully (docs/protocol.md, "Graceful leave"): mark
/// itself DRAINING, drain every partition, hand over the revoking ones and release the
/// others (so the coordinator can grant them at once; with a cluster `rejoin_delay`, keep them
/// for this worker's return instead), deregister, and stop. If the actor is
/// stopped from inside (`Actor::stopping`), it leaves the same way first. A second `Leave`
/// while one is under way answers at once with an empty outcome.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "LeaveOutcome")]
pub struct Leave;

/// Stops a [`WorkerSession`] at once, the way a crash would: every partition actor is stopped
/// without a drain, nothing is written to the store (no DRAINING mark, no release, no
/// deregistration) and the session actor stops. The worker's lease is left to run out in the
/// store, so the coordinator moves its partitions only after the session timeout — what a
/// `SIGKILL` does to a worker process. For tests and demonstrations; use [`Leave`] otherwise.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Kill;

/// What a graceful leave did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// The partitions released (no owner now, coordinator grants them elsewhere).
    pub released: Vec<PartitionKey>,
    /// The partitions handed over to the target of their revocation.
    pub handed_off: Vec<PartitionKey>,
    /// The partitions kept for this worker's return, when the cluster has a `rejoin_delay`:
    /// they stay its own, stopped, and move only if it does not register again in time.
    pub kept: Vec<PartitionKey>,
    /// Whether the deregistration reached the store; when it did not, the lease simply expires.
    pub deregistered: bool,
}

/// Why a [`WorkerSession`] ended. Read it with [`WorkerSession::ended`] (or
/// [`WorkerHandle::ended`](crate::node::WorkerHandle::ended)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// It left: after [`Leave`], or when its actor was stopped.
    Left,
    /// It was stopped the way a crash would ([`Kill`]).
    Killed,
    /// Another process registered under this worker's id (DESIGN §4 rule 8: one process per
    /// identity). The session stopped every partition at once, logged it at error level, and
    /// will not register again by itself: two processes under one id would take turns owning
    /// everything. Give each process its own id, or start the replacement only once this one
    /// has left or its lease has run out.
    Superseded {
        /// The worker.
        worker: WorkerId,
        /// The session that was superseded (this process's last session).
        session_epoch: SessionEpoch,
    },
}

/// What a request a session sends was sent under: the session and the fence generation.
/// An answer that comes back under another stamp is dropped (DESIGN §4 rule 10): it was
/// read or decided for a session, or a stretch of trusted lease, that is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    session: Option<SessionEpoch>,
    fence: u64,
}

struct Slot {
    epoch: Epoch,
    generation: u64,
    actor: Option<Addr<PartitionActor>>,
    /// Ended, without a message, whenever the session stops the partition.
    guard: Option<OwnershipGuard>,
    state: PartitionState,
}

/// The session of one worker process (DESIGN §4–§5): registers, heartbeats, fences itself,
/// polls its assignments, runs one [`PartitionHandler`](super::PartitionHandler) per owned
/// partition in a supervised child actor, hands revoked partitions over after draining them,
/// and leaves gracefully when stopped.
///
/// Guarantees, on the worker's monotonic clock:
/// - **Self-fencing.** The instant `sent` is taken before each heartbeat; after a renewal the
///   worker runs partitions only until `sent + session_timeout − safety_margin`. If no renewal
///   moved that instant, every partition is stopped there, before the store can find the
///   lease expired.
/// - **A lost session stops everything.** A heartbeat answered `Expired`, `Deregistered` or
///   `Unknown` stops every partition at once, then the worker registers again under a new
///   session epoch.
/// - **One process per id.** A heartbeat answered `Superseded` (another process registered
///   under this id), or a refused re-registration while another process's newer session of
///   this id exists, stops every partition at once and the session for good: it logs an
///   error naming the id, reports [`SessionEnd::Superseded`] through
///   [`ended`](Self::ended), and never registers again. A first registration refused because
///   the id's previous session is still live is tried again on every tick, until that lease
///   runs out or its session deregisters.
/// - **Stale answers are dropped.** Every request (heartbeat, poll, handoff, failure report)
///   is stamped with the session epoch and the fence generation it was sent under; an
///   answer that comes back under another session, or after the session fenced itself, is
///   dropped (a poll read before a fence must not start a partition after it).
/// - **Acknowledged handoff.** A partition the coordinator marked `REVOKING` is drained
///   (`revoked`, at most `drain_timeout`) and then handed over with one epoch-fenced update.
///
/// Heartbeats run every `heartbeat_interval` and never overlap themselves. The assignment
/// poll runs only when something may have changed: after a registration, when a heartbeat
/// answers that the assignment version of a subscribed queue moved, after a fenced handoff,
/// and on every tick while a poll failed or a partition waits for a retry. An idle worker
/// therefore costs the store one heartbeat (one statement on MySQL) per interval. Store
/// errors are logged and the step is tried again on the next tick; self-fencing still applies.
///
/// Threads: the session lives on the **control arbiter** (the one it is started on; with
/// [`Worker`](crate::node::Worker) a thread of its own, shared only with the worker's store
/// actor). Its partition actors, and so the user's handlers, live on the **handler arbiter**
/// given by [`with_handler_arbiter`](Self::with_handler_arbiter), by default the control
/// arbiter itself (what tests on virtual time need: tokio's paused clock is per thread). The
/// fence deadline is published to the handler arbiter in an atomic, and the session ends each
/// ownership through its [`OwnershipGuard`](super::OwnershipGuard) before any message, so a
/// handler's future is never polled past the deadline whichever thread is late.
/// Its timers keep it alive when every address is dropped: send [`Leave`] to stop it.
pub struct WorkerSession {
    store: Arc<dyn Store>,
    config: ClusterConfig,
    registration: WorkerRegistration,
    factory: HandlerFactory,
    policy: RestartPolicy,
    /// Where partition actors start; `None` for the session's own arbiter.
    handler_arbiter: Option<ArbiterHandle>,
    /// Arbiters to stop once the session has stopped (those a node started for it).
    stop_with: Vec<ArbiterHandle>,
    session: Option<SessionEpoch>,
    fenced_at: Option<Instant>,
    /// `fenced_at`, as the partition actors read it.
    fence: FenceDeadline,
    fence_timer: Option<SpawnHandle>,
    lease_busy: bool,
    poll_busy: bool,
    leaving: bool,
    left: bool,
    slots: BTreeMap<PartitionKey, Slot>,
    failures: BTreeMap<PartitionKey, VecDeque<Instant>>,
    /// Partitions that failed too often here and whose failure the store has not recorded
    /// yet, with the event's detail: reported again on every poll until it is.
    failed: BTreeMap<PartitionKey, serde_json::Value>,
    /// The epoch each partition was last handed over at: a poll read before the handoff
    /// committed must not start it again.
    given_up: BTreeMap<PartitionKey, Epoch>,
    queues: BTreeMap<QueueId, (DomainName, QueueName)>,
    next_generation: u64,
    /// A session registered before the actor started ([`WorkerSession::with_registration`]),
    /// with the instant its registration was sent.
    registered: Option<(WorkerLease, Instant)>,
    /// Bumped whenever the session stops trusting its lease (self-fencing, a lost session):
    /// with the session epoch it stamps every request ([`Stamp`]).
    fence_generation: u64,
    /// The last session this process held, to recognise a newer one of another process.
    last_session: Option<SessionEpoch>,
    /// Bumped for every reason to poll; `polled_seq` is the highest one a successful poll
    /// started after. A poll is owed while they differ.
    poll_wanted_seq: u64,
    polled_seq: u64,
    ended: watch::Sender<Option<SessionEnd>>,
}

impl WorkerSession {
    /// A session for the worker described by `registration` (its `session_timeout` is replaced
    /// by `config.session_timeout`), creating handlers with `factory`. Start it with
    /// [`Actor::start`]; it registers at once.
    pub fn new(
        store: Arc<dyn Store>,
        config: ClusterConfig,
        mut registration: WorkerRegistration,
        factory: HandlerFactory,
    ) -> Self {
        registration.session_timeout = config.session_timeout;
        Self {
            store,
            config,
            registration,
            factory,
            policy: RestartPolicy::default(),
            handler_arbiter: None,
            stop_with: Vec::new(),
            session: None,
            fenced_at: None,
            fence: FenceDeadline::new(),
            fence_timer: None,
            lease_busy: false,
            poll_busy: false,
            leaving: false,
            left: false,
            slots: BTreeMap::new(),
            failures: BTreeMap::new(),
            failed: BTreeMap::new(),
            given_up: BTreeMap::new(),
            queues: BTreeMap::new(),
            next_generation: 0,
            registered: None,
            fence_generation: 0,
            last_session: None,
            poll_wanted_seq: 0,
            polled_seq: 0,
            ended: watch::channel(None).0,
        }
    }

    /// Starts with the session `lease`, registered by the caller (with this session's
    /// registration) from a request sent at `sent`, instead of registering when started: so
    /// the caller sees a refused registration ([`StoreError::IdInUse`]) itself.
    #[must_use]
    pub fn with_registration(mut self, lease: WorkerLease, sent: Instant) -> Self {
        self.registered = Some((lease, sent));
        self
    }

    /// Why the session ended, `None` while it runs; the receiver sees the change when it
    /// ends. Take it before starting the actor (as [`WorkerBuilder::start`] does for
    /// [`WorkerHandle::end`]).
    ///
    /// [`WorkerBuilder::start`]: crate::node::WorkerBuilder::start
    /// [`WorkerHandle::end`]: crate::node::WorkerHandle::end
    pub fn ended(&self) -> watch::Receiver<Option<SessionEnd>> {
        self.ended.subscribe()
    }

    /// Records why the session ended, unless an earlier reason was recorded.
    fn end(&self, end: SessionEnd) {
        self.ended.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(end);
            true
        });
    }

    fn stamp(&self) -> Stamp {
        Stamp { session: self.session, fence: self.fence_generation }
    }

    /// Whether an answer to a request sent under `stamp` may still be applied; logs the drop.
    fn still_current(&self, stamp: Stamp, what: &'static str) -> bool {
        let current = self.stamp() == stamp;
        if !current {
            debug!(worker = %self.id(), what, "dropping an answer sent under an earlier session or fence");
        }
        current
    }

    /// Replaces the default [`RestartPolicy`].
    #[must_use]
    pub fn with_restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts partition actors, and so creates and runs the user's handlers, on `arbiter`
    /// instead of the session's own: a handler that blocks its thread then never delays a
    /// heartbeat or the fence. Both threads must read the same monotonic clock (any two
    /// threads do, except under tokio's paused test clock, which is per runtime).
    #[must_use]
    pub fn with_handler_arbiter(mut self, arbiter: ArbiterHandle) -> Self {
        self.handler_arbiter = Some(arbiter);
        self
    }

    /// Stops `arbiters` once the session has stopped.
    pub(crate) fn stopping_arbiters(mut self, arbiters: Vec<ArbiterHandle>) -> Self {
        self.stop_with = arbiters;
        self
    }

    fn id(&self) -> WorkerId {
        self.registration.id
    }

    /// Whether the worker may act on its own account now.
    /// The bound of each store request of the session: `session_timeout − safety_margin`, as
    /// long as the lease it serves is trusted (DESIGN §4 rule 11).
    fn call_bound(&self) -> Duration {
        self.config.session_timeout.saturating_sub(self.config.safety_margin)
    }

    fn is_fenced(&self) -> bool {
        self.fenced_at.is_none_or(|at| Instant::now() >= at)
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        self.renew(ctx);
        // Partitions waiting for a retry (a handoff or a failure report that did not reach
        // the store) are retried on every tick; otherwise the heartbeat says when to poll.
        let pending =
            !self.failed.is_empty() || self.slots.values().any(|s| s.state == PartitionState::Stopped);
        if pending || self.poll_owed() {
            self.poll(ctx);
        }
    }

    /// Whether something happened that only a poll can bring in: a registration, a moved
    /// assignment version, a fenced handoff, a failed poll.
    fn poll_owed(&self) -> bool {
        self.polled_seq < self.poll_wanted_seq
    }

    /// Asks for a poll and starts it now when possible.
    fn want_poll(&mut self, ctx: &mut Context<Self>) {
        self.poll_wanted_seq += 1;
        self.poll(ctx);
    }

    /// Heartbeats the current session, or registers when there is none.
    fn renew(&mut self, ctx: &mut Context<Self>) {
        if self.lease_busy {
            return;
        }
        let Some(session) = self.session else {
            if !self.leaving {
                self.register(ctx);
            }
            return;
        };
        self.lease_busy = true;
        let store = Arc::clone(&self.store);
        let (id, timeout) = (self.id(), self.config.session_timeout);
        // Taken before the statement is sent: the store's expiry is at least `sent + timeout`.
        let sent = Instant::now();
        let stamp = self.stamp();
        let bound = self.call_bound();
        let heartbeat =
            bounded(bound, "heartbeat", async move { store.heartbeat(id, session, timeout).await });
        ctx.spawn(heartbeat.into_actor(self).map(move |outcome, act, ctx| {
            act.lease_busy = false;
            if !act.still_current(stamp, "heartbeat") {
                return;
            }
            match outcome {
                Ok(Heartbeat::Renewed { assignments_moved }) => {
                    act.renewed(sent, ctx);
                    if assignments_moved {
                        act.want_poll(ctx);
                    }
                }
                Ok(Heartbeat::Superseded) => act.superseded(session, ctx),
                Ok(answer) => {
                    warn!(worker = %act.id(), session_epoch = %session, ?answer, "session lost, stopping every partition");
                    act.stop_all("session lost");
                    act.fence_generation += 1;
                    act.session = None;
                    act.fenced_at = None;
                    if !act.leaving {
                        act.register(ctx);
                    }
                }
                Err(error) => {
                    // The renewal may have committed with its answer lost, and with it the news
                    // that assignments moved (the store records what the worker has seen): poll.
                    warn!(worker = %act.id(), session_epoch = %session, %error, "heartbeat failed");
                    act.poll_wanted_seq += 1;
                }
            }
        }));
    }

    fn register(&mut self, ctx: &mut Context<Self>) {
        if self.lease_busy || self.left {
            return;
        }
        self.lease_busy = true;
        let store = Arc::clone(&self.store);
        let registration = self.registration.clone();
        let sent = Instant::now();
        let bound = self.call_bound();
        let register =
            bounded(bound, "registration", async move { store.register_worker(&registration).await });
        ctx.spawn(register.into_actor(self).map(move |outcome, act, ctx| {
            act.lease_busy = false;
            match outcome {
                Ok(lease) => act.registered(lease, sent, ctx),
                Err(error) => {
                    // Refused while another session of this id is live (a process restarted
                    // under a stable id, before the old lease ran out): try again on every
                    // tick until the old lease runs out or its session deregisters. If this
                    // process held a session before, the live one may be another process's
                    // newer session: then this one is superseded.
                    warn!(worker = %act.id(), %error, "registration failed, trying again on the next tick");
                    if let Some(last) = act.last_session.filter(|_| !error.is_retryable()) {
                        act.check_superseded(last, ctx);
                    }
                }
            }
        }));
    }

    /// A registration sent at `sent` succeeded: the session runs under its new epoch.
    fn registered(&mut self, lease: WorkerLease, sent: Instant, ctx: &mut Context<Self>) {
        info!(worker = %self.id(), session_epoch = %lease.session_epoch, "worker registered");
        self.session = Some(lease.session_epoch);
        self.last_session = Some(lease.session_epoch);
        self.renewed(sent, ctx);
        self.want_poll(ctx);
    }

    /// After a refused re-registration: reads the worker's row, and when a newer session than
    /// `last` exists that another process registered (another host or pid), stops for good
    /// as superseded.
    fn check_superseded(&mut self, last: SessionEpoch, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.store);
        let id = self.id();
        let stamp = self.stamp();
        let read = bounded(self.call_bound(), "worker read", async move { store.get_worker(id).await });
        ctx.spawn(read.into_actor(self).map(move |outcome, act, ctx| {
            if !act.still_current(stamp, "worker read") || act.left {
                return;
            }
            match outcome {
                Ok(record)
                    if record.session_epoch > last
                        && (record.host != act.registration.host || record.pid != act.registration.pid) =>
                {
                    act.superseded(last, ctx);
                }
                Ok(_) => {}
                Err(error) => warn!(worker = %act.id(), %error, "could not read the worker after a refused registration"),
            }
        }));
    }

    /// Another process registered under this id: stop every partition at once, report it,
    /// and stop for good (never register again: DESIGN §4 rule 8).
    fn superseded(&mut self, session: SessionEpoch, ctx: &mut Context<Self>) {
        error!(
            worker = %self.id(),
            session_epoch = %session,
            partitions = self.slots.len(),
            "another process registered under this worker id: session superseded, stopping every partition and the worker for good"
        );
        self.stop_all("superseded");
        self.fence_generation += 1;
        self.session = None;
        self.fenced_at = None;
        // `left` keeps `stopping` from leaving gracefully: the rows belong to the new session.
        self.left = true;
        self.end(SessionEnd::Superseded { worker: self.id(), session_epoch: session });
        ctx.stop();
    }

    /// A renewal sent at `sent` succeeded: trust the lease until `sent + timeout − margin`.
    fn renewed(&mut self, sent: Instant, ctx: &mut Context<Self>) {
        let trusted = self.config.session_timeout.saturating_sub(self.config.safety_margin);
        let fenced_at = sent + trusted;
        if self.fenced_at.is_some_and(|at| at >= fenced_at) {
            return;
        }
        // A renewal processed after the deadline passed (the fence timer has not run yet, for
        // example after the process was paused) never revives the ownerships of before: it
        // fences as the timer would have, and the poll it owes brings back what is still owned.
        if self.is_fenced() {
            self.fence_lapsed();
        }
        self.fenced_at = Some(fenced_at);
        self.fence.set(fenced_at);
        if let Some(timer) = self.fence_timer.take() {
            ctx.cancel_future(timer);
        }
        let wait = fenced_at.saturating_duration_since(Instant::now());
        self.fence_timer = Some(ctx.run_later(wait, |act, _| {
            act.fence_timer = None;
            if act.is_fenced() {
                act.fence_lapsed();
            }
        }));
    }

    /// The fence deadline passed (seen by the fence timer, or by a renewal processed late):
    /// answers still in flight are dropped, every partition stops at once, and a poll is owed,
    /// so that once a renewal lifts the fence the partitions still owned run again.
    fn fence_lapsed(&mut self) {
        self.fence_generation += 1;
        self.poll_wanted_seq += 1;
        if !self.slots.is_empty() {
            warn!(worker = %self.id(), "lease not renewed in time, fencing: stopping every partition");
            self.stop_all("self-fenced");
        }
    }

    /// Stops every partition at once, without draining: ends every ownership (no message,
    /// so no handler future is polled again from here on) and withdraws the fence deadline
    /// until the next renewal, then tells the partition actors to stop.
    fn stop_all(&mut self, reason: &'static str) {
        self.fence.clear();
        for slot in self.slots.values() {
            if let Some(guard) = &slot.guard {
                guard.end();
            }
        }
        for (key, slot) in std::mem::take(&mut self.slots) {
            if let Some(actor) = slot.actor {
                debug!(queue = %key.0, partition = %key.1, epoch = %slot.epoch, reason, "stopping partition");
                actor.do_send(Stop);
            }
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.poll_busy || self.leaving || self.left || self.session.is_none() || self.is_fenced() {
            return;
        }
        self.poll_busy = true;
        let store = Arc::clone(&self.store);
        let id = self.id();
        let known: BTreeSet<QueueId> = self.queues.keys().copied().collect();
        // Queues it does not serve are never run (see `give_back`): no lookup for them.
        let served = self.served_queues();
        let stamp = self.stamp();
        let wanted = self.poll_wanted_seq;
        let poll = bounded(self.call_bound(), "assignment poll", async move {
            let rows = store.assignments_of(id).await?;
            let unknown: BTreeSet<QueueId> = rows
                .iter()
                .map(|r| r.queue_id)
                .filter(|q| served.contains(q) && !known.contains(q))
                .collect();
            let mut queues = Vec::new();
            for queue in unknown {
                match store.get_queue_by_id(queue).await {
                    Ok(record) => queues.push(record),
                    Err(error) => warn!(worker = %id, queue = %queue, %error, "queue lookup failed"),
                }
            }
            StoreResult::Ok((rows, queues))
        });
        ctx.spawn(poll.into_actor(self).map(move |outcome, act, ctx| {
            act.poll_busy = false;
            if !act.still_current(stamp, "assignment poll") {
                return;
            }
            match outcome {
                Ok((rows, queues)) => {
                    act.polled_seq = act.polled_seq.max(wanted);
                    for QueueRecord { id, domain, name, .. } in queues {
                        act.queues.insert(id, (domain, name));
                    }
                    act.apply(rows, ctx);
                }
                Err(error) => warn!(worker = %act.id(), %error, "assignment poll failed"),
            }
        }));
    }

    /// Brings the running partitions in line with the rows the store says this worker owns.
    fn apply(&mut self, rows: Vec<AssignmentRecord>, ctx: &mut Context<Self>) {
        if self.leaving || self.left || self.session.is_none() || self.is_fenced() {
            return;
        }
        let owned: BTreeMap<PartitionKey, &AssignmentRecord> =
            rows.iter().map(|r| ((r.queue_id, r.partition), r)).collect();
        let gone: Vec<PartitionKey> = self
            .slots
            .iter()
            .filter(|(key, slot)| {
                slot.state != PartitionState::Draining && owned.get(key).is_none_or(|r| r.epoch != slot.epoch)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            self.failed.remove(&key);
            if let Some(slot) = self.slots.remove(&key) {
                info!(queue = %key.0, partition = %key.1, epoch = %slot.epoch, "partition no longer owned, stopping");
                if let Some(guard) = &slot.guard {
                    guard.end();
                }
                if let Some(actor) = slot.actor {
                    actor.do_send(Stop);
                }
            }
        }
        let served = self.served_queues();
        for (key, row) in owned {
            if !served.contains(&key.0) && !self.slots.contains_key(&key) {
                self.give_back(key, row, ctx);
                continue;
            }
            match (row.state, self.slots.get(&key).map(|s| s.state)) {
                (_, Some(PartitionState::Draining)) => {}
                (AssignmentState::Revoking, _) => self.revoke(key, row.epoch, ctx),
                // A revocation that was cancelled after our handoff failed: serve it again.
                (AssignmentState::Assigned, Some(PartitionState::Stopped)) => {
                    self.slots.remove(&key);
                    self.start(key, row.epoch, ctx);
                }
                // Its failure did not reach the store yet: report it again.
                (AssignmentState::Assigned, Some(PartitionState::Failed)) => self.report_failed(key, ctx),
                (AssignmentState::Assigned, Some(_)) => {}
                (AssignmentState::Failed, _) => {}
                (AssignmentState::Assigned, None)
                    if self.given_up.get(&key).is_some_and(|e| row.epoch <= *e) =>
                {
                    debug!(queue = %key.0, partition = %key.1, epoch = %row.epoch, "stale poll, partition already handed over");
                }
                (AssignmentState::Assigned, None) => self.start(key, row.epoch, ctx),
            }
        }
    }

    /// The queues this session subscribed to.
    fn served_queues(&self) -> BTreeSet<QueueId> {
        self.registration.subscriptions.iter().map(|sub| sub.queue_id).collect()
    }

    /// A partition of a queue this worker does not serve is never run here: it is given back
    /// at its epoch (handed off when it is being revoked, released otherwise) for the
    /// coordinator to place on a worker that serves the queue. The store releases such rows
    /// when a session registers (docs/protocol.md, "Adoption bumps the epoch"), so this meets
    /// a grant that ignored the subscriptions (a custom allocator's) and a handoff to this
    /// worker decided before it came back serving fewer queues. Any failure, a fenced one
    /// included (the row may be ours again, as after a cancelled revocation), and whether or
    /// not its answer is still current, is tried again after the next poll.
    fn give_back(&mut self, key: PartitionKey, row: &AssignmentRecord, ctx: &mut Context<Self>) {
        if self.given_up.get(&key).is_some_and(|e| row.epoch <= *e) {
            return;
        }
        let (epoch, revoking) = (row.epoch, row.state == AssignmentState::Revoking);
        self.given_up.insert(key, epoch);
        warn!(queue = %key.0, partition = %key.1, %epoch, "owns a partition of a queue it does not serve, giving it back");
        let (store, id, stamp, bound) = (Arc::clone(&self.store), self.id(), self.stamp(), self.call_bound());
        let give_back = async move {
            if revoking {
                bounded(bound, "handoff", store.handoff(key.0, key.1, id, epoch)).await
            } else {
                bounded(bound, "release", store.release_partition(key.0, key.1, id, epoch)).await
            }
        };
        ctx.spawn(give_back.into_actor(self).map(move |outcome, act, _| {
            match outcome {
                Ok(new_epoch) => info!(queue = %key.0, partition = %key.1, %new_epoch, "partition given back"),
                Err(error) => {
                    // Forgotten even under a later stamp: the entry would otherwise keep every
                    // later poll from trying again.
                    if act.given_up.get(&key) == Some(&epoch) {
                        act.given_up.remove(&key);
                    }
                    act.poll_wanted_seq += 1;
                    if act.still_current(stamp, "give back") {
                        warn!(queue = %key.0, partition = %key.1, %epoch, %error, "could not give the partition back, trying again after the next poll");
                    }
                }
            }
        }));
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn start(&mut self, key: PartitionKey, epoch: Epoch, ctx: &mut Context<Self>) {
        let Some((domain, queue_name)) = self.queues.get(&key.0).cloned() else {
            return; // its queue lookup failed; the next poll tries again
        };
        let guard = OwnershipGuard::new(self.fence.clone());
        let pctx = PartitionContext::new(domain, queue_name, key.0, key.1, epoch, self.id(), guard.clone());
        let generation = self.generation();
        info!(queue = %key.0, partition = %key.1, %epoch, "starting partition");
        let (factory, session, drain_timeout) =
            (Arc::clone(&self.factory), ctx.address().downgrade().recipient(), self.config.drain_timeout);
        // The handler is created on the thread it runs on: it need not be `Send`.
        let create = move |_: &mut Context<PartitionActor>| {
            let handler = create_handler(&factory, &pctx);
            PartitionActor::new(pctx, handler, session, generation, drain_timeout)
        };
        let actor = match &self.handler_arbiter {
            Some(arbiter) => PartitionActor::start_in_arbiter(arbiter, create),
            None => PartitionActor::create(create),
        };
        self.slots.insert(
            key,
            Slot {
                epoch,
                generation,
                actor: Some(actor),
                guard: Some(guard),
                state: PartitionState::Running,
            },
        );
    }

    /// Drains a revoked partition, then hands it over with one epoch-fenced update.
    fn revoke(&mut self, key: PartitionKey, epoch: Epoch, ctx: &mut Context<Self>) {
        let generation = self.generation();
        // The slot keeps the actor so that fencing can still stop it while it drains.
        let (actor, guard) =
            self.slots.get(&key).map(|s| (s.actor.clone(), s.guard.clone())).unwrap_or_default();
        self.slots.insert(
            key,
            Slot {
                epoch,
                generation,
                actor: actor.clone(),
                guard: guard.clone(),
                state: PartitionState::Draining,
            },
        );
        info!(queue = %key.0, partition = %key.1, %epoch, "partition revoked, draining");
        let store = Arc::clone(&self.store);
        let id = self.id();
        let stamp = self.stamp();
        let bound = self.call_bound();
        let handoff = async move {
            if let Some(actor) = actor {
                // An error means the actor already stopped: nothing left to drain.
                let _ = actor.send(Drain).await;
            }
            // The drain ended it already; an actor that had stopped may not have been asked.
            if let Some(guard) = guard {
                guard.end();
            }
            // Bounded from here: the drain has its own bound, `drain_timeout`.
            bounded(bound, "handoff", store.handoff(key.0, key.1, id, epoch)).await
        };
        ctx.spawn(handoff.into_actor(self).map(move |outcome, act, ctx| {
            if !act.still_current(stamp, "handoff") {
                return;
            }
            let current = act.slots.get(&key).is_some_and(|s| s.generation == generation);
            match outcome {
                Ok(new_epoch) => {
                    info!(queue = %key.0, partition = %key.1, %new_epoch, "partition handed off");
                    act.given_up.insert(key, epoch);
                    if current {
                        act.slots.remove(&key);
                    }
                }
                Err(StoreError::Fenced(reason)) => {
                    // The row is no longer (me, epoch, REVOKING): the revocation was cancelled
                    // (by the revoke timeout, or because its target died), or the partition
                    // moved on. Which one only the row says: read it again and run what is
                    // still ours (an `ASSIGNED` row restarts at its epoch), drop the rest.
                    info!(queue = %key.0, partition = %key.1, %epoch, %reason, "handoff fenced, reading the partition again");
                    if let Some(slot) = act.slots.get_mut(&key).filter(|_| current) {
                        slot.state = PartitionState::Stopped;
                        slot.actor = None;
                    }
                    act.want_poll(ctx);
                }
                Err(error) => {
                    warn!(queue = %key.0, partition = %key.1, %epoch, %error, "handoff failed, retrying on the next poll");
                    if let Some(slot) = act.slots.get_mut(&key).filter(|_| current) {
                        slot.state = PartitionState::Stopped;
                        slot.actor = None;
                    }
                }
            }
        }));
    }

    fn on_failure(&mut self, failure: PartitionFailure, ctx: &mut Context<Self>) {
        let PartitionFailure { key, generation, reason } = failure;
        let Some(slot) = self
            .slots
            .get_mut(&key)
            .filter(|s| s.generation == generation && s.state == PartitionState::Running)
        else {
            return;
        };
        slot.actor = None;
        let epoch = slot.epoch;
        let now = Instant::now();
        let history = self.failures.entry(key).or_default();
        history.push_back(now);
        while history.front().is_some_and(|t| now.saturating_duration_since(*t) > self.policy.window) {
            history.pop_front();
        }
        let count = history.len();
        if count >= self.policy.max_failures {
            slot.state = PartitionState::Failed;
            error!(queue = %key.0, partition = %key.1, %epoch, failures = count, %reason, "partition failed too often, giving it up as failed");
            let detail = serde_json::json!({
                "failures": count,
                "window_ms": u64::try_from(self.policy.window.as_millis()).unwrap_or(u64::MAX),
                "last_error": reason,
            });
            self.failed.insert(key, detail);
            self.report_failed(key, ctx);
            return;
        }
        let delay = self.policy.backoff(count);
        slot.state = PartitionState::Backoff;
        warn!(queue = %key.0, partition = %key.1, %epoch, failures = count, ?delay, %reason, "partition failed, restarting after backoff");
        ctx.run_later(delay, move |act, ctx| {
            let waiting = act
                .slots
                .get(&key)
                .is_some_and(|s| s.generation == generation && s.state == PartitionState::Backoff);
            if waiting && !act.leaving && !act.is_fenced() {
                act.start(key, epoch, ctx);
            }
        });
    }

    /// Gives a failed partition up in the store (`FAILED`, no owner, fenced by its epoch), so
    /// that the coordinator leaves it alone until an operator resets it. A failure to reach
    /// the store leaves the partition stopped here and is retried on the next poll.
    fn report_failed(&mut self, key: PartitionKey, ctx: &mut Context<Self>) {
        let (Some(slot), Some(detail)) = (self.slots.get(&key), self.failed.get(&key)) else {
            return;
        };
        let (epoch, generation) = (slot.epoch, slot.generation);
        let store = Arc::clone(&self.store);
        let (id, detail) = (self.id(), detail.clone());
        let stamp = self.stamp();
        let report = bounded(self.call_bound(), "failure report", async move {
            store.fail_partition(key.0, key.1, id, epoch, &detail).await
        });
        ctx.spawn(report.into_actor(self).map(move |outcome, act, _| {
            if !act.still_current(stamp, "failure report") {
                return;
            }
            let current = act.slots.get(&key).is_some_and(|s| s.generation == generation);
            let given_up = match outcome {
                Ok(_) => {
                    info!(queue = %key.0, partition = %key.1, %epoch, "partition recorded as failed");
                    true
                }
                Err(StoreError::Fenced(reason)) => {
                    info!(queue = %key.0, partition = %key.1, %epoch, %reason, "failed partition had already moved");
                    true
                }
                Err(error) => {
                    warn!(queue = %key.0, partition = %key.1, %epoch, %error, "could not record the partition failure, retrying on the next poll");
                    false
                }
            };
            if given_up {
                act.given_up.insert(key, epoch);
                act.failed.remove(&key);
                act.failures.remove(&key);
                if current {
                    act.slots.remove(&key);
                }
            }
        }));
    }

    fn status(&self) -> WorkerStatusReport {
        WorkerStatusReport {
            worker: self.id(),
            session_epoch: self.session,
            fenced: self.is_fenced(),
            leaving: self.leaving,
            partitions: self
                .slots
                .iter()
                .map(|(key, slot)| PartitionStatus {
                    queue: key.0,
                    partition: key.1,
                    epoch: slot.epoch,
                    state: slot.state,
                })
                .collect(),
        }
    }

    /// The graceful leave of docs/protocol.md; stops the actor when done.
    fn leave(&mut self) -> impl ActorFuture<Self, Output = LeaveOutcome> + 'static {
        self.leaving = true;
        let drains: Vec<_> =
            self.slots.values().filter_map(|s| s.actor.clone()).map(|actor| actor.send(Drain)).collect();
        let store = Arc::clone(&self.store);
        let (id, session) = (self.id(), self.session);
        // With a rejoin delay the partitions wait for this worker to come back (a restart).
        let keep = !self.config.rejoin_delay.is_zero();
        let bound = self.call_bound();
        info!(worker = %id, partitions = self.slots.len(), keep, "leaving");
        let leave = async move {
            let mut outcome = LeaveOutcome::default();
            let Some(session) = session else {
                return outcome;
            };
            let draining = store.set_worker_status(id, session, WorkerStatus::Draining);
            if let Err(error) = bounded(bound, "status change", draining).await {
                warn!(worker = %id, %error, "could not mark the worker draining");
            }
            // Each partition actor bounds its own drain by drain_timeout.
            futures::future::join_all(drains).await;
            match bounded(bound, "assignment read", store.assignments_of(id)).await {
                Ok(rows) => {
                    for row in rows {
                        let key = (row.queue_id, row.partition);
                        let revoking = row.state == AssignmentState::Revoking;
                        if keep && !revoking {
                            outcome.kept.push(key);
                            continue;
                        }
                        let result = if revoking {
                            bounded(bound, "handoff", store.handoff(key.0, key.1, id, row.epoch)).await
                        } else {
                            bounded(bound, "release", store.release_partition(key.0, key.1, id, row.epoch))
                                .await
                        };
                        match result {
                            Ok(epoch) if revoking => {
                                info!(queue = %key.0, partition = %key.1, %epoch, "partition handed off");
                                outcome.handed_off.push(key);
                            }
                            Ok(epoch) => {
                                info!(queue = %key.0, partition = %key.1, %epoch, "partition released");
                                outcome.released.push(key);
                            }
                            Err(error) => {
                                warn!(queue = %key.0, partition = %key.1, %error, "could not give the partition up");
                            }
                        }
                    }
                }
                Err(error) => warn!(worker = %id, %error, "could not read assignments to release them"),
            }
            match bounded(bound, "deregistration", store.deregister_worker(id, session)).await {
                Ok(()) => outcome.deregistered = true,
                Err(error) => warn!(worker = %id, %error, "could not deregister, the lease will expire"),
            }
            outcome
        };
        leave.into_actor(self).map(|outcome, act, ctx| {
            info!(worker = %act.id(), released = outcome.released.len(), handed_off = outcome.handed_off.len(), deregistered = outcome.deregistered, "worker left");
            act.left = true;
            act.session = None;
            act.fenced_at = None;
            act.stop_all("left");
            act.end(SessionEnd::Left);
            ctx.stop();
            outcome
        })
    }
}

impl Actor for WorkerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.registered.take() {
            Some((lease, sent)) => self.registered(lease, sent, ctx),
            None => self.register(ctx),
        }
        ctx.run_interval(self.config.heartbeat_interval, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.end(SessionEnd::Left);
        for arbiter in &self.stop_with {
            arbiter.stop();
        }
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        if self.left || self.session.is_none() && !self.leaving {
            self.left = true;
            self.stop_all("worker stopped");
            return Running::Stop;
        }
        if !self.leaving {
            let leave = self.leave().map(|_, _, _| ());
            ctx.spawn(leave);
        }
        Running::Continue
    }
}

impl Handler<GetStatus> for WorkerSession {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<Leave> for WorkerSession {
    type Result = ResponseActFuture<Self, LeaveOutcome>;

    fn handle(&mut self, _: Leave, _: &mut Self::Context) -> Self::Result {
        if self.leaving || self.left {
            return Box::pin(actix::fut::ready(LeaveOutcome::default()));
        }
        Box::pin(self.leave())
    }
}

impl Handler<Kill> for WorkerSession {
    type Result = ();

    fn handle(&mut self, _: Kill, ctx: &mut Self::Context) {
        warn!(worker = %self.id(), partitions = self.slots.len(), "killed, stopping without a goodbye");
        // `left` makes `stopping` skip the graceful leave; futures under way (a heartbeat, a
        // leave) are dropped with the context.
        self.left = true;
        self.session = None;
        self.fenced_at = None;
        self.stop_all("killed");
        self.end(SessionEnd::Killed);
        ctx.stop();
    }
}

impl Handler<PartitionFailure> for WorkerSession {
    type Result = ();

    fn handle(&mut self, failure: PartitionFailure, ctx: &mut Self::Context) {
        self.on_failure(failure, ctx);
    }
}

/// Bounds one store request of the session by `bound`: past it the request counts as failed
/// with [`StoreError::Unavailable`] and the session goes on (a heartbeat or a poll is sent
/// again on a later tick); the Store actor finishes or fails the statement on its own. Polled
/// with no runtime (its system is being torn down with the session still running), it is not
/// sent and fails the same way: a timer needs the runtime.
async fn bounded<T>(
    bound: Duration,
    what: &'static str,
    call: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    if let Some(stopped) = crate::runtime::stopped(what) {
        return Err(stopped);
    }
    tokio::time::timeout(bound, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(format!("{what} did not answer within {} ms", bound.as_millis())))
    })
}

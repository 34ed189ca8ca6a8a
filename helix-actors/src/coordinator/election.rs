//! The LeaderElection actor: takes and keeps the cluster's coordinator lease, and says when
//! this process becomes or stops being the leader (DESIGN §4.3, `docs/protocol.md`).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use helix_core::{ClusterConfig, ClusterName, Term, WorkerId};
use helix_store::{CoordinatorFence, Store, StoreError};
use tokio::time::Instant;

/// A change of this process's leadership, sent to the election's subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub enum LeadershipChanged {
    /// This process holds the lease under `fence.term` and may act as coordinator, fencing
    /// every write with `fence`.
    BecameLeader {
        /// The claim to present with every coordinator write.
        fence: CoordinatorFence,
    },
    /// This process must stop acting as coordinator at once.
    LostLeadership {
        /// The term it held.
        term: Term,
    },
}

/// Tells the election that leadership under `term` is lost or must be given up: a write came
/// back fenced, or the coordinator made no progress for a lease. The election stops leading,
/// releases the lease (a no-op if it is no longer its own) and does not bid for it again for
/// one `coordinator_lease`, so that a standby takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct StepDown {
    /// The term the fenced write was made under.
    pub term: Term,
}

/// Gives the lease up (if held) and stops the election, so another process can take over at
/// once instead of waiting for the lease to run out.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Resign;

/// Asks the election for the fence it holds, if it leads.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Option<CoordinatorFence>")]
pub struct CurrentFence;

/// Takes and keeps the coordinator lease of one cluster.
///
/// Every `coordinator_renew_interval` a follower tries to acquire the lease and the leader
/// renews it; each attempt is given up after `coordinator_lease − safety_margin` (a lease it
/// brings later could not be trusted anyway), so one lost call never stops the next ones.
///
/// One process per term: the store refuses a running lease to every id, this node's own
/// included ([`Store::acquire_lease`]). A second process started under this node's id
/// therefore waits as a follower until the lease is released or runs out, then leads under a
/// new term; so does this node after it stepped down while its lease still ran. The leader notes the instant *before* each renewal is sent and trusts itself
/// only until that instant plus `coordinator_lease` minus `safety_margin`, on its own
/// monotonic clock: a timer set at that deadline steps it down if no renewal moved the
/// deadline on, so it has stopped acting before the lease can run out on the database's
/// clock and another process be elected. A renewal that fails, or a [`StepDown`] after a
/// fenced write, steps it down at once. Stopping the actor releases the lease so another
/// process can take over without waiting for it to run out.
pub struct LeaderElection {
    store: Arc<dyn Store>,
    cluster: ClusterName,
    me: WorkerId,
    config: ClusterConfig,
    subscriber: Recipient<LeadershipChanged>,
    leading: Option<Leading>,
    in_flight: bool,
    /// After a [`StepDown`]: no bid for the lease before this instant.
    hold_off_until: Option<Instant>,
}

struct Leading {
    fence: CoordinatorFence,
    trusted_until: Instant,
}

impl LeaderElection {
    /// An election for `cluster` on behalf of the process `me`, telling `subscriber` of every
    /// change of leadership.
    pub fn new(
        store: Arc<dyn Store>,
        cluster: ClusterName,
        me: WorkerId,
        config: ClusterConfig,
        subscriber: Recipient<LeadershipChanged>,
    ) -> Self {
        Self { store, cluster, me, config, subscriber, leading: None, in_flight: false, hold_off_until: None }
    }

    /// How long one acquisition or renewal may take: an answer is worth nothing later, since
    /// a lease it brings is trusted only until `sent + lease − margin`. Past it the call is
    /// dropped and counted as failed, so a call lost with its connection never keeps the next
    /// ticks from trying again.
    fn call_bound(&self) -> Duration {
        self.config.coordinator_lease.saturating_sub(self.config.safety_margin).max(Duration::from_millis(1))
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let held_off =
            self.leading.is_none() && self.hold_off_until.is_some_and(|until| Instant::now() < until);
        if self.in_flight || held_off {
            return;
        }
        self.in_flight = true;
        let store = Arc::clone(&self.store);
        let lease = self.config.coordinator_lease;
        let bound = self.call_bound();
        let late = move || StoreError::Unavailable(format!("no answer from the store within {bound:?}"));
        let sent = Instant::now();
        match &self.leading {
            Some(leading) => {
                let fence = leading.fence.clone();
                let renewal = async move {
                    if let Some(stopped) = crate::runtime::stopped("the lease call") {
                        return Err(stopped);
                    }
                    tokio::time::timeout(bound, store.renew_lease(&fence, lease))
                        .await
                        .unwrap_or_else(|_| Err(late()))
                };
                ctx.spawn(renewal.into_actor(self).map(move |result, act, ctx| {
                    act.in_flight = false;
                    act.renewed(result, sent, ctx);
                }));
            }
            None => {
                let (cluster, me) = (self.cluster.clone(), self.me);
                let acquisition = async move {
                    if let Some(stopped) = crate::runtime::stopped("the lease call") {
                        return Err(stopped);
                    }
                    tokio::time::timeout(bound, store.acquire_lease(&cluster, me, lease))
                        .await
                        .unwrap_or_else(|_| Err(late()))
                };
                ctx.spawn(acquisition.into_actor(self).map(move |result, act, ctx| {
                    act.in_flight = false;
                    act.acquired(result, sent, ctx);
                }));
            }
        }
    }

    fn acquired(&mut self, result: Result<Option<Term>, StoreError>, sent: Instant, ctx: &mut Context<Self>) {
        match result {
            Ok(Some(term)) if self.leading.is_none() => {
                let fence = CoordinatorFence { cluster: self.cluster.clone(), holder: self.me, term };
                tracing::info!(cluster = %self.cluster, term = term.0, "became leader");
                self.leading = Some(Leading { fence: fence.clone(), trusted_until: sent });
                self.extend_trust(sent, ctx);
                self.subscriber.do_send(LeadershipChanged::BecameLeader { fence });
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(cluster = %self.cluster, error = %err, "lease acquisition failed"),
        }
    }

    fn renewed(&mut self, result: Result<(), StoreError>, sent: Instant, ctx: &mut Context<Self>) {
        match result {
            Ok(()) => self.extend_trust(sent, ctx),
            Err(err) => {
                tracing::warn!(cluster = %self.cluster, error = %err, "lease renewal failed");
                self.step_down();
            }
        }
    }

    /// After a successful acquisition or renewal sent at `sent`: trust the lease until
    /// `sent + lease - margin`, and check again at that instant.
    fn extend_trust(&mut self, sent: Instant, ctx: &mut Context<Self>) {
        let Some(leading) = self.leading.as_mut() else {
            return;
        };
        let trusted_until = sent + self.config.coordinator_lease.saturating_sub(self.config.safety_margin);
        if trusted_until <= leading.trusted_until {
            return;
        }
        leading.trusted_until = trusted_until;
        let term = leading.fence.term;
        ctx.run_later(trusted_until.saturating_duration_since(Instant::now()), move |act, _| {
            let expired = act
                .leading
                .as_ref()
                .is_some_and(|l| l.fence.term == term && Instant::now() >= l.trusted_until);
            if expired {
                tracing::warn!(term = term.0, "lease not renewed in time, stepping down");
                act.step_down();
            }
        });
    }

    fn step_down(&mut self) {
        if let Some(leading) = self.leading.take() {
            tracing::info!(cluster = %self.cluster, term = leading.fence.term.0, "lost leadership");
            self.subscriber.do_send(LeadershipChanged::LostLeadership { term: leading.fence.term });
        }
    }
}

impl Actor for LeaderElection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.tick(ctx);
        ctx.run_interval(self.config.coordinator_renew_interval, |act, ctx| act.tick(ctx));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(leading) = self.leading.take() {
            self.subscriber.do_send(LeadershipChanged::LostLeadership { term: leading.fence.term });
            let store = Arc::clone(&self.store);
            // Best effort: a lease that is not released runs out on its own.
            actix::spawn(async move {
                if let Err(err) = store.release_lease(&leading.fence).await {
                    tracing::warn!(error = %err, "could not release the coordinator lease");
                }
            });
        }
    }
}

impl Handler<StepDown> for LeaderElection {
    type Result = ();

    fn handle(&mut self, msg: StepDown, _: &mut Self::Context) {
        let Some(fence) = self.leading.as_ref().filter(|l| l.fence.term == msg.term).map(|l| l.fence.clone())
        else {
            return;
        };
        self.step_down();
        self.hold_off_until = Some(Instant::now() + self.config.coordinator_lease);
        let store = Arc::clone(&self.store);
        // Best effort: a lease that is not released runs out on its own.
        actix::spawn(async move {
            if let Err(err) = store.release_lease(&fence).await {
                tracing::warn!(error = %err, "could not release the coordinator lease");
            }
        });
    }
}

impl Handler<Resign> for LeaderElection {
    type Result = ();

    fn handle(&mut self, _: Resign, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<CurrentFence> for LeaderElection {
    type Result = Option<CoordinatorFence>;

    fn handle(&mut self, _: CurrentFence, _: &mut Self::Context) -> Self::Result {
        self.leading.as_ref().filter(|l| Instant::now() < l.trusted_until).map(|l| l.fence.clone())
    }
}

/// How long after the leader stops renewing another process can take over, at most: the
/// lease itself plus one renewal interval for the follower's next attempt.
pub fn takeover_bound(config: &ClusterConfig) -> Duration {
    config.coordinator_lease + config.coordinator_renew_interval
}

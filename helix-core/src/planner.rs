//! The handoff planner: from the current assignment rows and the target assignment to the
//! grants and revocations that move one towards the other, without ever giving a partition
//! two owners (`docs/protocol.md`, DESIGN.md §4.6).
//!
//! The rules, per partition:
//!
//! | current row                                   | target `T`              | change                  |
//! |-----------------------------------------------|-------------------------|-------------------------|
//! | owner is `T`, assigned                        |                         | none                    |
//! | owner absent or dead, assigned or revoking    | `T` live                | [`PlanChange::Grant`]   |
//! | owner dead, assigned or revoking              | none                    | [`PlanChange::Release`] |
//! | owner live, assigned, not cooling down        | `T ≠ owner`             | [`PlanChange::Revoke`]  |
//! | owner live, revoking for longer than the timeout | any                  | [`PlanChange::CancelRevoke`] (timed out; the partition cools down) |
//! | owner live, revoking                          | `T = owner`             | [`PlanChange::CancelRevoke`] (no longer needed) |
//! | owner live, revoking towards `T`              | `T`                     | none (the owner is handing off) |
//! | owner live, revoking towards another worker   | `T`                     | [`PlanChange::Retarget`] |
//! | failed (no owner, waits for an operator)       | any                     | none                    |
//!
//! A target that is not live counts as no target. A grant only ever goes to a row whose
//! owner is absent or dead, and a live owner gives a partition up only itself, by handing it
//! off: that is why the plan can never yield two owners. Every change carries the epoch the
//! planner saw; the store applies a change only where the row still has that epoch, so a
//! plan made from a stale read changes nothing (the epoch moves with every change of owner).
//! The state changes that keep the epoch (revoke, retarget, cancel) are written only by the
//! coordinator, whose writes are fenced by its term.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::allocation::Assignment;
use crate::ids::{Epoch, PartitionId, WorkerId};

/// The state of an assignment row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowState {
    /// The owner runs the partition.
    Assigned,
    /// The owner was asked to hand the partition off to `target` (or to release it when
    /// `target` is `None`).
    Revoking {
        /// The worker the partition is handed to.
        target: Option<WorkerId>,
        /// When the revocation was requested (database time).
        since: DateTime<Utc>,
    },
    /// The partition failed too often on its last owner and has no owner. The planner leaves
    /// it alone until an operator resets it.
    Failed,
}

/// One partition's assignment row, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRow {
    /// The current owner, if any.
    pub owner: Option<WorkerId>,
    /// The partition's fencing token.
    pub epoch: Epoch,
    /// Whether a handoff is under way.
    pub state: RowState,
}

impl PartitionRow {
    /// A row in the [`RowState::Assigned`] state.
    pub fn assigned(owner: Option<WorkerId>, epoch: Epoch) -> Self {
        Self { owner, epoch, state: RowState::Assigned }
    }
}

/// One change to one assignment row. The store applies it only where the row's epoch is
/// still `expected_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanChange {
    /// The owner is absent or dead: `owner = to`, `epoch = expected_epoch + 1`, assigned.
    Grant {
        /// The partition.
        partition: PartitionId,
        /// The epoch the planner saw.
        expected_epoch: Epoch,
        /// The new owner.
        to: WorkerId,
    },
    /// The owner is dead and there is no target: `owner = NULL`, `epoch = expected_epoch + 1`,
    /// assigned.
    Release {
        /// The partition.
        partition: PartitionId,
        /// The epoch the planner saw.
        expected_epoch: Epoch,
    },
    /// The owner is alive and must hand off: state `REVOKING`, `target = to`, since now. The
    /// owner drains the partition and hands it over itself (`to = None`: it releases it).
    Revoke {
        /// The partition.
        partition: PartitionId,
        /// The epoch the planner saw.
        expected_epoch: Epoch,
        /// The worker to hand off to.
        to: Option<WorkerId>,
    },
    /// A revocation under way now hands off to another worker: `target = to`; `since` is
    /// kept, so retargeting never extends the revoke timeout.
    Retarget {
        /// The partition.
        partition: PartitionId,
        /// The epoch the planner saw.
        expected_epoch: Epoch,
        /// The new target.
        to: Option<WorkerId>,
    },
    /// A revocation is withdrawn: state back to assigned, the owner keeps the partition.
    CancelRevoke {
        /// The partition.
        partition: PartitionId,
        /// The epoch the planner saw.
        expected_epoch: Epoch,
        /// Why.
        reason: CancelReason,
    },
}

impl PlanChange {
    /// The partition the change is about.
    pub fn partition(&self) -> PartitionId {
        match *self {
            Self::Grant { partition, .. }
            | Self::Release { partition, .. }
            | Self::Revoke { partition, .. }
            | Self::Retarget { partition, .. }
            | Self::CancelRevoke { partition, .. } => partition,
        }
    }

    /// The epoch the row must still have for the change to apply.
    pub fn expected_epoch(&self) -> Epoch {
        match *self {
            Self::Grant { expected_epoch, .. }
            | Self::Release { expected_epoch, .. }
            | Self::Revoke { expected_epoch, .. }
            | Self::Retarget { expected_epoch, .. }
            | Self::CancelRevoke { expected_epoch, .. } => expected_epoch,
        }
    }
}

/// Why a revocation was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The owner did not hand off within the revoke timeout; it keeps the partition and the
    /// partition cools down (see [`Cooldowns`]).
    TimedOut,
    /// The target is the owner again.
    NoLongerNeeded,
}

/// The changes that move the current assignment towards the target, at most one per
/// partition, in partition order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The changes, in partition order.
    pub changes: Vec<PlanChange>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The revocations that timed out in this plan, for [`Cooldowns::record_timeouts`].
    pub fn timed_out(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.changes.iter().filter_map(|change| match *change {
            PlanChange::CancelRevoke { partition, reason: CancelReason::TimedOut, .. } => Some(partition),
            _ => None,
        })
    }
}

/// Partitions the planner leaves alone for a while after their revocation timed out, so an
/// owner that cannot hand off is not asked again and again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cooldowns {
    until: BTreeMap<PartitionId, DateTime<Utc>>,
}

impl Cooldowns {
    /// No partition is cooling down.
    pub fn new() -> Self {
        Self::default()
    }

    /// `partition` is not revoked again before `until`.
    pub fn insert(&mut self, partition: PartitionId, until: DateTime<Utc>) {
        self.until.insert(partition, until);
    }

    /// Puts every partition whose revocation timed out in `plan` into a cool-down of
    /// `cooldown` from `now`.
    pub fn record_timeouts(&mut self, plan: &Plan, now: DateTime<Utc>, cooldown: Duration) {
        let until = TimeDelta::from_std(cooldown)
            .ok()
            .and_then(|cooldown| now.checked_add_signed(cooldown))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        for partition in plan.timed_out() {
            self.insert(partition, until);
        }
    }

    /// Whether `partition` is cooling down at `now`.
    pub fn is_cooling(&self, partition: PartitionId, now: DateTime<Utc>) -> bool {
        self.until.get(&partition).is_some_and(|until| now < *until)
    }

    /// Forgets the cool-downs that are over at `now`.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.until.retain(|_, until| now < *until);
    }

    /// How many partitions are recorded.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no partition is recorded.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

/// Everything the planner decides from.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The current row of every partition, indexed by partition.
    pub current: &'a [PartitionRow],
    /// The target owner of every partition, from an allocation strategy.
    pub target: &'a Assignment,
    /// The workers whose lease has not expired (active and draining).
    pub live: &'a BTreeSet<WorkerId>,
    /// Partitions not to revoke for now.
    pub cooldowns: &'a Cooldowns,
    /// The database time the rows were read at.
    pub now: DateTime<Utc>,
    /// How long an owner may take to hand off before its revocation is cancelled.
    pub revoke_timeout: Duration,
}

/// The changes that move `input.current` towards `input.target`, following the rules of the
/// [module documentation](self). Partitions present in only one of `current` and `target`
/// are ignored.
///
/// ```
/// use std::collections::BTreeSet;
/// use std::time::Duration;
/// use chrono::Utc;
/// use helix_core::allocation::Assignment;
/// use helix_core::planner::{plan, Cooldowns, PartitionRow, PlanChange, PlanInput};
/// use helix_core::{Epoch, PartitionId, WorkerId};
///
/// let (dead, alive, newcomer) = (WorkerId::new_v7(), WorkerId::new_v7(), WorkerId::new_v7());
/// let current = [PartitionRow::assigned(Some(dead), Epoch(3)), PartitionRow::assigned(Some(alive), Epoch(5))];
/// let target = Assignment::from_owners([Some(newcomer), Some(newcomer)]);
/// let live = BTreeSet::from([alive, newcomer]);
/// let cooldowns = Cooldowns::new();
/// let input = PlanInput {
///     current: &current, target: &target, live: &live, cooldowns: &cooldowns,
///     now: Utc::now(), revoke_timeout: Duration::from_secs(30),
/// };
/// assert_eq!(plan(&input).changes, [
///     PlanChange::Grant { partition: PartitionId(0), expected_epoch: Epoch(3), to: newcomer },
///     PlanChange::Revoke { partition: PartitionId(1), expected_epoch: Epoch(5), to: Some(newcomer) },
/// ]);
/// ```
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let timeout = TimeDelta::from_std(input.revoke_timeout).unwrap_or(TimeDelta::MAX);
    let table = input.target.worker_table();
    let is_live = |worker: &WorkerId| input.live.contains(worker);
    let mut changes = Vec::new();
    for ((partition, row), &slot) in input.current.iter().enumerate().zip(input.target.owner_indices()) {
        let target = table.get(slot as usize).copied();
        // The steady state costs one comparison and no lookup.
        if (row.state == RowState::Assigned && row.owner == target) || row.state == RowState::Failed {
            continue;
        }
        let partition = PartitionId(partition as u32);
        let expected_epoch = row.epoch;
        let target = target.filter(is_live);
        let owner = row.owner.filter(is_live);
        let change = match (owner, row.state) {
            (None, _) => match target {
                Some(to) => Some(PlanChange::Grant { partition, expected_epoch, to }),
                None if row.owner.is_some() || row.state != RowState::Assigned => {
                    Some(PlanChange::Release { partition, expected_epoch })
                }
                None => None,
            },
            (Some(owner), RowState::Assigned) => (target != Some(owner)
                && !input.cooldowns.is_cooling(partition, input.now))
            .then_some(PlanChange::Revoke { partition, expected_epoch, to: target }),
            (Some(_), RowState::Failed) => None,
            (Some(owner), RowState::Revoking { target: revoking_to, since }) => {
                if input.now.signed_duration_since(since) >= timeout {
                    Some(PlanChange::CancelRevoke {
                        partition,
                        expected_epoch,
                        reason: CancelReason::TimedOut,
                    })
                } else if target == Some(owner) {
                    Some(PlanChange::CancelRevoke {
                        partition,
                        expected_epoch,
                        reason: CancelReason::NoLongerNeeded,
                    })
                } else if revoking_to == target {
                    None
                } else {
                    Some(PlanChange::Retarget { partition, expected_epoch, to: target })
                }
            }
        };
        changes.extend(change);
    }
    Plan { changes }
}

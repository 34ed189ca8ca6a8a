//! The decisions every backend makes the same way, as pure functions: what a plan does to the
//! rows it touches, who gets the coordinator lease, and why a heartbeat was refused. Each
//! backend reads the current rows (locked, inside its transaction), asks these functions, and
//! writes the answer in the same transaction.

pub mod schedules;
pub mod tasks;

use std::collections::BTreeSet;

use helix_core::{Epoch, PartitionCount, PartitionId, QueueId, SessionEpoch, Term, WorkerId};

use crate::error::{StoreError, StoreResult};
use crate::model::{AssignmentState, EventKind, Heartbeat, NewEvent, PlanChange, SkipReason, WorkerStatus};

/// A row as a plan sees it: its columns, and whether its owner is live on the store's clock
/// (ACTIVE or DRAINING with a running lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowState {
    /// The partition.
    pub partition: PartitionId,
    /// The owner.
    pub owner: Option<WorkerId>,
    /// The epoch.
    pub epoch: Epoch,
    /// The state.
    pub state: AssignmentState,
    /// The revocation target.
    pub target: Option<WorkerId>,
    /// Whether the owner is live.
    pub owner_live: bool,
}

/// The new values of a row that a plan changes. The backend sets the coordinator term, and
/// `updated_at` to the database's now, except where the row was `REVOKING` and stays
/// `REVOKING` (a retarget): a revocation keeps the instant it began, so retargeting never
/// extends the revoke timeout. [`keeps_updated_at`] says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    /// The partition.
    pub partition: PartitionId,
    /// The new owner.
    pub owner: Option<WorkerId>,
    /// The new epoch.
    pub epoch: Epoch,
    /// The new state.
    pub state: AssignmentState,
    /// The new revocation target.
    pub target: Option<WorkerId>,
}

/// What a plan does, before it is written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanEvaluation {
    /// The rows to write, in the order of the changes.
    pub writes: Vec<RowWrite>,
    /// The changes not applied, with the reason.
    pub skipped: Vec<(PartitionId, SkipReason)>,
    /// One event per write.
    pub events: Vec<NewEvent>,
}

/// Refuses a plan whose partitions are out of range or repeated. Run it before reading rows.
pub fn validate_plan(partition_count: PartitionCount, changes: &[PlanChange]) -> StoreResult<()> {
    let mut seen = BTreeSet::new();
    for change in changes {
        let p = change.partition();
        if p.0 >= partition_count.get() {
            return Err(StoreError::Invalid(format!(
                "partition {p} is out of range, the queue has {partition_count} partitions"
            )));
        }
        if !seen.insert(p) {
            return Err(StoreError::Invalid(format!("partition {p} appears twice in one plan")));
        }
    }
    Ok(())
}

/// Decides each change of a validated plan against the current rows. `rows` must hold a row
/// for every partition the plan names (any order); `live` says whether a worker a grant names
/// is live on the store's clock (a grant to a worker that is not is skipped with
/// [`SkipReason::TargetNotLive`]).
pub fn evaluate_plan(
    queue: QueueId,
    term: Term,
    rows: &[RowState],
    changes: &[PlanChange],
    live: impl Fn(WorkerId) -> bool,
) -> StoreResult<PlanEvaluation> {
    let mut out = PlanEvaluation::default();
    // An index, so that plans over tens of thousands of partitions stay linear.
    let by_partition: std::collections::HashMap<PartitionId, &RowState> =
        rows.iter().map(|r| (r.partition, r)).collect();
    for change in changes {
        let p = change.partition();
        let row = *by_partition.get(&p).ok_or_else(|| {
            StoreError::Database(format!("assignment row of queue {queue} partition {p} is missing"))
        })?;
        if row.epoch != change.expected_epoch() {
            out.skipped.push((p, SkipReason::StaleEpoch { actual: row.epoch }));
            continue;
        }
        if row.state == AssignmentState::Failed {
            // Only an operator's reset brings a failed partition back.
            out.skipped.push((p, SkipReason::WrongState));
            continue;
        }
        let owner_gone = |to: Option<WorkerId>| row.owner.is_none() || !row.owner_live || row.owner == to;
        let revoking = |to: Option<WorkerId>| RowWrite {
            partition: p,
            owner: row.owner,
            epoch: row.epoch,
            state: AssignmentState::Revoking,
            target: to,
        };
        let (write, kind) = match *change {
            PlanChange::Grant { to, .. } => {
                if !owner_gone(Some(to)) {
                    out.skipped.push((p, SkipReason::OwnerAlive));
                    continue;
                }
                if !live(to) {
                    out.skipped.push((p, SkipReason::TargetNotLive));
                    continue;
                }
                let write = RowWrite {
                    partition: p,
                    owner: Some(to),
                    epoch: row.epoch.next(),
                    state: AssignmentState::Assigned,
                    target: None,
                };
                (write, EventKind::PartitionGranted)
            }
            PlanChange::Revoke { to, .. } => {
                if row.owner.is_none() || row.owner == to || row.state != AssignmentState::Assigned {
                    out.skipped.push((p, SkipReason::WrongState));
                    continue;
                }
                (revoking(to), EventKind::PartitionRevoking)
            }
            PlanChange::Retarget { to, .. } => {
                if row.state != AssignmentState::Revoking || row.owner == to {
                    out.skipped.push((p, SkipReason::WrongState));
                    continue;
                }
                (revoking(to), EventKind::PartitionRevoking)
            }
            PlanChange::CancelRevoke { .. } => {
                if row.state != AssignmentState::Revoking {
                    out.skipped.push((p, SkipReason::WrongState));
                    continue;
                }
                let write = RowWrite {
                    partition: p,
                    owner: row.owner,
                    epoch: row.epoch,
                    state: AssignmentState::Assigned,
                    target: None,
                };
                (write, EventKind::RevokeCancelled)
            }
            PlanChange::Release { .. } => {
                if row.owner.is_none() {
                    out.skipped.push((p, SkipReason::WrongState));
                    continue;
                }
                if !owner_gone(None) {
                    out.skipped.push((p, SkipReason::OwnerAlive));
                    continue;
                }
                let write = RowWrite {
                    partition: p,
                    owner: None,
                    epoch: row.epoch.next(),
                    state: AssignmentState::Assigned,
                    target: None,
                };
                (write, EventKind::PartitionReleased)
            }
        };
        let mut event = NewEvent::new(kind);
        event.queue_id = Some(queue);
        event.partition = Some(p);
        event.worker = match kind {
            EventKind::PartitionRevoking => write.target,
            EventKind::PartitionReleased | EventKind::RevokeCancelled => row.owner,
            _ => write.owner,
        };
        event.term = Some(term);
        event.epoch = Some(write.epoch);
        let mut detail = serde_json::Map::new();
        if let Some(previous) = row.owner.filter(|_| kind != EventKind::PartitionReleased) {
            detail.insert("previous_owner".into(), previous.to_string().into());
        }
        if let PlanChange::CancelRevoke { reason, .. } = change {
            detail.insert("reason".into(), serde_json::json!(reason));
        }
        if let PlanChange::Retarget { .. } = change {
            detail.insert("retarget".into(), true.into());
        }
        event.detail = serde_json::Value::Object(detail);
        out.writes.push(write);
        out.events.push(event);
    }
    Ok(out)
}

/// Whether a write keeps the row's `updated_at`: only a revocation that stays a revocation.
pub fn keeps_updated_at(old: AssignmentState, new: AssignmentState) -> bool {
    old == AssignmentState::Revoking && new == AssignmentState::Revoking
}

/// What to do with a coordinator lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Take it under a new term.
    Take {
        /// The new term.
        term: Term,
    },
    /// A process holds a running lease, whatever its id: the caller's own id included, since
    /// a process that holds the lease keeps it by renewing under its term, never by acquiring.
    /// So a second process started under the holder's id cannot obtain the holder's term
    /// (one process per identity, `docs/protocol.md`).
    Refuse,
}

/// Decides an acquisition, given the current lease row (`holder`, `term`, `expired` on the
/// store's clock) or `None` when the cluster never had a leader. Only a free or expired lease
/// is taken, always under the next term; a running lease is refused, even to its holder's id.
pub fn decide_acquire(current: Option<(Option<WorkerId>, Term, bool)>, _me: WorkerId) -> LeaseDecision {
    match current {
        None => LeaseDecision::Take { term: Term(1) },
        Some((Some(_), _, false)) => LeaseDecision::Refuse,
        // Free or run out: leadership changes hands, even back to the same process, because
        // the previous leader stopped acting when its lease ran out.
        Some((_, term, _)) => LeaseDecision::Take { term: term.next() },
    }
}

/// Refuses the registration of `worker` while a session of it is live: `live_for` is how long
/// the current session's lease still runs on the store's clock, `None` when there is no live
/// session (no row, LEFT, DEAD, or a lease that ran out). One process per identity
/// (`docs/protocol.md`).
pub fn refuse_live_id(worker: WorkerId, live_for: Option<std::time::Duration>) -> StoreResult<()> {
    match live_for {
        Some(lease_remaining) => Err(StoreError::IdInUse { worker, lease_remaining }),
        None => Ok(()),
    }
}

/// Whether adoption keeps a row's `updated_at`: a revocation under way keeps its start, so
/// the revoke timeout is not extended by a restart; any other row is stamped now. Adoption
/// (a new session of the row's owner) otherwise keeps owner, state and target and moves the
/// epoch to the next one (`docs/protocol.md`, "Adoption bumps the epoch").
pub fn adoption_keeps_updated_at(state: AssignmentState) -> bool {
    state == AssignmentState::Revoking
}

/// Explains a heartbeat that renewed nothing, from the worker's row as read afterwards
/// (`status`, `session_epoch`, `expired` on the store's clock).
pub fn classify_heartbeat(
    row: Option<(WorkerStatus, SessionEpoch, bool)>,
    session_epoch: SessionEpoch,
) -> Heartbeat {
    match row {
        None => Heartbeat::Unknown,
        Some((_, current, _)) if current != session_epoch => Heartbeat::Superseded,
        Some((WorkerStatus::Left, _, _)) => Heartbeat::Deregistered,
        // Dead, expired, or a race that the read could not explain: the safe answer is that
        // the session is over.
        Some(_) => Heartbeat::Expired,
    }
}

/// Refuses a status that `set_worker_status` cannot set: only ACTIVE and DRAINING are.
pub(crate) fn settable_status(status: WorkerStatus) -> StoreResult<()> {
    if !status.in_session() {
        return Err(StoreError::Invalid(format!(
            "a worker can only be set ACTIVE or DRAINING, not {status}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(p: u32, owner: Option<WorkerId>, epoch: u64, live: bool) -> RowState {
        RowState {
            partition: PartitionId(p),
            owner,
            epoch: Epoch(epoch),
            state: AssignmentState::Assigned,
            target: None,
            owner_live: live,
        }
    }

    #[test]
    fn grant_takes_only_from_gone_owners() {
        let (a, b) = (WorkerId::new_v7(), WorkerId::new_v7());
        let rows = [row(0, None, 0, false), row(1, Some(a), 3, true), row(2, Some(a), 3, false)];
        let changes: Vec<_> = (0..3)
            .map(|p| PlanChange::Grant {
                partition: PartitionId(p),
                expected_epoch: rows[p as usize].epoch,
                to: b,
            })
            .collect();
        let eval = evaluate_plan(QueueId(1), Term(7), &rows, &changes, |w| w == b).unwrap();
        assert_eq!(eval.writes.len(), 2);
        assert_eq!(eval.writes[0].epoch, Epoch(1));
        assert_eq!(eval.writes[1].epoch, Epoch(4));
        assert_eq!(eval.skipped, vec![(PartitionId(1), SkipReason::OwnerAlive)]);
        assert!(eval.events.iter().all(|e| e.kind == EventKind::PartitionGranted && e.term == Some(Term(7))));
    }

    #[test]
    fn stale_epochs_and_wrong_states_are_skipped() {
        let (a, b) = (WorkerId::new_v7(), WorkerId::new_v7());
        let rows = [row(0, Some(a), 2, true), row(1, None, 0, false), row(2, Some(a), 1, true)];
        let changes = [
            PlanChange::Revoke { partition: PartitionId(0), expected_epoch: Epoch(1), to: Some(b) },
            PlanChange::Revoke { partition: PartitionId(1), expected_epoch: Epoch(0), to: Some(b) },
            PlanChange::CancelRevoke {
                partition: PartitionId(2),
                expected_epoch: Epoch(1),
                reason: helix_core::planner::CancelReason::NoLongerNeeded,
            },
            PlanChange::Retarget { partition: PartitionId(2), expected_epoch: Epoch(1), to: Some(b) },
        ];
        let eval = evaluate_plan(QueueId(1), Term(1), &rows, &changes, |_| true).unwrap();
        assert!(eval.writes.is_empty());
        assert_eq!(
            eval.skipped,
            vec![
                (PartitionId(0), SkipReason::StaleEpoch { actual: Epoch(2) }),
                (PartitionId(1), SkipReason::WrongState),
                (PartitionId(2), SkipReason::WrongState),
                (PartitionId(2), SkipReason::WrongState),
            ]
        );
    }

    #[test]
    fn plans_with_bad_partitions_are_invalid() {
        let count = PartitionCount::new(4).unwrap();
        let change = |p| PlanChange::Release { partition: PartitionId(p), expected_epoch: Epoch(0) };
        assert!(matches!(validate_plan(count, &[change(4)]), Err(StoreError::Invalid(_))));
        assert!(matches!(validate_plan(count, &[change(1), change(1)]), Err(StoreError::Invalid(_))));
        assert_eq!(validate_plan(count, &[change(0), change(3)]), Ok(()));
    }

    #[test]
    fn a_running_lease_is_refused_to_every_id_and_a_free_one_taken_under_the_next_term() {
        let (me, other) = (WorkerId::new_v7(), WorkerId::new_v7());
        assert_eq!(decide_acquire(None, me), LeaseDecision::Take { term: Term(1) });
        assert_eq!(decide_acquire(Some((Some(me), Term(4), false)), me), LeaseDecision::Refuse);
        assert_eq!(decide_acquire(Some((Some(other), Term(4), false)), me), LeaseDecision::Refuse);
        assert_eq!(
            decide_acquire(Some((Some(other), Term(4), true)), me),
            LeaseDecision::Take { term: Term(5) }
        );
        assert_eq!(decide_acquire(Some((None, Term(4), false)), me), LeaseDecision::Take { term: Term(5) });
        assert_eq!(
            decide_acquire(Some((Some(me), Term(4), true)), me),
            LeaseDecision::Take { term: Term(5) }
        );
    }

    #[test]
    fn refused_heartbeats_say_why() {
        let s = SessionEpoch(2);
        assert_eq!(classify_heartbeat(None, s), Heartbeat::Unknown);
        assert_eq!(
            classify_heartbeat(Some((WorkerStatus::Active, SessionEpoch(3), false)), s),
            Heartbeat::Superseded
        );
        assert_eq!(classify_heartbeat(Some((WorkerStatus::Left, s, true)), s), Heartbeat::Deregistered);
        assert_eq!(classify_heartbeat(Some((WorkerStatus::Dead, s, true)), s), Heartbeat::Expired);
        assert_eq!(classify_heartbeat(Some((WorkerStatus::Active, s, true)), s), Heartbeat::Expired);
    }
}
